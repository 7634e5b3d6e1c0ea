//! `ferrolm serve`: an OpenAI-compatible HTTP server for a ferrolm run, with continuous
//! batching, and a web chat page whose judgements feed reward-model training and DPO.
//!
//! - [`engine`]: the scheduler thread that owns the model; every decode step advances all
//!   active sequences in one batched forward pass, each with its own KV cache.
//! - [`server`]: the axum router (`/v1/models`, `/v1/chat/completions`, `/v1/completions`,
//!   `/v1/embeddings`, `/health`, `/metrics`, `/openapi.json`, the page at `/`), SSE
//!   streaming in OpenAI's chunk format, API-key auth, CORS, graceful shutdown.
//! - [`embeddings`]: `/v1/embeddings` from an encoder served beside the chat model
//!   (`--embed-model`), the same vectors `ferrolm rag index --embed` stores.
//! - [`api`] / [`error`]: request bodies, their validation, OpenAI-style error objects.
//! - [`grammar`]: constrained decoding (llguidance): JSON-schema `response_format` and
//!   forced tool calls.
//! - [`tools`]: tool definitions, `tool_choice`, the tool-call schema and reading tool calls
//!   out of answers (streamed or whole).
//! - [`text`]: streamed detokenisation with stop strings.
//! - [`feedback`]: the SQLite (WAL) judgement store and its export as preference pairs.
//! - [`metrics`]: Prometheus text exposition.

pub mod api;
pub mod embeddings;
pub mod engine;
pub mod error;
pub mod feedback;
pub mod grammar;
pub mod metrics;
pub mod page;
pub mod server;
pub mod text;
pub mod tools;

pub use feedback::{export_preferences, ExportReport, FeedbackStore, Judgement};
pub use ferrolm_qa::Pooling as EmbedPooling;
pub use server::{load, router, run, serve, AppState, ServeConfig};

/// The OpenAPI 3.1 document of the API, served at `/openapi.json`.
pub const OPENAPI: &str = include_str!("../assets/openapi.json");
