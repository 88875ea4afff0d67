//! The model interface: a denoiser `D(x; sigma) ~ E[x0 | x]` on batched tensors, and the two
//! denoisers that are known exactly (Gaussian data and Gaussian mixtures).
//!
//! `x` lives in the scaled space `x / s(t)` with noise level `sigma`; the score is
//! `grad log p(x; sigma) = (D(x; sigma) - x) / sigma^2`.

use crate::error::{Result, SolverError};
use nalgebra::{DMatrix, SymmetricEigen};
use std::cell::Cell;
use tch::{Device, Kind, Tensor};

/// A denoiser `D(x; sigma)`. `x` has shape `[N, ...]`; the output has the same shape, device
/// and kind. One `sigma` for the whole batch.
pub trait Denoiser {
    fn denoise(&self, x: &Tensor, sigma: f64) -> Result<Tensor>;

    /// `D(x; sigma)` and, for a network trained with learned reverse variances (improved DDPM,
    /// Nichol & Dhariwal 2021), its variance output from the same evaluation: `v` of `x`'s
    /// shape, nominally in [-1, 1], which sets the log variance of a DDPM step to
    /// `(1 + v) / 2 log beta + (1 - v) / 2 log beta~` (`beta~` the posterior variance). None for a
    /// denoiser without one (the default).
    fn denoise_with_variance(&self, x: &Tensor, sigma: f64) -> Result<(Tensor, Option<Tensor>)> {
        Ok((self.denoise(x, sigma)?, None))
    }

    /// `D(x; sigma)` and, for a denoiser with classifier-free guidance, the unconditional
    /// branch's estimate `D_u` from the same evaluation (what the CFG++ samplers renoise with).
    /// None for a denoiser without guidance (the default), and where a guided one samples the
    /// conditional branch alone (outside its guidance interval).
    fn denoise_guided(&self, x: &Tensor, sigma: f64) -> Result<(Tensor, Option<Tensor>)> {
        Ok((self.denoise(x, sigma)?, None))
    }

    /// The score `(D(x; sigma) - x) / sigma^2`.
    fn score(&self, x: &Tensor, sigma: f64) -> Result<Tensor> {
        Ok((self.denoise(x, sigma)? - x) / (sigma * sigma))
    }
}

impl<T: Denoiser + ?Sized> Denoiser for &T {
    fn denoise(&self, x: &Tensor, sigma: f64) -> Result<Tensor> {
        (**self).denoise(x, sigma)
    }
    fn denoise_with_variance(&self, x: &Tensor, sigma: f64) -> Result<(Tensor, Option<Tensor>)> {
        (**self).denoise_with_variance(x, sigma)
    }
    fn denoise_guided(&self, x: &Tensor, sigma: f64) -> Result<(Tensor, Option<Tensor>)> {
        (**self).denoise_guided(x, sigma)
    }
}

impl<T: Denoiser + ?Sized> Denoiser for Box<T> {
    fn denoise(&self, x: &Tensor, sigma: f64) -> Result<Tensor> {
        (**self).denoise(x, sigma)
    }
    fn denoise_guided(&self, x: &Tensor, sigma: f64) -> Result<(Tensor, Option<Tensor>)> {
        (**self).denoise_guided(x, sigma)
    }
    fn denoise_with_variance(&self, x: &Tensor, sigma: f64) -> Result<(Tensor, Option<Tensor>)> {
        (**self).denoise_with_variance(x, sigma)
    }
}

/// Counts the network evaluations (NFE) made through it.
pub struct Counted<D> {
    inner: D,
    count: Cell<usize>,
}

impl<D: Denoiser> Counted<D> {
    pub fn new(inner: D) -> Self {
        Counted {
            inner,
            count: Cell::new(0),
        }
    }
    /// Evaluations so far.
    pub fn count(&self) -> usize {
        self.count.get()
    }
    pub fn reset(&self) {
        self.count.set(0)
    }
}

impl<D: Denoiser> Denoiser for Counted<D> {
    fn denoise(&self, x: &Tensor, sigma: f64) -> Result<Tensor> {
        self.count.set(self.count.get() + 1);
        self.inner.denoise(x, sigma)
    }
    fn denoise_with_variance(&self, x: &Tensor, sigma: f64) -> Result<(Tensor, Option<Tensor>)> {
        self.count.set(self.count.get() + 1);
        self.inner.denoise_with_variance(x, sigma)
    }
    fn denoise_guided(&self, x: &Tensor, sigma: f64) -> Result<(Tensor, Option<Tensor>)> {
        self.count.set(self.count.get() + 1);
        self.inner.denoise_guided(x, sigma)
    }
}

/// Classifier-free guidance (Ho & Salimans 2022) of two denoisers: `D = D_u + w (D_c - D_u)`
/// (`w = 1`: the conditional one, `w = 0`: the unconditional one), one evaluation of each per
/// call; [`Denoiser::denoise_guided`] also returns `D_u`. For exact models (a mixture and one of
/// its components, say) and tests; a network's guidance batches both branches (`nn::Guided`).
pub struct Cfg<C, U> {
    pub cond: C,
    pub uncond: U,
    pub guidance: f64,
}

impl<C: Denoiser, U: Denoiser> Denoiser for Cfg<C, U> {
    fn denoise(&self, x: &Tensor, sigma: f64) -> Result<Tensor> {
        Ok(self.denoise_guided(x, sigma)?.0)
    }
    fn denoise_guided(&self, x: &Tensor, sigma: f64) -> Result<(Tensor, Option<Tensor>)> {
        let c = self.cond.denoise(x, sigma)?;
        let u = self.uncond.denoise(x, sigma)?;
        Ok((&u + (c - &u) * self.guidance, Some(u)))
    }
}

/// How [`Thresholded`] limits the denoised estimate.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Threshold {
    /// `clamp(D, -r, r)` (diffusers' `clip_sample` with `clip_sample_range = r`; improved
    /// DDPM's `clip_denoised` for r = 1).
    Clip(f64),
    /// Dynamic thresholding (Saharia et al. 2022, "Photorealistic Text-to-Image Diffusion
    /// Models with Deep Language Understanding", Sec. 2.3; diffusers' `thresholding` with
    /// `dynamic_thresholding_ratio` and `sample_max_value`): per sample, `s` the `ratio`
    /// quantile of `|D|` over all its elements, clamped to `[1, max]`; then `clamp(D, -s, s) /
    /// s`.
    Dynamic { ratio: f64, max: f64 },
}

impl Threshold {
    /// The limit that a clipping range or `(ratio, max)` of dynamic thresholding asks for (at
    /// most one of them), checked; None for neither.
    pub fn from_options(clip: Option<f64>, dynamic: Option<(f64, f64)>) -> Result<Option<Self>> {
        let t = match (clip, dynamic) {
            (Some(_), Some(_)) => {
                return Err(SolverError::Invalid(
                    "give clip_denoised or dynamic_threshold, not both".into(),
                ))
            }
            (Some(r), None) => Threshold::Clip(r),
            (None, Some((ratio, max))) => Threshold::Dynamic { ratio, max },
            (None, None) => return Ok(None),
        };
        t.validate()?;
        Ok(Some(t))
    }

    pub fn validate(&self) -> Result<()> {
        match *self {
            Threshold::Clip(r) if !(r > 0.0 && r.is_finite()) => Err(SolverError::Invalid(
                format!("the clipping range must be positive and finite, got {}", crate::Num(r)),
            )),
            Threshold::Dynamic { ratio, max }
                if !(ratio > 0.0 && ratio <= 1.0 && max >= 1.0 && max.is_finite()) =>
            {
                Err(SolverError::Invalid(format!(
                    "dynamic thresholding needs 0 < ratio <= 1 and a finite max >= 1, got ratio {} and max {}",
                    crate::Num(ratio),
                    crate::Num(max)
                )))
            }
            _ => Ok(()),
        }
    }

    /// Apply to a batch of denoised estimates `d` (`[N, ...]`).
    pub fn apply(&self, d: &Tensor) -> Tensor {
        match *self {
            Threshold::Clip(r) => d.clamp(-r, r),
            Threshold::Dynamic { ratio, max } => {
                let n = d.size()[0];
                let s = d
                    .reshape([n, -1])
                    .abs()
                    .quantile_scalar(ratio, 1, false, "linear")
                    .clamp(1.0, max);
                let shape: Vec<i64> = std::iter::once(n)
                    .chain(std::iter::repeat_n(1, d.dim() - 1))
                    .collect();
                let s = s.reshape(shape.as_slice());
                d.clamp_tensor(Some(&s.neg()), Some(&s)) / s
            }
        }
    }
}

/// A denoiser whose estimate is clipped or dynamically thresholded ([`Threshold`]), for data
/// known to lie in a range (images in [-1, 1]). Every sampler sees the limited `D`; a learned
/// variance output passes through unchanged.
pub struct Thresholded<D> {
    pub inner: D,
    pub threshold: Threshold,
}

/// `inner`, limited by `threshold` where one is given.
pub fn thresholded<'a>(
    inner: &'a dyn Denoiser,
    threshold: Option<Threshold>,
) -> Box<dyn Denoiser + 'a> {
    match threshold {
        Some(threshold) => Box::new(Thresholded { inner, threshold }),
        None => Box::new(inner),
    }
}

impl<D: Denoiser> Denoiser for Thresholded<D> {
    fn denoise(&self, x: &Tensor, sigma: f64) -> Result<Tensor> {
        Ok(self.threshold.apply(&self.inner.denoise(x, sigma)?))
    }
    fn denoise_with_variance(&self, x: &Tensor, sigma: f64) -> Result<(Tensor, Option<Tensor>)> {
        let (d, v) = self.inner.denoise_with_variance(x, sigma)?;
        Ok((self.threshold.apply(&d), v))
    }
    /// Both estimates limited.
    fn denoise_guided(&self, x: &Tensor, sigma: f64) -> Result<(Tensor, Option<Tensor>)> {
        let (d, u) = self.inner.denoise_guided(x, sigma)?;
        Ok((
            self.threshold.apply(&d),
            u.map(|u| self.threshold.apply(&u)),
        ))
    }
}

fn check_features(x: &Tensor, d: usize, what: &str) -> Result<()> {
    let size = x.size();
    if size.len() != 2 || size[1] != d as i64 {
        return Err(SolverError::Shape(format!(
            "{what} expects samples of shape [N, {d}], got {size:?}"
        )));
    }
    Ok(())
}

/// Three constant tensors of an exact model, kept in f64 and in f32 on the model's device, so
/// that a float32 (or float64) call on that device converts and copies nothing.
struct Consts {
    f64: [Tensor; 3],
    f32: [Tensor; 3],
}

impl Consts {
    fn new(f64: [Tensor; 3]) -> Self {
        let f32 = f64.each_ref().map(|t| t.to_kind(Kind::Float));
        Consts { f64, f32 }
    }

    /// The three for `x`'s device and kind.
    fn for_input(&self, x: &Tensor) -> (Tensor, Tensor, Tensor) {
        let (dev, kind) = (x.device(), x.kind());
        let src = if kind == Kind::Float {
            &self.f32
        } else {
            &self.f64
        };
        let [a, b, c] = src.each_ref().map(|t| t.to_device(dev).to_kind(kind));
        (a, b, c)
    }
}

/// Exact denoiser for Gaussian data `x0 ~ N(mu, Sigma)` with full covariance:
/// `D(x; sigma) = mu + Sigma (Sigma + sigma^2 I)^-1 (x - mu)`, computed in Sigma's eigenbasis.
pub struct GaussianDenoiser {
    mean: Vec<f64>,
    eigvals: Vec<f64>,
    /// The mean `[1, d]`, the eigenvectors as columns `[d, d]` and the eigenvalues `[1, d]`.
    consts: Consts,
}

impl GaussianDenoiser {
    /// `cov` is row-major `d x d`, symmetric positive semi-definite.
    pub fn new(mean: Vec<f64>, cov: Vec<Vec<f64>>, device: Device) -> Result<Self> {
        let d = mean.len();
        if d == 0 {
            return Err(SolverError::Model(
                "the Gaussian needs at least one dimension".into(),
            ));
        }
        if cov.len() != d || cov.iter().any(|r| r.len() != d) {
            return Err(SolverError::Model(format!(
                "the covariance must be {d} x {d} to match the mean's length"
            )));
        }
        if mean
            .iter()
            .chain(cov.iter().flatten())
            .any(|v| !v.is_finite())
        {
            return Err(SolverError::Model(
                "mean and covariance must be finite".into(),
            ));
        }
        let m = DMatrix::from_fn(d, d, |i, j| cov[i][j]);
        let scale = m.amax().max(1e-300);
        if (&m - m.transpose()).amax() > 1e-9 * scale {
            return Err(SolverError::Model("the covariance is not symmetric".into()));
        }
        let eig = SymmetricEigen::new(m);
        if eig.eigenvalues.iter().any(|&l| l < -1e-9 * scale) {
            return Err(SolverError::Model(
                "the covariance is not positive semi-definite".into(),
            ));
        }
        let eigvals: Vec<f64> = eig.eigenvalues.iter().map(|&l| l.max(0.0)).collect();
        let basis_rows: Vec<f64> = (0..d)
            .flat_map(|i| (0..d).map(move |j| (i, j)))
            .map(|(i, j)| eig.eigenvectors[(i, j)])
            .collect();
        let to = |v: &[f64]| Tensor::from_slice(v).to_device(device);
        Ok(GaussianDenoiser {
            consts: Consts::new([
                to(&mean).view([1, d as i64]),
                to(&basis_rows).view([d as i64, d as i64]),
                to(&eigvals).view([1, d as i64]),
            ]),
            mean,
            eigvals,
        })
    }

    pub fn dim(&self) -> usize {
        self.mean.len()
    }
    pub fn mean(&self) -> &[f64] {
        &self.mean
    }
    /// Eigenvalues of the covariance.
    pub fn eigenvalues(&self) -> &[f64] {
        &self.eigvals
    }

    fn parts(&self, x: &Tensor) -> (Tensor, Tensor, Tensor) {
        self.consts.for_input(x)
    }

    /// `log p(x; sigma)` of `N(mu, Sigma + sigma^2 I)` for each sample, shape `[N]`.
    pub fn log_density(&self, x: &Tensor, sigma: f64) -> Result<Tensor> {
        check_features(x, self.dim(), "the Gaussian density")?;
        let (mu, v, l) = self.parts(x);
        let var = &l + sigma * sigma;
        let y = (x - &mu).matmul(&v);
        let quad = (y.square() / &var).sum_dim_intlist(-1, false, x.kind());
        let log_det = var.log().sum_dim_intlist(-1, false, x.kind());
        let c = self.dim() as f64 * (2.0 * std::f64::consts::PI).ln();
        Ok((quad + log_det + c) * -0.5)
    }

    /// Exact samples from standard normals `z` (`[N, d]`): `mu + V diag(sqrt(l)) z`.
    pub fn sample_from(&self, z: &Tensor) -> Tensor {
        let (mu, v, l) = self.parts(z);
        mu + (z * l.sqrt()).matmul(&v.tr())
    }

    /// The exact probability-flow ODE solution from `sigma_from` to `sigma_to` (scaled space):
    /// in the eigenbasis each coordinate scales by `sqrt(l + sigma_to^2) / sqrt(l + sigma_from^2)`.
    pub fn exact_flow(&self, x: &Tensor, sigma_from: f64, sigma_to: f64) -> Result<Tensor> {
        check_features(x, self.dim(), "the Gaussian flow")?;
        let (mu, v, l) = self.parts(x);
        let y = (x - &mu).matmul(&v);
        let ratio = ((&l + sigma_to * sigma_to) / (&l + sigma_from * sigma_from)).sqrt();
        Ok(mu + (y * ratio).matmul(&v.tr()))
    }
}

impl GaussianDenoiser {
    /// `D(x; sigma)` with `sigma^2` given as a tensor (0-dim, `x`'s kind and device): the same
    /// arithmetic as [`Denoiser::denoise`], for a CUDA graph that replays it at any sigma.
    pub fn denoise_sigma2(&self, x: &Tensor, sigma2: &Tensor) -> Result<Tensor> {
        self.denoise_with(x, |l| l + sigma2)
    }

    fn denoise_with(&self, x: &Tensor, plus_s2: impl Fn(&Tensor) -> Tensor) -> Result<Tensor> {
        check_features(x, self.dim(), "the Gaussian denoiser")?;
        let (mu, v, l) = self.parts(x);
        let y = (x - &mu).matmul(&v);
        let shrink = &l / plus_s2(&l);
        Ok(mu + (y * shrink).matmul(&v.tr()))
    }
}

impl Denoiser for GaussianDenoiser {
    fn denoise(&self, x: &Tensor, sigma: f64) -> Result<Tensor> {
        self.denoise_with(x, |l| l + sigma * sigma)
    }
}

/// A Gaussian mixture `sum_k w_k N(mu_k, diag(std_k^2))` and its exact denoiser.
///
/// At noise level sigma the density is `sum_k w_k N(mu_k, diag(std_k^2 + sigma^2))`; with
/// responsibilities `r_k(x)` the denoiser is
/// `D(x; sigma) = sum_k r_k(x) (mu_k + std_k^2 / (std_k^2 + sigma^2) (x - mu_k))`.
pub struct GaussianMixture {
    pub weights: Vec<f64>,
    pub means: Vec<Vec<f64>>,
    /// Per-component, per-dimension standard deviations.
    pub stds: Vec<Vec<f64>>,
    /// `log w` `[1, K]`, the means `[1, K, d]` and the variances `[1, K, d]`.
    consts: Consts,
}

impl GaussianMixture {
    /// Validates and builds a mixture. `stds[k]` has one entry (isotropic) or `d` entries.
    pub fn new(
        weights: Vec<f64>,
        means: Vec<Vec<f64>>,
        stds: Vec<Vec<f64>>,
        device: Device,
    ) -> Result<Self> {
        let k = weights.len();
        if k == 0 {
            return Err(SolverError::Model("the mixture has no components".into()));
        }
        if means.len() != k || stds.len() != k {
            return Err(SolverError::Model(format!(
                "shapes disagree: {k} weights, {} means, {} stds",
                means.len(),
                stds.len()
            )));
        }
        if weights.iter().any(|w| !(w.is_finite() && *w > 0.0)) {
            return Err(SolverError::Model(
                "every weight must be positive and finite".into(),
            ));
        }
        let total: f64 = weights.iter().sum();
        if (total - 1.0).abs() > 1e-6 {
            return Err(SolverError::Model(format!(
                "the weights sum to {total}, not 1"
            )));
        }
        let d = means[0].len();
        if d == 0 {
            return Err(SolverError::Model("the means have no dimensions".into()));
        }
        if let Some(i) = means.iter().position(|m| m.len() != d) {
            return Err(SolverError::Model(format!(
                "shapes disagree: mean {i} has {} dimensions, mean 0 has {d}",
                means[i].len()
            )));
        }
        let mut full = Vec::with_capacity(k);
        for (i, s) in stds.iter().enumerate() {
            let row = match s.len() {
                1 => vec![s[0]; d],
                n if n == d => s.clone(),
                n => {
                    return Err(SolverError::Model(format!(
                        "shapes disagree: std {i} has {n} entries, expected 1 or {d}"
                    )))
                }
            };
            if let Some(v) = row.iter().find(|v| !(v.is_finite() && **v >= 0.0)) {
                return Err(SolverError::Model(format!(
                    "the std of component {i} must be finite and non-negative, got {}",
                    crate::Num(*v)
                )));
            }
            full.push(row);
        }
        if means.iter().flatten().any(|v| !v.is_finite()) {
            return Err(SolverError::Model("the means must be finite".into()));
        }
        let (ki, di) = (k as i64, d as i64);
        let flat = |v: &[Vec<f64>]| v.iter().flatten().copied().collect::<Vec<f64>>();
        let log_w: Vec<f64> = weights.iter().map(|w| w.ln()).collect();
        let var: Vec<f64> = flat(&full).iter().map(|s| s * s).collect();
        Ok(GaussianMixture {
            consts: Consts::new([
                Tensor::from_slice(&log_w).to_device(device).view([1, ki]),
                Tensor::from_slice(&flat(&means))
                    .to_device(device)
                    .view([1, ki, di]),
                Tensor::from_slice(&var).to_device(device).view([1, ki, di]),
            ]),
            weights,
            means,
            stds: full,
        })
    }

    /// The built-in 2-D test problem: `modes` equal-weight isotropic components of std `std`
    /// on a circle of radius `radius`.
    pub fn ring(modes: usize, radius: f64, std: f64, device: Device) -> Result<Self> {
        let means = (0..modes)
            .map(|k| {
                let a = 2.0 * std::f64::consts::PI * k as f64 / modes as f64;
                vec![radius * a.cos(), radius * a.sin()]
            })
            .collect();
        Self::new(
            vec![1.0 / modes as f64; modes],
            means,
            vec![vec![std]; modes],
            device,
        )
    }

    pub fn dim(&self) -> usize {
        self.means[0].len()
    }
    pub fn components(&self) -> usize {
        self.weights.len()
    }

    fn parts(&self, x: &Tensor) -> (Tensor, Tensor, Tensor) {
        self.consts.for_input(x)
    }

    /// Per-component log joint `log w_k + log N(x; mu_k, var_k + sigma^2)`, shape `[N, K]`,
    /// and the centred samples `x - mu_k`, shape `[N, K, d]`.
    fn log_joint(&self, x: &Tensor, sigma: f64) -> Result<(Tensor, Tensor, Tensor)> {
        self.log_joint_with(x, |var| var + sigma * sigma)
    }

    fn log_joint_with(
        &self,
        x: &Tensor,
        plus_s2: impl Fn(&Tensor) -> Tensor,
    ) -> Result<(Tensor, Tensor, Tensor)> {
        check_features(x, self.dim(), "the mixture")?;
        let (log_w, mu, var) = self.parts(x);
        let v = plus_s2(&var);
        let diff = x.unsqueeze(1) - mu;
        let quad = (diff.square() / &v).sum_dim_intlist(-1, false, x.kind());
        let log_det = v.log().sum_dim_intlist(-1, false, x.kind());
        let c = self.dim() as f64 * (2.0 * std::f64::consts::PI).ln();
        Ok((log_w - (quad + log_det + c) * 0.5, diff, v))
    }

    /// `log p(x; sigma)` for each sample, shape `[N]`.
    pub fn log_density(&self, x: &Tensor, sigma: f64) -> Result<Tensor> {
        let (lj, _, _) = self.log_joint(x, sigma)?;
        Ok(lj.logsumexp([-1].as_slice(), false))
    }

    /// Posterior component probabilities `r_k(x)` at noise level sigma, shape `[N, K]`.
    pub fn responsibilities(&self, x: &Tensor, sigma: f64) -> Result<Tensor> {
        let (lj, _, _) = self.log_joint(x, sigma)?;
        Ok(lj.softmax(-1, x.kind()))
    }

    /// The component each sample most likely came from (at noise level 0), shape `[N]`, int64.
    pub fn assign(&self, x: &Tensor) -> Result<Tensor> {
        let floor = 1e-6
            * self
                .stds
                .iter()
                .flatten()
                .fold(0.0f64, |a, &b| a.max(b))
                .max(1e-6);
        Ok(self.responsibilities(x, floor)?.argmax(-1, false))
    }

    /// Exact samples: `n` draws from a seeded generator on the CPU (f64), then moved to `device`.
    pub fn sample(&self, n: usize, seed: u64, device: Device) -> Tensor {
        use rand::{Rng, SeedableRng};
        use rand_distr::StandardNormal;
        let mut rng = rand_xoshiro::Xoshiro256PlusPlus::seed_from_u64(seed);
        let cum: Vec<f64> = self
            .weights
            .iter()
            .scan(0.0, |acc, w| {
                *acc += w;
                Some(*acc)
            })
            .collect();
        let d = self.dim();
        let mut out = Vec::with_capacity(n * d);
        for _ in 0..n {
            let u: f64 = rng.random::<f64>() * cum[cum.len() - 1];
            let k = cum.iter().position(|&c| u < c).unwrap_or(cum.len() - 1);
            for j in 0..d {
                let z: f64 = rng.sample(StandardNormal);
                out.push(self.means[k][j] + self.stds[k][j] * z);
            }
        }
        Tensor::from_slice(&out)
            .view([n as i64, d as i64])
            .to_device(device)
    }
}

impl GaussianMixture {
    /// `D(x; sigma)` with `sigma^2` given as a tensor (0-dim, `x`'s kind and device): the same
    /// arithmetic as [`Denoiser::denoise`], for a CUDA graph that replays it at any sigma.
    pub fn denoise_sigma2(&self, x: &Tensor, sigma2: &Tensor) -> Result<Tensor> {
        self.posterior_mean(self.log_joint_with(x, |var| var + sigma2)?, x)
    }

    fn posterior_mean(
        &self,
        (lj, diff, v): (Tensor, Tensor, Tensor),
        x: &Tensor,
    ) -> Result<Tensor> {
        let r = lj.softmax(-1, x.kind()).unsqueeze(-1);
        let (_, mu, var) = self.parts(x);
        let post = mu + diff * (var / v);
        Ok((r * post).sum_dim_intlist(1, false, x.kind()))
    }
}

impl Denoiser for GaussianMixture {
    fn denoise(&self, x: &Tensor, sigma: f64) -> Result<Tensor> {
        self.posterior_mean(self.log_joint(x, sigma)?, x)
    }
}

/// Kind used for host-side constants: f64 on the CPU.
pub const HOST_KIND: Kind = Kind::Double;
