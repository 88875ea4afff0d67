//! EDM's stochastic sampler: Karras et al. (2022), Algorithm 2 (NVlabs/edm `edm_sampler`).
//! Each step first raises the noise level from `sigma_i` to `sigma_hat = sigma_i (1 + gamma_i)`
//! by adding fresh noise ("churn"), with `gamma_i = min(S_churn / N, sqrt(2) - 1)` when
//! `S_tmin <= sigma_i <= S_tmax` and 0 otherwise, then takes a Heun step from `sigma_hat` to
//! `sigma_{i+1}`. With `S_churn = 0` it is exactly `heun`. `2n - 1` evaluations.
//!
//! The churn itself ([`Churn`]) is shared with `euler`, `heun` and `dpm2`, which take the same
//! four parameters as k-diffusion's `sample_euler`, `sample_heun` and `sample_dpm_2`:
//! `edm-stochastic` is `heun` with churn under EDM's name.

use super::heun::heun_step;
use super::{check_nonneg, check_window, in_window};
use crate::driver::{Sampler, StepCtx};
use crate::error::Result;
use crate::noise::STREAM_CHURN;
use serde::{Deserialize, Serialize};
use tch::Tensor;

/// EDM's churn parameters (Algorithm 2; k-diffusion's names and defaults, which add no noise):
/// the keys of a `[[samplers]]` entry of `euler`, `heun`, `dpm2` and `edm-stochastic`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Churn {
    /// `S_churn`: total churn over the run; `gamma_i = min(S_churn / N, sqrt(2) - 1)`.
    #[serde(default)]
    pub s_churn: f64,
    /// `S_tmin`: no churn at levels below it.
    #[serde(default)]
    pub s_tmin: f64,
    /// `S_tmax`: no churn at levels above it (JSON, which has no infinity, writes the default
    /// as `null`, read back as infinity).
    #[serde(default = "super::inf", deserialize_with = "super::inf_if_null")]
    pub s_tmax: f64,
    /// `S_noise`: scale of the added noise.
    #[serde(default = "super::one")]
    pub s_noise: f64,
}

impl Default for Churn {
    fn default() -> Self {
        Churn {
            s_churn: 0.0,
            s_tmin: 0.0,
            s_tmax: f64::INFINITY,
            s_noise: 1.0,
        }
    }
}

impl Churn {
    pub fn new(s_churn: f64, s_tmin: f64, s_tmax: f64, s_noise: f64) -> Result<Self> {
        let c = Churn {
            s_churn,
            s_tmin,
            s_tmax,
            s_noise,
        };
        c.validate()?;
        Ok(c)
    }

    /// The parameters' ranges: `S_churn`, `S_noise` finite and >= 0, `0 <= S_tmin <= S_tmax`.
    pub fn validate(&self) -> Result<()> {
        check_nonneg("s_churn", self.s_churn)?;
        check_nonneg("s_noise", self.s_noise)?;
        check_window(self.s_tmin, self.s_tmax)
    }

    /// Whether any noise is added (on a grid that reaches `[S_tmin, S_tmax]`).
    pub fn is_stochastic(&self) -> bool {
        self.s_churn > 0.0 && self.s_noise > 0.0
    }

    /// `gamma_i` of Algorithm 2 at level `sigma` of a run of `steps` steps.
    pub fn gamma(&self, sigma: f64, steps: usize) -> f64 {
        if in_window(sigma, self.s_tmin, self.s_tmax) {
            (self.s_churn / steps as f64).min(std::f64::consts::SQRT_2 - 1.0)
        } else {
            0.0
        }
    }

    /// Algorithm 2, lines 4-6, at the step's level `sigma_i`: `(x_hat, sigma_hat)` with
    /// `x_hat = x + S_noise sqrt(sigma_hat^2 - sigma_i^2) z`, `z` the standard normal of
    /// [`STREAM_CHURN`] on `[sigma_{i+1}, sigma_i]` (no draw when `gamma_i` is 0).
    pub(crate) fn apply(&self, ctx: &mut StepCtx<'_>, x: Tensor) -> Result<(Tensor, f64)> {
        let (s, s_next) = (ctx.sigma(), ctx.sigma_next());
        let gamma = self.gamma(s, ctx.steps());
        if gamma <= 0.0 {
            return Ok((x, s));
        }
        let s_hat = s * (1.0 + gamma);
        let z = ctx.noise.standard(STREAM_CHURN, s_next, s)?;
        Ok((
            x + z * ((s_hat * s_hat - s * s).sqrt() * self.s_noise),
            s_hat,
        ))
    }
}

/// `heun` with churn, under EDM's name.
#[derive(Clone, Debug)]
pub struct EdmStochastic(pub Churn);

impl EdmStochastic {
    pub fn new(churn: Churn) -> Result<Self> {
        churn.validate()?;
        Ok(EdmStochastic(churn))
    }
}

impl Sampler for EdmStochastic {
    fn name(&self) -> &'static str {
        "edm-stochastic"
    }
    fn invertible(&self) -> bool {
        self.0.s_churn == 0.0
    }
    fn step(&self, ctx: &mut StepCtx<'_>, x: Tensor) -> Result<Tensor> {
        let (x_hat, s_hat) = self.0.apply(ctx, x)?;
        let s_next = ctx.sigma_next();
        heun_step(ctx, &x_hat, s_hat, s_next)
    }
}
