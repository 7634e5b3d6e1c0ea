//! `/v1/embeddings` from an encoder served beside the chat model: the same vectors as
//! ferrolm-qa's Embedder (which `rag index --embed` stores), at unit length, as floats or
//! base64, for strings and token arrays; bad input is a 400.

mod common;

use base64::Engine as _;
use candle_core::Device;
use common::{tiny_run, Server};
use ferrolm_qa::{Embedder, Pooling};
use ferrolm_serve::ServeConfig;
use serde_json::{json, Value};

fn floats(v: &Value) -> Vec<f32> {
    v.as_array().unwrap().iter().map(|x| x.as_f64().unwrap() as f32).collect()
}

#[test]
fn embeddings_equal_the_embedder_and_bad_input_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let run = tiny_run(dir.path(), 64);
    let mut cfg = ServeConfig::new(run.clone());
    cfg.model_name = Some("tiny".into());
    cfg.feedback_db = Some(dir.path().join("fb.db"));
    cfg.embed_model = Some(run.clone());
    cfg.embed_pooling = Pooling::Mean;
    let s = Server::start(cfg);
    let name = "tiny-run";

    let embedder = Embedder::load(&run, Pooling::Mean, &Device::Cpu).unwrap();
    let texts = ["Hello there!", "Tell me a story about a cat and a dog.", "two plus two"];
    let want = embedder.embed(&texts).unwrap();

    let (st, v) = s.post("/v1/embeddings", &json!({"model": name, "input": texts}));
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["object"], "list");
    assert_eq!(v["model"], name);
    let data = v["data"].as_array().unwrap();
    assert_eq!(data.len(), 3);
    let toks: usize = texts.iter().map(|t| embedder.tokens(t).len()).sum();
    assert_eq!(v["usage"]["prompt_tokens"], toks);
    for (i, (d, w)) in data.iter().zip(&want).enumerate() {
        assert_eq!(d["index"], i);
        let got = floats(&d["embedding"]);
        assert_eq!(got.len(), embedder.dim());
        let norm: f32 = w.iter().map(|x| x * x).sum::<f32>().sqrt();
        assert!((got.iter().map(|x| x * x).sum::<f32>() - 1.0).abs() < 1e-4, "unit length");
        for (g, x) in got.iter().zip(w) {
            assert!((g - x / norm).abs() < 1e-5, "{g} vs {}", x / norm);
        }
    }
    // different texts, different vectors
    assert_ne!(floats(&data[0]["embedding"]), floats(&data[1]["embedding"]));

    // one string; the same text as token ids; base64 of the same floats
    let (_, one) = s.post("/v1/embeddings", &json!({"model": name, "input": texts[1]}));
    let ids = embedder.tokens(texts[1]);
    let (_, by_ids) = s.post("/v1/embeddings", &json!({"model": name, "input": ids}));
    let (_, nested) = s.post("/v1/embeddings", &json!({"model": name, "input": [ids]}));
    let (_, b64) = s.post("/v1/embeddings", &json!({"model": name, "input": texts[1], "encoding_format": "base64"}));
    let v1 = floats(&one["data"][0]["embedding"]);
    // alone vs in a padded batch: equal up to float rounding
    assert!(v1.iter().zip(floats(&data[1]["embedding"])).all(|(a, b)| (a - b).abs() < 1e-5));
    assert_eq!(v1, floats(&by_ids["data"][0]["embedding"]));
    assert_eq!(v1, floats(&nested["data"][0]["embedding"]));
    let bytes = base64::engine::general_purpose::STANDARD.decode(b64["data"][0]["embedding"].as_str().unwrap()).unwrap();
    let decoded: Vec<f32> = bytes.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
    assert_eq!(decoded, v1);

    // the embedding model is listed beside the chat model
    let (st, text) = s.get("/v1/models", None);
    assert_eq!(st, 200);
    let models: Value = serde_json::from_str(&text).unwrap();
    let ids: Vec<&str> = models["data"].as_array().unwrap().iter().map(|m| m["id"].as_str().unwrap()).collect();
    assert_eq!(ids, ["tiny", name]);

    // bad input: clear 400s (404 for an unknown model), and the server keeps serving
    let long = "Tell me a story about a cat and a dog. ".repeat(30);
    for (body, status) in [
        (json!({"model": name, "input": ""}), 400),
        (json!({"model": name, "input": []}), 400),
        (json!({"model": name, "input": [[]]}), 400),
        (json!({"model": name, "input": [999_999]}), 400),
        (json!({"model": name, "input": {"a": 1}}), 400),
        (json!({"model": name, "input": long}), 400),
        (json!({"model": name, "input": "hi", "encoding_format": "hex"}), 400),
        (json!({"model": name, "input": "hi", "dimensions": 7}), 400),
        (json!({"model": "other", "input": "hi"}), 404),
    ] {
        let (st, v) = s.post("/v1/embeddings", &body);
        assert_eq!(st, status, "{body} -> {v}");
        assert!(v["error"]["message"].is_string(), "{v}");
    }
    assert_eq!(s.post("/v1/embeddings", &json!({"model": name, "input": "hi"})).0, 200);
    s.shutdown();
}
