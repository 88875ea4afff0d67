//! ComfyUI's SA-Solver (`sample_sa_solver` of comfy/k_diffusion/sampling.py with the
//! coefficients of comfy/k_diffusion/sa_solver.py; KSampler's `sa_solver` and, with `pece`,
//! `sa_solver_pece`): the stochastic Adams predictor and corrector of Xue et al. (2023) in the
//! data-prediction form of [`super::sa_solver`], arranged as ComfyUI arranges them.
//!
//! With `lambda = -log sigma`, `h_i = lambda_{i+1} - lambda_i` and `a = 1 + tau^2`, step `i`:
//!
//! 1. `D_i = D(x^p_i; sigma_i)` at the predicted state `x^p_i` (the start latent at step 0).
//! 2. Corrector (not at step 0; not at the step to 0 unless `pece`): the corrected state
//!    `x_i = exp(-tau_{i-1}^2 h_{i-1}) (sigma_i / sigma_{i-1}) x_{i-1} + sum_k w_k D_{i-k} + n_{i-1}`
//!    redoes step `i - 1` from the corrected `x_{i-1}` with the Lagrange weights of
//!    [`super::sa_solver::weights`] over `lambda_{i-1} .. lambda_i` (nodes
//!    `lambda_i, ..., lambda_{i-c+1}`) and the same noise `n_{i-1}` as that step's predictor.
//!    With `pece`, `D_i` is then evaluated again at `x_i` and replaces the first one.
//! 3. Predictor: to sigma = 0 the result is `D_i`; otherwise
//!    `x^p_{i+1} = exp(-tau_i^2 h_i) (sigma_{i+1} / sigma_i) x_i + sum_k w_k D_{i-k} + n_i`,
//!    `n_i = s_noise sigma_{i+1} sqrt(1 - exp(-2 tau_i^2 h_i)) z_i`.
//!
//! The orders: the predictor's `min(p, i + 1, n - 1 - i)` and the corrector's
//! `min(c, i + 1, n - i)` (ComfyUI's `lower_order_to_end` on a grid ending in 0, where the last
//! step to a nonzero level is first order). `tau_i` is `tau` where `s_tmin <= sigma_{i+1} <=
//! s_tmax` (the step's end level, ComfyUI's `get_tau_interval_func`, inclusive) and 0
//! elsewhere. No order-2 term (ComfyUI's `simple_order_2 = False`).
//!
//! Differences from [`super::sa_solver`] (diffusers' arrangement): the default orders (3 and 4
//! against 2 and 2), tau decided by the step's end level, the predictor's order lowered one
//! step earlier at the end, and no order-2 term; so the two are different samplers at every
//! setting. The default window is ComfyUI's
//! `percent_to_sigma(0.2)` and `percent_to_sigma(0.8)` of a model on DDPM's linear chain
//! (`sigma` at the fractional timesteps 799.2 and 199.8); for another model give its window.

use super::check_nonneg;
use super::dpmpp_2m::lambda;
use super::sa_solver::{check_params, combine, shared_base, tau_in_window, weights};
use crate::driver::{Sampler, StepCtx};
use crate::error::Result;
use serde::{Deserialize, Serialize};
use tch::Tensor;

fn three() -> usize {
    3
}
fn four() -> usize {
    4
}
fn chain_level(t: f64) -> f64 {
    crate::grid::chain_sigma_at(&crate::sde::DdpmChain::linear(1000, 1e-4, 0.02).sigmas(), t)
}
fn s_tmin() -> f64 {
    chain_level(999.0 * 0.2)
}
fn s_tmax() -> f64 {
    chain_level(999.0 * 0.8)
}

/// Parameters of `sa-solver-comfy`: ComfyUI's defaults.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SaSolverComfyParams {
    #[serde(default = "three")]
    pub predictor_order: usize,
    #[serde(default = "four")]
    pub corrector_order: usize,
    /// The stochasticity of a step that ends within `[s_tmin, s_tmax]` (ComfyUI's `eta` of its
    /// `tau_func`; 0: the ODE).
    #[serde(default = "super::one")]
    pub tau: f64,
    #[serde(default = "s_tmin")]
    pub s_tmin: f64,
    #[serde(default = "s_tmax", deserialize_with = "super::inf_if_null")]
    pub s_tmax: f64,
    #[serde(default = "super::one")]
    pub s_noise: f64,
    /// Predict-evaluate-correct-evaluate: one more evaluation per step, at the corrected state
    /// (ComfyUI's `sa_solver_pece`).
    #[serde(default)]
    pub pece: bool,
}

impl Default for SaSolverComfyParams {
    fn default() -> Self {
        SaSolverComfyParams {
            predictor_order: 3,
            corrector_order: 4,
            tau: 1.0,
            s_tmin: s_tmin(),
            s_tmax: s_tmax(),
            s_noise: 1.0,
            pece: false,
        }
    }
}

impl SaSolverComfyParams {
    /// Whether any noise is added (on a grid that reaches `[s_tmin, s_tmax]`).
    pub fn is_stochastic(&self) -> bool {
        self.tau > 0.0 && self.s_noise > 0.0
    }
    /// Network evaluations for `steps` steps: one per step, and with `pece` one more at every
    /// corrected level (all but the first).
    pub fn nfe(&self, steps: usize) -> usize {
        if self.pece {
            2 * steps - 1
        } else {
            steps
        }
    }
}

#[derive(Clone, Debug)]
pub struct SaSolverComfy {
    pub p: SaSolverComfyParams,
}

impl SaSolverComfy {
    pub fn new(p: SaSolverComfyParams) -> Result<Self> {
        let q = &p;
        check_params(
            q.predictor_order,
            q.corrector_order,
            q.tau,
            q.s_tmin,
            q.s_tmax,
        )?;
        check_nonneg("s_noise", p.s_noise)?;
        Ok(SaSolverComfy { p })
    }

    /// The stochasticity of the step that ends at `sigma_end`.
    fn tau_to(&self, sigma_end: f64) -> f64 {
        tau_in_window(sigma_end, self.p.tau, self.p.s_tmin, self.p.s_tmax)
    }
}

impl Sampler for SaSolverComfy {
    fn name(&self) -> &'static str {
        "sa-solver-comfy"
    }

    /// `ctx.history` holds `[base_{i-1}, D_{i-m}, ..., D_{i-1}]`, where `base_{i-1}` is the part
    /// of step `i - 1` its predictor and corrector share: `exp(-tau^2 h) (sigma_i / sigma_{i-1})
    /// x_{i-1} + n_{i-1}`.
    fn step(&self, ctx: &mut StepCtx<'_>, x: Tensor) -> Result<Tensor> {
        let (i, n) = (ctx.index, ctx.steps());
        let sigmas = ctx.sigmas;
        let (s, s_next) = (sigmas[i], sigmas[i + 1]);
        let mut denoised = ctx.denoise(&x, s)?;
        // old = [D_{i-m}, ..., D_{i-1}]; outputs(D_i)[k] = D_{i-k}.
        let old = super::corrector_outputs(ctx);
        let outputs = |newest: &Tensor| -> Vec<Tensor> {
            std::iter::once(newest.shallow_clone())
                .chain(old.iter().rev().map(|t| t.shallow_clone()))
                .collect()
        };
        let max_order = self.p.predictor_order.max(self.p.corrector_order);
        let kept = (i + 1).min(max_order);
        let lam = |k: usize| lambda(sigmas[k]);
        let mut x = x;
        if i > 0 && (s_next > 0.0 || self.p.pece) {
            let c = self.p.corrector_order.min(kept).min(n - i);
            let tau = self.tau_to(s);
            let h = lam(i) - lam(i - 1);
            let nodes: Vec<f64> = (0..c).map(|k| (lam(i) - lam(i - k)) / h).collect();
            let w = weights(h, 1.0 + tau * tau, &nodes, None);
            let ds = outputs(&denoised);
            let refs: Vec<&Tensor> = ds[..c].iter().collect();
            x = combine(&ctx.history[0], &w, &refs);
            if self.p.pece {
                denoised = ctx.denoise(&x, s)?;
            }
        }
        if s_next == 0.0 {
            ctx.history.clear();
            return Ok(denoised);
        }
        let p = self.p.predictor_order.min(kept).min(n - 1 - i);
        let tau = self.tau_to(s_next);
        let h = lambda(s_next) - lambda(s);
        let nodes: Vec<f64> = (0..p).map(|k| (lambda(s_next) - lam(i - k)) / h).collect();
        let w = weights(h, 1.0 + tau * tau, &nodes, None);
        let base = shared_base(ctx, &x, (s, s_next), tau, self.p.s_noise)?;
        let ds = outputs(&denoised);
        let refs: Vec<&Tensor> = ds[..p].iter().collect();
        let out = combine(&base, &w, &refs);
        super::keep_corrector_history(ctx, base, old, denoised, max_order - 1);
        Ok(out)
    }
}
