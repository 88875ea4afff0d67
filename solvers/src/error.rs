//! Errors of the solver crate. Every variant carries the data needed to say what went wrong.

use thiserror::Error;

/// Result alias for the solver crate.
pub type Result<T, E = SolverError> = std::result::Result<T, E>;

#[derive(Debug, Error)]
pub enum SolverError {
    #[error("steps must be at least 1, got {0}")]
    ZeroSteps(usize),
    #[error("sigma_min ({sigma_min}) must be positive and smaller than sigma_max ({sigma_max})")]
    SigmaRange { sigma_min: f64, sigma_max: f64 },
    #[error("invalid parameter {name} = {value}: {why}")]
    Parameter {
        name: &'static str,
        value: f64,
        why: &'static str,
    },
    #[error("unknown sampler '{name}' (known: {known})")]
    UnknownSampler { name: String, known: String },
    #[error("the step grid is not valid: {0}")]
    Grid(String),
    #[error("non-finite values (NaN or inf) in the samples at step {step} (sigma = {sigma})")]
    NonFinite { step: usize, sigma: f64 },
    #[error("shape mismatch: {0}")]
    Shape(String),
    #[error("{0}")]
    Invalid(String),
    #[error("invalid model: {0}")]
    Model(String),
    #[error("libtorch: {0}")]
    Torch(#[from] tch::TchError),
}
