"""Check the variable-step iPNDM of zju-pi/diff-sampler (ComfyUI's `ipndm_v`) on an ODE every
consistent method solves exactly.

Usage: python3 experiments/peers/ipndm_v_check.py DIFF_SAMPLER_REPO

DIFF_SAMPLER_REPO is a checkout of https://github.com/zju-pi/diff-sampler. The function
`ipndm_v_sampler` of its `diff-solvers-main/solvers.py` is executed as it stands around a
stand-in network whose probability-flow derivative is a constant, D(x; t) = x - t C, so that
dx/dt = C and the exact solution from x(T) is x(T) + (t - T) C. Any Adams-Bashforth method,
of any order and on any steps, integrates a constant derivative exactly: its weights sum to one.
For max_order 2 to 4 (1 fails in its history update) on EDM's Karras levels (18 levels from 80 to 0.002, rho 7, the last level
sigma_min, without the final denoising) the script prints the largest error over the samples,
relative to |C| (T - sigma_min). scoreflow does not ship this sampler: its `lms` is the exact
variable-step Adams-Bashforth method (k-diffusion's coefficients, integrals of the Lagrange
basis), see docs/samplers/ipndm.md.
"""
import os
import sys

import torch

C = torch.tensor([[0.7, -1.3]], dtype=torch.float64)
LATENTS = torch.tensor([[0.3, -1.2], [1.5, 0.7]], dtype=torch.float64)


class ConstantSlope:
    def __call__(self, x, t, class_labels=None):
        return x - torch.as_tensor(t, dtype=torch.float64) * C


def main():
    repo = sys.argv[1]
    src = open(os.path.join(repo, "diff-solvers-main", "solvers.py")).read()
    start = src.index("@torch.no_grad()\ndef ipndm_v_sampler")
    end = src.index("#---", start)
    ns = {"torch": torch}
    exec("def get_denoised(net, x, t, class_labels=None, condition=None, unconditional_condition=None):\n"
         "    return net(x, t, class_labels=class_labels)\n", ns)
    exec(src[start:end], ns)
    n, smin, smax, rho = 18, 0.002, 80.0, 7.0
    i = torch.arange(n, dtype=torch.float64)
    t = (smax ** (1 / rho) + i / (n - 1) * (smin ** (1 / rho) - smax ** (1 / rho))) ** rho
    exact = LATENTS * smax + (smin - smax) * C
    for order in range(2, 5):
        x = ns["ipndm_v_sampler"](ConstantSlope(), LATENTS, t_steps=t, max_order=order)
        err = (x - exact).abs().max() / (C.abs().max() * (smax - smin))
        print(f"max_order {order}: relative error {float(err):.2e}")


if __name__ == "__main__":
    main()
