"""Print the samples of ComfyUI's `sample_deis` (DEIS's tAB form) on the pinned problem.

Usage: python3 experiments/peers/deis_tab_check.py SAMPLING_PY DEIS_PY

SAMPLING_PY is ComfyUI's `comfy/k_diffusion/sampling.py` (or any file holding its `sample_deis`)
and DEIS_PY its `comfy/k_diffusion/deis.py` (`get_deis_coeff_list` and its helpers, from
zju-pi/diff-sampler's `solver_utils.py`). The functions are taken from the files by name, as
they stand, and run around the exact denoiser of pinned.py's Gaussian N(MEAN, STD^2 I) from its
three LATENTS, on EDM's Karras grid of 8 steps from 80 to 0.002 (rho 7) and a final 0, at
max_order 2, 3 (ComfyUI's default) and 4.

`get_deis_coeff_list` integrates each coefficient by a sum over N points of the step in the VP
time t times (t_next - t) / N, which is within O(1/N) of the integral. It is run here twice: as
ComfyUI calls it (N = 10000) and with N = 10^6, and in float64 throughout (torch's default
dtype set to float64; ComfyUI computes the coefficients in float32 where its sigmas are
float32). Its `print` of the coefficient list is silenced. One JSON line per case, samples with
full precision: the values pinned in scoreflow's test `deis_tab_matches_comfyuis_deis`
(solvers/tests/samplers.rs).
"""
import ast
import functools
import json
import sys
import types

import numpy as np
import torch

from pinned import KModel, karras, latents


def load(path, names, ns):
    src = open(path).read()
    defs = {n.name: n for n in ast.parse(src).body if isinstance(n, ast.FunctionDef)}
    for name in names:
        node = defs[name]
        node.decorator_list = []
        exec(compile(ast.Module(body=[node], type_ignores=[]), path, "exec"), ns)
    return ns


def main():
    torch.set_default_dtype(torch.float64)
    deis_ns = load(sys.argv[2], ["edm2t", "cal_poly", "t2alpha_fn", "cal_intergrand",
                                 "get_deis_coeff_list"],
                   {"torch": torch, "np": np, "print": lambda *a, **k: None})
    for n in [10000, 1000000]:
        deis = types.SimpleNamespace(
            get_deis_coeff_list=functools.partial(deis_ns["get_deis_coeff_list"], N=n))
        ns = load(sys.argv[1], ["sample_deis"],
                  {"torch": torch, "deis": deis, "trange": lambda *a, **k: range(*a)})
        for order in [3, 2, 4]:
            sigmas = karras(8)
            x = ns["sample_deis"](KModel(), latents() * sigmas[0], sigmas, extra_args={},
                                  disable=True, max_order=order)
            print(json.dumps({"order": order, "N": n, "x": x.tolist()}))


if __name__ == "__main__":
    main()
