//! Hugging Face checkpoints load onto the Transformer core with transformers' numbers.
//!
//! The fixtures in `tests/fixtures/hf/` are tiny random checkpoints written by
//! `bench/hf_fixtures.py` with transformers (one per family: Llama 3 with llama3 RoPE
//! scaling, Llama 2 with a SentencePiece tokenizer, a sharded Mistral, Qwen2 with q/k/v biases, Qwen3 with q/k norms and a head
//! width ≠ d_model / heads, GPT-2 with Conv1D weights; tied and untied heads), each with
//! transformers' log-probs and greedy continuation in `reference.json`; and a BERT masked LM
//! (`bert_tiny`: post-norm blocks, erf GELU, token types, pooler) with transformers' MLM
//! logits, hidden states, pooled and mean-pooled outputs. No Python here.

use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor, D};
use ferrolm_model::attention::MaskSpec;
use ferrolm_model::hf::{self, HfFamily};
use ferrolm_model::{load_model, Transformer};
use serde_json::Value;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/hf").join(name)
}

const FIXTURES: [(&str, HfFamily); 6] = [
    ("llama3_untied", HfFamily::Llama),
    // Llama 2 shape with a SentencePiece BPE tokenizer (its ids: ferrolm-tokenizer's tests)
    ("llama2_spm", HfFamily::Llama),
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
        // fixtures with a tokenizer: a real text's ids as transformers' tokenizer gave them
        if r.get("text_ids").is_some() {
            let got = logprobs(m, &ids(&r["text_ids"]));
            let diff = got.iter().zip(&floats(&r["text_logprobs"])).map(|(a, b)| (a - b).abs()).fold(0.0, f64::max);
            eprintln!("{name}: text of {} tokens, max |log-prob difference| = {diff:.2e}", got.len() + 1);
            assert!(diff < 1e-4, "{name}: text log-probs differ from transformers' by {diff}");
        }
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

// ---- BERT: the masked LM on the same core (post-norm blocks, erf GELU, token types) ----

/// transformers' outputs for `bert_tiny` (bench/hf_fixtures.py): reference.json (ids) and
/// reference.safetensors (MLM logits, last hidden states, pooled and mean-pooled outputs).
fn bert_reference() -> (Value, std::collections::HashMap<String, Tensor>) {
    let dir = fixture("bert_tiny");
    let t = candle_core::safetensors::load(dir.join("reference.safetensors"), &Device::Cpu).unwrap();
    (reference(&dir), t)
}

fn max_diff(a: &Tensor, b: &Tensor) -> f64 {
    assert_eq!(a.dims(), b.dims());
    let d = (a.to_dtype(candle_core::DType::F64).unwrap() - b.to_dtype(candle_core::DType::F64).unwrap()).unwrap();
    d.abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f64>().unwrap()
}

/// A masked-LM fixture loaded through `load_model`; its variables must be exactly the
/// parameters its config counts.
fn masked_lm(name: &str) -> ferrolm_model::MaskedLm {
    let loaded = load_model(&fixture(name), &Device::Cpu).unwrap_or_else(|e| panic!("{name}: {e:#}"));
    let n: usize = loaded.varmap.all_vars().iter().map(|v| v.elem_count()).sum();
    assert_eq!(n, loaded.spec.transformer().unwrap().num_params(), "{name}");
    match loaded.model {
        ferrolm_model::AnyModel::MaskedLm(m) => m,
        other => panic!("{name} loaded as {}", other.name()),
    }
}

fn bert() -> ferrolm_model::MaskedLm {
    masked_lm("bert_tiny")
}

/// The reference's texts as one right-padded batch (`pad` after each text, masked out):
/// the last hidden states, and their mean over each text's own tokens (sentence-
/// transformers' mean pooling, the frame's special tokens included).
fn padded_batch(m: &ferrolm_model::MaskedLm, seqs: &[Vec<u32>], pad: u32) -> (Tensor, Tensor) {
    let width = seqs.iter().map(Vec::len).max().unwrap();
    let (mut flat, mut segs, mut w) = (Vec::new(), Vec::new(), Vec::new());
    for s in seqs {
        for j in 0..width {
            flat.push(if j < s.len() { s[j] } else { pad });
            segs.push(if j < s.len() { 0 } else { ferrolm_model::attention::PAD_SEGMENT });
            w.push(if j < s.len() { 1.0 / s.len() as f32 } else { 0.0 });
        }
    }
    let b = seqs.len();
    let x = Tensor::from_vec(flat, (b, width), &Device::Cpu).unwrap();
    let h = m.hidden(&x, &MaskSpec::bidirectional().with_segments(segs), None).unwrap();
    let mean = h.broadcast_mul(&Tensor::from_vec(w, (b, width, 1), &Device::Cpu).unwrap()).unwrap().sum(1).unwrap();
    (h, mean)
}

/// Max |Δ| against the reference over every text, one text at a time: (MLM logits, last
/// hidden states, pooled output — None for a model without a pooler).
fn per_text_diffs(m: &ferrolm_model::MaskedLm, seqs: &[Vec<u32>], t: &std::collections::HashMap<String, Tensor>) -> (f64, f64, Option<f64>) {
    let (mut logits_d, mut hidden_d, mut pooled_d) = (0.0f64, 0.0f64, m.has_pooler().then_some(0.0f64));
    for (i, s) in seqs.iter().enumerate() {
        let h = m.hidden(&row(s), &MaskSpec::bidirectional(), None).unwrap();
        logits_d = logits_d.max(max_diff(&m.mlm_logits(&h).unwrap().squeeze(0).unwrap(), &t[&format!("logits.{i}")]));
        hidden_d = hidden_d.max(max_diff(&h.squeeze(0).unwrap(), &t[&format!("hidden.{i}")]));
        if let Some(p) = pooled_d.as_mut() {
            *p = p.max(max_diff(&m.pooled(&h).unwrap().squeeze(0).unwrap(), &t[&format!("pooled.{i}")]));
        }
    }
    (logits_d, hidden_d, pooled_d)
}

fn text_ids(r: &Value) -> Vec<Vec<u32>> {
    r["texts"].as_array().unwrap().iter().map(|x| ids(&x["input_ids"])).collect()
}

fn row(ids: &[u32]) -> Tensor {
    Tensor::new(ids, &Device::Cpu).unwrap().unsqueeze(0).unwrap()
}

#[test]
fn bert_config_maps_onto_the_masked_lm_core_options() {
    let dir = fixture("bert_tiny");
    let c = hf::read_config(&dir).unwrap();
    assert_eq!(c.family, HfFamily::Bert);
    let m = &c.model;
    assert_eq!(m.kind, ferrolm_model::ModelKind::MaskedLm);
    assert_eq!(m.block, ferrolm_model::BlockStyle::Gpt2);
    assert!(m.post_norm && m.exact_gelu && m.tie_embeddings);
    assert_eq!((m.type_vocab_size, m.token_types(), m.norm_eps, m.max_seq_len, m.ff_dim()), (2, 2, 1e-12, 64, 64));
    // heads as the tensors say: BertForMaskedLM's MLM head plus the added pooler, no NSP head
    assert!(m.mlm_head && m.pooler && !m.nsp_head);
    assert_eq!(ferrolm_model::registry::read_spec(&dir).unwrap().transformer().unwrap(), m);
    // the built model has exactly the parameters the config counts
    masked_lm("bert_tiny");
    // the config survives a run folder's config.toml (a classifier trained on it writes one)
    let spec = ferrolm_model::ModelSpec::Transformer(m.clone());
    let text = toml::to_string(&spec.to_value()).unwrap();
    assert_eq!(ferrolm_model::ModelSpec::from_value(&toml::from_str(&text).unwrap()).unwrap(), spec, "{text}");
}

#[test]
fn bert_matches_transformers_mlm_logits_hidden_states_and_pooled_output() {
    let m = bert();
    let (r, t) = bert_reference();
    let (logits_d, hidden_d, pooled_d) = per_text_diffs(&m, &text_ids(&r), &t);
    let pooled_d = pooled_d.expect("bert_tiny has a pooler");
    // a sentence pair: the second segment's token type is 1
    let pair = &r["pair"];
    let (ids, types) = (ids(&pair["input_ids"]), ids(&pair["token_type_ids"]));
    assert!(types.contains(&1));
    let h = m.hidden_segments(&row(&ids), Some(&row(&types)), &MaskSpec::bidirectional(), None).unwrap();
    let pair_logits = max_diff(&m.mlm_logits(&h).unwrap().squeeze(0).unwrap(), &t["logits.pair"]);
    let pair_pooled = max_diff(&m.pooled(&h).unwrap().squeeze(0).unwrap(), &t["pooled.pair"]);
    // without the types (all 0) the pair's numbers differ: the type embedding is used
    let h0 = m.hidden(&row(&ids), &MaskSpec::bidirectional(), None).unwrap();
    assert!(max_diff(&m.pooled(&h0).unwrap().squeeze(0).unwrap(), &t["pooled.pair"]) > 1e-3);
    eprintln!(
        "bert_tiny: max |Δ| vs transformers: MLM logits {logits_d:.2e}, last hidden {hidden_d:.2e}, pooled {pooled_d:.2e}; pair (token types) logits {pair_logits:.2e}, pooled {pair_pooled:.2e}"
    );
    for (what, d) in [("MLM logits", logits_d), ("hidden states", hidden_d), ("pooled output", pooled_d), ("pair logits", pair_logits), ("pair pooled", pair_pooled)] {
        assert!(d < 1e-4, "bert_tiny: {what} differ from transformers' by {d}");
    }
}

#[test]
fn bert_padded_batch_matches_transformers_mean_pooled_and_pooled_outputs() {
    let m = bert();
    let (r, t) = bert_reference();
    let (h, mean) = padded_batch(&m, &text_ids(&r), 0);
    let mean_d = max_diff(&mean, &t["mean_pooled"]);
    let pooled_d = max_diff(&m.pooled(&h).unwrap(), &t["pooled_batch"]);
    eprintln!("bert_tiny padded batch: max |Δ| vs transformers: mean-pooled {mean_d:.2e}, pooled {pooled_d:.2e}");
    assert!(mean_d < 1e-4 && pooled_d < 1e-4, "mean {mean_d}, pooled {pooled_d}");
}

/// Rewrite the fixture's weights in a scratch copy: keep (renamed) or drop each tensor.
fn bert_variant(rename: impl Fn(&str) -> Option<String>) -> tempfile::TempDir {
    let d = scratch_copy("bert_tiny");
    let w = d.path().join("model.safetensors");
    let tensors = candle_core::safetensors::load(&w, &Device::Cpu).unwrap();
    let kept: std::collections::HashMap<String, Tensor> = tensors.into_iter().filter_map(|(k, v)| rename(&k).map(|k| (k, v))).collect();
    candle_core::safetensors::save(&kept, &w).unwrap();
    d
}

#[test]
fn bert_checkpoints_without_some_heads_load_and_say_what_they_lack() {
    let (r, t) = bert_reference();
    let ids0 = ids(&r["texts"][0]["input_ids"]);
    // a bare BertModel (no `bert.` prefix, no MLM head): hidden states and pooled output
    let d = bert_variant(|k| if k.starts_with("cls.") { None } else { Some(k.trim_start_matches("bert.").to_string()) });
    let cfg = hf::read_config(d.path()).unwrap().model;
    assert!(!cfg.mlm_head && cfg.pooler);
    let ferrolm_model::AnyModel::MaskedLm(m) = load_model(d.path(), &Device::Cpu).unwrap().model else { panic!() };
    let h = m.hidden(&row(&ids0), &MaskSpec::bidirectional(), None).unwrap();
    assert!(max_diff(&h.squeeze(0).unwrap(), &t["hidden.0"]) < 1e-4);
    assert!(max_diff(&m.pooled(&h).unwrap().squeeze(0).unwrap(), &t["pooled.0"]) < 1e-4);
    let e = m.mlm_logits(&h).unwrap_err().to_string();
    assert!(e.contains("no MLM head"), "{e}");
    // BertForMaskedLM as transformers saves it (no pooler): MLM works, pooling is refused
    let d = bert_variant(|k| if k.contains("pooler") { None } else { Some(k.to_string()) });
    let ferrolm_model::AnyModel::MaskedLm(m) = load_model(d.path(), &Device::Cpu).unwrap().model else { panic!() };
    assert!(!m.has_pooler());
    let h = m.hidden(&row(&ids0), &MaskSpec::bidirectional(), None).unwrap();
    assert!(max_diff(&m.mlm_logits(&h).unwrap().squeeze(0).unwrap(), &t["logits.0"]) < 1e-4);
    let e = m.pooled(&h).unwrap_err().to_string();
    assert!(e.contains("no pooler"), "{e}");
    // old TensorFlow-converted names (LayerNorm gamma/beta) read the same
    let d = bert_variant(|k| Some(k.replace("LayerNorm.weight", "LayerNorm.gamma").replace("LayerNorm.bias", "LayerNorm.beta")));
    let ferrolm_model::AnyModel::MaskedLm(m) = load_model(d.path(), &Device::Cpu).unwrap().model else { panic!() };
    let h = m.hidden(&row(&ids0), &MaskSpec::bidirectional(), None).unwrap();
    assert!(max_diff(&m.mlm_logits(&h).unwrap().squeeze(0).unwrap(), &t["logits.0"]) < 1e-4);
    // a token type beyond the model's two is an error, not a wrong lookup
    let bad = row(&vec![2u32; ids0.len()]);
    let e = m.hidden_segments(&row(&ids0), Some(&bad), &MaskSpec::bidirectional(), None).unwrap_err().to_string();
    assert!(e.contains("segment id 2"), "{e}");
}

#[test]
fn unsupported_bert_configs_are_clear_errors() {
    let cases = [
        ("\"hidden_act\": \"gelu\"", "\"hidden_act\": \"gelu\", \"position_embedding_type\": \"relative_key\"", "position_embedding_type \"relative_key\" is not supported"),
        ("\"hidden_act\": \"gelu\"", "\"hidden_act\": \"relu\"", "hidden_act \"relu\" is not supported"),
        ("\"is_decoder\": false", "\"is_decoder\": true", "is_decoder"),
        ("\"type_vocab_size\": 2", "\"type_vocab_size\": 3", "embeddings.token_type_embeddings.weight"),
        ("\"intermediate_size\": 64", "\"intermediate_size\": 48", "encoder.layer.0.intermediate.dense.weight"),
    ];
    for (from, to, want) in cases {
        let d = scratch_copy("bert_tiny");
        let cfg = std::fs::read_to_string(d.path().join("config.json")).unwrap();
        assert!(cfg.contains(from), "{from}");
        std::fs::write(d.path().join("config.json"), cfg.replace(from, to)).unwrap();
        let e = load_err(d.path());
        assert!(e.contains(want), "{to}: {e}");
        assert!(e.contains("config.json") || e.contains("model.safetensors"), "{to}: {e}");
    }
    // a classification checkpoint's extra head is named, not silently dropped
    let d = scratch_copy("bert_tiny");
    let w = d.path().join("model.safetensors");
    let mut tensors = candle_core::safetensors::load(&w, &Device::Cpu).unwrap();
    tensors.insert("classifier.weight".into(), Tensor::zeros((2, 32), candle_core::DType::F32, &Device::Cpu).unwrap());
    candle_core::safetensors::save(&tensors, &w).unwrap();
    let e = load_err(d.path());
    assert!(e.contains("classifier.weight") && e.contains("not used"), "{e}");
}

// ---- DistilBERT: BERT's post-norm core under other names, no token types, no pooler ----

#[test]
fn distilbert_matches_transformers_mlm_logits_hidden_states_and_mean_pooled_batch() {
    let dir = fixture("distilbert_tiny");
    let c = hf::read_config(&dir).unwrap();
    assert_eq!(c.family, HfFamily::DistilBert);
    let cfg = &c.model;
    assert!(cfg.post_norm && cfg.exact_gelu && cfg.tie_embeddings && cfg.mlm_head && !cfg.pooler && !cfg.nsp_head);
    assert_eq!((cfg.token_types(), cfg.norm_eps, cfg.ff_dim(), cfg.n_layers), (0, 1e-12, 64, 2));
    let m = masked_lm("distilbert_tiny");
    let r = reference(&dir);
    let t = candle_core::safetensors::load(dir.join("reference.safetensors"), &Device::Cpu).unwrap();
    let (logits_d, hidden_d, pooled_d) = per_text_diffs(&m, &text_ids(&r), &t);
    assert!(pooled_d.is_none());
    // a padded batch, mean-pooled over the real tokens (sentence-transformers' pooling)
    let (_, mean) = padded_batch(&m, &text_ids(&r), 0);
    let mean_d = max_diff(&mean, &t["mean_pooled"]);
    eprintln!("distilbert_tiny: max |Δ| vs transformers: MLM logits {logits_d:.2e}, last hidden {hidden_d:.2e}, padded batch mean-pooled {mean_d:.2e}");
    for (what, d) in [("MLM logits", logits_d), ("hidden states", hidden_d), ("mean-pooled batch", mean_d)] {
        assert!(d < 1e-4, "distilbert_tiny: {what} differ from transformers' by {d}");
    }
}

#[test]
fn distilbert_with_an_unknown_tensor_is_refused_by_name() {
    let d = scratch_copy("distilbert_tiny");
    let w = d.path().join("model.safetensors");
    let mut tensors = candle_core::safetensors::load(&w, &Device::Cpu).unwrap();
    tensors.insert("distilbert.transformer.layer.0.attention.extra.weight".into(), Tensor::zeros(4, candle_core::DType::F32, &Device::Cpu).unwrap());
    candle_core::safetensors::save(&tensors, &w).unwrap();
    let e = format!("{:#}", load_model(d.path(), &Device::Cpu).err().expect("an unused tensor must be refused"));
    assert!(e.contains("extra"), "{e}");
}

// ---- RoBERTa: BERT's core; positions counted from pad_token_id + 1, byte-level BPE ----

#[test]
fn roberta_matches_transformers_mlm_logits_hidden_pooled_and_mean_pooled_batch() {
    let dir = fixture("roberta_tiny");
    let c = hf::read_config(&dir).unwrap();
    assert_eq!((c.family, c.position_offset), (HfFamily::Roberta, 2));
    let cfg = &c.model;
    // 66 stored positions, the first two (pad_token_id + 1) never used by a text's tokens
    assert_eq!((cfg.max_seq_len, cfg.token_types(), cfg.norm_eps), (64, 1, 1e-5));
    assert!(cfg.post_norm && cfg.exact_gelu && cfg.mlm_head && cfg.pooler && !cfg.nsp_head);
    let m = masked_lm("roberta_tiny");
    let r = reference(&dir);
    let t = candle_core::safetensors::load(dir.join("reference.safetensors"), &Device::Cpu).unwrap();
    let (logits_d, hidden_d, pooled_d) = per_text_diffs(&m, &text_ids(&r), &t);
    let pooled_d = pooled_d.expect("roberta_tiny has a pooler");
    // padded with RoBERTa's <pad> (id 1)
    let (_, mean) = padded_batch(&m, &text_ids(&r), 1);
    let mean_d = max_diff(&mean, &t["mean_pooled"]);
    eprintln!("roberta_tiny: max |Δ| vs transformers: MLM logits {logits_d:.2e}, last hidden {hidden_d:.2e}, pooled {pooled_d:.2e}, padded batch mean-pooled {mean_d:.2e}");
    for (what, d) in [("MLM logits", logits_d), ("hidden states", hidden_d), ("pooled output", pooled_d), ("mean-pooled batch", mean_d)] {
        assert!(d < 1e-4, "roberta_tiny: {what} differ from transformers' by {d}");
    }
}

