//! OSS grids (Pei, Hu & Gu 2025): the search is the authors' own, its grids are the best the
//! student finds, and they beat the fixed placements for the sampler they were chosen for.

use scoreflow_solvers::gits::teacher_trajectory;
use scoreflow_solvers::oss::{cal_medium, search, Oss, OssParams};
use scoreflow_solvers::sde::Edm;
use scoreflow_solvers::{
    grid, run, BrownianNoise, GaussianMixture, GridKind, RunOptions, SamplerSpec,
};
use tch::{Device, Kind, Tensor};

/// The stand-in network of experiments/peers/oss_check.py: the exact denoiser of a 2-D mixture.
fn pinned_mixture() -> GaussianMixture {
    GaussianMixture::new(
        vec![0.3, 0.45, 0.25],
        vec![vec![-1.5, 0.5], vec![1.0, 1.2], vec![0.3, -1.4]],
        vec![vec![0.3, 0.15], vec![0.2, 0.4], vec![0.25, 0.25]],
        Device::Cpu,
    )
    .unwrap()
}

/// Its start latents over 80: Z[i][j] = sqrt(2) sin(2.3 i + 0.9 j + 0.5).
fn pinned_latents(rows: usize) -> Tensor {
    let v: Vec<f64> = (0..rows)
        .flat_map(|i| {
            (0..2).map(move |j| 2f64.sqrt() * (2.3 * i as f64 + 0.9 * j as f64 + 0.5).sin())
        })
        .collect();
    Tensor::from_slice(&v).view([rows as i64, 2])
}

fn solved(teacher_steps: usize, samples: usize, rounds: usize) -> Oss {
    let den = pinned_mixture();
    let edm = Edm::default();
    let sigmas = grid::sigmas(
        &GridKind::Karras { rho: 7.0 },
        teacher_steps,
        0.002,
        80.0,
        &edm,
    )
    .unwrap();
    let euler = SamplerSpec::from_name("euler").unwrap();
    let states = teacher_trajectory(&euler, &den, &edm, &sigmas, &pinned_latents(samples)).unwrap();
    let from = search(&den, &sigmas, &states, rounds).unwrap();
    Oss {
        teacher_sigmas: sigmas,
        from,
    }
}

/// A path in the reference's form: teacher indices counted from the end, the level before the
/// last step first, the end (0) left out.
fn as_reference(path: &[usize], last: usize) -> Vec<usize> {
    path[..path.len() - 1]
        .iter()
        .rev()
        .map(|&i| last - i)
        .collect()
}

#[test]
fn oss_matches_the_authors_search() {
    // Printed by bebebe666/OptimalSteps' own OSS/OSS.py (`search_OSS`, then `cal_medium`), run
    // as it stands by `python3 experiments/peers/oss_check.py OPTIMALSTEPS_REPO` on the exact
    // denoiser of the mixture above in float64, with the Euler teacher on Karras(N steps, 80 to
    // 0.002) then 0, from the latents 80 Z: the lines with "from_the_top": true (the first
    // round steps from the top only, as here; see the module documentation of
    // scoreflow_solvers::oss). Each sample's grid and their median, in the reference's form.
    type Case = (
        usize,
        usize,
        usize,
        &'static [&'static [usize]],
        &'static [usize],
    );
    let cases: [Case; 4] = [
        (
            40,
            3,
            8,
            &[
                &[14, 18, 40],
                &[14, 18, 40],
                &[15, 18, 40],
                &[14, 19, 40],
                &[15, 18, 40],
                &[14, 17, 40],
                &[15, 19, 40],
                &[13, 18, 40],
            ],
            &[14, 18, 40],
        ),
        (
            40,
            5,
            8,
            &[
                &[11, 15, 18, 21, 40],
                &[14, 16, 18, 21, 40],
                &[13, 16, 18, 21, 40],
                &[11, 15, 18, 21, 40],
                &[13, 16, 18, 21, 40],
                &[15, 16, 18, 21, 40],
                &[11, 16, 18, 21, 40],
                &[12, 14, 16, 20, 40],
            ],
            &[12, 16, 18, 21, 40],
        ),
        (
            40,
            8,
            7,
            &[
                &[10, 12, 14, 16, 18, 20, 23, 40],
                &[10, 14, 15, 16, 17, 19, 22, 40],
                &[10, 14, 16, 17, 18, 20, 23, 40],
                &[9, 12, 14, 17, 19, 21, 24, 40],
                &[10, 14, 16, 17, 18, 20, 23, 40],
                &[10, 15, 16, 17, 18, 20, 23, 40],
                &[9, 11, 13, 16, 18, 20, 23, 40],
            ],
            &[10, 13, 14, 16, 18, 20, 23, 40],
        ),
        (25, 4, 1, &[&[8, 11, 13, 25]], &[8, 11, 13, 25]),
    ];
    for (n, steps, samples, paths, median) in cases {
        // One search of more rounds holds the grids of fewer steps: search once with 8.
        let oss = solved(n, samples, 8.max(steps));
        for (s, want) in paths.iter().enumerate() {
            let got = as_reference(&oss.sample_path(s, steps).unwrap(), n);
            assert_eq!(&got, want, "N {n}, {steps} steps, sample {s}");
        }
        assert_eq!(
            as_reference(&oss.path(steps).unwrap(), n),
            median,
            "N {n}, {steps} steps: the median"
        );
    }
}

#[test]
fn cal_medium_is_the_references() {
    // (l[n/2] + l[n/2 - 1]) / 2 rounded down, per position: the true median for an even count,
    // the mean of the middle value and the one below it for an odd count.
    assert_eq!(cal_medium(&[vec![3, 7]]), vec![3, 7]);
    assert_eq!(cal_medium(&[vec![1, 9], vec![4, 2]]), vec![2, 5]);
    assert_eq!(cal_medium(&[vec![1], vec![5], vec![4]]), vec![2]);
    assert_eq!(cal_medium(&[vec![8], vec![1], vec![6], vec![3]]), vec![4]);
}

#[test]
fn each_sample_path_is_the_best_the_euler_student_finds() {
    // For one sample and 2 steps the search is exhaustive: every 2-step path through the teacher
    // levels (and the 1-step path) is tried, and the chosen one ends nearest the teacher's end.
    let den = pinned_mixture();
    let edm = Edm::default();
    let n = 30;
    let sigmas = grid::sigmas(&GridKind::Karras { rho: 7.0 }, n, 0.002, 80.0, &edm).unwrap();
    let euler = SamplerSpec::from_name("euler").unwrap();
    for row in 0..4 {
        let z = pinned_latents(4).narrow(0, row, 1);
        let states = teacher_trajectory(&euler, &den, &edm, &sigmas, &z).unwrap();
        let from = search(&den, &sigmas, &states, 2).unwrap();
        let oss = Oss {
            teacher_sigmas: sigmas.clone(),
            from,
        };
        let end = &states[n];
        let err = |levels: &[f64]| -> f64 {
            let mut noise = BrownianNoise::new(0, 0, 1, &[2], 81.0, Device::Cpu, Kind::Double);
            let out = run(
                euler.build().unwrap().as_ref(),
                &den,
                &edm,
                levels,
                &z * 80.0,
                &mut noise,
                &RunOptions::default(),
                &mut |_, _| {},
            )
            .unwrap();
            (out.x - end).square().mean(Kind::Double).double_value(&[])
        };
        let chosen = oss.sample_path(0, 2).unwrap();
        let mut levels: Vec<f64> = chosen.iter().map(|&i| sigmas[i]).collect();
        levels.dedup();
        let best = err(&levels);
        let mut others = vec![err(&[80.0, 0.0])];
        for &s in &sigmas[1..n] {
            others.push(err(&[80.0, s, 0.0]));
        }
        let min = others.iter().cloned().fold(f64::INFINITY, f64::min);
        assert!(
            best <= min * (1.0 + 1e-12),
            "sample {row}: the chosen path {chosen:?} ends {best:e} from the teacher, another {min:e}"
        );
    }
}

#[test]
fn the_oss_grid_beats_karras_for_euler_on_the_mixture() {
    // What OSS is for: at few steps, Euler on the grid chosen for the model lands nearer the
    // teacher's samples (fresh latents, not the warm-up ones) than Euler on Karras' grid.
    let den = pinned_mixture();
    let edm = Edm::default();
    let params = OssParams {
        teacher_steps: 60,
        samples: 32,
        ..Default::default()
    };
    let oss = params
        .solve(&den, &edm, 0.002, 80.0, &[2], Device::Cpu, Kind::Double, 6)
        .unwrap();
    let euler = SamplerSpec::from_name("euler").unwrap();
    let z = BrownianNoise::new(7, 0, 256, &[2], 1.0, Device::Cpu, Kind::Double).initial();
    let teacher = teacher_trajectory(&euler, &den, &edm, &oss.teacher_sigmas, &z).unwrap();
    let end = teacher.last().unwrap();
    let err = |levels: &[f64]| -> f64 {
        let mut noise = BrownianNoise::new(0, 0, 256, &[2], 81.0, Device::Cpu, Kind::Double);
        let out = run(
            euler.build().unwrap().as_ref(),
            &den,
            &edm,
            levels,
            &z * levels[0],
            &mut noise,
            &RunOptions::default(),
            &mut |_, _| {},
        )
        .unwrap();
        (out.x - end).square().mean(Kind::Double).double_value(&[])
    };
    for steps in [3, 4, 6] {
        let levels = oss.sigmas(steps).unwrap();
        assert_eq!(levels[0], 80.0, "OSS grids start at the top");
        let karras =
            grid::sigmas(&GridKind::Karras { rho: 7.0 }, steps, 0.002, 80.0, &edm).unwrap();
        let (e_oss, e_karras) = (err(&levels), err(&karras));
        assert!(
            e_oss < 0.5 * e_karras,
            "{steps} steps: OSS {e_oss:e}, karras {e_karras:e} ({levels:?})"
        );
    }
}

#[test]
fn bad_oss_settings_are_refused() {
    let den = pinned_mixture();
    let edm = Edm::default();
    let solve = |p: OssParams, rounds: usize| {
        p.solve(
            &den,
            &edm,
            0.002,
            80.0,
            &[2],
            Device::Cpu,
            Kind::Double,
            rounds,
        )
        .map(|_| ())
        .unwrap_err()
        .to_string()
    };
    let e = solve(
        OssParams {
            teacher: SamplerSpec::from_name("euler-ancestral").unwrap(),
            ..Default::default()
        },
        3,
    );
    assert!(e.contains("deterministic"), "{e}");
    let e = solve(
        OssParams {
            samples: 0,
            ..Default::default()
        },
        3,
    );
    assert!(e.contains("samples"), "{e}");
    let e = solve(
        OssParams {
            teacher_steps: 5,
            samples: 2,
            ..Default::default()
        },
        6,
    );
    assert!(e.contains("teacher grid of 5 steps"), "{e}");
    let e = solve(
        OssParams {
            teacher_grid: Box::new(GridKind::Oss(OssParams::default())),
            ..Default::default()
        },
        3,
    );
    assert!(e.contains("cannot itself"), "{e}");
}

/// A denoiser whose estimate is NaN.
struct NotANumber;

impl scoreflow_solvers::Denoiser for NotANumber {
    fn denoise(&self, x: &Tensor, _sigma: f64) -> scoreflow_solvers::Result<Tensor> {
        Ok(x * f64::NAN)
    }
}

#[test]
fn a_trajectory_or_denoiser_that_is_not_finite_is_an_error() {
    let edm = Edm::default();
    let sigmas = grid::sigmas(&GridKind::Karras { rho: 7.0 }, 6, 0.002, 80.0, &edm).unwrap();
    let den = pinned_mixture();
    let euler = SamplerSpec::from_name("euler").unwrap();
    let states = teacher_trajectory(&euler, &den, &edm, &sigmas, &pinned_latents(3)).unwrap();
    let e = search(&NotANumber, &sigmas, &states, 2)
        .unwrap_err()
        .to_string();
    assert!(e.contains("round 0") && e.contains("not a number"), "{e}");
    let mut broken: Vec<Tensor> = states.iter().map(|s| s.shallow_clone()).collect();
    broken[3] = &broken[3] * f64::INFINITY;
    let e = search(&den, &sigmas, &broken, 2).unwrap_err().to_string();
    assert!(e.contains("trajectory is not finite"), "{e}");
    assert!(search(&den, &sigmas, &states, 2).is_ok());
}
