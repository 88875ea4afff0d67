"""External models: scoreflow's model cards against k-diffusion's own model wrappers.

A model card (src/card.rs) wraps a TorchScript network exported from PyTorch in a
preconditioning, D(x; sigma) = c_skip x + c_out F(c_in x; c_noise). The discrete kinds are meant
to be exactly the wrappers of k-diffusion's `k_diffusion/external.py`:

    card [precond]                               k-diffusion
    kind = "discrete", prediction = "eps"        DiscreteEpsDDPMDenoiser
    kind = "discrete", prediction = "v"          DiscreteVDDPMDenoiser
    kind = "discrete", prediction = "x0"         (none: D = F, the same time input)
    kind = "discrete", quantize = true           the same, DiscreteSchedule(quantize=True)
    kind = "v-diffusion"                         VDenoiser
    learned_sigmas = true                        OpenAIDenoiser(has_learned_sigmas=True)

What it does:

1. Writes TorchScript modules and their cards into --out: the exact denoiser of scoreflow's
   `builtin:gmm8` (8 equal modes of std 0.2 on a circle of radius 2) exposed as a discrete eps
   model on the linear beta schedule (`eps-linear`), as a discrete v model on scaled-linear
   (`v-scaled`), as a discrete x0 model on squaredcos-cap-v2 (`x0-cosine`), as a continuous
   v-diffusion model (`v-diffusion`), as a quantized eps model that reads its time input as a
   step index (`eps-quantize`), and a small random traced conv net on [3, 8, 8] with twice the
   output channels (`unet-learned`). The mixture modules recover sigma from their time input
   (k-diffusion's `t_to_sigma`) and return the prediction of the exact posterior mean, so they
   exercise the time input as a real network would.
2. For each module and each of k-diffusion's `sample_euler`, `sample_heun` and `sample_dpmpp_2m`:
   the k-diffusion wrapper around the saved module (loaded back with torch.jit.load, so both
   sides run the same file) samples from x = z sigma_max on `get_sigmas_karras` between the
   wrapper's sigma_min and sigma_max, float32 on the CPU; `scoreflow sample --checkpoint
   CARD.toml` does the same from the same noise file and the same range; the final samples must
   agree within tol x max(1, max |x|).
3. A control that must disagree: the eps module under a card that says prediction = "v".
4. The exact-mixture cards against the mixture itself: `scoreflow sample --denoiser
   builtin:gmm8` on the same grid from the same noise must agree with k-diffusion's samples of
   the wrapped module (the wrapper is exact up to float32).

Prints one line per comparison and writes DIR/external.json. Exit status: 0 all agree, 1 a
disagreement (or a control that agreed), 2 bad input or a failed step.

k-diffusion's package `__init__` imports heavy training dependencies, so `k_diffusion/sampling.py`
and `k_diffusion/external.py` are loaded by file path (as peers.py loads sampling.py); where
`utils.py` cannot be imported, the one helper they take from it, `append_dims`, is provided here.
"""

import argparse
import json
import math
import os
import subprocess
import sys
import time
import types

import numpy as np
import torch
from torch import nn
import torch.nn.functional as F

import kdiffusion_files  # this folder, next to this script

SAMPLERS = {"euler": "sample_euler", "heun": "sample_heun", "dpmpp-2m": "sample_dpmpp_2m"}


def fail(msg):
    """Bad input or a failed step: the message on stderr, exit code 2 (as scoreflow's own
    errors). A disagreement exits with 1 instead."""
    print(f"external_models: {msg}", file=sys.stderr)
    sys.exit(2)


# --------------------------------------------------------------------------- k-diffusion


def load_kdiffusion():
    """k-diffusion's sampling.py and external.py, by file path (kdiffusion_files.py; external.py
    imports `sampling` and `utils` relatively)."""
    pkg, root, utils_note = kdiffusion_files.load(fail, ("sampling.py", "external.py"))
    return pkg.sampling, pkg.external, root, utils_note


# --------------------------------------------------------------------------- schedules


def alphas_cumprod(schedule, beta_start=1e-4, beta_end=0.02, timesteps=1000):
    """alpha_bar_j, j = 0..T-1, in float64 (as guided-diffusion computes them, numpy float64):
    linear betas (DDPM), scaled-linear (sqrt(beta) linear, Stable Diffusion), or diffusers'
    squaredcos_cap_v2 (`betas_for_alpha_bar`: beta_i = min(1 - abar((i+1)/T) / abar(i/T), 0.999),
    abar(t) = cos^2((t + 0.008) / 1.008 pi / 2))."""
    if schedule == "linear":
        betas = np.linspace(beta_start, beta_end, timesteps, dtype=np.float64)
    elif schedule == "scaled-linear":
        betas = np.linspace(beta_start**0.5, beta_end**0.5, timesteps, dtype=np.float64) ** 2
    elif schedule == "squaredcos-cap-v2":
        abar = lambda t: math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2
        betas = np.array([min(1 - abar((i + 1) / timesteps) / abar(i / timesteps), 0.999) for i in range(timesteps)])
    else:
        fail(f"unknown beta schedule {schedule}")
    return np.cumprod(1.0 - betas)


# --------------------------------------------------------------------------- modules


class RingModel(nn.Module):
    """The exact denoiser of scoreflow's builtin:gmm8 behind a network's interface:
    forward(x_in, t) with x_in = x / sqrt(sigma^2 + 1). sigma is recovered from t as the
    matching k-diffusion wrapper maps it (`time`): "interp", DiscreteSchedule.t_to_sigma (log
    sigma interpolated between the steps floor(t) and ceil(t)); "index", the level of step t
    (quantize = true: t an integer, truncated as an index if not); "v-diffusion",
    VDenoiser.t_to_sigma, tan(t pi / 2). The output is the posterior mean D read as
    `prediction`: eps (x - D) / sigma, v
    (D - c_skip x) / c_out with c_skip = 1 / (sigma^2 + 1), c_out = -sigma / sqrt(sigma^2 + 1)
    (DiscreteVDDPMDenoiser's and VDenoiser's scalings, sigma_data = 1), or x0 (D itself)."""

    def __init__(self, log_sigmas, time, prediction):
        super().__init__()
        # ln sigma_j in float32, computed in float64 (unused by "v-diffusion").
        self.register_buffer("log_sigmas", log_sigmas)
        ang = torch.arange(8, dtype=torch.float64) * (2 * math.pi / 8)
        self.register_buffer("mu", torch.stack([2 * ang.cos(), 2 * ang.sin()], 1).float())
        self.time = time
        self.prediction = prediction

    def forward(self, x_in, t):
        if self.time == "index":
            # An index, as an embedding table reads it: a fractional t would be truncated.
            sigma = self.log_sigmas[t.long()].exp()
        elif self.time == "v-diffusion":
            sigma = torch.tan(t.float() * (math.pi / 2))
        else:
            t = t.float()
            w = t - t.floor()
            sigma = ((1 - w) * self.log_sigmas[t.floor().long()] + w * self.log_sigmas[t.ceil().long()]).exp()
        s = sigma[:, None]
        x = x_in * (s * s + 1).sqrt()
        # Posterior mean of the ring: per-mode variance 0.04 + sigma^2, responsibilities the
        # softmax of the (equal-weight, equal-variance) log densities.
        v = 0.04 + s * s
        r = (-((x[:, None, :] - self.mu[None]) ** 2).sum(-1) / (2 * v)).softmax(1)
        d = (0.04 * x + s * s * (r @ self.mu)) / v
        if self.prediction == "eps":
            return (x - d) / s
        if self.prediction == "v":
            c_skip = 1 / (s * s + 1)
            c_out = -s / (s * s + 1).sqrt()
            return (d - c_skip * x) / c_out
        return d


class TinyUnet(nn.Module):
    """A small random conv net on [3, 8, 8] with a time embedding, returning 6 channels: a
    stand-in for a guided-diffusion U-Net with learned sigmas (the first 3 channels are eps,
    the last 3 the variance, which the wrappers drop). eps is x_in plus a tenth of the conv net
    (roughly the eps of data near 0), so the samples stay of order one and the tolerance
    tight; the variance channels are ten times the net, far from eps, so reading them instead
    would show."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 3, padding=1)
        self.temb = nn.Linear(2, 16)
        self.conv2 = nn.Conv2d(16, 6, 3, padding=1)

    def forward(self, x_in, t):
        tt = t.float()[:, None] * (3.0 / 1000)
        e = self.temb(torch.cat([tt.sin(), tt.cos()], 1))
        h = self.conv2(F.silu(self.conv1(x_in) + e[:, :, None, None]))
        return torch.cat([x_in + 0.1 * h[:, :3], 10 * h[:, 3:]], 1)


def write_card(path, module_file, shape, precond, learned_sigmas=False):
    """A model card (TOML) next to its module; `precond` is a dict of the [precond] table."""
    def val(v):
        return "true" if v is True else "false" if v is False else json.dumps(v)

    lines = [f"torchscript = {json.dumps(module_file)}", f"shape = {json.dumps(list(shape))}"]
    if learned_sigmas:
        lines.append("learned_sigmas = true")
    lines.append("[precond]")
    lines += [f"{k} = {val(v)}" for k, v in precond.items()]
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")


def build_models(external, out):
    """Write every module and card under `out`; return a list of dicts: name, card, module
    (loaded back from its file), the k-diffusion wrapper, its sigma range, the sample shape, and
    whether the module is the exact mixture (for the builtin:gmm8 comparison)."""
    models = []

    def add(name, module, card_precond, wrap, shape, exact, learned_sigmas=False, trace=None, sigma_range=None):
        d = os.path.join(out, name)
        os.makedirs(d, exist_ok=True)
        pt = os.path.join(d, "model.pt")
        ts = torch.jit.trace(module, trace) if trace is not None else torch.jit.script(module)
        ts.save(pt)
        card = os.path.join(d, "card.toml")
        write_card(card, "model.pt", shape, card_precond, learned_sigmas)
        loaded = torch.jit.load(pt).eval()
        wrapper = wrap(loaded)
        if sigma_range is None:
            # DiscreteSchedule's range: the chain's first and last levels, float32.
            sigma_range = (float(wrapper.sigma_min), float(wrapper.sigma_max))
        models.append({"name": name, "dir": d, "card": card, "pt": pt, "wrapper": wrapper, "shape": shape,
                       "sigma_range": sigma_range, "exact": exact})

    def log_sigmas(ac):
        return torch.from_numpy(np.log(np.sqrt((1 - ac) / ac))).float()

    # The wrappers get alpha_bar as float32 from the float64 values, as OpenAIDenoiser does
    # (torch.tensor(diffusion.alphas_cumprod, dtype=torch.float32)).
    ac_lin = alphas_cumprod("linear")
    ac_sd = alphas_cumprod("scaled-linear", 0.00085, 0.012)
    ac_cos = alphas_cumprod("squaredcos-cap-v2")
    f32 = lambda ac: torch.tensor(ac, dtype=torch.float32)

    add("eps-linear", RingModel(log_sigmas(ac_lin), "interp", "eps"),
        {"kind": "discrete", "prediction": "eps", "schedule": "linear", "beta_start": 1e-4, "beta_end": 0.02,
         "timesteps": 1000},
        lambda m: external.DiscreteEpsDDPMDenoiser(m, f32(ac_lin), quantize=False), [2], exact=True)
    add("v-scaled", RingModel(log_sigmas(ac_sd), "interp", "v"),
        {"kind": "discrete", "prediction": "v", "schedule": "scaled-linear", "beta_start": 0.00085,
         "beta_end": 0.012, "timesteps": 1000},
        lambda m: external.DiscreteVDDPMDenoiser(m, f32(ac_sd), quantize=False), [2], exact=True)
    # k-diffusion has no x0 wrapper: X0Wrapper uses its DiscreteSchedule time map with D = F.
    add("x0-cosine", RingModel(log_sigmas(ac_cos), "interp", "x0"),
        {"kind": "discrete", "prediction": "x0", "schedule": "squaredcos-cap-v2", "timesteps": 1000},
        lambda m: X0Wrapper(external, m, f32(ac_cos)), [2], exact=True)
    # VDenoiser has no range of its own: EDM's (scoreflow's defaults).
    add("v-diffusion", RingModel(torch.zeros(1), "v-diffusion", "v"), {"kind": "v-diffusion"},
        lambda m: external.VDenoiser(m), [2], exact=True, sigma_range=(0.002, 80.0))
    # Quantized: the module reads t as a step index (k-diffusion passes int64, scoreflow a
    # float holding an integer), so it is not the exact mixture between the chain's levels.
    add("eps-quantize", RingModel(log_sigmas(ac_lin), "index", "eps"),
        {"kind": "discrete", "prediction": "eps", "schedule": "linear", "quantize": True},
        lambda m: external.DiscreteEpsDDPMDenoiser(m, f32(ac_lin), quantize=True), [2], exact=False)
    torch.manual_seed(0)
    unet = TinyUnet().eval()
    diffusion = types.SimpleNamespace(alphas_cumprod=ac_lin)
    add("unet-learned", unet, {"kind": "discrete", "prediction": "eps", "schedule": "linear"},
        lambda m: external.OpenAIDenoiser(m, diffusion, quantize=False, has_learned_sigmas=True), [3, 8, 8],
        exact=False, learned_sigmas=True, trace=(torch.randn(2, 3, 8, 8), torch.tensor([10.5, 900.25])))
    return models


class X0Wrapper(nn.Module):
    """D = F(x / sqrt(sigma^2 + 1); sigma_to_t(sigma)): k-diffusion's DiscreteSchedule time map
    (inherited, not rewritten) with the x0 reading of the output."""

    def __init__(self, external, model, ac):
        super().__init__()
        self.schedule = external.DiscreteSchedule(((1 - ac) / ac) ** 0.5, quantize=False)
        self.inner_model = model

    @property
    def sigma_min(self):
        return self.schedule.sigma_min

    @property
    def sigma_max(self):
        return self.schedule.sigma_max

    def forward(self, x, sigma):
        c_in = (sigma**2 + 1) ** -0.5
        return self.inner_model(x * c_in[:, None], self.schedule.sigma_to_t(sigma))


# --------------------------------------------------------------------------- runs


def scoreflow(binary, args):
    p = subprocess.run([binary] + args, capture_output=True, text=True)
    if p.returncode != 0:
        fail(f"scoreflow {' '.join(args)} failed ({p.returncode}): {p.stderr.strip()}")
    return p.stdout


def sample_scoreflow(a, model_args, solver, z_path, sigma_range, out):
    lo, hi = sigma_range
    scoreflow(a.scoreflow, ["sample", *model_args, "--solver", solver, "--steps", str(a.steps), "--noise", z_path,
                            "--sigma-min", repr(lo), "--sigma-max", repr(hi), "--grid", "karras", "--rho", "7",
                            "--device", a.device, "--out", out])
    x = np.load(out)
    return torch.from_numpy(x).double()


def sample_kdiffusion(sampling, wrapper, z, sigma_range, solver, steps):
    sigmas = sampling.get_sigmas_karras(steps, sigma_range[0], sigma_range[1], rho=7.0)
    x = torch.from_numpy(z) * sigmas[0]
    with torch.no_grad():
        return getattr(sampling, SAMPLERS[solver])(wrapper, x, sigmas, disable=True).double()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--scoreflow", required=True, help="the scoreflow binary")
    ap.add_argument("--out", required=True, help="output folder (modules, cards, noise, samples, external.json)")
    ap.add_argument("--tol", type=float, default=1e-3, help="tolerance, times max(1, max |x|)")
    ap.add_argument("--steps", type=int, default=18)
    ap.add_argument("--device", default="cpu", help="scoreflow's --device (k-diffusion runs on the CPU)")
    a = ap.parse_args()
    if not (os.path.isfile(a.scoreflow) and os.access(a.scoreflow, os.X_OK)):
        fail(f"--scoreflow {a.scoreflow} is not an executable file")
    if a.steps < 2:
        fail(f"--steps must be at least 2, got {a.steps}")
    if not a.tol > 0:
        fail(f"--tol must be positive, got {a.tol}")
    os.makedirs(a.out, exist_ok=True)
    t0 = time.perf_counter()
    torch.set_num_threads(max(1, min(8, os.cpu_count() or 1)))

    sampling, external, root, utils_note = load_kdiffusion()
    print(f"k-diffusion from {root} ({utils_note}); torch {torch.__version__}")
    models = build_models(external, a.out)

    rows = []

    def compare(model, sampler, x_ref, x_sf, control=False, reference="k-diffusion"):
        diff = (x_sf - x_ref).abs().max().item()
        scale = x_ref.abs().max().item()
        within = diff <= a.tol * max(1.0, scale)
        ok = not within if control else within
        verdict = ("ok (disagrees, as it must)" if ok else "AGREED (the control failed)") if control else \
            ("ok" if ok else f"DISAGREE (tolerance {a.tol} x max(1, max |x|))")
        print(f"{model:<26} {sampler:<9} vs {reference:<12} max diff {diff:.2e}  max |x| {scale:7.3f}  {verdict}")
        rows.append({"model": model, "sampler": sampler, "reference": reference, "diff": diff, "scale": scale,
                     "ok": ok, "control": control})

    rng = np.random.default_rng(0)
    for m in models:
        n = 8 if len(m["shape"]) == 3 else 64
        z = rng.standard_normal([n, *m["shape"]]).astype(np.float32)
        z_path = os.path.join(m["dir"], "z.npy")
        np.save(z_path, z)
        for s in SAMPLERS:
            x_kd = sample_kdiffusion(sampling, m["wrapper"], z, m["sigma_range"], s, a.steps)
            np.save(os.path.join(m["dir"], f"kd-{s}.npy"), x_kd.float().numpy())
            x_sf = sample_scoreflow(a, ["--checkpoint", m["card"]], s, z_path, m["sigma_range"],
                                    os.path.join(m["dir"], f"sf-{s}.npy"))
            if x_sf.shape != x_kd.shape:
                fail(f"{m['name']} {s}: scoreflow wrote shape {tuple(x_sf.shape)}, "
                     f"k-diffusion's is {tuple(x_kd.shape)}")
            compare(m["name"], s, x_kd, x_sf)
            if m["exact"]:
                # The wrapped module is the exact mixture: scoreflow's own builtin:gmm8 on the
                # same grid must give k-diffusion's samples too.
                x_gmm = sample_scoreflow(a, ["--denoiser", "builtin:gmm8"], s, z_path, m["sigma_range"],
                                         os.path.join(m["dir"], f"gmm8-{s}.npy"))
                compare(m["name"], s, x_kd, x_gmm, reference="builtin:gmm8")
            if m["name"] == "eps-linear":
                # Control: the eps module read as v must not reproduce the eps samples.
                bad = os.path.join(m["dir"], "as-v.toml")
                write_card(bad, "model.pt", m["shape"], {"kind": "discrete", "prediction": "v", "schedule": "linear"})
                x_bad = sample_scoreflow(a, ["--checkpoint", bad], s, z_path, m["sigma_range"],
                                         os.path.join(m["dir"], f"as-v-{s}.npy"))
                compare("eps-linear read as v", s, x_kd, x_bad, control=True)

    bad = [r for r in rows if not r["ok"]]
    with open(os.path.join(a.out, "external.json"), "w") as f:
        json.dump(rows, f, indent=1)
    print(f"{len(rows) - len(bad)} of {len(rows)} comparisons ok in {time.perf_counter() - t0:.1f} s "
          f"(tolerance {a.tol} x max(1, max |x|), {a.steps} steps); {os.path.join(a.out, 'external.json')}")
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
