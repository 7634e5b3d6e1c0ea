//! SQuAD questions turned into reader windows, and the reader's evaluation: EM/F1 as SQuAD
//! 2.0's official script computes them (normalisation from `ferrolm_rag::squad_metrics`),
//! split into answerable (HasAns) and unanswerable (NoAns) questions, and the no-answer
//! threshold that maximises F1 (the script's `find_best_thresh`).

use std::collections::HashMap;

use anyhow::Result;
use ferrolm_rag::squad::Question;
use ferrolm_rag::squad_metrics::score_prediction;
use ferrolm_tokenizer::Tokenizer;
use serde::Serialize;

use crate::reader::{best_span, decide, ReaderConfig, SpanAnswer, SpanReader};
use crate::windows::{self, EncodedContext, Window, WindowOptions};

/// Questions with their contexts encoded once per paragraph, and their windows.
pub struct Prepared {
    pub questions: Vec<Question>,
    /// Encoded context of each question (shared by the questions of a paragraph).
    pub context_of: Vec<usize>,
    pub contexts: Vec<EncodedContext>,
    pub windows: Vec<Window>,
    /// Answerable questions whose `answer_start` does not point at the answer text: left
    /// out of training (their windows would teach a wrong span), kept for evaluation.
    pub unlocated: Vec<String>,
}

/// Encode questions into windows. With `targets`, answerable questions get their first
/// located answer as the target span (windows without it target the null span).
pub fn prepare(tok: &Tokenizer, questions: Vec<Question>, o: &WindowOptions, targets: bool) -> Result<Prepared> {
    let markers = windows::markers(tok)?;
    let mut by_paragraph: HashMap<String, usize> = HashMap::new();
    let mut contexts = Vec::new();
    let mut context_of = Vec::with_capacity(questions.len());
    let mut win = Vec::new();
    let mut unlocated = Vec::new();
    let mut kept = Vec::with_capacity(questions.len());
    for q in questions {
        let ci = *by_paragraph.entry(q.paragraph.clone()).or_insert_with(|| {
            contexts.push(windows::encode_context(tok, &q.context));
            contexts.len() - 1
        });
        let ctx = &contexts[ci];
        let answer = if q.is_impossible || !targets {
            None
        } else {
            let located = q.answers.iter().zip(&q.answer_starts).find_map(|(a, s)| s.and_then(|s| windows::answer_words(ctx, &q.context, s, a)));
            match located {
                Some(words) => Some(windows::answer_tokens(ctx, words)),
                None => {
                    unlocated.push(q.id.clone());
                    continue;
                }
            }
        };
        if !ctx.ids.is_empty() {
            win.extend(windows::make_windows(kept.len(), &tok.encode(&q.question), ctx, answer, markers, o)?);
        }
        context_of.push(ci);
        kept.push(q);
    }
    Ok(Prepared { questions: kept, context_of, contexts, windows: win, unlocated })
}

/// EM and F1 (percent) over a set of questions.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct EmF1 {
    pub n: usize,
    pub exact_match: f64,
    pub f1: f64,
}

impl EmF1 {
    fn of(scores: &[(f64, f64)]) -> Self {
        let n = scores.len();
        if n == 0 {
            return Self::default();
        }
        let em = scores.iter().map(|s| s.0).sum::<f64>() / n as f64 * 100.0;
        let f1 = scores.iter().map(|s| s.1).sum::<f64>() / n as f64 * 100.0;
        Self { n, exact_match: em, f1 }
    }
}

/// One question's prediction.
#[derive(Debug, Clone, Serialize)]
pub struct Prediction {
    pub id: String,
    pub prediction: String,
    pub null_margin: f64,
    pub exact_match: f64,
    pub f1: f64,
}

/// The reader's figures on a set of questions.
#[derive(Debug, Clone, Serialize)]
pub struct QaReport {
    pub threshold: f64,
    pub all: EmF1,
    pub has_ans: EmF1,
    pub no_ans: EmF1,
    /// The threshold that would maximise F1 on these questions, and the F1 it gives (an
    /// oracle figure: tuned on the questions it is measured on).
    pub best_threshold: f64,
    pub best_f1: f64,
    /// Predicting "no answer" everywhere.
    pub always_no_answer: EmF1,
    pub predictions: Vec<Prediction>,
}

/// Score span answers (one per question) under `threshold`.
pub fn score(questions: &[Question], answers: &[SpanAnswer], threshold: f64) -> QaReport {
    let mut all = Vec::new();
    let (mut has, mut no) = (Vec::new(), Vec::new());
    let mut preds = Vec::new();
    let mut sweep = Vec::new(); // (margin, score if answered, score if not)
    let mut nulls = Vec::new();
    for (q, a) in questions.iter().zip(answers) {
        let p = decide(a, threshold);
        let s = score_prediction(&q.answers, &p);
        all.push(s);
        if q.is_impossible { no.push(s) } else { has.push(s) }
        let null = score_prediction(&q.answers, "");
        nulls.push(null);
        if !a.text.is_empty() {
            sweep.push((a.null_margin(), score_prediction(&q.answers, &a.text).1 - null.1));
        }
        preds.push(Prediction { id: q.id.clone(), prediction: p, null_margin: a.null_margin(), exact_match: s.0, f1: s.1 });
    }
    // find_best_thresh: start from "no answer" everywhere, then answer the questions in
    // order of increasing margin; the best prefix sets the threshold.
    sweep.sort_by(|a, b| a.0.total_cmp(&b.0));
    let n = questions.len().max(1) as f64;
    let mut cur: f64 = nulls.iter().map(|s| s.1).sum();
    let (mut best, mut best_thr) = (cur, sweep.first().map_or(0.0, |s| s.0 - 1.0));
    for (m, gain) in &sweep {
        cur += gain;
        if cur > best {
            best = cur;
            best_thr = *m;
        }
    }
    QaReport {
        threshold,
        all: EmF1::of(&all),
        has_ans: EmF1::of(&has),
        no_ans: EmF1::of(&no),
        best_threshold: best_thr,
        best_f1: best / n * 100.0,
        always_no_answer: EmF1::of(&nulls),
        predictions: preds,
    }
}

/// EM/F1 of answer texts ("" = no answer), one per question: (all, HasAns, NoAns).
pub fn score_texts(questions: &[Question], predictions: &[String]) -> (EmF1, EmF1, EmF1) {
    let (mut all, mut has, mut no) = (Vec::new(), Vec::new(), Vec::new());
    for (q, p) in questions.iter().zip(predictions) {
        let s = score_prediction(&q.answers, p);
        all.push(s);
        if q.is_impossible { no.push(s) } else { has.push(s) }
    }
    (EmF1::of(&all), EmF1::of(&has), EmF1::of(&no))
}

/// Span answers of every question of `p` (each on its own paragraph).
pub fn answer_all(reader: &SpanReader, p: &Prepared, pad: u32, cfg: &ReaderConfig) -> Result<Vec<SpanAnswer>> {
    let logits = reader.window_logits(&p.windows, pad, 32)?;
    let mut by_q: Vec<Vec<usize>> = vec![Vec::new(); p.questions.len()];
    for (i, w) in p.windows.iter().enumerate() {
        by_q[w.example].push(i);
    }
    let mut out = Vec::with_capacity(p.questions.len());
    for (qi, idx) in by_q.iter().enumerate() {
        let ctx = &p.contexts[p.context_of[qi]];
        let ws: Vec<Window> = idx.iter().map(|&i| p.windows[i].clone()).collect();
        let lg: Vec<(Vec<f32>, Vec<f32>)> = idx.iter().map(|&i| logits[i].clone()).collect();
        out.push(best_span(&[(&p.questions[qi].context, ctx)], &ws, &vec![0; ws.len()], &lg, cfg));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(id: &str, answers: &[&str]) -> Question {
        Question {
            id: id.into(),
            question: "?".into(),
            answers: answers.iter().map(|s| s.to_string()).collect(),
            answer_starts: vec![None; answers.len()],
            is_impossible: answers.is_empty(),
            paragraph: "p".into(),
            context: String::new(),
        }
    }

    fn a(text: &str, margin: f64) -> SpanAnswer {
        SpanAnswer { text: text.into(), context: 0, char_start: 0, char_end: 0, score: 0.0, null_score: margin }
    }

    #[test]
    fn scores_split_by_answerability_and_threshold_decides() {
        let qs = [q("1", &["Rollo"]), q("2", &[]), q("3", &["10th century"])];
        // margins: q1 -2 (span clearly better), q2 +3 (null better), q3 +0.5
        let ans = [a("Rollo", -2.0), a("Normandy", 3.0), a("the 10th century", 0.5)];
        let r = score(&qs, &ans, 0.0);
        // q1 right, q2 null → right, q3 null (0.5 > 0) → wrong
        assert_eq!((r.has_ans.n, r.no_ans.n), (2, 1));
        assert!((r.has_ans.exact_match - 50.0).abs() < 1e-9);
        assert!((r.no_ans.exact_match - 100.0).abs() < 1e-9);
        assert!((r.all.f1 - 200.0 / 3.0).abs() < 1e-9);
        // answering q3 too (threshold ≥ 0.5) is best: all three right
        assert!((r.best_f1 - 100.0).abs() < 1e-9);
        assert!(r.best_threshold >= 0.5 && r.best_threshold < 3.0);
        let r2 = score(&qs, &ans, r.best_threshold);
        assert!((r2.all.f1 - 100.0).abs() < 1e-9);
        assert!((r.always_no_answer.f1 - 100.0 / 3.0).abs() < 1e-9);
    }
}
