//! `edm-ablation`: EDM's general deterministic and stochastic sampler, Karras et al. (2022),
//! Algorithms 1 and 2 with arbitrary `sigma(t)` and `s(t)` and the generalized second-order
//! step of Appendix D.2 (parameter `alpha`), as NVlabs/edm's `ablation_sampler` (`generate.py`)
//! runs it for the paper's Table 1 and Figure 2. The grid chooses the noise levels (edm's
//! "discretization"); this sampler chooses the ODE's time variable (edm's "schedule") and the
//! scaling of `x`, which change the steps between the same levels:
//!
//! - `schedule`: `linear` (`sigma(t) = t`, EDM's choice), `vp` (`sigma(t) = sqrt(exp(beta_d
//!   t^2 / 2 + beta_min t) - 1)`, with `beta_d` and `beta_min` fitted so that `sigma(epsilon_s)`
//!   and `sigma(1)` are the grid's last nonzero and first levels, as edm fits them) or `ve`
//!   (`sigma(t) = sqrt(t)`).
//!   Added here (not in edm): `flow` (`sigma(t) = t / (1 - t)`, the interpolation time of
//!   rectified flow, [`crate::sde::Flow`]).
//! - `scaling`: `none` (`s(t) = 1`) or `vp` (`s(t) = 1 / sqrt(1 + sigma(t)^2)`); added here:
//!   `flow` (`s(t) = 1 / (1 + sigma(t))`). With the `flow` schedule and scaling the ODE is the
//!   rectified flow's `dx/dt = v = (x - D) / t` in `x = (1 - t) x0 + t eps`, and the `heun`
//!   solver is diffusers' `FlowMatchHeunDiscreteScheduler`, `euler` its
//!   `FlowMatchEulerDiscreteScheduler` (which equals `euler` in `x^`, as DDIM does).
//!
//! A step from level `sigma_i` in the unscaled `x = s(t) x^`: churn as [`Churn`] (in `x^`,
//! which is edm's `x_hat = s(t_hat) / s(t_cur) x_cur + ... s(t_hat) S_noise z` divided by
//! `s(t_hat)`), `t_hat = sigma^-1(sigma_hat)`, `t_next = sigma^-1(sigma_{i+1})` (0 at the end),
//! `h = t_next - t_hat` and
//!
//! `d(t, x) = (sigma'/sigma + s'/s) x - sigma' s / sigma D(x / s; sigma)`,
//! `x' = x + alpha h d(t_hat, x)`, `t' = t_hat + alpha h`,
//! `x_next = x + h ((1 - 1/(2 alpha)) d(t_hat, x) + 1/(2 alpha) d(t', x'))` (`heun`),
//! `x_next = x + h d(t_hat, x)` (`euler`, and every solver's last step).
//!
//! At the defaults (`heun`, `alpha = 1`, `linear`, `none`) it is `heun` with churn
//! (`edm-stochastic`); with `euler`, `euler`. The last step is an Euler step to `t = 0` in the
//! chosen variables, which returns `D(x^; sigma_{n-1})` only under the linear schedule without
//! scaling (edm's code, followed here). Evaluations: `2n - 1` (heun), `n` (euler).

use super::edm_stochastic::Churn;
use super::require;
use crate::driver::{Sampler, StepCtx};
use crate::error::{Result, SolverError};
use serde::{Deserialize, Serialize};
use tch::Tensor;

/// edm's `solver`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum OdeSolver {
    Euler,
    #[default]
    Heun,
}

/// edm's `schedule`: the ODE's time variable through `sigma(t)`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Schedule {
    #[default]
    Linear,
    Vp,
    Ve,
    Flow,
}

/// edm's `scaling`: `s(t)`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Scaling {
    #[default]
    None,
    Vp,
    Flow,
}

macro_rules! parse_enum {
    ($ty:ty, $what:literal, $( $name:literal => $v:expr ),+) => {
        impl std::str::FromStr for $ty {
            type Err = SolverError;
            fn from_str(s: &str) -> Result<Self> {
                match s {
                    $( $name => Ok($v), )+
                    _ => Err(SolverError::Invalid(format!(
                        concat!("unknown ", $what, " '{}' (known: {})"),
                        s,
                        [$($name),+].join(", ")
                    ))),
                }
            }
        }
    };
}
parse_enum!(OdeSolver, "solver type", "euler" => OdeSolver::Euler, "heun" => OdeSolver::Heun);
parse_enum!(Schedule, "schedule", "linear" => Schedule::Linear, "vp" => Schedule::Vp, "ve" => Schedule::Ve, "flow" => Schedule::Flow);
parse_enum!(Scaling, "scaling", "none" => Scaling::None, "vp" => Scaling::Vp, "flow" => Scaling::Flow);

fn epsilon_s() -> f64 {
    1e-3
}

/// Parameters of `edm-ablation` (edm's names and defaults; `solver` is `solver_type` here, as
/// `--solver` names the sampler), the keys of its `[[samplers]]` entry.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AblationParams {
    #[serde(default)]
    pub solver_type: OdeSolver,
    /// Position of the second evaluation, a fraction of the step in `t` (Appendix D.2), in
    /// (0, 1]; 1 is Heun's method.
    #[serde(default = "super::one")]
    pub alpha: f64,
    #[serde(default)]
    pub schedule: Schedule,
    #[serde(default)]
    pub scaling: Scaling,
    /// The time of the last nonzero level under the `vp` schedule (edm's `epsilon_s`).
    #[serde(default = "epsilon_s")]
    pub epsilon_s: f64,
    #[serde(default)]
    pub s_churn: f64,
    #[serde(default)]
    pub s_tmin: f64,
    #[serde(default = "super::inf", deserialize_with = "super::inf_if_null")]
    pub s_tmax: f64,
    #[serde(default = "super::one")]
    pub s_noise: f64,
}

impl Default for AblationParams {
    fn default() -> Self {
        AblationParams {
            solver_type: OdeSolver::Heun,
            alpha: 1.0,
            schedule: Schedule::Linear,
            scaling: Scaling::None,
            epsilon_s: epsilon_s(),
            s_churn: 0.0,
            s_tmin: 0.0,
            s_tmax: f64::INFINITY,
            s_noise: 1.0,
        }
    }
}

impl AblationParams {
    pub fn churn(&self) -> Churn {
        Churn {
            s_churn: self.s_churn,
            s_tmin: self.s_tmin,
            s_tmax: self.s_tmax,
            s_noise: self.s_noise,
        }
    }
}

/// `sigma(t)`, `sigma'(t)`, `sigma^-1`, `s(t)`, `s'(t)` of a schedule and scaling.
#[derive(Clone, Copy, Debug)]
struct Ode {
    schedule: Schedule,
    scaling: Scaling,
    beta_d: f64,
    beta_min: f64,
}

impl Ode {
    /// edm's fit of the VP schedule to the grid's range: `sigma(epsilon_s) = sigma_min`,
    /// `sigma(1) = sigma_max`.
    fn new(p: &AblationParams, sigma_min: f64, sigma_max: f64) -> Result<Self> {
        let eps = p.epsilon_s;
        let (lmin, lmax) = (
            (sigma_min * sigma_min).ln_1p(),
            (sigma_max * sigma_max).ln_1p(),
        );
        let beta_d = 2.0 * (lmin / eps - lmax) / (eps - 1.0);
        let beta_min = lmax - 0.5 * beta_d;
        if p.schedule == Schedule::Vp && !(beta_d > 0.0 && beta_d.is_finite()) {
            return Err(SolverError::Invalid(format!(
                "edm-ablation: the vp schedule fitted to sigma {sigma_min} .. {sigma_max} with epsilon_s {eps} has beta_d = {beta_d}, not positive: use a wider sigma range or a smaller epsilon_s"
            )));
        }
        Ok(Ode {
            schedule: p.schedule,
            scaling: p.scaling,
            beta_d,
            beta_min,
        })
    }

    fn sigma(&self, t: f64) -> f64 {
        match self.schedule {
            Schedule::Linear => t,
            Schedule::Ve => t.sqrt(),
            Schedule::Vp => (0.5 * self.beta_d * t * t + self.beta_min * t)
                .exp_m1()
                .sqrt(),
            Schedule::Flow => t / (1.0 - t),
        }
    }

    fn sigma_deriv(&self, t: f64) -> f64 {
        match self.schedule {
            Schedule::Linear => 1.0,
            Schedule::Ve => 0.5 / t.sqrt(),
            Schedule::Vp => {
                let s = self.sigma(t);
                0.5 * (self.beta_min + self.beta_d * t) * (s + 1.0 / s)
            }
            Schedule::Flow => 1.0 / ((1.0 - t) * (1.0 - t)),
        }
    }

    /// `sigma^-1`, with 0 for sigma = 0 (edm appends `t_N = 0`).
    fn sigma_inv(&self, sigma: f64) -> f64 {
        if sigma == 0.0 {
            return 0.0;
        }
        match self.schedule {
            Schedule::Linear => sigma,
            Schedule::Ve => sigma * sigma,
            Schedule::Vp => {
                ((self.beta_min * self.beta_min + 2.0 * self.beta_d * (sigma * sigma).ln_1p())
                    .sqrt()
                    - self.beta_min)
                    / self.beta_d
            }
            Schedule::Flow => sigma / (1.0 + sigma),
        }
    }

    fn s(&self, t: f64) -> f64 {
        match self.scaling {
            Scaling::None => 1.0,
            Scaling::Vp => 1.0 / (1.0 + self.sigma(t).powi(2)).sqrt(),
            Scaling::Flow => 1.0 / (1.0 + self.sigma(t)),
        }
    }

    fn s_deriv(&self, t: f64) -> f64 {
        match self.scaling {
            Scaling::None => 0.0,
            Scaling::Vp => -self.sigma(t) * self.sigma_deriv(t) * self.s(t).powi(3),
            Scaling::Flow => -self.sigma_deriv(t) * self.s(t).powi(2),
        }
    }

    /// `d(t, x) = (sigma'/sigma + s'/s) x - sigma' s / sigma D(x / s; sigma)` (one evaluation).
    fn derivative(&self, ctx: &mut StepCtx<'_>, t: f64, x: &Tensor) -> Result<Tensor> {
        let (sigma, sd, s, s_d) = (
            self.sigma(t),
            self.sigma_deriv(t),
            self.s(t),
            self.s_deriv(t),
        );
        let denoised = ctx.denoise(&(x / s), sigma)?;
        Ok(x * (sd / sigma + s_d / s) - denoised * (sd * s / sigma))
    }
}

#[derive(Clone, Debug)]
pub struct EdmAblation {
    pub p: AblationParams,
    churn: Churn,
}

impl EdmAblation {
    pub fn new(p: AblationParams) -> Result<Self> {
        let churn = p.churn();
        churn.validate()?;
        require(
            "alpha",
            p.alpha,
            p.alpha > 0.0 && p.alpha <= 1.0,
            "must be in (0, 1]",
        )?;
        require(
            "epsilon_s",
            p.epsilon_s,
            p.epsilon_s > 0.0 && p.epsilon_s < 1.0,
            "must be in (0, 1)",
        )?;
        Ok(EdmAblation { p, churn })
    }
}

impl Sampler for EdmAblation {
    fn name(&self) -> &'static str {
        "edm-ablation"
    }
    fn check_grid(&self, sigmas: &[f64]) -> Result<()> {
        if sigmas.len() < 3 && self.p.schedule == Schedule::Vp {
            return Err(SolverError::Invalid(
                "edm-ablation: the vp schedule is fitted to the grid's first and last nonzero levels, so it needs at least 2 steps".into(),
            ));
        }
        Ok(())
    }
    fn step(&self, ctx: &mut StepCtx<'_>, x: Tensor) -> Result<Tensor> {
        let n = ctx.steps();
        self.check_grid(ctx.sigmas)?;
        let (sigma_max, sigma_min) = (ctx.sigmas[0], ctx.sigmas[n.saturating_sub(1)]);
        let ode = Ode::new(&self.p, sigma_min, sigma_max)?;
        let (x_hat, s_hat) = self.churn.apply(ctx, x)?;
        let t_hat = ode.sigma_inv(s_hat);
        let t_next = ode.sigma_inv(ctx.sigma_next());
        let x = x_hat * ode.s(t_hat);
        let h = t_next - t_hat;
        let d = ode.derivative(ctx, t_hat, &x)?;
        let x_next = if self.p.solver_type == OdeSolver::Euler || ctx.is_last() {
            &x + d * h
        } else {
            let alpha = self.p.alpha;
            let t_prime = t_hat + alpha * h;
            let x_prime = &x + &d * (alpha * h);
            let d_prime = ode.derivative(ctx, t_prime, &x_prime)?;
            let w = 1.0 / (2.0 * alpha);
            &x + (d * (1.0 - w) + d_prime * w) * h
        };
        Ok(x_next / ode.s(t_next))
    }
}
