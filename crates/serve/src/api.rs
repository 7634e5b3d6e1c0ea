//! Request bodies of the OpenAI API as ferrolm accepts them, and their validation into the
//! sampling settings of one sequence. Unknown top-level parameters are refused (as OpenAI
//! does); parameters OpenAI has but ferrolm cannot honour are refused by name rather
//! than ignored. `response_format` (JSON object / JSON schema) and `tools`/`tool_choice`
//! are honoured by constrained decoding ([`crate::grammar`], [`crate::tools`]).

use std::collections::HashMap;

use ferrolm_infer::SamplingConfig;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::error::ApiError;

/// `stop`: one string or up to four.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum Stop {
    One(String),
    Many(Vec<String>),
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StreamOptions {
    #[serde(default)]
    pub include_usage: Option<bool>,
    #[serde(default)]
    pub include_obfuscation: Option<bool>,
}

/// A message's content: a string, or an array of parts of which only text is supported.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum Content {
    Text(String),
    Parts(Vec<ContentPart>),
}

#[derive(Debug, Clone, Deserialize)]
pub struct ContentPart {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub text: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct ChatMessage {
    pub role: String,
    #[serde(default)]
    pub content: Option<Content>,
    #[serde(default)]
    pub name: Option<String>,
    /// An assistant message's calls: `[{"id", "type": "function", "function": {"name", "arguments"}}]`.
    #[serde(default)]
    pub tool_calls: Option<Value>,
    /// A tool message: the call it answers.
    #[serde(default)]
    pub tool_call_id: Option<String>,
    #[serde(default)]
    pub refusal: Option<Value>,
}

/// Sampling parameters both endpoints share.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct Common {
    pub temperature: Option<f32>,
    pub top_p: Option<f32>,
    /// Not OpenAI's, but vLLM's and llama.cpp's: keep the k most likely tokens.
    pub top_k: Option<usize>,
    pub seed: Option<i64>,
    pub stop: Option<Stop>,
    pub n: Option<u64>,
    pub stream: Option<bool>,
    pub stream_options: Option<StreamOptions>,
    pub frequency_penalty: Option<f32>,
    pub presence_penalty: Option<f32>,
    pub logit_bias: Option<HashMap<String, f32>>,
    pub user: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChatRequest {
    pub model: String,
    pub messages: Vec<ChatMessage>,
    pub max_tokens: Option<u64>,
    pub max_completion_tokens: Option<u64>,
    pub logprobs: Option<bool>,
    pub top_logprobs: Option<u64>,
    pub temperature: Option<f32>,
    pub top_p: Option<f32>,
    pub top_k: Option<usize>,
    pub seed: Option<i64>,
    pub stop: Option<Stop>,
    pub n: Option<u64>,
    pub stream: Option<bool>,
    pub stream_options: Option<StreamOptions>,
    pub frequency_penalty: Option<f32>,
    pub presence_penalty: Option<f32>,
    pub logit_bias: Option<HashMap<String, f32>>,
    pub user: Option<String>,
    // Accepted and without effect on a local server.
    pub store: Option<bool>,
    pub metadata: Option<Value>,
    pub service_tier: Option<String>,
    /// Whether an answer may hold several tool calls (default true, as OpenAI's).
    pub parallel_tool_calls: Option<bool>,
    /// Text, a JSON object or a JSON schema: enforced by constrained decoding.
    pub response_format: Option<Value>,
    pub tools: Option<Value>,
    pub tool_choice: Option<Value>,
    // Refused when they ask for something ferrolm does not do.
    pub functions: Option<Value>,
    pub function_call: Option<Value>,
    pub modalities: Option<Value>,
    pub audio: Option<Value>,
    pub prediction: Option<Value>,
    pub reasoning_effort: Option<Value>,
    pub web_search_options: Option<Value>,
}

/// `prompt` of the completions endpoint: text, texts, token ids, or lists of token ids.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum Prompt {
    Text(String),
    Texts(Vec<String>),
    Tokens(Vec<u32>),
    TokenLists(Vec<Vec<u32>>),
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CompletionRequest {
    pub model: String,
    pub prompt: Prompt,
    pub max_tokens: Option<u64>,
    pub echo: Option<bool>,
    /// Legacy: the number of most likely tokens to report per position (0–5).
    pub logprobs: Option<u64>,
    pub suffix: Option<String>,
    pub best_of: Option<u64>,
    pub temperature: Option<f32>,
    pub top_p: Option<f32>,
    pub top_k: Option<usize>,
    pub seed: Option<i64>,
    pub stop: Option<Stop>,
    pub n: Option<u64>,
    pub stream: Option<bool>,
    pub stream_options: Option<StreamOptions>,
    pub frequency_penalty: Option<f32>,
    pub presence_penalty: Option<f32>,
    pub logit_bias: Option<HashMap<String, f32>>,
    pub user: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EmbeddingRequest {
    pub model: String,
    pub input: Value,
    pub encoding_format: Option<String>,
    pub dimensions: Option<u64>,
    pub user: Option<String>,
}

/// Validated per-sequence settings of a request.
#[derive(Debug, Clone)]
pub struct Settings {
    pub sampling: SamplingConfig,
    pub n: usize,
    pub stop_strings: Vec<String>,
    pub stream: bool,
    pub include_usage: bool,
    pub frequency_penalty: f32,
    pub presence_penalty: f32,
    pub logit_bias: Vec<(u32, f32)>,
}

/// Most choices one request may ask for.
pub const MAX_N: u64 = 16;

impl Common {
    /// Check ranges as OpenAI documents them. `vocab` bounds `logit_bias` keys.
    pub fn settings(&self, vocab: usize, default_seed: u64) -> Result<Settings, ApiError> {
        let temperature = self.temperature.unwrap_or(1.0);
        if !(0.0..=2.0).contains(&temperature) {
            return Err(ApiError::invalid("temperature", format!("temperature must be between 0 and 2, got {temperature}")));
        }
        let top_p = self.top_p.unwrap_or(1.0);
        if !(top_p > 0.0 && top_p <= 1.0) {
            return Err(ApiError::invalid("top_p", format!("top_p must be in (0, 1], got {top_p}")));
        }
        let n = self.n.unwrap_or(1);
        if n == 0 || n > MAX_N {
            return Err(ApiError::invalid("n", format!("n must be between 1 and {MAX_N}, got {n}")));
        }
        let stop_strings = match &self.stop {
            None => vec![],
            Some(Stop::One(s)) => vec![s.clone()],
            Some(Stop::Many(v)) => v.clone(),
        };
        if stop_strings.len() > 4 {
            return Err(ApiError::invalid("stop", format!("at most 4 stop sequences, got {}", stop_strings.len())));
        }
        let mut penalties = [0f32; 2];
        for (i, (name, v)) in [("frequency_penalty", self.frequency_penalty), ("presence_penalty", self.presence_penalty)].into_iter().enumerate() {
            let v = v.unwrap_or(0.0);
            if !(-2.0..=2.0).contains(&v) {
                return Err(ApiError::invalid(name, format!("{name} must be between -2 and 2, got {v}")));
            }
            penalties[i] = v;
        }
        let mut logit_bias = Vec::new();
        for (k, &b) in self.logit_bias.iter().flatten() {
            let id: u32 = k.parse().map_err(|_| ApiError::invalid("logit_bias", format!("logit_bias keys are token ids, got {k:?}")))?;
            if id as usize >= vocab {
                return Err(ApiError::invalid("logit_bias", format!("token id {id} is outside the vocabulary of {vocab}")));
            }
            if !(-100.0..=100.0).contains(&b) {
                return Err(ApiError::invalid("logit_bias", format!("biases must be between -100 and 100, got {b}")));
            }
            logit_bias.push((id, b));
        }
        logit_bias.sort_by_key(|e| e.0);
        let stream = self.stream.unwrap_or(false);
        if self.stream_options.is_some() && !stream {
            return Err(ApiError::invalid("stream_options", "stream_options is only allowed when stream is true"));
        }
        let include_usage = self.stream_options.as_ref().and_then(|o| o.include_usage).unwrap_or(false);
        let seed = self.seed.map(|s| s as u64).unwrap_or(default_seed);
        Ok(Settings {
            sampling: SamplingConfig { temperature, top_k: self.top_k.unwrap_or(0), top_p, seed },
            n: n as usize,
            stop_strings,
            stream,
            include_usage,
            frequency_penalty: penalties[0],
            presence_penalty: penalties[1],
            logit_bias,
        })
    }
}

impl ChatRequest {
    pub fn common(&self) -> Common {
        Common {
            temperature: self.temperature,
            top_p: self.top_p,
            top_k: self.top_k,
            seed: self.seed,
            stop: self.stop.clone(),
            n: self.n,
            stream: self.stream,
            stream_options: self.stream_options.clone(),
            frequency_penalty: self.frequency_penalty,
            presence_penalty: self.presence_penalty,
            logit_bias: self.logit_bias.clone(),
            user: self.user.clone(),
        }
    }

    /// Parameters ferrolm refuses rather than silently ignores.
    pub fn check_unsupported(&self) -> Result<(), ApiError> {
        let refused: [(&str, bool); 6] = [
            ("functions", self.functions.is_some()),
            ("function_call", self.function_call.is_some()),
            ("modalities", self.modalities.as_ref().is_some_and(|m| m != &serde_json::json!(["text"]))),
            ("audio", self.audio.is_some()),
            ("prediction", self.prediction.is_some()),
            ("web_search_options", self.web_search_options.is_some()),
        ];
        if let Some((name, _)) = refused.iter().find(|(_, on)| *on) {
            return Err(ApiError::unsupported(name, format!("`{name}` is not supported by this server")));
        }
        Ok(())
    }

    /// The JSON schema `response_format` asks the answer to follow: None for text,
    /// `{"type": "object"}` for `json_object`, the given schema for `json_schema` (any JSON
    /// value when it has none). Whether llguidance can compile it is checked later.
    pub fn response_schema(&self) -> Result<Option<Value>, ApiError> {
        let bad = |m: String| ApiError::invalid("response_format", m);
        let Some(rf) = self.response_format.as_ref().filter(|v| !v.is_null()) else { return Ok(None) };
        match rf.get("type").and_then(Value::as_str) {
            Some("text") => Ok(None),
            Some("json_object") => Ok(Some(json!({ "type": "object" }))),
            Some("json_schema") => {
                let Some(js) = rf.get("json_schema").filter(|v| v.is_object()) else {
                    return Err(bad("response_format of type json_schema needs a `json_schema` object".into()));
                };
                match js.get("name").and_then(Value::as_str) {
                    Some(n) if (1..=64).contains(&n.len()) && n.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-') => {}
                    _ => return Err(bad("json_schema.name must be 1 to 64 characters of a-z, A-Z, 0-9, _ and -".into())),
                }
                if js.get("strict").is_some_and(|s| !s.is_boolean() && !s.is_null()) {
                    return Err(bad("json_schema.strict must be a boolean".into()));
                }
                match js.get("schema") {
                    None | Some(Value::Null) => Ok(Some(json!({}))),
                    Some(s) if s.is_object() || s.is_boolean() => Ok(Some(s.clone())),
                    Some(s) => Err(bad(format!("json_schema.schema must be a JSON schema (an object), got {s}"))),
                }
            }
            _ => Err(bad(format!("response_format.type must be \"text\", \"json_object\" or \"json_schema\", got {}", rf.get("type").unwrap_or(rf)))),
        }
    }

    /// max_completion_tokens, or the older max_tokens; None when neither was given.
    pub fn max_tokens(&self) -> Result<Option<u64>, ApiError> {
        let m = self.max_completion_tokens.or(self.max_tokens);
        if m == Some(0) {
            let p = if self.max_completion_tokens.is_some() { "max_completion_tokens" } else { "max_tokens" };
            return Err(ApiError::invalid(p, format!("{p} must be at least 1")));
        }
        Ok(m)
    }

    pub fn top_logprobs(&self) -> Result<Option<usize>, ApiError> {
        if let Some(k) = self.top_logprobs {
            if k > 20 {
                return Err(ApiError::invalid("top_logprobs", format!("top_logprobs must be between 0 and 20, got {k}")));
            }
            if self.logprobs != Some(true) {
                return Err(ApiError::invalid("top_logprobs", "top_logprobs needs logprobs: true"));
            }
        }
        Ok((self.logprobs == Some(true)).then(|| self.top_logprobs.unwrap_or(0) as usize))
    }
}

impl CompletionRequest {
    pub fn common(&self) -> Common {
        Common {
            temperature: self.temperature,
            top_p: self.top_p,
            top_k: self.top_k,
            seed: self.seed,
            stop: self.stop.clone(),
            n: self.n,
            stream: self.stream,
            stream_options: self.stream_options.clone(),
            frequency_penalty: self.frequency_penalty,
            presence_penalty: self.presence_penalty,
            logit_bias: self.logit_bias.clone(),
            user: self.user.clone(),
        }
    }
}
