//! Request fuzzing: arbitrary JSON bodies, mutations of valid requests and raw bytes,
//! sent to every POST endpoint of a running server, never get a 5xx or kill the server;
//! CORS preflights and headers follow `--cors-origin`.

mod common;

use common::{tiny_run, Server};
use ferrolm_serve::ServeConfig;
use proptest::prelude::*;
use serde_json::{json, Value};

fn arb_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|i| json!(i)),
        (-1e6f64..1e6).prop_map(|f| json!(f)),
        "[a-z\\[\\]{}\":,0-9 \\\\]{0,12}".prop_map(Value::String),
        prop_oneof![Just("tiny"), Just("user"), Just("system"), Just("assistant"), Just("text"), Just("object"), Just("string"), Just("integer"), Just("array")].prop_map(|s| json!(s)),
    ];
    leaf.prop_recursive(3, 24, 5, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map(
                prop_oneof![
                    Just("model".to_string()), Just("messages".to_string()), Just("prompt".to_string()), Just("max_tokens".to_string()),
                    Just("n".to_string()), Just("stop".to_string()), Just("temperature".to_string()), Just("top_p".to_string()),
                    Just("stream".to_string()), Just("logprobs".to_string()), Just("top_logprobs".to_string()), Just("seed".to_string()),
                    Just("logit_bias".to_string()), Just("role".to_string()), Just("content".to_string()), Just("echo".to_string()),
                    Just("kind".to_string()), Just("choice".to_string()), Just("type".to_string()), Just("properties".to_string()),
                    Just("required".to_string()), Just("items".to_string()), Just("enum".to_string()), "[a-z_]{1,8}",
                ],
                inner,
                0..6
            )
            .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// A valid chat request with one field replaced by an arbitrary value.
fn mutated_chat() -> impl Strategy<Value = Value> {
    let fields = [
        "model", "messages", "max_tokens", "n", "stop", "temperature", "top_p", "seed", "logprobs", "top_logprobs", "logit_bias", "stream", "stream_options", "max_completion_tokens",
        "frequency_penalty", "response_format", "tools", "tool_choice",
    ];
    (0..fields.len(), arb_json()).prop_map(move |(i, v)| {
        let mut b = json!({"model": "tiny", "messages": [{"role": "user", "content": "Hello"}], "max_tokens": 4});
        b[fields[i]] = v;
        b
    })
}

/// A chat request that asks for constrained decoding with an arbitrary schema: as a
/// `json_schema` response format, or as a forced tool's parameters.
fn constrained_chat() -> impl Strategy<Value = Value> {
    (any::<bool>(), arb_json()).prop_map(|(as_tool, schema)| {
        let mut b = json!({"model": "tiny", "messages": [{"role": "user", "content": "Hello"}], "max_tokens": 4});
        if as_tool {
            b["tools"] = json!([{"type": "function", "function": {"name": "f", "parameters": schema}}]);
            b["tool_choice"] = json!("required");
        } else {
            b["response_format"] = json!({"type": "json_schema", "json_schema": {"name": "s", "schema": schema}});
        }
        b
    })
}

#[test]
fn no_request_body_gets_a_server_error() {
    let dir = tempfile::tempdir().unwrap();
    let run = tiny_run(dir.path(), 128);
    let mut cfg = ServeConfig::new(run);
    cfg.model_name = Some("tiny".into());
    cfg.feedback_db = Some(dir.path().join("fb.db"));
    cfg.max_body_bytes = 16 * 1024;
    let s = Server::start(cfg);
    let paths = ["/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/v1/feedback"];
    let statuses = std::cell::RefCell::new(std::collections::BTreeMap::new());
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig { cases: 160, failure_persistence: None, ..ProptestConfig::default() });
    let strategy = (0..paths.len(), prop_oneof![arb_json().prop_map(|v| v.to_string()), mutated_chat().prop_map(|v| v.to_string()), constrained_chat().prop_map(|v| v.to_string()), "\\PC{0,40}"]);
    runner
        .run(&strategy, |(p, body)| {
            let (st, text, _) = s.post_raw(paths[p], &body, None);
            *statuses.borrow_mut().entry(st).or_insert(0usize) += 1;
            prop_assert!(st < 500, "{} {body} → {st} {text}", paths[p]);
            // answers are either a completion or an OpenAI error object (streams are SSE)
            if st >= 400 {
                let v: Value = serde_json::from_str(&text).map_err(|e| TestCaseError::fail(format!("{e}: {text}")))?;
                prop_assert!(v["error"]["message"].is_string());
            }
            Ok(())
        })
        .unwrap();
    let statuses = statuses.into_inner();
    eprintln!("fuzzed statuses: {statuses:?}");
    assert!(statuses.keys().any(|&k| k >= 400), "the fuzzer never hit an error path");
    // still serving
    assert_eq!(s.post("/v1/chat/completions", &json!({"model": "tiny", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2})).0, 200);
}

#[test]
fn cors_follows_the_allowed_origins() {
    let dir = tempfile::tempdir().unwrap();
    let run = tiny_run(dir.path(), 128);
    let mut cfg = ServeConfig::new(run);
    cfg.model_name = Some("tiny".into());
    cfg.feedback_db = Some(dir.path().join("fb.db"));
    cfg.cors_origins = vec!["http://app.example".into()];
    cfg.api_key = Some("k".into());
    let s = Server::start(cfg);
    // a preflight needs no key and names the allowed methods and headers
    let pre = ureq::http::Request::builder()
        .method("OPTIONS")
        .uri(s.url("/v1/chat/completions"))
        .header("origin", "http://app.example")
        .header("access-control-request-method", "POST")
        .body(())
        .unwrap();
    let resp = s.agent.run(pre).unwrap();
    assert_eq!(resp.status().as_u16(), 204);
    let h = resp.headers();
    assert_eq!(h.get("access-control-allow-origin").unwrap(), "http://app.example");
    assert!(h.get("access-control-allow-headers").unwrap().to_str().unwrap().contains("authorization"));
    // other origins get no CORS header
    let resp = s.agent.get(&s.url("/v1/models")).header("origin", "http://evil.example").header("authorization", "Bearer k").call().unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    assert!(resp.headers().get("access-control-allow-origin").is_none());
    let resp = s.agent.get(&s.url("/v1/models")).header("origin", "http://app.example").header("authorization", "Bearer k").call().unwrap();
    assert_eq!(resp.headers().get("access-control-allow-origin").unwrap(), "http://app.example");
}
