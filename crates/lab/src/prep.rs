//! From documents to what training reads: a tokenizer trained on a stride sample, token
//! shards, the per-id byte counts of bits per byte, and the unigram baseline.

use std::path::Path;

use anyhow::Result;
use ferrolm_corpus::Document;
use ferrolm_tokenizer::shards::{ShardWriter, TokenShards};
use ferrolm_tokenizer::{special, BpeTrainConfig, Tokenizer};
use ferrolm_train::{BitsPerByte, TokenSource};

/// Train a tokenizer ("bpe" or "char") with the default special tokens on a deterministic
/// stride sample of about `sample_bytes` of the training documents.
pub fn train_tokenizer(kind: &str, vocab_size: usize, sample_bytes: usize, train_docs: &[Document]) -> Result<Tokenizer> {
    let train_bytes: usize = train_docs.iter().map(|d| d.text.len()).sum();
    let stride = (train_bytes / sample_bytes.max(1)).max(1);
    let sample = train_docs.iter().step_by(stride).map(|d| d.text.as_str());
    Ok(if kind == "char" {
        Tokenizer::train_char(sample, &special::defaults())?
    } else {
        Tokenizer::train_bpe(sample, &BpeTrainConfig { vocab_size, min_frequency: 2, special_tokens: special::defaults() })?
    })
}

/// The model vocabulary for a tokenizer: its size rounded up to a multiple of 64.
pub fn padded_vocab(tok: &Tokenizer) -> usize {
    tok.vocab_size().div_ceil(64) * 64
}

/// UTF-8 bytes per id over the padded vocabulary (padding ids stand for no text).
pub fn token_bytes(tok: &Tokenizer, vocab: usize) -> Vec<u32> {
    let mut b = tok.token_bytes();
    b.resize(vocab, 0);
    b
}

/// Encode documents into token shards in `dir` (end-of-text after each) and open them.
pub fn write_shards(tok: &Tokenizer, docs: &[Document], dir: &Path) -> Result<TokenShards> {
    let mut w = ShardWriter::for_tokenizer(dir, tok)?;
    ferrolm_tokenizer::shards::write_texts(tok, docs.iter().map(|d| d.text.as_str()), &mut w, 8 << 20)?;
    w.finish()?;
    TokenShards::open(dir)
}

/// Bits per byte of a unigram model (train-split token frequencies, add-one smoothed) on
/// the held-out tokens, over the same text tokens as the models' bits per byte.
pub fn unigram_bits_per_byte(train: &dyn TokenSource, val: &dyn TokenSource, token_bytes: &[u32]) -> f64 {
    let mut counts = vec![1f64; token_bytes.len()];
    let chunk = 1 << 20;
    let mut buf = Vec::new();
    let mut start = 0;
    while start < train.len() {
        let n = chunk.min(train.len() - start);
        buf.resize(n, 0);
        train.read(start, &mut buf);
        for &t in &buf {
            counts[t as usize] += 1.0;
        }
        start += n;
    }
    let total: f64 = counts.iter().sum();
    let mut acc = BitsPerByte::default();
    buf.resize(val.len(), 0);
    val.read(0, &mut buf);
    for &t in &buf {
        acc.add_target(-(counts[t as usize] / total).ln(), t, token_bytes);
    }
    acc.bits_per_byte()
}
