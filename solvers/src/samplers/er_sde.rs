//! `er-sde`: ER-SDE-Solver (Cui, Zhang, Wang, Zhao, Cao, Zhang, Guo & Wang 2023, "Elucidating the
//! Solution Space of Extended Reverse-Time SDE for Diffusion Models", arXiv 2309.06169; the
//! authors' QinpengCui/ER-SDE-Solver, `examples/edm/er_sde_solver.py`, `ve_xstart_1_order`,
//! `ve_start_2_order_taylor`, `ve_start_3_order_taylor`; ComfyUI's `sample_er_sde`). The extended
//! reverse SDE has a free noise-scale function `phi(sigma)` (the authors' `fn_sigma`); its
//! solution with `D` expanded in sigma to order `k - 1` gives, for a step from `sigma` to
//! `sigma'` with `r = phi(sigma') / phi(sigma)`:
//!
//! `x' = r x + (1 - r) D_i`
//! `   + (sigma' - sigma + phi(sigma') S_1) D'_i`                        (order >= 2)
//! `   + ((sigma' - sigma)^2 / 2 + phi(sigma') S_2) D''_i`               (order 3)
//! `   + s_noise sqrt(sigma'^2 - sigma^2 r^2) z`,
//!
//! `S_1 = int_{sigma'}^{sigma} du / phi(u)`, `S_2 = int_{sigma'}^{sigma} (u - sigma) / phi(u) du`,
//! each a left Riemann sum of `points` terms from `sigma'` (the authors' quadrature: 100 points;
//! ComfyUI's 200), `D'_i = (D_i - D_{i-1}) / (sigma_i - sigma_{i-1})` and
//! `D''_i = 2 (D'_i - D'_{i-1}) / (sigma_i - sigma_{i-2})` (divided differences). Step `i` uses
//! order `min(order, i + 1)`; the step to 0 returns `D_i`. `z` is the step stream's normal on
//! `[sigma', sigma]`. In the scaled variable this is the authors' VE form (their VP form is the
//! same in `x / alpha` with `lambda = sigma / alpha`, which is this sigma). One evaluation per
//! step.
//!
//! The noise-scale functions (`func_type`, the authors' numbering): 1 `sigma` (the ODE: DDIM),
//! 2 `sigma^2` (the reverse SDE: DDPM's posterior step), 3 `sigma (exp(-1/sigma) + 10)`,
//! 4 `sigma^1.5`, 5 `sigma^2.5`, 6 `sigma^0.9 log10(1 + 100 sigma^1.5)`, 7 `sigma (exp(sigma^0.3)
//! + 10)` (the default, the authors' and ComfyUI's).

use super::{add_step_noise, check_nonneg, check_order, require};
use crate::driver::{Sampler, StepCtx};
use crate::error::Result;
use serde::{Deserialize, Serialize};

fn three() -> usize {
    3
}
fn seven() -> u32 {
    7
}
fn hundred() -> usize {
    100
}

/// Parameters of `er-sde`, the keys of its `[[samplers]]` entry.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ErSdeParams {
    /// Order of the Taylor expansion of `D` (1 to 3; ComfyUI's `max_stage`).
    #[serde(default = "three")]
    pub order: usize,
    /// The noise-scale function, 1 to 7 (the authors' numbering; see the module docs).
    #[serde(default = "seven")]
    pub func_type: u32,
    /// Multiplies the injected noise (ComfyUI's `s_noise`).
    #[serde(default = "super::one")]
    pub s_noise: f64,
    /// Points of the Riemann sums `S_1`, `S_2` (the authors' 100).
    #[serde(default = "hundred")]
    pub points: usize,
}

impl Default for ErSdeParams {
    fn default() -> Self {
        ErSdeParams {
            order: 3,
            func_type: 7,
            s_noise: 1.0,
            points: 100,
        }
    }
}

impl ErSdeParams {
    /// Whether the sampler draws noise: every function but the ODE's, with `s_noise > 0`.
    pub fn is_stochastic(&self) -> bool {
        self.func_type != 1 && self.s_noise > 0.0
    }
}

#[derive(Clone, Debug)]
pub struct ErSde {
    p: ErSdeParams,
}

impl ErSde {
    pub fn new(p: ErSdeParams) -> Result<Self> {
        check_order(p.order, 1..=3)?;
        require(
            "func_type",
            p.func_type as f64,
            (1..=7).contains(&p.func_type),
            "must be 1 to 7",
        )?;
        check_nonneg("s_noise", p.s_noise)?;
        require(
            "points",
            p.points as f64,
            (1..=100_000).contains(&p.points),
            "must be 1 to 100000",
        )?;
        Ok(ErSde { p })
    }

    /// The noise-scale function `phi(sigma)`.
    pub fn phi(&self, s: f64) -> f64 {
        match self.p.func_type {
            1 => s,
            2 => s * s,
            3 => s * ((-1.0 / s).exp() + 10.0),
            4 => s.powf(1.5),
            5 => s.powf(2.5),
            6 => s.powf(0.9) * (1.0 + 100.0 * s.powf(1.5)).log10(),
            _ => s * (s.powf(0.3).exp() + 10.0),
        }
    }

    /// `(S_1, S_2)` for a step from `sigma` down to `sigma_next`: left Riemann sums from
    /// `sigma_next` of `1 / phi` and `(u - sigma) / phi`.
    fn integrals(&self, sigma: f64, sigma_next: f64) -> (f64, f64) {
        let n = self.p.points as f64;
        let du = (sigma - sigma_next) / n;
        (0..self.p.points).fold((0.0, 0.0), |(s1, s2), k| {
            let u = sigma_next + k as f64 / n * (sigma - sigma_next);
            let w = du / self.phi(u);
            (s1 + w, s2 + (u - sigma) * w)
        })
    }
}

impl Sampler for ErSde {
    fn name(&self) -> &'static str {
        "er-sde"
    }
    fn step(&self, ctx: &mut StepCtx<'_>, x: tch::Tensor) -> Result<tch::Tensor> {
        let (s, s_next, i) = (ctx.sigma(), ctx.sigma_next(), ctx.index);
        let d = ctx.denoise(&x, s)?;
        // history: [D_{i-1}] after step 0, [D_{i-1}, D'_{i-1}] from step 1 on.
        let order = self.p.order.min(i + 1);
        let out = if s_next == 0.0 {
            d.shallow_clone()
        } else {
            let r = self.phi(s_next) / self.phi(s);
            let mut out = &x * r + &d * (1.0 - r);
            let mut slope = None;
            if order >= 2 {
                let (s1, s2) = self.integrals(s, s_next);
                let first = (&d - &ctx.history[0]) / (s - ctx.sigmas[i - 1]);
                out += &first * (s_next - s + s1 * self.phi(s_next));
                if order >= 3 {
                    let second = (&first - &ctx.history[1]) * (2.0 / (s - ctx.sigmas[i - 2]));
                    out += second * ((s_next - s).powi(2) / 2.0 + s2 * self.phi(s_next));
                }
                slope = Some(first);
            }
            // sigma'^2 - sigma^2 r^2 = sigma'^2 (1 - q^2), q = (phi(sigma') / sigma') /
            // (phi(sigma) / sigma): exactly 0 for the ODE's phi = sigma (no rounding residue).
            let q = (self.phi(s_next) / s_next) / (self.phi(s) / s);
            let scale = self.p.s_noise * s_next * (1.0 - q * q).max(0.0).sqrt();
            let out = add_step_noise(ctx, out, s_next, s, scale)?;
            if let Some(first) = slope {
                ctx.history.truncate(1);
                ctx.history.push(first);
            }
            out
        };
        if ctx.history.is_empty() {
            ctx.history.push(d);
        } else {
            ctx.history[0] = d;
        }
        Ok(out)
    }
}
