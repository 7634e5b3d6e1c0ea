//! Continuous batching through the HTTP API: a request answered in a batch with others
//! equals the same request served alone; a client that disconnects frees its slot at
//! once; a full queue answers 429 with Retry-After; a queued stream gets keep-alives.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::{read_sse, tiny_run, Server};
use ferrolm_serve::ServeConfig;
use serde_json::{json, Value};

fn server(max_seq_len: usize, concurrency: usize, queue: usize) -> (tempfile::TempDir, Server) {
    server_with(max_seq_len, concurrency, queue, Duration::from_secs(10))
}

fn server_with(max_seq_len: usize, concurrency: usize, queue: usize, grace: Duration) -> (tempfile::TempDir, Server) {
    let dir = tempfile::tempdir().unwrap();
    let run = tiny_run(dir.path(), max_seq_len);
    let mut cfg = ServeConfig::new(run);
    cfg.model_name = Some("tiny".into());
    cfg.max_concurrency = concurrency;
    cfg.max_queue = queue;
    cfg.keep_alive = Duration::from_millis(50);
    cfg.feedback_db = Some(dir.path().join("feedback.db"));
    cfg.shutdown_grace = grace;
    (dir, Server::start(cfg))
}

/// Special tokens have the lowest ids (special::defaults order): 0 = end of text, 5 = end of turn.
fn no_stop() -> Value {
    json!({ "0": -100, "5": -100 })
}

fn chat(seed: u64, max_tokens: usize, extra: Value) -> Value {
    let mut b = json!({ "model": "tiny", "messages": [{"role": "user", "content": "Tell me a story about a cat."}],
                        "max_tokens": max_tokens, "seed": seed, "temperature": 1.0, "logit_bias": no_stop() });
    for (k, v) in extra.as_object().unwrap() {
        b[k] = v.clone();
    }
    b
}

fn wait_for(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
    let t0 = Instant::now();
    while !cond() {
        assert!(t0.elapsed() < timeout, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// A streaming request on a raw socket, so the test decides exactly when the client goes.
fn raw_stream(s: &Server, body: &Value) -> BufReader<TcpStream> {
    let addr = s.base.strip_prefix("http://").unwrap();
    let mut sock = TcpStream::connect(addr).unwrap();
    let body = body.to_string();
    write!(sock, "POST /v1/chat/completions HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}", body.len()).unwrap();
    let mut r = BufReader::new(sock);
    let mut line = String::new();
    r.read_line(&mut line).unwrap();
    assert!(line.starts_with("HTTP/1.1 200"), "{line}");
    // read until the first data line
    loop {
        line.clear();
        assert!(r.read_line(&mut line).unwrap() > 0, "stream ended early");
        if line.starts_with("data: ") {
            return r;
        }
    }
}

#[test]
fn batched_answers_equal_the_same_request_alone() {
    let (_d, s) = server(512, 8, 64);
    let target = chat(42, 40, json!({}));
    let (st, alone) = s.post("/v1/chat/completions", &target);
    assert_eq!(st, 200, "{alone}");
    let alone_text = alone["choices"][0]["message"]["content"].as_str().unwrap().to_string();
    assert_eq!(alone["usage"]["completion_tokens"], 40);
    // five long neighbours with other seeds, lengths and stop strings, some streaming
    let neighbours: Vec<_> = (0..5)
        .map(|i| {
            let agent = s.agent.clone();
            let url = s.url("/v1/chat/completions");
            let body = chat(100 + i, 150 + 40 * i as usize, json!({ "stream": i % 2 == 0, "stop": ["zz"], "n": 1 + (i % 2) }));
            std::thread::spawn(move || {
                let mut r = agent.post(&url).header("content-type", "application/json").send(body.to_string().as_bytes()).unwrap();
                assert_eq!(r.status().as_u16(), 200);
                r.body_mut().read_to_string().unwrap()
            })
        })
        .collect();
    wait_for("neighbours to be decoding", Duration::from_secs(30), || s.metric("ferrolm_active_sequences") >= 4.0);
    let steps0 = s.metric("ferrolm_decode_steps_total");
    let rows0 = s.metric("ferrolm_decode_rows_total");
    let (st, batched) = s.post("/v1/chat/completions", &target);
    assert_eq!(st, 200);
    for n in neighbours {
        n.join().unwrap();
    }
    assert_eq!(batched["choices"][0]["message"]["content"].as_str().unwrap(), alone_text, "batched answer differs from the one served alone");
    // the target really shared steps: rows per step above 1 while it ran
    let (steps, rows) = (s.metric("ferrolm_decode_steps_total") - steps0, s.metric("ferrolm_decode_rows_total") - rows0);
    assert!(rows > 2.0 * steps, "decode steps were not batched: {rows} rows in {steps} steps");
    // the second time its prompt's keys and values came from the prefix cache
    assert!(batched["usage"]["prompt_tokens_details"]["cached_tokens"].as_u64().unwrap() > 0);
    assert!(s.metric("ferrolm_prefix_cache_reused_tokens_total") > 0.0);
}

#[test]
fn a_disconnected_client_frees_its_slot_at_once() {
    let (_d, s) = server(4096, 1, 8);
    let long = chat(1, 4000, json!({ "stream": true }));
    let r = raw_stream(&s, &long);
    wait_for("the long request to be active", Duration::from_secs(30), || s.metric("ferrolm_active_sequences") == 1.0);
    drop(r); // the client goes away mid-stream
    let t0 = Instant::now();
    wait_for("the slot to be freed", Duration::from_secs(20), || s.metric("ferrolm_active_sequences") == 0.0);
    assert_eq!(s.metric("ferrolm_cancelled_sequences_total"), 1.0);
    // it stopped long before its 4000 tokens, and the one slot serves the next request
    assert!(s.metric("ferrolm_completion_tokens_total") < 4000.0);
    let (st, v) = s.post("/v1/chat/completions", &chat(2, 5, json!({})));
    assert_eq!(st, 200, "{v}");
    assert!(t0.elapsed() < Duration::from_secs(20));
}

#[test]
fn a_full_queue_answers_429_and_queued_streams_get_keep_alives() {
    let (_d, s) = server(4096, 1, 1);
    let a = raw_stream(&s, &chat(1, 4000, json!({ "stream": true })));
    wait_for("A to be active", Duration::from_secs(30), || s.metric("ferrolm_active_sequences") == 1.0);
    // B waits in the queue (the one slot is A's)
    let agent = s.agent.clone();
    let url = s.url("/v1/chat/completions");
    let b = std::thread::spawn(move || {
        let body = chat(2, 6, json!({ "stream": true }));
        let resp = agent.post(&url).header("content-type", "application/json").send(body.to_string().as_bytes()).unwrap();
        assert_eq!(resp.status().as_u16(), 200);
        let mut r = BufReader::new(resp.into_body().into_reader());
        read_sse(&mut r)
    });
    wait_for("B to be queued", Duration::from_secs(30), || s.metric("ferrolm_queue_depth") == 1.0);
    // C finds the queue full
    let (st, text, retry) = s.post_raw("/v1/chat/completions", &chat(3, 6, json!({})).to_string(), None);
    assert_eq!(st, 429, "{text}");
    assert_eq!(serde_json::from_str::<Value>(&text).unwrap()["error"]["code"], "queue_full");
    assert!(retry.unwrap().parse::<u64>().unwrap() >= 1);
    assert_eq!(s.metric("ferrolm_rejected_requests_total"), 1.0);
    std::thread::sleep(Duration::from_millis(200));
    drop(a); // A's client leaves: B gets the slot and completes
    let (data, comments) = b.join().unwrap();
    assert_eq!(data.last().unwrap(), "[DONE]");
    assert!(comments.iter().any(|c| c == "keep-alive"), "no keep-alive comment while B was queued: {comments:?}");
}

#[test]
fn shutdown_finishes_short_streams_and_cuts_long_ones_after_the_grace_period() {
    let (_d, s) = server_with(4096, 2, 8, Duration::from_millis(500));
    let mut long = raw_stream(&s, &chat(1, 4000, json!({ "stream": true })));
    wait_for("the long request to be active", Duration::from_secs(30), || s.metric("ferrolm_active_sequences") == 1.0);
    let t0 = Instant::now();
    s.shutdown();
    let took = t0.elapsed();
    assert!(took >= Duration::from_millis(450) && took < Duration::from_secs(15), "shutdown took {took:?}");
    // the cut stream ends (an error event or a closed connection), it does not hang
    let mut rest = String::new();
    let _ = std::io::Read::read_to_string(&mut long, &mut rest);
    assert!(!rest.contains("\"finish_reason\":\"length\""), "the 4000-token answer cannot have finished");
}

/// Constrained decoding keeps the batched == alone property: a `json_schema` answer, a
/// forced tool call and a free answer, decoded side by side with each other and with long
/// neighbours, equal the same requests served alone.
#[test]
fn constrained_and_free_answers_in_one_batch_equal_their_answers_alone() {
    let (_d, s) = server(512, 8, 64);
    let schema = json!({ "type": "object", "properties": { "name": { "type": "string", "maxLength": 10 }, "n": { "type": "integer", "minimum": 0, "maximum": 99 },
                          "tags": { "type": "array", "items": { "enum": ["a", "b", "c"] }, "maxItems": 4 } },
                         "required": ["name", "n", "tags"], "additionalProperties": false });
    let tools = json!([{ "type": "function", "function": { "name": "lookup", "parameters": { "type": "object", "properties": { "q": { "type": "string", "maxLength": 10 } }, "required": ["q"], "additionalProperties": false } } }]);
    let targets = [
        chat(7, 120, json!({ "response_format": { "type": "json_schema", "json_schema": { "name": "rec", "schema": schema } }, "logit_bias": {} })),
        chat(8, 120, json!({ "tools": tools, "tool_choice": "required", "logit_bias": {} })),
        chat(9, 40, json!({})),
    ];
    let answer = |v: &Value| -> Value {
        let c = &v["choices"][0];
        json!([c["message"]["content"], c["message"]["tool_calls"][0]["function"], c["finish_reason"]])
    };
    let alone: Vec<Value> = targets
        .iter()
        .map(|t| {
            let (st, v) = s.post("/v1/chat/completions", t);
            assert_eq!(st, 200, "{v}");
            answer(&v)
        })
        .collect();
    assert_eq!(alone[0][2], "stop", "{alone:?}");
    assert_eq!(alone[1][2], "tool_calls", "{alone:?}");
    let neighbours: Vec<_> = (0..3)
        .map(|i| {
            let (agent, url) = (s.agent.clone(), s.url("/v1/chat/completions"));
            let body = chat(200 + i, 300, json!({ "stream": i == 1 }));
            std::thread::spawn(move || agent.post(&url).header("content-type", "application/json").send(body.to_string().as_bytes()).unwrap().body_mut().read_to_string().unwrap())
        })
        .collect();
    wait_for("neighbours to be decoding", Duration::from_secs(30), || s.metric("ferrolm_active_sequences") >= 3.0);
    let (steps0, rows0) = (s.metric("ferrolm_decode_steps_total"), s.metric("ferrolm_decode_rows_total"));
    let together: Vec<_> = targets
        .iter()
        .map(|t| {
            let (agent, url, body) = (s.agent.clone(), s.url("/v1/chat/completions"), t.to_string());
            std::thread::spawn(move || {
                let mut r = agent.post(&url).header("content-type", "application/json").send(body.as_bytes()).unwrap();
                assert_eq!(r.status().as_u16(), 200);
                serde_json::from_str::<Value>(&r.body_mut().read_to_string().unwrap()).unwrap()
            })
        })
        .collect();
    let together: Vec<Value> = together.into_iter().map(|h| answer(&h.join().unwrap())).collect();
    for n in neighbours {
        n.join().unwrap();
    }
    assert_eq!(together, alone, "answers in a batch differ from the same requests alone");
    let (steps, rows) = (s.metric("ferrolm_decode_steps_total") - steps0, s.metric("ferrolm_decode_rows_total") - rows0);
    assert!(rows > 2.0 * steps, "decode steps were not batched: {rows} rows in {steps} steps");
}
