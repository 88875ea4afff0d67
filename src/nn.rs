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

/// The network `F` inside the preconditioning.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case", deny_unknown_fields)]
pub enum Backbone {
    /// An MLP of residual blocks for vector data, with a random Fourier-feature embedding of
    /// `c_noise` (Tancik et al. 2020; Song et al. 2021's `GaussianFourierProjection`).
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
            }
        }
        Ok(())
    }
}

/// Residual MLP: `h = W_in x + E(c_noise)`, then `depth` blocks
/// `h <- h + W2 silu(W1 silu(h) + T_i emb)`, then `W_out silu(h)`.
pub struct Mlp {
    fourier: Tensor,
    emb: nn::Linear,
    inp: nn::Linear,
    blocks: Vec<(nn::Linear, nn::Linear, nn::Linear)>,
    out: nn::Linear,
}

impl Mlp {
    pub fn new(p: &nn::Path, dim: i64, hidden: i64, depth: usize, nf: i64, scale: f64) -> Self {
        // Fixed random frequencies: a buffer, saved with the weights, never trained.
        let fourier = p.zeros_no_train("fourier_freqs", &[nf]);
        tch::no_grad(|| {
            let mut f = fourier.shallow_clone();
            f.copy_(&(Tensor::randn([nf], (Kind::Float, p.device())) * scale));
        });
        let emb = nn::linear(p / "emb", 2 * nf, hidden, Default::default());
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
        let out = nn::linear(p / "out", hidden, dim, Default::default());
        Mlp {
            fourier,
            emb,
            inp,
            blocks,
            out,
        }
    }

    /// `x`: `[N, dim]` (already scaled by `c_in`), `c_noise`: `[N]`.
    pub fn forward(&self, x: &Tensor, c_noise: &Tensor) -> Tensor {
        let arg = c_noise.unsqueeze(1) * self.fourier.unsqueeze(0) * (2.0 * std::f64::consts::PI);
        let feats = Tensor::cat(&[arg.sin(), arg.cos()], 1);
        let temb = self.emb.forward(&feats).silu();
        let mut h = self.inp.forward(x) + &temb;
        for (fc1, t, fc2) in &self.blocks {
            let u = fc1.forward(&h.silu()) + t.forward(&temb);
            h = h + fc2.forward(&u.silu());
        }
        self.out.forward(&h.silu())
    }
}

/// A preconditioned backbone: `D(x; sigma) = c_skip x + c_out F(c_in x; c_noise)`.
pub struct Network {
    pub precond: Precond,
    pub dim: i64,
    mlp: Mlp,
}

impl Network {
    /// Build the variables under `p` (their names become checkpoint keys).
    pub fn new(p: &nn::Path, precond: &Precond, backbone: &Backbone, dim: i64) -> Self {
        let mlp = match backbone {
            Backbone::Mlp {
                hidden,
                depth,
                fourier_features,
                fourier_scale,
            } => Mlp::new(p, dim, *hidden, *depth, *fourier_features, *fourier_scale),
        };
        Network {
            precond: precond.clone(),
            dim,
            mlp,
        }
    }

    /// `D(x; sigma)` with per-sample `sigma` (`[N]`), differentiable; computed in float32.
    pub fn forward(&self, x: &Tensor, sigma: &Tensor) -> Tensor {
        let xf = x.to_kind(Kind::Float);
        let sf = sigma.to_kind(Kind::Float);
        let c = self.precond.coefs(&sf);
        let f = self.mlp.forward(&(&xf * per_sample(&c.inp, &xf)), &c.noise);
        per_sample(&c.skip, &xf) * &xf + per_sample(&c.out, &xf) * f
    }

    pub fn device(&self) -> Device {
        self.mlp.fourier.device()
    }
}

impl Denoiser for Network {
    fn denoise(&self, x: &Tensor, sigma: f64) -> Result<Tensor, SolverError> {
        let size = x.size();
        if size.len() != 2 || size[1] != self.dim {
            return Err(SolverError::Shape(format!(
                "the network expects samples of shape [N, {}], got {size:?}",
                self.dim
            )));
        }
        let out =
            tch::no_grad(|| self.forward(&x.to_device(self.device()), &sigma_batch(sigma, x)));
        Ok(out.to_device(x.device()).to_kind(x.kind()))
    }
}
