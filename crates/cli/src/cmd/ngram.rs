//! `ferrolm ngram train|score|query|build-binary`: thin wrapper over ferrolm-ngram.

use anyhow::{Context, Result};
use clap::Subcommand;
use ferrolm_ngram::{arpa_to_binary, parse_memory, train_text, AnyModel, StreamOptions, TrainOptions};
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};

#[derive(clap::Args)]
pub struct Args {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Estimate an interpolated modified Kneser-Ney model (one sentence per line). Counts are
    /// sorted on disk within `--memory`, so the corpus may be larger than memory.
    Train {
        #[arg(long, default_value_t = 5)]
        order: usize,
        #[arg(long, num_args = 1.., required = true)]
        input: Vec<PathBuf>,
        #[arg(long)]
        arpa: PathBuf,
        /// Also write the memory-mapped binary form here.
        #[arg(long)]
        binary: Option<PathBuf>,
        /// Memory budget for counting and sorting (k, M, G suffixes), as lmplz's -S.
        #[arg(long, default_value = "1G")]
        memory: String,
        /// Directory for the temporary sorted runs (default: the system temp dir), as lmplz's -T.
        #[arg(long)]
        temp_dir: Option<PathBuf>,
        /// Count in hash tables in memory instead (same result; no temporary files).
        #[arg(long)]
        in_memory: bool,
        /// Abort instead of using discounts (0.5, 1, 1.5) when count-of-counts are degenerate.
        #[arg(long)]
        no_discount_fallback: bool,
    },
    /// Convert an ARPA file to the binary form (`query`/`score` accept either).
    BuildBinary {
        #[arg(long)]
        arpa: PathBuf,
        #[arg(long)]
        out: PathBuf,
    },
    /// Perplexity of a file (every word plus one </s> per line; OOVs scored as <unk>).
    Score {
        /// ARPA or binary model.
        #[arg(long)]
        model: PathBuf,
        #[arg(long)]
        input: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// As KenLM's query: per word `word=id ngram_length log10p`, then `Total:` and `OOV:` per
    /// line, and a perplexity summary; reads stdin unless --input is given.
    Query {
        /// ARPA or binary model.
        #[arg(long)]
        model: PathBuf,
        #[arg(long)]
        input: Option<PathBuf>,
        /// Only the per-sentence totals (`log10p<TAB>oovs<TAB>sentence`).
        #[arg(long)]
        sentence: bool,
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

fn train_streaming(input: &[PathBuf], arpa: &Path, opts: StreamOptions) -> Result<()> {
    let total: u64 = input.iter().map(|p| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0)).sum();
    let bar = ferrolm_common::progress::bytes_bar(total, "counting");
    let rep = ferrolm_ngram::train_files_streaming(input, arpa, &opts, |n| bar.inc(n), |est| {
        bar.finish_and_clear();
        tracing::info!("counted; estimating (temporary runs in {})", est.temp_path().display());
    })?;
    for (n, d) in rep.discounts.iter().enumerate() {
        tracing::info!("order {} discounts D1={:.4} D2={:.4} D3+={:.4}; {} n-grams", n + 1, d.d[0], d.d[1], d.d[2], rep.counts[n]);
    }
    tracing::info!("{} sentences, {} tokens; counting table spilled {} times, {} sorted runs", rep.sentences, rep.tokens, rep.count_spills, rep.runs);
    Ok(())
}

pub fn run(args: Args) -> Result<()> {
    match args.cmd {
        Cmd::Train { order, input, arpa, binary, memory, temp_dir, in_memory, no_discount_fallback } => {
            let t = std::time::Instant::now();
            if in_memory {
                let mut lines = Vec::new();
                for p in &input {
                    lines.extend(read_lines(p)?);
                }
                let opts = TrainOptions { order, discount_fallback: !no_discount_fallback };
                let m = train_text(lines.iter().map(|s| s.as_str()), &opts)?;
                for (n, d) in m.discounts.iter().enumerate() {
                    tracing::info!("order {} discounts D1={:.4} D2={:.4} D3+={:.4}; {} n-grams", n + 1, d.d[0], d.d[1], d.d[2], m.grams[n].len());
                }
                m.write_arpa(&arpa)?;
            } else {
                let opts = StreamOptions { order, discount_fallback: !no_discount_fallback, memory: parse_memory(&memory)?, temp_dir };
                train_streaming(&input, &arpa, opts)?;
            }
            tracing::info!("wrote {} in {:.2}s", arpa.display(), t.elapsed().as_secs_f64());
            if let Some(bin) = binary {
                let s = arpa_to_binary(&arpa, &bin)?;
                tracing::info!("wrote {} ({} bytes)", bin.display(), s.bytes);
            }
        }
        Cmd::BuildBinary { arpa, out } => {
            let t = std::time::Instant::now();
            let s = arpa_to_binary(&arpa, &out)?;
            tracing::info!("wrote {} ({} bytes, n-grams {:?}) in {:.2}s", out.display(), s.bytes, s.counts, t.elapsed().as_secs_f64());
        }
        Cmd::Score { model, input, json } => {
            let m = AnyModel::open(&model)?;
            let (mut lp, mut toks, mut oovs, mut lines) = (0.0, 0usize, 0usize, 0usize);
            for l in read_lines(&input)? {
                let s = m.score_sentence(&l);
                lp += s.log10_prob;
                toks += s.tokens;
                oovs += s.oovs;
                lines += 1;
            }
            let ppl = 10f64.powf(-lp / toks as f64);
            // writeln, not println: a closed stdout must surface as an error (quiet exit in
            // main), not a panic
            let mut out = std::io::stdout().lock();
            if json {
                writeln!(out, "{}", serde_json::json!({"perplexity": ppl, "log10_prob": lp, "tokens": toks, "oovs": oovs, "lines": lines}))?;
            } else {
                writeln!(out, "Perplexity including OOVs:\t{ppl}\nlog10 prob:\t{lp}\nTokens:\t{toks}\tOOVs:\t{oovs}\tLines:\t{lines}")?;
            }
        }
        Cmd::Query { model, input, sentence } => {
            let t0 = std::time::Instant::now();
            let m = AnyModel::open(&model)?;
            let load = t0.elapsed().as_secs_f64();
            let lines = match input {
                Some(p) => read_lines(&p)?,
                None => std::io::stdin().lock().lines().collect::<std::io::Result<_>>().context("reading stdin")?,
            };
            let t1 = std::time::Instant::now();
            let unk = m.unk();
            let stdout = std::io::stdout();
            let mut out = std::io::BufWriter::new(stdout.lock());
            let (mut total, mut toks, mut oovs, mut total_iv, mut toks_iv) = (0.0, 0usize, 0usize, 0.0, 0usize);
            let mut words = Vec::new(); // reused: no allocation per line
            for l in &lines {
                m.score_words_into(l, &mut words);
                let (mut s, mut o) = (0.0, 0usize);
                let mut text = l.split_whitespace().chain(std::iter::once("</s>"));
                for &(id, n, lp) in &words {
                    s += lp;
                    if id == unk {
                        o += 1;
                    } else {
                        total_iv += lp;
                        toks_iv += 1;
                    }
                    if !sentence {
                        write!(out, "{}={} {} {}\t", text.next().unwrap_or(""), id, n, lp)?;
                    }
                }
                if sentence {
                    writeln!(out, "{s}\t{o}\t{l}")?;
                } else {
                    writeln!(out, "Total: {s} OOV: {o}")?;
                }
                total += s;
                toks += words.len();
                oovs += o;
            }
            out.flush()?;
            let qt = t1.elapsed().as_secs_f64();
            eprintln!("Perplexity including OOVs:\t{}", 10f64.powf(-total / toks as f64));
            eprintln!("Perplexity excluding OOVs:\t{}", 10f64.powf(-total_iv / toks_iv as f64));
            eprintln!("OOVs:\t{oovs}\nTokens:\t{toks}");
            eprintln!("Load time:\t{load:.6} s\nQuery time:\t{qt:.6} s ({:.0} tokens/s)", toks as f64 / qt);
        }
    }
    Ok(())
}
