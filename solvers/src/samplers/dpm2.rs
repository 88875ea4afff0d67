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
//! `dpm2-ancestral-rf` is ComfyUI's `sample_dpm_2_ancestral_RF`, what its `dpm_2_ancestral` runs
//! on a rectified-flow model: the split of [`rf_ancestral_step`], and the DPM-Solver-2 step
//! taken in the flow's own variables, `t = sigma / (1 + sigma)` and `x_t = x / (1 + sigma)`:
//! with `d = (x_t - D(x; sigma)) / t`, an Euler step in `t` to `t_mid = sqrt(t t_down)` (the same
//! point as the scaled Euler step to `t_mid`'s sigma), then `x_t + (t_down - t) d_mid`, where
//! `d_mid = (x_mid,t - D(x_mid; sigma_mid)) / t_mid`. That full step is not the scaled one
//! (Euler's derivative step is not invariant under the scaling), so `dpm2-ancestral-rf` is not
//! `dpm2-ancestral` with another split.
//!
//! `dpm2` takes EDM's churn ([`Churn`]) as k-diffusion's `sample_dpm_2` does: with
//! `s_churn > 0` each step starts from the raised level `sigma_hat` (the midpoint is then
//! `sqrt(sigma_hat sigma')`).

use super::edm_stochastic::Churn;
use super::euler_ancestral::{ancestral_step, check_rf_eta, rf_ancestral_step};
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
    /// `dpm2-ancestral-rf`: ComfyUI's rectified-flow form.
    rf: bool,
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
            rf: false,
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
            rf: false,
        })
    }

    /// `dpm2-ancestral-rf` (ComfyUI's `sample_dpm_2_ancestral_RF`), `eta` in [0, 1].
    pub fn ancestral_rf(eta: f64, s_noise: f64) -> Result<Self> {
        check_rf_eta(eta)?;
        Ok(Dpm2 {
            rf: true,
            ..Self::ancestral(eta, s_noise)?
        })
    }

    /// The rectified-flow step: DPM-Solver-2 in `t` and `x_t` down to `sigma_down`.
    fn rf_step(&self, ctx: &mut StepCtx<'_>, x: Tensor) -> Result<Tensor> {
        let (s, s_next) = (ctx.sigma(), ctx.sigma_next());
        let (down, up) = rf_ancestral_step(s, s_next, self.eta);
        let denoised = ctx.denoise(&x, s)?;
        let x = if down == 0.0 {
            let d = (&x - &denoised) / s;
            x + d * (down - s)
        } else {
            let t = s / (1.0 + s);
            let t_down = down / (1.0 + down);
            let t_mid = (0.5 * (t.ln() + t_down.ln())).exp();
            let s_mid = t_mid / (1.0 - t_mid);
            // x_t = (1 - t) x = x / (1 + sigma).
            let xt = x / (1.0 + s);
            let d = (&xt - denoised) / t;
            let xt_mid = &xt + d * (t_mid - t);
            let denoised_mid = ctx.denoise(&(&xt_mid * (1.0 + s_mid)), s_mid)?;
            let d_mid = (xt_mid - denoised_mid) / t_mid;
            (xt + d_mid * (t_down - t)) * (1.0 + down)
        };
        add_step_noise(ctx, x, s_next, s, up * self.s_noise)
    }
}

impl Sampler for Dpm2 {
    fn name(&self) -> &'static str {
        if self.rf {
            "dpm2-ancestral-rf"
        } else if self.ancestral {
            "dpm2-ancestral"
        } else {
            "dpm2"
        }
    }
    fn invertible(&self) -> bool {
        self.churn.s_churn == 0.0 && self.eta == 0.0
    }
    fn step(&self, ctx: &mut StepCtx<'_>, x: Tensor) -> Result<Tensor> {
        if self.rf {
            return self.rf_step(ctx, x);
        }
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
