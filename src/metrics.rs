//! Sample-quality metrics against reference samples.

use tch::{Device, Kind, Tensor};

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
