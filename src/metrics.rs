//! Sample-quality metrics against reference samples.

use tch::{Device, Kind, Tensor};

/// RMS over samples of the per-sample Euclidean distance between `a` and `b` (`[N, ...]`), in
/// float64.
pub fn rms_distance(a: &Tensor, b: &Tensor) -> f64 {
    let diff = (a.to_kind(Kind::Double) - b.to_kind(Kind::Double)).flatten(1, -1);
    diff.square()
        .sum_dim_intlist(1, false, Kind::Double)
        .mean(Kind::Double)
        .sqrt()
        .double_value(&[])
}

/// Sliced Wasserstein-2 distance between two equally sized point sets `[N, d]`:
/// `sqrt(mean over directions of W2^2 of the 1-D projections)`, with `projections` random unit
/// directions drawn from `seed`. 1-D W2 between equal-size sets is the RMS difference of the
/// sorted projections.
pub fn sliced_w2(a: &Tensor, b: &Tensor, projections: i64, seed: u64) -> f64 {
    let a = a.to_device(Device::Cpu).to_kind(Kind::Double);
    let b = b.to_device(Device::Cpu).to_kind(Kind::Double);
    assert_eq!(a.size(), b.size(), "sliced_w2 needs equal shapes");
    let d = a.size()[1];
    let dirs = {
        use rand::{Rng, SeedableRng};
        let mut rng = rand_xoshiro::Xoshiro256PlusPlus::seed_from_u64(seed);
        let v: Vec<f64> = (0..projections * d)
            .map(|_| rng.sample(rand_distr::StandardNormal))
            .collect();
        let t = Tensor::from_slice(&v).view([d, projections]);
        &t / t.norm_scalaropt_dim(2, [0i64].as_slice(), true)
    };
    let (pa, _) = a.matmul(&dirs).sort(0, false);
    let (pb, _) = b.matmul(&dirs).sort(0, false);
    (pa - pb)
        .square()
        .mean(Kind::Double)
        .sqrt()
        .double_value(&[])
}

/// Maximum mean discrepancy with a Gaussian kernel of bandwidth `h`:
/// `sqrt(max(0, mean k(a,a') + mean k(b,b') - 2 mean k(a,b)))` (the biased V-statistic,
/// Gretton et al. 2012).
pub fn mmd(a: &Tensor, b: &Tensor, h: f64) -> f64 {
    let a = a
        .to_device(Device::Cpu)
        .to_kind(Kind::Double)
        .flatten(1, -1);
    let b = b
        .to_device(Device::Cpu)
        .to_kind(Kind::Double)
        .flatten(1, -1);
    let k = |x: &Tensor, y: &Tensor| {
        (Tensor::cdist(x, y, 2.0, None).square() / (-2.0 * h * h))
            .exp()
            .mean(Kind::Double)
            .double_value(&[])
    };
    (k(&a, &a) + k(&b, &b) - 2.0 * k(&a, &b)).max(0.0).sqrt()
}

/// The median pairwise distance of (at most the first 1000 points of) `x`: the usual MMD
/// bandwidth.
pub fn median_distance(x: &Tensor) -> f64 {
    let x = x
        .to_device(Device::Cpu)
        .to_kind(Kind::Double)
        .flatten(1, -1);
    let x = x.narrow(0, 0, x.size()[0].min(1000));
    let d = Tensor::cdist(&x, &x, 2.0, None);
    let n = x.size()[0];
    let iu = Tensor::ones([n, n], (Kind::Bool, Device::Cpu)).triu(1);
    d.masked_select(&iu).median().double_value(&[]).max(1e-12)
}
