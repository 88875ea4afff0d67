"""Print the grids GITS chooses, by its authors' own code.

Usage: python3 experiments/peers/gits_dp.py DIFF_SAMPLER_REPO

DIFF_SAMPLER_REPO is a checkout of https://github.com/zju-pi/diff-sampler. Its
`gits-main/gits_utils.py` is imported as it stands and `get_dp_list` is run (the teacher's
trajectories, the cost matrix of Euler steps between the teacher's levels, and the dynamic
program), with the teacher samplers of `gits-main/solvers.py`, around a stand-in network: the
exact denoiser of the 2-D Gaussian N(MEAN, COV), D(x; sigma) = MEAN + COV (COV + sigma^2 I)^-1
(x - MEAN), in float64. Its covariance is not isotropic, so the trajectories curve (with an
isotropic covariance they are straight lines and the `dev` cost is 0).

What is patched: the multi-GPU helpers (`torch_utils.distributed`: one process;
`torch.distributed.all_reduce`: nothing to reduce), the teacher's schedule (`get_schedule`
returns scoreflow's: Karras, 12 steps from 80 to 0.002, then 0, so that the last level is 0 as
in scoreflow, where the reference's teacher stops at 0.002), and the warm-up latents (the 8 rows
Z[i][j] = sqrt(2) sin(2.3 i + 0.9 j + 0.5), instead of `torch.randn`).

For each configuration it prints one JSON line: the teacher, metric, coeff and step count, the
chosen indices into the teacher's levels, and the cost matrix's first row and sum. The values
pinned in scoreflow's test `gits_matches_the_authors_dynamic_program` (solvers/tests/gits.rs)
come from this script.
"""
import json
import math
import os
import sys
import types

import torch

MEAN = [0.5, -1.0]
COV = [[1.0, 0.2], [0.2, 0.09]]
CONFIGS = [
    # (teacher, metric, coeff, steps)
    ("ipndm", "dev", 1.15, 3),
    ("ipndm", "dev", 1.15, 4),
    ("ipndm", "dev", 1.15, 6),
    ("ipndm", "l2", 1.15, 4),
    ("euler", "l1", 1.0, 5),
    ("euler", "l2", 1.3, 3),
]


class Gaussian:
    img_channels, img_resolution, label_dim = 2, 1, 0

    def __init__(self):
        self.mean = torch.tensor(MEAN, dtype=torch.float64)
        self.cov = torch.tensor(COV, dtype=torch.float64)

    def __call__(self, x, sigma, class_labels=None, **kwargs):
        s2 = torch.as_tensor(sigma, dtype=torch.float64) ** 2
        gain = self.cov @ torch.linalg.inv(self.cov + s2 * torch.eye(2, dtype=torch.float64))
        flat = x.reshape(x.shape[0], 2) - self.mean
        return (self.mean + flat @ gain.T).reshape(x.shape)


def karras(n, sigma_min=0.002, sigma_max=80.0, rho=7.0):
    i = torch.arange(n, dtype=torch.float64)
    t = (sigma_max ** (1 / rho) + i / (n - 1) * (sigma_min ** (1 / rho) - sigma_max ** (1 / rho))) ** rho
    return torch.cat([t, torch.zeros_like(t[:1])])


def latents(rows):
    z = [[math.sqrt(2.0) * math.sin(2.3 * i + 0.9 * j + 0.5) for j in range(2)] for i in range(rows)]
    return torch.tensor(z, dtype=torch.float64).reshape(rows, 2, 1, 1)


class TorchStandIn:
    """The torch module, with randn returning the fixed latents and no process group."""

    distributed = types.SimpleNamespace(all_reduce=lambda *a, **k: None)

    def __getattr__(self, name):
        return getattr(torch, name)

    def randn(self, shape, *args, **kwargs):
        return latents(shape[0])


def main():
    root = os.path.join(sys.argv[1], "gits-main")
    sys.path.insert(0, root)
    tu = types.ModuleType("torch_utils")
    tu.distributed = types.SimpleNamespace(get_world_size=lambda: 1, get_rank=lambda: 0,
                                           print0=lambda *a, **k: print(*a, file=sys.stderr))
    tu.download_util = types.SimpleNamespace(check_file_by_key=lambda *a, **k: (None, None))
    sys.modules["torch_utils"] = tu
    sys.modules["torch_utils.distributed"] = tu.distributed
    sys.modules["torch_utils.download_util"] = tu.download_util
    import gits_utils

    steps_tea = 12
    grid = karras(steps_tea)
    gits_utils.solvers.get_schedule = lambda *a, **k: grid
    gits_utils.torch = TorchStandIn()
    net = Gaussian()
    for teacher, metric, coeff, steps in CONFIGS:
        kwargs = dict(dataset_name="cifar10", num_warmup=8, max_batch_size=8, sigma_min=0.002,
                      sigma_max=80.0, num_steps=steps + 1, num_steps_tea=steps_tea + 1,
                      schedule_type="polynomial", schedule_rho=7.0, afs=False, metric=metric,
                      coeff=coeff, model_source="edm", solver_tea=teacher, solver="euler",
                      max_order=4, prompt=None, guidance_type=None, guidance_rate=None)
        # get_dp_list keeps its cost matrix to itself; capture it at the dynamic program.
        seen = {}
        dp = gits_utils.dp

        def capture(cost_mat, *a, **k):
            seen["cost"] = cost_mat
            return dp(cost_mat, *a, **k)

        gits_utils.dp = capture
        path = gits_utils.get_dp_list(net, torch.device("cpu"), **kwargs)
        gits_utils.dp = dp
        cost = seen["cost"]
        print(json.dumps({
            "teacher": teacher, "metric": metric, "coeff": coeff, "steps": steps,
            "path": [int(i) for i in path],
            "row0": [float(v) for v in cost[0]],
            "sum": float(cost.astype("float64").sum()),
        }))


if __name__ == "__main__":
    main()
