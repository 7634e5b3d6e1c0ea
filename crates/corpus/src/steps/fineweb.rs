//! The FineWeb rules (Penedo et al. 2024, "The FineWeb Datasets"), with their published thresholds.

use crate::step::{Step, Verdict};
use crate::text::{char_len, find_duplicates, words};
use crate::Document;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct FineWebConfig {
    /// Minimum fraction of lines ending in terminal punctuation.
    pub line_punct_thr: f64,
    pub line_punct_exclude_zero: bool,
    /// Maximum fraction of lines of at most `short_line_length` characters.
    pub short_line_thr: f64,
    pub short_line_length: usize,
    /// Maximum fraction of characters in duplicated lines.
    pub char_duplicates_ratio: f64,
    /// Maximum newlines per word (lists).
    pub new_line_ratio: f64,
}

impl Default for FineWebConfig {
    fn default() -> Self {
        Self {
            line_punct_thr: 0.12,
            line_punct_exclude_zero: false,
            short_line_thr: 0.67,
            short_line_length: 30,
            char_duplicates_ratio: 0.01,
            new_line_ratio: 0.3,
        }
    }
}

/// Terminal punctuation in several scripts.
const TERMINAL: &[char] = &[
    '.', '!', '?', '"', '\'', '\u{201D}', '\u{2019}', '\u{2026}', '\u{3002}', '\u{FF01}', '\u{FF1F}', '\u{FF0E}',
    '\u{0964}', '\u{061F}', '\u{06D4}', ')', ':', ';',
];

pub struct FineWebFilter {
    cfg: FineWebConfig,
}

impl FineWebFilter {
    pub fn new(cfg: FineWebConfig) -> Self {
        Self { cfg }
    }
}

impl Step for FineWebFilter {
    fn name(&self) -> &str {
        "fineweb"
    }

    fn apply(&self, _seq: u64, doc: &mut Document) -> Verdict {
        let c = &self.cfg;
        let text = doc.text.as_str();
        let lines: Vec<&str> = text.split('\n').filter(|l| !l.trim().is_empty()).collect();
        if lines.is_empty() {
            return Verdict::remove("empty");
        }
        let n = lines.len() as f64;
        let punct = lines.iter().filter(|l| l.ends_with(TERMINAL)).count() as f64 / n;
        if punct < c.line_punct_thr && !(punct == 0.0 && c.line_punct_exclude_zero) {
            return Verdict::remove("line_punct_ratio");
        }
        let short = lines.iter().filter(|l| char_len(l) <= c.short_line_length).count() as f64 / n;
        if short > c.short_line_thr {
            return Verdict::remove("short_line_ratio");
        }
        let (_, dup_chars) = find_duplicates(lines.iter().copied());
        let non_nl = char_len(text) - text.matches('\n').count();
        if dup_chars as f64 / non_nl.max(1) as f64 > c.char_duplicates_ratio {
            return Verdict::remove("char_dup_ratio");
        }
        let n_words = words(text).len().max(1) as f64;
        if text.matches('\n').count() as f64 / n_words > c.new_line_ratio {
            return Verdict::remove("list_ratio");
        }
        Verdict::Keep
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_fire_in_order() {
        let f = FineWebFilter::new(Default::default());
        let good = "This is a long enough line that ends with a period and has words.\nAnother line that is also long enough to count as real prose here.\n";
        assert_eq!(f.apply(0, &mut Document::new("a", good, "p")), Verdict::Keep);
        let nav = "Home\nAbout us\nContact\nProducts\nBlog\n";
        assert_eq!(f.apply(0, &mut Document::new("b", nav, "p")), Verdict::remove("line_punct_ratio"));
        let list = "a.\nb.\nc.\nd.\n";
        assert_eq!(f.apply(0, &mut Document::new("c", list, "p")), Verdict::remove("short_line_ratio"));
        let dup = format!("{good}{good}");
        assert_eq!(f.apply(0, &mut Document::new("d", dup, "p")), Verdict::remove("char_dup_ratio"));
    }
}
