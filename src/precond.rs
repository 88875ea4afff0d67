//! Preconditioning: `D(x; sigma) = c_skip x + c_out F(c_in x; c_noise)` (Karras et al. 2022,
//! Table 1 and NVlabs/edm `training/networks.py`), and the eps-, x0- and v-prediction adapters.
//! The backbone `F` sees sigma only through `c_noise`.

use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

fn half() -> f64 {
    0.5
}
fn beta_d() -> f64 {
    19.9
}
fn beta_min() -> f64 {
    0.1
}
fn one() -> f64 {
    1.0
}
fn m() -> usize {
    1000
}
fn eps() -> Prediction {
    Prediction::Eps
}
fn c1() -> f64 {
    0.001
}
fn c2() -> f64 {
    0.008
}
fn d_beta_start() -> f64 {
    1e-4
}
fn d_beta_end() -> f64 {
    0.02
}

/// What a discrete-time network predicts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Prediction {
    /// The noise `eps` (DDPM; diffusers' `epsilon`).
    #[serde(alias = "epsilon")]
    Eps,
    /// The clean sample `x0` (diffusers' `sample`).
    #[serde(alias = "sample")]
    X0,
    /// `v = alpha eps - sigma_vp x0` (Salimans & Ho 2022; diffusers' `v_prediction`).
    #[serde(alias = "v-prediction", alias = "v_prediction")]
    V,
}

pub use scoreflow_solvers::sde::BetaSchedule;

/// Which preconditioning wraps the backbone.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case", deny_unknown_fields)]
pub enum Precond {
    /// EDM: `c_skip = sd^2 / (s^2 + sd^2)`, `c_out = s sd / sqrt(s^2 + sd^2)`,
    /// `c_in = 1 / sqrt(s^2 + sd^2)`, `c_noise = ln(s) / 4`.
    Edm {
        #[serde(default = "half")]
        sigma_data: f64,
    },
    /// VP (Song et al. 2021 as in EDM Table 1): `c_skip = 1`, `c_out = -s`,
    /// `c_in = 1 / sqrt(s^2 + 1)`, `c_noise = (M - 1) t(s)` with the linear-beta VP's `t(s)`.
    Vp {
        #[serde(default = "beta_d")]
        beta_d: f64,
        #[serde(default = "beta_min")]
        beta_min: f64,
        #[serde(default = "m")]
        m: usize,
    },
    /// VE: `c_skip = 1`, `c_out = s`, `c_in = 1`, `c_noise = ln(s / 2)`.
    Ve {},
    /// iDDPM (Nichol & Dhariwal 2021 as in EDM Table 1): `c_skip = 1`, `c_out = -s`,
    /// `c_in = 1 / sqrt(s^2 + 1)`, `c_noise = M - 1 - argmin_j |u_j - s|` over the cosine
    /// schedule's levels `u_j`.
    Iddpm {
        #[serde(default = "c1")]
        c1: f64,
        #[serde(default = "c2")]
        c2: f64,
        #[serde(default = "m")]
        m: usize,
    },
    /// A network trained on a discrete DDPM chain of `timesteps` steps that takes the step index
    /// as its time input (k-diffusion's `DiscreteEpsDDPMDenoiser` / `DiscreteVDDPMDenoiser`,
    /// `external.py`; diffusers' UNets): `c_in = 1 / sqrt(s^2 + 1)`, `c_noise = t(s)`, the
    /// fractional step whose noise level is `s` (log-sigma interpolation between the chain's
    /// levels `sigma_j = sqrt(1 / alpha_bar_j - 1)`, j = 0..T-1, clamped to [0, T-1]; with
    /// `quantize` the nearest step), and the output read as `prediction`.
    Discrete {
        #[serde(default = "eps")]
        prediction: Prediction,
        #[serde(default)]
        schedule: BetaSchedule,
        #[serde(default = "d_beta_start")]
        beta_start: f64,
        #[serde(default = "d_beta_end")]
        beta_end: f64,
        #[serde(default = "m")]
        timesteps: usize,
        #[serde(default)]
        quantize: bool,
    },
    /// v-diffusion (Crowson's `v-diffusion-pytorch`; k-diffusion's `VDenoiser`): the v adapter
    /// with the time input `c_noise = atan(s) 2 / pi`.
    VDiffusion {},
    /// eps-prediction adapter: `D = x - s F`, input scaled as in VP (`c_in = 1 / sqrt(s^2 + 1)`),
    /// `c_noise = ln(s) / 4`.
    Eps {},
    /// x0-prediction adapter: `D = F`, `c_in = 1 / sqrt(s^2 + 1)`, `c_noise = ln(s) / 4`.
    X0 {},
    /// v-prediction adapter (Salimans & Ho 2022): `c_skip = 1 / (s^2 + 1)`,
    /// `c_out = -s / sqrt(s^2 + 1)`, `c_in = 1 / sqrt(s^2 + 1)`, `c_noise = ln(s) / 4`.
    V {},
    /// Rectified flow / flow matching (Liu et al. 2022, Lipman et al. 2022; Esser et al. 2024
    /// and diffusers' `FlowMatch*` schedulers): the backbone sees `x_t = (1 - t) x0 + t eps =
    /// x / (1 + s)` and `t = s / (1 + s)` (times `time_scale`; SD3's networks take 1000 t) and
    /// predicts the velocity `v = eps - x0`, so `D = x_t - t F`: `c_skip = c_in = 1 / (1 + s)`,
    /// `c_out = -s / (1 + s)`, `c_noise = time_scale t`.
    Flow {
        #[serde(default = "one")]
        time_scale: f64,
    },
}

impl Default for Precond {
    fn default() -> Self {
        Precond::Edm { sigma_data: 0.5 }
    }
}

/// The four coefficients, each of shape `[N]`.
pub struct Coefs {
    pub skip: Tensor,
    pub out: Tensor,
    pub inp: Tensor,
    pub noise: Tensor,
}

/// `u_j`, j = 0..=M, of the iDDPM preconditioning (EDM `iDDPMPrecond`).
pub fn iddpm_levels(c1: f64, c2: f64, m: usize) -> Vec<f64> {
    let alpha_bar = |j: usize| {
        (0.5 * std::f64::consts::PI * j as f64 / m as f64 / (c2 + 1.0))
            .sin()
            .powi(2)
    };
    let mut u = vec![0.0; m + 1];
    for j in (1..=m).rev() {
        u[j - 1] = ((u[j] * u[j] + 1.0) / (alpha_bar(j - 1) / alpha_bar(j)).max(c1) - 1.0).sqrt();
    }
    u
}

impl Precond {
    pub fn validate(&self) -> Result<()> {
        match self {
            Precond::Edm { sigma_data } if !(*sigma_data > 0.0 && sigma_data.is_finite()) => {
                bail!(
                    "precond.sigma_data must be positive, got {}",
                    scoreflow_solvers::Num(*sigma_data)
                )
            }
            Precond::Vp {
                beta_d,
                beta_min,
                m,
            } if !(*beta_d > 0.0 && *beta_min > 0.0 && *m > 1) => {
                bail!("precond: vp needs beta_d > 0, beta_min > 0 and m > 1")
            }
            Precond::Iddpm { c1, c2, m } if !(*c1 > 0.0 && *c2 > 0.0 && *m > 1) => {
                bail!("precond: iddpm needs c1 > 0, c2 > 0 and m > 1")
            }
            Precond::Discrete { timesteps, .. } if !(2..=1_000_000).contains(timesteps) => {
                bail!("precond.timesteps must be 2 to 1000000, got {timesteps}")
            }
            Precond::Discrete {
                schedule: BetaSchedule::Linear | BetaSchedule::ScaledLinear,
                beta_start,
                beta_end,
                ..
            } if !(*beta_start > 0.0 && beta_start <= beta_end && *beta_end < 1.0) => {
                bail!(
                    "precond: discrete needs 0 < beta_start <= beta_end < 1, got beta_start {} and beta_end {}",
                    scoreflow_solvers::Num(*beta_start),
                    scoreflow_solvers::Num(*beta_end)
                )
            }
            Precond::Flow { time_scale } if !(*time_scale > 0.0 && time_scale.is_finite()) => {
                bail!(
                    "precond.time_scale must be positive and finite, got {}",
                    scoreflow_solvers::Num(*time_scale)
                )
            }
            _ => Ok(()),
        }
    }

    /// The noise levels of a discrete chain, `sigma_j = sqrt(1 / alpha_bar_j - 1)`, j = 0..T-1
    /// (k-diffusion's `DiscreteSchedule.sigmas`); None for the continuous preconditionings.
    pub fn discrete_sigmas(&self) -> Option<Vec<f64>> {
        use scoreflow_solvers::sde::DdpmChain;
        let Precond::Discrete {
            schedule,
            beta_start,
            beta_end,
            timesteps,
            ..
        } = self
        else {
            return None;
        };
        Some(DdpmChain::from_schedule(*schedule, *timesteps, *beta_start, *beta_end).sigmas())
    }

    /// The table `c_noise` is looked up in, where there is one: iDDPM's levels `u_j`, the
    /// discrete chain's `ln sigma_j`. A network keeps it on its device (see [`Self::coefs_with`]).
    pub fn levels(&self) -> Option<Vec<f64>> {
        match self {
            Precond::Iddpm { c1, c2, m } => Some(iddpm_levels(*c1, *c2, *m)),
            Precond::Discrete { .. } => self
                .discrete_sigmas()
                .map(|s| s.iter().map(|v| v.ln()).collect()),
            _ => None,
        }
    }

    /// The noise range to sample in, where the preconditioning has one: VP's `sigma(1e-5)` to
    /// `sigma(1)` (EDM `VPPrecond`), iDDPM's `u_{M-1}` to `u_8` (EDM's iDDPM sampling starts at
    /// `j0 = 8`, about 80; `u_0` itself is about 2e4).
    pub fn sigma_range(&self) -> Option<(f64, f64)> {
        match self {
            Precond::Vp {
                beta_d, beta_min, ..
            } => {
                let s = |t: f64| ((0.5 * beta_d * t * t + beta_min * t).exp() - 1.0).sqrt();
                Some((s(1e-5), s(1.0)))
            }
            Precond::Iddpm { c1, c2, m } => {
                let u = iddpm_levels(*c1, *c2, *m);
                Some((u[*m - 1], u[8.min(*m - 1)]))
            }
            Precond::Discrete { .. } => {
                let s = self.discrete_sigmas()?;
                Some((s[0], s[s.len() - 1]))
            }
            _ => None,
        }
    }

    /// Coefficients for per-sample noise levels `sigma` (shape `[N]`).
    pub fn coefs(&self, sigma: &Tensor) -> Coefs {
        self.coefs_with(sigma, None)
    }

    /// [`Self::coefs`] with [`Self::levels`] already as a tensor on `sigma`'s device and kind
    /// (a network keeps it, so that a call copies nothing from the host); None: made here.
    pub fn coefs_with(&self, sigma: &Tensor, levels: Option<&Tensor>) -> Coefs {
        let made;
        let levels = match levels {
            Some(l) => Some(l),
            None => {
                made = self.levels().map(|l| {
                    Tensor::from_slice(&l)
                        .to_device(sigma.device())
                        .to_kind(sigma.kind())
                });
                made.as_ref()
            }
        };
        let s2 = sigma.square();
        let ones = sigma.ones_like();
        let vp_in = (&s2 + 1.0).rsqrt();
        let quarter_log = sigma.log() * 0.25;
        // The eps-, x0- and v-prediction outputs (all with the VP input scaling), whatever the
        // time input.
        let adapter = |prediction: Prediction, noise: Tensor| {
            let (skip, out) = match prediction {
                Prediction::Eps => (sigma.ones_like(), -sigma),
                Prediction::X0 => (sigma.zeros_like(), sigma.ones_like()),
                Prediction::V => ((&s2 + 1.0).reciprocal(), -sigma * &vp_in),
            };
            Coefs {
                skip,
                out,
                inp: vp_in.shallow_clone(),
                noise,
            }
        };
        match self {
            Precond::Edm { sigma_data } => {
                let sd2 = sigma_data * sigma_data;
                let denom = &s2 + sd2;
                Coefs {
                    skip: denom.reciprocal() * sd2,
                    out: sigma * *sigma_data * denom.rsqrt(),
                    inp: (&s2 + sd2).rsqrt(),
                    noise: quarter_log,
                }
            }
            Precond::Vp {
                beta_d,
                beta_min,
                m,
            } => {
                let t = ((s2.log1p() * (2.0 * beta_d)) + beta_min * beta_min).sqrt() - *beta_min;
                Coefs {
                    skip: ones,
                    out: -sigma,
                    inp: vp_in,
                    noise: t * ((*m as f64 - 1.0) / beta_d),
                }
            }
            Precond::Ve {} => Coefs {
                skip: ones.shallow_clone(),
                out: sigma.shallow_clone(),
                inp: ones,
                noise: (sigma * 0.5).log(),
            },
            Precond::Iddpm { m, .. } => {
                let u = levels.unwrap();
                let idx = (sigma.unsqueeze(1) - u.unsqueeze(0))
                    .abs()
                    .argmin(1, false)
                    .to_kind(sigma.kind());
                Coefs {
                    skip: ones,
                    out: -sigma,
                    inp: vp_in,
                    noise: idx.neg() + (*m as f64 - 1.0),
                }
            }
            Precond::Discrete {
                prediction,
                quantize,
                ..
            } => adapter(
                *prediction,
                discrete_time(sigma, levels.unwrap(), *quantize),
            ),
            Precond::VDiffusion {} => {
                adapter(Prediction::V, sigma.atan() * std::f64::consts::FRAC_2_PI)
            }
            Precond::Eps {} => adapter(Prediction::Eps, quarter_log),
            Precond::X0 {} => adapter(Prediction::X0, quarter_log),
            Precond::V {} => adapter(Prediction::V, quarter_log),
            Precond::Flow { time_scale } => {
                let s = (sigma + 1.0).reciprocal();
                let t = sigma * &s;
                Coefs {
                    skip: s.shallow_clone(),
                    out: -&t,
                    inp: s,
                    noise: t * *time_scale,
                }
            }
        }
    }
}

/// The fractional step of a discrete chain whose noise level is `sigma` (`[N]`), given the
/// chain's `ln sigma_j` (`[T]`, increasing): k-diffusion's `DiscreteSchedule.sigma_to_t`. With
/// `low` the last j where `ln sigma_j <= ln sigma` (clamped to 0..=T-2),
/// `t = low + clamp((ln sigma_low - ln sigma) / (ln sigma_low - ln sigma_low+1), 0, 1)`, so
/// levels outside the chain's range map to 0 or T-1; with `quantize`, the nearest j in
/// log sigma.
pub fn discrete_time(sigma: &Tensor, log_sigmas: &Tensor, quantize: bool) -> Tensor {
    let ls = sigma.log();
    let dists = ls.unsqueeze(0) - log_sigmas.unsqueeze(1);
    if quantize {
        return dists.abs().argmin(0, false).to_kind(sigma.kind());
    }
    let last = log_sigmas.size()[0] - 2;
    let low = (dists.ge(0.0).sum_dim_intlist(0, false, Kind::Int64) - 1).clamp(0, last);
    let lo = log_sigmas.index_select(0, &low);
    let hi = log_sigmas.index_select(0, &(&low + 1));
    let w = ((&lo - &ls) / (&lo - hi)).clamp(0.0, 1.0);
    low.to_kind(sigma.kind()) + w
}

/// Reshape `[N]` coefficients to broadcast against `x` (`[N, ...]`).
pub fn per_sample(c: &Tensor, x: &Tensor) -> Tensor {
    let mut shape = vec![1i64; x.dim()];
    shape[0] = -1;
    c.to_kind(x.kind()).view(shape.as_slice())
}

/// A constant noise level for a whole batch as a `[N]` tensor.
pub fn sigma_batch(sigma: f64, x: &Tensor) -> Tensor {
    Tensor::full([x.size()[0]], sigma, (Kind::Double, x.device())).to_kind(x.kind())
}
