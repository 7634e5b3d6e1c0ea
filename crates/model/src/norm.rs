//! Normalisation layers: LayerNorm (GPT-2 block) and RMSNorm (modern block), both on the
//! fused kernels in `ops`.

use candle_core::{Module, Result, Tensor};
use candle_nn::VarBuilder;

#[derive(Debug, Clone)]
pub enum Norm {
    Layer { weight: Tensor, bias: Tensor, eps: f64 },
    Rms { weight: Tensor, eps: f64 },
}

impl Norm {
    pub fn layer(dim: usize, eps: f64, vb: VarBuilder) -> Result<Self> {
        let weight = vb.get_with_hints(dim, "weight", candle_nn::Init::Const(1.0))?;
        let bias = vb.get_with_hints(dim, "bias", candle_nn::Init::Const(0.0))?;
        Ok(Self::Layer { weight, bias, eps })
    }

    pub fn rms(dim: usize, eps: f64, vb: VarBuilder) -> Result<Self> {
        let weight = vb.get_with_hints(dim, "weight", candle_nn::Init::Const(1.0))?;
        Ok(Self::Rms { weight, eps })
    }
}

impl Module for Norm {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        match self {
            Self::Layer { weight, bias, eps } => ferrolm_kernels::layer_norm(x, weight, bias, *eps),
            Self::Rms { weight, eps } => ferrolm_kernels::rms_norm(x, weight, *eps),
        }
    }
}
