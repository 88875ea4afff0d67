//! Euler's method on the probability-flow ODE `dx/dsigma = (x - D(x; sigma)) / sigma`
//! (Karras et al. 2022, Algorithm 1 without the correction; k-diffusion `sample_euler`).
//! One evaluation per step; the step to sigma = 0 returns `D(x; sigma_{n-1})`.

use crate::driver::{Sampler, StepCtx};
use crate::error::Result;
use tch::Tensor;

pub struct Euler;

impl Sampler for Euler {
    fn name(&self) -> &'static str {
        "euler"
    }
    fn step(&self, ctx: &mut StepCtx<'_>, x: Tensor) -> Result<Tensor> {
        let (s, s_next) = (ctx.sigma(), ctx.sigma_next());
        let d = ctx.derivative(&x, s)?;
        Ok(x + d * (s_next - s))
    }
}
