"""Print the samples of ComfyUI's CFG++ samplers on a guided pinned problem.

Usage: python3 experiments/peers/cfgpp_check.py SAMPLING_PY

SAMPLING_PY is ComfyUI's `comfy/k_diffusion/sampling.py` (or any file holding its
`sample_euler_ancestral_cfg_pp`, `sample_euler_cfg_pp`, `sample_dpmpp_2m_cfg_pp`,
`sample_dpmpp_2s_ancestral_cfg_pp`, `sample_gradient_estimation` and its `_cfg_pp` form, and
`res_multistep` (run with `cfg_pp=True`); CFG++,
Chung et al. 2025, ICLR). The functions are taken from the file by name, as they stand,
and run with k-diffusion's `to_d`, `get_ancestral_step` and `default_noise_sampler` (k-diffusion
loaded by file path, kdiffusion_files.py: ComfyUI's copies of them are k-diffusion's) and with
what they take from the rest of ComfyUI written here as ComfyUI defines it:
`set_model_options_post_cfg_function` appends the function to
`model_options["sampler_post_cfg_function"]`, `sigma_to_half_log_snr(sigma) = -log sigma`
for an EDM-type model (the file's own definition where it has one), and the model's
`model_sampling` is not a `comfy.model_sampling.CONST` (no rectified flow; ancestral_rf_check.py
runs the rectified-flow forms).

The model is classifier-free guidance of two exact Gaussian denoisers, evaluated as ComfyUI's
CFGGuider does: `cond` the 2-D Gaussian N(MEAN, STD^2 I) of pinned.py, `uncond` N(UNCOND_MEAN,
UNCOND_STD^2 I), `denoised = uncond + w (cond - uncond)`, then every post-CFG function called with
`denoised`, `uncond_denoised` and `cond_denoised`. Float64, pinned.py's three LATENTS, EDM's
Karras grid of 8 steps from 80 to 0.002 (rho 7) and a final 0; the noise of the ancestral sampler
is pinned.py's formula noise, call for call. One JSON line per sampler and guidance weight,
samples with full precision: the values pinned in scoreflow's test
`cfgpp_matches_comfyuis_functions` (solvers/tests/samplers.rs).
"""
import ast
import functools
import json
import sys
import types

import torch

import kdiffusion_files
from pinned import MEAN, STD, FormulaNoise, karras, latents

UNCOND_MEAN = [-0.3, 0.4]
UNCOND_STD = 0.9


def gaussian(mean, std):
    m = torch.tensor(mean, dtype=torch.float64)
    v = std * std

    def d(x, sigma):
        s = sigma.reshape(-1, *([1] * (x.dim() - 1)))
        return m + v / (v + s * s) * (x - m)

    return d


def set_model_options_post_cfg_function(model_options, post_cfg_function, disable_cfg1_optimization=False):
    model_options["sampler_post_cfg_function"] = model_options.get("sampler_post_cfg_function", []) + [post_cfg_function]
    if disable_cfg1_optimization:
        model_options["disable_cfg1_optimization"] = True
    return model_options


def sigma_to_half_log_snr(sigma, model_sampling):
    return sigma.log().neg()


class Inner:
    def __init__(self):
        self.predictor = object()
        self.model_patcher = self
        self.model_options = {}

    def get_model_object(self, name):
        return self.predictor


class Model:
    """k-diffusion's calling convention around classifier-free guidance of two exact denoisers."""

    def __init__(self, w):
        self.cond, self.uncond = gaussian(MEAN, STD), gaussian(UNCOND_MEAN, UNCOND_STD)
        self.w = w
        self.inner_model = Inner()

    def __call__(self, x, sigma, model_options=None, **kwargs):
        c, u = self.cond(x, sigma), self.uncond(x, sigma)
        d = u + self.w * (c - u)
        for fn in (model_options or {}).get("sampler_post_cfg_function", []):
            d = fn({"denoised": d, "cond_denoised": c, "uncond_denoised": u, "model": self,
                    "sigma": sigma, "input": x, "model_options": model_options})
        return d


def main():
    pkg, _, _ = kdiffusion_files.load(lambda msg: sys.exit(msg))
    kd = pkg.sampling
    src = open(sys.argv[1]).read()
    defs = {n.name: n for n in ast.parse(src).body if isinstance(n, ast.FunctionDef)}
    comfy = types.SimpleNamespace(
        model_patcher=types.SimpleNamespace(
            set_model_options_post_cfg_function=set_model_options_post_cfg_function),
        model_sampling=types.SimpleNamespace(CONST=type("CONST", (), {})))
    ns = {"torch": torch, "partial": functools.partial, "trange": lambda *a, **k: range(*a),
          "to_d": kd.to_d, "get_ancestral_step": kd.get_ancestral_step,
          # ComfyUI's takes an optional seed (none here: k-diffusion's).
          "default_noise_sampler": lambda x, seed=None: kd.default_noise_sampler(x),
          "comfy": comfy,
          "set_model_options_post_cfg_function": set_model_options_post_cfg_function,
          "sigma_to_half_log_snr": sigma_to_half_log_snr}
    names = ["sample_euler_ancestral_cfg_pp", "sample_euler_cfg_pp", "sample_dpmpp_2m_cfg_pp",
             "res_multistep", "sample_dpmpp_2s_ancestral_cfg_pp", "sample_gradient_estimation",
             "sample_gradient_estimation_cfg_pp"]
    for name in names + [h for h in ["sigma_to_half_log_snr"] if h in defs]:
        node = defs[name]
        node.decorator_list = []
        exec(compile(ast.Module(body=[node], type_ignores=[]), sys.argv[1], "exec"), ns)
    sigmas = karras(8)
    cases = [
        ("euler-cfgpp", "sample_euler_cfg_pp", {}),
        ("euler-ancestral-cfgpp", "sample_euler_ancestral_cfg_pp", {}),
        ("euler-ancestral-cfgpp", "sample_euler_ancestral_cfg_pp", {"eta": 0.5, "s_noise": 0.8}),
        ("dpmpp-2m-cfgpp", "sample_dpmpp_2m_cfg_pp", {}),
        ("res-multistep-cfgpp", "res_multistep", {"cfg_pp": True, "eta": 0.0}),
        ("res-multistep-cfgpp", "res_multistep", {"cfg_pp": True, "eta": 1.0, "s_noise": 0.9}),
        ("dpmpp-2s-ancestral-cfgpp", "sample_dpmpp_2s_ancestral_cfg_pp", {}),
        ("dpmpp-2s-ancestral-cfgpp", "sample_dpmpp_2s_ancestral_cfg_pp",
         {"eta": 0.5, "s_noise": 0.8}),
        ("gradient-estimation-cfgpp", "sample_gradient_estimation_cfg_pp", {}),
        ("gradient-estimation-cfgpp", "sample_gradient_estimation_cfg_pp", {"ge_gamma": 1.5}),
    ]
    for sampler, fn_name, kwargs in cases:
        for w in [1.0, 0.6, 1.5]:
            draw = FormulaNoise()
            x0 = latents() * sigmas[0]
            extra = {}
            if "eta" in kwargs or sampler in ("euler-ancestral-cfgpp", "dpmpp-2s-ancestral-cfgpp"):
                # (res_multistep draws whenever sigma' > 0, with weight 0 at eta = 0.)
                extra["noise_sampler"] = lambda a, b, like=x0: draw(like)
            x = ns[fn_name](Model(w), x0, sigmas, extra_args={}, disable=True, **kwargs, **extra)
            print(json.dumps({"sampler": sampler, "params": kwargs, "guidance": w, "draws": draw.k,
                              "x": x.tolist()}))


if __name__ == "__main__":
    main()
