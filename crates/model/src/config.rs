//! Model hyper-parameters, serialised into every run's `config.toml` and checkpoint.

use serde::{Deserialize, Serialize};

/// Which family of block to build. `Gpt2` is the classic (LayerNorm, learned absolute
/// positions, GELU, biases) and exactly comparable with nanoGPT; `Modern` is the
/// Llama-style block (RMSNorm, RoPE, SwiGLU, grouped-query attention, no biases).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BlockStyle {
    Gpt2,
    Modern,
}

/// Which Transformer shape to build on the shared core.
/// `Causal`: GPT decoder. `Prefix`: the same decoder with a bidirectional prefix (loss on
/// the targets only). `EncoderDecoder`: T5-style bidirectional encoder + causal decoder with
/// cross-attention, one shared token embedding. `MaskedLm`: BERT-style bidirectional encoder
/// with an MLM head, an optional NSP head and a pooled sentence vector.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ModelKind {
    #[default]
    Causal,
    Prefix,
    EncoderDecoder,
    MaskedLm,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TransformerConfig {
    /// Model family; absent in older configs, which are causal decoders.
    pub kind: ModelKind,
    /// Encoder-decoder only: encoder layers (0 = `n_layers`). `n_layers` is the decoder depth.
    pub n_encoder_layers: usize,
    /// Masked LM only: build the next-sentence-prediction head and the two segment
    /// embeddings a sentence pair needs.
    pub nsp_head: bool,
    pub vocab_size: usize,
    pub d_model: usize,
    pub n_layers: usize,
    pub n_heads: usize,
    /// Key/value heads for grouped-query attention; equal to `n_heads` for plain
    /// multi-head attention, 1 for multi-query.
    pub n_kv_heads: usize,
    /// Hidden width of the MLP; 0 means the style's default (4·d for GELU, ~8/3·d rounded
    /// to a multiple of 64 for SwiGLU, which keeps the parameter count comparable).
    pub d_ff: usize,
    pub max_seq_len: usize,
    pub block: BlockStyle,
    pub tie_embeddings: bool,
    pub dropout: f32,
    pub norm_eps: f64,
    pub rope_theta: f64,
    /// Width of one attention head; 0 = `d_model / n_heads`. Checkpoints such as Qwen3's
    /// use heads whose total width (`n_heads · head_size`) differs from `d_model`.
    #[serde(skip_serializing_if = "is_zero")]
    pub head_size: usize,
    /// Biases on the q/k/v projections; absent = the block style's default (GPT-2: yes,
    /// modern: no). Qwen2 sets it on a modern block.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub qkv_bias: Option<bool>,
    /// Bias on the attention output projection; absent = the block style's default.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub attn_out_bias: Option<bool>,
    /// RMSNorm of each query and key head (over `head_size`, before RoPE), as in Qwen3.
    #[serde(skip_serializing_if = "is_false")]
    pub qk_norm: bool,
    /// RoPE frequency scaling for long contexts (Llama 3.1's `rope_scaling`); absent = none.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rope_scaling: Option<RopeScaling>,
    /// Post-norm blocks, BERT's order: `x = norm(x + attn(x))`, then `x = norm(x + mlp(x))`,
    /// with a norm on the embeddings (`ln_emb`) and no final norm. Masked LMs only.
    #[serde(skip_serializing_if = "is_false")]
    pub post_norm: bool,
    /// GELU computed with erf (BERT's `hidden_act = "gelu"`) instead of the tanh
    /// approximation, in the MLP and the MLM head. GPT-2 blocks only.
    #[serde(skip_serializing_if = "is_false")]
    pub exact_gelu: bool,
    /// Masked LM only: rows of the segment ("token type") embedding added to every input
    /// (row 0 for a single text); 0 = none, or 2 with the next-sentence head.
    #[serde(skip_serializing_if = "is_zero")]
    pub type_vocab_size: usize,
    /// Masked LM only: whether the model has its MLM head (a checkpoint of the bare encoder,
    /// such as transformers' `BertModel`, has none).
    #[serde(skip_serializing_if = "is_true")]
    pub mlm_head: bool,
    /// Masked LM only: whether the model has its pooler (transformers' `BertForMaskedLM`
    /// saves none).
    #[serde(skip_serializing_if = "is_true")]
    pub pooler: bool,
}

fn is_zero(n: &usize) -> bool {
    *n == 0
}

fn is_false(b: &bool) -> bool {
    !*b
}

fn is_true(b: &bool) -> bool {
    *b
}

/// RoPE frequency scaling. `Llama3` is Llama 3.1's rule: wavelengths shorter than
/// `original_max_position_embeddings / high_freq_factor` keep their frequency, those longer
/// than `original_max_position_embeddings / low_freq_factor` are slowed by `factor`, and
/// the band between is interpolated smoothly.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum RopeScaling {
    Llama3 { factor: f64, low_freq_factor: f64, high_freq_factor: f64, original_max_position_embeddings: usize },
}

impl RopeScaling {
    /// Rescale the inverse frequencies of RoPE (one per pair of dimensions).
    pub fn apply(&self, inv_freq: &mut [f64]) {
        match *self {
            RopeScaling::Llama3 { factor, low_freq_factor, high_freq_factor, original_max_position_embeddings } => {
                let old = original_max_position_embeddings as f64;
                let (low_wavelen, high_wavelen) = (old / low_freq_factor, old / high_freq_factor);
                for f in inv_freq.iter_mut() {
                    let wavelen = 2.0 * std::f64::consts::PI / *f;
                    if wavelen > low_wavelen {
                        *f /= factor;
                    } else if wavelen >= high_wavelen {
                        let smooth = (old / wavelen - low_freq_factor) / (high_freq_factor - low_freq_factor);
                        *f = (1.0 - smooth) * *f / factor + smooth * *f;
                    }
                }
            }
        }
    }

    fn validate(&self) -> Result<(), String> {
        match *self {
            RopeScaling::Llama3 { factor, low_freq_factor, high_freq_factor, original_max_position_embeddings } => {
                if !(factor > 0.0 && low_freq_factor > 0.0 && high_freq_factor > low_freq_factor && original_max_position_embeddings > 0) {
                    return Err(format!(
                        "model.rope_scaling (llama3) needs factor > 0, 0 < low_freq_factor < high_freq_factor and original_max_position_embeddings > 0; got {self:?}"
                    ));
                }
                Ok(())
            }
        }
    }
}

impl Default for TransformerConfig {
    fn default() -> Self {
        Self {
            kind: ModelKind::Causal,
            n_encoder_layers: 0,
            nsp_head: false,
            vocab_size: 8192,
            d_model: 256,
            n_layers: 4,
            n_heads: 4,
            n_kv_heads: 4,
            d_ff: 0,
            max_seq_len: 256,
            block: BlockStyle::Modern,
            tie_embeddings: true,
            dropout: 0.0,
            norm_eps: 1e-5,
            rope_theta: 10_000.0,
            head_size: 0,
            qkv_bias: None,
            attn_out_bias: None,
            qk_norm: false,
            rope_scaling: None,
            post_norm: false,
            exact_gelu: false,
            type_vocab_size: 0,
            mlm_head: true,
            pooler: true,
        }
    }
}

impl TransformerConfig {
    pub fn head_dim(&self) -> usize {
        if self.head_size > 0 {
            self.head_size
        } else {
            self.d_model / self.n_heads
        }
    }

    /// Width of all query heads together (= `d_model` unless `head_size` says otherwise).
    pub fn q_width(&self) -> usize {
        self.n_heads * self.head_dim()
    }

    /// Width of all key (or value) heads together.
    pub fn kv_width(&self) -> usize {
        self.n_kv_heads * self.head_dim()
    }

    pub fn has_qkv_bias(&self) -> bool {
        self.qkv_bias.unwrap_or(self.block == BlockStyle::Gpt2)
    }

    pub fn has_attn_out_bias(&self) -> bool {
        self.attn_out_bias.unwrap_or(self.block == BlockStyle::Gpt2)
    }

    /// Rows of the masked LM's segment embedding: `type_vocab_size`, else 2 with the
    /// next-sentence head, else 0 (no segment embedding).
    pub fn token_types(&self) -> usize {
        if self.type_vocab_size > 0 {
            self.type_vocab_size
        } else if self.nsp_head {
            2
        } else {
            0
        }
    }

    pub fn encoder_layers(&self) -> usize {
        if self.n_encoder_layers > 0 {
            self.n_encoder_layers
        } else {
            self.n_layers
        }
    }

    pub fn ff_dim(&self) -> usize {
        if self.d_ff > 0 {
            return self.d_ff;
        }
        match self.block {
            BlockStyle::Gpt2 => 4 * self.d_model,
            BlockStyle::Modern => (8 * self.d_model / 3).div_ceil(64) * 64,
        }
    }

    /// Check the shape constraints up front so a bad config fails with a sentence, not a
    /// shape-mismatch panic deep inside a matmul.
    pub fn validate(&self) -> Result<(), String> {
        let fail = |m: String| Err(m);
        if self.vocab_size == 0 || self.d_model == 0 || self.n_layers == 0 || self.n_heads == 0 {
            return fail("model.vocab_size, d_model, n_layers and n_heads must be positive".into());
        }
        if self.head_size == 0 && !self.d_model.is_multiple_of(self.n_heads) {
            return fail(format!(
                "model.d_model ({}) must be divisible by model.n_heads ({})",
                self.d_model, self.n_heads
            ));
        }
        if self.n_kv_heads == 0 || !self.n_heads.is_multiple_of(self.n_kv_heads) {
            return fail(format!(
                "model.n_heads ({}) must be a multiple of model.n_kv_heads ({})",
                self.n_heads, self.n_kv_heads
            ));
        }
        if self.block == BlockStyle::Gpt2 && self.n_kv_heads != self.n_heads {
            return fail("grouped-query attention (n_kv_heads < n_heads) needs block = \"modern\"".into());
        }
        if self.block == BlockStyle::Modern && !self.head_dim().is_multiple_of(2) {
            return fail(format!("RoPE needs an even head dimension, got {}", self.head_dim()));
        }
        if let Some(r) = &self.rope_scaling {
            if self.block != BlockStyle::Modern {
                return fail("model.rope_scaling needs block = \"modern\" (GPT-2 blocks have no RoPE)".into());
            }
            r.validate()?;
        }
        if self.post_norm && self.kind != ModelKind::MaskedLm {
            return fail(format!("model.post_norm needs model.kind = \"masked_lm\" (decoding paths assume pre-norm blocks), got {:?}", self.kind));
        }
        if self.exact_gelu && self.block != BlockStyle::Gpt2 {
            return fail("model.exact_gelu needs block = \"gpt2\" (the modern block's MLP is SwiGLU)".into());
        }
        if self.kind != ModelKind::MaskedLm && (self.type_vocab_size > 0 || !self.mlm_head || !self.pooler) {
            return fail("model.type_vocab_size, mlm_head and pooler are options of model.kind = \"masked_lm\"".into());
        }
        if self.nsp_head && self.token_types() < 2 {
            return fail(format!("model.nsp_head needs two segment embeddings, model.type_vocab_size is {}", self.type_vocab_size));
        }
        if self.nsp_head && !self.pooler {
            return fail("model.nsp_head needs the pooler (model.pooler = true)".into());
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return fail(format!("model.dropout must be in [0, 1), got {}", self.dropout));
        }
        if self.max_seq_len == 0 {
            return fail("model.max_seq_len must be positive".into());
        }
        Ok(())
    }

    /// Parameter count, computed from the config (matches the built model; a test checks).
    pub fn num_params(&self) -> usize {
        let d = self.d_model;
        let (q, kv) = (self.q_width(), self.kv_width());
        let f = self.ff_dim();
        let bias = self.block == BlockStyle::Gpt2;
        let norm = if bias { 2 * d } else { d };
        let qkv_bias = if self.has_qkv_bias() { q + 2 * kv } else { 0 };
        let out_bias = if self.has_attn_out_bias() { d } else { 0 };
        let qk_norm = if self.qk_norm { 2 * self.head_dim() } else { 0 };
        let attn = d * (q + 2 * kv) + q * d + qkv_bias + out_bias + qk_norm;
        // cross-attention: q (d→q), kv (d→2kv), proj (q→d), plus its norm
        let cross = d * q + d * 2 * kv + q * d + qkv_bias + out_bias + qk_norm + norm;
        let mlp = match self.block {
            BlockStyle::Gpt2 => 2 * d * f + f + d,
            BlockStyle::Modern => 3 * d * f,
        };
        let per_layer = attn + mlp + 2 * norm;
        let emb = self.vocab_size * d;
        let pos = if self.block == BlockStyle::Gpt2 { self.max_seq_len * d } else { 0 };
        let head = if self.tie_embeddings { 0 } else { self.vocab_size * d };
        match self.kind {
            ModelKind::Causal | ModelKind::Prefix => emb + pos + self.n_layers * per_layer + norm + head,
            ModelKind::EncoderDecoder => {
                // two position tables (encoder and decoder positions are separate sequences)
                emb + 2 * pos
                    + self.encoder_layers() * per_layer
                    + norm
                    + self.n_layers * (per_layer + cross)
                    + norm
                    + head
            }
            ModelKind::MaskedLm => {
                // MLM head: transform (d→d with bias) + norm + output bias; pooler d→d with bias;
                // NSP: d→2 with bias; the segment embeddings. Post-norm blocks trade the
                // final norm for one on the embeddings: the same count.
                let (mlm, head) = if self.mlm_head { (d * d + d + norm + self.vocab_size, head) } else { (0, 0) };
                let pooler = if self.pooler { d * d + d } else { 0 };
                let nsp = if self.nsp_head { 2 * d + 2 } else { 0 };
                let segments = self.token_types() * d;
                emb + pos + self.n_layers * per_layer + norm + head + mlm + pooler + nsp + segments
            }
        }
    }
}
