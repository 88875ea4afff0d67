//! DPM-Solver++(3M), the deterministic (`eta = 0`) case of k-diffusion's `sample_dpmpp_3m_sde`:
//! a third-order multistep method on the data prediction, with `lambda = -log sigma`,
//! `h = lambda' - lambda`, `phi_2 = expm1(-h) / h + 1`, `phi_3 = phi_2 / h - 1/2`:
//!
//! `x' = (sigma' / sigma) x - expm1(-h) D_i + phi_2 d1 - phi_3 d2`,
//!
//! where `d1`, `d2` are divided differences of the last three denoised outputs (first and second
//! order on the first two steps); the step to sigma = 0 returns `D_i`. One evaluation per step.

use super::dpmpp_2m::lambda;
use crate::driver::{Sampler, StepCtx};
use crate::error::Result;
use tch::Tensor;

pub struct DpmPp3M;

impl Sampler for DpmPp3M {
    fn name(&self) -> &'static str {
        "dpmpp-3m"
    }
    fn step(&self, ctx: &mut StepCtx<'_>, x: Tensor) -> Result<Tensor> {
        let (i, s, s_next) = (ctx.index, ctx.sigma(), ctx.sigma_next());
        let denoised = ctx.denoise(&x, s)?;
        let out = if s_next == 0.0 {
            denoised.shallow_clone()
        } else {
            let h = lambda(s_next) - lambda(s);
            let mut out = &x * (s_next / s) - &denoised * (-h).exp_m1();
            let phi_2 = (-h).exp_m1() / h + 1.0;
            // history holds [D_{i-2}, D_{i-1}] (the most recent last).
            let n = ctx.history.len();
            if n >= 2 && i >= 2 {
                let (d_1, d_2) = (&ctx.history[n - 1], &ctx.history[n - 2]);
                let h_1 = lambda(s) - lambda(ctx.sigmas[i - 1]);
                let h_2 = lambda(ctx.sigmas[i - 1]) - lambda(ctx.sigmas[i - 2]);
                let (r0, r1) = (h_1 / h, h_2 / h);
                let d1_0 = (&denoised - d_1) / r0;
                let d1_1 = (d_1 - d_2) / r1;
                let d1 = &d1_0 + (&d1_0 - &d1_1) * (r0 / (r0 + r1));
                let d2 = (d1_0 - d1_1) / (r0 + r1);
                let phi_3 = phi_2 / h - 0.5;
                out = out + d1 * phi_2 - d2 * phi_3;
            } else if n >= 1 && i >= 1 {
                let h_1 = lambda(s) - lambda(ctx.sigmas[i - 1]);
                let r = h_1 / h;
                out = out + (&denoised - &ctx.history[n - 1]) * (phi_2 / r);
            }
            out
        };
        ctx.history.push(denoised);
        if ctx.history.len() > 2 {
            drop(ctx.history.remove(0));
        }
        Ok(out)
    }
}
