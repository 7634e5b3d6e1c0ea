//! Retrieval quality on SQuAD-format questions: for each question, BM25 over the index; a
//! retrieved passage is relevant when it comes from the paragraph the question was written on
//! (its document id is that paragraph's [`crate::squad::paragraph_id`]). Questions whose
//! paragraph is not in the index are counted apart and not scored: nothing could find them.

use crate::index::RagIndex;
use crate::squad::{load_questions, QaProblem};
use crate::Result;
use serde::Serialize;
use std::path::Path;
use std::time::Instant;

/// Depth of the ranking scored: recall@20 and MRR look no further.
pub const EVAL_DEPTH: usize = 20;

/// Recall@k and mean reciprocal rank over a set of questions.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct RecallSet {
    pub scored: u64,
    pub recall_at_1: f64,
    pub recall_at_5: f64,
    pub recall_at_20: f64,
    /// Mean of 1/rank of the first relevant passage within the top 20 (0 when none is).
    pub mrr: f64,
}

impl RecallSet {
    /// From the 1-based rank of the first relevant passage of each question (None: not in the top 20).
    pub fn from_ranks(ranks: &[Option<usize>]) -> Self {
        let n = ranks.len();
        if n == 0 {
            return Self::default();
        }
        let within = |k: usize| ranks.iter().filter(|r| r.is_some_and(|r| r <= k)).count() as f64 / n as f64;
        let mrr = ranks.iter().map(|r| r.map_or(0.0, |r| 1.0 / r as f64)).sum::<f64>() / n as f64;
        Self { scored: n as u64, recall_at_1: within(1), recall_at_5: within(5), recall_at_20: within(20), mrr }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct RetrievalReport {
    pub index: String,
    pub qa: String,
    /// Well-formed questions in the file.
    pub questions: u64,
    /// Questions scored: well-formed, and their paragraph is in the index.
    pub scored: u64,
    /// Well-formed questions whose paragraph the index does not hold.
    pub not_indexed: u64,
    /// Malformed questions, left out, with their positions.
    pub malformed: u64,
    pub problems: Vec<QaProblem>,
    #[serde(flatten)]
    pub all: RecallSet,
    pub answerable: RecallSet,
    pub unanswerable: RecallSet,
    /// BM25 query time (tokenise, search, top 20 ids), milliseconds.
    pub latency_ms_p50: f64,
    pub latency_ms_p99: f64,
    pub latency_ms_mean: f64,
}

/// Nearest-rank percentile of sorted values.
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil().max(1.0) as usize;
    sorted[rank.min(sorted.len()) - 1]
}

/// Run every question of `qa` against `index` (BM25).
pub fn evaluate_retrieval(index: &RagIndex, index_path: &Path, qa: &Path) -> Result<RetrievalReport> {
    evaluate_retrieval_with(index, index_path, qa, &mut |q: &str, depth| Ok(index.bm25(q, depth)?.into_iter().map(|x| x.0).collect()))
}

/// Run every question of `qa` through `retrieve(question, depth)` (passage ids, best first):
/// BM25, dense or fused rankings are measured the same way.
pub fn evaluate_retrieval_with(
    index: &RagIndex,
    index_path: &Path,
    qa: &Path,
    retrieve: &mut dyn FnMut(&str, usize) -> Result<Vec<u64>>,
) -> Result<RetrievalReport> {
    let (questions, problems) = load_questions(qa)?;
    let bar = ferrolm_common::progress::bar(questions.len() as u64, "questions");
    let mut all = Vec::new();
    let mut answerable = Vec::new();
    let mut unanswerable = Vec::new();
    let mut not_indexed = 0;
    let mut latencies = Vec::new();
    for q in &questions {
        bar.inc(1);
        if !index.holds_document(&q.paragraph)? {
            not_indexed += 1;
            continue;
        }
        let t = Instant::now();
        let ranked = retrieve(&q.question, EVAL_DEPTH)?;
        latencies.push(t.elapsed().as_secs_f64() * 1e3);
        let mut rank = None;
        for (i, id) in ranked.iter().enumerate() {
            if index.passage(*id)?.is_some_and(|p| p.doc == q.paragraph) {
                rank = Some(i + 1);
                break;
            }
        }
        all.push(rank);
        if q.is_impossible {
            unanswerable.push(rank);
        } else {
            answerable.push(rank);
        }
    }
    bar.finish_and_clear();
    latencies.sort_by(f64::total_cmp);
    let mean = if latencies.is_empty() { 0.0 } else { latencies.iter().sum::<f64>() / latencies.len() as f64 };
    Ok(RetrievalReport {
        index: index_path.display().to_string(),
        qa: qa.display().to_string(),
        questions: questions.len() as u64,
        scored: all.len() as u64,
        not_indexed,
        malformed: problems.len() as u64,
        problems,
        all: RecallSet::from_ranks(&all),
        answerable: RecallSet::from_ranks(&answerable),
        unanswerable: RecallSet::from_ranks(&unanswerable),
        latency_ms_p50: percentile(&latencies, 50.0),
        latency_ms_p99: percentile(&latencies, 99.0),
        latency_ms_mean: mean,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recall_and_mrr_from_ranks() {
        let r = RecallSet::from_ranks(&[Some(1), Some(3), None, Some(20), Some(7)]);
        assert_eq!(r.scored, 5);
        assert_eq!(r.recall_at_1, 0.2);
        assert_eq!(r.recall_at_5, 0.4);
        assert_eq!(r.recall_at_20, 0.8);
        assert!((r.mrr - (1.0 + 1.0 / 3.0 + 0.0 + 1.0 / 20.0 + 1.0 / 7.0) / 5.0).abs() < 1e-12);
        assert_eq!(RecallSet::from_ranks(&[]), RecallSet::default());
    }

    #[test]
    fn nearest_rank_percentiles() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&v, 50.0), 50.0);
        assert_eq!(percentile(&v, 99.0), 99.0);
        assert_eq!(percentile(&[3.0], 99.0), 3.0);
    }
}
