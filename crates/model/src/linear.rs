//! A linear layer, `y = x·Wᵀ + b`: its weights and their initialisation. The product is
//! one fused op on CPU (`ferrolm_kernels::linear`: the bias as the product's start, dW in
//! W's own layout, dX and dW side by side). A layer may carry LoRA adapters
//! ([`crate::lora`]): low-rank updates of some of its output rows.

use candle_core::{Module, Result, Tensor, D};

use crate::quant::{QuantKind, QuantWeights};
use candle_nn::VarBuilder;

#[derive(Debug, Clone)]
pub struct Linear {
    weight: Tensor,
    bias: Option<Tensor>,
    lora: Option<LoraAdapter>,
    /// The same weights quantized (Q8_0, Q4_K, Q6_K or F16: a GGUF file's blocks, or
    /// `--quant`): products of up to [`QUANT_MAX_ROWS`] input rows — token-by-token
    /// decoding, which reads every weight for each token — read these, a half to an
    /// eighth of the bytes. `weight` then holds the dequantized values, so that a prompt's
    /// f32 product computes the same model (on inputs rounded to 8 bits where the few-row
    /// product rounds them: [`QuantWeights::input_rounding`]).
    quant: Option<std::sync::Arc<QuantWeights>>,
}

/// Inputs with more rows (a prompt's prefill) take the f32 product, where the work is the
/// arithmetic rather than reading the weights.
pub const QUANT_MAX_ROWS: usize = 8;

/// LoRA updates of one layer: each part adapts `b.dim(0)` output rows from `start`.
#[derive(Debug, Clone)]
pub struct LoraAdapter {
    pub parts: Vec<LoraPart>,
    /// alpha / rank.
    pub scale: f64,
    /// Dropout on the adapter's input in training.
    pub dropout: f32,
}

#[derive(Debug, Clone)]
pub struct LoraPart {
    pub start: usize,
    /// (rank, in)
    pub a: Tensor,
    /// (rows, rank)
    pub b: Tensor,
}

impl Linear {
    pub fn new(weight: Tensor, bias: Option<Tensor>) -> Self {
        Self { weight, bias, lora: None, quant: None }
    }

    pub fn load(in_dim: usize, out_dim: usize, bias: bool, vb: VarBuilder) -> Result<Self> {
        let init = candle_nn::init::DEFAULT_KAIMING_NORMAL;
        let weight = vb.get_with_hints((out_dim, in_dim), "weight", init)?;
        let bias = if bias { Some(vb.get_with_hints(out_dim, "bias", candle_nn::Init::Const(0.0))?) } else { None };
        Ok(Self { weight, bias, lora: None, quant: None })
    }

    pub fn weight(&self) -> &Tensor {
        &self.weight
    }

    /// Detach the weight and bias from their variables (same storage, so a checkpoint
    /// load still reaches them): autograd then skips their gradients, which a frozen base
    /// under LoRA adapters never uses — the dW products are most of a backward pass.
    pub fn freeze(&mut self) {
        self.weight = self.weight.detach();
        self.bias = self.bias.as_ref().map(Tensor::detach);
    }

    /// Keep `q` — the same values as `weight`, quantized (a GGUF file's blocks) — for
    /// few-row products (see the `quant` field). The layer is frozen (inference only).
    pub fn set_quant(&mut self, q: QuantWeights) -> Result<()> {
        let (rows, cols) = self.weight.dims2()?;
        if (q.rows(), q.cols()) != (rows, cols) {
            candle_core::bail!("quantized weights of {}×{} for a layer of {rows}×{cols}", q.rows(), q.cols());
        }
        self.freeze();
        self.quant = Some(std::sync::Arc::new(q));
        Ok(())
    }

    /// The quantized weights, if the layer has them.
    pub fn quant(&self) -> Option<&QuantWeights> {
        self.quant.as_deref()
    }

    /// Quantize the weights as `kind` asks (Q4_K falls back to Q8_0 on rows that are not
    /// whole 256-value super-blocks; F16 rounds each weight to the nearest half) and replace them with their dequantized values, so that
    /// every product — few-row ones on the blocks, larger ones in f32 — computes the
    /// quantized model. The layer is frozen. A layer that already has quantized weights keeps
    /// them. Returns (format, bytes, quantized now), or None when the rows do not fill
    /// blocks of 32 (the layer stays f32; never for F16).
    pub fn quantize(&mut self, kind: QuantKind) -> Result<Option<(String, usize, bool)>> {
        if let Some(q) = &self.quant {
            return Ok(Some((q.format(), q.bytes(), false)));
        }
        let (rows, cols) = self.weight.dims2()?;
        let values = self.weight.to_dtype(candle_core::DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
        let Some(q) = QuantWeights::quantize(kind, &values, rows, cols) else { return Ok(None) };
        self.weight = Tensor::from_vec(q.dequantize(), (rows, cols), self.weight.device())?;
        self.bias = self.bias.as_ref().map(Tensor::detach);
        let out = (q.format(), q.bytes(), true);
        self.quant = Some(std::sync::Arc::new(q));
        Ok(Some(out))
    }

    pub fn set_lora(&mut self, lora: Option<LoraAdapter>) {
        self.lora = lora;
    }

    pub fn take_lora(&mut self) -> Option<LoraAdapter> {
        self.lora.take()
    }

    /// The product, plus the adapters' updates; `lora_seed`: Some in training (adapter
    /// dropout, seeded so that a resumed run draws the same masks).
    pub fn forward_t(&self, x: &Tensor, lora_seed: Option<u64>) -> Result<Tensor> {
        if let Some(q) = &self.quant {
            let k = x.dim(D::Minus1)?;
            let m = x.elem_count() / k.max(1);
            // Only for frozen weights (quantized models are loaded frozen, for inference):
            // the quantized product has no gradient.
            if m <= QUANT_MAX_ROWS && x.device().is_cpu() && x.dtype() == candle_core::DType::F32 && !self.weight.track_op() && self.lora.is_none() {
                let xs = x.flatten_all()?.to_vec1::<f32>()?;
                if xs.len() != m * q.cols() {
                    candle_core::bail!("input width {k} for quantized weights of width {}", q.cols());
                }
                let mut dims = x.dims().to_vec();
                *dims.last_mut().expect("rank >= 1") = q.rows();
                let y = Tensor::from_vec(q.matmul_t(&xs, m), dims, x.device())?;
                return match &self.bias {
                    Some(b) => y.broadcast_add(b),
                    None => Ok(y),
                };
            }
            if self.lora.is_none() && !self.weight.track_op() {
                if let Some(y) = self.rounded_input_product(x, q)? {
                    return Ok(y);
                }
            }
        }
        let y = ferrolm_kernels::linear(x, &self.weight, self.bias.as_ref())?;
        let Some(lora) = &self.lora else { return Ok(y) };
        let x = match lora_seed {
            Some(s) if lora.dropout > 0.0 => ferrolm_kernels::dropout(x, lora.dropout, s)?,
            _ => x.clone(),
        };
        let out = self.weight.dim(0)?;
        // The update of each adapted row block; rows without an adapter get zeros.
        let mut pieces = Vec::with_capacity(2 * lora.parts.len() + 1);
        let mut at = 0;
        let zeros = |n: usize| -> Result<Tensor> {
            let mut shape = y.dims().to_vec();
            *shape.last_mut().expect("a linear output has a last dimension") = n;
            Tensor::zeros(shape, y.dtype(), y.device())
        };
        for p in &lora.parts {
            if p.start > at {
                pieces.push(zeros(p.start - at)?);
            }
            let u = ferrolm_kernels::linear(&x, &p.a, None)?;
            pieces.push(ferrolm_kernels::linear(&u, &p.b, None)?);
            at = p.start + p.b.dim(0)?;
        }
        if at < out {
            pieces.push(zeros(out - at)?);
        }
        let delta = if pieces.len() == 1 { pieces.pop().expect("one piece") } else { Tensor::cat(&pieces, D::Minus1)? };
        y + (delta * lora.scale)?
    }
}

impl Linear {
    /// The many-row product of a layer whose quantized rows round their inputs to 8 bits
    /// (Q8_0): the f32 product of the rounded inputs with the dequantized weights, so that a
    /// prompt pass computes what decoding computes. None when no row rounds (the plain
    /// product is the same model).
    fn rounded_input_product(&self, x: &Tensor, q: &QuantWeights) -> Result<Option<Tensor>> {
        let runs = q.input_rounding();
        if !runs.iter().any(|r| r.2) {
            return Ok(None);
        }
        let k = x.dim(D::Minus1)?;
        let mut rounded = x.flatten_all()?.to_vec1::<f32>()?;
        ferrolm_kernels::q8::round_activations(&mut rounded, k);
        let rounded = Tensor::from_vec(rounded, x.dims(), x.device())?;
        if let [(_, _, true)] = runs.as_slice() {
            return ferrolm_kernels::linear(&rounded, &self.weight, self.bias.as_ref()).map(Some);
        }
        // Rows in formats that do and do not round: each run of rows on its own input.
        let mut pieces = Vec::with_capacity(runs.len());
        for (start, rows, round) in runs {
            let w = self.weight.narrow(0, start, rows)?;
            let b = self.bias.as_ref().map(|b| b.narrow(0, start, rows)).transpose()?;
            pieces.push(ferrolm_kernels::linear(if round { &rounded } else { x }, &w, b.as_ref())?);
        }
        Tensor::cat(&pieces, D::Minus1).map(Some)
    }
}

impl Module for Linear {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.forward_t(x, None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn few_rows_read_the_quantized_blocks_and_more_rows_the_f32_weights() {
        let dev = Device::Cpu;
        let w = Tensor::randn(0f32, 1.0, (24, 256), &dev).unwrap();
        let b = Tensor::randn(0f32, 1.0, 24, &dev).unwrap();
        let mut lin = Linear::new(w.clone(), Some(b.clone()));
        // blocks of *other* values, so that the test sees which product ran
        let other: Vec<f32> = w.flatten_all().unwrap().to_vec1::<f32>().unwrap().iter().map(|v| v * 2.0).collect();
        let q = QuantWeights::quantize(QuantKind::Q4K, &other, 24, 256).unwrap();
        assert_eq!(q.format(), "Q4_K");
        let dq = Tensor::from_vec(q.dequantize(), (24, 256), &dev).unwrap();
        lin.set_quant(q).unwrap();
        for rows in [1, QUANT_MAX_ROWS, QUANT_MAX_ROWS + 1] {
            let x = Tensor::randn(0f32, 1.0, (1, rows, 256), &dev).unwrap();
            let y = lin.forward(&x).unwrap();
            let on = if rows <= QUANT_MAX_ROWS { &dq } else { &w };
            let want = x.broadcast_matmul(&on.t().unwrap()).unwrap().broadcast_add(&b).unwrap();
            let d: f32 = (y - want).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar().unwrap();
            assert!(d < 1e-3, "{rows} rows: {d}");
        }
        // a mismatched shape is refused
        let wrong = QuantWeights::quantize(QuantKind::Q8_0, &[0.0; 32 * 3], 3, 32).unwrap();
        assert!(lin.set_quant(wrong).is_err());
    }

    #[test]
    fn q8_0_rows_multiply_inputs_rounded_to_8_bits_in_both_products() {
        let dev = Device::Cpu;
        let (n8, nk, k) = (16, 8, 256);
        let w = Tensor::randn(0f32, 1.0, (n8 + nk, k), &dev).unwrap();
        let b = Tensor::randn(0f32, 1.0, n8 + nk, &dev).unwrap();
        // Q8_0 rows on top, Q4_K rows below (as a fused layer from a mixed file may hold)
        let wv = w.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let mut q = QuantWeights::quantize(QuantKind::Q8_0, &wv[..n8 * k], n8, k).unwrap();
        let qk = QuantWeights::quantize(QuantKind::Q4K, &wv[n8 * k..], nk, k).unwrap();
        assert_eq!(qk.format(), "Q4_K");
        q.push(qk.blocks()[0].clone()).unwrap();
        assert_eq!(q.input_rounding(), vec![(0, n8, true), (n8, nk, false)]);
        let dq = Tensor::from_vec(q.dequantize(), (n8 + nk, k), &dev).unwrap();
        let mut lin = Linear::new(dq.clone(), Some(b.clone()));
        lin.set_quant(q).unwrap();
        for rows in [1, QUANT_MAX_ROWS, QUANT_MAX_ROWS + 5] {
            let x = Tensor::randn(0f32, 1.0, (1, rows, k), &dev).unwrap();
            let mut xr = x.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            ferrolm_kernels::q8::round_activations(&mut xr, k);
            let xr = Tensor::from_vec(xr, (1, rows, k), &dev).unwrap();
            let top = xr.broadcast_matmul(&dq.narrow(0, 0, n8).unwrap().t().unwrap()).unwrap();
            let bottom = x.broadcast_matmul(&dq.narrow(0, n8, nk).unwrap().t().unwrap()).unwrap();
            let want = Tensor::cat(&[top, bottom], 2).unwrap().broadcast_add(&b).unwrap();
            let y = lin.forward(&x).unwrap();
            let d: f32 = (y - want).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar().unwrap();
            assert!(d < 1e-4, "{rows} rows: {d}");
        }
    }
}
