//! Helpers shared by the integration tests that train.

use scoreflow::train::{self, RunOpts, TrainConfig};

/// Train `cfg` to the end without a progress bar.
pub fn train_quietly(cfg: &TrainConfig) -> train::Report {
    train::run(
        cfg,
        &RunOpts {
            quiet: true,
            ..Default::default()
        },
    )
    .unwrap()
}
