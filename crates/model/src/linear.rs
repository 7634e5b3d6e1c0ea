//! A linear layer, `y = x·Wᵀ + b`: its weights and their initialisation. The product is
//! one fused op on CPU (`ferrolm_kernels::linear`: the bias as the product's start, dW in
//! W's own layout, dX and dW side by side). A layer may carry LoRA adapters
//! ([`crate::lora`]): low-rank updates of some of its output rows.

use candle_core::{Module, Result, Tensor, D};
use candle_nn::VarBuilder;

#[derive(Debug, Clone)]
pub struct Linear {
    weight: Tensor,
    bias: Option<Tensor>,
    lora: Option<LoraAdapter>,
    /// The same weights in Q8_0 blocks (a model loaded from a Q8_0 GGUF file): products
    /// of up to [`Q8_MAX_ROWS`] input rows — token-by-token decoding, which reads every
    /// weight for each token — read these, a quarter of the bytes.
    q8: Option<std::sync::Arc<ferrolm_kernels::q8::Q8Matrix>>,
}

/// Inputs with more rows (a prompt's prefill) take the f32 product, where the work is the
/// arithmetic rather than reading the weights.
pub const Q8_MAX_ROWS: usize = 8;

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
        Self { weight, bias, lora: None, q8: None }
    }

    pub fn load(in_dim: usize, out_dim: usize, bias: bool, vb: VarBuilder) -> Result<Self> {
        let init = candle_nn::init::DEFAULT_KAIMING_NORMAL;
        let weight = vb.get_with_hints((out_dim, in_dim), "weight", init)?;
        let bias = if bias { Some(vb.get_with_hints(out_dim, "bias", candle_nn::Init::Const(0.0))?) } else { None };
        Ok(Self { weight, bias, lora: None, q8: None })
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

    /// Keep a Q8_0 copy of the weights for few-row products (see the `q8` field); false,
    /// leaving the layer as it was, when a row's width is not a multiple of 32.
    pub fn quantize_q8(&mut self) -> Result<bool> {
        let (rows, cols) = self.weight.dims2()?;
        let values = self.weight.to_dtype(candle_core::DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
        self.q8 = ferrolm_kernels::q8::Q8Matrix::quantize(&values, rows, cols).map(std::sync::Arc::new);
        Ok(self.q8.is_some())
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
        if let Some(q) = &self.q8 {
            let k = x.dim(D::Minus1)?;
            let m = x.elem_count() / k.max(1);
            // Only for frozen weights (a GGUF model is loaded frozen, for inference): the
            // 8-bit product has no gradient.
            if m <= Q8_MAX_ROWS && x.device().is_cpu() && x.dtype() == candle_core::DType::F32 && !self.weight.track_op() && self.lora.is_none() {
                let xs = x.flatten_all()?.to_vec1::<f32>()?;
                let mut dims = x.dims().to_vec();
                *dims.last_mut().expect("rank >= 1") = q.rows;
                let y = Tensor::from_vec(q.matmul_t(&xs, m), dims, x.device())?;
                return match &self.bias {
                    Some(b) => y.broadcast_add(b),
                    None => Ok(y),
                };
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

impl Module for Linear {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.forward_t(x, None)
    }
}
