"""Peer benchmark: scoreflow against k-diffusion on PyTorch, same models, same grid, same run.

What it does (docs/performance.md has the figures and the commands):

1. Builds the PyTorch twins of scoreflow's models: the exact Gaussian-mixture denoiser
   (scoreflow's `builtin:gmm8`) and scoreflow's MLP and U-Net, whose weights it loads from a
   scoreflow checkpoint with strict name and shape matching, so the layers, widths and parameter
   count are those of the Rust network (both counts are printed).
2. Checks that the two are the same model and that scoreflow's samplers are the published
   algorithms: k-diffusion's samplers (`CHECKS`; the stochastic ones given scoreflow's Brownian
   paths, rebuilt here by `ScoreflowNoise`) and diffusers' DDPM and DDIM schedulers
   (`DIFFUSERS_CHECKS`) and `scoreflow sample` start from the same noise file on the same Karras
   grid; the final samples must agree within float32 tolerance.
3. Times, in the same run: `scoreflow bench` (its own medians, synchronized; run first) and k-diffusion's
   samplers around the PyTorch twin, eager and under torch.compile (and, on CUDA,
   torch.compile(mode="reduce-overhead"), i.e. CUDA graphs), warm-up first, median of reps,
   synchronizing before every clock read. Prints the table and writes peers.json.
4. With --train: times `scoreflow bench-train` on those training configs and then the same
   training step (EDM loss, Adam, clipping, EMA) in PyTorch on a twin of the same network,
   eager, with the fused optimizer kernels, and under torch.compile; `train_rows` in peers.json.

k-diffusion's package `__init__` imports heavy training dependencies, so only its
`k_diffusion/sampling.py` is loaded, by file path; where its `utils.py` cannot be imported (no
torchvision, say) the one helper sampling.py takes from it, `append_dims`, is provided here.
"""

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
import types

import numpy as np
import torch
from torch import nn
import torch.nn.functional as F

import kdiffusion_files  # this folder, next to this script


def fail(msg):
    """Bad input or a failed step: the message on stderr, exit code 2 (as scoreflow's own
    errors). A disagreement between scoreflow and k-diffusion exits with 1 instead."""
    print(f"peers: {msg}", file=sys.stderr)
    sys.exit(2)


# --------------------------------------------------------------------------- k-diffusion


def load_kdiffusion_sampling():
    """k-diffusion's sampling.py, by file path (kdiffusion_files.py)."""
    pkg, root, utils_note = kdiffusion_files.load(fail)
    return pkg.sampling, root, utils_note


def load_diffusers_schedulers(site):
    """diffusers' DDPM, DDIM, score-SDE (VE and VP), UniPC, DEIS, iPNDM, PNDM, singlestep and multistep DPM-Solver, SA-Solver, Karras-VE, LCM and TCD scheduler modules, from `site` (appended to sys.path, so that the
    python's own numpy and torch come first) or the python's own packages; (None, reason) where
    they cannot be imported."""
    if os.path.isdir(site):
        sys.path.append(site)
    try:
        from diffusers.schedulers import scheduling_ddim, scheduling_ddpm, scheduling_deis_multistep, scheduling_ipndm, \
            scheduling_pndm, scheduling_sde_ve, scheduling_unipc_multistep, scheduling_dpmsolver_singlestep, \
            scheduling_dpmsolver_multistep, scheduling_sasolver, scheduling_lcm, \
            scheduling_tcd
        from diffusers.schedulers.deprecated import scheduling_sde_vp, scheduling_karras_ve
        import diffusers
    except Exception as e:  # any import failure means: no diffusers peer
        return None, f"{type(e).__name__}: {e}"
    return ((scheduling_ddpm, scheduling_ddim, scheduling_sde_ve, scheduling_sde_vp, scheduling_unipc_multistep,
             scheduling_deis_multistep, scheduling_ipndm, scheduling_pndm, scheduling_dpmsolver_singlestep,
             scheduling_dpmsolver_multistep, scheduling_sasolver, scheduling_karras_ve, scheduling_lcm,
             scheduling_tcd),
            f"diffusers {diffusers.__version__} from {os.path.dirname(diffusers.__file__)}")


# --------------------------------------------------------------------------- models


class Mixture(nn.Module):
    """Exact denoiser of a Gaussian mixture with per-dimension stds: the posterior mean
    sum_k r_k(x) (mu_k + v_k / (v_k + sigma^2) (x - mu_k)), v_k = std_k^2."""

    def __init__(self, weights, means, stds):
        super().__init__()
        w = torch.tensor(weights, dtype=torch.float64)
        mu = torch.tensor(means, dtype=torch.float64)
        s = torch.tensor(stds, dtype=torch.float64)
        if s.ndim == 1:
            s = s[:, None].expand_as(mu)
        self.register_buffer("log_w", w.log()[None].float())
        self.register_buffer("mu", mu[None].float())
        self.register_buffer("var", (s * s)[None].float())
        self.exact = (w, mu, s)

    def to_float64(self):
        """The same mixture in float64, from the float64 parameters (not the float32 buffers)."""
        w, mu, s = self.exact
        m = Mixture(w.tolist(), mu.tolist(), s.tolist())
        dev = self.mu.device
        m.log_w, m.mu, m.var = (v.to(dev) for v in (w.log()[None], mu[None], (s * s)[None]))
        return m

    def forward(self, x, sigma):
        # k-diffusion passes one sigma per sample, all equal during sampling; use the first (a
        # slice, no host-device synchronization), so that the arithmetic is scoreflow's, which
        # takes one sigma per call.
        v = self.var + sigma.reshape(-1)[:1].reshape(1, 1, 1) ** 2
        diff = x[:, None, :] - self.mu
        d = x.shape[-1]
        lj = self.log_w - 0.5 * ((diff**2 / v).sum(-1) + v.log().sum(-1) + d * math.log(2 * math.pi))
        r = lj.softmax(-1)[..., None]
        return (r * (self.mu + diff * (self.var / v))).sum(1)


def gmm8():
    """scoreflow's builtin:gmm8: 8 equal modes of std 0.2 on a circle of radius 2."""
    a = [2 * math.pi * k / 8 for k in range(8)]
    return Mixture([1 / 8] * 8, [[2 * math.cos(t), 2 * math.sin(t)] for t in a], [0.2] * 8)


def gn(c):
    """Group norm with the most groups that divide c, at most min(32, c / 4) (as src/nn.rs)."""
    g = max(1, min(32, c // 4))
    while c % g:
        g -= 1
    return nn.GroupNorm(g, c, eps=1e-5)


class NoiseEmbedding(nn.Module):
    def __init__(self, nf, dim, classes):
        super().__init__()
        self.register_buffer("fourier_freqs", torch.zeros(nf))
        self.emb1 = nn.Linear(2 * nf, dim)
        self.emb2 = nn.Linear(dim, dim)
        if classes > 0:
            self.class_ = nn.Embedding(classes + 1, dim)

    def forward(self, c_noise, labels):
        arg = c_noise[:, None] * self.fourier_freqs[None] * (2 * math.pi)
        e = self.emb2(F.silu(self.emb1(torch.cat([arg.sin(), arg.cos()], 1))))
        if labels is not None and hasattr(self, "class_"):
            e = e + self.class_(labels)
        return e


class MlpBlock(nn.Module):
    def __init__(self, hidden):
        super().__init__()
        self.fc1, self.temb, self.fc2 = (nn.Linear(hidden, hidden) for _ in range(3))

    def forward(self, h, temb):
        return h + self.fc2(F.silu(self.fc1(F.silu(h)) + self.temb(temb)))


class Mlp(NoiseEmbedding):
    """scoreflow's residual MLP (src/nn.rs): h = W_in x + E, then `depth` blocks
    h <- h + W2 silu(W1 silu(h) + T_i E), then W_out silu(h), E = silu(noise embedding); the
    embedding's layers sit at the top level, as in the Rust network."""

    def __init__(self, shape, hidden, depth, fourier_features, classes, **_):
        super().__init__(fourier_features, hidden, classes)
        self.in_ = nn.Linear(shape[0], hidden)
        self.depth = depth
        for i in range(depth):
            self.add_module(f"block{i}", MlpBlock(hidden))
        self.out = nn.Linear(hidden, shape[0])

    def forward(self, x, c_noise, labels):
        temb = F.silu(NoiseEmbedding.forward(self, c_noise, labels))
        h = self.in_(x) + temb
        for i in range(self.depth):
            h = getattr(self, f"block{i}")(h, temb)
        return self.out(F.silu(h))


class ResBlock(nn.Module):
    def __init__(self, i, o, emb):
        super().__init__()
        self.norm1 = gn(i)
        self.conv1 = nn.Conv2d(i, o, 3, padding=1)
        self.temb = nn.Linear(emb, o)
        self.norm2 = gn(o)
        self.conv2 = nn.Conv2d(o, o, 3, padding=1)
        self.skip = nn.Conv2d(i, o, 1) if i != o else None

    def forward(self, x, emb):
        h = self.conv1(F.silu(self.norm1(x)))
        h = h + self.temb(emb)[:, :, None, None]
        h = self.conv2(F.silu(self.norm2(h)))
        return (self.skip(x) if self.skip is not None else x) + h


class Attention(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.norm = gn(c)
        self.qkv = nn.Conv2d(c, 3 * c, 1)
        self.proj = nn.Conv2d(c, c, 1)

    def forward(self, x):
        n, c, h, w = x.shape
        q, k, v = self.qkv(self.norm(x)).reshape(n, 3, c, h * w).unbind(1)
        att = (q.transpose(1, 2) @ k / math.sqrt(c)).softmax(-1)
        return x + self.proj((v @ att.transpose(1, 2)).reshape(n, c, h, w))


class Unet(nn.Module):
    """scoreflow's U-Net (src/nn.rs), layer for layer, with the same parameter names (but for
    `in` and `class`, Python keywords, which are `in_` and `class_` here)."""

    def __init__(self, shape, channels, channel_mult, blocks, attn_resolutions, fourier_features, classes, **_):
        super().__init__()
        c_in, res = shape[0], shape[1]
        ch, e = channels, 4 * channels
        self.emb = NoiseEmbedding(fourier_features, e, classes)
        self.in_ = nn.Conv2d(c_in, ch, 3, padding=1)
        self.down, skips, cur = [], [ch], ch
        for lvl, m in enumerate(channel_mult):
            for b in range(blocks):
                o = ch * m
                self.add_module(f"down{lvl}_{b}", ResBlock(cur, o, e))
                at = f"down{lvl}_{b}_attn" if res in attn_resolutions else None
                if at:
                    self.add_module(at, Attention(o))
                self.down.append(("res", f"down{lvl}_{b}", at))
                cur = o
                skips.append(cur)
            if lvl + 1 < len(channel_mult):
                self.add_module(f"down{lvl}_pool", nn.Conv2d(cur, cur, 3, stride=2, padding=1))
                self.down.append(("down", f"down{lvl}_pool", None))
                skips.append(cur)
                res //= 2
        self.mid1, self.mid_attn, self.mid2 = ResBlock(cur, cur, e), Attention(cur), ResBlock(cur, cur, e)
        self.up = []
        for lvl in reversed(range(len(channel_mult))):
            m = channel_mult[lvl]
            for b in range(blocks + 1):
                o = ch * m
                s = skips.pop()
                self.add_module(f"up{lvl}_{b}", ResBlock(cur + s, o, e))
                at = f"up{lvl}_{b}_attn" if res in attn_resolutions else None
                if at:
                    self.add_module(at, Attention(o))
                self.up.append(("res", f"up{lvl}_{b}", at))
                cur = o
            if lvl > 0:
                self.add_module(f"up{lvl}_upsample", nn.Conv2d(cur, cur, 3, padding=1))
                self.up.append(("up", f"up{lvl}_upsample", None))
                res *= 2
        self.out_norm = gn(cur)
        self.out = nn.Conv2d(cur, c_in, 3, padding=1)

    def forward(self, x, c_noise, labels):
        emb = F.silu(self.emb(c_noise, labels))
        h = self.in_(x)
        skips = [h]
        for kind, name, at in self.down:
            layer = getattr(self, name)
            h = layer(h, emb) if kind == "res" else layer(h)
            if at:
                h = getattr(self, at)(h)
            skips.append(h)
        h = self.mid2(self.mid_attn(self.mid1(h, emb)), emb)
        for kind, name, at in self.up:
            layer = getattr(self, name)
            if kind == "res":
                h = layer(torch.cat([h, skips.pop()], 1), emb)
                if at:
                    h = getattr(self, at)(h)
            else:
                h = layer(F.interpolate(h, scale_factor=2, mode="nearest"))
        return self.out(F.silu(self.out_norm(h)))


class EdmPrecond(nn.Module):
    """D(x; sigma) = c_skip x + c_out F(c_in x; c_noise), EDM's coefficients (Karras et al. 2022,
    Table 1); an unconditional call of a conditional net uses the "no class" label."""

    def __init__(self, net, sigma_data, classes):
        super().__init__()
        self.net, self.sigma_data, self.classes = net, sigma_data, classes

    def forward(self, x, sigma, labels=None):
        sd2 = self.sigma_data**2
        s = sigma.reshape((-1,) + (1,) * (x.ndim - 1)).float()
        c_skip = sd2 / (s**2 + sd2)
        c_out = s * self.sigma_data * (s**2 + sd2).rsqrt()
        c_in = (s**2 + sd2).rsqrt()
        if labels is None and self.classes > 0:
            labels = torch.full((x.shape[0],), self.classes, dtype=torch.long, device=x.device)
        f = self.net(x * c_in, s.flatten().log() / 4, labels)
        return c_skip * x + c_out * f


def backbone(bb, shape, classes):
    """The PyTorch twin of a scoreflow backbone config (`model.backbone`)."""
    kw = {k: v for k, v in bb.items() if k != "kind"}
    return {"mlp": Mlp, "unet": Unet}[bb["kind"]](shape, classes=classes, **kw)


def read_safetensors(path):
    """Tensors and metadata of a safetensors file (the `safetensors` package where it exists)."""
    try:
        from safetensors import safe_open

        with safe_open(path, framework="pt") as f:
            return {k: f.get_tensor(k) for k in f.keys()}, f.metadata() or {}
    except ImportError:
        with open(path, "rb") as f:
            n = int.from_bytes(f.read(8), "little")
            header = json.loads(f.read(n))
            data = f.read()
        meta = header.pop("__metadata__", {})
        out = {}
        for k, v in header.items():
            assert v["dtype"] == "F32", k
            a, b = v["data_offsets"]
            out[k] = torch.from_numpy(np.frombuffer(data[a:b], dtype="<f4").copy()).reshape(v["shape"])
        return out, meta


def model_from_checkpoint(path):
    """The EDM-preconditioned PyTorch twin (MLP or U-Net) of a scoreflow checkpoint, with its EMA
    weights."""
    try:
        tensors, meta = read_safetensors(path)
        cfg = json.loads(meta["config"])
    except (OSError, ValueError, KeyError) as e:
        fail(f"cannot read the scoreflow checkpoint {path}: {e}")
    shape = json.loads(meta["shape"])
    classes = int(meta["num_classes"])
    bb, pc = cfg["model"]["backbone"], cfg["model"]["precond"]
    if bb["kind"] not in ("mlp", "unet") or pc["kind"] != "edm":
        fail(f"{path} is not an EDM-preconditioned MLP or U-Net")
    net = backbone(bb, shape, classes)
    rename = lambda k: ("in_" + k[2:] if k.startswith("in.") else k).replace(".class.", ".class_.")
    ema = {rename(k[4:]): v for k, v in tensors.items() if k.startswith("ema.")}
    net.load_state_dict(ema, strict=True)  # the same names and shapes as the Rust network
    n_rust = sum(v.numel() for k, v in ema.items() if not k.endswith("fourier_freqs"))
    n_torch = sum(p.numel() for p in net.parameters())
    return EdmPrecond(net, pc.get("sigma_data", 0.5), classes).eval(), shape, n_rust, n_torch


# --------------------------------------------------------------------------- timing


def sync(dev):
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def median_time(fn, dev, reps, warmup):
    for _ in range(warmup):
        fn()
    sync(dev)
    ts = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        sync(dev)
        ts.append(time.perf_counter() - t)
    return statistics.median(ts)


# scoreflow sampler -> k-diffusion function and keyword arguments, for the timed runs. dpmpp-3m
# is the eta = 0 case of k-diffusion's DPM-Solver++(3M) SDE (a noise sampler that is never called
# is passed so that no Brownian tree is built).
KD_NAMES = {
    "euler": ("sample_euler", {}),
    "heun": ("sample_heun", {}),
    "dpmpp-2m": ("sample_dpmpp_2m", {}),
    "dpm2": ("sample_dpm_2", {}),
    "lms": ("sample_lms", {}),
    "dpmpp-3m": ("sample_dpmpp_3m_sde", {"eta": 0.0, "noise_sampler": lambda s, t: None}),
}


def kd_sampler(sampling, name):
    fn, kw = KD_NAMES[name]
    f = getattr(sampling, fn)
    return lambda model, x, sigmas: f(model, x, sigmas, disable=True, **kw)


# --------------------------------------------------------------------------- scoreflow's noise

# Noise streams of solvers/src/noise.rs.
STREAM_STEP, STREAM_CHURN, STREAM_TIME, STREAM_CORRECTOR = 1, 2, 3, 16
_GAMMA = np.uint64(0x9E3779B97F4A7C15)


def _fmix64(z):
    """SplitMix64's output function on a uint64 array (wrapping arithmetic)."""
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def _mix(x):
    return _fmix64(np.atleast_1d(np.asarray(x, dtype=np.uint64)) + _GAMMA)


class ScoreflowNoise:
    """The per-sample Brownian trees of `scoreflow sample --seed SEED`, written again from their
    description in solvers/src/noise.rs and docs/conventions.md: sample k's key is
    mix(mix(seed) ^ mix(k + 0x5EED)); W on [0, span] by Brownian-bridge bisection down to
    1e-9 max(span, 1), every node's normals Box-Muller pairs of SplitMix64 positions keyed by the
    node; W(t) linear between the last two nodes; negative times on a second tree. A sampler's
    standard normal for the step from sigma to sigma' is (W(sigma) - W(sigma')) / sqrt(sigma - sigma').
    Passing these to k-diffusion makes its stochastic samplers comparable with scoreflow's."""

    def __init__(self, seed, n, shape, span):
        self.keys = _mix(_mix(seed) ^ _mix(np.arange(n, dtype=np.uint64) + np.uint64(0x5EED)))
        self.n, self.shape, self.d = n, list(shape), int(np.prod(shape))
        self.span, self.tol = span, 1e-9 * max(span, 1.0)

    def with_span(self, span):
        """The same samples' paths on [0, span]."""
        other = ScoreflowNoise.__new__(ScoreflowNoise)
        other.__dict__.update(self.__dict__)
        other.span, other.tol = span, 1e-9 * max(span, 1.0)
        return other

    def walk(self, t):
        a, b = 0.0, self.span
        ca, cb, branches = [0.0], [math.sqrt(self.span)], []
        while b - a > self.tol and a < t < b:
            m, sd = 0.5 * (a + b), math.sqrt(0.25 * (b - a))
            ca.append(0.0)
            cb.append(0.0)
            cm = [0.5 * (x + y) for x, y in zip(ca, cb)]
            cm[-1] = sd
            if t < m:
                b, cb = m, cm
                branches.append(1)
            else:
                a, ca = m, cm
                branches.append(2)
        f = min(max((t - a) / (b - a), 0.0), 1.0) if b > a else 0.0
        return branches, [x + f * (y - x) for x, y in zip(ca, cb)]

    def values(self, stream, t):
        if t < 0:
            return self.values(stream ^ 0x4E47_0000_0000_0000, -t)
        t = min(t, self.span)
        out = np.zeros((self.n, self.d))
        if t <= 0:
            return out
        branches, c = self.walk(t)
        key = _mix(self.keys ^ _mix(stream))
        nodes, node = [_mix(key ^ np.uint64(0xE4D))], _mix(key ^ np.uint64(0x7EE))
        for br in branches:
            nodes.append(node)
            node = _mix(node ^ np.uint64(br))
        p = np.arange((self.d + 1) // 2, dtype=np.uint64)
        for k, ci in zip(nodes, c):
            b1 = _fmix64(k[:, None] + _GAMMA * (np.uint64(2) * p + np.uint64(1)))
            b2 = _fmix64(k[:, None] + _GAMMA * (np.uint64(2) * p + np.uint64(2)))
            u1 = ((b1 >> np.uint64(11)).astype(np.float64) + 1.0) * 2.0**-53
            u2 = (b2 >> np.uint64(11)).astype(np.float64) * 2.0**-53
            r, th = np.sqrt(-2.0 * np.log(u1)), 2.0 * math.pi * u2
            z = np.stack([r * np.cos(th), r * np.sin(th)], -1).reshape(self.n, -1)[:, : self.d]
            out += ci * z
        return out

    def standard(self, stream, a, b):
        """(W(b) - W(a)) / sqrt(|b - a|), shape [n, *shape], float64."""
        v = (self.values(stream, b) - self.values(stream, a)) / math.sqrt(abs(b - a))
        return torch.from_numpy(v.reshape([self.n] + self.shape))


def karras_f64(steps, sigma_min=0.002, sigma_max=80.0, rho=7.0):
    """scoreflow's Karras grid in float64 (solvers/src/grid.rs), ending in 0."""
    a, b = sigma_max ** (1.0 / rho), sigma_min ** (1.0 / rho)
    return [(a + (i / (steps - 1) if steps > 1 else 0.0) * (b - a)) ** rho for i in range(steps)] + [0.0]


class _TorchWithNoise(types.ModuleType):
    """The torch module with `randn_like` replaced (for k-diffusion's churn, which draws with it)."""

    def __init__(self, draw):
        super().__init__("torch")
        self._draw = draw

    def __getattr__(self, name):
        return getattr(torch, name)

    def randn_like(self, x, *args, **kwargs):
        return self._draw(x)


# Samples compared with k-diffusion: scoreflow flags, then a function running k-diffusion on
# (sampling module, model, x, float32 sigmas, float64 grid, ScoreflowNoise). The stochastic ones
# get scoreflow's noise: through `noise_sampler(sigma, sigma_next)` (called once per step, the
# step found by its sigma), or for EDM churn through `torch.randn_like` (called once per step).
EDM_CHURN = ["--s-churn", "40", "--s-tmin", "0.05", "--s-tmax", "50", "--s-noise", "1.003"]


def _step_noise(grid, noise, stream, like):
    def ns(sigma, sigma_next):
        i = min(range(len(grid)), key=lambda j: abs(grid[j] - float(sigma)))
        return noise.standard(stream, grid[i + 1], grid[i]).to(like.device, like.dtype)
    return ns


def _sde_mid_sigma(sigma, sigma_next, r=0.5):
    """dpmpp-sde's intermediate level exp(-(t + h r)), t = -log sigma, in float64 as scoreflow
    computes it (DpmPpSde::mid_sigma), so that the Brownian path is queried at the same point."""
    t, t_next = -math.log(sigma), -math.log(sigma_next)
    return math.exp(-(t + (t_next - t) * r))


def _dpmpp_sde_noise(r=0.5):
    """k-diffusion's sample_dpmpp_sde (with its `r`) asks for (W(sigma) - W(sigma_x)) / sqrt(|...|)
    with sigma_x the step's end or its intermediate level; the step is found by its sigma, the
    end by comparison with the grid (float32 sigmas come in; the float64 levels are used)."""
    def make(grid, noise, like):
        def ns(sigma, sigma_x):
            i = min(range(len(grid)), key=lambda j: abs(grid[j] - float(sigma)))
            nxt = grid[i + 1]
            lo = nxt if abs(float(sigma_x) - nxt) <= 1e-5 * nxt else _sde_mid_sigma(grid[i], nxt, r)
            return noise.standard(STREAM_STEP, lo, grid[i]).to(like.device, like.dtype)
        return ns
    return make


def _kd_dpm_solver(order, eta=0.0, s_noise=1.0):
    """scoreflow's `dpm-solver` through k-diffusion's `DPMSolver` step functions
    (`dpm_solver_{1,2,3}_step`, times t = -log sigma in float64) on every interval of the grid
    down to its last nonzero level, each ancestral as in `DPMSolver.dpm_solver_fast` (sigma_down
    from `get_ancestral_step`, not below the last level; noise sigma_up s_noise from
    `noise_sampler(sigma, sigma_next)`), then D at the last level."""

    def run(sampling, model, x, sigmas, grid, noise):
        solver = sampling.DPMSolver(model)
        step = {1: solver.dpm_solver_1_step, 2: solver.dpm_solver_2_step, 3: solver.dpm_solver_3_step}[order]
        ns = _step_noise(grid, noise, STREAM_STEP, x)
        f64 = lambda v: torch.tensor(v, dtype=torch.float64)
        t_end = f64(-math.log(grid[-2]))
        for i in range(len(grid) - 2):
            t, t_next = f64(-math.log(grid[i])), f64(-math.log(grid[i + 1]))
            if eta:
                sd, su = sampling.get_ancestral_step(solver.sigma(t), solver.sigma(t_next), eta)
                t_next_ = torch.minimum(t_end, solver.t(sd))
                su = (solver.sigma(t_next) ** 2 - solver.sigma(t_next_) ** 2) ** 0.5
            else:
                t_next_, su = t_next, 0.0
            x, _ = step(x, t, t_next_)
            x = x + su * s_noise * ns(grid[i], grid[i + 1])
        return model(x, torch.full([x.shape[0]], grid[-2], dtype=x.dtype))
    return run


def _kd_dpm_fast(eta=0.0, s_noise=1.0):
    """k-diffusion's `DPMSolver.dpm_solver_fast` (what `sample_dpm_fast` calls) from the grid's
    first level to its last nonzero one with the grid's steps less one as its budget of
    evaluations, times in float64 (the default dtype is float64 during the call, so that its
    `torch.linspace` of times is float64 as scoreflow's), the noise of a step from t to t_next
    scoreflow's on [sigma(t_next), sigma(t)]; then D at the last level."""

    def run(sampling, model, x, sigmas, grid, noise):
        solver = sampling.DPMSolver(model)
        ns = lambda sigma, sigma_next: noise.standard(STREAM_STEP, float(sigma_next), float(sigma)).to(x.device, x.dtype)
        t0 = torch.tensor(-math.log(grid[0]), dtype=torch.float64)
        t1 = torch.tensor(-math.log(grid[-2]), dtype=torch.float64)
        saved = torch.get_default_dtype()
        torch.set_default_dtype(torch.float64)
        try:
            x = solver.dpm_solver_fast(x, t0, t1, len(grid) - 2, eta=eta, s_noise=s_noise, noise_sampler=ns)
        finally:
            torch.set_default_dtype(saved)
        return model(x, torch.full([x.shape[0]], grid[-2], dtype=x.dtype))
    return run


# Checks run in float64 on both sides, on the exact mixture only (`--dtype float64`; the twin
# rebuilt from its float64 parameters; scoreflow's networks keep their float32 weights and
# arithmetic, so the networks are skipped):
# with noise, dpm-adaptive's step sizes follow its error estimates continuously, and early on,
# where the pair of solutions agrees to a few float32 ulps, float32 rounding (which differs
# between any two implementations) moves the steps and with them the Brownian increments, which
# are only Hölder-1/2 continuous in the step ends. rk45 (scipy's RK45 at rtol 1e-5) in float32
# sees rounding noise in its error estimate near sigma_min, where x - D cancels (SCIPY_CHECKS).
FLOAT64_CHECKS = {"dpm-adaptive-eta0.5", "rk45-float64"}

# Checks run only where --check-samplers names them (expected to disagree: contrasts).
OPT_IN_CHECKS = {"dpmpp-3m-diffusers-lower-final"}

# The checks with PNDM's Runge-Kutta start-up, which diffusers runs only from 4 steps on.
PRK_CHECKS = {"pndm", "pndm-smax2"}


def _kd_dpm_adaptive(eta=0.0, s_noise=1.0, **kw):
    """k-diffusion's `DPMSolver.dpm_solver_adaptive` (what `sample_dpm_adaptive` calls) from the
    grid's first level to its last nonzero one, times in float64 as scoreflow computes them,
    the noise of an accepted step from s to t scoreflow's on [sigma(t), sigma(s)]; then D at the
    last level."""

    def run(sampling, model, x, sigmas, grid, noise):
        solver = sampling.DPMSolver(model)
        ns = lambda sigma, sigma_next: noise.standard(STREAM_STEP, float(sigma_next), float(sigma)).to(x.device, x.dtype)
        t0 = torch.tensor(-math.log(grid[0]), dtype=torch.float64)
        t1 = torch.tensor(-math.log(grid[-2]), dtype=torch.float64)
        x, _ = solver.dpm_solver_adaptive(x, t0, t1, eta=eta, s_noise=s_noise, noise_sampler=ns, **kw)
        return model(x, torch.full([x.shape[0]], grid[-2], dtype=x.dtype))
    return run


def _kd_noisy(fn, noise=None, **kw):
    """k-diffusion's `sampling.<fn>` with keyword arguments `kw`, given scoreflow's noise as its
    `noise_sampler` (the step stream by default; `noise` builds another from (grid, noise, x))."""

    def run(sampling, model, x, sigmas, grid, paths):
        ns = noise(grid, paths, x) if noise else _step_noise(grid, paths, STREAM_STEP, x)
        return getattr(sampling, fn)(model, x, sigmas, disable=True, noise_sampler=ns, **kw)
    return run


def _kd_churn(s_churn=40.0, s_tmin=0.05, s_tmax=50.0, s_noise=1.003, fn="sample_heun"):
    """k-diffusion's `fn` (sample_heun, sample_euler or sample_dpm_2) with EDM's churn, its
    torch.randn_like (called once per step) returning scoreflow's churn noise (STREAM_CHURN) of
    that step."""

    def run(sampling, model, x, sigmas, grid, noise):
        step = [0]

        def draw(like):
            i = step[0]
            step[0] += 1
            return noise.standard(STREAM_CHURN, grid[i + 1], grid[i]).to(like.device, like.dtype)

        saved = sampling.torch
        sampling.torch = _TorchWithNoise(draw)
        try:
            return getattr(sampling, fn)(model, x, sigmas, disable=True, s_churn=s_churn, s_tmin=s_tmin,
                                         s_tmax=s_tmax, s_noise=s_noise)
        finally:
            sampling.torch = saved

    return run


def _diffusers_run(kind, eta=0.0, variance="fixed_small"):
    """diffusers' DDPMScheduler or DDIMScheduler on scoreflow's grid: N train timesteps with
    alphas_cumprod[t] = 1 / (1 + sigma_{N-1-t}^2), stepped t = N-1 .. 0 (t - 1 = -1 is
    alpha_bar = 1, sigma = 0), clip_sample off, the model as an eps-predictor in the VP variable
    x_vp = x / sqrt(1 + sigma^2), and scoreflow's step noise (STREAM_STEP) as DDPM's
    randn_tensor or DDIM's variance_noise."""

    def run(diffusers, model, x, sigmas, grid, noise):
        ddpm_mod, ddim_mod = diffusers[:2]
        n = len(grid) - 1
        a = torch.tensor([1.0 / (1.0 + grid[n - 1 - t] ** 2) for t in range(n)], dtype=torch.float64)
        if kind == "ddpm":
            sch = ddpm_mod.DDPMScheduler(num_train_timesteps=n, clip_sample=False, variance_type=variance,
                                         prediction_type="epsilon", timestep_spacing="leading", steps_offset=0)
        else:
            sch = ddim_mod.DDIMScheduler(num_train_timesteps=n, clip_sample=False, set_alpha_to_one=True,
                                         prediction_type="epsilon", timestep_spacing="leading", steps_offset=0)
        sch.alphas_cumprod = a
        sch.set_timesteps(n)
        ones = x.new_ones([x.shape[0]])
        xv = x / math.sqrt(1.0 + grid[0] ** 2)
        saved = ddpm_mod.randn_tensor
        try:
            for t in [int(t) for t in sch.timesteps]:
                i = n - 1 - t
                sig = grid[i]
                xs = xv * math.sqrt(1.0 + sig * sig)
                eps = (xs - model(xs, ones * sig)) / sig
                z = (noise.standard(STREAM_STEP, grid[i + 1], sig) if grid[i + 1] > 0
                     else torch.zeros(noise.n, *noise.shape, dtype=torch.float64)).to(x.device, x.dtype)
                if kind == "ddpm":
                    ddpm_mod.randn_tensor = lambda *args, _z=z, **kw: _z
                    xv = sch.step(eps, t, xv).prev_sample
                else:
                    xv = sch.step(eps, t, xv, eta=eta, variance_noise=z).prev_sample
        finally:
            ddpm_mod.randn_tensor = saved
        return xv

    return run


def _diffusers_pc(snr, corrector_steps):
    """diffusers' ScoreSdeVeScheduler (Song et al.'s predictor-corrector for VE, as score_sde's
    pc_sampler and diffusers' ScoreSdeVePipeline run it): at each level `corrector_steps`
    `step_correct` (Langevin), then `step_pred` (reverse diffusion); the last level's predictor
    mean is the result (score_sde's final denoising). Its `discrete_sigmas` are set to scoreflow's
    grid (EDM SDE: s = 1, the VE formulas), step_pred is given the timestep (k + 1/2) / (N - 1)
    that indexes level k, the score is (D(x; sigma) - x) / sigma^2 at the level's sigma, and
    randn_tensor returns scoreflow's corrector (STREAM_CORRECTOR + j) and predictor (STREAM_STEP)
    noise."""

    def run(diffusers, model, x, sigmas, grid, noise):
        sde_mod = diffusers[2]
        n = len(grid) - 1
        sch = sde_mod.ScoreSdeVeScheduler(num_train_timesteps=n, snr=snr, sigma_min=grid[n - 1], sigma_max=grid[0])
        sch.set_timesteps(n)
        sch.discrete_sigmas = torch.tensor(grid[:n][::-1], dtype=torch.float64)
        ones = x.new_ones([x.shape[0]])
        saved = sde_mod.randn_tensor
        draws = []
        sde_mod.randn_tensor = lambda *args, **kw: draws.pop(0)
        try:
            for i in range(n):
                sig = grid[i]

                def score(y):
                    return (model(y, ones * sig) - y) / (sig * sig)

                def z(stream):
                    return noise.standard(stream, grid[i + 1], sig).to(x.device, x.dtype)

                for j in range(corrector_steps):
                    draws.append(z(STREAM_CORRECTOR + j))
                    x = sch.step_correct(score(x), x).prev_sample.to(x.dtype)
                draws.append(z(STREAM_STEP) if grid[i + 1] > 0 else torch.zeros_like(x))
                out = sch.step_pred(score(x), (n - 1 - i + 0.5) / (n - 1), x)
                x, mean = out.prev_sample.to(x.dtype), out.prev_sample_mean.to(x.dtype)
        finally:
            sde_mod.randn_tensor = saved
        return mean

    return run


# scoreflow's VP SDE (linear beta, 0.1 to 20; solvers/src/sde.rs).
VP_BETA_MIN, VP_BETA_MAX = 0.1, 20.0


def _vp_integral(t):
    return 0.5 * (VP_BETA_MAX - VP_BETA_MIN) * t * t + VP_BETA_MIN * t


def _vp_sigma(t):
    return math.sqrt(math.expm1(_vp_integral(t)))


def _vp_time(sigma):
    b = math.log1p(sigma * sigma)
    return 2.0 * b / (VP_BETA_MIN + math.sqrt(VP_BETA_MIN**2 + 2.0 * (VP_BETA_MAX - VP_BETA_MIN) * b))


# Euler-Maruyama is compared on the VP SDE, whose Euler-Maruyama diffusers' ScoreSdeVpScheduler
# takes with steps of dt = 1 / EM_L: scoreflow's uniform-t grid from t = 1 down to
# 1 - (steps - 1) / EM_L has exactly that step.
EM_L = 20


def _em_flags(steps):
    t_lo = 1.0 - (steps - 1) / EM_L
    return ["--solver", "euler-maruyama", "--sde", "vp", "--grid", "uniform-t",
            "--sigma-min", repr(_vp_sigma(t_lo)), "--sigma-max", repr(_vp_sigma(1.0))]


def _diffusers_em(diffusers, model, x, sigmas, grid, noise):
    """diffusers' ScoreSdeVpScheduler.step_pred (score_sde's EulerMaruyamaPredictor on the VP SDE)
    for the first steps - 1 steps of scoreflow's uniform-t grid (dt = 1 / EM_L, the score given as
    -score * std as the scheduler expects), then scoreflow's last step, D(x / s; sigma) (score_sde's
    final denoising). The noise: scoreflow's time-indexed stream (STREAM_TIME), its Brownian path
    on [0, span] for the VP span, as randn_tensor. `x` is the start scaled by 80 (the Karras
    sigma_max the other checks use), so z = x / 80."""
    vp_mod = diffusers[3]
    n = len(grid) - 1
    s_max, s_min = _vp_sigma(1.0), _vp_sigma(1.0 - (n - 1) / EM_L)
    t_hi, t_lo = _vp_time(s_max), _vp_time(s_min)
    vgrid = [_vp_sigma(t_hi + (i / (n - 1)) * (t_lo - t_hi)) for i in range(n)]
    times = [_vp_time(v) for v in vgrid]
    paths = noise.with_span(max(vgrid[0], times[0], 1.0) * 1.001 + 1e-3)
    sch = vp_mod.ScoreSdeVpScheduler(beta_min=VP_BETA_MIN, beta_max=VP_BETA_MAX)
    sch.set_timesteps(EM_L)
    b = x.shape[0]
    s_of = lambda t: math.exp(-0.5 * _vp_integral(t))
    xv = (x / 80.0) * vgrid[0] * s_of(times[0])
    saved = vp_mod.randn_tensor
    try:
        for i in range(n - 1):
            t, sig = times[i], vgrid[i]
            s = s_of(t)
            xh = xv / s
            score = (model(xh, x.new_ones([b]) * sig) - xh) / (s * sig * sig)
            tt = torch.full([b], t, dtype=torch.float64, device=x.device)
            std = torch.sqrt(1.0 - torch.exp(2.0 * (-0.25 * tt**2 * (VP_BETA_MAX - VP_BETA_MIN) - 0.5 * tt * VP_BETA_MIN)))
            z = paths.standard(STREAM_TIME, times[i + 1], t).to(x.device, x.dtype)
            vp_mod.randn_tensor = lambda *args, _z=z, **kw: _z
            xv, _ = sch.step_pred(-score * std.view([b] + [1] * (x.dim() - 1)), xv, tt)
            xv = xv.to(x.dtype)
    finally:
        vp_mod.randn_tensor = saved
    t, sig = times[n - 1], vgrid[n - 1]
    return model(xv / s_of(t), x.new_ones([b]) * sig)


def _x0_scheduler_on_grid(sch, model, x, grid, last_d):
    """Run a diffusers multistep scheduler built with prediction_type="sample" on scoreflow's grid:
    its sigmas set to the grid (float64), timesteps N-1 .. 0, the model's D given as the "sample"
    prediction in the VP variable x_vp = x / sqrt(1 + sigma^2). With `last_d`, the last step is
    not taken and the last evaluation's D is the result (scoreflow's step to sigma = 0)."""
    n = len(grid) - 1
    sch.set_timesteps(n)
    sch.sigmas = torch.tensor(grid, dtype=torch.float64)
    sch.timesteps = torch.arange(n - 1, -1, -1, dtype=torch.int64)
    sch.num_inference_steps = n
    sch.set_begin_index(0)
    ones = x.new_ones([x.shape[0]])
    xv = x / math.sqrt(1.0 + grid[0] ** 2)
    for i, t in enumerate(sch.timesteps):
        sig = grid[i]
        d = model(xv * math.sqrt(1.0 + sig * sig), ones * sig)
        if i == n - 1 and last_d:
            return d
        xv = sch.step(d, t, xv).prev_sample
    return xv


def _diffusers_unipc(order, solver_type="bh2", corrector=True):
    """diffusers' UniPCMultistepScheduler (predict_x0, lower_order_final, final sigma 0) with its
    sigmas set to scoreflow's grid (float64) and timesteps N-1 .. 0, the model's D given as the
    "sample" prediction in the VP variable x_vp = x / sqrt(1 + sigma^2); without the corrector,
    `disable_corrector` lists every step. With bh1, diffusers' own step to sigma = 0 multiplies
    B(h) = -h = -inf by a zero residual (NaN); that step returns the model's D there, which is
    what it returns with bh2, so the last evaluation's D is taken instead."""

    def run(diffusers, model, x, sigmas, grid, noise):
        n = len(grid) - 1
        sch = diffusers[4].UniPCMultistepScheduler(
            num_train_timesteps=max(n, 2), solver_order=order, solver_type=solver_type, prediction_type="sample",
            predict_x0=True, lower_order_final=True, final_sigmas_type="zero",
            disable_corrector=[] if corrector else list(range(n)))
        return _x0_scheduler_on_grid(sch, model, x, grid, last_d=solver_type == "bh1")

    return run


def _diffusers_deis(order):
    """diffusers' DEISMultistepScheduler (algorithm "deis", solver "logrho", lower_order_final)
    with its sigmas set to scoreflow's grid (float64) and timesteps N-1 .. 0, the model's D as
    the "sample" prediction in x_vp = x / sqrt(1 + sigma^2). diffusers' own grids end at
    sigma_min, not 0, and its update at sigma = 0 needs log 0 (NaN), so it runs the first N - 1
    steps and the result is the last evaluation's D, as scoreflow's step to 0 returns."""

    def run(diffusers, model, x, sigmas, grid, noise):
        sch = diffusers[5].DEISMultistepScheduler(
            num_train_timesteps=max(len(grid) - 1, 2), solver_order=order, prediction_type="sample",
            algorithm_type="deis", solver_type="logrho", lower_order_final=True)
        return _x0_scheduler_on_grid(sch, model, x, grid, last_d=True)

    return run


def _diffusers_ipndm(diffusers, model, x, sigmas, grid, noise):
    """diffusers' IPNDMScheduler (fourth order) on scoreflow's grid: its `betas` and `alphas` (the
    sine and cosine of its angle schedule, i.e. sigma and alpha of x_vp = alpha x0 + sigma eps)
    set to sigma / sqrt(1 + sigma^2) and 1 / sqrt(1 + sigma^2) of the grid levels (0 and 1 at
    the end), the model's D given as the v-prediction alpha eps - sigma_vp D it expects."""
    ipndm_mod = diffusers[6]
    n = len(grid) - 1
    sch = ipndm_mod.IPNDMScheduler(num_train_timesteps=max(n, 2))
    sch.set_timesteps(n)
    sch.betas = torch.tensor([g / math.sqrt(1.0 + g * g) for g in grid], dtype=torch.float64)
    sch.alphas = torch.tensor([1.0 / math.sqrt(1.0 + g * g) for g in grid], dtype=torch.float64)
    sch.timesteps = torch.arange(n, 0, -1, dtype=torch.float64) / n
    sch.set_begin_index(0)
    ones = x.new_ones([x.shape[0]])
    xv = x / math.sqrt(1.0 + grid[0] ** 2)
    for i, t in enumerate(sch.timesteps):
        sig = grid[i]
        alpha, sigma_vp = 1.0 / math.sqrt(1.0 + sig * sig), sig / math.sqrt(1.0 + sig * sig)
        xe = xv / alpha
        d = model(xe, ones * sig)
        v = alpha * (xe - d) / sig - sigma_vp * d
        xv = sch.step(v, t, xv).prev_sample.to(x.dtype)
    return xv


def _diffusers_pndm(skip_prk_steps, sigma_max=None):
    """diffusers' PNDMScheduler (skip_prk_steps False: PNDM's pseudo Runge-Kutta start; True:
    PLMS) on scoreflow's grid: 2N train timesteps, "leading" spacing with step ratio 2, so that
    the inference timesteps 2k are the grid levels, alphas_cumprod[2k] = 1 / (1 + sigma_{N-1-k}^2),
    and the odd timesteps 2k - 1 its PRK midpoints, set to the level halfway in the EDM SDE's time
    (sigma = t, the mean of the two sigmas) as scoreflow takes it; the last step goes to
    final_alpha_cumprod = 1 (sigma = 0). The model is an eps-predictor in x_vp = x / sqrt(1 +
    sigma^2). Needs N >= 4 steps with the PRK start (diffusers' own limit). With `sigma_max`
    (scoreflow given the same `--sigma-max`) the Karras grid is rebuilt from that level: from 80
    the start steps lie where the flow is nearly straight and the midpoint hardly matters."""

    def run(diffusers, model, x, sigmas, grid, noise):
        pndm_mod = diffusers[7]
        n = len(grid) - 1
        if sigma_max is not None:  # the start x = z sigma_max, the grid from sigma_max
            x = x * (sigma_max / grid[0])
            grid = karras_f64(n, sigma_max=sigma_max)
        level = {2 * k: grid[n - 1 - k] for k in range(n)}
        level.update({2 * k - 1: 0.5 * (grid[n - 1 - k] + grid[n - k]) for k in range(1, n)})
        sch = pndm_mod.PNDMScheduler(num_train_timesteps=2 * n, skip_prk_steps=skip_prk_steps,
                                     set_alpha_to_one=True, prediction_type="epsilon",
                                     timestep_spacing="leading", steps_offset=0)
        sch.alphas_cumprod = torch.tensor([1.0 / (1.0 + level[t] ** 2) for t in range(2 * n - 1)] + [1.0],
                                          dtype=torch.float64)
        sch.set_timesteps(n)
        ones = x.new_ones([x.shape[0]])
        xv = x / math.sqrt(1.0 + grid[0] ** 2)
        for t in [int(t) for t in sch.timesteps]:
            sig = level[t]
            xs = xv * math.sqrt(1.0 + sig * sig)
            eps = (xs - model(xs, ones * sig)) / sig
            xv = sch.step(eps, t, xv).prev_sample.to(x.dtype)
        return xv

    return run


def _diffusers_singlestep(order, algorithm_type="dpmsolver++", solver_type="midpoint"):
    """diffusers' DPMSolverSinglestepScheduler (final sigma 0, which forces lower_order_final)
    with its sigmas set to scoreflow's grid (float64) and timesteps N-1 .. 0, the model's D given
    as the "sample" prediction in x_vp = x / sqrt(1 + sigma^2). diffusers refuses a final sigma of
    0 with algorithm_type "dpmsolver" (its step there would multiply sigma_t = 0 by e^h - 1 = inf);
    that first-order step returns the model's D, so there the scheduler is built with
    final_sigmas_type "sigma_min" (the grid replaces its sigmas), runs the first N - 1 steps, and
    the last evaluation's D is the result."""

    def run(diffusers, model, x, sigmas, grid, noise):
        mod = diffusers[8]
        sch = mod.DPMSolverSinglestepScheduler(
            solver_order=order, prediction_type="sample", algorithm_type=algorithm_type,
            solver_type=solver_type, lower_order_final=True,
            final_sigmas_type="sigma_min" if algorithm_type == "dpmsolver" else "zero")
        if algorithm_type != "sde-dpmsolver++":
            return _x0_scheduler_on_grid(sch, model, x, grid, last_d=algorithm_type == "dpmsolver")
        # sde-dpmsolver++ draws a fresh noise every step.
        return _x0_scheduler_with_step_noise(mod, sch, model, x, grid, noise)

    return run


def _x0_scheduler_with_step_noise(mod, sch, model, x, grid, noise, last_d=False):
    """`_x0_scheduler_on_grid` with the scheduler module's randn_tensor returning scoreflow's
    step noise, one draw per step: STREAM_STEP on the step's interval, zeros on the step to 0
    (where sigma_t = 0 multiplies it)."""
    step = [0]

    def draw(shape, **kw):
        i = step[0]
        step[0] += 1
        if grid[i + 1] == 0:
            return torch.zeros(shape, dtype=kw.get("dtype"), device=kw.get("device"))
        return noise.standard(STREAM_STEP, grid[i + 1], grid[i]).to(kw.get("device"), kw.get("dtype"))

    saved = mod.randn_tensor
    mod.randn_tensor = draw
    try:
        return _x0_scheduler_on_grid(sch, model, x, grid, last_d=last_d)
    finally:
        mod.randn_tensor = saved


def _diffusers_multistep(order, solver_type, lower_order_final=False):
    """diffusers' DPMSolverMultistepScheduler (DPM-Solver++, final sigma 0, whose last step is
    first order) with its sigmas set to scoreflow's grid: a second implementation of dpmpp-2m
    (order 2, midpoint) and dpmpp-3m (order 3; its second-order start-up step is the "heun" form,
    as in k-diffusion's sample_dpmpp_3m_sde). Without lower_order_final, which below 15 steps
    would also take the second-to-last step at order 2 (k-diffusion's samplers and dpmpp-2m/3m
    do not; dpm-multistep does, checked with _diffusers_multistep_full); with it, the contrast
    OPT_IN_CHECKS names."""

    def run(diffusers, model, x, sigmas, grid, noise):
        sch = diffusers[9].DPMSolverMultistepScheduler(
            solver_order=order, prediction_type="sample", algorithm_type="dpmsolver++",
            solver_type=solver_type, lower_order_final=lower_order_final, final_sigmas_type="zero")
        return _x0_scheduler_on_grid(sch, model, x, grid, last_d=False)

    return run


def _diffusers_multistep_sde(solver_type):
    """diffusers' DPMSolverMultistepScheduler with algorithm_type "sde-dpmsolver++" (order 2,
    final sigma 0) on scoreflow's grid, its randn_tensor returning scoreflow's step noise
    (STREAM_STEP on the step's interval; zeros on the step to 0, where sigma_t = 0 multiplies
    it): a second implementation of dpmpp-2m-sde at eta 1 besides k-diffusion's."""

    def run(diffusers, model, x, sigmas, grid, noise):
        mod = diffusers[9]
        sch = mod.DPMSolverMultistepScheduler(
            solver_order=2, prediction_type="sample", algorithm_type="sde-dpmsolver++",
            solver_type=solver_type, final_sigmas_type="zero")
        return _x0_scheduler_with_step_noise(mod, sch, model, x, grid, noise)

    return run


def _diffusers_multistep_full(order, algorithm_type, solver_type="midpoint"):
    """diffusers' DPMSolverMultistepScheduler with any algorithm type (dpm-multistep) on
    scoreflow's grid, the model's D as the "sample" prediction, the SDE types given scoreflow's
    step noise. diffusers refuses a final sigma of 0 for the noise-prediction types "dpmsolver"
    and "sde-dpmsolver" (sigma_t = 0 times e^h - 1 = inf); there the scheduler is built with
    final_sigmas_type "sigma_min" (the grid replaces its sigmas), runs the first N - 1 steps, and
    the last evaluation's D is the result, as scoreflow's step to 0 returns."""

    def run(diffusers, model, x, sigmas, grid, noise):
        mod = diffusers[9]
        eps = algorithm_type in ("dpmsolver", "sde-dpmsolver")
        sch = mod.DPMSolverMultistepScheduler(
            solver_order=order, prediction_type="sample", algorithm_type=algorithm_type,
            solver_type=solver_type, lower_order_final=True,
            final_sigmas_type="sigma_min" if eps else "zero")
        if algorithm_type.startswith("sde-"):
            return _x0_scheduler_with_step_noise(mod, sch, model, x, grid, noise, last_d=eps)
        return _x0_scheduler_on_grid(sch, model, x, grid, last_d=eps)

    return run


def _diffusers_sa_solver(predictor_order=2, corrector_order=2, tau=1.0, s_tmin=None, s_tmax=None):
    """diffusers' SASolverScheduler (data prediction, lower_order_final) with its sigmas set to
    scoreflow's grid (float64) and timesteps N-1 .. 0, the model's D given as the "sample"
    prediction in x_vp = x / sqrt(1 + sigma^2), and its randn_tensor returning scoreflow's step
    noise. Its tau_func gets the timestep t, i.e. the level grid[N-1-t]: tau where s_tmin <= that
    level <= s_tmax (scoreflow's window; None: diffusers' default 200..800 of DDPM's linear
    schedule, as sigmas), else 0. diffusers' update at sigma = 0 needs log 0, so it runs the first
    N - 1 steps (each correcting the one before) and the result is the last evaluation's D, as
    scoreflow's step to 0 returns (the first-order update's limit)."""

    def run(diffusers, model, x, sigmas, grid, noise):
        mod = diffusers[10]
        n = len(grid) - 1
        if s_tmin is None:  # diffusers' default window, timesteps 200 .. 800, as noise levels
            ac = torch.cumprod(1.0 - torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64), 0)
            lo, hi = [math.sqrt((1.0 - ac[t].item()) / ac[t].item()) for t in (200, 800)]
        else:
            lo, hi = s_tmin, s_tmax

        def tau_func(t):
            return tau if lo <= grid[n - 1 - int(t)] <= hi else 0.0

        sch = mod.SASolverScheduler(
            num_train_timesteps=max(n, 2), predictor_order=predictor_order, corrector_order=corrector_order,
            prediction_type="sample", tau_func=tau_func, algorithm_type="data_prediction", lower_order_final=True)
        return _x0_scheduler_with_step_noise(mod, sch, model, x, grid, noise, last_d=True)

    return run


def _diffusers_karras_ve(s_churn=40.0, s_tmin=0.05, s_tmax=50.0, s_noise=1.003):
    """diffusers' (deprecated) KarrasVeScheduler, Karras et al.'s Algorithm 2, driven as its
    KarrasVePipeline does (add_noise_to_input, step, step_correct where sigma_prev > 0) on
    scoreflow's grid levels, the model output being (D - x) / sigma, its randn_tensor returning
    scoreflow's churn noise (STREAM_CHURN) of the step: a third implementation of
    edm-stochastic besides k-diffusion's sample_heun and NVlabs/edm's (pinned) code."""

    def run(diffusers, model, x, sigmas, grid, noise):
        mod = diffusers[11]
        n = len(grid) - 1
        sch = mod.KarrasVeScheduler(sigma_min=grid[n - 1], sigma_max=grid[0], s_noise=s_noise, s_churn=s_churn,
                                    s_min=s_tmin, s_max=s_tmax)
        sch.set_timesteps(n)
        ones = x.new_ones([x.shape[0]])
        step = [0]

        def draw(shape, generator=None, **kw):
            i = step[0]
            return noise.standard(STREAM_CHURN, grid[i + 1], grid[i]).to(x.dtype)

        saved = mod.randn_tensor
        mod.randn_tensor = draw
        try:
            for i in range(n):
                step[0] = i
                sigma, sigma_prev = grid[i], grid[i + 1]
                x_hat, sigma_hat = sch.add_noise_to_input(x, sigma)
                out = sch.step((model(x_hat, ones * sigma_hat) - x_hat) / sigma_hat, sigma_hat, sigma_prev, x_hat)
                if sigma_prev != 0:
                    x_prev = out.prev_sample
                    out = sch.step_correct((model(x_prev, ones * sigma_prev) - x_prev) / sigma_prev, sigma_hat,
                                           sigma_prev, x_hat, x_prev, out.derivative)
                x = out.prev_sample.to(x.dtype)
        finally:
            mod.randn_tensor = saved
        return x

    return run


def _diffusers_lcm(diffusers, model, x, sigmas, grid, noise):
    """diffusers' LCMScheduler (multistep consistency sampling) on scoreflow's grid: N train
    timesteps with alphas_cumprod[t] = 1 / (1 + sigma_{N-1-t}^2), its timesteps set to N-1 .. 0,
    the model's D as the "sample" prediction in x_vp = x / sqrt(1 + sigma^2), the consistency
    boundary scalings (c_skip, c_out) set to (0, 1) (a diffusion model's denoiser is used as the
    consistency function itself), and randn_tensor returning scoreflow's step noise
    (STREAM_STEP) on [sigma', sigma]."""
    mod = diffusers[12]
    n = len(grid) - 1
    sch = mod.LCMScheduler(num_train_timesteps=max(n, 2), clip_sample=False, set_alpha_to_one=True,
                           prediction_type="sample", original_inference_steps=max(n, 2))
    sch.alphas_cumprod = torch.tensor([1.0 / (1.0 + grid[n - 1 - t] ** 2) for t in range(n)], dtype=torch.float64)
    sch.set_timesteps(n, original_inference_steps=max(n, 2))
    sch.timesteps = torch.arange(n - 1, -1, -1, dtype=torch.int64)
    sch.num_inference_steps = n
    sch.set_begin_index(0)
    sch.get_scalings_for_boundary_condition_discrete = lambda timestep: (0.0, 1.0)
    return _vp_sample_steps(mod, sch, model, x / math.sqrt(1.0 + grid[0] ** 2), grid, noise)


def _vp_sample_steps(mod, sch, model, xv, levels, noise, **step_kwargs):
    """Step a diffusers scheduler built with prediction_type="sample" through its timesteps, level
    i (of `levels`, ending in 0) at `sch.timesteps[i]`, in the VP variable x_vp = x / sqrt(1 +
    sigma^2) from `xv`, the model's D given as the prediction, and the scheduler module's
    randn_tensor returning scoreflow's step noise (STREAM_STEP) on [sigma', sigma] (zeros on the
    step to 0)."""
    ones = xv.new_ones([xv.shape[0]])
    saved = mod.randn_tensor
    try:
        for i, t in enumerate(sch.timesteps):
            sig = levels[i]
            z = (noise.standard(STREAM_STEP, levels[i + 1], sig) if levels[i + 1] > 0
                 else torch.zeros(noise.n, *noise.shape, dtype=torch.float64)).to(xv.device, xv.dtype)
            mod.randn_tensor = lambda *args, _z=z, **kw: _z
            d = model(xv * math.sqrt(1.0 + sig * sig), ones * sig)
            xv = sch.step(d, t, xv, **step_kwargs).prev_sample
    finally:
        mod.randn_tensor = saved
    return xv


# TCD is compared on the VP SDE, whose time diffusers' TCDScheduler floors to an integer
# timestep: scoreflow's uniform-t grid on timesteps (of TCD_T) that are multiples of 4, from
# TCD_TOP down, keeps (1 - gamma) t an integer for gamma = 1/4, 1/2, 3/4 (and sigma_max below
# the checks' span of 80).
TCD_T, TCD_TOP = 1000, 920


def _tcd_timesteps(steps):
    gap = 4 * (TCD_TOP // (4 * steps))
    return [TCD_TOP - gap * k for k in range(steps)]


def _tcd_flags(gamma):
    def flags(steps):
        ts = _tcd_timesteps(steps)
        return ["--solver", "tcd", "--gamma", repr(gamma), "--sde", "vp", "--grid", "uniform-t",
                "--sigma-min", repr(_vp_sigma(ts[-1] / TCD_T)), "--sigma-max", repr(_vp_sigma(ts[0] / TCD_T))]

    return flags


def _diffusers_tcd(gamma):
    """diffusers' TCDScheduler (strategic stochastic sampling, its eta = gamma) with
    alphas_cumprod[i] = 1 / (1 + sigma_vp(i / TCD_T)^2) (scoreflow's VP process at timestep i),
    the timesteps of scoreflow's uniform-t grid (_tcd_flags), the model's D as the "sample"
    prediction in x_vp = x / sqrt(1 + sigma^2), and randn_tensor returning scoreflow's step noise
    (STREAM_STEP) on [sigma', sigma]. `x` is the start scaled by 80, so z = x / 80."""

    def run(diffusers, model, x, sigmas, grid, noise):
        mod = diffusers[13]
        n = len(grid) - 1
        ts = _tcd_timesteps(n)
        levels = [_vp_sigma(t / TCD_T) for t in ts] + [0.0]
        paths = noise.with_span(max(levels[0], 1.0) * 1.001 + 1e-3)
        sch = mod.TCDScheduler(num_train_timesteps=TCD_T, prediction_type="sample", clip_sample=False)
        sch.alphas_cumprod = torch.tensor([1.0 / (1.0 + _vp_sigma(i / TCD_T) ** 2) for i in range(TCD_T)],
                                          dtype=torch.float64)
        sch.set_timesteps(n)
        sch.timesteps = torch.tensor(ts, dtype=torch.int64)
        sch.num_inference_steps = n
        sch.set_begin_index(0)
        xv = (x / 80.0) * levels[0] / math.sqrt(1.0 + levels[0] ** 2)
        return _vp_sample_steps(mod, sch, model, xv, levels, paths, eta=gamma)

    return run


# Compared with diffusers (run gets its scheduler modules instead of k-diffusion's sampling
# module); flags may depend on the number of steps.
DIFFUSERS_CHECKS = {
    "ddpm": (["--solver", "ddpm"], _diffusers_run("ddpm")),
    "ddpm-large": (["--solver", "ddpm", "--variance", "large"], _diffusers_run("ddpm", variance="fixed_large")),
    "ddim": (["--solver", "ddim"], _diffusers_run("ddim")),
    "ddim-eta0.5": (["--solver", "ddim", "--eta", "0.5"], _diffusers_run("ddim", eta=0.5)),
    "ddim-eta1": (["--solver", "ddim", "--eta", "1"], _diffusers_run("ddim", eta=1.0)),
    "pc": (["--solver", "pc"], _diffusers_pc(0.16, 1)),
    "pc-c2": (["--solver", "pc", "--snr", "0.1", "--corrector-steps", "2"], _diffusers_pc(0.1, 2)),
    "euler-maruyama": (_em_flags, _diffusers_em),
    "unipc": (["--solver", "unipc"], _diffusers_unipc(2)),
    "unipc-3-bh1": (["--solver", "unipc", "--order", "3", "--solver-type", "bh1"], _diffusers_unipc(3, "bh1")),
    "unipc-4": (["--solver", "unipc", "--order", "4"], _diffusers_unipc(4)),
    "unip-2": (["--solver", "unipc", "--corrector", "false"], _diffusers_unipc(2, corrector=False)),
    "deis": (["--solver", "deis"], _diffusers_deis(3)),
    "deis-2": (["--solver", "deis", "--order", "2"], _diffusers_deis(2)),
    "ipndm": (["--solver", "ipndm"], _diffusers_ipndm),
    "pndm": (["--solver", "pndm"], _diffusers_pndm(False)),
    "pndm-smax2": (["--solver", "pndm", "--sigma-max", "2"], _diffusers_pndm(False, sigma_max=2.0)),
    "plms": (["--solver", "pndm", "--skip-prk-steps", "true"], _diffusers_pndm(True)),
    "dpmpp-2m-diffusers": (["--solver", "dpmpp-2m"], _diffusers_multistep(2, "midpoint")),
    "dpmpp-3m-diffusers": (["--solver", "dpmpp-3m"], _diffusers_multistep(3, "heun")),
    # A contrast, run only where --check-samplers names it (OPT_IN_CHECKS): diffusers' default
    # lower_order_final, which below 15 steps takes the second-to-last step at order 2 where
    # dpmpp-3m takes it at order 3, so they disagree there.
    "dpmpp-3m-diffusers-lower-final": (["--solver", "dpmpp-3m"], _diffusers_multistep(3, "heun", True)),
    "dpmpp-2m-sde-diffusers": (["--solver", "dpmpp-2m-sde"], _diffusers_multistep_sde("midpoint")),
    "dpmpp-2m-sde-heun-diffusers": (["--solver", "dpmpp-2m-sde", "--solver-type", "heun"],
                                    _diffusers_multistep_sde("heun")),
    "dpm-singlestep": (["--solver", "dpm-singlestep"], _diffusers_singlestep(2)),
    "edm-stochastic-karras-ve": (["--solver", "edm-stochastic"] + EDM_CHURN, _diffusers_karras_ve()),
    "edm-stochastic-all-karras-ve": (["--solver", "edm-stochastic", "--s-churn", "10", "--s-noise", "0.95"],
                                     _diffusers_karras_ve(10.0, 0.0, float("inf"), 0.95)),
    "sa-solver": (["--solver", "sa-solver"], _diffusers_sa_solver()),
    "sa-solver-3-3-ode": (["--solver", "sa-solver", "--predictor-order", "3", "--corrector-order", "3", "--tau", "0"],
                          _diffusers_sa_solver(3, 3, tau=0.0, s_tmin=0.0, s_tmax=math.inf)),
    "sa-solver-4-3-tau0.6": (["--solver", "sa-solver", "--predictor-order", "4", "--corrector-order", "3", "--tau", "0.6",
                              "--s-tmin", "0", "--s-tmax", "inf"],
                             _diffusers_sa_solver(4, 3, tau=0.6, s_tmin=0.0, s_tmax=math.inf)),
    "sa-solver-1-4": (["--solver", "sa-solver", "--predictor-order", "1", "--corrector-order", "4", "--s-tmin", "0.1",
                       "--s-tmax", "5"], _diffusers_sa_solver(1, 4, s_tmin=0.1, s_tmax=5.0)),
    "dpm-singlestep-2-heun": (["--solver", "dpm-singlestep", "--solver-type", "heun"],
                              _diffusers_singlestep(2, solver_type="heun")),
    "dpm-singlestep-3": (["--solver", "dpm-singlestep", "--order", "3"], _diffusers_singlestep(3)),
    "dpm-singlestep-3-eps-heun": (["--solver", "dpm-singlestep", "--order", "3", "--algorithm-type", "dpmsolver",
                                   "--solver-type", "heun"], _diffusers_singlestep(3, "dpmsolver", "heun")),
    "dpm-singlestep-sde": (["--solver", "dpm-singlestep", "--algorithm-type", "sde-dpmsolver++"],
                           _diffusers_singlestep(2, "sde-dpmsolver++")),
    "dpm-singlestep-3-sde-heun": (["--solver", "dpm-singlestep", "--order", "3", "--algorithm-type", "sde-dpmsolver++",
                                   "--solver-type", "heun"], _diffusers_singlestep(3, "sde-dpmsolver++", "heun")),
    "dpm-multistep-3": (["--solver", "dpm-multistep", "--order", "3"], _diffusers_multistep_full(3, "dpmsolver++")),
    "dpm-multistep-eps": (["--solver", "dpm-multistep", "--algorithm-type", "dpmsolver"],
                          _diffusers_multistep_full(2, "dpmsolver")),
    "dpm-multistep-eps-heun": (["--solver", "dpm-multistep", "--algorithm-type", "dpmsolver", "--solver-type", "heun"],
                               _diffusers_multistep_full(2, "dpmsolver", "heun")),
    "dpm-multistep-3-eps": (["--solver", "dpm-multistep", "--order", "3", "--algorithm-type", "dpmsolver"],
                            _diffusers_multistep_full(3, "dpmsolver")),
    "dpm-multistep-3-sde": (["--solver", "dpm-multistep", "--order", "3", "--algorithm-type", "sde-dpmsolver++"],
                            _diffusers_multistep_full(3, "sde-dpmsolver++")),
    "dpm-multistep-sde-eps": (["--solver", "dpm-multistep", "--algorithm-type", "sde-dpmsolver"],
                              _diffusers_multistep_full(2, "sde-dpmsolver")),
    "dpm-multistep-sde-eps-heun": (["--solver", "dpm-multistep", "--algorithm-type", "sde-dpmsolver",
                                    "--solver-type", "heun"], _diffusers_multistep_full(2, "sde-dpmsolver", "heun")),
    "lcm": (["--solver", "lcm"], _diffusers_lcm),
    "tcd": (_tcd_flags(0.5), _diffusers_tcd(0.5)),
    "tcd-gamma0.25": (_tcd_flags(0.25), _diffusers_tcd(0.25)),
    "tcd-gamma1": (_tcd_flags(1.0), _diffusers_tcd(1.0)),
}


# --------------------------------------------------------------------------- scipy (score_sde)


def load_scipy_integrate():
    """scipy.integrate, which score_sde's ODE sampler calls; (None, reason) where it cannot be
    imported (it comes with torchsde, which scripts/peers.sh installs)."""
    try:
        import scipy
        from scipy import integrate
    except Exception as e:  # any import failure means: no scipy peer
        return None, f"{type(e).__name__}: {e}"
    return integrate, f"scipy {scipy.__version__} from {os.path.dirname(scipy.__file__)}"


# The forward processes as score_sde writes them (sde_lib.py): sigma(t) of the scaled variable,
# the scale s(t), the drift coefficient f(t) and g(t)^2, and the time of a noise level.
# scoreflow's VE is sigma_min (sigma_max / sigma_min)^t with 0.01 and 50.
VE_SIGMA_MIN, VE_SIGMA_MAX = 0.01, 50.0
SCORE_SDE_FORMS = {
    "edm": (lambda t: t, lambda t: 1.0, lambda t: 0.0, lambda t: 2.0 * t, lambda sigma: sigma),
    "vp": (_vp_sigma, lambda t: math.exp(-0.5 * _vp_integral(t)), lambda t: -0.5 * (VP_BETA_MIN + t * (VP_BETA_MAX - VP_BETA_MIN)),
           lambda t: VP_BETA_MIN + t * (VP_BETA_MAX - VP_BETA_MIN), _vp_time),
    "ve": (lambda t: VE_SIGMA_MIN * (VE_SIGMA_MAX / VE_SIGMA_MIN) ** t, lambda t: 1.0, lambda t: 0.0,
           lambda t: (VE_SIGMA_MIN * (VE_SIGMA_MAX / VE_SIGMA_MIN) ** t) ** 2 * 2.0 * math.log(VE_SIGMA_MAX / VE_SIGMA_MIN),
           lambda sigma: math.log(sigma / VE_SIGMA_MIN) / math.log(VE_SIGMA_MAX / VE_SIGMA_MIN)),
}


def _scipy_rk45(sde="edm", rtol=1e-5, atol=1e-5):
    """score_sde's ODE sampler (sampling.py, get_ode_sampler): scipy.integrate.solve_ivp with
    method="RK45" on the probability-flow drift f(t) x - g(t)^2 score / 2 in the process's time
    and the unscaled x = s(t) x^, the state flattened to float64 and the model called in the
    samples' dtype, from t(sigma_0) to t(sigma_{n-1}) of the grid; then scoreflow's last step, D
    at the last nonzero level (score_sde ends with a reverse-diffusion denoising step instead)."""
    sig_of, s_of, f_of, g2_of, t_of = SCORE_SDE_FORMS[sde]

    def run(integrate, model, x, sigmas, grid, noise):
        t0, t1 = t_of(grid[0]), t_of(grid[-2])
        shape = x.shape
        ones = x.new_ones([shape[0]])

        def fun(t, y):
            xt = torch.from_numpy(y).reshape(shape).to(x.device, x.dtype)
            sig, s = sig_of(t), s_of(t)
            xh = xt / s
            score = (model(xh, ones * sig) - xh) / (s * sig * sig)
            return (xt * f_of(t) - score * (0.5 * g2_of(t))).double().cpu().numpy().reshape(-1)

        y0 = (x.double() * s_of(t0)).cpu().numpy().reshape(-1)
        sol = integrate.solve_ivp(fun, (t0, t1), y0, rtol=rtol, atol=atol, method="RK45")
        if sol.status != 0:
            fail(f"scipy's RK45 failed: {sol.message}")
        xe = torch.from_numpy(sol.y[:, -1]).reshape(shape).to(x.device, x.dtype)
        return model(xe / s_of(t1), ones * grid[-2])

    return run


# Compared with scipy's solve_ivp as score_sde calls it (run gets scipy.integrate).
SCIPY_CHECKS = {
    "rk45": (["--solver", "rk45"], _scipy_rk45()),
    # In float32 the drift's rounding noise is what the error estimate sees near sigma_min (x - D
    # cancels there), so the two sides' steps part there (on the mixture, 159 and 177 evaluations,
    # 6.5e-5 apart); in float64 they take the same steps (a float64 check, on the mixture only).
    "rk45-float64": (["--solver", "rk45"], _scipy_rk45()),
    "rk45-vp": (["--solver", "rk45", "--sde", "vp"], _scipy_rk45("vp")),
    "rk45-ve-tol": (["--solver", "rk45", "--sde", "ve", "--rtol", "0.001", "--atol", "0.0001"],
                    _scipy_rk45("ve", 1e-3, 1e-4)),
}


def _kd_det(name):
    return lambda sampling, model, x, sigmas, grid, noise: kd_sampler(sampling, name)(model, x, sigmas)


CHECKS = {name: (["--solver", name], _kd_det(name)) for name in KD_NAMES}
CHECKS.update({
    "euler-ancestral": (["--solver", "euler-ancestral"], _kd_noisy("sample_euler_ancestral")),
    "euler-ancestral-eta0.5": (["--solver", "euler-ancestral", "--eta", "0.5", "--s-noise", "1.1"],
                               _kd_noisy("sample_euler_ancestral", eta=0.5, s_noise=1.1)),
    "edm-stochastic": (["--solver", "edm-stochastic"] + EDM_CHURN, _kd_churn()),
    # Churn at every level (S_tmin 0, S_tmax inf, the defaults), the last one included.
    "edm-stochastic-all": (["--solver", "edm-stochastic", "--s-churn", "10", "--s-noise", "0.95"],
                           _kd_churn(10.0, 0.0, float("inf"), 0.95)),
    # The same churn in k-diffusion's Euler, Heun and DPM-2 samplers.
    "euler-churn": (["--solver", "euler"] + EDM_CHURN, _kd_churn(fn="sample_euler")),
    "heun-churn": (["--solver", "heun", "--s-churn", "10", "--s-noise", "0.95"],
                   _kd_churn(10.0, 0.0, float("inf"), 0.95)),
    "dpm2-churn": (["--solver", "dpm2", "--s-churn", "20", "--s-tmax", "10", "--s-noise", "1.02"],
                   _kd_churn(20.0, 0.0, 10.0, 1.02, fn="sample_dpm_2")),
    "dpmpp-2m-sde": (["--solver", "dpmpp-2m-sde"], _kd_noisy("sample_dpmpp_2m_sde")),
    "dpmpp-2m-sde-heun": (["--solver", "dpmpp-2m-sde", "--solver-type", "heun", "--eta", "0.7", "--s-noise", "0.9"],
                          _kd_noisy("sample_dpmpp_2m_sde", eta=0.7, s_noise=0.9, solver_type="heun")),
    "dpmpp-3m-sde": (["--solver", "dpmpp-3m-sde"], _kd_noisy("sample_dpmpp_3m_sde")),
    "dpm2-ancestral": (["--solver", "dpm2-ancestral"], _kd_noisy("sample_dpm_2_ancestral")),
    "dpmpp-2s-ancestral": (["--solver", "dpmpp-2s-ancestral"], _kd_noisy("sample_dpmpp_2s_ancestral")),
    "dpmpp-2s-ancestral-eta0.5": (["--solver", "dpmpp-2s-ancestral", "--eta", "0.5", "--s-noise", "1.1"],
                                  _kd_noisy("sample_dpmpp_2s_ancestral", eta=0.5, s_noise=1.1)),
    "dpmpp-sde": (["--solver", "dpmpp-sde"], _kd_noisy("sample_dpmpp_sde", noise=_dpmpp_sde_noise())),
    "dpmpp-sde-eta0.7": (["--solver", "dpmpp-sde", "--eta", "0.7", "--s-noise", "0.9"],
                         _kd_noisy("sample_dpmpp_sde", noise=_dpmpp_sde_noise(), eta=0.7, s_noise=0.9)),
    # Another intermediate level: r = 1/3 (the second stage mixes the two evaluations).
    "dpmpp-sde-r0.3": (["--solver", "dpmpp-sde", "--r", "0.3", "--eta", "0.8"],
                       _kd_noisy("sample_dpmpp_sde", noise=_dpmpp_sde_noise(0.3), eta=0.8, r=0.3)),
    "dpm-solver": (["--solver", "dpm-solver"], _kd_dpm_solver(3)),
    "dpm-solver-eta0.5": (["--solver", "dpm-solver", "--eta", "0.5", "--s-noise", "1.1"], _kd_dpm_solver(3, 0.5, 1.1)),
    "dpm-adaptive": (["--solver", "dpm-adaptive"], _kd_dpm_adaptive()),
    "dpm-adaptive-order2": (["--solver", "dpm-adaptive", "--order", "2", "--rtol", "0.02", "--atol", "0.002"],
                            _kd_dpm_adaptive(order=2, rtol=0.02, atol=0.002)),
    # rtol and atol powers of 2: k-diffusion makes float32 tensors of them, which would move its
    # steps against scoreflow's float64 ones (see FLOAT64_CHECKS).
    "dpm-adaptive-eta0.5": (["--solver", "dpm-adaptive", "--eta", "0.5", "--rtol", "0.0625", "--atol", "0.0078125",
                             "--pcoeff", "0.1", "--dcoeff", "0.05"],
                            _kd_dpm_adaptive(eta=0.5, rtol=0.0625, atol=0.0078125, pcoeff=0.1, dcoeff=0.05)),
    "dpmpp-3m-sde-eta0.5": (["--solver", "dpmpp-3m-sde", "--eta", "0.5"], _kd_noisy("sample_dpmpp_3m_sde", eta=0.5)),
    # 17 evaluations before the final D on the 18-step grid: orders 3, 3, 3, 3, 3, 2.
    "dpm-fast": (["--solver", "dpm-fast"], _kd_dpm_fast()),
    "dpm-fast-eta0.5": (["--solver", "dpm-fast", "--eta", "0.5", "--s-noise", "1.1"], _kd_dpm_fast(0.5, 1.1)),
})


# --------------------------------------------------------------------------- training


def train_twin(rec):
    """The PyTorch twin of the model a `scoreflow bench-train --json` record trained (fresh
    weights: only the architecture matters for the speed)."""
    cfg, shape, classes = rec["train_config"], rec["shape"], rec["num_classes"]
    bb, pc, loss = cfg["model"]["backbone"], cfg["model"]["precond"], cfg["loss"]
    if pc["kind"] != "edm" or loss["kind"] != "edm" or loss.get("min_snr_gamma") is not None:
        fail(f"{rec['config']}: the training peer covers the EDM loss with EDM preconditioning only")
    if bb["kind"] not in ("mlp", "unet"):
        fail(f"{rec['config']}: backbone {bb['kind']} has no PyTorch twin")
    net = backbone(bb, shape, classes)
    with torch.no_grad():
        net.get_buffer("fourier_freqs" if bb["kind"] == "mlp" else "emb.fourier_freqs").normal_(0.0, bb.get("fourier_scale", 1.0))
    return EdmPrecond(net, pc["sigma_data"], classes)


# Training modes of the peer. eager: what a PyTorch user writes: torch.optim.Adam with its
# defaults (foreach kernels on CUDA), torch.nn.utils.clip_grad_norm_, and NVlabs/edm's EMA loop
# (training_loop.py: one lerp per parameter). eager-fused: Adam(fused=True) and one
# torch._foreach_lerp_ for the EMA (what scoreflow does). compile: eager with the network under
# torch.compile.
TRAIN_MODES = ("eager", "eager-fused", "compile")


def time_training(rec, mode, dev, steps, warmup=10):
    """Samples/s of the scoreflow training step (src/train.rs) written in PyTorch: the batch drawn
    on the device, ln sigma ~ N(P_mean, P_std^2), EDM loss weight, bf16 autocast of the loss where
    asked, Adam without weight decay, gradient clipping, linear lr warm-up, EMA with a half-life in
    samples; losses read once at the end. `warmup` steps first, then `steps` timed steps."""
    cfg, shape, classes, batch = rec["train_config"], rec["shape"], rec["num_classes"], rec["batch"]
    t, loss_cfg = cfg["train"], cfg["loss"]
    torch.manual_seed(0)
    model = train_twin(rec).to(dev).train()
    ema = train_twin(rec).to(dev).eval().requires_grad_(False)
    ema.load_state_dict(model.state_dict())
    params = [p for p in model.parameters()]
    ema_params = [p for p in ema.parameters()]
    n_params = sum(p.numel() for p in params)
    n = max(4 * batch, 4096)
    data = torch.randn([n] + shape, device=dev)
    labels_all = torch.randint(classes, (n,), device=dev) if classes else None
    fused = mode == "eager-fused"
    opt = torch.optim.Adam(params, lr=t["lr"], betas=(0.9, 0.999), eps=1e-8, fused=True if fused else None)
    fwd = torch.compile(model) if mode == "compile" else model
    sd = loss_cfg.get("sigma_data") or model.sigma_data
    p_mean, p_std = loss_cfg["p_mean"], loss_cfg["p_std"]
    dims = tuple(range(1, 1 + len(shape)))
    bf16 = rec["precision"] == "bf16"

    def per_sample(y, labels):
        sigma = (torch.randn(batch, device=dev) * p_std + p_mean).exp()
        w = (sigma**2 + sd * sd) / (sigma * sd) ** 2
        noise = torch.randn_like(y) * sigma.reshape((-1,) + (1,) * len(shape))
        d = fwd(y + noise, sigma, labels)
        return (d - y).square().mean(dims) * w

    def step(i):
        idx = torch.randint(n, (batch,), device=dev)
        y = data.index_select(0, idx)
        labels = None
        if labels_all is not None:
            labels = labels_all.index_select(0, idx)
            drop = torch.rand(batch, device=dev) < t["label_dropout"]
            labels = labels.masked_fill(drop, classes)
        opt.zero_grad(set_to_none=True)
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=bf16):
            per = per_sample(y, labels)
        loss = per.float().mean()
        loss.backward()
        if t.get("grad_clip") is not None:
            torch.nn.utils.clip_grad_norm_(params, t["grad_clip"])
        warm = t.get("warmup_steps", 0)
        for g in opt.param_groups:
            g["lr"] = t["lr"] * (min((i + 1) / warm, 1.0) if warm > 0 else 1.0)
        opt.step()
        seen = (i + 1) * batch
        half_life = t["ema_half_life"] if t.get("ema_rampup") is None else min(t["ema_half_life"], seen * t["ema_rampup"])
        beta = 0.5 ** (batch / max(half_life, 1e-8))
        with torch.no_grad():
            if fused:
                torch._foreach_lerp_(ema_params, params, 1.0 - beta)
            else:
                for pe, pn in zip(ema_params, params):
                    pe.copy_(pn.detach().lerp(pe, beta))
        return loss.detach()

    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    losses = [step(i) for i in range(warmup)]
    sync(dev)
    t0 = time.perf_counter()
    losses += [step(warmup + i) for i in range(steps)]
    sync(dev)
    per_step = (time.perf_counter() - t0) / steps
    if not torch.stack(losses).isfinite().all():
        fail(f"the PyTorch training of {rec['config']} ({mode}, {rec['precision']}) gave a non-finite loss")
    peak = torch.cuda.max_memory_allocated(dev) if dev.type == "cuda" else None
    return per_step, n_params, peak


def scoreflow(binary, args):
    p = subprocess.run([binary] + args, capture_output=True, text=True)
    if p.returncode != 0:
        fail(f"scoreflow {' '.join(args)} failed ({p.returncode}): {p.stderr.strip()}")
    return p.stdout


def scoreflow_json(binary, args):
    """`scoreflow ARGS` whose stdout is one JSON value (sample, compare --json): that value."""
    return json.loads(scoreflow(binary, args))


def check_script_args(doc, out_prefix, **defaults):
    """The command line the check scripts share (inversion_check.py, flow_check.py): --scoreflow,
    --diffusers-site (appended to sys.path when it exists), --out (a new temporary folder by
    default, created), and `defaults` as typed options (--num, --tol, ...)."""
    here = os.path.dirname(os.path.abspath(__file__))
    ap = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    ap.add_argument("--scoreflow", required=True)
    ap.add_argument("--diffusers-site", default=os.path.normpath(os.path.join(here, "..", "..", ".peers", "diffusers")))
    ap.add_argument("--out", help="folder for the files compared (default: a temporary one)")
    for name, value in defaults.items():
        ap.add_argument("--" + name.replace("_", "-"), type=type(value), default=value)
    a = ap.parse_args()
    if os.path.isdir(a.diffusers_site):
        sys.path.append(a.diffusers_site)
    a.out = a.out or tempfile.mkdtemp(prefix=out_prefix)
    os.makedirs(a.out, exist_ok=True)
    return a


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--scoreflow", required=True, help="the scoreflow binary")
    ap.add_argument("--checkpoint", action="append", default=[], help="scoreflow checkpoint(s) of EDM-preconditioned MLPs or U-Nets")
    ap.add_argument("--unet-batches", default="1,64,256")
    ap.add_argument("--mixture-batch", type=int, default=4096)
    ap.add_argument("--steps", type=int, default=18)
    ap.add_argument("--samplers", default="euler,heun,dpmpp-2m")
    ap.add_argument("--modes", default="eager,compile,reduce-overhead")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--out", required=True, help="output folder (peers.json and the logs)")
    ap.add_argument("--check-only", action="store_true", help="only check that the samples agree (no timing)")
    known_checks = list(CHECKS) + list(DIFFUSERS_CHECKS) + list(SCIPY_CHECKS)
    ap.add_argument("--check-samplers",
                    help=f"samplers whose samples are compared, of {','.join(known_checks)} (default: all but "
                         f"the contrasts {','.join(sorted(OPT_IN_CHECKS))}; the diffusers ones only where "
                         "diffusers can be imported)")
    ap.add_argument("--diffusers-site", default=os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", ".peers", "diffusers")),
                    help="folder with diffusers installed (scripts/peers-setup.sh puts it there)")
    ap.add_argument("--check-noise-seed", type=int,
                    help="seed of the Brownian paths handed to k-diffusion's stochastic samplers (default: the one "
                         "scoreflow samples with; any other is a control under which they must disagree)")
    ap.add_argument("--check-tol", type=float, default=1e-3,
                    help="largest difference that counts as the same samples, relative to max(1, max |x|); "
                         "a disagreement is reported, the timing still runs, and the exit code is 1")
    ap.add_argument("--parts", default="sample,train", help="sample (the samplers), train (the training step)")
    ap.add_argument("--train", action="append", default=[],
                    help="scoreflow training config(s) whose training step is timed both ways (EDM loss and preconditioning)")
    ap.add_argument("--train-batch", type=int, help="override the training configs' batch size")
    ap.add_argument("--train-precisions", default="float32,bf16")
    ap.add_argument("--train-steps", type=int, default=20, help="timed training steps (after 10 warm-up steps)")
    ap.add_argument("--train-modes", default=",".join(TRAIN_MODES))
    a = ap.parse_args()
    parts = set(p for p in a.parts.split(",") if p)
    if parts - {"sample", "train"}:
        ap.error(f"unknown --parts {sorted(parts - {'sample', 'train'})}")
    train_modes = [m for m in a.train_modes.split(",") if m]
    if set(train_modes) - set(TRAIN_MODES):
        ap.error(f"unknown --train-modes {sorted(set(train_modes) - set(TRAIN_MODES))}")
    default_checks = ",".join(c for c in known_checks if c not in OPT_IN_CHECKS)
    check_names = [c for c in (a.check_samplers or default_checks).split(",") if c]
    if set(check_names) - set(known_checks):
        ap.error(f"unknown --check-samplers {sorted(set(check_names) - set(known_checks))} (known: {', '.join(known_checks)})")
    if set(s for s in a.samplers.split(",") if s) - set(KD_NAMES):
        ap.error(f"unknown --samplers {sorted(set(a.samplers.split(',')) - set(KD_NAMES) - {''})} (known: {', '.join(KD_NAMES)})")

    os.makedirs(a.out, exist_ok=True)
    dev = torch.device(a.device)
    sampling, kd_root, utils_note = load_kdiffusion_sampling()
    diffusers, diffusers_note = (None, "not asked for")
    if any(c in DIFFUSERS_CHECKS for c in check_names) and "sample" in parts:
        diffusers, diffusers_note = load_diffusers_schedulers(a.diffusers_site)
        if diffusers is None:
            if a.check_samplers:
                fail(f"--check-samplers asks for diffusers, which cannot be imported ({diffusers_note})")
            print(f"skipped: the diffusers checks ({diffusers_note})")
            check_names = [c for c in check_names if c not in DIFFUSERS_CHECKS]
    integrate, scipy_note = (None, "not asked for")
    if any(c in SCIPY_CHECKS for c in check_names) and "sample" in parts:
        integrate, scipy_note = load_scipy_integrate()
        if integrate is None:
            if a.check_samplers:
                fail(f"--check-samplers asks for scipy, which cannot be imported ({scipy_note})")
            print(f"skipped: the scipy checks ({scipy_note})")
            check_names = [c for c in check_names if c not in SCIPY_CHECKS]
    samplers = [s for s in a.samplers.split(",") if s]
    modes = [m for m in a.modes.split(",") if m and not (m == "reduce-overhead" and dev.type != "cuda")]
    sigmas = sampling.get_sigmas_karras(a.steps, 0.002, 80.0, 7.0, device=dev)
    print(f"torch {torch.__version__} on {dev}; k-diffusion sampling.py from {kd_root} ({utils_note}); {diffusers_note}; {scipy_note}")
    torch.backends.cudnn.benchmark = False

    models = [("gmm8", gmm8().to(dev), [2], [a.mixture_batch], ["--denoiser", "builtin:gmm8"])]
    for ck in (a.checkpoint if "sample" in parts else []):
        m, shape, n_rust, n_torch = model_from_checkpoint(ck)
        print(f"{ck}: {n_rust} parameters in the scoreflow checkpoint, {n_torch} in the PyTorch twin")
        if n_rust != n_torch:
            fail("parameter counts differ")
        batches = [int(b) for b in a.unet_batches.split(",") if b]
        label = os.path.basename(os.path.dirname(os.path.abspath(ck))) or os.path.basename(ck)
        models.append((f"{type(m.net).__name__.lower()}:{label}", m.to(dev), shape, batches, ["--checkpoint", ck]))

    if "sample" not in parts:
        models = []
    rows, checks, train_rows = [], [], []
    info = {"torch": torch.__version__, "device": str(dev), "gpu": torch.cuda.get_device_name(dev) if dev.type == "cuda" else None,
            "steps": a.steps, "reps": a.reps, "kdiffusion_sampling": os.path.join(kd_root, "sampling.py"),
            "diffusers": diffusers_note, "scipy": scipy_note}

    def save(complete):
        """peers.json, rewritten (atomically) after every measurement: a run cut short still
        leaves what it measured, with "complete": false."""
        tmp = os.path.join(a.out, "peers.json.partial")
        with open(tmp, "w") as f:
            json.dump({"info": info, "complete": complete, "checks": checks, "rows": rows, "train_rows": train_rows}, f, indent=1)
        os.replace(tmp, os.path.join(a.out, "peers.json"))

    sf_dev = "cuda" if dev.type == "cuda" else "cpu"
    # scoreflow's own timings first, before this process has run any torch kernels (on a small
    # CPU machine, idle-spinning OpenMP threads of this process would slow the child down).
    sf_all = {}
    for name, model, shape, batches, sf_model in ([] if a.check_only else models):
        js = os.path.join(a.out, f"scoreflow-{name.replace(':', '-')}.json")
        scoreflow(a.scoreflow, ["bench", *sf_model, "--num", ",".join(map(str, batches)), "--steps", str(a.steps),
                                "--solvers", ",".join(samplers), "--reps", str(a.reps), "--device", sf_dev, "--json", js])
        sf_all[name] = {(r["batch"], r["sampler"]): r for r in json.load(open(js))}
    sf_train = []
    if "train" in parts and a.train and not a.check_only:
        js = os.path.join(a.out, "scoreflow-train.json")
        scoreflow(a.scoreflow, ["bench-train", *a.train, "--device", sf_dev, "--precision", a.train_precisions,
                                "--steps", str(a.train_steps), "--json", js]
                  + (["--batch", str(a.train_batch)] if a.train_batch else []))
        sf_train = json.load(open(js))
    for name, model, shape, batches, sf_model in models:
        # 1. Same model, same algorithm: compare final samples from one noise file (and, for the
        # stochastic samplers, scoreflow's Brownian paths of seed 3, rebuilt here).
        n_check, seed = 8, 3
        z = torch.randn([n_check] + shape, generator=torch.Generator().manual_seed(7), dtype=torch.float32)
        grid = karras_f64(a.steps)
        noise_seed = seed if a.check_noise_seed is None else a.check_noise_seed
        noise = ScoreflowNoise(noise_seed, n_check, shape, max(grid[0], 80.0) * 1.001 + 1e-3)
        with tempfile.TemporaryDirectory() as tmp:
            np.save(os.path.join(tmp, "z.npy"), z.numpy())
            for s in check_names:
                out = os.path.join(tmp, "x.npy")
                peer = "diffusers" if s in DIFFUSERS_CHECKS else "scipy" if s in SCIPY_CHECKS else "k-diffusion"
                flags, run_kd = {**CHECKS, **DIFFUSERS_CHECKS, **SCIPY_CHECKS}[s]
                flags = flags(a.steps) if callable(flags) else flags
                wide = s in FLOAT64_CHECKS
                if s in PRK_CHECKS and a.steps < 4:
                    # diffusers' PNDMScheduler builds its Runge-Kutta timesteps from the last 4
                    # and fails on fewer steps (scoreflow's pndm runs min(3, n - 1) of them).
                    print(f"same samples? {name:<28} {s:<22} skipped (diffusers' PNDM needs 4 steps or more)")
                    continue
                if wide and not isinstance(model, Mixture):
                    print(f"same samples? {name:<28} {s:<22} skipped (a float64 check, run on the exact mixture only)")
                    continue
                if wide:
                    flags = [*flags, "--dtype", "float64"]
                scoreflow(a.scoreflow, ["sample", *sf_model, *flags, "--steps", str(a.steps), "--seed", str(seed),
                                        "--noise", os.path.join(tmp, "z.npy"), "--device", sf_dev, "--out", out])
                x_sf = torch.from_numpy(np.load(out)).double()
                with torch.no_grad():
                    m, x0 = (model.to_float64(), z.to(dev).double() * 80.0) if wide else (model, z.to(dev) * 80.0)
                    peer_mod = {"diffusers": diffusers, "scipy": integrate}.get(peer, sampling)
                    x_kd = run_kd(peer_mod, m, x0, sigmas, grid, noise).cpu().double()
                err = (x_sf - x_kd).abs().max().item()
                scale = x_kd.abs().max().item()
                agree = err <= a.check_tol * max(1.0, scale)
                checks.append({"model": name, "sampler": s, "peer": peer, "max_abs_diff": err, "max_abs": scale, "agree": agree})
                print(f"same samples? {name:<28} {s:<25} max |scoreflow - {peer:<11}| = {err:.2e} (max |x| {scale:.2f})"
                      + ("" if agree else f"  DISAGREE (tolerance {a.check_tol} x max(1, max |x|))"))
                save(False)

        if a.check_only:
            continue
        sf = sf_all[name]
        # 2. k-diffusion around the PyTorch twin, each mode.
        for mode in modes:
            if mode == "eager":
                fn = model
            else:
                torch._dynamo.reset()
                fn = torch.compile(model, mode=None if mode == "compile" else mode)
            for b in batches:
                x = torch.randn([b] + shape, generator=torch.Generator().manual_seed(1)).to(dev) * 80.0
                sig = torch.full([b], 1.0, device=dev)
                with torch.no_grad():
                    call = median_time(lambda: fn(x, sig), dev, max(20, 4 * a.reps), 5)
                    for s in samplers:
                        f = kd_sampler(sampling, s)
                        wall = median_time(lambda: f(fn, x, sigmas), dev, a.reps, 2)
                        r = sf[(b, s)]
                        rows.append({
                            "model": name, "batch": b, "sampler": s, "mode": mode, "nfe": r["nfe"],
                            "kd_wall_s": wall, "kd_call_s": call, "sf_wall_s": r["wall_s"], "sf_call_s": r["call_s"],
                            "kd_over_sf": wall / r["wall_s"], "sf_ratio": r["ratio"],
                            "kd_overhead_per_nfe_us": (wall - r["nfe"] * call) / r["nfe"] * 1e6,
                        })
                        print(f"measured: {name} batch {b} {s} {mode}: scoreflow {r['wall_s'] * 1e3:.3f} ms, "
                              f"k-diffusion {wall * 1e3:.3f} ms", flush=True)
                        save(False)

    # 3. The training step: scoreflow bench-train's figures (above) against the PyTorch twin.
    for rec in sf_train:
        for mode in train_modes:
            if mode == "compile":
                torch._dynamo.reset()
            step_s, n_torch, peak = time_training(rec, mode, dev, a.train_steps)
            if n_torch != rec["parameters"]:
                fail(f"{rec['config']}: {rec['parameters']} parameters in scoreflow, {n_torch} in the twin")
            train_rows.append({
                "config": rec["config"], "precision": rec["precision"], "batch": rec["batch"], "mode": mode,
                "parameters": n_torch, "sf_samples_per_s": rec["samples_per_s"], "torch_samples_per_s": rec["batch"] / step_s,
                "sf_over_torch": rec["samples_per_s"] * step_s / rec["batch"],
                "sf_peak_bytes": rec["peak_bytes"], "torch_peak_bytes": peak,
            })
            print(f"measured: {rec['config']} {rec['precision']} batch {rec['batch']} {mode}: scoreflow "
                  f"{rec['samples_per_s']:.0f} samples/s, PyTorch {rec['batch'] / step_s:.0f}", flush=True)
            save(False)

    hdr = f"{'model':<28} {'batch':>5} {'sampler':<9} {'mode':<15} {'nfe':>4} {'scoreflow ms':>12} {'k-diff ms':>10} {'k-diff/sf':>9} {'sf wall/(nfe*call)':>18}"
    if rows:
        print(hdr)
    for r in rows:
        print(f"{r['model']:<28} {r['batch']:>5} {r['sampler']:<9} {r['mode']:<15} {r['nfe']:>4} "
              f"{r['sf_wall_s'] * 1e3:>12.3f} {r['kd_wall_s'] * 1e3:>10.3f} {r['kd_over_sf']:>9.2f} {r['sf_ratio']:>18.3f}")
    if train_rows:
        mib = lambda b: "-" if b is None else f"{b / 2**20:.0f}"
        print(f"{'config':<20} {'precision':<9} {'batch':>5} {'mode':<12} {'params':>9} {'scoreflow/s':>11} "
              f"{'torch/s':>9} {'sf/torch':>8} {'sf MiB':>7} {'torch MiB':>9}")
        for r in train_rows:
            print(f"{r['config']:<20} {r['precision']:<9} {r['batch']:>5} {r['mode']:<12} {r['parameters']:>9} "
                  f"{r['sf_samples_per_s']:>11.0f} {r['torch_samples_per_s']:>9.0f} {r['sf_over_torch']:>8.2f} "
                  f"{mib(r['sf_peak_bytes']):>7} {mib(r['torch_peak_bytes']):>9}")
    save(True)
    print(f"wrote {os.path.join(a.out, 'peers.json')}")
    bad = [f"{c['model']}/{c['sampler']}" for c in checks if not c["agree"]]
    if bad:
        sys.exit(f"peers: scoreflow and its peer disagree on {', '.join(bad)}")


if __name__ == "__main__":
    main()
