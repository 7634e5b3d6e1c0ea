//! Hugging Face checkpoints load onto the Transformer core with transformers' numbers.
//!
//! The fixtures in `tests/fixtures/hf/` are tiny random checkpoints written by
//! `bench/hf_fixtures.py` with transformers (one per family: Llama 3 with llama3 RoPE
//! scaling, a sharded Mistral, Qwen2 with q/k/v biases, Qwen3 with q/k norms and a head
//! width ≠ d_model / heads, GPT-2 with Conv1D weights; tied and untied heads), each with
//! transformers' log-probs and greedy continuation in `reference.json`. No Python here.

use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor, D};
use ferrolm_model::attention::MaskSpec;
use ferrolm_model::hf::{self, HfFamily};
use ferrolm_model::{load_model, Transformer};
use serde_json::Value;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/hf").join(name)
}

const FIXTURES: [(&str, HfFamily); 5] = [
    ("llama3_untied", HfFamily::Llama),
    ("mistral_sharded", HfFamily::Mistral),
    ("qwen2_tied", HfFamily::Qwen2),
    ("qwen3_untied", HfFamily::Qwen3),
    ("gpt2_tied", HfFamily::Gpt2),
];

fn reference(dir: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(dir.join("reference.json")).unwrap()).unwrap()
}

fn ids(v: &Value) -> Vec<u32> {
    v.as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect()
}

fn floats(v: &Value) -> Vec<f64> {
    v.as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect()
}

/// Log-prob of each token after the first given its prefix.
fn logprobs(m: &Transformer, ids: &[u32]) -> Vec<f64> {
    let input = Tensor::new(ids, &Device::Cpu).unwrap().unsqueeze(0).unwrap();
    let logits = m.forward(&input, &MaskSpec::causal(), None).unwrap().squeeze(0).unwrap();
    let lp = candle_nn::ops::log_softmax(&logits.to_dtype(candle_core::DType::F64).unwrap(), D::Minus1).unwrap();
    let lp: Vec<Vec<f64>> = lp.to_vec2().unwrap();
    (0..ids.len() - 1).map(|i| lp[i][ids[i + 1] as usize]).collect()
}

/// Greedy continuation through the KV cache (prompt at once, then one token at a time).
fn greedy(m: &Transformer, prompt: &[u32], n: usize) -> Vec<u32> {
    let mut cache = m.new_cache();
    let mut input = Tensor::new(prompt, &Device::Cpu).unwrap().unsqueeze(0).unwrap();
    let mut out = Vec::new();
    for _ in 0..n {
        let logits = m.forward(&input, &MaskSpec::causal(), Some(&mut cache)).unwrap();
        let last = logits.squeeze(0).unwrap().get(input.dim(1).unwrap() - 1).unwrap();
        let next = last.argmax(0).unwrap().to_scalar::<u32>().unwrap();
        out.push(next);
        input = Tensor::new(&[next], &Device::Cpu).unwrap().unsqueeze(0).unwrap();
    }
    out
}

#[test]
fn every_family_matches_transformers_logprobs_and_greedy_tokens() {
    for (name, family) in FIXTURES {
        let dir = fixture(name);
        assert!(hf::is_hf_folder(&dir), "{name}");
        assert_eq!(hf::read_config(&dir).unwrap().family, family);
        let loaded = load_model(&dir, &Device::Cpu).unwrap_or_else(|e| panic!("{name}: {e:#}"));
        let m = loaded.model.decoder("parity").unwrap();
        let r = reference(&dir);
        let got = logprobs(m, &ids(&r["input_ids"]));
        let want = floats(&r["logprobs"]);
        assert_eq!(got.len(), want.len());
        let diff = got.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0.0, f64::max);
        eprintln!("{name}: max |log-prob difference| vs transformers = {diff:.2e}");
        assert!(diff < 1e-4, "{name}: log-probs differ from transformers' by {diff}");
        let want_greedy = ids(&r["greedy"]);
        assert_eq!(greedy(m, &ids(&r["prompt"]), want_greedy.len()), want_greedy, "{name}: greedy tokens");
    }
}

#[test]
fn the_config_maps_each_family_onto_the_core_options() {
    let cfg = |n: &str| hf::read_config(&fixture(n)).unwrap().model;
    let llama = cfg("llama3_untied");
    assert!(llama.rope_scaling.is_some() && !llama.tie_embeddings && llama.n_kv_heads == 2);
    assert_eq!(llama.rope_theta, 500000.0);
    let qwen2 = cfg("qwen2_tied");
    assert_eq!((qwen2.has_qkv_bias(), qwen2.has_attn_out_bias(), qwen2.tie_embeddings), (true, false, true));
    let qwen3 = cfg("qwen3_untied");
    assert!(qwen3.qk_norm);
    assert_eq!((qwen3.head_dim(), qwen3.q_width(), qwen3.d_model), (8, 32, 16));
    let gpt2 = cfg("gpt2_tied");
    assert_eq!((gpt2.block, gpt2.ff_dim()), (ferrolm_model::BlockStyle::Gpt2, 64));
    // the spec a consumer reads through the registry is the same
    assert_eq!(ferrolm_model::registry::read_spec(&fixture("qwen3_untied")).unwrap().transformer().unwrap(), &qwen3);
}

#[test]
fn transformers_4_configs_with_top_level_rope_keys_parse_the_same() {
    let text = r#"{"model_type": "llama", "vocab_size": 64, "hidden_size": 16, "intermediate_size": 40,
        "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 64,
        "rms_norm_eps": 1e-6, "rope_theta": 500000.0, "tie_word_embeddings": false,
        "rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                         "original_max_position_embeddings": 16}}"#;
    let old = hf::parse_config(text, Path::new("config.json")).unwrap().model;
    assert_eq!(old, hf::read_config(&fixture("llama3_untied")).unwrap().model);
}

/// Copy a fixture into a scratch folder to damage it.
fn scratch_copy(name: &str) -> tempfile::TempDir {
    let tmp = tempfile::tempdir().unwrap();
    for e in std::fs::read_dir(fixture(name)).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), tmp.path().join(e.file_name())).unwrap();
    }
    tmp
}

fn load_err(dir: &Path) -> String {
    match load_model(dir, &Device::Cpu) {
        Ok(_) => panic!("{} loaded", dir.display()),
        Err(e) => format!("{e:#}"),
    }
}

#[test]
fn bad_checkpoints_are_clear_errors_naming_the_file_tensor_or_key() {
    // unknown model_type
    let d = scratch_copy("qwen3_untied");
    let cfg = std::fs::read_to_string(d.path().join("config.json")).unwrap();
    std::fs::write(d.path().join("config.json"), cfg.replace("\"qwen3\"", "\"falcon\"")).unwrap();
    let e = load_err(d.path());
    assert!(e.contains("model_type \"falcon\" is not supported") && e.contains("config.json"), "{e}");

    // a missing key
    std::fs::write(d.path().join("config.json"), cfg.replace("\"hidden_size\"", "\"hidden_sizes\"")).unwrap();
    let e = load_err(d.path());
    assert!(e.contains("`hidden_size` is missing"), "{e}");

    // truncated weights
    let d = scratch_copy("llama3_untied");
    let w = d.path().join("model.safetensors");
    let bytes = std::fs::read(&w).unwrap();
    std::fs::write(&w, &bytes[..bytes.len() - 100]).unwrap();
    let e = load_err(d.path());
    assert!(e.contains("model.safetensors") && e.contains("truncated"), "{e}");

    // missing weights file
    std::fs::remove_file(&w).unwrap();
    let e = load_err(d.path());
    assert!(e.contains("neither model.safetensors"), "{e}");

    // a config whose shapes do not match the weights names the tensor and file
    let d = scratch_copy("gpt2_tied");
    let cfg = std::fs::read_to_string(d.path().join("config.json")).unwrap();
    std::fs::write(d.path().join("config.json"), cfg.replace("\"n_inner\": null", "\"n_inner\": 32")).unwrap();
    let e = load_err(d.path());
    assert!(e.contains("h.0.mlp.c_fc.weight") && e.contains("shape") && e.contains("model.safetensors"), "{e}");

    // a missing shard
    let d = scratch_copy("mistral_sharded");
    std::fs::remove_file(d.path().join("model-00003-of-00005.safetensors")).unwrap();
    let e = load_err(d.path());
    assert!(e.contains("model-00003-of-00005.safetensors") && e.contains("missing"), "{e}");

    // unsupported rope scaling
    let d = scratch_copy("llama3_untied");
    let cfg = std::fs::read_to_string(d.path().join("config.json")).unwrap();
    std::fs::write(d.path().join("config.json"), cfg.replace("\"llama3\"", "\"yarn\"")).unwrap();
    let e = load_err(d.path());
    assert!(e.contains("\"yarn\" is not supported"), "{e}");
}

#[test]
fn integer_weights_are_refused_naming_the_tensor() {
    let d = scratch_copy("qwen3_untied");
    let w = d.path().join("model.safetensors");
    let mut tensors = candle_core::safetensors::load(&w, &Device::Cpu).unwrap();
    let name = "model.norm.weight";
    let t = tensors[name].to_dtype(candle_core::DType::U32).unwrap();
    tensors.insert(name.into(), t);
    candle_core::safetensors::save(&tensors, &w).unwrap();
    let e = load_err(d.path());
    assert!(e.contains(name) && e.contains("dtype"), "{e}");
}
