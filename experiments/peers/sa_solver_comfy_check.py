"""Print the samples of ComfyUI's `sample_sa_solver` on the pinned problem.

Usage: python3 experiments/peers/sa_solver_comfy_check.py SAMPLING_PY SA_SOLVER_PY

SAMPLING_PY is ComfyUI's `comfy/k_diffusion/sampling.py` (or any file holding its
`sample_sa_solver`), SA_SOLVER_PY its `comfy/k_diffusion/sa_solver.py` (the coefficients,
`compute_stochastic_adams_b_coeffs`, and `get_tau_interval_func`), imported as it stands as the
module `sa_solver`. The function is taken from the file by name, as it stands, and run with the
helpers ComfyUI defines for an EDM-type model (seeds_check.py's stand-ins: the half-log-SNR is
-log sigma, no offset of the first level), around the exact denoiser of pinned.py's Gaussian
from its three LATENTS, on EDM's Karras grid of 8 steps from 80 to 0.002 (rho 7) and a final 0,
every `noise_sampler` call returning the next formula noise of pinned.py, and with the
stochasticity window given as `tau_func = get_tau_interval_func(S_TMAX, S_TMIN, TAU)`. One JSON
line per case with the samples, full precision, and the number of draws: the values pinned in
scoreflow's test `sa_solver_comfy_is_comfyuis_sampler` (solvers/tests/samplers.rs).
"""
import ast
import functools
import importlib.util
import json
import sys

import torch

from pinned import FormulaNoise, karras, latents
from seeds_check import Model, stand_ins

CASES = [
    # (predictor_order, corrector_order, use_pece, tau, s_tmin, s_tmax, s_noise)
    (3, 4, False, 1.0, 0.1, 20.0, 1.0),
    (3, 4, True, 1.0, 0.1, 20.0, 1.0),
    (3, 4, False, 0.0, 0.1, 20.0, 1.0),
    (2, 2, False, 0.6, 0.002, 80.0, 0.7),
    (1, 1, True, 1.0, 0.05, 5.0, 1.0),
    (4, 3, False, 1.0, 0.3, 60.0, 1.0),
]


def main():
    spec = importlib.util.spec_from_file_location("sa_solver", sys.argv[2])
    sa_solver = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(sa_solver)
    src = open(sys.argv[1]).read()
    defs = {n.name: n for n in ast.parse(src).body if isinstance(n, ast.FunctionDef)}
    ns = {"torch": torch, "partial": functools.partial, "sa_solver": sa_solver,
          "trange": lambda *a, **k: range(*a)}
    ns.update(stand_ins())
    node = defs["sample_sa_solver"]
    node.decorator_list = []
    exec(compile(ast.Module(body=[node], type_ignores=[]), sys.argv[1], "exec"), ns)
    sigmas = karras(8)
    for p, c, pece, tau, s_tmin, s_tmax, s_noise in CASES:
        draw = FormulaNoise()
        x0 = latents() * sigmas[0]
        x = ns["sample_sa_solver"](
            Model(), x0, sigmas, extra_args={}, disable=True,
            tau_func=sa_solver.get_tau_interval_func(s_tmax, s_tmin, eta=tau),
            s_noise=s_noise, noise_sampler=lambda a, b, like=x0: draw(like),
            predictor_order=p, corrector_order=c, use_pece=pece)
        print(json.dumps({"predictor_order": p, "corrector_order": c, "pece": pece, "tau": tau,
                          "s_tmin": s_tmin, "s_tmax": s_tmax, "s_noise": s_noise,
                          "draws": draw.k, "x": x.flatten().tolist()}))


if __name__ == "__main__":
    main()
