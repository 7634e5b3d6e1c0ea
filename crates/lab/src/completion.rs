//! Code completion: `ferrolm complete` (one completion at a cursor in a file, with a
//! trained run folder) and `ferrolm experiment completion [--quick]`.
//!
//! The experiment trains the same small code model twice on the Cargo-registry corpus, with
//! fill-in-the-middle (`train.fim_rate` of the config, 0.5 by default) and without (0), same
//! seed, steps and data order, and holds out whole crates the models never see. On held-out
//! Rust files it measures:
//!
//! - **next line**, left to right from the code before the line (CodeXGLUE's line-level
//!   completion): exact match after whitespace normalisation (`pred.split() ==
//!   gt.split()`) and edit similarity as fuzzywuzzy's `fuzz.ratio` (Levenshtein ratio with
//!   substitutions costing two, `2·LCS/(|a|+|b|)`, rounded to an integer percentage);
//! - **infilling** of the same line removed from its file (the paper's single-line
//!   infilling): the FIM model gets the code before and after it (PSM and SPM prompts); the
//!   model without FIM and the n-gram model only have the code before it, left to right;
//! - held-out **bits per byte**, left to right, for both models (the paper's "FIM for free"
//!   check: FIM should not cost left-to-right loss);
//! - the **n-gram baseline** (interpolated modified Kneser-Ney on the same tokens, greedy);
//! - completion **latency**: time to the first token and to the whole line.
//!
//! Lines are sampled by a seeded hash, `experiment.lines_per_file` per held-out file (1 by
//! default); blank lines and lines of closing brackets alone are not asked for.
//!
//! Every comparison between two systems on the same lines (the FIM model's infilling against
//! the model without FIM, its next line against the same) comes with a paired bootstrap 95 %
//! interval of the difference (the held-out files resampled with replacement, each with all
//! its lines, 10,000 times — lines of one file are not independent): a difference whose
//! interval includes 0 is reported as within noise, not as a win.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result};
use candle_core::Device;
use ferrolm_corpus::Document;
use ferrolm_infer::fim::{complete, split_at_cursor, Completion, CompletionRequest, EditorStops, PromptLayout, Scope};
use ferrolm_infer::SamplingConfig;
use ferrolm_model::AnyModel;
use ferrolm_tokenizer::Tokenizer;
use ferrolm_train::{start_run_with_tokenizer, ArchData, RunConfig};
use serde::{Deserialize, Serialize};

use crate::corpus::{gather_corpus, CorpusOptions};
use crate::prep::{padded_vocab, token_bytes, train_tokenizer, write_shards};

/// The built-in config (configs/experiment-completion.toml).
pub const DEFAULT_CONFIG: &str = include_str!("../../../configs/experiment-completion.toml");

/// What `ferrolm complete` takes.
#[derive(Debug, Clone)]
pub struct CompleteFileOptions {
    /// A run folder (config.toml, tokenizer.json, checkpoints/).
    pub model: PathBuf,
    pub file: PathBuf,
    /// 1-based line of the cursor.
    pub line: usize,
    /// 1-based character column of the cursor; `None` = the end of the line.
    pub col: Option<usize>,
    pub max_tokens: usize,
    pub scope: Scope,
    /// `None`: PSM for a model trained with FIM, left to right for one trained without.
    pub layout: Option<PromptLayout>,
    pub sampling: SamplingConfig,
}

/// What `ferrolm complete` prints.
#[derive(Debug, Clone, Serialize)]
pub struct FileCompletion {
    pub layout: PromptLayout,
    /// The run's `train.fim_rate`.
    pub fim_rate: f64,
    #[serde(flatten)]
    pub completion: Completion,
}

/// Complete at the cursor of a file with a trained run.
pub fn complete_file(o: &CompleteFileOptions, device: &Device) -> Result<FileCompletion> {
    let source = std::fs::read_to_string(&o.file).with_context(|| format!("cannot read {} as UTF-8 text", o.file.display()))?;
    let (prefix, suffix) = split_at_cursor(&source, o.line, o.col).with_context(|| format!("the cursor in {}", o.file.display()))?;
    let cfg_path = o.model.join("config.toml");
    let cfg = RunConfig::from_value(&ferrolm_common::load_config(Some(&cfg_path), &[])?).with_context(|| format!("in {}", cfg_path.display()))?;
    let tok = Tokenizer::from_file(&o.model.join("tokenizer.json"))?;
    let loaded = ferrolm_model::load_model(&o.model, device)?;
    let layout = o.layout.unwrap_or(if cfg.train.fim_rate > 0.0 { PromptLayout::Psm } else { PromptLayout::LeftToRight });
    if layout != PromptLayout::LeftToRight && cfg.train.fim_rate == 0.0 {
        eprintln!("warning: {} was trained without fill-in-the-middle (train.fim_rate = 0); a FIM prompt means little to it", o.model.display());
    }
    let req = CompletionRequest { prefix, suffix, layout, scope: o.scope, max_tokens: o.max_tokens, sampling: o.sampling.clone() };
    let completion = complete(&loaded.model, loaded.spec.max_seq_len(), &tok, &req)?;
    Ok(FileCompletion { layout, fim_rate: cfg.train.fim_rate, completion })
}

/// CodeXGLUE's line-completion exact match: equal after splitting on whitespace.
pub fn exact_match(pred: &str, truth: &str) -> bool {
    pred.split_whitespace().eq(truth.split_whitespace())
}

/// fuzzywuzzy's `fuzz.ratio` (with python-Levenshtein): `round(100 · (|a|+|b| − d)/(|a|+|b|))`
/// where `d` is the edit distance with insertions and deletions costing 1 and substitutions
/// 2, i.e. `2·LCS(a, b)`; over characters (code points). 100 for two empty strings.
pub fn edit_similarity(a: &str, b: &str) -> f64 {
    let (a, b): (Vec<char>, Vec<char>) = (a.chars().collect(), b.chars().collect());
    let total = a.len() + b.len();
    if total == 0 {
        return 100.0;
    }
    // longest common subsequence, one row at a time
    let mut prev = vec![0usize; b.len() + 1];
    let mut cur = vec![0usize; b.len() + 1];
    for &x in &a {
        for (j, &y) in b.iter().enumerate() {
            cur[j + 1] = if x == y { prev[j] + 1 } else { cur[j].max(prev[j + 1]) };
        }
        std::mem::swap(&mut prev, &mut cur);
    }
    (200.0 * prev[b.len()] as f64 / total as f64).round()
}

/// What `ferrolm experiment completion` takes.
#[derive(Debug, Clone, Default)]
pub struct CompletionExperimentOptions {
    pub config: Option<PathBuf>,
    pub quick: bool,
    pub overrides: Vec<String>,
    /// Default runs/experiment-completion[-quick].
    pub out: Option<PathBuf>,
    /// Files/folders instead of the Cargo registry sources named in Cargo.lock.
    pub data: Vec<PathBuf>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct ExperimentConfig {
    /// Held-out share of crates.
    val_fraction: f64,
    vocab_size: usize,
    tokenizer_train_bytes: usize,
    /// Sample the corpus down to about this many bytes (whole documents).
    max_corpus_bytes: usize,
    /// Held-out lines asked for (at most `lines_per_file` per file).
    examples: usize,
    /// Lines asked for in one held-out file, at most.
    lines_per_file: usize,
    /// Longest line asked for, in characters.
    max_line_chars: usize,
    /// Most tokens per completion.
    max_tokens: usize,
    ngram_order: usize,
}

impl Default for ExperimentConfig {
    fn default() -> Self {
        Self { val_fraction: 0.1, vocab_size: 2048, tokenizer_train_bytes: 4_000_000, max_corpus_bytes: 40_000_000, examples: 200, lines_per_file: 1, max_line_chars: 120, max_tokens: 48, ngram_order: 5 }
    }
}

/// One held-out line: the file around it.
#[derive(Debug, Clone)]
struct Example {
    file: String,
    line: usize,
    prefix: String,
    truth: String,
    suffix: String,
}

/// The scores of one system on one task.
#[derive(Debug, Clone, Default, Serialize)]
pub struct TaskScore {
    pub exact_match: f64,
    pub edit_similarity: f64,
    pub examples: usize,
    /// Medians over the examples, in milliseconds (NaN for the n-gram model).
    pub time_to_first_token_ms: f64,
    pub total_ms: f64,
    /// Each line's (exact match, edit similarity), in example order: what the paired
    /// comparisons resample.
    #[serde(skip)]
    pub per_line: Vec<(bool, f64)>,
}

/// One system against another on the same lines: the mean difference (system − baseline)
/// and its paired bootstrap 95 % interval.
#[derive(Debug, Clone, Serialize)]
pub struct PairedComparison {
    pub task: String,
    pub system: String,
    pub baseline: String,
    pub metric: String,
    pub difference: f64,
    pub ci_low: f64,
    pub ci_high: f64,
    /// Lines where the system scored higher / lower than the baseline.
    pub better: usize,
    pub worse: usize,
    /// Files the lines came from: the clusters the interval resamples.
    pub files: usize,
}

impl PairedComparison {
    /// "above", "below" or "within noise": whether the 95 % interval excludes 0.
    pub fn verdict(&self) -> &'static str {
        if self.ci_low > 0.0 {
            "above"
        } else if self.ci_high < 0.0 {
            "below"
        } else {
            "within noise"
        }
    }
}

/// Paired bootstrap (Efron & Tibshirani; Koehn 2004 for MT evaluation) of mean(a − b) over
/// the same items: `resamples` draws of n items with replacement from a seeded generator,
/// the 2.5th and 97.5th percentiles of the resampled means. Every item is its own cluster
/// ([`paired_cluster_bootstrap`]).
pub fn paired_bootstrap(a: &[f64], b: &[f64], resamples: usize, seed: u64) -> (f64, f64, f64) {
    let own: Vec<usize> = (0..a.len()).collect();
    paired_cluster_bootstrap(a, b, &own, resamples, seed)
}

/// The paired bootstrap over clusters of items (Davison & Hinkley 1997, §3.8): items of one
/// cluster — lines of one file — are not independent (a file the model knows well gives it
/// many good lines), so each resample draws whole clusters with replacement, as many as there
/// are, and takes the mean difference over all their items. Resampling the items alone would
/// treat four lines of one file as four independent observations and give too narrow an
/// interval. `cluster[i]` names item i's cluster (any numbering).
pub fn paired_cluster_bootstrap(a: &[f64], b: &[f64], cluster: &[usize], resamples: usize, seed: u64) -> (f64, f64, f64) {
    use rand::{Rng, SeedableRng};
    assert_eq!(a.len(), b.len(), "paired scores need the same items");
    assert_eq!(a.len(), cluster.len(), "every item needs its cluster");
    let n = a.len();
    if n == 0 {
        return (0.0, 0.0, 0.0);
    }
    // (sum of differences, items) per cluster, in order of first appearance
    let mut index = std::collections::HashMap::new();
    let mut groups: Vec<(f64, usize)> = Vec::new();
    for ((x, y), &c) in a.iter().zip(b).zip(cluster) {
        let g = *index.entry(c).or_insert_with(|| {
            groups.push((0.0, 0));
            groups.len() - 1
        });
        groups[g].0 += x - y;
        groups[g].1 += 1;
    }
    let mean = groups.iter().map(|g| g.0).sum::<f64>() / n as f64;
    let k = groups.len();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let mut means: Vec<f64> = (0..resamples.max(1))
        .map(|_| {
            let (sum, items) = (0..k).map(|_| groups[rng.random_range(0..k)]).fold((0.0, 0usize), |(s, m), g| (s + g.0, m + g.1));
            sum / items as f64
        })
        .collect();
    means.sort_by(f64::total_cmp);
    let at = |q: f64| means[((q * (means.len() - 1) as f64).round() as usize).min(means.len() - 1)];
    (mean, at(0.025), at(0.975))
}

/// Exact match (as 0/1) and edit similarity of `system` against `baseline` on one task, the
/// lines resampled file by file (`files[i]`: line i's file).
fn compare(task: &str, system: (&str, &TaskScore), baseline: (&str, &TaskScore), files: &[usize]) -> Vec<PairedComparison> {
    type LineScore = fn(&(bool, f64)) -> f64;
    let metrics: [(&str, LineScore); 2] = [("exact match", |p| p.0 as u8 as f64), ("edit similarity", |p| p.1)];
    metrics
        .iter()
        .enumerate()
        .map(|(k, (metric, f))| {
            let a: Vec<f64> = system.1.per_line.iter().map(f).collect();
            let b: Vec<f64> = baseline.1.per_line.iter().map(f).collect();
            let (difference, ci_low, ci_high) = paired_cluster_bootstrap(&a, &b, files, 10_000, 0xb007 + k as u64);
            PairedComparison {
                task: task.into(),
                system: system.0.into(),
                baseline: baseline.0.into(),
                metric: (*metric).into(),
                difference,
                ci_low,
                ci_high,
                better: a.iter().zip(&b).filter(|(x, y)| x > y).count(),
                worse: a.iter().zip(&b).filter(|(x, y)| x < y).count(),
                files: files.iter().collect::<std::collections::HashSet<_>>().len(),
            }
        })
        .collect()
}

/// A trained model's figures.
#[derive(Debug, Clone, Serialize)]
pub struct ModelResult {
    pub name: String,
    pub fim_rate: f64,
    pub steps: usize,
    pub train_secs: f64,
    pub val_bits_per_byte: f64,
    pub val_loss: f64,
    pub next_line: TaskScore,
    /// PSM for the FIM model; left to right from the prefix for the other.
    pub infill: TaskScore,
    /// The FIM model's SPM prompt (None for the model without FIM).
    pub infill_spm: Option<TaskScore>,
}

/// `summary.json`.
#[derive(Debug, Clone, Serialize)]
pub struct CompletionSummary {
    pub models: Vec<ModelResult>,
    pub ngram_next_line: TaskScore,
    pub ngram_order: usize,
    /// The FIM model against the model without FIM, line by line.
    pub comparisons: Vec<PairedComparison>,
    pub train_tokens: usize,
    pub val_tokens: usize,
    pub train_crates: usize,
    pub val_crates: usize,
    pub params: usize,
    pub load_average: Option<String>,
    pub seconds: f64,
}

fn load(o: &CompletionExperimentOptions) -> Result<(ExperimentConfig, RunConfig, toml::Value)> {
    let value = crate::config::load_layered(o.config.as_deref(), DEFAULT_CONFIG, o.quick, &o.overrides)?;
    let mut rest = value.clone();
    let exp = crate::config::take_section(&mut rest, "experiment");
    let exp: ExperimentConfig = ferrolm_common::config::typed(&exp).context("in [experiment]")?;
    anyhow::ensure!(exp.val_fraction > 0.0 && exp.val_fraction < 0.5, "experiment.val_fraction must be in (0, 0.5)");
    anyhow::ensure!(exp.examples > 0 && exp.max_tokens > 0 && exp.lines_per_file > 0, "experiment.examples, experiment.lines_per_file and experiment.max_tokens must be positive");
    anyhow::ensure!(exp.ngram_order >= 2, "experiment.ngram_order must be at least 2");
    let cfg = RunConfig::from_value(&rest)?;
    anyhow::ensure!(cfg.is_plain_causal(), "the completion experiment trains causal models (model.kind = \"causal\", no [pairs])");
    anyhow::ensure!(cfg.train.fim_rate > 0.0, "train.fim_rate is the FIM run's rate: it must be above 0 (the other run uses 0)");
    Ok((exp, cfg, value))
}

/// A document's crate (every version of a crate on one side of the split), else its file.
fn crate_of(d: &Document) -> String {
    match d.meta.get("crate").and_then(|v| v.as_str()) {
        Some(c) => c.to_string(),
        None => d.id.trim_end_matches("#doc").to_string(),
    }
}

fn is_rust_code(d: &Document) -> bool {
    !d.id.ends_with("#doc") && (d.id.ends_with(".rs") || d.meta.get("kind").and_then(|v| v.as_str()) == Some("rust"))
}

/// Worth asking for: not blank, not brackets and punctuation alone, not too long.
fn askable(line: &str, max_chars: usize) -> bool {
    let t = line.trim();
    t.chars().any(|c| c.is_alphanumeric()) && line.chars().count() <= max_chars
}

/// Up to `lines_per_file` lines per held-out Rust file (the lowest seeded hashes of its
/// askable lines), then the files in hash order, each file's lines in hash order.
fn sample_examples(val_docs: &[Document], exp: &ExperimentConfig, seed: u64) -> Vec<Example> {
    let h = |s: &str| xxhash_rust::xxh3::xxh3_64_with_seed(s.as_bytes(), seed ^ 0x11ec);
    let mut picked: Vec<((u64, usize), Example)> = Vec::new();
    for d in val_docs.iter().filter(|d| is_rust_code(d)) {
        let lines: Vec<&str> = d.text.split('\n').collect();
        // a line with code before and after it
        let mut candidates: Vec<usize> = (1..lines.len().saturating_sub(1)).filter(|&i| askable(lines[i], exp.max_line_chars)).collect();
        candidates.sort_by_cached_key(|&i| h(&format!("{}:{i}", d.id)));
        let file_key = h(&d.id);
        for (rank, &i) in candidates.iter().take(exp.lines_per_file).enumerate() {
            let start: usize = lines[..i].iter().map(|l| l.len() + 1).sum();
            let end = start + lines[i].len();
            picked.push(((file_key, rank), Example { file: d.id.clone(), line: i + 1, prefix: d.text[..start].to_string(), truth: lines[i].to_string(), suffix: d.text[end..].to_string() }));
        }
    }
    picked.sort_by_key(|p| p.0);
    picked.into_iter().take(exp.examples).map(|p| p.1).collect()
}

/// Each example's file as a number: the clusters of the paired bootstrap.
fn file_clusters(examples: &[Example]) -> Vec<usize> {
    let mut ids = std::collections::HashMap::new();
    examples
        .iter()
        .map(|e| {
            let next = ids.len();
            *ids.entry(e.file.as_str()).or_insert(next)
        })
        .collect()
}

fn median(v: &mut [f64]) -> f64 {
    crate::timing::median(v)
}

/// Completions of every example with one model and prompt layout.
fn score_model(model: &AnyModel, ctx: usize, tok: &Tokenizer, examples: &[Example], layout: PromptLayout, max_tokens: usize) -> Result<(TaskScore, Vec<String>)> {
    let (mut per_line, mut ttft, mut total, mut outs) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for e in examples {
        // left to right, the model sees only the code before the line
        let suffix = if layout == PromptLayout::LeftToRight { String::new() } else { e.suffix.clone() };
        let mut req = CompletionRequest::new(e.prefix.clone(), suffix);
        req.layout = layout;
        req.max_tokens = max_tokens;
        let c = complete(model, ctx, tok, &req)?;
        per_line.push((exact_match(&c.text, &e.truth), edit_similarity(c.text.trim(), e.truth.trim())));
        ttft.push(c.time_to_first_token_ms);
        total.push(c.total_ms);
        outs.push(c.text);
    }
    Ok((task_score(per_line, median(&mut ttft), median(&mut total)), outs))
}

/// Means over the lines, with the lines' own scores kept.
fn task_score(per_line: Vec<(bool, f64)>, time_to_first_token_ms: f64, total_ms: f64) -> TaskScore {
    let n = per_line.len().max(1) as f64;
    TaskScore {
        exact_match: per_line.iter().filter(|p| p.0).count() as f64 / n,
        edit_similarity: per_line.iter().map(|p| p.1).sum::<f64>() / n,
        examples: per_line.len(),
        time_to_first_token_ms,
        total_ms,
        per_line,
    }
}

/// The n-gram model's next line: greedy (the most probable next token under the model at
/// every step) from the code before the line, with the same end-of-line rules.
fn ngram_next_line(model: &ferrolm_ngram::Model, tok: &Tokenizer, examples: &[Example], max_tokens: usize) -> (TaskScore, Vec<String>) {
    let eot = tok.eot_id();
    let (bos, eos) = (model.id(ferrolm_ngram::BOS), model.id(ferrolm_ngram::EOS));
    let keep = model.order() - 1;
    // candidates: ordinary tokens the model has seen, plus end of text
    let cands: Vec<(u32, u32)> = (0..tok.vocab_size() as u32)
        .filter(|&t| !tok.is_special(t))
        .filter_map(|t| {
            let m = model.id(&t.to_string());
            (m != model.id(ferrolm_ngram::UNK)).then_some((t, m))
        })
        .chain([(eot, eos)])
        .collect();
    let (mut per_line, mut total, mut outs) = (Vec::new(), Vec::new(), Vec::new());
    for e in examples {
        let t0 = Instant::now();
        let ids = tok.encode(&e.prefix);
        let mut ctx: Vec<u32> = vec![bos];
        ctx.extend(ids.iter().map(|&t| model.id(&t.to_string())));
        let mut stops = EditorStops::new(&e.prefix, "", Scope::Line);
        let mut stream = tok.continuation_stream();
        for _ in 0..max_tokens {
            let c = &ctx[ctx.len().saturating_sub(keep)..];
            let (best, m, _) = cands.iter().map(|&(t, m)| (t, m, model.log10_prob(c, m))).fold((eot, eos, f64::NEG_INFINITY), |a, b| if b.2 > a.2 { b } else { a });
            if best == eot || stops.push(&stream.push(best)).is_some() {
                break;
            }
            ctx.push(m);
        }
        let text = stops.finish();
        per_line.push((exact_match(&text, &e.truth), edit_similarity(text.trim(), e.truth.trim())));
        total.push(t0.elapsed().as_secs_f64() * 1e3);
        outs.push(text);
    }
    (task_score(per_line, f64::NAN, median(&mut total)), outs)
}

/// Run the experiment into its folder (report.md, completion.svg, summary.json,
/// experiment.toml, samples.md, tokenizer.json, data/, the run folders fim/ and no-fim/).
pub fn run_completion_experiment(o: &CompletionExperimentOptions, device: &Device) -> Result<(CompletionSummary, PathBuf)> {
    let t_all = Instant::now();
    let (exp, base, full_value) = load(o)?;
    let out = o.out.clone().unwrap_or_else(|| PathBuf::from("runs").join(if o.quick { "experiment-completion-quick" } else { "experiment-completion" }));
    std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    ferrolm_common::write_atomic(out.join("experiment.toml"), toml::to_string_pretty(&full_value)?)?;
    let seed = base.train.seed;

    eprintln!("== corpus");
    let corpus = CorpusOptions { registry: o.data.is_empty(), data: o.data.clone(), max_bytes: Some(exp.max_corpus_bytes), clean: false, seed };
    let (docs, corpus_lines) = gather_corpus(&corpus, &out)?;
    let (train_docs, val_docs) = ferrolm_corpus::split_by_key(docs, crate_of, exp.val_fraction, seed)?;
    let crates = |d: &[Document]| d.iter().map(crate_of).collect::<std::collections::HashSet<_>>().len();
    let (train_crates, val_crates) = (crates(&train_docs), crates(&val_docs));
    let examples = sample_examples(&val_docs, &exp, seed);
    anyhow::ensure!(!examples.is_empty(), "no held-out Rust file with a line to complete: give more data or a larger experiment.val_fraction");
    eprintln!("split by crate: {train_crates} training crates ({} documents), {val_crates} held out ({} documents); {} held-out lines to complete", train_docs.len(), val_docs.len(), examples.len());

    eprintln!("== tokenizer and shards");
    let tok = train_tokenizer("bpe", exp.vocab_size, exp.tokenizer_train_bytes, &train_docs)?;
    tok.save(&out.join("tokenizer.json"))?;
    let vocab = padded_vocab(&tok);
    let bytes = token_bytes(&tok, vocab);
    let train = write_shards(&tok, &train_docs, &out.join("data/train"))?;
    let val = write_shards(&tok, &val_docs, &out.join("data/val"))?;
    drop(train_docs);
    eprintln!("{} training tokens, {} held-out tokens", train.len(), val.len());

    let mut models = Vec::new();
    let mut samples = String::from("# Completion samples\n\nHeld-out lines (crates the models never saw); greedy decoding.\n\n");
    let mut curves = Vec::new();
    let mut params = 0;
    for (name, rate) in [("fim", base.train.fim_rate), ("no-fim", 0.0)] {
        eprintln!("== train {name} (fim_rate {rate})");
        let mut cfg = base.clone();
        cfg.model.set_vocab_size(vocab);
        cfg.train.fim_rate = rate;
        cfg.data = ferrolm_train::config::DataConfig {
            train: out.join("data/train").display().to_string(),
            val: out.join("data/val").display().to_string(),
            tokenizer: out.join("tokenizer.json").display().to_string(),
        };
        let run_dir = out.join(name);
        std::fs::create_dir_all(&run_dir)?;
        tok.save(&run_dir.join("tokenizer.json"))?;
        let t0 = Instant::now();
        let mut trainer = start_run_with_tokenizer(&cfg, &run_dir, ArchData::Stream { train: &train, val: &val }, bytes.clone(), None, Some(&tok), device, false)?;
        trainer.quiet = true;
        trainer.title = format!("completion experiment: {name}");
        let outcome = trainer.run()?;
        drop(trainer);
        let train_secs = t0.elapsed().as_secs_f64();
        let ev = outcome.val.clone().context("training ended without an evaluation")?;
        let loaded = ferrolm_model::load_model(&run_dir, device)?;
        params = loaded.spec.transformer().map(|m| m.num_params()).unwrap_or(0);
        let ctx = loaded.spec.max_seq_len();
        eprintln!("{name}: held-out {:.4} bits per byte after {} steps ({train_secs:.0} s); completing {} lines", ev.bits_per_byte, outcome.steps, examples.len());
        let (next_line, nl_out) = score_model(&loaded.model, ctx, &tok, &examples, PromptLayout::LeftToRight, exp.max_tokens)?;
        let (infill, infill_spm, fill_out) = if rate > 0.0 {
            let (psm, psm_out) = score_model(&loaded.model, ctx, &tok, &examples, PromptLayout::Psm, exp.max_tokens)?;
            let (spm, _) = score_model(&loaded.model, ctx, &tok, &examples, PromptLayout::Spm, exp.max_tokens)?;
            (psm, Some(spm), psm_out)
        } else {
            // without FIM the model can only continue the code before the gap
            (next_line.clone(), None, nl_out.clone())
        };
        let _ = writeln!(samples, "## {name}\n");
        for (i, e) in examples.iter().enumerate().take(8) {
            let _ = writeln!(samples, "- `{}` line {}: truth `{}` · next line `{}` · infill `{}`", e.file, e.line, e.truth.trim(), nl_out[i].trim(), fill_out[i].trim());
        }
        samples.push('\n');
        curves.push((name.to_string(), ferrolm_train::metrics::read(&run_dir.join("metrics.jsonl"))?.into_iter().filter_map(|r| r.val_bpb.map(|b| (r.step as f64, b))).collect::<Vec<_>>()));
        models.push(ModelResult { name: name.into(), fim_rate: rate, steps: outcome.steps, train_secs, val_bits_per_byte: ev.bits_per_byte, val_loss: ev.loss, next_line, infill, infill_spm });
    }

    eprintln!("== {}-gram baseline", exp.ngram_order);
    let ids = train.get(0, train.len());
    let ngram_docs: Vec<&[u32]> = ids.split(|&t| t == tok.eot_id()).filter(|d| !d.is_empty()).collect();
    let ngram = ferrolm_ngram::train_ids(ngram_docs.iter().copied(), &ferrolm_ngram::TrainOptions { order: exp.ngram_order, discount_fallback: true })?;
    drop(ngram_docs);
    let (ngram_next_line, ng_out) = ngram_next_line(&ngram, &tok, &examples, exp.max_tokens);
    let _ = writeln!(samples, "## {}-gram\n", exp.ngram_order);
    for (i, e) in examples.iter().enumerate().take(8) {
        let _ = writeln!(samples, "- `{}` line {}: truth `{}` · next line `{}`", e.file, e.line, e.truth.trim(), ng_out[i].trim());
    }
    ferrolm_common::write_atomic(out.join("samples.md"), &samples)?;

    let (f, nf) = (&models[0], &models[1]);
    let files = file_clusters(&examples);
    let mut comparisons = compare("infilling", ("FIM model, PSM prompt", &f.infill), ("no-FIM model, left to right", &nf.infill), &files);
    if let Some(spm) = &f.infill_spm {
        comparisons.extend(compare("infilling", ("FIM model, SPM prompt", spm), ("no-FIM model, left to right", &nf.infill), &files));
    }
    comparisons.extend(compare("next line", ("FIM model", &f.next_line), ("no-FIM model", &nf.next_line), &files));
    comparisons.extend(compare("next line", (&format!("{}-gram", exp.ngram_order), &ngram_next_line), ("no-FIM model", &nf.next_line), &files));
    let load_average = std::fs::read_to_string("/proc/loadavg").ok().map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "));
    let summary = CompletionSummary {
        models,
        ngram_next_line,
        ngram_order: exp.ngram_order,
        comparisons,
        train_tokens: train.len(),
        val_tokens: val.len(),
        train_crates,
        val_crates,
        params,
        load_average,
        seconds: t_all.elapsed().as_secs_f64(),
    };
    let groups = ["next line EM", "next line edit sim", "infill EM", "infill edit sim"].map(String::from).to_vec();
    let mut series: Vec<(String, Vec<f64>)> = summary
        .models
        .iter()
        .map(|m| (m.name.clone(), vec![m.next_line.exact_match, m.next_line.edit_similarity / 100.0, m.infill.exact_match, m.infill.edit_similarity / 100.0]))
        .collect();
    let ng = &summary.ngram_next_line;
    series.push((format!("{}-gram", exp.ngram_order), vec![ng.exact_match, ng.edit_similarity / 100.0, ng.exact_match, ng.edit_similarity / 100.0]));
    ferrolm_train::plot::curves_and_grouped_bars(&curves, "held-out bits per byte (left to right)", &groups, &series, "share (edit similarity / 100)", "code completion on held-out crates", &out.join("completion.svg"))?;
    let report = report(&summary, &exp, &corpus_lines, examples.len());
    ferrolm_common::write_atomic(out.join("report.md"), &report)?;
    ferrolm_common::write_atomic(out.join("summary.json"), serde_json::to_vec_pretty(&serde_json::to_value(&summary)?)?)?;
    Ok((summary, out.join("report.md")))
}

fn report(s: &CompletionSummary, exp: &ExperimentConfig, corpus_lines: &[String], n: usize) -> String {
    let mut r = String::from("# Code completion: fill-in-the-middle against left to right\n\n");
    let _ = writeln!(r, "## Data\n");
    for l in corpus_lines {
        let _ = writeln!(r, "- {l}");
    }
    let _ = writeln!(
        r,
        "- split by crate: {} training crates, {} held-out crates the models never saw; {} training tokens, {} held-out tokens\n- {n} held-out lines, at most {} per held-out Rust file (seeded), not blank and not brackets alone, at most {} characters\n",
        s.train_crates, s.val_crates, s.train_tokens, s.val_tokens, exp.lines_per_file, exp.max_line_chars
    );
    let fim = &s.models[0];
    let _ = writeln!(
        r,
        "## Models\n\nThe same Transformer ({} parameters), seed, data order and {} steps, trained twice: with fill-in-the-middle (`train.fim_rate = {}`, PSM and SPM) and without. Greedy completions of at most {} tokens, one line (`Scope::Line` stop rules).\n",
        s.params, fim.steps, fim.fim_rate, exp.max_tokens
    );
    let _ = writeln!(r, "## Results\n\nExact match (EM) is CodeXGLUE's (equal after whitespace normalisation); edit similarity is fuzzywuzzy's `fuzz.ratio` (0–100), both averaged over the lines. Latency: medians per completion on this machine (time to first token includes encoding and the prompt's forward pass).\n");
    let _ = writeln!(r, "| system | next line EM | next line edit sim | infill EM | infill edit sim | held-out bits/byte | first token ms | line ms |\n|---|---|---|---|---|---|---|---|");
    for m in &s.models {
        let how = if m.fim_rate > 0.0 { "FIM (PSM prompt)" } else { "left to right from the prefix" };
        let _ = writeln!(
            r,
            "| {} (fim_rate {}; infill: {how}) | {:.3} | {:.1} | {:.3} | {:.1} | {:.4} | {:.1} | {:.1} |",
            m.name, m.fim_rate, m.next_line.exact_match, m.next_line.edit_similarity, m.infill.exact_match, m.infill.edit_similarity, m.val_bits_per_byte, m.infill.time_to_first_token_ms, m.infill.total_ms
        );
        if let Some(spm) = &m.infill_spm {
            let _ = writeln!(r, "| {} (SPM prompt) | | | {:.3} | {:.1} | | {:.1} | {:.1} |", m.name, spm.exact_match, spm.edit_similarity, spm.time_to_first_token_ms, spm.total_ms);
        }
    }
    let ng = &s.ngram_next_line;
    let _ = writeln!(r, "| {}-gram (Kneser-Ney, greedy; infill: left to right) | {:.3} | {:.1} | {:.3} | {:.1} | | – | {:.1} |\n", s.ngram_order, ng.exact_match, ng.edit_similarity, ng.exact_match, ng.edit_similarity, ng.total_ms);
    let _ = writeln!(r, "![held-out bits per byte and completion scores](completion.svg)\n");
    let (f, nf) = (&s.models[0], &s.models[1]);
    let _ = writeln!(r, "## Paired comparisons\n\nThe same lines scored by two systems: the mean difference (system − baseline; exact match as a share, edit similarity in points), its paired bootstrap 95 % interval (held-out files resampled with replacement, each with all its lines, 10,000 times: lines of one file are not independent), and the lines where the system scored higher / lower. An interval that includes 0 is within noise.\n");
    let _ = writeln!(r, "| task | system | baseline | metric | difference | 95 % interval | lines better / worse | files | verdict |\n|---|---|---|---|---|---|---|---|---|");
    for c in &s.comparisons {
        let _ = writeln!(r, "| {} | {} | {} | {} | {:+.3} | [{:+.3}, {:+.3}] | {} / {} | {} | {} |", c.task, c.system, c.baseline, c.metric, c.difference, c.ci_low, c.ci_high, c.better, c.worse, c.files, c.verdict());
    }
    let _ = writeln!(r, "\n## What the numbers show\n");
    // the verdict on a task: above when one metric's interval is above 0 and the other's not below
    let verdict = |task: &str, system: &str| -> String {
        let v: Vec<&str> = s.comparisons.iter().filter(|c| c.task == task && c.system == system).map(PairedComparison::verdict).collect();
        if v.contains(&"below") {
            "below".into()
        } else if v.contains(&"above") {
            "above".into()
        } else {
            "within noise of".into()
        }
    };
    let infills = std::iter::once(("FIM model, PSM prompt", &f.infill)).chain(f.infill_spm.as_ref().map(|spm| ("FIM model, SPM prompt", spm)));
    for (system, score) in infills {
        let _ = writeln!(
            r,
            "- Infilling, {system}: the FIM model, which sees the code after the gap, is {} the model without FIM, which cannot ({:.3} vs {:.3} EM, {:.1} vs {:.1} edit similarity; paired intervals above).",
            verdict("infilling", system), score.exact_match, nf.infill.exact_match, score.edit_similarity, nf.infill.edit_similarity
        );
    }
    let _ = writeln!(
        r,
        "- Next line, left to right: the FIM model is {} the model without FIM ({:.3} vs {:.3} EM, {:.1} vs {:.1} edit similarity).",
        verdict("next line", "FIM model"), f.next_line.exact_match, nf.next_line.exact_match, f.next_line.edit_similarity, nf.next_line.edit_similarity
    );
    let _ = writeln!(
        r,
        "- FIM for free: held-out left-to-right bits per byte {:.4} with FIM, {:.4} without ({:+.2}%). The FIM run spends {} of its documents on rearranged examples, so at equal steps it sees less plain left-to-right text; the paper's claim is that this costs (almost) nothing.",
        f.val_bits_per_byte, nf.val_bits_per_byte, 100.0 * (f.val_bits_per_byte / nf.val_bits_per_byte - 1.0), f.fim_rate
    );
    let _ = writeln!(
        r,
        "- These are small models trained for minutes on two shared CPU cores: exact match stays low for every system; the comparisons are between systems trained identically, not against published figures.\n"
    );
    let _ = writeln!(r, "Total wall time {:.0} s; load average at the end {}. Samples: [samples.md](samples.md).", s.seconds, s.load_average.as_deref().unwrap_or("unknown"));
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_match_codexglue_and_fuzzywuzzy() {
        assert!(exact_match("let x =  1;", " let x = 1; "));
        assert!(!exact_match("let x = 1;", "let x = 2;"));
        // fuzzywuzzy's documented examples
        assert_eq!(edit_similarity("this is a test", "this is a test!"), 97.0);
        assert_eq!(edit_similarity("fuzzy wuzzy was a bear", "wuzzy fuzzy was a bear"), 91.0);
        assert_eq!(edit_similarity("", ""), 100.0);
        assert_eq!(edit_similarity("abc", ""), 0.0);
        assert_eq!(edit_similarity("é", "é"), 100.0);
    }

    #[test]
    fn paired_bootstrap_finds_a_real_difference_and_not_a_null_one() {
        // identical systems: no difference, a degenerate interval at 0
        let a: Vec<f64> = (0..200).map(|i| (i % 7) as f64).collect();
        assert_eq!(paired_bootstrap(&a, &a, 2000, 1), (0.0, 0.0, 0.0));
        // the system is one point better on every line but noisy: the interval is above 0
        let noise = |i: usize| ((i * 2654435761) % 1000) as f64 / 100.0 - 5.0;
        let b: Vec<f64> = (0..200).map(|i| 50.0 + noise(i)).collect();
        let better: Vec<f64> = (0..200).map(|i| 51.0 + noise(i + 17)).collect();
        let (d, lo, hi) = paired_bootstrap(&better, &b, 2000, 1);
        assert!(lo <= d && d <= hi);
        let mean = better.iter().zip(&b).map(|(x, y)| x - y).sum::<f64>() / 200.0;
        assert!((d - mean).abs() < 1e-12);
        // 200 lines of noise with sd ≈ 4 around a shift of 1: the interval is about ±0.55 wide
        assert!(hi - lo > 0.2 && hi - lo < 1.5, "interval [{lo}, {hi}]");
        // a shift the noise swamps: the interval straddles 0
        let tiny: Vec<f64> = (0..200).map(|i| 50.05 + noise(i + 17)).collect();
        let (_, lo, hi) = paired_bootstrap(&tiny, &b, 2000, 1);
        assert!(lo < 0.0 && hi > 0.0, "interval [{lo}, {hi}]");
        // same seed, same interval
        assert_eq!(paired_bootstrap(&tiny, &b, 2000, 1), paired_bootstrap(&tiny, &b, 2000, 1));
    }

    #[test]
    fn cluster_bootstrap_widens_the_interval_when_lines_of_a_file_move_together() {
        // 20 files of 10 lines; the system is 0.5 better on every line, plus a file effect of
        // ±3 (the model knows some files, not others) that is the same for a file's lines
        let files: Vec<usize> = (0..200).map(|i| i / 10).collect();
        let b = vec![50.0; 200];
        let a: Vec<f64> = files.iter().map(|&f| 50.5 + if f % 2 == 0 { 3.0 } else { -3.0 }).collect();
        let (d, lo, hi) = paired_bootstrap(&a, &b, 4000, 7);
        let (dc, lo_c, hi_c) = paired_cluster_bootstrap(&a, &b, &files, 4000, 7);
        assert!((d - 0.5).abs() < 1e-12 && (dc - 0.5).abs() < 1e-12);
        // as 200 independent lines: ±3 / √200 ≈ 0.21, an interval above 0
        assert!(lo > 0.0, "lines alone: [{lo}, {hi}]");
        // as 20 files: ±3 / √20 ≈ 0.67, an interval that holds 0 and is about √10 times wider
        assert!(lo_c < 0.0 && hi_c > 1.0, "files: [{lo_c}, {hi_c}]");
        assert!((hi_c - lo_c) > 2.5 * (hi - lo));
        // one line per file: the cluster bootstrap is the line bootstrap, draw for draw
        let own: Vec<usize> = (0..200).map(|i| 1000 - i).collect();
        assert_eq!(paired_cluster_bootstrap(&a, &b, &own, 500, 3), paired_bootstrap(&a, &b, 500, 3));
        // files of different sizes: the point estimate is still the mean over lines
        let uneven: Vec<usize> = (0..200).map(|i| if i < 150 { 0 } else { 1 + i % 5 }).collect();
        let (du, lo_u, hi_u) = paired_cluster_bootstrap(&a, &b, &uneven, 500, 3);
        assert!((du - 0.5).abs() < 1e-12 && lo_u <= du && du <= hi_u);
    }

    #[test]
    fn comparisons_count_lines_and_give_verdicts() {
        let score = |v: &[(bool, f64)]| task_score(v.to_vec(), 0.0, 0.0);
        let sys = score(&[(true, 100.0), (false, 40.0), (false, 30.0), (true, 100.0)]);
        let base = score(&[(false, 20.0), (false, 40.0), (false, 10.0), (true, 100.0)]);
        assert_eq!(sys.exact_match, 0.5);
        assert_eq!(sys.edit_similarity, 67.5);
        let c = compare("infilling", ("s", &sys), ("b", &base), &[0, 1, 2, 3]);
        assert_eq!(c.len(), 2);
        let (em, es) = (&c[0], &c[1]);
        assert_eq!((em.metric.as_str(), em.better, em.worse), ("exact match", 1, 0));
        assert!((em.difference - 0.25).abs() < 1e-12);
        assert_eq!((es.metric.as_str(), es.better, es.worse), ("edit similarity", 2, 0));
        assert!((es.difference - 25.0).abs() < 1e-12);
        // every line is at least as good: every resampled mean is ≥ 0
        assert!(es.ci_low >= 0.0 && es.verdict() != "below");
        assert_eq!(es.files, 4);
        let flipped = compare("infilling", ("b", &base), ("s", &sys), &[0, 1, 2, 3]);
        assert!(flipped[1].ci_high <= 0.0);
    }

    #[test]
    fn several_lines_per_file_are_distinct_and_in_the_file() {
        let text = (0..40).map(|i| format!("    let v{i} = {i};")).collect::<Vec<_>>().join("\n");
        let docs = vec![Document::new("a/src/lib.rs", &text, "code"), Document::new("b/src/lib.rs", &text, "code")];
        let one = sample_examples(&docs, &ExperimentConfig { examples: 100, ..Default::default() }, 3);
        assert_eq!(one.len(), 2);
        let four = sample_examples(&docs, &ExperimentConfig { examples: 100, lines_per_file: 4, ..Default::default() }, 3);
        assert_eq!(four.len(), 8);
        for f in ["a/src/lib.rs", "b/src/lib.rs"] {
            let mut lines: Vec<usize> = four.iter().filter(|e| e.file == f).map(|e| e.line).collect();
            assert_eq!(lines.len(), 4);
            lines.sort();
            lines.dedup();
            assert_eq!(lines.len(), 4, "four different lines of {f}");
            // the first line of each file is the one a single-line sample picks
            let single = one.iter().find(|e| e.file == f).unwrap();
            assert_eq!(four.iter().find(|e| e.file == f).unwrap().line, single.line);
        }
        for e in &four {
            assert_eq!(format!("{}{}{}", e.prefix, e.truth, e.suffix), text);
        }
        // the cap takes whole files first
        let capped = sample_examples(&docs, &ExperimentConfig { examples: 5, lines_per_file: 4, ..Default::default() }, 3);
        assert_eq!(capped.len(), 5);
        assert!(capped[..4].iter().all(|e| e.file == capped[0].file));
    }

    #[test]
    fn examples_are_held_out_lines_with_code_around_them() {
        let doc = |id: &str, text: &str| Document::new(id, text, "code");
        let docs = vec![
            doc("a/src/lib.rs", "fn a() {\n    let x = 1;\n    x\n}\n"),
            doc("b/src/lib.rs", "}\n\n}\n"),
            doc("c/README.md", "# Title\nsome words here\nmore\n"),
        ];
        let exp = ExperimentConfig { examples: 10, ..Default::default() };
        let ex = sample_examples(&docs, &exp, 1);
        assert_eq!(ex.len(), 1, "only the Rust file with an askable line");
        let e = &ex[0];
        assert_eq!(format!("{}{}{}", e.prefix, e.truth, e.suffix), docs[0].text);
        assert!(e.prefix.ends_with('\n') && e.suffix.starts_with('\n'));
        assert!(askable(&e.truth, 120));
        assert_eq!(e.prefix.matches('\n').count() + 1, e.line);
    }
}
