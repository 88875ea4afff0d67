#!/usr/bin/env bash
# The main job: compare samplers on the built-in 2-D 8-mode Gaussian mixture, print the table
# of error vs NFE and draw the plot. Installs libtorch on first use.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
cargo build --release --locked --bin scoreflow
./target/release/scoreflow compare --out-dir out/compare "$@"
