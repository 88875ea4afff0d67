//! UniPC (Zhao et al. 2023, "UniPC: A Unified Predictor-Corrector Framework for Fast Sampling of
//! Diffusion Models"), the data-prediction B(h) form of diffusers' `UniPCMultistepScheduler`
//! (`multistep_uni_p_bh_update`, `multistep_uni_c_bh_update`, `step`) with its defaults
//! `lower_order_final = True` and `final_sigmas_type = "zero"`.
//!
//! With `lambda = -log sigma`, a step from `sigma_s` to `sigma_t` has `h = lambda_t - lambda_s`,
//! `h_phi_1 = expm1(-h)` and `B(h) = -h` (`bh1`) or `expm1(-h)` (`bh2`). With the `p - 1`
//! earlier outputs `D_k` at ratios `r_k = (lambda_k - lambda_s) / h` and
//! `D1_k = (D_k - D_s) / r_k`:
//!
//! - the predictor UniP-p: `x_t = (sigma_t / sigma_s) x_s - h_phi_1 D_s - B(h) sum_k rho_k D1_k`;
//! - the corrector UniC-p, once `D_t = D(x_t; sigma_t)` is known (the next step's evaluation,
//!   so it costs no extra NFE): the same update from the previous corrected `x_s` with
//!   `sum_k rho^c_k D1_k + rho^c_p (D_t - D_s)` in place of the predictor's sum.
//!
//! The `rho` solve `R rho = b` with `R[j][k] = r_k^j` (`r_p = 1` for the corrector) and
//! `b_j = j! h_phi_j / B(h)`, `h_phi_1 = expm1(-h) / (-h) - 1`,
//! `h_phi_{j+1} = h_phi_j / (-h) - 1 / (j + 1)!`; UniP-2 uses `rho = 1/2` and UniC-1
//! `rho^c = 1/2`, as diffusers and the reference code do. Step `i` of `n` runs at order
//! `min(order, i + 1, n - i)` (warm-up, and lower order at the end). The step to sigma = 0
//! returns `D_i`. One evaluation per step.

use super::dpmpp_2m::lambda;
use super::{check_order, corrector_outputs, keep_corrector_history};
use crate::driver::{Sampler, StepCtx};
use crate::error::{Result, SolverError};
use nalgebra::{DMatrix, DVector};
use serde::{Deserialize, Serialize};
use tch::Tensor;

/// UniPC's `B(h)`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum UniPcVariant {
    /// `B(h) = -h` (the reference code's default).
    Bh1,
    /// `B(h) = expm1(-h)` (diffusers' default).
    #[default]
    Bh2,
}

impl std::str::FromStr for UniPcVariant {
    type Err = SolverError;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "bh1" => Ok(UniPcVariant::Bh1),
            "bh2" => Ok(UniPcVariant::Bh2),
            _ => Err(SolverError::Invalid(format!(
                "unknown UniPC solver type '{s}' (known: bh1, bh2)"
            ))),
        }
    }
}

/// The largest order accepted.
pub const MAX_ORDER: usize = 4;

#[derive(Clone, Debug)]
pub struct UniPc {
    pub order: usize,
    pub variant: UniPcVariant,
    pub corrector: bool,
}

impl UniPc {
    pub fn new(order: usize, variant: UniPcVariant, corrector: bool) -> Result<Self> {
        check_order(order, 1..=MAX_ORDER)?;
        Ok(UniPc {
            order,
            variant,
            corrector,
        })
    }

    /// The order of step `i` of `steps`.
    fn order_at(&self, i: usize, steps: usize) -> usize {
        self.order.min(i + 1).min(steps - i)
    }
}

/// The coefficients of one UniP (`corrector = false`, `p - 1` rhos) or UniC (`p` rhos, the last
/// for `D_t - D_s`) update of order `p = rks.len() + 1` over a step of `h` in lambda, and
/// `(h_phi_1, B(h))`.
pub fn coefficients(
    h: f64,
    rks: &[f64],
    variant: UniPcVariant,
    corrector: bool,
) -> (Vec<f64>, f64, f64) {
    let p = rks.len() + 1;
    let hh = -h;
    let h_phi_1 = hh.exp_m1();
    let b_h = match variant {
        UniPcVariant::Bh1 => hh,
        UniPcVariant::Bh2 => hh.exp_m1(),
    };
    let mut b = Vec::with_capacity(p);
    let mut h_phi_k = h_phi_1 / hh - 1.0;
    let mut factorial = 1.0;
    for i in 1..=p {
        b.push(h_phi_k * factorial / b_h);
        factorial *= (i + 1) as f64;
        h_phi_k = h_phi_k / hh - 1.0 / factorial;
    }
    let mut r: Vec<f64> = rks.to_vec();
    r.push(1.0);
    let solve = |m: usize| -> Vec<f64> {
        let a = DMatrix::from_fn(m, m, |j, k| r[k].powi(j as i32));
        let rhs = DVector::from_column_slice(&b[..m]);
        a.lu()
            .solve(&rhs)
            .map(|v| v.iter().copied().collect())
            .unwrap_or_else(|| vec![f64::NAN; m])
    };
    let rhos = match (corrector, p) {
        (false, 1) => Vec::new(),
        (false, 2) | (true, 1) => vec![0.5],
        (false, _) => solve(p - 1),
        (true, _) => solve(p),
    };
    (rhos, h_phi_1, b_h)
}

/// `(sigma_t / sigma_s) x - h_phi_1 D_s - B(h) (sum_k rho_k (D_k - D_s) / r_k + extra)`, with
/// `earlier[k]` the output at ratio `rks[k]`.
#[allow(clippy::too_many_arguments)]
fn update(
    x: &Tensor,
    sigma_s: f64,
    sigma_t: f64,
    d_s: &Tensor,
    earlier: &[&Tensor],
    rks: &[f64],
    rhos: &[f64],
    h_phi_1: f64,
    b_h: f64,
    extra: Option<Tensor>,
) -> Tensor {
    let mut res: Option<Tensor> = extra;
    for ((d_k, r_k), rho) in earlier.iter().zip(rks).zip(rhos) {
        let term = (*d_k - d_s) * (rho / r_k);
        res = Some(match res {
            Some(acc) => acc + term,
            None => term,
        });
    }
    let base = x * (sigma_t / sigma_s) - d_s * h_phi_1;
    match res {
        Some(res) => base - res * b_h,
        None => base,
    }
}

impl Sampler for UniPc {
    fn name(&self) -> &'static str {
        "unipc"
    }
    fn invertible(&self) -> bool {
        true
    }

    /// `ctx.history` holds `[x_{i-1} (corrected), D_{i-m}, ..., D_{i-1}]` with `m <= order`.
    fn step(&self, ctx: &mut StepCtx<'_>, x: Tensor) -> Result<Tensor> {
        let (i, steps) = (ctx.index, ctx.steps());
        let sigmas = ctx.sigmas;
        let (s, s_next) = (sigmas[i], sigmas[i + 1]);
        let denoised = ctx.denoise(&x, s)?;
        if s_next == 0.0 {
            // Every order's step to sigma = 0 gives D_i (the corrector's output is multiplied by
            // sigma_t / sigma_s = 0), as diffusers' final step does.
            ctx.history.clear();
            return Ok(denoised);
        }
        let mut x = x;
        let ds = corrector_outputs(ctx);
        // ds = [D_{i-m}, ..., D_{i-1}].
        if self.corrector && i > 0 && !ds.is_empty() {
            let p = self.order_at(i - 1, steps);
            let (sig_s, lam_s) = (sigmas[i - 1], lambda(sigmas[i - 1]));
            let h = lambda(s) - lam_s;
            let d_s = &ds[ds.len() - 1];
            let earlier: Vec<&Tensor> = (1..p).map(|k| &ds[ds.len() - 1 - k]).collect();
            let rks: Vec<f64> = (1..p)
                .map(|k| (lambda(sigmas[i - 1 - k]) - lam_s) / h)
                .collect();
            let (rhos, h_phi_1, b_h) = coefficients(h, &rks, self.variant, true);
            let last = ctx.history[0].shallow_clone();
            let extra = (&denoised - d_s) * rhos[p - 1];
            x = update(
                &last,
                sig_s,
                s,
                d_s,
                &earlier,
                &rks,
                &rhos[..p - 1],
                h_phi_1,
                b_h,
                Some(extra),
            );
        }
        let p = self.order_at(i, steps);
        let lam_s = lambda(s);
        let h = lambda(s_next) - lam_s;
        let earlier: Vec<&Tensor> = (1..p).map(|k| &ds[ds.len() - k]).collect();
        let rks: Vec<f64> = (1..p)
            .map(|k| (lambda(sigmas[i - k]) - lam_s) / h)
            .collect();
        let (rhos, h_phi_1, b_h) = coefficients(h, &rks, self.variant, false);
        let out = update(
            &x, s, s_next, &denoised, &earlier, &rks, &rhos, h_phi_1, b_h, None,
        );
        // Keep the corrected x and the last `order` outputs.
        keep_corrector_history(ctx, x, ds, denoised, self.order);
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn coefficients_reduce_to_the_published_low_orders() {
        // UniC-1 and UniP-2 use rho = 1/2 without a solve; the corrector of order 2 with
        // r_1 = -1 (equal steps) solves a 2x2 system whose rows are b_1, b_2.
        let (r, phi, bh) = coefficients(0.3, &[], UniPcVariant::Bh2, true);
        assert_eq!(r, vec![0.5]);
        assert!((phi - (-0.3f64).exp_m1()).abs() < 1e-15 && (bh - phi).abs() < 1e-15);
        let (r, _, bh) = coefficients(0.3, &[-1.0], UniPcVariant::Bh1, false);
        assert_eq!((r, bh), (vec![0.5], -0.3));
        let h = 0.25f64;
        let (r, _, _) = coefficients(h, &[-1.0], UniPcVariant::Bh1, true);
        // b_1 = (expm1(-h)/(-h) - 1) / (-h), b_2 = 2 (h_phi_1/(-h) - 1/2) / (-h).
        let phi1 = (-h).exp_m1() / -h - 1.0;
        let phi2 = phi1 / -h - 0.5;
        let (b1, b2) = (phi1 / -h, 2.0 * phi2 / -h);
        // [1 1; -1 1] rho = [b1; b2].
        assert!((r[0] + r[1] - b1).abs() < 1e-14 && (-r[0] + r[1] - b2).abs() < 1e-14);
        // Small h: B(h) ~ -h, b_1 -> 1/2, so UniC-1's 1/2 is the limit.
        assert!((b1 - 0.5).abs() < 0.1);
    }
}
