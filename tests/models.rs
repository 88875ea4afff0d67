//! Backbones, data sets, the Fréchet distance and class conditioning.

use scoreflow::data::{self, DataConfig};
use scoreflow::nn::{Backbone, Classes, Guided, Network};
use scoreflow::precond::Precond;
use scoreflow::solvers::Denoiser;
use scoreflow::train::{self, RunOpts, TrainConfig};
use std::path::Path;
use tch::{nn::VarStore, Device, Kind, Tensor};

#[test]
fn unet_keeps_image_shapes_and_sees_sigma_only_through_c_noise() {
    // Initial weights come from libtorch's process-wide generator; training tests beside this
    // one reseed it and draw in turn.
    let _turn = train::exclusive_rng();
    let vs = VarStore::new(Device::Cpu);
    let bb = Backbone::Unet {
        channels: 16,
        channel_mult: vec![1, 2],
        blocks: 1,
        attn_resolutions: vec![4],
        fourier_features: 8,
        fourier_scale: 1.0,
    };
    bb.check_shape(&[1, 8, 8]).unwrap();
    assert!(bb.check_shape(&[1, 7, 7]).is_err());
    assert!(bb.check_shape(&[64]).is_err());
    let net = Network::new(&vs.root(), &Precond::default(), &bb, &[1, 8, 8], 10);
    let x = Tensor::randn([3, 1, 8, 8], (Kind::Float, Device::Cpu));
    let d = net.denoise(&x, 0.7).unwrap();
    assert_eq!(d.size(), vec![3, 1, 8, 8]);
    // At tiny sigma the EDM preconditioning makes D(x) ~ x whatever the backbone says.
    let d0 = net.denoise(&x, 1e-4).unwrap();
    assert!((d0 - &x).abs().max().double_value(&[]) < 1e-3);
    // Wrong shapes are errors, not panics.
    assert!(net
        .denoise(&Tensor::zeros([2, 64], (Kind::Float, Device::Cpu)), 1.0)
        .is_err());
    let params: i64 = vs
        .trainable_variables()
        .iter()
        .map(|t| t.numel() as i64)
        .sum();
    assert!(params > 10_000, "{params}");
}

#[test]
fn unet_widths_whose_skip_concatenations_are_not_multiples_of_32_work() {
    // channels 48, mult [1, 2]: the decoder concatenates 96 + 48 = 144 channels, which 32 groups
    // do not divide; the group norm takes the largest divisor instead (24 here).
    // Initial weights come from libtorch's process-wide generator; training tests beside this
    // one reseed it and draw in turn.
    let _turn = train::exclusive_rng();
    let vs = VarStore::new(Device::Cpu);
    let bb = Backbone::Unet {
        channels: 48,
        channel_mult: vec![1, 2],
        blocks: 1,
        attn_resolutions: vec![],
        fourier_features: 8,
        fourier_scale: 1.0,
    };
    let net = Network::new(&vs.root(), &Precond::default(), &bb, &[1, 8, 8], 0);
    let x = Tensor::randn([2, 1, 8, 8], (Kind::Float, Device::Cpu));
    let d = net.denoise(&x, 1.3).unwrap();
    assert_eq!(d.size(), vec![2, 1, 8, 8]);
    assert!(d.isfinite().all().int64_value(&[]) != 0);
}

/// The CUDA tests take turns: a graph capture in one thread fails another thread's allocation or
/// synchronous copy ("operation not permitted when stream is capturing").
fn cuda_turn() -> std::sync::MutexGuard<'static, ()> {
    static CUDA: std::sync::Mutex<()> = std::sync::Mutex::new(());
    CUDA.lock().unwrap_or_else(|e| e.into_inner())
}

#[test]
fn cuda_graph_replay_matches_the_eager_network() {
    let _cuda = cuda_turn();
    if !tch::Cuda::is_available() {
        println!(
            "skipped: no CUDA device on this machine (the same test runs where one is present)"
        );
        return;
    }
    let dev = Device::Cuda(0);
    let vs = VarStore::new(dev);
    let bb = Backbone::Unet {
        channels: 32,
        channel_mult: vec![1, 2],
        blocks: 1,
        attn_resolutions: vec![4],
        fourier_features: 8,
        fourier_scale: 1.0,
    };
    let net = Network::new(&vs.root(), &Precond::default(), &bb, &[1, 8, 8], 0);
    let eager = |x: &Tensor, s: f64| {
        tch::no_grad(|| net.forward(x, &Tensor::full([x.size()[0]], s, (Kind::Float, dev)), None))
    };
    assert!(
        scoreflow::cuda::graphs_enabled(),
        "the CUDA shim is built in"
    );
    // The first call captures, later calls replay with new inputs and noise levels.
    for (i, s) in [0.5, 3.0, 0.01, 40.0].into_iter().enumerate() {
        let x = Tensor::randn([4, 1, 8, 8], (Kind::Float, dev)) * (1.0 + i as f64);
        let g = net.denoise(&x, s).unwrap();
        let e = eager(&x, s);
        let diff = (g - e).abs().max().double_value(&[]);
        assert!(diff < 1e-4, "sigma {s}: graph vs eager {diff}");
    }
}

#[test]
fn exact_denoisers_with_sigma_as_a_tensor_and_through_cuda_graphs() {
    // The graph entry point (sigma^2 as a tensor) is the same arithmetic as the plain call; on
    // CUDA the exact denoisers replay captured graphs, which must equal eager calls.
    use scoreflow::model::{self, DenoiseSigma2};
    // It draws from libtorch's generator (training tests beside it reseed it) and captures
    // graphs on CUDA.
    let _turn = train::exclusive_rng();
    let _cuda = cuda_turn();
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let gauss = format!(
        "gaussian:{}",
        root.join("experiments/gauss2.json").display()
    );
    let mut devices = vec![Device::Cpu];
    if tch::Cuda::is_available() {
        devices.push(Device::Cuda(0));
    } else {
        println!("CUDA part skipped: no CUDA device on this machine");
    }
    for dev in devices {
        for spec in ["builtin:gmm8", gauss.as_str()] {
            let m = model::parse(spec, dev).unwrap();
            let inner: &dyn DenoiseSigma2 = match &m {
                model::ExactModel::Mixture(g) => &**g,
                model::ExactModel::Gaussian(g) => &**g,
            };
            for kind in [Kind::Float, Kind::Double] {
                for n in [5, 64] {
                    for s in [80.0, 1.3, 0.002] {
                        let x = Tensor::randn([n, 2], (kind, dev)) * (1.0 + s);
                        let eager = inner.denoise(&x, s).unwrap();
                        let s2 = Tensor::full([], s * s, (kind, dev));
                        let at = inner.denoise_sigma2(&x, &s2).unwrap();
                        let graphed = m.denoiser().denoise(&x, s).unwrap();
                        for (what, y) in [("sigma^2 tensor", at), ("graphed", graphed)] {
                            let diff = (y - &eager).abs().max().double_value(&[]);
                            // Same kernels, same inputs: equal up to rounding (bitwise on the CPU).
                            let tol = if kind == Kind::Float { 1e-6 } else { 1e-12 };
                            let scale = 1.0 + eager.abs().max().double_value(&[]);
                            assert!(
                                diff <= tol * scale,
                                "{spec} {dev:?} {kind:?} n {n} sigma {s}: {what} differs by {diff}"
                            );
                        }
                    }
                }
            }
            // Differentiating through the denoiser (the likelihood's divergence) still works.
            let x = Tensor::randn([4, 2], (Kind::Double, dev)).set_requires_grad(true);
            let y = m.denoiser().denoise(&x, 0.7).unwrap();
            let g = Tensor::run_backward(&[y.sum(Kind::Double)], &[&x], false, false);
            assert_eq!(g[0].size(), vec![4, 2]);
            // Bad shapes are still errors, not capture failures.
            let bad = Tensor::zeros([3, 5], (Kind::Float, dev));
            assert!(m.denoiser().denoise(&bad, 1.0).is_err());
        }
    }
}

#[test]
fn the_brownian_tree_on_cuda_equals_the_host_tree() {
    // On CUDA the tree's normals are generated on the device (int64 tensor ops); on the CPU in
    // Rust. Same keys, same walk: the same increments up to the last place of log and cos.
    use scoreflow::solvers::noise::{BrownianNoise, NoiseSource, STREAM_STEP};
    let _cuda = cuda_turn();
    if !tch::Cuda::is_available() {
        println!(
            "skipped: no CUDA device on this machine (the same test runs where one is present)"
        );
        return;
    }
    let (n, shape) = (300, [3i64, 5, 7]);
    let mut host = BrownianNoise::new(5, 0, n, &shape, 80.0, Device::Cpu, Kind::Double);
    let mut dev = BrownianNoise::new(5, 0, n, &shape, 80.0, Device::Cuda(0), Kind::Double);
    for (a, b) in [(80.0, 61.3), (61.3, 0.37), (0.37, 0.002), (-0.5, 0.002)] {
        let h = host.increment(STREAM_STEP, a, b).unwrap();
        let d = dev
            .increment(STREAM_STEP, a, b)
            .unwrap()
            .to_device(Device::Cpu);
        let err = (h - d).abs().max().double_value(&[]);
        assert!(err < 1e-12, "interval [{a}, {b}]: max difference {err}");
    }
}

#[test]
fn digits_load_as_labelled_images() {
    let d = data::load(&DataConfig::Digits { path: None }, 0).unwrap();
    assert_eq!(d.x.size(), vec![1797, 1, 8, 8]);
    assert_eq!(d.num_classes, 10);
    assert!(d.x.min().double_value(&[]) >= -1.0 && d.x.max().double_value(&[]) <= 1.0);
    let counts = d.labels.unwrap().bincount(None::<Tensor>, 10);
    assert!(Vec::<i64>::try_from(&counts)
        .unwrap()
        .iter()
        .all(|&c| c > 150));
    let bad = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(bad.path(), b"not gzip").unwrap();
    assert!(data::read_digits(bad.path()).is_err());
}

#[test]
fn frechet_distance_of_known_gaussians() {
    // N(0, I) vs N(mu, 4 I) in 3-D: |mu|^2 + Tr(I + 4I - 2 * 2I) = |mu|^2 + 3.
    let _turn = train::exclusive_rng();
    let n = 200_000;
    let a = Tensor::randn([n, 3], (Kind::Double, Device::Cpu));
    let mu = Tensor::from_slice(&[1.0, -2.0, 0.5]).view([1, 3]);
    let b = Tensor::randn([n, 3], (Kind::Double, Device::Cpu)) * 2.0 + &mu;
    let fd = scoreflow::fid::frechet(&a, &b);
    assert!((fd - (5.25 + 3.0)).abs() < 0.1, "{fd}");
    assert!(scoreflow::fid::frechet(&a, &a).abs() < 1e-8);
}

fn conditional_moons(out: &Path) -> TrainConfig {
    let text = format!(
        r#"
seed = 3
device = "cpu"
out_dir = "{}"
[data]
kind = "moons"
num = 2000
[model]
conditional = true
[model.backbone]
kind = "mlp"
hidden = 64
depth = 2
[train]
steps = 30
batch = 128
checkpoint_every = 30
log_every = 10
"#,
        out.display()
    );
    TrainConfig::from_toml(&text, Path::new("moons.toml")).unwrap()
}

#[test]
fn class_conditional_models_sample_with_guidance() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = conditional_moons(dir.path());
    let report = train::run(
        &cfg,
        &RunOpts {
            quiet: true,
            ..Default::default()
        },
    )
    .unwrap();
    let (m, _) = train::load_for_sampling(&report.checkpoint, Device::Cpu).unwrap();
    assert_eq!(m.net.num_classes, 2);
    let x = Tensor::randn([5, 2], (Kind::Float, Device::Cpu));
    // w = 1 is the conditional model, w = 0 the unconditional one.
    let cond = tch::no_grad(|| {
        m.net.forward(
            &x,
            &Tensor::full([5], 0.8, (Kind::Float, Device::Cpu)),
            Some(&Tensor::zeros([5], (Kind::Int64, Device::Cpu))),
        )
    });
    let guided = |guidance: f64, interval: Option<(f64, f64)>| {
        Guided {
            net: &m.net,
            class: Classes::One(0),
            guidance,
            interval,
        }
        .denoise(&x, 0.8)
        .unwrap()
    };
    let g1 = guided(1.0, None);
    let g0 = guided(0.0, None);
    assert!((&g1 - &cond).abs().max().double_value(&[]) < 1e-5);
    // A guidance interval (lo, hi]: inside it the guided model, outside the conditional one.
    let g3 = guided(3.0, None);
    let inside = guided(3.0, Some((0.5, 0.8)));
    let outside = guided(3.0, Some((0.8, 2.0)));
    assert!((&inside - &g3).abs().max().double_value(&[]) < 1e-6);
    assert!((&outside - &cond).abs().max().double_value(&[]) < 1e-5);
    assert!((&g3 - &cond).abs().max().double_value(&[]) > 1e-3);
    assert!(
        (g0 - m.net.denoise(&x, 0.8).unwrap())
            .abs()
            .max()
            .double_value(&[])
            < 1e-5
    );
    // CFG++'s pair: the guided D and the unconditional branch, both run even at w = 1; outside
    // the interval the conditional branch alone and no unconditional estimate.
    let uncond = m.net.denoise(&x, 0.8).unwrap();
    for w in [1.0, 3.0] {
        let (d, u) = Guided {
            net: &m.net,
            class: Classes::One(0),
            guidance: w,
            interval: None,
        }
        .denoise_guided(&x, 0.8)
        .unwrap();
        let u = u.expect("both branches");
        assert!((&u - &uncond).abs().max().double_value(&[]) < 1e-5);
        assert!((&d - guided(w, None)).abs().max().double_value(&[]) < 1e-6);
    }
    let (d, u) = Guided {
        net: &m.net,
        class: Classes::One(0),
        guidance: 3.0,
        interval: Some((0.8, 2.0)),
    }
    .denoise_guided(&x, 0.8)
    .unwrap();
    assert!(u.is_none());
    assert!((&d - &cond).abs().max().double_value(&[]) < 1e-5);

    let bin = env!("CARGO_BIN_EXE_scoreflow");
    let out = dir.path().join("s.npy");
    let ck = report.checkpoint.to_str().unwrap();
    let run = |extra: &[&str]| {
        let mut args = vec![
            "sample",
            "--checkpoint",
            ck,
            "--solver",
            "heun",
            "--steps",
            "6",
            "--num",
            "8",
            "--device",
            "cpu",
            "--out",
            out.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        std::process::Command::new(bin)
            .args(&args)
            .output()
            .unwrap()
    };
    assert!(run(&["--class", "1", "--guidance", "2"]).status.success());
    let bad = run(&["--class", "5"]);
    assert_eq!(bad.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("classes 0..1"));
    let bad = run(&["--guidance", "2"]);
    assert_eq!(bad.status.code(), Some(2));
    // --guidance-interval: a run, and bad intervals as one-line errors with no output.
    assert!(run(&[
        "--class",
        "1",
        "--guidance",
        "2",
        "--guidance-interval",
        "0.3,5"
    ])
    .status
    .success());
    let _ = std::fs::remove_file(&out);
    for bad in ["5,0.3", "0.3", "a,b", "-1,2", "0.3,inf"] {
        let o = run(&[
            "--class",
            "1",
            "--guidance",
            "2",
            "--guidance-interval",
            bad,
        ]);
        assert_eq!(o.status.code(), Some(2), "{bad}");
        assert!(
            String::from_utf8_lossy(&o.stderr).contains("--guidance-interval"),
            "{bad}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        assert!(!out.exists(), "{bad}");
    }
    let o = run(&["--guidance-interval", "0.3,5"]);
    assert_eq!(o.status.code(), Some(2));
}

#[test]
fn sliced_score_matching_trains() {
    let dir = tempfile::tempdir().unwrap();
    let text = format!(
        r#"
out_dir = "{}"
device = "cpu"
[data]
kind = "gmm8"
num = 5000
[model.precond]
kind = "edm"
sigma_data = 1.4
[model.backbone]
kind = "mlp"
hidden = 64
depth = 2
[loss]
kind = "sliced-score"
[train]
steps = 300
batch = 256
lr = 2e-3
checkpoint_every = 300
log_every = 50
"#,
        dir.path().display()
    );
    let cfg = TrainConfig::from_toml(&text, Path::new("ssm.toml")).unwrap();
    let r = train::run(
        &cfg,
        &RunOpts {
            quiet: true,
            ..Default::default()
        },
    )
    .unwrap();
    let mean = |s: &[(usize, f64)]| s.iter().map(|l| l.1).sum::<f64>() / s.len() as f64;
    let (first, last) = (mean(&r.losses[..30]), mean(&r.losses[270..]));
    assert!(
        last < first - 0.1,
        "sliced score matching did not learn: {first} -> {last}"
    );
}

#[test]
fn npy_image_data_with_labels_and_shape_errors() {
    let dir = tempfile::tempdir().unwrap();
    let x = dir.path().join("x.npy");
    let l = dir.path().join("l.npy");
    let l_short = dir.path().join("l_short.npy");
    {
        // (Not while load_for_sampling below takes the generator in its turn.)
        let _turn = train::exclusive_rng();
        (Tensor::rand([64, 1, 4, 4], (Kind::Float, Device::Cpu)) * 2.0 - 1.0)
            .write_npy(&x)
            .unwrap();
    }
    Tensor::arange(64, (Kind::Int64, Device::Cpu))
        .remainder(4)
        .write_npy(&l)
        .unwrap();
    Tensor::zeros([10], (Kind::Int64, Device::Cpu))
        .write_npy(&l_short)
        .unwrap();
    let cfg = |backbone: &str, labels: &std::path::Path, conditional: bool| -> String {
        let p = dir.path().join(format!("c{}.toml", rand_name()));
        std::fs::write(
            &p,
            format!(
                "out_dir = \"{}\"\ndevice = \"cpu\"\n[data]\nkind = \"npy\"\npath = \"{}\"\nlabels = \"{}\"\n[model]\nconditional = {conditional}\n[model.backbone]\n{backbone}\n[train]\nsteps = 3\nbatch = 8\ncheckpoint_every = 3\nlog_every = 3\n",
                dir.path().join("run").display(),
                x.display(),
                labels.display()
            ),
        )
        .unwrap();
        p.to_str().unwrap().to_string()
    };
    let bin = env!("CARGO_BIN_EXE_scoreflow");
    let run = |c: &str| {
        std::process::Command::new(bin)
            .args(["train", c])
            .output()
            .unwrap()
    };
    let unet =
        "kind = \"unet\"\nchannels = 8\nchannel_mult = [1, 2]\nblocks = 1\nattn_resolutions = [2]";
    let ok = run(&cfg(unet, &l, true));
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    let (m, _) =
        train::load_for_sampling(&dir.path().join("run/checkpoint.safetensors"), Device::Cpu)
            .unwrap();
    assert_eq!((m.net.shape.clone(), m.net.num_classes), (vec![1, 4, 4], 4));
    for (c, needle) in [
        (
            cfg("kind = \"mlp\"", &l, false),
            "mlp backbone needs vector data",
        ),
        (cfg(unet, &l_short, true), "10 labels for 64 samples"),
        (
            cfg(
                "kind = \"unet\"\nchannels = 8\nchannel_mult = [1, 2, 2, 2]",
                &l,
                false,
            ),
            "divisible",
        ),
        (
            cfg(
                "kind = \"unet\"\nchannels = 8\nchannel_mult = [1, 2]\nattn_resolutions = [8, 2]",
                &l,
                false,
            ),
            "8 is no level of this U-Net; for 4x4 images and 2 levels the levels' heights are [4, 2]",
        ),
    ] {
        let o = run(&c);
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{err}");
        assert!(err.contains(needle), "expected '{needle}' in {err}");
    }
}

fn rand_name() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}
