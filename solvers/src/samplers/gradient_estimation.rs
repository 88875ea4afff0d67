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
//!
//! `gradient-estimation-cfgpp` is ComfyUI's `sample_gradient_estimation_cfg_pp` (CFG++, Chung et
//! al. 2025): the noise estimate from the guided evaluation's unconditional half,
//! `d_i = (x - D_u) / sigma_i`, and the Euler part of the step taken from the guided estimate,
//! `x' = D + sigma' d_i + (sigma' - sigma)(gamma - 1)(d_i - d_{i-1})`; without guidance it is
//! `gradient-estimation`.

use super::require;
use crate::driver::{Sampler, StepCtx};
use crate::error::Result;
use tch::Tensor;

#[derive(Clone, Debug)]
pub struct GradientEstimation {
    pub ge_gamma: f64,
    /// CFG++'s form (`gradient-estimation-cfgpp`).
    pub cfgpp: bool,
}

impl GradientEstimation {
    pub fn new(ge_gamma: f64) -> Result<Self> {
        require("ge_gamma", ge_gamma, ge_gamma.is_finite(), "must be finite")?;
        Ok(GradientEstimation {
            ge_gamma,
            cfgpp: false,
        })
    }

    /// `gradient-estimation-cfgpp`.
    pub fn cfg_pp(ge_gamma: f64) -> Result<Self> {
        Ok(GradientEstimation {
            cfgpp: true,
            ..Self::new(ge_gamma)?
        })
    }
}

impl Sampler for GradientEstimation {
    fn name(&self) -> &'static str {
        if self.cfgpp {
            "gradient-estimation-cfgpp"
        } else {
            "gradient-estimation"
        }
    }
    fn step(&self, ctx: &mut StepCtx<'_>, x: Tensor) -> Result<Tensor> {
        let (s, s_next, i) = (ctx.sigma(), ctx.sigma_next(), ctx.index);
        let (den, stepped) = if self.cfgpp {
            ctx.denoise_guided(&x, s)?
        } else {
            let d = ctx.denoise(&x, s)?;
            (d.shallow_clone(), d)
        };
        let d = (&x - &stepped) / s;
        let out = if s_next == 0.0 {
            den
        } else {
            let dt = s_next - s;
            // The Euler part: x + dt d, or CFG++'s D + sigma' d_u.
            let euler = if self.cfgpp {
                den + &d * s_next
            } else {
                x + &d * dt
            };
            match ctx.history.first() {
                Some(old) if i > 0 => euler + (&d - old) * ((self.ge_gamma - 1.0) * dt),
                _ => euler,
            }
        };
        ctx.history.clear();
        ctx.history.push(d);
        Ok(out)
    }
}
