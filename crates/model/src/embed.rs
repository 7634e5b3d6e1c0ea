//! Input embeddings shared by every family (decoder, encoder-decoder, masked LM): token embedding plus, for GPT-2
//! blocks, a learned absolute position table (modern blocks use RoPE inside attention).

use candle_core::{DType, Module, Result, Tensor};
use candle_nn::{Embedding, VarBuilder};

use crate::attention::Rope;
use crate::config::{BlockStyle, TransformerConfig};

/// Learned positions (GPT-2 style) or RoPE (modern), chosen by the block style.
#[derive(Debug, Clone)]
pub struct Positions {
    wpe: Option<Embedding>,
    max_seq_len: usize,
}

impl Positions {
    pub fn new(cfg: &TransformerConfig, vb: VarBuilder) -> Result<Self> {
        let wpe = match cfg.block {
            BlockStyle::Gpt2 => Some(candle_nn::embedding(cfg.max_seq_len, cfg.d_model, vb)?),
            BlockStyle::Modern => None,
        };
        Ok(Self { wpe, max_seq_len: cfg.max_seq_len })
    }

    /// Token embeddings of `ids` (batch, T) whose first position is `offset`, plus learned
    /// positions when the style has them. Longer-than-context input is a clear error for
    /// both styles (RoPE's table has `max_seq_len` rows too).
    pub fn embed(&self, wte: &impl Module, ids: &Tensor, offset: usize) -> Result<Tensor> {
        let t = ids.dim(1)?;
        if offset + t > self.max_seq_len {
            candle_core::bail!("sequence of {} positions exceeds the model's max_seq_len {}", offset + t, self.max_seq_len);
        }
        let x = lookup(wte, ids)?;
        match &self.wpe {
            Some(wpe) => {
                let pos = Tensor::arange(offset as u32, (offset + t) as u32, ids.device())?;
                x.broadcast_add(&wpe.forward(&pos)?)
            }
            None => Ok(x),
        }
    }

    /// Token embeddings of one token per row, `ids` (batch, 1), row b at position
    /// `positions[b]` (batched decoding): one lookup for the whole batch.
    pub fn embed_rows(&self, wte: &impl Module, ids: &Tensor, positions: &[usize]) -> Result<Tensor> {
        if let Some(&p) = positions.iter().find(|&&p| p + 1 > self.max_seq_len) {
            candle_core::bail!("sequence of {} positions exceeds the model's max_seq_len {}", p + 1, self.max_seq_len);
        }
        let x = lookup(wte, ids)?;
        match &self.wpe {
            Some(wpe) => {
                let pos: Vec<u32> = positions.iter().map(|&p| p as u32).collect();
                let pos = Tensor::from_vec(pos, (positions.len(), 1), ids.device())?;
                x + wpe.forward(&pos)?
            }
            None => Ok(x),
        }
    }
}

pub fn rope(cfg: &TransformerConfig, device: &candle_core::Device) -> Result<Option<Rope>> {
    match cfg.block {
        BlockStyle::Gpt2 => Ok(None),
        BlockStyle::Modern => {
            let mut inv = Rope::inv_freq(cfg.head_dim(), cfg.rope_theta);
            if let Some(scaling) = &cfg.rope_scaling {
                scaling.apply(&mut inv);
            }
            Ok(Some(Rope::from_inv_freq(&inv, cfg.max_seq_len, device)?))
        }
    }
}

/// `wte.forward(ids)`; an id beyond the token table (a tokenizer with tokens the model
/// lacks) is one clear error instead of an index error from deep inside candle, with its
/// backtrace.
fn lookup(wte: &impl Module, ids: &Tensor) -> Result<Tensor> {
    wte.forward(ids).map_err(|e| {
        let text = e.to_string();
        let first = text.lines().next().unwrap_or_default().to_string();
        let max = ids.flatten_all().and_then(|t| t.to_dtype(DType::U32)).and_then(|t| t.max(0)).and_then(|t| t.to_scalar::<u32>());
        match max {
            Ok(m) if first.contains("invalid index") => candle_core::Error::Msg(format!(
                "token id {m} is outside the model's token table ({first}): the tokenizer has tokens the model lacks — do the tokenizer and the weights belong together?"
            )),
            _ => e,
        }
    })
}
