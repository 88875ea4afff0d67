#!/usr/bin/env python3
"""Issue 5's targets read off a GPU check's results (scripts/gpu-check.sh; its folder, out/gpu,
or an unpacked $OUT/gpu-check.tar.gz): one line per target with the measured values and
"met", "missed" or "not measured" (a part that did not run or a row that is missing).
Usage: scripts/gpu-targets.py [DIR]   (default out/gpu)"""
import json
import os
import sys

DETERMINISTIC = {"euler", "heun", "dpmpp-2m", "dpm2", "lms", "dpmpp-3m", "ddim"}


def load(d, name):
    p = os.path.join(d, name)
    if not os.path.exists(p):
        return None
    try:
        with open(p) as f:
            return json.load(f)
    except (OSError, ValueError) as e:
        print(f"gpu-targets: cannot read {p} ({e}); its targets count as not measured", file=sys.stderr)
        return None


def verdict(values, ok):
    if not values:
        return "not measured"
    return "met" if all(ok(v) for v in values) else "missed"


def main():
    d = sys.argv[1] if len(sys.argv) > 1 else "out/gpu"
    peers = load(d, "peers/peers.json") or {}
    bench = load(d, "bench-unet32-graphs-auto.json") or []
    train = (load(d, "train/peers.json") or {}).get("train_rows", [])
    rows = peers.get("rows", [])
    lines = []

    def target(name, pairs, ok, fmt):
        shown = ", ".join(f"{k} {fmt(v)}" for k, v in pairs) or "-"
        lines.append((name, verdict([v for _, v in pairs], ok), shown))

    unet1 = [r for r in rows if r["model"].startswith("unet:") and r["batch"] == 1]
    target("U-Net batch 1: k-diffusion eager / scoreflow >= 3",
           [(r["sampler"], r["kd_over_sf"]) for r in unet1 if r["mode"] == "eager"], lambda v: v >= 3, "{:.2f}".format)
    target("U-Net batch 1: torch.compile CUDA graphs / scoreflow >= 1",
           [(r["sampler"], r["kd_over_sf"]) for r in unet1 if r["mode"] == "reduce-overhead"], lambda v: v >= 1, "{:.2f}".format)
    big = [r for r in bench if r["batch"] >= 64 and r["sampler"] in DETERMINISTIC]
    target("U-Net batch >= 64: wall / (NFE x call) < 1.03, deterministic samplers",
           [(f'{r["sampler"]}@{r["batch"]}', r["ratio"]) for r in big], lambda v: v < 1.03, "{:.3f}".format)
    mix = [r for r in rows if r["model"] == "gmm8" and r["mode"] == "eager"]
    target("mixture: k-diffusion eager / scoreflow >= 2",
           [(f'{r["sampler"]}@{r["batch"]}', r["kd_over_sf"]) for r in mix], lambda v: v >= 2, "{:.2f}".format)
    tr = [r for r in train if r["mode"] == "eager"]
    target("training: scoreflow / PyTorch eager samples/s >= 1",
           [(f'{r["config"]} {r["precision"]}@{r["batch"]}', r["sf_over_torch"]) for r in tr], lambda v: v >= 1, "{:.2f}".format)
    checks = peers.get("checks", [])
    lines.append(("same samples as k-diffusion (peers part)", verdict(checks, lambda c: c["agree"]),
                  ", ".join(f'{c["model"]} {c["sampler"]} {c["max_abs_diff"]:.1e}' for c in checks) or "-"))
    graphed = [r.get("cuda_graphs") for r in bench]
    lines.append(("CUDA graphs used by bench (graphs auto)", verdict(graphed, bool),
                  f"{sum(map(bool, graphed))} of {len(graphed)} rows"))
    print(f"issue 5 targets from {d}" + ("" if peers.get("complete", True) else " (peers.json incomplete)"))
    for name, v, shown in lines:
        print(f"  {v:<13} {name}: {shown}")


if __name__ == "__main__":
    main()
