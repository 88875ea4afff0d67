"""Print the samples of Restart sampling (Xu et al. 2023), run by its authors' own code.

Usage: python3 experiments/peers/restart_sampler.py RESTART_REPO [--float64-levels]

RESTART_REPO is a checkout of https://github.com/Newbeeer/diffusion_restart_sampling. Its
`benchmarks/generate_restart.py` is read at run time and the function `restart_sampler` is
executed as it stands, around a stand-in network: the exact denoiser of the 2-D Gaussian
N(MEAN, STD^2 I), D(x; sigma) = MEAN + STD^2 / (STD^2 + sigma^2) (x - MEAN), in float64, with
the identity `round_sigma` and an unbounded sigma range. The noise is not random: call k of
`randn_like` returns Z_k[i][j] = sqrt(2) sin(1.7 k + 2.3 i + 0.9 j + 0.5), a formula the Rust test
repeats call for call. Every configuration that adds noise churns every step (S_min = 0,
S_max = inf), so each call of the reference is one draw of scoreflow's, in the same order; the
configuration with S_noise = 0 adds none (and gates the restarts' churn by S_min and S_max).

The reference computes each restart's levels in float32 (`get_steps` makes float32 indices);
`--float64-levels` makes them float64, which is what scoreflow computes. For each configuration
in CONFIGS it prints one line: the configuration and the final samples from LATENTS, with full
precision. The values pinned in scoreflow's test `restart_matches_the_authors_restart_sampler`
(solvers/tests/samplers.rs) come from this script (the repository at its current main,
torch 2.11).
"""
import json
import os
import sys
import types

import numpy as np
import torch

from pinned import FormulaNoise, Gaussian, latents

# name: (num_steps, restart_info, S_churn, S_min, S_max, S_noise, restart_gamma)
CONFIGS = {
    "cifar-noise0": (18, {"0": [3, 2, 0.06, 0.30]}, 0.0, 0.01, 1.0, 0.0, 0.05),
    "cifar-churned": (18, {"0": [3, 2, 0.06, 0.30]}, 4.0, 0.0, float("inf"), 1.003, 0.05),
    "three-segments": (12, {"0": [3, 3, 0.3, 0.59], "1": [4, 1, 19.35, 40.79], "2": [4, 1, 1.09, 1.92]},
                       2.0, 0.0, float("inf"), 1.0, 0.1),
}


def main():
    repo = sys.argv[1]
    src = open(os.path.join(repo, "benchmarks", "generate_restart.py")).read()
    start = src.index("def restart_sampler")
    end = src.index("# Wrapper for torch.Generator", start)
    code = src[start:end]
    if "--float64-levels" in sys.argv[2:]:
        old = "torch.arange(num_steps, dtype=torch.float, device=latents.device)"
        assert code.count(old) == 1, "get_steps changed upstream"
        code = code.replace(old, "torch.arange(num_steps, dtype=torch.float64, device=latents.device)")
    ns = {"np": np, "torch": torch, "dist": types.SimpleNamespace(print0=lambda *a, **k: None)}
    exec(code, ns)
    lat = latents()
    for name, (n, info, churn, smin, smax, snoise, gamma) in CONFIGS.items():
        x = ns["restart_sampler"](Gaussian(), lat, randn_like=FormulaNoise(), num_steps=n, S_churn=churn,
                                  S_min=smin, S_max=smax, S_noise=snoise, restart_info=json.dumps(info),
                                  restart_gamma=gamma)
        print(json.dumps({"config": name, "x": [[repr(float(v)) for v in row] for row in x]}))


if __name__ == "__main__":
    main()
