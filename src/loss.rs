//! Denoising score-matching losses. Each owns its training distribution of sigma and its weight
//! `lambda(sigma)`, and returns the per-sample loss `lambda(sigma) |D(y + sigma n; sigma) - y|^2`
//! averaged over dimensions (NVlabs/edm `training/loss.py`).

use crate::nn::Network;
use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

fn p_mean() -> f64 {
    -1.2
}
fn p_std() -> f64 {
    1.2
}
fn eps_t() -> f64 {
    1e-5
}
fn beta_d() -> f64 {
    19.9
}
fn beta_min() -> f64 {
    0.1
}
fn ve_min() -> f64 {
    0.02
}
fn ve_max() -> f64 {
    100.0
}
fn ddpm_t() -> usize {
    1000
}
fn beta_1() -> f64 {
    1e-4
}
fn beta_t() -> f64 {
    0.02
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case", deny_unknown_fields)]
pub enum LossConfig {
    /// EDM (Karras et al. 2022, eq. 8): `ln sigma ~ N(P_mean, P_std^2)`,
    /// `lambda = (sigma^2 + sigma_data^2) / (sigma sigma_data)^2`.
    Edm {
        #[serde(default = "p_mean")]
        p_mean: f64,
        #[serde(default = "p_std")]
        p_std: f64,
        /// Defaults to the EDM preconditioning's sigma_data (0.5 otherwise).
        sigma_data: Option<f64>,
        min_snr_gamma: Option<f64>,
    },
    /// VP (Song et al. 2021): `t ~ U(eps_t, 1)`, `sigma = sigma_vp(t)`, `lambda = 1 / sigma^2`.
    Vp {
        #[serde(default = "eps_t")]
        epsilon_t: f64,
        #[serde(default = "beta_d")]
        beta_d: f64,
        #[serde(default = "beta_min")]
        beta_min: f64,
        min_snr_gamma: Option<f64>,
    },
    /// VE (Song et al. 2021): `ln sigma ~ U(ln sigma_min, ln sigma_max)`, `lambda = 1 / sigma^2`.
    Ve {
        #[serde(default = "ve_min")]
        sigma_min: f64,
        #[serde(default = "ve_max")]
        sigma_max: f64,
        min_snr_gamma: Option<f64>,
    },
    /// DDPM's eps-MSE (Ho et al. 2020): `t ~ U{1..T}` on the linear beta chain,
    /// `sigma = sqrt(1 / alpha_bar_t - 1)`; `|eps_hat - eps|^2 = |D - y|^2 / sigma^2`.
    Ddpm {
        #[serde(default = "ddpm_t")]
        steps: usize,
        #[serde(default = "beta_1")]
        beta_1: f64,
        #[serde(default = "beta_t")]
        beta_t: f64,
        min_snr_gamma: Option<f64>,
    },
    /// Sliced score matching (Song et al. 2019) on the perturbed data, an alternative objective
    /// for vector data: with `s = (D - x) / sigma^2` and random directions `v`,
    /// `sigma^2 [v . grad_x (v . s) + (v . s)^2 / 2]`; `ln sigma ~ N(P_mean, P_std^2)` as EDM.
    SlicedScore {
        #[serde(default = "p_mean")]
        p_mean: f64,
        #[serde(default = "p_std")]
        p_std: f64,
        #[serde(default = "one_projection")]
        projections: usize,
    },
}

/// The sliced score-matching objective per sample, `v . grad_x (v . s) + (v . s)^2 / 2`, for a
/// score `s` computed from `x` (which must require grad) and directions `v` (same shape).
/// Its expectation is `E[tr grad s + |s|^2 / 2]`, the Hyvärinen objective up to a constant.
pub fn sliced_score_objective(x: &Tensor, s: &Tensor, v: &Tensor) -> Tensor {
    let dims: Vec<i64> = (1..x.dim() as i64).collect();
    let vs = (v * s).sum_dim_intlist(dims.as_slice(), false, Kind::Float);
    let grad = Tensor::run_backward(&[vs.sum(Kind::Float)], &[x], true, true)
        .pop()
        .unwrap();
    (v * grad).sum_dim_intlist(dims.as_slice(), false, Kind::Float) + vs.square() * 0.5
}

fn one_projection() -> usize {
    1
}

impl Default for LossConfig {
    fn default() -> Self {
        LossConfig::Edm {
            p_mean: -1.2,
            p_std: 1.2,
            sigma_data: None,
            min_snr_gamma: None,
        }
    }
}

impl LossConfig {
    pub fn validate(&self) -> Result<()> {
        let gamma = match self {
            LossConfig::SlicedScore {
                p_std, projections, ..
            } => {
                if !(*p_std > 0.0) || *projections < 1 {
                    bail!("loss: sliced-score needs p_std > 0 and projections >= 1");
                }
                &None
            }
            LossConfig::Edm {
                p_std,
                min_snr_gamma,
                ..
            } => {
                if !(*p_std > 0.0) {
                    bail!("loss.p_std must be positive");
                }
                min_snr_gamma
            }
            LossConfig::Vp {
                epsilon_t,
                min_snr_gamma,
                ..
            } => {
                if !(*epsilon_t > 0.0 && *epsilon_t < 1.0) {
                    bail!("loss.epsilon_t must be in (0, 1)");
                }
                min_snr_gamma
            }
            LossConfig::Ve {
                sigma_min,
                sigma_max,
                min_snr_gamma,
            } => {
                if !(*sigma_min > 0.0 && sigma_min < sigma_max) {
                    bail!(
                        "loss: sigma_min ({}) must be positive and smaller than sigma_max ({})",
                        scoreflow_solvers::Num(*sigma_min),
                        scoreflow_solvers::Num(*sigma_max)
                    );
                }
                min_snr_gamma
            }
            LossConfig::Ddpm {
                steps,
                beta_1,
                beta_t,
                min_snr_gamma,
            } => {
                if *steps < 1 || !(*beta_1 > 0.0 && beta_1 <= beta_t && *beta_t < 1.0) {
                    bail!("loss: ddpm needs steps >= 1 and 0 < beta_1 <= beta_t < 1");
                }
                min_snr_gamma
            }
        };
        if let Some(g) = gamma {
            if !(*g > 0.0) {
                bail!("loss.min_snr_gamma must be positive");
            }
        }
        Ok(())
    }

    /// Draw per-sample sigma (`[N]`, float32) and its weight.
    fn sigma_and_weight(
        &self,
        n: i64,
        sigma_data_default: f64,
        dev: tch::Device,
    ) -> (Tensor, Tensor) {
        let opts = (Kind::Float, dev);
        let (sigma, weight, gamma) = match self {
            LossConfig::SlicedScore { p_mean, p_std, .. } => {
                let sigma = (Tensor::randn([n], opts) * *p_std + *p_mean).exp();
                let w = sigma.square();
                (sigma, w, &None)
            }
            LossConfig::Edm {
                p_mean,
                p_std,
                sigma_data,
                min_snr_gamma,
            } => {
                let sd = sigma_data.unwrap_or(sigma_data_default);
                let sigma = (Tensor::randn([n], opts) * *p_std + *p_mean).exp();
                let w = (sigma.square() + sd * sd) / (&sigma * sd).square();
                (sigma, w, min_snr_gamma)
            }
            LossConfig::Vp {
                epsilon_t,
                beta_d,
                beta_min,
                min_snr_gamma,
            } => {
                let t = Tensor::rand([n], opts) * (*epsilon_t - 1.0) + 1.0;
                let sigma = ((t.square() * (0.5 * beta_d) + &t * *beta_min).exp() - 1.0).sqrt();
                let w = sigma.square().reciprocal();
                (sigma, w, min_snr_gamma)
            }
            LossConfig::Ve {
                sigma_min,
                sigma_max,
                min_snr_gamma,
            } => {
                let u = Tensor::rand([n], opts);
                let sigma = (u * (sigma_max / sigma_min).ln()).exp() * *sigma_min;
                let w = sigma.square().reciprocal();
                (sigma, w, min_snr_gamma)
            }
            LossConfig::Ddpm {
                steps,
                beta_1,
                beta_t,
                min_snr_gamma,
            } => {
                let chain = scoreflow_solvers::sde::DdpmChain::linear(*steps, *beta_1, *beta_t);
                let table = Tensor::from_slice(&chain.sigmas())
                    .to_kind(Kind::Float)
                    .to_device(dev);
                let idx = Tensor::randint(*steps as i64, [n], (Kind::Int64, dev));
                let sigma = table.index_select(0, &idx);
                let w = sigma.square().reciprocal();
                (sigma, w, min_snr_gamma)
            }
        };
        // Min-SNR-gamma (Hang et al. 2023) in the denoiser's space: lambda = min(SNR, gamma),
        // SNR = 1 / sigma^2.
        let weight = match gamma {
            Some(g) => sigma.square().reciprocal().clamp_max(*g),
            None => weight,
        };
        (sigma, weight)
    }

    /// Per-sample losses for a batch `y` (`[N, ...]`), with optional labels.
    pub fn loss(&self, net: &Network, y: &Tensor, labels: Option<&Tensor>) -> Tensor {
        let sd = match net.precond {
            crate::precond::Precond::Edm { sigma_data } => sigma_data,
            _ => 0.5,
        };
        let (sigma, weight) = self.sigma_and_weight(y.size()[0], sd, y.device());
        if let LossConfig::SlicedScore { projections, .. } = self {
            let x = (y + y.randn_like() * crate::precond::per_sample(&sigma, y))
                .detach()
                .set_requires_grad(true);
            let s2 = crate::precond::per_sample(&sigma.square(), y);
            let score = (net.forward(&x, &sigma, labels) - &x) / s2;
            let total = (0..*projections)
                .map(|_| sliced_score_objective(&x, &score, &x.randn_like()))
                .reduce(|a, b| a + b)
                .unwrap();
            return total / *projections as f64 * weight;
        }
        let noise = y.randn_like() * crate::precond::per_sample(&sigma, y);
        let d = net.forward(&(y + noise), &sigma, labels);
        let dims: Vec<i64> = (1..y.dim() as i64).collect();
        (d - y)
            .square()
            .mean_dim(dims.as_slice(), false, Kind::Float)
            * weight
    }
}
