//! `ferrolm serve --model RUN_DIR`: the OpenAI-compatible API (chat, completions, models,
//! SSE streaming), continuous batching, `/health`, `/metrics`, `/openapi.json`, and the web
//! chat page at `/` whose judgements go to an SQLite store (`ferrolm feedback export`).

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use ferrolm_serve::ServeConfig;

#[derive(clap::Args)]
pub struct Args {
    /// A run folder (a causal decoder: a pretraining, SFT, DPO or PPO run).
    #[arg(long)]
    model: PathBuf,
    /// The address to listen on; anything but loopback needs an API key.
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    #[arg(long, default_value_t = 8080)]
    port: u16,
    /// Clients must send `Authorization: Bearer KEY` (to /v1/* and /metrics).
    #[arg(long, conflicts_with = "api_key_file")]
    api_key: Option<String>,
    /// Read the API key from a file (its first line), keeping it out of the process list.
    #[arg(long)]
    api_key_file: Option<PathBuf>,
    /// The name clients give as `model` (default: the run folder's name).
    #[arg(long)]
    model_name: Option<String>,
    /// Sequences decoded together in one batched forward pass.
    #[arg(long, default_value_t = 8)]
    max_concurrency: usize,
    /// Sequences that may wait for a slot; beyond it requests get 429.
    #[arg(long, default_value_t = 64)]
    max_queue: usize,
    /// Context limit in tokens (default: the model's max_seq_len).
    #[arg(long)]
    ctx: Option<usize>,
    /// Largest request body in bytes (larger: 413).
    #[arg(long, default_value_t = 4 << 20)]
    max_body_bytes: usize,
    /// Seconds between SSE keep-alive comments while a stream waits (queue, long prefill).
    #[arg(long, default_value_t = 10.0)]
    keep_alive: f64,
    /// Allow browsers on these origins to call the API (repeatable; "*" for any).
    #[arg(long = "cors-origin")]
    cors_origins: Vec<String>,
    /// The SQLite file for the web page's judgements (default RUN_DIR/feedback/feedback.db).
    #[arg(long)]
    feedback_db: Option<PathBuf>,
    /// Recent prompts whose KV caches are kept for shared-prefix reuse (0 = off).
    #[arg(long, default_value_t = 16)]
    prefix_cache: usize,
    /// Seconds open streams may run on after SIGTERM/Ctrl-C before they are cut.
    #[arg(long, default_value_t = 10.0)]
    shutdown_grace: f64,
    /// Serve `/v1/embeddings` from this run: a masked-LM encoder (or a decoder, mean-pooled),
    /// or a Hugging Face BERT folder (`hf:ORG/NAME` too), the model `rag index --embed`
    /// takes; clients call it by its folder's name.
    #[arg(long)]
    embed_model: Option<PathBuf>,
    /// How the embedding model pools its hidden states: "mean" or "pooled" (the MLM's pooler).
    #[arg(long, default_value = "mean")]
    embed_pooling: ferrolm_serve::EmbedPooling,
    /// Quantize the weights for CPU inference: q8_0, q4_k (Q4_K on rows of whole 256-value
    /// blocks, Q8_0 on the others) or f16 (half precision). Layers a quantized or f16 GGUF
    /// stores keep its blocks.
    #[arg(long)]
    quant: Option<ferrolm_model::QuantKind>,
}

pub fn run(a: Args) -> Result<()> {
    let api_key = match &a.api_key_file {
        Some(f) => {
            let text = std::fs::read_to_string(f).with_context(|| format!("cannot read the API key file {}", f.display()))?;
            let key = text.lines().next().unwrap_or("").trim().to_string();
            anyhow::ensure!(!key.is_empty(), "the API key file {} is empty", f.display());
            Some(key)
        }
        None => a.api_key.clone(),
    };
    anyhow::ensure!(a.keep_alive > 0.0 && a.shutdown_grace >= 0.0, "--keep-alive must be positive and --shutdown-grace not negative");
    let cfg = ServeConfig {
        run_dir: a.model,
        model_name: a.model_name,
        api_key,
        max_concurrency: a.max_concurrency,
        max_queue: a.max_queue,
        ctx: a.ctx,
        max_body_bytes: a.max_body_bytes,
        keep_alive: Duration::from_secs_f64(a.keep_alive),
        cors_origins: a.cors_origins,
        feedback_db: a.feedback_db,
        prefix_cache_entries: a.prefix_cache,
        shutdown_grace: Duration::from_secs_f64(a.shutdown_grace),
        embed_model: a.embed_model.as_deref().map(super::model_dir).transpose()?,
        embed_pooling: a.embed_pooling,
        quant: a.quant,
    };
    ferrolm_serve::run(cfg, &a.host, a.port, &super::device()?)
}
