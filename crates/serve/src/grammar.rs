//! Constrained decoding: `response_format` JSON schemas and forced tool calls, compiled by
//! llguidance into a grammar whose matcher gives, before each sampled token, the set of
//! tokens that keep the answer valid.
//!
//! The token trie llguidance walks is built from ferrolm's own tokenizer: each token's
//! bytes; special tokens (and tokens without bytes of their own) get the trie's special
//! marker byte 0xFF in front, which no grammar of text ever matches. The grammar's "end"
//! tokens are the chat's stop tokens (end of turn, end of text): the mask allows them only
//! where the grammar accepts a complete answer.

use std::collections::HashSet;
use std::sync::Arc;

use anyhow::Result;
use ferrolm_tokenizer::Tokenizer;
use llguidance::api::TopLevelGrammar;
use llguidance::toktrie::{ApproximateTokEnv, TokEnv, TokRxInfo, TokTrie, INVALID_TOKEN};
use llguidance::{Matcher, ParserFactory};
use serde_json::Value;

/// Most whitespace characters between two JSON tokens of a constrained answer.
pub const MAX_WHITESPACE: usize = 20;

/// Compiles JSON schemas against one tokenizer and vocabulary (built once, shared).
pub struct Grammars {
    factory: ParserFactory,
}

impl Grammars {
    /// The trie of `vocab` tokens (the model's logit rows; ids the tokenizer lacks are
    /// never allowed), ending where one of `end_tokens` may be sampled.
    pub fn new(tok: &Tokenizer, vocab: usize, end_tokens: &[u32]) -> Result<Self> {
        let words = token_words(tok, vocab);
        let ends: Vec<u32> = end_tokens.iter().copied().filter(|&t| (t as usize) < vocab).collect();
        let info = TokRxInfo::new(vocab as u32, ends.first().copied().unwrap_or(INVALID_TOKEN));
        let mut trie = TokTrie::from(&info, &words);
        if ends.len() > 1 {
            trie = trie.with_eos_tokens(&ends);
        }
        let env: TokEnv = Arc::new(ApproximateTokEnv::new(trie));
        let mut factory = ParserFactory::new_simple(&env)?;
        factory.quiet();
        Ok(Self { factory })
    }

    /// A matcher for answers valid under `schema` (whitespace limited, see
    /// [`with_whitespace_limit`]), or llguidance's reason it cannot be.
    pub fn compile(&self, schema: &Value) -> Result<Constraint, String> {
        self.build(TopLevelGrammar::from_json_schema(with_whitespace_limit(schema.clone())))
    }

    /// A matcher for answers of a Lark grammar (llguidance's dialect: `%json {schema}`
    /// rules embed JSON schemas), or llguidance's reason it cannot be.
    pub fn compile_lark(&self, grammar: &str) -> Result<Constraint, String> {
        self.build(TopLevelGrammar::from_lark(grammar.to_string()))
    }

    fn build(&self, grammar: TopLevelGrammar) -> Result<Constraint, String> {
        let parser = self.factory.create_parser(grammar).map_err(|e| format!("{e:#}"))?;
        let matcher = Matcher::new(Ok(parser));
        match matcher.get_error() {
            Some(e) => Err(e),
            None => Ok(Constraint { matcher }),
        }
    }
}

/// `schema` with whitespace between JSON tokens limited to [`MAX_WHITESPACE`] characters
/// (JSON allows any run, and a weak model may pad with it until the length limit), unless
/// the schema sets llguidance's own options (`x-guidance`).
pub fn with_whitespace_limit(schema: Value) -> Value {
    let mut schema = match schema {
        Value::Bool(true) => serde_json::json!({}),
        s => s,
    };
    if let Some(o) = schema.as_object_mut() {
        o.entry("x-guidance").or_insert_with(|| serde_json::json!({ "whitespace_pattern": format!("[\\x20\\x0A\\x0D\\x09]{{1,{MAX_WHITESPACE}}}") }));
    }
    schema
}

/// Each token's bytes as the trie wants them: text tokens as they are, special tokens,
/// empty tokens, repeats of an earlier token's bytes and ids beyond the tokenizer as
/// `0xFF` + a unique name (never allowed by a JSON grammar). SentencePiece byte-fallback
/// tokens come last in that order: `<0x20>` and `<0x61>` repeat the pieces `▁` and `a`,
/// which are the ones a model writes, so the pieces keep their bytes.
fn token_words(tok: &Tokenizer, vocab: usize) -> Vec<Vec<u8>> {
    let special = |name: String| [&[TokTrie::SPECIAL_TOKEN_MARKER][..], name.as_bytes()].concat();
    let mut words: Vec<Vec<u8>> = vec![Vec::new(); vocab];
    let mut seen = HashSet::new();
    let (bytes, pieces): (Vec<u32>, Vec<u32>) = (0..vocab as u32).partition(|&id| tok.is_byte_token(id));
    for id in pieces.into_iter().chain(bytes) {
        words[id as usize] = if tok.is_special(id) {
            special(tok.id_to_token(id).unwrap_or_else(|| format!("[{id}]")))
        } else {
            match tok.id_to_bytes(id) {
                Some(b) if !b.is_empty() && seen.insert(b.to_vec()) => b.to_vec(),
                _ => special(format!("[{id}]")),
            }
        };
    }
    words
}

/// The grammar state of one sequence.
pub struct Constraint {
    matcher: Matcher,
}

impl Clone for Constraint {
    fn clone(&self) -> Self {
        Self { matcher: self.matcher.deep_clone() }
    }
}

impl std::fmt::Debug for Constraint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Constraint").field("stopped", &self.matcher.is_stopped()).finish()
    }
}

impl Constraint {
    /// Set every logit the grammar does not allow next to -inf. Errors when the grammar
    /// failed or allows nothing.
    pub fn mask(&mut self, logits: &mut [f32]) -> Result<(), String> {
        let allowed = self.matcher.compute_mask().map_err(|e| format!("constrained decoding failed: {e:#}"))?;
        // 32 tokens per word of the bit set: whole words of forbidden tokens at once
        let words = allowed.as_slice();
        let mut any = false;
        for (w, chunk) in logits.chunks_mut(32).enumerate() {
            match words.get(w).copied().unwrap_or(0) {
                0 => chunk.fill(f32::NEG_INFINITY),
                bits => {
                    for (b, l) in chunk.iter_mut().enumerate() {
                        if bits & (1 << b) == 0 {
                            *l = f32::NEG_INFINITY;
                        } else {
                            any |= *l > f32::NEG_INFINITY;
                        }
                    }
                }
            }
        }
        if any {
            Ok(())
        } else {
            Err("constrained decoding failed: the grammar allows no token here".into())
        }
    }

    /// Advance by the sampled token.
    pub fn consume(&mut self, token: u32) -> Result<(), String> {
        self.matcher.consume_token(token).map_err(|e| format!("constrained decoding failed: {e:#}"))
    }

    /// The answer is complete: the grammar accepts it and allows nothing more.
    pub fn is_complete(&self) -> bool {
        self.matcher.is_stopped()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferrolm_tokenizer::{special, BpeTrainConfig};
    use serde_json::json;

    fn tokenizer() -> Tokenizer {
        let text = "the cat and the dog, \"cat\" or \"dog\" {\"a\": 1}\n".repeat(30);
        Tokenizer::train_bpe(std::iter::once(text), &BpeTrainConfig { vocab_size: 290, min_frequency: 2, special_tokens: special::defaults() }).unwrap()
    }

    /// The mask allows exactly the tokens that keep the answer a prefix of a valid one;
    /// end tokens only once it is complete; specials and ids beyond the tokenizer never.
    #[test]
    fn masks_follow_the_grammar_token_by_token() {
        let tok = tokenizer();
        let vocab = tok.vocab_size() + 7; // not a multiple of 32, with rows the tokenizer lacks
        let end = tok.eot_id();
        let g = Grammars::new(&tok, vocab, &[end]).unwrap();
        let mut c = g.compile(&json!({ "enum": ["cat", "cow"] })).unwrap();
        let target = "\"cat\"";
        let mut done = String::new();
        while done.len() < target.len() {
            let mut logits = vec![0f32; vocab];
            c.mask(&mut logits).unwrap();
            let allowed: Vec<u32> = (0..vocab as u32).filter(|&i| logits[i as usize].is_finite()).collect();
            for &i in &allowed {
                assert!((i as usize) < tok.vocab_size() && !tok.is_special(i), "token {i} allowed");
                let b = String::from_utf8_lossy(tok.id_to_bytes(i).unwrap()).into_owned();
                let next = format!("{done}{b}");
                assert!(["\"cat\"", "\"cow\""].iter().any(|v| v.starts_with(&next)), "{next:?} allowed after {done:?}");
            }
            // take the longest allowed token that continues towards "cat"
            let t = *allowed
                .iter()
                .filter(|&&i| target[done.len()..].starts_with(std::str::from_utf8(tok.id_to_bytes(i).unwrap()).unwrap()))
                .max_by_key(|&&i| tok.id_to_bytes(i).unwrap().len())
                .unwrap();
            assert!(!c.is_complete());
            c.consume(t).unwrap();
            done.push_str(std::str::from_utf8(tok.id_to_bytes(t).unwrap()).unwrap());
        }
        assert!(c.is_complete(), "\"cat\" is a whole answer");
        // the end token is allowed exactly where the answer could end: not after "[" or "[1",
        // after "1" as a whole answer (which "12" could still continue)
        let ends_after = |schema: Value, pieces: &[&str]| {
            let mut c = g.compile(&schema).unwrap();
            for p in pieces {
                c.consume(tok.encode(p)[0]).unwrap();
            }
            assert!(!c.is_complete());
            let mut logits = vec![0f32; vocab];
            c.mask(&mut logits).unwrap();
            logits[end as usize].is_finite()
        };
        let array = json!({ "type": "array", "items": { "type": "integer" } });
        assert!(!ends_after(array.clone(), &["["]));
        assert!(!ends_after(array, &["[", "1"]));
        assert!(ends_after(json!({ "type": "integer" }), &["1"]));
        // whitespace between JSON tokens is bounded: after 20 spaces, no more
        let space = tok.encode(" ")[0];
        assert_eq!(tok.id_to_bytes(space).unwrap(), b" ");
        let mut c = g.compile(&json!({ "type": "object" })).unwrap();
        c.consume(tok.encode("{")[0]).unwrap();
        for i in 0..=MAX_WHITESPACE {
            let mut logits = vec![0f32; vocab];
            c.mask(&mut logits).unwrap();
            assert_eq!(logits[space as usize].is_finite(), i < MAX_WHITESPACE, "after {i} spaces");
            if i < MAX_WHITESPACE {
                c.consume(space).unwrap();
            }
        }
        // a schema that cannot be compiled is an error with llguidance's reason
        assert!(g.compile(&json!({ "$ref": "#/$defs/none" })).unwrap_err().contains("none"));
    }
}
