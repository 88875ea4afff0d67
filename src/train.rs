//! `scoreflow train CONFIG.toml`: denoising score matching with Adam, warm-up, gradient
//! clipping and an EMA of the weights (half-life in samples, as NVlabs/edm), seeded so that a
//! resumed run continues exactly as an uninterrupted one.

use crate::checkpoint::{self, Checkpoint};
use crate::data::{self, DataConfig, Dataset};
use crate::loss::LossConfig;
use crate::nn::{Backbone, Network};
use crate::precond::Precond;
use crate::{device, job, npy};
use anyhow::{anyhow, bail, Context, Result};
use scoreflow_solvers::noise::mix;
use scoreflow_solvers::sde::Edm;
use scoreflow_solvers::{grid, GridKind, SamplerSpec};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;
use tch::{nn::VarStore, Device, Kind, Tensor};

fn auto() -> String {
    "auto".into()
}
fn d_batch() -> i64 {
    512
}
fn d_lr() -> f64 {
    1e-3
}
fn d_half_life() -> f64 {
    50_000.0
}

/// The largest relative standard deviation of a power-function EMA profile (`gamma = 0`, the
/// plain average of all weights so far: `1 / sqrt(12)`), to four places.
pub const MAX_EMA_STD: f64 = 0.2886;

/// The exponent `gamma` of EDM2's power-function EMA profile (weights `t^gamma` over the samples
/// `t` seen) with relative standard deviation `std` (Karras et al. 2024, eq. 3:
/// `sigma_rel = sqrt(gamma + 1) / ((gamma + 2) sqrt(gamma + 3))`): the positive root of
/// `(gamma + 2)^2 (gamma + 3) - (gamma + 1) / std^2`, by bisection (NVlabs/edm2's `std_to_exp`
/// takes the largest real root of the same cubic).
pub fn power_ema_exponent(std: f64) -> f64 {
    let t = std.powi(-2);
    let f = |g: f64| (g + 2.0).powi(2) * (g + 3.0) - t * (g + 1.0);
    let (mut lo, mut hi) = (0.0f64, 1.0f64);
    while f(hi) < 0.0 {
        hi *= 2.0;
    }
    for _ in 0..200 {
        let mid = 0.5 * (lo + hi);
        if f(mid) < 0.0 {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    0.5 * (lo + hi)
}

/// EDM2's power-function EMA decay, for the profile exponent `gamma` ([`power_ema_exponent`]
/// of its sigma_rel, computed once per run), for a step of `batch` samples that brings the
/// samples seen to `seen`: `beta = (1 - batch / seen)^(gamma + 1)` (NVlabs/edm2
/// `power_function_beta`). Over a run its products telescope: the EMA after `N` steps weights
/// step `k`'s parameters by `(k / N)^(gamma + 1) - ((k - 1) / N)^(gamma + 1)`, whatever the
/// initial weights.
pub fn power_ema_beta(gamma: f64, seen: f64, batch: f64) -> f64 {
    (1.0 - batch / seen).max(0.0).powf(gamma + 1.0)
}
fn d_ckpt() -> usize {
    1000
}
fn d_log() -> usize {
    100
}

/// The whole training configuration (a TOML file).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainConfig {
    #[serde(default)]
    pub seed: u64,
    #[serde(default = "auto")]
    pub device: String,
    /// Folder for the checkpoint, the log and sample snapshots.
    pub out_dir: PathBuf,
    pub data: DataConfig,
    #[serde(default)]
    pub model: ModelConfig,
    #[serde(default)]
    pub loss: LossConfig,
    pub train: TrainParams,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    #[serde(default)]
    pub precond: Precond,
    #[serde(default)]
    pub backbone: Backbone,
    /// Condition on the data's class labels (for classifier-free guidance).
    #[serde(default)]
    pub conditional: bool,
    /// A second output of the data's shape, the learned reverse variance (improved DDPM's
    /// `learn_sigma`), trained by the `ddpm` loss's variational bound and used by
    /// `ddpm --variance learned`.
    #[serde(default)]
    pub learned_sigmas: bool,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainParams {
    /// Optimizer steps in all.
    pub steps: usize,
    #[serde(default = "d_batch")]
    pub batch: i64,
    /// Adam learning rate (betas 0.9, 0.999, eps 1e-8).
    #[serde(default = "d_lr")]
    pub lr: f64,
    /// Linear learning-rate warm-up over this many steps.
    #[serde(default)]
    pub warmup_steps: usize,
    /// Clip the global gradient norm to this value.
    pub grad_clip: Option<f64>,
    /// EMA half-life in training samples.
    #[serde(default = "d_half_life")]
    pub ema_half_life: f64,
    /// EDM's EMA ramp-up: the half-life is at most this fraction of the samples seen so far.
    pub ema_rampup: Option<f64>,
    /// EDM2's power-function EMA instead of the half-life (Karras et al. 2024, "Analyzing and
    /// Improving the Training Dynamics of Diffusion Models", sec. 3.1): its relative standard
    /// deviation sigma_rel, in (0, 0.2886] (EDM2's 0.05 and 0.10, for example).
    pub ema_std: Option<f64>,
    /// EDM2's post-hoc EMA: track one power-function EMA per sigma_rel here and write them to
    /// `out_dir/posthoc/` every `posthoc_every` steps (and at the end), for `scoreflow
    /// posthoc-ema` to combine into any other sigma_rel afterwards (EDM2 tracks 0.05 and 0.10).
    pub posthoc_stds: Option<Vec<f64>>,
    /// Steps between post-hoc EMA snapshots (`checkpoint_every` by default).
    pub posthoc_every: Option<usize>,
    #[serde(default = "d_ckpt")]
    pub checkpoint_every: usize,
    #[serde(default = "d_log")]
    pub log_every: usize,
    /// Conditional models: the fraction of labels replaced by "no class" (Ho & Salimans 2022).
    #[serde(default = "d_dropout")]
    pub label_dropout: f64,
    /// "float32", or "bf16" for bf16 autocast of the forward pass (weights, optimizer and EMA
    /// stay float32).
    #[serde(default = "d_precision")]
    pub precision: String,
    /// Samples drawn from the EMA network at each checkpoint (default 1000 vectors or 100
    /// images; 0 draws none).
    #[serde(default)]
    pub snapshot_samples: Option<usize>,
}

fn d_precision() -> String {
    "float32".into()
}

fn d_dropout() -> f64 {
    0.1
}

impl TrainConfig {
    /// Parse a TOML config; unknown keys and wrong types are errors that name the key and line.
    pub fn from_toml(text: &str, origin: &Path) -> Result<Self> {
        let cfg: TrainConfig = toml::from_str(text).map_err(|e| {
            anyhow!(
                "{}: {}",
                origin.display(),
                e.to_string().trim_end().replace('\n', " ")
            )
        })?;
        cfg.validate()?;
        Ok(cfg)
    }
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read config {}", path.display()))?;
        Self::from_toml(&text, path)
    }
    pub fn validate(&self) -> Result<()> {
        self.model.precond.validate()?;
        self.model.backbone.validate()?;
        self.loss.validate()?;
        self.loss.check_model(&self.model)?;
        let t = &self.train;
        if t.steps == 0 || t.batch < 1 || t.checkpoint_every == 0 || t.log_every == 0 {
            bail!("train.steps, train.batch, train.checkpoint_every and train.log_every must be at least 1");
        }
        if !(t.lr > 0.0 && t.lr.is_finite() && t.ema_half_life > 0.0 && t.ema_half_life.is_finite())
        {
            bail!("train.lr and train.ema_half_life must be positive and finite");
        }
        // Sizes that could not be allocated (a mistyped number) are errors, not aborts.
        let data_num = match &self.data {
            DataConfig::Moons { num }
            | DataConfig::SwissRoll { num }
            | DataConfig::Gmm8 { num }
            | DataConfig::Checkerboard { num }
            | DataConfig::Pinwheel { num }
            | DataConfig::Mixture { num, .. } => *num,
            _ => 0,
        };
        for (what, v, max) in [
            ("train.batch", t.batch.max(0) as u64, 1u64 << 24),
            ("data.num", data_num as u64, data::MAX_NUM as u64),
            (
                "train.snapshot_samples",
                t.snapshot_samples.unwrap_or(0) as u64,
                1 << 20,
            ),
        ] {
            if v > max {
                bail!("{what} = {v} is more than {max}");
            }
        }
        if let Some(std) = t.ema_std {
            if !(std > 0.0 && std <= MAX_EMA_STD) {
                bail!(
                    "train.ema_std (EDM2's sigma_rel) must be within (0, {MAX_EMA_STD}], got {}",
                    scoreflow_solvers::Num(std)
                );
            }
            if t.ema_rampup.is_some() {
                bail!("train.ema_rampup applies to the half-life EMA, not with train.ema_std");
            }
        }
        if let Some(stds) = &t.posthoc_stds {
            if stds.is_empty() || stds.len() > 8 {
                bail!("train.posthoc_stds must list 1 to 8 values of sigma_rel");
            }
            if let Some(bad) = stds.iter().find(|s| !(**s > 0.0 && **s <= MAX_EMA_STD)) {
                bail!(
                    "train.posthoc_stds: each sigma_rel must be within (0, {MAX_EMA_STD}], got {}",
                    scoreflow_solvers::Num(*bad)
                );
            }
        }
        if t.posthoc_every == Some(0) || (t.posthoc_every.is_some() && t.posthoc_stds.is_none()) {
            bail!("train.posthoc_every must be at least 1, and needs train.posthoc_stds");
        }
        if let Some(r) = t.ema_rampup {
            if !(r > 0.0 && r.is_finite()) {
                bail!(
                    "train.ema_rampup must be positive, got {}",
                    scoreflow_solvers::Num(r)
                );
            }
        }
        if self.out_dir.as_os_str().is_empty() {
            bail!("out_dir must not be empty");
        }
        if !matches!(t.precision.as_str(), "float32" | "bf16") {
            bail!(
                "train.precision must be \"float32\" or \"bf16\", got \"{}\"",
                t.precision
            );
        }
        if !(0.0..=1.0).contains(&t.label_dropout) {
            bail!("train.label_dropout must be in [0, 1]");
        }
        if let Some(c) = t.grad_clip {
            if !(c > 0.0) {
                bail!("train.grad_clip must be positive");
            }
        }
        device::parse(&self.device)?;
        Ok(())
    }
}

/// A network with its variables.
pub struct Model {
    pub vs: VarStore,
    pub net: Network,
}

impl Model {
    pub fn new(cfg: &ModelConfig, shape: &[i64], num_classes: usize, dev: Device) -> Model {
        let vs = VarStore::new(dev);
        let net = Network::with_variance_output(
            &vs.root(),
            &cfg.precond,
            &cfg.backbone,
            shape,
            num_classes,
            cfg.learned_sigmas,
        );
        Model { vs, net }
    }
    /// Variables sorted by name (a stable order for the optimizer).
    pub fn named(&self) -> Vec<(String, Tensor)> {
        let mut v: Vec<(String, Tensor)> = self.vs.variables().into_iter().collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }
    fn load_prefix(&mut self, ck: &Checkpoint, prefix: &str) -> Result<()> {
        let named = self.named();
        let stored = ck
            .tensors
            .keys()
            .filter(|k| k.starts_with(&format!("{prefix}.")))
            .count();
        if stored != named.len() {
            bail!(
                "the checkpoint has {stored} {prefix} tensors, its config's network has {}",
                named.len()
            );
        }
        for (name, var) in named {
            let src = ck.tensor(&format!("{prefix}.{name}"))?;
            if src.size() != var.size() {
                bail!(
                    "checkpoint tensor {prefix}.{name} has shape {:?}, the model expects {:?}",
                    src.size(),
                    var.size()
                );
            }
            if src.is_floating_point() && src.isfinite().all().int64_value(&[]) == 0 {
                bail!("checkpoint tensor {prefix}.{name} contains NaN or infinite values");
            }
            tch::no_grad(|| var.shallow_clone().copy_(src));
        }
        Ok(())
    }
}

/// The network stored in a checkpoint, with its EMA weights, ready to sample.
pub fn load_for_sampling(path: &Path, dev: Device) -> Result<(Model, TrainConfig)> {
    let ck = checkpoint::load(path)?;
    from_checkpoint(&ck, dev).with_context(|| format!("checkpoint {}", path.display()))
}

fn from_checkpoint(ck: &Checkpoint, dev: Device) -> Result<(Model, TrainConfig)> {
    let cfg: TrainConfig =
        serde_json::from_str(ck.meta("config")?).context("checkpoint config is not valid")?;
    let shape: Vec<i64> = serde_json::from_str(ck.meta("shape")?).context("checkpoint shape")?;
    let classes: usize = ck
        .meta("num_classes")?
        .parse()
        .context("checkpoint num_classes")?;
    // The stored model config and shape must describe a network these tensors can fill (the
    // rest of the config, its device among it, is the training run's business).
    cfg.model
        .precond
        .validate()
        .and_then(|_| cfg.model.backbone.validate())
        .and_then(|_| {
            if shape.is_empty() || shape.iter().any(|&d| d < 1) {
                bail!("per-sample shape {shape:?} has no elements");
            }
            cfg.model.backbone.check_shape(&shape)
        })?;
    if cfg.model.conditional && classes == 0 {
        bail!("its config is class-conditional but it stores num_classes = 0");
    }
    // The weights are overwritten, but building them draws from the process-wide generator.
    let mut m = {
        let _turn = exclusive_rng();
        Model::new(&cfg.model, &shape, classes, dev)
    };
    m.load_prefix(ck, "ema")?;
    Ok((m, cfg))
}

/// Options of one invocation (the default: a fresh, verbose, untimed run to train.steps).
#[derive(Clone, Debug, Default)]
pub struct RunOpts {
    pub resume: bool,
    /// Stop after this step (default: train.steps); for tests and interrupted runs.
    pub stop_at: Option<usize>,
    pub quiet: bool,
    /// Time the steps from this one to the end (the device synchronized at both ends), for
    /// `bench-train`; the time is in `Report::timed`.
    pub time_from: Option<usize>,
}

/// What a run produced.
pub struct Report {
    /// Per-step mean training loss, for the steps this invocation ran: (step, loss).
    pub losses: Vec<(usize, f64)>,
    pub checkpoint: PathBuf,
    pub final_step: usize,
    /// Per-sample shape of the data, number of classes (0: unconditional) and the number of
    /// trained parameters (the fixed Fourier frequencies excluded).
    pub shape: Vec<i64>,
    pub num_classes: usize,
    pub parameters: i64,
    /// With `RunOpts::time_from`: the number of timed steps and their wall time in seconds.
    pub timed: Option<(usize, f64)>,
}

struct Adam {
    m: Vec<Tensor>,
    v: Vec<Tensor>,
}

fn step_seed(seed: u64, step: usize) -> i64 {
    (mix(seed ^ mix(step as u64 ^ 0x7EA1)) >> 1) as i64
}

pub fn checkpoint_path(cfg: &TrainConfig) -> PathBuf {
    checkpoint_path_in(&cfg.out_dir)
}

/// The checkpoint of a run whose `out_dir` is `dir`.
pub fn checkpoint_path_in(dir: &Path) -> PathBuf {
    dir.join("checkpoint.safetensors")
}

/// Training reseeds libtorch's process-wide generator at every step (so a resumed run draws
/// the same numbers as an uninterrupted one); runs in one process take turns.
static TRAINING: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Hold libtorch's process-wide generator for a seeded computation. Whatever else draws from it
/// while seeded computations may run beside it (network construction in the test binaries) takes
/// it too, or the seeded computation's numbers change.
pub fn exclusive_rng() -> std::sync::MutexGuard<'static, ()> {
    TRAINING.lock().unwrap_or_else(|e| e.into_inner())
}

/// Train (or resume) as the config says.
pub fn run(cfg: &TrainConfig, opts: &RunOpts) -> Result<Report> {
    let _turn = exclusive_rng();
    let dev = device::parse(&cfg.device)?;
    let data = data::load(&cfg.data, cfg.seed)?;
    if let crate::loss::LossConfig::Ddpm {
        decoder: Some(crate::loss::Decoder::Discretized { levels }),
        ..
    } = &cfg.loss
    {
        crate::nll::check_on_levels(&data.x, *levels)
            .map_err(|e| anyhow::anyhow!("loss.decoder = \"discretized:{levels}\": {e}"))?;
    }
    let shape = data.shape();
    cfg.model.backbone.check_shape(&shape)?;
    cfg.model.backbone.check_attention(&shape)?;
    let classes = if cfg.model.conditional {
        if data.num_classes == 0 || data.labels.is_none() {
            bail!("model.conditional needs labelled data; this data set has no labels");
        }
        data.num_classes
    } else {
        0
    };
    crate::npy::check_out_dir(&cfg.out_dir)?;
    let ckpt_path = checkpoint_path(cfg);

    tch::manual_seed(step_seed(cfg.seed, usize::MAX));
    let mut model = Model::new(&cfg.model, &shape, classes, dev);
    let mut ema = Model::new(&cfg.model, &shape, classes, dev);
    let params = model.named();
    let trainable: Vec<usize> = (0..params.len())
        .filter(|&i| params[i].1.requires_grad())
        .collect();
    let adam = Adam {
        m: trainable
            .iter()
            .map(|&i| params[i].1.zeros_like())
            .collect(),
        v: trainable
            .iter()
            .map(|&i| params[i].1.zeros_like())
            .collect(),
    };
    let ema_params = ema.named();
    tch::no_grad(|| {
        for ((_, e), (_, p)) in ema_params.iter().zip(&params) {
            e.shallow_clone().copy_(p);
        }
    });

    // EDM2's post-hoc EMAs (one per sigma_rel), copies of the initial weights (forgotten at the
    // first step, where the power-function beta is 0).
    let phema: Vec<Vec<Tensor>> = (0..cfg.train.posthoc_stds.as_ref().map_or(0, |s| s.len()))
        .map(|_| params.iter().map(|(_, p)| p.detach().copy()).collect())
        .collect();
    let mut start = 0usize;
    let mut run_id = fresh_run_id();
    if opts.resume {
        let ck = checkpoint::load(&ckpt_path).with_context(|| "cannot resume")?;
        // A resumed run is the same run (a checkpoint older than run ids starts one).
        if let Ok(id) = ck.meta("run") {
            run_id = id.to_string();
        }
        let in_ck = || format!("cannot resume from checkpoint {}", ckpt_path.display());
        let saved: TrainConfig = serde_json::from_str(ck.meta("config").with_context(in_ck)?)
            .context("checkpoint config is not valid")
            .with_context(in_ck)?;
        let comparable = |c: &TrainConfig| {
            (
                c.seed,
                c.data.clone(),
                c.model.clone(),
                c.loss.clone(),
                c.train.batch,
            )
        };
        if comparable(&saved) != comparable(cfg) {
            bail!("checkpoint {} was written by a different config (seed, data, model, loss or batch differ)", ckpt_path.display());
        }
        model.load_prefix(&ck, "net").with_context(in_ck)?;
        ema.load_prefix(&ck, "ema").with_context(in_ck)?;
        for (k, &i) in trainable.iter().enumerate() {
            let name = &params[i].0;
            for (state, prefix) in [(&adam.m[k], "adam_m"), (&adam.v[k], "adam_v")] {
                let key = format!("{prefix}.{name}");
                let src = ck.tensor(&key).with_context(in_ck)?;
                if src.size() != state.size() {
                    bail!(
                        "{}: tensor {key} has shape {:?}, expected {:?}",
                        in_ck(),
                        src.size(),
                        state.size()
                    );
                }
                if src.isfinite().all().int64_value(&[]) == 0 {
                    bail!("{}: tensor {key} has NaN or infinite values", in_ck());
                }
                tch::no_grad(|| state.shallow_clone().copy_(src));
            }
        }
        for (j, tensors) in phema.iter().enumerate() {
            for ((name, _), dst) in params.iter().zip(tensors) {
                let key = format!("phema{j}.{name}");
                let src = ck.tensor(&key).with_context(|| {
                    format!(
                        "{} (train.posthoc_stds was added after it was written?)",
                        in_ck()
                    )
                })?;
                if src.size() != dst.size() {
                    bail!("{}: tensor {key} has shape {:?}", in_ck(), src.size());
                }
                tch::no_grad(|| dst.shallow_clone().copy_(src));
            }
        }
        start = ck
            .meta("step")
            .and_then(|s| s.parse().context("step is not a whole number"))
            .with_context(in_ck)?;
    }
    train_loop(
        cfg, opts, &data, model, ema, params, trainable, adam, start, dev, &ckpt_path, phema,
        &run_id,
    )
}

/// A new training run's identifier, written into its checkpoints and post-hoc EMA snapshots: a
/// fresh run into a folder gets another, so `posthoc-ema` leaves out an earlier run's snapshots
/// (not from libtorch's generator, which training seeds).
fn fresh_run_id() -> String {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    h.write_u128(now);
    h.write_u32(std::process::id());
    format!("{:016x}", h.finish())
}

#[allow(clippy::too_many_arguments)]
fn train_loop(
    cfg: &TrainConfig,
    opts: &RunOpts,
    data: &Dataset,
    model: Model,
    ema: Model,
    params: Vec<(String, Tensor)>,
    trainable: Vec<usize>,
    adam: Adam,
    start: usize,
    dev: Device,
    ckpt_path: &Path,
    phema: Vec<Vec<Tensor>>,
    run_id: &str,
) -> Result<Report> {
    let t = &cfg.train;
    if start > t.steps {
        bail!(
            "the checkpoint is at step {start}, past train.steps = {}; raise train.steps to train further",
            t.steps
        );
    }
    let end = opts.stop_at.unwrap_or(t.steps).min(t.steps);
    let x_all = data.x.to_device(dev);
    let noise_all = data.noise.as_ref().map(|n| n.to_device(dev));
    let labels_all = if model.net.num_classes > 0 {
        data.labels.as_ref().map(|l| l.to_device(dev))
    } else {
        None
    };
    let n_data = data.len();
    let ema_params = ema.named();
    let (b1, b2, eps) = (0.9f64, 0.999f64, 1e-8f64);
    let mut losses = Vec::new();
    let mut pending: Vec<(usize, Tensor)> = Vec::new();
    let mut last_good = if start > 0 { Some(start) } else { None };
    // What a failure leaves: this run's last checkpoint, or none (a file in the folder is then
    // an earlier run's).
    let kept = |good: Option<usize>| match good {
        Some(g) => format!(
            "the last good checkpoint (step {g}) is kept at {}",
            ckpt_path.display()
        ),
        None if ckpt_path.exists() => format!(
            "this run (run {run_id}) wrote no checkpoint ({} is an earlier run's)",
            ckpt_path.display()
        ),
        None => "no checkpoint had been written yet".to_string(),
    };
    let bar = if opts.quiet {
        indicatif::ProgressBar::hidden()
    } else {
        indicatif::ProgressBar::new((end.saturating_sub(start)) as u64)
    };
    bar.set_style(
        indicatif::ProgressStyle::with_template("{bar:30} {pos}/{len} {msg} eta {eta}").unwrap(),
    );
    // A fresh run starts a fresh log; a resumed one appends to it. The log (and the folder) are
    // opened at the first line, so a run that fails before it leaves nothing behind; a run that
    // fails later keeps the lines it logged (the loss up to the failure).
    let log_path = cfg.out_dir.join("log.jsonl");
    let mut log: Option<std::fs::File> = None;
    let mut clock = Instant::now();
    let mut interval_samples = 0i64;

    // Handles for the multi-tensor optimizer calls.
    let trainable_t: Vec<Tensor> = trainable
        .iter()
        .map(|&i| params[i].1.shallow_clone())
        .collect();
    let params_t: Vec<Tensor> = params.iter().map(|(_, p)| p.shallow_clone()).collect();
    let ema_t: Vec<Tensor> = ema_params.iter().map(|(_, e)| e.shallow_clone()).collect();
    // The power-function EMAs' exponents, once per run.
    let ema_gamma = t.ema_std.map(power_ema_exponent);
    let posthoc_gammas: Vec<f64> = t
        .posthoc_stds
        .iter()
        .flatten()
        .map(|&s| power_ema_exponent(s))
        .collect();
    let mut step_t = Tensor::zeros([], (Kind::Float, dev));
    let loss_fn = cfg.loss.prepare(dev);
    let mut timer: Option<(usize, Instant)> = None;
    let mut timed = None;
    for step in start..end {
        if opts.time_from == Some(step) {
            device::sync(dev);
            timer = Some((step, Instant::now()));
        }
        tch::manual_seed(step_seed(cfg.seed, step));
        let idx = Tensor::randint(n_data, [t.batch], (Kind::Int64, dev));
        let y = x_all.index_select(0, &idx);
        // Label dropout: replace a fraction of the labels by the "no class" label.
        let labels = labels_all.as_ref().map(|l| {
            let l = l.index_select(0, &idx);
            let drop = Tensor::rand([t.batch], (Kind::Float, dev)).lt(t.label_dropout);
            l.where_self(
                &drop.logical_not(),
                &Tensor::full([t.batch], model.net.num_classes as i64, (Kind::Int64, dev)),
            )
        });
        for &i in &trainable {
            let mut p = params[i].1.shallow_clone();
            p.zero_grad();
        }
        let z = noise_all.as_ref().map(|n| n.index_select(0, &idx));
        let per_sample = || loss_fn.loss_with_noise(&model.net, &y, labels.as_ref(), z.as_ref());
        let loss = if t.precision == "bf16" {
            crate::autocast::bf16(dev, per_sample)
        } else {
            per_sample()
        }
        .to_kind(Kind::Float)
        .mean(Kind::Float);
        loss.backward();
        tch::no_grad(|| -> Result<()> {
            let grads: Vec<Tensor> = trainable.iter().map(|&i| params[i].1.grad()).collect();
            let scale = match t.grad_clip {
                Some(c) => {
                    let norm = crate::optim::global_norm(&grads)?.to_kind(Kind::Float);
                    Some((norm + 1e-6).reciprocal().multiply_scalar(c).clamp_max(1.0))
                }
                None => None,
            };
            let lr = t.lr
                * if t.warmup_steps > 0 {
                    ((step + 1) as f64 / t.warmup_steps as f64).min(1.0)
                } else {
                    1.0
                };
            // One fused Adam step over every trainable tensor (libtorch's at::_fused_adam_).
            let _ = step_t.fill_((step + 1) as f64);
            crate::optim::adam_step(
                &trainable_t,
                &grads,
                &adam.m,
                &adam.v,
                &step_t,
                scale.as_ref(),
                lr,
                (b1, b2),
                eps,
            )?;
            // EMA with a half-life in samples (NVlabs/edm training_loop.py), or EDM2's
            // power-function EMA.
            let seen = ((step + 1) as f64) * t.batch as f64;
            let beta = match ema_gamma {
                Some(g) => power_ema_beta(g, seen, t.batch as f64),
                None => {
                    let half_life = match t.ema_rampup {
                        Some(r) => t.ema_half_life.min(seen * r),
                        None => t.ema_half_life,
                    };
                    0.5f64.powf(t.batch as f64 / half_life.max(1e-8))
                }
            };
            for (tracked, g) in phema.iter().zip(&posthoc_gammas) {
                let b = power_ema_beta(*g, seen, t.batch as f64);
                crate::optim::lerp(tracked, &params_t, 1.0 - b)?;
            }
            crate::optim::lerp(&ema_t, &params_t, 1.0 - beta)
        })?;
        pending.push((step, loss.detach()));
        interval_samples += t.batch;
        bar.inc(1);
        let done = step + 1;
        if let (Some((from, t0)), true) = (timer, done == end) {
            device::sync(dev);
            timed = Some((done - from, t0.elapsed().as_secs_f64()));
        }
        let at_log = done % t.log_every == 0 || done == end;
        let at_ckpt = done % t.checkpoint_every == 0 || done == end;
        if at_log || at_ckpt {
            // One synchronization per interval: read the losses, check them.
            let values: Vec<f64> = Tensor::stack(
                &pending
                    .iter()
                    .map(|(_, l)| l.shallow_clone())
                    .collect::<Vec<_>>(),
                0,
            )
            .to_device(Device::Cpu)
            .to_kind(Kind::Double)
            .try_into()?;
            let steps: Vec<usize> = pending.drain(..).map(|(s, _)| s).collect();
            if let Some((s, _)) = steps.iter().zip(&values).find(|(_, v)| !v.is_finite()) {
                bar.abandon();
                bail!(
                    "non-finite training loss at step {}; {}",
                    s + 1,
                    kept(last_good)
                );
            }
            losses.extend(steps.iter().map(|s| s + 1).zip(values.iter().copied()));
            let secs = clock.elapsed().as_secs_f64();
            let mean = values.iter().sum::<f64>() / values.len() as f64;
            let rate = interval_samples as f64 / secs.max(1e-9);
            bar.set_message(format!("loss {mean:.4} {rate:.0} samples/s"));
            let log = match log.as_mut() {
                Some(f) => f,
                None => {
                    crate::npy::create_out_dir(&cfg.out_dir)?;
                    if !opts.resume {
                        let _ = std::fs::remove_file(&log_path);
                    }
                    log.insert(crate::experiment::open_for_append(&log_path)?)
                }
            };
            writeln!(
                log,
                "{}",
                serde_json::json!({"step": done, "loss": mean, "samples_per_s": rate, "run": run_id})
            )?;
            clock = Instant::now();
            interval_samples = 0;
        }
        if at_ckpt {
            let mut tensors = BTreeMap::new();
            for (name, p) in &params {
                tensors.insert(format!("net.{name}"), p.shallow_clone());
            }
            for (name, e) in &ema_params {
                tensors.insert(format!("ema.{name}"), e.shallow_clone());
            }
            for (j, &i) in trainable.iter().enumerate() {
                tensors.insert(format!("adam_m.{}", params[i].0), adam.m[j].shallow_clone());
                tensors.insert(format!("adam_v.{}", params[i].0), adam.v[j].shallow_clone());
            }
            for (j, ts) in phema.iter().enumerate() {
                for ((name, _), e) in params.iter().zip(ts) {
                    tensors.insert(format!("phema{j}.{name}"), e.shallow_clone());
                }
            }
            let finite = tensors
                .values()
                .all(|t| t.isfinite().all().int64_value(&[]) != 0);
            if !finite {
                bail!("non-finite weights at step {done}; {}", kept(last_good));
            }
            let mut meta = HashMap::new();
            meta.insert("format".into(), checkpoint::FORMAT.into());
            meta.insert("config".into(), serde_json::to_string(cfg)?);
            meta.insert("step".into(), done.to_string());
            meta.insert("shape".into(), serde_json::to_string(&data.shape())?);
            meta.insert("num_classes".into(), model.net.num_classes.to_string());
            meta.insert("scoreflow_version".into(), env!("CARGO_PKG_VERSION").into());
            meta.insert("run".into(), run_id.into());
            checkpoint::save(ckpt_path, &tensors, meta)?;
            last_good = Some(done);
            snapshot(cfg, &ema, dev).with_context(|| {
                format!(
                    "sampling the training snapshot of step {done} from the EMA weights (the checkpoint of step {done} is written at {})",
                    ckpt_path.display()
                )
            })?;
        }
        if let Some(stds) = &t.posthoc_stds {
            let every = t.posthoc_every.unwrap_or(t.checkpoint_every);
            if done % every == 0 || done == end {
                write_posthoc_snapshot(
                    cfg,
                    stds,
                    &params,
                    &phema,
                    done,
                    &data.shape(),
                    &model,
                    run_id,
                )?;
            }
        }
    }
    bar.finish_and_clear();
    Ok(Report {
        losses,
        checkpoint: ckpt_path.to_path_buf(),
        final_step: end.max(start),
        shape: data.shape(),
        num_classes: model.net.num_classes,
        parameters: trainable.iter().map(|&i| params[i].1.numel() as i64).sum(),
        timed,
    })
}

/// Sample from the EMA network (Heun, 32 steps) into `out_dir/samples.npy` (1000 vectors, or
/// 100 images, also drawn as `out_dir/samples.png`).
/// The folder of a run's post-hoc EMA snapshots.
pub fn posthoc_dir(out_dir: &Path) -> PathBuf {
    out_dir.join("posthoc")
}

/// Write the post-hoc EMAs after `step` steps to `out_dir/posthoc/{step:08}.safetensors`:
/// tensors `phema{j}.{param}` for each sigma_rel `stds[j]`, with the samples seen, the sigma_rel
/// list and the training config in the metadata.
#[allow(clippy::too_many_arguments)]
fn write_posthoc_snapshot(
    cfg: &TrainConfig,
    stds: &[f64],
    params: &[(String, Tensor)],
    phema: &[Vec<Tensor>],
    step: usize,
    shape: &[i64],
    model: &Model,
    run_id: &str,
) -> Result<()> {
    let dir = posthoc_dir(&cfg.out_dir);
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let mut tensors = BTreeMap::new();
    for (j, ts) in phema.iter().enumerate() {
        for ((name, _), e) in params.iter().zip(ts) {
            tensors.insert(format!("phema{j}.{name}"), e.shallow_clone());
        }
    }
    let mut meta = HashMap::new();
    meta.insert("format".into(), checkpoint::FORMAT.into());
    meta.insert("posthoc".into(), POSTHOC_FORMAT.into());
    meta.insert("config".into(), serde_json::to_string(cfg)?);
    meta.insert("step".into(), step.to_string());
    meta.insert(
        "samples".into(),
        (step as i64 * cfg.train.batch).to_string(),
    );
    meta.insert("stds".into(), serde_json::to_string(stds)?);
    meta.insert("shape".into(), serde_json::to_string(shape)?);
    meta.insert("num_classes".into(), model.net.num_classes.to_string());
    meta.insert("run".into(), run_id.into());
    checkpoint::save(&dir.join(format!("{step:08}.safetensors")), &tensors, meta)
}

/// The `posthoc` metadata of a post-hoc EMA snapshot (a checkpoint file of post-hoc EMAs).
pub const POSTHOC_FORMAT: &str = "scoreflow-posthoc-ema-v1";

fn snapshot(cfg: &TrainConfig, ema: &Model, dev: Device) -> Result<()> {
    let (lo, hi) = cfg.model.precond.sigma_range().unwrap_or((0.002, 80.0));
    let sde = Edm::default();
    let sigmas = grid::sigmas(&GridKind::Karras { rho: 7.0 }, 32, lo, hi, &sde)?;
    let shape = ema.net.shape.clone();
    let n = cfg
        .train
        .snapshot_samples
        .unwrap_or(if shape.len() == 3 { 100 } else { 1000 });
    if n == 0 {
        return Ok(());
    }
    let z = job::initial_noise_shaped(cfg.seed, n, &shape, dev, Kind::Float)?;
    let (x, _) = job::run_from_noise(
        &SamplerSpec::Heun(Default::default()),
        &ema.net,
        &sde,
        &sigmas,
        &z,
        cfg.seed,
        0,
        &mut |_, _| {},
    )?;
    npy::write_f32(&cfg.out_dir.join("samples.npy"), &x)?;
    if shape.len() == 3 {
        crate::image::write_grid(&cfg.out_dir.join("samples.png"), &x, 10)?;
    }
    Ok(())
}
