#!/usr/bin/env bash
# The whole GPU check, run on the device machine from the repo root after scripts/gpu-prepare.sh
# here (carry: device-bin, .whl). Writes everything under ${OUT:-out/gpu}:
#   tests.log     the CUDA tests (CPU vs CUDA samples, CUDA graphs vs eager, the Brownian tree
#                 on the device vs the host)
#   bench-*.json  scoreflow bench: the mixture at N = 4096 and the 32x32x3 U-Net at batch 1, 64,
#                 256, each with CUDA graphs on and off
#   train/        training: scoreflow bench-train and the same step in PyTorch, MLP and U-Net at
#                 batch 512, float32 and bf16, samples/s and peak memory (train/peers.json)
#   peers/        the sampling peer benchmark against k-diffusion (eager, torch.compile, CUDA graphs)
# Usage: scripts/gpu-check.sh [tests] [bench] [train] [peers]   (default: all four)
# PEERS_ARGS adds options to peers.py, e.g. PEERS_ARGS="--unet-batches 1,64 --modes eager,reduce-overhead"
# to fit one device call.
set -uo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-out/gpu}"
mkdir -p "$out"
export LD_LIBRARY_PATH="$(python3 -c 'import torch, os; print(os.path.dirname(torch.__file__))')/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
bin="$PWD/device-bin/scoreflow"
parts="${*:-tests bench train peers}"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$out/gpu.txt"
# The test binaries look for the binary and the repo where they were built.
built="$(cat device-bin/built-at)"
if [ "$built" != "$PWD" ] && [ ! -e "$built" ]; then
  mkdir -p "$(dirname "$built")" && ln -s "$PWD" "$built"
fi
mkdir -p "$built/target/release"
[ -e "$built/target/release/scoreflow" ] || ln -s "$bin" "$built/target/release/scoreflow"

# The peer benchmark's wheels (from .whl/) and the 32x32x3 U-Net checkpoint.
scripts/peers-setup.sh python3 "$bin"
export PYTHONPATH="$PWD/.peers/site${PYTHONPATH:+:$PYTHONPATH}"

for part in $parts; do
  case "$part" in
  tests)
    { device-bin/test-cli cuda --nocapture; device-bin/test-models cuda --nocapture; device-bin/test-cards cuda --nocapture; } 2>&1 | tee "$out/tests.log"
    ;;
  bench)
    : > "$out/bench.log"
    for g in auto off; do
      SCOREFLOW_CUDA_GRAPHS=$g "$bin" bench --denoiser builtin:gmm8 --num 4096 --steps 18 --device cuda \
        --json "$out/bench-gmm8-graphs-$g.json" | tee -a "$out/bench.log"
    done
    for g in auto off; do
      SCOREFLOW_CUDA_GRAPHS=$g "$bin" bench --checkpoint .peers/unet32/checkpoint.safetensors --num 1,64,256 \
        --steps 18 --solvers euler,heun,dpmpp-2m,dpm2,lms,dpmpp-3m,ddim,euler-ancestral --device cuda \
        --json "$out/bench-unet32-graphs-$g.json" | tee -a "$out/bench.log"
    done
    ;;
  train)
    # scoreflow bench-train, then the same training step in PyTorch (eager, fused optimizer,
    # torch.compile): the MLP and the 32x32x3 U-Net at batch 512, float32 and bf16.
    PYTHONUNBUFFERED=1 python3 experiments/peers/peers.py --scoreflow "$bin" --parts train \
      --train experiments/gmm8-train.toml --train experiments/peers/unet32.toml --train-batch 512 \
      --train-steps 30 --out "$out/train" 2>&1 | tee "$out/train.log"
    ;;
  peers)
    PYTHONUNBUFFERED=1 python3 experiments/peers/peers.py --scoreflow "$bin" --parts sample \
      --checkpoint .peers/unet32/checkpoint.safetensors --out "$out/peers" ${PEERS_ARGS:-} 2>&1 | tee "$out/peers.log"
    ;;
  esac
done
