"""Print the grids of ComfyUI's `normal`, `sgm_uniform`, `simple`, `ddim_uniform`, `beta` and
`linear_quadratic` schedulers, and k-diffusion's `DiscreteSchedule.get_sigmas`, on two DDPM
chains.

Usage: python3 experiments/peers/comfy_schedulers_check.py SAMPLERS_PY MODEL_SAMPLING_PY

SAMPLERS_PY is ComfyUI's `comfy/samplers.py` (or any file holding its `normal_scheduler`,
`simple_scheduler`, `ddim_scheduler`, `beta_scheduler` and `linear_quadratic_schedule`;
`sgm_uniform` is `normal_scheduler` with `sgm=True`; `beta_scheduler` needs numpy and scipy,
which .peers/site holds; `linear_quadratic` reads only the model's `sigma_max`, the chain's top
level; a scheduler whose function the file lacks is left out, named on stderr),
MODEL_SAMPLING_PY its `comfy/model_sampling.py` (its class `ModelSamplingDiscrete`). The
functions and the class are taken from the files by name, as they stand; the class is given the
chain's betas (`_register_schedule(given_betas=...)`, in float64, as ComfyUI's
`make_beta_schedule` returns them), so that its table of levels is ComfyUI's: float32, `timestep`
the index of the nearest level in log sigma, `sigma(t)` interpolating log sigma at fractional t.

The chains: DDPM's linear one (betas 1e-4 to 0.02, 1000 steps; scoreflow's default) and Stable
Diffusion's (ComfyUI's `linear`, diffusers' `scaled_linear`: sqrt(beta) linear from sqrt(0.00085)
to sqrt(0.012)). k-diffusion's `DiscreteSchedule(sigmas, quantize=False).get_sigmas(n)` (from
k_diffusion/external.py, loaded by kdiffusion_files.py; `PYTHONPATH=.peers/site`) is printed
beside ComfyUI's `normal`. The `beta` scheduler is also called with the shapes (alpha, beta) of
BETA_SHAPES, as ComfyUI's `BetaSamplingScheduler` node calls it. One JSON line per chain,
scheduler, shape and step count, with the levels
(ComfyUI's float32 values, 0 last). The values pinned in scoreflow's test
`comfyuis_schedulers_are_its_levels_on_the_chain` (solvers/tests/sde_and_grids.rs) come from
this script.
"""
import ast
import functools
import json
import math
import sys

import torch

import kdiffusion_files

CHAINS = {
    "linear": lambda: torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64),
    "scaled-linear": lambda: torch.linspace(0.00085 ** 0.5, 0.012 ** 0.5, 1000,
                                            dtype=torch.float64) ** 2,
}
STEPS = {"normal": [1, 3, 10, 25], "sgm_uniform": [1, 3, 10, 25], "simple": [1, 3, 10, 25],
         "ddim_uniform": [4, 8, 10, 6], "beta": [1, 2, 3, 10, 25, 138, 139],
         "linear_quadratic": [1, 2, 5, 10, 25]}
BETA_SHAPES = [(0.5, 0.7), (1.0, 1.0), (2.0, 0.5)]
# Shapes and step counts where a timestep lands on a half step of the chain (T - 1 = 999): the
# quantile's last bit decides the rounding.
BETA_TIES = [((0.5, 0.5), 10), ((1.0, 1.0), 6), ((1.0, 1.0), 12), ((2.0, 1.0), 4),
             ((2.0, 1.0), 8), ((1.0, 5.0), 64), ((2.0, 5.0), 64), ((20.0, 20.0), 10),
             ((0.6, 0.6), 10)]


def defs_from(path, names):
    """The functions and classes `names` of the file, those it lacks named on stderr."""
    tree = ast.parse(open(path).read())
    nodes = {n.name: n for n in tree.body if isinstance(n, (ast.FunctionDef, ast.ClassDef))}
    import numpy
    import scipy.stats
    ns = {"torch": torch, "math": math, "numpy": numpy, "scipy": scipy}
    for name in names:
        if name not in nodes:
            print(f"{path} has no {name}: its scheduler is left out", file=sys.stderr)
            continue
        exec(compile(ast.Module(body=[nodes[name]], type_ignores=[]), path, "exec"), ns)
    return ns


def main():
    ns = defs_from(sys.argv[1], ["normal_scheduler", "simple_scheduler", "ddim_scheduler",
                                 "beta_scheduler", "linear_quadratic_schedule"])
    cls = defs_from(sys.argv[2], ["ModelSamplingDiscrete"])["ModelSamplingDiscrete"]
    funcs = {
        "normal": "normal_scheduler",
        "sgm_uniform": "normal_scheduler",
        "simple": "simple_scheduler",
        "ddim_uniform": "ddim_scheduler",
        "beta": "beta_scheduler",
        "linear_quadratic": "linear_quadratic_schedule",
    }
    schedulers = {name: ns[f] for name, f in funcs.items() if f in ns}
    if "sgm_uniform" in schedulers:
        schedulers["sgm_uniform"] = functools.partial(schedulers["sgm_uniform"], sgm=True)
    pkg = None
    if "normal" in schedulers:
        pkg, _, _ = kdiffusion_files.load(lambda msg: sys.exit(msg),
                                          files=("sampling.py", "external.py"))
    for chain, betas in CHAINS.items():
        ms = cls.__new__(cls)
        torch.nn.Module.__init__(ms)
        ms._register_schedule(given_betas=betas())
        alphas_cumprod = torch.cumprod(1.0 - betas(), dim=0)
        kd = pkg and pkg.external.DiscreteSchedule(((1 - alphas_cumprod) / alphas_cumprod) ** 0.5,
                                                   False)
        for name, fn in schedulers.items():
            for n in STEPS[name]:
                line = {"chain": chain, "scheduler": name, "steps": n,
                        "sigmas": [float(v) for v in fn(ms, n)]}
                if name == "normal":
                    line["k_diffusion"] = [float(v) for v in kd.get_sigmas(n)]
                print(json.dumps(line))
        if "linear_quadratic" in schedulers:
            lq = schedulers["linear_quadratic"](ms, 10, threshold_noise=0.05, linear_steps=3)
            print(json.dumps({"chain": chain, "scheduler": "linear_quadratic", "steps": 10,
                              "threshold_noise": 0.05, "linear_steps": 3,
                              "sigmas": [float(v) for v in lq]}))
        # The beta scheduler with other shapes, as ComfyUI's BetaSamplingScheduler node calls it.
        if "beta" in schedulers:
            cases = [(shape, n) for shape in BETA_SHAPES for n in [3, 10, 25]] + BETA_TIES
            for (alpha, beta), n in cases:
                sig = schedulers["beta"](ms, n, alpha=alpha, beta=beta)
                print(json.dumps({"chain": chain, "scheduler": "beta", "steps": n,
                                  "alpha": alpha, "beta": beta,
                                  "sigmas": [float(v) for v in sig]}))


if __name__ == "__main__":
    main()
