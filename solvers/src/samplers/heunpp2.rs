//! Heun++ (`heunpp2`), the sampler of Carzit's `sd-webui-samplers-scheduler` (MIT) as ComfyUI
//! ships it (`sample_heunpp2`, `comfy/k_diffusion/sampling.py`): no paper describes it. Each step
//! takes up to three Euler stages along the grid and steps with a weighted mean of their
//! derivatives, the weights of the look-ahead stages proportional to their levels:
//!
//! with `d_j = (x_j - D(x_j; sigma_j)) / sigma_j`, `h = sigma_{i+1} - sigma_hat`,
//! `x_2 = x + h d_1` at `sigma_{i+1}`, `x_3 = x_2 + (sigma_{i+2} - sigma_{i+1}) d_2` at
//! `sigma_{i+2}`:
//!
//! - the last step (`sigma_{i+1} = 0`): Euler, `x + h d_1`;
//! - the step before it: `x + h ((1 - w_2) d_1 + w_2 d_2)`, `w_2 = sigma_{i+1} / (2 sigma_0)`;
//! - every other step: `x + h ((1 - w_2 - w_3) d_1 + w_2 d_2 + w_3 d_3)`,
//!   `w_2 = sigma_{i+1} / (3 sigma_0)`, `w_3 = sigma_{i+2} / (3 sigma_0)`,
//!
//! `sigma_0` the grid's first level. The weights sum to one (a consistent, first-order method
//! that leans on Euler as the levels fall). EDM's churn as `heun` takes it (`sigma_hat`); ComfyUI
//! draws the churn's normal on every step, also where gamma is 0, scoreflow only where it adds
//! it. `n` steps cost `3n - 3` evaluations (`n >= 2`; one step costs one).

use super::edm_stochastic::Churn;
use crate::driver::{Sampler, StepCtx};
use crate::error::Result;
use tch::Tensor;

#[derive(Clone, Debug)]
pub struct HeunPp2 {
    pub churn: Churn,
}

impl HeunPp2 {
    pub fn new(churn: Churn) -> Result<Self> {
        churn.validate()?;
        Ok(HeunPp2 { churn })
    }

    /// Network evaluations for `steps` steps.
    pub fn nfe(steps: usize) -> usize {
        if steps >= 2 {
            3 * steps - 3
        } else {
            steps
        }
    }
}

impl Sampler for HeunPp2 {
    fn name(&self) -> &'static str {
        "heunpp2"
    }
    fn step(&self, ctx: &mut StepCtx<'_>, x: Tensor) -> Result<Tensor> {
        let (x, s_hat) = self.churn.apply(ctx, x)?;
        let (i, sigmas) = (ctx.index, ctx.sigmas);
        let (first, end) = (sigmas[0], sigmas[sigmas.len() - 1]);
        let s_1 = sigmas[i + 1];
        let h = s_1 - s_hat;
        let d = ctx.derivative(&x, s_hat)?;
        if s_1 == end {
            return Ok(x + d * h);
        }
        let x_2 = &x + &d * h;
        let d_2 = ctx.derivative(&x_2, s_1)?;
        let s_2 = sigmas[i + 2];
        if s_2 == end {
            let w_2 = s_1 / (2.0 * first);
            return Ok(x + (d * (1.0 - w_2) + d_2 * w_2) * h);
        }
        let x_3 = x_2 + &d_2 * (s_2 - s_1);
        let d_3 = ctx.derivative(&x_3, s_2)?;
        let (w_2, w_3) = (s_1 / (3.0 * first), s_2 / (3.0 * first));
        Ok(x + (d * (1.0 - w_2 - w_3) + d_2 * w_2 + d_3 * w_3) * h)
    }
}
