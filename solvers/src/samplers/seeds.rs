//! SEEDS, the stochastic explicit exponential derivative-free solvers of Gonzalez, Fernandez,
//! Tran, Gherbi, Hajri & Masmoudi (2023, "SEEDS: Exponential SDE Solvers for Fast High-Quality
//! Sampling from Diffusion Models", NeurIPS), in data prediction and `lambda = -log sigma` as
//! ComfyUI's `sample_seeds_2` and `sample_seeds_3` (`comfy/k_diffusion/sampling.py`, from
//! ComfyUI pull request 7580) write them.
//!
//! Each step from `sigma` to `sigma'` solves the SDE whose noise is the fraction `eta` of the
//! reverse diffusion's (`eta = 0`: the probability-flow ODE, `eta = 1`: the reverse SDE) with
//! its linear part exact: with `h = lambda(sigma') - lambda(sigma)`, `h_eta = (1 + eta) h` and
//! stages at `lambda + r_k h`, a stage from `sigma` to `sigma_k` is
//!
//! `x_k = (sigma_k / sigma) e^{-r_k h eta} x - sum_j a_kj D_j + sigma_k s_noise n_k`,
//!
//! with the weights `a_kj` built from `e^z - 1` and `(e^z - 1 - z) / z` at `z = -r_k h_eta`
//! (ComfyUI's `ei_h_phi_1`, `ei_h_phi_2`), and the noise `n_k` the exact Ornstein-Uhlenbeck
//! increment of one Brownian path: the stage's noise carries the previous stage's, decayed by
//! `e^{-(r_k - r_{k-1}) h eta}`, plus a fresh normal of variance `1 - e^{-2 (r_k - r_{k-1}) h eta}`
//! on that stretch of the path (the step stream on `[sigma_k, sigma_{k-1}]`). The step to
//! sigma = 0 returns the denoised estimate. At `eta = 0` the solvers are DPM-Solver++'s
//! singlestep methods of orders 2 and 3.

use super::dpmpp_2m::lambda;
use super::{check_nonneg, require};
use crate::driver::{Sampler, StepCtx};
use crate::error::{Result, SolverError};
use crate::noise::STREAM_STEP;
use serde::{Deserialize, Serialize};
use tch::Tensor;

/// The second stage's combination in `seeds-2` (ComfyUI's `solver_type`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum SeedsSolverType {
    /// `D~ = (1 - 1/(2r)) D + 1/(2r) D_2` weighted by `e^z - 1` (the midpoint form).
    #[default]
    #[serde(rename = "phi_1")]
    Phi1,
    /// `D` and `D_2` weighted by `e^z - 1 - b_2` and `b_2 = (e^z - 1 - z) / (z r)` (the
    /// exponential Heun form; at `r = 1` ComfyUI's `exp_heun_2_x0`).
    #[serde(rename = "phi_2")]
    Phi2,
}

impl std::str::FromStr for SeedsSolverType {
    type Err = SolverError;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "phi_1" => Ok(SeedsSolverType::Phi1),
            "phi_2" => Ok(SeedsSolverType::Phi2),
            _ => Err(SolverError::Invalid(format!(
                "unknown solver type '{s}' for seeds-2 (known: phi_1, phi_2)"
            ))),
        }
    }
}

/// `e^z - 1` (ComfyUI's `ei_h_phi_1`: `z phi_1(z)`).
fn ei_phi1(z: f64) -> f64 {
    z.exp_m1()
}

/// `(e^z - 1 - z) / z` (ComfyUI's `ei_h_phi_2`: `z phi_2(z)`).
fn ei_phi2(z: f64) -> f64 {
    (z.exp_m1() - z) / z
}

/// `a + w (b - a)` as `torch.lerp` computes it (from the nearer end).
fn lerp(a: f64, b: f64, w: f64) -> f64 {
    if w < 0.5 {
        a + w * (b - a)
    } else {
        b - (b - a) * (1.0 - w)
    }
}

/// The noise the stages of one step carry, one Ornstein-Uhlenbeck path (none on a
/// deterministic run: `eta = 0` or `s_noise = 0`).
struct StageNoise {
    /// The accumulated standard-deviation-one noise at the last stage's level.
    carried: Option<Tensor>,
    eta: f64,
    s_noise: f64,
}

impl StageNoise {
    fn new(eta: f64, s_noise: f64) -> Self {
        StageNoise {
            carried: None,
            eta: if eta > 0.0 && s_noise > 0.0 { eta } else { 0.0 },
            s_noise,
        }
    }

    /// `x + sigma s_noise n` for the stage `r_to h` into the step, where `n` is the previous
    /// stage's noise (at `r_from h`, sigma `hi`) decayed plus a fresh normal on the stretch of
    /// the path to this stage (sigma `lo`); `x` itself on a deterministic run. No draw on a
    /// stretch of length 0 (weight 0).
    fn add(
        &mut self,
        ctx: &mut StepCtx<'_>,
        x: Tensor,
        h: f64,
        (r_from, r_to): (f64, f64),
        (lo, hi): (f64, f64),
    ) -> Result<Tensor> {
        if self.eta == 0.0 {
            return Ok(x);
        }
        let seg = (r_from - r_to) * h * self.eta;
        let fresh = if seg == 0.0 {
            None
        } else {
            Some(ctx.noise.standard(STREAM_STEP, lo, hi)? * (-(2.0 * seg).exp_m1()).sqrt())
        };
        let n = match (self.carried.take(), fresh) {
            (Some(c), Some(f)) => c * seg.exp() + f,
            (Some(c), None) => c * seg.exp(),
            (None, Some(f)) => f,
            (None, None) => return Ok(x),
        };
        let out = x + &n * (lo * self.s_noise);
        self.carried = Some(n);
        Ok(out)
    }
}

/// A step's `h = lambda(sigma') - lambda(sigma)`, `h_eta = (1 + eta) h` and the level of its
/// stage at `r h` (`lerp` in lambda, as ComfyUI).
fn step_frame(s: f64, s_next: f64, eta: f64) -> (f64, f64, impl Fn(f64) -> f64) {
    let (lam, lam_next) = (lambda(s), lambda(s_next));
    let h = lam_next - lam;
    (h, h * (eta + 1.0), move |r| (-lerp(lam, lam_next, r)).exp())
}

/// The first-order first stage to `sigma_1 = stage(r)`:
/// `x_2 = (sigma_1 / sigma) e^{-r h eta} x - E(-r h_eta) D` plus its noise.
fn first_stage(
    ctx: &mut StepCtx<'_>,
    noise: &mut StageNoise,
    x: &Tensor,
    d: &Tensor,
    (s, s_1): (f64, f64),
    r: f64,
    (h, h_eta, eta): (f64, f64, f64),
) -> Result<Tensor> {
    let x_2 = x * (s_1 / s * (-r * h * eta).exp()) - d * ei_phi1(-r * h_eta);
    noise.add(ctx, x_2, h, (0.0, r), (s_1, s))
}

/// SEEDS-2: two evaluations per step, the stage at `r h` (1/2 by default).
#[derive(Clone, Debug)]
pub struct Seeds2 {
    pub eta: f64,
    pub s_noise: f64,
    pub r: f64,
    pub solver_type: SeedsSolverType,
}

impl Seeds2 {
    pub fn new(eta: f64, s_noise: f64, r: f64, solver_type: SeedsSolverType) -> Result<Self> {
        check_nonneg("eta", eta)?;
        check_nonneg("s_noise", s_noise)?;
        require("r", r, r > 0.0 && r <= 1.0, "must be > 0 and <= 1")?;
        Ok(Seeds2 {
            eta,
            s_noise,
            r,
            solver_type,
        })
    }
}

impl Sampler for Seeds2 {
    fn name(&self) -> &'static str {
        "seeds-2"
    }
    fn invertible(&self) -> bool {
        self.eta == 0.0
    }
    fn step(&self, ctx: &mut StepCtx<'_>, x: Tensor) -> Result<Tensor> {
        let (s, s_next) = (ctx.sigma(), ctx.sigma_next());
        let d = ctx.denoise(&x, s)?;
        if s_next == 0.0 {
            return Ok(d);
        }
        let (eta, r) = (self.eta, self.r);
        let (h, h_eta, stage) = step_frame(s, s_next, eta);
        let s_1 = stage(r);
        let mut noise = StageNoise::new(eta, self.s_noise);
        // Stage 1: to sigma_1.
        let x_2 = first_stage(ctx, &mut noise, &x, &d, (s, s_1), r, (h, h_eta, eta))?;
        let d_2 = ctx.denoise(&x_2, s_1)?;
        // Stage 2: the whole step.
        let lin = s_next / s * (-h * eta).exp();
        let out = match self.solver_type {
            SeedsSolverType::Phi1 => {
                let fac = 1.0 / (2.0 * r);
                let mixed = if fac == 1.0 {
                    d_2
                } else {
                    d * (1.0 - fac) + d_2 * fac
                };
                x * lin - mixed * ei_phi1(-h_eta)
            }
            SeedsSolverType::Phi2 => {
                let b2 = ei_phi2(-h_eta) / r;
                let b1 = ei_phi1(-h_eta) - b2;
                x * lin - (d * b1 + d_2 * b2)
            }
        };
        noise.add(ctx, out, h, (r, 1.0), (s_next, s_1))
    }
}

/// SEEDS-3: three evaluations per step, stages at `r_1 h` and `r_2 h` (1/3 and 2/3).
#[derive(Clone, Debug)]
pub struct Seeds3 {
    pub eta: f64,
    pub s_noise: f64,
    pub r_1: f64,
    pub r_2: f64,
}

impl Seeds3 {
    pub fn new(eta: f64, s_noise: f64, r_1: f64, r_2: f64) -> Result<Self> {
        check_nonneg("eta", eta)?;
        check_nonneg("s_noise", s_noise)?;
        require("r_1", r_1, r_1 > 0.0 && r_1 < 1.0, "must be > 0 and < 1")?;
        require(
            "r_2",
            r_2,
            r_2 > r_1 && r_2 <= 1.0,
            "must be > r_1 and <= 1",
        )?;
        Ok(Seeds3 {
            eta,
            s_noise,
            r_1,
            r_2,
        })
    }
}

impl Sampler for Seeds3 {
    fn name(&self) -> &'static str {
        "seeds-3"
    }
    fn invertible(&self) -> bool {
        self.eta == 0.0
    }
    fn step(&self, ctx: &mut StepCtx<'_>, x: Tensor) -> Result<Tensor> {
        let (s, s_next) = (ctx.sigma(), ctx.sigma_next());
        let d = ctx.denoise(&x, s)?;
        if s_next == 0.0 {
            return Ok(d);
        }
        let (eta, r_1, r_2) = (self.eta, self.r_1, self.r_2);
        let (h, h_eta, stage) = step_frame(s, s_next, eta);
        let (s_1, s_2) = (stage(r_1), stage(r_2));
        let mut noise = StageNoise::new(eta, self.s_noise);
        // Stage 1: to sigma_1, first order.
        let x_2 = first_stage(ctx, &mut noise, &x, &d, (s, s_1), r_1, (h, h_eta, eta))?;
        let d_2 = ctx.denoise(&x_2, s_1)?;
        // Stage 2: to sigma_2, second order through D and D_2.
        let a2 = r_2 / r_1 * ei_phi2(-r_2 * h_eta);
        let a1 = ei_phi1(-r_2 * h_eta) - a2;
        let x_3 = &x * (s_2 / s * (-r_2 * h * eta).exp()) - (&d * a1 + d_2 * a2);
        let x_3 = noise.add(ctx, x_3, h, (r_1, r_2), (s_2, s_1))?;
        let d_3 = ctx.denoise(&x_3, s_2)?;
        // Stage 3: the whole step through D and D_3.
        let b3 = ei_phi2(-h_eta) / r_2;
        let b1 = ei_phi1(-h_eta) - b3;
        let out = x * (s_next / s * (-h * eta).exp()) - (d * b1 + d_3 * b3);
        noise.add(ctx, out, h, (r_2, 1.0), (s_next, s_2))
    }
}
