//! Euler ancestral (k-diffusion `sample_euler_ancestral`): an Euler step down to
//! `sigma_down`, then fresh noise of standard deviation `sigma_up`, where
//! `sigma_up = min(sigma', eta sqrt(sigma'^2 (sigma^2 - sigma'^2) / sigma^2))` and
//! `sigma_down = sqrt(sigma'^2 - sigma_up^2)` (`get_ancestral_step`). With `eta = 1` this is the
//! DDPM ancestral step in the sigma parameterization. One evaluation per step.
//!
//! `euler-ancestral-rf` is ComfyUI's `sample_euler_ancestral_RF`, what its `euler_ancestral`
//! runs on a rectified-flow model: the same Euler step and fresh noise, with the split of
//! [`rf_ancestral_step`] instead of k-diffusion's.

use super::{add_step_noise, check_nonneg};
use crate::driver::{Sampler, StepCtx};
use crate::error::Result;
use tch::Tensor;

#[derive(Clone, Debug)]
pub struct EulerAncestral {
    pub eta: f64,
    pub s_noise: f64,
    /// The rectified-flow split ([`rf_ancestral_step`], `euler-ancestral-rf`).
    pub rf: bool,
}

/// `(sigma_down, sigma_up)` for a step from `sigma` to `sigma_next` (k-diffusion
/// `get_ancestral_step`).
pub fn ancestral_step(sigma: f64, sigma_next: f64, eta: f64) -> (f64, f64) {
    if eta == 0.0 || sigma_next == 0.0 {
        return (sigma_next, 0.0);
    }
    let up = sigma_next.min(
        eta * (sigma_next * sigma_next * (sigma * sigma - sigma_next * sigma_next)
            / (sigma * sigma))
            .sqrt(),
    );
    let down = (sigma_next * sigma_next - up * up).max(0.0).sqrt();
    (down, up)
}

/// `(sigma_down, sigma_up)` for a step from `sigma` to `sigma_next` as ComfyUI's rectified-flow
/// ancestral samplers split it (`sample_euler_ancestral_RF`, `sample_dpm_2_ancestral_RF`,
/// `sample_dpmpp_2s_ancestral_RF`), written in the scaled variable. With the flow's times
/// `t = sigma / (1 + sigma)` (ComfyUI's `sigmas` for such a model), the step goes down to
/// `t_down = t' (1 + (t' / t - 1) eta)` (`t'^2 / t` at `eta = 1`) and renoises to `t'`:
/// `sigma_down = t_down / (1 - t_down)` and `sigma_up = sqrt(sigma'^2 - sigma_down^2)`, which is
/// ComfyUI's `renoise_coeff / (1 - t')` after its rescaling by `(1 - t') / (1 - t_down)`.
/// `eta = 0` is the plain step (`sigma_down = sigma'`).
pub fn rf_ancestral_step(sigma: f64, sigma_next: f64, eta: f64) -> (f64, f64) {
    if eta == 0.0 || sigma_next == 0.0 {
        return (sigma_next, 0.0);
    }
    let (t, t_next) = (sigma / (1.0 + sigma), sigma_next / (1.0 + sigma_next));
    let t_down = t_next * (1.0 + (t_next / t - 1.0) * eta);
    let down = t_down / (1.0 - t_down);
    let up = (sigma_next * sigma_next - down * down).max(0.0).sqrt();
    (down, up)
}

/// `eta` of a rectified-flow ancestral sampler: in [0, 1] (above 1 `t_down` of
/// [`rf_ancestral_step`] can fall to 0 or below).
pub(crate) fn check_rf_eta(eta: f64) -> Result<()> {
    crate::samplers::require("eta", eta, (0.0..=1.0).contains(&eta), "must be in [0, 1]")
}

impl EulerAncestral {
    pub fn new(eta: f64, s_noise: f64) -> Result<Self> {
        check_nonneg("eta", eta)?;
        check_nonneg("s_noise", s_noise)?;
        Ok(EulerAncestral {
            eta,
            s_noise,
            rf: false,
        })
    }

    /// `euler-ancestral-rf`: the split of [`rf_ancestral_step`].
    pub fn rf(eta: f64, s_noise: f64) -> Result<Self> {
        check_rf_eta(eta)?;
        Ok(EulerAncestral {
            rf: true,
            ..Self::new(eta, s_noise)?
        })
    }
}

/// [`rf_ancestral_step`] where `rf`, else [`ancestral_step`].
pub(crate) fn split(rf: bool, sigma: f64, sigma_next: f64, eta: f64) -> (f64, f64) {
    if rf {
        rf_ancestral_step(sigma, sigma_next, eta)
    } else {
        ancestral_step(sigma, sigma_next, eta)
    }
}

impl Sampler for EulerAncestral {
    fn name(&self) -> &'static str {
        if self.rf {
            "euler-ancestral-rf"
        } else {
            "euler-ancestral"
        }
    }
    fn step(&self, ctx: &mut StepCtx<'_>, x: Tensor) -> Result<Tensor> {
        let (s, s_next) = (ctx.sigma(), ctx.sigma_next());
        let (down, up) = split(self.rf, s, s_next, self.eta);
        let d = ctx.derivative(&x, s)?;
        let x = x + d * (down - s);
        add_step_noise(ctx, x, s_next, s, up * self.s_noise)
    }
}
