#![allow(dead_code)]
//! Helpers shared by the solver tests.

use scoreflow_solvers::{
    grid, noise::BrownianNoise, run, Denoiser, GridKind, RunOptions, SamplerSpec, Sde, SolverError,
};
use tch::{Device, Kind, Tensor};

/// Run `spec` from standard normals `z` (scaled to `sigmas[0]`), f64 on the CPU.
pub fn sample(
    spec: &SamplerSpec,
    den: &dyn Denoiser,
    sde: &dyn Sde,
    sigmas: &[f64],
    seed: u64,
    n: usize,
    d: usize,
) -> (Tensor, usize) {
    try_sample(spec, den, sde, sigmas, seed, n, d).unwrap()
}

/// [`sample`], returning the run's error instead of panicking.
pub fn try_sample(
    spec: &SamplerSpec,
    den: &dyn Denoiser,
    sde: &dyn Sde,
    sigmas: &[f64],
    seed: u64,
    n: usize,
    d: usize,
) -> Result<(Tensor, usize), SolverError> {
    let span = sigmas[0].max(sde.time_of(sigmas[0])) * 1.001 + 1.0;
    let mut noise = BrownianNoise::new(seed, 0, n, &[d as i64], span, Device::Cpu, Kind::Double);
    let x = noise.initial() * sigmas[0];
    let sampler = spec.build()?;
    let out = run(
        sampler.as_ref(),
        den,
        sde,
        sigmas,
        x,
        &mut noise,
        &RunOptions::default(),
        &mut |_, _| {},
    )?;
    Ok((out.x, out.nfe))
}

/// Run `spec` from the given start `x` (at `sigmas[0]`) with the Brownian paths of `noise_seed`:
/// what a sampler's own noise changes, with the start held fixed.
pub fn sample_with_noise(
    spec: &SamplerSpec,
    den: &dyn Denoiser,
    sde: &dyn Sde,
    sigmas: &[f64],
    x: &Tensor,
    noise_seed: u64,
) -> Tensor {
    let size = x.size();
    let span = sigmas[0].max(sde.time_of(sigmas[0])) * 1.001 + 1.0;
    let mut noise = BrownianNoise::new(
        noise_seed,
        0,
        size[0] as usize,
        &size[1..],
        span,
        Device::Cpu,
        Kind::Double,
    );
    let sampler = spec.build().unwrap();
    run(
        sampler.as_ref(),
        den,
        sde,
        sigmas,
        x.shallow_clone(),
        &mut noise,
        &RunOptions::default(),
        &mut |_, _| {},
    )
    .unwrap()
    .x
}

/// Starting noise of the same seed, scaled to sigma_max.
pub fn start(seed: u64, n: usize, d: usize, sigma_max: f64) -> Tensor {
    BrownianNoise::new(seed, 0, n, &[d as i64], 1.0, Device::Cpu, Kind::Double).initial()
        * sigma_max
}

pub fn grid_for(sde: &dyn Sde, kind: &GridKind, steps: usize) -> Vec<f64> {
    let (lo, hi) = sde.default_sigma_range();
    grid::sigmas(kind, steps, lo, hi, sde).unwrap()
}

pub fn max_abs(t: &Tensor) -> f64 {
    t.abs().max().double_value(&[])
}

/// Least-squares slope of log(err) against log(steps), negated: the convergence order.
pub fn fitted_order(steps: &[usize], errs: &[f64]) -> f64 {
    let xs: Vec<f64> = steps.iter().map(|&s| (s as f64).ln()).collect();
    let ys: Vec<f64> = errs.iter().map(|e| e.ln()).collect();
    let n = xs.len() as f64;
    let (mx, my) = (xs.iter().sum::<f64>() / n, ys.iter().sum::<f64>() / n);
    let cov: f64 = xs.iter().zip(&ys).map(|(x, y)| (x - mx) * (y - my)).sum();
    let var: f64 = xs.iter().map(|x| (x - mx).powi(2)).sum();
    -cov / var
}

/// Numbers in scientific notation, for messages.
pub fn sci(v: &[f64]) -> String {
    v.iter()
        .map(|e| format!("{e:.2e}"))
        .collect::<Vec<_>>()
        .join(" ")
}
