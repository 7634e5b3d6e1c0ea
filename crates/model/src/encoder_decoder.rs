//! T5-style encoder-decoder on the shared core: a bidirectional encoder stack, a causal
//! decoder stack whose blocks cross-attend to the encoder output, one token embedding
//! shared by encoder, decoder and (when tied) the LM head.
//!
//! Generation encodes the source once (`encode`), then decodes with a `KvCache`: the
//! decoder's self-attention keys grow by one position per step, the cross-attention keys
//! are projected from the encoder output on the first call and reused after.

use candle_core::{DType, Device, Module, Result, Tensor};
use candle_nn::{Embedding, VarBuilder};

use crate::linear::Linear;

use crate::attention::{KvCache, MaskSpec, Rope};
use crate::block::BlockInput;
use crate::config::TransformerConfig;
use crate::embed::{rope, Positions};
use crate::transformer::Stack;

#[derive(Debug, Clone)]
pub struct EncoderDecoder {
    cfg: TransformerConfig,
    wte: Embedding,
    enc_pos: Positions,
    dec_pos: Positions,
    rope: Option<Rope>,
    encoder: Stack,
    decoder: Stack,
    lm_head: Linear,
}

impl EncoderDecoder {
    pub fn new(cfg: &TransformerConfig, vb: VarBuilder) -> Result<Self> {
        cfg.validate().map_err(candle_core::Error::Msg)?;
        let wte = candle_nn::embedding(cfg.vocab_size, cfg.d_model, vb.pp("wte"))?;
        let enc_cfg = TransformerConfig { n_layers: cfg.encoder_layers(), ..cfg.clone() };
        let encoder = Stack::new(&enc_cfg, false, vb.pp("encoder"))?;
        let decoder = Stack::new(cfg, true, vb.pp("decoder"))?;
        let lm_head = if cfg.tie_embeddings {
            Linear::new(wte.embeddings().clone(), None)
        } else {
            Linear::load(cfg.d_model, cfg.vocab_size, false, vb.pp("lm_head"))?
        };
        Ok(Self {
            cfg: cfg.clone(),
            enc_pos: Positions::new(cfg, vb.pp("wpe_enc"))?,
            dec_pos: Positions::new(cfg, vb.pp("wpe_dec"))?,
            rope: rope(cfg, vb.device())?,
            wte,
            encoder,
            decoder,
            lm_head,
        })
    }

    pub fn config(&self) -> &TransformerConfig {
        &self.cfg
    }

    /// Encoder output (batch, S, d_model). `mask` is normally `MaskSpec::bidirectional()`,
    /// with segment ids when the source is padded (`PAD_SEGMENT` keys are never attended).
    pub fn encode(&self, src: &Tensor, mask: &MaskSpec, dropout_seed: Option<u64>) -> Result<Tensor> {
        let (b, s) = src.dims2()?;
        let dropout_seed = dropout_seed.filter(|_| self.cfg.dropout > 0.0);
        let x = self.enc_pos.embed(&self.wte, src, 0)?;
        let x = match dropout_seed {
            Some(seed) => ferrolm_kernels::dropout(&x, self.cfg.dropout, seed ^ 0xe1c0)?,
            None => x,
        };
        let bias = mask.bias(b, s, s, 0, src.device())?;
        let inp = BlockInput {
            bias: bias.as_ref(),
            cross_bias: None,
            offset: 0,
            rope: self.rope.as_ref(),
            memory: None,
            dropout_seed: dropout_seed.map(|s| s ^ 0x00e1_c0de),
            lora_seed: None,
            causal: false,
        };
        self.encoder.forward(x, &inp, None)
    }

    /// The cross-attention mask for a source with optional segment ids (row-major,
    /// batch × S): every decoder position sees every real encoder position, never padding.
    pub fn cross_mask(src_segments: Option<Vec<u32>>) -> MaskSpec {
        MaskSpec { k_segments: src_segments, ..MaskSpec::bidirectional() }
    }

    /// Decoder hidden states (batch, T, d_model) for target-side ids given the encoder
    /// output. `self_mask` is causal (with segments for padded targets); `cross_mask` from
    /// [`Self::cross_mask`]. With a cache, positions start at `cache.len()`.
    pub fn decode_hidden(
        &self,
        tgt: &Tensor,
        memory: &Tensor,
        self_mask: &MaskSpec,
        cross_mask: &MaskSpec,
        cache: Option<&mut KvCache>,
        dropout_seed: Option<u64>,
    ) -> Result<Tensor> {
        let (b, t) = tgt.dims2()?;
        let s = memory.dim(1)?;
        let offset = cache.as_ref().map(|c| c.len()).unwrap_or(0);
        let dropout_seed = dropout_seed.filter(|_| self.cfg.dropout > 0.0);
        let x = self.dec_pos.embed(&self.wte, tgt, offset)?;
        let x = match dropout_seed {
            Some(seed) => ferrolm_kernels::dropout(&x, self.cfg.dropout, seed ^ 0xdec0)?,
            None => x,
        };
        let bias = self_mask.bias(b, t, offset + t, offset, tgt.device())?;
        let cross_bias = cross_mask.bias(b, t, s, offset, tgt.device())?;
        let inp = BlockInput {
            bias: bias.as_ref(),
            cross_bias: cross_bias.as_ref(),
            offset,
            rope: self.rope.as_ref(),
            memory: Some(memory),
            dropout_seed,
            lora_seed: None,
            causal: false,
        };
        self.decoder.forward(x, &inp, cache)
    }

    pub fn logits(&self, hidden: &Tensor) -> Result<Tensor> {
        self.lm_head.forward(hidden)
    }

    /// Teacher-forced logits (batch, T, vocab): encode `src`, decode `tgt_in` causally.
    pub fn forward(&self, src: &Tensor, tgt_in: &Tensor) -> Result<Tensor> {
        let memory = self.encode(src, &MaskSpec::bidirectional(), None)?;
        let h = self.decode_hidden(tgt_in, &memory, &MaskSpec::causal(), &Self::cross_mask(None), None, None)?;
        self.logits(&h)
    }

    /// A decoder cache; its cross-attention half is filled from the encoder output on the
    /// first `decode_hidden` call.
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
