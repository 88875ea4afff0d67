//! DPM-Solver++ SDE, k-diffusion's `sample_dpmpp_sde` (its `r`, default 1/2, the position of
//! the intermediate level): each step is a singlestep second-order data-prediction step
//! (DPM-Solver++(2S), Lu et al. 2022b) whose two stages are each taken as an ancestral step.
//! With `lambda = -log sigma`, `t = lambda(sigma)`, `h = lambda(sigma') - t`,
//! `sigma_s = exp(-(t + r h))`:
//!
//! 1. `(d1, u1) = ancestral_step(sigma, sigma_s, eta)`;
//!    `x_2 = (d1 / sigma) x - expm1(lambda(sigma) - lambda(d1)) D_i + s_noise u1 z_1`;
//! 2. `(d2, u2) = ancestral_step(sigma, sigma', eta)`,
//!    `D~ = (1 - 1/(2r)) D_i + 1/(2r) D(x_2; sigma_s)` (the second evaluation; `D~ = D(x_2)` at
//!    `r = 1/2`); `x' = (d2 / sigma) x - expm1(lambda(sigma) - lambda(d2)) D~ + s_noise u2 z_2`,
//!
//! where `z_1 = (W(sigma) - W(sigma_s)) / sqrt(sigma - sigma_s)` and
//! `z_2 = (W(sigma) - W(sigma')) / sqrt(sigma - sigma')` come from one Brownian path
//! ([`crate::noise::STREAM_STEP`]; `z_2` is the draw `euler-ancestral` takes), so they are
//! correlated as in k-diffusion's `BrownianTreeNoiseSampler`. The step to sigma = 0 is an Euler
//! step (it returns `D_i`), so `n` steps cost `2n - 1` evaluations. At `eta = 0` this is
//! `dpmpp-2s-ancestral` at `eta = 0`.

use super::euler_ancestral::ancestral_step;
use super::{add_step_noise, check_nonneg, require};
use crate::driver::{Sampler, StepCtx};
use crate::error::Result;
use tch::Tensor;

#[derive(Clone, Debug)]
pub struct DpmPpSde {
    pub eta: f64,
    pub s_noise: f64,
    /// Where the intermediate level lies in the step, as a fraction of `h`, in `(0, 1]`.
    pub r: f64,
}

impl DpmPpSde {
    pub fn new(eta: f64, s_noise: f64, r: f64) -> Result<Self> {
        check_nonneg("eta", eta)?;
        check_nonneg("s_noise", s_noise)?;
        require("r", r, r > 0.0 && r <= 1.0, "must be > 0 and <= 1")?;
        Ok(DpmPpSde { eta, s_noise, r })
    }

    /// The intermediate level `sigma_s = exp(-(t + h r))`, computed as k-diffusion computes it
    /// (peers.py repeats this expression to find the same point on the path).
    pub fn mid_sigma(sigma: f64, sigma_next: f64, r: f64) -> f64 {
        let (t, t_next) = (-sigma.ln(), -sigma_next.ln());
        let h = t_next - t;
        (-(t + h * r)).exp()
    }
}

impl Sampler for DpmPpSde {
    fn name(&self) -> &'static str {
        "dpmpp-sde"
    }
    fn step(&self, ctx: &mut StepCtx<'_>, x: Tensor) -> Result<Tensor> {
        let (s, s_next) = (ctx.sigma(), ctx.sigma_next());
        let denoised = ctx.denoise(&x, s)?;
        if s_next == 0.0 {
            let d = (&x - &denoised) / s;
            return Ok(x + d * (s_next - s));
        }
        let t = -s.ln();
        let s_mid = Self::mid_sigma(s, s_next, self.r);
        // Stage 1: to sigma_s, ancestrally.
        let (d1, u1) = ancestral_step(s, s_mid, self.eta);
        let x_2 = &x * (d1 / s) - &denoised * (t + d1.ln()).exp_m1();
        let x_2 = add_step_noise(ctx, x_2, s_mid, s, u1 * self.s_noise)?;
        let denoised_2 = ctx.denoise(&x_2, s_mid)?;
        // Stage 2: the whole step with D~ = (1 - fac) D_i + fac D(x_2; sigma_s), fac = 1/(2r).
        let (d2, u2) = ancestral_step(s, s_next, self.eta);
        let fac = 1.0 / (2.0 * self.r);
        let mixed = if fac == 1.0 {
            denoised_2
        } else {
            denoised * (1.0 - fac) + denoised_2 * fac
        };
        let out = x * (d2 / s) - mixed * (t + d2.ln()).exp_m1();
        add_step_noise(ctx, out, s_next, s, u2 * self.s_noise)
    }
}
