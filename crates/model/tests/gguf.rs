//! ferrolm → GGUF → ferrolm: every modern-block family (llama with its q/k row permutation
//! and llama3 rope factors, qwen2 with biases, qwen3 with q/k norms) and GPT-2-style blocks
//! (llama.cpp's `gpt2`) come back with the same logits from an f32 file, within rounding
//! from f16, q8_0 and q4_k_m files; the metadata llama.cpp reads is there; a gpt2 file
//! written by llama.cpp's own `gguf` package (the committed fixture) loads with its reference
//! log-probs; a damaged file, a missing tensor or one of the wrong shape is a clear error.
//! (llama.cpp's own reading of the files is checked by `bench/gguf_llama_cpp.py`.)

use candle_core::quantized::{gguf_file, GgmlDType};
use candle_core::{Device, Tensor};
use ferrolm_model::attention::MaskSpec;
use ferrolm_model::gguf::{self, GgufQuant, GgufVocab};
use ferrolm_model::{init_weights, AnyModel, BlockStyle, ModelSpec, RopeScaling, TransformerConfig};
use std::path::{Path, PathBuf};

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
        perturb_norms_and_biases(&varmap);
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
                // product), the prompt's forward panels of the same blocks widened to f32: the
                // same numbers (both on inputs rounded to 8 bits), so the same logits up to
                // summation order — which may leave a value on a rounding boundary and move
                // that step's logits by a rounding step (under 1e-2; allowed on up to a
                // quarter of the steps, as in the GPT-2 test below: 2 of 40 unseeded runs
                // had two flips in 10 steps, each under 2e-3).
                let m = back.loaded.model.decoder("t").unwrap();
                let mut cache = m.new_cache();
                let n = ids.dim(1).unwrap();
                let mut flips = 0;
                for t in 0..n {
                    let step = m.forward(&ids.narrow(1, t, 1).unwrap(), &MaskSpec::causal(), Some(&mut cache)).unwrap();
                    let d = max_abs(&step.squeeze(1).unwrap(), &got.narrow(1, t, 1).unwrap().squeeze(1).unwrap());
                    if d >= 1e-4 {
                        flips += 1;
                        assert!(d < 1e-2 && flips <= n / 4, "{arch}: q8 decoding step {t} differs from the prompt pass by {d} ({flips} steps)");
                    }
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
    // GPT-2's split (ferrolm's own byte-level tokenizers): llama.cpp's "gpt-2", not its
    // "default", which splits punctuation apart first
    assert_eq!(m["tokenizer.ggml.pre"].to_string().unwrap(), "gpt-2");
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

fn gpt2_cfg(d: usize, tied: bool) -> TransformerConfig {
    TransformerConfig { vocab_size: 40, d_model: d, n_layers: 2, n_heads: 4, n_kv_heads: 4, max_seq_len: 32, block: BlockStyle::Gpt2, tie_embeddings: tied, ..Default::default() }
}

/// A fresh GPT-2-style model with non-trivial norms and biases.
fn gpt2_model(c: &TransformerConfig) -> (AnyModel, candle_nn::VarMap) {
    let spec = ModelSpec::Transformer(c.clone());
    let (model, varmap) = AnyModel::build_fresh(&spec, &Device::Cpu).unwrap();
    init_weights(&spec, &varmap, 5).unwrap();
    perturb_norms_and_biases(&varmap);
    (model, varmap)
}

/// Non-trivial norms and biases: noise uniform in ±0.3, seeded from each variable's name so
/// that every run checks the same model (candle's CPU randn cannot be seeded).
fn perturb_norms_and_biases(varmap: &candle_nn::VarMap) {
    for (name, var) in varmap.data().lock().unwrap().iter() {
        if name.ends_with(".bias") || name.contains("ln") {
            let mut s = name.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ b as u64).wrapping_mul(0x0100_0000_01b3));
            let noise: Vec<f32> = (0..var.as_tensor().elem_count())
                .map(|_| {
                    s = s.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
                    ((s >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 0.6
                })
                .collect();
            let noise = Tensor::from_vec(noise, var.as_tensor().shape(), &Device::Cpu).unwrap();
            var.set(&(var.as_tensor() + noise).unwrap()).unwrap();
        }
    }
}

#[test]
fn gpt2_blocks_export_as_llama_cpp_gpt2_and_load_back_with_the_same_logits() {
    let ids = Tensor::new(&[[3u32, 7, 1, 39, 0, 22, 22, 5, 9, 30, 31, 2]], &Device::Cpu).unwrap();
    // d_model 64: q4_k_m takes llama.cpp's fallbacks (Q5_0, Q8_0); 256: its K-quants
    for (d, tied, q4_tol) in [(64, true, 0.02), (64, false, 0.02), (256, true, 0.1)] {
        let c = gpt2_cfg(d, tied);
        let (model, varmap) = gpt2_model(&c);
        let want = model.decoder("t").unwrap().forward(&ids, &MaskSpec::causal(), None).unwrap();
        let dir = tempfile::tempdir().unwrap();
        for (quant, tol) in [(GgufQuant::F32, 0.0), (GgufQuant::F16, 2e-2), (GgufQuant::Q8_0, 8e-2), (GgufQuant::Q4KM, q4_tol)] {
            let what = format!("gpt2 d{d} tied {tied} {quant:?}");
            let path = dir.path().join(format!("m-{quant:?}.gguf"));
            let summary = gguf::write(&c, &varmap, &vocab(40), quant, &path).unwrap();
            assert_eq!(summary.arch, "gpt2");
            let content = gguf_file::Content::read(&mut std::fs::File::open(&path).unwrap()).unwrap();
            let m = &content.metadata;
            assert_eq!(m["general.architecture"].to_string().unwrap(), "gpt2");
            assert_eq!(m["gpt2.attention.layer_norm_epsilon"].to_f32().unwrap(), 1e-5);
            assert_eq!(m["gpt2.feed_forward_length"].to_u32().unwrap() as usize, 4 * d);
            assert!(!m.contains_key("gpt2.rope.freq_base"), "{what}: learned positions, no RoPE keys");
            let ti = &content.tensor_infos;
            // llama.cpp's gpt2 names and (outermost-first) shapes
            assert_eq!(ti["position_embd.weight"].shape.dims(), &[32, d]);
            assert_eq!(ti["blk.1.attn_qkv.weight"].shape.dims(), &[3 * d, d]);
            assert_eq!(ti["blk.1.attn_qkv.bias"].shape.dims(), &[3 * d]);
            assert_eq!(ti["blk.0.ffn_up.weight"].shape.dims(), &[4 * d, d]);
            assert_eq!(ti["blk.0.ffn_down.weight"].shape.dims(), &[d, 4 * d]);
            for n in ["blk.0.attn_norm.bias", "blk.0.ffn_norm.bias", "blk.0.attn_output.bias", "blk.0.ffn_down.bias", "output_norm.bias"] {
                assert!(ti.contains_key(n), "{what}: {n}");
            }
            assert_eq!(ti.contains_key("output.weight"), !tied, "{what}");
            assert_eq!(ti["position_embd.weight"].ggml_dtype, GgmlDType::F32, "{what}: the position table stays f32");
            if quant == GgufQuant::Q4KM {
                // llama.cpp's quantizer: attn_qkv (as attn_v) and ffn_down Q6_K in the last
                // eighth of the layers (of 2: the second), the output matrix (or the tied
                // token embedding) Q6_K; rows of 64 fall back (ffn_down's are 4·64 = 256 wide)
                let out = if tied { "token_embd.weight" } else { "output.weight" };
                let expect = if d == 256 {
                    [(out, GgmlDType::Q6K), ("blk.0.attn_qkv.weight", GgmlDType::Q4K), ("blk.1.attn_qkv.weight", GgmlDType::Q6K), ("blk.1.ffn_down.weight", GgmlDType::Q6K), ("blk.0.ffn_down.weight", GgmlDType::Q4K), ("blk.0.ffn_up.weight", GgmlDType::Q4K)]
                } else {
                    [(out, GgmlDType::Q8_0), ("blk.0.attn_qkv.weight", GgmlDType::Q5_0), ("blk.1.attn_qkv.weight", GgmlDType::Q8_0), ("blk.1.ffn_down.weight", GgmlDType::Q6K), ("blk.0.ffn_down.weight", GgmlDType::Q4K), ("blk.0.ffn_up.weight", GgmlDType::Q5_0)]
                };
                for (n, t) in expect {
                    assert_eq!(ti[n].ggml_dtype, t, "{what}: {n}");
                }
                if !tied {
                    assert_eq!(ti["token_embd.weight"].ggml_dtype, GgmlDType::Q5_0, "{what}");
                }
            }
            let back = gguf::load(&path, &Device::Cpu).unwrap();
            assert_eq!(back.loaded.spec, ModelSpec::Transformer(c.clone()), "{what}: the config survives");
            let dec = back.loaded.model.decoder("t").unwrap();
            let got = dec.forward(&ids, &MaskSpec::causal(), None).unwrap();
            let dlogit = max_abs(&want, &got);
            eprintln!("{what}: max |Δ logit| {dlogit}");
            assert!(dlogit <= tol, "{what}: logits differ by {dlogit}");
            if quant != GgufQuant::F32 {
                assert!(dlogit > 0.0, "{what}: the file rounds the weights");
                // decoding token by token reads the file's blocks where ferrolm keeps them
                // (Q8_0 layers round their inputs to 8 bits in both passes; a value that
                // float summation order leaves on a rounding boundary may round the other
                // way and move that step's logits by a rounding step, under 1e-2: at most
                // a quarter of the steps, every other step within 1e-3.)
                let mut cache = dec.new_cache();
                let mut flips = 0;
                for t in 0..ids.dim(1).unwrap() {
                    let step = dec.forward(&ids.narrow(1, t, 1).unwrap(), &MaskSpec::causal(), Some(&mut cache)).unwrap();
                    let e = max_abs(&step.squeeze(1).unwrap(), &got.narrow(1, t, 1).unwrap().squeeze(1).unwrap());
                    if e >= 1e-3 {
                        flips += 1;
                        assert!(e < 1e-2 && flips <= ids.dim(1).unwrap() / 4 && quant != GgufQuant::F16, "{what}: decoding step {t} differs from the prompt pass by {e} ({flips} steps)");
                    }
                }
            }
        }
    }
}

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/gguf/gpt2_llamacpp")
}

#[test]
fn a_llama_cpp_gpt2_file_loads_with_its_reference_logits() {
    // written by llama.cpp's gguf package (bench/gguf_gpt2_fixture.py), no ferrolm keys:
    // the config comes from the gpt2.* hparams and the tensors' names and shapes
    let dir = fixture();
    let reference: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(dir.join("reference.json")).unwrap()).unwrap();
    let back = gguf::load(&dir.join("model.gguf"), &Device::Cpu).unwrap();
    assert!(back.tokenizer_json.is_none());
    let ModelSpec::Transformer(c) = &back.loaded.spec else { panic!("a transformer") };
    assert_eq!((c.block, c.d_model, c.n_layers, c.n_heads, c.d_ff, c.max_seq_len, c.vocab_size, c.tie_embeddings), (BlockStyle::Gpt2, 64, 2, 4, 256, 32, 263, true));
    for (n, t) in [("token_embd.weight", GgmlDType::F16), ("blk.0.attn_qkv.weight", GgmlDType::Q8_0), ("blk.1.attn_output.weight", GgmlDType::Q5_0), ("blk.0.ffn_down.weight", GgmlDType::F32)] {
        assert_eq!(back.tensor_types[n], t, "{n}");
    }
    let ids: Vec<u32> = reference["input_ids"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as u32).collect();
    let n = ids.len();
    let dec = back.loaded.model.decoder("t").unwrap();
    let logits = dec.forward(&Tensor::new(ids.as_slice(), &Device::Cpu).unwrap().unsqueeze(0).unwrap(), &MaskSpec::causal(), None).unwrap();
    let lp = candle_nn::ops::log_softmax(&logits.squeeze(0).unwrap(), 1).unwrap().to_vec2::<f32>().unwrap();
    let want: Vec<f64> = reference["logprobs"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect();
    let greedy: Vec<usize> = reference["greedy"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as usize).collect();
    let last: Vec<f64> = reference["last_logprobs"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect();
    let mut worst = 0f64;
    for (i, w) in want.iter().enumerate() {
        worst = worst.max((lp[i][ids[i + 1] as usize] as f64 - w).abs());
    }
    for (a, b) in lp[n - 1].iter().zip(&last) {
        worst = worst.max((*a as f64 - b).abs());
    }
    eprintln!("llama.cpp-layout gpt2 fixture: max |Δ log-prob| vs the float64 reference {worst:.2e}");
    assert!(worst < 2e-3, "log-probs differ from the reference by {worst}");
    let argmax: Vec<usize> = lp.iter().map(|r| r.iter().enumerate().max_by(|a, b| a.1.total_cmp(b.1)).unwrap().0).collect();
    assert_eq!(argmax, greedy);
    // the same numbers decoding token by token, on the file's Q8_0 / F16 blocks
    let mut cache = dec.new_cache();
    for (t, &id) in ids.iter().enumerate() {
        let step = dec.forward(&Tensor::new(&[[id]], &Device::Cpu).unwrap(), &MaskSpec::causal(), Some(&mut cache)).unwrap();
        let e = max_abs(&step.squeeze(1).unwrap().squeeze(0).unwrap(), &logits.squeeze(0).unwrap().get(t).unwrap());
        assert!(e < 1e-3, "decoding step {t} differs from the prompt pass by {e}");
    }
    // and its tokenizer keys: a byte-level vocabulary with llama.cpp's gpt-2 split
    let tok = gguf::read_tokenizer(&dir.join("model.gguf")).unwrap();
    assert_eq!(tok.pre, "gpt-2");
    assert_eq!(tok.vocab.unwrap().tokens.len(), 263);
}

/// The fixture rewritten with `edit` applied to its tensors.
fn rewrite_fixture(out: &Path, edit: impl Fn(&str, candle_core::quantized::QTensor) -> Option<candle_core::quantized::QTensor>) {
    let src = fixture().join("model.gguf");
    let mut f = std::fs::File::open(&src).unwrap();
    let content = gguf_file::Content::read(&mut f).unwrap();
    let mut names: Vec<&String> = content.tensor_infos.keys().collect();
    names.sort();
    let tensors: Vec<(String, candle_core::quantized::QTensor)> =
        names.into_iter().filter_map(|n| edit(n, content.tensor(&mut f, n, &Device::Cpu).unwrap()).map(|t| (n.clone(), t))).collect();
    let meta: Vec<(&str, &gguf_file::Value)> = content.metadata.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let refs: Vec<(&str, &candle_core::quantized::QTensor)> = tensors.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let mut w = std::fs::File::create(out).unwrap();
    gguf_file::write(&mut w, &meta, &refs).unwrap();
}

#[test]
fn a_gpt2_file_missing_a_tensor_or_with_a_wrong_shape_is_an_error_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.gguf");
    rewrite_fixture(&missing, |n, t| (n != "blk.1.ffn_down.weight").then_some(t));
    let err = format!("{:#}", gguf::load(&missing, &Device::Cpu).err().expect("a missing tensor is refused"));
    assert!(err.contains("no tensor blk.1.ffn_down.weight") && err.contains("missing.gguf"), "{err}");

    let wrong = dir.path().join("wrong.gguf");
    rewrite_fixture(&wrong, |n, t| {
        if n == "blk.0.attn_qkv.weight" {
            let z = Tensor::zeros((3 * 64, 32), candle_core::DType::F32, &Device::Cpu).unwrap();
            Some(candle_core::quantized::QTensor::quantize(&z, GgmlDType::F32).unwrap())
        } else {
            Some(t)
        }
    });
    let err = format!("{:#}", gguf::load(&wrong, &Device::Cpu).err().expect("a wrong shape is refused"));
    assert!(err.contains("tensor blk.0.attn_qkv.weight has shape [192, 32]") && err.contains("[192, 64]"), "{err}");

    // an unchanged copy loads (the rewrite itself is sound)
    let same = dir.path().join("same.gguf");
    rewrite_fixture(&same, |_, t| Some(t));
    gguf::load(&same, &Device::Cpu).unwrap();
}

#[test]
fn exact_gelu_gpt2_blocks_are_refused_by_gguf_export() {
    let c = TransformerConfig { exact_gelu: true, ..gpt2_cfg(64, true) };
    let (_, varmap) = gpt2_model(&gpt2_cfg(64, true));
    let dir = tempfile::tempdir().unwrap();
    let err = gguf::write(&c, &varmap, &vocab(40), GgufQuant::F32, &dir.path().join("x.gguf")).unwrap_err().to_string();
    assert!(err.contains("tanh approximation"), "{err}");
}
