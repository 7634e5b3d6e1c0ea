//! 8-bit weights for memory-bound products: GGUF's Q8_0 layout (blocks of 32 values along
//! a row, each `scale · q` with one f32 scale per block and q in −127..=127), and
//! `y = x·Wᵀ` for the few-row inputs of token-by-token decoding, where reading W is the
//! cost: a quarter of f32's bytes per weight. The dot product has an AVX2+FMA form (int8
//! widened to f32 in registers) and a portable one.

use rayon::prelude::*;

/// Values per block (GGUF's QK8_0).
pub const BLOCK: usize = 32;

/// A (rows × cols) matrix in Q8_0 blocks, row-major.
#[derive(Debug, Clone)]
pub struct Q8Matrix {
    pub rows: usize,
    pub cols: usize,
    /// rows · cols / BLOCK scales, block-major within each row.
    pub scales: Vec<f32>,
    pub quants: Vec<i8>,
}

impl Q8Matrix {
    /// Quantize row-major f32 values by Q8_0's rule (scale = max |v| / 127, q = round(v /
    /// scale)). None when `cols` is not a multiple of [`BLOCK`]. Values that came from a
    /// Q8_0 file (each `q · d` with d an f16) come back as the same q and d: the block's
    /// largest value is ±127·d, and 127·d, with d's 11-bit mantissa, is exact in f32.
    pub fn quantize(values: &[f32], rows: usize, cols: usize) -> Option<Self> {
        if cols == 0 || !cols.is_multiple_of(BLOCK) || values.len() != rows * cols {
            return None;
        }
        let blocks = values.len() / BLOCK;
        let mut scales = vec![0f32; blocks];
        let mut quants = vec![0i8; values.len()];
        scales.par_iter_mut().zip(quants.par_chunks_mut(BLOCK)).zip(values.par_chunks(BLOCK)).for_each(|((d, q), v)| {
            let amax = v.iter().fold(0f32, |m, x| m.max(x.abs()));
            *d = amax / 127.0;
            let inv = if amax > 0.0 { 127.0 / amax } else { 0.0 };
            for (q, x) in q.iter_mut().zip(v) {
                *q = (x * inv).round().clamp(-127.0, 127.0) as i8;
            }
        });
        Some(Self { rows, cols, scales, quants })
    }

    /// The matrix a GGUF Q8_0 tensor of shape (rows, cols) holds in `bytes`: blocks of 34
    /// bytes, an f16 scale then 32 signed quants. None when the sizes do not match.
    pub fn from_gguf_bytes(rows: usize, cols: usize, bytes: &[u8]) -> Option<Self> {
        const BYTES: usize = 2 + BLOCK;
        if cols == 0 || !cols.is_multiple_of(BLOCK) || bytes.len() != rows * cols / BLOCK * BYTES {
            return None;
        }
        let scales = bytes.chunks_exact(BYTES).map(|b| crate::q4k::f16_to_f32(u16::from_le_bytes([b[0], b[1]]))).collect();
        let quants = bytes.chunks_exact(BYTES).flat_map(|b| b[2..].iter().map(|&q| q as i8)).collect();
        Some(Self { rows, cols, scales, quants })
    }

    /// The matrix of rows `order[0]`, `order[1]`, … of this one (each index < rows).
    pub fn select_rows(&self, order: &[usize]) -> Self {
        let (k, bpr) = (self.cols, self.cols / BLOCK);
        let mut scales = Vec::with_capacity(order.len() * bpr);
        let mut quants = Vec::with_capacity(order.len() * k);
        for &r in order {
            scales.extend_from_slice(&self.scales[r * bpr..(r + 1) * bpr]);
            quants.extend_from_slice(&self.quants[r * k..(r + 1) * k]);
        }
        Self { rows: order.len(), cols: k, scales, quants }
    }

    /// This matrix with `below`'s rows after its own; None when the widths differ.
    pub fn stack(mut self, below: &Q8Matrix) -> Option<Self> {
        if below.cols != self.cols {
            return None;
        }
        self.scales.extend_from_slice(&below.scales);
        self.quants.extend_from_slice(&below.quants);
        self.rows += below.rows;
        Some(self)
    }

    /// The values back in f32 (for tests and for callers that need the dense matrix).
    pub fn dequantize(&self) -> Vec<f32> {
        self.quants.chunks(BLOCK).zip(&self.scales).flat_map(|(q, d)| q.iter().map(move |&q| q as f32 * d)).collect()
    }

    /// `x·Wᵀ` for x (m × cols, row-major) into a new (m × rows) buffer. Weight rows are split
    /// among the rayon threads; each row is read once for all m inputs.
    pub fn matmul_t(&self, x: &[f32], m: usize) -> Vec<f32> {
        let mut y = vec![0f32; m * self.rows];
        self.matmul_t_into(x, m, &mut y, self.rows, 0);
        y
    }

    /// `x·Wᵀ` into columns `col0 .. col0 + rows` of y (m × ld, row-major).
    pub fn matmul_t_into(&self, x: &[f32], m: usize, y: &mut [f32], ld: usize, col0: usize) {
        assert_eq!(x.len(), m * self.cols, "q8 matmul: x has {} values, expected {m} × {}", x.len(), self.cols);
        assert!(col0 + self.rows <= ld && y.len() >= m * ld, "q8 matmul: output too small");
        let (n, k) = (self.rows, self.cols);
        if m == 0 || n == 0 {
            return;
        }
        let bpr = k / BLOCK;
        // Output transposed (n × m) so that each task owns whole, disjoint chunks.
        let mut yt = vec![0f32; n * m];
        const ROWS_PER_TASK: usize = 64;
        yt.par_chunks_mut(ROWS_PER_TASK * m).enumerate().for_each(|(task, out)| {
            for (local, o) in out.chunks_mut(m).enumerate() {
                let row = task * ROWS_PER_TASK + local;
                let q = &self.quants[row * k..(row + 1) * k];
                let d = &self.scales[row * bpr..(row + 1) * bpr];
                for (r, o) in o.iter_mut().enumerate() {
                    *o = row_dot(&x[r * k..(r + 1) * k], q, d);
                }
            }
        });
        for j in 0..n {
            for r in 0..m {
                y[r * ld + col0 + j] = yt[j * m + r];
            }
        }
    }
}

/// Σ_blocks d_b · Σ_i x_i·q_i over one row.
#[inline(always)]
fn row_dot(x: &[f32], q: &[i8], d: &[f32]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if crate::fma_available() {
        debug_assert!(x.len() == q.len() && q.len() == d.len() * BLOCK);
        // SAFETY: the CPU has AVX2 and FMA (checked); x and q hold d.len() whole blocks
        // (the caller slices one row of each), which is all the function reads.
        return unsafe { row_dot_avx2(x, q, d) };
    }
    let mut acc = [0f32; 8];
    for ((xb, qb), &db) in x.chunks_exact(BLOCK).zip(q.chunks_exact(BLOCK)).zip(d) {
        for (c, (xc, qc)) in xb.chunks_exact(8).zip(qb.chunks_exact(8)).enumerate() {
            let _ = c;
            for i in 0..8 {
                acc[i] += qc[i] as f32 * db * xc[i];
            }
        }
    }
    acc.iter().sum()
}

/// [`row_dot`] with AVX2: each block's 32 int8 weights widened to four 8-lane f32 vectors,
/// scaled by the block's scale and accumulated with fused multiply-adds.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn row_dot_avx2(x: &[f32], q: &[i8], d: &[f32]) -> f32 {
    use std::arch::x86_64::*;
    let (mut a0, mut a1) = (_mm256_setzero_ps(), _mm256_setzero_ps());
    for (b, &db) in d.iter().enumerate() {
        let scale = _mm256_set1_ps(db);
        for h in 0..2 {
            let o = b * BLOCK + h * 16;
            // SAFETY: block b spans elements b·32 .. b·32+32 of x and q, inside the slices
            // (the caller guarantees d.len() whole blocks); every load is unaligned and
            // reads 8 values (32 bytes of x or 8 bytes of q) from offset o or o + 8.
            let (q0, q1, x0, x1) = unsafe {
                let qp = q.as_ptr().add(o);
                let xp = x.as_ptr().add(o);
                (
                    _mm_loadl_epi64(qp as *const __m128i),
                    _mm_loadl_epi64(qp.add(8) as *const __m128i),
                    _mm256_loadu_ps(xp),
                    _mm256_loadu_ps(xp.add(8)),
                )
            };
            let q0 = _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(q0)), scale);
            let q1 = _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(q1)), scale);
            a0 = _mm256_fmadd_ps(q0, x0, a0);
            a1 = _mm256_fmadd_ps(q1, x1, a1);
        }
    }
    let s = _mm256_add_ps(a0, a1);
    let mut lanes = [0f32; 8];
    // SAFETY: lanes holds exactly the 8 f32 an unaligned store writes.
    unsafe { _mm256_storeu_ps(lanes.as_mut_ptr(), s) };
    lanes.iter().sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values(n: usize, seed: u64) -> Vec<f32> {
        crate::testutil::lcg_values(n, seed, |r| (r % 2001) as f32 / 300.0 - 1000.0 / 300.0)
    }

    #[test]
    fn product_equals_the_dequantized_matrix_product() {
        let (n, k) = (37, 96);
        let w = values(n * k, 1);
        let q = Q8Matrix::quantize(&w, n, k).unwrap();
        let dq = q.dequantize();
        // quantisation error is within half a step of each block
        for (b, (wb, db)) in w.chunks(BLOCK).zip(dq.chunks(BLOCK)).enumerate() {
            for (a, c) in wb.iter().zip(db) {
                assert!((a - c).abs() <= q.scales[b] * 0.5 + 1e-6);
            }
        }
        for m in [1, 3, 8] {
            let x = values(m * k, 2 + m as u64);
            let y = q.matmul_t(&x, m);
            for r in 0..m {
                for j in 0..n {
                    let want: f64 = (0..k).map(|i| x[r * k + i] as f64 * dq[j * k + i] as f64).sum();
                    assert!((y[r * n + j] as f64 - want).abs() < 1e-3 * (1.0 + want.abs()), "m={m} ({r},{j}): {} vs {want}", y[r * n + j]);
                }
            }
        }
    }

    #[test]
    fn requantizing_q8_0_values_is_exact_and_odd_widths_are_refused() {
        // values as a Q8_0 file holds them: q · d with d an f16 and q in −127..=127, ±127 present
        let (n, k) = (5, 64);
        let mut w = Vec::new();
        for b in 0..n * k / BLOCK {
            let d = half_round(0.0123 * (b as f32 + 1.0));
            for i in 0..BLOCK {
                let q = if i == 7 { if b % 2 == 0 { 127 } else { -127 } } else { (i as i32 * 13 + b as i32 * 7) % 255 - 127 };
                w.push(q as f32 * d);
            }
        }
        let q = Q8Matrix::quantize(&w, n, k).unwrap();
        assert_eq!(q.dequantize(), w, "dequantize(quantize(v)) == v for Q8_0 values");
        assert!(Q8Matrix::quantize(&values(3 * 40, 1), 3, 40).is_none());
        // an all-zero block
        let z = Q8Matrix::quantize(&[0.0; 32], 1, 32).unwrap();
        assert_eq!(z.matmul_t(&[1.0; 32], 1), vec![0.0]);
    }

    #[test]
    fn gguf_q8_0_bytes_read_as_candle_dequantizes_them_and_rows_reorder() {
        use candle_core::quantized::{GgmlDType, QTensor};
        let (n, k) = (6, 64);
        let t = candle_core::Tensor::from_vec(values(n * k, 9), (n, k), &candle_core::Device::Cpu).unwrap();
        let q = QTensor::quantize(&t, GgmlDType::Q8_0).unwrap();
        let want = q.dequantize(&candle_core::Device::Cpu).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let ours = Q8Matrix::from_gguf_bytes(n, k, &q.data().unwrap()).unwrap();
        assert_eq!(ours.dequantize(), want);
        assert!(Q8Matrix::from_gguf_bytes(n, k, &q.data().unwrap()[1..]).is_none());
        let p = ours.select_rows(&[5, 0]).stack(&ours.select_rows(&[1])).unwrap();
        let dp = p.dequantize();
        for (to, from) in [5, 0, 1].into_iter().enumerate() {
            assert_eq!(dp[to * k..(to + 1) * k], want[from * k..(from + 1) * k]);
        }
    }

    /// Round to the nearest f16 value (11-bit mantissa), as GGUF stores block scales.
    fn half_round(x: f32) -> f32 {
        let bits = x.to_bits();
        let keep = bits & !((1 << 13) - 1);
        let rem = bits & ((1 << 13) - 1);
        f32::from_bits(if rem >= 1 << 12 { keep + (1 << 13) } else { keep })
    }
}
