//! `config.json` of a Hugging Face checkpoint → the [`TransformerConfig`] of the same model.
//!
//! Each family is the existing Transformer core with the options it needs: the Llama
//! family (Llama, Mistral, Qwen2, Qwen3) is the modern block (RMSNorm, RoPE, SwiGLU, GQA)
//! plus `qkv_bias` (Qwen2), `qk_norm` and an explicit `head_size` (Qwen3) and
//! `rope_scaling` (Llama 3.1); GPT-2 is the GPT-2 block; BERT is the masked LM on GPT-2-style
//! blocks (LayerNorm, learned absolute positions, biases) with `post_norm`, `exact_gelu`
//! (for `hidden_act = "gelu"`) and `type_vocab_size` segment embeddings, its heads (MLM,
//! pooler, next-sentence) as the checkpoint's tensors say. Anything the core cannot reproduce
//! exactly (another activation, another RoPE scaling, MLP biases) is an error naming the key,
//! never an approximately-right model.

use std::path::Path;

use anyhow::{bail, Context, Result};
use serde_json::Value;

use crate::config::{BlockStyle, ModelKind, RopeScaling, TransformerConfig};

/// The checkpoint families ferrolm reads (`model_type` in config.json).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HfFamily {
    Llama,
    Mistral,
    Qwen2,
    Qwen3,
    Gpt2,
    Bert,
    /// DistilBERT: BERT's post-norm encoder under other names, without token types or pooler.
    DistilBert,
    /// RoBERTa: BERT's encoder with positions counted from `pad_token_id + 1`.
    Roberta,
}

impl HfFamily {
    pub const ALL: [HfFamily; 8] =
        [HfFamily::Llama, HfFamily::Mistral, HfFamily::Qwen2, HfFamily::Qwen3, HfFamily::Gpt2, HfFamily::Bert, HfFamily::DistilBert, HfFamily::Roberta];

    pub fn model_type(self) -> &'static str {
        match self {
            HfFamily::Llama => "llama",
            HfFamily::Mistral => "mistral",
            HfFamily::Qwen2 => "qwen2",
            HfFamily::Qwen3 => "qwen3",
            HfFamily::Gpt2 => "gpt2",
            HfFamily::Bert => "bert",
            HfFamily::DistilBert => "distilbert",
            HfFamily::Roberta => "roberta",
        }
    }

    /// BERT and DistilBERT: masked LMs on the post-norm core.
    pub fn is_bert_like(self) -> bool {
        matches!(self, HfFamily::Bert | HfFamily::DistilBert | HfFamily::Roberta)
    }

    pub fn from_model_type(t: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|f| f.model_type() == t)
    }
}

/// A parsed config.json.
#[derive(Debug, Clone)]
pub struct HfConfig {
    pub family: HfFamily,
    pub model: TransformerConfig,
    /// `eos_token_id` of config.json (generation_config.json may override it).
    pub eos_token_ids: Vec<u32>,
    pub bos_token_id: Option<u32>,
    /// Rows of the checkpoint's position table before the one a text's first token uses
    /// (RoBERTa: `pad_token_id + 1`; 0 for the rest); dropped at load.
    pub position_offset: usize,
}

/// Reads typed keys of one config.json, naming the file and key in every error.
struct Keys<'a> {
    json: &'a Value,
    path: &'a Path,
}

impl Keys<'_> {
    fn get(&self, key: &str) -> Option<&Value> {
        self.json.get(key).filter(|v| !v.is_null())
    }

    fn usize(&self, key: &str) -> Result<usize> {
        let v = self.get(key).with_context(|| format!("{}: the key `{key}` is missing", self.path.display()))?;
        self.as_usize(key, v)
    }

    fn as_usize(&self, key: &str, v: &Value) -> Result<usize> {
        match v.as_u64() {
            Some(n) if n > 0 && n <= u32::MAX as u64 => Ok(n as usize),
            _ => bail!("{}: `{key}` must be a positive integer, got {v}", self.path.display()),
        }
    }

    fn usize_or(&self, key: &str, default: usize) -> Result<usize> {
        match self.get(key) {
            Some(v) => self.as_usize(key, v),
            None => Ok(default),
        }
    }

    fn f64_or(&self, key: &str, default: f64) -> Result<f64> {
        match self.get(key) {
            Some(v) => v.as_f64().filter(|x| x.is_finite()).with_context(|| format!("{}: `{key}` must be a number, got {v}", self.path.display())),
            None => Ok(default),
        }
    }

    fn bool_or(&self, key: &str, default: bool) -> Result<bool> {
        match self.get(key) {
            Some(v) => v.as_bool().with_context(|| format!("{}: `{key}` must be true or false, got {v}", self.path.display())),
            None => Ok(default),
        }
    }

    fn str_or<'b>(&'b self, key: &str, default: &'b str) -> Result<&'b str> {
        match self.get(key) {
            Some(v) => v.as_str().with_context(|| format!("{}: `{key}` must be a string, got {v}", self.path.display())),
            None => Ok(default),
        }
    }

    /// A token id or a list of them (`eos_token_id` is either).
    fn ids(&self, key: &str) -> Result<Vec<u32>> {
        let bad = |v: &Value| anyhow::anyhow!("{}: `{key}` must be a token id or a list of ids, got {v}", self.path.display());
        match self.get(key) {
            None => Ok(vec![]),
            Some(Value::Array(a)) => a.iter().map(|x| x.as_u64().filter(|&n| n <= u32::MAX as u64).map(|n| n as u32).ok_or_else(|| bad(x))).collect(),
            Some(v) => v.as_u64().filter(|&n| n <= u32::MAX as u64).map(|n| vec![n as u32]).ok_or_else(|| bad(v)),
        }
    }
}

/// Parse the text of a config.json (`path` is for messages).
pub fn parse_config(text: &str, path: &Path) -> Result<HfConfig> {
    let json: Value = serde_json::from_str(text).with_context(|| format!("{} is not valid JSON", path.display()))?;
    if !json.is_object() {
        bail!("{}: expected a JSON object", path.display());
    }
    let k = Keys { json: &json, path };
    let model_type = k.get("model_type").and_then(Value::as_str).with_context(|| format!("{}: the key `model_type` is missing", path.display()))?;
    let family = HfFamily::from_model_type(model_type).with_context(|| {
        let known: Vec<_> = HfFamily::ALL.iter().map(|f| f.model_type()).collect();
        format!("{}: model_type \"{model_type}\" is not supported (ferrolm reads {})", path.display(), known.join(", "))
    })?;
    let model = match family {
        HfFamily::Gpt2 => gpt2(&k)?,
        HfFamily::Bert => bert(&k)?,
        HfFamily::DistilBert => distilbert(&k)?,
        HfFamily::Roberta => roberta(&k)?,
        HfFamily::Llama | HfFamily::Mistral | HfFamily::Qwen2 | HfFamily::Qwen3 => llama_like(&k, family)?,
    };
    let model = normalised(model);
    model.validate().map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    let bos = k.ids("bos_token_id")?.first().copied();
    let position_offset = if family == HfFamily::Roberta { roberta_position_offset(k.get("pad_token_id").and_then(Value::as_u64)) } else { 0 };
    Ok(HfConfig { family, model, eos_token_ids: k.ids("eos_token_id")?, bos_token_id: bos, position_offset })
}

/// Read `dir/config.json`. For BERT, which heads the model has (MLM, pooler,
/// next-sentence) is read from the names of the checkpoint's tensors (config.json does not
/// say: transformers saves `BertForMaskedLM` without a pooler, `BertModel` without heads).
pub fn read_config(dir: &Path) -> Result<HfConfig> {
    let path = dir.join("config.json");
    let text = std::fs::read_to_string(&path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut cfg = parse_config(&text, &path)?;
    if cfg.family.is_bert_like() {
        let names = super::weights::tensor_names(dir)?;
        let (mlm, pooler, nsp) = super::weights::bert_heads(cfg.family, &names);
        cfg.model.mlm_head = mlm;
        cfg.model.pooler = pooler;
        cfg.model.nsp_head = nsp;
        cfg.model.validate().map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    }
    Ok(cfg)
}

/// Options equal to the block style's defaults are stored as the defaults, so a checkpoint
/// ferrolm exported reads back as the config it was trained with.
fn normalised(mut c: TransformerConfig) -> TransformerConfig {
    let plain = TransformerConfig { d_ff: 0, qkv_bias: None, attn_out_bias: None, ..c.clone() };
    if c.d_ff == plain.ff_dim() {
        c.d_ff = 0;
    }
    if c.qkv_bias == Some(plain.has_qkv_bias()) {
        c.qkv_bias = None;
    }
    if c.attn_out_bias == Some(plain.has_attn_out_bias()) {
        c.attn_out_bias = None;
    }
    c
}

fn gpt2(k: &Keys) -> Result<TransformerConfig> {
    let d = k.usize("n_embd")?;
    let act = k.str_or("activation_function", "gelu_new")?;
    // GPT-2's "gelu_new" is the tanh approximation, which is the core's GELU.
    if !matches!(act, "gelu_new" | "gelu_pytorch_tanh") {
        bail!("{}: activation_function \"{act}\" is not supported (the GPT-2 block uses GELU's tanh approximation, \"gelu_new\")", k.path.display());
    }
    if !k.bool_or("scale_attn_weights", true)? || k.bool_or("scale_attn_by_inverse_layer_idx", false)? {
        bail!("{}: only GPT-2's standard attention scaling (scale_attn_weights = true, scale_attn_by_inverse_layer_idx = false) is supported", k.path.display());
    }
    let heads = k.usize("n_head")?;
    Ok(TransformerConfig {
        kind: ModelKind::Causal,
        vocab_size: k.usize("vocab_size")?,
        d_model: d,
        n_layers: k.usize("n_layer")?,
        n_heads: heads,
        n_kv_heads: heads,
        d_ff: k.usize_or("n_inner", 4 * d)?,
        max_seq_len: k.usize("n_positions")?,
        block: BlockStyle::Gpt2,
        tie_embeddings: k.bool_or("tie_word_embeddings", true)?,
        dropout: 0.0,
        norm_eps: k.f64_or("layer_norm_epsilon", 1e-5)?,
        ..TransformerConfig::default()
    })
}

fn bert(k: &Keys) -> Result<TransformerConfig> {
    let path = k.path.display();
    let act = k.str_or("hidden_act", "gelu")?;
    let exact_gelu = match act {
        "gelu" => true,
        "gelu_new" | "gelu_pytorch_tanh" => false,
        other => bail!("{path}: hidden_act \"{other}\" is not supported (BERT's blocks take \"gelu\" (erf) or its tanh approximation, \"gelu_new\")"),
    };
    let pos = k.str_or("position_embedding_type", "absolute")?;
    if pos != "absolute" {
        bail!("{path}: position_embedding_type \"{pos}\" is not supported (ferrolm reads BERT with learned absolute positions, \"absolute\")");
    }
    if k.bool_or("is_decoder", false)? || k.bool_or("add_cross_attention", false)? {
        bail!("{path}: is_decoder / add_cross_attention = true is not supported (ferrolm reads BERT as a bidirectional encoder)");
    }
    let types = match k.get("type_vocab_size") {
        Some(v) => v.as_u64().filter(|&n| n <= 1 << 20).with_context(|| format!("{path}: `type_vocab_size` must be a non-negative integer, got {v}"))? as usize,
        None => 2,
    };
    let keys = EncoderKeys { d_model: "hidden_size", n_layers: "num_hidden_layers", n_heads: "num_attention_heads", d_ff: "intermediate_size" };
    post_norm_encoder(k, &keys, exact_gelu, k.f64_or("layer_norm_eps", 1e-12)?, types)
}

/// What BERT-family configs call their sizes (DistilBERT names them differently).
struct EncoderKeys {
    d_model: &'static str,
    n_layers: &'static str,
    n_heads: &'static str,
    d_ff: &'static str,
}

/// The masked-LM core of the BERT family: post-norm GPT-2-style blocks, learned positions.
fn post_norm_encoder(k: &Keys, keys: &EncoderKeys, exact_gelu: bool, norm_eps: f64, type_vocab_size: usize) -> Result<TransformerConfig> {
    let d = k.usize(keys.d_model)?;
    let heads = k.usize(keys.n_heads)?;
    if !d.is_multiple_of(heads) {
        bail!("{}: {} ({d}) must be divisible by {} ({heads})", k.path.display(), keys.d_model, keys.n_heads);
    }
    Ok(TransformerConfig {
        kind: ModelKind::MaskedLm,
        vocab_size: k.usize("vocab_size")?,
        d_model: d,
        n_layers: k.usize(keys.n_layers)?,
        n_heads: heads,
        n_kv_heads: heads,
        d_ff: k.usize(keys.d_ff)?,
        max_seq_len: k.usize_or("max_position_embeddings", 512)?,
        block: BlockStyle::Gpt2,
        tie_embeddings: k.bool_or("tie_word_embeddings", true)?,
        dropout: 0.0,
        norm_eps,
        post_norm: true,
        exact_gelu,
        type_vocab_size,
        ..TransformerConfig::default()
    })
}

/// The first row of RoBERTa's position table that a text's first token uses: its
/// position ids count from `pad_token_id + 1` (rows 0..=pad are never used by real tokens).
fn roberta_position_offset(pad_token_id: Option<u64>) -> usize {
    pad_token_id.unwrap_or(1) as usize + 1
}

/// RoBERTa's config.json: BERT's keys; the position table has `pad_token_id + 1` rows more
/// than the longest text (they are dropped at load, so the core counts positions from 0).
/// Its MLM head applies erf GELU whatever `hidden_act` says, so only "gelu" is read.
fn roberta(k: &Keys) -> Result<TransformerConfig> {
    let path = k.path.display();
    let mut cfg = bert(k)?;
    if !cfg.exact_gelu {
        bail!("{path}: hidden_act must be \"gelu\" for RoBERTa (its MLM head uses erf GELU whatever hidden_act says)");
    }
    let off = roberta_position_offset(k.get("pad_token_id").and_then(Value::as_u64));
    if cfg.max_seq_len <= off {
        bail!("{path}: max_position_embeddings ({}) must exceed pad_token_id + 1 ({off})", cfg.max_seq_len);
    }
    cfg.max_seq_len -= off;
    Ok(cfg)
}

/// DistilBERT's config.json (`dim`, `n_layers`, `n_heads`, `hidden_dim`, `activation`):
/// BERT's block with LayerNorm eps 1e-12 (fixed in its code), no token types; learned
/// positions only (`sinusoidal_pos_embds` = true is refused: those are computed, not stored).
fn distilbert(k: &Keys) -> Result<TransformerConfig> {
    let path = k.path.display();
    let exact_gelu = match k.str_or("activation", "gelu")? {
        "gelu" => true,
        other => bail!("{path}: activation \"{other}\" is not supported (ferrolm reads DistilBERT with \"gelu\")"),
    };
    if k.bool_or("sinusoidal_pos_embds", false)? {
        bail!("{path}: sinusoidal_pos_embds = true is not supported (ferrolm reads DistilBERT with learned positions)");
    }
    let keys = EncoderKeys { d_model: "dim", n_layers: "n_layers", n_heads: "n_heads", d_ff: "hidden_dim" };
    post_norm_encoder(k, &keys, exact_gelu, 1e-12, 0)
}

fn llama_like(k: &Keys, family: HfFamily) -> Result<TransformerConfig> {
    let path = k.path.display();
    let act = k.str_or("hidden_act", "silu")?;
    if act != "silu" {
        bail!("{path}: hidden_act \"{act}\" is not supported (the modern block's MLP is SwiGLU, \"silu\")");
    }
    if k.bool_or("mlp_bias", false)? {
        bail!("{path}: mlp_bias = true is not supported (the modern block's MLP has no biases)");
    }
    let d = k.usize("hidden_size")?;
    let heads = k.usize("num_attention_heads")?;
    let attention_bias = k.bool_or("attention_bias", false)?;
    // Qwen2 always has q/k/v biases and none on the output; the others follow attention_bias.
    let (qkv_bias, out_bias) = match family {
        HfFamily::Qwen2 => (true, false),
        _ => (attention_bias, attention_bias),
    };
    let mut max_seq_len = k.usize("max_position_embeddings")?;
    // Sliding-window attention equals full attention on sequences no longer than the
    // window: cap the context there so a longer one is an error, not a silently different model.
    let windowed = match family {
        HfFamily::Mistral => true,
        HfFamily::Qwen2 | HfFamily::Qwen3 => k.bool_or("use_sliding_window", false)?,
        _ => false,
    };
    if windowed {
        if let Some(w) = k.get("sliding_window") {
            max_seq_len = max_seq_len.min(k.as_usize("sliding_window", w)?);
        }
    }
    let (rope_theta, scaling) = rope(k)?;
    let tied_default = false;
    let head_size = k.usize_or("head_dim", 0)?;
    Ok(TransformerConfig {
        kind: ModelKind::Causal,
        vocab_size: k.usize("vocab_size")?,
        d_model: d,
        n_layers: k.usize("num_hidden_layers")?,
        n_heads: heads,
        n_kv_heads: k.usize_or("num_key_value_heads", heads)?,
        d_ff: k.usize("intermediate_size")?,
        max_seq_len,
        block: BlockStyle::Modern,
        tie_embeddings: k.bool_or("tie_word_embeddings", tied_default)?,
        dropout: 0.0,
        norm_eps: k.f64_or("rms_norm_eps", 1e-6)?,
        rope_theta,
        // An explicit head_dim equal to the default is stored as the default (0), so the
        // config reads the same as one trained by ferrolm.
        head_size: if head_size * heads == d { 0 } else { head_size },
        qkv_bias: Some(qkv_bias),
        attn_out_bias: Some(out_bias),
        qk_norm: family == HfFamily::Qwen3,
        rope_scaling: scaling,
        ..TransformerConfig::default()
    })
}

/// `rope_theta` and `rope_scaling`, from the top level (transformers 4) or from
/// `rope_parameters` (transformers 5).
fn rope(k: &Keys) -> Result<(f64, Option<RopeScaling>)> {
    let path = k.path.display();
    let params = k.get("rope_parameters").or_else(|| k.get("rope_scaling"));
    let theta = match k.get("rope_parameters").and_then(|p| p.get("rope_theta")) {
        Some(v) => v.as_f64().with_context(|| format!("{path}: rope_parameters.rope_theta must be a number, got {v}"))?,
        None => k.f64_or("rope_theta", 10_000.0)?,
    };
    let Some(p) = params else { return Ok((theta, None)) };
    let kind = p.get("rope_type").or_else(|| p.get("type")).and_then(Value::as_str).unwrap_or("default");
    let num = |key: &str| -> Result<f64> {
        p.get(key).and_then(Value::as_f64).with_context(|| format!("{path}: rope scaling of type llama3 needs the number `{key}`"))
    };
    match kind {
        "default" => Ok((theta, None)),
        "llama3" => Ok((
            theta,
            Some(RopeScaling::Llama3 {
                factor: num("factor")?,
                low_freq_factor: num("low_freq_factor")?,
                high_freq_factor: num("high_freq_factor")?,
                original_max_position_embeddings: num("original_max_position_embeddings")? as usize,
            }),
        )),
        other => bail!("{path}: rope scaling of type \"{other}\" is not supported (ferrolm implements \"default\" and \"llama3\")"),
    }
}
