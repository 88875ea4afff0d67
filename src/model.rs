//! Exact models named on the command line: `gmm:FILE.json`, `gaussian:FILE.json`, or a
//! built-in (`builtin:gmm8`).

use anyhow::{bail, Context, Result};
use scoreflow_solvers::error::Result as SolverResult;
use scoreflow_solvers::{Denoiser, GaussianDenoiser, GaussianMixture, SolverError};
use serde::Deserialize;
use std::path::Path;
use tch::{Device, Tensor};

/// A mixture file: `{"weights": [..], "means": [[..], ..], "stds": [..]}`, each std a scalar or
/// a per-dimension list.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MixtureFile {
    pub weights: Vec<f64>,
    pub means: Vec<Vec<f64>>,
    pub stds: Vec<StdEntry>,
}

#[derive(Deserialize)]
#[serde(untagged)]
pub enum StdEntry {
    Scalar(f64),
    PerDim(Vec<f64>),
}

/// A Gaussian file: `{"mean": [..], "covariance": [[..], ..]}`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GaussianFile {
    pub mean: Vec<f64>,
    #[serde(alias = "cov")]
    pub covariance: Vec<Vec<f64>>,
}

/// An exact model: what it is and its denoiser.
pub enum ExactModel {
    Mixture(Graphed<GaussianMixture>),
    Gaussian(Graphed<GaussianDenoiser>),
}

/// An exact denoiser whose calls on CUDA tensors replay a CUDA graph per batch shape (with
/// sigma^2 as a captured tensor), as trained networks do; eager elsewhere. Dereferences to the
/// model.
pub struct Graphed<D> {
    inner: D,
    graphs: crate::cuda::Graphs,
}

impl<D> Graphed<D> {
    pub fn new(inner: D) -> Self {
        Graphed {
            inner,
            graphs: Default::default(),
        }
    }
}

impl<D> std::ops::Deref for Graphed<D> {
    type Target = D;
    fn deref(&self) -> &D {
        &self.inner
    }
}

/// `D(x; sigma)` with `sigma^2` as a 0-dim tensor (the exact denoisers' graph entry point).
pub trait DenoiseSigma2: Denoiser {
    fn denoise_sigma2(&self, x: &Tensor, sigma2: &Tensor) -> SolverResult<Tensor>;
    fn dim(&self) -> usize;
}

impl DenoiseSigma2 for GaussianMixture {
    fn dim(&self) -> usize {
        GaussianMixture::dim(self)
    }
    fn denoise_sigma2(&self, x: &Tensor, sigma2: &Tensor) -> SolverResult<Tensor> {
        GaussianMixture::denoise_sigma2(self, x, sigma2)
    }
}

impl DenoiseSigma2 for GaussianDenoiser {
    fn dim(&self) -> usize {
        GaussianDenoiser::dim(self)
    }
    fn denoise_sigma2(&self, x: &Tensor, sigma2: &Tensor) -> SolverResult<Tensor> {
        GaussianDenoiser::denoise_sigma2(self, x, sigma2)
    }
}

impl<D: DenoiseSigma2> Denoiser for Graphed<D> {
    fn denoise(&self, x: &Tensor, sigma: f64) -> SolverResult<Tensor> {
        // Input of the wrong shape goes the eager way, which reports it.
        let size = x.size();
        if size.len() != 2 || size[1] != self.inner.dim() as i64 {
            return self.inner.denoise(x, sigma);
        }
        let graphed = self.graphs.call(
            x,
            sigma * sigma,
            |s2, x| Tensor::full([], s2, (x.kind(), x.device())),
            |x, s2| {
                self.inner
                    .denoise_sigma2(x, s2)
                    .unwrap_or_else(|e| panic!("{e}"))
            },
        );
        match graphed {
            Ok(Some(out)) => Ok(out),
            Ok(None) => self.inner.denoise(x, sigma),
            Err(e) => Err(SolverError::Model(e.to_string())),
        }
    }
}

impl ExactModel {
    pub fn dim(&self) -> usize {
        match self {
            ExactModel::Mixture(m) => m.dim(),
            ExactModel::Gaussian(g) => g.dim(),
        }
    }
    pub fn denoiser(&self) -> &dyn Denoiser {
        match self {
            ExactModel::Mixture(m) => m,
            ExactModel::Gaussian(g) => g,
        }
    }
    pub fn mixture(&self) -> Option<&GaussianMixture> {
        match self {
            ExactModel::Mixture(m) => Some(&**m),
            ExactModel::Gaussian(_) => None,
        }
    }
}

fn read_json<T: for<'de> Deserialize<'de>>(path: &Path, what: &str) -> Result<T> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read {what} file {}", path.display()))?;
    serde_json::from_str(&text)
        .with_context(|| format!("{what} file {} is not valid", path.display()))
}

/// The built-in 2-D test problem `gmm8`: 8 equal-weight modes of std 0.2 on a circle of radius 2.
pub fn builtin_gmm8(device: Device) -> Result<GaussianMixture> {
    Ok(GaussianMixture::ring(8, 2.0, 0.2, device)?)
}

pub fn load_mixture(path: &Path, device: Device) -> Result<GaussianMixture> {
    let f: MixtureFile = read_json(path, "mixture")?;
    let stds = f
        .stds
        .into_iter()
        .map(|s| match s {
            StdEntry::Scalar(v) => vec![v],
            StdEntry::PerDim(v) => v,
        })
        .collect();
    GaussianMixture::new(f.weights, f.means, stds, device)
        .with_context(|| format!("mixture file {}", path.display()))
}

pub fn load_gaussian(path: &Path, device: Device) -> Result<GaussianDenoiser> {
    let f: GaussianFile = read_json(path, "Gaussian")?;
    GaussianDenoiser::new(f.mean, f.covariance, device)
        .with_context(|| format!("Gaussian file {}", path.display()))
}

/// Parse `--denoiser`.
pub fn parse(spec: &str, device: Device) -> Result<ExactModel> {
    let (kind, arg) = spec.split_once(':').unwrap_or((spec, ""));
    Ok(match kind {
        "gmm" if !arg.is_empty() => {
            ExactModel::Mixture(Graphed::new(load_mixture(Path::new(arg), device)?))
        }
        "gaussian" if !arg.is_empty() => {
            ExactModel::Gaussian(Graphed::new(load_gaussian(Path::new(arg), device)?))
        }
        "builtin" if arg == "gmm8" => ExactModel::Mixture(Graphed::new(builtin_gmm8(device)?)),
        _ => bail!("unknown denoiser '{spec}' (expected gmm:FILE.json, gaussian:FILE.json or builtin:gmm8)"),
    })
}
