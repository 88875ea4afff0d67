"""Print what zituitui/BELM's exact-inversion samplers give on the pinned problem: its EDICT
(`samplers/edict.py`), BDIA (`samplers/BDIA.py`) and O-BELM (`samplers/BELM.py`), each module
loaded by file path as it stands.

Usage: python3 experiments/peers/exact_inversion_check.py BELM_REPO

Each module's `rev_forward` (sampling from a latent), `intermediate_to_latent` (sampling from a
latent pair: EDICT's (x, y), or BDIA's and O-BELM's points at the top two levels) and
`latent_to_intermediate` (inversion of data to a pair) run with a stand-in for the Stable
Diffusion pipeline they take: `sd_pipe.unet` returns the noise prediction of the exact denoiser
of pinned.py's Gaussian N(MEAN, STD^2 I) in the VP variable (`eps = (x / a - D(x / a; sigma)) /
sigma`, `a = sqrt(alpha_bar_t)`, `sigma = sqrt((1 - alpha_bar_t) / alpha_bar_t)`), the scheduler
has Stable Diffusion's `scaled_linear` alphas (beta 0.00085 to 0.012, 1000 steps) in float64
(their `.to(torch.float32)` keeps float64, so that the comparison is not one of float32
rounding) and its timesteps (`leading` spacing, `steps_offset` 1: 1000 // N apart, ending at 1),
guidance scale 1 (no prompt). The latents are pinned.py's three LATENTS, the second latent of a
pair 0.7 LATENTS + 0.1, the data MEAN + 0.4 LATENTS. One JSON line per case: the levels in
scoreflow's sigma (the timesteps' sigmas, then 0) and the outputs, full precision, in the
scaled variable (the VP variable over a): the values pinned in scoreflow's test
`exact_samplers_match_belms_functions` (solvers/tests/exact_inversion.rs). BDIA.py's inversion
(`latent_to_intermediate`) is printed but not pinned: its first step leaves out the noise
prediction (`latent = ... * latent + (sigma_i - ...)`, with no `* noise_pred`); scoreflow's bdia
inversion is pinned through its sampling from a pair, which it inverts to rounding.
"""
import contextlib
import importlib.util
import io
import json
import math
import os
import sys
import types

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from pinned import Gaussian, LATENTS, MEAN  # noqa: E402


class Alphas:
    """alphas_cumprod whose elements' `.to(dtype)` stays float64."""

    def __init__(self, t):
        self.t = t

    def __getitem__(self, i):
        return Keep(self.t[int(i)])


class Keep:
    def __init__(self, v):
        self.v = v

    def to(self, *args, **kwargs):
        return self.v.clone()


class Scheduler:
    def __init__(self):
        betas = torch.linspace(0.00085 ** 0.5, 0.012 ** 0.5, 1000, dtype=torch.float64) ** 2
        self.abar = torch.cumprod(1.0 - betas, 0)
        self.alphas_cumprod = Alphas(self.abar)

    def set_timesteps(self, n, device=None):
        self.timesteps = torch.arange(0, n, dtype=torch.int64).flip(0) * (1000 // n) + 1

    def sigma(self, t):
        a = float(self.abar[int(t)])
        return math.sqrt((1.0 - a) / a)


class Unet:
    def __init__(self, scheduler):
        self.s = scheduler
        self.net = Gaussian()

    def __call__(self, x, t, **kwargs):
        a = float(self.s.abar[int(t)])
        sigma = math.sqrt((1.0 - a) / a)
        xs = x / math.sqrt(a)
        return ((xs - self.net(xs, sigma)) / sigma,)


class Pipe:
    def __init__(self):
        self.scheduler = Scheduler()
        self.unet = Unet(self.scheduler)

    def _encode_prompt(self, *args, **kwargs):
        return None


def load(repo, name):
    stub = types.ModuleType("samplers.test_sd15")
    stub.to_pil = lambda x, pipe: x
    pkg = types.ModuleType("samplers")
    pkg.__path__ = []
    sys.modules["samplers"] = pkg
    sys.modules["samplers.test_sd15"] = stub
    spec = importlib.util.spec_from_file_location(name, os.path.join(repo, "samplers", name + ".py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def main():
    repo = sys.argv[1]
    for name, kwargs in [("edict", {}), ("edict", {"p": 0.8}), ("BDIA", {}), ("BDIA", {"gamma": 1.0}),
                         ("BELM", {})]:
        mod = load(repo, name)
        for steps in [2, 3, 6]:
            # (The modules print as they go: kept off standard output.)
            with contextlib.redirect_stdout(io.StringIO()):
                line = case(mod, name, kwargs, steps)
            print(json.dumps(line))


def case(mod, name, kwargs, steps):
    lat = torch.tensor(LATENTS, dtype=torch.float64)
    second = 0.7 * lat + 0.1
    data = torch.tensor(MEAN, dtype=torch.float64) + 0.4 * lat
    pipe = Pipe()
    params = {"prompt": "", "negative_prompt": "", "seed": 0, "guidance_scale": 1.0,
              "num_inference_steps": steps, "width": 2, "height": 1}
    pipe.scheduler.set_timesteps(steps)
    ts = pipe.scheduler.timesteps
    sig = [pipe.scheduler.sigma(t) for t in ts]
    a = [1.0 / math.sqrt(1.0 + s * s) for s in sig]
    sample = mod.rev_forward(pipe, params, latents=lat.clone(), **kwargs)
    if name == "edict":
        px, py = mod.intermediate_to_latent(pipe, params, lat.clone(), second.clone(), **kwargs)
        pair_out = px
        ix, iy = mod.latent_to_intermediate(pipe, params, data.clone(), **kwargs)
        inv = [(ix / a[0]).flatten().tolist(), (iy / a[0]).flatten().tolist()]
    else:
        pair_out = mod.intermediate_to_latent(pipe, params, lat.clone(), second.clone(), **kwargs)
        top, nxt = mod.latent_to_intermediate(pipe, params, data.clone(), **kwargs)
        inv = [(top / a[0]).flatten().tolist(), (nxt / a[1]).flatten().tolist()]
    return {
        "sampler": name, "kwargs": kwargs, "steps": steps, "sigmas": sig + [0.0],
        "sample": sample.flatten().tolist(),
        "from_pair": pair_out.flatten().tolist(),
        "inverted": inv,
    }


if __name__ == "__main__":
    main()
