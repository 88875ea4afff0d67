"""Print what salesforce/EDICT's own `coupled_stablediffusion` gives on the pinned problem, with
and without its leapfrog alternation.

Usage: python3 experiments/peers/edict_check.py EDICT_FUNCTIONS_PY

EDICT_FUNCTIONS_PY is salesforce/EDICT's `edict_functions.py`. The module loads CLIP, the VAE
and the UNet of Stable Diffusion when imported, so it is not imported: its functions
`coupled_stablediffusion`, `forward_step`, `reverse_step` and `get_alpha_and_beta` are taken
from the file by name, as they stand, and run with stand-ins for the module's globals: a `unet`
returning the noise prediction of the exact denoiser of pinned.py's Gaussian N(MEAN, STD^2 I)
in the VP variable (`eps = (x / a - D(x / a; sigma)) / sigma`, `a = sqrt(alpha_bar_t)`), a
`DDIMScheduler` with Stable Diffusion's `scaled_linear` alphas (beta 0.00085 to 0.012, 1000
steps) in float64, diffusers' default timesteps for N steps (1000 // N apart, from
1000 // N (N - 1) down to 0) and `final_alpha_cumprod` 1 (so the last step ends at sigma = 0:
`set_alpha_to_one=True`; EDICT's own setting, False, ends at the first alpha), no-op text
encoder and attention hooks. Guidance has no effect (the conditional and unconditional
predictions are the same). N = 2, 4 and 8: its `forward_step` steps down by 1000 / N as a float
and interpolates alpha_bar there, which lands on the next timestep only where N divides 1000.
Sampling starts from the pair (LATENTS, LATENTS) at the top level
(`fixed_starting_latent`, `return_latents=True`); inversion (`reverse=True`) from the data
MEAN + 0.4 LATENTS as the pair (data, data) (its `image_to_latent` returns nothing for a single
tensor). One JSON line per case: the levels in scoreflow's sigma, the pair after
sampling and after inversion in the scaled variable (the VP variable over a), full precision:
the values pinned in scoreflow's test `edict_matches_salesforces_coupled_stablediffusion`
(solvers/tests/exact_inversion.rs).
"""
import ast
import json
import math
import os
import sys
import types

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from pinned import Gaussian, LATENTS, MEAN  # noqa: E402

BETAS = torch.linspace(0.00085 ** 0.5, 0.012 ** 0.5, 1000, dtype=torch.float64) ** 2
ABAR = torch.cumprod(1.0 - BETAS, 0)


class DDIMScheduler:
    def __init__(self, **kwargs):
        self.config = types.SimpleNamespace(num_train_timesteps=1000)
        self.num_train_timesteps = 1000
        self.alphas_cumprod = ABAR.clone()
        self.final_alpha_cumprod = torch.tensor(1.0, dtype=torch.float64)

    def set_timesteps(self, n):
        self.num_inference_steps = n
        self.timesteps = torch.arange(0, n, dtype=torch.int64).flip(0) * (1000 // n)


class Unet:
    in_channels = 2

    def __init__(self):
        self.net = Gaussian()

    def __call__(self, x, t, encoder_hidden_states=None):
        a = float(ABAR[int(t)])
        sigma = math.sqrt((1.0 - a) / a)
        xs = x / math.sqrt(a)
        return types.SimpleNamespace(sample=(xs - self.net(xs, sigma)) / sigma)


class Tokens:
    input_ids = torch.zeros(1)


def tokenizer(*args, **kwargs):
    return Tokens()


tokenizer.model_max_length = 77


def sigma_of(t):
    a = float(ABAR[int(t)])
    return math.sqrt((1.0 - a) / a)


def namespace(unet):
    """The module globals its functions read, stood in: torch, the scheduler class, `unet`, a
    text encoder and attention hooks that do nothing."""
    noop = lambda *a, **k: None  # noqa: E731
    return {
        "torch": torch, "np": np, "random": __import__("random"), "math": math,
        "tqdm": lambda it, **k: it, "DDIMScheduler": DDIMScheduler, "unet": unet,
        "clip_tokenizer": tokenizer,
        "clip": lambda ids: types.SimpleNamespace(last_hidden_state=None),
        "device": "cpu", "vae": None,
        "init_attention_edit": noop, "init_attention_func": noop, "init_attention_weights": noop,
        "save_last_tokens_attention": noop, "save_last_self_attention": noop,
        "use_last_tokens_attention_weights": noop, "use_last_tokens_attention": noop,
        "use_last_self_attention": noop,
    }


def main():
    src = open(sys.argv[1]).read()
    wanted = ["coupled_stablediffusion", "forward_step", "reverse_step", "get_alpha_and_beta"]
    tree = ast.parse(src)
    nodes = [n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name in wanted]
    assert sorted(n.name for n in nodes) == sorted(wanted), [n.name for n in nodes]
    ns = namespace(Unet())
    exec(compile(ast.Module(body=nodes, type_ignores=[]), sys.argv[1], "exec"), ns)
    run = ns["coupled_stablediffusion"]
    lat = torch.tensor(LATENTS, dtype=torch.float64)
    data = torch.tensor(MEAN, dtype=torch.float64) + 0.4 * lat
    for leapfrog in [True, False]:
        for steps in [2, 4, 8]:
            ts = torch.arange(0, steps, dtype=torch.int64).flip(0) * (1000 // steps)
            sig = [sigma_of(t) for t in ts]
            a0 = 1.0 / math.sqrt(1.0 + sig[0] ** 2)
            x, y = run(steps=steps, leapfrog_steps=leapfrog, return_latents=True,
                       fixed_starting_latent=[lat.clone(), lat.clone()], mix_weight=0.93)
            # (A single tensor as init_image is lost by its image_to_latent, which returns
            # nothing for a tensor: the pair (data, data) is the same start.)
            ix, iy = run(steps=steps, leapfrog_steps=leapfrog, reverse=True,
                         init_image=[data.clone(), data.clone()], mix_weight=0.93)
            print(json.dumps({
                "leapfrog": leapfrog, "steps": steps, "sigmas": sig + [0.0],
                "sample": [x.flatten().tolist(), y.flatten().tolist()],
                "inverted": [(ix / a0).flatten().tolist(), (iy / a0).flatten().tolist()],
            }))


if __name__ == "__main__":
    main()
