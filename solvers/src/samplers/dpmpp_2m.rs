//! DPM-Solver++(2M), Lu et al. (2022b), Algorithm 2 (data prediction, multistep, second order),
//! in the form of k-diffusion's `sample_dpmpp_2m`. With `lambda = -log sigma`, `h = lambda' -
//! lambda` and `r = h_prev / h`:
//!
//! `x' = (sigma' / sigma) x - expm1(-h) D~`, `D~ = (1 + 1/(2r)) D_i - 1/(2r) D_{i-1}`,
//!
//! and `D~ = D_i` (first order) on the first step and on the step to sigma = 0, which returns
//! `D_i`. One evaluation per step.

use crate::driver::{Sampler, StepCtx};
use crate::error::Result;
use tch::Tensor;

pub struct DpmPp2M;

/// `-log sigma`.
pub(crate) fn lambda(sigma: f64) -> f64 {
    -sigma.ln()
}

impl Sampler for DpmPp2M {
    fn name(&self) -> &'static str {
        "dpmpp-2m"
    }
    fn invertible(&self) -> bool {
        true
    }
    fn step(&self, ctx: &mut StepCtx<'_>, x: Tensor) -> Result<Tensor> {
        let (s, s_next) = (ctx.sigma(), ctx.sigma_next());
        let denoised = ctx.denoise(&x, s)?;
        let out = if s_next == 0.0 {
            denoised.shallow_clone()
        } else {
            let h = lambda(s_next) - lambda(s);
            let d = match ctx.history.last() {
                Some(old) if ctx.index > 0 => {
                    let h_last = lambda(s) - lambda(ctx.sigmas[ctx.index - 1]);
                    let r = h_last / h;
                    &denoised * (1.0 + 1.0 / (2.0 * r)) - old * (1.0 / (2.0 * r))
                }
                _ => denoised.shallow_clone(),
            };
            x * (s_next / s) - d * (-h).exp_m1()
        };
        ctx.history.clear();
        ctx.history.push(denoised);
        Ok(out)
    }
}
