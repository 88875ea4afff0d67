//! `gradient-estimation`: the gradient-estimation sampler of Permenter & Yuan (2024,
//! "Interpreting and Improving Diffusion Models from an Optimization Perspective", ICML;
//! Algorithm 2), as ComfyUI's `sample_gradient_estimation`. With `d_i = (x - D_i) / sigma_i` (the
//! network's noise estimate), each step after the first moves along a combination of the current
//! and the previous estimate,
//!
//! `x' = x + (sigma' - sigma) (gamma d_i + (1 - gamma) d_{i-1})`,
//!
//! the first step is Euler's and the step to 0 returns `D_i`. `gamma = 1` is `euler`; the
//! paper's and ComfyUI's default is `gamma = 2` (`ge_gamma`). One evaluation per step.

use super::require;
use crate::driver::{Sampler, StepCtx};
use crate::error::Result;
use tch::Tensor;

#[derive(Clone, Debug)]
pub struct GradientEstimation {
    pub ge_gamma: f64,
}

impl GradientEstimation {
    pub fn new(ge_gamma: f64) -> Result<Self> {
        require("ge_gamma", ge_gamma, ge_gamma.is_finite(), "must be finite")?;
        Ok(GradientEstimation { ge_gamma })
    }
}

impl Sampler for GradientEstimation {
    fn name(&self) -> &'static str {
        "gradient-estimation"
    }
    fn step(&self, ctx: &mut StepCtx<'_>, x: Tensor) -> Result<Tensor> {
        let (s, s_next, i) = (ctx.sigma(), ctx.sigma_next(), ctx.index);
        let den = ctx.denoise(&x, s)?;
        let d = (&x - &den) / s;
        let out = if s_next == 0.0 {
            den
        } else {
            let dt = s_next - s;
            match ctx.history.first() {
                Some(old) if i > 0 => x + &d * dt + (&d - old) * ((self.ge_gamma - 1.0) * dt),
                _ => x + &d * dt,
            }
        };
        ctx.history.clear();
        ctx.history.push(d);
        Ok(out)
    }
}
