//! Position-wise feed-forward networks: GELU (GPT-2) and SwiGLU (modern).

use candle_core::{Module, Result, Tensor};
use candle_nn::VarBuilder;

use crate::linear::Linear;

use crate::config::{BlockStyle, TransformerConfig};

#[derive(Debug, Clone)]
pub enum Mlp {
    /// fc → GELU (tanh approximation, as GPT-2) → proj
    Gelu { fc: Linear, proj: Linear },
    /// down(silu(gate(x)) ⊙ up(x)), Shazeer 2020
    SwiGlu { gate: Linear, up: Linear, down: Linear },
}

pub(crate) fn linear(i: usize, o: usize, bias: bool, vb: VarBuilder) -> Result<Linear> {
    Linear::load(i, o, bias, vb)
}

impl Mlp {
    pub fn new(cfg: &TransformerConfig, vb: VarBuilder) -> Result<Self> {
        let (d, f) = (cfg.d_model, cfg.ff_dim());
        Ok(match cfg.block {
            BlockStyle::Gpt2 => Self::Gelu { fc: linear(d, f, true, vb.pp("fc"))?, proj: linear(f, d, true, vb.pp("proj"))? },
            BlockStyle::Modern => Self::SwiGlu {
                gate: linear(d, f, false, vb.pp("gate"))?,
                up: linear(d, f, false, vb.pp("up"))?,
                down: linear(f, d, false, vb.pp("proj"))?,
            },
        })
    }
}

impl Module for Mlp {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        match self {
            Self::Gelu { fc, proj } => proj.forward(&ferrolm_kernels::gelu(&fc.forward(x)?)?),
            Self::SwiGlu { gate, up, down } => down.forward(&(gate.forward(x)?.silu()? * up.forward(x)?)?),
        }
    }
}
