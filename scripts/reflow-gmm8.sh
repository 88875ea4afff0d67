#!/usr/bin/env bash
# Reflow on the 8-mode ring: the (noise, sample) pairs of the rectified flow runs/gmm8-flow
# (trained first if missing), then a second flow trained on them (experiments/gmm8-reflow.toml).
# Usage: bash scripts/reflow-gmm8.sh
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh >/dev/null
cargo build --release --quiet
B=target/release/scoreflow
[ -f runs/gmm8-flow/checkpoint.safetensors ] || $B train experiments/gmm8-flow.toml
mkdir -p runs/gmm8-reflow-pairs
$B sample --checkpoint runs/gmm8-flow/checkpoint.safetensors --solver heun --steps 64 --num 20000 --seed 1 \
    --out runs/gmm8-reflow-pairs/x.npy --save-noise runs/gmm8-reflow-pairs/z.npy
$B train experiments/gmm8-reflow.toml
