//! `ferrolm eval --model RUN_DIR --data PATH`: held-out loss and bits per byte.

use std::path::PathBuf;

use anyhow::Result;
use candle_core::Device;
use ferrolm_tokenizer::Tokenizer;

#[derive(clap::Args)]
pub struct Args {
    #[arg(long)]
    model: PathBuf,
    /// Text files or folders (.txt, .md, .rs, .jsonl with a `text` field; .gz/.zst too).
    #[arg(long, required = true, num_args = 1..)]
    data: Vec<PathBuf>,
    /// At most this many windows of the model's context (spread evenly over the data).
    #[arg(long, default_value_t = 512)]
    max_windows: usize,
    #[arg(long)]
    json: bool,
}

pub fn run(a: Args) -> Result<()> {
    // Any model family (`model.family` in the run's config.toml).
    let (fcfg, model, _) = ferrolm_train::load_causal_lm(&a.model, &Device::Cpu)?;
    let cfg = &fcfg.run;
    let tok = Tokenizer::from_file(&a.model.join("tokenizer.json"))?;
    let (docs, stats) = ferrolm_corpus::read_paths(&a.data, &Default::default())?;
    if stats.rejected > 0 {
        eprintln!("warning: {} malformed records were skipped: {:?}", stats.rejected, stats.rejected_by_reason);
    }
    anyhow::ensure!(!docs.is_empty(), "no documents found in {:?}", a.data);
    let eot = tok.eot_id();
    let mut ids = Vec::new();
    for d in &docs {
        ids.extend(tok.encode(&d.text));
        ids.push(eot);
    }
    let mut bytes = tok.token_bytes();
    bytes.resize(cfg.model.vocab_size, 0);
    let seq = cfg.seq_len().min(ids.len().saturating_sub(1));
    let r = ferrolm_train::evaluate(&model, &ids, &bytes, seq, cfg.train.batch_size, a.max_windows)?;
    if a.json {
        println!("{}", serde_json::json!({"loss": r.loss, "bits_per_byte": r.bits_per_byte, "tokens": r.tokens, "bytes": r.bytes, "documents": docs.len()}));
    } else {
        println!("loss {:.4} nats/token, {:.4} bits per byte ({} tokens, {} bytes, {} documents)", r.loss, r.bits_per_byte, r.tokens, r.bytes, docs.len());
    }
    Ok(())
}
