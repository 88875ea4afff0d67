//! Singlestep DPM-Solver and DPM-Solver++ on the grid's own levels, as diffusers'
//! `DPMSolverSinglestepScheduler` runs them (`schedulers/scheduling_dpmsolver_singlestep.py`;
//! Lu et al. 2022a, "DPM-Solver", Algorithms 1 and 2; Lu et al. 2022b, "DPM-Solver++",
//! Algorithm 1).
//!
//! The steps are grouped by an order list: for order 2, `1, 2, 1, 2, ...`; for order 3,
//! `1, 2, 3, 1, 2, 3, ...`; the list ends in lower orders (diffusers' `lower_order_final`, which
//! its final step to sigma = 0 forces) and its last entry is 1. A step of order `k` goes from
//! the group's first level `s` (where the sample of the group's order-1 step was taken) to the
//! next level `t` with the evaluations at the group's levels so far, one new evaluation per step:
//! the intermediate levels of a singlestep method are the grid's own, their points the results
//! of the group's lower-order steps. With `lambda = -log sigma`, `h = lambda_t - lambda_s`, the
//! group's outputs `m_s, m_1, m_2` (`D` for DPM-Solver++, `eps = (x - D) / sigma` for DPM-Solver)
//! and `r_j = (lambda_j - lambda_s) / h`:
//!
//! - order 1: `x_t = (sigma_t / sigma_s) x_s + (1 - sigma_t / sigma_s) D_s` (++) or
//!   `x_t = x_s - (sigma_s - sigma_t) eps_s` (the DDIM step either way);
//! - order 2, `D1 = (m_1 - m_s) / r_1`: ++ `x_t = (sigma_t / sigma_s) x_s - (e^{-h} - 1) (m_s +
//!   c D1)` with `c = 1/2` (midpoint) or `c = -((e^{-h} - 1) / h + 1) / (e^{-h} - 1)` (heun);
//!   DPM-Solver `x_t = x_s - sigma_t (e^h - 1) m_s - sigma_t c' D1`, `c' = (e^h - 1) / 2`
//!   (midpoint) or `(e^h - 1) / h - 1` (heun);
//! - order 3, `D1_0 = (m_1 - m_s) / r_1`, `D1_1 = (m_2 - m_s) / r_2`, `D1 = (r_2 D1_0 - r_1 D1_1)
//!   / (r_2 - r_1)`, `D2 = 2 (D1_1 - D1_0) / (r_2 - r_1)`: midpoint uses `D1_1` with the
//!   `phi_2` coefficient (DPM-Solver-3's last stage), heun `D1` and `D2` with `phi_2` and
//!   `phi_3`, as written in [`Self::step`].
//!
//! Every step is one evaluation: NFE `n`. The last step (order 1) to sigma = 0 returns `D`.

use super::{check_order, SolverType};
use crate::driver::{Sampler, StepCtx};
use crate::error::{Result, SolverError};
use serde::{Deserialize, Serialize};
use tch::Tensor;

/// What the solver integrates: the data prediction (DPM-Solver++) or the noise (DPM-Solver).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum AlgorithmType {
    #[default]
    #[serde(rename = "dpmsolver++")]
    DpmSolverPlusPlus,
    #[serde(rename = "dpmsolver")]
    DpmSolver,
    /// DPM-Solver++ on the SDE (diffusers' `sde-dpmsolver++`): fresh noise every step.
    #[serde(rename = "sde-dpmsolver++")]
    SdeDpmSolverPlusPlus,
    /// DPM-Solver on the SDE (diffusers' `sde-dpmsolver`; multistep only, orders 1 and 2).
    #[serde(rename = "sde-dpmsolver")]
    SdeDpmSolver,
}

impl std::str::FromStr for AlgorithmType {
    type Err = SolverError;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "dpmsolver++" => Ok(AlgorithmType::DpmSolverPlusPlus),
            "dpmsolver" => Ok(AlgorithmType::DpmSolver),
            "sde-dpmsolver++" => Ok(AlgorithmType::SdeDpmSolverPlusPlus),
            "sde-dpmsolver" => Ok(AlgorithmType::SdeDpmSolver),
            _ => Err(SolverError::Invalid(format!(
                "unknown algorithm type '{s}' (known: dpmsolver++, dpmsolver, sde-dpmsolver++, sde-dpmsolver)"
            ))),
        }
    }
}

#[derive(Clone, Debug)]
pub struct DpmSinglestep {
    pub order: usize,
    pub algorithm_type: AlgorithmType,
    pub solver_type: SolverType,
}

impl DpmSinglestep {
    pub fn new(
        order: usize,
        algorithm_type: AlgorithmType,
        solver_type: SolverType,
    ) -> Result<Self> {
        check_order(order, 1..=3)?;
        if algorithm_type == AlgorithmType::SdeDpmSolver {
            return Err(SolverError::Invalid(
                "dpm-singlestep has no algorithm_type sde-dpmsolver (diffusers' singlestep \
                 scheduler neither; dpm-multistep has it)"
                    .into(),
            ));
        }
        Ok(DpmSinglestep {
            order,
            algorithm_type,
            solver_type,
        })
    }

    /// diffusers' `get_order_list` with `lower_order_final` and a final sigma of 0: the order of
    /// every step of an `n`-step grid.
    pub fn order_list(order: usize, n: usize) -> Vec<usize> {
        let mut orders: Vec<usize> = match order {
            3 => {
                let mut v: Vec<usize> = [1, 2, 3].repeat(n / 3);
                match n % 3 {
                    0 => {
                        v.truncate(v.len().saturating_sub(3));
                        v.extend([1, 2, 1]);
                    }
                    1 => v.push(1),
                    _ => v.extend([1, 2]),
                }
                v
            }
            2 => {
                let mut v: Vec<usize> = [1, 2].repeat(n / 2);
                if n.is_multiple_of(2) {
                    v.truncate(v.len().saturating_sub(2));
                    v.extend([1, 1]);
                } else {
                    v.push(1);
                }
                v
            }
            _ => vec![1; n],
        };
        orders.truncate(n);
        if let Some(last) = orders.last_mut() {
            *last = 1;
        }
        orders
    }
}

impl Sampler for DpmSinglestep {
    fn name(&self) -> &'static str {
        "dpm-singlestep"
    }
    fn invertible(&self) -> bool {
        self.algorithm_type != AlgorithmType::SdeDpmSolverPlusPlus
    }

    /// `ctx.history` holds the group's first sample, then the group's outputs so far.
    fn step(&self, ctx: &mut StepCtx<'_>, x: Tensor) -> Result<Tensor> {
        let i = ctx.index;
        let k = Self::order_list(self.order, ctx.steps())[i];
        let (s_i, t) = (ctx.sigma(), ctx.sigma_next());
        // The model output of the group's integral: D (data prediction) or eps = (x - D) / sigma.
        let d = ctx.denoise(&x, s_i)?;
        let m = if self.algorithm_type == AlgorithmType::DpmSolver {
            (&x - d) / s_i
        } else {
            d
        };
        if k == 1 {
            ctx.history.clear();
            ctx.history.push(x);
        }
        ctx.history.push(m);
        // The group starts at s; h = lambda_t - lambda_s with lambda = -log sigma (at t = 0, order
        // 1 only, h = inf).
        let s = ctx.sigmas[i + 1 - k];
        let h = (s / t).ln();
        if self.algorithm_type == AlgorithmType::SdeDpmSolverPlusPlus {
            return self.sde_step(ctx, k, s, h);
        }
        let plus = self.algorithm_type == AlgorithmType::DpmSolverPlusPlus;
        let x_s = &ctx.history[0];
        let ms = &ctx.history[1..];
        let r = |j: usize| (s / ctx.sigmas[i + 1 - k + j]).ln() / h;
        // ++: x_t = (sigma_t / sigma_s) x_s - em1 (D0 + ...), em1 = e^{-h} - 1 = t / s - 1.
        // DPM-Solver: x_t = x_s - ep (D0 + ...), ep = sigma_t (e^h - 1) = s - t.
        let em1 = t / s - 1.0;
        let phi2_pp = em1 / h + 1.0; // (e^{-h} - 1) / h + 1
        let phi2 = t * (h.exp_m1() / h - 1.0); // sigma_t ((e^h - 1) / h - 1)
        let base = if plus {
            x_s * (t / s) - &ms[0] * em1
        } else {
            x_s - &ms[0] * (s - t)
        };
        let out = match k {
            1 => base,
            2 => {
                let d1 = (&ms[1] - &ms[0]) * (1.0 / r(1));
                let c = match (plus, self.solver_type) {
                    (true, SolverType::Midpoint) => -0.5 * em1,
                    (true, SolverType::Heun) => phi2_pp,
                    (false, SolverType::Midpoint) => -0.5 * (s - t),
                    (false, SolverType::Heun) => -phi2,
                };
                base + d1 * c
            }
            _ => {
                let (r1, r2) = (r(1), r(2));
                let d1_0 = (&ms[1] - &ms[0]) * (1.0 / r1);
                let d1_1 = (&ms[2] - &ms[0]) * (1.0 / r2);
                match (plus, self.solver_type) {
                    (true, SolverType::Midpoint) => base + d1_1 * phi2_pp,
                    (false, SolverType::Midpoint) => base - d1_1 * phi2,
                    (plus, SolverType::Heun) => {
                        let d1 = (&d1_0 * r2 - &d1_1 * r1) * (1.0 / (r2 - r1));
                        let d2 = (d1_1 - d1_0) * (2.0 / (r2 - r1));
                        if plus {
                            let phi3_pp = (em1 + h) / (h * h) - 0.5;
                            base + d1 * phi2_pp - d2 * phi3_pp
                        } else {
                            let phi3 = t * ((h.exp_m1() - h) / (h * h) - 0.5);
                            base - d1 * phi2 - d2 * phi3
                        }
                    }
                }
            }
        };
        Ok(out)
    }
}

impl DpmSinglestep {
    /// A step of `sde-dpmsolver++` (diffusers' singlestep updates with `algorithm_type =
    /// "sde-dpmsolver++"`), from the group's first sample `x_s` over `h = lambda_t - lambda_s`,
    /// with `q = e^{-2h} = (sigma_t / sigma_s)^2` and `g = 1 - q`:
    /// `x_t = q x_s + g m_s + c_1 D1 + c_2 D2 + sigma_t sqrt(g) z`, where order 2 takes `c_1 =
    /// g / 2` (midpoint) or `g / (-2h) + 1` (heun) with `D1 = (m_1 - m_s) / r_1`; order 3
    /// midpoint `g / (-2h) + 1` on `D1_1`, heun that on `D1` and `(g - 2h) / (4h^2) - 1/2` on
    /// `D2`. `z` is a fresh standard normal every step (the step stream on the step's own
    /// interval, though the update spans the group); none on the step to sigma = 0.
    /// `ctx.history` already holds `x_s` and the group's outputs `m`; the group starts at `s`.
    fn sde_step(&self, ctx: &mut StepCtx<'_>, k: usize, s: f64, h: f64) -> Result<Tensor> {
        let i = ctx.index;
        let (s_i, t) = (ctx.sigma(), ctx.sigma_next());
        let x_s = &ctx.history[0];
        let ms = &ctx.history[1..];
        let r = |j: usize| (s / ctx.sigmas[i + 1 - k + j]).ln() / h;
        let q = (t / s) * (t / s);
        let g = 1.0 - q;
        let phi = g / (-2.0 * h) + 1.0;
        let base = x_s * q + &ms[0] * g;
        let out = match k {
            1 => base,
            2 => {
                let d1 = (&ms[1] - &ms[0]) * (1.0 / r(1));
                let c = match self.solver_type {
                    SolverType::Midpoint => 0.5 * g,
                    SolverType::Heun => phi,
                };
                base + d1 * c
            }
            _ => {
                let (r1, r2) = (r(1), r(2));
                let d1_0 = (&ms[1] - &ms[0]) * (1.0 / r1);
                let d1_1 = (&ms[2] - &ms[0]) * (1.0 / r2);
                match self.solver_type {
                    SolverType::Midpoint => base + d1_1 * phi,
                    SolverType::Heun => {
                        let d1 = (&d1_0 * r2 - &d1_1 * r1) * (1.0 / (r2 - r1));
                        let d2 = (d1_1 - d1_0) * (2.0 / (r2 - r1));
                        let c2 = (g - 2.0 * h) / (4.0 * h * h) - 0.5;
                        base + d1 * phi + d2 * c2
                    }
                }
            }
        };
        super::add_step_noise(ctx, out, t, s_i, t * g.sqrt())
    }
}
