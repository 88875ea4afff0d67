//! DPM-Solver-2 in the form of k-diffusion's `sample_dpm_2` (Lu et al. 2022a; Karras et al.
//! 2022, Appendix on the midpoint variant): an Euler half step to the geometric midpoint
//! `sigma_mid = sqrt(sigma sigma')`, then the full step with the midpoint's derivative. The step
//! to sigma = 0 is an Euler step, so `n` steps cost `2n - 1` evaluations.

use crate::driver::{Sampler, StepCtx};
use crate::error::Result;
use tch::Tensor;

pub struct Dpm2;

impl Sampler for Dpm2 {
    fn name(&self) -> &'static str {
        "dpm2"
    }
    fn step(&self, ctx: &mut StepCtx<'_>, x: Tensor) -> Result<Tensor> {
        let (s, s_next) = (ctx.sigma(), ctx.sigma_next());
        let d = ctx.derivative(&x, s)?;
        if s_next == 0.0 {
            return Ok(x + d * (s_next - s));
        }
        let s_mid = (0.5 * (s.ln() + s_next.ln())).exp();
        let x_mid = &x + d * (s_mid - s);
        let d_mid = ctx.derivative(&x_mid, s_mid)?;
        Ok(x + d_mid * (s_next - s))
    }
}
