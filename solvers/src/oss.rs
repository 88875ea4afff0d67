//! OSS, optimal stepsize search (Pei, Hu & Gu 2025, "Optimal Stepsize for Diffusion Sampling",
//! arXiv:2503.21774; reference code: bebebe666/OptimalSteps, `OSS/OSS.py`, `search_OSS` and
//! `cal_medium`).
//!
//! A step grid for a model chosen by dynamic programming over the levels of a fine teacher grid,
//! like GITS ([`crate::gits`]), but the student's own states are carried through the program:
//!
//! 1. A deterministic teacher (the reference's is Euler) runs on the fine grid
//!    `s_0 > s_1 > ... > s_M = 0` from each warm-up latent and keeps its states `T_0 .. T_M`.
//! 2. For each warm-up sample separately, `dp[k][j]` is the least squared error (the mean over
//!    the sample's elements of `(x - T_j)^2`) with which a student of at most `k + 1` Euler steps
//!    from the start reaches level `j`, `x[k][j]` the student's state there, and `from[k][j]` the
//!    level its last step started at. Round `k` starts from round `k - 1`'s tables, and every
//!    level `i` with a state steps once, `x[k-1][i] + (s_j - s_i) d_i` with
//!    `d_i = (x - D(x; s_i)) / s_i`, to every lower level `j`, replacing the entry of `j` when
//!    its error is smaller (levels taken from the top down, so that ties go to the higher
//!    level). The start level 0 keeps the start latent.
//! 3. The grid of `n` steps traces back from level `M` through `from[n-1], .., from[0]`; the
//!    grids of the samples are combined position by position into `(a + b) / 2`, rounded down,
//!    of the two middle teacher indices (the reference's `cal_medium`, in its counting from the
//!    bottom).
//!
//! One difference from the reference: its round 0 steps from every level `i` with the start
//! latent itself as the state there (it fills the table of states with it), so that a grid could
//! start below the top with noise scaled for the top. Here round 0 steps from the top only, the
//! one level the start latent belongs to, so every grid starts at `sigma_max`. With its round-0
//! steps from below the top ruled out (their errors made NaN, which never wins), the reference
//! chooses what this search chooses: the test `oss_matches_the_authors_search` runs `search_OSS`
//! itself so.
//!
//! A grid may repeat a level (a step of length 0: the best path with fewer steps was kept);
//! [`Oss::sigmas`] drops the repeats, so such a grid has fewer steps than asked for (the
//! commands refuse it, naming the count it reaches).

use crate::denoiser::Denoiser;
use crate::error::{Result, SolverError};
use crate::samplers::SamplerSpec;
use crate::sde::Sde;
use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

fn default_teacher() -> SamplerSpec {
    SamplerSpec::Euler(Default::default())
}
fn default_teacher_steps() -> usize {
    200
}
fn default_samples() -> usize {
    256
}

/// The settings of the `oss` grid placement ([`crate::grid::GridKind::Oss`]); the defaults are
/// the reference's (`sample_oss_dit.py`: an Euler teacher on 200 steps, 256 search samples),
/// with the teacher grid on Karras' placement as GITS' (the reference uses the model's own
/// timesteps).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OssParams {
    /// The deterministic sampler that draws the teacher trajectories.
    #[serde(default = "default_teacher")]
    pub teacher: SamplerSpec,
    /// Steps of the teacher grid (the levels OSS chooses from, 0 included).
    #[serde(default = "default_teacher_steps")]
    pub teacher_steps: usize,
    /// Placement of the teacher grid between sigma_min and sigma_max (karras, rho 7).
    #[serde(default)]
    pub teacher_grid: Box<crate::grid::GridKind>,
    /// Warm-up samples, each searched on its own; their grids are combined by the median.
    #[serde(default = "default_samples")]
    pub samples: usize,
    /// Seed of the warm-up latents (samples from [`crate::gits::WARMUP_FIRST`] on of this seed).
    #[serde(default)]
    pub seed: u64,
}

impl Default for OssParams {
    fn default() -> Self {
        OssParams {
            teacher: default_teacher(),
            teacher_steps: default_teacher_steps(),
            teacher_grid: Box::default(),
            samples: default_samples(),
            seed: 0,
        }
    }
}

/// A solved OSS search: the teacher's levels and, per warm-up sample, the table `from[k][j]`
/// (the level the last step into level `j` starts at, with at most `k + 1` steps), from which
/// the grid of any step count up to the rounds searched is a trace back.
#[derive(Clone, Debug)]
pub struct Oss {
    pub teacher_sigmas: Vec<f64>,
    /// `from[sample][k][j]`.
    pub from: Vec<Vec<Vec<usize>>>,
}

impl OssParams {
    /// Check the settings without a model.
    pub fn validate(&self) -> Result<()> {
        crate::gits::check_teacher(
            "oss",
            &self.teacher,
            &self.teacher_grid,
            self.teacher_steps,
            self.samples,
        )?;
        crate::gits::check_warmup("oss", self.samples, self.seed)
    }

    /// The teacher's levels between `sigma_min` and `sigma_max`, ending in 0.
    pub fn teacher_sigmas(
        &self,
        sigma_min: f64,
        sigma_max: f64,
        sde: &dyn Sde,
    ) -> Result<Vec<f64>> {
        crate::grid::sigmas(
            &self.teacher_grid,
            self.teacher_steps,
            sigma_min,
            sigma_max,
            sde,
        )
    }

    /// Run the teacher from the warm-up latents and search grids of up to `max_steps` steps
    /// (`shape` is one sample's).
    #[allow(clippy::too_many_arguments)]
    pub fn solve(
        &self,
        den: &dyn Denoiser,
        sde: &dyn Sde,
        sigma_min: f64,
        sigma_max: f64,
        shape: &[i64],
        device: tch::Device,
        kind: Kind,
        max_steps: usize,
    ) -> Result<Oss> {
        self.validate()?;
        crate::gits::check_teacher_size("oss", self.samples, self.teacher_steps, shape)?;
        let sigmas = self.teacher_sigmas(sigma_min, sigma_max, sde)?;
        let z = crate::gits::warmup_latents(self.seed, self.samples, shape, device, kind);
        let states =
            tch::no_grad(|| crate::gits::teacher_trajectory(&self.teacher, den, sde, &sigmas, &z))?;
        let from = tch::no_grad(|| search(den, &sigmas, &states, max_steps))?;
        Ok(Oss {
            teacher_sigmas: sigmas,
            from,
        })
    }
}

/// The search of step 2 for every sample at once: `from[sample][k][j]` for `k < rounds`, along
/// the teacher's `states` (one per level of `sigmas`, the first the start latents).
pub fn search(
    den: &dyn Denoiser,
    sigmas: &[f64],
    states: &[Tensor],
    rounds: usize,
) -> Result<Vec<Vec<Vec<usize>>>> {
    let m1 = sigmas.len();
    if states.len() != m1 || m1 < 2 {
        return Err(SolverError::Shape(format!(
            "{} teacher states for {m1} levels",
            states.len()
        )));
    }
    if rounds == 0 {
        return Err(SolverError::ZeroSteps(0));
    }
    if rounds > m1 - 1 {
        return Err(SolverError::Grid(format!(
            "OSS picks {rounds} steps from a teacher grid of {} steps; give the teacher at least as many",
            m1 - 1
        )));
    }
    let size = states[0].size();
    let b = size[0];
    // [M + 1, B, F]: the teacher's states, each flattened per sample.
    let teacher = Tensor::f_stack(
        &states
            .iter()
            .map(|s| s.f_reshape([b, -1]))
            .collect::<std::result::Result<Vec<_>, _>>()?,
        0,
    )?;
    let (dev, kind) = (teacher.device(), teacher.kind());
    if !bool::try_from(&teacher.f_isfinite()?.f_all()?)? {
        return Err(SolverError::Invalid(
            "the OSS teacher's trajectory is not finite".into(),
        ));
    }
    // The levels on the device once, [M + 1, 1, 1].
    let levels = Tensor::from_slice(sigmas)
        .to_kind(kind)
        .to_device(dev)
        .view([-1, 1, 1]);
    // The student's states (round k - 1's going into round k), their errors and origins.
    let x = teacher.copy();
    let err = Tensor::full([m1 as i64, b], f64::INFINITY, (kind, dev));
    let from_t = Tensor::zeros([m1 as i64, b], (Kind::Int64, dev));
    let mut rounds_from = Vec::with_capacity(rounds);
    for k in 0..rounds {
        let prev = x.copy();
        // Whether an error of this round is not a number (checked once the round is done).
        let mut nan = Tensor::zeros([], (Kind::Bool, dev));
        // Round 0 steps from the top only; later rounds from every level above 0.
        let tops = if k == 0 { 1 } else { m1 - 1 };
        for (i, &s_i) in sigmas.iter().enumerate().take(tops) {
            let xi = prev.get(i as i64);
            let xs = xi.f_view(size.as_slice())?;
            let d = ((&xs - den.denoise(&xs, s_i)?) / s_i).f_reshape([b, -1])?;
            let n = (m1 - 1 - i) as i64;
            // [n, B, F]: one Euler step from level i to every lower level.
            let later = levels.narrow(0, i as i64 + 1, n);
            let next = xi.unsqueeze(0) + (later - s_i) * d.unsqueeze(0);
            let target = teacher.narrow(0, i as i64 + 1, n);
            let cost = (&next - &target)
                .f_square()?
                .f_mean_dim([2i64].as_slice(), false, kind)?;
            let old = err.narrow(0, i as i64 + 1, n);
            let better = cost.f_lt_tensor(&old)?;
            nan = nan.f_logical_or(&cost.f_isnan()?.f_any()?)?;
            let kept = cost.where_self(&better, &old);
            err.narrow(0, i as i64 + 1, n).copy_(&kept);
            let origin = Tensor::full([n, b], i as i64, (Kind::Int64, dev));
            let mut of = from_t.narrow(0, i as i64 + 1, n);
            let kept = origin.where_self(&better, &of);
            of.copy_(&kept);
            let mut xo = x.narrow(0, i as i64 + 1, n);
            let kept = next.where_self(&better.unsqueeze(2), &xo);
            xo.copy_(&kept);
        }
        if bool::try_from(&nan)? {
            return Err(SolverError::Invalid(format!(
                "an OSS error in round {k} (students of {} steps) is not a number: the denoiser is not finite",
                k + 1
            )));
        }
        let table: Vec<i64> =
            Vec::<i64>::try_from(from_t.to_device(tch::Device::Cpu).flatten(0, -1))?;
        rounds_from.push(table);
    }
    // from[sample][k][j]
    let bs = b as usize;
    Ok((0..bs)
        .map(|s| {
            rounds_from
                .iter()
                .map(|t| (0..m1).map(|j| t[j * bs + s] as usize).collect())
                .collect()
        })
        .collect())
}

/// The reference's `cal_medium`: per position, `(l[n/2] + l[n/2 - 1]) / 2` rounded down of the
/// sorted values (with one value, that value).
pub fn cal_medium(lists: &[Vec<usize>]) -> Vec<usize> {
    let n = lists.len();
    (0..lists[0].len())
        .map(|p| {
            let mut l: Vec<usize> = lists.iter().map(|v| v[p]).collect();
            l.sort_unstable();
            let lo = if n >= 2 { l[n / 2 - 1] } else { l[n - 1] };
            (l[n / 2] + lo) / 2
        })
        .collect()
}

impl Oss {
    /// One sample's path of `steps` steps: `steps + 1` non-decreasing teacher indices from 0 to
    /// the last level.
    pub fn sample_path(&self, sample: usize, steps: usize) -> Result<Vec<usize>> {
        let Some(from) = self.from.get(sample) else {
            return Err(SolverError::Invalid(format!(
                "OSS searched {} samples; there is no sample {sample}",
                self.from.len()
            )));
        };
        if steps == 0 {
            return Err(SolverError::ZeroSteps(0));
        }
        if steps > from.len() {
            return Err(SolverError::Grid(format!(
                "OSS searched grids of up to {} steps, not {steps}",
                from.len()
            )));
        }
        let mut path = vec![self.teacher_sigmas.len() - 1];
        for k in (0..steps).rev() {
            let j = *path.last().unwrap();
            path.push(from[k][j]);
        }
        path.reverse();
        Ok(path)
    }

    /// The grid of `steps` steps as teacher indices: the samples' paths combined by
    /// [`cal_medium`] (in the reference's counting from the bottom, `M - index`).
    pub fn path(&self, steps: usize) -> Result<Vec<usize>> {
        let last = self.teacher_sigmas.len() - 1;
        let lists = (0..self.from.len())
            .map(|s| {
                Ok(self
                    .sample_path(s, steps)?
                    .into_iter()
                    .map(|i| last - i)
                    .collect())
            })
            .collect::<Result<Vec<Vec<usize>>>>()?;
        Ok(cal_medium(&lists).into_iter().map(|i| last - i).collect())
    }

    /// The grid of `steps` steps: its levels, ending in 0, with repeated levels dropped.
    pub fn sigmas(&self, steps: usize) -> Result<Vec<f64>> {
        let mut path = self.path(steps)?;
        path.dedup();
        Ok(path.into_iter().map(|i| self.teacher_sigmas[i]).collect())
    }
}
