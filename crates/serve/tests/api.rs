//! Endpoint contract tests through a real HTTP client on an ephemeral loopback port.

mod common;

use common::{read_sse, tiny_run, Server};
use ferrolm_serve::ServeConfig;
use serde_json::{json, Value};

fn server(ctx: Option<usize>, key: Option<&str>) -> (tempfile::TempDir, Server) {
    let dir = tempfile::tempdir().unwrap();
    let run = tiny_run(dir.path(), 256);
    let mut cfg = ServeConfig::new(run);
    cfg.model_name = Some("tiny".into());
    cfg.ctx = ctx;
    cfg.api_key = key.map(str::to_string);
    cfg.max_body_bytes = 64 * 1024;
    cfg.feedback_db = Some(dir.path().join("feedback.db"));
    (dir, Server::start(cfg))
}

fn chat_body(extra: Value) -> Value {
    let mut b = json!({ "model": "tiny", "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello there! How are you?"}], "max_tokens": 12, "seed": 5, "temperature": 0.9 });
    for (k, v) in extra.as_object().unwrap() {
        b[k] = v.clone();
    }
    b
}

#[test]
fn models_health_metrics_openapi() {
    let (_d, s) = server(None, None);
    let (st, body) = s.get("/v1/models", None);
    assert_eq!(st, 200);
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["object"], "list");
    assert_eq!(v["data"][0]["id"], "tiny");
    assert_eq!(v["data"][0]["object"], "model");
    assert_eq!(s.get("/v1/models/tiny", None).0, 200);
    assert_eq!(s.get("/v1/models/nope", None).0, 404);
    let (st, body) = s.get("/health", None);
    assert_eq!(st, 200);
    assert_eq!(serde_json::from_str::<Value>(&body).unwrap()["model_loaded"], true);
    let (st, doc) = s.get("/openapi.json", None);
    assert_eq!(st, 200);
    let doc: Value = serde_json::from_str(&doc).unwrap();
    for p in ["/v1/models", "/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/health", "/metrics", "/v1/feedback"] {
        assert!(doc["paths"].get(p).is_some(), "openapi lacks {p}");
    }
    for p in ["response_format", "tools", "tool_choice"] {
        assert!(doc["components"]["schemas"]["ChatCompletionRequest"]["properties"].get(p).is_some(), "openapi lacks chat's {p}");
    }
    // every $ref points into the document
    fn refs(v: &Value, out: &mut Vec<String>) {
        match v {
            Value::Object(o) => o.iter().for_each(|(k, x)| if k == "$ref" { out.push(x.as_str().unwrap().to_string()) } else { refs(x, out) }),
            Value::Array(a) => a.iter().for_each(|x| refs(x, out)),
            _ => {}
        }
    }
    let mut all = vec![];
    refs(&doc, &mut all);
    for r in all {
        assert!(doc.pointer(r.strip_prefix('#').unwrap()).is_some(), "dangling $ref {r}");
    }
    s.post("/v1/chat/completions", &chat_body(json!({})));
    let (st, text) = s.get("/metrics", None);
    assert_eq!(st, 200);
    for series in ["ferrolm_time_to_first_token_seconds_bucket", "ferrolm_inter_token_latency_seconds_bucket", "ferrolm_queue_depth", "ferrolm_completion_tokens_total", "ferrolm_prompt_tokens_total"] {
        assert!(text.contains(series), "metrics lack {series}");
    }
    assert!(s.metric("ferrolm_completion_tokens_total") >= 1.0);
    assert_eq!(s.metric("ferrolm_time_to_first_token_seconds_count"), 1.0);
    assert!(text.contains("ferrolm_requests_total{route=\"/v1/chat/completions\",status=\"200\"} 1"));
}

#[test]
fn chat_completion_non_streaming_and_streaming_agree() {
    let (_d, s) = server(None, None);
    let (st, v) = s.post("/v1/chat/completions", &chat_body(json!({})));
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["object"], "chat.completion");
    assert!(v["id"].as_str().unwrap().starts_with("chatcmpl-"));
    let c = &v["choices"][0];
    assert_eq!(c["message"]["role"], "assistant");
    let text = c["message"]["content"].as_str().unwrap().to_string();
    let u = &v["usage"];
    assert!(u["prompt_tokens"].as_u64().unwrap() > 5);
    let completion = u["completion_tokens"].as_u64().unwrap();
    assert!((1..=12).contains(&completion));
    assert_eq!(u["total_tokens"].as_u64().unwrap(), u["prompt_tokens"].as_u64().unwrap() + completion);
    let finish = c["finish_reason"].as_str().unwrap();
    assert!(finish == "stop" || (finish == "length" && completion == 12), "{finish} after {completion}");
    // the same seed gives the same answer
    let (_, again) = s.post("/v1/chat/completions", &chat_body(json!({})));
    assert_eq!(again["choices"][0]["message"]["content"], c["message"]["content"]);
    // and streamed, the same text in OpenAI's chunk format, ending with [DONE]
    let (st, mut r) = s.stream("/v1/chat/completions", &chat_body(json!({ "stream": true, "stream_options": {"include_usage": true} })));
    assert_eq!(st, 200);
    let (data, _) = read_sse(&mut r);
    assert_eq!(data.last().unwrap(), "[DONE]");
    let chunks: Vec<Value> = data[..data.len() - 1].iter().map(|d| serde_json::from_str(d).unwrap()).collect();
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    let mut streamed = String::new();
    for ch in &chunks {
        assert_eq!(ch["object"], "chat.completion.chunk");
        assert_eq!(ch["id"], chunks[0]["id"]);
        if let Some(t) = ch["choices"].get(0).and_then(|c| c["delta"]["content"].as_str()) {
            streamed.push_str(t);
        }
    }
    assert_eq!(streamed, text);
    let fin = &chunks[chunks.len() - 2];
    assert_eq!(fin["choices"][0]["finish_reason"], finish);
    let usage_chunk = chunks.last().unwrap();
    assert_eq!(usage_chunk["choices"], json!([]));
    assert_eq!(usage_chunk["usage"]["completion_tokens"].as_u64().unwrap(), completion);
    assert!(chunks[..chunks.len() - 1].iter().all(|c| c["usage"].is_null()));
}

#[test]
fn sampling_options_n_stop_logprobs_and_length() {
    let (_d, s) = server(None, None);
    // n choices with distinct indexes; usage counts the prompt once
    let (st, v) = s.post("/v1/chat/completions", &chat_body(json!({ "n": 3, "max_tokens": 6 })));
    assert_eq!(st, 200, "{v}");
    let ch = v["choices"].as_array().unwrap();
    assert_eq!(ch.iter().map(|c| c["index"].as_u64().unwrap()).collect::<Vec<_>>(), vec![0, 1, 2]);
    let (_, one) = s.post("/v1/chat/completions", &chat_body(json!({ "max_tokens": 6 })));
    assert_eq!(v["usage"]["prompt_tokens"], one["usage"]["prompt_tokens"]);
    let total: u64 = ch.iter().map(|_| 0).sum::<u64>() + v["usage"]["completion_tokens"].as_u64().unwrap();
    assert!(total >= 3);
    // greedy with a long budget on a model that rarely ends: finish_reason length at max_tokens
    let (_, g) = s.post("/v1/chat/completions", &chat_body(json!({ "temperature": 0, "max_tokens": 9, "logit_bias": forbid_stops(&s) })));
    assert_eq!(g["choices"][0]["finish_reason"], "length");
    assert_eq!(g["usage"]["completion_tokens"], 9);
    // a stop string taken from the greedy answer cuts it there, finish_reason stop
    let full = g["choices"][0]["message"]["content"].as_str().unwrap().to_string();
    let cut = full.char_indices().map(|(i, _)| i).find(|&i| i >= 2 && !full[..i].trim().is_empty() && full[i..].chars().next().is_some_and(|c| !c.is_whitespace())).unwrap_or(1);
    let stop: String = full[cut..].chars().take(3).collect();
    let (_, st_v) = s.post("/v1/chat/completions", &chat_body(json!({ "temperature": 0, "max_tokens": 9, "stop": [stop.clone()], "logit_bias": forbid_stops(&s) })));
    let got = st_v["choices"][0]["message"]["content"].as_str().unwrap();
    assert_eq!(st_v["choices"][0]["finish_reason"], "stop", "stop {stop:?} in {full:?}");
    assert_eq!(got, &full[..full.find(&stop).unwrap()]);
    // logprobs: one entry per generated token, top alternatives sorted, the chosen among them at temperature 0
    let (_, lp) = s.post("/v1/chat/completions", &chat_body(json!({ "temperature": 0, "max_tokens": 4, "logprobs": true, "top_logprobs": 3, "logit_bias": forbid_stops(&s) })));
    let content = lp["choices"][0]["logprobs"]["content"].as_array().unwrap();
    assert_eq!(content.len(), 4);
    for t in content {
        let top = t["top_logprobs"].as_array().unwrap();
        assert_eq!(top.len(), 3);
        let l = t["logprob"].as_f64().unwrap();
        assert!(l <= 0.0);
        assert!((top[0]["logprob"].as_f64().unwrap() - l).abs() < 1e-5, "greedy picks the most likely token");
        assert!(top.windows(2).all(|w| w[0]["logprob"].as_f64() >= w[1]["logprob"].as_f64()));
    }
}

/// logit_bias that forbids the end-of-text and end-of-turn tokens.
fn forbid_stops(s: &Server) -> Value {
    let _ = s;
    // special tokens have the lowest ids, in the order of special::defaults()
    json!({ "0": -100, "5": -100 })
}

#[test]
fn completions_with_echo_and_token_prompts() {
    let (_d, s) = server(None, None);
    let (st, v) = s.post("/v1/completions", &json!({ "model": "tiny", "prompt": "Tell me a story", "max_tokens": 5, "echo": true, "seed": 1, "logprobs": 2 }));
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["object"], "text_completion");
    let text = v["choices"][0]["text"].as_str().unwrap();
    assert!(text.starts_with("Tell me a story"));
    let lp = &v["choices"][0]["logprobs"];
    // echo with logprobs scores the prompt too: its tokens (not the unseen sequence start)
    // then the answer's, offsets into the whole echoed text
    let tokens: Vec<&str> = lp["tokens"].as_array().unwrap().iter().map(|t| t.as_str().unwrap()).collect();
    let completion = v["usage"]["completion_tokens"].as_u64().unwrap() as usize;
    let prompt_shown = v["usage"]["prompt_tokens"].as_u64().unwrap() as usize - 1;
    assert_eq!(tokens.len(), prompt_shown + completion);
    assert_eq!(tokens[..prompt_shown].concat(), "Tell me a story");
    assert_eq!(lp["text_offset"][0], 0);
    assert_eq!(lp["text_offset"][prompt_shown], "Tell me a story".len());
    assert!(lp["token_logprobs"].as_array().unwrap().iter().all(|l| l.as_f64().is_some_and(|l| l <= 0.0)));
    // two prompts × n=2 → four choices; token-id prompts work
    let (st, v) = s.post("/v1/completions", &json!({ "model": "tiny", "prompt": ["a cat", "a dog"], "n": 2, "max_tokens": 3 }));
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["choices"].as_array().unwrap().len(), 4);
    let (st, _) = s.post("/v1/completions", &json!({ "model": "tiny", "prompt": [0, 40, 41], "max_tokens": 3 }));
    assert_eq!(st, 200);
    // streaming completions end with [DONE]
    let (_, mut r) = s.stream("/v1/completions", &json!({ "model": "tiny", "prompt": "a cat", "max_tokens": 4, "stream": true, "echo": true }));
    let (data, _) = read_sse(&mut r);
    assert_eq!(data.last().unwrap(), "[DONE]");
    let first: Value = serde_json::from_str(&data[0]).unwrap();
    assert_eq!(first["choices"][0]["text"], "a cat");
}

#[test]
fn bad_input_gets_the_right_status_and_an_openai_error() {
    let (_d, s) = server(Some(64), None);
    let check = |status: u16, body: &str, want: u16, code: Option<&str>| {
        let (st, text, _) = s.post_raw("/v1/chat/completions", body, None);
        assert_eq!(st, want, "{body} → {text}");
        let v: Value = serde_json::from_str(&text).unwrap();
        let e = &v["error"];
        assert!(e["message"].as_str().is_some_and(|m| !m.is_empty()), "{text}");
        assert!(e["type"].is_string() && e.get("param").is_some() && e.get("code").is_some(), "{text}");
        if let Some(c) = code {
            assert_eq!(e["code"], c, "{text}");
        }
        let _ = status;
    };
    check(0, "{not json", 400, Some("invalid_json"));
    check(0, "", 400, Some("invalid_json"));
    check(0, r#"{"model": "tiny", "messages": "hi"}"#, 422, None);
    check(0, r#"{"model": "tiny"}"#, 422, None);
    check(0, r#"{"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": "ten"}"#, 422, None);
    check(0, r#"{"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "bogus": 1}"#, 400, Some("unknown_parameter"));
    check(0, r#"{"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}"#, 404, Some("model_not_found"));
    check(0, r#"{"model": "tiny", "messages": []}"#, 400, None);
    check(0, r#"{"model": "tiny", "messages": [{"role": "wizard", "content": "hi"}]}"#, 400, None);
    check(0, r#"{"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "temperature": 3}"#, 400, None);
    check(0, r#"{"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "n": 0}"#, 400, None);
    check(0, r#"{"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 100000}"#, 400, None);
    check(0, r#"{"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 60}"#, 400, Some("context_length_exceeded"));
    let long = "Tell me a story about a cat and a dog. ".repeat(20);
    check(0, &json!({"model": "tiny", "messages": [{"role": "user", "content": long}]}).to_string(), 400, Some("context_length_exceeded"));
    check(0, r#"{"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "functions": [{"name": "f"}]}"#, 400, Some("unsupported_parameter"));
    check(0, r#"{"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "tools": [{"type": "function", "function": {"name": "no spaces"}}]}"#, 400, Some("invalid_value"));
    let huge = json!({"model": "tiny", "messages": [{"role": "user", "content": "x".repeat(100_000)}]}).to_string();
    check(0, &huge, 413, Some("request_too_large"));
    // unknown endpoint, completions errors, embeddings on a decoder
    let (st, text) = s.get("/v1/nothing", None);
    assert_eq!(st, 404);
    assert!(serde_json::from_str::<Value>(&text).unwrap()["error"]["message"].is_string());
    // an empty text samples from the sequence start (as OpenAI's does); no prompt at all is an error
    assert_eq!(s.post("/v1/completions", &json!({"model": "tiny", "prompt": "", "max_tokens": 3})).0, 200);
    assert_eq!(s.post("/v1/completions", &json!({"model": "tiny", "prompt": [], "max_tokens": 3})).0, 400);
    assert_eq!(s.post("/v1/completions", &json!({"model": "tiny", "prompt": [[]], "max_tokens": 3})).0, 400);
    let (st, _) = s.post("/v1/completions", &json!({"model": "tiny", "prompt": [99999], "max_tokens": 3}));
    assert_eq!(st, 400);
    let (st, _) = s.post("/v1/embeddings", &json!({"model": "tiny", "input": "hi"}));
    assert_eq!(st, 400);
    // and the server keeps serving
    let (st, v) = s.post("/v1/chat/completions", &json!({"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3}));
    assert_eq!(st, 200, "{v}");
}

#[test]
fn api_key_is_required_where_configured() {
    let (_d, s) = server(None, Some("sekret"));
    let body = chat_body(json!({})).to_string();
    let (st, text, _) = s.post_raw("/v1/chat/completions", &body, None);
    assert_eq!(st, 401);
    assert_eq!(serde_json::from_str::<Value>(&text).unwrap()["error"]["code"], "invalid_api_key");
    assert_eq!(s.post_raw("/v1/chat/completions", &body, Some("wrong")).0, 401);
    assert_eq!(s.post_raw("/v1/chat/completions", &body, Some("sekretX")).0, 401);
    assert_eq!(s.post_raw("/v1/chat/completions", &body, Some("sekret")).0, 200);
    assert_eq!(s.get("/v1/models", None).0, 401);
    assert_eq!(s.get("/v1/models", Some("sekret")).0, 200);
    assert_eq!(s.get("/metrics", None).0, 401);
    // liveness stays open for load balancers
    assert_eq!(s.get("/health", None).0, 200);
}

#[test]
fn a_non_loopback_bind_without_a_key_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = ServeConfig::new(dir.path().join("no-run"));
    let err = ferrolm_serve::run(cfg, "0.0.0.0", 0, &candle_core::Device::Cpu).unwrap_err();
    assert!(err.to_string().contains("without an API key"), "{err}");
}

#[test]
fn insertion_with_suffix_and_llama_cpp_infill() {
    let (_d, s) = server(None, None);
    // /v1/completions with suffix: the fill-in-the-middle prompt of a tokenizer with FIM tokens
    let (st, v) = s.post("/v1/completions", &json!({ "model": "tiny", "prompt": "fn add(a: i32, b: i32) -> i32 {\n    ", "suffix": "\n}\n", "max_tokens": 6, "seed": 3 }));
    assert_eq!(st, 200, "{v}");
    let text = v["choices"][0]["text"].as_str().unwrap();
    assert!(!text.contains("<|fim_"), "a sentinel never reaches the text: {text:?}");
    assert!(v["usage"]["completion_tokens"].as_u64().unwrap() <= 6);
    // the same request through llama.cpp's /infill, greedy both ways: the same text
    let (st, a) = s.post("/v1/completions", &json!({ "model": "tiny", "prompt": "let x = ", "suffix": ";\nlet y = x;", "max_tokens": 5, "temperature": 0.0 }));
    assert_eq!(st, 200, "{a}");
    let (st, b) = s.post("/infill", &json!({ "input_prefix": "let x = ", "input_suffix": ";\nlet y = x;", "n_predict": 5, "temperature": 0.0 }));
    assert_eq!(st, 200, "{b}");
    assert_eq!(b["content"], a["choices"][0]["text"]);
    assert_eq!(b["stop"], true);
    assert!(b["stop_type"] == "eos" || b["stop_type"] == "limit");
    assert_eq!(b["tokens_predicted"], a["usage"]["completion_tokens"]);
    // bad input: several prompts with a suffix, a bad n_predict, an unknown field
    let (st, v) = s.post("/v1/completions", &json!({ "model": "tiny", "prompt": ["a", "b"], "suffix": "c", "max_tokens": 3 }));
    assert_eq!((st, v["error"]["param"].as_str()), (400, Some("suffix")), "{v}");
    let (st, v) = s.post("/infill", &json!({ "input_prefix": "a", "n_predict": 0 }));
    assert_eq!((st, v["error"]["param"].as_str()), (400, Some("n_predict")), "{v}");
    let (st, _) = s.post("/infill", &json!({ "input_prefix": "a", "bogus": 1 }));
    assert!(st == 400 || st == 422, "{st}");
}

/// `echo` with `logprobs` (and `max_tokens` 0: score only, as evaluation harnesses ask for
/// a text's log-likelihood): every prompt token's log-probability equals the model's own
/// log-softmax from one full forward pass; streamed the same; the first token of a
/// token-id prompt has none.
#[test]
fn echo_with_logprobs_scores_the_prompt_like_a_full_forward_pass() {
    use candle_core::{Device, Tensor, D};
    let (d, s) = server(None, None);
    let ids: Vec<u32> = vec![0, 40, 41, 60, 70, 33, 90, 12];
    let (st, v) = s.post("/v1/completions", &json!({ "model": "tiny", "prompt": ids, "max_tokens": 0, "echo": true, "logprobs": 3 }));
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["usage"]["completion_tokens"], 0);
    assert_eq!(v["choices"][0]["finish_reason"], "length");
    let lp = &v["choices"][0]["logprobs"];
    let got: Vec<Value> = lp["token_logprobs"].as_array().unwrap().clone();
    assert_eq!(got.len(), ids.len());
    assert!(got[0].is_null() && lp["top_logprobs"][0].is_null(), "nothing comes before the first token");

    let loaded = ferrolm_model::load_model(&d.path().join("tiny-run"), &Device::Cpu).unwrap();
    let model = loaded.model.into_decoder("test").unwrap();
    let input = Tensor::new(ids.as_slice(), &Device::Cpu).unwrap().unsqueeze(0).unwrap();
    let logits = model.forward(&input, &ferrolm_model::attention::MaskSpec::causal(), None).unwrap();
    let lsm = candle_nn::ops::log_softmax(&logits.squeeze(0).unwrap(), D::Minus1).unwrap().to_vec2::<f32>().unwrap();
    for i in 1..ids.len() {
        let want = lsm[i - 1][ids[i] as usize] as f64;
        let have = got[i].as_f64().unwrap();
        assert!((want - have).abs() < 1e-4, "token {i}: served {have}, forward pass {want}");
        let top = lp["top_logprobs"][i].as_object().unwrap();
        assert!(!top.is_empty() && top.len() <= 3);
        let best = lsm[i - 1].iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
        assert!(top.values().any(|l| (l.as_f64().unwrap() - best).abs() < 1e-4), "the most likely token is among the top ones");
    }

    // streamed: the echo chunk carries the same scores, then the answer follows
    let (_, mut r) = s.stream("/v1/completions", &json!({ "model": "tiny", "prompt": ids, "max_tokens": 3, "echo": true, "logprobs": 3, "stream": true, "seed": 4 }));
    let (data, _) = read_sse(&mut r);
    assert_eq!(data.last().unwrap(), "[DONE]");
    let first: Value = serde_json::from_str(&data[0]).unwrap();
    assert_eq!(first["choices"][0]["logprobs"]["token_logprobs"], Value::Array(got.clone()));
    let (_, whole) = s.post("/v1/completions", &json!({ "model": "tiny", "prompt": ids, "max_tokens": 3, "echo": true, "logprobs": 3, "seed": 4 }));
    let whole_lp = whole["choices"][0]["logprobs"]["token_logprobs"].as_array().unwrap().clone();
    assert_eq!(whole_lp[..ids.len()], got[..]);
    assert_eq!(whole_lp.len(), ids.len() + whole["usage"]["completion_tokens"].as_u64().unwrap() as usize);

    // max_tokens 0 without echo is still refused
    let (st, v) = s.post("/v1/completions", &json!({ "model": "tiny", "prompt": "a cat", "max_tokens": 0 }));
    assert_eq!((st, v["error"]["param"].as_str()), (400, Some("max_tokens")));
}

/// Special tokens a model samples (role markers, sentinels) are counted but are no answer
/// text, as transformers' and vLLM's `skip_special_tokens` default has it.
#[test]
fn sampled_special_tokens_are_not_answer_text() {
    let (_d, s) = server(None, None);
    // id 3 is <|user|> (special::defaults() order), not a stop of raw completions
    let (st, v) = s.post("/v1/completions", &json!({ "model": "tiny", "prompt": "a cat", "max_tokens": 4, "logit_bias": { "3": 100 }, "seed": 1 }));
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["choices"][0]["text"], "", "{v}");
    assert_eq!(v["usage"]["completion_tokens"], 4);
    assert_eq!(v["choices"][0]["finish_reason"], "length");
}
