//! `rk45`: the probability-flow ODE solved by an adaptive Runge-Kutta method, as score_sde's
//! ODE sampler does it (Song et al. 2021, "Score-Based Generative Modeling through Stochastic
//! Differential Equations", Sec. 4.3 and App. D.1; score_sde `sampling.py`, `get_ode_sampler`,
//! which hands the ODE to `scipy.integrate.solve_ivp(method="RK45")` with `rtol = atol = 1e-5`).
//!
//! The ODE is written in the forward process's own time `t` and in the unscaled variable
//! `x = s(t) x^`, as score_sde writes it:
//!
//! `dx/dt = f(t) x - g(t)^2 score(x, t) / 2`, `score(x, t) = (D(x / s; sigma) - x / s) / (s sigma^2)`,
//!
//! integrated from `t(sigma_0)` down to `t(sigma_{n-1})`, the grid's first and last nonzero
//! levels (its interior levels are not used); the step to sigma = 0 returns `D` there. Under the
//! EDM process (`t = sigma`, `s = 1`) this is `dx/dsigma = (x - D) / sigma`.
//!
//! The integrator is scipy's `RK45` (`scipy/integrate/_ivp/rk.py`, `common.py`), step for step:
//! the Dormand-Prince 5(4) pair (Dormand and Prince 1980) advanced with the fifth-order
//! solution, its last stage reused as the next step's first (FSAL); the error `h sum_i E_i K_i`
//! measured in the RMS norm over the whole batch against `atol + rtol max(|y|, |y_new|)`; a step
//! is accepted when that norm is below 1, and the next step is `h min(10, 0.9 err^(-1/5))`
//! (`h max(0.2, 0.9 err^(-1/5))` after a rejection, and no growth right after one); the first
//! step by Hairer, Norsett and Wanner's rule (`select_initial_step`, one extra evaluation). The
//! state is kept in float64, as scipy keeps it, and the denoiser sees it in the samples' kind
//! (score_sde casts to float32). Evaluations: 2 to start, 6 per attempted step, 1 for the final
//! `D`.

use super::dpm_solver::ends_only;
use super::{check_positive, require};
use crate::driver::{Sampler, StepCtx};
use crate::error::{Result, SolverError};
use crate::sde::Sde;
use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

/// Dormand-Prince nodes, `c_i`.
pub const C: [f64; 6] = [0.0, 1.0 / 5.0, 3.0 / 10.0, 4.0 / 5.0, 8.0 / 9.0, 1.0];
/// Dormand-Prince stage coefficients, row `i` for stage `i` (`a_ij`, `j < i`).
pub const A: [[f64; 5]; 6] = [
    [0.0, 0.0, 0.0, 0.0, 0.0],
    [1.0 / 5.0, 0.0, 0.0, 0.0, 0.0],
    [3.0 / 40.0, 9.0 / 40.0, 0.0, 0.0, 0.0],
    [44.0 / 45.0, -56.0 / 15.0, 32.0 / 9.0, 0.0, 0.0],
    [
        19372.0 / 6561.0,
        -25360.0 / 2187.0,
        64448.0 / 6561.0,
        -212.0 / 729.0,
        0.0,
    ],
    [
        9017.0 / 3168.0,
        -355.0 / 33.0,
        46732.0 / 5247.0,
        49.0 / 176.0,
        -5103.0 / 18656.0,
    ],
];
/// Fifth-order weights.
pub const B: [f64; 6] = [
    35.0 / 384.0,
    0.0,
    500.0 / 1113.0,
    125.0 / 192.0,
    -2187.0 / 6784.0,
    11.0 / 84.0,
];
/// Error weights (fourth-order weights minus fifth-order ones, scipy's sign), over the six
/// stages and the FSAL stage.
pub const E: [f64; 7] = [
    -71.0 / 57600.0,
    0.0,
    71.0 / 16695.0,
    -71.0 / 1920.0,
    17253.0 / 339200.0,
    -22.0 / 525.0,
    1.0 / 40.0,
];
const SAFETY: f64 = 0.9;
const MIN_FACTOR: f64 = 0.2;
const MAX_FACTOR: f64 = 10.0;
/// `-1 / (error estimator order + 1)`.
const ERROR_EXPONENT: f64 = -1.0 / 5.0;

/// Attempted steps after which `rk45` gives up (60,000 evaluations).
pub const MAX_ATTEMPTS: usize = 10_000;

/// The smallest `rtol`: scipy raises a smaller one to `100 eps` (with a warning).
pub const MIN_RTOL: f64 = 100.0 * f64::EPSILON;

fn tol() -> f64 {
    1e-5
}

/// Parameters of `rk45` (score_sde's defaults), the keys of its `[[samplers]]` entry.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rk45Params {
    #[serde(default = "tol")]
    pub rtol: f64,
    #[serde(default = "tol")]
    pub atol: f64,
}

impl Default for Rk45Params {
    fn default() -> Self {
        Rk45Params {
            rtol: tol(),
            atol: tol(),
        }
    }
}

#[derive(Clone, Debug)]
pub struct Rk45 {
    pub p: Rk45Params,
}

impl Rk45 {
    pub fn new(p: Rk45Params) -> Result<Self> {
        check_positive("rtol", p.rtol)?;
        require(
            "rtol",
            p.rtol,
            p.rtol >= MIN_RTOL,
            "must be at least 100 x float64's epsilon (2.2e-14), scipy's floor",
        )?;
        require(
            "atol",
            p.atol,
            p.atol >= 0.0 && p.atol.is_finite(),
            "must be finite and >= 0",
        )?;
        Ok(Rk45 { p })
    }
}

/// scipy's `norm`: the RMS of the entries (one host synchronization).
fn rms(x: &Tensor) -> Result<f64> {
    let n = x.numel() as f64;
    Ok(x.square().sum(Kind::Double).f_double_value(&[])?.sqrt() / n.sqrt())
}

/// `sum_i w_i K_i` over the nonzero weights.
fn combine(k: &[Tensor], w: &[f64]) -> Tensor {
    super::weighted_sum(k, w).unwrap_or_else(|| k[0].zeros_like())
}

struct Ode<'s> {
    sde: &'s dyn Sde,
    /// The samples' kind, in which the denoiser is called.
    kind: Kind,
}

impl Ode<'_> {
    /// The probability-flow drift at time `t` of the float64 state `y`, in float64.
    fn drift(&self, ctx: &mut StepCtx<'_>, t: f64, y: &Tensor) -> Result<Tensor> {
        let (sigma, s) = (self.sde.sigma(t), self.sde.s(t));
        let x = y.to_kind(self.kind);
        let x_hat = &x / s;
        let d = ctx.denoise(&x_hat, sigma)?;
        let score = (d - &x_hat) / (s * sigma * sigma);
        let g = self.sde.diffusion(t);
        Ok((x * self.sde.drift_coef(t) - score * (0.5 * g * g)).to_kind(Kind::Double))
    }
}

fn gave_up(sigma: f64, why: String) -> SolverError {
    SolverError::Invalid(format!("rk45 gave up at sigma = {sigma}: {why}"))
}

impl Rk45 {
    /// Integrate from level `sigma_start` to `sigma_end` (both nonzero), in the process's time.
    fn integrate(
        &self,
        ctx: &mut StepCtx<'_>,
        x_hat: Tensor,
        sigma_start: f64,
        sigma_end: f64,
    ) -> Result<Tensor> {
        let (rtol, atol) = (self.p.rtol, self.p.atol);
        let sde = ctx.sde;
        let ode = Ode {
            sde,
            kind: x_hat.kind(),
        };
        let (t0, t_bound) = (sde.sigma_inv(sigma_start), sde.sigma_inv(sigma_end));
        let direction = if t_bound >= t0 { 1.0 } else { -1.0 };
        let mut t = t0;
        let mut y = x_hat.to_kind(Kind::Double) * sde.s(t0);
        let mut f = ode.drift(ctx, t, &y)?;

        // select_initial_step (Hairer, Norsett and Wanner, Sec. II.4).
        let interval = (t_bound - t0).abs();
        let scale = y.abs() * rtol + atol;
        let d0 = rms(&(&y / &scale))?;
        let d1 = rms(&(&f / &scale))?;
        let h0 = if d0 < 1e-5 || d1 < 1e-5 {
            1e-6
        } else {
            0.01 * d0 / d1
        }
        .min(interval);
        let y1 = &y + &f * (h0 * direction);
        let f1 = ode.drift(ctx, t0 + h0 * direction, &y1)?;
        let d2 = rms(&((&f1 - &f) / &scale))? / h0;
        let h1 = if d1 <= 1e-15 && d2 <= 1e-15 {
            (h0 * 1e-3).max(1e-6)
        } else {
            (0.01 / d1.max(d2)).powf(1.0 / 5.0)
        };
        let mut h_abs = (100.0 * h0).min(h1).min(interval);
        if !h_abs.is_finite() {
            return Err(if crate::driver::all_finite(&f1)? {
                gave_up(
                    sigma_start,
                    format!("its first step is not finite (atol {atol:e} is too small for this precision): raise atol"),
                )
            } else {
                SolverError::NonFinite {
                    step: ctx.index,
                    sigma: sigma_start,
                }
            });
        }

        let mut attempts = 0usize;
        while direction * (t - t_bound) < 0.0 {
            let min_step = 10.0 * (next_toward(t, direction) - t).abs();
            if h_abs < min_step {
                h_abs = min_step;
            }
            let mut rejected = false;
            loop {
                attempts += 1;
                if h_abs < min_step {
                    return Err(gave_up(
                        sde.sigma(t),
                        format!("the step size {h_abs:e} is below the spacing of floating-point times: raise rtol or atol"),
                    ));
                }
                if attempts > MAX_ATTEMPTS {
                    return Err(gave_up(
                        sde.sigma(t),
                        format!(
                            "after {MAX_ATTEMPTS} attempted steps (step size {h_abs:e} in t): raise rtol or atol"
                        ),
                    ));
                }
                let mut t_new = t + h_abs * direction;
                if direction * (t_new - t_bound) > 0.0 {
                    t_new = t_bound;
                }
                let h = t_new - t;
                h_abs = h.abs();

                let (y_new, f_new, err) =
                    dopri5_step(&mut |t, y| ode.drift(ctx, t, y), t, &y, &f, h)?;
                let scale = y.abs().maximum(&y_new.abs()) * rtol + atol;
                let error = rms(&(err / scale))?;
                if !error.is_finite() {
                    return Err(if crate::driver::all_finite(&y_new)? {
                        gave_up(
                            sde.sigma(t),
                            format!("its error estimate is not finite (atol {atol:e} is too small for this precision): raise atol"),
                        )
                    } else {
                        SolverError::NonFinite {
                            step: ctx.index,
                            sigma: sde.sigma(t),
                        }
                    });
                }
                if error < 1.0 {
                    let mut factor = if error == 0.0 {
                        MAX_FACTOR
                    } else {
                        MAX_FACTOR.min(SAFETY * error.powf(ERROR_EXPONENT))
                    };
                    if rejected {
                        factor = factor.min(1.0);
                    }
                    h_abs *= factor;
                    t = t_new;
                    y = y_new;
                    f = f_new;
                    break;
                }
                h_abs *= MIN_FACTOR.max(SAFETY * error.powf(ERROR_EXPONENT));
                rejected = true;
            }
        }
        Ok((y / sde.s(t_bound)).to_kind(ode.kind))
    }
}

/// One Dormand-Prince step of `dy/dt = f(t, y)` from `(t, y)` with `k1 = f(t, y)` and step `h`:
/// the fifth-order `y_new`, `f(t + h, y_new)` (the next step's `k1`) and the error estimate
/// `h sum_i E_i K_i`; six evaluations of `f`. Shared with the reference solve
/// ([`crate::reference::solve_pf_ode`]).
pub(crate) fn dopri5_step(
    f: &mut dyn FnMut(f64, &Tensor) -> Result<Tensor>,
    t: f64,
    y: &Tensor,
    k1: &Tensor,
    h: f64,
) -> Result<(Tensor, Tensor, Tensor)> {
    let mut k: Vec<Tensor> = vec![k1.shallow_clone()];
    for s in 1..6 {
        let dy = combine(&k, &A[s][..s]) * h;
        let stage = f(t + C[s] * h, &(y + dy))?;
        k.push(stage);
    }
    let y_new = y + combine(&k, &B) * h;
    let f_new = f(t + h, &y_new)?;
    k.push(f_new.shallow_clone());
    let error = combine(&k, &E) * h;
    Ok((y_new, f_new, error))
}

/// `nextafter(t, direction * inf)`.
fn next_toward(t: f64, direction: f64) -> f64 {
    if t == 0.0 {
        return f64::from_bits(1) * direction;
    }
    let bits = t.to_bits();
    let up = (t > 0.0) == (direction > 0.0);
    f64::from_bits(if up { bits + 1 } else { bits - 1 })
}

impl Sampler for Rk45 {
    fn name(&self) -> &'static str {
        "rk45"
    }
    fn step(&self, ctx: &mut StepCtx<'_>, x: Tensor) -> Result<Tensor> {
        ends_only(ctx, x, |ctx, x, start, end| {
            self.integrate(ctx, x, start, end)
        })
    }
}
