//! GGUF, the file llama.cpp (and Ollama, LM Studio) run: a ferrolm causal decoder out, as
//! f32, f16, q8_0 or q4_k_m, and a GGUF back in.
//!
//! Out: the core's variables go through the Hugging Face mapping (`hf::export`), then get
//! llama.cpp's tensor names and metadata keys for the architecture the block options map
//! to (`llama`, `qwen2`, `qwen3`); GPT-2-style blocks (LayerNorm with bias, learned
//! positions, GELU, biases on the projections) become llama.cpp's `gpt2` (`position_embd`,
//! `*_norm.bias`, q/k/v fused in `attn_qkv`, `ffn_up`/`ffn_down`, no RoPE keys). For `llama`, llama.cpp rotates interleaved pairs where
//! transformers (and ferrolm) rotate the two halves of a head, so the rows of the q and k
//! projections are permuted exactly as llama.cpp's own converter does. The tokenizer goes
//! in the standard `tokenizer.ggml.*` keys (byte-level BPE: tokens, types, merges, bos/eos,
//! and `tokenizer.ggml.pre` naming llama.cpp's pre-tokenizer with the tokenizer's split regex)
//! plus the chat template; ferrolm also stores its own `config.toml` model section and the
//! `tokenizer.json`, so a file it wrote loads back exactly.
//!
//! In: into the same Transformer. On the CPU, matrices the file stores as Q8_0, Q4_K, Q6_K
//! or F16 (the token embedding and every linear layer whose parts all are) are held as the
//! file's blocks (or halves) only, never as an f32 copy ([`crate::quant`]: decoding reads the
//! blocks, a prompt's product widens panels of rows as it goes, embedding rows are widened as
//! they are looked up); Q5_0 blocks (q4_k_m's type for rows that do not fill 256-value
//! super-blocks) are held as the Q8_0 blocks of the same values. Other quantizations, and
//! every weight on a GPU, are dequantized to f32.

use std::collections::{HashMap, HashSet};
use std::io::{Seek, Write};
use std::path::Path;

use anyhow::{bail, ensure, Context, Result};
use candle_core::quantized::{gguf_file, GgmlDType, QTensor};
use candle_core::{DType, Device, Tensor};

use crate::config::{BlockStyle, TransformerConfig};
use crate::hf::config::HfFamily;
use crate::quant::{QuantBlock, QuantWeights};
use ferrolm_kernels::f16::F16Matrix;
use ferrolm_kernels::q4k::{KMatrix, KQuant};
use ferrolm_kernels::q8::Q8Matrix;
use crate::registry::{AnyModel, LoadedModel};
use crate::spec::ModelSpec;

/// The precision of a GGUF file's matrices (norms and biases stay f32, as in llama.cpp).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GgufQuant {
    F32,
    F16,
    Q8_0,
    /// llama.cpp's Q4_K_M mix, as its quantizer chooses it: Q4_K, with Q6_K for the output
    /// matrix (the token embedding when it is tied) and for `attn_v` and `ffn_down` in the
    /// first and last eighth of the layers and every third between (a fused `attn_qkv`
    /// counts as `attn_v`); rows that do not fill 256-value super-blocks take llama.cpp's
    /// fallbacks (Q4_K → Q5_0, Q6_K → Q8_0, then F16).
    Q4KM,
}

impl std::str::FromStr for GgufQuant {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        Ok(match s.to_ascii_lowercase().as_str() {
            "f32" => Self::F32,
            "f16" => Self::F16,
            "q8_0" => Self::Q8_0,
            "q4_k_m" => Self::Q4KM,
            other => bail!("unknown GGUF precision {other:?}: expected f32, f16, q8_0 or q4_k_m"),
        })
    }
}

impl GgufQuant {
    /// `general.file_type` as llama.cpp numbers it.
    fn file_type(self) -> u32 {
        match self {
            Self::F32 => 0,
            Self::F16 => 1,
            Self::Q8_0 => 7,
            Self::Q4KM => 15,
        }
    }
}

/// The tokenizer as GGUF stores it.
#[derive(Debug, Clone, Default)]
pub struct GgufVocab {
    /// `tokenizer.ggml.model`: "gpt2" (byte-level BPE, the default when empty) or "llama"
    /// (SentencePiece BPE with byte tokens).
    pub model: String,
    /// Every token by id: in the byte-level alphabet of tokenizer.json's vocabulary (gpt2),
    /// or SentencePiece pieces with `▁` and `<0xNN>` (llama).
    pub tokens: Vec<String>,
    /// llama.cpp's token types: 1 normal, 2 unknown, 3 control (special tokens), 4 user
    /// defined, 6 byte.
    pub token_types: Vec<i32>,
    /// SentencePiece piece scores (llama only).
    pub scores: Vec<f32>,
    /// BPE merges as "left right" (gpt2 only).
    pub merges: Vec<String>,
    /// `tokenizer.ggml.pre` of a gpt2 vocabulary: llama.cpp's pre-tokenizer with the same
    /// split regexes as the tokenizer (`ferrolm_tokenizer::hf_config::ggml_pre`); empty =
    /// "gpt-2", GPT-2's split, which ferrolm's own byte-level tokenizers use.
    pub pre: String,
    pub bos: Option<u32>,
    pub eos: Option<u32>,
    pub unk: Option<u32>,
    /// `tokenizer.ggml.add_bos_token`: whether a text starts with `bos`.
    pub add_bos: bool,
    /// `tokenizer.ggml.add_space_prefix` (llama): whether a `▁` goes before a text.
    pub add_space_prefix: bool,
    pub chat_template: Option<String>,
    /// The full tokenizer.json, so ferrolm reloads the exact tokenizer.
    pub tokenizer_json: Option<String>,
}

const KEY_MODEL_CONFIG: &str = "ferrolm.model_config";
const KEY_TOKENIZER_JSON: &str = "ferrolm.tokenizer_json";

fn arch_name(family: HfFamily) -> Result<&'static str> {
    Ok(match family {
        HfFamily::Llama | HfFamily::Mistral => "llama",
        HfFamily::Qwen2 => "qwen2",
        HfFamily::Qwen3 => "qwen3",
        HfFamily::Gpt2 => "gpt2",
        HfFamily::Bert | HfFamily::DistilBert | HfFamily::Roberta => bail!("BERT masked LMs do not export to GGUF (causal decoders do: llama, qwen2, qwen3, gpt2)"),
    })
}

/// llama.cpp's row order for q/k of `llama`: within each head, pairs (i, i + D/2) become
/// neighbours. `inverse` undoes it.
fn permute_rows(t: &Tensor, heads: usize, inverse: bool) -> Result<Tensor> {
    let dims = t.dims().to_vec();
    let rows = dims[0];
    ensure!(rows.is_multiple_of(2 * heads), "cannot permute {rows} rows into {heads} heads of pairs");
    let half = rows / heads / 2;
    let rest: Vec<usize> = dims[1..].to_vec();
    let shape = |a: usize, b: usize| -> Vec<usize> { [vec![heads, a, b], rest.clone()].concat() };
    let (from, _to) = if inverse { (shape(half, 2), shape(2, half)) } else { (shape(2, half), shape(half, 2)) };
    Ok(t.reshape(from)?.transpose(1, 2)?.contiguous()?.reshape(dims)?)
}

fn use_more_bits(layer: usize, n_layers: usize) -> bool {
    // llama.cpp: the first and last eighth of the layers, and every third layer between
    let (first, last) = (n_layers / 8, 7 * n_layers / 8);
    layer < first || layer >= last || (layer - first) % 3 == 2
}

/// The GGML type of one tensor, as llama.cpp's converter (f32, f16, q8_0) and quantizer
/// (`llama_tensor_get_type`, q4_k_m) choose it: vectors, norms and the position table stay
/// f32; `has_output`: the file has an `output.weight` (else the tied token embedding is the
/// output matrix and is typed as one). A matrix whose rows do not fill whole blocks of the
/// chosen type takes llama.cpp's fallback (Q4_K → Q5_0, Q5_K → Q5_1, Q6_K → Q8_0), then F16.
fn tensor_type(name: &str, t: &Tensor, quant: GgufQuant, n_layers: usize, has_output: bool) -> GgmlDType {
    if t.rank() < 2 || name.ends_with("_norm.weight") || name == "position_embd.weight" {
        return GgmlDType::F32;
    }
    let cols = t.dim(t.rank() - 1).unwrap_or(0);
    let layer = name.strip_prefix("blk.").and_then(|r| r.split('.').next()).and_then(|n| n.parse::<usize>().ok());
    let fits = |d: GgmlDType| cols.is_multiple_of(d.block_size());
    let wanted = match quant {
        GgufQuant::F32 => return GgmlDType::F32,
        GgufQuant::F16 => GgmlDType::F16,
        GgufQuant::Q8_0 => GgmlDType::Q8_0,
        GgufQuant::Q4KM => {
            let more_bits = layer.is_some_and(|l| use_more_bits(l, n_layers));
            if name == "output.weight" || (!has_output && name == "token_embd.weight") {
                // the output matrix: Q6_K, or Q8_0 when its rows are not whole Q4_K blocks
                if fits(GgmlDType::Q4K) { GgmlDType::Q6K } else { GgmlDType::Q8_0 }
            } else if (name.ends_with("attn_v.weight") || name.ends_with("attn_qkv.weight") || name.ends_with("ffn_down.weight")) && more_bits {
                GgmlDType::Q6K
            } else {
                GgmlDType::Q4K
            }
        }
    };
    if fits(wanted) {
        return wanted;
    }
    let fallback = match wanted {
        GgmlDType::Q4K => GgmlDType::Q5_0,
        GgmlDType::Q5K => GgmlDType::Q5_1,
        GgmlDType::Q6K => GgmlDType::Q8_0,
        _ => GgmlDType::F16,
    };
    if fits(fallback) { fallback } else { GgmlDType::F16 }
}

/// Core variable → llama.cpp `gpt2` tensor, in the order llama.cpp's converter writes them.
/// The core's linear layers hold (out, in) rows as llama.cpp's `gpt2` tensors do (its
/// converter transposes GPT-2's Conv1D weights); q, k, v stay fused in `attn_qkv`.
fn gpt2_names(n_layers: usize, tied: bool) -> Vec<(String, String)> {
    let mut v: Vec<(String, String)> = vec![("wte.weight".into(), "token_embd.weight".into()), ("wpe.weight".into(), "position_embd.weight".into())];
    for i in 0..n_layers {
        for (core, g) in [("ln1", "attn_norm"), ("attn.qkv", "attn_qkv"), ("attn.proj", "attn_output"), ("ln2", "ffn_norm"), ("mlp.fc", "ffn_up"), ("mlp.proj", "ffn_down")] {
            for part in ["weight", "bias"] {
                v.push((format!("decoder.blocks.{i}.{core}.{part}"), format!("blk.{i}.{g}.{part}")));
            }
        }
    }
    v.push(("decoder.ln_f.weight".into(), "output_norm.weight".into()));
    v.push(("decoder.ln_f.bias".into(), "output_norm.bias".into()));
    if !tied {
        v.push(("lm_head.weight".into(), "output.weight".into()));
    }
    v
}

/// The shape (outermost first) llama.cpp's `gpt2` expects of each tensor of [`gpt2_names`].
fn gpt2_shape(cfg: &TransformerConfig, gguf: &str) -> Vec<usize> {
    let (d, q, kv, f) = (cfg.d_model, cfg.q_width(), cfg.kv_width(), cfg.ff_dim());
    let part = gguf.rsplit('.').nth(1).unwrap_or("");
    let bias = gguf.ends_with(".bias");
    match (part, bias) {
        ("token_embd", _) | ("output", _) => vec![cfg.vocab_size, d],
        ("position_embd", _) => vec![cfg.max_seq_len, d],
        ("attn_qkv", false) => vec![q + 2 * kv, d],
        ("attn_qkv", true) => vec![q + 2 * kv],
        ("attn_output", false) => vec![d, q],
        ("ffn_up", false) => vec![f, d],
        ("ffn_up", true) => vec![f],
        ("ffn_down", false) => vec![d, f],
        _ => vec![d],
    }
}

/// GGUF tensors (llama.cpp's `gpt2` names, f32) of a GPT-2-style causal decoder.
fn gpt2_tensors(cfg: &TransformerConfig, varmap: &candle_nn::VarMap) -> Result<Vec<(String, Tensor)>> {
    let data = varmap.data().lock().expect("varmap lock");
    gpt2_names(cfg.n_layers, cfg.tie_embeddings)
        .into_iter()
        .map(|(core, g)| {
            let t = data.get(&core).with_context(|| format!("the model has no variable {core}"))?.as_tensor().to_dtype(DType::F32)?.to_device(&Device::Cpu)?;
            Ok((g, t))
        })
        .collect()
}

/// GGUF tensors (llama.cpp names, f32) of a modern-block causal decoder.
fn gguf_tensors(cfg: &TransformerConfig, family: HfFamily, varmap: &candle_nn::VarMap) -> Result<Vec<(String, Tensor)>> {
    if family == HfFamily::Gpt2 {
        return gpt2_tensors(cfg, varmap);
    }
    let hf = crate::hf::export::from_core(cfg, family, varmap)?;
    let permute = arch_name(family)? == "llama";
    let mut out = Vec::new();
    let take = |name: &str| -> Result<Tensor> { hf.get(name).cloned().with_context(|| format!("internal: no tensor {name}")) };
    out.push(("token_embd.weight".to_string(), take("model.embed_tokens.weight")?));
    for i in 0..cfg.n_layers {
        let (h, b) = (format!("model.layers.{i}."), format!("blk.{i}."));
        for (from, to) in [
            ("input_layernorm.weight", "attn_norm.weight"),
            ("post_attention_layernorm.weight", "ffn_norm.weight"),
            ("self_attn.v_proj.weight", "attn_v.weight"),
            ("self_attn.v_proj.bias", "attn_v.bias"),
            ("self_attn.o_proj.weight", "attn_output.weight"),
            ("self_attn.o_proj.bias", "attn_output.bias"),
            ("self_attn.q_norm.weight", "attn_q_norm.weight"),
            ("self_attn.k_norm.weight", "attn_k_norm.weight"),
            ("mlp.gate_proj.weight", "ffn_gate.weight"),
            ("mlp.up_proj.weight", "ffn_up.weight"),
            ("mlp.down_proj.weight", "ffn_down.weight"),
        ] {
            if let Some(t) = hf.get(&format!("{h}{from}")) {
                out.push((format!("{b}{to}"), t.clone()));
            }
        }
        for (proj, to, heads) in [("q_proj", "attn_q", cfg.n_heads), ("k_proj", "attn_k", cfg.n_kv_heads)] {
            for part in ["weight", "bias"] {
                if let Some(t) = hf.get(&format!("{h}self_attn.{proj}.{part}")) {
                    let t = if permute { permute_rows(t, heads, false)? } else { t.clone() };
                    out.push((format!("{b}{to}.{part}"), t));
                }
            }
        }
    }
    out.push(("output_norm.weight".to_string(), take("model.norm.weight")?));
    if let Some(t) = hf.get("lm_head.weight") {
        out.push(("output.weight".to_string(), t.clone()));
    }
    Ok(out)
}

/// What [`write`] wrote.
#[derive(Debug, Clone)]
pub struct GgufSummary {
    pub arch: &'static str,
    pub tensors: usize,
    pub bytes: u64,
    /// Tensors stored in another type than the one asked for (their rows do not fill blocks).
    pub fallbacks: Vec<String>,
}

/// Writes the model as a GGUF file at `path` (atomically: a temporary file renamed).
pub fn write(cfg: &TransformerConfig, varmap: &candle_nn::VarMap, vocab: &GgufVocab, quant: GgufQuant, path: &Path) -> Result<GgufSummary> {
    ensure!(vocab.tokens.len() == cfg.vocab_size, "the tokenizer has {} tokens, the model {}", vocab.tokens.len(), cfg.vocab_size);
    let family = crate::hf::export::export_family(cfg)?;
    let arch = arch_name(family)?;
    if family == HfFamily::Gpt2 {
        // llama.cpp's gpt2 computes GELU's tanh approximation and heads of d_model / n_heads
        ensure!(!cfg.exact_gelu, "llama.cpp's gpt2 architecture computes GELU's tanh approximation: a GPT-2-style block with exact (erf) GELU does not export to GGUF");
        ensure!(cfg.head_dim() * cfg.n_heads == cfg.d_model, "llama.cpp's gpt2 architecture needs n_heads · head_size = d_model");
    }
    let tensors = gguf_tensors(cfg, family, varmap)?;
    let has_output = tensors.iter().any(|(n, _)| n == "output.weight");
    let mut quantized = Vec::with_capacity(tensors.len());
    let mut fallbacks = Vec::new();
    for (name, t) in &tensors {
        let want = tensor_type(name, t, quant, cfg.n_layers, has_output);
        // what the precision asks for where the rows fill its blocks
        let natural = match quant {
            GgufQuant::F32 => GgmlDType::F32,
            GgufQuant::F16 => GgmlDType::F16,
            GgufQuant::Q8_0 => GgmlDType::Q8_0,
            GgufQuant::Q4KM => [GgmlDType::Q4K, GgmlDType::Q5K, GgmlDType::Q6K].into_iter().find(|&d| d == want).unwrap_or(GgmlDType::Q4K),
        };
        if t.rank() >= 2 && name != "position_embd.weight" && want != natural {
            fallbacks.push(format!("{name}: {want:?}"));
        }
        // A fresh f32 buffer: candle quantizes a tensor's whole storage, and a view (one
        // part of a fused matrix) shares a larger one.
        let own = Tensor::from_vec(t.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?, t.shape(), &Device::Cpu)?;
        let q = QTensor::quantize(&own, want).with_context(|| format!("quantizing {name} to {want:?}"))?;
        quantized.push((name.clone(), q));
    }
    if let Some(scaling) = &cfg.rope_scaling {
        // llama.cpp applies llama3 scaling as per-frequency divisors in rope_freqs.
        let base = crate::attention::Rope::inv_freq(cfg.head_dim(), cfg.rope_theta);
        let mut scaled = base.clone();
        scaling.apply(&mut scaled);
        let factors: Vec<f32> = base.iter().zip(&scaled).map(|(b, s)| (b / s) as f32).collect();
        let n = factors.len();
        quantized.push(("rope_freqs.weight".to_string(), QTensor::quantize(&Tensor::from_vec(factors, n, &Device::Cpu)?, GgmlDType::F32)?));
    }

    use gguf_file::Value as V;
    let u32v = |x: usize| V::U32(x as u32);
    let mut meta: Vec<(String, V)> = vec![
        ("general.architecture".into(), V::String(arch.into())),
        ("general.name".into(), V::String("ferrolm".into())),
        ("general.file_type".into(), V::U32(quant.file_type())),
        ("general.quantization_version".into(), V::U32(2)),
        (format!("{arch}.context_length"), u32v(cfg.max_seq_len)),
        (format!("{arch}.embedding_length"), u32v(cfg.d_model)),
        (format!("{arch}.block_count"), u32v(cfg.n_layers)),
        (format!("{arch}.feed_forward_length"), u32v(cfg.ff_dim())),
        (format!("{arch}.attention.head_count"), u32v(cfg.n_heads)),
        (format!("{arch}.attention.head_count_kv"), u32v(cfg.n_kv_heads)),
    ];
    if family == HfFamily::Gpt2 {
        // LayerNorm (with bias) and learned positions: no RoPE keys
        meta.push((format!("{arch}.attention.layer_norm_epsilon"), V::F32(cfg.norm_eps as f32)));
    } else {
        meta.extend([
            (format!("{arch}.attention.key_length"), u32v(cfg.head_dim())),
            (format!("{arch}.attention.value_length"), u32v(cfg.head_dim())),
            (format!("{arch}.attention.layer_norm_rms_epsilon"), V::F32(cfg.norm_eps as f32)),
            (format!("{arch}.rope.dimension_count"), u32v(cfg.head_dim())),
            (format!("{arch}.rope.freq_base"), V::F32(cfg.rope_theta as f32)),
        ]);
    }
    meta.extend([
        (format!("{arch}.vocab_size"), u32v(cfg.vocab_size)),
        ("tokenizer.ggml.tokens".into(), V::Array(vocab.tokens.iter().map(|t| V::String(t.clone())).collect())),
        ("tokenizer.ggml.token_type".into(), V::Array(vocab.token_types.iter().map(|&t| V::I32(t)).collect())),
        ("tokenizer.ggml.add_bos_token".into(), V::Bool(vocab.add_bos && vocab.bos.is_some())),
        ("tokenizer.ggml.add_eos_token".into(), V::Bool(false)),
        (KEY_MODEL_CONFIG.into(), V::String(toml::to_string(cfg).context("serialising the model config")?)),
    ]);
    match vocab.model.as_str() {
        "" | "gpt2" => {
            meta.push(("tokenizer.ggml.model".into(), V::String("gpt2".into())));
            let pre = if vocab.pre.is_empty() { "gpt-2" } else { vocab.pre.as_str() };
            meta.push(("tokenizer.ggml.pre".into(), V::String(pre.into())));
            meta.push(("tokenizer.ggml.merges".into(), V::Array(vocab.merges.iter().map(|m| V::String(m.clone())).collect())));
        }
        // llama.cpp's SentencePiece vocabulary: pieces, scores (its merge order) and types,
        // as its converter writes them from a tokenizer.model
        "llama" => {
            ensure!(vocab.scores.len() == vocab.tokens.len(), "a llama (SentencePiece) vocabulary needs a score per token: {} scores for {} tokens", vocab.scores.len(), vocab.tokens.len());
            meta.push(("tokenizer.ggml.model".into(), V::String("llama".into())));
            meta.push(("tokenizer.ggml.pre".into(), V::String("default".into())));
            meta.push(("tokenizer.ggml.scores".into(), V::Array(vocab.scores.iter().map(|&s| V::F32(s)).collect())));
            meta.push(("tokenizer.ggml.add_space_prefix".into(), V::Bool(vocab.add_space_prefix)));
        }
        other => bail!("GGUF tokenizer model {other:?} is not written here (gpt2 and llama are)"),
    }
    ensure!(vocab.token_types.len() == vocab.tokens.len(), "{} token types for {} tokens", vocab.token_types.len(), vocab.tokens.len());
    if let Some(b) = vocab.bos {
        meta.push(("tokenizer.ggml.bos_token_id".into(), V::U32(b)));
    }
    if let Some(u) = vocab.unk {
        meta.push(("tokenizer.ggml.unknown_token_id".into(), V::U32(u)));
    }
    if let Some(e) = vocab.eos {
        meta.push(("tokenizer.ggml.eos_token_id".into(), V::U32(e)));
        meta.push(("tokenizer.ggml.padding_token_id".into(), V::U32(e)));
    }
    if let Some(t) = &vocab.chat_template {
        meta.push(("tokenizer.chat_template".into(), V::String(t.clone())));
    }
    if let Some(j) = &vocab.tokenizer_json {
        meta.push((KEY_TOKENIZER_JSON.into(), V::String(j.clone())));
    }

    let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let tmp = dir.join(format!(".{}.{}.tmp", path.file_name().and_then(|n| n.to_str()).unwrap_or("model.gguf"), std::process::id()));
    let result = (|| -> Result<u64> {
        let mut f = std::io::BufWriter::new(std::fs::File::create(&tmp)?);
        let meta_refs: Vec<(&str, &V)> = meta.iter().map(|(k, v)| (k.as_str(), v)).collect();
        let tensor_refs: Vec<(&str, &QTensor)> = quantized.iter().map(|(k, v)| (k.as_str(), v)).collect();
        gguf_file::write(&mut f, &meta_refs, &tensor_refs)?;
        let bytes = f.stream_position()?;
        f.flush()?;
        f.into_inner().map_err(|e| e.into_error())?.sync_all()?;
        Ok(bytes)
    })();
    let bytes = match result {
        Ok(b) => b,
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            return Err(e.context(format!("cannot write {}", path.display())));
        }
    };
    std::fs::rename(&tmp, path).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(GgufSummary { arch, tensors: quantized.len(), bytes, fallbacks })
}

/// A GGUF file read: the model (dequantized to f32) and ferrolm's tokenizer.json if the
/// file carries one.
pub struct GgufModel {
    pub loaded: LoadedModel,
    pub tokenizer_json: Option<String>,
    pub chat_template: Option<String>,
    /// GGML type of every tensor, by GGUF name.
    pub tensor_types: HashMap<String, GgmlDType>,
}

fn meta_u32(c: &gguf_file::Content, key: &str, path: &Path) -> Result<usize> {
    let v = c.metadata.get(key).with_context(|| format!("{}: the GGUF metadata has no {key}", path.display()))?;
    Ok(v.to_u32().or_else(|_| v.to_u64().map(|x| x as u32)).with_context(|| format!("{}: {key} is not an integer", path.display()))? as usize)
}

fn meta_f32(c: &gguf_file::Content, key: &str, path: &Path) -> Result<Option<f32>> {
    c.metadata.get(key).map(|v| v.to_f32().with_context(|| format!("{}: {key} is not a float", path.display()))).transpose()
}

/// The tokenizer keys of a GGUF file: what a .gguf without a tokenizer.json beside it needs
/// to encode and decode (read from the metadata only, no tensor data).
#[derive(Debug, Clone, Default)]
pub struct GgufTokenizer {
    /// The tokenizer.json ferrolm stores in the files it writes (`ferrolm.tokenizer_json`).
    pub tokenizer_json: Option<String>,
    /// The `tokenizer.ggml.*` vocabulary (None when the file has no `tokenizer.ggml.tokens`).
    pub vocab: Option<GgufVocab>,
    /// `tokenizer.ggml.pre`: the pre-tokenizer a "gpt2" vocabulary was trained with.
    pub pre: String,
}

/// Reads the tokenizer keys of the GGUF file at `path`; a key of the wrong type is an error
/// naming the file and key.
pub fn read_tokenizer(path: &Path) -> Result<GgufTokenizer> {
    // buffered: the metadata is read value by value (a vocabulary is 10⁵ strings), each a
    // system call on a bare file
    let mut f = std::io::BufReader::with_capacity(1 << 20, std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?);
    let c = gguf_file::Content::read(&mut f).map_err(|e| anyhow::anyhow!("{}: not a readable GGUF file: {e}", path.display()))?;
    let m = &c.metadata;
    let bad = |key: &str, what: &str| anyhow::anyhow!("{}: {key} is not {what}", path.display());
    let text = |key: &str| -> Result<Option<String>> { m.get(key).map(|v| v.to_string().cloned().map_err(|_| bad(key, "a string"))).transpose() };
    let array = |key: &str| -> Result<Option<&Vec<gguf_file::Value>>> { m.get(key).map(|v| v.to_vec().map_err(|_| bad(key, "an array"))).transpose() };
    let id = |key: &str| -> Result<Option<u32>> {
        m.get(key).map(|v| v.to_u32().or_else(|_| v.to_i32().map(|x| x as u32)).or_else(|_| v.to_u64().map(|x| x as u32)).map_err(|_| bad(key, "a token id"))).transpose()
    };
    let flag = |key: &str| -> Result<Option<bool>> { m.get(key).map(|v| v.to_bool().map_err(|_| bad(key, "a boolean"))).transpose() };
    let vocab = match array("tokenizer.ggml.tokens")? {
        None => None,
        Some(tokens) => {
            let key = "tokenizer.ggml.tokens";
            let tokens = tokens.iter().map(|t| t.to_string().cloned().map_err(|_| bad(key, "an array of strings"))).collect::<Result<Vec<_>>>()?;
            let n = tokens.len();
            let key = "tokenizer.ggml.token_type";
            let token_types = match array(key)? {
                Some(a) => a.iter().map(|t| t.to_i32().or_else(|_| t.to_u32().map(|x| x as i32)).map_err(|_| bad(key, "an array of integers"))).collect::<Result<Vec<_>>>()?,
                None => vec![1; n],
            };
            let key = "tokenizer.ggml.scores";
            let scores = match array(key)? {
                Some(a) => a.iter().map(|t| t.to_f32().map_err(|_| bad(key, "an array of floats"))).collect::<Result<Vec<_>>>()?,
                None => Vec::new(),
            };
            let key = "tokenizer.ggml.merges";
            let merges = match array(key)? {
                Some(a) => a.iter().map(|t| t.to_string().cloned().map_err(|_| bad(key, "an array of strings"))).collect::<Result<Vec<_>>>()?,
                None => Vec::new(),
            };
            let model = text("tokenizer.ggml.model")?.unwrap_or_else(|| "llama".into());
            let bos = id("tokenizer.ggml.bos_token_id")?;
            let check = |id: Option<u32>, key: &str| match id {
                Some(i) if i as usize >= n => Err(anyhow::anyhow!("{}: {key} = {i} is not a token id (there are {n} tokens)", path.display())),
                _ => Ok(id),
            };
            // llama.cpp's defaults when a key is missing: SentencePiece vocabularies start a
            // text with bos and a space, byte-level BPE ones with neither
            let sentencepiece = model == "llama";
            Some(GgufVocab {
                tokens,
                token_types,
                scores,
                merges,
                pre: text("tokenizer.ggml.pre")?.unwrap_or_default(),
                bos: check(bos, "tokenizer.ggml.bos_token_id")?,
                eos: check(id("tokenizer.ggml.eos_token_id")?, "tokenizer.ggml.eos_token_id")?,
                unk: check(id("tokenizer.ggml.unknown_token_id")?, "tokenizer.ggml.unknown_token_id")?,
                add_bos: flag("tokenizer.ggml.add_bos_token")?.unwrap_or(sentencepiece),
                add_space_prefix: flag("tokenizer.ggml.add_space_prefix")?.unwrap_or(sentencepiece),
                chat_template: text("tokenizer.chat_template")?,
                tokenizer_json: None,
                model,
            })
        }
    };
    Ok(GgufTokenizer { tokenizer_json: text(KEY_TOKENIZER_JSON)?, vocab, pre: text("tokenizer.ggml.pre")?.unwrap_or_else(|| "default".into()) })
}

/// The GGUF tensors a core linear layer is built from (`decoder.blocks.3.attn.qkv` ← attn_q,
/// attn_k, attn_v of blk.3; `lm_head` ← output, or token_embd when the head is tied), or the
/// token embedding (`wte` ← token_embd).
fn gguf_sources(layer: &str, tied: bool, fused_qkv: bool) -> Option<Vec<String>> {
    if layer == "wte" {
        return Some(vec!["token_embd.weight".into()]);
    }
    if layer == "lm_head" {
        return Some(vec![if tied { "token_embd.weight" } else { "output.weight" }.into()]);
    }
    let rest = layer.strip_prefix("decoder.blocks.")?;
    let (i, name) = rest.split_once('.')?;
    let b = format!("blk.{i}.");
    let from: &[&str] = match name {
        "attn.qkv" if fused_qkv => &["attn_qkv.weight"],
        "attn.qkv" => &["attn_q.weight", "attn_k.weight", "attn_v.weight"],
        "attn.proj" => &["attn_output.weight"],
        "mlp.gate" => &["ffn_gate.weight"],
        "mlp.up" | "mlp.fc" => &["ffn_up.weight"],
        "mlp.proj" => &["ffn_down.weight"],
        _ => return None,
    };
    Some(from.iter().map(|f| format!("{b}{f}")).collect())
}

/// The matrices of a GGUF file that a CPU model holds only as their blocks: the sources of
/// every core layer (and of the token embedding) whose parts are all 2-D and stored in a
/// format with blocks ([`block_kind`]).
fn lean_tensors(content: &gguf_file::Content, n_layers: usize, tied: bool, fused_qkv: bool) -> HashSet<String> {
    let mut layers = vec!["wte".to_string(), "lm_head".to_string()];
    for i in 0..n_layers {
        for name in ["attn.qkv", "attn.proj", "mlp.gate", "mlp.up", "mlp.proj"] {
            layers.push(format!("decoder.blocks.{i}.{name}"));
        }
    }
    let mut lean = HashSet::new();
    for layer in layers {
        let Some(sources) = gguf_sources(&layer, tied, fused_qkv) else { continue };
        let blocked = |name: &String| content.tensor_infos.get(name).is_some_and(|info| info.shape.rank() == 2 && block_kind(info.ggml_dtype).is_some());
        if sources.iter().all(blocked) {
            lean.extend(sources);
        }
    }
    lean
}

/// A stored format ferrolm decodes on.
enum Stored {
    Q8_0,
    /// Held as Q8_0 blocks, exactly ([`Q8Matrix::from_gguf_q5_0_bytes`]).
    Q5_0,
    K(KQuant),
    F16,
}

/// The stored format ferrolm decodes on for a GGML type; None for the rest (f32, other
/// quantizations: dequantized to f32 only).
fn block_kind(t: GgmlDType) -> Option<Stored> {
    match t {
        GgmlDType::Q8_0 => Some(Stored::Q8_0),
        GgmlDType::Q5_0 => Some(Stored::Q5_0),
        GgmlDType::Q4K => Some(Stored::K(KQuant::Q4K)),
        GgmlDType::Q6K => Some(Stored::K(KQuant::Q6K)),
        GgmlDType::F16 => Some(Stored::F16),
        _ => None,
    }
}

/// The source row of each row after [`permute_rows`]`(t, heads, true)`.
fn row_order(rows: usize, heads: usize) -> Result<Vec<usize>> {
    let idx = Tensor::arange(0u32, rows as u32, &Device::Cpu)?.to_dtype(DType::F32)?.reshape((rows, 1))?;
    Ok(permute_rows(&idx, heads, true)?.flatten_all()?.to_vec1::<f32>()?.into_iter().map(|v| v as usize).collect())
}

/// Reads a GGUF file of architecture `llama`, `qwen2`, `qwen3` or `gpt2` into the Transformer
/// core. A missing tensor or one of the wrong shape is an error naming it.
pub fn load(path: &Path, device: &Device) -> Result<GgufModel> {
    // buffered: the metadata is read value by value (a vocabulary is 10⁵ strings), each a
    // system call on a bare file
    let mut f = std::io::BufReader::with_capacity(1 << 20, std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?);
    let content = gguf_file::Content::read(&mut f).map_err(|e| anyhow::anyhow!("{}: not a readable GGUF file: {e}", path.display()))?;
    let arch = content
        .metadata
        .get("general.architecture")
        .and_then(|v| v.to_string().ok())
        .with_context(|| format!("{}: the GGUF metadata has no general.architecture", path.display()))?
        .clone();
    let family = match arch.as_str() {
        "llama" => HfFamily::Llama,
        "qwen2" => HfFamily::Qwen2,
        "qwen3" => HfFamily::Qwen3,
        "gpt2" => HfFamily::Gpt2,
        other => bail!("{}: GGUF architecture {other:?} is not supported (llama, qwen2, qwen3, gpt2 are)", path.display()),
    };
    let cfg: TransformerConfig = match content.metadata.get(KEY_MODEL_CONFIG).and_then(|v| v.to_string().ok()) {
        Some(text) => toml::from_str(text).with_context(|| format!("{}: {KEY_MODEL_CONFIG} is not a ferrolm model config", path.display()))?,
        None => {
            if content.tensor_infos.contains_key("rope_freqs.weight") {
                bail!("{}: rope frequency factors (llama3 scaling) in a GGUF ferrolm did not write are not supported yet", path.display());
            }
            let u = |k: &str| meta_u32(&content, &format!("{arch}.{k}"), path);
            let n_heads = u("attention.head_count")?;
            let d_model = u("embedding_length")?;
            let vocab = match content.metadata.get("tokenizer.ggml.tokens") {
                Some(gguf_file::Value::Array(a)) => a.len(),
                _ => u("vocab_size")?,
            };
            let has_q_bias = content.tensor_infos.contains_key("blk.0.attn_q.bias");
            let has_o_bias = content.tensor_infos.contains_key("blk.0.attn_output.bias");
            let tie_embeddings = !content.tensor_infos.contains_key("output.weight");
            if family == HfFamily::Gpt2 {
                // llama.cpp's converter writes n_positions as context_length; the position
                // table's shape is checked against it below
                TransformerConfig {
                    vocab_size: vocab,
                    d_model,
                    n_layers: u("block_count")?,
                    n_heads,
                    n_kv_heads: u("attention.head_count_kv").unwrap_or(n_heads),
                    d_ff: u("feed_forward_length")?,
                    max_seq_len: u("context_length")?,
                    block: BlockStyle::Gpt2,
                    norm_eps: meta_f32(&content, &format!("{arch}.attention.layer_norm_epsilon"), path)?.unwrap_or(1e-5) as f64,
                    tie_embeddings,
                    dropout: 0.0,
                    ..Default::default()
                }
            } else {
                TransformerConfig {
                    vocab_size: vocab,
                    d_model,
                    n_layers: u("block_count")?,
                    n_heads,
                    n_kv_heads: u("attention.head_count_kv").unwrap_or(n_heads),
                    d_ff: u("feed_forward_length")?,
                    max_seq_len: u("context_length")?,
                    head_size: u("attention.key_length").ok().filter(|&k| k != d_model / n_heads).unwrap_or(0),
                    block: BlockStyle::Modern,
                    norm_eps: meta_f32(&content, &format!("{arch}.attention.layer_norm_rms_epsilon"), path)?.unwrap_or(1e-5) as f64,
                    rope_theta: meta_f32(&content, &format!("{arch}.rope.freq_base"), path)?.unwrap_or(10_000.0) as f64,
                    tie_embeddings,
                    qk_norm: family == HfFamily::Qwen3,
                    qkv_bias: Some(has_q_bias),
                    attn_out_bias: Some(has_o_bias),
                    dropout: 0.0,
                    ..Default::default()
                }
            }
        }
    };
    let mut tensor_types = HashMap::new();
    // On the CPU, matrices stored quantized or in f16 (Q8_0, Q5_0, Q4_K, Q6_K, F16) are held
    // as the file's blocks only — no f32 copy, not even while loading: the builder gets a
    // placeholder for each, which `set_quantized` below replaces. A layer with any part in
    // another type is dequantized whole.
    let fused_qkv = family == HfFamily::Gpt2;
    let lean = if device.is_cpu() { lean_tensors(&content, cfg.n_layers, cfg.tie_embeddings, fused_qkv) } else { HashSet::new() };
    let mut raw: HashMap<String, QuantBlock> = HashMap::new();
    // F16, Q4_K and Q6_K tensors are used in place from a map of the file (the file's bytes
    // are their layout): no copy, as llama.cpp does. Like llama.cpp, this assumes the file is not
    // rewritten while the model runs (a GGUF file is replaced whole, not edited in place).
    let map: Option<std::sync::Arc<dyn AsRef<[u8]> + Send + Sync>> = if lean.is_empty() {
        None
    } else {
        let file = std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
        Some(std::sync::Arc::new(ferrolm_kernels::mmap::map_immutable(&file).with_context(|| format!("cannot map {}", path.display()))?))
    };
    let data_offset = content.tensor_data_offset;
    let mut read = |name: &str| -> Result<Tensor> {
        if let (true, Some(map), Some(info)) = (lean.contains(name), &map, content.tensor_infos.get(name)) {
            let (rows, cols) = info.shape.dims2()?;
            let offset = usize::try_from(data_offset + info.offset)?;
            let shared = match block_kind(info.ggml_dtype) {
                Some(Stored::F16) => F16Matrix::from_shared_gguf(rows, cols, map.clone(), offset).map(QuantBlock::F16),
                Some(Stored::K(k)) => KMatrix::from_shared(k, rows, cols, map.clone(), offset).map(QuantBlock::K),
                // Q8_0 and Q5_0 blocks are rearranged (scales apart, Q5_0 widened): copied below
                _ => None,
            };
            if let Some(block) = shared {
                tensor_types.insert(name.to_string(), info.ggml_dtype);
                raw.insert(name.to_string(), block);
                return Ok(crate::linear::placeholder(&[rows, cols], &Device::Cpu)?);
            }
        }
        let q = content.tensor(&mut f, name, &Device::Cpu).map_err(|e| anyhow::anyhow!("{}: tensor {name}: {e}", path.display()))?;
        tensor_types.insert(name.to_string(), q.dtype());
        if !lean.contains(name) {
            return Ok(q.dequantize(&Device::Cpu)?);
        }
        let (rows, cols) = q.shape().dims2()?;
        let kind = block_kind(q.dtype()).expect("lean tensors have a block kind");
        let bytes = q.data()?;
        let block = match kind {
            Stored::Q8_0 => Q8Matrix::from_gguf_bytes(rows, cols, &bytes).map(QuantBlock::Q8_0),
            Stored::Q5_0 => Q8Matrix::from_gguf_q5_0_bytes(rows, cols, &bytes).map(QuantBlock::Q8_0),
            Stored::K(k) => KMatrix::from_bytes(k, rows, cols, bytes.into_owned()).map(QuantBlock::K),
            Stored::F16 => F16Matrix::from_gguf_bytes(rows, cols, &bytes).map(QuantBlock::F16),
        };
        let block = block.with_context(|| format!("{}: tensor {name}: {:?} data does not fill {rows}×{cols}", path.display(), q.dtype()))?;
        raw.insert(name.to_string(), block);
        Ok(crate::linear::placeholder(&[rows, cols], &Device::Cpu)?)
    };
    let permute = arch == "llama";
    let values = if family == HfFamily::Gpt2 {
        // llama.cpp's gpt2 tensors are the core's variables as they are (see gpt2_names)
        let mut values = HashMap::new();
        for (core, g) in gpt2_names(cfg.n_layers, cfg.tie_embeddings) {
            let Some(info) = content.tensor_infos.get(&g) else {
                bail!("{}: the GGUF file has no tensor {g}, which llama.cpp's gpt2 architecture needs", path.display());
            };
            let want = gpt2_shape(&cfg, &g);
            ensure!(
                info.shape.dims() == want.as_slice(),
                "{}: tensor {g} has shape {:?}, the model's config needs {want:?}",
                path.display(),
                info.shape.dims()
            );
            values.insert(core, read(&g)?);
        }
        values
    } else {
        // GGUF names → the Hugging Face names the core's mapping reads.
        let mut hf: HashMap<String, crate::hf::weights::Source> = HashMap::new();
        let mut put = |name: String, tensor: Tensor| {
            hf.insert(name, crate::hf::weights::Source::new(tensor, path.to_path_buf()));
        };
        put("model.embed_tokens.weight".into(), read("token_embd.weight")?);
        for i in 0..cfg.n_layers {
            let (h, b) = (format!("model.layers.{i}."), format!("blk.{i}."));
            let names = [
                ("input_layernorm.weight", "attn_norm.weight", 0),
                ("post_attention_layernorm.weight", "ffn_norm.weight", 0),
                ("self_attn.q_proj.weight", "attn_q.weight", cfg.n_heads),
                ("self_attn.q_proj.bias", "attn_q.bias", cfg.n_heads),
                ("self_attn.k_proj.weight", "attn_k.weight", cfg.n_kv_heads),
                ("self_attn.k_proj.bias", "attn_k.bias", cfg.n_kv_heads),
                ("self_attn.v_proj.weight", "attn_v.weight", 0),
                ("self_attn.v_proj.bias", "attn_v.bias", 0),
                ("self_attn.o_proj.weight", "attn_output.weight", 0),
                ("self_attn.o_proj.bias", "attn_output.bias", 0),
                ("self_attn.q_norm.weight", "attn_q_norm.weight", 0),
                ("self_attn.k_norm.weight", "attn_k_norm.weight", 0),
                ("mlp.gate_proj.weight", "ffn_gate.weight", 0),
                ("mlp.up_proj.weight", "ffn_up.weight", 0),
                ("mlp.down_proj.weight", "ffn_down.weight", 0),
            ];
            for (to, from, heads) in names {
                let g = format!("{b}{from}");
                if !content.tensor_infos.contains_key(&g) {
                    continue;
                }
                let t = read(&g)?;
                // (a placeholder's blocks are reordered when they are set, below)
                let t = if permute && heads > 0 && !crate::linear::is_placeholder(&t) { permute_rows(&t, heads, true)? } else { t };
                put(format!("{h}{to}"), t);
            }
        }
        put("model.norm.weight".into(), read("output_norm.weight")?);
        if !cfg.tie_embeddings {
            put("lm_head.weight".into(), read("output.weight")?);
        }
        crate::hf::weights::to_core(family, &cfg, hf, 0).with_context(|| format!("loading {}", path.display()))?
    };
    let spec = ModelSpec::Transformer(cfg);
    let (mut model, varmap) = AnyModel::build_with(&spec, values, device, path)?;
    if let AnyModel::Decoder(m) = &mut model {
        // A GGUF model is for inference: weights frozen, and layers stored quantized or in
        // half precision in the file (Q8_0, Q5_0, Q4_K, Q6_K, F16) hold the file's blocks —
        // the q/k rows of `llama` reordered as an f32 copy would be — so every product reads
        // exactly the file's numbers. A layer with any part in f32 stays f32.
        m.freeze_linears();
        if !raw.is_empty() {
            let (tied, n_heads, n_kv_heads) = (m.config().tie_embeddings, m.config().n_heads, m.config().n_kv_heads);
            m.set_quantized(|layer| {
                let Some(names) = gguf_sources(layer, tied, fused_qkv) else { return Ok(None) };
                let mut out: Option<QuantWeights> = None;
                for name in names {
                    let Some(block) = raw.remove(&name) else { return Ok(None) };
                    let heads = if name.ends_with("attn_q.weight") { n_heads } else if name.ends_with("attn_k.weight") { n_kv_heads } else { 0 };
                    let block = if permute && heads > 0 { block.select_rows(&row_order(block.rows(), heads)?) } else { block };
                    match &mut out {
                        None => out = Some(QuantWeights::new(block)),
                        Some(w) => w.push(block)?,
                    }
                }
                Ok(out)
            })?;
        }
    }
    // Every placeholder must have been replaced by its blocks: a layer left with one would
    // fail at its first product; say which here instead.
    let mut unclaimed: Vec<&String> = raw.keys().collect();
    unclaimed.sort();
    ensure!(unclaimed.is_empty(), "{}: tensors {unclaimed:?} were not taken by any layer of the model", path.display());
    let text = |k: &str| content.metadata.get(k).and_then(|v| v.to_string().ok()).cloned();
    Ok(GgufModel {
        loaded: LoadedModel { spec, model, varmap, checkpoint: path.to_path_buf() },
        tokenizer_json: text(KEY_TOKENIZER_JSON),
        chat_template: text("tokenizer.chat_template"),
        tensor_types,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_llama_row_permutation_is_undone_by_its_inverse_and_pairs_halves() {
        // one head of 4 rows: halves (0,1 | 2,3) → pairs (0,2), (1,3)
        let t = Tensor::arange(0f32, 8.0, &Device::Cpu).unwrap().reshape((4, 2)).unwrap();
        let p = permute_rows(&t, 1, false).unwrap();
        assert_eq!(p.to_vec2::<f32>().unwrap(), vec![vec![0., 1.], vec![4., 5.], vec![2., 3.], vec![6., 7.]]);
        let back = permute_rows(&p, 1, true).unwrap();
        assert_eq!(back.to_vec2::<f32>().unwrap(), t.to_vec2::<f32>().unwrap());
    }

    #[test]
    fn q4_k_m_types_are_the_ones_llama_cpp_quantizer_chooses() {
        let wide = Tensor::zeros((4, 256), DType::F32, &Device::Cpu).unwrap();
        let narrow = Tensor::zeros((4, 64), DType::F32, &Device::Cpu).unwrap();
        let odd = Tensor::zeros((4, 72), DType::F32, &Device::Cpu).unwrap();
        let t = |name: &str, x: &Tensor, has_output: bool| tensor_type(name, x, GgufQuant::Q4KM, 16, has_output);
        assert_eq!(t("blk.0.attn_v.weight", &wide, true), GgmlDType::Q6K);
        assert_eq!(t("blk.3.attn_v.weight", &wide, true), GgmlDType::Q4K);
        assert_eq!(t("blk.4.attn_v.weight", &wide, true), GgmlDType::Q6K);
        assert_eq!(t("blk.4.ffn_down.weight", &wide, true), GgmlDType::Q6K);
        assert_eq!(t("blk.4.ffn_up.weight", &wide, true), GgmlDType::Q4K);
        assert_eq!(t("output.weight", &wide, true), GgmlDType::Q6K);
        // the token embedding is Q4_K beside an output matrix, Q6_K when it is the output
        assert_eq!(t("token_embd.weight", &wide, true), GgmlDType::Q4K);
        assert_eq!(t("token_embd.weight", &wide, false), GgmlDType::Q6K);
        // gpt2: fused q/k/v as attn_v; the position table stays f32
        assert_eq!(t("blk.3.attn_qkv.weight", &wide, true), GgmlDType::Q4K);
        assert_eq!(t("blk.4.attn_qkv.weight", &wide, true), GgmlDType::Q6K);
        assert_eq!(t("position_embd.weight", &wide, true), GgmlDType::F32);
        // rows of 64: llama.cpp's fallbacks Q4_K → Q5_0, Q6_K → Q8_0; the output
        // matrix Q8_0; rows of 72 fill no block: F16
        assert_eq!(t("blk.3.attn_q.weight", &narrow, true), GgmlDType::Q5_0);
        assert_eq!(t("blk.3.attn_qkv.weight", &narrow, true), GgmlDType::Q5_0);
        assert_eq!(t("blk.4.attn_qkv.weight", &narrow, true), GgmlDType::Q8_0);
        assert_eq!(t("blk.0.ffn_down.weight", &narrow, true), GgmlDType::Q8_0);
        assert_eq!(t("token_embd.weight", &narrow, false), GgmlDType::Q8_0);
        assert_eq!(t("blk.3.attn_q.weight", &odd, true), GgmlDType::F16);
        assert_eq!(tensor_type("blk.3.attn_q.weight", &narrow, GgufQuant::F32, 16, true), GgmlDType::F32);
        assert_eq!(tensor_type("position_embd.weight", &narrow, GgufQuant::F16, 16, true), GgmlDType::F32);
        let norm = Tensor::zeros(64, DType::F32, &Device::Cpu).unwrap();
        assert_eq!(tensor_type("blk.3.attn_norm.weight", &norm, GgufQuant::Q8_0, 16, true), GgmlDType::F32);
    }
}
