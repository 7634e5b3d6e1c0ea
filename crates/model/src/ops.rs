//! Fused CPU kernels with their backward passes.
//!
//! candle-nn's fused softmax / norm kernels are inference-only (`apply_op*_no_bwd`), and
//! the composed versions allocate a fresh tensor for every elementwise step. These ops
//! do one pass over each row forward and one backward, and register their gradient with
//! candle's autograd through the `bwd` hooks, so training uses them transparently.
//! Every op is checked against its composed reference and finite differences in tests.

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp1, CustomOp3, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

/// Rows above this many elements in total are split across threads.
const PAR_THRESHOLD: usize = 1 << 14;

pub(crate) fn contiguous_f32<'a>(s: &'a CpuStorage, l: &Layout, op: &str) -> Result<&'a [f32]> {
    let data = match s {
        CpuStorage::F32(v) => v.as_slice(),
        _ => candle_core::bail!("{op}: only f32 is implemented on CPU, got {:?}", s.dtype()),
    };
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&data[a..b]),
        None => candle_core::bail!("{op}: input must be contiguous"),
    }
}

fn for_rows(out: &mut [f32], dim: usize, f: impl Fn(usize, &mut [f32]) + Sync + Send) {
    if out.len() >= PAR_THRESHOLD {
        out.par_chunks_mut(dim).enumerate().for_each(|(i, r)| f(i, r));
    } else {
        out.chunks_mut(dim).enumerate().for_each(|(i, r)| f(i, r));
    }
}

/// An output buffer of `n` floats whose elements the caller writes before anyone reads
/// them. Fresh `vec![0.0; n]` outputs cost a memset of every intermediate tensor (3% of
/// a c1 training step in perf) on top of the kernel's own page zeroing.
pub(crate) fn output_buffer(n: usize) -> Vec<f32> {
    let mut v = Vec::with_capacity(n);
    // SAFETY: f32 has no invalid bit patterns and no drop. Buffers handed to candle are
    // written in full first; the one kept internally (the fused attention's probabilities)
    // leaves the blocks above the causal diagonal unwritten, and nothing reads them.
    #[allow(clippy::uninit_vec)]
    unsafe {
        v.set_len(n)
    };
    v
}

/// Runs `f` compiled for AVX-512 (or AVX2+FMA) when the CPU has it. The default build
/// targets baseline x86-64 (SSE2, 4 lanes) so that it runs anywhere; the elementwise loops
/// of the fused ops (exp, tanh, sums) are inlined into these wrappers and vectorised for
/// 16 lanes. Measured: the attention softmax was 9% of a c2 training step at 4 lanes.
#[inline(always)]
pub fn vectorized<R>(f: impl FnOnce() -> R) -> R {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f") {
            // SAFETY: the CPU has the features the wrapper is compiled for.
            return unsafe { on_avx512(f) };
        }
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
            // SAFETY: as above.
            return unsafe { on_avx2(f) };
        }
    }
    f()
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,bmi2")]
unsafe fn on_avx512<R>(f: impl FnOnce() -> R) -> R {
    f()
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,bmi2")]
unsafe fn on_avx2<R>(f: impl FnOnce() -> R) -> R {
    f()
}

/// Sum in 16 independent lanes: an in-order float sum is one long dependency chain that
/// no compiler may vectorise.
#[inline(always)]
pub fn lane_sum(v: &[f32]) -> f32 {
    let mut acc = [0f32; 16];
    let chunks = v.chunks_exact(16);
    let tail: f32 = chunks.remainder().iter().sum();
    for c in chunks {
        for i in 0..16 {
            acc[i] += c[i];
        }
    }
    acc.iter().sum::<f32>() + tail
}

/// Dot product in 16 independent lanes (see [`lane_sum`]).
#[inline(always)]
pub fn lane_dot(a: &[f32], b: &[f32]) -> f32 {
    let n = a.len().min(b.len());
    let (a, b) = (&a[..n], &b[..n]);
    let mut acc = [0f32; 16];
    let (ca, cb) = (a.chunks_exact(16), b.chunks_exact(16));
    let tail: f32 = ca.remainder().iter().zip(cb.remainder()).map(|(x, y)| x * y).sum();
    for (x, y) in ca.zip(cb) {
        for i in 0..16 {
            acc[i] += x[i] * y[i];
        }
    }
    acc.iter().sum::<f32>() + tail
}

/// Maximum in 16 independent lanes (NaN-free inputs; −∞ for an empty slice).
#[inline(always)]
pub fn lane_max(v: &[f32]) -> f32 {
    let mut acc = [f32::NEG_INFINITY; 16];
    let chunks = v.chunks_exact(16);
    let tail = chunks.remainder().iter().copied().fold(f32::NEG_INFINITY, f32::max);
    for c in chunks {
        for i in 0..16 {
            acc[i] = if c[i] > acc[i] { c[i] } else { acc[i] };
        }
    }
    acc.iter().copied().fold(tail, f32::max)
}

/// Softmax of one row in place: max, exp, lane sum, scale.
#[inline(always)]
pub fn softmax_row(row: &mut [f32]) {
    let max = lane_max(row);
    row.iter_mut().for_each(|x| *x = fast_exp(*x - max));
    let inv = 1.0 / lane_sum(row);
    row.iter_mut().for_each(|x| *x *= inv);
}

/// e^x without libm: a degree-6 polynomial on the reduced argument and the exponent put
/// in by bit manipulation. Branch-free, so loops over it vectorise; relative error below
/// 1e-6 on [−87, 88] (a test checks), inputs outside are clamped (e^−87 ≈ 1.6e−38).
#[inline(always)]
pub fn fast_exp(x: f32) -> f32 {
    const MAGIC: f32 = 12_582_912.0; // 1.5·2^23: adding it rounds to an integer
    let x = x.clamp(-87.0, 88.0);
    let t = x * std::f32::consts::LOG2_E + MAGIC;
    let n = t - MAGIC;
    let r = x - n * 0.693_145_75 - n * 1.428_606_8e-6;
    let p = 1.0 + r * (1.0 + r * (0.5 + r * (0.166_666_67 + r * (0.041_666_668 + r * (0.008_333_334 + r * 0.001_388_889)))));
    let bits = ((t.to_bits() as i32 - MAGIC.to_bits() as i32 + 127) << 23) as u32;
    p * f32::from_bits(bits)
}

// ---------------------------------------------------------------- softmax

struct SoftmaxLastDim;

impl CustomOp1 for SoftmaxLastDim {
    fn name(&self) -> &'static str {
        "ferrolm-softmax"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = contiguous_f32(s, l, self.name())?;
        let dim = l.dims()[l.dims().len() - 1];
        let mut out = vec![0f32; x.len()];
        for_rows(&mut out, dim, |i, row| {
            let src = &x[i * dim..(i + 1) * dim];
            let max = src.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let mut sum = 0f32;
            for (o, &v) in row.iter_mut().zip(src) {
                *o = fast_exp(v - max);
                sum += *o;
            }
            let inv = 1.0 / sum;
            row.iter_mut().for_each(|o| *o *= inv);
        });
        Ok((CpuStorage::F32(out), l.shape().clone()))
    }

    fn bwd(&self, _arg: &Tensor, res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        // dx = y ⊙ (g − Σ g⊙y)
        Ok(Some(res.apply_op2_no_bwd(&grad.contiguous()?, &SoftmaxBackward)?))
    }
}

struct SoftmaxBackward;

impl candle_core::CustomOp2 for SoftmaxBackward {
    fn name(&self) -> &'static str {
        "ferrolm-softmax-bwd"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let y = contiguous_f32(s1, l1, self.name())?;
        let g = contiguous_f32(s2, l2, self.name())?;
        let dim = l1.dims()[l1.dims().len() - 1];
        let mut out = vec![0f32; y.len()];
        for_rows(&mut out, dim, |i, row| {
            let (yr, gr) = (&y[i * dim..(i + 1) * dim], &g[i * dim..(i + 1) * dim]);
            let dot: f32 = yr.iter().zip(gr).map(|(a, b)| a * b).sum();
            for ((o, &yv), &gv) in row.iter_mut().zip(yr).zip(gr) {
                *o = yv * (gv - dot);
            }
        });
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }
}

/// Softmax over the last dimension, differentiable.
pub fn softmax_last_dim(x: &Tensor) -> Result<Tensor> {
    if !x.device().is_cpu() {
        return candle_nn::ops::softmax_last_dim(x);
    }
    x.contiguous()?.apply_op1(SoftmaxLastDim)
}

/// softmax(scale · x) over the last dimension, optionally with a causal mask computed on
/// the fly: for scores of shape (…, tq, tk) whose first query sits at absolute position
/// `offset`, key j is visible to query row i iff j ≤ offset + i. Fusing the scale and the
/// mask avoids materialising (and differentiating) a scaled copy and a broadcast bias.
struct ScaledSoftmax {
    scale: f32,
    causal_offset: Option<usize>,
}

impl CustomOp1 for ScaledSoftmax {
    fn name(&self) -> &'static str {
        "ferrolm-scaled-softmax"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = contiguous_f32(s, l, self.name())?;
        let dims = l.dims();
        let tk = dims[dims.len() - 1];
        let tq = if dims.len() >= 2 { dims[dims.len() - 2] } else { 1 };
        let (scale, causal) = (self.scale, self.causal_offset);
        let mut out = vec![0f32; x.len()];
        for_rows(&mut out, tk, |r, row| {
            let src = &x[r * tk..(r + 1) * tk];
            let visible = match causal {
                Some(off) => (off + r % tq + 1).min(tk),
                None => tk,
            };
            let max = src[..visible].iter().copied().fold(f32::NEG_INFINITY, f32::max) * scale;
            let mut sum = 0f32;
            for (o, &v) in row[..visible].iter_mut().zip(&src[..visible]) {
                *o = fast_exp(v * scale - max);
                sum += *o;
            }
            let inv = 1.0 / sum;
            row[..visible].iter_mut().for_each(|o| *o *= inv);
            // masked keys stay exactly zero
        });
        Ok((CpuStorage::F32(out), l.shape().clone()))
    }

    fn bwd(&self, _arg: &Tensor, res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        // d/dx = scale · y ⊙ (g − Σ g⊙y); masked entries have y = 0 and get no gradient.
        let d = res.apply_op2_no_bwd(&grad.contiguous()?, &SoftmaxBackward)?;
        Ok(Some(if self.scale == 1.0 { d } else { (d * self.scale as f64)? }))
    }
}

/// softmax(scale·x) over the last dimension with an optional on-the-fly causal mask
/// (see [`ScaledSoftmax`]); differentiable.
pub fn scaled_softmax(x: &Tensor, scale: f64, causal_offset: Option<usize>) -> Result<Tensor> {
    if !x.device().is_cpu() {
        let x = (x * scale)?;
        let x = match causal_offset {
            Some(off) => {
                let (tq, tk) = (x.dim(candle_core::D::Minus2)?, x.dim(candle_core::D::Minus1)?);
                let mask: Vec<f32> = (0..tq * tk).map(|k| if k % tk <= off + k / tk { 0.0 } else { f32::NEG_INFINITY }).collect();
                x.broadcast_add(&Tensor::from_vec(mask, (tq, tk), x.device())?)?
            }
            None => x,
        };
        return candle_nn::ops::softmax_last_dim(&x);
    }
    x.contiguous()?.apply_op1(ScaledSoftmax { scale: scale as f32, causal_offset })
}

// ---------------------------------------------------------------- layer norm / rms norm

/// LayerNorm (`remove_mean = true`, with bias) or RMSNorm (`remove_mean = false`, bias
/// ignored) over the last dimension. One fused op for both keeps the backward in one place.
struct Norm {
    eps: f32,
    remove_mean: bool,
}

impl Norm {
    /// Per row: mean and reciprocal std, recomputed in backward rather than stored,
    /// because storing them would need a second output that candle ops cannot return.
    /// Sums run in 16 lanes (see [`lane_sum`]); callers run inside [`vectorized`].
    #[inline(always)]
    fn stats(&self, row: &[f32]) -> (f32, f32) {
        let n = row.len() as f32;
        let mean = if self.remove_mean { lane_sum(row) / n } else { 0.0 };
        let mut acc = [0f32; 16];
        let chunks = row.chunks_exact(16);
        let tail: f32 = chunks.remainder().iter().map(|v| (v - mean) * (v - mean)).sum();
        for c in chunks {
            for i in 0..16 {
                acc[i] += (c[i] - mean) * (c[i] - mean);
            }
        }
        let var = (acc.iter().sum::<f32>() + tail) / n;
        (mean, 1.0 / (var + self.eps).sqrt())
    }
}

impl CustomOp3 for Norm {
    fn name(&self) -> &'static str {
        "ferrolm-norm"
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
        let x = contiguous_f32(s1, l1, self.name())?;
        let w = contiguous_f32(s2, l2, self.name())?;
        let b = contiguous_f32(s3, l3, self.name())?;
        let dim = w.len();
        let b = if self.remove_mean { b } else { &[][..] };
        let mut out = output_buffer(x.len());
        for_rows(&mut out, dim, |i, row| {
            vectorized(#[inline(always)] || {
                let src = &x[i * dim..(i + 1) * dim];
                let (mean, rstd) = self.stats(src);
                if b.len() == dim {
                    for (((o, &v), &wv), &bv) in row.iter_mut().zip(src).zip(w).zip(b) {
                        *o = (v - mean) * rstd * wv + bv;
                    }
                } else {
                    for ((o, &v), &wv) in row.iter_mut().zip(src).zip(w) {
                        *o = (v - mean) * rstd * wv;
                    }
                }
            })
        });
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _b: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let dim = w.dim(0)?;
        let x2 = x.contiguous()?.reshape(((), dim))?;
        let g2 = grad.contiguous()?.reshape(((), dim))?;
        let packed = x2.apply_op3_no_bwd(&w.contiguous()?, &g2, &NormBackward { fwd: Norm { eps: self.eps, remove_mean: self.remove_mean } })?;
        // packed rows: [dx (rows) ; dw (1 row) ; db (1 row)]
        let rows = x2.dim(0)?;
        let dx = packed.narrow(0, 0, rows)?.reshape(x.shape())?;
        let dw = packed.narrow(0, rows, 1)?.squeeze(0)?;
        let db = if self.remove_mean { Some(packed.narrow(0, rows + 1, 1)?.squeeze(0)?) } else { None };
        Ok((Some(dx), Some(dw), db))
    }
}

struct NormBackward {
    fwd: Norm,
}

impl CustomOp3 for NormBackward {
    fn name(&self) -> &'static str {
        "ferrolm-norm-bwd"
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
        let x = contiguous_f32(s1, l1, self.name())?;
        let w = contiguous_f32(s2, l2, self.name())?;
        let g = contiguous_f32(s3, l3, self.name())?;
        let dim = w.len();
        let rows = x.len() / dim;
        let mut out = output_buffer((rows + 2) * dim);
        let (dx, rest) = out.split_at_mut(rows * dim);
        // One pass over each row computes its dx and adds its share of dw = Σ g·x̂ and
        // db = Σ g into a per-chunk accumulator (the row's statistics are computed once).
        // dx per row: rstd · (g·w − mean(g·w) − x̂ · mean(g·w·x̂)); for RMSNorm the first
        // mean is absent.
        let rows_per_chunk = rows.div_ceil(rayon::current_num_threads().max(1)).max(1);
        let chunk_rows = |c: usize, dx: &mut [f32]| -> Vec<f32> {
            vectorized(#[inline(always)] || {
                let mut acc = vec![0f32; 2 * dim];
                let (dw, db) = acc.split_at_mut(dim);
                let n = dim as f32;
                let mut xhat = vec![0f32; dim];
                for (r, row) in dx.chunks_mut(dim).enumerate() {
                    let i = c * rows_per_chunk + r;
                    let xr = &x[i * dim..(i + 1) * dim];
                    let gr = &g[i * dim..(i + 1) * dim];
                    let (mean, rstd) = self.fwd.stats(xr);
                    let (mut s_gw, mut s_gwx) = ([0f32; 16], [0f32; 16]);
                    // 16 independent lanes per sum (see `lane_sum`).
                    for ((xh, xc), (gc, wc)) in xhat.chunks_mut(16).zip(xr.chunks(16)).zip(gr.chunks(16).zip(w.chunks(16))) {
                        for l in 0..xc.len() {
                            let h = (xc[l] - mean) * rstd;
                            xh[l] = h;
                            let gw = gc[l] * wc[l];
                            s_gw[l] += gw;
                            s_gwx[l] += gw * h;
                        }
                    }
                    let m_gw = if self.fwd.remove_mean { s_gw.iter().sum::<f32>() / n } else { 0.0 };
                    let m_gwx = s_gwx.iter().sum::<f32>() / n;
                    for j in 0..dim {
                        let (gv, h) = (gr[j], xhat[j]);
                        row[j] = rstd * (gv * w[j] - m_gw - h * m_gwx);
                        dw[j] += gv * h;
                        db[j] += gv;
                    }
                }
                acc
            })
        };
        let partial: Vec<Vec<f32>> = if rows * dim >= PAR_THRESHOLD {
            dx.par_chunks_mut(rows_per_chunk * dim).enumerate().map(|(c, d)| chunk_rows(c, d)).collect()
        } else {
            vec![chunk_rows(0, dx)]
        };
        rest.fill(0.0);
        for p in partial {
            for (r, v) in rest.iter_mut().zip(p) {
                *r += v;
            }
        }
        Ok((CpuStorage::F32(out), Shape::from((rows + 2, dim))))
    }
}

/// LayerNorm over the last dimension, differentiable in x, weight and bias.
pub fn layer_norm(x: &Tensor, w: &Tensor, b: &Tensor, eps: f64) -> Result<Tensor> {
    if !x.device().is_cpu() {
        return candle_nn::ops::layer_norm_slow(x, w, b, eps as f32);
    }
    x.contiguous()?.apply_op3(w, b, Norm { eps: eps as f32, remove_mean: true })
}

/// RMSNorm over the last dimension, differentiable in x and weight.
pub fn rms_norm(x: &Tensor, w: &Tensor, eps: f64) -> Result<Tensor> {
    if !x.device().is_cpu() {
        return candle_nn::ops::rms_norm_slow(x, w, eps as f32);
    }
    // The bias slot is unused for RMSNorm; pass the weight so shapes line up.
    x.contiguous()?.apply_op3(w, w, Norm { eps: eps as f32, remove_mean: false })
}

// ---------------------------------------------------------------- GELU

const SQRT_2_OVER_PI: f32 = 0.797_884_6;
const GELU_C: f32 = 0.044_715;

/// tanh through one exp: tanh(u) = 1 − 2/(e^{2u}+1), saturating cleanly for large |u|.
#[inline(always)]
fn tanh_fast(u: f32) -> f32 {
    let e = fast_exp(2.0 * u.clamp(-20.0, 20.0));
    1.0 - 2.0 / (e + 1.0)
}

/// GELU, tanh approximation (GPT-2's), fused with its derivative for the backward pass.
struct Gelu;

impl CustomOp1 for Gelu {
    fn name(&self) -> &'static str {
        "ferrolm-gelu"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = contiguous_f32(s, l, self.name())?;
        let mut out = output_buffer(x.len());
        let f = |o: &mut [f32], x: &[f32]| {
            vectorized(#[inline(always)] || {
                for (o, &v) in o.iter_mut().zip(x) {
                    *o = 0.5 * v * (1.0 + tanh_fast(SQRT_2_OVER_PI * (v + GELU_C * v * v * v)));
                }
            })
        };
        map_chunks(&mut out, x, f);
        Ok((CpuStorage::F32(out), l.shape().clone()))
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(arg.contiguous()?.apply_op2_no_bwd(&grad.contiguous()?, &GeluBackward)?))
    }
}

struct GeluBackward;

impl candle_core::CustomOp2 for GeluBackward {
    fn name(&self) -> &'static str {
        "ferrolm-gelu-bwd"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = contiguous_f32(s1, l1, self.name())?;
        let g = contiguous_f32(s2, l2, self.name())?;
        let mut out = output_buffer(x.len());
        let chunk = (x.len() / rayon::current_num_threads().max(1)).max(PAR_THRESHOLD);
        let body = |(i, o): (usize, &mut [f32])| {
            let (xs, gs) = (&x[i * chunk..], &g[i * chunk..]);
            vectorized(#[inline(always)] || {
                for ((o, &v), &gv) in o.iter_mut().zip(xs).zip(gs) {
                    // d/dx ½x(1+tanh u) = ½(1+t) + ½x(1−t²)·u′,  u′ = √(2/π)(1+3c·x²)
                    let t = tanh_fast(SQRT_2_OVER_PI * (v + GELU_C * v * v * v));
                    let du = SQRT_2_OVER_PI * (1.0 + 3.0 * GELU_C * v * v);
                    *o = gv * (0.5 * (1.0 + t) + 0.5 * v * (1.0 - t * t) * du);
                }
            })
        };
        if x.len() >= PAR_THRESHOLD {
            out.par_chunks_mut(chunk).enumerate().for_each(body);
        } else {
            out.chunks_mut(chunk.max(1)).enumerate().for_each(body);
        }
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }
}

/// Apply `f(out_chunk, in_chunk)` over aligned chunks, in parallel for large inputs.
fn map_chunks(out: &mut [f32], x: &[f32], f: impl Fn(&mut [f32], &[f32]) + Sync + Send) {
    if out.len() >= PAR_THRESHOLD {
        let chunk = out.len().div_ceil(rayon::current_num_threads().max(1));
        out.par_chunks_mut(chunk).zip(x.par_chunks(chunk)).for_each(|(o, x)| f(o, x));
    } else {
        f(out, x);
    }
}

/// GELU (tanh approximation), differentiable.
pub fn gelu(x: &Tensor) -> Result<Tensor> {
    if !x.device().is_cpu() {
        return x.gelu();
    }
    x.contiguous()?.apply_op1(Gelu)
}

// ---------------------------------------------------------------- cross-entropy

/// Targets equal to this are ignored by [`cross_entropy`] (prompt tokens in instruction
/// tuning, padding).
pub const IGNORE_INDEX: u32 = u32::MAX;

/// Mean softmax cross-entropy of logits (N, V) against targets (N) in one pass per row;
/// the backward pass writes (softmax − one-hot)·g/n directly, never materialising
/// log-probabilities.
struct CrossEntropy;

fn ce_rows(logits: &[f32], targets: &[u32], v: usize) -> Result<(f64, usize)> {
    let rows: Vec<(usize, &[f32])> = logits.chunks(v).enumerate().collect();
    let per_row = |&(i, row): &(usize, &[f32])| -> Option<f64> {
        let t = targets[i];
        if t == IGNORE_INDEX {
            return None;
        }
        let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let sum: f32 = row.iter().map(|&z| fast_exp(z - max)).sum();
        Some((max + sum.ln() - row[t as usize]) as f64)
    };
    if let Some(&bad) = targets.iter().find(|&&t| t != IGNORE_INDEX && t as usize >= v) {
        candle_core::bail!("cross_entropy: target {bad} is outside the vocabulary of {v}");
    }
    let (sum, n) = rows
        .par_iter()
        .filter_map(per_row)
        .fold(|| (0f64, 0usize), |(s, n), l| (s + l, n + 1))
        .reduce(|| (0.0, 0), |a, b| (a.0 + b.0, a.1 + b.1));
    Ok((sum, n))
}

fn targets_u32<'a>(s: &'a CpuStorage, l: &Layout) -> Result<&'a [u32]> {
    match (s, l.contiguous_offsets()) {
        (CpuStorage::U32(v), Some((a, b))) => Ok(&v[a..b]),
        _ => candle_core::bail!("cross_entropy: targets must be contiguous u32"),
    }
}

impl candle_core::CustomOp2 for CrossEntropy {
    fn name(&self) -> &'static str {
        "ferrolm-cross-entropy"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let z = contiguous_f32(s1, l1, self.name())?;
        let t = targets_u32(s2, l2)?;
        let v = l1.dims()[1];
        let (sum, n) = ce_rows(z, t, v)?;
        let mean = if n == 0 { 0.0 } else { sum / n as f64 };
        Ok((CpuStorage::F32(vec![mean as f32]), Shape::from(())))
    }

    fn bwd(&self, logits: &Tensor, targets: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let dz = logits.contiguous()?.apply_op3_no_bwd(targets, &grad.reshape(1)?, &CrossEntropyBackward)?;
        Ok((Some(dz), None))
    }
}

struct CrossEntropyBackward;

impl CustomOp3 for CrossEntropyBackward {
    fn name(&self) -> &'static str {
        "ferrolm-cross-entropy-bwd"
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
        let z = contiguous_f32(s1, l1, self.name())?;
        let t = targets_u32(s2, l2)?;
        let g = contiguous_f32(s3, l3, self.name())?[0];
        let v = l1.dims()[1];
        let n = t.iter().filter(|&&x| x != IGNORE_INDEX).count().max(1);
        let scale = g / n as f32;
        let mut out = vec![0f32; z.len()];
        out.par_chunks_mut(v).enumerate().for_each(|(i, o)| {
            if t[i] == IGNORE_INDEX {
                return;
            }
            let row = &z[i * v..(i + 1) * v];
            let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let mut sum = 0f32;
            for (o, &x) in o.iter_mut().zip(row) {
                *o = fast_exp(x - max);
                sum += *o;
            }
            let k = scale / sum;
            o.iter_mut().for_each(|o| *o *= k);
            o[t[i] as usize] -= scale;
        });
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }
}

/// Mean cross-entropy of `logits` (N, V) against `targets` (N, u32), skipping targets equal
/// to [`IGNORE_INDEX`]; differentiable in the logits.
pub fn cross_entropy(logits: &Tensor, targets: &Tensor) -> Result<Tensor> {
    if !logits.device().is_cpu() {
        // Composed fallback; IGNORE_INDEX is not supported there.
        return candle_nn::loss::cross_entropy(logits, targets);
    }
    logits.contiguous()?.apply_op2(&targets.contiguous()?, CrossEntropy)
}

// ---------------------------------------------------------------- bias add

/// x + b with b broadcast over every leading dimension. candle's broadcast_add computes
/// the bias gradient with a generic strided reduction over the leading dimensions; here
/// the backward is a contiguous column sum, split across threads.
struct AddBias;

impl candle_core::CustomOp2 for AddBias {
    fn name(&self) -> &'static str {
        "ferrolm-add-bias"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = contiguous_f32(s1, l1, self.name())?;
        let b = contiguous_f32(s2, l2, self.name())?;
        let n = b.len();
        let mut out = x.to_vec();
        for_rows(&mut out, n, |_, row| row.iter_mut().zip(b).for_each(|(o, &bv)| *o += bv));
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }

    fn bwd(&self, _x: &Tensor, b: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let n = b.elem_count();
        let g2 = grad.contiguous()?.reshape(((), n))?;
        Ok((Some(grad.clone()), Some(g2.apply_op1_no_bwd(&ColumnSum)?)))
    }
}

/// Sum of a contiguous (rows, n) matrix over its rows → (n).
struct ColumnSum;

impl CustomOp1 for ColumnSum {
    fn name(&self) -> &'static str {
        "ferrolm-column-sum"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let g = contiguous_f32(s, l, self.name())?;
        let n = l.dims()[1];
        let rows = g.len() / n;
        let chunk = rows.div_ceil(rayon::current_num_threads().max(1)).max(64);
        let partials: Vec<Vec<f32>> = g
            .par_chunks(chunk * n)
            .map(|block| {
                let mut acc = vec![0f32; n];
                for row in block.chunks(n) {
                    acc.iter_mut().zip(row).for_each(|(a, &v)| *a += v);
                }
                acc
            })
            .collect();
        let mut out = vec![0f32; n];
        for p in partials {
            out.iter_mut().zip(p).for_each(|(o, v)| *o += v);
        }
        Ok((CpuStorage::F32(out), Shape::from(n)))
    }
}

/// Every row of `out` (rows of `b.len()`) set to `b`.
pub(crate) fn fill_rows(out: &mut [f32], b: &[f32]) {
    for_rows(out, b.len(), |_, row| row.copy_from_slice(b));
}

/// Σ over rows of a (rows, n) tensor → (n), without autograd.
pub(crate) fn column_sum(g: &Tensor) -> Result<Tensor> {
    let n = g.dim(candle_core::D::Minus1)?;
    g.contiguous()?.reshape(((), n))?.apply_op1_no_bwd(&ColumnSum)
}

/// `x + b`, b broadcast over the leading dimensions of x; differentiable in both.
pub fn add_bias(x: &Tensor, b: &Tensor) -> Result<Tensor> {
    if !x.device().is_cpu() {
        return x.broadcast_add(b);
    }
    x.contiguous()?.apply_op2(&b.contiguous()?, AddBias)
}

// ---------------------------------------------------------------- dropout

/// Inverted dropout with a mask drawn from a seeded stream, so a training step is a pure
/// function of (weights, batch, step seed): resuming from a checkpoint replays it exactly.
pub fn dropout(x: &Tensor, p: f32, seed: u64) -> Result<Tensor> {
    if p <= 0.0 {
        return Ok(x.clone());
    }
    use rand::{Rng, SeedableRng};
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let scale = 1.0 / (1.0 - p);
    let mask: Vec<f32> = (0..x.elem_count()).map(|_| if rng.random::<f32>() < p { 0.0 } else { scale }).collect();
    let mask = Tensor::from_vec(mask, x.shape(), x.device())?;
    x * mask
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use candle_core::{Device, Var, D};

    pub(crate) fn rand(shape: &[usize], seed: u64) -> Tensor {
        use rand::{Rng, SeedableRng};
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        let n: usize = shape.iter().product();
        let v: Vec<f32> = (0..n).map(|_| rng.random_range(-2.0..2.0)).collect();
        Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
    }

    pub(crate) fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
        (a - b).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap()
    }

    #[test]
    fn scaled_causal_softmax_matches_mask_then_softmax() {
        let (tq, tk, off) = (4usize, 7usize, 3usize);
        let x = Var::from_tensor(&rand(&[2, 3, tq, tk], 11)).unwrap();
        let g = rand(&[2, 3, tq, tk], 12);
        let ours = scaled_softmax(x.as_tensor(), 0.5, Some(off)).unwrap();
        let mask: Vec<f32> = (0..tq * tk).map(|k| if k % tk <= off + k / tk { 0.0 } else { -1e30 }).collect();
        let mask = Tensor::from_vec(mask, (tq, tk), &Device::Cpu).unwrap();
        let reference = candle_nn::ops::softmax(&(x.as_tensor() * 0.5).unwrap().broadcast_add(&mask).unwrap(), D::Minus1).unwrap();
        assert!(max_diff(&ours, &reference) < 1e-6);
        let ga = (ours * &g).unwrap().sum_all().unwrap().backward().unwrap();
        let gb = (reference * &g).unwrap().sum_all().unwrap().backward().unwrap();
        assert!(max_diff(ga.get(&x).unwrap(), gb.get(&x).unwrap()) < 1e-5);
    }

    #[test]
    fn fast_exp_is_accurate() {
        let mut worst = 0f32;
        for i in 0..200_000 {
            let x = -80.0 + 160.0 * i as f32 / 200_000.0;
            let (a, b) = (fast_exp(x), x.exp());
            worst = worst.max(((a - b) / b).abs());
        }
        assert!(worst < 1e-6, "worst relative error {worst}");
    }

    #[test]
    fn add_bias_matches_broadcast_add() {
        let x = Var::from_tensor(&rand(&[3, 5, 9], 13)).unwrap();
        let b = Var::from_tensor(&rand(&[9], 14)).unwrap();
        let g = rand(&[3, 5, 9], 15);
        let ours = add_bias(x.as_tensor(), b.as_tensor()).unwrap();
        let reference = x.as_tensor().broadcast_add(b.as_tensor()).unwrap();
        assert!(max_diff(&ours, &reference) < 1e-6);
        let ga = (ours * &g).unwrap().sum_all().unwrap().backward().unwrap();
        let gb = (reference * &g).unwrap().sum_all().unwrap().backward().unwrap();
        assert!(max_diff(ga.get(&x).unwrap(), gb.get(&x).unwrap()) < 1e-6);
        assert!(max_diff(ga.get(&b).unwrap(), gb.get(&b).unwrap()) < 1e-5);
    }

    #[test]
    fn gelu_matches_candle_forward_and_backward() {
        let x = Var::from_tensor(&(rand(&[4, 300], 7) * 3.0).unwrap()).unwrap();
        let g = rand(&[4, 300], 8);
        let ours = gelu(x.as_tensor()).unwrap();
        let reference = x.as_tensor().gelu().unwrap();
        assert!(max_diff(&ours, &reference) < 1e-5);
        let ga = (ours * &g).unwrap().sum_all().unwrap().backward().unwrap();
        let gb = (reference * &g).unwrap().sum_all().unwrap().backward().unwrap();
        assert!(max_diff(ga.get(&x).unwrap(), gb.get(&x).unwrap()) < 1e-5);
    }

    #[test]
    fn cross_entropy_matches_candle_and_ignores_masked_targets() {
        let z = Var::from_tensor(&(rand(&[6, 11], 9) * 4.0).unwrap()).unwrap();
        let t = Tensor::new(&[3u32, 0, 10, 5, 5, 1], &Device::Cpu).unwrap();
        let ours = cross_entropy(z.as_tensor(), &t).unwrap();
        let reference = candle_nn::loss::cross_entropy(z.as_tensor(), &t).unwrap();
        assert!(max_diff(&ours, &reference) < 1e-5);
        let ga = (&ours * 3.0).unwrap().backward().unwrap();
        let gb = (&reference * 3.0).unwrap().backward().unwrap();
        assert!(max_diff(ga.get(&z).unwrap(), gb.get(&z).unwrap()) < 1e-5);
        // Ignored rows: same as dropping them, and they get no gradient.
        let masked = Tensor::new(&[3u32, IGNORE_INDEX, 10, IGNORE_INDEX, 5, 1], &Device::Cpu).unwrap();
        let keep = Tensor::new(&[0u32, 2, 4, 5], &Device::Cpu).unwrap();
        let ours = cross_entropy(z.as_tensor(), &masked).unwrap();
        let reference = candle_nn::loss::cross_entropy(
            &z.as_tensor().index_select(&keep, 0).unwrap(),
            &Tensor::new(&[3u32, 10, 5, 1], &Device::Cpu).unwrap(),
        )
        .unwrap();
        assert!(max_diff(&ours, &reference) < 1e-5);
        let ga = ours.backward().unwrap();
        let row1: Vec<f32> = ga.get(&z).unwrap().get(1).unwrap().to_vec1().unwrap();
        assert!(row1.iter().all(|&v| v == 0.0), "ignored target carries no gradient");
    }

    #[test]
    fn softmax_matches_composed_forward_and_backward() {
        let x = Var::from_tensor(&rand(&[3, 5, 7], 1)).unwrap();
        let g = rand(&[3, 5, 7], 2);
        let ours = softmax_last_dim(x.as_tensor()).unwrap();
        let reference = candle_nn::ops::softmax(x.as_tensor(), D::Minus1).unwrap();
        assert!(max_diff(&ours, &reference) < 1e-6);
        let ga = (ours * &g).unwrap().sum_all().unwrap().backward().unwrap();
        let gb = (reference * &g).unwrap().sum_all().unwrap().backward().unwrap();
        assert!(max_diff(ga.get(&x).unwrap(), gb.get(&x).unwrap()) < 1e-5);
    }

    fn composed_norm(x: &Tensor, w: &Tensor, b: Option<&Tensor>, eps: f64) -> Tensor {
        match b {
            Some(b) => candle_nn::ops::layer_norm_slow(x, w, b, eps as f32).unwrap(),
            None => candle_nn::ops::rms_norm_slow(x, w, eps as f32).unwrap(),
        }
    }

    #[test]
    fn norms_match_composed_forward_and_backward() {
        // Small rows, and a large ragged case: rows split over threads, and a width that is
        // not a multiple of the 16 lanes the sums use.
        for (shape, dim) in [([2, 6, 16], 16), ([3, 700, 37], 37)] {
        for with_bias in [true, false] {
            let x = Var::from_tensor(&rand(&shape, 3)).unwrap();
            let w = Var::from_tensor(&rand(&[dim], 4)).unwrap();
            let b = Var::from_tensor(&rand(&[dim], 5)).unwrap();
            let g = rand(&shape, 6);
            let ours = if with_bias {
                layer_norm(x.as_tensor(), w.as_tensor(), b.as_tensor(), 1e-5).unwrap()
            } else {
                rms_norm(x.as_tensor(), w.as_tensor(), 1e-5).unwrap()
            };
            let reference = composed_norm(x.as_tensor(), w.as_tensor(), with_bias.then_some(b.as_tensor()), 1e-5);
            assert!(max_diff(&ours, &reference) < 1e-5, "forward, bias={with_bias}");
            let ga = (ours * &g).unwrap().sum_all().unwrap().backward().unwrap();
            let gb = (reference * &g).unwrap().sum_all().unwrap().backward().unwrap();
            assert!(max_diff(ga.get(&x).unwrap(), gb.get(&x).unwrap()) < 1e-4, "dx, bias={with_bias}");
            // dw and db are sums over every row: f32 rounding grows with the row count.
            let tol = 1e-4 * (shape[0] * shape[1]) as f32 / 12.0;
            assert!(max_diff(ga.get(&w).unwrap(), gb.get(&w).unwrap()) < tol, "dw, bias={with_bias}");
            if with_bias {
                assert!(max_diff(ga.get(&b).unwrap(), gb.get(&b).unwrap()) < tol, "db");
            }
        }
        }
    }
}
