//! Euler ancestral (k-diffusion `sample_euler_ancestral`): an Euler step down to
//! `sigma_down`, then fresh noise of standard deviation `sigma_up`, where
//! `sigma_up = min(sigma', eta sqrt(sigma'^2 (sigma^2 - sigma'^2) / sigma^2))` and
//! `sigma_down = sqrt(sigma'^2 - sigma_up^2)` (`get_ancestral_step`). With `eta = 1` this is the
//! DDPM ancestral step in the sigma parameterization. One evaluation per step.

use super::{add_step_noise, check_nonneg};
use crate::driver::{Sampler, StepCtx};
use crate::error::Result;
use tch::Tensor;

#[derive(Clone, Debug)]
pub struct EulerAncestral {
    pub eta: f64,
    pub s_noise: f64,
}

/// `(sigma_down, sigma_up)` for a step from `sigma` to `sigma_next` (k-diffusion
/// `get_ancestral_step`).
pub fn ancestral_step(sigma: f64, sigma_next: f64, eta: f64) -> (f64, f64) {
    if eta == 0.0 || sigma_next == 0.0 {
        return (sigma_next, 0.0);
    }
    let up = sigma_next.min(
        eta * (sigma_next * sigma_next * (sigma * sigma - sigma_next * sigma_next)
            / (sigma * sigma))
            .sqrt(),
    );
    let down = (sigma_next * sigma_next - up * up).max(0.0).sqrt();
    (down, up)
}

impl EulerAncestral {
    pub fn new(eta: f64, s_noise: f64) -> Result<Self> {
        check_nonneg("eta", eta)?;
        check_nonneg("s_noise", s_noise)?;
        Ok(EulerAncestral { eta, s_noise })
    }
}

impl Sampler for EulerAncestral {
    fn name(&self) -> &'static str {
        "euler-ancestral"
    }
    fn step(&self, ctx: &mut StepCtx<'_>, x: Tensor) -> Result<Tensor> {
        let (s, s_next) = (ctx.sigma(), ctx.sigma_next());
        let (down, up) = ancestral_step(s, s_next, self.eta);
        let d = ctx.derivative(&x, s)?;
        let x = x + d * (down - s);
        add_step_noise(ctx, x, s_next, s, up * self.s_noise)
    }
}
