//! Position-wise feed-forward networks: GELU (GPT-2) and SwiGLU (modern).

use candle_core::{Module, Result, Tensor};
use candle_nn::VarBuilder;

use crate::linear::Linear;

use crate::config::{BlockStyle, TransformerConfig};

#[derive(Debug, Clone)]
pub enum Mlp {
    /// fc → GELU (tanh approximation, as GPT-2; with `exact`, erf, as BERT) → proj
    Gelu { fc: Linear, proj: Linear, exact: bool },
    /// down(silu(gate(x)) ⊙ up(x)), Shazeer 2020
    SwiGlu { gate: Linear, up: Linear, down: Linear },
}

pub(crate) fn linear(i: usize, o: usize, bias: bool, vb: VarBuilder) -> Result<Linear> {
    Linear::load(i, o, bias, vb)
}

/// GELU: the tanh approximation (the fused kernel), or with `exact` the erf form.
pub(crate) fn gelu(x: &Tensor, exact: bool) -> Result<Tensor> {
    if exact {
        x.gelu_erf()
    } else {
        ferrolm_kernels::gelu(x)
    }
}

impl Mlp {
    pub fn new(cfg: &TransformerConfig, vb: VarBuilder) -> Result<Self> {
        let (d, f) = (cfg.d_model, cfg.ff_dim());
        Ok(match cfg.block {
            BlockStyle::Gpt2 => Self::Gelu { fc: linear(d, f, true, vb.pp("fc"))?, proj: linear(f, d, true, vb.pp("proj"))?, exact: cfg.exact_gelu },
            BlockStyle::Modern => Self::SwiGlu {
                gate: linear(d, f, false, vb.pp("gate"))?,
                up: linear(d, f, false, vb.pp("up"))?,
                down: linear(f, d, false, vb.pp("proj"))?,
            },
        })
    }
}

impl Mlp {
    /// `lora_seed`: Some in training, for the dropout of LoRA adapters.
    pub fn forward_t(&self, x: &Tensor, lora_seed: Option<u64>) -> Result<Tensor> {
        let s = |k: u64| lora_seed.map(|s| s.wrapping_mul(0x9e37_79b9_7f4a_7c15).wrapping_add(k));
        match self {
            Self::Gelu { fc, proj, exact } => proj.forward_t(&gelu(&fc.forward_t(x, s(1))?, *exact)?, s(2)),
            Self::SwiGlu { gate, up, down } => down.forward_t(&ferrolm_kernels::swiglu(&gate.forward_t(x, s(3))?, &up.forward_t(x, s(4))?)?, s(5)),
        }
    }

    /// The layers LoRA may adapt, by their names under the block.
    pub(crate) fn linears_mut(&mut self) -> Vec<(&'static str, &mut Linear)> {
        match self {
            Self::Gelu { fc, proj, .. } => vec![("mlp.fc", fc), ("mlp.proj", proj)],
            Self::SwiGlu { gate, up, down } => vec![("mlp.gate", gate), ("mlp.up", up), ("mlp.proj", down)],
        }
    }
}

impl Module for Mlp {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.forward_t(x, None)
    }
}
