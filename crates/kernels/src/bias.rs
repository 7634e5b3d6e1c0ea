//! Bias add broadcast over the leading dimensions, with a contiguous column-sum backward.

use crate::cpu::{contiguous_f32, for_rows};
use candle_core::{CpuStorage, CustomOp1, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{max_diff, rand};
    use candle_core::Var;

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
}
