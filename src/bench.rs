//! `scoreflow bench`: how close each sampler runs to its floor, NFE x one denoiser call.
//! A benchmark, not a test: it prints ratios measured in one run.

use crate::device::{self, sync};
use crate::job::{self, GridArgs};
use crate::model;
use anyhow::{bail, Context, Result};
use clap::Args;
use scoreflow_solvers::samplers::NAMES;
use scoreflow_solvers::{Denoiser, SamplerSpec};
use std::time::Instant;

#[derive(Args)]
pub struct BenchArgs {
    /// The model: builtin:gmm8, gmm:FILE.json or gaussian:FILE.json.
    #[arg(long, default_value = "builtin:gmm8", conflicts_with = "checkpoint")]
    pub denoiser: String,
    /// A trained network instead: a scoreflow checkpoint (e.g. the digits U-Net) or a model card
    /// (.toml) of a TorchScript module (see docs/models.md).
    #[arg(long)]
    pub checkpoint: Option<std::path::PathBuf>,
    /// Batch sizes, comma-separated (e.g. 1,64,256).
    #[arg(long, default_value = "4096")]
    pub num: String,
    /// Steps per sampler run.
    #[arg(long, default_value_t = 32)]
    pub steps: usize,
    /// Timed repetitions (the median is reported).
    #[arg(long, default_value_t = 5)]
    pub reps: usize,
    /// Comma-separated samplers, each a name or name(key=value, ...) with the config keys, as in
    /// compare (default: all).
    #[arg(long)]
    pub solvers: Option<String>,
    #[command(flatten)]
    pub grid: GridArgs,
    /// auto, cpu, cuda or cuda:N.
    #[arg(long, default_value = "auto")]
    pub device: String,
    /// Arithmetic precision: float32 or float64.
    #[arg(long, default_value = "float32")]
    pub dtype: String,
    /// Also write the results as JSON.
    #[arg(long)]
    pub json: Option<std::path::PathBuf>,
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

pub fn run(a: BenchArgs) -> Result<()> {
    let batches: Vec<usize> = a
        .num
        .split(',')
        .map(|v| {
            v.trim()
                .parse::<usize>()
                .map_err(|_| anyhow::anyhow!("invalid batch size '{v}' in --num"))
        })
        .collect::<Result<_>>()?;
    if a.reps == 0 || a.steps == 0 || batches.is_empty() || batches.contains(&0) {
        bail!("--reps, --num and --steps must be at least 1");
    }
    if a.reps > 10_000 {
        bail!("--reps {} is more than 10000", a.reps);
    }
    if let Some(p) = &a.json {
        crate::npy::check_out_file("--json", p)?;
    }
    if let Some(d) = job::repeated(&batches) {
        bail!("--num lists {d} twice");
    }
    let specs: Vec<SamplerSpec> = match &a.solvers {
        Some(s) => {
            let specs = job::parse_samplers(s, "--solvers")?;
            job::no_repeated_samplers(&specs, "--solvers")?;
            specs
        }
        None => NAMES
            .iter()
            .map(|n| SamplerSpec::from_name(n))
            .collect::<Result<_, _>>()?,
    };
    let sde = job::sde_from_name(&a.grid.sde)?;
    a.grid.kind()?;
    let dev = device::parse(&a.device)?;
    let kind = job::kind_from_name(&a.dtype)?;
    let (exact, trained) = match &a.checkpoint {
        Some(p) => (None, Some(crate::card::load_trained(p, dev)?.model)),
        None => (Some(model::parse(&a.denoiser, dev)?), None),
    };
    let sigmas = a.grid.sigmas_within(
        sde.as_ref(),
        a.steps,
        trained.as_ref().map(|t| &t.net.precond),
    )?;
    let (den, shape, what): (&dyn Denoiser, Vec<i64>, String) = match (&exact, &trained) {
        (Some(m), _) => (m.denoiser(), vec![m.dim() as i64], a.denoiser.clone()),
        (None, Some(t)) => (
            &t.net,
            t.net.shape.clone(),
            a.checkpoint.as_ref().unwrap().display().to_string(),
        ),
        _ => unreachable!(),
    };
    let mut records = Vec::new();
    for &num in &batches {
        let z = job::initial_noise_shaped(0, num, &shape, dev, kind)?;
        let x = &z * 1.7;
        // One denoiser call: warm up, then the median of many.
        for _ in 0..5 {
            let _ = den.denoise(&x, 1.0)?;
        }
        sync(dev);
        let mut calls = Vec::new();
        for _ in 0..(20 * a.reps).max(20) {
            let t = Instant::now();
            let _ = den.denoise(&x, 1.0)?;
            sync(dev);
            calls.push(t.elapsed().as_secs_f64());
        }
        let call = median(calls);
        println!(
            "denoiser {what} at N = {num}, {} on {}: one call {:.1} us (median)",
            a.dtype,
            device::name(dev),
            call * 1e6
        );
        let labels: Vec<String> = specs.iter().map(crate::experiment::label).collect();
        let w = labels.iter().map(|l| l.len()).max().unwrap_or(0).max(18);
        println!(
            "{:<w$} {:>5} {:>12} {:>14} {:>8} {:>10}",
            "sampler", "nfe", "wall_ms", "nfe_x_call_ms", "ratio", "nfe_per_s"
        );
        for (spec, label) in specs.iter().zip(&labels) {
            let go = || -> Result<(f64, usize)> {
                sync(dev);
                let t = Instant::now();
                let (_, nfe) = job::run_from_noise(
                    spec,
                    den,
                    sde.as_ref(),
                    &sigmas,
                    &z,
                    0,
                    0,
                    &mut |_, _| {},
                )?;
                sync(dev);
                Ok((t.elapsed().as_secs_f64(), nfe))
            };
            go()?; // warm-up
            let mut walls = Vec::new();
            let mut nfe = 0;
            for _ in 0..a.reps {
                let (w, n) = go()?;
                walls.push(w);
                nfe = n;
            }
            let wall = median(walls);
            let floor = nfe as f64 * call;
            println!(
                "{:<w$} {:>5} {:>12.3} {:>14.3} {:>8.3} {:>10.1}",
                label,
                nfe,
                wall * 1e3,
                floor * 1e3,
                wall / floor,
                nfe as f64 / wall
            );
            records.push(serde_json::json!({
                "model": what, "batch": num, "sampler": label, "steps": a.steps, "nfe": nfe,
                "wall_s": wall, "call_s": call, "ratio": wall / floor, "nfe_per_s": nfe as f64 / wall,
                "device": device::name(dev), "dtype": a.dtype,
                "cuda_graphs": dev.is_cuda() && crate::cuda::graphs_enabled(),
            }));
        }
    }
    if let Some(path) = &a.json {
        crate::compare::write_atomic(path, &serde_json::to_string_pretty(&records)?)?;
    }
    Ok(())
}

/// Options of `scoreflow bench-train`.
#[derive(Args)]
pub struct BenchTrainArgs {
    /// Training configs to time (their data, model, loss and batch).
    #[arg(required = true)]
    pub configs: Vec<std::path::PathBuf>,
    /// Timed optimizer steps.
    #[arg(long, default_value_t = 50)]
    pub steps: usize,
    /// Override the configs' device: auto, cpu, cuda or cuda:N.
    #[arg(long)]
    pub device: Option<String>,
    /// Override the configs' batch size.
    #[arg(long)]
    pub batch: Option<i64>,
    /// Precisions to time, comma-separated (float32, bf16; default: each config's own).
    #[arg(long)]
    pub precision: Option<String>,
    /// Also write the results as JSON.
    #[arg(long)]
    pub json: Option<std::path::PathBuf>,
}

/// Untimed training steps before the timed ones.
const WARMUP: usize = 10;

/// Training throughput: one run of `10 + steps` steps, of which the last `steps` are timed (the
/// device synchronized before and after; set-up, warm-up and the final checkpoint are not), as
/// samples per second.
pub fn run_train(a: BenchTrainArgs) -> Result<()> {
    if let Some(p) = &a.json {
        crate::npy::check_out_file("--json", p)?;
    }
    use crate::train::{self, RunOpts, TrainConfig};
    if a.steps == 0 || a.steps > 1_000_000 {
        bail!("--steps must be 1 to 1000000, got {}", a.steps);
    }
    // Every config and precision is checked before anything runs.
    if let Some(d) = job::repeated(&a.configs) {
        bail!("the config {} is listed twice", d.display());
    }
    if let Some(p) = &a.precision {
        let list: Vec<&str> = p.split(',').map(str::trim).collect();
        if let Some(d) = job::repeated(&list) {
            bail!("--precision lists {d} twice");
        }
    }
    let mut jobs = Vec::new();
    for path in &a.configs {
        let base = TrainConfig::load(path)?;
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let precisions: Vec<String> = match &a.precision {
            Some(p) => p.split(',').map(|s| s.trim().to_string()).collect(),
            None => vec![base.train.precision.clone()],
        };
        for precision in precisions {
            let mut cfg = base.clone();
            if let Some(d) = &a.device {
                cfg.device = d.clone();
            }
            if let Some(b) = a.batch {
                cfg.train.batch = b;
            }
            cfg.train.precision = precision;
            cfg.validate()?;
            let dev = device::parse(&cfg.device)?;
            jobs.push((name.clone(), cfg, dev));
        }
    }
    println!(
        "{:<28} {:>8} {:>9} {:>6} {:>12} {:>14} {:>12}",
        "config", "device", "precision", "batch", "ms/step", "samples/s", "peak_MiB"
    );
    let mut records = Vec::new();
    let dir = std::env::temp_dir().join(format!("scoreflow-bench-{}", std::process::id()));
    for (name, mut cfg, dev) in jobs {
        cfg.out_dir = dir.clone();
        cfg.train.steps = WARMUP + a.steps;
        cfg.train.checkpoint_every = usize::MAX;
        cfg.train.log_every = usize::MAX;
        cfg.train.snapshot_samples = Some(0);
        let _ = std::fs::remove_dir_all(&dir);
        crate::cuda::reset_peak_memory(dev);
        let report = train::run(
            &cfg,
            &RunOpts {
                quiet: true,
                time_from: Some(WARMUP),
                ..Default::default()
            },
        )?;
        let peak = crate::cuda::peak_memory(dev);
        let _ = std::fs::remove_dir_all(&dir);
        let (n, secs) = report
            .timed
            .context("bench-train: the run timed no steps")?;
        let per_step = secs / n as f64;
        let samples_per_s = cfg.train.batch as f64 / per_step;
        println!(
            "{:<28} {:>8} {:>9} {:>6} {:>12.2} {:>14.0} {:>12}",
            name,
            device::name(dev),
            cfg.train.precision,
            cfg.train.batch,
            per_step * 1e3,
            samples_per_s,
            peak.map_or("-".to_string(), |b| format!(
                "{:.1}",
                b as f64 / (1024.0 * 1024.0)
            ))
        );
        records.push(serde_json::json!({
            "config": name, "device": device::name(dev), "precision": cfg.train.precision,
            "batch": cfg.train.batch, "step_s": per_step, "samples_per_s": samples_per_s,
            "peak_bytes": peak, "steps": a.steps, "parameters": report.parameters,
            "shape": report.shape, "num_classes": report.num_classes,
            // What a peer needs to train the same model the same way (experiments/peers/peers.py).
            "train_config": &cfg,
        }));
    }
    if let Some(path) = &a.json {
        crate::compare::write_atomic(path, &serde_json::to_string_pretty(&records)?)?;
    }
    Ok(())
}
