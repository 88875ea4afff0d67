//! DPM-Solver-2 in the form of k-diffusion's `sample_dpm_2` (Lu et al. 2022a; Karras et al.
//! 2022, Appendix on the midpoint variant): an Euler half step to the geometric midpoint
//! `sigma_mid = sqrt(sigma sigma')`, then the full step with the midpoint's derivative. The step
//! to sigma = 0 is an Euler step, so `n` steps cost `2n - 1` evaluations.
//!
//! `dpm2-ancestral` is k-diffusion's `sample_dpm_2_ancestral`: the same step taken down to
//! `sigma_down` of [`ancestral_step`], then fresh noise of standard deviation
//! `s_noise sigma_up` from the step stream ([`crate::noise::STREAM_STEP`], the draw
//! `euler-ancestral` uses); `eta = 0` is `dpm2`.
//!
//! `dpm2` takes EDM's churn ([`Churn`]) as k-diffusion's `sample_dpm_2` does: with
//! `s_churn > 0` each step starts from the raised level `sigma_hat` (the midpoint is then
//! `sqrt(sigma_hat sigma')`).

use super::edm_stochastic::Churn;
use super::euler_ancestral::ancestral_step;
use super::{add_step_noise, check_nonneg};
use crate::driver::{Sampler, StepCtx};
use crate::error::Result;
use tch::Tensor;

#[derive(Clone, Debug)]
pub struct Dpm2 {
    pub eta: f64,
    pub s_noise: f64,
    /// `dpm2`'s churn (none for `dpm2-ancestral`).
    pub churn: Churn,
    /// Named `dpm2-ancestral` (else `dpm2`, which has `eta = 0`).
    ancestral: bool,
}

impl Dpm2 {
    /// `dpm2`: the probability-flow ODE, with EDM's churn when `churn.s_churn > 0`.
    pub fn ode(churn: Churn) -> Result<Self> {
        churn.validate()?;
        Ok(Dpm2 {
            eta: 0.0,
            s_noise: 1.0,
            churn,
            ancestral: false,
        })
    }

    /// `dpm2-ancestral` with noise fraction `eta` and noise scale `s_noise`.
    pub fn ancestral(eta: f64, s_noise: f64) -> Result<Self> {
        check_nonneg("eta", eta)?;
        check_nonneg("s_noise", s_noise)?;
        Ok(Dpm2 {
            eta,
            s_noise,
            churn: Churn::default(),
            ancestral: true,
        })
    }
}

impl Sampler for Dpm2 {
    fn name(&self) -> &'static str {
        if self.ancestral {
            "dpm2-ancestral"
        } else {
            "dpm2"
        }
    }
    fn invertible(&self) -> bool {
        self.churn.s_churn == 0.0 && self.eta == 0.0
    }
    fn step(&self, ctx: &mut StepCtx<'_>, x: Tensor) -> Result<Tensor> {
        let (x, s) = self.churn.apply(ctx, x)?;
        let s_next = ctx.sigma_next();
        let (down, up) = ancestral_step(s, s_next, self.eta);
        let d = ctx.derivative(&x, s)?;
        let x = if down == 0.0 {
            x + d * (down - s)
        } else {
            let s_mid = (0.5 * (s.ln() + down.ln())).exp();
            let x_mid = &x + d * (s_mid - s);
            let d_mid = ctx.derivative(&x_mid, s_mid)?;
            x + d_mid * (down - s)
        };
        let s_i = ctx.sigma();
        add_step_noise(ctx, x, s_next, s_i, up * self.s_noise)
    }
}
