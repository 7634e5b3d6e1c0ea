//! `ferrolm quickstart`: the whole path on the embedded default corpus — the sources
//! and docs of the crates named in this project's Cargo.lock, which every user already
//! has in their Cargo registry — within a time budget:
//! corpus → clean → split → tokenizer → shards → pretrain → evaluate → samples → report.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result};
use ferrolm_corpus::Document;
use ferrolm_infer::{generate_any, GenerateConfig, SamplingConfig};
use ferrolm_tokenizer::shards::{ShardWriter, TokenShards};
use ferrolm_tokenizer::{special, BpeTrainConfig, DecodeStream, Tokenizer};
use ferrolm_train::{start_run, ArchData, RunConfig};
use serde::{Deserialize, Serialize};

/// This project's own lock file: the corpus is the same on every machine.
const CARGO_LOCK: &str = include_str!("../../../../Cargo.lock");
const DEFAULT_CONFIG: &str = include_str!("../../../../configs/quickstart.toml");

#[derive(clap::Args)]
pub struct Args {
    /// Time budget for the whole run, in minutes.
    #[arg(long, default_value_t = 10.0)]
    minutes: f64,
    /// Output folder.
    #[arg(long, default_value = "runs/quickstart")]
    out: PathBuf,
    /// Extra text to add: files or folders (.txt, .md, .jsonl with `text`, optionally .gz/.zst). Repeatable.
    #[arg(long)]
    data: Vec<PathBuf>,
    /// Use only extra --data, not the Cargo registry.
    #[arg(long)]
    no_registry: bool,
    /// A config to start from instead of the built-in configs/quickstart.toml.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Override a config key, e.g. --set model.n_layers=2 (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    overrides: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct QuickstartConfig {
    tokenizer: String,
    vocab_size: usize,
    val_fraction: f64,
    tokenizer_train_bytes: usize,
    reserve_fraction: f64,
}

fn load(args: &Args) -> Result<(QuickstartConfig, RunConfig, toml::Value)> {
    let mut value: toml::Value = match &args.config {
        Some(p) => ferrolm_common::load_config(Some(p), &[])?,
        None => DEFAULT_CONFIG.parse::<toml::Table>().map(toml::Value::Table)?,
    };
    ferrolm_common::apply_overrides(&mut value, &args.overrides)?;
    let mut run_value = value.clone();
    let qs = run_value.as_table_mut().and_then(|t| t.remove("quickstart")).context("config lacks [quickstart]")?;
    let qs: QuickstartConfig = ferrolm_common::config::typed(&qs).context("in [quickstart]")?;
    anyhow::ensure!(qs.tokenizer == "bpe" || qs.tokenizer == "char", "quickstart.tokenizer must be \"bpe\" or \"char\"");
    anyhow::ensure!(qs.val_fraction > 0.0 && qs.val_fraction < 0.5, "quickstart.val_fraction must be in (0, 0.5)");
    let run = RunConfig::from_value(&run_value)?;
    Ok((qs, run, value))
}

struct Step {
    t0: Instant,
}
impl Step {
    fn start(name: &str) -> Self {
        eprintln!("\n== {name}");
        Self { t0: Instant::now() }
    }
    fn done(self) -> f64 {
        self.t0.elapsed().as_secs_f64()
    }
}

pub fn run(args: Args) -> Result<()> {
    let t_all = Instant::now();
    let budget = args.minutes * 60.0;
    let (qs, mut cfg, full_value) = load(&args)?;
    let out = args.out.clone();
    std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    ferrolm_common::write_atomic(out.join("quickstart.toml"), toml::to_string_pretty(&full_value)?)?;
    let mut report = String::new();
    let mut timings: Vec<(&str, f64)> = Vec::new();

    // 1. Corpus.
    let s = Step::start("corpus: the Cargo registry sources named in Cargo.lock");
    let (docs, corpus_lines) = gather_corpus(!args.no_registry, &args.data, None, cfg.train.seed, &out)?;
    timings.push(("corpus", s.done()));

    // 2. Split by document, deterministically.
    let (train_docs, val_docs) = split_documents(docs, qs.val_fraction, cfg.train.seed)?;
    let bytes_of = |d: &[Document]| d.iter().map(|x| x.text.len()).sum::<usize>();
    let (train_bytes, val_bytes) = (bytes_of(&train_docs), bytes_of(&val_docs));
    eprintln!("split: {} train documents ({:.1} MB), {} held-out ({:.2} MB)", train_docs.len(), train_bytes as f64 / 1e6, val_docs.len(), val_bytes as f64 / 1e6);

    // 3. Tokenizer.
    let s = Step::start("tokenizer");
    let tok = train_tokenizer(&qs.tokenizer, qs.vocab_size, qs.tokenizer_train_bytes, &train_docs)?;
    tok.save(&out.join("tokenizer.json"))?;
    cfg.model.set_vocab_size(tok.vocab_size().div_ceil(64) * 64);
    eprintln!("{} tokenizer with {} tokens (model vocabulary padded to {})", qs.tokenizer, tok.vocab_size(), cfg.model.vocab_size());
    timings.push(("tokenizer", s.done()));

    // 4. Shards.
    let s = Step::start("tokenize into shards");
    let data_dir = out.join("data");
    let write = |docs: &[Document], name: &str| write_shards(&tok, docs, &data_dir.join(name));
    let train = write(&train_docs, "train")?;
    let val = write(&val_docs, "val")?;
    let bytes_per_token = train_bytes as f64 / train.len() as f64;
    eprintln!("{} train tokens, {} held-out tokens ({:.2} bytes per token)", train.len(), val.len(), bytes_per_token);
    timings.push(("shards", s.done()));
    drop(train_docs);

    // 5. The unigram baseline: what a model that ignores context achieves.
    let mut token_bytes = tok.token_bytes();
    token_bytes.resize(cfg.model.vocab_size(), 0);
    let unigram_bpb = unigram_bits_per_byte(&train, &val, &token_bytes);
    eprintln!("unigram baseline: {unigram_bpb:.4} bits per byte on the held-out split");

    // 6. Pretrain within what is left of the budget.
    let s = Step::start("pretrain");
    cfg.data = ferrolm_train::config::DataConfig {
        train: data_dir.join("train").display().to_string(),
        val: data_dir.join("val").display().to_string(),
        tokenizer: out.join("tokenizer.json").display().to_string(),
    };
    let left = budget - t_all.elapsed().as_secs_f64();
    let train_secs = (left * (1.0 - qs.reserve_fraction) - 15.0).max(10.0);
    let step_secs = calibrate(&cfg, &train, &val, &token_bytes)?;
    // Evaluations cost about eval_batches forward passes each; five of them over the run.
    let steps = ((train_secs / step_secs) * 0.9) as usize;
    cfg.train.max_steps = steps.max(10);
    cfg.train.eval_interval = (cfg.train.max_steps / 5).max(1);
    cfg.train.checkpoint_interval = (cfg.train.max_steps / 2).max(1);
    cfg.train.warmup_steps = cfg.train.warmup_steps.min(cfg.train.max_steps / 10);
    cfg.train.time_limit_secs = train_secs;
    eprintln!(
        "{:.2} s per step measured; training {} steps (~{:.0} s) of {} tokens each",
        step_secs, cfg.train.max_steps, cfg.train.max_steps as f64 * step_secs, cfg.train.batch_size * cfg.seq_len()
    );
    let run_dir = out.clone();
    let device = super::device();
    let mut trainer = start_run(&cfg, &run_dir, ArchData::Stream { train: &train, val: &val }, token_bytes.clone(), None, &device, false)?;
    let outcome = trainer.run()?;
    drop(trainer);
    // The final checkpoint holds exactly the trained weights.
    let model = ferrolm_model::load_model(&run_dir, &device)?.model;
    timings.push(("pretrain", s.done()));
    let val_result = outcome.val.clone().context("training ended without an evaluation")?;
    eprintln!(
        "held-out: {:.4} nats/token, {:.4} bits per byte (unigram baseline {unigram_bpb:.4})",
        val_result.loss, val_result.bits_per_byte
    );

    // 7. Samples.
    let s = Step::start("samples");
    let prompts = [
        ("code", "fn main() {\n"),
        ("code", "pub struct "),
        ("code", "impl<T> "),
        ("code", "#[derive(Debug"),
        ("prose", "This crate provides "),
        ("prose", "# Examples\n\n"),
        ("prose", "Returns the "),
    ];
    let mut samples = String::from("# Samples\n\nTemperature 0.8, top-k 50, top-p 0.95, seed 0, 120 new tokens.\n\n");
    for (i, (kind, p)) in prompts.iter().enumerate() {
        let text = complete(&model, &tok, p, 120, i as u64)?;
        eprintln!("--- {kind} prompt {p:?}\n{p}{text}\n");
        let _ = writeln!(samples, "## {kind}: `{}`\n\n```\n{p}{text}\n```\n", p.escape_debug());
    }
    ferrolm_common::write_atomic(out.join("samples.md"), &samples)?;
    timings.push(("samples", s.done()));

    // 8. Report.
    let _ = writeln!(report, "# ferrolm quickstart report\n");
    let _ = writeln!(report, "## Corpus\n");
    for l in &corpus_lines {
        let _ = writeln!(report, "- {l}");
    }
    let _ = writeln!(report, "- split by document hash: {} train documents ({:.1} MB), {} held out ({:.2} MB)\n", train.num_docs(), train_bytes as f64 / 1e6, val.num_docs(), val_bytes as f64 / 1e6);
    let _ = writeln!(report, "## Tokenizer\n\n- {} with {} tokens; {:.2} bytes per token on the training split; {} train tokens, {} held-out tokens\n", qs.tokenizer, tok.vocab_size(), bytes_per_token, train.len(), val.len());
    let _ = writeln!(report, "## Model and training\n");
    let _ = match cfg.model.transformer() {
        Some(m) => writeln!(report, "- {:?} block, {} layers, {} heads ({} key/value), width {}, context {}: {} parameters", m.block, m.n_layers, m.n_heads, m.n_kv_heads, m.d_model, m.max_seq_len, m.num_params()),
        None => writeln!(report, "- {}, context {}", cfg.model.describe(), cfg.model.max_seq_len()),
    };
    let _ = writeln!(report, "- {} steps of {} tokens ({:?}), {:.0} tokens/s, {:.0} s", outcome.steps, cfg.train.batch_size * cfg.seq_len(), outcome.stop, outcome.tokens_per_sec, outcome.elapsed_secs);
    let _ = writeln!(report, "\n## Result\n\n| model | held-out loss (nats/token) | bits per byte |\n|---|---|---|");
    let _ = writeln!(report, "| unigram baseline (train-split token frequencies) | – | {unigram_bpb:.4} |");
    let _ = writeln!(report, "| ferrolm quickstart model | {:.4} | {:.4} |\n", val_result.loss, val_result.bits_per_byte);
    let _ = writeln!(report, "![loss curve](loss.svg)\n\nSamples: [samples.md](samples.md). Metrics per step: `metrics.jsonl`. Config: `config.toml` (model and training), `quickstart.toml` (everything).\n");
    let _ = writeln!(report, "## Time\n\n| stage | seconds |\n|---|---|");
    for (name, t) in &timings {
        let _ = writeln!(report, "| {name} | {t:.1} |");
    }
    let _ = writeln!(report, "| total | {:.1} |", t_all.elapsed().as_secs_f64());
    ferrolm_common::write_atomic(out.join("report.md"), &report)?;
    let summary = serde_json::json!({
        "val_loss": val_result.loss,
        "val_bits_per_byte": val_result.bits_per_byte,
        "unigram_bits_per_byte": unigram_bpb,
        "steps": outcome.steps,
        "tokens_per_sec": outcome.tokens_per_sec,
        "seconds": t_all.elapsed().as_secs_f64(),
    });
    ferrolm_common::write_atomic(out.join("summary.json"), serde_json::to_vec_pretty(&summary)?)?;
    println!("\nquickstart finished in {:.0} s: held-out {:.4} bits per byte vs unigram {:.4}; report: {}", t_all.elapsed().as_secs_f64(), val_result.bits_per_byte, unigram_bpb, out.join("report.md").display());
    Ok(())
}

/// Step 1 of the quickstart, shared with `ferrolm experiment history`: the Cargo
/// registry sources named in this project's Cargo.lock (when `registry`) plus `data`,
/// optionally sampled down to about `max_bytes` (whole documents, chosen by a hash of
/// their id, so the sample is the same on every machine), then cleaned. Returns the kept
/// documents and report lines.
pub(crate) fn gather_corpus(registry: bool, data: &[PathBuf], max_bytes: Option<usize>, seed: u64, out: &Path) -> Result<(Vec<Document>, Vec<String>)> {
    let mut docs: Vec<Document> = Vec::new();
    let mut corpus_lines = Vec::new();
    if registry {
        let lock = out.join("Cargo.lock");
        ferrolm_common::write_atomic(&lock, CARGO_LOCK)?;
        let home = ferrolm_corpus::default_cargo_home()
            .context("cannot find the Cargo home (set CARGO_HOME or HOME)")?;
        let (d, st) = ferrolm_corpus::cargo_registry_documents(&lock, &home)?;
        corpus_lines.push(format!(
            "Cargo registry ({}): {} documents, {:.1} MB from {} files; {} crates of Cargo.lock not in the registry; {} malformed files rejected",
            home.display(), st.documents, st.bytes as f64 / 1e6, st.files, st.missing_crates.len(), st.rejected
        ));
        docs.extend(d);
    }
    if !data.is_empty() {
        let (d, st) = ferrolm_corpus::read_paths(data, &Default::default())?;
        corpus_lines.push(format!(
            "--data: {} documents, {:.1} MB; {} malformed records rejected {:?}",
            st.documents, st.bytes as f64 / 1e6, st.rejected, st.rejected_by_reason
        ));
        docs.extend(d);
    }
    anyhow::ensure!(!docs.is_empty(), "no documents: the Cargo registry is empty and no --data was given (build the project first: `cargo build --release`)");
    let total: usize = docs.iter().map(|d| d.text.len()).sum();
    if let Some(max) = max_bytes.filter(|&m| m < total) {
        let threshold = (max as f64 / total as f64 * u64::MAX as f64) as u64;
        let before = docs.len();
        docs.retain(|d| xxhash_rust::xxh3::xxh3_64_with_seed(d.id.as_bytes(), seed ^ 0x5a4d_504c) < threshold);
        let kept: usize = docs.iter().map(|d| d.text.len()).sum();
        corpus_lines.push(format!("sampled {} of {before} documents ({:.1} of {:.1} MB) by a hash of their id", docs.len(), kept as f64 / 1e6, total as f64 / 1e6));
    }
    for l in &corpus_lines {
        eprintln!("{l}");
    }
    let (docs, clean_lines) = clean(docs, out)?;
    for l in &clean_lines {
        eprintln!("{l}");
    }
    corpus_lines.extend(clean_lines);
    Ok((docs, corpus_lines))
}

/// Split documents into (train, held-out) by a hash of their id, deterministically.
pub(crate) fn split_documents(docs: Vec<Document>, val_fraction: f64, seed: u64) -> Result<(Vec<Document>, Vec<Document>)> {
    let threshold = (val_fraction * u64::MAX as f64) as u64;
    let hash = |d: &Document| xxhash_rust::xxh3::xxh3_64_with_seed(d.id.as_bytes(), seed);
    let (mut val_docs, mut train_docs): (Vec<Document>, Vec<Document>) = docs.into_iter().partition(|d| hash(d) < threshold);
    // A small corpus can draw no held-out document at all (36 documents at 5% do so 16% of
    // the time): then the document with the smallest hash, the next one the rule would
    // take, is held out, so the split stays deterministic and never empty.
    if val_docs.is_empty() && train_docs.len() > 2 {
        let i = (0..train_docs.len()).min_by_key(|&i| hash(&train_docs[i])).expect("non-empty");
        val_docs.push(train_docs.remove(i));
    }
    anyhow::ensure!(!val_docs.is_empty() && train_docs.len() > 1, "the corpus is too small to split ({} train, {} held-out documents)", train_docs.len(), val_docs.len());
    Ok((train_docs, val_docs))
}

/// Train the quickstart's tokenizer ("bpe" or "char") on a deterministic stride sample
/// of about `sample_bytes` of the training documents.
pub(crate) fn train_tokenizer(kind: &str, vocab_size: usize, sample_bytes: usize, train_docs: &[Document]) -> Result<Tokenizer> {
    let train_bytes: usize = train_docs.iter().map(|d| d.text.len()).sum();
    let stride = (train_bytes / sample_bytes.max(1)).max(1);
    let sample = train_docs.iter().step_by(stride).map(|d| d.text.as_str());
    Ok(if kind == "char" {
        Tokenizer::train_char(sample, &special::defaults())?
    } else {
        Tokenizer::train_bpe(sample, &BpeTrainConfig { vocab_size, min_frequency: 2, special_tokens: special::defaults() })?
    })
}

/// Encode documents into token shards in `dir` (end-of-text after each) and open them.
pub(crate) fn write_shards(tok: &Tokenizer, docs: &[Document], dir: &Path) -> Result<TokenShards> {
    let mut w = ShardWriter::for_tokenizer(dir, tok)?;
    ferrolm_tokenizer::shards::write_texts(tok, docs.iter().map(|d| d.text.as_str()), &mut w, 8 << 20)?;
    w.finish()?;
    TokenShards::open(dir)
}

/// The corpus pipeline with the quickstart's defaults (code rules for code, prose rules
/// for prose, exact and near-duplicate removal, privacy scrubbing); its report,
/// statistics and excluded documents go to `out/corpus/`.
fn clean(docs: Vec<Document>, out: &std::path::Path) -> Result<(Vec<Document>, Vec<String>)> {
    let cfg = ferrolm_corpus::PipelineConfig::quickstart_default();
    let dir = out.join("corpus");
    let (kept, st) = ferrolm_corpus::run_pipeline(docs, &cfg, Some(&dir))?;
    let mut lines = vec![format!(
        "cleaning: {} documents in, {} kept ({:.1} MB of {:.1} MB), {} removed, {} rejected; report in {}",
        st.input,
        st.kept,
        st.bytes_kept as f64 / 1e6,
        st.bytes_in as f64 / 1e6,
        st.removed,
        st.rejected,
        dir.join("report.md").display()
    )];
    for (step, reasons) in &st.removed_by_step {
        let total: u64 = reasons.values().sum();
        if total > 0 {
            let detail: Vec<String> = reasons.iter().map(|(r, n)| format!("{r}: {n}")).collect();
            lines.push(format!("removed by {step}: {total} ({})", detail.join(", ")));
        }
    }
    Ok((kept, lines))
}

/// Seconds per optimizer step of this config on this machine (median of 3 after one warm-up).
fn calibrate(cfg: &RunConfig, train: &TokenShards, val: &TokenShards, token_bytes: &[u32]) -> Result<f64> {
    let dir = tempfile::tempdir()?;
    let mut c = cfg.clone();
    c.train.max_steps = 4;
    let mut t = start_run(&c, dir.path(), ArchData::Stream { train, val }, token_bytes.to_vec(), None, &super::device(), false)?;
    t.train_step()?;
    let mut times: Vec<f64> = (0..3)
        .map(|_| {
            let s = Instant::now();
            t.train_step().map(|_| s.elapsed().as_secs_f64())
        })
        .collect::<Result<_>>()?;
    times.sort_by(f64::total_cmp);
    Ok(times[1])
}

fn complete(model: &ferrolm_model::AnyModel, tok: &Tokenizer, prompt: &str, n: usize, seed: u64) -> Result<String> {
    let ids = tok.encode(prompt);
    let cfg = GenerateConfig {
        max_tokens: n,
        stop_tokens: vec![tok.eot_id()],
        sampling: SamplingConfig { temperature: 0.8, top_k: 50, top_p: 0.95, seed },
    };
    let eot = tok.eot_id();
    let mut stream = DecodeStream::new(tok);
    let mut text = String::new();
    generate_any(model, &ids, eot, &cfg, |t| {
        if t != eot {
            text.push_str(&stream.push(t));
        }
        true
    })?;
    text.push_str(&stream.finish());
    Ok(text)
}

/// Bits per byte of a unigram model (train-split token frequencies, add-one smoothed) on
/// the held-out tokens, over the same text tokens as the model's bits per byte.
pub(crate) fn unigram_bits_per_byte(train: &TokenShards, val: &TokenShards, token_bytes: &[u32]) -> f64 {
    let v = token_bytes.len();
    let mut counts = vec![1f64; v];
    let chunk = 1 << 20;
    let mut start = 0;
    while start < train.len() {
        let n = chunk.min(train.len() - start);
        for t in train.get(start, n) {
            counts[t as usize] += 1.0;
        }
        start += n;
    }
    let total: f64 = counts.iter().sum();
    let (mut bits, mut bytes) = (0f64, 0u64);
    for t in val.get(0, val.len()) {
        let b = token_bytes[t as usize] as u64;
        if b > 0 {
            bits += -(counts[t as usize] / total).log2();
            bytes += b;
        }
    }
    bits / bytes as f64
}
