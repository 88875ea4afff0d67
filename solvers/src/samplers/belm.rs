//! O-BELM, the optimal second-order bidirectional explicit linear multistep sampler (Wang, Zhou,
//! Wang, Shao & Lin 2024, "BELM: Bidirectional Explicit Linear Multi-step Sampler for Exact
//! Inversion in Diffusion Models", NeurIPS, eq. 13 and Prop. 4.2; zituitui/BELM
//! `samplers/BELM.py`). A two-step recurrence on the scaled variable: with the levels
//! `sigma_{i-1} > sigma_i > sigma_{i+1}`, `h_i = sigma_i - sigma_{i-1}`,
//! `h_{i+1} = sigma_{i+1} - sigma_i` (both negative when sampling) and
//! `eps = (x_i - D(x_i; sigma_i)) / sigma_i`,
//!
//! `x_{i+1} = a x_{i-1} + (1 - a) x_i + h_{i+1} (h_i + h_{i+1}) / h_i eps`,
//! `a = (h_{i+1} / h_i)^2`,
//!
//! the coefficients that minimise the local truncation error of a two-step form explicit in
//! both directions (second order); the first step is DDIM's (Euler's). The recurrence solves for
//! `x_{i-1}` as well as for `x_{i+1}` with the same evaluation at `x_i`, so the run inverts
//! exactly: the state after step `i` is `(x_{i+1}, x_i)` (the companion is the previous point),
//! the latent pair is the points at the top two levels, and data alone take the companion
//! `x_0 + sigma_{n-1} eps(x_0 / s(sigma_{n-1}); sigma_{n-1})` (DDIM inversion's step from sigma
//! = 0, the model evaluated at the upper level with the data as DDIM's variable holds them, as
//! BELM.py's `latent_to_intermediate`). The references write
//! the recurrence in the VP variable with `t = sigma / alpha`; it is the same recurrence. `n`
//! steps cost `n` evaluations (`n - 1` from a latent pair).

use crate::driver::{ExactInverse, Sampler, StepCtx};
use crate::error::{Result, SolverError};
use tch::Tensor;

#[derive(Clone, Debug, Default)]
pub struct Belm;

/// The one-step start the two-step exact samplers share (bdia, belm): with no companion, the
/// first step is DDIM's (Euler's); given one (a run from a latent pair), the first step returns
/// it with no evaluation. The current point becomes the companion.
pub(crate) fn start(ctx: &mut StepCtx<'_>, x: Tensor) -> Result<Tensor> {
    let next = match ctx.history.pop() {
        Some(c) => c,
        None => {
            let (s, h) = (ctx.sigma(), ctx.sigma_next() - ctx.sigma());
            &x + ctx.derivative(&x, s)? * h
        }
    };
    ctx.history.push(x);
    Ok(next)
}

/// The previous point a two-step exact sampler keeps (after its first step).
pub(crate) fn previous(ctx: &mut StepCtx<'_>) -> Result<Tensor> {
    ctx.history.pop().ok_or_else(|| {
        SolverError::Invalid(
            "a two-step sampler's step after the first without its previous point".into(),
        )
    })
}

/// The companion the two-step exact samplers give data `x` at sigma = 0: its DDIM inversion
/// step to the grid's lowest level `sigma_{n-1}`, the model evaluated there at the data as
/// DDIM's variable holds them (`x / s(sigma_{n-1})` in the scaled variable; `x` under EDM and
/// VE).
pub(crate) fn data_companion(ctx: &mut StepCtx<'_>, x: &Tensor) -> Result<Tensor> {
    let s = ctx.sigma();
    let seen = x / ctx.sde.s_of_sigma(s);
    Ok(x + ctx.derivative(&seen, s)? * s)
}

impl Belm {
    /// `(a, b)` of step `i >= 1`: `x_{i+1} = a x_{i-1} + (1 - a) x_i + b eps`.
    fn coefficients(ctx: &StepCtx<'_>) -> (f64, f64) {
        let i = ctx.index;
        let (prev, s, next) = (ctx.sigmas[i - 1], ctx.sigmas[i], ctx.sigmas[i + 1]);
        let (h_i, h_next) = (s - prev, next - s);
        let r = h_next / h_i;
        (r * r, h_next * (h_i + h_next) / h_i)
    }
}

impl Sampler for Belm {
    fn name(&self) -> &'static str {
        "belm"
    }
    fn step(&self, ctx: &mut StepCtx<'_>, x: Tensor) -> Result<Tensor> {
        if ctx.index == 0 {
            return start(ctx, x);
        }
        let prev = previous(ctx)?;
        let eps = ctx.derivative(&x, ctx.sigma())?;
        let (a, b) = Belm::coefficients(ctx);
        let next = prev * a + &x * (1.0 - a) + eps * b;
        ctx.history.push(x);
        Ok(next)
    }
    fn exact_inverse(&self) -> Option<&dyn ExactInverse> {
        Some(self)
    }
}

impl ExactInverse for Belm {
    fn data_companion(&self, ctx: &mut StepCtx<'_>, x: &Tensor) -> Result<Tensor> {
        data_companion(ctx, x)
    }
    fn unstep(
        &self,
        ctx: &mut StepCtx<'_>,
        x: Tensor,
        companion: Tensor,
    ) -> Result<(Tensor, Tensor)> {
        let eps = ctx.derivative(&companion, ctx.sigma())?;
        let (a, b) = Belm::coefficients(ctx);
        let prev = (x - &companion * (1.0 - a) - eps * b) / a;
        Ok((companion, prev))
    }
    fn first_undone(&self) -> usize {
        1
    }
}
