//! `scoreflow compare`: every requested sampler at every step count on one exact model, from the
//! same starting noise, measured against a reference solution of the probability-flow ODE.

use crate::job::{self, GridArgs};
use crate::{device, model, npy};
use anyhow::{bail, Result};
use clap::Args;
use scoreflow_solvers::{grid, GaussianMixture, GridKind, SamplerSpec};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Instant;
use tch::{Kind, Tensor};

#[derive(Args)]
pub struct CompareArgs {
    /// The model: builtin:gmm8, gmm:FILE.json or gaussian:FILE.json.
    #[arg(long, default_value = "builtin:gmm8")]
    pub denoiser: String,
    /// Comma-separated samplers, each a name (its defaults) or name(key=value,...).
    #[arg(
        long,
        default_value = "euler,heun,dpm2,dpmpp-2m,dpmpp-3m,lms,unipc,euler-ancestral,ddpm,euler-maruyama"
    )]
    pub solvers: String,
    /// Comma-separated step counts.
    #[arg(long, default_value = "4,8,16,32,64,128")]
    pub steps: String,
    /// Number of samples.
    #[arg(long, default_value_t = 2048)]
    pub num: usize,
    /// Seed of the starting noise and of the samplers' noise.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Steps of the reference solve (Heun on the same grid placement; for the ddpm-* and comfy-* grids on a
    /// log-sigma grid between each step count's own ends).
    #[arg(long, default_value_t = 4096)]
    pub reference_steps: usize,
    /// The analytical first step (Zhou et al. 2024) for every sampler (not the reference): the
    /// first evaluation is replaced by x / sqrt(1 + sigma^2) as the ODE's derivative.
    #[arg(long)]
    pub afs: bool,
    /// Also run each sampler that inverts back up its grid from its samples, and report the
    /// RMS distance between the noise recovered and the noise it started from (an experiment's
    /// `roundtrip` metric; exactly 0 up to rounding for edict, bdia and belm).
    #[arg(long)]
    pub roundtrip: bool,
    #[command(flatten)]
    pub grid: GridArgs,
    /// auto, cpu, cuda or cuda:N.
    #[arg(long, default_value = "auto")]
    pub device: String,
    /// Arithmetic precision: float32 or float64.
    #[arg(long, default_value = "float64")]
    pub dtype: String,
    /// Folder for results.csv and error_vs_nfe.{png,svg}.
    #[arg(long, default_value = "out/compare")]
    pub out_dir: PathBuf,
}

/// One cell of the comparison.
pub struct Row {
    pub sampler: String,
    pub steps: usize,
    pub nfe: usize,
    /// RMS over samples of the distance to the reference ODE solution (deterministic samplers).
    pub rms: Option<f64>,
    pub max: Option<f64>,
    /// Total-variation distance between the sample's mode weights and the mixture's.
    pub mode_tv: Option<f64>,
    /// With `--roundtrip`: RMS distance of the noise recovered by inverting the samples to the
    /// starting noise (samplers that invert, at least 2 steps).
    pub roundtrip: Option<f64>,
    pub seconds: f64,
}

/// A comma-separated list; an empty item (`a,,b`, a trailing comma) is an error.
pub fn parse_list<T: std::str::FromStr>(s: &str, what: &str) -> Result<Vec<T>> {
    if s.split(',').any(|v| v.trim().is_empty()) {
        bail!("{what} list '{s}' has an empty item");
    }
    s.split(',')
        .map(|v| v.trim())
        .map(|v| {
            v.parse::<T>()
                .map_err(|_| anyhow::anyhow!("invalid {what} '{v}'"))
        })
        .collect()
}

/// Total-variation distance between empirical mode weights of `x` and the mixture's weights.
pub fn mode_tv(gmm: &GaussianMixture, x: &Tensor) -> Result<f64> {
    let k = gmm.components() as i64;
    let n = x.size()[0] as f64;
    let counts = gmm
        .assign(x)?
        .bincount(None::<Tensor>, k)
        .to_kind(Kind::Double)
        .to_device(tch::Device::Cpu)
        / n;
    let w = Tensor::from_slice(&gmm.weights);
    Ok(0.5 * (counts - w).abs().sum(Kind::Double).double_value(&[]))
}

pub fn run(mut a: CompareArgs) -> Result<()> {
    let specs: Vec<SamplerSpec> = job::parse_samplers(&a.solvers, "--solvers")?;
    let steps: Vec<usize> = parse_list(&a.steps, "--steps")?;
    job::no_repeated_samplers(&specs, "--solvers")?;
    if let Some(d) = job::repeated(&steps) {
        bail!("--steps lists {d} twice");
    }
    if steps.is_empty() || steps.contains(&0) {
        bail!("--steps needs step counts of at least 1");
    }
    if a.num == 0 {
        bail!("--num must be at least 1");
    }
    let sde = job::sde_from_name(&a.grid.sde)?;
    // The ddpm-* grids fix each step count's levels to a chain's steps, with ends that move with
    // the count: each count gets its own reference between its first and last levels.
    // Explicit levels, gits and oss grids start at their first level and may stop above sigma_min:
    // their reference runs from their first level to sigma_min (or their lowest level, if
    // lower), so that stopping early counts as error.
    let per_count = matches!(
        a.grid.kind()?,
        scoreflow_solvers::GridKind::Timesteps { .. }
    );
    let listed = matches!(
        a.grid.kind()?,
        scoreflow_solvers::GridKind::Levels { .. }
            | scoreflow_solvers::GridKind::Ays { .. }
            | scoreflow_solvers::GridKind::LinearQuadratic { .. }
            | scoreflow_solvers::GridKind::Gits(_)
            | scoreflow_solvers::GridKind::Oss(_)
    );
    let floor = a.grid.range(None).0;
    // A discarded penultimate level moves the last level with the step count too.
    let discards = a.grid.discards()?;
    if let Some(s) = specs
        .iter()
        .find(|s| (per_count || listed || discards) && s.is_adaptive())
    {
        bail!(
            "the adaptive sampler {} chooses its own steps between the grid's ends, and the {} grid's ends move with the step count: use a grid with fixed ends",
            s.name(),
            a.grid.grid
        );
    }
    let chosen = a.grid.is_chosen_for_model()?;
    if !chosen {
        for &n in &steps {
            a.grid.sigmas(sde.as_ref(), n)?;
        }
    }
    let dev = device::parse(&a.device)?;
    let kind = job::kind_from_name(&a.dtype)?;
    if a.reference_steps == 0 {
        bail!("--reference-steps must be at least 1");
    }
    let model = model::parse(&a.denoiser, dev)?;
    npy::check_out_dir(&a.out_dir)?;
    npy::check_out_files(
        &a.out_dir,
        &[
            "results.csv",
            "summary.md",
            "error_vs_nfe.png",
            "error_vs_nfe.svg",
        ],
    )?;
    if chosen {
        // (No adaptive samplers here: refused above, as the grid's ends move with the count.)
        a.grid.solve_for_model(
            model.denoiser(),
            sde.as_ref(),
            None,
            &[model.dim() as i64],
            dev,
            kind,
            &steps,
        )?;
    }

    let z = job::initial_noise(a.seed, a.num, model.dim(), dev, kind)?;
    let den = model.denoiser();
    // Heun with --reference-steps steps from the same noise: on the same placement, or for a
    // ddpm grid on a log-sigma-uniform grid between the step count's own ends (one per pair of
    // ends; a one-step ddpm grid solves no ODE and has no reference).
    let mut references: Vec<((f64, f64), Tensor)> = Vec::new();
    let mut reference_for = |sigmas: &[f64]| -> Result<Option<Tensor>> {
        // One reference for every count on the other placements (their grids share the ends).
        let ends = if per_count {
            grid::ends(sigmas)
        } else if listed {
            (sigmas[0], floor.min(grid::ends(sigmas).1))
        } else {
            (0.0, 0.0)
        };
        if per_count && ends.0 <= ends.1 {
            return Ok(None);
        }
        if let Some((_, r)) = references.iter().find(|(e, _)| *e == ends) {
            return Ok(Some(r.shallow_clone()));
        }
        let t0 = Instant::now();
        let ref_sigmas = if per_count || listed {
            grid::sigmas(
                &GridKind::LogSnr {},
                a.reference_steps,
                ends.1,
                ends.0,
                sde.as_ref(),
            )?
        } else {
            // The whole path, also where the grids discard their penultimate level.
            let (lo, hi) = a.grid.range(None);
            grid::sigmas(&a.grid.kind()?, a.reference_steps, lo, hi, sde.as_ref())?
        };
        let (r, _) = job::run_from_noise(
            &SamplerSpec::Heun(Default::default()),
            den,
            sde.as_ref(),
            &ref_sigmas,
            &z,
            a.seed,
            0,
            &mut |_, _| {},
        )?;
        eprintln!(
            "reference: heun, {} steps{}, {:.1} s",
            a.reference_steps,
            if per_count || listed {
                format!(" on log-snr from {} to {}", ends.0, ends.1)
            } else {
                String::new()
            },
            t0.elapsed().as_secs_f64()
        );
        references.push((ends, r.shallow_clone()));
        Ok(Some(r))
    };
    if !per_count {
        let _ = reference_for(&a.grid.sigmas(sde.as_ref(), steps[0])?)?;
    }
    let fresh_tv = match model.mixture() {
        Some(gmm) => Some(mode_tv(gmm, &gmm.sample(a.num, a.seed ^ 0xF2E5, dev))?),
        None => None,
    };

    let mut rows = Vec::new();
    // The same cells for summary.md (src/summary.rs).
    let mut summary_rows = Vec::new();
    for spec in &specs {
        // An adaptive sampler uses only the ends of the grid: one run, on the 2-step grid.
        let spec_steps = if spec.is_adaptive() {
            vec![2]
        } else {
            steps.clone()
        };
        for &n in &spec_steps {
            let sigmas = a.grid.sigmas(sde.as_ref(), n)?;
            let t = Instant::now();
            let job::Sampled { x, nfe, companion } = job::run_latents(
                spec,
                den,
                sde.as_ref(),
                &sigmas,
                &z,
                None,
                a.seed,
                0,
                &scoreflow_solvers::RunOptions {
                    afs: a.afs,
                    ..Default::default()
                },
                &mut |_, _| {},
            )?;
            let seconds = t.elapsed().as_secs_f64();
            let roundtrip = if a.roundtrip {
                job::roundtrip_rms(
                    spec,
                    den,
                    sde.as_ref(),
                    &sigmas,
                    &x,
                    companion.as_ref(),
                    &z,
                    a.seed,
                    a.afs,
                )?
            } else {
                None
            };
            let reference = if spec.is_stochastic() {
                None
            } else {
                reference_for(&sigmas)?
            };
            let (rms, max) = if let Some(reference) = reference {
                let dist = (&x - &reference)
                    .square()
                    .sum_dim_intlist(1, false, Kind::Double)
                    .sqrt();
                (
                    Some(dist.square().mean(Kind::Double).sqrt().double_value(&[])),
                    Some(dist.max().double_value(&[])),
                )
            } else {
                (None, None)
            };
            let mode_tv = match model.mixture() {
                Some(gmm) => Some(mode_tv(gmm, &x)?),
                None => None,
            };
            summary_rows.push(serde_json::json!({
                "label": crate::experiment::label(spec), "params": spec, "steps": n, "nfe": nfe,
                "seed": a.seed, "rms": rms, "max": max, "mode-tv": mode_tv, "roundtrip": roundtrip,
            }));
            rows.push(Row {
                sampler: crate::experiment::label(spec),
                steps: n,
                nfe,
                rms,
                max,
                mode_tv,
                roundtrip,
                seconds,
            });
        }
    }
    print!("{}", table(&rows));
    if let Some(tv) = fresh_tv {
        println!(
            "mode-weight TV of {} fresh exact samples (the sampling-noise floor): {tv:.4}",
            a.num
        );
    }
    // Per-count references (ddpm grids) make rms/max incomparable across step counts.
    let own = crate::summary::OWN_ENDS;
    let unranked: &[(&str, &str)] = if per_count {
        &[("rms", own), ("max", own)]
    } else {
        &[]
    };
    if let Some(h) = ["rms", "mode-tv"]
        .into_iter()
        .filter(|m| !unranked.iter().any(|(u, _)| u == m))
        .find_map(|m| crate::summary::headline(&summary_rows, m))
    {
        println!("{h}");
    }
    npy::create_out_dir(&a.out_dir)?;
    let csv = a.out_dir.join("results.csv");
    write_atomic(&csv, &to_csv(&rows))?;
    let floors: std::collections::BTreeMap<String, f64> = fresh_tv
        .map(|tv| ("mode-tv".to_string(), tv))
        .into_iter()
        .collect();
    let summary = a.out_dir.join("summary.md");
    write_atomic(
        &summary,
        &crate::summary::markdown(
            &format!("compare on {}", a.denoiser),
            &summary_rows,
            &[
                ("rms", "RMS distance to the reference ODE solution"),
                ("max", "largest distance to the reference solution"),
                ("mode-tv", "mode-weight error (total variation)"),
                (
                    "roundtrip",
                    "noise recovered by inverting the samples (RMS)",
                ),
            ],
            &floors,
            unranked,
        ),
    )?;
    let stem = a.out_dir.join("error_vs_nfe");
    plot(&stem, &rows, fresh_tv, &a.denoiser)?;
    println!("results: {}", csv.display());
    println!("summary: {}", summary.display());
    println!("plot: {}", stem.with_extension("png").display());
    Ok(())
}

fn fmt_opt(v: Option<f64>) -> String {
    v.map(|v| format!("{v:.3e}")).unwrap_or_else(|| "-".into())
}

pub fn table(rows: &[Row]) -> String {
    let w = rows
        .iter()
        .map(|r| r.sampler.len())
        .max()
        .unwrap_or(0)
        .max(18);
    // The roundtrip column only where it was measured (compare --roundtrip).
    let trips = rows.iter().any(|r| r.roundtrip.is_some());
    let mut s = format!(
        "{:<w$} {:>6} {:>6} {:>11} {:>11} {:>8}",
        "sampler", "steps", "nfe", "rms_error", "max_error", "mode_tv"
    );
    if trips {
        let _ = write!(s, " {:>11}", "roundtrip");
    }
    let _ = writeln!(s, " {:>9}", "seconds");
    for r in rows {
        let tv = r
            .mode_tv
            .map(|v| format!("{v:.4}"))
            .unwrap_or_else(|| "-".into());
        let _ = write!(
            s,
            "{:<w$} {:>6} {:>6} {:>11} {:>11} {:>8}",
            r.sampler,
            r.steps,
            r.nfe,
            fmt_opt(r.rms),
            fmt_opt(r.max),
            tv,
        );
        if trips {
            let _ = write!(s, " {:>11}", fmt_opt(r.roundtrip));
        }
        let _ = writeln!(s, " {:>9.4}", r.seconds);
    }
    s
}

fn to_csv(rows: &[Row]) -> String {
    let o = |v: Option<f64>| v.map(|v| format!("{v:e}")).unwrap_or_default();
    let trips = rows.iter().any(|r| r.roundtrip.is_some());
    let mut s = String::from(if trips {
        "sampler,steps,nfe,rms_error,max_error,mode_tv,roundtrip,seconds\n"
    } else {
        "sampler,steps,nfe,rms_error,max_error,mode_tv,seconds\n"
    });
    for r in rows {
        let _ = writeln!(
            s,
            "{},{},{},{},{},{},{}{}",
            if r.sampler.contains(',') {
                format!("\"{}\"", r.sampler)
            } else {
                r.sampler.clone()
            },
            r.steps,
            r.nfe,
            o(r.rms),
            o(r.max),
            o(r.mode_tv),
            if trips {
                format!("{},", o(r.roundtrip))
            } else {
                String::new()
            },
            r.seconds
        );
    }
    s
}

/// Write a text file through a temporary sibling and a rename.
pub fn write_atomic(path: &Path, text: &str) -> Result<()> {
    let tmp = npy::temp_path(path);
    std::fs::write(&tmp, text)
        .and_then(|_| npy::commit(&tmp, path))
        .map_err(|e| {
            let _ = std::fs::remove_file(&tmp);
            anyhow::anyhow!("cannot write {}: {e}", path.display())
        })
}

/// Error and mode-weight panels, one line per sampler, as `stem.svg` and `stem.png`.
fn plot(stem: &Path, rows: &[Row], fresh_tv: Option<f64>, title: &str) -> Result<()> {
    use crate::plot::{Panel, Series};
    let mut names: Vec<&str> = rows.iter().map(|r| r.sampler.as_str()).collect();
    names.dedup();
    let series = |get: &dyn Fn(&Row) -> Option<f64>| -> Vec<Series> {
        names
            .iter()
            .map(|n| Series {
                label: n.to_string(),
                points: rows
                    .iter()
                    .filter(|r| r.sampler == *n)
                    .filter_map(|r| get(r).map(|v| (r.nfe as f64, v, v, v)))
                    .collect(),
            })
            .filter(|s| !s.points.is_empty())
            .collect()
    };
    let mut panels = vec![
        Panel {
            title: format!("{title}: error vs reference ODE solution"),
            ylabel: "RMS error".into(),
            series: series(&|r| r.rms),
            floor: None,
            fraction: false,
        },
        Panel {
            title: "mode-weight error (total variation)".into(),
            ylabel: "TV distance".into(),
            series: series(&|r| r.mode_tv),
            floor: fresh_tv.map(|f| ("fresh data (noise floor)".to_string(), f)),
            fraction: false,
        },
    ];
    let trips = series(&|r| r.roundtrip);
    if !trips.is_empty() {
        panels.push(Panel {
            title: "round trip: noise recovered by inverting the samples".into(),
            ylabel: "RMS distance to the starting noise".into(),
            series: trips,
            floor: None,
            fraction: false,
        });
    }
    crate::plot::quality_vs_nfe(stem, &panels)
}
