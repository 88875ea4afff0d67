"""Inversion against diffusers: `scoreflow sample --invert` with euler, ddim, dpmpp-2m, dpmpp-3m
and dpm-multistep (order 3; DPM-Solver of order 2) against diffusers'
DPMSolverMultistepInverseScheduler (DPM-Solver++ and DPM-Solver of orders 1, 2 and 3 run up an
increasing grid; order 1 is DDIM's and Euler's step) on the same levels, from the same data, on
the exact 8-mode ring (scoreflow's builtin:gmm8) in float64.

Usage: PYTHONPATH=.peers/site python3 experiments/peers/inversion_check.py --scoreflow BINARY
       [--diffusers-site .peers/diffusers] [--out DIR]

`scoreflow sample --steps S --invert data.npy` walks the S levels above 0 of the sampling grid
of S steps upwards (S - 1 steps, the data taken as the points at sigma_min) and writes
z = x(sigma_max) / sigma_max. The scheduler gets those levels as its sigmas (diffusers' VP
variable x_vp = x / sqrt(1 + sigma^2), the model's D as the "sample" prediction, timesteps
0 .. S - 2), `lower_order_final` off for euler, ddim, dpmpp-2m and dpmpp-3m (its lower-order
last steps below 15 steps, which those do not take) and on for dpm-multistep (which takes them,
diffusers' default), and for dpmpp-3m order 3 with solver_type "heun" (its
second-order start-up step in the form of scoreflow's dpmpp-3m, as in the sampling check of
peers.py). Prints one JSON line per comparison and exits 1 when one differs by more than
--tol (1e-8).

For information it also runs diffusers' DDIMInverseScheduler, which is not the same scheme: it
evaluates the model at the upper level of each step with the sample at the lower one, and starts
from alpha_bar = 1 (sigma = 0); its difference from scoreflow's euler is printed, not judged.
"""
import json
import math
import os
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import peers  # noqa: E402  (this folder)


def dpm_inverse(module, order, solver_type, model, x, up, algorithm_type="dpmsolver++", lower_order_final=False):
    """DPMSolverMultistepInverseScheduler on the increasing levels `up` from x at up[0]: z."""
    n = len(up) - 1
    sch = module.DPMSolverMultistepInverseScheduler(
        solver_order=order, prediction_type="sample", algorithm_type=algorithm_type,
        solver_type=solver_type, lower_order_final=lower_order_final)
    sch.set_timesteps(n)
    sch.sigmas = torch.tensor(up, dtype=torch.float64)
    sch.timesteps = torch.arange(0, n, dtype=torch.int64)
    sch.num_inference_steps = n
    ones = x.new_ones([x.shape[0]])
    xv = x / math.sqrt(1.0 + up[0] ** 2)
    for i, t in enumerate(sch.timesteps):
        sig = up[i]
        d = model(xv * math.sqrt(1.0 + sig * sig), ones * sig)
        xv = sch.step(d, t, xv).prev_sample
    return xv * math.sqrt(1.0 + up[-1] ** 2) / up[-1]


def ddim_inverse(module, model, x, up):
    """DDIMInverseScheduler as diffusers' inversion pipelines run it: its alphas_cumprod set to
    the levels (timestep k is up[k + 1], 0 .. n - 1; alpha_bar = 1 before the first), the model
    called at each step's upper timestep, eps = (x - D) / sigma in the VP variable. The data
    start at sigma = 0 (alpha_bar = 1), so the first step goes from 0 to up[1]; it lands on the
    same top level as scoreflow's."""
    n = len(up) - 1
    sch = module.DDIMInverseScheduler(num_train_timesteps=n, clip_sample=False, set_alpha_to_one=True,
                                      prediction_type="epsilon", timestep_spacing="leading", steps_offset=0)
    sch.alphas_cumprod = torch.tensor([1.0 / (1.0 + s * s) for s in up[1:]], dtype=torch.float64)
    sch.set_timesteps(n)
    ones = x.new_ones([x.shape[0]])
    xv = x.clone()
    for t in [int(t) for t in sch.timesteps]:
        sig = up[t + 1]
        xs = xv * math.sqrt(1.0 + sig * sig)
        eps = (xs - model(xs, ones * sig)) / sig
        xv = sch.step(eps, t, xv).prev_sample
    return xv * math.sqrt(1.0 + up[-1] ** 2) / up[-1]


def main():
    a = peers.check_script_args(__doc__, "scoreflow-inversion-", num=200, tol=1e-8)
    try:
        import diffusers
        from diffusers.schedulers import scheduling_dpmsolver_multistep_inverse as dpm_mod
        from diffusers.schedulers import scheduling_ddim_inverse as ddim_mod
    except Exception as e:  # no diffusers: nothing to check against
        print(json.dumps({"skipped": f"diffusers not importable: {type(e).__name__}: {e}"}))
        return 0
    out = a.out
    data = os.path.join(out, "data.npy")
    common = ["--denoiser", "builtin:gmm8", "--device", "cpu", "--dtype", "float64"]
    peers.scoreflow_json(a.scoreflow, ["sample", *common, "--solver", "heun", "--steps", "32", "--num", str(a.num),
                            "--out", data])
    x = torch.from_numpy(np.load(data).astype(np.float64))
    model = peers.gmm8().to_float64()
    print(json.dumps({"peer": f"diffusers {diffusers.__version__}", "data": data, "num": a.num}))
    failed = 0
    # (scoreflow's sampler, the scheduler's order, solver_type, algorithm_type, lower_order_final):
    # dpm-multistep keeps diffusers' lower_order_final (on by default), which lowers the last
    # orders of the 7 upward steps of an 8-step grid, as the inverse scheduler does.
    cases = [("euler", 1, "midpoint", "dpmsolver++", False), ("ddim", 1, "midpoint", "dpmsolver++", False),
             ("dpmpp-2m", 2, "midpoint", "dpmsolver++", False), ("dpmpp-3m", 3, "heun", "dpmsolver++", False),
             ("dpm-multistep(order=3)", 3, "midpoint", "dpmsolver++", True),
             ("dpm-multistep(algorithm_type=dpmsolver)", 2, "midpoint", "dpmsolver", True)]
    for steps in (8, 25):
        up = peers.karras_f64(steps)[:-1][::-1]
        for solver, order, solver_type, algorithm_type, lower in cases:
            tag = solver.replace("(", "-").replace(")", "").replace("=", "-").replace(",", "-")
            z_path = os.path.join(out, f"z-{tag}-{steps}.npy")
            line = peers.scoreflow_json(a.scoreflow, ["sample", *common, "--solver", solver, "--steps", str(steps),
                                           "--invert", data, "--out", z_path])
            # scoreflow computes in float64 and writes float32 latents: allow their rounding.
            z_sf = torch.from_numpy(np.load(z_path).astype(np.float64))
            z_peer = dpm_inverse(dpm_mod, order, solver_type, model, x, up, algorithm_type, lower)
            diff = float((z_sf - z_peer).abs().max())
            scale = float(z_peer.abs().max())
            ok = diff <= a.tol + 6e-8 * scale  # float32 rounding of the written latents
            failed += not ok
            print(json.dumps({"solver": solver, "steps": steps, "inversion_steps": steps - 1, "nfe": line["nfe"],
                              "peer": f"DPMSolverMultistepInverseScheduler(solver_order={order}, "
                                      f"solver_type={solver_type}, algorithm_type={algorithm_type}, "
                                      f"lower_order_final={lower})",
                              "max_abs_diff": diff, "max_abs_z": scale, "ok": ok}))
        # A control: the check tells the orders apart (dpmpp-2m's latents against order 1).
        z_2m = torch.from_numpy(np.load(os.path.join(out, f"z-dpmpp-2m-{steps}.npy")).astype(np.float64))
        diff = float((z_2m - dpm_inverse(dpm_mod, 1, "midpoint", model, x, up)).abs().max())
        ok = diff > 1e-3
        failed += not ok
        print(json.dumps({"control": "dpmpp-2m against solver_order=1", "steps": steps, "max_abs_diff": diff,
                          "ok": ok}))
        z_sf = torch.from_numpy(np.load(os.path.join(out, f"z-euler-{steps}.npy")).astype(np.float64))
        z_ddim = ddim_inverse(ddim_mod, model, x, up)
        print(json.dumps({"solver": "euler", "steps": steps, "peer": "DDIMInverseScheduler (another scheme, not judged)",
                          "max_abs_diff": float((z_sf - z_ddim).abs().max()),
                          "rms_diff": float((z_sf - z_ddim).pow(2).sum(1).mean().sqrt())}))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
