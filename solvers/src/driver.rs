//! The one loop that runs every sampler: it walks the grid, counts network evaluations,
//! checks for non-finite values and reports each step.

use crate::denoiser::Denoiser;
use crate::error::{Result, SolverError};
use crate::grid;
use crate::noise::NoiseSource;
use crate::sde::Sde;
use tch::Tensor;

/// What a sampler sees during one step from `sigmas[index]` to `sigmas[index + 1]`.
pub struct StepCtx<'a> {
    /// Step index, `0 .. steps`.
    pub index: usize,
    /// The whole grid (`steps + 1` levels ending in 0).
    pub sigmas: &'a [f64],
    /// The forward process, for samplers that step in its time `t` (Euler-Maruyama, PC).
    pub sde: &'a dyn Sde,
    /// Randomness, one generator per sample.
    pub noise: &'a mut dyn NoiseSource,
    /// Tensors a multistep sampler keeps between steps (emptied at the start of a run).
    pub history: &'a mut Vec<Tensor>,
    denoiser: &'a dyn Denoiser,
    nfe: &'a mut usize,
    /// The analytical first step is still to be taken ([`RunOptions::afs`]).
    afs: &'a mut bool,
}

impl StepCtx<'_> {
    /// Current level `sigma_i`.
    pub fn sigma(&self) -> f64 {
        self.sigmas[self.index]
    }
    /// Next level `sigma_{i+1}`.
    pub fn sigma_next(&self) -> f64 {
        self.sigmas[self.index + 1]
    }
    /// Number of steps in the run.
    pub fn steps(&self) -> usize {
        self.sigmas.len() - 1
    }
    /// Whether this step ends at sigma = 0.
    pub fn is_last(&self) -> bool {
        self.sigma_next() == 0.0
    }
    /// `D(x; sigma)`, counted as one network evaluation. With [`RunOptions::afs`] the run's
    /// first evaluation, where it is at the grid's first level, is the analytical first step
    /// instead: `D = x - sigma x / sqrt(1 + sigma^2)`, not counted.
    pub fn denoise(&mut self, x: &Tensor, sigma: f64) -> Result<Tensor> {
        if std::mem::take(self.afs) && self.index == 0 && sigma == self.sigmas[0] {
            return Ok(x - x * (sigma / (1.0 + sigma * sigma).sqrt()));
        }
        *self.nfe += 1;
        self.denoiser.denoise(x, sigma)
    }
    /// `D(x; sigma)` and the network's learned variance output, where it has one
    /// ([`Denoiser::denoise_with_variance`]), counted as one network evaluation.
    pub fn denoise_with_variance(
        &mut self,
        x: &Tensor,
        sigma: f64,
    ) -> Result<(Tensor, Option<Tensor>)> {
        // The variance output has no analytical form: no AFS here.
        *self.afs = false;
        *self.nfe += 1;
        self.denoiser.denoise_with_variance(x, sigma)
    }
    /// `D(x; sigma)` and the unconditional estimate `D_u` of a guided denoiser
    /// ([`Denoiser::denoise_guided`]; `D` itself for a denoiser without guidance), counted as one
    /// network evaluation. The analytical first step answers both with its `D`.
    pub fn denoise_guided(&mut self, x: &Tensor, sigma: f64) -> Result<(Tensor, Tensor)> {
        if std::mem::take(self.afs) && self.index == 0 && sigma == self.sigmas[0] {
            let d = x - x * (sigma / (1.0 + sigma * sigma).sqrt());
            return Ok((d.shallow_clone(), d));
        }
        *self.nfe += 1;
        let (d, u) = self.denoiser.denoise_guided(x, sigma)?;
        let u = u.unwrap_or_else(|| d.shallow_clone());
        Ok((d, u))
    }
    /// The ODE derivative `dx/dsigma = (x - D(x; sigma)) / sigma` (one evaluation).
    pub fn derivative(&mut self, x: &Tensor, sigma: f64) -> Result<Tensor> {
        let d = self.denoise(x, sigma)?;
        Ok((x - d) / sigma)
    }
}

/// A sampler: one step of its update, in the scaled space `x / s(t)` with noise level sigma.
pub trait Sampler {
    /// The registry name, e.g. `heun`.
    fn name(&self) -> &'static str;
    /// Advance `x` from `ctx.sigma()` to `ctx.sigma_next()`.
    fn step(&self, ctx: &mut StepCtx<'_>, x: Tensor) -> Result<Tensor>;
    /// The error its first step would report on the levels `sigmas` (ending in 0) of a grid it
    /// cannot run, without running it: for a caller that checks every grid before any work (an
    /// experiment). Ok by default.
    fn check_grid(&self, sigmas: &[f64]) -> Result<()> {
        let _ = sigmas;
        Ok(())
    }
    /// Whether the step also integrates the probability-flow ODE upwards (`sigma_next >
    /// sigma`), for [`invert`]: a deterministic step whose formulas hold for either sign of the
    /// step, as its inversion test measures. False by default.
    fn invertible(&self) -> bool {
        false
    }
    /// Exact inversion ([`invert_exact`]): for samplers whose state is a pair of tensors, the
    /// sample and a companion kept in `ctx.history[0]` after every step, and whose steps are
    /// invertible maps of that pair (EDICT, BDIA, O-BELM). `None` by default.
    fn exact_inverse(&self) -> Option<&dyn ExactInverse> {
        None
    }
}

/// The inverse of an exact-inversion sampler's steps (see [`Sampler::exact_inverse`]).
///
/// The sampler's state after step `i` is `(x, companion)`, `x` at `sigmas[i + 1]` and the
/// companion in `ctx.history[0]`; a run that starts with `ctx.history` empty starts from one
/// latent, a run given a companion ([`run_from_pair`]) from the pair.
pub trait ExactInverse {
    /// The companion of data `x` alone at the end of the grid (sigma = 0), where no sampling run
    /// left one: `ctx.index` is the last step.
    fn data_companion(&self, ctx: &mut StepCtx<'_>, x: &Tensor) -> Result<Tensor>;
    /// Undo step `ctx.index`: the state before it from the state after it, exactly (to
    /// rounding), with the same network evaluations the step made.
    fn unstep(
        &self,
        ctx: &mut StepCtx<'_>,
        x: Tensor,
        companion: Tensor,
    ) -> Result<(Tensor, Tensor)>;
    /// The first step [`ExactInverse::unstep`] undoes: 0, or 1 for a two-step recurrence whose
    /// first step is a one-step start (the latent pair is then the points at the top two levels).
    fn first_undone(&self) -> usize;
}

/// Progress after each step.
pub struct StepReport {
    pub index: usize,
    pub sigma: f64,
    pub sigma_next: f64,
    /// Network evaluations so far.
    pub nfe: usize,
}

/// Options of a run.
pub struct RunOptions {
    /// Check for NaN/inf every this many steps (each check synchronizes with the device);
    /// the final result is always checked. 0 checks only at the end.
    pub check_every: usize,
    /// The analytical first step (AFS; Zhou, Chen, Wang & Lyu 2024, "Fast ODE-based Sampling
    /// for Diffusion Models in Around 5 Steps", CVPR; zju-pi/diff-sampler
    /// `diff-solvers-main/solvers.py`, `afs=True`): the run's first denoiser evaluation, at the
    /// grid's first level, is replaced by the derivative `d = x / sqrt(1 + sigma^2)` (the
    /// noise of `x = x0 + sigma eps` when `|x0|` is negligible beside `sigma`), i.e.
    /// `D = x - sigma d`, saving one evaluation. Not for [`invert`].
    pub afs: bool,
}

impl Default for RunOptions {
    fn default() -> Self {
        RunOptions {
            check_every: 8,
            afs: false,
        }
    }
}

/// The result of a run.
pub struct Outcome {
    /// Samples at the grid's last level: sigma = 0 (data space) for [`run`], the top level
    /// for [`invert`].
    pub x: Tensor,
    /// Network evaluations used.
    pub nfe: usize,
    /// For an exact-inversion sampler ([`Sampler::exact_inverse`]), the companion of `x`: what
    /// [`invert_exact`] (after [`run`]) or [`run_from_pair`] (after [`invert_exact`]) takes
    /// back. `None` for the others.
    pub companion: Option<Tensor>,
}

pub(crate) fn all_finite(x: &Tensor) -> Result<bool> {
    Ok(x.f_isfinite()?.f_all()?.f_int64_value(&[])? != 0)
}

/// Run `sampler` over `sigmas` from `x`, which must already be at noise level `sigmas[0]` in the
/// scaled space (e.g. `sigmas[0] * z`). `observer` sees each step's report and new `x`.
#[allow(clippy::too_many_arguments)]
pub fn run(
    sampler: &dyn Sampler,
    denoiser: &dyn Denoiser,
    sde: &dyn Sde,
    sigmas: &[f64],
    x: Tensor,
    noise: &mut dyn NoiseSource,
    options: &RunOptions,
    observer: &mut dyn FnMut(&StepReport, &Tensor),
) -> Result<Outcome> {
    grid::validate(sigmas)?;
    walk(
        sampler, denoiser, sde, sigmas, x, None, noise, options, observer,
    )
}

/// [`run`] from the latent pair `(x, companion)` of an exact-inversion sampler, as
/// [`invert_exact`] returns it: with its companion the run reproduces the states the inversion
/// walked through (for a sampler whose first step is not undone, the first step returns the
/// companion, with no evaluation).
#[allow(clippy::too_many_arguments)]
pub fn run_from_pair(
    sampler: &dyn Sampler,
    denoiser: &dyn Denoiser,
    sde: &dyn Sde,
    sigmas: &[f64],
    x: Tensor,
    companion: Tensor,
    noise: &mut dyn NoiseSource,
    options: &RunOptions,
    observer: &mut dyn FnMut(&StepReport, &Tensor),
) -> Result<Outcome> {
    grid::validate(sigmas)?;
    let inverse = exact_of(sampler)?;
    check_pair(sampler, inverse, sigmas, &x, Some(&companion), options)?;
    walk(
        sampler,
        denoiser,
        sde,
        sigmas,
        x,
        Some(companion),
        noise,
        options,
        observer,
    )
}

/// What [`run_from_pair`] and [`invert_exact`] both refuse: the analytical first step (the
/// inversion's evaluations are the network's), a grid of no more steps than the first undone
/// (the pair's second point is after it), a companion of another shape.
fn check_pair(
    sampler: &dyn Sampler,
    inverse: &dyn ExactInverse,
    sigmas: &[f64],
    x: &Tensor,
    companion: Option<&Tensor>,
    options: &RunOptions,
) -> Result<()> {
    if options.afs {
        return Err(SolverError::Invalid(
            "the analytical first step (afs) replaces an evaluation that exact inversion makes with the network; it does not apply to a latent pair or to its inversion".into(),
        ));
    }
    let first = inverse.first_undone();
    if sigmas.len() - 1 <= first {
        return Err(SolverError::Invalid(format!(
            "exact inversion with {} needs at least {} steps (its latent pair holds the first step's end)",
            sampler.name(),
            first + 1
        )));
    }
    if let Some(c) = companion {
        if c.size() != x.size() {
            return Err(SolverError::Invalid(format!(
                "the companion latent has shape {:?}, the latent {:?}",
                c.size(),
                x.size()
            )));
        }
    }
    Ok(())
}

fn exact_of(sampler: &dyn Sampler) -> Result<&dyn ExactInverse> {
    sampler.exact_inverse().ok_or_else(|| {
        SolverError::Invalid(format!(
            "sampler {} has no exact inversion (edict, bdia and belm have: see \
             docs/samplers/README.md)",
            sampler.name()
        ))
    })
}

/// Exact inversion (Wallace, Gokul & Naik 2023, EDICT; Zhang, Lewis & Kleijn 2024, BDIA; Wang
/// et al. 2024, BELM): undo the steps of a sampling run on `sigmas` (the sampling grid, ending
/// in 0) from its end, the data `x`, back to the latent pair, which [`run_from_pair`] takes
/// back to `x` to rounding. `companion` is what the sampling run left ([`Outcome::companion`]);
/// for data alone (`None`) the sampler makes one ([`ExactInverse::data_companion`]).
/// `Outcome::x` is the latent at `sigmas[0]` and `Outcome::companion` its companion.
#[allow(clippy::too_many_arguments)]
pub fn invert_exact(
    sampler: &dyn Sampler,
    denoiser: &dyn Denoiser,
    sde: &dyn Sde,
    sigmas: &[f64],
    x: Tensor,
    companion: Option<Tensor>,
    noise: &mut dyn NoiseSource,
    options: &RunOptions,
    observer: &mut dyn FnMut(&StepReport, &Tensor),
) -> Result<Outcome> {
    grid::validate(sigmas)?;
    let inverse = exact_of(sampler)?;
    check_pair(sampler, inverse, sigmas, &x, companion.as_ref(), options)?;
    let steps = sigmas.len() - 1;
    let first = inverse.first_undone();
    if !all_finite(&x)? || !companion.as_ref().map_or(Ok(true), all_finite)? {
        return Err(SolverError::NonFinite {
            step: steps,
            sigma: 0.0,
        });
    }
    let mut nfe = 0usize;
    let mut afs = false;
    let mut history = Vec::new();
    let mut c = companion;
    let mut x = x;
    for index in (first..steps).rev() {
        let mut ctx = StepCtx {
            index,
            sigmas,
            sde,
            noise: &mut *noise,
            history: &mut history,
            denoiser,
            nfe: &mut nfe,
            afs: &mut afs,
        };
        // Data alone take their companion at the first step undone, the last one (sigma = 0).
        let given = match c.take() {
            Some(c) => c,
            None => inverse.data_companion(&mut ctx, &x)?,
        };
        let (x_before, c_before) = inverse.unstep(&mut ctx, x, given)?;
        let done = steps - index;
        let check =
            index == first || (options.check_every > 0 && done.is_multiple_of(options.check_every));
        if check && !(all_finite(&x_before)? && all_finite(&c_before)?) {
            return Err(SolverError::NonFinite {
                step: index,
                sigma: sigmas[index],
            });
        }
        (x, c) = (x_before, Some(c_before));
        observer(
            &StepReport {
                index,
                sigma: sigmas[index + 1],
                sigma_next: sigmas[index],
                nfe,
            },
            &x,
        );
    }
    // After undoing steps first.. the state is the one after step first - 1; with a one-step
    // start (first = 1) that is (x at sigmas[1], companion at sigmas[0]): the pair is its swap.
    // (check_pair leaves at least one step to undo.)
    let Some(mut c) = c else {
        return Err(SolverError::Invalid("no step to undo".into()));
    };
    if first == 1 {
        std::mem::swap(&mut x, &mut c);
    }
    Ok(Outcome {
        x,
        nfe,
        companion: Some(c),
    })
}

/// Run `sampler` up an increasing grid (`sigmas[0] > 0`, no level 0): the inversion of
/// sampling, which encodes `x` at noise level `sigmas[0]` (data taken as the solution at the
/// lowest level) into its point at `sigmas[last]` on the same probability-flow trajectory:
/// DDIM inversion (Song, Meng & Ermon 2021, Sec. 4.3; Dhariwal & Nichol 2021, App. F) with any
/// deterministic sampler whose step holds in both directions ([`Sampler::invertible`]); others
/// are an error. `Outcome::x` is the point at the top level.
#[allow(clippy::too_many_arguments)]
pub fn invert(
    sampler: &dyn Sampler,
    denoiser: &dyn Denoiser,
    sde: &dyn Sde,
    sigmas: &[f64],
    x: Tensor,
    noise: &mut dyn NoiseSource,
    options: &RunOptions,
    observer: &mut dyn FnMut(&StepReport, &Tensor),
) -> Result<Outcome> {
    grid::validate_ascending(sigmas)?;
    if options.afs {
        return Err(SolverError::Invalid(
            "the analytical first step (afs) replaces the first evaluation at the top of a sampling grid; it does not apply to inversion".into(),
        ));
    }
    if !sampler.invertible() {
        return Err(SolverError::Invalid(format!(
            "sampler {} cannot run backwards (inversion needs a deterministic sampler whose \
             steps hold upwards: see docs/samplers/README.md)",
            sampler.name()
        )));
    }
    walk(
        sampler, denoiser, sde, sigmas, x, None, noise, options, observer,
    )
}

/// The loop of [`run`], [`run_from_pair`] and [`invert`], over a validated grid.
#[allow(clippy::too_many_arguments)]
fn walk(
    sampler: &dyn Sampler,
    denoiser: &dyn Denoiser,
    sde: &dyn Sde,
    sigmas: &[f64],
    x: Tensor,
    companion: Option<Tensor>,
    noise: &mut dyn NoiseSource,
    options: &RunOptions,
    observer: &mut dyn FnMut(&StepReport, &Tensor),
) -> Result<Outcome> {
    if !all_finite(&x)? || !companion.as_ref().map_or(Ok(true), all_finite)? {
        return Err(SolverError::NonFinite {
            step: 0,
            sigma: sigmas[0],
        });
    }
    let mut nfe = 0usize;
    let mut afs = options.afs;
    let mut history: Vec<Tensor> = companion.into_iter().collect();
    let mut x = x;
    let steps = sigmas.len() - 1;
    for index in 0..steps {
        let mut ctx = StepCtx {
            index,
            sigmas,
            sde,
            noise: &mut *noise,
            history: &mut history,
            denoiser,
            nfe: &mut nfe,
            afs: &mut afs,
        };
        x = sampler.step(&mut ctx, x)?;
        let last = index + 1 == steps;
        let check = last || (options.check_every > 0 && (index + 1) % options.check_every == 0);
        if check && !all_finite(&x)? {
            return Err(SolverError::NonFinite {
                step: index + 1,
                sigma: sigmas[index + 1],
            });
        }
        observer(
            &StepReport {
                index,
                sigma: sigmas[index],
                sigma_next: sigmas[index + 1],
                nfe,
            },
            &x,
        );
    }
    let companion = match sampler.exact_inverse() {
        Some(_) => history.into_iter().next(),
        None => None,
    };
    Ok(Outcome { x, nfe, companion })
}
