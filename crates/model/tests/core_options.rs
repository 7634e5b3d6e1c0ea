//! The core options pretrained checkpoints need (explicit head size, projection biases,
//! q/k norms, Llama 3 RoPE scaling): parameter count, KV cache == recompute, and configs
//! without them read and write exactly as before.

use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use ferrolm_model::attention::MaskSpec;
use ferrolm_model::{init::init_params, BlockStyle, ModelSpec, RopeScaling, Transformer, TransformerConfig};

fn with_options() -> TransformerConfig {
    TransformerConfig {
        vocab_size: 41,
        d_model: 24,
        n_layers: 2,
        n_heads: 4,
        n_kv_heads: 2,
        head_size: 10,
        qkv_bias: Some(true),
        attn_out_bias: Some(false),
        qk_norm: true,
        rope_scaling: Some(RopeScaling::Llama3 { factor: 8.0, low_freq_factor: 1.0, high_freq_factor: 4.0, original_max_position_embeddings: 8 }),
        max_seq_len: 32,
        block: BlockStyle::Modern,
        tie_embeddings: false,
        ..Default::default()
    }
}

fn build(cfg: &TransformerConfig) -> (Transformer, VarMap) {
    let vm = VarMap::new();
    let m = Transformer::new(cfg, VarBuilder::from_varmap(&vm, DType::F32, &Device::Cpu)).unwrap();
    init_params(&vm, cfg.n_layers, 3).unwrap();
    (m, vm)
}

#[test]
fn parameter_count_matches_with_every_option() {
    let base = with_options();
    for cfg in [
        base.clone(),
        TransformerConfig { qk_norm: false, head_size: 0, ..base.clone() },
        TransformerConfig { qkv_bias: Some(false), attn_out_bias: Some(true), ..base.clone() },
        TransformerConfig { block: BlockStyle::Gpt2, n_kv_heads: 4, rope_scaling: None, qkv_bias: Some(false), ..base.clone() },
    ] {
        let (_, vm) = build(&cfg);
        let built: usize = vm.all_vars().iter().map(|v| v.elem_count()).sum();
        assert_eq!(built, cfg.num_params(), "{cfg:?}");
    }
    let vars = build(&base).1.data().lock().unwrap().keys().cloned().collect::<Vec<_>>();
    assert!(vars.iter().any(|k| k == "decoder.blocks.0.attn.ln_q.weight"));
    assert!(vars.iter().any(|k| k == "decoder.blocks.1.attn.qkv.bias"));
    assert!(!vars.iter().any(|k| k == "decoder.blocks.0.attn.proj.bias"));
}

#[test]
fn kv_cache_equals_recomputation_with_every_option() {
    let (m, _) = build(&with_options());
    let seq: Vec<u32> = (0..20).map(|i| (i * 7 % 41) as u32).collect();
    let t = |v: &[u32]| Tensor::new(v, &Device::Cpu).unwrap().unsqueeze(0).unwrap();
    let full = m.forward(&t(&seq), &MaskSpec::causal(), None).unwrap();
    let mut cache = m.new_cache();
    let mut parts = vec![m.forward(&t(&seq[..9]), &MaskSpec::causal(), Some(&mut cache)).unwrap()];
    for i in 9..seq.len() {
        parts.push(m.forward(&t(&seq[i..i + 1]), &MaskSpec::causal(), Some(&mut cache)).unwrap());
    }
    let inc = Tensor::cat(&parts, 1).unwrap();
    let d: f32 = (full - inc).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar().unwrap();
    assert!(d < 1e-4, "cache vs recompute: {d}");
}

#[test]
fn rope_scaling_changes_the_low_frequencies_only() {
    let mut inv = ferrolm_model::attention::Rope::inv_freq(8, 10_000.0);
    let orig = inv.clone();
    RopeScaling::Llama3 { factor: 8.0, low_freq_factor: 1.0, high_freq_factor: 4.0, original_max_position_embeddings: 16 }.apply(&mut inv);
    // wavelengths 2π·(1, 10, 100, 1000): 6.3 is between 16/4 and 16/1 (smoothed), the rest are slowed 8×
    assert_eq!(inv[1], orig[1] / 8.0);
    assert_eq!(inv[3], orig[3] / 8.0);
    assert!(inv[0] < orig[0] && inv[0] > orig[0] / 8.0);
}

#[test]
fn configs_without_the_options_round_trip_unchanged() {
    let plain = TransformerConfig::default();
    let text = toml::to_string(&ModelSpec::Transformer(plain.clone()).to_value()).unwrap();
    for key in ["head_size", "qkv_bias", "attn_out_bias", "qk_norm", "rope_scaling"] {
        assert!(!text.contains(key), "{key} written for a plain config:\n{text}");
    }
    let spec = ModelSpec::Transformer(with_options());
    let back = ModelSpec::from_value(&spec.to_value()).unwrap();
    assert_eq!(back, spec);
    assert!(ModelSpec::Transformer(TransformerConfig { block: BlockStyle::Gpt2, n_kv_heads: 4, ..with_options() }).validate().unwrap_err().contains("rope_scaling"));
}

/// BERT's options on the masked LM: post-norm blocks, erf GELU, token types, and the MLM
/// head / pooler a checkpoint may lack.
fn bert_like() -> TransformerConfig {
    TransformerConfig {
        kind: ferrolm_model::ModelKind::MaskedLm,
        vocab_size: 41,
        d_model: 24,
        n_layers: 2,
        n_heads: 4,
        n_kv_heads: 4,
        max_seq_len: 32,
        block: BlockStyle::Gpt2,
        norm_eps: 1e-12,
        post_norm: true,
        exact_gelu: true,
        type_vocab_size: 3,
        ..Default::default()
    }
}

fn build_mlm(cfg: &TransformerConfig) -> (ferrolm_model::MaskedLm, VarMap) {
    let vm = VarMap::new();
    let m = ferrolm_model::MaskedLm::new(cfg, VarBuilder::from_varmap(&vm, DType::F32, &Device::Cpu)).unwrap();
    init_params(&vm, cfg.n_layers, 3).unwrap();
    (m, vm)
}

#[test]
fn masked_lm_options_count_build_and_train() {
    let base = bert_like();
    for cfg in [
        base.clone(),
        TransformerConfig { mlm_head: false, ..base.clone() },
        TransformerConfig { pooler: false, tie_embeddings: false, ..base.clone() },
        TransformerConfig { mlm_head: false, tie_embeddings: false, type_vocab_size: 0, ..base.clone() },
        TransformerConfig { nsp_head: true, type_vocab_size: 0, post_norm: false, exact_gelu: false, ..base.clone() },
    ] {
        let (_, vm) = build_mlm(&cfg);
        let built: usize = vm.all_vars().iter().map(|v| v.elem_count()).sum();
        assert_eq!(built, cfg.num_params(), "{cfg:?}");
        let spec = ModelSpec::Transformer(cfg.clone());
        assert_eq!(ModelSpec::from_value(&spec.to_value()).unwrap(), spec);
    }
    let (m, vm) = build_mlm(&base);
    let vars: Vec<String> = vm.data().lock().unwrap().keys().cloned().collect();
    assert!(vars.iter().any(|k| k == "ln_emb.weight") && vars.iter().any(|k| k == "wtt.weight"));
    assert!(!vars.iter().any(|k| k.contains("ln_f")), "post-norm stacks have no final norm: {vars:?}");
    // erf GELU changes the numbers (the tanh approximation is another model)
    let ids = Tensor::new(&[[3u32, 9, 17, 4, 22, 8]], &Device::Cpu).unwrap();
    let h = m.hidden(&ids, &MaskSpec::bidirectional(), None).unwrap();
    let (tanh, _) = {
        let cfg = TransformerConfig { exact_gelu: false, ..base.clone() };
        let vm2 = VarMap::new();
        let m2 = ferrolm_model::MaskedLm::new(&cfg, VarBuilder::from_varmap(&vm2, DType::F32, &Device::Cpu)).unwrap();
        init_params(&vm2, cfg.n_layers, 3).unwrap();
        (m2.hidden(&ids, &MaskSpec::bidirectional(), None).unwrap(), vm2)
    };
    let diff = (&h - &tanh).unwrap().abs().unwrap().max_keepdim(2).unwrap().max_keepdim(1).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap()[0];
    assert!(diff > 0.0);
    // gradients reach every variable through post-norm blocks, erf GELU and token types
    let types = Tensor::new(&[[0u32, 0, 1, 1, 2, 2]], &Device::Cpu).unwrap();
    let h = m.hidden_segments(&ids, Some(&types), &MaskSpec::bidirectional(), None).unwrap();
    let loss = (m.mlm_logits(&h).unwrap().sqr().unwrap().mean_all().unwrap() + m.pooled(&h).unwrap().sum_all().unwrap()).unwrap();
    let grads = loss.backward().unwrap();
    for (name, var) in vm.data().lock().unwrap().iter() {
        let g = grads.get(var.as_tensor()).unwrap_or_else(|| panic!("no gradient for {name}"));
        assert!(g.abs().unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap() > 0.0, "zero gradient for {name}");
    }
}

#[test]
fn masked_lm_options_are_refused_where_they_do_not_apply() {
    let causal = TransformerConfig { kind: ferrolm_model::ModelKind::Causal, ..bert_like() };
    assert!(causal.validate().unwrap_err().contains("post_norm"));
    let modern = TransformerConfig { block: BlockStyle::Modern, post_norm: false, type_vocab_size: 0, ..bert_like() };
    assert!(modern.validate().unwrap_err().contains("exact_gelu"));
    let one_type = TransformerConfig { nsp_head: true, type_vocab_size: 1, ..bert_like() };
    assert!(one_type.validate().unwrap_err().contains("nsp_head"));
    let decoder_types = TransformerConfig { kind: ferrolm_model::ModelKind::Causal, post_norm: false, exact_gelu: false, ..bert_like() };
    assert!(decoder_types.validate().unwrap_err().contains("type_vocab_size"));
}
