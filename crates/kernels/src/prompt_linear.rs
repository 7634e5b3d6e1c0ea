//! A prompt pass's f32 `x·Wᵀ (+ b)` on AVX-512 or AVX2+FMA: many rows of x against
//! row-major weights, as register tiles of outer products instead of [`crate::linear`]'s dot
//! products.
//!
//! Why: the few-row kernel computes each output as a 16-lane dot product, so every
//! multiply-add needs a weight vector and an input vector loaded, half a load per
//! multiply-add in its 4 × 4 blocks; with the weight rows of a task coming from L2 it ran
//! at 100–150 GFLOP/s on a Zen 5 core whose multiply-add peak is 246 (`--example
//! fma_peak`). Here the rows of x are first transposed into panels of 16 rows (`pack`),
//! and a register tile of six weight rows × 64 rows of x (24 accumulators) takes, for each
//! k, four panel vectors and six broadcast weights: ten loads for 24 multiply-adds, the
//! weights read in place (no copy of W per call, unlike `gemm`, which packs all of W).
//!
//! With AVX2 (16 registers of 8 lanes) the panels are 8 rows and the tile 6 × 16.
//!
//! The arithmetic of an output is a plain sum over k in order, one fused multiply-add after
//! the other from zero, then the bias added: it does not depend on the rows beside it, on
//! the blocking or on the vector width, so a row's result is the same in any batch this
//! kernel takes, with either instruction set. It differs
//! in rounding from the few-row kernel's (16 lanes, then a tree), which is why a batched
//! decoding step never takes this kernel (see [`PROMPT_ROWS`]).

use crate::ptr::SendPtr;
use rayon::prelude::*;

/// Products of at least this many rows take this kernel (with AVX2 and FMA). A decoding step's
/// batch must stay below it so that a sequence decoded in a batch multiplies as alone:
/// `ferrolm_model`'s batched `decode_step` splits larger batches. The tiles are faster from
/// fewer rows already (at 32 rows 128–228 GFLOP/s against the few-row kernel's 90–136 at 31,
/// `--example prefill_kernels`, Zen 5); 32 keeps the batches a server decodes (8 sequences
/// by default) whole on the few-row kernels, which read each weight once for all rows.
pub const PROMPT_ROWS: usize = 32;

/// Products of more rows go to `gemm` as before: at 2048 rows the two ran level (145–192
/// GFLOP/s on a Zen 5 core), while at 256 and 512 rows these tiles ran 204–230 against
/// `gemm`'s 136–206 (`--example prefill_kernels 256`).
pub const PROMPT_MAX_ROWS: usize = 1024;

/// Whether a product of `rows` rows takes this kernel (where the CPU has it).
pub(crate) fn takes(rows: usize) -> bool {
    (PROMPT_ROWS..=PROMPT_MAX_ROWS).contains(&rows)
}

/// Weight rows per register tile.
const MR: usize = 6;
/// Weight rows per task (a multiple of MR): what a thread takes at a time.
const JT: usize = 48;
/// The most k per cache block: a task's weight rows (48 × KC floats) and the panels'
/// block (rows × KC) stay in L2 while the tiles go over them.
const KC: usize = 1024;

/// The vector instructions the tiles run on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TileIsa {
    /// 16 lanes: panels of 16 rows, tiles of 6 weight rows × 4 panels.
    Avx512,
    /// 8 lanes (AVX2 and FMA): panels of 8 rows, tiles of 6 weight rows × 2 panels.
    Avx2,
}

impl TileIsa {
    /// The widest this CPU has; None without AVX2 and FMA.
    pub fn detect() -> Option<Self> {
        [Self::Avx512, Self::Avx2].into_iter().find(|isa| isa.runs_here())
    }

    /// Every form this CPU runs, widest first.
    pub fn available() -> Vec<Self> {
        [Self::Avx512, Self::Avx2].into_iter().filter(|isa| isa.runs_here()).collect()
    }

    /// Whether this CPU has the form's features.
    fn runs_here(self) -> bool {
        #[cfg(target_arch = "x86_64")]
        {
            match self {
                Self::Avx512 => std::arch::is_x86_feature_detected!("avx512f"),
                Self::Avx2 => crate::simd::fma_available(),
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            false
        }
    }

    /// Rows of x per panel (the vector's lanes).
    fn width(self) -> usize {
        match self {
            Self::Avx512 => 16,
            Self::Avx2 => 8,
        }
    }
}

/// Multiply-adds from which the tasks are spread over the rayon threads.
const PAR_WORK: usize = 1 << 20;

thread_local! {
    /// A thread's buffers, kept between calls (a prompt pass makes four products a layer,
    /// and fresh pages would be zeroed by the kernel for each): the panels of x, and a
    /// task's sums. Taken out while in use and put back after, so that a nested call (a
    /// rayon thread that steals another product's job while it waits) gets a buffer of
    /// its own instead of a borrow error.
    static PANELS: std::cell::Cell<Vec<f32>> = const { std::cell::Cell::new(Vec::new()) };
    static SUMS: std::cell::Cell<Vec<f32>> = const { std::cell::Cell::new(Vec::new()) };
}

/// The rows of x transposed into panels of `width` rows (16 or 8, the tiles' lanes) for the
/// tiles: element (i, p) at `((i / width)·k + p)·width + i % width` of the panels, rows past
/// the last zero.
pub(crate) struct Panels {
    buf: Vec<f32>,
    off: usize,
    rows: usize,
    k: usize,
    isa: TileIsa,
}

impl Panels {
    /// x (rows × k) in panels for the widest form this CPU has; None without AVX2 and FMA.
    pub(crate) fn new(x: &[f32], rows: usize, k: usize) -> Option<Self> {
        TileIsa::detect().map(|isa| Self::with(isa, x, rows, k))
    }

    /// x in panels for `isa`, which the CPU must have (one of [`TileIsa::available`]).
    fn with(isa: TileIsa, x: &[f32], rows: usize, k: usize) -> Self {
        assert!(isa.runs_here(), "prompt_linear: this CPU lacks {isa:?}");
        assert_eq!(x.len(), rows * k, "prompt_linear: x has {} values, expected {rows} × {k}", x.len());
        let width = isa.width();
        let len = rows.div_ceil(width) * k * width;
        let mut buf = PANELS.take();
        // 16 floats of slack to start the panels on a cache line
        buf.resize(len + 16, 0.0);
        let off = buf.as_ptr().align_offset(64).min(16);
        let xp = &mut buf[off..][..len];
        #[cfg(target_arch = "x86_64")]
        // SAFETY: the CPU has the form's features (asserted); x holds rows × k values and
        // xp rows.div_ceil(width) × k × width.
        unsafe {
            match isa {
                TileIsa::Avx512 => x86::pack(x, rows, k, xp),
                TileIsa::Avx2 => x86::pack8(x, rows, k, xp),
            }
        };
        Self { buf, off, rows, k, isa }
    }

    fn panels(&self) -> &[f32] {
        let width = self.isa.width();
        &self.buf[self.off..][..self.rows.div_ceil(width) * self.k * width]
    }

    /// `y[i·ld + j] = x_i · w_j (+ b_j)` for the weight rows j0..j1 of w (n × k, row-major),
    /// on the calling thread, JT weight rows at a time.
    ///
    /// # Safety
    /// `yp` addresses rows × ld values with j1 ≤ ld, and no other thread writes columns
    /// j0..j1 of them meanwhile; w holds at least j1 × k values; b, if any, at least j1.
    pub(crate) unsafe fn columns(&self, w: &[f32], j0: usize, j1: usize, b: Option<&[f32]>, yp: SendPtr<f32>, ld: usize) {
        assert!(w.len() >= j1 * self.k && b.is_none_or(|b| b.len() >= j1));
        let width = self.isa.width();
        let ld_sums = self.rows.div_ceil(width) * width;
        let mut sums = SUMS.take();
        sums.resize(JT * ld_sums, 0.0);
        let mut j = j0;
        while j < j1 {
            let end = (j + JT).min(j1);
            #[cfg(target_arch = "x86_64")]
            // SAFETY: the panels exist only where the CPU has their form's features
            // (`with`); sums hold JT × ld_sums; w and b are long enough (asserted); y as the
            // caller guarantees.
            unsafe {
                match self.isa {
                    TileIsa::Avx512 => x86::task(self.panels(), self.rows, self.k, w, j, end, &mut sums, yp, ld, b),
                    TileIsa::Avx2 => x86::task_avx2(self.panels(), self.rows, self.k, w, j, end, &mut sums, yp, ld, b),
                }
            };
            j = end;
        }
        SUMS.set(sums);
    }
}

impl Drop for Panels {
    fn drop(&mut self) {
        PANELS.set(std::mem::take(&mut self.buf));
    }
}

/// `y (rows×n) = x (rows×k) · wᵀ (+ b)` for w (n×k), every element of y written, tasks of
/// JT weight rows spread over the rayon threads when the product is large enough, in the
/// widest form the CPU has. False (nothing written) without AVX2 and FMA.
pub(crate) fn product(x: &[f32], rows: usize, k: usize, w: &[f32], n: usize, b: Option<&[f32]>, y: &mut [f32]) -> bool {
    match TileIsa::detect() {
        Some(isa) => {
            product_with(isa, x, rows, k, w, n, b, y);
            true
        }
        None => false,
    }
}

/// [`product`] in a given form, which the CPU must have (one of [`TileIsa::available`]; a
/// panic otherwise): for tests and `--example prefill_kernels`.
#[allow(clippy::too_many_arguments)]
pub fn product_with(isa: TileIsa, x: &[f32], rows: usize, k: usize, w: &[f32], n: usize, b: Option<&[f32]>, y: &mut [f32]) {
    assert!(w.len() == n * k && y.len() == rows * n && b.is_none_or(|b| b.len() == n));
    let panels = Panels::with(isa, x, rows, k);
    if rows == 0 || n == 0 {
        return;
    }
    let yp = SendPtr::new(y.as_mut_ptr());
    // SAFETY: y is rows × n; each task writes only its own columns j0..j1 ≤ n, and y
    // outlives the joined tasks; w and b are n rows long (asserted).
    let task = |t: usize| unsafe { panels.columns(w, t * JT, ((t + 1) * JT).min(n), b, yp, n) };
    let tasks = n.div_ceil(JT);
    if rows * n * k >= PAR_WORK && rayon::current_num_threads() > 1 {
        (0..tasks).into_par_iter().for_each(task);
    } else {
        (0..tasks).for_each(task);
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::{JT, KC, MR};
    use crate::ptr::SendPtr;
    use std::arch::x86_64::*;

    /// Rows of x (rows × k) into panels of 16: element (i, p) at `xp[((i / 16)·k + p)·16 +
    /// i % 16]`, rows past the last zero. Sixteen rows at a time, each 16 × 16 block
    /// transposed in registers.
    ///
    /// # Safety
    /// AVX-512 F; x holds rows × k values and xp rows.div_ceil(16) × k × 16.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn pack(x: &[f32], rows: usize, k: usize, xp: &mut [f32]) {
        // SAFETY: AVX-512 F (the caller's) for the vector operations passed in; each load
        // and store is given a pointer to 16 values inside x or xp (`pack_body`).
        unsafe { pack_body::<16, __m512>(x, rows, k, xp, |p| _mm512_loadu_ps(p), || _mm512_setzero_ps(), |v| transpose16(v), |p, v| _mm512_storeu_ps(p, v)) }
    }

    /// [`pack`] for AVX2: panels of 8 rows, each 8 × 8 block transposed in registers.
    ///
    /// # Safety
    /// AVX2; x holds rows × k values and xp rows.div_ceil(8) × k × 8.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn pack8(x: &[f32], rows: usize, k: usize, xp: &mut [f32]) {
        // SAFETY: AVX2 (the caller's) for the vector operations passed in; each load and
        // store is given a pointer to 8 values inside x or xp (`pack_body`).
        unsafe { pack_body::<8, __m256>(x, rows, k, xp, |p| _mm256_loadu_ps(p), || _mm256_setzero_ps(), |v| transpose8(v), |p, v| _mm256_storeu_ps(p, v)) }
    }

    /// The panels of W rows for [`pack`] and [`pack8`]: W rows at a time, each W × W block
    /// loaded as rows (`load`, or `zero` past the last row), transposed in registers and
    /// stored as columns; the columns past the last whole block one value at a time.
    ///
    /// # Safety
    /// x holds rows × k values and xp rows.div_ceil(W) × k × W; `load` and `store` read or
    /// write W values at the pointer they are given, and the CPU has what they and
    /// `transpose` need.
    #[allow(clippy::too_many_arguments)]
    #[inline(always)]
    unsafe fn pack_body<const W: usize, V: Copy>(
        x: &[f32],
        rows: usize,
        k: usize,
        xp: &mut [f32],
        load: impl Fn(*const f32) -> V,
        zero: impl Fn() -> V,
        transpose: impl Fn(&mut [V; W]),
        store: impl Fn(*mut f32, V),
    ) {
        let panels = rows.div_ceil(W);
        debug_assert!(x.len() == rows * k && xp.len() == panels * k * W);
        for t in 0..panels {
            let live = (rows - t * W).min(W);
            let dst = &mut xp[t * k * W..][..k * W];
            let full = k / W * W;
            let mut p = 0;
            while p < full {
                // rows t·W + r < rows and columns p..p+W ≤ k: inside x
                let mut v: [V; W] = std::array::from_fn(|r| if r < live { load(x[(t * W + r) * k + p..].as_ptr()) } else { zero() });
                transpose(&mut v);
                for (c, vc) in v.iter().enumerate() {
                    // (p + c)·W + W ≤ k·W, inside this panel
                    store(dst[(p + c) * W..][..W].as_mut_ptr(), *vc);
                }
                p += W;
            }
            for p in full..k {
                for r in 0..W {
                    dst[p * W + r] = if r < live { x[(t * W + r) * k + p] } else { 0.0 };
                }
            }
        }
    }

    /// Transposes an 8 × 8 block held as 8 rows: afterwards `v[c]` holds column c.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    fn transpose8(v: &mut [__m256; 8]) {
        // pairs of rows interleaved as single values, then as pairs (within each 128-bit
        // half), then the halves exchanged
        let t: [__m256; 8] = std::array::from_fn(|i| if i % 2 == 0 { _mm256_unpacklo_ps(v[i], v[i + 1]) } else { _mm256_unpackhi_ps(v[i - 1], v[i]) });
        let u = [
            _mm256_shuffle_ps::<0x44>(t[0], t[2]),
            _mm256_shuffle_ps::<0xEE>(t[0], t[2]),
            _mm256_shuffle_ps::<0x44>(t[1], t[3]),
            _mm256_shuffle_ps::<0xEE>(t[1], t[3]),
            _mm256_shuffle_ps::<0x44>(t[4], t[6]),
            _mm256_shuffle_ps::<0xEE>(t[4], t[6]),
            _mm256_shuffle_ps::<0x44>(t[5], t[7]),
            _mm256_shuffle_ps::<0xEE>(t[5], t[7]),
        ];
        for c in 0..4 {
            v[c] = _mm256_permute2f128_ps::<0x20>(u[c], u[c + 4]);
            v[c + 4] = _mm256_permute2f128_ps::<0x31>(u[c], u[c + 4]);
        }
    }

    /// Transposes a 16 × 16 block held as 16 rows: afterwards `v[c]` holds column c.
    #[inline]
    #[target_feature(enable = "avx512f")]
    fn transpose16(v: &mut [__m512; 16]) {
        // Pairs of rows interleaved as single values, then as 64-bit pairs (within each
        // 128-bit quarter), then whole quarters twice: four rounds of 16 shuffles.
        let mut t = [_mm512_setzero_ps(); 16];
        for i in 0..8 {
            t[2 * i] = _mm512_unpacklo_ps(v[2 * i], v[2 * i + 1]);
            t[2 * i + 1] = _mm512_unpackhi_ps(v[2 * i], v[2 * i + 1]);
        }
        for i in 0..4 {
            let (a, b, c, d) = (t[4 * i], t[4 * i + 1], t[4 * i + 2], t[4 * i + 3]);
            v[4 * i] = _mm512_castpd_ps(_mm512_unpacklo_pd(_mm512_castps_pd(a), _mm512_castps_pd(c)));
            v[4 * i + 1] = _mm512_castpd_ps(_mm512_unpackhi_pd(_mm512_castps_pd(a), _mm512_castps_pd(c)));
            v[4 * i + 2] = _mm512_castpd_ps(_mm512_unpacklo_pd(_mm512_castps_pd(b), _mm512_castps_pd(d)));
            v[4 * i + 3] = _mm512_castpd_ps(_mm512_unpackhi_pd(_mm512_castps_pd(b), _mm512_castps_pd(d)));
        }
        // v[4i + j] now holds, in its quarter q, rows 4i..4i+4 at column 4q + j; column
        // 4q + j is quarter q of v[j], v[4 + j], v[8 + j], v[12 + j], gathered by two rounds
        // of quarter shuffles (which read and write the same four registers).
        for j in 0..4 {
            let s1 = _mm512_shuffle_f32x4::<0b01_00_01_00>(v[j], v[4 + j]);
            let s2 = _mm512_shuffle_f32x4::<0b11_10_11_10>(v[j], v[4 + j]);
            let s3 = _mm512_shuffle_f32x4::<0b01_00_01_00>(v[8 + j], v[12 + j]);
            let s4 = _mm512_shuffle_f32x4::<0b11_10_11_10>(v[8 + j], v[12 + j]);
            v[j] = _mm512_shuffle_f32x4::<0b10_00_10_00>(s1, s3);
            v[4 + j] = _mm512_shuffle_f32x4::<0b11_01_11_01>(s1, s3);
            v[8 + j] = _mm512_shuffle_f32x4::<0b10_00_10_00>(s2, s4);
            v[12 + j] = _mm512_shuffle_f32x4::<0b11_01_11_01>(s2, s4);
        }
    }

    /// Columns j0..j1 (j1 − j0 ≤ JT) of `y = x·wᵀ (+ b)`, x as panels (`pack`), on
    /// AVX-512: tiles of four panels of 16.
    ///
    /// # Safety
    /// AVX-512 F; as [`task_body`] with panels of 16.
    #[allow(clippy::too_many_arguments)]
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn task(xp: &[f32], rows: usize, k: usize, w: &[f32], j0: usize, j1: usize, sums: &mut [f32], yp: SendPtr<f32>, ld_y: usize, b: Option<&[f32]>) {
        // SAFETY: the caller's guarantees; AVX-512 F for the tiles.
        unsafe {
            task_body::<16, 4>(xp, rows, k, w, j0, j1, sums, yp, ld_y, b, |v, ws, xs, pstride, len, out, ld, rows_m, first| match v {
                4 => tile::<4>(ws, xs, pstride, len, out, ld, rows_m, first),
                3 => tile::<3>(ws, xs, pstride, len, out, ld, rows_m, first),
                2 => tile::<2>(ws, xs, pstride, len, out, ld, rows_m, first),
                _ => tile::<1>(ws, xs, pstride, len, out, ld, rows_m, first),
            })
        }
    }

    /// [`task`] on AVX2 and FMA: panels of 8 (`pack8`), tiles of two panels.
    ///
    /// # Safety
    /// AVX2 and FMA; as [`task_body`] with panels of 8.
    #[allow(clippy::too_many_arguments)]
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn task_avx2(xp: &[f32], rows: usize, k: usize, w: &[f32], j0: usize, j1: usize, sums: &mut [f32], yp: SendPtr<f32>, ld_y: usize, b: Option<&[f32]>) {
        // SAFETY: the caller's guarantees; AVX2 and FMA for the tiles.
        unsafe {
            task_body::<8, 2>(xp, rows, k, w, j0, j1, sums, yp, ld_y, b, |v, ws, xs, pstride, len, out, ld, rows_m, first| match v {
                2 => tile8::<2>(ws, xs, pstride, len, out, ld, rows_m, first),
                _ => tile8::<1>(ws, xs, pstride, len, out, ld, rows_m, first),
            })
        }
    }

    /// Columns j0..j1 (j1 − j0 ≤ JT) of `y = x·wᵀ (+ b)`, x as panels of W rows, tiles of
    /// up to N panels by `tile`. The sums build up in `sums` (weight-row-major, `panels·W`
    /// per weight row) block of k by block, then go to y with the bias added.
    ///
    /// # Safety
    /// xp as `pack`/`pack8` wrote it for `rows` rows of k in panels of W; w holds at least
    /// j1 × k values; sums at least JT × rows.div_ceil(W) × W; y (through `yp`) rows × ld_y
    /// with j1 ≤ ld_y, and no other thread writes its columns j0..j1 meanwhile; b, if any,
    /// at least j1 long; `tile(panels, weight rows, panel start, panel stride, k values,
    /// sums, sums' row stride, weight rows kept, first block of k)` reads and writes what
    /// [`tile`] does.
    #[allow(clippy::too_many_arguments)]
    #[inline(always)]
    unsafe fn task_body<const W: usize, const N: usize>(
        xp: &[f32],
        rows: usize,
        k: usize,
        w: &[f32],
        j0: usize,
        j1: usize,
        sums: &mut [f32],
        yp: SendPtr<f32>,
        ld_y: usize,
        b: Option<&[f32]>,
        tile: impl Fn(usize, [*const f32; MR], *const f32, usize, usize, *mut f32, usize, usize, bool),
    ) {
        debug_assert!(j1 - j0 <= JT);
        let panels = rows.div_ceil(W);
        let ld = panels * W;
        let blocks = k.div_ceil(KC);
        let kc = k.div_ceil(blocks);
        let mut k0 = 0;
        while k0 < k {
            let len = kc.min(k - k0);
            let mut t = 0;
            while t < panels {
                let v = (panels - t).min(N);
                let mut j = j0;
                while j < j1 {
                    // weight rows past j1 repeat the last one (their sums are not kept)
                    let ws: [*const f32; MR] = std::array::from_fn(|m| w[(j + m).min(j1 - 1) * k + k0..][..len].as_ptr());
                    let xs = xp[(t * k + k0) * W..].as_ptr();
                    let out = sums[(j - j0) * ld + t * W..].as_mut_ptr();
                    let rows_m = (j1 - j).min(MR);
                    // the panels t..t+v hold k0..k0+len at xs + (panel·k + p)·W; ws read len
                    // values each; out addresses rows_m weight rows of ld sums from panel t
                    // (j − j0 + MR ≤ JT rounded up, inside sums)
                    tile(v, ws, xs, k * W, len, out, ld, rows_m, k0 == 0);
                    j += MR;
                }
                t += N;
            }
            k0 += len;
        }
        for i in 0..rows {
            for j in j0..j1 {
                let s = sums[(j - j0) * ld + i];
                let v = match b {
                    Some(b) => s + b[j],
                    None => s,
                };
                // SAFETY: row i < rows, column j < j1 ≤ ld_y; this task owns columns j0..j1.
                unsafe { *yp.add(i * ld_y + j) = v };
            }
        }
    }

    /// The register tile: six weight rows × V panels of 16 rows of x over `len` values of
    /// k, one fused multiply-add per k into each sum, in order. `first`: the sums start at
    /// zero; otherwise at what `out` holds (the earlier blocks of k). Sums of the first
    /// `rows_m` weight rows are stored.
    ///
    /// # Safety
    /// AVX-512 F; each ws[m] reads len values; xs + panel·pstride + p·16 reads 16 values for
    /// panel < V, p < len; out + m·ld + panel·16 addresses 16 sums for m < rows_m, panel < V.
    #[allow(clippy::too_many_arguments)]
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn tile<const V: usize>(ws: [*const f32; MR], xs: *const f32, pstride: usize, len: usize, out: *mut f32, ld: usize, rows_m: usize, first: bool) {
        let mut acc = [[_mm512_setzero_ps(); V]; MR];
        if !first {
            for (m, row) in acc.iter_mut().enumerate().take(rows_m) {
                for (q, a) in row.iter_mut().enumerate() {
                    // SAFETY: m < rows_m, q < V (the caller's).
                    *a = unsafe { _mm512_loadu_ps(out.add(m * ld + q * 16)) };
                }
            }
        }
        for p in 0..len {
            // SAFETY: panel q < V, p < len (the caller's).
            let xv: [__m512; V] = std::array::from_fn(|q| unsafe { _mm512_loadu_ps(xs.add(q * pstride + p * 16)) });
            for m in 0..MR {
                // SAFETY: p < len (the caller's).
                let wb = _mm512_set1_ps(unsafe { *ws[m].add(p) });
                for q in 0..V {
                    acc[m][q] = _mm512_fmadd_ps(xv[q], wb, acc[m][q]);
                }
            }
        }
        for (m, row) in acc.iter().enumerate().take(rows_m) {
            for (q, a) in row.iter().enumerate() {
                // SAFETY: m < rows_m, q < V (the caller's).
                unsafe { _mm512_storeu_ps(out.add(m * ld + q * 16), *a) };
            }
        }
    }

    /// [`tile`] on AVX2: six weight rows × V panels of 8 rows (12 accumulators of the 16
    /// registers), the same in-order sums.
    ///
    /// # Safety
    /// AVX2 and FMA; as [`tile`] with panels of 8.
    #[allow(clippy::too_many_arguments)]
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn tile8<const V: usize>(ws: [*const f32; MR], xs: *const f32, pstride: usize, len: usize, out: *mut f32, ld: usize, rows_m: usize, first: bool) {
        let mut acc = [[_mm256_setzero_ps(); V]; MR];
        if !first {
            for (m, row) in acc.iter_mut().enumerate().take(rows_m) {
                for (q, a) in row.iter_mut().enumerate() {
                    // SAFETY: m < rows_m, q < V (the caller's).
                    *a = unsafe { _mm256_loadu_ps(out.add(m * ld + q * 8)) };
                }
            }
        }
        for p in 0..len {
            // SAFETY: panel q < V, p < len (the caller's).
            let xv: [__m256; V] = std::array::from_fn(|q| unsafe { _mm256_loadu_ps(xs.add(q * pstride + p * 8)) });
            for m in 0..MR {
                // SAFETY: p < len (the caller's).
                let wb = _mm256_set1_ps(unsafe { *ws[m].add(p) });
                for q in 0..V {
                    acc[m][q] = _mm256_fmadd_ps(xv[q], wb, acc[m][q]);
                }
            }
        }
        for (m, row) in acc.iter().enumerate().take(rows_m) {
            for (q, a) in row.iter().enumerate() {
                // SAFETY: m < rows_m, q < V (the caller's).
                unsafe { _mm256_storeu_ps(out.add(m * ld + q * 8), *a) };
            }
        }
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn transpose8_transposes() {
            if !crate::simd::fma_available() {
                return;
            }
            let m: Vec<f32> = (0..64).map(|i| i as f32).collect();
            let mut out = vec![0f32; 64];
            // SAFETY: AVX2 checked above; m and out hold 8 × 8 values.
            unsafe {
                let mut v: [__m256; 8] = std::array::from_fn(|r| _mm256_loadu_ps(m.as_ptr().add(r * 8)));
                transpose8(&mut v);
                for (c, vc) in v.iter().enumerate() {
                    _mm256_storeu_ps(out.as_mut_ptr().add(c * 8), *vc);
                }
            }
            for r in 0..8 {
                for c in 0..8 {
                    assert_eq!(out[c * 8 + r], m[r * 8 + c], "({r}, {c})");
                }
            }
        }

        #[test]
        fn transpose16_transposes() {
            if !std::arch::is_x86_feature_detected!("avx512f") {
                return;
            }
            let m: Vec<f32> = (0..256).map(|i| i as f32).collect();
            let mut out = vec![0f32; 256];
            // SAFETY: AVX-512 F checked above; m and out hold 16 × 16 values.
            unsafe {
                let mut v: [__m512; 16] = std::array::from_fn(|r| _mm512_loadu_ps(m.as_ptr().add(r * 16)));
                transpose16(&mut v);
                for (c, vc) in v.iter().enumerate() {
                    _mm512_storeu_ps(out.as_mut_ptr().add(c * 16), *vc);
                }
            }
            for r in 0..16 {
                for c in 0..16 {
                    assert_eq!(out[c * 16 + r], m[r * 16 + c], "({r}, {c})");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each form the CPU has against an f64 reference and a plain in-order f32 sum (the
    /// kernel's arithmetic, exactly: so the forms agree bit for bit), for row counts around
    /// the panel and tile sizes, k across the cache block (two blocks), n not a multiple of
    /// the tile or the task.
    #[test]
    fn product_is_an_in_order_sum_whatever_the_batch_and_the_form() {
        let vals = |n: usize, seed: u64| crate::testutil::lcg_values(n, seed, |u| u as f32 / (1u64 << 30) as f32 - 1.0);
        for (n, k) in [(7, 1), (13, 17), (50, 64), (101, 300), (9, KC + 37)] {
            let w = vals(n * k, 1);
            let b = vals(n, 9);
            for rows in [1, 15, 16, 17, 33, 64, 65, 130] {
                let x = vals(rows * k, rows as u64 + 2);
                for (isa, bias) in TileIsa::available().into_iter().flat_map(|isa| [(isa, None), (isa, Some(&b[..]))]) {
                    let mut y = vec![f32::NAN; rows * n];
                    product_with(isa, &x, rows, k, &w, n, bias, &mut y);
                    for i in 0..rows {
                        for j in 0..n {
                            let exact: f64 = (0..k).map(|p| x[i * k + p] as f64 * w[j * k + p] as f64).sum::<f64>() + bias.map_or(0.0, |b| b[j] as f64);
                            let in_order = (0..k).fold(0f32, |s, p| x[i * k + p].mul_add(w[j * k + p], s)) + bias.map_or(0.0, |b| b[j]);
                            assert_eq!(y[i * n + j].to_bits(), in_order.to_bits(), "{isa:?} {rows}×{k}·({n}×{k})ᵀ [{i},{j}]");
                            assert!((y[i * n + j] as f64 - exact).abs() < 1e-3, "{rows}×{k} [{i},{j}]");
                        }
                    }
                }
            }
        }
    }
}
