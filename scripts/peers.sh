#!/usr/bin/env bash
# The peer benchmark: scoreflow against k-diffusion on PyTorch, same models, same grid, same run
# (experiments/peers/peers.py; docs/performance.md). Usage:
#
#   scripts/peers.sh [OUT_DIR] [peers.py options, e.g. --unet-batches 1,64 --modes eager]
#
# It builds scoreflow, installs k-diffusion and what its sampling module imports into .peers/site
# (from PyPI, or from the wheels in .whl/ where there is no network), writes the 32x32x3 U-Net's
# checkpoint (experiments/peers/unet32.toml) and runs peers.py: sampling with the mixture, that
# U-Net and the trained digits U-Net; training with the gmm8 MLP and that U-Net, each at its
# config's batch (--train-batch N overrides; --parts sample or --parts train runs one half).
# On the GPU machine use scripts/gpu-check.sh, which runs the same with a prebuilt binary.
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-out/peers}"
shift || true
source scripts/env.sh
cargo build --release --quiet
bin=target/release/scoreflow
py="${VIRTUAL_ENV:+$VIRTUAL_ENV/bin/}python3"
[ -x "$py" ] || py=python3
scripts/peers-setup.sh "$py" "$bin"
export PYTHONPATH="$PWD/.peers/site${PYTHONPATH:+:$PYTHONPATH}"
"$py" experiments/peers/peers.py --scoreflow "$bin" \
  --checkpoint .peers/unet32/checkpoint.safetensors --checkpoint runs/digits/checkpoint.safetensors \
  --train experiments/gmm8-train.toml --train experiments/peers/unet32.toml --out "$out" "$@"
