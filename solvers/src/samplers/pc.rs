//! Predictor-corrector sampling, Song et al. (2021), Algorithms 2 (VE) and 3 (VP), in the
//! order of score_sde's `pc_sampler`: at each level, `corrector_steps` corrector steps, then
//! the predictor to the next level. score_sde's predictors and correctors
//! (`sampling.py`: `ReverseDiffusionPredictor`, `AncestralSamplingPredictor`,
//! `EulerMaruyamaPredictor`, `NonePredictor`; `LangevinCorrector`, `AnnealedLangevinDynamics`,
//! `NoneCorrector`); the defaults are the paper's reverse diffusion with Langevin.
//!
//! All work in the unscaled variable `x = s(t) x^` with the score `score(x) = (D(x^; sigma) -
//! x^) / (s sigma^2)`. The forward transition between the levels is `x_t = a x_t' + b xi` with
//! `a = s(t) / s(t')`, `b^2 = s(t)^2 (sigma^2 - sigma'^2)`: for VE `a = 1, b^2 = sigma^2 -
//! sigma'^2` and for VP `a = sqrt(1 - beta_i), b^2 = beta_i`, as in the paper.
//!
//! - Predictor `reverse-diffusion`: `x' = (2 - a) x + b^2 score(x) + b z`.
//! - Predictor `ancestral-sampling` (VE and EDM, `s = 1`): `x' = x + b^2 score(x) +
//!   sqrt(sigma'^2 b^2 / sigma^2) z`; (VP) `x' = (x + b^2 score(x)) / a + b z`.
//! - Predictor `euler-maruyama`: `x' = x + [f x - g^2 score(x)] (t' - t) + g (W(t) - W(t'))`, the
//!   step of `euler-maruyama` (its Brownian path, [`STREAM_TIME`]).
//! - Predictor `none`: `x' = x` (corrector-only sampling, as NCSN's annealed Langevin).
//! - Corrector `langevin`: `eps = 2 alpha (snr |z| / |score|)^2`, `x <- x + eps score(x) +
//!   sqrt(2 eps) z`, with `alpha = a^2` (1 for VE, `alpha_i` for VP). As in score_sde's
//!   `LangevinCorrector`, `|z|` and `|score|` are per-sample norms averaged over the batch, so
//!   the step size (only) depends on the batch. Per-sample norms are unstable in low dimension:
//!   a sample near a mode centre has a tiny score and takes a huge step.
//! - Corrector `ald` (annealed Langevin dynamics, NCSN): the same update with
//!   `eps = 2 alpha (snr s sigma)^2`, `s sigma` the marginal standard deviation of `x`.
//!
//! The step to sigma = 0 corrects, then returns `D(x^; sigma_{n-1})` (score_sde's final
//! denoising). `n` predictor evaluations (none for `none` but the last `D`) plus
//! `corrector_steps` per level (none for the corrector `none`).

use super::check_nonneg;
use crate::driver::{Sampler, StepCtx};
use crate::error::{Result, SolverError};
use crate::noise::{STREAM_CORRECTOR, STREAM_STEP, STREAM_TIME};
use serde::{Deserialize, Serialize};
use tch::Tensor;

/// score_sde's predictors.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PcPredictor {
    /// The discretized reverse SDE of the forward transition (the paper's choice).
    #[default]
    #[serde(alias = "reverse_diffusion")]
    ReverseDiffusion,
    /// DDPM's (VP) or SMLD's (VE) ancestral step.
    #[serde(alias = "ancestral_sampling")]
    AncestralSampling,
    /// An Euler-Maruyama step of the reverse SDE in its time t.
    #[serde(alias = "euler_maruyama")]
    EulerMaruyama,
    /// No predictor: the corrector alone at every level.
    None,
}

impl std::str::FromStr for PcPredictor {
    type Err = SolverError;
    fn from_str(s: &str) -> Result<Self> {
        match s.replace('_', "-").as_str() {
            "reverse-diffusion" => Ok(PcPredictor::ReverseDiffusion),
            "ancestral-sampling" => Ok(PcPredictor::AncestralSampling),
            "euler-maruyama" => Ok(PcPredictor::EulerMaruyama),
            "none" => Ok(PcPredictor::None),
            _ => Err(SolverError::Invalid(format!(
                "unknown PC predictor '{s}' (known: reverse-diffusion, ancestral-sampling, euler-maruyama, none)"
            ))),
        }
    }
}

/// score_sde's correctors.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PcCorrector {
    /// Langevin steps sized by the score's norm (the paper's choice).
    #[default]
    Langevin,
    /// Annealed Langevin dynamics (NCSN): steps sized by the marginal standard deviation.
    Ald,
    /// No corrector.
    None,
}

impl std::str::FromStr for PcCorrector {
    type Err = SolverError;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "langevin" => Ok(PcCorrector::Langevin),
            "ald" => Ok(PcCorrector::Ald),
            "none" => Ok(PcCorrector::None),
            _ => Err(SolverError::Invalid(format!(
                "unknown PC corrector '{s}' (known: langevin, ald, none)"
            ))),
        }
    }
}

#[derive(Clone, Debug)]
pub struct Pc {
    pub snr: f64,
    pub corrector_steps: usize,
    pub predictor: PcPredictor,
    pub corrector: PcCorrector,
}

/// The most corrector steps per level (score_sde uses 1; a mistyped count is an error, not a
/// run that never ends).
pub const MAX_CORRECTOR_STEPS: usize = 1000;

impl Pc {
    pub fn new(
        snr: f64,
        corrector_steps: usize,
        predictor: PcPredictor,
        corrector: PcCorrector,
    ) -> Result<Self> {
        check_nonneg("snr", snr)?;
        if corrector_steps > MAX_CORRECTOR_STEPS {
            return Err(SolverError::Invalid(format!(
                "pc: corrector_steps = {corrector_steps} is more than {MAX_CORRECTOR_STEPS}"
            )));
        }
        let pc = Pc {
            snr,
            corrector_steps,
            predictor,
            corrector,
        };
        if predictor == PcPredictor::None && pc.steps_per_level() == 0 {
            return Err(SolverError::Invalid(
                "pc with predictor none needs a corrector (not none) and corrector_steps >= 1"
                    .into(),
            ));
        }
        Ok(pc)
    }

    /// Corrector steps (evaluations) per level.
    pub fn steps_per_level(&self) -> usize {
        corrector_evals(self.corrector, self.corrector_steps)
    }
}

/// Corrector evaluations per level: `corrector_steps`, none for the corrector `none`.
fn corrector_evals(corrector: PcCorrector, corrector_steps: usize) -> usize {
    match corrector {
        PcCorrector::None => 0,
        _ => corrector_steps,
    }
}

/// Evaluations for `steps` levels: the correctors' at every level, plus one predictor
/// evaluation per level (only the final `D` for the predictor `none`).
pub fn nfe(
    steps: usize,
    corrector_steps: usize,
    predictor: PcPredictor,
    corrector: PcCorrector,
) -> usize {
    let predictor = match predictor {
        PcPredictor::None => 1,
        _ => steps,
    };
    steps * corrector_evals(corrector, corrector_steps) + predictor
}

/// Per-sample L2 norms averaged over the batch (a 0-d tensor: no host synchronization).
fn mean_norm(x: &Tensor) -> Tensor {
    let n = x.size()[0];
    x.reshape([n, -1])
        .norm_scalaropt_dim(2, [1i64].as_slice(), false)
        .mean(x.kind())
}

impl Sampler for Pc {
    fn name(&self) -> &'static str {
        "pc"
    }
    fn step(&self, ctx: &mut StepCtx<'_>, x_hat: Tensor) -> Result<Tensor> {
        let (sigma, sigma_next) = (ctx.sigma(), ctx.sigma_next());
        let sde = ctx.sde;
        let t = sde.sigma_inv(sigma);
        let s = sde.s(t);
        let s_next = sde.s_of_sigma(sigma_next);
        let a = s / s_next;
        let mut x = &x_hat * s;
        let score = |ctx: &mut StepCtx<'_>, x: &Tensor| -> Result<Tensor> {
            let xh = x / s;
            Ok((ctx.denoise(&xh, sigma)? - xh) / (s * sigma * sigma))
        };
        for j in 0..self.steps_per_level() {
            let grad = score(ctx, &x)?;
            let z = ctx
                .noise
                .standard(STREAM_CORRECTOR + j as u64, sigma_next, sigma)?;
            x = match self.corrector {
                PcCorrector::Ald => {
                    let eps = 2.0 * a * a * (self.snr * s * sigma).powi(2);
                    &x + &grad * eps + z * (eps * 2.0).sqrt()
                }
                _ => {
                    let ratio = mean_norm(&z) / mean_norm(&grad).clamp_min(1e-30);
                    let eps = ratio.square() * (2.0 * a * a * self.snr * self.snr);
                    &x + &grad * &eps + z * (eps * 2.0).sqrt()
                }
            };
        }
        if sigma_next == 0.0 {
            return ctx.denoise(&(x / s), sigma);
        }
        let b2 = s * s * (sigma * sigma - sigma_next * sigma_next);
        let b = b2.sqrt();
        let x_next = match self.predictor {
            PcPredictor::ReverseDiffusion => {
                let grad = score(ctx, &x)?;
                let z = ctx.noise.standard(STREAM_STEP, sigma_next, sigma)?;
                x * (2.0 - a) + grad * b2 + z * b
            }
            PcPredictor::AncestralSampling => {
                let grad = score(ctx, &x)?;
                let z = ctx.noise.standard(STREAM_STEP, sigma_next, sigma)?;
                match sde.name() {
                    "edm" | "ve" => x + grad * b2 + z * (sigma_next * b / sigma),
                    "vp" | "vp-cosine" => (x + grad * b2) / a + z * b,
                    other => {
                        return Err(SolverError::Invalid(format!(
                            "pc's ancestral-sampling predictor needs a VE, EDM or VP SDE (as score_sde's), not {other}"
                        )))
                    }
                }
            }
            PcPredictor::EulerMaruyama => {
                let grad = score(ctx, &x)?;
                let t_next = sde.sigma_inv(sigma_next);
                let drift = sde.reverse_drift(&x, t, &grad);
                let dw = ctx.noise.increment(STREAM_TIME, t_next, t)?;
                x + drift * (t_next - t) + dw * sde.diffusion(t)
            }
            PcPredictor::None => x,
        };
        Ok(x_next / s_next)
    }
}
