"""Print the samples of score_sde's predictor-corrector sampler, run by its own code.

Usage: python3 experiments/peers/score_sde_pc.py SCORE_SDE_REPO

SCORE_SDE_REPO is a checkout of https://github.com/yang-song/score_sde_pytorch (the PyTorch
port of Song et al. 2021's code). Its `sde_lib.py` and `sampling.py` are loaded by file path and
`get_pc_sampler` is run as it stands (`models.utils`, which imports the networks, is replaced by
a stub whose `get_score_fn` returns the stand-in score below), for the VP SDE (beta 0.1 to 20)
and the VE SDE (sigma 0.01 to 50) with N = 50 levels, `eps` = 1e-9 (so that the time of level i
is (N - 1 - i) / (N - 1) up to 1e-9, and score_sde's `(t (N - 1)).long()` indexes level N - 1 - i),
with several predictors and correctors.

The stand-in score is that of the 2-D Gaussian N(MEAN, STD^2 I) (shaped [B, 2, 1, 1], as
score_sde's 4-D updates need) at the level the predictor indexes: under VP the discrete chain's
`alpha_bar_k` (betas linspace(0.1 / N, 20 / N, N), as VPSDE builds them), scale `s = sqrt(abar)`,
`sigma = sqrt(1 / abar - 1)`, `score(x) = (D(x / s; sigma) - x / s) / (s sigma^2)` with
`D(y; sigma) = MEAN + STD^2 / (STD^2 + sigma^2) (y - MEAN)`; under VE `discrete_sigmas[k]`.
The prior sample is scoreflow's start, `sigma_top LATENTS` in the scaled variable (times `s` of
the top level under VP). The noise is not random: call k of `torch.randn_like` returns
Z_k[i][j] = sqrt(2) sin(1.7 k + 2.3 i + 0.9 j + 0.5), which the Rust test repeats call for call
(score_sde draws the corrector's noise per corrector step, then the predictor's, the order in
which scoreflow draws them).

score_sde returns the last predictor step's mean (`denoise=True`); scoreflow's step to sigma = 0
returns D of the state after the last level's corrector. The script prints both: `x_mean`
(score_sde's output) and `denoised` (D of the state score_sde's last predictor starts from, which
the Rust test `pc_matches_score_sdes_pc_sampler` pins). Under VE the two are the same (the
reverse-diffusion step to 0 is x + sigma^2 score).

The SDE's tables are float64 (`torch.set_default_dtype(torch.float64)` before VPSDE/VESDE build
them), as scoreflow computes them. The `ald` corrector takes its step from the continuous marginal std at the level's
time, which differs from the level by eps: about 1e-8 relative.
"""
import importlib.util
import json
import math
import os
import sys
import types

import torch

from pinned import FormulaNoise, Gaussian, TorchWithNoise, latents
N = 50
EPS = 1e-9

# name: (sde, predictor, corrector, snr, corrector steps)
CONFIGS = {
    "vp-reverse-diffusion-langevin": ("vp", "reverse_diffusion", "langevin", 0.16, 1),
    "vp-ancestral-langevin-2": ("vp", "ancestral_sampling", "langevin", 0.1, 2),
    "vp-reverse-diffusion-none": ("vp", "reverse_diffusion", "none", 0.16, 1),
    "ve-reverse-diffusion-langevin": ("ve", "reverse_diffusion", "langevin", 0.16, 1),
    "ve-ancestral-none": ("ve", "ancestral_sampling", "none", 0.16, 1),
    "ve-none-ald-3": ("ve", "none", "ald", 0.5, 3),
}


def load(name, path):
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod


denoise = Gaussian()


def levels(kind):
    """(scale s_k, sigma_k) of each level k = 0 .. N - 1, in float64."""
    if kind == "vp":
        betas = torch.linspace(0.1 / N, 20.0 / N, N, dtype=torch.float64)
        abar = torch.cumprod(1.0 - betas, 0)
        return [(math.sqrt(a), math.sqrt(1.0 / a - 1.0)) for a in abar.tolist()]
    sig = torch.exp(torch.linspace(math.log(0.01), math.log(50.0), N, dtype=torch.float64))
    return [(1.0, s) for s in sig.tolist()]


def main():
    repo = sys.argv[1]
    torch.set_default_dtype(torch.float64)
    lv_cache = {k: levels(k) for k in ("vp", "ve")}
    current = {}

    def get_score_fn(sde, model, train=False, continuous=False):
        def score(x, t):
            k = (t * (sde.N - 1) / sde.T).long()
            assert bool((k == k[0]).all())
            s, sigma = current["levels"][int(k[0])]
            y = x / s
            return (denoise(y, sigma) - y) / (s * sigma * sigma)
        return score

    utils = types.ModuleType("models.utils")
    utils.get_score_fn = get_score_fn
    utils.from_flattened_numpy = lambda x, shape: torch.from_numpy(x.reshape(shape))
    utils.to_flattened_numpy = lambda x: x.detach().cpu().numpy().reshape((-1,))
    models = types.ModuleType("models")
    models.utils = utils
    sys.modules["models"], sys.modules["models.utils"] = models, utils
    sde_lib = load("sde_lib", os.path.join(repo, "sde_lib.py"))
    sampling = load("sampling", os.path.join(repo, "sampling.py"))

    # Record the state after each corrector update (the last one is what scoreflow denoises).
    after_corrector = []
    inner = sampling.shared_corrector_update_fn

    def corrector_update(x, t, **kw):
        x, x_mean = inner(x, t, **kw)
        after_corrector.append(x)
        return x, x_mean

    sampling.shared_corrector_update_fn = corrector_update
    lat = latents().view(3, 2, 1, 1)
    for name, (kind, pred, corr, snr, steps) in CONFIGS.items():
        sde = sde_lib.VPSDE(0.1, 20.0, N) if kind == "vp" else sde_lib.VESDE(0.01, 50.0, N)
        current["levels"] = lv_cache[kind]
        s_top, sigma_top = lv_cache[kind][N - 1]
        sde.prior_sampling = lambda shape, _x=lat * sigma_top * s_top: _x.clone()
        after_corrector.clear()
        sampler = sampling.get_pc_sampler(
            sde, (3, 2, 1, 1), sampling.get_predictor(pred), sampling.get_corrector(corr), lambda x: x, snr,
            n_steps=steps, probability_flow=False, continuous=True, denoise=True, eps=EPS, device="cpu")
        saved = sampling.torch
        sampling.torch = TorchWithNoise(FormulaNoise())
        try:
            x_mean, nfe = sampler(None)
        finally:
            sampling.torch = saved
        s0, sigma0 = lv_cache[kind][0]
        last = after_corrector[-1]
        den = denoise(last / s0, sigma0)
        print(json.dumps({"config": name, "nfe": nfe,
                          "denoised": [repr(float(v)) for v in den.reshape(-1).tolist()],
                          "x_mean": [repr(float(v)) for v in x_mean.reshape(-1).tolist()]}))


if __name__ == "__main__":
    main()
