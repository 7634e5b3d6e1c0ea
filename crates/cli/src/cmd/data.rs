//! `ferrolm data`: the corpus pipeline. Parses arguments, loads the TOML config with `--set`
//! overrides, and calls ferrolm-corpus.

use anyhow::{bail, Context, Result};
use clap::{Args as ClapArgs, Subcommand};
use ferrolm_corpus::steps::{ClassifierConfig, MinHashConfig, QualityModel};
use ferrolm_corpus::{read_paths, PipelineConfig, ReadOptions, RunOptions, SourceConfig, StepConfig, StepEntry};
use std::path::PathBuf;

#[derive(ClapArgs)]
pub struct Args {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run a pipeline: `--config corpus.toml`, or the default pipeline on `--input PATH...`.
    ///
    /// OUT gets kept/ (JSONL) and/or kept-parquet/ (`[output] kept_format = "jsonl" | "parquet" | "both"`),
    /// excluded/ (removed documents with step and reason), stats.json, report.md, and shards/
    /// with --tokenizer.
    ///
    /// Sources in a config (`[[source]]`, see configs/corpus-example.toml):
    ///   paths = ["data/"], include = ["**/*.md"], exclude = ["vendor", "**/target"]
    ///       folders read recursively; globs relative to each folder, `**` crosses directories
    ///   cargo_lock = "Cargo.lock"            registry sources of the locked crates
    ///   type = "hub", repo = "owner/name"    Hugging Face Hub dataset (needs network):
    ///       revision = "main", files = ["data/train-*.parquet"] or config = "en", split = "train"
    ///       (the Hub's Parquet conversion), text_field = "text", cache_dir = "...";
    ///       honours HF_ENDPOINT, HF_TOKEN, HF_HOME and HF_HUB_OFFLINE=1 (cache only)
    /// Parquet output: `[output.parquet] row_group_docs = 10000, row_group_bytes = 67108864,
    /// compression = "zstd" | "snappy" | "gzip" | "none"`.
    #[command(verbatim_doc_comment)]
    Build(BuildArgs),
    /// Combine the statistics of every completed shard in DIR into stats.json and report.md.
    Report { dir: PathBuf },
    /// Quality classifier (fastText-style hashed n-grams, logistic regression).
    #[command(subcommand)]
    Quality(QualityCmd),
    /// Distributed near-duplicate removal in three stages: signatures (per shard), clusters (once), filter (per shard).
    #[command(subcommand)]
    Minhash(MinhashCmd),
    /// Print the measured quality figures on generated sets with known answers.
    #[command(subcommand)]
    Eval(EvalCmd),
    /// Write the quickstart corpus (Cargo-registry sources of a Cargo.lock's crates) as JSONL.
    Cargo {
        #[arg(long, default_value = "Cargo.lock")]
        lockfile: PathBuf,
        #[arg(long)]
        cargo_home: Option<PathBuf>,
        #[arg(long)]
        out: PathBuf,
    },
}

#[derive(ClapArgs)]
struct BuildArgs {
    #[arg(long)]
    config: Option<PathBuf>,
    /// Files or folders; with --config they replace its sources.
    #[arg(long, num_args = 1..)]
    input: Vec<PathBuf>,
    #[arg(long)]
    out: PathBuf,
    /// Built-in pipeline when no --config: "default" (web text and code) or "quickstart" (Cargo registry code + docs).
    #[arg(long, default_value = "default")]
    preset: String,
    /// JSONL field or Parquet column holding the text (for --input).
    #[arg(long, default_value = "text")]
    text_field: String,
    /// With --input folders: read only files matching these globs, relative to each folder
    /// (`**/*.md` at any depth, `*.md` at the root only). Repeatable.
    #[arg(long)]
    include: Vec<String>,
    /// With --input folders: leave out files or whole directories matching these globs. Repeatable.
    #[arg(long)]
    exclude: Vec<String>,
    /// Config overrides, e.g. --set batch_docs=1024
    #[arg(long = "set")]
    set: Vec<String>,
    /// Run shard i of N (0-based), e.g. --shard 3/16.
    #[arg(long)]
    shard: Option<String>,
    /// Redo a shard even if it is marked complete.
    #[arg(long)]
    force: bool,
    /// Also write tokenized shards with this tokenizer.json.
    #[arg(long)]
    tokenizer: Option<PathBuf>,
}

#[derive(Subcommand)]
enum QualityCmd {
    /// Train on a high-quality and a low-quality set; writes MODEL and prints held-out accuracy.
    Train {
        #[arg(long, num_args = 1.., required = true)]
        high: Vec<PathBuf>,
        #[arg(long, num_args = 1.., required = true)]
        low: Vec<PathBuf>,
        #[arg(long)]
        out: PathBuf,
        #[arg(long, default_value = "text")]
        text_field: String,
        #[arg(long)]
        config: Option<PathBuf>,
        /// e.g. --set epochs=10 --set bits=22
        #[arg(long = "set")]
        set: Vec<String>,
    },
    /// Score documents; prints one JSON line per document (id, score) and a summary to stderr.
    Score {
        #[arg(long)]
        model: PathBuf,
        #[arg(long, num_args = 1.., required = true)]
        input: Vec<PathBuf>,
        #[arg(long, default_value = "text")]
        text_field: String,
    },
}

#[derive(Subcommand)]
enum MinhashCmd {
    /// Stage 1 (per shard): signatures of this shard's input files into SIGS/sigs-i.bin.
    Signatures {
        #[arg(long, num_args = 1.., required = true)]
        input: Vec<PathBuf>,
        #[arg(long)]
        sigs: PathBuf,
        #[arg(long, default_value = "0/1")]
        shard: String,
        #[arg(long = "set")]
        set: Vec<String>,
    },
    /// Stage 2 (once): cluster all shards' signatures; writes SIGS/remove.txt.
    Clusters {
        #[arg(long)]
        sigs: PathBuf,
        #[arg(long = "set")]
        set: Vec<String>,
    },
    /// Stage 3 (per shard): drop the listed near-duplicates, writing kept/ and excluded/ to OUT.
    Filter {
        #[arg(long, num_args = 1.., required = true)]
        input: Vec<PathBuf>,
        #[arg(long)]
        sigs: PathBuf,
        #[arg(long)]
        out: PathBuf,
        #[arg(long, default_value = "0/1")]
        shard: String,
    },
}

#[derive(Subcommand)]
enum EvalCmd {
    /// Near-duplicate precision/recall against exact Jaccard on generated edited documents.
    Neardup {
        #[arg(long, default_value_t = 100)]
        families: usize,
        #[arg(long, default_value_t = 400)]
        words: usize,
        #[arg(long, default_value_t = 1)]
        seed: u64,
        #[arg(long = "set")]
        set: Vec<String>,
    },
    /// Privacy recall per kind on planted values, and replacements in clean control text.
    Privacy {
        #[arg(long, default_value_t = 1000)]
        per_kind: usize,
        #[arg(long, default_value_t = 1)]
        seed: u64,
    },
}

fn minhash_cfg(set: &[String]) -> Result<MinHashConfig> {
    let v = ferrolm_common::load_config(None, set)?;
    Ok(ferrolm_common::config::typed(&v)?)
}

pub fn run(args: Args) -> Result<()> {
    match args.cmd {
        Cmd::Build(b) => build(b),
        Cmd::Report { dir } => {
            let s = ferrolm_corpus::merge_report(&dir)?;
            eprintln!("{}: input {} kept {} removed {} rejected {}", dir.display(), s.input, s.kept, s.removed, s.rejected);
            Ok(())
        }
        Cmd::Quality(q) => quality(q),
        Cmd::Minhash(m) => minhash(m),
        Cmd::Eval(e) => eval(e),
        Cmd::Cargo { lockfile, cargo_home, out } => {
            let home = cargo_home.or_else(ferrolm_corpus::default_cargo_home).context("no CARGO_HOME or HOME")?;
            let (docs, stats) = ferrolm_corpus::cargo_registry_documents(&lockfile, &home)?;
            let mut f = ferrolm_common::AtomicFile::create(&out)?;
            for d in &docs {
                use std::io::Write;
                serde_json::to_writer(&mut f, d)?;
                f.write_all(b"\n")?;
            }
            f.commit()?;
            let bytes: usize = docs.iter().map(|d| d.text.len()).sum();
            eprintln!("{} documents, {:.1} MB, {} rejected, {} crates missing from the registry -> {}", docs.len(), bytes as f64 / 1e6, stats.rejected, stats.missing_crates.len(), out.display());
            Ok(())
        }
    }
}

fn build(b: BuildArgs) -> Result<()> {
    let mut cfg = match &b.config {
        Some(path) => {
            let v = ferrolm_common::load_config(Some(path), &b.set)?;
            PipelineConfig::from_toml(&v).with_context(|| format!("config {}", path.display()))?
        }
        None => {
            let base = match b.preset.as_str() {
                "default" => PipelineConfig::default_pipeline(),
                "quickstart" => PipelineConfig::quickstart_default(),
                other => bail!("--preset {other:?}: expected default or quickstart"),
            };
            let mut v = toml::Value::Table(toml::from_str(&base.to_toml())?);
            ferrolm_common::apply_overrides(&mut v, &b.set)?;
            PipelineConfig::from_toml(&v)?
        }
    };
    if b.input.is_empty() && !(b.include.is_empty() && b.exclude.is_empty()) {
        bail!("--include/--exclude apply to --input folders; in a config, put include = [...] / exclude = [...] in the [[source]]");
    }
    if !b.input.is_empty() {
        cfg.sources = vec![SourceConfig {
            name: "auto".into(),
            paths: b.input.clone(),
            text_field: b.text_field.clone(),
            include: b.include.clone(),
            exclude: b.exclude.clone(),
            ..Default::default()
        }];
    }
    let mut opts = RunOptions { shard: b.shard.as_deref().map(ferrolm_corpus::parse_shard).transpose()?, force: b.force };
    // The pipeline's completion marker is written before the token shards' index: a run
    // killed between the two has a marker and no index. Skipping the pipeline then would
    // rewrite the shards empty, so it runs again (same outputs); with both, nothing is redone.
    let shard_dir = if opts.shard.is_some() { b.out.join("shards").join(opts.tag()) } else { b.out.join("shards") };
    let marker = ferrolm_corpus::pipeline::done_marker(&b.out, &opts);
    let finished = marker.exists() && !opts.force && shard_dir.join(ferrolm_tokenizer::shards::INDEX_FILE).exists();
    let tokenize = b.tokenizer.as_ref().filter(|_| !finished);
    if tokenize.is_some() && marker.exists() {
        opts.force = true;
    }
    // With --tokenizer, every kept document is encoded as it leaves the pipeline and
    // appended to token shards (OUT/shards, or OUT/shards/<shard tag> for --shard runs);
    // the shard index is written only after the pipeline finished.
    let s = match tokenize {
        Some(t) => {
            let tok = ferrolm_tokenizer::Tokenizer::from_file(t)?;
            let dir = if opts.shard.is_some() { b.out.join("shards").join(opts.tag()) } else { b.out.join("shards") };
            let mut writer = ferrolm_tokenizer::ShardWriter::for_tokenizer(&dir, &tok)?;
            let mut failure: Option<anyhow::Error> = None;
            let mut sink = |d: &ferrolm_corpus::Document| -> std::io::Result<()> {
                writer.write_document(&tok.encode(&d.text), d.text.len() as u64).map_err(|e| {
                    let msg = format!("writing token shards in {}: {e:#}", dir.display());
                    failure = Some(anyhow::anyhow!(msg.clone()));
                    std::io::Error::other(msg)
                })
            };
            let stats = ferrolm_corpus::run_configured(&cfg, &b.out, &opts, Some(&mut sink));
            if let Some(e) = failure {
                return Err(e);
            }
            let stats = stats?;
            let index = writer.finish()?;
            eprintln!("token shards: {} documents, {} tokens -> {}", index.documents, index.tokens, dir.display());
            stats
        }
        None => ferrolm_corpus::run_configured(&cfg, &b.out, &opts, None)?,
    };
    eprintln!(
        "input {} documents ({:.1} MB) -> kept {} ({:.1} MB), removed {}, rejected {} malformed; {:.1} s, {:.2} MB/s. Report: {}",
        s.input,
        s.bytes_in as f64 / 1e6,
        s.kept,
        s.bytes_kept as f64 / 1e6,
        s.removed,
        s.rejected,
        s.seconds,
        s.bytes_in as f64 / 1e6 / s.seconds.max(1e-9),
        b.out.join("report.md").display()
    );
    Ok(())
}

fn texts(paths: &[PathBuf], field: &str) -> Result<Vec<String>> {
    let (docs, stats) = read_paths(paths, &ReadOptions { text_field: field.into(), ..Default::default() })?;
    if stats.rejected > 0 {
        eprintln!("warning: {} malformed records skipped, e.g. {}", stats.rejected, stats.examples[0]);
    }
    Ok(docs.into_iter().map(|d| d.text).collect())
}

fn quality(q: QualityCmd) -> Result<()> {
    match q {
        QualityCmd::Train { high, low, out, text_field, config, set } => {
            let v = ferrolm_common::load_config(config.as_deref(), &set)?;
            let cfg: ClassifierConfig = ferrolm_common::config::typed(&v)?;
            let (hi, lo) = (texts(&high, &text_field)?, texts(&low, &text_field)?);
            let (m, r) = QualityModel::train(&hi, &lo, &cfg)?;
            m.save(&out)?;
            println!("{}", serde_json::to_string_pretty(&r)?);
            eprintln!("model -> {}", out.display());
            Ok(())
        }
        QualityCmd::Score { model, input, text_field } => {
            let m = QualityModel::load(&model)?;
            let (docs, _) = read_paths(&input, &ReadOptions { text_field, ..Default::default() })?;
            let mut sum = 0.0;
            for d in &docs {
                let s = m.score(&d.text);
                sum += s as f64;
                println!("{}", serde_json::json!({ "id": d.id, "score": s }));
            }
            eprintln!("{} documents, mean score {:.4}", docs.len(), sum / docs.len().max(1) as f64);
            Ok(())
        }
    }
}

fn minhash(m: MinhashCmd) -> Result<()> {
    match m {
        MinhashCmd::Signatures { input, sigs, shard, set } => {
            let cfg = minhash_cfg(&set)?;
            let (i, n) = ferrolm_corpus::parse_shard(&shard)?;
            let (specs, _) = ferrolm_corpus::read::expand_paths(&input)?;
            let mine: Vec<_> = specs.into_iter().enumerate().filter(|(j, _)| *j as u32 % n == i).map(|(_, s)| s).collect();
            let mut stream = ferrolm_corpus::DocumentStream::from_specs(mine, ReadOptions::default());
            let docs: Vec<_> = stream.by_ref().filter_map(|it| if let ferrolm_corpus::ReadItem::Doc(d) = it { Some(d) } else { None }).collect();
            let path = sigs.join(format!("sigs-{i:05}-of-{n:05}.bin"));
            let count = ferrolm_corpus::steps::minhash::write_signatures(docs.iter(), &cfg, i, &path)?;
            ferrolm_common::write_atomic(sigs.join("minhash.json"), serde_json::to_vec_pretty(&cfg)?)?;
            eprintln!("{count} signatures ({} malformed records) -> {}", stream.stats().rejected, path.display());
            Ok(())
        }
        MinhashCmd::Clusters { sigs, set } => {
            let cfg = minhash_cfg(&set)?;
            let mut files: Vec<PathBuf> = std::fs::read_dir(&sigs)
                .with_context(|| sigs.display().to_string())?
                .flatten()
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|e| e == "bin") && p.file_name().is_some_and(|n| n.to_string_lossy().starts_with("sigs-")))
                .collect();
            files.sort();
            if files.is_empty() {
                bail!("no sigs-*.bin in {}; run `ferrolm data minhash signatures` first", sigs.display());
            }
            let (docs, removed, sizes) = ferrolm_corpus::steps::minhash::cluster_signature_files(&files, &cfg, &sigs.join("remove.txt"))?;
            eprintln!("{docs} documents in {} files: {} duplicate clusters (largest {}), {removed} documents to remove -> {}", files.len(), sizes.len(), sizes.last().unwrap_or(&0), sigs.join("remove.txt").display());
            Ok(())
        }
        MinhashCmd::Filter { input, sigs, out, shard } => {
            let cfg = PipelineConfig {
                sources: vec![SourceConfig { name: "auto".into(), paths: input, ..Default::default() }],
                steps: vec![StepEntry::all(StepConfig::RemoveIds { list: sigs.join("remove.txt") })],
                ..Default::default()
            };
            let opts = RunOptions { shard: Some(ferrolm_corpus::parse_shard(&shard)?), force: false };
            let s = ferrolm_corpus::run_configured(&cfg, &out, &opts, None)?;
            eprintln!("shard {shard}: input {} kept {} removed {}", s.input, s.kept, s.removed);
            Ok(())
        }
    }
}

fn eval(e: EvalCmd) -> Result<()> {
    match e {
        EvalCmd::Neardup { families, words, seed, set } => {
            let cfg = minhash_cfg(&set)?;
            let r = ferrolm_corpus::eval::near_duplicate_eval(families, words, &cfg, seed);
            println!("{}", serde_json::to_string_pretty(&r)?);
        }
        EvalCmd::Privacy { per_kind, seed } => {
            let r = ferrolm_corpus::eval::privacy_eval(per_kind, seed);
            println!("{}", serde_json::to_string_pretty(&r)?);
        }
    }
    Ok(())
}
