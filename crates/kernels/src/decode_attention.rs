//! Ragged decode attention: one new query position per row, each row attending over its
//! own KV cache of its own length (continuous batching, `Transformer::decode_step`). The
//! caches are read in place, position-major, as the model appends to them; no padding to
//! the longest row, no copy of any cache, one call per layer for the whole batch.
//!
//! For row `r`, query head `h` (served by key/value head `g = h / (n_heads / n_kv_heads)`,
//! the grouped-query rule of `repeat_kv`): `out = softmax(scale · q·Kᵀ) · V` over the row's
//! `len` cached positions (the new one included, so every position is visible). The
//! softmax is the one `scaled_softmax` computes (max, `fast_exp`, sum), so the result
//! equals the composed per-row path up to summation order. Inference only: no backward.
//! Plain safe Rust; rayon splits (row, key/value head) tasks when the batch is big enough.

use crate::simd::{dot_fma, fast_exp, lane_max, lane_sum, vectorized};
use candle_core::Result;
use rayon::prelude::*;

/// Calls with fewer multiply-adds than this (query·key over every row and head; as many
/// again for the values) run on the calling thread: waking the rayon pool costs more.
const PAR_WORK: usize = 1 << 17;

/// Head layout of a decode-attention call.
#[derive(Debug, Clone, Copy)]
pub struct DecodeHeads {
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
    /// Multiplies q·k before the softmax (usually 1/√head_dim).
    pub scale: f32,
}

/// One row's cache, position-major: position `p`, key/value head `g` starts at
/// `(p · n_kv_heads + g) · head_dim`. `k` and `v` have the same length, a non-zero
/// multiple of `n_kv_heads · head_dim`.
#[derive(Debug, Clone, Copy)]
pub struct RowKv<'a> {
    pub k: &'a [f32],
    pub v: &'a [f32],
}

/// Attention of one query per row over that row's cache. `q` is (rows, n_heads,
/// head_dim) row-major (RoPE and any q norm already applied); returns (rows, n_heads,
/// head_dim), the layout the output projection takes as (rows, n_heads · head_dim).
pub fn decode_attention(q: &[f32], rows: &[RowKv<'_>], h: DecodeHeads) -> Result<Vec<f32>> {
    let DecodeHeads { n_heads, n_kv_heads, head_dim, scale } = h;
    if n_heads == 0 || n_kv_heads == 0 || head_dim == 0 || n_heads % n_kv_heads != 0 {
        candle_core::bail!("decode_attention: {n_heads} query heads cannot share {n_kv_heads} key/value heads (head size {head_dim})");
    }
    if q.len() != rows.len() * n_heads * head_dim {
        candle_core::bail!("decode_attention: {} query values for {} rows of {n_heads} heads × {head_dim}", q.len(), rows.len());
    }
    let kv_width = n_kv_heads * head_dim;
    let mut work = 0usize;
    for (i, r) in rows.iter().enumerate() {
        if r.k.len() != r.v.len() || r.k.is_empty() || r.k.len() % kv_width != 0 {
            candle_core::bail!("decode_attention: row {i} has {} keys and {} values, not a non-zero multiple of {kv_width}", r.k.len(), r.v.len());
        }
        work += r.k.len() / kv_width * n_heads * head_dim;
    }
    let rep = n_heads / n_kv_heads;
    let group = rep * head_dim;
    let mut out = vec![0f32; q.len()];
    // one task per (row, key/value head): its `rep` query heads read the same keys
    let task = |i: usize, o: &mut [f32], scores: &mut Vec<f32>| {
        let (row, g) = (i / n_kv_heads, i % n_kv_heads);
        let qs = &q[(row * n_heads + g * rep) * head_dim..][..group];
        vectorized(
            #[inline(always)]
            || attend_group(qs, rows[row], g, rep, kv_width, head_dim, scale, o, scores),
        );
    };
    if work >= PAR_WORK && rows.len() * n_kv_heads > 1 {
        out.par_chunks_mut(group).enumerate().for_each_init(Vec::new, |scores, (i, o)| task(i, o, scores));
    } else {
        let mut scores = Vec::new();
        out.chunks_mut(group).enumerate().for_each(|(i, o)| task(i, o, &mut scores));
    }
    Ok(out)
}

/// The `rep` query heads `qs` (rep × head_dim) of key/value head `g` over one row's cache,
/// into `o` (rep × head_dim). `scores` is scratch space, reused across tasks.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn attend_group(qs: &[f32], kv: RowKv<'_>, g: usize, rep: usize, kv_width: usize, head_dim: usize, scale: f32, o: &mut [f32], scores: &mut Vec<f32>) {
    let len = kv.k.len() / kv_width;
    scores.clear();
    scores.resize(rep * len, 0.0);
    // scores[r·len + p] = q_r · k_p (unscaled, as the softmax kernel receives them)
    #[cfg(target_arch = "x86_64")]
    if head_dim.is_multiple_of(8) && crate::simd::fma_available() {
        for r in 0..rep {
            // SAFETY: AVX2 and FMA checked; q_r and every key are head_dim long (a
            // multiple of 8) inside their slices, and scores holds rep·len values.
            unsafe { scores_avx2(&qs[r * head_dim..][..head_dim], kv.k, g * head_dim, kv_width, len, &mut scores[r * len..][..len]) };
        }
    } else {
        dot_scores(qs, kv, g, rep, kv_width, head_dim, len, scores);
    }
    #[cfg(not(target_arch = "x86_64"))]
    dot_scores(qs, kv, g, rep, kv_width, head_dim, len, scores);
    o.iter_mut().for_each(|x| *x = 0.0);
    for r in 0..rep {
        let s = &mut scores[r * len..][..len];
        // softmax(scale · s) as `scaled_softmax` computes it
        let max = lane_max(s) * scale;
        s.iter_mut().for_each(|x| *x = fast_exp(*x * scale - max));
        let inv = 1.0 / lane_sum(s);
        let acc = &mut o[r * head_dim..][..head_dim];
        for (p, &w) in s.iter().enumerate() {
            let v = &kv.v[p * kv_width + g * head_dim..][..head_dim];
            let w = w * inv;
            for (a, &x) in acc.iter_mut().zip(v) {
                *a += w * x;
            }
        }
    }
}

/// The scores as plain dot products, one position at a time (CPUs without AVX2+FMA, or head
/// sizes that are not a multiple of 8).
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn dot_scores(qs: &[f32], kv: RowKv<'_>, g: usize, rep: usize, kv_width: usize, head_dim: usize, len: usize, scores: &mut [f32]) {
    for p in 0..len {
        let k = &kv.k[p * kv_width + g * head_dim..][..head_dim];
        for r in 0..rep {
            scores[r * len + p] = dot_fma(&qs[r * head_dim..][..head_dim], k);
        }
    }
}

/// `scores[p] = q · k_p` for the `len` keys at `off + p·kv_width` of `k`, four positions at
/// a time: a single dot product of a 64-wide head is one chain of eight dependent
/// multiply-adds and a horizontal sum (latency-bound: the scores were most of the
/// attention's time); four keys against the same q give four independent chains and
/// share one sum of the four accumulators into one vector.
///
/// # Safety
/// The CPU must have AVX2 and FMA; q.len() is a multiple of 8; each key
/// `k[off + p·kv_width..][..q.len()]` for p < len is inside k; scores.len() == len.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn scores_avx2(q: &[f32], k: &[f32], off: usize, kv_width: usize, len: usize, scores: &mut [f32]) {
    use std::arch::x86_64::*;
    let hd = q.len();
    assert!(hd.is_multiple_of(8) && scores.len() == len && (len == 0 || off + (len - 1) * kv_width + hd <= k.len()));
    let (qp, kp) = (q.as_ptr(), k.as_ptr());
    let mut p = 0;
    while p + 4 <= len {
        let mut acc = [_mm256_setzero_ps(); 4];
        let mut c = 0;
        while c < hd {
            // SAFETY: c + 8 ≤ hd; the keys p..p+4 are inside k (asserted above).
            unsafe {
                let qv = _mm256_loadu_ps(qp.add(c));
                for (i, a) in acc.iter_mut().enumerate() {
                    *a = _mm256_fmadd_ps(qv, _mm256_loadu_ps(kp.add(off + (p + i) * kv_width + c)), *a);
                }
            }
            c += 8;
        }
        // [Σa0, Σa1, Σa2, Σa3] by pairwise horizontal adds, then the two 128-bit halves
        let h01 = _mm256_hadd_ps(acc[0], acc[1]);
        let h23 = _mm256_hadd_ps(acc[2], acc[3]);
        let h = _mm256_hadd_ps(h01, h23);
        let sums = _mm_add_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps::<1>(h));
        // SAFETY: p + 4 ≤ len = scores.len().
        unsafe { _mm_storeu_ps(scores.as_mut_ptr().add(p), sums) };
        p += 4;
    }
    while p < len {
        let mut a = _mm256_setzero_ps();
        let mut c = 0;
        while c < hd {
            // SAFETY: as above, for key p < len.
            unsafe { a = _mm256_fmadd_ps(_mm256_loadu_ps(qp.add(c)), _mm256_loadu_ps(kp.add(off + p * kv_width + c)), a) };
            c += 8;
        }
        let h = _mm256_hadd_ps(a, a);
        let h = _mm256_hadd_ps(h, h);
        scores[p] = _mm_cvtss_f32(_mm_add_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps::<1>(h)));
        p += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    /// The straightforward reference: per row and query head, f64 dot products, a plain
    /// softmax with `exp`, the weighted sum of values.
    fn reference(q: &[f32], caches: &[(Vec<f32>, Vec<f32>)], h: DecodeHeads) -> Vec<f32> {
        let (nh, nkv, hd) = (h.n_heads, h.n_kv_heads, h.head_dim);
        let mut out = vec![0f32; q.len()];
        for (row, (k, v)) in caches.iter().enumerate() {
            let len = k.len() / (nkv * hd);
            for head in 0..nh {
                let g = head / (nh / nkv);
                let qh = &q[(row * nh + head) * hd..][..hd];
                let s: Vec<f64> = (0..len)
                    .map(|p| (0..hd).map(|d| qh[d] as f64 * k[(p * nkv + g) * hd + d] as f64).sum::<f64>() * h.scale as f64)
                    .collect();
                let m = s.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                let e: Vec<f64> = s.iter().map(|x| (x - m).exp()).collect();
                let z: f64 = e.iter().sum();
                for d in 0..hd {
                    let y: f64 = (0..len).map(|p| e[p] / z * v[(p * nkv + g) * hd + d] as f64).sum();
                    out[(row * nh + head) * hd + d] = y as f32;
                }
            }
        }
        out
    }

    fn check(lens: &[usize], nh: usize, nkv: usize, hd: usize, seed: u64) {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        let mut draw = |n: usize| (0..n).map(|_| rng.random_range(-2.0f32..2.0)).collect::<Vec<f32>>();
        let caches: Vec<(Vec<f32>, Vec<f32>)> = lens.iter().map(|&l| (draw(l * nkv * hd), draw(l * nkv * hd))).collect();
        let q = draw(lens.len() * nh * hd);
        let h = DecodeHeads { n_heads: nh, n_kv_heads: nkv, head_dim: hd, scale: 1.0 / (hd as f32).sqrt() };
        let rows: Vec<RowKv> = caches.iter().map(|(k, v)| RowKv { k, v }).collect();
        let ours = decode_attention(&q, &rows, h).unwrap();
        let want = reference(&q, &caches, h);
        let worst = ours.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
        assert!(worst < 1e-5, "lens {lens:?} heads {nh}/{nkv} × {hd}: differs by {worst}");
    }

    #[test]
    fn matches_reference_on_ragged_caches() {
        // GQA (4 query heads on 2 key/value heads), a head size that is no power of two,
        // rows of very different lengths (1 position up to several hundred), enough work
        // to take the threaded path and little enough to take the serial one.
        check(&[1, 7, 300, 33, 128], 4, 2, 64, 1);
        check(&[5, 2], 4, 2, 6, 2);
        check(&[17], 8, 1, 12, 3);
        check(&[250, 3, 1, 90, 64, 129, 200, 11], 6, 3, 20, 4);
        check(&[40, 41], 3, 3, 16, 5);
    }

    #[test]
    fn refuses_mismatched_inputs() {
        let h = DecodeHeads { n_heads: 4, n_kv_heads: 2, head_dim: 8, scale: 1.0 };
        let kv = vec![0f32; 3 * 16];
        let short = vec![0f32; 2 * 16];
        assert!(decode_attention(&[0.0; 32], &[RowKv { k: &kv, v: &kv }], h).is_ok());
        assert!(decode_attention(&[0.0; 31], &[RowKv { k: &kv, v: &kv }], h).is_err(), "query size");
        assert!(decode_attention(&[0.0; 32], &[RowKv { k: &kv, v: &short }], h).is_err(), "keys ≠ values");
        assert!(decode_attention(&[0.0; 32], &[RowKv { k: &[], v: &[] }], h).is_err(), "empty cache");
        assert!(decode_attention(&[0.0; 24], &[RowKv { k: &kv, v: &kv }], DecodeHeads { n_heads: 3, ..h }).is_err(), "3 heads on 2");
    }
}
