//! `ferrolm rag index|search|eval|ask|export-passages`: thin wrapper over ferrolm-rag
//! (retrieval) and ferrolm-qa (embeddings, readers).

use anyhow::{Context, Result};
use clap::Subcommand;
use ferrolm_qa::ask::{self, Mode, Reader, Retriever};
use ferrolm_qa::embed::{embed_index, Embedder, Pooling};
use ferrolm_rag::{build_index, evaluate_retrieval_with, ChunkOptions, IndexOptions, RagIndex, RegistrySource, Sources};
use std::io::Write;
use std::path::PathBuf;

/// How retrieval ranks passages (shared by search, eval and ask).
#[derive(clap::Args)]
struct Retrieval {
    /// bm25, dense (the index's encoder embeds the query) or hybrid (weighted reciprocal rank fusion).
    #[arg(long, default_value = "bm25", value_parser = ["bm25", "dense", "hybrid"])]
    mode: String,
    /// The dense ranking's weight in hybrid fusion (BM25's is 1).
    #[arg(long, default_value_t = 1.0)]
    dense_weight: f64,
    /// The embedding model (default: the one recorded in the index; another is refused).
    #[arg(long)]
    embed: Option<PathBuf>,
}

impl Retrieval {
    fn open(&self, index: &std::path::Path) -> Result<Retriever> {
        let mode: Mode = self.mode.parse()?;
        Retriever::open(index, mode, self.embed.as_deref(), self.dense_weight, &super::device()?)
    }
}

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
        /// Also store dense vectors from this ferrolm encoder (a masked LM, decoder or reader
        /// run folder); passages that already have vectors from it are not embedded again.
        #[arg(long)]
        embed: Option<PathBuf>,
        /// How a passage's vector is made: mean of the last hidden states, or the masked LM's pooled output.
        #[arg(long, default_value = "mean", value_parser = ["mean", "pooled"])]
        pooling: String,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Ranked passages for a query, with source, line range and score.
    Search {
        #[arg(long)]
        index: PathBuf,
        query: String,
        #[arg(short, long, default_value_t = 5)]
        k: usize,
        #[command(flatten)]
        retrieval: Retrieval,
        #[arg(long)]
        json: bool,
    },
    /// Answer a question from the index: retrieve passages, then read them with --model
    /// (a `qa train` reader: extractive; a chat/causal model: generative, citing [1], [2]).
    Ask {
        #[arg(long)]
        index: PathBuf,
        #[arg(long)]
        model: PathBuf,
        question: String,
        /// Passages retrieved and read.
        #[arg(short, long, default_value_t = 3)]
        k: usize,
        /// Longest generated answer, in tokens (generative readers).
        #[arg(long, default_value_t = 64)]
        max_tokens: usize,
        #[command(flatten)]
        retrieval: Retrieval,
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
        #[command(flatten)]
        retrieval: Retrieval,
        /// Also read the retrieved passages with this reader and report EM/F1.
        #[arg(long)]
        model: Option<PathBuf>,
        /// Passages handed to the reader per question.
        #[arg(long, default_value_t = 3)]
        read_k: usize,
        #[arg(long, default_value_t = 32)]
        max_tokens: usize,
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
        Cmd::Index { docs, registry, out, passage_chars, overlap, threads, embed, pooling, json } => {
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
            let embedded = match &embed {
                Some(m) => {
                    let e = Embedder::load(&super::model_dir(m)?, pooling.parse::<Pooling>()?, &super::device()?)?;
                    let t = std::time::Instant::now();
                    let (new, all) = embed_index(&out, &e, 32)?;
                    Some((e.id().to_string(), new, all, t.elapsed().as_secs_f64()))
                }
                None => None,
            };
            if json {
                let mut v = serde_json::to_value(&r)?;
                if let Some((id, new, all, secs)) = &embedded {
                    v["embedding"] = serde_json::json!({"model": id, "embedded": new, "vectors": all, "seconds": secs});
                }
                println!("{}", serde_json::to_string_pretty(&v)?);
                return Ok(());
            }
            if let Some((id, new, all, secs)) = &embedded {
                println!("dense vectors: {new} passages embedded in {secs:.1} s ({all} in all) by {id}");
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
        Cmd::Search { index, query, k, retrieval, json } => {
            let r = retrieval.open(&index)?;
            let mut hits = Vec::new();
            for (id, score) in r.retrieve(&query, k)? {
                if let Some(passage) = r.index.passage(id)? {
                    hits.push(ferrolm_rag::SearchHit { score: score as f32, passage });
                }
            }
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
        Cmd::Eval { index, qa, retrieval, model, read_k, max_tokens, json } => {
            let rt = retrieval.open(&index)?;
            let r = evaluate_retrieval_with(&rt.index, &index, &qa, &mut |q: &str, depth| Ok(rt.retrieve(q, depth).map_err(|e| ferrolm_rag::RagError::Config(format!("{e:#}")))?.into_iter().map(|x| x.0).collect()))?;
            for p in &r.problems {
                eprintln!("{}: malformed question {p}", qa.display());
            }
            let reading = match &model {
                Some(m) => Some(ask::evaluate_reading(&rt, &Reader::load(m, &super::device()?)?, &qa, read_k, max_tokens)?),
                None => None,
            };
            if json {
                let mut v = serde_json::to_value(&r)?;
                v["mode"] = retrieval.mode.clone().into();
                if let Some(rd) = &reading {
                    v["reader"] = serde_json::to_value(rd)?;
                    v["exact_match"] = rd.all.exact_match.into();
                    v["f1"] = rd.all.f1.into();
                }
                println!("{}", serde_json::to_string_pretty(&v)?);
                return Ok(());
            }
            println!("retrieval: {}", retrieval.mode);
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
            if let Some(rd) = &reading {
                println!("reader on the top {} passages (paragraph among them for {:.1}% of questions):", rd.passages_per_question, rd.paragraph_retrieved * 100.0);
                println!("{:<22} {:>5} {:>7} {:>7}", "", "n", "EM", "F1");
                for (name, s) in [("all", &rd.all), ("HasAns (answerable)", &rd.has_ans), ("NoAns (unanswerable)", &rd.no_ans)] {
                    println!("{name:<22} {:>5} {:>7.2} {:>7.2}", s.n, s.exact_match, s.f1);
                }
            }
        }
        Cmd::Ask { index, model, question, k, max_tokens, retrieval, json } => {
            let rt = retrieval.open(&index)?;
            let reader = Reader::load(&model, &super::device()?)?;
            let passages = rt.passages(&question, k)?;
            if passages.is_empty() {
                anyhow::bail!("no passage of {} matches {question:?}", index.display());
            }
            let a = ask::read(&reader, &question, passages, max_tokens)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&a)?);
                return Ok(());
            }
            let mut out = std::io::stdout().lock();
            if a.text.is_empty() {
                writeln!(out, "answer: (no answer found in the retrieved passages)")?;
            } else {
                let cites: Vec<String> = a.cited.iter().map(|c| format!("[{c}]")).collect();
                writeln!(out, "answer: {} {}", a.text, cites.join(" "))?;
            }
            if let Some(m) = a.null_margin {
                writeln!(out, "(no-answer margin {m:.3})")?;
            }
            writeln!(out)?;
            for (i, p) in a.passages.iter().enumerate() {
                let mark = if a.cited.contains(&(i + 1)) { " (cited)" } else { "" };
                writeln!(out, "[{}] {}:{}-{}{mark}", i + 1, p.doc, p.line_start, p.line_end)?;
                if a.cited.contains(&(i + 1)) || a.cited.is_empty() {
                    for line in p.text.lines() {
                        writeln!(out, "    {line}")?;
                    }
                }
            }
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
