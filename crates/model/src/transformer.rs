//! The Transformer language model: token (and, for GPT-2 blocks, learned position)
//! embeddings, a stack of blocks, a final norm and an LM head (optionally tied to the
//! token embedding). The mask passed in decides the shape: causal decoder (GPT) or
//! prefix decoder; the encoder-decoder composes two stacks with cross-attention.

use candle_core::{DType, Device, Module, Result, Tensor};
use candle_nn::{Embedding, VarBuilder};

use crate::linear::Linear;

use crate::attention::{KvCache, MaskSpec, Rope};
use crate::block::{norm, Block, BlockInput};
use crate::config::TransformerConfig;
use crate::embed::{rope, Positions};
use crate::norm::Norm;

// Batched single-token decoding for serving, in its own file.
mod batched;

/// A stack of blocks with its final norm (none for post-norm blocks, whose last block
/// ends with a norm).
#[derive(Debug, Clone)]
pub struct Stack {
    blocks: Vec<Block>,
    ln_f: Option<Norm>,
}

impl Stack {
    pub fn new(cfg: &TransformerConfig, with_cross: bool, vb: VarBuilder) -> Result<Self> {
        let blocks = (0..cfg.n_layers)
            .map(|i| Block::new(cfg, with_cross, vb.pp(format!("blocks.{i}"))))
            .collect::<Result<Vec<_>>>()?;
        let ln_f = if cfg.post_norm { None } else { Some(norm(cfg, vb.pp("ln_f"))?) };
        Ok(Self { blocks, ln_f })
    }

    pub fn forward(&self, mut x: Tensor, inp: &BlockInput, mut cache: Option<&mut KvCache>) -> Result<Tensor> {
        for (i, block) in self.blocks.iter().enumerate() {
            let layer_inp = BlockInput {
                dropout_seed: inp.dropout_seed.map(|s| s ^ ((i as u64 + 1) << 40)),
                lora_seed: inp.lora_seed.map(|s| s ^ ((i as u64 + 1) << 40)),
                ..*inp
            };
            let layer_cache = cache.as_deref_mut().map(|c| {
                let (a, b) = (&mut c.self_attn[i], &mut c.cross_attn[i]);
                (a, b)
            });
            x = block.forward(&x, &layer_inp, layer_cache)?;
            if cache.is_some() {
                // A KV cache means inference (training never passes one): no gradient
                // flows, but outputs of ops on the weights (variables) still record the
                // graph, which kept every layer's activations alive until the pass ended —
                // 2.4 MB per prompt token on SmolLM2-135M's shape, 300 MB for a 128-token
                // prompt. Cut it at each block: a layer's temporaries go with the layer.
                x = x.detach();
            }
        }
        self.final_norm(&x)
    }

    /// Attach LoRA adapters keyed by `{prefix}.{i}.{layer}`; each one used is removed.
    pub(crate) fn set_lora(&mut self, prefix: &str, adapters: &mut std::collections::HashMap<String, crate::linear::LoraAdapter>) {
        for (i, block) in self.blocks.iter_mut().enumerate() {
            for (name, lin) in block.linears_mut() {
                if let Some(a) = adapters.remove(&format!("{prefix}.{i}.{name}")) {
                    lin.set_lora(Some(a));
                }
            }
        }
    }

    /// Detach every LoRA adapter, with its layer's variable prefix under `prefix`.
    pub(crate) fn take_lora(&mut self, prefix: &str) -> Vec<(String, crate::linear::LoraAdapter)> {
        let mut out = Vec::new();
        for (i, block) in self.blocks.iter_mut().enumerate() {
            for (name, lin) in block.linears_mut() {
                if let Some(a) = lin.take_lora() {
                    out.push((format!("{prefix}.{i}.{name}"), a));
                }
            }
        }
        out
    }

    /// Hold the blocks' linear weights quantized as `kind` asks ([`Linear::quantize`]; a
    /// layer that holds quantized weights keeps them); returns the variable prefixes (under
    /// `prefix`) of the layers held quantized, whose f32 variables are no longer read.
    pub(crate) fn quantize_linears(&mut self, prefix: &str, kind: crate::quant::QuantKind) -> Result<Vec<String>> {
        let mut out = Vec::new();
        for (i, block) in self.blocks.iter_mut().enumerate() {
            for (name, lin) in block.linears_mut() {
                if lin.quantize(kind)?.is_some() {
                    out.push(format!("{prefix}.{i}.{name}"));
                }
            }
        }
        Ok(out)
    }

    /// Freeze the blocks' linear weights (see [`Linear::freeze`]).
    pub(crate) fn freeze_linears(&mut self) {
        for block in self.blocks.iter_mut() {
            for (_, lin) in block.linears_mut() {
                lin.freeze();
            }
        }
    }

    /// The stack's final norm (the identity for post-norm blocks).
    pub(crate) fn final_norm(&self, x: &Tensor) -> Result<Tensor> {
        match &self.ln_f {
            Some(ln) => ln.forward(x),
            None => Ok(x.clone()),
        }
    }
}

/// The token embedding: an f32 table, or rows of a table held quantized (a GGUF file's
/// `token_embd` blocks, which a tied LM head multiplies too), dequantized as they are
/// looked up, so the model keeps no f32 copy of the table.
#[derive(Debug, Clone)]
pub struct TokenEmbedding {
    /// A [`crate::linear::placeholder`] when `quant` holds the table.
    table: Embedding,
    quant: Option<std::sync::Arc<crate::quant::QuantWeights>>,
}

impl TokenEmbedding {
    /// The f32 table (a placeholder when the table is held quantized).
    pub fn embeddings(&self) -> &Tensor {
        self.table.embeddings()
    }

    /// Detach the table from its variable (same storage, so a checkpoint load still reaches
    /// it): lookups then give no gradient to the table.
    pub fn freeze(&mut self) {
        let t = self.table.embeddings();
        self.table = Embedding::new(t.detach(), t.dim(1).unwrap_or(0));
    }
}

impl Module for TokenEmbedding {
    fn forward(&self, ids: &Tensor) -> Result<Tensor> {
        let Some(q) = &self.quant else { return self.table.forward(ids) };
        let flat = ids.flatten_all()?.to_dtype(DType::U32)?.to_vec1::<u32>()?;
        let rows = q.gather_rows(&flat).map_err(|e| candle_core::Error::Msg(format!("{e:#}")))?;
        let mut dims = ids.dims().to_vec();
        dims.push(q.cols());
        Tensor::from_vec(rows, dims, ids.device())
    }
}

#[derive(Debug, Clone)]
pub struct Transformer {
    cfg: TransformerConfig,
    wte: TokenEmbedding,
    pos: Positions,
    rope: Option<Rope>,
    decoder: Stack,
    lm_head: Linear,
}

impl Transformer {
    pub fn new(cfg: &TransformerConfig, vb: VarBuilder) -> Result<Self> {
        cfg.validate().map_err(candle_core::Error::Msg)?;
        if !matches!(cfg.kind, crate::config::ModelKind::Causal | crate::config::ModelKind::Prefix) {
            candle_core::bail!(
                "model.kind = {:?} is not a decoder-only model: build it with EncoderDecoder or MaskedLm",
                cfg.kind
            );
        }
        let wte = TokenEmbedding { table: candle_nn::embedding(cfg.vocab_size, cfg.d_model, vb.pp("wte"))?, quant: None };
        let pos = Positions::new(cfg, vb.pp("wpe"))?;
        let rope = rope(cfg, vb.device())?;
        let decoder = Stack::new(cfg, false, vb.pp("decoder"))?;
        let lm_head = if cfg.tie_embeddings {
            Linear::new(wte.embeddings().clone(), None)
        } else {
            Linear::load(cfg.d_model, cfg.vocab_size, false, vb.pp("lm_head"))?
        };
        Ok(Self { cfg: cfg.clone(), wte, pos, rope, decoder, lm_head })
    }

    pub fn config(&self) -> &TransformerConfig {
        &self.cfg
    }

    /// Final hidden states (batch, T, d_model) after the last norm.
    /// `cache`: when given, positions start at `cache.len()` and keys/values are appended.
    /// `dropout_seed`: Some(seed) in training when dropout is configured.
    pub fn hidden(
        &self,
        ids: &Tensor,
        mask: &MaskSpec,
        cache: Option<&mut KvCache>,
        dropout_seed: Option<u64>,
    ) -> Result<Tensor> {
        let (b, t) = ids.dims2()?;
        let offset = cache.as_ref().map(|c| c.len()).unwrap_or(0);
        let x = self.pos.embed(&self.wte, ids, offset)?;
        // Plain causal masks are applied inside the softmax kernel; others become a bias.
        let causal = mask.kind == crate::attention::AttnMask::Causal && mask.q_segments.is_none() && mask.k_segments.is_none();
        let bias = if causal { None } else { mask.bias(b, t, offset + t, offset, ids.device())? };
        let lora_seed = dropout_seed.map(|s| s ^ 0x4c6f_5241);
        let dropout_seed = dropout_seed.filter(|_| self.cfg.dropout > 0.0);
        let x = match dropout_seed {
            Some(s) => ferrolm_kernels::dropout(&x, self.cfg.dropout, s)?,
            None => x,
        };
        let inp = BlockInput { bias: bias.as_ref(), cross_bias: None, offset, rope: self.rope.as_ref(), memory: None, dropout_seed, lora_seed, causal };
        self.decoder.forward(x, &inp, cache)
    }

    /// Project hidden states to vocabulary logits.
    pub fn logits(&self, hidden: &Tensor) -> Result<Tensor> {
        self.lm_head.forward(hidden)
    }

    /// Logits (batch, T, vocab) for token ids (batch, T).
    pub fn forward(&self, ids: &Tensor, mask: &MaskSpec, cache: Option<&mut KvCache>) -> Result<Tensor> {
        self.logits(&self.hidden(ids, mask, cache, None)?)
    }

    /// Logits (batch, 1, vocab) of the last position only — what a prompt pass before
    /// generation needs. The vocabulary projection is a fifth to a third of a small model's
    /// multiply-adds (SmolLM2-135M, Qwen2.5-0.5B); computing it for every prompt position
    /// and keeping one row wasted that share of the prefill (transformers' `generate` and
    /// llama.cpp project only the last position too).
    pub fn forward_last(&self, ids: &Tensor, mask: &MaskSpec, cache: Option<&mut KvCache>) -> Result<Tensor> {
        let h = self.hidden(ids, mask, cache, None)?;
        let t = h.dim(1)?;
        self.logits(&h.narrow(1, t - 1, 1)?.contiguous()?)
    }

    /// Attach LoRA adapters, keyed by layer variable prefix (`decoder.blocks.3.attn.qkv`);
    /// each one used is removed from `adapters`.
    pub fn set_lora(&mut self, adapters: &mut std::collections::HashMap<String, crate::linear::LoraAdapter>) -> Result<()> {
        self.decoder.set_lora("decoder.blocks", adapters);
        Ok(())
    }

    /// The same model with its LoRA adapters switched off: the base, sharing every weight
    /// tensor with `self` (a clone of a candle tensor shares its storage), so no second
    /// copy of the weights is made. PPO's frozen reference is this.
    pub fn without_lora(&self) -> Self {
        let mut m = self.clone();
        m.take_lora();
        m
    }


    /// Hold the blocks' linear weights quantized (the LM head and embedding stay f32):
    /// QLoRA's base. Returns the variable prefixes of the layers held quantized.
    pub fn quantize_blocks(&mut self, kind: crate::quant::QuantKind) -> Result<Vec<String>> {
        self.decoder.quantize_linears("decoder.blocks", kind)
    }

    /// Freeze every linear layer's weights (blocks and LM head; see [`Linear::freeze`]) and
    /// the token embedding: for training LoRA adapters on a base that does not change.
    /// (The embedding too: its gradient, a table-sized scatter of the lookups — and a tied
    /// head's product — is never used under LoRA; on Qwen2.5-0.5B's 151,936 × 896 table it
    /// was a 545 MB buffer per step.)
    pub fn freeze_linears(&mut self) {
        self.decoder.freeze_linears();
        self.lm_head.freeze();
        self.wte.freeze();
    }

    /// Quantize the weights of every linear layer (blocks and LM head; the token embedding
    /// stays f32) as `kind` asks, for CPU decoding: see [`Linear::quantize`].
    pub fn quantize(&mut self, kind: crate::quant::QuantKind) -> Result<crate::quant::QuantSummary> {
        let mut summary = crate::quant::QuantSummary::default();
        for block in self.decoder.blocks.iter_mut() {
            for (_, lin) in block.linears_mut() {
                summary.add(lin.quantize(kind)?);
            }
        }
        summary.add(self.lm_head.quantize(kind)?);
        Ok(summary)
    }

    /// Give the token embedding (`wte`) and each linear layer the quantized weights `source`
    /// returns for its variable prefix (`wte`, `decoder.blocks.3.attn.qkv`, `lm_head`), if
    /// any: the same values as a quantized GGUF file stores them, held from now on instead
    /// of f32 ones. A tied LM head takes the embedding's blocks (`lm_head` is then not
    /// asked for). Returns how many layers got some.
    pub fn set_quantized(&mut self, mut source: impl FnMut(&str) -> anyhow::Result<Option<crate::quant::QuantWeights>>) -> anyhow::Result<usize> {
        let mut n = 0;
        let mut head_done = false;
        if let Some(q) = source("wte")? {
            let (rows, cols) = self.wte.embeddings().dims2()?;
            anyhow::ensure!((q.rows(), q.cols()) == (rows, cols), "quantized embedding of {}×{} for a table of {rows}×{cols}", q.rows(), q.cols());
            let q = std::sync::Arc::new(q);
            let table = crate::linear::placeholder(&[rows, cols], self.device())?;
            self.wte = TokenEmbedding { table: Embedding::new(table, cols), quant: Some(q.clone()) };
            n += 1;
            if self.cfg.tie_embeddings {
                self.lm_head.set_quant(q)?;
                n += 1;
                head_done = true;
            }
        }
        for (i, block) in self.decoder.blocks.iter_mut().enumerate() {
            for (name, lin) in block.linears_mut() {
                if let Some(q) = source(&format!("decoder.blocks.{i}.{name}"))? {
                    lin.set_quant(q)?;
                    n += 1;
                }
            }
        }
        if !head_done {
            if let Some(q) = source("lm_head")? {
                self.lm_head.set_quant(q)?;
                n += 1;
            }
        }
        Ok(n)
    }

    /// Detach every LoRA adapter, with its layer's variable prefix.
    pub fn take_lora(&mut self) -> Vec<(String, crate::linear::LoraAdapter)> {
        self.decoder.take_lora("decoder.blocks")
    }

    pub fn new_cache(&self) -> KvCache {
        KvCache::new(self.cfg.n_layers)
    }

    pub fn device(&self) -> &Device {
        self.wte.embeddings().device()
    }

    pub fn dtype(&self) -> DType {
        self.wte.embeddings().dtype()
    }
}
