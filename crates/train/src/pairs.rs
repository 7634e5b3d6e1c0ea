//! Sequence-to-sequence data: input/target pairs from JSONL (configurable field names),
//! tokenized with length caps, and the real-text task of the architecture experiment:
//! a Rust doc comment → the signature of the item it documents.

use std::io::BufRead;
use std::path::Path;

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

use crate::task::PairExample;

/// `[pairs]`: train on input/target pairs instead of a token stream.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PairsConfig {
    /// JSONL file of training pairs.
    pub train: String,
    /// JSONL file of held-out pairs.
    pub val: String,
    pub input_field: String,
    pub target_field: String,
    /// Inputs longer than this many tokens keep their first tokens (counted and reported).
    pub max_input_tokens: usize,
    /// Targets longer than this keep their first tokens (counted and reported).
    pub max_target_tokens: usize,
}

impl Default for PairsConfig {
    fn default() -> Self {
        Self {
            train: String::new(),
            val: String::new(),
            input_field: "input".into(),
            target_field: "target".into(),
            max_input_tokens: 96,
            max_target_tokens: 30,
        }
    }
}

impl PairsConfig {
    /// Both caps plus `<sep>` and `<eot>` must fit the model's context.
    pub fn validate(&self, max_seq_len: usize) -> Result<()> {
        if self.max_input_tokens == 0 || self.max_target_tokens == 0 {
            bail!("pairs.max_input_tokens and pairs.max_target_tokens must be positive");
        }
        if self.max_input_tokens + self.max_target_tokens + 2 > max_seq_len {
            bail!(
                "pairs.max_input_tokens ({}) + pairs.max_target_tokens ({}) + 2 exceeds model.max_seq_len ({max_seq_len})",
                self.max_input_tokens,
                self.max_target_tokens
            );
        }
        Ok(())
    }
}

/// What happened to the records of a pair file.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PairStats {
    pub pairs: usize,
    /// Records whose input or target was empty (skipped; an error if all are).
    pub empty: usize,
    pub truncated_inputs: usize,
    pub truncated_targets: usize,
}

/// Read `(input, target)` strings from a JSONL file. A line that is not a JSON object or
/// lacks a field is an error naming the file and line; empty strings are counted.
pub fn read_jsonl_pairs(path: &Path, input_field: &str, target_field: &str) -> Result<Vec<(String, String)>> {
    let f = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut out = Vec::new();
    for (i, line) in std::io::BufReader::new(f).lines().enumerate() {
        let line = line.with_context(|| format!("reading {}:{}", path.display(), i + 1))?;
        if line.trim().is_empty() {
            continue;
        }
        let v: serde_json::Value =
            serde_json::from_str(&line).with_context(|| format!("{}:{}: not a JSON object", path.display(), i + 1))?;
        let field = |name: &str| -> Result<String> {
            v.get(name)
                .and_then(|x| x.as_str())
                .map(str::to_string)
                .with_context(|| format!("{}:{}: no string field \"{name}\"", path.display(), i + 1))
        };
        out.push((field(input_field)?, field(target_field)?));
    }
    Ok(out)
}

/// Write pairs as JSONL with the given field names (atomically).
pub fn write_jsonl_pairs(path: &Path, pairs: &[(String, String)], input_field: &str, target_field: &str) -> Result<()> {
    let mut s = String::new();
    for (i, t) in pairs {
        let mut obj = serde_json::Map::new();
        obj.insert(input_field.into(), i.clone().into());
        obj.insert(target_field.into(), t.clone().into());
        s.push_str(&serde_json::Value::Object(obj).to_string());
        s.push('\n');
    }
    ferrolm_common::write_atomic(path, s)?;
    Ok(())
}

/// Tokenize pairs, keeping the first `max_input` / `max_target` tokens.
pub fn tokenize_pairs(
    tok: &ferrolm_tokenizer::Tokenizer,
    pairs: &[(String, String)],
    max_input: usize,
    max_target: usize,
) -> (Vec<PairExample>, PairStats) {
    let mut stats = PairStats::default();
    let mut out = Vec::with_capacity(pairs.len());
    for (i, t) in pairs {
        let (mut input, mut target) = (tok.encode(i), tok.encode(t));
        if input.is_empty() || target.is_empty() {
            stats.empty += 1;
            continue;
        }
        if input.len() > max_input {
            input.truncate(max_input);
            stats.truncated_inputs += 1;
        }
        if target.len() > max_target {
            target.truncate(max_target);
            stats.truncated_targets += 1;
        }
        out.push(PairExample { input, target });
    }
    stats.pairs = out.len();
    (out, stats)
}

/// Read and tokenize one JSONL pair file; an error when nothing usable remains.
pub fn load_pairs(path: &Path, cfg: &PairsConfig, tok: &ferrolm_tokenizer::Tokenizer) -> Result<(Vec<PairExample>, PairStats)> {
    let raw = read_jsonl_pairs(path, &cfg.input_field, &cfg.target_field)?;
    let (pairs, stats) = tokenize_pairs(tok, &raw, cfg.max_input_tokens, cfg.max_target_tokens);
    if pairs.is_empty() {
        bail!("{}: no pair with a non-empty input and target ({} records)", path.display(), raw.len());
    }
    Ok((pairs, stats))
}

/// Doc comment → signature pairs from Rust source: every run of outer doc comments
/// (`/// …`) followed, after any attributes, by an item. The input is the doc text (the
/// `///` and one space removed, lines joined by newlines); the target is the item's
/// signature: its text up to the first `{` or `;` (or the end of a `where` clause), joined
/// to one line with whitespace collapsed. Items whose signature runs past `max_chars`
/// (macros, long generic soup) are skipped and counted in the second return value.
pub fn doc_signature_pairs(source: &str, max_chars: usize) -> (Vec<(String, String)>, usize) {
    let lines: Vec<&str> = source.lines().collect();
    let (mut out, mut skipped) = (Vec::new(), 0usize);
    let mut i = 0;
    while i < lines.len() {
        let t = lines[i].trim_start();
        if !t.starts_with("///") || t.starts_with("////") {
            i += 1;
            continue;
        }
        let mut doc = Vec::new();
        while i < lines.len() {
            let t = lines[i].trim_start();
            if t.starts_with("///") && !t.starts_with("////") {
                let body = &t[3..];
                doc.push(body.strip_prefix(' ').unwrap_or(body).trim_end());
                i += 1;
            } else {
                break;
            }
        }
        // attributes (possibly spanning lines) and blank lines between doc and item
        while i < lines.len() {
            let t = lines[i].trim();
            if t.is_empty() {
                i += 1;
            } else if t.starts_with("#[") {
                let mut depth = 0i32;
                loop {
                    for c in lines[i].chars() {
                        match c {
                            '[' => depth += 1,
                            ']' => depth -= 1,
                            _ => {}
                        }
                    }
                    i += 1;
                    if depth <= 0 || i >= lines.len() {
                        break;
                    }
                }
            } else {
                break;
            }
        }
        if i >= lines.len() {
            break;
        }
        let first = lines[i].trim();
        if first.starts_with("//") || first.starts_with('}') {
            continue;
        }
        let mut sig = String::new();
        let mut complete = false;
        let mut j = i;
        while j < lines.len() && sig.len() <= max_chars {
            let l = lines[j].trim();
            j += 1;
            if l.starts_with("//") {
                continue;
            }
            match l.find(['{', ';']) {
                Some(k) => {
                    let end = if l.as_bytes()[k] == b';' { k + 1 } else { k };
                    push_words(&mut sig, &l[..end]);
                    complete = true;
                    break;
                }
                None => push_words(&mut sig, l),
            }
        }
        let doc_text = doc.join("\n").trim().to_string();
        let sig = sig.trim().trim_end_matches(" ;").to_string();
        if !complete || sig.len() > max_chars {
            skipped += 1;
        } else if !doc_text.is_empty() && !sig.is_empty() {
            out.push((doc_text, sig));
        }
        i = j.max(i + 1);
    }
    (out, skipped)
}

fn push_words(out: &mut String, s: &str) {
    for w in s.split_whitespace() {
        if !out.is_empty() {
            out.push(' ');
        }
        out.push_str(w);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doc_comments_pair_with_the_item_signature() {
        let src = "//! crate docs are not item docs\n\
            use std::fmt;\n\
            /// Adds two numbers.\n\
            ///\n\
            /// Never overflows.\n\
            #[inline]\n\
            #[cfg(all(\n    unix,\n    test))]\n\
            pub fn add(a: u32,\n           b: u32) -> u64 {\n    a as u64 + b as u64\n}\n\
            /// A point.\n\
            pub struct Point { x: i32 }\n\
            /// The answer.\n\
            pub const ANSWER: u32 = 42;\n\
            /// Dangling doc at the end\n";
        let (pairs, skipped) = doc_signature_pairs(src, 200);
        assert_eq!(
            pairs,
            vec![
                ("Adds two numbers.\n\nNever overflows.".to_string(), "pub fn add(a: u32, b: u32) -> u64".to_string()),
                ("A point.".to_string(), "pub struct Point".to_string()),
                ("The answer.".to_string(), "pub const ANSWER: u32 = 42;".to_string()),
            ]
        );
        assert_eq!(skipped, 0);
        // a signature longer than the cap is skipped and counted
        let (pairs, skipped) = doc_signature_pairs("/// Long.\npub fn f(aaaaaaaaaa: u32, bbbbbbbbbbbb: u32) {}\n", 20);
        assert!(pairs.is_empty());
        assert_eq!(skipped, 1);
    }

    #[test]
    fn jsonl_pairs_round_trip_and_bad_lines_name_file_and_line() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("p.jsonl");
        let pairs = vec![("a b".to_string(), "c".to_string()), ("d".to_string(), "e f".to_string())];
        write_jsonl_pairs(&p, &pairs, "q", "a").unwrap();
        assert_eq!(read_jsonl_pairs(&p, "q", "a").unwrap(), pairs);
        let err = read_jsonl_pairs(&p, "input", "a").unwrap_err().to_string();
        assert!(err.contains("p.jsonl:1") && err.contains("\"input\""), "{err}");
        std::fs::write(&p, "{\"q\":\"x\",\"a\":\"y\"}\nnot json\n").unwrap();
        let err = format!("{:#}", read_jsonl_pairs(&p, "q", "a").unwrap_err());
        assert!(err.contains("p.jsonl:2"), "{err}");
    }
}
