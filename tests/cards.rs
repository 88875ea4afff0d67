//! Model cards: TorchScript networks wrapped by the discrete-chain and v-diffusion
//! preconditionings (k-diffusion's `external.py` wrappers), loaded by every command that takes
//! `--checkpoint` and by experiments.
//!
//! The TorchScript modules here are traced from Rust (`CModule::create_by_tracing`): the exact
//! denoiser of the built-in 8-mode mixture, exposed as a network that takes a discrete step
//! index (or v-diffusion's time) and returns eps, v or x0. Wrapped by the right card they must
//! sample as the exact mixture does.

use scoreflow::precond::{discrete_time, Precond};
use std::f64::consts::PI;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use tch::{CModule, Device, Kind, Tensor};

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_scoreflow"))
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).to_string()
}

fn f64s(t: &Tensor) -> Vec<f64> {
    Vec::<f64>::try_from(t.to_kind(Kind::Double).flatten(0, -1)).unwrap()
}

fn discrete(prediction: &str, schedule: &str, quantize: bool) -> Precond {
    toml::from_str(&format!(
        "kind = \"discrete\"\nprediction = \"{prediction}\"\nschedule = \"{schedule}\"\nquantize = {quantize}"
    ))
    .unwrap()
}

#[test]
fn discrete_chains_and_their_times_are_k_diffusions() {
    // Printed by k-diffusion 0.1.1's DiscreteSchedule (external.py) in float64 for the linear
    // chain (1e-4 to 0.02, T = 1000): sigma_to_t, and with quantize=True.
    let p = discrete("eps", "linear", false);
    let (lo, hi) = p.sigma_range().unwrap();
    assert!((lo / 0.010000500037502575 - 1.0).abs() < 1e-11, "{lo}");
    assert!((hi / 157.40728081040757 - 1.0).abs() < 1e-11, "{hi}");
    let sigma = Tensor::from_slice(&[0.005, 0.0101, 0.02, 0.5, 1.0, 14.6, 80.0, 157.0, 500.0]);
    let ls = Tensor::from_slice(&p.levels().unwrap());
    let want = [
        0.0,
        0.025122677635676438,
        2.2878141132833267,
        144.15387197413403,
        258.09301969495516,
        726.7528138630919,
        929.6180579037473,
        998.7435313358329,
        999.0,
    ];
    for (g, w) in f64s(&discrete_time(&sigma, &ls, false)).iter().zip(want) {
        assert!((g - w).abs() < 1e-9, "t {g} != {w}");
    }
    let want_q = [0.0, 0.0, 2.0, 144.0, 258.0, 727.0, 930.0, 999.0, 999.0];
    assert_eq!(f64s(&discrete_time(&sigma, &ls, true)), want_q);
    // The card's coefficients use that time, and the quantized one where asked.
    let c = discrete("eps", "linear", true).coefs(&sigma);
    assert_eq!(f64s(&c.noise), want_q);
    // Latent Diffusion's scaled-linear chain (0.00085 to 0.012) and the cosine chain: levels
    // 0, 499 and 999 as k-diffusion computes them from the alphas_cumprod (float64).
    for (p, want) in [
        (
            toml::from_str::<Precond>(
                "kind = \"discrete\"\nschedule = \"scaled-linear\"\nbeta_start = 0.00085\nbeta_end = 0.012",
            )
            .unwrap(),
            [0.029167158151720367, 1.612886194303876, 14.614641229333639],
        ),
        (
            discrete("eps", "squaredcos-cap-v2", false),
            [0.006425412771142061, 1.0123895639480032, 20291.169610019886],
        ),
    ] {
        let s = p.discrete_sigmas().unwrap();
        for (g, w) in [s[0], s[499], s[999]].iter().zip(want) {
            assert!((g / w - 1.0).abs() < 1e-12, "{g} != {w}");
        }
    }
    // v-diffusion's time, atan(sigma) 2 / pi (k-diffusion's VDenoiser.sigma_to_t).
    let v: Precond = toml::from_str("kind = \"v-diffusion\"").unwrap();
    let want_v = [
        0.0031830723364119386,
        0.006429641077630776,
        0.012730698201945594,
        0.2951672353008665,
        0.5,
        0.9564639015103625,
        0.992042667272551,
        0.9959451518252151,
        0.9987267621529134,
    ];
    for (g, w) in f64s(&v.coefs(&sigma).noise).iter().zip(want_v) {
        assert!((g - w).abs() < 1e-15, "{g} != {w}");
    }
    // Bad chains are errors naming the key.
    for (text, needle) in [
        ("kind = \"discrete\"\ntimesteps = 1", "timesteps"),
        ("kind = \"discrete\"\nbeta_start = 0.03", "beta_start"),
        ("kind = \"discrete\"\nbeta_end = 1.0", "beta_end"),
    ] {
        let p: Precond = toml::from_str(text).unwrap();
        let err = p.validate().unwrap_err().to_string();
        assert!(err.contains(needle), "{text}: {err}");
    }
    assert!(toml::from_str::<Precond>("kind = \"discrete\"\nprediction = \"score\"").is_err());
}

/// The means of the built-in gmm8: 8 modes on a circle of radius 2 (`[8, 2]`). Made outside
/// a trace: the tracer records a tensor made from host data as `zeros`.
fn gmm8_means() -> Tensor {
    let mu: Vec<f64> = (0..8)
        .map(|k| 2.0 * PI * k as f64 / 8.0)
        .flat_map(|a| [2.0 * a.cos(), 2.0 * a.sin()])
        .collect();
    Tensor::from_slice(&mu).view([8, 2]).to_kind(Kind::Float)
}

/// The exact denoiser of the built-in gmm8 (modes of std 0.2 at `mu`) at per-sample noise
/// levels `sigma` (`[N, 1]`), in tensor ops that trace.
fn gmm8_denoiser(x: &Tensor, sigma: &Tensor, mu: &Tensor) -> Tensor {
    let var = sigma.square() + 0.04; // [N, 1]
    let d2 = (x.unsqueeze(1) - mu.unsqueeze(0)).square().sum_dim_intlist(
        &[2i64][..],
        false,
        Kind::Float,
    ); // [N, 8]
    let p = (-d2 / (&var * 2.0)).softmax(1, Kind::Float);
    let m = p.matmul(mu);
    (x * 0.04 + sigma.square() * m) / var
}

/// Trace a module `forward(x_in, c_noise) -> F` of the exact gmm8 denoiser, where `to_sigma`
/// maps the time input (`[N]`) back to the noise level and `output` turns (x, D, sigma) into
/// what the network predicts. `x_in = x / sqrt(sigma^2 + 1)` for every kind here.
fn trace_gmm8(
    path: &Path,
    to_sigma: impl Fn(&Tensor) -> Tensor,
    output: impl Fn(&Tensor, &Tensor, &Tensor) -> Tensor,
) {
    let xin = Tensor::randn([4, 2], (Kind::Float, Device::Cpu));
    let t = Tensor::from_slice(&[3.5f32, 100.25, 500.0, 998.0]);
    let mu = gmm8_means();
    let m = CModule::create_by_tracing("Gmm8", "forward", &[xin, t], &mut |ins| {
        let sigma = to_sigma(&ins[1]).unsqueeze(1);
        let x = &ins[0] * (sigma.square() + 1.0).sqrt();
        let d = gmm8_denoiser(&x, &sigma, &mu);
        vec![output(&x, &d, &sigma)]
    })
    .unwrap();
    m.save(path).unwrap();
}

/// k-diffusion's `DiscreteSchedule.t_to_sigma` for a chain's `ln sigma_j`: the log-sigma
/// interpolation between the levels around a fractional step.
fn chain_sigma(p: &Precond) -> impl Fn(&Tensor) -> Tensor {
    let ls = Tensor::from_slice(&p.levels().unwrap()).to_kind(Kind::Float);
    move |t: &Tensor| {
        let low = t.floor();
        let w = t - &low;
        let lo = ls.index_select(0, &low.to_kind(Kind::Int64));
        let hi = ls.index_select(0, &t.ceil().to_kind(Kind::Int64));
        (lo * (w.ones_like() - &w) + hi * &w).exp()
    }
}

fn write_card(dir: &Path, name: &str, ts: &str, precond: &str, extra: &str) -> PathBuf {
    let card = dir.join(format!("{name}.toml"));
    std::fs::write(
        &card,
        format!("torchscript = \"{ts}\"\nshape = [2]\n{extra}\n[precond]\n{precond}\n"),
    )
    .unwrap();
    card
}

fn sample(model: &[&str], solver: &str, range: (f64, f64), out: &Path) -> Vec<f32> {
    let (lo, hi) = (range.0.to_string(), range.1.to_string());
    let o = bin()
        .arg("sample")
        .args(model)
        .args([
            "--solver", solver, "--steps", "18", "--num", "256", "--seed", "5",
        ])
        .args(["--sigma-min", &lo, "--sigma-max", &hi, "--device", "cpu"])
        .arg("--out")
        .arg(out)
        .output()
        .unwrap();
    assert!(o.status.success(), "{model:?}: {}", stderr(&o));
    read_f32(out)
}

/// The values of a float32 `.npy` that scoreflow wrote.
fn read_f32(path: &Path) -> Vec<f32> {
    let bytes = std::fs::read(path).unwrap();
    let header = 10 + u16::from_le_bytes([bytes[8], bytes[9]]) as usize;
    bytes[header..]
        .chunks(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect()
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

#[test]
fn torchscript_eps_v_and_x0_networks_sample_as_the_exact_mixture() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let exact_at = |range: (f64, f64), solver: &str| {
        sample(
            &["--denoiser", "builtin:gmm8"],
            solver,
            range,
            &d.join("exact.npy"),
        )
    };
    // eps on DDPM's linear chain, v on Latent Diffusion's scaled-linear one, x0 on the cosine
    // chain: each card's wrapper must undo exactly what its network predicts.
    let linear = discrete("eps", "linear", false);
    trace_gmm8(&d.join("eps.pt"), chain_sigma(&linear), |x, dd, s| {
        (x - dd) / s
    });
    let scaled: Precond = toml::from_str(
        "kind = \"discrete\"\nprediction = \"v\"\nschedule = \"scaled-linear\"\nbeta_start = 0.00085\nbeta_end = 0.012",
    )
    .unwrap();
    // v = alpha eps - sigma_vp x0 with alpha = 1 / sqrt(s^2 + 1), sigma_vp = s alpha.
    let v_of = |x: &Tensor, dd: &Tensor, s: &Tensor| {
        let a = (s.square() + 1.0).rsqrt();
        (x - dd) / s * &a - dd * s * &a
    };
    trace_gmm8(&d.join("v.pt"), chain_sigma(&scaled), v_of);
    let cosine = discrete("x0", "squaredcos-cap-v2", false);
    trace_gmm8(&d.join("x0.pt"), chain_sigma(&cosine), |_, dd, _| {
        dd.shallow_clone()
    });
    trace_gmm8(&d.join("vd.pt"), |t| (t * (PI / 2.0)).tan(), v_of);
    let cases = [
        ("eps", "eps.pt", "kind = \"discrete\"", linear.sigma_range().unwrap()),
        (
            "v",
            "v.pt",
            // diffusers' spellings: v_prediction, scaled_linear.
            "kind = \"discrete\"\nprediction = \"v_prediction\"\nschedule = \"scaled_linear\"\nbeta_start = 0.00085\nbeta_end = 0.012",
            scaled.sigma_range().unwrap(),
        ),
        (
            "x0",
            "x0.pt",
            "kind = \"discrete\"\nprediction = \"sample\"\nschedule = \"squaredcos_cap_v2\"",
            (cosine.sigma_range().unwrap().0, 80.0),
        ),
        ("vd", "vd.pt", "kind = \"v-diffusion\"", (0.002, 80.0)),
    ];
    for (name, ts, precond, range) in cases {
        let card = write_card(d, name, ts, precond, "");
        for solver in ["heun", "dpmpp-2m", "euler-ancestral"] {
            let got = sample(
                &["--checkpoint", card.to_str().unwrap()],
                solver,
                range,
                &d.join("x.npy"),
            );
            let want = exact_at(range, solver);
            let diff = max_diff(&got, &want);
            println!("{name} {solver}: {diff:.2e}");
            assert!(diff < 2e-4, "{name} {solver}: {diff}");
        }
    }
    // A control: the eps network read as v is not the mixture.
    let wrong = write_card(
        d,
        "wrong",
        "eps.pt",
        "kind = \"discrete\"\nprediction = \"v\"",
        "",
    );
    let range = linear.sigma_range().unwrap();
    let got = sample(
        &["--checkpoint", wrong.to_str().unwrap()],
        "heun",
        range,
        &d.join("x.npy"),
    );
    assert!(max_diff(&got, &exact_at(range, "heun")) > 0.1);
}

#[test]
fn an_experiment_runs_on_a_card_and_asks_for_data_where_its_metrics_need_it() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let linear = discrete("eps", "linear", false);
    trace_gmm8(&d.join("eps.pt"), chain_sigma(&linear), |x, dd, s| {
        (x - dd) / s
    });
    write_card(d, "nodata", "eps.pt", "kind = \"discrete\"", "");
    // The card's data: exact samples of the mixture in an .npy next to it (a path relative to
    // the card's folder; the experiment runs from elsewhere).
    let range = linear.sigma_range().unwrap();
    sample(
        &["--denoiser", "builtin:gmm8"],
        "heun",
        range,
        &d.join("data.npy"),
    );
    write_card(
        d,
        "card",
        "eps.pt",
        "kind = \"discrete\"",
        "[data]\nkind = \"npy\"\npath = \"data.npy\"",
    );
    let exp = |card: &str, metrics: &str, out: &str| {
        let path = d.join(format!("{out}.toml"));
        std::fs::write(
            &path,
            format!(
                "out_dir = \"{}\"\nnum = 256\nseeds = [0]\nsteps = [8, 16]\ndtype = \"float32\"\nreference_tol = 1e-4\nmetrics = [{metrics}]\nsamplers = [{{ kind = \"heun\" }}, {{ kind = \"dpmpp-2m\" }}]\n[model]\nkind = \"checkpoint\"\npath = \"{}\"\n[grid]\nsigma_min = 0.0101\nsigma_max = 150.0\n",
                d.join(out).display(),
                d.join(card).display()
            ),
        )
        .unwrap();
        bin().args(["run"]).arg(&path).output().unwrap()
    };
    let o = exp("nodata.toml", "\"rms\", \"sw2\"", "a");
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("sw2") && stderr(&o).contains("[data]"),
        "{}",
        stderr(&o)
    );
    assert!(!d.join("a").exists());
    let o = exp("nodata.toml", "\"rms\"", "b");
    assert!(o.status.success(), "{}", stderr(&o));
    let o = exp("card.toml", "\"rms\", \"sw2\"", "c");
    assert!(o.status.success(), "{}", stderr(&o));
    let csv = std::fs::read_to_string(d.join("c/results.csv")).unwrap();
    assert_eq!(csv.lines().count(), 5, "{csv}");
    assert!(d.join("c/quality_vs_nfe.png").exists());
    // Data of another shape than the network's is an error naming both, for run and nll.
    Tensor::ones([16, 3], (Kind::Float, Device::Cpu))
        .write_npy(d.join("data3.npy"))
        .unwrap();
    write_card(
        d,
        "card3",
        "eps.pt",
        "kind = \"discrete\"",
        "[data]\nkind = \"npy\"\npath = \"data3.npy\"",
    );
    let want =
        "the model's data has samples of shape [3], and the network takes samples of shape [2]";
    let o = exp("card3.toml", "\"rms\", \"sw2\"", "c3");
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains(want), "{}", stderr(&o));
    let o = bin()
        .args([
            "nll",
            "--device",
            "cpu",
            "--steps",
            "4",
            "--num",
            "8",
            "--checkpoint",
        ])
        .arg(d.join("card3.toml"))
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains(want), "{}", stderr(&o));
    // The timesteps placement (diffusers' spacings on the card's chain, given in [grid]):
    // data metrics and rms run; adaptive samplers are refused.
    let ts = |metrics: &str, sampler: &str, out: &str| {
        let path = d.join(format!("{out}.toml"));
        std::fs::write(
            &path,
            format!(
                "out_dir = \"{}\"\nnum = 256\nseeds = [0]\nsteps = [10, 20]\ndtype = \"float32\"\nmetrics = [{metrics}]\nsamplers = [{{ kind = \"{sampler}\" }}]\n[model]\nkind = \"checkpoint\"\npath = \"{}\"\n[grid]\nplacement = {{ kind = \"timesteps\", spacing = \"trailing\" }}\n",
                d.join(out).display(),
                d.join("card.toml").display()
            ),
        )
        .unwrap();
        bin().args(["run"]).arg(&path).output().unwrap()
    };
    let o = ts("\"sw2\"", "ddim", "t1");
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(
        std::fs::read_to_string(d.join("t1/results.csv"))
            .unwrap()
            .lines()
            .count(),
        3
    );
    // rms against a reference between each step count's own ends (trailing: at 10 steps the
    // last level above 0 is the chain's sigma at t = 99, at 20 steps at t = 49; a reference
    // to another sigma_min would leave an error of the size of the samples' spread).
    let o = ts("\"rms\"", "heun", "t2");
    assert!(o.status.success(), "{}", stderr(&o));
    let rows: Vec<serde_json::Value> = std::fs::read_to_string(d.join("t2/results.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let rms = |steps: u64| {
        rows.iter().find(|r| r["steps"] == steps).unwrap()["rms"]
            .as_f64()
            .unwrap()
    };
    println!(
        "heun, trailing, rms at 10 and 20 steps: {:.3e} {:.3e}",
        rms(10),
        rms(20)
    );
    assert!(rms(10) < 0.05 && rms(20) < rms(10) / 2.5, "{rows:?}");
    // A chain other than the card's: an error naming both, no output.
    let path = d.join("t4.toml");
    std::fs::write(
        &path,
        std::fs::read_to_string(d.join("t1.toml")).unwrap().replace(
            "spacing = \"trailing\" }",
            "spacing = \"trailing\", schedule = \"scaled-linear\", beta_start = 0.00085, beta_end = 0.012 }",
        ).replace("/t1\"", "/t4\""),
    )
    .unwrap();
    let o = bin().args(["run"]).arg(&path).output().unwrap();
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("schedule = \"scaled-linear\", beta_start = 0.00085")
            && stderr(&o)
                .contains("is not the model card's (schedule = \"linear\", beta_start = 0.0001"),
        "{}",
        stderr(&o)
    );
    assert!(!d.join("t4").exists());
    let o = ts("\"sw2\"", "dpm-adaptive", "t3");
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("adaptive sampler"), "{}", stderr(&o));
    assert!(!d.join("t3").exists());
}

#[test]
fn bad_cards_are_one_line_errors_with_exit_code_2_and_no_output() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let linear = discrete("eps", "linear", false);
    trace_gmm8(&d.join("eps.pt"), chain_sigma(&linear), |x, dd, s| {
        (x - dd) / s
    });
    std::fs::write(d.join("corrupt.pt"), b"not a zip archive").unwrap();
    // A module that returns the wrong shape, and one that takes a third input.
    let m = CModule::create_by_tracing(
        "Bad",
        "forward",
        &[
            Tensor::zeros([2, 2], (Kind::Float, Device::Cpu)),
            Tensor::zeros([2], (Kind::Float, Device::Cpu)),
        ],
        &mut |ins| vec![ins[0].sum_dim_intlist(&[1i64][..], true, Kind::Float)],
    )
    .unwrap();
    m.save(d.join("shape.pt")).unwrap();
    let m = CModule::create_by_tracing(
        "Three",
        "forward",
        &[
            Tensor::zeros([2, 2], (Kind::Float, Device::Cpu)),
            Tensor::zeros([2], (Kind::Float, Device::Cpu)),
            Tensor::zeros([2], (Kind::Float, Device::Cpu)),
        ],
        &mut |ins| vec![&ins[0] * ins[1].unsqueeze(1) * ins[2].unsqueeze(1)],
    )
    .unwrap();
    m.save(d.join("three.pt")).unwrap();
    // A module with 2C + 1 output channels (learned_sigmas wants exactly 2C), and one traced
    // at batch 2 whose `view` kept that size (it passes the check call, then fails on 8).
    let two = || Tensor::zeros([2, 2], (Kind::Float, Device::Cpu));
    let t2 = || Tensor::zeros([2], (Kind::Float, Device::Cpu));
    let m = CModule::create_by_tracing("Odd", "forward", &[two(), t2()], &mut |ins| {
        vec![Tensor::cat(&[&ins[0], &ins[0], &ins[0].narrow(1, 0, 1)], 1)]
    })
    .unwrap();
    m.save(d.join("odd.pt")).unwrap();
    let m = CModule::create_by_tracing("Batch2", "forward", &[two(), t2()], &mut |ins| {
        vec![ins[0].view([2, 2]) * 0.5]
    })
    .unwrap();
    m.save(d.join("batch2.pt")).unwrap();
    let eps = "kind = \"discrete\"";
    let cases: Vec<(PathBuf, &str)> = vec![
        (
            write_card(d, "missing", "nowhere.pt", eps, ""),
            "nowhere.pt does not exist",
        ),
        (
            write_card(d, "corrupt", "corrupt.pt", eps, ""),
            "cannot load TorchScript file",
        ),
        (
            write_card(d, "shape", "shape.pt", eps, ""),
            "returned shape [2, 1]",
        ),
        (
            write_card(d, "three", "three.pt", eps, ""),
            "is missing value for argument",
        ),
        (
            write_card(d, "odd", "odd.pt", eps, "learned_sigmas = true"),
            "returned shape [2, 5]",
        ),
        (
            write_card(d, "batch2", "batch2.pt", eps, ""),
            "the TorchScript module failed",
        ),
        // learned_sigmas with a module of C channels: no variance to take.
        (
            write_card(d, "nolearned", "eps.pt", eps, "learned_sigmas = true"),
            "learned_sigmas = true, but the TorchScript module returned shape [2, 2]",
        ),
        (
            write_card(d, "unknown", "eps.pt", eps, "color = 1"),
            "unknown field `color`",
        ),
        (
            write_card(
                d,
                "badchain",
                "eps.pt",
                "kind = \"discrete\"\nbeta_end = 2.0",
                "",
            ),
            "beta_end",
        ),
        (
            write_card(d, "badkind", "eps.pt", "kind = \"ddpm\"", ""),
            "unknown variant `ddpm`",
        ),
        (d.join("absent.toml"), "cannot read model card"),
    ];
    std::fs::write(
        d.join("badshape.toml"),
        "torchscript = \"eps.pt\"\nshape = [0]\n[precond]\nkind = \"eps\"\n",
    )
    .unwrap();
    let mut cases = cases;
    cases.push((d.join("badshape.toml"), "shape must be"));
    for (card, needle) in cases {
        let out = d.join("x.npy");
        let o = bin()
            .args([
                "sample",
                "--solver",
                "heun",
                "--steps",
                "4",
                "--num",
                "8",
                "--checkpoint",
            ])
            .arg(&card)
            .arg("--out")
            .arg(&out)
            .output()
            .unwrap();
        let err = stderr(&o);
        assert_eq!(o.status.code(), Some(2), "{}: {err}", card.display());
        assert!(err.contains(needle), "{}: {err}", card.display());
        assert_eq!(err.trim_end().lines().count(), 1, "{err}");
        assert!(!out.exists());
    }
    // nll needs the card's data.
    let card = write_card(d, "eps", "eps.pt", eps, "");
    let o = bin()
        .args(["nll", "--num", "8", "--checkpoint"])
        .arg(&card)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("[data]"), "{}", stderr(&o));
    // A module that fails during nll's integration is an error, not a panic.
    let card = write_card(d, "b2", "batch2.pt", eps, "[data]\nkind = \"gmm8\"");
    let o = bin()
        .args(["nll", "--num", "8", "--steps", "2", "--checkpoint"])
        .arg(&card)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("the TorchScript module failed"),
        "{}",
        stderr(&o)
    );
    assert_eq!(stderr(&o).trim_end().lines().count(), 1, "{}", stderr(&o));
}

/// `PY experiments/peers/SCRIPT --scoreflow BIN --out DIR` (with `PYTHONPATH` where given),
/// which must exit 0; the JSON file it wrote into DIR.
fn run_check_script(
    py: &str,
    pythonpath: Option<&str>,
    script: &str,
    json: &str,
) -> serde_json::Value {
    let dir = tempfile::tempdir().unwrap();
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut cmd = Command::new(py);
    if let Some(p) = pythonpath {
        cmd.env("PYTHONPATH", p);
    }
    let o = cmd
        .current_dir(root)
        .arg(root.join("experiments/peers").join(script))
        .args(["--scoreflow", env!("CARGO_BIN_EXE_scoreflow"), "--out"])
        .arg(dir.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&o.stdout);
    println!("{stdout}");
    assert_eq!(o.status.code(), Some(0), "{stdout}\n{}", stderr(&o));
    serde_json::from_str(&std::fs::read_to_string(dir.path().join(json)).unwrap()).unwrap()
}

#[test]
fn k_diffusions_model_wrappers_give_the_same_samples_as_cards() {
    // experiments/peers/external_models.py: TorchScript modules (the exact mixture as discrete
    // eps, v and x0 networks on the three chains, quantized, v-diffusion, and a traced conv net
    // with learned variances) sampled by k-diffusion's DiscreteEpsDDPMDenoiser,
    // DiscreteVDDPMDenoiser, VDenoiser and OpenAIDenoiser with sample_euler, sample_heun and
    // sample_dpmpp_2m, and by scoreflow through the cards, from the same noise.
    let (Ok(py), Ok(site)) = (
        std::env::var("SCOREFLOW_PEERS_PYTHON"),
        std::env::var("SCOREFLOW_PEERS_SITE"),
    ) else {
        println!(
            "skipped: k-diffusion is not installed (scripts/test.sh installs it into .peers/site)"
        );
        return;
    };
    let v = run_check_script(&py, Some(&site), "external_models.py", "external.json");
    let rows = v.as_array().unwrap();
    // 6 models x 3 samplers against k-diffusion, 4 exact-mixture models x 3 against
    // builtin:gmm8, 3 controls.
    assert_eq!(rows.len(), 33, "{v}");
    assert!(rows.iter().all(|r| r["ok"] == true), "{v}");
    let controls: Vec<_> = rows.iter().filter(|r| r["control"] == true).collect();
    assert_eq!(controls.len(), 3);
    assert!(
        controls.iter().all(|r| r["diff"].as_f64().unwrap() > 0.1),
        "{v}"
    );
}

/// Trace a class-conditional module `forward(x_in, t, labels)` on the linear chain: the exact
/// eps of the gmm8 mode `label` alone (a Gaussian of std 0.2), or of the whole mixture for the
/// label 8 ("no class").
/// With `learned`, a variance output too: v = -1 for a class, +1 for the null label.
fn trace_conditional_gmm8(path: &Path, learned: bool) {
    let linear = discrete("eps", "linear", false);
    let to_sigma = chain_sigma(&linear);
    let mu = gmm8_means();
    let ins = [
        Tensor::randn([4, 2], (Kind::Float, Device::Cpu)),
        Tensor::from_slice(&[3.5f32, 100.25, 500.0, 998.0]),
        Tensor::from_slice(&[0i64, 3, 8, 5]),
    ];
    let m = CModule::create_by_tracing("Cond", "forward", &ins, &mut |ins| {
        let sigma = to_sigma(&ins[1]).unsqueeze(1);
        let x = &ins[0] * (sigma.square() + 1.0).sqrt();
        let var = sigma.square() + 0.04;
        let d2 = (x.unsqueeze(1) - mu.unsqueeze(0)).square().sum_dim_intlist(
            &[2i64][..],
            false,
            Kind::Float,
        );
        let logits = -d2 / (&var * 2.0);
        let modes = Tensor::arange(8, (Kind::Int64, Device::Cpu)).unsqueeze(0);
        let label = ins[2].unsqueeze(1);
        let keep = modes.eq_tensor(&label).logical_or(&label.eq(8));
        let logits = logits.where_self(&keep, &(logits.zeros_like() - 1e9));
        let m = logits.softmax(1, Kind::Float).matmul(&mu);
        let d = (&x * 0.04 + sigma.square() * m) / var;
        let eps = (&x - d) / sigma;
        if learned {
            let v = (label.eq(8).to_kind(Kind::Float) * 2.0 - 1.0).expand_as(&eps);
            vec![Tensor::cat(&[eps, v], 1)]
        } else {
            vec![eps]
        }
    })
    .unwrap();
    m.save(path).unwrap();
}

#[test]
fn a_class_conditional_card_takes_labels_and_guidance() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    trace_conditional_gmm8(&d.join("cond.pt"), false);
    let card = write_card(d, "cond", "cond.pt", "kind = \"discrete\"", "classes = 8");
    let range = discrete("eps", "linear", false).sigma_range().unwrap();
    let card_arg = ["--checkpoint", card.to_str().unwrap()];
    // Unconditional: the whole mixture (the module gets label 8).
    let uncond = sample(&card_arg, "heun", range, &d.join("u.npy"));
    let exact = sample(
        &["--denoiser", "builtin:gmm8"],
        "heun",
        range,
        &d.join("e.npy"),
    );
    assert!(max_diff(&uncond, &exact) < 2e-4);
    // Class 3, with and without guidance: every sample near mode 3, (2 cos 3pi/4, 2 sin 3pi/4).
    let m3 = (2.0 * (3.0 * PI / 4.0).cos(), 2.0 * (3.0 * PI / 4.0).sin());
    for guidance in ["1", "2.5"] {
        let mut args = card_arg.to_vec();
        args.extend(["--class", "3", "--guidance", guidance]);
        let x = sample(&args, "heun", range, &d.join("c.npy"));
        let far = x
            .chunks(2)
            .map(|p| ((p[0] as f64 - m3.0).powi(2) + (p[1] as f64 - m3.1).powi(2)).sqrt())
            .fold(0.0, f64::max);
        assert!(far < 1.2, "guidance {guidance}: a sample {far} from mode 3");
    }
    // --class each: sample i of class i mod 8, each near its mode.
    let mut args = card_arg.to_vec();
    args.extend(["--class", "each", "--guidance", "2.5"]);
    let x = sample(&args, "heun", range, &d.join("each.npy"));
    for (i, p) in x.chunks(2).enumerate() {
        let a = 2.0 * PI * (i % 8) as f64 / 8.0;
        let dist =
            ((p[0] as f64 - 2.0 * a.cos()).powi(2) + (p[1] as f64 - 2.0 * a.sin()).powi(2)).sqrt();
        assert!(
            dist < 1.2,
            "--class each: sample {i} is {dist} from mode {}",
            i % 8
        );
    }
    // With learned variances, guided DDPM takes the conditional branch's variance (v = -1 here,
    // the small variance; the null label's v = 1 would be the large one).
    trace_conditional_gmm8(&d.join("condv.pt"), true);
    let learned = write_card(
        d,
        "condv",
        "condv.pt",
        "kind = \"discrete\"",
        "classes = 8\nlearned_sigmas = true",
    );
    let guided = |card: &Path, variance: &str, out: &str| {
        let args = [
            "--checkpoint",
            card.to_str().unwrap(),
            "--class",
            "3",
            "--guidance",
            "2.5",
            "--variance",
            variance,
        ];
        sample(&args, "ddpm", range, &d.join(out))
    };
    let small = guided(&card, "small", "s.npy");
    let large = guided(&card, "large", "l.npy");
    let from_cond = guided(&learned, "learned", "v.npy");
    assert!(
        max_diff(&from_cond, &small) < 1e-4,
        "{}",
        max_diff(&from_cond, &small)
    );
    assert!(max_diff(&from_cond, &large) > 1e-2);
    // A class the card does not have is an error, and so is a word other than each.
    for bad in ["8", "all"] {
        let o = bin()
            .args([
                "sample", "--solver", "heun", "--steps", "4", "--num", "8", "--class", bad,
            ])
            .args(card_arg)
            .arg("--out")
            .arg(d.join("bad.npy"))
            .output()
            .unwrap();
        assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
        assert!(stderr(&o).contains("or each"), "{}", stderr(&o));
        assert!(!d.join("bad.npy").exists());
    }
}

#[test]
fn an_experiment_samples_a_class_conditional_card_with_guidance() {
    // [model] conditional = true: sample i of class i mod 8, each near its mode; with guidance
    // and an interval; and the settings checked before any work.
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    trace_conditional_gmm8(&d.join("cond.pt"), false);
    let card = write_card(d, "cond", "cond.pt", "kind = \"discrete\"", "classes = 8");
    let exp = |model_extra: &str, out: &str| {
        let path = d.join(format!("{out}.toml"));
        std::fs::write(
            &path,
            format!(
                "out_dir = \"{}\"\nnum = 64\nseeds = [0]\nsteps = [16]\nmetrics = [\"rms\"]\nsamplers = [{{ kind = \"heun\" }}]\n[model]\nkind = \"checkpoint\"\npath = \"{}\"\n{model_extra}\n[grid]\nsigma_min = 0.01\nsigma_max = 80.0\n",
                d.join(out).display(),
                card.display()
            ),
        )
        .unwrap();
        bin().args(["run"]).arg(&path).output().unwrap()
    };
    let modes: Vec<(f64, f64)> = (0..8)
        .map(|k| {
            let a = 2.0 * PI * k as f64 / 8.0;
            (2.0 * a.cos(), 2.0 * a.sin())
        })
        .collect();
    for (extra, out) in [
        ("conditional = true", "c1"),
        ("conditional = true\nguidance = 2.5", "c2"),
        (
            "conditional = true\nguidance = 2.5\nguidance_interval = [0.3, 5.0]",
            "c3",
        ),
    ] {
        let o = exp(extra, out);
        assert!(o.status.success(), "{extra}: {}", stderr(&o));
        let snap = std::fs::read_dir(d.join(out).join("samples"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .find(|p| !p.to_str().unwrap().ends_with(".path.npy"))
            .unwrap();
        let x = read_f32(&snap);
        assert_eq!(x.len(), 128);
        for (i, p) in x.chunks(2).enumerate() {
            let m = modes[i % 8];
            let dist = ((p[0] as f64 - m.0).powi(2) + (p[1] as f64 - m.1).powi(2)).sqrt();
            assert!(
                dist < 1.2,
                "{extra}: sample {i} is {dist} from mode {}",
                i % 8
            );
        }
    }
    // A guidance axis: every sampler at each weight, the lines tagged `w=W`, each cell with the
    // key and the result it has at that weight alone (w1: guidance = 1.0, c2: w = 2.5).
    let o = exp("conditional = true\nguidance = [1.0, 2.5]", "axis");
    assert!(o.status.success(), "{}", stderr(&o));
    let o = exp("conditional = true\nguidance = 1.0", "w1");
    assert!(o.status.success(), "{}", stderr(&o));
    let lines = |out: &str| -> Vec<serde_json::Value> {
        std::fs::read_to_string(d.join(out).join("results.jsonl"))
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    };
    let axis = lines("axis");
    assert_eq!(axis.len(), 2);
    for (alone, w) in [("w1", 1.0), ("c2", 2.5)] {
        let one = &lines(alone)[0];
        let twin = axis.iter().find(|r| r["key"] == one["key"]).unwrap();
        assert_eq!(twin["rms"], one["rms"], "w {w}");
        assert_eq!(twin["guidance"], serde_json::json!(w));
        assert_eq!(twin["label"], serde_json::json!(format!("heun @ w={w}")));
    }
    let summary = std::fs::read_to_string(d.join("axis").join("summary.md")).unwrap();
    assert!(summary.contains("| heun @ w=2.5 |"), "{summary}");
    // Without conditional = true the same card samples the whole mixture (the null label).
    let o = exp("", "u");
    assert!(o.status.success(), "{}", stderr(&o));
    // Bad settings: one-line errors, exit 2, no output folder.
    for (extra, needle) in [
        ("guidance = 2.0", "need conditional = true"),
        (
            "conditional = true\nguidance_interval = [5.0, 0.3]",
            "0 <= lo < hi",
        ),
        ("conditional = true\nguidance = []", "lists no weights"),
        (
            "conditional = true\nguidance = [2.5, 2.5]",
            "the weight 2.5 twice",
        ),
        (
            "conditional = true\nguidance = [1.0, inf]",
            "must be finite",
        ),
        (
            "conditional = true\nguidance = \"x\"",
            "a number or a list of numbers",
        ),
        ("guidance = [1.0, 2.0]", "need conditional = true"),
    ] {
        let o = exp(extra, "bad");
        assert_eq!(o.status.code(), Some(2), "{extra}: {}", stderr(&o));
        assert!(stderr(&o).contains(needle), "{extra}: {}", stderr(&o));
        assert!(!d.join("bad").exists());
    }
    trace_gmm8(
        &d.join("eps.pt"),
        chain_sigma(&discrete("eps", "linear", false)),
        |x, dd, s| (x - dd) / s,
    );
    let plain = write_card(d, "plain", "eps.pt", "kind = \"discrete\"", "");
    let path = d.join("plain-exp.toml");
    std::fs::write(
        &path,
        std::fs::read_to_string(d.join("c1.toml"))
            .unwrap()
            .replace(card.to_str().unwrap(), plain.to_str().unwrap())
            .replace("/c1\"", "/bad\""),
    )
    .unwrap();
    let o = bin().args(["run"]).arg(&path).output().unwrap();
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("class-conditional network"),
        "{}",
        stderr(&o)
    );
    assert!(!d.join("bad").exists());
}

#[test]
fn cards_on_cuda_agree_with_the_cpu_with_and_without_graphs() {
    if !tch::Cuda::is_available() {
        println!(
            "skipped: no CUDA device on this machine (the same test runs where one is present)"
        );
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let linear = discrete("eps", "linear", false);
    trace_gmm8(&d.join("eps.pt"), chain_sigma(&linear), |x, dd, s| {
        (x - dd) / s
    });
    let card = write_card(d, "eps", "eps.pt", "kind = \"discrete\"", "");
    // With a learned variance output (its own CUDA graph: D and v in one captured call).
    trace_gmm8(&d.join("learned.pt"), chain_sigma(&linear), |x, dd, s| {
        let eps = (x - dd) / s;
        let v = (x * 0.5).tanh();
        Tensor::cat(&[eps, v], 1)
    });
    let learned = write_card(
        d,
        "learned",
        "learned.pt",
        "kind = \"discrete\"",
        "learned_sigmas = true",
    );
    let range = linear.sigma_range().unwrap();
    for (card, solver, extra) in [
        (&card, "heun", None),
        (&card, "dpmpp-2m", None),
        (&card, "euler-ancestral", None),
        (&learned, "ddpm", Some(["--variance", "learned"])),
    ] {
        let mut model = vec!["--checkpoint", card.to_str().unwrap()];
        model.extend(extra.iter().flatten());
        let cpu = sample(&model, solver, range, &d.join("a.npy"));
        for graphs in ["on", "off"] {
            let (lo, hi) = (range.0.to_string(), range.1.to_string());
            let out = d.join("b.npy");
            let o = bin()
                .env("SCOREFLOW_CUDA_GRAPHS", graphs)
                .arg("sample")
                .args(&model)
                .args(["--solver", solver])
                .args([
                    "--steps", "18", "--num", "256", "--seed", "5", "--device", "cuda",
                ])
                .args(["--sigma-min", &lo, "--sigma-max", &hi, "--out"])
                .arg(&out)
                .output()
                .unwrap();
            assert!(o.status.success(), "{}", stderr(&o));
            assert!(
                !stderr(&o).contains("capture"),
                "graphs {graphs}: {}",
                stderr(&o)
            );
            let diff = max_diff(&cpu, &read_f32(&out));
            println!("{solver} graphs {graphs}: {diff:.2e}");
            assert!(diff < 2e-3, "{solver} graphs {graphs}: {diff}");
        }
    }
}

#[test]
fn a_learned_variance_card_samples_with_ddpm_learned() {
    // The exact gmm8 eps with a constant variance output v: DDPM with the learned variance is
    // DDPM with the small variance at v = -1 and the large one at v = 1 (same seed, same noise);
    // a varying v gives neither; the card without learned_sigmas cannot use it.
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let linear = discrete("eps", "linear", false);
    let range = linear.sigma_range().unwrap();
    trace_gmm8(&d.join("eps.pt"), chain_sigma(&linear), |x, dd, s| {
        (x - dd) / s
    });
    let plain = write_card(d, "eps", "eps.pt", "kind = \"discrete\"", "");
    let plain = ["--checkpoint", plain.to_str().unwrap()];
    let mut learned = Vec::new();
    for (name, v) in [("minus", Some(-1.0)), ("plus", Some(1.0)), ("tanh", None)] {
        trace_gmm8(
            &d.join(format!("{name}.pt")),
            chain_sigma(&linear),
            |x, dd, s| {
                let eps = (x - dd) / s;
                let v = match v {
                    Some(c) => eps.full_like(c),
                    None => (x * 0.5).tanh(),
                };
                Tensor::cat(&[eps, v], 1)
            },
        );
        learned.push(write_card(
            d,
            name,
            &format!("{name}.pt"),
            "kind = \"discrete\"",
            "learned_sigmas = true",
        ));
    }
    let with = |card: &Path, variance: &str, out: &str| {
        sample(
            &[
                "--checkpoint",
                card.to_str().unwrap(),
                "--variance",
                variance,
            ],
            "ddpm",
            range,
            &d.join(out),
        )
    };
    let small = sample(
        &[&plain[..], &["--variance", "small"]].concat(),
        "ddpm",
        range,
        &d.join("s.npy"),
    );
    let large = sample(
        &[&plain[..], &["--variance", "large"]].concat(),
        "ddpm",
        range,
        &d.join("l.npy"),
    );
    let minus = with(&learned[0], "learned", "m.npy");
    let plus = with(&learned[1], "learned", "p.npy");
    let tanh = with(&learned[2], "learned", "t.npy");
    println!(
        "v = -1 vs small {:.2e}, v = 1 vs large {:.2e}, tanh vs small {:.2e}, vs large {:.2e}",
        max_diff(&minus, &small),
        max_diff(&plus, &large),
        max_diff(&tanh, &small),
        max_diff(&tanh, &large)
    );
    assert!(max_diff(&minus, &small) < 1e-4);
    assert!(max_diff(&plus, &large) < 1e-4);
    assert!(max_diff(&tanh, &small) > 1e-2 && max_diff(&tanh, &large) > 1e-2);
    // The other samplers ignore v: the learned card's heun is the plain card's.
    let a = sample(&plain, "heun", range, &d.join("h1.npy"));
    let b = sample(
        &["--checkpoint", learned[2].to_str().unwrap()],
        "heun",
        range,
        &d.join("h2.npy"),
    );
    assert!(max_diff(&a, &b) < 1e-5, "{}", max_diff(&a, &b));
    // Without learned_sigmas: an error that names it, exit 2, no output.
    let out = d.join("none.npy");
    let o = bin()
        .args([
            "sample",
            "--checkpoint",
            plain[1],
            "--solver",
            "ddpm",
            "--variance",
            "learned",
        ])
        .args(["--steps", "10", "--num", "8", "--out"])
        .arg(&out)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("learned_sigmas"), "{}", stderr(&o));
    assert!(!out.exists());
}

#[test]
fn a_diffusers_unet_exported_by_the_script_samples_as_diffusers_schedulers() {
    // scripts/export-diffusers.py on tiny random diffusers UNet2DModels (eps on the linear
    // chain, v on scaled-linear, v with learned variances on the cosine chain, x0 on a
    // rectangular image), then experiments/peers/diffusers_models.py: diffusers'
    // EulerDiscreteScheduler, HeunDiscreteScheduler and DPMSolverMultistepScheduler (Karras
    // sigmas), DDIMScheduler and DDPMScheduler (its own timesteps) against `scoreflow sample
    // --checkpoint CARD` from the same start (and for DDPM the same step noise).
    let Ok(py) = std::env::var("SCOREFLOW_PEERS_PYTHON") else {
        println!(
            "skipped: no python with torch given (scripts/test.sh sets SCOREFLOW_PEERS_PYTHON)"
        );
        return;
    };
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let has_diffusers = Command::new(&py)
        .env("PYTHONPATH", root.join(".peers/diffusers"))
        .args(["-c", "import diffusers"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !has_diffusers {
        println!("skipped: diffusers cannot be imported (scripts/peers-setup.sh installs it into .peers/diffusers)");
        return;
    }
    let v = run_check_script(&py, None, "diffusers_models.py", "diffusers.json");
    let rows = v.as_array().unwrap();
    // 4 models x 3 samplers, diffusers' DPM-Solver with its rounded timesteps against cards
    // with quantize = true (3 models), DDIMScheduler against ddim on the ddpm-leading and
    // ddpm-trailing grids (3 models), DDPMScheduler against ddpm on the model's ddpm-* grid with
    // its variance (4 models; learned_range on the cosine model); DDPMScheduler with clip_sample
    // and with thresholding against --clip-denoised and --dynamic-threshold (4 models each),
    // DDIMScheduler with clip_sample and use_clipped_model_output against ddim --clip-denoised
    // (3 models); 8 controls that must disagree (one: the learned-variance model sampled with
    // --variance small; four: the clipped DDPM against scoreflow unclipped); "info" rows are
    // reported, not judged.
    let checks: Vec<_> = rows.iter().filter(|r| r["kind"] == "check").collect();
    assert_eq!(checks.len(), 33, "{v}");
    let limited = checks
        .iter()
        .filter(|r| {
            let card = r["card"].as_str().unwrap();
            card.starts_with("--clip-denoised") || card.starts_with("--dynamic-threshold")
        })
        .count();
    assert_eq!(limited, 11, "{v}");
    assert!(checks.iter().all(|r| r["ok"] == true), "{v}");
    let learned = checks
        .iter()
        .filter(|r| r["sampler"] == "ddpm" && r["card"].as_str().unwrap().starts_with("learned"))
        .count();
    assert_eq!(learned, 1, "{v}");
    let controls: Vec<_> = rows.iter().filter(|r| r["control"] == true).collect();
    assert_eq!(controls.len(), 8, "{v}");
    assert!(controls.iter().all(|r| r["ok"] == true), "{v}");
}

#[test]
fn a_card_samples_in_its_chains_range_unless_the_flags_say_otherwise() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let linear = discrete("eps", "linear", false);
    trace_gmm8(&d.join("eps.pt"), chain_sigma(&linear), |x, dd, s| {
        (x - dd) / s
    });
    let card = write_card(d, "eps", "eps.pt", "kind = \"discrete\"", "");
    let (lo, hi) = linear.sigma_range().unwrap();
    let run = |extra: &[&str]| {
        let o = bin()
            .args([
                "sample",
                "--solver",
                "heun",
                "--steps",
                "6",
                "--num",
                "8",
                "--checkpoint",
            ])
            .arg(&card)
            .args(extra)
            .arg("--out")
            .arg(d.join("x.npy"))
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", stderr(&o));
        let line: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        (
            line["sigma_min"].as_f64().unwrap(),
            line["sigma_max"].as_f64().unwrap(),
        )
    };
    let (a, b) = run(&[]);
    assert!(
        (a / lo - 1.0).abs() < 1e-12 && (b / hi - 1.0).abs() < 1e-12,
        "{a} {b}"
    );
    assert_eq!(run(&["--sigma-max", "80"]), (a, 80.0));
    assert_eq!(run(&["--sigma-min", "0.05"]), (0.05, b));
    // An exact model keeps EDM's 0.002 to 80.
    let o = bin()
        .args([
            "sample",
            "--denoiser",
            "builtin:gmm8",
            "--solver",
            "heun",
            "--steps",
            "6",
        ])
        .args(["--num", "8", "--out"])
        .arg(d.join("y.npy"))
        .output()
        .unwrap();
    let line: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(line["sigma_min"], 0.002);
    assert_eq!(line["sigma_max"], 80.0);
}

#[test]
fn the_ddpm_grids_take_the_cards_chain() {
    // A v network on the scaled-linear chain; `--grid ddpm-trailing` then places its levels on
    // that chain (not DDPM's linear one), at diffusers' trailing timesteps.
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let precond = "kind = \"discrete\"\nprediction = \"v\"\nschedule = \"scaled-linear\"\nbeta_start = 0.00085\nbeta_end = 0.012";
    let scaled: Precond = toml::from_str(precond).unwrap();
    let v_of = |x: &Tensor, dd: &Tensor, s: &Tensor| {
        let a = (s.square() + 1.0).rsqrt();
        (x - dd) / s * &a - dd * s * &a
    };
    trace_gmm8(&d.join("v.pt"), chain_sigma(&scaled), v_of);
    let card = write_card(d, "v", "v.pt", precond, "");
    let chain = scaled.discrete_sigmas().unwrap();
    let run = |grid: &[&str], out: &str| {
        let o = bin()
            .args([
                "sample",
                "--solver",
                "ddim",
                "--steps",
                "6",
                "--num",
                "64",
                "--checkpoint",
            ])
            .arg(&card)
            .args(grid)
            .arg("--out")
            .arg(d.join(out))
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", stderr(&o));
        let line: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        (
            line["sigma_max"].as_f64().unwrap(),
            line["sigma_min"].as_f64().unwrap(),
        )
    };
    // trailing, 6 of 1000: timesteps 999, 832, 666, 499, 332, 166.
    assert_eq!(
        run(&["--grid", "ddpm-trailing"], "t.npy"),
        (chain[999], chain[166])
    );
    // leading with Stable Diffusion's offset: 831 (= 5 x (1000 div 6) + 1) down to 1.
    assert_eq!(
        run(&["--grid", "ddpm-leading", "--steps-offset", "1"], "l.npy"),
        (chain[831], chain[1])
    );
    // ComfyUI's schedulers read the same chain: simple at 6 steps takes the levels at
    // 999 - floor(i 1000 / 6), 999 down to 166.
    assert_eq!(
        run(&["--grid", "comfy-simple"], "s.npy"),
        (chain[999], chain[166])
    );
    // ddim_uniform at 6 steps of 1000 takes every 166th timestep from 1, 7 levels, where
    // ComfyUI runs 7 steps: refused, nothing written.
    let o = bin()
        .args([
            "sample",
            "--solver",
            "ddim",
            "--steps",
            "6",
            "--num",
            "4",
            "--checkpoint",
        ])
        .arg(&card)
        .args(["--grid", "comfy-ddim-uniform", "--out"])
        .arg(d.join("u.npy"))
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("takes 7 steps when asked for 6"),
        "{}",
        stderr(&o)
    );
    assert!(!d.join("u.npy").exists());
    // compare on a ddpm-* grid: each step count against its own reference, a fine Heun solve
    // between that count's first and last levels (trailing at 5 steps stops at sigma 0.72, at 20
    // at 0.17: a reference to another sigma_min would leave errors of order 0.1 to 1).
    let o = bin()
        .args([
            "compare",
            "--solvers",
            "heun",
            "--steps",
            "5,20",
            "--num",
            "256",
        ])
        .args([
            "--reference-steps",
            "1024",
            "--grid",
            "ddpm-trailing",
            "--out-dir",
        ])
        .arg(d.join("cmp"))
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(
        stderr(&o).matches("on log-snr from").count(),
        2,
        "{}",
        stderr(&o)
    );
    let csv = std::fs::read_to_string(d.join("cmp/results.csv")).unwrap();
    let rms: Vec<f64> = csv
        .lines()
        .skip(1)
        .map(|l| l.split(',').nth(3).unwrap().parse().unwrap())
        .collect();
    println!("compare, heun, ddpm-trailing, rms at 5 and 20 steps: {rms:?}");
    assert!(
        rms[0] < 0.3 && rms[1] < 0.02 && rms[1] < rms[0] / 4.0,
        "{csv}"
    );
    // --steps-offset with another grid is an error.
    let o = bin()
        .args([
            "sample",
            "--solver",
            "ddim",
            "--steps",
            "6",
            "--num",
            "4",
            "--steps-offset",
            "1",
        ])
        .args(["--denoiser", "builtin:gmm8", "--out"])
        .arg(d.join("bad.npy"))
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("--steps-offset applies to the ddpm-leading grid"),
        "{}",
        stderr(&o)
    );
}

/// A class-conditional digits card (EDM preconditioning, `classes = 10`) whose denoiser is exact
/// for point masses at the ten class-mean digits: given class k (< 10) it returns that class's
/// mean at every noise level, given the null label 10 the posterior mean over all ten.
fn trace_class_mean_digits(path: &Path) {
    let digits = scoreflow::data::read_digits(&scoreflow::data::default_digits_path()).unwrap();
    let labels = digits.labels.as_ref().unwrap();
    let x = digits.x.flatten(1, -1).to_kind(Kind::Float);
    let means = Tensor::stack(
        &(0..10)
            .map(|k| {
                x.index_select(0, &labels.eq(k).nonzero().view([-1]))
                    .mean_dim([0i64].as_slice(), false, Kind::Float)
            })
            .collect::<Vec<_>>(),
        0,
    );
    let ins = [
        Tensor::randn([4, 1, 8, 8], (Kind::Float, Device::Cpu)),
        Tensor::from_slice(&[-1.5f32, -0.2, 0.4, 1.0]),
        Tensor::from_slice(&[0i64, 3, 10, 9]),
    ];
    let m = CModule::create_by_tracing("ClassMeans", "forward", &ins, &mut |ins| {
        // EDM: c_noise = ln(s) / 4, c_in = 1 / sqrt(s^2 + 1/4).
        let s = (&ins[1] * 4.0).exp().unsqueeze(1);
        let s2 = s.square();
        let x = ins[0].flatten(1, -1) * (&s2 + 0.25).sqrt();
        let d2 = (x.unsqueeze(1) - means.unsqueeze(0))
            .square()
            .sum_dim_intlist(&[2i64][..], false, Kind::Float);
        let posterior = (-d2 / (&s2 * 2.0)).softmax(1, Kind::Float).matmul(&means);
        let label = &ins[2];
        let given = means.index_select(0, &label.clamp_max(9));
        let d = given.where_self(&label.ne(10).unsqueeze(1), &posterior);
        let skip = (&s2 + 0.25).reciprocal() * 0.25;
        let out = &s * 0.5 * (&s2 + 0.25).rsqrt();
        vec![((d - skip * &x) / out).view([-1, 1, 8, 8])]
    })
    .unwrap();
    m.save(path).unwrap();
}

#[test]
fn class_accuracy_counts_samples_in_the_class_they_were_drawn_for() {
    // Metric class-accuracy on a card whose class-k denoiser returns class k's mean digit: the
    // conditional samples (w = 1) are the class means, which the classifier puts in their class;
    // unconditional ones (w = 0: the null label alone) land on a class mean the noise picks, in
    // the drawn class about one time in ten. The metric labels sample i with class i mod 10.
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    trace_class_mean_digits(&d.join("means.pt"));
    let card = d.join("means.toml");
    std::fs::write(
        &card,
        format!(
            "torchscript = \"means.pt\"\nshape = [1, 8, 8]\nclasses = 10\n[precond]\nkind = \"edm\"\n[data]\nkind = \"digits\"\npath = \"{}\"\n",
            scoreflow::data::default_digits_path().display()
        ),
    )
    .unwrap();
    let exp = |name: &str, metrics: &str, model_extra: &str| {
        let path = d.join(format!("{name}.toml"));
        std::fs::write(
            &path,
            format!(
                "out_dir = \"{}\"\ndevice = \"cpu\"\nnum = 200\nseeds = [0]\nsteps = [8]\nmetrics = [{metrics}]\nsamplers = [{{ kind = \"heun\" }}]\n[model]\nkind = \"checkpoint\"\npath = \"{}\"\n{model_extra}\n",
                d.join(name).display(),
                card.display()
            ),
        )
        .unwrap();
        bin().args(["run"]).arg(&path).output().unwrap()
    };
    let o = exp(
        "acc",
        "\"class-accuracy\", \"fd\"",
        "conditional = true\nguidance = [0.0, 1.0]",
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let rows: Vec<serde_json::Value> = std::fs::read_to_string(d.join("acc/results.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let acc = |w: f64| {
        rows.iter()
            .find(|r| r["guidance"] == serde_json::json!(w))
            .unwrap()["class-accuracy"]
            .as_f64()
            .unwrap()
    };
    let (uncond, cond) = (acc(0.0), acc(1.0));
    println!("class-accuracy: w = 0 {uncond}, w = 1 {cond}");
    assert!(cond >= 0.9, "conditional samples in their class: {cond}");
    assert!(
        uncond < 0.3,
        "unconditional samples in the drawn class: {uncond}"
    );
    // The floor: the classifier on fresh training digits with their own labels.
    let floors: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(d.join("acc/floors.json")).unwrap()).unwrap();
    let floor = floors["class-accuracy"].as_f64().unwrap();
    assert!(floor > 0.9 && floor <= 1.0, "{floor}");
    assert!(floors["fd"].as_f64().unwrap() > 0.0);
    // Higher is better: the summary ranks the conditional cell first within the budget.
    let summary = std::fs::read_to_string(d.join("acc/summary.md")).unwrap();
    assert!(
        summary.contains("## class-accuracy: ") && summary.contains("| 15 | heun @ w=1 | 8 | 15 |"),
        "{summary}"
    );
    // Refused before any work: unconditional sampling, or a model without labelled images.
    let o = exp("uncond", "\"class-accuracy\"", "");
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("metric class-accuracy needs class-conditional sampling"),
        "{}",
        stderr(&o)
    );
    assert!(!d.join("uncond").exists());
    let text = std::fs::read_to_string(&card).unwrap();
    std::fs::write(&card, &text[..text.find("[data]").unwrap()]).unwrap();
    let o = exp("nodata", "\"class-accuracy\"", "conditional = true");
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("metric class-accuracy needs a checkpoint trained on labelled images; this one has no [data] table"),
        "{}",
        stderr(&o)
    );
    assert!(!d.join("nodata").exists());
}
