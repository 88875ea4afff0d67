"""Print the samples of ComfyUI's rectified-flow ancestral samplers on the pinned problem.

Usage: python3 experiments/peers/ancestral_rf_check.py SAMPLING_PY

SAMPLING_PY is ComfyUI's `comfy/k_diffusion/sampling.py` (or any file holding its
`sample_euler_ancestral_RF`, `sample_dpm_2_ancestral_RF`, `sample_dpmpp_2s_ancestral_RF` and
`sample_dpmpp_2s_ancestral_RF_cfg_pp`: what ComfyUI's `euler_ancestral`, `dpm_2_ancestral`,
`dpmpp_2s_ancestral` and `dpmpp_2s_ancestral_cfg_pp` run on a rectified-flow model, whose
`model_sampling` is a `CONST`). The functions are taken from the file by name, as they stand,
and run with k-diffusion's `to_d` (k-diffusion loaded by file path, kdiffusion_files.py;
ComfyUI's copy is k-diffusion's) and with what they take from the rest of ComfyUI written here
as ComfyUI defines it: `set_model_options_post_cfg_function` appends the function to
`model_options["sampler_post_cfg_function"]`, and the model's `model_sampling` has no
`noise_scale` (cfgpp_check.py's stand-ins, imported from it).

The model works in the flow's own variables, as ComfyUI calls a rectified-flow model: its
`sigmas` are the times t of `x_t = (1 - t) x0 + t eps`, and `model(x_t, t)` returns the
denoised estimate, here the exact one of the 2-D Gaussian N(MEAN, STD^2 I) of pinned.py,
`D(x_t / (1 - t); t / (1 - t))` in the scaled variable (scoreflow's conventions.md, "Rectified
flow"); the CFG++ sampler gets classifier-free guidance of that Gaussian (cond) and
N(UNCOND_MEAN, UNCOND_STD^2 I) (uncond), as cfgpp_check.py. Float64, pinned.py's three LATENTS
times t_0 (ComfyUI's noise scaling of an empty latent), levels t_i = 3 u_i / (1 + 2 u_i) (SD3's
shift 3) at u_i = 0.99 - i (0.99 - 0.05) / 7, i = 0..7, and a final 0; every `noise_sampler`
call returns the next formula noise of pinned.py. One JSON line per case, samples with full
precision: the values pinned in scoreflow's test `rf_ancestral_samplers_match_comfyuis_functions`
(solvers/tests/samplers.rs), which runs them on the levels sigma_i = t_i / (1 - t_i).
"""
import ast
import functools
import json
import sys
import types

import torch

import kdiffusion_files
from cfgpp_check import UNCOND_MEAN, UNCOND_STD, Inner, set_model_options_post_cfg_function
from pinned import MEAN, STD, FormulaNoise, latents


def gaussian_in_t(mean, std):
    """The exact denoiser of N(mean, std^2 I) called as a rectified-flow model, D(x_t; t)."""
    m = torch.tensor(mean, dtype=torch.float64)
    v = std * std

    def d(x, t):
        t = t.reshape(-1, *([1] * (x.dim() - 1)))
        x_hat, sigma = x / (1 - t), t / (1 - t)
        return m + v / (v + sigma * sigma) * (x_hat - m)

    return d


class Model:
    """k-diffusion's calling convention; with `w`, classifier-free guidance as ComfyUI's
    CFGGuider evaluates it (post-CFG functions called with both branches)."""

    def __init__(self, w=None):
        self.cond, self.uncond = gaussian_in_t(MEAN, STD), gaussian_in_t(UNCOND_MEAN, UNCOND_STD)
        self.w = w
        self.inner_model = Inner()

    def __call__(self, x, t, model_options=None, **kwargs):
        c = self.cond(x, t)
        if self.w is None:
            return c
        u = self.uncond(x, t)
        d = u + self.w * (c - u)
        for fn in (model_options or {}).get("sampler_post_cfg_function", []):
            d = fn({"denoised": d, "cond_denoised": c, "uncond_denoised": u, "model": self,
                    "sigma": t, "input": x, "model_options": model_options})
        return d


def levels():
    u = 0.99 - torch.arange(8, dtype=torch.float64) * (0.99 - 0.05) / 7
    return torch.cat([3 * u / (1 + 2 * u), torch.zeros(1, dtype=torch.float64)])


def main():
    pkg, _, _ = kdiffusion_files.load(lambda msg: sys.exit(msg))
    kd = pkg.sampling
    src = open(sys.argv[1]).read()
    defs = {n.name: n for n in ast.parse(src).body if isinstance(n, ast.FunctionDef)}
    comfy = types.SimpleNamespace(model_patcher=types.SimpleNamespace(
        set_model_options_post_cfg_function=set_model_options_post_cfg_function))
    ns = {"torch": torch, "partial": functools.partial, "trange": lambda *a, **k: range(*a),
          "to_d": kd.to_d, "comfy": comfy,
          # ComfyUI's takes an optional seed (none here: k-diffusion's).
          "default_noise_sampler": lambda x, seed=None: kd.default_noise_sampler(x)}
    names = ["sample_euler_ancestral_RF", "sample_dpm_2_ancestral_RF",
             "sample_dpmpp_2s_ancestral_RF", "sample_dpmpp_2s_ancestral_RF_cfg_pp"]
    for name in names:
        node = defs[name]
        node.decorator_list = []
        exec(compile(ast.Module(body=[node], type_ignores=[]), sys.argv[1], "exec"), ns)
    t = levels()
    cases = [
        ("euler-ancestral-rf", "sample_euler_ancestral_RF", {}, None),
        ("euler-ancestral-rf", "sample_euler_ancestral_RF", {"eta": 0.5, "s_noise": 0.8}, None),
        ("dpm2-ancestral-rf", "sample_dpm_2_ancestral_RF", {}, None),
        ("dpm2-ancestral-rf", "sample_dpm_2_ancestral_RF", {"eta": 0.5, "s_noise": 0.8}, None),
        ("dpmpp-2s-ancestral-rf", "sample_dpmpp_2s_ancestral_RF", {}, None),
        ("dpmpp-2s-ancestral-rf", "sample_dpmpp_2s_ancestral_RF", {"eta": 0.5, "s_noise": 0.8},
         None),
        ("dpmpp-2s-ancestral-cfgpp-rf", "sample_dpmpp_2s_ancestral_RF_cfg_pp", {}, 1.0),
        ("dpmpp-2s-ancestral-cfgpp-rf", "sample_dpmpp_2s_ancestral_RF_cfg_pp", {}, 1.5),
        ("dpmpp-2s-ancestral-cfgpp-rf", "sample_dpmpp_2s_ancestral_RF_cfg_pp",
         {"eta": 0.5, "s_noise": 0.8}, 0.6),
    ]
    for sampler, fn_name, kwargs, w in cases:
        draw = FormulaNoise()
        x0 = latents() * t[0]
        x = ns[fn_name](Model(w), x0, t, extra_args={}, disable=True,
                        noise_sampler=lambda a, b, like=x0: draw(like), **kwargs)
        print(json.dumps({"sampler": sampler, "params": kwargs, "guidance": w, "draws": draw.k,
                          "x": x.tolist()}))


if __name__ == "__main__":
    main()
