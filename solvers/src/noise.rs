//! Seeded noise with one generator per sample, on a Brownian path shared by every step count.
//!
//! Each sample `k` of a run with seed `s` owns a key derived from `(s, k)` only, so its noise
//! does not depend on the batch size or on which other samples are drawn with it. Per-step
//! noise comes from a virtual Brownian tree (Li et al. 2020, as in torchsde and k-diffusion's
//! `BrownianTreeNoiseSampler`): `W(t)` on `[0, span]` is defined by recursive Brownian-bridge
//! bisection, each node's normals drawn from a counter-based generator keyed by the node
//! (SplitMix64 positions through Box-Muller, [`normal_at`]), so `W` can be queried at any time in
//! any order and always gives the same path. The bisection's branches depend only on the time,
//! not on the sample, so a query is a weighted sum of per-node normals that the device computes
//! from keys the host sends: the same values on the CPU and on CUDA, without host-side noise. A sampler that needs `N(0, I)` for
//! the step from `a` to `b` takes `(W(b) - W(a)) / sqrt(|b - a|)`: disjoint steps get independent
//! normals, and a finer grid refines the same path.

use crate::error::{Result, SolverError};
use rand::{Rng, RngCore, SeedableRng};
use rand_distr::StandardNormal;
use rand_xoshiro::{SplitMix64, Xoshiro256PlusPlus};
use rayon::prelude::*;
use std::collections::HashMap;
use tch::{Device, Kind, Tensor};

/// Noise stream used by ancestral, DDIM, DDPM and the PC predictor for each step.
pub const STREAM_STEP: u64 = 1;
/// Noise stream for EDM's churn (independent of the step stream).
pub const STREAM_CHURN: u64 = 2;
/// Noise stream for Euler-Maruyama, indexed by the SDE's time.
pub const STREAM_TIME: u64 = 3;
/// First noise stream of the Langevin corrector; corrector step `j` uses `STREAM_CORRECTOR + j`.
pub const STREAM_CORRECTOR: u64 = 16;

/// A 64-bit hash (the SplitMix64 output function).
pub fn mix(x: u64) -> u64 {
    SplitMix64::seed_from_u64(x).next_u64()
}

/// The key of sample `index` in a run with seed `seed`.
pub fn sample_key(seed: u64, index: u64) -> u64 {
    mix(mix(seed) ^ mix(index.wrapping_add(0x5EED)))
}

/// Where the samplers get their randomness.
pub trait NoiseSource {
    /// The Brownian increment `W(b) - W(a)` of stream `stream`, shape `[N, ...]`.
    fn increment(&mut self, stream: u64, a: f64, b: f64) -> Result<Tensor>;

    /// A standard normal tied to the interval from `a` to `b`: `(W(b) - W(a)) / sqrt(|b - a|)`.
    fn standard(&mut self, stream: u64, a: f64, b: f64) -> Result<Tensor> {
        let scale = (b - a).abs().sqrt();
        Ok(self.increment(stream, a, b)? / scale)
    }
}

/// Per-sample virtual Brownian trees.
pub struct BrownianNoise {
    keys: Vec<u64>,
    shape: Vec<i64>,
    numel: usize,
    span: f64,
    tol: f64,
    device: Device,
    kind: Kind,
    cache: HashMap<(u64, u64), Tensor>,
    tensor_ops: bool,
    /// The generator's position offsets on the device (tensor path), made on first use.
    offsets: std::cell::OnceCell<(Tensor, Tensor)>,
}

impl BrownianNoise {
    /// Samples `first .. first + count` of seed `seed`, each of per-sample shape `shape`,
    /// with Brownian paths on `[0, span]`.
    pub fn new(
        seed: u64,
        first: u64,
        count: usize,
        shape: &[i64],
        span: f64,
        device: Device,
        kind: Kind,
    ) -> Self {
        let keys = (0..count as u64)
            .map(|k| sample_key(seed, first + k))
            .collect();
        let numel = shape.iter().product::<i64>().max(1) as usize;
        BrownianNoise {
            keys,
            shape: shape.to_vec(),
            numel,
            span,
            tol: 1e-9 * span.max(1.0),
            device,
            kind,
            cache: HashMap::new(),
            tensor_ops: device.is_cuda(),
            offsets: Default::default(),
        }
    }

    /// Compute the tree's values with tensor ops on the device (the default on CUDA) or on the
    /// host, sample by sample in parallel (the default on the CPU, where it is faster). Both give
    /// the same values up to the last place of `log` and `cos`.
    pub fn set_tensor_ops(&mut self, on: bool) {
        self.tensor_ops = on;
        self.cache.clear();
    }

    fn full_shape(&self) -> Vec<i64> {
        let mut s = vec![self.keys.len() as i64];
        s.extend_from_slice(&self.shape);
        s
    }

    fn to_tensor(&self, v: &[f64]) -> Tensor {
        self.upload(
            Tensor::from_slice(v)
                .view(self.full_shape().as_slice())
                .to_kind(self.kind),
        )
    }

    /// Standard normals of the starting noise, one generator per sample, shape `[N, ...]`.
    pub fn initial(&self) -> Tensor {
        let mut out = Vec::with_capacity(self.keys.len() * self.numel);
        for &k in &self.keys {
            normals_into(mix(k ^ 0x1A17), self.numel, &mut out);
        }
        self.to_tensor(&out)
    }

    /// The tree walk to `t` in `[0, span]`, which is the same for every sample: the bisection
    /// branches taken (1 left, 2 right) and the coefficients `c` with
    /// `W(t) = c[0] Z_end + sum_l c[1 + l] Z_l`, where `Z_end` is the endpoint's normal and
    /// `Z_l` the normal of the node bisected at level `l`: `W(span) = sqrt(span) Z_end`, each
    /// midpoint `W(m) = (W(a) + W(b)) / 2 + sqrt((b - a) / 4) Z_l` (the Brownian bridge), and
    /// `W(t)` linear between the last two nodes.
    fn walk(&self, t: f64) -> (Vec<u64>, Vec<f64>) {
        let (mut a, mut b) = (0.0f64, self.span);
        let mut ca = vec![0.0];
        let mut cb = vec![self.span.sqrt()];
        let mut branches = Vec::new();
        while b - a > self.tol && t > a && t < b {
            let m = 0.5 * (a + b);
            let sd = (0.25 * (b - a)).sqrt();
            ca.push(0.0);
            cb.push(0.0);
            let mut cm: Vec<f64> = ca.iter().zip(&cb).map(|(x, y)| 0.5 * (x + y)).collect();
            *cm.last_mut().unwrap() = sd;
            if t < m {
                b = m;
                cb = cm;
                branches.push(1);
            } else {
                a = m;
                ca = cm;
                branches.push(2);
            }
        }
        let f = if b > a {
            ((t - a) / (b - a)).clamp(0.0, 1.0)
        } else {
            0.0
        };
        let c = ca.iter().zip(&cb).map(|(x, y)| x + f * (y - x)).collect();
        (branches, c)
    }

    /// The generator keys of one sample's tree nodes along a walk: the endpoint's, then one
    /// per level.
    fn node_keys(key: u64, branches: &[u64]) -> Vec<u64> {
        let mut keys = Vec::with_capacity(branches.len() + 1);
        keys.push(mix(key ^ 0xE4D));
        let mut node = mix(key ^ 0x7EE);
        for &br in branches {
            keys.push(node);
            node = mix(node ^ br);
        }
        keys
    }

    /// `W(t)` of one sample and stream, computed value by value on the host: the reference
    /// for [`BrownianNoise::values`] in the tests.
    #[cfg(test)]
    fn point_reference(&self, index: usize, stream: u64, t: f64) -> Vec<f64> {
        let d = self.numel;
        let t = t.min(self.span);
        if t <= 0.0 {
            return vec![0.0; d];
        }
        let (branches, c) = self.walk(t);
        let keys = Self::node_keys(mix(self.keys[index] ^ mix(stream)), &branches);
        (0..d as u64)
            .map(|j| {
                keys.iter()
                    .zip(&c)
                    .map(|(&k, &ci)| ci * normal_at(k, j))
                    .sum()
            })
            .collect()
    }

    /// `W(t)` of every sample for one stream, `[N, numel]` float64 on the device, cached.
    /// Negative times (a VE time below `eps`, say) use a second, independent tree: `W(-u)` for
    /// `u > 0` is a Brownian motion of its own started at `W(0) = 0`, so increments over
    /// disjoint intervals stay independent with variance `|b - a|` on both sides of 0.
    ///
    /// The walk is the same for every sample, so `W(t) = sum_i c_i Z_i` with host coefficients
    /// `c_i` and per-sample normals `Z_i` drawn from counter-based generators keyed by the
    /// tree nodes ([`normal_at`]); the host computes only the keys (levels x samples), the
    /// device the normals and the sum, in a few dozen tensor ops per query and without waiting
    /// for the device.
    fn values(&mut self, stream: u64, t: f64) -> Result<Tensor> {
        if t < 0.0 {
            return self.values(stream ^ 0x4E47_0000_0000_0000, -t);
        }
        if !(t.is_finite() && t <= self.span * (1.0 + 1e-12)) {
            return Err(SolverError::Grid(format!(
                "noise queried at {t}, outside the Brownian path's range [-{0}, {0}]",
                self.span
            )));
        }
        let key = (stream, t.to_bits());
        if let Some(v) = self.cache.get(&key) {
            return Ok(v.shallow_clone());
        }
        let (n, d) = (self.keys.len(), self.numel);
        let tq = t.min(self.span);
        let out = if tq <= 0.0 {
            Tensor::zeros([n as i64, d as i64], (Kind::Double, self.device))
        } else {
            let (branches, c) = self.walk(tq);
            if self.tensor_ops {
                self.device_values(mix(stream), &branches, &c)
            } else {
                self.host_values(mix(stream), &branches, &c)
            }
        };
        if self.cache.len() >= 8 {
            self.cache.clear();
        }
        self.cache.insert(key, out.shallow_clone());
        Ok(out)
    }

    /// `sum_i c_i Z_i` for every sample, in Rust, in parallel over fixed chunks of 64 samples
    /// (the result does not depend on the number of threads); `sm` is the stream's hash.
    fn host_values(&self, sm: u64, branches: &[u64], c: &[f64]) -> Tensor {
        let (n, d) = (self.keys.len(), self.numel);
        let mut out = vec![0.0; n * d];
        out.par_chunks_mut(64 * d)
            .zip(self.keys.par_chunks(64))
            .for_each(|(dst, keys)| {
                for (row, &k) in dst.chunks_mut(d).zip(keys) {
                    let nodes = Self::node_keys(mix(k ^ sm), branches);
                    for (&node, &ci) in nodes.iter().zip(c) {
                        for (p, pair) in row.chunks_mut(2).enumerate() {
                            let (z0, z1) = normal_pair(node, p as u64);
                            pair[0] += ci * z0;
                            if let Some(v) = pair.get_mut(1) {
                                *v += ci * z1;
                            }
                        }
                    }
                }
            });
        self.upload(Tensor::from_slice(&out).view([n as i64, d as i64]))
    }

    /// `sum_i c_i Z_i` for every sample as tensor ops on the device: the host computes the node
    /// keys (levels x samples) and sends them with the weights; the device draws the normals,
    /// levels in chunks of at most about 2^22 normal pairs.
    fn device_values(&self, sm: u64, branches: &[u64], c: &[f64]) -> Tensor {
        let (n, d, levels) = (self.keys.len(), self.numel, c.len());
        let per_sample: Vec<Vec<u64>> = self
            .keys
            .par_iter()
            .map(|&k| Self::node_keys(mix(k ^ sm), branches))
            .collect();
        // keys[i * n + k]: node i of sample k.
        let mut keys = vec![0i64; levels * n];
        for (k, ks) in per_sample.iter().enumerate() {
            for (i, &v) in ks.iter().enumerate() {
                keys[i * n + k] = v as i64;
            }
        }
        let keys = self.upload(Tensor::from_slice(&keys).view([levels as i64, n as i64]));
        let coefs = self.upload(Tensor::from_slice(c));
        let chunk = ((1usize << 22) / (n * d.div_ceil(2)).max(1)).clamp(1, levels);
        let mut acc = Tensor::zeros([n as i64, d as i64], (Kind::Double, self.device));
        for i in (0..levels).step_by(chunk) {
            let len = chunk.min(levels - i) as i64;
            let z = self.normals(&keys.narrow(0, i as i64, len));
            let w = coefs.narrow(0, i as i64, len).view([len, 1, 1]);
            acc += (z * w).sum_dim_intlist(0, false, Kind::Double);
        }
        acc
    }

    /// Normals `normal_at(keys[..], j)`, j = 0..numel, as tensor ops on the device: `[L, N, numel]`
    /// float64 for keys `[L, N]`.
    fn normals(&self, keys: &Tensor) -> Tensor {
        let d = self.numel as i64;
        let pairs = (d + 1) / 2;
        // Stream positions 2p and 2p + 1 of pair p: key + (2p + 1) GAMMA and key + (2p + 2)
        // GAMMA; the offsets are made and sent once per tree.
        let (odd, even) = self.offsets.get_or_init(|| {
            let make = |first: u64| {
                let v: Vec<i64> = (0..pairs as u64)
                    .map(|p| GAMMA.wrapping_mul(2 * p + first) as i64)
                    .collect();
                self.upload(Tensor::from_slice(&v).view([1, 1, pairs]))
            };
            (make(1), make(2))
        });
        let k = keys.unsqueeze(-1);
        let b1 = fmix64_tensor(&(&k + odd));
        let b2 = fmix64_tensor(&(&k + even));
        let u1 = (shr_logical(&b1, 11).to_kind(Kind::Double) + 1.0) * TWO_POW_M53;
        let u2 = shr_logical(&b2, 11).to_kind(Kind::Double) * TWO_POW_M53;
        let r = (u1.log() * -2.0).sqrt();
        let th = u2 * (2.0 * std::f64::consts::PI);
        let z = Tensor::stack(&[&r * th.cos(), r * th.sin()], -1);
        let sz = z.size();
        z.view([sz[0], sz[1], 2 * pairs]).narrow(2, 0, d)
    }

    /// A host tensor on the device, through pinned memory with a non-blocking copy where the
    /// device is CUDA (the host does not wait for the GPU; libtorch keeps the pinned buffer
    /// alive until the copy has run).
    fn upload(&self, host: Tensor) -> Tensor {
        if self.device.is_cuda() {
            let kind = host.kind();
            if let Ok(t) = host
                .f_pin_memory(self.device)
                .and_then(|p| p.f_to_device_(self.device, kind, true, false))
            {
                return t;
            }
        }
        host.to_device(self.device)
    }
}

/// SplitMix64's increment: stream position `j` of key `x` is `fmix64(x + (j + 1) GAMMA)`.
const GAMMA: u64 = 0x9E37_79B9_7F4A_7C15;
const TWO_POW_M53: f64 = 1.0 / 9_007_199_254_740_992.0;

/// SplitMix64's output function (Steele, Lea and Flood 2014).
fn fmix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// `x >> s` on the bits of an int64 tensor, shifting in zeros.
fn shr_logical(x: &Tensor, s: i64) -> Tensor {
    x.bitwise_right_shift_tensor_scalar(s)
        .bitwise_and(((1u64 << (64 - s)) - 1) as i64)
}

/// [`fmix64`] on every element of an int64 tensor (wrapping two's-complement arithmetic).
fn fmix64_tensor(z: &Tensor) -> Tensor {
    let z = (z.bitwise_xor_tensor(&shr_logical(z, 30))) * (0xBF58_476D_1CE4_E5B9u64 as i64);
    let z = (z.bitwise_xor_tensor(&shr_logical(&z, 27))) * (0x94D0_49BB_1331_11EBu64 as i64);
    z.bitwise_xor_tensor(&shr_logical(&z, 31))
}

/// Normal number `j` of the counter-based generator keyed by `key`: Box-Muller on SplitMix64
/// positions `2p` and `2p + 1` of the key (`p = j / 2`), the cosine for even `j`, the sine for
/// odd. Any `j` of any key is computed directly, on the host or (as tensor ops) on a device.
pub fn normal_at(key: u64, j: u64) -> f64 {
    let (z0, z1) = normal_pair(key, j / 2);
    if j & 1 == 0 {
        z0
    } else {
        z1
    }
}

/// Normals `2p` and `2p + 1` of the generator keyed by `key` (see [`normal_at`]).
fn normal_pair(key: u64, p: u64) -> (f64, f64) {
    let b1 = fmix64(key.wrapping_add(GAMMA.wrapping_mul(2 * p + 1)));
    let b2 = fmix64(key.wrapping_add(GAMMA.wrapping_mul(2 * p + 2)));
    let u1 = ((b1 >> 11) as f64 + 1.0) * TWO_POW_M53;
    let u2 = (b2 >> 11) as f64 * TWO_POW_M53;
    let r = (-2.0 * u1.ln()).sqrt();
    let (s, c) = (2.0 * std::f64::consts::PI * u2).sin_cos();
    (r * c, r * s)
}

fn normals_into(key: u64, n: usize, out: &mut Vec<f64>) {
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(key);
    out.extend((0..n).map(|_| rng.sample::<f64, _>(StandardNormal)));
}

impl NoiseSource for BrownianNoise {
    fn increment(&mut self, stream: u64, a: f64, b: f64) -> Result<Tensor> {
        let wa = self.values(stream, a)?;
        let wb = self.values(stream, b)?;
        Ok((wb - wa)
            .to_kind(self.kind)
            .view(self.full_shape().as_slice()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cpu(seed: u64, n: usize, shape: &[i64], span: f64) -> BrownianNoise {
        BrownianNoise::new(seed, 0, n, shape, span, Device::Cpu, Kind::Double)
    }

    fn to_vec(t: &Tensor) -> Vec<f64> {
        Vec::<f64>::try_from(t.reshape([-1]).to_kind(Kind::Double)).unwrap()
    }

    #[test]
    fn mix_is_the_first_splitmix64_output() {
        // The counter-based generator continues the hash used for the keys.
        for x in [0u64, 1, 42, u64::MAX, 0x1234_5678_9ABC_DEF0] {
            assert_eq!(mix(x), fmix64(x.wrapping_add(GAMMA)));
        }
    }

    #[test]
    fn tensor_normals_equal_the_host_generator() {
        // The tensor ops (wrapping int64 arithmetic, logical shifts) against `normal_at`.
        let keys: Vec<u64> = (0..5).map(|i| mix(i * 7919)).chain([0, u64::MAX]).collect();
        let kt =
            Tensor::from_slice(&keys.iter().map(|&k| k as i64).collect::<Vec<_>>()).view([1, -1]);
        for d in [1usize, 2, 7] {
            let z = to_vec(&cpu(0, 1, &[d as i64], 1.0).normals(&kt));
            for (i, &k) in keys.iter().enumerate() {
                for j in 0..d {
                    // The bits agree exactly; libtorch's vectorized log and cos may differ from
                    // the host's in the last place.
                    let want = normal_at(k, j as u64);
                    let got = z[i * d + j];
                    assert!(
                        (got - want).abs() <= 1e-14 * want.abs().max(1.0),
                        "key {k:#x}, j {j}: {got} vs {want}"
                    );
                }
            }
        }
    }

    #[test]
    fn generator_gives_standard_normals() {
        let n = 200_000u64;
        let z: Vec<f64> = (0..n).map(|j| normal_at(mix(j / 64), j % 64)).collect();
        let mean = z.iter().sum::<f64>() / n as f64;
        let var = z.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / n as f64;
        let kurt = z.iter().map(|x| (x - mean).powi(4)).sum::<f64>() / n as f64 / (var * var);
        let tail = z.iter().filter(|x| x.abs() > 1.959_964).count() as f64 / n as f64;
        assert!(mean.abs() < 0.01, "mean {mean}");
        assert!((var - 1.0).abs() < 0.01, "variance {var}");
        assert!((kurt - 3.0).abs() < 0.05, "kurtosis {kurt}");
        assert!((tail - 0.05).abs() < 0.003, "P(|z| > 1.96) = {tail}");
        // Neighbouring positions (a Box-Muller pair) and neighbouring keys are uncorrelated.
        let corr = |f: &dyn Fn(u64) -> (f64, f64)| {
            (0..n / 2)
                .map(|i| {
                    let (a, b) = f(i);
                    a * b
                })
                .sum::<f64>()
                / (n / 2) as f64
        };
        assert!(corr(&|i| (normal_at(mix(i), 0), normal_at(mix(i), 1))).abs() < 0.01);
        assert!(corr(&|i| (normal_at(mix(i), 0), normal_at(mix(i + 1), 0))).abs() < 0.01);
    }

    #[test]
    fn tree_values_equal_the_per_sample_host_walk() {
        for tensor_ops in [false, true] {
            tree_values_equal_the_reference(tensor_ops);
        }
    }

    fn tree_values_equal_the_reference(tensor_ops: bool) {
        let mut b = cpu(3, 5, &[3], 80.0);
        b.set_tensor_ops(tensor_ops);
        for (stream, t) in [
            (STREAM_STEP, 0.3),
            (STREAM_CHURN, 79.99),
            (STREAM_TIME, 80.0),
            (STREAM_STEP, 1e-7),
            (STREAM_STEP, 40.0),
        ] {
            let got = to_vec(&b.values(stream, t).unwrap());
            for k in 0..5 {
                let want = b.point_reference(k, stream, t);
                for j in 0..3 {
                    let (g, w) = (got[k * 3 + j], want[j]);
                    assert!(
                        (g - w).abs() <= 1e-12 * w.abs().max(1.0),
                        "tensor ops {tensor_ops}, stream {stream} t {t} sample {k}: {g} vs {w}"
                    );
                }
            }
        }
        // Zero at 0; negative times are an independent tree.
        assert!(to_vec(&b.values(STREAM_STEP, 0.0).unwrap())
            .iter()
            .all(|&v| v == 0.0));
        let neg = to_vec(&b.values(STREAM_STEP, -0.3).unwrap());
        let pos = to_vec(&b.values(STREAM_STEP, 0.3).unwrap());
        assert!(neg.iter().zip(&pos).all(|(a, b)| a != b));
        assert!(b.values(STREAM_STEP, 81.0).is_err());
    }

    #[test]
    fn increments_are_brownian() {
        // 20,000 one-dimensional paths on [0, 10]: increments have mean 0 and variance equal to
        // the interval's length, disjoint increments are uncorrelated, and the values do not
        // depend on the order of the queries.
        let n = 20_000;
        let mut b = cpu(11, n, &[1], 10.0);
        let inc = |b: &mut BrownianNoise, s: f64, e: f64| {
            to_vec(&b.increment(STREAM_STEP, s, e).unwrap())
        };
        let stats = |v: &[f64]| {
            let m = v.iter().sum::<f64>() / v.len() as f64;
            (
                m,
                v.iter().map(|x| (x - m).powi(2)).sum::<f64>() / v.len() as f64,
            )
        };
        let i1 = inc(&mut b, 0.0, 0.37);
        let i2 = inc(&mut b, 0.37, 5.2);
        let i3 = inc(&mut b, 5.2, 5.2001);
        for (v, len) in [(&i1, 0.37), (&i2, 4.83), (&i3, 1e-4)] {
            let (m, var) = stats(v);
            let se = (2.0 / n as f64).sqrt();
            assert!(
                m.abs() < 4.0 * (len / n as f64).sqrt(),
                "mean {m} over {len}"
            );
            assert!(
                (var / len - 1.0).abs() < 4.0 * se,
                "variance {var} over {len}"
            );
        }
        let c12 = i1.iter().zip(&i2).map(|(a, b)| a * b).sum::<f64>()
            / n as f64
            / (0.37f64 * 4.83).sqrt();
        let c23 = i2.iter().zip(&i3).map(|(a, b)| a * b).sum::<f64>()
            / n as f64
            / (4.83f64 * 1e-4).sqrt();
        assert!(
            c12.abs() < 0.04 && c23.abs() < 0.04,
            "correlations {c12} {c23}"
        );
        // The tensor path gives the same increments.
        let mut t = cpu(11, n, &[1], 10.0);
        t.set_tensor_ops(true);
        let it = inc(&mut t, 0.37, 5.2);
        assert!(it.iter().zip(&i2).all(|(a, b)| (a - b).abs() < 1e-12));
        // A fresh tree queried in the other order gives the same path.
        let mut fresh = cpu(11, n, &[1], 10.0);
        let w52 = to_vec(&fresh.values(STREAM_STEP, 5.2).unwrap());
        let w037 = to_vec(&fresh.values(STREAM_STEP, 0.37).unwrap());
        let back: Vec<f64> = w52.iter().zip(&w037).map(|(a, b)| a - b).collect();
        assert_eq!(back, i2);
    }
}
