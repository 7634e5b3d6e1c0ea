//! Fused self-attention for training on CPU: one op from the fused q/k/v projection
//! `(batch, T, (H + 2·KVH)·D)` straight to the heads' concatenated output `(batch, T, H·D)`,
//! with its backward pass.
//!
//! Why: composed from candle ops, attention splits q/k/v with `narrow`, moves heads to
//! the front with copies, runs batched matmuls, and on the way back turns every one of
//! those steps into another copy (`narrow`'s gradient is a concatenation with zeros,
//! a transpose's gradient a strided copy). Here each (sequence, key/value head) pair is
//! one task: its queries, keys and values are read in place from the projection through
//! strides (the products take any row/column stride), scores live in a T×T buffer, and
//! the output is written in place into its columns. Causal row blocks skip the products
//! above the diagonal.
//!
//! The forward pass keeps the probabilities of every head for the backward pass while they
//! fit in [`KEEP_PROBS_MAX`] floats (64 MiB a layer); the backward reads them, and only
//! when they were not kept (long contexts, or a second backward through the same graph)
//! recomputes them from Q and K as FlashAttention does. It writes dQ, dK and dV straight
//! into the gradient of the projection. Every product goes through the one precision
//! dispatch ([`crate::matmul::matmul`], on the calling task's thread).
//!
//! Covers causal or bidirectional self-attention with grouped-query heads, without a
//! bias/segment mask, KV cache or attention dropout; other cases take the composed path.
//! RoPE models rotate the projection first ([`crate::rope_qkv`]).

use crate::cpu::{contiguous_f32, output_buffer};
use crate::matmul::{matmul, Threads};
use crate::ptr::{SendPtr, Strided};
use crate::simd::{lane_dot, vectorized};
use crate::softmax::softmax_row;
use candle_core::{CpuStorage, CustomOp1, CustomOp2, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

#[derive(Debug, Clone, Copy)]
struct Dims {
    b: usize,
    t: usize,
    h: usize,
    kvh: usize,
    d: usize,
    causal: bool,
    scale: f32,
}

impl Dims {
    /// Width of a projection row: queries, keys, values.
    fn w(&self) -> usize {
        (self.h + 2 * self.kvh) * self.d
    }
    /// Width of an output row.
    fn c(&self) -> usize {
        self.h * self.d
    }
    fn rep(&self) -> usize {
        self.h / self.kvh
    }
    fn q_off(&self, head: usize) -> usize {
        head * self.d
    }
    fn k_off(&self, kv_head: usize) -> usize {
        self.c() + kv_head * self.d
    }
    fn v_off(&self, kv_head: usize) -> usize {
        self.c() + self.kvh * self.d + kv_head * self.d
    }
}

/// `dst (m×n, row stride dst_rs) := [dst +] scale · lhs · rhs` on this thread (tasks are
/// already parallel), with the operands given as (pointer, row stride, column stride).
///
/// # Safety
/// As for [`matmul`].
#[allow(clippy::too_many_arguments)]
#[inline(always)]
unsafe fn mm(m: usize, n: usize, k: usize, dst: *mut f32, dst_rs: usize, accumulate: bool, lhs: *const f32, lhs_rs: usize, lhs_cs: usize, rhs: *const f32, rhs_rs: usize, rhs_cs: usize, scale: f32) {
    let a = Strided { ptr: lhs, rs: lhs_rs as isize, cs: lhs_cs as isize };
    let b = Strided { ptr: rhs, rs: rhs_rs as isize, cs: rhs_cs as isize };
    // SAFETY: the caller's contract is matmul's.
    unsafe { matmul(m, n, k, a, b, dst, dst_rs, accumulate, scale, Threads::Caller) }
}

/// Query rows per block of causal attention. Row block [r0, r1) sees keys 0..r1 only,
/// so the score, value and gradient products skip the blocks above the diagonal: with
/// T = 4 blocks that is (1+2+3+4)/16 = 62% of the full T×T work (PyTorch's CPU
/// flash attention skips them too). Smaller blocks skip more but make more, smaller
/// products, each with its own packing.
const CAUSAL_BLOCK: usize = 64;

/// The row blocks `(r0, r1, visible keys)`: blocks of [`CAUSAL_BLOCK`] rows seeing keys
/// 0..r1 when causal, otherwise one block of all rows seeing every key.
fn row_blocks(dm: &Dims) -> impl Iterator<Item = (usize, usize, usize)> + use<> {
    let (t, causal) = (dm.t, dm.causal);
    let step = if causal { CAUSAL_BLOCK } else { t.max(1) };
    (0..t).step_by(step).map(move |r0| {
        let r1 = (r0 + step).min(t);
        (r0, r1, if causal { r1 } else { t })
    })
}

/// P = softmax(scale · Q Kᵀ) for one head of one sequence, into `p` (T×T, row-major).
/// Only each row block's visible columns are written (see [`row_blocks`]); in them the
/// masked entries (j > i when causal) are exactly zero.
///
/// # Safety
/// `base` must point at one sequence's projection rows (T rows of `dm.w()` floats), and
/// `p` must hold T·T floats.
unsafe fn probabilities(dm: &Dims, base: *const f32, head: usize, p: &mut [f32]) {
    let (t, w) = (dm.t, dm.w());
    // SAFETY: the head's query and key columns lie inside the sequence's rows (the caller's
    // contract); the offsets are below one row's width.
    let (q, k) = unsafe { (base.add(dm.q_off(head)), base.add(dm.k_off(head / dm.rep()))) };
    for (r0, r1, keys) in row_blocks(dm) {
        // S = Q · Kᵀ; Kᵀ's element (d, j) is k[j, d]: row stride 1, column stride w.
        // SAFETY: rows r0..r1 of Q and the first `keys` ≤ T rows of K lie inside the
        // sequence; rows r0..r1 of p, `keys` ≤ T columns each, lie inside p (T·T floats),
        // which this call borrows exclusively.
        unsafe { mm(r1 - r0, keys, dm.d, p.as_mut_ptr().add(r0 * t), t, false, q.add(r0 * w), w, 1, k, 1, w, dm.scale) };
        vectorized(#[inline(always)] || {
            for i in r0..r1 {
                let row = &mut p[i * t..i * t + keys];
                let visible = if dm.causal { i + 1 } else { t };
                let (live, masked) = row.split_at_mut(visible);
                softmax_row(live);
                masked.iter_mut().for_each(|x| *x = 0.0);
            }
        })
    }
}

/// Most probabilities (floats, all heads of one layer's batch) the forward pass keeps for
/// the backward pass: 64 MiB. Below it the backward reads them instead of recomputing
/// Q·Kᵀ and the softmax; above it (long contexts) memory wins and it recomputes them.
const KEEP_PROBS_MAX: usize = 1 << 24;

struct FusedSelfAttention {
    dims: Dims,
    /// The forward pass's probabilities, (batch, head, T, T), for the backward pass.
    probs: std::sync::Mutex<Option<Vec<f32>>>,
}

impl CustomOp1 for FusedSelfAttention {
    fn name(&self) -> &'static str {
        "ferrolm-fused-self-attention"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let dm = self.dims;
        let qkv = contiguous_f32(s, l, self.name())?;
        let (t, w, c) = (dm.t, dm.w(), dm.c());
        // Every head writes its d columns of every row (mm without accumulate).
        let mut y = output_buffer(dm.b * t * c);
        let out = SendPtr::new(y.as_mut_ptr());
        // Each task writes its own T×T block (only the parts the backward reads).
        let keep = dm.b * dm.h * t * t <= KEEP_PROBS_MAX;
        let mut kept = if keep { output_buffer(dm.b * dm.h * t * t) } else { Vec::new() };
        let kept_ptr = SendPtr::new(kept.as_mut_ptr());
        (0..dm.b * dm.h).into_par_iter().for_each_init(
            || if keep { Vec::new() } else { vec![0f32; t * t] },
            |scratch, task| {
                let (bi, head) = (task / dm.h, task % dm.h);
                let p = if keep {
                    // SAFETY: `kept` holds b·h blocks of T·T floats and task < b·h; each task
                    // forms the slice of its own block only, so the slices are disjoint, and
                    // `kept` outlives the parallel loop.
                    unsafe { std::slice::from_raw_parts_mut(kept_ptr.add(task * t * t), t * t) }
                } else {
                    &mut scratch[..]
                };
                // SAFETY: qkv holds b sequences of T rows of w floats; bi < b.
                let base = unsafe { qkv.as_ptr().add(bi * t * w) };
                // SAFETY: base points at sequence bi's rows and p holds T·T floats.
                unsafe { probabilities(&dm, base, head, p) };
                // SAFETY: the value head's columns and the output columns of this (sequence,
                // head) lie inside qkv and y (offsets below one row's width). Each task writes
                // only its own d columns of its own sequence's rows of y, so no two tasks
                // write the same element, and y outlives the loop.
                unsafe {
                    let v = base.add(dm.v_off(head / dm.rep()));
                    let dst = out.add(bi * t * c + head * dm.d);
                    for (r0, r1, keys) in row_blocks(&dm) {
                        mm(r1 - r0, dm.d, keys, dst.add(r0 * c), c, false, p.as_ptr().add(r0 * t), t, 1, v, w, 1, 1.0);
                    }
                }
            },
        );
        *self.probs.lock().unwrap_or_else(|e| e.into_inner()) = keep.then_some(kept);
        Ok((CpuStorage::F32(y), Shape::from((dm.b, t, c))))
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        // Taken, not cloned: a second backward through the same graph recomputes them.
        let probs = self.probs.lock().unwrap_or_else(|e| e.into_inner()).take();
        Ok(Some(arg.apply_op2_no_bwd(&grad.contiguous()?, &FusedSelfAttentionBackward { dims: self.dims, probs })?))
    }
}

struct FusedSelfAttentionBackward {
    dims: Dims,
    /// The forward pass's probabilities when it kept them; otherwise they are recomputed.
    probs: Option<Vec<f32>>,
}

impl CustomOp2 for FusedSelfAttentionBackward {
    fn name(&self) -> &'static str {
        "ferrolm-fused-self-attention-bwd"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let dm = self.dims;
        let qkv = contiguous_f32(s1, l1, self.name())?;
        let dy = contiguous_f32(s2, l2, self.name())?;
        let (t, w, c, d) = (dm.t, dm.w(), dm.c(), dm.d);
        // Every q, k and v column block is written by its first head (mm without accumulate).
        let mut dqkv = output_buffer(dm.b * t * w);
        let out = SendPtr::new(dqkv.as_mut_ptr());
        // One task per (sequence, key/value head): the query heads that share a key/value
        // head add into the same dK and dV, so they run in the same task.
        (0..dm.b * dm.kvh).into_par_iter().for_each_init(
            // The probability scratch is only needed when the forward did not keep them.
            || (if self.probs.is_some() { Vec::new() } else { vec![0f32; t * t] }, vec![0f32; t * t]),
            |(p, dp), task| {
                let (bi, kv_head) = (task / dm.kvh, task % dm.kvh);
                // SAFETY: qkv, dy and dqkv hold b sequences (of T rows of w, c and w floats);
                // bi < b, and every offset below stays inside sequence bi's rows. Each task
                // writes only the q columns of its own query heads and the k and v columns of
                // its own key/value head, in its own sequence's rows of dqkv, so no two tasks
                // write the same element, and dqkv outlives the loop. The kept probabilities
                // are read only; p and dp are this task's own T·T buffers.
                unsafe {
                    let base = qkv.as_ptr().add(bi * t * w);
                    let gbase = out.add(bi * t * w);
                    let k = base.add(dm.k_off(kv_head));
                    let v = base.add(dm.v_off(kv_head));
                    for (r, head) in (kv_head * dm.rep()..(kv_head + 1) * dm.rep()).enumerate() {
                        let first = r == 0;
                        let p: &[f32] = match &self.probs {
                            Some(all) => &all[(bi * dm.h + head) * t * t..][..t * t],
                            None => {
                                probabilities(&dm, base, head, p);
                                p
                            }
                        };
                        let g = dy.as_ptr().add(bi * t * c + head * d);
                        let q = base.add(dm.q_off(head));
                        // dP = dY · Vᵀ, then dS = P ⊙ (dP − Σⱼ P⊙dP) times the score scale,
                        // then dQ = dS · K; each over the row block's visible keys.
                        for (r0, r1, keys) in row_blocks(&dm) {
                            let (pb, dpb) = (&p[r0 * t..], &mut dp[r0 * t..]);
                            mm(r1 - r0, keys, d, dpb.as_mut_ptr(), t, false, g.add(r0 * c), c, 1, v, 1, w, 1.0);
                            vectorized(#[inline(always)] || {
                                for (pr, dr) in pb.chunks(t).zip(dpb.chunks_mut(t)).take(r1 - r0) {
                                    let (pr, dr) = (&pr[..keys], &mut dr[..keys]);
                                    let dot = lane_dot(pr, dr);
                                    for (x, &pv) in dr.iter_mut().zip(pr) {
                                        *x = pv * (*x - dot) * dm.scale;
                                    }
                                }
                            });
                            mm(r1 - r0, d, keys, gbase.add(dm.q_off(head) + r0 * w), w, false, dpb.as_ptr(), t, 1, k, w, 1, 1.0);
                        }
                        // dV += Pᵀ · dY and dK += dSᵀ · Q, by key blocks: the keys of block
                        // [c0, c1) are seen by the rows c0.. of every later row block, whose
                        // columns c0..c1 are written (zeros where masked).
                        for (c0, c1, _) in row_blocks(&dm) {
                            let rows = if dm.causal { c0 } else { 0 };
                            let (pt, dst) = (p.as_ptr().add(rows * t + c0), dm.v_off(kv_head) + c0 * w);
                            mm(c1 - c0, d, t - rows, gbase.add(dst), w, !first, pt, 1, t, g.add(rows * c), c, 1, 1.0);
                            let (st, dst) = (dp.as_ptr().add(rows * t + c0), dm.k_off(kv_head) + c0 * w);
                            mm(c1 - c0, d, t - rows, gbase.add(dst), w, !first, st, 1, t, q.add(rows * w), w, 1, 1.0);
                        }
                    }
                }
            },
        );
        Ok((CpuStorage::F32(dqkv), l1.shape().clone()))
    }
}

/// Self-attention of `qkv` (batch, T, (H + 2·KVH)·D), laid out as the fused projection
/// writes it (all query heads, then key heads, then value heads), to (batch, T, H·D):
/// softmax(Q Kᵀ / √D) V per head, causal or bidirectional. CPU, f32.
pub fn fused_self_attention(qkv: &Tensor, n_heads: usize, n_kv_heads: usize, head_dim: usize, causal: bool) -> Result<Tensor> {
    let (b, t, width) = qkv.dims3()?;
    if width != (n_heads + 2 * n_kv_heads) * head_dim || n_kv_heads == 0 || !n_heads.is_multiple_of(n_kv_heads) {
        candle_core::bail!("fused attention: width {width} does not fit {n_heads} heads, {n_kv_heads} kv heads of {head_dim}");
    }
    let dims = Dims { b, t, h: n_heads, kvh: n_kv_heads, d: head_dim, causal, scale: 1.0 / (head_dim as f32).sqrt() };
    qkv.contiguous()?.apply_op1(FusedSelfAttention { dims, probs: Default::default() })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::max_diff;
    use candle_core::{Device, Var, D};

    /// The composed reference: split, heads to the front, softmax(QKᵀ·s + mask)·V.
    fn reference(qkv: &Tensor, h: usize, kvh: usize, d: usize, causal: bool) -> Tensor {
        let (b, t, _) = qkv.dims3().unwrap();
        let heads = |x: Tensor, n: usize| x.reshape((b, t, n, d)).unwrap().transpose(1, 2).unwrap().contiguous().unwrap();
        let q = heads(qkv.narrow(D::Minus1, 0, h * d).unwrap(), h);
        let rep = |x: Tensor| {
            let x = heads(x, kvh);
            x.unsqueeze(2).unwrap().expand((b, kvh, h / kvh, t, d)).unwrap().reshape((b, h, t, d)).unwrap()
        };
        let k = rep(qkv.narrow(D::Minus1, h * d, kvh * d).unwrap());
        let v = rep(qkv.narrow(D::Minus1, h * d + kvh * d, kvh * d).unwrap());
        let s = (q.matmul(&k.t().unwrap()).unwrap() * (1.0 / (d as f64).sqrt())).unwrap();
        let s = if causal {
            let mask: Vec<f32> = (0..t * t).map(|i| if i % t > i / t { f32::NEG_INFINITY } else { 0.0 }).collect();
            s.broadcast_add(&Tensor::from_vec(mask, (t, t), &Device::Cpu).unwrap()).unwrap()
        } else {
            s
        };
        // candle-nn's composed softmax (its fused one has no backward).
        let p = candle_nn::ops::softmax(&s, D::Minus1).unwrap();
        p.matmul(&v).unwrap().transpose(1, 2).unwrap().reshape((b, t, h * d)).unwrap()
    }

    #[test]
    fn matches_the_composed_attention_forward_and_backward() {
        // T = 150 as well: longer rows than the 16 lanes of the softmax sums, ragged tails.
        for (h, kvh, causal, t) in [(4, 4, true, 7), (4, 2, true, 7), (4, 1, false, 7), (2, 2, false, 7), (2, 1, true, 150), (2, 2, false, 150)] {
            let (b, d) = (2, 8);
            let x = Tensor::randn(0f32, 1.0, (b, t, (h + 2 * kvh) * d), &Device::Cpu).unwrap();
            let x = Var::from_tensor(&x).unwrap();
            let w = Tensor::randn(0f32, 1.0, (b, t, h * d), &Device::Cpu).unwrap();
            let fused = fused_self_attention(x.as_tensor(), h, kvh, d, causal).unwrap();
            let refr = reference(x.as_tensor(), h, kvh, d, causal);
            assert!(max_diff(&fused, &refr) < 1e-5, "forward h{h} kvh{kvh} causal {causal}");
            let loss = (fused * &w).unwrap().sum_all().unwrap();
            let gr = (refr * &w).unwrap().sum_all().unwrap().backward().unwrap();
            let gr = gr.get(x.as_tensor()).unwrap();
            // The first backward reads the probabilities the forward kept; the second
            // finds them taken and recomputes them.
            for pass in ["kept", "recomputed"] {
                let gf = loss.backward().unwrap();
                let gf = gf.get(x.as_tensor()).unwrap();
                assert!(max_diff(gf, gr) < 1e-4, "backward ({pass}) h{h} kvh{kvh} causal {causal}: {}", max_diff(gf, gr));
            }
        }
    }

    #[test]
    fn a_causal_position_never_sees_the_future() {
        let (b, t, h, d) = (1, 6, 2, 4);
        let x = Tensor::randn(0f32, 1.0, (b, t, 3 * h * d), &Device::Cpu).unwrap();
        let y = fused_self_attention(&x, h, h, d, true).unwrap();
        // Change the last position's keys and values: earlier outputs must not move.
        let mut v = x.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let row = 3 * h * d;
        for x in &mut v[(t - 1) * row..] {
            *x += 3.0;
        }
        let x2 = Tensor::from_vec(v, (b, t, row), &Device::Cpu).unwrap();
        let y2 = fused_self_attention(&x2, h, h, d, true).unwrap();
        let early = |y: &Tensor| y.narrow(1, 0, t - 1).unwrap();
        assert_eq!(max_diff(&early(&y), &early(&y2)), 0.0);
        assert!(max_diff(&y, &y2) > 1e-3);
    }
}
