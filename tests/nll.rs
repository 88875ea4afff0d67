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
