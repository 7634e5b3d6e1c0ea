//! Reciprocal rank fusion (Cormack, Clarke and Büttcher, SIGIR 2009): combine rankings from
//! retrievers whose scores are not comparable (BM25 and cosine) by rank alone.
//! `score(d) = Σ_r 1 / (k + rank_r(d))`, ranks 1-based, a ranking that lacks `d` adds nothing.

use std::collections::HashMap;
use std::hash::Hash;

/// The `k` of the original paper, which damps the weight of the very first ranks.
pub const RRF_K: f64 = 60.0;

/// Fuse `rankings` (each best first; an item repeated within one ranking counts at its first
/// position). Returns every item with its fused score, best first; ties keep the order in
/// which items were first met (ranking by ranking, rank by rank), so the result is
/// deterministic.
pub fn reciprocal_rank_fusion<T: Clone + Eq + Hash>(rankings: &[Vec<T>], k: f64) -> Vec<(T, f64)> {
    weighted_reciprocal_rank_fusion(rankings, &vec![1.0; rankings.len()], k)
}

/// [`reciprocal_rank_fusion`] with a weight per ranking: `score(d) = Σ_r w_r / (k + rank_r(d))`.
/// A weak retriever (a small dense encoder) can then add its evidence without outvoting a
/// strong one; weight 0 leaves a ranking out.
pub fn weighted_reciprocal_rank_fusion<T: Clone + Eq + Hash>(rankings: &[Vec<T>], weights: &[f64], k: f64) -> Vec<(T, f64)> {
    assert!(k >= 0.0, "RRF k must be non-negative");
    assert_eq!(rankings.len(), weights.len(), "one weight per ranking");
    let mut score: HashMap<T, (f64, usize)> = HashMap::new();
    let mut order = 0;
    for (ranking, &w) in rankings.iter().zip(weights) {
        if w == 0.0 {
            continue;
        }
        let mut seen = std::collections::HashSet::new();
        for (i, item) in ranking.iter().enumerate() {
            if !seen.insert(item) {
                continue;
            }
            let e = score.entry(item.clone()).or_insert_with(|| {
                order += 1;
                (0.0, order)
            });
            e.0 += w / (k + (i + 1) as f64);
        }
    }
    let mut out: Vec<(T, f64, usize)> = score.into_iter().map(|(t, (s, o))| (t, s, o)).collect();
    out.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.2.cmp(&b.2)));
    out.into_iter().map(|(t, s, _)| (t, s)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weights_scale_each_ranking() {
        // a: 1/(60+1) from the first ranking; b: 0.25/(60+1) from the second.
        let f = weighted_reciprocal_rank_fusion(&[vec!["a"], vec!["b"]], &[1.0, 0.25], 60.0);
        assert_eq!(f[0].0, "a");
        assert!((f[1].1 - 0.25 / 61.0).abs() < 1e-12);
        // weight 0 leaves the ranking out entirely
        let f = weighted_reciprocal_rank_fusion(&[vec!["a"], vec!["b"]], &[1.0, 0.0], 60.0);
        assert_eq!(f.len(), 1);
        // equal weights are plain RRF
        let r = [vec![1, 2, 3], vec![3, 1]];
        assert_eq!(weighted_reciprocal_rank_fusion(&r, &[1.0, 1.0], 60.0), reciprocal_rank_fusion(&r, 60.0));
    }

    #[test]
    fn fused_scores_are_sums_of_reciprocal_ranks() {
        let bm25 = vec!["a", "b", "c"];
        let dense = vec!["c", "a", "d"];
        let fused = reciprocal_rank_fusion(&[bm25, dense], 60.0);
        let get = |x: &str| fused.iter().find(|(t, _)| *t == x).unwrap().1;
        assert!((get("a") - (1.0 / 61.0 + 1.0 / 62.0)).abs() < 1e-15);
        assert!((get("c") - (1.0 / 63.0 + 1.0 / 61.0)).abs() < 1e-15);
        assert!((get("b") - 1.0 / 62.0).abs() < 1e-15);
        assert!((get("d") - 1.0 / 63.0).abs() < 1e-15);
        let order: Vec<&str> = fused.iter().map(|(t, _)| *t).collect();
        // a: 1/61+1/62 > c: 1/61+1/63 > b: 1/62 > d: 1/63.
        assert_eq!(order, ["a", "c", "b", "d"]);
    }

    #[test]
    fn agreement_beats_a_single_first_place() {
        // x is first in one ranking only; y is second in both: 2/62 > 1/61.
        let fused = reciprocal_rank_fusion(&[vec!["x", "y"], vec!["z", "y"]], RRF_K);
        assert_eq!(fused[0].0, "y");
        // With k = 0 the first place weighs 1 against 1/2 + 1/2: a tie broken by first sight.
        let fused = reciprocal_rank_fusion(&[vec!["x", "y"], vec!["z", "y"]], 0.0);
        assert_eq!(fused.iter().map(|f| f.0).collect::<Vec<_>>(), ["x", "y", "z"]);
    }

    #[test]
    fn repeats_and_empty_rankings() {
        let fused = reciprocal_rank_fusion(&[vec![7, 7, 8], vec![]], 60.0);
        assert_eq!(fused.len(), 2);
        assert!((fused[0].1 - 1.0 / 61.0).abs() < 1e-15);
        assert!((fused[1].1 - 1.0 / 63.0).abs() < 1e-15);
        assert!(reciprocal_rank_fusion::<u32>(&[], 60.0).is_empty());
    }
}
