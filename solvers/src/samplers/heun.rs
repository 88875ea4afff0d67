//! Heun's second-order method on the probability-flow ODE: Karras et al. (2022), Algorithm 1
//! (NVlabs/edm `generate.py`, k-diffusion `sample_heun`). The step to sigma = 0 is an Euler
//! step, so `n` steps cost `2n - 1` evaluations. With `s_churn > 0` each step first adds EDM's
//! churn ([`Churn`], as k-diffusion's `sample_heun` does): then it is `edm-stochastic`.

use super::edm_stochastic::Churn;
use crate::driver::{Sampler, StepCtx};
use crate::error::Result;
use tch::Tensor;

#[derive(Clone, Debug, Default)]
pub struct Heun {
    pub churn: Churn,
}

impl Heun {
    pub fn new(churn: Churn) -> Result<Self> {
        churn.validate()?;
        Ok(Heun { churn })
    }
}

/// A Heun step from `sigma` to `sigma_next` (Euler when `sigma_next` is 0). Shared with the
/// EDM stochastic sampler, whose deterministic part is this step.
pub(crate) fn heun_step(
    ctx: &mut StepCtx<'_>,
    x: &Tensor,
    sigma: f64,
    sigma_next: f64,
) -> Result<Tensor> {
    let h = sigma_next - sigma;
    let d = ctx.derivative(x, sigma)?;
    let euler = x + &d * h;
    if sigma_next == 0.0 {
        return Ok(euler);
    }
    let d_next = ctx.derivative(&euler, sigma_next)?;
    Ok(x + (d + d_next) * (0.5 * h))
}

impl Sampler for Heun {
    fn name(&self) -> &'static str {
        "heun"
    }
    fn invertible(&self) -> bool {
        self.churn.s_churn == 0.0
    }
    fn step(&self, ctx: &mut StepCtx<'_>, x: Tensor) -> Result<Tensor> {
        let (x, s) = self.churn.apply(ctx, x)?;
        let s_next = ctx.sigma_next();
        heun_step(ctx, &x, s, s_next)
    }
}
