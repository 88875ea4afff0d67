"""Print the samples of ComfyUI's `sample_heunpp2` on the pinned problem.

Usage: python3 experiments/peers/heunpp2_check.py SAMPLING_PY

SAMPLING_PY is ComfyUI's `comfy/k_diffusion/sampling.py` (or any file holding its
`sample_heunpp2`, the Heun++ sampler of Carzit's sd-webui-samplers-scheduler). The function is
taken from the file by name, as it stands, and run with k-diffusion's `to_d` (k-diffusion loaded
by file path, kdiffusion_files.py) and with `torch.randn_like` returning pinned.py's formula
noise (TorchWithNoise), around the exact denoiser of pinned.py's Gaussian N(MEAN, STD^2 I),
float64, from its three LATENTS. Levels: EDM's Karras grid of N steps from 80 to 0.002 (rho 7)
and a final 0, N = 8 (and 2 and 3, where the sampler's last-two-steps rules meet). ComfyUI draws
the churn's normal on every step, used or not: the cases with churn put it on every level
(s_tmin 0, s_tmax inf), where every draw is used. One JSON line per case with the samples, full
precision, and the number of draws: the values pinned in scoreflow's test
`heunpp2_matches_comfyuis_function` (solvers/tests/samplers.rs).
"""
import ast
import json
import sys

import kdiffusion_files
from pinned import FormulaNoise, KModel, TorchWithNoise, karras, latents


def main():
    pkg, _, _ = kdiffusion_files.load(lambda msg: sys.exit(msg))
    src = open(sys.argv[1]).read()
    defs = {n.name: n for n in ast.parse(src).body if isinstance(n, ast.FunctionDef)}
    cases = [
        (8, {}),
        (2, {}),
        (3, {}),
        (8, {"s_churn": 10.0, "s_tmin": 0.0, "s_tmax": float("inf"), "s_noise": 0.9}),
        (8, {"s_churn": 2.0, "s_tmin": 0.0, "s_tmax": float("inf")}),
    ]
    for steps, kwargs in cases:
        draw = FormulaNoise()
        ns = {"torch": TorchWithNoise(draw), "trange": lambda *a, **k: range(*a),
              "to_d": pkg.sampling.to_d}
        node = defs["sample_heunpp2"]
        node.decorator_list = []
        exec(compile(ast.Module(body=[node], type_ignores=[]), sys.argv[1], "exec"), ns)
        sigmas = karras(steps)
        x0 = latents() * sigmas[0]
        x = ns["sample_heunpp2"](KModel(), x0, sigmas, extra_args={}, disable=True, **kwargs)
        params = {k: ("inf" if v == float("inf") else v) for k, v in kwargs.items()}
        print(json.dumps({"steps": steps, "params": params, "draws": draw.k, "x": x.tolist()}))


if __name__ == "__main__":
    main()
