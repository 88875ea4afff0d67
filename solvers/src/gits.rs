//! GITS, geometry-inspired time scheduling (Chen, Zhou, Wang, Shen & Lyu 2024, "On the
//! Trajectory Regularity of ODE-based Diffusion Sampling", ICML, Sec. 4; reference code:
//! zju-pi/diff-sampler, `gits-main/gits_utils.py`, `get_dp_list` and `dp`).
//!
//! A step grid picked for a model and a step count by dynamic programming over the levels of a
//! fine teacher grid:
//!
//! 1. A deterministic teacher sampler runs on the fine grid `s_0 > s_1 > ... > s_M = 0` from
//!    warm-up noise and keeps its states `x_0 .. x_M` (the whole trajectory).
//! 2. The cost of a coarse step from level `i` to level `j > i` is how far one Euler step,
//!    `x_i + (s_j - s_i) d_i` with `d_i = (x_i - D(x_i; s_i)) / s_i`, lands from the teacher's
//!    `x_j`, averaged over the warm-up samples: the L2 or L1 norm of the difference, or (`dev`,
//!    the reference's default) the step's deviation from the straight line through the
//!    trajectory's ends less the teacher's own deviation at `j`.
//! 3. `V(j, 1) = cost(j, M)`, `V(j, k) = min_{j < i < M} cost(j, i) + coeff V(i, k - 1)`; the
//!    grid of `n` steps is the path from 0 to `M` of `V(0, n)` (ties to the lowest level index,
//!    as the reference's backtracking). `coeff > 1` weighs the later steps more.
//!
//! The reference's teacher grid ends at `sigma_min`; here every grid ends at 0, so the teacher
//! grid's last level is 0 and the last coarse step lands there (the denoised estimate), as every
//! grid of this crate does.

use crate::denoiser::Denoiser;
use crate::driver::{run, RunOptions};
use crate::error::{Result, SolverError};
use crate::noise::BrownianNoise;
use crate::samplers::SamplerSpec;
use crate::sde::Sde;
use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

/// The cost of a coarse step (see the module documentation).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum CostMetric {
    /// Deviation from the line through the trajectory's ends, less the teacher's.
    #[default]
    Dev,
    /// L2 norm of the difference from the teacher's state, per sample.
    L2,
    /// L1 norm of the difference from the teacher's state, per sample.
    L1,
}

impl CostMetric {
    pub fn name(self) -> &'static str {
        match self {
            CostMetric::Dev => "dev",
            CostMetric::L2 => "l2",
            CostMetric::L1 => "l1",
        }
    }
}

/// The teacher's states at every level of `sigmas` (ending in 0), from standard-normal latents
/// `z` (the first state is `sigmas[0] z`): `sigmas.len()` tensors shaped like `z`. The teacher
/// must be deterministic.
pub fn teacher_trajectory(
    teacher: &SamplerSpec,
    den: &dyn Denoiser,
    sde: &dyn Sde,
    sigmas: &[f64],
    z: &Tensor,
) -> Result<Vec<Tensor>> {
    if teacher.is_stochastic() || teacher.is_adaptive() {
        return Err(SolverError::Invalid(format!(
            "the GITS teacher must be a deterministic sampler that steps through the grid's levels, got {}",
            teacher.name()
        )));
    }
    let size = z.size();
    // Never drawn from (the teacher is deterministic); the driver wants a source.
    let mut noise = BrownianNoise::new(
        0,
        0,
        size[0] as usize,
        &size[1..],
        sigmas[0] + 1.0,
        z.device(),
        z.kind(),
    );
    let sampler = teacher.build()?;
    let x0 = z * sigmas[0];
    let mut states = vec![x0.shallow_clone()];
    run(
        sampler.as_ref(),
        den,
        sde,
        sigmas,
        x0,
        &mut noise,
        &RunOptions::default(),
        &mut |_, x| states.push(x.shallow_clone()),
    )?;
    Ok(states)
}

/// The `(M + 1) x (M + 1)` cost matrix of coarse Euler steps between the levels of `sigmas`
/// (`M + 1` levels ending in 0) along the teacher's `states` (one per level), averaged over the
/// samples; entries on and below the diagonal are 0.
pub fn cost_matrix(
    den: &dyn Denoiser,
    sigmas: &[f64],
    states: &[Tensor],
    metric: CostMetric,
) -> Result<Vec<Vec<f64>>> {
    let m1 = sigmas.len();
    if states.len() != m1 || m1 < 2 {
        return Err(SolverError::Shape(format!(
            "{} teacher states for {m1} levels",
            states.len()
        )));
    }
    let b = states[0].size()[0];
    // [M + 1, B, F]: each state flattened per sample.
    let traj = Tensor::f_stack(
        &states
            .iter()
            .map(|s| s.f_reshape([b, -1]))
            .collect::<std::result::Result<Vec<_>, _>>()?,
        0,
    )?;
    let (start, end) = (traj.get(0), traj.get(m1 as i64 - 1));
    let dev = |a: &Tensor| -> Result<Tensor> {
        // a: [J, B, F]; the distance of each point from the line through start and end.
        let bc = &end - &start;
        let unit = &bc / bc.f_norm_scalaropt_dim(2, [1i64].as_slice(), true)?;
        let ac = &end - a;
        let along = (&ac * &unit).f_sum_dim_intlist([2i64].as_slice(), true, ac.kind())?;
        Ok((ac - along * unit).f_norm_scalaropt_dim(2, [2i64].as_slice(), false)?)
    };
    let dev_teacher = if metric == CostMetric::Dev {
        Some(dev(&traj)?)
    } else {
        None
    };
    let mut cost = vec![vec![0.0; m1]; m1];
    for i in 0..m1 - 1 {
        let x = &states[i];
        let d = ((x - den.denoise(x, sigmas[i])?) / sigmas[i]).f_reshape([b, -1])?;
        let later = Tensor::from_slice(&sigmas[i + 1..])
            .to_kind(traj.kind())
            .to_device(traj.device())
            .view([-1, 1, 1]);
        let xi = traj.get(i as i64);
        let next = xi.unsqueeze(0) + (later - sigmas[i]) * d.unsqueeze(0);
        let teacher = traj.narrow(0, i as i64 + 1, (m1 - 1 - i) as i64);
        let per_sample = match metric {
            CostMetric::L2 => {
                (&next - &teacher).f_norm_scalaropt_dim(2, [2i64].as_slice(), false)?
            }
            CostMetric::L1 => {
                (&next - &teacher).f_norm_scalaropt_dim(1, [2i64].as_slice(), false)?
            }
            CostMetric::Dev => {
                let tea =
                    dev_teacher
                        .as_ref()
                        .unwrap()
                        .narrow(0, i as i64 + 1, (m1 - 1 - i) as i64);
                dev(&next)? - tea
            }
        };
        let row: Vec<f64> = Vec::<f64>::try_from(
            per_sample
                .f_mean_dim([1i64].as_slice(), false, Kind::Double)?
                .to_device(tch::Device::Cpu),
        )?;
        for (k, v) in row.into_iter().enumerate() {
            if !v.is_finite() {
                return Err(SolverError::Invalid(format!(
                    "the GITS cost of the step from level {i} (sigma {}) to level {} is {v}: the teacher's trajectory or the denoiser is not finite",
                    crate::Num(sigmas[i]),
                    i + 1 + k
                )));
            }
            cost[i][i + 1 + k] = v;
        }
    }
    Ok(cost)
}

/// The indices (into the teacher's levels, from 0 to the last) of the `steps`-step path of
/// least discounted cost: `steps + 1` increasing indices.
pub fn select(cost: &[Vec<f64>], steps: usize, coeff: f64) -> Result<Vec<usize>> {
    let m1 = cost.len();
    if !(coeff > 0.0 && coeff.is_finite()) {
        return Err(SolverError::Parameter {
            name: "coeff",
            value: coeff,
            why: "must be positive and finite",
        });
    }
    if steps == 0 {
        return Err(SolverError::ZeroSteps(steps));
    }
    if m1 < 2 || steps > m1 - 1 {
        return Err(SolverError::Grid(format!(
            "GITS picks {steps} steps from a teacher grid of {} steps; give the teacher at least as many",
            m1.saturating_sub(1)
        )));
    }
    let last = m1 - 1;
    // v[k][j]: least cost from level j to the end in k steps; next[k][j]: its first stop.
    let mut v = vec![vec![f64::INFINITY; m1]; steps + 1];
    let mut next = vec![vec![usize::MAX; m1]; steps + 1];
    for j in 0..m1 {
        v[1][j] = cost[j][last];
        next[1][j] = last;
    }
    for k in 2..=steps {
        for j in 0..last {
            for i in j + 1..last {
                let c = cost[j][i] + coeff * v[k - 1][i];
                if c < v[k][j] {
                    v[k][j] = c;
                    next[k][j] = i;
                }
            }
        }
    }
    if !v[steps][0].is_finite() {
        return Err(SolverError::Grid(format!(
            "no {steps}-step path through the teacher's levels"
        )));
    }
    let mut path = vec![0];
    let mut w = 0;
    for k in (1..=steps).rev() {
        w = next[k][w];
        path.push(w);
    }
    Ok(path)
}

/// Warm-up latents: `samples` standard normals of shape `shape` (each), samples
/// [`WARMUP_FIRST`] onwards of `seed`.
pub fn warmup_latents(
    seed: u64,
    samples: usize,
    shape: &[i64],
    device: tch::Device,
    kind: Kind,
) -> Tensor {
    BrownianNoise::new(seed, WARMUP_FIRST, samples, shape, 1.0, device, kind).initial()
}

/// The checks a teacher's settings pass for GITS and OSS (`method`): a deterministic sampler that
/// steps through the teacher grid's levels, a grid not itself chosen for the model, at least
/// one step and one warm-up sample.
pub fn check_teacher(
    method: &str,
    teacher: &SamplerSpec,
    teacher_grid: &crate::grid::GridKind,
    teacher_steps: usize,
    samples: usize,
) -> Result<()> {
    if teacher.is_stochastic() {
        return Err(SolverError::Invalid(format!(
            "{method}: the teacher must be a deterministic sampler, got {}",
            teacher.name()
        )));
    }
    if teacher.is_adaptive() {
        return Err(SolverError::Invalid(format!(
            "{method}: the teacher must step through the teacher grid's levels; the adaptive sampler {} chooses its own steps",
            teacher.name()
        )));
    }
    teacher.build()?;
    if let Some(name) = teacher_grid.chosen_for_model() {
        return Err(SolverError::Grid(format!(
            "{method}: the teacher grid cannot itself be {name}"
        )));
    }
    if teacher_steps == 0 {
        return Err(SolverError::ZeroSteps(0));
    }
    if samples == 0 {
        return Err(SolverError::Invalid(format!(
            "{method}: samples must be at least 1"
        )));
    }
    Ok(())
}

/// The most warm-up samples GITS and OSS take (2^20; their default is 256).
pub const MAX_WARMUP_SAMPLES: usize = 1 << 20;

/// The most numbers the teacher's kept states may hold (2^32): `(teacher_steps + 1) x samples x`
/// the numbers of one sample.
pub const MAX_TEACHER_NUMBERS: u128 = 1 << 32;

/// The warm-up settings' checks: at most [`MAX_WARMUP_SAMPLES`] samples, and a seed a TOML file
/// can hold (a signed 64-bit integer: optimize-grid writes it).
pub fn check_warmup(method: &str, samples: usize, seed: u64) -> Result<()> {
    if samples > MAX_WARMUP_SAMPLES {
        return Err(SolverError::Invalid(format!(
            "{method}: samples must be at most {MAX_WARMUP_SAMPLES}, got {samples}"
        )));
    }
    if seed > i64::MAX as u64 {
        return Err(SolverError::Invalid(format!(
            "{method}: seed must be at most {} (a TOML integer), got {seed}",
            i64::MAX
        )));
    }
    Ok(())
}

/// Whether the teacher's states from `samples` warm-up samples of `shape` over `teacher_steps`
/// steps fit in [`MAX_TEACHER_NUMBERS`] (checked before any is drawn).
pub fn check_teacher_size(
    method: &str,
    samples: usize,
    teacher_steps: usize,
    shape: &[i64],
) -> Result<()> {
    let numel: u128 = shape.iter().map(|&d| d.max(0) as u128).product();
    let total = (teacher_steps as u128 + 1) * samples as u128 * numel;
    if total > MAX_TEACHER_NUMBERS {
        return Err(SolverError::Invalid(format!(
            "{method}: the teacher's states ({} levels x {samples} samples of shape {shape:?}) are {total} numbers, more than {MAX_TEACHER_NUMBERS}; use fewer samples or teacher steps",
            teacher_steps + 1
        )));
    }
    Ok(())
}

/// Sample index of the first warm-up latent: far above the samples experiments and commands
/// draw (0 onwards), so that the grid is not fitted to the noise it is then judged on.
pub const WARMUP_FIRST: u64 = 1 << 40;

fn default_teacher() -> SamplerSpec {
    SamplerSpec::Ipndm {
        order: 4,
        final_denoised: false,
    }
}
fn default_teacher_steps() -> usize {
    60
}
fn default_coeff() -> f64 {
    1.15
}
fn default_samples() -> usize {
    256
}

/// The settings of the `gits` grid placement ([`crate::grid::GridKind::Gits`]); the defaults
/// are the reference's recommended ones (`launch.sh`: teacher iPNDM of order 4 on 60 Karras
/// steps, `metric=dev`, `coeff=1.15`, 256 warm-up samples).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GitsParams {
    /// The deterministic sampler that draws the teacher trajectories.
    #[serde(default = "default_teacher")]
    pub teacher: SamplerSpec,
    /// Steps of the teacher grid (the levels GITS chooses from, 0 included).
    #[serde(default = "default_teacher_steps")]
    pub teacher_steps: usize,
    /// Placement of the teacher grid between sigma_min and sigma_max (karras, rho 7).
    #[serde(default)]
    pub teacher_grid: Box<crate::grid::GridKind>,
    #[serde(default)]
    pub metric: CostMetric,
    /// The discount of the dynamic program (`V = cost + coeff V_next`).
    #[serde(default = "default_coeff")]
    pub coeff: f64,
    /// Warm-up trajectories averaged in the cost.
    #[serde(default = "default_samples")]
    pub samples: usize,
    /// Seed of the warm-up latents (samples from [`WARMUP_FIRST`] on of this seed).
    #[serde(default)]
    pub seed: u64,
}

impl Default for GitsParams {
    fn default() -> Self {
        GitsParams {
            teacher: default_teacher(),
            teacher_steps: default_teacher_steps(),
            teacher_grid: Box::default(),
            metric: CostMetric::default(),
            coeff: default_coeff(),
            samples: default_samples(),
            seed: 0,
        }
    }
}

/// A solved GITS problem: the teacher's levels and the cost matrix, from which the grid of any
/// step count up to the teacher's is one dynamic program.
#[derive(Clone, Debug)]
pub struct Gits {
    pub teacher_sigmas: Vec<f64>,
    pub cost: Vec<Vec<f64>>,
    pub coeff: f64,
}

impl GitsParams {
    /// Check the settings without a model.
    pub fn validate(&self) -> Result<()> {
        check_teacher(
            "gits",
            &self.teacher,
            &self.teacher_grid,
            self.teacher_steps,
            self.samples,
        )?;
        check_warmup("gits", self.samples, self.seed)?;
        if !(self.coeff > 0.0 && self.coeff.is_finite()) {
            return Err(SolverError::Parameter {
                name: "coeff",
                value: self.coeff,
                why: "must be positive and finite",
            });
        }
        Ok(())
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

    /// The warm-up latents: standard normals, `[samples, shape...]`.
    pub fn warmup(&self, shape: &[i64], device: tch::Device, kind: Kind) -> Tensor {
        warmup_latents(self.seed, self.samples, shape, device, kind)
    }

    /// Run the teacher from the warm-up latents and build the cost matrix (`shape` is one
    /// sample's).
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
    ) -> Result<Gits> {
        self.validate()?;
        check_teacher_size("gits", self.samples, self.teacher_steps, shape)?;
        let sigmas = self.teacher_sigmas(sigma_min, sigma_max, sde)?;
        let z = self.warmup(shape, device, kind);
        let states = tch::no_grad(|| teacher_trajectory(&self.teacher, den, sde, &sigmas, &z))?;
        let cost = tch::no_grad(|| cost_matrix(den, &sigmas, &states, self.metric))?;
        Ok(Gits {
            teacher_sigmas: sigmas,
            cost,
            coeff: self.coeff,
        })
    }
}

impl Gits {
    /// The teacher-level indices of the grid of `steps` steps.
    pub fn path(&self, steps: usize) -> Result<Vec<usize>> {
        select(&self.cost, steps, self.coeff)
    }
    /// The grid of `steps` steps: `steps + 1` levels ending in 0.
    pub fn sigmas(&self, steps: usize) -> Result<Vec<f64>> {
        Ok(self
            .path(steps)?
            .into_iter()
            .map(|i| self.teacher_sigmas[i])
            .collect())
    }
}
