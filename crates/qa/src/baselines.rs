//! Trivial readers that a trained reader must beat (the "trivial baselines"):
//! the first sentence of the passage, and the most common answer type of the training
//! questions (a number, a capitalised name, or a lower-case word) answered with the first
//! span of that type in the passage. Neither abstains on purpose (a picked span that
//! normalises to nothing, such as a lone "The", scores as "no answer").

use serde::Serialize;

use ferrolm_rag::squad::Question;

use crate::data::{score_texts, EmF1};
use crate::windows::split_words;

/// The first sentence of `text`: up to the first `.`, `!` or `?` followed by whitespace or
/// the end (the mark kept), trimmed.
pub fn first_sentence(text: &str) -> String {
    let t = text.trim_start();
    let mut it = t.char_indices().peekable();
    while let Some((i, c)) = it.next() {
        if matches!(c, '.' | '!' | '?') && it.peek().is_none_or(|(_, n)| n.is_whitespace()) {
            return t[..i + c.len_utf8()].trim().to_string();
        }
    }
    t.trim().to_string()
}

/// Coarse answer types.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, PartialOrd, Ord)]
pub enum AnswerType {
    /// Holds a digit (years, counts, dates).
    Number,
    /// Starts with a capital letter (names, places).
    Name,
    /// Anything else.
    Other,
}

pub fn answer_type(answer: &str) -> AnswerType {
    let a = answer.trim();
    if a.chars().any(|c| c.is_ascii_digit()) {
        AnswerType::Number
    } else if a.chars().next().is_some_and(char::is_uppercase) {
        AnswerType::Name
    } else {
        AnswerType::Other
    }
}

/// The most common type among the first gold answers of answerable questions (ties: the
/// order of [`AnswerType`]).
pub fn most_common_type(train: &[Question]) -> AnswerType {
    let mut counts = [(AnswerType::Number, 0usize), (AnswerType::Name, 0), (AnswerType::Other, 0)];
    for q in train.iter().filter(|q| !q.is_impossible) {
        if let Some(a) = q.answers.first() {
            let t = answer_type(a);
            counts.iter_mut().find(|c| c.0 == t).expect("every type listed").1 += 1;
        }
    }
    counts.iter().max_by(|a, b| a.1.cmp(&b.1).then(b.0.cmp(&a.0))).expect("three types").0
}

/// The first span of type `t` in `context`: a run of words holding digits (with the
/// words between them such as "and", "to" excluded), a run of capitalised words not at a
/// sentence start, or the first lower-case word of four letters or more.
pub fn first_span_of_type(context: &str, t: AnswerType) -> String {
    let words = split_words(context);
    let text = |i: usize| &context[words[i].byte_start..words[i].byte_end];
    let is_num = |i: usize| text(i).chars().any(|c| c.is_ascii_digit());
    let is_cap = |i: usize| text(i).chars().next().is_some_and(char::is_uppercase);
    let sentence_start = |i: usize| i == 0 || matches!(text(i - 1), "." | "!" | "?");
    let run = |start: usize, keep: &dyn Fn(usize) -> bool| {
        let mut end = start;
        while end + 1 < words.len() && keep(end + 1) && words[end + 1].after_space {
            end += 1;
        }
        context[words[start].byte_start..words[end].byte_end].to_string()
    };
    for i in 0..words.len() {
        match t {
            AnswerType::Number if is_num(i) => return run(i, &is_num),
            AnswerType::Name if is_cap(i) && !sentence_start(i) => return run(i, &is_cap),
            AnswerType::Other if text(i).len() >= 4 && text(i).chars().all(char::is_lowercase) => return text(i).to_string(),
            _ => {}
        }
    }
    String::new()
}

/// Both baselines on `test` (each question read from its own paragraph), the type chosen
/// on `train`.
#[derive(Debug, Clone, Serialize)]
pub struct BaselineReport {
    pub first_sentence: (EmF1, EmF1, EmF1),
    pub answer_type: AnswerType,
    pub most_common_type: (EmF1, EmF1, EmF1),
}

pub fn run_baselines(train: &[Question], test: &[Question]) -> BaselineReport {
    let first: Vec<String> = test.iter().map(|q| first_sentence(&q.context)).collect();
    let t = most_common_type(train);
    let typed: Vec<String> = test.iter().map(|q| first_span_of_type(&q.context, t)).collect();
    BaselineReport { first_sentence: score_texts(test, &first), answer_type: t, most_common_type: score_texts(test, &typed) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_sentence_stops_at_a_sentence_mark() {
        assert_eq!(first_sentence("  The Normans were a people. They gave their name."), "The Normans were a people.");
        assert_eq!(first_sentence("In 3.5 days? Yes"), "In 3.5 days?");
        assert_eq!(first_sentence("no mark"), "no mark");
    }

    #[test]
    fn spans_of_each_type() {
        let c = "The Normans came in 911 and 912. Later Rollo of Normandy ruled in the north.";
        assert_eq!(first_span_of_type(c, AnswerType::Number), "911");
        assert_eq!(first_span_of_type(c, AnswerType::Name), "Normans");
        assert_eq!(first_span_of_type("In the year Rollo Viking came.", AnswerType::Name), "Rollo Viking");
        assert_eq!(first_span_of_type(c, AnswerType::Other), "came");
        assert_eq!(answer_type("10th century"), AnswerType::Number);
        assert_eq!(answer_type("Rollo"), AnswerType::Name);
        assert_eq!(answer_type("a duchy"), AnswerType::Other);
    }
}
