//! A Hugging Face BERT folder as the embedding model (`rag index --embed`, `serve
//! --embed-model`): the Embedder's vectors equal transformers' mean-pooled (and pooled)
//! outputs on the transformers-written fixture of ferrolm-model (no Python here).

use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use ferrolm_qa::{Embedder, Pooling};
use serde_json::Value;

fn bert_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../model/tests/fixtures/hf/bert_tiny")
}

fn reference() -> (Vec<String>, std::collections::HashMap<String, Tensor>) {
    let dir = bert_dir();
    let r: Value = serde_json::from_str(&std::fs::read_to_string(dir.join("reference.json")).unwrap()).unwrap();
    let texts = r["texts"].as_array().unwrap().iter().map(|t| t["text"].as_str().unwrap().to_string()).collect();
    (texts, candle_core::safetensors::load(dir.join("reference.safetensors"), &Device::Cpu).unwrap())
}

fn max_diff(got: &[Vec<f32>], want: &Tensor) -> f64 {
    let want: Vec<Vec<f32>> = want.to_vec2().unwrap();
    assert_eq!(got.len(), want.len());
    got.iter().zip(&want).flat_map(|(a, b)| {
        assert_eq!(a.len(), b.len());
        a.iter().zip(b).map(|(x, y)| (x - y).abs() as f64)
    }).fold(0.0, f64::max)
}

#[test]
fn a_bert_folder_embeds_as_transformers_mean_pooling_and_pooler() {
    let (texts, t) = reference();
    let texts: Vec<&str> = texts.iter().map(String::as_str).collect();
    let mean = Embedder::load(&bert_dir(), Pooling::Mean, &Device::Cpu).unwrap();
    assert_eq!((mean.dim(), mean.bos_len(), mean.max_seq_len()), (32, 2, 64));
    let d = max_diff(&mean.embed(&texts).unwrap(), &t["mean_pooled"]);
    let pooled = Embedder::load(&bert_dir(), Pooling::Pooled, &Device::Cpu).unwrap();
    let p = max_diff(&pooled.embed(&texts).unwrap(), &t["pooled_batch"]);
    eprintln!("bert_tiny Embedder: max |Δ| vs transformers: mean-pooled {d:.2e}, pooled {p:.2e}");
    assert!(d < 1e-4 && p < 1e-4, "mean {d}, pooled {p}");
    // the id names the folder, the pooling and the weights
    assert!(mean.id().starts_with("ferrolm:") && mean.id().contains("#mean#"), "{}", mean.id());
    assert_ne!(mean.id(), pooled.id());
    // token-array input (as /v1/embeddings takes it) is framed the same way
    let ids: Vec<Vec<u32>> = texts.iter().map(|s| mean.tokens(s)).collect();
    assert_eq!(mean.embed_tokens(&ids, 64).unwrap(), mean.embed(&texts).unwrap());
    // a cut input still ends with [SEP]: 5 tokens = [CLS] + 3 + [SEP]
    let cut = mean.embed_tokens(&ids[..1], 5).unwrap();
    let short: Vec<Vec<u32>> = vec![ids[0][..3].to_vec()];
    assert_eq!(cut, mean.embed_tokens(&short, 64).unwrap());
}

#[test]
fn pooling_a_bert_without_pooler_is_a_clear_error() {
    let tmp = tempfile::tempdir().unwrap();
    for e in std::fs::read_dir(bert_dir()).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), tmp.path().join(e.file_name())).unwrap();
    }
    let w = tmp.path().join("model.safetensors");
    let mut tensors = candle_core::safetensors::load(&w, &Device::Cpu).unwrap();
    tensors.retain(|k, _| !k.contains("pooler"));
    candle_core::safetensors::save(&tensors, &w).unwrap();
    let e = Embedder::load(tmp.path(), Pooling::Pooled, &Device::Cpu).map(|_| ()).unwrap_err();
    assert!(format!("{e:#}").contains("no pooler") || format!("{e:#}").contains("has none"), "{e:#}");
    assert!(Embedder::load(tmp.path(), Pooling::Mean, &Device::Cpu).is_ok());
}
