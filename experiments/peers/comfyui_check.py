"""Print the samples of ComfyUI's `sample_er_sde`, `sample_ddpm`, `sample_lcm`,
`sample_gradient_estimation` and `sample_ipndm` on the pinned problem.

Usage: python3 experiments/peers/comfyui_check.py SAMPLING_PY

SAMPLING_PY is ComfyUI's `comfy/k_diffusion/sampling.py` (or any file holding its
`sample_er_sde`, ER-SDE-Solver, Cui et al. 2023, with its own 200 quadrature points, and its
`sample_ddpm` with `generic_step_sampler` and `DDPMSampler_step`, `sample_lcm`,
`sample_gradient_estimation` and `sample_ipndm`; the cases of a function the file does not hold
are left out, with a note on stderr). The functions are taken from the file by name, as they stand,
and run with k-diffusion's `to_d` (kdiffusion_files.py) and ComfyUI's helpers written as ComfyUI
defines them for an EDM-type model (seeds_check.py's stand-ins: the half-log-SNR is -log sigma,
`noise_scaling` adds `sigma` times the noise), around the
exact denoiser of pinned.py's Gaussian from its three LATENTS, on EDM's Karras grid of 8 steps
from 80 to 0.002 (rho 7) and a final 0, every `noise_sampler` call returning the next formula
noise of pinned.py: er_sde at max_stage 3, 2 and 1 with s_noise 1, and max_stage 3 with s_noise
0.7; ddpm, lcm and gradient estimation (ge_gamma 2 and 1.5) once each; ipndm at max_order 4 and
2. One JSON line per case with the samples, full precision, and the draws: the values pinned in
scoreflow's tests `er_sde_with_200_points_is_comfyuis_sampler` (scoreflow's `er-sde` with
`points = 200`), `ddpm_lcm_and_gradient_estimation_are_comfyuis` and
`ipndm_with_final_denoised_is_comfyuis` (solvers/tests/samplers.rs).
"""
import ast
import functools
import json
import sys

import torch

import kdiffusion_files
from pinned import FormulaNoise, karras, latents
from seeds_check import CONST, HELPERS, Model, stand_ins


def main():
    pkg, _, _ = kdiffusion_files.load(lambda msg: sys.exit(msg))
    src = open(sys.argv[1]).read()
    defs = {n.name: n for n in ast.parse(src).body if isinstance(n, ast.FunctionDef)}
    ns = {"torch": torch, "partial": functools.partial, "CONST": CONST,
          "trange": lambda *a, **k: range(*a), "to_d": pkg.sampling.to_d}
    ns.update(stand_ins())
    for name in ["sample_er_sde", "sample_ddpm", "generic_step_sampler", "DDPMSampler_step",
                 "sample_lcm", "sample_gradient_estimation", "sample_ipndm"] + [h for h in HELPERS if h in defs]:
        if name not in defs:
            print(f"{sys.argv[1]} holds no {name}: its cases are left out", file=sys.stderr)
            continue
        node = defs[name]
        node.decorator_list = []
        exec(compile(ast.Module(body=[node], type_ignores=[]), sys.argv[1], "exec"), ns)
    sigmas = karras(8)
    for kwargs in [{}, {"max_stage": 2}, {"max_stage": 1}, {"s_noise": 0.7}]:
        if "sample_er_sde" not in ns:
            break
        draw = FormulaNoise()
        x0 = latents() * sigmas[0]
        x = ns["sample_er_sde"](Model(), x0, sigmas, extra_args={}, disable=True,
                                noise_sampler=lambda a, b, like=x0: draw(like), **kwargs)
        print(json.dumps({"sampler": "er-sde", "params": kwargs, "draws": draw.k,
                          "x": x.tolist()}))
    for sampler, fn, kwargs in [("ddpm", "sample_ddpm", {}), ("lcm", "sample_lcm", {}),
                                ("gradient-estimation", "sample_gradient_estimation", {}),
                                ("gradient-estimation", "sample_gradient_estimation",
                                 {"ge_gamma": 1.5}),
                                ("ipndm", "sample_ipndm", {}),
                                ("ipndm", "sample_ipndm", {"max_order": 2})]:
        if fn not in ns:
            continue
        draw = FormulaNoise()
        x0 = latents() * sigmas[0]
        if sampler not in ("gradient-estimation", "ipndm"):
            kwargs = {**kwargs, "noise_sampler": lambda a, b, like=x0: draw(like)}
        x = ns[fn](Model(), x0, sigmas, extra_args={}, disable=True, **kwargs)
        params = {k: v for k, v in kwargs.items() if k != "noise_sampler"}
        print(json.dumps({"sampler": sampler, "params": params, "draws": draw.k,
                          "x": x.tolist()}))


if __name__ == "__main__":
    main()
