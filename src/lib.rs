//! scoreflow: continuous-time diffusion models on libtorch.
//!
//! The solver core (SDEs, grids, denoisers, samplers) lives in the `scoreflow-solvers` crate,
//! re-exported here as [`solvers`]. This crate adds models named on the command line, file
//! formats and the commands.

// `a = a + b` on tensors is kept on purpose: `a += b` is tch's in-place `add_`, which writes into
// storage other handles may share. `!(x > 0.0)` is kept on purpose too: it also rejects NaN.
#![allow(clippy::assign_op_pattern, clippy::neg_cmp_op_on_partial_ord)]

pub use scoreflow_solvers as solvers;

pub mod autocast;
pub mod bench;
pub mod card;
pub mod checkpoint;
pub mod compare;
pub mod cuda;
pub mod data;
pub mod device;
pub mod experiment;
pub mod fid;
pub mod image;
pub mod job;
pub mod loss;
pub mod metrics;
pub mod model;
pub mod nll;
pub mod nn;
pub mod npy;
pub mod optim;
pub mod optimize_grid;
pub mod plot;
pub mod posthoc;
pub mod precond;
mod shim;
pub mod summary;
pub mod train;
