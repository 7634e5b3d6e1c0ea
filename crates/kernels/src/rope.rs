//! Rotary position embedding applied in one pass to a fused q/k/v projection
//! `(batch, T, (H + 2·KVH)·D)`, with its backward: the queries' and keys' heads rotated
//! ("rotate half", Llama's layout), the values copied.
//!
//! Why: composed from candle ops, RoPE on a training batch splits q and k out of the
//! projection, moves heads to the front (a copy each), and rotates with four products, a
//! difference, a sum and a concatenation — each a fresh tensor on one thread, and each
//! another copy on the way back. It also kept RoPE models (Llama, Qwen2, SmolLM2) off the
//! fused attention op, which reads q/k/v in place from the projection: with this op they
//! take it (rotate, then [`crate::fused_self_attention`]).
//!
//! The rotation is the composed one's arithmetic (`x1·cos − x2·sin`, `x2·cos + x1·sin`,
//! products rounded before the sum, no fused multiply-add), so the two give the same
//! floats.

use crate::cpu::{contiguous_f32, output_buffer, PAR_THRESHOLD};
use crate::simd::vectorized;
use candle_core::{CpuStorage, CustomOp1, Layout, Result, Shape, Tensor};
use rayon::prelude::*;
use std::sync::Arc;

/// cos and sin of every position's angles: `max_len` rows of `half` values, row-major.
#[derive(Debug)]
pub struct RopeTables {
    pub cos: Vec<f32>,
    pub sin: Vec<f32>,
    pub half: usize,
}

impl RopeTables {
    /// Positions the tables cover.
    pub fn max_len(&self) -> usize {
        self.cos.len() / self.half.max(1)
    }
}

#[derive(Debug, Clone)]
struct RopeQkv {
    tables: Arc<RopeTables>,
    heads: usize,
    kv_heads: usize,
    head_dim: usize,
    offset: usize,
    /// The backward: rotate by the negative angles.
    inverse: bool,
}

impl RopeQkv {
    fn width(&self) -> usize {
        (self.heads + 2 * self.kv_heads) * self.head_dim
    }

    /// One projection row at position `pos`: the first H + KVH heads rotated, the rest copied.
    #[inline(always)]
    fn row(&self, pos: usize, x: &[f32], out: &mut [f32]) {
        let (d, half) = (self.head_dim, self.tables.half);
        let cos = &self.tables.cos[pos * half..(pos + 1) * half];
        let sin = &self.tables.sin[pos * half..(pos + 1) * half];
        let rotated = (self.heads + self.kv_heads) * d;
        for (xh, oh) in x[..rotated].chunks_exact(d).zip(out[..rotated].chunks_exact_mut(d)) {
            let (x1, x2) = xh.split_at(half);
            let (o1, o2) = oh.split_at_mut(half);
            if self.inverse {
                // the transpose of the rotation: dx1 = dy1·cos + dy2·sin, dx2 = dy2·cos − dy1·sin
                for i in 0..half {
                    o1[i] = x1[i] * cos[i] + x2[i] * sin[i];
                    o2[i] = x2[i] * cos[i] - x1[i] * sin[i];
                }
            } else {
                for i in 0..half {
                    o1[i] = x1[i] * cos[i] - x2[i] * sin[i];
                    o2[i] = x2[i] * cos[i] + x1[i] * sin[i];
                }
            }
        }
        out[rotated..].copy_from_slice(&x[rotated..]);
    }
}

impl CustomOp1 for RopeQkv {
    fn name(&self) -> &'static str {
        "ferrolm-rope-qkv"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = contiguous_f32(s, l, self.name())?;
        let (_, t, w) = l.shape().dims3()?;
        if w != self.width() || self.head_dim != 2 * self.tables.half {
            candle_core::bail!("{}: rows of {w} for {}+2·{} heads of {} (tables of {} pairs)", self.name(), self.heads, self.kv_heads, self.head_dim, self.tables.half);
        }
        if self.offset + t > self.tables.max_len() {
            candle_core::bail!("position {} is beyond the model's max_seq_len {}", self.offset + t - 1, self.tables.max_len());
        }
        let mut out = output_buffer(x.len());
        let body = |(r, o): (usize, &mut [f32])| {
            vectorized(
                #[inline(always)]
                || self.row(self.offset + r % t, &x[r * w..(r + 1) * w], o),
            )
        };
        if x.len() >= PAR_THRESHOLD {
            out.par_chunks_mut(w).enumerate().for_each(body);
        } else {
            out.chunks_mut(w).enumerate().for_each(body);
        }
        Ok((CpuStorage::F32(out), l.shape().clone()))
    }

    fn bwd(&self, _arg: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let inverse = RopeQkv { inverse: !self.inverse, ..self.clone() };
        Ok(Some(grad.contiguous()?.apply_op1_no_bwd(&inverse)?))
    }
}

/// RoPE on the queries and keys of a fused projection `qkv` (batch, T, (H + 2·KVH)·D) at
/// positions `offset..offset+T`; values pass unchanged. Differentiable. f32 on the CPU.
pub fn rope_qkv(qkv: &Tensor, tables: &Arc<RopeTables>, heads: usize, kv_heads: usize, head_dim: usize, offset: usize) -> Result<Tensor> {
    if !qkv.device().is_cpu() || qkv.dtype() != candle_core::DType::F32 {
        candle_core::bail!("ferrolm-rope-qkv: f32 on the CPU only");
    }
    let op = RopeQkv { tables: tables.clone(), heads, kv_heads, head_dim, offset, inverse: false };
    qkv.contiguous()?.apply_op1(op)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{max_diff, rand};
    use candle_core::{Device, Var, D};

    /// The composed rotation, as the model's `Rope::apply` writes it, on (b, heads, T, D).
    fn composed(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Tensor {
        let half = x.dim(D::Minus1).unwrap() / 2;
        let x1 = x.narrow(D::Minus1, 0, half).unwrap();
        let x2 = x.narrow(D::Minus1, half, half).unwrap();
        let r1 = (x1.broadcast_mul(cos).unwrap() - x2.broadcast_mul(sin).unwrap()).unwrap();
        let r2 = (x2.broadcast_mul(cos).unwrap() + x1.broadcast_mul(sin).unwrap()).unwrap();
        Tensor::cat(&[r1, r2], D::Minus1).unwrap()
    }

    #[test]
    fn matches_composed_rotation_forward_and_backward() {
        let (b, t, h, kvh, d, max_len, offset) = (2, 37, 6, 2, 8, 50, 5);
        let half = d / 2;
        let ang: Vec<f32> = (0..max_len * half).map(|i| (i / half) as f32 * 0.3f32.powi((i % half) as i32)).collect();
        let tables = Arc::new(RopeTables { cos: ang.iter().map(|a| a.cos()).collect(), sin: ang.iter().map(|a| a.sin()).collect(), half });
        let cos = Tensor::from_slice(&tables.cos[offset * half..(offset + t) * half], (t, half), &Device::Cpu).unwrap();
        let sin = Tensor::from_slice(&tables.sin[offset * half..(offset + t) * half], (t, half), &Device::Cpu).unwrap();
        let w = (h + 2 * kvh) * d;
        let x = Var::from_tensor(&rand(&[b, t, w], 3)).unwrap();
        let g = rand(&[b, t, w], 4);
        let ours = rope_qkv(x.as_tensor(), &tables, h, kvh, d, offset).unwrap();
        let heads = |x: &Tensor, at: usize, n: usize| x.narrow(2, at * d, n * d).unwrap().reshape((b, t, n, d)).unwrap().transpose(1, 2).unwrap();
        let back = |x: Tensor, n: usize| x.transpose(1, 2).unwrap().reshape((b, t, n * d)).unwrap();
        let q = back(composed(&heads(x.as_tensor(), 0, h), &cos, &sin), h);
        let k = back(composed(&heads(x.as_tensor(), h, kvh), &cos, &sin), kvh);
        let v = x.as_tensor().narrow(2, (h + kvh) * d, kvh * d).unwrap();
        let reference = Tensor::cat(&[q, k, v], 2).unwrap();
        // the same arithmetic: the same floats
        assert_eq!(max_diff(&ours, &reference), 0.0);
        let ga = (ours * &g).unwrap().sum_all().unwrap().backward().unwrap();
        let gb = (reference * &g).unwrap().sum_all().unwrap().backward().unwrap();
        assert!(max_diff(ga.get(&x).unwrap(), gb.get(&x).unwrap()) < 1e-6);
        // beyond the tables: an error, not a read past them
        assert!(rope_qkv(x.as_tensor(), &tables, h, kvh, d, max_len - t + 1).is_err());
    }
}
