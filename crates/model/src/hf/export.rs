//! The core's variables → a Hugging Face checkpoint (`config.json` + `model.safetensors`)
//! that `transformers` loads with `AutoModelForCausalLM.from_pretrained`. The family is
//! chosen from the block style and options: GPT-2 blocks become `gpt2`; modern blocks
//! become `llama`, or `qwen2` (q/k/v biases without an output bias) or `qwen3` (q/k norms),
//! the families whose definitions match those options exactly.

use std::collections::HashMap;
use std::path::Path;

use anyhow::{bail, Context, Result};
use candle_core::{DType, Tensor};
use candle_nn::VarMap;
use serde_json::{json, Value};

use super::config::HfFamily;
use crate::config::{BlockStyle, ModelKind, RopeScaling, TransformerConfig};

/// The family a core config is exported as, or why it cannot be.
pub fn export_family(cfg: &TransformerConfig) -> Result<HfFamily> {
    if cfg.kind != ModelKind::Causal {
        bail!("only causal decoders export to Hugging Face checkpoints (this model's kind is {:?})", cfg.kind);
    }
    match cfg.block {
        BlockStyle::Gpt2 => {
            if !cfg.has_qkv_bias() || !cfg.has_attn_out_bias() || cfg.qk_norm || cfg.head_size != 0 && cfg.head_size * cfg.n_heads != cfg.d_model {
                bail!("a GPT-2 block with changed biases, q/k norms or head size has no transformers equivalent");
            }
            Ok(HfFamily::Gpt2)
        }
        BlockStyle::Modern => Ok(match (cfg.qk_norm, cfg.has_qkv_bias(), cfg.has_attn_out_bias()) {
            (true, q, o) if q == o => HfFamily::Qwen3,
            (false, true, false) => HfFamily::Qwen2,
            (false, q, o) if q == o => HfFamily::Llama,
            _ => bail!("this combination of q/k norm and projection biases has no transformers equivalent"),
        }),
    }
}

/// config.json for `cfg` as `family`.
pub fn config_json(cfg: &TransformerConfig, family: HfFamily, bos: Option<u32>, eos: Option<u32>) -> Value {
    let mut c = match family {
        HfFamily::Gpt2 => json!({
            "architectures": ["GPT2LMHeadModel"],
            "model_type": "gpt2",
            "vocab_size": cfg.vocab_size,
            "n_embd": cfg.d_model,
            "n_layer": cfg.n_layers,
            "n_head": cfg.n_heads,
            "n_inner": cfg.ff_dim(),
            "n_positions": cfg.max_seq_len,
            "activation_function": "gelu_new",
            "layer_norm_epsilon": cfg.norm_eps,
            "resid_pdrop": 0.0, "embd_pdrop": 0.0, "attn_pdrop": 0.0,
            "tie_word_embeddings": cfg.tie_embeddings,
        }),
        _ => {
            let arch = match family {
                HfFamily::Qwen2 => "Qwen2ForCausalLM",
                HfFamily::Qwen3 => "Qwen3ForCausalLM",
                _ => "LlamaForCausalLM",
            };
            let mut c = json!({
                "architectures": [arch],
                "model_type": family.model_type(),
                "vocab_size": cfg.vocab_size,
                "hidden_size": cfg.d_model,
                "intermediate_size": cfg.ff_dim(),
                "num_hidden_layers": cfg.n_layers,
                "num_attention_heads": cfg.n_heads,
                "num_key_value_heads": cfg.n_kv_heads,
                "head_dim": cfg.head_dim(),
                "max_position_embeddings": cfg.max_seq_len,
                "hidden_act": "silu",
                "rms_norm_eps": cfg.norm_eps,
                "rope_theta": cfg.rope_theta,
                "attention_bias": cfg.has_qkv_bias(),
                "attention_dropout": 0.0,
                "mlp_bias": false,
                "tie_word_embeddings": cfg.tie_embeddings,
                "use_sliding_window": false,
            });
            if let Some(RopeScaling::Llama3 { factor, low_freq_factor, high_freq_factor, original_max_position_embeddings }) = cfg.rope_scaling {
                c["rope_scaling"] = json!({
                    "rope_type": "llama3", "factor": factor, "low_freq_factor": low_freq_factor,
                    "high_freq_factor": high_freq_factor, "original_max_position_embeddings": original_max_position_embeddings,
                });
            }
            c
        }
    };
    c["torch_dtype"] = json!("float32");
    // GPT-2 begins and ends text with the same token; without one transformers assumes 50256
    let bos = if family == HfFamily::Gpt2 { bos.or(eos) } else { bos };
    if let Some(b) = bos {
        c["bos_token_id"] = json!(b);
    }
    if let Some(e) = eos {
        c["eos_token_id"] = json!(e);
    }
    c
}

/// The checkpoint tensors (HF names) for the core's variables.
pub fn from_core(cfg: &TransformerConfig, family: HfFamily, varmap: &VarMap) -> Result<HashMap<String, Tensor>> {
    let data = varmap.data().lock().expect("varmap lock");
    let get = |name: &str| -> Result<Tensor> {
        Ok(data.get(name).with_context(|| format!("the model has no variable {name}"))?.as_tensor().to_dtype(DType::F32)?.to_device(&candle_core::Device::Cpu)?)
    };
    let mut out = HashMap::new();
    match family {
        HfFamily::Bert | HfFamily::DistilBert | HfFamily::Roberta => bail!("ferrolm exports causal decoders only, not BERT masked LMs"),
        HfFamily::Gpt2 => {
            let conv = |t: Tensor| -> Result<Tensor> { Ok(t.t()?.contiguous()?) };
            out.insert("transformer.wte.weight".into(), get("wte.weight")?);
            out.insert("transformer.wpe.weight".into(), get("wpe.weight")?);
            for i in 0..cfg.n_layers {
                let (h, f) = (format!("transformer.h.{i}."), format!("decoder.blocks.{i}."));
                for (a, b) in [("attn.c_attn", "attn.qkv"), ("attn.c_proj", "attn.proj"), ("mlp.c_fc", "mlp.fc"), ("mlp.c_proj", "mlp.proj")] {
                    out.insert(format!("{h}{a}.weight"), conv(get(&format!("{f}{b}.weight"))?)?);
                    out.insert(format!("{h}{a}.bias"), get(&format!("{f}{b}.bias"))?);
                }
                for (a, b) in [("ln_1", "ln1"), ("ln_2", "ln2")] {
                    out.insert(format!("{h}{a}.weight"), get(&format!("{f}{b}.weight"))?);
                    out.insert(format!("{h}{a}.bias"), get(&format!("{f}{b}.bias"))?);
                }
            }
            out.insert("transformer.ln_f.weight".into(), get("decoder.ln_f.weight")?);
            out.insert("transformer.ln_f.bias".into(), get("decoder.ln_f.bias")?);
        }
        _ => {
            let (q, kv) = (cfg.q_width(), cfg.kv_width());
            out.insert("model.embed_tokens.weight".into(), get("wte.weight")?);
            for i in 0..cfg.n_layers {
                let (h, f) = (format!("model.layers.{i}."), format!("decoder.blocks.{i}."));
                out.insert(format!("{h}input_layernorm.weight"), get(&format!("{f}ln1.weight"))?);
                out.insert(format!("{h}post_attention_layernorm.weight"), get(&format!("{f}ln2.weight"))?);
                let split = |t: Tensor, dim: usize| -> Result<[Tensor; 3]> {
                    Ok([t.narrow(dim, 0, q)?.contiguous()?, t.narrow(dim, q, kv)?.contiguous()?, t.narrow(dim, q + kv, kv)?.contiguous()?])
                };
                let [wq, wk, wv] = split(get(&format!("{f}attn.qkv.weight"))?, 0)?;
                for (n, t) in [("q_proj", wq), ("k_proj", wk), ("v_proj", wv)] {
                    out.insert(format!("{h}self_attn.{n}.weight"), t);
                }
                if cfg.has_qkv_bias() {
                    let [bq, bk, bv] = split(get(&format!("{f}attn.qkv.bias"))?, 0)?;
                    for (n, t) in [("q_proj", bq), ("k_proj", bk), ("v_proj", bv)] {
                        out.insert(format!("{h}self_attn.{n}.bias"), t);
                    }
                }
                out.insert(format!("{h}self_attn.o_proj.weight"), get(&format!("{f}attn.proj.weight"))?);
                if cfg.has_attn_out_bias() {
                    out.insert(format!("{h}self_attn.o_proj.bias"), get(&format!("{f}attn.proj.bias"))?);
                }
                if cfg.qk_norm {
                    out.insert(format!("{h}self_attn.q_norm.weight"), get(&format!("{f}attn.ln_q.weight"))?);
                    out.insert(format!("{h}self_attn.k_norm.weight"), get(&format!("{f}attn.ln_k.weight"))?);
                }
                out.insert(format!("{h}mlp.gate_proj.weight"), get(&format!("{f}mlp.gate.weight"))?);
                out.insert(format!("{h}mlp.up_proj.weight"), get(&format!("{f}mlp.up.weight"))?);
                out.insert(format!("{h}mlp.down_proj.weight"), get(&format!("{f}mlp.proj.weight"))?);
            }
            out.insert("model.norm.weight".into(), get("decoder.ln_f.weight")?);
        }
    }
    if !cfg.tie_embeddings {
        out.insert("lm_head.weight".into(), get("lm_head.weight")?);
    }
    Ok(out)
}

/// Write `config.json` and `model.safetensors` of the model into `out` (each file atomically).
pub fn write_checkpoint(cfg: &TransformerConfig, varmap: &VarMap, out: &Path, bos: Option<u32>, eos: Option<u32>) -> Result<HfFamily> {
    let family = export_family(cfg)?;
    std::fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;
    let tensors = from_core(cfg, family, varmap)?;
    let tmp = out.join(".model.safetensors.tmp");
    candle_core::safetensors::save(&tensors, &tmp).with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::File::open(&tmp)?.sync_all()?;
    std::fs::rename(&tmp, out.join(super::weights::SINGLE_FILE)).with_context(|| format!("cannot write {}", out.join(super::weights::SINGLE_FILE).display()))?;
    write_json(&out.join("config.json"), &config_json(cfg, family, bos, eos))?;
    Ok(family)
}

/// Pretty JSON, written atomically.
pub fn write_json(path: &Path, v: &Value) -> Result<()> {
    ferrolm_common::write_atomic(path, serde_json::to_string_pretty(v)? + "\n").with_context(|| format!("cannot write {}", path.display()))
}

/// `generation_config.json`: stop tokens (transformers stops at any of them) and greedy
/// decoding unless the user asks to sample.
pub fn write_generation_config(out: &Path, eos_token_ids: &[u32]) -> Result<()> {
    let mut g = json!({ "do_sample": false });
    match eos_token_ids {
        [] => {}
        [one] => g["eos_token_id"] = json!(one),
        many => g["eos_token_id"] = json!(many),
    }
    if let Some(&pad) = eos_token_ids.first() {
        g["pad_token_id"] = json!(pad);
    }
    write_json(&out.join("generation_config.json"), &g)
}
