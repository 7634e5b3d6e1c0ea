//! SQuAD 2.0's official answer metrics (`evaluate-v2.0.py`): exact match and token F1 after
//! `normalize_answer`, the maximum over the gold answers, and the empty string as the gold
//! answer of an unanswerable question (so predicting "" scores 1 there, anything else 0).

use std::collections::HashMap;

/// Python's `string.punctuation`, the characters the official script removes.
const PUNCTUATION: &str = "!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~";

/// Lower-case, remove punctuation, remove the articles a/an/the (as whole words), and collapse
/// whitespace, in that order, as the official script's `normalize_answer`.
pub fn normalize_answer(s: &str) -> String {
    let lower = s.to_lowercase();
    let no_punc: String = lower.chars().filter(|c| !PUNCTUATION.contains(*c)).collect();
    // re.sub(r'\b(a|an|the)\b', ' ', text): a word is a run of Unicode word characters.
    let mut no_articles = String::with_capacity(no_punc.len());
    let mut word = String::new();
    let is_word = |c: char| c.is_alphanumeric() || c == '_';
    let flush = |word: &mut String, out: &mut String| {
        if matches!(word.as_str(), "a" | "an" | "the") {
            out.push(' ');
        } else {
            out.push_str(word);
        }
        word.clear();
    };
    for c in no_punc.chars() {
        if is_word(c) {
            word.push(c);
        } else {
            flush(&mut word, &mut no_articles);
            no_articles.push(c);
        }
    }
    flush(&mut word, &mut no_articles);
    no_articles.split_whitespace().collect::<Vec<_>>().join(" ")
}

fn tokens(s: &str) -> Vec<String> {
    let n = normalize_answer(s);
    n.split_whitespace().map(str::to_string).collect()
}

/// 1.0 when the normalised strings are equal.
pub fn exact_match(gold: &str, prediction: &str) -> f64 {
    f64::from(u8::from(normalize_answer(gold) == normalize_answer(prediction)))
}

/// Token-bag F1 of the normalised strings; when either has no tokens, 1.0 if both have none.
pub fn f1(gold: &str, prediction: &str) -> f64 {
    let g = tokens(gold);
    let p = tokens(prediction);
    if g.is_empty() || p.is_empty() {
        return f64::from(u8::from(g == p));
    }
    let mut counts: HashMap<&str, usize> = HashMap::new();
    for t in &g {
        *counts.entry(t).or_default() += 1;
    }
    let mut same = 0usize;
    for t in &p {
        if let Some(c) = counts.get_mut(t.as_str()) {
            if *c > 0 {
                *c -= 1;
                same += 1;
            }
        }
    }
    if same == 0 {
        return 0.0;
    }
    let precision = same as f64 / p.len() as f64;
    let recall = same as f64 / g.len() as f64;
    2.0 * precision * recall / (precision + recall)
}

/// The gold answers the official script compares against: those whose normalised form is not
/// empty, or `[""]` when none is left (an unanswerable question).
pub fn gold_answers(answers: &[String]) -> Vec<String> {
    let g: Vec<String> = answers.iter().filter(|a| !normalize_answer(a).is_empty()).cloned().collect();
    if g.is_empty() {
        vec![String::new()]
    } else {
        g
    }
}

/// (exact match, F1) of `prediction` for one question: the maximum over its gold answers.
pub fn score_prediction(answers: &[String], prediction: &str) -> (f64, f64) {
    let gold = gold_answers(answers);
    let em = gold.iter().map(|g| exact_match(g, prediction)).fold(0.0, f64::max);
    let f = gold.iter().map(|g| f1(g, prediction)).fold(0.0, f64::max);
    (em, f)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-12
    }

    #[test]
    fn normalize_answer_matches_the_official_script() {
        // Expected strings worked through evaluate-v2.0.py's normalize_answer by hand.
        assert_eq!(normalize_answer("The Normans"), "normans");
        assert_eq!(normalize_answer("  10th and 11th   centuries."), "10th and 11th centuries");
        assert_eq!(normalize_answer("Rollo's  (the Viking)"), "rollos viking");
        assert_eq!(normalize_answer("an apple, a pear & the fig"), "apple pear fig");
        // Articles only as whole words; "theory" and "analysis" keep theirs.
        assert_eq!(normalize_answer("Theory of an analysis"), "theory of analysis");
        // Removing punctuation can join words: "the-end" -> "theend", not an article.
        assert_eq!(normalize_answer("the-end"), "theend");
        assert_eq!(normalize_answer("A"), "");
        assert_eq!(normalize_answer("Élan, THE Über"), "élan über");
    }

    #[test]
    fn exact_match_and_f1_on_known_pairs() {
        assert!(close(exact_match("The Normans", "normans"), 1.0));
        assert!(close(exact_match("Normandy", "in Normandy"), 0.0));
        // gold {in, normandy... }: "normandy" vs "in normandy france": p=1/3, r=1 -> 0.5.
        assert!(close(f1("Normandy", "in Normandy, France"), 0.5));
        // Bags count repeats: gold [x, y, y], pred [y] -> p = 1, r = 1/3 -> 0.5;
        // pred [y, y, y] shares two y's -> p = r = 2/3.
        assert!(close(f1("x y y", "y"), 0.5));
        assert!(close(f1("x y y", "y y y"), 2.0 / 3.0));
        assert!(close(f1("Rollo", "Charles"), 0.0));
    }

    #[test]
    fn unanswerable_questions_score_only_the_empty_prediction() {
        let none: Vec<String> = Vec::new();
        assert_eq!(score_prediction(&none, ""), (1.0, 1.0));
        assert_eq!(score_prediction(&none, "Rollo"), (0.0, 0.0));
        // An answer that normalises to nothing counts as no answer.
        assert_eq!(score_prediction(&["the".into()], ""), (1.0, 1.0));
    }

    #[test]
    fn maximum_over_gold_answers() {
        let gold = vec!["10th century".to_string(), "the 10th century".into(), "10th".into()];
        assert_eq!(score_prediction(&gold, "10th"), (1.0, 1.0));
        let (em, f) = score_prediction(&gold, "in the 10th century AD");
        assert!(close(em, 0.0));
        // Best gold "10th century": p = 2/4, r = 1 -> 2/3.
        assert!(close(f, 2.0 / 3.0));
    }
}
