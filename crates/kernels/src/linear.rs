//! A linear layer's product, `y = x·Wᵀ + b`, as one fused op on CPU with its backward.
//! Inputs of any rank are flattened to rows first, so the weight gradient is one plain
//! matmul rather than a broadcast batched matmul followed by a reduction.
//!
//! Why fused: composed from candle ops, the forward is a matmul against the transposed
//! view `Wᵀ` and a separate bias pass, and autograd hands `W` the gradient of `Wᵀ`, a
//! transposed view that must then be copied element by element into a contiguous tensor
//! (2.7% of a c1 training step in perf). Here the bias is the matmul's starting value and
//! the backward computes `dW = dYᵀ·X` directly in W's own layout, dX and dW side by side
//! on two cores (see [`crate::sgemm::two_products_f32`]).

use crate::bias::{add_bias, column_sum};
use crate::cpu::{contiguous_f32, fill_rows, output_buffer, tensor_f32};
use crate::matmul::{matmul, matmul_precision, MatmulPrecision, Threads};
use crate::ptr::{SendPtr, Strided};
use crate::sgemm::{two_products_f32, Product};
use candle_core::{CpuStorage, CustomOp2, CustomOp3, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

/// The name the backward's errors carry.
const BWD: &str = "ferrolm-linear-bwd";

/// `x·wᵀ (+ b)` for `x` of any rank (…, k) and `w` (n, k): one fused op with its backward
/// for f32 on the CPU, composed candle ops otherwise. Differentiable in x, w and b.
pub fn linear(x: &Tensor, w: &Tensor, b: Option<&Tensor>) -> Result<Tensor> {
    let dims = x.dims().to_vec();
    let k = dims[dims.len() - 1];
    let rows = x.elem_count() / k;
    let x2 = x.contiguous()?.reshape((rows, k))?;
    let fused = x.device().is_cpu() && x.dtype() == candle_core::DType::F32 && w.dtype() == candle_core::DType::F32;
    let y = match (b, fused) {
        (Some(b), true) => x2.apply_op3(&w.contiguous()?, &b.contiguous()?, LinearOp)?,
        (None, true) => x2.apply_op2(&w.contiguous()?, LinearOp)?,
        (Some(b), false) => add_bias(&x2.matmul(&w.t()?)?, b)?,
        (None, false) => x2.matmul(&w.t()?)?,
    };
    let mut out_dims = dims;
    *out_dims.last_mut().expect("rank >= 1") = w.dim(0)?;
    y.reshape(out_dims)
}

/// `x (rows×k) · wᵀ (+ b)` for w (n×k), into a fresh rows×n buffer: a prompt's rows
/// ([`crate::prompt_linear::PROMPT_ROWS`] to [`crate::prompt_linear::PROMPT_MAX_ROWS`]) by
/// `prompt_linear`'s register tiles (AVX-512 or AVX2+FMA), few rows by [`few_rows`],
/// more by the precision dispatch's product. Also the base product of
/// [`crate::lora_linear`].
pub(crate) fn forward_f32(x: &[f32], rows: usize, k: usize, w: &[f32], n: usize, b: Option<&[f32]>) -> Result<Vec<f32>> {
    if x.len() != rows * k || w.len() != n * k || b.is_some_and(|b| b.len() != n) {
        candle_core::bail!("ferrolm-linear: x of {} for {rows}×{k}, w of {} for {n}×{k}, bias {:?}", x.len(), w.len(), b.map(|b| b.len()));
    }
    let mut y = output_buffer(rows * n);
    if crate::prompt_linear::takes(rows)
        && matmul_precision() == MatmulPrecision::F32
        && crate::prompt_linear::product(x, rows, k, w, n, b, &mut y)
    {
        return Ok(y);
    }
    if let Some(b) = b {
        // The bias is the product's starting value: no second pass over y.
        fill_rows(&mut y, b);
    }
    if rows <= FEW_ROWS && matmul_precision() == MatmulPrecision::F32 {
        few_rows(x, w, rows, n, k, &mut y, b.is_some());
        return Ok(y);
    }
    let a = Strided { ptr: x.as_ptr(), rs: k as isize, cs: 1 };
    // wᵀ (k×n): element (p, j) is w[j, p].
    let bt = Strided { ptr: w.as_ptr(), rs: 1, cs: k as isize };
    // SAFETY: x is rows×k and w n×k (checked above), so the strides stay inside the
    // slices; y is a fresh rows×n buffer that aliases neither.
    unsafe { matmul(rows, n, k, a, bt, y.as_mut_ptr(), n, b.is_some(), 1.0, Threads::Pool) };
    Ok(y)
}

/// `x (rows×k) · wᵀ (+ b)`; w is (n×k). As CustomOp2 without a bias, CustomOp3 with one.
struct LinearOp;

impl LinearOp {
    fn forward(x: &[f32], xl: &Layout, w: &[f32], wl: &Layout, b: Option<&[f32]>) -> Result<(CpuStorage, Shape)> {
        let (rows, k) = xl.shape().dims2()?;
        let (n, k2) = wl.shape().dims2()?;
        if k != k2 {
            candle_core::bail!("ferrolm-linear: x {:?}, w {:?}", xl.dims(), wl.dims());
        }
        Ok((CpuStorage::F32(forward_f32(x, rows, k, w, n, b)?), Shape::from((rows, n))))
    }

    /// dx = g·w, dw = gᵀ·x (in w's own layout), db = Σ_rows g. A side that autograd does
    /// not track (a frozen weight detached from its variable, as LoRA's base; an input
    /// that depends on no variable) is not computed: frozen layers cost only dx.
    fn backward(x: &Tensor, w: &Tensor, grad: &Tensor, bias: bool) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (need_x, need_w) = (x.track_op(), w.track_op());
        let (x, w, g) = (x.detach(), w.detach(), grad.detach().contiguous()?);
        let (dx, dw) = match (need_x, need_w) {
            (true, true) => match Self::backward_side_by_side(&x, &w, &g)? {
                Some((dx, dw)) => (Some(dx), Some(dw)),
                None => (Some(g.matmul(&w)?), Some(g.t()?.matmul(&x)?)),
            },
            (true, false) => (Some(g.matmul(&w)?), None),
            (false, true) => (None, Some(g.t()?.matmul(&x)?)),
            (false, false) => (None, None),
        };
        let db = if bias { Some(column_sum(&g)?) } else { None };
        Ok((dx, dw, db))
    }

    /// dx and dw as two products run at once (see [`two_products_f32`]), on
    /// CPU in exact f32 with at least two threads; None otherwise.
    fn backward_side_by_side(x: &Tensor, w: &Tensor, g: &Tensor) -> Result<Option<(Tensor, Tensor)>> {
        let exact = matmul_precision() == MatmulPrecision::F32;
        if !exact || !x.device().is_cpu() || x.dtype() != candle_core::DType::F32 || rayon::current_num_threads() < 2 {
            return Ok(None);
        }
        let (x, w) = (x.contiguous()?, w.contiguous()?);
        let ((rows, k), (n, _), (xs, xl), (ws, wl), (gs, gl)) =
            (x.dims2()?, w.dims2()?, x.storage_and_layout(), w.storage_and_layout(), g.storage_and_layout());
        let (xv, wv, gv) = (tensor_f32(&xs, xl, BWD)?, tensor_f32(&ws, wl, BWD)?, tensor_f32(&gs, gl, BWD)?);
        let (mut dx, mut dw) = (output_buffer(rows * k), output_buffer(n * k));
        // dx (rows×k) = g (rows×n) · w (n×k); dw (n×k) = gᵀ (n×rows) · x (rows×k).
        let dx_p = Product { m: rows, n: k, k: n, a: Strided::row_major(gv, n), b: Strided::row_major(wv, k), dst: SendPtr::new(dx.as_mut_ptr()), dst_rs: k };
        let gt = Strided { ptr: gv.as_ptr(), rs: 1, cs: n as isize };
        let dw_p = Product { m: n, n: k, k: rows, a: gt, b: Strided::row_major(xv, k), dst: SendPtr::new(dw.as_mut_ptr()), dst_rs: k };
        // SAFETY: g is rows×n, w n×k and x rows×k (contiguous, shapes from their layouts),
        // so the strides stay inside the slices; dx and dw are fresh, separate buffers of
        // rows·k and n·k elements.
        unsafe { two_products_f32(dx_p, dw_p) };
        let dev = x.device().clone();
        drop((xs, ws, gs));
        Ok(Some((Tensor::from_vec(dx, (rows, k), &dev)?, Tensor::from_vec(dw, (n, k), &dev)?)))
    }
}

/// Inputs of at most this many rows (a decoding step's batch, a short prompt) take
/// [`few_rows`] in exact f32 instead of `gemm`, which packs all of W for every call: at 8
/// rows of a d_model-256 model the MLP's products ran at about 3 GFLOP/s and were three
/// quarters of a step. At 128 rows (a 128-token prompt of SmolLM2-135M's shape) the two are
/// level on one thread and `few_rows` is 24 % faster on two (its weight-row tasks split
/// evenly; perf showed a quarter of gemm's time in packing); at 256 rows gemm is 10 %
/// faster on one thread.
const FEW_ROWS: usize = 128;

/// Weight rows per task of [`few_rows`].
const W_ROWS_PER_TASK: usize = 32;

/// [`few_rows`] products of fewer multiply-adds run on the calling thread: waking the
/// pool cost more than the product (a 683×256 weight at one row: 14 µs on one thread,
/// 34 µs on two, on the 2-core benchmark machine).
const FEW_ROWS_PAR_WORK: usize = 1 << 20;

/// `y (rows×n) [+]= x (rows×k) · wᵀ` for few rows: each task's 32 weight rows are read
/// from memory once and from cache for the later blocks of four rows of x (register
/// blocks of two weight rows × four rows of x, [`dots2x4`]; [`dot16`] for a single row);
/// tasks are split among the rayon threads when the product is large enough. CPUs with
/// AVX-512 take [`avx512::few_rows_task`] instead (twice the rate at 8 rows: see its doc).
/// `accumulate`: y holds the bias already.
fn few_rows(x: &[f32], w: &[f32], rows: usize, n: usize, k: usize, y: &mut [f32], accumulate: bool) {
    let yp = SendPtr::new(y.as_mut_ptr());
    let fma = crate::simd::fma_available();
    let task = |t: usize| {
        let j0 = t * W_ROWS_PER_TASK;
        let j1 = (j0 + W_ROWS_PER_TASK).min(n);
        // SAFETY: x holds rows×k and w n×k values, y rows×n, and this task writes only its
        // columns j0..j1.
        if unsafe { simd_columns(x, w, rows, k, j0, j1, yp, n, accumulate) } {
            return;
        }
        let mut out = [0f32; W_ROWS_PER_TASK * 4];
        crate::simd::vectorized(
            #[inline(always)]
            || {
                let mut i = 0;
                while i < rows {
                    let r = (rows - i).min(4);
                    let xr = |q: usize| &x[(i + q.min(r - 1)) * k..][..k];
                    let xs = [xr(0), xr(1), xr(2), xr(3)];
                    if r == 1 {
                        // a single row (batch 1): one dot product per weight row
                        for j in j0..j1 {
                            let wj = &w[j * k..][..k];
                            out[(j - j0) * 4] = if fma { dot16::<true>(wj, xs[0]) } else { dot16::<false>(wj, xs[0]) };
                        }
                    } else {
                        let mut j = j0;
                        while j < j1 {
                            // an odd last weight row is paired with itself
                            let j2 = (j + 1).min(j1 - 1);
                            let (w0, w1) = (&w[j * k..][..k], &w[j2 * k..][..k]);
                            let d = if fma { dots2x4::<true>(w0, w1, xs) } else { dots2x4::<false>(w0, w1, xs) };
                            out[(j - j0) * 4..][..4].copy_from_slice(&d[..4]);
                            out[(j2 - j0) * 4..][..4].copy_from_slice(&d[4..]);
                            j += 2;
                        }
                    }
                    for q in 0..r {
                        for j in j0..j1 {
                            let v = out[(j - j0) * 4 + q];
                            // SAFETY: row i + q < rows and column j < n of the rows×n
                            // buffer y; tasks own disjoint column ranges j0..j1, and y
                            // outlives the (joined) tasks.
                            unsafe {
                                let e = yp.add((i + q) * n + j);
                                *e = if accumulate { *e + v } else { v };
                            }
                        }
                    }
                    i += 4;
                }
            },
        );
    };
    let tasks = n.div_ceil(W_ROWS_PER_TASK);
    if rows * n * k >= FEW_ROWS_PAR_WORK && rayon::current_num_threads() > 1 {
        (0..tasks).into_par_iter().for_each(task);
    } else {
        (0..tasks).for_each(task);
    }
}

/// Columns j0..j1 of `y (rows × ld) [+]= x (rows×k) · wᵀ` by the AVX-512 or AVX2 few-row
/// kernel, whichever the CPU has; false (nothing written) when it has neither.
///
/// # Safety
/// x holds rows×k values, w at least j1×k, `yp` addresses rows × ld writable values with
/// j1 ≤ ld, and no other thread writes columns j0..j1 of y meanwhile.
#[allow(clippy::too_many_arguments)]
unsafe fn simd_columns(x: &[f32], w: &[f32], rows: usize, k: usize, j0: usize, j1: usize, yp: SendPtr<f32>, ld: usize, accumulate: bool) -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f") {
            // SAFETY: AVX-512 F (checked); the shapes are the caller's.
            unsafe { x86::few_rows_avx512(x, w, rows, k, j0, j1, yp, ld, accumulate) };
            return true;
        }
        if crate::simd::fma_available() {
            // SAFETY: AVX2 and FMA (checked); the shapes are the caller's.
            unsafe { x86::few_rows_avx2(x, w, rows, k, j0, j1, yp, ld, accumulate) };
            return true;
        }
    }
    let _ = (x, w, rows, k, j0, j1, yp, ld, accumulate);
    false
}

/// `y[r·ld + j] = x_r · w_j` for every row r < rows of x (rows × k) and j < n of w (n × k),
/// on the calling thread, by the AVX-512 or AVX2 few-row kernels ([`simd_columns`], 32
/// weight rows at a time, as [`few_rows`]' tasks); false (nothing written) on a CPU with
/// neither or for more than [`FEW_ROWS`] rows. For the panels of
/// [`crate::sgemm::matmul_t_dequantized`] (quantized weights widened a panel at a time)
/// when there are fewer rows than a prompt's tiles take.
///
/// # Safety
/// `yp` addresses rows × ld writable values (n ≤ ld) that no other thread touches meanwhile.
pub(crate) unsafe fn few_rows_strided(x: &[f32], w: &[f32], rows: usize, n: usize, k: usize, yp: SendPtr<f32>, ld: usize) -> bool {
    assert!(x.len() >= rows * k && w.len() >= n * k && n <= ld, "few-row product: operands too small");
    if rows > FEW_ROWS {
        return false;
    }
    for j0 in (0..n).step_by(W_ROWS_PER_TASK) {
        let j1 = (j0 + W_ROWS_PER_TASK).min(n);
        // SAFETY: x holds rows×k and w n×k values (asserted), y rows×ld with j1 ≤ n ≤ ld,
        // written by no one else (the caller's).
        if !unsafe { simd_columns(x, w, rows, k, j0, j1, yp, ld, false) } {
            // the same CPU answers alike for every column block: only the first can fail
            return false;
        }
    }
    true
}

/// One weight row against one vector x with the arithmetic of each pair in [`dots2x4`]
/// (the same lanes, order and final sum), so that a row's result does not depend on the
/// rows beside it in the batch: decoding a sequence alone and in a batch multiply alike.
#[inline(always)]
fn dot16<const FMA: bool>(w: &[f32], x: &[f32]) -> f32 {
    let k = w.len();
    let mut a = [0f32; 16];
    let full = k / 16 * 16;
    for (p, q) in w[..full].chunks_exact(16).zip(x[..full].chunks_exact(16)) {
        let (p, q): (&[f32; 16], &[f32; 16]) = (p.try_into().expect("16"), q.try_into().expect("16"));
        for l in 0..16 {
            if FMA {
                a[l] = p[l].mul_add(q[l], a[l]);
            } else {
                a[l] += p[l] * q[l];
            }
        }
    }
    a.iter().sum::<f32>() + w[full..].iter().zip(&x[full..k]).map(|(p, q)| p * q).sum::<f32>()
}

/// Two weight rows against four vectors x at once, 16 lanes each: each load of a weight
/// chunk serves four rows of x and each load of an x chunk two weight rows. The eight
/// accumulators are separate fixed-size arrays so that they live in vector registers.
/// `FMA`: fused multiply-adds (only where the CPU has them: `mul_add` is a libm call
/// otherwise). Returns [w0·x0..x3, w1·x0..x3].
#[inline(always)]
fn dots2x4<const FMA: bool>(w0: &[f32], w1: &[f32], xs: [&[f32]; 4]) -> [f32; 8] {
    let k = w0.len();
    let mut acc = [[0f32; 16]; 8];
    let mut a0 = acc[0];
    let (mut a1, mut a2, mut a3, mut a4, mut a5, mut a6, mut a7) = (acc[1], acc[2], acc[3], acc[4], acc[5], acc[6], acc[7]);
    let full = k / 16 * 16;
    let mut c = 0;
    while c < full {
        let p: &[f32; 16] = w0[c..c + 16].try_into().expect("16");
        let q: &[f32; 16] = w1[c..c + 16].try_into().expect("16");
        let x0: &[f32; 16] = xs[0][c..c + 16].try_into().expect("16");
        let x1: &[f32; 16] = xs[1][c..c + 16].try_into().expect("16");
        let x2: &[f32; 16] = xs[2][c..c + 16].try_into().expect("16");
        let x3: &[f32; 16] = xs[3][c..c + 16].try_into().expect("16");
        for l in 0..16 {
            if FMA {
                a0[l] = p[l].mul_add(x0[l], a0[l]);
                a1[l] = p[l].mul_add(x1[l], a1[l]);
                a2[l] = p[l].mul_add(x2[l], a2[l]);
                a3[l] = p[l].mul_add(x3[l], a3[l]);
                a4[l] = q[l].mul_add(x0[l], a4[l]);
                a5[l] = q[l].mul_add(x1[l], a5[l]);
                a6[l] = q[l].mul_add(x2[l], a6[l]);
                a7[l] = q[l].mul_add(x3[l], a7[l]);
            } else {
                a0[l] += p[l] * x0[l];
                a1[l] += p[l] * x1[l];
                a2[l] += p[l] * x2[l];
                a3[l] += p[l] * x3[l];
                a4[l] += q[l] * x0[l];
                a5[l] += q[l] * x1[l];
                a6[l] += q[l] * x2[l];
                a7[l] += q[l] * x3[l];
            }
        }
        c += 16;
    }
    acc = [a0, a1, a2, a3, a4, a5, a6, a7];
    let mut out = [0f32; 8];
    for (o, (a, i)) in out.iter_mut().zip(acc.iter().zip(0..8)) {
        let (w, x) = (if i < 4 { w0 } else { w1 }, xs[i % 4]);
        *o = a.iter().sum::<f32>() + w[full..].iter().zip(&x[full..k]).map(|(p, q)| p * q).sum::<f32>();
    }
    out
}

/// [`few_rows`]' task on x86 vector units: blocks of four weight rows × a few rows of x
/// with one accumulator per output in registers (AVX-512: 4 × 4 of 16 lanes, of its 32
/// registers; AVX2: 4 × 2 of 8 lanes, of its 16), the tail of k as one masked chunk, each
/// output reduced by one vector tree sum. Every output's arithmetic is the same whatever
/// the rows beside it (one accumulator per output, the same chunks, the same reduction),
/// so a row decoded alone and in a batch multiply alike. The portable blocks' in-order
/// 16-lane sum (fifteen dependent scalar adds per output, as many instructions as a
/// 256-long dot product's multiply-adds) is gone here: twice the rate at 8 rows.
#[cfg(target_arch = "x86_64")]
mod x86 {
    use crate::ptr::SendPtr;
    use std::arch::x86_64::*;

    /// The AVX-512 task. # Safety: as [`task`], and the CPU must have AVX-512 F.
    #[allow(clippy::too_many_arguments)]
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn few_rows_avx512(x: &[f32], w: &[f32], rows: usize, k: usize, j0: usize, j1: usize, yp: SendPtr<f32>, n: usize, accumulate: bool) {
        // looked up once per task, not per block of four weight rows
        let ahead = crate::simd::decode_prefetch_bytes() / 4;
        // SAFETY: the caller's guarantees; AVX-512 F for the blocks.
        unsafe {
            task::<4>(x, w, rows, k, j0, j1, yp, n, accumulate, |ws, xs, r, out| match r {
                1 => block512::<1>(ws, [xs[0]], k, ahead, out),
                2 => block512::<2>(ws, [xs[0], xs[1]], k, ahead, out),
                3 => block512::<3>(ws, [xs[0], xs[1], xs[2]], k, ahead, out),
                _ => block512::<4>(ws, xs, k, ahead, out),
            })
        }
    }

    /// The AVX2 task. # Safety: as [`task`], and the CPU must have AVX2 and FMA.
    #[allow(clippy::too_many_arguments)]
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn few_rows_avx2(x: &[f32], w: &[f32], rows: usize, k: usize, j0: usize, j1: usize, yp: SendPtr<f32>, n: usize, accumulate: bool) {
        // SAFETY: the caller's guarantees; AVX2 and FMA for the blocks.
        unsafe {
            task::<2>(x, w, rows, k, j0, j1, yp, n, accumulate, |ws, xs, r, out| match r {
                1 => block256::<1>(ws, [xs[0]], k, out),
                _ => block256::<2>(ws, [xs[0], xs[1]], k, out),
            })
        }
    }

    /// Columns j0..j1 of `y (rows×n) [+]= x (rows×k) · wᵀ` in blocks of four weight rows ×
    /// up to RB rows of x, each block by `block(weight rows, x rows, rows used, out)`.
    ///
    /// # Safety
    /// x holds rows×k values, w at least j1×k, y (through `yp`) rows×n with j1 ≤ n, no
    /// other thread writes columns j0..j1 of y meanwhile, and `block` reads k values from
    /// each pointer it is given.
    #[allow(clippy::too_many_arguments)]
    #[inline(always)]
    unsafe fn task<const RB: usize>(
        x: &[f32],
        w: &[f32],
        rows: usize,
        k: usize,
        j0: usize,
        j1: usize,
        yp: SendPtr<f32>,
        n: usize,
        accumulate: bool,
        block: impl Fn([*const f32; 4], [*const f32; RB], usize, &mut [[f32; 4]; 4]),
    ) {
        let mut i = 0;
        while i < rows {
            let r = (rows - i).min(RB);
            let mut j = j0;
            while j < j1 {
                // weight rows past j1 repeat the last one (their results are not stored)
                let ws: [*const f32; 4] = std::array::from_fn(|d| w[(j + d).min(j1 - 1) * k..][..k].as_ptr());
                let xs: [*const f32; RB] = std::array::from_fn(|q| x[(i + q.min(r - 1)) * k..][..k].as_ptr());
                let mut out = [[0f32; 4]; 4];
                block(ws, xs, r, &mut out);
                for (dj, col) in out.iter().enumerate().take(j1 - j) {
                    for (q, &v) in col.iter().enumerate().take(r) {
                        // SAFETY: row i + q < rows, column j + dj < j1 ≤ n (the caller's).
                        unsafe {
                            let e = yp.add((i + q) * n + j + dj);
                            *e = if accumulate { *e + v } else { v };
                        }
                    }
                }
                j += 4;
            }
            i += RB;
        }
    }

    /// out[d][q] = w_d · x_q for four weight rows and R rows of x, each k long, 16 lanes;
    /// with one row of x, weights `ahead` floats past each chunk read are asked for (0: none).
    ///
    /// # Safety
    /// AVX-512 F; every pointer starts k readable f32 values.
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn block512<const R: usize>(ws: [*const f32; 4], xs: [*const f32; R], k: usize, ahead: usize, out: &mut [[f32; 4]; 4]) {
        let mut acc = [[_mm512_setzero_ps(); R]; 4];
        let full = k / 16 * 16;
        if R == 1 {
            // One input row (decoding, memory-bound): one weight row after the other, a
            // single stream through memory, which the hardware prefetcher follows at about
            // twice the bandwidth of four interleaved rows (as in `f16::x86::block512`).
            // Each output's arithmetic is the same as below: its chunks in order into its
            // own accumulator, so a row's result still does not depend on the batch.
            // Weights asked for ahead as far as the CPU wants (`decode_prefetch_bytes`, the
            // f16 kernel's measurements; on the Zen 5 f32 decoding went 11.0–11.8 → 14.4–15.8
            // tokens/s on Qwen2.5-0.5B's shape, 37–46 → 50–52 on SmolLM2-135M's), once per
            // cache line.
            for d in 0..4 {
                let mut c = 0;
                while c < full {
                    if ahead > 0 {
                        // a hint: never faults; `wrapping_add` makes no reference past the row
                        _mm_prefetch::<_MM_HINT_T0>(ws[d].wrapping_add(c + ahead) as *const i8);
                    }
                    // SAFETY: c + 16 ≤ full ≤ k, inside every k-long row (the caller's).
                    let (wv, xv) = unsafe { (_mm512_loadu_ps(ws[d].add(c)), _mm512_loadu_ps(xs[0].add(c))) };
                    acc[d][0] = _mm512_fmadd_ps(wv, xv, acc[d][0]);
                    c += 16;
                }
            }
        }
        let mut c = if R == 1 { full } else { 0 };
        while c < full {
            // SAFETY: c + 16 ≤ full ≤ k, inside every k-long row (the caller's).
            let xv: [__m512; R] = std::array::from_fn(|q| unsafe { _mm512_loadu_ps(xs[q].add(c)) });
            for d in 0..4 {
                // SAFETY: as for xv.
                let wv = unsafe { _mm512_loadu_ps(ws[d].add(c)) };
                for q in 0..R {
                    acc[d][q] = _mm512_fmadd_ps(wv, xv[q], acc[d][q]);
                }
            }
            c += 16;
        }
        if full < k {
            // the tail as one masked chunk: lanes past k read nothing and add zero
            let m: __mmask16 = ((1u32 << (k - full)) - 1) as u16;
            // SAFETY: the mask enables lanes full..k only, inside every k-long row.
            let xv: [__m512; R] = std::array::from_fn(|q| unsafe { _mm512_maskz_loadu_ps(m, xs[q].add(full)) });
            for d in 0..4 {
                // SAFETY: as for xv.
                let wv = unsafe { _mm512_maskz_loadu_ps(m, ws[d].add(full)) };
                for q in 0..R {
                    acc[d][q] = _mm512_fmadd_ps(wv, xv[q], acc[d][q]);
                }
            }
        }
        for d in 0..4 {
            for q in 0..R {
                out[d][q] = _mm512_reduce_add_ps(acc[d][q]);
            }
        }
    }

    /// As [`block512`] in 8 lanes on AVX2 and FMA.
    ///
    /// # Safety
    /// AVX2 and FMA; every pointer starts k readable f32 values.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn block256<const R: usize>(ws: [*const f32; 4], xs: [*const f32; R], k: usize, out: &mut [[f32; 4]; 4]) {
        let mut acc = [[_mm256_setzero_ps(); R]; 4];
        let full = k / 8 * 8;
        let mut c = 0;
        while c < full {
            // SAFETY: c + 8 ≤ full ≤ k, inside every k-long row (the caller's).
            let xv: [__m256; R] = std::array::from_fn(|q| unsafe { _mm256_loadu_ps(xs[q].add(c)) });
            for d in 0..4 {
                // SAFETY: as for xv.
                let wv = unsafe { _mm256_loadu_ps(ws[d].add(c)) };
                for q in 0..R {
                    acc[d][q] = _mm256_fmadd_ps(wv, xv[q], acc[d][q]);
                }
            }
            c += 8;
        }
        if full < k {
            // the tail as one masked chunk: lanes whose mask word is negative are loaded,
            // the others read nothing and add zero
            let t = (k - full) as i32;
            let m = _mm256_sub_epi32(_mm256_set1_epi32(t - 1), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
            let m = _mm256_xor_si256(m, _mm256_set1_epi32(-1)); // lane l < t ⇔ t-1-l ≥ 0 ⇔ !(t-1-l) < 0
            // SAFETY: the mask loads lanes full..k only, inside every k-long row.
            let xv: [__m256; R] = std::array::from_fn(|q| unsafe { _mm256_maskload_ps(xs[q].add(full), m) });
            for d in 0..4 {
                // SAFETY: as for xv.
                let wv = unsafe { _mm256_maskload_ps(ws[d].add(full), m) };
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

    #[cfg(test)]
    mod tests {
        use super::*;

        /// Both vector paths the CPU has against an f64 reference, every row count 1..=9,
        /// tails of every length, n not a multiple of four; and each row of a batch equal
        /// to that row alone.
        #[test]
        fn vector_paths_match_reference_and_are_batch_invariant() {
            let avx2 = std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma");
            let avx512 = std::arch::is_x86_feature_detected!("avx512f");
            let vals = |n: usize, seed: u64| crate::testutil::lcg_values(n, seed, |u| u as f32 / (1u64 << 30) as f32 - 1.0);
            for (n, k) in [(7, 1), (9, 15), (13, 17), (32, 64), (11, 300)] {
                let w = vals(n * k, 1);
                for rows in 1..=9 {
                    let x = vals(rows * k, rows as u64 + 2);
                    let mut paths: Vec<(&str, Vec<f32>)> = Vec::new();
                    type Path = unsafe fn(&[f32], &[f32], usize, usize, usize, usize, SendPtr<f32>, usize, bool);
                    let run = |name: &'static str, f: Path, xr: &[f32], rows: usize| {
                        let mut y = vec![0f32; rows * n];
                        // SAFETY: the CPU has the path's features (checked by the caller);
                        // shapes as the function requires, one task for all columns.
                        unsafe { f(xr, &w, rows, k, 0, n, SendPtr::new(y.as_mut_ptr()), n, false) };
                        (name, y)
                    };
                    if avx2 {
                        paths.push(run("avx2", few_rows_avx2, &x, rows));
                    }
                    if avx512 {
                        paths.push(run("avx512", few_rows_avx512, &x, rows));
                    }
                    for (name, y) in &paths {
                        for i in 0..rows {
                            for j in 0..n {
                                let r: f64 = (0..k).map(|p| x[i * k + p] as f64 * w[j * k + p] as f64).sum();
                                assert!((y[i * n + j] as f64 - r).abs() < 1e-4, "{name} {rows}×{k}·({n}×{k})ᵀ [{i},{j}]");
                            }
                        }
                        let f: Path = if *name == "avx2" { few_rows_avx2 } else { few_rows_avx512 };
                        let (_, alone) = run(name, f, &x[(rows - 1) * k..], 1);
                        assert_eq!(&y[(rows - 1) * n..], &alone[..], "{name}: last row of {rows} alone");
                    }
                }
            }
        }
    }
}

impl CustomOp2 for LinearOp {
    fn name(&self) -> &'static str {
        "ferrolm-linear"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        Self::forward(contiguous_f32(s1, l1, CustomOp2::name(self))?, l1, contiguous_f32(s2, l2, CustomOp2::name(self))?, l2, None)
    }

    fn bwd(&self, x: &Tensor, w: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let (dx, dw, _) = Self::backward(x, w, grad, false)?;
        Ok((dx, dw))
    }
}

impl CustomOp3 for LinearOp {
    fn name(&self) -> &'static str {
        "ferrolm-linear-bias"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        Self::forward(contiguous_f32(s1, l1, CustomOp3::name(self))?, l1, contiguous_f32(s2, l2, CustomOp3::name(self))?, l2, Some(contiguous_f32(s3, l3, CustomOp3::name(self))?))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _b: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (dx, dw, db) = Self::backward(x, w, grad, true)?;
        Ok((dx, dw, db))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{max_diff, rand};
    use candle_core::Var;

    #[test]
    fn fused_linear_matches_composed_matmul_forward_and_backward() {
        // Ragged sizes, a rank-3 input, with and without bias; one thread (dx then dw) and
        // two (dx and dw side by side).
        for (threads, with_bias) in [(1, true), (1, false), (2, true), (2, false)] {
            let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
            pool.install(|| check_against_composed(with_bias));
        }
    }

    #[test]
    fn few_row_products_match_composed_matmul() {
        // row counts up to past FEW_ROWS (remainders of the blocks of four), k not a
        // multiple of 16, n not a multiple of the task size; serial and threaded sizes
        for (n, k) in [(11, 13), (70, 300), (300, 37)] {
            for rows in [1, 2, 3, 4, 5, 8, 13, 31, 32, 33, 127, 128, 129, 1025] {
                let x = rand(&[rows, k], rows as u64);
                let w = rand(&[n, k], 7);
                let b = rand(&[n], 8);
                let reference = x.matmul(&w.t().unwrap()).unwrap();
                let ours = linear(&x, &w, None).unwrap();
                assert!(max_diff(&ours, &reference) < 1e-4, "{rows}×{k} · ({n}×{k})ᵀ");
                let ours = linear(&x, &w, Some(&b)).unwrap();
                assert!(max_diff(&ours, &reference.broadcast_add(&b).unwrap()) < 1e-4, "{rows}×{k} · ({n}×{k})ᵀ + b");
                let tiles = crate::prompt_linear::takes(rows) && crate::prompt_linear::TileIsa::detect().is_some();
                if rows > FEW_ROWS && !tiles {
                    continue;
                }
                // a row's result does not depend on the rows beside it: batched decoding
                // equals decoding alone; a prompt's rows (the register tiles) equal those
                // rows in the smallest batch the tiles take
                let fewer = if tiles { crate::prompt_linear::PROMPT_ROWS } else { 1 };
                let last = linear(&x.narrow(0, rows - fewer, fewer).unwrap(), &w, Some(&b)).unwrap();
                let in_batch: Vec<f32> = ours.narrow(0, rows - 1, 1).unwrap().flatten_all().unwrap().to_vec1().unwrap();
                let alone: Vec<f32> = last.narrow(0, fewer - 1, 1).unwrap().flatten_all().unwrap().to_vec1().unwrap();
                assert_eq!(in_batch, alone, "row {} of {rows} (in {fewer})", rows - 1);
            }
        }
    }

    fn check_against_composed(with_bias: bool) {
        {
            let x = Var::from_tensor(&rand(&[3, 7, 13], 1)).unwrap();
            let w = Var::from_tensor(&rand(&[11, 13], 2)).unwrap();
            let b = Var::from_tensor(&rand(&[11], 3)).unwrap();
            let g = rand(&[3, 7, 11], 4);
            let ours = linear(x.as_tensor(), w.as_tensor(), with_bias.then(|| b.as_tensor())).unwrap();
            let mut reference = x.as_tensor().broadcast_matmul(&w.as_tensor().t().unwrap()).unwrap();
            if with_bias {
                reference = reference.broadcast_add(b.as_tensor()).unwrap();
            }
            assert_eq!(ours.dims(), &[3, 7, 11]);
            assert!(max_diff(&ours, &reference) < 1e-5, "forward, bias={with_bias}");
            let ga = (ours * &g).unwrap().sum_all().unwrap().backward().unwrap();
            let gb = (reference * &g).unwrap().sum_all().unwrap().backward().unwrap();
            assert!(max_diff(ga.get(&x).unwrap(), gb.get(&x).unwrap()) < 1e-5, "dx");
            let dw = ga.get(&w).unwrap();
            assert!(dw.is_contiguous(), "dW comes out in W's own layout");
            assert!(max_diff(dw, gb.get(&w).unwrap()) < 1e-5, "dw");
            if with_bias {
                assert!(max_diff(ga.get(&b).unwrap(), gb.get(&b).unwrap()) < 1e-5, "db");
            } else {
                assert!(ga.get(&b).is_none());
            }
        }
    }
}
