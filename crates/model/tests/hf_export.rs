//! ferrolm → Hugging Face checkpoint → ferrolm: the exported folder loads back through the
//! registry with the same logits, for every block style and option mix that has a
//! transformers equivalent (GPT-2, Llama, Qwen2, Qwen3). (transformers' own reading of the
//! export is checked by `bench/hf_fixtures.py --check-export`.)

use candle_core::{Device, Tensor};
use ferrolm_model::attention::MaskSpec;
use ferrolm_model::hf::{self, HfFamily};
use ferrolm_model::{init_weights, AnyModel, BlockStyle, ModelKind, ModelSpec, RopeScaling, TransformerConfig};

fn cfg(block: BlockStyle) -> TransformerConfig {
    TransformerConfig {
        vocab_size: 50,
        d_model: 16,
        n_layers: 2,
        n_heads: 4,
        n_kv_heads: if block == BlockStyle::Modern { 2 } else { 4 },
        max_seq_len: 32,
        block,
        ..Default::default()
    }
}

#[test]
fn export_then_load_gives_the_same_logits() {
    let modern = cfg(BlockStyle::Modern);
    let cases = [
        (cfg(BlockStyle::Gpt2), HfFamily::Gpt2),
        (TransformerConfig { tie_embeddings: false, ..cfg(BlockStyle::Gpt2) }, HfFamily::Gpt2),
        (modern.clone(), HfFamily::Llama),
        (
            TransformerConfig {
                tie_embeddings: false,
                rope_scaling: Some(RopeScaling::Llama3 { factor: 4.0, low_freq_factor: 1.0, high_freq_factor: 4.0, original_max_position_embeddings: 8 }),
                ..modern.clone()
            },
            HfFamily::Llama,
        ),
        (TransformerConfig { qkv_bias: Some(true), ..modern.clone() }, HfFamily::Qwen2),
        (TransformerConfig { qk_norm: true, head_size: 6, ..modern.clone() }, HfFamily::Qwen3),
    ];
    let ids = Tensor::new(&[[3u32, 7, 1, 49, 0, 22, 22, 5, 9, 30]], &Device::Cpu).unwrap();
    for (c, family) in cases {
        let spec = ModelSpec::Transformer(c.clone());
        let (model, varmap) = AnyModel::build_fresh(&spec, &Device::Cpu).unwrap();
        init_weights(&spec, &varmap, 5).unwrap();
        // non-zero biases and gains, so a mix-up of them shows
        for (name, var) in varmap.data().lock().unwrap().iter() {
            if name.ends_with(".bias") || name.contains("ln") {
                let noise = var.as_tensor().randn_like(0.0, 0.3).unwrap();
                var.set(&(var.as_tensor() + noise).unwrap()).unwrap();
            }
        }
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(hf::export::write_checkpoint(&c, &varmap, dir.path(), None, Some(0)).unwrap(), family);
        assert!(hf::is_hf_folder(dir.path()));
        let back = ferrolm_model::load_model(dir.path(), &Device::Cpu).unwrap();
        assert_eq!(back.spec, spec, "{family:?}: the config survives the round trip");
        let a = model.decoder("t").unwrap().forward(&ids, &MaskSpec::causal(), None).unwrap();
        let b = back.model.decoder("t").unwrap().forward(&ids, &MaskSpec::causal(), None).unwrap();
        let d: f32 = (a - b).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar().unwrap();
        assert_eq!(d, 0.0, "{family:?}: logits differ by {d}");
    }
}

#[test]
fn models_without_a_transformers_equivalent_are_refused() {
    let bad = [
        TransformerConfig { kind: ModelKind::Prefix, ..cfg(BlockStyle::Modern) },
        TransformerConfig { qkv_bias: Some(false), attn_out_bias: Some(true), ..cfg(BlockStyle::Modern) },
        TransformerConfig { qk_norm: true, ..cfg(BlockStyle::Gpt2) },
    ];
    for c in bad {
        assert!(hf::export::export_family(&c).is_err(), "{c:?}");
    }
}

#[test]
fn generation_config_defaults_are_read_back() {
    let dir = tempfile::tempdir().unwrap();
    let c = cfg(BlockStyle::Modern);
    let spec = ModelSpec::Transformer(c.clone());
    let (_, varmap) = AnyModel::build_fresh(&spec, &Device::Cpu).unwrap();
    hf::export::write_checkpoint(&c, &varmap, dir.path(), None, Some(0)).unwrap();
    hf::export::write_generation_config(dir.path(), &[0, 7]).unwrap();
    let g = hf::generation_defaults(dir.path()).unwrap();
    assert_eq!((g.eos_token_ids, g.do_sample, g.pad_token_id), (vec![0, 7], Some(false), Some(0)));
}
