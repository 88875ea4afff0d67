//! SDE formulas, the DDPM map and grid properties.

use scoreflow_solvers::grid::{self, GridKind};
use scoreflow_solvers::sde::{
    BetaSchedule, DdpmChain, Edm, Flow, Sde, SubVp, Ve, VpCosine, VpLinear,
};

fn all_sdes() -> Vec<Box<dyn Sde>> {
    vec![
        Box::new(Edm::default()),
        Box::new(Ve::default()),
        Box::new(VpLinear::default()),
        Box::new(VpCosine::default()),
        Box::new(SubVp::default()),
        Box::new(Flow::default()),
        Box::new(Flow::with_shift(3.0).unwrap()),
    ]
}

#[test]
fn sigma_inverse_round_trips() {
    for sde in all_sdes() {
        let (a, b) = sde.t_range();
        for i in 0..=50 {
            let t = a + (b - a) * i as f64 / 50.0;
            let back = sde.sigma_inv(sde.sigma(t));
            assert!(
                (back - t).abs() <= 1e-9 * t.max(1.0),
                "{}: t = {t}, sigma_inv(sigma(t)) = {back}",
                sde.name()
            );
        }
    }
}

#[test]
fn derivatives_match_finite_differences() {
    for sde in all_sdes() {
        let (a, b) = sde.t_range();
        for i in 1..20 {
            let t = a + (b - a) * i as f64 / 20.0;
            let h = 1e-6 * t.max(1e-3);
            let fd_sigma = (sde.sigma(t + h) - sde.sigma(t - h)) / (2.0 * h);
            let fd_s = (sde.s(t + h) - sde.s(t - h)) / (2.0 * h);
            let tol = |v: f64| 1e-5 * v.abs().max(1e-3);
            assert!(
                (fd_sigma - sde.sigma_deriv(t)).abs() < tol(fd_sigma),
                "{} sigma'({t}): {} vs fd {fd_sigma}",
                sde.name(),
                sde.sigma_deriv(t)
            );
            assert!(
                (fd_s - sde.s_deriv(t)).abs() < tol(fd_s) + 1e-9,
                "{} s'({t}): {} vs fd {fd_s}",
                sde.name(),
                sde.s_deriv(t)
            );
        }
    }
}

#[test]
fn vp_marginal_variance_is_preserved_and_subvp_is_below() {
    let vp = VpLinear::default();
    let sub = SubVp::default();
    for i in 1..=10 {
        let t = i as f64 / 10.0;
        // VP: s^2 (1 + sigma^2) = 1 (unit-variance data stays at unit variance).
        let v = vp.s(t).powi(2) * (1.0 + vp.sigma(t).powi(2));
        assert!((v - 1.0).abs() < 1e-12);
        // sub-VP: the noise std is 1 - exp(-B(t)) (Song et al. 2021, eq. 34).
        let std = sub.s(t) * sub.sigma(t);
        assert!((std - (1.0 - (-vp.integral(t)).exp())).abs() < 1e-12);
        assert!(std <= vp.s(t) * vp.sigma(t) + 1e-15);
    }
}

#[test]
fn flow_is_the_linear_interpolation_and_its_shift_is_sd3s() {
    // Rectified flow: x = (1 - tau) x0 + tau eps, so s = 1 - tau and s sigma = tau, with SD3's
    // shifted time tau = c t / (1 + (c - 1) t) (Esser et al. 2024; diffusers'
    // FlowMatchEulerDiscreteScheduler, `shift * sigmas / (1 + (shift - 1) * sigmas)`).
    for c in [1.0, 3.0, 0.5] {
        let f = Flow::with_shift(c).unwrap();
        for i in 1..50 {
            let t = i as f64 / 50.0;
            let tau = c * t / (1.0 + (c - 1.0) * t);
            assert!((f.s(t) - (1.0 - tau)).abs() < 1e-14, "c {c}, t {t}");
            assert!((f.s(t) * f.sigma(t) - tau).abs() < 1e-14, "c {c}, t {t}");
            assert!((Flow::tau_of_sigma(f.sigma(t)) - tau).abs() < 1e-14);
            // The shift scales sigma at a given t, and leaves s(sigma) = 1 / (1 + sigma).
            assert!((f.sigma(t) - c * Flow::default().sigma(t)).abs() < 1e-12 * f.sigma(t));
            assert!((f.s_of_sigma(f.sigma(t)) - 1.0 / (1.0 + f.sigma(t))).abs() < 1e-14);
        }
        // The reverse SDE of the unshifted flow: f = -1 / (1 - t), g^2 = 2 t / (1 - t).
        if c == 1.0 {
            for t in [0.1, 0.5, 0.9] {
                assert!((f.drift_coef(t) + 1.0 / (1.0 - t)).abs() < 1e-12);
                assert!((f.diffusion(t).powi(2) - 2.0 * t / (1.0 - t)).abs() < 1e-12);
            }
        }
        // A grid uniform in t is diffusers' flow schedule: linspace in the unshifted time, then
        // shifted, here between the times of sigma_max and sigma_min.
        let (lo, hi) = (0.01, 50.0);
        let n = 9;
        let levels = grid::sigmas(&GridKind::UniformT {}, n, lo, hi, &f).unwrap();
        let (u0, u1) = (hi / (c + hi), lo / (c + lo));
        for (i, got) in levels[..n].iter().enumerate() {
            let u = u0 + (u1 - u0) * i as f64 / (n - 1) as f64;
            let tau = c * u / (1.0 + (c - 1.0) * u);
            let want = tau / (1.0 - tau);
            assert!(
                (got - want).abs() < 1e-10 * want,
                "c {c}, level {i}: {got} vs {want}"
            );
        }
        assert_eq!(levels[n], 0.0);
    }
    assert!(Flow::with_shift(0.0).is_err());
    assert!(Flow::with_shift(f64::NAN).is_err());
    assert!(Flow::with_shift(f64::INFINITY).is_err());
}

#[test]
fn cosine_schedule_matches_its_formula() {
    let c = VpCosine::default();
    let s0: f64 = 0.008;
    let f = |t: f64| {
        ((t + s0) / (1.0 + s0) * std::f64::consts::FRAC_PI_2)
            .cos()
            .powi(2)
    };
    for i in 0..=20 {
        let t = 0.99 * i as f64 / 20.0;
        let alpha_bar = f(t) / f(0.0);
        assert!((c.s(t).powi(2) - alpha_bar).abs() < 1e-12, "t = {t}");
        if t > 0.0 {
            let sigma = (1.0 / alpha_bar - 1.0).sqrt();
            assert!(
                (c.sigma(t) - sigma).abs() < 1e-9 * sigma.max(1.0),
                "t = {t}: {} vs {sigma}",
                c.sigma(t)
            );
        }
    }
}

#[test]
fn ddpm_chain_maps_exactly_onto_vp() {
    let vp = VpLinear::default();
    let t_steps = 1000;
    let chain = DdpmChain::from_vp(&vp, t_steps);
    for (j, (ab, sigma)) in chain.alpha_bars().iter().zip(chain.sigmas()).enumerate() {
        let t = (j + 1) as f64 / t_steps as f64;
        assert!(
            (ab - vp.s(t).powi(2)).abs() < 1e-12 * ab.max(1e-300).max(1e-3),
            "step {j}"
        );
        assert!((sigma - vp.sigma(t)).abs() < 1e-9 * sigma, "step {j}");
    }
    // Ho et al.'s linear betas (1e-4 .. 0.02) are the VP SDE with beta_min = 0.1, beta_max = 20
    // in the limit: the discrete and continuous alpha_bar agree to O(1/T).
    let ho = DdpmChain::linear(t_steps, 1e-4, 0.02);
    let ab = ho.alpha_bars();
    for j in [99usize, 499, 999] {
        let t = (j + 1) as f64 / t_steps as f64;
        let rel = (ab[j] / vp.s(t).powi(2)).ln().abs();
        assert!(
            rel < 0.02 * vp.integral(t).max(1.0),
            "step {j}: {} vs {}",
            ab[j],
            vp.s(t).powi(2)
        );
    }
}

#[test]
fn grids_decrease_end_in_zero_and_hit_the_ends() {
    let kinds = [
        GridKind::Karras { rho: 7.0 },
        GridKind::UniformT {},
        GridKind::LogSnr {},
        GridKind::PolyT { rho: 3.0 },
        GridKind::PolyExponential { rho: 2.0 },
        GridKind::Beta {
            alpha: 0.6,
            beta: 0.6,
        },
        GridKind::KlOptimal {},
    ];
    for sde in all_sdes() {
        let (lo, hi) = sde.default_sigma_range();
        for kind in &kinds {
            for steps in [1usize, 2, 5, 18, 100] {
                let g = grid::sigmas(kind, steps, lo, hi, sde.as_ref()).unwrap();
                assert_eq!(g.len(), steps + 1);
                assert_eq!(g[steps], 0.0);
                assert_eq!(g[0], hi);
                if steps > 1 {
                    assert_eq!(g[steps - 1], lo);
                }
                assert!(
                    g.windows(2).all(|w| w[0] > w[1]),
                    "{:?} {} {steps}: {g:?}",
                    kind,
                    sde.name()
                );
            }
        }
    }
}

#[test]
fn karras_grid_matches_eq5_and_uniform_t_is_uniform() {
    let sde = Edm::default();
    let g = grid::sigmas(&GridKind::Karras { rho: 7.0 }, 18, 0.002, 80.0, &sde).unwrap();
    for (i, s) in g[..18].iter().enumerate() {
        let want = (80f64.powf(1.0 / 7.0)
            + i as f64 / 17.0 * (0.002f64.powf(1.0 / 7.0) - 80f64.powf(1.0 / 7.0)))
        .powf(7.0);
        assert!((s - want).abs() < 1e-12 * want);
    }
    let vp = VpLinear::default();
    let (lo, hi) = vp.default_sigma_range();
    let g = grid::sigmas(&GridKind::UniformT {}, 10, lo, hi, &vp).unwrap();
    let ts: Vec<f64> = g[..10].iter().map(|&s| vp.sigma_inv(s)).collect();
    for w in ts.windows(2) {
        assert!(((w[0] - w[1]) - (1.0 - 1e-3) / 9.0).abs() < 1e-9);
    }
    let g = grid::sigmas(&GridKind::LogSnr {}, 10, 0.01, 10.0, &sde).unwrap();
    let r: Vec<f64> = g[..10].windows(2).map(|w| w[0] / w[1]).collect();
    assert!(r.iter().all(|x| (x - r[0]).abs() < 1e-9));
}

#[test]
fn iddpm_grid_matches_nvlabs_edm() {
    // Levels printed by NVlabs/edm's own ablation_sampler (discretization='iddpm', C_1 = 0.001,
    // C_2 = 0.008, M = 1000) through experiments/peers/edm_grid.py, for 18 steps in
    // [0.002, 81] (edm's iddpm defaults) and 10 steps in [0.01, 50]: with --float64-index (edm's
    // code with its index j as float64, i.e. the formula in f64, as here) to 1e-12; as edm runs
    // it (j int64, so abar in float32 by torch's promotion) to 1e-6 relative plus 5e-6 (the
    // float32 rounding, carried through the recursion, moves the levels by up to 3.2e-7
    // relative at the top, 2.6e-5 at 80.2, and 2.9e-6 absolute at the bottom, 0.0064254
    // against 0.0064225).
    let f64_18 = [
        80.20370184547417,
        9.687851806661078,
        5.068197397968531,
        3.4107615916100413,
        2.5361017291918597,
        1.9883938697889367,
        1.602383451598721,
        1.3200218607270113,
        1.0980041840050299,
        0.9133123990376618,
        0.7597645848620865,
        0.6259974160274171,
        0.5046302461866713,
        0.3958451955033939,
        0.2945713627265193,
        0.19850584869046975,
        0.10403676110236446,
        0.006425412771141183,
        0.0,
    ];
    let f64_10 = [
        49.351927899069935,
        5.1959963554384165,
        2.644194098849802,
        1.7011207272169404,
        1.1840806576451548,
        0.8389418099015329,
        0.5834219811051016,
        0.3743586941475332,
        0.18878434850678602,
        0.011765978826564981,
        0.0,
    ];
    let edm_18 = [
        80.20367617799776,
        9.687848103884503,
        5.068195961652411,
        3.4107606410408473,
        2.5361010609130563,
        1.9883932885155027,
        1.6023834730291455,
        1.3200216159794353,
        1.098003886076512,
        0.9133120999194778,
        0.759764295135753,
        0.6259973154403513,
        0.5046302701569558,
        0.39584529576659044,
        0.2945708527913949,
        0.19850549501482204,
        0.10403644724603973,
        0.0064224695811984575,
        0.0,
    ];
    let edm_10 = [
        49.35191122354962,
        5.195994870574154,
        2.644193482778128,
        1.7011204170289878,
        1.1840803470920478,
        0.8389413486517695,
        0.5834219914943771,
        0.3743586776238295,
        0.18878367337309798,
        0.01176498109294423,
        0.0,
    ];
    let sde = Edm::default();
    let kind = GridKind::from_name("iddpm", None).unwrap();
    for (n, lo, hi, exact, edm) in [
        (18, 0.002, 81.0, &f64_18[..], &edm_18[..]),
        (10, 0.01, 50.0, &f64_10[..], &edm_10[..]),
    ] {
        let g = grid::sigmas(&kind, n, lo, hi, &sde).unwrap();
        for (want, rel, abs) in [(exact, 1e-12, 0.0), (edm, 1e-6, 5e-6)] {
            assert_eq!(g.len(), want.len());
            for (a, b) in g.iter().zip(want) {
                assert!(
                    (a - b).abs() <= rel * b + abs,
                    "{n} steps: {g:?} against {want:?}"
                );
            }
        }
    }
    // The levels are a fixed set: more steps than levels in the range is an error, not a grid
    // with repeated levels; bad constants are errors.
    let e = grid::sigmas(&kind, 400, 0.5, 0.6, &sde)
        .unwrap_err()
        .to_string();
    assert!(e.contains("levels in [0.5, 0.6]: at most"), "{e}");
    for (c_1, c_2, m) in [(0.0, 0.008, 1000), (0.001, -1.0, 1000), (0.001, 0.008, 0)] {
        assert!(grid::sigmas(&GridKind::Iddpm { c_1, c_2, m }, 4, 0.002, 80.0, &sde).is_err());
    }
}

#[test]
fn kl_optimal_grid_is_uniform_in_atan_sigma() {
    // The formula of ComfyUI's kl_optimal_scheduler, tan(f atan(sigma_min) + (1 - f)
    // atan(sigma_max)), evaluated in Python's float64 math on [0.002, 80] at 6 steps.
    let sde = Edm::default();
    let want = [
        79.99999999999964,
        2.980038326595726,
        1.3571672807241477,
        0.7207529951808902,
        0.3239251128214752,
        0.002,
    ];
    let g = grid::sigmas(&GridKind::KlOptimal {}, 6, 0.002, 80.0, &sde).unwrap();
    assert_eq!(g.len(), 7);
    for (got, w) in g.iter().zip(&want) {
        assert!((got - w).abs() <= 1e-13 * w, "{g:?} vs {want:?}");
    }
    // Equal steps in atan(sigma) at any count, and the name parses.
    let g = grid::sigmas(&GridKind::KlOptimal {}, 37, 0.01, 20.0, &sde).unwrap();
    let d: Vec<f64> = g[..37]
        .windows(2)
        .map(|w| w[0].atan() - w[1].atan())
        .collect();
    assert!(d.iter().all(|x| (x - d[0]).abs() < 1e-12), "{d:?}");
    assert_eq!(
        GridKind::from_name("kl-optimal", None).unwrap(),
        GridKind::KlOptimal {}
    );
    assert!(GridKind::from_name("kl-optimal", Some(7.0)).is_err());
}

#[test]
fn poly_exponential_and_beta_grids_match_k_diffusion_and_diffusers() {
    // Levels printed by k-diffusion 0.1.1's get_sigmas_polyexponential (run in float64:
    // torch.set_default_dtype(torch.float64)) and by diffusers 0.42.1's
    // EulerDiscreteScheduler._convert_to_beta (scipy.stats.beta.ppf), on [0.002, 80].
    let sde = Edm::default();
    let check = |kind: GridKind, want: &[f64], tol: f64| {
        let n = want.len();
        let g = grid::sigmas(&kind, n, 0.002, 80.0, &sde).unwrap();
        assert_eq!(g.len(), n + 1);
        for (got, w) in g.iter().zip(want) {
            assert!((got - w).abs() <= tol * w, "{kind:?}: {g:?} vs {want:?}");
        }
    };
    check(
        GridKind::PolyExponential { rho: 2.0 },
        &[
            79.99999999999997,
            8.654172436400145,
            1.2161641933393268,
            0.22201892311392488,
            0.052652486066748785,
            0.01622104700700145,
            0.006491872694040338,
            0.0033751433066864013,
            0.0022795312542437814,
            0.0020000000000000005,
        ],
        1e-13,
    );
    check(
        GridKind::PolyExponential { rho: 0.5 },
        &[
            79.99999999999997,
            26.1359076265041,
            7.341255455637648,
            1.6279021469284956,
            0.22863030256947178,
            0.0020000000000000005,
        ],
        1e-13,
    );
    // rho = 1 is log-snr.
    let a = grid::sigmas(
        &GridKind::PolyExponential { rho: 1.0 },
        5,
        0.002,
        80.0,
        &sde,
    )
    .unwrap();
    let b = grid::sigmas(&GridKind::LogSnr {}, 5, 0.002, 80.0, &sde).unwrap();
    for (x, y) in a.iter().zip(&b) {
        assert!((x - y).abs() <= 1e-13 * y, "{a:?} {b:?}");
    }
    check(
        GridKind::Beta {
            alpha: 0.6,
            beta: 0.6,
        },
        &[
            80.0,
            76.2327487797117,
            68.35220343088105,
            57.96748756437169,
            46.14686529667538,
            33.85513470332463,
            22.034512435628326,
            11.649796569118964,
            3.7692512202882993,
            0.002,
        ],
        1e-10,
    );
    check(
        GridKind::Beta {
            alpha: 0.5,
            beta: 0.7,
        },
        &[
            80.0,
            66.88607212829787,
            47.745367407680014,
            28.887990882737242,
            13.46468762554942,
            3.4597781761964757,
            0.002,
        ],
        1e-10,
    );
    // The command-line names, their defaults and bad parameters.
    assert_eq!(
        GridKind::from_name("beta", None).unwrap(),
        GridKind::Beta {
            alpha: 0.6,
            beta: 0.6
        }
    );
    assert_eq!(
        GridKind::from_name("poly-exponential", None).unwrap(),
        GridKind::PolyExponential { rho: 1.0 }
    );
    assert_eq!(
        GridKind::from_name("karras", None).unwrap(),
        GridKind::Karras { rho: 7.0 }
    );
    let e = GridKind::from_name("beta", Some(3.0))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("--rho applies to the karras, poly-t and poly-exponential"),
        "{e}"
    );
    for kind in [
        GridKind::Beta {
            alpha: 0.0,
            beta: 0.6,
        },
        GridKind::Beta {
            alpha: 0.6,
            beta: f64::INFINITY,
        },
        GridKind::PolyExponential { rho: -1.0 },
    ] {
        assert!(
            grid::sigmas(&kind, 8, 0.002, 80.0, &sde).is_err(),
            "{kind:?}"
        );
    }
}

#[test]
fn bad_grid_input_is_an_error() {
    let sde = Edm::default();
    let k = GridKind::default();
    assert!(grid::sigmas(&k, 0, 0.002, 80.0, &sde).is_err());
    let e = grid::sigmas(&k, 10, 80.0, 0.002, &sde)
        .unwrap_err()
        .to_string();
    assert!(e.contains("sigma_min"), "{e}");
    assert!(grid::sigmas(&k, 10, 1.0, 1.0, &sde).is_err());
    assert!(grid::sigmas(&k, 10, 0.0, 1.0, &sde).is_err());
    assert!(grid::sigmas(&GridKind::Karras { rho: -1.0 }, 10, 0.1, 1.0, &sde).is_err());
    assert!(grid::validate(&[1.0, 2.0, 0.0]).is_err());
    assert!(grid::validate(&[2.0, 1.0]).is_err());
    assert!(grid::validate(&[f64::NAN, 1.0, 0.0]).is_err());
}

#[test]
fn drift_and_diffusion_reproduce_the_marginal_variance() {
    // For dx = f x dt + g dw from x0 = 0, Var' = 2 f Var + g^2; the marginal says Var = s^2 sigma^2.
    for sde in all_sdes() {
        let (a, b) = sde.t_range();
        for i in 1..20 {
            let t = a + (b - a) * i as f64 / 20.0;
            let var = |t: f64| (sde.s(t) * sde.sigma(t)).powi(2);
            let h = 1e-6 * t.max(1e-3);
            let lhs = (var(t + h) - var(t - h)) / (2.0 * h);
            let rhs = 2.0 * sde.drift_coef(t) * var(t) + sde.diffusion(t).powi(2);
            assert!(
                (lhs - rhs).abs() < 1e-5 * lhs.abs().max(1e-3),
                "{} at t = {t}: {lhs} vs {rhs}",
                sde.name()
            );
        }
    }
}

#[test]
fn perturbation_has_the_marginal_moments() {
    use tch::{Device, Kind, Tensor};
    let sde = VpLinear::default();
    let n = 200_000;
    let x0 = Tensor::full([n, 1], 2.0, (Kind::Double, Device::Cpu));
    let eps = Tensor::randn([n, 1], (Kind::Double, Device::Cpu));
    for t in [0.1, 0.5, 0.9] {
        let x = sde.perturb(&x0, t, &eps);
        let (mean, std) = (
            x.mean(Kind::Double).double_value(&[]),
            x.std(true).double_value(&[]),
        );
        let (want_mean, want_std) = (2.0 * sde.s(t), sde.s(t) * sde.sigma(t));
        assert!(
            (mean - want_mean).abs() < 5.0 * want_std / (n as f64).sqrt(),
            "t = {t}: mean {mean} vs {want_mean}"
        );
        assert!(
            (std / want_std - 1.0).abs() < 0.01,
            "t = {t}: std {std} vs {want_std}"
        );
    }
}

#[test]
fn ddpm_spaced_grids_are_diffusers_timesteps_on_the_chain() {
    use scoreflow_solvers::grid::{spaced_timesteps, Spacing};
    // diffusers 0.42.1's set_timesteps(10) for 1000 training steps.
    assert_eq!(
        spaced_timesteps(Spacing::Leading, 10, 1000, 0),
        vec![900, 800, 700, 600, 500, 400, 300, 200, 100, 0]
    );
    assert_eq!(
        spaced_timesteps(Spacing::Leading, 10, 1000, 1),
        vec![901, 801, 701, 601, 501, 401, 301, 201, 101, 1]
    );
    assert_eq!(
        spaced_timesteps(Spacing::Trailing, 10, 1000, 0),
        vec![999, 899, 799, 699, 599, 499, 399, 299, 199, 99]
    );
    assert_eq!(
        spaced_timesteps(Spacing::Linspace, 10, 1000, 0),
        vec![999, 888, 777, 666, 555, 444, 333, 222, 111, 0]
    );
    // Step counts where numpy's arithmetic rounds a .5 the other way than the plain formula
    // (np.arange(1000, 0, -1000 / 48) and np.linspace(0, 999, 27), as diffusers computes them).
    assert_eq!(
        spaced_timesteps(Spacing::Trailing, 48, 1000, 0),
        vec![
            999, 978, 957, 936, 916, 895, 874, 853, 832, 811, 791, 770, 749, 728, 707, 686, 666,
            645, 624, 603, 582, 561, 541, 520, 499, 478, 457, 436, 416, 395, 374, 353, 332, 311,
            291, 270, 249, 228, 207, 186, 166, 145, 124, 103, 82, 61, 41, 20
        ]
    );
    assert_eq!(
        spaced_timesteps(Spacing::Linspace, 27, 1000, 0),
        vec![
            999, 961, 922, 884, 845, 807, 768, 730, 692, 653, 615, 576, 538, 499, 461, 423, 384,
            346, 307, 269, 231, 192, 154, 115, 77, 38, 0
        ]
    );
    // And the levels: diffusers' EulerDiscreteScheduler sigmas (computed in float32) at
    // positions 0, 4 and 9 for the linear chain (1e-4 to 0.02), and for Stable Diffusion's
    // scaled-linear chain (0.00085 to 0.012, leading, steps_offset 1, 25 steps) at 0, 12, 24.
    let chain = |spacing, steps_offset, schedule, beta_start, beta_end| GridKind::Timesteps {
        spacing,
        steps_offset,
        schedule,
        beta_start,
        beta_end,
        timesteps: 1000,
        alpha: None,
        beta: None,
    };
    let linear = |spacing, offset| chain(spacing, offset, BetaSchedule::Linear, 1e-4, 0.02);
    let cases: Vec<(GridKind, usize, [f64; 3], [usize; 3])> = vec![
        (
            linear(Spacing::Leading, 0),
            10,
            [60.82230758666992, 3.442967414855957, 0.010001329705119133],
            [0, 4, 9],
        ),
        (
            linear(Spacing::Leading, 1),
            10,
            [61.37885665893555, 3.4619228839874268, 0.014832044020295143],
            [0, 4, 9],
        ),
        (
            linear(Spacing::Trailing, 0),
            10,
            [157.4072723388672, 6.135210037231445, 0.3388286828994751],
            [0, 4, 9],
        ),
        (
            linear(Spacing::Linspace, 0),
            10,
            [157.4072723388672, 4.703334331512451, 0.010001329705119133],
            [0, 4, 9],
        ),
        (
            chain(
                Spacing::Leading,
                1,
                BetaSchedule::ScaledLinear,
                0.00085,
                0.012,
            ),
            25,
            [11.676050186157227, 1.519217610359192, 0.04131447896361351],
            [0, 12, 24],
        ),
    ];
    for (kind, n, want, at) in cases {
        // sigma_min and sigma_max are not used by this grid.
        let s = grid::sigmas(&kind, n, 0.5, 1.0, &Edm::default()).unwrap();
        assert_eq!(s.len(), n + 1);
        assert_eq!(s[n], 0.0);
        for (w, i) in want.iter().zip(at) {
            // diffusers' chain is float32: 1e-4 relative.
            assert!(
                (s[i] / w - 1.0).abs() < 1e-4,
                "{kind:?}: sigma[{i}] {} != {w}",
                s[i]
            );
        }
    }
    // The command-line names, and a chain too short for the steps.
    let k = GridKind::from_name("ddpm-trailing", None).unwrap();
    assert!(matches!(
        k,
        GridKind::Timesteps {
            spacing: Spacing::Trailing,
            ..
        }
    ));
    assert!(GridKind::from_name("ddpm-leading", Some(7.0)).is_err());
    let err = grid::sigmas(&k, 1001, 0.002, 80.0, &Edm::default())
        .unwrap_err()
        .to_string();
    assert!(err.contains("at most 1000 steps"), "{err}");
    let off = linear(Spacing::Leading, 200);
    assert!(grid::sigmas(&off, 5, 0.002, 80.0, &Edm::default()).is_err());
    // A bad chain, and an offset with another spacing, are errors that say so.
    for (k, needle) in [
        (
            chain(Spacing::Leading, 0, BetaSchedule::Linear, 0.5, 0.1),
            "0 < beta_start <= beta_end < 1",
        ),
        (
            chain(Spacing::Leading, 0, BetaSchedule::Linear, 1e-4, 1.5),
            "0 < beta_start <= beta_end < 1",
        ),
        (
            linear(Spacing::Trailing, 1),
            "steps_offset applies to the leading spacing only",
        ),
    ] {
        let err = grid::sigmas(&k, 5, 0.002, 80.0, &Edm::default())
            .unwrap_err()
            .to_string();
        assert!(err.contains(needle), "{err}");
    }
    let mut huge = linear(Spacing::Leading, 0);
    if let GridKind::Timesteps { timesteps, .. } = &mut huge {
        *timesteps = 100_000_000_000;
    }
    let err = grid::sigmas(&huge, 5, 0.002, 80.0, &Edm::default())
        .unwrap_err()
        .to_string();
    assert!(err.contains("timesteps must be 2 to"), "{err}");
}

#[test]
fn comfyuis_schedulers_are_its_levels_on_the_chain() {
    use scoreflow_solvers::grid::Spacing;
    // Printed by `PYTHONPATH=.peers/site python3 experiments/peers/comfy_schedulers_check.py
    // SAMPLERS_PY MODEL_SAMPLING_PY`: ComfyUI's normal_scheduler (sgm=False and True),
    // simple_scheduler, ddim_scheduler and beta_scheduler as they stand, on its ModelSamplingDiscrete given the
    // chain's betas (a float32 table of levels), for DDPM's linear chain and Stable Diffusion's
    // scaled-linear one. The levels at the listed positions (all of them up to 10 steps).
    let timesteps = |spacing, schedule, beta_start, beta_end| GridKind::Timesteps {
        spacing,
        steps_offset: 0,
        schedule,
        beta_start,
        beta_end,
        timesteps: 1000,
        alpha: None,
        beta: None,
    };
    let linear = (BetaSchedule::Linear, 1e-4, 0.02);
    let scaled = (BetaSchedule::ScaledLinear, 0.00085, 0.012);
    type Case = (
        (BetaSchedule, f64, f64),
        Spacing,
        usize,
        &'static [usize],
        &'static [f64],
    );
    let cases: [Case; 42] = [
        (linear, Spacing::ComfyNormal, 1, &[0], &[157.40725708007812]),
        (
            linear,
            Spacing::ComfyNormal,
            3,
            &[0, 1, 2],
            &[157.40725708007812, 3.4335391521453857, 0.01000049989670515],
        ),
        (
            linear,
            Spacing::ComfyNormal,
            10,
            &[0, 1, 2, 3, 4, 5, 6, 7, 8, 9],
            &[
                157.40725708007812,
                54.5675163269043,
                21.417497634887695,
                9.488921165466309,
                4.703334331512451,
                2.5546913146972656,
                1.462356686592102,
                0.821935772895813,
                0.38037100434303284,
                0.01000049989670515,
            ],
        ),
        (
            linear,
            Spacing::ComfyNormal,
            25,
            &[0, 6, 12, 18, 24],
            &[
                157.40725708007812,
                17.279794692993164,
                3.4335391521453857,
                0.956756591796875,
                0.01000049989670515,
            ],
        ),
        (
            linear,
            Spacing::ComfySgmUniform,
            1,
            &[0],
            &[157.40725708007812],
        ),
        (
            linear,
            Spacing::ComfySgmUniform,
            3,
            &[0, 1, 2],
            &[157.40725708007812, 9.488921165466309, 1.462356686592102],
        ),
        (
            linear,
            Spacing::ComfySgmUniform,
            10,
            &[0, 1, 2, 3, 4, 5, 6, 7, 8, 9],
            &[
                157.40725708007812,
                60.326271057128906,
                25.569847106933594,
                11.965052604675293,
                6.1504998207092285,
                3.4335391521453857,
                2.0369865894317627,
                1.2382879257202148,
                0.7227267026901245,
                0.34191498160362244,
            ],
        ),
        (
            linear,
            Spacing::ComfySgmUniform,
            25,
            &[0, 6, 12, 18, 24],
            &[
                157.40725708007812,
                18.65191078186035,
                3.8360490798950195,
                1.1188050508499146,
                0.14357399940490723,
            ],
        ),
        (linear, Spacing::ComfySimple, 1, &[0], &[157.40728759765625]),
        (
            linear,
            Spacing::ComfySimple,
            3,
            &[0, 1, 2],
            &[157.40728759765625, 9.488920211791992, 1.462356686592102],
        ),
        (
            linear,
            Spacing::ComfySimple,
            10,
            &[0, 1, 2, 3, 4, 5, 6, 7, 8, 9],
            &[
                157.40728759765625,
                60.27141189575195,
                25.528480529785156,
                11.939519882202148,
                6.135209083557129,
                3.4241366386413574,
                2.030851125717163,
                1.2339280843734741,
                0.7192788124084473,
                0.33882835507392883,
            ],
        ),
        (
            linear,
            Spacing::ComfySimple,
            25,
            &[0, 6, 12, 18, 24],
            &[
                157.40728759765625,
                18.61747932434082,
                3.8257265090942383,
                1.1146831512451172,
                0.14048342406749725,
            ],
        ),
        (
            linear,
            Spacing::ComfyDdimUniform,
            4,
            &[0, 1, 2, 3],
            &[
                17.511394500732422,
                3.4619226455688477,
                0.9631507992744446,
                0.01483092363923788,
            ],
        ),
        (
            linear,
            Spacing::ComfyDdimUniform,
            8,
            &[0, 1, 2, 3, 4, 5, 6, 7],
            &[
                49.02712631225586,
                17.511394500732422,
                7.279302597045898,
                3.4619226455688477,
                1.8102238178253174,
                0.9631507992744446,
                0.43353307247161865,
                0.01483092363923788,
            ],
        ),
        (
            linear,
            Spacing::ComfyDdimUniform,
            10,
            &[0, 1, 2, 3, 4, 5, 6, 7, 8, 9],
            &[
                61.37885284423828,
                25.945423126220703,
                12.110893249511719,
                6.212092399597168,
                3.4619226455688477,
                2.051379919052124,
                1.2464210987091064,
                0.7279167175292969,
                0.3456963896751404,
                0.01483092363923788,
            ],
        ),
        (linear, Spacing::ComfyBeta, 1, &[0], &[157.40728759765625]),
        (
            linear,
            Spacing::ComfyBeta,
            2,
            &[0, 1],
            &[157.40728759765625, 3.442967176437378],
        ),
        (
            linear,
            Spacing::ComfyBeta,
            3,
            &[0, 1, 2],
            &[157.40728759765625, 14.306829452514648, 1.0919989347457886],
        ),
        (
            linear,
            Spacing::ComfyBeta,
            10,
            &[0, 1, 2, 3, 4, 5, 6, 7, 8, 9],
            &[
                157.40728759765625,
                105.91991424560547,
                49.02712631225586,
                19.50067901611328,
                7.818622589111328,
                3.442967176437378,
                1.688559651374817,
                0.878635585308075,
                0.4227818250656128,
                0.14370423555374146,
            ],
        ),
        (
            linear,
            Spacing::ComfyBeta,
            25,
            &[0, 6, 12, 18, 24],
            &[
                157.40728759765625,
                34.38097381591797,
                4.002222061157227,
                0.7674471735954285,
                0.04357054457068443,
            ],
        ),
        (
            linear,
            Spacing::ComfyBeta,
            138,
            &[0, 1, 2, 69, 136, 137],
            &[
                157.40728759765625,
                155.8251953125,
                154.2605743408203,
                3.442967176437378,
                0.018969619646668434,
                0.01483092363923788,
            ],
        ),
        (scaled, Spacing::ComfyNormal, 1, &[0], &[14.614640235900879]),
        (
            scaled,
            Spacing::ComfyNormal,
            3,
            &[0, 1, 2],
            &[14.614640235900879, 1.6155803203582764, 0.029167160391807556],
        ),
        (
            scaled,
            Spacing::ComfyNormal,
            10,
            &[0, 1, 2, 3, 4, 5, 6, 7, 8, 9],
            &[
                14.614640235900879,
                7.839882850646973,
                4.6091742515563965,
                2.918307065963745,
                1.9501614570617676,
                1.3449277877807617,
                0.9323579668998718,
                0.6249769330024719,
                0.3686577379703522,
                0.029167160391807556,
            ],
        ),
        (
            scaled,
            Spacing::ComfyNormal,
            25,
            &[0, 6, 12, 18, 24],
            &[
                14.614640235900879,
                4.086081027984619,
                1.6155803203582764,
                0.6951495409011841,
                0.029167160391807556,
            ],
        ),
        (
            scaled,
            Spacing::ComfySgmUniform,
            1,
            &[0],
            &[14.614640235900879],
        ),
        (
            scaled,
            Spacing::ComfySgmUniform,
            3,
            &[0, 1, 2],
            &[14.614640235900879, 2.918307065963745, 0.9323579668998718],
        ),
        (
            scaled,
            Spacing::ComfySgmUniform,
            10,
            &[0, 1, 2, 3, 4, 5, 6, 7, 8, 9],
            &[
                14.614640235900879,
                8.307170867919922,
                5.092408180236816,
                3.325068950653076,
                2.2797305583953857,
                1.6155803203582764,
                1.1628645658493042,
                0.8318837285041809,
                0.5711888670921326,
                0.34370481967926025,
            ],
        ),
        (
            scaled,
            Spacing::ComfySgmUniform,
            25,
            &[0, 6, 12, 18, 24],
            &[
                14.614640235900879,
                4.264975070953369,
                1.7275888919830322,
                0.7753799557685852,
                0.19894765317440033,
            ],
        ),
        (scaled, Spacing::ComfySimple, 1, &[0], &[14.614641189575195]),
        (
            scaled,
            Spacing::ComfySimple,
            3,
            &[0, 1, 2],
            &[14.614641189575195, 2.918307065963745, 0.9323579668998718],
        ),
        (
            scaled,
            Spacing::ComfySimple,
            10,
            &[0, 1, 2, 3, 4, 5, 6, 7, 8, 9],
            &[
                14.614641189575195,
                8.302803039550781,
                5.08776330947876,
                3.3210830688476562,
                2.276463031768799,
                1.6128861904144287,
                1.1605783700942993,
                0.8298595547676086,
                0.5692849159240723,
                0.3416738212108612,
            ],
        ),
        (
            scaled,
            Spacing::ComfySimple,
            25,
            &[0, 6, 12, 18, 24],
            &[
                14.614641189575195,
                4.260556697845459,
                1.7247940301895142,
                0.773391842842102,
                0.19630272686481476,
            ],
        ),
        (
            scaled,
            Spacing::ComfyDdimUniform,
            4,
            &[0, 1, 2, 3],
            &[
                4.116696357727051,
                1.6236920356750488,
                0.6983981132507324,
                0.04131441190838814,
            ],
        ),
        (
            scaled,
            Spacing::ComfyDdimUniform,
            8,
            &[0, 1, 2, 3, 4, 5, 6, 7],
            &[
                7.371844291687012,
                4.116696357727051,
                2.5109214782714844,
                1.6236920356750488,
                1.0760310888290405,
                0.6983981132507324,
                0.4022177457809448,
                0.04131441190838814,
            ],
        ),
        (
            scaled,
            Spacing::ComfyDdimUniform,
            10,
            &[0, 1, 2, 3, 4, 5, 6, 7, 8, 9],
            &[
                8.390685081481934,
                5.134430885314941,
                3.3477635383605957,
                2.292853832244873,
                1.6236920356750488,
                1.1682159900665283,
                0.8356528282165527,
                0.57405024766922,
                0.34618669748306274,
                0.04131441190838814,
            ],
        ),
        (scaled, Spacing::ComfyBeta, 1, &[0], &[14.614641189575195]),
        (
            scaled,
            Spacing::ComfyBeta,
            2,
            &[0, 1],
            &[14.614641189575195, 1.6182788610458374],
        ),
        (
            scaled,
            Spacing::ComfyBeta,
            3,
            &[0, 1, 2],
            &[14.614641189575195, 3.675753355026245, 0.7624022960662842],
        ),
        (
            scaled,
            Spacing::ComfyBeta,
            10,
            &[0, 1, 2, 3, 4, 5, 6, 7, 8, 9],
            &[
                14.614641189575195,
                11.542770385742188,
                7.371844291687012,
                4.372801780700684,
                2.6152358055114746,
                1.6182788610458374,
                1.0273293256759644,
                0.6548853516578674,
                0.3955096900463104,
                0.1990586221218109,
            ],
        ),
        (
            scaled,
            Spacing::ComfyBeta,
            25,
            &[0, 6, 12, 18, 24],
            &[
                14.614641189575195,
                6.020519256591797,
                1.77207350730896,
                0.595670223236084,
                0.09356759488582611,
            ],
        ),
        (
            scaled,
            Spacing::ComfyBeta,
            138,
            &[0, 1, 2, 69, 136, 137],
            &[
                14.614641189575195,
                14.526275634765625,
                14.438569068908691,
                1.6182788610458374,
                0.05068035423755646,
                0.04131441190838814,
            ],
        ),
    ];
    let edm = Edm::default();
    for ((schedule, b0, b1), spacing, n, positions, want) in cases {
        let kind = timesteps(spacing, schedule, b0, b1);
        let got = grid::sigmas(&kind, n, 0.002, 80.0, &edm).unwrap();
        assert_eq!(got.len(), n + 1, "{spacing:?} {n}");
        assert_eq!(got[n], 0.0);
        for (&p, &w) in positions.iter().zip(want) {
            // ComfyUI's table is float32: 1e-6 relative.
            assert!(
                (got[p] - w).abs() <= 1e-6 * w,
                "{schedule:?} {spacing:?} {n} steps, level {p}: {} against ComfyUI's {w}",
                got[p]
            );
        }
    }
    // ComfyUI's normal is k-diffusion's DiscreteSchedule.get_sigmas (float64 table): 10 steps.
    let kd: [((BetaSchedule, f64, f64), [f64; 10]); 2] = [
        (
            linear,
            [
                157.40728081040763,
                54.567513088189685,
                21.417496171227604,
                9.488920229525215,
                4.703333948915076,
                2.5546912050017787,
                1.4623566969975685,
                0.8219357858225603,
                0.38037100632746706,
                0.010000500037502575,
            ],
        ),
        (
            scaled,
            [
                14.614641229333637,
                7.839882872819809,
                4.609174133893039,
                2.9183071154268285,
                1.9501614706273922,
                1.3449277833514826,
                0.9323579668348474,
                0.6249769180115957,
                0.36865774541485086,
                0.029167158151720367,
            ],
        ),
    ];
    for ((schedule, b0, b1), want) in kd {
        let kind = timesteps(Spacing::ComfyNormal, schedule, b0, b1);
        let got = grid::sigmas(&kind, 10, 0.002, 80.0, &edm).unwrap();
        for (g, w) in got.iter().zip(want) {
            assert!(
                (g - w).abs() <= 1e-6 * w,
                "{schedule:?}: {got:?} against {want:?}"
            );
        }
    }
    // ddim_uniform at 6 steps of 1000: ComfyUI takes every 166th timestep from 1, 7 levels; the
    // grid refuses the count and names those it keeps.
    let e = grid::sigmas(
        &timesteps(Spacing::ComfyDdimUniform, linear.0, linear.1, linear.2),
        6,
        0.002,
        80.0,
        &edm,
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("takes 7 steps when asked for 6") && e.contains("4, 5,"),
        "{e}"
    );
    // The names on the command line.
    for (name, spacing) in [
        ("comfy-normal", Spacing::ComfyNormal),
        ("comfy-sgm-uniform", Spacing::ComfySgmUniform),
        ("comfy-simple", Spacing::ComfySimple),
        ("comfy-ddim-uniform", Spacing::ComfyDdimUniform),
        ("comfy-beta", Spacing::ComfyBeta),
    ] {
        assert_eq!(
            GridKind::from_name(name, None).unwrap(),
            timesteps(spacing, linear.0, linear.1, linear.2)
        );
    }
}

#[test]
fn linear_quadratic_is_comfyuis_schedule() {
    // Printed by ComfyUI's linear_quadratic_schedule as it stands (experiments/peers/
    // comfy_schedulers_check.py) for models whose sigma_max is the top of DDPM's linear chain
    // and of Stable Diffusion's (ComfyUI's float32 values): under the EDM SDE (t = sigma) the
    // grid is ComfyUI's sigmas. Defaults (threshold 0.025, n div 2 linear steps) at 1 to 25
    // steps, and threshold 0.05 with 3 linear steps at 10.
    type Case = (
        f64,
        usize,
        f64,
        Option<usize>,
        &'static [usize],
        &'static [f64],
    );
    let cases: [Case; 12] = [
        (
            157.40728759765625,
            1,
            0.025,
            None,
            &[0],
            &[157.40728759765625],
        ),
        (
            157.40728759765625,
            2,
            0.025,
            None,
            &[0, 1],
            &[157.40728759765625, 153.47210693359375],
        ),
        (
            157.40728759765625,
            5,
            0.025,
            None,
            &[0, 1, 2, 3, 4],
            &[
                157.40728759765625,
                155.439697265625,
                153.47210693359375,
                135.10792541503906,
                83.9505615234375,
            ],
        ),
        (
            157.40728759765625,
            10,
            0.025,
            None,
            &[0, 1, 2, 3, 4, 5, 6, 7, 8, 9],
            &[
                157.40728759765625,
                156.62025451660156,
                155.83322143554688,
                155.04617309570312,
                154.25914001464844,
                153.47210693359375,
                146.70358276367188,
                127.97212982177734,
                97.27770233154297,
                54.620330810546875,
            ],
        ),
        (
            157.40728759765625,
            25,
            0.025,
            None,
            &[0, 6, 12, 18, 24],
            &[
                157.40728759765625,
                155.439697265625,
                153.47210693359375,
                119.72034454345703,
                22.4002685546875,
            ],
        ),
        (
            157.40728759765625,
            10,
            0.05,
            Some(3),
            &[0, 1, 2, 3, 4, 5, 6, 7, 8, 9],
            &[
                157.40728759765625,
                154.78382873535156,
                152.16036987304688,
                149.53692626953125,
                144.23646545410156,
                133.58203125,
                117.5736083984375,
                96.21118927001953,
                69.49478149414062,
                37.42438507080078,
            ],
        ),
        (
            14.614641189575195,
            1,
            0.025,
            None,
            &[0],
            &[14.614641189575195],
        ),
        (
            14.614641189575195,
            2,
            0.025,
            None,
            &[0, 1],
            &[14.614641189575195, 14.249275207519531],
        ),
        (
            14.614641189575195,
            5,
            0.025,
            None,
            &[0, 1, 2, 3, 4],
            &[
                14.614641189575195,
                14.431958198547363,
                14.249275207519531,
                12.544234275817871,
                7.794475555419922,
            ],
        ),
        (
            14.614641189575195,
            10,
            0.025,
            None,
            &[0, 1, 2, 3, 4, 5, 6, 7, 8, 9],
            &[
                14.614641189575195,
                14.5415678024292,
                14.46849536895752,
                14.395421981811523,
                14.322348594665527,
                14.249275207519531,
                13.620844841003418,
                11.88170337677002,
                9.031847953796387,
                5.071280479431152,
            ],
        ),
        (
            14.614641189575195,
            25,
            0.025,
            None,
            &[0, 6, 12, 18, 24],
            &[
                14.614641189575195,
                14.431958198547363,
                14.249275207519531,
                11.115558624267578,
                2.0797760486602783,
            ],
        ),
        (
            14.614641189575195,
            10,
            0.05,
            Some(3),
            &[0, 1, 2, 3, 4, 5, 6, 7, 8, 9],
            &[
                14.614641189575195,
                14.371064186096191,
                14.127486228942871,
                13.883909225463867,
                13.391783714294434,
                12.40256118774414,
                10.916241645812988,
                8.932826042175293,
                6.452314376831055,
                3.474705457687378,
            ],
        ),
    ];
    let edm = Edm::default();
    for (top, n, threshold_noise, linear_steps, positions, want) in cases {
        let kind = GridKind::LinearQuadratic {
            threshold_noise,
            linear_steps,
        };
        let got = grid::sigmas(&kind, n, 0.002, top, &edm).unwrap();
        assert_eq!(got.len(), n + 1);
        for (&p, &w) in positions.iter().zip(want) {
            assert!(
                (got[p] - w).abs() <= 1e-6 * w,
                "{top} {n}: level {p} {} against ComfyUI's {w}",
                got[p]
            );
        }
    }
    // Under the flow SDE (shifted too) the fractions are of the interpolation time:
    // tau_i = tau_max (1 - u_i), sigma = tau / (1 - tau), as ComfyUI applies them to a flow model.
    let flow = scoreflow_solvers::sde::Flow::with_shift(3.0).unwrap();
    let got = grid::sigmas(
        &GridKind::from_name("linear-quadratic", None).unwrap(),
        4,
        0.002,
        80.0,
        &flow,
    )
    .unwrap();
    let u = grid::linear_quadratic_u(4, 0.025, None).unwrap();
    let t_max = 80.0 / 81.0;
    for (i, g) in got[..4].iter().enumerate() {
        let t = t_max * (1.0 - u[i]);
        assert!((g - t / (1.0 - t)).abs() <= 1e-12 * g, "{got:?}");
    }
    // Bad settings: linear_steps outside 1..n, threshold outside (0, 1).
    let bad = |threshold_noise, linear_steps| {
        grid::sigmas(
            &GridKind::LinearQuadratic {
                threshold_noise,
                linear_steps,
            },
            6,
            0.002,
            80.0,
            &edm,
        )
        .unwrap_err()
        .to_string()
    };
    assert!(bad(0.025, Some(6)).contains("linear_steps must be 1 to 5"));
    assert!(bad(0.025, Some(0)).contains("linear_steps"));
    assert!(bad(1.5, None).contains("threshold_noise"));
}

#[test]
fn ays_grids_are_comfyuis_align_your_steps() {
    // Printed by `python3 experiments/peers/ays_check.py NODES_ALIGN_YOUR_STEPS_PY` (ComfyUI's
    // comfy_extras/nodes_align_your_steps.py as it stands: AlignYourStepsScheduler.get_sigmas,
    // denoise 1) into tests/data/ays_reference.jsonl: float32 levels, 0 last.
    use scoreflow_solvers::grid::AysModel;
    let edm = Edm::default();
    let mut seen = 0;
    for line in include_str!("data/ays_reference.jsonl").lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        let model = match v["model"].as_str().unwrap() {
            "SD1" => AysModel::Sd1,
            "SDXL" => AysModel::Sdxl,
            _ => AysModel::Svd,
        };
        let n = v["steps"].as_u64().unwrap() as usize;
        let want: Vec<f64> = v["sigmas"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_f64().unwrap())
            .collect();
        // sigma_min and sigma_max are not used: any valid range gives the same levels.
        let got = grid::sigmas(&GridKind::Ays { model }, n, 0.5, 1.0, &edm).unwrap();
        assert_eq!(got.len(), want.len(), "{model:?} {n}: {got:?}");
        for (a, b) in got.iter().zip(&want) {
            // float32 rounding of ComfyUI's tensor.
            assert!(
                (a - b).abs() <= 1e-7 * b.abs(),
                "{model:?} {n} steps: {got:?} vs {want:?}"
            );
        }
        seen += 1;
    }
    assert_eq!(seen, 27);
    // At 10 steps the grid is the published list without its lowest level, exactly; the
    // command-line names choose the families.
    let ten = grid::sigmas(
        &GridKind::Ays {
            model: AysModel::Sdxl,
        },
        10,
        0.5,
        1.0,
        &edm,
    )
    .unwrap();
    assert_eq!(ten[..10], AysModel::Sdxl.levels()[..10]);
    assert_eq!(ten[10], 0.0);
    for (name, model) in [
        ("ays", AysModel::Sd1),
        ("ays-sd1", AysModel::Sd1),
        ("ays-sdxl", AysModel::Sdxl),
        ("ays-svd", AysModel::Svd),
    ] {
        assert_eq!(
            GridKind::from_name(name, None).unwrap(),
            GridKind::Ays { model }
        );
    }
    let err = GridKind::from_name("ays", Some(3.0))
        .unwrap_err()
        .to_string();
    assert!(err.contains("--rho applies to"), "{err}");
    // In a config (`{ kind = "ays", model = "svd" }`; here its JSON form), sd1 by default, other names refused.
    let svd: GridKind = serde_json::from_str(r#"{"kind": "ays", "model": "svd"}"#).unwrap();
    assert_eq!(
        svd,
        GridKind::Ays {
            model: AysModel::Svd
        }
    );
    let sd1: GridKind = serde_json::from_str(r#"{"kind": "ays"}"#).unwrap();
    assert_eq!(
        sd1,
        GridKind::Ays {
            model: AysModel::Sd1
        }
    );
    let err = serde_json::from_str::<GridKind>(r#"{"kind": "ays", "model": "sd3"}"#)
        .unwrap_err()
        .to_string();
    assert!(err.contains("unknown variant `sd3`"), "{err}");
}

#[test]
fn comfy_beta_takes_the_beta_sampling_schedulers_shape() {
    // Printed by ComfyUI's beta_scheduler as it stands, called with alpha and beta as its
    // BetaSamplingScheduler node calls it (`experiments/peers/comfy_schedulers_check.py`, the
    // lines with "alpha", into tests/data/comfy_beta_shapes.jsonl): three shapes on DDPM's
    // linear chain and Stable Diffusion's, 3, 10 and 25 steps, and the script's BETA_TIES,
    // shapes and counts where a timestep lands on a half step; ComfyUI's float32 levels.
    use scoreflow_solvers::grid::Spacing;
    let edm = Edm::default();
    let mut seen = 0;
    let mut ties: Vec<String> = Vec::new();
    for line in include_str!("data/comfy_beta_shapes.jsonl").lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        let (schedule, beta_start, beta_end) = match v["chain"].as_str().unwrap() {
            "linear" => (BetaSchedule::Linear, 1e-4, 0.02),
            _ => (BetaSchedule::ScaledLinear, 0.00085, 0.012),
        };
        let kind = GridKind::Timesteps {
            spacing: Spacing::ComfyBeta,
            steps_offset: 0,
            schedule,
            beta_start,
            beta_end,
            timesteps: 1000,
            alpha: v["alpha"].as_f64(),
            beta: v["beta"].as_f64(),
        };
        let n = v["steps"].as_u64().unwrap() as usize;
        let got = grid::sigmas(&kind, n, 0.002, 80.0, &edm).unwrap();
        let want: Vec<f64> = v["sigmas"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_f64().unwrap())
            .collect();
        assert_eq!(got.len(), want.len(), "{line}: {got:?}");
        let off: Vec<usize> = (0..got.len())
            .filter(|&i| (got[i] - want[i]).abs() > 1e-6 * want[i])
            .collect();
        if !off.is_empty() {
            ties.push(format!(
                "{} ({}, {}) {n}: positions {off:?}",
                v["chain"].as_str().unwrap(),
                v["alpha"],
                v["beta"]
            ));
        }
        seen += 1;
    }
    assert_eq!(seen, 36);
    // Where a timestep lands on a half step, the quantile's last bit decides it. The cases of
    // BETA_TIES agree (closed forms where a parameter is 1, statrs' value elsewhere, 1/2 at the
    // default's median) but one: Beta(2, 5) at 64 steps, whose quantile at p = 57/64 is 1/2
    // exactly (I_{1/2}(2, 5) = 57/64), step 499.5: scipy's value is an ulp above (500),
    // statrs' an ulp below (499), one timestep apart at that level.
    assert_eq!(
        ties,
        [
            "linear (2.0, 5.0) 64: positions [7]",
            "scaled-linear (2.0, 5.0) 64: positions [7]"
        ]
    );
    // Left out, the shape is ComfyUI's beta scheduler's (0.6, 0.6); a shape on another spacing,
    // or one not positive and finite, is refused.
    let with = |spacing, alpha: Option<f64>, beta: Option<f64>| GridKind::Timesteps {
        spacing,
        steps_offset: 0,
        schedule: BetaSchedule::Linear,
        beta_start: 1e-4,
        beta_end: 0.02,
        timesteps: 1000,
        alpha,
        beta,
    };
    assert_eq!(
        grid::sigmas(&with(Spacing::ComfyBeta, None, None), 10, 0.002, 80.0, &edm).unwrap(),
        grid::sigmas(
            &with(Spacing::ComfyBeta, Some(0.6), Some(0.6)),
            10,
            0.002,
            80.0,
            &edm
        )
        .unwrap()
    );
    for (kind, needle) in [
        (
            with(Spacing::ComfyNormal, Some(0.5), None),
            "not the comfy-normal spacing",
        ),
        (with(Spacing::ComfyBeta, Some(0.0), None), "alpha"),
        (with(Spacing::ComfyBeta, None, Some(f64::NAN)), "beta"),
        (with(Spacing::ComfyBeta, Some(1e8), Some(3.0)), "[1e-6, 50]"),
        (
            with(Spacing::ComfyBeta, Some(1e-310), Some(0.6)),
            "[1e-6, 50]",
        ),
        (
            with(Spacing::ComfyBeta, Some(0.6), Some(5e-324)),
            "[1e-6, 50]",
        ),
    ] {
        let err = grid::sigmas(&kind, 10, 0.002, 80.0, &edm)
            .unwrap_err()
            .to_string();
        assert!(err.contains(needle), "{err}");
    }
    // The keys stay out of a grid's JSON where left out (cells keep their keys).
    let json = serde_json::to_value(with(Spacing::ComfyBeta, None, None)).unwrap();
    assert!(
        json.get("alpha").is_none() && json.get("beta").is_none(),
        "{json}"
    );
}

#[test]
fn partial_runs_take_diffusers_and_comfyuis_tails() {
    use scoreflow_solvers::grid::Partial;
    let edm = Edm::default();
    let karras = |n| grid::sigmas(&GridKind::default(), n, 0.002, 80.0, &edm).unwrap();
    // diffusers' get_timesteps: init_timestep = min(int(n * strength), n), in Python's float
    // arithmetic (100 x 0.29 = 28.999999999999996: 28 steps).
    for (n, s, run) in [(10, 0.3, 3), (50, 0.8, 40), (100, 0.29, 28), (7, 1.0, 7)] {
        let p = Partial::Strength(s);
        assert_eq!(p.grid_steps(n).unwrap(), n);
        let g = karras(n);
        assert_eq!(p.tail(&g, n).unwrap(), g[n - run..], "{n} {s}");
    }
    // ComfyUI's KSampler.set_steps: int(steps / denoise) steps, the last steps + 1 levels; above
    // 0.9999 the whole grid.
    for (n, d, total) in [
        (10, 0.5, 20),
        (20, 0.7, 28),
        (20, 0.99995, 20),
        (3, 0.1, 30),
    ] {
        let p = Partial::Denoise(d);
        assert_eq!(p.grid_steps(n).unwrap(), total, "{n} {d}");
        let g = karras(total);
        assert_eq!(p.tail(&g, n).unwrap(), g[total - n..], "{n} {d}");
    }
    for p in [
        Partial::Strength(0.0),
        Partial::Strength(1.5),
        Partial::Denoise(-0.1),
        Partial::Denoise(f64::NAN),
    ] {
        let err = p.grid_steps(10).unwrap_err().to_string();
        assert!(err.contains("must be in (0, 1]"), "{err}");
    }
    let err = Partial::Strength(0.05)
        .tail(&karras(10), 10)
        .unwrap_err()
        .to_string();
    assert!(err.contains("runs no step"), "{err}");
    let err = Partial::Denoise(1e-9)
        .grid_steps(10)
        .unwrap_err()
        .to_string();
    assert!(err.contains("more than 1000000"), "{err}");
}

#[test]
fn discarding_the_penultimate_level_is_comfyuis_ksampler_rule() {
    // ComfyUI's KSampler for dpm_2, dpm_2_ancestral, uni_pc, uni_pc_bh2: calculate_sigmas for
    // steps + 1, then torch.cat([sigmas[:-2], sigmas[-1:]]). Karras' levels written out (SD's
    // range, as ComfyUI's model_sampling gives it).
    let edm = Edm::default();
    let (lo, hi): (f64, f64) = (0.0291675, 14.614642);
    let karras = |i: usize, m: usize| {
        let (a, b) = (hi.powf(1.0 / 7.0), lo.powf(1.0 / 7.0));
        (a + i as f64 / (m - 1) as f64 * (b - a)).powi(7)
    };
    for n in [1, 2, 3, 10, 25] {
        let got =
            grid::sigmas_discarding_penultimate(&GridKind::default(), n, lo, hi, &edm).unwrap();
        // n + 1 levels above 0 in the grid of n + 1 steps; all but its last (= lo) are kept.
        let mut want: Vec<f64> = (0..n).map(|i| karras(i, n + 1)).collect();
        want.push(0.0);
        assert_eq!(got.len(), n + 1, "{n}");
        for (g, w) in got.iter().zip(&want) {
            assert!((g - w).abs() <= 1e-12 * w.max(1.0), "{n}: {got:?} {want:?}");
        }
        assert!(
            got[n - 1] > lo,
            "{n}: the last step leaves from above sigma_min"
        );
    }
    // The same surgery on every computed placement, the chain's spacings included.
    for kind in [
        GridKind::from_name("log-snr", None).unwrap(),
        GridKind::from_name("comfy-normal", None).unwrap(),
        GridKind::from_name("ddpm-trailing", None).unwrap(),
        GridKind::from_name("ays-sdxl", None).unwrap(),
        GridKind::from_name("linear-quadratic", None).unwrap(),
    ] {
        for n in [2, 7, 16] {
            let full = grid::sigmas(&kind, n + 1, 0.002, 80.0, &edm).unwrap();
            let got = grid::sigmas_discarding_penultimate(&kind, n, 0.002, 80.0, &edm).unwrap();
            assert_eq!(got[..n], full[..n], "{kind:?} {n}");
            assert_eq!(got[n], 0.0);
        }
    }
    // Placements that list their levels per count have no grid of one step more.
    for (kind, name) in [
        (
            GridKind::Levels {
                sigmas: vec![vec![80.0, 1.0], vec![80.0, 5.0, 1.0]],
            },
            "levels",
        ),
        (GridKind::Gits(Default::default()), "gits"),
        (GridKind::Oss(Default::default()), "oss"),
    ] {
        let e = grid::sigmas_discarding_penultimate(&kind, 2, 0.002, 80.0, &edm)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains(&format!("the {name} placement lists its levels")),
            "{e}"
        );
    }
    assert!(
        grid::sigmas_discarding_penultimate(&GridKind::default(), 0, 0.002, 80.0, &edm).is_err()
    );
    // One list of levels is interpolated to the count of one step more, as ays is.
    let one = GridKind::Levels {
        sigmas: vec![vec![80.0, 5.0, 0.5]],
    };
    assert_eq!(
        grid::sigmas_discarding_penultimate(&one, 2, 0.002, 80.0, &edm).unwrap(),
        vec![80.0, 5.0, 0.0]
    );
    // Errors of the larger grid say that it is one step more.
    let e = grid::sigmas_discarding_penultimate(
        &GridKind::default(),
        grid::MAX_STEPS,
        0.002,
        80.0,
        &edm,
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("takes the grid of 1000001 steps"), "{e}");
}
