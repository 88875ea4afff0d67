#!/usr/bin/env bash
# The main job: the gmm2d experiment (10 samplers x 6 step counts x 3 seeds on the exact 2-D
# 8-mode mixture), ending with the path of its quality-vs-NFE plot. Installs libtorch on first use.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
cargo build --release --locked --bin scoreflow
./target/release/scoreflow run experiments/gmm2d.toml "$@"
