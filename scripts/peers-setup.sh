#!/usr/bin/env bash
# Prepares the peer benchmark: k-diffusion, torchsde and trampoline (and, where the python lacks
# them, what k_diffusion/sampling.py imports: scipy, torchdiffeq, tqdm; safetensors to read
# checkpoints) into .peers/site, then, given the binary, the 32x32x3 U-Net checkpoint.
# Usage: peers-setup.sh PYTHON [SCOREFLOW]
set -euo pipefail
py="$1"; bin="${2:-}"
cd "$(dirname "$0")/.."
mkdir -p .peers
wheels=(k-diffusion==0.1.1.post1 torchsde==0.2.6 trampoline==0.1.2)
need=()
for m in scipy:scipy torchdiffeq:torchdiffeq tqdm:tqdm safetensors:safetensors; do
  PYTHONPATH=.peers/site "$py" -c "import ${m%%:*}" 2>/dev/null || need+=("${m#*:}")
done
if ! PYTHONPATH=.peers/site "$py" -c "import torchsde, trampoline" 2>/dev/null ||
  [ ! -d .peers/site/k_diffusion ] || [ ${#need[@]} -gt 0 ]; then
  if [ -d .whl ]; then
    "$py" -m pip install -q --disable-pip-version-check --no-index --no-deps --no-compile \
      --target .peers/site .whl/*.whl
  else
    "$py" -m pip install -q --disable-pip-version-check --no-deps --target .peers/site \
      "${wheels[@]}" "${need[@]}"
  fi
fi
if [ -n "$bin" ] && [ ! -f .peers/unet32/checkpoint.safetensors ]; then
  "$py" -c "import numpy as np; np.save('.peers/unet32-data.npy', (0.5 * np.random.default_rng(0).standard_normal((64, 3, 32, 32))).astype('float32'))"
  "$bin" train experiments/peers/unet32.toml >/dev/null
fi
