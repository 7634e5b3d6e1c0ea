//! `ferrolm tokenizer`: train, apply and benchmark tokenizers; write token shards.
//! Thin: argument parsing; documents are read by the corpus reader, the work is in ferrolm-tokenizer.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use ferrolm_tokenizer::shards::{self, ShardWriter};
use ferrolm_tokenizer::{special, BpeTrainConfig, ChatTemplate, Tokenizer};

#[derive(clap::Args)]
pub struct Args {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(clap::Subcommand)]
enum Cmd {
    /// Train a byte-level BPE (default) or character tokenizer; writes tokenizer.json and
    /// chat_template.json beside it.
    Train {
        /// Files or folders (.txt/.md/code: one document per file; .jsonl: the `text` field of each line; .gz/.zst, .parquet).
        #[arg(long, required = true, num_args = 1..)]
        input: Vec<PathBuf>,
        #[arg(long, default_value_t = 8192)]
        vocab_size: usize,
        /// A pair must occur at least this often to be merged.
        #[arg(long, default_value_t = 2)]
        min_frequency: u64,
        #[arg(long)]
        out: PathBuf,
        /// Character-level tokenizer (nanoGPT's Shakespeare setup) instead of BPE.
        #[arg(long)]
        char: bool,
        /// Register no special tokens (a char tokenizer then has exactly the seen characters + <|unk|>).
        #[arg(long)]
        no_special_tokens: bool,
    },
    /// Convert OpenAI's GPT-2 files (encoder.json + vocab.bpe) into a tokenizer.json.
    ImportGpt2 {
        #[arg(long)]
        encoder: PathBuf,
        #[arg(long)]
        merges: PathBuf,
        #[arg(long)]
        out: PathBuf,
    },
    /// Print the token ids of a text (from --text, else standard input).
    Encode {
        #[arg(long)]
        tokenizer: PathBuf,
        #[arg(long)]
        text: Option<String>,
        /// Also print each token's text.
        #[arg(long)]
        show_tokens: bool,
    },
    /// Print the text of token ids (arguments, else whitespace/comma separated on standard input).
    Decode {
        #[arg(long)]
        tokenizer: PathBuf,
        ids: Vec<u32>,
    },
    /// Encode documents into token shards (EOT after each document) for training.
    Shards {
        #[arg(long)]
        tokenizer: PathBuf,
        #[arg(long, required = true, num_args = 1..)]
        input: Vec<PathBuf>,
        #[arg(long)]
        out: PathBuf,
        #[arg(long, default_value_t = shards::DEFAULT_MAX_SHARD_TOKENS)]
        max_shard_tokens: u64,
        /// Hold out this fraction into OUT/val (the rest goes to OUT/train). Documents are
        /// assigned by a hash of their text; a single document (e.g. tiny Shakespeare) is cut
        /// at 1 − F of its characters, as nanoGPT splits its text.
        #[arg(long, default_value_t = 0.0)]
        val_fraction: f64,
    },
    /// Measure encoding speed (MB/s) on documents, repeated; optionally dump the ids.
    Bench {
        #[arg(long)]
        tokenizer: PathBuf,
        #[arg(long, required = true, num_args = 1..)]
        input: Vec<PathBuf>,
        #[arg(long, default_value_t = 5)]
        repeats: usize,
        /// Time the Hugging Face `tokenizers` crate's encoder too (slow).
        #[arg(long)]
        reference: bool,
        /// Write each document's ids as one JSON array per line.
        #[arg(long)]
        dump_ids: Option<PathBuf>,
        /// Print one JSON object instead of text.
        #[arg(long)]
        json: bool,
    },
}

pub fn run(args: Args) -> Result<()> {
    match args.cmd {
        Cmd::Train { input, vocab_size, min_frequency, out, char, no_special_tokens } => {
            let docs = read_documents(&input)?;
            let bytes: usize = docs.iter().map(|d| d.len()).sum();
            let specials = if no_special_tokens { vec![] } else { special::defaults() };
            let t0 = Instant::now();
            let tok = if char {
                Tokenizer::train_char(docs.iter(), &specials)?
            } else {
                let cfg = BpeTrainConfig { vocab_size, min_frequency, special_tokens: specials };
                Tokenizer::train_bpe(docs.iter(), &cfg)?
            };
            tok.save(&out)?;
            ChatTemplate::default().save_next_to(&out)?;
            eprintln!(
                "trained a {:?} tokenizer with {} ids on {} documents ({:.1} MB) in {:.1}s -> {}",
                tok.kind(),
                tok.vocab_size(),
                docs.len(),
                bytes as f64 / 1e6,
                t0.elapsed().as_secs_f64(),
                out.display()
            );
        }
        Cmd::ImportGpt2 { encoder, merges, out } => {
            let tok = Tokenizer::from_gpt2_files(&encoder, &merges)?;
            tok.save(&out)?;
            eprintln!("wrote {} ({} ids)", out.display(), tok.vocab_size());
        }
        Cmd::Encode { tokenizer, text, show_tokens } => {
            let tok = Tokenizer::from_file(&tokenizer)?;
            let text = match text {
                Some(t) => t,
                None => {
                    let mut s = String::new();
                    std::io::stdin().read_to_string(&mut s).context("reading standard input")?;
                    s
                }
            };
            let ids = tok.encode(&text);
            let mut out = std::io::stdout().lock();
            if show_tokens {
                for id in ids {
                    let bytes = tok.id_to_bytes(id).unwrap_or_default();
                    writeln!(out, "{id}\t{:?}", String::from_utf8_lossy(bytes))?;
                }
            } else {
                let line: Vec<String> = ids.iter().map(|i| i.to_string()).collect();
                writeln!(out, "{}", line.join(" "))?;
            }
        }
        Cmd::Decode { tokenizer, ids } => {
            let tok = Tokenizer::from_file(&tokenizer)?;
            let ids = if ids.is_empty() { read_ids_from_stdin()? } else { ids };
            if let Some(&bad) = ids.iter().find(|&&i| i as usize >= tok.vocab_size()) {
                bail!("id {bad} is outside the vocabulary of {} ids", tok.vocab_size());
            }
            // write!, not print!: print! panics when stdout is a closed pipe (`| head`); main
            // turns a broken pipe into a quiet exit.
            write!(std::io::stdout().lock(), "{}", tok.decode(&ids))?;
        }
        Cmd::Shards { tokenizer, input, out, max_shard_tokens, val_fraction } => {
            let tok = Tokenizer::from_file(&tokenizer)?;
            let docs = read_documents(&input)?;
            if val_fraction > 0.0 {
                anyhow::ensure!(val_fraction < 1.0, "--val-fraction must be in [0, 1)");
                let (train, val) = split_documents(docs, val_fraction)?;
                anyhow::ensure!(!train.is_empty() && !val.is_empty(), "--val-fraction {val_fraction} leaves an empty split");
                for (name, part) in [("train", train), ("val", val)] {
                    let dir = out.join(name);
                    let mut writer = ShardWriter::for_tokenizer(&dir, &tok)?.with_max_shard_tokens(max_shard_tokens);
                    shards::write_texts(&tok, part.iter(), &mut writer, 8 << 20)?;
                    let index = writer.finish()?;
                    eprintln!("{name}: {} documents, {:.2} MB -> {} tokens at {}", index.documents, index.text_bytes as f64 / 1e6, index.tokens, dir.display());
                }
                return Ok(());
            }
            let bytes: u64 = docs.iter().map(|d| d.len() as u64).sum();
            let bar = ferrolm_common::progress::bytes_bar(bytes, "shards");
            let t0 = Instant::now();
            let mut writer = ShardWriter::for_tokenizer(&out, &tok)?.with_max_shard_tokens(max_shard_tokens);
            shards::write_texts(&tok, docs.iter().inspect(|d| bar.inc(d.len() as u64)), &mut writer, 8 << 20)?;
            let index = writer.finish()?;
            bar.finish_and_clear();
            let secs = t0.elapsed().as_secs_f64();
            eprintln!(
                "{} documents, {:.1} MB -> {} tokens ({:?}) in {} shard(s) at {} in {secs:.1}s ({:.1} MB/s)",
                index.documents,
                index.text_bytes as f64 / 1e6,
                index.tokens,
                index.dtype,
                index.shards.len(),
                out.display(),
                index.text_bytes as f64 / 1e6 / secs
            );
        }
        Cmd::Bench { tokenizer, input, repeats, reference, dump_ids, json } => {
            bench(&tokenizer, &input, repeats.max(1), reference, dump_ids.as_deref(), json)?
        }
    }
    Ok(())
}

/// Train/held-out split: by the one split rule keyed by each document's text (seed 0), or,
/// for a single document, by cutting it at 1 − `frac` of its characters.
fn split_documents(docs: Vec<String>, frac: f64) -> Result<(Vec<String>, Vec<String>)> {
    if docs.len() == 1 {
        let text = &docs[0];
        let n = text.chars().count();
        let cut = text.char_indices().nth(((1.0 - frac) * n as f64) as usize).map(|(i, _)| i).unwrap_or(text.len());
        return Ok((vec![text[..cut].to_string()], vec![text[cut..].to_string()]));
    }
    Ok(ferrolm_corpus::split_by_key(docs, |d| d.clone(), frac, 0)?)
}

fn read_ids_from_stdin() -> Result<Vec<u32>> {
    let mut s = String::new();
    std::io::stdin().read_to_string(&mut s).context("reading standard input")?;
    s.split(|c: char| c.is_whitespace() || c == ',' || c == '[' || c == ']')
        .filter(|t| !t.is_empty())
        .map(|t| t.parse::<u32>().with_context(|| format!("{t:?} is not a token id")))
        .collect()
}

/// The texts of the given files and folders, read as every command reads them
/// (`ferrolm_lab::corpus::read_documents`: malformed records counted and reported).
fn read_documents(inputs: &[PathBuf]) -> Result<Vec<String>> {
    Ok(ferrolm_lab::corpus::read_documents(inputs)?.into_iter().map(|d| d.text).collect())
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// Encoding speed on `input`: encode_batch alone, and the full path into shards (encode + write
/// to a temporary directory), each repeated; medians in MB/s (10^6 bytes of UTF-8 text).
fn bench(tokenizer: &Path, input: &[PathBuf], repeats: usize, reference: bool, dump: Option<&Path>, json: bool) -> Result<()> {
    let tok = Tokenizer::from_file(tokenizer)?;
    let docs = read_documents(input)?;
    let refs: Vec<&str> = docs.iter().map(|d| d.as_str()).collect();
    let mb = docs.iter().map(|d| d.len()).sum::<usize>() as f64 / 1e6;
    let threads = std::env::var("RAYON_NUM_THREADS").ok().and_then(|v| v.parse().ok()).unwrap_or(0usize);
    // Warm-up run (starts the thread pool); every timed run then starts with empty pre-token
    // caches, as a fresh process would.
    let _ = tok.encode_batch(&refs);
    let mut encode_s = Vec::new();
    let mut shards_s = Vec::new();
    let mut tokens = 0usize;
    let tmp = std::env::temp_dir().join(format!("ferrolm-tokenizer-bench-{}", std::process::id()));
    for _ in 0..repeats {
        tok.clear_caches();
        let t0 = Instant::now();
        let ids = tok.encode_batch(&refs);
        encode_s.push(t0.elapsed().as_secs_f64());
        tokens = ids.iter().map(|v| v.len()).sum();
        tok.clear_caches();
        let t0 = Instant::now();
        let mut w = ShardWriter::for_tokenizer(&tmp, &tok)?;
        shards::write_texts(&tok, refs.iter().copied(), &mut w, 8 << 20)?;
        w.finish()?;
        shards_s.push(t0.elapsed().as_secs_f64());
    }
    let _ = std::fs::remove_dir_all(&tmp);
    let mut reference_s = Vec::new();
    if reference {
        for _ in 0..repeats {
            let t0 = Instant::now();
            let _: Vec<Vec<u32>> = {
                use rayon_free::par_map;
                par_map(&refs, |d| tok.encode_reference(d))
            };
            reference_s.push(t0.elapsed().as_secs_f64());
        }
    }
    if let Some(path) = dump {
        let mut f = ferrolm_common::AtomicFile::create(path)?;
        for ids in tok.encode_batch(&refs) {
            serde_json::to_writer(&mut f, &ids)?;
            f.write_all(b"\n")?;
        }
        f.commit()?;
    }
    let enc = median(encode_s.clone());
    let sh = median(shards_s.clone());
    let refm = (!reference_s.is_empty()).then(|| median(reference_s.clone()));
    if json {
        let v = serde_json::json!({
            "documents": docs.len(), "mb": mb, "tokens": tokens, "threads": threads, "repeats": repeats,
            "encode_s": encode_s, "shards_s": shards_s, "reference_s": reference_s,
            "encode_mb_s": mb / enc, "shards_mb_s": mb / sh, "reference_mb_s": refm.map(|r| mb / r),
        });
        println!("{v}");
    } else {
        println!("{} documents, {mb:.2} MB, {tokens} tokens, {repeats} repeats (medians)", docs.len());
        println!("ferrolm encode_batch : {:.2} MB/s", mb / enc);
        println!("ferrolm into shards  : {:.2} MB/s", mb / sh);
        if let Some(r) = refm {
            println!("HF tokenizers crate  : {:.2} MB/s", mb / r);
        }
    }
    Ok(())
}

/// Parallel map over documents with scoped std threads (the CLI does not depend on rayon),
/// used to time the reference encoder with the same thread count as ferrolm's.
mod rayon_free {
    pub fn par_map<T: Sync, R: Send>(items: &[T], f: impl Fn(&T) -> R + Sync) -> Vec<R> {
        let threads = std::env::var("RAYON_NUM_THREADS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
            .max(1);
        let chunk = items.len().div_ceil(threads).max(1);
        std::thread::scope(|s| {
            let handles: Vec<_> = items.chunks(chunk).map(|c| s.spawn(|| c.iter().map(&f).collect::<Vec<R>>())).collect();
            handles.into_iter().flat_map(|h| h.join().expect("worker panicked")).collect()
        })
    }
}
