//! BERT-style masked language model on the shared core: a bidirectional encoder stack,
//! an MLM head (dense → GELU → norm → vocabulary projection tied to the token embedding,
//! plus an output bias), a pooler (dense + tanh on the first position) giving the sentence
//! representation used by classification heads, and an optional next-sentence head.
//! With the next-sentence head (`nsp_head = true`) the model also has segment
//! ("token type") embeddings, so a sentence pair `[CLS] A [SEP] B [SEP]` tells its two
//! parts apart as in BERT; without it there are none and every input is one segment.

use candle_core::{DType, Device, Module, Result, Tensor};
use candle_nn::{Embedding, VarBuilder};

use crate::linear::Linear;

use crate::attention::{MaskSpec, Rope};
use crate::block::{norm, BlockInput};
use crate::config::TransformerConfig;
use crate::embed::{rope, Positions};
use crate::norm::Norm;
use crate::transformer::Stack;

#[derive(Debug, Clone)]
pub struct MaskedLm {
    cfg: TransformerConfig,
    wte: Embedding,
    /// Segment embeddings (2 rows: first / second segment), only with the NSP head.
    segments: Option<Embedding>,
    pos: Positions,
    rope: Option<Rope>,
    encoder: Stack,
    mlm_dense: Linear,
    mlm_ln: Norm,
    mlm_out: Linear,
    pooler: Linear,
    nsp: Option<Linear>,
}

impl MaskedLm {
    pub fn new(cfg: &TransformerConfig, vb: VarBuilder) -> Result<Self> {
        cfg.validate().map_err(candle_core::Error::Msg)?;
        let wte = candle_nn::embedding(cfg.vocab_size, cfg.d_model, vb.pp("wte"))?;
        let d = cfg.d_model;
        let out_bias = vb.pp("mlm").get(cfg.vocab_size, "bias")?;
        let out_w = if cfg.tie_embeddings {
            wte.embeddings().clone()
        } else {
            vb.pp("lm_head").get((cfg.vocab_size, d), "weight")?
        };
        Ok(Self {
            pos: Positions::new(cfg, vb.pp("wpe"))?,
            rope: rope(cfg, vb.device())?,
            encoder: Stack::new(cfg, false, vb.pp("encoder"))?,
            mlm_dense: Linear::load(d, d, true, vb.pp("mlm.dense"))?,
            mlm_ln: norm(cfg, vb.pp("mlm.ln"))?,
            mlm_out: Linear::new(out_w, Some(out_bias)),
            pooler: Linear::load(d, d, true, vb.pp("pooler"))?,
            nsp: if cfg.nsp_head { Some(Linear::load(d, 2, true, vb.pp("nsp"))?) } else { None },
            segments: if cfg.nsp_head { Some(candle_nn::embedding(2, d, vb.pp("wtt"))?) } else { None },
            wte,
            cfg: cfg.clone(),
        })
    }

    pub fn config(&self) -> &TransformerConfig {
        &self.cfg
    }

    /// Encoder output (batch, T, d_model). `mask` is bidirectional, with segment ids when
    /// padded; padding keys are never attended.
    pub fn hidden(&self, ids: &Tensor, mask: &MaskSpec, dropout_seed: Option<u64>) -> Result<Tensor> {
        self.hidden_segments(ids, None, mask, dropout_seed)
    }

    /// [`Self::hidden`] with segment ids (batch, T) of 0 (first sentence, with `[CLS]` and
    /// its `[SEP]`) and 1 (second sentence and its `[SEP]`). `None` means all 0, as in
    /// BERT; segment ids given to a model without segment embeddings are an error.
    pub fn hidden_segments(&self, ids: &Tensor, segments: Option<&Tensor>, mask: &MaskSpec, dropout_seed: Option<u64>) -> Result<Tensor> {
        let (b, t) = ids.dims2()?;
        let dropout_seed = dropout_seed.filter(|_| self.cfg.dropout > 0.0);
        let x = self.pos.embed(&self.wte, ids, 0)?;
        let x = match (segments, &self.segments) {
            (Some(s), Some(e)) => (x + e.forward(s)?)?,
            // the first segment's row, added to every position
            (None, Some(e)) => x.broadcast_add(&e.embeddings().narrow(0, 0, 1)?)?,
            (None, None) => x,
            (Some(_), None) => candle_core::bail!("segment ids given to a masked LM without segment embeddings (model.nsp_head = false)"),
        };
        let x = match dropout_seed {
            Some(seed) => ferrolm_kernels::dropout(&x, self.cfg.dropout, seed)?,
            None => x,
        };
        let bias = mask.bias(b, t, t, 0, ids.device())?;
        let inp = BlockInput { bias: bias.as_ref(), cross_bias: None, offset: 0, rope: self.rope.as_ref(), memory: None, dropout_seed, lora_seed: None, causal: false };
        self.encoder.forward(x, &inp, None)
    }

    /// MLM logits (…, vocab) for hidden states (…, d_model); callers usually gather the
    /// masked positions first so the vocabulary projection runs only where it is scored.
    pub fn mlm_logits(&self, hidden: &Tensor) -> Result<Tensor> {
        let h = self.mlm_dense.forward(hidden)?.gelu()?;
        self.mlm_out.forward(&self.mlm_ln.forward(&h)?)
    }

    /// Pooled sentence representation (batch, d_model): tanh(dense(hidden at position 0)).
    /// Position 0 is the sequence's first token (the `[CLS]` role).
    pub fn pooled(&self, hidden: &Tensor) -> Result<Tensor> {
        let first = hidden.narrow(1, 0, 1)?.squeeze(1)?;
        self.pooler.forward(&first)?.tanh()
    }

    pub fn has_nsp_head(&self) -> bool {
        self.nsp.is_some()
    }

    /// Next-sentence logits (batch, 2: [is-next, random]) from the pooled vector; an error
    /// when the model was built without `nsp_head`.
    pub fn nsp_logits(&self, pooled: &Tensor) -> Result<Tensor> {
        match &self.nsp {
            Some(h) => h.forward(pooled),
            None => candle_core::bail!("this masked LM has no next-sentence head (model.nsp_head = false)"),
        }
    }

    pub fn device(&self) -> &Device {
        self.wte.embeddings().device()
    }

    pub fn dtype(&self) -> DType {
        self.wte.embeddings().dtype()
    }
}
