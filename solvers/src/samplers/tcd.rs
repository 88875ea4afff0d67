//! `tcd`: strategic stochastic sampling (Zheng, He, Yu, Shen & Lu 2024, "Trajectory Consistency
//! Distillation", Algorithm 4; diffusers' `TCDScheduler.step`, whose argument `eta` is the
//! paper's `gamma`; ComfyUI's `sample_tcd`). Each step denoises, moves deterministically (a DDIM
//! step) to the level of an earlier time `(1 - gamma) t'`, and diffuses forward from there to
//! the next level with fresh noise:
//!
//! `sigma_s = sigma((1 - gamma) t(sigma'))`,
//! `x_s = D + (sigma_s / sigma) (x - D)`, with `D = D(x; sigma)`,
//! `x' = x_s + sqrt(sigma'^2 - sigma_s^2) z`,
//!
//! in the scaled variable (in the VP variable `x_vp = x / sqrt(1 + sigma^2)` this is diffusers'
//! `x_s = sqrt(a_s) x0 + sqrt(1 - a_s) eps`, `x' = sqrt(a' / a_s) x_s + sqrt(1 - a' / a_s) z`).
//! The time `t` is the forward process's (`--sde`): under EDM `sigma_s = (1 - gamma) sigma'`, under
//! VP the fraction of DDPM's timestep that diffusers floors to an integer. `z` is the step
//! stream's normal on `[sigma', sigma]` (that of the ancestral samplers); the step to 0 returns
//! `D`. `gamma = 0` is DDIM (= `euler`), `gamma = 1` (where `sigma(0) = 0`) is `lcm`. One
//! evaluation per step.

use super::{add_step_noise, require};
use crate::driver::{Sampler, StepCtx};
use crate::error::Result;
use tch::Tensor;

#[derive(Clone, Debug)]
pub struct Tcd {
    pub gamma: f64,
}

impl Tcd {
    pub fn new(gamma: f64) -> Result<Self> {
        require(
            "gamma",
            gamma,
            (0.0..=1.0).contains(&gamma),
            "must be within [0, 1]",
        )?;
        Ok(Tcd { gamma })
    }

    /// The intermediate level `sigma_s` of a step to `sigma_next` (at most `sigma_next`).
    pub fn sigma_s(&self, sde: &dyn crate::sde::Sde, sigma_next: f64) -> f64 {
        if self.gamma == 0.0 {
            return sigma_next;
        }
        let t = (1.0 - self.gamma) * sde.sigma_inv(sigma_next);
        sde.sigma(t).clamp(0.0, sigma_next)
    }
}

impl Sampler for Tcd {
    fn name(&self) -> &'static str {
        "tcd"
    }
    fn invertible(&self) -> bool {
        self.gamma == 0.0
    }
    fn step(&self, ctx: &mut StepCtx<'_>, x: Tensor) -> Result<Tensor> {
        let (s, s_next) = (ctx.sigma(), ctx.sigma_next());
        let d = ctx.denoise(&x, s)?;
        if s_next == 0.0 {
            return Ok(d);
        }
        let sigma_s = self.sigma_s(ctx.sde, s_next);
        let x_s = &d + (x - &d) * (sigma_s / s);
        let scale = (s_next * s_next - sigma_s * sigma_s).max(0.0).sqrt();
        add_step_noise(ctx, x_s, s_next, s, scale)
    }
}
