"""Print the samples of diff-sampler's solvers with and without the analytical first step (AFS).

Usage: python3 experiments/peers/afs_check.py DIFF_SAMPLER_REPO

DIFF_SAMPLER_REPO is a checkout of https://github.com/zju-pi/diff-sampler. Its
`diff-solvers-main/solvers.py` (Zhou et al. 2024, "Fast ODE-based Sampling for Diffusion Models
in Around 5 Steps", CVPR: AFS, `afs=True`, replaces the first network evaluation, at sigma_max,
by `d = x / sqrt(1 + sigma^2)`) is loaded by file path and `euler_sampler`, `heun_sampler` and
`ipndm_sampler` (max_order 4) are run as they stand around the stand-in network of pinned.py
(the exact denoiser of the 2-D Gaussian N(MEAN, STD^2 I), float64, from its three LATENTS), on
EDM's Karras levels (10 levels from 80 to 0.002, rho 7, without the final denoising), with
`return_inters`. For each solver and afs in (False, True) it prints one JSON line: the states at
the last level (0.002), with full precision. The values pinned in scoreflow's test
`afs_matches_diff_samplers_solvers` (solvers/tests/samplers.rs) come from this script.
"""
import json
import os
import sys

import torch

from pinned import Gaussian, latents


def karras(n, sigma_min=0.002, sigma_max=80.0, rho=7.0):
    i = torch.arange(n, dtype=torch.float64)
    return (sigma_max ** (1 / rho) + i / (n - 1) * (sigma_min ** (1 / rho) - sigma_max ** (1 / rho))) ** rho


def main():
    src = open(os.path.join(sys.argv[1], "diff-solvers-main", "solvers.py")).read()
    # solvers.py imports its helpers with `from solver_utils import *`; the three samplers use
    # only torch and get_denoised, defined in the file itself.
    src = src.replace("from solver_utils import *", "")
    ns = {"__name__": "solvers"}
    exec(compile(src, "solvers.py", "exec"), ns)
    net = Gaussian()
    lat = latents().reshape(3, 2, 1, 1)
    t_steps = karras(10)
    for name in ["euler", "heun", "ipndm"]:
        fn = ns[f"{name}_sampler"]
        for afs in [False, True]:
            inters = fn(net, lat, t_steps=t_steps, afs=afs, return_inters=True, max_order=4)
            x = inters[-1].reshape(3, 2)
            print(json.dumps({"solver": name, "afs": afs, "x": x.tolist()}))


if __name__ == "__main__":
    main()
