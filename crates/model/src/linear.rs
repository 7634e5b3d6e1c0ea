//! A linear layer, `y = x·Wᵀ + b`: its weights and their initialisation. The product is
//! one fused op on CPU (`ferrolm_kernels::linear`: the bias as the product's start, dW in
//! W's own layout, dX and dW side by side).

use candle_core::{Module, Result, Tensor};
use candle_nn::VarBuilder;

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
        ferrolm_kernels::linear(x, &self.weight, self.bias.as_ref())
    }
}
