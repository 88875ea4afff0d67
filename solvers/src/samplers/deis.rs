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

/// `deis-tab`: DEIS in its tAB form (Zhang & Chen 2023, the polynomial of the noise
/// prediction in the time `t` of a VP process), as zju-pi/diff-sampler writes it for EDM's
/// variable and ComfyUI runs it (`sample_deis`, `deis_mode = "tab"`, ComfyUI's `deis`): with
/// `d_j = (x_j - D(x_j; sigma_j)) / sigma_j` (the noise prediction),
///
/// `x' = x + sum_{k < p} c_k d_{i-k}`, `c_k = int_{sigma_i}^{sigma_{i+1}} l_k(t(s)) ds`,
///
/// where `l_k` is the Lagrange basis polynomial in `t` through `t(sigma_i), ..., t(sigma_{i-p+1})`
/// that is 1 at `t(sigma_{i-k})`, and `t(sigma)` the time of the VP process
/// `sigma(t) = sqrt(exp(beta_d t^2 / 2 + beta_min t) - 1)` through `(1e-3, 0.002)` and `(1, 80)`
/// ([`VpTime::edm`], diff-sampler's `edm2t`). Order `p = min(order, i + 1)`; the step to 0 is
/// Euler's (it returns `D`). One evaluation per step.
#[derive(Clone, Debug)]
pub struct DeisTab {
    pub order: usize,
}

/// The VP process whose time `t` DEIS's tAB form interpolates in: `sigma(t)^2 =
/// exp(beta_d t^2 / 2 + beta_min t) - 1`.
#[derive(Clone, Copy, Debug)]
pub struct VpTime {
    pub beta_min: f64,
    pub beta_d: f64,
}

impl VpTime {
    /// diff-sampler's `edm2t`: `sigma(1e-3) = 0.002`, `sigma(1) = 80` (whatever the grid).
    pub fn edm() -> Self {
        let (eps_s, lo, hi) = (1e-3f64, 0.002f64, 80.0f64);
        let (l_lo, l_hi) = ((lo * lo).ln_1p(), (hi * hi).ln_1p());
        let beta_d = 2.0 * (l_lo / eps_s - l_hi) / (eps_s - 1.0);
        VpTime {
            beta_min: l_hi - 0.5 * beta_d,
            beta_d,
        }
    }
    /// The time of noise level `sigma`.
    pub fn t(&self, sigma: f64) -> f64 {
        let (b, d) = (self.beta_min, self.beta_d);
        ((b * b + 2.0 * d * (sigma * sigma).ln_1p()).sqrt() - b) / d
    }
}

/// The weights of `d_i, d_{i-1}, ...` for a step from `levels[0]` to `next` through the noise
/// levels `levels = [sigma_i, sigma_{i-1}, ...]`: `int l_k(t(s)) ds` over the step, by the
/// composite Simpson rule on 2000 intervals in sigma (the integrand is smooth in sigma).
pub fn tab_coefficients(next: f64, levels: &[f64], vp: &VpTime) -> Vec<f64> {
    let ts: Vec<f64> = levels.iter().map(|&s| vp.t(s)).collect();
    let basis = |k: usize, t: f64| -> f64 {
        ts.iter()
            .enumerate()
            .filter(|&(j, _)| j != k)
            .map(|(_, &tj)| (t - tj) / (ts[k] - tj))
            .product()
    };
    let n = 2000;
    let h = (next - levels[0]) / n as f64;
    (0..levels.len())
        .map(|k| {
            let f = |s: f64| basis(k, vp.t(s));
            let mut acc = f(levels[0]) + f(next);
            for j in 1..n {
                acc += f(levels[0] + j as f64 * h) * if j % 2 == 1 { 4.0 } else { 2.0 };
            }
            acc * h / 3.0
        })
        .collect()
}

impl DeisTab {
    pub fn new(order: usize) -> Result<Self> {
        check_order(order, 1..=4)?;
        Ok(DeisTab { order })
    }
}

impl Sampler for DeisTab {
    fn name(&self) -> &'static str {
        "deis-tab"
    }

    /// `ctx.history` holds `[d_{i-m}, ..., d_{i-1}]`, `m < order`.
    fn step(&self, ctx: &mut StepCtx<'_>, x: Tensor) -> Result<Tensor> {
        let (i, sigmas) = (ctx.index, ctx.sigmas);
        let (s, s_next) = (sigmas[i], sigmas[i + 1]);
        let denoised = ctx.denoise(&x, s)?;
        if s_next == 0.0 {
            ctx.history.clear();
            return Ok(denoised);
        }
        let d = (&x - denoised) / s;
        let p = self.order.min(ctx.history.len() + 1);
        let out = if p == 1 {
            &x + &d * (s_next - s)
        } else {
            let levels: Vec<f64> = (0..p).map(|k| sigmas[i - k]).collect();
            let coefs = tab_coefficients(s_next, &levels, &VpTime::edm());
            let n = ctx.history.len();
            let mut out = &x + &d * coefs[0];
            for (k, c) in coefs.iter().enumerate().skip(1) {
                out = out + &ctx.history[n - k] * *c;
            }
            out
        };
        ctx.history.push(d);
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

    #[test]
    fn tab_coefficients_integrate_in_the_vp_time_and_sum_to_the_step() {
        let vp = VpTime::edm();
        // edm2t's ends: t(0.002) = 1e-3 and t(80) = 1.
        assert!((vp.t(0.002) - 1e-3).abs() < 1e-12 && (vp.t(80.0) - 1.0).abs() < 1e-12);
        // sigma(t(s)) = s.
        for s in [0.01f64, 0.5, 3.0, 40.0] {
            let t = vp.t(s);
            let back = ((0.5 * vp.beta_d * t * t + vp.beta_min * t).exp() - 1.0).sqrt();
            assert!((back - s).abs() < 1e-10 * s, "{s}: {back}");
        }
        let (next, lv) = (0.9f64, [1.5f64, 2.6, 4.0, 7.0]);
        for p in 1..=4 {
            let c = tab_coefficients(next, &lv[..p], &vp);
            assert!(
                (c.iter().sum::<f64>() - (next - lv[0])).abs() < 1e-12,
                "{p}: {c:?}"
            );
        }
        // On the t-integral, diff-sampler's form: int l_k(tau) dsigma/dtau dtau, by a fine
        // midpoint rule in tau.
        let ts: Vec<f64> = lv[..3].iter().map(|&s| vp.t(s)).collect();
        let (t0, t1) = (ts[0], vp.t(next));
        let sigma = |t: f64| ((0.5 * vp.beta_d * t * t + vp.beta_min * t).exp() - 1.0).sqrt();
        let m = 200_000;
        let h = (t1 - t0) / m as f64;
        let c = tab_coefficients(next, &lv[..3], &vp);
        for (k, ck) in c.iter().enumerate() {
            let mut acc = 0.0;
            for j in 0..m {
                let (a, b) = (t0 + j as f64 * h, t0 + (j + 1) as f64 * h);
                let tm = 0.5 * (a + b);
                let l: f64 = (0..3)
                    .filter(|&q| q != k)
                    .map(|q| (tm - ts[q]) / (ts[k] - ts[q]))
                    .product();
                acc += l * (sigma(b) - sigma(a));
            }
            assert!((ck - acc).abs() < 1e-9, "k {k}: {ck} vs {acc}");
        }
    }
}
