//! `lcm`: multistep consistency sampling (Song, Dhariwal, Chen & Sutskever 2023, "Consistency
//! Models", Algorithm 1; Luo et al. 2023, "Latent Consistency Models", diffusers'
//! `LCMScheduler`; the same update is diffusers' `FlowMatchEulerDiscreteScheduler` with
//! `stochastic_sampling = True` and ComfyUI's `sample_lcm`): each step denoises and draws the
//! next level's noise afresh,
//!
//! `x' = D(x; sigma) + sigma' z`
//!
//! with `z` the step stream's normal on `[sigma', sigma]` (that of the ancestral samplers); the
//! step to 0 returns `D`. Nothing of `x` but its denoised estimate is carried to the next level:
//! a consistency model's sampler, which on a denoiser of a diffusion model is `euler-ancestral`
//! in the limit `eta -> inf` (`sigma_down = 0`, `sigma_up = sigma'`). One evaluation per step.

use super::add_step_noise;
use crate::driver::{Sampler, StepCtx};
use crate::error::Result;
use tch::Tensor;

#[derive(Clone, Debug, Default)]
pub struct Lcm;

impl Sampler for Lcm {
    fn name(&self) -> &'static str {
        "lcm"
    }
    fn step(&self, ctx: &mut StepCtx<'_>, x: Tensor) -> Result<Tensor> {
        let (s, s_next) = (ctx.sigma(), ctx.sigma_next());
        let d = ctx.denoise(&x, s)?;
        add_step_noise(ctx, d, s_next, s, s_next)
    }
}
