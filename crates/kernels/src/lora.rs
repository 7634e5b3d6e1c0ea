//! A frozen linear layer with LoRA adapters as one op: `y = x·Wᵀ (+ b) + s·(x·Aᵀ)·Bᵀ`,
//! the adapters updating blocks of output rows (a fused q/k/v layer adapts its q, k and v
//! rows with separate A/B pairs), with its backward for x, A and B.
//!
//! Why: composed, each adapter is two products plus, over the whole (tokens × out)
//! output, a concatenation with zeros (blocks of rows), a scaling and a sum — each a fresh
//! tensor written on one thread — and on the way back the scaling again and a copy for
//! every block of the concatenation. Here the adapters' product is added into the base
//! product's output by the matrix product itself (its accumulate form, scaled), and the
//! backward forms dX = dY·W + s·(dY·B)·A the same way: no pass over a full-width tensor
//! beyond the products'. The forward keeps the adapters' inner products x·Aᵀ (rank
//! columns) for the backward.
//!
//! Adapter dropout (PEFT's `lora_dropout`: the adapters, not the base, see a dropped
//! input) is drawn inside the op from a seed ([`crate::keep_bits`], one bit per element),
//! and drawn again in the backward: nothing of the size of x is kept.
//!
//! W and b are frozen (no gradient): the op holds them as a [`FrozenLinear`] — f32
//! weights, or weights held quantized (QLoRA: the model crate's blocks), which give the
//! base product and its input gradient. A trainable base takes the composed path.

use crate::cpu::{contiguous_f32, output_buffer, tensor_f32};
use crate::matmul::{matmul, Threads};
use crate::ptr::Strided;
use candle_core::{CpuStorage, CustomOp3, Layout, Result, Shape, Tensor};
use std::sync::Arc;

/// The frozen product under a layer's adapters: `y = x·Wᵀ (+ b)` and the input gradient
/// `dY·W`. f32 weights ([`lora_linear`]) or weights held quantized (the model's QLoRA
/// layers, [`lora_linear_on`]).
pub trait FrozenLinear: Send + Sync + std::fmt::Debug {
    /// (out, in)
    fn dims(&self) -> (usize, usize);
    /// y (rows × out) for x (rows × in), bias included.
    fn forward(&self, x: &[f32], rows: usize) -> Result<Vec<f32>>;
    /// dX (rows × in) = dY (rows × out) · W.
    fn input_grad(&self, dy: &[f32], rows: usize) -> Result<Vec<f32>>;
}

/// f32 weights (n × k) and an optional bias, frozen.
#[derive(Debug)]
struct DenseFrozen {
    w: Tensor,
    bias: Option<Tensor>,
}

impl FrozenLinear for DenseFrozen {
    fn dims(&self) -> (usize, usize) {
        self.w.dims2().unwrap_or((0, 0))
    }

    fn forward(&self, x: &[f32], rows: usize) -> Result<Vec<f32>> {
        let (n, k) = self.w.dims2()?;
        let (ws, wl) = self.w.storage_and_layout();
        let bias = self.bias.as_ref().map(|b| b.storage_and_layout());
        let bias = match &bias {
            Some((s, l)) => Some(tensor_f32(s, l, NAME)?),
            None => None,
        };
        crate::linear::forward_f32(x, rows, k, tensor_f32(&ws, wl, NAME)?, n, bias)
    }

    fn input_grad(&self, dy: &[f32], rows: usize) -> Result<Vec<f32>> {
        let (n, k) = self.w.dims2()?;
        let (ws, wl) = self.w.storage_and_layout();
        let wv = tensor_f32(&ws, wl, NAME)?;
        if dy.len() != rows * n {
            candle_core::bail!("{NAME}: a gradient of {} for {rows}×{n}", dy.len());
        }
        let mut dx = output_buffer(rows * k);
        // SAFETY: dY is rows×n, W n×k (its layout), dX a fresh rows×k buffer.
        unsafe { matmul(rows, k, n, Strided::row_major(dy, n), Strided::row_major(wv, k), dx.as_mut_ptr(), k, false, 1.0, Threads::Pool) };
        Ok(dx)
    }
}

#[derive(Debug)]
struct LoraLinear {
    base: Arc<dyn FrozenLinear>,
    /// `(start, rows)` of each adapted block of output rows, in the order of A's and B's
    /// blocks.
    parts: Vec<(usize, usize)>,
    rank: usize,
    scale: f32,
    /// Adapter dropout: (p, seed).
    dropout: Option<(f32, u64)>,
    /// The forward's u = x·Aᵀ, taken by the backward (which recomputes it when absent: a
    /// second backward through the same graph).
    u: std::sync::Mutex<Vec<f32>>,
}

fn poisoned<T>(_: T) -> candle_core::Error {
    candle_core::Error::Msg(format!("{NAME}: a thread panicked holding the inner products"))
}

const NAME: &str = "ferrolm-lora-linear";

impl LoraLinear {
    /// Checks A (P·r × k) and B (Σ rows × r) against x (rows × k) and W (n × k).
    fn check(&self, k: usize, n: usize, a: &Layout, b: &Layout) -> Result<()> {
        let (ar, ak) = a.shape().dims2()?;
        let (br, bc) = b.shape().dims2()?;
        let rows: usize = self.parts.iter().map(|p| p.1).sum();
        let fits = self.parts.iter().all(|&(s, r)| s + r <= n);
        if ak != k || ar != self.parts.len() * self.rank || bc != self.rank || br != rows || !fits {
            candle_core::bail!("{NAME}: A {:?}, B {:?} for parts {:?} of rank {} on a {n}×{k} layer", a.dims(), b.dims(), self.parts, self.rank);
        }
        Ok(())
    }

    /// The adapter-dropout mask of an input of `n` values and the kept values' scale (None
    /// without dropout): the same bits in the forward and the backward, from the same seed.
    fn keep(&self, n: usize) -> Option<(Vec<u64>, f32)> {
        let (p, seed) = self.dropout?;
        Some((crate::keep_bits(n, p, seed), 1.0 / (1.0 - p)))
    }

    /// The adapters' input: x with the mask applied (None without dropout: x itself).
    fn dropped(x: &[f32], keep: &Option<(Vec<u64>, f32)>) -> Option<Vec<f32>> {
        let (bits, scale) = keep.as_ref()?;
        let mut out = output_buffer(x.len());
        crate::dropout::apply_keep_bits(x, bits, *scale, &mut out);
        Some(out)
    }

    /// u = x·Aᵀ (rows × P·r).
    fn inner(&self, x: &[f32], rows: usize, k: usize, a: &[f32]) -> Vec<f32> {
        let pr = self.parts.len() * self.rank;
        let mut u = vec![0f32; rows * pr];
        // SAFETY: x is rows×k, A pr×k (checked), u a fresh rows×pr buffer.
        unsafe { matmul(rows, pr, k, Strided::row_major(x, k), Strided { ptr: a.as_ptr(), rs: 1, cs: k as isize }, u.as_mut_ptr(), pr, false, 1.0, Threads::Pool) };
        u
    }
}

impl CustomOp3 for LoraLinear {
    fn name(&self) -> &'static str {
        NAME
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout, s3: &CpuStorage, l3: &Layout) -> Result<(CpuStorage, Shape)> {
        let (x, a, b) = (contiguous_f32(s1, l1, NAME)?, contiguous_f32(s2, l2, NAME)?, contiguous_f32(s3, l3, NAME)?);
        let (rows, k) = l1.shape().dims2()?;
        let (n, base_k) = self.base.dims();
        if base_k != k {
            candle_core::bail!("{NAME}: an input of width {k} for a {n}×{base_k} layer");
        }
        self.check(k, n, l2, l3)?;
        let mut y = self.base.forward(x, rows)?;
        if y.len() != rows * n {
            candle_core::bail!("{NAME}: the base gave {} values for {rows}×{n}", y.len());
        }
        let dropped = Self::dropped(x, &self.keep(x.len()));
        let u = self.inner(dropped.as_deref().unwrap_or(x), rows, k, a);
        drop(dropped);
        let pr = self.parts.len() * self.rank;
        let mut b_row = 0;
        for (p, &(start, len)) in self.parts.iter().enumerate() {
            // y[:, start..start+len] += s · u_p · B_pᵀ; B_pᵀ's element (i, j) is B[b_row + j, i].
            let up = Strided { ptr: u[p * self.rank..].as_ptr(), rs: pr as isize, cs: 1 };
            let bt = Strided { ptr: b[b_row * self.rank..].as_ptr(), rs: 1, cs: self.rank as isize };
            // SAFETY: u is rows×pr, B's block len×r starts at row b_row (check: Σ len rows),
            // and the destination block, columns start..start+len ≤ n of the rows×n y.
            unsafe { matmul(rows, len, self.rank, up, bt, y[start..].as_mut_ptr(), n, true, self.scale, Threads::Pool) };
            b_row += len;
        }
        // kept for the backward (rows·P·r floats: a rank/width fraction of the output)
        *self.u.lock().map_err(poisoned)? = u;
        Ok((CpuStorage::F32(y), Shape::from((rows, n))))
    }

    fn bwd(&self, x: &Tensor, a: &Tensor, b: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        // x's gradient only when autograd tracks it (the first layer's input may depend on
        // no variable under LoRA: the token embedding is frozen).
        let need_x = x.track_op();
        let (x, a, b, g) = (x.detach().contiguous()?, a.detach().contiguous()?, b.detach().contiguous()?, grad.detach().contiguous()?);
        let ((rows, k), n, r, pr) = (x.dims2()?, g.dim(1)?, self.rank, self.parts.len() * self.rank);
        let (xs, xl) = x.storage_and_layout();
        let (as_, al) = a.storage_and_layout();
        let (bs, bl) = b.storage_and_layout();
        let (gs, gl) = g.storage_and_layout();
        let (xv, av, bv, gv) = (tensor_f32(&xs, xl, NAME)?, tensor_f32(&as_, al, NAME)?, tensor_f32(&bs, bl, NAME)?, tensor_f32(&gs, gl, NAME)?);
        // gB = [dY_p · B_p] (rows × P·r): the gradient reaching each adapter's inner product.
        let mut gb = vec![0f32; rows * pr];
        let mut db = vec![0f32; bv.len()];
        let mut da = vec![0f32; av.len()];
        // the adapters' input, dropped as in the forward (the same mask from the same seed),
        // the mask kept for dX
        let keep = self.keep(xv.len());
        let dropped = Self::dropped(xv, &keep);
        let xa = dropped.as_deref().unwrap_or(xv);
        let u = std::mem::take(&mut *self.u.lock().map_err(poisoned)?);
        let u = if u.len() == rows * pr { u } else { self.inner(xa, rows, k, av) };
        let mut b_row = 0;
        for (p, &(start, len)) in self.parts.iter().enumerate() {
            let gp = Strided { ptr: gv[start..].as_ptr(), rs: n as isize, cs: 1 };
            let bp = Strided::row_major(&bv[b_row * r..], r);
            // SAFETY: dY's columns start..start+len ≤ n of rows×n, B's block len×r from row
            // b_row, gB's columns p·r..(p+1)·r of rows×pr: all inside their buffers.
            unsafe { matmul(rows, r, len, gp, bp, gb[p * r..].as_mut_ptr(), pr, false, 1.0, Threads::Pool) };
            // dB_p (len × r) = s · dY_pᵀ · u_p
            let gpt = Strided { ptr: gv[start..].as_ptr(), rs: 1, cs: n as isize };
            let up = Strided { ptr: u[p * r..].as_ptr(), rs: pr as isize, cs: 1 };
            // SAFETY: as above; dB's block len×r from row b_row of a Σlen×r buffer.
            unsafe { matmul(len, r, rows, gpt, up, db[b_row * r..].as_mut_ptr(), r, false, self.scale, Threads::Pool) };
            b_row += len;
        }
        // dA (P·r × k) = s · gBᵀ · x (the adapters' input: dropped)
        let gbt = Strided { ptr: gb.as_ptr(), rs: 1, cs: pr as isize };
        // SAFETY: gB is rows×pr, x rows×k, dA a pr×k buffer.
        unsafe { matmul(pr, k, rows, gbt, Strided::row_major(xa, k), da.as_mut_ptr(), k, false, self.scale, Threads::Pool) };
        drop(dropped);
        let dx = if need_x {
            // dX (rows × k) = dY·W + s · gB·A
            let mut dx = self.base.input_grad(gv, rows)?;
            if dx.len() != rows * k {
                candle_core::bail!("{NAME}: the base gave an input gradient of {} for {rows}×{k}", dx.len());
            }
            match &keep {
                // SAFETY: gB rows×pr, A pr×k, dX rows×k (checked just above).
                None => unsafe { matmul(rows, k, pr, Strided::row_major(&gb, pr), Strided::row_major(av, k), dx.as_mut_ptr(), k, true, self.scale, Threads::Pool) },
                Some((bits, scale)) => {
                    // through the dropout: only the kept elements of x reached the adapters
                    let mut t = output_buffer(rows * k);
                    // SAFETY: as above, into a fresh rows×k buffer.
                    unsafe { matmul(rows, k, pr, Strided::row_major(&gb, pr), Strided::row_major(av, k), t.as_mut_ptr(), k, false, self.scale, Threads::Pool) };
                    crate::dropout::add_kept(&t, bits, *scale, &mut dx);
                }
            }
            Some(dx)
        } else {
            None
        };
        let dev = x.device().clone();
        drop((xs, as_, bs, gs));
        let dx = match dx {
            Some(v) => Some(Tensor::from_vec(v, (rows, k), &dev)?),
            None => None,
        };
        Ok((dx, Some(Tensor::from_vec(da, a.shape(), &dev)?), Some(Tensor::from_vec(db, b.shape(), &dev)?)))
    }
}

/// A layer's adapters, stacked: `a` the parts' A (rank × k each), `b` their B (rows × rank
/// each); part p updates output rows `parts[p].0 .. parts[p].0 + parts[p].1`.
pub struct LoraBlocks<'a> {
    pub a: &'a Tensor,
    pub b: &'a Tensor,
    pub parts: &'a [(usize, usize)],
    pub rank: usize,
    /// alpha / rank
    pub scale: f64,
    /// Adapter dropout (p, seed): the adapters see x dropped with [`crate::keep_bits`]'s
    /// mask (as [`crate::dropout_hashed`] draws it), the base sees x.
    pub dropout: Option<(f32, u64)>,
}

/// `x·Wᵀ (+ bias)`, plus `scale·(x·A_pᵀ)·B_pᵀ` added to each part's output rows, for `x`
/// of any rank (…, k), W (n × k) and bias frozen. Differentiable in x and the adapters' A
/// and B; f32 on the CPU.
pub fn lora_linear(x: &Tensor, w: &Tensor, bias: Option<&Tensor>, lora: &LoraBlocks) -> Result<Tensor> {
    if w.dtype() != candle_core::DType::F32 {
        candle_core::bail!("{NAME}: f32 weights only");
    }
    if w.track_op() || bias.is_some_and(|b| b.track_op()) {
        candle_core::bail!("{NAME}: the base weights must be frozen (detached)");
    }
    let base = DenseFrozen { w: w.contiguous()?, bias: bias.map(|b| b.contiguous()).transpose()? };
    lora_linear_on(x, Arc::new(base), lora)
}

/// [`lora_linear`] over any frozen product (weights held quantized: QLoRA).
pub fn lora_linear_on(x: &Tensor, base: Arc<dyn FrozenLinear>, lora: &LoraBlocks) -> Result<Tensor> {
    let LoraBlocks { a, b, parts, rank, scale, dropout } = *lora;
    if let Some((p, _)) = dropout {
        if !(0.0..1.0).contains(&p) {
            candle_core::bail!("{NAME}: adapter dropout {p} is not in [0, 1)");
        }
    }
    let dropout = dropout.filter(|&(p, _)| p > 0.0);
    if !x.device().is_cpu() || x.dtype() != candle_core::DType::F32 {
        candle_core::bail!("{NAME}: f32 on the CPU only");
    }
    let dims = x.dims().to_vec();
    let k = dims[dims.len() - 1];
    let rows = x.elem_count() / k.max(1);
    let n = base.dims().0;
    let op = LoraLinear { base, parts: parts.to_vec(), rank, scale: scale as f32, dropout, u: Default::default() };
    let y = x.contiguous()?.reshape((rows, k))?.apply_op3(&a.contiguous()?, &b.contiguous()?, op)?;
    let mut out = dims;
    *out.last_mut().expect("rank >= 1") = n;
    y.reshape(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{max_diff, rand};
    use candle_core::Var;

    #[test]
    fn matches_composed_adapters_forward_and_backward() {
        // a q/k/v-like layer: three adapted blocks with a gap of plain rows; a rank-3 input;
        // one and two threads
        let (k, n, r) = (24, 40, 4);
        let parts = [(0, 16), (16, 8), (30, 10)];
        for threads in [1, 2] {
            let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
            pool.install(|| {
                for (with_bias, dropout) in [(false, None), (true, None), (true, Some((0.3f32, 7u64)))] {
                    let x = Var::from_tensor(&rand(&[2, 7, k], 1)).unwrap();
                    let w = rand(&[n, k], 2);
                    let bias = rand(&[n], 3);
                    let a = Var::from_tensor(&rand(&[parts.len() * r, k], 4)).unwrap();
                    let b = Var::from_tensor(&rand(&[34, r], 5)).unwrap();
                    let g = rand(&[2, 7, n], 6);
                    let scale = 0.75;
                    let bias_ref = with_bias.then_some(&bias);
                    let blocks = LoraBlocks { a: a.as_tensor(), b: b.as_tensor(), parts: &parts, rank: r, scale, dropout };
                    let ours = lora_linear(x.as_tensor(), &w, bias_ref, &blocks).unwrap();
                    // composed: base product, then each block's update added into its rows
                    let mut reference = x.as_tensor().broadcast_matmul(&w.t().unwrap()).unwrap();
                    if let Some(bias) = bias_ref {
                        reference = reference.broadcast_add(bias).unwrap();
                    }
                    // the adapters see x dropped (the same mask from the same seed), the base x
                    let xa = match dropout {
                        Some((p, seed)) => crate::dropout_hashed(x.as_tensor(), p, seed).unwrap(),
                        None => x.as_tensor().clone(),
                    };
                    let mut pieces = Vec::new();
                    let (mut at, mut b_row) = (0, 0);
                    for (p, &(start, len)) in parts.iter().enumerate() {
                        if start > at {
                            pieces.push(Tensor::zeros((2, 7, start - at), candle_core::DType::F32, x.device()).unwrap());
                        }
                        let ap = a.as_tensor().narrow(0, p * r, r).unwrap();
                        let bp = b.as_tensor().narrow(0, b_row, len).unwrap();
                        let u = xa.broadcast_matmul(&ap.t().unwrap()).unwrap();
                        pieces.push(u.broadcast_matmul(&bp.t().unwrap()).unwrap());
                        at = start + len;
                        b_row += len;
                    }
                    let delta = Tensor::cat(&pieces, 2).unwrap();
                    let reference = (reference + (delta * scale).unwrap()).unwrap();
                    assert!(max_diff(&ours, &reference) < 1e-4, "forward, bias {with_bias}, dropout {dropout:?}, {threads} threads");
                    let loss = (ours * &g).unwrap().sum_all().unwrap();
                    let ga = loss.backward().unwrap();
                    let gr = (reference * &g).unwrap().sum_all().unwrap().backward().unwrap();
                    // a second backward through the same graph recomputes the inner products
                    let again = loss.backward().unwrap();
                    for (name, v) in [("x", &x), ("A", &a), ("B", &b)] {
                        assert!(max_diff(ga.get(v).unwrap(), gr.get(v).unwrap()) < 1e-4, "d{name}, bias {with_bias}, dropout {dropout:?}, {threads} threads");
                        assert_eq!(max_diff(ga.get(v).unwrap(), again.get(v).unwrap()), 0.0, "d{name} again");
                    }
                }
            });
        }
        // a trainable base is refused (the composed path serves it)
        let w = Var::from_tensor(&rand(&[4, 3], 1)).unwrap();
        let x = rand(&[2, 3], 2);
        let (a, b) = (rand(&[2, 3], 3), rand(&[4, 2], 4));
        assert!(lora_linear(&x, w.as_tensor(), None, &LoraBlocks { a: &a, b: &b, parts: &[(0, 4)], rank: 2, scale: 1.0, dropout: None }).is_err());
        // dropout must be a probability below 1
        let w = rand(&[4, 3], 1);
        assert!(lora_linear(&x, &w, None, &LoraBlocks { a: &a, b: &b, parts: &[(0, 4)], rank: 2, scale: 1.0, dropout: Some((1.0, 1)) }).is_err());
    }
}
