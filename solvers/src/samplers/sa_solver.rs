//! SA-Solver (Xue et al. 2023, "SA-Solver: Stochastic Adams Solver for Fast Sampling of
//! Diffusion Models", NeurIPS), the data-prediction form of diffusers' `SASolverScheduler`
//! (`stochastic_adams_bashforth_update`, `stochastic_adams_moulton_update`, `step`) with its
//! default `lower_order_final = True`.
//!
//! With `lambda = -log sigma`, a step from `sigma_s` to `sigma_t` has `h = lambda_t - lambda_s`
//! and, with the step's stochasticity `tau` and `a = 1 + tau^2`,
//!
//! `x_t = exp(-tau^2 h) (sigma_t / sigma_s) x_s + sum_k w_k D_k + sigma_t sqrt(1 - exp(-2 tau^2 h)) z`,
//!
//! `w_k = a int_{lambda_s}^{lambda_t} exp(-a (lambda_t - lambda)) l_k(lambda) dlambda`, where `l_k`
//! is the Lagrange basis polynomial of node `k` among the levels whose outputs `D_k` enter (the
//! exact solution of the SDE with `D` replaced by its interpolating polynomial in lambda;
//! diffusers writes the same integral as `(1 + tau^2) sigma_t exp(-tau^2 lambda_t)` times
//! `int exp((1 + tau^2) lambda) l_k`).
//!
//! - The predictor (stochastic Adams-Bashforth) of order `p` uses `D_i, ..., D_{i-p+1}` for the
//!   step from `sigma_i` to `sigma_{i+1}`, with fresh noise `z`.
//! - The corrector (stochastic Adams-Moulton) of order `c`, once `D_{i+1} = D(x_{i+1}; sigma_{i+1})`
//!   is known (the next step's evaluation, so it costs no extra NFE), redoes that step from the
//!   corrected `x_i` with `D_{i+1}, ..., D_{i-c+2}` and the same `z`, before the next predictor.
//! - At order 2 both add diffusers' O(h^3) term (its "modification similar to UniPC"):
//!   `w_0 += a E / h_0`, `w_1 -= a E / h_0`, with `E = h^2 / 2 - (a h - 1 + exp(-a h)) / a^2` and
//!   `h_0` the spacing of the two nodes (the previous step for the predictor, `h` for the
//!   corrector).
//!
//! Step `i` of `n` runs the predictor at order `min(p, i + 1, n - i)` and its corrector (applied
//! at step `i + 1`) at order `min(c, i + 2, n - i + 1)`, diffusers' warm-up and lower order at
//! the end. `tau` is `tau` where `s_tmin <= sigma_i <= s_tmax` and 0 elsewhere, for both updates
//! of step `i`: diffusers' default `tau_func` (1 for discrete timesteps 200 to 800) becomes the
//! defaults `tau = 1`, `s_tmin = sigma_200 = 0.7236` and `s_tmax = sigma_800 = 25.74` of DDPM's
//! linear schedule. `z` is the step's standard normal from [`crate::noise::STREAM_STEP`] (the
//! draw `euler-ancestral` uses). The step to sigma = 0 returns `D_i` (the first-order update's
//! limit). One evaluation per step. `tau = 0` is an ODE solver (a multistep exponential
//! Adams-Bashforth-Moulton method in lambda).

use super::dpmpp_2m::lambda;
use super::{
    check_nonneg, check_order, check_window, corrector_outputs, in_window, keep_corrector_history,
    weighted_sum,
};
use crate::driver::{Sampler, StepCtx};
use crate::error::Result;
use crate::sde::DdpmChain;
use serde::{Deserialize, Serialize};
use tch::Tensor;

/// The largest predictor and corrector order accepted (diffusers' limit).
pub const MAX_ORDER: usize = 4;

/// The noise level of discrete timestep `t` (0-based, as diffusers indexes `alphas_cumprod`) of
/// DDPM's linear schedule (1000 steps, betas 1e-4 to 0.02).
pub fn ddpm_linear_sigma(t: usize) -> f64 {
    DdpmChain::linear(1000, 1e-4, 0.02).sigmas()[t]
}

fn two() -> usize {
    2
}
fn s_tmin() -> f64 {
    ddpm_linear_sigma(200)
}
fn s_tmax() -> f64 {
    ddpm_linear_sigma(800)
}

/// Parameters of `sa-solver`, the keys of its `[[samplers]]` entry: diffusers' orders, and its
/// `tau_func` as a constant `tau` on a window of noise levels.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SaSolverParams {
    #[serde(default = "two")]
    pub predictor_order: usize,
    #[serde(default = "two")]
    pub corrector_order: usize,
    /// The stochasticity where `s_tmin <= sigma <= s_tmax` (0: the ODE; 1: the reverse SDE).
    #[serde(default = "super::one")]
    pub tau: f64,
    #[serde(default = "s_tmin")]
    pub s_tmin: f64,
    #[serde(default = "s_tmax", deserialize_with = "super::inf_if_null")]
    pub s_tmax: f64,
}

impl Default for SaSolverParams {
    fn default() -> Self {
        SaSolverParams {
            predictor_order: 2,
            corrector_order: 2,
            tau: 1.0,
            s_tmin: s_tmin(),
            s_tmax: s_tmax(),
        }
    }
}

impl SaSolverParams {
    /// Whether any noise is added (on a grid that reaches `[s_tmin, s_tmax]`).
    pub fn is_stochastic(&self) -> bool {
        self.tau > 0.0
    }
}

#[derive(Clone, Debug)]
pub struct SaSolver {
    pub p: SaSolverParams,
}

/// The checks an SA-Solver's orders, `tau` and window pass (both arrangements).
pub(crate) fn check_params(
    predictor_order: usize,
    corrector_order: usize,
    tau: f64,
    s_tmin: f64,
    s_tmax: f64,
) -> Result<()> {
    check_order(predictor_order, 1..=MAX_ORDER)?;
    check_order(corrector_order, 1..=MAX_ORDER)?;
    check_nonneg("tau", tau)?;
    check_window(s_tmin, s_tmax)
}

/// `tau` where `sigma` lies in `[s_tmin, s_tmax]`, else 0.
pub(crate) fn tau_in_window(sigma: f64, tau: f64, s_tmin: f64, s_tmax: f64) -> f64 {
    if in_window(sigma, s_tmin, s_tmax) {
        tau
    } else {
        0.0
    }
}

impl SaSolver {
    pub fn new(p: SaSolverParams) -> Result<Self> {
        let q = &p;
        check_params(
            q.predictor_order,
            q.corrector_order,
            q.tau,
            q.s_tmin,
            q.s_tmax,
        )?;
        Ok(SaSolver { p })
    }

    /// The stochasticity of the step that starts at `sigma`.
    fn tau_at(&self, sigma: f64) -> f64 {
        tau_in_window(sigma, self.p.tau, self.p.s_tmin, self.p.s_tmax)
    }

    /// Outputs kept between steps: enough for both updates (diffusers' `max(p, c - 1)`).
    fn kept(&self) -> usize {
        self.p.predictor_order.max(self.p.corrector_order - 1)
    }
}

/// `g_m(c) = int_0^1 exp(-c v) v^m dv` for `m = 0 .. n - 1`: a power series for `c < 1`, where the
/// recurrence would cancel, and `g_m = (m g_{m-1} - exp(-c)) / c` otherwise.
fn exp_moments(c: f64, n: usize) -> Vec<f64> {
    if c < 1.0 {
        (0..n)
            .map(|m| {
                // sum_k (-c)^k / (k! (m + k + 1))
                let (mut sum, mut term) = (0.0, 1.0);
                for k in 0..60 {
                    let add = term / (m + k + 1) as f64;
                    sum += add;
                    if add.abs() <= 1e-18 * sum.abs() {
                        break;
                    }
                    term *= -c / (k + 1) as f64;
                }
                sum
            })
            .collect()
    } else {
        let e = (-c).exp();
        let mut g = vec![-(-c).exp_m1() / c];
        for m in 1..n {
            g.push((m as f64 * g[m - 1] - e) / c);
        }
        g
    }
}

/// The weights `w_k` of one update over a step of `h > 0` in lambda with `a = 1 + tau^2`, for
/// outputs at the nodes `v_k = (lambda_t - lambda_k) / h` (1 at the step's start, 0 at its end):
/// `w_k = a h int_0^1 exp(-a h v) l_k(v) dv`, plus, with two nodes, diffusers' order-2 term
/// (`spacing`: `h_0`, the two outputs' distance in lambda; `None` leaves it out).
pub fn weights(h: f64, a: f64, nodes: &[f64], spacing: Option<f64>) -> Vec<f64> {
    let n = nodes.len();
    let g = exp_moments(a * h, n);
    let mut w: Vec<f64> = (0..n)
        .map(|k| {
            // l_k(v) = prod_{j != k} (v - v_j) / (v_k - v_j), expanded in powers of v.
            let mut coef = vec![1.0];
            let mut denom = 1.0;
            for (j, &vj) in nodes.iter().enumerate() {
                if j == k {
                    continue;
                }
                let mut next = vec![0.0; coef.len() + 1];
                for (m, &cm) in coef.iter().enumerate() {
                    next[m + 1] += cm;
                    next[m] -= cm * vj;
                }
                coef = next;
                denom *= nodes[k] - vj;
            }
            a * h * coef.iter().zip(&g).map(|(c, g)| c * g).sum::<f64>() / denom
        })
        .collect();
    if let (2, Some(h0)) = (n, spacing) {
        let ah = a * h;
        let e = h * h / 2.0 - (ah + (-ah).exp_m1()) / (a * a);
        let delta = a * e / h0;
        w[0] += delta;
        w[1] -= delta;
    }
    w
}

/// The part of a step from `s` to `s_next` that its predictor and corrector share:
/// `exp(-tau^2 h) (s_next / s) x + s_noise s_next sqrt(1 - exp(-2 tau^2 h)) z`, `h` the step in
/// lambda and `z` the step's standard normal (drawn only where its factor is nonzero).
pub(crate) fn shared_base(
    ctx: &mut StepCtx<'_>,
    x: &Tensor,
    (s, s_next): (f64, f64),
    tau: f64,
    s_noise: f64,
) -> Result<Tensor> {
    let t2h = tau * tau * (lambda(s_next) - lambda(s));
    let base = x * ((-t2h).exp() * s_next / s);
    let scale = s_noise * s_next * (-(-2.0 * t2h).exp_m1()).sqrt();
    Ok(if scale > 0.0 {
        let z = ctx.noise.standard(crate::noise::STREAM_STEP, s_next, s)?;
        base + z * scale
    } else {
        base
    })
}

/// `base + sum_k w_k D_k`.
pub(crate) fn combine(base: &Tensor, w: &[f64], ds: &[&Tensor]) -> Tensor {
    match weighted_sum(ds, w) {
        Some(sum) => base + sum,
        None => base.shallow_clone(),
    }
}

impl Sampler for SaSolver {
    fn name(&self) -> &'static str {
        "sa-solver"
    }

    /// `ctx.history` holds `[base_{i-1}, D_{i-m}, ..., D_{i-1}]` (`m <= max(p, c - 1)`), where
    /// `base_{i-1} = exp(-tau^2 h) (sigma_i / sigma_{i-1}) x_{i-1} + sigma_i sqrt(1 - exp(-2 tau^2 h)) z`
    /// is the part of step `i - 1` that its predictor and corrector share.
    fn step(&self, ctx: &mut StepCtx<'_>, x: Tensor) -> Result<Tensor> {
        let (i, steps) = (ctx.index, ctx.steps());
        let sigmas = ctx.sigmas;
        let (s, s_next) = (sigmas[i], sigmas[i + 1]);
        let denoised = ctx.denoise(&x, s)?;
        if s_next == 0.0 {
            // The first-order update's limit as sigma_t -> 0 (the corrector's result is
            // multiplied by sigma_t / sigma_s = 0).
            ctx.history.clear();
            return Ok(denoised);
        }
        // old = [D_{i-m}, ..., D_{i-1}]; outputs[k] = D_{i-k}.
        let old = corrector_outputs(ctx);
        let mut outputs: Vec<&Tensor> = vec![&denoised];
        outputs.extend(old.iter().rev());
        let lam = |k: usize| lambda(sigmas[k]);
        let mut x = x;
        if i > 0 && !old.is_empty() {
            // The corrector of step i - 1, with D_i.
            let c = self
                .p
                .corrector_order
                .min(i + 1)
                .min(steps - (i - 1) + 1)
                .min(outputs.len());
            let tau = self.tau_at(sigmas[i - 1]);
            let h = lam(i) - lam(i - 1);
            let nodes: Vec<f64> = (0..c).map(|k| (lam(i) - lam(i - k)) / h).collect();
            let w = weights(h, 1.0 + tau * tau, &nodes, Some(h));
            x = combine(&ctx.history[0], &w, &outputs[..c]);
        }
        let p = self.p.predictor_order.min(i + 1).min(steps - i);
        let tau = self.tau_at(s);
        let h = lambda(s_next) - lambda(s);
        let nodes: Vec<f64> = (0..p).map(|k| (lambda(s_next) - lam(i - k)) / h).collect();
        let spacing = (p == 2).then(|| lam(i) - lam(i - 1));
        let w = weights(h, 1.0 + tau * tau, &nodes, spacing);
        let base = shared_base(ctx, &x, (s, s_next), tau, 1.0)?;
        let out = combine(&base, &w, &outputs[..p]);
        // Keep base_i and the last max(p, c - 1) outputs.
        keep_corrector_history(ctx, base, old, denoised, self.kept());
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// diffusers' coefficients (`get_coefficients_fn` and the order-2 terms) for data
    /// prediction, written out in lambda as diffusers does: `(1 + tau^2) sigma_t
    /// exp(-tau^2 lambda_t)` times `int_{lambda_s}^{lambda_t} exp((1 + tau^2) lambda) l_k`.
    fn diffusers_weights(
        lam_s: f64,
        lam_t: f64,
        lams: &[f64],
        tau: f64,
        extra: Option<f64>,
    ) -> Vec<f64> {
        let a = 1.0 + tau * tau;
        // int exp(a x) x^m over [lam_s, lam_t], m = 0..3 (get_coefficients_exponential_positive).
        let pos = |m: usize| {
            let (e, s) = (a * lam_t, a * lam_s);
            let ed = (-(e - s)).exp();
            e.exp()
                * match m {
                    0 => (1.0 - ed) / a,
                    1 => ((e - 1.0) - (s - 1.0) * ed) / a.powi(2),
                    2 => ((e * e - 2.0 * e + 2.0) - (s * s - 2.0 * s + 2.0) * ed) / a.powi(3),
                    _ => {
                        ((e.powi(3) - 3.0 * e * e + 6.0 * e - 6.0)
                            - (s.powi(3) - 3.0 * s * s + 6.0 * s - 6.0) * ed)
                            / a.powi(4)
                    }
                }
        };
        let n = lams.len();
        let mut c: Vec<f64> = (0..n)
            .map(|k| {
                // Lagrange basis k expanded in descending powers (lagrange_polynomial_coefficient).
                let mut coef = vec![1.0];
                let mut denom = 1.0;
                for (j, &lj) in lams.iter().enumerate() {
                    if j != k {
                        let mut next = vec![0.0; coef.len() + 1];
                        for (m, &cm) in coef.iter().enumerate() {
                            next[m] += cm;
                            next[m + 1] -= cm * lj;
                        }
                        coef = next;
                        denom *= lams[k] - lj;
                    }
                }
                (0..n).map(|j| coef[j] / denom * pos(n - 1 - j)).sum()
            })
            .collect();
        let h = lam_t - lam_s;
        if let (2, Some(h0)) = (n, extra) {
            let d =
                (a * lam_t).exp() * (h * h / 2.0 - (h * a - 1.0 + (-a * h).exp()) / (a * a)) / h0;
            c[0] += d;
            c[1] -= d;
        }
        let sigma_t = (-lam_t).exp();
        c.iter()
            .map(|ck| a * sigma_t * (-(tau * tau) * lam_t).exp() * ck)
            .collect()
    }

    #[test]
    fn weights_are_diffusers_coefficients() {
        // Predictor and corrector nodes on an uneven stretch of levels, every order, tau 0, 0.7
        // and 1, steps small (the series branch) and large (the recurrence).
        let sig = [3.0f64, 1.4, 0.9, 0.5, 0.31];
        let lams: Vec<f64> = sig.iter().map(|s| -s.ln()).collect();
        for tau in [0.0, 0.7, 1.0] {
            for n in 1..=4 {
                // Predictor from level 3 to 4 with outputs at 3, 2, 1, 0.
                let (ls, lt) = (lams[3], lams[4]);
                let node_l: Vec<f64> = (0..n).map(|k| lams[3 - k]).collect();
                let h = lt - ls;
                let v: Vec<f64> = node_l.iter().map(|l| (lt - l) / h).collect();
                let extra = Some(lams[3] - lams[2]);
                let ours = weights(h, 1.0 + tau * tau, &v, extra);
                let theirs = diffusers_weights(ls, lt, &node_l, tau, extra);
                for (o, t) in ours.iter().zip(&theirs) {
                    assert!(
                        (o - t).abs() < 1e-10 * t.abs().max(1.0),
                        "p{n} tau {tau}: {ours:?} {theirs:?}"
                    );
                }
                // Corrector of the step from 3 to 4, with outputs at 4, 3, 2, 1.
                let node_l: Vec<f64> = (0..n).map(|k| lams[4 - k]).collect();
                let v: Vec<f64> = node_l.iter().map(|l| (lt - l) / h).collect();
                let ours = weights(h, 1.0 + tau * tau, &v, Some(h));
                let theirs: Vec<f64> = {
                    // The corrector's order-2 term is E / h (diffusers writes it with h inline).
                    diffusers_weights(ls, lt, &node_l, tau, Some(h))
                };
                for (o, t) in ours.iter().zip(&theirs) {
                    assert!(
                        (o - t).abs() < 1e-10 * t.abs().max(1.0),
                        "c{n} tau {tau}: {ours:?} {theirs:?}"
                    );
                }
                // With the x coefficient, the weights of an update sum to 1.
                let a = 1.0 + tau * tau;
                let total: f64 = ours.iter().sum::<f64>() + (-(tau * tau) * h).exp() * (-h).exp();
                assert!((total - 1.0).abs() < 1e-12 * a, "{total}");
            }
        }
        // A tiny step: the series keeps full precision where the closed form cancels.
        let w = weights(1e-4, 2.0, &[1.0, 2.0, 3.0], None);
        let total: f64 = w.iter().sum();
        assert!((total - -(-2e-4f64).exp_m1()).abs() < 1e-17, "{total}");
    }
}
