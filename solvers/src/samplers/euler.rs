//! Euler's method on the probability-flow ODE `dx/dsigma = (x - D(x; sigma)) / sigma`
//! (Karras et al. 2022, Algorithm 1 without the correction; k-diffusion `sample_euler`).
//! One evaluation per step; the step to sigma = 0 returns `D(x; sigma_{n-1})`. With
//! `s_churn > 0` each step first adds EDM's churn ([`Churn`]) and steps from the raised level
//! `sigma_hat` (Algorithm 2 with Euler steps, as k-diffusion's `sample_euler`).

use super::edm_stochastic::Churn;
use crate::driver::{Sampler, StepCtx};
use crate::error::Result;
use tch::Tensor;

#[derive(Clone, Debug, Default)]
pub struct Euler {
    pub churn: Churn,
}

impl Euler {
    pub fn new(churn: Churn) -> Result<Self> {
        churn.validate()?;
        Ok(Euler { churn })
    }
}

impl Sampler for Euler {
    fn name(&self) -> &'static str {
        "euler"
    }
    fn invertible(&self) -> bool {
        self.churn.s_churn == 0.0
    }
    fn step(&self, ctx: &mut StepCtx<'_>, x: Tensor) -> Result<Tensor> {
        let (x, s) = self.churn.apply(ctx, x)?;
        let s_next = ctx.sigma_next();
        let d = ctx.derivative(&x, s)?;
        Ok(x + d * (s_next - s))
    }
}
