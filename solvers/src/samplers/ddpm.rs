//! DDPM ancestral sampling, Ho et al. (2020), Algorithm 2, on an arbitrary grid: between
//! consecutive levels `alpha_t = a / a'` and `beta_t = 1 - alpha_t`, with `a = alpha_bar(sigma)
//! = 1 / (1 + sigma^2)` and `x_vp = sqrt(a) x`:
//!
//! `x'_vp = (x_vp - beta_t / sqrt(1 - a) eps) / sqrt(alpha_t) + s_t z`,
//!
//! `eps = (x - D(x; sigma)) / sigma`, and `s_t^2 = (1 - a') / (1 - a) beta_t` (the posterior
//! variance, "small", default) or `beta_t` ("large"); no noise on the step to sigma = 0.
//! One evaluation per step.

use crate::driver::{Sampler, StepCtx};
use crate::error::{Result, SolverError};
use crate::noise::STREAM_STEP;
use crate::sde::alpha_bar_of_sigma;
use serde::{Deserialize, Serialize};
use tch::Tensor;

/// DDPM's two choices of the reverse variance.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum DdpmVariance {
    /// `beta~_t = (1 - a') / (1 - a) beta_t`, the posterior variance.
    #[default]
    Small,
    /// `beta_t`.
    Large,
}

impl std::str::FromStr for DdpmVariance {
    type Err = SolverError;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "small" => Ok(DdpmVariance::Small),
            "large" => Ok(DdpmVariance::Large),
            _ => Err(SolverError::Invalid(format!(
                "unknown DDPM variance '{s}' (known: small, large)"
            ))),
        }
    }
}

#[derive(Clone, Debug)]
pub struct Ddpm {
    pub variance: DdpmVariance,
}

impl Sampler for Ddpm {
    fn name(&self) -> &'static str {
        "ddpm"
    }
    fn step(&self, ctx: &mut StepCtx<'_>, x: Tensor) -> Result<Tensor> {
        let (s, s_next) = (ctx.sigma(), ctx.sigma_next());
        let (a, a_next) = (alpha_bar_of_sigma(s), alpha_bar_of_sigma(s_next));
        let alpha_t = a / a_next;
        let beta_t = 1.0 - alpha_t;
        let eps = ctx.derivative(&x, s)?;
        let x_vp = &x * a.sqrt();
        let mut next = (x_vp - eps * (beta_t / (1.0 - a).sqrt())) / alpha_t.sqrt();
        if s_next > 0.0 {
            let var = match self.variance {
                DdpmVariance::Small => (1.0 - a_next) / (1.0 - a) * beta_t,
                DdpmVariance::Large => beta_t,
            };
            next += ctx.noise.standard(STREAM_STEP, s_next, s)? * var.sqrt();
        }
        Ok(next / a_next.sqrt())
    }
}
