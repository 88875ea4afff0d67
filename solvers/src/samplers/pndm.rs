//! PNDM, the pseudo numerical method of Liu, Ren, Lin and Zhao (2022, "Pseudo Numerical Methods
//! for Diffusion Models on Manifolds", ICLR 2022; reference scheduler: diffusers'
//! `schedulers/scheduling_pndm.py`, `PNDMScheduler`), and its PLMS form
//! (`skip_prk_steps = true`, the one Stable Diffusion's configs select).
//!
//! Both step with the paper's transfer part `phi(x, e, sigma -> sigma')`, its eq. (9), which is
//! the DDIM step; in the scaled variable it is `x + (sigma' - sigma) e`, with the noise estimate
//! `e_j = (x_j - D(x_j; sigma_j)) / sigma_j` at the start of step `j`. The gradient part
//! chooses `e`:
//!
//! - The first three steps (PNDM) are pseudo Runge-Kutta (the paper's eq. 13): with the
//!   midpoint level `sigma_m` (the SDE's time halfway between the two levels, as the paper's
//!   `t - delta/2`; for the EDM SDE the mean of the two sigmas), `e1 = e(x; sigma)`,
//!   `e2 = e(phi(x, e1, sigma -> sigma_m); sigma_m)`, `e3 = e(phi(x, e2, sigma -> sigma_m);
//!   sigma_m)`, `e4 = e(phi(x, e3, sigma -> sigma'); sigma')`, and
//!   `e = (e1 + 2 e2 + 2 e3 + e4) / 6`: four evaluations each.
//! - PLMS starts instead with one step of the trapezoidal rule (diffusers' counter-1 branch):
//!   `e = (e1 + e(phi(x, e1, sigma -> sigma'); sigma')) / 2`, two evaluations.
//! - Every later step is the pseudo linear multistep (eq. 12): one evaluation `e_i` at the step's
//!   start, combined with the start estimates of the steps before it with the fixed
//!   Adams-Bashforth weights of order `min(4, i + 1)` ([`super::ipndm::WEIGHTS`]): orders 2 and
//!   3 while the history fills after the PLMS start, order 4 at once after the three PRK steps.
//!
//! The warm-up steps never step to sigma = 0: a grid of `n` steps has `min(3, n - 1)` PRK steps
//! (PNDM) or `min(1, n - 1)` trapezoidal ones (PLMS); the step to 0 is the multistep update, as
//! diffusers' last step to `final_alpha_cumprod = 1` is (with one step it is Euler, returning
//! `D`). NFE: `n + 3 min(3, n - 1)` (PNDM), `n + min(1, n - 1)` (PLMS).

use super::ipndm::WEIGHTS;
use crate::driver::{Sampler, StepCtx};
use crate::error::Result;
use tch::Tensor;

#[derive(Clone, Debug)]
pub struct Pndm {
    /// PLMS: a trapezoidal first step instead of three pseudo Runge-Kutta steps.
    pub skip_prk_steps: bool,
}

impl Pndm {
    /// Steps that start the method (before the multistep part), on a grid of `steps` steps.
    pub fn warmup_steps(skip_prk_steps: bool, steps: usize) -> usize {
        let warm = if skip_prk_steps { 1 } else { 3 };
        warm.min(steps.saturating_sub(1))
    }

    /// Network evaluations on a grid of `steps` steps.
    pub fn nfe(skip_prk_steps: bool, steps: usize) -> usize {
        let per_warm = if skip_prk_steps { 1 } else { 3 };
        steps + per_warm * Self::warmup_steps(skip_prk_steps, steps)
    }
}

/// The sigma halfway between `sigma` and `sigma_next` in the SDE's time.
fn time_midpoint(ctx: &StepCtx<'_>, sigma: f64, sigma_next: f64) -> f64 {
    let sde = ctx.sde;
    sde.sigma(0.5 * (sde.sigma_inv(sigma) + sde.sigma_inv(sigma_next)))
}

impl Sampler for Pndm {
    fn name(&self) -> &'static str {
        "pndm"
    }
    fn invertible(&self) -> bool {
        true
    }

    /// `ctx.history` holds the start estimates `e_j` of the last (at most three) steps.
    fn step(&self, ctx: &mut StepCtx<'_>, x: Tensor) -> Result<Tensor> {
        let (s, s_next) = (ctx.sigma(), ctx.sigma_next());
        let phi = |x: &Tensor, e: &Tensor, to: f64| x + e * (to - s);
        let e1 = ctx.derivative(&x, s)?;
        let warm = ctx.index < Self::warmup_steps(self.skip_prk_steps, ctx.steps());
        let e = if warm && self.skip_prk_steps {
            let e2 = ctx.derivative(&phi(&x, &e1, s_next), s_next)?;
            (&e1 + e2) * 0.5
        } else if warm {
            let m = time_midpoint(ctx, s, s_next);
            let e2 = ctx.derivative(&phi(&x, &e1, m), m)?;
            let e3 = ctx.derivative(&phi(&x, &e2, m), m)?;
            let e4 = ctx.derivative(&phi(&x, &e3, s_next), s_next)?;
            (&e1 + (e2 + e3) * 2.0 + e4) * (1.0 / 6.0)
        } else {
            let n = ctx.history.len();
            let w = WEIGHTS[n.min(3)];
            let mut e = &e1 * w[0];
            for (k, wk) in w.iter().enumerate().skip(1) {
                e = e + &ctx.history[n - k] * *wk;
            }
            e
        };
        let out = phi(&x, &e, s_next);
        ctx.history.push(e1);
        if ctx.history.len() > 3 {
            drop(ctx.history.remove(0));
        }
        Ok(out)
    }
}
