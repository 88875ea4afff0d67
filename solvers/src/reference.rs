//! A reference solution of the probability-flow ODE: the Dormand-Prince 5(4) pair with adaptive
//! steps (Dormand & Prince 1980; the method of scipy's `RK45` and diffrax's `Dopri5`; the step
//! is the `rk45` sampler's, [`crate::samplers::rk45`]), in
//! `u = ln sigma`, where the ODE reads `dx/du = x - D(x; e^u)`. The step is shared by the batch
//! and accepted when the largest scaled error over all samples and dimensions is at most 1.

use crate::denoiser::Denoiser;
use crate::error::{Result, SolverError};
use crate::samplers::rk45::dopri5_step;
use tch::Tensor;

/// Solve the probability-flow ODE from `sigma_from` to `sigma_to` (both positive) to tolerance
/// `tol` (relative and absolute). Returns the solution and the number of denoiser calls.
pub fn solve_pf_ode(
    den: &dyn Denoiser,
    x: &Tensor,
    sigma_from: f64,
    sigma_to: f64,
    tol: f64,
) -> Result<(Tensor, usize)> {
    if !(sigma_from > 0.0 && sigma_to > 0.0 && tol > 0.0) {
        return Err(SolverError::Parameter {
            name: "sigma",
            value: sigma_to,
            why: "the reference solve needs positive noise levels",
        });
    }
    let (u0, u1) = (sigma_from.ln(), sigma_to.ln());
    let dir = (u1 - u0).signum();
    let mut f = |u: f64, x: &Tensor| -> Result<Tensor> { Ok(x - den.denoise(x, u.exp())?) };
    let mut nfe = 0;
    let mut u = u0;
    let mut x = x.shallow_clone();
    let mut k1 = f(u, &x)?;
    nfe += 1;
    let mut h = dir * 0.05;
    let mut rejected = 0;
    while (u1 - u) * dir > 1e-12 {
        if (u + h - u1) * dir > 0.0 {
            h = u1 - u;
        }
        let (x5, k7, err) = dopri5_step(&mut f, u, &x, &k1, h)?;
        nfe += 6;
        let scale = x.abs().maximum(&x5.abs()) * tol + tol;
        let e = (err.abs() / scale).max().double_value(&[]);
        if !e.is_finite() {
            return Err(SolverError::NonFinite {
                step: nfe,
                sigma: u.exp(),
            });
        }
        if e <= 1.0 {
            u += h;
            x = x5;
            k1 = k7; // first same as last
            rejected = 0;
        } else {
            rejected += 1;
            if rejected > 50 {
                return Err(SolverError::Grid(format!(
                    "the reference solve cannot meet tolerance {tol} at sigma = {}",
                    u.exp()
                )));
            }
            // k1 stays: the step restarts from the same point (FSAL saved the evaluation).
        }
        h *= (0.9 * e.max(1e-10).powf(-0.2)).clamp(0.2, 5.0);
    }
    Ok((x, nfe))
}
