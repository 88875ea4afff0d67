//! DPM-Solver++(2M) SDE, as k-diffusion's `sample_dpmpp_2m_sde`: the multistep data-prediction
//! update of DPM-Solver++(2M) (Lu et al. 2022b) applied to the reverse SDE with Langevin rate
//! `eta` per unit of `lambda = -log sigma` (Karras et al. 2022, eq. 6, with
//! `beta(t) = eta sigma'(t) / sigma(t)`), plus fresh noise every step.
//!
//! With `lambda = -log sigma`, `h = lambda' - lambda`, `r = h_prev / h` and `e = expm1(-(1 + eta) h)`:
//!
//! `x' = (sigma' / sigma) exp(-eta h) x - e D_i + c (D_i - D_{i-1}) / r + sigma' sqrt(-expm1(-2 eta h)) s_noise z`,
//!
//! with `c = -e / 2` (`midpoint`, k-diffusion's default) or `c = e / ((1 + eta) h) + 1` (`heun`),
//! `c = 0` on the first step, and `D_i` returned on the step to sigma = 0. The first two terms
//! are the exact solution of that SDE's drift over the step with `D` held at `D_i`, the last its
//! exact noise; `eta = 0` is the probability-flow ODE (and `midpoint` then equals `dpmpp-2m`).
//! `z` is the step's standard normal from the Brownian path ([`crate::noise::STREAM_STEP`],
//! the same draw `euler-ancestral` uses). One evaluation per step.

use super::dpmpp_2m::lambda;
use super::{add_step_noise, check_nonneg};
use crate::driver::{Sampler, StepCtx};
use crate::error::{Result, SolverError};
use serde::{Deserialize, Serialize};
use tch::Tensor;

/// How the second-order correction of DPM-Solver++(2M) SDE is weighted.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SolverType {
    /// `c = -expm1(-(1 + eta) h) / 2` (k-diffusion's default).
    #[default]
    Midpoint,
    /// `c = expm1(-(1 + eta) h) / ((1 + eta) h) + 1`.
    Heun,
}

impl std::str::FromStr for SolverType {
    type Err = SolverError;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "midpoint" => Ok(SolverType::Midpoint),
            "heun" => Ok(SolverType::Heun),
            _ => Err(SolverError::Invalid(format!(
                "unknown solver type '{s}' (known: midpoint, heun)"
            ))),
        }
    }
}

#[derive(Clone, Debug)]
pub struct DpmPp2MSde {
    pub eta: f64,
    pub s_noise: f64,
    pub solver_type: SolverType,
}

impl DpmPp2MSde {
    pub fn new(eta: f64, s_noise: f64, solver_type: SolverType) -> Result<Self> {
        check_nonneg("eta", eta)?;
        check_nonneg("s_noise", s_noise)?;
        Ok(DpmPp2MSde {
            eta,
            s_noise,
            solver_type,
        })
    }
}

impl Sampler for DpmPp2MSde {
    fn name(&self) -> &'static str {
        "dpmpp-2m-sde"
    }
    fn step(&self, ctx: &mut StepCtx<'_>, x: Tensor) -> Result<Tensor> {
        let (i, s, s_next) = (ctx.index, ctx.sigma(), ctx.sigma_next());
        let denoised = ctx.denoise(&x, s)?;
        let out = if s_next == 0.0 {
            denoised.shallow_clone()
        } else {
            let h = lambda(s_next) - lambda(s);
            let eta_h = self.eta * h;
            let e = (-h - eta_h).exp_m1();
            let mut out = &x * (s_next / s * (-eta_h).exp()) - &denoised * e;
            if let (Some(old), true) = (ctx.history.last(), i > 0) {
                let h_last = lambda(s) - lambda(ctx.sigmas[i - 1]);
                let r = h_last / h;
                let c = match self.solver_type {
                    SolverType::Midpoint => -0.5 * e,
                    SolverType::Heun => e / (h + eta_h) + 1.0,
                };
                out = out + (&denoised - old) * (c / r);
            }
            let scale = s_next * (-(-2.0 * eta_h).exp_m1()).sqrt() * self.s_noise;
            add_step_noise(ctx, out, s_next, s, scale)?
        };
        ctx.history.clear();
        ctx.history.push(denoised);
        Ok(out)
    }
}
