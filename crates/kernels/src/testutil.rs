//! Random inputs and tensor comparisons for the kernels' tests.

use candle_core::{Device, Tensor};

pub(crate) fn rand(shape: &[usize], seed: u64) -> Tensor {
    use rand::{Rng, SeedableRng};
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let n: usize = shape.iter().product();
    let v: Vec<f32> = (0..n).map(|_| rng.random_range(-2.0..2.0)).collect();
    Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
}

pub(crate) fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
    (a - b).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap()
}

/// `n` values from a fixed 64-bit LCG (seeded by `seed`), each its state's top 31 bits
/// mapped by `f`: reproducible inputs with a distribution of the test's choosing.
pub(crate) fn lcg_values(n: usize, seed: u64, f: impl Fn(u64) -> f32) -> Vec<f32> {
    let step = |s: u64| s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
    let mut s = step(seed);
    (0..n)
        .map(|_| {
            s = step(s);
            f(s >> 33)
        })
        .collect()
}
