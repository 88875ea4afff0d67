"""Print the grids of ComfyUI's `AlignYourStepsScheduler` (Sabour, Fidler & Kreis 2024, "Align
Your Steps"; ComfyUI's comfy_extras/nodes_align_your_steps.py) for its three model types at
several step counts.

Usage: python3 experiments/peers/ays_check.py NODES_ALIGN_YOUR_STEPS_PY

NODES_ALIGN_YOUR_STEPS_PY is ComfyUI's `comfy_extras/nodes_align_your_steps.py`, imported by
file path as it stands (it needs numpy and torch; `source scripts/env.sh` gives the project's
torch). The pins come from the file at ComfyUI commit 341667c4, whose node is a plain class;
later versions declare it through `comfy_api` (not importable alone): there, copy
`loglinear_interp`, `NOISE_LEVELS` and the body of `get_sigmas` into a file of that shape. Its node's `get_sigmas(model_type, steps, denoise=1.0)` is called for SD1, SDXL and SVD;
one JSON line per model type and step count with the levels it returns (float32 values as
float, 0 last). The values pinned in scoreflow's test `ays_grids_are_comfyuis_align_your_steps`
(solvers/tests/sde_and_grids.rs) come from this script.
"""
import importlib.util
import json
import sys

STEPS = [1, 2, 3, 5, 9, 10, 11, 20, 32]


def main():
    spec = importlib.util.spec_from_file_location("nodes_align_your_steps", sys.argv[1])
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    node = mod.AlignYourStepsScheduler()
    for model in ["SD1", "SDXL", "SVD"]:
        for n in STEPS:
            (sigmas,) = node.get_sigmas(model, n, 1.0)
            print(json.dumps({"model": model, "steps": n, "sigmas": [float(v) for v in sigmas]}))


if __name__ == "__main__":
    main()
