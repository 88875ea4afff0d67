//! EDM's stochastic sampler: Karras et al. (2022), Algorithm 2 (NVlabs/edm `edm_sampler`).
//! Each step first raises the noise level from `sigma_i` to `sigma_hat = sigma_i (1 + gamma_i)`
//! by adding fresh noise ("churn"), with `gamma_i = min(S_churn / N, sqrt(2) - 1)` when
//! `S_tmin <= sigma_i <= S_tmax` and 0 otherwise, then takes a Heun step from `sigma_hat` to
//! `sigma_{i+1}`. With `S_churn = 0` it is exactly `heun`. `2n - 1` evaluations.

use super::heun::heun_step;
use super::{check_nonneg, require};
use crate::driver::{Sampler, StepCtx};
use crate::error::Result;
use crate::noise::STREAM_CHURN;
use tch::Tensor;

#[derive(Clone, Debug)]
pub struct EdmStochastic {
    pub s_churn: f64,
    pub s_tmin: f64,
    pub s_tmax: f64,
    pub s_noise: f64,
}

impl EdmStochastic {
    pub fn new(s_churn: f64, s_tmin: f64, s_tmax: f64, s_noise: f64) -> Result<Self> {
        check_nonneg("s_churn", s_churn)?;
        check_nonneg("s_noise", s_noise)?;
        require(
            "s_tmin",
            s_tmin,
            s_tmin >= 0.0 && s_tmin <= s_tmax,
            "must be >= 0 and <= s_tmax",
        )?;
        Ok(EdmStochastic {
            s_churn,
            s_tmin,
            s_tmax,
            s_noise,
        })
    }

    /// `gamma_i` of Algorithm 2.
    pub fn gamma(&self, sigma: f64, steps: usize) -> f64 {
        if sigma >= self.s_tmin && sigma <= self.s_tmax {
            (self.s_churn / steps as f64).min(std::f64::consts::SQRT_2 - 1.0)
        } else {
            0.0
        }
    }
}

impl Sampler for EdmStochastic {
    fn name(&self) -> &'static str {
        "edm-stochastic"
    }
    fn step(&self, ctx: &mut StepCtx<'_>, x: Tensor) -> Result<Tensor> {
        let (s, s_next) = (ctx.sigma(), ctx.sigma_next());
        let gamma = self.gamma(s, ctx.steps());
        let s_hat = s * (1.0 + gamma);
        let x_hat = if gamma > 0.0 {
            let z = ctx.noise.standard(STREAM_CHURN, s_next, s)?;
            x + z * ((s_hat * s_hat - s * s).sqrt() * self.s_noise)
        } else {
            x
        };
        heun_step(ctx, &x_hat, s_hat, s_next)
    }
}
