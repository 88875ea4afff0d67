//! Predictor-corrector sampling, Song et al. (2021), Algorithms 2 (VE) and 3 (VP), in the
//! order of score_sde's `pc_sampler`: at each level, `corrector_steps` Langevin corrector steps,
//! then the reverse-diffusion predictor to the next level.
//!
//! Both work in the unscaled variable `x = s(t) x^` with the score `score(x) = (D(x^; sigma) -
//! x^) / (s sigma^2)`. The forward transition between the levels is `x_t = a x_t' + b xi` with
//! `a = s(t) / s(t')`, `b^2 = s(t)^2 (sigma^2 - sigma'^2)`: for VE `a = 1, b^2 = sigma^2 -
//! sigma'^2` and for VP `a = sqrt(1 - beta_i), b^2 = beta_i`, as in the paper.
//!
//! - Predictor (reverse diffusion): `x' = (2 - a) x + b^2 score(x) + b z`.
//! - Corrector (Langevin): `eps = 2 alpha (snr |z| / |score|)^2`, `x <- x + eps score(x) +
//!   sqrt(2 eps) z`, with `alpha = a^2` (1 for VE, `alpha_i` for VP). As in score_sde's
//!   `LangevinCorrector`, `|z|` and `|score|` are per-sample norms averaged over the batch, so
//!   the step size (only) depends on the batch. Per-sample norms are unstable in low dimension:
//!   a sample near a mode centre has a tiny score and takes a huge step.
//!
//! The step to sigma = 0 corrects, then returns `D(x^; sigma_{n-1})` (score_sde's final
//! denoising). `n (1 + corrector_steps)` evaluations.

use super::check_nonneg;
use crate::driver::{Sampler, StepCtx};
use crate::error::Result;
use crate::noise::{STREAM_CORRECTOR, STREAM_STEP};
use tch::Tensor;

#[derive(Clone, Debug)]
pub struct Pc {
    pub snr: f64,
    pub corrector_steps: usize,
}

impl Pc {
    pub fn new(snr: f64, corrector_steps: usize) -> Result<Self> {
        check_nonneg("snr", snr)?;
        Ok(Pc {
            snr,
            corrector_steps,
        })
    }
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
        for j in 0..self.corrector_steps {
            let grad = score(ctx, &x)?;
            let z = ctx
                .noise
                .standard(STREAM_CORRECTOR + j as u64, sigma_next, sigma)?;
            let ratio = mean_norm(&z) / mean_norm(&grad).clamp_min(1e-30);
            let eps = ratio.square() * (2.0 * a * a * self.snr * self.snr);
            x = &x + &grad * &eps + z * (eps * 2.0).sqrt();
        }
        if sigma_next == 0.0 {
            return ctx.denoise(&(x / s), sigma);
        }
        let b = s * (sigma * sigma - sigma_next * sigma_next).sqrt();
        let grad = score(ctx, &x)?;
        let z = ctx.noise.standard(STREAM_STEP, sigma_next, sigma)?;
        let x_next = x * (2.0 - a) + grad * (b * b) + z * b;
        Ok(x_next / s_next)
    }
}
