//! BERT-style masked language model on the shared core: a bidirectional encoder stack,
//! an MLM head (dense → GELU → norm → vocabulary projection tied to the token embedding,
//! plus an output bias), a pooler (dense + tanh on the first position) giving the sentence
//! representation used by classification heads, and an optional next-sentence head.
//! With the next-sentence head (`nsp_head = true`) or `type_vocab_size > 0` the model also
//! has segment ("token type") embeddings, so a sentence pair `[CLS] A [SEP] B [SEP]` tells
//! its two parts apart as in BERT (a single text is segment 0); without them every input is
//! one segment. BERT checkpoints (`hf`) use the same model with the core's options:
//! post-norm blocks with a norm on the embeddings (`post_norm`), erf GELU (`exact_gelu`),
//! and, for checkpoints without them, no MLM head (`mlm_head = false`, a bare `BertModel`)
//! or no pooler (`pooler = false`, as transformers saves `BertForMaskedLM`).

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
    /// Segment embeddings (`token_types()` rows: first / second segment, …).
    segments: Option<Embedding>,
    /// Norm on the embeddings (post-norm blocks only).
    ln_emb: Option<Norm>,
    pos: Positions,
    rope: Option<Rope>,
    encoder: Stack,
    mlm: Option<MlmHead>,
    pooler: Option<Linear>,
    nsp: Option<Linear>,
}

/// dense → GELU → norm → vocabulary projection (+ bias).
#[derive(Debug, Clone)]
struct MlmHead {
    dense: Linear,
    ln: Norm,
    out: Linear,
    exact_gelu: bool,
}

impl MaskedLm {
    pub fn new(cfg: &TransformerConfig, vb: VarBuilder) -> Result<Self> {
        cfg.validate().map_err(candle_core::Error::Msg)?;
        if cfg.kind != crate::config::ModelKind::MaskedLm {
            candle_core::bail!("model.kind = {:?} is not a masked LM", cfg.kind);
        }
        let wte = candle_nn::embedding(cfg.vocab_size, cfg.d_model, vb.pp("wte"))?;
        let d = cfg.d_model;
        let mlm = if cfg.mlm_head {
            let out_bias = vb.pp("mlm").get(cfg.vocab_size, "bias")?;
            let out_w = if cfg.tie_embeddings {
                wte.embeddings().clone()
            } else {
                vb.pp("lm_head").get((cfg.vocab_size, d), "weight")?
            };
            Some(MlmHead {
                dense: Linear::load(d, d, true, vb.pp("mlm.dense"))?,
                ln: norm(cfg, vb.pp("mlm.ln"))?,
                out: Linear::new(out_w, Some(out_bias)),
                exact_gelu: cfg.exact_gelu,
            })
        } else {
            None
        };
        let types = cfg.token_types();
        Ok(Self {
            pos: Positions::new(cfg, vb.pp("wpe"))?,
            rope: rope(cfg, vb.device())?,
            ln_emb: if cfg.post_norm { Some(norm(cfg, vb.pp("ln_emb"))?) } else { None },
            encoder: Stack::new(cfg, false, vb.pp("encoder"))?,
            mlm,
            pooler: if cfg.pooler { Some(Linear::load(d, d, true, vb.pp("pooler"))?) } else { None },
            nsp: if cfg.nsp_head { Some(Linear::load(d, 2, true, vb.pp("nsp"))?) } else { None },
            segments: if types > 0 { Some(candle_nn::embedding(types, d, vb.pp("wtt"))?) } else { None },
            wte,
            cfg: cfg.clone(),
        })
    }

    pub fn config(&self) -> &TransformerConfig {
        &self.cfg
    }

    /// Attach LoRA adapters, keyed by layer variable prefix (`encoder.blocks.3.attn.qkv`);
    /// each one used is removed from `adapters`.
    pub fn set_lora(&mut self, adapters: &mut std::collections::HashMap<String, crate::linear::LoraAdapter>) -> Result<()> {
        self.encoder.set_lora("encoder.blocks", adapters);
        Ok(())
    }

    /// Detach every LoRA adapter, with its layer's variable prefix.
    pub fn take_lora(&mut self) -> Vec<(String, crate::linear::LoraAdapter)> {
        self.encoder.take_lora("encoder.blocks")
    }

    /// Hold the encoder blocks' linear weights quantized (QLoRA's base); returns the
    /// variable prefixes of the layers held quantized.
    pub fn quantize_encoder(&mut self, kind: crate::quant::QuantKind) -> Result<Vec<String>> {
        self.encoder.quantize_linears("encoder.blocks", kind)
    }

    /// Freeze the encoder's linear weights and the pooler's (see [`Linear::freeze`]): a
    /// base under LoRA adapters.
    pub fn freeze_linears(&mut self) {
        self.encoder.freeze_linears();
        if let Some(p) = self.pooler.as_mut() {
            p.freeze();
        }
    }

    /// Train the pooler again after [`Self::freeze_linears`]: its weights become the
    /// variables `pooler.weight` / `pooler.bias` of `varmap` once more. RoBERTa's sequence
    /// classifier trains this dense layer with its projection (`classifier.dense`, in
    /// PEFT's `modules_to_save`), where BERT's keeps the pretrained pooler frozen.
    pub fn thaw_pooler(&mut self, varmap: &candle_nn::VarMap) -> Result<()> {
        if self.pooler.is_none() {
            candle_core::bail!("this masked LM has no pooler to train");
        }
        let data = varmap.data().lock().expect("varmap lock");
        let var = |n: &str| data.get(n).map(|v| v.as_tensor().clone()).ok_or_else(|| candle_core::Error::Msg(format!("no variable {n} for the pooler")));
        self.pooler = Some(Linear::new(var("pooler.weight")?, Some(var("pooler.bias")?)));
        Ok(())
    }

    /// Encoder output (batch, T, d_model). `mask` is bidirectional, with segment ids when
    /// padded; padding keys are never attended.
    pub fn hidden(&self, ids: &Tensor, mask: &MaskSpec, dropout_seed: Option<u64>) -> Result<Tensor> {
        self.hidden_segments(ids, None, mask, dropout_seed)
    }

    /// [`Self::hidden`] with segment ids (batch, T) of 0 (first sentence, with `[CLS]` and
    /// its `[SEP]`) and 1 (second sentence and its `[SEP]`). `None` means all 0, as in
    /// BERT; segment ids given to a model without segment embeddings, or beyond its
    /// `token_types()`, are an error.
    pub fn hidden_segments(&self, ids: &Tensor, segments: Option<&Tensor>, mask: &MaskSpec, dropout_seed: Option<u64>) -> Result<Tensor> {
        let (b, t) = ids.dims2()?;
        // LoRA adapter dropout draws from its own stream (as in the decoder)
        let lora_seed = dropout_seed.map(|s| s ^ 0x4c6f_5241);
        let dropout_seed = dropout_seed.filter(|_| self.cfg.dropout > 0.0);
        let x = self.pos.embed(&self.wte, ids, 0)?;
        let x = match (segments, &self.segments) {
            (Some(s), Some(e)) => {
                let types = self.cfg.token_types() as u32;
                if let Some(bad) = s.flatten_all()?.to_vec1::<u32>()?.into_iter().find(|&t| t >= types) {
                    candle_core::bail!("segment id {bad} is outside the model's {types} segment embeddings");
                }
                (x + e.forward(s)?)?
            }
            // the first segment's row, added to every position
            (None, Some(e)) => x.broadcast_add(&e.embeddings().narrow(0, 0, 1)?)?,
            (None, None) => x,
            (Some(_), None) => candle_core::bail!("segment ids given to a masked LM without segment embeddings (model.nsp_head = false, model.type_vocab_size = 0)"),
        };
        let x = match &self.ln_emb {
            Some(ln) => ln.forward(&x)?,
            None => x,
        };
        let x = match dropout_seed {
            Some(seed) => ferrolm_kernels::dropout(&x, self.cfg.dropout, seed)?,
            None => x,
        };
        let bias = mask.bias(b, t, t, 0, ids.device())?;
        let inp = BlockInput { bias: bias.as_ref(), cross_bias: None, offset: 0, rope: self.rope.as_ref(), memory: None, dropout_seed, lora_seed, causal: false };
        self.encoder.forward(x, &inp, None)
    }

    /// MLM logits (…, vocab) for hidden states (…, d_model); callers usually gather the
    /// masked positions first so the vocabulary projection runs only where it is scored.
    pub fn mlm_logits(&self, hidden: &Tensor) -> Result<Tensor> {
        let Some(head) = &self.mlm else {
            candle_core::bail!("this masked LM has no MLM head (a bare encoder checkpoint, model.mlm_head = false): it gives hidden states and embeddings, not token predictions");
        };
        let h = head.dense.forward(hidden)?;
        let h = if head.exact_gelu { h.gelu_erf()? } else { h.gelu()? };
        head.out.forward(&head.ln.forward(&h)?)
    }

    /// Pooled sentence representation (batch, d_model): tanh(dense(hidden at position 0)).
    /// Position 0 is the sequence's first token (the `[CLS]` role).
    pub fn pooled(&self, hidden: &Tensor) -> Result<Tensor> {
        let Some(pooler) = &self.pooler else {
            candle_core::bail!("this masked LM has no pooler (model.pooler = false; e.g. transformers saves BertForMaskedLM without one): use mean pooling");
        };
        let first = hidden.narrow(1, 0, 1)?.squeeze(1)?;
        pooler.forward(&first)?.tanh()
    }

    pub fn has_mlm_head(&self) -> bool {
        self.mlm.is_some()
    }

    pub fn has_pooler(&self) -> bool {
        self.pooler.is_some()
    }

    /// Whether the model has segment ("token type") embeddings.
    pub fn has_segments(&self) -> bool {
        self.segments.is_some()
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
