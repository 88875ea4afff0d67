//! Training data: built-in 2-D sets, mixtures from JSON and `.npy` arrays.

use crate::{model, npy};
use anyhow::{bail, Result};
use rand::{Rng, SeedableRng};
use rand_distr::StandardNormal;
use rand_xoshiro::Xoshiro256PlusPlus;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use tch::{Device, Kind, Tensor};

fn d_num() -> usize {
    20_000
}

/// Where the training data comes from.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case", deny_unknown_fields)]
pub enum DataConfig {
    /// Two interleaved half circles (scikit-learn's `make_moons`, noise 0.05).
    Moons {
        #[serde(default = "d_num")]
        num: usize,
    },
    /// The 2-D swiss roll (scikit-learn's `make_swiss_roll` projected on (x, z), scaled by 1/5).
    SwissRoll {
        #[serde(default = "d_num")]
        num: usize,
    },
    /// The built-in 8-mode ring (`builtin:gmm8`).
    Gmm8 {
        #[serde(default = "d_num")]
        num: usize,
    },
    /// FFJORD's checkerboard on [-2, 2]^2.
    Checkerboard {
        #[serde(default = "d_num")]
        num: usize,
    },
    /// FFJORD's pinwheel with 5 arms.
    Pinwheel {
        #[serde(default = "d_num")]
        num: usize,
    },
    /// Samples of a mixture JSON file (`{"weights", "means", "stds"}`).
    Mixture {
        path: PathBuf,
        #[serde(default = "d_num")]
        num: usize,
    },
    /// The 8x8 handwritten digits shipped in `experiments/data/digits.csv.gz` (or `path`), as
    /// `[N, 1, 8, 8]` images in [-1, 1] with labels 0..9.
    Digits { path: Option<PathBuf> },
    /// A float32/float64 `.npy` of shape `[N, d]` or `[N, C, H, W]`, with optional integer
    /// class labels (an int32/int64 `.npy` of shape `[N]`, values 0..K-1) and optional paired
    /// noise (`noise`, a float `.npy` of the data's shape): each sample's own standard-normal
    /// noise, used by the loss instead of fresh noise (reflow, Liu et al. 2022: the noise a
    /// model's ODE took to that sample).
    Npy {
        path: PathBuf,
        labels: Option<PathBuf>,
        noise: Option<PathBuf>,
    },
}

/// The most classes a labelled data set may have (each is a row of the class embedding).
pub const MAX_CLASSES: i64 = 100_000;

/// Where the shipped digits live.
pub fn default_digits_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("experiments/data/digits.csv.gz")
}

/// Read the digits CSV (gzip): `[N, 1, 8, 8]` in [-1, 1] and labels.
pub fn read_digits(path: &std::path::Path) -> Result<Dataset> {
    use std::io::Read;
    let file = std::fs::File::open(path)
        .map_err(|e| anyhow::anyhow!("cannot read digits file {}: {e}", path.display()))?;
    let mut text = String::new();
    flate2::read::GzDecoder::new(file)
        .read_to_string(&mut text)
        .map_err(|e| {
            anyhow::anyhow!(
                "digits file {} is not a valid gzip CSV: {e}",
                path.display()
            )
        })?;
    let (mut pixels, mut labels) = (Vec::new(), Vec::new());
    for (i, line) in text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
    {
        let v: Vec<f64> = line
            .split(',')
            .map(|s| s.trim().parse::<f64>())
            .collect::<Result<_, _>>()
            .map_err(|_| {
                anyhow::anyhow!("digits file {} line {}: not numbers", path.display(), i + 1)
            })?;
        if v.len() != 65 {
            bail!(
                "digits file {} line {}: {} values, expected 65",
                path.display(),
                i + 1,
                v.len()
            );
        }
        if let Some(p) = v[..64]
            .iter()
            .find(|p| !(p.is_finite() && (0.0..=16.0).contains(*p)))
        {
            bail!(
                "digits file {} line {}: pixel value {p} is not a grey level in 0..=16",
                path.display(),
                i + 1
            );
        }
        let label = v[64];
        if !(label.fract() == 0.0 && (0.0..=9.0).contains(&label)) {
            bail!(
                "digits file {} line {}: label {label} is not a digit 0..=9",
                path.display(),
                i + 1
            );
        }
        pixels.extend(v[..64].iter().map(|p| p / 8.0 - 1.0));
        labels.push(label as i64);
    }
    let n = labels.len() as i64;
    if n == 0 {
        bail!("digits file {} is empty", path.display());
    }
    Ok(Dataset {
        x: Tensor::from_slice(&pixels)
            .view([n, 1, 8, 8])
            .to_kind(Kind::Float),
        labels: Some(Tensor::from_slice(&labels)),
        num_classes: 10,
        noise: None,
    })
}

/// A data set in memory: `x` is `[N, d]` float32 on the CPU; `noise`, where given, the paired
/// noise of each sample (same shape).
pub struct Dataset {
    pub x: Tensor,
    pub labels: Option<Tensor>,
    pub num_classes: usize,
    pub noise: Option<Tensor>,
}

impl Dataset {
    /// Per-sample shape: `[d]` or `[C, H, W]`.
    pub fn shape(&self) -> Vec<i64> {
        self.x.size()[1..].to_vec()
    }
    pub fn len(&self) -> i64 {
        self.x.size()[0]
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

fn from_points(points: Vec<[f64; 2]>, labels: Vec<i64>, classes: usize) -> Dataset {
    let flat: Vec<f64> = points.iter().flatten().copied().collect();
    let n = points.len() as i64;
    Dataset {
        x: Tensor::from_slice(&flat).view([n, 2]).to_kind(Kind::Float),
        labels: Some(Tensor::from_slice(&labels)),
        num_classes: classes,
        noise: None,
    }
}

/// The most points a synthetic data set may have (a mistyped count is an error, not an
/// allocation failure).
pub const MAX_NUM: usize = 1 << 28;

/// [`load`] for a trained network whose samples have shape `shape` (a model card's `[data]`, a
/// checkpoint's stored data): other per-sample shapes are an error.
pub fn load_for(cfg: &DataConfig, seed: u64, shape: &[i64]) -> Result<Dataset> {
    let d = load(cfg, seed)?;
    let got = &d.x.size()[1..];
    if got != shape {
        bail!(
            "the model's data has samples of shape {got:?}, and the network takes samples of shape {shape:?}"
        );
    }
    Ok(d)
}

/// Build (or load) the data set; synthetic sets are drawn with `seed`.
pub fn load(cfg: &DataConfig, seed: u64) -> Result<Dataset> {
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(seed ^ 0xDA7A);
    let normal = |rng: &mut Xoshiro256PlusPlus| -> f64 { rng.sample(StandardNormal) };
    let check = |num: usize| -> Result<()> {
        if num == 0 {
            bail!("data.num must be at least 1");
        }
        if num > MAX_NUM {
            bail!("data.num = {num} is more than {MAX_NUM}");
        }
        Ok(())
    };
    let pi = std::f64::consts::PI;
    Ok(match cfg {
        DataConfig::Moons { num } => {
            check(*num)?;
            let (mut pts, mut lab) = (Vec::new(), Vec::new());
            for i in 0..*num {
                let t = pi * rng.random::<f64>();
                let (x, y, l) = if i % 2 == 0 {
                    (t.cos(), t.sin(), 0)
                } else {
                    (1.0 - t.cos(), 0.5 - t.sin(), 1)
                };
                pts.push([x + 0.05 * normal(&mut rng), y + 0.05 * normal(&mut rng)]);
                lab.push(l);
            }
            from_points(pts, lab, 2)
        }
        DataConfig::SwissRoll { num } => {
            check(*num)?;
            let pts = (0..*num)
                .map(|_| {
                    let t = 1.5 * pi * (1.0 + 2.0 * rng.random::<f64>());
                    [
                        t * t.cos() / 5.0 + 0.05 * normal(&mut rng),
                        t * t.sin() / 5.0 + 0.05 * normal(&mut rng),
                    ]
                })
                .collect();
            from_points(pts, vec![0; *num], 1)
        }
        DataConfig::Gmm8 { num } => {
            check(*num)?;
            let gmm = model::builtin_gmm8(Device::Cpu)?;
            let x = gmm.sample(*num, seed ^ 0x6A, Device::Cpu);
            let labels = gmm.assign(&x)?;
            Dataset {
                x: x.to_kind(Kind::Float),
                labels: Some(labels),
                num_classes: 8,
                noise: None,
            }
        }
        DataConfig::Checkerboard { num } => {
            check(*num)?;
            let pts = (0..*num)
                .map(|_| {
                    let x1 = 4.0 * rng.random::<f64>() - 2.0;
                    let x2 = rng.random::<f64>() - 2.0 * (rng.random::<f64>() < 0.5) as i32 as f64
                        + (x1.floor().rem_euclid(2.0));
                    [x1, x2]
                })
                .collect();
            from_points(pts, vec![0; *num], 1)
        }
        DataConfig::Pinwheel { num } => {
            check(*num)?;
            let (arms, radial_std, tangential_std, rate) = (5usize, 0.3, 0.1, 0.25);
            let (mut pts, mut lab) = (Vec::new(), Vec::new());
            for i in 0..*num {
                let k = i % arms;
                let (fx, fy) = (
                    normal(&mut rng) * radial_std + 1.0,
                    normal(&mut rng) * tangential_std,
                );
                let angle = 2.0 * pi * k as f64 / arms as f64 + rate * fx.exp();
                let (c, s) = (angle.cos(), angle.sin());
                pts.push([2.0 * (c * fx + s * fy), 2.0 * (c * fy - s * fx)]);
                lab.push(k as i64);
            }
            from_points(pts, lab, arms)
        }
        DataConfig::Mixture { path, num } => {
            check(*num)?;
            let gmm = model::load_mixture(path, Device::Cpu)?;
            let x = gmm.sample(*num, seed ^ 0x6A, Device::Cpu);
            let labels = gmm.assign(&x)?;
            Dataset {
                x: x.to_kind(Kind::Float),
                labels: Some(labels),
                num_classes: gmm.components(),
                noise: None,
            }
        }
        DataConfig::Digits { path } => {
            read_digits(path.as_deref().unwrap_or(&default_digits_path()))?
        }
        DataConfig::Npy {
            path,
            labels,
            noise,
        } => {
            let t = npy::read(path)?;
            let size = t.size();
            if !(size.len() == 2 || size.len() == 4) || size.iter().any(|&d| d < 1) {
                bail!(
                    "data file {} has shape {:?}, expected [N, d] or [N, C, H, W]",
                    path.display(),
                    size
                );
            }
            if t.isfinite().all().int64_value(&[]) == 0 {
                bail!(
                    "data file {} contains NaN or infinite values",
                    path.display()
                );
            }
            {
                let (labels, num_classes) = match labels {
                    Some(lp) => {
                        let l = npy::read_labels(lp)?;
                        if l.size()[0] != size[0] {
                            bail!(
                                "labels file {} has {} labels for {} samples",
                                lp.display(),
                                l.size()[0],
                                size[0]
                            );
                        }
                        let k = l.max().int64_value(&[]) + 1;
                        if k > MAX_CLASSES {
                            bail!(
                                "labels file {} has class {} (at most {} classes)",
                                lp.display(),
                                k - 1,
                                MAX_CLASSES
                            );
                        }
                        (Some(l), k as usize)
                    }
                    None => (None, 0),
                };
                let noise = match noise {
                    Some(np) => {
                        let z = npy::read(np)?;
                        if z.size() != size {
                            bail!(
                                "noise file {} has shape {:?}, the data {:?}: the paired noise needs the data's shape",
                                np.display(),
                                z.size(),
                                size
                            );
                        }
                        if z.isfinite().all().int64_value(&[]) == 0 {
                            bail!(
                                "noise file {} contains NaN or infinite values",
                                np.display()
                            );
                        }
                        Some(z.to_kind(Kind::Float))
                    }
                    None => None,
                };
                Dataset {
                    x: t.to_kind(Kind::Float),
                    labels,
                    num_classes,
                    noise,
                }
            }
        }
    })
}
