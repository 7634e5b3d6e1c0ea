//! The [`Tokenizer`]: byte-level BPE (Hugging Face `tokenizers`) or characters.

use std::collections::HashMap;
use std::path::Path;
use std::str::FromStr;

use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use tokenizers::models::bpe::{BpeTrainerBuilder, BPE};
use tokenizers::models::TrainerWrapper;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::AddedToken;

use crate::bytelevel::{byte_to_char, char_to_byte};
use crate::special;
use crate::{Result, TokenizerError};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TokenizerKind {
    Bpe,
    Char,
}

#[derive(Debug, Clone)]
pub struct BpeTrainConfig {
    pub vocab_size: usize,
    pub min_frequency: u64,
    pub special_tokens: Vec<String>,
}

impl Default for BpeTrainConfig {
    fn default() -> Self {
        Self { vocab_size: 8192, min_frequency: 2, special_tokens: special::defaults() }
    }
}

/// A character vocabulary, stored as `{"type": "ferrolm-char", ...}`.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct CharVocab {
    #[serde(rename = "type")]
    kind: String,
    special_tokens: Vec<String>,
    chars: Vec<char>,
}

const CHAR_TYPE: &str = "ferrolm-char";

#[derive(Clone)]
enum Inner {
    Bpe(Box<tokenizers::Tokenizer>),
    Char { vocab: CharVocab, index: HashMap<char, u32>, unk: u32 },
}

#[derive(Clone)]
pub struct Tokenizer {
    inner: Inner,
    /// Raw bytes of every token (special tokens: their literal text), for decoding.
    id_bytes: Vec<Vec<u8>>,
    /// Whether each id is a special token.
    is_special: Vec<bool>,
    specials: HashMap<String, u32>,
}

fn hf_err(e: impl std::fmt::Display) -> TokenizerError {
    TokenizerError::Hf(e.to_string())
}

impl Tokenizer {
    /// Train byte-level BPE: GPT-2's pre-tokenizer regex, every byte in the initial
    /// alphabet (so any UTF-8 text round-trips), special tokens first in id order.
    pub fn train_bpe<I, S>(texts: I, cfg: &BpeTrainConfig) -> Result<Self>
    where
        I: Iterator<Item = S> + Send,
        S: AsRef<str> + Send,
    {
        let specials: Vec<AddedToken> = cfg.special_tokens.iter().map(|s| AddedToken::from(s.clone(), true)).collect();
        let mut trainer: TrainerWrapper = BpeTrainerBuilder::new()
            .show_progress(false)
            .vocab_size(cfg.vocab_size)
            .min_frequency(cfg.min_frequency)
            .special_tokens(specials.clone())
            .initial_alphabet(ByteLevel::alphabet().into_iter().collect())
            .build()
            .into();
        let mut tk = tokenizers::Tokenizer::new(BPE::default());
        tk.with_pre_tokenizer(Some(ByteLevel::new(false, true, true)));
        tk.with_decoder(Some(ByteLevel::default()));
        tk.train(&mut trainer, texts).map_err(hf_err)?;
        tk.add_special_tokens(&specials);
        Ok(Self::from_hf(tk))
    }

    /// A character vocabulary: the special tokens, `<|unk|>`, then every character seen, sorted.
    pub fn train_char<I, S>(texts: I, special_tokens: &[String]) -> Result<Self>
    where
        I: Iterator<Item = S>,
        S: AsRef<str>,
    {
        let mut set = std::collections::BTreeSet::new();
        for t in texts {
            set.extend(t.as_ref().chars());
        }
        let mut specials = special_tokens.to_vec();
        if !specials.iter().any(|s| s == special::UNK) {
            specials.push(special::UNK.to_string());
        }
        Ok(Self::from_char(CharVocab { kind: CHAR_TYPE.into(), special_tokens: specials, chars: set.into_iter().collect() }))
    }

    fn from_hf(tk: tokenizers::Tokenizer) -> Self {
        let n = tk.get_vocab_size(true);
        let mut id_bytes = vec![Vec::new(); n];
        let mut is_special = vec![false; n];
        let mut specials = HashMap::new();
        let added: HashMap<u32, bool> = tk.get_added_tokens_decoder().iter().map(|(id, t)| (*id, t.special)).collect();
        for (tok, id) in tk.get_vocab(true) {
            let id = id as usize;
            if id >= n {
                continue;
            }
            if added.get(&(id as u32)).copied().unwrap_or(false) {
                is_special[id] = true;
                id_bytes[id] = tok.as_bytes().to_vec();
                specials.insert(tok, id as u32);
            } else {
                // Byte-level vocabulary: one character per byte.
                id_bytes[id] = tok.chars().map(|c| char_to_byte(c).unwrap_or(b'?')).collect();
            }
        }
        Self { inner: Inner::Bpe(Box::new(tk)), id_bytes, is_special, specials }
    }

    fn from_char(vocab: CharVocab) -> Self {
        let mut id_bytes = Vec::new();
        let mut is_special = Vec::new();
        let mut specials = HashMap::new();
        for s in &vocab.special_tokens {
            specials.insert(s.clone(), id_bytes.len() as u32);
            id_bytes.push(s.as_bytes().to_vec());
            is_special.push(true);
        }
        let mut index = HashMap::new();
        for &c in &vocab.chars {
            index.insert(c, id_bytes.len() as u32);
            let mut b = [0u8; 4];
            id_bytes.push(c.encode_utf8(&mut b).as_bytes().to_vec());
            is_special.push(false);
        }
        let unk = specials[special::UNK];
        Self { inner: Inner::Char { vocab, index, unk }, id_bytes, is_special, specials }
    }

    /// Load `tokenizer.json` (Hugging Face format) or a ferrolm character vocabulary.
    pub fn from_file(path: &Path) -> Result<Self> {
        let file_err = |m: String| TokenizerError::File { path: path.to_path_buf(), message: m };
        let text = std::fs::read_to_string(path).map_err(|e| file_err(format!("cannot read tokenizer: {e}")))?;
        let value: serde_json::Value = serde_json::from_str(&text).map_err(|e| file_err(format!("not valid JSON: {e}")))?;
        if value.get("type").and_then(|t| t.as_str()) == Some(CHAR_TYPE) {
            let vocab: CharVocab = serde_json::from_value(value).map_err(|e| file_err(format!("bad character vocabulary: {e}")))?;
            return Ok(Self::from_char(vocab));
        }
        let tk = tokenizers::Tokenizer::from_str(&text).map_err(|e| file_err(format!("not a tokenizer.json: {e}")))?;
        Ok(Self::from_hf(tk))
    }

    /// Write atomically.
    pub fn save(&self, path: &Path) -> Result<()> {
        let text = match &self.inner {
            Inner::Bpe(tk) => tk.to_string(true).map_err(hf_err)?,
            Inner::Char { vocab, .. } => serde_json::to_string_pretty(vocab).expect("serialisable"),
        };
        ferrolm_common::write_atomic(path, text)
            .map_err(|e| TokenizerError::File { path: path.to_path_buf(), message: format!("cannot write: {e}") })
    }

    pub fn kind(&self) -> TokenizerKind {
        match self.inner {
            Inner::Bpe(_) => TokenizerKind::Bpe,
            Inner::Char { .. } => TokenizerKind::Char,
        }
    }

    /// Token ids of `text`. No special tokens are added, but special-token strings that
    /// occur in the text are encoded as those tokens.
    pub fn encode(&self, text: &str) -> Vec<u32> {
        match &self.inner {
            Inner::Bpe(tk) => tk.encode_fast(text, false).map(|e| e.get_ids().to_vec()).unwrap_or_default(),
            Inner::Char { index, unk, .. } => self.encode_chars(text, index, *unk),
        }
    }

    fn encode_chars(&self, text: &str, index: &HashMap<char, u32>, unk: u32) -> Vec<u32> {
        let mut out = Vec::with_capacity(text.len());
        let mut rest = text;
        'outer: while let Some(c) = rest.chars().next() {
            if c == '<' {
                for (s, &id) in &self.specials {
                    if rest.starts_with(s.as_str()) {
                        out.push(id);
                        rest = &rest[s.len()..];
                        continue 'outer;
                    }
                }
            }
            out.push(index.get(&c).copied().unwrap_or(unk));
            rest = &rest[c.len_utf8()..];
        }
        out
    }

    /// Encode many texts in parallel.
    pub fn encode_batch(&self, texts: &[&str]) -> Vec<Vec<u32>> {
        texts.par_iter().map(|t| self.encode(t)).collect()
    }

    /// Text of `ids`; byte sequences that are not valid UTF-8 become U+FFFD.
    pub fn decode(&self, ids: &[u32]) -> String {
        let mut bytes = Vec::new();
        for &id in ids {
            if let Some(b) = self.id_bytes.get(id as usize) {
                bytes.extend_from_slice(b);
            }
        }
        String::from_utf8_lossy(&bytes).into_owned()
    }

    pub fn vocab_size(&self) -> usize {
        self.id_bytes.len()
    }

    pub fn token_id(&self, token: &str) -> Option<u32> {
        if let Some(&id) = self.specials.get(token) {
            return Some(id);
        }
        match &self.inner {
            Inner::Bpe(tk) => tk.token_to_id(&token.bytes().map(|b| byte_to_char()[b as usize]).collect::<String>()),
            Inner::Char { index, .. } => {
                let mut it = token.chars();
                match (it.next(), it.next()) {
                    (Some(c), None) => index.get(&c).copied(),
                    _ => None,
                }
            }
        }
    }

    /// The end-of-text id (document separator).
    pub fn eot_id(&self) -> u32 {
        *self.specials.get(special::EOT).expect("every ferrolm tokenizer has <|endoftext|>; this tokenizer.json lacks it")
    }

    pub fn is_special(&self, id: u32) -> bool {
        self.is_special.get(id as usize).copied().unwrap_or(false)
    }

    /// Bytes of text each token stands for (0 for special tokens).
    pub fn token_bytes(&self) -> Vec<u32> {
        self.id_bytes.iter().zip(&self.is_special).map(|(b, &s)| if s { 0 } else { b.len() as u32 }).collect()
    }

    /// The raw bytes of one token.
    pub fn id_to_bytes(&self, id: u32) -> &[u8] {
        self.id_bytes.get(id as usize).map(|v| v.as_slice()).unwrap_or(&[])
    }

    /// The underlying Hugging Face tokenizer, for BPE.
    pub fn hf(&self) -> Option<&tokenizers::Tokenizer> {
        match &self.inner {
            Inner::Bpe(tk) => Some(tk),
            Inner::Char { .. } => None,
        }
    }
}

/// Incremental decoding for streaming generation: tokens may end in the middle of a
/// multi-byte character, so bytes are held back until they form complete UTF-8.
pub struct DecodeStream<'a> {
    tok: &'a Tokenizer,
    pending: Vec<u8>,
}

impl<'a> DecodeStream<'a> {
    pub fn new(tok: &'a Tokenizer) -> Self {
        Self { tok, pending: Vec::new() }
    }

    /// Add a token; returns the text that is now complete (possibly empty).
    pub fn push(&mut self, id: u32) -> String {
        self.pending.extend_from_slice(self.tok.id_to_bytes(id));
        let valid = match std::str::from_utf8(&self.pending) {
            Ok(_) => self.pending.len(),
            Err(e) => match e.error_len() {
                // An invalid sequence that no later byte can complete: emit it (as U+FFFD).
                Some(_) => self.pending.len(),
                None => e.valid_up_to(),
            },
        };
        let out = String::from_utf8_lossy(&self.pending[..valid]).into_owned();
        self.pending.drain(..valid);
        out
    }

    /// Whatever is left (an incomplete character becomes U+FFFD).
    pub fn finish(&mut self) -> String {
        let out = String::from_utf8_lossy(&self.pending).into_owned();
        self.pending.clear();
        out
    }
}
