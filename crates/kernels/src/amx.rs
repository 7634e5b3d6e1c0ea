//! f32 matrix products computed on Intel AMX tiles in bf16, with f32 accumulation.
//!
//! Why: on CPUs with AMX (Sapphire Rapids and later) one `tdpbf16ps` does 16·16·32
//! multiply-adds; a core reaches about 1.9 TFLOP/s on tiles against about 0.1 TFLOP/s for
//! the f32 AVX-512 microkernels that `gemm` (and so candle) use. The price is that both
//! operands are rounded to bf16 (8-bit mantissa) before the product; sums stay in f32 and
//! the result is f32. That is what PyTorch's `fp32_precision = "bf16"` matmul mode and
//! mixed-precision training do, and it trains small LMs to the same loss (measured in
//! `bench/README.md`). It is opt-in: [`MatmulPrecision::Bf16`].
//!
//! How: A (m×k) is packed into 16×32 bf16 tiles, B (k×n) into the "VNNI" layout AMX wants
//! (each 64-byte tile row holds 16 columns × 2 consecutive k); both are zero-padded, so any
//! m, n, k and any strides work. Each task computes 32×32 blocks of C with four f32
//! accumulator tiles (tmm0–3), two A tiles (tmm4–5) and two B tiles (tmm6–7).

use crate::ptr::{SendPtr, Strided};
use std::sync::OnceLock;

/// Whether this CPU and OS let the process use AMX bf16 tiles. Linux hands out the tile
/// state only on request (`arch_prctl(ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA)`), once
/// per process.
pub fn amx_available() -> bool {
    static AVAILABLE: OnceLock<bool> = OnceLock::new();
    *AVAILABLE.get_or_init(detect)
}

#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
fn detect() -> bool {
    if std::env::var_os("FERROLM_NO_AMX").is_some() {
        return false;
    }
    // CPUID leaf 7: EDX bit 22 is AMX-BF16, bit 24 AMX-TILE (std's detection macro for
    // these is still unstable).
    let leaf7 = std::arch::x86_64::__cpuid_count(7, 0);
    if leaf7.edx & (1 << 22) == 0 || leaf7.edx & (1 << 24) == 0 {
        return false;
    }
    // The packers convert with AVX-512 BF16 (every AMX CPU so far has it; checked anyway).
    if !(std::arch::is_x86_feature_detected!("avx512bf16")
        && std::arch::is_x86_feature_detected!("avx512bw")
        && std::arch::is_x86_feature_detected!("avx512vl"))
    {
        return false;
    }
    const ARCH_REQ_XCOMP_PERM: libc::c_long = 0x1023;
    const XFEATURE_XTILEDATA: libc::c_long = 18;
    // SAFETY: a plain syscall with integer arguments.
    unsafe { libc::syscall(libc::SYS_arch_prctl, ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA) == 0 }
}

#[cfg(not(all(target_arch = "x86_64", target_os = "linux")))]
fn detect() -> bool {
    false
}

/// Products smaller than this many multiply-adds stay on the f32 path: packing costs more
/// than the tiles save, and tiny products (one decoding step) gain nothing.
pub const MIN_WORK: usize = 1 << 15;

/// The hook candle's matmul calls for f32 in bf16 mode (see vendor/candle-core/FERROLM-PATCH.md).
pub(crate) unsafe fn candle_hook(p: candle_core::cpu_backend::F32Gemm) -> bool {
    use rayon::prelude::*;
    // SAFETY: candle's hook contract: the pointers, strides and skips of `p` describe the operands
    // and destinations of `p.batch` products (dst aliasing neither), and Bf16 mode (the only one
    // that installs this hook) was set after AMX was found available; each item writes only
    // its own destination block.
    unsafe {
        let (m, n, k) = (p.m, p.n, p.k);
        if m * n * k < MIN_WORK || p.dst_rs < n as isize {
            return crate::sgemm::candle_hook(p);
        }
        let (dst, dst_rs, dst_skip) = (SendPtr::new(p.dst), p.dst_rs as usize, p.dst_skip);
        let (a, a_skip) = (Strided { ptr: p.lhs, rs: p.lhs_rs, cs: p.lhs_cs }, p.lhs_skip);
        let (b, b_skip) = (Strided { ptr: p.rhs, rs: p.rhs_rs, cs: p.rhs_cs }, p.rhs_skip);
        let item = |i: usize, parallel: bool| {
            gemm_bf16(m, n, k, a.skip(i * a_skip), b.skip(i * b_skip), dst.add(i * dst_skip), dst_rs, false, 1.0, parallel);
        };
        // A batch at least as large as the pool (attention heads) runs one item per task;
        // otherwise each product spreads its own blocks over the pool.
        if p.batch >= rayon::current_num_threads() {
            (0..p.batch).into_par_iter().for_each(|i| item(i, false));
        } else {
            (0..p.batch).for_each(|i| item(i, true));
        }
        true
    }
}

const TM: usize = 16; // rows of an A tile and of a C tile
const TK: usize = 32; // bf16 values along k in a tile row (64 bytes)
const TN: usize = 16; // f32 columns of a C tile
const TILE: usize = 512; // u16 values in a 1 KiB tile

/// Round to nearest even, as the hardware conversion (`vcvtne2ps2bf16`) does: NaN stays
/// NaN, and denormals become zero of the same sign.
#[inline(always)]
fn to_bf16(x: f32) -> u16 {
    let bits = x.to_bits();
    if bits & 0x7f80_0000 == 0 {
        return (bits >> 16) as u16 & 0x8000;
    }
    let rounded = (bits.wrapping_add(0x7fff + ((bits >> 16) & 1)) >> 16) as u16;
    if x.is_nan() {
        ((bits >> 16) as u16) | 0x40
    } else {
        rounded
    }
}

/// The value a bf16 stands for (tests compare against products of rounded operands).
pub fn bf16_round(x: f32) -> f32 {
    f32::from_bits((to_bf16(x) as u32) << 16)
}

thread_local! {
    /// Packing buffers kept per thread: fresh multi-megabyte buffers for every product cost
    /// page faults and kernel zeroing (9% of a c2 step when they were allocated per call).
    /// The packers write every element, padding included, so old contents never leak in.
    static PACKED: std::cell::RefCell<(Vec<Tile>, Vec<Tile>)> = const { std::cell::RefCell::new((Vec::new(), Vec::new())) };
}

/// One 1 KiB tile, 64-byte aligned: tile rows that straddle cache lines made the loads
/// 2–3× slower in a measurement on this machine.
#[derive(Clone, Copy)]
#[repr(C, align(64))]
struct Tile([u16; TILE]);

/// The tiles' values as one flat slice.
fn flat(tiles: &mut [Tile]) -> &mut [u16] {
    // SAFETY: Tile is a repr(C) array of u16 with no padding (1024 bytes, align 64).
    unsafe { std::slice::from_raw_parts_mut(tiles.as_mut_ptr() as *mut u16, tiles.len() * TILE) }
}

/// `dst[m×n] (= or +=) scale · A·B` with A m×k and B k×n, operands rounded to bf16.
/// dst has row stride `dst_rs` and column stride 1. `parallel` spreads the blocks over
/// rayon's pool; the fused attention op calls it from inside its own parallel tasks.
/// The caller must have checked [`amx_available`].
///
/// # Safety
/// The pointers must cover the matrices their strides describe, and dst must not alias A or B.
#[allow(clippy::too_many_arguments)]
pub unsafe fn gemm_bf16(
    m: usize,
    n: usize,
    k: usize,
    a: Strided,
    b: Strided,
    dst: *mut f32,
    dst_rs: usize,
    accumulate: bool,
    scale: f32,
    parallel: bool,
) {
    // SAFETY: the caller's contract is gemm_bf16_in's; the buffers are this thread's own.
    unsafe {
        PACKED.with(|cell| match cell.try_borrow_mut() {
            Ok(mut bufs) => {
                let (ap, bp) = &mut *bufs;
                gemm_bf16_in(m, n, k, a, b, dst, dst_rs, accumulate, scale, parallel, ap, bp)
            }
            // Re-entered on this thread (a rayon job stolen while waiting): use fresh buffers.
            Err(_) => gemm_bf16_in(m, n, k, a, b, dst, dst_rs, accumulate, scale, parallel, &mut Vec::new(), &mut Vec::new()),
        })
    }
}

#[allow(clippy::too_many_arguments)]
unsafe fn gemm_bf16_in(
    m: usize,
    n: usize,
    k: usize,
    a: Strided,
    b: Strided,
    dst: *mut f32,
    dst_rs: usize,
    accumulate: bool,
    scale: f32,
    parallel: bool,
    ap: &mut Vec<Tile>,
    bp: &mut Vec<Tile>,
) {
    use rayon::prelude::*;
    // SAFETY: the caller guarantees that A, B and dst cover the matrices their strides
    // describe and that AMX is available. Packed panels hold mt·kt and nt·kt whole tiles,
    // so the tile pointers stay inside them; full blocks are stored straight into dst only
    // when the whole 32×32 block lies inside C, edge blocks go through scratch and only their
    // part inside C is copied; the tasks' block ranges are disjoint, so no two threads write
    // the same element of dst.
    unsafe {
        // Tile counts rounded up to even: every task then runs the same 2×2 kernel, and the
        // padding tiles are zeros that only cost a little work on the edges.
        let mt = m.div_ceil(TM).next_multiple_of(2);
        let nt = n.div_ceil(TN).next_multiple_of(2);
        let kt = k.div_ceil(TK).max(1);
        ap.resize(mt * kt, Tile([0; TILE]));
        bp.resize(nt * kt, Tile([0; TILE]));
        let (ap, bp) = (flat(&mut ap[..mt * kt]), flat(&mut bp[..nt * kt]));
        let pack_a_tile = |(mi, panel): (usize, &mut [u16])| pack_a(panel, a, m, k, mi, kt);
        let pack_b_tile = |(ni, panel): (usize, &mut [u16])| pack_b(panel, b, k, n, ni, kt);
        if parallel {
            ap.par_chunks_mut(kt * TILE).enumerate().for_each(pack_a_tile);
            bp.par_chunks_mut(kt * TILE).enumerate().for_each(pack_b_tile);
        } else {
            ap.chunks_mut(kt * TILE).enumerate().for_each(pack_a_tile);
            bp.chunks_mut(kt * TILE).enumerate().for_each(pack_b_tile);
        }
        let (mb, nb) = (mt / 2, nt / 2);
        let blocks = mb * nb;
        let out = SendPtr::new(dst);
        let (ap, bp) = (&ap[..], &bp[..]);
        let run = |range: std::ops::Range<usize>| {
            let _tiles = TileState::load();
            #[repr(C, align(64))]
            struct Scratch([f32; 4 * TM * TN]); // one 32×32 block, row-major
            let mut scratch = Scratch([0f32; 4 * TM * TN]);
            let scratch = &mut scratch.0;
            for blk in range {
                // m-major: consecutive blocks reuse the same A panels from cache.
                let (bi, bj) = (blk / nb, blk % nb);
                let a0 = ap.as_ptr().add(2 * bi * kt * TILE);
                let a1 = a0.add(kt * TILE);
                let b0 = bp.as_ptr().add(2 * bj * kt * TILE);
                let b1 = b0.add(kt * TILE);
                let (r0, c0) = (2 * bi * TM, 2 * bj * TN);
                if r0 + 2 * TM <= m && c0 + 2 * TN <= n && scale == 1.0 {
                    // A full 32×32 block: the tiles load from and store to dst directly (no
                    // scratch copy; 10% of a small model's step went into that copy).
                    block_2x2(a0, a1, b0, b1, kt, out.add(r0 * dst_rs + c0), dst_rs, accumulate);
                    continue;
                }
                // An edge block: computed into scratch, then its part inside C copied or added.
                block_2x2(a0, a1, b0, b1, kt, scratch.as_mut_ptr(), 2 * TN, false);
                if r0 < m && c0 < n {
                    let (rows, cols) = ((m - r0).min(2 * TM), (n - c0).min(2 * TN));
                    for r in 0..rows {
                        let d = std::slice::from_raw_parts_mut(out.add((r0 + r) * dst_rs + c0), cols);
                        let s = &scratch[r * 2 * TN..r * 2 * TN + cols];
                        if accumulate {
                            d.iter_mut().zip(s).for_each(|(d, s)| *d += scale * s);
                        } else if scale == 1.0 {
                            d.copy_from_slice(s);
                        } else {
                            d.iter_mut().zip(s).for_each(|(d, s)| *d = scale * s);
                        }
                    }
                }
            }
        };
        if parallel && blocks > 1 {
            let tasks = (rayon::current_num_threads() * 4).min(blocks);
            (0..tasks).into_par_iter().for_each(|t| run(t * blocks / tasks..(t + 1) * blocks / tasks));
        } else {
            run(0..blocks);
        }
    }
}

/// Byte offsets of the 16 rows of a tile (64 bytes apart), for scatters down a column.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn row_offsets() -> std::arch::x86_64::__m512i {
    use std::arch::x86_64::*;
    // SAFETY: AVX-512 F is present: callers are compiled for it and run only after AMX detection,
    // which requires it.
    unsafe {
        _mm512_setr_epi32(0, 64, 128, 192, 256, 320, 384, 448, 512, 576, 640, 704, 768, 832, 896, 960)
    }
}

/// Mask of the first `n` (≤ 16) lanes.
#[inline(always)]
fn lanes(n: usize) -> u16 {
    if n >= 16 {
        u16::MAX
    } else {
        (1u16 << n) - 1
    }
}

/// 16 floats at `p` (lanes past `n` read as zero), rounded to bf16, as the low halves of
/// 16 u32 lanes.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bf16,avx512bw,avx512vl")]
#[inline]
unsafe fn load_bf16_lo(p: *const f32, n: usize) -> std::arch::x86_64::__m512i {
    use std::arch::x86_64::*;
    // SAFETY: the caller guarantees that the first `n` floats at `p` are readable; the
    // masked load touches no other lane.
    unsafe {
        if n == 0 {
            return _mm512_setzero_si512();
        }
        let v = _mm512_maskz_loadu_ps(lanes(n), p);
        _mm512_cvtepu16_epi32(std::mem::transmute::<__m256bh, __m256i>(_mm512_cvtneps_pbh(v)))
    }
}

/// Row panel `mi` of A (rows mi·16 .. +16) as kt tiles of 16×32 bf16, zero-padded. Every
/// element of the panel is written.
#[cfg(target_arch = "x86_64")]
#[inline(never)]
#[target_feature(enable = "avx512f,avx512bf16,avx512bw,avx512vl")]
unsafe fn pack_a(panel: &mut [u16], a: Strided, m: usize, k: usize, mi: usize, kt: usize) {
    use std::arch::x86_64::*;
    // SAFETY: the caller guarantees that A covers m×k elements through its strides and that
    // the panel holds kt tiles; rows ≥ `rows` and k past `k` are masked or zero-filled, never
    // read, and every store lands inside the panel (tile ki, row r < 16, 64 bytes).
    unsafe {
        let rows = m.saturating_sub(mi * TM).min(TM);
        if rows == 0 {
            panel.fill(0);
            return;
        }
        let out = panel.as_mut_ptr();
        let base = a.ptr.offset((mi * TM) as isize * a.rs);
        if a.cs == 1 {
            // Row-major: 32 consecutive k of a row are one 64-byte tile row.
            for r in 0..TM {
                let src = base.offset(r as isize * a.rs);
                for ki in 0..kt {
                    let dst = out.add(ki * TILE + r * TK) as *mut __m512i;
                    let left = if r < rows { k - ki * TK } else { 0 };
                    let lo = _mm512_maskz_loadu_ps(lanes(left), src.add(ki * TK));
                    let hi = _mm512_maskz_loadu_ps(lanes(left.saturating_sub(16)), src.add(ki * TK + 16));
                    _mm512_storeu_si512(dst, std::mem::transmute::<__m512bh, __m512i>(_mm512_cvtne2ps_pbh(hi, lo)));
                }
            }
        } else if a.rs == 1 {
            // Column-major (a transposed view): k and k+1 of 16 rows are two contiguous runs;
            // interleaved they are one 4-byte column of the tile, scattered down its rows.
            for ki in 0..kt {
                for p in 0..TK / 2 {
                    let kk = ki * TK + 2 * p;
                    let even = load_bf16_lo(base.offset(kk as isize * a.cs), if kk < k { rows } else { 0 });
                    let odd = load_bf16_lo(base.offset((kk + 1) as isize * a.cs), if kk + 1 < k { rows } else { 0 });
                    let pair = _mm512_or_si512(even, _mm512_slli_epi32::<16>(odd));
                    _mm512_i32scatter_epi32::<1>(out.add(ki * TILE + 2 * p) as *mut _, row_offsets(), pair);
                }
            }
        } else {
            panel.fill(0);
            for r in 0..rows {
                for kk in 0..k {
                    panel[(kk / TK) * TILE + r * TK + kk % TK] = to_bf16(*base.offset(r as isize * a.rs + kk as isize * a.cs));
                }
            }
        }
    }
}

/// Column panel `ni` of B (columns ni·16 .. +16) as kt tiles in the VNNI layout: tile row p
/// holds k = 2p and 2p+1 of the tile's 32, interleaved per column: [c0k0 c0k1 c1k0 c1k1 …].
/// Every element of the panel is written.
#[cfg(target_arch = "x86_64")]
#[inline(never)]
#[target_feature(enable = "avx512f,avx512bf16,avx512bw,avx512vl")]
unsafe fn pack_b(panel: &mut [u16], b: Strided, k: usize, n: usize, ni: usize, kt: usize) {
    use std::arch::x86_64::*;
    // SAFETY: the caller guarantees that B covers k×n elements through its strides and that
    // the panel holds kt tiles; columns ≥ `cols` and k past `k` are masked or zero-filled,
    // never read, and every store lands inside the panel (tile ki, row < 16, 64 bytes).
    unsafe {
        let cols = n.saturating_sub(ni * TN).min(TN);
        if cols == 0 {
            panel.fill(0);
            return;
        }
        let out = panel.as_mut_ptr();
        let base = b.ptr.offset((ni * TN) as isize * b.cs);
        if b.cs == 1 {
            // Row-major: rows k and k+1 interleaved are one 64-byte tile row.
            for ki in 0..kt {
                for p in 0..TK / 2 {
                    let kk = ki * TK + 2 * p;
                    let even = load_bf16_lo(base.offset(kk as isize * b.rs), if kk < k { cols } else { 0 });
                    let odd = load_bf16_lo(base.offset((kk + 1) as isize * b.rs), if kk + 1 < k { cols } else { 0 });
                    let pair = _mm512_or_si512(even, _mm512_slli_epi32::<16>(odd));
                    _mm512_storeu_si512(out.add(ki * TILE + p * TK) as *mut __m512i, pair);
                }
            }
        } else if b.rs == 1 {
            // Column-major (the transposed weight of a linear layer): 32 consecutive k of a
            // column convert to 16 bf16 pairs, one per tile row, scattered down the column.
            for c in 0..TN {
                let src = base.offset(c as isize * b.cs);
                for ki in 0..kt {
                    let left = if c < cols { k - ki * TK } else { 0 };
                    let lo = _mm512_maskz_loadu_ps(lanes(left), src.add(ki * TK));
                    let hi = _mm512_maskz_loadu_ps(lanes(left.saturating_sub(16)), src.add(ki * TK + 16));
                    let pairs = std::mem::transmute::<__m512bh, __m512i>(_mm512_cvtne2ps_pbh(hi, lo));
                    _mm512_i32scatter_epi32::<1>(out.add(ki * TILE + 2 * c) as *mut _, row_offsets(), pairs);
                }
            }
        } else {
            panel.fill(0);
            for kk in 0..k {
                for c in 0..cols {
                    panel[(kk / TK) * TILE + ((kk % TK) / 2) * TK + 2 * c + (kk & 1)] =
                        to_bf16(*base.offset(kk as isize * b.rs + c as isize * b.cs));
                }
            }
        }
    }
}

#[cfg(not(target_arch = "x86_64"))]
unsafe fn pack_a(_: &mut [u16], _: Strided, _: usize, _: usize, _: usize, _: usize) {
    unreachable!("AMX exists only on x86-64; amx_available() is false elsewhere")
}

#[cfg(not(target_arch = "x86_64"))]
unsafe fn pack_b(_: &mut [u16], _: Strided, _: usize, _: usize, _: usize, _: usize) {
    unreachable!("AMX exists only on x86-64; amx_available() is false elsewhere")
}

/// The 64-byte tile configuration `ldtilecfg` reads: palette 1, eight tiles of 16 rows × 64 bytes.
#[repr(C, align(64))]
struct TileConfig {
    palette: u8,
    start_row: u8,
    reserved: [u8; 14],
    colsb: [u16; 16],
    rows: [u8; 16],
}

/// Tile registers configured for this thread while alive; released on drop so the OS need
/// not keep saving 8 KiB of tile state for a thread that no longer uses it.
struct TileState;

impl TileState {
    fn load() -> Self {
        let mut cfg = TileConfig { palette: 1, start_row: 0, reserved: [0; 14], colsb: [0; 16], rows: [0; 16] };
        for t in 0..8 {
            cfg.colsb[t] = 64;
            cfg.rows[t] = 16;
        }
        // SAFETY: AMX availability (and the OS permission) was checked before any caller
        // got here; the config is valid for palette 1.
        #[cfg(target_arch = "x86_64")]
        unsafe {
            std::arch::asm!("ldtilecfg [{}]", in(reg) &cfg as *const TileConfig, options(nostack));
        }
        TileState
    }
}

impl Drop for TileState {
    fn drop(&mut self) {
        // SAFETY: this thread loaded a tile configuration in `load`; releasing it only
        // clears the tile registers, which nothing uses after this guard.
        #[cfg(target_arch = "x86_64")]
        unsafe {
            std::arch::asm!("tilerelease", options(nostack, nomem));
        }
    }
}

/// The 32×32 block of C at `c` (row stride `ld` floats, four 16×16 f32 tiles) gets
/// [A0; A1] · [B0 B1] over kt k-tiles: added to it when accumulating (the tiles load C
/// first), written otherwise. Each A/B panel's tiles lie 1 KiB apart, rows 64 bytes apart.
#[cfg(target_arch = "x86_64")]
#[allow(clippy::too_many_arguments)]
unsafe fn block_2x2(a0: *const u16, a1: *const u16, b0: *const u16, b1: *const u16, kt: usize, c: *mut f32, ld: usize, accumulate: bool) {
    use std::arch::asm;
    // SAFETY: the caller guarantees that the four A/B panels hold kt tiles each and that the
    // 32×32 block at `c` (row stride `ld`) is writable (and initialised when accumulating); the
    // tile registers were configured by this thread's TileState.
    unsafe {
        let stride = 64usize;
        let cs = ld * 4;
        let (c0, c1, c2, c3) = (c, c.add(TN), c.add(TM * ld), c.add(TM * ld + TN));
        if accumulate {
            asm!(
                "tileloadd tmm0, [{c0} + {s}*1]",
                "tileloadd tmm1, [{c1} + {s}*1]",
                "tileloadd tmm2, [{c2} + {s}*1]",
                "tileloadd tmm3, [{c3} + {s}*1]",
                c0 = in(reg) c0, c1 = in(reg) c1, c2 = in(reg) c2, c3 = in(reg) c3, s = in(reg) cs,
                options(nostack, readonly),
            );
        } else {
            asm!("tilezero tmm0", "tilezero tmm1", "tilezero tmm2", "tilezero tmm3", options(nostack, nomem));
        }
        for ki in 0..kt {
            let off = ki * TILE;
            asm!(
                "tileloadd tmm4, [{a0} + {s}*1]",
                "tileloadd tmm6, [{b0} + {s}*1]",
                "tileloadd tmm5, [{a1} + {s}*1]",
                "tileloadd tmm7, [{b1} + {s}*1]",
                "tdpbf16ps tmm0, tmm4, tmm6",
                "tdpbf16ps tmm1, tmm4, tmm7",
                "tdpbf16ps tmm2, tmm5, tmm6",
                "tdpbf16ps tmm3, tmm5, tmm7",
                a0 = in(reg) a0.add(off),
                a1 = in(reg) a1.add(off),
                b0 = in(reg) b0.add(off),
                b1 = in(reg) b1.add(off),
                s = in(reg) stride,
                options(nostack, readonly),
            );
        }
        asm!(
            "tilestored [{c0} + {s}*1], tmm0",
            "tilestored [{c1} + {s}*1], tmm1",
            "tilestored [{c2} + {s}*1], tmm2",
            "tilestored [{c3} + {s}*1], tmm3",
            c0 = in(reg) c0, c1 = in(reg) c1, c2 = in(reg) c2, c3 = in(reg) c3, s = in(reg) cs,
            options(nostack),
        );
    }
}

#[cfg(not(target_arch = "x86_64"))]
#[allow(clippy::too_many_arguments)]
unsafe fn block_2x2(_: *const u16, _: *const u16, _: *const u16, _: *const u16, _: usize, _: *mut f32, _: usize, _: bool) {
    unreachable!("AMX exists only on x86-64; amx_available() is false elsewhere")
}


#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    /// f64 reference of A·B over bf16-rounded operands, in the same strided layouts.
    #[allow(clippy::too_many_arguments)]
    fn reference(m: usize, n: usize, k: usize, a: &[f32], ars: usize, acs: usize, b: &[f32], brs: usize, bcs: usize) -> Vec<f64> {
        let mut c = vec![0f64; m * n];
        for i in 0..m {
            for j in 0..n {
                let mut s = 0f64;
                for kk in 0..k {
                    s += bf16_round(a[i * ars + kk * acs]) as f64 * bf16_round(b[kk * brs + j * bcs]) as f64;
                }
                c[i * n + j] = s;
            }
        }
        c
    }

    #[test]
    fn rounding_is_to_nearest_even() {
        assert_eq!(bf16_round(1.0), 1.0);
        // 1 + 2^-8 is halfway between 1 and 1 + 2^-7: ties go to the even mantissa (1.0).
        assert_eq!(bf16_round(1.0 + 1.0 / 256.0), 1.0);
        assert_eq!(bf16_round(1.0 + 3.0 / 256.0), 1.0 + 4.0 / 256.0);
        assert!(bf16_round(f32::NAN).is_nan());
        assert_eq!(bf16_round(f32::INFINITY), f32::INFINITY);
    }

    #[test]
    fn matches_the_rounded_reference_for_any_shape_and_layout() {
        if !amx_available() {
            eprintln!("no AMX on this CPU: the bf16 tile path is not exercised here");
            return;
        }
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
        for &(m, n, k) in &[(1, 1, 1), (16, 16, 32), (33, 17, 65), (70, 130, 300), (128, 65, 128), (5, 200, 7)] {
            for (a_t, b_t) in [(false, false), (true, false), (false, true), (true, true)] {
                let a: Vec<f32> = (0..m * k).map(|_| rng.random_range(-1.0..1.0)).collect();
                let b: Vec<f32> = (0..k * n).map(|_| rng.random_range(-1.0..1.0)).collect();
                let (ars, acs) = if a_t { (1, m) } else { (k, 1) };
                let (brs, bcs) = if b_t { (1, k) } else { (n, 1) };
                let want = reference(m, n, k, &a, ars, acs, &b, brs, bcs);
                for parallel in [false, true] {
                    // Row stride wider than n, to check that the padding columns stay untouched.
                    let ld = n + 3;
                    let mut c = vec![7f32; m * ld];
                    // SAFETY: a, b and c hold m·k, k·n and m·ld floats in the layouts given;
                    // the test returned early unless AMX is available.
                    unsafe {
                        gemm_bf16(
                            m,
                            n,
                            k,
                            Strided { ptr: a.as_ptr(), rs: ars as isize, cs: acs as isize },
                            Strided { ptr: b.as_ptr(), rs: brs as isize, cs: bcs as isize },
                            c.as_mut_ptr(),
                            ld,
                            false,
                            1.0,
                            parallel,
                        )
                    };
                    for i in 0..m {
                        for j in 0..n {
                            let (got, w) = (c[i * ld + j] as f64, want[i * n + j]);
                            assert!((got - w).abs() <= 1e-4 * (1.0 + w.abs()), "{m}x{n}x{k} a_t={a_t} b_t={b_t}: c[{i},{j}] = {got}, want {w}");
                        }
                        for j in n..ld {
                            assert_eq!(c[i * ld + j], 7.0, "padding column written");
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn accumulate_adds_the_scaled_product() {
        if !amx_available() {
            return;
        }
        // Small (scratch path), block-aligned and ragged (direct tile stores and loads) shapes.
        for &(m, n, k, scale) in &[(20, 24, 40, 0.5f32), (64, 64, 40, 1.0), (70, 90, 33, 1.0), (64, 96, 64, 0.25)] {
            let a: Vec<f32> = (0..m * k).map(|i| ((i % 7) as f32 - 3.0) * 0.25).collect();
            let b: Vec<f32> = (0..k * n).map(|i| ((i % 5) as f32 - 2.0) * 0.5).collect();
            let want = reference(m, n, k, &a, k, 1, &b, n, 1);
            let ld = n + 5;
            let mut c: Vec<f32> = (0..m * ld).map(|i| (i % 3) as f32).collect();
            let before = c.clone();
            let (sa, sb) = (Strided { ptr: a.as_ptr(), rs: k as isize, cs: 1 }, Strided { ptr: b.as_ptr(), rs: n as isize, cs: 1 });
            // SAFETY: a, b and c hold m·k, k·n and m·ld floats, row-major; AMX is available.
            unsafe { gemm_bf16(m, n, k, sa, sb, c.as_mut_ptr(), ld, true, scale, false) };
            for i in 0..m {
                for j in 0..ld {
                    let (g, b0) = (c[i * ld + j] as f64, before[i * ld + j] as f64);
                    if j < n {
                        let w = b0 + scale as f64 * want[i * n + j];
                        assert!((g - w).abs() < 1e-4 * (1.0 + w.abs()), "{m}x{n}x{k}: c[{i},{j}] = {g}, want {w}");
                    } else {
                        assert_eq!(g, b0, "padding column written");
                    }
                }
            }
        }
    }
}
