//! `scoreflow optimize-grid`: GITS (Chen et al. 2024, "On the Trajectory Regularity of ODE-based
//! Diffusion Sampling"; see `scoreflow_solvers::gits`) or OSS (Pei, Hu & Gu 2025, "Optimal
//! Stepsize for Diffusion Sampling"; see `scoreflow_solvers::oss`) for a model, written as a
//! `levels` placement that `--grid FILE` and an experiment's `[grid]` table take.

use crate::compare::{parse_list, write_atomic};
use crate::job::{self, GridArgs};
use crate::{card, device, model};
use anyhow::{bail, Result};
use clap::Args;
use scoreflow_solvers::gits::{CostMetric, GitsParams};
use scoreflow_solvers::oss::OssParams;
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
    /// gits (Chen et al. 2024: Euler steps' costs along the teacher, one dynamic program for
    /// all warm-up samples) or oss (Pei et al. 2025: the Euler student's own states carried
    /// through the program, per sample, then the median).
    #[arg(long, default_value = "gits")]
    pub method: String,
    /// The deterministic sampler that draws the teacher trajectories, as `compare` names
    /// samplers (`ipndm`, `heun`, `dpmpp-2m`, `ipndm(order=3)`, ...); ipndm for gits, euler
    /// for oss.
    #[arg(long)]
    pub teacher: Option<String>,
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
    /// Steps of the teacher grid (the levels chosen from; its placement is --grid); 60 for
    /// gits, 200 for oss.
    #[arg(long)]
    pub teacher_steps: Option<usize>,
    /// gits: the cost of a coarse Euler step: dev (deviation from the trajectory's chord, the
    /// reference's default), l2 or l1 (distance to the teacher's state).
    #[arg(long)]
    pub metric: Option<String>,
    /// gits: the discount of the dynamic program (cost + coeff x the rest of the path); 1.15.
    #[arg(long)]
    pub coeff: Option<f64>,
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
    /// [gits] or [oss] table with the settings and the chosen teacher indices.
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

/// The method's settings, from the flags.
enum Method {
    Gits(GitsParams),
    Oss(OssParams),
}

impl Method {
    fn name(&self) -> &'static str {
        match self {
            Method::Gits(_) => "gits",
            Method::Oss(_) => "oss",
        }
    }
    fn teacher(&self) -> &scoreflow_solvers::SamplerSpec {
        match self {
            Method::Gits(p) => &p.teacher,
            Method::Oss(p) => &p.teacher,
        }
    }
    fn teacher_steps(&self) -> usize {
        match self {
            Method::Gits(p) => p.teacher_steps,
            Method::Oss(p) => p.teacher_steps,
        }
    }
    fn samples(&self) -> usize {
        match self {
            Method::Gits(p) => p.samples,
            Method::Oss(p) => p.samples,
        }
    }
}

fn method_from_flags(a: &OptimizeGridArgs, teacher_grid: GridKind) -> Result<Method> {
    let teacher = |default: &str| job::parse_sampler(a.teacher.as_deref().unwrap_or(default));
    Ok(match a.method.as_str() {
        "gits" => Method::Gits(GitsParams {
            teacher: teacher("ipndm")?,
            teacher_steps: a.teacher_steps.unwrap_or(60),
            teacher_grid: Box::new(teacher_grid),
            metric: metric_from_name(a.metric.as_deref().unwrap_or("dev"))?,
            coeff: a.coeff.unwrap_or(1.15),
            samples: a.samples,
            seed: a.seed,
        }),
        "oss" => {
            if a.metric.is_some() || a.coeff.is_some() {
                bail!("--metric and --coeff are settings of gits, not oss (its cost is the student's squared error)");
            }
            Method::Oss(OssParams {
                teacher: teacher("euler")?,
                teacher_steps: a.teacher_steps.unwrap_or(200),
                teacher_grid: Box::new(teacher_grid),
                samples: a.samples,
                seed: a.seed,
            })
        }
        other => bail!("unknown --method '{other}' (expected gits or oss)"),
    })
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
    if a.grid.discards()? {
        let from = if a.grid.discard_penultimate {
            "--discard-penultimate".to_string()
        } else {
            format!("discard_penultimate in {}", a.grid.grid)
        };
        bail!("{from} does not apply to optimize-grid: the teacher runs on its whole grid, and the chosen levels are listed per step count");
    }
    if let Some(name) = teacher_grid.chosen_for_model() {
        bail!("--grid is the teacher grid's placement here; it cannot be {name}");
    }
    let method = method_from_flags(&a, teacher_grid)?;
    match &method {
        Method::Gits(p) => p.validate()?,
        Method::Oss(p) => p.validate()?,
    }
    if let Some(&n) = steps.iter().find(|&&n| n > method.teacher_steps()) {
        bail!(
            "--steps {n} is more than --teacher-steps {}: {} picks the levels of the teacher grid",
            method.teacher_steps(),
            method.name()
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
    let t = Instant::now();
    // Per step count: the teacher indices of the grid (ending at the last level).
    let (teacher_sigmas, paths): (Vec<f64>, Vec<Vec<usize>>) = match &method {
        Method::Gits(p) => {
            p.teacher_sigmas(lo, hi, sde.as_ref())?;
            let gits = p.solve(den, sde.as_ref(), lo, hi, &shape, dev, kind)?;
            let paths = steps
                .iter()
                .map(|&n| gits.path(n).map_err(anyhow::Error::from))
                .collect::<Result<_>>()?;
            (gits.teacher_sigmas, paths)
        }
        Method::Oss(p) => {
            p.teacher_sigmas(lo, hi, sde.as_ref())?;
            let max = *steps.iter().max().unwrap();
            let oss = p.solve(den, sde.as_ref(), lo, hi, &shape, dev, kind, max)?;
            let paths = steps
                .iter()
                .map(|&n| {
                    job::oss_levels(&oss, n)?;
                    oss.path(n).map_err(anyhow::Error::from)
                })
                .collect::<Result<_>>()?;
            (oss.teacher_sigmas, paths)
        }
    };
    let seconds = t.elapsed().as_secs_f64();
    // The teacher grid's own ends (a placement with its own levels, ays or timesteps, does not
    // span lo..hi).
    let ends = (
        teacher_sigmas.iter().copied().rfind(|&s| s > 0.0),
        teacher_sigmas.first().copied(),
    );
    let (lo, hi) = match ends {
        (Some(l), Some(h)) if l < h => (l, h),
        _ => (lo, hi),
    };
    let mut lists = Vec::new();
    for (&n, path) in steps.iter().zip(&paths) {
        let levels: Vec<f64> = path[..n].iter().map(|&i| teacher_sigmas[i]).collect();
        eprintln!("{n} steps: {}", job::format_levels(&levels));
        lists.push(levels);
    }
    let command: Vec<String> = std::env::args().collect();
    let mut text = String::new();
    let _ = writeln!(text, "# Written by: {}", command.join(" "));
    let teacher = crate::experiment::label(method.teacher());
    match &method {
        Method::Gits(p) => {
            let _ = writeln!(
                text,
                "# GITS (Chen et al. 2024): teacher {teacher} on {} steps of {} from {lo} to {hi} ({} SDE), cost {}, coeff {}, {} warm-up samples of seed {}.",
                p.teacher_steps,
                a.grid.grid,
                a.grid.sde,
                p.metric.name(),
                p.coeff,
                p.samples,
                p.seed
            );
        }
        Method::Oss(p) => {
            let _ = writeln!(
                text,
                "# OSS (Pei, Hu & Gu 2025): Euler student, teacher {teacher} on {} steps of {} from {lo} to {hi} ({} SDE), median of {} warm-up samples of seed {}.",
                p.teacher_steps, a.grid.grid, a.grid.sde, p.samples, p.seed
            );
        }
    }
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
    let _ = writeln!(text, "\n[{}]", method.name());
    let _ = writeln!(text, "teacher = \"{teacher}\"");
    let _ = writeln!(text, "teacher_steps = {}", method.teacher_steps());
    let _ = writeln!(text, "teacher_grid = \"{}\"", a.grid.grid);
    if let Method::Gits(p) = &method {
        let _ = writeln!(text, "metric = \"{}\"", p.metric.name());
        let _ = writeln!(text, "coeff = {}", toml_float(p.coeff));
    }
    let _ = writeln!(text, "samples = {}", method.samples());
    let _ = writeln!(text, "seed = {}", a.seed);
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
    let mut line = serde_json::json!({
        "out": a.out.display().to_string(),
        "method": method.name(),
        "steps": steps,
        "levels": lists,
        "teacher": teacher,
        "teacher_steps": method.teacher_steps(),
        "samples": method.samples(),
        "seconds": seconds,
        "device": device::name(dev),
    });
    if let Method::Gits(p) = &method {
        line["metric"] = serde_json::json!(p.metric.name());
        line["coeff"] = serde_json::json!(p.coeff);
    }
    println!("{line}");
    Ok(())
}
