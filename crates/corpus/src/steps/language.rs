//! Language identification with a keep-list and a confidence threshold.
//!
//! The identifier is the `whatlang` crate (trigram profiles of 69 languages plus script
//! detection). Its confidence is not fastText's probability, so thresholds differ from
//! datatrove's defaults; 0.5 keeps clean text of a listed language and drops mixed/noisy text.

use crate::step::{Step, Verdict};
use crate::Document;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct LanguageConfig {
    /// ISO 639-3 codes to keep (whatlang's codes: eng, deu, fra, spa, cmn, jpn, rus...). Empty keeps all.
    pub languages: Vec<String>,
    pub min_confidence: f64,
    /// Identify on this many leading bytes (rounded to a char boundary): long documents gain
    /// nothing from more text and identification time stays bounded.
    pub sample_bytes: usize,
    /// Documents shorter than this many bytes pass unjudged (`meta.language = "und"`): trigram
    /// statistics of a one-line doc comment say little. 0 judges everything.
    pub skip_shorter_than: usize,
}

impl Default for LanguageConfig {
    fn default() -> Self {
        Self { languages: vec!["eng".into()], min_confidence: 0.5, sample_bytes: 4096, skip_shorter_than: 0 }
    }
}

pub struct LanguageFilter {
    cfg: LanguageConfig,
}

impl LanguageFilter {
    pub fn new(cfg: LanguageConfig) -> Self {
        Self { cfg }
    }
}

pub(crate) fn prefix_at_boundary(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

impl Step for LanguageFilter {
    fn name(&self) -> &str {
        "language"
    }

    fn apply(&self, _seq: u64, doc: &mut Document) -> Verdict {
        if doc.text.len() < self.cfg.skip_shorter_than {
            doc.meta.insert("language".into(), "und".into());
            return Verdict::Keep;
        }
        let sample = prefix_at_boundary(&doc.text, self.cfg.sample_bytes);
        let Some(info) = whatlang::detect(sample) else {
            return Verdict::remove("undetected");
        };
        let code = info.lang().code();
        doc.meta.insert("language".into(), code.into());
        doc.meta.insert("language_score".into(), info.confidence().into());
        if !self.cfg.languages.is_empty() && !self.cfg.languages.iter().any(|l| l == code) {
            return Verdict::remove("language_not_kept");
        }
        if info.confidence() < self.cfg.min_confidence {
            return Verdict::remove("low_confidence");
        }
        Verdict::Keep
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_english_and_drops_german() {
        let f = LanguageFilter::new(LanguageConfig::default());
        let mut en = Document::new("a", "The quick brown fox jumps over the lazy dog, and then it runs back into the forest where it lives with its family.", "prose");
        assert_eq!(f.apply(0, &mut en), Verdict::Keep);
        assert_eq!(en.meta["language"], "eng");
        let mut de = Document::new("b", "Der schnelle braune Fuchs springt über den faulen Hund und läuft dann zurück in den Wald, wo er mit seiner Familie lebt.", "prose");
        assert_eq!(f.apply(0, &mut de), Verdict::remove("language_not_kept"));
    }
}
