//! `ferrolm ngram train|score|query`: thin wrapper over ferrolm-ngram.

use anyhow::{Context, Result};
use clap::Subcommand;
use ferrolm_ngram::{train_text, Model, TrainOptions};
use std::io::BufRead;
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct Args {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Estimate an interpolated modified Kneser-Ney model (one sentence per line).
    Train {
        #[arg(long, default_value_t = 5)]
        order: usize,
        #[arg(long, num_args = 1.., required = true)]
        input: Vec<PathBuf>,
        #[arg(long)]
        arpa: PathBuf,
        /// Abort instead of using discounts (0.5, 1, 1.5) when count-of-counts are degenerate.
        #[arg(long)]
        no_discount_fallback: bool,
    },
    /// Perplexity of a file (every word plus one </s> per line; OOVs scored as <unk>).
    Score {
        #[arg(long)]
        model: PathBuf,
        #[arg(long)]
        input: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// Per-sentence log10 probabilities of lines read from stdin (or --input).
    Query {
        #[arg(long)]
        model: PathBuf,
        #[arg(long)]
        input: Option<PathBuf>,
    },
}

fn read_lines(path: &PathBuf) -> Result<Vec<String>> {
    let f = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    std::io::BufReader::new(f)
        .lines()
        .enumerate()
        .map(|(i, l)| l.with_context(|| format!("{}:{}: not valid UTF-8 or unreadable", path.display(), i + 1)))
        .collect()
}

pub fn run(args: Args) -> Result<()> {
    match args.cmd {
        Cmd::Train { order, input, arpa, no_discount_fallback } => {
            let mut lines = Vec::new();
            for p in &input {
                lines.extend(read_lines(p)?);
            }
            let t = std::time::Instant::now();
            let opts = TrainOptions { order, discount_fallback: !no_discount_fallback };
            let m = train_text(lines.iter().map(|s| s.as_str()), &opts)?;
            for (n, d) in m.discounts.iter().enumerate() {
                tracing::info!("order {} discounts D1={:.4} D2={:.4} D3+={:.4}; {} n-grams", n + 1, d.d[0], d.d[1], d.d[2], m.grams[n].len());
            }
            m.write_arpa(&arpa)?;
            tracing::info!("wrote {} in {:.2}s", arpa.display(), t.elapsed().as_secs_f64());
        }
        Cmd::Score { model, input, json } => {
            let m = Model::read_arpa(&model)?;
            let (mut lp, mut toks, mut oovs, mut lines) = (0.0, 0usize, 0usize, 0usize);
            for l in read_lines(&input)? {
                let s = m.score_sentence(&l);
                lp += s.log10_prob;
                toks += s.tokens;
                oovs += s.oovs;
                lines += 1;
            }
            let ppl = 10f64.powf(-lp / toks as f64);
            if json {
                println!("{}", serde_json::json!({"perplexity": ppl, "log10_prob": lp, "tokens": toks, "oovs": oovs, "lines": lines}));
            } else {
                println!("Perplexity including OOVs:\t{ppl}\nlog10 prob:\t{lp}\nTokens:\t{toks}\tOOVs:\t{oovs}\tLines:\t{lines}");
            }
        }
        Cmd::Query { model, input } => {
            let m = Model::read_arpa(&model)?;
            let lines = match input {
                Some(p) => read_lines(&p)?,
                None => std::io::stdin().lock().lines().collect::<std::io::Result<_>>()?,
            };
            for l in lines {
                let s = m.score_sentence(&l);
                println!("{}\t{}\t{}", s.log10_prob, s.oovs, l);
            }
        }
    }
    Ok(())
}
