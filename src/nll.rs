//! Log-likelihood through the probability-flow ODE (Song et al. 2021, section 4.3; Chen et al.
//! 2018's instantaneous change of variables): integrating `dx/dsigma = v = (x - D(x; sigma)) /
//! sigma` from the data at `sigma_min` up to `sigma_max`,
//! `log p(x; sigma_min) = log N(x_T; 0, sigma_max^2 I) + int div v dsigma`.
//! The divergence is exact (one backward pass per dimension) or Hutchinson's estimate with
//! Gaussian probes (Grathwohl et al. 2019). Heun's method on a log-uniform grid.

use anyhow::{bail, Result};
use tch::{Kind, Tensor};

/// An exact model's log-density at the data, for the comparison the command prints.
type LogDensity<'a> = Box<dyn Fn(&Tensor) -> Result<Tensor> + 'a>;

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
    /// Data points to evaluate (fresh exact samples, or the first of the shuffled training set).
    #[arg(long, default_value_t = 1000)]
    pub num: usize,
    /// Heun steps from sigma_min to sigma_max (2 NFE each).
    #[arg(long, default_value_t = 128)]
    pub steps: usize,
    #[arg(long, default_value_t = 0.002)]
    pub sigma_min: f64,
    #[arg(long, default_value_t = 80.0)]
    pub sigma_max: f64,
    /// Use Hutchinson's estimator with this many probes instead of the exact divergence.
    #[arg(long)]
    pub hutchinson: Option<usize>,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// auto, cpu, cuda or cuda:N.
    #[arg(long, default_value = "auto")]
    pub device: String,
}

/// `scoreflow nll`: the model's negative log-likelihood of data at sigma_min through the
/// probability-flow ODE, next to the exact value where the density is known.
pub fn run(a: NllArgs) -> Result<()> {
    use crate::{device, model, train};
    let dev = device::parse(&a.device)?;
    if a.num == 0 || a.steps == 0 || !(a.sigma_min > 0.0 && a.sigma_min < a.sigma_max) {
        bail!("--num and --steps must be at least 1 and 0 < --sigma-min < --sigma-max");
    }
    if a.hutchinson == Some(0) {
        bail!("--hutchinson needs at least 1 probe");
    }
    // Counts that could not be held in memory (a mistyped number) are errors, not aborts.
    if a.num as u128 * (1 + a.hutchinson.unwrap_or(0) as u128) > crate::job::MAX_ELEMENTS / 64 {
        bail!(
            "--num {} with --hutchinson {:?} is too many points to hold at once",
            a.num,
            a.hutchinson
        );
    }
    let (ll, nfe, exact, dim) = match (&a.denoiser, &a.checkpoint) {
        (Some(spec), _) => {
            let m = model::parse(spec, dev)?;
            let (x0, exact): (Tensor, LogDensity) = match &m {
                model::ExactModel::Mixture(g) => (
                    g.sample(a.num, a.seed ^ 0xDA7A, dev),
                    Box::new(|x: &Tensor| Ok(g.log_density(x, a.sigma_min)?)),
                ),
                model::ExactModel::Gaussian(g) => {
                    let z = crate::job::initial_noise(
                        a.seed ^ 0xDA7A,
                        a.num,
                        g.dim(),
                        dev,
                        Kind::Double,
                    )?;
                    (
                        g.sample_from(&z),
                        Box::new(|x: &Tensor| Ok(g.log_density(x, a.sigma_min)?)),
                    )
                }
            };
            let den = m.denoiser();
            let d = |x: &Tensor, s: f64| -> Result<Tensor> { Ok(den.denoise(x, s)?) };
            let (ll, nfe) = log_likelihood(
                &d,
                &x0,
                a.sigma_min,
                a.sigma_max,
                a.steps,
                a.hutchinson,
                a.seed,
            )?;
            let ex = exact(&x0)?;
            (
                ll,
                nfe,
                Some(-ex.mean(Kind::Double).double_value(&[])),
                m.dim() as f64,
            )
        }
        (None, Some(path)) => {
            let t = crate::card::load_trained(path, dev)?;
            let m = t.model;
            let (data, seed) = t.data.ok_or_else(|| {
                anyhow::anyhow!(
                    "nll needs the model's data: model card {} has no [data] table",
                    path.display()
                )
            })?;
            let data = crate::data::load(&data, seed)?.x;
            let x0 =
                {
                    let _turn = train::exclusive_rng();
                    tch::manual_seed((a.seed ^ 0xDA7A) as i64 & i64::MAX);
                    let idx = Tensor::randperm(data.size()[0], (Kind::Int64, tch::Device::Cpu))
                        .narrow(0, 0, (a.num as i64).min(data.size()[0]));
                    data.index_select(0, &idx)
                        .to_device(dev)
                        .to_kind(Kind::Double)
                };
            let d = |x: &Tensor, s: f64| -> Result<Tensor> {
                let sig = crate::precond::sigma_batch(s, x);
                Ok(m.net.try_forward(x, &sig, None)?.to_kind(x.kind()))
            };
            let (ll, nfe) = log_likelihood(
                &d,
                &x0,
                a.sigma_min,
                a.sigma_max,
                a.steps,
                a.hutchinson,
                a.seed,
            )?;
            let dim = m.net.shape.iter().product::<i64>() as f64;
            (ll, nfe, None, dim)
        }
        (None, None) => bail!("give --denoiser or --checkpoint"),
    };
    if ll.isfinite().all().int64_value(&[]) == 0 {
        bail!("non-finite log-likelihood (the ODE solve diverged); try more --steps");
    }
    let nll = -ll.mean(Kind::Double).double_value(&[]);
    println!(
        "{}",
        serde_json::json!({
            "nll_nats": nll,
            "bits_per_dim": nll / dim / std::f64::consts::LN_2,
            "exact_nll_nats": exact,
            "divergence": match a.hutchinson { Some(k) => format!("hutchinson({k})"), None => "exact".into() },
            "steps": a.steps, "nfe": nfe, "num": ll.size()[0], "sigma_min": a.sigma_min,
        })
    );
    Ok(())
}
