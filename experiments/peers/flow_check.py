"""Rectified flow against diffusers: scoreflow's samplers under `--sde flow:SHIFT --grid uniform-t`
against diffusers' flow-matching schedulers (FlowMatchEulerDiscreteScheduler,
FlowMatchHeunDiscreteScheduler, and DPMSolverMultistepScheduler / UniPCMultistepScheduler with
`use_flow_sigmas` and `prediction_type="flow_prediction"`) on their own shifted flow schedules,
from the same noise, on the exact 8-mode ring (scoreflow's builtin:gmm8) in float64.

Usage: PYTHONPATH=.peers/site python3 experiments/peers/flow_check.py --scoreflow BINARY
       [--diffusers-site .peers/diffusers] [--out DIR] [--shift 3]

The flow: x_t = (1 - tau) x0 + tau eps, velocity v = eps - x0 (diffusers' direction); scoreflow's
noise level is sigma = tau / (1 - tau) and x^ = x_t / (1 - tau). diffusers' models get
v = (x_t - D(x^; sigma)) / tau from the exact denoiser. The schedule is DPMSolverMultistep's
`use_flow_sigmas` one for N steps: unshifted times u = 0.999 (1 - 1/1000) down to 0.999 / N,
uniform, shifted tau = c u / (1 + (c - 1) u), then 0. scoreflow gets the same levels as
`--grid uniform-t --sde flow:c --sigma-max c 0.999 / 0.001 --sigma-min c u_min / (1 - u_min)`
(under flow:c, sigma(u) = c u / (1 - u)); FlowMatchEuler gets the unshifted times as its
`sigmas` (it shifts them), and so does UniPCMultistep (whose own flow times start at
u = 1 - 1e-6), FlowMatchHeun its schedule set to those levels (its own set_timesteps
starts at tau = 1, sigma = inf, where scoreflow cannot start). The start: x_t = tau_0 z for
scoreflow's noise z (x^ = sigma_max z).

Pairs: euler / FlowMatchEuler (Euler in tau on x_t is euler in sigma on x^: DDIM's update);
edm-ablation with the flow schedule and scaling / FlowMatchHeun (Heun in tau, last step Euler);
lcm / FlowMatchEuler with stochastic_sampling (x' = (1 - t') x0 + t' n, given scoreflow's step
noise of seed 3, rebuilt by peers.ScoreflowNoise);
dpm-multistep (DPM-Solver++ of orders 2 and 3) / DPMSolverMultistep; unipc /
UniPCMultistep (bh2, order 2); euler under `--sde flow:mu=M` with M = ln(shift) / FlowMatchEuler
with dynamic shifting (`use_dynamic_shifting`, exponential time shift) at mu = M. diffusers keeps its flow sigmas in float32, so the tolerance
(--tol, 2e-5) allows their rounding. Controls, which must differ: heun in sigma against
FlowMatchHeun (another time variable), dpm-multistep against solver_order 1, lcm with seed 4's
noise against the peer given seed 3's. Prints one JSON
line per comparison and exits 1 when a pair differs by more than --tol or a control does not.
"""
import json
import math
import os
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import peers  # noqa: E402  (this folder)


SEED = 3


def velocity(model, x, tau):
    """The flow's velocity v = (x_t - D) / tau at interpolation time tau (float)."""
    sigma = tau / (1.0 - tau)
    d = model(x / (1.0 - tau), x.new_ones([x.shape[0]]) * sigma)
    return (x - d) / tau


def unshifted_times(steps, train=1000):
    """DPMSolverMultistep's use_flow_sigmas times before the shift: 1 - linspace(1, 1/T, N + 1),
    flipped, without the 0."""
    u = 1.0 - np.linspace(1.0, 1.0 / train, steps + 1)
    return np.flip(u)[:-1].copy()


def run_scheduler(sch, model, z, before_step=None):
    """Drive a scheduler whose set_timesteps has run: x_t = sigmas[0] z, then one step per
    timestep with the velocity at sigmas[step_index] (for FlowMatchHeun's correction, the
    step's end: its index has moved on by one); `before_step(k)` runs before the k-th call."""
    x = z * float(sch.sigmas[0])
    for k, t in enumerate(sch.timesteps):
        if before_step:
            before_step(k)
        i = sch.step_index if sch.step_index is not None else 0
        x = sch.step(velocity(model, x, float(sch.sigmas[i])), t, x).prev_sample.to(torch.float64)
    return x


def flow_match_euler(mods, shift, steps, model, z):
    sch = mods["euler"].FlowMatchEulerDiscreteScheduler(shift=shift)
    sch.set_timesteps(sigmas=unshifted_times(steps).tolist())
    return run_scheduler(sch, model, z)


def flow_match_euler_dynamic(mods, shift, steps, model, z):
    """FlowMatchEuler with diffusers' dynamic shifting (exponential time shift) at mu = ln(shift)."""
    sch = mods["euler"].FlowMatchEulerDiscreteScheduler(use_dynamic_shifting=True, time_shift_type="exponential")
    sch.set_timesteps(sigmas=unshifted_times(steps).tolist(), mu=math.log(shift))
    return run_scheduler(sch, model, z)


def flow_match_euler_stochastic(mods, shift, steps, model, z, noise=None, levels=None):
    """FlowMatchEuler with stochastic_sampling (x' = (1 - t') x0 + t' n): its randn_tensor
    returning scoreflow's step noise (STREAM_STEP) on [sigma', sigma] of the step's levels."""
    mod = mods["euler"]
    sch = mod.FlowMatchEulerDiscreteScheduler(shift=shift, stochastic_sampling=True)
    sch.set_timesteps(sigmas=unshifted_times(steps).tolist())
    def draw(k):
        hi, lo = levels[k], levels[k + 1]
        n = noise.standard(peers.STREAM_STEP, lo, hi) if lo > 0 else torch.zeros_like(z)
        mod.randn_tensor = lambda *args, **kw: n.to(torch.float32)

    saved = mod.randn_tensor
    try:
        return run_scheduler(sch, model, z, draw)
    finally:
        mod.randn_tensor = saved


def flow_match_heun(mods, shift, steps, model, z):
    """FlowMatchHeun's schedule rebuilt from the shifted levels as its set_timesteps lays it out:
    sigmas [s0, s1, s1, ..., s_{N-1}, s_{N-1}, 0], timesteps [t0, t1, t1, ..., t_{N-1}, t_{N-1}]."""
    sch = mods["heun"].FlowMatchHeunDiscreteScheduler(shift=shift)
    sch.set_timesteps(steps)
    u = torch.from_numpy(unshifted_times(steps))
    s = (shift * u / (1 + (shift - 1) * u)).to(torch.float32)
    ts = s * 1000.0
    sch.timesteps = torch.cat([ts[:1], ts[1:].repeat_interleave(2)])
    full = torch.cat([s, torch.zeros(1)])
    sch.sigmas = torch.cat([full[:1], full[1:-1].repeat_interleave(2), full[-1:]])
    return run_scheduler(sch, model, z)


def dpm_multistep(mods, shift, steps, model, z, order=2):
    sch = mods["dpm"].DPMSolverMultistepScheduler(
        use_flow_sigmas=True, flow_shift=shift, prediction_type="flow_prediction", solver_order=order,
        algorithm_type="dpmsolver++", solver_type="midpoint", lower_order_final=True, final_sigmas_type="zero")
    sch.set_timesteps(steps)
    return run_scheduler(sch, model, z)


def unipc(mods, shift, steps, model, z):
    sch = mods["unipc"].UniPCMultistepScheduler(
        use_flow_sigmas=True, flow_shift=shift, prediction_type="flow_prediction", solver_order=2,
        solver_type="bh2", predict_x0=True, lower_order_final=True, final_sigmas_type="zero")
    # Its own flow times start at u = 1 - 1e-6; given DPMSolverMultistep's (it shifts them).
    sch.set_timesteps(sigmas=unshifted_times(steps))
    return run_scheduler(sch, model, z)


def main():
    a = peers.check_script_args(__doc__, "scoreflow-flow-", num=200, shift=3.0, tol=2e-5)
    try:
        import diffusers
        from diffusers.schedulers import scheduling_dpmsolver_multistep as dpm_mod
        from diffusers.schedulers import scheduling_flow_match_euler_discrete as euler_mod
        from diffusers.schedulers import scheduling_flow_match_heun_discrete as heun_mod
        from diffusers.schedulers import scheduling_unipc_multistep as unipc_mod
    except Exception as e:  # no diffusers: nothing to check against
        print(json.dumps({"skipped": f"diffusers not importable: {type(e).__name__}: {e}"}))
        return 0
    mods = {"euler": euler_mod, "heun": heun_mod, "dpm": dpm_mod, "unipc": unipc_mod}
    out = a.out
    c = a.shift
    z = torch.randn([a.num, 2], generator=torch.Generator().manual_seed(11), dtype=torch.float64)
    z_path = os.path.join(out, "z.npy")
    np.save(z_path, z.numpy().astype(np.float32))
    z = torch.from_numpy(np.load(z_path).astype(np.float64))
    model = peers.gmm8().to_float64()
    print(json.dumps({"peer": f"diffusers {diffusers.__version__}", "num": a.num, "shift": c}))
    failed = 0
    pairs = [
        ("euler", ["--solver", "euler"], "FlowMatchEulerDiscreteScheduler", flow_match_euler, {}),
        ("edm-ablation(flow)", ["--solver", "edm-ablation", "--schedule", "flow", "--scaling", "flow"],
         "FlowMatchHeunDiscreteScheduler", flow_match_heun, {}),
        ("dpm-multistep", ["--solver", "dpm-multistep"], "DPMSolverMultistepScheduler(order 2, flow)",
         dpm_multistep, {}),
        ("dpm-multistep(order=3)", ["--solver", "dpm-multistep", "--order", "3"],
         "DPMSolverMultistepScheduler(order 3, flow)", dpm_multistep, {"order": 3}),
        ("unipc", ["--solver", "unipc"], "UniPCMultistepScheduler(bh2, order 2, flow)", unipc, {}),
        ("euler, flow:mu=ln(shift)", ["--solver", "euler"],
         "FlowMatchEulerDiscreteScheduler(use_dynamic_shifting, mu = ln(shift))", flow_match_euler_dynamic,
         {"sde": "mu"}),
        ("lcm", ["--solver", "lcm", "--seed", str(SEED)],
         "FlowMatchEulerDiscreteScheduler(stochastic_sampling=True), the same step noise",
         flow_match_euler_stochastic, {"noise": True}),
    ]
    controls = [
        ("heun", ["--solver", "heun"], "FlowMatchHeunDiscreteScheduler", flow_match_heun, {}),
        ("dpm-multistep", ["--solver", "dpm-multistep"], "DPMSolverMultistepScheduler(order 1, flow)",
         dpm_multistep, {"order": 1}),
        ("lcm(seed 4)", ["--solver", "lcm", "--seed", str(SEED + 1)],
         "FlowMatchEulerDiscreteScheduler(stochastic_sampling=True), seed 3's noise", flow_match_euler_stochastic,
         {"noise": True}),
    ]
    for steps in (10, 25):
        u = unshifted_times(steps)
        sigma_max = c * u[0] / (1.0 - u[0])
        sigma_min = c * u[-1] / (1.0 - u[-1])
        common = ["sample", "--denoiser", "builtin:gmm8", "--device", "cpu", "--dtype", "float64",
                  "--grid", "uniform-t", "--sigma-max", repr(float(sigma_max)),
                  "--sigma-min", repr(float(sigma_min)), "--steps", str(steps), "--noise", z_path]
        for is_control, (name, flags, peer, fn, kw) in [(False, p) for p in pairs] + [(True, p) for p in controls]:
            kw = dict(kw)
            sde = f"flow:mu={math.log(c)!r}" if kw.pop("sde", None) == "mu" else f"flow:{c:g}"
            flags = ["--sde", sde] + flags
            tag = name.replace("(", "-").replace(")", "").replace("=", "-").replace(" ", "-")
            x_path = os.path.join(out, f"x-{tag}-{steps}.npy")
            line = peers.scoreflow_json(a.scoreflow, common + flags + ["--out", x_path])
            x_sf = torch.from_numpy(np.load(x_path).astype(np.float64))
            if kw.get("noise"):
                # scoreflow's levels (sigma of the scaled variable) and its Brownian paths of
                # this seed, on its span (solvers/src/noise.rs, src/job.rs).
                levels = [c * v / (1.0 - v) for v in u] + [0.0]
                kw = {"noise": peers.ScoreflowNoise(SEED, a.num, [2], sigma_max * 1.001 + 1e-3),
                      "levels": levels}
            x_peer = fn(mods, c, steps, model, z, **kw)
            diff = float((x_sf - x_peer).abs().max())
            ok = diff > 1e-3 if is_control else diff <= a.tol
            failed += not ok
            print(json.dumps({("control" if is_control else "solver"): name, "steps": steps, "nfe": line["nfe"],
                              "peer": peer, "max_abs_diff": diff, "ok": ok}))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
