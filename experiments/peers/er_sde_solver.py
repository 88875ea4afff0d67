"""Print the samples of ER-SDE-Solver, run by its authors' own code.

Usage: python3 experiments/peers/er_sde_solver.py ER_SDE_REPO [--authors-clip]

ER_SDE_REPO is a checkout of https://github.com/QinpengCui/ER-SDE-Solver. Its
`examples/edm/er_sde_solver.py` (the EDM example's VE / x_start solver) is loaded by file path and
`ER_SDE_Solver.ve_xstart_1_order`, `ve_start_2_order_taylor` and `ve_start_3_order_taylor` are run
as they stand, with its `customized_func` as the noise-scale function, around a stand-in
network: the exact denoiser of the 2-D Gaussian N(MEAN, STD^2 I), D(x; sigma) = MEAN + STD^2 /
(STD^2 + sigma^2) (x - MEAN), in float64, on EDM's grid (karras, 0.002 to 80, rho 7, then 0, as
the example's `er_sde_sampler` builds it). The noise is not random: call k of `torch.randn_like`
returns Z_k[i][j] = sqrt(2) sin(1.7 k + 2.3 i + 0.9 j + 0.5), which the Rust test repeats call for
call (one draw per step, the last step's multiplied by 0).

The solver's `numerical_clip` zeroes a noise variance `sigma'^2 - sigma^2 r^2` below 1e-6 in
absolute value, which on the lowest levels of this grid (sigma' below about 0.01) removes real
noise; it is replaced by clamping negative variances to 0 (scoreflow's form) unless
`--authors-clip` is given. For each configuration in CONFIGS it prints one line: the
configuration and the final samples from LATENTS, with full precision. The values pinned in
scoreflow's test `er_sde_matches_the_authors_solver` (solvers/tests/samplers.rs) come from this
script.
"""
import importlib.util
import json
import os
import sys

import torch

from pinned import FormulaNoise, Gaussian, TorchWithNoise, latents

# name: (order, func_type, num_steps)
CONFIGS = {
    "order3-type7": (3, 7, 10),
    "order2-type7": (2, 7, 10),
    "order1-type7": (1, 7, 10),
    "order3-type4": (3, 4, 12),
    "order3-type6": (3, 6, 8),
    "order3-type3": (3, 3, 10),
}


def karras(n, sigma_min=0.002, sigma_max=80.0, rho=7.0):
    i = torch.arange(n, dtype=torch.float64)
    t = (sigma_max ** (1 / rho) + i / (n - 1) * (sigma_min ** (1 / rho) - sigma_max ** (1 / rho))) ** rho
    return torch.cat([t, torch.zeros_like(t[:1])])


def main():
    repo = sys.argv[1]
    spec = importlib.util.spec_from_file_location("er_sde_solver", os.path.join(repo, "examples", "edm",
                                                                                 "er_sde_solver.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    solver = mod.ER_SDE_Solver(sde_type="ve", model_prediction_type="x_start")
    if "--authors-clip" not in sys.argv[2:]:
        solver.numerical_clip = lambda x, eps=0.0: x.clamp(min=0.0)
    methods = {1: solver.ve_xstart_1_order, 2: solver.ve_start_2_order_taylor, 3: solver.ve_start_3_order_taylor}
    lat, denoiser = latents(), Gaussian()
    for name, (order, func_type, n) in CONFIGS.items():
        sigmas = karras(n)
        fn = lambda s, _f=func_type: mod.customized_func(s, func_type=_f)
        mod.torch = TorchWithNoise(FormulaNoise())
        try:
            x = methods[order](denoiser, lat * sigmas[0], sigmas, sigmas, fn_sigma=fn, progress=False)
        finally:
            mod.torch = torch
        print(json.dumps({"config": name, "x": [repr(float(v)) for v in x.reshape(-1).tolist()]}))


if __name__ == "__main__":
    main()
