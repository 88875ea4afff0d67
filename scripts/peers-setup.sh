#!/usr/bin/env bash
# Prepares the peer benchmark: k-diffusion, torchsde and trampoline (and, where the python lacks
# them, what k_diffusion/sampling.py imports: scipy, torchdiffeq, tqdm; safetensors to read
# checkpoints) into .peers/site, diffusers into .peers/diffusers, then, given the binary, the
# 32x32x3 U-Net checkpoint.
# Usage: peers-setup.sh PYTHON [SCOREFLOW]
# PEERS_OFFLINE=1: install only from .whl/ (no network), without diffusers.
set -euo pipefail
py="$1"; bin="${2:-}"
cd "$(dirname "$0")/.."
mkdir -p .peers
wheels=(k-diffusion==0.1.1.post1 torchsde==0.2.6 trampoline==0.1.2)
need=()
for m in scipy:scipy torchdiffeq:torchdiffeq tqdm:tqdm safetensors:safetensors; do
  PYTHONPATH=".peers/site${PYTHONPATH:+:$PYTHONPATH}" "$py" -c "import ${m%%:*}" 2>/dev/null || need+=("${m#*:}")
done
if ! PYTHONPATH=".peers/site${PYTHONPATH:+:$PYTHONPATH}" "$py" -c "import torchsde, trampoline" 2>/dev/null ||
  [ ! -d .peers/site/k_diffusion ] || [ ${#need[@]} -gt 0 ]; then
  pip=("$py" -m pip install -q --disable-pip-version-check --no-deps --target .peers/site)
  if [ -n "${PEERS_OFFLINE:-}" ]; then
    # The GPU machine (gpu-check.sh): no network; only the wheels gpu-prepare.sh downloaded.
    pip+=(--no-index --no-compile --find-links .whl)
  elif [ -d .whl ]; then
    pip+=(--find-links .whl)
    [ ${#need[@]} -eq 0 ] && pip+=(--no-index --no-compile)
  fi
  "${pip[@]}" "${wheels[@]}" "${need[@]}"
fi
# diffusers (with its dependencies, in a folder of its own that peers.py appends to sys.path) for
# the DDPM and DDIM checks; best effort: without it (offline, say) those checks are skipped.
if [ -n "${PEERS_OFFLINE:-}" ]; then
  echo "peers-setup: offline, diffusers not installed; the diffusers peer checks will be skipped" >&2
elif ! PYTHONPATH=.peers/diffusers "$py" -c "import diffusers" 2>/dev/null; then
  rm -rf .peers/diffusers
  "$py" -m pip install -q --disable-pip-version-check --target .peers/diffusers diffusers==0.42.1 ||
    echo "peers-setup: could not install diffusers; the DDPM and DDIM peer checks will be skipped" >&2
fi
if [ -n "$bin" ] && [ ! -f .peers/unet32/checkpoint.safetensors ]; then
  "$py" -c "import numpy as np; np.save('.peers/unet32-data.npy', (0.5 * np.random.default_rng(0).standard_normal((64, 3, 32, 32))).astype('float32'))"
  "$bin" train experiments/peers/unet32.toml >/dev/null
fi
