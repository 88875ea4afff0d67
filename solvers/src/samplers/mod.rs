//! The sampler library: one file per sampler, all behind [`Sampler`](crate::driver::Sampler),
//! and [`SamplerSpec`], the tagged configuration that builds them by name.

pub mod bdia;
pub mod belm;
pub mod cfgpp;
pub mod ddim;
pub mod ddpm;
pub mod deis;
pub mod dpm2;
pub mod dpm_multistep;
pub mod dpm_singlestep;
pub mod dpm_solver;
pub mod dpmpp_2m;
pub mod dpmpp_2m_sde;
pub mod dpmpp_2s_ancestral;
pub mod dpmpp_3m;
pub mod dpmpp_sde;
pub mod edict;
pub mod edm_ablation;
pub mod edm_stochastic;
pub mod er_sde;
pub mod euler;
pub mod euler_ancestral;
pub mod euler_maruyama;
pub mod gradient_estimation;
pub mod heun;
pub mod heunpp2;
pub mod ipndm;
pub mod lcm;
pub mod lms;
pub mod pc;
pub mod pndm;
pub mod res_multistep;
pub mod restart;
pub mod rk45;
pub mod sa_solver;
pub mod sa_solver_comfy;
pub mod seeds;
pub mod tcd;
pub mod unipc;

use crate::driver::Sampler;
use crate::error::{Result, SolverError};
pub use ddpm::DdpmVariance;
pub use dpm_singlestep::AlgorithmType;
pub use dpmpp_2m_sde::SolverType;
pub use edm_stochastic::Churn;
pub use pc::{PcCorrector, PcPredictor};
pub use seeds::SeedsSolverType;
use serde::{Deserialize, Serialize};
pub use unipc::UniPcVariant;

/// `Err(SolverError::Parameter)` naming `name = value` and `why` unless `ok`.
pub(crate) fn require(name: &'static str, value: f64, ok: bool, why: &'static str) -> Result<()> {
    if ok {
        Ok(())
    } else {
        Err(SolverError::Parameter { name, value, why })
    }
}

/// A sampler parameter that must be finite and non-negative (eta, S_noise, S_churn, snr).
pub(crate) fn check_nonneg(name: &'static str, value: f64) -> Result<()> {
    require(
        name,
        value,
        value >= 0.0 && value.is_finite(),
        "must be finite and >= 0",
    )
}

/// A sampler parameter that must be finite and positive (atol, h_init).
pub(crate) fn check_positive(name: &'static str, value: f64) -> Result<()> {
    require(
        name,
        value,
        value > 0.0 && value.is_finite(),
        "must be finite and > 0",
    )
}

/// An order within `orders` (1 to 4 for the multistep methods).
pub(crate) fn check_order(order: usize, orders: std::ops::RangeInclusive<usize>) -> Result<()> {
    if !orders.contains(&order) {
        return Err(SolverError::Invalid(format!(
            "invalid parameter order = {order}: must be {} to {}",
            orders.start(),
            orders.end()
        )));
    }
    Ok(())
}

/// `x + scale z` with `z` the standard normal of the step stream on `[lo, hi]`
/// ([`crate::noise::STREAM_STEP`]); no draw when `scale` is 0 (eta or s_noise 0, the last step).
pub(crate) fn add_step_noise(
    ctx: &mut crate::driver::StepCtx<'_>,
    x: tch::Tensor,
    lo: f64,
    hi: f64,
    scale: f64,
) -> Result<tch::Tensor> {
    if scale > 0.0 {
        let z = ctx.noise.standard(crate::noise::STREAM_STEP, lo, hi)?;
        return Ok(x + z * scale);
    }
    Ok(x)
}

/// `s_tmin` and `s_tmax`, the window of noise levels where a sampler adds noise: both >= 0 and
/// `s_tmin <= s_tmax`.
pub(crate) fn check_window(s_tmin: f64, s_tmax: f64) -> Result<()> {
    require("s_tmax", s_tmax, s_tmax >= 0.0, "must be >= 0")?;
    require(
        "s_tmin",
        s_tmin,
        s_tmin >= 0.0 && s_tmin <= s_tmax,
        "must be >= 0 and <= s_tmax",
    )
}

/// Whether `sigma` lies in the window `[s_tmin, s_tmax]` (see [`check_window`]).
pub(crate) fn in_window(sigma: f64, s_tmin: f64, s_tmax: f64) -> bool {
    sigma >= s_tmin && sigma <= s_tmax
}

/// `sum_k w_k T_k` over the nonzero weights; `None` when every weight is 0.
pub(crate) fn weighted_sum<T: std::borrow::Borrow<tch::Tensor>>(
    terms: &[T],
    w: &[f64],
) -> Option<tch::Tensor> {
    let mut acc: Option<tch::Tensor> = None;
    for (t, &wk) in terms.iter().zip(w) {
        if wk != 0.0 {
            let term = t.borrow() * wk;
            acc = Some(match acc {
                Some(a) => a + term,
                None => term,
            });
        }
    }
    acc
}

/// The earlier outputs `[D_{i-m}, ..., D_{i-1}]` of a multistep predictor-corrector
/// (`unipc`, `sa-solver`), whose `ctx.history` is `[anchor, D_{i-m}, ..., D_{i-1}]`; empty at
/// the first step.
pub(crate) fn corrector_outputs(ctx: &crate::driver::StepCtx<'_>) -> Vec<tch::Tensor> {
    if ctx.index > 0 && ctx.history.len() >= 2 {
        ctx.history[1..].iter().map(|t| t.shallow_clone()).collect()
    } else {
        Vec::new()
    }
}

/// Store `[anchor, the last `keep` of outputs + newest]` as the history of a multistep
/// predictor-corrector (see [`corrector_outputs`]).
pub(crate) fn keep_corrector_history(
    ctx: &mut crate::driver::StepCtx<'_>,
    anchor: tch::Tensor,
    mut outputs: Vec<tch::Tensor>,
    newest: tch::Tensor,
    keep: usize,
) {
    outputs.push(newest);
    let drop_n = outputs.len().saturating_sub(keep);
    outputs.drain(..drop_n);
    ctx.history.clear();
    ctx.history.push(anchor);
    ctx.history.extend(outputs);
}

pub(crate) fn one() -> f64 {
    1.0
}
fn half() -> f64 {
    0.5
}
fn inf() -> f64 {
    f64::INFINITY
}
/// An `s_tmax` read back from JSON, which has no infinity and writes it as `null` (a config's
/// `s_tmax = inf` in an experiment's experiment.json).
fn inf_if_null<'de, D: serde::Deserializer<'de>>(d: D) -> std::result::Result<f64, D::Error> {
    Ok(Option::<f64>::deserialize(d)?.unwrap_or(f64::INFINITY))
}
fn snr() -> f64 {
    0.16
}
fn one_usize() -> usize {
    1
}
fn four() -> usize {
    4
}
fn two() -> usize {
    2
}
pub(crate) fn three() -> usize {
    3
}
fn one_third() -> f64 {
    1.0 / 3.0
}
fn two_thirds() -> f64 {
    2.0 / 3.0
}
fn ge_gamma() -> f64 {
    2.0
}
fn tcd_gamma() -> f64 {
    0.3
}
fn edict_mix_weight() -> f64 {
    0.93
}
fn yes() -> bool {
    true
}

/// A sampler and its parameters, as written in configs (`kind = "heun"`) and built by name.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case", deny_unknown_fields)]
pub enum SamplerSpec {
    /// The churn parameters' names and defaults are k-diffusion's (see [`Churn`]).
    Euler(#[serde(default)] Churn),
    Heun(#[serde(default)] Churn),
    EdmStochastic(#[serde(default)] Churn),
    EulerMaruyama {},
    Ddim {
        #[serde(default)]
        eta: f64,
    },
    Ddpm {
        #[serde(default)]
        variance: DdpmVariance,
    },
    /// score_sde's predictor-corrector sampler; `predictor` and `corrector` are its names
    /// (kebab-case; see [`pc`]).
    Pc {
        #[serde(default = "snr")]
        snr: f64,
        #[serde(default = "one_usize")]
        corrector_steps: usize,
        #[serde(default)]
        predictor: PcPredictor,
        #[serde(default)]
        corrector: PcCorrector,
    },
    #[serde(rename = "dpmpp-2m")]
    DpmPp2M {},
    #[serde(rename = "dpmpp-3m")]
    DpmPp3M {},
    EulerAncestral {
        #[serde(default = "one")]
        eta: f64,
        #[serde(default = "one")]
        s_noise: f64,
    },
    Dpm2(#[serde(default)] Churn),
    Lms {
        #[serde(default = "four")]
        order: usize,
    },
    #[serde(rename = "dpmpp-2m-sde")]
    DpmPp2MSde {
        #[serde(default = "one")]
        eta: f64,
        #[serde(default = "one")]
        s_noise: f64,
        #[serde(default)]
        solver_type: SolverType,
    },
    #[serde(rename = "dpmpp-3m-sde")]
    DpmPp3MSde {
        #[serde(default = "one")]
        eta: f64,
        #[serde(default = "one")]
        s_noise: f64,
    },
    Dpm2Ancestral {
        #[serde(default = "one")]
        eta: f64,
        #[serde(default = "one")]
        s_noise: f64,
    },
    #[serde(rename = "dpmpp-2s-ancestral")]
    DpmPp2SAncestral {
        #[serde(default = "one")]
        eta: f64,
        #[serde(default = "one")]
        s_noise: f64,
    },
    #[serde(rename = "dpmpp-sde")]
    DpmPpSde {
        #[serde(default = "one")]
        eta: f64,
        #[serde(default = "one")]
        s_noise: f64,
        #[serde(default = "half")]
        r: f64,
    },
    Deis {
        #[serde(default = "three")]
        order: usize,
    },
    Ipndm {
        #[serde(default = "four")]
        order: usize,
        /// The step to sigma = 0 returns `D` (ComfyUI's `ipndm`) instead of the multistep update.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        final_denoised: bool,
    },
    /// PNDM (pseudo Runge-Kutta start) or, with `skip_prk_steps`, PLMS; diffusers' names.
    Pndm {
        #[serde(default)]
        skip_prk_steps: bool,
    },
    #[serde(rename = "unipc")]
    UniPc {
        #[serde(default = "two")]
        order: usize,
        #[serde(default)]
        solver_type: UniPcVariant,
        #[serde(default = "yes")]
        corrector: bool,
    },
    DpmSolver {
        #[serde(default = "three")]
        order: usize,
        #[serde(default)]
        eta: f64,
        #[serde(default = "one")]
        s_noise: f64,
    },
    /// The parameters' names and defaults are k-diffusion's (see [`dpm_solver::AdaptiveParams`]).
    DpmAdaptive(dpm_solver::AdaptiveParams),
    DpmFast {
        #[serde(default)]
        eta: f64,
        #[serde(default = "one")]
        s_noise: f64,
    },
    /// diffusers' `DPMSolverSinglestepScheduler` (its names and defaults).
    DpmSinglestep {
        #[serde(default = "two")]
        order: usize,
        #[serde(default)]
        algorithm_type: AlgorithmType,
        #[serde(default)]
        solver_type: SolverType,
    },
    /// score_sde's ODE sampler (scipy's RK45; see [`rk45::Rk45Params`]).
    Rk45(rk45::Rk45Params),
    /// diffusers' `DPMSolverMultistepScheduler` (its names and defaults).
    DpmMultistep {
        #[serde(default = "two")]
        order: usize,
        #[serde(default)]
        algorithm_type: AlgorithmType,
        #[serde(default)]
        solver_type: SolverType,
        #[serde(default = "yes")]
        lower_order_final: bool,
    },
    /// NVlabs/edm's `ablation_sampler` (see [`edm_ablation::AblationParams`]).
    EdmAblation(edm_ablation::AblationParams),
    /// Restart sampling (Xu et al. 2023; see [`restart::RestartParams`]).
    Restart(restart::RestartParams),
    /// SA-Solver (Xue et al. 2023; see [`sa_solver::SaSolverParams`]).
    SaSolver(sa_solver::SaSolverParams),
    /// ComfyUI's SA-Solver arrangement (see [`sa_solver_comfy::SaSolverComfyParams`]).
    SaSolverComfy(sa_solver_comfy::SaSolverComfyParams),
    /// Multistep consistency sampling (diffusers' `LCMScheduler`; [`lcm::Lcm`]).
    Lcm {},
    /// Strategic stochastic sampling of Trajectory Consistency Distillation (diffusers'
    /// `TCDScheduler`, whose `eta` is `gamma`; [`tcd::Tcd`]).
    Tcd {
        #[serde(default = "tcd_gamma")]
        gamma: f64,
    },
    /// ER-SDE-Solver (Cui et al. 2023; see [`er_sde::ErSdeParams`]).
    ErSde(er_sde::ErSdeParams),
    /// RES's second-order multistep exponential integrator (ComfyUI's `res_multistep`; with
    /// `eta > 0` its ancestral form; [`res_multistep::ResMultistep`]).
    ResMultistep {
        #[serde(default)]
        eta: f64,
        #[serde(default = "one")]
        s_noise: f64,
    },
    /// Permenter & Yuan's gradient estimation (ComfyUI's `sample_gradient_estimation`;
    /// [`gradient_estimation::GradientEstimation`]).
    GradientEstimation {
        #[serde(default = "ge_gamma")]
        ge_gamma: f64,
    },
    /// Euler with CFG++'s renoising (Chung et al. 2025; ComfyUI's `sample_euler_cfg_pp`;
    /// [`cfgpp::EulerCfgPp`]).
    #[serde(rename = "euler-cfgpp")]
    EulerCfgPp {},
    /// Euler ancestral with CFG++'s renoising (ComfyUI's `sample_euler_ancestral_cfg_pp`).
    #[serde(rename = "euler-ancestral-cfgpp")]
    EulerAncestralCfgPp {
        #[serde(default = "one")]
        eta: f64,
        #[serde(default = "one")]
        s_noise: f64,
    },
    /// DPM-Solver++(2M) with CFG++'s renoising (ComfyUI's `sample_dpmpp_2m_cfg_pp`;
    /// [`cfgpp::DpmPp2MCfgPp`]).
    #[serde(rename = "dpmpp-2m-cfgpp")]
    DpmPp2MCfgPp {},
    /// res-multistep with CFG++'s renoising (ComfyUI's `res_multistep` with `cfg_pp`: at
    /// `eta = 0` `sample_res_multistep_cfg_pp`, at 1 `sample_res_multistep_ancestral_cfg_pp`).
    #[serde(rename = "res-multistep-cfgpp")]
    ResMultistepCfgPp {
        #[serde(default)]
        eta: f64,
        #[serde(default = "one")]
        s_noise: f64,
    },
    /// SEEDS-2 (Gonzalez et al. 2023; ComfyUI's `sample_seeds_2`; [`seeds::Seeds2`]).
    #[serde(rename = "seeds-2")]
    Seeds2 {
        #[serde(default = "one")]
        eta: f64,
        #[serde(default = "one")]
        s_noise: f64,
        #[serde(default = "half")]
        r: f64,
        #[serde(default)]
        solver_type: SeedsSolverType,
    },
    /// SEEDS-3 (Gonzalez et al. 2023; ComfyUI's `sample_seeds_3`; [`seeds::Seeds3`]).
    #[serde(rename = "seeds-3")]
    Seeds3 {
        #[serde(default = "one")]
        eta: f64,
        #[serde(default = "one")]
        s_noise: f64,
        #[serde(default = "one_third")]
        r_1: f64,
        #[serde(default = "two_thirds")]
        r_2: f64,
    },
    /// Gradient estimation with CFG++'s renoising (ComfyUI's
    /// `sample_gradient_estimation_cfg_pp`; [`gradient_estimation::GradientEstimation`]).
    #[serde(rename = "gradient-estimation-cfgpp")]
    GradientEstimationCfgPp {
        #[serde(default = "ge_gamma")]
        ge_gamma: f64,
    },
    /// DEIS's tAB form (ComfyUI's `deis`; [`deis::DeisTab`]).
    #[serde(rename = "deis-tab")]
    DeisTab {
        #[serde(default = "three")]
        order: usize,
    },
    /// Heun++ (ComfyUI's `sample_heunpp2`; [`heunpp2::HeunPp2`]), with EDM's churn.
    Heunpp2(#[serde(default)] Churn),
    /// EDICT's coupled DDIM steps (Wallace, Gokul & Naik 2023; [`edict::Edict`]): exact
    /// inversion.
    Edict {
        #[serde(default = "edict_mix_weight")]
        mix_weight: f64,
        #[serde(default = "yes")]
        leapfrog: bool,
    },
    /// BDIA-DDIM (Zhang, Lewis & Kleijn 2024; [`bdia::Bdia`]): exact inversion.
    Bdia {
        #[serde(default = "one")]
        gamma: f64,
    },
    /// O-BELM (Wang et al. 2024; [`belm::Belm`]): exact inversion.
    Belm {},
    /// DPM-Solver++(2S) ancestral with CFG++'s renoising (ComfyUI's
    /// `sample_dpmpp_2s_ancestral_cfg_pp`; [`dpmpp_2s_ancestral::DpmPp2SAncestral`]).
    #[serde(rename = "dpmpp-2s-ancestral-cfgpp")]
    DpmPp2SAncestralCfgPp {
        #[serde(default = "one")]
        eta: f64,
        #[serde(default = "one")]
        s_noise: f64,
    },
    /// Euler ancestral with ComfyUI's rectified-flow split (`sample_euler_ancestral_RF`;
    /// [`euler_ancestral::rf_ancestral_step`]).
    #[serde(rename = "euler-ancestral-rf")]
    EulerAncestralRf {
        #[serde(default = "one")]
        eta: f64,
        #[serde(default = "one")]
        s_noise: f64,
    },
    /// DPM-2 ancestral in ComfyUI's rectified-flow form (`sample_dpm_2_ancestral_RF`;
    /// [`dpm2::Dpm2`]).
    #[serde(rename = "dpm2-ancestral-rf")]
    Dpm2AncestralRf {
        #[serde(default = "one")]
        eta: f64,
        #[serde(default = "one")]
        s_noise: f64,
    },
    /// DPM-Solver++(2S) ancestral with ComfyUI's rectified-flow split
    /// (`sample_dpmpp_2s_ancestral_RF`).
    #[serde(rename = "dpmpp-2s-ancestral-rf")]
    DpmPp2SAncestralRf {
        #[serde(default = "one")]
        eta: f64,
        #[serde(default = "one")]
        s_noise: f64,
    },
    /// dpmpp-2s-ancestral-cfgpp with the rectified-flow split
    /// (`sample_dpmpp_2s_ancestral_RF_cfg_pp`).
    #[serde(rename = "dpmpp-2s-ancestral-cfgpp-rf")]
    DpmPp2SAncestralCfgPpRf {
        #[serde(default = "one")]
        eta: f64,
        #[serde(default = "one")]
        s_noise: f64,
    },
}

/// Every registry name, in the order `scoreflow samplers` and `bench` list them.
pub const NAMES: &[&str] = &[
    "euler",
    "heun",
    "edm-stochastic",
    "euler-maruyama",
    "ddim",
    "ddpm",
    "pc",
    "dpmpp-2m",
    "euler-ancestral",
    "dpm2",
    "lms",
    "dpmpp-3m",
    "dpmpp-2m-sde",
    "dpmpp-3m-sde",
    "unipc",
    "dpm2-ancestral",
    "dpmpp-2s-ancestral",
    "dpmpp-sde",
    "deis",
    "ipndm",
    "pndm",
    "dpm-solver",
    "dpm-adaptive",
    "dpm-fast",
    "dpm-singlestep",
    "rk45",
    "edm-ablation",
    "restart",
    "sa-solver",
    "dpm-multistep",
    "lcm",
    "tcd",
    "er-sde",
    "res-multistep",
    "gradient-estimation",
    "seeds-2",
    "seeds-3",
    "euler-cfgpp",
    "euler-ancestral-cfgpp",
    "dpmpp-2m-cfgpp",
    "res-multistep-cfgpp",
    "dpmpp-2s-ancestral-cfgpp",
    "euler-ancestral-rf",
    "dpm2-ancestral-rf",
    "dpmpp-2s-ancestral-rf",
    "dpmpp-2s-ancestral-cfgpp-rf",
    "heunpp2",
    "deis-tab",
    "gradient-estimation-cfgpp",
    "sa-solver-comfy",
    "edict",
    "bdia",
    "belm",
];

impl SamplerSpec {
    /// The sampler of this name with its default parameters (EDM's churn defaults to 0,
    /// which makes `edm-stochastic` deterministic: set `s_churn` for noise).
    pub fn from_name(name: &str) -> Result<Self> {
        Ok(match name {
            "euler" => SamplerSpec::Euler(Churn::default()),
            "heun" => SamplerSpec::Heun(Churn::default()),
            "edm-stochastic" => SamplerSpec::EdmStochastic(Churn::default()),
            "euler-maruyama" => SamplerSpec::EulerMaruyama {},
            "lcm" => SamplerSpec::Lcm {},
            "tcd" => SamplerSpec::Tcd { gamma: tcd_gamma() },
            "er-sde" => SamplerSpec::ErSde(er_sde::ErSdeParams::default()),
            "res-multistep" => SamplerSpec::ResMultistep {
                eta: 0.0,
                s_noise: 1.0,
            },
            "gradient-estimation" => SamplerSpec::GradientEstimation {
                ge_gamma: ge_gamma(),
            },
            "euler-cfgpp" => SamplerSpec::EulerCfgPp {},
            "euler-ancestral-cfgpp" => SamplerSpec::EulerAncestralCfgPp {
                eta: 1.0,
                s_noise: 1.0,
            },
            "dpmpp-2m-cfgpp" => SamplerSpec::DpmPp2MCfgPp {},
            "res-multistep-cfgpp" => SamplerSpec::ResMultistepCfgPp {
                eta: 0.0,
                s_noise: 1.0,
            },
            "seeds-2" => SamplerSpec::Seeds2 {
                eta: 1.0,
                s_noise: 1.0,
                r: half(),
                solver_type: SeedsSolverType::default(),
            },
            "heunpp2" => SamplerSpec::Heunpp2(Churn::default()),
            "edict" => SamplerSpec::Edict {
                mix_weight: edict_mix_weight(),
                leapfrog: true,
            },
            "bdia" => SamplerSpec::Bdia { gamma: 1.0 },
            "belm" => SamplerSpec::Belm {},
            "deis-tab" => SamplerSpec::DeisTab { order: 3 },
            "gradient-estimation-cfgpp" => SamplerSpec::GradientEstimationCfgPp {
                ge_gamma: ge_gamma(),
            },
            "dpmpp-2s-ancestral-cfgpp" => SamplerSpec::DpmPp2SAncestralCfgPp {
                eta: 1.0,
                s_noise: 1.0,
            },
            "euler-ancestral-rf" => SamplerSpec::EulerAncestralRf {
                eta: 1.0,
                s_noise: 1.0,
            },
            "dpm2-ancestral-rf" => SamplerSpec::Dpm2AncestralRf {
                eta: 1.0,
                s_noise: 1.0,
            },
            "dpmpp-2s-ancestral-rf" => SamplerSpec::DpmPp2SAncestralRf {
                eta: 1.0,
                s_noise: 1.0,
            },
            "dpmpp-2s-ancestral-cfgpp-rf" => SamplerSpec::DpmPp2SAncestralCfgPpRf {
                eta: 1.0,
                s_noise: 1.0,
            },
            "seeds-3" => SamplerSpec::Seeds3 {
                eta: 1.0,
                s_noise: 1.0,
                r_1: one_third(),
                r_2: two_thirds(),
            },
            "ddim" => SamplerSpec::Ddim { eta: 0.0 },
            "ddpm" => SamplerSpec::Ddpm {
                variance: DdpmVariance::Small,
            },
            "pc" => SamplerSpec::Pc {
                snr: 0.16,
                corrector_steps: 1,
                predictor: PcPredictor::ReverseDiffusion,
                corrector: PcCorrector::Langevin,
            },
            "dpmpp-2m" => SamplerSpec::DpmPp2M {},
            "dpmpp-3m" => SamplerSpec::DpmPp3M {},
            "euler-ancestral" => SamplerSpec::EulerAncestral {
                eta: 1.0,
                s_noise: 1.0,
            },
            "dpm2" => SamplerSpec::Dpm2(Churn::default()),
            "lms" => SamplerSpec::Lms { order: 4 },
            "dpmpp-2m-sde" => SamplerSpec::DpmPp2MSde {
                eta: 1.0,
                s_noise: 1.0,
                solver_type: SolverType::Midpoint,
            },
            "dpmpp-3m-sde" => SamplerSpec::DpmPp3MSde {
                eta: 1.0,
                s_noise: 1.0,
            },
            "dpm2-ancestral" => SamplerSpec::Dpm2Ancestral {
                eta: 1.0,
                s_noise: 1.0,
            },
            "dpmpp-2s-ancestral" => SamplerSpec::DpmPp2SAncestral {
                eta: 1.0,
                s_noise: 1.0,
            },
            "dpmpp-sde" => SamplerSpec::DpmPpSde {
                eta: 1.0,
                s_noise: 1.0,
                r: 0.5,
            },
            "deis" => SamplerSpec::Deis { order: 3 },
            "ipndm" => SamplerSpec::Ipndm {
                order: 4,
                final_denoised: false,
            },
            "pndm" => SamplerSpec::Pndm {
                skip_prk_steps: false,
            },
            "unipc" => SamplerSpec::UniPc {
                order: 2,
                solver_type: UniPcVariant::Bh2,
                corrector: true,
            },
            "dpm-solver" => SamplerSpec::DpmSolver {
                order: 3,
                eta: 0.0,
                s_noise: 1.0,
            },
            "dpm-adaptive" => SamplerSpec::DpmAdaptive(dpm_solver::AdaptiveParams::default()),
            "dpm-fast" => SamplerSpec::DpmFast {
                eta: 0.0,
                s_noise: 1.0,
            },
            "dpm-singlestep" => SamplerSpec::DpmSinglestep {
                order: 2,
                algorithm_type: AlgorithmType::DpmSolverPlusPlus,
                solver_type: SolverType::Midpoint,
            },
            "rk45" => SamplerSpec::Rk45(rk45::Rk45Params::default()),
            "dpm-multistep" => SamplerSpec::DpmMultistep {
                order: 2,
                algorithm_type: AlgorithmType::DpmSolverPlusPlus,
                solver_type: SolverType::Midpoint,
                lower_order_final: true,
            },
            "edm-ablation" => SamplerSpec::EdmAblation(edm_ablation::AblationParams::default()),
            "restart" => SamplerSpec::Restart(restart::RestartParams::default()),
            "sa-solver" => SamplerSpec::SaSolver(sa_solver::SaSolverParams::default()),
            "sa-solver-comfy" => {
                SamplerSpec::SaSolverComfy(sa_solver_comfy::SaSolverComfyParams::default())
            }
            other => {
                return Err(SolverError::UnknownSampler {
                    name: other.to_string(),
                    known: NAMES.join(", "),
                })
            }
        })
    }

    /// The registry name.
    pub fn name(&self) -> &'static str {
        match self {
            SamplerSpec::Euler(_) => "euler",
            SamplerSpec::Heun(_) => "heun",
            SamplerSpec::EdmStochastic(_) => "edm-stochastic",
            SamplerSpec::EulerMaruyama {} => "euler-maruyama",
            SamplerSpec::Ddim { .. } => "ddim",
            SamplerSpec::Ddpm { .. } => "ddpm",
            SamplerSpec::Pc { .. } => "pc",
            SamplerSpec::DpmPp2M {} => "dpmpp-2m",
            SamplerSpec::DpmPp3M {} => "dpmpp-3m",
            SamplerSpec::EulerAncestral { .. } => "euler-ancestral",
            SamplerSpec::Dpm2(_) => "dpm2",
            SamplerSpec::Lms { .. } => "lms",
            SamplerSpec::DpmPp2MSde { .. } => "dpmpp-2m-sde",
            SamplerSpec::DpmPp3MSde { .. } => "dpmpp-3m-sde",
            SamplerSpec::UniPc { .. } => "unipc",
            SamplerSpec::Dpm2Ancestral { .. } => "dpm2-ancestral",
            SamplerSpec::DpmPp2SAncestral { .. } => "dpmpp-2s-ancestral",
            SamplerSpec::DpmPpSde { .. } => "dpmpp-sde",
            SamplerSpec::Deis { .. } => "deis",
            SamplerSpec::Ipndm { .. } => "ipndm",
            SamplerSpec::Pndm { .. } => "pndm",
            SamplerSpec::DpmSolver { .. } => "dpm-solver",
            SamplerSpec::DpmAdaptive(_) => "dpm-adaptive",
            SamplerSpec::DpmFast { .. } => "dpm-fast",
            SamplerSpec::DpmSinglestep { .. } => "dpm-singlestep",
            SamplerSpec::DpmMultistep { .. } => "dpm-multistep",
            SamplerSpec::Rk45(_) => "rk45",
            SamplerSpec::EdmAblation(_) => "edm-ablation",
            SamplerSpec::Restart(_) => "restart",
            SamplerSpec::SaSolver(_) => "sa-solver",
            SamplerSpec::SaSolverComfy(_) => "sa-solver-comfy",
            SamplerSpec::Lcm {} => "lcm",
            SamplerSpec::Tcd { .. } => "tcd",
            SamplerSpec::ErSde(_) => "er-sde",
            SamplerSpec::ResMultistep { .. } => "res-multistep",
            SamplerSpec::GradientEstimation { .. } => "gradient-estimation",
            SamplerSpec::EulerCfgPp {} => "euler-cfgpp",
            SamplerSpec::EulerAncestralCfgPp { .. } => "euler-ancestral-cfgpp",
            SamplerSpec::DpmPp2MCfgPp {} => "dpmpp-2m-cfgpp",
            SamplerSpec::ResMultistepCfgPp { .. } => "res-multistep-cfgpp",
            SamplerSpec::Seeds2 { .. } => "seeds-2",
            SamplerSpec::Seeds3 { .. } => "seeds-3",
            SamplerSpec::Heunpp2(_) => "heunpp2",
            SamplerSpec::Edict { .. } => "edict",
            SamplerSpec::Bdia { .. } => "bdia",
            SamplerSpec::Belm {} => "belm",
            SamplerSpec::DeisTab { .. } => "deis-tab",
            SamplerSpec::GradientEstimationCfgPp { .. } => "gradient-estimation-cfgpp",
            SamplerSpec::DpmPp2SAncestralCfgPp { .. } => "dpmpp-2s-ancestral-cfgpp",
            SamplerSpec::EulerAncestralRf { .. } => "euler-ancestral-rf",
            SamplerSpec::Dpm2AncestralRf { .. } => "dpm2-ancestral-rf",
            SamplerSpec::DpmPp2SAncestralRf { .. } => "dpmpp-2s-ancestral-rf",
            SamplerSpec::DpmPp2SAncestralCfgPpRf { .. } => "dpmpp-2s-ancestral-cfgpp-rf",
        }
    }

    /// `eta` and `s_noise` of the samplers whose noise these two alone set (the ancestral, SDE,
    /// SEEDS, RES and CFG++ samplers, their rectified-flow forms, dpm-fast); `None` for the
    /// others. One list for [`SamplerSpec::is_stochastic`] and the command line's `--eta` and
    /// `--s-noise`.
    pub fn eta_s_noise_mut(&mut self) -> Option<(&mut f64, &mut f64)> {
        match self {
            SamplerSpec::EulerAncestral { eta, s_noise }
            | SamplerSpec::DpmPp2MSde { eta, s_noise, .. }
            | SamplerSpec::DpmPp3MSde { eta, s_noise }
            | SamplerSpec::Dpm2Ancestral { eta, s_noise }
            | SamplerSpec::DpmPp2SAncestral { eta, s_noise }
            | SamplerSpec::DpmPpSde { eta, s_noise, .. }
            | SamplerSpec::DpmFast { eta, s_noise }
            | SamplerSpec::ResMultistep { eta, s_noise }
            | SamplerSpec::Seeds2 { eta, s_noise, .. }
            | SamplerSpec::Seeds3 { eta, s_noise, .. }
            | SamplerSpec::EulerAncestralCfgPp { eta, s_noise }
            | SamplerSpec::ResMultistepCfgPp { eta, s_noise }
            | SamplerSpec::DpmPp2SAncestralCfgPp { eta, s_noise }
            | SamplerSpec::EulerAncestralRf { eta, s_noise }
            | SamplerSpec::Dpm2AncestralRf { eta, s_noise }
            | SamplerSpec::DpmPp2SAncestralRf { eta, s_noise }
            | SamplerSpec::DpmPp2SAncestralCfgPpRf { eta, s_noise } => Some((eta, s_noise)),
            _ => None,
        }
    }

    /// Whether the sampler draws noise (its output depends on the seed beyond the start).
    pub fn is_stochastic(&self) -> bool {
        if let Some((eta, s_noise)) = self.clone().eta_s_noise_mut() {
            return *eta > 0.0 && *s_noise > 0.0;
        }
        match self {
            SamplerSpec::Euler(c)
            | SamplerSpec::Heun(c)
            | SamplerSpec::EdmStochastic(c)
            | SamplerSpec::Heunpp2(c)
            | SamplerSpec::Dpm2(c) => c.is_stochastic(),
            SamplerSpec::EulerMaruyama {}
            | SamplerSpec::Ddpm { .. }
            | SamplerSpec::Pc { .. }
            | SamplerSpec::Lcm {} => true,
            SamplerSpec::Ddim { eta } => *eta > 0.0,
            SamplerSpec::Tcd { gamma } => *gamma > 0.0,
            SamplerSpec::ErSde(p) => p.is_stochastic(),
            SamplerSpec::DpmSolver { eta, s_noise, .. } => *eta > 0.0 && *s_noise > 0.0,
            SamplerSpec::DpmAdaptive(p) => p.eta > 0.0 && p.s_noise > 0.0,
            SamplerSpec::EdmAblation(p) => p.churn().is_stochastic(),
            SamplerSpec::Restart(p) => p.is_stochastic(),
            SamplerSpec::SaSolver(p) => p.is_stochastic(),
            SamplerSpec::SaSolverComfy(p) => p.is_stochastic(),
            SamplerSpec::DpmSinglestep { algorithm_type, .. }
            | SamplerSpec::DpmMultistep { algorithm_type, .. } => matches!(
                algorithm_type,
                AlgorithmType::SdeDpmSolverPlusPlus | AlgorithmType::SdeDpmSolver
            ),
            _ => false,
        }
    }

    /// Whether the sampler chooses its own steps (`dpm-adaptive`, `rk45`): its NFE is known
    /// only after the run, and only the ends of the grid matter.
    pub fn is_adaptive(&self) -> bool {
        matches!(self, SamplerSpec::DpmAdaptive(_) | SamplerSpec::Rk45(_))
    }

    /// Network evaluations for `steps` steps (the driver counts them; this is for planning);
    /// `None` for an adaptive sampler.
    pub fn nfe(&self, steps: usize) -> Option<usize> {
        Some(match self {
            SamplerSpec::DpmAdaptive(_) | SamplerSpec::Rk45(_) => return None,
            SamplerSpec::DpmSolver { order, .. } => order * steps.saturating_sub(1) + 1,
            SamplerSpec::Heun(_)
            | SamplerSpec::EdmStochastic(_)
            | SamplerSpec::Dpm2(_)
            | SamplerSpec::Dpm2Ancestral { .. }
            | SamplerSpec::DpmPp2SAncestral { .. }
            | SamplerSpec::DpmPp2SAncestralCfgPp { .. }
            | SamplerSpec::Dpm2AncestralRf { .. }
            | SamplerSpec::DpmPp2SAncestralRf { .. }
            | SamplerSpec::DpmPp2SAncestralCfgPpRf { .. }
            | SamplerSpec::DpmPpSde { .. }
            | SamplerSpec::Seeds2 { .. } => 2 * steps - 1,
            SamplerSpec::Seeds3 { .. } => 3 * steps - 2,
            SamplerSpec::Edict { .. } => 2 * steps,
            SamplerSpec::Heunpp2(_) => heunpp2::HeunPp2::nfe(steps),
            SamplerSpec::Pc {
                corrector_steps,
                predictor,
                corrector,
                ..
            } => pc::nfe(steps, *corrector_steps, *predictor, *corrector),
            SamplerSpec::Pndm { skip_prk_steps } => pndm::Pndm::nfe(*skip_prk_steps, steps),
            SamplerSpec::EdmAblation(p) if p.solver_type == edm_ablation::OdeSolver::Heun => {
                2 * steps - 1
            }
            SamplerSpec::Restart(p) => 2 * steps - 1 + p.restart_nfe(),
            SamplerSpec::SaSolverComfy(p) => p.nfe(steps),
            _ => steps,
        })
    }

    /// Build the sampler, validating the parameters.
    pub fn build(&self) -> Result<Box<dyn Sampler>> {
        Ok(match self {
            SamplerSpec::Euler(c) => Box::new(euler::Euler::new(c.clone())?),
            SamplerSpec::Heun(c) => Box::new(heun::Heun::new(c.clone())?),
            SamplerSpec::EdmStochastic(c) => {
                Box::new(edm_stochastic::EdmStochastic::new(c.clone())?)
            }
            SamplerSpec::EulerMaruyama {} => Box::new(euler_maruyama::EulerMaruyama),
            SamplerSpec::Lcm {} => Box::new(lcm::Lcm),
            SamplerSpec::Tcd { gamma } => Box::new(tcd::Tcd::new(*gamma)?),
            SamplerSpec::ErSde(p) => Box::new(er_sde::ErSde::new(p.clone())?),
            SamplerSpec::ResMultistep { eta, s_noise } => {
                Box::new(res_multistep::ResMultistep::new(*eta, *s_noise)?)
            }
            SamplerSpec::GradientEstimation { ge_gamma } => {
                Box::new(gradient_estimation::GradientEstimation::new(*ge_gamma)?)
            }
            SamplerSpec::EulerCfgPp {} => {
                Box::new(cfgpp::EulerCfgPp::new(0.0, 0.0, "euler-cfgpp")?)
            }
            SamplerSpec::EulerAncestralCfgPp { eta, s_noise } => Box::new(cfgpp::EulerCfgPp::new(
                *eta,
                *s_noise,
                "euler-ancestral-cfgpp",
            )?),
            SamplerSpec::DpmPp2MCfgPp {} => Box::new(cfgpp::DpmPp2MCfgPp),
            SamplerSpec::ResMultistepCfgPp { eta, s_noise } => {
                Box::new(res_multistep::ResMultistep::cfg_pp(*eta, *s_noise)?)
            }
            SamplerSpec::Seeds2 {
                eta,
                s_noise,
                r,
                solver_type,
            } => Box::new(seeds::Seeds2::new(*eta, *s_noise, *r, *solver_type)?),
            SamplerSpec::Seeds3 {
                eta,
                s_noise,
                r_1,
                r_2,
            } => Box::new(seeds::Seeds3::new(*eta, *s_noise, *r_1, *r_2)?),
            SamplerSpec::Heunpp2(c) => Box::new(heunpp2::HeunPp2::new(c.clone())?),
            SamplerSpec::Edict {
                mix_weight,
                leapfrog,
            } => Box::new(edict::Edict::new(*mix_weight, *leapfrog)?),
            SamplerSpec::Bdia { gamma } => Box::new(bdia::Bdia::new(*gamma)?),
            SamplerSpec::Belm {} => Box::new(belm::Belm),
            SamplerSpec::DeisTab { order } => Box::new(deis::DeisTab::new(*order)?),
            SamplerSpec::GradientEstimationCfgPp { ge_gamma } => {
                Box::new(gradient_estimation::GradientEstimation::cfg_pp(*ge_gamma)?)
            }
            SamplerSpec::DpmPp2SAncestralCfgPp { eta, s_noise } => Box::new(
                dpmpp_2s_ancestral::DpmPp2SAncestral::variant(*eta, *s_noise, false, true)?,
            ),
            SamplerSpec::EulerAncestralRf { eta, s_noise } => {
                Box::new(euler_ancestral::EulerAncestral::rf(*eta, *s_noise)?)
            }
            SamplerSpec::Dpm2AncestralRf { eta, s_noise } => {
                Box::new(dpm2::Dpm2::ancestral_rf(*eta, *s_noise)?)
            }
            SamplerSpec::DpmPp2SAncestralRf { eta, s_noise } => Box::new(
                dpmpp_2s_ancestral::DpmPp2SAncestral::variant(*eta, *s_noise, true, false)?,
            ),
            SamplerSpec::DpmPp2SAncestralCfgPpRf { eta, s_noise } => Box::new(
                dpmpp_2s_ancestral::DpmPp2SAncestral::variant(*eta, *s_noise, true, true)?,
            ),
            SamplerSpec::Ddim { eta } => Box::new(ddim::Ddim::new(*eta)?),
            SamplerSpec::Ddpm { variance } => Box::new(ddpm::Ddpm {
                variance: *variance,
            }),
            SamplerSpec::Pc {
                snr,
                corrector_steps,
                predictor,
                corrector,
            } => Box::new(pc::Pc::new(*snr, *corrector_steps, *predictor, *corrector)?),
            SamplerSpec::DpmPp2M {} => Box::new(dpmpp_2m::DpmPp2M),
            SamplerSpec::DpmPp3M {} => Box::new(dpmpp_3m::DpmPp3M::ode()),
            SamplerSpec::EulerAncestral { eta, s_noise } => {
                Box::new(euler_ancestral::EulerAncestral::new(*eta, *s_noise)?)
            }
            SamplerSpec::Dpm2(c) => Box::new(dpm2::Dpm2::ode(c.clone())?),
            SamplerSpec::Dpm2Ancestral { eta, s_noise } => {
                Box::new(dpm2::Dpm2::ancestral(*eta, *s_noise)?)
            }
            SamplerSpec::DpmPp2SAncestral { eta, s_noise } => {
                Box::new(dpmpp_2s_ancestral::DpmPp2SAncestral::new(*eta, *s_noise)?)
            }
            SamplerSpec::Lms { order } => Box::new(lms::Lms::new(*order)?),
            SamplerSpec::DpmPp2MSde {
                eta,
                s_noise,
                solver_type,
            } => Box::new(dpmpp_2m_sde::DpmPp2MSde::new(*eta, *s_noise, *solver_type)?),
            SamplerSpec::DpmPp3MSde { eta, s_noise } => {
                Box::new(dpmpp_3m::DpmPp3M::sde(*eta, *s_noise)?)
            }
            SamplerSpec::DpmPpSde { eta, s_noise, r } => {
                Box::new(dpmpp_sde::DpmPpSde::new(*eta, *s_noise, *r)?)
            }
            SamplerSpec::Deis { order } => Box::new(deis::Deis::new(*order)?),
            SamplerSpec::Ipndm {
                order,
                final_denoised,
            } => Box::new(ipndm::Ipndm::new(*order)?.final_denoised(*final_denoised)),
            SamplerSpec::Pndm { skip_prk_steps } => Box::new(pndm::Pndm {
                skip_prk_steps: *skip_prk_steps,
            }),
            SamplerSpec::UniPc {
                order,
                solver_type,
                corrector,
            } => Box::new(unipc::UniPc::new(*order, *solver_type, *corrector)?),
            SamplerSpec::DpmSolver {
                order,
                eta,
                s_noise,
            } => Box::new(dpm_solver::DpmSolver::new(*order, *eta, *s_noise)?),
            SamplerSpec::DpmAdaptive(p) => Box::new(dpm_solver::DpmAdaptive::new(p.clone())?),
            SamplerSpec::DpmFast { eta, s_noise } => {
                Box::new(dpm_solver::DpmFast::new(*eta, *s_noise)?)
            }
            SamplerSpec::DpmSinglestep {
                order,
                algorithm_type,
                solver_type,
            } => Box::new(dpm_singlestep::DpmSinglestep::new(
                *order,
                *algorithm_type,
                *solver_type,
            )?),
            SamplerSpec::DpmMultistep {
                order,
                algorithm_type,
                solver_type,
                lower_order_final,
            } => Box::new(dpm_multistep::DpmMultistep::new(
                *order,
                *algorithm_type,
                *solver_type,
                *lower_order_final,
            )?),
            SamplerSpec::Rk45(p) => Box::new(rk45::Rk45::new(p.clone())?),
            SamplerSpec::EdmAblation(p) => Box::new(edm_ablation::EdmAblation::new(p.clone())?),
            SamplerSpec::Restart(p) => Box::new(restart::Restart::new(p.clone())?),
            SamplerSpec::SaSolver(p) => Box::new(sa_solver::SaSolver::new(p.clone())?),
            SamplerSpec::SaSolverComfy(p) => {
                Box::new(sa_solver_comfy::SaSolverComfy::new(p.clone())?)
            }
        })
    }
}
