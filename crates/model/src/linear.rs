//! A linear layer, `y = x·Wᵀ + b`, as one fused op on CPU. Inputs of any rank are
//! flattened to rows first, so the weight gradient is one plain matmul rather than a
//! broadcast batched matmul followed by a reduction.
//!
//! Why fused: composed from candle ops, the forward is a matmul against the transposed
//! view `Wᵀ` and a separate bias pass, and autograd hands `W` the gradient of `Wᵀ`, a
//! transposed view that must then be copied element by element into a contiguous tensor
//! (2.7% of a c1 training step in perf). Here the bias is the matmul's starting value and
//! the backward computes `dW = dYᵀ·X` directly in W's own layout.

use candle_core::{CpuStorage, CustomOp2, CustomOp3, Layout, Module, Result, Shape, Tensor};
use candle_nn::VarBuilder;
use crate::ops::contiguous_f32;

#[derive(Debug, Clone)]
pub struct Linear {
    weight: Tensor,
    bias: Option<Tensor>,
}

impl Linear {
    pub fn new(weight: Tensor, bias: Option<Tensor>) -> Self {
        Self { weight, bias }
    }

    pub fn load(in_dim: usize, out_dim: usize, bias: bool, vb: VarBuilder) -> Result<Self> {
        let init = candle_nn::init::DEFAULT_KAIMING_NORMAL;
        let weight = vb.get_with_hints((out_dim, in_dim), "weight", init)?;
        let bias = if bias { Some(vb.get_with_hints(out_dim, "bias", candle_nn::Init::Const(0.0))?) } else { None };
        Ok(Self { weight, bias })
    }

    pub fn weight(&self) -> &Tensor {
        &self.weight
    }
}

impl Module for Linear {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let dims = x.dims().to_vec();
        let k = dims[dims.len() - 1];
        let rows = x.elem_count() / k;
        let x2 = x.contiguous()?.reshape((rows, k))?;
        let fused = x.device().is_cpu() && x.dtype() == candle_core::DType::F32 && self.weight.dtype() == candle_core::DType::F32;
        let y = match (&self.bias, fused) {
            (Some(b), true) => x2.apply_op3(&self.weight.contiguous()?, &b.contiguous()?, LinearOp)?,
            (None, true) => x2.apply_op2(&self.weight.contiguous()?, LinearOp)?,
            (Some(b), false) => crate::ops::add_bias(&x2.matmul(&self.weight.t()?)?, b)?,
            (None, false) => x2.matmul(&self.weight.t()?)?,
        };
        let mut out_dims = dims;
        *out_dims.last_mut().expect("rank >= 1") = self.weight.dim(0)?;
        y.reshape(out_dims)
    }
}

/// `x (rows×k) · wᵀ (+ b)`; w is (n×k). As CustomOp2 without a bias, CustomOp3 with one.
struct LinearOp;

/// A contiguous CPU tensor's f32 values (the side-by-side backward reads tensors, not op inputs).
fn cpu_slice<'a>(s: &'a candle_core::Storage, l: &Layout) -> Result<&'a [f32]> {
    match s {
        candle_core::Storage::Cpu(c) => contiguous_f32(c, l, "ferrolm-linear-bwd"),
        _ => candle_core::bail!("ferrolm-linear-bwd: not on CPU"),
    }
}

impl LinearOp {
    fn forward(x: &[f32], xl: &Layout, w: &[f32], wl: &Layout, b: Option<&[f32]>) -> Result<(CpuStorage, Shape)> {
        let (rows, k) = xl.shape().dims2()?;
        let (n, k2) = wl.shape().dims2()?;
        if k != k2 || b.is_some_and(|b| b.len() != n) {
            candle_core::bail!("ferrolm-linear: x {:?}, w {:?}, bias {:?}", xl.dims(), wl.dims(), b.map(|b| b.len()));
        }
        let mut y = crate::ops::output_buffer(rows * n);
        if let Some(b) = b {
            // The bias is the product's starting value: no second pass over y.
            crate::ops::fill_rows(&mut y, b);
        }
        let a = crate::amx::Strided { ptr: x.as_ptr(), rs: k as isize, cs: 1 };
        // wᵀ (k×n): element (p, j) is w[j, p].
        let bt = crate::amx::Strided { ptr: w.as_ptr(), rs: 1, cs: k as isize };
        // SAFETY: the slices cover the matrices the strides describe; y is fresh.
        unsafe { crate::sgemm::matmul(rows, n, k, a, bt, y.as_mut_ptr(), n, b.is_some()) };
        Ok((CpuStorage::F32(y), Shape::from((rows, n))))
    }

    /// dx = g·w, dw = gᵀ·x (in w's own layout), db = Σ_rows g.
    fn backward(x: &Tensor, w: &Tensor, grad: &Tensor, bias: bool) -> Result<(Tensor, Tensor, Option<Tensor>)> {
        let (x, w, g) = (x.detach(), w.detach(), grad.detach().contiguous()?);
        let (dx, dw) = match Self::backward_side_by_side(&x, &w, &g)? {
            Some(both) => both,
            None => (g.matmul(&w)?, g.t()?.matmul(&x)?),
        };
        let db = if bias { Some(crate::ops::column_sum(&g)?) } else { None };
        Ok((dx, dw, db))
    }

    /// dx and dw as two products run at once (see [`crate::sgemm::two_products_f32`]), on
    /// CPU in exact f32 with at least two threads; None otherwise.
    fn backward_side_by_side(x: &Tensor, w: &Tensor, g: &Tensor) -> Result<Option<(Tensor, Tensor)>> {
        let exact = crate::amx::matmul_precision() == crate::amx::MatmulPrecision::F32;
        if !exact || !x.device().is_cpu() || x.dtype() != candle_core::DType::F32 || rayon::current_num_threads() < 2 {
            return Ok(None);
        }
        let (x, w) = (x.contiguous()?, w.contiguous()?);
        let ((rows, k), (n, _), (xs, xl), (ws, wl), (gs, gl)) =
            (x.dims2()?, w.dims2()?, x.storage_and_layout(), w.storage_and_layout(), g.storage_and_layout());
        let (xv, wv, gv) = (cpu_slice(&xs, xl)?, cpu_slice(&ws, wl)?, cpu_slice(&gs, gl)?);
        let (mut dx, mut dw) = (crate::ops::output_buffer(rows * k), crate::ops::output_buffer(n * k));
        use crate::amx::Strided;
        use crate::sgemm::{DstPtr, Product};
        let row_major = |v: &[f32], cols: usize| Strided { ptr: v.as_ptr(), rs: cols as isize, cs: 1 };
        // dx (rows×k) = g (rows×n) · w (n×k); dw (n×k) = gᵀ (n×rows) · x (rows×k).
        let dx_p = Product { m: rows, n: k, k: n, a: row_major(gv, n), b: row_major(wv, k), dst: DstPtr(dx.as_mut_ptr()), dst_rs: k };
        let gt = Strided { ptr: gv.as_ptr(), rs: 1, cs: n as isize };
        let dw_p = Product { m: n, n: k, k: rows, a: gt, b: row_major(xv, k), dst: DstPtr(dw.as_mut_ptr()), dst_rs: k };
        // SAFETY: the slices cover the matrices the strides describe; dx and dw are fresh
        // buffers of rows·k and n·k elements.
        unsafe { crate::sgemm::two_products_f32(dx_p, dw_p) };
        let dev = x.device().clone();
        drop((xs, ws, gs));
        Ok(Some((Tensor::from_vec(dx, (rows, k), &dev)?, Tensor::from_vec(dw, (n, k), &dev)?)))
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
        Ok((Some(dx), Some(dw)))
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
        Ok((Some(dx), Some(dw), db))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::tests::{max_diff, rand};
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

    fn check_against_composed(with_bias: bool) {
        {
            let x = Var::from_tensor(&rand(&[3, 7, 13], 1)).unwrap();
            let w = Var::from_tensor(&rand(&[11, 13], 2)).unwrap();
            let b = Var::from_tensor(&rand(&[11], 3)).unwrap();
            let g = rand(&[3, 7, 11], 4);
            let layer = Linear::new(w.as_tensor().clone(), with_bias.then(|| b.as_tensor().clone()));
            let ours = layer.forward(x.as_tensor()).unwrap();
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
