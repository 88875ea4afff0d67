//! DDPM ancestral sampling, Ho et al. (2020), Algorithm 2, on an arbitrary grid: between
//! consecutive levels `alpha_t = a / a'` and `beta_t = 1 - alpha_t`, with `a = alpha_bar(sigma)
//! = 1 / (1 + sigma^2)` and `x_vp = sqrt(a) x`:
//!
//! `x'_vp = (x_vp - beta_t / sqrt(1 - a) eps) / sqrt(alpha_t) + s_t z`,
//!
//! `eps = (x - D(x; sigma)) / sigma`, and `s_t^2 = (1 - a') / (1 - a) beta_t` (the posterior
//! variance, "small", default) or `beta_t` ("large"), or the network's learned interpolation
//! between their logs ("learned", improved DDPM: `log s_t^2 = (1 + v) / 2 log beta_t + (1 - v) / 2
//! log beta~_t`, `v` the variance output of the same evaluation); no noise on the step to
//! sigma = 0. One evaluation per step.

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
    /// The network's learned variance (Nichol & Dhariwal 2021; diffusers' "learned_range"):
    /// `exp((1 + v) / 2 log beta_t + (1 - v) / 2 log beta~_t)` per element, `v` its variance
    /// output ([`crate::Denoiser::denoise_with_variance`]).
    Learned,
}

impl std::str::FromStr for DdpmVariance {
    type Err = SolverError;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "small" => Ok(DdpmVariance::Small),
            "large" => Ok(DdpmVariance::Large),
            "learned" => Ok(DdpmVariance::Learned),
            _ => Err(SolverError::Invalid(format!(
                "unknown DDPM variance '{s}' (known: small, large, learned)"
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
        let (d, v) = if self.variance == DdpmVariance::Learned {
            let (d, v) = ctx.denoise_with_variance(&x, s)?;
            let v = v.ok_or_else(|| {
                SolverError::Invalid(
                    "ddpm with variance = learned needs a network with a learned variance output (a model card with learned_sigmas = true, or a network trained with model.learned_sigmas = true)".into(),
                )
            })?;
            (d, Some(v))
        } else {
            (ctx.denoise(&x, s)?, None)
        };
        let eps = (&x - d) / s;
        let x_vp = &x * a.sqrt();
        let mut next = (x_vp - eps * (beta_t / (1.0 - a).sqrt())) / alpha_t.sqrt();
        if s_next > 0.0 {
            let small = (1.0 - a_next) / (1.0 - a) * beta_t;
            let z = ctx.noise.standard(STREAM_STEP, s_next, s)?;
            next += match &v {
                // Learned: the log variance interpolated per element; the logs clamped as
                // diffusers does (small > 0 on every step that adds noise).
                Some(v) => {
                    let (lo, hi) = (small.max(1e-20).ln(), beta_t.max(1e-20).ln());
                    let frac = (v.to_kind(z.kind()) + 1.0) * 0.5;
                    let log_var = &frac * hi + (frac.neg() + 1.0) * lo;
                    z * (log_var * 0.5).exp()
                }
                None if self.variance == DdpmVariance::Large => z * beta_t.sqrt(),
                None => z * small.sqrt(),
            };
        }
        Ok(next / a_next.sqrt())
    }
}
