//! GELU (tanh approximation, GPT-2's) with its backward pass.

use crate::cpu::{contiguous_f32, map_chunks, output_buffer, PAR_THRESHOLD};
use crate::simd::{fast_exp, vectorized};
use candle_core::{CpuStorage, CustomOp1, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

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


/// GELU (tanh approximation), differentiable.
pub fn gelu(x: &Tensor) -> Result<Tensor> {
    if !x.device().is_cpu() {
        return x.gelu();
    }
    x.contiguous()?.apply_op1(Gelu)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{max_diff, rand};
    use candle_core::Var;

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
}
