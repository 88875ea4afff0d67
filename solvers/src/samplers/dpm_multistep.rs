//! Multistep DPM-Solver and DPM-Solver++ with every option of diffusers'
//! `DPMSolverMultistepScheduler` (`schedulers/scheduling_dpmsolver_multistep.py`): Lu et al.
//! 2022a, "DPM-Solver" (the noise-prediction form, its multistep variant in App. B), Lu et al.
//! 2022b, "DPM-Solver++" (Algorithm 2, the data-prediction form, and the SDE solvers of its
//! Sec. 5 / App., diffusers' `sde-dpmsolver++` and `sde-dpmsolver`).
//!
//! In the scaled variable `x = x_vp / alpha` with `lambda = -log sigma`, a step from `s =
//! sigma_i` to `t = sigma_{i+1}` over `h = lambda_t - lambda_s` uses the model outputs `m`
//! (`D` for the `++` types, `eps = (x - D) / sigma` for the others) of this and the previous
//! steps: `D1_0 = (m_0 - m_1) / r_0`, `D1_1 = (m_1 - m_2) / r_1` with `r_j` the previous steps'
//! `lambda` increments over `h`; order 2 takes `D1 = D1_0`; order 3 `D1 = D1_0 + r_0 / (r_0 +
//! r_1) (D1_0 - D1_1)` and `D2 = (D1_0 - D1_1) / (r_0 + r_1)`. With `em1 = e^{-h} - 1 = t / s - 1`,
//! `g = 1 - (t / s)^2`:
//!
//! - `dpmsolver++`: `x_t = (t / s) x - em1 m_0 + c_1 D1 + c_2 D2`, order 2 `c_1 = -em1 / 2`
//!   (midpoint) or `em1 / h + 1` (heun); order 3 `c_1 = em1 / h + 1`, `c_2 = -((em1 + h) / h^2 -
//!   1/2)`;
//! - `dpmsolver`: `x_t = x - (s - t) m_0 + ...`, order 2 `-(s - t) / 2` (midpoint) or `-t ((e^h -
//!   1) / h - 1)` (heun) on `D1`; order 3 that and `-t ((e^h - 1 - h) / h^2 - 1/2)` on `D2`;
//! - `sde-dpmsolver++`: `x_t = (t / s)^2 x + g m_0 + ... + t sqrt(g) z`, order 2 `g / 2`
//!   (midpoint) or `g / (-2h) + 1` (heun); order 3 that and `(g - 2h) / (4 h^2) - 1/2`;
//! - `sde-dpmsolver` (orders 1 and 2, as diffusers defines it): `x_t = x - 2 (s - t) m_0 + ... +
//!   sqrt(s^2 - t^2) z`, `-(s - t)` (midpoint) or `-2 t ((e^h - 1) / h - 1)` (heun) on `D1`.
//!
//! `z` is the step stream's standard normal on `[t, s]` (the noise of `dpmpp-2m-sde`). The
//! order of step `i` of `n` is diffusers': `min(order, i + 1)`, 1 on the last step when it goes
//! to sigma = 0 (diffusers' `final_sigmas_type = "zero"`) or when `lower_order_final` is on and
//! `n < 15`, and at most 2 on the step before the last in that case. The step to sigma = 0 returns
//! `D` (every type's first-order step does, but `sde-dpmsolver`'s, which diffusers never takes:
//! it refuses a final sigma of 0 for it). One evaluation per step.

use super::{add_step_noise, check_order, AlgorithmType, SolverType};
use crate::driver::{Sampler, StepCtx};
use crate::error::{Result, SolverError};
use tch::Tensor;

#[derive(Clone, Debug)]
pub struct DpmMultistep {
    pub order: usize,
    pub algorithm_type: AlgorithmType,
    pub solver_type: SolverType,
    pub lower_order_final: bool,
}

impl DpmMultistep {
    pub fn new(
        order: usize,
        algorithm_type: AlgorithmType,
        solver_type: SolverType,
        lower_order_final: bool,
    ) -> Result<Self> {
        check_order(order, 1..=3)?;
        if algorithm_type == AlgorithmType::SdeDpmSolver && order == 3 {
            return Err(SolverError::Invalid(
                "invalid parameter order = 3 with algorithm_type = sde-dpmsolver: it has orders 1 \
                 and 2 (diffusers defines no third-order update for it)"
                    .into(),
            ));
        }
        Ok(DpmMultistep {
            order,
            algorithm_type,
            solver_type,
            lower_order_final,
        })
    }

    /// The order of step `i` of an `n`-step grid whose last level is `last` (diffusers' rules).
    pub fn order_at(&self, i: usize, n: usize, last: f64) -> usize {
        let lower = self.lower_order_final && n < 15;
        if i + 1 == n && (lower || last == 0.0) {
            1
        } else if i + 2 == n && lower {
            self.order.min(i + 1).min(2)
        } else {
            self.order.min(i + 1)
        }
    }

    fn is_sde(&self) -> bool {
        matches!(
            self.algorithm_type,
            AlgorithmType::SdeDpmSolverPlusPlus | AlgorithmType::SdeDpmSolver
        )
    }
}

impl Sampler for DpmMultistep {
    fn name(&self) -> &'static str {
        "dpm-multistep"
    }
    fn invertible(&self) -> bool {
        !self.is_sde()
    }

    /// `ctx.history` holds the previous steps' model outputs, the most recent last.
    fn step(&self, ctx: &mut StepCtx<'_>, x: Tensor) -> Result<Tensor> {
        let (i, n) = (ctx.index, ctx.steps());
        let (s, t) = (ctx.sigma(), ctx.sigma_next());
        let d = ctx.denoise(&x, s)?;
        let m = match self.algorithm_type {
            AlgorithmType::DpmSolver | AlgorithmType::SdeDpmSolver => (&x - &d) / s,
            _ => d.shallow_clone(),
        };
        let k = self.order_at(i, n, ctx.sigmas[n]);
        let out = if t == 0.0 {
            d
        } else {
            let h = (s / t).ln();
            let lam = |j: usize| -ctx.sigmas[j].ln();
            let hist = &ctx.history;
            // D1 and D2 of the step's order (none at order 1).
            let (d1, d2) = match k {
                1 => (None, None),
                2 => {
                    let r0 = (lam(i) - lam(i - 1)) / h;
                    (Some((&m - &hist[hist.len() - 1]) * (1.0 / r0)), None)
                }
                _ => {
                    let (r0, r1) = ((lam(i) - lam(i - 1)) / h, (lam(i - 1) - lam(i - 2)) / h);
                    let (m1, m2) = (&hist[hist.len() - 1], &hist[hist.len() - 2]);
                    let d1_0 = (&m - m1) * (1.0 / r0);
                    let d1_1 = (m1 - m2) * (1.0 / r1);
                    let d1 = &d1_0 + (&d1_0 - &d1_1) * (r0 / (r0 + r1));
                    let d2 = (d1_0 - d1_1) * (1.0 / (r0 + r1));
                    (Some(d1), Some(d2))
                }
            };
            let heun = k == 3 || self.solver_type == SolverType::Heun;
            let em1 = t / s - 1.0;
            let g = 1.0 - (t / s) * (t / s);
            let phi_eps = t * (h.exp_m1() / h - 1.0); // sigma_t ((e^h - 1) / h - 1)
                                                      // (base, coefficient of D1, coefficient of D2, noise scale)
            let (base, c1, c2, noise) = match self.algorithm_type {
                AlgorithmType::DpmSolverPlusPlus => (
                    &x * (t / s) - &m * em1,
                    if heun { em1 / h + 1.0 } else { -0.5 * em1 },
                    -((em1 + h) / (h * h) - 0.5),
                    0.0,
                ),
                AlgorithmType::DpmSolver => (
                    &x - &m * (s - t),
                    if heun { -phi_eps } else { -0.5 * (s - t) },
                    -t * ((h.exp_m1() - h) / (h * h) - 0.5),
                    0.0,
                ),
                AlgorithmType::SdeDpmSolverPlusPlus => (
                    &x * (1.0 - g) + &m * g,
                    if heun { g / (-2.0 * h) + 1.0 } else { 0.5 * g },
                    (g - 2.0 * h) / (4.0 * h * h) - 0.5,
                    t * g.sqrt(),
                ),
                AlgorithmType::SdeDpmSolver => (
                    &x - &m * (2.0 * (s - t)),
                    if heun { -2.0 * phi_eps } else { -(s - t) },
                    0.0,
                    (s * s - t * t).sqrt(),
                ),
            };
            let mut out = base;
            if let Some(d1) = d1 {
                out += d1 * c1;
            }
            if let Some(d2) = d2 {
                out += d2 * c2;
            }
            add_step_noise(ctx, out, t, s, noise)?
        };
        ctx.history.push(m);
        if ctx.history.len() > 2 {
            drop(ctx.history.remove(0));
        }
        Ok(out)
    }
}
