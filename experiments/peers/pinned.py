"""What the pinned reference checks share: the problem and the noise.

The scripts that run a paper's own code (edm_sampler.py, restart_sampler.py, er_sde_solver.py,
score_sde_pc.py) all sample the exact denoiser of the 2-D Gaussian N(MEAN, STD^2 I) from the
three LATENTS in float64, and the stochastic ones draw formula noise instead of random numbers:
call k of `randn_like` returns Z_k[i][j] = sqrt(2) sin(1.7 k + 2.3 i + 0.9 j + 0.5) (sample i,
coordinate j), which the Rust tests (`SequenceNoise`, `pinned_problem` in
solvers/tests/samplers.rs) repeat call for call.
"""
import math

import torch

MEAN = [0.5, -1.0]
STD = 0.5
LATENTS = [[0.3, -1.2], [1.5, 0.7], [-0.4, 0.1]]


class Gaussian:
    """D(x; sigma) = MEAN + STD^2 / (STD^2 + sigma^2) (x - MEAN), shaped like NVlabs/edm's
    networks (an unbounded sigma range, the identity `round_sigma`); `x` may carry trailing
    singleton dimensions ([B, 2, 1, 1])."""

    sigma_min, sigma_max = 0.0, float("inf")
    img_channels, img_resolution = 2, 1

    def __init__(self):
        self.mean = torch.tensor(MEAN, dtype=torch.float64)

    @staticmethod
    def round_sigma(sigma):
        return torch.as_tensor(sigma)

    def __call__(self, x, sigma, class_labels=None, **kwargs):
        v = STD * STD
        mean = self.mean.view(1, 2, *([1] * (x.dim() - 2)))
        return mean + v / (v + torch.as_tensor(sigma, dtype=torch.float64) ** 2) * (x - mean)


class FormulaNoise:
    """Call k returns Z_k shaped like `like` (its first two dimensions are sample and coordinate)."""

    def __init__(self):
        self.k = 0

    def __call__(self, like, *args, **kwargs):
        rows, cols = like.shape[0], like.shape[1]
        z = [[math.sqrt(2.0) * math.sin(1.7 * self.k + 2.3 * i + 0.9 * j + 0.5) for j in range(cols)]
             for i in range(rows)]
        self.k += 1
        return torch.tensor(z, dtype=like.dtype).reshape(like.shape)


class TorchWithNoise:
    """The torch module with `randn_like` replaced by `draw`: patched in as a module's `torch`."""

    def __init__(self, draw):
        self._draw = draw

    def __getattr__(self, name):
        return getattr(torch, name)

    def randn_like(self, like, *args, **kwargs):
        return self._draw(like)


def latents():
    return torch.tensor(LATENTS, dtype=torch.float64)


def karras(n, sigma_min=0.002, sigma_max=80.0, rho=7.0):
    """EDM's Karras levels, n of them from sigma_max to sigma_min, and a final 0 (float64)."""
    i = torch.arange(n, dtype=torch.float64)
    lv = (sigma_max ** (1 / rho) + i / (n - 1) * (sigma_min ** (1 / rho) - sigma_max ** (1 / rho))) ** rho
    return torch.cat([lv, torch.zeros(1, dtype=torch.float64)])


class KModel:
    """k-diffusion's denoiser convention, `model(x, sigma * s_in)`, around Gaussian."""

    def __init__(self):
        self.net = Gaussian()

    def __call__(self, x, sigma, **kwargs):
        return self.net(x, sigma.reshape(-1, 1))
