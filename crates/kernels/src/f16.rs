//! Half-precision weights for memory-bound products: a matrix stored as IEEE binary16 (GGUF's
//! F16 tensors, or f32 weights rounded to the nearest f16), and `y = x·Wᵀ` for the few-row
//! inputs of token-by-token decoding, where reading W is the cost: half of f32's bytes per
//! weight. x and y stay f32; each weight is widened to f32 in registers and multiplied in f32,
//! so the product equals the f32 product of the f16 values up to summation order.
//!
//! Three paths, chosen at run time: AVX-512 F (`vcvtph2ps` on 16 halves at a time, four weight
//! rows × up to four input rows of accumulators), AVX2+F16C+FMA (8 halves, four weight rows ×
//! up to two input rows) and a portable one. As in the f32 few-row kernels
//! (`linear::x86`), every output has its own accumulator, fed the same chunks in the same
//! order and reduced by the same tree whatever the other rows of the batch: a row's result
//! does not depend on the rows beside it (batched decoding in `ferrolm serve` equals decoding
//! alone).

use rayon::prelude::*;

/// A (rows × cols) matrix of IEEE half-precision values (their bits), row-major.
#[derive(Debug, Clone)]
pub struct F16Matrix {
    pub rows: usize,
    pub cols: usize,
    pub bits: Halves,
}

/// The bits of the halves: owned, or read in place from a GGUF file's map ([`crate::held`]).
pub type Halves = crate::held::Held<u16>;

/// Weight rows per task (one rayon job; its rows stay in cache for the later input rows).
const ROWS_PER_TASK: usize = 32;

/// Products of fewer multiply-adds run on the calling thread (waking the pool costs more).
const PAR_WORK: usize = 1 << 18;

impl F16Matrix {
    /// Row-major f32 values rounded to the nearest f16 (ties to even; beyond ±65504 to
    /// infinity, as a conversion to f16 does). None when the sizes do not match.
    pub fn from_f32(values: &[f32], rows: usize, cols: usize) -> Option<Self> {
        if cols == 0 || values.len() != rows * cols {
            return None;
        }
        let mut bits = vec![0u16; values.len()];
        bits.par_chunks_mut(1 << 16).zip(values.par_chunks(1 << 16)).for_each(|(b, v)| {
            for (b, &v) in b.iter_mut().zip(v) {
                *b = f32_to_f16(v);
            }
        });
        Some(Self { rows, cols, bits: Halves::Owned(bits) })
    }

    /// The matrix a GGUF F16 tensor of shape (rows, cols) holds at `offset` in `owner` (the
    /// file's map), used in place: no copy. None when the bytes do not fit, are not aligned
    /// for u16, or the target is not little-endian (then copy with [`Self::from_gguf_bytes`]).
    pub fn from_shared_gguf(rows: usize, cols: usize, owner: crate::held::Owner, offset: usize) -> Option<Self> {
        if cols == 0 {
            return None;
        }
        Some(Self { rows, cols, bits: Halves::shared(owner, offset, rows.checked_mul(cols)?)? })
    }

    /// The matrix a GGUF F16 tensor of shape (rows, cols) holds in `bytes` (little-endian
    /// halves). None when the sizes do not match.
    pub fn from_gguf_bytes(rows: usize, cols: usize, bytes: &[u8]) -> Option<Self> {
        if cols == 0 || bytes.len() != rows * cols * 2 {
            return None;
        }
        let bits = bytes.chunks_exact(2).map(|b| u16::from_le_bytes([b[0], b[1]])).collect();
        Some(Self { rows, cols, bits: Halves::Owned(bits) })
    }

    /// The matrix of rows `order[0]`, `order[1]`, … of this one (each index < rows).
    pub fn select_rows(&self, order: &[usize]) -> Self {
        let k = self.cols;
        let mut bits = Vec::with_capacity(order.len() * k);
        for &r in order {
            bits.extend_from_slice(&self.bits[r * k..(r + 1) * k]);
        }
        Self { rows: order.len(), cols: k, bits: Halves::Owned(bits) }
    }

    /// This matrix with `below`'s rows after its own; None when the widths differ.
    pub fn stack(self, below: &F16Matrix) -> Option<Self> {
        if below.cols != self.cols {
            return None;
        }
        let mut bits = self.bits.into_owned();
        bits.extend_from_slice(&below.bits);
        Some(Self { rows: self.rows + below.rows, cols: self.cols, bits: Halves::Owned(bits) })
    }

    /// The values in f32 (exact: every f16 is an f32).
    pub fn dequantize(&self) -> Vec<f32> {
        let mut out = vec![0f32; self.bits.len()];
        // blocks of whole rows, about 64 Ki values each, over the rayon threads
        let rows_per_task = ((1 << 16) / self.cols.max(1)).max(1);
        out.par_chunks_mut(rows_per_task * self.cols.max(1)).enumerate().for_each(|(t, o)| self.dequantize_rows_into(t * rows_per_task, o));
        out
    }

    /// Rows `start .. start + out.len() / cols` in f32, into `out` (whole rows; exact): a
    /// panel for [`crate::sgemm::matmul_t_dequantized`], or embedding rows.
    pub fn dequantize_rows_into(&self, start: usize, out: &mut [f32]) {
        let rows = out.len() / self.cols;
        assert!(out.len() == rows * self.cols && start + rows <= self.rows, "f16 dequantize: rows {start}..{} of {}", start + rows, self.rows);
        widen(&self.bits[start * self.cols..(start + rows) * self.cols], out);
    }

    /// `x·Wᵀ` for x (m × cols, row-major) into a new (m × rows) buffer.
    pub fn matmul_t(&self, x: &[f32], m: usize) -> Vec<f32> {
        let mut y = vec![0f32; m * self.rows];
        self.matmul_t_into(x, m, &mut y, self.rows, 0);
        y
    }

    /// `x·Wᵀ` into columns `col0 .. col0 + rows` of y (m × ld, row-major). Weight rows are
    /// split among the rayon threads (when the product is large enough); each task's rows
    /// are read from memory once for all m inputs.
    pub fn matmul_t_into(&self, x: &[f32], m: usize, y: &mut [f32], ld: usize, col0: usize) {
        self.product(x, m, y, ld, col0, Path::detect());
    }

    /// The product by one of the paths (tests compare them).
    fn product(&self, x: &[f32], m: usize, y: &mut [f32], ld: usize, col0: usize, path: Path) {
        let (n, k) = (self.rows, self.cols);
        assert_eq!(x.len(), m * k, "f16 matmul: x has {} values, expected {m} × {k}", x.len());
        assert!(col0 + n <= ld && y.len() >= m * ld, "f16 matmul: output too small");
        if m == 0 || n == 0 {
            return;
        }
        assert!(path.available(), "f16 matmul: the CPU lacks the features of {path:?}");
        // Output transposed (n × m) so that each task owns whole, disjoint chunks.
        let mut yt = vec![0f32; n * m];
        let task = |t: usize, out: &mut [f32]| {
            let j0 = t * ROWS_PER_TASK;
            let w = &self.bits[j0 * k..(j0 + out.len() / m) * k];
            rows_task(path, w, x, m, k, out);
        };
        if m * n * k >= PAR_WORK && rayon::current_num_threads() > 1 {
            yt.par_chunks_mut(ROWS_PER_TASK * m).enumerate().for_each(|(t, out)| task(t, out));
        } else {
            yt.chunks_mut(ROWS_PER_TASK * m).enumerate().for_each(|(t, out)| task(t, out));
        }
        for j in 0..n {
            for r in 0..m {
                y[r * ld + col0 + j] = yt[j * m + r];
            }
        }
    }
}

/// How a product runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Path {
    Portable,
    /// AVX2, F16C and FMA: 8 lanes.
    Avx2,
    /// AVX-512 F: 16 lanes.
    Avx512,
}

impl Path {
    fn detect() -> Self {
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx512f") {
                return Self::Avx512;
            }
            if crate::fma_available() && std::arch::is_x86_feature_detected!("f16c") {
                return Self::Avx2;
            }
        }
        Self::Portable
    }

    fn available(self) -> bool {
        match self {
            Self::Portable => true,
            #[cfg(target_arch = "x86_64")]
            Self::Avx2 => crate::fma_available() && std::arch::is_x86_feature_detected!("f16c"),
            #[cfg(target_arch = "x86_64")]
            Self::Avx512 => std::arch::is_x86_feature_detected!("avx512f"),
            #[cfg(not(target_arch = "x86_64"))]
            _ => false,
        }
    }
}

/// `out[j·m + r] = w_j · x_r` for the weight rows of `w` (out.len() / m rows of k halves) and
/// the m rows of x.
fn rows_task(path: Path, w: &[u16], x: &[f32], m: usize, k: usize, out: &mut [f32]) {
    let n = out.len() / m;
    debug_assert!(w.len() == n * k && x.len() == m * k);
    match path {
        #[cfg(target_arch = "x86_64")]
        Path::Avx512 => {
            // SAFETY: the path is available (asserted by `product`): the CPU has AVX-512 F;
            // w holds n rows and x m rows of k values (the caller slices them so).
            unsafe { x86::task_avx512(w, x, m, k, out) }
        }
        #[cfg(target_arch = "x86_64")]
        Path::Avx2 => {
            // SAFETY: as above, with AVX2, F16C and FMA.
            unsafe { x86::task_avx2(w, x, m, k, out) }
        }
        _ => {
            for j in 0..n {
                let wj = &w[j * k..(j + 1) * k];
                for r in 0..m {
                    out[j * m + r] = dot_portable(wj, &x[r * k..(r + 1) * k]);
                }
            }
        }
    }
}

/// One f16 row against one f32 row in 16 independent lanes, then their sum.
fn dot_portable(w: &[u16], x: &[f32]) -> f32 {
    let mut acc = [0f32; 16];
    let full = w.len() / 16 * 16;
    for (wc, xc) in w[..full].chunks_exact(16).zip(x[..full].chunks_exact(16)) {
        for l in 0..16 {
            acc[l] += crate::q4k::f16_to_f32(wc[l]) * xc[l];
        }
    }
    for (l, (&wv, &xv)) in w[full..].iter().zip(&x[full..]).enumerate() {
        acc[l] += crate::q4k::f16_to_f32(wv) * xv;
    }
    acc.iter().sum()
}

/// `out[i] = bits[i]` as f32, eight halves at a time (`vcvtph2ps`); exact.
///
/// # Safety
/// The CPU must have F16C and AVX; `out` must be as long as `bits`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx,f16c")]
unsafe fn widen_f16c(bits: &[u16], out: &mut [f32]) {
    use std::arch::x86_64::*;
    assert_eq!(bits.len(), out.len());
    let n8 = bits.len() / 8 * 8;
    for i in (0..n8).step_by(8) {
        // SAFETY: i + 8 ≤ n8 ≤ the length of both slices.
        unsafe { _mm256_storeu_ps(out.as_mut_ptr().add(i), _mm256_cvtph_ps(_mm_loadu_si128(bits.as_ptr().add(i) as *const __m128i))) };
    }
    for i in n8..bits.len() {
        out[i] = crate::q4k::f16_to_f32(bits[i]);
    }
}

/// The float formats a checkpoint file stores weights in, little-endian.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeFloat {
    F32,
    F16,
    Bf16,
}

impl LeFloat {
    pub fn size(self) -> usize {
        match self {
            LeFloat::F32 => 4,
            LeFloat::F16 | LeFloat::Bf16 => 2,
        }
    }
}

/// Little-endian values of `from` (a safetensors tensor's bytes, at any alignment) as f32,
/// in one pass into a fresh vector; None when the length is not a whole number of values.
/// Why: a checkpoint tensor read as candle's own dtype, then converted to f32, then copied
/// into a variable made three copies of every weight, each into freshly zeroed pages
/// (7.7 s to load Qwen2.5-0.5B's f32 folder, 73 % of it the kernel zeroing pages).
pub fn f32_from_le_bytes(bytes: &[u8], from: LeFloat) -> Option<Vec<f32>> {
    if !bytes.len().is_multiple_of(from.size()) {
        return None;
    }
    let n = bytes.len() / from.size();
    let mut out: Vec<f32> = Vec::with_capacity(n);
    match from {
        LeFloat::F32 if cfg!(target_endian = "little") => {
            // SAFETY: out has capacity for n f32 = bytes.len() bytes, a fresh allocation
            // that overlaps nothing; f32 has no invalid bit patterns, and on a little-endian
            // CPU the file's bytes are the values' bytes. The length is set after the copy.
            unsafe {
                std::ptr::copy_nonoverlapping(bytes.as_ptr(), out.as_mut_ptr() as *mut u8, bytes.len());
                out.set_len(n);
            }
        }
        LeFloat::F32 => out.extend(bytes.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))),
        LeFloat::Bf16 => out.extend(bytes.chunks_exact(2).map(|b| f32::from_bits((u16::from_le_bytes([b[0], b[1]]) as u32) << 16))),
        LeFloat::F16 => {
            // a block of halves at a time through the vector conversion
            let mut bits = [0u16; 4096];
            let mut wide = [0f32; 4096];
            for chunk in bytes.chunks(2 * bits.len()) {
                let m = chunk.len() / 2;
                for (h, b) in bits[..m].iter_mut().zip(chunk.chunks_exact(2)) {
                    *h = u16::from_le_bytes([b[0], b[1]]);
                }
                widen(&bits[..m], &mut wide[..m]);
                out.extend_from_slice(&wide[..m]);
            }
        }
    }
    Some(out)
}

/// Halves to f32 (exact): F16C where the CPU has it.
fn widen(bits: &[u16], out: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("f16c") && std::arch::is_x86_feature_detected!("avx") {
        // SAFETY: the CPU has F16C and AVX (checked); the caller passes equal lengths.
        unsafe { widen_f16c(bits, out) };
        return;
    }
    for (o, &b) in out.iter_mut().zip(bits) {
        *o = crate::q4k::f16_to_f32(b);
    }
}

/// An f32 rounded to the nearest f16 (ties to even), as its bits: overflow to ±infinity,
/// f16 subnormals below 2⁻¹⁴, NaN kept a (quiet) NaN.
pub fn f32_to_f16(x: f32) -> u16 {
    let b = x.to_bits();
    let sign = ((b >> 16) & 0x8000) as u16;
    let exp = ((b >> 23) & 0xff) as i32;
    let man = b & 0x7f_ffff;
    if exp == 0xff {
        return sign | 0x7c00 | if man != 0 { 0x200 | (man >> 13) as u16 } else { 0 };
    }
    // the f16 exponent, unbiased e − 127 + 15
    let e = exp - 112;
    if e >= 31 {
        return sign | 0x7c00;
    }
    if e <= 0 {
        // subnormal (or zero) in f16: the significand with its implicit bit, shifted right
        if e < -10 {
            return sign;
        }
        let m = man | 0x80_0000;
        let shift = (14 - e) as u32; // 13 + (1 − e)
        let half = m >> shift;
        let rem = m & ((1 << shift) - 1);
        let mid = 1 << (shift - 1);
        let round = rem > mid || (rem == mid && half & 1 == 1);
        return sign | (half + round as u32) as u16;
    }
    let half = ((e as u32) << 10) | (man >> 13);
    let rem = man & 0x1fff;
    let round = rem > 0x1000 || (rem == 0x1000 && half & 1 == 1);
    // a carry out of the mantissa steps the exponent (up to infinity), which is right
    sign | (half + round as u32) as u16
}

/// The x86 tasks: blocks of four weight rows × RB input rows, one accumulator per output in
/// registers (AVX-512: 4 × 4 of 16 lanes; AVX2: 4 × 2 of 8 lanes, of its 16 registers), the
/// halves widened by `vcvtph2ps` as they are loaded, the tail of k as one zero-padded chunk,
/// each output reduced by one fixed vector tree.
#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    /// How far ahead of the chunk being read the AVX2 product prefetches weights (4 KiB, as
    /// the Q8_0 kernel does), in halves; the AVX-512 product's distance depends on the CPU
    /// ([`crate::simd::decode_prefetch_bytes`]).
    const PREFETCH_HALVES: usize = 2048;

    /// # Safety
    /// AVX-512 F; w holds n = out.len() / m rows of k halves, x m rows of k values.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn task_avx512(w: &[u16], x: &[f32], m: usize, k: usize, out: &mut [f32]) {
        let ahead = crate::simd::decode_prefetch_bytes() / 2;
        // SAFETY: AVX-512 F (the caller's); `task` hands the blocks slices of k values.
        unsafe {
            task::<4>(w, x, m, k, out, |ws, xs, r, o| match r {
                1 => block512::<1>(ws, [xs[0]], k, ahead, o),
                2 => block512::<2>(ws, [xs[0], xs[1]], k, ahead, o),
                3 => block512::<3>(ws, [xs[0], xs[1], xs[2]], k, ahead, o),
                _ => block512::<4>(ws, xs, k, ahead, o),
            })
        }
    }

    /// # Safety
    /// AVX2, F16C and FMA; shapes as [`task_avx512`].
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn task_avx2(w: &[u16], x: &[f32], m: usize, k: usize, out: &mut [f32]) {
        // SAFETY: AVX2, F16C and FMA (the caller's); `task` hands the blocks slices of k values.
        unsafe {
            task::<2>(w, x, m, k, out, |ws, xs, r, o| match r {
                1 => block256::<1>(ws, [xs[0]], k, o),
                _ => block256::<2>(ws, xs, k, o),
            })
        }
    }

    /// Every (weight row, input row) of the task in blocks; `block(weight rows, input rows,
    /// rows used, out)` with each slice k long. Weight rows past the last repeat it and input
    /// rows past the last repeat it (their results are not stored).
    #[inline(always)]
    fn task<const RB: usize>(w: &[u16], x: &[f32], m: usize, k: usize, out: &mut [f32], block: impl Fn([&[u16]; 4], [&[f32]; RB], usize, &mut [[f32; 4]; 4])) {
        let n = out.len() / m;
        let mut i = 0;
        while i < m {
            let r = (m - i).min(RB);
            let xs: [&[f32]; RB] = std::array::from_fn(|q| &x[(i + q.min(r - 1)) * k..][..k]);
            let mut j = 0;
            while j < n {
                let ws: [&[u16]; 4] = std::array::from_fn(|d| &w[(j + d).min(n - 1) * k..][..k]);
                let mut o = [[0f32; 4]; 4];
                block(ws, xs, r, &mut o);
                for (dj, col) in o.iter().enumerate().take(n - j) {
                    for (q, &v) in col.iter().enumerate().take(r) {
                        out[(j + dj) * m + i + q] = v;
                    }
                }
                j += 4;
            }
            i += RB;
        }
    }

    /// out[d][q] = w_d · x_q for four f16 weight rows and R f32 rows, 16 lanes; weights
    /// `ahead` halves past each 32 read are asked for (0: none).
    ///
    /// # Safety
    /// AVX-512 F; every slice is k long.
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn block512<const R: usize>(ws: [&[u16]; 4], xs: [&[f32]; R], k: usize, ahead: usize, out: &mut [[f32; 4]; 4]) {
        // Two accumulators per output, even and odd chunks: with one, each chunk's multiply-add
        // waited for the last (4 cycles), which capped a decoding row's reads at about one
        // 32-byte load per 4 cycles.
        let mut acc = [[_mm512_setzero_ps(); R]; 4];
        let mut odd = [[_mm512_setzero_ps(); R]; 4];
        let full = k / 16 * 16;
        // One weight row after the other (the four rows are contiguous in memory), not the
        // four side by side: a single stream through memory, which the hardware prefetcher
        // follows at about twice the bandwidth of four (or two) interleaved ones (AMD EPYC
        // Zen 4, 1 thread, a 49152×576 matrix: 7.6–8.3 → 13–18 GB/s; `cargo run --release -p
        // ferrolm-kernels --example f16_probe`). The arithmetic of an output does not depend
        // on the other rows of the block or the batch.
        for d in 0..4 {
            let w = ws[d].as_ptr();
            // 16 halves at c, widened (c + 16 ≤ full ≤ k: inside the k-long slice)
            // SAFETY: every call below has c + 16 ≤ full.
            let load = |c: usize| _mm512_cvt_roundph_ps::<_MM_FROUND_CUR_DIRECTION>(unsafe { _mm256_loadu_si256(w.add(c) as *const __m256i) });
            let mut c = 0;
            // Software prefetch as far ahead as the CPU wants it (`decode_prefetch_bytes`:
            // none on Zen 4, whose hardware prefetcher alone streamed the rows faster; 8 KiB
            // on Zen 5, whose did not); a prefetch never faults, and `wrapping_add` makes no
            // reference past the slice.
            while c + 32 <= full {
                if ahead > 0 {
                    _mm_prefetch::<_MM_HINT_T0>(w.wrapping_add(c + ahead) as *const i8);
                }
                let (w0, w1) = (load(c), load(c + 16));
                for q in 0..R {
                    // SAFETY: c + 32 ≤ full ≤ k: 32 values of the k-long row.
                    let (x0, x1) = unsafe { (_mm512_loadu_ps(xs[q].as_ptr().add(c)), _mm512_loadu_ps(xs[q].as_ptr().add(c + 16))) };
                    acc[d][q] = _mm512_fmadd_ps(w0, x0, acc[d][q]);
                    odd[d][q] = _mm512_fmadd_ps(w1, x1, odd[d][q]);
                }
                c += 32;
            }
            if c < full {
                let w0 = load(c);
                for q in 0..R {
                    // SAFETY: c + 16 ≤ full ≤ k.
                    let x0 = unsafe { _mm512_loadu_ps(xs[q].as_ptr().add(c)) };
                    acc[d][q] = _mm512_fmadd_ps(w0, x0, acc[d][q]);
                }
            }
        }
        if full < k {
            // the tail: x masked (lanes past k read nothing, load zero), w copied into a
            // zero-padded chunk
            let mask: __mmask16 = ((1u32 << (k - full)) - 1) as u16;
            // SAFETY: the mask enables lanes full..k only, inside every k-long slice.
            let xv: [__m512; R] = std::array::from_fn(|q| unsafe { _mm512_maskz_loadu_ps(mask, xs[q].as_ptr().add(full)) });
            for d in 0..4 {
                let mut t = [0u16; 16];
                t[..k - full].copy_from_slice(&ws[d][full..]);
                // SAFETY: t holds the 16 halves loaded.
                let wv = _mm512_cvt_roundph_ps::<_MM_FROUND_CUR_DIRECTION>(unsafe { _mm256_loadu_si256(t.as_ptr() as *const __m256i) });
                for q in 0..R {
                    acc[d][q] = _mm512_fmadd_ps(wv, xv[q], acc[d][q]);
                }
            }
        }
        for d in 0..4 {
            for q in 0..R {
                out[d][q] = _mm512_reduce_add_ps(_mm512_add_ps(acc[d][q], odd[d][q]));
            }
        }
    }

    /// As [`block512`] in 8 lanes on AVX2, F16C and FMA.
    ///
    /// # Safety
    /// AVX2, F16C and FMA; every slice is k long.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn block256<const R: usize>(ws: [&[u16]; 4], xs: [&[f32]; R], k: usize, out: &mut [[f32; 4]; 4]) {
        let mut acc = [[_mm256_setzero_ps(); R]; 4];
        let full = k / 8 * 8;
        // one weight row after the other, as in block512
        for d in 0..4 {
            let mut c = 0;
            while c < full {
                if c % 32 == 0 {
                    // as in block512
                    _mm_prefetch::<_MM_HINT_T0>(ws[d].as_ptr().wrapping_add(c + PREFETCH_HALVES) as *const i8);
                }
                // SAFETY: c + 8 ≤ full ≤ k: 8 values of each k-long slice (unaligned loads).
                let wv = _mm256_cvtph_ps(unsafe { _mm_loadu_si128(ws[d].as_ptr().add(c) as *const __m128i) });
                for q in 0..R {
                    // SAFETY: as for wv, 8 values.
                    let xv = unsafe { _mm256_loadu_ps(xs[q].as_ptr().add(c)) };
                    acc[d][q] = _mm256_fmadd_ps(wv, xv, acc[d][q]);
                }
                c += 8;
            }
        }
        if full < k {
            // the tail: x and w copied into zero-padded chunks
            let mut xt = [[0f32; 8]; R];
            for q in 0..R {
                xt[q][..k - full].copy_from_slice(&xs[q][full..]);
            }
            // SAFETY: each xt row holds the 8 values loaded.
            let xv: [__m256; R] = std::array::from_fn(|q| unsafe { _mm256_loadu_ps(xt[q].as_ptr()) });
            for d in 0..4 {
                let mut t = [0u16; 8];
                t[..k - full].copy_from_slice(&ws[d][full..]);
                // SAFETY: t holds the 8 halves loaded.
                let wv = _mm256_cvtph_ps(unsafe { _mm_loadu_si128(t.as_ptr() as *const __m128i) });
                for q in 0..R {
                    acc[d][q] = _mm256_fmadd_ps(wv, xv[q], acc[d][q]);
                }
            }
        }
        for d in 0..4 {
            for q in 0..R {
                // halves, then pairs, then the last two lanes: a fixed tree
                let v = acc[d][q];
                let h = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
                let h = _mm_add_ps(h, _mm_movehl_ps(h, h));
                let h = _mm_add_ss(h, _mm_movehdup_ps(h));
                out[d][q] = _mm_cvtss_f32(h);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::q4k::f16_to_f32;

    fn values(n: usize, seed: u64) -> Vec<f32> {
        crate::testutil::lcg_values(n, seed, |u| u as f32 / (1u64 << 30) as f32 - 1.0)
    }

    fn paths() -> Vec<Path> {
        [Path::Portable, Path::Avx2, Path::Avx512].into_iter().filter(|p| p.available()).collect()
    }

    /// Each format at an odd byte offset (files align nothing), across the F16 path's
    /// blocks, against per-value conversions; a partial value is refused.
    #[test]
    fn checkpoint_bytes_widen_to_their_values() {
        let v = values(9000, 3);
        let mut buf = vec![0u8; 1];
        buf.extend(v.iter().flat_map(|x| x.to_le_bytes()));
        assert_eq!(f32_from_le_bytes(&buf[1..], LeFloat::F32).unwrap(), v);
        let halves: Vec<u16> = v.iter().map(|&x| f32_to_f16(x)).collect();
        let mut buf = vec![0u8; 1];
        buf.extend(halves.iter().flat_map(|h| h.to_le_bytes()));
        let want: Vec<f32> = halves.iter().map(|&h| f16_to_f32(h)).collect();
        assert_eq!(f32_from_le_bytes(&buf[1..], LeFloat::F16).unwrap(), want);
        let brain: Vec<u16> = v.iter().map(|x| (x.to_bits() >> 16) as u16).collect();
        let mut buf = vec![0u8; 1];
        buf.extend(brain.iter().flat_map(|h| h.to_le_bytes()));
        let want: Vec<f32> = brain.iter().map(|&h| f32::from_bits((h as u32) << 16)).collect();
        assert_eq!(f32_from_le_bytes(&buf[1..], LeFloat::Bf16).unwrap(), want);
        assert!(f32_from_le_bytes(&[0u8; 7], LeFloat::F32).is_none());
        assert!(f32_from_le_bytes(&[0u8; 3], LeFloat::Bf16).is_none());
    }

    #[test]
    fn f32_to_f16_rounds_to_nearest_even_and_inverts_f16_to_f32() {
        // every f16 value converts back to itself
        for h in 0..=u16::MAX {
            let f = f16_to_f32(h);
            if f.is_nan() {
                assert!(f16_to_f32(f32_to_f16(f)).is_nan(), "{h:#x}");
            } else {
                assert_eq!(f32_to_f16(f), h, "{h:#x} = {f}");
            }
        }
        // against candle's (the half crate's) conversion on values between and beyond
        let mut v = values(20_000, 3);
        v.iter_mut().enumerate().for_each(|(i, x)| *x *= [1e-7, 1e-5, 0.01, 1.0, 300.0, 7e4][i % 6]);
        v.extend([1.0 + 2f32.powi(-11), 1.0 + 3.0 * 2f32.powi(-11), 65519.0, 65520.0, 2f32.powi(-25), 2f32.powi(-25) * 1.5, -0.0]);
        let t = candle_core::Tensor::new(v.as_slice(), &candle_core::Device::Cpu).unwrap();
        let want: Vec<f32> = t.to_dtype(candle_core::DType::F16).unwrap().to_dtype(candle_core::DType::F32).unwrap().to_vec1().unwrap();
        for (x, w) in v.iter().zip(&want) {
            assert_eq!(f16_to_f32(f32_to_f16(*x)).to_bits(), w.to_bits(), "{x}");
        }
    }

    /// Every path the CPU has against an f64 reference of the f16 values, input rows
    /// 1..=9, every tail length mod 16 (and so mod 8), weight rows not a multiple of four or
    /// of a task; each path against the portable one; each row of a batch equal to that row
    /// alone (and to the same row among other rows).
    #[test]
    fn paths_match_reference_and_each_other_and_are_batch_invariant() {
        let ps = paths();
        eprintln!("f16 paths on this CPU: {ps:?}");
        let mut ks: Vec<usize> = (1..=33).collect();
        ks.extend([48, 63, 64, 65, 100, 576]);
        for k in ks {
            let n = if k < 40 { 37 } else { 70 };
            let w = F16Matrix::from_f32(&values(n * k, k as u64), n, k).unwrap();
            let wf = w.dequantize();
            for m in 1..=9 {
                let x = values(m * k, 100 + m as u64);
                let mut portable = vec![0f32; m * n];
                w.product(&x, m, &mut portable, n, 0, Path::Portable);
                for &p in &ps {
                    let mut y = vec![0f32; m * n];
                    w.product(&x, m, &mut y, n, 0, p);
                    for r in 0..m {
                        for j in 0..n {
                            let (xr, wj) = (&x[r * k..(r + 1) * k], &wf[j * k..(j + 1) * k]);
                            let want: f64 = xr.iter().zip(wj).map(|(a, b)| *a as f64 * *b as f64).sum();
                            let tol = 1e-5 * (1.0 + xr.iter().zip(wj).map(|(a, b)| (a * b).abs() as f64).sum::<f64>());
                            let (got, port) = (y[r * n + j] as f64, portable[r * n + j] as f64);
                            assert!((got - want).abs() < tol, "{p:?} k={k} m={m} ({r},{j}): {got} vs {want}");
                            assert!((got - port).abs() < tol, "{p:?} k={k} m={m} ({r},{j}): {got} vs portable {port}");
                        }
                    }
                    // batch invariance: each row alone gives the bits it had in the batch
                    for r in 0..m {
                        let mut alone = vec![0f32; n];
                        w.product(&x[r * k..(r + 1) * k], 1, &mut alone, n, 0, p);
                        assert_eq!(alone, y[r * n..(r + 1) * n], "{p:?} k={k}: row {r} of {m} alone");
                    }
                }
            }
        }
    }

    #[test]
    fn gguf_bytes_rows_reorder_stack_and_land_in_their_columns() {
        let (n, k) = (6, 40);
        let v = values(n * k, 9);
        let t = candle_core::Tensor::from_vec(v.clone(), (n, k), &candle_core::Device::Cpu).unwrap();
        let q = candle_core::quantized::QTensor::quantize(&t, candle_core::quantized::GgmlDType::F16).unwrap();
        let want = q.dequantize(&candle_core::Device::Cpu).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let ours = F16Matrix::from_gguf_bytes(n, k, &q.data().unwrap()).unwrap();
        assert_eq!(ours.dequantize(), want);
        assert_eq!(ours.bits[..], F16Matrix::from_f32(&v, n, k).unwrap().bits[..], "candle's F16 tensor holds our rounding");
        // the same bytes used in place (a GGUF file's map) give the same matrix and products;
        // a misaligned or short buffer is refused
        let mut file = vec![7u8; 64];
        file.extend_from_slice(&q.data().unwrap());
        file.extend_from_slice(&[1, 2, 3]);
        let owner: std::sync::Arc<dyn AsRef<[u8]> + Send + Sync> = std::sync::Arc::new(file);
        let shared = F16Matrix::from_shared_gguf(n, k, owner.clone(), 64).expect("aligned bytes inside the buffer");
        assert!(matches!(shared.bits, Halves::Shared { .. }));
        assert_eq!(shared.bits[..], ours.bits[..]);
        let x = values(3 * k, 5);
        assert_eq!(shared.matmul_t(&x, 3), ours.matmul_t(&x, 3));
        assert!(F16Matrix::from_shared_gguf(n, k, owner.clone(), 65).is_none(), "misaligned");
        assert!(F16Matrix::from_shared_gguf(n, k, owner.clone(), 68).is_none(), "past the end");
        let stacked = shared.clone().stack(&ours).unwrap();
        assert_eq!(stacked.bits[..n * k], ours.bits[..]);
        assert!(F16Matrix::from_gguf_bytes(n, k, &q.data().unwrap()[2..]).is_none());
        assert!(F16Matrix::from_f32(&v, n, k + 1).is_none());
        let p = ours.select_rows(&[5, 0]).stack(&ours.select_rows(&[1])).unwrap();
        assert_eq!(p.rows, 3);
        let dp = p.dequantize();
        for (to, from) in [5, 0, 1].into_iter().enumerate() {
            assert_eq!(dp[to * k..(to + 1) * k], want[from * k..(from + 1) * k]);
        }
        assert!(p.clone().stack(&F16Matrix::from_f32(&[0.0; 3], 1, 3).unwrap()).is_none());
        // into columns 2..5 of a 2 × 6 output
        let x = values(2 * k, 13);
        let mut y = vec![-1f32; 12];
        p.matmul_t_into(&x, 2, &mut y, 6, 2);
        let full = p.matmul_t(&x, 2);
        for r in 0..2 {
            assert_eq!(&y[r * 6..r * 6 + 2], &[-1.0, -1.0]);
            assert_eq!(&y[r * 6 + 2..r * 6 + 5], &full[r * 3..r * 3 + 3]);
            assert_eq!(y[r * 6 + 5], -1.0);
        }
    }

    /// Threaded and serial products (a product above the threshold) give the same bits.
    #[test]
    fn threaded_products_equal_serial_ones() {
        let (n, k) = (300, 1000);
        let w = F16Matrix::from_f32(&values(n * k, 1), n, k).unwrap();
        let x = values(3 * k, 2);
        let pool = |t: usize| rayon::ThreadPoolBuilder::new().num_threads(t).build().unwrap();
        let one = pool(1).install(|| w.matmul_t(&x, 3));
        let two = pool(2).install(|| w.matmul_t(&x, 3));
        assert_eq!(one, two);
    }
}
