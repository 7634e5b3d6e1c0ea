//! 8-bit weights for memory-bound products: GGUF's Q8_0 layout (blocks of 32 values along
//! a row, each `scale · q` with one f32 scale per block and q in −127..=127), and
//! `y = x·Wᵀ` for the few-row inputs of token-by-token decoding, where reading W is the
//! cost: a quarter of f32's bytes per weight.
//!
//! As in llama.cpp, the input rows are rounded to 8 bits too ([`Q8Act`]: blocks of 32 with
//! one f32 scale each), so that each weight block meets its input block in an exact
//! integer dot product and floats enter once per block: `d_w · d_x · Σ q_w·q_x`. Widening
//! every weight to f32 instead made decoding compute-bound (two thirds of a SmolLM2-135M
//! token in the conversion and multiply-adds, measured with perf). The integer dot runs as
//! AVX-512 VNNI or AVX-VNNI `vpdpbusd`, or AVX2 `vpmaddubsw`+`vpmaddwd`, chosen at run time,
//! with a portable form elsewhere; all give the same integers. A model that decodes with
//! these products rounds the inputs of its many-row (prompt) products the same way
//! ([`round_activations`]), so a prompt pass and token-by-token decoding compute the same
//! quantized model.

use rayon::prelude::*;

mod gemm;
pub use gemm::available as tiles_available;

/// How far ahead of the block being read the x86 products prefetch weights (bytes).
const PREFETCH: usize = 4096;

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
        // block by block into a buffer of the final size (a byte-wise `flat_map` collect grew
        // its vector by reallocation and copying: a third of a GGUF model's load)
        let mut quants = vec![0i8; rows * cols];
        for (b, q) in bytes.chunks_exact(BYTES).zip(quants.chunks_exact_mut(BLOCK)) {
            for (q, &v) in q.iter_mut().zip(&b[2..]) {
                *q = v as i8;
            }
        }
        Some(Self { rows, cols, scales, quants })
    }

    /// The matrix a GGUF Q5_0 tensor of shape (rows, cols) holds in `bytes`, exactly:
    /// blocks of 22 bytes — an f16 scale d, 32 high bits, 16 bytes of low nibbles — whose
    /// values `d · (q − 16)` have q − 16 in −16..=15, so each block is a Q8_0 block with the
    /// same scale. llama.cpp's q4_k_m quantizer writes Q5_0 for matrices whose rows do not
    /// fill 256-value super-blocks (SmolLM2's 576-wide, Qwen2.5-0.5B's 896-wide layers),
    /// and llama.cpp multiplies Q5_0 blocks with inputs rounded to Q8_0 blocks as this
    /// kernel does. Held at 8 bits, such a matrix takes 8.5 bits a weight instead of 5.5;
    /// the integer dot product is the Q8_0 one. None when the sizes do not match.
    pub fn from_gguf_q5_0_bytes(rows: usize, cols: usize, bytes: &[u8]) -> Option<Self> {
        const BYTES: usize = 2 + 4 + BLOCK / 2;
        if cols == 0 || !cols.is_multiple_of(BLOCK) || bytes.len() != rows * cols / BLOCK * BYTES {
            return None;
        }
        let scales = bytes.chunks_exact(BYTES).map(|b| crate::q4k::f16_to_f32(u16::from_le_bytes([b[0], b[1]]))).collect();
        let mut quants = vec![0i8; rows * cols];
        for (b, q) in bytes.chunks_exact(BYTES).zip(quants.chunks_exact_mut(BLOCK)) {
            let high = u32::from_le_bytes([b[2], b[3], b[4], b[5]]);
            for (j, &low) in b[6..].iter().enumerate() {
                // value j: low nibble and high bit j; value j + 16: high nibble and bit j + 16
                let lo = (low & 0x0f) | (((high >> j) & 1) << 4) as u8;
                let hi = (low >> 4) | (((high >> (j + 16)) & 1) << 4) as u8;
                q[j] = lo as i8 - 16;
                q[j + BLOCK / 2] = hi as i8 - 16;
            }
        }
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
        let mut out = vec![0f32; self.rows * self.cols];
        self.dequantize_rows_into(0, &mut out);
        out
    }

    /// Rows `start .. start + out.len() / cols` in f32, into `out` (whole rows): a panel for
    /// [`crate::sgemm::matmul_t_dequantized`], or embedding rows.
    pub fn dequantize_rows_into(&self, start: usize, out: &mut [f32]) {
        let (k, bpr) = (self.cols, self.cols / BLOCK);
        let rows = out.len() / k;
        assert!(out.len() == rows * k && start + rows <= self.rows, "q8 dequantize: rows {start}..{} of {}", start + rows, self.rows);
        let quants = &self.quants[start * k..(start + rows) * k];
        let scales = &self.scales[start * bpr..(start + rows) * bpr];
        crate::vectorized(
            #[inline(always)]
            || {
                for ((o, q), &d) in out.chunks_exact_mut(BLOCK).zip(quants.chunks_exact(BLOCK)).zip(scales) {
                    for (o, &q) in o.iter_mut().zip(q) {
                        *o = q as f32 * d;
                    }
                }
            },
        )
    }

    /// `x·Wᵀ` for x (m × cols, row-major) into a new (m × rows) buffer. Weight rows are split
    /// among the rayon threads; each row is read once for all m inputs.
    pub fn matmul_t(&self, x: &[f32], m: usize) -> Vec<f32> {
        let mut y = vec![0f32; m * self.rows];
        self.matmul_t_into(x, m, &mut y, self.rows, 0);
        y
    }

    /// `x·Wᵀ` into columns `col0 .. col0 + rows` of y (m × ld, row-major). The input rows
    /// are rounded to 8 bits first ([`Q8Act`]); weight rows are split among the rayon
    /// threads, each read once for all m inputs.
    pub fn matmul_t_into(&self, x: &[f32], m: usize, y: &mut [f32], ld: usize, col0: usize) {
        assert_eq!(x.len(), m * self.cols, "q8 matmul: x has {} values, expected {m} × {}", x.len(), self.cols);
        self.matmul_q8_into(&Q8Act::quantize(x, m, self.cols), y, ld, col0);
    }

    /// [`Self::matmul_q8_into`] for many input rows (a prompt pass) as 8-bit products in
    /// tiles on AVX-512 VNNI (see `gemm`): the same floats, bit for bit. False (y untouched)
    /// where the CPU lacks the tiles ([`tiles_available`]).
    pub fn matmul_q8_tiles_into(&self, x: &Q8Act, y: &mut [f32], ld: usize, col0: usize) -> bool {
        gemm::matmul_q8_tiles_into(self, x, y, ld, col0)
    }

    /// [`Self::matmul_t_into`] on inputs already rounded (several matrices that read the
    /// same input quantize it once).
    pub fn matmul_q8_into(&self, x: &Q8Act, y: &mut [f32], ld: usize, col0: usize) {
        let m = x.rows;
        assert_eq!(x.cols, self.cols, "q8 matmul: input width {} for weights of width {}", x.cols, self.cols);
        assert!(col0 + self.rows <= ld && y.len() >= m * ld, "q8 matmul: output too small");
        let (n, k) = (self.rows, self.cols);
        if m == 0 || n == 0 {
            return;
        }
        let bpr = k / BLOCK;
        let isa = DotIsa::detect();
        // Output transposed (n × m) so that each task owns whole, disjoint chunks.
        let mut yt = vec![0f32; n * m];
        const ROWS_PER_TASK: usize = 64;
        yt.par_chunks_mut(ROWS_PER_TASK * m).enumerate().for_each(|(task, out)| {
            for (local, o) in out.chunks_mut(m).enumerate() {
                let row = task * ROWS_PER_TASK + local;
                let q = &self.quants[row * k..(row + 1) * k];
                let d = &self.scales[row * bpr..(row + 1) * bpr];
                rows_dot(isa, q, d, x, o);
            }
        });
        for j in 0..n {
            for r in 0..m {
                y[r * ld + col0 + j] = yt[j * m + r];
            }
        }
    }
}

/// (rows × cols) inputs rounded to 8 bits in blocks of [`BLOCK`]: `x ≈ scales[b] ·
/// quants[32·b + i]`, scale = max |x| / 127 per block, quants rounded to nearest (ties to
/// even) in −127..=127 — never −128, which the products' sign trick relies on. Rows are
/// independent: a row's blocks do not depend on the other rows of the product, so batched
/// decoding multiplies each sequence exactly as alone.
#[derive(Debug, Clone)]
pub struct Q8Act {
    pub rows: usize,
    pub cols: usize,
    pub(crate) scales: Vec<f32>,
    pub(crate) quants: Vec<i8>,
}

impl Q8Act {
    /// Round x (m × k, row-major; k a multiple of [`BLOCK`]).
    pub fn quantize(x: &[f32], m: usize, k: usize) -> Self {
        assert!(k.is_multiple_of(BLOCK) && x.len() == m * k, "rounding inputs to 8 bits: {} values for {m} rows of {k}", x.len());
        let mut scales = vec![0f32; m * k / BLOCK];
        let mut quants = vec![0i8; m * k];
        crate::vectorized(
            #[inline(always)]
            || {
                for ((xb, qb), d) in x.chunks_exact(BLOCK).zip(quants.chunks_exact_mut(BLOCK)).zip(scales.iter_mut()) {
                    *d = round_block(xb, qb);
                }
            },
        );
        Self { rows: m, cols: k, scales, quants }
    }

    /// The values the blocks stand for.
    pub fn dequantize(&self) -> Vec<f32> {
        self.quants.chunks(BLOCK).zip(&self.scales).flat_map(|(q, &d)| q.iter().map(move |&q| q as f32 * d)).collect()
    }
}

/// Replace each value of x (rows of k, k a multiple of [`BLOCK`]) by what [`Q8Act`] rounds
/// it to: the input a many-row product on Q8_0 weights multiplies in f32, so that it
/// computes what the few-row integer products compute (up to the order of float sums).
pub fn round_activations(x: &mut [f32], k: usize) {
    assert!(k.is_multiple_of(BLOCK) && x.len().is_multiple_of(k.max(1)), "rounding inputs to 8 bits: {} values in rows of {k}", x.len());
    // Plain `for` loops: an iterator adapter's `fold` is a function of its own that need
    // not be inlined into the vectorised wrapper (it ran as scalar SSE code, 8% of a
    // prompt pass).
    let round_all = |c: &mut [f32]| {
        crate::vectorized(
            #[inline(always)]
            || {
                for b in c.chunks_exact_mut(BLOCK) {
                    round_block_in_place(b);
                }
            },
        )
    };
    if x.len() >= 1 << 16 {
        x.par_chunks_mut(BLOCK * 64).for_each(round_all);
    } else {
        round_all(x);
    }
}

/// [`round_block`]'s values in place, in floats only (an integer-valued float in
/// −127..=127 times the scale is exactly `q as f32 · d`): the conversions to i8 and back
/// kept the loop scalar.
#[inline(always)]
fn round_block_in_place(xb: &mut [f32]) {
    let (d, id) = block_scale(xb);
    for v in xb.iter_mut() {
        *v = ((*v * id + ROUND) - ROUND).clamp(-127.0, 127.0) * d;
    }
}

/// Adding and subtracting 1.5·2²³ rounds a float below 2²² in magnitude to the nearest
/// integer, ties to even, in the float adder: the same on every CPU, and it vectorises.
const ROUND: f32 = 12_582_912.0;

/// A block's scale d = max |x| / 127 and its inverse (0 for an all-zero block).
#[inline(always)]
fn block_scale(x: &[f32]) -> (f32, f32) {
    let mut lanes = [0f32; 16];
    for c in x.chunks_exact(16) {
        for i in 0..16 {
            let a = c[i].abs();
            if a > lanes[i] {
                lanes[i] = a;
            }
        }
    }
    let amax = lanes.iter().fold(0f32, |m, &v| if v > m { v } else { m });
    let d = amax / 127.0;
    (d, if d > 0.0 { 1.0 / d } else { 0.0 })
}

/// One block's scale and quants by [`Q8Act`]'s rule.
#[inline(always)]
fn round_block(x: &[f32], q: &mut [i8]) -> f32 {
    let (d, id) = block_scale(x);
    for (q, v) in q.iter_mut().zip(x) {
        // |v · id| ≤ 127 up to the rounding of id; the clamp makes the range certain.
        *q = ((v * id + ROUND) - ROUND).clamp(-127.0, 127.0) as i8;
    }
    d
}

/// The integer dot product the CPU runs best.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DotIsa {
    /// AVX-512 VNNI on 256-bit registers (Ice Lake and later Xeons, Zen 4).
    Avx512Vnni,
    /// AVX-VNNI, the VEX form (Alder Lake and later without AVX-512).
    AvxVnni,
    /// AVX2: `vpmaddubsw` into pairs of i16, then `vpmaddwd` into i32.
    Avx2,
    Portable,
}

impl DotIsa {
    pub fn detect() -> Self {
        #[cfg(target_arch = "x86_64")]
        {
            use std::arch::is_x86_feature_detected as has;
            if crate::fma_available() {
                if has!("avx512vnni") && has!("avx512vl") && has!("avx512bw") {
                    return Self::Avx512Vnni;
                }
                if has!("avxvnni") {
                    return Self::AvxVnni;
                }
                return Self::Avx2;
            }
        }
        Self::Portable
    }

    /// The forms this CPU can run, best first (tests compare them).
    pub fn available() -> Vec<Self> {
        let all = [Self::Avx512Vnni, Self::AvxVnni, Self::Avx2, Self::Portable];
        let best = all.iter().position(|&i| i == Self::detect()).expect("detect returns one of them");
        #[cfg(target_arch = "x86_64")]
        let avxvnni = std::arch::is_x86_feature_detected!("avxvnni");
        #[cfg(not(target_arch = "x86_64"))]
        let avxvnni = false;
        all[best..].iter().copied().filter(|&i| i != Self::AvxVnni || avxvnni).collect()
    }
}

/// `out[r] = Σ_blocks d_w · d_x[r] · Σ q_w·q_x[r]` for one weight row (q, d) and every row
/// r of x. Every form computes each output with the same float operations, in the same
/// order, as the prompt pass's tiles (`gemm`): the block's integer sum exactly, then
/// `acc = fma(sum, d_w·d_x, acc)` block after block. So decoding a token gives the prompt
/// pass's values bit for bit: a one-ulp difference can move an 8-bit input across a
/// rounding boundary, and one such flip (measured in an 8-layer test model) spread to 151
/// flips two layers later and moved the logits by 1 %, half of what Q8_0 itself moves them.
#[inline(always)]
fn rows_dot(isa: DotIsa, q: &[i8], d: &[f32], x: &Q8Act, out: &mut [f32]) {
    debug_assert!(q.len() == x.cols && d.len() * BLOCK == q.len() && out.len() == x.rows);
    #[cfg(target_arch = "x86_64")]
    {
        // Each form runs only where `DotIsa::detect` found its features (the caller
        // passes a detected or `available()` form); q and every row of x hold d.len()
        // whole blocks, which is all the functions read.
        match isa {
            // SAFETY: as above, AVX-512 VNNI (with AVX2, FMA) was detected.
            DotIsa::Avx512Vnni => return unsafe { rows_dot_avx512vnni(q, d, x, out) },
            // SAFETY: as above, AVX-VNNI (with AVX2, FMA) was detected.
            DotIsa::AvxVnni => return unsafe { rows_dot_avxvnni(q, d, x, out) },
            // SAFETY: as above, AVX2 and FMA were detected.
            DotIsa::Avx2 => return unsafe { rows_dot_avx2(q, d, x, out) },
            DotIsa::Portable => {}
        }
    }
    let _ = isa;
    let bpr = d.len();
    for (r, o) in out.iter_mut().enumerate() {
        let (xq, xd) = (&x.quants[r * x.cols..(r + 1) * x.cols], &x.scales[r * bpr..(r + 1) * bpr]);
        let mut acc = 0f32;
        for (b, (qb, xb)) in q.chunks_exact(BLOCK).zip(xq.chunks_exact(BLOCK)).enumerate() {
            let dot: i32 = qb.iter().zip(xb).map(|(&a, &b)| a as i32 * b as i32).sum();
            acc = (dot as f32).mul_add(d[b] * xd[b], acc);
        }
        *o = acc;
    }
}

/// The SIMD body shared by the x86 forms: for each block, |q_w| (unsigned) meets q_x with
/// q_w's sign (signed) in `dot32` (32 byte products summed into 8 i32 lanes); four blocks'
/// lanes are summed to four exact totals by horizontal adds, converted, and folded into the
/// output one block after another (see [`rows_dot`]). `dot32` is the only difference.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn rows_dot_x86(q: &[i8], d: &[f32], x: &Q8Act, out: &mut [f32], dot32: impl Fn(std::arch::x86_64::__m256i, std::arch::x86_64::__m256i) -> std::arch::x86_64::__m256i) {
    use std::arch::x86_64::*;
    let (k, bpr) = (x.cols, d.len());
    for (r, o) in out.iter_mut().enumerate() {
        let xq = &x.quants[r * k..(r + 1) * k];
        let xd = &x.scales[r * bpr..(r + 1) * bpr];
        let block = |b: usize| {
            // SAFETY: block b < bpr (every caller) lies inside q and xq, which hold bpr whole
            // blocks of 32 bytes; the loads are unaligned; AVX2 and FMA are on (this function
            // is inlined only into functions compiled for them).
            unsafe {
                // Ask for the weights PREFETCH bytes ahead (a later row of this task):
                // decoding reads them from memory once, and the hardware prefetcher alone
                // left the product at a third of the cache-hot speed.
                _mm_prefetch::<_MM_HINT_T0>(q.as_ptr().wrapping_add(b * BLOCK + PREFETCH));
                let w = _mm256_loadu_si256(q.as_ptr().add(b * BLOCK) as *const __m256i);
                let v = _mm256_loadu_si256(xq.as_ptr().add(b * BLOCK) as *const __m256i);
                dot32(_mm256_sign_epi8(w, w), _mm256_sign_epi8(v, w))
            }
        };
        let mut acc = 0f32;
        let mut b = 0;
        while b + 4 <= bpr {
            let (mut sums, mut scales) = ([0i32; 4], [0f32; 4]);
            // SAFETY: as above; blocks b .. b + 4 and scales b .. b + 4 exist (b + 4 ≤ bpr),
            // and the stores write exactly the four values of each array.
            unsafe {
                let h01 = _mm256_hadd_epi32(block(b), block(b + 1));
                let h23 = _mm256_hadd_epi32(block(b + 2), block(b + 3));
                // lane j of each half: block b + j's sums of lanes 0–3 (low) and 4–7 (high)
                let h = _mm256_hadd_epi32(h01, h23);
                _mm_storeu_si128(sums.as_mut_ptr() as *mut __m128i, _mm_add_epi32(_mm256_castsi256_si128(h), _mm256_extracti128_si256::<1>(h)));
                _mm_storeu_ps(scales.as_mut_ptr(), _mm_mul_ps(_mm_loadu_ps(d.as_ptr().add(b)), _mm_loadu_ps(xd.as_ptr().add(b))));
            }
            for (s, c) in sums.iter().zip(&scales) {
                acc = (*s as f32).mul_add(*c, acc);
            }
            b += 4;
        }
        while b < bpr {
            let mut lanes = [0i32; 8];
            // SAFETY: as above; lanes holds exactly the 8 i32 an unaligned store writes.
            unsafe { _mm256_storeu_si256(lanes.as_mut_ptr() as *mut __m256i, block(b)) };
            acc = (lanes.iter().sum::<i32>() as f32).mul_add(d[b] * xd[b], acc);
            b += 1;
        }
        *o = acc;
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma")]
unsafe fn rows_dot_avx512vnni(q: &[i8], d: &[f32], x: &Q8Act, out: &mut [f32]) {
    use std::arch::x86_64::*;
    // SAFETY: the caller checked the features this function is compiled for.
    unsafe { rows_dot_x86(q, d, x, out, |u, s| _mm256_dpbusd_epi32(_mm256_setzero_si256(), u, s)) }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avxvnni,avx2,fma")]
unsafe fn rows_dot_avxvnni(q: &[i8], d: &[f32], x: &Q8Act, out: &mut [f32]) {
    use std::arch::x86_64::*;
    // SAFETY: the caller checked the features this function is compiled for.
    unsafe { rows_dot_x86(q, d, x, out, |u, s| _mm256_dpbusd_avx_epi32(_mm256_setzero_si256(), u, s)) }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn rows_dot_avx2(q: &[i8], d: &[f32], x: &Q8Act, out: &mut [f32]) {
    use std::arch::x86_64::*;
    // |q_w|·q_x pairs are at most 2·127·127 = 32258: `vpmaddubsw` never saturates.
    // SAFETY: the caller checked the features this function is compiled for.
    unsafe { rows_dot_x86(q, d, x, out, |u, s| _mm256_madd_epi16(_mm256_maddubs_epi16(u, s), _mm256_set1_epi16(1))) }
}

/// [`Q8Matrix::matmul_q8_into`] with a given form of the dot product (tests compare forms).
pub fn matmul_q8_with(w: &Q8Matrix, x: &Q8Act, isa: DotIsa) -> Vec<f32> {
    let (n, k, m) = (w.rows, w.cols, x.rows);
    let bpr = k / BLOCK;
    let mut y = vec![0f32; m * n];
    let mut o = vec![0f32; m];
    for j in 0..n {
        rows_dot(isa, &w.quants[j * k..(j + 1) * k], &w.scales[j * bpr..(j + 1) * bpr], x, &mut o);
        for r in 0..m {
            y[r * n + j] = o[r];
        }
    }
    y
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Values spread evenly over ±3.33 (also the tiles' tests' inputs).
    pub(super) fn values(n: usize, seed: u64) -> Vec<f32> {
        crate::testutil::lcg_values(n, seed, |r| (r % 2001) as f32 / 300.0 - 1000.0 / 300.0)
    }

    #[test]
    fn product_equals_the_dequantized_matrix_product_on_rounded_inputs() {
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
            // the integer products compute the f32 product of the rounded inputs
            let mut xr = x.clone();
            round_activations(&mut xr, k);
            assert_eq!(xr, Q8Act::quantize(&x, m, k).dequantize());
            for r in 0..m {
                for j in 0..n {
                    let want: f64 = (0..k).map(|i| xr[r * k + i] as f64 * dq[j * k + i] as f64).sum();
                    assert!((y[r * n + j] as f64 - want).abs() < 1e-5 * (1.0 + want.abs()), "m={m} ({r},{j}): {} vs {want}", y[r * n + j]);
                    // and the rounding costs at most half a step of each input block
                    let exact: f64 = (0..k).map(|i| x[r * k + i] as f64 * dq[j * k + i] as f64).sum();
                    let bound: f64 = (0..k).map(|i| 0.5 * (x[r * k + i / BLOCK * BLOCK..][..BLOCK].iter().fold(0f32, |a, v| a.max(v.abs())) / 127.0) as f64 * dq[j * k + i].abs() as f64).sum();
                    assert!((want - exact).abs() <= bound + 1e-6);
                }
            }
        }
    }

    #[test]
    fn input_rounding_is_to_nearest_in_127_steps_and_never_minus_128() {
        let mut x: Vec<f32> = (0..64).map(|i| (i as f32 - 31.5) * 0.37).collect();
        x[40] = 0.0;
        let a = Q8Act::quantize(&x, 1, 64);
        for (b, xb) in x.chunks(BLOCK).enumerate() {
            let amax = xb.iter().fold(0f32, |m, v| m.max(v.abs()));
            assert_eq!(a.scales[b], amax / 127.0);
            for (i, v) in xb.iter().enumerate() {
                let q = a.quants[b * BLOCK + i];
                assert!(q > -128);
                assert!((v / a.scales[b] - q as f32).abs() <= 0.5 + 1e-4, "{v} → {q}");
            }
        }
        // an all-zero row rounds to zeros with scale 0, and multiplies to 0
        let z = Q8Act::quantize(&[0.0; 32], 1, 32);
        assert_eq!((z.scales[0], z.quants.iter().all(|&q| q == 0)), (0.0, true));
    }

    #[test]
    fn every_dot_form_gives_the_same_sums_and_rows_do_not_depend_on_each_other() {
        let (n, k, m) = (19, 32 * 7, 5);
        let q = Q8Matrix::quantize(&values(n * k, 11), n, k).unwrap();
        // extreme quants: ±127 weights against ±127 inputs in every lane
        let mut extreme = q.clone();
        for (i, v) in extreme.quants.iter_mut().enumerate() {
            *v = if i % 3 == 0 { -127 } else { 127 };
        }
        let x = values(m * k, 12);
        let xq = Q8Act::quantize(&x, m, k);
        let mut sat = xq.clone();
        for (i, v) in sat.quants.iter_mut().enumerate() {
            *v = if i % 2 == 0 { 127 } else { -127 };
        }
        for (w, a) in [(&q, &xq), (&extreme, &sat)] {
            let portable = matmul_q8_with(w, a, DotIsa::Portable);
            let best = matmul_q8_with(w, a, DotIsa::detect());
            for isa in DotIsa::available() {
                // the same integers and the same float operations in the same order
                assert_eq!(matmul_q8_with(w, a, isa), portable, "{isa:?}");
            }
            // the threaded product and the prompt pass's tiles equal the plain loop, and a
            // row alone equals it in a batch
            let mut y = vec![0f32; m * n];
            w.matmul_q8_into(a, &mut y, n, 0);
            assert_eq!(y, best);
            let mut tiles = vec![0f32; m * n];
            if w.matmul_q8_tiles_into(a, &mut tiles, n, 0) {
                assert_eq!(tiles, best);
            }
            for r in 0..m {
                let one = Q8Act::quantize(&x[r * k..(r + 1) * k], 1, k);
                if std::ptr::eq(a, &xq) {
                    assert_eq!(w.matmul_t(&x[r * k..(r + 1) * k], 1), y[r * n..(r + 1) * n], "row {r}");
                    assert_eq!(one.quants, xq.quants[r * k..(r + 1) * k]);
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

    #[test]
    fn gguf_q5_0_bytes_read_as_candle_dequantizes_them() {
        use candle_core::quantized::{GgmlDType, QTensor};
        let (n, k) = (5, 96);
        // values of both signs and a range wide enough to use all 32 levels
        let t = candle_core::Tensor::from_vec(values(n * k, 4), (n, k), &candle_core::Device::Cpu).unwrap();
        let q = QTensor::quantize(&t, GgmlDType::Q5_0).unwrap();
        let want = q.dequantize(&candle_core::Device::Cpu).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let ours = Q8Matrix::from_gguf_q5_0_bytes(n, k, &q.data().unwrap()).unwrap();
        assert_eq!(ours.dequantize(), want);
        assert!(ours.quants.iter().all(|&v| (-16..=15).contains(&v)));
        assert!(ours.quants.contains(&-16) && ours.quants.contains(&15));
        assert!(Q8Matrix::from_gguf_q5_0_bytes(n, k, &q.data().unwrap()[1..]).is_none());
        // and its product is the Q8_0 product of the same blocks
        let x = values(2 * k, 5);
        let y = ours.matmul_t(&x, 2);
        let xr = Q8Act::quantize(&x, 2, k).dequantize();
        for r in 0..2 {
            for j in 0..n {
                let exact: f64 = (0..k).map(|i| xr[r * k + i] as f64 * want[j * k + i] as f64).sum();
                assert!((y[r * n + j] as f64 - exact).abs() < 1e-4 * (1.0 + exact.abs()), "{} vs {exact}", y[r * n + j]);
            }
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
