//! Model cards: a network exported from PyTorch as TorchScript, and how scoreflow wraps it into
//! a denoiser. A card is a TOML file:
//!
//! ```toml
//! torchscript = "eps_model.pt"   # relative to the card's folder
//! shape = [3, 32, 32]            # per-sample shape
//! classes = 0                    # > 0: forward(x_in, c_noise, labels), label `classes` = none
//! learned_sigmas = false         # the output has twice the channels; the first half is used
//! [precond]                      # as in training configs, or "discrete" / "v-diffusion"
//! kind = "discrete"
//! prediction = "eps"
//! [data]                         # optional: data for the sw2/mmd metrics and for nll
//! kind = "gmm8"
//! ```
//!
//! The module's `forward(x_in, c_noise)` gets float32 `x_in = c_in x` (`[N, ...shape]`) and
//! `c_noise` (`[N]`) and returns `F` of `x_in`'s shape; the network is then
//! `D = c_skip x + c_out F` (see [`crate::precond`]).

use crate::data::DataConfig;
use crate::nn::Network;
use crate::precond::{sigma_batch, Precond};
use crate::train;
use anyhow::{anyhow, bail, Context, Result};
use serde::Deserialize;
use std::path::{Path, PathBuf};
use tch::{Device, Kind, Tensor};

/// A model card (see the module documentation).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelCard {
    /// The TorchScript file (`torch.jit.trace` or `torch.jit.script`, then `.save`), relative to
    /// the card's folder.
    pub torchscript: PathBuf,
    /// Per-sample shape: `[d]` or `[C, H, W]`.
    pub shape: Vec<i64>,
    /// Number of classes of a class-conditional module (0: unconditional).
    #[serde(default)]
    pub classes: usize,
    /// The module outputs twice the channels (a learned variance, as guided-diffusion's
    /// models); the first half is the prediction (k-diffusion's `has_learned_sigmas`).
    #[serde(default)]
    pub learned_sigmas: bool,
    pub precond: Precond,
    /// Data the model was trained on, for the metrics that compare with data and for `nll` (a
    /// data file's path, like `torchscript`, relative to the card's folder).
    #[serde(default)]
    pub data: Option<DataConfig>,
    /// Seed of `data` (for the data kinds that draw samples).
    #[serde(default)]
    pub seed: u64,
}

/// Whether `path` names a model card (a `.toml` file) rather than a checkpoint.
pub fn is_card(path: &Path) -> bool {
    path.extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("toml"))
}

impl ModelCard {
    /// Read and check a card; unknown keys and wrong types are errors naming the key and line.
    pub fn load(path: &Path) -> Result<ModelCard> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read model card {}", path.display()))?;
        let mut card: ModelCard = toml::from_str(&text).map_err(|e| {
            anyhow!(
                "model card {}: {}",
                path.display(),
                e.to_string().trim_end().replace('\n', " ")
            )
        })?;
        let ctx = || format!("model card {}", path.display());
        card.precond.validate().with_context(ctx)?;
        let elements = card
            .shape
            .iter()
            .try_fold(1i64, |acc, &d| acc.checked_mul(d))
            .unwrap_or(i64::MAX);
        if elements > 1 << 28 {
            return Err(anyhow!(
                "shape {:?} has {elements} elements per sample, more than 2^28",
                card.shape
            ))
            .with_context(ctx);
        }
        if card.shape.is_empty() || card.shape.len() > 3 || card.shape.iter().any(|&d| d < 1) {
            return Err(anyhow!(
                "shape must be [d] or [C, H, W] with positive sizes, got {:?}",
                card.shape
            ))
            .with_context(ctx);
        }
        // Paths in a card are relative to its folder.
        if let Some(dir) = path.parent() {
            let resolve = |p: &mut PathBuf| {
                if p.is_relative() {
                    *p = dir.join(&*p);
                }
            };
            resolve(&mut card.torchscript);
            match &mut card.data {
                Some(DataConfig::Mixture { path, .. })
                | Some(DataConfig::Digits { path: Some(path) }) => resolve(path),
                Some(DataConfig::Npy {
                    path,
                    labels,
                    noise,
                }) => {
                    resolve(path);
                    for p in [labels, noise].into_iter().flatten() {
                        resolve(p);
                    }
                }
                _ => {}
            }
        }
        Ok(card)
    }
}

/// Load a card's module onto `dev` (float32, eval mode) and check it with one call on a batch
/// of two: that it takes the inputs and returns the right shape.
pub fn load(path: &Path, dev: Device) -> Result<(Network, ModelCard)> {
    let card = ModelCard::load(path)?;
    let ts = &card.torchscript;
    if ts.is_dir() {
        bail!(
            "model card {}: torchscript names {}, a folder, not a TorchScript file",
            path.display(),
            ts.display()
        );
    }
    if !ts.is_file() {
        bail!(
            "model card {}: TorchScript file {} does not exist",
            path.display(),
            ts.display()
        );
    }
    let mut module = tch::CModule::load_on_device(ts, dev).map_err(|e| {
        anyhow!(
            "model card {}: cannot load TorchScript file {} (corrupt, or not saved by torch.jit): {}",
            path.display(),
            ts.display(),
            crate::nn::torch_message(&e.to_string())
        )
    })?;
    module.to(dev, Kind::Float, false);
    module.set_eval();
    let net = Network::scripted(
        module,
        card.learned_sigmas,
        &card.precond,
        &card.shape,
        card.classes,
        dev,
    );
    let mut shape = vec![2];
    shape.extend_from_slice(&card.shape);
    let x = Tensor::zeros(shape.as_slice(), (Kind::Float, dev));
    let _ = tch::no_grad(|| net.try_forward(&x, &sigma_batch(1.0, &x), None)).map_err(|e| {
        anyhow!(
            "model card {}: a test call of {} failed ({} inputs: x_in {:?} and c_noise [2]{}): {}",
            path.display(),
            ts.display(),
            if card.classes > 0 { 3 } else { 2 },
            x.size(),
            if card.classes > 0 {
                ", labels [2] int64"
            } else {
                ""
            },
            e
        )
    })?;
    Ok((net, card))
}

/// A trained network to sample: a scoreflow checkpoint (its EMA weights) or a model card,
/// and the data it was trained on where that is known.
pub struct Trained {
    pub model: train::Model,
    /// The data config and its seed: the checkpoint's training data, or the card's `[data]`.
    pub data: Option<(DataConfig, u64)>,
}

/// Load `path`: a model card (`.toml`) or a scoreflow checkpoint.
/// Feed a network with a `discrete` preconditioning the nearest step of its chain instead of
/// the fractional one (`quantize = true` of the preconditioning, as ComfyUI's
/// `ModelSamplingDiscrete.timestep` and k-diffusion's `quantize=True` do); an error for any
/// other preconditioning.
pub fn quantize_time(net: &mut Network, path: &Path) -> Result<()> {
    match &mut net.precond {
        Precond::Discrete { quantize, .. } => {
            *quantize = true;
            Ok(())
        }
        _ => bail!(
            "quantize applies to a network with a discrete preconditioning (a step index as its time input); the network of {} takes a continuous noise level",
            path.display()
        ),
    }
}

pub fn load_trained(path: &Path, dev: Device) -> Result<Trained> {
    if is_card(path) {
        let (net, card) = load(path, dev)?;
        Ok(Trained {
            model: train::Model {
                vs: tch::nn::VarStore::new(dev),
                net,
            },
            data: card.data.map(|d| (d, card.seed)),
        })
    } else {
        let (model, cfg) = train::load_for_sampling(path, dev)?;
        Ok(Trained {
            model,
            data: Some((cfg.data, cfg.seed)),
        })
    }
}
