//! `scoreflow run EXPERIMENT.toml`: a grid of samplers x step counts (or NFE budgets) x seeds on
//! one model, each cell measured against exact references, appended to `results.jsonl` as it
//! finishes (a rerun skips finished cells), then `results.csv` and the plots.
//! `scoreflow plot OUT_DIR` redraws the plots from `results.jsonl` alone.

use crate::job;
use crate::metrics::{median_distance, mmd, sliced_w2};
use crate::model::{self, ExactModel};
use crate::plot::{self, Panel, Scatter, Series};
use crate::{compare, device, npy, train};
use anyhow::{anyhow, bail, Context, Result};
use scoreflow_solvers::sde::BetaSchedule;
use scoreflow_solvers::{grid, Denoiser, GaussianMixture, GridKind, SamplerSpec, Sde};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;
use tch::{Device, Kind, Tensor};

fn auto() -> String {
    "auto".into()
}
fn f64s() -> String {
    "float64".into()
}
fn d_num() -> usize {
    2048
}
fn d_seeds() -> Vec<u64> {
    vec![0]
}
fn d_ref() -> f64 {
    1e-7
}
fn d_sigma_min() -> f64 {
    0.002
}
fn d_sigma_max() -> f64 {
    80.0
}
fn edm() -> String {
    "edm".into()
}

/// The experiment file.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExperimentConfig {
    /// Folder for results.jsonl, results.csv and the plots.
    pub out_dir: PathBuf,
    #[serde(default = "auto")]
    pub device: String,
    /// float32 or float64.
    #[serde(default = "f64s")]
    pub dtype: String,
    /// Samples per cell (one batch).
    #[serde(default = "d_num")]
    pub num: usize,
    /// One starting noise per seed, shared by every cell of that seed.
    #[serde(default = "d_seeds")]
    pub seeds: Vec<u64>,
    /// Step counts; or give `nfe` budgets instead (each sampler then takes the most steps whose
    /// NFE fits the budget).
    #[serde(default)]
    pub steps: Vec<usize>,
    #[serde(default)]
    pub nfe: Vec<usize>,
    pub model: ModelSpec,
    #[serde(default)]
    pub grid: GridSpec,
    /// Several grids instead of `[grid]` (`[[grids]]` tables): a sweep axis, every sampler runs
    /// on each, its lines tagged with the grid's name (`ipndm @ gits`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub grids: Vec<GridSpec>,
    pub samplers: Vec<SamplerSpec>,
    pub metrics: Vec<Metric>,
    /// Tolerance of the adaptive reference ODE solve (Dormand-Prince 5(4)) where no exact flow
    /// is known. Use about 1e-4 with float32.
    #[serde(default = "d_ref")]
    pub reference_tol: f64,
    /// Clip every denoised estimate to [-R, R] (diffusers' `clip_sample`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clip_denoised: Option<f64>,
    /// `[ratio, max]`: dynamic thresholding of every denoised estimate (Saharia et al. 2022).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "two_numbers"
    )]
    pub dynamic_threshold: Option<[f64; 2]>,
    /// The analytical first step (AFS, Zhou et al. 2024) in every cell: the first evaluation,
    /// at the grid's top level, is replaced by `x / sqrt(1 + sigma^2)` as the ODE's derivative.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub afs: bool,
}

/// An optional `[a, b]` that must have two numbers (serde reads a fixed-size array from the
/// first elements of a longer TOML array and drops the rest).
fn two_numbers<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> std::result::Result<Option<[f64; 2]>, D::Error> {
    match Option::<Vec<f64>>::deserialize(d)? {
        None => Ok(None),
        Some(v) if v.len() == 2 => Ok(Some([v[0], v[1]])),
        Some(v) => Err(serde::de::Error::invalid_length(
            v.len(),
            &"an array of length 2, [ratio, max]",
        )),
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case", deny_unknown_fields)]
pub enum ModelSpec {
    /// `name = "gmm8"`.
    Builtin {
        name: String,
    },
    Mixture {
        path: PathBuf,
    },
    Gaussian {
        path: PathBuf,
    },
    /// A trained network; with `train_config`, it is trained first if the file is missing. A
    /// model card (`.toml`, a TorchScript module; see docs/models.md) works the same way. A
    /// class-conditional one samples unconditionally unless `conditional = true` (sample `i` of
    /// class `i mod K`), then with classifier-free guidance `guidance` (1: none; a list of
    /// weights is a sweep axis), applied only within `guidance_interval = [lo, hi]` where given.
    Checkpoint {
        path: PathBuf,
        train_config: Option<PathBuf>,
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        conditional: bool,
        /// A network with a discrete preconditioning: feed it the nearest step of its chain
        /// ([`crate::card::quantize_time`]).
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        quantize: bool,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        guidance: Option<Guidance>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        guidance_interval: Option<[f64; 2]>,
    },
}

/// `[model] guidance`: one weight, or a list of them, a sweep axis (every sampler at each
/// weight, its lines tagged `w=W`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(untagged, expecting = "guidance: a number or a list of numbers")]
pub enum Guidance {
    One(f64),
    Axis(Vec<f64>),
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GridSpec {
    /// The grid's tag in labels under `[[grids]]` (default: the placement's kind and its
    /// non-default parameters). Not part of the cells' keys.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default)]
    pub placement: GridKind,
    #[serde(default = "d_sigma_min")]
    pub sigma_min: f64,
    #[serde(default = "d_sigma_max")]
    pub sigma_max: f64,
    #[serde(default = "edm")]
    pub sde: String,
    /// ComfyUI's KSampler rule for dpm_2, dpm_2_ancestral, uni_pc and uni_pc_bh2
    /// ([`grid::sigmas_discarding_penultimate`]): the grid of one step more without its last
    /// nonzero level. Left out of the cells' keys when false.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub discard_penultimate: bool,
    /// SDEdit (Meng et al. 2022), image to image: every cell starts from a second fresh data
    /// set noised to a level partway down the grid, diffusers' `strength` (of the grid of n
    /// steps the last floor(n strength) run) or ComfyUI's `denoise` (the grid of floor(n /
    /// denoise) steps, of which the last n run), as `sample --init`. Left out of the cells'
    /// keys when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub strength: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub denoise: Option<f64>,
    /// A gits placement's levels once solved for the model (one list per step count); not part
    /// of the config (nor of the cells' keys).
    #[serde(skip)]
    pub solved: Option<GridKind>,
}

impl Default for GridSpec {
    fn default() -> Self {
        GridSpec {
            name: None,
            placement: GridKind::default(),
            sigma_min: 0.002,
            sigma_max: 80.0,
            sde: "edm".into(),
            discard_penultimate: false,
            strength: None,
            denoise: None,
            solved: None,
        }
    }
}

impl GridSpec {
    /// The noise levels of a run of `steps` steps (ending in 0).
    fn sigmas(&self, steps: usize, sde: &dyn Sde) -> Result<Vec<f64>> {
        let kind = self.solved.as_ref().unwrap_or(&self.placement);
        let partial = self.partial();
        let n = match partial {
            Some(p) => p.grid_steps(steps)?,
            None => steps,
        };
        let sigmas = if self.discard_penultimate {
            grid::sigmas_discarding_penultimate(kind, n, self.sigma_min, self.sigma_max, sde)
        } else {
            grid::sigmas(kind, n, self.sigma_min, self.sigma_max, sde)
        };
        // Under denoise the grid built is longer than the step count asked for: say so.
        let sigmas = sigmas.map_err(|e| match partial {
            Some(p) if n != steps => {
                let (name, v) = p.name_value();
                anyhow!(
                    "{e} ({name} {} at {steps} steps takes the tail of the grid of {n} steps)",
                    scoreflow_solvers::Num(v)
                )
            }
            _ => e.into(),
        })?;
        Ok(match partial {
            Some(p) => p.tail(&sigmas, steps)?,
            None => sigmas,
        })
    }

    /// The placement's `kind` as configs write it (`karras`, `levels`, `gits`, ...).
    pub fn kind_name(&self) -> String {
        serde_json::to_value(&self.placement)
            .ok()
            .and_then(|v| v["kind"].as_str().map(str::to_string))
            .unwrap_or_else(|| "grid".into())
    }

    /// SDEdit's `strength` or `denoise`, where the grid has one.
    pub fn partial(&self) -> Option<grid::Partial> {
        match (self.strength, self.denoise) {
            (Some(s), _) => Some(grid::Partial::Strength(s)),
            (None, Some(d)) => Some(grid::Partial::Denoise(d)),
            (None, None) => None,
        }
    }

    /// The placement's name in tables: `name` where given, else its kind and the parameters
    /// that differ from the kind's defaults (`karras(rho=5)`, `gits(coeff=1,metric=l2)`; a
    /// teacher by its name, lists left out).
    pub fn tag(&self) -> String {
        if let Some(n) = &self.name {
            return n.clone();
        }
        let v = serde_json::to_value(&self.placement).unwrap_or(Value::Null);
        let kind = self.kind_name();
        // A key is at its default where the placement without it reads back the same (a
        // required key, such as a timesteps grid's spacing, does not read back without it).
        let at_default = |k: &str| -> bool {
            let mut without = v.clone();
            if let Value::Object(m) = &mut without {
                m.remove(k);
            }
            serde_json::from_value::<GridKind>(without)
                .ok()
                .and_then(|d| serde_json::to_value(d).ok())
                .is_some_and(|d| d.get(k) == v.get(k))
        };
        let mut parts = Vec::new();
        if let Value::Object(m) = &v {
            for (k, val) in m {
                if k == "kind" || at_default(k) {
                    continue;
                }
                let text = match val {
                    Value::Array(_) => continue,
                    Value::Object(o) => match o.get("kind").and_then(Value::as_str) {
                        Some(t) => t.to_string(),
                        None => continue,
                    },
                    Value::String(t) => t.clone(),
                    Value::Number(n) => match n.as_f64() {
                        Some(f) if f.fract() == 0.0 && f.abs() < 1e15 => format!("{}", f as i64),
                        _ => n.to_string(),
                    },
                    other => other.to_string(),
                };
                parts.push(format!("{k}={text}"));
            }
        }
        if self.discard_penultimate {
            parts.push("discard_penultimate".into());
        }
        if let Some(p) = self.partial() {
            let (name, v) = p.name_value();
            parts.push(format!("{name}={v}"));
        }
        if parts.is_empty() {
            kind
        } else {
            format!("{kind}({})", parts.join(","))
        }
    }

    /// The grid with what does not change its levels left out: the name, and comfy-beta's
    /// shape where it is the default (0.6, 0.6).
    fn canonical(&self) -> GridSpec {
        let mut g = self.clone();
        g.name = None;
        g.solved = None;
        g.sde = job::canonical_sde(&g.sde);
        // Strength 1 and denoise above 0.9999 both run the whole grid from the data.
        if g.strength == Some(1.0) || g.denoise.is_some_and(|d| d > 0.9999 && d <= 1.0) {
            (g.strength, g.denoise) = (Some(1.0), None);
        }
        if let GridKind::Timesteps { alpha, beta, .. } = &mut g.placement {
            for v in [alpha, beta] {
                if *v == Some(0.6) {
                    *v = None;
                }
            }
        }
        g
    }

    /// Whether each step count may have its own ends (the timesteps, levels and gits
    /// placements): no range for the adaptive samplers.
    pub fn ends_move(&self) -> bool {
        // A discarded penultimate level moves the last level with the step count, SDEdit's
        // strength and denoise the first.
        self.discard_penultimate
            || self.partial().is_some()
            || matches!(
                self.placement,
                GridKind::Timesteps { .. }
                    | GridKind::Levels { .. }
                    | GridKind::Ays { .. }
                    | GridKind::LinearQuadratic { .. }
                    | GridKind::Gits(_)
                    | GridKind::Oss(_)
            )
    }
}

/// What is measured in each cell.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, PartialOrd, Ord)]
#[serde(rename_all = "kebab-case")]
pub enum Metric {
    /// RMS over samples of the distance to the reference ODE solution from the same noise.
    Rms,
    /// Largest distance to the reference solution.
    Max,
    /// Sliced Wasserstein-2 distance to fresh data (256 directions).
    Sw2,
    /// MMD to fresh data (Gaussian kernel, median-distance bandwidth).
    Mmd,
    /// Mixtures: total variation between sample and true mode weights.
    ModeTv,
    /// Mixtures: fraction of modes holding at least half their weight.
    ModeCoverage,
    /// Images with class labels (a checkpoint trained on labelled images): Fréchet distance
    /// on the features of a classifier trained on the training data (as `eval-digits`).
    Fd,
    /// Samplers that invert ([`scoreflow_solvers::Sampler::invertible`]): RMS over samples of
    /// the distance between the starting noise and the noise recovered by running the same
    /// sampler back up the same grid from the samples (`sample --invert`), in units of the noise.
    Roundtrip,
    /// Grids with `strength` or `denoise` (SDEdit): RMS over samples of the distance between
    /// each sample and the input it started from, SDEdit's faithfulness (Meng et al. 2022 use
    /// the L2 distance to the input).
    InputDistance,
    /// Class-conditional sampling (`[model] conditional = true`) of a checkpoint trained on
    /// labelled images: the fraction of samples that the classifier of `fd` assigns to the class
    /// they were sampled for (sample `i` of class `i mod K`). Higher is better: guidance trades
    /// Fréchet distance for it.
    ClassAccuracy,
}

impl Metric {
    /// Every metric, in the order of results.csv's columns and of the summary's sections.
    pub const ALL: [Metric; 10] = [
        Metric::Rms,
        Metric::Max,
        Metric::Sw2,
        Metric::Mmd,
        Metric::Fd,
        Metric::ModeTv,
        Metric::ModeCoverage,
        Metric::ClassAccuracy,
        Metric::Roundtrip,
        Metric::InputDistance,
    ];
    pub fn name(&self) -> &'static str {
        match self {
            Metric::Rms => "rms",
            Metric::Max => "max",
            Metric::Sw2 => "sw2",
            Metric::Mmd => "mmd",
            Metric::ModeTv => "mode-tv",
            Metric::ModeCoverage => "mode-coverage",
            Metric::Fd => "fd",
            Metric::Roundtrip => "roundtrip",
            Metric::InputDistance => "input-distance",
            Metric::ClassAccuracy => "class-accuracy",
        }
    }
    /// Metrics against the ODE solution only make sense for deterministic samplers.
    fn needs_deterministic(&self) -> bool {
        matches!(self, Metric::Rms | Metric::Max)
    }
}

/// One cell of an experiment.
#[derive(Clone, Copy)]
struct Cell<'a> {
    /// Index into [`ExperimentConfig::grid_list`].
    grid: usize,
    /// Index into [`ExperimentConfig::model_list`] (the guidance weights).
    model: usize,
    seed: u64,
    spec: &'a SamplerSpec,
    steps: usize,
}

/// A sampler's label in tables: its name and any non-default parameters.
pub fn label(spec: &SamplerSpec) -> String {
    label_without(spec, &[])
}

/// A curve of the quality-vs-NFE plot: the label without an adaptive sampler's tolerances, so
/// that its runs at several tolerances form one curve.
pub fn series(spec: &SamplerSpec) -> String {
    if spec.is_adaptive() {
        label_without(spec, &["rtol", "atol"])
    } else {
        label(spec)
    }
}

fn series_of(r: &Value) -> String {
    if let Some(s) = r["series"].as_str() {
        return s.to_string();
    }
    serde_json::from_value::<SamplerSpec>(r["params"].clone())
        .map(|s| series(&s))
        .unwrap_or_else(|_| r["label"].as_str().unwrap_or("").to_string())
}

fn label_without(spec: &SamplerSpec, skip: &[&str]) -> String {
    let default = SamplerSpec::from_name(spec.name()).ok();
    if default.as_ref() == Some(spec) {
        return spec.name().to_string();
    }
    let v = serde_json::to_value(spec).unwrap_or(Value::Null);
    let d = default
        .map(|d| serde_json::to_value(d).unwrap_or(Value::Null))
        .unwrap_or(Value::Null);
    let mut parts = Vec::new();
    if let Value::Object(m) = &v {
        for (k, val) in m {
            if k != "kind" && !skip.contains(&k.as_str()) && d.get(k) != Some(val) {
                let v = match val.as_f64() {
                    Some(f) if f.fract() == 0.0 && f.abs() < 1e15 => format!("{}", f as i64),
                    Some(f) => format!("{f}"),
                    // JSON has no infinity: serde_json writes it as null. Every parameter is
                    // validated finite or +inf (an s_tmax, say), so null is inf.
                    None if val.is_null() => "inf".to_string(),
                    None => val.to_string().trim_matches('"').to_string(),
                };
                parts.push(format!("{}={v}", k.trim_start_matches("s_")));
            }
        }
    }
    if parts.is_empty() {
        return spec.name().to_string();
    }
    format!("{}({})", spec.name(), parts.join(","))
}

impl ExperimentConfig {
    /// The grids the samplers run on: the `[[grids]]`, else `[grid]`.
    pub fn grid_list(&self) -> &[GridSpec] {
        if self.grids.is_empty() {
            std::slice::from_ref(&self.grid)
        } else {
            &self.grids
        }
    }

    fn grid_list_mut(&mut self) -> &mut [GridSpec] {
        if self.grids.is_empty() {
            std::slice::from_mut(&mut self.grid)
        } else {
            &mut self.grids
        }
    }

    /// The model once per guidance weight of a `guidance = [...]` axis (each with that one
    /// weight; none for an empty list), else the model.
    pub fn model_list(&self) -> Vec<ModelSpec> {
        match &self.model {
            ModelSpec::Checkpoint {
                guidance: Some(Guidance::Axis(ws)),
                ..
            } => ws
                .iter()
                .map(|&w| {
                    let mut m = self.model.clone();
                    if let ModelSpec::Checkpoint { guidance, .. } = &mut m {
                        *guidance = Some(Guidance::One(w));
                    }
                    m
                })
                .collect(),
            m => vec![m.clone()],
        }
    }

    /// The weights of a guidance axis (empty without one).
    fn weight_axis(&self) -> &[f64] {
        match &self.model {
            ModelSpec::Checkpoint {
                guidance: Some(Guidance::Axis(ws)),
                ..
            } => ws,
            _ => &[],
        }
    }

    /// Every cell: grid, guidance weight, seed, sampler, steps.
    fn cells(&self) -> Vec<Cell<'_>> {
        let models = self.model_list().len();
        let mut v = Vec::new();
        for &seed in &self.seeds {
            for grid in 0..self.grid_list().len() {
                for model in 0..models {
                    for spec in &self.samplers {
                        for steps in self.steps_for(spec) {
                            v.push(Cell {
                                grid,
                                model,
                                seed,
                                spec,
                                steps,
                            });
                        }
                    }
                }
            }
        }
        v
    }

    /// The keys of every cell, as written in results.jsonl.
    pub fn cell_keys(&self) -> HashSet<String> {
        let models = self.model_list();
        self.cells()
            .iter()
            .map(|c| cell_key(self, &models, c))
            .collect()
    }

    /// Each cell's key, with its label and (where the cell is tagged) its plot series.
    fn cell_names(&self) -> HashMap<String, (String, Option<String>)> {
        let models = self.model_list();
        let tags = self.grids.len() > 1 || self.weight_axis().len() > 1;
        self.cells()
            .iter()
            .map(|c| {
                let series = tags.then(|| self.tagged(c.grid, c.model, series(c.spec)));
                (
                    cell_key(self, &models, c),
                    (self.cell_label(c.grid, c.model, c.spec), series),
                )
            })
            .collect()
    }

    /// A cell's label in tables: the sampler's, tagged with the grid's under `[[grids]]` and
    /// with the weight on a guidance axis.
    fn cell_label(&self, g: usize, m: usize, spec: &SamplerSpec) -> String {
        self.tagged(g, m, label(spec))
    }

    /// Every line's label, in the table's order: by sampler, then grid, then weight.
    fn labels(&self) -> Vec<String> {
        let models = self.model_list().len();
        let grids = self.grid_list().len();
        let mut v = Vec::new();
        for s in &self.samplers {
            for g in 0..grids {
                for m in 0..models {
                    v.push(self.cell_label(g, m, s));
                }
            }
        }
        v
    }

    /// The metrics the summary does not rank by budget, each with why: every one where a grid
    /// starts from data (SDEdit: the start moves with the grid and step count), else rms/max
    /// under the timesteps placement (measured between each step count's own ends).
    fn unranked(&self) -> Vec<(&'static str, &'static str)> {
        let grids = self.grid_list();
        if grids.iter().any(|g| g.partial().is_some()) {
            Metric::ALL
                .iter()
                .map(|m| (m.name(), crate::summary::FROM_DATA))
                .collect()
        } else if grids
            .iter()
            .any(|g| matches!(g.placement, GridKind::Timesteps { .. }))
        {
            vec![
                ("rms", crate::summary::OWN_ENDS),
                ("max", crate::summary::OWN_ENDS),
            ]
        } else {
            Vec::new()
        }
    }

    fn tagged(&self, g: usize, m: usize, text: String) -> String {
        let text = if self.grids.len() > 1 {
            format!("{text} @ {}", self.grids[g].tag())
        } else {
            text
        };
        match self.weight_axis() {
            ws if ws.len() > 1 => format!("{text} @ w={}", ws[m]),
            _ => text,
        }
    }

    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read experiment {}", path.display()))?;
        let failed = |e: &dyn std::fmt::Display| {
            anyhow!(
                "{}: {}",
                path.display(),
                e.to_string().trim_end().replace('\n', " ")
            )
        };
        let cfg: ExperimentConfig = match toml::from_str(&text) {
            Ok(cfg) => cfg,
            // A [[samplers]] table with a list of values for a parameter: one sampler per value.
            Err(e) => match expand_sampler_sweeps(&text).map_err(|e| failed(&e))? {
                Some(table) => toml::Value::Table(table)
                    .try_into()
                    .map_err(|e: toml::de::Error| failed(&e.message()))?,
                None => return Err(failed(&e)),
            },
        };
        // A [grid] equal to the default cannot be told from none once read: ask the text.
        if let Ok(table) = toml::from_str::<toml::Table>(&text) {
            if table.contains_key("grid") && table.contains_key("grids") {
                bail!(
                    "{}: give one grid as [grid] or several as [[grids]], not both",
                    path.display()
                );
            }
        }
        cfg.validate()?;
        Ok(cfg)
    }

    /// The limit on the denoised estimate (`clip_denoised` or `dynamic_threshold`), checked.
    pub fn threshold(&self) -> Result<Option<scoreflow_solvers::Threshold>> {
        Ok(scoreflow_solvers::Threshold::from_options(
            self.clip_denoised,
            self.dynamic_threshold.map(|[ratio, max]| (ratio, max)),
        )?)
    }

    /// Everything that can be checked before any work.
    pub fn validate(&self) -> Result<()> {
        if self.samplers.is_empty() {
            bail!("the experiment lists no samplers");
        }
        let models = self.model_list();
        if models.is_empty() {
            bail!("[model] guidance = [] lists no weights");
        }
        for m in &models {
            guidance_settings(m)?;
        }
        let ws = self.weight_axis();
        if let Some(w) = job::repeated(ws) {
            bail!("[model] guidance lists the weight {w} twice");
        }
        if ws.len() > 1
            && self
                .grid_list()
                .iter()
                .any(|g| g.placement.chosen_for_model().is_some())
        {
            bail!("a gits or oss grid is solved for one denoiser: with several guidance weights give each weight's levels as a levels placement (scoreflow optimize-grid --guidance W) or run one file per weight");
        }
        self.threshold()?;
        if self.metrics.is_empty() {
            bail!("the experiment lists no metrics");
        }
        if self.seeds.is_empty() || self.num == 0 {
            bail!("seeds must not be empty and num must be at least 1");
        }
        match (self.steps.is_empty(), self.nfe.is_empty()) {
            (true, true) => bail!("give steps = [...] or nfe = [...]"),
            (false, false) => bail!("give steps or nfe, not both"),
            _ => {}
        }
        if self.steps.contains(&0) {
            bail!("steps must be at least 1");
        }
        if self.out_dir.as_os_str().is_empty() {
            bail!("out_dir must not be empty");
        }
        // The timesteps placement fixes each step count's levels to a chain's steps, whose ends
        // move with the step count (leading starts lower, trailing stops higher): no range for
        // the adaptive samplers. (rms/max take a reference between each step count's own ends.)
        // So do the levels and gits placements.
        if !self.grids.is_empty() && self.grid != GridSpec::default() {
            bail!("give one grid as [grid] or several as [[grids]], not both");
        }
        for g in self.grid_list().iter().filter(|g| g.ends_move()) {
            if let Some(s) = self.samplers.iter().find(|s| s.is_adaptive()) {
                if g.discard_penultimate {
                    bail!(
                        "the adaptive sampler {} chooses its own steps between the grid's ends; a grid that discards its penultimate level ends higher at each step count: use it without discard_penultimate",
                        s.name()
                    );
                }
                if let Some(p) = g.partial() {
                    bail!(
                        "the adaptive sampler {} chooses its own steps between the grid's ends; a grid with {} starts partway down at each step count: use a fixed-step sampler",
                        s.name(),
                        p.name_value().0
                    );
                }
                bail!(
                    "the adaptive sampler {} chooses its own steps; the {} placement has no range for it",
                    s.name(),
                    g.kind_name()
                );
            }
        }
        // Each grid's lines are told apart by its tag.
        if self
            .grid_list()
            .iter()
            .any(|g| g.name.as_deref() == Some(""))
        {
            bail!("a grid's name must not be empty");
        }
        if let Some(n) = self
            .grid_list()
            .iter()
            .filter_map(|g| g.name.as_deref())
            .find(|n| n.chars().any(|c| c.is_control() || c == '"'))
        {
            bail!("the grid name {n:?} has a quote or a control character (a line break, a tab), which results.csv and summary.md cannot hold");
        }
        let tags: Vec<String> = self.grids.iter().map(GridSpec::tag).collect();
        // The same grid written two ways (another name, comfy-beta's shape at its default)
        // would run the same cells twice.
        let same: Vec<GridSpec> = self.grids.iter().map(GridSpec::canonical).collect();
        if let Some(i) = same
            .iter()
            .enumerate()
            .find(|(i, g)| same[..*i].contains(g))
            .map(|(i, _)| i)
        {
            bail!("grids lists the grid {} twice", self.grids[i].tag());
        }
        if let Some(t) = job::repeated(&tags) {
            bail!("two of the grids are tagged {t}: give each a name of its own (name = \"...\" in its [[grids]] table)");
        }
        // A repeated entry would run the same cells twice and count them twice in the means.
        use job::repeated;
        for (what, dup) in [
            ("seeds", repeated(&self.seeds).map(|d| format!("{d}"))),
            ("steps", repeated(&self.steps).map(|d| format!("{d}"))),
            ("nfe", repeated(&self.nfe).map(|d| format!("{d}"))),
            ("samplers", repeated(&self.samplers).map(label)),
            (
                "metrics",
                repeated(&self.metrics).map(|m| m.name().to_string()),
            ),
        ] {
            if let Some(d) = dup {
                bail!("{what} lists {d} twice");
            }
        }
        for s in &self.samplers {
            s.build()?;
            let Some(one) = s.nfe(1) else { continue };
            for &b in &self.nfe {
                if one > b {
                    bail!(
                        "NFE budget {b} is below the {} sampler's cost of one step ({one})",
                        s.name(),
                    );
                }
            }
        }
        for g in self.grid_list() {
            let sde = job::sde_from_name(&g.sde)?;
            if g.discard_penultimate {
                grid::check_discard_penultimate(&g.placement)?;
            }
            if let Some(p) = g.partial() {
                let name = p.name_value().0;
                if g.strength.is_some() && g.denoise.is_some() {
                    bail!("a grid gives strength (diffusers') or denoise (ComfyUI's), not both");
                }
                if matches!(
                    g.placement,
                    GridKind::Gits(_) | GridKind::Oss(_) | GridKind::Levels { .. }
                ) {
                    bail!(
                        "{name} takes the tail of a longer grid; the {} placement gives the levels of each step count itself: use a formula placement (karras, ays, timesteps, ...)",
                        g.kind_name()
                    );
                }
                if self.afs {
                    bail!("afs replaces the first evaluation by the estimate for pure noise; a grid with {name} starts from noised data: use one or the other");
                }
                if g.strength.is_some() && !self.nfe.is_empty() {
                    bail!("strength runs floor(n x strength) of n steps, which NFE budgets do not pick: give steps = [...] (or use denoise, which runs n)");
                }
            }
            // Solved for the model when the run starts; its teacher grid is checked here.
            let teacher = match &g.placement {
                GridKind::Gits(p) => {
                    p.validate()?;
                    p.teacher_sigmas(g.sigma_min, g.sigma_max, sde.as_ref())?;
                    Some(("gits", p.teacher_steps))
                }
                GridKind::Oss(p) => {
                    p.validate()?;
                    p.teacher_sigmas(g.sigma_min, g.sigma_max, sde.as_ref())?;
                    Some(("oss", p.teacher_steps))
                }
                _ => None,
            };
            if let Some((name, teacher_steps)) = teacher {
                if let Some(&n) = self.all_steps().iter().find(|&&n| n > teacher_steps) {
                    bail!(
                        "{name} chooses {n} steps from a teacher grid of {teacher_steps} steps: give teacher_steps at least {n}"
                    );
                }
            } else {
                for n in self.all_steps() {
                    g.sigmas(n, sde.as_ref())?;
                }
            }
        }
        job::kind_from_name(&self.dtype)?;
        device::parse(&self.device)?;
        if !(self.reference_tol > 0.0 && self.reference_tol < 1.0) {
            bail!(
                "reference_tol must be in (0, 1), got {}",
                self.reference_tol
            );
        }
        let mixture = matches!(
            self.model,
            ModelSpec::Builtin { .. } | ModelSpec::Mixture { .. }
        );
        for m in &self.metrics {
            if matches!(m, Metric::ModeTv | Metric::ModeCoverage) && !mixture {
                bail!("metric {} needs a mixture model", m.name());
            }
            if *m == Metric::Fd && !matches!(self.model, ModelSpec::Checkpoint { .. }) {
                bail!("metric fd needs a checkpoint trained on labelled images");
            }
            if *m == Metric::ClassAccuracy
                && !matches!(
                    self.model,
                    ModelSpec::Checkpoint {
                        conditional: true,
                        ..
                    }
                )
            {
                bail!("metric class-accuracy needs class-conditional sampling ([model] kind = \"checkpoint\" with conditional = true) of a network trained on labelled images");
            }
            if *m == Metric::InputDistance
                && !self.grid_list().iter().any(|g| g.partial().is_some())
            {
                bail!("metric input-distance needs a grid that starts from data (strength or denoise in [grid] or a [[grids]] table)");
            }
        }
        match &self.model {
            ModelSpec::Builtin { name } if name != "gmm8" => {
                bail!("unknown built-in model '{name}' (known: gmm8)")
            }
            ModelSpec::Mixture { path } | ModelSpec::Gaussian { path } if !path.exists() => {
                bail!("model file {} does not exist", path.display())
            }
            ModelSpec::Checkpoint {
                path, train_config, ..
            } if !path.exists() => match train_config {
                Some(tc) if tc.exists() => {}
                Some(tc) => bail!(
                    "checkpoint {} does not exist and neither does its train_config {}",
                    path.display(),
                    tc.display()
                ),
                None if crate::card::is_card(path) => {
                    bail!("model card {} does not exist", path.display())
                }
                None => bail!(
                    "checkpoint {} does not exist (give train_config to train it on first use)",
                    path.display()
                ),
            },
            _ => {}
        }
        Ok(())
    }

    /// Steps for a sampler: the configured ones, or the largest within each NFE budget. An
    /// adaptive sampler uses only the ends of the grid: one cell per seed, on the 2-step grid
    /// (`sigma_max`, `sigma_min`, 0).
    pub fn steps_for(&self, s: &SamplerSpec) -> Vec<usize> {
        if s.is_adaptive() {
            return vec![2];
        }
        if !self.steps.is_empty() {
            return self.steps.clone();
        }
        let mut v: Vec<usize> = self
            .nfe
            .iter()
            .map(|&b| {
                let mut n = 1;
                while s.nfe(n + 1).is_some_and(|c| c <= b) {
                    n += 1;
                }
                n
            })
            .collect();
        // Budgets in any order may give one step count twice (heun: 3 and 4 both give 2 steps):
        // one cell each.
        let mut seen = std::collections::HashSet::new();
        v.retain(|n| seen.insert(*n));
        v
    }

    fn all_steps(&self) -> Vec<usize> {
        let mut v: Vec<usize> = self
            .samplers
            .iter()
            .flat_map(|s| self.steps_for(s))
            .collect();
        v.sort_unstable();
        v.dedup();
        v
    }
}

/// The model of an experiment, with what the metrics need.
enum Loaded {
    Exact(ExactModel),
    /// With its data where known (a model card may have none).
    Trained(Box<train::Model>, Option<crate::data::Dataset>),
}

impl Loaded {
    fn denoiser(&self) -> &dyn Denoiser {
        match self {
            Loaded::Exact(m) => m.denoiser(),
            Loaded::Trained(m, _) => &m.net,
        }
    }
    fn shape(&self) -> Vec<i64> {
        match self {
            Loaded::Exact(m) => vec![m.dim() as i64],
            Loaded::Trained(m, _) => m.net.shape.clone(),
        }
    }
    fn mixture(&self) -> Option<&GaussianMixture> {
        match self {
            Loaded::Exact(m) => m.mixture(),
            _ => None,
        }
    }
    /// Fresh data for seed `seed`: exact samples, or training data. `part` 0 is the set the
    /// cells are measured against, part 1 the second set of the floor: for exact models an
    /// independent draw, for training data the next `n` rows of the same seeded shuffle, so the
    /// two sets share no point (drawn with replacement only where the data has fewer than `2n`
    /// rows).
    fn data(&self, n: usize, seed: u64, part: u64, dev: Device) -> Result<Option<Tensor>> {
        let key = if part == 0 { seed } else { seed ^ 0xABCD };
        Ok(match self {
            Loaded::Exact(ExactModel::Mixture(m)) => Some(m.sample(n, key ^ 0xF2E5, dev)),
            Loaded::Exact(ExactModel::Gaussian(g)) => {
                let z = job::initial_noise(key ^ 0xF2E5, n, g.dim(), dev, Kind::Double)?;
                Some(g.sample_from(&z))
            }
            Loaded::Trained(_, None) => None,
            Loaded::Trained(_, Some(data)) => {
                let idx = fresh_rows(data.x.size()[0], n, seed, part);
                Some(data.x.index_select(0, &idx).to_device(dev))
            }
        })
    }

    /// The labels of [`Loaded::data`]'s rows, where the training data has labels.
    fn data_labels(&self, n: usize, seed: u64, part: u64) -> Option<Tensor> {
        match self {
            Loaded::Trained(_, Some(data)) => data.labels.as_ref().map(|l| {
                l.index_select(0, &fresh_rows(data.x.size()[0], n, seed, part))
                    .to_device(Device::Cpu)
            }),
            _ => None,
        }
    }
}

/// The training-data rows of fresh-data set `part` (0 or 1) for `seed`: rows `part n ..
/// (part + 1) n` of a shuffle seeded by `seed` (the two parts share no row), or, where the data
/// has fewer than `2n` rows, `n` rows drawn with replacement.
fn fresh_rows(rows: i64, n: usize, seed: u64, part: u64) -> Tensor {
    let _turn = train::exclusive_rng();
    if rows >= 2 * n as i64 {
        tch::manual_seed((seed ^ 0xF2E5) as i64 & i64::MAX);
        Tensor::randperm(rows, (Kind::Int64, Device::Cpu)).narrow(
            0,
            part as i64 * n as i64,
            n as i64,
        )
    } else {
        let key = if part == 0 { seed } else { seed ^ 0xABCD };
        tch::manual_seed((key ^ 0xF2E5) as i64 & i64::MAX);
        Tensor::randint(rows, [n as i64], (Kind::Int64, Device::Cpu))
    }
}

/// The experiment `text` with each `[[samplers]]` table that gives a list of values for a
/// parameter written as one table per value ([`job::sweep_tables`]); `None` where no table has
/// such a list, or the text is no TOML table (the caller then reports its own error).
fn expand_sampler_sweeps(text: &str) -> Result<Option<toml::Table>> {
    use toml::Value;
    let Ok(mut root) = text.parse::<toml::Table>() else {
        return Ok(None);
    };
    let Some(Value::Array(entries)) = root.get("samplers") else {
        return Ok(None);
    };
    let mut out = Vec::new();
    let mut swept = false;
    for entry in entries {
        let Value::Table(t) = entry else {
            out.push(entry.clone());
            continue;
        };
        let kind = t.get("kind").and_then(Value::as_str).unwrap_or("?");
        match job::sweep_tables(t).map_err(|e| anyhow!("[[samplers]] {kind}: {e}"))? {
            Some(tables) => {
                swept = true;
                out.extend(tables.into_iter().map(Value::Table));
            }
            None => out.push(entry.clone()),
        }
    }
    if !swept {
        return Ok(None);
    }
    root.insert("samplers".into(), Value::Array(out));
    Ok(Some(root))
}

fn load_model(spec: &ModelSpec, dev: Device) -> Result<Loaded> {
    Ok(match spec {
        ModelSpec::Builtin { name } => {
            Loaded::Exact(model::parse(&format!("builtin:{name}"), dev)?)
        }
        ModelSpec::Mixture { path } => Loaded::Exact(ExactModel::Mixture(model::Graphed::new(
            model::load_mixture(path, dev)?,
        ))),
        ModelSpec::Gaussian { path } => Loaded::Exact(ExactModel::Gaussian(model::Graphed::new(
            model::load_gaussian(path, dev)?,
        ))),
        ModelSpec::Checkpoint {
            path,
            train_config,
            quantize,
            ..
        } => {
            if !path.exists() {
                let tc = train_config
                    .as_ref()
                    .ok_or_else(|| anyhow!("checkpoint {} does not exist", path.display()))?;
                let cfg = train::TrainConfig::load(tc)?;
                // Where the trained checkpoint is copied must exist before the training.
                if train::checkpoint_path(&cfg) != *path {
                    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                        if !dir.is_dir() {
                            bail!(
                                "checkpoint {} is missing and its folder {} does not exist: train_config {} trains into {}, and the checkpoint would be copied there",
                                path.display(),
                                dir.display(),
                                tc.display(),
                                cfg.out_dir.display()
                            );
                        }
                    }
                }
                eprintln!(
                    "training {} first (checkpoint {} is missing)",
                    tc.display(),
                    path.display()
                );
                let report = train::run(&cfg, &train::RunOpts::default())?;
                if report.checkpoint != *path {
                    std::fs::copy(&report.checkpoint, path).with_context(|| {
                        format!("cannot copy the checkpoint to {}", path.display())
                    })?;
                }
            }
            let mut t = crate::card::load_trained(path, dev)?;
            if *quantize {
                crate::card::quantize_time(&mut t.model.net, path)?;
            }
            let data = match &t.data {
                Some((d, seed)) => Some(crate::data::load_for(d, *seed, &t.model.net.shape)?),
                None => None,
            };
            Loaded::Trained(Box::new(t.model), data)
        }
    })
}

/// A cell's identity: a hash of everything that determines its result.
/// A cell on one of `[[grids]]` has the key it would have under `[grid]` with that grid (the
/// grid's name left out), and a cell at one weight of a guidance axis the key it would have with
/// that weight alone (`models`: [`ExperimentConfig::model_list`]).
fn cell_key(cfg: &ExperimentConfig, models: &[ModelSpec], c: &Cell) -> String {
    let grid = GridSpec {
        name: None,
        ..cfg.grid_list()[c.grid].clone()
    };
    let mut ident = json!({
        "model": models[c.model], "grid": grid, "num": cfg.num, "dtype": cfg.dtype,
        "sampler": c.spec, "steps": c.steps, "seed": c.seed, "metrics": cfg.metrics,
        "reference_tol": cfg.reference_tol,
    });
    // Only where set, so that the keys of experiments without them stay what they were.
    if let Some(r) = cfg.clip_denoised {
        ident["clip_denoised"] = json!(r);
    }
    if let Some(t) = cfg.dynamic_threshold {
        ident["dynamic_threshold"] = json!(t);
    }
    if cfg.afs {
        ident["afs"] = json!(true);
    }
    let digest = Sha256::digest(ident.to_string().as_bytes());
    digest.iter().take(8).map(|b| format!("{b:02x}")).collect()
}

/// `path` opened for appending lines: a last line cut short by a kill is ended first, so that the
/// next line starts on its own (and the cut one is skipped by [`read_results`]).
pub fn open_for_append(path: &Path) -> Result<std::fs::File> {
    use std::io::{Read, Seek, SeekFrom, Write};
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .read(true)
        .append(true)
        .open(path)
        .with_context(|| format!("cannot open {}", path.display()))?;
    if f.seek(SeekFrom::End(0))? > 0 {
        let mut last = [0u8; 1];
        f.seek(SeekFrom::End(-1))?;
        f.read_exact(&mut last)?;
        if last[0] != b'\n' {
            f.write_all(b"\n")?;
        }
    }
    Ok(f)
}

/// The lines of `results.jsonl` (a line cut short by a kill is skipped; any other line that is
/// not a results line is an error naming it).
pub fn read_results(dir: &Path) -> Result<Vec<Value>> {
    let path = dir.join("results.jsonl");
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
    };
    let mut rows = Vec::new();
    let mut keys = std::collections::HashSet::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let v = match serde_json::from_str::<Value>(line) {
            Ok(v) => v,
            // A line cut short by a kill (JSON that ends early; later results continue on
            // the next line): that cell runs again.
            Err(e) if e.is_eof() => {
                eprintln!(
                    "note: {} line {} was cut short (a killed run) and is skipped; `scoreflow run` runs its cell again",
                    path.display(),
                    i + 1
                );
                continue;
            }
            Err(e) => bail!(
                "{} line {} is not a results line ({e}); fix or delete the line (the cell then runs again)",
                path.display(),
                i + 1
            ),
        };
        if let Some(problem) = row_problem(&v) {
            bail!(
                "{} line {}: {problem}; fix or delete the line (the cell then runs again)",
                path.display(),
                i + 1
            );
        }
        // A cell written twice (two runs on one folder at once) is counted once.
        if !keys.insert(v["key"].as_str().unwrap_or_default().to_string()) {
            eprintln!(
                "note: {} line {} repeats the cell of an earlier line ({}) and is skipped",
                path.display(),
                i + 1,
                v["label"].as_str().unwrap_or_default()
            );
            continue;
        }
        rows.push(v);
    }
    Ok(rows)
}

/// What is wrong with the types of a results line (edited by hand), if anything.
fn row_problem(v: &Value) -> Option<String> {
    let want = |field: &str, ok: fn(&Value) -> bool, what: &str| -> Option<String> {
        match v.get(field) {
            Some(x) if ok(x) => None,
            Some(x) => Some(format!("`{field}` should be {what}, not {x}")),
            None => Some(format!("`{field}` is missing")),
        }
    };
    type Check = (&'static str, fn(&Value) -> bool, &'static str);
    let checks: [Check; 8] = [
        ("key", Value::is_string, "a string"),
        ("sampler", Value::is_string, "a string"),
        ("label", Value::is_string, "a string"),
        ("device", Value::is_string, "a string"),
        ("steps", Value::is_u64, "a whole number"),
        ("nfe", Value::is_u64, "a whole number"),
        ("seed", Value::is_u64, "a whole number"),
        ("seconds", Value::is_number, "a number"),
    ];
    for (field, ok, what) in checks {
        if let Some(p) = want(field, ok, what) {
            return Some(p);
        }
    }
    Metric::ALL.iter().find_map(|m| match v.get(m.name()) {
        Some(x) if !(x.is_number() || x.is_null()) => Some(format!(
            "`{}` should be a number or null, not {x}",
            m.name()
        )),
        _ => None,
    })
}

/// Options of `scoreflow run`.
#[derive(clap::Args)]
pub struct RunArgs {
    /// The experiment file (TOML).
    pub config: PathBuf,
    /// Override the experiment's device.
    #[arg(long)]
    pub device: Option<String>,
    /// Stop after this many new cells (the rest run on the next invocation).
    #[arg(long)]
    pub max_cells: Option<usize>,
}

pub fn run(a: RunArgs) -> Result<()> {
    let mut cfg = ExperimentConfig::load(&a.config)?;
    if let Some(d) = a.device {
        cfg.device = d;
        cfg.validate()?;
    }
    if a.max_cells == Some(0) {
        bail!("--max-cells must be at least 1");
    }
    run_config(&cfg, a.max_cells)
}

/// The guidance of a `[model]` with `conditional = true`: its weight and interval, checked;
/// None for unconditional sampling.
#[allow(clippy::type_complexity)]
fn guidance_settings(spec: &ModelSpec) -> Result<Option<(f64, Option<(f64, f64)>)>> {
    let ModelSpec::Checkpoint {
        conditional,
        guidance,
        guidance_interval,
        ..
    } = spec
    else {
        return Ok(None);
    };
    if !conditional {
        if guidance.is_some() || guidance_interval.is_some() {
            bail!("[model] guidance and guidance_interval need conditional = true");
        }
        return Ok(None);
    }
    let w = match guidance {
        None => 1.0,
        Some(Guidance::One(w)) => *w,
        // Each weight of an axis is a model of its own (ExperimentConfig::model_list).
        Some(Guidance::Axis(_)) => {
            bail!("[model] guidance: a list of weights is taken one weight at a time")
        }
    };
    if !w.is_finite() {
        bail!("[model] guidance must be finite, got {w}");
    }
    let interval = match guidance_interval {
        Some([lo, hi]) if crate::nn::valid_interval(*lo, *hi) => Some((*lo, *hi)),
        Some([lo, hi]) => {
            bail!("[model] guidance_interval must be [lo, hi] with 0 <= lo < hi, both finite, got [{lo}, {hi}]")
        }
        None => None,
    };
    Ok(Some((w, interval)))
}

/// The guided denoiser of a `[model]` with `conditional = true` (classes in equal shares, sample
/// `i` of class `i mod K`); None for unconditional sampling.
fn guided_denoiser<'a>(
    spec: &ModelSpec,
    model: &'a Loaded,
) -> Result<Option<crate::nn::Guided<'a>>> {
    let Some((guidance, interval)) = guidance_settings(spec)? else {
        return Ok(None);
    };
    let net = match model {
        Loaded::Trained(m, _) if m.net.num_classes > 0 => &m.net,
        _ => bail!("[model] conditional = true needs a class-conditional network"),
    };
    Ok(Some(crate::nn::Guided {
        net,
        class: crate::nn::Classes::Cycle,
        guidance,
        interval,
    }))
}

/// The timesteps placement places its levels on the chain that `[grid]` names (DDPM's linear one
/// unless it says otherwise); on a model card with a discrete chain that must be the card's own
/// chain, else the levels would be another model's timesteps.
fn check_chain(cfg: &ExperimentConfig, model: &Loaded) -> Result<()> {
    for g in cfg.grid_list() {
        check_grid_chain(g, model)?;
    }
    Ok(())
}

fn check_grid_chain(g: &GridSpec, model: &Loaded) -> Result<()> {
    let (
        GridKind::Timesteps {
            schedule,
            beta_start,
            beta_end,
            timesteps,
            ..
        },
        Loaded::Trained(m, _),
    ) = (&g.placement, model)
    else {
        return Ok(());
    };
    let crate::precond::Precond::Discrete {
        schedule: s,
        beta_start: b0,
        beta_end: b1,
        timesteps: t,
        ..
    } = &m.net.precond
    else {
        return Ok(());
    };
    let text = |schedule: &BetaSchedule, b0: f64, b1: f64, t: usize| {
        let name = serde_json::to_value(schedule)
            .ok()
            .and_then(|v| v.as_str().map(String::from))
            .unwrap_or_default();
        match schedule {
            BetaSchedule::SquaredcosCapV2 => format!("schedule = \"{name}\", timesteps = {t}"),
            _ => format!(
                "schedule = \"{name}\", beta_start = {b0}, beta_end = {b1}, timesteps = {t}"
            ),
        }
    };
    let ours = text(schedule, *beta_start, *beta_end, *timesteps);
    let card = text(s, *b0, *b1, *t);
    if ours != card {
        bail!(
            "the timesteps placement's chain ({ours}) is not the model card's ({card}): give the card's chain in [grid] placement"
        );
    }
    Ok(())
}

/// Run every unfinished cell of `cfg`, then write results.csv and the plots.
pub fn run_config(cfg: &ExperimentConfig, max_cells: Option<usize>) -> Result<()> {
    let dev = device::parse(&cfg.device)?;
    let kind = job::kind_from_name(&cfg.dtype)?;
    npy::check_out_dir(&cfg.out_dir)?;
    npy::check_out_files(&cfg.out_dir, OUTPUTS)?;
    let model = load_model(&cfg.model, dev)?;
    check_chain(cfg, &model)?;
    // Checked here, not at the first such cell, so that no cell's results are written.
    let learned = |s: &&SamplerSpec| {
        matches!(
            s,
            SamplerSpec::Ddpm {
                variance: scoreflow_solvers::samplers::DdpmVariance::Learned
            }
        )
    };
    if cfg.samplers.iter().any(|s| learned(&s))
        && !matches!(&model, Loaded::Trained(m, _) if m.net.has_learned_variance())
    {
        bail!("sampler ddpm with variance = learned needs a network with a learned variance output (a model card with learned_sigmas = true, or a network trained with model.learned_sigmas = true)");
    }
    // One denoiser per guidance weight (one without an axis).
    let models = cfg.model_list();
    let guided = models
        .iter()
        .map(|m| guided_denoiser(m, &model))
        .collect::<Result<Vec<_>>>()?;
    if guided[0].is_none() {
        for s in &cfg.samplers {
            job::note_cfgpp_without_guidance(s, "[model] conditional = true");
        }
    }
    let threshold = cfg.threshold()?;
    let boxed: Vec<Box<dyn Denoiser + '_>> = guided
        .iter()
        .map(|g| {
            let den: &dyn Denoiser = match g {
                Some(g) => g,
                None => model.denoiser(),
            };
            scoreflow_solvers::thresholded(den, threshold)
        })
        .collect();
    let dens: Vec<&dyn Denoiser> = boxed.iter().map(|d| d.as_ref()).collect();
    // (A gits grid comes with one weight only, checked in validate.)
    let den = dens[0];
    let shape = model.shape();
    let classified = cfg
        .metrics
        .iter()
        .find(|m| matches!(m, Metric::Fd | Metric::ClassAccuracy));
    let classifier = match (&model, classified) {
        (Loaded::Trained(_, data), Some(m)) => {
            let Some(data) = data
                .as_ref()
                .filter(|d| shape.len() == 3 && d.labels.is_some())
            else {
                bail!(
                    "metric {} needs a checkpoint trained on labelled images; this one has {}",
                    m.name(),
                    match data {
                        None => "no [data] table (a model card without one)".to_string(),
                        Some(d) if d.labels.is_none() =>
                            format!("unlabelled data of shape {shape:?}"),
                        Some(_) => format!("samples of shape {shape:?}"),
                    }
                );
            };
            Some(crate::fid::Classifier::train(data, 3000, 0xC1A5)?)
        }
        _ => None,
    };
    if let (Loaded::Trained(_, None), Some(m)) = (
        &model,
        cfg.metrics
            .iter()
            .find(|m| matches!(m, Metric::Sw2 | Metric::Mmd)),
    ) {
        bail!(
            "metric {} compares with data, and the model card has no [data] table",
            m.name()
        );
    }
    if let (Loaded::Trained(_, None), Some(g)) = (
        &model,
        cfg.grid_list().iter().find(|g| g.partial().is_some()),
    ) {
        bail!(
            "the grid {} starts from data ({}), and the model card has no [data] table",
            g.tag(),
            g.partial().map(|p| p.name_value().0).unwrap_or_default()
        );
    }
    let sdes = cfg
        .grid_list()
        .iter()
        .map(|g| job::sde_from_name(&g.sde))
        .collect::<Result<Vec<_>>>()?;
    let done: HashSet<String> = read_results(&cfg.out_dir)?
        .iter()
        .filter_map(|v| v["key"].as_str().map(String::from))
        .collect();
    // A gits or oss placement is solved here, for the denoiser the cells sample (guided, thresholded),
    // unless every cell on it is done (the solved levels are not part of the cells' keys).
    let mut solved = cfg.clone();
    for (g, grid) in solved.grid_list_mut().iter_mut().enumerate() {
        let pending = cfg
            .cells()
            .iter()
            .any(|c| c.grid == g && !done.contains(&cell_key(cfg, &models, c)));
        if let (Some(name), true) = (grid.placement.chosen_for_model(), pending) {
            if cfg.grids.len() > 1 {
                eprintln!("{name}: solving the grid {}", grid.tag());
            }
            let lists = job::model_levels(
                &grid.placement,
                den,
                sdes[g].as_ref(),
                (grid.sigma_min, grid.sigma_max),
                &shape,
                dev,
                kind,
                &cfg.all_steps(),
            )?;
            grid.solved = Some(GridKind::Levels { sigmas: lists });
        }
    }
    // The batch's size, before any cell (the noise is drawn per cell).
    job::check_batch_size(solved.num, &shape)?;
    let cfg = &solved;
    let cells = cfg.cells();
    let todo: Vec<_> = cells
        .iter()
        .filter(|c| !done.contains(&cell_key(cfg, &models, c)))
        .collect();
    // What a sampler's first step would refuse on a cell's levels (restart's segments, which
    // need levels between the first and the last step), before any cell runs.
    for c in &todo {
        let grid = &cfg.grid_list()[c.grid];
        let sigmas = grid.sigmas(c.steps, sdes[c.grid].as_ref())?;
        if let Err(e) = c.spec.build()?.check_grid(&sigmas) {
            let runs = match grid.partial() {
                Some(p) if sigmas.len() - 1 != c.steps => format!(
                    " ({} {} runs {} of them)",
                    p.name_value().0,
                    scoreflow_solvers::Num(p.name_value().1),
                    sigmas.len() - 1
                ),
                _ => String::new(),
            };
            bail!(
                "{} at {} steps{runs} on the grid {}: {e}",
                label(c.spec),
                c.steps,
                grid.tag()
            );
        }
    }
    let total = todo.len().min(max_cells.unwrap_or(usize::MAX));
    eprintln!(
        "{} cells, {} done, running {}",
        cells.len(),
        cells.len() - todo.len(),
        total
    );
    let bar = indicatif::ProgressBar::new(total as u64);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{bar:30} {pos}/{len} {msg} eta {eta}").unwrap(),
    );
    // results.jsonl (and the folder) are opened when the first cell finishes: a run that fails
    // before that leaves nothing behind.
    let out: std::sync::Mutex<Option<std::fs::File>> = std::sync::Mutex::new(None);
    let todo: Vec<Cell> = todo.iter().take(total).map(|c| **c).collect();
    // Per-seed state first (starting noise, fresh data, reference solution): the cells then
    // only read it.
    let needs_ref = cfg.metrics.iter().any(|m| m.needs_deterministic());
    let mut per_seed: BTreeMap<u64, SeedState> = BTreeMap::new();
    for c in &todo {
        if let std::collections::btree_map::Entry::Vacant(e) = per_seed.entry(c.seed) {
            e.insert(SeedState::new(cfg, &model, &shape, c.seed, dev, kind)?);
        }
        if needs_ref && !c.spec.is_stochastic() {
            let grid = &cfg.grid_list()[c.grid];
            let sigmas = grid.sigmas(c.steps, sdes[c.grid].as_ref())?;
            per_seed.get_mut(&c.seed).unwrap().reference(
                cfg,
                &model,
                dens[c.model],
                c.model,
                reference_ends(grid, &sigmas),
                grid.partial().is_some(),
            )?;
        }
    }
    let bandwidth = match (
        cfg.metrics.contains(&Metric::Mmd),
        per_seed.values().next().and_then(|s| s.data.as_ref()),
    ) {
        (true, Some(d)) => Some(median_distance(d)),
        _ => None,
    };
    let ctx = CellCtx {
        cfg,
        model: &model,
        models: &models,
        dens: &dens,
        classifier: classifier.as_ref(),
        per_seed: &per_seed,
        bandwidth,
        shape: &shape,
        dev,
        sdes: &sdes,
    };
    let run_one = |c: &Cell| -> Result<()> {
        let line = ctx.run_cell(c)?;
        let mut guard = out.lock().unwrap_or_else(|e| e.into_inner());
        let f = match guard.as_mut() {
            Some(f) => f,
            None => {
                npy::create_out_dir(&cfg.out_dir)?;
                guard.insert(open_for_append(&cfg.out_dir.join("results.jsonl"))?)
            }
        };
        writeln!(f, "{line}")?;
        f.flush()?;
        bar.inc(1);
        Ok(())
    };
    // On the CPU, cells run in parallel, one libtorch thread each; on a GPU one after another,
    // each cell's whole sample set as one batch.
    if dev == Device::Cpu && rayon::current_num_threads() > 1 && todo.len() > 1 {
        use rayon::prelude::*;
        let threads = tch::get_num_threads();
        tch::set_num_threads(1);
        let res = todo.par_iter().try_for_each(run_one);
        tch::set_num_threads(threads);
        res?;
    } else {
        todo.iter().try_for_each(run_one)?;
    }
    bar.finish_and_clear();
    npy::create_out_dir(&cfg.out_dir)?;
    // The floor lines: distances between two fresh data sets.
    let mut floors = BTreeMap::new();
    for (seed, st) in per_seed.iter_mut().take(1) {
        if let Some(d) = &st.data {
            let other = model.data(cfg.num, *seed, 1, dev)?.unwrap();
            if cfg.metrics.contains(&Metric::Sw2) {
                floors.insert(
                    "sw2",
                    sliced_w2(&other.flatten(1, -1), &d.flatten(1, -1), 256, seed ^ 0x5E),
                );
            }
            if cfg.metrics.contains(&Metric::Mmd) {
                floors.insert(
                    "mmd",
                    mmd(&other, d, bandwidth.unwrap_or_else(|| median_distance(d))),
                );
            }
            if let (Some(c), true) = (&classifier, cfg.metrics.contains(&Metric::Fd)) {
                floors.insert(
                    "fd",
                    crate::fid::frechet(&c.features(&other), &c.features(d)),
                );
            }
            if let (Some(c), true, Some(labels)) = (
                &classifier,
                cfg.metrics.contains(&Metric::ClassAccuracy),
                model.data_labels(cfg.num, *seed, 1),
            ) {
                floors.insert("class-accuracy", c.accuracy(&other, &labels));
            }
            if let (Some(g), true) = (model.mixture(), cfg.metrics.contains(&Metric::ModeTv)) {
                floors.insert("mode-tv", compare::mode_tv(g, &other)?);
            }
        }
    }
    if !floors.is_empty() {
        crate::compare::write_atomic(
            &cfg.out_dir.join("floors.json"),
            &serde_json::to_string_pretty(&floors)?,
        )?;
    }
    crate::compare::write_atomic(
        &cfg.out_dir.join("experiment.json"),
        &serde_json::to_string_pretty(cfg)?,
    )?;
    let keys = cfg.cell_keys();
    let finished = read_results(&cfg.out_dir)?
        .into_iter()
        .filter(|v| keys.contains(v["key"].as_str().unwrap_or("")))
        .count();
    if finished < cells.len() {
        println!(
            "{finished} of {} cells finished; run the same command again to continue",
            cells.len()
        );
        return Ok(());
    }
    plot_dir(&cfg.out_dir)
}

/// What every cell reads.
struct CellCtx<'a> {
    cfg: &'a ExperimentConfig,
    model: &'a Loaded,
    /// [`ExperimentConfig::model_list`].
    models: &'a [ModelSpec],
    /// The model's denoiser for each of `models`, guided where `[model]` says so.
    dens: &'a [&'a dyn Denoiser],
    classifier: Option<&'a crate::fid::Classifier>,
    per_seed: &'a BTreeMap<u64, SeedState>,
    bandwidth: Option<f64>,
    shape: &'a [i64],
    dev: Device,
    /// Each grid's SDE.
    sdes: &'a [Box<dyn Sde>],
}

// SAFETY: while cells run in parallel the context is only read: the model's forward pass and
// the metrics use read-only libtorch operations (no in-place updates, no autograd state) on
// tensors that no thread modifies, which libtorch supports from several threads.
unsafe impl Sync for CellCtx<'_> {}

impl CellCtx<'_> {
    /// Run one cell, write its snapshots, return its results line.
    fn run_cell(&self, c: &Cell) -> Result<Value> {
        let (cfg, model, shape) = (self.cfg, self.model, self.shape);
        let (g, seed, spec, steps) = (c.grid, c.seed, c.spec, c.steps);
        let den = self.dens[c.model];
        let state = &self.per_seed[&seed];
        let grid = &cfg.grid_list()[g];
        let sde = self.sdes[g].as_ref();
        let sigmas = grid.sigmas(steps, sde)?;
        let from_init = grid.partial().is_some();
        let z = state.latents(from_init, sigmas[0]);
        let t = Instant::now();
        // The paths of the first 16 samples, for the trajectory plot of 2-D models.
        let track = shape == [2];
        let mut path: Vec<Tensor> = if track {
            vec![(&z * sigmas[0]).narrow(0, 0, 16.min(cfg.num as i64))]
        } else {
            Vec::new()
        };
        let mut observe = |_: &scoreflow_solvers::StepReport, x: &Tensor| {
            if track {
                path.push(x.narrow(0, 0, 16.min(x.size()[0])).shallow_clone());
            }
        };
        let job::Sampled { x, nfe, companion } = job::run_latents(
            spec,
            den,
            sde,
            &sigmas,
            &z,
            None,
            seed,
            0,
            &scoreflow_solvers::RunOptions {
                afs: cfg.afs,
                ..Default::default()
            },
            &mut observe,
        )?;
        let seconds = t.elapsed().as_secs_f64();
        let key = cell_key(cfg, self.models, c);
        let mut rec = json!({
            "key": key, "sampler": spec.name(), "label": cfg.cell_label(g, c.model, spec), "params": spec,
            "steps": steps, "nfe": nfe, "seed": seed, "num": cfg.num, "seconds": seconds,
            "device": device::name(self.dev), "scoreflow_version": env!("CARGO_PKG_VERSION"),
        });
        if cfg.grids.len() > 1 {
            rec["grid"] = json!(grid.tag());
        }
        if from_init {
            // Where SDEdit's run started: the level moves with the step count.
            rec["sigma_start"] = json!(sigmas[0]);
        }
        if cfg.weight_axis().len() > 1 {
            rec["guidance"] = json!(cfg.weight_axis()[c.model]);
        }
        if cfg.grids.len() > 1 || cfg.weight_axis().len() > 1 {
            rec["series"] = json!(cfg.tagged(g, c.model, series(spec)));
        }
        for m in &cfg.metrics {
            let v = match m {
                _ if m.needs_deterministic() && spec.is_stochastic() => None,
                // A one-level grid (one step of the timesteps placement) solves no ODE: the cell
                // and its reference are the same denoising step.
                Metric::Rms | Metric::Max
                    if {
                        let (hi, lo) = reference_ends(grid, &sigmas);
                        hi <= lo
                    } =>
                {
                    None
                }
                Metric::Rms | Metric::Max => {
                    let r = state
                        .reference
                        .get(&(c.model, ends_key(reference_ends(grid, &sigmas)), from_init))
                        .ok_or_else(|| anyhow!("no reference solution for seed {seed}"))?;
                    let dist = (&x - r)
                        .flatten(1, -1)
                        .square()
                        .sum_dim_intlist(1, false, Kind::Double)
                        .sqrt();
                    Some(if *m == Metric::Rms {
                        dist.square().mean(Kind::Double).sqrt().double_value(&[])
                    } else {
                        dist.max().double_value(&[])
                    })
                }
                Metric::Sw2 => state
                    .data
                    .as_ref()
                    .map(|d| sliced_w2(&x.flatten(1, -1), &d.flatten(1, -1), 256, seed ^ 0x5E)),
                Metric::Mmd => match (&state.data, self.bandwidth) {
                    (Some(d), Some(h)) => Some(mmd(&x, d, h)),
                    _ => None,
                },
                Metric::ModeTv => model
                    .mixture()
                    .map(|g| compare::mode_tv(g, &x))
                    .transpose()?,
                Metric::ModeCoverage => {
                    model.mixture().map(|g| mode_coverage(g, &x)).transpose()?
                }
                // (Not counted in the cell's NFE: the inversion's own steps - 1 evaluations.)
                Metric::Roundtrip => job::roundtrip_rms(
                    spec,
                    den,
                    sde,
                    &sigmas,
                    &x,
                    companion.as_ref(),
                    &z,
                    seed,
                    cfg.afs,
                )?,
                Metric::InputDistance => match (&state.init, from_init) {
                    (Some(x0), true) => Some(
                        (&x - x0)
                            .flatten(1, -1)
                            .square()
                            .sum_dim_intlist(1, false, Kind::Double)
                            .mean(Kind::Double)
                            .sqrt()
                            .double_value(&[]),
                    ),
                    _ => None,
                },
                Metric::Fd => match (self.classifier, &state.data) {
                    (Some(c), Some(d)) => {
                        Some(crate::fid::frechet(&c.features(&x), &c.features(d)))
                    }
                    _ => None,
                },
                // The classes the guided denoiser sampled for.
                Metric::ClassAccuracy => match (self.classifier, model) {
                    (Some(c), Loaded::Trained(m, _)) if m.net.num_classes > 0 => {
                        let labels = crate::nn::Classes::Cycle.labels(
                            x.size()[0],
                            m.net.num_classes,
                            Device::Cpu,
                        );
                        Some(c.accuracy(&x, &labels))
                    }
                    _ => None,
                },
            };
            rec[m.name()] = v.map(Value::from).unwrap_or(Value::Null);
        }
        // Snapshots for the plots: 1000 points and 16 paths of 2-D models, 10 images of image
        // models. Written before the results line, so a listed cell always has them.
        let snap = cfg.out_dir.join("samples");
        if track || shape.len() == 3 {
            std::fs::create_dir_all(&snap)
                .with_context(|| format!("cannot create the snapshot folder {}", snap.display()))?;
            let keep = if track { 1000 } else { 10 };
            npy::write_f32(
                &snap.join(format!("{key}.npy")),
                &x.narrow(0, 0, x.size()[0].min(keep)),
            )?;
        }
        if track {
            npy::write_f32(
                &snap.join(format!("{key}.path.npy")),
                &Tensor::stack(&path, 0),
            )?;
        }
        Ok(rec)
    }
}

/// Read a snapshot of an experiment's `samples/` folder: finite, with one of the `shapes` (-1
/// for any size).
fn read_snapshot(path: &Path, shapes: &[&[i64]], expected: &str) -> Result<Tensor> {
    let t = npy::read(path).with_context(|| "a snapshot of the experiment's samples")?;
    let size = t.size();
    let fits = |want: &&[i64]| {
        want.len() == size.len()
            && want
                .iter()
                .zip(&size)
                .all(|(&w, &s)| s > 0 && (w < 0 || w == s))
    };
    if !shapes.iter().any(fits) {
        bail!(
            "snapshot {} has shape {:?}, expected {expected}",
            path.display(),
            size
        );
    }
    if t.isfinite().all().int64_value(&[]) == 0 {
        bail!(
            "snapshot {} contains NaN or infinite values",
            path.display()
        );
    }
    Ok(t)
}

/// Fraction of mixture components holding at least half their weight among the samples.
pub fn mode_coverage(g: &GaussianMixture, x: &Tensor) -> Result<f64> {
    let k = g.components() as i64;
    let n = x.size()[0] as f64;
    let counts: Vec<f64> = Vec::try_from(
        g.assign(x)?
            .bincount(None::<Tensor>, k)
            .to_kind(Kind::Double)
            .to_device(Device::Cpu),
    )?;
    let hit = counts
        .iter()
        .zip(&g.weights)
        .filter(|(c, w)| **c / n >= 0.5 * **w)
        .count();
    Ok(hit as f64 / k as f64)
}

/// Per-seed state: the shared starting noise, fresh data and (lazily) the reference solutions,
/// one per pair of grid ends ([`reference_ends`]).
struct SeedState {
    z: Tensor,
    data: Option<Tensor>,
    /// SDEdit's inputs where a grid has `strength` or `denoise`: the second fresh data set
    /// (the floor's), in the noise's dtype.
    init: Option<Tensor>,
    /// Keyed by the model's index in [`ExperimentConfig::model_list`], the ends and whether the
    /// path starts from `init`.
    reference: BTreeMap<(usize, (u64, u64), bool), Tensor>,
}

impl SeedState {
    fn new(
        cfg: &ExperimentConfig,
        model: &Loaded,
        shape: &[i64],
        seed: u64,
        dev: Device,
        kind: Kind,
    ) -> Result<Self> {
        let z = job::initial_noise_shaped(seed, cfg.num, shape, dev, kind)?;
        let needs_data = cfg.metrics.iter().any(|m| {
            matches!(
                m,
                Metric::Sw2 | Metric::Mmd | Metric::Fd | Metric::ClassAccuracy
            )
        });
        let data = if needs_data {
            model.data(cfg.num, seed, 0, dev)?
        } else {
            None
        };
        let init = if cfg.grid_list().iter().any(|g| g.partial().is_some()) {
            let x0 = model.data(cfg.num, seed, 1, dev)?.ok_or_else(|| {
                anyhow!("strength and denoise start from data; the model has none")
            })?;
            Some(x0.to_kind(z.kind()).reshape(z.size()))
        } else {
            None
        };
        Ok(SeedState {
            z,
            data,
            init,
            reference: BTreeMap::new(),
        })
    }

    /// The reference probability-flow solution from this seed's noise, from `hi` to `lo` and
    /// then the final denoising step every grid ends with: the exact flow for Gaussian data
    /// (unless the denoised estimate is clipped or thresholded, which changes the flow), else an
    /// adaptive Dormand-Prince 5(4) solve to `reference_tol`.
    fn reference(
        &mut self,
        cfg: &ExperimentConfig,
        model: &Loaded,
        den: &dyn Denoiser,
        model_index: usize,
        (hi, lo): (f64, f64),
        from_init: bool,
    ) -> Result<&Tensor> {
        let key = (model_index, ends_key((hi, lo)), from_init);
        if !self.reference.contains_key(&key) {
            let start = self.latents(from_init, hi) * hi;
            let at_min = match model {
                Loaded::Exact(ExactModel::Gaussian(g))
                    if cfg.clip_denoised.is_none() && cfg.dynamic_threshold.is_none() =>
                {
                    g.exact_flow(&start, hi, lo)?
                }
                _ => {
                    scoreflow_solvers::reference::solve_pf_ode(
                        den,
                        &start,
                        hi,
                        lo,
                        cfg.reference_tol,
                    )?
                    .0
                }
            };
            let r = den.denoise(&at_min, lo)?;
            self.reference.insert(key, r);
        }
        Ok(&self.reference[&key])
    }

    /// The latents of a run whose first level is `hi`: the noise, or for SDEdit the noise plus
    /// the input over `hi` (the run starts from `hi` times its latents: `x0 + hi z`).
    fn latents(&self, from_init: bool, hi: f64) -> Tensor {
        match (&self.init, from_init) {
            (Some(x0), true) => &self.z + x0 / hi,
            _ => self.z.shallow_clone(),
        }
    }
}

/// The ends `(sigma_max, sigma_min)` of the reference path that a cell on `sigmas` approximates:
/// `[grid]`'s for every placement but `timesteps`, whose levels are a chain's steps, so each step
/// count has its own first level and last level above 0.
fn reference_ends(g: &GridSpec, sigmas: &[f64]) -> (f64, f64) {
    match g.placement {
        // SDEdit: from the level it starts at (each step count its own).
        GridKind::Timesteps { .. } if g.partial().is_some() => grid::ends(sigmas),
        _ if g.partial().is_some() => (sigmas[0], g.sigma_min.min(grid::ends(sigmas).1)),
        GridKind::Timesteps { .. } => grid::ends(sigmas),
        // From the grid's first level down to sigma_min (or its lowest level, if lower): a
        // grid that stops early is judged against the whole path.
        GridKind::Levels { .. }
        | GridKind::Ays { .. }
        | GridKind::LinearQuadratic { .. }
        | GridKind::Gits(_)
        | GridKind::Oss(_) => (sigmas[0], g.sigma_min.min(grid::ends(sigmas).1)),
        _ => (g.sigma_max, g.sigma_min),
    }
}

fn ends_key((hi, lo): (f64, f64)) -> (u64, u64) {
    (hi.to_bits(), lo.to_bits())
}

/// A metric's plot title and axis label.
fn metric_title(m: &str) -> (&'static str, &'static str) {
    match m {
        "rms" => ("RMS distance to the reference ODE solution", "RMS error"),
        "max" => ("largest distance to the reference solution", "max error"),
        "sw2" => ("sliced Wasserstein-2 to fresh data", "SW2"),
        "mmd" => ("MMD to fresh data", "MMD"),
        "fd" => ("Fréchet distance on classifier features", "FD"),
        "class-accuracy" => (
            "share of samples the classifier puts in their class",
            "class accuracy",
        ),
        "input-distance" => (
            "distance to the SDEdit input (RMS over samples)",
            "distance to input",
        ),
        "roundtrip" => (
            "noise recovered by inverting the samples (RMS, units of the noise)",
            "round-trip error",
        ),
        "mode-coverage" => (
            "fraction of modes holding at least half their weight",
            "coverage",
        ),
        _ => ("mode-weight error (total variation)", "TV"),
    }
}

/// The files `run` and `plot` write into an experiment's folder (besides results.jsonl,
/// floors.json, experiment.json and samples/).
const OUTPUTS: &[&str] = &[
    "results.csv",
    "summary.md",
    "quality_vs_nfe.png",
    "quality_vs_nfe.svg",
    "samples_grid.png",
    "samples_grid.svg",
    "trajectories.png",
    "trajectories.svg",
];

/// `scoreflow plot OUT_DIR`: results.csv, summary.md and the plots from results.jsonl.
pub fn plot_dir(dir: &Path) -> Result<()> {
    let (rows, cfg) = load_plotted(dir)?;
    if rows.is_empty() {
        bail!(
            "{} has no results (results.jsonl is missing or empty)",
            dir.display()
        );
    }
    let floors = read_floors(dir)?;
    // The experiment's first metric leads the summary printed at the end. Under the timesteps
    // placement rms/max are measured between each step count's own ends: not ranked by budget.
    let primary: Option<&'static str> = cfg
        .as_ref()
        .and_then(|c| c.metrics.first().map(|m| m.name()));
    let unranked = cfg.as_ref().map(|c| c.unranked()).unwrap_or_default();
    let order: Vec<String> = cfg.map(|c| c.labels()).unwrap_or_default();
    draw(dir, rows, primary, &unranked, &order, &floors, true)
}

/// `scoreflow plot DIR1 DIR2 ... --out OUT`: the results of several experiments in one table,
/// summary and plot, each line tagged with its experiment's folder name (`euler [digits-dev]`):
/// the same samplers on other grids, models or settings side by side. Each folder's own
/// experiment.json selects its cells, as `plot DIR` does; the noise floors are the first
/// folder's that has them. Writes results.csv, summary.md and quality_vs_nfe.{png,svg} to `out`
/// (created if missing; never one of the inputs).
pub fn plot_merged(dirs: &[PathBuf], out: &Path) -> Result<()> {
    if dirs.len() < 2 {
        bail!(
            "plot --out merges two or more experiment folders; for one, run `scoreflow plot DIR`"
        );
    }
    for d in dirs {
        let same = match (d.canonicalize(), out.canonicalize()) {
            (Ok(a), Ok(b)) => a == b,
            _ => d == out,
        };
        if same {
            bail!(
                "--out {} is one of the inputs; give a new folder for the merged results",
                out.display()
            );
        }
    }
    // An experiment's own folder would have its table and plots replaced by the merge.
    if out.join("results.jsonl").exists() {
        bail!(
            "--out {} holds an experiment's results (results.jsonl); give a new folder for the merged results",
            out.display()
        );
    }
    // The same folder twice would draw each of its lines twice under two tags.
    let key = |d: &PathBuf| d.canonicalize().unwrap_or_else(|_| d.clone());
    for (i, d) in dirs.iter().enumerate() {
        if dirs[..i].iter().any(|e| key(e) == key(d)) {
            bail!("plot --out lists the folder {} twice", d.display());
        }
    }
    let names: Vec<String> = dirs
        .iter()
        .map(|d| {
            d.file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_else(|| d.display().to_string())
        })
        .collect();
    // Folder names that repeat (out/a/run, out/b/run) are told apart by their whole paths.
    let tags: Vec<String> = names
        .iter()
        .zip(dirs)
        .map(|(n, d)| {
            if names.iter().filter(|m| *m == n).count() > 1 {
                d.display().to_string()
            } else {
                n.clone()
            }
        })
        .collect();
    let mut all = Vec::new();
    let mut order = Vec::new();
    let mut floors = BTreeMap::new();
    let mut primary = None;
    let mut unranked: Vec<(&'static str, &'static str)> = Vec::new();
    for (dir, tag) in dirs.iter().zip(&tags) {
        if !dir.is_dir() {
            bail!("{} is not an experiment folder", dir.display());
        }
        let (rows, cfg) = load_plotted(dir)?;
        if rows.is_empty() {
            bail!(
                "{} has no results (results.jsonl is missing or empty)",
                dir.display()
            );
        }
        for (k, v) in read_floors(dir)? {
            floors.entry(k).or_insert(v);
        }
        if let Some(c) = &cfg {
            primary = primary.or_else(|| c.metrics.first().map(|m| m.name()));
            for u in c.unranked() {
                if !unranked.iter().any(|(m, _)| *m == u.0) {
                    unranked.push(u);
                }
            }
            order.extend(c.labels().iter().map(|l| format!("{l} [{tag}]")));
        }
        for mut r in rows {
            let series = format!("{} [{tag}]", series_of(&r));
            let l = format!("{} [{tag}]", r["label"].as_str().unwrap_or(""));
            r["label"] = json!(l);
            r["series"] = json!(series);
            all.push(r);
        }
    }
    std::fs::create_dir_all(out)
        .with_context(|| format!("cannot create the output folder {}", out.display()))?;
    draw(out, all, primary, &unranked, &order, &floors, false)
}

/// The cells of `dir`'s results.jsonl that its experiment.json lists (all of them where there
/// is none), and the configuration.
fn load_plotted(dir: &Path) -> Result<(Vec<Value>, Option<ExperimentConfig>)> {
    let mut rows = read_results(dir)?;
    // experiment.json must be JSON where it is present; one that an older scoreflow wrote and
    // this one cannot read as a configuration is noted, and every line is drawn.
    let cfg_path = dir.join("experiment.json");
    let cfg = match std::fs::read_to_string(&cfg_path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", cfg_path.display())),
        Ok(t) => {
            let v: Value = serde_json::from_str(&t).with_context(|| {
                format!(
                    "{} is corrupt (delete it to draw every line of results.jsonl)",
                    cfg_path.display()
                )
            })?;
            match serde_json::from_value::<ExperimentConfig>(v) {
                Ok(c) => Some(c),
                Err(e) => {
                    eprintln!(
                        "note: {} is not a configuration this scoreflow reads ({e}); every line of results.jsonl is drawn",
                        cfg_path.display()
                    );
                    None
                }
            }
        }
    };
    // Where experiment.json is present, only its cells are drawn: lines of an earlier config
    // run into the same directory (another grid, a sampler since removed, a cell of an older
    // version) stay in results.jsonl but are not mixed into the table and the plots.
    if let Some(c) = &cfg {
        let names = c.cell_names();
        let all = rows.len();
        rows.retain(|r| names.contains_key(r["key"].as_str().unwrap_or("")));
        // Each line is labelled as this configuration labels its cell: a cell computed by another
        // configuration with the same key (one grid or weight before `[[grids]]` or a guidance
        // axis was added) gets its tag.
        for r in rows.iter_mut() {
            let (label, series) = &names[r["key"].as_str().unwrap_or("")];
            r["label"] = json!(label);
            match series {
                Some(s) => r["series"] = json!(s),
                None => {
                    if let Some(o) = r.as_object_mut() {
                        o.remove("series");
                    }
                }
            }
        }
        if rows.len() < all {
            // Only where the configuration has cells without a line is there work for `run`.
            let drawn: HashSet<&str> = rows.iter().filter_map(|r| r["key"].as_str()).collect();
            let missing = names.keys().filter(|k| !drawn.contains(k.as_str())).count();
            eprintln!(
                "note: {} of {all} lines in {} are not cells of experiment.json (another configuration, or cells of an older scoreflow whose samplers have gained parameters since) and are not drawn{}",
                all - rows.len(),
                dir.join("results.jsonl").display(),
                if missing > 0 {
                    format!("; {missing} of its cells have no line: `scoreflow run` the experiment again to compute them")
                } else {
                    String::new()
                }
            );
        }
    }
    Ok((rows, cfg))
}

/// An experiment folder's floors.json (none: empty).
fn read_floors(dir: &Path) -> Result<BTreeMap<String, f64>> {
    let floors_path = dir.join("floors.json");
    Ok(match std::fs::read_to_string(&floors_path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => BTreeMap::new(),
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", floors_path.display())),
        Ok(t) => serde_json::from_str(&t).with_context(|| {
            format!(
                "{} is corrupt (it should map metrics to numbers; delete it and rerun `scoreflow run` to recompute it)",
                floors_path.display()
            )
        })?,
    })
}

/// results.csv, summary.md and the plots of `rows` into `out` (`snapshots`: also the sample
/// grids and trajectories from `out/samples`).
fn draw(
    out: &Path,
    mut rows: Vec<Value>,
    primary: Option<&'static str>,
    unranked: &[(&'static str, &'static str)],
    order: &[String],
    floors: &BTreeMap<String, f64>,
    snapshots: bool,
) -> Result<()> {
    let dir = out;
    // Cells may finish in any order: sort by seed, then sampler (in the experiment's order
    // where experiment.json is present), then steps.
    let rank = |r: &Value| {
        let l = r["label"].as_str().unwrap_or("");
        (
            r["seed"].as_u64().unwrap_or(0),
            order.iter().position(|o| o == l).unwrap_or(usize::MAX),
            l.to_string(),
            r["steps"].as_u64().unwrap_or(0),
        )
    };
    rows.sort_by_key(rank);
    // Scatter grid of 2-D samples (seed of the first row), one panel per sampler and step count.
    // Read (and check) before anything is written, so that a bad snapshot leaves the folder
    // as it was.
    let snap = dir.join("samples");
    let first_seed = rows[0]["seed"].as_u64();
    let mut scat = Vec::new();
    let mut images = Vec::new();
    let mut paths: BTreeMap<String, (u64, Tensor)> = BTreeMap::new();
    if snapshots && snap.is_dir() {
        for r in rows.iter().filter(|r| r["seed"].as_u64() == first_seed) {
            let key = r["key"].as_str().unwrap_or("");
            let label = r["label"].as_str().unwrap_or("").to_string();
            // A cell's snapshots are optional (older runs, other shapes), but one that is there
            // must be readable and of a snapshot's shape.
            let file = snap.join(format!("{key}.npy"));
            if !file.exists() {
                continue;
            }
            let t = read_snapshot(
                &file,
                &[&[-1, 2], &[-1, -1, -1, -1]],
                "[N, 2] or [N, C, H, W]",
            )?;
            if t.dim() == 4 {
                images.push(t);
                continue;
            }
            let v: Vec<f64> = Vec::try_from(t.flatten(0, -1))?;
            let short: String = label.chars().take(24).collect();
            scat.push(Scatter {
                title: format!("{short} nfe {}", r["nfe"]),
                points: v.chunks(2).map(|c| [c[0], c[1]]).collect(),
            });
            // Trajectories: per sampler, the run whose step count is closest to 32 (in log scale).
            let steps = r["steps"].as_u64().unwrap_or(0);
            let path_file = snap.join(format!("{key}.path.npy"));
            if path_file.exists() {
                let p = read_snapshot(&path_file, &[&[-1, -1, 2]], "[steps + 1, paths, 2]")?;
                let dist = |n: u64| ((n.max(1) as f64) / 32.0).log2().abs();
                let better = match paths.get(&label) {
                    None => true,
                    Some((s0, _)) => dist(steps) < dist(*s0),
                };
                if better {
                    paths.insert(label, (steps, p));
                }
            }
        }
        if let Some(first) = images.first() {
            if images.iter().any(|t| t.size()[1..] != first.size()[1..]) {
                bail!(
                    "the image snapshots in {} have different shapes; rerun the experiment into a new out_dir",
                    snap.display()
                );
            }
        }
    }
    npy::check_out_files(dir, OUTPUTS)?;
    let metric_names: Vec<&str> = Metric::ALL
        .iter()
        .map(Metric::name)
        .filter(|m| rows.iter().any(|r| r.get(*m).is_some()))
        .collect();
    // results.csv
    let mut csv = format!(
        "label,sampler,steps,nfe,seed,{},seconds,device\n",
        metric_names.join(",")
    );
    for r in &rows {
        let m: Vec<String> = metric_names
            .iter()
            .map(|k| r[*k].as_f64().map(|v| format!("{v:e}")).unwrap_or_default())
            .collect();
        csv += &format!(
            "\"{}\",{},{},{},{},{},{},{}\n",
            r["label"].as_str().unwrap_or(""),
            r["sampler"].as_str().unwrap_or(""),
            r["steps"],
            r["nfe"],
            r["seed"],
            m.join(","),
            r["seconds"],
            r["device"].as_str().unwrap_or("")
        );
    }
    crate::compare::write_atomic(&dir.join("results.csv"), &csv)?;
    let titles: Vec<(&str, &str)> = metric_names
        .iter()
        .map(|m| (*m, metric_title(m).0))
        .collect();
    crate::compare::write_atomic(
        &dir.join("summary.md"),
        &crate::summary::markdown(
            &format!("Summary of {}", dir.display()),
            &rows,
            &titles,
            floors,
            unranked,
        ),
    )?;
    // Quality vs NFE: mean over seeds, bars from min to max; one curve per series.
    let row_series: Vec<String> = rows.iter().map(series_of).collect();
    let labels: Vec<String> = {
        let mut v: Vec<String> = Vec::new();
        for l in &row_series {
            if !v.contains(l) {
                v.push(l.clone());
            }
        }
        v
    };
    let mut panels = Vec::new();
    for m in metric_names.iter().filter(|m| **m != "mode-coverage") {
        let mut series = Vec::new();
        for l in &labels {
            // One point per run setting (steps and parameters), at the mean NFE over seeds (the
            // same for every seed except with an adaptive sampler).
            let mut by_cell: BTreeMap<String, Vec<(f64, f64)>> = BTreeMap::new();
            let in_series = rows.iter().zip(&row_series).filter(|(_, s)| *s == l);
            for (r, _) in in_series {
                if let (Some(n), Some(v)) = (r["nfe"].as_u64(), r[*m].as_f64()) {
                    let cell = format!("{} {}", r["steps"], r["params"]);
                    by_cell.entry(cell).or_default().push((n as f64, v));
                }
            }
            let mut points: Vec<(f64, f64, f64, f64)> = by_cell
                .values()
                .map(|c| {
                    let k = c.len() as f64;
                    let nfe = c.iter().map(|p| p.0).sum::<f64>() / k;
                    let mean = c.iter().map(|p| p.1).sum::<f64>() / k;
                    let lo = c.iter().map(|p| p.1).fold(f64::INFINITY, f64::min);
                    let hi = c.iter().map(|p| p.1).fold(f64::NEG_INFINITY, f64::max);
                    (nfe, mean, lo, hi)
                })
                .collect();
            points.sort_by(|a, b| a.0.total_cmp(&b.0));
            if !points.is_empty() {
                series.push(Series {
                    label: l.clone(),
                    points,
                });
            }
        }
        let (title, ylabel) = metric_title(m);
        let floor = floors.get(*m).map(|f| {
            let what = if *m == "class-accuracy" {
                "the classifier on fresh data"
            } else {
                "fresh data vs fresh data"
            };
            (what.to_string(), *f)
        });
        panels.push(Panel {
            title: title.into(),
            ylabel: ylabel.into(),
            series,
            floor,
            fraction: *m == "class-accuracy",
        });
    }
    plot::quality_vs_nfe(&dir.join("quality_vs_nfe"), &panels)?;
    if snapshots && snap.is_dir() {
        if !images.is_empty() {
            // One row of 10 images per sampler and step count (first seed).
            crate::image::write_grid(&dir.join("samples_grid.png"), &Tensor::cat(&images, 0), 10)?;
        }
        if !paths.is_empty() {
            let panels: Vec<(String, Vec<Vec<[f64; 2]>>)> = paths
                .iter()
                .map(|(label, (steps, p))| {
                    let (t, n) = (p.size()[0], p.size()[1]);
                    let v: Vec<f64> = Vec::try_from(p.flatten(0, -1)).unwrap_or_default();
                    let lines = (0..n as usize)
                        .map(|j| {
                            (0..t as usize)
                                .map(|i| {
                                    [v[(i * n as usize + j) * 2], v[(i * n as usize + j) * 2 + 1]]
                                })
                                .collect()
                        })
                        .collect();
                    (
                        format!(
                            "{} ({steps} steps)",
                            label.chars().take(28).collect::<String>()
                        ),
                        lines,
                    )
                })
                .collect();
            plot::trajectories(&dir.join("trajectories"), &panels)?;
        }
        if !scat.is_empty() {
            let cols = rows
                .iter()
                .filter(|r| r["seed"].as_u64() == first_seed && r["label"] == rows[0]["label"])
                .count()
                .max(1);
            // Limits from the 99th percentile, so a few far-off samples do not shrink the rest.
            let mut mags: Vec<f64> = scat
                .iter()
                .flat_map(|s| s.points.iter().map(|p| p[0].abs().max(p[1].abs())))
                .filter(|v| v.is_finite())
                .collect();
            mags.sort_by(|a, b| a.partial_cmp(b).unwrap());
            let lim = mags.get(mags.len() * 99 / 100).copied().unwrap_or(1.0) * 1.2;
            plot::scatter_grid(&dir.join("samples_grid"), &scat, cols, lim.max(1e-3))?;
        }
    }
    if let Some(h) = primary
        .into_iter()
        .chain(metric_names.iter().copied())
        .filter(|m| !unranked.iter().any(|(u, _)| u == m))
        .find_map(|m| crate::summary::headline(&rows, m))
    {
        println!("{h}");
    }
    println!("results: {}", dir.join("results.csv").display());
    println!("summary: {}", dir.join("summary.md").display());
    println!("plot: {}", dir.join("quality_vs_nfe.png").display());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::{fresh_rows, label, GridSpec};
    use scoreflow_solvers::SamplerSpec;

    #[test]
    fn grid_tags_name_the_kind_and_what_differs_from_its_defaults() {
        for (placement, tag) in [
            ("{ kind = \"karras\" }", "karras"),
            ("{ kind = \"karras\", rho = 5.0 }", "karras(rho=5)"),
            ("{ kind = \"ays\" }", "ays"),
            ("{ kind = \"ays\", model = \"sdxl\" }", "ays(model=sdxl)"),
            ("{ kind = \"levels\", sigmas = [[80.0, 1.0]] }", "levels"),
            (
                "{ kind = \"timesteps\", spacing = \"comfy-beta\" }",
                "timesteps(spacing=comfy-beta)",
            ),
        ] {
            let g: GridSpec = toml::from_str(&format!("placement = {placement}")).unwrap();
            assert_eq!(g.tag(), tag, "{placement}");
        }
        // ComfyUI's discard of the penultimate level is named; the default is left out of the
        // serialized grid (the cells' keys).
        let g: GridSpec = toml::from_str(
            "placement = { kind = \"karras\", rho = 5.0 }\ndiscard_penultimate = true",
        )
        .unwrap();
        assert_eq!(g.tag(), "karras(rho=5,discard_penultimate)");
        assert_eq!(
            serde_json::to_value(&g).unwrap()["discard_penultimate"],
            true
        );
        let plain = serde_json::to_value(GridSpec::default()).unwrap();
        assert!(plain.get("discard_penultimate").is_none(), "{plain}");
        // So are SDEdit's strength and denoise.
        assert!(plain.get("strength").is_none() && plain.get("denoise").is_none());
        let g: GridSpec =
            toml::from_str("placement = { kind = \"karras\" }\nstrength = 0.5").unwrap();
        assert_eq!(g.tag(), "karras(strength=0.5)");
        let g: GridSpec = toml::from_str(
            "placement = { kind = \"karras\" }\ndiscard_penultimate = true\ndenoise = 0.75",
        )
        .unwrap();
        assert_eq!(g.tag(), "karras(discard_penultimate,denoise=0.75)");
    }

    #[test]
    fn labels_read_back_as_the_same_sampler_infinity_included() {
        // An infinite parameter (serde_json writes it as null) is labelled `inf`, which
        // parse_sampler reads back.
        for text in [
            "sa-solver(tmax=inf,tmin=0)",
            "euler(churn=3,tmax=20)",
            "restart(segments=[[3,2,0.06,0.3]],tmax=inf)",
            "dpm-adaptive(atol=0.001,rtol=0.01)",
        ] {
            let spec: SamplerSpec = crate::job::parse_sampler(text).unwrap();
            let l = label(&spec);
            assert_eq!(
                crate::job::parse_sampler(&l).unwrap(),
                spec,
                "{text} -> {l}"
            );
        }
        let spec = crate::job::parse_sampler("sa-solver(tmax=inf,tmin=0)").unwrap();
        assert_eq!(label(&spec), "sa-solver(tmax=inf,tmin=0)");
    }

    #[test]
    fn a_guidance_axis_refuses_a_gits_grid() {
        let text = r#"
out_dir = "out/x"
steps = [4]
metrics = ["fd"]
samplers = [{ kind = "euler" }]
[model]
kind = "checkpoint"
path = "missing.safetensors"
conditional = true
guidance = GUIDANCE
[grid]
placement = { kind = "gits" }
"#;
        let check = |g: &str| {
            let cfg: super::ExperimentConfig =
                toml::from_str(&text.replace("GUIDANCE", g)).unwrap();
            cfg.validate()
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default()
        };
        assert!(check("[1.0, 2.0]").contains("solved for one denoiser"));
        // One weight (or a one-weight list) may have a gits grid: the next check is the file.
        assert!(check("2.0").contains("does not exist"), "{}", check("2.0"));
        assert!(
            check("[2.0]").contains("does not exist"),
            "{}",
            check("[2.0]")
        );
    }

    #[test]
    fn the_floors_second_data_set_shares_no_row_with_the_first() {
        let rows = |part| Vec::<i64>::try_from(&fresh_rows(1000, 300, 7, part)).unwrap();
        let (a, b) = (rows(0), rows(1));
        let mut all: Vec<i64> = a.iter().chain(&b).copied().collect();
        all.sort_unstable();
        all.dedup();
        assert_eq!(all.len(), 600, "600 distinct rows");
        assert!(all.iter().all(|&r| (0..1000).contains(&r)));
        assert_eq!(a, rows(0), "the same rows for the same seed");
        assert_ne!(
            a,
            Vec::<i64>::try_from(&fresh_rows(1000, 300, 8, 0)).unwrap()
        );
        // Too few rows for two disjoint sets: drawn with replacement, still in range.
        let c = Vec::<i64>::try_from(&fresh_rows(500, 300, 7, 1)).unwrap();
        assert_eq!(c.len(), 300);
        assert!(c.iter().all(|&r| (0..500).contains(&r)));
    }
}
