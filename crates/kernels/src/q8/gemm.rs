//! Many-row products on Q8_0 weights (a prompt pass) as 8-bit integer products in tiles.
//!
//! Decoding multiplies each weight row with one or a few input rows ([`super::rows_dot`]);
//! a prompt has hundreds, and widening panels of weights to f32 for an f32 product (what
//! [`crate::sgemm::matmul_t_dequantized`] does) spends eight multiply-add lanes on what one
//! `vpdpbusd` lane does in 4 bytes: on a Zen 4 core the f32 product of a SmolLM2-135M prompt
//! was 70 % of the pass. Here the weights are repacked per panel so that one 512-bit register
//! holds 4 consecutive bytes of 16 weight rows, and 4 bytes of an input row, broadcast, meet
//! them in one `vpdpbusd`: 16 output columns × 4 products per instruction, eight
//! instructions per 32-value block. The block's integer sums are exact; floats enter once
//! per block, `acc = fma(Σ q_w·q_x, d_w·d_x, acc)` block after block, the operations and the
//! order of decoding's product ([`super::rows_dot`]): a prompt pass and decoding give the
//! same floats, bit for bit.
//!
//! `vpdpbusd` multiplies unsigned by signed bytes: the inputs are offset to `q_x + 128`
//! (1..=255), and each weight block's `128 · Σ q_w`, computed while repacking, is the
//! integer sum's starting value with its sign turned, so the sum is `Σ q_w·q_x` exactly.

use super::{Q8Act, Q8Matrix, BLOCK};
use crate::SendPtr;
use rayon::prelude::*;

/// Weight rows a register holds (4 bytes of each in 512 bits).
const GROUP: usize = 16;
/// Input rows a tile multiplies at once.
const TILE_ROWS: usize = 4;
/// Weight groups a tile multiplies at once (32 output columns).
const TILE_GROUPS: usize = 2;
/// Bytes of one group's block: 8 steps of 4 bytes for each of 16 rows.
const GROUP_BLOCK: usize = GROUP * BLOCK;

/// Whether this CPU runs the tiles (AVX-512 with VNNI and BW); otherwise callers multiply
/// as before (f32 panels).
pub fn available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::is_x86_feature_detected as has;
        has!("avx512f") && has!("avx512bw") && has!("avx512vnni")
    }
    #[cfg(not(target_arch = "x86_64"))]
    false
}

/// Weight rows `first .. first + count` of a [`Q8Matrix`] in the tiles' layout: for group g
/// (rows first + 16g ..) and block b, `quants` holds 8 steps of 64 bytes, step t holding
/// bytes 4t .. 4t + 4 of the block for each of the 16 rows; `scales` the 16 rows' block
/// scales; `starts` the 16 rows' −128·Σq of the block. Rows past the end are zeros.
#[derive(Default)]
struct Panel {
    quants: Vec<i8>,
    scales: Vec<f32>,
    starts: Vec<i32>,
}

impl Panel {
    /// Repack rows `first .. first + count` of w (the CPU has AVX-512 F/BW/VNNI).
    fn fill(&mut self, w: &Q8Matrix, first: usize, count: usize) {
        let bpr = w.cols / BLOCK;
        let groups = count.div_ceil(GROUP);
        self.quants.resize(groups * bpr * GROUP_BLOCK, 0);
        self.scales.resize(groups * bpr * GROUP, 0.0);
        self.starts.resize(groups * bpr * GROUP, 0);
        #[cfg(target_arch = "x86_64")]
        // SAFETY: the caller runs this only where `available` holds; the buffers were just
        // sized for `groups` groups of bpr blocks, and rows first .. first + count of w exist
        // (the caller's panel lies inside w).
        unsafe {
            self.fill_avx512(w, first, count)
        }
    }

    /// Each group's block is a 16 × 8 transpose of 4-byte words: rows r and r + 8 share a
    /// register (lower and upper half), and the two 8 × 8 transposes run side by side in
    /// three rounds of shuffles (gathers took half as long as the products on a Zen 4).
    /// Rows past the end read as zeros. The rows' sums come from `vpdpbusd` against ones.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    unsafe fn fill_avx512(&mut self, w: &Q8Matrix, first: usize, count: usize) {
        use std::arch::x86_64::*;
        let (k, bpr) = (w.cols, w.cols / BLOCK);
        assert!((first + count) * k <= w.quants.len());
        let zeros = [0i8; BLOCK];
        let low = _mm512_setr_epi64(0, 1, 8, 9, 4, 5, 12, 13);
        let high = _mm512_setr_epi64(2, 3, 10, 11, 6, 7, 14, 15);
        for g in 0..count.div_ceil(GROUP) {
            let rows = (count - g * GROUP).min(GROUP);
            let row_ptr = |r: usize| {
                if r < rows {
                    w.quants[(first + g * GROUP + r) * k..].as_ptr()
                } else {
                    zeros.as_ptr()
                }
            };
            let ptrs: [*const i8; GROUP] = std::array::from_fn(row_ptr);
            let step = |r: usize| if r < rows { BLOCK } else { 0 };
            let steps: [usize; GROUP] = std::array::from_fn(step);
            // The next group's rows, 16·k bytes in one piece, are asked for while this one is
            // transposed: read 16 rows at a time, the block-by-block order is 16 streams,
            // which a core's prefetcher follows poorly.
            let next = w
                .quants
                .as_ptr()
                .wrapping_add((first + (g + 1) * GROUP) * k);
            let next_end = w.quants.as_ptr().wrapping_add((first + count) * k);
            for b in 0..bpr {
                let at = g * bpr + b;
                for line in 0..GROUP * BLOCK / 64 {
                    let p = next.wrapping_add(b * GROUP * BLOCK + line * 64);
                    if p < next_end {
                        _mm_prefetch::<_MM_HINT_T0>(p);
                    }
                }
                // SAFETY: row pointers address whole rows of w (k bytes, block b inside) or
                // the 32 zeros (step 0); the stores write this group's block inside the
                // buffers `fill` sized.
                unsafe {
                    let z: [__m512i; 8] = std::array::from_fn(|j| {
                        let lo = _mm256_loadu_si256(ptrs[j].add(b * steps[j]) as *const __m256i);
                        let hi =
                            _mm256_loadu_si256(ptrs[j + 8].add(b * steps[j + 8]) as *const __m256i);
                        _mm512_inserti64x4::<1>(_mm512_castsi256_si512(lo), hi)
                    });
                    let t: [__m512i; 8] = std::array::from_fn(|i| {
                        let (a, c) = (z[2 * (i / 2)], z[2 * (i / 2) + 1]);
                        if i % 2 == 0 {
                            _mm512_unpacklo_epi32(a, c)
                        } else {
                            _mm512_unpackhi_epi32(a, c)
                        }
                    });
                    // u[x] (x < 4: rows 0–3 of each half, x ≥ 4: rows 4–7) holds steps x and
                    // x + 4 in its 128-bit lanes
                    let u: [__m512i; 8] = std::array::from_fn(|i| {
                        let (quad, x) = (i / 4, i % 4);
                        let (a, c) = (t[4 * quad + x / 2], t[4 * quad + 2 + x / 2]);
                        if x % 2 == 0 {
                            _mm512_unpacklo_epi64(a, c)
                        } else {
                            _mm512_unpackhi_epi64(a, c)
                        }
                    });
                    let mut sum = _mm512_setzero_si512();
                    for step in 0..BLOCK / 4 {
                        let (x, idx) = (step % 4, if step < 4 { low } else { high });
                        let o = _mm512_permutex2var_epi64(u[x], idx, u[x + 4]);
                        _mm512_storeu_si512(
                            self.quants
                                .as_mut_ptr()
                                .add(at * GROUP_BLOCK + step * 4 * GROUP)
                                as *mut _,
                            o,
                        );
                        sum = _mm512_dpbusd_epi32(sum, _mm512_set1_epi8(1), o);
                    }
                    _mm512_storeu_si512(
                        self.starts.as_mut_ptr().add(at * GROUP) as *mut _,
                        _mm512_mullo_epi32(sum, _mm512_set1_epi32(-128)),
                    );
                }
                for r in 0..GROUP {
                    self.scales[at * GROUP + r] = if r < rows {
                        w.scales[(first + g * GROUP + r) * bpr + b]
                    } else {
                        0.0
                    };
                }
            }
        }
    }
}

thread_local! {
    /// A thread's repacked panel (reused across products).
    static PANEL: std::cell::RefCell<Panel> = std::cell::RefCell::new(Panel::default());
}

/// Rows per panel: a multiple of a tile's 32 columns, about 256 KiB of weights, and at
/// least four panels per thread where the matrix allows.
fn panel_rows(n: usize, k: usize, threads: usize) -> usize {
    let step = GROUP * TILE_GROUPS;
    let by_cache = (262_144 / k.max(1)).clamp(step, 512);
    let by_threads = n.div_ceil(4 * threads.max(1));
    by_cache.min(by_threads).next_multiple_of(step).max(step)
}

/// `x·Wᵀ` into columns `col0 .. col0 + w.rows` of y (x.rows × ld, row-major) on the tiles.
/// False (y untouched) when the CPU lacks them ([`available`]).
pub fn matmul_q8_tiles_into(
    w: &Q8Matrix,
    x: &Q8Act,
    y: &mut [f32],
    ld: usize,
    col0: usize,
) -> bool {
    assert_eq!(
        x.cols, w.cols,
        "q8 matmul: input width {} for weights of width {}",
        x.cols, w.cols
    );
    assert!(
        col0 + w.rows <= ld && y.len() >= x.rows * ld,
        "q8 matmul: output too small"
    );
    if !available() {
        return false;
    }
    let (m, n, k) = (x.rows, w.rows, w.cols);
    if m == 0 || n == 0 {
        return true;
    }
    // The inputs offset to unsigned bytes: q + 128 is q's bits with the top one flipped.
    let xu: Vec<u8> = x.quants.iter().map(|&q| q as u8 ^ 0x80).collect();
    let rows = panel_rows(n, k, rayon::current_num_threads());
    let dst = SendPtr::new(y.as_mut_ptr());
    (0..n.div_ceil(rows)).into_par_iter().for_each(|p| {
        let (first, count) = (p * rows, rows.min(n - p * rows));
        PANEL.with(|panel| {
            let mut panel = panel.borrow_mut();
            panel.fill(w, first, count);
            // SAFETY: the CPU has AVX-512 F/BW/VNNI (`available` above); the panel holds
            // count.div_ceil(16) groups of k / 32 blocks, xu and x.scales m rows of k bytes and
            // k / 32 scales; dst + col0 + first with row stride ld addresses the m × count
            // block of y at columns col0 + first .. col0 + first + count ≤ col0 + n ≤ ld
            // (asserted), disjoint from every other panel's block.
            #[cfg(target_arch = "x86_64")]
            unsafe {
                panel_product(
                    &panel,
                    &xu,
                    &x.scales,
                    m,
                    k,
                    count,
                    SendPtr::new(dst.get().add(col0 + first)),
                    ld,
                )
            };
        });
    });
    true
}

/// Every tile of one panel: pairs of groups (32 columns) outer, so that their weights stay
/// in the nearest cache while the input rows stream past four at a time.
#[cfg(target_arch = "x86_64")]
#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
unsafe fn panel_product(
    panel: &Panel,
    xu: &[u8],
    xs: &[f32],
    m: usize,
    k: usize,
    count: usize,
    y: SendPtr<f32>,
    ld: usize,
) {
    let bpr = k / BLOCK;
    let groups = count.div_ceil(GROUP);
    let mut g0 = 0;
    while g0 < groups {
        let g = TILE_GROUPS.min(groups - g0);
        // Columns of the last group that exist (the rest are the panel's zero rows).
        let last_cols = (count - (g0 + g - 1) * GROUP).min(GROUP);
        let mut r0 = 0;
        while r0 < m {
            let r = TILE_ROWS.min(m - r0);
            let t = Tile {
                panel,
                xu,
                xs,
                k,
                bpr,
                r0,
                g0,
                last_cols,
                y,
                ld,
            };
            // SAFETY: as the caller guarantees for the whole panel; r0 + r ≤ m, g0 + g ≤ groups.
            unsafe {
                match (r, g) {
                    (4, 2) => t.run::<4, 2>(),
                    (3, 2) => t.run::<3, 2>(),
                    (2, 2) => t.run::<2, 2>(),
                    (1, 2) => t.run::<1, 2>(),
                    (4, _) => t.run::<4, 1>(),
                    (3, _) => t.run::<3, 1>(),
                    (2, _) => t.run::<2, 1>(),
                    _ => t.run::<1, 1>(),
                }
            }
            r0 += r;
        }
        g0 += g;
    }
}

/// One tile's operands: input rows r0 .., groups g0 .. of the panel.
#[cfg(target_arch = "x86_64")]
struct Tile<'a> {
    panel: &'a Panel,
    xu: &'a [u8],
    xs: &'a [f32],
    k: usize,
    bpr: usize,
    r0: usize,
    g0: usize,
    /// Output columns the tile's last group writes (1..=16).
    last_cols: usize,
    y: SendPtr<f32>,
    ld: usize,
}

#[cfg(target_arch = "x86_64")]
impl Tile<'_> {
    /// The R × (16·G) outputs: for each block, the integer sums of 8 steps of `vpdpbusd`
    /// from the block's starting values, then one multiply-add by `d_w · d_x` in f32.
    ///
    /// SAFETY (caller): AVX-512 F/BW/VNNI present; rows r0 .. r0 + R of xu / xs and groups
    /// g0 .. g0 + G of the panel exist; y + row·ld + 16·group .. (+ last_cols for the last
    /// group) is writable for those rows.
    #[inline(always)]
    unsafe fn run<const R: usize, const G: usize>(&self) {
        use std::arch::x86_64::*;
        let (k, bpr) = (self.k, self.bpr);
        let (pq, ps, pst) = (
            self.panel.quants.as_ptr(),
            self.panel.scales.as_ptr(),
            self.panel.starts.as_ptr(),
        );
        // SAFETY: every pointer below stays inside the panel's, xu's and xs's buffers as the
        // caller guarantees (group g0 + g < groups, block b < bpr, step t < 8, row r0 + r < m).
        unsafe {
            let mut acc = [[_mm512_setzero_ps(); G]; R];
            for b in 0..bpr {
                let mut sums = [[_mm512_setzero_si512(); G]; R];
                for g in 0..G {
                    let start =
                        _mm512_loadu_si512(pst.add(((self.g0 + g) * bpr + b) * GROUP) as *const _);
                    for s in sums.iter_mut() {
                        s[g] = start;
                    }
                }
                for t in 0..BLOCK / 4 {
                    let mut wv = [_mm512_setzero_si512(); G];
                    for (g, v) in wv.iter_mut().enumerate() {
                        *v = _mm512_loadu_si512(
                            pq.add(((self.g0 + g) * bpr + b) * GROUP_BLOCK + t * 4 * GROUP)
                                as *const _,
                        );
                    }
                    for (r, s) in sums.iter_mut().enumerate() {
                        let xb = _mm512_set1_epi32(
                            (self.xu.as_ptr().add((self.r0 + r) * k + b * BLOCK + t * 4)
                                as *const i32)
                                .read_unaligned(),
                        );
                        for g in 0..G {
                            s[g] = _mm512_dpbusd_epi32(s[g], xb, wv[g]);
                        }
                    }
                }
                for g in 0..G {
                    let dw = _mm512_loadu_ps(ps.add(((self.g0 + g) * bpr + b) * GROUP));
                    for r in 0..R {
                        let d = _mm512_mul_ps(
                            dw,
                            _mm512_set1_ps(*self.xs.get_unchecked((self.r0 + r) * bpr + b)),
                        );
                        acc[r][g] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(sums[r][g]), d, acc[r][g]);
                    }
                }
            }
            for (r, a) in acc.iter().enumerate() {
                let row = self.y.get().add((self.r0 + r) * self.ld);
                for (g, v) in a.iter().enumerate() {
                    let out = row.add((self.g0 + g) * GROUP);
                    if g + 1 == G && self.last_cols < GROUP {
                        _mm512_mask_storeu_ps(out, ((1u32 << self.last_cols) - 1) as u16, *v);
                    } else {
                        _mm512_storeu_ps(out, *v);
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::q8::tests::values;

    #[test]
    fn tiles_compute_decodings_values_for_every_shape() {
        if !available() {
            eprintln!("skipped: no AVX-512 VNNI on this CPU (the tiles are not used here either)");
            return;
        }
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(3)
            .build()
            .unwrap();
        // rows and columns around the tile sizes (1..4 rows, one or two groups, partial last
        // group, many panels), one block and many; the output's other columns stay untouched
        for &(m, n, k) in &[
            (12, 48, 256),
            (12, 512, 256),
            (12, 256, 512),
            (1, 1, 32),
            (3, 17, 64),
            (4, 32, 96),
            (5, 33, 32),
            (9, 70, 576),
            (130, 300, 576),
            (7, 1000, 1536),
        ] {
            let w = Q8Matrix::quantize(&values(n * k, n as u64), n, k).unwrap();
            let x = Q8Act::quantize(&values(m * k, m as u64 + 100), m, k);
            let (ld, col0) = (n + 5, 3);
            let mut y = vec![f32::NAN; m * ld];
            assert!(pool.install(|| matmul_q8_tiles_into(&w, &x, &mut y, ld, col0)));
            let dense = crate::q8::matmul_q8_with(&w, &x, crate::q8::DotIsa::detect());
            let mut want = vec![f32::NAN; m * ld];
            for r in 0..m {
                want[r * ld + col0..r * ld + col0 + n].copy_from_slice(&dense[r * n..(r + 1) * n]);
            }
            for r in 0..m {
                for j in 0..ld {
                    let (a, b) = (y[r * ld + j], want[r * ld + j]);
                    if j < col0 || j >= col0 + n {
                        assert!(
                            a.is_nan(),
                            "({m}, {n}, {k}): column {j} outside the product was written"
                        );
                        continue;
                    }
                    // decoding's product, bit for bit
                    assert_eq!(
                        a.to_bits(),
                        b.to_bits(),
                        "({m}, {n}, {k}) [{r}, {j}]: {a} vs {b}"
                    );
                    // and within float rounding of Σ_b d_w·d_x·(exact integer sum) in f64
                    let (c, bpr) = (j - col0, k / BLOCK);
                    let (mut exact, mut size) = (0f64, 0f64);
                    for blk in 0..bpr {
                        let dot: i64 = (blk * BLOCK..(blk + 1) * BLOCK)
                            .map(|i| w.quants[c * k + i] as i64 * x.quants[r * k + i] as i64)
                            .sum();
                        let t = w.scales[c * bpr + blk] as f64
                            * x.scales[r * bpr + blk] as f64
                            * dot as f64;
                        exact += t;
                        size += t.abs();
                    }
                    assert!(
                        (a as f64 - exact).abs() <= 1e-6 * (bpr as f64 + 2.0) * size + 1e-30,
                        "({m}, {n}, {k}) [{r}, {j}]: {a} vs {exact}"
                    );
                }
            }
        }
    }

    #[test]
    fn extreme_quants_sum_exactly() {
        if !available() {
            eprintln!("skipped: no AVX-512 VNNI on this CPU");
            return;
        }
        // ±127 against ±127 in every lane, and a block's sum at its largest: exact integers
        // (scales of 1) within f32's exact range, so the product must equal the plain sum.
        let (m, n, k) = (5, 20, 32 * 40);
        let mut w = Q8Matrix::quantize(&values(n * k, 1), n, k).unwrap();
        let mut x = Q8Act::quantize(&values(m * k, 2), m, k);
        w.scales.iter_mut().for_each(|d| *d = 1.0);
        x.scales.iter_mut().for_each(|d| *d = 1.0);
        for (i, v) in w.quants.iter_mut().enumerate() {
            *v = if i % 3 == 0 { -127 } else { 127 };
        }
        for (i, v) in x.quants.iter_mut().enumerate() {
            *v = if i % 5 == 0 { 127 } else { -127 };
        }
        let mut y = vec![0f32; m * n];
        assert!(matmul_q8_tiles_into(&w, &x, &mut y, n, 0));
        for r in 0..m {
            for j in 0..n {
                let want: i64 = (0..k)
                    .map(|i| w.quants[j * k + i] as i64 * x.quants[r * k + i] as i64)
                    .sum();
                assert_eq!(y[r * n + j], want as f32, "[{r}, {j}]");
            }
        }
    }
}
