//! What every command shares: building the SDE, grid and sampler from options, and running a
//! sampler from given standard-normal noise.

use anyhow::{anyhow, bail, Result};
use clap::Args;
use scoreflow_solvers::noise::BrownianNoise;
use scoreflow_solvers::samplers::{restart, AlgorithmType, DdpmVariance, SolverType, UniPcVariant};
use scoreflow_solvers::sde::{Edm, Flow, Sde, SubVp, Ve, VpCosine, VpLinear};
use scoreflow_solvers::{
    grid, run, Denoiser, GridKind, RunOptions, SamplerSpec, SolverError, StepReport,
};
use tch::{Kind, Tensor};

/// The forward process by name: `edm`, `ve`, `vp`, `vp-cosine`, `subvp`, or `flow` / `flow:C` /
/// `flow:mu=M`
/// (rectified flow with SD3's timestep shift C, 1 by default).
pub fn sde_from_name(name: &str) -> Result<Box<dyn Sde>> {
    if let Some(mu) = name.strip_prefix("flow:mu=") {
        // diffusers' dynamic shifting (use_dynamic_shifting, time_shift_type "exponential",
        // its sigma 1): sigma' = e^mu / (e^mu + 1 / t - 1), the shift C = e^mu.
        let m: f64 = mu.parse().map_err(|_| {
            anyhow!("invalid mu '{mu}' in SDE '{name}' (expected flow:mu=M with a number M)")
        })?;
        return Ok(Box::new(Flow::with_shift(m.exp())?));
    }
    if let Some(shift) = name.strip_prefix("flow:") {
        let c: f64 = shift.parse().map_err(|_| {
            anyhow!("invalid shift '{shift}' in SDE '{name}' (expected flow:C with a number C > 0, or flow:mu=M)")
        })?;
        return Ok(Box::new(Flow::with_shift(c)?));
    }
    Ok(match name {
        "edm" => Box::new(Edm::default()),
        "ve" => Box::new(Ve::default()),
        "vp" => Box::new(VpLinear::default()),
        "vp-cosine" => Box::new(VpCosine::default()),
        "subvp" => Box::new(SubVp::default()),
        "flow" => Box::new(Flow::default()),
        _ => bail!("unknown SDE '{name}' (known: edm, ve, vp, vp-cosine, subvp, flow, flow:SHIFT, flow:mu=MU)"),
    })
}

/// A flow SDE name's shift (`flow` 1, `flow:C` C, `flow:mu=M` e^M); None for the others.
fn flow_shift(name: &str) -> Option<f64> {
    if name == "flow" {
        return Some(1.0);
    }
    if let Some(mu) = name.strip_prefix("flow:mu=") {
        return mu.parse::<f64>().ok().map(f64::exp);
    }
    name.strip_prefix("flow:")?.parse().ok()
}

/// An SDE name written one way per process (`flow`, `flow:1.0` and `flow:mu=0` as `flow:1`),
/// for telling two configurations apart.
pub fn canonical_sde(name: &str) -> String {
    match flow_shift(name) {
        Some(c) => format!("flow:{c}"),
        None => name.to_string(),
    }
}

/// Whether two SDE names give the same process: equal names, or flows with one shift
/// (`flow`, `flow:1` and `flow:1.0`; `flow:mu=M` is the shift e^M).
pub fn same_sde(a: &str, b: &str) -> bool {
    a == b
        || match (flow_shift(a), flow_shift(b)) {
            (Some(x), Some(y)) => (x - y).abs() <= 1e-12 * x.abs().max(y.abs()),
            _ => false,
        }
}

/// `--dtype float32|float64`.
pub fn kind_from_name(name: &str) -> Result<Kind> {
    Ok(match name {
        "float32" | "f32" => Kind::Float,
        "float64" | "f64" => Kind::Double,
        _ => bail!("unknown dtype '{name}' (expected float32 or float64)"),
    })
}

/// The noise-level grid options shared by the commands.
#[derive(Args, Clone, Debug)]
pub struct GridArgs {
    /// Smallest nonzero noise level [default: 0.002; sample and bench: the lowest level of a
    /// trained network that has a range (VP, iDDPM, a discrete chain)].
    #[arg(long)]
    pub sigma_min: Option<f64>,
    /// Largest noise level, where sampling starts [default: 80; sample and bench: the highest
    /// level of a trained network that has a range].
    #[arg(long)]
    pub sigma_max: Option<f64>,
    /// Exponent of the karras and poly-t grids (7 by default) and of the poly-exponential grid
    /// (1 by default); an error with the other grids.
    #[arg(long)]
    pub rho: Option<f64>,
    /// Grid placement: karras, uniform-t, log-snr, poly-t, iddpm, poly-exponential, beta,
    /// kl-optimal, linear-quadratic, ays, ays-sdxl, ays-svd (Align Your Steps' levels for
    /// Stable Diffusion 1.x, XL and Stable Video Diffusion, stretched as ComfyUI does), or
    /// ddpm-leading, ddpm-trailing, ddpm-linspace (diffusers' timestep spacings on a discrete
    /// chain: a model card's, else DDPM's linear one), comfy-normal, comfy-sgm-uniform,
    /// comfy-simple, comfy-ddim-uniform, comfy-beta (ComfyUI's schedulers on the same chain); levels:S1,S2,... (these nonzero levels,
    /// interpolated log-linearly to other step counts); gits or oss (chosen for the model by
    /// GITS' or OSS' dynamic program, their default settings); or a .toml file whose [grid] table has a
    /// placement (what optimize-grid writes).
    #[arg(long, default_value = "karras")]
    pub grid: String,
    /// ddpm-leading: diffusers' steps_offset, added to every timestep (Stable Diffusion's is 1).
    #[arg(long)]
    pub steps_offset: Option<usize>,
    /// ComfyUI's KSampler rule for dpm_2, dpm_2_ancestral, uni_pc and uni_pc_bh2: the grid of
    /// one step more, without its last nonzero level (the last step leaves for 0 from one
    /// level higher); not with gits, oss, levels of several lists or the adaptive samplers.
    #[arg(long)]
    pub discard_penultimate: bool,
    /// Forward process: edm, ve, vp, vp-cosine, subvp, or flow (rectified flow; flow:C with SD3's
    /// timestep shift C; flow:mu=M, diffusers' dynamic shifting, is flow:exp(M)).
    #[arg(long, default_value = "edm")]
    pub sde: String,
    /// The gits placement once solved for a model ([`Self::solve_gits`]): its levels.
    #[arg(skip)]
    pub solved: Option<GridKind>,
}

/// A placement read from `--grid` text, and what a grid file's `[grid]` says beside it.
struct FromText {
    kind: GridKind,
    /// The file's `sde`, where it names one.
    sde: Option<String>,
    discard_penultimate: bool,
    /// The file's `sigma_min` and `sigma_max`, where it gives them.
    range: (Option<f64>, Option<f64>),
}

impl FromText {
    fn placement(kind: GridKind) -> Self {
        FromText {
            kind,
            sde: None,
            discard_penultimate: false,
            range: (None, None),
        }
    }
}

/// A `--grid` that is not a name: `levels:S1,S2,...`, `gits`, or a TOML file with a `[grid]`
/// table holding a `placement`.
/// A grid file's `[grid]` table is read whole (unknown keys, bad values and `sigma_min >=
/// sigma_max` are errors), and the file's `sde`, where it names one, is returned with the
/// placement: the command's `--sde` must agree with it.
fn grid_from_text(name: &str, rho: Option<f64>) -> Result<Option<FromText>> {
    let other =
        name.starts_with("levels:") || name == "gits" || name == "oss" || name.ends_with(".toml");
    if other && rho.is_some() {
        if name.ends_with(".toml") {
            bail!("--rho does not change a grid file's placement: set rho in the [grid] placement of {name}");
        }
        bail!("--rho applies to the karras, poly-t and poly-exponential grids, not {name}");
    }
    if let Some(list) = name.strip_prefix("levels:") {
        let levels = list
            .split(',')
            .map(|v| {
                v.trim()
                    .parse::<f64>()
                    .map_err(|_| anyhow::anyhow!("--grid levels: '{v}' is not a number"))
            })
            .collect::<Result<Vec<f64>>>()?;
        return Ok(Some(FromText::placement(GridKind::Levels {
            sigmas: vec![levels],
        })));
    }
    if name == "gits" {
        return Ok(Some(FromText::placement(
            GridKind::Gits(Default::default()),
        )));
    }
    if name == "oss" {
        return Ok(Some(FromText::placement(GridKind::Oss(Default::default()))));
    }
    if name.ends_with(".toml") {
        let text = std::fs::read_to_string(name)
            .map_err(|e| anyhow::anyhow!("--grid {name}: cannot read the file: {e}"))?;
        let table: toml::Table = toml::from_str(&text).map_err(|e| {
            anyhow::anyhow!(
                "--grid {name}: not valid TOML: {}",
                e.to_string().trim_end().replace('\n', " ")
            )
        })?;
        let Some(placement) = table.get("grid").and_then(|g| g.get("placement")) else {
            bail!("--grid {name}: the file has no [grid] table with a placement");
        };
        let kind: GridKind = placement.clone().try_into().map_err(|e: toml::de::Error| {
            anyhow::anyhow!(
                "--grid {name}: [grid] placement: {}",
                e.to_string().trim_end().replace('\n', " ")
            )
        })?;
        let spec: crate::experiment::GridSpec =
            table["grid"]
                .clone()
                .try_into()
                .map_err(|e: toml::de::Error| {
                    anyhow::anyhow!(
                        "--grid {name}: [grid]: {}",
                        e.to_string().trim_end().replace('\n', " ")
                    )
                })?;
        scoreflow_solvers::sde::check_sigma_range(spec.sigma_min, spec.sigma_max)
            .map_err(|e| anyhow::anyhow!("--grid {name}: [grid] {e}"))?;
        sde_from_name(&spec.sde).map_err(|e| anyhow::anyhow!("--grid {name}: [grid] {e}"))?;
        let given = |k: &str| table["grid"].get(k).is_some();
        return Ok(Some(FromText {
            kind,
            range: (
                given("sigma_min").then_some(spec.sigma_min),
                given("sigma_max").then_some(spec.sigma_max),
            ),
            sde: given("sde").then_some(spec.sde),
            discard_penultimate: spec.discard_penultimate,
        }));
    }
    Ok(None)
}

impl GridArgs {
    pub fn kind(&self) -> Result<GridKind> {
        if let Some(k) = &self.solved {
            return Ok(k.clone());
        }
        let kind = self.placement()?;
        if self.discards()? {
            grid::check_discard_penultimate(&kind)?;
        }
        Ok(kind)
    }
    /// Whether the grid drops its penultimate level: `--discard-penultimate`, or a grid file's
    /// `discard_penultimate`.
    pub fn discards(&self) -> Result<bool> {
        Ok(self.discard_penultimate
            || grid_from_text(&self.grid, self.rho)?.is_some_and(|f| f.discard_penultimate))
    }
    fn placement(&self) -> Result<GridKind> {
        if let Some(FromText {
            kind: k,
            sde: file_sde,
            ..
        }) = grid_from_text(&self.grid, self.rho)?
        {
            if let Some(file_sde) = file_sde.filter(|s| !same_sde(s, &self.sde)) {
                bail!(
                    "--grid {}: its [grid] was made under the {file_sde} SDE and this run is under {}: pass --sde {file_sde} (or leave sde out of the file to use its levels under another SDE)",
                    self.grid,
                    self.sde
                );
            }
            if self.steps_offset.is_some() {
                if self.grid.ends_with(".toml") {
                    bail!(
                        "--steps-offset does not change a grid file's placement: set steps_offset in the [grid] placement of {}",
                        self.grid
                    );
                }
                bail!(
                    "--steps-offset applies to the ddpm-leading grid, not {}",
                    self.grid
                );
            }
            match &k {
                GridKind::Gits(p) => p.validate()?,
                GridKind::Oss(p) => p.validate()?,
                _ => {}
            }
            return Ok(k);
        }
        let mut kind = GridKind::from_name(&self.grid, self.rho)?;
        if let Some(o) = self.steps_offset {
            match &mut kind {
                GridKind::Timesteps {
                    steps_offset,
                    spacing: scoreflow_solvers::grid::Spacing::Leading,
                    ..
                } => *steps_offset = o,
                _ => bail!(
                    "--steps-offset applies to the ddpm-leading grid, not {}",
                    self.grid
                ),
            }
        }
        Ok(kind)
    }
    pub fn sigmas(&self, sde: &dyn Sde, steps: usize) -> Result<Vec<f64>> {
        self.sigmas_within(sde, steps, None)
    }
    /// Whether the placement is chosen for the model, gits or oss (solved or not).
    pub fn is_chosen_for_model(&self) -> Result<bool> {
        Ok(self.solved.is_some() || self.kind()?.chosen_for_model().is_some())
    }
    /// Solve a gits or oss placement for the denoiser `den` (samples of shape `shape`) and the
    /// step counts `steps`: the teacher runs between the ends of [`Self::range`], and the chosen
    /// levels replace the placement (one list per count). Nothing for other placements.
    #[allow(clippy::too_many_arguments)]
    pub fn solve_for_model(
        &mut self,
        den: &dyn Denoiser,
        sde: &dyn Sde,
        model: Option<&crate::precond::Precond>,
        shape: &[i64],
        device: tch::Device,
        kind: Kind,
        steps: &[usize],
    ) -> Result<()> {
        let placement = self.kind()?;
        if placement.chosen_for_model().is_none() {
            return Ok(());
        }
        let (lo, hi) = self.range(model.and_then(|p| p.sigma_range()));
        let lists = model_levels(&placement, den, sde, (lo, hi), shape, device, kind, steps)?;
        self.solved = Some(GridKind::Levels { sigmas: lists });
        Ok(())
    }
    /// The ends of the grid: the flags, else a grid file's `sigma_min` and `sigma_max` where it
    /// gives them, else the model's range where it has one (the levels a VP, iDDPM or
    /// discrete-chain network was trained on), else 0.002 and 80.
    pub fn range(&self, model: Option<(f64, f64)>) -> (f64, f64) {
        let (lo, hi) = model.unwrap_or((0.002, 80.0));
        // A file that cannot be read is an error where its placement is taken ([`Self::kind`]).
        let (file_lo, file_hi) = if self.grid.ends_with(".toml") {
            grid_from_text(&self.grid, None)
                .ok()
                .flatten()
                .map_or((None, None), |f| f.range)
        } else {
            (None, None)
        };
        (
            self.sigma_min.or(file_lo).unwrap_or(lo),
            self.sigma_max.or(file_hi).unwrap_or(hi),
        )
    }
    /// [`Self::sigmas`] for a trained network's preconditioning: the ends of [`Self::range`]
    /// with its noise range, and the `ddpm-*` grids on its chain where it has one (a model
    /// card's `discrete` preconditioning).
    pub fn sigmas_within(
        &self,
        sde: &dyn Sde,
        steps: usize,
        model: Option<&crate::precond::Precond>,
    ) -> Result<Vec<f64>> {
        let (lo, hi) = self.range(model.and_then(|p| p.sigma_range()));
        let mut kind = self.kind()?;
        if let (
            GridKind::Timesteps {
                schedule,
                beta_start,
                beta_end,
                timesteps,
                ..
            },
            Some(crate::precond::Precond::Discrete {
                schedule: s,
                beta_start: b0,
                beta_end: b1,
                timesteps: t,
                ..
            }),
        ) = (&mut kind, model)
        {
            (*schedule, *beta_start, *beta_end, *timesteps) = (*s, *b0, *b1, *t);
        }
        Ok(if self.discards()? {
            grid::sigmas_discarding_penultimate(&kind, steps, lo, hi, sde)?
        } else {
            grid::sigmas(&kind, steps, lo, hi, sde)?
        })
    }
}

/// Sampler parameters; each applies only to the samplers that have it.
#[derive(Args, Clone, Debug, Default)]
pub struct SamplerArgs {
    /// ddim, euler-ancestral, dpm2-ancestral, dpmpp-2s-ancestral, dpmpp-sde, dpmpp-2m-sde,
    /// dpmpp-3m-sde, dpm-solver, dpm-adaptive, dpm-fast, res-multistep, seeds-2, seeds-3,
    /// euler-ancestral-cfgpp, res-multistep-cfgpp, dpmpp-2s-ancestral-cfgpp and the -rf
    /// ancestral samplers (in [0, 1]): noise fraction (0 = deterministic).
    #[arg(long)]
    pub eta: Option<f64>,
    /// euler, heun, heunpp2, dpm2, edm-stochastic, edm-ablation, restart: EDM's S_churn (0 = no churn).
    #[arg(long)]
    pub s_churn: Option<f64>,
    /// euler, heun, heunpp2, dpm2, edm-stochastic, edm-ablation, restart: S_tmin (no churn
    /// below it);
    /// sa-solver, sa-solver-comfy: no noise (tau = 0) below it.
    #[arg(long)]
    pub s_tmin: Option<f64>,
    /// euler, heun, heunpp2, dpm2, edm-stochastic, edm-ablation, restart: S_tmax (no churn
    /// above it);
    /// sa-solver, sa-solver-comfy: no noise (tau = 0) above it.
    #[arg(long)]
    pub s_tmax: Option<f64>,
    /// The samplers that take --s-churn, and those that take --eta except ddim: S_noise; er-sde,
    /// sa-solver-comfy: the factor of its noise.
    #[arg(long)]
    pub s_noise: Option<f64>,
    /// pc: signal-to-noise ratio of the Langevin corrector.
    #[arg(long)]
    pub snr: Option<f64>,
    /// pc: corrector steps per level.
    #[arg(long)]
    pub corrector_steps: Option<usize>,
    /// ddpm: reverse variance, small (posterior), large (beta) or learned (the network's
    /// learned variance output: a card with learned_sigmas).
    #[arg(long)]
    pub variance: Option<String>,
    /// lms, unipc, ipndm, deis-tab: order (1 to 4); deis, dpm-solver, dpm-singlestep, dpm-multistep, er-sde:
    /// order (1 to 3);
    /// dpm-adaptive: 2 or 3.
    #[arg(long)]
    pub order: Option<usize>,
    /// dpmpp-2m-sde, dpm-singlestep, dpm-multistep: form of the second-order correction,
    /// midpoint or heun;
    /// unipc: B(h), bh1 or bh2; edm-ablation: euler or heun (edm's solver); seeds-2: phi_1 or
    /// phi_2.
    #[arg(long)]
    pub solver_type: Option<String>,
    /// unipc: apply the UniC corrector (true or false); pc: the corrector, langevin, ald
    /// (annealed Langevin dynamics) or none.
    #[arg(long)]
    pub corrector: Option<String>,
    /// pc: the predictor, reverse-diffusion, ancestral-sampling, euler-maruyama or none.
    #[arg(long)]
    pub predictor: Option<String>,
    /// dpm-singlestep, dpm-multistep: dpmsolver++ (data prediction, DPM-Solver++), dpmsolver
    /// (noise) or sde-dpmsolver++ (DPM-Solver++ on the SDE, fresh noise every step);
    /// dpm-multistep also sde-dpmsolver (DPM-Solver on the SDE).
    #[arg(long)]
    pub algorithm_type: Option<String>,
    /// pndm: start with one trapezoidal step instead of three pseudo Runge-Kutta steps (PLMS,
    /// true or false; diffusers' skip_prk_steps).
    #[arg(long)]
    pub skip_prk_steps: Option<bool>,
    /// dpm-multistep: lower the order of the last two steps on grids of fewer than 15 steps
    /// (true or false; diffusers' lower_order_final, true by default).
    #[arg(long)]
    pub lower_order_final: Option<bool>,
    /// dpmpp-sde, seeds-2: position of the intermediate level in each step, a fraction of the
    /// step in log sigma, in (0, 1] (k-diffusion's r; 1/2 by default).
    #[arg(long)]
    pub r: Option<f64>,
    /// seeds-3: position of the first intermediate level, a fraction of the step in log sigma,
    /// in (0, 1) (1/3 by default).
    #[arg(long = "r-1")]
    pub r_1: Option<f64>,
    /// seeds-3: position of the second intermediate level, in (r_1, 1] (2/3 by default).
    #[arg(long = "r-2")]
    pub r_2: Option<f64>,
    /// edm-ablation: position of the second evaluation, a fraction of the step, in (0, 1]
    /// (EDM's generalized second-order step; 1 is Heun).
    #[arg(long)]
    pub alpha: Option<f64>,
    /// edm-ablation: the ODE's time variable, linear (sigma = t), vp, ve (sigma = sqrt t) or flow
    /// (sigma = t / (1 - t), rectified flow's time).
    #[arg(long)]
    pub schedule: Option<String>,
    /// edm-ablation: the scaling s(t) of x, none, vp (1 / sqrt(1 + sigma^2)) or flow
    /// (1 / (1 + sigma)).
    #[arg(long)]
    pub scaling: Option<String>,
    /// edm-ablation: the time of the last nonzero level under the vp schedule.
    #[arg(long)]
    pub epsilon_s: Option<f64>,
    /// restart: the restart segments, a TOML array of [N, K, t_min, t_max] (the paper's
    /// restart_info): K restarts from the grid level nearest t_min up to t_max, each back down
    /// in N - 1 Heun steps, e.g. '[[3,2,0.06,0.3]]' (the default) or '[]' (none).
    #[arg(long)]
    pub segments: Option<String>,
    /// restart: the churn of every restart step within [s_tmin, s_tmax] (0.05 by default).
    #[arg(long)]
    pub restart_gamma: Option<f64>,
    /// sa-solver, sa-solver-comfy: order of the stochastic Adams-Bashforth predictor (1 to 4).
    #[arg(long)]
    pub predictor_order: Option<usize>,
    /// sa-solver, sa-solver-comfy: order of the stochastic Adams-Moulton corrector (1 to 4).
    #[arg(long)]
    pub corrector_order: Option<usize>,
    /// sa-solver, sa-solver-comfy: stochasticity within [s_tmin, s_tmax] (0: the
    /// probability-flow ODE, 1: the reverse SDE; 1 by default).
    #[arg(long)]
    pub tau: Option<f64>,
    /// er-sde: the noise-scale function, 1 to 7 (the ER-SDE authors' numbering: 1 the ODE,
    /// 2 the reverse SDE, 7 sigma (exp(sigma^0.3) + 10), the default).
    #[arg(long)]
    pub func_type: Option<u32>,
    /// er-sde: points of the Riemann sums of its integrals (100 by default; ComfyUI uses 200).
    #[arg(long)]
    pub points: Option<usize>,
    /// gradient-estimation, gradient-estimation-cfgpp: the weight of the current noise estimate against the previous one
    /// (Permenter & Yuan's gamma; 2 by default, 1 is euler).
    #[arg(long)]
    pub ge_gamma: Option<f64>,
    /// tcd: the fraction of the next level's time skipped back before fresh noise is added, in
    /// [0, 1] (0: DDIM, 1: lcm; diffusers' eta, 0.3 by default); bdia: the weight of the
    /// backward step's gap, in (0, 1] (1 by default).
    #[arg(long)]
    pub gamma: Option<f64>,
    /// edict: the weight p of its mixing layers, in (0, 1) (0.93 by default).
    #[arg(long)]
    pub mix_weight: Option<f64>,
    /// dpm-adaptive, rk45: relative tolerance of the step-size control.
    #[arg(long)]
    pub rtol: Option<f64>,
    /// dpm-adaptive, rk45: absolute tolerance of the step-size control.
    #[arg(long)]
    pub atol: Option<f64>,
    /// dpm-adaptive: first step size, in log sigma.
    #[arg(long)]
    pub h_init: Option<f64>,
    /// dpm-adaptive: proportional coefficient of the PID step-size controller.
    #[arg(long)]
    pub pcoeff: Option<f64>,
    /// dpm-adaptive: integral coefficient of the PID step-size controller.
    #[arg(long)]
    pub icoeff: Option<f64>,
    /// dpm-adaptive: derivative coefficient of the PID step-size controller.
    #[arg(long)]
    pub dcoeff: Option<f64>,
    /// dpm-adaptive: smallest step factor that accepts a step.
    #[arg(long)]
    pub accept_safety: Option<f64>,
}

impl SamplerArgs {
    /// EDM's churn flags (`--s-churn`, `--s-tmin`, `--s-tmax`, `--s-noise`) onto a sampler's
    /// four churn fields, for [`set_flags`].
    fn churn_flags<'a>(
        &self,
        s_churn: &'a mut f64,
        s_tmin: &'a mut f64,
        s_tmax: &'a mut f64,
        s_noise: &'a mut f64,
    ) -> [(&'static str, Option<f64>, &'a mut f64); 4] {
        [
            ("s-churn", self.s_churn, s_churn),
            ("s-tmin", self.s_tmin, s_tmin),
            ("s-tmax", self.s_tmax, s_tmax),
            ("s-noise", self.s_noise, s_noise),
        ]
    }

    /// `--predictor-order` and `--corrector-order` onto an SA-Solver's orders.
    fn set_orders(
        &self,
        used: &mut Vec<&'static str>,
        predictor: &mut usize,
        corrector: &mut usize,
    ) {
        if let Some(v) = self.predictor_order {
            *predictor = v;
            used.push("predictor-order");
        }
        if let Some(v) = self.corrector_order {
            *corrector = v;
            used.push("corrector-order");
        }
    }

    /// The sampler `name` (or `name(key=value,...)`, see [`parse_sampler`]) with these
    /// parameters applied on top; a parameter the sampler does not have is an error.
    pub fn spec(&self, name: &str) -> Result<SamplerSpec> {
        let mut spec = parse_sampler(name)?;
        let mut used = Vec::new();
        if let Some((eta, s_noise)) = spec.eta_s_noise_mut() {
            set_flags(
                &mut used,
                [("eta", self.eta, eta), ("s-noise", self.s_noise, s_noise)],
            );
        }
        match &mut spec {
            SamplerSpec::Ddim { eta } => {
                if let Some(v) = self.eta {
                    *eta = v;
                    used.push("eta");
                }
            }
            SamplerSpec::Tcd { gamma } | SamplerSpec::Bdia { gamma } => {
                set_flags(&mut used, [("gamma", self.gamma, gamma)])
            }
            SamplerSpec::Edict { mix_weight, .. } => {
                set_flags(&mut used, [("mix-weight", self.mix_weight, mix_weight)])
            }
            SamplerSpec::GradientEstimation { ge_gamma }
            | SamplerSpec::GradientEstimationCfgPp { ge_gamma } => {
                set_flags(&mut used, [("ge-gamma", self.ge_gamma, ge_gamma)])
            }
            SamplerSpec::ErSde(p) => {
                set_flags(&mut used, [("s-noise", self.s_noise, &mut p.s_noise)]);
                if let Some(v) = self.order {
                    p.order = v;
                    used.push("order");
                }
                if let Some(v) = self.func_type {
                    p.func_type = v;
                    used.push("func-type");
                }
                if let Some(v) = self.points {
                    p.points = v;
                    used.push("points");
                }
            }
            SamplerSpec::Euler(c)
            | SamplerSpec::Heun(c)
            | SamplerSpec::EdmStochastic(c)
            | SamplerSpec::Heunpp2(c)
            | SamplerSpec::Dpm2(c) => {
                set_flags(
                    &mut used,
                    self.churn_flags(&mut c.s_churn, &mut c.s_tmin, &mut c.s_tmax, &mut c.s_noise),
                );
            }
            SamplerSpec::Pc {
                snr,
                corrector_steps,
                predictor,
                corrector,
            } => {
                if let Some(v) = self.snr {
                    *snr = v;
                    used.push("snr");
                }
                if let Some(v) = self.corrector_steps {
                    *corrector_steps = v;
                    used.push("corrector-steps");
                }
                if let Some(v) = &self.predictor {
                    *predictor = v.parse()?;
                    used.push("predictor");
                }
                if let Some(v) = &self.corrector {
                    *corrector = v.parse()?;
                    used.push("corrector");
                }
            }
            SamplerSpec::Ddpm { variance } => {
                if let Some(v) = &self.variance {
                    *variance = v.parse::<DdpmVariance>()?;
                    used.push("variance");
                }
            }
            SamplerSpec::DpmSolver {
                order,
                eta,
                s_noise,
            } => {
                if let Some(v) = self.order {
                    *order = v;
                    used.push("order");
                }
                set_flags(
                    &mut used,
                    [("eta", self.eta, eta), ("s-noise", self.s_noise, s_noise)],
                );
            }
            SamplerSpec::DpmAdaptive(p) => {
                if let Some(v) = self.order {
                    p.order = v;
                    used.push("order");
                }
                set_flags(
                    &mut used,
                    [
                        ("rtol", self.rtol, &mut p.rtol),
                        ("atol", self.atol, &mut p.atol),
                        ("h-init", self.h_init, &mut p.h_init),
                        ("pcoeff", self.pcoeff, &mut p.pcoeff),
                        ("icoeff", self.icoeff, &mut p.icoeff),
                        ("dcoeff", self.dcoeff, &mut p.dcoeff),
                        ("accept-safety", self.accept_safety, &mut p.accept_safety),
                        ("eta", self.eta, &mut p.eta),
                        ("s-noise", self.s_noise, &mut p.s_noise),
                    ],
                );
            }
            SamplerSpec::EdmAblation(p) => {
                set_flags(
                    &mut used,
                    [
                        ("alpha", self.alpha, &mut p.alpha),
                        ("epsilon-s", self.epsilon_s, &mut p.epsilon_s),
                    ],
                );
                set_flags(
                    &mut used,
                    self.churn_flags(&mut p.s_churn, &mut p.s_tmin, &mut p.s_tmax, &mut p.s_noise),
                );
                if let Some(v) = &self.solver_type {
                    p.solver_type = v.parse()?;
                    used.push("solver-type");
                }
                if let Some(v) = &self.schedule {
                    p.schedule = v.parse()?;
                    used.push("schedule");
                }
                if let Some(v) = &self.scaling {
                    p.scaling = v.parse()?;
                    used.push("scaling");
                }
            }
            SamplerSpec::Restart(p) => {
                set_flags(
                    &mut used,
                    [("restart-gamma", self.restart_gamma, &mut p.restart_gamma)],
                );
                set_flags(
                    &mut used,
                    self.churn_flags(&mut p.s_churn, &mut p.s_tmin, &mut p.s_tmax, &mut p.s_noise),
                );
                if let Some(v) = &self.segments {
                    p.segments = parse_segments(v)?;
                    used.push("segments");
                }
            }
            SamplerSpec::SaSolver(p) => {
                set_flags(
                    &mut used,
                    [
                        ("tau", self.tau, &mut p.tau),
                        ("s-tmin", self.s_tmin, &mut p.s_tmin),
                        ("s-tmax", self.s_tmax, &mut p.s_tmax),
                    ],
                );
                self.set_orders(&mut used, &mut p.predictor_order, &mut p.corrector_order);
            }
            SamplerSpec::SaSolverComfy(p) => {
                set_flags(
                    &mut used,
                    [
                        ("tau", self.tau, &mut p.tau),
                        ("s-tmin", self.s_tmin, &mut p.s_tmin),
                        ("s-tmax", self.s_tmax, &mut p.s_tmax),
                        ("s-noise", self.s_noise, &mut p.s_noise),
                    ],
                );
                self.set_orders(&mut used, &mut p.predictor_order, &mut p.corrector_order);
            }
            SamplerSpec::Rk45(p) => {
                set_flags(
                    &mut used,
                    [
                        ("rtol", self.rtol, &mut p.rtol),
                        ("atol", self.atol, &mut p.atol),
                    ],
                );
            }
            SamplerSpec::Lms { order }
            | SamplerSpec::Deis { order }
            | SamplerSpec::DeisTab { order }
            | SamplerSpec::Ipndm { order, .. } => {
                if let Some(v) = self.order {
                    *order = v;
                    used.push("order");
                }
            }
            SamplerSpec::UniPc {
                order,
                solver_type,
                corrector,
            } => {
                if let Some(v) = self.order {
                    *order = v;
                    used.push("order");
                }
                if let Some(v) = &self.solver_type {
                    *solver_type = v.parse::<UniPcVariant>()?;
                    used.push("solver-type");
                }
                if let Some(v) = &self.corrector {
                    *corrector = v
                        .parse()
                        .map_err(|_| anyhow!("unipc's --corrector is true or false, not '{v}'"))?;
                    used.push("corrector");
                }
            }
            SamplerSpec::DpmSinglestep {
                order,
                algorithm_type,
                solver_type,
            }
            | SamplerSpec::DpmMultistep {
                order,
                algorithm_type,
                solver_type,
                ..
            } => {
                if let Some(v) = self.order {
                    *order = v;
                    used.push("order");
                }
                if let Some(v) = &self.algorithm_type {
                    *algorithm_type = v.parse::<AlgorithmType>()?;
                    used.push("algorithm-type");
                }
                if let Some(v) = &self.solver_type {
                    *solver_type = v.parse::<SolverType>()?;
                    used.push("solver-type");
                }
            }
            SamplerSpec::Pndm { skip_prk_steps } => {
                if let Some(v) = self.skip_prk_steps {
                    *skip_prk_steps = v;
                    used.push("skip-prk-steps");
                }
            }
            _ => {}
        }
        if let (
            SamplerSpec::DpmMultistep {
                lower_order_final, ..
            },
            Some(v),
        ) = (&mut spec, self.lower_order_final)
        {
            *lower_order_final = v;
            used.push("lower-order-final");
        }
        if let (SamplerSpec::DpmPpSde { r, .. } | SamplerSpec::Seeds2 { r, .. }, Some(v)) =
            (&mut spec, self.r)
        {
            *r = v;
            used.push("r");
        }
        if let SamplerSpec::Seeds2 { solver_type, .. } = &mut spec {
            if let Some(v) = &self.solver_type {
                *solver_type = v.parse::<scoreflow_solvers::samplers::SeedsSolverType>()?;
                used.push("solver-type");
            }
        }
        if let SamplerSpec::Seeds3 { r_1, r_2, .. } = &mut spec {
            set_flags(&mut used, [("r-1", self.r_1, r_1), ("r-2", self.r_2, r_2)]);
        }
        if let (SamplerSpec::DpmPp2MSde { solver_type, .. }, Some(v)) =
            (&mut spec, &self.solver_type)
        {
            *solver_type = v.parse::<SolverType>()?;
            used.push("solver-type");
        }
        let given = [
            ("eta", self.eta.is_some()),
            ("s-churn", self.s_churn.is_some()),
            ("s-tmin", self.s_tmin.is_some()),
            ("s-tmax", self.s_tmax.is_some()),
            ("s-noise", self.s_noise.is_some()),
            ("snr", self.snr.is_some()),
            ("corrector-steps", self.corrector_steps.is_some()),
            ("variance", self.variance.is_some()),
            ("order", self.order.is_some()),
            ("solver-type", self.solver_type.is_some()),
            ("corrector", self.corrector.is_some()),
            ("predictor", self.predictor.is_some()),
            ("skip-prk-steps", self.skip_prk_steps.is_some()),
            ("lower-order-final", self.lower_order_final.is_some()),
            ("algorithm-type", self.algorithm_type.is_some()),
            ("rtol", self.rtol.is_some()),
            ("atol", self.atol.is_some()),
            ("h-init", self.h_init.is_some()),
            ("pcoeff", self.pcoeff.is_some()),
            ("icoeff", self.icoeff.is_some()),
            ("dcoeff", self.dcoeff.is_some()),
            ("accept-safety", self.accept_safety.is_some()),
            ("r", self.r.is_some()),
            ("r-1", self.r_1.is_some()),
            ("r-2", self.r_2.is_some()),
            ("alpha", self.alpha.is_some()),
            ("schedule", self.schedule.is_some()),
            ("scaling", self.scaling.is_some()),
            ("epsilon-s", self.epsilon_s.is_some()),
            ("segments", self.segments.is_some()),
            ("restart-gamma", self.restart_gamma.is_some()),
            ("predictor-order", self.predictor_order.is_some()),
            ("corrector-order", self.corrector_order.is_some()),
            ("tau", self.tau.is_some()),
            ("gamma", self.gamma.is_some()),
            ("mix-weight", self.mix_weight.is_some()),
            ("ge-gamma", self.ge_gamma.is_some()),
            ("func-type", self.func_type.is_some()),
            ("points", self.points.is_some()),
        ];
        for (flag, present) in given {
            if present && !used.contains(&flag) {
                bail!("--{flag} does not apply to the {name} sampler");
            }
        }
        spec.build()?; // validate the values now, before any work
        Ok(spec)
    }
}

/// Each `(flag, value, field)` whose flag was given: the value into the field, the flag into
/// `used`.
fn set_flags<const N: usize>(
    used: &mut Vec<&'static str>,
    flags: [(&'static str, Option<f64>, &mut f64); N],
) {
    for (flag, value, field) in flags {
        if let Some(v) = value {
            *field = v;
            used.push(flag);
        }
    }
}

/// `--segments`: a TOML array of `[N, K, t_min, t_max]`.
fn parse_segments(v: &str) -> Result<Vec<restart::Segment>> {
    #[derive(serde::Deserialize)]
    struct S {
        v: Vec<restart::Segment>,
    }
    toml::from_str::<S>(&format!("v = {v}"))
        .map(|s| s.v)
        .map_err(|e| {
            anyhow!(
                "--segments '{v}': write a TOML array of [N, K, t_min, t_max], e.g. [[3,2,0.06,0.3]] ({})",
                e.message().trim_end().replace('\n', " ")
            )
        })
}

/// Run `spec` from standard normals `z` (`[N, d]`, on the target device and kind): the start is
/// `sigma_max z`; stochastic samplers draw from per-sample Brownian paths of `seed`, with sample
/// indices starting at `first`.
#[allow(clippy::too_many_arguments)]
pub fn run_from_noise(
    spec: &SamplerSpec,
    den: &dyn Denoiser,
    sde: &dyn Sde,
    sigmas: &[f64],
    z: &Tensor,
    seed: u64,
    first: u64,
    observer: &mut dyn FnMut(&StepReport, &Tensor),
) -> Result<(Tensor, usize)> {
    run_from_noise_with(
        spec,
        den,
        sde,
        sigmas,
        z,
        seed,
        first,
        &RunOptions::default(),
        observer,
    )
}

/// [`run_from_noise`] with the driver's options (the analytical first step, `afs`).
#[allow(clippy::too_many_arguments)]
pub fn run_from_noise_with(
    spec: &SamplerSpec,
    den: &dyn Denoiser,
    sde: &dyn Sde,
    sigmas: &[f64],
    z: &Tensor,
    seed: u64,
    first: u64,
    options: &RunOptions,
    observer: &mut dyn FnMut(&StepReport, &Tensor),
) -> Result<(Tensor, usize)> {
    let out = run_latents(
        spec, den, sde, sigmas, z, None, seed, first, options, observer,
    )?;
    Ok((out.x, out.nfe))
}

/// The `roundtrip` measure of a run: `spec` run back up its grid `sigmas` from its samples `x`
/// (with the companion an exact-inversion sampler's run left), and the RMS distance over
/// samples between the noise recovered and the noise `z` the samples came from, in units of the
/// noise. None where the sampler does not invert, on a one-step grid, and for an
/// exact-inversion run whose first step, the one undone last, was the analytical first step
/// (`afs`). The inversion's evaluations are not counted in the run's NFE.
#[allow(clippy::too_many_arguments)]
pub fn roundtrip_rms(
    spec: &SamplerSpec,
    den: &dyn Denoiser,
    sde: &dyn Sde,
    sigmas: &[f64],
    x: &Tensor,
    companion: Option<&Tensor>,
    z: &Tensor,
    seed: u64,
    afs: bool,
) -> Result<Option<f64>> {
    if sigmas.len() < 3 {
        return Ok(None);
    }
    let sampler = spec.build()?;
    let undoes = if sampler.invertible() {
        true
    } else {
        companion.is_some()
            && !(afs
                && sampler
                    .exact_inverse()
                    .is_some_and(|e| e.first_undone() == 0))
    };
    if !undoes {
        return Ok(None);
    }
    let companion = if sampler.invertible() {
        None
    } else {
        companion
    };
    let (back, _, _) = invert_to_noise(spec, den, sde, sigmas, x, companion, seed)?;
    Ok(Some(crate::metrics::rms_distance(&back, z)))
}

/// What [`run_latents`] returns: the samples, the evaluations, and for an exact-inversion
/// sampler the samples' companion (what [`invert_to_noise`] takes to invert them exactly).
pub struct Sampled {
    pub x: Tensor,
    pub nfe: usize,
    pub companion: Option<Tensor>,
}

/// [`run_from_noise_with`] from standard-normal latents `z`, or from an exact-inversion
/// sampler's latent pair (`companion`, in the same units: divided by `sigmas[0]`, as
/// [`invert_to_noise`] writes it).
#[allow(clippy::too_many_arguments)]
pub fn run_latents(
    spec: &SamplerSpec,
    den: &dyn Denoiser,
    sde: &dyn Sde,
    sigmas: &[f64],
    z: &Tensor,
    companion: Option<&Tensor>,
    seed: u64,
    first: u64,
    options: &RunOptions,
    observer: &mut dyn FnMut(&StepReport, &Tensor),
) -> Result<Sampled> {
    let size = z.size();
    let span = sigmas[0].max(sde.time_of(sigmas[0])).max(sde.t_range().1) * 1.001 + 1e-3;
    let mut noise = BrownianNoise::new(
        seed,
        first,
        size[0] as usize,
        &size[1..],
        span,
        z.device(),
        z.kind(),
    );
    let sampler = spec.build()?;
    let out = match companion {
        None => run(
            sampler.as_ref(),
            den,
            sde,
            sigmas,
            z * sigmas[0],
            &mut noise,
            options,
            observer,
        ),
        Some(c) => scoreflow_solvers::run_from_pair(
            sampler.as_ref(),
            den,
            sde,
            sigmas,
            z * sigmas[0],
            c * sigmas[0],
            &mut noise,
            options,
            observer,
        ),
    }
    .map_err(|e| match e {
        SolverError::NonFinite { .. } => match spec_parameters(spec) {
            p if p.is_empty() => anyhow!(
                "{e}: the model's output or the sampler diverged (sampler {})",
                spec.name()
            ),
            p => anyhow!(
                "{e}: the model's output or the sampler diverged (sampler {} with {p})",
                spec.name()
            ),
        },
        e => e.into(),
    })?;
    Ok(Sampled {
        x: out.x,
        nfe: out.nfe,
        companion: out.companion,
    })
}

/// The levels an inversion walks up: the sampling grid `sigmas` (ending in 0) without its 0,
/// from the lowest level to the highest, so that sampling from the latents on `sigmas` walks the
/// same levels back down (and then takes its final step to 0).
pub fn inversion_levels(sigmas: &[f64]) -> Result<Vec<f64>> {
    if sigmas.len() < 3 {
        bail!("inversion needs --steps >= 2 (the levels above 0 of the sampling grid of --steps steps, one step fewer)");
    }
    Ok(sigmas[..sigmas.len() - 1].iter().rev().copied().collect())
}

/// Invert sampling: run `spec` up the levels of the sampling grid `sigmas` from the data `x0`
/// (taken as the points at the lowest level) with [`scoreflow_solvers::invert`]. Returns the
/// standard-normal latents `x(sigma_max) / sigma_max` that sampling on `sigmas` starts from,
/// and the NFE. An exact-inversion sampler (edict, bdia, belm) instead undoes its steps down the
/// whole grid with [`scoreflow_solvers::invert_exact`], from the data and `companion` (what its
/// sampling run left, [`Sampled::companion`]; `None` for data alone), and also returns the
/// latents' companion, divided by `sigma_max` as the latents are: [`run_latents`] takes the
/// pair back to the data.
pub fn invert_to_noise(
    spec: &SamplerSpec,
    den: &dyn Denoiser,
    sde: &dyn Sde,
    sigmas: &[f64],
    x0: &Tensor,
    companion: Option<&Tensor>,
    seed: u64,
) -> Result<(Tensor, Option<Tensor>, usize)> {
    let sampler = spec.build()?;
    let exact = sampler.exact_inverse().is_some();
    if companion.is_some() && !exact {
        bail!(
            "sampler {} has no exact inversion to take a companion",
            spec.name()
        );
    }
    // The top level, where the latents are; inversion draws no noise (the source is there for
    // the driver's signature).
    let top = sigmas[0];
    let size = x0.size();
    let mut noise = BrownianNoise::new(
        seed,
        0,
        size[0] as usize,
        &size[1..],
        top * 1.001 + 1e-3,
        x0.device(),
        x0.kind(),
    );
    let (x, opts, none) = (
        x0.shallow_clone(),
        RunOptions::default(),
        &mut |_: &_, _: &_| {},
    );
    let out = if exact {
        scoreflow_solvers::invert_exact(
            sampler.as_ref(),
            den,
            sde,
            sigmas,
            x,
            companion.map(Tensor::shallow_clone),
            &mut noise,
            &opts,
            none,
        )
    } else {
        let up = inversion_levels(sigmas)?;
        scoreflow_solvers::invert(sampler.as_ref(), den, sde, &up, x, &mut noise, &opts, none)
    }
    .map_err(|e| match e {
        SolverError::NonFinite { .. } => anyhow!(
            "{e}: the model's output or the inversion diverged (sampler {})",
            spec.name()
        ),
        e => e.into(),
    })?;
    Ok((out.x / top, out.companion.map(|c| c / top), out.nfe))
}

/// A sampler's parameters as `name = value, ...` (the spec's fields, as a config writes them),
/// named in a non-finite-values error: a noise scale far above 1 (`eta = 1e308`) overflows in
/// the step rather than being refused up front.
pub fn spec_parameters(spec: &SamplerSpec) -> String {
    let Ok(serde_json::Value::Object(map)) = serde_json::to_value(spec) else {
        return String::new();
    };
    map.iter()
        .filter(|(k, _)| k.as_str() != "kind")
        .map(|(k, v)| match v {
            serde_json::Value::Null => format!("{k} = inf"),
            v => format!("{k} = {v}"),
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// Standard-normal starting noise: `n` samples of dimension `d` from per-sample generators.
pub fn initial_noise(
    seed: u64,
    n: usize,
    d: usize,
    device: tch::Device,
    kind: Kind,
) -> Result<Tensor> {
    initial_noise_shaped(seed, n, &[d as i64], device, kind)
}

/// The most numbers a batch of samples may hold (2^32; a mistyped count becomes this error,
/// not an allocation failure).
pub const MAX_ELEMENTS: u128 = 1 << 32;

/// Standard-normal starting noise of per-sample shape `shape` (`[d]` or `[C, H, W]`).
pub fn initial_noise_shaped(
    seed: u64,
    n: usize,
    shape: &[i64],
    device: tch::Device,
    kind: Kind,
) -> Result<Tensor> {
    check_batch_size(n, shape)?;
    Ok(BrownianNoise::new(seed, 0, n, shape, 1.0, device, kind).initial())
}

/// A batch of `n` samples of `shape` holds at most [`MAX_ELEMENTS`] numbers.
pub fn check_batch_size(n: usize, shape: &[i64]) -> Result<()> {
    let numel: u128 = shape.iter().map(|&d| d.max(0) as u128).product();
    if n as u128 * numel > MAX_ELEMENTS {
        bail!(
            "{n} samples of shape {shape:?} are more than {MAX_ELEMENTS} numbers; draw fewer at a time"
        );
    }
    Ok(())
}

/// A sampler written as its table label: `name` (the defaults) or `name(key=value,...)` with
/// the keys of its `[[samplers]]` entry (`edm-ablation(schedule=vp,scaling=vp)`,
/// `dpm-adaptive(rtol=0.01,atol=0.001)`). A value is read as TOML (`0.5`, `true`, `1e-3`) and
/// otherwise as a string (`vp`), arrays included (`restart(segments=[[3,2,0.06,0.3]])`); the labels' short churn keys (`churn`, `tmin`, `tmax`,
/// `noise`) stand for `s_churn`, ... where the sampler has those. One sampler: a list of values
/// (a sweep, [`parse_sampler_sweep`]) is an error here.
pub fn parse_sampler(item: &str) -> Result<SamplerSpec> {
    let mut specs = parse_sampler_sweep(item)?;
    if specs.len() != 1 {
        bail!(
            "sampler '{}': a list of values sweeps a parameter, which only a list of samplers takes; give one value",
            item.trim()
        );
    }
    Ok(specs.remove(0))
}

/// [`parse_sampler`] where a list of values for a parameter (`euler-ancestral(eta=[0,0.5])`) is
/// one sampler per value, as in an experiment's `[[samplers]]` table ([`sweep_tables`]).
pub fn parse_sampler_sweep(item: &str) -> Result<Vec<SamplerSpec>> {
    let item = item.trim();
    let (name, params) = match item.split_once('(') {
        None => (item, ""),
        Some((name, rest)) => match rest.strip_suffix(')') {
            Some(p) if !p.contains(['(', ')']) => (name.trim(), p),
            _ => bail!("sampler '{item}': write name(key=value,...) with one pair of parentheses"),
        },
    };
    if item.contains(')') && params.is_empty() && !item.ends_with("()") {
        bail!("sampler '{item}': write name(key=value,...) with one pair of parentheses");
    }
    let default = SamplerSpec::from_name(name)?;
    if params.trim().is_empty() {
        return Ok(vec![default]);
    }
    let known = match serde_json::to_value(&default)? {
        serde_json::Value::Object(m) => m.keys().cloned().collect::<Vec<_>>(),
        _ => Vec::new(),
    };
    let mut table = toml::Table::new();
    table.insert("kind".into(), toml::Value::String(name.into()));
    for pair in split_top_level(params) {
        let Some((k, v)) = pair.split_once('=') else {
            bail!("sampler '{item}': '{}' is not key=value", pair.trim());
        };
        let (k, v) = (k.trim(), v.trim());
        if k.is_empty() || v.is_empty() {
            bail!("sampler '{item}': '{}' is not key=value", pair.trim());
        }
        let long = format!("s_{k}");
        let key = if !known.iter().any(|n| n == k) && known.contains(&long) {
            long
        } else {
            k.to_string()
        };
        let value = toml::from_str::<toml::Table>(&format!("v = {v}"))
            .ok()
            .and_then(|mut t| t.remove("v"))
            .unwrap_or_else(|| toml::Value::String(v.to_string()));
        if table.insert(key.clone(), value).is_some() {
            bail!("sampler '{item}': {key} is given twice");
        }
    }
    let tables = sweep_tables(&table)
        .map_err(|e| anyhow!("sampler '{item}': {e}"))?
        .unwrap_or_else(|| vec![table]);
    tables
        .into_iter()
        .map(|t| {
            let spec: SamplerSpec =
                toml::Value::Table(t)
                    .try_into()
                    .map_err(|e: toml::de::Error| {
                        anyhow!(
                            "sampler '{item}': {}",
                            e.message().trim_end().replace('\n', " ")
                        )
                    })?;
            spec.build().map_err(|e| anyhow!("sampler '{item}': {e}"))?;
            Ok(spec)
        })
        .collect()
}

/// A sampler table (`kind` and parameters) that gives a list of values for a parameter
/// (`eta = [0, 0.5, 1]`), written as one table per value, in the list's order; for several such
/// keys every combination, the keys in alphabetical order, the first varying slowest. `None`
/// where the table has no such list, or reads as a sampler as it stands (a parameter that takes
/// a list). A list of lists or tables is never a sweep (`restart`'s `segments`).
pub fn sweep_tables(t: &toml::Table) -> Result<Option<Vec<toml::Table>>> {
    use toml::Value;
    let lists: Vec<(&String, &Vec<Value>)> = t
        .iter()
        .filter_map(|(k, v)| match v {
            Value::Array(a) if !a.iter().any(|x| x.is_array() || x.is_table()) => Some((k, a)),
            _ => None,
        })
        .collect();
    if lists.is_empty() || Value::Table(t.clone()).try_into::<SamplerSpec>().is_ok() {
        return Ok(None);
    }
    if let Some((k, _)) = lists.iter().find(|(_, vals)| vals.is_empty()) {
        bail!("{k} = [] lists no values");
    }
    let mut tables = vec![t.clone()];
    for (k, vals) in lists {
        tables = tables
            .iter()
            .flat_map(|base| {
                vals.iter().map(move |v| {
                    let mut one = base.clone();
                    one.insert(k.clone(), v.clone());
                    one
                })
            })
            .collect();
    }
    Ok(Some(tables))
}

/// `params` split at the commas outside TOML arrays and inline tables (`[...]`, `{...}`).
fn split_top_level(params: &str) -> Vec<&str> {
    let (mut depth, mut start, mut out) = (0i32, 0usize, Vec::new());
    for (i, c) in params.char_indices() {
        match c {
            '[' | '{' => depth += 1,
            ']' | '}' => depth -= 1,
            ',' if depth == 0 => {
                out.push(&params[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push(&params[start..]);
    out
}

/// A comma-separated list of [`parse_sampler`] items (commas inside parentheses belong to the
/// item).
/// The first entry of `v` that repeats an earlier one.
pub fn repeated<T: PartialEq>(v: &[T]) -> Option<&T> {
    v.iter()
        .enumerate()
        .find(|(i, x)| v[..*i].contains(x))
        .map(|(_, x)| x)
}

/// A CFG++ sampler on a model without classifier-free guidance is its plain counterpart (the
/// unconditional estimate is `D` itself): say so on stderr, naming what turns guidance on.
pub fn note_cfgpp_without_guidance(spec: &SamplerSpec, guidance: &str) {
    if spec.name().contains("-cfgpp") {
        let plain = spec.name().replacen("-cfgpp", "", 1);
        eprintln!(
            "note: {} renoises with the unconditional branch of a guided model; without guidance ({guidance}) it is {plain}",
            spec.name()
        );
    }
}

/// Refuse a list of samplers that names one twice (defaults spelled out or not): it would
/// repeat rows of a table.
pub fn no_repeated_samplers(specs: &[SamplerSpec], what: &str) -> Result<()> {
    let labels: Vec<String> = specs.iter().map(crate::experiment::label).collect();
    if let Some(d) = repeated(&labels) {
        bail!("{what} lists {d} twice");
    }
    Ok(())
}

pub fn parse_samplers(list: &str, what: &str) -> Result<Vec<SamplerSpec>> {
    let mut items = Vec::new();
    let (mut depth, mut start) = (0i32, 0usize);
    for (i, c) in list.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                items.push(&list[start..i]);
                start = i + 1;
            }
            _ => {}
        }
        if !(0..=1).contains(&depth) {
            bail!("{what} list '{list}' has unbalanced parentheses");
        }
    }
    if depth != 0 {
        bail!("{what} list '{list}' has unbalanced parentheses");
    }
    items.push(&list[start..]);
    if items.iter().any(|v| v.trim().is_empty()) {
        bail!("{what} list '{list}' has an empty item");
    }
    let mut specs = Vec::new();
    for item in items {
        specs.extend(parse_sampler_sweep(item)?);
    }
    Ok(specs)
}

/// Levels as a short comma-separated list (three significant digits).
pub fn format_levels(levels: &[f64]) -> String {
    let v: Vec<String> = levels.iter().map(|&x| crate::summary::fmt3(x)).collect();
    v.join(", ")
}

/// Solve a gits or oss placement for `den` between the ends `(lo, hi)` and return the nonzero
/// levels of each step count in `steps`, reporting them and the teacher's time on stderr (what
/// `sample`, `compare` and `run` share).
#[allow(clippy::too_many_arguments)]
pub fn model_levels(
    placement: &GridKind,
    den: &dyn Denoiser,
    sde: &dyn Sde,
    (lo, hi): (f64, f64),
    shape: &[i64],
    device: tch::Device,
    kind: Kind,
    steps: &[usize],
) -> Result<Vec<Vec<f64>>> {
    let t = std::time::Instant::now();
    let (name, teacher, teacher_steps, samples, paths) = match placement {
        GridKind::Gits(p) => {
            let solved = p.solve(den, sde, lo, hi, shape, device, kind)?;
            let paths = steps
                .iter()
                .map(|&n| solved.sigmas(n).map_err(anyhow::Error::from))
                .collect::<Result<Vec<_>>>()?;
            ("gits", &p.teacher, p.teacher_steps, p.samples, paths)
        }
        GridKind::Oss(p) => {
            let max = steps.iter().copied().max().unwrap_or(1);
            let solved = p.solve(den, sde, lo, hi, shape, device, kind, max)?;
            let paths = steps
                .iter()
                .map(|&n| oss_levels(&solved, n))
                .collect::<Result<Vec<_>>>()?;
            ("oss", &p.teacher, p.teacher_steps, p.samples, paths)
        }
        _ => bail!("the {placement:?} placement is not chosen for a model"),
    };
    eprintln!(
        "{name}: teacher {} on {teacher_steps} steps, {samples} warm-up samples, {:.1} s",
        crate::experiment::label(teacher),
        t.elapsed().as_secs_f64()
    );
    steps
        .iter()
        .zip(paths)
        .map(|(&n, mut levels)| {
            levels.pop();
            eprintln!("{name}: {n} steps: {}", format_levels(&levels));
            Ok(levels)
        })
        .collect()
}

/// The OSS grid of `n` steps (its levels, ending in 0), or an error where a level repeats (the
/// search kept a path of fewer steps: no `n`-step grid does better).
pub fn oss_levels(solved: &scoreflow_solvers::oss::Oss, n: usize) -> Result<Vec<f64>> {
    let levels = solved.sigmas(n)?;
    if levels.len() != n + 1 {
        bail!(
            "oss: the {n}-step grid repeats a level: for this model no {n}-step path along the teacher beats its {}-step one; ask for at most {} steps or give a finer teacher grid",
            levels.len() - 1,
            levels.len() - 1
        );
    }
    Ok(levels)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sde_names_are_compared_as_processes() {
        for (a, b) in [
            ("vp", "vp"),
            ("flow", "flow:1"),
            ("flow:3", "flow:3.0"),
            ("flow:1", "flow:mu=0"),
            ("flow:mu=1.5", &format!("flow:{}", 1.5f64.exp())),
        ] {
            assert!(same_sde(a, b) && same_sde(b, a), "{a} {b}");
        }
        for (a, b) in [
            ("vp", "ve"),
            ("flow", "flow:3"),
            ("flow:x", "flow:1"),
            ("edm", "flow"),
        ] {
            assert!(!same_sde(a, b), "{a} {b}");
        }
    }

    #[test]
    fn an_oss_grid_that_repeats_a_level_is_an_error_naming_the_steps_it_reaches() {
        // One sample whose best 2-step path to the end kept its 1-step one: the trace back is
        // 0, 0, 3 (a step of length 0 at the top).
        let solved = scoreflow_solvers::oss::Oss {
            teacher_sigmas: vec![3.0, 2.0, 1.0, 0.0],
            from: vec![vec![vec![0, 0, 0, 0], vec![0, 0, 1, 0]]],
        };
        assert_eq!(solved.path(2).unwrap(), vec![0, 0, 3]);
        assert_eq!(solved.sigmas(2).unwrap(), vec![3.0, 0.0]);
        let e = oss_levels(&solved, 2).unwrap_err().to_string();
        assert!(
            e.contains("2-step grid repeats a level") && e.contains("at most 1 steps"),
            "{e}"
        );
        assert_eq!(oss_levels(&solved, 1).unwrap(), vec![3.0, 0.0]);
    }
}
