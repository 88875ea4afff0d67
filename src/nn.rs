//! Backbones and the preconditioned network that turns one into a denoiser.

use crate::precond::{per_sample, sigma_batch, Precond};
use anyhow::{bail, Result};
use scoreflow_solvers::{Denoiser, SolverError};
use serde::{Deserialize, Serialize};
use tch::nn::{self, Module};
use tch::{Device, Kind, Tensor};

fn d_hidden() -> i64 {
    256
}
fn d_depth() -> usize {
    4
}
fn d_fourier() -> i64 {
    32
}
fn d_scale() -> f64 {
    1.0
}
fn d_channels() -> i64 {
    64
}
fn d_mult() -> Vec<i64> {
    vec![1, 2]
}
fn d_blocks() -> usize {
    2
}
fn d_attn() -> Vec<i64> {
    vec![4]
}

/// The network `F` inside the preconditioning.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case", deny_unknown_fields)]
pub enum Backbone {
    /// An MLP of residual blocks for vector data `[N, d]`, with a random Fourier-feature
    /// embedding of `c_noise` (Tancik et al. 2020; Song et al. 2021's `GaussianFourierProjection`).
    Mlp {
        #[serde(default = "d_hidden")]
        hidden: i64,
        #[serde(default = "d_depth")]
        depth: usize,
        /// Number of frequencies (the embedding has twice as many features).
        #[serde(default = "d_fourier")]
        fourier_features: i64,
        /// Standard deviation of the random frequencies.
        #[serde(default = "d_scale")]
        fourier_scale: f64,
    },
    /// A compact U-Net for images `[N, C, H, W]` (Ho et al. 2020; Song et al. 2021): residual
    /// blocks with group norm and a noise-embedding shift, self-attention at the listed
    /// resolutions, one level per entry of `channel_mult` (downsampling between levels).
    Unet {
        #[serde(default = "d_channels")]
        channels: i64,
        #[serde(default = "d_mult")]
        channel_mult: Vec<i64>,
        #[serde(default = "d_blocks")]
        blocks: usize,
        #[serde(default = "d_attn")]
        attn_resolutions: Vec<i64>,
        #[serde(default = "d_fourier")]
        fourier_features: i64,
        #[serde(default = "d_scale")]
        fourier_scale: f64,
    },
}

impl Default for Backbone {
    fn default() -> Self {
        Backbone::Mlp {
            hidden: 256,
            depth: 4,
            fourier_features: 32,
            fourier_scale: 1.0,
        }
    }
}

/// The most weights a backbone may have (2^30, about 1.07e9: a mistyped width becomes this
/// error, not an allocation failure or the out-of-memory killer).
pub const MAX_PARAMS: f64 = (1u64 << 30) as f64;

impl Backbone {
    pub fn validate(&self) -> Result<()> {
        match self {
            Backbone::Mlp {
                hidden,
                depth,
                fourier_features,
                fourier_scale,
            } => {
                if *hidden < 1 || *depth < 1 || *fourier_features < 1 || !(*fourier_scale > 0.0) {
                    bail!("model.backbone: hidden, depth and fourier_features must be >= 1 and fourier_scale > 0");
                }
                if *hidden > 1 << 16 || *depth > 1000 || *fourier_features > 1 << 16 {
                    bail!("model.backbone: hidden and fourier_features must be at most 65536 and depth at most 1000");
                }
            }
            Backbone::Unet {
                channels,
                channel_mult,
                blocks,
                fourier_features,
                fourier_scale,
                ..
            } => {
                if *channels < 8
                    || channels % 8 != 0
                    || channel_mult.is_empty()
                    || channel_mult.iter().any(|m| *m < 1)
                {
                    bail!("model.backbone: channels must be a multiple of 8 (>= 8) and channel_mult non-empty and positive");
                }
                if *blocks < 1 || *fourier_features < 1 || !(*fourier_scale > 0.0) {
                    bail!("model.backbone: blocks and fourier_features must be >= 1 and fourier_scale > 0");
                }
                if *channels > 1 << 14
                    || channel_mult.len() > 8
                    || channel_mult.iter().any(|m| *m > 64)
                    || *blocks > 100
                    || *fourier_features > 1 << 16
                {
                    bail!("model.backbone: channels at most 16384, at most 8 levels of channel_mult up to 64, blocks at most 100, fourier_features at most 65536");
                }
            }
        }
        Ok(())
    }

    /// The number of weights (biases and norms included) of this backbone for samples of
    /// per-sample shape `shape`, as [`Denoiser`]'s constructors build it, with one output per
    /// number of a sample and no class embedding (a learned variance's second output and a class
    /// table add a few more): counted before anything is allocated.
    pub fn weights(&self, shape: &[i64]) -> f64 {
        let conv = |i: f64, o: f64, k: f64| i * o * k * k + o;
        let linear = |i: f64, o: f64| i * o + o;
        let embedding = |nf: f64, d: f64| linear(2.0 * nf, d) + linear(d, d);
        match self {
            Backbone::Mlp {
                hidden,
                depth,
                fourier_features,
                ..
            } => {
                let (h, d) = (*hidden as f64, shape.iter().product::<i64>() as f64);
                embedding(*fourier_features as f64, h)
                    + linear(d, h)
                    + 3.0 * *depth as f64 * linear(h, h)
                    + linear(h, d)
            }
            Backbone::Unet {
                channels,
                channel_mult,
                blocks,
                attn_resolutions,
                fourier_features,
                ..
            } => {
                let (ch, e) = (*channels as f64, 4.0 * *channels as f64);
                let (c_in, mut res) = (shape[0] as f64, shape[1]);
                let res_block = |i: f64, o: f64| {
                    2.0 * i
                        + conv(i, o, 3.0)
                        + linear(e, o)
                        + 2.0 * o
                        + conv(o, o, 3.0)
                        + if i != o { conv(i, o, 1.0) } else { 0.0 }
                };
                let attention = |c: f64| 2.0 * c + conv(c, 3.0 * c, 1.0) + conv(c, c, 1.0);
                let mut n = embedding(*fourier_features as f64, e) + conv(c_in, ch, 3.0);
                let (mut cur, mut skips) = (ch, vec![ch]);
                for (lvl, m) in channel_mult.iter().enumerate() {
                    for _ in 0..*blocks {
                        let o = ch * *m as f64;
                        n += res_block(cur, o);
                        if attn_resolutions.contains(&res) {
                            n += attention(o);
                        }
                        cur = o;
                        skips.push(cur);
                    }
                    if lvl + 1 < channel_mult.len() {
                        n += conv(cur, cur, 3.0);
                        skips.push(cur);
                        res /= 2;
                    }
                }
                n += 2.0 * res_block(cur, cur) + attention(cur);
                for (lvl, m) in channel_mult.iter().enumerate().rev() {
                    for _ in 0..=*blocks {
                        let o = ch * *m as f64;
                        n += res_block(cur + skips.pop().unwrap_or(0.0), o);
                        if attn_resolutions.contains(&res) {
                            n += attention(o);
                        }
                        cur = o;
                    }
                    if lvl > 0 {
                        n += conv(cur, cur, 3.0);
                        res *= 2;
                    }
                }
                n + 2.0 * cur + conv(cur, c_in, 3.0)
            }
        }
    }

    /// Check that the backbone fits samples of per-sample shape `shape`.
    pub fn check_shape(&self, shape: &[i64]) -> Result<()> {
        match self {
            Backbone::Mlp { .. } if shape.len() != 1 => {
                bail!("the mlp backbone needs vector data [N, d], the data has per-sample shape {shape:?}")
            }
            Backbone::Unet { channel_mult, .. } => {
                if shape.len() != 3 {
                    bail!("the unet backbone needs images [N, C, H, W], the data has per-sample shape {shape:?}");
                }
                let f = 1i64 << (channel_mult.len() - 1);
                if shape[1] % f != 0 || shape[2] % f != 0 {
                    bail!(
                        "image size {}x{} must be divisible by {f} for {} U-Net levels",
                        shape[1],
                        shape[2],
                        channel_mult.len()
                    );
                }
            }
            _ => {}
        }
        let weights = self.weights(shape);
        if weights > MAX_PARAMS {
            bail!(
                "model.backbone: {weights:.3e} weights for samples of shape {shape:?}, more than 2^30 (4 GiB in float32, and training keeps five copies: weights, gradients, Adam's two moments, the EMA); make it narrower or shallower"
            );
        }
        Ok(())
    }

    /// A U-Net's `attn_resolutions` are heights its levels have for samples of shape `shape`
    /// (checked where a network is trained; a checkpoint loads as it was built).
    pub fn check_attention(&self, shape: &[i64]) -> Result<()> {
        let Backbone::Unet {
            channel_mult,
            attn_resolutions,
            ..
        } = self
        else {
            return Ok(());
        };
        // Attention goes where a level's height is listed: a listed size no level has
        // would add no attention at all.
        let heights: Vec<i64> = (0..channel_mult.len()).map(|l| shape[1] >> l).collect();
        if let Some(r) = attn_resolutions.iter().find(|r| !heights.contains(r)) {
            bail!(
                "model.backbone.attn_resolutions = {attn_resolutions:?} (the default is [4]): {r} is no level of this U-Net; for {}x{} images and {} levels the levels' heights are {heights:?} (list some of these, or [] for attention in the middle block only)",
                shape[1],
                shape[2],
                channel_mult.len()
            );
        }
        Ok(())
    }
}

/// Random Fourier features of `c_noise`, then a two-layer MLP: the noise embedding.
struct NoiseEmbedding {
    freqs: Tensor,
    fc1: nn::Linear,
    fc2: nn::Linear,
    class: Option<nn::Embedding>,
}

impl NoiseEmbedding {
    fn new(p: &nn::Path, nf: i64, scale: f64, dim: i64, num_classes: usize) -> Self {
        // Fixed random frequencies: a buffer, saved with the weights, never trained.
        let freqs = p.zeros_no_train("fourier_freqs", &[nf]);
        tch::no_grad(|| {
            let mut f = freqs.shallow_clone();
            f.copy_(&(Tensor::randn([nf], (Kind::Float, p.device())) * scale));
        });
        // One extra row: the "no class" label used for unconditional evaluation.
        let class = (num_classes > 0)
            .then(|| nn::embedding(p / "class", num_classes as i64 + 1, dim, Default::default()));
        NoiseEmbedding {
            freqs,
            fc1: nn::linear(p / "emb1", 2 * nf, dim, Default::default()),
            fc2: nn::linear(p / "emb2", dim, dim, Default::default()),
            class,
        }
    }
    fn forward(&self, c_noise: &Tensor, labels: Option<&Tensor>) -> Tensor {
        let arg = c_noise.unsqueeze(1) * self.freqs.unsqueeze(0) * (2.0 * std::f64::consts::PI);
        let feats = Tensor::cat(&[arg.sin(), arg.cos()], 1);
        let mut e = self.fc2.forward(&self.fc1.forward(&feats).silu());
        if let (Some(c), Some(l)) = (&self.class, labels) {
            e = e + c.forward(l);
        }
        e
    }
}

/// Residual MLP: `h = W_in x + E`, then `depth` blocks `h <- h + W2 silu(W1 silu(h) + T_i E)`,
/// then `W_out silu(h)`.
struct Mlp {
    emb: NoiseEmbedding,
    inp: nn::Linear,
    blocks: Vec<(nn::Linear, nn::Linear, nn::Linear)>,
    out: nn::Linear,
}

impl Mlp {
    #[allow(clippy::too_many_arguments)]
    fn new(
        p: &nn::Path,
        dim: i64,
        hidden: i64,
        depth: usize,
        nf: i64,
        scale: f64,
        classes: usize,
        out_mult: i64,
    ) -> Self {
        let emb = NoiseEmbedding::new(p, nf, scale, hidden, classes);
        let inp = nn::linear(p / "in", dim, hidden, Default::default());
        let blocks = (0..depth)
            .map(|i| {
                let b = p / format!("block{i}");
                (
                    nn::linear(&b / "fc1", hidden, hidden, Default::default()),
                    nn::linear(&b / "temb", hidden, hidden, Default::default()),
                    nn::linear(&b / "fc2", hidden, hidden, Default::default()),
                )
            })
            .collect();
        let out = nn::linear(p / "out", hidden, out_mult * dim, Default::default());
        Mlp {
            emb,
            inp,
            blocks,
            out,
        }
    }
    fn forward(&self, x: &Tensor, c_noise: &Tensor, labels: Option<&Tensor>) -> Tensor {
        let temb = self.emb.forward(c_noise, labels).silu();
        let mut h = self.inp.forward(x) + &temb;
        for (fc1, t, fc2) in &self.blocks {
            let u = fc1.forward(&h.silu()) + t.forward(&temb);
            h = h + fc2.forward(&u.silu());
        }
        self.out.forward(&h.silu())
    }
}

fn conv(p: nn::Path, i: i64, o: i64, k: i64, stride: i64) -> nn::Conv2D {
    nn::conv2d(
        p,
        i,
        o,
        k,
        nn::ConvConfig {
            padding: k / 2,
            stride,
            ..Default::default()
        },
    )
}

/// The number of groups of a group norm over `c` channels: the largest divisor of `c` that is
/// at most `min(32, c / 4)` (so concatenated skip channels of any width divide evenly).
fn groups(c: i64) -> i64 {
    let mut g = (c / 4).clamp(1, 32);
    while c % g != 0 {
        g -= 1;
    }
    g
}

fn gn(p: nn::Path, c: i64) -> nn::GroupNorm {
    nn::group_norm(p, groups(c), c, Default::default())
}

/// GroupNorm -> SiLU -> conv, plus the embedding as a per-channel shift, twice, with a skip.
struct ResBlock {
    n1: nn::GroupNorm,
    c1: nn::Conv2D,
    t: nn::Linear,
    n2: nn::GroupNorm,
    c2: nn::Conv2D,
    skip: Option<nn::Conv2D>,
}

impl ResBlock {
    fn new(p: &nn::Path, i: i64, o: i64, emb: i64) -> Self {
        ResBlock {
            n1: gn(p / "norm1", i),
            c1: conv(p / "conv1", i, o, 3, 1),
            t: nn::linear(p / "temb", emb, o, Default::default()),
            n2: gn(p / "norm2", o),
            c2: conv(p / "conv2", o, o, 3, 1),
            skip: (i != o).then(|| conv(p / "skip", i, o, 1, 1)),
        }
    }
    fn forward(&self, x: &Tensor, emb: &Tensor) -> Tensor {
        let h = self.c1.forward(&self.n1.forward(x).silu());
        let h = h + self.t.forward(emb).unsqueeze(-1).unsqueeze(-1);
        let h = self.c2.forward(&self.n2.forward(&h).silu());
        match &self.skip {
            Some(s) => s.forward(x) + h,
            None => x + h,
        }
    }
}

/// Single-head self-attention over the pixels, with a residual connection.
struct Attention {
    norm: nn::GroupNorm,
    qkv: nn::Conv2D,
    proj: nn::Conv2D,
}

impl Attention {
    fn new(p: &nn::Path, c: i64) -> Self {
        Attention {
            norm: gn(p / "norm", c),
            qkv: conv(p / "qkv", c, 3 * c, 1, 1),
            proj: conv(p / "proj", c, c, 1, 1),
        }
    }
    fn forward(&self, x: &Tensor) -> Tensor {
        let (n, c, h, w) = x.size4().unwrap();
        let qkv = self
            .qkv
            .forward(&self.norm.forward(x))
            .reshape([n, 3, c, h * w]);
        let (q, k, v) = (qkv.select(1, 0), qkv.select(1, 1), qkv.select(1, 2));
        let att = (q.transpose(1, 2).matmul(&k) / (c as f64).sqrt()).softmax(-1, x.kind());
        let out = v.matmul(&att.transpose(1, 2)).reshape([n, c, h, w]);
        x + self.proj.forward(&out)
    }
}

// A handful per network, built once: the size difference between variants does not matter.
#[allow(clippy::large_enum_variant)]
enum UnetLayer {
    Res(ResBlock, Option<Attention>),
    Down(nn::Conv2D),
    Up(nn::Conv2D),
}

/// A compact DDPM-style U-Net.
struct Unet {
    emb: NoiseEmbedding,
    inp: nn::Conv2D,
    down: Vec<UnetLayer>,
    mid: (ResBlock, Attention, ResBlock),
    up: Vec<UnetLayer>,
    out_norm: nn::GroupNorm,
    out: nn::Conv2D,
}

impl Unet {
    #[allow(clippy::too_many_arguments)]
    fn new(
        p: &nn::Path,
        shape: &[i64],
        ch: i64,
        mult: &[i64],
        blocks: usize,
        attn: &[i64],
        nf: i64,
        scale: f64,
        classes: usize,
        out_mult: i64,
    ) -> Self {
        let (c_in, res0) = (shape[0], shape[1]);
        let e = 4 * ch;
        let emb = NoiseEmbedding::new(&(p / "emb"), nf, scale, e, classes);
        let inp = conv(p / "in", c_in, ch, 3, 1);
        let (mut down, mut skips) = (Vec::new(), vec![ch]);
        let (mut cur, mut res) = (ch, res0);
        for (lvl, m) in mult.iter().enumerate() {
            for b in 0..blocks {
                let o = ch * m;
                let rb = ResBlock::new(&(p / format!("down{lvl}_{b}")), cur, o, e);
                let at = attn
                    .contains(&res)
                    .then(|| Attention::new(&(p / format!("down{lvl}_{b}_attn")), o));
                down.push(UnetLayer::Res(rb, at));
                cur = o;
                skips.push(cur);
            }
            if lvl + 1 < mult.len() {
                down.push(UnetLayer::Down(conv(
                    p / format!("down{lvl}_pool"),
                    cur,
                    cur,
                    3,
                    2,
                )));
                skips.push(cur);
                res /= 2;
            }
        }
        let mid = (
            ResBlock::new(&(p / "mid1"), cur, cur, e),
            Attention::new(&(p / "mid_attn"), cur),
            ResBlock::new(&(p / "mid2"), cur, cur, e),
        );
        let mut up = Vec::new();
        for (lvl, m) in mult.iter().enumerate().rev() {
            for b in 0..=blocks {
                let o = ch * m;
                let s = skips.pop().unwrap();
                let rb = ResBlock::new(&(p / format!("up{lvl}_{b}")), cur + s, o, e);
                let at = attn
                    .contains(&res)
                    .then(|| Attention::new(&(p / format!("up{lvl}_{b}_attn")), o));
                up.push(UnetLayer::Res(rb, at));
                cur = o;
            }
            if lvl > 0 {
                up.push(UnetLayer::Up(conv(
                    p / format!("up{lvl}_upsample"),
                    cur,
                    cur,
                    3,
                    1,
                )));
                res *= 2;
            }
        }
        Unet {
            emb,
            inp,
            down,
            mid,
            up,
            out_norm: gn(p / "out_norm", cur),
            out: conv(p / "out", cur, out_mult * c_in, 3, 1),
        }
    }

    fn forward(&self, x: &Tensor, c_noise: &Tensor, labels: Option<&Tensor>) -> Tensor {
        let emb = self.emb.forward(c_noise, labels).silu();
        let mut h = self.inp.forward(x);
        let mut skips = vec![h.shallow_clone()];
        for layer in &self.down {
            h = match layer {
                UnetLayer::Res(rb, at) => {
                    let h = rb.forward(&h, &emb);
                    at.as_ref().map_or(h.shallow_clone(), |a| a.forward(&h))
                }
                UnetLayer::Down(c) => c.forward(&h),
                UnetLayer::Up(_) => unreachable!(),
            };
            skips.push(h.shallow_clone());
        }
        h = self.mid.0.forward(&h, &emb);
        h = self.mid.1.forward(&h);
        h = self.mid.2.forward(&h, &emb);
        for layer in &self.up {
            h = match layer {
                UnetLayer::Res(rb, at) => {
                    let s = skips.pop().unwrap();
                    let h = rb.forward(&Tensor::cat(&[h, s], 1), &emb);
                    at.as_ref().map_or(h.shallow_clone(), |a| a.forward(&h))
                }
                UnetLayer::Up(c) => {
                    c.forward(&h.upsample_nearest2d([h.size()[2] * 2, h.size()[3] * 2], None, None))
                }
                UnetLayer::Down(_) => unreachable!(),
            };
        }
        self.out.forward(&self.out_norm.forward(&h).silu())
    }
}

#[allow(clippy::large_enum_variant)] // one per network
enum Body {
    /// The trained backbones; with `learned_sigmas` their output has twice the channels, as a
    /// card's (`Network::new`).
    Mlp(Mlp, bool),
    Unet(Unet, bool),
    /// A TorchScript module (a model card, [`crate::card`]): `forward(x_in, c_noise)`, or
    /// `forward(x_in, c_noise, labels)` for a conditional one; with `learned_sigmas` its output
    /// has twice the channels (dim 1) and the first half is the prediction.
    Script {
        module: tch::CModule,
        learned_sigmas: bool,
    },
}

/// A preconditioned backbone: `D(x; sigma) = c_skip x + c_out F(c_in x; c_noise)`.
pub struct Network {
    pub precond: Precond,
    /// Per-sample shape: `[d]` or `[C, H, W]`.
    pub shape: Vec<i64>,
    /// Number of classes for conditional models (0: unconditional).
    pub num_classes: usize,
    body: Body,
    device: Device,
    /// CUDA graphs of the whole network call, one per batch shape (the per-sample sigma is a
    /// captured tensor).
    graphs: crate::cuda::Graphs,
    /// The same for calls that also return the learned variance (`D` and `v` concatenated).
    graphs_with_variance: crate::cuda::Graphs,
    /// The preconditioning's lookup table ([`Precond::levels`]) on the device, float32.
    levels: Option<Tensor>,
}

impl Network {
    /// Build the variables under `p` (their names become checkpoint keys).
    pub fn new(
        p: &nn::Path,
        precond: &Precond,
        backbone: &Backbone,
        shape: &[i64],
        num_classes: usize,
    ) -> Self {
        Network::with_variance_output(p, precond, backbone, shape, num_classes, false)
    }

    /// [`Self::new`], and with `learned_sigmas` a backbone whose output has twice the channels
    /// (dim 1): the prediction and a learned variance output `v` (improved DDPM's
    /// `learn_sigma`), trained by the `ddpm` loss's variational bound ([`crate::loss`]).
    pub fn with_variance_output(
        p: &nn::Path,
        precond: &Precond,
        backbone: &Backbone,
        shape: &[i64],
        num_classes: usize,
        learned_sigmas: bool,
    ) -> Self {
        let out_mult = if learned_sigmas { 2 } else { 1 };
        let body = match backbone {
            Backbone::Mlp {
                hidden,
                depth,
                fourier_features,
                fourier_scale,
            } => Body::Mlp(
                Mlp::new(
                    p,
                    shape[0],
                    *hidden,
                    *depth,
                    *fourier_features,
                    *fourier_scale,
                    num_classes,
                    out_mult,
                ),
                learned_sigmas,
            ),
            Backbone::Unet {
                channels,
                channel_mult,
                blocks,
                attn_resolutions,
                fourier_features,
                fourier_scale,
            } => Body::Unet(
                Unet::new(
                    p,
                    shape,
                    *channels,
                    channel_mult,
                    *blocks,
                    attn_resolutions,
                    *fourier_features,
                    *fourier_scale,
                    num_classes,
                    out_mult,
                ),
                learned_sigmas,
            ),
        };
        Network::with_body(precond, shape, num_classes, body, p.device())
    }

    fn with_body(
        precond: &Precond,
        shape: &[i64],
        num_classes: usize,
        body: Body,
        device: Device,
    ) -> Self {
        let levels = precond.levels().map(|l| {
            Tensor::from_slice(&l)
                .to_kind(Kind::Float)
                .to_device(device)
        });
        Network {
            precond: precond.clone(),
            shape: shape.to_vec(),
            num_classes,
            body,
            device,
            graphs: Default::default(),
            graphs_with_variance: Default::default(),
            levels,
        }
    }

    /// A TorchScript module as the backbone (already on `device`, float32, in eval mode).
    pub fn scripted(
        module: tch::CModule,
        learned_sigmas: bool,
        precond: &Precond,
        shape: &[i64],
        num_classes: usize,
        device: Device,
    ) -> Self {
        let body = Body::Script {
            module,
            learned_sigmas,
        };
        Network::with_body(precond, shape, num_classes, body, device)
    }

    /// `D(x; sigma)`, and with `with_variance` the learned variance output, for a batch with
    /// one sigma. On the network's CUDA device the call replays a CUDA graph of the whole network
    /// call (one per batch shape, captured on its first call; with the variance, `D` and `v`
    /// concatenated along the channels in a graph of their own); eager elsewhere (CPU, graphs
    /// off, a failed capture).
    fn call(
        &self,
        x: &Tensor,
        sigma: f64,
        with_variance: bool,
    ) -> Result<(Tensor, Option<Tensor>), SolverError> {
        self.check(x)?;
        let c = x.size()[1];
        if x.device() == self.device {
            let graphs = if with_variance {
                &self.graphs_with_variance
            } else {
                &self.graphs
            };
            let graphed = graphs
                .call(x, sigma, sigma_batch, |x, s| {
                    let (d, v) = self
                        .try_forward_parts(x, s, None)
                        .unwrap_or_else(|e| panic!("{e}"));
                    match v {
                        Some(v) if with_variance => Tensor::cat(&[d, v], 1),
                        _ => d,
                    }
                })
                .map_err(|err| SolverError::Model(err.to_string()))?;
            if let Some(out) = graphed {
                return Ok(if with_variance {
                    (out.narrow(1, 0, c), Some(out.narrow(1, c, c)))
                } else {
                    (out, None)
                });
            }
        }
        let (d, v) = tch::no_grad(|| {
            self.try_forward_parts(&x.to_device(self.device), &sigma_batch(sigma, x), None)
        })?;
        let back = |t: Tensor| t.to_device(x.device()).to_kind(x.kind());
        Ok((back(d), v.filter(|_| with_variance).map(back)))
    }

    /// `D(x; sigma)` with per-sample `sigma` (`[N]`) and optional labels (`[N]`, int64; the value
    /// `num_classes` means "no class"); differentiable; computed in float32.
    pub fn forward(&self, x: &Tensor, sigma: &Tensor, labels: Option<&Tensor>) -> Tensor {
        self.try_forward(x, sigma, labels)
            .unwrap_or_else(|e| panic!("{e}"))
    }

    /// [`Self::forward`], with a TorchScript backbone's failure (an exception in its code, an
    /// output of the wrong shape) as an error.
    pub fn try_forward(
        &self,
        x: &Tensor,
        sigma: &Tensor,
        labels: Option<&Tensor>,
    ) -> Result<Tensor, SolverError> {
        Ok(self.try_forward_parts(x, sigma, labels)?.0)
    }

    /// Whether the backbone has a learned variance output (a card with `learned_sigmas`, or a
    /// network trained with `model.learned_sigmas`).
    pub fn has_learned_variance(&self) -> bool {
        matches!(
            self.body,
            Body::Script {
                learned_sigmas: true,
                ..
            } | Body::Mlp(_, true)
                | Body::Unet(_, true)
        )
    }

    /// [`Self::try_forward`] and, for a backbone with learned variances, the second half of its
    /// output channels as it came (the variance output `v`, float32).
    pub fn try_forward_parts(
        &self,
        x: &Tensor,
        sigma: &Tensor,
        labels: Option<&Tensor>,
    ) -> Result<(Tensor, Option<Tensor>), SolverError> {
        let xf = x.to_kind(Kind::Float);
        let sf = sigma.to_kind(Kind::Float);
        let levels = self.levels.as_ref().filter(|l| l.device() == sf.device());
        let c = self.precond.coefs_with(&sf, levels);
        let xin = &xf * per_sample(&c.inp, &xf);
        // An unconditional call of a conditional model uses the "no class" label.
        let null;
        let labels = match (labels, self.num_classes) {
            (None, k) if k > 0 => {
                null = Tensor::full([x.size()[0]], k as i64, (Kind::Int64, x.device()));
                Some(&null)
            }
            (l, _) => l,
        };
        let mut variance = None;
        let f = match &self.body {
            Body::Mlp(m, learned) => {
                split_variance(m.forward(&xin, &c.noise, labels), *learned, &mut variance)
            }
            Body::Unet(u, learned) => {
                split_variance(u.forward(&xin, &c.noise, labels), *learned, &mut variance)
            }
            Body::Script {
                module,
                learned_sigmas,
            } => {
                let out = match labels {
                    Some(l) => module.forward_ts(&[&xin, &c.noise, l]),
                    None => module.forward_ts(&[&xin, &c.noise]),
                }
                .map_err(|e| {
                    SolverError::Model(format!(
                        "the TorchScript module failed: {}",
                        torch_message(&e.to_string())
                    ))
                })?;
                // With learned variances the output has exactly twice the input's channels.
                let (out, v) = if *learned_sigmas
                    && out.dim() >= 2
                    && xin.dim() >= 2
                    && out.size()[1] == 2 * xin.size()[1]
                {
                    let c = xin.size()[1];
                    (out.narrow(1, 0, c), Some(out.narrow(1, c, c)))
                } else {
                    (out, None)
                };
                if *learned_sigmas && v.is_none() {
                    return Err(SolverError::Shape(format!(
                        "learned_sigmas = true, but the TorchScript module returned shape {:?} for input {:?} (it must return twice the channels, dim 1)",
                        out.size(),
                        xin.size()
                    )));
                }
                if out.size() != xin.size() {
                    return Err(SolverError::Shape(format!(
                        "the TorchScript module returned shape {:?} for input {:?}{}",
                        out.size(),
                        xin.size(),
                        if *learned_sigmas {
                            " (after taking the first half of dim 1: learned_sigmas)"
                        } else {
                            ""
                        }
                    )));
                }
                variance = v.map(|v| v.to_kind(Kind::Float));
                out.to_kind(Kind::Float)
            }
        };
        Ok((
            per_sample(&c.skip, &xf) * &xf + per_sample(&c.out, &xf) * f,
            variance,
        ))
    }

    pub fn device(&self) -> Device {
        self.device
    }

    fn check(&self, x: &Tensor) -> Result<(), SolverError> {
        let size = x.size();
        if size.len() != self.shape.len() + 1 || size[1..] != self.shape[..] {
            return Err(SolverError::Shape(format!(
                "the network expects samples of shape [N, {:?}], got {size:?}",
                self.shape
            )));
        }
        Ok(())
    }
}

/// A trained backbone's output: with `learned`, its first half along dim 1 (the prediction),
/// the second half stored in `variance`.
fn split_variance(out: Tensor, learned: bool, variance: &mut Option<Tensor>) -> Tensor {
    if !learned {
        return out;
    }
    let c = out.size()[1] / 2;
    *variance = Some(out.narrow(1, c, c));
    out.narrow(1, 0, c)
}

impl Denoiser for Network {
    fn denoise(&self, x: &Tensor, sigma: f64) -> Result<Tensor, SolverError> {
        Ok(self.call(x, sigma, false)?.0)
    }

    fn denoise_with_variance(
        &self,
        x: &Tensor,
        sigma: f64,
    ) -> Result<(Tensor, Option<Tensor>), SolverError> {
        self.call(x, sigma, self.has_learned_variance())
    }
}

/// The limit on the denoised estimate that `--clip-denoised R` or `--dynamic-threshold
/// RATIO[,MAX]` asks for (MAX 1 by default), checked.
pub fn parse_threshold(
    clip: Option<f64>,
    dynamic: Option<&str>,
) -> anyhow::Result<Option<scoreflow_solvers::Threshold>> {
    let dynamic = dynamic
        .map(|text| {
            let bad = || anyhow::anyhow!("--dynamic-threshold takes RATIO[,MAX], got '{text}'");
            let num = |s: &str| s.trim().parse::<f64>().map_err(|_| bad());
            match text.split(',').collect::<Vec<_>>()[..] {
                [r] => Ok((num(r)?, 1.0)),
                [r, m] => Ok((num(r)?, num(m)?)),
                _ => Err(bad()),
            }
        })
        .transpose()?;
    Ok(scoreflow_solvers::Threshold::from_options(clip, dynamic)?)
}

/// One line from a libtorch error: for an exception raised in TorchScript code, its last
/// `...Error: ...` line and where in the module's original source it was raised; otherwise the
/// first line (the rest is a C++ backtrace).
pub fn torch_message(s: &str) -> String {
    let s = s.trim_start_matches("Internal torch error: ");
    let lines: Vec<&str> = s.lines().collect();
    let error = lines.iter().rev().find(|l| {
        l.split_once(": ")
            .is_some_and(|(head, _)| head.ends_with("Error") && !head.contains(' '))
    });
    match error {
        Some(e) => {
            let place = lines
                .iter()
                .rev()
                .find(|l| l.trim_start().starts_with("File \""))
                .map(|l| format!(" (at {})", l.trim()))
                .unwrap_or_default();
            format!("{}{place}", e.trim())
        }
        None => lines.first().unwrap_or(&"").trim().to_string(),
    }
}

/// Whether `(lo, hi]` is a guidance interval: finite, `0 <= lo < hi`.
pub fn valid_interval(lo: f64, hi: f64) -> bool {
    lo.is_finite() && hi.is_finite() && 0.0 <= lo && lo < hi
}

/// `LO,HI` of `--guidance-interval`: two finite levels with `0 <= LO < HI`.
/// The flags `--class`, `--guidance` and `--guidance-interval` of `sample` and
/// `optimize-grid` for a network (`None`: an exact model): the guided denoiser where a class is
/// given, `None` where no flag is; an error for guidance without a class, for a network
/// without classes, for a class it does not have.
pub fn guided_from_flags<'a>(
    net: Option<&'a Network>,
    class: Option<&str>,
    guidance: Option<f64>,
    interval: Option<&str>,
) -> anyhow::Result<Option<Guided<'a>>> {
    if let Some(w) = guidance.filter(|w| !w.is_finite()) {
        anyhow::bail!("--guidance must be finite, got {w}");
    }
    if class.is_none() && guidance.is_none() && interval.is_none() {
        return Ok(None);
    }
    let Some(net) = net.filter(|n| n.num_classes > 0) else {
        anyhow::bail!("--class and --guidance need a class-conditional checkpoint");
    };
    let interval = interval.map(parse_interval).transpose()?;
    let Some(c) = class else {
        anyhow::bail!("--guidance and --guidance-interval need --class");
    };
    let class = match c {
        "each" => Classes::Cycle,
        _ => match c.parse::<usize>() {
            Ok(k) if k < net.num_classes => Classes::One(k as i64),
            _ => anyhow::bail!(
                "--class {c}: the model has classes 0..{} (or each: sample i of class i mod {})",
                net.num_classes - 1,
                net.num_classes
            ),
        },
    };
    Ok(Some(Guided {
        net,
        class,
        guidance: guidance.unwrap_or(1.0),
        interval,
    }))
}

pub fn parse_interval(s: &str) -> anyhow::Result<(f64, f64)> {
    let v: Vec<f64> = s
        .split(',')
        .map(|p| p.trim().parse::<f64>())
        .collect::<Result<_, _>>()
        .map_err(|_| {
            anyhow::anyhow!("--guidance-interval must be LO,HI (two numbers), got '{s}'")
        })?;
    match v[..] {
        [lo, hi] if valid_interval(lo, hi) => Ok((lo, hi)),
        _ => anyhow::bail!(
            "--guidance-interval must be LO,HI with 0 <= LO < HI, both finite, got '{s}'"
        ),
    }
}

/// Classifier-free guidance (Ho & Salimans 2022) for one class (or every class in turn,
/// [`Classes::Cycle`]): `D = D_u + w (D_c - D_u)`, `w = 1` is the plain conditional model, `w = 0`
/// the unconditional one. Both branches run as one batched network call, counted as one
/// evaluation; at `w = 1` only the conditional one runs.
///
/// With `interval = Some((lo, hi))` the guidance applies only at noise levels `lo < sigma <= hi`
/// and the plain conditional model (one branch, `w = 1`) elsewhere: Kynkaanniemi et al. (2024),
/// "Applying Guidance in a Limited Interval Improves Sample and Distribution Quality in Diffusion
/// Models".
pub struct Guided<'a> {
    pub net: &'a Network,
    pub class: Classes,
    pub guidance: f64,
    pub interval: Option<(f64, f64)>,
}

/// The classes a guided batch samples.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Classes {
    /// Every sample of this class.
    One(i64),
    /// Sample `i` of class `i mod K` (equal shares of the `K` classes).
    Cycle,
}

impl Classes {
    /// The labels of a batch of `n` on `dev`.
    pub(crate) fn labels(self, n: i64, num_classes: usize, dev: Device) -> Tensor {
        match self {
            Classes::One(k) => Tensor::full([n], k, (Kind::Int64, dev)),
            Classes::Cycle => {
                Tensor::arange(n, (Kind::Int64, dev)).remainder(num_classes.max(1) as i64)
            }
        }
    }
}

impl Denoiser for Guided<'_> {
    fn denoise(&self, x: &Tensor, sigma: f64) -> Result<Tensor, SolverError> {
        Ok(self.denoise_with_variance(x, sigma)?.0)
    }

    /// The guided `D` and the conditional branch's variance output (as GLIDE's sampler takes it).
    fn denoise_with_variance(
        &self,
        x: &Tensor,
        sigma: f64,
    ) -> Result<(Tensor, Option<Tensor>), SolverError> {
        let (d, v, _) = self.branches(x, sigma, false)?;
        Ok((d, v))
    }

    /// The guided `D` and the unconditional branch's `D_u`, both branches run even at `w = 1`
    /// (CFG++ renoises with `D_u`); outside the guidance interval the conditional branch alone
    /// and no `D_u`.
    fn denoise_guided(
        &self,
        x: &Tensor,
        sigma: f64,
    ) -> Result<(Tensor, Option<Tensor>), SolverError> {
        let (d, _, u) = self.branches(x, sigma, true)?;
        Ok((d, u))
    }
}

impl Guided<'_> {
    /// One batched call: the guided `D`, the conditional branch's variance output and, where
    /// both branches ran, the unconditional `D_u`. The conditional branch alone where `w = 1`
    /// (unless `both`) or outside the guidance interval.
    #[allow(clippy::type_complexity)]
    fn branches(
        &self,
        x: &Tensor,
        sigma: f64,
        both: bool,
    ) -> Result<(Tensor, Option<Tensor>, Option<Tensor>), SolverError> {
        self.net.check(x)?;
        let n = x.size()[0];
        let dev = self.net.device;
        let back = |t: Tensor| t.to_device(x.device()).to_kind(x.kind());
        if (self.guidance == 1.0 && !both)
            || self
                .interval
                .is_some_and(|(lo, hi)| !(sigma > lo && sigma <= hi))
        {
            // w = 1, or outside the interval: the conditional branch alone.
            let labels = self.class.labels(n, self.net.num_classes, dev);
            let (d, v) = tch::no_grad(|| {
                self.net
                    .try_forward_parts(&x.to_device(dev), &sigma_batch(sigma, x), Some(&labels))
            })?;
            return Ok((back(d), v.map(back), None));
        }
        let xx = Tensor::cat(&[x, x], 0).to_device(dev);
        let labels = Tensor::cat(
            &[
                self.class.labels(n, self.net.num_classes, dev),
                Tensor::full([n], self.net.num_classes as i64, (Kind::Int64, dev)),
            ],
            0,
        );
        let (out, v) = tch::no_grad(|| {
            self.net
                .try_forward_parts(&xx, &sigma_batch(sigma, &xx), Some(&labels))
        })?;
        let (cond, uncond) = (out.narrow(0, 0, n), out.narrow(0, n, n));
        let d = &uncond + (cond - &uncond) * self.guidance;
        Ok((
            back(d),
            v.map(|v| back(v.narrow(0, 0, n))),
            Some(back(uncond)),
        ))
    }
}

#[cfg(test)]
mod weight_count_tests {
    use super::{Backbone, Network};
    use tch::nn;

    #[test]
    fn weights_counts_what_the_constructors_build() {
        // The count the size check uses equals the trainable numbers of the built network: an
        // MLP and U-Nets with and without attention, at several widths and levels.
        let cases: Vec<(Backbone, Vec<i64>)> = vec![
            (
                toml::from_str("kind = \"mlp\"\nhidden = 96\ndepth = 3").unwrap(),
                vec![2],
            ),
            (
                toml::from_str("kind = \"unet\"\nchannels = 16\nchannel_mult = [1, 2]\nblocks = 1\nattn_resolutions = [4]").unwrap(),
                vec![1, 8, 8],
            ),
            (
                toml::from_str("kind = \"unet\"\nchannels = 8\nchannel_mult = [1, 2, 3]\nblocks = 2\nattn_resolutions = [8, 2]").unwrap(),
                vec![3, 8, 8],
            ),
        ];
        // Building a network draws its initial weights from libtorch's process-wide generator:
        // take it, or a seeded draw in a test beside this one (fresh_rows) sees other numbers.
        let _turn = crate::train::exclusive_rng();
        for (backbone, shape) in cases {
            let vs = nn::VarStore::new(tch::Device::Cpu);
            let precond = crate::precond::Precond::default();
            let _net = Network::new(&vs.root(), &precond, &backbone, &shape, 0);
            let built: i64 = vs
                .trainable_variables()
                .iter()
                .map(|t| t.numel() as i64)
                .sum();
            assert_eq!(backbone.weights(&shape), built as f64, "{backbone:?}");
        }
    }
}
