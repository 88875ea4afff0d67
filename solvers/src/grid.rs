//! Step grids: decreasing noise levels `sigma_0 = sigma_max > ... > sigma_{n-1} = sigma_min`,
//! followed by `sigma_n = 0`, as f64 on the CPU. A grid of `n` steps has `n + 1` entries.

use crate::error::{Result, SolverError};
use crate::samplers::check_positive;
use crate::sde::{check_sigma_range, BetaSchedule, DdpmChain, Sde};
use serde::{Deserialize, Serialize};

/// How the `n` nonzero noise levels are placed between `sigma_max` and `sigma_min`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case", deny_unknown_fields)]
pub enum GridKind {
    /// Karras et al. (2022), eq. 5: uniform in `sigma^(1/rho)`.
    Karras {
        #[serde(default = "default_rho")]
        rho: f64,
    },
    /// Uniform in the SDE's time `t` (Song et al. 2021 for VP and VE).
    UniformT {},
    /// Uniform in log-SNR, i.e. in `log sigma` (k-diffusion's `get_sigmas_exponential`).
    LogSnr {},
    /// Polynomial in `t`: uniform in `t^(1/rho)` between `t(sigma_max)` and `t(sigma_min)`
    /// (the Karras placement applied to time; equal to `karras` under the EDM SDE).
    PolyT {
        #[serde(default = "default_rho")]
        rho: f64,
    },
    /// The improved-DDPM discretization of Karras et al. (2022), Table 1, as NVlabs/edm's
    /// `ablation_sampler` (`discretization='iddpm'`) builds it: the `M + 1` levels `u_M = 0`,
    /// `u_{j-1} = sqrt((u_j^2 + 1) / max(abar(j - 1) / abar(j), C_1) - 1)` with
    /// `abar(j) = sin^2(pi j / (2 M (C_2 + 1)))` (the cosine schedule of Nichol & Dhariwal 2021),
    /// those within `[sigma_min, sigma_max]` kept, `n` of them picked at the indices
    /// `round((K - 1) / (n - 1) i)` (ties to even, as torch rounds).
    Iddpm {
        #[serde(default = "default_c_1")]
        c_1: f64,
        #[serde(default = "default_c_2")]
        c_2: f64,
        #[serde(default = "default_m")]
        m: usize,
    },
    /// k-diffusion's `get_sigmas_polyexponential`: `log sigma` moves from `log sigma_max` to
    /// `log sigma_min` as `1 - (1 - i / (n - 1))^rho` (rho 1: `log-snr`; larger rho takes
    /// smaller steps at the low levels).
    PolyExponential {
        #[serde(default = "one")]
        rho: f64,
    },
    /// diffusers' `use_beta_sigmas` (Lee et al. 2024, "Beta Sampling is All You Need"):
    /// `sigma_i = sigma_min + F^-1(1 - i / (n - 1)) (sigma_max - sigma_min)` with `F^-1` the
    /// quantile function of the Beta(alpha, beta) distribution (alpha = beta = 0.6, diffusers'
    /// defaults: more levels near both ends).
    Beta {
        #[serde(default = "point_six")]
        alpha: f64,
        #[serde(default = "point_six")]
        beta: f64,
    },
    /// The "KL-optimal" schedule of Sabour, Fidler & Kreis (2024, "Align Your Steps"), the
    /// tangent law their analysis gives for Euler steps on Gaussian data of unit variance:
    /// uniform in `atan(sigma)`, `sigma_i = tan((1 - f_i) atan(sigma_max) + f_i atan(sigma_min))`
    /// (ComfyUI's `kl_optimal_scheduler`, comfy/samplers.py).
    KlOptimal {},
    /// ComfyUI's `linear_quadratic` (from genmoai's Mochi, `infer.py`): the fractions
    /// `u_i = i c / L` for the first `L` steps (`c` = `threshold_noise`, `L` = `linear_steps`,
    /// `n div 2` by default) and a quadratic in `i` for the rest that reaches `c` at `i = L` and
    /// 1 at `i = n`, applied as ComfyUI applies them, `(1 - u_i)` times the model's top level in
    /// ComfyUI's own sigma: under the flow SDE (any shift) that is the interpolation time
    /// `tau = sigma / (1 + sigma)`, `tau_i = tau(sigma_max) (1 - u_i)`; under the others sigma
    /// itself, `sigma_i = sigma_max (1 - u_i)`. `sigma_min` is not used.
    LinearQuadratic {
        #[serde(default = "threshold_noise")]
        threshold_noise: f64,
        #[serde(default)]
        linear_steps: Option<usize>,
    },
    /// The levels of a discrete DDPM chain at the training timesteps diffusers' schedulers pick
    /// (`timestep_spacing`, `scheduling_euler_discrete.py` and the others): for `n` steps of a
    /// chain of `T`, `leading` takes `j = i (T div n) + steps_offset`, `trailing`
    /// `j = round(T - i T / n) - 1`, `linspace` `j = round(i (T - 1) / (n - 1))` (i = 0..n-1,
    /// from the top), and the level of step `j` is the chain's `sigma_j = sqrt(1 / abar_j - 1)`.
    /// `sigma_min`/`sigma_max` are not used: the chain sets the levels (a model card's chain on
    /// the command line, see docs/models.md).
    Timesteps {
        spacing: Spacing,
        #[serde(default)]
        steps_offset: usize,
        #[serde(default)]
        schedule: BetaSchedule,
        #[serde(default = "beta_start")]
        beta_start: f64,
        #[serde(default = "beta_end")]
        beta_end: f64,
        #[serde(default = "default_m")]
        timesteps: usize,
        /// `comfy-beta` only: the Beta distribution's parameters (ComfyUI's
        /// `BetaSamplingScheduler` node; 0.6 each, its `beta` scheduler's, when left out).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        alpha: Option<f64>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        beta: Option<f64>,
    },
    /// Explicit levels: `sigmas` holds one or more decreasing lists of nonzero levels, each the
    /// grid of as many steps as it has levels (0 is appended). A grid of `n` steps takes the
    /// list of length `n`; where there is a single list and it has another length, the list is
    /// interpolated log-linearly over its positions (Align Your Steps' `loglinear_interp`,
    /// Sabour et al. 2024, as ComfyUI's `AlignYourStepsScheduler` applies it). `sigma_min` and
    /// `sigma_max` are not used. `scoreflow optimize-grid` writes GITS grids in this form.
    Levels { sigmas: Vec<Vec<f64>> },
    /// Align Your Steps (Sabour, Fidler & Kreis 2024): the published 10-step levels of a model
    /// family ([`AysModel`]), stretched to `n` steps as ComfyUI's `AlignYourStepsScheduler`
    /// (comfy_extras/nodes_align_your_steps.py) does: the 11 listed levels interpolated
    /// log-linearly to `n + 1` ([`loglinear`]), the last of them replaced by 0 (at 10 steps the
    /// list without its lowest level). `sigma_min` and `sigma_max` are not used.
    Ays {
        #[serde(default)]
        model: AysModel,
    },
    /// GITS (Chen et al. 2024): the levels chosen for the model by dynamic programming over a
    /// teacher's trajectories (see [`crate::gits`]). It needs the model, so [`sigmas`] cannot
    /// build it; experiments and commands solve it with [`crate::gits::GitsParams::solve`].
    Gits(crate::gits::GitsParams),
    /// OSS (Pei, Hu & Gu 2025): the levels chosen for the model by dynamic programming over the
    /// student's own Euler steps along a teacher's trajectories (see [`crate::oss`]); solved
    /// where the model is known, as `Gits`.
    Oss(crate::oss::OssParams),
}

/// The model families Align Your Steps published levels for ([`GridKind::Ays`]): the 11 levels
/// of a 10-step grid, from the NVIDIA project page's how-to
/// (research.nvidia.com/labs/toronto-ai/AlignYourSteps/howto.html) as ComfyUI lists them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AysModel {
    /// Stable Diffusion 1.x (its discrete chain's levels, 14.61 down to 0.029).
    #[default]
    Sd1,
    /// Stable Diffusion XL (the same chain, other levels between).
    Sdxl,
    /// Stable Video Diffusion (EDM levels, 700 down to 0.002).
    Svd,
}

impl AysModel {
    /// The 11 published levels of the 10-step grid, the last the model's lowest level.
    pub fn levels(self) -> [f64; 11] {
        match self {
            AysModel::Sd1 => [
                14.6146412293,
                6.4745760956,
                3.8636745985,
                2.6946151520,
                1.8841921177,
                1.3943805092,
                0.9642583904,
                0.6523686016,
                0.3977456272,
                0.1515232662,
                0.0291671582,
            ],
            AysModel::Sdxl => [
                14.6146412293,
                6.3184485287,
                3.7681790315,
                2.1811480769,
                1.3405244945,
                0.8620721141,
                0.5550693289,
                0.3798540708,
                0.2332364134,
                0.1114188177,
                0.0291671582,
            ],
            AysModel::Svd => [
                700.0, 54.5, 15.886, 7.977, 4.248, 1.789, 0.981, 0.403, 0.173, 0.034, 0.002,
            ],
        }
    }
}

/// diffusers' `timestep_spacing` (see [`GridKind::Timesteps`]), and ComfyUI's schedulers that
/// read the chain (comfy/samplers.py, on its `ModelSamplingDiscrete`: the chain's levels as a
/// table `s_0 .. s_{T-1}`, and `sigma(t)` at a fractional timestep `t` interpolating `log s`
/// between `floor(t)` and `ceil(t)`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Spacing {
    Leading,
    Trailing,
    Linspace,
    /// ComfyUI's `normal`: `sigma(t)` at `n` timesteps uniform from `T - 1` to 0 (k-diffusion's
    /// `DiscreteSchedule.get_sigmas`, the default of its discrete-model wrappers).
    ComfyNormal,
    /// ComfyUI's `sgm_uniform`: `sigma(t)` at the first `n` of `n + 1` timesteps uniform from
    /// `T - 1` to 0.
    ComfySgmUniform,
    /// ComfyUI's `simple`: the table's levels at `T - 1 - floor(i T / n)`, `i = 0 .. n - 1`.
    ComfySimple,
    /// ComfyUI's `ddim_uniform`: the table's levels at `1, 1 + k, 1 + 2k, ...` below `T`
    /// (`k = T div n`), from the top; a step count for which these are not `n` levels is an
    /// error (ComfyUI runs the other number of steps).
    ComfyDdimUniform,
    /// ComfyUI's `beta` (after Lee et al. 2024): the table's levels at the timesteps
    /// `round((T - 1) F^-1(1 - i / n))`, `i = 0 .. n - 1` (F the Beta(alpha, beta)
    /// distribution, 0.6 and 0.6 unless the grid sets them as ComfyUI's `BetaSamplingScheduler`
    /// node does,
    /// rounding half to even as numpy), a timestep equal to the one before it dropped; a step
    /// count that loses a level so is an error (ComfyUI runs fewer steps).
    ComfyBeta,
}

impl Spacing {
    /// The name in a config (`leading`, ..., `comfy-ddim-uniform`).
    pub fn name(self) -> &'static str {
        match self {
            Spacing::Leading => "leading",
            Spacing::Trailing => "trailing",
            Spacing::Linspace => "linspace",
            Spacing::ComfyNormal => "comfy-normal",
            Spacing::ComfySgmUniform => "comfy-sgm-uniform",
            Spacing::ComfySimple => "comfy-simple",
            Spacing::ComfyDdimUniform => "comfy-ddim-uniform",
            Spacing::ComfyBeta => "comfy-beta",
        }
    }
    /// Whether this is one of ComfyUI's schedulers (not a diffusers timestep spacing).
    pub fn is_comfy(self) -> bool {
        !matches!(
            self,
            Spacing::Leading | Spacing::Trailing | Spacing::Linspace
        )
    }
}

/// The level of a chain at a fractional timestep `t` in `[0, T - 1]`, as ComfyUI's
/// `ModelSamplingDiscrete.sigma` (and k-diffusion's `DiscreteSchedule.t_to_sigma`) take it:
/// `exp((1 - w) log s_floor(t) + w log s_ceil(t))`, `w = t - floor(t)`.
pub fn chain_sigma_at(chain: &[f64], t: f64) -> f64 {
    let t = t.clamp(0.0, (chain.len() - 1) as f64);
    let (lo, hi) = (t.floor() as usize, t.ceil() as usize);
    let w = t - t.floor();
    ((1.0 - w) * chain[lo].ln() + w * chain[hi].ln()).exp()
}

/// The `n` nonzero levels of one of ComfyUI's schedulers ([`Spacing::is_comfy`]) on the
/// chain's levels `chain` (`s_0 .. s_{T-1}`, increasing); `(alpha, beta)` shape `comfy-beta`'s
/// distribution (ComfyUI's default is `(0.6, 0.6)`).
pub fn comfy_levels(
    spacing: Spacing,
    n: usize,
    chain: &[f64],
    (alpha, beta): (f64, f64),
) -> Result<Vec<f64>> {
    let t = chain.len();
    let top = (t - 1) as f64;
    // ComfyUI ends these grids without a 0 where the chain's lowest level is within 1e-5 of 0
    // (a zero-terminal-SNR chain); every grid here ends in 0.
    if matches!(spacing, Spacing::ComfyNormal | Spacing::ComfyDdimUniform) {
        let low = if spacing == Spacing::ComfyNormal {
            chain[0]
        } else {
            chain[1]
        };
        if low <= 1e-5 {
            return Err(SolverError::Grid(format!(
                "{}: the chain's level {} is within 1e-5 of 0, where ComfyUI ends the grid without a final 0",
                spacing.name(),
                crate::Num(low)
            )));
        }
    }
    Ok(match spacing {
        Spacing::ComfyNormal => (0..n)
            .map(|i| {
                let f = if n > 1 {
                    i as f64 / (n - 1) as f64
                } else {
                    0.0
                };
                chain_sigma_at(chain, top * (1.0 - f))
            })
            .collect(),
        Spacing::ComfySgmUniform => (0..n)
            .map(|i| chain_sigma_at(chain, top * (1.0 - i as f64 / n as f64)))
            .collect(),
        Spacing::ComfySimple => {
            let ss = t as f64 / n as f64;
            (0..n)
                .map(|x| chain[t - 1 - (x as f64 * ss) as usize])
                .collect()
        }
        Spacing::ComfyDdimUniform => {
            let ss = (t / n).max(1);
            let idx: Vec<usize> = (1..t).step_by(ss).collect();
            if idx.len() != n {
                let agree: Vec<String> = (1..=t.min(60))
                    .filter(|&m| (1..t).step_by((t / m).max(1)).count() == m)
                    .map(|m| m.to_string())
                    .collect();
                return Err(SolverError::Grid(format!(
                    "comfy-ddim-uniform: ComfyUI's ddim_uniform takes {} steps when asked for {n} on a chain of {t} (a timestep every {ss} from 1); step counts it keeps (up to 60): {}",
                    idx.len(),
                    agree.join(", ")
                )));
            }
            idx.iter().rev().map(|&j| chain[j]).collect()
        }
        Spacing::ComfyBeta => {
            let j = |n: usize| -> Vec<usize> {
                let mut out: Vec<usize> = Vec::with_capacity(n);
                // numpy's linspace(0, 1, n, endpoint=False): i * (1 / n).
                let step = 1.0 / n as f64;
                for i in 0..n {
                    let p = 1.0 - i as f64 * step;
                    // Where the quantile times T - 1 lands on a half step, the last bit of the
                    // quantile decides the rounding, so scipy's arithmetic is followed where it
                    // is known: its closed forms where a parameter is 1 (Beta(a, 1) has the
                    // quantile p^(1/a), Beta(1, b) 1 - (1 - p)^(1/b)), and at the median of
                    // ComfyUI's default Beta(0.6, 0.6), where scipy's value is an ulp above 1/2
                    // (statrs' an ulp below).
                    let q = if alpha == 1.0 && beta == 1.0 {
                        p
                    } else if beta == 1.0 {
                        p.powf(1.0 / alpha)
                    } else if alpha == 1.0 {
                        1.0 - (1.0 - p).powf(1.0 / beta)
                    } else if p == 0.5 && alpha == 0.6 && beta == 0.6 {
                        0.5
                    } else {
                        statrs::function::beta::inv_beta_reg(alpha, beta, p)
                    };
                    let j = (q * top).round_ties_even() as usize;
                    if out.last() != Some(&j) {
                        out.push(j);
                    }
                }
                out
            };
            let idx = j(n);
            if idx.len() != n {
                return Err(SolverError::Grid(format!(
                    "comfy-beta: ComfyUI's beta scheduler takes {} steps when asked for {n} on a chain of {t} (two of its rounded timesteps coincide); it keeps every step count up to {}",
                    idx.len(),
                    (1..=n).take_while(|&m| j(m).len() == m).last().unwrap_or(0)
                )));
            }
            idx.iter().map(|&j| chain[j]).collect()
        }
        _ => {
            return Err(SolverError::Grid(format!(
                "{} is a diffusers spacing, not one of ComfyUI's schedulers",
                spacing.name()
            )))
        }
    })
}

fn beta_start() -> f64 {
    1e-4
}
fn beta_end() -> f64 {
    0.02
}

/// The training steps `j` (descending) of [`GridKind::Timesteps`]: diffusers'
/// `set_timesteps` for `n` steps of a chain of `t` (rounding half to even, as numpy). Empty
/// for ComfyUI's schedulers, whose levels [`comfy_levels`] gives (some at fractional steps).
pub fn spaced_timesteps(spacing: Spacing, n: usize, t: usize, offset: usize) -> Vec<i64> {
    let mut j: Vec<i64> = match spacing {
        Spacing::ComfyNormal
        | Spacing::ComfySgmUniform
        | Spacing::ComfySimple
        | Spacing::ComfyDdimUniform
        | Spacing::ComfyBeta => return Vec::new(),
        Spacing::Leading => (0..n)
            .map(|i| (i * (t / n.max(1)) + offset) as i64)
            .collect(),
        // numpy's arithmetic, so that values near .5 round as diffusers' do: `np.arange(T, 0,
        // -T / n)` fills `T + i d` with `d = (T - T / n) - T`; `np.linspace(0, T - 1, n)` is
        // `i ((T - 1) / (n - 1))` with the last value exactly `T - 1`.
        Spacing::Trailing => {
            let (tf, ratio) = (t as f64, t as f64 / n as f64);
            let d = (tf - ratio) - tf;
            (0..n)
                .map(|i| (tf + i as f64 * d).round_ties_even() as i64 - 1)
                .collect()
        }
        Spacing::Linspace => {
            let step = if n > 1 {
                (t - 1) as f64 / (n - 1) as f64
            } else {
                0.0
            };
            (0..n)
                .map(|i| {
                    if n > 1 && i == n - 1 {
                        (t - 1) as i64
                    } else {
                        (i as f64 * step).round_ties_even() as i64
                    }
                })
                .collect()
        }
    };
    j.sort_unstable_by(|a, b| b.cmp(a));
    j
}

fn one() -> f64 {
    1.0
}
fn threshold_noise() -> f64 {
    0.025
}

/// ComfyUI's `linear_quadratic_schedule` before its `1 - u` and scaling: the `n + 1` values
/// `u_0 = 0 .. u_n = 1`.
pub fn linear_quadratic_u(
    n: usize,
    threshold_noise: f64,
    linear_steps: Option<usize>,
) -> Result<Vec<f64>> {
    if n == 1 {
        return Ok(vec![0.0, 1.0]);
    }
    let l = linear_steps.unwrap_or(n / 2);
    if !(1..n).contains(&l) {
        return Err(SolverError::Grid(format!(
            "linear-quadratic: linear_steps must be 1 to {} for {n} steps, got {l}",
            n - 1
        )));
    }
    if !(threshold_noise > 0.0 && threshold_noise < 1.0) {
        return Err(SolverError::Parameter {
            name: "threshold_noise",
            value: threshold_noise,
            why: "must be in (0, 1)",
        });
    }
    let (lf, nf) = (l as f64, n as f64);
    let q = nf - lf;
    let diff = lf - threshold_noise * nf;
    let quad = diff / (lf * q * q);
    let lin = threshold_noise / lf - 2.0 * diff / (q * q);
    let cst = quad * lf * lf;
    let mut u: Vec<f64> = (0..l).map(|i| i as f64 * threshold_noise / lf).collect();
    u.extend((l..n).map(|i| {
        let i = i as f64;
        quad * i * i + lin * i + cst
    }));
    u.push(1.0);
    Ok(u)
}

/// A Beta distribution's parameter for the `beta` and `comfy-beta` grids: 1e-6 to 50 (ComfyUI's
/// node takes 0 to 50; outside this statrs' quantile search fails or does not end).
fn check_beta_shape(name: &'static str, v: f64) -> Result<()> {
    if !(1e-6..=50.0).contains(&v) {
        return Err(SolverError::Parameter {
            name,
            value: v,
            why: "must be in [1e-6, 50]",
        });
    }
    Ok(())
}

fn point_six() -> f64 {
    0.6
}

fn default_rho() -> f64 {
    7.0
}
fn default_c_1() -> f64 {
    0.001
}
fn default_c_2() -> f64 {
    0.008
}
fn default_m() -> usize {
    1000
}

/// The largest `M` of the iddpm grid (its levels are computed one by one).
pub const MAX_IDDPM_M: usize = 10_000_000;

/// The iddpm levels (see [`GridKind::Iddpm`]) for `n` steps.
fn iddpm_levels(
    n: usize,
    sigma_min: f64,
    sigma_max: f64,
    c_1: f64,
    c_2: f64,
    m: usize,
) -> Result<Vec<f64>> {
    let bad = |name, value: f64, why| Err(SolverError::Parameter { name, value, why });
    if !(c_1 > 0.0 && c_1 <= 1.0) {
        return bad("c_1", c_1, "must be in (0, 1]");
    }
    if !(c_2 >= 0.0 && c_2.is_finite()) {
        return bad("c_2", c_2, "must be finite and >= 0");
    }
    if !(1..=MAX_IDDPM_M).contains(&m) {
        return bad("m", m as f64, "must be 1 to 10,000,000");
    }
    let abar = |j: usize| {
        (0.5 * std::f64::consts::PI * j as f64 / m as f64 / (c_2 + 1.0))
            .sin()
            .powi(2)
    };
    let mut u = vec![0.0f64; m + 1];
    for j in (1..=m).rev() {
        u[j - 1] = ((u[j] * u[j] + 1.0) / (abar(j - 1) / abar(j)).max(c_1) - 1.0).sqrt();
    }
    let kept: Vec<f64> = u
        .into_iter()
        .filter(|v| *v >= sigma_min && *v <= sigma_max)
        .collect();
    let k = kept.len();
    if n > k {
        return Err(SolverError::Grid(format!(
            "the iddpm discretization (M = {m}) has {k} levels in [{}, {}]: at most {k} steps",
            crate::Num(sigma_min),
            crate::Num(sigma_max)
        )));
    }
    let ratio = if n > 1 {
        (k - 1) as f64 / (n - 1) as f64
    } else {
        0.0
    };
    Ok((0..n)
        .map(|i| kept[(ratio * i as f64).round_ties_even() as usize])
        .collect())
}

impl Default for GridKind {
    fn default() -> Self {
        GridKind::Karras { rho: 7.0 }
    }
}

impl GridKind {
    /// The name of a placement that is chosen for a model (`gits`, `oss`): solved where the
    /// model is known, not by [`sigmas`]. `None` for the others.
    pub fn chosen_for_model(&self) -> Option<&'static str> {
        match self {
            GridKind::Gits(_) => Some("gits"),
            GridKind::Oss(_) => Some("oss"),
            _ => None,
        }
    }

    /// Parse a command-line name: `karras`, `uniform-t`, `log-snr`, `poly-t`, `iddpm`,
    /// `poly-exponential`, `beta`, `kl-optimal`, `ays` (`ays-sd1`), `ays-sdxl`, `ays-svd`, `ddpm-*` (their default parameters; `rho`, where given, for the grids
    /// that have one).
    pub fn from_name(name: &str, rho: Option<f64>) -> Result<Self> {
        if rho.is_some() && !matches!(name, "karras" | "poly-t" | "poly-exponential") {
            return Err(SolverError::Grid(format!(
                "--rho applies to the karras, poly-t and poly-exponential grids, not {name}"
            )));
        }
        Ok(match name {
            "karras" => GridKind::Karras {
                rho: rho.unwrap_or_else(default_rho),
            },
            "uniform-t" => GridKind::UniformT {},
            "log-snr" => GridKind::LogSnr {},
            "poly-t" => GridKind::PolyT {
                rho: rho.unwrap_or_else(default_rho),
            },
            "poly-exponential" => GridKind::PolyExponential {
                rho: rho.unwrap_or_else(one),
            },
            "beta" => GridKind::Beta {
                alpha: point_six(),
                beta: point_six(),
            },
"kl-optimal" => GridKind::KlOptimal {},
            "ays" | "ays-sd1" => GridKind::Ays {
                model: AysModel::Sd1,
            },
            "ays-sdxl" => GridKind::Ays {
                model: AysModel::Sdxl,
            },
            "ays-svd" => GridKind::Ays {
                model: AysModel::Svd,
            },
            "linear-quadratic" => GridKind::LinearQuadratic {
                threshold_noise: threshold_noise(),
                linear_steps: None,
            },
            "ddpm-leading" | "ddpm-trailing" | "ddpm-linspace" | "comfy-normal"
            | "comfy-sgm-uniform" | "comfy-simple" | "comfy-ddim-uniform" | "comfy-beta" => GridKind::Timesteps {
                spacing: match name {
                    "ddpm-leading" => Spacing::Leading,
                    "ddpm-trailing" => Spacing::Trailing,
                    "ddpm-linspace" => Spacing::Linspace,
                    "comfy-normal" => Spacing::ComfyNormal,
                    "comfy-sgm-uniform" => Spacing::ComfySgmUniform,
                    "comfy-simple" => Spacing::ComfySimple,
                    "comfy-ddim-uniform" => Spacing::ComfyDdimUniform,
                    _ => Spacing::ComfyBeta,
                },
                steps_offset: 0,
                schedule: BetaSchedule::Linear,
                beta_start: beta_start(),
                beta_end: beta_end(),
                timesteps: default_m(),
                alpha: None,
                beta: None,
            },
            "iddpm" => GridKind::Iddpm {
                c_1: default_c_1(),
                c_2: default_c_2(),
                m: default_m(),
            },
            other => {
                return Err(SolverError::Grid(format!(
                    "unknown grid '{other}' (known: karras, uniform-t, log-snr, poly-t, iddpm, poly-exponential, beta, kl-optimal, ays, ays-sdxl, ays-svd, linear-quadratic, ddpm-leading, ddpm-trailing, ddpm-linspace, comfy-normal, comfy-sgm-uniform, comfy-simple, comfy-ddim-uniform, comfy-beta)"
                )))
            }
        })
    }
}

/// The `n` nonzero levels of a [`GridKind::Levels`] placement.
fn levels_for(sets: &[Vec<f64>], n: usize) -> Result<Vec<f64>> {
    if sets.is_empty() {
        return Err(SolverError::Grid("levels: sigmas holds no list".into()));
    }
    for (k, set) in sets.iter().enumerate() {
        if set.is_empty() {
            return Err(SolverError::Grid(format!("levels: list {k} is empty")));
        }
        for (i, w) in set.windows(2).enumerate() {
            if !(w[1] < w[0]) {
                return Err(SolverError::Grid(format!(
                    "levels: list {k} must decrease, but level {} ({}) is not below level {i} ({})",
                    i + 1,
                    crate::Num(w[1]),
                    crate::Num(w[0])
                )));
            }
        }
        if let Some(bad) = set.iter().find(|v| !(v.is_finite() && **v > 0.0)) {
            return Err(SolverError::Grid(format!(
                "levels: list {k} has level {}, not positive and finite (0 is appended, not listed)",
                crate::Num(*bad)
            )));
        }
    }
    // Two lists of one length would leave it to the order which grid runs.
    for (k, set) in sets.iter().enumerate() {
        if let Some(j) = sets[..k].iter().position(|s| s.len() == set.len()) {
            return Err(SolverError::Grid(format!(
                "levels: lists {j} and {k} both have {} levels; give one list per step count",
                set.len()
            )));
        }
    }
    if let Some(set) = sets.iter().find(|s| s.len() == n) {
        return Ok(set.clone());
    }
    if sets.len() > 1 {
        let have: Vec<String> = sets.iter().map(|s| s.len().to_string()).collect();
        return Err(SolverError::Grid(format!(
            "levels: no list of {n} levels (the lists have {}); give one list to interpolate, or a list for {n} steps",
            have.join(", ")
        )));
    }
    Ok(loglinear(&sets[0], n))
}

/// Interpolate the decreasing positive levels `v` to `n` levels, linearly in `log sigma` over
/// equally spaced positions (the ends are kept).
pub fn loglinear(v: &[f64], n: usize) -> Vec<f64> {
    let m = v.len();
    if m == n {
        return v.to_vec();
    }
    if m == 1 || n == 1 {
        return vec![v[0]; n];
    }
    (0..n)
        .map(|i| {
            let p = frac(i, n) * (m - 1) as f64;
            let k = (p.floor() as usize).min(m - 2);
            let f = p - k as f64;
            ((1.0 - f) * v[k].ln() + f * v[k + 1].ln()).exp()
        })
        .collect()
}

/// Interpolation fraction `i / (n - 1)`, 0 for a single step.
fn frac(i: usize, n: usize) -> f64 {
    if n <= 1 {
        0.0
    } else {
        i as f64 / (n - 1) as f64
    }
}

/// Where a partial run starts: SDEdit (Meng et al. 2022, "SDEdit: Guided Image Synthesis and
/// Editing with Stochastic Differential Equations"), image-to-image sampling, starts from data
/// noised to a level partway down the grid and samples from there. The level is set in one of
/// the two conventions users meet.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Partial {
    /// diffusers' image-to-image `strength` in (0, 1] (`get_timesteps` of its img2img
    /// pipelines): of the grid of `n` steps, the last `min(floor(n s), n)` run, from the level
    /// where they start.
    Strength(f64),
    /// ComfyUI's `denoise` in (0, 1] (`KSampler.set_steps`, comfy/samplers.py): the grid of
    /// `floor(n / d)` steps, of which the last `n` run; above 0.9999, the grid of `n` steps.
    Denoise(f64),
}

impl Partial {
    /// The name of its flag and config key (`strength`, `denoise`) and its value.
    pub fn name_value(self) -> (&'static str, f64) {
        match self {
            Partial::Strength(s) => ("strength", s),
            Partial::Denoise(d) => ("denoise", d),
        }
    }

    /// The step count of the grid to build for a run of `steps` steps (before [`Self::tail`]).
    pub fn grid_steps(self, steps: usize) -> Result<usize> {
        let (name, v) = self.name_value();
        if !(v > 0.0 && v <= 1.0) {
            return Err(SolverError::Parameter {
                name,
                value: v,
                why: "must be in (0, 1]",
            });
        }
        self.runs(steps)?;
        Ok(match self {
            Partial::Strength(_) => steps,
            Partial::Denoise(d) if d > 0.9999 => steps,
            Partial::Denoise(d) => {
                let total = (steps as f64 / d).floor();
                if total > MAX_STEPS as f64 {
                    return Err(SolverError::Grid(format!(
                        "denoise {} with {steps} steps asks for a grid of {} steps, more than {MAX_STEPS}",
                        crate::Num(d),
                        crate::Num(total)
                    )));
                }
                total as usize
            }
        })
    }

    /// The levels that run, 0 last: the tail of `sigmas`, the grid of [`Self::grid_steps`]`(steps)`
    /// steps.
    pub fn tail(self, sigmas: &[f64], steps: usize) -> Result<Vec<f64>> {
        let grid_steps = sigmas.len() - 1;
        let run = self.runs(steps)?.min(grid_steps);
        Ok(sigmas[grid_steps - run..].to_vec())
    }

    /// How many steps run for `steps` steps: `min(floor(n s), n)` for a strength (none is an
    /// error), `n` for a denoise.
    fn runs(self, steps: usize) -> Result<usize> {
        match self {
            Partial::Strength(s) => match ((steps as f64 * s).floor() as usize).min(steps) {
                0 => Err(SolverError::Grid(format!(
                    "strength {} with {steps} steps runs no step (floor({steps} x {}) = 0): raise the strength or the step count",
                    crate::Num(s),
                    crate::Num(s)
                ))),
                run => Ok(run),
            },
            Partial::Denoise(_) => Ok(steps),
        }
    }
}

/// The most steps a grid may have (a million: far beyond convergence for any sampler here, and
/// a bound that turns a mistyped count into an error rather than an allocation failure).
pub const MAX_STEPS: usize = 1_000_000;

/// ComfyUI's KSampler rule for its samplers `dpm_2`, `dpm_2_ancestral`, `uni_pc` and
/// `uni_pc_bh2` (`DISCARD_PENULTIMATE_SIGMA_SAMPLERS`, comfy/samplers.py): the placement's grid
/// of `steps + 1` steps without its last nonzero level, so that `steps` steps run and the last
/// leaves for 0 from one level higher. Placements that list their levels per step count
/// (`levels` with several lists, `gits`, `oss`) have no grid of another count to take it
/// from, and are an error.
pub fn sigmas_discarding_penultimate(
    kind: &GridKind,
    steps: usize,
    sigma_min: f64,
    sigma_max: f64,
    sde: &dyn Sde,
) -> Result<Vec<f64>> {
    check_discard_penultimate(kind)?;
    if steps == 0 {
        return Err(SolverError::ZeroSteps(steps));
    }
    let mut s = sigmas(kind, steps + 1, sigma_min, sigma_max, sde).map_err(|e| {
        SolverError::Grid(format!(
            "{e} (discard_penultimate takes the grid of {} steps and drops its last level above 0)",
            steps + 1
        ))
    })?;
    s.remove(s.len() - 2);
    Ok(s)
}

/// Whether [`sigmas_discarding_penultimate`] applies to the placement.
pub fn check_discard_penultimate(kind: &GridKind) -> Result<()> {
    let listed = match kind {
        // One list is interpolated to any count; several are one per count.
        GridKind::Levels { sigmas } if sigmas.len() == 1 => return Ok(()),
        GridKind::Levels { .. } => "levels",
        GridKind::Gits(_) => "gits",
        GridKind::Oss(_) => "oss",
        _ => return Ok(()),
    };
    Err(SolverError::Grid(format!(
        "discard_penultimate takes a placement's grid of one step more, and the {listed} placement lists its levels per step count: use it with a placement computed for any count"
    )))
}

/// Build a grid of `steps` steps: `steps + 1` noise levels ending in 0.
pub fn sigmas(
    kind: &GridKind,
    steps: usize,
    sigma_min: f64,
    sigma_max: f64,
    sde: &dyn Sde,
) -> Result<Vec<f64>> {
    if steps == 0 {
        return Err(SolverError::ZeroSteps(steps));
    }
    if steps > MAX_STEPS {
        return Err(SolverError::Grid(format!(
            "steps = {steps} is more than {MAX_STEPS}, the most a grid may have"
        )));
    }
    check_sigma_range(sigma_min, sigma_max)?;
    let n = steps;
    let mut out: Vec<f64> = match kind {
        GridKind::Karras { rho } | GridKind::PolyT { rho } => {
            check_positive("rho", *rho)?;
            let (lo, hi, in_t) = match kind {
                GridKind::Karras { .. } => (sigma_min, sigma_max, false),
                _ => (sde.sigma_inv(sigma_min), sde.sigma_inv(sigma_max), true),
            };
            if in_t && !(lo >= 0.0) {
                return Err(SolverError::Grid(format!(
                    "poly-t needs sigma_min at or above sigma(0) = {} of the {} SDE (sigma_min {sigma_min} is at t = {lo})",
                    sde.sigma(0.0),
                    sde.name()
                )));
            }
            let (a, b) = (hi.powf(1.0 / rho), lo.powf(1.0 / rho));
            (0..n)
                .map(|i| {
                    let v = (a + frac(i, n) * (b - a)).powf(*rho);
                    if in_t {
                        sde.sigma(v)
                    } else {
                        v
                    }
                })
                .collect()
        }
        GridKind::UniformT {} => {
            let (t_lo, t_hi) = (sde.sigma_inv(sigma_min), sde.sigma_inv(sigma_max));
            (0..n)
                .map(|i| sde.sigma(t_hi + frac(i, n) * (t_lo - t_hi)))
                .collect()
        }
        GridKind::LogSnr {} => {
            let (a, b) = (sigma_max.ln(), sigma_min.ln());
            (0..n).map(|i| (a + frac(i, n) * (b - a)).exp()).collect()
        }
        GridKind::Iddpm { c_1, c_2, m } => iddpm_levels(n, sigma_min, sigma_max, *c_1, *c_2, *m)?,
        GridKind::PolyExponential { rho } => {
            check_positive("rho", *rho)?;
            let (lo, hi) = (sigma_min.ln(), sigma_max.ln());
            (0..n)
                .map(|i| ((1.0 - frac(i, n)).powf(*rho) * (hi - lo) + lo).exp())
                .collect()
        }
        GridKind::Beta { alpha, beta } => {
            for (name, v) in [("alpha", *alpha), ("beta", *beta)] {
                check_beta_shape(name, v)?;
            }
            (0..n)
                .map(|i| {
                    let q = statrs::function::beta::inv_beta_reg(*alpha, *beta, 1.0 - frac(i, n));
                    sigma_min + q * (sigma_max - sigma_min)
                })
                .collect()
        }
        GridKind::KlOptimal {} => {
            // In the complementary angle, atan(1 / sigma) = pi/2 - atan(sigma), which keeps
            // its precision for large sigma (where atan(sigma) is within an ulp of pi/2).
            let (a, b) = ((1.0 / sigma_max).atan(), (1.0 / sigma_min).atan());
            (0..n)
                .map(|i| 1.0 / (a + frac(i, n) * (b - a)).tan())
                .collect()
        }
        GridKind::LinearQuadratic {
            threshold_noise,
            linear_steps,
        } => {
            let u = linear_quadratic_u(n, *threshold_noise, *linear_steps)?;
            if sde.name() == "flow" {
                let tau_max = sigma_max / (1.0 + sigma_max);
                u[..n]
                    .iter()
                    .map(|u| {
                        let tau = tau_max * (1.0 - u);
                        tau / (1.0 - tau)
                    })
                    .collect()
            } else {
                u[..n].iter().map(|u| sigma_max * (1.0 - u)).collect()
            }
        }
        GridKind::Levels { sigmas } => levels_for(sigmas, n)?,
        GridKind::Ays { model } => {
            let mut v = loglinear(&model.levels(), n + 1);
            v.truncate(n);
            v
        }
        GridKind::Gits(_) | GridKind::Oss(_) => {
            return Err(SolverError::Grid(format!(
                "the {} placement is chosen for a model: it is solved where the model is known (sample, compare, run, optimize-grid)",
                kind.chosen_for_model().unwrap_or_default()
            )))
        }
        GridKind::Timesteps {
            spacing,
            steps_offset,
            schedule,
            beta_start,
            beta_end,
            timesteps,
            alpha,
            beta,
        } => {
            let t = *timesteps;
            if (alpha.is_some() || beta.is_some()) && *spacing != Spacing::ComfyBeta {
                return Err(SolverError::Grid(format!(
                    "alpha and beta shape the comfy-beta spacing's distribution, not the {} spacing",
                    spacing.name()
                )));
            }
            let shape = (alpha.unwrap_or_else(point_six), beta.unwrap_or_else(point_six));
            // ComfyUI's BetaSamplingScheduler takes 0 to 50; far beyond, and at subnormal
            // values, statrs' quantile search fails or does not end.
            for (name, v) in [("alpha", shape.0), ("beta", shape.1)] {
                check_beta_shape(name, v)?;
            }
            if !(2..=MAX_STEPS).contains(&t) {
                return Err(SolverError::Grid(format!(
                    "the chain's timesteps must be 2 to {MAX_STEPS}, got {t}"
                )));
            }
            if *schedule != BetaSchedule::SquaredcosCapV2
                && !(*beta_start > 0.0 && beta_start <= beta_end && *beta_end < 1.0)
            {
                return Err(SolverError::Grid(format!(
                    "the chain needs 0 < beta_start <= beta_end < 1, got beta_start {} and beta_end {}",
                    crate::Num(*beta_start),
                    crate::Num(*beta_end)
                )));
            }
            if *steps_offset > 0 && *spacing != Spacing::Leading {
                return Err(SolverError::Grid(format!(
                    "steps_offset applies to the leading spacing only (diffusers adds it there), got {steps_offset} with the {} spacing",
                    spacing.name()
                )));
            }
            if n > t {
                return Err(SolverError::Grid(format!(
                    "a chain of {t} timesteps has room for at most {t} steps, asked for {n}"
                )));
            }
            let chain = DdpmChain::from_schedule(*schedule, t, *beta_start, *beta_end).sigmas();
            if spacing.is_comfy() {
                comfy_levels(*spacing, n, &chain, shape)?
            } else {
                let j = spaced_timesteps(*spacing, n, t, *steps_offset);
            if let Some(bad) = j.iter().find(|&&j| j < 0 || j >= t as i64) {
                return Err(SolverError::Grid(format!(
                    "timestep {bad} is outside the chain's 0..{} (steps_offset {steps_offset})",
                    t - 1
                )));
            }
                j.iter().map(|&j| chain[j as usize]).collect()
            }
        }
    };
    // Pin the end points exactly (the round trip through t may move them by an ulp); the iddpm
    // levels are a fixed set, whose ends lie inside the range; linear-quadratic pins its top
    // only (its last level is not sigma_min).
    if matches!(kind, GridKind::LinearQuadratic { .. }) {
        out[0] = sigma_max;
    } else if !matches!(
        kind,
        GridKind::Iddpm { .. }
            | GridKind::Timesteps { .. }
            | GridKind::Levels { .. }
            | GridKind::Ays { .. }
    ) {
        out[0] = sigma_max;
        if n > 1 {
            out[n - 1] = sigma_min;
        }
    }
    out.push(0.0);
    validate(&out)?;
    Ok(out)
}

/// A grid's first level and its last level above 0 (equal for a one-step grid).
pub fn ends(sigmas: &[f64]) -> (f64, f64) {
    (sigmas[0], sigmas[sigmas.len().saturating_sub(2)])
}

/// Check that a grid is usable for inversion ([`crate::driver::invert`]): at least 2 levels,
/// finite, positive and strictly increasing.
pub fn validate_ascending(sigmas: &[f64]) -> Result<()> {
    if sigmas.len() < 2 {
        return Err(SolverError::Grid(format!(
            "need at least 2 levels, got {}",
            sigmas.len()
        )));
    }
    if !(sigmas[0] > 0.0) {
        return Err(SolverError::Grid(format!(
            "an inversion grid starts above 0, got sigma[0] = {}",
            crate::Num(sigmas[0])
        )));
    }
    for (i, w) in sigmas.windows(2).enumerate() {
        if !(w[1].is_finite() && w[0] < w[1]) {
            return Err(SolverError::Grid(format!(
                "inversion levels must be finite and strictly increasing: sigma[{i}] = {} then {}",
                crate::Num(w[0]),
                crate::Num(w[1])
            )));
        }
    }
    Ok(())
}

/// Check that a grid is usable by the samplers: finite, strictly decreasing, ending in 0.
pub fn validate(sigmas: &[f64]) -> Result<()> {
    if sigmas.len() < 2 {
        return Err(SolverError::Grid(format!(
            "need at least 2 levels, got {}",
            sigmas.len()
        )));
    }
    if *sigmas.last().unwrap() != 0.0 {
        return Err(SolverError::Grid("the last level must be 0".into()));
    }
    for (i, w) in sigmas.windows(2).enumerate() {
        if !(w[0].is_finite() && w[0] > w[1]) {
            return Err(SolverError::Grid(format!(
                "levels must be finite and strictly decreasing: sigma[{i}] = {} then {}",
                crate::Num(w[0]),
                crate::Num(w[1])
            )));
        }
    }
    Ok(())
}
