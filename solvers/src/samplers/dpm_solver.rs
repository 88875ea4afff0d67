//! Singlestep DPM-Solver (Lu et al. 2022, "DPM-Solver: A Fast ODE Solver for Diffusion
//! Probabilistic Model Sampling in Around 10 Steps", Algorithms 1 and 2), in the
//! noise-prediction form and the variables of k-diffusion's `DPMSolver` class
//! (`k_diffusion/sampling.py`): time `t = -log sigma`, `eps = (x - D(x; sigma)) / sigma`, the
//! intermediate points at `r1 = 1/2` (order 2) and `r1 = 1/3, r2 = 2/3` (order 3).
//!
//! - `dpm-solver`: every step to a nonzero level is one DPM-Solver-`order` step (`order`
//!   evaluations); the step to sigma = 0 returns `D(x; sigma)` (the limit of DPM-Solver-1, one
//!   evaluation). With `eta > 0` each step is ancestral as in k-diffusion's `dpm_solver_fast`:
//!   it goes down to `sigma_down` of [`ancestral_step`] (not below the grid's last nonzero level),
//!   then adds fresh noise of standard deviation `s_noise sqrt(sigma'^2 - sigma_down^2)` from the
//!   step stream. Order 1 is `euler`, order 2 is `dpm2` (the midpoint of both is the geometric
//!   mean); order 3 is the paper's DPM-Solver-3.
//! - `dpm-adaptive`: k-diffusion's `dpm_solver_adaptive` ("DPM-Solver-12" and "-23", the
//!   paper's Algorithm 4 with k-diffusion's PID step-size controller): from the grid's first
//!   level to its last nonzero level, steps of DPM-Solver-2 (with `r1 = 1/3`) and DPM-Solver-3
//!   (order 3) or DPM-Solver-1 and -2 (order 2) taken together, the difference of the pair
//!   measured against `max(atol, rtol max(|x_low|, |x_prev|))` in the RMS norm over the whole
//!   batch; the higher-order result is kept when the step is accepted. The grid's interior
//!   levels are not used (only its two ends); the step to 0 returns `D`. The evaluation at the
//!   start of a rejected step is reused by the retry (k-diffusion evaluates it again), so the
//!   NFE is `order` per attempt less one per rejection, plus one for the final `D`.
//! - `dpm-fast`: k-diffusion's `dpm_solver_fast` ("DPM-Solver-fast", the paper's Section 3.4
//!   recipe for a fixed budget of evaluations): with `K = n - 1` evaluations for `n` steps, `M =
//!   floor(K / 3) + 1` steps uniform in `t = -log sigma` from the grid's first to its last
//!   nonzero level, all DPM-Solver-3 but the end: `..., 3, 2, 1` when `K` is a multiple of 3,
//!   else `..., 3, K mod 3`; then `D` at the last nonzero level. `n` evaluations in all, like
//!   `euler`; only the two ends of the grid are used. Ancestral with `eta > 0` as `dpm-solver`.

use super::euler_ancestral::ancestral_step;
use super::{add_step_noise, check_nonneg, check_order, check_positive, require};
use crate::driver::{Sampler, StepCtx};
use crate::error::{Result, SolverError};
use serde::{Deserialize, Serialize};
use tch::Tensor;

fn sig(t: f64) -> f64 {
    (-t).exp()
}

/// `eps` at time `t` (one evaluation).
fn eps_at(ctx: &mut StepCtx<'_>, x: &Tensor, t: f64) -> Result<Tensor> {
    ctx.derivative(x, sig(t))
}

/// DPM-Solver-1 from `t` to `t_next` given `eps` at `(x, t)` (k-diffusion `dpm_solver_1_step`).
fn step1(x: &Tensor, eps: &Tensor, t: f64, t_next: f64) -> Tensor {
    let h = t_next - t;
    x - eps * (sig(t_next) * h.exp_m1())
}

/// The evaluation at the intermediate point `t + r1 h` of DPM-Solver-2 and -3.
fn eval_r1(
    ctx: &mut StepCtx<'_>,
    x: &Tensor,
    eps: &Tensor,
    t: f64,
    t_next: f64,
    r1: f64,
) -> Result<Tensor> {
    let h = t_next - t;
    let s1 = t + r1 * h;
    let u1 = x - eps * (sig(s1) * (r1 * h).exp_m1());
    eps_at(ctx, &u1, s1)
}

/// DPM-Solver-2 with intermediate point `t + r1 h` (k-diffusion `dpm_solver_2_step`); returns the
/// result and the evaluation at the intermediate point.
fn step2(
    ctx: &mut StepCtx<'_>,
    x: &Tensor,
    eps: &Tensor,
    t: f64,
    t_next: f64,
    r1: f64,
) -> Result<(Tensor, Tensor)> {
    let eps_r1 = eval_r1(ctx, x, eps, t, t_next, r1)?;
    let a = sig(t_next) * (t_next - t).exp_m1();
    let x2 = x - eps * a - (&eps_r1 - eps) * (a / (2.0 * r1));
    Ok((x2, eps_r1))
}

/// DPM-Solver-3 with intermediate points `t + r1 h`, `t + r2 h` (k-diffusion
/// `dpm_solver_3_step`), given the evaluation `eps_r1` at the first (the point of [`step2`] with
/// the same `r1`).
fn step3(
    ctx: &mut StepCtx<'_>,
    x: &Tensor,
    eps: &Tensor,
    eps_r1: &Tensor,
    t: f64,
    t_next: f64,
    (r1, r2): (f64, f64),
) -> Result<Tensor> {
    let h = t_next - t;
    let s2 = t + r2 * h;
    let e2 = (r2 * h).exp_m1();
    let u2 =
        x - eps * (sig(s2) * e2) - (eps_r1 - eps) * (sig(s2) * (r2 / r1) * (e2 / (r2 * h) - 1.0));
    let eps_r2 = eps_at(ctx, &u2, s2)?;
    let a = sig(t_next) * h.exp_m1();
    Ok(x - eps * a - (eps_r2 - eps) * (sig(t_next) / r2 * (h.exp_m1() / h - 1.0)))
}

/// `(t_down, sigma_up)` of an ancestral step from `t` to `t_next`, `t_down` not beyond `t_end`
/// (k-diffusion's `dpm_solver_fast` and `dpm_solver_adaptive`).
fn ancestral(t: f64, t_next: f64, t_end: f64, eta: f64) -> (f64, f64) {
    if eta == 0.0 {
        return (t_next, 0.0);
    }
    let (down, _) = ancestral_step(sig(t), sig(t_next), eta);
    let t_down = t_end.min(-down.ln());
    let up = (sig(t_next).powi(2) - sig(t_down).powi(2)).max(0.0).sqrt();
    (t_down, up)
}

fn last_nonzero(ctx: &StepCtx<'_>) -> f64 {
    ctx.sigmas[ctx.steps() - 1]
}

/// One DPM-Solver-`order` step (the k-diffusion step functions) from time `t` to `t_next`,
/// ancestral as in `dpm_solver_fast` when `eta > 0`: down to `t_down` (not beyond `t_end`), then
/// `s_noise sigma_up` times the step stream's normal on `[sigma_next, sigma]`, the levels of
/// `t_next` and `t` as the caller holds them (so that the Brownian path is queried there).
#[allow(clippy::too_many_arguments)]
fn ancestral_dpm_step(
    ctx: &mut StepCtx<'_>,
    x: &Tensor,
    order: usize,
    (t, t_next): (f64, f64),
    (sigma, sigma_next): (f64, f64),
    t_end: f64,
    (eta, s_noise): (f64, f64),
) -> Result<Tensor> {
    let (t_down, up) = ancestral(t, t_next, t_end, eta);
    let eps = eps_at(ctx, x, t)?;
    let x = match order {
        1 => step1(x, &eps, t, t_down),
        2 => step2(ctx, x, &eps, t, t_down, 0.5)?.0,
        _ => {
            let (r1, r2) = (1.0 / 3.0, 2.0 / 3.0);
            let eps_r1 = eval_r1(ctx, x, &eps, t, t_down, r1)?;
            step3(ctx, x, &eps, &eps_r1, t, t_down, (r1, r2))?
        }
    };
    add_step_noise(ctx, x, sigma_next, sigma, up * s_noise)
}

/// The step of a sampler that uses only the grid's ends (`dpm-fast`, `dpm-adaptive`): on the
/// first step `integrate(ctx, x, sigma_0, sigma_last)` to the last nonzero level, nothing on
/// the interior steps, `D` on the step to 0.
pub(crate) fn ends_only(
    ctx: &mut StepCtx<'_>,
    x: Tensor,
    integrate: impl FnOnce(&mut StepCtx<'_>, Tensor, f64, f64) -> Result<Tensor>,
) -> Result<Tensor> {
    let (s, s_next) = (ctx.sigma(), ctx.sigma_next());
    if s_next == 0.0 {
        return ctx.denoise(&x, s);
    }
    if ctx.index > 0 {
        // Already at the last nonzero level (the interior levels are not used).
        return Ok(x);
    }
    let end = last_nonzero(ctx);
    integrate(ctx, x, s, end)
}

/// `dpm-solver`: singlestep DPM-Solver of a fixed order on every interval of the grid.
#[derive(Clone, Debug)]
pub struct DpmSolver {
    pub order: usize,
    pub eta: f64,
    pub s_noise: f64,
}

impl DpmSolver {
    pub fn new(order: usize, eta: f64, s_noise: f64) -> Result<Self> {
        check_order(order, 1..=3)?;
        check_nonneg("eta", eta)?;
        check_nonneg("s_noise", s_noise)?;
        Ok(DpmSolver {
            order,
            eta,
            s_noise,
        })
    }
}

impl Sampler for DpmSolver {
    fn name(&self) -> &'static str {
        "dpm-solver"
    }
    fn step(&self, ctx: &mut StepCtx<'_>, x: Tensor) -> Result<Tensor> {
        let (s, s_next) = (ctx.sigma(), ctx.sigma_next());
        if s_next == 0.0 {
            return ctx.denoise(&x, s);
        }
        let t_end = -last_nonzero(ctx).ln();
        ancestral_dpm_step(
            ctx,
            &x,
            self.order,
            (-s.ln(), -s_next.ln()),
            (s, s_next),
            t_end,
            (self.eta, self.s_noise),
        )
    }
}

/// The orders of `dpm-fast`'s steps for a budget of `nfe` evaluations (k-diffusion's
/// `dpm_solver_fast`): they sum to `nfe`.
pub fn fast_orders(nfe: usize) -> Vec<usize> {
    let m = nfe / 3 + 1;
    let mut orders = vec![3; m];
    if nfe.is_multiple_of(3) {
        orders.truncate(m - 1);
        *orders.last_mut().expect("nfe >= 3 here") = 2;
        orders.push(1);
    } else {
        *orders.last_mut().expect("m >= 1") = nfe % 3;
    }
    orders
}

/// `m + 1` points from `a` to `b`, as `torch.linspace` computes them (each half from its own
/// end), so that the step ends match k-diffusion's to the last place.
fn linspace(a: f64, b: f64, m: usize) -> Vec<f64> {
    let step = (b - a) / m as f64;
    let half = m.div_ceil(2); // torch: (number of points) / 2
    (0..=m)
        .map(|i| {
            if i < half {
                a + step * i as f64
            } else {
                b - step * (m - i) as f64
            }
        })
        .collect()
}

/// `dpm-fast`: DPM-Solver-fast with the budget the grid's step count gives.
#[derive(Clone, Debug)]
pub struct DpmFast {
    pub eta: f64,
    pub s_noise: f64,
}

impl DpmFast {
    pub fn new(eta: f64, s_noise: f64) -> Result<Self> {
        check_nonneg("eta", eta)?;
        check_nonneg("s_noise", s_noise)?;
        Ok(DpmFast { eta, s_noise })
    }
}

impl Sampler for DpmFast {
    fn name(&self) -> &'static str {
        "dpm-fast"
    }
    fn step(&self, ctx: &mut StepCtx<'_>, x: Tensor) -> Result<Tensor> {
        ends_only(ctx, x, |ctx, mut x, start, end| {
            let orders = fast_orders(ctx.steps() - 1);
            let t_end = -end.ln();
            let ts = linspace(-start.ln(), t_end, orders.len());
            for (i, &order) in orders.iter().enumerate() {
                let (t, t_next) = (ts[i], ts[i + 1]);
                x = ancestral_dpm_step(
                    ctx,
                    &x,
                    order,
                    (t, t_next),
                    (sig(t), sig(t_next)),
                    t_end,
                    (self.eta, self.s_noise),
                )?;
            }
            Ok(x)
        })
    }
}

/// k-diffusion's `PIDStepSizeController`: the step factor from the last three inverse errors,
/// softened by `1 + atan(f - 1)`; a step is accepted when the factor reaches `accept_safety`.
#[derive(Clone, Debug)]
pub struct Pid {
    pub h: f64,
    b: [f64; 3],
    accept_safety: f64,
    errs: Option<[f64; 3]>,
}

impl Pid {
    pub fn new(h: f64, (p, i, d): (f64, f64, f64), order: f64, accept_safety: f64) -> Self {
        Pid {
            h,
            b: [(p + i + d) / order, -(p + 2.0 * d) / order, d / order],
            accept_safety,
            errs: None,
        }
    }

    /// Update `h` from the error of the attempted step; whether to accept it.
    pub fn propose(&mut self, error: f64) -> bool {
        let inv = 1.0 / (error + 1e-8);
        let mut e = self.errs.unwrap_or([inv; 3]);
        e[0] = inv;
        let f = e[0].powf(self.b[0]) * e[1].powf(self.b[1]) * e[2].powf(self.b[2]);
        let f = 1.0 + (f - 1.0).atan();
        let accept = f >= self.accept_safety;
        if accept {
            e[2] = e[1];
            e[1] = e[0];
        }
        self.errs = Some(e);
        self.h *= f;
        accept
    }
}

fn rtol() -> f64 {
    0.05
}
fn atol() -> f64 {
    0.0078
}
fn h_init() -> f64 {
    0.05
}
fn accept_safety() -> f64 {
    0.81
}

/// Parameters of `dpm-adaptive` (k-diffusion's names and defaults), the keys of its
/// `[[samplers]]` entry.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdaptiveParams {
    /// 3: DPM-Solver-2 and -3 as the pair; 2: DPM-Solver-1 and -2.
    #[serde(default = "super::three")]
    pub order: usize,
    #[serde(default = "rtol")]
    pub rtol: f64,
    #[serde(default = "atol")]
    pub atol: f64,
    /// First step, in `t = -log sigma`.
    #[serde(default = "h_init")]
    pub h_init: f64,
    #[serde(default)]
    pub pcoeff: f64,
    #[serde(default = "super::one")]
    pub icoeff: f64,
    #[serde(default)]
    pub dcoeff: f64,
    #[serde(default = "accept_safety")]
    pub accept_safety: f64,
    #[serde(default)]
    pub eta: f64,
    #[serde(default = "super::one")]
    pub s_noise: f64,
}

impl Default for AdaptiveParams {
    fn default() -> Self {
        AdaptiveParams {
            order: 3,
            rtol: rtol(),
            atol: atol(),
            h_init: h_init(),
            pcoeff: 0.0,
            icoeff: 1.0,
            dcoeff: 0.0,
            accept_safety: accept_safety(),
            eta: 0.0,
            s_noise: 1.0,
        }
    }
}

/// Attempts after which `dpm-adaptive` gives up (a step size that keeps shrinking).
pub const MAX_ATTEMPTS: usize = 100_000;

/// `dpm-adaptive`: DPM-Solver-12 / -23 with adaptive steps.
#[derive(Clone, Debug)]
pub struct DpmAdaptive {
    pub p: AdaptiveParams,
}

impl DpmAdaptive {
    pub fn new(p: AdaptiveParams) -> Result<Self> {
        check_order(p.order, 2..=3)?;
        for (name, v) in [
            ("atol", p.atol),
            ("h_init", p.h_init),
            ("accept_safety", p.accept_safety),
        ] {
            check_positive(name, v)?;
        }
        for (name, v) in [("rtol", p.rtol), ("eta", p.eta), ("s_noise", p.s_noise)] {
            check_nonneg(name, v)?;
        }
        // The softened factor 1 + atan(f - 1) stays below 1 + pi/2: a safety at or above it
        // would reject every step.
        require(
            "accept_safety",
            p.accept_safety,
            p.accept_safety < 1.0 + std::f64::consts::FRAC_PI_2,
            "must be below 1 + pi/2, which the softened step factor never reaches",
        )?;
        for (name, v) in [
            ("pcoeff", p.pcoeff),
            ("icoeff", p.icoeff),
            ("dcoeff", p.dcoeff),
        ] {
            require(name, v, v.is_finite(), "must be finite")?;
        }
        Ok(DpmAdaptive { p })
    }

    /// Integrate from level `sigma_start` to `sigma_end` (both nonzero).
    fn integrate(
        &self,
        ctx: &mut StepCtx<'_>,
        x: Tensor,
        sigma_start: f64,
        sigma_end: f64,
    ) -> Result<Tensor> {
        let p = &self.p;
        let (t_start, t_end) = (-sigma_start.ln(), -sigma_end.ln());
        let pid_order = if p.eta > 0.0 { 1.5 } else { p.order as f64 };
        let mut pid = Pid::new(
            p.h_init,
            (p.pcoeff, p.icoeff, p.dcoeff),
            pid_order,
            p.accept_safety,
        );
        let numel = x.numel() as f64;
        // libtorch refuses a clamp bound beyond the samples' kind; an atol that large already
        // accepts every step, as the kind's largest value does.
        let atol = p.atol.min(match x.kind() {
            tch::Kind::Half => 65504.0,
            tch::Kind::BFloat16 => 3.38e38,
            tch::Kind::Float => f32::MAX as f64,
            _ => f64::MAX,
        });
        let mut x = x;
        let mut x_prev = x.shallow_clone();
        let mut s = t_start;
        let mut eps_s: Option<Tensor> = None;
        let mut attempts = 0usize;
        while s < t_end - 1e-5 {
            attempts += 1;
            if !pid.h.is_finite() {
                return Err(SolverError::Invalid(format!(
                    "dpm-adaptive gave up at sigma = {}: the step-size controller gives a step of {} (pcoeff {:e}, icoeff {:e}, dcoeff {:e}): use smaller controller coefficients",
                    sig(s),
                    pid.h,
                    p.pcoeff,
                    p.icoeff,
                    p.dcoeff
                )));
            }
            if attempts > MAX_ATTEMPTS || !(pid.h > 1e-12) {
                return Err(SolverError::Invalid(format!(
                    "dpm-adaptive gave up at sigma = {} after {} attempts (step size {:e} in log sigma): raise rtol or atol",
                    sig(s),
                    attempts - 1,
                    pid.h
                )));
            }
            let t = t_end.min(s + pid.h);
            let (t_down, up) = ancestral(s, t, t_end, p.eta);
            let eps = match eps_s.take() {
                Some(e) => e,
                None => eps_at(ctx, &x, s)?,
            };
            let (x_low, x_high) = if p.order == 2 {
                let low = step1(&x, &eps, s, t_down);
                let (high, _) = step2(ctx, &x, &eps, s, t_down, 0.5)?;
                (low, high)
            } else {
                let (low, eps_r1) = step2(ctx, &x, &eps, s, t_down, 1.0 / 3.0)?;
                let high = step3(ctx, &x, &eps, &eps_r1, s, t_down, (1.0 / 3.0, 2.0 / 3.0))?;
                (low, high)
            };
            let delta = (x_low.abs().maximum(&x_prev.abs()) * p.rtol).clamp_min(atol);
            let error = ((&x_low - &x_high) / delta)
                .square()
                .sum(x.kind())
                .sqrt()
                .f_double_value(&[])?
                / numel.sqrt();
            if !error.is_finite() {
                // Finite solutions with an infinite error: atol too small for the precision.
                if crate::driver::all_finite(&x_high)? {
                    return Err(SolverError::Invalid(format!(
                        "dpm-adaptive gave up at sigma = {}: its error estimate overflows (atol {:e} is too small for this precision): raise atol",
                        sig(s),
                        p.atol
                    )));
                }
                return Err(SolverError::NonFinite {
                    step: ctx.index,
                    sigma: sig(s),
                });
            }
            if pid.propose(error) {
                x_prev = x_low;
                x = add_step_noise(ctx, x_high, sig(t), sig(s), up * p.s_noise)?;
                s = t;
            } else {
                eps_s = Some(eps);
            }
        }
        Ok(x)
    }
}

impl Sampler for DpmAdaptive {
    fn name(&self) -> &'static str {
        "dpm-adaptive"
    }
    fn step(&self, ctx: &mut StepCtx<'_>, x: Tensor) -> Result<Tensor> {
        ends_only(ctx, x, |ctx, x, start, end| {
            self.integrate(ctx, x, start, end)
        })
    }
}
