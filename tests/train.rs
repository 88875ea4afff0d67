//! Training: a small MLP learns the 8-mode mixture, resumed runs continue exactly, and bad
//! configs, checkpoints and diverging runs end with clear errors.

use scoreflow::metrics::sliced_w2;
use scoreflow::solvers::sde::Edm;
use scoreflow::solvers::{grid, GridKind, SamplerSpec};
use scoreflow::train::{self, RunOpts, TrainConfig};
use scoreflow::{job, model};
use std::path::Path;

mod common;
use common::train_quietly;
use tch::{Device, Kind};

const EDM: &str = "[model.precond]\nkind = \"edm\"\nsigma_data = 1.4\n[loss]\nkind = \"edm\"";

fn config(out: &Path, steps: usize, extra_train: &str) -> TrainConfig {
    config_with(out, steps, extra_train, EDM)
}

/// The gmm8 MLP config with `precond_and_loss` (`[model.precond]` and `[loss]` tables).
fn config_with(out: &Path, steps: usize, extra_train: &str, precond_and_loss: &str) -> TrainConfig {
    let text = format!(
        r#"
seed = 1
device = "cpu"
out_dir = "{}"
[data]
kind = "gmm8"
num = 20000
{precond_and_loss}
[model.backbone]
kind = "mlp"
hidden = 128
depth = 3
fourier_features = 16
[train]
steps = {steps}
batch = 512
lr = 2e-3
warmup_steps = 100
grad_clip = 1.0
ema_half_life = 20000
ema_rampup = 0.05
{extra_train}
"#,
        out.display()
    );
    TrainConfig::from_toml(&text, Path::new("test.toml")).unwrap()
}

#[test]
fn mlp_learns_the_8_mode_mixture() {
    let dir = tempfile::tempdir().unwrap();
    learns_the_mixture(&config(
        dir.path(),
        3000,
        "checkpoint_every = 3000\nlog_every = 500",
    ));
}

#[test]
fn flow_matching_learns_the_8_mode_mixture() {
    // Rectified flow: velocity prediction trained by conditional flow matching with SD3's
    // logit-normal times, sampled by heun in sigma as any denoiser.
    let dir = tempfile::tempdir().unwrap();
    learns_the_mixture(&config_with(
        dir.path(),
        3000,
        "checkpoint_every = 3000\nlog_every = 500",
        "[model.precond]\nkind = \"flow\"\n[loss]\nkind = \"flow\"",
    ));
}

#[test]
fn reflow_on_paired_noise_straightens_the_flow() {
    // Reflow (Liu et al. 2022): the (noise, sample) pairs of the committed rectified flow
    // runs/gmm8-flow (heun, 32 steps) as data with paired noise; the flow trained on them maps
    // each noise to its sample in one Euler step, where the first flow's one step lands far off.
    let dir = tempfile::tempdir().unwrap();
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let (first, _) = train::load_for_sampling(
        &root.join("runs/gmm8-flow/checkpoint.safetensors"),
        Device::Cpu,
    )
    .unwrap();
    let sde = Edm::default();
    let n = 4000;
    let z = job::initial_noise(3, n, 2, Device::Cpu, Kind::Float).unwrap();
    let solve = |net: &dyn scoreflow::solvers::Denoiser, spec: &SamplerSpec, steps: usize| {
        let sigmas = grid::sigmas(&GridKind::default(), steps, 0.002, 80.0, &sde).unwrap();
        job::run_from_noise(spec, net, &sde, &sigmas, &z, 3, 0, &mut |_, _| {})
            .unwrap()
            .0
    };
    let heun = SamplerSpec::Heun(Default::default());
    let euler = SamplerSpec::Euler(Default::default());
    let x = solve(&first.net, &heun, 32);
    scoreflow::npy::write_f32(&dir.path().join("x.npy"), &x).unwrap();
    scoreflow::npy::write_f32(&dir.path().join("z.npy"), &z).unwrap();
    let data = format!(
        "[data]\nkind = \"npy\"\npath = \"{}\"\nnoise = \"{}\"\n",
        dir.path().join("x.npy").display(),
        dir.path().join("z.npy").display()
    );
    let mut cfg = config_with(
        &dir.path().join("run"),
        1000,
        "checkpoint_every = 1000\nlog_every = 500",
        "[model.precond]\nkind = \"flow\"\n[loss]\nkind = \"flow\"",
    );
    cfg.data = toml::from_str::<toml::Table>(&data).unwrap()["data"]
        .clone()
        .try_into()
        .unwrap();
    let report = train_quietly(&cfg);
    let (second, _) = train::load_for_sampling(&report.checkpoint, Device::Cpu).unwrap();
    let off = |y: &tch::Tensor| {
        (y - &x)
            .square()
            .sum_dim_intlist(1, false, Kind::Double)
            .mean(Kind::Double)
            .sqrt()
            .double_value(&[])
    };
    let (one_first, one_second) = (
        off(&solve(&first.net, &euler, 1)),
        off(&solve(&second.net, &euler, 1)),
    );
    println!("one Euler step from each pair's noise: RMS to its sample {one_first:.3} (first flow), {one_second:.3} (reflowed)");
    assert!(
        one_first > 1.0,
        "the first flow is not curved here: {one_first}"
    );
    assert!(one_second < 0.25, "reflow did not straighten: {one_second}");
}

/// Train `cfg` (gmm8 data) and check its samples against fresh data.
fn learns_the_mixture(cfg: &TrainConfig) {
    let report = train::run(
        cfg,
        &RunOpts {
            quiet: true,
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(report.final_step, 3000);
    let (m, _) = train::load_for_sampling(&report.checkpoint, Device::Cpu).unwrap();
    let n = 10_000;
    let sde = Edm::default();
    let sigmas = grid::sigmas(&GridKind::default(), 32, 0.002, 80.0, &sde).unwrap();
    let z = job::initial_noise(7, n, 2, Device::Cpu, Kind::Float).unwrap();
    let (x, _) = job::run_from_noise(
        &SamplerSpec::Heun(Default::default()),
        &m.net,
        &sde,
        &sigmas,
        &z,
        7,
        0,
        &mut |_, _| {},
    )
    .unwrap();
    let gmm = model::builtin_gmm8(Device::Cpu).unwrap();
    let data = gmm.sample(n, 100, Device::Cpu);
    let sw = |a: &tch::Tensor| sliced_w2(a, &data, 512, 5);
    // The sampling-noise floor: the mean distance of four fresh data sets of the same size.
    let floor = (0..4)
        .map(|k| sw(&gmm.sample(n, 200 + k, Device::Cpu)))
        .sum::<f64>()
        / 4.0;
    // A mixture whose modes are twice as wide as the data's (std 0.4, not 0.2).
    let blurred = sw(
        &scoreflow::solvers::GaussianMixture::ring(8, 2.0, 0.4, Device::Cpu)
            .unwrap()
            .sample(n, 300, Device::Cpu),
    );
    let sw_model = sw(&x);
    println!("sliced W2 to data: model {sw_model:.4}, fresh data {floor:.4} (mean of 4), modes twice as wide {blurred:.4}");
    // Allow the model twice the sampling noise of fresh data; the blurred mixture is beyond
    // that bound, so the check can fail for a model that is merely close.
    assert!(
        blurred > 2.0 * floor,
        "the bound would not catch blurred modes"
    );
    assert!(
        sw_model < 2.0 * floor,
        "model {sw_model} vs fresh-data floor {floor}"
    );
    let tv = scoreflow::compare::mode_tv(&gmm, &x).unwrap();
    assert!(tv < 0.05, "mode-weight TV {tv}");
}

#[test]
fn resumed_training_continues_exactly() {
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let extra = "checkpoint_every = 15\nlog_every = 5";
    let full = train::run(
        &config(a.path(), 40, extra),
        &RunOpts {
            quiet: true,
            ..Default::default()
        },
    )
    .unwrap();
    let cfg_b = config(b.path(), 40, extra);
    let first = train::run(
        &cfg_b,
        &RunOpts {
            stop_at: Some(17),
            quiet: true,
            ..Default::default()
        },
    )
    .unwrap();
    // Stopped at step 17 (between checkpoints): the stop writes a checkpoint too.
    assert_eq!(first.losses.len(), 17);
    let ck = scoreflow::checkpoint::load(&first.checkpoint).unwrap();
    assert_eq!(ck.meta("step").unwrap(), "17");
    let rest = train::run(
        &cfg_b,
        &RunOpts {
            resume: true,
            quiet: true,
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(rest.losses.first().unwrap().0, 18);
    let tail: Vec<(usize, f64)> = full
        .losses
        .iter()
        .filter(|(s, _)| *s >= 18)
        .cloned()
        .collect();
    assert_eq!(
        tail, rest.losses,
        "resumed losses differ from the uninterrupted run"
    );
    assert_eq!(first.losses[..], full.losses[..17]);
}

fn bin() -> std::process::Command {
    std::process::Command::new(env!("CARGO_BIN_EXE_scoreflow"))
}

fn expect_error(args: &[&str], needle: &str) -> String {
    let o = bin().args(args).output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert_eq!(o.status.code(), Some(2), "{args:?}: {err}");
    assert!(
        err.contains(needle),
        "{args:?}: expected '{needle}' in {err}"
    );
    assert!(!err.contains("panicked"), "{err}");
    err
}

#[test]
fn bad_configs_name_the_key_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let good = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/experiments/moons.toml"
    ))
    .unwrap();
    let write = |name: &str, text: &str| {
        let p = dir.path().join(name);
        std::fs::write(&p, text).unwrap();
        p.to_str().unwrap().to_string()
    };
    let unknown = write(
        "unknown.toml",
        &good.replace("lr = 2e-3", "lr = 2e-3\nlearning_rate = 1"),
    );
    let err = expect_error(&["train", &unknown], "learning_rate");
    assert!(err.contains("line"), "{err}");
    let wrong = write(
        "wrong.toml",
        &good.replace("batch = 512", "batch = \"big\""),
    );
    let err = expect_error(&["train", &wrong], "batch");
    assert!(err.contains("line"), "{err}");
    let kind = write(
        "kind.toml",
        &good.replace("kind = \"moons\"", "kind = \"spirals\""),
    );
    expect_error(&["train", &kind], "spirals");
    let bad_data = write(
        "npy.toml",
        &good.replace(
            "kind = \"moons\"\nnum = 20000",
            "kind = \"npy\"\npath = \"/nonexistent.npy\"",
        ),
    );
    expect_error(&["train", &bad_data], "cannot read");
    // Paired noise (reflow) must have the data's shape and be finite.
    let x = tch::Tensor::zeros([10, 2], (Kind::Float, Device::Cpu));
    let xp = dir.path().join("x.npy");
    scoreflow::npy::write_f32(&xp, &x).unwrap();
    for (name, z, needle) in [
        (
            "z3.npy",
            tch::Tensor::zeros([10, 3], (Kind::Float, Device::Cpu)),
            "the paired noise needs the data's shape",
        ),
        (
            "znan.npy",
            tch::Tensor::full([10, 2], f64::NAN, (Kind::Float, Device::Cpu)),
            "contains NaN or infinite values",
        ),
    ] {
        let zp = dir.path().join(name);
        scoreflow::npy::write_f32(&zp, &z).unwrap();
        let cfg = write(
            &format!("{name}.toml"),
            &good.replace(
                "kind = \"moons\"\nnum = 20000",
                &format!(
                    "kind = \"npy\"\npath = \"{}\"\nnoise = \"{}\"",
                    xp.display(),
                    zp.display()
                ),
            ),
        );
        let err = expect_error(&["train", &cfg], needle);
        assert!(err.contains(name), "{err}");
    }
    expect_error(&["train", "/nonexistent.toml"], "cannot read config");
    let rampup = write(
        "rampup.toml",
        &good.replace("lr = 2e-3", "lr = 2e-3\nema_rampup = -0.5"),
    );
    expect_error(&["train", &rampup], "ema_rampup");
    let huge = write(
        "huge.toml",
        &good.replace("batch = 512", "batch = 100000000000"),
    );
    expect_error(&["train", &huge], "train.batch = 100000000000 is more than");
    // A network too large to allocate is refused before it is built (an MLP 30000 wide: about
    // 1.1e10 weights; the out-of-memory killer before).
    let wide = write("wide.toml", &good.replace("hidden = 128", "hidden = 30000"));
    expect_error(&["train", &wide], "more than 2^30");
    let unet = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/experiments/digits.toml"
    ))
    .unwrap();
    let unet = write(
        "unet.toml",
        &unet.replace("channels = 32", "channels = 16384"),
    );
    expect_error(&["train", &unet], "more than 2^30");
    let moons = concat!(env!("CARGO_MANIFEST_DIR"), "/experiments/moons.toml");
    expect_error(
        &["train", moons, "--stop-at", "0"],
        "--stop-at must be at least 1",
    );
}

#[test]
fn corrupt_and_mismatched_checkpoints_are_errors() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("x.npy");
    let corrupt = dir.path().join("bad.safetensors");
    std::fs::write(&corrupt, b"not a checkpoint at all").unwrap();
    let o = out.to_str().unwrap();
    expect_error(
        &[
            "sample",
            "--checkpoint",
            corrupt.to_str().unwrap(),
            "--solver",
            "heun",
            "--steps",
            "4",
            "--num",
            "3",
            "--out",
            o,
        ],
        "corrupt",
    );
    expect_error(
        &[
            "sample",
            "--checkpoint",
            "/nonexistent.safetensors",
            "--solver",
            "heun",
            "--steps",
            "4",
            "--num",
            "3",
            "--out",
            o,
        ],
        "cannot read checkpoint",
    );
    assert!(!out.exists());

    // Train briefly, then resume with a different model: refused.
    let cfg = config(
        &dir.path().join("run"),
        10,
        "checkpoint_every = 10\nlog_every = 5",
    );
    let report = train_quietly(&cfg);
    let mut other = cfg.clone();
    other.model.backbone = scoreflow::nn::Backbone::Mlp {
        hidden: 64,
        depth: 2,
        fourier_features: 16,
        fourier_scale: 1.0,
    };
    other.train.steps = 20;
    let err = train::run(
        &other,
        &RunOpts {
            resume: true,
            quiet: true,
            ..Default::default()
        },
    )
    .err()
    .unwrap()
    .to_string();
    assert!(err.contains("different config"), "{err}");
    // A checkpoint whose tensors do not fit the model it claims: refused with the tensor named.
    let mut ck = scoreflow::checkpoint::load(&report.checkpoint).unwrap();
    let key = ck
        .tensors
        .keys()
        .find(|k| k.starts_with("ema.") && k.ends_with("out.weight"))
        .unwrap()
        .clone();
    ck.tensors.insert(
        key.clone(),
        tch::Tensor::zeros([3, 3], (Kind::Float, Device::Cpu)),
    );
    let broken = dir.path().join("broken.safetensors");
    scoreflow::checkpoint::save(&broken, &ck.tensors, ck.meta.clone()).unwrap();
    let err = format!(
        "{:#}",
        train::load_for_sampling(&broken, Device::Cpu)
            .err()
            .unwrap()
    );
    assert!(
        err.contains(&key) && err.contains("broken.safetensors"),
        "{err}"
    );
    // Metadata that does not describe these tensors: an empty shape, a U-Net config over vector
    // data, sigma_data 0, a config with fewer blocks than the tensors (errors, not panics).
    let good = scoreflow::checkpoint::load(&report.checkpoint).unwrap();
    let mut config: serde_json::Value = serde_json::from_str(&good.meta["config"]).unwrap();
    let with = |edit: &dyn Fn(&mut std::collections::HashMap<String, String>)| {
        let mut meta = good.meta.clone();
        edit(&mut meta);
        scoreflow::checkpoint::save(&broken, &good.tensors, meta).unwrap();
        train::load_for_sampling(&broken, Device::Cpu)
            .err()
            .map(|e| format!("{e:#}"))
            .unwrap_or_default()
    };
    let err = with(&|m| {
        m.insert("shape".into(), "[]".into());
    });
    assert!(err.contains("shape [] has no elements"), "{err}");
    let set = |cfg: &serde_json::Value| {
        let text = cfg.to_string();
        with(&move |m| {
            m.insert("config".into(), text.clone());
        })
    };
    let mut unet = config.clone();
    unet["model"]["backbone"] = serde_json::json!({"kind": "unet", "channels": 16});
    let err = set(&unet);
    assert!(err.contains("unet backbone needs images"), "{err}");
    let mut zero = config.clone();
    zero["model"]["precond"] = serde_json::json!({"kind": "edm", "sigma_data": 0.0});
    let err = set(&zero);
    assert!(err.contains("sigma_data"), "{err}");
    config["model"]["backbone"]["depth"] = serde_json::json!(1);
    let err = set(&config);
    assert!(
        err.contains("ema tensors, its config's network has"),
        "{err}"
    );
    // The good checkpoint samples from the command line with no model flags.
    let ok = bin()
        .args([
            "sample",
            "--checkpoint",
            report.checkpoint.to_str().unwrap(),
            "--solver",
            "heun",
            "--steps",
            "8",
            "--num",
            "5",
            "--device",
            "cpu",
            "--out",
            o,
        ])
        .output()
        .unwrap();
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    assert!(out.exists());
}

#[test]
fn a_diverging_run_stops_and_keeps_the_last_good_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path(), 400, "checkpoint_every = 10\nlog_every = 10");
    cfg.train.grad_clip = None;
    cfg.train.warmup_steps = 0;
    // Train stably to step 10, then blow the learning rate up.
    train::run(
        &cfg,
        &RunOpts {
            stop_at: Some(10),
            quiet: true,
            ..Default::default()
        },
    )
    .unwrap();
    let before = std::fs::read(train::checkpoint_path(&cfg)).unwrap();
    cfg.train.lr = 1e12;
    let err = train::run(
        &cfg,
        &RunOpts {
            resume: true,
            quiet: true,
            ..Default::default()
        },
    )
    .err()
    .unwrap()
    .to_string();
    assert!(
        err.contains("non-finite") && err.contains("the last good checkpoint (step 10)"),
        "{err}"
    );
    assert_eq!(
        std::fs::read(train::checkpoint_path(&cfg)).unwrap(),
        before,
        "the good checkpoint was overwritten"
    );
    // A fresh run's error.
    let fresh = |cfg: &TrainConfig| {
        train::run(
            cfg,
            &RunOpts {
                quiet: true,
                ..Default::default()
            },
        )
        .err()
        .unwrap()
        .to_string()
    };
    // A fresh run into the same folder that fails before its first checkpoint does not call the
    // earlier run's checkpoint its own.
    let err = fresh(&cfg);
    assert!(
        err.contains("non-finite")
            && err.contains("wrote no checkpoint")
            && err.contains("is an earlier run's"),
        "{err}"
    );
    // Log lines say whose they are. This run failed within its first log interval: the log is
    // still the earlier run's, whole, with the checkpoint's run id.
    let ck_run = scoreflow::checkpoint::load(&train::checkpoint_path(&cfg))
        .unwrap()
        .meta("run")
        .unwrap()
        .to_string();
    let runs = || -> Vec<String> {
        std::fs::read_to_string(cfg.out_dir.join("log.jsonl"))
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["run"].to_string())
            .collect()
    };
    assert!(
        runs().iter().all(|r| *r == format!("{ck_run:?}")),
        "{:?}",
        runs()
    );
    // Logging every step, a fresh run logs its first (finite) step and then fails: the log is
    // the new run's, named in the error, beside the earlier run's checkpoint.
    cfg.train.log_every = 1;
    let err = fresh(&cfg);
    let new_runs = runs();
    assert!(!new_runs.is_empty());
    assert!(new_runs
        .iter()
        .all(|r| *r == new_runs[0] && *r != format!("{ck_run:?}")));
    assert!(
        err.contains(&format!("run {}", new_runs[0].trim_matches('"'))),
        "{err} / {new_runs:?}"
    );
    // A fresh run that fails before its first log line leaves no folder behind.
    cfg.train.log_every = 10;
    cfg.out_dir = dir.path().join("fresh");
    let err = fresh(&cfg);
    assert!(err.contains("non-finite"), "{err}");
    assert!(!cfg.out_dir.exists(), "a failed run left {:?}", cfg.out_dir);
}

#[test]
fn bf16_autocast_trains_close_to_float32() {
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let extra = "checkpoint_every = 20\nlog_every = 10";
    let f32_run = train::run(
        &config(a.path(), 20, extra),
        &RunOpts {
            quiet: true,
            ..Default::default()
        },
    )
    .unwrap();
    let mut cfg = config(b.path(), 20, extra);
    cfg.train.precision = "bf16".into();
    let bf16_run = train_quietly(&cfg);
    // Same batch and noise at step 1, so the losses differ only by bf16 rounding: a little, not
    // nothing (autocast engaged) and not much (about 8 bits of mantissa).
    let (l32, l16) = (f32_run.losses[0].1, bf16_run.losses[0].1);
    let rel = (l32 - l16).abs() / l32;
    assert!(rel > 1e-7 && rel < 0.05, "float32 {l32} vs bf16 {l16}");
    assert!(bf16_run.losses.iter().all(|l| l.1.is_finite()));
    let bad = TrainConfig::from_toml(
        &format!(
            "{}\nprecision = \"fp8\"",
            "out_dir = \"x\"\n[data]\nkind = \"moons\"\n[train]\nsteps = 1"
        ),
        Path::new("p.toml"),
    );
    assert!(bad.err().unwrap().to_string().contains("precision"));
}

#[test]
fn power_function_ema_is_edm2s_profile_and_forgets_the_initial_weights() {
    use train::{power_ema_beta, power_ema_exponent, MAX_EMA_STD};
    // The exponent gamma has the requested relative standard deviation (EDM2, eq. 3).
    for std in [0.01, 0.05, 0.10, 0.2, MAX_EMA_STD] {
        let g = power_ema_exponent(std);
        let back = (g + 1.0).sqrt() / ((g + 2.0) * (g + 3.0).sqrt());
        println!("sigma_rel {std}: gamma {g:.4}");
        assert!((back - std).abs() < 1e-12, "{std}: gamma {g} gives {back}");
    }
    // Its betas telescope: after N steps of `b` samples the EMA of a parameter sequence p_k is
    // sum_k ((k / N)^(gamma + 1) - ((k - 1) / N)^(gamma + 1)) p_k.
    let (std, b, n) = (0.05, 7.0, 500usize);
    let g = power_ema_exponent(std);
    let p = |k: usize| (k as f64 * 0.37).sin() + k as f64 / n as f64;
    let mut ema = 123.0; // the initial weights: forgotten at the first step (beta = 0)
    for k in 1..=n {
        let beta = power_ema_beta(g, k as f64 * b, b);
        ema = beta * ema + (1.0 - beta) * p(k);
    }
    let want: f64 = (1..=n)
        .map(|k| {
            let w = (k as f64 / n as f64).powf(g + 1.0) - ((k - 1) as f64 / n as f64).powf(g + 1.0);
            w * p(k)
        })
        .sum();
    assert!((ema - want).abs() < 1e-10, "{ema} vs {want}");

    // In training (no warm-up, no ramp-up): after one step the power-function EMA is the
    // network itself (beta = 0), where the half-life EMA still holds most of the initial
    // weights; after two steps at sigma_rel near its maximum (gamma near 0, beta 1/2) it is
    // their average, not the network.
    let dir = tempfile::tempdir().unwrap();
    let ema_gap = |steps: usize, std: Option<f64>, name: &str| {
        let mut cfg = config(
            &dir.path().join(name),
            steps,
            "checkpoint_every = 1\nlog_every = 1",
        );
        cfg.train.warmup_steps = 0;
        cfg.train.ema_rampup = None;
        cfg.train.ema_std = std;
        let report = train_quietly(&cfg);
        let ck = scoreflow::checkpoint::load(&report.checkpoint).unwrap();
        ck.tensors
            .iter()
            .filter_map(|(k, v)| k.strip_prefix("ema.").map(|rest| (rest, v)))
            .map(|(rest, e)| {
                let net = &ck.tensors[&format!("net.{rest}")];
                (e - net).abs().max().double_value(&[])
            })
            .fold(0.0f64, f64::max)
    };
    let (one, half_life, two) = (
        ema_gap(1, Some(0.05), "p1"),
        ema_gap(1, None, "h1"),
        ema_gap(2, Some(0.28), "p2"),
    );
    println!("EMA - net after 1 step: power {one:.1e}, half-life {half_life:.1e}; power (0.28) after 2: {two:.1e}");
    assert_eq!(one, 0.0);
    assert!(half_life > 1e-4 && two > 1e-4, "{half_life} {two}");

    // Bad settings name the key.
    let base = config(dir.path(), 10, "");
    for (std, rampup, want) in [
        (0.5, None, "ema_std"),
        (0.0, None, "ema_std"),
        (0.05, Some(0.05), "ema_rampup"),
    ] {
        let mut cfg = base.clone();
        cfg.train.ema_std = Some(std);
        cfg.train.ema_rampup = rampup;
        let err = cfg.validate().err().unwrap().to_string();
        assert!(err.contains(want), "{err}");
    }
}

#[test]
fn posthoc_ema_reconstructs_other_widths_from_the_snapshots() {
    use scoreflow::posthoc::{coefficients, PosthocArgs};
    use train::power_ema_beta;
    // The least squares on the profiles: a snapshot's own profile is reproduced exactly.
    let snaps: Vec<(f64, f64)> = (1..=20)
        .flat_map(|k| [(50.0 * k as f64, 0.05), (50.0 * k as f64, 0.10)])
        .collect();
    let (x, residual) = coefficients(&snaps, (1000.0, 0.05)).unwrap();
    let own = x
        .iter()
        .enumerate()
        .map(|(i, w)| if i == 38 { w - 1.0 } else { *w });
    assert!(
        residual < 1e-6 && own.map(f64::abs).fold(0.0, f64::max) < 1e-6,
        "{x:?}"
    );

    // A scalar parameter trained for 1000 steps of one sample: the power EMAs of sigma_rel 0.05
    // and 0.10 snapshotted every 50 steps give the EMA of 0.07 (tracked directly alongside).
    let p = |k: usize| (k as f64 / 90.0).sin() + k as f64 / 400.0;
    let gammas = [0.05, 0.10, 0.07].map(train::power_ema_exponent);
    let mut ema = [0.0; 3];
    let mut values = Vec::new();
    for k in 1..=1000usize {
        for (e, g) in ema.iter_mut().zip(gammas) {
            let b = power_ema_beta(g, k as f64, 1.0);
            *e = b * *e + (1.0 - b) * p(k);
        }
        if k % 50 == 0 {
            values.extend([ema[0], ema[1]]);
        }
    }
    let (x, residual) = coefficients(&snaps, (1000.0, 0.07)).unwrap();
    let rebuilt: f64 = x.iter().zip(&values).map(|(w, v)| w * v).sum();
    let spread = (values[38] - values[39]).abs();
    println!(
        "sigma_rel 0.07: direct {:.6}, rebuilt {rebuilt:.6} (0.05: {:.6}, 0.10: {:.6}), profile residual {residual:.1e}",
        ema[2], values[38], values[39]
    );
    assert!(residual < 0.05, "{residual}");
    assert!(
        (rebuilt - ema[2]).abs() < 0.05 * spread,
        "{rebuilt} vs {}",
        ema[2]
    );

    // End to end: a run with posthoc_stds writes snapshots; posthoc-ema writes a checkpoint whose
    // EMA at a tracked width and the last snapshot's length is that snapshot's, and loads.
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("run");
    let mut cfg = config(&out, 40, "checkpoint_every = 20\nlog_every = 10");
    cfg.train.ema_rampup = None;
    cfg.train.posthoc_stds = Some(vec![0.05, 0.10]);
    cfg.train.posthoc_every = Some(10);
    train_quietly(&cfg);
    let snapshots = std::fs::read_dir(out.join("posthoc")).unwrap().count();
    assert_eq!(snapshots, 4);
    // A run stopped at step 20 and resumed (the post-hoc EMAs travel in the checkpoint) writes
    // the same last snapshot as the uninterrupted one.
    let mut cfg_r = cfg.clone();
    cfg_r.out_dir = dir.path().join("resumed");
    for (stop_at, resume) in [(Some(20), false), (None, true)] {
        train::run(
            &cfg_r,
            &RunOpts {
                stop_at,
                resume,
                quiet: true,
                ..Default::default()
            },
        )
        .unwrap();
    }
    let snap =
        |d: &Path| scoreflow::checkpoint::load(&d.join("posthoc/00000040.safetensors")).unwrap();
    let (a, b) = (snap(&out), snap(&cfg_r.out_dir));
    for (k, v) in &a.tensors {
        assert!(v.equal(&b.tensors[k]), "{k} differs after resuming");
    }
    let args = |std: f64, samples: Option<f64>, name: &str| PosthocArgs {
        run_dir: out.clone(),
        std,
        samples,
        out: dir.path().join(name),
    };
    scoreflow::posthoc::run(&args(0.05, None, "p05.safetensors")).unwrap();
    scoreflow::posthoc::run(&args(0.07, Some(30.0 * 512.0), "p07.safetensors")).unwrap();
    // The largest difference between a rebuilt checkpoint's EMA and a snapshot's first width.
    let gap = |rebuilt: &Path, snapshot: &Path| {
        let rebuilt = scoreflow::checkpoint::load(rebuilt).unwrap();
        let snapshot = scoreflow::checkpoint::load(snapshot).unwrap();
        let mut worst = 0.0f64;
        for (k, v) in &snapshot.tensors {
            if let Some(name) = k.strip_prefix("phema0.") {
                let e = &rebuilt.tensors[&format!("ema.{name}")];
                worst = worst.max((e - v).abs().max().double_value(&[]));
            }
        }
        worst
    };
    let worst = gap(
        &dir.path().join("p05.safetensors"),
        &out.join("posthoc/00000040.safetensors"),
    );
    assert!(worst < 1e-5, "{worst}");
    train::load_for_sampling(&dir.path().join("p07.safetensors"), Device::Cpu).unwrap();

    // The resumed run is one run: its snapshots and checkpoint carry one run id. A fresh run
    // stopped at step 20 into that folder gets another; posthoc-ema leaves out the earlier run's
    // snapshots of steps 30 and 40, so its default length is the new run's 20 steps.
    let id = |p: &Path| {
        scoreflow::checkpoint::load(p)
            .unwrap()
            .meta("run")
            .unwrap()
            .to_string()
    };
    let resumed = &cfg_r.out_dir;
    let first_id = id(&resumed.join("checkpoint.safetensors"));
    assert_eq!(id(&resumed.join("posthoc/00000010.safetensors")), first_id);
    assert_eq!(id(&resumed.join("posthoc/00000040.safetensors")), first_id);
    train::run(
        &cfg_r,
        &RunOpts {
            stop_at: Some(20),
            quiet: true,
            ..Default::default()
        },
    )
    .unwrap();
    let fresh_id = id(&resumed.join("checkpoint.safetensors"));
    assert_ne!(fresh_id, first_id);
    // The fresh run's log is its own: every line carries its run id.
    let log = std::fs::read_to_string(resumed.join("log.jsonl")).unwrap();
    assert!(log.lines().count() > 0);
    for line in log.lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        assert_eq!(v["run"].as_str(), Some(fresh_id.as_str()), "{line}");
    }
    scoreflow::posthoc::run(&PosthocArgs {
        run_dir: resumed.clone(),
        std: 0.05,
        samples: None,
        out: dir.path().join("p05-fresh.safetensors"),
    })
    .unwrap();
    let worst = gap(
        &dir.path().join("p05-fresh.safetensors"),
        &resumed.join("posthoc/00000020.safetensors"),
    );
    assert!(worst < 1e-5, "the fresh run's own last snapshot: {worst}");
    // With only the earlier run's snapshots left, there is nothing of the checkpoint's run.
    for step in [10, 20] {
        std::fs::remove_file(resumed.join(format!("posthoc/{step:08}.safetensors"))).unwrap();
    }
    let err = scoreflow::posthoc::run(&PosthocArgs {
        run_dir: resumed.clone(),
        std: 0.05,
        samples: None,
        out: dir.path().join("none.safetensors"),
    })
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("every post-hoc EMA snapshot in") && err.contains("another training run"),
        "{err}"
    );
    assert!(!dir.path().join("none.safetensors").exists());

    // Bad input names the problem and writes nothing.
    for (a, want) in [
        (args(0.5, None, "bad.safetensors"), "--std"),
        (args(0.07, Some(1e9), "bad.safetensors"), "--samples"),
        (
            PosthocArgs {
                run_dir: dir.path().join("nowhere"),
                ..args(0.07, None, "bad.safetensors")
            },
            "no post-hoc EMA snapshots",
        ),
        (
            PosthocArgs {
                out: out.join("checkpoint.safetensors"),
                ..args(0.07, None, "")
            },
            "would overwrite an input",
        ),
        (
            PosthocArgs {
                out: out.join("posthoc/../posthoc/new.safetensors"),
                ..args(0.07, None, "")
            },
            "is inside the run's post-hoc snapshot folder",
        ),
    ] {
        let err = format!("{:#}", scoreflow::posthoc::run(&a).err().unwrap());
        assert!(err.contains(want), "{err}");
    }
    assert!(!dir.path().join("bad.safetensors").exists());
    // A snapshot whose sample count is infinite (it made the profiles' sums loop) is refused.
    let tampered = dir.path().join("tampered");
    std::fs::create_dir_all(tampered.join("posthoc")).unwrap();
    std::fs::copy(
        out.join("checkpoint.safetensors"),
        tampered.join("checkpoint.safetensors"),
    )
    .unwrap();
    for entry in std::fs::read_dir(out.join("posthoc")).unwrap() {
        let p = entry.unwrap().path();
        let mut ck = scoreflow::checkpoint::load(&p).unwrap();
        if p.ends_with("00000030.safetensors") {
            ck.meta.insert("samples".into(), "inf".into());
        }
        let dest = tampered.join("posthoc").join(p.file_name().unwrap());
        scoreflow::checkpoint::save(&dest, &ck.tensors, ck.meta).unwrap();
    }
    let err = format!(
        "{:#}",
        scoreflow::posthoc::run(&PosthocArgs {
            run_dir: tampered.clone(),
            ..args(0.07, None, "bad.safetensors")
        })
        .err()
        .unwrap()
    );
    assert!(
        err.contains("00000030.safetensors: samples must be a count in (0, 1e18], got inf"),
        "{err}"
    );
    assert!(!dir.path().join("bad.safetensors").exists());
    let mut bad = cfg.clone();
    bad.train.posthoc_stds = Some(vec![0.05, 0.4]);
    assert!(bad
        .validate()
        .err()
        .unwrap()
        .to_string()
        .contains("posthoc_stds"));
}

#[test]
fn posthoc_matches_edm2s_phema() {
    // Values printed by NVlabs/edm2's own training/phema.py (`python3
    // experiments/peers/edm2_posthoc.py EDM2_REPO`, run as it stands): std_to_exp,
    // power_function_correlation and solve_posthoc_coefficients for snapshots of sigma_rel 0.05
    // and 0.10 at 250, 500, 750 and 1000 samples.
    use scoreflow::posthoc::{coefficients, profile_dot};
    for (std, want) in [
        (0.05, 16.972198602303447),
        (0.1, 6.937203937601809),
        (0.15, 3.5578687748994646),
        (0.2, 1.8262137798958404),
    ] {
        let got = train::power_ema_exponent(std);
        assert!(
            (got - want).abs() < 1e-9 * want,
            "sigma_rel {std}: {got} vs {want}"
        );
    }
    for (a, b, want) in [
        ((1000.0, 0.05), (1000.0, 0.1), 0.0057267132475393055),
        ((250.0, 0.05), (1000.0, 0.1), 3.8132255545760646e-07),
        ((1000.0, 0.2), (400.0, 0.05), 0.0004813404119746401),
    ] {
        let got = profile_dot(a, b);
        assert!(
            (got - want).abs() < 1e-10 * want,
            "{a:?} {b:?}: {got} vs {want}"
        );
    }
    let inputs: Vec<(f64, f64)> = [250.0, 500.0, 750.0, 1000.0]
        .into_iter()
        .flat_map(|t| [(t, 0.05), (t, 0.10)])
        .collect();
    let cases: Vec<((f64, f64), Vec<f64>)> = vec![
        (
            (1000.0, 0.07),
            vec![
                1.8701727360587967e-08,
                -4.59398707515973e-07,
                8.350739349474406e-05,
                -0.0005680480605871159,
                0.010685739328585095,
                -0.04392123564681015,
                0.43456714018574216,
                0.5991533374965553,
            ],
        ),
        (
            (800.0, 0.12),
            vec![
                -0.000136666842900694,
                0.0006317248770995735,
                -0.010331083493587852,
                0.03490640982197157,
                -0.12435883211617217,
                0.7983628813506031,
                -0.4603624313881263,
                0.7612879977911129,
            ],
        ),
        (
            (1000.0, 0.05),
            vec![
                -6.1464556106319835e-27,
                2.5050421816188607e-25,
                1.4299503634898748e-21,
                -9.776352905271701e-20,
                -4.391973599222101e-18,
                9.886457249877621e-17,
                1.0000000000000009,
                -9.459038912875466e-16,
            ],
        ),
    ];
    // The coefficients (normalized to sum 1, as edm2 does), and with them the reconstructed
    // profile: |sum_i (x_i - x'_i) p_i| relative to |p_target|.
    for (target, want) in cases {
        let (got, residual) = coefficients(&inputs, target).unwrap();
        let d: Vec<f64> = got.iter().zip(&want).map(|(g, w)| g - w).collect();
        let mut dad = 0.0;
        for (i, di) in d.iter().enumerate() {
            for (j, dj) in d.iter().enumerate() {
                dad += di * dj * profile_dot(inputs[i], inputs[j]);
            }
        }
        let apart = (dad.max(0.0) / profile_dot(target, target)).sqrt();
        let coef = d.iter().map(|v| v.abs()).fold(0.0, f64::max);
        println!(
            "{target:?}: profiles {apart:.1e} apart (coefficients up to {coef:.1e}), residual {residual:.1e}"
        );
        assert!(
            coef < 1e-9 && apart < 1e-9,
            "{target:?}: {got:?} vs {want:?}"
        );
    }
}
