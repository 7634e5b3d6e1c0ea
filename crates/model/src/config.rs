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

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TransformerConfig {
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
}

impl Default for TransformerConfig {
    fn default() -> Self {
        Self {
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
        }
    }
}

impl TransformerConfig {
    pub fn head_dim(&self) -> usize {
        self.d_model / self.n_heads
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
        if self.d_model % self.n_heads != 0 {
            return fail(format!(
                "model.d_model ({}) must be divisible by model.n_heads ({})",
                self.d_model, self.n_heads
            ));
        }
        if self.n_kv_heads == 0 || self.n_heads % self.n_kv_heads != 0 {
            return fail(format!(
                "model.n_heads ({}) must be a multiple of model.n_kv_heads ({})",
                self.n_heads, self.n_kv_heads
            ));
        }
        if self.block == BlockStyle::Gpt2 && self.n_kv_heads != self.n_heads {
            return fail("grouped-query attention (n_kv_heads < n_heads) needs block = \"modern\"".into());
        }
        if self.block == BlockStyle::Modern && self.head_dim() % 2 != 0 {
            return fail(format!("RoPE needs an even head dimension, got {}", self.head_dim()));
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
        let kv = self.n_kv_heads * self.head_dim();
        let f = self.ff_dim();
        let bias = self.block == BlockStyle::Gpt2;
        let norm = if bias { 2 * d } else { d };
        let attn = d * (d + 2 * kv) + d * d + if bias { d + 2 * kv + d } else { 0 };
        let mlp = match self.block {
            BlockStyle::Gpt2 => 2 * d * f + f + d,
            BlockStyle::Modern => 3 * d * f,
        };
        let per_layer = attn + mlp + 2 * norm;
        let emb = self.vocab_size * d;
        let pos = if self.block == BlockStyle::Gpt2 { self.max_seq_len * d } else { 0 };
        let head = if self.tie_embeddings { 0 } else { self.vocab_size * d };
        emb + pos + self.n_layers * per_layer + norm + head
    }
}
