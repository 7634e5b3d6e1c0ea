//! Exact f32 matrix products through the `gemm` crate: batches of products (attention
//! heads) spread over the thread pool one product per task, and two independent products
//! run side by side.
//!
//! Why batches: candle runs a batched matmul as a loop of `gemm` calls, each with `gemm`'s
//! own thread split. A head's product (e.g. 64×64×32 in the c1 preset) is below `gemm`'s
//! threshold for using a second thread, so the whole batch ran on one core. Giving each
//! product its own task keeps every core busy. Single large products stay with `gemm`'s
//! split: a measured alternative that cut them into row bands per thread was slower
//! (each band re-packs the whole right operand).
//!
//! The arithmetic is unchanged: every product is the same single-threaded `gemm` call, so
//! results match the sequential loop bit for bit.

use crate::ptr::{SendPtr, Strided};

/// The hook candle's matmul calls for f32 (see vendor/candle-core/FERROLM-PATCH.md).
/// Takes batches of at least one product per thread; leaves the rest to `gemm`.
///
/// # Safety
/// candle's contract for the hook: the pointers, strides and skips of `p` describe the
/// operands and destination of `p.batch` products, and dst aliases neither operand.
pub(crate) unsafe fn candle_hook(p: candle_core::cpu_backend::F32Gemm) -> bool {
    if p.dst_rs < p.n as isize {
        return false;
    }
    if p.batch < 2 || p.batch < rayon::current_num_threads() {
        return false;
    }
    let a = Strided { ptr: p.lhs, rs: p.lhs_rs, cs: p.lhs_cs };
    let b = Strided { ptr: p.rhs, rs: p.rhs_rs, cs: p.rhs_cs };
    // SAFETY: candle's hook contract (above) is gemm_f32_batched's; dst rows are at least
    // n wide (checked), so the items' outputs are the disjoint blocks candle lays out.
    unsafe { gemm_f32_batched(p.batch, p.m, p.n, p.k, a, p.lhs_skip, b, p.rhs_skip, p.dst, p.dst_rs as usize, p.dst_skip) };
    true
}

/// Two independent exact-f32 products `dst = A·B` run side by side, each on half of the
/// pool (one thread each with two threads).
///
/// Why: a linear layer's backward has two products of the same size, dX = dY·W and
/// dW = dYᵀ·X. Run one after the other, each is split over both cores by `gemm`, which
/// synchronises its threads at every block; run together, each core does one product
/// alone, start to end, with its own packed operands in its own cache.
///
/// # Safety
/// As for [`crate::matmul::matmul`], for both products; the two destinations must not overlap.
pub unsafe fn two_products_f32(first: Product, second: Product) {
    let threads = rayon::current_num_threads();
    let parallelism = if threads >= 4 { gemm::Parallelism::Rayon(threads / 2) } else { gemm::Parallelism::None };
    // SAFETY: the caller's contract covers each product, and the destinations are disjoint,
    // so the two tasks never touch the same memory.
    let run = move |p: Product| unsafe { gemm_call(p.m, p.n, p.k, p.a, p.b, p.dst.get(), p.dst_rs, false, 1.0, parallelism) };
    rayon::join(|| run(first), || run(second));
}

/// One product `dst[m×n] = A·B` for [`two_products_f32`]; dst has column stride 1.
#[derive(Clone, Copy)]
pub struct Product {
    pub m: usize,
    pub n: usize,
    pub k: usize,
    pub a: Strided,
    pub b: Strided,
    pub dst: SendPtr<f32>,
    pub dst_rs: usize,
}

/// `batch` products `dst_i[m×n] = A_i·B_i` (any strides; dst row stride `dst_rs`, column
/// stride 1), item i starting `i * skip` elements after each pointer, one task per item.
///
/// # Safety
/// The pointers must cover the matrices their strides and skips describe, dst must not
/// alias A or B, and the items' destinations must not overlap.
#[allow(clippy::too_many_arguments)]
pub unsafe fn gemm_f32_batched(
    batch: usize,
    m: usize,
    n: usize,
    k: usize,
    a: Strided,
    a_skip: usize,
    b: Strided,
    b_skip: usize,
    dst: *mut f32,
    dst_rs: usize,
    dst_skip: usize,
) {
    use rayon::prelude::*;
    let dst = SendPtr::new(dst);
    (0..batch).into_par_iter().for_each(|i| {
        // SAFETY: item i's operands and destination lie inside the matrices the caller
        // described; each task writes only its own item's destination.
        unsafe { band(m, n, k, a.skip(i * a_skip), b.skip(i * b_skip), dst.add(i * dst_skip), dst_rs) };
    });
}

/// One single-threaded product, written (not accumulated) into dst.
///
/// # Safety
/// As for [`gemm_call`].
unsafe fn band(m: usize, n: usize, k: usize, a: Strided, b: Strided, dst: *mut f32, dst_rs: usize) {
    // SAFETY: the caller's contract is gemm_call's.
    unsafe { gemm_call(m, n, k, a, b, dst, dst_rs, false, 1.0, gemm::Parallelism::None) }
}

/// `dst := [dst +] scale · A·B` through the gemm crate; dst has column stride 1.
///
/// # Safety
/// The pointers must cover the matrices their strides describe, and dst must not alias
/// A or B; no other thread may access dst's elements during the call.
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn gemm_call(
    m: usize,
    n: usize,
    k: usize,
    a: Strided,
    b: Strided,
    dst: *mut f32,
    dst_rs: usize,
    accumulate: bool,
    scale: f32,
    parallelism: gemm::Parallelism,
) {
    // SAFETY: gemm reads A and B and writes dst through the strides given, which the
    // caller guarantees describe live, non-aliasing matrices.
    unsafe {
        gemm::gemm(
            m, n, k,
            dst, 1, dst_rs as isize, accumulate,
            a.ptr, a.cs, a.rs,
            b.ptr, b.cs, b.rs,
            if accumulate { 1.0 } else { 0.0 }, scale,
            false, false, false,
            parallelism,
        )
    }
}

/// `y[r][col0 + j] = Σ_i x[r][i] · W[j][i]` — x·Wᵀ for x (m × k, row-major) and a matrix W
/// (n × k) that is held compact (quantized blocks or halves) and widened to f32 a panel of
/// rows at a time by `dequant(first_row, out)` (whole rows into `out`); y is m × ld,
/// row-major. Panels are spread over the rayon threads, each dequantized into a buffer of
/// its thread and multiplied on that thread: a prompt's rows by `prompt_linear`'s tiles
/// (the rows transposed once for all panels), fewer by the few-row kernels
/// (`linear::few_rows_strided`), more — or any on a CPU without AVX2 and FMA — by one
/// single-threaded `gemm` call.
///
/// Why: a prompt's product reads each weight for many input rows, so it is arithmetic-bound
/// and wants f32 multiply-adds; keeping a dense f32 copy of every quantized layer for it
/// cost 3–5× llama.cpp's memory and a long load. Widening a panel costs one pass over its
/// weights, against m multiply-adds per weight in the product.
#[allow(clippy::too_many_arguments)]
pub fn matmul_t_dequantized(x: &[f32], m: usize, k: usize, n: usize, y: &mut [f32], ld: usize, col0: usize, dequant: &(dyn Fn(usize, &mut [f32]) + Sync)) {
    use rayon::prelude::*;
    assert_eq!(x.len(), m * k, "dequantized matmul: x has {} values, expected {m} × {k}", x.len());
    assert!(col0 + n <= ld && y.len() >= m * ld, "dequantized matmul: output too small");
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        for r in 0..m {
            y[r * ld + col0..r * ld + col0 + n].fill(0.0);
        }
        return;
    }
    let rows = panel_rows(n, k, rayon::current_num_threads());
    let dst = SendPtr::new(y.as_mut_ptr());
    let panels = n.div_ceil(rows);
    // A prompt's rows, transposed once for every panel's tiles (`prompt_linear`).
    let packed = if crate::prompt_linear::takes(m) { crate::prompt_linear::Panels::new(x, m, k) } else { None };
    (0..panels).into_par_iter().for_each(|p| {
        let (first, count) = (p * rows, rows.min(n - p * rows));
        PANEL.with(|buf| {
            let mut buf = buf.borrow_mut();
            if buf.len() < count * k {
                buf.resize(count * k, 0.0);
            }
            let panel = &mut buf[..count * k];
            dequant(first, panel);
            if let Some(packed) = &packed {
                // SAFETY: dst + col0 + first with row stride ld addresses the m × count
                // block of y at columns col0 + first .. col0 + first + count ≤ col0 + n ≤
                // ld, inside y (asserted) and disjoint from every other panel's block; the
                // panel holds count rows of k.
                unsafe { packed.columns(panel, 0, count, None, SendPtr::new(dst.get().add(col0 + first)), ld) };
                return;
            }
            // Fewer rows than a prompt's (a batch of decoding steps) the few-row kernels, as
            // for dense weights (see `linear::FEW_ROWS`); more rows than the tiles take, or
            // a CPU without AVX2 and FMA, gemm.
            // SAFETY: dst + col0 + first with row stride ld addresses the m × count block of
            // y at columns col0 + first .. col0 + first + count ≤ col0 + n ≤ ld, inside y
            // (asserted) and disjoint from every other panel's block.
            if unsafe { crate::linear::few_rows_strided(x, panel, m, count, k, SendPtr::new(dst.get().add(col0 + first)), ld) } {
                return;
            }
            let a = Strided::row_major(x, k);
            // Wᵀ restricted to the panel: element (i, j) is panel[j·k + i].
            let b = Strided { ptr: panel.as_ptr(), rs: 1, cs: k as isize };
            // SAFETY: a is x (m × k, row-major), b the panel's transpose (k × count) inside
            // the buffer, and dst + col0 + first with row stride ld addresses the m × count
            // block of y at columns col0 + first .. col0 + first + count ≤ col0 + n ≤ ld,
            // inside y (asserted) and disjoint from every other panel's block.
            unsafe { gemm_call(m, count, k, a, b, dst.get().add(col0 + first), ld, false, 1.0, gemm::Parallelism::None) };
        });
    });
}

/// `dx = dy·W` for dy (m × n, row-major) and a matrix W (n × k) held compact and widened
/// to f32 a panel of rows at a time by `dequant(first_row, out)`; dx is m × k, row-major,
/// overwritten. The input gradient of [`matmul_t_dequantized`]'s product: what a LoRA
/// adapter below a quantized layer needs to receive its gradient (QLoRA).
///
/// The rows of dy are cut into one band per thread (bands of at least 32 rows); each band
/// walks all panels, widening each into its thread's buffer and adding `dy[band, panel]·panel`
/// into its rows of dx. Every band widens every panel once, which costs one pass over the
/// weights against the band's rows of multiply-adds per weight.
pub fn matmul_dequantized(dy: &[f32], m: usize, n: usize, k: usize, dx: &mut [f32], dequant: &(dyn Fn(usize, &mut [f32]) + Sync)) {
    use rayon::prelude::*;
    assert_eq!(dy.len(), m * n, "dequantized matmul (input gradient): dy has {} values, expected {m} × {n}", dy.len());
    assert_eq!(dx.len(), m * k, "dequantized matmul (input gradient): dx has {} values, expected {m} × {k}", dx.len());
    dx.fill(0.0);
    if m == 0 || n == 0 || k == 0 {
        return;
    }
    let bands = rayon::current_num_threads().min(m.div_ceil(32)).max(1);
    let band_rows = m.div_ceil(bands);
    let rows = panel_rows(n, k, 1);
    dx.par_chunks_mut(band_rows * k).enumerate().for_each(|(b, out)| {
        let (r0, mb) = (b * band_rows, out.len() / k);
        PANEL.with(|buf| {
            let mut buf = buf.borrow_mut();
            let mut first = 0;
            while first < n {
                let count = rows.min(n - first);
                if buf.len() < count * k {
                    buf.resize(count * k, 0.0);
                }
                let panel = &mut buf[..count * k];
                dequant(first, panel);
                // dy's columns first .. first + count of the band's rows (row stride n)
                let a = Strided { ptr: dy[r0 * n + first..].as_ptr(), rs: n as isize, cs: 1 };
                let b = Strided::row_major(panel, k);
                // SAFETY: a addresses mb rows × count columns of dy (r0 + mb ≤ m, first +
                // count ≤ n), b the count × k panel in the buffer, and out is this band's
                // own mb × k rows of dx, which no other task touches.
                unsafe { gemm_call(mb, k, count, a, b, out.as_mut_ptr(), k, first > 0, 1.0, gemm::Parallelism::None) };
                first += count;
            }
        });
    });
}

thread_local! {
    /// A thread's buffer for [`matmul_t_dequantized`]'s panels (reused across products).
    static PANEL: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Weight rows per panel: a panel of about a MiB of f32 (it stays in L2 while `gemm` reads
/// it), a multiple of 16 between 16 and 256, and at least four panels per thread when the
/// matrix has the rows (so that threads finish together).
fn panel_rows(n: usize, k: usize, threads: usize) -> usize {
    let by_cache = (262_144 / k.max(1)).clamp(64, 256);
    let by_threads = n.div_ceil(4 * threads.max(1));
    by_cache.min(by_threads).next_multiple_of(16).max(16)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Values uniform in ±0.5 from a seeded linear congruential generator.
    fn uniform(mut seed: u64) -> impl FnMut() -> f32 {
        move || {
            seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((seed >> 40) as f32 / (1u64 << 24) as f32) - 0.5
        }
    }

    #[test]
    fn a_product_over_dequantized_panels_equals_the_dense_product() {
        let pool = rayon::ThreadPoolBuilder::new().num_threads(3).build().unwrap();
        let mut rnd = uniform(11);
        // n not a multiple of any panel size; k that gives one-panel, many-panel and minimum cases
        for &(m, n, k) in &[(9, 70, 32), (17, 300, 576), (3, 1000, 5000), (40, 1, 7)] {
            let x: Vec<f32> = (0..m * k).map(|_| rnd()).collect();
            let w: Vec<f32> = (0..n * k).map(|_| rnd()).collect();
            // "quantized" as the values times 2: the product must read the dequantized rows
            let dequant = |first: usize, out: &mut [f32]| {
                for (o, v) in out.iter_mut().zip(&w[first * k..]) {
                    *o = 2.0 * v;
                }
            };
            let (ld, col0) = (n + 7, 3);
            let mut y = vec![9f32; m * ld];
            pool.install(|| matmul_t_dequantized(&x, m, k, n, &mut y, ld, col0, &dequant));
            for r in 0..m {
                for j in 0..ld {
                    let got = y[r * ld + j];
                    if j < col0 || j >= col0 + n {
                        assert_eq!(got, 9.0, "({r}, {j}) outside the columns was written");
                        continue;
                    }
                    let c = j - col0;
                    let want: f64 = (0..k).map(|i| x[r * k + i] as f64 * 2.0 * w[c * k + i] as f64).sum();
                    assert!((got as f64 - want).abs() < 1e-4 * (k as f64).sqrt(), "({m},{n},{k}) at ({r}, {c}): {got} vs {want}");
                }
            }
        }
    }

    #[test]
    fn the_input_gradient_over_dequantized_panels_equals_the_dense_product() {
        let pool = rayon::ThreadPoolBuilder::new().num_threads(3).build().unwrap();
        let mut rnd = uniform(5);
        // one band and several (m ≥ 64), one panel and many, tiny shapes
        for &(m, n, k) in &[(9, 70, 32), (130, 300, 576), (3, 1000, 500), (40, 1, 7), (1, 5, 1)] {
            let dy: Vec<f32> = (0..m * n).map(|_| rnd()).collect();
            let w: Vec<f32> = (0..n * k).map(|_| rnd()).collect();
            let dequant = |first: usize, out: &mut [f32]| {
                for (o, v) in out.iter_mut().zip(&w[first * k..]) {
                    *o = 2.0 * v;
                }
            };
            let mut dx = vec![9f32; m * k];
            pool.install(|| matmul_dequantized(&dy, m, n, k, &mut dx, &dequant));
            for r in 0..m {
                for c in 0..k {
                    let want: f64 = (0..n).map(|j| dy[r * n + j] as f64 * 2.0 * w[j * k + c] as f64).sum();
                    let got = dx[r * k + c] as f64;
                    assert!((got - want).abs() < 1e-4 * (n as f64).sqrt(), "({m},{n},{k}) at ({r}, {c}): {got} vs {want}");
                }
            }
        }
    }

    #[test]
    fn batched_products_equal_the_sequential_loop_bit_for_bit() {
        let pool = rayon::ThreadPoolBuilder::new().num_threads(3).build().unwrap();
        let mut rnd = uniform(7);
        for &(batch, m, n, k) in &[(5, 31, 17, 9), (8, 64, 64, 32), (3, 1, 40, 7)] {
            for (ta, tb) in [(false, false), (true, false), (false, true), (true, true)] {
                let av: Vec<f32> = (0..batch * m * k).map(|_| rnd()).collect();
                let bv: Vec<f32> = (0..batch * k * n).map(|_| rnd()).collect();
                let a = if ta { Strided { ptr: av.as_ptr(), rs: 1, cs: m as isize } } else { Strided { ptr: av.as_ptr(), rs: k as isize, cs: 1 } };
                let b = if tb { Strided { ptr: bv.as_ptr(), rs: 1, cs: k as isize } } else { Strided { ptr: bv.as_ptr(), rs: n as isize, cs: 1 } };
                // dst rows wider than n: the padding must stay untouched.
                let (ld, skip) = (n + 5, m * (n + 5));
                let mut par = vec![9f32; batch * skip];
                let mut seq = vec![9f32; batch * skip];
                // SAFETY: av, bv hold batch items of m·k and k·n floats in the layouts the
                // strides describe; par holds batch items of m rows of ld ≥ n floats.
                pool.install(|| unsafe { gemm_f32_batched(batch, m, n, k, a, m * k, b, k * n, par.as_mut_ptr(), ld, skip) });
                for i in 0..batch {
                    // SAFETY: item i < batch starts inside av and bv.
                    let (ai, bi) = unsafe { (a.skip(i * m * k), b.skip(i * k * n)) };
                    // SAFETY: as for the batched call, for item i alone.
                    unsafe { band(m, n, k, ai, bi, seq.as_mut_ptr().add(i * skip), ld) };
                    // Each item is its own product: check one element against an f64 dot.
                    let (r, c) = (m / 2, n / 3);
                    let exact: f64 = (0..k)
                        // SAFETY: row r < m, column c < n and p < k lie inside item i.
                        .map(|p| unsafe {
                            *ai.ptr.offset(r as isize * ai.rs + p as isize * ai.cs) as f64
                                * *bi.ptr.offset(p as isize * bi.rs + c as isize * bi.cs) as f64
                        })
                        .sum();
                    assert!((par[i * skip + r * ld + c] as f64 - exact).abs() < 1e-4, "item {i}");
                    for row in 0..m {
                        let pad = &par[i * skip + row * ld + n..i * skip + (row + 1) * ld];
                        assert!(pad.iter().all(|&x| x == 9.0), "padding written");
                    }
                }
                assert_eq!(par, seq, "{batch}x{m}x{n}x{k} ta={ta} tb={tb}");
            }
        }
    }
}
