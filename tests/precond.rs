//! Preconditionings are EDM's Table 1 and the adapters are the published parameterizations.

use scoreflow::precond::{iddpm_levels, Precond};
use scoreflow::solvers::sde::{Sde, VpLinear};
use tch::{Device, Kind, Tensor};

fn sigmas() -> Tensor {
    Tensor::from_slice(&[0.002, 0.01, 0.1, 0.5, 1.0, 3.0, 20.0, 80.0]).to_kind(Kind::Double)
}

fn max_abs(t: &Tensor) -> f64 {
    t.abs().max().double_value(&[])
}

#[test]
fn edm_weighting_times_c_out_squared_is_one() {
    for sd in [0.5, 1.4] {
        let s = sigmas();
        let c = Precond::Edm { sigma_data: sd }.coefs(&s);
        let lambda = (s.square() + sd * sd) / (&s * sd).square();
        assert!(max_abs(&(lambda * c.out.square() - 1.0)) < 1e-12);
        // EDM's c_skip, c_in and c_noise by formula.
        assert!(max_abs(&(c.skip - (s.square() + sd * sd).reciprocal() * (sd * sd))) < 1e-12);
        assert!(max_abs(&(c.inp - (s.square() + sd * sd).rsqrt())) < 1e-12);
        assert!(max_abs(&(c.noise - s.log() / 4.0)) < 1e-12);
    }
}

/// With `x = y + sigma n`, the backbone's regression target is `(y - c_skip x) / c_out`.
fn target(p: &Precond, y: &Tensor, n: &Tensor, s: &Tensor) -> Tensor {
    let c = p.coefs(s);
    let x = y + n * s.unsqueeze(1);
    (y - x * c.skip.unsqueeze(1)) / c.out.unsqueeze(1)
}

#[test]
fn adapters_regress_on_eps_x0_and_v() {
    let s = sigmas();
    let n_s = s.size()[0];
    let y = Tensor::randn([n_s, 3], (Kind::Double, Device::Cpu));
    let n = Tensor::randn([n_s, 3], (Kind::Double, Device::Cpu));
    assert!(
        max_abs(&(target(&Precond::Eps {}, &y, &n, &s) - &n)) < 1e-10,
        "eps"
    );
    assert!(
        max_abs(
            &(target(
                &Precond::Vp {
                    beta_d: 19.9,
                    beta_min: 0.1,
                    m: 1000
                },
                &y,
                &n,
                &s
            ) - &n)
        ) < 1e-10,
        "vp = eps"
    );
    assert!(
        max_abs(&(target(&Precond::X0 {}, &y, &n, &s) - &y)) < 1e-10,
        "x0"
    );
    // v = alpha eps - sigma_t x0 with alpha = 1/sqrt(1+sigma^2), sigma_t = sigma/sqrt(1+sigma^2)
    // (Salimans & Ho 2022, in the variance-preserving scaling).
    let a = (s.square() + 1.0).rsqrt().unsqueeze(1);
    let v = &n * &a - &y * (&s.unsqueeze(1) * &a);
    assert!(
        max_abs(&(target(&Precond::V {}, &y, &n, &s) - v)) < 1e-10,
        "v"
    );
    // VE: c_skip = 1, c_out = sigma: the target is (y - x) / sigma = -n.
    assert!(
        max_abs(&(target(&Precond::Ve {}, &y, &n, &s) + &n)) < 1e-10,
        "ve"
    );
}

#[test]
fn vp_c_noise_is_the_scaled_vp_time() {
    let s = sigmas();
    let c = Precond::Vp {
        beta_d: 19.9,
        beta_min: 0.1,
        m: 1000,
    }
    .coefs(&s);
    let vp = VpLinear::default();
    for (i, sigma) in Vec::<f64>::try_from(&s).unwrap().iter().enumerate() {
        let want = 999.0 * vp.sigma_inv(*sigma);
        assert!((c.noise.double_value(&[i as i64]) - want).abs() < 1e-9 * want.max(1.0));
    }
}

#[test]
fn iddpm_levels_and_indices() {
    let u = iddpm_levels(0.001, 0.008, 1000);
    assert_eq!(u.len(), 1001);
    assert_eq!(u[1000], 0.0);
    assert!(u.windows(2).all(|w| w[0] > w[1]));
    // Values of NVlabs/edm's iDDPMPrecond: u_999 = 0.00643, u_8 = 80.2 (where EDM's iDDPM
    // sampling starts), u_0 = 20291 (the clipped first step).
    let (lo, hi) = Precond::Iddpm {
        c1: 0.001,
        c2: 0.008,
        m: 1000,
    }
    .sigma_range()
    .unwrap();
    assert!(
        (lo - 0.006425).abs() < 1e-5 && (hi - 80.2037).abs() < 1e-3,
        "{lo} {hi}"
    );
    assert!((u[0] - 20291.17).abs() < 0.1, "{}", u[0]);
    let picks = Tensor::from_slice(&[u[0], u[10], u[500], u[999]]);
    let c = Precond::Iddpm {
        c1: 0.001,
        c2: 0.008,
        m: 1000,
    }
    .coefs(&picks);
    let idx: Vec<f64> = Vec::try_from(&c.noise).unwrap();
    assert_eq!(idx, vec![999.0, 989.0, 499.0, 0.0]);
}

#[test]
fn flow_precond_regresses_on_the_velocity_with_unit_effective_weight() {
    // Rectified flow: the backbone sees x_t = (1 - t) y + t n at t = sigma / (1 + sigma) and
    // predicts v = n - y (diffusers' and SD3's direction); the flow loss's weight
    // lambda = ((1 + sigma) / sigma)^2 makes lambda c_out^2 = 1, so lambda |D - y|^2 is the
    // plain velocity MSE |F - v|^2.
    let s = sigmas();
    let n_s = s.size()[0];
    let y = Tensor::randn([n_s, 3], (Kind::Double, Device::Cpu));
    let n = Tensor::randn([n_s, 3], (Kind::Double, Device::Cpu));
    for time_scale in [1.0, 1000.0] {
        let p = Precond::Flow { time_scale };
        p.validate().unwrap();
        assert!(max_abs(&(target(&p, &y, &n, &s) - (&n - &y))) < 1e-10, "v");
        let c = p.coefs(&s);
        let t = &s / (&s + 1.0);
        let x = &y + &n * s.unsqueeze(1);
        let x_t = &y * (t.neg() + 1.0).unsqueeze(1) + &n * t.unsqueeze(1);
        assert!(
            max_abs(&(x * c.inp.unsqueeze(1) - x_t)) < 1e-12,
            "c_in x = x_t"
        );
        assert!(
            max_abs(&(&c.noise - &t * time_scale)) < 1e-9 * time_scale,
            "c_noise"
        );
        let lambda = ((&s + 1.0) / &s).square();
        assert!(
            max_abs(&(lambda * c.out.square() - 1.0)) < 1e-9,
            "lambda c_out^2"
        );
    }
    assert!(Precond::Flow { time_scale: 0.0 }.validate().is_err());
    assert!(Precond::Flow {
        time_scale: f64::NAN
    }
    .validate()
    .is_err());
}

#[test]
fn flow_loss_draws_logit_normal_uniform_mode_or_cosmap_times_weighted_by_one_over_t_squared() {
    use scoreflow::loss::{FlowTime, LossConfig};
    let n = 200_000;
    let moments = |x: &Tensor| {
        let x = x.to_kind(Kind::Double);
        (
            x.mean(Kind::Double).double_value(&[]),
            x.std(true).double_value(&[]),
        )
    };
    for (time, m, sd) in [
        (FlowTime::LogitNormal, 0.0, 1.0),
        (FlowTime::LogitNormal, -0.5, 1.5),
        (FlowTime::Uniform, 0.0, 1.0),
    ] {
        let cfg = LossConfig::Flow {
            time,
            logit_mean: m,
            logit_std: sd,
            epsilon_t: 1e-3,
            mode_scale: 1.29,
        };
        cfg.validate().unwrap();
        let (sigma, w) = cfg.draw_sigmas(n, Device::Cpu);
        let t = &sigma / (&sigma + 1.0);
        assert!(max_abs(&(&w * t.square() - 1.0)) < 1e-4, "lambda = 1 / t^2");
        let (lo, hi) = (t.min().double_value(&[]), t.max().double_value(&[]));
        assert!(
            lo >= 1e-3 * 0.999 && hi <= 1.0 - 1e-3 * 0.999,
            "t in [{lo}, {hi}]"
        );
        match time {
            // logit t = ln sigma ~ N(m, sd^2) (the clamp at 1e-3 cuts below 1e-3 of the mass).
            FlowTime::LogitNormal => {
                let (mean, std) = moments(&sigma.log());
                assert!(
                    (mean - m).abs() < 0.02 && (std - sd).abs() < 0.02,
                    "logit-normal({m}, {sd}): ln sigma has mean {mean}, std {std}"
                );
            }
            FlowTime::Uniform => {
                let (mean, std) = moments(&t);
                let want_std = (1.0 - 2e-3) / 12f64.sqrt();
                assert!(
                    (mean - 0.5).abs() < 0.005 && (std - want_std).abs() < 0.005,
                    "uniform: t has mean {mean}, std {std}"
                );
            }
            _ => unreachable!(),
        }
    }
    // SD3's mode and CosMap densities (Esser et al. 2024, eqs. 20, 21): the empirical quantiles
    // of t are the maps' values, t_q = f(1 - q) for mode (f decreasing in u) and
    // 1 - 1 / (tan(pi q / 2) + 1) for CosMap, within the sampling error of 200000 draws.
    let pi2 = std::f64::consts::FRAC_PI_2;
    let mode = |s: f64| {
        move |q: f64| {
            let u = 1.0 - q;
            1.0 - u - s * ((pi2 * u).cos().powi(2) - 1.0 + u)
        }
    };
    type Quantile = Box<dyn Fn(f64) -> f64>;
    let cases: [(FlowTime, f64, Quantile); 4] = [
        (FlowTime::Mode, 1.29, Box::new(mode(1.29))),
        (FlowTime::Mode, 0.0, Box::new(mode(0.0))),
        (FlowTime::Mode, -0.8, Box::new(mode(-0.8))),
        (
            FlowTime::Cosmap,
            1.29,
            Box::new(move |q: f64| 1.0 - 1.0 / ((pi2 * q).tan() + 1.0)),
        ),
    ];
    for (time, scale, quantile) in cases {
        let cfg = LossConfig::Flow {
            time,
            logit_mean: 0.0,
            logit_std: 1.0,
            epsilon_t: 1e-5,
            mode_scale: scale,
        };
        cfg.validate().unwrap();
        let (sigma, w) = cfg.draw_sigmas(n, Device::Cpu);
        let t = (&sigma / (&sigma + 1.0)).to_kind(Kind::Double);
        assert!(max_abs(&(&w * t.square() - 1.0)) < 1e-4, "lambda = 1 / t^2");
        let sorted = Vec::<f64>::try_from(&t.sort(0, false).0).unwrap();
        let mut worst = 0.0f64;
        for q in [0.02, 0.1, 0.25, 0.5, 0.75, 0.9, 0.98] {
            let got = sorted[(q * n as f64) as usize];
            worst = worst.max((got - quantile(q)).abs());
        }
        println!("{time:?} (s = {scale}): quantiles within {worst:.1e}");
        // 200,000 draws: a quantile's standard error is at most 1.6e-3 here (mode -0.8 at the
        // median), so 1e-2 is 6 of them, where 5e-3 failed about one parallel run in 500.
        assert!(
            worst < 1e-2,
            "{time:?} s = {scale}: quantiles off by {worst}"
        );
    }
    // The uniform density is not mode(1.29): the check can fail.
    let uniform = LossConfig::Flow {
        time: FlowTime::Uniform,
        logit_mean: 0.0,
        logit_std: 1.0,
        epsilon_t: 1e-5,
        mode_scale: 1.29,
    };
    let t = uniform.draw_sigmas(n, Device::Cpu).0;
    let t = (&t / (&t + 1.0)).to_kind(Kind::Double);
    let q25 = Vec::<f64>::try_from(&t.sort(0, false).0).unwrap()[n as usize / 4];
    assert!((q25 - mode(1.29)(0.25)).abs() > 0.03, "{q25}");
    for bad in [
        "kind = \"flow\"\ntime = \"mode\"\nmode_scale = 2",
        "kind = \"flow\"\nepsilon_t = 0.5",
        "kind = \"flow\"\ntime = \"cosine\"",
    ] {
        let parsed: Result<LossConfig, _> = toml::from_str(bad);
        assert!(
            parsed.map(|c| c.validate().is_err()).unwrap_or(true),
            "{bad} accepted"
        );
    }
}

#[test]
fn sliced_score_objective_of_the_exact_gaussian_score() {
    // Data N(0, tau^2 I) perturbed by sigma: s(x) = -x / (tau^2 + sigma^2), and
    // E[v . grad(v . s) + (v . s)^2 / 2] = E[tr grad s] + E|s|^2 / 2 = -d / (2 (tau^2 + sigma^2)).
    let (n, d, var) = (200_000i64, 3i64, 0.7f64);
    let x =
        (Tensor::randn([n, d], (Kind::Float, Device::Cpu)) * var.sqrt()).set_requires_grad(true);
    let s = -&x / var;
    let v = Tensor::randn([n, d], (Kind::Float, Device::Cpu));
    let obj = scoreflow::loss::sliced_score_objective(&x, &s, &v)
        .mean(Kind::Double)
        .double_value(&[]);
    let want = -(d as f64) / (2.0 * var);
    assert!((obj - want).abs() < 0.03 * want.abs(), "{obj} vs {want}");
}
