//! k-quant rows times inputs rounded to 8 bits ([`Q8Act`]: blocks of 32 values, one f32
//! scale each) in integer dot products — what llama.cpp does for its k-quant products (on
//! inputs rounded to 256-value Q8_K blocks; ours are the finer Q8_0 blocks the Q8_0 kernel
//! already rounds to, so one rounded input serves every row block of a layer).
//!
//! Each 32-value sub-block of a super-block meets one input block: the weights' small
//! unsigned quants (Q4_K 0..16, Q6_K 0..64) and the input's signed ones go through
//! `vpdpbusd` (AVX-512 VNNI, AVX-VNNI) or `vpmaddubsw`+`vpmaddwd` (AVX2) into exact i32
//! sums; floats enter once per sub-block. Before, the quants were widened to f32 and
//! multiplied in f32: three times the instructions per weight for a product that reads
//! each weight once.
//!
//! - **Q4_K**: `Σ (d·s_j·q − dmin·m_j)·x` over sub-block j = `d·s_j·dx_j · Σ q·q_x −
//!   dmin·m_j · Σx_j`, with `Σx_j` = `dx_j · Σ q_x` of the rounded input.
//! - **Q6_K**: `Σ d·sc_g·(q − 32)·x`: each 16-value half's sum `Σ q·q_x − 32·Σ q_x` is
//!   multiplied by its signed scale, still in i32.
//!
//! All forms compute the same i32 sub-block sums and the same float operations in the same
//! order, so every form gives the same floats bit for bit (the tests compare them).

use super::{half_at, KQuant, QK_K};
use crate::q8::{DotIsa, Q8Act, BLOCK};

/// Input rows multiplied per pass over a weight row.
pub(super) const GROUP: usize = 8;

/// What the products need of each input row besides its blocks: Q4_K's rounded block sums
/// (`dx·Σq`, one per block) or Q6_K's offsets (`−32·Σq` over each 16-value half of a block:
/// for each super-block, the eight first halves' then the eight second halves').
pub(super) enum Prepared {
    Sums(Vec<f32>),
    Offsets(Vec<i32>),
}

impl Prepared {
    pub(super) fn new(kind: KQuant, x: &Q8Act) -> Self {
        match kind {
            KQuant::Q4K => Self::Sums(
                x.quants.chunks_exact(BLOCK).zip(&x.scales).map(|(q, &d)| d * q.iter().map(|&v| v as i32).sum::<i32>() as f32).collect(),
            ),
            KQuant::Q6K => Self::Offsets(
                x.quants
                    .chunks_exact(QK_K)
                    .flat_map(|s| {
                        let half = move |h: usize| (0..8).map(move |j| -32 * s[32 * j + 16 * h..32 * j + 16 * h + 16].iter().map(|&v| v as i32).sum::<i32>());
                        half(0).chain(half(1))
                    })
                    .collect(),
            ),
        }
    }
}

/// `out[r] = Σ_i w_i · x̂[first + r][i]` for one weight row `w` (k / 256 super-blocks of
/// `kind`) and input rows `first .. first + out.len()` (≤ [`GROUP`]) of x, x̂ being the
/// values x's blocks stand for.
pub(super) fn row_dots(kind: KQuant, isa: DotIsa, w: &[u8], x: &Q8Act, prep: &Prepared, first: usize, out: &mut [f32]) {
    let k = x.cols;
    assert!(
        out.len() <= GROUP && first + out.len() <= x.rows && k.is_multiple_of(QK_K) && w.len() == k / QK_K * kind.block_bytes(),
        "k-quant product: {} bytes of weights for inputs of width {k}",
        w.len()
    );
    match (kind, prep) {
        (KQuant::Q4K, Prepared::Sums(s)) => assert_eq!(s.len(), x.rows * k / BLOCK, "k-quant product: block sums"),
        (KQuant::Q6K, Prepared::Offsets(o)) => assert_eq!(o.len(), x.rows * k / 16, "k-quant product: offsets"),
        _ => panic!("k-quant product: inputs prepared for the other format"),
    }
    #[cfg(target_arch = "x86_64")]
    {
        // Each form runs only where `DotIsa::detect` found its features (the caller passes a
        // detected or `available()` form); w, x, prep and out were checked above, and the
        // functions read only the super-blocks of w, the rows first .. first + out.len() of
        // x and prep, and write out.
        match isa {
            // SAFETY: as above; AVX-512 VNNI (with AVX2, FMA) was detected.
            DotIsa::Avx512Vnni => return unsafe { row_dots_avx512vnni(kind, w, x, prep, first, out) },
            // SAFETY: as above; AVX-VNNI (with AVX2, FMA) was detected.
            DotIsa::AvxVnni => return unsafe { row_dots_avxvnni(kind, w, x, prep, first, out) },
            // SAFETY: as above; AVX2 and FMA were detected.
            DotIsa::Avx2 => return unsafe { row_dots_avx2(kind, w, x, prep, first, out) },
            DotIsa::Portable => {}
        }
    }
    let _ = isa;
    row_dots_portable(kind, w, x, prep, first, out);
}

/// The eight lanes' sum, lane 0 first: every form ends with this.
#[inline(always)]
fn lane_sum(lanes: &[f32; 8]) -> f32 {
    lanes.iter().fold(0f32, |a, &v| a + v)
}

/// The eight 6-bit scales and eight 6-bit mins of a Q4_K super-block (its 12 scale bytes),
/// four at a time in 32-bit words: scales 0–3 and mins 0–3 are the low 6 bits of words 0 and
/// 1; scales 4–7 the low nibbles of word 2 under the top 2 bits of word 0's bytes, mins 4–7
/// its high nibbles under word 1's top bits (the layout [`scale_min`] reads one at a time).
#[inline(always)]
fn q4k_scales_mins(sc: &[u8]) -> ([u8; 8], [u8; 8]) {
    const LOW6: u32 = 0x3f3f_3f3f;
    const LOW4: u32 = 0x0f0f_0f0f;
    const LOW2: u32 = 0x0303_0303;
    let word = |i: usize| u32::from_le_bytes([sc[4 * i], sc[4 * i + 1], sc[4 * i + 2], sc[4 * i + 3]]);
    let (w0, w1, w2) = (word(0), word(1), word(2));
    let scales = (w0 & LOW6) as u64 | (((w2 & LOW4) | (((w0 >> 6) & LOW2) << 4)) as u64) << 32;
    let mins = (w1 & LOW6) as u64 | ((((w2 >> 4) & LOW4) | (((w1 >> 6) & LOW2) << 4)) as u64) << 32;
    (scales.to_le_bytes(), mins.to_le_bytes())
}

fn row_dots_portable(kind: KQuant, w: &[u8], x: &Q8Act, prep: &Prepared, first: usize, out: &mut [f32]) {
    let (k, nb) = (x.cols, x.cols / BLOCK);
    let bb = kind.block_bytes();
    for (r, o) in out.iter_mut().enumerate() {
        let row = first + r;
        let (xq, xd) = (&x.quants[row * k..(row + 1) * k], &x.scales[row * nb..(row + 1) * nb]);
        let (mut acc, mut mins) = ([0f32; 8], [0f32; 8]);
        for (sb, b) in w.chunks_exact(bb).enumerate() {
            let xq = &xq[sb * QK_K..(sb + 1) * QK_K];
            match (kind, prep) {
                (KQuant::Q4K, Prepared::Sums(sums)) => {
                    let (d, dmin) = (half_at(b, 0), half_at(b, 2));
                    let (s, m) = q4k_scales_mins(&b[4..16]);
                    for j in 0..8 {
                        let (c, shift) = (j / 2, 4 * (j % 2));
                        let t: i32 = (0..32).map(|l| ((b[16 + 32 * c + l] >> shift) & 15) as i32 * xq[32 * j + l] as i32).sum();
                        let f = (d * s[j] as f32) * xd[sb * 8 + j];
                        acc[j] = (t as f32).mul_add(f, acc[j]);
                        mins[j] = (dmin * m[j] as f32).mul_add(sums[row * nb + sb * 8 + j], mins[j]);
                    }
                }
                (KQuant::Q6K, Prepared::Offsets(_)) => {
                    let d = half_at(b, 208);
                    for j in 0..8 {
                        let (h, i) = (j / 4, j % 4);
                        let (ql, qh) = (&b[64 * h + 32 * (i % 2)..], &b[128 + 32 * h..]);
                        let t: i32 = (0..32)
                            .map(|l| {
                                let q = ((ql[l] >> (4 * (i / 2))) & 15) | (((qh[l] >> (2 * i)) & 3) << 4);
                                let scale = b[192 + 8 * h + 2 * i + l / 16] as i8 as i32;
                                scale * (q as i32 - 32) * xq[32 * j + l] as i32
                            })
                            .sum();
                        acc[j] = (t as f32).mul_add(d * xd[sb * 8 + j], acc[j]);
                    }
                }
                _ => unreachable!("checked by row_dots"),
            }
        }
        *o = lane_sum(&acc) - lane_sum(&mins);
    }
}

/// Eight vectors of eight i32 lanes into two vectors: lane j of the first holds the sum of
/// vector j's lanes 0–3, of the second the sum of its lanes 4–7.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn reduce8_halves(v: [std::arch::x86_64::__m256i; 8]) -> (std::arch::x86_64::__m256i, std::arch::x86_64::__m256i) {
    use std::arch::x86_64::*;
    // SAFETY: AVX2 is enabled in every function this is inlined into (the x86 forms).
    unsafe {
        // per 128-bit half: [v0, v1, v2, v3] sums of that half's four lanes
        let a = _mm256_hadd_epi32(_mm256_hadd_epi32(v[0], v[1]), _mm256_hadd_epi32(v[2], v[3]));
        let b = _mm256_hadd_epi32(_mm256_hadd_epi32(v[4], v[5]), _mm256_hadd_epi32(v[6], v[7]));
        (_mm256_permute2x128_si256::<0x20>(a, b), _mm256_permute2x128_si256::<0x31>(a, b))
    }
}

/// Eight vectors of eight i32 lanes into one vector of their eight sums, vector j's in lane j.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn reduce8(v: [std::arch::x86_64::__m256i; 8]) -> std::arch::x86_64::__m256i {
    let (lo, hi) = reduce8_halves(v);
    // SAFETY: AVX2 is enabled in every function this is inlined into (the x86 forms).
    unsafe { std::arch::x86_64::_mm256_add_epi32(lo, hi) }
}

/// Eight small unsigned integers as eight f32 lanes.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn widen8(v: &[u8; 8]) -> std::arch::x86_64::__m256 {
    use std::arch::x86_64::*;
    // SAFETY: v holds the 8 bytes the load reads; AVX2 is enabled in every function this
    // is inlined into (the x86 forms).
    unsafe { _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_loadl_epi64(v.as_ptr() as *const __m128i))) }
}

/// The SIMD body shared by the x86 forms; `dot(u, s)` sums the products of 32 unsigned bytes
/// `u` and 32 signed bytes `s` four by four into eight i32 lanes (the only difference
/// between the forms, as `dot32` is in the Q8_0 kernel).
///
/// # Safety
/// AVX2 and FMA must be enabled in the caller (it is inlined there); the arguments as
/// [`row_dots`] checks them.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn row_dots_x86(
    kind: KQuant,
    w: &[u8],
    x: &Q8Act,
    prep: &Prepared,
    first: usize,
    out: &mut [f32],
    dot: impl Fn(std::arch::x86_64::__m256i, std::arch::x86_64::__m256i) -> std::arch::x86_64::__m256i,
) {
    use std::arch::x86_64::*;
    let (k, nb) = (x.cols, x.cols / BLOCK);
    let m = out.len();
    // SAFETY: AVX2 is enabled in the caller (this function's contract).
    let (mut acc, mut mins, zero, m4) = unsafe { ([_mm256_setzero_ps(); GROUP], [_mm256_setzero_ps(); GROUP], _mm256_setzero_si256(), _mm256_set1_epi8(15)) };
    let xq = x.quants.as_ptr().wrapping_add(first * k);
    let xd = x.scales.as_ptr().wrapping_add(first * nb);
    let bb = kind.block_bytes();
    // SAFETY: for every load below — w holds k / 256 whole super-blocks of bb bytes, so the
    // loads at b + 16 + 32c (c ≤ 3, Q4_K: ≤ 144) and b + 64h (+ 32), b + 128 + 32h, b + 192
    // + 8h (h ≤ 1, Q6_K: ≤ 210) stay inside super-block sb; rows first .. first + m of x hold
    // k quants and k / 32 scales each, and prep nb sums or k / 16 offsets per row, so the
    // loads at row r < m, super-block sb < k / 256 (32 bytes at 256·sb + 32j, 8 floats at
    // 8·sb, 8 i32 at 16·sb and 16·sb + 8) stay inside them; lanes holds the 8 f32 a store
    // writes.
    unsafe {
        match (kind, prep) {
            (KQuant::Q4K, Prepared::Sums(sums)) => {
                let sums = sums.as_ptr().add(first * nb);
                for (sb, b) in w.chunks_exact(bb).enumerate() {
                    super::prefetch_ahead(b.as_ptr(), bb);
                    let (d, dmin) = (half_at(b, 0), half_at(b, 2));
                    let (s, mn) = q4k_scales_mins(&b[4..16]);
                    let ds = _mm256_mul_ps(_mm256_set1_ps(d), widen8(&s));
                    let dm = _mm256_mul_ps(_mm256_set1_ps(dmin), widen8(&mn));
                    let mut qv = [zero; 8];
                    for c in 0..4 {
                        let q = _mm256_loadu_si256(b.as_ptr().add(16 + 32 * c) as *const __m256i);
                        qv[2 * c] = _mm256_and_si256(q, m4);
                        qv[2 * c + 1] = _mm256_and_si256(_mm256_srli_epi16::<4>(q), m4);
                    }
                    for r in 0..m {
                        let xb = xq.add(r * k + sb * QK_K);
                        let mut v = [zero; 8];
                        for j in 0..8 {
                            v[j] = dot(qv[j], _mm256_loadu_si256(xb.add(32 * j) as *const __m256i));
                        }
                        let f = _mm256_mul_ps(ds, _mm256_loadu_ps(xd.add(r * nb + sb * 8)));
                        acc[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(reduce8(v)), f, acc[r]);
                        mins[r] = _mm256_fmadd_ps(dm, _mm256_loadu_ps(sums.add(r * nb + sb * 8)), mins[r]);
                    }
                }
            }
            (KQuant::Q6K, Prepared::Offsets(offsets)) => {
                let offsets = offsets.as_ptr().add(first * k / 16);
                // the 16 scales' even ones (the first 16 values of each 32-value block) and odd ones
                let even = _mm_setr_epi8(0, 2, 4, 6, 8, 10, 12, 14, -1, -1, -1, -1, -1, -1, -1, -1);
                let odd = _mm_setr_epi8(1, 3, 5, 7, 9, 11, 13, 15, -1, -1, -1, -1, -1, -1, -1, -1);
                for (sb, b) in w.chunks_exact(bb).enumerate() {
                    super::prefetch_ahead(b.as_ptr(), bb);
                    let p = b.as_ptr();
                    let fd = _mm256_set1_ps(half_at(b, 208));
                    let scales = _mm_loadu_si128(p.add(192) as *const __m128i);
                    let (s_first, s_second) = (_mm256_cvtepi8_epi32(_mm_shuffle_epi8(scales, even)), _mm256_cvtepi8_epi32(_mm_shuffle_epi8(scales, odd)));
                    let mut qv = [zero; 8];
                    for h in 0..2 {
                        let q = super::q6k_quants(
                            _mm256_loadu_si256(p.add(64 * h) as *const __m256i),
                            _mm256_loadu_si256(p.add(64 * h + 32) as *const __m256i),
                            _mm256_loadu_si256(p.add(128 + 32 * h) as *const __m256i),
                            m4,
                        );
                        qv[4 * h..4 * h + 4].copy_from_slice(&q);
                    }
                    for (r, a) in acc.iter_mut().enumerate().take(m) {
                        let xb = xq.add(r * k + sb * QK_K);
                        let ob = offsets.add(r * k / 16 + sb * 16);
                        let mut v = [zero; 8];
                        for j in 0..8 {
                            v[j] = dot(qv[j], _mm256_loadu_si256(xb.add(32 * j) as *const __m256i));
                        }
                        // each block's two 16-value halves less their offsets, times their
                        // scales, in i32
                        let (first16, second16) = reduce8_halves(v);
                        let first16 = _mm256_add_epi32(first16, _mm256_loadu_si256(ob as *const __m256i));
                        let second16 = _mm256_add_epi32(second16, _mm256_loadu_si256(ob.add(8) as *const __m256i));
                        let t = _mm256_add_epi32(_mm256_mullo_epi32(first16, s_first), _mm256_mullo_epi32(second16, s_second));
                        let f = _mm256_mul_ps(fd, _mm256_loadu_ps(xd.add(r * nb + sb * 8)));
                        *a = _mm256_fmadd_ps(_mm256_cvtepi32_ps(t), f, *a);
                    }
                }
            }
            _ => unreachable!("checked by row_dots"),
        }
        for (r, o) in out.iter_mut().enumerate() {
            let (mut a, mut n) = ([0f32; 8], [0f32; 8]);
            _mm256_storeu_ps(a.as_mut_ptr(), acc[r]);
            _mm256_storeu_ps(n.as_mut_ptr(), mins[r]);
            *o = lane_sum(&a) - lane_sum(&n);
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma")]
unsafe fn row_dots_avx512vnni(kind: KQuant, w: &[u8], x: &Q8Act, prep: &Prepared, first: usize, out: &mut [f32]) {
    use std::arch::x86_64::*;
    // SAFETY: the caller checked the features this function is compiled for.
    unsafe { row_dots_x86(kind, w, x, prep, first, out, |u, s| _mm256_dpbusd_epi32(_mm256_setzero_si256(), u, s)) }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avxvnni,avx2,fma")]
unsafe fn row_dots_avxvnni(kind: KQuant, w: &[u8], x: &Q8Act, prep: &Prepared, first: usize, out: &mut [f32]) {
    use std::arch::x86_64::*;
    // SAFETY: the caller checked the features this function is compiled for.
    unsafe { row_dots_x86(kind, w, x, prep, first, out, |u, s| _mm256_dpbusd_avx_epi32(_mm256_setzero_si256(), u, s)) }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn row_dots_avx2(kind: KQuant, w: &[u8], x: &Q8Act, prep: &Prepared, first: usize, out: &mut [f32]) {
    use std::arch::x86_64::*;
    // Pairs of u·s are at most 2·63·127 = 16002: `vpmaddubsw` never saturates.
    // SAFETY: the caller checked the features this function is compiled for.
    unsafe { row_dots_x86(kind, w, x, prep, first, out, |u, s| _mm256_madd_epi16(_mm256_maddubs_epi16(u, s), _mm256_set1_epi16(1))) }
}

#[cfg(test)]
mod tests {
    #[test]
    fn scales_and_mins_unpack_as_one_at_a_time() {
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        for _ in 0..1000 {
            let sc: Vec<u8> = (0..12)
                .map(|_| {
                    state = state.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
                    (state >> 56) as u8
                })
                .collect();
            let (s, m) = super::q4k_scales_mins(&sc);
            for j in 0..8 {
                assert_eq!((s[j], m[j]), super::super::scale_min(&sc, j), "{sc:?} sub-block {j}");
            }
        }
    }
}
