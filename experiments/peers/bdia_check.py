"""Print what the BDIA authors' own `BDIA_stablediffusion` gives on the pinned problem.

Usage: python3 experiments/peers/bdia_check.py BDIA_FUNCTIONS_PY

BDIA_FUNCTIONS_PY is guoqiang-zhang-x/BDIA's `image-editing/bdia_edict_functions.py`. As
salesforce/EDICT's module (from which it is derived), it loads Stable Diffusion's models when
imported, so its functions `BDIA_stablediffusion`, `forward_step`, `reverse_step` and
`get_alpha_and_beta` are taken from the file by name, as they stand, and run with the stand-ins
of edict_check.py (the exact denoiser of pinned.py's Gaussian in the VP variable, Stable
Diffusion's alphas in float64, diffusers' default timesteps, `final_alpha_cumprod` 1; N = 2, 4
and 8, which divide 1000, as its `forward_step` needs), in its BDIA mode (`run_baseline=True`,
as its `BDIA_editing` calls it), gamma 1 (its default) and 0.5 (`BDIA_editing`'s). Sampling
starts from the latent pair (LATENTS at the top level, 0.7 LATENTS + 0.1 at the next) through
`fixed_starting_latent`, as its editing does; inversion (`reverse=True`) from the data MEAN +
0.4 LATENTS. Its inversion's first step evaluates the model below the lowest level (at
timestep -1000 / N, where the stand-in's alpha_bar is 1 and the noise prediction its limit, 0):
scoreflow's data companion evaluates it at the lowest level (BELM's choice), so the pair it
prints is not compared with scoreflow's inversion; scoreflow's sampling from that pair must give
the data back. One JSON line per case, in the scaled variable (the VP variable over
sqrt(alpha_bar)): the levels (scoreflow's sigma), the sample from the pair and the inverted pair:
what scoreflow's test `bdia_matches_the_authors_bdia_stablediffusion`
(solvers/tests/exact_inversion.rs) pins.
"""
import ast
import json
import math
import os
import sys
import types

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import edict_check  # noqa: E402  (this folder: the stand-ins)
from pinned import LATENTS, MEAN  # noqa: E402


class Unet(edict_check.Unet):
    """The stand-in, with the limit 0 of the noise prediction at alpha_bar = 1 (t < 0)."""

    def __call__(self, x, t, encoder_hidden_states=None):
        if float(t) < 0:
            return types.SimpleNamespace(sample=torch.zeros_like(x))
        return super().__call__(x, t, encoder_hidden_states)


def main():
    src = open(sys.argv[1]).read()
    wanted = ["BDIA_stablediffusion", "forward_step", "reverse_step", "get_alpha_and_beta"]
    nodes = [n for n in ast.parse(src).body if isinstance(n, ast.FunctionDef) and n.name in wanted]
    assert sorted(n.name for n in nodes) == sorted(wanted), [n.name for n in nodes]
    ns = edict_check.namespace(Unet())
    exec(compile(ast.Module(body=nodes, type_ignores=[]), sys.argv[1], "exec"), ns)
    run = ns["BDIA_stablediffusion"]
    lat = torch.tensor(LATENTS, dtype=torch.float64)
    second = 0.7 * lat + 0.1
    data = torch.tensor(MEAN, dtype=torch.float64) + 0.4 * lat
    for gamma in [1.0, 0.5]:
        for steps in [2, 4, 8]:
            ts = torch.arange(0, steps, dtype=torch.int64).flip(0) * (1000 // steps)
            sig = [edict_check.sigma_of(t) for t in ts]
            a = [1.0 / math.sqrt(1.0 + s * s) for s in sig]
            x, _ = run(steps=steps, gamma=gamma, run_baseline=True, return_latents=True,
                       fixed_starting_latent=[lat.clone(), second.clone()])
            top, nxt = run(steps=steps, gamma=gamma, run_baseline=True, reverse=True,
                           init_image=[data.clone(), data.clone()])
            print(json.dumps({
                "gamma": gamma, "steps": steps, "sigmas": sig + [0.0],
                "from_pair": x.flatten().tolist(),
                "inverted": [(top / a[0]).flatten().tolist(), (nxt / a[1]).flatten().tolist()],
            }))


if __name__ == "__main__":
    main()
