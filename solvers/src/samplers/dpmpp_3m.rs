//! DPM-Solver++(3M) SDE, k-diffusion's `sample_dpmpp_3m_sde`, and its deterministic
//! (`eta = 0`) case `dpmpp-3m`: a third-order multistep method on the data prediction, with
//! `lambda = -log sigma`, `h = lambda' - lambda`, `h_eta = (1 + eta) h`,
//! `phi_2 = expm1(-h_eta) / h_eta + 1`, `phi_3 = phi_2 / h_eta - 1/2`:
//!
//! `x' = (sigma' / sigma) exp(-eta h) x - expm1(-h_eta) D_i + phi_2 d1 - phi_3 d2 + sigma' sqrt(-expm1(-2 eta h)) s_noise z`,
//!
//! where `d1`, `d2` are divided differences of the last three denoised outputs in `lambda`
//! (first and second order on the first two steps) and `z` the step's standard normal from the
//! Brownian path ([`crate::noise::STREAM_STEP`]); the step to sigma = 0 returns `D_i`. As for
//! [`super::dpmpp_2m_sde`], `eta` is the Langevin rate per unit of `lambda` of the reverse SDE
//! (Karras et al. 2022, eq. 6) whose drift and noise the first-order part solves exactly. One
//! evaluation per step.

use super::dpmpp_2m::lambda;
use super::{add_step_noise, check_nonneg};
use crate::driver::{Sampler, StepCtx};
use crate::error::Result;
use tch::Tensor;

#[derive(Clone, Debug)]
pub struct DpmPp3M {
    pub eta: f64,
    pub s_noise: f64,
    /// Named `dpmpp-3m-sde` (else `dpmpp-3m`, which has `eta = 0`).
    sde: bool,
}

impl DpmPp3M {
    /// `dpmpp-3m`: the probability-flow ODE.
    pub fn ode() -> Self {
        DpmPp3M {
            eta: 0.0,
            s_noise: 1.0,
            sde: false,
        }
    }

    /// `dpmpp-3m-sde` with Langevin rate `eta` and noise scale `s_noise`.
    pub fn sde(eta: f64, s_noise: f64) -> Result<Self> {
        check_nonneg("eta", eta)?;
        check_nonneg("s_noise", s_noise)?;
        Ok(DpmPp3M {
            eta,
            s_noise,
            sde: true,
        })
    }
}

impl Sampler for DpmPp3M {
    fn name(&self) -> &'static str {
        if self.sde {
            "dpmpp-3m-sde"
        } else {
            "dpmpp-3m"
        }
    }
    fn invertible(&self) -> bool {
        self.eta == 0.0
    }
    fn step(&self, ctx: &mut StepCtx<'_>, x: Tensor) -> Result<Tensor> {
        let (i, s, s_next) = (ctx.index, ctx.sigma(), ctx.sigma_next());
        let denoised = ctx.denoise(&x, s)?;
        let out = if s_next == 0.0 {
            denoised.shallow_clone()
        } else {
            let h = lambda(s_next) - lambda(s);
            // At eta = 0 these are (sigma' / sigma) x and h exactly.
            let h_eta = h * (1.0 + self.eta);
            let mut out = &x * (s_next / s * (-self.eta * h).exp()) - &denoised * (-h_eta).exp_m1();
            let phi_2 = (-h_eta).exp_m1() / h_eta + 1.0;
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
                let phi_3 = phi_2 / h_eta - 0.5;
                out = out + d1 * phi_2 - d2 * phi_3;
            } else if n >= 1 && i >= 1 {
                let h_1 = lambda(s) - lambda(ctx.sigmas[i - 1]);
                let r = h_1 / h;
                out = out + (&denoised - &ctx.history[n - 1]) * (phi_2 / r);
            }
            let scale = s_next * (-(-2.0 * h * self.eta).exp_m1()).sqrt() * self.s_noise;
            add_step_noise(ctx, out, s_next, s, scale)?
        };
        ctx.history.push(denoised);
        if ctx.history.len() > 2 {
            drop(ctx.history.remove(0));
        }
        Ok(out)
    }
}
