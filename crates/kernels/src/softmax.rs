//! Softmax over the last dimension, plain and scaled with an on-the-fly causal mask, with
//! their backward passes; and the in-place row softmax the fused attention uses.

use crate::cpu::{contiguous_f32, for_rows};
use crate::simd::{fast_exp, lane_max, lane_sum};
use candle_core::{CpuStorage, CustomOp1, Layout, Result, Shape, Tensor};

/// Softmax of one row in place: max, exp, lane sum, scale.
#[inline(always)]
pub fn softmax_row(row: &mut [f32]) {
    let max = lane_max(row);
    row.iter_mut().for_each(|x| *x = fast_exp(*x - max));
    let inv = 1.0 / lane_sum(row);
    row.iter_mut().for_each(|x| *x *= inv);
}

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
            row.copy_from_slice(src);
            crate::simd::vectorized(
                #[inline(always)]
                || softmax_row(row),
            );
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
            // the scaled scores, then `softmax_row`'s vector passes (an in-order sum beside
            // the exp had kept this loop scalar, 5 % of a 128-token prompt pass of
            // SmolLM2-135M's shape); the max of the scaled scores is the scaled max, as
            // rounding keeps order and the scale is positive
            crate::simd::vectorized(
                #[inline(always)]
                || {
                    let row = &mut row[..visible];
                    for (o, &v) in row.iter_mut().zip(&src[..visible]) {
                        *o = v * scale;
                    }
                    softmax_row(row);
                },
            );
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{max_diff, rand};
    use candle_core::{Device, Var, D};

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
}
