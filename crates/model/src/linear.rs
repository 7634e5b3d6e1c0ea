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
    /// The weights quantized (Q8_0, Q4_K, Q6_K or F16: a GGUF file's blocks, or `--quant`),
    /// held instead of f32 ones: `weight` is then a [`placeholder`] of the matrix's shape,
    /// no values. Products of up to [`QUANT_MAX_ROWS`] input rows — token-by-token
    /// decoding, which reads every weight for each token — read the blocks, a half to an
    /// eighth of f32's bytes; larger ones (a prompt) take [`QuantWeights::matmul_t_panels`]
    /// (the same integer products for k-quant rows, 8-bit tiles for Q8_0 rows on AVX-512
    /// VNNI, otherwise panels of rows widened to f32 as they go), both on the same inputs
    /// (rounded to 8 bits for Q8_0 and k-quant rows: [`QuantWeights::input_rounding`]), so
    /// every product computes one model.
    quant: Option<std::sync::Arc<QuantWeights>>,
}

/// A tensor of `shape` that holds no values (one zero, broadcast): what a layer whose
/// weights are held only quantized has in place of its f32 matrix, and what a model
/// builder receives for such a layer (so a 0.5 B-parameter GGUF model never holds its f32
/// copy, even while it loads). Never multiplied: [`Linear::set_quant`] must claim it.
pub fn placeholder(shape: &[usize], device: &candle_core::Device) -> Result<Tensor> {
    Tensor::zeros((), candle_core::DType::F32, device)?.broadcast_as(shape)
}

/// Whether `t` is a [`placeholder`] (more than one element, all strides 0).
pub fn is_placeholder(t: &Tensor) -> bool {
    t.elem_count() > 1 && t.stride().iter().all(|&s| s == 0)
}

/// Row blocks stacked (`Tensor::cat` on dim 0), or one placeholder of the stacked shape
/// when every part is a placeholder (a fused q/k/v layer of quantized parts). f32 parts on
/// the CPU are stacked into a variable's values in one copy (a loading checkpoint's q, k
/// and v: `Tensor::cat` and then the variable's own copy were two, into fresh pages each).
pub fn cat_rows(parts: &[Tensor]) -> Result<Tensor> {
    // the stacked shape (parts of rank ≥ 1)
    let stacked = || -> Result<Vec<usize>> {
        let mut dims = parts[0].dims().to_vec();
        dims[0] = parts.iter().map(|p| p.dim(0)).sum::<Result<usize>>()?;
        Ok(dims)
    };
    if !parts.is_empty() && parts.iter().all(is_placeholder) {
        return placeholder(&stacked()?, parts[0].device());
    }
    let same_width = parts.windows(2).all(|w| w[0].dims().get(1..) == w[1].dims().get(1..));
    if !parts.is_empty() && same_width && parts.iter().all(|p| p.device().is_cpu() && p.dtype() == candle_core::DType::F32 && p.rank() >= 1) {
        let dims = stacked()?;
        let mut values = Vec::with_capacity(dims.iter().product());
        for p in parts {
            let p = p.contiguous()?;
            let (storage, layout) = p.storage_and_layout();
            let candle_core::Storage::Cpu(cpu) = &*storage else { unreachable!("checked: on the CPU") };
            values.extend_from_slice(ferrolm_kernels::contiguous_f32(cpu, layout, "cat_rows")?);
        }
        return Ok(candle_core::Var::from_vec(values, dims, parts[0].device())?.as_tensor().clone());
    }
    Tensor::cat(parts, 0)
}

/// Inputs with more rows (a prompt's prefill) take the many-row product
/// ([`QuantWeights::matmul_t_panels`]), where the work is the arithmetic rather than reading
/// the weights.
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

    /// Hold the weights as `q` from now on — the same matrix quantized (a GGUF file's
    /// blocks) — in place of the f32 values, which are dropped (see the `quant` field). The
    /// layer is frozen: its products give the input a gradient but the weights none (they
    /// may carry LoRA adapters: QLoRA). A `weight` that is a [`placeholder`] needs this.
    pub fn set_quant(&mut self, q: impl Into<std::sync::Arc<QuantWeights>>) -> Result<()> {
        let q = q.into();
        let (rows, cols) = self.weight.dims2()?;
        if (q.rows(), q.cols()) != (rows, cols) {
            candle_core::bail!("quantized weights of {}×{} for a layer of {rows}×{cols}", q.rows(), q.cols());
        }
        self.weight = placeholder(&[rows, cols], self.weight.device())?;
        self.bias = self.bias.as_ref().map(Tensor::detach);
        self.quant = Some(q);
        Ok(())
    }

    /// The quantized weights, if the layer has them.
    pub fn quant(&self) -> Option<&QuantWeights> {
        self.quant.as_deref()
    }

    /// Quantize the weights as `kind` asks (Q4_K falls back to Q8_0 on rows that are not
    /// whole 256-value super-blocks; F16 rounds each weight to the nearest half) and hold
    /// them so from now on ([`Self::set_quant`]): every product computes the quantized
    /// model. The layer is frozen. A layer that already has quantized weights keeps them.
    /// Returns (format, bytes, quantized now), or None when the rows do not fill blocks of
    /// 32 (the layer stays f32; never for F16).
    pub fn quantize(&mut self, kind: QuantKind) -> Result<Option<(String, usize, bool)>> {
        if let Some(q) = &self.quant {
            return Ok(Some((q.format(), q.bytes(), false)));
        }
        let (rows, cols) = self.weight.dims2()?;
        let values = self.weight.to_dtype(candle_core::DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
        let Some(q) = QuantWeights::quantize(kind, &values, rows, cols) else { return Ok(None) };
        let out = (q.format(), q.bytes(), true);
        self.set_quant(q)?;
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
        if let Some(lora) = &self.lora {
            // A frozen base (f32, or quantized: QLoRA) with adapters: one op that adds the
            // adapters' products into the base product's output, adapter dropout drawn
            // inside it (the composed path below draws the same mask).
            let dropout = lora_seed.filter(|_| lora.dropout > 0.0).map(|s| (lora.dropout, s));
            let frozen = !self.weight.track_op() && !self.bias.as_ref().is_some_and(Tensor::track_op);
            let cpu_f32 = x.device().is_cpu() && x.dtype() == candle_core::DType::F32 && self.weight.dtype() == candle_core::DType::F32;
            let has_weights = self.quant.is_some() || !is_placeholder(&self.weight);
            if let (Some(first), true, true, true) = (lora.parts.first(), frozen, cpu_f32, has_weights) {
                let rank = first.a.dim(0)?;
                let mut parts = Vec::with_capacity(lora.parts.len());
                for p in &lora.parts {
                    if p.a.dim(0)? != rank || p.b.dim(1)? != rank {
                        candle_core::bail!("LoRA parts of different ranks in one layer");
                    }
                    parts.push((p.start, p.b.dim(0)?));
                }
                let stack = |f: fn(&LoraPart) -> &Tensor| -> Result<Tensor> {
                    match lora.parts.as_slice() {
                        [one] => Ok(f(one).clone()),
                        many => Tensor::cat(&many.iter().map(f).collect::<Vec<_>>(), 0),
                    }
                };
                let (a, b) = (stack(|p| &p.a)?, stack(|p| &p.b)?);
                let blocks = ferrolm_kernels::LoraBlocks { a: &a, b: &b, parts: &parts, rank, scale: lora.scale, dropout };
                return match &self.quant {
                    None => ferrolm_kernels::lora_linear(x, &self.weight, self.bias.as_ref(), &blocks),
                    Some(q) => {
                        let bias = self.bias.as_ref().map(|b| b.to_dtype(candle_core::DType::F32)?.flatten_all()?.to_vec1::<f32>()).transpose()?;
                        ferrolm_kernels::lora_linear_on(x, std::sync::Arc::new(crate::quant::QuantFrozen { q: q.clone(), bias }), &blocks)
                    }
                };
            }
        }
        let y = match &self.quant {
            Some(q) => {
                if !x.device().is_cpu() {
                    candle_core::bail!("quantized weights are for CPU inference; the input is on {:?}", x.device().location());
                }
                // The weights stay frozen; the input gets its gradient (dY·W), which adapters
                // on the layers below need when this one is held quantized (QLoRA).
                let y = x.to_dtype(candle_core::DType::F32)?.contiguous()?.apply_op1(crate::quant::QuantProduct(q.clone()))?;
                match &self.bias {
                    Some(b) => y.broadcast_add(b)?,
                    None => y,
                }
            }
            None => {
                if is_placeholder(&self.weight) {
                    candle_core::bail!("a linear layer of {:?} has no weights: its quantized weights were never set", self.weight.dims());
                }
                ferrolm_kernels::linear(x, &self.weight, self.bias.as_ref())?
            }
        };
        let Some(lora) = &self.lora else { return Ok(y) };
        let x = match lora_seed {
            Some(s) if lora.dropout > 0.0 => ferrolm_kernels::dropout_hashed(x, lora.dropout, s)?,
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
    fn a_quantized_layer_drops_its_f32_weights_and_every_product_reads_the_blocks() {
        let dev = Device::Cpu;
        let w = Tensor::randn(0f32, 1.0, (24, 256), &dev).unwrap();
        let b = Tensor::randn(0f32, 1.0, 24, &dev).unwrap();
        let mut lin = Linear::new(w.clone(), Some(b.clone()));
        // blocks of *other* values, so that the test sees which weights the products read
        let other: Vec<f32> = w.flatten_all().unwrap().to_vec1::<f32>().unwrap().iter().map(|v| v * 2.0).collect();
        let q = QuantWeights::quantize(QuantKind::Q4K, &other, 24, 256).unwrap();
        assert_eq!(q.format(), "Q4_K");
        let dq = Tensor::from_vec(q.dequantize(), (24, 256), &dev).unwrap();
        lin.set_quant(q).unwrap();
        assert!(is_placeholder(lin.weight()), "the f32 weights are dropped");
        for rows in [1, QUANT_MAX_ROWS, QUANT_MAX_ROWS + 1, 70] {
            let x = Tensor::randn(0f32, 1.0, (1, rows, 256), &dev).unwrap();
            let y = lin.forward(&x).unwrap();
            // Q4_K rows multiply the inputs rounded to 8 bits
            let mut xr = x.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            ferrolm_kernels::q8::round_activations(&mut xr, 256);
            let xr = Tensor::from_vec(xr, (1, rows, 256), &dev).unwrap();
            let want = xr.broadcast_matmul(&dq.t().unwrap()).unwrap().broadcast_add(&b).unwrap();
            let d: f32 = (y - want).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar().unwrap();
            assert!(d < 1e-3, "{rows} rows: {d}");
        }
        // a mismatched shape is refused
        let wrong = QuantWeights::quantize(QuantKind::Q8_0, &[0.0; 32 * 3], 3, 32).unwrap();
        assert!(lin.set_quant(wrong).is_err());
        // a placeholder never multiplies silently
        let empty = Linear::new(placeholder(&[24, 256], &dev).unwrap(), None);
        let x = Tensor::randn(0f32, 1.0, (1, 2, 256), &dev).unwrap();
        assert!(format!("{}", empty.forward(&x).unwrap_err()).contains("no weights"));
        // stacked placeholders stay placeholders; real parts are concatenated
        let p = cat_rows(&[placeholder(&[3, 8], &dev).unwrap(), placeholder(&[5, 8], &dev).unwrap()]).unwrap();
        assert!(is_placeholder(&p) && p.dims() == [8, 8]);
        assert!(!is_placeholder(&cat_rows(&[w.clone(), w.clone()]).unwrap()));
    }

    #[test]
    fn k_quant_rows_give_a_prompt_pass_the_floats_of_decoding_bit_for_bit() {
        let (n, k, m) = (40, 512, 21);
        let wv: Vec<f32> = (0..n * k).map(|i| ((i * 7919 % 1000) as f32 / 500.0 - 1.0).powi(3)).collect();
        let mut q = QuantWeights::quantize(QuantKind::Q4K, &wv[..24 * k], 24, k).unwrap();
        let q6 = ferrolm_kernels::q4k::KMatrix::quantize(ferrolm_kernels::q4k::KQuant::Q6K, &wv[24 * k..], n - 24, k).unwrap();
        q.push(crate::quant::QuantBlock::K(q6)).unwrap();
        assert_eq!(q.format(), "Q4_K+Q6_K");
        let x: Vec<f32> = (0..m * k).map(|i| ((i * 104_729 % 997) as f32 / 498.5 - 1.0) * 3.0).collect();
        assert!(m > QUANT_MAX_ROWS);
        let prompt = q.matmul_t_panels(&x, m);
        for r in 0..m {
            assert_eq!(q.matmul_t(&x[r * k..(r + 1) * k], 1), &prompt[r * n..(r + 1) * n], "row {r}");
        }
    }

    #[test]
    fn q8_0_and_k_quant_rows_multiply_inputs_rounded_to_8_bits_in_both_products() {
        let dev = Device::Cpu;
        let (n8, nk, nh, k) = (16, 8, 8, 256);
        let n = n8 + nk + nh;
        let w = Tensor::randn(0f32, 1.0, (n, k), &dev).unwrap();
        let b = Tensor::randn(0f32, 1.0, n, &dev).unwrap();
        // Q8_0 rows on top, Q4_K rows, F16 rows below (as a fused layer from a mixed file may hold)
        let wv = w.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let mut q = QuantWeights::quantize(QuantKind::Q8_0, &wv[..n8 * k], n8, k).unwrap();
        let qk = QuantWeights::quantize(QuantKind::Q4K, &wv[n8 * k..(n8 + nk) * k], nk, k).unwrap();
        let qh = QuantWeights::quantize(QuantKind::F16, &wv[(n8 + nk) * k..], nh, k).unwrap();
        assert_eq!((qk.format().as_str(), qh.format().as_str()), ("Q4_K", "F16"));
        q.push(qk.blocks()[0].clone()).unwrap();
        q.push(qh.blocks()[0].clone()).unwrap();
        assert_eq!(q.input_rounding(), vec![(0, n8 + nk, true), (n8 + nk, nh, false)]);
        let dq = Tensor::from_vec(q.dequantize(), (n, k), &dev).unwrap();
        let mut lin = Linear::new(dq.clone(), Some(b.clone()));
        lin.set_quant(q).unwrap();
        for rows in [1, QUANT_MAX_ROWS, QUANT_MAX_ROWS + 5, 300] {
            let x = Tensor::randn(0f32, 1.0, (1, rows, k), &dev).unwrap();
            let mut xr = x.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            ferrolm_kernels::q8::round_activations(&mut xr, k);
            let xr = Tensor::from_vec(xr, (1, rows, k), &dev).unwrap();
            let top = xr.broadcast_matmul(&dq.narrow(0, 0, n8 + nk).unwrap().t().unwrap()).unwrap();
            let bottom = x.broadcast_matmul(&dq.narrow(0, n8 + nk, nh).unwrap().t().unwrap()).unwrap();
            let want = Tensor::cat(&[top, bottom], 2).unwrap().broadcast_add(&b).unwrap();
            let y = lin.forward(&x).unwrap();
            let d: f32 = (y - want).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar().unwrap();
            assert!(d < 1e-4, "{rows} rows: {d}");
        }
    }
}
