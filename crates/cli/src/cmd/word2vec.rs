//! `ferrolm word2vec train|similar|analogy`: thin wrapper over ferrolm-word2vec.

use anyhow::Result;
use clap::Subcommand;
use ferrolm_word2vec::{analogy, read_vectors, train, write_vectors, Options};
use std::io::Write;
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct Args {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Train embeddings on whitespace-tokenised text files.
    Train {
        #[arg(long, num_args = 1.., required = true)]
        input: Vec<PathBuf>,
        #[arg(long)]
        out: PathBuf,
        #[arg(long)]
        binary: bool,
        #[arg(long)]
        cbow: bool,
        #[arg(long, default_value_t = 100)]
        dim: usize,
        #[arg(long, default_value_t = 5)]
        window: usize,
        #[arg(long, default_value_t = 5)]
        negative: usize,
        #[arg(long, default_value_t = 5)]
        min_count: u64,
        #[arg(long, default_value_t = 5)]
        epochs: usize,
        #[arg(long, default_value_t = 2)]
        threads: usize,
        /// Starting learning rate (0.025 skip-gram, 0.05 CBOW in the original tool).
        #[arg(long)]
        alpha: Option<f32>,
        /// Learning rate at the end: alpha falls linearly to this over all epochs (gensim's min_alpha).
        #[arg(long, default_value_t = 1e-4)]
        min_alpha: f32,
        #[arg(long, default_value_t = 1e-3)]
        sample: f64,
        #[arg(long, default_value_t = 1)]
        seed: u64,
    },
    /// Nearest neighbours of a word by cosine similarity.
    Similar {
        #[arg(long)]
        vectors: PathBuf,
        #[arg(long)]
        word: String,
        #[arg(long, default_value_t = 10)]
        top: usize,
    },
    /// Accuracy on a questions-words.txt style analogy file.
    Analogy {
        #[arg(long)]
        vectors: PathBuf,
        #[arg(long)]
        questions: PathBuf,
        #[arg(long, default_value_t = 30000)]
        restrict: usize,
        #[arg(long)]
        json: bool,
    },
}

pub fn run(args: Args) -> Result<()> {
    match args.cmd {
        Cmd::Train { input, out, binary, cbow, dim, window, negative, min_count, epochs, threads, alpha, min_alpha, sample, seed } => {
            let alpha = alpha.unwrap_or(if cbow { 0.05 } else { 0.025 });
            let o = Options { dim, window, negative, min_count, epochs, threads, cbow, alpha, min_alpha, sample, seed };
            let t = train(&input, &o)?;
            write_vectors(&out, &t.words, &t.vectors, t.dim, binary)?;
            eprintln!("{} words × {} dims in {:.2}s, {:.0} words/s → {}", t.words.len(), t.dim, t.seconds, t.words_per_sec, out.display());
            println!("{}", serde_json::json!({"vocab": t.words.len(), "seconds": t.seconds, "words_per_sec": t.words_per_sec}));
        }
        Cmd::Similar { vectors, word, top } => {
            let v = read_vectors(&vectors)?;
            let mut out = std::io::stdout().lock();
            for (w, s) in v.similar(&word, top)? {
                writeln!(out, "{w}\t{s:.4}")?;
            }
        }
        Cmd::Analogy { vectors, questions, restrict, json } => {
            let v = read_vectors(&vectors)?;
            let r = analogy(&v, &questions, restrict)?;
            if json {
                println!("{}", serde_json::to_string(&r)?);
            } else {
                for (s, c, t) in &r.sections {
                    if *t > 0 {
                        println!("{s}: {:.2}% ({c}/{t})", 100.0 * *c as f64 / *t as f64);
                    }
                }
                println!("total: {:.2}% ({}/{}), {} questions skipped (words outside the top {restrict})", 100.0 * r.accuracy, r.correct, r.total, r.skipped);
            }
        }
    }
    Ok(())
}
