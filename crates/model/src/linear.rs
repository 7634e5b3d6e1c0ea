//! A linear layer on candle's matmul with the fused bias add from `ops`. Inputs of any
//! rank are flattened to rows first, so the weight gradient is one plain matmul rather
//! than a broadcast batched matmul followed by a reduction.

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
        let dims = x.dims().to_vec();
        let k = dims[dims.len() - 1];
        let rows = x.elem_count() / k;
        let y = x.contiguous()?.reshape((rows, k))?.matmul(&self.weight.t()?)?;
        let y = match &self.bias {
            Some(b) => crate::ops::add_bias(&y, b)?,
            None => y,
        };
        let mut out_dims = dims;
        *out_dims.last_mut().expect("rank >= 1") = self.weight.dim(0)?;
        y.reshape(out_dims)
    }
}
