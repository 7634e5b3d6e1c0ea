//! Unicode and whitespace normalisation, run first so every later rule sees canonical text.

use crate::step::{Step, Verdict};
use crate::Document;
use serde::{Deserialize, Serialize};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use unicode_normalization::{is_nfc_quick, IsNormalized, UnicodeNormalization};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct NormalizeConfig {
    /// Compose to Unicode NFC.
    pub nfc: bool,
    /// Drop C0/C1 control characters except tab and newline, and zero-width/BOM characters.
    pub strip_control: bool,
    /// CRLF/CR to LF, trailing spaces trimmed on every line, at most `max_blank_lines` blank lines in a row.
    pub whitespace: bool,
    pub max_blank_lines: usize,
}

impl Default for NormalizeConfig {
    fn default() -> Self {
        Self { nfc: true, strip_control: true, whitespace: true, max_blank_lines: 2 }
    }
}

/// NFC + control characters + line endings. U+FFFD (a decoder's mark for an encoding error
/// upstream) is kept but counted, per document in `meta.encoding_errors` and in the summary.
pub struct Normalizer {
    cfg: NormalizeConfig,
    encoding_errors: AtomicU64,
    docs_with_encoding_errors: AtomicU64,
    changed: AtomicU64,
}

impl Normalizer {
    pub fn new(cfg: NormalizeConfig) -> Self {
        Self { cfg, encoding_errors: 0.into(), docs_with_encoding_errors: 0.into(), changed: 0.into() }
    }

    pub fn normalize(&self, text: &str) -> String {
        let mut s: String = if self.cfg.nfc && is_nfc_quick(text.chars()) != IsNormalized::Yes {
            text.nfc().collect()
        } else {
            text.to_string()
        };
        if self.cfg.strip_control && s.chars().any(is_stripped) {
            s.retain(|c| !is_stripped(c));
        }
        if self.cfg.whitespace {
            s = normalize_lines(&s, self.cfg.max_blank_lines);
        }
        s
    }
}

fn is_stripped(c: char) -> bool {
    (c.is_control() && c != '\n' && c != '\t' && c != '\r')
        || matches!(c, '\u{200B}' | '\u{200C}' | '\u{200D}' | '\u{2060}' | '\u{FEFF}')
}

fn normalize_lines(s: &str, max_blank: usize) -> String {
    let mut out = String::with_capacity(s.len());
    let mut blank_run = 0;
    let unified;
    let s = if s.contains('\r') {
        unified = s.replace("\r\n", "\n").replace('\r', "\n");
        unified.as_str()
    } else {
        s
    };
    for line in s.split('\n') {
        let line = line.trim_end();
        if line.is_empty() {
            blank_run += 1;
            if blank_run > max_blank {
                continue;
            }
        } else {
            blank_run = 0;
        }
        out.push_str(line);
        out.push('\n');
    }
    // Leading and trailing blank lines carry nothing.
    let trimmed = out.trim_matches('\n');
    let mut r = trimmed.to_string();
    if !r.is_empty() {
        r.push('\n');
    }
    r
}

impl Step for Normalizer {
    fn name(&self) -> &str {
        "normalize"
    }

    fn apply(&self, _seq: u64, doc: &mut Document) -> Verdict {
        let bad = doc.text.chars().filter(|&c| c == '\u{FFFD}').count() as u64;
        if bad > 0 {
            self.encoding_errors.fetch_add(bad, Relaxed);
            self.docs_with_encoding_errors.fetch_add(1, Relaxed);
            doc.meta.insert("encoding_errors".into(), bad.into());
        }
        let n = self.normalize(&doc.text);
        if n != doc.text {
            self.changed.fetch_add(1, Relaxed);
            doc.text = n;
        }
        if doc.text.trim().is_empty() {
            return Verdict::remove("empty");
        }
        Verdict::Keep
    }

    fn summary(&self) -> serde_json::Value {
        serde_json::json!({
            "documents_changed": self.changed.load(Relaxed),
            "encoding_errors": self.encoding_errors.load(Relaxed),
            "documents_with_encoding_errors": self.docs_with_encoding_errors.load(Relaxed),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn composes_strips_and_trims() {
        let n = Normalizer::new(NormalizeConfig::default());
        // "e" + combining acute -> "é"; BEL and BOM removed; CRLF -> LF; 4 blank lines -> 2.
        let out = n.normalize("\u{FEFF}cafe\u{301} \x07ok  \r\nb\n\n\n\n\nc\n\n");
        assert_eq!(out, "caf\u{e9} ok\nb\n\n\nc\n");
        let mut d = Document::new("x", " \n\u{200B}\n", "prose");
        assert_eq!(n.apply(0, &mut d), Verdict::remove("empty"));
    }
}
