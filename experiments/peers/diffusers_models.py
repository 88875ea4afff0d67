"""diffusers models: scripts/export-diffusers.py's cards against diffusers' own schedulers.

scripts/export-diffusers.py exports a diffusers `UNet2DModel` to TorchScript and writes its
model card (src/card.rs, docs/models.md) from the scheduler config. This checks that path end to
end, independently: the same UNet folder sampled by diffusers' own discrete Karras-sigma
schedulers and by `scoreflow sample --checkpoint CARD.toml` must give the same samples.

    diffusers (0.42.1, diffusers/schedulers/)                     scoreflow
    EulerDiscreteScheduler(use_karras_sigmas=True)                  --solver euler
    HeunDiscreteScheduler(use_karras_sigmas=True)                   --solver heun
    DPMSolverMultistepScheduler(use_karras_sigmas=True,             --solver dpmpp-2m
        algorithm_type="dpmsolver++", solver_order=2)

What it does:

1. Builds four tiny random `UNet2DModel`s (diffusers' models/unets/unet_2d.py; [3, 8, 8],
   block_out_channels (16, 32), one layer per block, the default mid block with attention) and
   saves each as a pipeline-style folder (`unet/`, `scheduler/`) with a `DDPMScheduler` config
   (diffusers' scheduling_ddpm.py; its saved config has every key, as on the Hub):
   (a) `linear-eps`: linear 1e-4..0.02, epsilon, DDPMScheduler's defaults otherwise
       (clip_sample = true, timestep_spacing = "leading");
   (b) `scaled-linear-v`: scaled_linear 0.00085..0.012, v_prediction, leading spacing with
       steps_offset 1 (Stable Diffusion 2's settings);
   (c) `cosine-learned`: squaredcos_cap_v2, v_prediction, variance_type "learned_range" (6
       output channels), linspace spacing (v rather than eps keeps the samples of order one on
       this chain, whose sigma_max is 20291, so that the tolerance below is a tight one);
   (d) `scaled-linear-x0`: scaled_linear, prediction_type "sample" (x0), trailing spacing, on
       [3, 8, 12] (sample_size a pair).
2. Runs scripts/export-diffusers.py on each folder (a subprocess, as a user would).
3. For each model and scheduler, built `from_config` of the model's scheduler config with 18
   inference steps: diffusers' usual loop (`scale_model_input`, `unet(x, t).sample` -- the
   first half of the channels under learned variances -- `step(...).prev_sample`) from
   x_T = z * `init_noise_sigma`, and `scoreflow sample` on the exported card over the same
   sigma range (diffusers' `sigmas[0]` and `sigmas[-2]`, which depend on the scheduler and on
   timestep_spacing) from the same x_T. scoreflow starts at x = z' sigma_max, so it is given
   z' = x_T / sigma_max (in VE units: DPMSolverMultistepScheduler works on the VP sample
   x / sqrt(sigma^2 + 1) and starts at z itself, init_noise_sigma = 1; Euler and Heun start at
   z sigma_max (linspace, trailing) or z sqrt(sigma_max^2 + 1) (leading)). The final samples
   must agree within tol x max(1, max |x|).
4. DPMSolverMultistepScheduler gives the network int64 timesteps while it steps with the exact
   Karras sigmas: round(t(sigma)), which is the card's `quantize = true` (the nearest step in
   log sigma), except on squaredcos_cap_v2, where it means to keep t fractional but the int64
   cast truncates it. So its samples are compared with the network given the fractional t(sigma)
   of diffusers' own `_sigma_to_t` against the card as exported, and (not on the cosine chain)
   as shipped against the card under quantize = true; a row "info", not judged, gives the size
   of the rounding (as shipped against the card as exported). The loop starts with
   `set_begin_index(0)`: without it the cosine chain's repeated timesteps (eight 998s at 18
   steps) make the scheduler skip the first sigma and fail with an IndexError.
5. A control that must disagree: model (b)'s card with prediction = "eps" instead of "v" (one
   per sampler).
6. DDIM on diffusers' own timesteps: `DDIMScheduler` (eta 0, set_alpha_to_one, the model's
   timestep_spacing and steps_offset, 20 steps) against `scoreflow sample --solver ddim --grid
   ddpm-SPACING --steps-offset K` (the grid takes the card's chain). DDIM steps from t to
   t - T div n, the grid's next level under "leading" and under "trailing" when n divides T
   (so 20 steps); under "linspace" (model (c)) it is not, and that row is reported, not judged.
7. DDPM ancestral sampling on diffusers' own timesteps: `DDPMScheduler` (the model's
   variance_type, spacing and steps_offset, clip_sample off, 18 steps; it steps to the next
   timestep of its list under every spacing) against `scoreflow sample --solver ddpm --variance
   small|learned --grid ddpm-SPACING`, the scheduler's `randn_tensor` returning scoreflow's step
   noise (peers.py's `ScoreflowNoise`, seed 0). Model (c) is the check of `--variance learned`
   against diffusers' "learned_range" (improved DDPM's interpolated log variance); its control,
   which must disagree, is the same card sampled with `--variance small`.
8. The limits on the predicted x0 (same loop): `DDPMScheduler` with `clip_sample` (range 0.5)
   against `--clip-denoised 0.5`, and with `thresholding` (ratio 0.9, `sample_max_value` 1.5)
   against `--dynamic-threshold 0.9,1.5` (control: the clipped run against scoreflow
   unclipped); `DDIMScheduler` with `clip_sample` and `use_clipped_model_output=True` against
   `ddim --clip-denoised 0.5` (not on linspace, as in 6), and with diffusers' default
   `use_clipped_model_output=False`, which keeps the raw eps in DDIM's direction term, reported.

Prints one line per comparison and writes OUT/diffusers.json. Exit status: 0 all agree, 1 a
disagreement (or a control that agreed), 2 bad input or a failed step (an export, a scoreflow
run).

diffusers comes from the python's own packages or, where it exists, the repository's
`.peers/diffusers` (appended to sys.path as peers.py's `load_diffusers_schedulers` does, so the
python's own torch and numpy come first). Run with the python that has torch:

    python3 experiments/peers/diffusers_models.py --scoreflow target/release/scoreflow --out /tmp/dcheck
"""

import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np
import torch

from peers import STREAM_STEP, ScoreflowNoise  # this folder: scoreflow's step noise, written again

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
EXPORT = os.path.join(REPO, "scripts", "export-diffusers.py")
SAMPLERS = ["euler", "heun", "dpmpp-2m"]
# The batches are tiny (4 samples of [3, 8, 8] or [3, 8, 12]): scoreflow, the exports and this process run on one thread
# unless OMP_NUM_THREADS says otherwise. On a busy two-core machine libtorch's OpenMP threads
# wait on each other: one 18-step scoreflow run took 0.1 s on one thread, 0.4 to 9 s on two.
ENV = dict(os.environ)
ENV.setdefault("OMP_NUM_THREADS", "1")


def fail(msg):
    """Bad input or a failed step: the message on stderr, exit code 2 (as scoreflow's own
    errors). A disagreement exits with 1 instead."""
    print(f"diffusers_models: {msg}", file=sys.stderr)
    sys.exit(2)


def load_diffusers():
    site = os.path.join(REPO, ".peers", "diffusers")
    if os.path.isdir(site):
        sys.path.append(site)
    try:
        import diffusers
        from diffusers.utils import logging as dlogging
    except Exception as e:  # any import failure means: no diffusers
        fail(f"cannot import diffusers ({type(e).__name__}: {e}); scripts/peers-setup.sh installs it in "
             f".peers/diffusers")
    dlogging.set_verbosity_error()
    return diffusers


# --------------------------------------------------------------------------- models

# The models: name, UNet sample_size, UNet output channels, DDPMScheduler arguments.
MODELS = [
    ("linear-eps", 8, 3, dict(beta_schedule="linear", beta_start=1e-4, beta_end=0.02, prediction_type="epsilon")),
    ("scaled-linear-v", 8, 3, dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                                   prediction_type="v_prediction", clip_sample=False, timestep_spacing="leading",
                                   steps_offset=1)),
    ("cosine-learned", 8, 6, dict(beta_schedule="squaredcos_cap_v2", prediction_type="v_prediction",
                                  variance_type="learned_range", timestep_spacing="linspace")),
    ("scaled-linear-x0", (8, 12), 3, dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                                          prediction_type="sample", clip_sample=False, timestep_spacing="trailing")),
]


def build_model(diffusers, folder, seed, sample_size, out_channels, sched_args):
    """A tiny random UNet2DModel and a DDPMScheduler config, saved as a pipeline folder.

    The random network's outputs are left as initialized (about 0.4 rms, at most 1.5): for
    v-prediction that keeps the denoiser, and so the samples, of order one; for eps-prediction
    no scaling would (a random net does not predict the noise, so x moves by about
    int eps dsigma ~ 0.4 sigma_max while x_T is z sigma_max: the samples are of order sigma_max
    either way), and a smaller output would only make the network a smaller part of the sample.
    The tolerance is relative to max |x|, so large samples are compared fairly."""
    torch.manual_seed(seed)
    unet = diffusers.UNet2DModel(
        sample_size=sample_size, in_channels=3, out_channels=out_channels, block_out_channels=(16, 32),
        layers_per_block=1, norm_num_groups=8, down_block_types=("DownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "UpBlock2D"))
    unet.save_pretrained(os.path.join(folder, "unet"))
    diffusers.DDPMScheduler(num_train_timesteps=1000, **sched_args).save_pretrained(os.path.join(folder, "scheduler"))


def export(python, folder, out):
    """scripts/export-diffusers.py on a pipeline folder; its JSON line."""
    p = subprocess.run([python, EXPORT, folder, "--out", out], capture_output=True, text=True, env=ENV)
    if p.returncode != 0:
        fail(f"export-diffusers.py {folder} failed ({p.returncode}): {p.stderr.strip()}")
    try:
        return json.loads(p.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        fail(f"export-diffusers.py {folder} printed no JSON line: {p.stdout!r}")


# --------------------------------------------------------------------------- diffusers


def make_scheduler(diffusers, kind, config):
    """diffusers' scheduler of `kind` from the model's scheduler config, with Karras sigmas."""
    if kind == "euler":
        # scheduling_euler_discrete.py; final_sigmas_type "zero" (the default): the last step to 0.
        return diffusers.EulerDiscreteScheduler.from_config(config, use_karras_sigmas=True, final_sigmas_type="zero")
    if kind == "heun":
        # scheduling_heun_discrete.py. clip_sample=False: model (a)'s DDPM config has clip_sample = true, which
        # HeunDiscreteScheduler would apply (x0 clamped to [-1, 1]); scoreflow has no clamping (the card lists
        # clip_sample among the options it ignores), so the check compares the unclamped sampler.
        return diffusers.HeunDiscreteScheduler.from_config(config, use_karras_sigmas=True, clip_sample=False)
    # scheduling_dpmsolver_multistep.py as k-diffusion's sample_dpmpp_2m: data prediction (dpmsolver++), order 2,
    # midpoint form (denoised_d = (1 + 1/(2r)) D0 - 1/(2r) D1), first order at the first step (no history) and at
    # the last step to sigma 0 (final_sigmas_type "zero" forces lower_order_final there; euler_at_final would too).
    # lower_order_final=False: its default True also makes the second-to-last step first order below 15 steps,
    # which k-diffusion does not do (at 18 steps it changes nothing).
    return diffusers.DPMSolverMultistepScheduler.from_config(
        config, use_karras_sigmas=True, algorithm_type="dpmsolver++", solver_order=2, solver_type="midpoint",
        final_sigmas_type="zero", lower_order_final=False, euler_at_final=False, thresholding=False)


def sample_diffusers(unet, sched, z, steps, channels, fractional_t=False):
    """diffusers' usual sampling loop. Returns (x_T, samples, sigmas): x_T = z init_noise_sigma in the
    scheduler's own units, sigmas its grid. `fractional_t` (DPMSolverMultistepScheduler only):
    give the network t(sigma) unrounded, the scheduler's own `_sigma_to_t` of its sigma, while
    the scheduler still gets its (rounded) timestep."""
    sched.set_timesteps(steps)
    # Start at the first step. Without this, `_init_step_index` looks the first timestep up in
    # `timesteps` and, where it occurs more than once, takes its second occurrence (meant for
    # img2img): DPMSolverMultistepScheduler on squaredcos_cap_v2 with Karras sigmas gives eight
    # timesteps 998 at 18 steps (its fractional timesteps truncated by the int64 cast), skips
    # the first sigma and fails with an IndexError at the last step. Where the timesteps are
    # distinct this changes nothing.
    sched.set_begin_index(0)
    x = z * sched.init_noise_sigma
    x_T = x.clone()
    if fractional_t:
        ac = sched.alphas_cumprod.numpy()
        log_sigmas = np.log(((1 - ac) / ac) ** 0.5)
        t_net = [torch.tensor(float(sched._sigma_to_t(np.array(s), log_sigmas)), dtype=torch.float32)
                 for s in sched.sigmas[:-1].double().numpy()]
    with torch.no_grad():
        for i, t in enumerate(sched.timesteps):
            x_in = sched.scale_model_input(x, t)
            out = unet(x_in, t_net[i] if fractional_t else t).sample
            out = out[:, :channels]  # learned variances: the first half is the prediction
            x = sched.step(out, t, x).prev_sample
    return x_T, x, sched.sigmas


def chain_report(sched, sigmas64):
    """How diffusers' chain (float32 alphas_cumprod, scheduling_*.py) departs from the float64 chain
    of the card: max relative difference of the levels."""
    ac = sched.alphas_cumprod.double().numpy()
    s32 = np.sqrt((1 - ac) / ac)
    return float(np.max(np.abs(s32 / sigmas64 - 1)))


def chain64(config):
    """The card's chain in float64 (as scripts/export-diffusers.py and scoreflow compute it)."""
    T = config["num_train_timesteps"]
    if config["beta_schedule"] == "linear":
        betas = np.linspace(config["beta_start"], config["beta_end"], T, dtype=np.float64)
    elif config["beta_schedule"] == "scaled_linear":
        betas = np.linspace(config["beta_start"] ** 0.5, config["beta_end"] ** 0.5, T, dtype=np.float64) ** 2
    else:
        abar = lambda t: np.cos((t + 0.008) / 1.008 * np.pi / 2) ** 2
        betas = np.array([min(1 - abar((i + 1) / T) / abar(i / T), 0.999) for i in range(T)])
    ac = np.cumprod(1.0 - betas)
    return np.sqrt((1 - ac) / ac)


def sigma_to_t64(sigma, log_sigmas):
    """k-diffusion's DiscreteSchedule.sigma_to_t in float64 (what the card computes)."""
    ls = np.log(sigma)
    low = int(np.clip(np.sum(log_sigmas <= ls) - 1, 0, len(log_sigmas) - 2))
    w = np.clip((log_sigmas[low] - ls) / (log_sigmas[low] - log_sigmas[low + 1]), 0, 1)
    return low + w


# --------------------------------------------------------------------------- scoreflow


def run_sample(a, card, z_path, out, args):
    """`scoreflow sample --checkpoint CARD --noise Z ... --out OUT` on the CPU; its samples."""
    args = ["sample", "--checkpoint", card, "--noise", z_path, "--device", "cpu", "--out", out] + args
    p = subprocess.run([a.scoreflow] + args, capture_output=True, text=True, env=ENV)
    if p.returncode != 0:
        fail(f"scoreflow {' '.join(args)} failed ({p.returncode}): {p.stderr.strip()}")
    return torch.from_numpy(np.load(out)).double()


def scoreflow(a, card, solver, z_path, lo, hi, out):
    """The card on scoreflow's Karras grid over [lo, hi]."""
    return run_sample(a, card, z_path, out, ["--solver", solver, "--steps", str(a.steps), "--sigma-min", repr(lo),
                                             "--sigma-max", repr(hi), "--grid", "karras", "--rho", "7"])


def ddpm_grid(config):
    """The flags of the ddpm-* grid of a model's timestep_spacing (diffusers adds steps_offset under
    leading spacing only)."""
    spacing = config.get("timestep_spacing", "leading")
    args = ["--grid", f"ddpm-{spacing}"]
    if spacing == "leading":
        args += ["--steps-offset", str(config.get("steps_offset", 0))]
    return args


def variant(card, out, old, new):
    """A copy of `card` (same folder, so the same unet.pt) with one line changed."""
    with open(card) as f:
        text = f.read()
    if old not in text:
        fail(f"{card} has no line {old!r}")
    with open(out, "w") as f:
        f.write(text.replace(old, new))
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--scoreflow", required=True, help="the scoreflow binary")
    ap.add_argument("--out", required=True, help="output folder (models, cards, noise, samples, diffusers.json)")
    ap.add_argument("--tol", type=float, default=1e-3, help="tolerance, times max(1, max |x|)")
    ap.add_argument("--steps", type=int, default=18)
    a = ap.parse_args()
    if not (os.path.isfile(a.scoreflow) and os.access(a.scoreflow, os.X_OK)):
        fail(f"--scoreflow {a.scoreflow} is not an executable file")
    if a.steps < 2:
        fail(f"--steps must be at least 2, got {a.steps}")
    if not a.tol > 0:
        fail(f"--tol must be positive, got {a.tol}")
    os.makedirs(a.out, exist_ok=True)
    t0 = time.perf_counter()
    try:
        torch.set_num_threads(max(1, int(ENV["OMP_NUM_THREADS"])))
    except ValueError:
        fail(f"OMP_NUM_THREADS must be a positive integer, got {ENV['OMP_NUM_THREADS']!r}")
    diffusers = load_diffusers()
    print(f"diffusers {diffusers.__version__} from {os.path.dirname(diffusers.__file__)}; torch {torch.__version__}")

    # 1-2. The models and their exports.
    models = []
    for i, (name, sample_size, out_channels, sched_args) in enumerate(MODELS):
        folder = os.path.join(a.out, name)
        build_model(diffusers, folder, i, sample_size, out_channels, sched_args)
        t1 = time.perf_counter()
        info = export(sys.executable, folder, os.path.join(folder, "export"))
        print(f"{name}: exported in {time.perf_counter() - t1:.1f} s: {json.dumps(info)}")
        models.append((name, folder, info))

    rows = []

    def compare(model, sampler, reference, card, x_ref, x_sf, kind="check"):
        diff = (x_sf - x_ref).abs().max().item()
        scale = x_ref.abs().max().item()
        within = diff <= a.tol * max(1.0, scale)
        control = kind == "control"
        ok = (not within) if control else within if kind == "check" else True
        if kind == "control":
            verdict = "ok (disagrees, as it must)" if ok else "AGREED (the control failed)"
        elif kind == "info":
            verdict = "info (not judged)"
        else:
            verdict = "ok" if ok else f"DISAGREE (tolerance {a.tol} x max(1, max |x|))"
        print(f"{model:<16} {sampler:<9} {reference:<24} vs {card:<15} max diff {diff:.2e}  max |x| {scale:9.3f}  "
              f"{verdict}")
        rows.append({"model": model, "sampler": sampler, "reference": reference, "card": card, "diff": diff,
                     "scale": scale, "ok": ok, "control": control, "kind": kind})

    rng = np.random.default_rng(0)
    for name, folder, info in models:
        card = info["card"]
        unet = diffusers.UNet2DModel.from_pretrained(os.path.join(folder, "unet"), local_files_only=True).eval()
        channels = unet.config.in_channels
        config = diffusers.DDPMScheduler.load_config(os.path.join(folder, "scheduler"))
        sig64 = chain64(config)
        log64 = np.log(sig64)
        size = unet.config.sample_size
        h, w = (size, size) if isinstance(size, int) else size
        z = torch.from_numpy(rng.standard_normal([4, channels, h, w]).astype(np.float32))
        quantized = variant(card, os.path.join(folder, "export", "card-quantize.toml"), "quantize = false",
                            "quantize = true")
        for s in SAMPLERS:
            sched = make_scheduler(diffusers, s, config)
            x_T, x_d, sigmas = sample_diffusers(unet, sched, z, a.steps, channels)
            lo, hi = float(sigmas[-2]), float(sigmas[0])
            # x_T in VE units (x = x_vp sqrt(sigma^2 + 1) for DPMSolverMultistepScheduler), then scoreflow's z'.
            ve = (hi**2 + 1) ** 0.5 if s == "dpmpp-2m" else 1.0
            z_sf = x_T.double().numpy() * ve / hi
            z_path = os.path.join(folder, f"z-{s}.npy")
            np.save(z_path, z_sf)
            np.save(os.path.join(folder, f"diffusers-{s}.npy"), x_d.numpy())
            # The grid's time inputs: diffusers' timesteps against the float64 chain's t(sigma).
            t_diff = max(abs(float(t) - sigma_to_t64(float(sg), log64))
                         for t, sg in zip(sched.timesteps, sigmas[:-1]))
            print(f"{name:<16} {s:<9} sigma {lo!r} .. {hi!r}, init_noise_sigma {float(sched.init_noise_sigma):.6g} "
                  f"(x_T / sigma_max = {float(sched.init_noise_sigma) * ve / hi:.7g} z); chain float32 vs float64: "
                  f"{chain_report(sched, sig64):.1e} relative; timesteps - t64(sigma): max {t_diff:.3g}")
            x_sf = scoreflow(a, card, s, z_path, lo, hi, os.path.join(folder, f"sf-{s}.npy"))
            if s != "dpmpp-2m":
                compare(name, s, "diffusers", "card", x_d, x_sf)
                x_ref, ref = x_d, "diffusers"
            else:
                # 4. DPMSolverMultistepScheduler gives the network int64(t(sigma)): rounded, except on
                # squaredcos_cap_v2, where the int64 cast truncates the fractional timesteps. With the
                # network given the fractional t(sigma) it must be the card as exported; rounded, the card
                # under quantize = true; the card against diffusers as shipped is reported, not judged.
                _, x_f, _ = sample_diffusers(unet, make_scheduler(diffusers, s, config), z, a.steps, channels,
                                             fractional_t=True)
                compare(name, s, "diffusers, fractional t", "card", x_f, x_sf)
                x_ref, ref = x_f, "diffusers, fractional t"
                if config["beta_schedule"] != "squaredcos_cap_v2":
                    x_q = scoreflow(a, quantized, s, z_path, lo, hi, os.path.join(folder, f"sf-{s}-quantize.npy"))
                    compare(name, s, "diffusers (rounded t)", "card+quantize", x_d, x_q)
                    compare(name, s, "diffusers (rounded t)", "card", x_d, x_sf, kind="info")
                else:
                    compare(name, s, "diffusers (floored t)", "card", x_d, x_sf, kind="info")
            if name == "scaled-linear-v":
                # 5. Control: the v network read as eps must not reproduce diffusers' samples.
                bad = variant(card, os.path.join(folder, "export", "as-eps.toml"), 'prediction = "v"',
                              'prediction = "eps"')
                x_bad = scoreflow(a, bad, s, z_path, lo, hi, os.path.join(folder, f"sf-{s}-as-eps.npy"))
                compare(name + " as eps", s, ref, "card, eps", x_ref, x_bad, kind="control")

        # 6. DDIM on diffusers' own timesteps: DDIMScheduler (eta 0, set_alpha_to_one, the model's
        # timestep_spacing and steps_offset) against scoreflow's ddim on the ddpm-* grid of the same
        # spacing, which takes the card's chain. DDIM steps from t to t - T div n whatever the
        # spacing: that is the next timestep under "leading", and under "trailing" where n divides T
        # (hence 20 steps here, not --steps), but not under "linspace": reported, not judged.
        spacing = config.get("timestep_spacing", "leading")
        ddim_steps = 20
        sched = diffusers.DDIMScheduler.from_config(config, clip_sample=False, set_alpha_to_one=True,
                                                    thresholding=False)
        sched.set_timesteps(ddim_steps)
        x = z * sched.init_noise_sigma
        with torch.no_grad():
            for t in sched.timesteps:
                out = unet(sched.scale_model_input(x, t), t).sample[:, :channels]
                x = sched.step(out, t, x, eta=0.0).prev_sample
        # diffusers starts at x_T = z in VP units; in scoreflow's units that is z sqrt(sigma^2 + 1) at the
        # top level sigma = sigma_{t_0}, so scoreflow's noise is z sqrt(sigma^2 + 1) / sigma.
        top = float(sig64[int(sched.timesteps[0])])
        z_path = os.path.join(folder, "z-ddim.npy")
        np.save(z_path, z.double().numpy() * (top**2 + 1) ** 0.5 / top)
        x_sf = run_sample(a, card, z_path, os.path.join(folder, "sf-ddim.npy"),
                          ["--solver", "ddim", "--steps", str(ddim_steps)] + ddpm_grid(config))
        compare(name, "ddim", f"diffusers DDIM, {spacing}", f"ddpm-{spacing}", x.double(), x_sf,
                kind="info" if spacing == "linspace" else "check")

        # 7. DDPM ancestral sampling on diffusers' own timesteps: DDPMScheduler (the model's
        # variance_type, spacing and steps_offset, clip_sample off, --steps steps; it steps to the
        # next timestep of its list under every spacing) against scoreflow's ddpm on the
        # ddpm-SPACING grid, --variance small for fixed_small and learned for learned_range (model
        # (c): the UNet's second half of channels, diffusers' frac = (v + 1) / 2 between log beta~
        # and log beta of the step). The scheduler's randn_tensor returns scoreflow's step noise
        # (STREAM_STEP on [sigma_next, sigma]) of seed 0; control: model (c) with --variance small.
        variance = {"fixed_small": "small", "fixed_large": "large", "learned_range": "learned"}[config["variance_type"]]
        ddpm_mod = sys.modules[type(diffusers.DDPMScheduler()).__module__]

        def diffusers_ddpm(**limits):
            sched = diffusers.DDPMScheduler.from_config(config, **{"clip_sample": False, "thresholding": False,
                                                                   **limits})
            sched.set_timesteps(a.steps)
            levels = [float(sig64[int(t)]) for t in sched.timesteps] + [0.0]
            noise = ScoreflowNoise(0, z.shape[0], list(z.shape[1:]), max(levels[0], 80.0) * 1.001 + 1e-3)
            x, saved = z.clone(), ddpm_mod.randn_tensor
            try:
                with torch.no_grad():
                    for i, t in enumerate(sched.timesteps):
                        out = unet(x, t).sample  # all channels: the scheduler splits off a learned variance
                        step_z = (noise.standard(STREAM_STEP, levels[i + 1], levels[i]).float()
                                  if levels[i + 1] > 0 else torch.zeros_like(z))
                        ddpm_mod.randn_tensor = lambda *args, _z=step_z, **kw: _z
                        x = sched.step(out, t, x).prev_sample
            finally:
                ddpm_mod.randn_tensor = saved
            return x.double(), levels

        x, levels = diffusers_ddpm()
        # As for DDIM: diffusers starts at z in VP units at the first timestep.
        z_path = os.path.join(folder, "z-ddpm.npy")
        np.save(z_path, z.double().numpy() * (levels[0] ** 2 + 1) ** 0.5 / levels[0])
        ddpm_args = ["--solver", "ddpm", "--variance", variance, "--steps", str(a.steps), "--seed", "0"]
        ddpm_args += ddpm_grid(config)
        for v, kind in [(variance, "check")] + ([("small", "control")] if variance == "learned" else []):
            x_sf = run_sample(a, card, z_path, os.path.join(folder, f"sf-ddpm-{v}.npy"),
                              ["--solver", "ddpm", "--variance", v, "--steps", str(a.steps), "--seed", "0"]
                              + ddpm_grid(config))
            compare(name, "ddpm", f"diffusers DDPM, {config['variance_type']}", f"{v}, ddpm-{spacing}", x, x_sf,
                    kind=kind)

        # 8. The limits on the predicted x0: DDPMScheduler with clip_sample (range 0.5, so that
        # it bites on these random UNets) against --clip-denoised 0.5, and with thresholding
        # (ratio 0.9, sample_max_value 1.5) against --dynamic-threshold 0.9,1.5; control: the
        # clipped diffusers run against scoreflow unclipped. Then DDIMScheduler with clip_sample
        # and use_clipped_model_output=True (the step's eps re-derived from the clipped x0, as
        # scoreflow's clipped D makes every sampler do) against ddim --clip-denoised 0.5; with
        # diffusers' default use_clipped_model_output=False (the raw eps in the direction term)
        # reported, not judged.
        x_clip, _ = diffusers_ddpm(clip_sample=True, clip_sample_range=0.5)
        x_sf = run_sample(a, card, z_path, os.path.join(folder, "sf-ddpm-clip.npy"),
                          ddpm_args + ["--clip-denoised", "0.5"])
        compare(name, "ddpm", "diffusers DDPM, clip_sample 0.5", "--clip-denoised 0.5", x_clip, x_sf)
        compare(name, "ddpm", "diffusers DDPM, clip_sample 0.5", "unclipped", x_clip,
                run_sample(a, card, z_path, os.path.join(folder, "sf-ddpm-noclip.npy"), ddpm_args),
                kind="control")
        x_thr, _ = diffusers_ddpm(thresholding=True, dynamic_thresholding_ratio=0.9, sample_max_value=1.5)
        x_sf = run_sample(a, card, z_path, os.path.join(folder, "sf-ddpm-thr.npy"),
                          ddpm_args + ["--dynamic-threshold", "0.9,1.5"])
        compare(name, "ddpm", "diffusers DDPM, thresholding 0.9, 1.5", "--dynamic-threshold 0.9,1.5", x_thr, x_sf)
        if spacing != "linspace":
            z_ddim = os.path.join(folder, "z-ddim.npy")
            x_sf = run_sample(a, card, z_ddim, os.path.join(folder, "sf-ddim-clip.npy"),
                              ["--solver", "ddim", "--steps", str(ddim_steps), "--clip-denoised", "0.5"]
                              + ddpm_grid(config))
            for clipped_eps, kind in [(True, "check"), (False, "info")]:
                sched = diffusers.DDIMScheduler.from_config(config, clip_sample=True, clip_sample_range=0.5,
                                                            set_alpha_to_one=True, thresholding=False)
                sched.set_timesteps(ddim_steps)
                x = z * sched.init_noise_sigma
                with torch.no_grad():
                    for t in sched.timesteps:
                        out = unet(sched.scale_model_input(x, t), t).sample[:, :channels]
                        x = sched.step(out, t, x, eta=0.0, use_clipped_model_output=clipped_eps).prev_sample
                compare(name, "ddim", f"diffusers DDIM, clip_sample 0.5, use_clipped_model_output={clipped_eps}",
                        "--clip-denoised 0.5", x.double(), x_sf, kind=kind)

    bad = [r for r in rows if not r["ok"]]
    with open(os.path.join(a.out, "diffusers.json"), "w") as f:
        json.dump(rows, f, indent=1)
    judged = [r for r in rows if r["kind"] != "info"]
    print(f"{len(judged) - len(bad)} of {len(judged)} judged comparisons ok in {time.perf_counter() - t0:.1f} s "
          f"(tolerance {a.tol} x max(1, max |x|), {a.steps} steps); {os.path.join(a.out, 'diffusers.json')}")
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
