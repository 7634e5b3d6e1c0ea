//! 4- and 6-bit "k-quant" weights in GGUF's own block layouts, and `y = x·Wᵀ` on them for
//! the few-row inputs of token-by-token decoding (where reading W is the cost).
//!
//! Both formats cut a row into super-blocks of [`QK_K`] = 256 values; the bytes of a
//! super-block are exactly what a GGUF file holds, so a file's tensors are used as stored.
//!
//! **Q4_K**, 144 bytes per super-block:
//! - bytes 0..2: `d` (f16), bytes 2..4: `dmin` (f16);
//! - bytes 4..16: eight 6-bit scales `s_j` and eight 6-bit mins `m_j` (one pair per
//!   sub-block of 32 values), packed: for j < 4, `s_j` is the low 6 bits of byte j and
//!   `m_j` the low 6 bits of byte j + 4; for j ≥ 4, `s_j` is the low nibble of byte j + 4
//!   with the top two bits of byte j − 4 above it, and `m_j` the high nibble of byte j + 4
//!   with the top two bits of byte j above it;
//! - bytes 16..144: 256 4-bit quants. Each group of 64 values (c = 0..4) reads 32 bytes
//!   from `16 + 32c`: their low nibbles are sub-block 2c, their high nibbles sub-block 2c + 1.
//!
//!   value = `d·s_j · q − dmin·m_j`.
//!
//! **Q6_K**, 210 bytes per super-block: bytes 0..128 the low 4 bits of each quant (`ql`),
//! bytes 128..192 the high 2 bits (`qh`), bytes 192..208 sixteen signed 8-bit scales (one per
//! 16 values), bytes 208..210 `d` (f16). Each half h = 0..2 (128 values) reads `ql` from
//! 64h, `qh` from 128 + 32h and scales from 192 + 8h; for l in 0..32, the quants of values
//! l, l + 32, l + 64 and l + 96 of the half are
//! `ql[l] & 15`, `ql[l + 32] & 15`, `ql[l] >> 4`, `ql[l + 32] >> 4` (low bits), with bits
//! 0–1, 2–3, 4–5, 6–7 of `qh[l]` above them, minus 32; value l + 32i uses scale
//! `2i + l / 16` of the half: value = `d · scale · q`.
//!
//! The few-row product (decoding) reads each weight byte once per call and multiplies it
//! with inputs rounded to 8 bits ([`crate::q8::Q8Act`], as the Q8_0 product's) in exact
//! integer dot products, floats once per 32-value sub-block ([`dot`]); the forms (AVX-512
//! VNNI, AVX-VNNI, AVX2, portable) are chosen at run time and give the same floats. A
//! prompt's many rows take the same product (the model's quantized layers call it for both
//! passes, so decoding gives the prompt pass's floats bit for bit);
//! [`KMatrix::dequantize_rows_into`] widens rows to f32 for embedding lookups and for the
//! panels of f32 products (QLoRA's input gradient).

use rayon::prelude::*;

use crate::q8::{DotIsa, Q8Act};

mod dot;

/// Values per super-block (GGUF's QK_K).
pub const QK_K: usize = 256;

/// Which k-quant a [`KMatrix`] holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum KQuant {
    Q4K,
    Q6K,
}

impl KQuant {
    /// Bytes of one super-block.
    pub const fn block_bytes(self) -> usize {
        match self {
            KQuant::Q4K => 144,
            KQuant::Q6K => 210,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            KQuant::Q4K => "Q4_K",
            KQuant::Q6K => "Q6_K",
        }
    }

    #[cfg(feature = "candle")]
    fn ggml(self) -> candle_core::quantized::GgmlDType {
        match self {
            KQuant::Q4K => candle_core::quantized::GgmlDType::Q4K,
            KQuant::Q6K => candle_core::quantized::GgmlDType::Q6K,
        }
    }
}

/// A (rows × cols) matrix of k-quant super-blocks, row-major, as GGUF stores it.
#[derive(Debug, Clone)]
pub struct KMatrix {
    pub kind: KQuant,
    pub rows: usize,
    pub cols: usize,
    bytes: KBytes,
}

/// A k-quant matrix's super-blocks: owned, or read in place from a GGUF file's map
/// ([`crate::held`]).
type KBytes = crate::held::Held<u8>;

impl KMatrix {
    /// The matrix a GGUF tensor of `kind` and shape (rows, cols) holds at `offset` in
    /// `owner` (the file's map), used in place: no copy. None when the sizes do not fit.
    pub fn from_shared(kind: KQuant, rows: usize, cols: usize, owner: crate::held::Owner, offset: usize) -> Option<Self> {
        if cols == 0 || !cols.is_multiple_of(QK_K) {
            return None;
        }
        let len = rows.checked_mul(cols / QK_K)?.checked_mul(kind.block_bytes())?;
        Some(Self { kind, rows, cols, bytes: KBytes::shared(owner, offset, len)? })
    }

    /// The matrix over `bytes` as a GGUF tensor of `kind` and shape (rows, cols) holds them.
    /// None when `cols` is not a multiple of [`QK_K`] or the length does not match.
    pub fn from_bytes(kind: KQuant, rows: usize, cols: usize, bytes: Vec<u8>) -> Option<Self> {
        if cols == 0 || !cols.is_multiple_of(QK_K) || bytes.len() != rows * (cols / QK_K) * kind.block_bytes() {
            return None;
        }
        Some(Self { kind, rows, cols, bytes: KBytes::Owned(bytes) })
    }

    /// Quantize row-major f32 values with candle's k-quant rule (the blocks llama.cpp's
    /// reference quantizer writes), rows split among the rayon threads. None when `cols` is
    /// not a multiple of [`QK_K`].
    #[cfg(feature = "candle")]
    pub fn quantize(kind: KQuant, values: &[f32], rows: usize, cols: usize) -> Option<Self> {
        use candle_core::quantized::QTensor;
        if cols == 0 || !cols.is_multiple_of(QK_K) || values.len() != rows * cols {
            return None;
        }
        const ROWS_PER_TASK: usize = 16;
        let parts: Vec<Vec<u8>> = values
            .par_chunks(ROWS_PER_TASK * cols)
            .map(|chunk| {
                let t = candle_core::Tensor::from_slice(chunk, (chunk.len() / cols, cols), &candle_core::Device::Cpu).expect("a CPU tensor of a slice");
                let q = QTensor::quantize(&t, kind.ggml()).expect("whole super-blocks quantize");
                q.data().expect("CPU quantized data").into_owned()
            })
            .collect();
        Self::from_bytes(kind, rows, cols, parts.concat())
    }

    /// The super-blocks, row-major: what a GGUF tensor of this type holds.
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    fn row_bytes(&self) -> usize {
        self.cols / QK_K * self.kind.block_bytes()
    }

    /// The matrix of rows `order[0]`, `order[1]`, … of this one (each index < rows).
    pub fn select_rows(&self, order: &[usize]) -> Self {
        let rb = self.row_bytes();
        let mut bytes = Vec::with_capacity(order.len() * rb);
        for &r in order {
            bytes.extend_from_slice(&self.bytes[r * rb..(r + 1) * rb]);
        }
        Self { kind: self.kind, rows: order.len(), cols: self.cols, bytes: KBytes::Owned(bytes) }
    }

    /// This matrix with `below`'s rows after its own; None when kind or width differ.
    pub fn stack(self, below: &KMatrix) -> Option<Self> {
        if below.kind != self.kind || below.cols != self.cols {
            return None;
        }
        let mut bytes = self.bytes.into_owned();
        bytes.extend_from_slice(&below.bytes);
        Some(Self { kind: self.kind, rows: self.rows + below.rows, cols: self.cols, bytes: KBytes::Owned(bytes) })
    }

    /// The values in f32, row-major (the portable dequantization, for tests and exports).
    pub fn dequantize(&self) -> Vec<f32> {
        let mut out = vec![0f32; self.rows * self.cols];
        let bb = self.kind.block_bytes();
        out.par_chunks_mut(QK_K).zip(self.bytes.par_chunks(bb)).for_each(|(o, b)| {
            let o: &mut [f32; QK_K] = o.try_into().expect("a whole super-block");
            match self.kind {
                KQuant::Q4K => dequant_q4k(b, o),
                KQuant::Q6K => dequant_q6k(b, o),
            }
        });
        out
    }

    /// Rows `start .. start + out.len() / cols` in f32, into `out` (whole rows), with AVX2
    /// where the CPU has it: a panel for the f32 products over dequantized rows
    /// ([`crate::sgemm::matmul_dequantized`], QLoRA's input gradient), or embedding rows.
    pub fn dequantize_rows_into(&self, start: usize, out: &mut [f32]) {
        let rows = out.len() / self.cols;
        assert!(out.len() == rows * self.cols && start + rows <= self.rows, "k-quant dequantize: rows {start}..{} of {}", start + rows, self.rows);
        let rb = self.row_bytes();
        let bytes = &self.bytes[start * rb..(start + rows) * rb];
        let blocks = out.chunks_exact_mut(QK_K).zip(bytes.chunks_exact(self.kind.block_bytes()));
        #[cfg(target_arch = "x86_64")]
        if crate::fma_available() {
            for (o, b) in blocks {
                let o: &mut [f32; QK_K] = o.try_into().expect("a whole super-block");
                // SAFETY: the CPU has AVX2 and FMA (checked); b is one whole block of `kind`
                // (144 bytes for Q4_K, 210 for Q6_K).
                unsafe {
                    match self.kind {
                        KQuant::Q4K => dequant_q4k_avx2(b, o),
                        KQuant::Q6K => dequant_q6k_avx2(b, o),
                    }
                }
            }
            return;
        }
        for (o, b) in blocks {
            let o: &mut [f32; QK_K] = o.try_into().expect("a whole super-block");
            match self.kind {
                KQuant::Q4K => dequant_q4k(b, o),
                KQuant::Q6K => dequant_q6k(b, o),
            }
        }
    }

    /// `x·Wᵀ` for x (m × cols, row-major) into a new (m × rows) buffer, x rounded to 8 bits
    /// first (see [`Self::matmul_t_into`]).
    pub fn matmul_t(&self, x: &[f32], m: usize) -> Vec<f32> {
        let mut y = vec![0f32; m * self.rows];
        self.matmul_t_into(x, m, &mut y, self.rows, 0);
        y
    }

    /// `x·Wᵀ` into columns `col0 .. col0 + rows` of y (m × ld, row-major): the input rows
    /// rounded to 8 bits ([`Q8Act`]), then [`Self::matmul_q8_into`].
    pub fn matmul_t_into(&self, x: &[f32], m: usize, y: &mut [f32], ld: usize, col0: usize) {
        assert_eq!(x.len(), m * self.cols, "k-quant matmul: x has {} values, expected {m} × {}", x.len(), self.cols);
        self.matmul_q8_into(&Q8Act::quantize(x, m, self.cols), y, ld, col0);
    }

    /// `x̂·Wᵀ` for inputs already rounded to 8 bits (several matrices that read the same
    /// input round it once), into columns `col0 .. col0 + rows` of y (m × ld, row-major).
    /// Weight rows are split among the rayon threads; each is read once for all m inputs.
    pub fn matmul_q8_into(&self, x: &Q8Act, y: &mut [f32], ld: usize, col0: usize) {
        self.product(x, y, ld, col0, DotIsa::detect());
    }

    /// The product by one form of the integer dot product (tests compare them).
    fn product(&self, x: &Q8Act, y: &mut [f32], ld: usize, col0: usize, isa: DotIsa) {
        let (n, k, m) = (self.rows, self.cols, x.rows);
        assert_eq!(x.cols, k, "k-quant matmul: input width {} for weights of width {k}", x.cols);
        assert!(col0 + n <= ld && y.len() >= m * ld, "k-quant matmul: output too small");
        if m == 0 || n == 0 {
            return;
        }
        let rb = self.row_bytes();
        let prep = dot::Prepared::new(self.kind, x);
        // Output transposed (n × m) so that each task owns whole, disjoint chunks.
        let mut yt = vec![0f32; n * m];
        const ROWS_PER_TASK: usize = 16;
        yt.par_chunks_mut(ROWS_PER_TASK * m).enumerate().for_each(|(task, out)| {
            for (local, o) in out.chunks_mut(m).enumerate() {
                let row = task * ROWS_PER_TASK + local;
                let w = &self.bytes[row * rb..(row + 1) * rb];
                for (g, og) in o.chunks_mut(dot::GROUP).enumerate() {
                    dot::row_dots(self.kind, isa, w, x, &prep, g * dot::GROUP, og);
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

/// An f16 (IEEE binary16, as GGUF stores block scales) in f32.
#[inline]
pub fn f16_to_f32(h: u16) -> f32 {
    let sign = ((h as u32) & 0x8000) << 16;
    let exp = ((h >> 10) & 0x1f) as u32;
    let man = (h & 0x3ff) as u32;
    let bits = match (exp, man) {
        (0, 0) => sign,
        // subnormal: man · 2^-24, exact in f32
        (0, _) => {
            let v = man as f32 * (1.0 / 16_777_216.0);
            return if sign != 0 { -v } else { v };
        }
        (31, 0) => sign | 0x7f80_0000,
        (31, _) => sign | 0x7fc0_0000 | (man << 13),
        _ => sign | ((exp + 112) << 23) | (man << 13),
    };
    f32::from_bits(bits)
}

#[inline(always)]
fn half_at(b: &[u8], at: usize) -> f32 {
    f16_to_f32(u16::from_le_bytes([b[at], b[at + 1]]))
}

/// Scale and min of Q4_K sub-block j (see the module comment).
#[inline(always)]
fn scale_min(s: &[u8], j: usize) -> (u8, u8) {
    if j < 4 {
        (s[j] & 63, s[j + 4] & 63)
    } else {
        ((s[j + 4] & 15) | ((s[j - 4] >> 6) << 4), (s[j + 4] >> 4) | ((s[j] >> 6) << 4))
    }
}

/// One Q4_K super-block (144 bytes) into 256 values.
#[inline(always)]
fn dequant_q4k(b: &[u8], out: &mut [f32; QK_K]) {
    let (d, dmin) = (half_at(b, 0), half_at(b, 2));
    let (sc, qs) = (&b[4..16], &b[16..144]);
    for c in 0..4 {
        let (s0, m0) = scale_min(sc, 2 * c);
        let (s1, m1) = scale_min(sc, 2 * c + 1);
        let (d0, o0, d1, o1) = (d * s0 as f32, dmin * m0 as f32, d * s1 as f32, dmin * m1 as f32);
        let q = &qs[32 * c..32 * c + 32];
        let (lo, hi) = out[64 * c..64 * c + 64].split_at_mut(32);
        for l in 0..32 {
            lo[l] = d0 * (q[l] & 15) as f32 - o0;
            hi[l] = d1 * (q[l] >> 4) as f32 - o1;
        }
    }
}

/// One Q6_K super-block (210 bytes) into 256 values.
#[inline(always)]
fn dequant_q6k(b: &[u8], out: &mut [f32; QK_K]) {
    let d = half_at(b, 208);
    for h in 0..2 {
        let ql = &b[64 * h..64 * h + 64];
        let qh = &b[128 + 32 * h..128 + 32 * h + 32];
        let sc = &b[192 + 8 * h..192 + 8 * h + 8];
        let o = &mut out[128 * h..128 * h + 128];
        for l in 0..32 {
            let is = l / 16;
            let q1 = ((ql[l] & 15) | ((qh[l] & 3) << 4)) as i32 - 32;
            let q2 = ((ql[l + 32] & 15) | (((qh[l] >> 2) & 3) << 4)) as i32 - 32;
            let q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) as i32 - 32;
            let q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) as i32 - 32;
            o[l] = d * (sc[is] as i8) as f32 * q1 as f32;
            o[l + 32] = d * (sc[is + 2] as i8) as f32 * q2 as f32;
            o[l + 64] = d * (sc[is + 4] as i8) as f32 * q3 as f32;
            o[l + 96] = d * (sc[is + 6] as i8) as f32 * q4 as f32;
        }
    }
}

/// Ask for the cache lines of the `bytes` bytes 4 KiB past `p` (a later super-block of the
/// row, or of the task's next rows): decoding reads each weight from memory once, and, as
/// for the Q8_0 kernel, the hardware prefetcher alone left the product slower (Qwen2.5-0.5B
/// q4_k_m shape, 1 thread, Zen 4: decode 27.5–29.4 → 30.0–30.6 tokens/s). A prefetch never
/// faults, and `wrapping_add` makes no reference past the slice.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn prefetch_ahead(p: *const u8, bytes: usize) {
    use std::arch::x86_64::*;
    const AHEAD: usize = 4096;
    let mut at = 0;
    while at < bytes {
        // SAFETY: a prefetch is a hint; it reads nothing and never faults.
        unsafe { _mm_prefetch::<_MM_HINT_T0>(p.wrapping_add(AHEAD + at) as *const i8) };
        at += 64;
    }
}

/// The four groups of 32 six-bit Q6_K quants (0..64, not yet centred) of one half super-block
/// from its `ql` (two 32-byte loads) and `qh` bytes. Shifts are 16-bit wide, so every byte
/// is masked after its shift.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[inline]
fn q6k_quants(
    ql0: std::arch::x86_64::__m256i,
    ql1: std::arch::x86_64::__m256i,
    qh: std::arch::x86_64::__m256i,
    m4: std::arch::x86_64::__m256i,
) -> [std::arch::x86_64::__m256i; 4] {
    use std::arch::x86_64::*;
    [
        _mm256_or_si256(_mm256_and_si256(ql0, m4), _mm256_slli_epi16::<4>(_mm256_and_si256(qh, _mm256_set1_epi8(3)))),
        _mm256_or_si256(_mm256_and_si256(ql1, m4), _mm256_slli_epi16::<2>(_mm256_and_si256(qh, _mm256_set1_epi8(12)))),
        _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16::<4>(ql0), m4), _mm256_and_si256(qh, _mm256_set1_epi8(48))),
        _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16::<4>(ql1), m4), _mm256_and_si256(_mm256_srli_epi16::<2>(qh), _mm256_set1_epi8(48))),
    ]
}

/// 32 bytes (each a small integer, signed if `SIGNED`) as four 8-lane f32 vectors (callable
/// only where AVX2 is enabled).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[inline]
fn bytes_to_f32<const SIGNED: bool>(v: std::arch::x86_64::__m256i) -> [std::arch::x86_64::__m256; 4] {
    use std::arch::x86_64::*;
    let lo = _mm256_castsi256_si128(v);
    let hi = _mm256_extracti128_si256::<1>(v);
    [cvt8::<SIGNED>(lo), cvt8::<SIGNED>(_mm_srli_si128::<8>(lo)), cvt8::<SIGNED>(hi), cvt8::<SIGNED>(_mm_srli_si128::<8>(hi))]
}

/// The low 8 bytes of `h` as 8 f32.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[inline]
fn cvt8<const SIGNED: bool>(h: std::arch::x86_64::__m128i) -> std::arch::x86_64::__m256 {
    use std::arch::x86_64::*;
    if SIGNED {
        _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(h))
    } else {
        _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(h))
    }
}

/// [`dequant_q4k`] with AVX2 (`d·s·q − dmin·m` as one fused multiply-subtract).
///
/// # Safety
/// The CPU must have AVX2 and FMA; `b` must hold at least 144 bytes.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn dequant_q4k_avx2(b: &[u8], out: &mut [f32; QK_K]) {
    use std::arch::x86_64::*;
    debug_assert!(b.len() >= 144);
    let (d, dmin) = (half_at(b, 0), half_at(b, 2));
    let sc = &b[4..16];
    let mask = _mm256_set1_epi8(15);
    let op = out.as_mut_ptr();
    for c in 0..4 {
        // SAFETY: bytes 16 + 32c .. 48 + 32c lie inside the 144-byte block (c ≤ 3).
        let q = unsafe { _mm256_loadu_si256(b.as_ptr().add(16 + 32 * c) as *const __m256i) };
        let lo = _mm256_and_si256(q, mask);
        let hi = _mm256_and_si256(_mm256_srli_epi16::<4>(q), mask);
        for (half, nib) in [lo, hi].into_iter().enumerate() {
            let (s, m) = scale_min(sc, 2 * c + half);
            let (scale, off) = (_mm256_set1_ps(d * s as f32), _mm256_set1_ps(dmin * m as f32));
            for (i, v) in bytes_to_f32::<false>(nib).into_iter().enumerate() {
                // SAFETY: 64c + 32·half + 8i + 8 ≤ 256 = out's length.
                unsafe { _mm256_storeu_ps(op.add(64 * c + 32 * half + 8 * i), _mm256_fmsub_ps(v, scale, off)) };
            }
        }
    }
}

/// [`dequant_q6k`] with AVX2.
///
/// # Safety
/// The CPU must have AVX2 and FMA; `b` must hold at least 210 bytes.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn dequant_q6k_avx2(b: &[u8], out: &mut [f32; QK_K]) {
    use std::arch::x86_64::*;
    debug_assert!(b.len() >= 210);
    let d = half_at(b, 208);
    let m4 = _mm256_set1_epi8(15);
    let bias = _mm256_set1_epi8(32);
    let op = out.as_mut_ptr();
    for h in 0..2 {
        // SAFETY: ql reads bytes 64h .. 64h + 64 and qh bytes 128 + 32h .. 160 + 32h, all
        // below 192 < 210 (h ≤ 1).
        let (ql0, ql1, qh) = unsafe {
            let p = b.as_ptr();
            (
                _mm256_loadu_si256(p.add(64 * h) as *const __m256i),
                _mm256_loadu_si256(p.add(64 * h + 32) as *const __m256i),
                _mm256_loadu_si256(p.add(128 + 32 * h) as *const __m256i),
            )
        };
        let q = q6k_quants(ql0, ql1, qh, m4);
        for (i, qi) in q.into_iter().enumerate() {
            let v = bytes_to_f32::<true>(_mm256_sub_epi8(qi, bias));
            // values l = 0..16 of this group take scale 2i, l = 16..32 scale 2i + 1
            let s0 = _mm256_set1_ps(d * (b[192 + 8 * h + 2 * i] as i8) as f32);
            let s1 = _mm256_set1_ps(d * (b[192 + 8 * h + 2 * i + 1] as i8) as f32);
            let base = 128 * h + 32 * i;
            // SAFETY: base + 32 ≤ 256 = out's length (h ≤ 1, i ≤ 3).
            unsafe {
                _mm256_storeu_ps(op.add(base), _mm256_mul_ps(v[0], s0));
                _mm256_storeu_ps(op.add(base + 8), _mm256_mul_ps(v[1], s0));
                _mm256_storeu_ps(op.add(base + 16), _mm256_mul_ps(v[2], s1));
                _mm256_storeu_ps(op.add(base + 24), _mm256_mul_ps(v[3], s1));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::quantized::QTensor;
    use candle_core::{Device, Tensor};

    fn values(n: usize, seed: u64) -> Vec<f32> {
        crate::testutil::lcg_values(n, seed, |r| {
            // skewed values, so that the Q4_K mins are not all alike
            let u = (r % 2001) as f32 / 1000.0 - 1.0;
            u * u.abs() + 0.1 * u
        })
    }

    fn both_kinds() -> [KQuant; 2] {
        [KQuant::Q4K, KQuant::Q6K]
    }

    #[test]
    fn f16_conversion_matches_known_values() {
        assert_eq!(f16_to_f32(0x3c00), 1.0);
        assert_eq!(f16_to_f32(0xc000), -2.0);
        assert_eq!(f16_to_f32(0x0000), 0.0);
        assert_eq!(f16_to_f32(0x7bff), 65504.0);
        assert_eq!(f16_to_f32(0x0001), 2f32.powi(-24));
        assert_eq!(f16_to_f32(0x8001), -(2f32.powi(-24)));
        assert_eq!(f16_to_f32(0x0400), 2f32.powi(-14));
        assert_eq!(f16_to_f32(0x3555), 0.333_251_95);
        assert!(f16_to_f32(0x7c00).is_infinite() && f16_to_f32(0x7e00).is_nan());
    }

    #[test]
    fn dequantize_equals_candles_dequantization_of_the_same_bytes() {
        let (n, k) = (21, 512);
        for kind in both_kinds() {
            let w = values(n * k, 3);
            let t = Tensor::from_vec(w.clone(), (n, k), &Device::Cpu).unwrap();
            let q = QTensor::quantize(&t, kind.ggml()).unwrap();
            let bytes = q.data().unwrap().into_owned();
            let want = q.dequantize(&Device::Cpu).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
            let ours = KMatrix::from_bytes(kind, n, k, bytes.clone()).unwrap();
            assert_eq!(ours.dequantize(), want, "{kind:?}: bit-exact with candle");
            // our own quantize (rows split among threads) writes the same blocks
            let again = KMatrix::quantize(kind, &w, n, k).unwrap();
            assert_eq!(again.bytes(), &bytes[..], "{kind:?}: same blocks as one QTensor::quantize");
            // the same bytes used in place (a GGUF file's map, at any offset) are the same matrix
            let mut file = vec![9u8; 13];
            file.extend_from_slice(&bytes);
            let owner: std::sync::Arc<dyn AsRef<[u8]> + Send + Sync> = std::sync::Arc::new(file);
            let shared = KMatrix::from_shared(kind, n, k, owner.clone(), 13).unwrap();
            assert_eq!(shared.bytes(), &bytes[..]);
            let x = values(2 * k, 8);
            assert_eq!(shared.matmul_t(&x, 2), ours.matmul_t(&x, 2), "{kind:?}: in place");
            assert!(KMatrix::from_shared(kind, n, k, owner, 14).is_none(), "{kind:?}: past the end");
            // and the error is what 4 / 6 bits allow
            let max_err = w.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
            assert!(max_err < if kind == KQuant::Q4K { 0.15 } else { 0.04 }, "{kind:?}: error {max_err}");
        }
        assert!(KMatrix::from_bytes(KQuant::Q4K, 2, 300, vec![0; 288]).is_none());
        assert!(KMatrix::from_bytes(KQuant::Q4K, 2, 256, vec![0; 287]).is_none());
        assert!(KMatrix::quantize(KQuant::Q6K, &values(3 * 96, 1), 3, 96).is_none());
    }

    /// `Σ x̂·ŵ` in f64 (x̂: the rounded inputs, ŵ: the dequantized weights) and a tolerance
    /// for f32 sums of those terms.
    fn reference(x: &[f32], w: &[f32], k: usize, r: usize, j: usize) -> (f64, f64) {
        let terms = (0..k).map(|i| x[r * k + i] as f64 * w[j * k + i] as f64);
        (terms.clone().sum(), 1e-5 * (1.0 + terms.map(f64::abs).sum::<f64>()))
    }

    #[test]
    fn product_equals_the_dequantized_matrix_on_rounded_inputs_and_every_form_agrees() {
        let (n, k) = (37, 768);
        for kind in both_kinds() {
            let w = values(n * k, 5);
            let q = KMatrix::quantize(kind, &w, n, k).unwrap();
            let dq = q.dequantize();
            for m in [1, 3, 8, 9, 11] {
                let x = values(m * k, 7 + m as u64);
                let act = Q8Act::quantize(&x, m, k);
                let xr = act.dequantize();
                let y = q.matmul_t(&x, m);
                for r in 0..m {
                    for j in 0..n {
                        let (want, tol) = reference(&xr, &dq, k, r, j);
                        let got = y[r * n + j] as f64;
                        assert!((got - want).abs() < tol, "{kind:?} m={m} ({r},{j}): {got} vs {want}");
                    }
                }
                for isa in DotIsa::available() {
                    let mut yi = vec![0f32; m * n];
                    q.product(&act, &mut yi, n, 0, isa);
                    assert_eq!(yi, y, "{kind:?} {isa:?} m={m}: the same floats as the detected form");
                }
            }
        }
    }

    /// The largest quants against the largest inputs of both signs: no form saturates.
    #[test]
    fn extreme_quants_and_inputs_do_not_saturate() {
        let k = 512;
        let mut q4 = vec![0u8; 2 * 144];
        let mut q6 = vec![0u8; 2 * 210];
        for b in q4.chunks_exact_mut(144) {
            b[..4].copy_from_slice(&[0x00, 0x3c, 0x00, 0x38]); // d = 1, dmin = 0.5
            b[4..].fill(0xff); // scales and mins 63, quants 15
        }
        for (i, b) in q6.chunks_exact_mut(210).enumerate() {
            b[..192].fill(0xff); // quants 63
            b[192..208].fill(if i == 0 { 0x7f } else { 0x80 }); // scales 127, then -128
            b[208..].copy_from_slice(&[0x00, 0x3c]);
        }
        for (kind, bytes) in [(KQuant::Q4K, q4), (KQuant::Q6K, q6)] {
            let q = KMatrix::from_bytes(kind, 1, k, bytes).unwrap();
            let dq = q.dequantize();
            for sign in [1f32, -1.0] {
                let x: Vec<f32> = (0..k).map(|i| if i % 64 < 60 { sign } else { -sign }).collect();
                let act = Q8Act::quantize(&x, 1, k);
                let xr = act.dequantize();
                let (want, tol) = reference(&xr, &dq, k, 0, 0);
                for isa in DotIsa::available() {
                    let mut y = [0f32];
                    q.product(&act, &mut y, 1, 0, isa);
                    assert!((y[0] as f64 - want).abs() < tol, "{kind:?} {isa:?} sign {sign}: {} vs {want}", y[0]);
                }
            }
        }
    }

    /// `cargo test --release -p ferrolm-kernels --lib q4k::tests::speed -- --ignored --nocapture`:
    /// one decoding product (SmolLM2-135M's ffn_down, 576 × 1536) per format, 1 and 4 rows,
    /// by every form of the dot product this CPU has.
    #[test]
    #[ignore]
    fn speed() {
        let (n, k) = (576, 1536);
        let w = values(n * k, 1);
        let q8 = crate::q8::Q8Matrix::quantize(&w, n, k).unwrap();
        for m in [1, 4] {
            let x = values(m * k, 2);
            let act = Q8Act::quantize(&x, m, k);
            let time = |f: &dyn Fn() -> Vec<f32>| {
                let _ = f();
                let t = std::time::Instant::now();
                let reps = 2000;
                for _ in 0..reps {
                    std::hint::black_box(f());
                }
                t.elapsed().as_secs_f64() / reps as f64 * 1e6
            };
            let q8t = time(&|| {
                let mut y = vec![0f32; m * n];
                q8.matmul_q8_into(&act, &mut y, n, 0);
                y
            });
            let mut line = format!("m={m}: Q8_0 {q8t:.1} µs");
            for kind in both_kinds() {
                let q = KMatrix::quantize(kind, &w, n, k).unwrap();
                for isa in DotIsa::available() {
                    let t = time(&|| {
                        let mut y = vec![0f32; m * n];
                        q.product(&act, &mut y, n, 0, isa);
                        y
                    });
                    line += &format!(", {} {isa:?} {t:.1} µs", kind.name());
                }
            }
            eprintln!("{line}");
        }
        // a prompt's many rows: the integer products against f32 panels of the widened blocks
        let m = 128;
        let mut x = values(m * k, 3);
        crate::q8::round_activations(&mut x, k);
        let act = Q8Act::quantize(&x, m, k);
        for kind in both_kinds() {
            let q = KMatrix::quantize(kind, &w, n, k).unwrap();
            let time = |f: &dyn Fn()| {
                f();
                let t = std::time::Instant::now();
                for _ in 0..20 {
                    f();
                }
                t.elapsed().as_secs_f64() / 20.0 * 1e3
            };
            let int = time(&|| {
                let mut y = vec![0f32; m * n];
                q.matmul_q8_into(&act, &mut y, n, 0);
                std::hint::black_box(y);
            });
            let panels = time(&|| {
                let mut y = vec![0f32; m * n];
                crate::sgemm::matmul_t_dequantized(&x, m, k, n, &mut y, n, 0, &|first, out| q.dequantize_rows_into(first, out));
                std::hint::black_box(y);
            });
            eprintln!("m={m} {}: integer {int:.2} ms, f32 panels {panels:.2} ms", kind.name());
        }
    }

    #[test]
    fn rows_select_stack_and_land_in_their_columns() {
        let k = 256;
        let a = KMatrix::quantize(KQuant::Q4K, &values(4 * k, 11), 4, k).unwrap();
        let b = KMatrix::quantize(KQuant::Q4K, &values(3 * k, 12), 3, k).unwrap();
        let c = KMatrix::quantize(KQuant::Q6K, &values(3 * k, 12), 3, k).unwrap();
        assert!(a.clone().stack(&c).is_none());
        let ab = a.clone().stack(&b).unwrap();
        assert_eq!(ab.rows, 7);
        let (da, db, dab) = (a.dequantize(), b.dequantize(), ab.dequantize());
        assert_eq!(dab, [da.clone(), db].concat());
        let p = a.select_rows(&[2, 0, 3, 1]);
        let dp = p.dequantize();
        for (to, from) in [2, 0, 3, 1].into_iter().enumerate() {
            assert_eq!(dp[to * k..(to + 1) * k], da[from * k..(from + 1) * k]);
        }
        // into columns 2..9 of a 2 × 10 output
        let x = values(2 * k, 13);
        let mut y = vec![-1f32; 20];
        ab.matmul_t_into(&x, 2, &mut y, 10, 2);
        let full = ab.matmul_t(&x, 2);
        for r in 0..2 {
            assert_eq!(&y[r * 10..r * 10 + 2], &[-1.0, -1.0]);
            assert_eq!(&y[r * 10 + 2..r * 10 + 9], &full[r * 7..r * 7 + 7]);
            assert_eq!(y[r * 10 + 9], -1.0);
        }
    }
}
