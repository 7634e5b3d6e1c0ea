//! `ferrolm serve` on a Hugging Face Llama 2-family folder (ferrolm-model's `llama2_spm`
//! fixture, written by bench/hf_fixtures.py): its Jinja chat template (`[INST] … [/INST]`,
//! `<<SYS>>`, `raise_exception` on a bad role order) is no marker template, so prompts are
//! the template's rendering, encoded as transformers encodes it, and answers end at the
//! model's end-of-sequence id (`</s>`, 2).

mod common;

use std::path::{Path, PathBuf};

use common::{read_sse, Server};
use ferrolm_finetune::prompt::{self, ChatFormat};
use ferrolm_serve::ServeConfig;
use ferrolm_tokenizer::Message;
use serde_json::{json, Value};

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../model/tests/fixtures/hf/llama2_spm")
}

/// The fixture's tokenizer references (reference.json's `spm`).
fn reference() -> Value {
    let r: Value = serde_json::from_str(&std::fs::read_to_string(fixture().join("reference.json")).unwrap()).unwrap();
    r["spm"].clone()
}

fn ids(v: &Value) -> Vec<u32> {
    v.as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect()
}

/// A copy of the fixture with `tokenizer` (one of its tokenizer files) as tokenizer.json and
/// a context of 512 positions (the fixture's 64 hold no conversation with tools; its RoPE
/// does not depend on the figure).
fn folder(dir: &Path, tokenizer: &str) -> PathBuf {
    let out = dir.join("llama2");
    std::fs::create_dir_all(&out).unwrap();
    for f in ["generation_config.json", "model.safetensors", "tokenizer_config.json"] {
        std::fs::copy(fixture().join(f), out.join(f)).unwrap();
    }
    std::fs::copy(fixture().join(tokenizer), out.join("tokenizer.json")).unwrap();
    let mut cfg: Value = serde_json::from_str(&std::fs::read_to_string(fixture().join("config.json")).unwrap()).unwrap();
    cfg["max_position_embeddings"] = json!(512);
    std::fs::write(out.join("config.json"), cfg.to_string()).unwrap();
    out
}

fn messages(c: &Value) -> Vec<Message> {
    c["messages"].as_array().unwrap().iter().map(|m| Message::new(serde_json::from_value(m["role"].clone()).unwrap(), m["content"].as_str().unwrap())).collect()
}

/// The prompt of every reference conversation (system + user; system + user + assistant +
/// user; user + assistant + user) is the template rendered with `add_generation_prompt` and
/// encoded without added special tokens, as `apply_chat_template(..., tokenize=True)` does:
/// with the legacy tokenizer.json Llama 2 repos hold, the `tokenizers` library's ids of the
/// rendering (transformers 4, vLLM, TGI; a `▁` after each `<s>`, as Meta's own encoding of
/// `[INST]` turns); with the Metaspace form, transformers 5.25's ids (reference.json's
/// `transformers_ids`, computed by bench/hf_fixtures.py with
/// `AutoTokenizer.apply_chat_template(msgs, tokenize=True, add_generation_prompt=True)`;
/// transformers 5 rebuilds a Llama tokenizer in that form whatever its file says).
#[test]
fn chat_prompts_are_the_templates_rendering_encoded_as_transformers_does() {
    let r = reference();
    for (file, field) in [("tokenizer.json", "ids"), ("tokenizer_metaspace.json", "transformers_ids")] {
        let dir = tempfile::tempdir().unwrap();
        let run = folder(dir.path(), file);
        let tok = prompt::load_tokenizer(&run).unwrap();
        let format = ChatFormat::load(&run, &tok).unwrap();
        assert!(format.marker().is_none());
        assert_eq!(format.stop_tokens(), &[2], "</s>, from generation_config.json and eos_token");
        for c in r["chat"].as_array().unwrap() {
            assert_eq!(format.prompt(&tok, &messages(c)).unwrap(), ids(&c[field]), "{file}: {}", c["messages"]);
        }
        let e = format!("{:#}", format.prompt(&tok, &[Message::user("a"), Message::user("b")]).unwrap_err());
        assert!(e.contains(r["chat_bad_order_error"].as_str().unwrap()), "{e}");
    }
    // the training stages need a marker template and say so
    let e = format!("{:#}", prompt::load_template(&fixture()).unwrap_err());
    assert!(e.contains("SFT, DPO") && e.contains("tokenizer_config.json"), "{e}");
}

fn start(run: &Path, dir: &Path) -> Server {
    let mut cfg = ServeConfig::new(run.to_path_buf());
    cfg.model_name = Some("llama2".into());
    cfg.feedback_db = Some(dir.join("feedback.db"));
    Server::start(cfg)
}

fn body(messages: Value, extra: Value) -> Value {
    let mut b = json!({ "model": "llama2", "messages": messages, "max_tokens": 16, "seed": 7, "temperature": 0.9 });
    for (k, v) in extra.as_object().unwrap() {
        b[k] = v.clone();
    }
    b
}

/// Served chat completions: 200 with finish reasons and usage (the prompt's tokens as
/// above, for n = 2 too), answers end at `</s>` without it, streaming gives the same
/// answers for a seed, a bad role order is a 400 with the template's message, and
/// constrained decoding (a JSON object, a forced tool call: the template knows no tools, so
/// they are described in the system message) shares the path.
#[test]
fn a_llama2_folder_serves_chat_completions() {
    let r = reference();
    let dir = tempfile::tempdir().unwrap();
    let run = folder(dir.path(), "tokenizer.json");
    let s = start(&run, dir.path());
    let convo = &r["chat"][1];
    let msgs = convo["messages"].clone();
    let (st, v) = s.post("/v1/chat/completions", &body(msgs.clone(), json!({ "n": 2 })));
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["usage"]["prompt_tokens"].as_u64().unwrap() as usize, ids(&convo["ids"]).len());
    assert!(v["usage"]["completion_tokens"].as_u64().unwrap() >= 2);
    let choices = v["choices"].as_array().unwrap();
    assert_eq!(choices.len(), 2);
    for c in choices {
        assert!(["stop", "length"].contains(&c["finish_reason"].as_str().unwrap()), "{v}");
        assert!(!c["message"]["content"].as_str().unwrap().contains("</s>"), "{v}");
    }
    // streamed with the same seed: the same answers and finish reasons, choice by choice
    let (st, mut rd) = s.stream("/v1/chat/completions", &body(msgs.clone(), json!({ "n": 2, "stream": true, "stream_options": { "include_usage": true } })));
    assert_eq!(st, 200);
    let (data, _) = read_sse(&mut rd);
    assert_eq!(data.last().unwrap(), "[DONE]");
    let mut text = [String::new(), String::new()];
    let mut finish = [Value::Null, Value::Null];
    let mut usage = Value::Null;
    for d in &data[..data.len() - 1] {
        let ch: Value = serde_json::from_str(d).unwrap();
        if !ch["usage"].is_null() {
            usage = ch["usage"].clone();
        }
        for c in ch["choices"].as_array().unwrap() {
            let i = c["index"].as_u64().unwrap() as usize;
            text[i].push_str(c["delta"]["content"].as_str().unwrap_or(""));
            if !c["finish_reason"].is_null() {
                finish[i] = c["finish_reason"].clone();
            }
        }
    }
    for (i, c) in choices.iter().enumerate() {
        assert_eq!(text[i], c["message"]["content"].as_str().unwrap(), "choice {i}");
        assert_eq!(finish[i], c["finish_reason"], "choice {i}");
    }
    for k in ["prompt_tokens", "completion_tokens", "total_tokens"] {
        assert_eq!(usage[k], v["usage"][k], "{k}");
    }
    // an answer whose first token is `</s>` ends there, with no text
    let (st, v) = s.post("/v1/chat/completions", &body(msgs.clone(), json!({ "logit_bias": { "2": 100 } })));
    assert_eq!(st, 200, "{v}");
    assert_eq!((v["choices"][0]["finish_reason"].as_str(), v["choices"][0]["message"]["content"].as_str()), (Some("stop"), Some("")), "{v}");
    assert_eq!(v["usage"]["completion_tokens"], 1);
    // two user turns in a row: the template raises, the client gets its message
    let (st, e) = s.post("/v1/chat/completions", &body(json!([{ "role": "user", "content": "a" }, { "role": "user", "content": "b" }]), json!({})));
    assert_eq!(st, 400, "{e}");
    assert_eq!(e["error"]["param"], "messages");
    let m = e["error"]["message"].as_str().unwrap();
    assert!(m.contains(r["chat_bad_order_error"].as_str().unwrap()), "{m}");
    assert!(!m.contains(&run.display().to_string()), "no server paths in API errors: {m}");
    // constrained decoding: a JSON object
    let (st, v) = s.post("/v1/chat/completions", &body(json!([{ "role": "user", "content": "Hi!" }]), json!({ "response_format": { "type": "json_object" }, "max_tokens": 40 })));
    assert_eq!(st, 200, "{v}");
    let c = &v["choices"][0];
    let content = c["message"]["content"].as_str().unwrap();
    assert!(content.trim_start().starts_with('{'), "{v}");
    if c["finish_reason"] == "stop" {
        serde_json::from_str::<Value>(content).unwrap_or_else(|e| panic!("{e}: {content}"));
    }
    // a forced tool call: the tools go into the system message, the answer is the call
    let tools = json!([{ "type": "function", "function": { "name": "get_weather", "parameters": { "type": "object", "properties": { "city": { "type": "string", "maxLength": 8 } }, "required": ["city"], "additionalProperties": false } } }]);
    let plain = s.post("/v1/chat/completions", &body(json!([{ "role": "user", "content": "Weather?" }]), json!({ "max_tokens": 1 }))).1;
    let (st, v) = s.post("/v1/chat/completions", &body(json!([{ "role": "user", "content": "Weather?" }]), json!({ "tools": tools, "tool_choice": "required", "parallel_tool_calls": false, "max_tokens": 80 })));
    assert_eq!(st, 200, "{v}");
    assert!(v["usage"]["prompt_tokens"].as_u64().unwrap() > plain["usage"]["prompt_tokens"].as_u64().unwrap() + 20, "{v}");
    let c = &v["choices"][0];
    if c["finish_reason"] == "tool_calls" {
        let call = &c["message"]["tool_calls"][0];
        assert_eq!(call["function"]["name"], "get_weather", "{v}");
        let args: Value = serde_json::from_str(call["function"]["arguments"].as_str().unwrap()).unwrap();
        assert!(args["city"].is_string(), "{v}");
    } else {
        assert_eq!(c["finish_reason"], "length", "{v}");
    }
    // the web page is served beside the API
    let (st, page) = s.get("/", None);
    assert_eq!(st, 200);
    assert!(page.contains("<html") || page.contains("<!doctype") || page.contains("<!DOCTYPE"), "{page}");
}
