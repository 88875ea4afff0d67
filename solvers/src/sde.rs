//! Forward processes in the EDM parameterization (Karras et al. 2022, eq. 4):
//! `x_t = s(t) (x_0 + sigma(t) eps)`, so the marginal is `N(s(t) x_0, s(t)^2 sigma(t)^2 I)`.
//!
//! The probability-flow ODE and the reverse SDE only depend on `sigma(t)` and `s(t)`:
//! drift coefficient `f(t) = s'(t) / s(t)` and diffusion `g(t) = s(t) sqrt(2 sigma'(t) sigma(t))`.
//! With these the Itô SDE `dx = f(t) x dt + g(t) dw` has exactly the marginals above.

use crate::error::{Result, SolverError};

/// A forward diffusion process, described by its noise level `sigma(t)` and scale `s(t)`.
pub trait Sde: Send + Sync {
    /// Short name used in output and errors.
    fn name(&self) -> &'static str;
    /// Noise level of the scaled variable `x / s(t)`.
    fn sigma(&self, t: f64) -> f64;
    /// `d sigma / dt`.
    fn sigma_deriv(&self, t: f64) -> f64;
    /// Inverse of `sigma(t)` on the time range.
    fn sigma_inv(&self, sigma: f64) -> f64;
    /// Scale `s(t)`.
    fn s(&self, t: f64) -> f64;
    /// `d s / dt`.
    fn s_deriv(&self, t: f64) -> f64;
    /// The time interval `(t_min, t_max)` on which the process is defined and sampled.
    fn t_range(&self) -> (f64, f64);

    /// Drift coefficient `f(t)` of the forward SDE `dx = f(t) x dt + g(t) dw`.
    fn drift_coef(&self, t: f64) -> f64 {
        self.s_deriv(t) / self.s(t)
    }
    /// Diffusion coefficient `g(t)`.
    fn diffusion(&self, t: f64) -> f64 {
        self.s(t) * (2.0 * self.sigma_deriv(t) * self.sigma(t)).max(0.0).sqrt()
    }
    /// Forward marginal sample `x_t = s(t) (x0 + sigma(t) eps)` for standard-normal `eps`.
    fn perturb(&self, x0: &tch::Tensor, t: f64, eps: &tch::Tensor) -> tch::Tensor {
        (x0 + eps * self.sigma(t)) * self.s(t)
    }
    /// Drift of the reverse-time SDE (Song et al. 2021, eq. 6), `f(t) x - g(t)^2 score`, where
    /// `score = grad_x log p_t(x)` in the unscaled variable `x`.
    fn reverse_drift(&self, x: &tch::Tensor, t: f64, score: &tch::Tensor) -> tch::Tensor {
        let g = self.diffusion(t);
        x * self.drift_coef(t) - score * (g * g)
    }
    /// Standard deviation of the prior `x_T ~ N(0, prior_std^2 I)` used to start sampling at
    /// noise level `sigma_max`: `s(T) sigma_max`, ignoring the data's own spread, as EDM and
    /// k-diffusion do.
    fn prior_std(&self, sigma_max: f64) -> f64 {
        self.s(self.sigma_inv(sigma_max)) * sigma_max
    }
    /// The default sampling range `(sigma(t_min), sigma(t_max))`. Every process here extends
    /// to any positive sigma, so other ranges are allowed too.
    fn default_sigma_range(&self) -> (f64, f64) {
        let (a, b) = self.t_range();
        (self.sigma(a), self.sigma(b))
    }
    /// The time of a noise level, with sigma = 0 mapped to `t_min` (where samplers denoise).
    fn time_of(&self, sigma: f64) -> f64 {
        if sigma <= 0.0 {
            self.t_range().0
        } else {
            self.sigma_inv(sigma)
        }
    }
    /// Scale at a noise level (1 at sigma = 0 for every process here).
    fn s_of_sigma(&self, sigma: f64) -> f64 {
        if sigma <= 0.0 {
            1.0
        } else {
            self.s(self.sigma_inv(sigma))
        }
    }
}

/// Check that a sigma range is usable: `0 < sigma_min < sigma_max`, both finite.
pub fn check_sigma_range(sigma_min: f64, sigma_max: f64) -> Result<()> {
    if !(sigma_min > 0.0 && sigma_max.is_finite() && sigma_min < sigma_max) {
        return Err(SolverError::SigmaRange {
            sigma_min,
            sigma_max,
        });
    }
    Ok(())
}

/// EDM (Karras et al. 2022): `sigma(t) = t`, `s(t) = 1`.
#[derive(Clone, Debug)]
pub struct Edm {
    pub t_min: f64,
    pub t_max: f64,
}

impl Default for Edm {
    fn default() -> Self {
        Edm {
            t_min: 0.002,
            t_max: 80.0,
        }
    }
}

impl Sde for Edm {
    fn name(&self) -> &'static str {
        "edm"
    }
    fn sigma(&self, t: f64) -> f64 {
        t
    }
    fn sigma_deriv(&self, _t: f64) -> f64 {
        1.0
    }
    fn sigma_inv(&self, sigma: f64) -> f64 {
        sigma
    }
    fn s(&self, _t: f64) -> f64 {
        1.0
    }
    fn s_deriv(&self, _t: f64) -> f64 {
        0.0
    }
    fn t_range(&self) -> (f64, f64) {
        (self.t_min, self.t_max)
    }
}

/// Variance exploding (Song et al. 2021, SMLD): geometric `sigma(t) = sigma_min (sigma_max /
/// sigma_min)^t` on `t in [eps, 1]`, `s(t) = 1`.
#[derive(Clone, Debug)]
pub struct Ve {
    pub sigma_min: f64,
    pub sigma_max: f64,
    pub eps: f64,
}

impl Default for Ve {
    fn default() -> Self {
        Ve {
            sigma_min: 0.01,
            sigma_max: 50.0,
            eps: 1e-5,
        }
    }
}

impl Sde for Ve {
    fn name(&self) -> &'static str {
        "ve"
    }
    fn sigma(&self, t: f64) -> f64 {
        self.sigma_min * (self.sigma_max / self.sigma_min).powf(t)
    }
    fn sigma_deriv(&self, t: f64) -> f64 {
        self.sigma(t) * (self.sigma_max / self.sigma_min).ln()
    }
    fn sigma_inv(&self, sigma: f64) -> f64 {
        (sigma / self.sigma_min).ln() / (self.sigma_max / self.sigma_min).ln()
    }
    fn s(&self, _t: f64) -> f64 {
        1.0
    }
    fn s_deriv(&self, _t: f64) -> f64 {
        0.0
    }
    fn t_range(&self) -> (f64, f64) {
        (self.eps, 1.0)
    }
}

/// Variance preserving with a linear beta schedule (Song et al. 2021; DDPM in the continuum
/// limit): `beta(t) = beta_min + t (beta_max - beta_min)`, `B(t) = int_0^t beta`,
/// `s(t) = exp(-B/2)`, `sigma(t) = sqrt(exp(B) - 1)`.
#[derive(Clone, Debug)]
pub struct VpLinear {
    pub beta_min: f64,
    pub beta_max: f64,
    pub eps: f64,
}

impl Default for VpLinear {
    fn default() -> Self {
        VpLinear {
            beta_min: 0.1,
            beta_max: 20.0,
            eps: 1e-3,
        }
    }
}

impl VpLinear {
    fn beta_d(&self) -> f64 {
        self.beta_max - self.beta_min
    }
    /// `beta(t)`.
    pub fn beta(&self, t: f64) -> f64 {
        self.beta_min + t * self.beta_d()
    }
    /// `B(t) = int_0^t beta(u) du`.
    pub fn integral(&self, t: f64) -> f64 {
        0.5 * self.beta_d() * t * t + self.beta_min * t
    }
    /// Inverse of `B(t)`.
    fn integral_inv(&self, b: f64) -> f64 {
        let bd = self.beta_d();
        if bd.abs() < 1e-300 {
            return b / self.beta_min;
        }
        // 0.5 bd t^2 + beta_min t - b = 0, positive root, in a cancellation-free form.
        2.0 * b / (self.beta_min + (self.beta_min * self.beta_min + 2.0 * bd * b).sqrt())
    }
}

impl Sde for VpLinear {
    fn name(&self) -> &'static str {
        "vp"
    }
    fn sigma(&self, t: f64) -> f64 {
        self.integral(t).exp_m1().sqrt()
    }
    fn sigma_deriv(&self, t: f64) -> f64 {
        let b = self.integral(t);
        0.5 * self.beta(t) * b.exp() / b.exp_m1().sqrt()
    }
    fn sigma_inv(&self, sigma: f64) -> f64 {
        self.integral_inv((sigma * sigma).ln_1p())
    }
    fn s(&self, t: f64) -> f64 {
        (-0.5 * self.integral(t)).exp()
    }
    fn s_deriv(&self, t: f64) -> f64 {
        -0.5 * self.beta(t) * self.s(t)
    }
    fn t_range(&self) -> (f64, f64) {
        (self.eps, 1.0)
    }
}

/// Variance preserving with the cosine schedule of Nichol & Dhariwal (2021):
/// `alpha_bar(t) = f(t) / f(0)`, `f(t) = cos^2(pi/2 (t + s0) / (1 + s0))`, `s(t) = sqrt(alpha_bar)`,
/// `sigma(t) = sqrt(1 / alpha_bar - 1)`. `alpha_bar(1) = 0`, so the range stops at `t_max < 1`.
#[derive(Clone, Debug)]
pub struct VpCosine {
    pub offset: f64,
    pub eps: f64,
    pub t_max: f64,
}

impl Default for VpCosine {
    fn default() -> Self {
        // t_max = 0.9946 stops before alpha_bar(1) = 0, at sigma of about 119.
        VpCosine {
            offset: 0.008,
            eps: 1e-3,
            t_max: 0.9946,
        }
    }
}

impl VpCosine {
    fn angle(&self, t: f64) -> f64 {
        std::f64::consts::FRAC_PI_2 * (t + self.offset) / (1.0 + self.offset)
    }
    /// `alpha_bar(t)`, the squared scale.
    pub fn alpha_bar(&self, t: f64) -> f64 {
        (self.angle(t).cos() / self.angle(0.0).cos()).powi(2)
    }
}

impl Sde for VpCosine {
    fn name(&self) -> &'static str {
        "vp-cosine"
    }
    fn sigma(&self, t: f64) -> f64 {
        // 1/alpha_bar - 1 = (cos^2 a0 - cos^2 a) / cos^2 a = sin(a - a0) sin(a + a0) / cos^2 a.
        let (a, a0) = (self.angle(t), self.angle(0.0));
        ((a - a0).sin() * (a + a0).sin()).sqrt() / a.cos()
    }
    fn sigma_deriv(&self, t: f64) -> f64 {
        // sigma^2 = cos^2 a0 / cos^2 a - 1 -> 2 sigma sigma' = 2 cos^2 a0 tan a / cos^2 a * a'.
        let (a, a0) = (self.angle(t), self.angle(0.0));
        let da = std::f64::consts::FRAC_PI_2 / (1.0 + self.offset);
        a0.cos().powi(2) * a.tan() / a.cos().powi(2) * da / self.sigma(t)
    }
    fn sigma_inv(&self, sigma: f64) -> f64 {
        let a0 = self.angle(0.0);
        let a = (a0.cos() / (1.0 + sigma * sigma).sqrt()).acos();
        a / std::f64::consts::FRAC_PI_2 * (1.0 + self.offset) - self.offset
    }
    fn s(&self, t: f64) -> f64 {
        self.angle(t).cos() / self.angle(0.0).cos()
    }
    fn s_deriv(&self, t: f64) -> f64 {
        let da = std::f64::consts::FRAC_PI_2 / (1.0 + self.offset);
        -self.angle(t).sin() / self.angle(0.0).cos() * da
    }
    fn t_range(&self) -> (f64, f64) {
        (self.eps, self.t_max)
    }
}

/// Sub-VP (Song et al. 2021, eq. 34): same drift as VP, smaller diffusion, marginal
/// `N(exp(-B/2) x0, (1 - exp(-B))^2 I)`: `s(t) = exp(-B/2)`, `sigma(t) = 2 sinh(B/2)`.
#[derive(Clone, Debug, Default)]
pub struct SubVp {
    pub vp: VpLinear,
}

impl Sde for SubVp {
    fn name(&self) -> &'static str {
        "subvp"
    }
    fn sigma(&self, t: f64) -> f64 {
        2.0 * (0.5 * self.vp.integral(t)).sinh()
    }
    fn sigma_deriv(&self, t: f64) -> f64 {
        self.vp.beta(t) * (0.5 * self.vp.integral(t)).cosh()
    }
    fn sigma_inv(&self, sigma: f64) -> f64 {
        self.vp.integral_inv(2.0 * (0.5 * sigma).asinh())
    }
    fn s(&self, t: f64) -> f64 {
        self.vp.s(t)
    }
    fn s_deriv(&self, t: f64) -> f64 {
        self.vp.s_deriv(t)
    }
    fn t_range(&self) -> (f64, f64) {
        self.vp.t_range()
    }
}

/// Rectified flow / flow matching with the linear interpolation path (Liu, Gong & Liu 2022,
/// "Flow Straight and Fast"; Lipman et al. 2022, "Flow Matching for Generative Modeling";
/// Esser et al. 2024, "Scaling Rectified Flow Transformers", Stable Diffusion 3), in diffusers'
/// direction (`FlowMatchEulerDiscreteScheduler`: t = 0 is data, t = 1 noise):
/// `x = (1 - tau) x0 + tau eps` with the interpolation time `tau`, so `s = 1 - tau`,
/// `sigma = tau / (1 - tau)` and `s = 1 / (1 + sigma)`.
///
/// SD3's timestep shift `tau = c t / (1 + (c - 1) t)` (diffusers' `shift`) reparametrizes the
/// time: `sigma(t) = c t / (1 - t)`, `s(t) = 1 / (1 + sigma(t))`. A shift changes where a grid
/// uniform in `t` puts its levels (`sigma` is `c` times the unshifted one), not the marginals at
/// a given sigma. `tau = 1` is sigma = inf, so the range stops at `t_max < 1`.
#[derive(Clone, Debug)]
pub struct Flow {
    pub shift: f64,
    pub t_min: f64,
    pub t_max: f64,
}

impl Default for Flow {
    fn default() -> Self {
        Flow {
            shift: 1.0,
            t_min: 1e-3,
            t_max: 0.999,
        }
    }
}

impl Flow {
    /// The process with SD3's timestep shift `shift` (> 0, finite; 1 is no shift).
    pub fn with_shift(shift: f64) -> Result<Self> {
        if !(shift > 0.0 && shift.is_finite()) {
            return Err(SolverError::Invalid(format!(
                "the flow's shift must be positive and finite, got {}",
                crate::Num(shift)
            )));
        }
        Ok(Flow {
            shift,
            ..Flow::default()
        })
    }
    /// The interpolation time `tau = sigma / (1 + sigma)` of a noise level (`x = (1 - tau) x0
    /// + tau eps`), whatever the shift.
    pub fn tau_of_sigma(sigma: f64) -> f64 {
        sigma / (1.0 + sigma)
    }
}

impl Sde for Flow {
    fn name(&self) -> &'static str {
        "flow"
    }
    fn sigma(&self, t: f64) -> f64 {
        self.shift * t / (1.0 - t)
    }
    fn sigma_deriv(&self, t: f64) -> f64 {
        self.shift / ((1.0 - t) * (1.0 - t))
    }
    fn sigma_inv(&self, sigma: f64) -> f64 {
        sigma / (self.shift + sigma)
    }
    fn s(&self, t: f64) -> f64 {
        // 1 / (1 + c t / (1 - t)) = (1 - t) / (1 - t + c t).
        (1.0 - t) / (1.0 - t + self.shift * t)
    }
    fn s_deriv(&self, t: f64) -> f64 {
        let d = 1.0 - t + self.shift * t;
        -self.shift / (d * d)
    }
    fn t_range(&self) -> (f64, f64) {
        (self.t_min, self.t_max)
    }
}

/// A discrete DDPM beta schedule (diffusers' `beta_schedule`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum BetaSchedule {
    /// `beta_i` linear from `beta_start` to `beta_end` (DDPM).
    #[default]
    Linear,
    /// `sqrt(beta_i)` linear (Latent/Stable Diffusion).
    #[serde(alias = "scaled_linear")]
    ScaledLinear,
    /// Nichol & Dhariwal's cosine schedule (`beta_start`/`beta_end` unused).
    #[serde(alias = "squaredcos_cap_v2")]
    SquaredcosCapV2,
}

/// The discrete DDPM chain (Ho et al. 2020) and its exact place on the VP process.
///
/// `alpha_bar_i = prod_{j<=i} (1 - beta_j)` is the squared scale after `i` steps, so step `i`
/// sits at noise level `sigma_i = sqrt(1 / alpha_bar_i - 1)` and scale `s_i = sqrt(alpha_bar_i)`.
/// With `beta_j = 1 - exp(-(B(t_j) - B(t_{j-1})))` on the grid `t_j = j / T`, the chain's
/// `alpha_bar` equals the continuous VP's `exp(-B(t_j))` exactly.
#[derive(Clone, Debug)]
pub struct DdpmChain {
    pub betas: Vec<f64>,
}

impl DdpmChain {
    /// DDPM's linear schedule: `beta_i` linear from `beta_1` to `beta_T` (1e-4 and 0.02 for T = 1000).
    pub fn linear(steps: usize, beta_1: f64, beta_t: f64) -> Self {
        let betas = (0..steps)
            .map(|i| beta_1 + (beta_t - beta_1) * i as f64 / (steps.max(2) - 1) as f64)
            .collect();
        DdpmChain { betas }
    }
    /// Latent Diffusion's `scaled_linear` schedule (diffusers' name; Stable Diffusion uses
    /// 0.00085 to 0.012 over 1000 steps): `sqrt(beta_i)` linear from `sqrt(beta_1)` to
    /// `sqrt(beta_T)`.
    pub fn scaled_linear(steps: usize, beta_1: f64, beta_t: f64) -> Self {
        let (a, b) = (beta_1.sqrt(), beta_t.sqrt());
        let betas = (0..steps)
            .map(|i| (a + (b - a) * i as f64 / (steps.max(2) - 1) as f64).powi(2))
            .collect();
        DdpmChain { betas }
    }
    /// The cosine schedule of Nichol & Dhariwal (2021, eq. 17), as diffusers'
    /// `squaredcos_cap_v2`: `beta_i = min(1 - abar(i / T) / abar((i - 1) / T), 0.999)` with
    /// `abar(t) = cos^2((t + 0.008) / 1.008 pi / 2)`.
    pub fn squaredcos_cap_v2(steps: usize) -> Self {
        let abar = |t: f64| {
            ((t + 0.008) / 1.008 * std::f64::consts::FRAC_PI_2)
                .cos()
                .powi(2)
        };
        let betas = (0..steps)
            .map(|i| {
                let (t1, t2) = (i as f64 / steps as f64, (i + 1) as f64 / steps as f64);
                (1.0 - abar(t2) / abar(t1)).min(0.999)
            })
            .collect();
        DdpmChain { betas }
    }
    /// The chain of a [`BetaSchedule`] (`beta_start`/`beta_end` unused by the cosine one).
    pub fn from_schedule(
        schedule: BetaSchedule,
        steps: usize,
        beta_start: f64,
        beta_end: f64,
    ) -> Self {
        match schedule {
            BetaSchedule::Linear => DdpmChain::linear(steps, beta_start, beta_end),
            BetaSchedule::ScaledLinear => DdpmChain::scaled_linear(steps, beta_start, beta_end),
            BetaSchedule::SquaredcosCapV2 => DdpmChain::squaredcos_cap_v2(steps),
        }
    }
    /// The chain whose `alpha_bar` matches a continuous VP at `t_j = j / T` exactly.
    pub fn from_vp(vp: &VpLinear, steps: usize) -> Self {
        let t = |j: usize| j as f64 / steps as f64;
        let betas = (1..=steps)
            .map(|j| -(-(vp.integral(t(j)) - vp.integral(t(j - 1)))).exp_m1())
            .collect();
        DdpmChain { betas }
    }
    /// `alpha_bar_i` for `i = 1..=T` (index 0 of the result is step 1).
    pub fn alpha_bars(&self) -> Vec<f64> {
        let mut acc = 1.0;
        self.betas
            .iter()
            .map(|b| {
                acc *= 1.0 - b;
                acc
            })
            .collect()
    }
    /// Noise level of each step, `sqrt(1 / alpha_bar - 1)`.
    pub fn sigmas(&self) -> Vec<f64> {
        self.alpha_bars()
            .iter()
            .map(|a| (1.0 / a - 1.0).sqrt())
            .collect()
    }
}

/// The `alpha_bar` of a noise level under the VP correspondence: `1 / (1 + sigma^2)`.
pub fn alpha_bar_of_sigma(sigma: f64) -> f64 {
    1.0 / (1.0 + sigma * sigma)
}
