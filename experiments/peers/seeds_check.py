"""Print the samples of ComfyUI's SEEDS samplers (`sample_seeds_2`, `sample_seeds_3`) on the
pinned problem.

Usage: python3 experiments/peers/seeds_check.py SAMPLING_PY

SAMPLING_PY is ComfyUI's `comfy/k_diffusion/sampling.py` (or any file holding its
`sample_seeds_2` and `sample_seeds_3`; Gonzalez et al. 2023, "SEEDS: Exponential SDE Solvers for
Fast High-Quality Sampling from Diffusion Models", NeurIPS, in ComfyUI since its pull request
7580). The two functions are taken from the file by name, as they stand, and run in a namespace
that supplies what they use from the rest of ComfyUI, written here as ComfyUI defines it for an
EDM-type (non-CONST) model: `sigma_to_half_log_snr(sigma) = -log sigma`,
`half_log_snr_to_sigma(l) = exp(-l)`, `offset_first_sigma_for_snr` leaves the levels as they are,
`ei_h_phi_1(h) = expm1(h)`, `ei_h_phi_2(h) = (expm1(h) - h) / h`; where the file defines any of
these itself, its own definition is used instead. The model is the stand-in network of
pinned.py (the exact denoiser of the 2-D Gaussian N(MEAN, STD^2 I), float64, from its three
LATENTS) behind k-diffusion's calling convention, and every `noise_sampler(sigma, sigma_next)`
call returns the next formula noise Z_k of pinned.py. Levels: EDM's Karras grid of 8 steps
from 80 to 0.002 (rho 7) and a final 0. For each setting it prints one JSON line with the
samples, full precision. The values pinned in scoreflow's test
`seeds_matches_comfyuis_functions` (solvers/tests/samplers.rs) come from this script.
"""
import ast
import functools
import json
import sys

import torch

from pinned import FormulaNoise, KModel, karras, latents

HELPERS = [
    "sigma_to_half_log_snr",
    "half_log_snr_to_sigma",
    "offset_first_sigma_for_snr",
    "ei_h_phi_1",
    "ei_h_phi_2",
]


class CONST:
    """ComfyUI's rectified-flow model_sampling class; the stand-in model is not one."""


class ModelSampling:
    """An EDM-type model_sampling: not a CONST, so the half-log-SNR is -log sigma; its
    `noise_scaling` as ComfyUI's EPS defines it (for comfyui_check.py's lcm)."""

    def noise_scaling(self, sigma, noise, latent_image, max_denoise=False):
        return latent_image + noise * sigma


def stand_ins():
    def sigma_to_half_log_snr(sigma, model_sampling):
        return sigma.log().neg()

    def half_log_snr_to_sigma(half_log_snr, model_sampling):
        return half_log_snr.neg().exp()

    def offset_first_sigma_for_snr(sigmas, model_sampling, percent_offset=1e-4):
        return sigmas

    def ei_h_phi_1(h):
        return torch.expm1(h)

    def ei_h_phi_2(h):
        return (torch.expm1(h) - h) / h

    return {f.__name__: f for f in [sigma_to_half_log_snr, half_log_snr_to_sigma,
                                    offset_first_sigma_for_snr, ei_h_phi_1, ei_h_phi_2]}


class Inner:
    def __init__(self):
        self.predictor = ModelSampling()
        self.model_patcher = self

    def get_model_object(self, name):
        return self.predictor


class Model(KModel):
    """pinned.KModel with the `inner_model` ComfyUI's samplers read `model_sampling` from."""

    def __init__(self):
        super().__init__()
        self.inner_model = Inner()


def main():
    src = open(sys.argv[1]).read()
    tree = ast.parse(src)
    defs = {n.name: n for n in tree.body if isinstance(n, ast.FunctionDef)}
    ns = {"torch": torch, "partial": functools.partial, "CONST": CONST,
          "trange": lambda *a, **k: range(*a)}
    ns.update(stand_ins())
    wanted = ["sample_seeds_2", "sample_seeds_3"] + [h for h in HELPERS if h in defs]
    for name in wanted:
        node = defs[name]
        node.decorator_list = []
        exec(compile(ast.Module(body=[node], type_ignores=[]), sys.argv[1], "exec"), ns)
    sigmas = karras(8)
    cases = [
        ("seeds-2", {}),
        ("seeds-2", {"eta": 0.0}),
        ("seeds-2", {"eta": 0.6, "s_noise": 0.9, "r": 0.3}),
        ("seeds-2", {"eta": 1.0, "r": 0.7, "solver_type": "phi_2"}),
        ("seeds-2", {"eta": 0.0, "r": 1.0, "solver_type": "phi_2"}),
        ("seeds-3", {}),
        ("seeds-3", {"eta": 0.0}),
        ("seeds-3", {"eta": 0.5, "s_noise": 1.1, "r_1": 0.25, "r_2": 0.8}),
    ]
    for name, kwargs in cases:
        fn = ns["sample_" + name.replace("-", "_")]
        draw = FormulaNoise()
        x0 = latents() * sigmas[0]
        x = fn(Model(), x0, sigmas, extra_args={}, disable=True,
               noise_sampler=lambda a, b, like=x0: draw(like), **kwargs)
        print(json.dumps({"sampler": name, "params": kwargs, "draws": draw.k, "x": x.tolist()}))


if __name__ == "__main__":
    main()
