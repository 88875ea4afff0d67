//! Errors of the solver crate. Every variant carries the data needed to say what went wrong.

use thiserror::Error;

/// A number in a message: as Rust writes it for ordinary magnitudes, in exponent form outside
/// [1e-4, 1e16) so that `1e300` is not written out in 301 digits.
#[derive(Clone, Copy, Debug)]
pub struct Num(pub f64);

impl std::fmt::Display for Num {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let a = self.0.abs();
        if a == 0.0 || !a.is_finite() || (1e-4..1e16).contains(&a) {
            write!(f, "{}", self.0)
        } else {
            write!(f, "{:e}", self.0)
        }
    }
}

/// Result alias for the solver crate.
pub type Result<T, E = SolverError> = std::result::Result<T, E>;

#[derive(Debug, Error)]
pub enum SolverError {
    #[error("steps must be at least 1, got {0}")]
    ZeroSteps(usize),
    #[error(
        "sigma_min ({}) must be positive and smaller than sigma_max ({})",
        Num(*.sigma_min),
        Num(*.sigma_max)
    )]
    SigmaRange { sigma_min: f64, sigma_max: f64 },
    #[error("invalid parameter {name} = {}: {why}", Num(*.value))]
    Parameter {
        name: &'static str,
        value: f64,
        why: &'static str,
    },
    #[error("unknown sampler '{name}' (known: {known})")]
    UnknownSampler { name: String, known: String },
    #[error("the step grid is not valid: {0}")]
    Grid(String),
    #[error(
        "non-finite values (NaN or inf) in the samples at step {step} (sigma = {})",
        Num(*.sigma)
    )]
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

#[cfg(test)]
mod tests {
    use super::Num;

    #[test]
    fn numbers_in_messages_use_exponents_only_at_the_extremes() {
        let shown: Vec<String> = [0.002, 80.0, 1e300, -1e300, 1e-320, 0.0, f64::INFINITY]
            .iter()
            .map(|v| Num(*v).to_string())
            .collect();
        assert_eq!(
            shown,
            ["0.002", "80", "1e300", "-1e300", "1e-320", "0", "inf"]
        );
    }
}
