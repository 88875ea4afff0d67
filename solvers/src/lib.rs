//! scoreflow-solvers: forward SDEs, step grids, the denoiser interface and the sampler library.
//!
//! A sampler knows a denoiser `D(x; sigma)`, a starting `x` and a decreasing grid of noise levels
//! ending at 0. The SDE supplies the grid's placement, the prior's scale and, for the samplers
//! that step in its time (Euler-Maruyama, predictor-corrector), `s(t)` and `sigma(t)`. No
//! networks and no file formats live here.

// `a = a + b` on tensors is kept on purpose: `a += b` is tch's in-place `add_`, which writes into
// storage other handles may share. `!(x > 0.0)` is kept on purpose too: it also rejects NaN.
#![allow(clippy::assign_op_pattern, clippy::neg_cmp_op_on_partial_ord)]

pub mod denoiser;
pub mod driver;
pub mod error;
pub mod gits;
pub mod grid;
pub mod noise;
pub mod oss;
pub mod reference;
pub mod samplers;
pub mod sde;

pub use denoiser::{
    thresholded, Cfg, Counted, Denoiser, GaussianDenoiser, GaussianMixture, Threshold, Thresholded,
};
pub use driver::{
    invert, invert_exact, run, run_from_pair, ExactInverse, Outcome, RunOptions, Sampler, StepCtx,
    StepReport,
};
pub use error::{Num, Result, SolverError};
pub use grid::GridKind;
pub use noise::{BrownianNoise, NoiseSource};
pub use samplers::SamplerSpec;
pub use sde::Sde;
