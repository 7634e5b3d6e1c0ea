//! LayerNorm and RMSNorm over the last dimension as one fused op with its backward pass.

use crate::cpu::{contiguous_f32, for_rows, output_buffer, PAR_THRESHOLD};
use crate::simd::{lane_sum, vectorized};
use candle_core::{CpuStorage, CustomOp3, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{max_diff, rand};
    use candle_core::Var;

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
