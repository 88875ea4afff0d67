//! `restart`: Restart sampling, Xu et al. (2023), "Restart Sampling for Improving Generative
//! Processes" (NeurIPS 2023), Algorithm 1 and Section 5, as its authors run it on EDM models
//! (`restart_sampler` in Newbeeer/diffusion_restart_sampling, `benchmarks/generate_restart.py`).
//!
//! The main pass is `heun` with EDM's churn ([`Churn`]; the last step is an Euler step to 0).
//! Each restart segment `[N, K, t_min, t_max]` (the paper's `restart_info`) is tied to the grid
//! level nearest to `t_min`, `sigma_j` (the first of equals, as the reference's `argmin`): after
//! the main step that lands on `sigma_j`, the sampler `K` times
//!
//! 1. jumps forward in noise: `x <- x + S_noise sqrt(t_max^2 - sigma_j^2) z`, and
//! 2. runs back from `t_max` to `sigma_j` with `N - 1` Heun steps on the Karras grid of `N`
//!    levels from `t_max` to `sigma_j` (exponent `rho`), each step first churned by the fixed
//!    `gamma = restart_gamma` when `S_tmin <= t <= S_tmax` (not divided by the step count and
//!    not capped, as in the reference).
//!
//! Segments whose `t_min` are nearest to the same level all run there, in the order given (the
//! reference keeps only the last one given, so its evaluations would depend on the grid).
//!
//! Evaluations: `2n - 1 + sum over segments of 2 K (N - 1)`. The main pass's churn uses
//! [`crate::noise::STREAM_CHURN`] on each step's interval. Restart `r` (counted over the run,
//! from the highest level down) draws its jump from stream `STREAM_RESTART + 2r` on
//! `[sigma_j, t_max]` and its churn from `STREAM_RESTART + 2r + 1` on each sub-step's
//! interval, so restarts are independent of each other and of the main pass.
//!
//! Defaults: one segment `[3, 2, 0.06, 0.30]` (the paper's CIFAR-10 setting, Table 3),
//! `restart_gamma = 0.05`, `S_tmin = 0.01`, `S_tmax = 1`, `S_noise = 1`, `S_churn = 0` (the
//! reference's recommended command line).

use super::edm_stochastic::Churn;
use super::heun::heun_step;
use super::{check_nonneg, require};
use crate::driver::{Sampler, StepCtx};
use crate::error::{Num, Result, SolverError};
use serde::{Deserialize, Serialize};
use tch::Tensor;

/// First noise stream of the restarts; restart `r` uses `STREAM_RESTART + 2r` for its jump and
/// `STREAM_RESTART + 2r + 1` for its churn.
pub const STREAM_RESTART: u64 = 1 << 32;

/// One restart segment, written `[N, K, t_min, t_max]` as in the paper's `restart_info`.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(from = "(usize, usize, f64, f64)", into = "(usize, usize, f64, f64)")]
pub struct Segment {
    /// `N_restart`: levels of the backward run from `t_max` (`N - 1` Heun steps), at least 2.
    pub levels: usize,
    /// `K`: how many times the segment is restarted, at least 1.
    pub times: usize,
    /// Where the restarts return to: the grid level nearest to it.
    pub t_min: f64,
    /// The noise level each restart jumps to.
    pub t_max: f64,
}

impl From<(usize, usize, f64, f64)> for Segment {
    fn from((levels, times, t_min, t_max): (usize, usize, f64, f64)) -> Self {
        Segment {
            levels,
            times,
            t_min,
            t_max,
        }
    }
}

impl From<Segment> for (usize, usize, f64, f64) {
    fn from(s: Segment) -> Self {
        (s.levels, s.times, s.t_min, s.t_max)
    }
}

fn default_segments() -> Vec<Segment> {
    vec![Segment::from((3, 2, 0.06, 0.30))]
}
fn restart_gamma() -> f64 {
    0.05
}
fn s_tmin() -> f64 {
    0.01
}
fn rho() -> f64 {
    7.0
}

/// Parameters of `restart`, the keys of its `[[samplers]]` entry: the reference's names
/// (`restart_info` as `segments`) and its recommended values as defaults.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RestartParams {
    #[serde(default = "default_segments")]
    pub segments: Vec<Segment>,
    /// The churn of every restart step (where `S_tmin <= t <= S_tmax`).
    #[serde(default = "restart_gamma")]
    pub restart_gamma: f64,
    /// The exponent of the restarts' Karras grids.
    #[serde(default = "rho")]
    pub rho: f64,
    /// The main pass's `S_churn` (0: no churn there).
    #[serde(default)]
    pub s_churn: f64,
    #[serde(default = "s_tmin")]
    pub s_tmin: f64,
    #[serde(default = "super::one", deserialize_with = "super::inf_if_null")]
    pub s_tmax: f64,
    /// Scale of all added noise: the main churn, the jumps and the restarts' churn.
    #[serde(default = "super::one")]
    pub s_noise: f64,
}

impl Default for RestartParams {
    fn default() -> Self {
        RestartParams {
            segments: default_segments(),
            restart_gamma: restart_gamma(),
            rho: rho(),
            s_churn: 0.0,
            s_tmin: s_tmin(),
            s_tmax: 1.0,
            s_noise: 1.0,
        }
    }
}

impl RestartParams {
    /// The main pass's churn.
    pub fn churn(&self) -> Churn {
        Churn {
            s_churn: self.s_churn,
            s_tmin: self.s_tmin,
            s_tmax: self.s_tmax,
            s_noise: self.s_noise,
        }
    }

    /// Evaluations spent in the restarts: `sum 2 K (N - 1)`.
    pub fn restart_nfe(&self) -> usize {
        self.segments
            .iter()
            .map(|s| 2 * s.times * (s.levels - 1))
            .sum()
    }

    /// Whether any noise is added.
    pub fn is_stochastic(&self) -> bool {
        self.s_noise > 0.0 && (!self.segments.is_empty() || self.s_churn > 0.0)
    }
}

/// At most this many evaluations in the restarts (a typo guard: the paper's largest setting
/// spends a few hundred).
const MAX_RESTART_NFE: usize = 1_000_000;

#[derive(Clone, Debug)]
pub struct Restart {
    pub p: RestartParams,
    churn: Churn,
}

impl Restart {
    pub fn new(p: RestartParams) -> Result<Self> {
        let churn = p.churn();
        churn.validate()?;
        check_nonneg("restart_gamma", p.restart_gamma)?;
        require(
            "rho",
            p.rho,
            p.rho > 0.0 && p.rho.is_finite(),
            "must be finite and > 0",
        )?;
        for (k, s) in p.segments.iter().enumerate() {
            let k = k + 1;
            if s.levels < 2 || s.times < 1 {
                return Err(SolverError::Invalid(format!(
                    "restart segment {k} [{}, {}, {}, {}]: N (levels of each restart) must be >= 2 and K (restarts) >= 1",
                    s.levels,
                    s.times,
                    Num(s.t_min),
                    Num(s.t_max)
                )));
            }
            if !(s.t_min > 0.0 && s.t_min < s.t_max && s.t_max.is_finite()) {
                return Err(SolverError::Invalid(format!(
                    "restart segment {k}: need 0 < t_min < t_max < inf, got t_min = {}, t_max = {}",
                    Num(s.t_min),
                    Num(s.t_max)
                )));
            }
        }
        let total = p.segments.iter().try_fold(0usize, |acc, s| {
            s.times
                .checked_mul(s.levels - 1)
                .and_then(|v| v.checked_mul(2))
                .and_then(|v| acc.checked_add(v))
        });
        if total.is_none_or(|t| t > MAX_RESTART_NFE) {
            return Err(SolverError::Invalid(format!(
                "restart: the segments' restarts would take more than {MAX_RESTART_NFE} network evaluations"
            )));
        }
        Ok(Restart { p, churn })
    }

    /// The grid level each segment returns to (the nearest level to its `t_min`, first of
    /// equals), checked: a level some main step ends on before the last (1 ..= n-1), below
    /// `t_max`, and `t_max` within the grid's range. Several segments may share a level (on a
    /// coarse grid): all of them run there.
    pub fn targets(&self, sigmas: &[f64]) -> Result<Vec<usize>> {
        let n = sigmas.len() - 1;
        if n < 2 && !self.p.segments.is_empty() {
            return Err(SolverError::Invalid(format!(
                "restart: a restart returns to a level between the first and the last step, so it needs at least 2 steps (got {n})"
            )));
        }
        let mut targets = Vec::with_capacity(self.p.segments.len());
        for (k, s) in self.p.segments.iter().enumerate() {
            let best = nearest_level(sigmas, s.t_min);
            let k = k + 1;
            if best == 0 || best == n {
                return Err(SolverError::Invalid(format!(
                    "restart segment {k}: t_min = {} is nearest to the grid's {} level ({}); a restart returns to a level between the first and the last step (this grid of {n} steps has {} .. {})",
                    Num(s.t_min),
                    if best == 0 { "first" } else { "final" },
                    Num(sigmas[best]),
                    Num(sigmas[1]),
                    Num(sigmas[n - 1]),
                )));
            }
            if s.t_max <= sigmas[best] || s.t_max > sigmas[0] {
                return Err(SolverError::Invalid(format!(
                    "restart segment {k}: t_max = {} must lie above its level {} and at most the grid's first level {}",
                    Num(s.t_max),
                    Num(sigmas[best]),
                    Num(sigmas[0])
                )));
            }
            targets.push(best);
        }
        Ok(targets)
    }

    /// The Karras grid of `levels` levels from `t_max` down to `t_min`, ends exact.
    fn restart_levels(&self, levels: usize, t_min: f64, t_max: f64) -> Vec<f64> {
        let inv = 1.0 / self.p.rho;
        let (a, b) = (t_max.powf(inv), t_min.powf(inv));
        (0..levels)
            .map(|j| match j {
                0 => t_max,
                j if j + 1 == levels => t_min,
                j => (a + j as f64 / (levels - 1) as f64 * (b - a)).powf(self.p.rho),
            })
            .collect()
    }

    /// Restart `r`: the jump to `t_max`, then the churned Heun steps back to `t_min`.
    fn restart(
        &self,
        ctx: &mut StepCtx<'_>,
        x: Tensor,
        seg: &Segment,
        t_min: f64,
        r: u64,
    ) -> Result<Tensor> {
        let (jump, churn) = (STREAM_RESTART + 2 * r, STREAM_RESTART + 2 * r + 1);
        let s_noise = self.p.s_noise;
        let mut x = x;
        if s_noise > 0.0 {
            let z = ctx.noise.standard(jump, t_min, seg.t_max)?;
            x = x + z * ((seg.t_max * seg.t_max - t_min * t_min).sqrt() * s_noise);
        }
        let levels = self.restart_levels(seg.levels, t_min, seg.t_max);
        for w in levels.windows(2) {
            let (t_cur, t_next) = (w[0], w[1]);
            let gamma = if super::in_window(t_cur, self.p.s_tmin, self.p.s_tmax) {
                self.p.restart_gamma
            } else {
                0.0
            };
            let t_hat = t_cur * (1.0 + gamma);
            if gamma > 0.0 && s_noise > 0.0 {
                let z = ctx.noise.standard(churn, t_next, t_cur)?;
                x = x + z * ((t_hat * t_hat - t_cur * t_cur).sqrt() * s_noise);
            }
            x = heun_step(ctx, &x, t_hat, t_next)?;
        }
        Ok(x)
    }
}

/// The index of the level of the decreasing grid `sigmas` nearest to `t`, the first of two
/// equally near (as `argmin`), by bisection.
fn nearest_level(sigmas: &[f64], t: f64) -> usize {
    let below = sigmas.partition_point(|&s| s > t);
    match below {
        0 => 0,
        i if i == sigmas.len() => i - 1,
        i if (sigmas[i - 1] - t).abs() <= (sigmas[i] - t).abs() => i - 1,
        i => i,
    }
}

impl Sampler for Restart {
    fn name(&self) -> &'static str {
        "restart"
    }
    fn check_grid(&self, sigmas: &[f64]) -> Result<()> {
        self.targets(sigmas).map(|_| ())
    }
    fn step(&self, ctx: &mut StepCtx<'_>, x: Tensor) -> Result<Tensor> {
        // Checked before the first evaluation, so a bad segment costs nothing.
        let targets = self.targets(ctx.sigmas)?;
        let (x_hat, s_hat) = self.churn.apply(ctx, x)?;
        let mut x = heun_step(ctx, &x_hat, s_hat, ctx.sigma_next())?;
        let here = ctx.index + 1;
        // Restarts run from the highest level down, segments of one level in the order given:
        // `r` counts the restarts before.
        let mut r: usize = self
            .p
            .segments
            .iter()
            .zip(&targets)
            .filter(|(_, &t)| t < here)
            .map(|(s, _)| s.times)
            .sum();
        let t_min = ctx.sigmas[here];
        for (seg, _) in self
            .p
            .segments
            .iter()
            .zip(&targets)
            .filter(|(_, &t)| t == here)
        {
            for _ in 0..seg.times {
                x = self.restart(ctx, x, seg, t_min, r as u64)?;
                r += 1;
            }
        }
        Ok(x)
    }
}

#[cfg(test)]
mod tests {
    use super::nearest_level;

    #[test]
    fn nearest_level_is_the_first_of_the_nearest_as_argmin() {
        let grid = [80.0, 10.0, 1.0, 0.5, 0.1, 0.0];
        let argmin = |t: f64| {
            let mut best = 0;
            for (i, s) in grid.iter().enumerate() {
                if (s - t).abs() < (grid[best] - t).abs() {
                    best = i;
                }
            }
            best
        };
        for t in [
            1e3, 80.0, 45.0, 44.9, 45.1, 10.0, 5.5, 0.75, 0.5, 0.3, 0.1, 0.05, 0.04, 1e-9,
        ] {
            assert_eq!(nearest_level(&grid, t), argmin(t), "t = {t}");
        }
    }
}
