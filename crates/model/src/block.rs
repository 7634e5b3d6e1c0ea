//! One Transformer block: self-attention, optional cross-attention (decoder of an
//! encoder-decoder), MLP, each wrapped as x + f(norm(x)) (pre-norm), or, with
//! `post_norm` (BERT), as norm(x + f(x)).

use candle_core::{Module, Result, Tensor};
use candle_nn::VarBuilder;

use crate::attention::{Attention, AttnInput, LayerCache, Rope};
use crate::config::{BlockStyle, TransformerConfig};
use crate::mlp::Mlp;
use crate::norm::Norm;

// Batched single-token decoding for serving, in its own file.
mod batched;

#[derive(Debug, Clone)]
pub struct Block {
    ln1: Norm,
    attn: Attention,
    cross: Option<(Norm, Attention)>,
    ln2: Norm,
    mlp: Mlp,
    post_norm: bool,
}

pub(crate) fn norm(cfg: &TransformerConfig, vb: VarBuilder) -> Result<Norm> {
    match cfg.block {
        BlockStyle::Gpt2 => Norm::layer(cfg.d_model, cfg.norm_eps, vb),
        BlockStyle::Modern => Norm::rms(cfg.d_model, cfg.norm_eps, vb),
    }
}

/// Per-call inputs shared by all blocks of a stack.
pub struct BlockInput<'a> {
    pub bias: Option<&'a Tensor>,
    pub cross_bias: Option<&'a Tensor>,
    pub offset: usize,
    pub rope: Option<&'a Rope>,
    pub memory: Option<&'a Tensor>,
    pub dropout_seed: Option<u64>,
    /// Seed for LoRA adapter dropout: Some in training even when the model has no dropout.
    pub lora_seed: Option<u64>,
    /// Self-attention is plainly causal (the mask is applied inside the softmax kernel).
    pub causal: bool,
}

impl Block {
    pub fn new(cfg: &TransformerConfig, with_cross: bool, vb: VarBuilder) -> Result<Self> {
        let cross = if with_cross {
            Some((norm(cfg, vb.pp("ln_cross"))?, Attention::new_cross(cfg, vb.pp("cross"))?))
        } else {
            None
        };
        Ok(Self {
            ln1: norm(cfg, vb.pp("ln1"))?,
            attn: Attention::new_self(cfg, vb.pp("attn"))?,
            cross,
            ln2: norm(cfg, vb.pp("ln2"))?,
            mlp: Mlp::new(cfg, vb.pp("mlp"))?,
            post_norm: cfg.post_norm,
        })
    }

    pub fn forward(
        &self,
        x: &Tensor,
        inp: &BlockInput,
        cache: Option<(&mut LayerCache, &mut LayerCache)>,
    ) -> Result<Tensor> {
        let (self_cache, cross_cache) = match cache {
            Some((a, b)) => (Some(a), Some(b)),
            None => (None, None),
        };
        let seed = |k: u64| inp.dropout_seed.map(|s| s.wrapping_mul(0x100_0000_01b3).wrapping_add(k));
        let lseed = |k: u64| inp.lora_seed.map(|s| s.wrapping_mul(0x100_0000_01b3).wrapping_add(k));
        if self.post_norm {
            return self.forward_post_norm(x, inp, self_cache);
        }
        let a = self.attn.forward(
            &self.ln1.forward(x)?,
            AttnInput { bias: inp.bias, offset: inp.offset, rope: inp.rope, cache: self_cache, memory: None, dropout_seed: seed(1), lora_seed: lseed(1), causal: inp.causal },
        )?;
        let mut x = (x + a)?;
        if let Some((ln, cross)) = &self.cross {
            let memory = inp.memory.ok_or_else(|| candle_core::Error::Msg("decoder block needs the encoder output".into()))?;
            let c = cross.forward(
                &ln.forward(&x)?,
                AttnInput { bias: inp.cross_bias, offset: 0, rope: None, cache: cross_cache, memory: Some(memory), dropout_seed: seed(2), lora_seed: None, causal: false },
            )?;
            x = (x + c)?;
        }
        let m = self.mlp.forward_t(&self.ln2.forward(&x)?, lseed(2))?;
        let m = match seed(3) {
            Some(s) => ferrolm_kernels::dropout(&m, self.attn_dropout(), s)?,
            None => m,
        };
        x + m
    }

    /// BERT's order: `x = ln1(x + attn(x))`, `x = ln2(x + mlp(x))` (no cross-attention:
    /// post-norm blocks are encoder blocks).
    fn forward_post_norm(&self, x: &Tensor, inp: &BlockInput, cache: Option<&mut LayerCache>) -> Result<Tensor> {
        if self.cross.is_some() {
            candle_core::bail!("post-norm blocks have no cross-attention");
        }
        let seed = |k: u64| inp.dropout_seed.map(|s| s.wrapping_mul(0x100_0000_01b3).wrapping_add(k));
        let lseed = |k: u64| inp.lora_seed.map(|s| s.wrapping_mul(0x100_0000_01b3).wrapping_add(k));
        let a = self.attn.forward(
            x,
            AttnInput { bias: inp.bias, offset: inp.offset, rope: inp.rope, cache, memory: None, dropout_seed: seed(1), lora_seed: lseed(1), causal: inp.causal },
        )?;
        let x = self.ln1.forward(&(x + a)?)?;
        let m = self.mlp.forward_t(&x, lseed(2))?;
        let m = match seed(3) {
            Some(s) => ferrolm_kernels::dropout(&m, self.attn_dropout(), s)?,
            None => m,
        };
        self.ln2.forward(&(x + m)?)
    }

    /// The layers LoRA may adapt, by their names under the block.
    pub(crate) fn linears_mut(&mut self) -> Vec<(&'static str, &mut crate::linear::Linear)> {
        let mut v = self.attn.linears_mut();
        v.extend(self.mlp.linears_mut());
        v
    }

    fn attn_dropout(&self) -> f32 {
        self.attn.dropout_p()
    }
}
