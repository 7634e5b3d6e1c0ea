//! `ferrolm eval --model RUN_DIR --data PATH`: held-out loss and bits per byte (of the
//! scored targets, for the non-causal kinds: the kind's objective under the run's fixed
//! evaluation seed), or `--pairs FILE.jsonl` for a run trained on input/target pairs.

use std::path::PathBuf;

use anyhow::Result;
use candle_core::Device;
use ferrolm_tokenizer::Tokenizer;
use ferrolm_train::arch_task::{ArchData, ArchTask};
use ferrolm_train::{ArchModel, EvalResult, TaskTokens, TrainTask};

#[derive(clap::Args)]
pub struct Args {
    #[arg(long)]
    model: PathBuf,
    /// Text files or folders (.txt, .md, .rs, .jsonl with a `text` field; .gz/.zst too).
    #[arg(long, num_args = 1.., required_unless_present = "pairs")]
    data: Vec<PathBuf>,
    /// A JSONL file of input/target pairs (field names from the run's [pairs] section).
    #[arg(long, conflicts_with = "data")]
    pairs: Option<PathBuf>,
    /// At most this many windows (or pairs) of the data.
    #[arg(long, default_value_t = 512)]
    max_windows: usize,
    #[arg(long)]
    json: bool,
}

pub fn run(a: Args) -> Result<()> {
    // NPLM, RNN and LSTM runs (`model.family`) score as causal LMs.
    let saved = ferrolm_common::load_config(Some(&a.model.join("config.toml")), &[])?;
    if saved.get("model").and_then(|m| m.get("family")).and_then(|f| f.as_str()).is_some_and(|f| f != "transformer") {
        let (fcfg, model, _) = ferrolm_train::load_causal_lm(&a.model, &Device::Cpu)?;
        let tok = Tokenizer::from_file(&a.model.join("tokenizer.json"))?;
        let (ids, n_docs) = read_ids(&a.data, &tok)?;
        let mut bytes = tok.token_bytes();
        bytes.resize(fcfg.run.model.vocab_size, 0);
        let seq = fcfg.run.seq_len().min(ids.len().saturating_sub(2));
        let r = ferrolm_train::evaluate(&model, &ids, &bytes, seq, fcfg.run.train.batch_size, a.max_windows)?;
        return print(&r, &format!("{n_docs} documents"), a.json);
    }
    let (mut cfg, model, _) = ferrolm_train::load_arch_run(&a.model, &Device::Cpu)?;
    let tok = Tokenizer::from_file(&a.model.join("tokenizer.json"))?;
    let mut bytes = tok.token_bytes();
    bytes.resize(cfg.run.model.vocab_size, 0);
    let batch = cfg.run.train.batch_size;
    cfg.run.train.eval_batches = a.max_windows.div_ceil(batch).max(1);
    let (r, what): (EvalResult, String) = if let Some(path) = &a.pairs {
        let pc = cfg.pairs.clone().unwrap_or_default();
        let (pairs, stats) = ferrolm_train::pairs::load_pairs(path, &pc, &tok)?;
        if stats.empty + stats.truncated_inputs + stats.truncated_targets > 0 {
            eprintln!("{}: {} empty pairs skipped, {} inputs and {} targets truncated", path.display(), stats.empty, stats.truncated_inputs, stats.truncated_targets);
        }
        let n = pairs.len();
        let task = ArchTask::new(model, &cfg, ArchData::Pairs { train: &pairs, val: &pairs }, TaskTokens::from_tokenizer(&tok)?, bytes)?;
        (task.evaluate()?, format!("{} pairs", n.min(a.max_windows)))
    } else {
        let (ids, n_docs) = read_ids(&a.data, &tok)?;
        let seq = cfg.run.seq_len().min(ids.len().saturating_sub(2));
        let r = match &model {
            // the causal decoder keeps its fused path: next-token loss at every position
            ArchModel::Decoder(m) if cfg.run.model.kind == ferrolm_model::ModelKind::Causal => {
                ferrolm_train::evaluate(m, &ids, &bytes, seq, batch, a.max_windows)?
            }
            _ => {
                cfg.run.train.seq_len = seq;
                let task = ArchTask::new(model, &cfg, ArchData::Stream { train: &ids, val: &ids }, TaskTokens::from_tokenizer(&tok)?, bytes)?;
                task.evaluate()?
            }
        };
        (r, format!("{n_docs} documents"))
    };
    print(&r, &what, a.json)
}

fn print(r: &EvalResult, what: &str, json: bool) -> Result<()> {
    if json {
        let mut v = serde_json::json!({"loss": r.loss, "bits_per_byte": r.bits_per_byte, "tokens": r.tokens, "bytes": r.bytes, "data": what});
        for (k, x) in &r.extra {
            v[k] = serde_json::json!(x);
        }
        println!("{v}");
    } else {
        println!("{} ({} scored tokens, {} bytes, {what})", ferrolm_train::trainer::describe_eval(r), r.tokens, r.bytes);
    }
    Ok(())
}

/// Documents of `paths`, tokenized and joined with end-of-text; malformed records are
/// reported, not silently skipped.
fn read_ids(paths: &[PathBuf], tok: &Tokenizer) -> Result<(Vec<u32>, usize)> {
    let (docs, stats) = ferrolm_corpus::read_paths(paths, &Default::default())?;
    if stats.rejected > 0 {
        eprintln!("warning: {} malformed records were skipped: {:?}", stats.rejected, stats.rejected_by_reason);
    }
    anyhow::ensure!(!docs.is_empty(), "no documents found in {:?}", paths);
    let eot = tok.eot_id();
    let mut ids = Vec::new();
    for d in &docs {
        ids.extend(tok.encode(&d.text));
        ids.push(eot);
    }
    Ok((ids, docs.len()))
}
