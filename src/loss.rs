//! Denoising score-matching losses. Each owns its training distribution of sigma and its weight
//! `lambda(sigma)`, and returns the per-sample loss `lambda(sigma) |D(y + sigma n; sigma) - y|^2`
//! averaged over dimensions (NVlabs/edm `training/loss.py`).

use crate::nn::Network;
use anyhow::{bail, Result};
use scoreflow_solvers::sde::{BetaSchedule, DdpmChain};
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
    /// DDPM's eps-MSE (Ho et al. 2020): `t ~ U{1..T}` on a discrete beta chain (linear by
    /// default), `sigma = sqrt(1 / alpha_bar_t - 1)`; `|eps_hat - eps|^2 = |D - y|^2 / sigma^2`.
    /// For a network with `model.learned_sigmas`, improved DDPM's hybrid loss (Nichol & Dhariwal
    /// 2021, sec. 3.1): plus `vlb_weight` times the variational bound's term at `t`, which
    /// trains the variance output only ([`vlb_term`]).
    Ddpm {
        #[serde(default = "ddpm_t")]
        steps: usize,
        #[serde(default = "beta_1")]
        beta_1: f64,
        #[serde(default = "beta_t")]
        beta_t: f64,
        /// The chain's beta schedule (diffusers' names): linear, scaled-linear or
        /// squaredcos-cap-v2 (the cosine one; beta_1 and beta_t unused).
        #[serde(default)]
        schedule: BetaSchedule,
        min_snr_gamma: Option<f64>,
        /// Learned variances: lambda in `L_simple + lambda L_vlb`, `L_vlb = T E_t[L_t]`
        /// ([`VLB_WEIGHT`] when not given).
        vlb_weight: Option<f64>,
        /// Learned variances: the decoder term `L_0 = -log p(x_0 | x_1)`.
        decoder: Option<Decoder>,
        /// Learned variances: `hybrid` (the default, eps-MSE plus `vlb_weight` times the bound
        /// with the mean held fixed) or `vlb` (the bound alone, `T L_t`, training the mean too:
        /// improved DDPM's `RESCALED_KL`, their `use_kl`).
        objective: Option<Objective>,
        /// How the step `t` is drawn: `uniform` (default) or `loss-second-moment` (improved
        /// DDPM's importance sampling, [`LossSecondMoment`]).
        step_sampler: Option<StepSampler>,
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
    /// Conditional flow matching with the linear path (Lipman et al. 2022; rectified flow, Liu
    /// et al. 2022; Esser et al. 2024, SD3's "rf" objective): `x_t = (1 - t) y + t eps`, the
    /// loss `|v_hat - (eps - y)|^2`, which in the denoiser's space (`sigma = t / (1 - t)`,
    /// `D = x_t - t v_hat`) is `lambda |D - y|^2` with `lambda = 1 / t^2 = ((1 + sigma) /
    /// sigma)^2`. `t` is drawn `logit-normal` (SD3's default: `logit t ~ N(logit_mean,
    /// logit_std^2)`, which is `ln sigma ~ N(logit_mean, logit_std^2)`, EDM's family of noise
    /// levels) or `uniform` on `(epsilon_t, 1 - epsilon_t)`; logit-normal draws are clamped to
    /// that interval too.
    Flow {
        #[serde(default)]
        time: FlowTime,
        #[serde(default)]
        logit_mean: f64,
        #[serde(default = "one_f64")]
        logit_std: f64,
        #[serde(default = "eps_t")]
        epsilon_t: f64,
        /// `time = "mode"`: SD3's `s` (1.29 in Esser et al.'s and diffusers' training scripts;
        /// within [-1, 2 / (pi - 2)], where the map from `u` is monotone).
        #[serde(default = "mode_scale")]
        mode_scale: f64,
    },
}

fn one_f64() -> f64 {
    1.0
}
fn mode_scale() -> f64 {
    1.29
}

/// How the `flow` loss draws its times.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FlowTime {
    /// `logit t ~ N(logit_mean, logit_std^2)` (Esser et al. 2024, eq. 19).
    #[default]
    LogitNormal,
    /// `t ~ U(epsilon_t, 1 - epsilon_t)` (rectified flow, flow matching).
    Uniform,
    /// Mode sampling with heavy tails (Esser et al. 2024, eq. 20): `u ~ U(0, 1)`,
    /// `t = 1 - u - s (cos^2(pi u / 2) - 1 + u)` with `s = mode_scale` (diffusers'
    /// `compute_density_for_timestep_sampling("mode")`).
    Mode,
    /// CosMap (Esser et al. 2024, eq. 21): density `2 / (pi (1 - 2 t + 2 t^2))`, drawn as
    /// `t = 1 - 1 / (tan(pi u / 2) + 1)` (diffusers applies it as the loss weight of uniform
    /// times, `compute_loss_weighting_for_sd3("cosmap")`; the same objective in expectation).
    #[serde(alias = "cos-map")]
    Cosmap,
}

/// What a `ddpm` loss with learned variances trains.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Objective {
    /// `L_simple + lambda L_vlb`, the mean by the MSE, the variance by the bound.
    #[default]
    Hybrid,
    /// `L_vlb = T E_t[L_t]` alone, through the mean and the variance.
    Vlb,
}

/// How a `ddpm` loss draws its steps.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum StepSampler {
    #[default]
    Uniform,
    /// Improved DDPM's `LossSecondMomentResampler` ([`LossSecondMoment`]).
    LossSecondMoment,
}

/// Improved DDPM's importance sampling of steps (Nichol & Dhariwal 2021, eq. 17; their
/// `LossSecondMomentResampler` in `resample.py`): the last [`Self::HISTORY`] losses of each
/// step are kept; until every step has that many, steps are uniform; then `p_t` is
/// proportional to `sqrt(E[L_t^2])` over the kept losses, mixed with [`Self::UNIFORM`] of the
/// uniform distribution, and each sample's loss is weighted by `1 / (T p_t)`.
///
/// The state lives on the device and is updated with tensor ops, no host copy: each step's
/// last `HISTORY` losses sit in a ring (the mean of squares does not depend on their order, so
/// this is their shift register); within one batch, the losses of a repeated step are taken
/// in batch order, as their sequential update does. Not saved in checkpoints: a resumed run
/// warms up again (as improved DDPM's).
pub struct LossSecondMoment {
    /// `[T + 1, HISTORY]`; the last row is a sink for losses that a batch overwrites.
    history: Tensor,
    /// `[T]`, int64: how many losses each step has seen.
    seen: Tensor,
    steps: i64,
}

impl LossSecondMoment {
    pub const HISTORY: i64 = 10;
    pub const UNIFORM: f64 = 0.001;

    pub fn new(steps: usize, dev: tch::Device) -> Self {
        let steps = steps as i64;
        LossSecondMoment {
            history: Tensor::zeros([steps + 1, Self::HISTORY], (Kind::Double, dev)),
            seen: Tensor::zeros([steps], (Kind::Int64, dev)),
            steps,
        }
    }

    /// The sampling distribution over the steps (`[T]`, float64 on the device).
    pub fn probabilities(&self) -> Tensor {
        let t = self.steps;
        let rms = self
            .history
            .narrow(0, 0, t)
            .square()
            .mean_dim([1i64].as_slice(), false, Kind::Double)
            .sqrt();
        let p = &rms / rms.sum(Kind::Double) * (1.0 - Self::UNIFORM) + Self::UNIFORM / t as f64;
        let uniform = p.ones_like() / t as f64;
        let warm = self.seen.min().ge(Self::HISTORY);
        p.where_self(&warm, &uniform)
    }

    /// Draw `n` steps (int64 indices, 0 for step 1) and their weights `1 / (T p_t)`, by
    /// inverting the cumulative distribution at uniform draws (cumsum and searchsorted: no
    /// host-device synchronization, unlike a checked multinomial).
    pub fn sample(&self, n: i64) -> (Tensor, Tensor) {
        let p = self.probabilities();
        let cdf = p.cumsum(0, Kind::Double);
        let u = Tensor::rand([n], (Kind::Double, p.device())) * cdf.select(0, self.steps - 1);
        let idx = u
            .searchsorted(&cdf, false, true, "right", None::<Tensor>)
            .clamp_max(self.steps - 1);
        let w = (p.index_select(0, &idx) * self.steps as f64).reciprocal();
        (idx, w.to_kind(Kind::Float))
    }

    /// Record a batch's per-sample losses (`[N]`) at its steps (`idx`, `[N]` int64).
    pub fn update(&self, idx: &Tensor, losses: &Tensor) {
        let n = idx.size()[0];
        let dev = idx.device();
        let (sorted, order) = idx.sort_stable(true, 0, false);
        let losses = losses
            .detach()
            .to_kind(Kind::Double)
            .index_select(0, &order);
        // Each sample's rank among the batch's samples of its step, and their number.
        let first = sorted.searchsorted(&sorted, false, false, "left", None::<Tensor>);
        let after = sorted.searchsorted(&sorted, false, true, "right", None::<Tensor>);
        let rank = Tensor::arange(n, (Kind::Int64, dev)) - &first;
        let count = after - &first;
        // Only the last HISTORY of a step's losses survive; the others go to the sink row.
        let keep = rank.ge_tensor(&(count - Self::HISTORY));
        let row = sorted.where_self(&keep, &sorted.full_like(self.steps));
        let slot = (self.seen.index_select(0, &sorted) + &rank).remainder(Self::HISTORY);
        let mut history = self.history.shallow_clone();
        let _ = history.index_put_(&[Some(row), Some(slot)], &losses, false);
        let mut seen = self.seen.shallow_clone();
        let _ = seen.index_add_(0, idx, &idx.ones_like());
    }
}

/// Improved DDPM's weight of the variational bound in the hybrid loss (their lambda).
pub const VLB_WEIGHT: f64 = 0.001;

/// The decoder `p(x_0 | x_1)` of the variational bound's first term (learned variances).
/// Written `"gaussian"`, `"discretized"` (256 levels) or `"discretized:K"` in configs and on the
/// command line.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum Decoder {
    /// A Gaussian density: `-log N(y; mean, s^2)` per element (continuous data).
    #[default]
    Gaussian,
    /// Improved DDPM's discretized Gaussian for data on `levels` evenly spaced values from -1 to 1
    /// (256 for 8-bit images): the mass of the data's bin of width `2 / (levels - 1)`, the
    /// outermost bins open-ended.
    Discretized { levels: u32 },
}

impl Decoder {
    /// Improved DDPM's decoder for 8-bit images.
    pub const EIGHT_BIT: Decoder = Decoder::Discretized { levels: 256 };
}

impl std::str::FromStr for Decoder {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        let levels = match s.split_once(':') {
            None if s == "gaussian" => return Ok(Decoder::Gaussian),
            None if s == "discretized" => 256,
            Some(("discretized", k)) => k.trim().parse::<u32>().map_err(|_| {
                anyhow::anyhow!("decoder '{s}': the number of levels must be an integer")
            })?,
            _ => bail!("unknown decoder '{s}' (known: gaussian, discretized, discretized:LEVELS)"),
        };
        if levels < 2 {
            bail!("decoder '{s}': a discretized decoder needs at least 2 levels");
        }
        Ok(Decoder::Discretized { levels })
    }
}

impl TryFrom<String> for Decoder {
    type Error = anyhow::Error;
    fn try_from(s: String) -> Result<Self> {
        s.parse()
    }
}

impl From<Decoder> for String {
    fn from(d: Decoder) -> String {
        d.to_string()
    }
}

impl std::fmt::Display for Decoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Decoder::Gaussian => write!(f, "gaussian"),
            Decoder::Discretized { levels: 256 } => write!(f, "discretized"),
            Decoder::Discretized { levels } => write!(f, "discretized:{levels}"),
        }
    }
}

/// The per-step tables of a chain for the variational bound, index `i` for step `i + 1`:
/// the posterior mean's coefficient of `x_0` in `x_{t-1}`'s scale, `beta_t sqrt(abar_{t-1}) /
/// (1 - abar_t)`; `ln beta~_t`, the posterior variance `(1 - abar_{t-1}) / (1 - abar_t) beta_t`
/// (step 1's, which is 0, replaced by step 2's as improved DDPM clips it); `ln beta_t`.
pub fn vlb_tables(chain: &DdpmChain) -> [Vec<f64>; 3] {
    let abar = chain.alpha_bars();
    let prev = |i: usize| if i == 0 { 1.0 } else { abar[i - 1] };
    let n = chain.betas.len();
    let post = |i: usize| (1.0 - prev(i)) / (1.0 - abar[i]) * chain.betas[i];
    let coef = (0..n)
        .map(|i| chain.betas[i] * prev(i).sqrt() / (1.0 - abar[i]))
        .collect();
    let log_post = (0..n)
        .map(|i| post(if i == 0 { 1.min(n - 1) } else { i }).ln())
        .collect();
    let log_beta = chain.betas.iter().map(|b| b.ln()).collect();
    [coef, log_post, log_beta]
}

/// The variational bound's term at each sample's step (bits per dimension, improved DDPM's
/// `_vb_terms_bpd`): `KL(q(x_{t-1} | x_t, x_0) || p(x_{t-1} | x_t))` for `t > 1`, both Gaussian
/// with the posterior's variance and the learned one `exp((1 + v)/2 ln beta_t + (1 - v)/2 ln
/// beta~_t)`, their means differing by `coef (y - D)`; the decoder's `-log p(x_0 | x_1)` with
/// mean `D` at `t = 1`. `d` should be detached (the mean is trained by the MSE alone); `idx`
/// (`[N]`, int64) indexes the tables ([`vlb_tables`], on the device, float32).
pub fn vlb_term(
    y: &Tensor,
    d: &Tensor,
    v: &Tensor,
    idx: &Tensor,
    tables: &[Tensor; 3],
    decoder: Decoder,
) -> Tensor {
    use crate::precond::per_sample;
    let pick = |t: &Tensor| per_sample(&t.index_select(0, idx), y);
    let (coef, log_post, log_beta) = (pick(&tables[0]), pick(&tables[1]), pick(&tables[2]));
    let frac = (v.to_kind(Kind::Float) + 1.0) * 0.5;
    let log_var = &frac * &log_beta + (frac.neg() + 1.0) * &log_post;
    let err = y - d;
    let kl = ((&log_var - &log_post) + (&log_post - &log_var).exp() - 1.0
        + (&coef * &err).square() * log_var.neg().exp())
        * 0.5;
    let nll = match decoder {
        Decoder::Gaussian => {
            (&log_var + (2.0 * std::f64::consts::PI).ln() + err.square() * log_var.neg().exp())
                * 0.5
        }
        Decoder::Discretized { levels } => {
            // The bin [y - h, y + h], h = 1 / (levels - 1) (1/255 for 8-bit images), under
            // N(D, s^2), with the tanh approximation of the normal CDF that improved DDPM uses;
            // the outermost bins are open-ended.
            let half = 1.0 / (levels as f64 - 1.0);
            let edge = 1.0 - half / 2.0;
            let inv_s = (&log_var * -0.5).exp();
            let cdf = |z: Tensor| {
                ((&z + z.pow_tensor_scalar(3) * 0.044715) * (2.0 / std::f64::consts::PI).sqrt())
                    .tanh()
                    * 0.5
                    + 0.5
            };
            let plus = cdf(&inv_s * (&err + half));
            let minus = cdf(&inv_s * (&err - half));
            let log_plus = plus.clamp_min(1e-12).log();
            let log_one_minus = (minus.neg() + 1.0).clamp_min(1e-12).log();
            let log_mid = (plus - minus).clamp_min(1e-12).log();
            let logp = log_plus.where_self(
                &y.lt(-edge),
                &log_one_minus.where_self(&y.gt(edge), &log_mid),
            );
            logp.neg()
        }
    };
    let dims: Vec<i64> = (1..y.dim() as i64).collect();
    let bits = |t: Tensor| t.mean_dim(dims.as_slice(), false, Kind::Float) / 2f64.ln();
    bits(nll).where_self(&idx.eq(0), &bits(kl))
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
            LossConfig::Flow {
                logit_std,
                epsilon_t,
                logit_mean,
                mode_scale,
                ..
            } => {
                let top = 2.0 / (std::f64::consts::PI - 2.0);
                if !(*mode_scale >= -1.0 && *mode_scale <= top) {
                    bail!(
                        "loss.mode_scale of a flow loss must be within [-1, {top:.4}] (2 / (pi - 2), where t is monotone in u), got {}",
                        scoreflow_solvers::Num(*mode_scale)
                    );
                }
                if !(*logit_std > 0.0 && logit_std.is_finite() && logit_mean.is_finite()) {
                    bail!(
                        "loss: flow needs a finite logit_mean and logit_std > 0, got {} and {}",
                        scoreflow_solvers::Num(*logit_mean),
                        scoreflow_solvers::Num(*logit_std)
                    );
                }
                if !(*epsilon_t > 0.0 && *epsilon_t < 0.5) {
                    bail!(
                        "loss.epsilon_t of a flow loss must be in (0, 0.5), got {}",
                        scoreflow_solvers::Num(*epsilon_t)
                    );
                }
                &None
            }
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
                vlb_weight,
                objective,
                ..
            } => {
                if *steps < 1 || !(*beta_1 > 0.0 && beta_1 <= beta_t && *beta_t < 1.0) {
                    bail!("loss: ddpm needs steps >= 1 and 0 < beta_1 <= beta_t < 1");
                }
                if *steps > 1_000_000 {
                    bail!("loss: ddpm steps must be at most 1000000, got {steps}");
                }
                if vlb_weight.is_some() && *objective == Some(Objective::Vlb) {
                    bail!(
                        "loss.vlb_weight applies to the hybrid objective, not objective = \"vlb\""
                    );
                }
                if let Some(w) = vlb_weight {
                    if !(*w > 0.0 && w.is_finite()) {
                        bail!(
                            "loss.vlb_weight must be positive, got {}",
                            scoreflow_solvers::Num(*w)
                        );
                    }
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

    /// Check the loss against the model it trains: a learned variance output is trained by the
    /// `ddpm` loss's variational bound, and its options need one.
    pub fn check_model(&self, model: &crate::train::ModelConfig) -> Result<()> {
        match (self, model.learned_sigmas) {
            (LossConfig::Ddpm { steps, .. }, true) if *steps < 2 => {
                bail!("model.learned_sigmas = true needs a ddpm loss of at least 2 steps")
            }
            (LossConfig::Ddpm { .. }, true) => Ok(()),
            (_, true) => bail!(
                "model.learned_sigmas = true needs [loss] kind = \"ddpm\" (the variance output is trained by its variational bound)"
            ),
            (
                LossConfig::Ddpm {
                    vlb_weight,
                    decoder,
                    objective,
                    ..
                },
                false,
            ) if vlb_weight.is_some() || decoder.is_some() || objective.is_some() => bail!(
                "loss.vlb_weight, loss.decoder and loss.objective apply to a network with model.learned_sigmas = true"
            ),
            _ => Ok(()),
        }
    }

    /// The discrete chain of the `ddpm` loss.
    pub fn chain(&self) -> Option<DdpmChain> {
        match self {
            LossConfig::Ddpm {
                steps,
                beta_1,
                beta_t,
                schedule,
                ..
            } => Some(DdpmChain::from_schedule(
                *schedule, *steps, *beta_1, *beta_t,
            )),
            _ => None,
        }
    }

    /// The loss with its lookup tables on `dev`, built once for a training run (no host copy
    /// in a step).
    pub fn prepare(&self, dev: tch::Device) -> Prepared<'_> {
        let on_dev = |t: &[f64]| Tensor::from_slice(t).to_kind(Kind::Float).to_device(dev);
        let resampler = match self {
            LossConfig::Ddpm {
                steps,
                step_sampler: Some(StepSampler::LossSecondMoment),
                ..
            } => Some(LossSecondMoment::new(*steps, dev)),
            _ => None,
        };
        let chain = self.chain().map(|c| ChainTables {
            sigmas: on_dev(&c.sigmas()),
            vlb: vlb_tables(&c).map(|t| on_dev(&t)),
            resampler,
        });
        Prepared { cfg: self, chain }
    }

    /// Per-sample losses for a batch `y` (`[N, ...]`), with optional labels.
    pub fn loss(&self, net: &Network, y: &Tensor, labels: Option<&Tensor>) -> Tensor {
        self.prepare(y.device()).loss(net, y, labels)
    }

    /// A batch of `n` noise levels drawn from the loss's training distribution and their
    /// weights `lambda(sigma)` (`[n]` each, float32; an `edm` loss without `sigma_data` takes
    /// 0.5), as [`Self::loss`] draws them.
    pub fn draw_sigmas(&self, n: i64, dev: tch::Device) -> (Tensor, Tensor) {
        let prepared = self.prepare(dev);
        let (sigma, weight, _) = self.sigma_and_weight(n, 0.5, dev, prepared.chain.as_ref());
        (sigma, weight)
    }

    /// Draw per-sample sigma (`[N]`, float32) and its weight, and for the `ddpm` loss the
    /// chain's step index (`[N]`, int64; 0 is step 1) with the importance weight of a
    /// loss-aware step sampler.
    fn sigma_and_weight(
        &self,
        n: i64,
        sigma_data_default: f64,
        dev: tch::Device,
        chain: Option<&ChainTables>,
    ) -> (Tensor, Tensor, Option<(Tensor, Option<Tensor>)>) {
        let opts = (Kind::Float, dev);
        let mut step = None;
        let (sigma, weight, gamma) = match self {
            LossConfig::Flow {
                time,
                logit_mean,
                logit_std,
                epsilon_t,
                mode_scale,
            } => {
                let e = *epsilon_t;
                let sigma = match time {
                    // sigma = t / (1 - t) = exp(logit t).
                    FlowTime::LogitNormal => (Tensor::randn([n], opts) * *logit_std + *logit_mean)
                        .exp()
                        .clamp(e / (1.0 - e), (1.0 - e) / e),
                    FlowTime::Uniform => {
                        let t = Tensor::rand([n], opts) * (1.0 - 2.0 * e) + e;
                        &t / (t.neg() + 1.0)
                    }
                    // (In float64: tan near pi / 2 and the cancellations in 1 - u - ... .)
                    FlowTime::Mode => {
                        let u = Tensor::rand([n], (Kind::Double, dev));
                        let c = (&u * std::f64::consts::FRAC_PI_2).cos().square();
                        let t = (u.neg() + 1.0) - (c - 1.0 + &u) * *mode_scale;
                        let t = t.clamp(e, 1.0 - e);
                        (&t / (t.neg() + 1.0)).to_kind(Kind::Float)
                    }
                    FlowTime::Cosmap => {
                        // sigma = t / (1 - t) = tan(pi u / 2).
                        let u = Tensor::rand([n], (Kind::Double, dev));
                        (u * std::f64::consts::FRAC_PI_2)
                            .tan()
                            .clamp(e / (1.0 - e), (1.0 - e) / e)
                            .to_kind(Kind::Float)
                    }
                };
                let w = ((&sigma + 1.0) / &sigma).square();
                (sigma, w, &None)
            }
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
                min_snr_gamma,
                ..
            } => {
                let chain = chain.expect("a ddpm loss has its chain's tables");
                let (idx, is_weight) = match &chain.resampler {
                    Some(r) => {
                        let (idx, w) = r.sample(n);
                        (idx, Some(w))
                    }
                    None => (
                        Tensor::randint(*steps as i64, [n], (Kind::Int64, dev)),
                        None,
                    ),
                };
                let sigma = chain.sigmas.index_select(0, &idx);
                let w = sigma.square().reciprocal();
                step = Some((idx, is_weight));
                (sigma, w, min_snr_gamma)
            }
        };
        // Min-SNR-gamma (Hang et al. 2023) in the denoiser's space: lambda = min(SNR, gamma),
        // SNR = 1 / sigma^2.
        let weight = match gamma {
            Some(g) => sigma.square().reciprocal().clamp_max(*g),
            None => weight,
        };
        (sigma, weight, step)
    }
}

/// A `ddpm` loss's chain on the device: the levels, and the variational bound's tables.
pub struct ChainTables {
    sigmas: Tensor,
    vlb: [Tensor; 3],
    resampler: Option<LossSecondMoment>,
}

/// A loss ready to train ([`LossConfig::prepare`]).
pub struct Prepared<'a> {
    cfg: &'a LossConfig,
    chain: Option<ChainTables>,
}

impl Prepared<'_> {
    /// Per-sample losses for a batch `y` (`[N, ...]`), with optional labels.
    pub fn loss(&self, net: &Network, y: &Tensor, labels: Option<&Tensor>) -> Tensor {
        self.loss_with_noise(net, y, labels, None)
    }

    /// [`Self::loss`] with each sample's standard-normal noise given (`[N, ...]`, reflow's
    /// paired noise) instead of drawn: `x = y + sigma noise`.
    pub fn loss_with_noise(
        &self,
        net: &Network,
        y: &Tensor,
        labels: Option<&Tensor>,
        noise: Option<&Tensor>,
    ) -> Tensor {
        let this = self.cfg;
        let standard = || match noise {
            Some(z) => z.shallow_clone(),
            None => y.randn_like(),
        };
        let sd = match net.precond {
            crate::precond::Precond::Edm { sigma_data } => sigma_data,
            _ => 0.5,
        };
        let (sigma, weight, step) =
            this.sigma_and_weight(y.size()[0], sd, y.device(), self.chain.as_ref());
        if let LossConfig::SlicedScore { projections, .. } = this {
            let x = (y + standard() * crate::precond::per_sample(&sigma, y))
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
        let noise = standard() * crate::precond::per_sample(&sigma, y);
        let (d, v) = net
            .try_forward_parts(&(y + noise), &sigma, labels)
            .unwrap_or_else(|e| panic!("{e}"));
        let dims: Vec<i64> = (1..y.dim() as i64).collect();
        let mse = (&d - y)
            .square()
            .mean_dim(dims.as_slice(), false, Kind::Float)
            * weight;
        let (idx, is_weight) = match step {
            Some((idx, w)) => (Some(idx), w),
            None => (None, None),
        };
        let total = match (this, v, &idx, &self.chain) {
            (
                LossConfig::Ddpm {
                    steps,
                    vlb_weight,
                    decoder,
                    objective,
                    ..
                },
                Some(v),
                Some(idx),
                Some(chain),
            ) => {
                let decoder = decoder.unwrap_or_default();
                let t = *steps as f64;
                match objective.unwrap_or_default() {
                    Objective::Hybrid => {
                        let vb = vlb_term(y, &d.detach(), &v, idx, &chain.vlb, decoder);
                        mse + vb * (vlb_weight.unwrap_or(VLB_WEIGHT) * t)
                    }
                    Objective::Vlb => vlb_term(y, &d, &v, idx, &chain.vlb, decoder) * t,
                }
            }
            _ => mse,
        };
        // A loss-aware step sampler learns from the unweighted losses (improved DDPM's
        // update_with_local_losses), and the loss is importance-weighted.
        if let (
            Some(idx),
            Some(ChainTables {
                resampler: Some(r), ..
            }),
        ) = (&idx, &self.chain)
        {
            r.update(idx, &total);
        }
        match is_weight {
            Some(w) => total * w,
            None => total,
        }
    }
}
