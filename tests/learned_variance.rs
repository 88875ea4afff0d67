//! Training with learned variances (improved DDPM's hybrid loss): the variational bound's term
//! against a loop in improved DDPM's own variables, a network that learns the optimal reverse
//! variance of Gaussian data, its checkpoint sampled by `ddpm --variance learned`, and the
//! configs that are refused.

use scoreflow::loss::{vlb_tables, vlb_term, Decoder};
use scoreflow::solvers::sde::DdpmChain;
use scoreflow::train::{self, TrainConfig};
use std::path::Path;

mod common;
use common::train_quietly;
use tch::{Device, Kind, Tensor};

fn to_vec(t: &Tensor) -> Vec<f64> {
    Vec::<f64>::try_from(t.to_kind(Kind::Double).flatten(0, -1)).unwrap()
}

/// Improved DDPM's `_vb_terms_bpd` for one sample, written in its variables (x_t on the DDPM
/// scale, the model's mean from its eps prediction through `pred_xstart` and the posterior's
/// two coefficients), in f64: the bits per dimension at 0-based step `t`.
fn iddpm_vb(
    chain: &DdpmChain,
    t: usize,
    y: &[f64],
    eps: &[f64],
    d: &[f64],
    v: &[f64],
    decoder: Decoder,
) -> f64 {
    let betas = &chain.betas;
    let mut abar = vec![];
    let mut acc = 1.0;
    for b in betas {
        acc *= 1.0 - b;
        abar.push(acc);
    }
    let abar_prev = if t == 0 { 1.0 } else { abar[t - 1] };
    let post_var = |i: usize| {
        let prev = if i == 0 { 1.0 } else { abar[i - 1] };
        betas[i] * (1.0 - prev) / (1.0 - abar[i])
    };
    let log_post = if t == 0 { post_var(1) } else { post_var(t) }.ln();
    let c1 = betas[t] * abar_prev.sqrt() / (1.0 - abar[t]);
    let c2 = (1.0 - abar_prev) * (1.0 - betas[t]).sqrt() / (1.0 - abar[t]);
    let mut total = 0.0;
    for j in 0..y.len() {
        let x_t = abar[t].sqrt() * y[j] + (1.0 - abar[t]).sqrt() * eps[j];
        // A denoiser's output D as an eps prediction, and back through pred_xstart.
        let eps_hat = (x_t - abar[t].sqrt() * d[j]) / (1.0 - abar[t]).sqrt();
        let x0 = (1.0 / abar[t]).sqrt() * x_t - (1.0 / abar[t] - 1.0).sqrt() * eps_hat;
        let (true_mean, mean) = (c1 * y[j] + c2 * x_t, c1 * x0 + c2 * x_t);
        let frac = (v[j] + 1.0) / 2.0;
        let lv = frac * betas[t].ln() + (1.0 - frac) * log_post;
        total += if t > 0 {
            0.5 * (-1.0 + lv - log_post
                + (log_post - lv).exp()
                + (true_mean - mean).powi(2) * (-lv).exp())
        } else {
            match decoder {
                Decoder::Gaussian => {
                    0.5 * ((2.0 * std::f64::consts::PI).ln()
                        + lv
                        + (y[j] - mean).powi(2) * (-lv).exp())
                }
                Decoder::Discretized { levels } => {
                    // In float32, as improved DDPM computes it: far in the tails the bin's mass
                    // is a difference of two CDF values near 1 that float32 cannot resolve
                    // (down to the 1e-12 clamp), and f64 would give another number.
                    let cdf = |z: f32| {
                        0.5 * (1.0
                            + ((2.0f32 / std::f32::consts::PI).sqrt() * (z + 0.044715 * z.powi(3)))
                                .tanh())
                    };
                    let inv = (-0.5 * lv as f32).exp();
                    let c = (y[j] - mean) as f32;
                    // improved DDPM's bin half-width 1/255, for `levels` values in [-1, 1].
                    let half = 1.0 / (levels as f32 - 1.0);
                    let plus = cdf(inv * (c + half));
                    let minus = cdf(inv * (c - half));
                    -f64::from(if y[j] < -0.999 {
                        plus.max(1e-12).ln()
                    } else if y[j] > 0.999 {
                        (1.0 - minus).max(1e-12).ln()
                    } else {
                        (plus - minus).max(1e-12).ln()
                    })
                }
            }
        };
    }
    total / y.len() as f64 / 2f64.ln()
}

/// libtorch's global random generator is shared by the tests of this file, which run in
/// parallel; several seed it and then draw from it (or compare two seeded runs), so each test
/// holds this lock: its draws are its own, the same on every run.
fn rng_lock() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

#[test]
fn the_vlb_term_is_improved_ddpms_bound_in_its_own_variables() {
    let _rng = rng_lock();
    tch::manual_seed(3);
    let (n, dim) = (6i64, 5i64);
    for (chain, name) in [
        (DdpmChain::linear(1000, 1e-4, 0.02), "linear"),
        (DdpmChain::squaredcos_cap_v2(50), "cosine"),
    ] {
        let t_max = chain.betas.len() as i64;
        let tables = vlb_tables(&chain).map(|t| {
            Tensor::from_slice(&t)
                .to_kind(Kind::Float)
                .to_device(Device::Cpu)
        });
        let sigmas = chain.sigmas();
        for decoder in [
            Decoder::Gaussian,
            Decoder::EIGHT_BIT,
            Decoder::Discretized { levels: 17 },
        ] {
            // Steps 1, 2, one in the middle and the last; data on the decoder's grid in [-1, 1]
            // (8-bit for the Gaussian one; the discretized decoder's edge bins included).
            let k = match decoder {
                Decoder::Discretized { levels } => levels as i64,
                Decoder::Gaussian => 256,
            };
            let idx = Tensor::from_slice(&[0i64, 0, 1, t_max / 2, t_max - 1, 0]);
            let y = (Tensor::randint(k, [n, dim], (Kind::Float, Device::Cpu))
                * (2.0 / (k - 1) as f64)
                - 1.0)
                .to_kind(Kind::Float);
            let _ = y.get(0).get(0).fill_(-1.0);
            let _ = y.get(1).get(0).fill_(1.0);
            let eps = Tensor::randn([n, dim], (Kind::Float, Device::Cpu));
            // A denoiser output near y, and a variance output within and beyond [-1, 1].
            let d = &y + Tensor::randn([n, dim], (Kind::Float, Device::Cpu)) * 0.01;
            let v = Tensor::rand([n, dim], (Kind::Float, Device::Cpu)) * 2.4 - 1.2;
            let got = to_vec(&vlb_term(&y, &d, &v, &idx, &tables, decoder));
            for i in 0..n {
                let t = idx.int64_value(&[i]) as usize;
                let row = |x: &Tensor| to_vec(&x.get(i));
                let want = iddpm_vb(&chain, t, &row(&y), &row(&eps), &row(&d), &row(&v), decoder);
                let rel = (got[i as usize] - want).abs() / want.abs().max(1e-3);
                assert!(
                    rel < 2e-4,
                    "{name} {decoder:?} t = {t} (sigma {}): {} vs improved DDPM's {want}",
                    sigmas[t],
                    got[i as usize]
                );
            }
        }
    }
}

/// The whole per-sample loss of a network with a variance output, its steps and noise redrawn
/// from the same seed, against improved DDPM's `training_losses` (RESCALED_MSE with
/// LEARNED_RANGE) written out in its variables: `mean (eps_hat - eps)^2 + T / 1000 L_t`. With
/// `SCOREFLOW_IDDPM_CASE=DIR` the case is also written there for
/// `experiments/peers/iddpm_loss.py`, which runs improved-diffusion's own code on it.
#[test]
fn the_hybrid_loss_is_improved_ddpms_training_loss() {
    let _rng = rng_lock();
    // It compares two draws from one seed: training elsewhere in the process takes turns too.
    let _turn = train::exclusive_rng();
    let chain = DdpmChain::squaredcos_cap_v2(50);
    let loss_toml =
        "kind = \"ddpm\"\nschedule = \"squaredcos-cap-v2\"\nsteps = 50\ndecoder = \"discretized\"";
    let text = format!(
        "out_dir = \"x\"\n[data]\nkind = \"moons\"\n[model]\nlearned_sigmas = true\n[model.precond]\nkind = \"discrete\"\nschedule = \"squaredcos-cap-v2\"\ntimesteps = 50\n[model.backbone]\nkind = \"mlp\"\nhidden = 32\ndepth = 2\n[loss]\n{loss_toml}\n[train]\nsteps = 1\n"
    );
    let cfg = TrainConfig::from_toml(&text, Path::new("t.toml")).unwrap();
    let (n, dim) = (400i64, 16i64);
    let model = train::Model::new(&cfg.model, &[dim], 0, Device::Cpu);
    tch::manual_seed(11);
    // Data on the 8-bit grid in [-1, 1], the discretized decoder's domain, both edges included.
    let y = Tensor::randint(256, [n, dim], (Kind::Float, Device::Cpu)) * (2.0 / 255.0) - 1.0;
    let _ = y.get(0).get(0).fill_(-1.0);
    let _ = y.get(1).get(0).fill_(1.0);
    tch::manual_seed(12);
    let got = to_vec(&tch::no_grad(|| cfg.loss.loss(&model.net, &y, None)));
    // The same draws: the steps, then the noise.
    tch::manual_seed(12);
    let idx = Tensor::randint(50, [n], (Kind::Int64, Device::Cpu));
    let noise = y.randn_like();
    let sigmas = Tensor::from_slice(&chain.sigmas()).to_kind(Kind::Float);
    let sigma = sigmas.index_select(0, &idx);
    let x = &y + &noise * sigma.unsqueeze(1);
    let (d, v) = tch::no_grad(|| model.net.try_forward_parts(&x, &sigma, None)).unwrap();
    let v = v.unwrap();
    let eps_hat = (&x - &d) / sigma.unsqueeze(1);
    let steps: Vec<i64> = Vec::try_from(&idx).unwrap();
    assert!(steps.contains(&0) && steps.contains(&49));
    for i in 0..n {
        let row = |t: &Tensor| to_vec(&t.get(i));
        let t = steps[i as usize] as usize;
        let (e, eh) = (row(&noise), row(&eps_hat));
        let mse = e.iter().zip(&eh).map(|(a, b)| (a - b).powi(2)).sum::<f64>() / dim as f64;
        let vb = iddpm_vb(
            &chain,
            t,
            &row(&y),
            &e,
            &row(&d),
            &row(&v),
            Decoder::EIGHT_BIT,
        );
        let want = mse + 50.0 / 1000.0 * vb;
        let rel = (got[i as usize] - want).abs() / want.abs().max(1e-2);
        assert!(
            rel < 2e-4,
            "sample {i}, t = {t}: {} vs {want}",
            got[i as usize]
        );
    }
    // objective = "vlb": the bound alone, T L_t (improved DDPM's RESCALED_KL), on the same draws.
    let cfg_kl = TrainConfig::from_toml(
        &text.replace(loss_toml, &format!("{loss_toml}\nobjective = \"vlb\"")),
        Path::new("t.toml"),
    )
    .unwrap();
    tch::manual_seed(12);
    let got_kl = to_vec(&tch::no_grad(|| cfg_kl.loss.loss(&model.net, &y, None)));
    for i in 0..n {
        let row = |t: &Tensor| to_vec(&t.get(i));
        let t = steps[i as usize] as usize;
        let vb = iddpm_vb(
            &chain,
            t,
            &row(&y),
            &row(&noise),
            &row(&d),
            &row(&v),
            Decoder::EIGHT_BIT,
        );
        let want = 50.0 * vb;
        let rel = (got_kl[i as usize] - want).abs() / want.abs().max(1e-2);
        assert!(
            rel < 2e-4,
            "vlb objective, sample {i}, t = {t}: {} vs {want}",
            got_kl[i as usize]
        );
    }
    if let Ok(dir) = std::env::var("SCOREFLOW_IDDPM_CASE") {
        let dir = Path::new(&dir);
        std::fs::create_dir_all(dir).unwrap();
        Tensor::from_slice(&got_kl)
            .write_npy(dir.join("loss_kl.npy"))
            .unwrap();
        let betas = Tensor::from_slice(&chain.betas);
        for (name, t) in [
            ("betas", betas),
            ("x_start", y),
            ("noise", noise),
            ("t", idx),
            ("eps_hat", eps_hat),
            ("v", v),
            ("loss", Tensor::from_slice(&got)),
        ] {
            t.write_npy(dir.join(format!("{name}.npy"))).unwrap();
        }
    }
}

/// Improved DDPM's `LossSecondMomentResampler` (`resample.py`), as it is written: a shift
/// register of the last 10 losses per step, updated one loss at a time.
struct ReferenceResampler {
    history: Vec<Vec<f64>>,
    counts: Vec<usize>,
}

impl ReferenceResampler {
    fn weights(&self) -> Vec<f64> {
        let t = self.counts.len();
        if self.counts.iter().any(|&c| c < 10) {
            return vec![1.0 / t as f64; t];
        }
        let w: Vec<f64> = self
            .history
            .iter()
            .map(|h| (h.iter().map(|l| l * l).sum::<f64>() / 10.0).sqrt())
            .collect();
        let sum: f64 = w.iter().sum();
        w.iter()
            .map(|x| x / sum * (1.0 - 0.001) + 0.001 / t as f64)
            .collect()
    }
    fn update(&mut self, ts: &[i64], losses: &[f64]) {
        for (&t, &l) in ts.iter().zip(losses) {
            let t = t as usize;
            if self.counts[t] == 10 {
                self.history[t].remove(0);
                self.history[t].push(l);
            } else {
                self.history[t][self.counts[t]] = l;
                self.counts[t] += 1;
            }
        }
    }
}

#[test]
fn the_step_sampler_is_improved_ddpms_loss_second_moment_resampler() {
    let _rng = rng_lock();
    use scoreflow::loss::LossSecondMoment;
    let t_max = 7;
    let ours = LossSecondMoment::new(t_max, Device::Cpu);
    let mut reference = ReferenceResampler {
        history: vec![vec![0.0; 10]; t_max],
        counts: vec![0; t_max],
    };
    tch::manual_seed(4);
    // The batches come from a generator of the test's own (xorshift64), not libtorch's global
    // one, which the tests running beside this one draw from too: the same data every run.
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let (mut all_t, mut all_l) = (vec![], vec![]);
    let mut warm_seen = false;
    for batch in 0..30 {
        // Batches of 24 with repeated steps; one batch puts 15 losses on step 3 (more than the
        // history keeps).
        let steps: Vec<i64> = if batch == 12 {
            vec![3; 15]
        } else {
            (0..24).map(|_| (next() % t_max as u64) as i64).collect()
        };
        let scale = (1 + batch % 5) as f64;
        let uniform: Vec<f32> = steps
            .iter()
            .map(|_| ((next() >> 11) as f64 / (1u64 << 53) as f64 * scale) as f32)
            .collect();
        let idx = Tensor::from_slice(&steps);
        let losses = Tensor::from_slice(&uniform);
        ours.update(&idx, &losses);
        let (ts, ls): (Vec<i64>, Vec<f64>) = (
            Vec::try_from(&idx).unwrap(),
            Vec::try_from(&losses.to_kind(Kind::Double)).unwrap(),
        );
        reference.update(&ts, &ls);
        all_t.extend(ts);
        all_l.extend(ls);
        let got: Vec<f64> = Vec::try_from(&ours.probabilities()).unwrap();
        let want = reference.weights();
        warm_seen |= reference.counts.iter().all(|&c| c == 10);
        for k in 0..t_max {
            assert!(
                (got[k] - want[k]).abs() < 1e-6 * want[k],
                "batch {batch}, step {k}: {} vs improved DDPM's {}",
                got[k],
                want[k]
            );
        }
    }
    assert!(warm_seen);
    // Not uniform once warm (largest over smallest p: 1.51 on these batches), and each drawn
    // step's weight is 1 / (T p_t).
    let p: Vec<f64> = Vec::try_from(&ours.probabilities()).unwrap();
    assert!(p.iter().cloned().fold(0.0, f64::max) > 1.2 * p.iter().cloned().fold(1.0, f64::min));
    let (idx, w) = ours.sample(64);
    for (i, t) in Vec::<i64>::try_from(&idx).unwrap().into_iter().enumerate() {
        let want = 1.0 / (t_max as f64 * p[t as usize]);
        assert!((w.double_value(&[i as i64]) - want).abs() < 1e-5 * want);
    }
    // The steps are drawn from p: frequencies of 40,000 draws within 0.01 of it.
    let (idx, _) = ours.sample(40_000);
    let counts: Vec<i64> = Vec::try_from(&idx.bincount(None::<Tensor>, t_max as i64)).unwrap();
    for k in 0..t_max {
        let freq = counts[k] as f64 / 40_000.0;
        assert!(
            (freq - p[k]).abs() < 0.01,
            "step {k}: drawn {freq:.4}, p {:.4}",
            p[k]
        );
    }
    if let Ok(dir) = std::env::var("SCOREFLOW_IDDPM_CASE") {
        let dir = Path::new(&dir);
        std::fs::create_dir_all(dir).unwrap();
        Tensor::from_slice(&all_t)
            .write_npy(dir.join("resample_t.npy"))
            .unwrap();
        Tensor::from_slice(&all_l)
            .write_npy(dir.join("resample_loss.npy"))
            .unwrap();
        ours.probabilities()
            .write_npy(dir.join("resample_p.npy"))
            .unwrap();
    }
}

/// Gaussian data N(0, c^2 I): the reverse step's optimal variance is
/// `beta~_t + coef_t^2 Var(x0 | x_t)` (the KL term's minimum over the variance, with the exact
/// denoiser), `Var(x0 | x_t) = c^2 s^2 / (c^2 + s^2)` at noise level `s`; at step 1 (the
/// Gaussian decoder) `Var(x0 | x_1)` itself. As `v`: `2 (ln opt - ln beta~) / (ln beta -
/// ln beta~) - 1`.
fn optimal_v(chain: &DdpmChain, t: usize, c: f64) -> f64 {
    let [coef, log_post, log_beta] = vlb_tables(chain);
    let s = chain.sigmas()[t];
    let var0 = c * c * s * s / (c * c + s * s);
    let opt = if t == 0 {
        var0
    } else {
        log_post[t].exp() + coef[t].powi(2) * var0
    };
    2.0 * (opt.ln() - log_post[t]) / (log_beta[t] - log_post[t]) - 1.0
}

fn gaussian_config(dir: &Path, steps: usize) -> TrainConfig {
    gaussian_config_with(dir, steps, "vlb_weight = 0.01")
}

fn gaussian_config_with(dir: &Path, steps: usize, loss_lines: &str) -> TrainConfig {
    let mix = dir.join("gauss.json");
    std::fs::write(
        &mix,
        r#"{"weights": [1.0], "means": [[0.0, 0.0]], "stds": [0.05]}"#,
    )
    .unwrap();
    let text = format!(
        r#"
seed = 2
device = "cpu"
out_dir = "{}"
[data]
kind = "mixture"
path = "{}"
num = 20000
[model]
learned_sigmas = true
[model.precond]
kind = "discrete"
prediction = "eps"
schedule = "squaredcos-cap-v2"
timesteps = 100
[model.backbone]
kind = "mlp"
hidden = 128
depth = 3
fourier_features = 16
[loss]
kind = "ddpm"
schedule = "squaredcos-cap-v2"
steps = 100
{loss_lines}
[train]
steps = {steps}
batch = 512
lr = 2e-3
warmup_steps = 100
ema_half_life = 20000
checkpoint_every = {steps}
log_every = 500
snapshot_samples = 0
"#,
        dir.join("run").display(),
        mix.display()
    );
    TrainConfig::from_toml(&text, Path::new("test.toml")).unwrap()
}

#[test]
fn learned_variances_train_to_the_optimal_reverse_variance() {
    let _rng = rng_lock();
    let dir = tempfile::tempdir().unwrap();
    let cfg = gaussian_config(dir.path(), 2000);
    let report = train_quietly(&cfg);
    let (m, _) = train::load_for_sampling(&report.checkpoint, Device::Cpu).unwrap();
    assert!(m.net.has_learned_variance());
    let chain = DdpmChain::squaredcos_cap_v2(100);
    let sigmas = chain.sigmas();
    let [_, log_post, log_beta] = vlb_tables(&chain);
    tch::manual_seed(7);
    let y = Tensor::randn([2000, 2], (Kind::Float, Device::Cpu)) * 0.05;
    // The bound's excess over its minimum from the variance alone, summed over the steps:
    // 0.5 (opt / var - 1 + ln var - ln opt) per element, in nats.
    let (mut learned, mut small, mut large) = (0.0, 0.0, 0.0);
    for t in 0..100 {
        let s = sigmas[t];
        let x = &y + y.randn_like() * s;
        let sig = Tensor::full([2000], s, (Kind::Float, Device::Cpu));
        let (_, v) = tch::no_grad(|| m.net.try_forward_parts(&x, &sig, None)).unwrap();
        let v = v.unwrap().to_kind(Kind::Double);
        let want = optimal_v(&chain, t, 0.05);
        let half_gap = (log_beta[t] - log_post[t]) / 2.0;
        let excess = |dv: &Tensor| {
            let d = dv * half_gap; // ln var - ln opt
            ((d.neg().exp() - 1.0 + &d) * 0.5)
                .mean(Kind::Double)
                .double_value(&[])
        };
        let l = excess(&(&v - want));
        let (sm, la) = (
            excess(&Tensor::from(-1.0 - want)),
            excess(&Tensor::from(1.0 - want)),
        );
        learned += l;
        small += sm;
        large += la;
        // Where the variance matters (the first steps, where beta and beta~ differ most and
        // the optimum lies between them), v is the optimum's.
        let mean_v = v.mean(Kind::Double).double_value(&[]);
        if (1..=5).contains(&t) {
            assert!(
                (mean_v - want).abs() < 0.15,
                "step {}: mean v {mean_v:.3}, optimal {want:.3}",
                t + 1
            );
        }
    }
    println!("the bound's excess: learned {learned:.3e}, small {small:.3e}, large {large:.3e}");
    assert!(
        learned < 0.1 * small.min(large),
        "learned {learned:.3e}, small {small:.3e}, large {large:.3e}"
    );

    // The checkpoint samples from the command line with its learned variance. On the whole
    // chain (100 steps) the learned variance is each step's optimum, so for Gaussian data the
    // steps are the exact reverse conditionals: the samples' spread is the data's (0.05),
    // where the posterior variance gives too little and beta too much. Respaced to 25 steps
    // (improved DDPM's interpolation between the new steps' bounds) it lies between them.
    let std = |variance: &str, steps: &str| {
        let out = dir.path().join(format!("{variance}-{steps}.npy"));
        let o = bin()
            .args(["sample", "--checkpoint"])
            .arg(&report.checkpoint)
            .args(["--solver", "ddpm", "--variance", variance])
            .args(["--grid", "ddpm-trailing", "--steps", steps])
            .args(["--num", "4000", "--seed", "3", "--device", "cpu", "--out"])
            .arg(&out)
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        scoreflow::npy::read(&out)
            .unwrap()
            .std(true)
            .double_value(&[])
    };
    let [learned, small, large] = ["learned", "small", "large"].map(|v| std(v, "100"));
    println!("100 steps: std learned {learned:.4}, small {small:.4}, large {large:.4} (data 0.05)");
    let err = |s: f64| (s - 0.05).abs();
    assert!(
        err(learned) < err(small).min(err(large)),
        "100 steps: std learned {learned:.4}, small {small:.4}, large {large:.4} (data 0.05)"
    );
    let [learned, small, large] = ["learned", "small", "large"].map(|v| std(v, "25"));
    assert!(
        small < learned && learned < large,
        "25 steps: std learned {learned:.4}, small {small:.4}, large {large:.4}"
    );
}

/// `objective = "vlb"` with improved DDPM's importance sampling of steps: the bound alone
/// trains mean and variance. On the Gaussian data of the test above, the learned variance is
/// again near each step's optimum where it matters, and the model's bound is below those of
/// the fixed variances.
#[test]
fn the_vlb_objective_with_importance_sampling_trains_mean_and_variance() {
    let _rng = rng_lock();
    let dir = tempfile::tempdir().unwrap();
    let cfg = gaussian_config_with(
        dir.path(),
        2000,
        "objective = \"vlb\"\nstep_sampler = \"loss-second-moment\"",
    );
    let report = train_quietly(&cfg);
    assert!(report.losses.iter().all(|l| l.1.is_finite()));
    let (m, _) = train::load_for_sampling(&report.checkpoint, Device::Cpu).unwrap();
    let chain = DdpmChain::squaredcos_cap_v2(100);
    let sigmas = chain.sigmas();
    tch::manual_seed(7);
    let y = Tensor::randn([2000, 2], (Kind::Float, Device::Cpu)) * 0.05;
    let mut report_v = vec![];
    for (t, &s) in sigmas.iter().enumerate().take(6).skip(1) {
        let x = &y + y.randn_like() * s;
        let sig = Tensor::full([2000], s, (Kind::Float, Device::Cpu));
        let (_, v) = tch::no_grad(|| m.net.try_forward_parts(&x, &sig, None)).unwrap();
        let mean_v = v.unwrap().mean(Kind::Double).double_value(&[]);
        report_v.push((t + 1, mean_v, optimal_v(&chain, t, 0.05)));
    }
    println!("vlb objective: (step, mean v, optimal v) {report_v:.3?}");
    for &(t, got, want) in &report_v {
        assert!(
            (got - want).abs() < 0.2,
            "step {t}: mean v {got:.3}, optimal {want:.3}"
        );
    }
    let bound = |variance: &str| {
        let o = bin()
            .args(["nll", "--checkpoint"])
            .arg(&report.checkpoint)
            .args([
                "--bound",
                "--variance",
                variance,
                "--num",
                "2000",
                "--device",
                "cpu",
            ])
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        serde_json::from_slice::<serde_json::Value>(&o.stdout).unwrap()["bits_per_dim"]
            .as_f64()
            .unwrap()
    };
    let [learned, small, large] = ["learned", "small", "large"].map(bound);
    println!(
        "vlb objective, bound (bits/dim): learned {learned:.4}, small {small:.4}, large {large:.4}"
    );
    assert!(
        learned < small.min(large),
        "learned {learned}, small {small}, large {large}"
    );
}

fn bin() -> std::process::Command {
    std::process::Command::new(env!("CARGO_BIN_EXE_scoreflow"))
}

#[test]
fn learned_variance_configs_are_checked() {
    let _rng = rng_lock();
    let dir = tempfile::tempdir().unwrap();
    let base = |model: &str, loss: &str| {
        format!(
            "out_dir = \"{}\"\n[data]\nkind = \"moons\"\n[model]\n{model}\n[loss]\n{loss}\n[train]\nsteps = 1\n",
            dir.path().join("run").display()
        )
    };
    for (model, loss, needle) in [
        (
            "learned_sigmas = true",
            "kind = \"edm\"",
            "model.learned_sigmas = true needs [loss] kind = \"ddpm\"",
        ),
        (
            "",
            "kind = \"ddpm\"\nvlb_weight = 0.001",
            "loss.vlb_weight, loss.decoder and loss.objective apply to a network with model.learned_sigmas = true",
        ),
        (
            "",
            "kind = \"ddpm\"\ndecoder = \"gaussian\"",
            "loss.vlb_weight, loss.decoder and loss.objective apply",
        ),
        (
            "",
            "kind = \"ddpm\"\nobjective = \"vlb\"",
            "loss.vlb_weight, loss.decoder and loss.objective apply",
        ),
        (
            "learned_sigmas = true",
            "kind = \"ddpm\"\nobjective = \"vlb\"\nvlb_weight = 0.01",
            "loss.vlb_weight applies to the hybrid objective",
        ),
        (
            "learned_sigmas = true",
            "kind = \"ddpm\"\nstep_sampler = \"importance\"",
            "unknown variant `importance`",
        ),
        (
            "learned_sigmas = true",
            "kind = \"ddpm\"\nvlb_weight = -1.0",
            "loss.vlb_weight must be positive, got -1",
        ),
        (
            "learned_sigmas = true",
            "kind = \"ddpm\"\nsteps = 1",
            "a ddpm loss of at least 2 steps",
        ),
        (
            "learned_sigmas = true",
            "kind = \"ddpm\"\ndecoder = \"logistic\"",
            "unknown decoder 'logistic' (known: gaussian, discretized, discretized:LEVELS)",
        ),
        (
            "learned_sigmas = true",
            "kind = \"ddpm\"\ndecoder = \"discretized:1\"",
            "a discretized decoder needs at least 2 levels",
        ),
        (
            "learned_sigmas = true",
            "kind = \"ddpm\"\nschedule = \"cosine\"",
            "unknown variant `cosine`",
        ),
    ] {
        let path = dir.path().join("bad.toml");
        std::fs::write(&path, base(model, loss)).unwrap();
        let err = TrainConfig::load(&path).err().unwrap().to_string();
        assert!(err.contains(needle), "{model} / {loss}: {err}");
        // From the command line: exit code 2, the message, no output folder.
        let o = bin().arg("train").arg(&path).output().unwrap();
        let stderr = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{stderr}");
        assert!(
            stderr.contains(needle) && !stderr.contains("panicked"),
            "{stderr}"
        );
        assert!(!dir.path().join("run").exists());
    }
    // A discretized decoder on data that are not on its levels (the moons are continuous).
    let path = dir.path().join("off-grid.toml");
    std::fs::write(
        &path,
        base(
            "learned_sigmas = true",
            "kind = \"ddpm\"\ndecoder = \"discretized:17\"",
        ),
    )
    .unwrap();
    let o = bin().arg("train").arg(&path).output().unwrap();
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains(
            "loss.decoder = \"discretized:17\": the data are not on 17 evenly spaced levels"
        ),
        "{stderr}"
    );
    assert!(!dir.path().join("run").exists());
    // The accepted forms: the cosine chain with the discretized decoder, the default weight.
    std::fs::write(
        dir.path().join("ok.toml"),
        base(
            "learned_sigmas = true",
            "kind = \"ddpm\"\nschedule = \"squaredcos-cap-v2\"\ndecoder = \"discretized\"",
        ),
    )
    .unwrap();
    let ok = TrainConfig::load(&dir.path().join("ok.toml")).unwrap();
    assert!(matches!(
        ok.loss,
        scoreflow::loss::LossConfig::Ddpm {
            decoder: Some(Decoder::EIGHT_BIT),
            ..
        }
    ));
}

/// A U-Net with learned variances: twice the output channels, the second half `v`; a training
/// step of the hybrid loss updates it; `ddpm --variance learned` samples it.
#[test]
fn a_unet_with_learned_variances_trains_and_samples() {
    let _rng = rng_lock();
    let dir = tempfile::tempdir().unwrap();
    let text = format!(
        r#"
device = "cpu"
out_dir = "{}"
[data]
kind = "digits"
[model]
learned_sigmas = true
[model.precond]
kind = "discrete"
[model.backbone]
kind = "unet"
channels = 8
channel_mult = [1]
blocks = 1
attn_resolutions = []
[loss]
kind = "ddpm"
decoder = "discretized:17"
[train]
steps = 3
batch = 8
checkpoint_every = 3
log_every = 1
snapshot_samples = 4
"#,
        dir.path().join("run").display()
    );
    let cfg = TrainConfig::from_toml(&text, Path::new("unet.toml")).unwrap();
    let report = train_quietly(&cfg);
    assert!(report.losses.iter().all(|l| l.1.is_finite()));
    let (m, _) = train::load_for_sampling(&report.checkpoint, Device::Cpu).unwrap();
    assert!(m.net.has_learned_variance());
    let x = Tensor::randn([2, 1, 8, 8], (Kind::Float, Device::Cpu));
    let sig = Tensor::from_slice(&[0.5f32, 5.0]);
    let (d, v) = tch::no_grad(|| m.net.try_forward_parts(&x, &sig, None)).unwrap();
    assert_eq!(d.size(), [2, 1, 8, 8]);
    assert_eq!(v.unwrap().size(), [2, 1, 8, 8]);
    let out = dir.path().join("x.npy");
    let o = bin()
        .args(["sample", "--checkpoint"])
        .arg(&report.checkpoint)
        .args([
            "--solver",
            "ddpm",
            "--variance",
            "learned",
            "--grid",
            "ddpm-leading",
        ])
        .args(["--steps", "4", "--num", "3", "--device", "cpu", "--out"])
        .arg(&out)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(scoreflow::npy::read(&out).unwrap().size(), [3, 1, 8, 8]);
}

#[test]
fn quantize_feeds_a_chain_network_whole_steps() {
    // runs/digits-learned was trained on DDPM's chain at whole steps, its time embedding random
    // Fourier features of the step index. ComfyUI's normal grid at 5 steps of 1000 lies at the
    // fractional steps 999, 749.25, ...: `--quantize` feeds the nearest whole steps instead (as
    // ComfyUI does) and changes the samples; on ddpm-leading, whose levels are whole steps, it
    // changes nothing. A network with a continuous noise input refuses it (exit 2).
    let dir = tempfile::tempdir().unwrap();
    let sample = |ckpt: &str, grid: &str, quantize: bool, out: &str| {
        let mut cmd = bin();
        cmd.args(["sample", "--checkpoint"])
            .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join(ckpt))
            .args([
                "--solver", "euler", "--steps", "5", "--num", "8", "--grid", grid,
            ])
            .arg("--out")
            .arg(dir.path().join(out));
        if quantize {
            cmd.arg("--quantize");
        }
        let o = cmd.output().unwrap();
        (o.status.code(), std::fs::read(dir.path().join(out)).ok(), o)
    };
    let learned = "runs/digits-learned/checkpoint.safetensors";
    let (code, frac, _) = sample(learned, "comfy-normal", false, "a.npy");
    assert_eq!(code, Some(0));
    let (code, whole, _) = sample(learned, "comfy-normal", true, "b.npy");
    assert_eq!(code, Some(0));
    assert_ne!(frac, whole);
    let (_, plain, _) = sample(learned, "ddpm-leading", false, "c.npy");
    let (_, quantized, _) = sample(learned, "ddpm-leading", true, "d.npy");
    assert!(plain.is_some());
    assert_eq!(plain, quantized);
    let (code, written, o) = sample(
        "runs/digits/checkpoint.safetensors",
        "karras",
        true,
        "e.npy",
    );
    assert_eq!(code, Some(2));
    assert!(written.is_none());
    assert!(
        String::from_utf8_lossy(&o.stderr)
            .contains("quantize applies to a network with a discrete preconditioning"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    // The same in an experiment's [model]: exit 2 before anything is written.
    let out = dir.path().join("out");
    let cfg = dir.path().join("q.toml");
    std::fs::write(
        &cfg,
        format!(
            "out_dir = \"{}\"\ndevice = \"cpu\"\nnum = 8\nseeds = [0]\nsteps = [4]\nmetrics = [\"fd\"]\n[model]\nkind = \"checkpoint\"\npath = \"{}\"\nquantize = true\n[[samplers]]\nkind = \"euler\"\n",
            out.display(),
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("runs/digits/checkpoint.safetensors")
                .display()
        ),
    )
    .unwrap();
    let o = bin().arg("run").arg(&cfg).output().unwrap();
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("quantize applies"));
    assert!(!out.exists());
}
