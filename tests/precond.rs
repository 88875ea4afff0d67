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
