//! `ferrolm rag index|search|eval|export-passages`: thin wrapper over ferrolm-rag.

use anyhow::{Context, Result};
use clap::Subcommand;
use ferrolm_rag::{build_index, evaluate_retrieval, ChunkOptions, IndexOptions, RagIndex, RegistrySource, Sources};
use std::io::Write;
use std::path::PathBuf;

/// This project's own lock file: the default demo corpus is the same on every machine.
const CARGO_LOCK: &str = include_str!("../../../../Cargo.lock");

#[derive(clap::Args)]
pub struct Args {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Build or update a retrieval index. Inputs are read as the corpus pipeline reads them
    /// (folders, .md/.txt/code, .jsonl, .parquet, .gz/.zst); a .json file with SQuAD's layout
    /// gives one document per paragraph. Without --docs, the Cargo registry sources named in
    /// this project's Cargo.lock are indexed. Re-running on the same --out reads only the
    /// files whose content changed.
    Index {
        /// Files or folders (repeatable).
        #[arg(long, num_args = 1..)]
        docs: Vec<PathBuf>,
        /// Also index the Cargo registry (the default when no --docs is given).
        #[arg(long)]
        registry: bool,
        /// Index folder.
        #[arg(long)]
        out: PathBuf,
        /// Largest passage, in characters.
        #[arg(long, default_value_t = ChunkOptions::default().passage_chars)]
        passage_chars: usize,
        /// Characters repeated at the start of the next passage when a paragraph or code item is cut inside.
        #[arg(long, default_value_t = ChunkOptions::default().overlap)]
        overlap: usize,
        /// Indexing threads (0: as many as cores, at most 4).
        #[arg(long, default_value_t = 0)]
        threads: usize,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Ranked passages for a query (BM25), with source, line range and score.
    Search {
        #[arg(long)]
        index: PathBuf,
        query: String,
        #[arg(short, long, default_value_t = 5)]
        k: usize,
        #[arg(long)]
        json: bool,
    },
    /// Retrieval quality on SQuAD-format questions: recall@1/5/20 and MRR, overall and for
    /// answerable and unanswerable questions.
    Eval {
        #[arg(long)]
        index: PathBuf,
        /// SQuAD-format JSON (its paragraphs must have been indexed, e.g. from the same file).
        #[arg(long)]
        qa: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// Write every passage as JSON lines (id, file, doc, line_start, line_end, text), by id.
    ExportPassages {
        #[arg(long)]
        index: PathBuf,
        #[arg(long)]
        out: PathBuf,
    },
}

pub fn run(args: Args) -> Result<()> {
    // tantivy logs every commit, merge and garbage collection at INFO through `log`; they
    // would bury the report. RUST_LOG still shows them.
    if std::env::var_os("RUST_LOG").is_none() {
        log::set_max_level(log::LevelFilter::Warn);
    }
    match args.cmd {
        Cmd::Index { docs, registry, out, passage_chars, overlap, threads, json } => {
            let registry = if registry || docs.is_empty() {
                std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
                let lockfile = out.join("Cargo.lock");
                ferrolm_common::write_atomic(&lockfile, CARGO_LOCK).with_context(|| format!("writing {}", lockfile.display()))?;
                let cargo_home = ferrolm_corpus::default_cargo_home().context("cannot find the Cargo home (set CARGO_HOME or HOME)")?;
                Some(RegistrySource { lockfile, cargo_home })
            } else {
                None
            };
            let opts = IndexOptions { chunk: ChunkOptions { passage_chars, overlap }, threads, ..Default::default() };
            let r = build_index(&out, &Sources { paths: docs, registry }, &opts)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&r)?);
                return Ok(());
            }
            println!(
                "{}: {} passages from {} files ({} unchanged, {} added, {} updated, {} removed); +{} -{} passages; read {:.1} MB in {:.1} s ({:.1} MB/s)",
                out.display(), r.passages, r.files, r.files_unchanged, r.files_added, r.files_updated, r.files_removed,
                r.passages_added, r.passages_removed, r.bytes_read as f64 / 1e6, r.seconds, r.mb_per_s
            );
            let st = &r.read;
            if st.rejected > 0 {
                println!("rejected {} inputs: {:?}", st.rejected, st.rejected_by_reason);
                for e in st.examples.iter().take(10) {
                    println!("  {e}");
                }
            }
            if st.skipped_files > 0 {
                println!("{} files of unsupported formats skipped", st.skipped_files);
            }
            if !st.missing_crates.is_empty() {
                println!("{} crates of Cargo.lock not in the registry", st.missing_crates.len());
            }
        }
        Cmd::Search { index, query, k, json } => {
            let ix = RagIndex::open(&index, None)?;
            let hits = ix.search(&query, k)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&hits)?);
                return Ok(());
            }
            if hits.is_empty() {
                println!("no passage matches {query:?}");
            }
            let mut out = std::io::stdout().lock();
            for (i, h) in hits.iter().enumerate() {
                let p = &h.passage;
                writeln!(out, "{}. {:.4}  {}:{}-{}", i + 1, h.score, p.doc, p.line_start, p.line_end)?;
                for line in p.text.lines() {
                    writeln!(out, "    {line}")?;
                }
                writeln!(out)?;
            }
        }
        Cmd::Eval { index, qa, json } => {
            let ix = RagIndex::open(&index, None)?;
            let r = evaluate_retrieval(&ix, &index, &qa)?;
            for p in &r.problems {
                eprintln!("{}: malformed question {p}", qa.display());
            }
            if json {
                println!("{}", serde_json::to_string_pretty(&r)?);
                return Ok(());
            }
            println!(
                "{} questions scored of {} ({} on paragraphs not in the index, {} malformed)",
                r.scored, r.questions, r.not_indexed, r.malformed
            );
            println!("{:<13} {:>6} {:>9} {:>9} {:>10} {:>7}", "", "n", "recall@1", "recall@5", "recall@20", "MRR");
            for (name, s) in [("all", &r.all), ("answerable", &r.answerable), ("unanswerable", &r.unanswerable)] {
                println!(
                    "{name:<13} {:>6} {:>9.4} {:>9.4} {:>10.4} {:>7.4}",
                    s.scored, s.recall_at_1, s.recall_at_5, s.recall_at_20, s.mrr
                );
            }
            println!("query latency: p50 {:.3} ms, p99 {:.3} ms", r.latency_ms_p50, r.latency_ms_p99);
        }
        Cmd::ExportPassages { index, out } => {
            let ix = RagIndex::open(&index, None)?;
            let passages = ix.passages()?;
            let mut f = ferrolm_common::AtomicFile::create(&out).with_context(|| format!("creating {}", out.display()))?;
            {
                let mut w = std::io::BufWriter::new(&mut f);
                for p in &passages {
                    serde_json::to_writer(&mut w, p)?;
                    w.write_all(b"\n")?;
                }
                w.flush()?;
            }
            f.commit().with_context(|| format!("writing {}", out.display()))?;
            println!("{} passages -> {}", passages.len(), out.display());
        }
    }
    Ok(())
}
