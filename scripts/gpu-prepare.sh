#!/usr/bin/env bash
# Prepares a GPU check for a machine that has PyTorch but no cargo and no network (the device
# tool's machines): builds the release binary and the test binaries with CUDA tests into
# device-bin/, and downloads the peer benchmark's wheels into .whl/. Both folders are git-ignored;
# name them in the device call's `carry`, then run scripts/gpu-check.sh there.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
cargo build --release --quiet
mkdir -p device-bin .whl
cp target/release/scoreflow device-bin/
# Test executables (their paths to the binary and the repo are absolute; gpu-check.sh links them).
for t in cli models cards; do
  exe=$(cargo test --release --no-run --message-format=json --test "$t" 2>/dev/null |
    python3 -c 'import json,sys; print([m["executable"] for m in map(json.loads, sys.stdin) if m.get("reason") == "compiler-artifact" and m.get("executable")][-1])')
  cp "$exe" "device-bin/test-$t"
done
echo "$PWD" > device-bin/built-at
python3 -m pip download -q --disable-pip-version-check --no-deps -d .whl \
  k-diffusion==0.1.1.post1 torchsde==0.2.6 trampoline==0.1.2
du -sh device-bin .whl
