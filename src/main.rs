//! The `scoreflow` command.

use anyhow::{bail, Result};
use clap::{Args, CommandFactory, FromArgMatches, Parser, Subcommand};
use scoreflow::job::{self, GridArgs, SamplerArgs};
use scoreflow::{bench, compare, device, model, npy, train};
use scoreflow_solvers::Denoiser;
use std::path::PathBuf;
use std::time::Instant;
use tch::{Kind, Tensor};

#[derive(Parser)]
#[command(
    name = "scoreflow",
    version,
    about = "Diffusion samplers on libtorch: sample, compare, benchmark"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

// Parsed once per process; boxing the larger argument structs would buy nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
enum Command {
    /// Run an experiment: samplers x steps x seeds, results table and quality-vs-NFE plots.
    Run(scoreflow::experiment::RunArgs),
    /// Redraw an experiment's results.csv and plots from its results.jsonl; with several
    /// folders and --out, draw their results together (lines tagged with the folder names).
    Plot {
        /// The experiment's output folder (several, with --out).
        #[arg(required = true)]
        dirs: Vec<PathBuf>,
        /// With several folders: where to write the merged results.csv, summary.md and plot.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Run one sampler on an exact model or a trained network and write the samples as .npy.
    Sample(SampleArgs),
    /// Compare samplers across step counts on an exact model: a table of error vs NFE.
    Compare(compare::CompareArgs),
    /// Time each sampler against one denoiser call (wall / (NFE x call)).
    Bench(bench::BenchArgs),
    /// Train a preconditioned denoiser from a TOML config (see experiments/*.toml).
    Train(TrainArgs),
    /// Training throughput (samples/s) of one or more training configs.
    BenchTrain(bench::BenchTrainArgs),
    /// Negative log-likelihood of data through the probability-flow ODE, or the DDPM variational
    /// bound of the discrete reverse chain (--bound).
    Nll(scoreflow::nll::NllArgs),
    /// EDM2's post-hoc EMA: the EMA of any sigma_rel from a run's power-function EMA snapshots
    /// ([train] posthoc_stds), written as a checkpoint.
    PosthocEma(scoreflow::posthoc::PosthocArgs),
    /// GITS or OSS: choose step grids for a model by dynamic programming over a teacher's
    /// trajectories (Chen et al. 2024; Pei et al. 2025) and write them as a levels placement
    /// (--grid FILE, [grid]).
    OptimizeGrid(scoreflow::optimize_grid::OptimizeGridArgs),
    /// Fréchet distance of a digits model's samples on in-project classifier features.
    EvalDigits(scoreflow::fid::EvalDigitsArgs),
    /// List the samplers: name, NFE for n steps, stochastic or not, parameters and defaults.
    Samplers {
        /// Print one JSON object per sampler instead of the table.
        #[arg(long)]
        json: bool,
    },
}

/// The samplers of the registry with their defaults (the `[[samplers]]` table of an experiment:
/// `kind` plus the parameter keys).
fn samplers_cmd(json: bool) -> Result<()> {
    use scoreflow_solvers::samplers::NAMES;
    use scoreflow_solvers::SamplerSpec;
    // The name column as wide as the longest name.
    let w = NAMES.iter().map(|n| n.len()).max().unwrap_or(4);
    if !json {
        println!(
            "{:<w$} {:<14} {:<6} {:<7} parameters (config key = default)",
            "name", "nfe", "noise", "inverts"
        );
    }
    for name in NAMES {
        let spec = SamplerSpec::from_name(name)?;
        // Whether `sample --invert` takes it at the defaults, and whether exactly.
        let sampler = spec.build()?;
        let exact = sampler.exact_inverse().is_some();
        let inverts = sampler.invertible() || exact;
        // `k n + c`, fitted where the count has become linear (pndm's start steps end at n = 4),
        // with the smallest n from which it holds where that is not 1.
        let nfe = match (spec.nfe(20), spec.nfe(21)) {
            (Some(a), Some(b)) => {
                let (k, c) = (b as i64 - a as i64, a as i64 - 20 * (b as i64 - a as i64));
                let kn = if k == 1 {
                    "n".to_string()
                } else {
                    format!("{k}n")
                };
                let mut text = match c {
                    0 => kn,
                    c if c < 0 => format!("{kn}-{}", -c),
                    c => format!("{kn}+{c}"),
                };
                let from = (1..=20)
                    .rev()
                    .find(|&n| spec.nfe(n) != Some((k * n as i64 + c) as usize))
                    .map_or(1, |n| n + 1);
                if from > 1 {
                    text += &format!(" (n >= {from})");
                }
                text
            }
            _ => "adaptive".to_string(),
        };
        // As a TOML table (what an experiment's [[samplers]] entry takes; infinity is `inf`).
        let mut table = toml::Table::try_from(&spec)?;
        table.remove("kind");
        if json {
            let params: serde_json::Map<String, serde_json::Value> = table
                .iter()
                .map(|(k, v)| {
                    let v = match v {
                        toml::Value::Float(f) if !f.is_finite() => serde_json::json!(v.to_string()),
                        _ => serde_json::to_value(v).unwrap_or(serde_json::Value::Null),
                    };
                    (k.clone(), v)
                })
                .collect();
            let line = serde_json::json!({
                "name": name, "nfe": nfe, "stochastic": spec.is_stochastic(),
                "invertible": inverts, "exact_inversion": exact, "parameters": params,
            });
            println!("{line}");
        } else {
            let text: Vec<String> = table.iter().map(|(k, v)| format!("{k} = {v}")).collect();
            let yes = |b: bool| if b { "yes" } else { "no" };
            let noise = yes(spec.is_stochastic());
            let inverts = if exact { "exact" } else { yes(inverts) };
            println!(
                "{name:<w$} {nfe:<14} {noise:<6} {inverts:<7} {}",
                text.join(", ")
            );
        }
    }
    Ok(())
}

#[derive(Args)]
struct TrainArgs {
    /// The training config (TOML).
    config: PathBuf,
    /// Continue from the checkpoint in the config's out_dir.
    #[arg(long)]
    resume: bool,
    /// Override the config's device: auto, cpu, cuda or cuda:N.
    #[arg(long)]
    device: Option<String>,
    /// Stop after this many steps in all (the run can be resumed later).
    #[arg(long)]
    stop_at: Option<usize>,
}

fn train_cmd(a: TrainArgs) -> Result<()> {
    if a.stop_at == Some(0) {
        anyhow::bail!("--stop-at must be at least 1");
    }
    let mut cfg = train::TrainConfig::load(&a.config)?;
    if let Some(d) = a.device {
        device::parse(&d)?;
        cfg.device = d;
    }
    let report = train::run(
        &cfg,
        &train::RunOpts {
            resume: a.resume,
            stop_at: a.stop_at,
            ..Default::default()
        },
    )?;
    let last = report.losses.last().map(|l| l.1);
    println!(
        "{}",
        serde_json::json!({"step": report.final_step, "last_loss": last, "checkpoint": report.checkpoint.display().to_string(), "samples": (cfg.train.snapshot_samples != Some(0)).then(|| cfg.out_dir.join("samples.npy").display().to_string())})
    );
    Ok(())
}

#[derive(Args)]
struct SampleArgs {
    /// The model: gmm:FILE.json, gaussian:FILE.json or builtin:gmm8.
    #[arg(
        long,
        required_unless_present = "checkpoint",
        conflicts_with = "checkpoint"
    )]
    denoiser: Option<String>,
    /// A trained network: a checkpoint from `scoreflow train` (its EMA weights), or a model card
    /// (.toml) of a TorchScript module exported from PyTorch (see docs/models.md).
    #[arg(long)]
    checkpoint: Option<PathBuf>,
    /// A network with a discrete preconditioning: feed it the nearest step of its chain, not the
    /// fractional one (as ComfyUI does; k-diffusion's quantize=True).
    #[arg(long)]
    quantize: bool,
    /// Sampler name (see docs/samplers/; `scoreflow samplers` lists them). Also --sampler.
    #[arg(long, alias = "sampler")]
    solver: String,
    /// Number of steps (grid levels minus one).
    #[arg(long)]
    steps: usize,
    /// Standard-normal starting noise, a float32 or float64 [N, d] .npy.
    #[arg(long, conflicts_with = "num")]
    noise: Option<PathBuf>,
    /// Number of samples, when no --noise is given.
    #[arg(long)]
    num: Option<usize>,
    /// Seed of the starting noise (with --num) and of the samplers' noise.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    #[command(flatten)]
    grid: GridArgs,
    #[command(flatten)]
    params: SamplerArgs,
    /// auto, cpu, cuda or cuda:N.
    #[arg(long, default_value = "auto")]
    device: String,
    /// Arithmetic precision: float32 or float64.
    #[arg(long, default_value = "float32")]
    dtype: String,
    /// Output .npy (float32 [N, d] or [N, C, H, W]).
    #[arg(long)]
    out: PathBuf,
    /// Class-conditional checkpoints: the class to sample, or `each` (sample i of class i mod K).
    #[arg(long)]
    class: Option<String>,
    /// Classifier-free guidance weight w in D_u + w (D_c - D_u) (1: plain conditional).
    #[arg(long)]
    guidance: Option<f64>,
    /// LO,HI: apply the guidance only at noise levels LO < sigma <= HI, the plain conditional
    /// model elsewhere (Kynkaanniemi et al. 2024).
    #[arg(long, allow_hyphen_values = true)]
    guidance_interval: Option<String>,
    /// Clip the denoised estimate to [-R, R] before every step (diffusers' clip_sample).
    #[arg(long, conflicts_with = "dynamic_threshold", allow_hyphen_values = true)]
    clip_denoised: Option<f64>,
    /// RATIO[,MAX]: dynamic thresholding of the denoised estimate (Saharia et al. 2022;
    /// diffusers' thresholding; MAX 1 by default).
    #[arg(long)]
    dynamic_threshold: Option<String>,
    /// Also draw image samples as a PNG grid.
    #[arg(long)]
    png: Option<PathBuf>,
    /// Invert sampling: take the data in this .npy (`[N, ...]` in the model's per-sample shape)
    /// as the points at the grid's lowest level, run the sampler up the same levels
    /// (deterministic samplers) and write the standard-normal latents that --noise takes
    /// (edict, bdia, belm: undo their steps exactly and write the latent pair [2, N, ...]).
    #[arg(long, conflicts_with_all = ["noise", "num", "png"])]
    invert: Option<PathBuf>,
    /// SDEdit (Meng et al. 2022), image to image: start from these data (`[N, ...]` in the
    /// model's per-sample shape) noised to a level partway down the grid, set by --strength or
    /// --denoise, and sample from there; the noise is --noise's, else drawn from --seed.
    #[arg(long, conflicts_with_all = ["num", "invert"])]
    init: Option<PathBuf>,
    /// With --init: diffusers' image-to-image strength in (0, 1]: of the grid of --steps steps,
    /// the last floor(steps x strength) run.
    #[arg(long, conflicts_with = "denoise")]
    strength: Option<f64>,
    /// With --init: ComfyUI's denoise in (0, 1]: the grid of floor(steps / denoise) steps, of
    /// which the last --steps run.
    #[arg(long)]
    denoise: Option<f64>,
    /// With --invert: decode the latents again as `sample --noise OUT` would (same sampler,
    /// steps and grid) and report the round trip's error.
    #[arg(long)]
    roundtrip: bool,
    /// Also write the standard-normal starting noise (float32, the samples' shape): with --out,
    /// the (noise, sample) pairs of this sampler, such as reflow trains on.
    #[arg(long, conflicts_with = "invert")]
    save_noise: Option<PathBuf>,
    /// The analytical first step (AFS; Zhou et al. 2024): the first evaluation, at the top
    /// level, is replaced by x / sqrt(1 + sigma^2) as the ODE's derivative (one NFE fewer).
    #[arg(long, conflicts_with = "invert")]
    afs: bool,
}

fn sample(mut a: SampleArgs) -> Result<()> {
    // Validate everything before any work.
    let spec = a.params.spec(&a.solver)?;
    if a.steps == 0 {
        bail!("--steps must be at least 1");
    }
    if spec.is_adaptive() && a.grid.discards()? {
        bail!(
            "the adaptive sampler {} chooses its own steps between the grid's ends; a grid that discards its penultimate level ends higher: leave out --discard-penultimate",
            spec.name()
        );
    }
    if a.roundtrip && a.invert.is_none() {
        bail!("--roundtrip applies to --invert");
    }
    if a.invert.is_some() {
        let sampler = spec.build()?;
        if !sampler.invertible() && sampler.exact_inverse().is_none() {
            bail!(
                "--invert: sampler {} cannot run backwards (inversion takes a deterministic \
                 sampler whose steps hold upwards, or edict, bdia or belm; see docs/commands/sample.md)",
                scoreflow::experiment::label(&spec)
            );
        }
        if a.steps < 2 {
            bail!("--invert needs --steps >= 2 (it walks the levels above 0 of the sampling grid)");
        }
    }
    if a.save_noise.as_ref() == Some(&a.out) {
        bail!("--save-noise and --out name the same file");
    }
    if let Some(png) = a.png.as_ref() {
        if png == &a.out || a.save_noise.as_ref() == Some(png) {
            bail!(
                "--png names {}, which --out or --save-noise also names",
                png.display()
            );
        }
    }
    // An output that names an input would replace it (a file written is replaced whole).
    let mut inputs: Vec<(&str, PathBuf)> = Vec::new();
    if let Some(p) = &a.checkpoint {
        inputs.push(("--checkpoint", p.clone()));
        if scoreflow::card::is_card(p) {
            if let Ok(card) = scoreflow::card::ModelCard::load(p) {
                inputs.push(("the model card's torchscript", card.torchscript));
            }
        }
    }
    if let Some(file) = a.denoiser.as_deref().and_then(|d| {
        d.strip_prefix("gmm:")
            .or_else(|| d.strip_prefix("gaussian:"))
    }) {
        inputs.push(("--denoiser", PathBuf::from(file)));
    }
    for (flag, p) in [
        ("--noise", &a.noise),
        ("--invert", &a.invert),
        ("--init", &a.init),
    ] {
        if let Some(p) = p {
            inputs.push((flag, p.clone()));
            inputs.push((flag, pair_record_path(p)));
        }
    }
    if a.grid.grid.ends_with(".toml") {
        inputs.push(("--grid", PathBuf::from(&a.grid.grid)));
    }
    // (A latent pair's record is written beside an inverted --out and beside --save-noise.)
    for (flag, out, record) in [
        ("--out", Some(&a.out), a.invert.is_some()),
        ("--png", a.png.as_ref(), false),
        ("--save-noise", a.save_noise.as_ref(), true),
    ] {
        let Some(out) = out else { continue };
        npy::check_out_file(flag, out)?;
        let written: Vec<PathBuf> = if record {
            vec![out.clone(), pair_record_path(out)]
        } else {
            vec![out.clone()]
        };
        for (input, path) in &inputs {
            for written in &written {
                if npy::same_file(written, path) {
                    bail!(
                        "{flag} would write {}, which {input} reads: choose another output path",
                        written.display()
                    );
                }
            }
        }
    }
    if a.afs && a.init.is_some() {
        bail!("--afs replaces the first evaluation by pure noise's; a run from data (--init) does not start from pure noise");
    }
    if a.quantize && a.checkpoint.is_none() {
        bail!("--quantize applies to a trained network with a discrete chain (--checkpoint), not to an exact model");
    }
    let partial = match (a.strength, a.denoise) {
        (Some(s), _) => Some(scoreflow_solvers::grid::Partial::Strength(s)),
        (None, Some(d)) => Some(scoreflow_solvers::grid::Partial::Denoise(d)),
        (None, None) if a.init.is_some() => {
            bail!("--init needs --strength (diffusers' convention) or --denoise (ComfyUI's)")
        }
        (None, None) => None,
    };
    if partial.is_some() && a.init.is_none() {
        bail!("--strength and --denoise apply to --init (a run from data partway down the grid)");
    }
    // The grid to build: a partial run takes the tail of a grid of grid_steps steps.
    let grid_steps = match partial {
        Some(p) => p.grid_steps(a.steps)?,
        None => a.steps,
    };
    let sde = job::sde_from_name(&a.grid.sde)?;
    a.grid.kind()?;
    let dev = device::parse(&a.device)?;
    let kind = job::kind_from_name(&a.dtype)?;
    let (exact, trained) = match (&a.denoiser, &a.checkpoint) {
        (Some(spec), _) => (Some(model::parse(spec, dev)?), None),
        (None, Some(path)) => {
            let mut model = scoreflow::card::load_trained(path, dev)?.model;
            if a.quantize {
                scoreflow::card::quantize_time(&mut model.net, path)?;
            }
            (None, Some(model))
        }
        (None, None) => bail!("give --denoiser or --checkpoint"),
    };
    let guided = scoreflow::nn::guided_from_flags(
        trained.as_ref().map(|t| &t.net),
        a.class.as_deref(),
        a.guidance,
        a.guidance_interval.as_deref(),
    )?;
    if guided.is_none() {
        job::note_cfgpp_without_guidance(&spec, "--class");
    }
    let (den, shape): (&dyn Denoiser, Vec<i64>) = match (&exact, &trained, &guided) {
        (Some(m), _, _) => (m.denoiser(), vec![m.dim() as i64]),
        (None, Some(t), Some(g)) => (g, t.net.shape.clone()),
        (None, Some(t), None) => (&t.net, t.net.shape.clone()),
        _ => unreachable!(),
    };
    let threshold =
        scoreflow::nn::parse_threshold(a.clip_denoised, a.dynamic_threshold.as_deref())?;
    let den = scoreflow::solvers::thresholded(den, threshold);
    // A trained network samples in its own noise range unless the flags say otherwise; a gits
    // or oss grid is chosen for the denoiser that samples (guidance and thresholds included).
    let precond = trained.as_ref().map(|t| &t.net.precond);
    if a.png.is_some() && shape.len() != 3 {
        bail!("--png draws image samples; this model's samples have shape {shape:?}");
    }
    // An exact-inversion sampler (edict, bdia, belm) also takes the latent pair that
    // `sample --invert` wrote for it: [2, N, ...], the latents and their companion.
    let exact_inversion = spec.build()?.exact_inverse().is_some();
    let mut companion = None;
    let init = match &a.init {
        Some(path) => Some(
            npy::read_shaped(path, &shape, "init data")?
                .to_device(dev)
                .to_kind(kind),
        ),
        None => None,
    };
    let z = match (&a.invert, &a.noise, a.num) {
        (Some(path), _, _) => npy::read_shaped(path, &shape, "data file")?
            .to_device(dev)
            .to_kind(kind),
        (None, Some(path), _) if exact_inversion => {
            let (z, c) = npy::read_shaped_or_pair(path, &shape, "noise file")?;
            companion = c.map(|c| c.to_device(dev).to_kind(kind));
            z.to_device(dev).to_kind(kind)
        }
        (None, Some(path), _) => npy::read_shaped(path, &shape, "noise file")?
            .to_device(dev)
            .to_kind(kind),
        (None, None, Some(n)) if n > 0 => {
            job::initial_noise_shaped(a.seed, n, &shape, dev, kind)?
        }
        (None, None, Some(_)) => bail!("--num must be at least 1"),
        (None, None, None) if init.is_some() => {
            let n = init.as_ref().map_or(0, |x| x.size()[0]) as usize;
            job::initial_noise_shaped(a.seed, n, &shape, dev, kind)?
        }
        (None, None, None) => bail!(
            "give the starting noise with --noise FILE.npy or --num N (or data to encode with --invert FILE.npy)"
        ),
    };
    for out in std::iter::once(&a.out).chain(a.save_noise.as_ref()) {
        if let Some(dir) = out.parent().filter(|p| !p.as_os_str().is_empty()) {
            if dir.exists() && !dir.is_dir() {
                bail!(
                    "cannot write {}: {} is not a folder",
                    out.display(),
                    dir.display()
                );
            }
            if !dir.is_dir() {
                bail!("output folder {} does not exist", dir.display());
            }
        }
    }
    if let Some(x0) = &init {
        if companion.is_some() {
            bail!("--init starts from data and noise: give --noise as plain [N, ...] noise, not a latent pair");
        }
        if x0.size()[0] != z.size()[0] {
            bail!(
                "--init has {} samples and --noise {}: give as many of each",
                x0.size()[0],
                z.size()[0]
            );
        }
    }
    // The inputs are read and checked: now the grid (a gits or oss one solved first).
    a.grid.solve_for_model(
        den.as_ref(),
        sde.as_ref(),
        precond,
        &shape,
        dev,
        kind,
        &[grid_steps],
    )?;
    let mut sigmas = a.grid.sigmas_within(sde.as_ref(), grid_steps, precond)?;
    if let Some(p) = partial {
        sigmas = p.tail(&sigmas, a.steps)?;
    }
    if let (Some(path), true) = (&a.noise, companion.is_some()) {
        check_pair_record(path, &spec, &sigmas)?;
    }
    if a.invert.is_some() {
        return invert(
            &a,
            &spec,
            den.as_ref(),
            sde.as_ref(),
            &sigmas,
            &z,
            exact.as_ref(),
        );
    }
    let n = z.size()[0];
    // SDEdit's start: the data plus sigma_start times the noise, which the run takes as the
    // latents z + x0 / sigma_start (it starts from sigmas[0] times its latents).
    let start_latents = match &init {
        Some(x0) => &z + x0 / sigmas[0],
        None => z.shallow_clone(),
    };
    let start = Instant::now();
    let job::Sampled { x, nfe, .. } = job::run_latents(
        &spec,
        den.as_ref(),
        sde.as_ref(),
        &sigmas,
        &start_latents,
        companion.as_ref(),
        a.seed,
        0,
        &scoreflow_solvers::RunOptions {
            afs: a.afs,
            ..Default::default()
        },
        &mut |_, _| {},
    )?;
    let x = x.to_device(tch::Device::Cpu);
    let seconds = start.elapsed().as_secs_f64();
    // The PNG first: if the .npy then fails, remove the PNG, so an error leaves no output.
    if let Some(png) = &a.png {
        scoreflow::image::write_grid(png, &x, 10)?;
    }
    // The starting noise as it was given: a latent pair stays a pair, in its precision.
    let save = |path: &std::path::Path| match &companion {
        Some(c) => write_pair(path, &z, c, &pair_record(&spec, &a, &sigmas)),
        None => npy::write_f32(path, &z.to_device(tch::Device::Cpu)),
    };
    let written = npy::write_f32(&a.out, &x).and_then(|()| match &a.save_noise {
        Some(path) => save(path).inspect_err(|_| {
            let _ = std::fs::remove_file(&a.out);
        }),
        None => Ok(()),
    });
    if let Err(e) = written {
        if let Some(png) = &a.png {
            let _ = std::fs::remove_file(png);
        }
        return Err(e);
    }
    let mut line = serde_json::json!({
        "solver": spec.name(),
        "steps": a.steps,
        "nfe": nfe,
        "seconds": seconds,
        "device": device::name(dev),
        "sde": a.grid.sde,
        "grid": a.grid.grid,
        "sigma_min": sigmas[sigmas.len() - 2],
        "sigma_max": sigmas[0],
        "num": n,
        "out": a.out.display().to_string(),
    });
    if let (Some(p), Some(path)) = (partial, &a.init) {
        let (name, v) = p.name_value();
        line["init"] = serde_json::json!(path.display().to_string());
        line[name] = serde_json::json!(v);
        line["steps_run"] = serde_json::json!(sigmas.len() - 1);
        line["sigma_start"] = serde_json::json!(sigmas[0]);
    }
    // Explicit and model-chosen grids: the levels themselves, so the record says what ran.
    let discards = a.grid.discards()?;
    if discards {
        line["discard_penultimate"] = serde_json::json!(true);
    }
    if discards
        || matches!(
            a.grid.kind()?,
            scoreflow_solvers::GridKind::Levels { .. } | scoreflow_solvers::GridKind::Ays { .. }
        )
    {
        line["levels"] = serde_json::json!(&sigmas[..sigmas.len() - 1]);
    }
    println!("{line}");
    Ok(())
}

/// `sample --invert`: the data up the sampling grid's levels to the latents, with the error
/// against the exact encoding on an exact model and, with --roundtrip, of decoding them again.
fn invert(
    a: &SampleArgs,
    spec: &scoreflow_solvers::SamplerSpec,
    den: &dyn Denoiser,
    sde: &dyn scoreflow_solvers::Sde,
    sigmas: &[f64],
    x0: &Tensor,
    exact: Option<&model::ExactModel>,
) -> Result<()> {
    let start = Instant::now();
    let (z, companion, nfe) = job::invert_to_noise(spec, den, sde, sigmas, x0, None, a.seed)?;
    let seconds = start.elapsed().as_secs_f64();
    let up = job::inversion_levels(sigmas)?;
    let (lo, hi) = (up[0], up[up.len() - 1]);
    // The exact encoding, in float64: the Gaussian's closed-form flow, or for a mixture an
    // adaptive Dormand-Prince solve to 1e-8.
    let rms_error = match exact {
        Some(m) => {
            let x = x0.to_kind(Kind::Double);
            let top = match m {
                model::ExactModel::Gaussian(g) => g.exact_flow(&x, lo, hi)?,
                model::ExactModel::Mixture(g) => {
                    scoreflow_solvers::reference::solve_pf_ode(&**g, &x, lo, hi, 1e-8)?.0
                }
            };
            Some(scoreflow::metrics::rms_distance(&z, &(top / hi)))
        }
        None => None,
    };
    let roundtrip = if a.roundtrip {
        let out = job::run_latents(
            spec,
            den,
            sde,
            sigmas,
            &z,
            companion.as_ref(),
            a.seed,
            0,
            &Default::default(),
            &mut |_, _| {},
        )?;
        Some((scoreflow::metrics::rms_distance(&out.x, x0), out.nfe))
    } else {
        None
    };
    // An exact-inversion sampler's latents are a pair, stacked: [2, N, ...], in the run's
    // precision (its decoding amplifies rounding).
    match &companion {
        Some(c) => write_pair(&a.out, &z, c, &pair_record(spec, a, sigmas))?,
        None => npy::write_f32(&a.out, &z.to_device(tch::Device::Cpu))?,
    }
    let mut line = serde_json::json!({
        "solver": spec.name(),
        "invert": a.invert.as_ref().map(|p| p.display().to_string()),
        "steps": a.steps,
        "nfe": nfe,
        "seconds": seconds,
        "device": device::name(x0.device()),
        "sde": a.grid.sde,
        "grid": a.grid.grid,
        "sigma_min": lo,
        "sigma_max": hi,
        "num": x0.size()[0],
        "rms_error": rms_error,
        "roundtrip_rms": roundtrip.map(|r| r.0),
        "roundtrip_nfe": roundtrip.map(|r| r.1),
        "pair": companion.is_some(),
        "out": a.out.display().to_string(),
    });
    if a.grid.discards()? {
        line["discard_penultimate"] = serde_json::json!(true);
        line["levels"] = serde_json::json!(&sigmas[..sigmas.len() - 1]);
    }
    println!("{line}");
    Ok(())
}

/// Where the record of a latent pair `PATH` lies: `PATH.json`.
fn pair_record_path(path: &std::path::Path) -> PathBuf {
    let mut p = path.as_os_str().to_owned();
    p.push(".json");
    PathBuf::from(p)
}

/// What decoding a latent pair exactly needs: the sampler (with its parameters) and the
/// sampling grid's levels it was inverted on, with the flags that made them.
fn pair_record(
    spec: &scoreflow_solvers::SamplerSpec,
    a: &SampleArgs,
    sigmas: &[f64],
) -> serde_json::Value {
    let mut record = serde_json::json!({
        "pair": true,
        "sampler": scoreflow::experiment::label(spec),
        "steps": sigmas.len() - 1,
        "grid": a.grid.grid,
        "sde": a.grid.sde,
        "sigmas": &sigmas[..sigmas.len() - 1],
    });
    // Only where set, so that other records stay as they were.
    if a.grid.discards().unwrap_or(false) {
        record["discard_penultimate"] = serde_json::json!(true);
    }
    record
}

/// Write the pair `[2, N, ...]` (in `z`'s precision) and its record beside it; neither is left
/// if either fails.
fn write_pair(
    path: &std::path::Path,
    z: &Tensor,
    companion: &Tensor,
    record: &serde_json::Value,
) -> Result<()> {
    npy::write_as(path, &Tensor::stack(&[z, companion], 0), z.kind())?;
    let text = serde_json::to_string_pretty(record)? + "\n";
    scoreflow::compare::write_atomic(&pair_record_path(path), &text).inspect_err(|_| {
        let _ = std::fs::remove_file(path);
    })
}

/// A latent pair decodes exactly only with the sampler and grid that inverted it: where its
/// record lies beside it, this run must have both (a pair without one, written by hand or by an
/// older scoreflow, is taken with a note).
fn check_pair_record(
    path: &std::path::Path,
    spec: &scoreflow_solvers::SamplerSpec,
    sigmas: &[f64],
) -> Result<()> {
    let rp = pair_record_path(path);
    if !rp.exists() {
        eprintln!(
            "note: {} has no record {} beside it: its sampler and grid are not checked",
            path.display(),
            rp.display()
        );
        return Ok(());
    }
    let record: serde_json::Value = std::fs::read_to_string(&rp)
        .map_err(anyhow::Error::from)
        .and_then(|t| Ok(serde_json::from_str(&t)?))
        .map_err(|e| {
            anyhow::anyhow!("cannot read the latent pair's record {}: {e}", rp.display())
        })?;
    let made_by = record["sampler"].as_str().unwrap_or("?");
    let label = scoreflow::experiment::label(spec);
    if made_by != label {
        bail!(
            "{}: the latent pair was inverted by {made_by} and this run is {label}; decode it with the sampler (and parameters) that made it (its record: {})",
            path.display(),
            rp.display()
        );
    }
    let levels: Option<Vec<f64>> = record["sigmas"]
        .as_array()
        .and_then(|v| v.iter().map(|x| x.as_f64()).collect());
    let Some(levels) = levels else {
        bail!(
            "cannot read the latent pair's record {}: no list of sigmas",
            rp.display()
        );
    };
    let here = &sigmas[..sigmas.len() - 1];
    let same = levels.len() == here.len()
        && levels
            .iter()
            .zip(here)
            .all(|(a, b)| (a - b).abs() <= 1e-12 * b.abs());
    if !same {
        bail!(
            "{}: the latent pair was inverted on a grid of {} steps (--grid {}, --sde {}{}, from sigma {} down to {}); this run's grid of {} steps has other levels: give the flags that inverted it (its record: {})",
            path.display(),
            levels.len(),
            record["grid"].as_str().unwrap_or("?"),
            record["sde"].as_str().unwrap_or("?"),
            if record["discard_penultimate"] == true {
                ", --discard-penultimate"
            } else {
                ""
            },
            levels.first().copied().unwrap_or(f64::NAN),
            levels.last().copied().unwrap_or(f64::NAN),
            here.len(),
            rp.display()
        );
    }
    Ok(())
}

/// libtorch's sentence where a panic's message is its failure to allocate memory (on the CPU,
/// `DefaultCPUAllocator: can't allocate memory: ...`; on CUDA, `CUDA out of memory. ...`).
fn out_of_memory(msg: &str) -> Option<String> {
    let at = msg
        .find("can't allocate memory")
        .or_else(|| msg.find("out of memory"))?;
    let head = &msg[..at];
    let start = [
        head.rfind(['"', '\n', ']']).map(|i| i + 1),
        head.rfind(". ").map(|i| i + 2),
    ]
    .into_iter()
    .flatten()
    .max()
    .unwrap_or(0);
    let tail = &msg[start..];
    let end = tail
        .find(" (")
        .into_iter()
        .chain(tail.find('\n'))
        // tch's unwrap prints libtorch's error with Debug escapes: a newline as `\n`.
        .chain(tail.find("\\n"))
        .chain(tail.find('"'))
        .chain(tail.find("frame #"))
        .min()
        .unwrap_or(tail.len());
    Some(tail[..end].trim().trim_end_matches('.').to_string())
}

fn main() {
    // Output piped into a reader that stops early (`scoreflow samplers | head`) ends the process
    // quietly, as for other Unix tools, instead of failing a print (Rust ignores SIGPIPE).
    #[cfg(unix)]
    // SAFETY: called first thing in main, before any thread starts; SIG_DFL is a valid handler.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    // A print to a standard output that cannot take it (a full disk, /dev/full) is an error
    // like any other, exit code 2, not a panic (`println!` panics on a write error).
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let payload = info.payload();
        let msg = payload
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| payload.downcast_ref::<&str>().copied())
            .unwrap_or("");
        if let Some(why) = msg.strip_prefix("failed printing to stdout") {
            eprintln!("error: cannot write to standard output{why}");
            std::process::exit(2);
        }
        // libtorch failing to allocate (tch's infallible wrappers unwrap its error): the run
        // asked for more memory than there is. Say so, with libtorch's own sentence, and exit
        // 2 as for other bad input; outputs are written only after the work, so none is left.
        if let Some(why) = out_of_memory(msg) {
            eprintln!("error: out of memory: {why}; ask for fewer samples (--num), a smaller batch or a smaller network");
            std::process::exit(2);
        }
        default_hook(info);
    }));
    // Negative numbers are values (`--sigma-max -1` reaches the option's own check, which names
    // the problem, instead of clap's "unexpected argument '-1'").
    let matches = Cli::command()
        .mut_subcommands(|c| c.allow_negative_numbers(true))
        .get_matches();
    let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    let result = match cli.command {
        Command::Run(a) => scoreflow::experiment::run(a),
        Command::Plot { dirs, out } => match (dirs.as_slice(), out) {
            ([dir], None) => scoreflow::experiment::plot_dir(dir),
            (_, Some(out)) => scoreflow::experiment::plot_merged(&dirs, &out),
            (_, None) => Err(anyhow::anyhow!(
                "plot draws one experiment folder, or several merged into --out DIR"
            )),
        },
        Command::Sample(a) => sample(a),
        Command::Compare(a) => compare::run(a),
        Command::Bench(a) => bench::run(a),
        Command::Train(a) => train_cmd(a),
        Command::BenchTrain(a) => bench::run_train(a),
        Command::Nll(a) => scoreflow::nll::run(a),
        Command::EvalDigits(a) => scoreflow::fid::eval_digits(a),
        Command::PosthocEma(a) => scoreflow::posthoc::run(&a),
        Command::OptimizeGrid(a) => scoreflow::optimize_grid::run(a),
        Command::Samplers { json } => samplers_cmd(json),
    };
    if let Err(e) = result {
        eprintln!("error: {e:#}");
        std::process::exit(2);
    }
}

#[cfg(test)]
mod tests {
    use super::out_of_memory;

    #[test]
    fn out_of_memory_keeps_libtorchs_sentence() {
        // As tch's unwrap prints libtorch's CPU and CUDA allocation failures.
        let cpu = "called `Result::unwrap()` on an `Err` value: Torch(\"[enforce fail at alloc_cpu.cpp:127] err == 0. DefaultCPUAllocator: can't allocate memory: you tried to allocate 6400000000 bytes. Error code 12 (Cannot allocate memory)\\nException raised from alloc_cpu at ...\")";
        assert_eq!(
            out_of_memory(cpu).unwrap(),
            "DefaultCPUAllocator: can't allocate memory: you tried to allocate 6400000000 bytes. Error code 12"
        );
        let cuda = "called `Result::unwrap()` on an `Err` value: Torch(\"CUDA out of memory. Tried to allocate 20.00 GiB. GPU 0 has a total capacity of 79.19 GiB\\nframe #0: ...\")";
        assert_eq!(
            out_of_memory(cuda).unwrap(),
            "CUDA out of memory. Tried to allocate 20.00 GiB. GPU 0 has a total capacity of 79.19 GiB"
        );
        assert_eq!(out_of_memory("index out of range"), None);
    }
}
