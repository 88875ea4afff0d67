"""Print the samples of NVlabs/edm's `ablation_sampler`, run by edm's own code, on a Gaussian.

Usage: python3 experiments/peers/edm_sampler.py EDM_REPO

EDM_REPO is a checkout of https://github.com/NVlabs/edm. Its `generate.py` is read at run time
and the function `ablation_sampler` (Karras et al. 2022, Algorithms 1 and 2 with any schedule,
scaling and the generalized second-order step `alpha`) is executed as it stands, around a
stand-in network: the exact denoiser of the 2-D Gaussian N(MEAN, STD^2 I),
D(x; sigma) = MEAN + STD^2 / (STD^2 + sigma^2) (x - MEAN), in float64, with the identity
`round_sigma` and an unbounded sigma range (pinned.py). For each configuration in CONFIGS it
prints one line: the configuration and the final samples from LATENTS, with full precision.

The values pinned in scoreflow's test `edm_ablation_matches_nvlabs_edms_ablation_sampler`
(solvers/tests/samplers.rs) come from this script (edm at its current main, torch 2.11). No
configuration draws noise (S_churn = 0): churn is the same as in `edm-stochastic`, which
k-diffusion checks.
"""
import json
import os
import sys

import numpy as np
import torch

from pinned import Gaussian, latents

# name: (num_steps, discretization, schedule, scaling, solver, alpha, sigma_min, sigma_max)
CONFIGS = {
    "edm-linear-none-heun": (18, "edm", "linear", "none", "heun", 1.0, 0.002, 80.0),
    "edm-vp-vp-heun": (18, "edm", "vp", "vp", "heun", 1.0, 0.002, 80.0),
    "edm-ve-none-euler": (18, "edm", "ve", "none", "euler", 1.0, 0.002, 80.0),
    "vp-vp-vp-heun": (12, "vp", "vp", "vp", "heun", 1.0, None, None),
    "ve-ve-none-heun-alpha0.5": (12, "ve", "ve", "none", "heun", 0.5, None, None),
    "edm-linear-vp-heun-alpha0.7": (10, "edm", "linear", "vp", "heun", 0.7, 0.002, 80.0),
}


def main():
    repo = sys.argv[1]
    src = open(os.path.join(repo, "generate.py")).read()
    start = src.index("def ablation_sampler")
    end = src.index("#---", start)
    ns = {"np": np, "torch": torch}
    exec(src[start:end], ns)
    lat = latents()
    for name, (n, disc, sched, scal, solver, alpha, smin, smax) in CONFIGS.items():
        x = ns["ablation_sampler"](Gaussian(), lat, num_steps=n, sigma_min=smin, sigma_max=smax,
                                   solver=solver, discretization=disc, schedule=sched, scaling=scal, alpha=alpha)
        print(json.dumps({"config": name, "x": [[repr(float(v)) for v in row] for row in x]}))


if __name__ == "__main__":
    main()
