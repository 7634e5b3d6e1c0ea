//! [`Tokenizer`]: byte-level BPE or character-level, always persisted as a standard Hugging Face
//! `tokenizer.json` that the Python/Rust `tokenizers` libraries load unchanged; WordPiece
//! tokenizer.json files of BERT checkpoints are read too (encoded by the `tokenizers` crate,
//! framed with `[CLS]`/`[SEP]` by their post-processor as transformers frames them), and so are
//! the SentencePiece BPEs of Llama 2, Mistral v0.1, TinyLlama and CodeLlama (`▁` for spaces,
//! `<0xNN>` byte tokens; encoded by the `tokenizers` crate, decoded from a byte string per id
//! like the byte-level kinds).
//!
//! Training and (de)serialisation go through the `tokenizers` crate; encoding runs on ferrolm's
//! own encoder ([`crate::encoder`]) when the file has a shape it reproduces exactly, otherwise on
//! the `tokenizers` crate. Decoding is a table lookup of each id's raw bytes.

use std::collections::{BTreeSet, HashSet};
use std::path::Path;

use anyhow::{anyhow, bail, Context, Result};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tokenizers as hf;

use crate::bytelevel;
use crate::encoder::FastEncoder;
use crate::special;

/// The pre-tokenizer regex of a character-level tokenizer: every character is its own piece.
/// `[\s\S]` rather than `.` because `.` does not match newlines in Oniguruma.
pub(crate) const CHAR_SPLIT_REGEX: &str = r"[\s\S]";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TokenizerKind {
    /// Byte-level BPE (GPT-2 style): lossless on any UTF-8, no unknown tokens.
    Bpe,
    /// One token per character seen in training (nanoGPT's Shakespeare setup); unseen
    /// characters encode to `<|unk|>`.
    Char,
    /// WordPiece (BERT's tokenizer.json: normalizer, pre-tokenizer, `##` continuations,
    /// `[UNK]`); read from Hugging Face checkpoints, never trained here.
    #[serde(rename = "wordpiece")]
    WordPiece,
    /// SentencePiece BPE as transformers converts it (Llama 2, Mistral v0.1, TinyLlama,
    /// CodeLlama): `▁` stands for a space and is put before the text, characters outside the
    /// vocabulary become `<0xNN>` byte tokens (byte fallback), so it is lossless like
    /// byte-level BPE. Read from Hugging Face checkpoints, never trained here.
    #[serde(rename = "sentencepiece")]
    SentencePiece,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BpeTrainConfig {
    /// Total vocabulary size including the 256 byte tokens and the special tokens. Training may
    /// end below it when no pair reaches `min_frequency` any more.
    pub vocab_size: usize,
    /// A pair must occur at least this often to be merged.
    pub min_frequency: u64,
    /// Registered as special tokens with the lowest ids, in this order.
    pub special_tokens: Vec<String>,
}

impl Default for BpeTrainConfig {
    fn default() -> Self {
        Self { vocab_size: 8192, min_frequency: 2, special_tokens: special::defaults() }
    }
}

/// One config section for either kind (e.g. `[tokenizer]` in a run's TOML):
/// `kind = "bpe" | "char"`; `vocab_size` and `min_frequency` apply to BPE only.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TokenizerConfig {
    pub kind: TokenizerKind,
    pub vocab_size: usize,
    pub min_frequency: u64,
    pub special_tokens: Vec<String>,
}

impl Default for TokenizerConfig {
    fn default() -> Self {
        let b = BpeTrainConfig::default();
        Self {
            kind: TokenizerKind::Bpe,
            vocab_size: b.vocab_size,
            min_frequency: b.min_frequency,
            special_tokens: b.special_tokens,
        }
    }
}

/// A trained tokenizer. Cheap to share across threads (`&Tokenizer` is `Sync`).
#[derive(Clone)]
pub struct Tokenizer {
    hf: hf::Tokenizer,
    kind: TokenizerKind,
    /// Raw bytes each id decodes to (special tokens: their literal text). Empty for ids that
    /// exist in no vocabulary (holes).
    id_bytes: Vec<Box<[u8]>>,
    /// Bytes of input text each id stands for: `id_bytes[id].len()`, but 0 for special tokens.
    token_bytes: Vec<u32>,
    special_ids: Vec<u32>,
    eot: Option<u32>,
    /// Spaces the tokenizer.json's decoder strips from the start of a decoded text (its
    /// `Strip(" ", n, 0)` after `Fuse`): SentencePiece puts a `▁` before the text, and
    /// decoding takes it away again. 0 for every other kind.
    strip_leading_spaces: usize,
    /// ferrolm's own encoder when it reproduces this tokenizer.json exactly (see `encoder`).
    fast: Option<FastEncoder>,
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokenizer")
            .field("kind", &self.kind)
            .field("vocab_size", &self.vocab_size())
            .field("special_tokens", &self.special_ids.len())
            .field("fast_encoder", &self.fast.is_some())
            .finish()
    }
}

impl Tokenizer {
    /// Train a byte-level BPE tokenizer (Hugging Face's BPE trainer, GPT-2 pre-tokenizer regex,
    /// all 256 bytes in the initial alphabet, special tokens first).
    pub fn train_bpe<I, S>(texts: I, cfg: &BpeTrainConfig) -> Result<Self>
    where
        I: Iterator<Item = S> + Send,
        S: AsRef<str> + Send,
    {
        let specials = dedup(&cfg.special_tokens);
        if cfg.vocab_size < 256 + specials.len() {
            bail!(
                "tokenizer.vocab_size = {} is too small: byte-level BPE needs 256 byte tokens plus {} special tokens",
                cfg.vocab_size,
                specials.len()
            );
        }
        let mut tok = hf::Tokenizer::new(hf::models::bpe::BPE::default());
        let byte_level = hf::pre_tokenizers::byte_level::ByteLevel::new(false, false, true);
        tok.with_pre_tokenizer(Some(byte_level));
        tok.with_decoder(Some(byte_level));
        let alphabet: HashSet<char> = bytelevel::BYTE_TO_CHAR.iter().copied().collect();
        let mut trainer: hf::models::TrainerWrapper = hf::models::bpe::BpeTrainer::builder()
            .vocab_size(cfg.vocab_size)
            .min_frequency(cfg.min_frequency)
            .special_tokens(specials.iter().map(|s| hf::AddedToken::from(s.clone(), true)).collect())
            .initial_alphabet(alphabet)
            .show_progress(false)
            .build()
            .into();
        tok.train(&mut trainer, texts).map_err(|e| anyhow!("BPE training failed: {e}"))?;
        Self::from_hf(tok).context("building the trained BPE tokenizer")
    }

    /// Train the kind `cfg` names.
    pub fn train<I, S>(texts: I, cfg: &TokenizerConfig) -> Result<Self>
    where
        I: Iterator<Item = S> + Send,
        S: AsRef<str> + Send,
    {
        match cfg.kind {
            TokenizerKind::Bpe => Self::train_bpe(
                texts,
                &BpeTrainConfig {
                    vocab_size: cfg.vocab_size,
                    min_frequency: cfg.min_frequency,
                    special_tokens: cfg.special_tokens.clone(),
                },
            ),
            TokenizerKind::Char => Self::train_char(texts, &cfg.special_tokens),
            TokenizerKind::WordPiece => bail!("tokenizer.kind = \"wordpiece\" is read from BERT checkpoints, not trained here; use \"bpe\" or \"char\""),
            TokenizerKind::SentencePiece => bail!("tokenizer.kind = \"sentencepiece\" is read from Llama 2-family checkpoints, not trained here; use \"bpe\" or \"char\""),
        }
    }

    /// Build a character-level tokenizer: ids 0..n are the distinct characters of `texts` in
    /// code-point order (exactly nanoGPT's `sorted(set(text))`), then `<|unk|>`, then
    /// `special_tokens`. Persisted as a Hugging Face WordLevel tokenizer.json.
    pub fn train_char<I, S>(texts: I, special_tokens: &[String]) -> Result<Self>
    where
        I: Iterator<Item = S>,
        S: AsRef<str>,
    {
        let mut chars = BTreeSet::new();
        for t in texts {
            chars.extend(t.as_ref().chars());
        }
        if chars.is_empty() {
            bail!("cannot build a character tokenizer from empty text");
        }
        let mut vocab = serde_json::Map::new();
        for (i, c) in chars.iter().enumerate() {
            vocab.insert(c.to_string(), json!(i));
        }
        let mut specials = vec![special::UNK.to_string()];
        specials.extend(dedup(special_tokens).into_iter().filter(|s| s != special::UNK));
        let mut added = Vec::new();
        for s in &specials {
            let id = vocab.len();
            vocab.insert(s.clone(), json!(id));
            added.push(json!({
                "id": id, "content": s, "single_word": false, "lstrip": false,
                "rstrip": false, "normalized": false, "special": true
            }));
        }
        let doc = json!({
            "version": "1.0",
            "truncation": null,
            "padding": null,
            "added_tokens": added,
            "normalizer": null,
            "pre_tokenizer": {
                "type": "Split", "pattern": { "Regex": CHAR_SPLIT_REGEX },
                "behavior": "Isolated", "invert": false
            },
            "post_processor": null,
            "decoder": { "type": "Fuse" },
            "model": { "type": "WordLevel", "vocab": vocab, "unk_token": special::UNK }
        });
        let tok: hf::Tokenizer = doc
            .to_string()
            .parse()
            .map_err(|e| anyhow!("building the character tokenizer: {e}"))?;
        Self::from_hf(tok).context("building the character tokenizer")
    }

    /// Build a byte-level BPE tokenizer from OpenAI's GPT-2 files: `encoder.json` (token ->
    /// id) and `vocab.bpe` (merges in rank order after a `#version` line). `<|endoftext|>` is
    /// registered as a special token. The result is an ordinary tokenizer.json tokenizer that
    /// encodes exactly as GPT-2 (and tiktoken's `gpt2`) does.
    pub fn from_gpt2_files(encoder_json: &Path, vocab_bpe: &Path) -> Result<Self> {
        let enc_text = std::fs::read_to_string(encoder_json)
            .with_context(|| format!("cannot read {}", encoder_json.display()))?;
        let vocab: serde_json::Map<String, Value> = serde_json::from_str(&enc_text)
            .with_context(|| format!("{} is not a JSON object of token -> id", encoder_json.display()))?;
        let merges_text = std::fs::read_to_string(vocab_bpe)
            .with_context(|| format!("cannot read {}", vocab_bpe.display()))?;
        let mut merges = Vec::new();
        for (n, line) in merges_text.lines().enumerate() {
            if line.starts_with("#version") || line.is_empty() {
                continue;
            }
            if line.split(' ').count() != 2 {
                bail!("{}:{}: expected two tokens separated by one space, found {line:?}", vocab_bpe.display(), n + 1);
            }
            merges.push(Value::String(line.to_string()));
        }
        let eot = vocab
            .get(special::EOT)
            .and_then(Value::as_u64)
            .with_context(|| format!("{} has no {} entry", encoder_json.display(), special::EOT))?;
        let byte_level = json!({ "type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true });
        let doc = json!({
            "version": "1.0",
            "truncation": null,
            "padding": null,
            "added_tokens": [{
                "id": eot, "content": special::EOT, "single_word": false, "lstrip": false,
                "rstrip": false, "normalized": false, "special": true
            }],
            "normalizer": null,
            "pre_tokenizer": byte_level,
            "post_processor": byte_level,
            "decoder": byte_level,
            "model": {
                "type": "BPE", "dropout": null, "unk_token": null,
                "continuing_subword_prefix": "", "end_of_word_suffix": "",
                "fuse_unk": false, "byte_fallback": false, "ignore_merges": false,
                "vocab": vocab, "merges": merges
            }
        });
        Self::from_json_str(&doc.to_string())
            .with_context(|| format!("building a tokenizer from {} and {}", encoder_json.display(), vocab_bpe.display()))
    }

    /// Load a tokenizer.json (as written by [`Tokenizer::save`] or any byte-level BPE /
    /// character tokenizer.json of the same shape, e.g. GPT-2's). The kind is detected from the
    /// file's model and pre-tokenizer.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read tokenizer file {}", path.display()))?;
        Self::from_json_str(&text).with_context(|| format!("invalid tokenizer file {}", path.display()))
    }

    /// Parse tokenizer.json text.
    pub fn from_json_str(text: &str) -> Result<Self> {
        // Parse as plain JSON first so a truncated/corrupt file gets serde's line/column message.
        let _: Value = serde_json::from_str(text).context("not valid JSON")?;
        let tok: hf::Tokenizer =
            text.parse().map_err(|e| anyhow!("not a Hugging Face tokenizer.json: {e}"))?;
        Self::from_hf(tok)
    }

    /// Wrap a Hugging Face tokenizer of a supported shape.
    pub fn from_hf(hf: hf::Tokenizer) -> Result<Self> {
        let added = hf.get_added_tokens_decoder();
        let model_vocab = hf.get_vocab(false);
        let max_id = model_vocab.values().chain(added.keys()).copied().max();
        let vocab_size = max_id.map_or(0, |m| m as usize + 1);
        // Tables below are indexed by id, and `tokenizers` serialises a vocabulary by walking
        // every id up to the highest: ids far above the number of tokens (a corrupt or hostile
        // file, e.g. one token with id 4e9) would take minutes and gigabytes for nothing.
        let entries = model_vocab.len() + added.len();
        if vocab_size > 2 * entries + 1024 {
            bail!("token ids are not dense: the highest id is {} but there are only {entries} tokens", vocab_size - 1);
        }
        let json: Value = serde_json::from_str(
            &hf.to_string(false).map_err(|e| anyhow!("cannot serialise tokenizer: {e}"))?,
        )?;
        let kind = detect_kind(&json)?;
        let strip_leading_spaces = if kind == TokenizerKind::SentencePiece { sentencepiece_shape(&json)? } else { 0 };
        if kind == TokenizerKind::SentencePiece {
            // Byte fallback needs every byte's token: without one, the `tokenizers` crate
            // fails to encode a character outside the vocabulary (or drops it).
            if let Some(b) = (0..=255u8).find(|b| !model_vocab.contains_key(&format!("<0x{b:02X}>"))) {
                bail!("SentencePiece BPE tokenizer: byte fallback needs all 256 byte tokens, <0x{b:02X}> is not in the vocabulary");
            }
        }
        if kind == TokenizerKind::Char || kind == TokenizerKind::WordPiece {
            // `tokenizers` fails to encode any unknown character when the WordLevel (or
            // WordPiece) unk token is not in the vocabulary (found by fuzzing, issue 18:
            // encode then panicked).
            let unk = json["model"]["unk_token"].as_str().unwrap_or("");
            if !model_vocab.contains_key(unk) {
                bail!("{kind:?} tokenizer: its unk_token {unk:?} is not in its vocabulary");
            }
        }
        let continuing = json["model"]["continuing_subword_prefix"].as_str().unwrap_or("##").to_string();
        let mut id_bytes: Vec<Box<[u8]>> = vec![Box::default(); vocab_size];
        let mut token_bytes = vec![0u32; vocab_size];
        for (token, &id) in &model_vocab {
            if added.contains_key(&id) {
                // Special tokens also sit in the model vocabulary (the trainer puts them there);
                // they are not byte-level strings, handled below.
                continue;
            }
            let bytes = match kind {
                TokenizerKind::Bpe => bytelevel::token_to_bytes(token).ok_or_else(|| {
                    anyhow!("BPE token {token:?} (id {id}) is not in the byte-level alphabet")
                })?,
                TokenizerKind::Char => token.as_bytes().to_vec(),
                // a piece's text (a word's continuation without its `##`); `decode` joins
                // the words with the tokenizer's own decoder
                TokenizerKind::WordPiece => token.strip_prefix(continuing.as_str()).unwrap_or(token).as_bytes().to_vec(),
                TokenizerKind::SentencePiece => sentencepiece_piece_bytes(token),
            };
            token_bytes[id as usize] = bytes.len() as u32;
            id_bytes[id as usize] = bytes.into_boxed_slice();
        }
        let mut special_ids = Vec::new();
        for (&id, tok) in &added {
            // Added tokens are matched in the raw text, so they decode to their literal content.
            id_bytes[id as usize] = tok.content.as_bytes().into();
            token_bytes[id as usize] = if tok.special { 0 } else { tok.content.len() as u32 };
            if tok.special {
                special_ids.push(id);
            }
        }
        special_ids.sort_unstable();
        let eot = hf.token_to_id(special::EOT);
        let fast = FastEncoder::from_tokenizer_json(&json, kind)?;
        Ok(Self { hf, kind, id_bytes, token_bytes, special_ids, eot, strip_leading_spaces, fast })
    }

    /// Write tokenizer.json atomically (a reader never sees a half-written file).
    pub fn save(&self, path: &Path) -> Result<()> {
        let text = self.to_json_string()?;
        ferrolm_common::write_atomic(path, text)
            .with_context(|| format!("cannot write tokenizer file {}", path.display()))
    }

    /// The tokenizer.json text.
    pub fn to_json_string(&self) -> Result<String> {
        self.hf.to_string(true).map_err(|e| anyhow!("cannot serialise tokenizer: {e}"))
    }

    /// Token ids of `text`. No special tokens are added, but special-token strings that occur
    /// in the text (e.g. `<|endoftext|>`) are encoded as those special tokens.
    pub fn encode(&self, text: &str) -> Vec<u32> {
        match &self.fast {
            Some(fast) => fast.encode(text),
            None => self.encode_reference(text),
        }
    }

    /// Encoding by the Hugging Face `tokenizers` crate itself, the reference that ferrolm's
    /// encoder must match id for id (used by tests and the benchmark).
    pub fn encode_reference(&self, text: &str) -> Vec<u32> {
        match self.hf.encode_fast(text, false) {
            Ok(enc) => enc.get_ids().to_vec(),
            // Byte-level BPE covers every byte and the char tokenizer has <|unk|>, so a failure
            // here means a corrupted vocabulary, which from_hf rejects.
            Err(e) => panic!("tokenizer failed to encode text: {e}"),
        }
    }

    /// Ids as the tokenizer.json's post-processor frames them (e.g. Llama 3's leading
    /// `<|begin_of_text|>`): what transformers' `tokenizer(text)` returns. Tokenizers
    /// without a post-processor give [`Tokenizer::encode`]'s ids.
    pub fn encode_with_special_tokens(&self, text: &str) -> Result<Vec<u32>> {
        let enc = self.hf.encode_fast(text, true).map_err(|e| anyhow!("cannot encode the text: {e}"))?;
        Ok(enc.get_ids().to_vec())
    }

    /// Whether texts for an encoder are framed by the tokenizer.json's special tokens, as
    /// transformers' `tokenizer(text)` frames them: BERT's WordPiece (`[CLS] … [SEP]`) and
    /// RoBERTa's byte-level BPE with its `RobertaProcessing` (`<s> … </s>`). Decoders'
    /// tokenizers (a leading `<|begin_of_text|>` and the like) are not encoder frames.
    pub fn frames_encoder_texts(&self) -> bool {
        self.kind == TokenizerKind::WordPiece
            || matches!(self.hf.get_post_processor(), Some(hf::processors::PostProcessorWrapper::Roberta(_) | hf::processors::PostProcessorWrapper::Bert(_)))
    }

    /// The ids the post-processor puts before and after a single text (BERT: `[CLS]` and
    /// `[SEP]`; Llama 3: its `<|begin_of_text|>`; none for ferrolm's own tokenizers), so a
    /// caller that cuts or pads the text's ids can frame them as transformers does.
    pub fn special_frame(&self) -> Result<(Vec<u32>, Vec<u32>)> {
        let probe = "a";
        let bare = self.hf.encode_fast(probe, false).map_err(|e| anyhow!("cannot encode the text: {e}"))?.get_ids().to_vec();
        let framed = self.encode_with_special_tokens(probe)?;
        let at = (0..=framed.len().saturating_sub(bare.len()))
            .find(|&i| framed[i..].starts_with(&bare))
            .with_context(|| "the tokenizer.json's post-processor changes the text's own ids; ferrolm frames texts only with ids before and after them")?;
        Ok((framed[..at].to_vec(), framed[at + bare.len()..].to_vec()))
    }

    /// [`Tokenizer::encode`] on many texts in parallel (rayon's global pool).
    pub fn encode_batch(&self, texts: &[&str]) -> Vec<Vec<u32>> {
        texts.par_iter().map(|t| self.encode(t)).collect()
    }

    /// Text of `ids`, nothing skipped: special tokens appear as their literal text. Byte-level
    /// BPE is lossless: bytes are concatenated, and only byte sequences that are not valid
    /// UTF-8 (a cut multi-byte character) become U+FFFD. Ids outside the vocabulary (a model
    /// whose embedding is padded beyond the tokenizer) also become U+FFFD.
    pub fn decode(&self, ids: &[u32]) -> String {
        if self.kind == TokenizerKind::WordPiece {
            // Words are separated by spaces the pieces do not hold: the tokenizer.json's
            // decoder (WordPiece: `##` joins, cleanup) puts them back. Ids outside the
            // vocabulary become U+FFFD, as below.
            let known: Vec<u32> = ids.iter().map(|&id| if self.id_bytes.get(id as usize).is_some_and(|b| !b.is_empty()) { id } else { u32::MAX }).collect();
            let mut out = String::new();
            for run in known.split_inclusive(|&id| id == u32::MAX) {
                let (body, bad) = match run.last() {
                    Some(&u32::MAX) => (&run[..run.len() - 1], true),
                    _ => (run, false),
                };
                if !body.is_empty() {
                    if !out.is_empty() {
                        out.push(' ');
                    }
                    out.push_str(&self.hf.decode(body, false).unwrap_or_else(|_| "\u{FFFD}".into()));
                }
                if bad {
                    if !out.is_empty() {
                        out.push(' ');
                    }
                    out.push('\u{FFFD}');
                }
            }
            return out;
        }
        let mut bytes = Vec::with_capacity(ids.len() * 4);
        for &id in ids {
            self.push_id_bytes(id, &mut bytes);
        }
        // SentencePiece: the space its `▁` put before the text is not part of it
        let start = bytes.iter().take(self.strip_leading_spaces).take_while(|&&b| b == b' ').count();
        match String::from_utf8(bytes) {
            Ok(mut s) => {
                s.drain(..start);
                s
            }
            Err(e) => String::from_utf8_lossy(&e.as_bytes()[start..]).into_owned(),
        }
    }

    pub(crate) fn push_id_bytes(&self, id: u32, out: &mut Vec<u8>) {
        match self.id_bytes.get(id as usize) {
            Some(b) if !b.is_empty() => out.extend_from_slice(b),
            _ => out.extend_from_slice("\u{FFFD}".as_bytes()),
        }
    }

    /// Raw bytes id `id` decodes to (special tokens: their literal text; SentencePiece
    /// tokens with `▁` as a space and `<0xNN>` as that byte). Concatenated, they are the text
    /// of a continuation; [`Tokenizer::decode`] of a whole text may also strip the space a
    /// SentencePiece tokenizer put before it ([`Tokenizer::strip_leading_spaces`]).
    pub fn id_to_bytes(&self, id: u32) -> Option<&[u8]> {
        self.id_bytes.get(id as usize).map(|b| &b[..])
    }

    /// Whether `id` is a SentencePiece byte-fallback token (`<0xNN>`): the byte of a
    /// character outside the vocabulary. Its byte may repeat a piece's (`<0x20>` and `▁`).
    pub fn is_byte_token(&self, id: u32) -> bool {
        self.kind == TokenizerKind::SentencePiece
            && !self.is_special(id)
            && self.id_bytes.get(id as usize).is_some_and(|b| b.len() == 1)
            && self.hf.id_to_token(id).is_some_and(|t| t.len() == 6 && t.starts_with("<0x") && sentencepiece_piece_bytes(&t).len() == 1)
    }

    /// Spaces [`Tokenizer::decode`] strips from the start of a text: 1 for SentencePiece
    /// tokenizers that put a `▁` before the text (its tokenizer.json's decoder ends in
    /// `Strip(" ", 1, 0)`), 0 otherwise.
    pub fn strip_leading_spaces(&self) -> usize {
        self.strip_leading_spaces
    }

    /// A streaming decoder of a whole text (the pieces join to [`Tokenizer::decode`], leading
    /// space stripping included): an answer, a sample.
    pub fn decode_stream(&self) -> DecodeStream<'_> {
        DecodeStream::new(self)
    }

    /// A streaming decoder of the continuation of a text already shown (a prompt): the
    /// tokens' bytes as they are, so the space before a continuation's first word stays.
    pub fn continuation_stream(&self) -> DecodeStream<'_> {
        DecodeStream::continuation(self)
    }

    /// Number of ids (largest id + 1), including special tokens: the embedding size a model needs.
    pub fn vocab_size(&self) -> usize {
        self.id_bytes.len()
    }

    /// Id of a token string (a vocabulary entry or a special token).
    pub fn token_id(&self, token: &str) -> Option<u32> {
        self.hf.token_to_id(token)
    }

    /// The vocabulary string of an id (byte-level tokens in GPT-2's `Ġ`-style notation).
    pub fn id_to_token(&self, id: u32) -> Option<String> {
        self.hf.id_to_token(id)
    }

    /// Id of `<|endoftext|>`. Panics with a clear message if the tokenizer has none
    /// (use [`Tokenizer::try_eot_id`] to handle that case).
    pub fn eot_id(&self) -> u32 {
        self.eot.unwrap_or_else(|| {
            panic!("this tokenizer has no {} special token; train it with special tokens", special::EOT)
        })
    }

    pub fn try_eot_id(&self) -> Option<u32> {
        self.eot
    }

    /// Ids of all special tokens, ascending.
    pub fn special_ids(&self) -> &[u32] {
        &self.special_ids
    }

    pub fn is_special(&self, id: u32) -> bool {
        self.special_ids.binary_search(&id).is_ok()
    }

    /// Per id, the number of raw text bytes the token stands for (0 for special tokens), so
    /// bits per byte = sum(loss in nats) / ln 2 / sum(token_bytes[target]).
    pub fn token_bytes(&self) -> Vec<u32> {
        self.token_bytes.clone()
    }

    pub fn kind(&self) -> TokenizerKind {
        self.kind
    }

    /// Empty the per-thread pre-token caches of the encoder on every rayon worker and the
    /// calling thread (for benchmarks that must start cold; encoding never needs it).
    pub fn clear_caches(&self) {
        rayon::broadcast(|_| crate::bpe::clear_thread_cache());
        crate::bpe::clear_thread_cache();
    }

    /// Whether encoding runs on ferrolm's own encoder (true for every tokenizer this crate
    /// trains, and for GPT-2-shaped files) rather than the `tokenizers` crate.
    pub fn has_fast_encoder(&self) -> bool {
        self.fast.is_some()
    }

    /// The wrapped Hugging Face tokenizer.
    pub fn hf(&self) -> &hf::Tokenizer {
        &self.hf
    }
}

fn dedup(tokens: &[String]) -> Vec<String> {
    let mut seen = HashSet::new();
    tokens.iter().filter(|t| seen.insert(t.as_str())).cloned().collect()
}

fn detect_kind(json: &Value) -> Result<TokenizerKind> {
    let model = json["model"]["type"].as_str().unwrap_or("<none>");
    let pre = &json["pre_tokenizer"];
    let pre_type = pre["type"].as_str().unwrap_or("<none>");
    match (model, pre_type) {
        ("BPE", "ByteLevel") => {
            let dec = json["decoder"]["type"].as_str().unwrap_or("<none>");
            if dec != "ByteLevel" {
                bail!("byte-level BPE tokenizer.json must use the ByteLevel decoder, found {dec}");
            }
            Ok(TokenizerKind::Bpe)
        }
        // Pretrained byte-level BPEs (Llama 3, Qwen2, SmolLM2) split with their own regex
        // first, then map bytes with a ByteLevel step that does not split again.
        ("BPE", "Sequence") if byte_level_sequence(pre) => {
            let dec = json["decoder"]["type"].as_str().unwrap_or("<none>");
            if dec != "ByteLevel" {
                bail!("byte-level BPE tokenizer.json must use the ByteLevel decoder, found {dec}");
            }
            Ok(TokenizerKind::Bpe)
        }
        ("WordLevel", "Split") if pre["pattern"]["Regex"].as_str() == Some(CHAR_SPLIT_REGEX) => {
            Ok(TokenizerKind::Char)
        }
        // BERT's WordPiece: the `tokenizers` crate runs its normalizer and pre-tokenizer.
        ("WordPiece", _) => Ok(TokenizerKind::WordPiece),
        // SentencePiece BPE (Llama 2 family): spaces become `▁`, by the normalizer (older
        // files) or a Metaspace pre-tokenizer (newer ones); `from_hf` checks the rest.
        ("BPE", _) if metaspace_spaces(json) => Ok(TokenizerKind::SentencePiece),
        _ => bail!(
            "unsupported tokenizer.json: model {model} with pre-tokenizer {pre_type}; ferrolm \
             reads byte-level BPE (model BPE + ByteLevel pre-tokenizer), SentencePiece BPE \
             (model BPE with byte_fallback, `▁` for spaces), WordPiece (BERT) and its own \
             character tokenizers (WordLevel + Split on {CHAR_SPLIT_REGEX:?})"
        ),
    }
}

/// The steps of a normalizer, pre-tokenizer or decoder: a `Sequence`'s, or the one step.
fn steps<'a>(v: &'a Value, list_key: &str) -> Vec<&'a Value> {
    match v["type"].as_str() {
        Some("Sequence") => v[list_key].as_array().map(|a| a.iter().collect()).unwrap_or_default(),
        Some(_) => vec![v],
        None => vec![],
    }
}

/// Whether spaces become SentencePiece's `▁` before the model sees the text: a normalizer
/// `Replace(" ", "▁")` (transformers' legacy Llama conversion, after `Prepend("▁")`) or a
/// `Metaspace` pre-tokenizer with replacement `▁` (the newer conversion).
fn metaspace_spaces(json: &Value) -> bool {
    let by_normalizer = steps(&json["normalizer"], "normalizers")
        .iter()
        .any(|n| n["type"] == "Replace" && n["pattern"]["String"] == " " && n["content"] == "▁");
    let by_pre_tokenizer = steps(&json["pre_tokenizer"], "pretokenizers").iter().any(|p| p["type"] == "Metaspace" && p["replacement"] == "▁");
    by_normalizer || by_pre_tokenizer
}

/// Checks the rest of a SentencePiece BPE tokenizer.json and returns how many spaces its
/// decoder strips from the start of a text. ferrolm decodes such a tokenizer from a byte
/// string per id, which equals the `tokenizers` crate's decode only for the decoder
/// transformers writes: `Replace("▁", " ")`, `ByteFallback`, `Fuse`, then optionally
/// `Strip(" ", n, 0)`; any other shape is refused.
fn sentencepiece_shape(json: &Value) -> Result<usize> {
    if json["model"]["byte_fallback"] != true {
        bail!("SentencePiece BPE tokenizer.json without byte_fallback (characters outside the vocabulary would become unknown tokens) is not supported");
    }
    let decoder = &json["decoder"];
    let names: Vec<String> = steps(decoder, "decoders").iter().map(|d| d["type"].as_str().unwrap_or("?").to_string()).collect();
    let shape = || format!("[{}]", names.join(", "));
    let expected = "Sequence[Replace(\"▁\", \" \"), ByteFallback, Fuse, Strip(\" \", n, 0)]";
    let list = steps(decoder, "decoders");
    let (head, tail) = list.split_at(list.len().min(3));
    let replace_ok = |d: &Value| d["type"] == "Replace" && d["pattern"]["String"] == "▁" && d["content"] == " ";
    if head.len() != 3 || !replace_ok(head[0]) || head[1]["type"] != "ByteFallback" || head[2]["type"] != "Fuse" {
        bail!("SentencePiece BPE tokenizer.json: decoder {} is not supported, expected {expected}", shape());
    }
    match tail {
        [] => Ok(0),
        [strip] if strip["type"] == "Strip" && strip["content"] == " " && strip["stop"] == 0 => {
            let n = strip["start"].as_u64().with_context(|| format!("SentencePiece BPE tokenizer.json: decoder Strip without a start count ({strip})"))?;
            Ok(n as usize)
        }
        _ => bail!("SentencePiece BPE tokenizer.json: decoder {} is not supported, expected {expected}", shape()),
    }
}

/// The bytes a SentencePiece piece stands for: `<0xNN>` is byte NN (what `ByteFallback`
/// decodes: exactly six characters, two hex digits), any other piece its text with `▁` as a
/// space.
fn sentencepiece_piece_bytes(piece: &str) -> Vec<u8> {
    if let Some(hex) = piece.strip_prefix("<0x").and_then(|r| r.strip_suffix('>')) {
        if hex.len() == 2 && hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            if let Ok(b) = u8::from_str_radix(hex, 16) {
                return vec![b];
            }
        }
    }
    piece.replace('▁', " ").into_bytes()
}

/// A pre-tokenizer sequence of regex splits ending in one ByteLevel step.
fn byte_level_sequence(pre: &Value) -> bool {
    let Some(steps) = pre["pretokenizers"].as_array() else { return false };
    let kind = |s: &Value| s["type"].as_str().unwrap_or("").to_string();
    matches!(steps.last().map(kind).as_deref(), Some("ByteLevel")) && steps[..steps.len() - 1].iter().all(|s| kind(s) == "Split")
}

/// Incremental decoding for generation: push ids one at a time and get back the text that
/// became complete. Bytes of a multi-byte character split across tokens are held until the
/// character is complete; concatenating every `push` result and [`DecodeStream::finish`]
/// equals [`Tokenizer::decode`] of all ids.
pub struct DecodeStream<'a> {
    tok: &'a Tokenizer,
    pending: Vec<u8>,
    /// Leading spaces still to strip (SentencePiece's `▁` before a text); 0 once any other
    /// byte has come.
    strip: usize,
}

impl<'a> DecodeStream<'a> {
    /// The stream of a whole text: its pieces join to [`Tokenizer::decode`].
    pub fn new(tok: &'a Tokenizer) -> Self {
        Self { tok, pending: Vec::new(), strip: tok.strip_leading_spaces }
    }

    /// The stream of a continuation of text already shown: every byte of every token, the
    /// space before its first word included (for byte-level tokenizers the same as `new`).
    pub fn continuation(tok: &'a Tokenizer) -> Self {
        Self { tok, pending: Vec::new(), strip: 0 }
    }

    /// Add one id; returns the newly completed text (possibly empty).
    pub fn push(&mut self, id: u32) -> String {
        self.tok.push_id_bytes(id, &mut self.pending);
        while self.strip > 0 && !self.pending.is_empty() {
            if self.pending[0] != b' ' {
                self.strip = 0;
                break;
            }
            self.pending.remove(0);
            self.strip -= 1;
        }
        let mut out = String::new();
        let mut rest: &[u8] = &self.pending;
        loop {
            match std::str::from_utf8(rest) {
                Ok(s) => {
                    out.push_str(s);
                    rest = &[];
                    break;
                }
                Err(e) => {
                    let valid = e.valid_up_to();
                    // SAFETY-free: from_utf8 just validated this prefix.
                    out.push_str(std::str::from_utf8(&rest[..valid]).expect("validated prefix"));
                    match e.error_len() {
                        // An invalid sequence can never be completed: U+FFFD, as decode does.
                        Some(n) => {
                            out.push('\u{FFFD}');
                            rest = &rest[valid + n..];
                        }
                        // An incomplete character at the end: wait for more bytes.
                        None => {
                            rest = &rest[valid..];
                            break;
                        }
                    }
                }
            }
        }
        let keep = rest.len();
        let drop = self.pending.len() - keep;
        self.pending.drain(..drop);
        out
    }

    /// Bytes still waiting for the rest of a character.
    pub fn pending_bytes(&self) -> usize {
        self.pending.len()
    }

    /// Flush: an incomplete trailing character becomes U+FFFD.
    pub fn finish(self) -> String {
        String::from_utf8_lossy(&self.pending).into_owned()
    }
}
