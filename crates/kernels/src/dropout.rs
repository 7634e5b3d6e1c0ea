//! Dropout from a seeded stream.

use candle_core::{Result, Tensor};

/// Inverted dropout with a mask drawn from a seeded stream, so a training step is a pure
/// function of (weights, batch, step seed): resuming from a checkpoint replays it exactly.
pub fn dropout(x: &Tensor, p: f32, seed: u64) -> Result<Tensor> {
    if p <= 0.0 {
        return Ok(x.clone());
    }
    use rand::{Rng, SeedableRng};
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let scale = 1.0 / (1.0 - p);
    let mask: Vec<f32> = (0..x.elem_count()).map(|_| if rng.random::<f32>() < p { 0.0 } else { scale }).collect();
    let mask = Tensor::from_vec(mask, x.shape(), x.device())?;
    x * mask
}

/// The keep mask of inverted dropout as bits: element `i` is kept when bit `i % 64` of word
/// `i / 64` is set. Each element's draw is a hash of (seed, i) — splitmix64's finaliser, two
/// 32-bit draws per hash, kept when the draw is at least `p·2³²` — so any part of the mask can
/// be drawn on any thread, and an op that drops its input can draw the mask again in its
/// backward (or keep it at one bit per element) instead of keeping a mask tensor.
pub fn keep_bits(n: usize, p: f32, seed: u64) -> Vec<u64> {
    use rayon::prelude::*;
    // at most 2³² (p = 1): no 32-bit draw reaches it
    let threshold = ((p.clamp(0.0, 1.0) as f64) * 4_294_967_296.0) as u64;
    let mut bits = vec![0u64; n.div_ceil(64)];
    bits.par_chunks_mut(256).enumerate().for_each(|(c, chunk)| {
        for (w, word) in chunk.iter_mut().enumerate() {
            let first = ((c * 256 + w) * 32) as u64;
            let mut v = 0u64;
            for j in 0..32u64 {
                let h = mix(seed, first + j);
                v |= ((h as u32 as u64 >= threshold) as u64) << (2 * j);
                v |= (((h >> 32) >= threshold) as u64) << (2 * j + 1);
            }
            *word = v;
        }
    });
    // bits past n stay clear
    if !n.is_multiple_of(64) {
        if let Some(last) = bits.last_mut() {
            *last &= (1u64 << (n % 64)) - 1;
        }
    }
    bits
}

/// splitmix64's finaliser of the `i`-th counter after `seed`.
#[inline]
fn mix(seed: u64, i: u64) -> u64 {
    let mut z = seed.wrapping_add(i.wrapping_add(1).wrapping_mul(0x9e37_79b9_7f4a_7c15));
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Whether element `i` is kept under the mask of [`keep_bits`].
#[inline(always)]
fn is_kept(keep: &[u64], i: usize) -> bool {
    keep[i / 64] >> (i % 64) & 1 == 1
}

/// `out[i] = x[i] · scale` where bit `i` of `keep` is set, else 0 (`out` and `x` the same
/// length, at most `64·keep.len()`).
pub(crate) fn apply_keep_bits(x: &[f32], keep: &[u64], scale: f32, out: &mut [f32]) {
    zip_kept(x, keep, scale, out, |o, v| *o = v);
}

/// `out[i] += x[i] · scale` where bit `i` of `keep` is set.
pub(crate) fn add_kept(x: &[f32], keep: &[u64], scale: f32, out: &mut [f32]) {
    zip_kept(x, keep, scale, out, |o, v| *o += v);
}

/// `f(out[i], x[i]·scale or 0)` for every i, on the pool's threads.
fn zip_kept(x: &[f32], keep: &[u64], scale: f32, out: &mut [f32], f: impl Fn(&mut f32, f32) + Sync) {
    use rayon::prelude::*;
    const CHUNK: usize = 64 * 256;
    assert!(x.len() == out.len() && x.len() <= keep.len() * 64, "a mask of {} bits for {} values", keep.len() * 64, x.len());
    out.par_chunks_mut(CHUNK).zip(x.par_chunks(CHUNK)).enumerate().for_each(|(c, (o, xs))| {
        for (i, (o, &v)) in o.iter_mut().zip(xs).enumerate() {
            let e = c * CHUNK + i;
            f(o, if is_kept(keep, e) { v * scale } else { 0.0 });
        }
    });
}

/// Inverted dropout with the mask of [`keep_bits`]: the composed form of what the fused LoRA
/// op does to its adapters' input, drawing the same mask from the same seed.
pub fn dropout_hashed(x: &Tensor, p: f32, seed: u64) -> Result<Tensor> {
    if p <= 0.0 {
        return Ok(x.clone());
    }
    let keep = keep_bits(x.elem_count(), p, seed);
    let scale = 1.0 / (1.0 - p);
    let mask: Vec<f32> = (0..x.elem_count()).map(|i| if is_kept(&keep, i) { scale } else { 0.0 }).collect();
    x * Tensor::from_vec(mask, x.shape(), x.device())?.to_dtype(x.dtype())?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keep_bits_keep_the_right_share_and_depend_only_on_seed_and_index() {
        for &(n, p) in &[(100_003usize, 0.05f32), (64 * 1000, 0.5), (7, 0.3)] {
            let bits = keep_bits(n, p, 42);
            assert_eq!(bits.len(), n.div_ceil(64));
            let kept: u32 = bits.iter().map(|w| w.count_ones()).sum();
            if n > 1000 {
                // binomial: within 5 standard deviations of n(1 − p)
                let (mean, sd) = (n as f64 * (1.0 - p as f64), (n as f64 * p as f64 * (1.0 - p as f64)).sqrt());
                assert!((kept as f64 - mean).abs() < 5.0 * sd, "kept {kept} of {n} at p {p}");
            }
            assert!(kept as usize <= n, "no bit past n");
            // a prefix of a longer mask is the shorter mask: the draws are per index
            let longer = keep_bits(n + 500, p, 42);
            for i in 0..n {
                assert_eq!(is_kept(&bits, i), is_kept(&longer, i));
            }
            assert_ne!(keep_bits(n.max(640), p, 43), keep_bits(n.max(640), p, 42), "another seed, another mask");
        }
        assert!(keep_bits(1000, 0.0, 1).iter().take(15).all(|&w| w == u64::MAX));
        assert!(keep_bits(1000, 1.0, 1).iter().all(|&w| w == 0));
    }

    #[test]
    fn hashed_dropout_scales_kept_values_and_zeroes_the_rest() {
        let x = Tensor::arange(1f32, 2001., &candle_core::Device::Cpu).unwrap();
        let y: Vec<f32> = dropout_hashed(&x, 0.25, 9).unwrap().to_vec1().unwrap();
        let keep = keep_bits(2000, 0.25, 9);
        let mut out = vec![0f32; 2000];
        apply_keep_bits(&x.to_vec1::<f32>().unwrap(), &keep, 1.0 / 0.75, &mut out);
        assert_eq!(y, out);
        for (i, v) in y.iter().enumerate() {
            assert!(*v == 0.0 || (*v - (i + 1) as f32 / 0.75).abs() < 1e-3);
        }
    }
}
