"""Print the noise levels of NVlabs/edm's time-step discretizations, computed by edm's own code.

Usage: python3 experiments/peers/edm_grid.py EDM_REPO STEPS SIGMA_MIN SIGMA_MAX [DISCRETIZATION] [--float64-index]

EDM_REPO is a checkout of https://github.com/NVlabs/edm. Its `generate.py` is read at run time
and the part of `ablation_sampler` before the sampling loop (the discretization) is executed
with a stand-in network whose sigma range is unbounded; the levels t_0 .. t_{N-1}, 0 are printed
with full precision. The values pinned in scoreflow's test
`iddpm_grid_matches_nvlabs_edm` (solvers/tests/sde_and_grids.rs) come from
`python3 experiments/peers/edm_grid.py EDM_REPO 18 0.002 81 iddpm` and
`... 10 0.01 50 iddpm`, with and without `--float64-index` (edm at its current main, torch
2.11).

In edm's iddpm discretization the index j comes from `torch.arange(M, 0, -1)` (int64), and
`0.5 * np.pi * j` promotes to torch's default float32, so abar(j) and its ratios are float32;
`--float64-index` makes that arange float64 (the one change), which gives the formula in f64
as scoreflow computes it.
"""
import os
import sys

import numpy as np
import torch


def main():
    repo, n, smin, smax = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4])
    rest = [a for a in sys.argv[5:] if a != "--float64-index"]
    disc = rest[0] if rest else "iddpm"
    src = open(os.path.join(repo, "generate.py")).read()
    if "--float64-index" in sys.argv:
        old = "torch.arange(M, 0, -1, device=latents.device)"
        assert old in src
        src = src.replace(old, "torch.arange(M, 0, -1, dtype=torch.float64, device=latents.device)")
        src = src.replace("u[j - 1] = ((u[j] ** 2", "u[j.long() - 1] = ((u[j.long()] ** 2")
    start = src.index("def ablation_sampler")
    end = src.index("    # Main sampling loop.", start)
    ns = {"np": np, "torch": torch}
    exec(src[start:end] + "    return t_steps\n", ns)

    class Net:
        sigma_min, sigma_max = 0.0, float("inf")

        @staticmethod
        def round_sigma(s):
            return s

    t = ns["ablation_sampler"](Net(), torch.zeros(1, dtype=torch.float64), num_steps=n, sigma_min=smin,
                               sigma_max=smax, discretization=disc)
    print(" ".join(repr(float(v)) for v in t))


if __name__ == "__main__":
    main()
