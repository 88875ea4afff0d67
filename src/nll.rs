//! Log-likelihood through the probability-flow ODE (Song et al. 2021, section 4.3; Chen et al.
//! 2018's instantaneous change of variables): integrating `dx/dsigma = v = (x - D(x; sigma)) /
//! sigma` from the data at `sigma_min` up to `sigma_max`,
//! `log p(x; sigma_min) = log N(x_T; 0, sigma_max^2 I) + int div v dsigma`.
//! The divergence is exact (one backward pass per dimension) or Hutchinson's estimate with
//! Gaussian probes (Grathwohl et al. 2019). Heun's method on a log-uniform grid.

use crate::loss::Decoder;
use anyhow::{bail, Result};
use scoreflow_solvers::samplers::DdpmVariance;
use scoreflow_solvers::sde::{alpha_bar_of_sigma, DdpmChain};
use scoreflow_solvers::Denoiser;
use tch::{Kind, Tensor};

/// A differentiable denoiser `D(x; sigma)`.
pub type DenoiseFn<'a> = dyn Fn(&Tensor, f64) -> Result<Tensor> + 'a;

fn velocity_and_div(
    d: &DenoiseFn,
    x: &Tensor,
    sigma: f64,
    probes: &Option<Vec<Tensor>>,
) -> Result<(Tensor, Tensor)> {
    let xg = x.detach().set_requires_grad(true);
    let v = (&xg - d(&xg, sigma)?) / sigma;
    let n = x.size()[0];
    let flat = v.reshape([n, -1]);
    let div = match probes {
        None => {
            let dim = flat.size()[1];
            let mut acc = Tensor::zeros([n], (x.kind(), x.device()));
            for j in 0..dim {
                let g =
                    Tensor::run_backward(&[flat.select(1, j).sum(x.kind())], &[&xg], true, false)
                        .pop()
                        .unwrap();
                acc += g.reshape([n, -1]).select(1, j);
            }
            acc
        }
        Some(ps) => {
            let mut acc = Tensor::zeros([n], (x.kind(), x.device()));
            for e in ps {
                let g = Tensor::run_backward(&[(&v * e).sum(x.kind())], &[&xg], true, false)
                    .pop()
                    .unwrap();
                acc += (g * e)
                    .reshape([n, -1])
                    .sum_dim_intlist([1i64].as_slice(), false, x.kind());
            }
            acc / ps.len() as f64
        }
    };
    Ok((v.detach(), div.detach()))
}

/// Per-sample `log p(x0; sigma_min)` (nats), with `steps` Heun steps from `sigma_min` to
/// `sigma_max`. `hutchinson = Some(k)` uses k Gaussian probes (fixed for the whole path, drawn
/// from `seed`) instead of the exact divergence. Returns the log-likelihoods and the NFE.
pub fn log_likelihood(
    d: &DenoiseFn,
    x0: &Tensor,
    sigma_min: f64,
    sigma_max: f64,
    steps: usize,
    hutchinson: Option<usize>,
    seed: u64,
) -> Result<(Tensor, usize)> {
    if steps == 0 || !(sigma_min > 0.0 && sigma_min < sigma_max) {
        bail!("the likelihood needs steps >= 1 and 0 < sigma_min < sigma_max");
    }
    let probes = hutchinson.map(|k| {
        let shape = x0.size();
        (0..k as u64)
            .map(|i| {
                crate::job::initial_noise_shaped(
                    seed ^ (0x4A7C + i),
                    shape[0] as usize,
                    &shape[1..],
                    x0.device(),
                    x0.kind(),
                )
            })
            .collect::<Result<Vec<_>>>()
    });
    let probes = probes.transpose()?;
    let (a, b) = (sigma_min.ln(), sigma_max.ln());
    let sig = |i: usize| (a + (b - a) * i as f64 / steps as f64).exp();
    let mut x = x0.shallow_clone();
    let mut integral = Tensor::zeros([x0.size()[0]], (x0.kind(), x0.device()));
    let mut nfe = 0;
    for i in 0..steps {
        let (s, s_next) = (sig(i), sig(i + 1));
        let h = s_next - s;
        let (v1, d1) = velocity_and_div(d, &x, s, &probes)?;
        let xe = &x + &v1 * h;
        let (v2, d2) = velocity_and_div(d, &xe, s_next, &probes)?;
        nfe += 2;
        x = &x + (v1 + v2) * (0.5 * h);
        integral += (d1 + d2) * (0.5 * h);
    }
    let dim = x0.numel() as f64 / x0.size()[0] as f64;
    let n = x.size()[0];
    let sq = x
        .reshape([n, -1])
        .square()
        .sum_dim_intlist([1i64].as_slice(), false, Kind::Double);
    let log_prior = sq / (-2.0 * sigma_max * sigma_max)
        - dim * 0.5 * (2.0 * std::f64::consts::PI * sigma_max * sigma_max).ln();
    Ok((log_prior + integral.to_kind(Kind::Double), nfe))
}

/// The discrete chain through the noise levels `levels` (ascending, all positive: the levels
/// of a DDPM chain or of a respacing of one): `alpha_bar_j = 1 / (1 + sigma_j^2)`, `beta_j = 1 -
/// alpha_bar_j / alpha_bar_{j-1}` with `alpha_bar_0 = 1` (improved DDPM's respacing, Sec. 4).
pub fn chain_through(levels: &[f64]) -> DdpmChain {
    let abar: Vec<f64> = levels.iter().map(|&s| alpha_bar_of_sigma(s)).collect();
    let betas = (0..abar.len())
        .map(|j| 1.0 - abar[j] / if j == 0 { 1.0 } else { abar[j - 1] })
        .collect();
    DdpmChain { betas }
}

/// The parts of the variational bound, bits per dimension per sample.
pub struct Bound {
    /// `L_T`: `KL(q(x_T | x_0) || N(0, I))`.
    pub prior: Tensor,
    /// `L_0`: the decoder's `-log p(x_0 | x_1)`.
    pub decoder: Tensor,
    /// `sum_{t>1} L_{t-1}`: the KL terms of the reverse steps.
    pub steps: Tensor,
}

impl Bound {
    pub fn total(&self) -> Tensor {
        &self.prior + &self.decoder + &self.steps
    }
}

/// The DDPM variational bound on `-log p(x_0)` (Ho et al. 2020, eq. 5; improved DDPM's
/// `calc_bpd_loop`) of the reverse chain through `levels` (ascending, positive; at least 2),
/// in bits per dimension per sample of `x0` (`[N, ...]`): the prior term, each step's KL
/// between the posterior and the model's Gaussian ([`crate::loss::vlb_term`], the model's mean
/// from `den`, its variance the posterior's (`small`), `beta` (`large`) or the learned one),
/// and the decoder. Each level's `x_t` is drawn from `q(x_t | x_0)` with its own noise from
/// `seed`. One evaluation per level.
pub fn variational_bound(
    den: &dyn Denoiser,
    x0: &Tensor,
    levels: &[f64],
    variance: DdpmVariance,
    decoder: Decoder,
    seed: u64,
) -> Result<Bound> {
    if levels.len() < 2 || levels.windows(2).any(|w| !(w[0] > 0.0 && w[0] < w[1])) {
        bail!("the variational bound needs at least 2 increasing positive noise levels");
    }
    let chain = chain_through(levels);
    let dev = x0.device();
    let tables = crate::loss::vlb_tables(&chain)
        .map(|t| Tensor::from_slice(&t).to_kind(Kind::Float).to_device(dev));
    let y = x0.to_kind(Kind::Float);
    let n = y.size()[0];
    let shape = y.size();
    let mut steps = Tensor::zeros([n], (Kind::Float, dev));
    let mut decoder_term = None;
    for (j, &sigma) in levels.iter().enumerate() {
        let noise = crate::job::initial_noise_shaped(
            seed ^ (0xB0_0000 + j as u64),
            n as usize,
            &shape[1..],
            dev,
            Kind::Float,
        )?;
        let x = &y + noise * sigma;
        let (d, v) = match variance {
            DdpmVariance::Learned => {
                let (d, v) = den.denoise_with_variance(&x, sigma)?;
                let v = v.ok_or_else(|| {
                    anyhow::anyhow!("--variance learned needs a network with a learned variance output (a model card with learned_sigmas = true, or a network trained with model.learned_sigmas = true)")
                })?;
                (d, v)
            }
            fixed => (
                den.denoise(&x, sigma)?,
                Tensor::full_like(
                    &y,
                    if fixed == DdpmVariance::Large {
                        1.0
                    } else {
                        -1.0
                    },
                ),
            ),
        };
        let idx = Tensor::full([n], j as i64, (Kind::Int64, dev));
        let term = crate::loss::vlb_term(&y, &d.to_kind(Kind::Float), &v, &idx, &tables, decoder);
        if j == 0 {
            decoder_term = Some(term);
        } else {
            steps += term;
        }
    }
    // KL(N(sqrt(abar_K) x0, 1 - abar_K) || N(0, 1)) per element, on DDPM's scale.
    let abar = 1.0 / (1.0 + levels[levels.len() - 1].powi(2));
    let kl = (y.square() * abar + (-(1.0 - abar).ln() + (1.0 - abar) - 1.0)) * 0.5;
    let dims: Vec<i64> = (1..y.dim() as i64).collect();
    let prior = kl.mean_dim(dims.as_slice(), false, Kind::Float) / std::f64::consts::LN_2;
    Ok(Bound {
        prior,
        decoder: decoder_term.expect("at least one level"),
        steps,
    })
}

/// Check that every value of `x` is one of the `levels` evenly spaced values from -1 to 1.
pub fn check_on_levels(x: &Tensor, levels: u32) -> Result<()> {
    let scaled = (x.to_kind(Kind::Double) + 1.0) * ((levels as f64 - 1.0) / 2.0);
    let off = (&scaled - scaled.round()).abs().max().double_value(&[]);
    let (lo, hi) = (
        x.min().to_kind(Kind::Double).double_value(&[]),
        x.max().to_kind(Kind::Double).double_value(&[]),
    );
    if off > 1e-4 || lo < -1.0 - 1e-6 || hi > 1.0 + 1e-6 {
        bail!(
            "the data are not on {levels} evenly spaced levels from -1 to 1 (values from {lo} to {hi}, up to {off:.3} of a level apart from one); --levels and a discretized decoder need discrete data"
        );
    }
    Ok(())
}

/// Uniform dequantization of data on `levels` values from -1 to 1: `x + h (u - 1/2)` with `u`
/// uniform on `[0, 1)` per element (the normal CDF of seeded normals, the same on every
/// device) and `h = 2 / (levels - 1)` the width of a value's bin. Returns the points and
/// `ln h`.
pub fn dequantize(x: &Tensor, levels: u32, seed: u64) -> Result<(Tensor, f64)> {
    let h = 2.0 / (levels as f64 - 1.0);
    let shape = x.size();
    let z = crate::job::initial_noise_shaped(
        seed ^ 0xDE_0000,
        shape[0] as usize,
        &shape[1..],
        x.device(),
        Kind::Double,
    )?;
    let u = ((z / std::f64::consts::SQRT_2).erf() + 1.0) * 0.5;
    Ok((x.to_kind(Kind::Double) + (u - 0.5) * h, h.ln()))
}

/// Options of `scoreflow nll`.
#[derive(clap::Args)]
pub struct NllArgs {
    /// The model: gmm:FILE.json, gaussian:FILE.json or builtin:gmm8.
    #[arg(
        long,
        required_unless_present = "checkpoint",
        conflicts_with = "checkpoint"
    )]
    pub denoiser: Option<String>,
    /// A trained network (its EMA weights); the data are its training set. Or a model card (.toml)
    /// with a [data] table.
    #[arg(long)]
    pub checkpoint: Option<std::path::PathBuf>,
    /// Data points to evaluate: fresh exact samples, or the first of the shuffled training set
    /// [default: 1000]; with --data, the first NUM of the file [default: all].
    #[arg(long)]
    pub num: Option<usize>,
    /// Evaluate these points (.npy, float32 or float64, `[N, ...]` in the model's per-sample
    /// shape), for example a held-out test set, instead of drawing them.
    #[arg(long)]
    pub data: Option<std::path::PathBuf>,
    /// The data are discrete, on LEVELS evenly spaced values from -1 to 1 (256 for 8-bit
    /// images, 17 for the digits): report the negative log-likelihood of the discrete data.
    /// The ODE likelihood then dequantizes (uniform noise within each value's bin of width
    /// 2 / (LEVELS - 1)) and adds -log(bin width) per dimension; with --bound, the decoder is
    /// discretized:LEVELS.
    #[arg(long)]
    pub levels: Option<u32>,
    /// Heun steps from sigma_min to sigma_max (2 NFE each) [default: 128]; with --bound, the
    /// steps of the (respaced) chain [default: the whole chain].
    #[arg(long)]
    pub steps: Option<usize>,
    /// The ODE's lower end, where the likelihood is taken [default: 0.002]; not with --bound.
    #[arg(long)]
    pub sigma_min: Option<f64>,
    /// The ODE's upper end, where the prior is N(0, sigma_max^2 I) [default: 80]; not with
    /// --bound.
    #[arg(long)]
    pub sigma_max: Option<f64>,
    /// Use Hutchinson's estimator with this many probes instead of the exact divergence.
    #[arg(long)]
    pub hutchinson: Option<usize>,
    /// The DDPM variational bound of the discrete reverse chain instead of the ODE.
    #[arg(long)]
    pub bound: bool,
    /// --bound: the chain's levels, ddpm-linspace (default), ddpm-leading or ddpm-trailing
    /// (diffusers' timestep spacings on the model's discrete chain, else DDPM's linear one).
    #[arg(long)]
    pub grid: Option<String>,
    /// --bound: the reverse steps' variance, small (default), large or learned.
    #[arg(long)]
    pub variance: Option<String>,
    /// --bound: the decoder p(x_0 | x_1), gaussian (default), discretized (8-bit images) or
    /// discretized:LEVELS (the default with --levels).
    #[arg(long)]
    pub decoder: Option<String>,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// auto, cpu, cuda or cuda:N.
    #[arg(long, default_value = "auto")]
    pub device: String,
}

/// The model `nll` evaluates, with its data.
enum Subject {
    Exact(crate::model::ExactModel),
    Trained(Box<crate::train::Model>),
}

/// `scoreflow nll`: the model's negative log-likelihood of data at sigma_min through the
/// probability-flow ODE, next to the exact value where the density is known; or with `--bound`
/// the DDPM variational bound of its discrete reverse chain.
pub fn run(a: NllArgs) -> Result<()> {
    use crate::{device, model, train};
    let dev = device::parse(&a.device)?;
    if !a.bound {
        for (flag, given) in [
            ("--grid", a.grid.is_some()),
            ("--variance", a.variance.is_some()),
            ("--decoder", a.decoder.is_some()),
        ] {
            if given {
                bail!("{flag} applies to --bound");
            }
        }
    } else {
        for (flag, given) in [
            ("--hutchinson", a.hutchinson.is_some()),
            ("--sigma-min", a.sigma_min.is_some()),
            ("--sigma-max", a.sigma_max.is_some()),
        ] {
            if given {
                bail!("{flag} applies to the ODE likelihood, not --bound (the chain's levels set its range)");
            }
        }
    }
    let steps = a.steps.unwrap_or(128);
    let (sigma_min, sigma_max) = (a.sigma_min.unwrap_or(0.002), a.sigma_max.unwrap_or(80.0));
    if a.num == Some(0)
        || steps == 0
        || !(sigma_min > 0.0 && sigma_min < sigma_max && sigma_max.is_finite())
    {
        bail!("--num and --steps must be at least 1 and 0 < --sigma-min < --sigma-max < inf");
    }
    if steps > scoreflow_solvers::grid::MAX_STEPS {
        bail!(
            "--steps {steps} is more than {}, the most a grid may have",
            scoreflow_solvers::grid::MAX_STEPS
        );
    }
    if a.levels.is_some_and(|k| k < 2) {
        bail!("--levels must be at least 2");
    }
    // With --bound, the decoder: --levels K means discretized:K.
    let decoder: Decoder = match (a.decoder.as_deref(), a.levels) {
        (None, None) => Decoder::Gaussian,
        (None, Some(k)) => Decoder::Discretized { levels: k },
        (Some(name), levels) => {
            let d: Decoder = name
                .parse()
                .map_err(|e| anyhow::anyhow!("--decoder: {e}"))?;
            if let Some(k) = levels {
                if d != (Decoder::Discretized { levels: k }) {
                    bail!(
                        "--decoder {name} contradicts --levels {k} (which means discretized:{k})"
                    );
                }
            }
            d
        }
    };
    // The data's grid: from --levels, or from a discretized decoder.
    let grid_levels = match decoder {
        Decoder::Discretized { levels } => Some(levels),
        Decoder::Gaussian => None,
    };
    let num = a
        .num
        .unwrap_or(if a.data.is_some() { usize::MAX } else { 1000 });
    // The first `num` of `n` points.
    let take = |n: i64| i64::try_from(num).unwrap_or(i64::MAX).min(n);
    if a.hutchinson == Some(0) {
        bail!("--hutchinson needs at least 1 probe");
    }
    // Counts that could not be held in memory (a mistyped number) are errors, not aborts.
    if a.data.is_none()
        && num as u128 * (1 + a.hutchinson.unwrap_or(0) as u128) > crate::job::MAX_ELEMENTS / 64
    {
        bail!(
            "--num {num}{} is too many points to hold at once",
            a.hutchinson
                .map(|k| format!(" with --hutchinson {k}"))
                .unwrap_or_default()
        );
    }
    // The model, its data (float64) and, for exact models, the data's log-density at a level.
    // The points of --data (checked against the model's per-sample shape), the first `num`.
    let from_file = |shape: &[i64]| -> Result<Option<Tensor>> {
        let Some(path) = &a.data else { return Ok(None) };
        let t = crate::npy::read_shaped(path, shape, "--data")?;
        let n = take(t.size()[0]);
        Ok(Some(t.narrow(0, 0, n).to_device(dev).to_kind(Kind::Double)))
    };
    let (subject, x0) = match (&a.denoiser, &a.checkpoint) {
        (Some(spec), _) => {
            let m = model::parse(spec, dev)?;
            let x0 = match (from_file(&[m.dim() as i64])?, &m) {
                (Some(t), _) => t,
                (None, model::ExactModel::Mixture(g)) => g.sample(num, a.seed ^ 0xDA7A, dev),
                (None, model::ExactModel::Gaussian(g)) => {
                    let z = crate::job::initial_noise(
                        a.seed ^ 0xDA7A,
                        num,
                        g.dim(),
                        dev,
                        Kind::Double,
                    )?;
                    g.sample_from(&z)
                }
            };
            (Subject::Exact(m), x0)
        }
        (None, Some(path)) => {
            let t = crate::card::load_trained(path, dev)?;
            let x0 = match from_file(&t.model.net.shape)? {
                Some(x) => x,
                None => {
                    let (data, seed) = t.data.ok_or_else(|| {
                        anyhow::anyhow!(
                            "nll needs the model's data: model card {} has no [data] table (or give --data)",
                            path.display()
                        )
                    })?;
                    let data = crate::data::load_for(&data, seed, &t.model.net.shape)?.x;
                    let _turn = train::exclusive_rng();
                    tch::manual_seed((a.seed ^ 0xDA7A) as i64 & i64::MAX);
                    let idx = Tensor::randperm(data.size()[0], (Kind::Int64, tch::Device::Cpu))
                        .narrow(0, 0, take(data.size()[0]));
                    data.index_select(0, &idx)
                        .to_device(dev)
                        .to_kind(Kind::Double)
                }
            };
            (Subject::Trained(Box::new(t.model)), x0)
        }
        (None, None) => bail!("give --denoiser or --checkpoint"),
    };
    // (Without --bound a decoder comes only from --levels: --decoder alone was refused above.)
    if let Some(k) = grid_levels {
        check_on_levels(&x0, k)?;
    }
    let dim = x0.numel() as f64 / x0.size()[0] as f64;
    // The exact model's -log density of `x` at `sigma` (mean over the points).
    let exact = |x: &Tensor, sigma: f64| -> Result<Option<f64>> {
        let lp = match &subject {
            Subject::Exact(model::ExactModel::Mixture(g)) => g.log_density(x, sigma)?,
            Subject::Exact(model::ExactModel::Gaussian(g)) => g.log_density(x, sigma)?,
            Subject::Trained(_) => return Ok(None),
        };
        Ok(Some(-lp.mean(Kind::Double).double_value(&[])))
    };
    if a.bound {
        let precond = match &subject {
            Subject::Trained(m) => Some(&m.net.precond),
            Subject::Exact(_) => None,
        };
        let grid_name = a.grid.clone().unwrap_or_else(|| "ddpm-linspace".into());
        if !grid_name.starts_with("ddpm-") {
            bail!("--bound needs a ddpm-* grid (ddpm-linspace, ddpm-leading or ddpm-trailing), not {grid_name}");
        }
        let chain_steps = match precond {
            Some(crate::precond::Precond::Discrete { timesteps, .. }) => *timesteps,
            _ => 1000,
        };
        let steps = a.steps.unwrap_or(chain_steps);
        let grid = crate::job::GridArgs {
            sigma_min: None,
            sigma_max: None,
            rho: None,
            grid: grid_name.clone(),
            steps_offset: None,
            discard_penultimate: false,
            sde: "edm".into(),
            solved: None,
        };
        let sde = scoreflow_solvers::sde::Edm::default();
        let mut levels: Vec<f64> = grid
            .sigmas_within(&sde, steps, precond)?
            .into_iter()
            .filter(|&s| s > 0.0)
            .collect();
        levels.reverse();
        let variance: DdpmVariance = a.variance.as_deref().unwrap_or("small").parse()?;
        let bound = tch::no_grad(|| -> Result<Bound> {
            match &subject {
                Subject::Exact(m) => {
                    variational_bound(m.denoiser(), &x0, &levels, variance, decoder, a.seed)
                }
                Subject::Trained(m) => {
                    variational_bound(&m.net, &x0, &levels, variance, decoder, a.seed)
                }
            }
        })?;
        let total = bound.total();
        if total.isfinite().all().int64_value(&[]) == 0 {
            bail!("non-finite variational bound (a variance output that overflows?)");
        }
        let mean = |t: &Tensor| t.mean(Kind::Double).double_value(&[]);
        let bits = mean(&total);
        println!(
            "{}",
            serde_json::json!({
                "method": "bound",
                "nll_nats": bits * dim * std::f64::consts::LN_2,
                "bits_per_dim": bits,
                "prior_bits_per_dim": mean(&bound.prior),
                "decoder_bits_per_dim": mean(&bound.decoder),
                "steps_bits_per_dim": mean(&bound.steps),
                // The exact model's density of discrete data is not this bound's quantity.
                "exact_nll_nats": if a.levels.is_some() { None } else { exact(&x0, 0.0)? },
                "variance": a.variance.as_deref().unwrap_or("small"),
                "decoder": decoder.to_string(),
                "levels": a.levels,
                "grid": grid_name,
                "steps": levels.len(), "nfe": levels.len(), "num": x0.size()[0],
                "sigma_min": levels[0], "sigma_max": levels[levels.len() - 1],
            })
        );
        return Ok(());
    }
    let d: Box<DenoiseFn> = match &subject {
        Subject::Exact(m) => {
            let den = m.denoiser();
            Box::new(move |x: &Tensor, s: f64| -> Result<Tensor> { Ok(den.denoise(x, s)?) })
        }
        Subject::Trained(m) => Box::new(|x: &Tensor, s: f64| -> Result<Tensor> {
            let sig = crate::precond::sigma_batch(s, x);
            Ok(m.net.try_forward(x, &sig, None)?.to_kind(x.kind()))
        }),
    };
    // Discrete data: the continuous likelihood of dequantized points, plus -ln h per dimension
    // for the bin (Theis et al. 2016; Song et al. 2021's bits/dim).
    let (x, ln_bin) = match a.levels {
        Some(k) => dequantize(&x0, k, a.seed)?,
        None => (x0.shallow_clone(), 0.0),
    };
    let (ll, nfe) = log_likelihood(
        d.as_ref(),
        &x,
        sigma_min,
        sigma_max,
        steps,
        a.hutchinson,
        a.seed,
    )?;
    if ll.isfinite().all().int64_value(&[]) == 0 {
        bail!("non-finite log-likelihood (the ODE solve diverged); try more --steps");
    }
    let nll = -ll.mean(Kind::Double).double_value(&[]) - dim * ln_bin;
    println!(
        "{}",
        serde_json::json!({
            "method": "ode",
            "nll_nats": nll,
            "bits_per_dim": nll / dim / std::f64::consts::LN_2,
            "exact_nll_nats": exact(&x, sigma_min)?.map(|e| e - dim * ln_bin),
            "levels": a.levels,
            "divergence": match a.hutchinson { Some(k) => format!("hutchinson({k})"), None => "exact".into() },
            "steps": steps, "nfe": nfe, "num": ll.size()[0], "sigma_min": sigma_min,
        })
    );
    Ok(())
}
