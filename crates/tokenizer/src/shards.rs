//! Token shards: the training data format.
//!
//! A shard directory holds `shard_00000.bin`, `shard_00001.bin`, … (raw little-endian token
//! ids, `u16` when the vocabulary has at most 65536 ids, else `u32`; at most
//! [`DEFAULT_MAX_SHARD_TOKENS`] tokens each) and `index.json` ([`ShardIndex`]).
//!
//! Documents: [`ShardWriter::write_document`] appends the end-of-text id given at creation
//! after every document, so the stream is `doc0 EOT doc1 EOT …`. Documents are not aligned to
//! shards: the stream is cut into shards at exact token counts and [`TokenShards`] reads it as
//! one sequence. A document is counted (documents, text bytes) in the shard holding its last
//! token.
//!
//! Crash safety: every shard is written to a temporary file and renamed into place when
//! complete, and `index.json` is written the same way, last. `create` deletes an existing
//! index first, so a killed run leaves either no index (and `open` says so) or a complete one.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{bail, ensure, Context, Result};
use ferrolm_common::AtomicFile;
use memmap2::Mmap;
use serde::{Deserialize, Serialize};
use xxhash_rust::xxh3::Xxh3;

use crate::tokenizer::Tokenizer;

pub const INDEX_FILE: &str = "index.json";
pub const FORMAT: &str = "ferrolm-token-shards";
pub const VERSION: u32 = 1;
/// 64 Mi tokens: 128 MiB per shard with u16 ids.
pub const DEFAULT_MAX_SHARD_TOKENS: u64 = 64 << 20;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Dtype {
    U16,
    U32,
}

impl Dtype {
    /// u16 when every id fits (vocab_size <= 65536), else u32.
    pub fn for_vocab(vocab_size: usize) -> Self {
        if vocab_size <= 1 << 16 {
            Dtype::U16
        } else {
            Dtype::U32
        }
    }

    pub fn bytes(self) -> usize {
        match self {
            Dtype::U16 => 2,
            Dtype::U32 => 4,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardInfo {
    /// File name inside the shard directory.
    pub file: String,
    pub tokens: u64,
    /// Documents whose last token (their EOT) is in this shard.
    pub documents: u64,
    /// UTF-8 bytes of text of those documents.
    pub text_bytes: u64,
    /// XXH3-64 of the file's bytes, 16 lowercase hex digits.
    pub xxh3: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardIndex {
    pub format: String,
    pub version: u32,
    pub dtype: Dtype,
    pub vocab_size: usize,
    /// The id appended after every document, if any.
    pub eot: Option<u32>,
    pub tokens: u64,
    pub documents: u64,
    pub text_bytes: u64,
    pub shards: Vec<ShardInfo>,
}

struct OpenShard {
    file: AtomicFile,
    name: String,
    tokens: u64,
    documents: u64,
    text_bytes: u64,
    hasher: Xxh3,
}

/// Streams documents into shards. Dropping it without [`ShardWriter::finish`] leaves no index.
pub struct ShardWriter {
    dir: PathBuf,
    vocab_size: usize,
    dtype: Dtype,
    eot: Option<u32>,
    max_shard_tokens: u64,
    current: Option<OpenShard>,
    shards: Vec<ShardInfo>,
    documents: u64,
    buf: Vec<u8>,
}

impl ShardWriter {
    /// Start writing shards into `dir` (created if needed). `eot`, when given, is appended after
    /// every document. An existing `index.json` and `shard_*.bin` files in `dir` are removed
    /// first, so a stale index never describes new shards.
    pub fn create(dir: &Path, vocab_size: usize, eot: Option<u32>) -> Result<Self> {
        ensure!(vocab_size > 0, "vocab_size must be positive");
        if let Some(e) = eot {
            ensure!((e as usize) < vocab_size, "eot id {e} is outside the vocabulary of {vocab_size}");
        }
        std::fs::create_dir_all(dir)
            .with_context(|| format!("cannot create shard directory {}", dir.display()))?;
        let index = dir.join(INDEX_FILE);
        if index.exists() {
            std::fs::remove_file(&index)
                .with_context(|| format!("cannot remove the old {}", index.display()))?;
        }
        for entry in std::fs::read_dir(dir).with_context(|| format!("cannot list {}", dir.display()))? {
            let entry = entry?;
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if name.starts_with("shard_") && name.ends_with(".bin") {
                std::fs::remove_file(entry.path())
                    .with_context(|| format!("cannot remove old shard {}", entry.path().display()))?;
            }
        }
        Ok(Self {
            dir: dir.to_path_buf(),
            vocab_size,
            dtype: Dtype::for_vocab(vocab_size),
            eot,
            max_shard_tokens: DEFAULT_MAX_SHARD_TOKENS,
            current: None,
            shards: Vec::new(),
            documents: 0,
            buf: Vec::new(),
        })
    }

    /// [`ShardWriter::create`] with the tokenizer's vocabulary size and `<|endoftext|>` (if any).
    pub fn for_tokenizer(dir: &Path, tok: &Tokenizer) -> Result<Self> {
        Self::create(dir, tok.vocab_size(), tok.try_eot_id())
    }

    /// Change the shard size (tests use tiny shards).
    pub fn with_max_shard_tokens(mut self, n: u64) -> Self {
        assert!(n > 0, "max shard tokens must be positive");
        self.max_shard_tokens = n;
        self
    }

    /// Append one document's ids (then EOT if configured); `text_bytes` is the UTF-8 length of
    /// the text they encode, summed into the index for bits-per-byte.
    pub fn write_document(&mut self, ids: &[u32], text_bytes: u64) -> Result<()> {
        if let Some(&bad) = ids.iter().find(|&&id| id as usize >= self.vocab_size) {
            bail!(
                "document #{} has token id {bad}, outside the vocabulary of {}",
                self.documents,
                self.vocab_size
            );
        }
        self.write_tokens(ids)?;
        if let Some(eot) = self.eot {
            self.write_tokens(&[eot])?;
        }
        let shard = self.current.as_mut().map(|s| (&mut s.documents, &mut s.text_bytes));
        match shard {
            Some((docs, bytes)) => {
                *docs += 1;
                *bytes += text_bytes;
            }
            // The document ended exactly at a shard boundary (or was empty with no EOT): count
            // it in the last completed shard.
            None => match self.shards.last_mut() {
                Some(last) => {
                    last.documents += 1;
                    last.text_bytes += text_bytes;
                }
                None => {
                    // An empty first document without EOT: open a shard to hold its count.
                    self.open_shard()?;
                    let s = self.current.as_mut().expect("just opened");
                    s.documents += 1;
                    s.text_bytes += text_bytes;
                }
            },
        }
        self.documents += 1;
        Ok(())
    }

    fn open_shard(&mut self) -> Result<()> {
        let name = format!("shard_{:05}.bin", self.shards.len());
        let path = self.dir.join(&name);
        let file = AtomicFile::create(&path).with_context(|| format!("cannot create {}", path.display()))?;
        self.current =
            Some(OpenShard { file, name, tokens: 0, documents: 0, text_bytes: 0, hasher: Xxh3::new() });
        Ok(())
    }

    fn write_tokens(&mut self, mut ids: &[u32]) -> Result<()> {
        while !ids.is_empty() {
            if self.current.is_none() {
                self.open_shard()?;
            }
            let shard = self.current.as_mut().expect("shard open");
            let room = (self.max_shard_tokens - shard.tokens) as usize;
            let (now, later) = ids.split_at(room.min(ids.len()));
            self.buf.clear();
            match self.dtype {
                Dtype::U16 => now.iter().for_each(|&id| self.buf.extend_from_slice(&(id as u16).to_le_bytes())),
                Dtype::U32 => now.iter().for_each(|&id| self.buf.extend_from_slice(&id.to_le_bytes())),
            }
            shard.hasher.update(&self.buf);
            shard
                .file
                .write_all(&self.buf)
                .with_context(|| format!("cannot write {}", shard.file.path().display()))?;
            shard.tokens += now.len() as u64;
            ids = later;
            if shard.tokens == self.max_shard_tokens {
                self.close_shard()?;
            }
        }
        Ok(())
    }

    fn close_shard(&mut self) -> Result<()> {
        if let Some(s) = self.current.take() {
            let path = s.file.path().to_path_buf();
            s.file.commit().with_context(|| format!("cannot finish shard {}", path.display()))?;
            self.shards.push(ShardInfo {
                file: s.name,
                tokens: s.tokens,
                documents: s.documents,
                text_bytes: s.text_bytes,
                xxh3: format!("{:016x}", s.hasher.digest()),
            });
        }
        Ok(())
    }

    /// Tokens written so far.
    pub fn tokens(&self) -> u64 {
        self.shards.iter().map(|s| s.tokens).sum::<u64>() + self.current.as_ref().map_or(0, |s| s.tokens)
    }

    /// Close the last shard and write `index.json` (atomically, last).
    pub fn finish(mut self) -> Result<ShardIndex> {
        self.close_shard()?;
        let index = ShardIndex {
            format: FORMAT.into(),
            version: VERSION,
            dtype: self.dtype,
            vocab_size: self.vocab_size,
            eot: self.eot,
            tokens: self.shards.iter().map(|s| s.tokens).sum(),
            documents: self.shards.iter().map(|s| s.documents).sum(),
            text_bytes: self.shards.iter().map(|s| s.text_bytes).sum(),
            shards: std::mem::take(&mut self.shards),
        };
        let path = self.dir.join(INDEX_FILE);
        ferrolm_common::write_atomic(&path, serde_json::to_string_pretty(&index)?)
            .with_context(|| format!("cannot write {}", path.display()))?;
        Ok(index)
    }
}

/// Encode documents in parallel batches and write them in order. `docs` yields texts;
/// returns the index. Used by `ferrolm tokenizer shards` and the data pipeline.
pub fn write_texts<I, S>(tok: &Tokenizer, docs: I, writer: &mut ShardWriter, batch_bytes: usize) -> Result<()>
where
    I: IntoIterator<Item = S>,
    S: AsRef<str> + Sync,
{
    let mut batch: Vec<S> = Vec::new();
    let mut bytes = 0usize;
    let flush = |batch: &mut Vec<S>, writer: &mut ShardWriter| -> Result<()> {
        let texts: Vec<&str> = batch.iter().map(|s| s.as_ref()).collect();
        let encoded = tok.encode_batch(&texts);
        for (ids, text) in encoded.iter().zip(&texts) {
            writer.write_document(ids, text.len() as u64)?;
        }
        batch.clear();
        Ok(())
    };
    for d in docs {
        bytes += d.as_ref().len();
        batch.push(d);
        if bytes >= batch_bytes {
            flush(&mut batch, writer)?;
            bytes = 0;
        }
    }
    flush(&mut batch, writer)
}

/// Read-only view of a shard directory as one token sequence.
pub struct TokenShards {
    dir: PathBuf,
    index: ShardIndex,
    maps: Vec<Option<Mmap>>,
    /// starts[i] = global position of shard i's first token; starts[n] = total.
    starts: Vec<u64>,
}

impl TokenShards {
    /// Open and check `dir`: the index must be complete and every shard file must exist with
    /// exactly the size the index gives (a cheap check; [`TokenShards::verify`] hashes).
    pub fn open(dir: &Path) -> Result<Self> {
        let index_path = dir.join(INDEX_FILE);
        if !index_path.exists() {
            bail!(
                "{} not found: {} is not a finished token-shard directory (missing, or the \
                 writer was interrupted before it finished)",
                index_path.display(),
                dir.display()
            );
        }
        let text = std::fs::read_to_string(&index_path)
            .with_context(|| format!("cannot read {}", index_path.display()))?;
        let index: ShardIndex = serde_json::from_str(&text)
            .with_context(|| format!("{} is not a valid shard index", index_path.display()))?;
        ensure!(
            index.format == FORMAT && index.version == VERSION,
            "{}: format {:?} version {}, expected {FORMAT:?} version {VERSION}",
            index_path.display(),
            index.format,
            index.version
        );
        ensure!(
            index.dtype == Dtype::for_vocab(index.vocab_size),
            "{}: dtype {:?} does not match vocab_size {}",
            index_path.display(),
            index.dtype,
            index.vocab_size
        );
        if let Some(e) = index.eot {
            ensure!((e as usize) < index.vocab_size, "{}: eot id {e} is outside the vocabulary of {}", index_path.display(), index.vocab_size);
        }
        let mut maps = Vec::with_capacity(index.shards.len());
        let mut starts = vec![0u64];
        for (i, s) in index.shards.iter().enumerate() {
            // A shard is a file inside this folder: no `..`, no absolute path, no subfolder.
            let plain = matches!(Path::new(&s.file).components().collect::<Vec<_>>()[..], [std::path::Component::Normal(_)]);
            ensure!(plain, "{}: shard {i} names {:?}, not a file name inside the folder", index_path.display(), s.file);
            let path = dir.join(&s.file);
            let file = std::fs::File::open(&path)
                .with_context(|| format!("shard {} listed in {} cannot be opened", path.display(), index_path.display()))?;
            let len = file.metadata()?.len();
            let expected = s.tokens.checked_mul(index.dtype.bytes() as u64).with_context(|| {
                format!("{}: shard {i} claims {} tokens (corrupt index)", index_path.display(), s.tokens)
            })?;
            ensure!(
                len == expected,
                "shard {} is {len} bytes but the index says {} tokens ({expected} bytes): the file \
                 is truncated or was overwritten",
                path.display(),
                s.tokens
            );
            // Shards are immutable once renamed into place; we only read them.
            let map = if len == 0 {
                None
            } else {
                Some(ferrolm_kernels::mmap::map_immutable(&file).with_context(|| format!("cannot map {}", path.display()))?)
            };
            maps.push(map);
            // Cannot overflow: each shard's tokens are backed by a file's bytes.
            starts.push(starts.last().unwrap() + s.tokens);
        }
        ensure!(
            *starts.last().unwrap() == index.tokens,
            "{}: shards hold {} tokens but the total says {}",
            index_path.display(),
            starts.last().unwrap(),
            index.tokens
        );
        Ok(Self { dir: dir.to_path_buf(), index, maps, starts })
    }

    /// Hash every shard and compare with the index, and check every id is inside the
    /// vocabulary (reads all data).
    pub fn verify(&self) -> Result<()> {
        for (s, map) in self.index.shards.iter().zip(&self.maps) {
            let bytes: &[u8] = map.as_deref().unwrap_or(&[]);
            let got = format!("{:016x}", xxhash_rust::xxh3::xxh3_64(bytes));
            ensure!(
                got == s.xxh3,
                "shard {} has hash {got} but the index says {}: the file is corrupt",
                self.dir.join(&s.file).display(),
                s.xxh3
            );
            let v = self.index.vocab_size as u64;
            let bad = match self.index.dtype {
                Dtype::U16 => bytes.chunks_exact(2).position(|c| u16::from_le_bytes([c[0], c[1]]) as u64 >= v),
                Dtype::U32 => bytes.chunks_exact(4).position(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]) as u64 >= v),
            };
            if let Some(at) = bad {
                bail!(
                    "shard {}: token {at} is outside the vocabulary of {v}",
                    self.dir.join(&s.file).display()
                );
            }
        }
        Ok(())
    }

    /// Total tokens.
    pub fn len(&self) -> usize {
        self.index.tokens as usize
    }

    pub fn is_empty(&self) -> bool {
        self.index.tokens == 0
    }

    pub fn num_docs(&self) -> u64 {
        self.index.documents
    }

    pub fn text_bytes(&self) -> u64 {
        self.index.text_bytes
    }

    pub fn vocab_size(&self) -> usize {
        self.index.vocab_size
    }

    pub fn eot(&self) -> Option<u32> {
        self.index.eot
    }

    pub fn index(&self) -> &ShardIndex {
        &self.index
    }

    /// Tokens `start..start+len` (may cross shard boundaries). Panics if out of range.
    pub fn get(&self, start: usize, len: usize) -> Vec<u32> {
        let mut out = vec![0u32; len];
        self.get_into(start, &mut out);
        out
    }

    /// Fill `out` with tokens `start..start+out.len()`. Panics if out of range.
    pub fn get_into(&self, start: usize, out: &mut [u32]) {
        let end = start + out.len();
        assert!(end <= self.len(), "token range {start}..{end} is outside the {} tokens of the shards", self.len());
        let mut pos = start as u64;
        let mut filled = 0;
        // The shard containing `pos`: the last start <= pos.
        let mut shard = self.starts.partition_point(|&s| s <= pos) - 1;
        while filled < out.len() {
            let local = (pos - self.starts[shard]) as usize;
            let avail = (self.starts[shard + 1] - pos) as usize;
            let take = avail.min(out.len() - filled);
            if take > 0 {
                let bytes: &[u8] = self.maps[shard].as_deref().expect("non-empty shard is mapped");
                let dst = &mut out[filled..filled + take];
                match self.index.dtype {
                    Dtype::U16 => {
                        let src = &bytes[local * 2..(local + take) * 2];
                        for (d, c) in dst.iter_mut().zip(src.chunks_exact(2)) {
                            *d = u16::from_le_bytes([c[0], c[1]]) as u32;
                        }
                    }
                    Dtype::U32 => {
                        let src = &bytes[local * 4..(local + take) * 4];
                        for (d, c) in dst.iter_mut().zip(src.chunks_exact(4)) {
                            *d = u32::from_le_bytes([c[0], c[1], c[2], c[3]]);
                        }
                    }
                }
                filled += take;
                pos += take as u64;
            }
            shard += 1;
        }
    }
}
