//! The `scoreflow` command as a user runs it: outputs, the JSON line, and bad input answered
//! with a one-line error, exit code 2 and no output file.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_scoreflow"))
}

fn repo(p: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(p)
}

fn run(args: &[&str]) -> Output {
    bin().args(args).output().expect("run scoreflow")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// True, with the reason printed, where a CUDA test has no device to run on.
fn no_cuda() -> bool {
    let none = !tch::Cuda::is_available();
    if none {
        println!(
            "skipped: no CUDA device on this machine (the same test runs where one is present)"
        );
    }
    none
}

/// Write a float .npy with a valid header and `values` (f64 `<f8` or f32 `<f4`).
fn write_npy(path: &Path, shape: &[usize], values: &[f64], f32: bool) {
    let shape_s = match shape.len() {
        1 => format!("({},)", shape[0]),
        _ => format!(
            "({})",
            shape
                .iter()
                .map(|d| d.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    };
    let descr = if f32 { "<f4" } else { "<f8" };
    let mut header =
        format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape_s}, }}");
    while (10 + header.len() + 1) % 64 != 0 {
        header.push(' ');
    }
    header.push('\n');
    let mut bytes = b"\x93NUMPY\x01\x00".to_vec();
    bytes.extend_from_slice(&(header.len() as u16).to_le_bytes());
    bytes.extend_from_slice(header.as_bytes());
    for v in values {
        if f32 {
            bytes.extend_from_slice(&(*v as f32).to_le_bytes());
        } else {
            bytes.extend_from_slice(&v.to_le_bytes());
        }
    }
    std::fs::write(path, bytes).unwrap();
}

fn read_f32_npy(path: &Path) -> (Vec<usize>, Vec<f32>) {
    let bytes = std::fs::read(path).unwrap();
    let npy = npyz::NpyFile::new(&bytes[..]).unwrap();
    assert_eq!(npy.dtype().descr().trim_matches('\''), "<f4");
    let shape = npy.shape().iter().map(|&d| d as usize).collect();
    (shape, npy.into_vec::<f32>().unwrap())
}

/// `scoreflow sample` on the builtin 8-mode mixture on the CPU into `out`, with `flags` added;
/// the samples (the run must succeed).
fn gmm8_samples(out: &Path, solver: &str, steps: &str, num: &str, flags: &[&str]) -> Vec<f32> {
    let o = run(&[
        &[
            "sample",
            "--denoiser",
            "builtin:gmm8",
            "--solver",
            solver,
            "--steps",
            steps,
            "--num",
            num,
            "--device",
            "cpu",
            "--out",
            out.to_str().unwrap(),
        ][..],
        flags,
    ]
    .concat());
    assert!(o.status.success(), "{solver} {flags:?}: {}", stderr(&o));
    read_f32_npy(out).1
}

/// `sample` of 8 points of builtin:gmm8 in `steps` steps with `extra` flags fails as
/// [`assert_bad`] asks.
fn assert_bad_sample(extra: &[&str], steps: &str, needle: &str, out: &Path) {
    let mut args = vec![
        "sample",
        "--denoiser",
        "builtin:gmm8",
        "--num",
        "8",
        "--steps",
        steps,
        "--device",
        "cpu",
        "--out",
        out.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    assert_bad(&args, needle, out);
}

/// `sample` of `num` points of builtin:gmm8 in `steps` steps on the CPU with `extra` flags,
/// which must succeed: (the NFE it reports, the bytes of the output file).
fn sample_gmm8(extra: &[&str], num: &str, steps: &str, out: &Path) -> (u64, Vec<u8>) {
    let mut args = vec![
        "sample",
        "--denoiser",
        "builtin:gmm8",
        "--num",
        num,
        "--steps",
        steps,
        "--device",
        "cpu",
        "--out",
        out.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    let o = run(&args);
    assert!(o.status.success(), "{args:?}: {}", stderr(&o));
    let line: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    (line["nfe"].as_u64().unwrap(), std::fs::read(out).unwrap())
}

fn assert_bad(args: &[&str], needle: &str, out: &Path) {
    let o = run(args);
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(2), "args {args:?}: stderr {err}");
    assert!(
        err.to_lowercase().contains(&needle.to_lowercase()),
        "args {args:?}: expected '{needle}' in: {err}"
    );
    assert!(!err.contains("panicked"), "{err}");
    // One line, apart from clap's own usage errors (which end with a pointer to --help) and
    // the notes before it.
    if !err.contains("For more information, try '--help'") {
        let lines = err.trim_end().lines().filter(|l| !l.starts_with("note: "));
        assert_eq!(lines.count(), 1, "args {args:?}: {err}");
    }
    assert!(!out.exists(), "args {args:?} left an output file");
    let leftovers: Vec<_> = std::fs::read_dir(out.parent().unwrap())
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().contains("partial"))
        .collect();
    assert!(leftovers.is_empty(), "temporary files left: {leftovers:?}");
}

#[test]
fn sample_writes_float32_samples_and_a_json_line() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("x.npy");
    let gmm = repo("experiments/gmm8.json");
    let o = run(&[
        "sample",
        "--denoiser",
        &format!("gmm:{}", gmm.display()),
        "--solver",
        "heun",
        "--steps",
        "18",
        "--num",
        "300",
        "--seed",
        "3",
        "--device",
        "cpu",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let line: serde_json::Value = serde_json::from_slice(&o.stdout).expect("one JSON line");
    assert_eq!(line["solver"], "heun");
    assert_eq!(line["steps"], 18);
    assert_eq!(line["nfe"], 35);
    assert_eq!(line["device"], "cpu");
    assert!(line["seconds"].as_f64().unwrap() >= 0.0);
    let (shape, x) = read_f32_npy(&out);
    assert_eq!(shape, vec![300, 2]);
    // Every sample lands near the ring of radius 2 where the mixture lives.
    for p in x.chunks(2) {
        let r = (p[0] * p[0] + p[1] * p[1]).sqrt();
        assert!((r - 2.0).abs() < 1.2, "sample {p:?} off the ring");
    }
}

#[test]
fn noise_files_in_float32_and_float64_give_the_same_samples() {
    let dir = tempfile::tempdir().unwrap();
    let z: Vec<f64> = (0..40).map(|i| ((i as f64) * 0.37).sin() * 1.3).collect();
    let (n32, n64) = (dir.path().join("z32.npy"), dir.path().join("z64.npy"));
    write_npy(&n32, &[20, 2], &z, true);
    write_npy(&n64, &[20, 2], &z, false);
    let g = format!("gaussian:{}", repo("experiments/gauss2.json").display());
    let mut outs = Vec::new();
    for (i, noise) in [&n32, &n64].iter().enumerate() {
        let out = dir.path().join(format!("o{i}.npy"));
        let o = run(&[
            "sample",
            "--denoiser",
            &g,
            "--solver",
            "dpmpp-2m",
            "--steps",
            "12",
            "--noise",
            noise.to_str().unwrap(),
            "--sde",
            "vp",
            "--device",
            "cpu",
            "--dtype",
            "float64",
            "--out",
            out.to_str().unwrap(),
        ]);
        assert!(o.status.success(), "{}", stderr(&o));
        outs.push(read_f32_npy(&out).1);
    }
    let diff = outs[0]
        .iter()
        .zip(&outs[1])
        .map(|(a, b)| (a - b).abs())
        .fold(0.0f32, f32::max);
    assert!(diff < 1e-5, "float32 vs float64 noise: {diff}");
}

#[test]
fn every_dpm_adaptive_and_rk45_flag_reaches_the_sampler() {
    // Each flag changes the samples (the controller's flags through the steps they choose).
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("a.npy");
    let samples = |flags: &[&str]| gmm8_samples(&out, "dpm-adaptive", "2", "64", flags);
    let default = samples(&[]);
    for flags in [
        &["--order", "2"][..],
        &["--rtol", "0.005"],
        &["--rtol", "0", "--atol", "0.0005"],
        &["--h-init", "1.0"],
        &["--pcoeff", "0.3"],
        &["--icoeff", "0.5"],
        &["--dcoeff", "0.3"],
        &["--accept-safety", "0.99"],
        &["--eta", "0.5"],
    ] {
        assert_ne!(
            samples(flags),
            default,
            "{flags:?} left the samples unchanged"
        );
    }
    // rk45's two tolerances too.
    let samples = |flags: &[&str]| gmm8_samples(&out, "rk45", "2", "64", flags);
    let default = samples(&[]);
    for flags in [&["--rtol", "0.001"][..], &["--atol", "0.001"]] {
        assert_ne!(
            samples(flags),
            default,
            "rk45 {flags:?} left the samples unchanged"
        );
    }
}

#[test]
fn churn_flags_reach_euler_heun_and_dpm2_and_the_other_samplers_flags_reach_theirs() {
    // k-diffusion's sample_euler, sample_heun and sample_dpm_2 take EDM's churn: each flag
    // changes the samples, and heun with churn is edm-stochastic with it. dpmpp-sde's --r moves
    // its intermediate level.
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("c.npy");
    let samples = |solver: &str, flags: &[&str]| gmm8_samples(&out, solver, "8", "32", flags);
    let churn = ["--s-churn", "10"];
    for solver in ["euler", "heun", "dpm2"] {
        let plain = samples(solver, &[]);
        let with = samples(solver, &churn);
        assert_ne!(
            with, plain,
            "{solver}: --s-churn left the samples unchanged"
        );
        for extra in [["--s-noise", "0.9"], ["--s-tmin", "1"], ["--s-tmax", "1"]] {
            let flags = [&churn[..], &extra[..]].concat();
            assert_ne!(samples(solver, &flags), with, "{solver} {extra:?}");
        }
    }
    assert_eq!(samples("heun", &churn), samples("edm-stochastic", &churn));
    assert_ne!(
        samples("dpmpp-sde", &["--r", "0.3"]),
        samples("dpmpp-sde", &[])
    );
    assert_eq!(
        samples("dpmpp-sde", &["--r", "0.5"]),
        samples("dpmpp-sde", &[])
    );
    // pndm's --skip-prk-steps (PLMS) changes the samples and the count: 8 + 9 against 8 + 1.
    let nfe = |flags: &[&str]| -> u64 {
        let o = run(&[
            &[
                "sample",
                "--denoiser",
                "builtin:gmm8",
                "--solver",
                "pndm",
                "--steps",
                "8",
            ][..],
            &[
                "--num",
                "4",
                "--device",
                "cpu",
                "--out",
                out.to_str().unwrap(),
            ],
            flags,
        ]
        .concat());
        assert!(o.status.success(), "{}", stderr(&o));
        serde_json::from_slice::<serde_json::Value>(&o.stdout).unwrap()["nfe"]
            .as_u64()
            .unwrap()
    };
    assert_eq!(nfe(&[]), 17);
    // dpm-singlestep's --algorithm-type and --solver-type reach it (both matter at order 2).
    let ss = samples("dpm-singlestep", &[]);
    assert_ne!(
        samples("dpm-singlestep", &["--algorithm-type", "dpmsolver"]),
        ss
    );
    assert_ne!(samples("dpm-singlestep", &["--solver-type", "heun"]), ss);
    assert_ne!(samples("dpm-singlestep", &["--order", "3"]), ss);
    // dpm-multistep's four flags reach it (8 steps: the lower-order final steps matter).
    let ms = samples("dpm-multistep", &[]);
    assert_ne!(
        samples("dpm-multistep", &["--algorithm-type", "dpmsolver"]),
        ms
    );
    assert_ne!(samples("dpm-multistep", &["--solver-type", "heun"]), ms);
    let ms3 = samples("dpm-multistep", &["--order", "3"]);
    assert_ne!(ms3, ms);
    assert_ne!(
        samples(
            "dpm-multistep",
            &["--order", "3", "--lower-order-final", "false"]
        ),
        ms3
    );
    assert_eq!(nfe(&["--skip-prk-steps", "true"]), 9);
    assert_ne!(
        samples("pndm", &["--skip-prk-steps", "true"]),
        samples("pndm", &[])
    );
    // edm-ablation: at the defaults heun (edm-stochastic with churn, euler with --solver-type
    // euler), up to float32 rounding (its step is written in the general form); each of its
    // own flags changes the samples.
    let close = |a: Vec<f32>, b: Vec<f32>, what: &str| {
        let d = a
            .iter()
            .zip(&b)
            .map(|(x, y)| (x - y).abs())
            .fold(0f32, f32::max);
        assert!(a.len() == b.len() && d < 1e-5, "{what}: {d}");
    };
    close(samples("edm-ablation", &[]), samples("heun", &[]), "heun");
    close(
        samples("edm-ablation", &churn),
        samples("edm-stochastic", &churn),
        "edm-stochastic",
    );
    close(
        samples("edm-ablation", &["--solver-type", "euler"]),
        samples("euler", &[]),
        "euler",
    );
    // --solver also takes the label form, with flags on top.
    close(
        samples("edm-ablation(solver_type=euler)", &[]),
        samples("euler", &[]),
        "label form",
    );
    assert_eq!(
        samples("heun(churn=10)", &["--s-noise", "0.9"]),
        samples("heun", &["--s-churn", "10", "--s-noise", "0.9"])
    );
    let ab = samples("edm-ablation", &[]);
    for flags in [
        &["--alpha", "0.5"][..],
        &["--schedule", "vp"],
        &["--schedule", "ve"],
        &["--scaling", "vp"],
    ] {
        assert_ne!(samples("edm-ablation", flags), ab, "edm-ablation {flags:?}");
    }
    assert_ne!(
        samples("edm-ablation", &["--schedule", "vp", "--epsilon-s", "0.01"]),
        samples("edm-ablation", &["--schedule", "vp"])
    );
}

#[test]
fn stochastic_samples_do_not_depend_on_the_batch() {
    let dir = tempfile::tempdir().unwrap();
    let g = "builtin:gmm8";
    let mut outs = Vec::new();
    for num in ["5", "40"] {
        let out = dir.path().join(format!("a{num}.npy"));
        let o = run(&[
            "sample",
            "--denoiser",
            g,
            "--solver",
            "euler-ancestral",
            "--steps",
            "20",
            "--num",
            num,
            "--seed",
            "11",
            "--device",
            "cpu",
            "--out",
            out.to_str().unwrap(),
        ]);
        assert!(o.status.success(), "{}", stderr(&o));
        outs.push(read_f32_npy(&out).1);
    }
    assert_eq!(&outs[0][..], &outs[1][..10]);
}

#[test]
fn bad_input_is_a_one_line_error_with_exit_code_2_and_no_output() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.npy");
    let o = out.to_str().unwrap();
    let d = dir.path();
    let base = |extra: &[&str]| -> Vec<String> {
        let mut v: Vec<String> = ["sample", "--device", "cpu", "--out", o]
            .iter()
            .map(|s| s.to_string())
            .collect();
        v.extend(extra.iter().map(|s| s.to_string()));
        v
    };
    let check = |extra: &[&str], needle: &str| {
        let args = base(extra);
        let refs: Vec<&str> = args.iter().map(|s| s.as_str()).collect();
        assert_bad(&refs, needle, &out);
    };
    let good = ["--denoiser", "builtin:gmm8", "--num", "4"];
    check(
        &[&good[..], &["--solver", "nope", "--steps", "4"]].concat(),
        "unknown sampler",
    );
    // A noise scale so large that the step overflows: the error names the sampler's parameters.
    check(
        &[
            &good[..],
            &["--solver", "ddim", "--steps", "4", "--eta", "1e308"],
        ]
        .concat(),
        "sampler ddim with eta = 1e+308",
    );
    check(
        &[
            &good[..],
            &["--solver", "edm-stochastic", "--steps", "4"],
            &["--s-churn", "1", "--s-noise", "1e39"],
        ]
        .concat(),
        "s_noise = 1e+39",
    );
    // Huge numbers are written in exponent form, not in 301 digits.
    check(
        &[
            &good[..],
            &["--solver", "euler", "--steps", "4"],
            &["--sigma-min", "1e300", "--sigma-max", "1e200"],
        ]
        .concat(),
        "sigma_min (1e300) must be positive and smaller than sigma_max (1e200)",
    );
    // edm's iddpm discretization is a fixed set of levels: more steps than it has in the range
    // is an error.
    check(
        &[
            &good[..],
            &["--solver", "euler", "--steps", "500", "--grid", "iddpm"],
            &["--sigma-max", "1"],
        ]
        .concat(),
        "has 496 levels in [0.002, 1]: at most 496 steps",
    );
    // Mistyped counts are errors, not allocation failures.
    check(
        &[&good[..], &["--solver", "euler", "--steps", "99999999999"]].concat(),
        "the most a grid may have",
    );
    check(
        &[
            "--denoiser",
            "builtin:gmm8",
            "--num",
            "99999999999",
            "--solver",
            "euler",
            "--steps",
            "4",
        ],
        "draw fewer at a time",
    );
    check(
        &[
            &good[..],
            &["--solver", "edm-stochastic", "--steps", "4", "--s-tmax=-1"],
        ]
        .concat(),
        "s_tmax = -1",
    );
    check(
        &[&good[..], &["--solver", "heun", "--steps", "0"]].concat(),
        "steps",
    );
    check(
        &[
            &good[..],
            &[
                "--solver",
                "heun",
                "--steps",
                "4",
                "--sigma-min",
                "80",
                "--sigma-max",
                "1",
            ],
        ]
        .concat(),
        "sigma_min",
    );
    check(
        &[
            &good[..],
            &[
                "--solver",
                "heun",
                "--steps",
                "4",
                "--sigma-min",
                "5",
                "--sigma-max",
                "5",
            ],
        ]
        .concat(),
        "sigma_min",
    );
    check(
        &[
            &good[..],
            &["--solver", "heun", "--steps", "4", "--eta", "0.5"],
        ]
        .concat(),
        "--eta does not apply",
    );
    check(
        &[
            &good[..],
            &["--solver", "heun", "--steps", "4", "--solver-type", "heun"],
        ]
        .concat(),
        "--solver-type does not apply",
    );
    check(
        &[
            &good[..],
            &[
                "--solver",
                "dpmpp-2m-sde",
                "--steps",
                "4",
                "--solver-type",
                "trapezoid",
            ],
        ]
        .concat(),
        "unknown solver type 'trapezoid'",
    );
    check(
        &[
            &good[..],
            &["--solver", "dpmpp-3m-sde", "--steps", "4", "--eta=-1"],
        ]
        .concat(),
        "eta",
    );
    for (flags, want) in [
        (
            &["--solver-type", "midpoint"][..],
            "unknown UniPC solver type 'midpoint'",
        ),
        (&["--order", "5"][..], "order"),
        (&["--corrector", "maybe"][..], "--corrector"),
    ] {
        check(
            &[&good[..], &["--solver", "unipc", "--steps", "4"], flags].concat(),
            want,
        );
    }
    check(
        &[
            &good[..],
            &["--solver", "heun", "--steps", "4", "--corrector", "false"],
        ]
        .concat(),
        "--corrector does not apply",
    );
    // dpm-solver, dpm-adaptive and rk45: orders, tolerances, controller parameters, foreign
    // flags.
    for (solver, flags, want) in [
        ("dpm-solver", &["--order", "4"][..], "must be 1 to 3"),
        (
            "dpm-solver",
            &["--rtol", "0.1"][..],
            "--rtol does not apply",
        ),
        ("dpm-adaptive", &["--order", "1"][..], "must be 2 to 3"),
        ("dpm-adaptive", &["--atol", "0"][..], "atol"),
        ("dpm-adaptive", &["--rtol=-0.1"][..], "rtol"),
        ("dpm-adaptive", &["--h-init", "0"][..], "h_init"),
        (
            "dpm-adaptive",
            &["--accept-safety", "0"][..],
            "accept_safety",
        ),
        ("dpm-adaptive", &["--pcoeff", "inf"][..], "pcoeff"),
        (
            "dpm-adaptive",
            &["--pcoeff=1e308"][..],
            "use smaller controller coefficients",
        ),
        (
            "dpm-adaptive",
            &["--rtol", "0", "--atol", "1e-30"][..],
            "gave up",
        ),
        ("rk45", &["--rtol", "1e-15"][..], "scipy's floor"),
        ("edm-ablation", &["--alpha", "1.5"][..], "alpha"),
        (
            "edm-ablation",
            &["--schedule", "cosine"][..],
            "unknown schedule 'cosine'",
        ),
        (
            "edm-ablation",
            &["--scaling", "ve"][..],
            "unknown scaling 've'",
        ),
        (
            "edm-ablation",
            &["--solver-type", "midpoint"][..],
            "unknown solver type",
        ),
        ("edm-ablation", &["--epsilon-s", "0"][..], "epsilon_s"),
        (
            "heun",
            &["--schedule", "vp"][..],
            "--schedule does not apply",
        ),
        ("rk45", &["--atol=-1"][..], "atol"),
        ("rk45", &["--h-init", "0.1"][..], "--h-init does not apply"),
        ("euler", &["--h-init", "0.1"][..], "--h-init does not apply"),
        ("euler", &["--s-churn=-1"][..], "s_churn"),
        ("dpm2", &["--s-tmin", "2", "--s-tmax", "1"][..], "s_tmin"),
        ("heun", &["--s-noise", "nan"][..], "s_noise"),
        (
            "euler-ancestral",
            &["--s-churn", "1"][..],
            "--s-churn does not apply",
        ),
        ("dpmpp-sde", &["--r", "0"][..], "r = 0"),
        ("dpmpp-sde", &["--r", "1.5"][..], "r = 1.5"),
        ("heun", &["--r", "0.3"][..], "--r does not apply"),
    ] {
        check(
            &[&good[..], &["--solver", solver, "--steps", "2"], flags].concat(),
            want,
        );
    }
    check(
        &[
            &good[..],
            &["--solver", "heun", "--steps", "4", "--sde", "nope"],
        ]
        .concat(),
        "unknown SDE",
    );
    let args = [
        "sample",
        "--denoiser",
        "builtin:gmm8",
        "--num",
        "4",
        "--solver",
        "heun",
        "--steps",
        "4",
        "--device",
        "quantum",
        "--out",
        o,
    ];
    assert_bad(&args, "unknown device", &out);
    check(
        &[&good[..], &["--solver", "heun", "--steps", "4", "--bogus"]].concat(),
        "unexpected argument",
    );

    // Noise files: wrong shape, wrong dtype, truncated, garbage, missing, NaN.
    let wrong = d.join("wrong.npy");
    write_npy(&wrong, &[4, 3], &[0.0; 12], false);
    let flat = d.join("flat.npy");
    write_npy(&flat, &[8], &[0.0; 8], false);
    let trunc = d.join("trunc.npy");
    write_npy(&trunc, &[4, 2], &[0.0; 8], false);
    let bytes = std::fs::read(&trunc).unwrap();
    std::fs::write(&trunc, &bytes[..bytes.len() - 5]).unwrap();
    // More data than the header's shape: a wrong header, not a shorter array.
    let long = d.join("long.npy");
    write_npy(&long, &[4, 2], &[0.0; 8], false);
    let mut bytes = std::fs::read(&long).unwrap();
    bytes.extend_from_slice(&[0u8; 64]);
    std::fs::write(&long, bytes).unwrap();
    // A header whose dictionary does not parse: the parser's caret drawing becomes one line.
    let header = d.join("header.npy");
    write_npy(&header, &[4, 2], &[0.0; 8], true);
    let bytes = std::fs::read(&header).unwrap();
    let text = String::from_utf8_lossy(&bytes[10..20]).replace("'descr'", "descr: ");
    let mut bad_header = bytes.clone();
    bad_header[10..20].copy_from_slice(&text.as_bytes()[..10]);
    std::fs::write(&header, bad_header).unwrap();
    let garbage = d.join("garbage.npy");
    std::fs::write(&garbage, b"this is not numpy").unwrap();
    let nan = d.join("nan.npy");
    write_npy(&nan, &[2, 2], &[0.0, f64::NAN, 1.0, 2.0], false);
    let s = |p: &Path| p.to_str().unwrap().to_string();
    for (file, needle) in [
        (s(&wrong), "shape"),
        (s(&flat), "shape"),
        (s(&trunc), "corrupt"),
        (s(&long), "its header (shape [4, 2]) describes"),
        (s(&garbage), "not a valid .npy"),
        (s(&header), "could not parse"),
        (s(&d.join("missing.npy")), "cannot read"),
        (s(&nan), "nan"),
    ] {
        check(
            &[
                "--denoiser",
                "builtin:gmm8",
                "--solver",
                "euler",
                "--steps",
                "4",
                "--noise",
                &file,
            ],
            needle,
        );
    }

    // Mixture files: weights not summing to 1, shapes that disagree, unknown keys, bad JSON.
    let write = |name: &str, text: &str| {
        let p = d.join(name);
        std::fs::write(&p, text).unwrap();
        format!("gmm:{}", p.display())
    };
    for (text, needle) in [
        (
            r#"{"weights": [0.5, 0.4], "means": [[0, 0], [1, 1]], "stds": [1, 1]}"#,
            "sum",
        ),
        (
            r#"{"weights": [0.5, 0.5], "means": [[0, 0], [1]], "stds": [1, 1]}"#,
            "shapes disagree",
        ),
        (
            r#"{"weights": [0.5, 0.5], "means": [[0, 0], [1, 1]], "stds": [1]}"#,
            "shapes disagree",
        ),
        (
            r#"{"weights": [1.0], "means": [[0, 0]], "stds": [[1, 2, 3]]}"#,
            "shapes disagree",
        ),
        (
            r#"{"weights": [1.0], "means": [[0, 0]], "stds": [1], "extra": 1}"#,
            "unknown field",
        ),
        (r#"{"weights": [1.0], "#, "not valid"),
    ] {
        let spec = write("m.json", text);
        check(
            &[
                "--denoiser",
                &spec,
                "--solver",
                "euler",
                "--steps",
                "4",
                "--num",
                "3",
            ],
            needle,
        );
    }
    check(
        &[
            "--denoiser",
            "gaussian:/nonexistent.json",
            "--solver",
            "euler",
            "--steps",
            "4",
            "--num",
            "3",
        ],
        "cannot read",
    );
    check(
        &[
            "--denoiser",
            "mystery",
            "--solver",
            "euler",
            "--steps",
            "4",
            "--num",
            "3",
        ],
        "unknown denoiser",
    );

    // CUDA asked for where there is none.
    if !tch::Cuda::is_available() {
        let args = [
            "sample",
            "--denoiser",
            "builtin:gmm8",
            "--solver",
            "euler",
            "--steps",
            "4",
            "--num",
            "3",
            "--device",
            "cuda",
            "--out",
            o,
        ];
        assert_bad(&args, "CUDA is not available", &out);
    }
}

#[test]
fn errors_are_single_lines() {
    let o = run(&[
        "sample",
        "--denoiser",
        "builtin:gmm8",
        "--solver",
        "nope",
        "--steps",
        "4",
        "--num",
        "2",
        "--out",
        "/tmp/never.npy",
    ]);
    let err = stderr(&o);
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
}

#[test]
fn compare_and_bench_take_samplers_with_parameters_as_their_labels() {
    // `name(key=value,...)`, the form of the tables' labels: each variant is a row of its own,
    // labelled as written (keys sorted), with the parameters applied (a churned euler is
    // stochastic: no rms_error), and the results.csv label quoted where it has a comma.
    let dir = tempfile::tempdir().unwrap();
    let o = run(&[
        "compare",
        "--solvers",
        "heun,edm-ablation(scaling=vp,schedule=vp),edm-ablation,euler(churn=10)",
        "--steps",
        "8",
        "--num",
        "64",
        "--reference-steps",
        "256",
        "--device",
        "cpu",
        "--out-dir",
        dir.path().to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let csv = std::fs::read_to_string(dir.path().join("results.csv")).unwrap();
    let row = |label: &str| -> Vec<String> {
        csv.lines()
            .find(|l| l.starts_with(&format!("{label},")))
            .unwrap_or_else(|| panic!("{label} in {csv}"))
            .strip_prefix(&format!("{label},"))
            .unwrap()
            .split(',')
            .map(String::from)
            .collect()
    };
    let (heun, ab, vp, churn) = (
        row("heun"),
        row("edm-ablation"),
        row("\"edm-ablation(scaling=vp,schedule=vp)\""),
        row("euler(churn=10)"),
    );
    assert_eq!(heun[..2], ab[..2]);
    let f = |r: &[String]| r[2].parse::<f64>().unwrap();
    assert!(
        (f(&heun) - f(&ab)).abs() < 1e-12,
        "edm-ablation at its defaults is heun: {heun:?} {ab:?}"
    );
    assert_ne!(heun[2], vp[2], "the vp schedule changes the samples");
    assert_eq!(churn[2], "", "a churned euler reports no rms_error");
    // bench takes the same form and labels its rows (and JSON) with it.
    let js = dir.path().join("b.json");
    let bench_labels = |solvers: &str| -> Vec<String> {
        let o = run(&[
            "bench",
            "--solvers",
            solvers,
            "--num",
            "16",
            "--steps",
            "4",
            "--reps",
            "1",
            "--device",
            "cpu",
            "--json",
            js.to_str().unwrap(),
        ]);
        assert!(o.status.success(), "{}", stderr(&o));
        let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&js).unwrap()).unwrap();
        v.as_array()
            .unwrap()
            .iter()
            .map(|r| r["sampler"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(
        bench_labels("edm-ablation(alpha=0.5),heun"),
        ["edm-ablation(alpha=0.5)", "heun"]
    );
    // A list of values sweeps the parameter, as in an experiment's [[samplers]] table: one row
    // per value, labelled as that sampler alone would be.
    assert_eq!(
        bench_labels("ddim(eta=[0,0.5,1]),heun"),
        ["ddim", "ddim(eta=0.5)", "ddim(eta=1)", "heun"]
    );
    // A command that runs one sampler takes one value.
    let out = dir.path().join("one.npy");
    assert_bad(
        &[
            "sample",
            "--denoiser",
            "builtin:gmm8",
            "--solver",
            "ddim(eta=[0,1])",
            "--steps",
            "4",
            "--out",
            out.to_str().unwrap(),
        ],
        "only a list of samplers takes",
        &out,
    );
    // Mistakes are one-line errors with exit code 2.
    let never = dir.path().join("never");
    for (list, needle) in [
        ("heun(foo=1)", "unknown field `foo`"),
        ("edm-ablation(schedule=vp", "unbalanced parentheses"),
        ("heun)", "unbalanced parentheses"),
        ("edm-ablation(schedule=cosine)", "unknown variant `cosine`"),
        ("edm-ablation(alpha=2)", "alpha = 2"),
        ("heun(churn=1,churn=2)", "s_churn is given twice"),
        ("heun(churn)", "'churn' is not key=value"),
        ("ddim(eta=x)", "expected f64"),
        ("nosuch(a=1)", "unknown sampler 'nosuch'"),
        ("ddim(eta=[])", "eta = [] lists no values"),
        ("ddim(eta=[0.5,0.5])", "lists ddim(eta=0.5) twice"),
        (
            "ddim(eta=0.5),ddim(eta=[0,0.5])",
            "lists ddim(eta=0.5) twice",
        ),
    ] {
        assert_bad(
            &[
                "compare",
                "--solvers",
                list,
                "--steps",
                "4",
                "--out-dir",
                never.to_str().unwrap(),
            ],
            needle,
            &never,
        );
    }
}

#[test]
fn compare_writes_a_table_csv_and_plot() {
    let dir = tempfile::tempdir().unwrap();
    let o = run(&[
        "compare",
        "--solvers",
        "euler,heun,ddpm",
        "--steps",
        "4,16",
        "--num",
        "256",
        "--reference-steps",
        "512",
        "--device",
        "cpu",
        "--out-dir",
        dir.path().to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(stdout.contains("plot: "), "{stdout}");
    let csv = std::fs::read_to_string(dir.path().join("results.csv")).unwrap();
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(lines.len(), 1 + 3 * 2);
    // Heun beats Euler at 16 steps against the reference.
    let rms = |name: &str, steps: &str| -> f64 {
        let l = lines
            .iter()
            .find(|l| l.starts_with(&format!("{name},{steps},")))
            .unwrap();
        l.split(',').nth(3).unwrap().parse().unwrap()
    };
    assert!(rms("heun", "16") < rms("euler", "16"));
    // summary.md: the same cells, ranked by budget; the best rms within 31 evaluations is
    // heun at 16 steps (ddpm, stochastic, has no rms).
    let md = std::fs::read_to_string(dir.path().join("summary.md")).unwrap();
    let rms_section = md.split("\n## ").find(|p| p.starts_with("rms:")).unwrap();
    assert!(
        rms_section.contains("| 31 | heun | 16 | 31 | ") && !rms_section.contains("| ddpm |"),
        "{md}"
    );
    assert!(md.contains("| ddpm |"), "mode-tv has every sampler: {md}");
    assert!(stdout.contains("best rms within a budget"), "{stdout}");
    let svg = std::fs::read_to_string(dir.path().join("error_vs_nfe.svg")).unwrap();
    assert!(svg.contains("<svg") && svg.contains("heun"));
    assert!(!csv.contains("roundtrip"), "{csv}");
    // --roundtrip: the noise recovered by inverting; exact for belm, shrinking with the steps
    // for heun, none for the stochastic ddpm and at one step.
    let trips = dir.path().join("trips");
    let o = run(&[
        "compare",
        "--solvers",
        "heun,belm,ddpm",
        "--steps",
        "1,4,16",
        "--num",
        "64",
        "--reference-steps",
        "64",
        "--roundtrip",
        "--device",
        "cpu",
        "--out-dir",
        trips.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let csv = std::fs::read_to_string(trips.join("results.csv")).unwrap();
    let mut lines = csv.lines();
    assert_eq!(
        lines.next(),
        Some("sampler,steps,nfe,rms_error,max_error,mode_tv,roundtrip,seconds")
    );
    let trip = |name: &str, steps: &str| -> Option<f64> {
        let l = csv
            .lines()
            .find(|l| l.starts_with(&format!("{name},{steps},")))
            .unwrap();
        l.split(',').nth(6).unwrap().parse().ok()
    };
    assert!(trip("belm", "4").unwrap() < 1e-8 && trip("belm", "16").unwrap() < 1e-8);
    assert!(trip("heun", "16").unwrap() < trip("heun", "4").unwrap() / 10.0);
    assert!(trip("heun", "16").unwrap() > 1e-6);
    for (name, steps) in [("ddpm", "4"), ("heun", "1"), ("belm", "1")] {
        assert_eq!(trip(name, steps), None, "{name} {steps}");
    }
    assert!(String::from_utf8_lossy(&o.stdout).contains("roundtrip"));
    // An output that is a folder is refused before the work, and nothing is written.
    let pre = dir.path().join("pre");
    std::fs::create_dir_all(pre.join("error_vs_nfe.png")).unwrap();
    let o = run(&[
        "compare",
        "--solvers",
        "euler",
        "--steps",
        "4",
        "--num",
        "16",
        "--device",
        "cpu",
        "--out-dir",
        pre.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("error_vs_nfe.png: it is a folder"),
        "{}",
        stderr(&o)
    );
    assert!(!pre.join("results.csv").exists() && !pre.join("summary.md").exists());
    // Lists with an empty item are refused (compare and bench).
    let never = dir.path().join("never");
    for args in [
        &["compare", "--solvers", "euler,,heun", "--steps", "4"][..],
        &["compare", "--solvers", "euler", "--steps", "4,"],
        &["bench", "--solvers", "", "--num", "16", "--steps", "2"],
    ] {
        let mut a = args.to_vec();
        if args[0] == "compare" {
            a.extend(["--out-dir", never.to_str().unwrap()]);
        }
        assert_bad(&a, "has an empty item", &never);
    }
    // Failures after the arguments are read leave no (empty) output folder behind.
    let nested = never.join("deeper");
    let n = nested.to_str().unwrap();
    for (args, needle) in [
        (&["--num", "99999999999"][..], "draw fewer at a time"),
        (
            &["--reference-steps", "0"],
            "--reference-steps must be at least 1",
        ),
    ] {
        let mut a = vec![
            "compare",
            "--solvers",
            "euler",
            "--steps",
            "4",
            "--out-dir",
            n,
        ];
        a.extend(args);
        let o = run(&a);
        assert_eq!(o.status.code(), Some(2), "{a:?}: {}", stderr(&o));
        assert!(stderr(&o).contains(needle), "{a:?}: {}", stderr(&o));
        assert!(!never.exists(), "{a:?} left {never:?}");
    }
    let file = dir.path().join("results.csv");
    let o = run(&["compare", "--out-dir", file.join("sub").to_str().unwrap()]);
    assert!(
        stderr(&o).contains("results.csv is not a folder"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn cuda_and_cpu_agree_within_float32_tolerance() {
    if no_cuda() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut outs = Vec::new();
    for dev in ["cpu", "cuda"] {
        let out = dir.path().join(format!("{dev}.npy"));
        let o = run(&[
            "sample",
            "--denoiser",
            "builtin:gmm8",
            "--solver",
            "heun",
            "--steps",
            "18",
            "--num",
            "512",
            "--seed",
            "4",
            "--device",
            dev,
            "--out",
            out.to_str().unwrap(),
        ]);
        assert!(o.status.success(), "{}", stderr(&o));
        let line: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        assert!(line["device"].as_str().unwrap().starts_with(dev), "{line}");
        outs.push(read_f32_npy(&out).1);
    }
    let diff = outs[0]
        .iter()
        .zip(&outs[1])
        .map(|(a, b)| (a - b).abs())
        .fold(0.0f32, f32::max);
    assert!(diff < 1e-3, "cpu vs cuda max difference {diff}");
}

#[test]
fn cuda_and_cpu_agree_on_the_digits_unet_with_and_without_graphs() {
    if no_cuda() {
        return;
    }
    let ck = Path::new(env!("CARGO_MANIFEST_DIR")).join("runs/digits/checkpoint.safetensors");
    let dir = tempfile::tempdir().unwrap();
    let mut outs = Vec::new();
    for (dev, graphs) in [("cpu", "off"), ("cuda", "auto"), ("cuda", "off")] {
        for solver in ["heun", "dpmpp-2m", "euler-ancestral"] {
            let out = dir.path().join(format!("{dev}-{graphs}-{solver}.npy"));
            let o = Command::new(env!("CARGO_BIN_EXE_scoreflow"))
                .env("SCOREFLOW_CUDA_GRAPHS", graphs)
                .args([
                    "sample",
                    "--checkpoint",
                    ck.to_str().unwrap(),
                    "--solver",
                    solver,
                    "--steps",
                    "12",
                    "--num",
                    "16",
                    "--seed",
                    "2",
                    "--device",
                    dev,
                    "--out",
                    out.to_str().unwrap(),
                ])
                .output()
                .unwrap();
            assert!(o.status.success(), "{}", stderr(&o));
            outs.push((format!("{dev}/{graphs}/{solver}"), read_f32_npy(&out).1));
        }
    }
    for i in 3..outs.len() {
        let (name, b) = &outs[i];
        let (ref_name, a) = &outs[i % 3];
        let diff = a
            .iter()
            .zip(b)
            .map(|(x, y)| (x - y).abs())
            .fold(0.0f32, f32::max);
        assert!(diff < 2e-3, "{ref_name} vs {name}: max difference {diff}");
    }
}

#[test]
fn k_diffusion_and_diffusers_agree_at_three_steps() {
    // The same comparison on the exact mixture at 3 steps, where the samplers' start-up and
    // last-step rules make up the whole run (the step from 80 spans most of the range): every
    // k-diffusion, diffusers and scipy check agrees but diffusers' PNDM with its Runge-Kutta
    // start, which diffusers cannot run on fewer than 4 steps (skipped by peers.py).
    let dir = tempfile::tempdir().unwrap();
    let Some(v) = peers(&["--check-only", "--steps", "3"], dir.path()) else {
        return;
    };
    let checks = v["checks"].as_array().unwrap();
    assert_eq!(checks.len(), 77);
    for c in checks {
        assert_eq!(c["agree"], true, "{c}");
    }
    let dpm_fast = checks.iter().find(|c| c["sampler"] == "dpm-fast").unwrap();
    // One second-order step over most of the range ends far from the data, on both sides.
    assert!(dpm_fast["max_abs"].as_f64().unwrap() > 100.0, "{dpm_fast}");
}

/// `python3 experiments/peers/peers.py ARGS --out DIR` with k-diffusion on the path (installed by
/// scripts/test.sh into .peers/site), and the peers.json it wrote; None (after printing why)
/// where k-diffusion is not installed.
fn peers(args: &[&str], dir: &Path) -> Option<serde_json::Value> {
    peers_exit(args, dir, 0)
}

/// `python3 experiments/peers/SCRIPT --scoreflow BIN ARGS` with the peers on the path (installed
/// by scripts/test.sh into .peers/site), from the repository root; None (after printing why)
/// where they are not installed.
fn peer_script(script: &str, args: &[&str], out: &Path) -> Option<Output> {
    let (Ok(py), Ok(site)) = (
        std::env::var("SCOREFLOW_PEERS_PYTHON"),
        std::env::var("SCOREFLOW_PEERS_SITE"),
    ) else {
        println!(
            "skipped: k-diffusion is not installed (scripts/test.sh installs it into .peers/site)"
        );
        return None;
    };
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let path = match std::env::var("PYTHONPATH") {
        Ok(p) if !p.is_empty() => format!("{site}:{p}"),
        _ => site,
    };
    Some(
        Command::new(py)
            .env("PYTHONPATH", path)
            .current_dir(root)
            .arg(root.join("experiments/peers").join(script))
            .args(["--scoreflow", env!("CARGO_BIN_EXE_scoreflow")])
            .args(args)
            .arg("--out")
            .arg(out)
            .output()
            .unwrap(),
    )
}

/// [`peers`], expecting exit code `code`.
fn peers_exit(args: &[&str], dir: &Path, code: i32) -> Option<serde_json::Value> {
    let o = peer_script("peers.py", &[args, &["--device", "cpu"]].concat(), dir)?;
    assert_eq!(
        o.status.code(),
        Some(code),
        "{}\n{}",
        String::from_utf8_lossy(&o.stdout),
        stderr(&o)
    );
    println!("{}", String::from_utf8_lossy(&o.stdout));
    Some(serde_json::from_str(&std::fs::read_to_string(dir.join("peers.json")).unwrap()).unwrap())
}

#[test]
fn k_diffusion_gives_the_same_samples_as_scoreflow() {
    // An independent implementation of the samplers: k-diffusion's sample_euler, sample_heun,
    // sample_dpmpp_2m, sample_dpm_2, sample_lms, sample_dpmpp_3m_sde (eta = 0), and the
    // stochastic sample_euler_ancestral, sample_dpm_2_ancestral, sample_dpmpp_2s_ancestral,
    // sample_dpmpp_sde (r 1/2 and 0.3), DPMSolver's singlestep steps (dpm-solver, with noise),
    // its dpm_solver_fast (dpm-fast, with noise) and its adaptive solver (dpm-adaptive, orders
    // 3 and 2, and with noise in float64),
    // sample_heun, sample_euler and sample_dpm_2 with churn, sample_dpmpp_2m_sde (midpoint and
    // heun) and sample_dpmpp_3m_sde, around PyTorch twins of the exact mixture, of the gmm8
    // MLP and of the digits U-Net (weights loaded from the checkpoints), from the same starting
    // noise on the same Karras grid; the stochastic ones get scoreflow's Brownian paths, rebuilt
    // in numpy by peers.py from their description. And diffusers' DDPMScheduler (small and large
    // variance), DDIMScheduler (eta 0, 0.5, 1) and ScoreSdeVeScheduler (predictor-corrector) on
    // the same grid, ScoreSdeVpScheduler (Euler-Maruyama) on a uniform-t VP grid, and
    // UniPCMultistepScheduler, DEISMultistepScheduler and IPNDMScheduler on the same grid. And
    // scipy's solve_ivp(method="RK45") as score_sde's ODE sampler calls it (rk45 under EDM, VP
    // and VE). And diffusers' SASolverScheduler, given scoreflow's step noise, and its
    // KarrasVeScheduler (edm-stochastic with EDM's churn and with churn at every level), given
    // scoreflow's churn noise. And its LCMScheduler (lcm) and TCDScheduler (tcd, on a VP grid of
    // integer timesteps), given scoreflow's step noise.
    let dir = tempfile::tempdir().unwrap();
    let Some(v) = peers(
        &[
            "--checkpoint",
            "runs/gmm8/checkpoint.safetensors",
            "--checkpoint",
            "runs/digits/checkpoint.safetensors",
            "--check-only",
        ],
        dir.path(),
    ) else {
        return;
    };
    let checks = v["checks"].as_array().unwrap();
    // 29 against k-diffusion, 26 against diffusers (DDPM small and large, DDIM at eta 0, 0.5, 1,
    // predictor-corrector with 1 and 2 corrector steps, Euler-Maruyama on the VP SDE, UniPC at
    // orders 2, 3 (bh1) and 4 and UniP-2 without the corrector, DEIS at orders 3 and 2, iPNDM,
    // PNDM from sigma 80 and from 2, PLMS, multistep DPM-Solver++ of orders 2 and 3 and its SDE
    // form (midpoint and heun), singlestep
    // DPM-Solver++ of order 2 (midpoint and heun) and 3 and DPM-Solver of order 3 (heun)) on
    // each model, and singlestep sde-dpmsolver++ (order 2 midpoint, order 3 heun) and SASolver
    // (the defaults; orders 3/3 at tau 0; 4/3 at tau 0.6; 1/4 in another window) given the same
    // step noise; 3 against scipy (rk45 under EDM, VP and VE with other tolerances); and two
    // float64 checks on the exact mixture: dpm-adaptive with noise and rk45. And 7 of
    // dpm-multistep against DPMSolverMultistepScheduler (order 3; DPM-Solver of orders 2,
    // midpoint and heun, and 3; sde-dpmsolver++ of order 3; sde-dpmsolver, midpoint and heun),
    // lcm against LCMScheduler, and tcd (gamma 1/2, 1/4 and 1) against TCDScheduler on a VP
    // grid of integer timesteps, given the same step noise.
    assert_eq!(checks.len(), 3 * 77 + 2);
    for c in checks {
        let (diff, scale) = (
            c["max_abs_diff"].as_f64().unwrap(),
            c["max_abs"].as_f64().unwrap(),
        );
        // float32 arithmetic on both sides; lms differs a little more because k-diffusion
        // integrates its coefficients numerically (scipy quad, epsrel 1e-4), and pc because its
        // Langevin step size is a ratio of batch-mean norms (4e-5 on the exact mixture).
        let loose = c["sampler"] == "lms" || c["sampler"].as_str().unwrap().starts_with("pc");
        let tol = if loose { 5e-4 } else { 1e-4 } * scale.max(1.0);
        assert!(diff <= tol, "{c}");
        if c["sampler"] == "rk45-float64" {
            // The same steps in float64: only the float32 output file's rounding is left.
            assert!(diff <= 1e-6 * scale.max(1.0), "{c}");
        }
    }
    // The control: k-diffusion handed another seed's Brownian paths must disagree on every
    // stochastic sampler (and still agree on the deterministic one), with exit code 1.
    let dir = tempfile::tempdir().unwrap();
    let v = peers_exit(
        &[
            "--check-only",
            "--check-samplers",
            "euler,euler-ancestral,dpm2-ancestral,dpmpp-2s-ancestral,dpmpp-sde,edm-stochastic,\
             euler-churn,dpm2-churn,dpmpp-2m-sde,dpmpp-3m-sde,ddpm,ddim-eta1,pc,euler-maruyama,\
             dpm-solver-eta0.5,dpm-adaptive-eta0.5,dpmpp-sde-r0.3,dpm-fast-eta0.5,\
             dpmpp-2m-sde-diffusers,dpm-singlestep-sde,sa-solver,edm-stochastic-karras-ve,\
             dpm-multistep-3-sde,dpm-multistep-sde-eps,lcm,tcd",
            "--check-noise-seed",
            "4",
        ],
        dir.path(),
        1,
    )
    .unwrap();
    for c in v["checks"].as_array().unwrap() {
        assert_eq!(c["agree"], c["sampler"] == "euler", "{c}");
    }
}

#[test]
fn the_pytorch_training_peer_times_the_same_models() {
    // The training half of the peer benchmark: scoreflow bench-train, then the same step in
    // PyTorch on twins of the same networks (peers.py stops with an error where the parameter
    // counts differ). Output only; no speed is asserted.
    let dir = tempfile::tempdir().unwrap();
    let Some(v) = peers(
        &[
            "--parts",
            "train",
            "--train",
            "experiments/gmm8-train.toml",
            "--train",
            "experiments/digits.toml",
            "--train-batch",
            "8",
            "--train-steps",
            "2",
            "--train-precisions",
            "float32",
            "--train-modes",
            "eager,eager-fused",
        ],
        dir.path(),
    ) else {
        return;
    };
    assert_eq!(v["complete"], true);
    let rows = v["train_rows"].as_array().unwrap();
    assert_eq!(rows.len(), 2 * 2, "{v}");
    // Bad input: an unknown part, a missing checkpoint, an unknown sampler to check or to time:
    // exit code 2, a message, no peers.json.
    let (py, site) = (
        std::env::var("SCOREFLOW_PEERS_PYTHON").unwrap(),
        std::env::var("SCOREFLOW_PEERS_SITE").unwrap(),
    );
    for (args, want) in [
        (vec!["--parts", "bogus"], "bogus"),
        (
            vec!["--checkpoint", "no/such/checkpoint.safetensors"],
            "no/such",
        ),
        (vec!["--check-samplers", "euler,nope"], "nope"),
        (vec!["--samplers", "euler-ancestral"], "euler-ancestral"),
    ] {
        let bad = dir.path().join("bad");
        let o = Command::new(&py)
            .env("PYTHONPATH", &site)
            .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("experiments/peers/peers.py"))
            .args([
                "--scoreflow",
                env!("CARGO_BIN_EXE_scoreflow"),
                "--check-only",
            ])
            .args(&args)
            .arg("--out")
            .arg(&bad)
            .output()
            .unwrap();
        assert_eq!(o.status.code(), Some(2), "{args:?}: {}", stderr(&o));
        assert!(stderr(&o).contains(want), "{args:?}: {}", stderr(&o));
        assert!(!bad.join("peers.json").exists());
    }
    assert!(v["rows"].as_array().unwrap().is_empty(), "no sampling rows");
    for (r, (config, params)) in rows.iter().zip([
        ("gmm8-train.toml", 169_986),
        ("gmm8-train.toml", 169_986),
        ("digits.toml", 702_753),
        ("digits.toml", 702_753),
    ]) {
        assert_eq!(r["config"], config);
        assert_eq!(r["parameters"], params, "{r}");
        assert_eq!(r["batch"], 8);
        for k in ["sf_samples_per_s", "torch_samples_per_s", "sf_over_torch"] {
            let x = r[k].as_f64().unwrap();
            assert!(x.is_finite() && x > 0.0, "{k}: {r}");
        }
    }
}

#[test]
fn bench_train_times_each_precision_and_checks_them_all_first() {
    // Output format only; no timing is asserted.
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("t.json");
    let cfg = repo("experiments/gmm8-train.toml");
    let cfg = cfg.to_str().unwrap();
    let o = run(&[
        "bench-train",
        cfg,
        "--device",
        "cpu",
        "--batch",
        "64",
        "--steps",
        "1",
        "--precision",
        "float32,bf16",
        "--json",
        json.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let rows = v.as_array().unwrap();
    assert_eq!(rows.len(), 2);
    for (row, p) in rows.iter().zip(["float32", "bf16"]) {
        assert_eq!(row["precision"], p);
        assert_eq!(row["batch"], 64);
        assert!(row["samples_per_s"].as_f64().unwrap() > 0.0);
        assert!(row["peak_bytes"].is_null(), "no peak memory on the CPU");
        assert_eq!(row["steps"], 1);
        assert_eq!(row["shape"], serde_json::json!([2]));
        assert_eq!(row["num_classes"], 0);
        assert_eq!(row["train_config"]["train"]["batch"], 64);
        // 2 -> 128 residual MLP, 3 blocks, 16 Fourier features (their frequencies not counted).
        let (h, f) = (128, 16);
        let emb = 2 * f * h + h + h * h + h;
        let blocks = 3 * 3 * (h * h + h);
        assert_eq!(row["parameters"], emb + (2 * h + h) + blocks + (h * 2 + 2));
    }
    // An unknown precision anywhere in the list: an error before any row, no JSON.
    let bad = dir.path().join("bad.json");
    let o = run(&[
        "bench-train",
        cfg,
        "--device",
        "cpu",
        "--steps",
        "1",
        "--precision",
        "float32,fp8",
        "--json",
        bad.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("fp8"), "{}", stderr(&o));
    assert!(o.stdout.is_empty());
    assert!(!bad.exists());
}

#[test]
fn train_without_snapshots_and_a_fresh_log_per_run() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("run");
    let cfg = dir.path().join("t.toml");
    std::fs::write(
        &cfg,
        format!(
            r#"out_dir = "{}"
device = "cpu"
[data]
kind = "gmm8"
num = 256
[model.backbone]
kind = "mlp"
hidden = 16
depth = 1
[train]
steps = 3
batch = 32
log_every = 1
checkpoint_every = 3
snapshot_samples = 0
"#,
            out.display()
        ),
    )
    .unwrap();
    for _ in 0..2 {
        let o = run(&["train", cfg.to_str().unwrap()]);
        assert!(o.status.success(), "{}", stderr(&o));
        let line: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        assert!(line["samples"].is_null());
    }
    assert!(out.join("checkpoint.safetensors").exists());
    assert!(!out.join("samples.npy").exists());
    // The second fresh run replaced the first one's log: 3 steps, 3 lines.
    let log = std::fs::read_to_string(out.join("log.jsonl")).unwrap();
    assert_eq!(log.lines().count(), 3, "{log}");
}

#[test]
fn bench_writes_json_for_each_batch_and_sampler() {
    // Runs the benchmark for its output format only; no timing is asserted.
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("b.json");
    let o = run(&[
        "bench",
        "--num",
        "1,16",
        "--steps",
        "4",
        "--reps",
        "1",
        "--solvers",
        "euler,heun",
        "--device",
        "cpu",
        "--json",
        json.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let rows = v.as_array().unwrap();
    assert_eq!(rows.len(), 4);
    assert_eq!(rows[1]["nfe"], 7);
    assert!(rows.iter().all(|r| r["ratio"].as_f64().unwrap() > 0.0));
    let bad = run(&["bench", "--num", "0", "--device", "cpu"]);
    assert_eq!(bad.status.code(), Some(2));
}

#[test]
fn samplers_lists_every_sampler_with_its_config_defaults() {
    use scoreflow::solvers::samplers::NAMES;
    use scoreflow::solvers::SamplerSpec;
    let o = run(&["samplers"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let table = String::from_utf8_lossy(&o.stdout).to_string();
    let o = run(&["samplers", "--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let lines: Vec<serde_json::Value> = String::from_utf8_lossy(&o.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), NAMES.len());
    // The table's columns line up: the name column is as wide as the longest name.
    let w = NAMES.iter().map(|n| n.len()).max().unwrap();
    for line in table.lines() {
        assert_eq!(line.as_bytes()[w], b' ', "{line}");
        assert_ne!(line.as_bytes()[w + 1], b' ', "{line}");
    }
    for (v, name) in lines.iter().zip(NAMES) {
        assert_eq!(v["name"], *name);
        assert!(table.lines().any(|l| l.starts_with(&format!("{name} "))));
        let spec = SamplerSpec::from_name(name).unwrap();
        assert_eq!(v["stochastic"], spec.is_stochastic(), "{name}");
        // Inverts at the defaults: deterministic (and not adaptive), as `sample --invert` takes.
        let inverts = v["invertible"].as_bool().unwrap();
        let sampler = spec.build().unwrap();
        let exact = sampler.exact_inverse().is_some();
        assert_eq!(inverts, sampler.invertible() || exact, "{name}");
        assert_eq!(v["exact_inversion"], exact, "{name}");
        assert!(
            !inverts || !(spec.is_stochastic() || spec.is_adaptive()),
            "{name}"
        );
        // The NFE formula, evaluated at 7 steps, is the planned count (a formula that holds from
        // some n on, `n+9 (n >= 4)`, says so).
        let f = v["nfe"].as_str().unwrap();
        let (f, from) = match f.split_once(" (n >= ") {
            Some((f, from)) => (f, from.trim_end_matches(')').parse::<usize>().unwrap()),
            None => (f, 1),
        };
        match (f, f.split_once('n')) {
            ("adaptive", _) => assert!(spec.is_adaptive() && spec.nfe(7).is_none(), "{name}"),
            (_, Some((k, c))) => {
                let k = if k.is_empty() {
                    1
                } else {
                    k.parse::<i64>().unwrap()
                };
                let c = if c.is_empty() {
                    0
                } else {
                    c.parse::<i64>().unwrap()
                };
                assert_eq!(Some((7 * k + c) as usize), spec.nfe(7), "{name}: {f}");
                assert_eq!(
                    Some((from as i64 * k + c) as usize),
                    spec.nfe(from),
                    "{name}: {f}"
                );
                if from > 1 {
                    // The formula fails just below the n it names.
                    let n = (from - 1) as i64;
                    assert_ne!(
                        Some((n * k + c) as usize),
                        spec.nfe(from - 1),
                        "{name}: {f}"
                    );
                }
            }
            (_, None) => panic!("{name}: nfe {f}"),
        }
        // The parameters, written as an experiment's [[samplers]] entry, give the defaults back.
        let mut toml_text = format!("kind = \"{name}\"\n");
        for (key, val) in v["parameters"].as_object().unwrap() {
            let val = match val.as_str() {
                Some("inf") => "inf".to_string(),
                _ => val.to_string(),
            };
            toml_text += &format!("{key} = {val}\n");
        }
        let back: SamplerSpec = toml::from_str(&toml_text).unwrap();
        assert_eq!(back, spec, "{name}: {toml_text}");
    }
}

#[test]
fn an_infinite_s_tmax_survives_json() {
    // experiment.json (JSON, which has no infinity) writes `s_tmax = inf` as null; every
    // sampler with an s_tmax reads that back as infinity.
    use scoreflow::solvers::{samplers::NAMES, SamplerSpec};
    let mut taken = Vec::new();
    for name in NAMES {
        let Ok(spec) = toml::from_str::<SamplerSpec>(&format!("kind = \"{name}\"\ns_tmax = inf\n"))
        else {
            continue;
        };
        let json = serde_json::to_string(&spec).unwrap();
        assert!(json.contains("\"s_tmax\":null"), "{name}: {json}");
        let back: SamplerSpec =
            serde_json::from_str(&json).unwrap_or_else(|e| panic!("{name}: {json}: {e}"));
        assert_eq!(back, spec, "{name}");
        taken.push(*name);
    }
    for name in [
        "euler",
        "edm-stochastic",
        "edm-ablation",
        "restart",
        "sa-solver",
        "sa-solver-comfy",
    ] {
        assert!(taken.contains(&name), "{name} takes s_tmax: {taken:?}");
    }
}

#[test]
fn every_sampler_has_a_doc_page_and_a_row_in_the_samplers_table() {
    use scoreflow::solvers::samplers::NAMES;
    let index = std::fs::read_to_string(repo("docs/samplers/README.md")).unwrap();
    for name in NAMES {
        let page = repo(&format!("docs/samplers/{name}.md"));
        let text =
            std::fs::read_to_string(&page).unwrap_or_else(|e| panic!("{}: {e}", page.display()));
        assert!(
            text.starts_with(&format!("# {name}\n")),
            "{name}: page title"
        );
        let headings: Vec<&str> = text.lines().filter(|l| l.starts_with("## ")).collect();
        for section in ["Reference", "Algorithm", "NFE", "Tests"] {
            assert!(
                headings.iter().any(|h| h.contains(section)),
                "{name}: no section on {section}"
            );
        }
        assert!(
            index.contains(&format!("| [{name}]({name}.md) |")),
            "{name}: no row in docs/samplers/README.md"
        );
    }
}

#[test]
fn the_repo_leaves_room_for_the_gpu_checks_binaries() {
    // A device call carries the repo's files and the packed binaries (scripts/gpu-prepare.sh,
    // 4 MiB on 2026-12-08) within 64 MiB; reserve 6. Over it, the GPU check cannot travel: see
    // docs/performance.md, "Running the GPU check".
    if !repo(".git").exists() {
        println!("skipped: not a git checkout, so no device call is made from it");
        return;
    }
    let out = Command::new("python3")
        .arg(repo("scripts/travel-size.py"))
        .args(["--reserve", "6"])
        .current_dir(repo("."))
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{text}");
    assert!(text.contains("reserved 6.0 MiB"), "{text}");
}

#[test]
fn outputs_follow_links_and_write_into_devices() {
    // The output is written beside the file and renamed over it (never half-written), but a
    // symbolic link keeps pointing where it did and a device such as /dev/null is written into,
    // not replaced by a regular file.
    let dir = tempfile::tempdir().unwrap();
    let real = dir.path().join("real.npy");
    let link = dir.path().join("link.npy");
    std::os::unix::fs::symlink(&real, &link).unwrap();
    let sample = |out: &std::path::Path| {
        run(&[
            "sample",
            "--denoiser",
            "builtin:gmm8",
            "--solver",
            "euler",
            "--steps",
            "2",
            "--num",
            "4",
            "--device",
            "cpu",
            "--out",
            out.to_str().unwrap(),
        ])
    };
    let o = sample(&link);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(std::fs::symlink_metadata(&link)
        .unwrap()
        .file_type()
        .is_symlink());
    assert_eq!(read_f32_npy(&real).0, vec![4, 2]);
    let o = sample(std::path::Path::new("/dev/null"));
    assert!(o.status.success(), "{}", stderr(&o));
    use std::os::unix::fs::FileTypeExt;
    assert!(std::fs::metadata("/dev/null")
        .unwrap()
        .file_type()
        .is_char_device());
    let left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
    assert_eq!(left.len(), 2, "{left:?}");
}

#[test]
fn restart_takes_its_segments_as_a_flag_and_in_the_label() {
    // `--segments` (a TOML array of [N, K, t_min, t_max]) and the label form
    // `restart(segments=[[...]],...)` give the same sampler; the NFE adds 2 K (N - 1) per
    // segment to heun's 2n - 1; and compare's table labels it so that the label reads back.
    let dir = tempfile::tempdir().unwrap();
    let out = |name: &str| dir.path().join(name);
    let sample = |extra: &[&str], file: &std::path::Path| {
        let mut args = vec![
            "sample",
            "--denoiser",
            "builtin:gmm8",
            "--num",
            "32",
            "--steps",
            "18",
            "--device",
            "cpu",
            "--out",
            file.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        run(&args)
    };
    let a = sample(
        &[
            "--solver",
            "restart",
            "--segments",
            "[[4,1,19.35,40.79],[4,1,1.09,1.92]]",
            "--restart-gamma",
            "0.1",
        ],
        &out("a.npy"),
    );
    assert!(a.status.success(), "{}", stderr(&a));
    let b = sample(
        &[
            "--solver",
            "restart(segments=[[4,1,19.35,40.79],[4,1,1.09,1.92]],restart_gamma=0.1)",
        ],
        &out("b.npy"),
    );
    assert!(b.status.success(), "{}", stderr(&b));
    let line: serde_json::Value = serde_json::from_slice(&a.stdout).unwrap();
    assert_eq!(line["nfe"], 35 + 6 + 6);
    assert_eq!(
        std::fs::read(out("a.npy")).unwrap(),
        std::fs::read(out("b.npy")).unwrap()
    );
    let o = run(&[
        "compare",
        "--solvers",
        "restart(segments=[[3,2,0.06,0.3],[4,1,1.0,2.0]]),heun",
        "--steps",
        "8",
        "--num",
        "32",
        "--reference-steps",
        "64",
        "--device",
        "cpu",
        "--out-dir",
        out("cmp").to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let csv = std::fs::read_to_string(out("cmp").join("results.csv")).unwrap();
    let label = "restart(segments=[[3,2,0.06,0.3],[4,1,1.0,2.0]])";
    assert!(csv.contains(&format!("\"{label}\",8,29,")), "{csv}");
    scoreflow::job::parse_sampler(label).unwrap();
    // Segments that do not fit are one-line errors with exit code 2 and no output.
    let never = out("never.npy");
    for (extra, needle) in [
        (
            vec!["--solver", "restart", "--segments", "[[4,1,19.35]]"],
            "write a TOML array of [N, K, t_min, t_max]",
        ),
        (
            vec!["--solver", "restart", "--segments", "[[1,1,0.06,0.3]]"],
            "N (levels of each restart) must be >= 2",
        ),
        (
            vec!["--solver", "restart", "--segments", "[[3,1,0.06,300]]"],
            "at most the grid's first level 80",
        ),
        (
            vec!["--solver", "restart(segments=[[3,1,1e-5,0.3]])"],
            "nearest to the grid's final level",
        ),
        (
            vec!["--solver", "heun", "--segments", "[]"],
            "--segments does not apply to the heun sampler",
        ),
    ] {
        assert_bad_sample(&extra, "18", needle, &never);
    }
}

#[test]
fn sa_solver_takes_its_flags_and_its_label_alike() {
    // (The same bad-flag checks for tcd's --gamma and er-sde's flags at the end.)
    // The flags and the label `sa-solver(key=value,...)` give the same sampler (bit for bit,
    // noise included), as do `--tau 0` and `sa-solver(tau=0)`; another seed or another tau
    // changes the samples; bad orders, a negative tau, a window with s_tmin > s_tmax and
    // another sampler's flag are one-line errors with exit code 2 and no output.
    let dir = tempfile::tempdir().unwrap();
    let out = |name: &str| dir.path().join(name);
    let sample = |extra: &[&str], seed: &str, file: &Path| {
        let args = [extra, &["--seed", seed]].concat();
        let (nfe, bytes) = sample_gmm8(&args, "32", "12", file);
        assert_eq!(nfe, 12);
        bytes
    };
    let flags = [
        "--solver",
        "sa-solver",
        "--predictor-order",
        "3",
        "--corrector-order",
        "1",
        "--tau",
        "0.5",
        "--s-tmin",
        "0.1",
        "--s-tmax",
        "10",
    ];
    let a = sample(&flags, "0", &out("a.npy"));
    let label = "sa-solver(predictor_order=3,corrector_order=1,tau=0.5,tmin=0.1,tmax=10)";
    let b = sample(&["--solver", label], "0", &out("b.npy"));
    assert_eq!(a, b);
    let c = sample(&flags, "1", &out("c.npy"));
    assert_ne!(a, c);
    let ode = ["--solver", "sa-solver", "--tau", "0"];
    let d0 = sample(&ode, "0", &out("d0.npy"));
    assert_ne!(a, d0);
    let e = sample(&["--solver", "sa-solver(tau=0)"], "0", &out("e.npy"));
    assert_eq!(d0, e);
    let never = out("never.npy");
    for (extra, needle) in [
        (
            vec!["--solver", "sa-solver", "--predictor-order", "5"],
            "invalid parameter order = 5: must be 1 to 4",
        ),
        (
            vec!["--solver", "sa-solver(corrector_order=0)"],
            "invalid parameter order = 0: must be 1 to 4",
        ),
        (
            vec!["--solver", "sa-solver", "--tau=-1"],
            "tau = -1: must be finite and >= 0",
        ),
        (
            vec!["--solver", "sa-solver", "--s-tmin", "30"],
            "must be >= 0 and <= s_tmax",
        ),
        (
            vec!["--solver", "unipc", "--tau", "1"],
            "--tau does not apply to the unipc sampler",
        ),
        (
            vec!["--solver", "tcd", "--gamma", "1.5"],
            "gamma = 1.5: must be within [0, 1]",
        ),
        (
            vec!["--solver", "tcd(gamma=-0.2)"],
            "gamma = -0.2: must be within [0, 1]",
        ),
        (
            vec!["--solver", "lcm", "--gamma", "0.3"],
            "--gamma does not apply to the lcm sampler",
        ),
        (
            vec!["--solver", "bdia", "--gamma", "0"],
            "bdia's gamma must be in (0, 1]",
        ),
        (
            vec!["--solver", "edict", "--mix-weight", "1"],
            "edict's mix_weight must be in (0, 1)",
        ),
        (
            vec!["--solver", "euler", "--mix-weight", "0.5"],
            "--mix-weight does not apply to the euler sampler",
        ),
        (
            vec!["--solver", "er-sde", "--func-type", "9"],
            "func_type = 9: must be 1 to 7",
        ),
        (
            vec!["--solver", "er-sde(points=0)"],
            "points = 0: must be 1 to 100000",
        ),
        (
            vec!["--solver", "euler", "--points", "200"],
            "--points does not apply to the euler sampler",
        ),
    ] {
        assert_bad_sample(&extra, "12", needle, &never);
    }
}

#[test]
fn pc_takes_score_sdes_predictors_and_correctors_by_name() {
    // `--predictor` / `--corrector` and the label keys give the same sampler; the NFE follows
    // (predictor none: only the final D besides the corrector steps); bad names and the flags
    // on other samplers are one-line errors with exit code 2 and no output.
    let dir = tempfile::tempdir().unwrap();
    let file = |name: &str| dir.path().join(name);
    let sample = |extra: &[&str], out: &Path| sample_gmm8(extra, "16", "10", out);
    let (nfe, a) = sample(
        &[
            "--solver",
            "pc",
            "--predictor",
            "none",
            "--corrector",
            "ald",
            "--corrector-steps",
            "3",
        ],
        &file("a.npy"),
    );
    assert_eq!(nfe, 10 * 3 + 1);
    let (_, b) = sample(
        &[
            "--solver",
            "pc(predictor=none,corrector=ald,corrector_steps=3)",
        ],
        &file("b.npy"),
    );
    assert_eq!(a, b);
    let (nfe, _) = sample(
        &[
            "--solver",
            "pc",
            "--predictor",
            "ancestral_sampling",
            "--corrector",
            "none",
        ],
        &file("c.npy"),
    );
    assert_eq!(nfe, 10);
    let never = file("never.npy");
    for (extra, needle) in [
        (
            vec!["--solver", "pc", "--predictor", "ancestral"],
            "unknown PC predictor 'ancestral'",
        ),
        (
            vec![
                "--solver",
                "pc",
                "--predictor",
                "none",
                "--corrector",
                "none",
            ],
            "needs a corrector",
        ),
        (
            vec!["--solver", "unipc", "--corrector", "ald"],
            "unipc's --corrector is true or false, not 'ald'",
        ),
        (
            vec!["--solver", "heun", "--predictor", "none"],
            "--predictor does not apply to the heun sampler",
        ),
        (
            vec![
                "--solver",
                "pc",
                "--sde",
                "subvp",
                "--predictor",
                "ancestral-sampling",
            ],
            "needs a VE, EDM or VP SDE",
        ),
    ] {
        assert_bad_sample(&extra, "10", needle, &never);
    }
}

#[test]
fn grids_by_name_take_rho_only_where_they_have_one() {
    // poly-exponential (rho 1 by default: log-snr) and beta run from the command line; --rho
    // with a grid that has no rho is a one-line error with exit code 2 and no output.
    let dir = tempfile::tempdir().unwrap();
    let out = |name: &str| dir.path().join(name);
    let sample = |extra: &[&str], file: &Path| {
        sample_gmm8(&[&["--solver", "euler"], extra].concat(), "8", "6", file).1
    };
    let a = sample(&["--grid", "poly-exponential"], &out("a.npy"));
    let b = sample(&["--grid", "log-snr"], &out("b.npy"));
    assert_eq!(a, b);
    let c = sample(&["--grid", "poly-exponential", "--rho", "2"], &out("c.npy"));
    assert_ne!(a, c);
    let d = sample(&["--grid", "beta"], &out("d.npy"));
    assert_ne!(a, d);
    let k7 = sample(&["--grid", "karras"], &out("k7.npy"));
    let k = sample(&["--grid", "karras", "--rho", "7"], &out("k.npy"));
    assert_eq!(k7, k);
    let never = out("never.npy");
    assert_bad_sample(
        &["--solver", "euler", "--grid", "beta", "--rho", "3"],
        "6",
        "--rho applies to the karras, poly-t and poly-exponential grids, not beta",
        &never,
    );
    assert_bad_sample(
        &["--solver", "euler", "--grid", "gauss"],
        "6",
        "unknown grid 'gauss'",
        &never,
    );
}

#[test]
fn sample_clips_or_thresholds_the_denoised_estimate() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("x.npy");
    let sample = |extra: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_scoreflow"))
            .args([
                "sample",
                "--denoiser",
                "builtin:gmm8",
                "--solver",
                "dpmpp-2m",
                "--steps",
                "12",
            ])
            .args(["--num", "500", "--device", "cpu", "--out"])
            .arg(&out)
            .args(extra)
            .output()
            .unwrap()
    };
    for (extra, bound) in [
        (vec![], 1.5),
        (vec!["--clip-denoised", "0.5"], 0.5),
        (vec!["--dynamic-threshold", "0.9,1.5"], 1.0),
    ] {
        let o = sample(&extra);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let m = scoreflow::npy::read(&out)
            .unwrap()
            .abs()
            .max()
            .double_value(&[]);
        if extra.is_empty() {
            assert!(m > bound, "the ring reaches radius 2: {m}");
        } else {
            assert!(m <= bound + 1e-6, "{extra:?}: {m}");
        }
    }
    let _ = std::fs::remove_file(&out);
    for (extra, needle) in [
        (
            vec!["--clip-denoised", "1", "--dynamic-threshold", "0.9"],
            "cannot be used with",
        ),
        (
            vec!["--clip-denoised", "-1"],
            "the clipping range must be positive",
        ),
        (
            vec!["--dynamic-threshold", "0.9,0.5"],
            "dynamic thresholding needs",
        ),
        (
            vec!["--dynamic-threshold", "a,b"],
            "--dynamic-threshold takes RATIO[,MAX]",
        ),
    ] {
        let o = sample(&extra);
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{extra:?}: {err}");
        assert!(err.contains(needle), "{extra:?}: {err}");
        assert!(!out.exists());
    }
}

/// Cases from a bad-input audit (2026-12-06): each is an error naming the problem, exit code 2,
/// never a panic.
#[test]
fn audited_bad_inputs_are_errors_not_panics() {
    let dir = tempfile::tempdir().unwrap();
    let d = |name: &str| dir.path().join(name);
    let expect = |o: Output, needle: &str| {
        let err = stderr(&o);
        assert_eq!(o.status.code(), Some(2), "{needle}: {err}");
        assert!(
            err.contains(needle) && !err.contains("panicked"),
            "{needle}: {err}"
        );
    };
    // A standard output that cannot be written.
    if Path::new("/dev/full").exists() {
        let full = std::fs::File::create("/dev/full").unwrap();
        let o = bin().arg("samplers").stdout(full).output().unwrap();
        expect(o, "cannot write to standard output");
    }
    // Lists that name a sampler, a step count, a batch, a config or a precision twice.
    let gmm = ["--denoiser", "builtin:gmm8", "--num", "16"];
    let cmp_dir = d("cmp");
    let compare = |extra: &[&str]| {
        let mut a = vec!["compare"];
        a.extend(gmm);
        a.extend([
            "--reference-steps",
            "64",
            "--out-dir",
            cmp_dir.to_str().unwrap(),
        ]);
        a.extend(extra);
        run(&a)
    };
    expect(
        compare(&["--steps", "4,4", "--solvers", "euler"]),
        "--steps lists 4 twice",
    );
    expect(
        compare(&["--steps", "4", "--solvers", "euler,euler(s_churn=0)"]),
        "--solvers lists euler twice",
    );
    assert!(!d("cmp").exists());
    let bench = |extra: &[&str]| {
        let mut a = vec!["bench", "--steps", "2", "--device", "cpu"];
        a.extend(extra);
        run(&a)
    };
    expect(
        bench(&["--num", "16,16", "--reps", "1"]),
        "--num lists 16 twice",
    );
    expect(
        bench(&["--num", "16", "--reps", "1", "--solvers", "heun,heun"]),
        "--solvers lists heun twice",
    );
    expect(
        bench(&["--num", "16", "--reps", "99999999999"]),
        "--reps 99999999999 is more than",
    );
    let cfg = repo("experiments/gmm8-train.toml");
    let cfg = cfg.to_str().unwrap();
    expect(
        run(&["bench-train", "--steps", "1", cfg, cfg]),
        "is listed twice",
    );
    expect(
        run(&[
            "bench-train",
            "--steps",
            "1",
            "--precision",
            "float32,float32",
            cfg,
        ]),
        "--precision lists float32 twice",
    );
    expect(
        run(&["bench-train", "--steps", "99999999999", cfg]),
        "--steps must be 1 to 1000000",
    );
    // Negative numbers reach the option's own check; nll's ODE range is not for --bound.
    expect(
        run(&["nll", "--denoiser", "builtin:gmm8", "--sigma-max", "-1"]),
        "0 < --sigma-min < --sigma-max < inf",
    );
    expect(
        run(&["compare", "--denoiser", "builtin:gmm8", "--steps", "-4"]),
        "invalid --steps '-4'",
    );
    expect(
        run(&[
            "nll",
            "--denoiser",
            "builtin:gmm8",
            "--bound",
            "--sigma-min",
            "0.01",
        ]),
        "--sigma-min applies to the ODE likelihood, not --bound",
    );
    // posthoc-ema without snapshots, or with a width out of range: exit 2, nothing written.
    for (args, needle) in [
        (vec!["--std", "0.1"], "no post-hoc EMA snapshots"),
        (
            vec!["--std", "0.9"],
            "--std (sigma_rel) must be within (0, 0.2886]",
        ),
    ] {
        let out = d("ph.safetensors");
        let run_dir = d("no-run");
        let mut argv = vec!["posthoc-ema", run_dir.to_str().unwrap()];
        argv.extend(args);
        argv.extend(["--out", out.to_str().unwrap()]);
        expect(run(&argv), needle);
        assert!(!out.exists());
    }
    // The flow's shift: a number above 0.
    for (sde, needle) in [
        (
            "flow:0",
            "the flow's shift must be positive and finite, got 0",
        ),
        ("flow:x", "invalid shift 'x' in SDE 'flow:x'"),
        ("flow:mu=x", "invalid mu 'x' in SDE 'flow:mu=x'"),
        ("flow:", "invalid shift '' in SDE 'flow:'"),
        ("rf", "unknown SDE 'rf'"),
    ] {
        expect(
            run(&[
                "sample",
                "--denoiser",
                "builtin:gmm8",
                "--sde",
                sde,
                "--solver",
                "euler",
                "--steps",
                "4",
                "--num",
                "4",
                "--out",
                d("flow.npy").to_str().unwrap(),
            ]),
            needle,
        );
        assert!(!d("flow.npy").exists());
    }
    // An output path under a file.
    let file = d("file");
    std::fs::write(&file, "x").unwrap();
    let under = file.join("x.npy");
    expect(
        run(&[
            "sample",
            "--denoiser",
            "builtin:gmm8",
            "--solver",
            "euler",
            "--steps",
            "2",
            "--num",
            "4",
            "--out",
            under.to_str().unwrap(),
        ]),
        "is not a folder",
    );
    // A sampler parameter that would run for ever.
    assert_bad_sample(
        &["--solver", "pc(corrector_steps=100000000)"],
        "2",
        "corrector_steps = 100000000 is more than 1000",
        &d("pc.npy"),
    );
    // nll: an infinite sigma_max, and counts without Rust's debug text.
    expect(
        run(&[
            "nll",
            "--denoiser",
            "builtin:gmm8",
            "--num",
            "16",
            "--sigma-max",
            "inf",
        ]),
        "--sigma-max < inf",
    );
    let o = run(&["nll", "--denoiser", "builtin:gmm8", "--num", "99999999999"]);
    assert!(!stderr(&o).contains("None"), "{}", stderr(&o));
    expect(o, "--num 99999999999 is too many points");
    // Digits files with a label that is not a digit, and a pixel that is not a grey level.
    let digits = std::fs::read(repo("experiments/data/digits.csv.gz")).unwrap();
    let mut text = String::new();
    std::io::Read::read_to_string(&mut flate2::read::GzDecoder::new(&digits[..]), &mut text)
        .unwrap();
    for (name, from, to, needle) in [
        ("label", ",0\n", ",99\n", "label 99 is not a digit"),
        (
            "pixel",
            "0,0,5,",
            "0,nan,5,",
            "pixel value NaN is not a grey level",
        ),
    ] {
        let bad = text.replacen(from, to, 1);
        let path = d(&format!("{name}.csv.gz"));
        let mut gz = flate2::write::GzEncoder::new(
            std::fs::File::create(&path).unwrap(),
            flate2::Compression::fast(),
        );
        std::io::Write::write_all(&mut gz, bad.as_bytes()).unwrap();
        gz.finish().unwrap();
        let config = d(&format!("{name}.toml"));
        std::fs::write(
            &config,
            format!(
                "out_dir = \"{}\"\n[data]\nkind = \"digits\"\npath = \"{}\"\n[model]\nconditional = true\n[model.backbone]\nkind = \"unet\"\nchannels = 8\nchannel_mult = [1]\nblocks = 1\nattn_resolutions = []\n[train]\nsteps = 1\nbatch = 8\n",
                d(&format!("{name}-run")).display(),
                path.display()
            ),
        )
        .unwrap();
        expect(run(&["train", config.to_str().unwrap()]), needle);
        assert!(!d(&format!("{name}-run")).exists());
    }
    // An experiment's output folder with damaged files: each named.
    let exp = d("exp.toml");
    let out = d("exp");
    std::fs::write(
        &exp,
        format!(
            "out_dir = \"{}\"\ndevice = \"cpu\"\nnum = 64\nseeds = [0]\nsteps = [2, 4]\nmetrics = [\"rms\"]\n[model]\nkind = \"builtin\"\nname = \"gmm8\"\n[[samplers]]\nkind = \"euler\"\n",
            out.display()
        ),
    )
    .unwrap();
    let twice = d("twice.toml");
    std::fs::write(
        &twice,
        std::fs::read_to_string(&exp)
            .unwrap()
            .replace("[\"rms\"]", "[\"rms\", \"rms\"]"),
    )
    .unwrap();
    expect(
        run(&["run", twice.to_str().unwrap()]),
        "metrics lists rms twice",
    );
    expect(
        run(&["run", exp.to_str().unwrap(), "--max-cells", "0"]),
        "--max-cells must be at least 1",
    );
    assert!(!out.exists());
    let o = run(&["run", exp.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    let plot = || run(&["plot", out.to_str().unwrap()]);
    assert!(plot().status.success());
    let results = std::fs::read_to_string(out.join("results.jsonl")).unwrap();
    std::fs::write(out.join("results.jsonl"), format!("{{garbage\n{results}")).unwrap();
    expect(plot(), "results.jsonl line 1 is not a results line");
    // A last line cut short (a kill) is skipped; that cell runs again.
    std::fs::write(out.join("results.jsonl"), format!("{results}{{\"key\":")).unwrap();
    assert!(plot().status.success());
    std::fs::write(out.join("results.jsonl"), &results).unwrap();
    for (file, needle) in [
        ("floors.json", "floors.json is corrupt"),
        ("experiment.json", "experiment.json is corrupt"),
    ] {
        let path = out.join(file);
        let keep = std::fs::read(&path).ok();
        std::fs::write(&path, "{bad").unwrap();
        expect(plot(), needle);
        match keep {
            Some(k) => std::fs::write(&path, k).unwrap(),
            None => std::fs::remove_file(&path).unwrap(),
        }
    }
    let snap = std::fs::read_dir(out.join("samples"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.to_string_lossy().ends_with(".path.npy"))
        .unwrap();
    write_npy(&snap, &[4, 2], &[0.0; 8], true);
    expect(plot(), "has shape [4, 2], expected [steps + 1, paths, 2]");
}

#[test]
fn save_noise_writes_the_starting_noise_that_reproduces_the_samples() {
    // `--save-noise` writes the noise drawn for --num; `--noise` with that file gives the same
    // samples (the pairs reflow trains on). It must not name --out, and a failed run writes
    // neither file.
    let dir = tempfile::tempdir().unwrap();
    let p = |n: &str| dir.path().join(n).to_str().unwrap().to_string();
    let common = [
        "sample",
        "--denoiser",
        "builtin:gmm8",
        "--solver",
        "heun",
        "--steps",
        "8",
    ];
    let o = run(&[
        &common[..],
        &[
            "--num",
            "16",
            "--seed",
            "5",
            "--out",
            &p("x.npy"),
            "--save-noise",
            &p("z.npy"),
        ],
    ]
    .concat());
    assert!(o.status.success(), "{}", stderr(&o));
    let o = run(&[
        &common[..],
        &["--noise", &p("z.npy"), "--seed", "5", "--out", &p("x2.npy")],
    ]
    .concat());
    assert!(o.status.success(), "{}", stderr(&o));
    let read = |n: &str| read_f32_npy(Path::new(&p(n)));
    let (x, x2, z) = (read("x.npy"), read("x2.npy"), read("z.npy"));
    assert_eq!(z.0, vec![16, 2]);
    assert_eq!(x, x2);
    let o = run(&[
        &common[..],
        &[
            "--num",
            "4",
            "--out",
            &p("y.npy"),
            "--save-noise",
            &p("y.npy"),
        ],
    ]
    .concat());
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("--save-noise and --out name the same file"),
        "{}",
        stderr(&o)
    );
    let o = run(&[
        &common[..],
        &[
            "--num",
            "4",
            "--out",
            &p("w.npy"),
            "--save-noise",
            &p("no/such/z.npy"),
        ],
    ]
    .concat());
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("does not exist"), "{}", stderr(&o));
    assert!(!Path::new(&p("w.npy")).exists() && !Path::new(&p("y.npy")).exists());
}

#[test]
fn sample_invert_encodes_data_into_the_noise_that_samples_them() {
    let dir = tempfile::tempdir().unwrap();
    let p = |name: &str| dir.path().join(name);
    let s = |path: &Path| path.to_str().unwrap().to_owned();
    let gauss = format!("gaussian:{}", s(&repo("experiments/gauss2.json")));
    // Standard-normal noise (Box-Muller on a fixed LCG), sampled with heun in 64 steps.
    let mut state = 12345u64;
    let mut uniform = || {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((state >> 11) as f64 + 0.5) / (1u64 << 53) as f64
    };
    let z: Vec<f64> = (0..400)
        .flat_map(|_| {
            let (u, v) = (uniform(), uniform());
            let r = (-2.0 * u.ln()).sqrt();
            let a = 2.0 * std::f64::consts::PI * v;
            [r * a.cos(), r * a.sin()]
        })
        .collect();
    write_npy(&p("z.npy"), &[400, 2], &z, false);
    let sample = |noise: &Path, steps: &str, out: &Path| {
        let o = run(&[
            "sample",
            "--denoiser",
            &gauss,
            "--solver",
            "heun",
            "--steps",
            steps,
            "--noise",
            &s(noise),
            "--device",
            "cpu",
            "--out",
            &s(out),
        ]);
        assert!(o.status.success(), "{}", stderr(&o));
        read_f32_npy(out).1
    };
    let x = sample(&p("z.npy"), "64", &p("x.npy"));
    let invert = |solver: &str, steps: &str, out: &Path, extra: &[&str]| {
        let mut args = vec![
            "sample",
            "--denoiser",
            &gauss,
            "--solver",
            solver,
            "--steps",
            steps,
            "--device",
            "cpu",
        ];
        let (data, out) = (s(&p("x.npy")), s(out));
        args.extend(["--invert", &data, "--out", &out]);
        args.extend(extra);
        let o = run(&args);
        assert!(o.status.success(), "{}", stderr(&o));
        let line: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        line
    };
    let rms = |a: &[f32], b: &[f32]| {
        let sq: f64 = a
            .iter()
            .zip(b)
            .map(|(u, v)| (*u as f64 - *v as f64).powi(2))
            .sum();
        (sq / (a.len() / 2) as f64).sqrt()
    };
    // Heun in 64 steps gives back the noise, near the exact encoding; fewer steps, less so.
    let line = invert("heun", "64", &p("zh.npy"), &["--roundtrip"]);
    let (shape, zh) = read_f32_npy(&p("zh.npy"));
    assert_eq!(shape, [400, 2]);
    let back = rms(&zh, &z.iter().map(|&v| v as f32).collect::<Vec<_>>());
    let exact = line["rms_error"].as_f64().unwrap();
    assert!(back < 5e-3 && exact < 5e-3, "{back} {exact} {line}");
    assert_eq!(line["nfe"].as_u64(), Some(2 * 63 - 1 + 1), "{line}");
    assert_eq!(line["sigma_min"].as_f64(), Some(0.002));
    assert_eq!(line["sigma_max"].as_f64(), Some(80.0));
    // The round trip is `sample --noise` of the latents with the same flags.
    let again = sample(&p("zh.npy"), "64", &p("xh.npy"));
    let roundtrip = line["roundtrip_rms"].as_f64().unwrap();
    assert!(
        (rms(&again, &x) - roundtrip).abs() < 1e-5 && roundtrip < 5e-3,
        "{} vs {roundtrip}",
        rms(&again, &x)
    );
    assert_eq!(line["roundtrip_nfe"].as_u64(), Some(2 * 64 - 1));
    let coarse = invert("heun", "8", &p("z8.npy"), &[]);
    let euler = invert("euler", "64", &p("ze.npy"), &[]);
    let (coarse, euler) = (
        coarse["rms_error"].as_f64().unwrap(),
        euler["rms_error"].as_f64().unwrap(),
    );
    assert!(
        coarse > 10.0 * exact && euler > 5.0 * exact,
        "{coarse} {euler} {exact}"
    );
    assert!(line["roundtrip_rms"].is_number() && !coarse.is_nan());

    // Bad input: exit code 2, no output. Each case: the sampler and steps, then the other flags.
    let out = p("bad.npy");
    write_npy(&p("x3.npy"), &[4, 3], &[0.0; 12], false);
    let (data, data3, missing) = (s(&p("x.npy")), s(&p("x3.npy")), s(&p("missing.npy")));
    let cases: [(&str, &str, &[&str], &str); 7] = [
        (
            "euler-ancestral",
            "8",
            &["--invert", &data],
            "sampler euler-ancestral cannot run backwards",
        ),
        (
            "ddim",
            "8",
            &["--eta", "1", "--invert", &data],
            "cannot run backwards",
        ),
        (
            "heun",
            "1",
            &["--invert", &data],
            "--invert needs --steps >= 2",
        ),
        (
            "heun",
            "8",
            &["--invert", &data, "--num", "4"],
            "cannot be used with",
        ),
        (
            "heun",
            "8",
            &["--roundtrip", "--num", "4"],
            "--roundtrip applies to --invert",
        ),
        ("heun", "8", &["--invert", &data3], "data file"),
        ("heun", "8", &["--invert", &missing], "missing.npy"),
    ];
    for (solver, steps, extra, needle) in cases {
        let mut args = vec![
            "sample",
            "--denoiser",
            &gauss,
            "--device",
            "cpu",
            "--solver",
            solver,
            "--steps",
            steps,
            "--out",
            out.to_str().unwrap(),
        ];
        args.extend(extra);
        assert_bad(&args, needle, &out);
    }
}

/// Run a peer check script that prints one JSON line per comparison (`experiments/peers/`,
/// without arguments of its own), expecting exit code 0 and every judged line (those with
/// "ok") ok; the judged lines, or None where the peers are not installed or the script
/// skipped (no diffusers).
fn judged_peer_lines(script: &str) -> Option<Vec<serde_json::Value>> {
    let dir = tempfile::tempdir().unwrap();
    let o = peer_script(script, &[], dir.path())?;
    let out = String::from_utf8_lossy(&o.stdout).to_string();
    println!("{out}");
    assert_eq!(o.status.code(), Some(0), "{out}\n{}", stderr(&o));
    let lines: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    if lines[0].get("skipped").is_some() {
        println!("skipped: {}", lines[0]["skipped"]);
        return None;
    }
    let judged: Vec<serde_json::Value> = lines
        .into_iter()
        .filter(|l| l.get("ok").is_some())
        .collect();
    assert!(judged.iter().all(|l| l["ok"] == true), "{out}");
    Some(judged)
}

#[test]
fn inversion_matches_diffusers_dpm_solver_multistep_inverse_scheduler() {
    // experiments/peers/inversion_check.py: `sample --invert` with euler, ddim, dpmpp-2m,
    // dpmpp-3m and dpm-multistep (order 3, and DPM-Solver of order 2, with diffusers'
    // lower-order final steps) against diffusers' DPMSolverMultistepInverseScheduler (orders 1,
    // 2, 3) on the same levels from the same data (exact gmm8, float64), at 8 and 25 sampling
    // steps, plus a control that must differ.
    let Some(judged) = judged_peer_lines("inversion_check.py") else {
        return;
    };
    // 6 samplers at 2 step counts, and 2 controls.
    assert_eq!(judged.len(), 14, "{judged:?}");
    for l in judged.iter().filter(|l| l.get("solver").is_some()) {
        assert!(l["max_abs_diff"].as_f64().unwrap() < 5e-7, "{l}");
    }
}

#[test]
fn rectified_flow_matches_diffusers_flow_match_schedulers() {
    // experiments/peers/flow_check.py: `sample --sde flow:3 --grid uniform-t` with the ends of
    // diffusers' flow schedule against FlowMatchEulerDiscreteScheduler (euler),
    // FlowMatchHeunDiscreteScheduler (edm-ablation with the flow schedule and scaling),
    // DPMSolverMultistepScheduler (dpm-multistep, orders 2 and 3) and UniPCMultistepScheduler
    // (unipc), all with flow_prediction on the exact gmm8's velocity, and lcm against
    // FlowMatchEuler's stochastic sampling, and euler under `--sde flow:mu=M` against
    // FlowMatchEuler's dynamic shifting at mu = M, at 10 and 25 steps from the same noise;
    // controls (heun in sigma, DPM-Solver order 1, lcm on another seed's noise) must differ.
    let Some(judged) = judged_peer_lines("flow_check.py") else {
        return;
    };
    // 7 pairs (with lcm against FlowMatchEuler's stochastic sampling, given the same step
    // noise) and 3 controls at 2 step counts.
    assert_eq!(judged.len(), 20, "{judged:?}");
    for l in judged.iter().filter(|l| l.get("solver").is_some()) {
        assert!(l["max_abs_diff"].as_f64().unwrap() < 2e-5, "{l}");
        let (steps, nfe) = (l["steps"].as_u64().unwrap(), l["nfe"].as_u64().unwrap());
        let heun = l["solver"].as_str().unwrap().starts_with("edm-ablation");
        assert_eq!(nfe, if heun { 2 * steps - 1 } else { steps }, "{l}");
    }
}

#[test]
fn dpm_multistep_lowers_its_final_orders_as_diffusers_does() {
    // On an 8-step grid diffusers' DPMSolverMultistepScheduler with lower_order_final takes the
    // step before the last at second order: dpm-multistep of order 3 gives its samples in the
    // data-prediction, noise-prediction and SDE forms, while dpmpp-3m (k-diffusion's 3M, third
    // order there) does not (exit code 1 for that disagreement, the opt-in contrast
    // dpmpp-3m-diffusers-lower-final); without lower_order_final diffusers gives dpmpp-3m's.
    let dir = tempfile::tempdir().unwrap();
    let Some(v) = peers_exit(
        &[
            "--check-only",
            "--steps",
            "8",
            "--check-samplers",
            "dpm-multistep-3,dpm-multistep-3-eps,dpm-multistep-3-sde,dpmpp-3m-diffusers,\
             dpmpp-3m-diffusers-lower-final",
        ],
        dir.path(),
        1,
    ) else {
        return;
    };
    let checks = v["checks"].as_array().unwrap();
    assert_eq!(checks.len(), 5);
    for c in checks {
        let contrast = c["sampler"] == "dpmpp-3m-diffusers-lower-final";
        assert_eq!(c["agree"], !contrast, "{c}");
        if contrast {
            assert!(c["max_abs_diff"].as_f64().unwrap() > 0.1, "{c}");
        }
    }
}

/// `optimize-grid` on the exact ring with `extra` fails with exit code 2, an error containing
/// `needle` and no file at `out`.
fn assert_bad_optimize_grid(extra: &[&str], needle: &str, out: &Path) {
    let args = [
        &[
            "optimize-grid",
            "--denoiser",
            "builtin:gmm8",
            "--device",
            "cpu",
        ][..],
        extra,
        &["--out", out.to_str().unwrap()],
    ]
    .concat();
    assert_bad(&args, needle, out);
}

#[test]
fn optimize_grid_writes_the_levels_that_sample_and_compare_take() {
    let dir = tempfile::tempdir().unwrap();
    let d = |p: &str| dir.path().join(p).to_str().unwrap().to_string();
    let settings = [
        "--metric",
        "l2",
        "--coeff",
        "1",
        "--samples",
        "64",
        "--teacher-steps",
        "30",
    ];
    let grid_file = d("grid.toml");
    let o = run(&[
        &[
            "optimize-grid",
            "--denoiser",
            "builtin:gmm8",
            "--steps",
            "4,6",
            "--device",
            "cpu",
        ][..],
        &settings,
        &["--out", &grid_file],
    ]
    .concat());
    assert!(o.status.success(), "{}", stderr(&o));
    let line: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let levels = line["levels"].as_array().unwrap();
    assert_eq!(levels.len(), 2);
    assert_eq!(levels[0].as_array().unwrap().len(), 4);
    assert_eq!(levels[1].as_array().unwrap().len(), 6);
    assert_eq!(levels[0][0].as_f64(), Some(80.0));
    // The levels are the teacher's: Karras levels of 30 steps from 0.002 to 80.
    let karras = |i: usize| {
        let (a, b) = (80f64.powf(1.0 / 7.0), 0.002f64.powf(1.0 / 7.0));
        (a + i as f64 / 29.0 * (b - a)).powi(7)
    };
    for l in levels[1].as_array().unwrap() {
        let v = l.as_f64().unwrap();
        assert!(
            (0..30).any(|i| (karras(i) - v).abs() <= 1e-9 * v),
            "{v} is not a teacher level"
        );
    }
    let gits_file = d("gits.toml");
    std::fs::write(
        &gits_file,
        "[grid]\nplacement = { kind = \"gits\", metric = \"l2\", coeff = 1.0, samples = 64, teacher_steps = 30 }\n",
    )
    .unwrap();
    // The same samples from the file, from the gits placement solved inside `sample`, and
    // from the file's 6-step list given as levels on the command line.
    let list: Vec<String> = levels[1]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| format!("{:?}", v.as_f64().unwrap()))
        .collect();
    let inline = format!("levels:{}", list.join(","));
    let outs: Vec<Vec<u8>> = [&grid_file, &gits_file, &inline]
        .iter()
        .enumerate()
        .map(|(k, grid)| {
            let out = dir.path().join(format!("s{k}.npy"));
            sample_gmm8(&["--solver", "euler", "--grid", grid], "32", "6", &out).1
        })
        .collect();
    assert_eq!(outs[0], outs[1]);
    assert_eq!(outs[0], outs[2]);
    // A teacher placement with its own levels (ays) writes its own ends, not 0.002 and 80.
    let ays_file = d("ays-gits.toml");
    let o = run(&[
        &[
            "optimize-grid",
            "--denoiser",
            "builtin:gmm8",
            "--steps",
            "4",
            "--device",
            "cpu",
            "--grid",
            "ays",
        ][..],
        &settings,
        &["--out", &ays_file],
    ]
    .concat());
    assert!(o.status.success(), "{}", stderr(&o));
    let text = std::fs::read_to_string(&ays_file).unwrap();
    let table: toml::Table = toml::from_str(&text).unwrap();
    let top = table["grid"]["sigma_max"].as_float().unwrap();
    assert!((top - 14.615).abs() < 1e-3, "{text}");
    let bottom = table["grid"]["sigma_min"].as_float().unwrap();
    assert!(bottom > 0.029 && bottom < 0.152, "{text}");
    assert!(text.contains(&format!("from {bottom} to {top}")), "{text}");
    // The JSON line of a levels or gits grid lists the levels that ran.
    let o = run(&[
        "sample",
        "--denoiser",
        "builtin:gmm8",
        "--solver",
        "euler",
        "--steps",
        "4",
        "--num",
        "4",
        "--device",
        "cpu",
        "--grid",
        "levels:80,1,0.1",
        "--out",
        &d("l.npy"),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let line: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let want = loglinear_reference(&[80.0, 1.0, 0.1], 4);
    let got: Vec<f64> = line["levels"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap())
        .collect();
    assert_eq!(got.len(), 4);
    for (g, w) in got.iter().zip(&want) {
        assert!((g - w).abs() <= 1e-12 * w, "{got:?} vs {want:?}");
    }
    // So does an Align Your Steps preset: at 10 steps, the published list without its last
    // level (values: solvers/tests/sde_and_grids.rs).
    let o = run(&[
        "sample",
        "--denoiser",
        "builtin:gmm8",
        "--solver",
        "euler",
        "--steps",
        "10",
        "--num",
        "4",
        "--device",
        "cpu",
        "--grid",
        "ays-svd",
        "--out",
        &d("ays.npy"),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let line: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let got: Vec<f64> = line["levels"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap())
        .collect();
    assert_eq!(
        got,
        [700.0, 54.5, 15.886, 7.977, 4.248, 1.789, 0.981, 0.403, 0.173, 0.034]
    );
    assert_eq!(line["grid"], "ays-svd");
    // compare takes it too (run: tests/experiment.rs).
    let o = run(&[
        "compare",
        "--denoiser",
        "builtin:gmm8",
        "--solvers",
        "euler,dpmpp-2m",
        "--steps",
        "4,6",
        "--num",
        "64",
        "--device",
        "cpu",
        "--grid",
        &grid_file,
        "--out-dir",
        &d("cmp"),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(dir.path().join("cmp/results.csv").exists());
    // Bad input: exit 2, nothing written.
    let out = dir.path().join("bad.toml");
    let bad = |extra: &[&str], needle: &str| assert_bad_optimize_grid(extra, needle, &out);
    bad(&["--steps", "4", "--metric", "l3"], "unknown --metric 'l3'");
    bad(&["--steps", "61"], "more than --teacher-steps 60");
    bad(
        &["--steps", "4", "--teacher", "euler-ancestral"],
        "deterministic",
    );
    bad(&["--steps", "4", "--coeff", "0"], "coeff");
    bad(&["--steps", "4", "--grid", "gits"], "cannot be gits");
    bad(&["--steps", "0"], "at least 1");
    bad(
        &["--steps", "4", "--class", "3"],
        "need a class-conditional checkpoint",
    );
    // A class-conditional network: the grid is chosen for the guided denoiser (another grid
    // than the unguided one's), as `sample --grid gits --class 3 --guidance 3` would choose.
    let digits = repo("runs/digits/checkpoint.safetensors");
    let levels_for = |extra: &[&str]| -> serde_json::Value {
        let out = d("digits.toml");
        let o = run(&[
            &[
                "optimize-grid",
                "--checkpoint",
                digits.to_str().unwrap(),
                "--steps",
                "3",
            ][..],
            &[
                "--samples",
                "8",
                "--teacher-steps",
                "12",
                "--metric",
                "l2",
                "--device",
                "cpu",
            ],
            extra,
            &["--out", &out],
        ]
        .concat());
        assert!(o.status.success(), "{extra:?}: {}", stderr(&o));
        serde_json::from_slice::<serde_json::Value>(&o.stdout).unwrap()["levels"].clone()
    };
    let plain = levels_for(&[]);
    let guided = levels_for(&["--class", "3", "--guidance", "3"]);
    assert_eq!(plain[0].as_array().unwrap().len(), 3);
    assert_ne!(plain, guided);
    assert_bad(
        &[
            "optimize-grid",
            "--checkpoint",
            digits.to_str().unwrap(),
            "--steps",
            "4",
            "--guidance",
            "2",
            "--out",
            out.to_str().unwrap(),
        ],
        "need --class",
        &out,
    );
    let missing = dir.path().join("nope/grid.toml");
    let o = run(&[
        "optimize-grid",
        "--denoiser",
        "builtin:gmm8",
        "--steps",
        "4",
        "--out",
        missing.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("does not exist"), "{}", stderr(&o));
    assert!(!missing.parent().unwrap().exists());
    let npy = dir.path().join("x.npy");
    assert_bad_sample(
        &["--solver", "euler", "--grid", &grid_file],
        "5",
        "no list of 5 levels",
        &npy,
    );
    assert_bad_sample(
        &["--solver", "euler", "--grid", &d("none.toml")],
        "4",
        "cannot read the file",
        &npy,
    );
    std::fs::write(d("nogrid.toml"), "x = 1\n").unwrap();
    assert_bad_sample(
        &["--solver", "euler", "--grid", &d("nogrid.toml")],
        "4",
        "no [grid] table",
        &npy,
    );
    std::fs::write(
        d("badkind.toml"),
        "[grid]\nplacement = { kind = \"gits\", coef = 1.0 }\n",
    )
    .unwrap();
    assert_bad_sample(
        &["--solver", "euler", "--grid", &d("badkind.toml")],
        "4",
        "coef",
        &npy,
    );
    assert_bad_sample(
        &["--solver", "euler", "--grid", "levels:80,1,2"],
        "3",
        "must decrease",
        &npy,
    );
    assert_bad_sample(
        &["--solver", "euler", "--grid", "levels:80,a"],
        "2",
        "'a' is not a number",
        &npy,
    );
    assert_bad_sample(
        &["--solver", "euler", "--grid", "gits", "--rho", "3"],
        "2",
        "--rho applies",
        &npy,
    );
}

#[test]
fn optimize_grid_oss_writes_the_median_grid_that_sample_takes() {
    let dir = tempfile::tempdir().unwrap();
    let d = |p: &str| dir.path().join(p).to_str().unwrap().to_string();
    let grid_file = d("oss.toml");
    let o = run(&[
        "optimize-grid",
        "--denoiser",
        "builtin:gmm8",
        "--method",
        "oss",
        "--steps",
        "3,5",
        "--samples",
        "16",
        "--teacher-steps",
        "40",
        "--device",
        "cpu",
        "--out",
        &grid_file,
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let line: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(line["method"], "oss");
    assert_eq!(line["teacher"], "euler");
    assert!(line.get("coeff").is_none(), "{line}");
    let levels = line["levels"].as_array().unwrap();
    assert_eq!(levels[0].as_array().unwrap().len(), 3);
    assert_eq!(levels[1].as_array().unwrap().len(), 5);
    // Every grid starts at the top and steps through the teacher's levels (Karras, 40 steps).
    let karras = |i: usize| {
        let (a, b) = (80f64.powf(1.0 / 7.0), 0.002f64.powf(1.0 / 7.0));
        (a + i as f64 / 39.0 * (b - a)).powi(7)
    };
    for list in levels {
        let list: Vec<f64> = list
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap())
            .collect();
        assert_eq!(list[0], 80.0);
        assert!(list.windows(2).all(|w| w[1] < w[0]), "{list:?}");
        for v in &list {
            assert!(
                (0..40).any(|i| (karras(i) - v).abs() <= 1e-9 * v),
                "{v} is not a teacher level"
            );
        }
    }
    let text = std::fs::read_to_string(&grid_file).unwrap();
    assert!(text.contains("[oss]") && !text.contains("coeff"), "{text}");
    // The file and the oss placement solved inside `sample`: the same samples.
    let inline = d("inline.toml");
    std::fs::write(
        &inline,
        "[grid]\nplacement = { kind = \"oss\", samples = 16, teacher_steps = 40 }\n",
    )
    .unwrap();
    let outs: Vec<Vec<u8>> = [&grid_file, &inline]
        .iter()
        .enumerate()
        .map(|(k, grid)| {
            let out = dir.path().join(format!("s{k}.npy"));
            sample_gmm8(&["--solver", "euler", "--grid", grid], "32", "5", &out).1
        })
        .collect();
    assert_eq!(outs[0], outs[1]);
    // Bad input: exit 2, nothing written.
    let out = dir.path().join("bad.toml");
    let bad = |extra: &[&str], needle: &str| {
        assert_bad_optimize_grid(&[&["--steps", "4"][..], extra].concat(), needle, &out)
    };
    bad(&["--method", "dp"], "unknown --method 'dp'");
    bad(
        &["--method", "oss", "--metric", "l2"],
        "settings of gits, not oss",
    );
    bad(
        &["--method", "oss", "--coeff", "1"],
        "settings of gits, not oss",
    );
    bad(&["--method", "oss", "--grid", "oss"], "cannot be oss");
    bad(
        &["--method", "oss", "--teacher-steps", "3"],
        "more than --teacher-steps 3",
    );
    bad(
        &["--method", "oss", "--teacher", "dpmpp-sde"],
        "deterministic",
    );
    bad(
        &["--method", "oss", "--samples", "0"],
        "samples must be at least 1",
    );
    let npy = dir.path().join("x.npy");
    assert_bad_sample(
        &["--solver", "euler", "--grid", "oss", "--rho", "3"],
        "2",
        "--rho applies",
        &npy,
    );
}

#[test]
fn afs_saves_the_first_evaluation_in_sample_compare_and_run() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("x.npy");
    let (nfe, with) = sample_gmm8(&["--solver", "dpmpp-2m", "--afs"], "64", "6", &out);
    assert_eq!(nfe, 5);
    let (nfe, without) = sample_gmm8(&["--solver", "dpmpp-2m"], "64", "6", &out);
    assert_eq!(nfe, 6);
    assert_ne!(with, without);
    let (nfe, _) = sample_gmm8(&["--solver", "heun", "--afs"], "8", "6", &out);
    assert_eq!(nfe, 10);
    std::fs::remove_file(&out).unwrap();
    let data = dir.path().join("d.npy");
    write_npy(&data, &[1, 2], &[0.5, 0.5], false);
    assert_bad_sample(
        &[
            "--solver",
            "euler",
            "--afs",
            "--invert",
            data.to_str().unwrap(),
        ],
        "4",
        "cannot be used with",
        &out,
    );
    // compare: every sampler saves one evaluation.
    let o = run(&[
        "compare",
        "--denoiser",
        "builtin:gmm8",
        "--solvers",
        "euler,ipndm",
        "--steps",
        "4,8",
        "--num",
        "64",
        "--device",
        "cpu",
        "--afs",
        "--out-dir",
        dir.path().join("cmp").to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let csv = std::fs::read_to_string(dir.path().join("cmp/results.csv")).unwrap();
    let nfes: Vec<&str> = csv
        .lines()
        .skip(1)
        .map(|l| l.split(',').nth(2).unwrap())
        .collect();
    assert_eq!(nfes, ["3", "7", "3", "7"]);
    // run: `afs = true` at the top of an experiment.
    let cfg = dir.path().join("afs.toml");
    std::fs::write(
        &cfg,
        format!(
            "out_dir = \"{}\"\ndevice = \"cpu\"\nnum = 64\nseeds = [0]\nsteps = [5]\nmetrics = [\"sw2\"]\nafs = true\n[model]\nkind = \"builtin\"\nname = \"gmm8\"\n[[samplers]]\nkind = \"ipndm\"\n",
            dir.path().join("run").display()
        ),
    )
    .unwrap();
    let o = run(&["run", cfg.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    let line = std::fs::read_to_string(dir.path().join("run/results.jsonl")).unwrap();
    let rec: serde_json::Value = serde_json::from_str(line.lines().next().unwrap()).unwrap();
    assert_eq!(rec["nfe"].as_u64(), Some(4));
}

/// numpy's `np.exp(np.interp(linspace(0, 1, n), linspace(0, 1, len(v)), log(v)))` for
/// decreasing `v`, written out: Align Your Steps' `loglinear_interp`.
fn loglinear_reference(v: &[f64], n: usize) -> Vec<f64> {
    let m = v.len();
    (0..n)
        .map(|i| {
            let x = i as f64 / (n - 1) as f64;
            let k = ((x * (m - 1) as f64).floor() as usize).min(m - 2);
            let (x0, x1) = (k as f64 / (m - 1) as f64, (k + 1) as f64 / (m - 1) as f64);
            let f = (x - x0) / (x1 - x0);
            (v[k].ln() + f * (v[k + 1].ln() - v[k].ln())).exp()
        })
        .collect()
}

#[test]
fn a_cfgpp_sampler_without_guidance_says_it_is_its_plain_sampler() {
    let dir = tempfile::tempdir().unwrap();
    let out = |name: &str| dir.path().join(format!("{name}.npy"));
    for (solver, note) in [("euler-cfgpp", true), ("euler", false)] {
        let o = run(&[
            "sample",
            "--denoiser",
            "builtin:gmm8",
            "--solver",
            solver,
            "--steps",
            "6",
            "--num",
            "16",
            "--device",
            "cpu",
            "--out",
            out(solver).to_str().unwrap(),
        ]);
        assert!(o.status.success(), "{}", stderr(&o));
        assert_eq!(
            stderr(&o).contains("without guidance (--class) it is euler"),
            note,
            "{solver}: {}",
            stderr(&o)
        );
    }
    // The same samples, up to float32 rounding (the two write the Euler step differently).
    let a = scoreflow::npy::read(&out("euler-cfgpp")).unwrap();
    let b = scoreflow::npy::read(&out("euler")).unwrap();
    let d = (a - b).abs().max().double_value(&[]);
    assert!(d < 1e-5, "{d}");
}

#[test]
fn seeds_take_their_flags_and_their_label_alike() {
    // --eta, --s-noise, --r, --solver-type (seeds-2) and --r-1, --r-2 (seeds-3) give the same
    // sampler as the label's keys (bit for bit, noise included) and another than the defaults;
    // bad values and another sampler's flags are one-line errors with exit code 2, no output.
    let dir = tempfile::tempdir().unwrap();
    let out = |name: &str| dir.path().join(name);
    let sample = |extra: &[&str], file: &Path, nfe: u64| {
        let (n, bytes) = sample_gmm8(extra, "32", "6", file);
        assert_eq!(n, nfe, "{extra:?}");
        bytes
    };
    let a = sample(
        &[
            "--solver",
            "seeds-2",
            "--eta",
            "0.5",
            "--r",
            "0.3",
            "--solver-type",
            "phi_2",
        ],
        &out("a.npy"),
        11,
    );
    let b = sample(
        &["--solver", "seeds-2(eta=0.5,r=0.3,solver_type=phi_2)"],
        &out("b.npy"),
        11,
    );
    assert_eq!(a, b);
    assert_ne!(a, sample(&["--solver", "seeds-2"], &out("c.npy"), 11));
    let d = sample(
        &[
            "--solver",
            "seeds-3",
            "--r-1",
            "0.25",
            "--r-2",
            "0.8",
            "--s-noise",
            "0.9",
        ],
        &out("d.npy"),
        16,
    );
    let e = sample(
        &["--solver", "seeds-3(r_1=0.25,r_2=0.8,s_noise=0.9)"],
        &out("e.npy"),
        16,
    );
    assert_eq!(d, e);
    assert_ne!(d, sample(&["--solver", "seeds-3"], &out("f.npy"), 16));
    let never = out("never.npy");
    for (extra, needle) in [
        (
            vec!["--solver", "seeds-3", "--r-1", "0.8"],
            "r_2 = 0.6666666666666666: must be > r_1 and <= 1",
        ),
        (
            vec!["--solver", "seeds-2", "--r", "0"],
            "r = 0: must be > 0 and <= 1",
        ),
        (
            vec!["--solver", "seeds-2", "--solver-type", "phi_3"],
            "unknown solver type 'phi_3' for seeds-2 (known: phi_1, phi_2)",
        ),
        (
            vec!["--solver", "seeds-2", "--r-1", "0.3"],
            "--r-1 does not apply to the seeds-2 sampler",
        ),
        (
            vec!["--solver", "seeds-3", "--r", "0.3"],
            "--r does not apply to the seeds-3 sampler",
        ),
        (
            vec!["--solver", "euler-cfgpp", "--eta", "0.5"],
            "--eta does not apply to the euler-cfgpp sampler",
        ),
    ] {
        assert_bad_sample(&extra, "6", needle, &never);
    }
}

#[test]
fn exact_inversion_writes_a_latent_pair_that_samples_the_data_again() {
    // belm, bdia and edict on the 8-mode ring in float64: `--invert` writes the latent pair
    // [2, N, 2] in float64 and reports "pair"; `--roundtrip` decodes it to the data to rounding;
    // `--noise` takes the pair file back to the data (a float32 copy: its rounding carried
    // through the decoding); a sampler without exact inversion refuses the pair file.
    let dir = tempfile::tempdir().unwrap();
    let p = |name: &str| dir.path().join(name);
    let s = |path: &Path| path.to_str().unwrap().to_owned();
    for solver in ["belm", "bdia", "edict"] {
        let d = gmm8_samples(&p("d.npy"), solver, "10", "64", &["--dtype", "float64"]);
        // The same sampler and grid in float64, with `io` (input flag, file) and `--out out`.
        let sample = |io: [&str; 2], out: &str, extra: &[&str]| {
            let (input, out) = (s(&p(io[1])), s(&p(out)));
            let mut args = vec![
                "sample",
                "--denoiser",
                "builtin:gmm8",
                "--solver",
                solver,
                "--steps",
                "10",
                "--dtype",
                "float64",
                "--device",
                "cpu",
                io[0],
                &input,
                "--out",
                &out,
            ];
            args.extend(extra);
            let o = run(&args);
            assert!(o.status.success(), "{solver}: {}", stderr(&o));
            serde_json::from_slice::<serde_json::Value>(&o.stdout).unwrap()
        };
        let line = sample(["--invert", "d.npy"], "zz.npy", &["--roundtrip"]);
        assert_eq!(line["pair"], true, "{line}");
        // Its record beside it: the sampler and the grid's levels that decode it.
        let record: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(p("zz.npy.json")).unwrap()).unwrap();
        assert_eq!(record["sampler"], solver, "{record}");
        assert_eq!(record["steps"], 10);
        assert_eq!(record["sigmas"][0], 80.0);
        assert_eq!(record["sigmas"].as_array().unwrap().len(), 10);
        let rt = line["roundtrip_rms"].as_f64().unwrap();
        assert!(rt < 1e-10, "{solver}: roundtrip {rt}");
        // The pair in the run's precision (float64 here).
        let bytes = std::fs::read(p("zz.npy")).unwrap();
        let npy = npyz::NpyFile::new(&bytes[..]).unwrap();
        assert_eq!(npy.dtype().descr().trim_matches('\''), "<f8");
        assert_eq!(npy.shape(), &[2, 64, 2]);
        let pair = npy.into_vec::<f64>().unwrap();
        write_npy(&p("zz32.npy"), &[2, 64, 2], &pair, true);
        let worst = |pair_file: &str| {
            sample(["--noise", pair_file], "d2.npy", &[]);
            let d2 = read_f32_npy(&p("d2.npy")).1;
            d.iter()
                .zip(&d2)
                .map(|(a, b)| (a - b).abs())
                .fold(0.0f32, f32::max)
        };
        // From the float64 pair: the data to their own float32 rounding.
        let exact = worst("zz.npy");
        assert!(exact < 1e-5, "{solver}: decoded off by {exact}");
        // From a float32 copy, measured: belm 1.5e-7; bdia 3.5e-3 and edict 3.4e-3, whose
        // decodings amplify the latents' float32 rounding about 700-fold (a perturbation of the
        // pair that is not one of the flow is not damped).
        let from32 = worst("zz32.npy");
        let tol = if solver == "belm" { 1e-5 } else { 2e-2 };
        assert!(
            from32 < tol,
            "{solver}: decoded from float32 off by {from32}"
        );
        // --save-noise keeps the pair as it was given.
        let saved = s(&p("saved.npy"));
        sample(["--noise", "zz.npy"], "d3.npy", &["--save-noise", &saved]);
        assert_eq!(std::fs::read(p("saved.npy")).unwrap(), bytes, "{solver}");
        assert!(p("saved.npy.json").exists());
        // A pair takes no analytical first step, and for the two-step samplers at least 2
        // steps.
        // (The float32 copy has no record: its grid is not checked, so the step count is.)
        // The record refuses another step count, grid or sampler.
        let other = if solver == "belm" { "bdia" } else { "belm" };
        let (zz, bad) = (s(&p("zz.npy")), s(&p("bad.npy")));
        let zz32 = s(&p("zz32.npy"));
        for (flags, needle) in [
            (vec!["--steps", "10", "--afs"], "analytical first step"),
            (vec!["--steps", "1", "--noise", &zz32], "at least 2 steps"),
            (vec!["--steps", "12"], "inverted on a grid of 10 steps"),
            (
                vec!["--steps", "10", "--rho", "5"],
                "inverted on a grid of 10 steps",
            ),
            (
                vec!["--steps", "10", "--solver", other],
                &format!("inverted by {solver}"),
            ),
        ] {
            if solver == "edict" && flags[1] == "1" {
                continue;
            }
            let with_solver = flags.contains(&"--solver");
            let with_noise = flags.contains(&"--noise");
            let mut args = vec![
                "sample",
                "--denoiser",
                "builtin:gmm8",
                "--dtype",
                "float64",
                "--device",
                "cpu",
                "--out",
                &bad,
            ];
            if !with_solver {
                args.extend(["--solver", solver]);
            }
            if !with_noise {
                args.extend(["--noise", &zz]);
            }
            args.extend(flags);
            assert_bad(&args, needle, &p("bad.npy"));
        }
    }
    // --mix-weight and --gamma set the parameters the config keys set.
    for (flags, label) in [
        (["--mix-weight", "0.8"], "edict(mix_weight=0.8)"),
        (["--gamma", "0.5"], "bdia(gamma=0.5)"),
    ] {
        let solver = label.split('(').next().unwrap();
        let by_flag = gmm8_samples(&p("f.npy"), solver, "6", "16", &flags);
        let by_key = gmm8_samples(&p("k.npy"), label, "6", "16", &[]);
        let default = gmm8_samples(&p("n.npy"), solver, "6", "16", &[]);
        assert_eq!(by_flag, by_key, "{label}");
        assert_ne!(by_flag, default, "{label}");
    }
    // The pair file is not noise for a sampler without exact inversion.
    let (zz, bad) = (s(&p("zz.npy")), s(&p("bad.npy")));
    assert_bad(
        &[
            "sample",
            "--denoiser",
            "builtin:gmm8",
            "--solver",
            "heun",
            "--steps",
            "4",
            "--device",
            "cpu",
            "--noise",
            &zz,
            "--out",
            &bad,
        ],
        "has shape [2, 64, 2], expected [N, 2]",
        &p("bad.npy"),
    );
}

#[test]
fn sdedit_starts_from_noised_data_partway_down_the_grid() {
    // N((1, -0.5), diag(1, 0.25)): the probability-flow ODE from level s to 0 maps x to
    // mu + sqrt(v / (v + s^2)) (x - mu) in each coordinate, so a run from data x0 noised to s,
    // x0 + s z, has an exact end to compare with.
    let dir = tempfile::tempdir().unwrap();
    let d = |f: &str| dir.path().join(f).to_str().unwrap().to_string();
    std::fs::write(
        d("g.json"),
        r#"{"mean": [1.0, -0.5], "covariance": [[1.0, 0.0], [0.0, 0.25]]}"#,
    )
    .unwrap();
    let model = format!("gaussian:{}", d("g.json"));
    let x0: Vec<f64> = (0..64)
        .flat_map(|i| {
            let t = i as f64 / 63.0;
            [1.0 + 2.0 * (t - 0.5), -0.5 + (3.0 * t).sin() * 0.5]
        })
        .collect();
    write_npy(Path::new(&d("x0.npy")), &[64, 2], &x0, false);
    let karras = |n: usize, i: usize| {
        let (a, b) = (80f64.powf(1.0 / 7.0), 0.002f64.powf(1.0 / 7.0));
        (a + i as f64 / (n - 1) as f64 * (b - a)).powi(7)
    };
    let sdedit = |extra: &[&str], out: &str| -> serde_json::Value {
        let o = run(&[
            &[
                "sample",
                "--denoiser",
                &model,
                "--device",
                "cpu",
                "--init",
                &d("x0.npy"),
                "--out",
                &d(out),
            ][..],
            extra,
        ]
        .concat());
        assert!(o.status.success(), "{extra:?}: {}", stderr(&o));
        serde_json::from_slice(&o.stdout).unwrap()
    };
    // diffusers' strength: of 1600 steps the last 800 run, from the grid's level 800 (Heun's
    // error against the exact map: 2.5e-3, 1.5e-4, 4.3e-6 at 100, 400, 1600 steps).
    let line = sdedit(
        &[
            "--solver",
            "heun",
            "--steps",
            "1600",
            "--strength",
            "0.5",
            "--dtype",
            "float64",
            "--save-noise",
            &d("z.npy"),
        ],
        "x.npy",
    );
    assert_eq!(line["steps_run"], 800);
    assert_eq!(line["nfe"], 1599);
    assert_eq!(line["strength"], 0.5);
    let s = line["sigma_start"].as_f64().unwrap();
    assert!((s - karras(1600, 800)).abs() <= 1e-12 * s, "{line}");
    let (_, z) = read_f32_npy(Path::new(&d("z.npy")));
    let (shape, x) = read_f32_npy(Path::new(&d("x.npy")));
    assert_eq!(shape, [64, 2]);
    let (mu, v) = ([1.0, -0.5], [1.0, 0.25]);
    let mut worst = 0f64;
    for i in 0..128 {
        let c = i % 2;
        let xs = x0[i] + s * z[i] as f64;
        let want = mu[c] + (v[c] / (v[c] + s * s)).sqrt() * (xs - mu[c]);
        worst = worst.max((x[i] as f64 - want).abs());
    }
    assert!(worst < 2e-5, "max error {worst} against the exact ODE map");
    // Not the run from noise alone: the data set where it ends.
    let far = (0..128)
        .map(|i| (x[i] as f64 - x0[i]).abs())
        .fold(0f64, f64::max);
    assert!(far < 3.0 * s, "{far}");
    // strength 0.3 of 10 steps: the last 3; ComfyUI's denoise 0.5 of 10 steps: the last 10 of
    // a grid of 20.
    let line = sdedit(
        &["--solver", "euler", "--steps", "10", "--strength", "0.3"],
        "a.npy",
    );
    assert_eq!(
        (line["steps_run"].as_u64(), line["nfe"].as_u64()),
        (Some(3), Some(3))
    );
    let s = line["sigma_start"].as_f64().unwrap();
    assert!((s - karras(10, 7)).abs() <= 1e-12 * s, "{line}");
    let line = sdedit(
        &["--solver", "euler", "--steps", "10", "--denoise", "0.5"],
        "b.npy",
    );
    assert_eq!(
        (line["steps_run"].as_u64(), line["nfe"].as_u64()),
        (Some(10), Some(10))
    );
    let s = line["sigma_start"].as_f64().unwrap();
    assert!((s - karras(20, 10)).abs() <= 1e-12 * s, "{line}");
    // The same noise from a file gives the same run as from the seed (another --seed: the
    // file's noise is what runs).
    let line = sdedit(
        &[
            "--solver",
            "euler",
            "--steps",
            "10",
            "--denoise",
            "0.5",
            "--save-noise",
            &d("zb.npy"),
        ],
        "b2.npy",
    );
    assert_eq!(line["nfe"], 10);
    sdedit(
        &[
            "--solver",
            "euler",
            "--steps",
            "10",
            "--denoise",
            "0.5",
            "--noise",
            &d("zb.npy"),
            "--seed",
            "7",
        ],
        "b3.npy",
    );
    assert_eq!(
        std::fs::read(d("b2.npy")).unwrap(),
        std::fs::read(d("b3.npy")).unwrap()
    );
    // Bad input: exit 2, nothing written.
    write_npy(Path::new(&d("wide.npy")), &[4, 3], &[0.0; 12], true);
    write_npy(Path::new(&d("z5.npy")), &[5, 2], &[0.0; 10], true);
    let out = dir.path().join("bad.npy");
    let bad = |extra: &[&str], needle: &str| {
        let args = [
            &[
                "sample",
                "--denoiser",
                &model,
                "--solver",
                "euler",
                "--steps",
                "10",
                "--device",
                "cpu",
                "--out",
                out.to_str().unwrap(),
            ][..],
            extra,
        ]
        .concat();
        assert_bad(&args, needle, &out);
    };
    let init = d("x0.npy");
    bad(&["--init", &init], "--init needs --strength");
    bad(&["--num", "4", "--strength", "0.5"], "apply to --init");
    bad(&["--init", &init, "--strength", "0"], "must be in (0, 1]");
    bad(&["--init", &init, "--denoise", "1.5"], "must be in (0, 1]");
    bad(&["--init", &init, "--strength", "0.05"], "runs no step");
    bad(&["--init", &init, "--strength", "0.5", "--afs"], "--afs");
    bad(
        &["--init", &init, "--strength", "0.5", "--denoise", "0.5"],
        "cannot be used with",
    );
    bad(
        &["--init", &init, "--strength", "0.5", "--num", "4"],
        "cannot be used with",
    );
    bad(
        &["--init", &d("wide.npy"), "--strength", "0.5"],
        "init data",
    );
    bad(
        &[
            "--init",
            &init,
            "--strength",
            "0.5",
            "--noise",
            &d("z5.npy"),
        ],
        "as many of each",
    );
    bad(&["--init", &d("none.npy"), "--strength", "0.5"], "none.npy");
}

#[test]
fn fuzzed_inputs_are_errors_naming_the_problem() {
    // Inputs a fuzzing session found taken without complaint, or crashing: exit 2, one line,
    // nothing written.
    let dir = tempfile::tempdir().unwrap();
    let d = |f: &str| dir.path().join(f).to_str().unwrap().to_string();
    let out = dir.path().join("out.toml");
    let og = |extra: &[&str], needle: &str| {
        let args = [
            &[
                "optimize-grid",
                "--denoiser",
                "builtin:gmm8",
                "--steps",
                "4",
                "--device",
                "cpu",
                "--out",
                out.to_str().unwrap(),
            ][..],
            extra,
        ]
        .concat();
        assert_bad(&args, needle, &out);
    };
    // Warm-up sample counts that cannot be allocated (an abort before), and a seed the grid
    // file cannot hold (an error after the solve before).
    og(
        &["--samples", "99999999999"],
        "samples must be at most 1048576",
    );
    og(
        &["--method", "oss", "--samples", "2000000000"],
        "samples must be at most 1048576",
    );
    og(
        &["--samples", "1000000", "--teacher-steps", "3000"],
        "more than 4294967296",
    );
    og(
        &["--samples", "4", "--seed", "18446744073709551615"],
        "seed must be at most 9223372036854775807",
    );
    // A grid file's [grid] table is read whole, and its SDE must be the run's.
    let npy = dir.path().join("x.npy");
    let sample = |extra: &[&str], needle: &str| {
        let args = [
            &[
                "sample",
                "--denoiser",
                "builtin:gmm8",
                "--solver",
                "euler",
                "--steps",
                "4",
                "--num",
                "4",
                "--device",
                "cpu",
                "--out",
                npy.to_str().unwrap(),
            ][..],
            extra,
        ]
        .concat();
        assert_bad(&args, needle, &npy);
    };
    for (i, (extra, needle)) in [
        ("bogus = 3", "unknown field `bogus`"),
        ("sigma_min = \"x\"", "invalid type"),
        ("sigma_min = 100.0\nsigma_max = 80.0", "sigma_min"),
        ("sigma_min = nan", "sigma_min"),
        ("sde = \"zzz\"", "zzz"),
        ("sde = \"vp\"", "pass --sde vp"),
    ]
    .into_iter()
    .enumerate()
    {
        let g = d(&format!("g{i}.toml"));
        std::fs::write(
            &g,
            format!("[grid]\nplacement = {{ kind = \"karras\" }}\n{extra}\n"),
        )
        .unwrap();
        sample(&["--grid", &g], needle);
    }
    let g = d("g5.toml");
    let sample_ok = |grid: &str, sde: &str| {
        let o = run(&[
            "sample",
            "--denoiser",
            "builtin:gmm8",
            "--solver",
            "euler",
            "--steps",
            "4",
            "--num",
            "4",
            "--device",
            "cpu",
            "--grid",
            grid,
            "--sde",
            sde,
            "--out",
            npy.to_str().unwrap(),
        ]);
        assert!(o.status.success(), "{}", stderr(&o));
        std::fs::remove_file(&npy).unwrap();
    };
    sample_ok(&g, "vp");
    // A file's rho and steps_offset are set in the file.
    sample(
        &["--grid", &g, "--sde", "vp", "--rho", "5"],
        "set rho in the [grid] placement of",
    );
    sample(
        &["--grid", &g, "--sde", "vp", "--steps-offset", "1"],
        "set steps_offset in the [grid] placement of",
    );
    // The file's SDE is compared as a process: flow:3 is flow:3.0.
    let g = d("g-flow.toml");
    std::fs::write(
        &g,
        "[grid]\nplacement = { kind = \"karras\" }\nsde = \"flow:3\"\nsigma_max = 50.0\n",
    )
    .unwrap();
    sample_ok(&g, "flow:3.0");
    // The file's sigma_min and sigma_max are the grid's ends, unless the flags give them.
    let g = d("g-range.toml");
    std::fs::write(
        &g,
        "[grid]\nplacement = { kind = \"karras\" }\nsigma_min = 0.01\nsigma_max = 50.0\n",
    )
    .unwrap();
    for (extra, lo, hi) in [
        (&[][..], 0.01, 50.0),
        (&["--sigma-max", "40"][..], 0.01, 40.0),
    ] {
        let o = run(&[
            &[
                "sample",
                "--denoiser",
                "builtin:gmm8",
                "--solver",
                "euler",
                "--steps",
                "4",
                "--num",
                "4",
                "--device",
                "cpu",
                "--grid",
                &g,
                "--out",
                npy.to_str().unwrap(),
            ][..],
            extra,
        ]
        .concat());
        assert!(o.status.success(), "{}", stderr(&o));
        let line: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        assert_eq!(line["sigma_min"], lo, "{extra:?}");
        assert_eq!(line["sigma_max"], hi, "{extra:?}");
        std::fs::remove_file(&npy).unwrap();
    }
    // An output naming an input (through `..` too) is refused, and the input is untouched.
    let z = d("z.npy");
    write_npy(
        Path::new(&z),
        &[4, 2],
        &[0.1, -0.3, 1.2, 0.4, -0.7, 0.9, 0.0, 2.0],
        false,
    );
    let ck = d("victim.safetensors");
    std::fs::copy(repo("runs/gmm8/checkpoint.safetensors"), &ck).unwrap();
    let dir_s = dir.path().to_str().unwrap().to_string();
    let gmm = d("m.json");
    std::fs::copy(repo("experiments/gmm8.json"), &gmm).unwrap();
    let gmm_spec = format!("gmm:{gmm}");
    let before = (
        std::fs::read(&z).unwrap(),
        std::fs::read(&ck).unwrap(),
        std::fs::read(&gmm).unwrap(),
    );
    let z_dotted = format!("{}/../{}/z.npy", dir.path().display(), {
        dir.path().file_name().unwrap().to_str().unwrap()
    });
    for (args, needle) in [
        (
            vec![
                "--denoiser",
                "builtin:gmm8",
                "--noise",
                &z,
                "--out",
                &z_dotted,
            ],
            "which --noise reads",
        ),
        (
            vec!["--checkpoint", &ck, "--num", "4", "--out", &ck],
            "which --checkpoint reads",
        ),
        (
            vec!["--denoiser", &gmm_spec, "--num", "4", "--out", &gmm],
            "which --denoiser reads",
        ),
        (
            vec!["--denoiser", "builtin:gmm8", "--num", "4", "--out", &dir_s],
            "is a folder; give a file path",
        ),
    ] {
        let o = run(&[
            &[
                "sample", "--solver", "euler", "--steps", "2", "--device", "cpu",
            ][..],
            &args,
        ]
        .concat());
        assert_eq!(o.status.code(), Some(2), "{args:?}: {}", stderr(&o));
        assert!(stderr(&o).contains(needle), "{args:?}: {}", stderr(&o));
    }
    assert_eq!(
        (
            std::fs::read(&z).unwrap(),
            std::fs::read(&ck).unwrap(),
            std::fs::read(&gmm).unwrap()
        ),
        before
    );
    // --quantize has no chain to quantize on an exact model.
    sample(&["--quantize"], "--quantize applies to a trained network");
    // --png naming the file --out or --save-noise writes would lose one of them.
    let digits = repo("runs/digits/checkpoint.safetensors");
    let same = npy.to_str().unwrap();
    for extra in [
        &["--png", same][..],
        &["--png", &d("n.png"), "--save-noise", &d("n.png")][..],
    ] {
        let args = [
            &[
                "sample",
                "--checkpoint",
                digits.to_str().unwrap(),
                "--solver",
                "euler",
                "--steps",
                "2",
                "--num",
                "2",
                "--device",
                "cpu",
                "--out",
                same,
            ][..],
            extra,
        ]
        .concat();
        assert_bad(&args, "--png names", &npy);
        assert!(!dir.path().join("n.png").exists());
    }
    // eval-digits: guidance needs a class-conditional network.
    let png = dir.path().join("e.png");
    assert_bad(
        &[
            "eval-digits",
            "--checkpoint",
            repo("runs/digits-learned/checkpoint.safetensors")
                .to_str()
                .unwrap(),
            "--steps",
            "2",
            "--guidance",
            "2",
            "--device",
            "cpu",
            "--png",
            png.to_str().unwrap(),
        ],
        "need a class-conditional checkpoint",
        &png,
    );
}

#[test]
fn float64_samples_beyond_float32_are_an_error_not_infinities() {
    // An SDEdit run in float64 from data near 1e39 ends there; the float32 output cannot hold
    // it: exit 2 and no file, not a file of infinities.
    let dir = tempfile::tempdir().unwrap();
    let init = dir.path().join("i.npy");
    write_npy(&init, &[2, 2], &[1e39, 0.5, 0.1, 0.2], false);
    let out = dir.path().join("o.npy");
    assert_bad(
        &[
            "sample",
            "--denoiser",
            "builtin:gmm8",
            "--solver",
            "euler",
            "--steps",
            "5",
            "--strength",
            "0.2",
            "--init",
            init.to_str().unwrap(),
            "--dtype",
            "float64",
            "--device",
            "cpu",
            "--out",
            out.to_str().unwrap(),
        ],
        "beyond the range of Float",
        &out,
    );
}

#[test]
fn discard_penultimate_runs_comfyuis_ksampler_grid() {
    // ComfyUI's KSampler for dpm_2, dpm_2_ancestral, uni_pc and uni_pc_bh2: the grid of one
    // step more without its last nonzero level.
    let dir = tempfile::tempdir().unwrap();
    let d = |f: &str| dir.path().join(f).to_str().unwrap().to_string();
    let karras = |n: usize, i: usize| {
        let (a, b) = (80f64.powf(1.0 / 7.0), 0.002f64.powf(1.0 / 7.0));
        (a + i as f64 / (n - 1) as f64 * (b - a)).powi(7)
    };
    let sample = |extra: &[&str], out: &str| -> (serde_json::Value, Vec<u8>) {
        let o = run(&[
            &[
                "sample",
                "--denoiser",
                "builtin:gmm8",
                "--solver",
                "dpm2",
                "--steps",
                "5",
                "--device",
                "cpu",
                "--out",
                &d(out),
            ][..],
            extra,
        ]
        .concat());
        assert!(o.status.success(), "{extra:?}: {}", stderr(&o));
        (
            serde_json::from_slice(&o.stdout).unwrap(),
            std::fs::read(d(out)).unwrap(),
        )
    };
    let (line, flag) = sample(&["--discard-penultimate", "--num", "16"], "a.npy");
    assert_eq!(line["discard_penultimate"], true);
    assert_eq!(line["nfe"], 9);
    let levels: Vec<f64> = line["levels"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap())
        .collect();
    assert_eq!(levels.len(), 5);
    for (i, l) in levels.iter().enumerate() {
        assert!((l - karras(6, i)).abs() <= 1e-12 * l.max(1.0), "{levels:?}");
    }
    // The same levels given as a list, and a grid file that says discard_penultimate.
    let list: Vec<String> = levels.iter().map(|v| format!("{v:?}")).collect();
    let (_, listed) = sample(
        &[
            "--num",
            "16",
            "--grid",
            &format!("levels:{}", list.join(",")),
        ],
        "b.npy",
    );
    assert_eq!(flag, listed);
    std::fs::write(
        d("g.toml"),
        "[grid]\nplacement = { kind = \"karras\" }\ndiscard_penultimate = true\n",
    )
    .unwrap();
    let (_, filed) = sample(&["--num", "16", "--grid", &d("g.toml")], "c.npy");
    assert_eq!(flag, filed);
    let (_, plain) = sample(&["--num", "16"], "d.npy");
    assert_ne!(flag, plain);
    // With --denoise, ComfyUI discards on the grid of int(steps / denoise) steps, then takes its
    // tail: 5 steps at 0.5 run from level 5 of the 11-level Karras grid.
    write_npy(
        Path::new(&d("x0.npy")),
        &[16, 2],
        &(0..32).map(|i| (i as f64 * 0.37).sin()).collect::<Vec<_>>(),
        false,
    );
    let (line, _) = sample(
        &[
            "--discard-penultimate",
            "--init",
            &d("x0.npy"),
            "--denoise",
            "0.5",
        ],
        "e.npy",
    );
    let start = line["sigma_start"].as_f64().unwrap();
    assert!((start - karras(11, 5)).abs() <= 1e-12 * start, "{line}");
    assert_eq!(line["steps_run"], 5);
    // Exact inversion on the discarded grid: the record says so, and decoding without the flag
    // is refused naming it.
    let o = run(&[
        "sample",
        "--denoiser",
        "builtin:gmm8",
        "--solver",
        "belm",
        "--steps",
        "5",
        "--device",
        "cpu",
        "--discard-penultimate",
        "--invert",
        &d("a.npy"),
        "--out",
        &d("pair.npy"),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let line: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(line["discard_penultimate"], true, "{line}");
    let record: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(d("pair.npy.json")).unwrap()).unwrap();
    assert_eq!(record["discard_penultimate"], true, "{record}");
    let o = run(&[
        "sample",
        "--denoiser",
        "builtin:gmm8",
        "--solver",
        "belm",
        "--steps",
        "5",
        "--device",
        "cpu",
        "--noise",
        &d("pair.npy"),
        "--out",
        &d("back.npy"),
    ]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("--discard-penultimate, from sigma"),
        "{}",
        stderr(&o)
    );
    // Placements listed per count have no grid of one step more; optimize-grid runs its
    // teacher on the whole grid.
    let out = dir.path().join("bad.npy");
    for (extra, needle) in [
        (
            &[
                "--solver",
                "euler",
                "--discard-penultimate",
                "--grid",
                "gits",
            ][..],
            "the gits placement lists its levels",
        ),
        (
            &["--solver", "dpm-adaptive", "--discard-penultimate"][..],
            "leave out --discard-penultimate",
        ),
    ] {
        assert_bad_sample(extra, "3", needle, &out);
    }
    let o = run(&[
        "optimize-grid",
        "--denoiser",
        "builtin:gmm8",
        "--steps",
        "4",
        "--device",
        "cpu",
        "--discard-penultimate",
        "--out",
        &d("opt.toml"),
    ]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("does not apply to optimize-grid"),
        "{}",
        stderr(&o)
    );
    assert!(!Path::new(&d("opt.toml")).exists());
}
