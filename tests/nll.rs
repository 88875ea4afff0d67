//! The probability-flow likelihood against the exact density of a mixture.

use scoreflow::nll::log_likelihood;
use scoreflow::solvers::{Denoiser, GaussianMixture};
use tch::{Device, Kind};

#[test]
fn ode_likelihood_matches_the_exact_mixture_density() {
    let gmm = GaussianMixture::new(
        vec![0.3, 0.7],
        vec![vec![-1.0, 0.5], vec![1.5, -0.5]],
        vec![vec![0.3, 0.6], vec![0.5]],
        Device::Cpu,
    )
    .unwrap();
    let x0 = gmm.sample(200, 3, Device::Cpu);
    let (smin, smax) = (0.01, 80.0);
    let exact = gmm.log_density(&x0, smin).unwrap();
    let d = |x: &tch::Tensor, s: f64| -> anyhow::Result<tch::Tensor> { Ok(gmm.denoise(x, s)?) };
    let (ll, nfe) = log_likelihood(&d, &x0, smin, smax, 128, None, 0).unwrap();
    assert_eq!(nfe, 256);
    let diff = (&ll - &exact).abs();
    let (mean_diff, max_diff) = (
        diff.mean(Kind::Double).double_value(&[]),
        diff.max().double_value(&[]),
    );
    println!(
        "exact divergence: mean |diff| {mean_diff:.2e}, max {max_diff:.2e} nats; exact NLL {:.4}",
        -exact.mean(Kind::Double).double_value(&[])
    );
    assert!(
        mean_diff < 0.02 && max_diff < 0.1,
        "mean {mean_diff} max {max_diff}"
    );
    // Hutchinson's estimator is unbiased: the mean error is within a few standard errors of the
    // per-sample errors (plus the discretization error above).
    let (lh, _) = log_likelihood(&d, &x0, smin, smax, 128, Some(8), 1).unwrap();
    let e = lh - &exact;
    let (bias, se) = (
        e.mean(Kind::Double).double_value(&[]),
        e.std(true).double_value(&[]) / (200f64).sqrt(),
    );
    println!("Hutchinson (8 probes): mean error {bias:.3} nats, standard error {se:.3}");
    assert!(
        bias.abs() < 4.0 * se + 0.02,
        "Hutchinson mean error {bias} (se {se})"
    );
    // A coarse integration is visibly worse than a fine one: the check can fail.
    let (coarse, _) = log_likelihood(&d, &x0, smin, smax, 4, None, 0).unwrap();
    assert!((coarse - &exact).abs().mean(Kind::Double).double_value(&[]) > 5.0 * mean_diff);
}

#[test]
fn nll_command_reports_the_ode_and_exact_values() {
    let bin = env!("CARGO_BIN_EXE_scoreflow");
    let o = std::process::Command::new(bin)
        .args([
            "nll",
            "--denoiser",
            "builtin:gmm8",
            "--num",
            "100",
            "--steps",
            "128",
            "--device",
            "cpu",
        ])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let (nll, exact) = (
        v["nll_nats"].as_f64().unwrap(),
        v["exact_nll_nats"].as_f64().unwrap(),
    );
    assert!((nll - exact).abs() < 0.03, "{nll} vs {exact}");
    assert_eq!(v["nfe"], 256);
    let bad = std::process::Command::new(bin)
        .args(["nll", "--denoiser", "builtin:gmm8", "--steps", "0"])
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(2));
}

/// Gaussian data N(0, c^2 I) with its exact denoiser and, as the variance output, each reverse
/// step's optimal variance `beta~_j + coef_j^2 Var(x0 | x_j)` (at the first level `Var(x0 |
/// x_1)`, the decoder's): then every step of the model is the exact reverse conditional
/// `q(x_{j-1} | x_j)`, on any respacing, and the bound is tight.
struct OptimalVariance {
    inner: scoreflow::solvers::GaussianDenoiser,
    c: f64,
    levels: Vec<f64>,
}

impl Denoiser for OptimalVariance {
    fn denoise(&self, x: &tch::Tensor, sigma: f64) -> scoreflow::solvers::Result<tch::Tensor> {
        self.inner.denoise(x, sigma)
    }
    fn denoise_with_variance(
        &self,
        x: &tch::Tensor,
        sigma: f64,
    ) -> scoreflow::solvers::Result<(tch::Tensor, Option<tch::Tensor>)> {
        let j = self.levels.iter().position(|&s| s == sigma).unwrap();
        let [coef, log_post, log_beta] =
            scoreflow::loss::vlb_tables(&scoreflow::nll::chain_through(&self.levels));
        let c2 = self.c * self.c;
        let var0 = c2 * sigma * sigma / (c2 + sigma * sigma);
        let opt = if j == 0 {
            var0
        } else {
            log_post[j].exp() + coef[j].powi(2) * var0
        };
        let v = 2.0 * (opt.ln() - log_post[j]) / (log_beta[j] - log_post[j]) - 1.0;
        Ok((self.denoise(x, sigma)?, Some(x.ones_like() * v)))
    }
}

#[test]
fn the_variational_bound_is_tight_for_the_exact_reverse_chain() {
    use scoreflow::loss::Decoder;
    use scoreflow::nll::variational_bound;
    use scoreflow::solvers::samplers::DdpmVariance;
    use scoreflow::solvers::sde::DdpmChain;
    let (c, dim, n) = (0.1f64, 8usize, 4000usize);
    let inner = scoreflow::solvers::GaussianDenoiser::new(
        vec![0.0; dim],
        (0..dim)
            .map(|i| (0..dim).map(|j| if i == j { c * c } else { 0.0 }).collect())
            .collect(),
        Device::Cpu,
    )
    .unwrap();
    let x0 = inner
        .sample_from(&scoreflow::job::initial_noise(5, n, dim, Device::Cpu, Kind::Double).unwrap());
    // -log q(x0) in bits per dimension, and its standard error.
    let exact = -inner.log_density(&x0, 0.0).unwrap() / (dim as f64 * std::f64::consts::LN_2);
    let entropy = exact.mean(Kind::Double).double_value(&[]);
    let chain = DdpmChain::linear(1000, 1e-4, 0.02);
    let all = chain.sigmas();
    for stride in [10usize, 40] {
        // Every 10th level of DDPM's chain (100 steps), and every 40th (25 steps).
        let levels: Vec<f64> = all
            .iter()
            .copied()
            .skip(stride - 1)
            .step_by(stride)
            .collect();
        let den = OptimalVariance {
            inner: scoreflow::solvers::GaussianDenoiser::new(
                vec![0.0; dim],
                (0..dim)
                    .map(|i| (0..dim).map(|j| if i == j { c * c } else { 0.0 }).collect())
                    .collect(),
                Device::Cpu,
            )
            .unwrap(),
            c,
            levels: levels.clone(),
        };
        let bound = |variance| {
            let b = variational_bound(&den, &x0, &levels, variance, Decoder::Gaussian, 1).unwrap();
            let t = b.total().to_kind(Kind::Double);
            // The bound minus -log q(x0), per sample: its mean and standard error.
            let gap = &t - &exact;
            (
                t.mean(Kind::Double).double_value(&[]),
                gap.mean(Kind::Double).double_value(&[]),
                gap.std(true).double_value(&[]) / (n as f64).sqrt(),
                b.prior.mean(Kind::Double).double_value(&[]),
            )
        };
        let (learned, gap, se, prior) = bound(DdpmVariance::Learned);
        let (small, ..) = bound(DdpmVariance::Small);
        let (large, ..) = bound(DdpmVariance::Large);
        println!(
            "{} levels: bound with the optimal variance {learned:.4} bits/dim (gap {gap:.2e} +- {se:.1e}, prior {prior:.1e}), small {small:.4}, large {large:.4}, -log q(x0) {entropy:.4}",
            levels.len()
        );
        // Tight up to the prior's KL (q(x_T) is not exactly N(0, I)) and Monte Carlo error.
        assert!(
            (gap - prior).abs() < 4.0 * se + 1e-3,
            "gap {gap} prior {prior} se {se}"
        );
        // The fixed variances are looser.
        assert!(
            small > learned + 0.01 && large > learned + 0.01,
            "small {small} large {large} learned {learned}"
        );
    }
}

#[test]
fn nll_bound_command_reports_the_bound_and_refuses_bad_flags() {
    let bin = env!("CARGO_BIN_EXE_scoreflow");
    let run = |args: &[&str]| std::process::Command::new(bin).args(args).output().unwrap();
    let bound = |variance: &str| {
        let o = run(&[
            "nll",
            "--denoiser",
            "builtin:gmm8",
            "--bound",
            "--steps",
            "50",
            "--num",
            "500",
            "--variance",
            variance,
            "--device",
            "cpu",
        ]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        serde_json::from_slice::<serde_json::Value>(&o.stdout).unwrap()
    };
    // Respaced to 50 steps, the posterior variance makes a loose bound (improved DDPM, Sec. 4).
    let small = bound("small")["nll_nats"].as_f64().unwrap();
    let v = bound("large");
    let (nll, exact) = (
        v["nll_nats"].as_f64().unwrap(),
        v["exact_nll_nats"].as_f64().unwrap(),
    );
    // A bound: above the data's own -log density, and not far above it with the exact
    // denoiser of the ring.
    assert!(nll > exact && nll < exact + 1.0, "{nll} vs {exact}");
    assert!(small > nll + 10.0, "small {small} large {nll}");
    assert_eq!(v["steps"], 50);
    assert_eq!(v["nfe"], 50);
    let parts = [
        "prior_bits_per_dim",
        "decoder_bits_per_dim",
        "steps_bits_per_dim",
    ]
    .map(|k| v[k].as_f64().unwrap());
    let total = v["bits_per_dim"].as_f64().unwrap();
    assert!((parts.iter().sum::<f64>() - total).abs() < 1e-5 * total.abs().max(1.0));
    for (args, needle) in [
        (
            vec!["--variance", "learned"],
            "needs a network with a learned variance output",
        ),
        (vec!["--grid", "karras"], "--bound needs a ddpm-* grid"),
        (
            vec!["--decoder", "logistic"],
            "--decoder: unknown decoder 'logistic'",
        ),
        (
            vec!["--hutchinson", "2"],
            "--hutchinson applies to the ODE likelihood",
        ),
        (
            vec!["--steps", "1"],
            "at least 2 increasing positive noise levels",
        ),
    ] {
        let mut all = vec![
            "nll",
            "--denoiser",
            "builtin:gmm8",
            "--bound",
            "--num",
            "10",
        ];
        all.extend(args);
        let o = run(&all);
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{all:?}: {err}");
        assert!(
            err.contains(needle) && !err.contains("panicked"),
            "{all:?}: {err}"
        );
    }
    let o = run(&["nll", "--denoiser", "builtin:gmm8", "--variance", "small"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("--variance applies to --bound"));
}

/// `-ln` of the mass of each value's bin (width `h`, the outermost open-ended) under
/// independent normals `N(0, s_j^2)` per column, summed over the columns: the discrete NLL
/// per point (`x`: `[N, d]` on the grid).
fn discrete_nll(x: &tch::Tensor, stds: &[f64], h: f64) -> tch::Tensor {
    let cdf = |z: tch::Tensor| ((z / std::f64::consts::SQRT_2).erf() + 1.0) * 0.5;
    let mut total = tch::Tensor::zeros([x.size()[0]], (Kind::Double, Device::Cpu));
    for (j, &s) in stds.iter().enumerate() {
        let c = x.select(1, j as i64).to_kind(Kind::Double);
        let hi = cdf((&c + h / 2.0) / s).where_self(&c.lt(1.0 - h / 2.0), &c.ones_like());
        let lo = cdf((&c - h / 2.0) / s).where_self(&c.gt(-1.0 + h / 2.0), &c.zeros_like());
        total -= (hi - lo).log();
    }
    total
}

#[test]
fn discrete_data_on_17_levels_get_discrete_likelihoods() {
    // Data: a 2-D Gaussian with standard deviations 0.5 and 0.3, rounded to 17 levels in
    // [-1, 1] (the outermost bins open-ended, as the digits' are): their discrete NLL is known.
    let dir = tempfile::tempdir().unwrap();
    let stds = [0.5, 0.3];
    let h = 2.0 / 16.0;
    let model = dir.path().join("g.json");
    std::fs::write(
        &model,
        r#"{"mean": [0.0, 0.0], "covariance": [[0.25, 0.0], [0.0, 0.09]]}"#,
    )
    .unwrap();
    tch::manual_seed(5);
    let n = 4000;
    let x = (tch::Tensor::randn([n, 2], (Kind::Double, Device::Cpu))
        * tch::Tensor::from_slice(&stds))
    .divide_scalar(h)
    .round()
    .multiply_scalar(h)
    .clamp(-1.0, 1.0);
    let data = dir.path().join("x.npy");
    scoreflow::npy::write_f32(&data, &x).unwrap();
    let entropy = discrete_nll(&x, &stds, h)
        .mean(Kind::Double)
        .double_value(&[]);
    let bin = env!("CARGO_BIN_EXE_scoreflow");
    let run = |extra: &[&str]| {
        let mut args = vec![
            "nll",
            "--denoiser",
            &*format!("gaussian:{}", model.display()),
            "--device",
            "cpu",
        ]
        .into_iter()
        .map(String::from)
        .collect::<Vec<_>>();
        if !extra.contains(&"--data") {
            args.extend(["--data".into(), data.to_str().unwrap().into()]);
        }
        args.extend(extra.iter().map(|s| s.to_string()));
        std::process::Command::new(bin)
            .args(&args)
            .output()
            .unwrap()
    };
    let json = |extra: &[&str]| {
        let o = run(extra);
        assert!(
            o.status.success(),
            "{extra:?}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        serde_json::from_slice::<serde_json::Value>(&o.stdout).unwrap()
    };
    // The ODE on dequantized points x + h (u - 1/2): an upper bound on the discrete NLL,
    // equal to the exact model's value of the same bound within the integration error, and to
    // its expectation over u in closed form, per dimension
    // (x^2 + h^2 / 12) / (2 s'^2) + ln(2 pi s'^2) / 2 - ln h, s'^2 = s^2 + sigma_min^2.
    // The gap to the discrete NLL: Jensen's (about h^2 / (24 s^2) per dimension, 0.01 nats)
    // and the outermost bins, open-ended for the data but not for the dequantization (0.05).
    let v = json(&["--levels", "17", "--steps", "256"]);
    let (ode, exact) = (
        v["nll_nats"].as_f64().unwrap(),
        v["exact_nll_nats"].as_f64().unwrap(),
    );
    let closed = stds
        .iter()
        .enumerate()
        .map(|(j, s)| {
            let s2 = s * s + 0.002f64.powi(2);
            let m2 = x
                .select(1, j as i64)
                .square()
                .mean(Kind::Double)
                .double_value(&[]);
            (m2 + h * h / 12.0) / (2.0 * s2) + 0.5 * (2.0 * std::f64::consts::PI * s2).ln() - h.ln()
        })
        .sum::<f64>();
    println!(
        "discrete NLL {entropy:.4} nats; ODE dequantized {ode:.4}, exact {exact:.4}, closed form {closed:.4}"
    );
    assert_eq!(v["num"], n);
    assert_eq!(v["levels"], 17);
    assert!((ode - exact).abs() < 0.01, "{ode} vs {exact}");
    assert!((ode - closed).abs() < 0.015, "{ode} vs {closed}");
    assert!(ode > entropy && ode < entropy + 0.1, "{ode} vs {entropy}");
    // The variational bound with the 17-level discretized decoder, on the whole chain. With
    // the exact denoiser of the discrete data (a mixture of narrow components at the 289 grid
    // points, weighted by their bins' masses): above the data's entropy (a cross-entropy) and
    // near it. With the continuous Gaussian's denoiser, looser by about the bin's
    // "dequantization" in the posterior of x_1, d ln(h / (sqrt(2 pi e) sigma_1)) = 2.2 nats.
    let mut weights = vec![];
    let mut means = vec![];
    let levels: Vec<f64> = (0..17).map(|i| -1.0 + h * i as f64).collect();
    for &a in &levels {
        for &b in &levels {
            let point = tch::Tensor::from_slice(&[a, b]).view([1, 2]);
            weights.push((-discrete_nll(&point, &stds, h)).exp().double_value(&[0]));
            means.push(vec![a, b]);
        }
    }
    let mixture = dir.path().join("discrete.json");
    std::fs::write(
        &mixture,
        serde_json::json!({"weights": weights, "means": means, "stds": vec![vec![1e-4]; 289]})
            .to_string(),
    )
    .unwrap();
    let bound_of = |spec: &str| {
        let o = std::process::Command::new(bin)
            .args(["nll", "--denoiser", spec, "--data", data.to_str().unwrap()])
            .args([
                "--bound", "--levels", "17", "--num", "500", "--device", "cpu",
            ])
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        serde_json::from_slice::<serde_json::Value>(&o.stdout).unwrap()
    };
    let first = discrete_nll(&x.narrow(0, 0, 500), &stds, h)
        .mean(Kind::Double)
        .double_value(&[]);
    let b = bound_of(&format!("gmm:{}", mixture.display()));
    let (exact_bound, gauss_bound) = (
        b["nll_nats"].as_f64().unwrap(),
        bound_of(&format!("gaussian:{}", model.display()))["nll_nats"]
            .as_f64()
            .unwrap(),
    );
    println!(
        "bound, discretized:17 decoder, first 500 points (discrete NLL {first:.4}): exact discrete denoiser {exact_bound:.4}, Gaussian's {gauss_bound:.4}"
    );
    assert_eq!(b["decoder"], "discretized:17");
    assert_eq!(b["steps"], 1000);
    assert!(
        exact_bound > first && exact_bound < first + 0.5,
        "{exact_bound} vs {first}"
    );
    assert!(
        gauss_bound > exact_bound + 1.5,
        "{gauss_bound} vs {exact_bound}"
    );
    // Errors, exit code 2: off-grid data, another level count, contradicting flags, shapes.
    let odd = dir.path().join("odd.npy");
    scoreflow::npy::write_f32(&odd, &(&x + 0.01)).unwrap();
    let wide = dir.path().join("wide.npy");
    scoreflow::npy::write_f32(
        &wide,
        &tch::Tensor::zeros([3, 3], (Kind::Double, Device::Cpu)),
    )
    .unwrap();
    for (args, needle) in [
        (vec!["--levels", "16"], "not on 16 evenly spaced levels"),
        (vec!["--levels", "1"], "--levels must be at least 2"),
        (
            vec!["--bound", "--levels", "17", "--decoder", "gaussian"],
            "contradicts --levels 17",
        ),
        (
            vec!["--bound", "--decoder", "discretized"],
            "not on 256 evenly spaced levels",
        ),
        (
            vec!["--data", odd.to_str().unwrap(), "--levels", "17"],
            "not on 17",
        ),
        (vec!["--data", wide.to_str().unwrap()], "expected [N, 2]"),
        (
            vec!["--data", "/nonexistent.npy"],
            "cannot read /nonexistent.npy",
        ),
    ] {
        let o = run(&args);
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {err}");
        assert!(
            err.contains(needle) && !err.contains("panicked"),
            "{args:?}: {err}"
        );
    }
}
