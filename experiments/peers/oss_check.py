"""Print the grids OSS chooses, by its authors' own code.

Usage: python3 experiments/peers/oss_check.py OPTIMALSTEPS_REPO

OPTIMALSTEPS_REPO is a checkout of https://github.com/bebebe666/OptimalSteps (checked at
ee35043). Its `OSS/OSS.py` is imported as it stands and `search_OSS` (Pei, Hu & Gu 2025,
"Optimal Stepsize for Diffusion Sampling") is run, then `cal_medium` on its per-sample grids,
around a stand-in network: the exact denoiser of a 2-D Gaussian mixture with diagonal
covariances (MIX below), in float64 (the default dtype is set to float64, so that the search's
table of errors is float64 too).

`search_OSS` takes a model `model(x, t, class_emb, kwargs)` that returns the velocity at the
teacher index `t` (an integer from 1 to N) and `model.fm_steps`, the N + 1 times with index 0
the end (0). It steps `x + v (t_j - t_i)`. Here the times are scoreflow's noise levels (the
teacher grid Karras(N steps, 80 to 0.002) then 0, in increasing order) and the velocity is
`(x - D(x; sigma)) / sigma`, so that its step is scoreflow's Euler step in sigma and its states
are scoreflow's; the start latents are `80 Z` with Z[i][j] = sqrt(2) sin(2.3 i + 0.9 j + 0.5).

For each configuration it prints one JSON line: the teacher steps N, the student steps, the
number of samples, each sample's grid (teacher indices counted from the end, as the reference
returns them: the level before the last step first) and `cal_medium` of them. The values
pinned in scoreflow's test `oss_matches_the_authors_search` (solvers/tests/oss.rs) come from
this script.
"""
import json
import math
import sys

import torch

from pinned import karras

MIX = {
    "weights": [0.3, 0.45, 0.25],
    "means": [[-1.5, 0.5], [1.0, 1.2], [0.3, -1.4]],
    "stds": [[0.3, 0.15], [0.2, 0.4], [0.25, 0.25]],
}
CONFIGS = [
    # (teacher steps N, student steps, samples)
    (40, 3, 8),
    (40, 5, 8),
    (40, 8, 7),
    (25, 4, 1),
]


def latents(rows):
    """Z[i][j] = sqrt(2) sin(2.3 i + 0.9 j + 0.5), as experiments/peers/gits_dp.py draws them."""
    z = [[math.sqrt(2.0) * math.sin(2.3 * i + 0.9 * j + 0.5) for j in range(2)] for i in range(rows)]
    return torch.tensor(z, dtype=torch.float64)


def denoise(x, sigma):
    """The mixture's exact E[x0 | x] at noise level sigma (x: [B, 2])."""
    w = torch.tensor(MIX["weights"], dtype=torch.float64)
    mu = torch.tensor(MIX["means"], dtype=torch.float64)
    var = torch.tensor(MIX["stds"], dtype=torch.float64) ** 2
    tot = var + sigma ** 2  # [K, 2]
    diff = x[:, None, :] - mu[None]  # [B, K, 2]
    logp = torch.log(w)[None] - 0.5 * (diff ** 2 / tot[None] + torch.log(2 * math.pi * tot[None])).sum(-1)
    post = torch.softmax(logp, dim=1)  # [B, K]
    comp = mu[None] + (var / tot)[None] * diff
    return (post[..., None] * comp).sum(1)


class Velocity:
    def __init__(self, n, start=None):
        self.fm_steps = torch.flip(karras(n), [0])  # 0 first
        self.n = n
        self.start = start

    def __call__(self, x, t, class_emb, kwargs):
        i = int(t[0])
        sigma = float(self.fm_steps[i])
        v = (x - denoise(x, sigma)) / sigma
        if self.start is not None and i < self.n and any(torch.equal(x[0], s) for s in self.start):
            # The start latent taken as the state of a level below the top (the first round's
            # steps from there): its error is NaN, which never replaces an entry of the table.
            return torch.full_like(v, float("nan"))
        return v


def main():
    torch.set_default_dtype(torch.float64)
    sys.path.insert(0, sys.argv[1])
    from OSS.OSS import cal_medium, search_OSS

    for n, steps, samples in CONFIGS:
        z = 80.0 * latents(samples)
        for top in (False, True):
            model = Velocity(n, start=z if top else None)
            paths = search_OSS(model, z, samples, None, torch.device("cpu"),
                               teacher_steps=n, student_steps=steps)
            print(json.dumps({
                "teacher_steps": n, "steps": steps, "samples": samples, "from_the_top": top,
                "paths": [[int(i) for i in p] for p in paths],
                "median": [int(i) for i in cal_medium(paths)],
            }))


if __name__ == "__main__":
    main()
