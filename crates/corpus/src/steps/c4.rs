//! The C4 rules (Raffel et al. 2020, section 2.2), line by line, with their published settings.
//! Lines failing a line rule are removed; a document-level rule removes the whole document.

use crate::step::{Step, Verdict};
use crate::Document;
use regex::Regex;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct C4Config {
    pub remove_citations: bool,
    pub filter_no_terminal_punct: bool,
    pub min_num_sentences: usize,
    pub min_words_per_line: usize,
    pub max_word_length: usize,
    pub filter_lorem_ipsum: bool,
    pub filter_javascript: bool,
    pub filter_curly_bracket: bool,
    pub filter_policy: bool,
}

impl Default for C4Config {
    fn default() -> Self {
        Self {
            remove_citations: true,
            filter_no_terminal_punct: true,
            min_num_sentences: 5,
            min_words_per_line: 3,
            max_word_length: 1000,
            filter_lorem_ipsum: true,
            filter_javascript: true,
            filter_curly_bracket: true,
            filter_policy: true,
        }
    }
}

const POLICY: &[&str] = &["terms of use", "privacy policy", "cookie policy", "uses cookies", "use of cookies", "use cookies"];
const END_PUNCT: &[char] = &['.', '?', '!', '"', '\''];

pub struct C4Filter {
    cfg: C4Config,
    citation: Regex,
    sentence_end: Regex,
}

impl C4Filter {
    pub fn new(cfg: C4Config) -> Self {
        Self {
            cfg,
            citation: Regex::new(r"\[\d*\]|\[edit\]|\[citation needed\]").unwrap(),
            sentence_end: Regex::new(r#"[.!?]+["')\]]*(\s|$)"#).unwrap(),
        }
    }
}

impl Step for C4Filter {
    fn name(&self) -> &str {
        "c4"
    }

    fn apply(&self, _seq: u64, doc: &mut Document) -> Verdict {
        let c = &self.cfg;
        let mut kept: Vec<String> = Vec::new();
        let mut sentences = 0;
        for raw in doc.text.lines() {
            let line = raw.trim();
            let words: Vec<&str> = line.split_whitespace().collect();
            if words.iter().any(|w| w.chars().count() > c.max_word_length) {
                continue;
            }
            let line = if c.remove_citations { self.citation.replace_all(line, "").into_owned() } else { line.to_string() };
            if c.filter_no_terminal_punct && (!line.ends_with(END_PUNCT) || line.ends_with("...")) {
                continue;
            }
            if words.len() < c.min_words_per_line {
                continue;
            }
            let lower = line.to_lowercase();
            if c.filter_lorem_ipsum && lower.contains("lorem ipsum") {
                return Verdict::remove("lorem_ipsum");
            }
            if c.filter_javascript && lower.contains("javascript") {
                continue;
            }
            if c.filter_curly_bracket && line.contains('{') {
                return Verdict::remove("curly_bracket");
            }
            if c.filter_policy && POLICY.iter().any(|p| lower.contains(p)) {
                continue;
            }
            sentences += self.sentence_end.find_iter(&line).count().max(1);
            kept.push(line);
        }
        if sentences < c.min_num_sentences {
            return Verdict::remove("too_few_sentences");
        }
        let mut text = kept.join("\n");
        text.push('\n');
        doc.text = text;
        Verdict::Keep
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drops_bad_lines_and_short_docs() {
        let f = C4Filter::new(Default::default());
        let text = "Home | About\nThe river runs through the old town. It is wide[1].\nPlease enable JavaScript to view this page.\n\
                    We walked along it for hours. The weather was fine!\nRead our privacy policy here.\nEveryone enjoyed the day.\n";
        let mut d = Document::new("a", text, "prose");
        assert_eq!(f.apply(0, &mut d), Verdict::Keep);
        assert_eq!(d.text, "The river runs through the old town. It is wide.\nWe walked along it for hours. The weather was fine!\nEveryone enjoyed the day.\n");
        let mut short = Document::new("b", "Just one sentence here.\n", "prose");
        assert_eq!(f.apply(0, &mut short), Verdict::remove("too_few_sentences"));
        let mut code = Document::new("c", "fn main() { println!(\"hi there friend.\"); }\n", "prose");
        assert_eq!(f.apply(0, &mut code), Verdict::remove("too_few_sentences"));
        let mut brace = Document::new("d", "We write { in our text a lot.\n", "prose");
        assert_eq!(f.apply(0, &mut brace), Verdict::remove("curly_bracket"));
    }
}
