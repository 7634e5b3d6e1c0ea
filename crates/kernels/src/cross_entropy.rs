//! Mean softmax cross-entropy with an ignore index, in one pass per row, with its backward.

use crate::cpu::{contiguous_f32, output_buffer};
use crate::simd::{fast_exp, lane_max, vectorized};
use candle_core::{CpuStorage, CustomOp3, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

/// Targets equal to this are ignored by [`cross_entropy`] (prompt tokens in instruction
/// tuning, padding).
pub const IGNORE_INDEX: u32 = u32::MAX;

/// Mean softmax cross-entropy of logits (N, V) against targets (N) in one pass per row;
/// the backward pass writes (softmax − one-hot)·g/n directly, never materialising
/// log-probabilities. The forward keeps each row's log-sum-exp, so the backward is one
/// pass over the logits (`exp(z − lse)`) instead of three (max, sum, scale). Both run
/// vectorised, the max and the sum in 16 lanes: a language model's logits (tokens ×
/// vocabulary, 200 MB for 1,024 tokens of a 49k vocabulary) are the largest tensor of a
/// step, and one-lane loops over them, forward and backward, were 9 % of a LoRA step.
#[derive(Default)]
struct CrossEntropy {
    /// Each row's log Σ exp(z), written by the forward (NaN for ignored rows).
    lse: std::sync::Mutex<Vec<f32>>,
}

/// Σ exp(v − shift) in 16 independent lanes (see [`crate::lane_sum`]).
#[inline(always)]
fn lane_exp_sum(v: &[f32], shift: f32) -> f32 {
    let mut acc = [0f32; 16];
    let chunks = v.chunks_exact(16);
    let tail: f32 = chunks.remainder().iter().map(|&z| fast_exp(z - shift)).sum();
    for c in chunks {
        for i in 0..16 {
            acc[i] += fast_exp(c[i] - shift);
        }
    }
    acc.iter().sum::<f32>() + tail
}

/// The loss summed over the rows that count, their number, and every row's log-sum-exp.
fn ce_rows(logits: &[f32], targets: &[u32], v: usize) -> Result<(f64, usize, Vec<f32>)> {
    if let Some(&bad) = targets.iter().find(|&&t| t != IGNORE_INDEX && t as usize >= v) {
        candle_core::bail!("cross_entropy: target {bad} is outside the vocabulary of {v}");
    }
    let lse: Vec<f32> = logits
        .par_chunks(v)
        .zip(targets.par_iter())
        .map(|(row, &t)| {
            if t == IGNORE_INDEX {
                return f32::NAN;
            }
            vectorized(
                #[inline(always)]
                || {
                    let max = lane_max(row);
                    max + lane_exp_sum(row, max).ln()
                },
            )
        })
        .collect();
    let (mut sum, mut n) = (0f64, 0usize);
    for (i, &t) in targets.iter().enumerate() {
        if t != IGNORE_INDEX {
            sum += (lse[i] - logits[i * v + t as usize]) as f64;
            n += 1;
        }
    }
    Ok((sum, n, lse))
}

fn targets_u32<'a>(s: &'a CpuStorage, l: &Layout) -> Result<&'a [u32]> {
    match (s, l.contiguous_offsets()) {
        (CpuStorage::U32(v), Some((a, b))) => Ok(&v[a..b]),
        _ => candle_core::bail!("cross_entropy: targets must be contiguous u32"),
    }
}

fn poisoned<T>(_: T) -> candle_core::Error {
    candle_core::Error::Msg("cross_entropy: a thread panicked holding the row sums".into())
}

impl candle_core::CustomOp2 for CrossEntropy {
    fn name(&self) -> &'static str {
        "ferrolm-cross-entropy"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let z = contiguous_f32(s1, l1, self.name())?;
        let t = targets_u32(s2, l2)?;
        let v = l1.dims()[1];
        let (sum, n, lse) = ce_rows(z, t, v)?;
        *self.lse.lock().map_err(poisoned)? = lse;
        let mean = if n == 0 { 0.0 } else { sum / n as f64 };
        Ok((CpuStorage::F32(vec![mean as f32]), Shape::from(())))
    }

    fn bwd(&self, logits: &Tensor, targets: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let lse = self.lse.lock().map_err(poisoned)?.clone();
        let lse = Tensor::from_vec(lse, targets.elem_count(), logits.device())?;
        let g_lse = Tensor::cat(&[&grad.reshape(1)?, &lse], 0)?;
        let dz = logits.contiguous()?.apply_op3_no_bwd(targets, &g_lse, &CrossEntropyBackward)?;
        Ok((Some(dz), None))
    }
}

/// The logits' gradient from the forward's log-sum-exps; its third input is the loss's
/// gradient followed by the N rows' log-sum-exps.
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
        let Some((&g, lse)) = contiguous_f32(s3, l3, self.name())?.split_first() else {
            candle_core::bail!("cross_entropy backward: no gradient");
        };
        let v = l1.dims()[1];
        if lse.len() != t.len() || z.len() != t.len() * v {
            candle_core::bail!("cross_entropy backward: {} logits, {} targets, {} row sums", z.len(), t.len(), lse.len());
        }
        let n = t.iter().filter(|&&x| x != IGNORE_INDEX).count().max(1);
        let scale = g / n as f32;
        let mut out = output_buffer(z.len());
        out.par_chunks_mut(v).enumerate().for_each(|(i, o)| {
            if t[i] == IGNORE_INDEX {
                o.fill(0.0);
                return;
            }
            let (row, shift) = (&z[i * v..(i + 1) * v], lse[i]);
            vectorized(
                #[inline(always)]
                || {
                    for (o, &x) in o.iter_mut().zip(row) {
                        *o = fast_exp(x - shift) * scale;
                    }
                },
            );
            o[t[i] as usize] -= scale;
        });
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }
}

/// Mean cross-entropy of `logits` (N, V) against `targets` (N, u32), skipping targets equal
/// to [`IGNORE_INDEX`]; differentiable in the logits.
pub fn cross_entropy(logits: &Tensor, targets: &Tensor) -> Result<Tensor> {
    if !logits.device().is_cpu() {
        return cross_entropy_composed(logits, targets);
    }
    logits.contiguous()?.apply_op2(&targets.contiguous()?, CrossEntropy::default())
}

/// The same loss from candle's own ops, for devices without the fused kernel (CUDA):
/// log-softmax, the target's entry (ignored rows read entry 0 and are masked out), mean
/// over the rows that count. Differentiable through candle's autograd.
pub fn cross_entropy_composed(logits: &Tensor, targets: &Tensor) -> Result<Tensor> {
    let dev = logits.device();
    let ignore = Tensor::full(IGNORE_INDEX, targets.shape(), dev)?;
    let keep = targets.ne(&ignore)?;
    let safe = keep.where_cond(targets, &Tensor::zeros(targets.shape(), targets.dtype(), dev)?)?;
    let lp = candle_nn::ops::log_softmax(logits, candle_core::D::Minus1)?;
    let picked = lp.gather(&safe.unsqueeze(1)?, 1)?.squeeze(1)?;
    let keep = keep.to_dtype(logits.dtype())?;
    let n = keep.sum_all()?;
    // No row counts: 0, as the fused kernel returns.
    let n = n.maximum(&Tensor::ones((), logits.dtype(), dev)?)?;
    (picked * &keep)?.sum_all()?.neg()?.broadcast_div(&n)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{max_diff, rand};
    use candle_core::{Device, Var};

    #[test]
    fn composed_fallback_equals_the_fused_kernel_with_ignored_targets() {
        // The path a CUDA device takes, checked against the CPU kernel: loss and gradient.
        let z = Var::from_tensor(&(rand(&[7, 13], 4) * 3.0).unwrap()).unwrap();
        let t = Tensor::new(&[3u32, IGNORE_INDEX, 12, 5, IGNORE_INDEX, 0, 7], &Device::Cpu).unwrap();
        let fused = cross_entropy(z.as_tensor(), &t).unwrap();
        let composed = cross_entropy_composed(z.as_tensor(), &t).unwrap();
        assert!(max_diff(&fused, &composed) < 1e-5);
        let gf = fused.backward().unwrap().remove(z.as_tensor()).unwrap();
        let gc = composed.backward().unwrap().remove(z.as_tensor()).unwrap();
        assert!(max_diff(&gf, &gc) < 1e-6);
        let none = Tensor::new(&[IGNORE_INDEX; 7], &Device::Cpu).unwrap();
        assert_eq!(cross_entropy_composed(z.as_tensor(), &none).unwrap().to_scalar::<f32>().unwrap(), cross_entropy(z.as_tensor(), &none).unwrap().to_scalar::<f32>().unwrap());
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
}
