//! The Gopher rules (Rae et al. 2021, "Scaling Language Models", appendix A), with the thresholds
//! published there (the same defaults datatrove uses): a repetition filter and a quality filter.

use crate::step::{Step, Verdict};
use crate::text::{char_len, find_duplicates, hash, is_symbol, words, HashMap64, HashSet64};
use crate::Document;
use serde::{Deserialize, Serialize};

/// A threshold of 0 disables its rule (datatrove's convention), so every setting is expressible in TOML.
fn on(x: f64) -> Option<f64> {
    (x > 0.0).then_some(x)
}
fn on_n(x: usize) -> Option<usize> {
    (x > 0).then_some(x)
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct GopherRepetitionConfig {
    pub dup_line_frac: f64,
    pub dup_para_frac: f64,
    pub dup_line_char_frac: f64,
    pub dup_para_char_frac: f64,
    /// (n, max fraction of characters in the most frequent word n-gram).
    pub top_n_grams: Vec<(usize, f64)>,
    /// (n, max fraction of characters in duplicated word n-grams).
    pub dup_n_grams: Vec<(usize, f64)>,
}

impl Default for GopherRepetitionConfig {
    fn default() -> Self {
        Self {
            dup_line_frac: 0.3,
            dup_para_frac: 0.3,
            dup_line_char_frac: 0.2,
            dup_para_char_frac: 0.2,
            top_n_grams: vec![(2, 0.2), (3, 0.18), (4, 0.16)],
            dup_n_grams: vec![(5, 0.15), (6, 0.14), (7, 0.13), (8, 0.12), (9, 0.11), (10, 0.10)],
        }
    }
}

pub struct GopherRepetition {
    cfg: GopherRepetitionConfig,
    max_n: usize,
}

impl GopherRepetition {
    pub fn new(cfg: GopherRepetitionConfig) -> Self {
        let max_n = cfg.top_n_grams.iter().chain(&cfg.dup_n_grams).map(|x| x.0).max().unwrap_or(0);
        Self { cfg, max_n }
    }
}

/// Pieces between runs of at least `min_run` newlines (regex `\n{min_run,}` split).
fn split_newline_runs(text: &str, min_run: usize) -> Vec<&str> {
    let b = text.as_bytes();
    let mut out = Vec::new();
    let (mut start, mut i) = (0, 0);
    while i < b.len() {
        if b[i] == b'\n' {
            let mut j = i;
            while j < b.len() && b[j] == b'\n' {
                j += 1;
            }
            if j - i >= min_run {
                out.push(&text[start..i]);
                start = j;
            }
            i = j;
        } else {
            i += 1;
        }
    }
    out.push(&text[start..]);
    out
}

#[inline]
fn mix(h: u64, w: u64) -> u64 {
    (h.rotate_left(23) ^ w).wrapping_mul(0x9E37_79B9_7F4A_7C15)
}

impl Step for GopherRepetition {
    fn name(&self) -> &str {
        "gopher_repetition"
    }

    fn apply(&self, _seq: u64, doc: &mut Document) -> Verdict {
        let text = doc.text.as_str();
        let total = char_len(text).max(1) as f64;
        let c = &self.cfg;

        let paras = split_newline_runs(text.trim(), 2);
        let (n_dup, chars_dup) = find_duplicates(paras.iter().copied());
        if on(c.dup_para_frac).is_some_and(|t| n_dup as f64 / paras.len() as f64 > t) {
            return Verdict::remove("dup_para_frac");
        }
        if on(c.dup_para_char_frac).is_some_and(|t| chars_dup as f64 / total > t) {
            return Verdict::remove("dup_para_char_frac");
        }
        let lines = split_newline_runs(text, 1);
        let (n_dup, chars_dup) = find_duplicates(lines.iter().copied());
        if on(c.dup_line_frac).is_some_and(|t| n_dup as f64 / lines.len() as f64 > t) {
            return Verdict::remove("dup_line_frac");
        }
        if on(c.dup_line_char_frac).is_some_and(|t| chars_dup as f64 / total > t) {
            return Verdict::remove("dup_line_char_frac");
        }
        if self.max_n == 0 {
            return Verdict::Keep;
        }

        let ws = words(text);
        let wh: Vec<u64> = ws.iter().map(|w| hash(w)).collect();
        let wl: Vec<usize> = ws.iter().map(|w| char_len(w)).collect();
        // Prefix sums of word lengths: characters of words[i..i+n] in O(1).
        let mut pre = Vec::with_capacity(wl.len() + 1);
        pre.push(0usize);
        for l in &wl {
            pre.push(pre.last().unwrap() + l);
        }
        let gram_hashes = |n: usize| -> Vec<u64> {
            if ws.len() < n {
                return Vec::new();
            }
            (0..=ws.len() - n).map(|i| wh[i..i + n].iter().fold(n as u64, |h, &w| mix(h, w))).collect()
        };

        for &(n, frac) in &c.top_n_grams {
            let grams = gram_hashes(n);
            if grams.is_empty() {
                continue;
            }
            let mut counts: HashMap64<u32> = HashMap64::default();
            counts.reserve(grams.len());
            for &g in &grams {
                *counts.entry(g).or_default() += 1;
            }
            let max = *counts.values().max().unwrap();
            // The first n-gram reaching the top count (Counter.most_common's tie order).
            let i = grams.iter().position(|g| counts[g] == max).unwrap();
            let gram_chars = pre[i + n] - pre[i] + (n - 1); // joined with spaces
            if (gram_chars * max as usize) as f64 / total > frac {
                return Verdict::Remove(format!("top_{n}_gram").into());
            }
        }
        for &(n, frac) in &c.dup_n_grams {
            let grams = gram_hashes(n);
            let mut seen = HashSet64::default();
            seen.reserve(grams.len());
            let (mut repeated, mut i) = (0usize, 0usize);
            // Scan left to right; a repeated n-gram's words are counted once and skipped.
            while i < grams.len() {
                if seen.insert(grams[i]) {
                    i += 1;
                } else {
                    repeated += pre[i + n] - pre[i];
                    i += n;
                }
            }
            if repeated as f64 / total > frac {
                return Verdict::Remove(format!("duplicated_{n}_n_grams").into());
            }
        }
        Verdict::Keep
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct GopherQualityConfig {
    pub min_doc_words: usize,
    pub max_doc_words: usize,
    pub min_avg_word_length: f64,
    pub max_avg_word_length: f64,
    pub max_symbol_word_ratio: f64,
    pub max_bullet_lines_ratio: f64,
    pub max_ellipsis_lines_ratio: f64,
    /// Minimum fraction of words containing an alphabetic character (the paper's 80%).
    pub max_non_alpha_words_ratio: f64,
    pub min_stop_words: usize,
    pub stop_words: Vec<String>,
}

impl Default for GopherQualityConfig {
    fn default() -> Self {
        Self {
            min_doc_words: 50,
            max_doc_words: 100_000,
            min_avg_word_length: 3.0,
            max_avg_word_length: 10.0,
            max_symbol_word_ratio: 0.1,
            max_bullet_lines_ratio: 0.9,
            max_ellipsis_lines_ratio: 0.3,
            max_non_alpha_words_ratio: 0.8,
            min_stop_words: 2,
            stop_words: ["the", "be", "to", "of", "and", "that", "have", "with"].map(String::from).to_vec(),
        }
    }
}

pub struct GopherQuality {
    cfg: GopherQualityConfig,
    stop: std::collections::HashSet<String>,
}

impl GopherQuality {
    pub fn new(cfg: GopherQualityConfig) -> Self {
        let stop = cfg.stop_words.iter().cloned().collect();
        Self { cfg, stop }
    }
}

impl Step for GopherQuality {
    fn name(&self) -> &str {
        "gopher_quality"
    }

    fn apply(&self, _seq: u64, doc: &mut Document) -> Verdict {
        let text = doc.text.as_str();
        let c = &self.cfg;
        let ws = words(text);
        let n_words = ws.len().max(1) as f64;
        let non_symbol: Vec<&str> = ws.iter().copied().filter(|w| w.chars().any(|ch| !is_symbol(ch))).collect();
        let n = non_symbol.len();
        if on_n(c.min_doc_words).is_some_and(|m| n < m) {
            return Verdict::remove("gopher_short_doc");
        }
        if on_n(c.max_doc_words).is_some_and(|m| n > m) {
            return Verdict::remove("gopher_long_doc");
        }
        let avg = non_symbol.iter().map(|w| char_len(w)).sum::<usize>() as f64 / n.max(1) as f64;
        if on(c.min_avg_word_length).is_some_and(|m| avg < m) {
            return Verdict::remove("gopher_below_avg_threshold");
        }
        if on(c.max_avg_word_length).is_some_and(|m| avg > m) {
            return Verdict::remove("gopher_above_avg_threshold");
        }
        if on(c.max_symbol_word_ratio).is_some_and(|m| text.matches('#').count() as f64 / n_words > m) {
            return Verdict::remove("gopher_too_many_hashes");
        }
        let ellipses = text.matches("...").count() + text.matches('\u{2026}').count();
        if on(c.max_symbol_word_ratio).is_some_and(|m| ellipses as f64 / n_words > m) {
            return Verdict::remove("gopher_too_many_ellipsis");
        }
        let lines: Vec<&str> = text.lines().collect();
        let n_lines = lines.len().max(1) as f64;
        let bullets = lines.iter().filter(|l| {
            let l = l.trim_start();
            l.starts_with('\u{2022}') || l.starts_with('-')
        });
        if on(c.max_bullet_lines_ratio).is_some_and(|m| bullets.count() as f64 / n_lines > m) {
            return Verdict::remove("gopher_too_many_bullets");
        }
        let end_ellipsis = lines.iter().filter(|l| {
            let l = l.trim_end();
            l.ends_with("...") || l.ends_with('\u{2026}')
        });
        if on(c.max_ellipsis_lines_ratio).is_some_and(|m| end_ellipsis.count() as f64 / n_lines > m) {
            return Verdict::remove("gopher_too_many_end_ellipsis");
        }
        let alpha = ws.iter().filter(|w| w.chars().any(char::is_alphabetic)).count();
        if on(c.max_non_alpha_words_ratio).is_some_and(|m| (alpha as f64 / n_words) < m) {
            return Verdict::remove("gopher_below_alpha_threshold");
        }
        if on_n(c.min_stop_words).is_some_and(|m| ws.iter().filter(|w| self.stop.contains(**w)).count() < m) {
            return Verdict::remove("gopher_enough_stop_words");
        }
        Verdict::Keep
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn good_prose() -> String {
        "The history of the river valley is long and varied. Farmers settled there to grow grain, \
         and traders came with salt and cloth to exchange for it. Over the centuries the towns \
         grew into cities that have kept their old markets. Visitors today walk along the banks \
         to see the bridges, the mills and the churches that the people built with stone from \
         nearby hills. Each season brings a festival with music and food.\n"
            .to_string()
    }

    #[test]
    fn quality_keeps_prose_and_names_the_failed_rule() {
        let q = GopherQuality::new(Default::default());
        let mut d = Document::new("a", good_prose(), "prose");
        assert_eq!(q.apply(0, &mut d), Verdict::Keep);
        let mut short = Document::new("b", "The cat and the dog.", "prose");
        assert_eq!(q.apply(0, &mut short), Verdict::remove("gopher_short_doc"));
        let hashes = format!("{} {}", good_prose(), "#tag ".repeat(20));
        assert_eq!(q.apply(0, &mut Document::new("c", hashes, "p")), Verdict::remove("gopher_too_many_hashes"));
        let no_stop = "alpha beta gamma delta epsilon zeta theta iota kappa lambda ".repeat(6);
        assert_eq!(q.apply(0, &mut Document::new("d", no_stop, "p")), Verdict::remove("gopher_enough_stop_words"));
    }

    #[test]
    fn repetition_catches_repeated_lines_and_ngrams() {
        let r = GopherRepetition::new(Default::default());
        assert_eq!(r.apply(0, &mut Document::new("a", good_prose(), "p")), Verdict::Keep);
        let lines = "buy cheap watches now\n".repeat(10);
        assert_eq!(r.apply(0, &mut Document::new("b", lines, "p")), Verdict::remove("dup_line_frac"));
        // Same phrase repeated inside one long line: no duplicate lines, but a dominant 2-gram.
        let spam = format!("{} {}", good_prose().trim(), "click here ".repeat(40));
        let v = r.apply(0, &mut Document::new("c", spam, "p"));
        assert_eq!(v, Verdict::remove("top_2_gram"));
    }

    #[test]
    fn newline_run_split_matches_regex_semantics() {
        assert_eq!(split_newline_runs("a\n\n\nb\nc", 2), vec!["a", "b\nc"]);
        assert_eq!(split_newline_runs("a\nb\n", 1), vec!["a", "b", ""]);
    }
}
