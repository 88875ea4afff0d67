//! `scoreflow optimize-grid`: GITS (Chen et al. 2024, "On the Trajectory Regularity of ODE-based
//! Diffusion Sampling"; see `scoreflow_solvers::gits`) for a model, written as a `levels`
//! placement that `--grid FILE` and an experiment's `[grid]` table take.

use crate::compare::{parse_list, write_atomic};
use crate::job::{self, GridArgs};
use crate::{card, device, model};
use anyhow::{bail, Result};
use clap::Args;
use scoreflow_solvers::gits::{CostMetric, GitsParams};
use scoreflow_solvers::{Denoiser, GridKind};
use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::Instant;

#[derive(Args, Debug)]
pub struct OptimizeGridArgs {
    /// An exact model: gmm:FILE.json, gaussian:FILE.json or builtin:NAME.
    #[arg(long, conflicts_with = "checkpoint")]
    pub denoiser: Option<String>,
    /// A trained network: a checkpoint from `scoreflow train` or a model card (.toml).
    #[arg(long)]
    pub checkpoint: Option<PathBuf>,
    /// Step counts to choose grids for, comma-separated (each at most --teacher-steps).
    #[arg(long)]
    pub steps: String,
    /// The deterministic sampler that draws the teacher trajectories, as `compare` names
    /// samplers (`ipndm`, `heun`, `dpmpp-2m`, `ipndm(order=3)`, ...).
    #[arg(long, default_value = "ipndm")]
    pub teacher: String,
    /// Class-conditional checkpoints: the class to sample (or `each`), as `sample --class`; the
    /// grid is chosen for the guided denoiser.
    #[arg(long)]
    pub class: Option<String>,
    /// Classifier-free guidance weight, as `sample --guidance`.
    #[arg(long)]
    pub guidance: Option<f64>,
    /// LO,HI: guidance only at LO < sigma <= HI, as `sample --guidance-interval`.
    #[arg(long, allow_hyphen_values = true)]
    pub guidance_interval: Option<String>,
    /// Steps of the teacher grid (the levels GITS chooses from; its placement is --grid).
    #[arg(long, default_value_t = 60)]
    pub teacher_steps: usize,
    /// Cost of a coarse Euler step: dev (deviation from the trajectory's chord, the reference's
    /// default), l2 or l1 (distance to the teacher's state).
    #[arg(long, default_value = "dev")]
    pub metric: String,
    /// Discount of the dynamic program (cost + coeff x the rest of the path).
    #[arg(long, default_value_t = 1.15)]
    pub coeff: f64,
    /// Warm-up trajectories.
    #[arg(long, default_value_t = 256)]
    pub samples: usize,
    /// Seed of the warm-up latents (samples 2^40 onwards of this seed: not those sampling
    /// draws).
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// The teacher grid: --grid is its placement (karras by default), with its range and SDE.
    #[command(flatten)]
    pub grid: GridArgs,
    /// auto, cpu, cuda or cuda:N.
    #[arg(long, default_value = "auto")]
    pub device: String,
    /// Arithmetic precision: float32 or float64.
    #[arg(long, default_value = "float32")]
    pub dtype: String,
    /// Output TOML: a [grid] table with the levels placement (one list per step count) and a
    /// [gits] table with the settings and the chosen teacher indices.
    #[arg(long)]
    pub out: PathBuf,
}

fn metric_from_name(name: &str) -> Result<CostMetric> {
    Ok(match name {
        "dev" => CostMetric::Dev,
        "l2" => CostMetric::L2,
        "l1" => CostMetric::L1,
        other => bail!("unknown --metric '{other}' (expected dev, l2 or l1)"),
    })
}

fn toml_list<T: std::fmt::Display>(v: &[T]) -> String {
    let items: Vec<String> = v.iter().map(|x| x.to_string()).collect();
    format!("[{}]", items.join(", "))
}

/// A TOML float: Rust's shortest round-trip form, with a decimal point.
fn toml_float(v: f64) -> String {
    let s = format!("{v:?}");
    if s.contains('.') || s.contains('e') || s.contains("inf") || s.contains("NaN") {
        s
    } else {
        format!("{s}.0")
    }
}

pub fn run(a: OptimizeGridArgs) -> Result<()> {
    let steps: Vec<usize> = parse_list(&a.steps, "--steps")?;
    if steps.is_empty() || steps.contains(&0) {
        bail!("--steps needs step counts of at least 1");
    }
    if let Some(d) = job::repeated(&steps) {
        bail!("--steps lists {d} twice");
    }
    let teacher_grid = a.grid.kind()?;
    if matches!(teacher_grid, GridKind::Gits(_)) {
        bail!("--grid is the teacher grid's placement here; it cannot be gits");
    }
    let params = GitsParams {
        teacher: job::parse_sampler(&a.teacher)?,
        teacher_steps: a.teacher_steps,
        teacher_grid: Box::new(teacher_grid),
        metric: metric_from_name(&a.metric)?,
        coeff: a.coeff,
        samples: a.samples,
        seed: a.seed,
    };
    params.validate()?;
    if let Some(&n) = steps.iter().find(|&&n| n > a.teacher_steps) {
        bail!(
            "--steps {n} is more than --teacher-steps {}: GITS picks the levels of the teacher grid",
            a.teacher_steps
        );
    }
    let sde = job::sde_from_name(&a.grid.sde)?;
    let dev = device::parse(&a.device)?;
    let kind = job::kind_from_name(&a.dtype)?;
    if let Some(dir) = a.out.parent().filter(|p| !p.as_os_str().is_empty()) {
        if !dir.is_dir() {
            bail!("output folder {} does not exist", dir.display());
        }
    }
    let (exact, trained) = match (&a.denoiser, &a.checkpoint) {
        (Some(spec), _) => (Some(model::parse(spec, dev)?), None),
        (None, Some(path)) => (None, Some(card::load_trained(path, dev)?.model)),
        (None, None) => bail!("give --denoiser or --checkpoint"),
    };
    let guided = crate::nn::guided_from_flags(
        trained.as_ref().map(|t| &t.net),
        a.class.as_deref(),
        a.guidance,
        a.guidance_interval.as_deref(),
    )?;
    let (den, shape, precond): (&dyn Denoiser, Vec<i64>, _) = match (&exact, &trained, &guided) {
        (Some(m), _, _) => (m.denoiser(), vec![m.dim() as i64], None),
        (None, Some(t), Some(g)) => (g, t.net.shape.clone(), Some(&t.net.precond)),
        (None, Some(t), None) => (&t.net, t.net.shape.clone(), Some(&t.net.precond)),
        _ => unreachable!(),
    };
    // The teacher grid's ends: the flags, else the network's range, else 0.002 and 80.
    let (lo, hi) = a.grid.range(precond.and_then(|p| p.sigma_range()));
    params.teacher_sigmas(lo, hi, sde.as_ref())?;
    let t = Instant::now();
    let gits = params.solve(den, sde.as_ref(), lo, hi, &shape, dev, kind)?;
    let seconds = t.elapsed().as_secs_f64();
    let mut lists = Vec::new();
    let mut paths = Vec::new();
    for &n in &steps {
        let path = gits.path(n)?;
        let levels: Vec<f64> = path[..n].iter().map(|&i| gits.teacher_sigmas[i]).collect();
        eprintln!("{n} steps: {}", job::format_levels(&levels));
        lists.push(levels);
        paths.push(path);
    }
    let command: Vec<String> = std::env::args().collect();
    let mut text = String::new();
    let _ = writeln!(text, "# Written by: {}", command.join(" "));
    let _ = writeln!(
        text,
        "# GITS (Chen et al. 2024): teacher {} on {} steps of {} from {} to {} ({} SDE), cost {}, coeff {}, {} warm-up samples of seed {}.",
        crate::experiment::label(&params.teacher),
        params.teacher_steps,
        a.grid.grid,
        lo,
        hi,
        a.grid.sde,
        params.metric.name(),
        params.coeff,
        params.samples,
        params.seed
    );
    let _ = writeln!(
        text,
        "# Sample on it with --grid {} (--steps one of the counts below), or copy [grid] into an experiment.",
        a.out.display()
    );
    let _ = writeln!(text, "[grid]");
    let lists_toml: Vec<String> = lists
        .iter()
        .map(|l| {
            let v: Vec<String> = l.iter().map(|&x| toml_float(x)).collect();
            format!("  [{}]", v.join(", "))
        })
        .collect();
    let _ = writeln!(
        text,
        "placement = {{ kind = \"levels\", sigmas = [\n{},\n] }}",
        lists_toml.join(",\n")
    );
    let _ = writeln!(text, "sigma_min = {}", toml_float(lo));
    let _ = writeln!(text, "sigma_max = {}", toml_float(hi));
    let _ = writeln!(text, "sde = \"{}\"", a.grid.sde);
    let _ = writeln!(text, "\n[gits]");
    let _ = writeln!(
        text,
        "teacher = \"{}\"",
        crate::experiment::label(&params.teacher)
    );
    let _ = writeln!(text, "teacher_steps = {}", params.teacher_steps);
    let _ = writeln!(text, "teacher_grid = \"{}\"", a.grid.grid);
    let _ = writeln!(text, "metric = \"{}\"", params.metric.name());
    let _ = writeln!(text, "coeff = {}", toml_float(params.coeff));
    let _ = writeln!(text, "samples = {}", params.samples);
    let _ = writeln!(text, "seed = {}", params.seed);
    let _ = writeln!(text, "steps = {}", toml_list(&steps));
    let idx: Vec<String> = paths.iter().map(|p| toml_list(p)).collect();
    let _ = writeln!(text, "indices = [{}]", idx.join(", "));
    // Read back what is written, so that the file is known to load as --grid takes it.
    let table: toml::Table = toml::from_str(&text)?;
    let placement: GridKind = table["grid"]["placement"].clone().try_into()?;
    for &n in &steps {
        scoreflow_solvers::grid::sigmas(&placement, n, lo, hi, sde.as_ref())?;
    }
    write_atomic(&a.out, &text)?;
    let line = serde_json::json!({
        "out": a.out.display().to_string(),
        "steps": steps,
        "levels": lists,
        "teacher": crate::experiment::label(&params.teacher),
        "teacher_steps": params.teacher_steps,
        "metric": params.metric.name(),
        "coeff": params.coeff,
        "samples": params.samples,
        "seconds": seconds,
        "device": device::name(dev),
    });
    println!("{line}");
    Ok(())
}
