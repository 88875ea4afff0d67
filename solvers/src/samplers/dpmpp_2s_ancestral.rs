//! DPM-Solver++(2S) ancestral, k-diffusion's `sample_dpmpp_2s_ancestral`: a singlestep
//! second-order data-prediction step (Lu et al. 2022b, Algorithm 1 with `r = 1/2`) down to
//! `sigma_down` of [`ancestral_step`], then fresh noise of standard deviation
//! `s_noise sigma_up`. With `lambda = -log sigma` and `h = lambda(sigma_down) - lambda(sigma)`:
//!
//! `u = (sigma_mid / sigma) x - expm1(-h / 2) D(x; sigma)`, `sigma_mid = sqrt(sigma sigma_down)`,
//! `x' = (sigma_down / sigma) x - expm1(-h) D(u; sigma_mid) + s_noise sigma_up z`,
//!
//! `z` the step's standard normal from the Brownian path ([`crate::noise::STREAM_STEP`], the draw
//! `euler-ancestral` uses). The step to sigma = 0 is an Euler step (it returns `D(x; sigma)`),
//! so `n` steps cost `2n - 1` evaluations. `eta = 0` is the deterministic DPM-Solver++(2S).

use super::euler_ancestral::ancestral_step;
use super::{add_step_noise, check_nonneg};
use crate::driver::{Sampler, StepCtx};
use crate::error::Result;
use tch::Tensor;

#[derive(Clone, Debug)]
pub struct DpmPp2SAncestral {
    pub eta: f64,
    pub s_noise: f64,
}

impl DpmPp2SAncestral {
    pub fn new(eta: f64, s_noise: f64) -> Result<Self> {
        check_nonneg("eta", eta)?;
        check_nonneg("s_noise", s_noise)?;
        Ok(DpmPp2SAncestral { eta, s_noise })
    }
}

impl Sampler for DpmPp2SAncestral {
    fn name(&self) -> &'static str {
        "dpmpp-2s-ancestral"
    }
    fn step(&self, ctx: &mut StepCtx<'_>, x: Tensor) -> Result<Tensor> {
        let (s, s_next) = (ctx.sigma(), ctx.sigma_next());
        let (down, up) = ancestral_step(s, s_next, self.eta);
        let denoised = ctx.denoise(&x, s)?;
        let x = if down == 0.0 {
            // Euler's step to 0, as k-diffusion takes it: x + (x - D) / sigma * (0 - sigma).
            let d = (&x - &denoised) / s;
            x + d * (down - s)
        } else {
            let h = s.ln() - down.ln();
            let s_mid = (0.5 * (s.ln() + down.ln())).exp();
            let u = &x * (s_mid / s) - &denoised * (-0.5 * h).exp_m1();
            let denoised_2 = ctx.denoise(&u, s_mid)?;
            x * (down / s) - denoised_2 * (-h).exp_m1()
        };
        add_step_noise(ctx, x, s_next, s, up * self.s_noise)
    }
}
