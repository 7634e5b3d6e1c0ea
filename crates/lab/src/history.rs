//! `ferrolm experiment history [--quick] [--config FILE] [--data PATH…] [--out DIR]`
//!
//! One corpus (the quickstart's: Cargo registry sources, sampled and cleaned; or `--data`),
//! one tokenizer, one held-out token stream. Each family — Kneser-Ney 5-gram, Bengio's
//! NPLM, Elman RNN, LSTM, a small Transformer — trains for its wall-clock budget and is
//! scored on exactly the same held-out target tokens with the same bits-per-byte
//! definition (`ferrolm_train::BitsPerByte`: cross-entropy in bits over the UTF-8 bytes of
//! the target tokens, special tokens counted in the loss but not in the bytes).
//!
//! Context at evaluation: every family sees only the tokens of the current window of
//! `seq_len + 1` tokens (the same windows for all). The n-gram scores target j of a
//! window from the (up to order−1) window tokens before it, so its first targets lack
//! context exactly as the neural models' do; after an end-of-text token its context
//! restarts at `<s>`, and an end-of-text target is scored as `</s>` (the n-gram is trained
//! on documents as sentences). Tokens the n-gram never saw score as its `<unk>`.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use candle_core::Device;
use ferrolm_model::Family;
use ferrolm_tokenizer::shards::TokenShards;
use ferrolm_train::{start_run, ArchData, BitsPerByte, RunConfig, TokenSource};
use serde::{Deserialize, Serialize};

use crate::corpus::{gather_corpus, split_by_id, text_bytes, CorpusOptions};
use crate::prep::{padded_vocab, token_bytes, train_tokenizer, unigram_bits_per_byte, write_shards};
use crate::timing::seconds_per_step;

/// The built-in config (configs/experiment-history.toml).
pub const DEFAULT_CONFIG: &str = include_str!("../../../configs/experiment-history.toml");

/// What `ferrolm experiment history` takes.
#[derive(Debug, Clone)]
pub struct HistoryOptions {
    /// Apply the config's [quick] overrides first: every family in a few minutes.
    pub quick: bool,
    /// A config instead of the built-in one.
    pub config: Option<PathBuf>,
    /// Text files or folders to use as the corpus instead of the Cargo registry.
    pub data: Vec<PathBuf>,
    /// Output folder.
    pub out: PathBuf,
    /// `key=value` overrides (after [quick]).
    pub overrides: Vec<String>,
}

/// What the experiment measured (also `summary.json`).
#[derive(Debug, Clone)]
pub struct HistoryOutcome {
    pub rows: Vec<Row>,
    pub unigram_bits_per_byte: f64,
    pub seconds: f64,
    pub report: PathBuf,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct ExperimentConfig {
    corpus_bytes: usize,
    tokenizer: String,
    vocab_size: usize,
    tokenizer_train_bytes: usize,
    val_fraction: f64,
    seq_len: usize,
    eval_windows: usize,
    ngram_order: usize,
    families: Vec<String>,
}

/// One neural family's budget and its `[model]`/`[train]` keys.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct FamilySection {
    seconds: f64,
    #[serde(default)]
    model: toml::Table,
    #[serde(default)]
    train: toml::Table,
}

/// One line of the result table.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    pub family: String,
    pub description: String,
    pub params: usize,
    pub train_secs: f64,
    pub train_tokens: u64,
    pub loss: f64,
    pub perplexity: f64,
    pub bits_per_byte: f64,
    pub eval_tokens: usize,
}

/// Run the experiment into `o.out` (report.md, history.svg, summary.json, experiment.toml,
/// tokenizer.json, data/, one run folder per neural family).
pub fn run_history(o: &HistoryOptions, device: &Device) -> Result<HistoryOutcome> {
    let t_all = Instant::now();
    let value = crate::config::load_layered(o.config.as_deref(), DEFAULT_CONFIG, o.quick, &o.overrides)?;
    let exp: ExperimentConfig = ferrolm_common::config::typed(value.get("experiment").context("config lacks [experiment]")?)
        .context("in [experiment]")?;
    let base_train = value.get("train").and_then(|t| t.as_table()).cloned().unwrap_or_default();
    let seed = base_train.get("seed").and_then(|s| s.as_integer()).unwrap_or(1337) as u64;
    for f in &exp.families {
        if f != "ngram" && !Family::ALL.iter().any(|x| x.name() == f) {
            bail!("experiment.families: unknown family {f:?} (known: ngram, nplm, rnn, lstm, transformer)");
        }
    }
    let out = o.out.clone();
    std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    ferrolm_common::write_atomic(out.join("experiment.toml"), toml::to_string_pretty(&value)?)?;

    // One corpus, one split, one tokenizer, one held-out stream for every family.
    eprintln!("\n== corpus");
    let corpus = CorpusOptions { registry: o.data.is_empty(), data: o.data.clone(), max_bytes: Some(exp.corpus_bytes), clean: true, seed };
    let (docs, corpus_lines) = gather_corpus(&corpus, &out)?;
    let (train_docs, val_docs) = split_by_id(docs, exp.val_fraction, seed)?;
    eprintln!("\n== tokenizer");
    let tok = train_tokenizer(&exp.tokenizer, exp.vocab_size, exp.tokenizer_train_bytes, &train_docs)?;
    let tok_path = out.join("tokenizer.json");
    tok.save(&tok_path)?;
    let vocab = padded_vocab(&tok);
    let data_dir = out.join("data");
    let train = write_shards(&tok, &train_docs, &data_dir.join("train"))?;
    let val = write_shards(&tok, &val_docs, &data_dir.join("val"))?;
    let train_bytes = text_bytes(&train_docs);
    drop((train_docs, val_docs));
    let token_bytes = token_bytes(&tok, vocab);
    let unigram_bpb = unigram_bits_per_byte(&train, &val, &token_bytes);
    let prep_secs = t_all.elapsed().as_secs_f64();
    eprintln!(
        "{} tokenizer with {} tokens; {} train tokens ({:.2} bytes per token), {} held-out tokens; unigram baseline {unigram_bpb:.4} bits per byte",
        exp.tokenizer, tok.vocab_size(), train.len(), train_bytes as f64 / train.len() as f64, val.len()
    );
    let eval_windows = if exp.eval_windows == 0 { usize::MAX } else { exp.eval_windows };

    let mut rows: Vec<Row> = Vec::new();
    for name in &exp.families {
        eprintln!("\n== {name}");
        let row = if name == "ngram" {
            ngram_row(&exp, &train, &val, &token_bytes, tok.eot_id(), eval_windows)?
        } else {
            let section: FamilySection = ferrolm_common::config::typed(value.get(name.as_str()).with_context(|| format!("config lacks [{name}]"))?)
                .with_context(|| format!("in [{name}]"))?;
            let mut model = section.model.clone();
            model.entry("family").or_insert_with(|| toml::Value::String(name.clone()));
            model.insert("vocab_size".into(), toml::Value::Integer(vocab as i64));
            let mut tr = base_train.clone();
            tr.extend(section.train.clone());
            tr.insert("seq_len".into(), toml::Value::Integer(exp.seq_len as i64));
            let mut data = toml::Table::new();
            data.insert("train".into(), data_dir.join("train").display().to_string().into());
            data.insert("val".into(), data_dir.join("val").display().to_string().into());
            data.insert("tokenizer".into(), tok_path.display().to_string().into());
            let mut run = toml::Table::new();
            run.insert("model".into(), toml::Value::Table(model));
            run.insert("train".into(), toml::Value::Table(tr));
            run.insert("data".into(), toml::Value::Table(data));
            let cfg = RunConfig::from_value(&toml::Value::Table(run)).with_context(|| format!("the [{name}] run config"))?;
            if cfg.model.family().name() != name {
                bail!("[{name}] model.family is {:?}; it must be the section's family", cfg.model.family().name());
            }
            neural_row(cfg, section.seconds, &out.join(name), &tok_path, &train, &val, &token_bytes, eval_windows, device)?
        };
        eprintln!(
            "{name}: {:.4} bits per byte, perplexity {:.2}, {} parameters, {:.0} s of training",
            row.bits_per_byte, row.perplexity, row.params, row.train_secs
        );
        rows.push(row);
    }

    let report = report(&exp, &rows, &corpus_lines, &tok, train.len(), val.len(), train_bytes, unigram_bpb, prep_secs, t_all.elapsed().as_secs_f64(), o.quick);
    plot(&rows, &out.join("history.svg"))?;
    ferrolm_common::write_atomic(out.join("report.md"), &report)?;
    let seconds = t_all.elapsed().as_secs_f64();
    let summary = serde_json::json!({ "rows": rows, "unigram_bits_per_byte": unigram_bpb, "seconds": seconds });
    ferrolm_common::write_atomic(out.join("summary.json"), serde_json::to_vec_pretty(&summary)?)?;
    Ok(HistoryOutcome { rows, unigram_bits_per_byte: unigram_bpb, seconds, report: out.join("report.md") })
}

/// Train one neural family for about `seconds`: time a few steps, size max_steps (and so
/// the learning-rate schedule) to the budget, train through the shared Trainer, then score
/// the held-out windows with `ferrolm_train::evaluate`.
#[allow(clippy::too_many_arguments)]
fn neural_row(
    mut cfg: RunConfig,
    seconds: f64,
    run_dir: &Path,
    tok_path: &Path,
    train: &TokenShards,
    val: &TokenShards,
    token_bytes: &[u32],
    eval_windows: usize,
    device: &Device,
) -> Result<Row> {
    eprintln!("{}", cfg.model.describe());
    let step_secs = seconds_per_step(&cfg, ArchData::Stream { train, val }, token_bytes, device)?;
    let tc = &mut cfg.train;
    tc.max_steps = ((seconds / step_secs) as usize).max(10);
    tc.warmup_steps = tc.warmup_steps.min(tc.max_steps / 10);
    // A safeguard when the machine slows down mid-run; the schedule assumes max_steps.
    tc.time_limit_secs = seconds * 1.25;
    let (steps, batch) = (tc.max_steps, tc.batch_size);
    eprintln!("{step_secs:.3} s per step measured; {steps} steps of {} tokens", batch * cfg.seq_len());
    if run_dir.exists() {
        std::fs::remove_dir_all(run_dir).with_context(|| format!("clearing {}", run_dir.display()))?;
    }
    let mut trainer = start_run(&cfg, run_dir, ArchData::Stream { train, val }, token_bytes.to_vec(), None, device, false)?;
    trainer.quiet = true;
    let outcome = trainer.run()?;
    drop(trainer);
    // The run folder alone is enough for `ferrolm eval`.
    let tok_bytes = std::fs::read(tok_path).with_context(|| format!("reading {}", tok_path.display()))?;
    ferrolm_common::write_atomic(run_dir.join("tokenizer.json"), tok_bytes)?;
    let model = ferrolm_model::load_model(run_dir, device)?.model;
    let seq = cfg.seq_len();
    let ev = ferrolm_train::evaluate(&model, val, token_bytes, seq, cfg.train.batch_size, eval_windows, device)?;
    Ok(Row {
        family: cfg.model.family().name().into(),
        description: cfg.model.describe(),
        params: cfg.model.num_params(),
        train_secs: outcome.elapsed_secs,
        train_tokens: (outcome.steps * cfg.train.batch_size * seq) as u64,
        loss: ev.loss,
        perplexity: ev.loss.exp(),
        bits_per_byte: ev.bits_per_byte,
        eval_tokens: ev.tokens,
    })
}

/// Interpolated modified Kneser-Ney over the training tokens (documents as sentences),
/// scored on the same held-out windows as the neural families (see the module notes).
fn ngram_row(exp: &ExperimentConfig, train: &TokenShards, val: &TokenShards, token_bytes: &[u32], eot: u32, eval_windows: usize) -> Result<Row> {
    let t0 = Instant::now();
    let ids = train.get(0, train.len());
    let docs: Vec<&[u32]> = ids.split(|&t| t == eot).filter(|d| !d.is_empty()).collect();
    let model = ferrolm_ngram::train_ids(docs.iter().copied(), &ferrolm_ngram::TrainOptions { order: exp.ngram_order, discount_fallback: true })?;
    let train_secs = t0.elapsed().as_secs_f64();
    let params: usize = model.grams.iter().map(|g| g.len() * 2).sum();
    eprintln!("{}-gram model: {} n-grams, trained in {train_secs:.1} s", exp.ngram_order, model.grams.iter().map(|g| g.len()).sum::<usize>());

    let (bos, eos) = (model.id(ferrolm_ngram::BOS), model.id(ferrolm_ngram::EOS));
    let map = |t: u32| if t == eot { eos } else { model.id(&t.to_string()) };
    let seq = exp.seq_len;
    let offsets = ferrolm_train::data::eval_offsets(val, eval_windows, seq);
    let keep = exp.ngram_order - 1;
    let mut acc = BitsPerByte::default();
    let mut window = vec![0u32; seq + 1];
    let mut ctx: Vec<u32> = Vec::with_capacity(seq + 1);
    for &o in &offsets {
        val.read(o, &mut window);
        ctx.clear();
        ctx.push(map(window[0]));
        if window[0] == eot {
            ctx.clear();
            ctx.push(bos);
        }
        for &target in &window[1..] {
            let start = ctx.len().saturating_sub(keep);
            let lp = model.log10_prob(&ctx[start..], map(target));
            acc.add_target(-lp * std::f64::consts::LN_10, target, token_bytes);
            if target == eot {
                ctx.clear();
                ctx.push(bos);
            } else {
                ctx.push(map(target));
            }
        }
    }
    let loss = acc.loss();
    Ok(Row {
        family: "ngram".into(),
        description: format!("interpolated modified Kneser-Ney, order {}: {params} parameters", exp.ngram_order),
        params,
        train_secs,
        train_tokens: ids.len() as u64,
        loss,
        perplexity: loss.exp(),
        bits_per_byte: acc.bits_per_byte(),
        eval_tokens: acc.tokens,
    })
}

fn label(family: &str) -> &'static str {
    match family {
        "ngram" => "n-gram (KN)",
        "nplm" => "NPLM (2003)",
        "rnn" => "Elman RNN",
        "lstm" => "LSTM",
        _ => "Transformer",
    }
}

#[allow(clippy::too_many_arguments)]
fn report(
    exp: &ExperimentConfig,
    rows: &[Row],
    corpus_lines: &[String],
    tok: &ferrolm_tokenizer::Tokenizer,
    train_tokens: usize,
    val_tokens: usize,
    train_bytes: usize,
    unigram_bpb: f64,
    prep_secs: f64,
    total_secs: f64,
    quick: bool,
) -> String {
    let mut r = String::new();
    let _ = writeln!(r, "# From n-grams to Transformers: one corpus, one tokenizer, a budget each{}\n", if quick { " (--quick)" } else { "" });
    let _ = writeln!(r, "## Data\n");
    for l in corpus_lines {
        let _ = writeln!(r, "- {l}");
    }
    let _ = writeln!(
        r,
        "- {} tokenizer, {} tokens; {train_tokens} training tokens ({:.2} bytes per token), {val_tokens} held-out tokens\n",
        exp.tokenizer,
        tok.vocab_size(),
        train_bytes as f64 / train_tokens as f64
    );
    let _ = writeln!(r, "## Results\n");
    let eval_tokens = rows.first().map(|x| x.eval_tokens).unwrap_or(0);
    let _ = writeln!(
        r,
        "Every model is scored on the same {eval_tokens} held-out target tokens: windows of {} tokens, each model seeing only the window (the first targets of a window have little context for every family). \
         Perplexity is per token, exp(mean cross-entropy); bits per byte is the cross-entropy in bits over the UTF-8 bytes the target tokens stand for (end-of-text counts in perplexity, not in bytes). \
         The n-gram scores each target from at most {} preceding tokens of the same window (so its first targets lack context exactly as the windows do); after an end-of-text token its context restarts at `<s>`, an end-of-text target is scored as `</s>` (it was trained on documents as sentences), and tokens it never saw score as `<unk>`. \
         Training time is wall-clock seconds of training only (for the n-gram: counting and estimation); parameters of the n-gram are its stored probabilities and back-off weights (two per n-gram).\n",
        exp.seq_len + 1,
        exp.ngram_order - 1
    );
    let _ = writeln!(r, "| model | architecture | held-out perplexity / token | bits per byte | training time (s) | tokens trained on | parameters |");
    let _ = writeln!(r, "|---|---|---|---|---|---|---|");
    let _ = writeln!(r, "| unigram | train-split token frequencies, add-one | – | {unigram_bpb:.4} | – | – | – |");
    for x in rows {
        let _ = writeln!(
            r,
            "| {} | {} | {:.2} | {:.4} | {:.1} | {} | {} |",
            label(&x.family), x.description.rsplit_once(": ").map(|d| d.0).unwrap_or(&x.description), x.perplexity, x.bits_per_byte, x.train_secs, x.train_tokens, x.params
        );
    }
    let _ = writeln!(r, "\n![bits per byte against training time and parameters](history.svg)\n");
    let _ = writeln!(r, "## What the numbers show\n");
    let mut sorted: Vec<&Row> = rows.iter().collect();
    sorted.sort_by(|a, b| a.bits_per_byte.total_cmp(&b.bits_per_byte));
    if let (Some(best), Some(worst)) = (sorted.first(), sorted.last()) {
        let order: Vec<String> = sorted.iter().map(|x| format!("{} ({:.3})", label(&x.family), x.bits_per_byte)).collect();
        let _ = writeln!(r, "- Ranked by held-out bits per byte (lower is better): {}.", order.join(" < "));
        let _ = writeln!(
            r,
            "- The best, {}, needs {:.1}% fewer bits per byte than the worst, {}, and {:.1}% fewer than the unigram baseline.",
            label(&best.family),
            100.0 * (1.0 - best.bits_per_byte / worst.bits_per_byte),
            label(&worst.family),
            100.0 * (1.0 - best.bits_per_byte / unigram_bpb)
        );
    }
    if let Some(ng) = rows.iter().find(|x| x.family == "ngram") {
        let beat: Vec<&str> = rows.iter().filter(|x| x.family != "ngram" && x.bits_per_byte < ng.bits_per_byte).map(|x| label(&x.family)).collect();
        let lost: Vec<&str> = rows.iter().filter(|x| x.family != "ngram" && x.bits_per_byte >= ng.bits_per_byte).map(|x| label(&x.family)).collect();
        let _ = writeln!(
            r,
            "- The count-based {}-gram trains in {:.1} s over all {} training tokens. Within their budgets {}{}.",
            exp.ngram_order,
            ng.train_secs,
            ng.train_tokens,
            if beat.is_empty() { "no neural model beat it".to_string() } else { format!("{} beat it", beat.join(", ")) },
            if lost.is_empty() || beat.is_empty() { String::new() } else { format!("; {} did not", lost.join(", ")) }
        );
    }
    for x in rows.iter().filter(|x| x.family != "ngram") {
        let _ = writeln!(
            r,
            "- {} saw {} training tokens ({:.1} passes over the training data) in {:.0} s.",
            label(&x.family),
            x.train_tokens,
            x.train_tokens as f64 / train_tokens as f64,
            x.train_secs
        );
    }
    let _ = writeln!(
        r,
        "- Caveats: one seed; budgets are wall-clock on this machine (other load slows every family alike only if it is steady); \
         the neural models are small and under-trained at these budgets, so the ranking says which family learns most per second here, not which is best at scale.\n"
    );
    let _ = writeln!(r, "## Time\n\nCorpus, tokenizer and shards: {prep_secs:.0} s; whole experiment: {total_secs:.0} s. Runs: one folder per neural family (config.toml, checkpoint, metrics.jsonl, loss.svg); the resolved config is `experiment.toml`.");
    r
}

/// Two panels: bits per byte against training seconds, and against parameters (log scale).
fn plot(rows: &[Row], path: &Path) -> Result<()> {
    let points: Vec<ferrolm_train::plot::Point> = rows
        .iter()
        .map(|x| ferrolm_train::plot::Point { name: label(&x.family).to_string(), xs: [x.train_secs, x.params as f64], y: x.bits_per_byte })
        .collect();
    ferrolm_train::plot::labelled_points(
        &points,
        ["training time (s)", "parameters (log scale)"],
        "bits per byte",
        "Held-out bits per byte (lower is better)",
        path,
    )
}
