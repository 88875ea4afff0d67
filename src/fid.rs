//! Fréchet distance on the features of a small classifier trained in-project: the digits
//! analogue of FID (Heusel et al. 2017). `FD = |mu1 - mu2|^2 + Tr(S1 + S2 - 2 (S1 S2)^(1/2))`,
//! with the trace of the matrix square root computed from the symmetric form
//! `Tr((S1^(1/2) S2 S1^(1/2))^(1/2))` by eigendecompositions (nalgebra).

use crate::data::Dataset;
use anyhow::{bail, Result};
use nalgebra::{DMatrix, DVector, SymmetricEigen};
use tch::nn::{self, Module, OptimizerConfig};
use tch::{Device, Kind, Tensor};

/// An MLP classifier on flattened images; its penultimate layer gives the features.
pub struct Classifier {
    _vs: nn::VarStore,
    body: nn::Sequential,
    head: nn::Linear,
}

impl Classifier {
    /// Train on `data` (labels required) with cross-entropy, Adam, `steps` steps of batch 128.
    pub fn train(data: &Dataset, steps: usize, seed: u64) -> Result<Classifier> {
        let labels = match &data.labels {
            Some(l) if data.num_classes > 0 => l.shallow_clone(),
            _ => bail!("the classifier needs labelled data"),
        };
        let _turn = crate::train::exclusive_rng();
        tch::manual_seed(seed as i64);
        let vs = nn::VarStore::new(Device::Cpu);
        let d: i64 = data.shape().iter().product();
        let p = vs.root();
        let body = nn::seq()
            .add_fn(move |x| x.flatten(1, -1))
            .add(nn::linear(&p / "fc1", d, 256, Default::default()))
            .add_fn(|x| x.relu())
            .add(nn::linear(&p / "fc2", 256, 64, Default::default()))
            .add_fn(|x| x.relu());
        let head = nn::linear(&p / "head", 64, data.num_classes as i64, Default::default());
        let mut opt = nn::Adam::default().build(&vs, 1e-3)?;
        let n = data.len();
        for _ in 0..steps {
            let idx = Tensor::randint(n, [128], (Kind::Int64, Device::Cpu));
            // Light noise augmentation keeps the features smooth around the data.
            let x = data.x.index_select(0, &idx);
            let x = &x + x.randn_like() * 0.1;
            let logits = head.forward(&body.forward(&x));
            let loss = logits.cross_entropy_for_logits(&labels.index_select(0, &idx));
            opt.backward_step(&loss);
        }
        Ok(Classifier {
            _vs: vs,
            body,
            head,
        })
    }

    /// Penultimate-layer features, `[N, 64]`.
    pub fn features(&self, x: &Tensor) -> Tensor {
        tch::no_grad(|| {
            self.body
                .forward(&x.to_device(Device::Cpu).to_kind(Kind::Float))
        })
    }

    /// Fraction of `x` classified as `labels`.
    pub fn accuracy(&self, x: &Tensor, labels: &Tensor) -> f64 {
        tch::no_grad(|| {
            let pred = self.head.forward(&self.features(x)).argmax(-1, false);
            pred.eq_tensor(labels)
                .to_kind(Kind::Double)
                .mean(Kind::Double)
                .double_value(&[])
        })
    }
}

fn moments(f: &Tensor) -> (DVector<f64>, DMatrix<f64>) {
    let f = f.to_kind(Kind::Double);
    let (n, d) = (f.size()[0], f.size()[1] as usize);
    let mu = f.mean_dim([0i64].as_slice(), true, Kind::Double);
    let c = &f - &mu;
    let cov = c.tr().matmul(&c) / (n as f64 - 1.0);
    let mu: Vec<f64> = Vec::try_from(mu.view([-1])).unwrap();
    let cov: Vec<f64> = Vec::try_from(cov.view([-1])).unwrap();
    (DVector::from_vec(mu), DMatrix::from_row_slice(d, d, &cov))
}

fn sqrt_psd(m: &DMatrix<f64>) -> DMatrix<f64> {
    let e = SymmetricEigen::new((m + m.transpose()) * 0.5);
    let s = DMatrix::from_diagonal(&e.eigenvalues.map(|l| l.max(0.0).sqrt()));
    &e.eigenvectors * s * e.eigenvectors.transpose()
}

/// Fréchet distance between the Gaussians fitted to two feature sets `[N, d]`.
pub fn frechet(a: &Tensor, b: &Tensor) -> f64 {
    let (m1, s1) = moments(a);
    let (m2, s2) = moments(b);
    let r1 = sqrt_psd(&s1);
    let cross = sqrt_psd(&(&r1 * &s2 * &r1));
    (m1 - m2).norm_squared() + s1.trace() + s2.trace() - 2.0 * cross.trace()
}

/// Options of `scoreflow eval-digits`.
#[derive(clap::Args)]
pub struct EvalDigitsArgs {
    /// A checkpoint trained on the digits (experiments/digits.toml).
    #[arg(long)]
    pub checkpoint: std::path::PathBuf,
    /// Sampler: a name, or name(key=value, ...) as in compare and bench.
    #[arg(long, default_value = "heun")]
    pub solver: String,
    /// Steps of the Karras grid over the checkpoint's noise range.
    #[arg(long, default_value_t = 18)]
    pub steps: usize,
    /// Guidance weight for class-conditional models (1: plain conditional).
    #[arg(long, default_value_t = 1.0)]
    pub guidance: f64,
    /// LO,HI: apply the guidance only at noise levels LO < sigma <= HI (Kynkaanniemi et al.
    /// 2024).
    #[arg(long, allow_hyphen_values = true)]
    pub guidance_interval: Option<String>,
    /// Seeds the classifier's training and the samples' noise.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// PNG grid of samples (one row per class for conditional models).
    #[arg(long, default_value = "out/digits_samples.png")]
    pub png: std::path::PathBuf,
    /// auto, cpu, cuda or cuda:N.
    #[arg(long, default_value = "auto")]
    pub device: String,
}

/// Sample as many digits as half the data set, then report the Fréchet distance of their
/// classifier features to one half of the real digits, next to the distance between the two
/// real halves.
pub fn eval_digits(a: EvalDigitsArgs) -> Result<()> {
    use crate::{data, device, job, train};
    use scoreflow_solvers::{sde::Edm, SamplerSpec};
    let spec: SamplerSpec = crate::job::parse_sampler(&a.solver)?;
    if a.steps == 0 || a.steps > scoreflow_solvers::grid::MAX_STEPS {
        bail!(
            "--steps must be 1 to {}, got {}",
            scoreflow_solvers::grid::MAX_STEPS,
            a.steps
        );
    }
    if !a.guidance.is_finite() {
        bail!("--guidance must be finite, got {}", a.guidance);
    }
    let interval = a
        .guidance_interval
        .as_deref()
        .map(crate::nn::parse_interval)
        .transpose()?;
    let dev = device::parse(&a.device)?;
    if let Some(dir) = a.png.parent() {
        crate::npy::check_out_dir(dir)?;
    }
    crate::npy::check_out_file("--png", &a.png)?;
    let digits = data::read_digits(&data::default_digits_path())?;
    if crate::card::is_card(&a.checkpoint) {
        bail!(
            "eval-digits needs a checkpoint trained by scoreflow on the digits; {} is a model card",
            a.checkpoint.display()
        );
    }
    let (m, cfg) = train::load_for_sampling(&a.checkpoint, dev)?;
    if m.net.shape != digits.shape() {
        bail!(
            "checkpoint {} was not trained on 8x8 digits (sample shape {:?})",
            a.checkpoint.display(),
            m.net.shape
        );
    }
    if m.net.num_classes == 0 && (a.guidance != 1.0 || a.guidance_interval.is_some()) {
        bail!(
            "--guidance and --guidance-interval need a class-conditional checkpoint; {} is unconditional",
            a.checkpoint.display()
        );
    }
    let n = digits.len();
    let even = Tensor::arange_start_step(0, n, 2, (Kind::Int64, Device::Cpu));
    let odd = Tensor::arange_start_step(1, n, 2, (Kind::Int64, Device::Cpu));
    let half_a = digits.x.index_select(0, &even);
    let half_b = digits.x.index_select(0, &odd);
    let clf = Classifier::train(&digits, 3000, a.seed ^ 0xC1A5)?;
    let labels = digits.labels.as_ref().unwrap();
    let acc_real = clf.accuracy(&half_b, &labels.index_select(0, &odd));
    let fa = clf.features(&half_a);
    let fd_halves = frechet(&fa, &clf.features(&half_b));

    let (lo, hi) = cfg.model.precond.sigma_range().unwrap_or((0.002, 80.0));
    let sde = Edm::default();
    let sigmas = scoreflow_solvers::grid::sigmas(
        &scoreflow_solvers::GridKind::default(),
        a.steps,
        lo,
        hi,
        &sde,
    )?;
    let count = half_a.size()[0] as usize;
    let (samples, sample_labels) = if m.net.num_classes > 0 {
        let k = m.net.num_classes;
        let mut parts = Vec::new();
        let mut labs = Vec::new();
        for c in 0..k {
            let per = count / k + usize::from(c < count % k);
            let z = job::initial_noise_shaped(
                a.seed.wrapping_add(c as u64 * 7919),
                per,
                &m.net.shape,
                dev,
                Kind::Float,
            )?;
            let g = crate::nn::Guided {
                net: &m.net,
                class: crate::nn::Classes::One(c as i64),
                guidance: a.guidance,
                interval,
            };
            let (x, _) =
                job::run_from_noise(&spec, &g, &sde, &sigmas, &z, a.seed, 0, &mut |_, _| {})?;
            parts.push(x.to_device(Device::Cpu));
            labs.push(Tensor::full(
                [per as i64],
                c as i64,
                (Kind::Int64, Device::Cpu),
            ));
        }
        (Tensor::cat(&parts, 0), Some(Tensor::cat(&labs, 0)))
    } else {
        let z = job::initial_noise_shaped(a.seed, count, &m.net.shape, dev, Kind::Float)?;
        let (x, _) =
            job::run_from_noise(&spec, &m.net, &sde, &sigmas, &z, a.seed, 0, &mut |_, _| {})?;
        (x.to_device(Device::Cpu), None)
    };
    let fd_model = frechet(&clf.features(&samples), &fa);
    let acc_model = sample_labels.as_ref().map(|l| clf.accuracy(&samples, l));
    // Grid: 10 per class in rows (conditional), else the first 100.
    let grid = match &sample_labels {
        Some(l) => {
            let rows: Vec<Tensor> = (0..m.net.num_classes as i64)
                .map(|c| samples.index_select(0, &l.eq(c).nonzero().view([-1]).narrow(0, 0, 10)))
                .collect();
            Tensor::cat(&rows, 0)
        }
        None => samples.narrow(0, 0, 100.min(count as i64)),
    };
    if let Some(dir) = a.png.parent().filter(|p| !p.as_os_str().is_empty()) {
        crate::npy::create_out_dir(dir)?;
    }
    crate::image::write_grid(&a.png, &grid, 10)?;
    println!(
        "{}",
        serde_json::json!({
            "fd_model_vs_real": fd_model,
            "fd_real_half_vs_half": fd_halves,
            "samples": count,
            "classifier_accuracy_real": acc_real,
            "classifier_accuracy_samples": acc_model,
            "solver": spec.name(),
            "steps": a.steps,
            "guidance": a.guidance,
            "guidance_interval": interval.map(|(lo, hi)| [lo, hi]),
            "png": a.png.display().to_string(),
        })
    );
    Ok(())
}
