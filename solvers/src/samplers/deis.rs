//! DEIS, the multistep "log-rho" exponential integrator of Zhang and Chen (2023), "Fast Sampling
//! of Diffusion Models with Exponential Integrator" (ICLR 2023), in the form of diffusers'
//! `DEISMultistepScheduler` (`algorithm_type = "deis"`, `solver_type = "logrho"`).
//!
//! In the scaled variable the probability-flow ODE is `dx/dsigma = eps(x, sigma)` with
//! `eps = (x - D(x; sigma)) / sigma`. DEIS integrates it over a step from `sigma_i` to
//! `sigma_{i+1}` with `eps` replaced by the polynomial in `log sigma` through the last `p`
//! outputs `eps_i, eps_{i-1}, ...` (Lagrange form):
//!
//! `x' = x + sum_k eps_{i-k} int_{sigma_i}^{sigma_{i+1}} l_k(log s) ds`,
//!
//! with the integrals in closed form (`int (log s - log c) / (log b - log c) ds` and its
//! quadratic analogue). Order 1 is Euler (DDIM). Step `i` of `n` runs at order
//! `min(order, i + 1)`, and with fewer than 15 steps at most order 2 on step `n - 2` (diffusers'
//! `lower_order_final`); the step to sigma = 0 returns `D(x; sigma_{n-1})`, where every order's
//! update would need `log 0`. One evaluation per step.

use super::check_order;
use crate::driver::{Sampler, StepCtx};
use crate::error::Result;
use tch::Tensor;

#[derive(Clone, Debug)]
pub struct Deis {
    pub order: usize,
}

impl Deis {
    pub fn new(order: usize) -> Result<Self> {
        check_order(order, 1..=3)?;
        Ok(Deis { order })
    }

    /// The order of step `i` of `steps` (not the last, which returns `D`).
    fn order_at(&self, i: usize, steps: usize) -> usize {
        let mut p = self.order.min(i + 1);
        if steps < 15 && i + 2 == steps {
            p = p.min(2);
        }
        p
    }
}

/// `int (log s - log c) / (log b - log c) ds` at `s = t`.
fn ind2(t: f64, b: f64, c: f64) -> f64 {
    t * (-c.ln() + t.ln() - 1.0) / (b.ln() - c.ln())
}

/// `int (log s - log c)(log s - log d) / ((log b - log c)(log b - log d)) ds` at `s = t`.
fn ind3(t: f64, b: f64, c: f64, d: f64) -> f64 {
    let (lt, lc, ld) = (t.ln(), c.ln(), d.ln());
    let num = t * (lc * (ld - lt + 1.0) - ld * lt + ld + lt * lt - 2.0 * lt + 2.0);
    num / ((b.ln() - lc) * (b.ln() - ld))
}

/// The weights of `eps_i, eps_{i-1}, ...` for a step from `s0` to `t` through the levels
/// `levels = [s0, s1, ...]` (1 to 3 of them).
pub fn coefficients(t: f64, levels: &[f64]) -> Vec<f64> {
    match *levels {
        [s0] => vec![t - s0],
        [s0, s1] => vec![
            ind2(t, s0, s1) - ind2(s0, s0, s1),
            ind2(t, s1, s0) - ind2(s0, s1, s0),
        ],
        [s0, s1, s2] => vec![
            ind3(t, s0, s1, s2) - ind3(s0, s0, s1, s2),
            ind3(t, s1, s2, s0) - ind3(s0, s1, s2, s0),
            ind3(t, s2, s0, s1) - ind3(s0, s2, s0, s1),
        ],
        _ => unreachable!("DEIS takes 1 to 3 levels"),
    }
}

impl Sampler for Deis {
    fn name(&self) -> &'static str {
        "deis"
    }
    fn invertible(&self) -> bool {
        true
    }

    /// `ctx.history` holds `[eps_{i-m}, ..., eps_{i-1}]`, `m < order`.
    fn step(&self, ctx: &mut StepCtx<'_>, x: Tensor) -> Result<Tensor> {
        let (i, steps, sigmas) = (ctx.index, ctx.steps(), ctx.sigmas);
        let (s, s_next) = (sigmas[i], sigmas[i + 1]);
        let denoised = ctx.denoise(&x, s)?;
        if s_next == 0.0 {
            ctx.history.clear();
            return Ok(denoised);
        }
        let eps = (&x - denoised) / s;
        let p = self.order_at(i, steps).min(ctx.history.len() + 1);
        let levels: Vec<f64> = (0..p).map(|k| sigmas[i - k]).collect();
        let coefs = coefficients(s_next, &levels);
        let n = ctx.history.len();
        let mut out = x + &eps * coefs[0];
        for (k, c) in coefs.iter().enumerate().skip(1) {
            out = out + &ctx.history[n - k] * *c;
        }
        ctx.history.push(eps);
        if ctx.history.len() >= self.order {
            drop(ctx.history.remove(0));
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn coefficients_integrate_the_interpolating_polynomial() {
        // Against a composite Simpson rule on the Lagrange basis in log s.
        let (t, lv) = (0.7f64, [1.0f64, 1.6, 2.5]);
        let quad = |f: &dyn Fn(f64) -> f64| {
            let n = 2000;
            let h = (t - lv[0]) / n as f64;
            let mut acc = f(lv[0]) + f(t);
            for j in 1..n {
                acc += f(lv[0] + j as f64 * h) * if j % 2 == 1 { 4.0 } else { 2.0 };
            }
            acc * h / 3.0
        };
        for p in 1..=3 {
            let levels = &lv[..p];
            let c = coefficients(t, levels);
            for k in 0..p {
                let basis = |s: f64| {
                    let mut v = 1.0;
                    for (j, lj) in levels.iter().enumerate() {
                        if j != k {
                            v *= (s.ln() - lj.ln()) / (levels[k].ln() - lj.ln());
                        }
                    }
                    v
                };
                let want = quad(&basis);
                assert!(
                    (c[k] - want).abs() < 1e-10,
                    "order {p}, k {k}: {} vs {want}",
                    c[k]
                );
            }
            // The weights sum to the step length (constants are integrated exactly).
            assert!((c.iter().sum::<f64>() - (t - lv[0])).abs() < 1e-12);
        }
    }
}
