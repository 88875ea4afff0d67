//! GITS grids (Chen et al. 2024) and explicit `levels` grids: the dynamic program is the
//! optimum, the cost matrix and the chosen grids are the authors' own, and the grids do what
//! GITS is for.

use scoreflow_solvers::gits::{cost_matrix, select, teacher_trajectory, CostMetric, GitsParams};
use scoreflow_solvers::sde::Edm;
use scoreflow_solvers::{grid, run, GaussianDenoiser, GridKind, RunOptions, SamplerSpec};
use tch::{Device, Kind, Tensor};

/// The stand-in network of experiments/peers/gits_dp.py: the exact denoiser of N(MEAN, COV).
fn pinned_gaussian() -> GaussianDenoiser {
    GaussianDenoiser::new(
        vec![0.5, -1.0],
        vec![vec![1.0, 0.2], vec![0.2, 0.09]],
        Device::Cpu,
    )
    .unwrap()
}

/// Its warm-up latents: Z[i][j] = sqrt(2) sin(2.3 i + 0.9 j + 0.5), 8 rows.
fn pinned_latents() -> Tensor {
    let v: Vec<f64> = (0..8)
        .flat_map(|i| {
            (0..2).map(move |j| 2f64.sqrt() * (2.3 * i as f64 + 0.9 * j as f64 + 0.5).sin())
        })
        .collect();
    Tensor::from_slice(&v).view([8, 2])
}

#[test]
fn gits_matches_the_authors_dynamic_program() {
    // Printed by zju-pi/diff-sampler's own gits-main/gits_utils.py `get_dp_list` (teacher
    // samplers from its solvers.py), run as it stands by `python3 experiments/peers/gits_dp.py
    // DIFF_SAMPLER_REPO` on the exact denoiser of the 2-D Gaussian above, from the same 8
    // latents, on the teacher grid Karras(12 steps, 80 to 0.002) then 0: the chosen teacher
    // indices, four entries of the cost matrix's first row (its entries 2, 5, 8 and 11) and the
    // matrix's sum. The reference accumulates the matrix in float32.
    type Case = (
        &'static str,
        CostMetric,
        f64,
        usize,
        &'static [usize],
        [f64; 4],
        f64,
    );
    let ipndm_dev = [
        0.0028514694422483444,
        0.057570524513721466,
        0.410774290561676,
        0.4369199872016907,
    ];
    let cases: [Case; 6] = [
        (
            "ipndm",
            CostMetric::Dev,
            1.15,
            3,
            &[0, 6, 7, 12],
            ipndm_dev,
            15.272536566357303,
        ),
        (
            "ipndm",
            CostMetric::Dev,
            1.15,
            4,
            &[0, 5, 6, 7, 12],
            ipndm_dev,
            15.272536566357303,
        ),
        (
            "ipndm",
            CostMetric::Dev,
            1.15,
            6,
            &[0, 5, 6, 7, 10, 11, 12],
            ipndm_dev,
            15.272536566357303,
        ),
        (
            "ipndm",
            CostMetric::L2,
            1.15,
            4,
            &[0, 6, 7, 8, 12],
            [
                0.00581256253644824,
                0.11741724610328674,
                0.8820850253105164,
                1.108729362487793,
            ],
            37.917518443056906,
        ),
        (
            "euler",
            CostMetric::L1,
            1.0,
            5,
            &[0, 5, 6, 7, 8, 12],
            [
                0.004643958993256092,
                0.09765555709600449,
                0.7533334493637085,
                1.0492029190063477,
            ],
            32.16404416556907,
        ),
        (
            "euler",
            CostMetric::L2,
            1.3,
            3,
            &[0, 6, 7, 12],
            [
                0.003875041613355279,
                0.08147799223661423,
                0.6227648854255676,
                0.8383178114891052,
            ],
            25.83187028805696,
        ),
    ];
    let den = pinned_gaussian();
    let edm = Edm::default();
    let sigmas = grid::sigmas(&GridKind::Karras { rho: 7.0 }, 12, 0.002, 80.0, &edm).unwrap();
    let z = pinned_latents();
    for (teacher, metric, coeff, steps, path, row, sum) in cases {
        let spec = SamplerSpec::from_name(teacher).unwrap();
        let states = teacher_trajectory(&spec, &den, &edm, &sigmas, &z).unwrap();
        let cost = cost_matrix(&den, &sigmas, &states, metric).unwrap();
        let close = |a: f64, b: f64| (a - b).abs() <= 2e-7 * b.abs().max(1.0);
        for (k, want) in [2, 5, 8, 11].iter().zip(row) {
            assert!(
                close(cost[0][*k], want),
                "{teacher} {metric:?}: cost[0][{k}] = {} against the reference's {want}",
                cost[0][*k]
            );
        }
        let total: f64 = cost.iter().flatten().sum();
        assert!(
            (total - sum).abs() <= 1e-5 * sum,
            "{teacher} {metric:?}: cost sum {total} against {sum}"
        );
        assert_eq!(
            select(&cost, steps, coeff).unwrap(),
            path,
            "{teacher} {metric:?} coeff {coeff}, {steps} steps"
        );
    }
}

#[test]
fn the_dynamic_program_finds_the_least_discounted_cost_path() {
    // Random costs on 10 levels; every path from 0 to 9 of k steps enumerated: the discounted
    // cost sum_k coeff^k cost(p_k, p_k+1) of the program's path is the least, and its path the
    // one that reaches it.
    let m1 = 10;
    let mut state = 0x5eed_u64;
    let mut next = || {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (state >> 11) as f64 / (1u64 << 53) as f64
    };
    let mut cost = vec![vec![0.0; m1]; m1];
    for (i, row) in cost.iter_mut().enumerate() {
        for c in row.iter_mut().skip(i + 1) {
            *c = next();
        }
    }
    fn paths(
        from: usize,
        last: usize,
        k: usize,
        prefix: &mut Vec<usize>,
        out: &mut Vec<Vec<usize>>,
    ) {
        if k == 1 {
            prefix.push(last);
            out.push(prefix.clone());
            prefix.pop();
            return;
        }
        for i in from + 1..last {
            prefix.push(i);
            paths(i, last, k - 1, prefix, out);
            prefix.pop();
        }
    }
    for coeff in [0.8f64, 1.0, 1.15] {
        for k in 1..=7 {
            let mut all = Vec::new();
            paths(0, m1 - 1, k, &mut vec![0], &mut all);
            let value = |p: &[usize]| -> f64 {
                p.windows(2)
                    .enumerate()
                    .map(|(s, w)| coeff.powi(s as i32) * cost[w[0]][w[1]])
                    .sum()
            };
            let best = all
                .iter()
                .min_by(|a, b| value(a).partial_cmp(&value(b)).unwrap())
                .unwrap();
            let got = select(&cost, k, coeff).unwrap();
            assert_eq!(&got, best, "coeff {coeff}, {k} steps");
            assert_eq!(got.len(), k + 1);
        }
    }
    // Every level: m1 - 1 steps take the teacher's own grid; more are an error.
    assert_eq!(
        select(&cost, m1 - 1, 1.0).unwrap(),
        (0..m1).collect::<Vec<_>>()
    );
    let err = select(&cost, m1, 1.0).unwrap_err().to_string();
    assert!(err.contains("teacher grid of 9 steps"), "{err}");
    assert!(select(&cost, 3, 0.0)
        .unwrap_err()
        .to_string()
        .contains("coeff"));
}

#[test]
fn levels_grids_take_their_list_or_interpolate_it_log_linearly() {
    let edm = Edm::default();
    let one = GridKind::Levels {
        sigmas: vec![vec![80.0, 8.0, 0.8, 0.08]],
    };
    assert_eq!(
        grid::sigmas(&one, 4, 0.002, 80.0, &edm).unwrap(),
        vec![80.0, 8.0, 0.8, 0.08, 0.0]
    );
    // A geometric list interpolates to the geometric grid between its ends: log-snr's.
    let seven = grid::sigmas(&one, 7, 0.002, 80.0, &edm).unwrap();
    let logsnr = grid::sigmas(&GridKind::LogSnr {}, 7, 0.08, 80.0, &edm).unwrap();
    for (a, b) in seven.iter().zip(&logsnr) {
        assert!(
            (a - b).abs() <= 1e-12 * b.max(1.0),
            "{seven:?} vs {logsnr:?}"
        );
    }
    // Align Your Steps' loglinear_interp on the 10-step SD1.5 list ComfyUI ships,
    // to 5 levels: positions 0, 2.5, 5, 7.5, 10.
    let ays = [
        14.615, 6.475, 3.861, 2.697, 1.886, 1.396, 0.963, 0.652, 0.399, 0.152, 0.029,
    ];
    let five = grid::loglinear(&ays, 5);
    let mid = |a: f64, b: f64| (a.ln() / 2.0 + b.ln() / 2.0).exp();
    let want = [14.615, mid(3.861, 2.697), 1.396, mid(0.652, 0.399), 0.029];
    for (a, b) in five.iter().zip(want) {
        assert!((a - b).abs() < 1e-12 * b.max(1.0), "{five:?}");
    }
    // Several lists: the one of the step count, else an error naming what there is.
    let two = GridKind::Levels {
        sigmas: vec![vec![80.0, 1.0], vec![80.0, 5.0, 0.5]],
    };
    assert_eq!(
        grid::sigmas(&two, 3, 0.002, 80.0, &edm).unwrap(),
        vec![80.0, 5.0, 0.5, 0.0]
    );
    let err = grid::sigmas(&two, 4, 0.002, 80.0, &edm)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("no list of 4 levels (the lists have 2, 3)"),
        "{err}"
    );
    for (bad, what) in [
        (vec![vec![80.0, 90.0]], "must decrease"),
        (vec![vec![80.0, 0.0]], "not positive and finite"),
        (vec![vec![]], "list 0 is empty"),
        (vec![], "no list"),
        (
            vec![vec![80.0, 1.0], vec![80.0, 5.0, 0.5], vec![70.0, 2.0]],
            "lists 0 and 2 both have 2 levels",
        ),
    ] {
        let err = grid::sigmas(&GridKind::Levels { sigmas: bad }, 2, 0.002, 80.0, &edm)
            .unwrap_err()
            .to_string();
        assert!(err.contains(what), "{err}");
    }
    // The gits placement needs a model.
    let err = grid::sigmas(&GridKind::Gits(GitsParams::default()), 4, 0.002, 80.0, &edm)
        .unwrap_err()
        .to_string();
    assert!(err.contains("chosen for a model"), "{err}");
}

/// Max distance over the samples between Euler on `sigmas` and the exact flow's end.
fn euler_error(den: &GaussianDenoiser, sigmas: &[f64], z: &Tensor) -> f64 {
    let edm = Edm::default();
    let spec = SamplerSpec::from_name("euler").unwrap();
    let mut noise =
        scoreflow_solvers::BrownianNoise::new(0, 0, 64, &[3], 100.0, Device::Cpu, Kind::Double);
    let x = run(
        spec.build().unwrap().as_ref(),
        den,
        &edm,
        sigmas,
        z * sigmas[0],
        &mut noise,
        &RunOptions::default(),
        &mut |_, _| {},
    )
    .unwrap()
    .x;
    let exact = den.exact_flow(&(z * sigmas[0]), sigmas[0], 0.0).unwrap();
    (x - exact)
        .square()
        .sum_dim_intlist([1i64].as_slice(), false, Kind::Double)
        .sqrt()
        .max()
        .double_value(&[])
}

#[test]
fn gits_grids_beat_the_teachers_placement_for_euler_on_a_gaussian() {
    // The correlated 3-D Gaussian of the convergence test: for Euler, the grid GITS picks from
    // the 60-step Karras teacher (l2 cost, coeff 1) has a smaller error against the exact
    // flow than the Karras grid of the same step count, on fresh noise (not the warm-up's).
    let den = GaussianDenoiser::new(
        vec![0.5, -1.0, 2.0],
        vec![
            vec![1.0, 0.3, -0.1],
            vec![0.3, 0.5, 0.05],
            vec![-0.1, 0.05, 0.08],
        ],
        Device::Cpu,
    )
    .unwrap();
    let edm = Edm::default();
    let params = GitsParams {
        metric: CostMetric::L2,
        coeff: 1.0,
        samples: 64,
        ..GitsParams::default()
    };
    let gits = params
        .solve(&den, &edm, 0.002, 80.0, &[3], Device::Cpu, Kind::Double)
        .unwrap();
    let z = scoreflow_solvers::BrownianNoise::new(7, 0, 64, &[3], 1.0, Device::Cpu, Kind::Double)
        .initial();
    for steps in [4, 6, 8, 12] {
        let chosen = gits.sigmas(steps).unwrap();
        let karras =
            grid::sigmas(&GridKind::Karras { rho: 7.0 }, steps, 0.002, 80.0, &edm).unwrap();
        let (e_gits, e_karras) = (
            euler_error(&den, &chosen, &z),
            euler_error(&den, &karras, &z),
        );
        eprintln!("{steps} steps: gits {e_gits:.4} karras {e_karras:.4} {chosen:?}");
        assert!(
            e_gits < e_karras,
            "{steps} steps: gits {e_gits} karras {e_karras}"
        );
    }
}
