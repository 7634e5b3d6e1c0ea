//! SwiGLU's gate, `silu(g) ⊙ u` (Shazeer 2020), as one op with its backward.
//!
//! Why: composed, it is `silu` (candle's unary map, one thread) and a product, and on the
//! way back candle's `silu` gradient alone is five elementwise tensors; each is a full
//! pass over a (tokens × ff_dim) activation, the widest of a modern block. Here the
//! forward is one pass and the backward one pass writing both gradients, over both cores,
//! with the vectorised [`fast_exp`] (relative error below 1e-6).

use crate::cpu::{contiguous_f32, output_buffer, PAR_THRESHOLD};
use crate::simd::{fast_exp, vectorized};
use candle_core::{CpuStorage, CustomOp2, CustomOp3, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

/// The logistic function through one exp; e^−g clamps for very negative g, where σ → 0.
#[inline(always)]
fn sigmoid(g: f32) -> f32 {
    1.0 / (1.0 + fast_exp(-g))
}

/// Chunks of `n` elements per task: a few per thread, none below the threshold.
fn chunk_len(n: usize) -> usize {
    n.div_ceil(4 * rayon::current_num_threads().max(1)).max(PAR_THRESHOLD / 4)
}

struct SwiGlu;

impl CustomOp2 for SwiGlu {
    fn name(&self) -> &'static str {
        "ferrolm-swiglu"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let g = contiguous_f32(s1, l1, self.name())?;
        let u = contiguous_f32(s2, l2, self.name())?;
        if l1.shape() != l2.shape() {
            candle_core::bail!("{}: gate {:?} and up {:?} differ", self.name(), l1.dims(), l2.dims());
        }
        let mut out = output_buffer(g.len());
        let chunk = chunk_len(g.len());
        let body = |(i, o): (usize, &mut [f32])| {
            let (g, u) = (&g[i * chunk..], &u[i * chunk..]);
            vectorized(
                #[inline(always)]
                || {
                    for ((o, &g), &u) in o.iter_mut().zip(g).zip(u) {
                        *o = g * sigmoid(g) * u;
                    }
                },
            )
        };
        if g.len() >= PAR_THRESHOLD {
            out.par_chunks_mut(chunk).enumerate().for_each(body);
        } else {
            out.chunks_mut(chunk).enumerate().for_each(body);
        }
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }

    fn bwd(&self, g: &Tensor, u: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
        // Both gradients from one pass, stacked: [d gate; d up].
        let both = g.contiguous()?.apply_op3_no_bwd(&u.contiguous()?, &grad.contiguous()?, &SwiGluBackward)?;
        Ok((Some(both.get(0)?.reshape(g.shape())?), Some(both.get(1)?.reshape(u.shape())?)))
    }
}

struct SwiGluBackward;

impl CustomOp3 for SwiGluBackward {
    fn name(&self) -> &'static str {
        "ferrolm-swiglu-bwd"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout, s3: &CpuStorage, l3: &Layout) -> Result<(CpuStorage, Shape)> {
        let g = contiguous_f32(s1, l1, self.name())?;
        let u = contiguous_f32(s2, l2, self.name())?;
        let dy = contiguous_f32(s3, l3, self.name())?;
        let n = g.len();
        if u.len() != n || dy.len() != n {
            candle_core::bail!("{}: {n}, {} and {} elements", self.name(), u.len(), dy.len());
        }
        let mut out = output_buffer(2 * n);
        let (dg, du) = out.split_at_mut(n);
        let chunk = chunk_len(n);
        let body = |(i, (dg, du)): (usize, (&mut [f32], &mut [f32]))| {
            let (g, u, dy) = (&g[i * chunk..], &u[i * chunk..], &dy[i * chunk..]);
            vectorized(
                #[inline(always)]
                || {
                    for (j, (dg, du)) in dg.iter_mut().zip(du.iter_mut()).enumerate() {
                        // silu(g) = g·σ(g); silu′(g) = σ(g)·(1 + g·(1 − σ(g)))
                        let s = sigmoid(g[j]);
                        *du = dy[j] * g[j] * s;
                        *dg = dy[j] * u[j] * (s * (1.0 + g[j] * (1.0 - s)));
                    }
                },
            )
        };
        if n >= PAR_THRESHOLD {
            dg.par_chunks_mut(chunk).zip(du.par_chunks_mut(chunk)).enumerate().for_each(body);
        } else {
            dg.chunks_mut(chunk).zip(du.chunks_mut(chunk)).enumerate().for_each(body);
        }
        Ok((CpuStorage::F32(out), Shape::from((2, n))))
    }
}

/// `silu(gate) ⊙ up`, differentiable in both; gate and up of the same shape. The fused op
/// for f32 on the CPU, composed candle ops otherwise.
pub fn swiglu(gate: &Tensor, up: &Tensor) -> Result<Tensor> {
    if !gate.device().is_cpu() || gate.dtype() != candle_core::DType::F32 || up.dtype() != candle_core::DType::F32 {
        return gate.silu()? * up;
    }
    gate.contiguous()?.apply_op2(&up.contiguous()?, SwiGlu)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{max_diff, rand};
    use candle_core::Var;

    #[test]
    fn matches_composed_silu_product_forward_and_backward() {
        // below and above the parallel threshold, a length that splits unevenly
        for n in [3 * 37, 9 * 4099] {
            let g = Var::from_tensor(&(rand(&[n], 1) * 6.0).unwrap()).unwrap();
            let u = Var::from_tensor(&rand(&[n], 2)).unwrap();
            let dy = rand(&[n], 3);
            let ours = swiglu(g.as_tensor(), u.as_tensor()).unwrap();
            let reference = (g.as_tensor().silu().unwrap() * u.as_tensor()).unwrap();
            assert!(max_diff(&ours, &reference) < 1e-5, "forward, {n}");
            let ga = (ours * &dy).unwrap().sum_all().unwrap().backward().unwrap();
            let gb = (reference * &dy).unwrap().sum_all().unwrap().backward().unwrap();
            assert!(max_diff(ga.get(&g).unwrap(), gb.get(&g).unwrap()) < 1e-5, "d gate, {n}");
            assert!(max_diff(ga.get(&u).unwrap(), gb.get(&u).unwrap()) < 1e-5, "d up, {n}");
        }
        // extreme gates: finite, and silu's limits (0 and g)
        let g = Tensor::new(&[-200f32, -90.0, 0.0, 90.0, 200.0], &candle_core::Device::Cpu).unwrap();
        let y: Vec<f32> = swiglu(&g, &g.ones_like().unwrap()).unwrap().to_vec1().unwrap();
        assert!(y.iter().all(|v| v.is_finite()), "{y:?}");
        assert_eq!((y[2], y[3], y[4]), (0.0, 90.0, 200.0));
        assert!(y[0].abs() < 1e-30 && y[1].abs() < 1e-30, "{y:?}");
    }
}
