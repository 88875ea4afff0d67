//! `scoreflow run` and `scoreflow plot`: the grid of cells, results, plots, resuming, budgets
//! and bad experiment files.

use serde_json::{json, Value};
use std::path::Path;
use std::process::{Command, Output};

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_scoreflow"))
}

fn write_config(dir: &Path, name: &str, body: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, body).unwrap();
    p.to_str().unwrap().to_string()
}

fn small(out: &Path, extra: &str) -> String {
    format!(
        r#"
out_dir = "{}"
device = "cpu"
num = 256
seeds = [0, 1]
reference_tol = 1e-7
metrics = ["rms", "max", "sw2", "mmd", "mode-tv", "mode-coverage"]
{extra}
[model]
kind = "builtin"
name = "gmm8"
[[samplers]]
kind = "euler"
[[samplers]]
kind = "heun"
[[samplers]]
kind = "ddim"
eta = 1.0
"#,
        out.display()
    )
}

fn run(args: &[&str]) -> Output {
    bin().args(args).output().unwrap()
}

/// Results without the timing, keyed and sorted, for comparing runs.
fn results(dir: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(dir.join("results.jsonl")).unwrap();
    let mut v: Vec<Value> = text
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .map(|mut r| {
            r.as_object_mut().unwrap().remove("seconds");
            r
        })
        .collect();
    v.sort_by(|a, b| a["key"].as_str().cmp(&b["key"].as_str()));
    v
}

#[test]
fn an_experiment_writes_results_and_plots_and_plot_redraws_them() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let cfg = write_config(dir.path(), "e.toml", &small(&out, "steps = [16, 32]"));
    let o = run(&["run", &cfg]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(String::from_utf8_lossy(&o.stdout).contains("quality_vs_nfe.png"));
    let rows = results(&out);
    assert_eq!(rows.len(), 3 * 2 * 2);
    let get = |label: &str, steps: u64, seed: u64, m: &str| -> Value {
        rows.iter()
            .find(|r| r["label"] == label && r["steps"] == steps && r["seed"] == seed)
            .unwrap()[m]
            .clone()
    };
    // Heun is closer to the reference ODE solution than Euler at 32 steps; the stochastic
    // sampler has no ODE error but has distribution metrics.
    assert!(
        get("heun", 32, 0, "rms").as_f64().unwrap() < get("euler", 32, 0, "rms").as_f64().unwrap()
    );
    assert!(get("ddim(eta=1)", 32, 0, "rms").is_null());
    assert!(get("ddim(eta=1)", 32, 0, "sw2").as_f64().unwrap() > 0.0);
    assert_eq!(get("heun", 32, 1, "mode-coverage").as_f64().unwrap(), 1.0);
    assert_eq!(get("heun", 32, 1, "nfe").as_u64().unwrap(), 63);
    for f in [
        "results.csv",
        "quality_vs_nfe.png",
        "quality_vs_nfe.svg",
        "samples_grid.png",
        "floors.json",
    ] {
        assert!(out.join(f).exists(), "{f} missing");
    }
    let csv = std::fs::read_to_string(out.join("results.csv")).unwrap();
    assert_eq!(csv.lines().count(), 1 + 12);
    // plot redraws everything from results.jsonl alone.
    for f in ["results.csv", "quality_vs_nfe.png", "quality_vs_nfe.svg"] {
        std::fs::remove_file(out.join(f)).unwrap();
    }
    let o = run(&["plot", out.to_str().unwrap()]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(
        std::fs::read_to_string(out.join("results.csv")).unwrap(),
        csv
    );
    assert!(out.join("quality_vs_nfe.png").exists());
    // A rerun finds every cell done.
    let o = run(&["run", &cfg]);
    assert!(String::from_utf8_lossy(&o.stderr).contains("12 done, running 0"));
    // The same directory with other steps: results.jsonl keeps every line, the table and the
    // plots show the experiment as now configured, samplers in its order (experiment.json,
    // read back, gives the same cells; euler's default S_tmax, infinity, is null in JSON).
    let cfg = write_config(dir.path(), "e.toml", &small(&out, "steps = [16, 64]"));
    let o = run(&["run", &cfg]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(String::from_utf8_lossy(&o.stderr).contains("6 done, running 6"));
    assert_eq!(results(&out).len(), 18);
    let csv = std::fs::read_to_string(out.join("results.csv")).unwrap();
    let rows: Vec<Vec<&str>> = csv
        .lines()
        .skip(1)
        .map(|l| l.split(',').collect())
        .collect();
    assert_eq!(rows.len(), 12);
    assert!(rows.iter().all(|r| r[2] == "16" || r[2] == "64"), "{csv}");
    let labels: Vec<&str> = rows.iter().take(6).map(|r| r[0]).collect();
    assert_eq!(
        labels,
        [
            "\"euler\"",
            "\"euler\"",
            "\"heun\"",
            "\"heun\"",
            "\"ddim(eta=1)\"",
            "\"ddim(eta=1)\""
        ],
        "{csv}"
    );
    // plot says that it leaves the other 6 lines out.
    let o = run(&["plot", out.to_str().unwrap()]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("6 of 18 lines") && err.contains("are not drawn"),
        "{err}"
    );
}

#[test]
fn an_interrupted_run_resumes_to_the_same_results() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b, c) = (
        dir.path().join("a"),
        dir.path().join("b"),
        dir.path().join("c"),
    );
    let steps = "steps = [8, 16, 32, 64]";
    let ca = write_config(dir.path(), "a.toml", &small(&a, steps));
    let cb = write_config(dir.path(), "b.toml", &small(&b, steps));
    let cc = write_config(dir.path(), "c.toml", &small(&c, steps));
    assert!(run(&["run", &ca]).status.success());
    // Stopped after 5 cells, then continued.
    let o = run(&["run", &cb, "--max-cells", "5"]);
    assert!(String::from_utf8_lossy(&o.stdout).contains("5 of 24 cells finished"));
    assert!(!b.join("quality_vs_nfe.png").exists());
    assert!(run(&["run", &cb]).status.success());
    // Killed for real while running, then rerun.
    let mut child = bin()
        .args(["run", &cc])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let t0 = std::time::Instant::now();
    while t0.elapsed().as_secs() < 60 {
        let n = std::fs::read_to_string(c.join("results.jsonl"))
            .map(|t| t.lines().count())
            .unwrap_or(0);
        if n >= 3 {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(run(&["run", &cc]).status.success());
    let ra = results(&a);
    assert_eq!(ra.len(), 24);
    assert_eq!(ra, results(&b));
    assert_eq!(ra, results(&c));
    // A last line cut short (a kill in the middle of a write): skipped, and the next result
    // starts on a line of its own.
    let d = dir.path().join("d");
    std::fs::create_dir_all(&d).unwrap();
    let text = std::fs::read_to_string(a.join("results.jsonl")).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    let cut = format!("{}\n{}", lines[..5].join("\n"), &lines[5][..40]);
    std::fs::write(d.join("results.jsonl"), cut).unwrap();
    let cd = write_config(dir.path(), "d.toml", &small(&d, steps));
    let o = run(&["run", &cd]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(d.join("quality_vs_nfe.png").exists());
    assert_eq!(ra, results(&d));
    // A line repeated (two runs on one folder at once) is counted once, and a line cut short
    // in the middle is skipped: both with a note.
    let e = dir.path().join("e");
    copy_dir(&a, &e);
    let mut text = std::fs::read_to_string(a.join("results.jsonl")).unwrap();
    text.push_str(lines[0]);
    text.push('\n');
    std::fs::write(e.join("results.jsonl"), &text).unwrap();
    let o = run(&["plot", e.to_str().unwrap()]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("line 25 repeats the cell of an earlier line"),
        "{err}"
    );
    assert_eq!(
        std::fs::read_to_string(e.join("results.csv")).unwrap(),
        std::fs::read_to_string(a.join("results.csv")).unwrap()
    );
    let mut cut: Vec<String> = text.lines().map(String::from).collect();
    cut[2].truncate(40);
    std::fs::write(e.join("results.jsonl"), cut.join("\n")).unwrap();
    let o = run(&["plot", e.to_str().unwrap()]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("line 3 was cut short"), "{err}");
    let csv = std::fs::read_to_string(e.join("results.csv")).unwrap();
    assert_eq!(csv.lines().count(), 24, "{csv}");
    // A snapshot that cannot be read, or an output that is a folder, fails the plot before any
    // output is written.
    let snap = std::fs::read_dir(e.join("samples"))
        .unwrap()
        .map(|f| f.unwrap().path())
        .find(|p| !p.to_string_lossy().ends_with(".path.npy"))
        .unwrap();
    let good = std::fs::read(&snap).unwrap();
    std::fs::write(&snap, b"not an npy").unwrap();
    std::fs::remove_file(e.join("summary.md")).unwrap();
    let o = run(&["plot", e.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("not a valid .npy file"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(!e.join("summary.md").exists());
    assert_eq!(std::fs::read_to_string(e.join("results.csv")).unwrap(), csv);
    std::fs::write(&snap, good).unwrap();
    std::fs::remove_file(e.join("quality_vs_nfe.svg")).unwrap();
    std::fs::create_dir(e.join("quality_vs_nfe.svg")).unwrap();
    let o = run(&["plot", e.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("quality_vs_nfe.svg: it is a folder"));
    assert!(!e.join("summary.md").exists());
}

/// Copy the files of `from` (one level of folders) to `to`.
fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let p = entry.unwrap().path();
        let dest = to.join(p.file_name().unwrap());
        if p.is_dir() {
            copy_dir(&p, &dest);
        } else {
            std::fs::copy(&p, &dest).unwrap();
        }
    }
}

#[test]
fn nfe_budgets_pick_steps_per_sampler() {
    let dir = tempfile::tempdir().unwrap();
    // The small experiment at NFE budgets `nfe`, mode-tv alone.
    let budgets = |name: &str, out: &Path, nfe: &str| {
        write_config(
            dir.path(),
            name,
            &small(out, &format!("nfe = {nfe}")).replace(
                "[\"rms\", \"max\", \"sw2\", \"mmd\", \"mode-tv\", \"mode-coverage\"]",
                "[\"mode-tv\"]",
            ),
        )
    };
    let out = dir.path().join("out");
    let cfg = budgets("e.toml", &out, "[10, 20]");
    let o = run(&["run", &cfg]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let rows = results(&out);
    let nfes = |label: &str| {
        let mut v: Vec<u64> = rows
            .iter()
            .filter(|r| r["label"] == label && r["seed"] == 0)
            .map(|r| r["nfe"].as_u64().unwrap())
            .collect();
        v.sort();
        v
    };
    assert_eq!(nfes("euler"), vec![10, 20]);
    assert_eq!(nfes("heun"), vec![9, 19]);
    // Budgets out of order that give one step count twice (heun: 3 and 4 are both 2 steps) run
    // it once, and the run finishes.
    let out = dir.path().join("twice");
    let cfg = budgets("twice.toml", &out, "[3, 9, 4]");
    let o = run(&["run", &cfg]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(out.join("results.csv").exists());
    let rows = results(&out);
    let mut heun: Vec<u64> = rows
        .iter()
        .filter(|r| r["label"] == "heun" && r["seed"] == 0)
        .map(|r| r["nfe"].as_u64().unwrap())
        .collect();
    heun.sort();
    assert_eq!(heun, vec![3, 9]);
}

#[test]
fn an_adaptive_sampler_runs_once_per_seed_and_tolerance() {
    // dpm-adaptive uses only the ends of the grid: whatever the step counts or budgets, one cell
    // per seed and tolerance, on the 2-step grid, with the NFE it counted; tighter tolerances
    // cost more evaluations and come closer to the reference. Its entries are one plot curve.
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    for (i, budget) in ["steps = [4, 8, 16]", "nfe = [10, 20]"].iter().enumerate() {
        let out = out.join(i.to_string());
        let body = small(&out, budget).replace(
            "[\"rms\", \"max\", \"sw2\", \"mmd\", \"mode-tv\", \"mode-coverage\"]",
            "[\"rms\"]",
        ) + "[[samplers]]\nkind = \"dpm-adaptive\"\nrtol = 0.1\natol = 0.01\n\
             [[samplers]]\nkind = \"dpm-adaptive\"\nrtol = 0.001\natol = 0.0001\n";
        let cfg = write_config(dir.path(), &format!("a{i}.toml"), &body);
        let o = run(&["run", &cfg]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let rows = results(&out);
        let adaptive: Vec<&Value> = rows
            .iter()
            .filter(|r| r["sampler"] == "dpm-adaptive")
            .collect();
        assert_eq!(adaptive.len(), 4, "two tolerances x two seeds");
        let cell = |rtol: f64, seed: u64| {
            adaptive
                .iter()
                .find(|r| r["params"]["rtol"] == rtol && r["seed"] == seed)
                .unwrap()
        };
        for seed in [0, 1] {
            let (loose, tight) = (cell(0.1, seed), cell(0.001, seed));
            assert_eq!(loose["steps"], 2);
            assert!(tight["nfe"].as_u64() > loose["nfe"].as_u64());
            assert!(tight["rms"].as_f64() < loose["rms"].as_f64());
        }
        // The labels keep the tolerances (results.csv); the plot was drawn.
        assert_ne!(cell(0.1, 0)["label"], cell(0.001, 0)["label"]);
        assert!(out.join("quality_vs_nfe.png").exists());
    }
    assert_eq!(
        scoreflow::experiment::series(&scoreflow_solvers::SamplerSpec::DpmAdaptive(
            scoreflow_solvers::samplers::dpm_solver::AdaptiveParams {
                rtol: 0.001,
                atol: 0.0001,
                ..Default::default()
            }
        )),
        "dpm-adaptive"
    );
}

/// Heun at 16, 32 and 64 steps on the 2-D Gaussian of experiments/gauss2.json, rms only.
fn gaussian_heun(out: &Path, extra: &str) -> String {
    format!(
        r#"
out_dir = "{}"
device = "cpu"
num = 128
steps = [16, 32, 64]
metrics = ["rms"]
{extra}
[model]
kind = "gaussian"
path = "{}"
[[samplers]]
kind = "heun"
"#,
        out.display(),
        concat!(env!("CARGO_MANIFEST_DIR"), "/experiments/gauss2.json")
    )
}

#[test]
fn gaussian_models_use_the_exact_flow_as_reference() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let cfg = write_config(dir.path(), "g.toml", &gaussian_heun(&out, ""));
    assert!(run(&["run", &cfg]).status.success());
    let rows = results(&out);
    let mut errs: Vec<(u64, f64)> = rows
        .iter()
        .map(|r| (r["steps"].as_u64().unwrap(), r["rms"].as_f64().unwrap()))
        .collect();
    errs.sort_by_key(|e| e.0);
    // Second order: each doubling of the steps divides the error by about 4.
    for w in errs.windows(2) {
        let ratio = w[0].1 / w[1].1;
        assert!(ratio > 3.0 && ratio < 5.5, "{errs:?}");
    }
}

#[test]
fn sdedit_grids_start_from_data_and_solve_their_reference_from_there() {
    // Grids with strength or denoise start each cell from the second fresh data set noised to a
    // level partway down (SDEdit): the reference solve starts there too (Heun converges to it at
    // second order), the distance to the input grows with the strength, and the round trip
    // recovers the latents that include the input.
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let grid = |name: &str, key: &str| {
        format!("[[grids]]\nname = \"{name}\"\nplacement = {{ kind = \"karras\" }}\n{key}\n")
    };
    let body = format!(
        "out_dir = \"{}\"\ndevice = \"cpu\"\ndtype = \"float64\"\nnum = 512\nseeds = [0]\nsteps = [8, 16, 32]\nreference_tol = 1e-9\nmetrics = [\"rms\", \"input-distance\", \"roundtrip\", \"mode-tv\"]\n[model]\nkind = \"builtin\"\nname = \"gmm8\"\n{}{}{}{}[[samplers]]\nkind = \"heun\"\n[[samplers]]\nkind = \"euler-ancestral\"\n",
        out.display(),
        grid("s0.2", "strength = 0.2"),
        grid("s0.5", "strength = 0.5"),
        grid("s0.8", "strength = 0.8"),
        grid("d0.5", "denoise = 0.5"),
    );
    let cfg = write_config(dir.path(), "sdedit.toml", &body);
    let o = run(&["run", &cfg]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let rows = results(&out);
    let cell = |grid: &str, label: &str, steps: u64| {
        rows.iter()
            .find(|r| r["grid"] == grid && r["sampler"] == label && r["steps"] == steps)
            .unwrap_or_else(|| panic!("no {label} {steps} on {grid}"))
            .clone()
    };
    let num = |grid: &str, label: &str, steps: u64, m: &str| {
        cell(grid, label, steps)[m]
            .as_f64()
            .unwrap_or_else(|| panic!("{m} of {label} {steps} on {grid}"))
    };
    // Strength runs floor(n s) of n steps, denoise n of floor(n / d): Heun's NFE 2 k - 1.
    assert_eq!(cell("s0.5", "heun", 8)["nfe"], 7);
    assert_eq!(cell("s0.2", "heun", 16)["nfe"], 5);
    assert_eq!(cell("d0.5", "heun", 8)["nfe"], 15);
    // The start: level 4 of Karras' 8-step grid (strength 0.5), level 8 of its 16 (denoise 0.5).
    let karras = |n: usize, i: usize| {
        let (a, b) = (80f64.powf(1.0 / 7.0), 0.002f64.powf(1.0 / 7.0));
        (a + i as f64 / (n - 1) as f64 * (b - a)).powi(7)
    };
    for (g, want) in [("s0.5", karras(8, 4)), ("d0.5", karras(16, 8))] {
        let got = cell(g, "heun", 8)["sigma_start"].as_f64().unwrap();
        assert!((got - want).abs() < 1e-12 * want, "{g}: {got} vs {want}");
    }
    for g in ["s0.5", "s0.8", "d0.5"] {
        let e: Vec<f64> = [8, 16, 32]
            .iter()
            .map(|&n| num(g, "heun", n, "rms"))
            .collect();
        for w in e.windows(2) {
            assert!(w[0] / w[1] > 3.0, "heun on {g}: {e:?}");
        }
        assert!(num(g, "heun", 32, "roundtrip") < 0.05, "{g}");
    }
    // The input is moved further the higher the start; an ancestral sampler forgets more of it.
    let d: Vec<f64> = ["s0.2", "s0.5", "s0.8"]
        .iter()
        .map(|g| num(g, "heun", 32, "input-distance"))
        .collect();
    assert!(d[0] > 0.0 && d[0] < d[1] && d[1] < d[2], "{d:?}");
    assert!(
        num("s0.5", "euler-ancestral", 32, "input-distance") > d[1],
        "{d:?}"
    );
    assert!(cell("s0.5", "euler-ancestral", 32)["roundtrip"].is_null());
    // The samples are the data's (the noised inputs have the exact marginal).
    assert!(num("s0.8", "heun", 32, "mode-tv") < 0.1);
    let csv = std::fs::read_to_string(out.join("results.csv")).unwrap();
    assert!(
        csv.lines().next().unwrap().contains(",input-distance,"),
        "{csv}"
    );
    // Cells start at other levels per grid and step count: nothing is ranked by budget.
    let summary = std::fs::read_to_string(out.join("summary.md")).unwrap();
    assert!(
        summary.contains("Not ranked by budget: the cells start from data")
            && !summary.contains("NFE at most"),
        "{summary}"
    );
    let plain =
        body.split("[[grids]]").next().unwrap().to_string() + "[[samplers]]\nkind = \"heun\"\n";
    // Refused before any work, naming the problem.
    let refused = |name: &str, text: String, needle: &str| {
        let folder = dir.path().join(name);
        let text = text.replace(&out.display().to_string(), &folder.display().to_string());
        let cfg = write_config(dir.path(), &format!("{name}.toml"), &text);
        let o = run(&["run", &cfg]);
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{err}");
        assert!(err.contains(needle), "{err}");
        assert!(!folder.exists());
    };
    // Without such a grid the metric has nothing to measure; AFS's first step assumes pure noise.
    refused(
        "plain",
        plain,
        "metric input-distance needs a grid that starts from data",
    );
    refused(
        "afs",
        format!("afs = true\n{body}"),
        "a grid with strength starts from noised data",
    );
    // A sampler that cannot run the levels a strength leaves, named before any cell runs.
    let head = body
        .split("[[grids]]")
        .next()
        .unwrap()
        .replace("steps = [8, 16, 32]", "steps = [8, 3]");
    refused(
        "restart",
        format!(
            "{head}{}[[samplers]]\nkind = \"euler\"\n[[samplers]]\nkind = \"restart\"\n",
            grid("s0.5", "strength = 0.5")
        ),
        "restart at 3 steps (strength 0.5 runs 1 of them) on the grid s0.5: restart: a restart returns to a level between the first and the last step",
    );
}

#[test]
fn the_roundtrip_metric_recovers_the_noise_at_the_samplers_order() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let body = gaussian_heun(&out, "")
        .replace("metrics = [\"rms\"]", "metrics = [\"rms\", \"roundtrip\"]")
        + "[[samplers]]\nkind = \"euler-ancestral\"\n[[samplers]]\nkind = \"euler\"\n"
        + "[[samplers]]\nkind = \"belm\"\n";
    let cfg = write_config(dir.path(), "g.toml", &body);
    let o = run(&["run", &cfg]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let rows = results(&out);
    let trip = |label: &str, steps: u64| {
        rows.iter()
            .find(|r| r["label"] == label && r["steps"] == steps)
            .unwrap()["roundtrip"]
            .clone()
    };
    // Euler's round trip falls about 2x per doubling of the steps (first order), Heun's about
    // 8x: third order, one more than its own, as the leading local errors of a method of even
    // order p, C h^(p+1) on the way down and C (-h)^(p+1) on the way up, cancel. A sampler that
    // draws noise has none.
    for (label, lo, hi) in [("heun", 6.5, 11.0), ("euler", 1.6, 2.5)] {
        let e: Vec<f64> = [16, 32, 64]
            .iter()
            .map(|&n| trip(label, n).as_f64().unwrap())
            .collect();
        for w in e.windows(2) {
            assert!(w[0] / w[1] > lo && w[0] / w[1] < hi, "{label} {e:?}");
        }
    }
    assert!(trip("heun", 64).as_f64().unwrap() < 5e-3);
    assert!(trip("euler-ancestral", 32).is_null());
    // An exact-inversion sampler undoes its own run (with the companion the run left): to
    // float32 rounding at every step count (the config's dtype).
    for n in [16, 32, 64] {
        let e = trip("belm", n).as_f64().unwrap();
        assert!(e < 1e-4, "belm at {n} steps: {e}");
    }
    let csv = std::fs::read_to_string(out.join("results.csv")).unwrap();
    assert!(csv.lines().next().unwrap().contains(",roundtrip,"), "{csv}");
    let summary = std::fs::read_to_string(out.join("summary.md")).unwrap();
    assert!(summary.contains("## roundtrip"), "{summary}");
}

#[test]
fn clipped_experiments_key_their_cells_and_solve_their_own_reference() {
    let dir = tempfile::tempdir().unwrap();
    let body = gaussian_heun;
    let (plain, clipped) = (dir.path().join("plain"), dir.path().join("clipped"));
    for (out, extra) in [(&plain, ""), (&clipped, "clip_denoised = 0.8")] {
        let cfg = write_config(dir.path(), "c.toml", &body(out, extra));
        let o = run(&["run", &cfg]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    }
    let (a, b) = (results(&plain), results(&clipped));
    let keys = |rows: &[Value]| -> Vec<String> {
        rows.iter()
            .map(|r| r["key"].as_str().unwrap().to_string())
            .collect()
    };
    assert!(
        keys(&a).iter().all(|k| !keys(&b).contains(k)),
        "a clip changes every cell's key"
    );
    // The clipped samples lie within [-0.8, 0.8] (the Gaussian's mean is at (1, -0.5)), and the
    // reference is the clipped model's own flow (not the Gaussian's exact one): the errors
    // still fall with the steps.
    for k in keys(&b) {
        let x = scoreflow::npy::read(&clipped.join("samples").join(format!("{k}.npy"))).unwrap();
        assert!(x.abs().max().double_value(&[]) <= 0.8 + 1e-6);
    }
    let mut errs: Vec<(u64, f64)> = b
        .iter()
        .map(|r| (r["steps"].as_u64().unwrap(), r["rms"].as_f64().unwrap()))
        .collect();
    errs.sort_by_key(|e| e.0);
    println!("clipped: {errs:?}");
    assert!(errs[0].1 > errs[2].1 && errs[2].1 < 0.05, "{errs:?}");
    for (extra, needle) in [
        (
            "clip_denoised = 1.0\ndynamic_threshold = [0.99, 1.5]",
            "give clip_denoised or dynamic_threshold, not both",
        ),
        (
            "clip_denoised = -1.0",
            "the clipping range must be positive",
        ),
        (
            "dynamic_threshold = [1.5, 2.0]",
            "dynamic thresholding needs 0 < ratio <= 1",
        ),
    ] {
        let out = dir.path().join("never");
        let cfg = write_config(dir.path(), "bad.toml", &body(&out, extra));
        let o = run(&["run", &cfg]);
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{err}");
        assert!(err.contains(needle), "{extra}: {err}");
        assert!(!out.exists());
    }
}

#[test]
fn bad_experiments_fail_before_any_work() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("never");
    let base = small(&out, "steps = [4, 8]");
    let cases = [
        (base.replace("kind = \"heun\"", "kind = \"heunn\""), "heunn"),
        (base.replace("\"mmd\"", "\"fid-of-doom\""), "fid-of-doom"),
        (
            base.replace(
                "steps = [4, 8]",
                "steps = [4, 8]\n[grid]\nsigma_min = 80.0\nsigma_max = 1.0",
            ),
            "sigma_min",
        ),
        (
            base.replace("steps = [4, 8]", "steps = [0]"),
            "steps must be at least 1",
        ),
        (
            base.replace("num = 256", "num = 256\ncolour = \"red\""),
            "colour",
        ),
        // ddpm with the learned variance on a model without one: refused before the first cell
        // (euler's cells come first and would otherwise be written).
        (
            base.replace(
                "kind = \"ddim\"\neta = 1.0",
                "kind = \"ddpm\"\nvariance = \"learned\"",
            ),
            "learned_sigmas = true",
        ),
        (
            base.replace(
                "kind = \"builtin\"\nname = \"gmm8\"",
                "kind = \"checkpoint\"\npath = \"/nonexistent.safetensors\"",
            )
            .replace(
                "[\"rms\", \"max\", \"sw2\", \"mmd\", \"mode-tv\", \"mode-coverage\"]",
                "[\"rms\"]",
            ),
            "does not exist",
        ),
        (
            base.replace(
                "kind = \"builtin\"\nname = \"gmm8\"",
                &format!(
                    "kind = \"gaussian\"\npath = \"{}\"",
                    concat!(env!("CARGO_MANIFEST_DIR"), "/experiments/gauss2.json")
                ),
            ),
            "needs a mixture",
        ),
        (base.replace("steps = [4, 8]", "nfe = [0]"), "NFE budget 0"),
        // Keys a sampler or grid placement without them does not have are refused too.
        (
            base.replace("kind = \"heun\"", "kind = \"dpmpp-2m\"\norder = 3"),
            "unknown field `order`",
        ),
        (
            base.replace("kind = \"heun\"", "kind = \"heun\"\norder = 3"),
            "unknown field `order`",
        ),
        (
            base.replace(
                "steps = [4, 8]",
                "steps = [4, 8]\n[grid]\nplacement = { kind = \"log-snr\", rho = 3.0 }",
            ),
            "unknown field `rho`",
        ),
        // Repeated entries would count the same cells twice.
        (
            base.replace("seeds = [0, 1]", "seeds = [0, 1, 0]"),
            "seeds lists 0 twice",
        ),
        (
            base.replace("steps = [4, 8]", "steps = [4, 8, 4]"),
            "steps lists 4 twice",
        ),
        (
            base.replace("kind = \"heun\"", "kind = \"euler\""),
            "samplers lists euler twice",
        ),
        (
            base.replace(
                &format!("out_dir = \"{}\"", out.display()),
                "out_dir = \"\"",
            ),
            "out_dir must not be empty",
        ),
        (
            base.replace("steps = [4, 8]", "steps = [4, 100000000000]"),
            "the most a grid may have",
        ),
        // An output folder that cannot be created is found before any work...
        (
            base.replace(
                &format!("out_dir = \"{}\"", out.display()),
                &format!("out_dir = \"{}/bad0.toml/sub\"", dir.path().display()),
            ),
            "bad0.toml is not a folder",
        ),
        // ...and cells that fail before any finished leave no folder behind.
        (
            base.replace(
                "[[samplers]]\nkind = \"euler\"\n[[samplers]]\nkind = \"heun\"\n",
                "",
            )
            .replace("eta = 1.0", "eta = 1e308"),
            "sampler ddim with eta = 1e+308",
        ),
    ];
    for (i, (body, needle)) in cases.iter().enumerate() {
        let cfg = write_config(dir.path(), &format!("bad{i}.toml"), body);
        let o = run(&["run", &cfg]);
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "case {i}: {err}");
        assert!(
            err.contains(needle),
            "case {i}: expected '{needle}' in {err}"
        );
        assert!(!out.exists(), "case {i}: work started");
    }
    let o = run(&["plot", dir.path().join("nothing").to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2));
}

#[test]
fn gmm2d_errors_fall_at_the_samplers_orders() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let body = format!(
        r#"
out_dir = "{}"
device = "cpu"
num = 512
steps = [16, 32, 64]
metrics = ["rms"]
reference_tol = 1e-7
[model]
kind = "builtin"
name = "gmm8"
[[samplers]]
kind = "euler"
[[samplers]]
kind = "heun"
[[samplers]]
kind = "dpmpp-2m"
"#,
        out.display()
    );
    let cfg = write_config(dir.path(), "g.toml", &body);
    assert!(run(&["run", &cfg]).status.success());
    let rows = results(&out);
    let series = |label: &str| {
        let mut v: Vec<(f64, f64)> = rows
            .iter()
            .filter(|r| r["label"] == label)
            .map(|r| (r["nfe"].as_f64().unwrap(), r["rms"].as_f64().unwrap()))
            .collect();
        v.sort_by(|a, b| a.0.partial_cmp(&b.0).unwrap());
        v
    };
    let slope = |v: &[(f64, f64)]| {
        let n = v.len() as f64;
        let (mx, my) = (
            v.iter().map(|p| p.0.ln()).sum::<f64>() / n,
            v.iter().map(|p| p.1.ln()).sum::<f64>() / n,
        );
        let cov: f64 = v.iter().map(|p| (p.0.ln() - mx) * (p.1.ln() - my)).sum();
        let var: f64 = v.iter().map(|p| (p.0.ln() - mx).powi(2)).sum();
        -cov / var
    };
    let (e, h, d) = (series("euler"), series("heun"), series("dpmpp-2m"));
    let (se, sh, sd) = (slope(&e), slope(&h), slope(&d));
    println!("orders against NFE: euler {se:.2}, heun {sh:.2}, dpmpp-2m {sd:.2}");
    assert!((se - 1.0).abs() < 0.2, "euler {se}");
    assert!((sh - 2.0).abs() < 0.4, "heun {sh}");
    assert!((sd - 2.0).abs() < 0.4, "dpmpp-2m {sd}");
    // At (about) equal NFE, Heun and DPM-Solver++ are below Euler: Heun at 63 vs Euler at 64.
    assert!(h[2].1 < e[2].1 && d[2].1 < e[2].1);
}

#[test]
fn image_models_get_fd_and_an_image_grid() {
    let dir = tempfile::tempdir().unwrap();
    let train_cfg = write_config(
        dir.path(),
        "t.toml",
        &format!(
            "out_dir = \"{}\"\ndevice = \"cpu\"\n[data]\nkind = \"digits\"\n[model.backbone]\nkind = \"unet\"\nchannels = 8\nchannel_mult = [1, 2]\nblocks = 1\nattn_resolutions = []\n[train]\nsteps = 5\nbatch = 16\ncheckpoint_every = 5\nlog_every = 5\n",
            dir.path().join("run").display()
        ),
    );
    let out = dir.path().join("out");
    let ck = dir.path().join("run/checkpoint.safetensors");
    let body = format!(
        "out_dir = \"{}\"\ndevice = \"cpu\"\ndtype = \"float32\"\nnum = 64\nsteps = [2, 4]\nmetrics = [\"fd\"]\n[model]\nkind = \"checkpoint\"\npath = \"{}\"\ntrain_config = \"{}\"\n[[samplers]]\nkind = \"euler\"\n",
        out.display(),
        ck.display(),
        train_cfg
    );
    let cfg = write_config(dir.path(), "e.toml", &body);
    let o = run(&["run", &cfg]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(ck.exists(), "the checkpoint was trained on first use");
    let rows = results(&out);
    assert_eq!(rows.len(), 2);
    assert!(rows.iter().all(|r| r["fd"].as_f64().unwrap() > 0.0));
    let floors: Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("floors.json")).unwrap()).unwrap();
    // A barely trained network is far from the data; two resamples of the data are close.
    assert!(rows[0]["fd"].as_f64().unwrap() > floors["fd"].as_f64().unwrap());
    assert!(out.join("samples_grid.png").exists());
    // fd on a model that is not a checkpoint is refused up front.
    let bad = write_config(
        dir.path(),
        "b.toml",
        &small(&dir.path().join("never"), "steps = [4]").replace("\"mode-coverage\"]", "\"fd\"]"),
    );
    let o = run(&["run", &bad]);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("metric fd needs"));
}

#[test]
fn every_shipped_config_loads() {
    // The experiment files (those with [[samplers]]) and the training configs in experiments/
    // parse and validate: a sampler renamed or a key dropped breaks a documented command.
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("experiments");
    let mut seen = (0, 0);
    let files = std::fs::read_dir(&dir)
        .unwrap()
        .chain(std::fs::read_dir(dir.join("spacing")).unwrap())
        .chain(std::fs::read_dir(dir.join("flow")).unwrap())
        .chain(std::fs::read_dir(dir.join("gits")).unwrap());
    for entry in files {
        let path = entry.unwrap().path();
        if path.extension().and_then(|e| e.to_str()) != Some("toml") {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        if text.contains("[[samplers]]") {
            let cfg = scoreflow::experiment::ExperimentConfig::load(&path);
            assert!(cfg.is_ok(), "{}: {:?}", path.display(), cfg.err());
            // What `run` writes to experiment.json, `plot` reads back as the same cells (JSON
            // has no infinity: `s_tmax = inf` is written as null).
            let cfg = cfg.unwrap();
            let json = serde_json::to_string(&cfg).unwrap();
            let back: scoreflow::experiment::ExperimentConfig = serde_json::from_str(&json)
                .unwrap_or_else(|e| {
                    panic!(
                        "{}: experiment.json does not read back: {e}",
                        path.display()
                    )
                });
            assert_eq!(back.cell_keys(), cfg.cell_keys(), "{}", path.display());
            seen.0 += 1;
        } else {
            let cfg = scoreflow::train::TrainConfig::load(&path);
            assert!(cfg.is_ok(), "{}: {:?}", path.display(), cfg.err());
            seen.1 += 1;
        }
    }
    // gmm2d, fewstep, adaptive, edm-ablation, restart, stochastic, gauss64, moons-samplers,
    // digits-samplers, digits-stochastic, digits-conditional, digits-guidance,
    // digits-guidance-interval, digits-cfgpp, gmm8-variance,
    // digits-variance, digits-clip, inversion, inversion-sd,
    // spacing/{leading,trailing,linspace,comfy,comfy-sd,comfy-discard,digits,digits-fractional}, flow/{exact-karras,exact-shift1,exact-shift3,
    // checkpoint-flow,checkpoint-edm,digits-flow,digits-edm,reflow-1,reflow-2,exact-ancestral,exact-linear-quadratic,
    // digits-ancestral}; moons,
    // gmm8-train, digits, gmm8-learned, digits-learned, gmm8-flow, digits-flow, gmm8-reflow,
    // gmm8-posthoc; gits/{gmm8,digits,digits-afs}; eta-sweep, digits-eta-sweep; sdedit,
    // digits-sdedit.
    assert_eq!(seen, (47, 9));
}

#[test]
fn plot_draws_degenerate_values_without_hanging() {
    // A zero NFE or metrics at the ends of the float range (a hand-edited or foreign
    // results.jsonl) are left off the log axes instead of sending the plot library into a loop.
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let cfg = write_config(dir.path(), "e.toml", &small(&out, "steps = [4, 8]"));
    assert!(run(&["run", &cfg]).status.success());
    let text = std::fs::read_to_string(out.join("results.jsonl")).unwrap();
    let mut lines: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    lines[0]["nfe"] = 0.into();
    lines[1]["rms"] = 1e308.into();
    lines[2]["rms"] = 1e-320.into();
    let edited: Vec<String> = lines.iter().map(|v| v.to_string()).collect();
    std::fs::write(out.join("results.jsonl"), edited.join("\n") + "\n").unwrap();
    std::fs::remove_file(out.join("experiment.json")).unwrap();
    let mut child = bin()
        .args(["plot", out.to_str().unwrap()])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let t0 = std::time::Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if t0.elapsed().as_secs() > 60 {
            child.kill().unwrap();
            panic!("plot still running after 60 s");
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    assert!(status.success());
    assert!(out.join("quality_vs_nfe.png").exists());
    // Wrong types in an edited line are an error naming the line and the field, for plot and
    // for run (which would otherwise count the cell as done).
    for (field, value, needle) in [
        (
            "nfe",
            json!("eight"),
            "line 2: `nfe` should be a whole number, not \"eight\"",
        ),
        (
            "rms",
            json!([1]),
            "line 2: `rms` should be a number or null",
        ),
        ("label", json!(null), "line 2: `label` should be a string"),
    ] {
        let mut bad = lines.clone();
        bad[1][field] = value;
        let edited: Vec<String> = bad.iter().map(|v| v.to_string()).collect();
        std::fs::write(out.join("results.jsonl"), edited.join("\n") + "\n").unwrap();
        for args in [&["plot", out.to_str().unwrap()][..], &["run", &cfg]] {
            let o = run(args);
            let err = String::from_utf8_lossy(&o.stderr);
            assert_eq!(o.status.code(), Some(2), "{args:?}: {err}");
            assert!(err.contains(needle), "{args:?}: {err}");
        }
    }
}

#[test]
fn the_summary_names_the_best_sampler_within_each_budget() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let cfg = write_config(dir.path(), "e.toml", &small(&out, "steps = [4, 8, 16]"));
    let o = run(&["run", &cfg]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(
        stdout.contains("best rms within a budget of evaluations") && stdout.contains("summary.md"),
        "{stdout}"
    );
    let md = std::fs::read_to_string(out.join("summary.md")).unwrap();
    // Means over the two seeds, from results.jsonl, per (label, steps).
    let rows = results(&out);
    let mean = |label: &str, steps: u64, m: &str| -> Option<(f64, f64)> {
        let v: Vec<(f64, f64)> = rows
            .iter()
            .filter(|r| r["label"] == label && r["steps"] == steps)
            .filter_map(|r| Some((r["nfe"].as_f64()?, r[m].as_f64()?)))
            .collect();
        (!v.is_empty()).then(|| {
            let k = v.len() as f64;
            (
                v.iter().map(|p| p.0).sum::<f64>() / k,
                v.iter().map(|p| p.1).sum::<f64>() / k,
            )
        })
    };
    let cells: Vec<(&str, u64)> = ["euler", "heun", "ddim(eta=1)"]
        .iter()
        .flat_map(|l| [4u64, 8, 16].map(|s| (*l, s)))
        .collect();
    for (m, higher) in [("rms", false), ("sw2", false), ("mode-coverage", true)] {
        let section = md
            .split("\n## ")
            .find(|s| s.starts_with(&format!("{m}:")))
            .unwrap_or_else(|| panic!("no section {m} in\n{md}"));
        // The matrix: heun at 8 steps is 15 evaluations.
        let heun = section.lines().find(|l| l.starts_with("| heun |")).unwrap();
        assert!(heun.contains("(15)"), "{heun}");
        // The budget table, checked against the means: every line's sampler is the best cell
        // within its budget, and every budget where the best cell changes has a line.
        let lines: Vec<Vec<String>> = section
            .lines()
            .skip_while(|l| !l.starts_with("| NFE at most"))
            .skip(2)
            .take_while(|l| l.starts_with('|'))
            .map(|l| l.split('|').map(|c| c.trim().to_string()).collect())
            .collect();
        let mut budgets: Vec<f64> = cells
            .iter()
            .filter_map(|(l, s)| mean(l, *s, m).map(|p| p.0))
            .collect();
        budgets.sort_by(|a, b| a.total_cmp(b));
        budgets.dedup();
        let mut expected = Vec::new();
        for b in budgets {
            let best = cells
                .iter()
                .filter_map(|(l, s)| mean(l, *s, m).map(|p| (*l, *s, p)))
                .filter(|(_, _, p)| p.0 <= b)
                .fold(None, |acc: Option<(&str, u64, (f64, f64))>, c| match acc {
                    Some(a) if (higher && a.2 .1 >= c.2 .1) || (!higher && a.2 .1 <= c.2 .1) => {
                        Some(a)
                    }
                    _ => Some(c),
                })
                .unwrap();
            if expected.last().map(|e: &(f64, &str, u64)| (e.1, e.2)) != Some((best.0, best.1)) {
                expected.push((b, best.0, best.1));
            }
        }
        assert_eq!(lines.len(), expected.len(), "{m}:\n{section}");
        for (line, (b, label, steps)) in lines.iter().zip(&expected) {
            assert_eq!(line[1].parse::<f64>().unwrap(), *b, "{m}: {line:?}");
            assert_eq!(line[2], *label, "{m}: {line:?}");
            assert_eq!(line[3], steps.to_string(), "{m}: {line:?}");
        }
        // The cheapest-to-reach table: each line's cell reaches its target with the fewest
        // evaluations of all cells that do (lower-is-better metrics only).
        let reach: Vec<Vec<String>> = section
            .lines()
            .skip_while(|l| !l.starts_with(&format!("| {m} at most")))
            .skip(2)
            .take_while(|l| l.starts_with('|'))
            .map(|l| l.split('|').map(|c| c.trim().to_string()).collect())
            .collect();
        assert_eq!(reach.is_empty(), higher, "{m}:\n{section}");
        for line in &reach {
            let target: f64 = line[1].parse().unwrap();
            let fewest = cells
                .iter()
                .filter_map(|(l, s)| mean(l, *s, m))
                .filter(|p| p.1 <= target)
                .map(|p| p.0)
                .fold(f64::INFINITY, f64::min);
            let (label, steps) = (line[2].as_str(), line[3].parse::<u64>().unwrap());
            let (nfe, value) = mean(label, steps, m).unwrap();
            assert!(value <= target && nfe == fewest, "{m}: {line:?}");
        }
        if m == "rms" {
            assert!(!reach.is_empty(), "{section}");
            // The stochastic sampler has no rms: it never appears in that section.
            assert!(!section.contains("ddim(eta=1)"), "{section}");
            // More budget buys a smaller error: the last line is heun at 16 steps (31 NFE).
            assert_eq!(expected.last().unwrap().1, "heun");
        }
    }
    // The floor of sw2 is named.
    assert!(md.contains("fresh data's own value"), "{md}");
}

#[test]
fn a_gits_placement_is_solved_for_the_model_and_equals_its_levels() {
    placement_solved_for_the_model_equals_its_levels(
        &["--metric", "l2", "--coeff", "1"],
        r#"placement = { kind = "gits", metric = "l2", coeff = 1.0, samples = 64, teacher_steps = 24 }"#,
    );
    placement_solved_for_the_model_equals_its_levels(
        &["--method", "oss"],
        r#"placement = { kind = "oss", samples = 64, teacher_steps = 24 }"#,
    );
}

/// The same cells on a placement chosen for the model (`inline`, solved when the run starts)
/// and on the levels that `optimize-grid` writes for the same settings (`flags`): the same
/// results. rms is measured against a reference down to sigma_min, so a grid that stops early
/// is not excused.
fn placement_solved_for_the_model_equals_its_levels(flags: &[&str], inline: &str) {
    let dir = tempfile::tempdir().unwrap();
    let grid_file = dir.path().join("grid.toml");
    let o = run(&[
        &[
            "optimize-grid",
            "--denoiser",
            "builtin:gmm8",
            "--steps",
            "3,5",
        ][..],
        flags,
        &[
            "--samples",
            "64",
            "--teacher-steps",
            "24",
            "--device",
            "cpu",
            "--dtype",
            "float64",
            "--out",
            grid_file.to_str().unwrap(),
        ],
    ]
    .concat());
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let text = std::fs::read_to_string(&grid_file).unwrap();
    let table: toml::Table = toml::from_str(&text).unwrap();
    let placement = table["grid"]["placement"].to_string();
    let kind = if flags.contains(&"oss") {
        "oss"
    } else {
        "gits"
    };
    assert!(table.contains_key(kind), "{text}");
    let mut outs = Vec::new();
    for (name, grid) in [
        (kind, inline.to_string()),
        ("levels", format!("placement = {placement}")),
    ] {
        let out = dir.path().join(name);
        let cfg = format!(
            r#"
out_dir = "{}"
device = "cpu"
num = 128
seeds = [0]
steps = [3, 5]
reference_tol = 1e-7
metrics = ["rms", "sw2"]
[model]
kind = "builtin"
name = "gmm8"
[grid]
{grid}
[[samplers]]
kind = "euler"
[[samplers]]
kind = "ipndm"
"#,
            out.display()
        );
        let path = write_config(dir.path(), &format!("{name}.toml"), &cfg);
        let o = run(&["run", &path]);
        assert!(
            o.status.success(),
            "{name}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        outs.push(results(&out));
    }
    let strip = |v: &[Value]| -> Vec<(String, u64, f64, f64)> {
        v.iter()
            .map(|r| {
                (
                    r["sampler"].to_string(),
                    r["steps"].as_u64().unwrap(),
                    r["rms"].as_f64().unwrap(),
                    r["sw2"].as_f64().unwrap(),
                )
            })
            .collect()
    };
    let (mut a, mut b) = (strip(&outs[0]), strip(&outs[1]));
    a.sort_by(|x, y| x.partial_cmp(y).unwrap());
    b.sort_by(|x, y| x.partial_cmp(y).unwrap());
    assert_eq!(a.len(), 4);
    assert_eq!(a, b);
    // An adaptive sampler has no range on these placements; a teacher too short is an error.
    let bad = write_config(
        dir.path(),
        "bad.toml",
        &small(
            &dir.path().join("bad"),
            &format!(
                "steps = [4]\n[grid]\nplacement = {{ kind = \"{kind}\", teacher_steps = 3 }}\n"
            ),
        ),
    );
    let o = run(&["run", &bad]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains(&format!(
            "{kind} chooses 4 steps from a teacher grid of 3 steps"
        )),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(!dir.path().join("bad").exists());
}

#[test]
fn plot_merges_experiments_into_one_table_and_plot() {
    let dir = tempfile::tempdir().unwrap();
    let mut outs = Vec::new();
    for (name, grid) in [
        ("karras", ""),
        ("logsnr", "[grid]\nplacement = { kind = \"log-snr\" }\n"),
    ] {
        let out = dir.path().join(name);
        let cfg = small(&out, &format!("steps = [4, 8]\n{grid}"));
        let path = write_config(dir.path(), &format!("{name}.toml"), &cfg);
        let o = run(&["run", &path]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        outs.push(out);
    }
    let before = std::fs::read(outs[0].join("results.csv")).unwrap();
    let merged = dir.path().join("merged");
    let (a, b, m) = (
        outs[0].to_str().unwrap(),
        outs[1].to_str().unwrap(),
        merged.to_str().unwrap(),
    );
    let o = run(&["plot", a, b, "--out", m]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let csv = std::fs::read_to_string(merged.join("results.csv")).unwrap();
    let lines: Vec<&str> = csv.lines().skip(1).collect();
    // 3 samplers x 2 step counts x 2 seeds from each folder.
    assert_eq!(lines.len(), 24);
    assert_eq!(lines.iter().filter(|l| l.contains("[karras]")).count(), 12);
    assert_eq!(lines.iter().filter(|l| l.contains("[logsnr]")).count(), 12);
    assert!(lines
        .iter()
        .any(|l| l.starts_with("\"heun [logsnr]\",heun,8,15,")));
    assert!(merged.join("quality_vs_nfe.png").exists());
    assert!(merged.join("summary.md").exists());
    assert_eq!(std::fs::read(outs[0].join("results.csv")).unwrap(), before);
    // The same rows as each folder's own table, relabelled.
    let own = std::fs::read_to_string(outs[1].join("results.csv")).unwrap();
    for l in own.lines().skip(1) {
        let (label, rest) = l[1..].split_once('"').unwrap();
        let tagged = format!("\"{label} [logsnr]\"{rest}");
        assert!(
            lines.contains(&tagged.as_str()),
            "{tagged} not in the merged table"
        );
    }
    // Another experiment's folder as --out would lose its own table and plots.
    let other = dir.path().join("other");
    std::fs::create_dir(&other).unwrap();
    std::fs::copy(outs[0].join("results.jsonl"), other.join("results.jsonl")).unwrap();
    let other_s = other.to_str().unwrap().to_string();
    // Errors: several folders without --out, --out naming an input, a folder without results.
    for (args, needle) in [
        (vec!["plot", a, b], "several merged into --out"),
        (vec!["plot", a, "--out", m], "two or more"),
        (vec!["plot", a, b, "--out", a], "is one of the inputs"),
        (
            vec!["plot", a, b, "--out", &format!("{a}/")],
            "is one of the inputs",
        ),
        (
            vec!["plot", a, &format!("{a}/"), "--out", m],
            "lists the folder",
        ),
        (
            vec!["plot", a, b, "--out", &other_s],
            "holds an experiment's results",
        ),
    ] {
        let o = run(&args);
        assert_eq!(o.status.code(), Some(2), "{args:?}");
        assert!(
            String::from_utf8_lossy(&o.stderr).contains(needle),
            "{args:?}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    }
    let empty = dir.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    let o = run(&[
        "plot",
        a,
        empty.to_str().unwrap(),
        "--out",
        dir.path().join("m2").to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("has no results"));
    assert!(!dir.path().join("m2").exists());
}

#[test]
fn a_grid_axis_runs_every_sampler_on_each_grid_with_one_grids_keys() {
    // `[[grids]]`: every sampler on each grid, lines tagged `sampler @ grid`; a cell has the key
    // and the results it has in an experiment with that grid alone as `[grid]`.
    let dir = tempfile::tempdir().unwrap();
    let levels =
        r#"placement = { kind = "levels", sigmas = [[80.0, 10.0, 2.0, 0.3, 0.05, 0.002]] }"#;
    let gits = r#"placement = { kind = "gits", metric = "l2", coeff = 1.0, samples = 64, teacher_steps = 24 }"#;
    let head = |out: &Path| {
        format!(
            r#"
out_dir = "{}"
device = "cpu"
num = 128
seeds = [0]
steps = [3, 5]
reference_tol = 1e-7
metrics = ["rms", "sw2"]
[model]
kind = "builtin"
name = "gmm8"
[[samplers]]
kind = "euler"
[[samplers]]
kind = "ipndm"
"#,
            out.display()
        )
    };
    let axis = dir.path().join("axis");
    let cfg = format!(
        "{}[[grids]]\nplacement = {{ kind = \"karras\" }}\n[[grids]]\nname = \"ays\"\n{levels}\n[[grids]]\nname = \"gits-l2\"\n{gits}\n",
        head(&axis)
    );
    let path = write_config(dir.path(), "axis.toml", &cfg);
    let o = run(&["run", &path]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let rows = results(&axis);
    assert_eq!(rows.len(), 2 * 3 * 2, "samplers x grids x steps");
    let mut labels: Vec<&str> = rows.iter().map(|r| r["label"].as_str().unwrap()).collect();
    labels.sort_unstable();
    labels.dedup();
    assert_eq!(
        labels,
        [
            "euler @ ays",
            "euler @ gits-l2",
            "euler @ karras",
            "ipndm @ ays",
            "ipndm @ gits-l2",
            "ipndm @ karras"
        ]
    );
    // Each grid alone: the same keys, the same numbers.
    for (name, grid) in [("karras", ""), ("ays", levels), ("gits-l2", gits)] {
        let out = dir.path().join(name);
        let cfg = format!("{}[grid]\n{grid}\n", head(&out));
        let path = write_config(dir.path(), &format!("{name}.toml"), &cfg);
        let o = run(&["run", &path]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let alone = results(&out);
        assert_eq!(alone.len(), 4);
        for r in &alone {
            let twin = rows
                .iter()
                .find(|a| a["key"] == r["key"])
                .unwrap_or_else(|| panic!("{name}: no cell {} on the axis", r["key"]));
            assert_eq!(twin["grid"], json!(name));
            assert_eq!(
                twin["label"],
                json!(format!("{} @ {name}", r["label"].as_str().unwrap()))
            );
            for m in ["rms", "sw2"] {
                assert_eq!(twin[m], r[m], "{name} {m}");
            }
        }
    }
    // The grids differ where they should: GITS beats Karras for euler at 3 steps here.
    let rms = |l: &str| {
        rows.iter()
            .find(|r| r["label"] == json!(l) && r["steps"] == json!(3))
            .unwrap()["rms"]
            .as_f64()
            .unwrap()
    };
    assert!(rms("euler @ gits-l2") < 0.6 * rms("euler @ karras"));
    // The summary and a redraw keep the tags; a rerun has nothing left to do.
    let summary = std::fs::read_to_string(axis.join("summary.md")).unwrap();
    assert!(summary.contains("| ipndm @ gits-l2 |"), "{summary}");
    std::fs::remove_file(axis.join("results.csv")).unwrap();
    let o = run(&["plot", axis.to_str().unwrap()]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let csv = std::fs::read_to_string(axis.join("results.csv")).unwrap();
    assert_eq!(csv.lines().count(), 13);
    assert!(csv.contains("\"euler @ ays\""));
    let o = run(&["run", &path]);
    assert!(o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("12 cells, 12 done"), "{err}");
    assert!(
        !err.contains("gits: teacher"),
        "no GITS solve when every cell is done: {err}"
    );
    // The one-grid runs' lines, gathered in a new folder, are the axis's cells: nothing to run,
    // and the table labels them with their grids.
    let reuse = dir.path().join("reuse");
    std::fs::create_dir_all(&reuse).unwrap();
    let gathered: String = ["karras", "ays", "gits-l2"]
        .iter()
        .map(|n| std::fs::read_to_string(dir.path().join(n).join("results.jsonl")).unwrap())
        .collect();
    std::fs::write(reuse.join("results.jsonl"), gathered).unwrap();
    let path2 = write_config(
        dir.path(),
        "reuse.toml",
        &std::fs::read_to_string(&path)
            .unwrap()
            .replace(axis.to_str().unwrap(), reuse.to_str().unwrap()),
    );
    let o = run(&["run", &path2]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        o.status.success() && err.contains("12 cells, 12 done"),
        "{err}"
    );
    let csv2 = std::fs::read_to_string(reuse.join("results.csv")).unwrap();
    let labels2: std::collections::BTreeSet<&str> = csv2
        .lines()
        .skip(1)
        .map(|l| l.split('"').nth(1).unwrap())
        .collect();
    let labels1: std::collections::BTreeSet<&str> = csv
        .lines()
        .skip(1)
        .map(|l| l.split('"').nth(1).unwrap())
        .collect();
    assert_eq!(labels2, labels1);

    // Bad axes fail before any work, naming the problem.
    for (extra, want) in [
        (
            "[grid]\nsigma_min = 0.01\n[[grids]]\nplacement = { kind = \"karras\" }\n".to_string(),
            "not both",
        ),
        (
            "[[grids]]\nplacement = { kind = \"karras\" }\n[[grids]]\nplacement = { kind = \"karras\" }\nsigma_min = 0.01\n".to_string(),
            "give each a name",
        ),
        (
            "[[grids]]\nname = \"a\"\nplacement = { kind = \"log-snr\" }\n[[grids]]\nname = \"a\"\nplacement = { kind = \"karras\" }\n".to_string(),
            "tagged a",
        ),
        (
            "[[grids]]\nname = \"\"\nplacement = { kind = \"karras\" }\n".to_string(),
            "name must not be empty",
        ),
        (
            "[[grids]]\nname = \"a\\\"b\"\nplacement = { kind = \"karras\" }\n".to_string(),
            "has a quote or a control character",
        ),
        (
            "[[grids]]\nplacement = { kind = \"karras\" }\n[[grids]]\nplacement = { kind = \"karras\" }\n".to_string(),
            "twice",
        ),
        (
            // The same grid under another name, and comfy-beta's shape written at its default.
            "[[grids]]\nplacement = { kind = \"karras\" }\n[[grids]]\nname = \"k\"\nplacement = { kind = \"karras\" }\n".to_string(),
            "lists the grid k twice",
        ),
        (
            "[[grids]]\nplacement = { kind = \"timesteps\", spacing = \"comfy-beta\" }\n[[grids]]\nplacement = { kind = \"timesteps\", spacing = \"comfy-beta\", alpha = 0.6 }\n".to_string(),
            "lists the grid timesteps(alpha=0.6,spacing=comfy-beta) twice",
        ),
        (
            "[[grids]]\nplacement = { kind = \"levels\", sigmas = [[80.0, 1.0], [70.0, 2.0]] }\n".to_string(),
            "lists 0 and 1 both have 2 levels",
        ),
        (
            "[[grids]]\nplacement = { kind = \"levels\", sigmas = [[80.0, 1.0], [80.0, 5.0, 1.0]] }\ndiscard_penultimate = true\n".to_string(),
            "the levels placement lists its levels",
        ),
        (
            "[[grids]]\nplacement = { kind = \"karras\" }\ndiscard_penultimate = true\n[[samplers]]\nkind = \"rk45\"\n".to_string(),
            "use it without discard_penultimate",
        ),
        (
            format!("[[grids]]\nplacement = {{ kind = \"karras\" }}\n[[grids]]\n{levels}\n[[samplers]]\nkind = \"dpm-adaptive\"\n"),
            "no range",
        ),
        (
            "[[grids]]\nplacement = { kind = \"ays\", model = \"sdxl\" }\n[[samplers]]\nkind = \"dpm-adaptive\"\n".to_string(),
            "the ays placement has no range",
        ),
        (
            "[grid]\nplacement = { kind = \"karras\" }\n[[grids]]\nplacement = { kind = \"log-snr\" }\n".to_string(),
            "not both",
        ),
        (
            "[[grids]]\nplacement = { kind = \"karras\" }\nsigma_max = 0.001\n".to_string(),
            "sigma",
        ),
        (
            "[[grids]]\nplacement = { kind = \"karras\" }\nstrength = 0.5\ndenoise = 0.5\n".to_string(),
            "strength (diffusers') or denoise (ComfyUI's), not both",
        ),
        (
            "[[grids]]\nplacement = { kind = \"karras\" }\nstrength = 1.5\n".to_string(),
            "must be in (0, 1]",
        ),
        (
            // Both run the whole grid from the data.
            "[[grids]]\nplacement = { kind = \"karras\" }\nstrength = 1.0\n[[grids]]\nname = \"d\"\nplacement = { kind = \"karras\" }\ndenoise = 1.0\n".to_string(),
            "lists the grid d twice",
        ),
        (
            "[[grids]]\nplacement = { kind = \"karras\" }\nstrength = 0.1\n".to_string(),
            "runs no step",
        ),
        (
            format!("[[grids]]\n{gits}\ndenoise = 0.5\n"),
            "denoise takes the tail of a longer grid; the gits placement",
        ),
        (
            "[[grids]]\nplacement = { kind = \"karras\" }\nstrength = 0.5\n[[samplers]]\nkind = \"rk45\"\n".to_string(),
            "a grid with strength starts partway down",
        ),

    ] {
        let out = dir.path().join("bad");
        let path = write_config(
            dir.path(),
            "bad.toml",
            &format!("{}{extra}", head(&out)),
        );
        let o = run(&["run", &path]);
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{extra}: {err}");
        assert!(err.contains(want), "{extra}: {err}");
        assert!(!out.exists(), "{extra}: nothing written");
    }
    // A top-level pair with a third number is refused, not cut to two.
    let out = dir.path().join("bad");
    let path = write_config(
        dir.path(),
        "bad.toml",
        &format!("dynamic_threshold = [0.9, 1.0, 3.0]\n{}", head(&out)),
    );
    let o = run(&["run", &path]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(err.contains("an array of length 2"), "{err}");
    assert!(!out.exists());
}

#[test]
fn a_list_of_values_in_a_samplers_table_sweeps_that_parameter() {
    // `eta = [0.0, 0.5]` and `s_noise = [1.0, 0.9]` in one [[samplers]] table run as the four
    // tables of their combinations would: the same labels, keys and results.
    let dir = tempfile::tempdir().unwrap();
    let head = |out: &Path| {
        format!(
            r#"
out_dir = "{}"
device = "cpu"
num = 64
seeds = [0]
steps = [3, 5]
metrics = ["sw2"]
[model]
kind = "builtin"
name = "gmm8"
[[samplers]]
kind = "euler"
"#,
            out.display()
        )
    };
    let swept = dir.path().join("swept");
    let cfg = format!(
        "{}[[samplers]]\nkind = \"euler-ancestral\"\neta = [0.0, 0.5]\ns_noise = [1.0, 0.9]\n",
        head(&swept)
    );
    let cfg = write_config(dir.path(), "swept.toml", &cfg);
    let loaded = scoreflow::experiment::ExperimentConfig::load(Path::new(&cfg)).unwrap();
    let labels: Vec<String> = loaded
        .samplers
        .iter()
        .map(scoreflow::experiment::label)
        .collect();
    assert_eq!(
        labels,
        [
            "euler",
            "euler-ancestral(eta=0)",
            "euler-ancestral(eta=0,noise=0.9)",
            "euler-ancestral(eta=0.5)",
            "euler-ancestral(eta=0.5,noise=0.9)"
        ]
    );
    let o = run(&["run", &cfg]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let tables = dir.path().join("tables");
    let mut four = head(&tables);
    for (eta, s_noise) in [(0.0, 1.0), (0.0, 0.9), (0.5, 1.0), (0.5, 0.9)] {
        four += &format!(
            "[[samplers]]\nkind = \"euler-ancestral\"\neta = {eta:?}\ns_noise = {s_noise:?}\n"
        );
    }
    let four = write_config(dir.path(), "four.toml", &four);
    assert!(run(&["run", &four]).status.success());
    let (a, b) = (results(&swept), results(&tables));
    assert_eq!(a.len(), 10);
    assert_eq!(a, b);
    // Errors name the table and the key, exit 2 and run nothing.
    for (table, needle) in [
        ("eta = []", "euler-ancestral: eta = [] lists no values"),
        (
            "eta = [0.5, 0.5]",
            "samplers lists euler-ancestral(eta=0.5) twice",
        ),
        ("etaa = [0.5, 1.0]", "unknown field `etaa`"),
        ("eta = [0.5, \"x\"]", "invalid type"),
    ] {
        let out = dir.path().join("bad");
        let cfg = format!(
            "{}[[samplers]]\nkind = \"euler-ancestral\"\n{table}\n",
            head(&out)
        );
        let cfg = write_config(dir.path(), "bad.toml", &cfg);
        let o = run(&["run", &cfg]);
        assert_eq!(o.status.code(), Some(2), "{table}");
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(err.contains(needle), "{table}: {err}");
        assert!(!out.exists(), "{table}");
    }
}
