"""Peer benchmark: scoreflow against k-diffusion on PyTorch, same models, same grid, same run.

What it does (docs/performance.md has the figures and the commands):

1. Builds the PyTorch twins of scoreflow's models: the exact Gaussian-mixture denoiser
   (scoreflow's `builtin:gmm8`) and scoreflow's U-Net, whose weights it loads from a scoreflow
   checkpoint with strict name and shape matching, so the layers, widths and parameter count are
   those of the Rust network (both counts are printed).
2. Checks that the two are the same model: k-diffusion's `sample_euler`, `sample_heun` and
   `sample_dpmpp_2m` and `scoreflow sample` start from the same noise file on the same Karras
   grid; the final samples must agree within float32 tolerance.
3. Times, in the same run: `scoreflow bench` (its own medians, synchronized; run first) and k-diffusion's
   samplers around the PyTorch twin, eager and under torch.compile (and, on CUDA,
   torch.compile(mode="reduce-overhead"), i.e. CUDA graphs), warm-up first, median of reps,
   synchronizing before every clock read. Prints the table and writes peers.json.

k-diffusion's package `__init__` imports heavy training dependencies, so only its
`k_diffusion/sampling.py` is loaded, by file path; where its `utils.py` cannot be imported (no
torchvision, say) the one helper sampling.py takes from it, `append_dims`, is provided here.
"""

import argparse
import importlib.util
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


# --------------------------------------------------------------------------- k-diffusion


def load_kdiffusion_sampling():
    spec = importlib.util.find_spec("k_diffusion")
    if spec is None or not spec.submodule_search_locations:
        sys.exit("peers: k-diffusion is not installed (scripts/peers.sh installs it)")
    root = list(spec.submodule_search_locations)[0]
    pkg = types.ModuleType("k_diffusion")
    pkg.__path__ = [root]
    sys.modules["k_diffusion"] = pkg

    def load(name, file):
        s = importlib.util.spec_from_file_location(name, os.path.join(root, file))
        m = importlib.util.module_from_spec(s)
        sys.modules[name] = m
        s.loader.exec_module(m)
        return m

    try:
        utils = load("k_diffusion.utils", "utils.py")
        utils_note = "k_diffusion/utils.py"
    except ImportError as e:
        utils = types.ModuleType("k_diffusion.utils")

        def append_dims(x, target_dims):
            return x.reshape(tuple(x.shape) + (1,) * (target_dims - x.ndim))

        utils.append_dims = append_dims
        sys.modules["k_diffusion.utils"] = utils
        utils_note = f"stand-in append_dims ({e})"
    pkg.utils = utils
    sampling = load("k_diffusion.sampling", "sampling.py")
    return sampling, root, utils_note


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

    def forward(self, x, sigma):
        sd2 = self.sigma_data**2
        s = sigma.reshape(-1, 1, 1, 1).float()
        c_skip = sd2 / (s**2 + sd2)
        c_out = s * self.sigma_data * (s**2 + sd2).rsqrt()
        c_in = (s**2 + sd2).rsqrt()
        labels = None
        if self.classes > 0:
            labels = torch.full((x.shape[0],), self.classes, dtype=torch.long, device=x.device)
        f = self.net(x * c_in, s.flatten().log() / 4, labels)
        return c_skip * x + c_out * f


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


def unet_from_checkpoint(path):
    tensors, meta = read_safetensors(path)
    cfg = json.loads(meta["config"])
    shape = json.loads(meta["shape"])
    classes = int(meta["num_classes"])
    bb, pc = cfg["model"]["backbone"], cfg["model"]["precond"]
    if bb["kind"] != "unet" or pc["kind"] != "edm":
        sys.exit(f"peers: {path} is not an EDM-preconditioned U-Net")
    net = Unet(shape, classes=classes, **{k: v for k, v in bb.items() if k != "kind"})
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


# scoreflow sampler -> k-diffusion function and keyword arguments. dpmpp-3m is the eta = 0 case
# of k-diffusion's DPM-Solver++(3M) SDE (a noise sampler that is never called is passed so that
# no Brownian tree is built).
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


def scoreflow(binary, args):
    p = subprocess.run([binary] + args, capture_output=True, text=True)
    if p.returncode != 0:
        sys.exit(f"peers: scoreflow {' '.join(args)} failed ({p.returncode}): {p.stderr.strip()}")
    return p.stdout


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--scoreflow", required=True, help="the scoreflow binary")
    ap.add_argument("--checkpoint", action="append", default=[], help="scoreflow U-Net checkpoint(s)")
    ap.add_argument("--unet-batches", default="1,64,256")
    ap.add_argument("--mixture-batch", type=int, default=4096)
    ap.add_argument("--steps", type=int, default=18)
    ap.add_argument("--samplers", default="euler,heun,dpmpp-2m")
    ap.add_argument("--modes", default="eager,compile,reduce-overhead")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--out", required=True, help="output folder (peers.json and the logs)")
    ap.add_argument("--check-only", action="store_true", help="only check that the samples agree (no timing)")
    ap.add_argument("--check-samplers", default=",".join(KD_NAMES), help="samplers whose samples are compared")
    ap.add_argument("--check-tol", type=float, default=1e-3,
                    help="largest difference that counts as the same samples, relative to max(1, max |x|); "
                         "a disagreement is reported, the timing still runs, and the exit code is 1")
    a = ap.parse_args()

    os.makedirs(a.out, exist_ok=True)
    dev = torch.device(a.device)
    sampling, kd_root, utils_note = load_kdiffusion_sampling()
    samplers = [s for s in a.samplers.split(",") if s]
    modes = [m for m in a.modes.split(",") if m and not (m == "reduce-overhead" and dev.type != "cuda")]
    sigmas = sampling.get_sigmas_karras(a.steps, 0.002, 80.0, 7.0, device=dev)
    print(f"torch {torch.__version__} on {dev}; k-diffusion sampling.py from {kd_root} ({utils_note})")
    torch.backends.cudnn.benchmark = False

    models = [("gmm8", gmm8().to(dev), [2], [a.mixture_batch], ["--denoiser", "builtin:gmm8"])]
    for ck in a.checkpoint:
        m, shape, n_rust, n_torch = unet_from_checkpoint(ck)
        print(f"U-Net {ck}: {n_rust} parameters in the scoreflow checkpoint, {n_torch} in the PyTorch twin")
        if n_rust != n_torch:
            sys.exit("peers: parameter counts differ")
        batches = [int(b) for b in a.unet_batches.split(",") if b]
        label = os.path.basename(os.path.dirname(os.path.abspath(ck))) or os.path.basename(ck)
        models.append((f"unet:{label}", m.to(dev), shape, batches, ["--checkpoint", ck]))

    rows, checks = [], []
    sf_dev = "cuda" if dev.type == "cuda" else "cpu"
    # scoreflow's own timings first, before this process has run any torch kernels (on a small
    # CPU machine, idle-spinning OpenMP threads of this process would slow the child down).
    sf_all = {}
    for name, model, shape, batches, sf_model in ([] if a.check_only else models):
        js = os.path.join(a.out, f"scoreflow-{name.replace(':', '-')}.json")
        scoreflow(a.scoreflow, ["bench", *sf_model, "--num", ",".join(map(str, batches)), "--steps", str(a.steps),
                                "--solvers", ",".join(samplers), "--reps", str(a.reps), "--device", sf_dev, "--json", js])
        sf_all[name] = {(r["batch"], r["sampler"]): r for r in json.load(open(js))}
    for name, model, shape, batches, sf_model in models:
        # 1. Same model, same algorithm: compare final samples from one noise file.
        n_check = 8
        z = torch.randn([n_check] + shape, generator=torch.Generator().manual_seed(7), dtype=torch.float32)
        with tempfile.TemporaryDirectory() as tmp:
            np.save(os.path.join(tmp, "z.npy"), z.numpy())
            for s in [s for s in a.check_samplers.split(",") if s]:
                out = os.path.join(tmp, "x.npy")
                scoreflow(a.scoreflow, ["sample", *sf_model, "--solver", s, "--steps", str(a.steps),
                                        "--noise", os.path.join(tmp, "z.npy"), "--device", sf_dev, "--out", out])
                x_sf = torch.from_numpy(np.load(out))
                with torch.no_grad():
                    x_kd = kd_sampler(sampling, s)(model, z.to(dev) * 80.0, sigmas).cpu()
                err = (x_sf - x_kd).abs().max().item()
                scale = x_kd.abs().max().item()
                agree = err <= a.check_tol * max(1.0, scale)
                checks.append({"model": name, "sampler": s, "max_abs_diff": err, "max_abs": scale, "agree": agree})
                print(f"same samples? {name:<28} {s:<9} max |scoreflow - k-diffusion| = {err:.2e} (max |x| {scale:.2f})"
                      + ("" if agree else f"  DISAGREE (tolerance {a.check_tol} x max(1, max |x|))"))

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

    hdr = f"{'model':<28} {'batch':>5} {'sampler':<9} {'mode':<15} {'nfe':>4} {'scoreflow ms':>12} {'k-diff ms':>10} {'k-diff/sf':>9} {'sf wall/(nfe*call)':>18}"
    print(hdr)
    for r in rows:
        print(f"{r['model']:<28} {r['batch']:>5} {r['sampler']:<9} {r['mode']:<15} {r['nfe']:>4} "
              f"{r['sf_wall_s'] * 1e3:>12.3f} {r['kd_wall_s'] * 1e3:>10.3f} {r['kd_over_sf']:>9.2f} {r['sf_ratio']:>18.3f}")
    info = {"torch": torch.__version__, "device": str(dev), "gpu": torch.cuda.get_device_name(dev) if dev.type == "cuda" else None,
            "steps": a.steps, "reps": a.reps, "kdiffusion_sampling": os.path.join(kd_root, "sampling.py")}
    tmp = os.path.join(a.out, "peers.json.partial")
    with open(tmp, "w") as f:
        json.dump({"info": info, "checks": checks, "rows": rows}, f, indent=1)
    os.replace(tmp, os.path.join(a.out, "peers.json"))
    print(f"wrote {os.path.join(a.out, 'peers.json')}")
    bad = [f"{c['model']}/{c['sampler']}" for c in checks if not c["agree"]]
    if bad:
        sys.exit(f"peers: scoreflow and k-diffusion disagree on {', '.join(bad)}")


if __name__ == "__main__":
    main()
