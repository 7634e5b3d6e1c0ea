//! Byte-level BPE encoding with Hugging Face's exact merge semantics, built for speed.
//!
//! A pre-token's bytes start as the 256 byte tokens; then, repeatedly, the adjacent pair with
//! the lowest merge rank is merged, the leftmost one on ties, until no adjacent pair has a
//! merge. That is what `tokenizers`' `Word::merge_all` computes with its priority queue (it
//! orders by rank, then position), so the ids are identical.
//!
//! Speed comes from (a) the hand-written pre-tokenizer in [`crate::pretok`], (b) a per-thread
//! cache from pre-token bytes to ids (natural text repeats its words constantly), and (c) for
//! uncached pre-tokens a flat merge loop over an array of pair ranks (tiktoken's approach:
//! after each merge only the two neighbouring ranks change), with a heap-based loop for very
//! long pre-tokens where the quadratic scan would hurt.

use std::cell::RefCell;
use std::collections::BinaryHeap;
use std::cmp::Reverse;
use std::sync::atomic::{AtomicU64, Ordering};

use ahash::AHashMap;
use anyhow::{anyhow, bail, Result};
use serde_json::Value;

use crate::bytelevel;
use crate::pretok;

/// No merge for this pair.
const NO_MERGE: u64 = u64::MAX;
/// Pre-tokens longer than this many bytes use the heap-based merge loop.
const SCAN_MAX_LEN: usize = 128;
/// Pre-tokens longer than this are not cached (they rarely repeat).
const CACHE_MAX_LEN: usize = 256;
/// The per-thread cache is emptied when it reaches this many entries.
const CACHE_MAX_ENTRIES: usize = 1 << 19;

static NEXT_ENCODER_ID: AtomicU64 = AtomicU64::new(1);

#[derive(Clone)]
pub(crate) struct BpeEncoder {
    /// Identifies this vocabulary in the per-thread caches.
    cache_key: u64,
    byte_ids: [u32; 256],
    /// (left id, right id) packed into a u64 -> (rank << 32 | merged id).
    merges: AHashMap<u64, u64>,
    /// `ignore_merges`: whole pre-tokens found in the vocabulary are one token.
    whole_words: Option<AHashMap<Box<[u8]>, u32>>,
}

struct WordCache {
    owner: u64,
    map: AHashMap<Box<[u8]>, Box<[u32]>>,
}

thread_local! {
    static CACHE: RefCell<WordCache> =
        RefCell::new(WordCache { owner: 0, map: AHashMap::new() });
}

/// Empty this thread's pre-token cache (benchmarks start cold with it).
pub(crate) fn clear_thread_cache() {
    CACHE.with(|c| {
        let mut c = c.borrow_mut();
        c.map = AHashMap::new();
        c.owner = 0;
    });
}

#[inline(always)]
fn pair_key(a: u32, b: u32) -> u64 {
    ((a as u64) << 32) | b as u64
}

impl BpeEncoder {
    /// Build from a tokenizer.json whose model is BPE with a ByteLevel pre-tokenizer, or None
    /// if it uses an option this encoder does not reproduce.
    pub(crate) fn from_json(json: &Value) -> Result<Option<Self>> {
        let pre = &json["pre_tokenizer"];
        if pre["type"].as_str() != Some("ByteLevel")
            || pre["add_prefix_space"].as_bool().unwrap_or(true)
            || !pre["use_regex"].as_bool().unwrap_or(true)
        {
            return Ok(None);
        }
        let model = &json["model"];
        let dropout_off = model["dropout"].is_null() || model["dropout"].as_f64() == Some(0.0);
        let empty_or_null = |k: &str| model[k].is_null() || model[k].as_str() == Some("");
        if !dropout_off
            || !empty_or_null("continuing_subword_prefix")
            || !empty_or_null("end_of_word_suffix")
            || model["byte_fallback"].as_bool().unwrap_or(false)
        {
            return Ok(None);
        }
        let vocab = model["vocab"].as_object().ok_or_else(|| anyhow!("BPE model without vocab"))?;
        let mut ids: AHashMap<&str, u32> = AHashMap::with_capacity(vocab.len());
        for (token, id) in vocab {
            let id = id.as_u64().ok_or_else(|| anyhow!("vocab entry {token:?} has no integer id"))?;
            ids.insert(token.as_str(), id as u32);
        }
        let mut byte_ids = [0u32; 256];
        for b in 0..=255u8 {
            match ids.get(bytelevel::bytes_to_token(&[b]).as_str()) {
                Some(&id) => byte_ids[b as usize] = id,
                // A byte without a token would need <unk> handling; leave that to HF.
                None => return Ok(None),
            }
        }
        let raw_merges = model["merges"].as_array().ok_or_else(|| anyhow!("BPE model without merges"))?;
        let mut merges = AHashMap::with_capacity(raw_merges.len());
        for (rank, m) in raw_merges.iter().enumerate() {
            // Two formats: "a b" (legacy) and ["a", "b"] (tokenizers >= 0.20).
            let (a, b) = match m {
                Value::String(s) => s
                    .split_once(' ')
                    .ok_or_else(|| anyhow!("merge #{rank} {s:?} is not two tokens separated by a space"))?,
                Value::Array(v) if v.len() == 2 => match (v[0].as_str(), v[1].as_str()) {
                    (Some(a), Some(b)) => (a, b),
                    _ => bail!("merge #{rank} is not a pair of strings"),
                },
                _ => bail!("merge #{rank} has an unknown format"),
            };
            let id_of = |t: &str| ids.get(t).copied().ok_or_else(|| anyhow!("merge #{rank} uses {t:?}, which is not in the vocabulary"));
            let (ia, ib) = (id_of(a)?, id_of(b)?);
            let merged = format!("{a}{b}");
            let new_id = id_of(&merged)?;
            // Later duplicates overwrite earlier ones, as in HF's map construction.
            merges.insert(pair_key(ia, ib), ((rank as u64) << 32) | new_id as u64);
        }
        let whole_words = if model["ignore_merges"].as_bool().unwrap_or(false) {
            let mut m = AHashMap::with_capacity(vocab.len());
            for (token, &id) in &ids {
                if let Some(bytes) = bytelevel::token_to_bytes(token) {
                    m.insert(bytes.into_boxed_slice(), id);
                }
            }
            Some(m)
        } else {
            None
        };
        pretok::warm_up();
        Ok(Some(Self {
            cache_key: NEXT_ENCODER_ID.fetch_add(1, Ordering::Relaxed),
            byte_ids,
            merges,
            whole_words,
        }))
    }

    /// Append the ids of `text` (no special tokens in it) to `out`.
    pub(crate) fn encode(&self, text: &str, out: &mut Vec<u32>) {
        CACHE.with(|cache| {
            let mut cache = cache.borrow_mut();
            if cache.owner != self.cache_key {
                cache.map.clear();
                cache.owner = self.cache_key;
            }
            pretok::split_gpt2(text, |piece| self.encode_piece(piece.as_bytes(), &mut cache.map, out));
        });
    }

    #[inline]
    fn encode_piece(&self, bytes: &[u8], cache: &mut AHashMap<Box<[u8]>, Box<[u32]>>, out: &mut Vec<u32>) {
        if bytes.len() == 1 {
            out.push(self.byte_ids[bytes[0] as usize]);
            return;
        }
        if let Some(whole) = &self.whole_words {
            if let Some(&id) = whole.get(bytes) {
                out.push(id);
                return;
            }
        }
        if bytes.len() > CACHE_MAX_LEN {
            self.merge_into(bytes, out);
            return;
        }
        if let Some(ids) = cache.get(bytes) {
            out.extend_from_slice(ids);
            return;
        }
        let start = out.len();
        self.merge_into(bytes, out);
        if cache.len() >= CACHE_MAX_ENTRIES {
            cache.clear();
        }
        cache.insert(bytes.into(), out[start..].into());
    }

    #[inline(always)]
    fn merge_of(&self, a: u32, b: u32) -> u64 {
        self.merges.get(&pair_key(a, b)).copied().unwrap_or(NO_MERGE)
    }

    /// Run the BPE merges on `bytes` and append the resulting ids.
    pub(crate) fn merge_into(&self, bytes: &[u8], out: &mut Vec<u32>) {
        if bytes.len() > SCAN_MAX_LEN {
            self.merge_heap(bytes, out);
        } else {
            self.merge_scan(bytes, out);
        }
    }

    /// Quadratic but cache-friendly: `ranks[i]` is the merge of symbols i and i+1.
    pub(crate) fn merge_scan(&self, bytes: &[u8], out: &mut Vec<u32>) {
        let mut syms: Vec<u32> = bytes.iter().map(|&b| self.byte_ids[b as usize]).collect();
        let mut ranks: Vec<u64> = syms.windows(2).map(|w| self.merge_of(w[0], w[1])).collect();
        loop {
            // Leftmost minimum: the rank sits in the high bits, so comparing whole u64s
            // compares ranks (one rank has one merged id).
            let mut best = NO_MERGE;
            let mut at = 0;
            for (i, &r) in ranks.iter().enumerate() {
                if r < best {
                    best = r;
                    at = i;
                }
            }
            if best == NO_MERGE {
                break;
            }
            syms[at] = best as u32;
            syms.remove(at + 1);
            ranks.remove(at);
            if at < ranks.len() {
                ranks[at] = self.merge_of(syms[at], syms[at + 1]);
            }
            if at > 0 {
                ranks[at - 1] = self.merge_of(syms[at - 1], syms[at]);
            }
        }
        out.extend_from_slice(&syms);
    }

    /// O(n log n): a min-heap of (rank, position) over a doubly linked list of symbols; stale
    /// heap entries are recognised because the pair at their position no longer merges to
    /// their id.
    pub(crate) fn merge_heap(&self, bytes: &[u8], out: &mut Vec<u32>) {
        let n = bytes.len();
        let mut sym: Vec<u32> = bytes.iter().map(|&b| self.byte_ids[b as usize]).collect();
        let mut next: Vec<usize> = (1..=n).collect(); // n = none
        let mut prev: Vec<usize> = (0..n).map(|i| i.wrapping_sub(1)).collect(); // usize::MAX = none
        let mut alive = vec![true; n];
        let mut heap = BinaryHeap::with_capacity(n);
        for i in 0..n - 1 {
            let m = self.merge_of(sym[i], sym[i + 1]);
            if m != NO_MERGE {
                heap.push(Reverse((m, i)));
            }
        }
        while let Some(Reverse((m, i))) = heap.pop() {
            if !alive[i] || next[i] >= n {
                continue;
            }
            let j = next[i];
            if self.merge_of(sym[i], sym[j]) != m {
                continue; // stale: a neighbour changed since this entry was pushed
            }
            sym[i] = m as u32;
            alive[j] = false;
            next[i] = next[j];
            if next[j] < n {
                prev[next[j]] = i;
            }
            if prev[i] != usize::MAX {
                let p = prev[i];
                let mp = self.merge_of(sym[p], sym[i]);
                if mp != NO_MERGE {
                    heap.push(Reverse((mp, p)));
                }
            }
            if next[i] < n {
                let mn = self.merge_of(sym[i], sym[next[i]]);
                if mn != NO_MERGE {
                    heap.push(Reverse((mn, i)));
                }
            }
        }
        let mut i = 0;
        while i < n {
            out.push(sym[i]);
            i = next[i];
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{BpeTrainConfig, Tokenizer};

    fn encoder() -> (Tokenizer, BpeEncoder) {
        let text = "aaaa bbbb aaab abab the then there 0000 1111 ====  \n\n   ".repeat(40);
        let tok = Tokenizer::train_bpe(
            std::iter::once(text),
            &BpeTrainConfig { vocab_size: 320, min_frequency: 2, special_tokens: vec![] },
        )
        .unwrap();
        let json: Value = serde_json::from_str(&tok.to_json_string().unwrap()).unwrap();
        let enc = BpeEncoder::from_json(&json).unwrap().expect("supported shape");
        (tok, enc)
    }

    #[test]
    fn scan_and_heap_merge_loops_agree() {
        let (_, enc) = encoder();
        let alphabet = b"ab01= \nthe";
        let mut x: u64 = 7;
        for len in (2..300).step_by(3) {
            for _ in 0..5 {
                let bytes: Vec<u8> = (0..len)
                    .map(|_| {
                        x ^= x << 13;
                        x ^= x >> 7;
                        x ^= x << 17;
                        alphabet[(x % alphabet.len() as u64) as usize]
                    })
                    .collect();
                let (mut a, mut b) = (Vec::new(), Vec::new());
                enc.merge_scan(&bytes, &mut a);
                enc.merge_heap(&bytes, &mut b);
                assert_eq!(a, b, "{:?}", String::from_utf8_lossy(&bytes));
            }
        }
    }

    #[test]
    fn long_pretokens_match_hf() {
        let (tok, _) = encoder();
        for text in [
            " ".repeat(1000) + "x",
            "a".repeat(777),
            "0123456789".repeat(50),
            "=".repeat(300),
            format!("{}\n{}", "ab".repeat(200), "\n".repeat(150)),
        ] {
            assert_eq!(tok.encode(&text), tok.encode_reference(&text));
        }
    }
}
