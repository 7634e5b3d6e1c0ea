//! `ferrolm eval --model RUN_DIR|HF_DIR|FILE.gguf --data PATH`: held-out loss and bits per byte (of the
//! scored targets, for the non-causal kinds: the kind's objective under the run's fixed
//! evaluation seed), or `--pairs FILE.jsonl` for a run trained on input/target pairs.

use std::path::PathBuf;

use anyhow::{Context, Result};
use ferrolm_model::ModelKind;
use ferrolm_tokenizer::Tokenizer;
use ferrolm_train::{ArchData, ArchTask, EvalResult, RunConfig, TaskTokens, TrainTask};

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
    /// At most this many windows (or pairs) of the data; 0 (the default) scores all of it.
    #[arg(long, default_value_t = 0)]
    max_windows: usize,
    #[arg(long)]
    json: bool,
    /// Quantize the weights for CPU inference: q8_0, q4_k (Q4_K on rows of whole 256-value
    /// blocks, Q8_0 on the others) or f16 (half precision). Layers a quantized or f16 GGUF
    /// stores keep its blocks.
    #[arg(long)]
    quant: Option<ferrolm_model::QuantKind>,
}

pub fn run(mut a: Args) -> Result<()> {
    a.model = super::model_dir(&a.model)?;
    let device = super::device()?;
    let cfg_path = a.model.join("config.toml");
    let gguf = ferrolm_finetune::prompt::is_gguf(&a.model);
    let mut loaded = ferrolm_model::load_model(&a.model, &device)?;
    let mut cfg = if gguf || ferrolm_model::hf::is_hf_folder(&a.model) {
        // a Hugging Face model or a GGUF file: its architecture, and the evaluation defaults
        // of a run, with windows of at most 1024 positions (pretrained contexts run to 128k)
        let mut cfg = RunConfig { model: loaded.spec.clone(), ..RunConfig::default() };
        cfg.train.seq_len = cfg.model.max_seq_len().min(1024);
        cfg
    } else {
        RunConfig::from_value(&ferrolm_common::load_config(Some(&cfg_path), &[])?).with_context(|| format!("in {}", cfg_path.display()))?
    };
    super::quantize(&mut loaded.model, a.quant)?;
    // (a .gguf file carries its tokenizer: ferrolm's tokenizer.json, or tokenizer.ggml.*)
    let tok = ferrolm_finetune::prompt::load_tokenizer(&a.model)?;
    let mut bytes = tok.token_bytes();
    bytes.resize(cfg.model.vocab_size(), 0);
    let batch = cfg.train.batch_size;
    // how many windows (or pairs) to score, out of the `available` the data holds
    let limit = |available: usize| if a.max_windows == 0 { available.max(1) } else { a.max_windows.min(available.max(1)) };
    let (r, what): (EvalResult, String) = if let Some(path) = &a.pairs {
        let pc = cfg.pairs.clone().unwrap_or_default();
        let (pairs, stats) = ferrolm_train::pairs::load_pairs(path, &pc, &tok)?;
        if stats.empty + stats.truncated_inputs + stats.truncated_targets > 0 {
            eprintln!("{}: {} empty pairs skipped, {} inputs and {} targets truncated", path.display(), stats.empty, stats.truncated_inputs, stats.truncated_targets);
        }
        let n = limit(pairs.len());
        cfg.train.eval_batches = n.div_ceil(batch).max(1);
        let task = ArchTask::new(loaded.model, &cfg, ArchData::Pairs { train: &pairs, val: &pairs }, TaskTokens::from_tokenizer(&tok)?, bytes, &device)?;
        (task.evaluate()?, format!("{n} of {} pairs", pairs.len()))
    } else {
        let (ids, n_docs) = read_ids(&a.data, &tok)?;
        let seq = cfg.seq_len().min(ids.len().saturating_sub(2));
        let windows = limit(ids.len().saturating_sub(1) / (seq + 1));
        cfg.train.eval_batches = windows.div_ceil(batch).max(1);
        let r = if cfg.model.kind() == ModelKind::Causal {
            // every family's causal LM: next-token loss at every position
            ferrolm_train::evaluate(&loaded.model, &ids, &bytes, seq, batch, windows, &device)?
        } else {
            cfg.train.seq_len = seq;
            let task = ArchTask::new(loaded.model, &cfg, ArchData::Stream { train: &ids, val: &ids }, TaskTokens::from_tokenizer(&tok)?, bytes, &device)?;
            task.evaluate()?
        };
        (r, format!("{n_docs} documents, {windows} windows of {seq} tokens"))
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
    let docs = ferrolm_lab::corpus::read_documents(paths)?;
    let eot = tok.eot_id();
    let mut ids = Vec::new();
    for d in &docs {
        ids.extend(tok.encode(&d.text));
        ids.push(eot);
    }
    Ok((ids, docs.len()))
}
