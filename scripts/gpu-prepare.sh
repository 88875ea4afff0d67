#!/usr/bin/env bash
# Prepares a GPU check for a machine that has PyTorch but no cargo and no network (the device
# tool's machines): builds the release binary and the test binaries with CUDA tests and packs
# them into device-bin/bin.tar.xz (xz: the device call carries at most 64 MiB together with the
# repo's tracked files, and the plain binaries are 25 MB), and downloads the peer benchmark's
# wheels into .whl/. Both folders are git-ignored; name them in the device call's `carry`, then
# run scripts/gpu-check.sh there. Ends by checking what the call would carry against the limit.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh >/dev/null
cargo build --release --quiet
rm -rf device-bin
mkdir -p device-bin/stage .whl
cp target/release/scoreflow device-bin/stage/
# Test executables (their paths to the binary and the repo are absolute; gpu-check.sh links them).
for t in cli models cards; do
  exe=$(cargo test --release --no-run --message-format=json --test "$t" 2>/dev/null |
    python3 -c 'import json,sys; print([m["executable"] for m in map(json.loads, sys.stdin) if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["kind"] == ["test"] and m["target"]["name"] == sys.argv[1]][-1])' "$t")
  cp "$exe" "device-bin/stage/test-$t"
done
echo "$PWD" > device-bin/built-at
# Packed with python's tarfile, which gpu-check.sh unpacks with (the device may lack xz).
python3 - <<'PY'
import os, tarfile
with tarfile.open("device-bin/bin.tar.xz.partial", "w:xz", preset=9) as t:
    for f in sorted(os.listdir("device-bin/stage")):
        t.add(os.path.join("device-bin/stage", f), arcname=f)
os.replace("device-bin/bin.tar.xz.partial", "device-bin/bin.tar.xz")
PY
rm -rf device-bin/stage
python3 -m pip download -q --disable-pip-version-check --no-deps -d .whl \
  k-diffusion==0.1.1.post1 torchsde==0.2.6 trampoline==0.1.2
python3 scripts/travel-size.py device-bin .whl
