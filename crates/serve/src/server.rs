//! The HTTP side: state, router, handlers, server-sent events, auth, CORS, metrics and
//! graceful shutdown. Handlers validate a request into sequences, queue them with the
//! [`Engine`] and turn its events into OpenAI's response or chunk format.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, MatchedPath, Path, Request, State};
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use candle_core::Device;
use ferrolm_finetune::prompt;
use ferrolm_finetune::prompt::ChatFormat;
use ferrolm_model::ModelKind;
use ferrolm_qa::Pooling;
use ferrolm_tokenizer::{Message, Role, Tokenizer};
use serde::de::DeserializeOwned;
use serde_json::{json, Value};
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver};

use crate::api::{ChatRequest, CompletionRequest, Prompt, Settings};
use crate::embeddings::EmbedModel;
use crate::engine::{Engine, EngineConfig, Event, Finish, SeqRequest, TokenLogprob};
use crate::error::ApiError;
use crate::feedback::FeedbackStore;
use crate::grammar::{Constraint, Grammars};
use crate::metrics::Metrics;
use crate::tools::{CallGrammar, Piece, ToolReader, Tools};

/// Everything `ferrolm serve` can be told.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    /// A ferrolm run folder (config.toml, checkpoints/, tokenizer.json).
    pub run_dir: PathBuf,
    /// The name clients use in `model` (default: the run folder's name).
    pub model_name: Option<String>,
    pub api_key: Option<String>,
    pub max_concurrency: usize,
    pub max_queue: usize,
    /// Context limit; default and maximum the model's max_seq_len.
    pub ctx: Option<usize>,
    pub max_body_bytes: usize,
    /// Interval of SSE keep-alive comments while a stream has nothing to send.
    pub keep_alive: Duration,
    /// Origins allowed to call the API from a browser ("*" for any); empty: no CORS headers.
    pub cors_origins: Vec<String>,
    /// SQLite file for the web page's judgements (default RUN_DIR/feedback/feedback.db).
    pub feedback_db: Option<PathBuf>,
    pub prefix_cache_entries: usize,
    /// How long open streams may run on after a shutdown signal before they are cut.
    pub shutdown_grace: Duration,
    /// An encoder run folder served at `/v1/embeddings` (none: that endpoint answers 400).
    pub embed_model: Option<PathBuf>,
    pub embed_pooling: Pooling,
    /// Quantize the model's weights for CPU decoding (`--quant q8_0|q4_k|f16`).
    pub quant: Option<ferrolm_model::QuantKind>,
}

impl ServeConfig {
    pub fn new(run_dir: PathBuf) -> Self {
        Self {
            run_dir,
            model_name: None,
            api_key: None,
            max_concurrency: 8,
            max_queue: 64,
            ctx: None,
            max_body_bytes: 4 << 20,
            keep_alive: Duration::from_secs(10),
            cors_origins: vec![],
            feedback_db: None,
            prefix_cache_entries: 16,
            shutdown_grace: Duration::from_secs(10),
            embed_model: None,
            embed_pooling: Pooling::Mean,
            quant: None,
        }
    }
}

pub struct AppState {
    pub engine: Engine,
    pub tok: Arc<Tokenizer>,
    /// How a conversation becomes a prompt and where an answer ends: the run's marker
    /// template (with its Jinja template, if any, for requests with tools) or a Hugging Face
    /// Jinja template of any other shape, rendered as transformers renders it.
    pub format: ChatFormat,
    /// The token trie and grammar compiler, built on the first constrained request.
    grammars: OnceLock<Result<Arc<Grammars>, String>>,
    pub model_name: String,
    pub ctx: usize,
    pub vocab: usize,
    pub api_key: Option<String>,
    pub metrics: Arc<Metrics>,
    pub created: u64,
    pub cors: Vec<String>,
    pub keep_alive: Duration,
    pub max_body: usize,
    pub feedback: FeedbackStore,
    /// The encoder behind `/v1/embeddings`, when one is served.
    pub embed: Option<EmbedModel>,
    seed_counter: AtomicU64,
    text_stops: Vec<u32>,
    bos: Vec<u32>,
    /// Settings shown by the web page (sampling defaults, context).
    pub max_concurrency: usize,
}

fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// Load the run folder's model, tokenizer and chat template and start the scheduler.
pub fn load(cfg: &ServeConfig, device: &Device) -> Result<Arc<AppState>> {
    let mut loaded = ferrolm_model::load_model(&cfg.run_dir, device)?;
    if let Some(kind) = cfg.quant {
        let summary = loaded.model.quantize(kind)?;
        eprintln!("--quant {kind}: {summary}");
    }
    let model = loaded.model.into_decoder("serving")?;
    anyhow::ensure!(
        model.config().kind == ModelKind::Causal,
        "serving needs a causal decoder (model.kind = \"causal\"); {} is a {:?} decoder",
        cfg.run_dir.display(),
        model.config().kind
    );
    let tok = Arc::new(prompt::load_tokenizer(&cfg.run_dir)?);
    let format = ChatFormat::load(&cfg.run_dir, &tok)?;
    let max_len = model.config().max_seq_len;
    let ctx = cfg.ctx.unwrap_or(max_len);
    anyhow::ensure!(ctx <= max_len, "--ctx {ctx} is beyond the model's max_seq_len {max_len}");
    let vocab = model.config().vocab_size;
    let metrics = Arc::new(Metrics::default());
    let engine = Engine::start(
        model,
        tok.clone(),
        EngineConfig { max_concurrency: cfg.max_concurrency, max_queue: cfg.max_queue, ctx, prefix_cache_entries: cfg.prefix_cache_entries },
        metrics.clone(),
    )?;
    let model_name = match &cfg.model_name {
        Some(n) => n.clone(),
        None => cfg.run_dir.canonicalize().unwrap_or(cfg.run_dir.clone()).file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "ferrolm".into()),
    };
    let db = cfg.feedback_db.clone().unwrap_or_else(|| cfg.run_dir.join("feedback").join("feedback.db"));
    let feedback = FeedbackStore::open(&db)?;
    let embed = match &cfg.embed_model {
        Some(dir) => Some(EmbedModel::load(dir, cfg.embed_pooling, None, device).with_context(|| format!("loading the embedding model {}", dir.display()))?),
        None => None,
    };
    let text_stops: Vec<u32> = tok.try_eot_id().into_iter().collect();
    Ok(Arc::new(AppState {
        text_stops,
        bos: prompt::bos(&tok),
        engine,
        format,
        grammars: OnceLock::new(),
        model_name,
        ctx,
        vocab,
        api_key: cfg.api_key.clone().filter(|k| !k.is_empty()),
        metrics,
        created: unix_now(),
        cors: cfg.cors_origins.clone(),
        keep_alive: cfg.keep_alive,
        max_body: cfg.max_body_bytes,
        feedback,
        embed,
        seed_counter: AtomicU64::new(unix_now().wrapping_mul(0x9E37_79B9_7F4A_7C15)),
        max_concurrency: cfg.max_concurrency,
        tok,
    }))
}

pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/", get(crate::page::index))
        .route("/assets/app.js", get(crate::page::script))
        .route("/assets/app.css", get(crate::page::style))
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .route("/openapi.json", get(openapi))
        .route("/v1/models", get(models))
        .route("/v1/models/{id}", get(model_by_id))
        .route("/v1/chat/completions", post(chat))
        .route("/v1/completions", post(completions))
        .route("/infill", post(infill))
        .route("/v1/embeddings", post(crate::embeddings::embeddings))
        .route("/v1/feedback", post(crate::feedback::record).get(crate::feedback::summary))
        .fallback(|req: Request| async move { ApiError::not_found(req.uri().path()) })
        .layer(DefaultBodyLimit::max(state.max_body))
        .layer(middleware::from_fn_with_state(state.clone(), guard))
        .with_state(state)
}

/// Auth (API key on /v1/ and /metrics), CORS, and request counting, around every route.
async fn guard(State(st): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    let route = req.extensions().get::<MatchedPath>().map(|m| m.as_str().to_string()).unwrap_or_else(|| "other".into());
    let origin = req.headers().get(header::ORIGIN).cloned();
    let allowed = origin.as_ref().and_then(|o| cors_allow(&st.cors, o));
    let mut resp = if req.method() == Method::OPTIONS && !st.cors.is_empty() {
        // A CORS preflight carries no credentials: answer it before the key check.
        let mut r = StatusCode::NO_CONTENT.into_response();
        let h = r.headers_mut();
        h.insert(header::ACCESS_CONTROL_ALLOW_METHODS, HeaderValue::from_static("GET, POST, OPTIONS"));
        h.insert(header::ACCESS_CONTROL_ALLOW_HEADERS, HeaderValue::from_static("authorization, content-type"));
        h.insert(header::ACCESS_CONTROL_MAX_AGE, HeaderValue::from_static("600"));
        r
    } else if needs_key(req.uri().path()) && !authorized(st.api_key.as_deref(), req.headers().get(header::AUTHORIZATION)) {
        ApiError::unauthorized().into_response()
    } else {
        next.run(req).await
    };
    if let Some(o) = allowed {
        resp.headers_mut().insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, o);
        resp.headers_mut().insert(header::VARY, HeaderValue::from_static("Origin"));
    }
    st.metrics.count_request(&route, resp.status().as_u16());
    resp
}

fn cors_allow(allowed: &[String], origin: &HeaderValue) -> Option<HeaderValue> {
    if allowed.iter().any(|a| a == "*") {
        return Some(HeaderValue::from_static("*"));
    }
    let o = origin.to_str().ok()?;
    allowed.iter().any(|a| a == o).then(|| origin.clone())
}

fn needs_key(path: &str) -> bool {
    path.starts_with("/v1/") || path == "/metrics"
}

/// Constant-time comparison of the bearer token with the key.
fn authorized(key: Option<&str>, header: Option<&HeaderValue>) -> bool {
    let Some(key) = key else { return true };
    let Some(given) = header.and_then(|h| h.to_str().ok()).and_then(|h| h.strip_prefix("Bearer ")) else { return false };
    let (a, b) = (key.as_bytes(), given.trim().as_bytes());
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn health(State(st): State<Arc<AppState>>) -> Response {
    let up = st.engine.is_running();
    let status = if up { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (status, Json(json!({ "status": if up { "ok" } else { "unavailable" }, "model": st.model_name, "model_loaded": up }))).into_response()
}

async fn metrics(State(st): State<Arc<AppState>>) -> Response {
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], st.metrics.render(st.engine.is_running())).into_response()
}

async fn openapi() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], crate::OPENAPI).into_response()
}

fn model_card(st: &AppState) -> Value {
    json!({ "id": st.model_name, "object": "model", "created": st.created, "owned_by": "ferrolm", "context_length": st.ctx })
}

fn embed_card(st: &AppState, em: &EmbedModel) -> Value {
    json!({ "id": em.name, "object": "model", "created": st.created, "owned_by": "ferrolm", "context_length": em.context_length(), "dimensions": em.dim() })
}

async fn models(State(st): State<Arc<AppState>>) -> Json<Value> {
    let mut data = vec![model_card(&st)];
    data.extend(st.embed.as_ref().filter(|em| em.name != st.model_name).map(|em| embed_card(&st, em)));
    Json(json!({ "object": "list", "data": data }))
}

async fn model_by_id(State(st): State<Arc<AppState>>, Path(id): Path<String>) -> Response {
    match &st.embed {
        _ if id == st.model_name => Json(model_card(&st)).into_response(),
        Some(em) if id == em.name => Json(embed_card(&st, em)).into_response(),
        _ => ApiError::model_not_found(&id, &st.model_name).into_response(),
    }
}

pub(crate) fn parse<T: DeserializeOwned>(body: Result<Bytes, BytesRejection>, limit: usize) -> Result<T, ApiError> {
    let bytes = body.map_err(|r| if r.status() == StatusCode::PAYLOAD_TOO_LARGE { ApiError::too_large(limit) } else { ApiError::malformed(r.body_text()) })?;
    serde_json::from_slice(&bytes).map_err(|e| ApiError::from_json(&e))
}

impl AppState {
    fn check_model(&self, name: &str) -> Result<(), ApiError> {
        if name == self.model_name {
            Ok(())
        } else {
            Err(ApiError::model_not_found(name, &self.model_name))
        }
    }

    fn fresh_seed(&self) -> u64 {
        self.seed_counter.fetch_add(0x9E37_79B9_7F4A_7C15, Relaxed)
    }

    /// The answer budget: the request's, checked against the context, or all that is left.
    fn budget(&self, prompt_len: usize, asked: Option<u64>, param: &str) -> Result<usize, ApiError> {
        if prompt_len >= self.ctx {
            return Err(ApiError::context_length(format!(
                "this model's maximum context length is {} tokens; the prompt has {prompt_len} tokens and leaves no room for an answer",
                self.ctx
            )));
        }
        match asked {
            None => Ok(self.ctx - prompt_len),
            Some(m) if m > self.ctx as u64 => Err(ApiError::invalid(param, format!("{param} is {m}, beyond the model's context of {} tokens", self.ctx))),
            Some(m) if prompt_len + m as usize > self.ctx => Err(ApiError::context_length(format!(
                "this model's maximum context length is {} tokens; you requested {} tokens ({prompt_len} in the prompt, {m} for the answer)",
                self.ctx,
                prompt_len + m as usize
            ))),
            Some(m) => Ok(m as usize),
        }
    }

    /// Queue one sequence per (prompt, choice); `index` = prompt × n + choice.
    #[allow(clippy::too_many_arguments)]
    fn submit(
        &self,
        prompts: &[(Arc<Vec<u32>>, usize)],
        s: &Settings,
        stops: &[u32],
        top_logprobs: Option<usize>,
        prompt_logprobs: bool,
        constraint: Option<&Constraint>,
        answer_is_new_text: bool,
    ) -> Result<UnboundedReceiver<(usize, Event)>, ApiError> {
        let strip_leading_spaces = if answer_is_new_text { self.tok.strip_leading_spaces() } else { 0 };
        let (tx, rx) = unbounded_channel();
        let arrived = Instant::now();
        let mut seqs = Vec::new();
        for (p, (ids, max_tokens)) in prompts.iter().enumerate() {
            for j in 0..s.n {
                let mut sampling = s.sampling.clone();
                sampling.seed = sampling.seed.wrapping_add(j as u64);
                seqs.push(SeqRequest {
                    index: p * s.n + j,
                    prompt: ids.clone(),
                    max_tokens: *max_tokens,
                    sampling,
                    stop_tokens: stops.to_vec(),
                    stop_strings: s.stop_strings.clone(),
                    strip_leading_spaces,
                    top_logprobs,
                    prompt_logprobs,
                    frequency_penalty: s.frequency_penalty,
                    presence_penalty: s.presence_penalty,
                    logit_bias: s.logit_bias.clone(),
                    constraint: constraint.cloned(),
                    events: tx.clone(),
                    arrived,
                });
            }
        }
        self.engine.submit(seqs).map_err(|_| {
            self.metrics.rejected.fetch_add(1, Relaxed);
            ApiError::busy(1)
        })?;
        Ok(rx)
    }
}

/// A chat request's messages, in both forms a template may need.
pub(crate) struct Conversation {
    /// In the marker template's roles: a tool result becomes a user turn inside
    /// `<tool_response>`, an assistant's calls `<tool_call>` lines after its content.
    pub marker: Vec<Message>,
    /// As JSON objects for a Jinja template (`role`, `content`, `tool_calls` with parsed
    /// arguments, `tool_call_id`, `name`).
    pub json: Vec<Value>,
    /// Whether any message is a tool result or carries tool calls.
    pub has_tool_messages: bool,
}

/// Text of a message's content: a string, or text parts.
fn content_text(c: &Option<crate::api::Content>, i: usize) -> Result<Option<String>, ApiError> {
    Ok(match c {
        None => None,
        Some(crate::api::Content::Text(t)) => Some(t.clone()),
        Some(crate::api::Content::Parts(parts)) => {
            let mut s = String::new();
            for (j, p) in parts.iter().enumerate() {
                match (p.kind.as_str(), &p.text) {
                    ("text", Some(t)) => s.push_str(t),
                    _ => return Err(ApiError::unsupported(&format!("messages[{i}].content[{j}]"), format!("content parts of type {:?} are not supported (text only)", p.kind))),
                }
            }
            Some(s)
        }
    })
}

/// An assistant message's `tool_calls`, checked: (id, name, arguments string) each.
fn tool_calls_of(v: &Value, i: usize) -> Result<Vec<(String, String, String)>, ApiError> {
    let Some(calls) = v.as_array() else {
        return Err(ApiError::invalid(&format!("messages[{i}].tool_calls"), "tool_calls must be an array"));
    };
    calls
        .iter()
        .enumerate()
        .map(|(j, c)| {
            let p = format!("messages[{i}].tool_calls[{j}]");
            let id = c.get("id").and_then(Value::as_str).unwrap_or_default().to_string();
            if c.get("type").is_some_and(|t| t != "function") {
                return Err(ApiError::invalid(&format!("{p}.type"), "the only tool call type is \"function\""));
            }
            let name = c.pointer("/function/name").and_then(Value::as_str).ok_or_else(|| ApiError::invalid(&format!("{p}.function.name"), "a tool call needs function.name"))?;
            let args = match c.pointer("/function/arguments") {
                Some(Value::String(a)) => a.clone(),
                None | Some(Value::Null) => "{}".to_string(),
                Some(_) => return Err(ApiError::invalid(&format!("{p}.function.arguments"), "function.arguments is a string of JSON")),
            };
            Ok((id, name.to_string(), args))
        })
        .collect()
}

/// Conversation messages of a chat request.
pub(crate) fn chat_messages(req: &ChatRequest) -> Result<Conversation, ApiError> {
    if req.messages.is_empty() {
        return Err(ApiError::invalid("messages", "messages must hold at least one message"));
    }
    let mut conv = Conversation { marker: vec![], json: vec![], has_tool_messages: false };
    for (i, m) in req.messages.iter().enumerate() {
        let content = content_text(&m.content, i)?;
        let text = content.clone().unwrap_or_default();
        let mut j = json!({ "role": m.role, "content": content });
        if let Some(n) = &m.name {
            j["name"] = json!(n);
        }
        match m.role.as_str() {
            "system" | "developer" => {
                j["role"] = json!("system");
                conv.marker.push(Message::new(Role::System, text));
            }
            "user" => conv.marker.push(Message::new(Role::User, text)),
            "assistant" => {
                let calls = match m.tool_calls.as_ref().filter(|v| !v.is_null()) {
                    Some(v) => tool_calls_of(v, i)?,
                    None => vec![],
                };
                let mut shown = text;
                if !calls.is_empty() {
                    conv.has_tool_messages = true;
                    let mut for_template = vec![];
                    for (id, name, args) in &calls {
                        // templates index into the arguments (Llama 3.1, Qwen): hand them an object
                        let parsed = serde_json::from_str::<Value>(args).unwrap_or_else(|_| json!(args));
                        for_template.push(json!({ "id": id, "type": "function", "function": { "name": name, "arguments": parsed } }));
                        if !shown.is_empty() {
                            shown.push('\n');
                        }
                        shown.push_str(&format!("<tool_call>\n{}\n</tool_call>", json!({ "name": name, "arguments": parsed })));
                    }
                    j["tool_calls"] = json!(for_template);
                }
                conv.marker.push(Message::new(Role::Assistant, shown));
            }
            "tool" => {
                let Some(id) = m.tool_call_id.as_deref() else {
                    return Err(ApiError::invalid(&format!("messages[{i}].tool_call_id"), "a tool message needs the tool_call_id of the call it answers"));
                };
                conv.has_tool_messages = true;
                j["tool_call_id"] = json!(id);
                conv.marker.push(Message::new(Role::User, format!("<tool_response>\n{text}\n</tool_response>")));
            }
            "function" => return Err(ApiError::unsupported(&format!("messages[{i}].role"), "function messages (the deprecated `functions` API) are not supported; use tools")),
            other => return Err(ApiError::invalid(&format!("messages[{i}].role"), format!("unknown role {other:?} (system, developer, user, assistant or tool)"))),
        }
        conv.json.push(j);
    }
    Ok(conv)
}

impl AppState {
    /// Prompt ids of a conversation, through the run's [`ChatFormat`]. Tools (when offered)
    /// and tool messages go through a Jinja chat template that takes them, with `tools` in
    /// its context; otherwise the tools are described in the system message and tool turns
    /// are written as text. A template that refuses the conversation (`raise_exception`) is
    /// a 400 with its message.
    fn chat_prompt(&self, conv: &Conversation, tools: &Tools) -> Result<Vec<u32>, ApiError> {
        let offer = tools.active();
        let refused = |e: anyhow::Error| ApiError::invalid("messages", format!("the model's chat template refused the conversation: {}", template_message(&e)));
        if self.format.renders_tools() && (offer || conv.has_tool_messages) {
            return self.format.prompt_json(&self.tok, &conv.json, offer.then_some(&tools.raw[..])).map_err(refused);
        }
        let mut messages = conv.marker.clone();
        if offer {
            match messages.first_mut().filter(|m| m.role == Role::System) {
                Some(m) => m.content = format!("{}\n\n{}", m.content, tools.system_text()),
                None => messages.insert(0, Message::system(tools.system_text())),
            }
        }
        self.format.prompt(&self.tok, &messages).map_err(refused)
    }

    /// The grammar compiler, built once (the token trie of the whole vocabulary).
    fn grammars(&self) -> Result<Arc<Grammars>, ApiError> {
        self.grammars
            .get_or_init(|| Grammars::new(&self.tok, self.vocab, self.format.stop_tokens()).map(Arc::new).map_err(|e| format!("{e:#}")))
            .clone()
            .map_err(|e| ApiError::internal(format!("constrained decoding is unavailable: {e}")))
    }
}

/// A template error's own words: the innermost cause (the message a template raised, or
/// minijinja's), without the server's file paths.
fn template_message(e: &anyhow::Error) -> String {
    e.chain().last().map(|c| c.to_string()).unwrap_or_default()
}

/// The constraint a chat request asks for: a forced tool call's schema or
/// `response_format`'s, compiled by llguidance off the async threads. A schema it cannot
/// compile is a 400 naming the parameter it came from.
async fn chat_constraint(st: &Arc<AppState>, req: &ChatRequest, tools: &Tools) -> Result<Option<Constraint>, ApiError> {
    let format = req.response_schema()?;
    let call = tools.call_grammar();
    if call.is_some() && format.is_some() {
        return Err(ApiError::invalid("response_format", "response_format cannot be combined with a forced tool call (tool_choice \"required\" or a named function)"));
    }
    let grammar = match (call, format) {
        (Some(g), _) => g,
        (None, Some(schema)) => CallGrammar::Schema(schema),
        (None, None) => return Ok(None),
    };
    let st = st.clone();
    let defs = tools.defs.clone();
    let forced_call = tools.forced();
    // the first constrained request also builds the token trie (the whole vocabulary)
    let job = tokio::task::spawn_blocking(move || match grammar_of(&*st.grammars()?, &grammar) {
        Ok(c) => Ok(c),
        Err(e) if !forced_call => Err(ApiError::invalid("response_format", format!("the JSON schema cannot be enforced: {e}"))),
        Err(e) => {
            // name the tool whose parameters failed
            let grammars = st.grammars()?;
            let bad = defs.iter().position(|d| grammars.compile(&json!({ "type": "object", "properties": { "arguments": d.parameters } })).is_err());
            let param = bad.map(|i| format!("tools[{i}].function.parameters")).unwrap_or_else(|| "tools".into());
            Err(ApiError::invalid(&param, format!("the tool's parameters schema cannot be enforced: {e}")))
        }
    });
    job.await.map_err(|e| ApiError::internal(format!("compiling the schema failed: {e}")))?.map(Some)
}

fn grammar_of(grammars: &crate::grammar::Grammars, g: &CallGrammar) -> Result<Constraint, String> {
    match g {
        CallGrammar::Schema(schema) => grammars.compile(schema),
        CallGrammar::Lark(lark) => grammars.compile_lark(lark),
    }
}

async fn chat(State(st): State<Arc<AppState>>, body: Result<Bytes, BytesRejection>) -> Response {
    chat_inner(st, body).await.unwrap_or_else(|e| e.into_response())
}

async fn chat_inner(st: Arc<AppState>, body: Result<Bytes, BytesRejection>) -> Result<Response, ApiError> {
    let req: ChatRequest = parse(body, st.max_body)?;
    st.check_model(&req.model)?;
    req.check_unsupported()?;
    let conv = chat_messages(&req)?;
    let tools = Tools::parse(req.tools.as_ref(), req.tool_choice.as_ref(), req.parallel_tool_calls)?;
    let settings = req.common().settings(st.vocab, st.fresh_seed())?;
    let top_logprobs = req.top_logprobs()?;
    let constraint = chat_constraint(&st, &req, &tools).await?;
    let ids = st.chat_prompt(&conv, &tools)?;
    let param = if req.max_completion_tokens.is_some() { "max_completion_tokens" } else { "max_tokens" };
    let budget = st.budget(ids.len(), req.max_tokens()?, param)?;
    let rx = st.submit(&[(Arc::new(ids), budget)], &settings, st.format.stop_tokens(), top_logprobs, false, constraint.as_ref(), true)?;
    let mut out = Output { kind: Kind::Chat, id: format!("chatcmpl-{:016x}", st.fresh_seed()), created: unix_now(), model: st.model_name.clone(), n: settings.n, prompts: 1, echo: vec![], prompt_logprobs: false, tools: None, call_base: 0 };
    if tools.active() && req.response_schema()?.is_none() {
        out.tools = Some(tools);
        out.call_base = st.fresh_seed();
    }
    if settings.stream {
        Ok(out.stream(rx, settings.include_usage, st.keep_alive, top_logprobs.is_some()))
    } else {
        out.collect(rx, top_logprobs.is_some()).await
    }
}

async fn completions(State(st): State<Arc<AppState>>, body: Result<Bytes, BytesRejection>) -> Response {
    completions_inner(st, body).await.unwrap_or_else(|e| e.into_response())
}

async fn completions_inner(st: Arc<AppState>, body: Result<Bytes, BytesRejection>) -> Result<Response, ApiError> {
    let req: CompletionRequest = parse(body, st.max_body)?;
    st.check_model(&req.model)?;
    // Insertion: the text between `prompt` and `suffix`, asked of a fill-in-the-middle model.
    let insertion = req.suffix.as_deref().filter(|s| !s.is_empty());
    if req.best_of.is_some_and(|b| b != req.n.unwrap_or(1)) {
        return Err(ApiError::unsupported("best_of", "best_of other than n is not supported by this server"));
    }
    let top = match req.logprobs {
        Some(k) if k > 5 => return Err(ApiError::invalid("logprobs", format!("logprobs must be between 0 and 5, got {k}"))),
        k => k.map(|k| k as usize),
    };
    let settings = req.common().settings(st.vocab, st.fresh_seed())?;
    // Texts get the sequence start the model saw before every pretraining document.
    let texts: Vec<(Vec<u32>, String)> = match (&req.prompt, insertion) {
        (Prompt::Text(t), Some(suffix)) => vec![(fim_prompt(&st, t, suffix, req.max_tokens.unwrap_or(16))?, t.clone())],
        (_, Some(_)) => return Err(ApiError::invalid("suffix", "suffix needs one text prompt")),
        (prompt, None) => texts_of(&st, prompt),
    };
    if texts.is_empty() || texts.iter().any(|(ids, _)| ids.is_empty()) {
        return Err(ApiError::invalid("prompt", "the prompt is empty"));
    }
    if texts.len() * settings.n > crate::api::MAX_N as usize {
        return Err(ApiError::invalid("prompt", format!("prompts × n must be at most {}", crate::api::MAX_N)));
    }
    if let Some(bad) = texts.iter().flat_map(|(ids, _)| ids).find(|&&t| t as usize >= st.vocab) {
        return Err(ApiError::invalid("prompt", format!("token id {bad} is outside the vocabulary of {}", st.vocab)));
    }
    let echo = req.echo == Some(true);
    // max_tokens 0 with echo scores the prompt and generates nothing (how evaluation
    // harnesses ask for a text's log-likelihood)
    if req.max_tokens == Some(0) && !(echo && insertion.is_none()) {
        return Err(ApiError::invalid("max_tokens", "max_tokens must be at least 1 (0 only with echo, to score the prompt)"));
    }
    let prompt_logprobs = echo && top.is_some() && insertion.is_none();
    // text prompts get the model's sequence start, which the echoed text does not show
    let skip = if matches!(req.prompt, Prompt::Text(_) | Prompt::Texts(_)) && insertion.is_none() { st.bos.len() } else { 0 };
    let mut prompts = Vec::new();
    for (ids, _) in &texts {
        // OpenAI's default for this endpoint is 16 tokens
        let budget = st.budget(ids.len(), Some(req.max_tokens.unwrap_or(16)), "max_tokens")?;
        prompts.push((Arc::new(ids.clone()), budget));
    }
    let stops = match insertion {
        // a fill-in-the-middle model ends the middle with its document end; a sentinel ends it too
        Some(_) => [st.text_stops.clone(), fim_sentinels(&st)].concat(),
        None => st.text_stops.clone(),
    };
    let rx = st.submit(&prompts, &settings, &stops, top, prompt_logprobs, None, false)?;
    let echo = if echo {
        let first = |ids: &[u32]| ids.first().map(|&t| token_str(st.tok.id_to_bytes(t).unwrap_or_default())).unwrap_or_default();
        texts.into_iter().map(|(ids, text)| Echo { first: first(&ids), text, skip }).collect()
    } else {
        vec![]
    };
    let out = Output { kind: Kind::Text, id: format!("cmpl-{:016x}", st.fresh_seed()), created: unix_now(), model: st.model_name.clone(), n: settings.n, prompts: prompts.len(), echo, prompt_logprobs, tools: None, call_base: 0 };
    if settings.stream {
        Ok(out.stream(rx, settings.include_usage, st.keep_alive, top.is_some()))
    } else {
        out.collect(rx, top.is_some()).await
    }
}

/// llama.cpp server's `/infill`, which editor plugins built for it call: the text between
/// `input_prefix` and `input_suffix`. `prompt` (text the middle starts with) continues the
/// prefix. Answered through `/v1/completions` with `suffix`, in llama.cpp's shape.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct InfillRequest {
    #[serde(default)]
    input_prefix: String,
    #[serde(default)]
    input_suffix: String,
    #[serde(default)]
    prompt: String,
    /// -1 (llama.cpp's default): as long as the context allows, here capped at 256.
    #[serde(default)]
    n_predict: Option<i64>,
    temperature: Option<f64>,
    top_k: Option<u64>,
    top_p: Option<f64>,
    seed: Option<u64>,
    #[serde(default)]
    stream: bool,
    /// Accepted and unused: llama.cpp's repository context chunks and cache hints.
    #[serde(default)]
    input_extra: Option<Value>,
    #[serde(default)]
    cache_prompt: Option<bool>,
}

async fn infill(State(st): State<Arc<AppState>>, body: Result<Bytes, BytesRejection>) -> Response {
    let r: Result<Response, ApiError> = async {
        let req: InfillRequest = parse(body, st.max_body)?;
        if req.stream {
            return Err(ApiError::unsupported("stream", "/infill answers whole completions; stream with /v1/completions and `suffix`"));
        }
        let _ = (&req.input_extra, req.cache_prompt);
        let max_tokens = match req.n_predict {
            None | Some(-1) => 256.min(st.ctx / 2).max(1) as u64,
            Some(n) if n >= 1 => n as u64,
            Some(n) => return Err(ApiError::invalid("n_predict", format!("n_predict must be -1 or at least 1, got {n}"))),
        };
        let prefix = format!("{}{}", req.input_prefix, req.prompt);
        let mut body = json!({ "model": st.model_name, "prompt": prefix, "suffix": req.input_suffix, "max_tokens": max_tokens, "temperature": req.temperature.unwrap_or(0.0) });
        for (k, v) in [("top_p", req.top_p.map(Value::from)), ("seed", req.seed.map(Value::from)), ("top_k", req.top_k.map(Value::from))] {
            if let Some(v) = v {
                body[k] = v;
            }
        }
        let resp = completions_inner(st.clone(), Ok(Bytes::from(body.to_string()))).await?;
        let status = resp.status();
        let bytes = axum::body::to_bytes(resp.into_body(), usize::MAX).await.map_err(|e| ApiError::malformed(e.to_string()))?;
        let v: Value = serde_json::from_slice(&bytes).map_err(|e| ApiError::from_json(&e))?;
        if !status.is_success() {
            return Ok((status, Json(v)).into_response());
        }
        let choice = &v["choices"][0];
        let stop_type = if choice["finish_reason"] == "length" { "limit" } else { "eos" };
        Ok(Json(json!({
            "content": choice["text"],
            "model": st.model_name,
            "stop": true,
            "stop_type": stop_type,
            "stopped_eos": stop_type == "eos",
            "stopped_limit": stop_type == "limit",
            "tokens_predicted": v["usage"]["completion_tokens"],
            "tokens_evaluated": v["usage"]["prompt_tokens"],
        }))
        .into_response())
    }
    .await;
    r.unwrap_or_else(|e| e.into_response())
}

fn texts_of(st: &AppState, prompt: &Prompt) -> Vec<(Vec<u32>, String)> {
    match prompt {
        Prompt::Text(t) => vec![(encode_text(st, t), t.clone())],
        Prompt::Texts(v) => v.iter().map(|t| (encode_text(st, t), t.clone())).collect(),
        Prompt::Tokens(ids) => vec![(ids.clone(), st.tok.decode(ids))],
        Prompt::TokenLists(l) => l.iter().map(|ids| (ids.clone(), st.tok.decode(ids))).collect(),
    }
}

/// The fill-in-the-middle prompt (PSM, as `ferrolm complete` builds it) for text between
/// `prefix` and `suffix`, fitted to leave `max_tokens` of the context for the answer.
fn fim_prompt(st: &AppState, prefix: &str, suffix: &str, max_tokens: u64) -> Result<Vec<u32>, ApiError> {
    let room = st.ctx.saturating_sub(max_tokens as usize).max(st.ctx / 2).max(4);
    ferrolm_infer::fim::build_prompt(&st.tok, prefix, suffix, ferrolm_infer::fim::PromptLayout::Psm, room)
        .map_err(|e| ApiError::unsupported("suffix", format!("this model cannot insert text: {e:#}")))
}

fn fim_sentinels(st: &AppState) -> Vec<u32> {
    use ferrolm_tokenizer::special;
    [special::FIM_PREFIX, special::FIM_SUFFIX, special::FIM_MIDDLE].iter().filter_map(|t| st.tok.token_id(t)).collect()
}

fn encode_text(st: &AppState, text: &str) -> Vec<u32> {
    let mut ids = st.bos.clone();
    ids.extend(st.tok.encode(text));
    ids
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Kind {
    Chat,
    Text,
}

/// How one request's events become a response.
struct Output {
    kind: Kind,
    id: String,
    created: u64,
    model: String,
    n: usize,
    prompts: usize,
    /// Completions with `echo`: each prompt's text, put before its choices' text.
    echo: Vec<Echo>,
    /// `echo` with `logprobs`: the prompt's tokens are scored too (an `Event::Prompt` per
    /// choice, which the echoed text waits for when streaming).
    prompt_logprobs: bool,
    /// Chat with tools offered: each answer is read for a tool call.
    tools: Option<Tools>,
    /// Tool call ids are `call_` and this plus the choice's index, in hex.
    call_base: u64,
}

/// A prompt put before its completions' text (`echo`).
struct Echo {
    text: String,
    /// Sequence-start tokens before the text (not shown, not scored).
    skip: usize,
    /// The first prompt token, which has no log-probability (nothing before it).
    first: String,
}

impl Echo {
    /// The legacy log-probability entries of the prompt's tokens: the first (when it is
    /// shown) unscored, the rest from the engine's `Event::Prompt`.
    fn entries(&self, scored: &[TokenLogprob]) -> Vec<LegacyEntry> {
        let mut out = vec![];
        if self.skip == 0 {
            out.push(LegacyEntry { token: self.first.clone(), logprob: Value::Null, top: Value::Null });
        }
        out.extend(scored.iter().skip(self.skip.saturating_sub(1)).map(LegacyEntry::of));
        out
    }
}

/// One token of the legacy completions `logprobs` object.
struct LegacyEntry {
    token: String,
    logprob: Value,
    top: Value,
}

impl LegacyEntry {
    fn of(t: &TokenLogprob) -> Self {
        // a map by token text: tokens whose text is the same (byte pieces of one character
        // shown as U+FFFD) keep the most likely one's value (`top` is sorted)
        let mut m = serde_json::Map::new();
        for (_, b, l) in &t.top {
            m.entry(token_str(b)).or_insert(json!(l));
        }
        Self { token: token_str(&t.bytes), logprob: json!(t.logprob), top: Value::Object(m) }
    }
}

#[derive(Default)]
struct Choice {
    text: String,
    logprobs: Vec<TokenLogprob>,
    /// The prompt's scored tokens (`echo` with `logprobs`).
    prompt_logprobs: Vec<TokenLogprob>,
    /// Reads the answer for a tool call (chat with tools offered).
    reader: Option<ToolReader>,
    /// The tool calls: function name and arguments so far.
    calls: Vec<(String, String)>,
    /// The finish reason when it is not the engine's ("tool_calls").
    reason: Option<&'static str>,
    finish: Option<Finish>,
    completion_tokens: usize,
    prompt_tokens: usize,
    cached_tokens: usize,
}

fn token_str(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

impl Choice {
    fn apply(&mut self, pieces: &[Piece]) {
        for p in pieces {
            self.apply_one(p);
        }
    }

    /// Take one piece; the index of the tool call it belongs to (for streamed deltas).
    fn apply_one(&mut self, p: &Piece) -> usize {
        match p {
            Piece::Content(t) => self.text.push_str(t),
            Piece::CallStart(name) => self.calls.push((name.clone(), String::new())),
            Piece::Args(a) => {
                if let Some((_, args)) = self.calls.last_mut() {
                    args.push_str(a);
                }
            }
        }
        self.calls.len().saturating_sub(1)
    }

    fn finish_reason(&self) -> Option<&'static str> {
        self.reason.or(self.finish.map(Finish::as_str))
    }
}

impl Output {
    fn total(&self) -> usize {
        self.n * self.prompts
    }

    fn new_choices(&self) -> Vec<Choice> {
        (0..self.total()).map(|_| Choice { reader: self.tools.as_ref().map(ToolReader::new), ..Choice::default() }).collect()
    }

    /// The id of choice `i`'s call `k`: unique within the response.
    fn call_id(&self, i: usize, k: usize) -> String {
        format!("call_{:016x}", self.call_base.wrapping_add(((i as u64) << 16) | k as u64))
    }

    /// A chat chunk's delta for one piece of an answer.
    fn piece_delta(&self, i: usize, k: usize, p: &Piece) -> Value {
        match p {
            Piece::Content(t) => json!({ "content": t }),
            Piece::CallStart(name) => json!({ "tool_calls": [{ "index": k, "id": self.call_id(i, k), "type": "function", "function": { "name": name, "arguments": "" } }] }),
            Piece::Args(a) => json!({ "tool_calls": [{ "index": k, "function": { "arguments": a } }] }),
        }
    }

    fn usage(&self, choices: &[Choice]) -> Value {
        // The prompt counts once per prompt, not once per choice.
        let prompt: usize = choices.iter().step_by(self.n).map(|c| c.prompt_tokens).sum();
        let cached: usize = choices.iter().step_by(self.n).map(|c| c.cached_tokens).sum();
        let completion: usize = choices.iter().map(|c| c.completion_tokens).sum();
        json!({ "prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion,
                "prompt_tokens_details": { "cached_tokens": cached } })
    }

    fn chat_logprobs(lps: &[TokenLogprob]) -> Value {
        let content: Vec<Value> = lps
            .iter()
            .map(|t| {
                json!({ "token": token_str(&t.bytes), "logprob": t.logprob, "bytes": t.bytes,
                        "top_logprobs": t.top.iter().map(|(_, b, l)| json!({ "token": token_str(b), "logprob": l, "bytes": b })).collect::<Vec<_>>() })
            })
            .collect();
        json!({ "content": content, "refusal": null })
    }

    /// The legacy completions form; `offset` is the text length before these tokens.
    fn text_logprobs(entries: impl IntoIterator<Item = LegacyEntry>, mut offset: usize) -> Value {
        let mut tokens = vec![];
        let mut token_logprobs = vec![];
        let mut top = vec![];
        let mut text_offset = vec![];
        for e in entries {
            text_offset.push(offset);
            offset += e.token.len();
            tokens.push(e.token);
            token_logprobs.push(e.logprob);
            top.push(e.top);
        }
        json!({ "tokens": tokens, "token_logprobs": token_logprobs, "top_logprobs": top, "text_offset": text_offset })
    }

    async fn collect(self, mut rx: UnboundedReceiver<(usize, Event)>, want_logprobs: bool) -> Result<Response, ApiError> {
        let mut choices = self.new_choices();
        let mut done = 0;
        while done < choices.len() {
            let Some((i, ev)) = rx.recv().await else { return Err(ApiError::unavailable("the scheduler stopped before the answer was complete")) };
            let c = &mut choices[i];
            match ev {
                Event::Delta { text, logprobs } => {
                    match c.reader.as_mut() {
                        Some(r) => {
                            let pieces = r.push(&text);
                            c.apply(&pieces);
                        }
                        None => c.text.push_str(&text),
                    }
                    c.logprobs.extend(logprobs);
                }
                Event::Prompt { logprobs } => c.prompt_logprobs = logprobs,
                Event::Done { finish, prompt_tokens, completion_tokens, cached_tokens } => {
                    if let Some(r) = c.reader.as_mut() {
                        let (pieces, why) = r.finish(finish);
                        c.apply(&pieces);
                        c.reason = Some(why);
                    }
                    c.finish = Some(finish);
                    c.prompt_tokens = prompt_tokens;
                    c.completion_tokens = completion_tokens;
                    c.cached_tokens = cached_tokens;
                    done += 1;
                }
                Event::Error(e) => return Err(ApiError::internal(e)),
            }
        }
        let usage = self.usage(&choices);
        let items: Vec<Value> = choices
            .iter()
            .enumerate()
            .map(|(i, c)| {
                let finish = c.finish_reason();
                match self.kind {
                    Kind::Chat => json!({
                        "index": i,
                        "message": if c.calls.is_empty() {
                            json!({ "role": "assistant", "content": c.text, "refusal": null })
                        } else {
                            let calls: Vec<Value> = c.calls.iter().enumerate()
                                .map(|(k, (name, args))| json!({ "id": self.call_id(i, k), "type": "function", "function": { "name": name, "arguments": args } }))
                                .collect();
                            // text beside the calls (a cut answer's start of a next call) is kept
                            let content = if c.text.is_empty() { Value::Null } else { json!(c.text) };
                            json!({ "role": "assistant", "content": content, "refusal": null, "tool_calls": calls })
                        },
                        "logprobs": if want_logprobs { Self::chat_logprobs(&c.logprobs) } else { Value::Null },
                        "finish_reason": finish,
                    }),
                    Kind::Text => {
                        let echo = self.echo.get(i / self.n);
                        let echo_text = echo.map(|e| e.text.as_str()).unwrap_or("");
                        let logprobs = || {
                            let mut entries = if self.prompt_logprobs { echo.map(|e| e.entries(&c.prompt_logprobs)).unwrap_or_default() } else { vec![] };
                            entries.extend(c.logprobs.iter().map(LegacyEntry::of));
                            // with prompt entries the offsets start at the echoed text's start
                            Self::text_logprobs(entries, if self.prompt_logprobs { 0 } else { echo_text.len() })
                        };
                        json!({
                            "index": i,
                            "text": format!("{echo_text}{}", c.text),
                            "logprobs": if want_logprobs { logprobs() } else { Value::Null },
                            "finish_reason": finish,
                        })
                    }
                }
            })
            .collect();
        let object = if self.kind == Kind::Chat { "chat.completion" } else { "text_completion" };
        Ok(Json(json!({ "id": self.id, "object": object, "created": self.created, "model": self.model,
                        "system_fingerprint": "ferrolm", "choices": items, "usage": usage }))
        .into_response())
    }

    fn chunk(&self, choices: Value, usage: Option<Value>) -> SseEvent {
        let object = if self.kind == Kind::Chat { "chat.completion.chunk" } else { "text_completion" };
        let mut v = json!({ "id": self.id, "object": object, "created": self.created, "model": self.model,
                            "system_fingerprint": "ferrolm", "choices": choices });
        if let Some(u) = usage {
            v["usage"] = u;
        }
        SseEvent::default().data(v.to_string())
    }

    fn stream(self, rx: UnboundedReceiver<(usize, Event)>, include_usage: bool, keep_alive: Duration, want_logprobs: bool) -> Response {
        let total = self.total();
        let mut pending = VecDeque::new();
        let null_usage = include_usage.then_some(Value::Null);
        for i in 0..total {
            let first = match self.kind {
                Kind::Chat => {
                    // a forced tool call has no content
                    let content = if self.tools.as_ref().is_some_and(Tools::forced) { Value::Null } else { json!("") };
                    json!([{ "index": i, "delta": { "role": "assistant", "content": content }, "logprobs": null, "finish_reason": null }])
                }
                Kind::Text => {
                    let echo = self.echo.get(i / self.n).map(|e| e.text.clone()).unwrap_or_default();
                    // a scored prompt is echoed when its scores arrive
                    if echo.is_empty() || self.prompt_logprobs {
                        continue;
                    }
                    json!([{ "index": i, "text": echo, "logprobs": null, "finish_reason": null }])
                }
            };
            pending.push_back(self.chunk(first, null_usage.clone()));
        }
        let choices = self.new_choices();
        let state = StreamState { out: self, rx, pending, choices, done: 0, include_usage, want_logprobs, finished: false };
        let s = futures_util::stream::unfold(state, |mut st| async move {
            loop {
                if let Some(ev) = st.pending.pop_front() {
                    return Some((Ok::<_, Infallible>(ev), st));
                }
                if st.finished {
                    return None;
                }
                match st.rx.recv().await {
                    Some((i, ev)) => st.handle(i, ev),
                    None => {
                        let e = ApiError::unavailable("the scheduler stopped before the answer was complete");
                        st.pending.push_back(SseEvent::default().data(e.body().to_string()));
                        st.pending.push_back(SseEvent::default().data("[DONE]"));
                        st.finished = true;
                    }
                }
            }
        });
        Sse::new(s).keep_alive(KeepAlive::new().interval(keep_alive).text("keep-alive")).into_response()
    }
}

struct StreamState {
    out: Output,
    rx: UnboundedReceiver<(usize, Event)>,
    pending: VecDeque<SseEvent>,
    choices: Vec<Choice>,
    done: usize,
    include_usage: bool,
    want_logprobs: bool,
    finished: bool,
}

impl StreamState {
    fn handle(&mut self, i: usize, ev: Event) {
        let null_usage = self.include_usage.then_some(Value::Null);
        let out = &self.out;
        match ev {
            Event::Delta { text, logprobs } => {
                let c = &mut self.choices[i];
                let offset = c.text.len() + out.echo.get(i / out.n).map(|e| e.text.len()).unwrap_or(0);
                c.text.push_str(&text);
                let lp = if self.want_logprobs {
                    match out.kind {
                        Kind::Chat => Output::chat_logprobs(&logprobs),
                        Kind::Text => Output::text_logprobs(logprobs.iter().map(LegacyEntry::of), offset),
                    }
                } else {
                    Value::Null
                };
                if let Some(r) = c.reader.as_mut() {
                    // the answer's pieces (content, or the tool call as it forms), the
                    // log-probabilities on the first chunk
                    let pieces = r.push(&text);
                    let mut lp = Some(lp).filter(|_| self.want_logprobs);
                    for p in &pieces {
                        let k = c.apply_one(p);
                        let choice = json!([{ "index": i, "delta": out.piece_delta(i, k, p), "logprobs": lp.take(), "finish_reason": null }]);
                        self.pending.push_back(out.chunk(choice, null_usage.clone()));
                    }
                    if let Some(lp) = lp {
                        self.pending.push_back(out.chunk(json!([{ "index": i, "delta": {}, "logprobs": lp, "finish_reason": null }]), null_usage));
                    }
                    return;
                }
                let choice = match out.kind {
                    Kind::Chat => json!([{ "index": i, "delta": { "content": text }, "logprobs": lp, "finish_reason": null }]),
                    Kind::Text => json!([{ "index": i, "text": text, "logprobs": lp, "finish_reason": null }]),
                };
                self.pending.push_back(out.chunk(choice, null_usage));
            }
            Event::Prompt { logprobs } => {
                if let Some(e) = out.echo.get(i / out.n) {
                    let lp = if self.want_logprobs { Output::text_logprobs(e.entries(&logprobs), 0) } else { Value::Null };
                    let choice = json!([{ "index": i, "text": e.text, "logprobs": lp, "finish_reason": null }]);
                    self.pending.push_back(out.chunk(choice, null_usage));
                }
            }
            Event::Done { finish, prompt_tokens, completion_tokens, cached_tokens } => {
                let c = &mut self.choices[i];
                if let Some(r) = c.reader.as_mut() {
                    let (pieces, why) = r.finish(finish);
                    c.reason = Some(why);
                    for p in &pieces {
                        let k = c.apply_one(p);
                        let choice = json!([{ "index": i, "delta": out.piece_delta(i, k, p), "logprobs": null, "finish_reason": null }]);
                        self.pending.push_back(out.chunk(choice, null_usage.clone()));
                    }
                }
                c.finish = Some(finish);
                c.prompt_tokens = prompt_tokens;
                c.completion_tokens = completion_tokens;
                c.cached_tokens = cached_tokens;
                self.done += 1;
                let why = c.finish_reason();
                let choice = match out.kind {
                    Kind::Chat => json!([{ "index": i, "delta": {}, "logprobs": null, "finish_reason": why }]),
                    Kind::Text => json!([{ "index": i, "text": "", "logprobs": null, "finish_reason": why }]),
                };
                self.pending.push_back(out.chunk(choice, null_usage));
                if self.done == self.choices.len() {
                    if self.include_usage {
                        let usage = out.usage(&self.choices);
                        self.pending.push_back(out.chunk(json!([]), Some(usage)));
                    }
                    self.pending.push_back(SseEvent::default().data("[DONE]"));
                    self.finished = true;
                }
            }
            Event::Error(e) => {
                self.pending.push_back(SseEvent::default().data(ApiError::internal(e).body().to_string()));
                self.pending.push_back(SseEvent::default().data("[DONE]"));
                self.finished = true;
            }
        }
    }
}

/// Serve on `listener` until `shutdown` resolves; then stop accepting, let open streams
/// finish for up to `grace`, stop the scheduler and close the feedback store.
pub async fn serve(listener: tokio::net::TcpListener, state: Arc<AppState>, shutdown: impl std::future::Future<Output = ()> + Send + 'static, grace: Duration) -> Result<()> {
    let app = router(state.clone());
    let (sig_tx, sig_rx) = tokio::sync::watch::channel(false);
    // TCP_NODELAY: a streamed token is one small write; with Nagle's algorithm it waited
    // for the client's (delayed, up to 40 ms) acknowledgement of the write before it
    use axum::serve::ListenerExt;
    let listener = listener.tap_io(|tcp| {
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::warn!("cannot set TCP_NODELAY on a connection: {e}");
        }
    });
    let server = axum::serve(listener, app.into_make_service_with_connect_info::<SocketAddr>()).with_graceful_shutdown(async move {
        shutdown.await;
        let _ = sig_tx.send(true);
    });
    let mut sig = sig_rx.clone();
    let server = tokio::spawn(async move { server.await });
    tokio::select! {
        r = server => { r.context("server task")?.context("serving")?; }
        _ = async move {
            let _ = sig.wait_for(|s| *s).await;
            tokio::time::sleep(grace).await;
        } => { tracing::warn!("open streams were cut after the {grace:?} shutdown grace period"); }
    }
    let st = state.clone();
    tokio::task::spawn_blocking(move || {
        st.engine.shutdown();
        st.feedback.close();
    })
    .await
    .context("shutting down")?;
    Ok(())
}

/// Resolves on SIGTERM or Ctrl-C.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! { _ = ctrl_c => {}, _ = term => {} }
}

/// The blocking entry the CLI calls: refuse an open bind without a key, load, serve until
/// SIGTERM/Ctrl-C.
pub fn run(cfg: ServeConfig, host: &str, port: u16, device: &Device) -> Result<()> {
    let ip: std::net::IpAddr = if host == "localhost" { std::net::IpAddr::from([127, 0, 0, 1]) } else { host.parse().with_context(|| format!("--host {host:?} is not an IP address"))? };
    if !ip.is_loopback() && cfg.api_key.as_deref().is_none_or(str::is_empty) {
        anyhow::bail!("refusing to listen on {ip}, which is not a loopback address, without an API key: give --api-key or --api-key-file (or bind 127.0.0.1)");
    }
    let state = load(&cfg, device)?;
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind(SocketAddr::new(ip, port)).await.with_context(|| format!("cannot listen on {ip}:{port}"))?;
        let addr = listener.local_addr()?;
        eprintln!("serving `{}` on http://{addr}/ (OpenAI API under /v1; Ctrl-C to stop)", state.model_name);
        serve(listener, state, shutdown_signal(), cfg.shutdown_grace).await
    })
}
