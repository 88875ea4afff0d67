//! Linear multistep (Adams-Bashforth with variable steps), k-diffusion's `sample_lms`: the
//! derivatives `d_j = (x_j - D_j) / sigma_j` of the last `order` steps are interpolated by a
//! Lagrange polynomial in sigma, which is integrated exactly over `[sigma_i, sigma_{i+1}]`.
//! Lower order while fewer derivatives exist. One evaluation per step.

use super::check_order;
use crate::driver::{Sampler, StepCtx};
use crate::error::Result;
use tch::Tensor;

pub struct Lms {
    pub order: usize,
}

impl Lms {
    pub fn new(order: usize) -> Result<Self> {
        check_order(order, 1..=4)?;
        Ok(Lms { order })
    }
}

/// Multiply polynomial `p` (coefficients, lowest degree first) by `(x - root) / denom`.
fn mul_linear(p: &[f64], root: f64, denom: f64) -> Vec<f64> {
    let mut out = vec![0.0; p.len() + 1];
    for (k, c) in p.iter().enumerate() {
        out[k + 1] += c / denom;
        out[k] -= c * root / denom;
    }
    out
}

/// `int_{t[i]}^{t[i+1]} prod_{k != j, k < order} (tau - t[i-k]) / (t[i-j] - t[i-k]) dtau`,
/// k-diffusion's `linear_multistep_coeff`, integrated exactly.
pub fn linear_multistep_coeff(order: usize, t: &[f64], i: usize, j: usize) -> f64 {
    // In the variable u = tau - t[i], so the integral runs from 0 to h = t[i+1] - t[i] and no
    // large values cancel.
    let mut p = vec![1.0];
    for k in 0..order {
        if k != j {
            p = mul_linear(&p, t[i - k] - t[i], t[i - j] - t[i - k]);
        }
    }
    let h = t[i + 1] - t[i];
    p.iter()
        .enumerate()
        .map(|(k, c)| c * h.powi(k as i32 + 1) / (k as f64 + 1.0))
        .sum::<f64>()
}

impl Sampler for Lms {
    fn name(&self) -> &'static str {
        "lms"
    }
    fn invertible(&self) -> bool {
        true
    }
    fn step(&self, ctx: &mut StepCtx<'_>, x: Tensor) -> Result<Tensor> {
        let (i, s) = (ctx.index, ctx.sigma());
        let d = ctx.derivative(&x, s)?;
        ctx.history.push(d);
        if ctx.history.len() > self.order {
            drop(ctx.history.remove(0));
        }
        let cur = (i + 1).min(self.order).min(ctx.history.len());
        let mut out = x;
        for (j, dj) in ctx.history.iter().rev().take(cur).enumerate() {
            out = out + dj * linear_multistep_coeff(cur, ctx.sigmas, i, j);
        }
        Ok(out)
    }
}
