#!/usr/bin/env bash
# The whole GPU check, sized for one device call (at most 10 minutes; a session has 15 minutes of
# device time, a machine's start included), run on the device machine from the repo root after
# scripts/gpu-prepare.sh here (carry: device-bin, .whl; timeout_s 600). Parts, in this order:
#   tests  the CUDA tests (CPU vs CUDA samples, CUDA graphs vs eager, the Brownian tree on the
#          device vs the host)                                           -> tests.log
#   bench  scoreflow bench: the mixture at N = 4096 and the 32x32x3 U-Net at batch 1, 64, 256,
#          each with CUDA graphs on and off                              -> bench-*.json, bench.log
#   peers  the sampling peer benchmark against k-diffusion (eager and torch.compile with CUDA
#          graphs; PEERS_ARGS adds or overrides peers.py options)        -> peers/peers.json, peers.log
#   train  training: scoreflow bench-train and the same step in PyTorch (eager, fused optimizer),
#          MLP and U-Net at batch 512, float32 and bf16, samples/s and peak memory
#                                                                        -> train/peers.json, train.log
# Usage: scripts/gpu-check.sh [tests] [bench] [peers] [train]   (default: all four)
# Every part runs under a cap (GPU_CHECK_CAPS, seconds per part, "tests=150 bench=120 ..."),
# and all of them within GPU_CHECK_BUDGET seconds (default 520): a part that overruns is
# stopped, and what it wrote so far is kept (peers.py rewrites its peers.json after every
# measurement). Results go to out/gpu; where OUT is set (the device call's $OUT), they are also
# packed, after every part, into $OUT/gpu-check.tar.gz, with $OUT/summary.txt beside it (a call
# brings back at most 8 files). Unpack here with `tar -xzf gpu-check.tar.gz -C out/gpu`. The
# summary ends with issue 5's targets, met or missed (scripts/gpu-targets.py).
# Before the parts, a smoke test (the mixture, 2 Euler steps on the device): where it fails the
# check stops at once, exit code 3, with smoke.log in the summary.
# GPU_CHECK_DEVICE=cpu GPU_CHECK_QUICK=1 runs the same plumbing on the CPU with tiny sizes (a dry
# run of this script away from a GPU; the numbers mean nothing).
set -uo pipefail
cd "$(dirname "$0")/.."
res=out/gpu
dev="${GPU_CHECK_DEVICE:-cuda}"
quick="${GPU_CHECK_QUICK:-}"
bin="$PWD/device-bin/scoreflow"
torch_dir="$(python3 -c 'import torch, os; print(os.path.dirname(torch.__file__))' 2>/dev/null)" || {
  echo "gpu-check: python3 cannot import torch (the device's python has it; here, source scripts/env.sh)" >&2
  exit 2
}
export LD_LIBRARY_PATH="$torch_dir/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export PYTHONPATH="$PWD/.peers/site${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1

if [ "${1:-}" = "--part" ]; then
  # One part, run by the loop below under its time cap.
  if [ -n "$quick" ]; then
    gmm=(--num 64 --steps 4 --reps 1) unet=(--num 1,2 --steps 4 --reps 1 --solvers euler,heun)
    peers=(--unet-batches 1 --mixture-batch 64 --steps 4 --reps 1 --modes eager)
    train=(--train-batch 16 --train-steps 2 --train-precisions float32)
  else
    gmm=(--num 4096 --steps 18) unet=(--num 1,64,256 --steps 18 --solvers euler,heun,dpmpp-2m,dpm2,lms,dpmpp-3m,ddim,euler-ancestral)
    peers=(--modes eager,reduce-overhead)
    train=(--train-batch 512 --train-steps 30)
  fi
  fail=0
  case "$2" in
  tests)
    # The filter picks the tests with CUDA in their names; each compares with the CPU itself.
    # One test at a time: a CUDA graph capture must not meet another thread's CUDA work.
    {
      st=0
      for t in cli models cards; do device-bin/test-$t cuda --nocapture --test-threads 1 || st=1; done
      exit $st
    } 2>&1 | tee "$res/tests.log" || fail=1
    # The tests pass with a printed reason where they see no GPU: here that is a failure.
    if [ "$dev" = cuda ] && grep -q "no CUDA" "$res/tests.log"; then
      echo "gpu-check: the test binaries saw no CUDA device (libtorch_cuda not loaded?)" | tee -a "$res/tests.log"
      fail=1
    fi
    ;;
  bench)
    for g in auto off; do
      SCOREFLOW_CUDA_GRAPHS=$g "$bin" bench --denoiser builtin:gmm8 "${gmm[@]}" --device "$dev" \
        --json "$res/bench-gmm8-graphs-$g.json" 2>&1 | tee -a "$res/bench.log" || fail=1
    done
    for g in auto off; do
      SCOREFLOW_CUDA_GRAPHS=$g "$bin" bench --checkpoint .peers/unet32/checkpoint.safetensors "${unet[@]}" \
        --device "$dev" --json "$res/bench-unet32-graphs-$g.json" 2>&1 | tee -a "$res/bench.log" || fail=1
    done
    ;;
  peers)
    # The same samples are checked for the timed samplers only (the full check runs on the CPU
    # in the test suite; the CUDA tests above compare CUDA with the CPU).
    python3 experiments/peers/peers.py --scoreflow "$bin" --parts sample --device "$dev" \
      --checkpoint .peers/unet32/checkpoint.safetensors --check-samplers euler,heun,dpmpp-2m \
      "${peers[@]}" --out "$res/peers" ${PEERS_ARGS:-} 2>&1 | tee "$res/peers.log" || fail=1
    ;;
  train)
    python3 experiments/peers/peers.py --scoreflow "$bin" --parts train --device "$dev" \
      --train experiments/gmm8-train.toml --train experiments/peers/unet32.toml --train-modes eager,eager-fused \
      "${train[@]}" --out "$res/train" ${TRAIN_ARGS:-} 2>&1 | tee "$res/train.log" || fail=1
    ;;
  *) echo "gpu-check: unknown part $2 (tests, bench, peers, train)" >&2; exit 2 ;;
  esac
  exit $fail
fi

budget="${GPU_CHECK_BUDGET:-520}"
declare -A cap=([tests]=150 [bench]=120 [peers]=200 [train]=150)
for kv in ${GPU_CHECK_CAPS:-}; do
  k=${kv%%=*} v=${kv#*=}
  if [ -z "${cap[$k]:-}" ] || ! [[ "$v" =~ ^[1-9][0-9]*$ ]]; then
    echo "gpu-check: GPU_CHECK_CAPS takes PART=SECONDS (parts: tests, bench, peers, train), got '$kv'" >&2
    exit 2
  fi
  cap[$k]=$v
done
if ! [[ "$budget" =~ ^[1-9][0-9]*$ ]]; then
  echo "gpu-check: GPU_CHECK_BUDGET must be a whole number of seconds, got '$budget'" >&2
  exit 2
fi
parts="${*:-tests bench peers train}"
for p in $parts; do
  [ -n "${cap[$p]:-}" ] || { echo "gpu-check: unknown part $p (tests, bench, peers, train)" >&2; exit 2; }
done
t0=$SECONDS
rm -rf "$res"
mkdir -p "$res"
summarize() {
  {
    cat "$res/gpu.txt" "$res/parts.txt" 2>/dev/null
    grep -q "smoke: failed" "$res/parts.txt" 2>/dev/null && tail -n 20 "$res/smoke.log"
    [ -f "$res/tests.log" ] && grep -E "^test .* \.\.\. |^test result|skipped|no CUDA" "$res/tests.log"
    [ -f "$res/bench.log" ] && cat "$res/bench.log"
    [ -f "$res/peers.log" ] && tail -n 40 "$res/peers.log"
    [ -f "$res/train.log" ] && tail -n 30 "$res/train.log"
    python3 scripts/gpu-targets.py "$res"
  } > "$res/summary.txt"
  if [ -n "${OUT:-}" ]; then
    mkdir -p "$OUT"
    tar -czf "$OUT/gpu-check.tar.gz.partial" -C "$res" . && mv -f "$OUT/gpu-check.tar.gz.partial" "$OUT/gpu-check.tar.gz"
    cp "$res/summary.txt" "$OUT/summary.txt"
  fi
}
{
  if [ "$dev" = cuda ]; then nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv; else echo "device: $dev (a dry run)"; fi
  echo "budget ${budget} s; caps: $(for p in $parts; do printf '%s=%s ' "$p" "${cap[$p]}"; done)"
} 2>&1 | tee "$res/gpu.txt"

# The binaries, packed by gpu-prepare.sh (python's tarfile: the device may lack xz).
if [ ! -x device-bin/scoreflow ]; then
  python3 - <<'PY' || { echo "gpu-check: cannot unpack device-bin/bin.tar.xz (run scripts/gpu-prepare.sh and carry device-bin)" | tee -a "$res/parts.txt"; summarize; exit 2; }
import tarfile
with tarfile.open("device-bin/bin.tar.xz") as t:
    try:
        t.extractall("device-bin", filter="data")
    except TypeError:  # a python without extraction filters
        t.extractall("device-bin")
PY
fi
# The test binaries look for the binary and the repo where they were built.
built="$(cat device-bin/built-at)"
if [ "$built" != "$PWD" ] && [ ! -e "$built" ]; then
  mkdir -p "$(dirname "$built")" && ln -s "$PWD" "$built"
fi
mkdir -p "$built/target/release"
[ -e "$built/target/release/scoreflow" ] || ln -s "$bin" "$built/target/release/scoreflow"
# The peer benchmark's wheels (from .whl/, offline) and the 32x32x3 U-Net checkpoint.
s=$SECONDS
if PEERS_OFFLINE=1 scripts/peers-setup.sh python3 "$bin" 2>&1 | tee "$res/setup.log"; then
  echo "setup: ok in $((SECONDS - s)) s" | tee -a "$res/parts.txt"
else
  echo "setup: failed in $((SECONDS - s)) s (setup.log)" | tee -a "$res/parts.txt"
fi

# A quick look first: where the binary cannot sample on the device, nothing below can, so stop
# at once and keep the session's device time for a second call.
s=$SECONDS
if timeout -k 5 90 "$bin" bench --denoiser builtin:gmm8 --num 64 --steps 2 --solvers euler --reps 1 \
  --device "$dev" > "$res/smoke.log" 2>&1; then
  echo "smoke: ok in $((SECONDS - s)) s" | tee -a "$res/parts.txt"
else
  echo "smoke: failed in $((SECONDS - s)) s, nothing else run (smoke.log)" | tee -a "$res/parts.txt"
  cat "$res/smoke.log"
  summarize
  exit 3
fi

for p in $parts; do
  left=$((budget - (SECONDS - t0)))
  t=$(( cap[$p] < left ? cap[$p] : left ))
  if [ "$left" -lt 15 ]; then
    echo "$p: not run, ${left} s of the ${budget} s budget left" | tee -a "$res/parts.txt"
    continue
  fi
  s=$SECONDS
  timeout -k 5 "$t" "$0" --part "$p"
  rc=$?
  case $rc in
  0) how="ok" ;;
  124 | 137) how="stopped at its cap of ${t} s (what it wrote so far is kept)" ;;
  *) how="failed with exit code $rc" ;;
  esac
  echo "$p: $how in $((SECONDS - s)) s" | tee -a "$res/parts.txt"
  summarize
done
summarize
echo "=== summary (out/gpu/summary.txt) ==="
cat "$res/summary.txt"
