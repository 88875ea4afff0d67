//! EDM2's post-hoc EMA (Karras, Aittala, Lehtinen, Hellsten, Aila & Laine 2024, "Analyzing and
//! Improving the Training Dynamics of Diffusion Models", sec. 3.2 and App. C.2): a run that
//! tracks power-function EMAs of a few widths (`[train] posthoc_stds`) and snapshots them
//! (`out_dir/posthoc/`) can afterwards give the EMA of any other width, as the least-squares
//! combination of the snapshots whose averaging profiles best match the wanted one.
//!
//! A power-function EMA of exponent `gamma` after `t` samples averages the parameters with the
//! density `p(tau) = (gamma + 1) tau^gamma / t^(gamma + 1)` on `[0, t]`. Two such profiles have
//! the inner product `<p_a, p_b> = (g_a + 1)(g_b + 1) / (g_a + g_b + 1) m^(g_a + g_b + 1) /
//! (t_a^(g_a + 1) t_b^(g_b + 1))` with `m = min(t_a, t_b)`; the coefficients `x` solve
//! `A x = b` with `A_ij = <p_i, p_j>` and `b_i = <p_i, p_target>` in the least-squares sense
//! (as NVlabs/edm2's `solve_posthoc_coefficients`), normalized to sum 1 (as edm2 does: the
//! reconstruction `sum_i x_i theta_i` is then a weighted average of the snapshots' weights).

use crate::checkpoint;
use crate::train::{power_ema_exponent, MAX_EMA_STD, POSTHOC_FORMAT};
use anyhow::{bail, Context, Result};
use clap::Args;
use nalgebra::{DMatrix, DVector};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use tch::{Kind, Tensor};

/// `<p_a, p_b>` for profiles `(samples, sigma_rel)`.
pub fn profile_dot(a: (f64, f64), b: (f64, f64)) -> f64 {
    let (ga, gb) = (power_ema_exponent(a.1), power_ema_exponent(b.1));
    let m = a.0.min(b.0);
    let log = (ga + gb + 1.0) * m.ln() - (ga + 1.0) * a.0.ln() - (gb + 1.0) * b.0.ln();
    (ga + 1.0) * (gb + 1.0) / (ga + gb + 1.0) * log.exp()
}

/// The least-squares coefficients of the `inputs` profiles `(samples, sigma_rel)` for
/// `target`, and the relative L2 error of the reconstructed profile,
/// `|sum_i x_i p_i - p_target| / |p_target|`.
pub fn coefficients(inputs: &[(f64, f64)], target: (f64, f64)) -> Result<(Vec<f64>, f64)> {
    let n = inputs.len();
    if n == 0 {
        bail!("no snapshot profiles to combine");
    }
    let a = DMatrix::from_fn(n, n, |i, j| profile_dot(inputs[i], inputs[j]));
    let b = DVector::from_fn(n, |i, _| profile_dot(inputs[i], target));
    let svd = a.clone().svd(true, true);
    let top = svd.singular_values.max();
    let x = svd
        .solve(&b, top * n as f64 * f64::EPSILON)
        .map_err(|e| anyhow::anyhow!("post-hoc EMA least squares: {e}"))?;
    // Normalized to sum 1, as edm2 does: the result is a weighted average of the snapshots
    // (the unconstrained solution's sum is a little off 1, which would rescale the weights).
    let total = x.sum();
    if !(total.is_finite() && total.abs() > 1e-12) {
        bail!("post-hoc EMA least squares: the coefficients sum to {total}");
    }
    let x = x / total;
    let tt = profile_dot(target, target);
    let err2 = (x.dot(&(&a * &x)) - 2.0 * x.dot(&b) + tt).max(0.0);
    Ok((x.iter().copied().collect(), (err2 / tt).sqrt()))
}

/// `scoreflow posthoc-ema`: reconstruct the EMA of another sigma_rel from a run's snapshots.
#[derive(Args, Clone, Debug)]
pub struct PosthocArgs {
    /// A training run's `out_dir`, with the `posthoc/` snapshots of `[train] posthoc_stds` and
    /// its `checkpoint.safetensors`.
    pub run_dir: PathBuf,
    /// The sigma_rel (relative width of the averaging profile) to reconstruct, in (0, 0.2886].
    #[arg(long)]
    pub std: f64,
    /// The training length, in samples seen, at which to reconstruct it [default: the last
    /// snapshot's].
    #[arg(long)]
    pub samples: Option<f64>,
    /// Output checkpoint: the run's checkpoint with its `ema.*` weights replaced (what `sample
    /// --checkpoint` and the experiments load).
    #[arg(long)]
    pub out: PathBuf,
}

struct Snapshot {
    path: PathBuf,
    /// The training run that wrote it (none in snapshots older than run ids).
    run: Option<String>,
    samples: f64,
    stds: Vec<f64>,
    tensors: BTreeMap<String, Tensor>,
}

fn read_snapshot(path: &Path) -> Result<Snapshot> {
    let ck = checkpoint::load(path)?;
    let bad = |what: &str| format!("post-hoc EMA snapshot {}: {what}", path.display());
    if ck.meta("posthoc").ok() != Some(POSTHOC_FORMAT) {
        bail!(bad(&format!("not a {POSTHOC_FORMAT} file")));
    }
    let samples: f64 = ck
        .meta("samples")?
        .parse()
        .with_context(|| bad("samples is not a number"))?;
    let stds: Vec<f64> =
        serde_json::from_str(ck.meta("stds")?).with_context(|| bad("stds is not a list"))?;
    // (An infinite count would make the profiles' inner products loop without end.)
    if !(samples > 0.0 && samples <= 1e18) {
        bail!(bad(&format!(
            "samples must be a count in (0, 1e18], got {}",
            scoreflow_solvers::Num(samples)
        )));
    }
    if stds.is_empty() {
        bail!(bad("no sigma_rel"));
    }
    Ok(Snapshot {
        path: path.to_path_buf(),
        run: ck.meta("run").ok().map(str::to_string),
        samples,
        stds,
        tensors: ck.tensors,
    })
}

/// Run `scoreflow posthoc-ema`; prints one JSON line.
pub fn run(args: &PosthocArgs) -> Result<()> {
    if !(args.std > 0.0 && args.std <= MAX_EMA_STD) {
        bail!(
            "--std (sigma_rel) must be within (0, {MAX_EMA_STD}], got {}",
            scoreflow_solvers::Num(args.std)
        );
    }
    let dir = crate::train::posthoc_dir(&args.run_dir);
    let mut paths: Vec<PathBuf> = std::fs::read_dir(&dir)
        .with_context(|| {
            format!(
                "no post-hoc EMA snapshots: cannot read {} (train with [train] posthoc_stds)",
                dir.display()
            )
        })?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().and_then(|e| e.to_str()) == Some("safetensors"))
        .collect();
    paths.sort();
    if paths.is_empty() {
        bail!(
            "no post-hoc EMA snapshots (*.safetensors) in {}",
            dir.display()
        );
    }
    // A checkpoint written among the snapshots would be read as one by the next posthoc-ema.
    if let Some(parent) = args.out.parent() {
        let parent = if parent.as_os_str().is_empty() {
            Path::new(".")
        } else {
            parent
        };
        if crate::npy::same_file(parent, &dir) {
            bail!(
                "--out {} is inside the run's post-hoc snapshot folder {}; write it elsewhere",
                args.out.display(),
                dir.display()
            );
        }
    }
    let template_path = crate::train::checkpoint_path_in(&args.run_dir);
    for p in paths.iter().chain([&template_path]) {
        if crate::npy::same_file(p, &args.out) {
            bail!("--out {} would overwrite an input", args.out.display());
        }
    }
    let snaps: Vec<Snapshot> = paths
        .iter()
        .map(|p| read_snapshot(p))
        .collect::<Result<_>>()?;
    let mut template = checkpoint::load(&template_path)?;
    // A fresh training run into the folder leaves the earlier run's later snapshots behind:
    // only the checkpoint's own run counts (snapshots without a run id are older than ids).
    let run = template.meta("run").ok().map(str::to_string);
    let (snaps, others): (Vec<Snapshot>, Vec<Snapshot>) = snaps
        .into_iter()
        .partition(|s| run.is_none() || s.run.is_none() || s.run == run);
    if let Some(first) = others.first() {
        if snaps.is_empty() {
            bail!(
                "every post-hoc EMA snapshot in {} is of another training run than the checkpoint {} (a fresh run into the folder has written none yet)",
                dir.display(),
                template_path.display()
            );
        }
        eprintln!(
            "note: left out {} snapshot{} of an earlier training run in this folder ({}{}); the checkpoint is a later run's",
            others.len(),
            if others.len() == 1 { "" } else { "s" },
            first.path.display(),
            if others.len() > 1 { ", ..." } else { "" }
        );
    }
    let last = snaps.iter().map(|s| s.samples).fold(0.0, f64::max);
    let t = args.samples.unwrap_or(last);
    if !(t > 0.0 && t <= last) {
        bail!(
            "--samples must be within (0, {last}] (the last snapshot's samples), got {}",
            scoreflow_solvers::Num(t)
        );
    }
    let names: Vec<String> = template
        .tensors
        .keys()
        .filter_map(|k| k.strip_prefix("ema.").map(str::to_string))
        .collect();
    // Every snapshot must hold every weight of the run's network, of its shape.
    let mut inputs = Vec::new();
    for s in &snaps {
        for (j, std) in s.stds.iter().enumerate() {
            for name in &names {
                let key = format!("phema{j}.{name}");
                let want = template.tensor(&format!("ema.{name}"))?.size();
                match s.tensors.get(&key) {
                    Some(v) if v.size() == want => {}
                    _ => bail!(
                        "post-hoc EMA snapshot {} has no tensor {key} of shape {want:?} (a snapshot of another run?)",
                        s.path.display()
                    ),
                }
            }
            inputs.push((s.samples, *std, s, j));
        }
    }
    let profiles: Vec<(f64, f64)> = inputs.iter().map(|(t, s, _, _)| (*t, *s)).collect();
    let (x, residual) = coefficients(&profiles, (t, args.std))?;
    for name in &names {
        let mut acc: Option<Tensor> = None;
        for ((_, _, snap, j), w) in inputs.iter().zip(&x) {
            let v = snap.tensors[&format!("phema{j}.{name}")].to_kind(Kind::Double) * *w;
            acc = Some(match acc {
                Some(a) => a + v,
                None => v,
            });
        }
        let v = acc.expect("at least one input").to_kind(Kind::Float);
        if v.isfinite().all().int64_value(&[]) == 0 {
            bail!("the post-hoc EMA of {name} is not finite");
        }
        template.tensors.insert(format!("ema.{name}"), v);
    }
    template
        .meta
        .insert("posthoc_std".into(), args.std.to_string());
    template
        .meta
        .insert("posthoc_samples".into(), t.to_string());
    template
        .meta
        .insert("posthoc_residual".into(), residual.to_string());
    checkpoint::save(&args.out, &template.tensors, template.meta)?;
    println!(
        "{}",
        serde_json::json!({
            "std": args.std, "samples": t, "snapshots": snaps.len(), "profiles": profiles.len(),
            "residual": residual, "out": args.out.display().to_string(),
        })
    );
    Ok(())
}
