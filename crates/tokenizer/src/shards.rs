//! Token shards: the training data format.
//!
//! A shard folder holds `shard-NNNNN.bin` files of raw little-endian token ids (u16 when
//! the vocabulary fits, else u32) and an `index.json` describing them. Documents are
//! separated by the end-of-text token, which the writer appends after each document.
//! Every shard is written atomically and `index.json` is written last, so a folder with
//! an index is complete; a killed writer leaves no index (and a rewrite removes the old
//! index first). Readers memory-map the shards and check them against the index.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use memmap2::Mmap;
use serde::{Deserialize, Serialize};

use crate::{Result, TokenizerError};

/// Tokens per shard file at most.
pub const SHARD_TOKENS: usize = 64 << 20;
pub const INDEX: &str = "index.json";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Dtype {
    U16,
    U32,
}

impl Dtype {
    pub fn for_vocab(vocab_size: usize) -> Self {
        if vocab_size <= 1 << 16 {
            Dtype::U16
        } else {
            Dtype::U32
        }
    }
    pub fn size(self) -> usize {
        match self {
            Dtype::U16 => 2,
            Dtype::U32 => 4,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ShardInfo {
    pub file: String,
    pub tokens: u64,
    pub documents: u64,
    /// UTF-8 bytes of the text the shard's documents came from.
    pub text_bytes: u64,
    /// xxh3-64 of the file's bytes, hex.
    pub xxh3: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ShardIndex {
    pub format: u32,
    pub dtype: Dtype,
    pub vocab_size: usize,
    pub eot: u32,
    pub tokens: u64,
    pub documents: u64,
    pub text_bytes: u64,
    pub shards: Vec<ShardInfo>,
}

fn file_err(path: &Path, m: impl std::fmt::Display) -> TokenizerError {
    TokenizerError::File { path: path.to_path_buf(), message: m.to_string() }
}

pub struct ShardWriter {
    dir: PathBuf,
    dtype: Dtype,
    vocab_size: usize,
    eot: u32,
    buf: Vec<u8>,
    cur_tokens: u64,
    cur_docs: u64,
    cur_bytes: u64,
    shards: Vec<ShardInfo>,
}

impl ShardWriter {
    /// Start writing into `dir` (created if needed; an existing index is removed first).
    pub fn create(dir: &Path, vocab_size: usize, eot: u32) -> Result<Self> {
        fs::create_dir_all(dir).map_err(|e| file_err(dir, e))?;
        let index = dir.join(INDEX);
        if index.exists() {
            fs::remove_file(&index).map_err(|e| file_err(&index, e))?;
        }
        Ok(Self {
            dir: dir.to_path_buf(),
            dtype: Dtype::for_vocab(vocab_size),
            vocab_size,
            eot,
            buf: Vec::new(),
            cur_tokens: 0,
            cur_docs: 0,
            cur_bytes: 0,
            shards: Vec::new(),
        })
    }

    /// Append one document's ids followed by the end-of-text token.
    pub fn write_document(&mut self, ids: &[u32], text_bytes: u64) -> Result<()> {
        for &id in ids.iter().chain(std::iter::once(&self.eot)) {
            if id as usize >= self.vocab_size {
                return Err(TokenizerError::Invalid(format!("token id {id} is outside the vocabulary of {}", self.vocab_size)));
            }
            match self.dtype {
                Dtype::U16 => self.buf.extend_from_slice(&(id as u16).to_le_bytes()),
                Dtype::U32 => self.buf.extend_from_slice(&id.to_le_bytes()),
            }
        }
        self.cur_tokens += ids.len() as u64 + 1;
        self.cur_docs += 1;
        self.cur_bytes += text_bytes;
        if self.cur_tokens as usize >= SHARD_TOKENS {
            self.flush_shard()?;
        }
        Ok(())
    }

    fn flush_shard(&mut self) -> Result<()> {
        if self.cur_tokens == 0 {
            return Ok(());
        }
        let name = format!("shard-{:05}.bin", self.shards.len());
        let path = self.dir.join(&name);
        let mut f = ferrolm_common::AtomicFile::create(&path).map_err(|e| file_err(&path, e))?;
        f.write_all(&self.buf).map_err(|e| file_err(&path, e))?;
        f.commit().map_err(|e| file_err(&path, e))?;
        self.shards.push(ShardInfo {
            file: name,
            tokens: self.cur_tokens,
            documents: self.cur_docs,
            text_bytes: self.cur_bytes,
            xxh3: format!("{:016x}", xxhash_rust::xxh3::xxh3_64(&self.buf)),
        });
        self.buf.clear();
        (self.cur_tokens, self.cur_docs, self.cur_bytes) = (0, 0, 0);
        Ok(())
    }

    /// Write the last shard and then the index.
    pub fn finish(mut self) -> Result<ShardIndex> {
        self.flush_shard()?;
        let index = ShardIndex {
            format: 1,
            dtype: self.dtype,
            vocab_size: self.vocab_size,
            eot: self.eot,
            tokens: self.shards.iter().map(|s| s.tokens).sum(),
            documents: self.shards.iter().map(|s| s.documents).sum(),
            text_bytes: self.shards.iter().map(|s| s.text_bytes).sum(),
            shards: self.shards,
        };
        let path = self.dir.join(INDEX);
        ferrolm_common::write_atomic(&path, serde_json::to_vec_pretty(&index).expect("serialisable")).map_err(|e| file_err(&path, e))?;
        Ok(index)
    }
}

/// Memory-mapped shards, addressed as one sequence of tokens.
pub struct TokenShards {
    index: ShardIndex,
    maps: Vec<Mmap>,
    /// Token offset where each shard starts.
    starts: Vec<usize>,
}

impl TokenShards {
    pub fn open(dir: &Path) -> Result<Self> {
        let ipath = dir.join(INDEX);
        let text = fs::read(&ipath).map_err(|e| {
            file_err(&ipath, format!("cannot read the shard index ({e}): not a token-shard folder, or its writing did not finish"))
        })?;
        let index: ShardIndex = serde_json::from_slice(&text).map_err(|e| file_err(&ipath, format!("corrupt shard index: {e}")))?;
        let mut maps = Vec::new();
        let mut starts = Vec::new();
        let mut at = 0usize;
        for s in &index.shards {
            let p = dir.join(&s.file);
            let f = fs::File::open(&p).map_err(|e| file_err(&p, format!("shard listed in the index cannot be opened: {e}")))?;
            let len = f.metadata().map_err(|e| file_err(&p, e))?.len();
            let want = s.tokens * index.dtype.size() as u64;
            if len != want {
                return Err(file_err(&p, format!("shard is {len} bytes, the index says {want}: truncated or overwritten")));
            }
            // SAFETY: shards are immutable once written (atomic rename); we only read.
            let map = unsafe { Mmap::map(&f) }.map_err(|e| file_err(&p, e))?;
            maps.push(map);
            starts.push(at);
            at += s.tokens as usize;
        }
        Ok(Self { index, maps, starts })
    }

    /// Recompute every shard's hash and compare with the index (reads everything).
    pub fn verify(&self) -> Result<()> {
        for (s, m) in self.index.shards.iter().zip(&self.maps) {
            let h = format!("{:016x}", xxhash_rust::xxh3::xxh3_64(m));
            if h != s.xxh3 {
                return Err(TokenizerError::Invalid(format!("shard {} is corrupt: hash {h}, index says {}", s.file, s.xxh3)));
            }
        }
        Ok(())
    }

    pub fn index(&self) -> &ShardIndex {
        &self.index
    }
    pub fn len(&self) -> usize {
        self.index.tokens as usize
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    pub fn num_docs(&self) -> u64 {
        self.index.documents
    }
    pub fn text_bytes(&self) -> u64 {
        self.index.text_bytes
    }

    /// Copy tokens [start, start+out.len()) into `out`, across shard boundaries.
    pub fn read_into(&self, start: usize, out: &mut [u32]) {
        assert!(start + out.len() <= self.len(), "read past the end of the shards");
        let mut shard = self.starts.partition_point(|&s| s <= start) - 1;
        let mut pos = start - self.starts[shard];
        let mut filled = 0;
        while filled < out.len() {
            let map = &self.maps[shard];
            let n_in = self.index.shards[shard].tokens as usize - pos;
            let n = n_in.min(out.len() - filled);
            let dst = &mut out[filled..filled + n];
            match self.index.dtype {
                Dtype::U16 => {
                    for (i, d) in dst.iter_mut().enumerate() {
                        let o = (pos + i) * 2;
                        *d = u16::from_le_bytes([map[o], map[o + 1]]) as u32;
                    }
                }
                Dtype::U32 => {
                    for (i, d) in dst.iter_mut().enumerate() {
                        let o = (pos + i) * 4;
                        *d = u32::from_le_bytes([map[o], map[o + 1], map[o + 2], map[o + 3]]);
                    }
                }
            }
            filled += n;
            shard += 1;
            pos = 0;
        }
    }

    pub fn get(&self, start: usize, len: usize) -> Vec<u32> {
        let mut v = vec![0; len];
        self.read_into(start, &mut v);
        v
    }
}
