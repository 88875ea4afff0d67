//! BDIA-DDIM, bi-directional integration approximation (Zhang, Lewis & Kleijn 2024, "Exact
//! Diffusion Inversion via Bi-directional Integration Approximation", ECCV;
//! guoqiang-zhang-x/BDIA `image-editing/bdia_edict_functions.py`, `BDIA_stablediffusion`;
//! zituitui/BELM `samplers/BDIA.py`). Each step from `z_i` takes DDIM's step forward to the next
//! level and corrects it by `gamma` times the gap between the previous point `z_{i-1}` and
//! DDIM's step from `z_i` back up to it, both steps with the one evaluation at `z_i`:
//!
//! `z_{i+1} = DDIM(z_i -> sigma_{i+1}) + gamma (z_{i-1} - DDIM(z_i -> sigma_{i-1}))`,
//!
//! in DDIM's own variable, the SDE's `z = s(t) x` (the VP variable under VP; scoreflow's scaled
//! variable `x` where `s = 1`, EDM and VE), so in the scaled variable, with
//! `eps = (x_i - D(x_i; sigma_i)) / sigma_i`,
//!
//! `x_{i+1} = x_i + (sigma_{i+1} - sigma_i) eps
//!     + gamma s(sigma_{i-1}) / s(sigma_{i+1}) (x_{i-1} - x_i - (sigma_{i-1} - sigma_i) eps)`.
//!
//! `gamma` is in (0, 1] (1 by default, the authors' `BDIA_stablediffusion`; 0 would be DDIM,
//! which does not invert exactly). The first step is DDIM's; the update solves for `x_{i-1}` as
//! well, so the run inverts exactly, as `belm` (see [`super::belm`]): the state after step `i`
//! is `(x_{i+1}, x_i)`, the latent pair the points at the top two levels, and data alone take
//! DDIM inversion's step to the lowest level as their companion. `n` steps cost `n`
//! evaluations.

use super::belm;
use crate::driver::{ExactInverse, Sampler, StepCtx};
use crate::error::{Result, SolverError};
use tch::Tensor;

#[derive(Clone, Debug)]
pub struct Bdia {
    pub gamma: f64,
}

impl Bdia {
    pub fn new(gamma: f64) -> Result<Self> {
        if !(gamma > 0.0 && gamma <= 1.0) {
            return Err(SolverError::Invalid(format!(
                "bdia's gamma must be in (0, 1] (1 by default), got {gamma}"
            )));
        }
        Ok(Bdia { gamma })
    }

    /// `(prev, s, next, w)` of step `i >= 1`: its three levels and the weight
    /// `gamma s(prev) / s(next)` of the backward gap.
    fn levels(&self, ctx: &StepCtx<'_>) -> (f64, f64, f64, f64) {
        let i = ctx.index;
        let (prev, s, next) = (ctx.sigmas[i - 1], ctx.sigmas[i], ctx.sigmas[i + 1]);
        let w = self.gamma * ctx.sde.s_of_sigma(prev) / ctx.sde.s_of_sigma(next);
        (prev, s, next, w)
    }
}

impl Sampler for Bdia {
    fn name(&self) -> &'static str {
        "bdia"
    }
    fn step(&self, ctx: &mut StepCtx<'_>, x: Tensor) -> Result<Tensor> {
        if ctx.index == 0 {
            return belm::start(ctx, x);
        }
        let prev = belm::previous(ctx)?;
        let (p, s, n, w) = self.levels(ctx);
        let eps = ctx.derivative(&x, s)?;
        let back = &x + &eps * (p - s);
        let next = &x + eps * (n - s) + (prev - back) * w;
        ctx.history.push(x);
        Ok(next)
    }
    fn exact_inverse(&self) -> Option<&dyn ExactInverse> {
        Some(self)
    }
}

impl ExactInverse for Bdia {
    fn data_companion(&self, ctx: &mut StepCtx<'_>, x: &Tensor) -> Result<Tensor> {
        belm::data_companion(ctx, x)
    }
    fn unstep(
        &self,
        ctx: &mut StepCtx<'_>,
        x: Tensor,
        companion: Tensor,
    ) -> Result<(Tensor, Tensor)> {
        let (p, s, n, w) = self.levels(ctx);
        let eps = ctx.derivative(&companion, s)?;
        let forward = &companion + &eps * (n - s);
        let back = &companion + eps * (p - s);
        let prev = back + (x - forward) / w;
        Ok((companion, prev))
    }
    fn first_undone(&self) -> usize {
        1
    }
}
