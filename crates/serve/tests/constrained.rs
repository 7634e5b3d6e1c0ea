//! Constrained decoding through the HTTP API, on a tiny random model: `response_format`
//! JSON schemas and JSON objects, forced tool calls (whole and streamed), tool messages and
//! tools in a Jinja chat template, and schemas that cannot be compiled.

mod common;

use common::{read_sse, tiny_run, Server};
use ferrolm_serve::ServeConfig;
use serde_json::{json, Value};

fn server() -> (tempfile::TempDir, Server) {
    let dir = tempfile::tempdir().unwrap();
    let run = tiny_run(dir.path(), 2048);
    (dir, start(run))
}

fn start(run: std::path::PathBuf) -> Server {
    let mut cfg = ServeConfig::new(run.clone());
    cfg.model_name = Some("tiny".into());
    cfg.feedback_db = Some(run.join("feedback.db"));
    Server::start(cfg)
}

fn chat(seed: u64, extra: Value) -> Value {
    let mut b = json!({ "model": "tiny", "messages": [{"role": "user", "content": "Tell me about a cat."}], "max_tokens": 300, "seed": seed, "temperature": 1.0 });
    for (k, v) in extra.as_object().unwrap() {
        b[k] = v.clone();
    }
    b
}

/// The JSON schema subset the tests use, checked by hand: type, properties, required,
/// additionalProperties: false, enum, const, maxLength, minimum/maximum, items, maxItems.
fn validate(v: &Value, schema: &Value, at: &str) -> Result<(), String> {
    let fail = |why: &str| Err(format!("{at}: {why} (value {v}, schema {schema})"));
    if let Some(c) = schema.get("const") {
        if v != c {
            return fail("not the const");
        }
    }
    if let Some(e) = schema.get("enum").and_then(Value::as_array) {
        if !e.contains(v) {
            return fail("not in the enum");
        }
    }
    match schema.get("type").and_then(Value::as_str) {
        Some("object") => {
            let Some(o) = v.as_object() else { return fail("not an object") };
            let props = schema.get("properties").and_then(Value::as_object).cloned().unwrap_or_default();
            for r in schema.get("required").and_then(Value::as_array).into_iter().flatten() {
                if !o.contains_key(r.as_str().unwrap()) {
                    return fail(&format!("lacks required {r}"));
                }
            }
            for (k, x) in o {
                match props.get(k) {
                    Some(s) => validate(x, s, &format!("{at}.{k}"))?,
                    None if schema.get("additionalProperties") == Some(&json!(false)) => return fail(&format!("has extra key {k}")),
                    None => {}
                }
            }
        }
        Some("string") => {
            let Some(s) = v.as_str() else { return fail("not a string") };
            if let Some(m) = schema.get("maxLength").and_then(Value::as_u64) {
                if s.chars().count() as u64 > m {
                    return fail("too long");
                }
            }
        }
        Some("integer") => {
            let Some(i) = v.as_i64() else { return fail("not an integer") };
            if schema.get("minimum").and_then(Value::as_i64).is_some_and(|m| i < m) || schema.get("maximum").and_then(Value::as_i64).is_some_and(|m| i > m) {
                return fail("out of range");
            }
        }
        Some("boolean") if !v.is_boolean() => return fail("not a boolean"),
        Some("array") => {
            let Some(a) = v.as_array() else { return fail("not an array") };
            if schema.get("maxItems").and_then(Value::as_u64).is_some_and(|m| a.len() as u64 > m) {
                return fail("too many items");
            }
            for (i, x) in a.iter().enumerate() {
                validate(x, &schema["items"], &format!("{at}[{i}]"))?;
            }
        }
        _ => {}
    }
    Ok(())
}

fn pet_schema() -> Value {
    json!({
        "type": "object",
        "properties": {
            "name": { "type": "string", "maxLength": 12 },
            "age": { "type": "integer", "minimum": 0, "maximum": 30 },
            "kind": { "enum": ["cat", "dog", "bird"] },
            "indoor": { "type": "boolean" },
            "toys": { "type": "array", "items": { "type": "string", "maxLength": 8 }, "maxItems": 3 }
        },
        "required": ["name", "age", "kind", "indoor", "toys"],
        "additionalProperties": false
    })
}

fn pet_format() -> Value {
    json!({ "type": "json_schema", "json_schema": { "name": "pet", "schema": pet_schema(), "strict": true } })
}

fn weather_tools() -> Value {
    json!([
        { "type": "function", "function": { "name": "get_weather", "description": "Weather now in a city.",
          "parameters": { "type": "object", "properties": { "city": { "type": "string", "maxLength": 12 }, "unit": { "enum": ["c", "f"] } },
                          "required": ["city", "unit"], "additionalProperties": false } } },
        { "type": "function", "function": { "name": "get_time", "parameters": { "type": "object", "properties": { "zone": { "type": "integer", "minimum": -12, "maximum": 14 } },
                          "required": ["zone"], "additionalProperties": false } } }
    ])
}

fn tool_params(name: &str) -> Value {
    weather_tools().as_array().unwrap().iter().find(|t| t["function"]["name"] == name).unwrap()["function"]["parameters"].clone()
}

#[test]
fn json_schema_answers_follow_the_schema_for_every_seed() {
    let (_d, s) = server();
    for seed in 1..=6 {
        let (st, v) = s.post("/v1/chat/completions", &chat(seed, json!({ "response_format": pet_format() })));
        assert_eq!(st, 200, "{v}");
        let c = &v["choices"][0];
        let text = c["message"]["content"].as_str().unwrap();
        assert_eq!(c["finish_reason"], "stop", "seed {seed}: {text}");
        let answer: Value = serde_json::from_str(text).unwrap_or_else(|e| panic!("seed {seed}: not JSON ({e}): {text}"));
        validate(&answer, &pet_schema(), "answer").unwrap_or_else(|e| panic!("seed {seed}: {e}"));
        eprintln!("seed {seed}: {text:?}");
    }
    // log-probabilities: the most likely alternatives are allowed tokens only (never -inf)
    let (_, v) = s.post("/v1/chat/completions", &chat(1, json!({ "response_format": pet_format(), "logprobs": true, "top_logprobs": 20 })));
    let lps = v["choices"][0]["logprobs"]["content"].as_array().unwrap();
    assert!(lps.iter().any(|t| t["top_logprobs"].as_array().unwrap().len() < 20), "some step allows fewer than 20 tokens");
    for t in lps {
        assert!(t["logprob"].as_f64().unwrap() <= 0.0);
        assert!(t["top_logprobs"].as_array().unwrap().iter().all(|a| a["logprob"].as_f64().is_some()), "{t}");
    }
    // n choices: each sequence has its own matcher
    let (st, v) = s.post("/v1/chat/completions", &chat(21, json!({ "response_format": pet_format(), "n": 3 })));
    assert_eq!(st, 200, "{v}");
    let texts: Vec<&str> = v["choices"].as_array().unwrap().iter().map(|c| c["message"]["content"].as_str().unwrap()).collect();
    for t in &texts {
        validate(&serde_json::from_str(t).unwrap(), &pet_schema(), "choice").unwrap();
    }
    assert!(texts[0] != texts[1] || texts[1] != texts[2], "{texts:?}");
    // the grammar ran and its time is reported
    let (masks, secs) = (s.metric("ferrolm_grammar_masks_total"), s.metric("ferrolm_grammar_mask_seconds_total"));
    assert!(masks > 10.0 && secs > 0.0);
    eprintln!("{masks} masks, {:.1} µs each", secs / masks * 1e6);
    // without the constraint the same request is not JSON: the grammar is what makes it so
    let (_, free) = s.post("/v1/chat/completions", &chat(1, json!({ "max_tokens": 40 })));
    assert!(serde_json::from_str::<Value>(free["choices"][0]["message"]["content"].as_str().unwrap()).is_err());
}

/// Any JSON object: a random model writes long strings of any characters, so `"` and `}`
/// are favoured by `logit_bias` to make objects end. The bias applies before the grammar's
/// mask, which keeps `}` out wherever it would break the JSON (first of all, at the start).
#[test]
fn json_object_answers_are_objects() {
    let (d, s) = server();
    let tok = ferrolm_tokenizer::Tokenizer::from_file(&d.path().join("tiny-run").join("tokenizer.json")).unwrap();
    let id = |t: &str| match tok.encode(t)[..] {
        [id] => id.to_string(),
        ref other => panic!("{t:?} is {other:?}"),
    };
    let bias = json!({ id("}"): 6, id("\""): 4 });
    let mut complete = 0;
    for seed in 1..=6 {
        let (st, v) = s.post("/v1/chat/completions", &chat(seed, json!({ "response_format": { "type": "json_object" }, "max_tokens": 400, "logit_bias": bias })));
        assert_eq!(st, 200, "{v}");
        let c = &v["choices"][0];
        let text = c["message"]["content"].as_str().unwrap();
        let t = text.trim_start();
        assert!(t.starts_with('{'), "seed {seed}: {text}");
        if c["finish_reason"] == "stop" {
            let answer: Value = serde_json::from_str(text).unwrap_or_else(|e| panic!("seed {seed}: not JSON ({e}): {text}"));
            assert!(answer.is_object(), "{answer}");
            complete += 1;
        } else {
            // cut by the length limit: still valid as far as it goes (it never closed early)
            assert_eq!(c["finish_reason"], "length");
            assert!(serde_json::from_str::<Value>(text).is_err_and(|e| e.is_eof()), "seed {seed}: {text}");
        }
    }
    assert!(complete >= 3, "only {complete} of 6 JSON objects were complete");
}

#[test]
fn a_required_or_named_tool_call_has_valid_arguments() {
    let (_d, s) = server();
    let cases = [json!("required"), json!({ "type": "function", "function": { "name": "get_time" } }), json!({ "type": "function", "function": { "name": "get_weather" } })];
    // parallel_tool_calls (default true) lets the grammar add calls, one per line
    let mut most_calls = 0;
    let mut complete = 0;
    for parallel in [None, Some(false)] {
        for (k, choice) in cases.iter().enumerate() {
            for seed in 1..=4 {
                let mut extra = json!({ "tools": weather_tools(), "tool_choice": choice });
                if let Some(p) = parallel {
                    extra["parallel_tool_calls"] = json!(p);
                }
                let (st, v) = s.post("/v1/chat/completions", &chat(seed, extra));
                assert_eq!(st, 200, "{v}");
                let c = &v["choices"][0];
                let calls = c["message"]["tool_calls"].as_array().unwrap();
                if c["finish_reason"] == "length" {
                    // cut while writing a call: the calls so far, the last one incomplete
                    assert!(parallel.is_none() && !calls.is_empty(), "{v}");
                    continue;
                }
                assert_eq!(c["finish_reason"], "tool_calls", "{v}");
                assert!(c["message"]["content"].is_null());
                if parallel == Some(false) {
                    assert_eq!(calls.len(), 1);
                }
                most_calls = most_calls.max(calls.len());
                complete += 1;
                let mut ids = std::collections::HashSet::new();
                for call in calls {
                    assert!(call["id"].as_str().unwrap().starts_with("call_"));
                    assert!(ids.insert(call["id"].as_str().unwrap().to_string()), "call ids are unique");
                    assert_eq!(call["type"], "function");
                    let name = call["function"]["name"].as_str().unwrap();
                    if let Some(n) = choice.pointer("/function/name") {
                        assert_eq!(name, n, "case {k}");
                    }
                    let args: Value = serde_json::from_str(call["function"]["arguments"].as_str().unwrap()).unwrap();
                    validate(&args, &tool_params(name), name).unwrap_or_else(|e| panic!("case {k} seed {seed}: {e}"));
                    eprintln!("{name}: {args}");
                }
            }
        }
    }
    eprintln!("most calls in one answer: {most_calls}; {complete} of 24 answers complete");
    assert!(complete >= 16, "only {complete} of 24 forced answers ended by the grammar");
}

/// Content and tool-call deltas of a streamed chat answer, reassembled: content, the calls
/// (id, name, arguments) in their `index` order, the finish reason.
fn reassemble(data: &[String]) -> (String, Vec<(String, String, String)>, String) {
    let mut content = String::new();
    let mut calls: Vec<(String, String, String)> = vec![];
    let mut finish = String::new();
    for d in data.iter().filter(|d| *d != "[DONE]") {
        let v: Value = serde_json::from_str(d).unwrap();
        let c = &v["choices"][0];
        if let Some(t) = c["delta"]["content"].as_str() {
            content.push_str(t);
        }
        if let Some(tc) = c["delta"]["tool_calls"].as_array() {
            let k = tc[0]["index"].as_u64().unwrap() as usize;
            if let Some(id) = tc[0]["id"].as_str() {
                assert_eq!(k, calls.len(), "a call header out of order");
                assert_eq!(tc[0]["type"], "function");
                calls.push((id.into(), tc[0]["function"]["name"].as_str().unwrap().into(), String::new()));
            }
            assert_eq!(k + 1, calls.len(), "arguments of another call than the last begun");
            calls[k].2.push_str(tc[0]["function"]["arguments"].as_str().unwrap());
        }
        if let Some(f) = c["finish_reason"].as_str() {
            finish = f.into();
        }
    }
    (content, calls, finish)
}

#[test]
fn streamed_answers_equal_whole_ones() {
    let (_d, s) = server();
    for body in [
        chat(11, json!({ "response_format": pet_format() })),
        chat(12, json!({ "tools": weather_tools(), "tool_choice": "required" })),
        chat(13, json!({ "tools": weather_tools(), "tool_choice": { "type": "function", "function": { "name": "get_weather" } } })),
        chat(14, json!({ "tools": weather_tools(), "tool_choice": "auto", "max_tokens": 30 })),
    ] {
        let (st, whole) = s.post("/v1/chat/completions", &body);
        assert_eq!(st, 200, "{whole}");
        let mut sb = body.clone();
        sb["stream"] = json!(true);
        let (st, mut r) = s.stream("/v1/chat/completions", &sb);
        assert_eq!(st, 200);
        let (data, _) = read_sse(&mut r);
        let (content, streamed, finish) = reassemble(&data);
        let c = &whole["choices"][0];
        assert_eq!(finish, c["finish_reason"].as_str().unwrap());
        match c["message"]["tool_calls"].as_array() {
            Some(calls) => {
                assert_eq!(streamed.len(), calls.len(), "the stream has other calls");
                for ((id, name, args), call) in streamed.iter().zip(calls) {
                    assert_eq!(name, call["function"]["name"].as_str().unwrap());
                    assert_eq!(args, call["function"]["arguments"].as_str().unwrap());
                    assert!(id.starts_with("call_"));
                }
                assert_eq!(content, c["message"]["content"].as_str().unwrap_or(""));
                // the arguments came in more than one piece
                assert!(data.iter().filter(|d| d.contains("\"arguments\"")).count() > 2, "{data:?}");
            }
            None => {
                assert!(streamed.is_empty());
                assert_eq!(content, c["message"]["content"].as_str().unwrap());
            }
        }
    }
}

#[test]
fn schemas_that_cannot_be_enforced_are_400s_naming_the_parameter() {
    let (_d, s) = server();
    let check = |body: Value, param: &str| {
        let (st, v) = s.post("/v1/chat/completions", &body);
        assert_eq!(st, 400, "{v}");
        assert_eq!(v["error"]["type"], "invalid_request_error");
        assert_eq!(v["error"]["param"], param, "{v}");
        assert!(v["error"]["message"].as_str().unwrap().len() > 10);
        v["error"]["message"].as_str().unwrap().to_string()
    };
    let fmt = |schema: Value| chat(1, json!({ "response_format": { "type": "json_schema", "json_schema": { "name": "x", "schema": schema } } }));
    let msg = check(fmt(json!({ "type": "object", "properties": { "a": { "$ref": "#/$defs/missing" } }, "required": ["a"] })), "response_format");
    assert!(msg.contains("missing"), "{msg}");
    check(fmt(json!({ "type": "frobnicate" })), "response_format");
    check(fmt(json!({ "type": "string", "minLength": 5, "maxLength": 2 })), "response_format");
    check(chat(1, json!({ "response_format": { "type": "json_schema" } })), "response_format");
    check(chat(1, json!({ "response_format": { "type": "xml" } })), "response_format");
    // a forced tool whose parameters cannot be compiled: the tool is named
    let mut tools = weather_tools();
    tools[1]["function"]["parameters"]["properties"]["zone"] = json!({ "$ref": "#/nowhere" });
    check(chat(1, json!({ "tools": tools, "tool_choice": "required" })), "tools[1].function.parameters");
    check(chat(1, json!({ "tools": weather_tools(), "tool_choice": { "type": "function", "function": { "name": "nope" } } })), "tool_choice");
    check(chat(1, json!({ "tools": [{ "type": "function" }] })), "tools[0].function");
    check(chat(1, json!({ "tools": weather_tools(), "tool_choice": "required", "response_format": pet_format() })), "response_format");
    // the server keeps serving
    assert_eq!(s.post("/v1/chat/completions", &chat(1, json!({ "response_format": pet_format() }))).0, 200);
}

#[test]
fn tool_messages_are_accepted_and_auto_answers_stay_content() {
    let (_d, s) = server();
    let messages = json!([
        { "role": "user", "content": "Weather in Oslo?" },
        { "role": "assistant", "content": null, "tool_calls": [{ "id": "call_1", "type": "function", "function": { "name": "get_weather", "arguments": "{\"city\": \"Oslo\", \"unit\": \"c\"}" } }] },
        { "role": "tool", "tool_call_id": "call_1", "content": "-3" }
    ]);
    let body = json!({ "model": "tiny", "messages": messages, "tools": weather_tools(), "max_tokens": 8, "seed": 3 });
    let (st, v) = s.post("/v1/chat/completions", &body);
    assert_eq!(st, 200, "{v}");
    // a random model's free answer is no tool call: content, the engine's finish reason
    let c = &v["choices"][0];
    assert!(c["message"]["content"].is_string(), "{v}");
    assert!(c["message"].get("tool_calls").is_none());
    assert!(["stop", "length"].contains(&c["finish_reason"].as_str().unwrap()));
    // the tools and the call's result are in the prompt
    let (_, bare) = s.post("/v1/chat/completions", &json!({ "model": "tiny", "messages": [messages[0]], "max_tokens": 8 }));
    assert!(v["usage"]["prompt_tokens"].as_u64().unwrap() > bare["usage"]["prompt_tokens"].as_u64().unwrap() + 50);
    // a tool message needs the call it answers
    let (st, e) = s.post("/v1/chat/completions", &json!({ "model": "tiny", "messages": [messages[0], { "role": "tool", "content": "x" }] }));
    assert_eq!((st, e["error"]["param"].as_str()), (400, Some("messages[1].tool_call_id")));
}

/// With a Hugging Face Jinja chat template, the prompt is the template rendered with
/// `tools` in its context (and tool messages as they came).
#[test]
fn tools_reach_the_jinja_chat_template() {
    let dir = tempfile::tempdir().unwrap();
    let run = tiny_run(dir.path(), 2048);
    let tpl = "{% if tools is defined %}<|system|>\nTools: {% for t in tools %}{{ t.function.name }} {{ t.function.parameters | tojson }}; {% endfor %}<|end|>\n{% endif %}\
{% for m in messages %}{% if m.role == 'tool' %}<|user|>\nResult of {{ m.tool_call_id }}: {{ m.content }}<|end|>\n\
{% elif m.tool_calls %}<|assistant|>\n{% for c in m.tool_calls %}{{ c.function.name }}({{ c.function.arguments | tojson }}){% endfor %}<|end|>\n\
{% else %}<|{{ m.role }}|>\n{{ m.content }}<|end|>\n{% endif %}{% endfor %}{% if add_generation_prompt %}<|assistant|>\n{% endif %}";
    std::fs::write(run.join("tokenizer_config.json"), json!({ "chat_template": tpl }).to_string()).unwrap();
    let s = start(run.clone());
    let tok = ferrolm_tokenizer::Tokenizer::from_file(&run.join("tokenizer.json")).unwrap();
    let messages = vec![
        json!({ "role": "user", "content": "Weather in Oslo?" }),
        json!({ "role": "assistant", "content": null, "tool_calls": [{ "id": "call_1", "type": "function", "function": { "name": "get_weather", "arguments": "{\"city\": \"Oslo\"}" } }] }),
        json!({ "role": "tool", "tool_call_id": "call_1", "content": "-3" }),
    ];
    let tools = weather_tools().as_array().unwrap().clone();
    let mut for_template = messages.clone();
    for_template[1]["tool_calls"][0]["function"]["arguments"] = json!({ "city": "Oslo" });
    let rendered = ferrolm_tokenizer::hf_config::render_template_json(tpl, &for_template, Some(&tools), true, None, None).unwrap();
    assert!(rendered.contains("Tools: get_weather {") && rendered.contains("Result of call_1: -3"), "{rendered}");
    let expected = 1 + tok.encode(&rendered).len(); // the sequence start, then the rendering
    let (st, v) = s.post("/v1/chat/completions", &json!({ "model": "tiny", "messages": messages, "tools": tools, "max_tokens": 2 }));
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["usage"]["prompt_tokens"].as_u64().unwrap() as usize, expected);
    // tool_choice "none": the template gets no tools
    let without = ferrolm_tokenizer::hf_config::render_template_json(tpl, &for_template, None, true, None, None).unwrap();
    let (_, v) = s.post("/v1/chat/completions", &json!({ "model": "tiny", "messages": messages, "tools": tools, "tool_choice": "none", "max_tokens": 2 }));
    assert_eq!(v["usage"]["prompt_tokens"].as_u64().unwrap() as usize, 1 + tok.encode(&without).len());
}
