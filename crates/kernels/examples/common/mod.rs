//! What the kernels' timing examples share: a timer and reproducible inputs.

use std::time::Instant;

/// Median and fastest of `repeats` calls of `f`, in µs, after a tenth as many warm-up calls.
pub fn time(repeats: usize, mut f: impl FnMut()) -> (f64, f64) {
    for _ in 0..repeats / 10 + 1 {
        f();
    }
    let mut t: Vec<f64> = (0..repeats)
        .map(|_| {
            let s = Instant::now();
            f();
            s.elapsed().as_secs_f64() * 1e6
        })
        .collect();
    t.sort_by(|a, b| a.total_cmp(b));
    (t[t.len() / 2], t[0])
}

/// `n` values in [−0.5, 0.5) from a fixed LCG seeded by `seed`.
pub fn values(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
    (0..n)
        .map(|_| {
            s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((s >> 40) as f32 / (1u64 << 24) as f32) - 0.5
        })
        .collect()
}
