"""Export a diffusers UNet2DModel to TorchScript and write its scoreflow model card.

    python3 scripts/export-diffusers.py MODEL_DIR --out OUT_DIR [--subfolder unet]
        [--scheduler-config PATH] [--batch 2]

MODEL_DIR is a diffusers pipeline folder (`unet/` and `scheduler/scheduler_config.json`, as
`DDPMPipeline.save_pretrained` writes it) or a bare UNet folder (`config.json` and the weights;
then --scheduler-config, the scheduler's `scheduler_config.json` or its folder, is required).
Nothing is downloaded: the UNet is loaded with `UNet2DModel.from_pretrained(...,
local_files_only=True)` (diffusers' `models/unets/unet_2d.py`), in eval mode, float32, on the CPU.

What it writes (docs/models.md has the card format):

1. OUT_DIR/unet.pt: the TorchScript trace of `forward(x_in, t) = unet(x_in, t,
   return_dict=False)[0]`, the bare network of the discrete chain: x_in = x / sqrt(sigma^2 + 1),
   t the fractional training timestep (k-diffusion's `DiscreteSchedule.sigma_to_t`, diffusers'
   `_sigma_to_t`). It is traced on a batch of --batch (>= 2) samples at two different fractional
   timesteps, then run against the eager UNet on fresh inputs of another batch size: a trace that
   baked a batch size or an input value into the graph disagrees there (exit 2). A UNet with a
   learned time embedding table (`time_embedding_type = "learned"`) takes integer steps: the
   wrapper rounds t and the card says `quantize = true`.
2. OUT_DIR/card.toml: the card, from the scheduler config (the keys of diffusers'
   `DDPMScheduler`, `EulerDiscreteScheduler`, ...): num_train_timesteps -> timesteps,
   beta_schedule (linear, scaled_linear, squaredcos_cap_v2), beta_start, beta_end,
   prediction_type (epsilon -> eps, v_prediction -> v, sample -> x0), variance_type learned or
   learned_range -> learned_sigmas = true (the UNet then has twice the input channels out).
   Keys missing from the config take the defaults of the scheduler class it names. Comments
   give the chain's noise range to sample in (sigma_0 and sigma_{T-1}, float64) and the
   scheduler options scoreflow does not apply (clip_sample, thresholding, timestep_spacing, ...).
3. One JSON line on stdout: card, torchscript, sigma_min, sigma_max, parameters.

Out of scope for now (exit 2, a one-line message, nothing written): class-conditional
UNet2DModels (num_class_embeds or class_embed_type set), text-conditioned UNet2DConditionModels
(cross-attention on encoder_hidden_states), score-SDE UNets with Fourier time embeddings (their
time input is sigma itself, not a step of a beta chain), trained_betas, rescale_betas_zero_snr,
and schedulers that have no beta chain (score-SDE VE, Karras VE, flow matching).

diffusers is taken from the python's own packages, or from the repository's `.peers/diffusers`
where that folder exists (appended to sys.path, so the python's own torch and numpy come first;
scripts/peers-setup.sh installs it there). Exit status: 0 written, 2 bad input or a failed check.
"""

import argparse
import inspect
import json
import math
import os
import sys
import warnings

import numpy as np
import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PEERS_DIFFUSERS = os.path.join(REPO, ".peers", "diffusers")

# diffusers' scheduler config names -> the card's.
SCHEDULES = {"linear": "linear", "scaled_linear": "scaled-linear", "squaredcos_cap_v2": "squaredcos-cap-v2"}
PREDICTIONS = {"epsilon": "eps", "v_prediction": "v", "sample": "x0"}
# Scheduler config keys the card takes (the rest are listed in the card as ignored).
# (rescale_betas_zero_snr and timestep_type are checked: true and "continuous" are refused.)
USED_KEYS = {"num_train_timesteps", "beta_schedule", "beta_start", "beta_end", "prediction_type", "variance_type",
             "trained_betas", "rescale_betas_zero_snr", "timestep_type", "_class_name", "_diffusers_version"}
# Agreement of the trace with the eager UNet on fresh inputs (relative to max |output|).
TRACE_TOL = 1e-4


def fail(msg):
    """Bad input or a failed check: one line on stderr, exit code 2 (as scoreflow's own errors)."""
    print(f"export-diffusers: {msg}", file=sys.stderr)
    sys.exit(2)


def import_diffusers():
    """The diffusers module: the python's own, else the repository's .peers/diffusers."""
    if os.path.isdir(PEERS_DIFFUSERS):
        sys.path.append(PEERS_DIFFUSERS)
    try:
        import diffusers
        from diffusers.utils import logging as dlogging
    except Exception as e:  # any import failure: no usable diffusers
        fail(f"cannot import diffusers ({type(e).__name__}: {e}); pip install diffusers, or run scripts/peers-setup.sh")
    dlogging.set_verbosity_error()
    return diffusers


# --------------------------------------------------------------------------- inputs


def read_json(path, what):
    try:
        with open(path) as f:
            cfg = json.load(f)
    except (OSError, ValueError) as e:
        fail(f"cannot read {what} {path}: {e}")
    if not isinstance(cfg, dict):
        fail(f"{what} {path} is not a JSON object")
    return cfg


def locate(a):
    """(folder given to from_pretrained, subfolder or None, the UNet's config.json, the scheduler
    config's path: --scheduler-config, else MODEL_DIR/scheduler/scheduler_config.json, which
    main checks after the UNet's config, so that a UNet out of scope is named first)."""
    if not os.path.isdir(a.model_dir):
        fail(f"{a.model_dir} is not a folder")
    if a.subfolder is not None:
        subfolder = a.subfolder
    elif os.path.isfile(os.path.join(a.model_dir, "unet", "config.json")):
        subfolder = "unet"  # a pipeline folder
    elif os.path.isfile(os.path.join(a.model_dir, "config.json")):
        subfolder = None  # a bare UNet folder
    else:
        fail(f"{a.model_dir} has neither unet/config.json (a pipeline folder) nor config.json (a UNet folder)")
    unet_dir = os.path.join(a.model_dir, subfolder) if subfolder else a.model_dir
    unet_config = os.path.join(unet_dir, "config.json")
    if not os.path.isfile(unet_config):
        fail(f"{unet_config} does not exist")
    if a.scheduler_config is not None:
        sched = a.scheduler_config
        if os.path.isdir(sched):
            sched = os.path.join(sched, "scheduler_config.json")
        if not os.path.isfile(sched):
            fail(f"--scheduler-config {a.scheduler_config}: no such file")
    else:
        sched = os.path.join(a.model_dir, "scheduler", "scheduler_config.json")
    return a.model_dir, subfolder, unet_config, sched


def check_unet_config(cfg, path):
    """Refuse what a card cannot wrap (yet), from the UNet's config.json alone."""
    cls = cfg.get("_class_name")
    if cls == "UNet2DConditionModel":
        fail(f"{path}: UNet2DConditionModel (text-conditioned, cross-attention on encoder_hidden_states) is out of "
             f"scope for now: only unconditional UNet2DModels are exported")
    if cls is not None and cls != "UNet2DModel":
        fail(f"{path}: {cls} is not a UNet2DModel (only unconditional UNet2DModels are exported for now)")
    cond = [f"{k} = {json.dumps(cfg[k])}" for k in ("num_class_embeds", "class_embed_type") if cfg.get(k) is not None]
    if cond:
        fail(f"{path}: a class-conditional UNet2DModel ({', '.join(cond)}) is out of scope for now: only "
             f"unconditional UNet2DModels are exported")
    if cfg.get("time_embedding_type", "positional") == "fourier":
        fail(f"{path}: time_embedding_type = \"fourier\" (a score-SDE VE UNet whose time input is sigma, not a step "
             f"of a beta chain) is out of scope for now")


def scheduler_settings(diffusers, cfg, path):
    """The card's chain from a scheduler config: a dict of timesteps, schedule (diffusers' name),
    beta_start, beta_end, prediction (the card's name), learned (bool), and `ignored`, the other
    options with their values. Missing keys take the defaults of the scheduler class the config
    names (they differ between classes: HeunDiscreteScheduler's beta_start is 0.00085,
    DDPMScheduler's 0.0001), or DDPMScheduler's when the class is unknown."""
    cls_name = cfg.get("_class_name")
    cls = getattr(diffusers, cls_name, None) if isinstance(cls_name, str) else None
    if cls is None:
        cls = diffusers.DDPMScheduler
    params = inspect.signature(cls.__init__).parameters
    if "beta_schedule" not in params:
        fail(f"{path}: {cls_name} has no beta chain (beta_schedule): only discrete-chain (DDPM-type) schedulers map "
             f"to a card")
    defaults = {k: p.default for k, p in params.items() if p.default is not inspect.Parameter.empty}

    def get(key):
        return cfg[key] if key in cfg else defaults.get(key)

    if get("trained_betas") is not None:
        fail(f"{path}: trained_betas (an explicit list of betas) is not supported: the card's chain is linear, "
             f"scaled_linear or squaredcos_cap_v2")
    if get("rescale_betas_zero_snr"):
        fail(f"{path}: rescale_betas_zero_snr = true (a zero-SNR last step, sigma_{{T-1}} infinite) is not supported")
    if get("timestep_type") == "continuous":
        fail(f"{path}: timestep_type = \"continuous\" (the network takes 0.25 ln sigma, not a step) is not supported")
    schedule = get("beta_schedule")
    if schedule not in SCHEDULES:
        fail(f"{path}: beta_schedule {json.dumps(schedule)} is not supported (linear, scaled_linear or "
             f"squaredcos_cap_v2)")
    prediction = get("prediction_type")
    if prediction not in PREDICTIONS:
        fail(f"{path}: prediction_type {json.dumps(prediction)} is not supported (epsilon, v_prediction or sample)")
    timesteps = get("num_train_timesteps")
    if not isinstance(timesteps, int) or isinstance(timesteps, bool) or timesteps < 2:
        fail(f"{path}: num_train_timesteps must be an integer >= 2, got {json.dumps(timesteps)}")
    beta_start, beta_end = get("beta_start"), get("beta_end")
    if schedule != "squaredcos_cap_v2":
        ok = all(isinstance(b, (int, float)) and not isinstance(b, bool) for b in (beta_start, beta_end))
        if not (ok and 0 < beta_start <= beta_end < 1):
            fail(f"{path}: needs 0 < beta_start <= beta_end < 1, got beta_start {beta_start} and beta_end {beta_end}")
    variance = get("variance_type")
    ignored = {k: v for k, v in cfg.items() if k not in USED_KEYS}
    if "variance_type" in cfg and variance not in ("learned", "learned_range"):
        ignored["variance_type"] = variance  # a fixed variance: what DDPM's ancestral step would add
    return {"class": cls_name, "timesteps": timesteps, "schedule": schedule, "beta_start": beta_start,
            "beta_end": beta_end, "prediction": PREDICTIONS[prediction],
            "variance": variance, "learned": variance in ("learned", "learned_range"), "ignored": ignored}


def chain_sigmas(s):
    """sigma_j = sqrt((1 - abar_j) / abar_j), j = 0..T-1, in float64: the chain of the card (and of
    k-diffusion's DiscreteSchedule; diffusers' schedulers compute it in float32)."""
    T = s["timesteps"]
    if s["schedule"] == "linear":
        betas = np.linspace(s["beta_start"], s["beta_end"], T, dtype=np.float64)
    elif s["schedule"] == "scaled_linear":
        betas = np.linspace(s["beta_start"] ** 0.5, s["beta_end"] ** 0.5, T, dtype=np.float64) ** 2
    else:
        # diffusers' betas_for_alpha_bar (scheduling_ddpm.py), "cosine": Nichol & Dhariwal's schedule.
        abar = lambda t: math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2
        betas = np.array([min(1 - abar((i + 1) / T) / abar(i / T), 0.999) for i in range(T)])
    ac = np.cumprod(1.0 - betas)
    return np.sqrt((1 - ac) / ac)


# --------------------------------------------------------------------------- tracing


class Network(torch.nn.Module):
    """The function a card calls: forward(x_in, t) -> the UNet's output. `index`: the UNet has a
    learned embedding table of integer steps, so t (an integer-valued float under the card's
    quantize = true) is rounded to int64 first."""

    def __init__(self, unet, index):
        super().__init__()
        self.unet = unet
        self.index = index

    def forward(self, x_in, t):
        if self.index:
            t = t.round().long()
        return self.unet(x_in, t, return_dict=False)[0]


def trace(net, shape, timesteps, batch):
    """Trace `net` on `batch` samples at two fractional timesteps; check the trace against the
    eager module on fresh inputs of batch + 1 samples and other timesteps. Returns the trace."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch, *shape, generator=g)
    t_pair = torch.tensor([0.0105 * timesteps + 0.5, 0.7 * (timesteps - 1) + 0.25])
    t = t_pair.repeat(batch)[:batch]
    with torch.no_grad(), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            traced = torch.jit.trace(net, (x, t), check_trace=False)
        except Exception as e:
            fail(f"torch.jit.trace failed: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")
    tracer = [str(w.message).splitlines()[0] for w in caught if issubclass(w.category, torch.jit.TracerWarning)]
    # Fresh inputs: another batch size, other (fractional) timesteps, other values.
    n = batch + 1
    x2 = torch.randn(n, *shape, generator=g) * 1.5
    t2 = torch.rand(n, generator=g) * (timesteps - 1)
    with torch.no_grad():
        try:
            want = net(x2, t2)
            got = traced(x2, t2)
        except Exception as e:
            fail(f"the traced module fails on a batch of {n} (tracing baked the batch size in?): "
                 f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")
    if got.shape != want.shape:
        fail(f"the traced module returns {tuple(got.shape)} on a batch of {n}, the UNet {tuple(want.shape)}: tracing "
             f"baked the batch size in")
    diff = (got - want).abs().max().item()
    scale = want.abs().max().item()
    if not diff <= TRACE_TOL * scale:
        hint = f"; tracer warnings: {tracer[0]}" if tracer else ""
        fail(f"the traced module differs from the UNet on fresh inputs (batch {n}): max |diff| {diff:.3g}, max |out| "
             f"{scale:.3g} (tolerance {TRACE_TOL} relative): tracing baked something in{hint}")
    return traced, (x2, t2, want)


# --------------------------------------------------------------------------- the card


def toml_value(v):
    """A TOML value: booleans, numbers (repr floats, exact), strings, arrays."""
    if v is True or v is False:
        return "true" if v else "false"
    if isinstance(v, float):
        return repr(v)
    return json.dumps(v)


def card_text(source, s, shape, sigmas, quantize):
    lo, hi = float(sigmas[0]), float(sigmas[-1])
    lines = [
        "# scoreflow model card of a diffusers UNet2DModel, written by scripts/export-diffusers.py (docs/models.md)",
        f"# from {source}",
        f"# scheduler: {s['class'] or '(no _class_name)'}",
        "# the chain's noise range (sigma_0 and sigma_{T-1}, float64), where scoreflow sample and bench",
        "# sample unless --sigma-min/--sigma-max say otherwise (an experiment's [grid] takes them as:)",
        f"#   sigma_min = {lo!r}",
        f"#   sigma_max = {hi!r}",
    ]
    if s["ignored"]:
        lines.append("# scheduler options scoreflow ignores (no clipping or thresholding; for diffusers' timestep_spacing use --grid ddpm-leading|ddpm-trailing|ddpm-linspace, with --steps-offset for leading):")
        opts = [f"{k} = {toml_value(v) if v is not None else 'null'}" for k, v in sorted(s["ignored"].items())]
        line = "#  "
        for o in opts:  # a few to a line
            if len(line) + len(o) > 98 and line != "#  ":
                lines.append(line)
                line = "#  "
            line += f" {o},"
        lines.append(line.rstrip(","))
    lines += [
        'torchscript = "unet.pt"',
        f"shape = {json.dumps(list(shape))}",
        f"learned_sigmas = {toml_value(s['learned'])}",
        "",
        "[precond]",
        'kind = "discrete"',
        f"prediction = \"{s['prediction']}\"",
        f"schedule = \"{SCHEDULES[s['schedule']]}\"",
    ]
    if s["schedule"] != "squaredcos_cap_v2":  # the cosine chain has no betas to give
        lines += [f"beta_start = {float(s['beta_start'])!r}", f"beta_end = {float(s['beta_end'])!r}"]
    lines += [f"timesteps = {s['timesteps']}", f"quantize = {toml_value(quantize)}"]
    return "\n".join(lines) + "\n"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("model_dir", metavar="MODEL_DIR", help="a diffusers pipeline folder, or a bare UNet folder")
    ap.add_argument("--out", required=True, help="output folder: unet.pt and card.toml")
    ap.add_argument("--subfolder", default=None,
                    help="the UNet's subfolder of MODEL_DIR (default: unet/ where it exists, else MODEL_DIR itself)")
    ap.add_argument("--scheduler-config", default=None,
                    help="scheduler_config.json (or its folder); default MODEL_DIR/scheduler/scheduler_config.json")
    ap.add_argument("--batch", type=int, default=2, help="batch size of the trace's example inputs (>= 2)")
    a = ap.parse_args()
    if a.batch < 2:
        fail(f"--batch must be at least 2, got {a.batch}")

    # Everything that can be refused from the config files is checked before loading anything.
    model_dir, subfolder, unet_config_path, sched_path = locate(a)
    unet_cfg = read_json(unet_config_path, "UNet config")
    check_unet_config(unet_cfg, unet_config_path)
    if not os.path.isfile(sched_path):
        fail(f"{model_dir} has no scheduler/scheduler_config.json (a bare UNet folder?): pass --scheduler-config PATH, "
             f"the scheduler config the model was trained with")
    diffusers = import_diffusers()
    s = scheduler_settings(diffusers, read_json(sched_path, "scheduler config"), sched_path)

    try:
        unet = diffusers.UNet2DModel.from_pretrained(model_dir, subfolder=subfolder, local_files_only=True)
    except Exception as e:
        fail(f"cannot load the UNet2DModel from {unet_config_path}: {type(e).__name__}: {str(e).splitlines()[0]}")
    unet = unet.to(device="cpu", dtype=torch.float32).eval()
    cfg = unet.config
    size = cfg.sample_size
    if isinstance(size, int) and not isinstance(size, bool):
        h = w = size
    elif isinstance(size, (list, tuple)) and len(size) == 2 and all(isinstance(v, int) for v in size):
        h, w = size
    else:
        fail(f"{unet_config_path}: sample_size must be an int or a pair, got {json.dumps(size)}")
    c_in, c_out = cfg.in_channels, cfg.out_channels
    if s["learned"] and c_out != 2 * c_in:
        fail(f"{sched_path} says variance_type {s['variance']} (learned variances) "
             f"but the UNet has {c_in} input and {c_out} output channels (needs {2 * c_in})")
    if not s["learned"] and c_out != c_in:
        fail(f"the UNet has {c_in} input and {c_out} output channels, the scheduler config no learned variance "
             f"(variance_type learned or learned_range needs twice the input channels; otherwise they must be equal)")
    index = cfg.time_embedding_type == "learned"
    if index and cfg.num_train_timesteps is not None and cfg.num_train_timesteps != s["timesteps"]:
        fail(f"the UNet's time embedding table has {cfg.num_train_timesteps} steps, the scheduler "
             f"{s['timesteps']}")
    shape = [c_in, h, w]

    traced, (x2, t2, want) = trace(Network(unet, index), shape, s["timesteps"], a.batch)
    os.makedirs(a.out, exist_ok=True)
    pt = os.path.join(a.out, "unet.pt")
    traced.save(pt)
    # The saved file, loaded back, must give the same outputs (what scoreflow will load).
    with torch.no_grad():
        back = torch.jit.load(pt)(x2, t2)
    if not (back - want).abs().max().item() <= TRACE_TOL * want.abs().max().item():
        fail(f"{pt} loaded back differs from the UNet")
    sigmas = chain_sigmas(s)
    source = os.path.abspath(unet_config_path) + " and " + os.path.abspath(sched_path)
    card = os.path.join(a.out, "card.toml")
    with open(card, "w") as f:
        f.write(card_text(source, s, shape, sigmas, quantize=index))
    print(json.dumps({"card": card, "torchscript": pt, "sigma_min": float(sigmas[0]), "sigma_max": float(sigmas[-1]),
                      "parameters": sum(p.numel() for p in unet.parameters())}))


if __name__ == "__main__":
    main()
