//! One entry point per parser that takes bytes from outside: [`run`]`(target, bytes)`.
//!
//! The libFuzzer targets in `fuzz/fuzz_targets/` call it, and so does this crate's
//! `tests/replay.rs`, which CI runs: it feeds every committed seed (`fuzz/corpus/<target>/`)
//! and every crash found so far (`fuzz/regressions/<target>/`) through the same code.
//!
//! The rule under test: any byte string gives `Ok` or an `Err` — never a panic, an abort, an
//! unbounded allocation or a hang. An `Err` must name the file it is about (checked here, with
//! a panic, so the fuzzer reports a message that does not); where the format has lines or
//! records, the parsers' messages also give the position (`file:line`, `vector 3`, …).
//! When a parser accepts the input, the result is used (encode/decode, score, read every
//! token), because a "successful" load of hostile bytes that panics on first use is the same bug.

use std::io::Write;
use std::path::{Path, PathBuf};

/// Every target, in the order the replay test and `fuzz/README.md` list them.
pub const TARGETS: &[&str] = &[
    "jsonl",
    "gzip",
    "zstd",
    "parquet",
    "tokenizer_json",
    "shards",
    "arpa",
    "ngram_binary",
    "word2vec",
    "config_toml",
    "safetensors",
    "records",
];

/// What a target made of the input: accepted, or a clear error (its message).
pub type Outcome = Result<(), String>;

/// Run `target` on `data`. Panics only when the code under test panics or breaks a rule
/// (an error that does not name its file). `None`: unknown target, or one that needs the
/// `candle` feature in a build without it.
pub fn run(target: &str, data: &[u8]) -> Option<Outcome> {
    let dir = Scratch::new();
    Some(match target {
        "jsonl" => corpus_file(&dir, "input.jsonl", data),
        "gzip" => corpus_file(&dir, "input.jsonl.gz", data),
        "zstd" => corpus_file(&dir, "input.jsonl.zst", data),
        "parquet" => corpus_file(&dir, "input.parquet", data),
        "tokenizer_json" => tokenizer_json(&dir, data),
        "shards" => shards(&dir, data),
        "arpa" => arpa(&dir, data),
        "ngram_binary" => ngram_binary(&dir, data),
        "word2vec" => word2vec(&dir, data),
        "config_toml" => config_toml(&dir, data),
        #[cfg(feature = "candle")]
        "safetensors" => safetensors(&dir, data),
        #[cfg(feature = "candle")]
        "records" => records(&dir, data),
        _ => return None,
    })
}

/// A fresh, empty folder per call (per process and thread), removed afterwards.
struct Scratch(PathBuf);

impl Scratch {
    fn new() -> Self {
        use std::sync::atomic::{AtomicU64, Ordering};
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let base = std::env::var_os("FERROLM_FUZZ_TMP").map(PathBuf::from).unwrap_or_else(std::env::temp_dir);
        let dir = base.join(format!("ferrolm-fuzz-{}-{}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed)));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("scratch folder");
        Self(dir)
    }

    fn write(&self, name: &str, data: &[u8]) -> PathBuf {
        let p = self.0.join(name);
        let mut f = std::fs::File::create(&p).expect("scratch file");
        f.write_all(data).expect("scratch write");
        p
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

impl std::ops::Deref for Scratch {
    type Target = Path;
    fn deref(&self) -> &Path {
        &self.0
    }
}

/// The rule for errors: the message names the file (by its name; the full path is longer).
fn named(err: impl std::fmt::Display, file: &Path) -> String {
    let msg = err.to_string();
    let name = file.file_name().unwrap().to_string_lossy();
    assert!(msg.contains(&*name), "error does not name the file {name}: {msg}");
    msg
}

fn corpus_file(dir: &Scratch, name: &str, data: &[u8]) -> Outcome {
    use ferrolm_corpus::{DocumentStream, ReadItem, ReadOptions};
    let path = dir.write(name, data);
    let stream = DocumentStream::from_paths(std::slice::from_ref(&path), ReadOptions::default())
        .map_err(|e| named(format!("{e:#}"), &path))?;
    let (mut docs, mut rejected) = (0u64, 0u64);
    for item in stream {
        match item {
            ReadItem::Doc(d) => {
                docs += 1;
                assert!(!d.id.is_empty(), "document without an id");
            }
            ReadItem::Rejected(r) => {
                rejected += r.records;
                assert_eq!(r.file, path.display().to_string(), "rejection names another file: {r:?}");
                assert!(!r.reason.is_empty() && !r.detail.is_empty(), "rejection without a reason: {r:?}");
                // Per-record problems of line formats carry the line.
                if name.contains(".jsonl") && matches!(r.reason.as_str(), "broken_json" | "missing_field" | "field_not_string") {
                    assert!(r.line.is_some(), "JSONL rejection without a line: {r:?}");
                }
            }
        }
    }
    if rejected > 0 && docs == 0 {
        return Err(format!("{}: {rejected} records rejected", path.display()));
    }
    Ok(())
}

fn tokenizer_json(dir: &Scratch, data: &[u8]) -> Outcome {
    use ferrolm_tokenizer::Tokenizer;
    let path = dir.write("tokenizer.json", data);
    let tok = Tokenizer::from_file(&path).map_err(|e| named(format!("{e:#}"), &path))?;
    // A tokenizer that loads must work: encode, decode, stream-decode, look ids up.
    let text = "Hello, world!  fn main() { let x = 42; }\n\tünïcødé 😀 <|endoftext|> 0123456789";
    let ids = tok.encode(text);
    let v = tok.vocab_size();
    assert!(ids.iter().all(|&i| (i as usize) < v), "encode gave an id outside the vocabulary of {v}");
    let _ = tok.encode_batch(&[text, "", " "]);
    let _ = tok.decode(&ids);
    let mut stream = tok.decode_stream();
    for &i in &ids {
        let _ = stream.push(i);
    }
    let _ = stream.finish();
    let probe: Vec<u32> = (0..v.min(300) as u32).chain([v as u32, v as u32 + 1, u32::MAX]).collect();
    let _ = tok.decode(&probe);
    for &i in &probe {
        let _ = tok.id_to_token(i);
        let _ = tok.id_to_bytes(i);
        let _ = tok.is_special(i);
    }
    let _ = tok.token_bytes();
    Ok(())
}

/// Input: u32 LE length L, then L bytes of `index.json`, then the bytes of `shard_00000.bin`
/// (shorter inputs: everything is the index).
fn shards(dir: &Scratch, data: &[u8]) -> Outcome {
    use ferrolm_tokenizer::TokenShards;
    let (index, shard) = match data.get(..4) {
        Some(l) => {
            let n = u32::from_le_bytes(l.try_into().unwrap()) as usize;
            let rest = &data[4..];
            rest.split_at(n.min(rest.len()))
        }
        None => (data, &[][..]),
    };
    let folder = dir.join("shards");
    std::fs::create_dir_all(&folder).unwrap();
    let index_path = folder.join("index.json");
    std::fs::write(&index_path, index).unwrap();
    std::fs::write(folder.join("shard_00000.bin"), shard).unwrap();
    let s = TokenShards::open(&folder).map_err(|e| named(format!("{e:#}"), &folder))?;
    s.verify().map_err(|e| named(format!("{e:#}"), &folder))?;
    // Verified shards are safe to train on: every token can be read and is in the vocabulary.
    let n = s.len();
    let mut pos = 0;
    while pos < n {
        let take = (n - pos).min(1 << 16);
        let ids = s.get(pos, take);
        assert!(ids.iter().all(|&i| (i as usize) < s.vocab_size()), "a verified shard holds an id outside the vocabulary");
        pos += take;
    }
    Ok(())
}

const SENTENCES: &[&str] = &["", "the cat sat on the mat", "<s> </s> <unk>", "a a a a a a a a a a a a", "unseen words only here"];

fn arpa(dir: &Scratch, data: &[u8]) -> Outcome {
    use ferrolm_ngram::{arpa_to_binary, AnyModel, BinaryModel, Model};
    let path = dir.write("input.arpa", data);
    let text_result = Model::read_arpa(&path).map_err(|e| named(format!("{e:#}"), &path));
    if let Ok(m) = &text_result {
        let words: Vec<String> = m.words.iter().take(20).cloned().collect();
        for s in SENTENCES.iter().map(|s| s.to_string()).chain([words.join(" ")]) {
            let _ = m.score_sentence(&s);
            let _ = m.score_document(&s);
        }
    }
    // The streaming converter to the binary form reads the same bytes its own way.
    let out = dir.join("out.bin");
    match arpa_to_binary(&path, &out) {
        Ok(_) => {
            let b = BinaryModel::open(&out).unwrap_or_else(|e| panic!("arpa_to_binary wrote a file that does not open: {e:#}"));
            let words: Vec<String> = (0..b.vocab_size().min(20) as u32).map(|i| b.word(i).to_string()).collect();
            let any = AnyModel::Binary(b);
            for s in SENTENCES.iter().map(|s| s.to_string()).chain([words.join(" ")]) {
                let _ = any.score_sentence(&s);
                let _ = any.score_words(&s);
            }
        }
        Err(e) => {
            named(format!("{e:#}"), &path);
        }
    }
    text_result.map(|_| ())
}

fn ngram_binary(dir: &Scratch, data: &[u8]) -> Outcome {
    use ferrolm_ngram::AnyModel;
    let path = dir.write("input.bin", data);
    let m = AnyModel::open(&path).map_err(|e| named(format!("{e:#}"), &path))?;
    let mut words = Vec::new();
    if let AnyModel::Binary(b) = &m {
        words = (0..b.vocab_size().min(20) as u32).map(|i| b.word(i).to_string()).collect();
    }
    for s in SENTENCES.iter().map(|s| s.to_string()).chain([words.join(" ")]) {
        let _ = m.score_sentence(&s);
        let _ = m.score_words(&s);
        let _ = m.score_document(&s);
    }
    Ok(())
}

fn word2vec(dir: &Scratch, data: &[u8]) -> Outcome {
    let path = dir.write("vectors.bin", data);
    let v = ferrolm_word2vec::read_vectors(&path).map_err(|e| named(format!("{e:#}"), &path))?;
    assert_eq!(v.data.len(), v.words.len() * v.dim, "rows and words disagree");
    let _ = v.normalized(10);
    if let Some(w) = v.words.first() {
        let _ = v.similar(w, 3);
    }
    Ok(())
}

/// Input: the TOML file, then (after the first NUL byte) one `--set` override per line.
fn config_toml(dir: &Scratch, data: &[u8]) -> Outcome {
    let (file, sets) = match data.iter().position(|&b| b == 0) {
        Some(p) => (&data[..p], &data[p + 1..]),
        None => (data, &[][..]),
    };
    let path = dir.write("config.toml", file);
    let overrides: Vec<String> = String::from_utf8_lossy(sets).lines().map(str::to_string).collect();
    let value = ferrolm_common::load_config(Some(&path), &overrides).map_err(|e| {
        let msg = e.to_string();
        match e {
            ferrolm_common::ConfigError::Read { .. } | ferrolm_common::ConfigError::Parse { .. } => named(msg, &path),
            _ => msg,
        }
    })?;
    // The resolved config is written next to every run and read back by --resume.
    if let Ok(text) = toml::to_string(&value) {
        let back: toml::Table = text.parse().unwrap_or_else(|e| panic!("a resolved config does not read back: {e}\n{text}"));
        assert_eq!(toml::Value::Table(back), value, "a resolved config reads back different");
    }
    let _ = ferrolm_common::config::typed::<ferrolm_corpus::PipelineConfig>(&value);
    #[cfg(feature = "candle")]
    {
        if let Ok(cfg) = ferrolm_train::RunConfig::from_value(&value) {
            let _ = cfg.to_toml();
            let _ = cfg.model.num_params();
        }
        if let Some(model) = value.get("model") {
            if let Ok(spec) = ferrolm_model::ModelSpec::from_value(model) {
                let _ = spec.validate();
                let _ = spec.describe();
            }
        }
    }
    Ok(())
}

#[cfg(feature = "candle")]
fn safetensors(dir: &Scratch, data: &[u8]) -> Outcome {
    let path = dir.write("model.safetensors", data);
    let tensors = ferrolm_model::registry::load_tensors(&path).map_err(|e| named(format!("{e:#}"), &path))?;
    for t in tensors.values() {
        // Loaded tensors must be usable (the trainer converts and copies them).
        let _ = t.to_dtype(candle_core::DType::F32).and_then(|t| t.flatten_all()).map(|t| t.elem_count());
    }
    Ok(())
}

/// Instruction/preference records (fine-tuning): the first byte picks the format.
#[cfg(feature = "candle")]
fn records(dir: &Scratch, data: &[u8]) -> Outcome {
    use ferrolm_finetune::records::{read_raw, ReadReport};
    let (ext, body) = match data.split_first() {
        Some((b, rest)) => (["csv", "jsonl", "json", "parquet"][(*b % 4) as usize], rest),
        None => ("jsonl", data),
    };
    let path = dir.write(&format!("records.{ext}"), body);
    let mut report = ReadReport::default();
    let rows = read_raw(&path, &mut report).map_err(|e| named(format!("{e:#}"), &path))?;
    for (origin, _) in &rows {
        assert_eq!(origin.file, path, "a record names another file");
        assert!(origin.line >= 1, "record position is 1-based");
    }
    Ok(())
}
