//! Seeded noise with one generator per sample, on a Brownian path shared by every step count.
//!
//! Each sample `k` of a run with seed `s` owns a key derived from `(s, k)` only, so its noise
//! does not depend on the batch size or on which other samples are drawn with it. Per-step
//! noise comes from a virtual Brownian tree (Li et al. 2020, as in torchsde and k-diffusion's
//! `BrownianTreeNoiseSampler`): `W(t)` on `[0, span]` is defined by recursive Brownian-bridge
//! bisection, each node's normal drawn from a generator keyed by the node, so `W` can be queried
//! at any time in any order and always gives the same path. A sampler that needs `N(0, I)` for
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
    cache: HashMap<(u64, u64), Vec<f64>>,
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
        }
    }

    fn full_shape(&self) -> Vec<i64> {
        let mut s = vec![self.keys.len() as i64];
        s.extend_from_slice(&self.shape);
        s
    }

    fn to_tensor(&self, v: &[f64]) -> Tensor {
        let host = Tensor::from_slice(v)
            .view(self.full_shape().as_slice())
            .to_kind(self.kind);
        if self.device.is_cuda() {
            // Through pinned memory with a non-blocking copy: the host does not wait for the
            // GPU (a copy from pageable memory would synchronize the stream at every step).
            // libtorch keeps the pinned buffer alive until the copy has run.
            if let Ok(t) = host
                .f_pin_memory(self.device)
                .and_then(|p| p.f_to_device_(self.device, self.kind, true, false))
            {
                return t;
            }
        }
        host.to_device(self.device)
    }

    /// Standard normals of the starting noise, one generator per sample, shape `[N, ...]`.
    pub fn initial(&self) -> Tensor {
        let mut out = Vec::with_capacity(self.keys.len() * self.numel);
        for &k in &self.keys {
            normals_into(mix(k ^ 0x1A17), self.numel, &mut out);
        }
        self.to_tensor(&out)
    }

    /// `W(t)` of one sample and stream, appended to `out`.
    fn point(&self, key: u64, t: f64, out: &mut Vec<f64>) {
        let d = self.numel;
        let start = out.len();
        if t <= 0.0 {
            out.resize(start + d, 0.0);
            return;
        }
        let mut wa = vec![0.0; d];
        let mut wb = Vec::with_capacity(d);
        normals_into(mix(key ^ 0xE4D), d, &mut wb);
        let (mut a, mut b) = (0.0f64, self.span);
        for v in wb.iter_mut() {
            *v *= b.sqrt();
        }
        let mut node = mix(key ^ 0x7EE);
        let mut z = Vec::with_capacity(d);
        let mut wm = vec![0.0; d];
        while b - a > self.tol && t > a && t < b {
            let m = 0.5 * (a + b);
            z.clear();
            normals_into(node, d, &mut z);
            let sd = (0.25 * (b - a)).sqrt();
            for j in 0..d {
                wm[j] = 0.5 * (wa[j] + wb[j]) + sd * z[j];
            }
            if t < m {
                b = m;
                std::mem::swap(&mut wb, &mut wm);
                node = mix(node ^ 0x1);
            } else {
                a = m;
                std::mem::swap(&mut wa, &mut wm);
                node = mix(node ^ 0x2);
            }
        }
        let f = if b > a {
            ((t - a) / (b - a)).clamp(0.0, 1.0)
        } else {
            0.0
        };
        out.extend((0..d).map(|j| wa[j] + f * (wb[j] - wa[j])));
    }

    /// `W(t)` of every sample for one stream, flattened, cached. Negative times (a VE time
    /// below `eps`, say) use a second, independent tree: `W(-u)` for `u > 0` is a Brownian
    /// motion of its own started at `W(0) = 0`, so increments over disjoint intervals stay
    /// independent with variance `|b - a|` on both sides of 0.
    fn values(&mut self, stream: u64, t: f64) -> Result<Vec<f64>> {
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
            return Ok(v.clone());
        }
        // Samples are independent trees: walk them in parallel, in fixed-size chunks so the
        // result does not depend on the number of threads.
        let (d, tq, sm) = (self.numel, t.min(self.span), mix(stream));
        let mut out = vec![0.0; self.keys.len() * d];
        let this = &*self;
        out.par_chunks_mut(64 * d)
            .zip(self.keys.par_chunks(64))
            .for_each(|(dst, keys)| {
                let mut buf = Vec::with_capacity(keys.len() * d);
                for &k in keys {
                    this.point(mix(k ^ sm), tq, &mut buf);
                }
                dst.copy_from_slice(&buf);
            });
        if self.cache.len() >= 8 {
            self.cache.clear();
        }
        self.cache.insert(key, out.clone());
        Ok(out)
    }
}

fn normals_into(key: u64, n: usize, out: &mut Vec<f64>) {
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(key);
    out.extend((0..n).map(|_| rng.sample::<f64, _>(StandardNormal)));
}

impl NoiseSource for BrownianNoise {
    fn increment(&mut self, stream: u64, a: f64, b: f64) -> Result<Tensor> {
        let wa = self.values(stream, a)?;
        let wb = self.values(stream, b)?;
        let diff: Vec<f64> = wb.iter().zip(&wa).map(|(x, y)| x - y).collect();
        Ok(self.to_tensor(&diff))
    }
}
