//! ferrolm's own encoder: the hot path of `Tokenizer::encode`.
//!
//! It reproduces the Hugging Face pipeline for the two tokenizer.json shapes ferrolm uses,
//! id for id, and is only enabled when a file has exactly such a shape (otherwise the
//! `tokenizers` crate encodes):
//! 1. special/added tokens are cut out of the raw text first (leftmost-longest match, as
//!    HF's AddedVocabulary does for non-normalized tokens);
//! 2. each remaining piece is encoded by the model: per character (char tokenizers) or by
//!    GPT-2 pre-tokenization + byte-level BPE (see [`crate::bpe`]).

use std::collections::HashMap;

use aho_corasick::{AhoCorasick, AhoCorasickBuilder, MatchKind};
use anyhow::{anyhow, Result};
use serde_json::Value;

use crate::bpe::BpeEncoder;
use crate::tokenizer::TokenizerKind;

#[derive(Clone)]
pub(crate) struct FastEncoder {
    /// Matcher over the added tokens' contents, and the id of each pattern.
    specials: Option<(AhoCorasick, Vec<u32>)>,
    body: Body,
}

#[derive(Clone)]
enum Body {
    Char(Box<CharEncoder>),
    Bpe(Box<BpeEncoder>),
}

impl FastEncoder {
    /// Build from a parsed tokenizer.json, or None when the file uses a feature this encoder
    /// does not reproduce exactly (normalizers, added tokens with strip/normalize options, BPE
    /// dropout, …).
    pub(crate) fn from_tokenizer_json(json: &Value, kind: TokenizerKind) -> Result<Option<Self>> {
        if !json["normalizer"].is_null() || matches!(kind, TokenizerKind::WordPiece | TokenizerKind::SentencePiece) {
            return Ok(None);
        }
        let mut patterns = Vec::new();
        let mut ids = Vec::new();
        for t in json["added_tokens"].as_array().map(|a| &a[..]).unwrap_or(&[]) {
            let flag = |k: &str| t[k].as_bool().unwrap_or(false);
            if flag("normalized") || flag("single_word") || flag("lstrip") || flag("rstrip") {
                return Ok(None);
            }
            let content = t["content"].as_str().ok_or_else(|| anyhow!("added token without content"))?;
            let id = t["id"].as_u64().ok_or_else(|| anyhow!("added token {content:?} without id"))?;
            patterns.push(content.to_string());
            ids.push(id as u32);
        }
        let specials = if patterns.is_empty() {
            None
        } else {
            let ac = AhoCorasickBuilder::new()
                .match_kind(MatchKind::LeftmostLongest)
                .build(&patterns)
                .map_err(|e| anyhow!("cannot build the special-token matcher: {e}"))?;
            Some((ac, ids))
        };
        let body = match kind {
            TokenizerKind::Char => match CharEncoder::from_json(json)? {
                Some(c) => Body::Char(Box::new(c)),
                None => return Ok(None),
            },
            TokenizerKind::Bpe => match BpeEncoder::from_json(json)? {
                Some(b) => Body::Bpe(Box::new(b)),
                None => return Ok(None),
            },
            TokenizerKind::WordPiece | TokenizerKind::SentencePiece => return Ok(None),
        };
        Ok(Some(Self { specials, body }))
    }

    pub(crate) fn encode(&self, text: &str) -> Vec<u32> {
        // Byte-level BPE averages ~4 bytes per token on English; reserve a little more.
        let mut out = Vec::with_capacity(text.len() / 3 + 4);
        self.encode_into(text, &mut out);
        out
    }

    pub(crate) fn encode_into(&self, text: &str, out: &mut Vec<u32>) {
        match &self.specials {
            None => self.encode_plain(text, out),
            Some((ac, ids)) => {
                let mut last = 0;
                for m in ac.find_iter(text) {
                    self.encode_plain(&text[last..m.start()], out);
                    out.push(ids[m.pattern().as_usize()]);
                    last = m.end();
                }
                self.encode_plain(&text[last..], out);
            }
        }
    }

    fn encode_plain(&self, text: &str, out: &mut Vec<u32>) {
        if text.is_empty() {
            return;
        }
        match &self.body {
            Body::Char(c) => c.encode(text, out),
            Body::Bpe(b) => b.encode(text, out),
        }
    }
}

/// WordLevel over single characters, with `<|unk|>` for characters not in the vocabulary.
#[derive(Clone)]
struct CharEncoder {
    ascii: [u32; 128],
    other: HashMap<char, u32>,
    unk: u32,
}

const ABSENT: u32 = u32::MAX;

impl CharEncoder {
    fn from_json(json: &Value) -> Result<Option<Self>> {
        let pre = &json["pre_tokenizer"];
        if pre["behavior"].as_str() != Some("Isolated") || pre["invert"].as_bool() != Some(false) {
            return Ok(None);
        }
        let model = &json["model"];
        let vocab = model["vocab"].as_object().ok_or_else(|| anyhow!("WordLevel model without vocab"))?;
        let Some(unk) = model["unk_token"].as_str().and_then(|u| vocab.get(u)).and_then(Value::as_u64)
        else {
            // Without an unknown token HF fails on unseen characters; leave that to HF.
            return Ok(None);
        };
        let mut ascii = [ABSENT; 128];
        let mut other = HashMap::new();
        for (token, id) in vocab {
            let id = id.as_u64().ok_or_else(|| anyhow!("vocab entry {token:?} has no integer id"))? as u32;
            let mut chars = token.chars();
            if let (Some(c), None) = (chars.next(), chars.next()) {
                if c.is_ascii() {
                    ascii[c as usize] = id;
                } else {
                    other.insert(c, id);
                }
            }
        }
        Ok(Some(Self { ascii, other, unk: unk as u32 }))
    }

    fn encode(&self, text: &str, out: &mut Vec<u32>) {
        for c in text.chars() {
            let id = if c.is_ascii() {
                self.ascii[c as usize]
            } else {
                self.other.get(&c).copied().unwrap_or(ABSENT)
            };
            out.push(if id == ABSENT { self.unk } else { id });
        }
    }
}
