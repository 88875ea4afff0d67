//! A reference solution of the probability-flow ODE: the Dormand-Prince 5(4) pair with adaptive
//! steps (Dormand & Prince 1980; the method of scipy's `RK45` and diffrax's `Dopri5`), in
//! `u = ln sigma`, where the ODE reads `dx/du = x - D(x; e^u)`. The step is shared by the batch
//! and accepted when the largest scaled error over all samples and dimensions is at most 1.

use crate::denoiser::Denoiser;
use crate::error::{Result, SolverError};
use tch::Tensor;

// Butcher tableau of Dormand-Prince 5(4).
const C: [f64; 7] = [0.0, 1.0 / 5.0, 3.0 / 10.0, 4.0 / 5.0, 8.0 / 9.0, 1.0, 1.0];
const A: [&[f64]; 7] = [
    &[],
    &[1.0 / 5.0],
    &[3.0 / 40.0, 9.0 / 40.0],
    &[44.0 / 45.0, -56.0 / 15.0, 32.0 / 9.0],
    &[
        19372.0 / 6561.0,
        -25360.0 / 2187.0,
        64448.0 / 6561.0,
        -212.0 / 729.0,
    ],
    &[
        9017.0 / 3168.0,
        -355.0 / 33.0,
        46732.0 / 5247.0,
        49.0 / 176.0,
        -5103.0 / 18656.0,
    ],
    &[
        35.0 / 384.0,
        0.0,
        500.0 / 1113.0,
        125.0 / 192.0,
        -2187.0 / 6784.0,
        11.0 / 84.0,
    ],
];
/// Fifth-order weights (= the last row of A: first same as last).
const B5: [f64; 7] = [
    35.0 / 384.0,
    0.0,
    500.0 / 1113.0,
    125.0 / 192.0,
    -2187.0 / 6784.0,
    11.0 / 84.0,
    0.0,
];
/// Fourth-order embedded weights.
const B4: [f64; 7] = [
    5179.0 / 57600.0,
    0.0,
    7571.0 / 16695.0,
    393.0 / 640.0,
    -92097.0 / 339200.0,
    187.0 / 2100.0,
    1.0 / 40.0,
];

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
    let f = |x: &Tensor, u: f64| -> Result<Tensor> { Ok(x - den.denoise(x, u.exp())?) };
    let mut nfe = 0;
    let mut u = u0;
    let mut x = x.shallow_clone();
    let mut k1 = f(&x, u)?;
    nfe += 1;
    let mut h = dir * 0.05;
    let mut rejected = 0;
    while (u1 - u) * dir > 1e-12 {
        if (u + h - u1) * dir > 0.0 {
            h = u1 - u;
        }
        let mut ks = vec![k1.shallow_clone()];
        for i in 1..7 {
            let mut xi = x.shallow_clone();
            for (j, a) in A[i].iter().enumerate() {
                if *a != 0.0 {
                    xi = xi + &ks[j] * (h * a);
                }
            }
            ks.push(f(&xi, u + C[i] * h)?);
            nfe += 1;
        }
        let mut x5 = x.shallow_clone();
        let mut err = x.zeros_like();
        for i in 0..7 {
            if B5[i] != 0.0 {
                x5 = x5 + &ks[i] * (h * B5[i]);
            }
            err = err + &ks[i] * (h * (B5[i] - B4[i]));
        }
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
            k1 = ks.pop().unwrap(); // first same as last
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
