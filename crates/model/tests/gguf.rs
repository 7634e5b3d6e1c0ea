//! ferrolm → GGUF → ferrolm: every modern-block family (llama with its q/k row permutation
//! and llama3 rope factors, qwen2 with biases, qwen3 with q/k norms) comes back with the
//! same logits from an f32 file, within rounding from f16 and q8_0 files; the metadata
//! llama.cpp reads is there; a damaged file is a clear error. (llama.cpp's own reading of
//! the files is checked by `bench/gguf_llama_cpp.py`.)

use candle_core::quantized::{gguf_file, GgmlDType};
use candle_core::{Device, Tensor};
use ferrolm_model::attention::MaskSpec;
use ferrolm_model::gguf::{self, GgufQuant, GgufVocab};
use ferrolm_model::{init_weights, AnyModel, BlockStyle, ModelSpec, RopeScaling, TransformerConfig};

fn cfg() -> TransformerConfig {
    TransformerConfig { vocab_size: 40, d_model: 64, n_layers: 2, n_heads: 4, n_kv_heads: 2, max_seq_len: 32, block: BlockStyle::Modern, ..Default::default() }
}

fn vocab(n: usize) -> GgufVocab {
    GgufVocab {
        tokens: (0..n).map(|i| format!("t{i}")).collect(),
        token_types: (0..n).map(|i| if i == 0 { 3 } else { 1 }).collect(),
        merges: vec!["t 1".into()],
        bos: None,
        eos: Some(0),
        chat_template: Some("{% for m in messages %}{{ m.content }}{% endfor %}".into()),
        tokenizer_json: Some("{}".into()),
        ..Default::default()
    }
}

fn max_abs(a: &Tensor, b: &Tensor) -> f32 {
    (a - b).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar().unwrap()
}

#[test]
fn gguf_round_trip_keeps_the_logits_for_every_family() {
    let base = cfg();
    let cases = [
        ("llama", base.clone()),
        (
            "llama",
            TransformerConfig {
                tie_embeddings: false,
                rope_scaling: Some(RopeScaling::Llama3 { factor: 4.0, low_freq_factor: 1.0, high_freq_factor: 4.0, original_max_position_embeddings: 8 }),
                ..base.clone()
            },
        ),
        ("qwen2", TransformerConfig { qkv_bias: Some(true), ..base.clone() }),
        ("qwen3", TransformerConfig { qk_norm: true, ..base.clone() }),
    ];
    let ids = Tensor::new(&[[3u32, 7, 1, 39, 0, 22, 22, 5, 9, 30]], &Device::Cpu).unwrap();
    for (arch, c) in cases {
        let spec = ModelSpec::Transformer(c.clone());
        let (model, varmap) = AnyModel::build_fresh(&spec, &Device::Cpu).unwrap();
        init_weights(&spec, &varmap, 11).unwrap();
        for (name, var) in varmap.data().lock().unwrap().iter() {
            if name.ends_with(".bias") || name.contains("ln") {
                let noise = var.as_tensor().randn_like(0.0, 0.3).unwrap();
                var.set(&(var.as_tensor() + noise).unwrap()).unwrap();
            }
        }
        let want = model.decoder("t").unwrap().forward(&ids, &MaskSpec::causal(), None).unwrap();
        let dir = tempfile::tempdir().unwrap();
        for (quant, tol) in [(GgufQuant::F32, 0.0), (GgufQuant::F16, 2e-2), (GgufQuant::Q8_0, 8e-2)] {
            let path = dir.path().join(format!("m-{quant:?}.gguf"));
            let summary = gguf::write(&c, &varmap, &vocab(40), quant, &path).unwrap();
            assert_eq!(summary.arch, arch);
            assert!(summary.fallbacks.is_empty(), "{:?}", summary.fallbacks);
            let back = gguf::load(&path, &Device::Cpu).unwrap();
            assert_eq!(back.loaded.spec, spec, "{arch}: the config survives");
            assert_eq!(back.tokenizer_json.as_deref(), Some("{}"));
            let got = back.loaded.model.decoder("t").unwrap().forward(&ids, &MaskSpec::causal(), None).unwrap();
            let d = max_abs(&want, &got);
            assert!(d <= tol, "{arch} {quant:?}: logits differ by {d}");
            if quant == GgufQuant::Q8_0 {
                assert!(d > 0.0, "q8_0 rounds the weights");
                assert_eq!(back.tensor_types["blk.0.attn_q.weight"], GgmlDType::Q8_0);
                assert_eq!(back.tensor_types["blk.0.attn_norm.weight"], GgmlDType::F32);
                // Token-by-token decoding reads the layers' Q8_0 blocks (one row per
                // product), the prompt's forward the f32 values of the same blocks: the
                // same numbers, so the same logits up to summation order.
                let m = back.loaded.model.decoder("t").unwrap();
                let mut cache = m.new_cache();
                let n = ids.dim(1).unwrap();
                for t in 0..n {
                    let step = m.forward(&ids.narrow(1, t, 1).unwrap(), &MaskSpec::causal(), Some(&mut cache)).unwrap();
                    let d = max_abs(&step.squeeze(1).unwrap(), &got.narrow(1, t, 1).unwrap().squeeze(1).unwrap());
                    assert!(d < 1e-4, "{arch}: q8 decoding step {t} differs from the prompt pass by {d}");
                }
            }
        }
    }
}

#[test]
fn the_metadata_llama_cpp_reads_is_written() {
    let c = cfg();
    let spec = ModelSpec::Transformer(c.clone());
    let (_, varmap) = AnyModel::build_fresh(&spec, &Device::Cpu).unwrap();
    init_weights(&spec, &varmap, 1).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.gguf");
    gguf::write(&c, &varmap, &vocab(40), GgufQuant::F16, &path).unwrap();
    let mut f = std::fs::File::open(&path).unwrap();
    let content = gguf_file::Content::read(&mut f).unwrap();
    let m = &content.metadata;
    assert_eq!(m["general.architecture"].to_string().unwrap(), "llama");
    assert_eq!(m["llama.block_count"].to_u32().unwrap(), 2);
    assert_eq!(m["llama.attention.head_count_kv"].to_u32().unwrap(), 2);
    assert_eq!(m["llama.embedding_length"].to_u32().unwrap(), 64);
    assert_eq!(m["llama.rope.dimension_count"].to_u32().unwrap(), 16);
    assert_eq!(m["tokenizer.ggml.model"].to_string().unwrap(), "gpt2");
    assert_eq!(m["tokenizer.ggml.tokens"].to_vec().unwrap().len(), 40);
    assert_eq!(m["tokenizer.ggml.eos_token_id"].to_u32().unwrap(), 0);
    assert!(m.contains_key("tokenizer.chat_template"));
    // tied embeddings: no output matrix; f16 matrices, f32 norms
    assert!(!content.tensor_infos.contains_key("output.weight"));
    assert_eq!(content.tensor_infos["blk.1.ffn_down.weight"].ggml_dtype, GgmlDType::F16);
    assert_eq!(content.tensor_infos["output_norm.weight"].ggml_dtype, GgmlDType::F32);
    // GGML lists dimensions innermost first; candle's reader gives them back outermost first
    assert_eq!(content.tensor_infos["token_embd.weight"].shape.dims(), &[40, 64]);
}

#[test]
fn a_truncated_or_foreign_file_is_a_clear_error() {
    let c = cfg();
    let spec = ModelSpec::Transformer(c.clone());
    let (_, varmap) = AnyModel::build_fresh(&spec, &Device::Cpu).unwrap();
    init_weights(&spec, &varmap, 1).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.gguf");
    gguf::write(&c, &varmap, &vocab(40), GgufQuant::F32, &path).unwrap();
    let bytes = std::fs::read(&path).unwrap();
    for cut in [10, bytes.len() / 3, bytes.len() - 100] {
        let p = dir.path().join(format!("cut{cut}.gguf"));
        std::fs::write(&p, &bytes[..cut]).unwrap();
        let err = gguf::load(&p, &Device::Cpu).err().expect("a truncated file is refused");
        assert!(format!("{err:#}").contains(&format!("cut{cut}.gguf")), "{err:#}");
    }
    let p = dir.path().join("text.gguf");
    std::fs::write(&p, "not a gguf file at all").unwrap();
    assert!(format!("{:#}", gguf::load(&p, &Device::Cpu).err().unwrap()).contains("not a readable GGUF file"));
    // a vocabulary that does not match the model
    let err = gguf::write(&c, &varmap, &vocab(39), GgufQuant::F32, &dir.path().join("x.gguf")).unwrap_err().to_string();
    assert!(err.contains("39 tokens"), "{err}");
    assert!(!dir.path().join("x.gguf").exists());
}
