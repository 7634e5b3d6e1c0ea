//! Next-token sampling: temperature, top-k, nucleus (top-p), greedy at temperature 0,
//! from a seeded generator so a seed reproduces a completion.

use ferrolm_kernels::{fast_exp, lane_max, lane_sum, vectorized};
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct SamplingConfig {
    /// 0 means greedy (argmax).
    pub temperature: f32,
    /// Keep only the k most likely tokens; 0 keeps all.
    pub top_k: usize,
    /// Keep the smallest set of tokens whose probability reaches p; 1.0 keeps all.
    pub top_p: f32,
    pub seed: u64,
}

impl Default for SamplingConfig {
    fn default() -> Self {
        Self { temperature: 0.8, top_k: 50, top_p: 0.95, seed: 0 }
    }
}

pub struct Sampler {
    cfg: SamplingConfig,
    rng: rand_chacha::ChaCha8Rng,
    /// e^(l/t − max) of every token, reused from one draw to the next: a sequence
    /// samples hundreds of times from same-sized logits.
    weights: Vec<f32>,
    /// The candidates of a top-k/top-p draw (token, weight), reused likewise.
    kept: Vec<(u32, f32)>,
}

impl Sampler {
    pub fn new(cfg: SamplingConfig) -> Self {
        let rng = rand_chacha::ChaCha8Rng::seed_from_u64(cfg.seed);
        Self { cfg, rng, weights: Vec::new(), kept: Vec::new() }
    }

    /// The filtered, renormalised distribution the sampler draws from, as (token, p)
    /// sorted by decreasing probability (ties by token id). Exposed for tests and for
    /// scoring; [`Sampler::sample`] draws from the same list without normalising it.
    pub fn distribution(&self, logits: &[f32]) -> Vec<(u32, f32)> {
        let (mut weights, mut kept) = (Vec::new(), Vec::new());
        let t = self.cfg.temperature.max(1e-6);
        let Some(sum) = softmax_weights(logits, t, &mut weights) else {
            return vec![(argmax(logits), 1.0)];
        };
        let kept_sum = filter(&weights, sum, self.cfg.top_k, self.cfg.top_p, &mut kept);
        kept.iter().map(|&(id, w)| (id, w / kept_sum)).collect()
    }

    pub fn sample(&mut self, logits: &[f32]) -> u32 {
        if self.cfg.temperature <= 0.0 {
            return argmax(logits);
        }
        let Some(sum) = softmax_weights(logits, self.cfg.temperature, &mut self.weights) else {
            // every logit −∞ (or NaN): nothing to draw from
            return argmax(logits);
        };
        let r: f32 = self.rng.random();
        if (self.cfg.top_k == 0 || self.cfg.top_k >= logits.len()) && self.cfg.top_p >= 1.0 {
            return draw_in_vocabulary_order(&self.weights, r * sum);
        }
        let kept_sum = filter(&self.weights, sum, self.cfg.top_k, self.cfg.top_p, &mut self.kept);
        let target = r * kept_sum;
        let mut cum = 0f32;
        let mut last = self.kept[0].0;
        for &(tok, w) in &self.kept {
            if w > 0.0 {
                cum += w;
                last = tok;
                if target < cum {
                    return tok;
                }
            }
        }
        // rounding left the target at or past the last partial sum
        last
    }
}

/// `weights[i] = e^(logits[i]/t − max)` (exactly 0 where that is below e^−87, −∞ logits
/// included: a token a grammar masked can never be drawn), vectorised with
/// [`fast_exp`]; returns their sum, None when no logit is finite. The largest weight is
/// exactly 1. perf of `ferrolm serve` under 8 streaming clients: libm's `expf`, twice
/// over an 8192-token vocabulary, was 74 µs per sampled token — a quarter of a batched step.
fn softmax_weights(logits: &[f32], t: f32, weights: &mut Vec<f32>) -> Option<f32> {
    weights.clear();
    weights.resize(logits.len(), 0.0);
    vectorized(
        #[inline(always)]
        || {
            // division by a positive t is monotonic, so max(l)/t is the largest l/t
            let max = lane_max(logits) / t;
            if !max.is_finite() {
                return None;
            }
            for (w, &l) in weights.iter_mut().zip(logits) {
                let x = l / t - max;
                let e = fast_exp(x);
                *w = if x < -87.0 { 0.0 } else { e };
            }
            Some(lane_sum(weights))
        },
    )
}

/// Inverse CDF in vocabulary order — the same distribution as the sorted one, without
/// sorting. Whole blocks are skipped by their (vectorised) sums; the block the target
/// falls in is walked token by token.
fn draw_in_vocabulary_order(weights: &[f32], target: f32) -> u32 {
    const BLOCK: usize = 64;
    let mut cum = 0f32;
    for (b, block) in weights.chunks(BLOCK).enumerate() {
        let s = vectorized(
            #[inline(always)]
            || lane_sum(block),
        );
        if target < cum + s {
            let mut c = cum;
            for (i, &w) in block.iter().enumerate() {
                c += w;
                if w > 0.0 && target < c {
                    return (b * BLOCK + i) as u32;
                }
            }
        }
        cum += s;
    }
    // rounding left the target at or past the last partial sum: the last possible token
    weights.iter().rposition(|&w| w > 0.0).unwrap_or(0) as u32
}

/// The candidates of a filtered draw, in `kept`: the `top_k` heaviest tokens (all when
/// 0), then of those the smallest prefix whose weight reaches `top_p` of theirs, sorted
/// by decreasing weight, ties by token id. Returns the kept weights' sum.
///
/// Sorting the whole vocabulary per token was the serving step's largest cost; the
/// heaviest tokens are found instead by lowering a threshold τ (the largest weight is 1)
/// until the tokens at or above it hold enough weight (top-p) and are enough (top-k).
/// The tokens at or above a threshold are a prefix of the sorted order, so the result is
/// the sorted order's prefix; only those few are sorted.
fn filter(weights: &[f32], sum: f32, top_k: usize, top_p: f32, kept: &mut Vec<(u32, f32)>) -> f32 {
    let k = if top_k == 0 { weights.len() } else { top_k.min(weights.len()) };
    // without top-k the nucleus is measured against the whole sum; with it, against the
    // k kept (known only once they are chosen, and never more than the whole sum)
    let wanted = if top_p < 1.0 && top_k == 0 { top_p * sum } else { 0.0 };
    let mut tau = 1.0f32 / 16.0;
    loop {
        let (count, held, positive) = vectorized(
            #[inline(always)]
            || count_at_least(weights, tau),
        );
        let enough_k = top_k == 0 || count >= k;
        let enough_p = top_p >= 1.0 || top_k > 0 || held >= wanted;
        // every token that can be drawn is in: lowering τ further adds only zero weights
        let all_in = count >= positive && (top_k == 0 || count >= k);
        if (enough_k && enough_p && count > 0) || all_in || tau == 0.0 {
            break;
        }
        // steps of e^−2.8: a real model's distribution falls off steeply, and a step
        // too coarse lets thousands of tail tokens into the sort
        tau = if tau < 1e-36 { 0.0 } else { tau * (1.0 / 16.0) };
    }
    kept.clear();
    kept.extend(weights.iter().enumerate().filter(|&(_, &w)| w >= tau).map(|(i, &w)| (i as u32, w)));
    let order = |a: &(u32, f32), b: &(u32, f32)| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0));
    if kept.len() > k {
        // a flat tail crossed the threshold together: select the k heaviest first
        kept.select_nth_unstable_by(k - 1, order);
        kept.truncate(k);
    }
    kept.sort_unstable_by(order);
    let mut kept_sum: f32 = kept.iter().map(|e| e.1).sum();
    if top_p < 1.0 {
        // the nucleus of the k kept, or of the whole vocabulary (of which only the
        // heaviest few were kept, enough to reach it)
        let cut = top_p * if top_k == 0 { sum } else { kept_sum };
        let mut cum = 0f32;
        if let Some(i) = kept.iter().position(|e| {
            cum += e.1;
            cum >= cut
        }) {
            kept.truncate(i + 1);
        }
        kept_sum = kept.iter().map(|e| e.1).sum();
    }
    kept_sum
}

/// How many weights are at least `tau` and their sum, and how many are positive, in 16
/// independent lanes.
#[inline(always)]
fn count_at_least(weights: &[f32], tau: f32) -> (usize, f32, usize) {
    let mut n = [0u32; 16];
    let mut p = [0u32; 16];
    let mut s = [0f32; 16];
    let chunks = weights.chunks_exact(16);
    let (mut tn, mut ts, mut tp) = (0usize, 0f32, 0usize);
    for &w in chunks.remainder() {
        if w >= tau {
            tn += 1;
            ts += w;
        }
        tp += (w > 0.0) as usize;
    }
    for c in chunks {
        for i in 0..16 {
            let hit = c[i] >= tau;
            n[i] += hit as u32;
            p[i] += (c[i] > 0.0) as u32;
            s[i] += if hit { c[i] } else { 0.0 };
        }
    }
    let total = |a: [u32; 16]| a.iter().map(|&x| x as usize).sum::<usize>();
    (tn + total(n), ts + s.iter().sum::<f32>(), tp + total(p))
}

/// The most likely token (the last of equal maxima; NaN logits are ignored).
pub fn argmax(logits: &[f32]) -> u32 {
    let max = vectorized(
        #[inline(always)]
        || lane_max(logits),
    );
    match logits.iter().rposition(|&l| l == max) {
        Some(i) => i as u32,
        // only NaN logits
        None => logits.iter().enumerate().max_by(|a, b| a.1.total_cmp(b.1)).map(|(i, _)| i as u32).expect("non-empty logits"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LOGITS: [f32; 5] = [2.0, 1.0, 0.5, -1.0, 3.0];

    #[test]
    fn greedy_and_top_k_1_pick_the_argmax() {
        let mut s = Sampler::new(SamplingConfig { temperature: 0.0, ..Default::default() });
        assert_eq!(s.sample(&LOGITS), 4);
        let mut s = Sampler::new(SamplingConfig { temperature: 1.0, top_k: 1, top_p: 1.0, seed: 3 });
        for _ in 0..20 {
            assert_eq!(s.sample(&LOGITS), 4);
        }
    }

    #[test]
    fn top_p_keeps_the_smallest_nucleus() {
        let s = Sampler::new(SamplingConfig { temperature: 1.0, top_k: 0, top_p: 0.7, seed: 0 });
        let d = s.distribution(&LOGITS);
        // softmax: p(4)=0.61, p(0)=0.22 → the nucleus reaching 0.7 is {4, 0}
        assert_eq!(d.iter().map(|e| e.0).collect::<Vec<_>>(), vec![4, 0]);
        assert!((d.iter().map(|e| e.1).sum::<f32>() - 1.0).abs() < 1e-6);
    }

    #[test]
    fn samples_follow_the_softmax_and_are_seeded() {
        let cfg = SamplingConfig { temperature: 1.0, top_k: 0, top_p: 1.0, seed: 42 };
        let mut s = Sampler::new(cfg.clone());
        let n = 20_000;
        let mut counts = [0usize; 5];
        let draws: Vec<u32> = (0..n).map(|_| s.sample(&LOGITS)).collect();
        draws.iter().for_each(|&t| counts[t as usize] += 1);
        let z: f32 = LOGITS.iter().map(|l| l.exp()).sum();
        for (i, &c) in counts.iter().enumerate() {
            let p = LOGITS[i].exp() / z;
            let freq = c as f32 / n as f32;
            assert!((freq - p).abs() < 0.015, "token {i}: {freq} vs {p}");
        }
        let mut again = Sampler::new(cfg);
        assert!(draws.iter().take(100).all(|&t| t == again.sample(&LOGITS)));
    }

    /// The sorted-vocabulary definition of top-k/top-p that [`filter`] must equal, on the
    /// same weights (near-equal logits may order differently under another exp).
    fn reference(logits: &[f32], t: f32, top_k: usize, top_p: f32) -> Vec<u32> {
        let mut weights = Vec::new();
        softmax_weights(logits, t, &mut weights).unwrap();
        let mut idx: Vec<(u32, f64)> = weights.iter().enumerate().map(|(i, &w)| (i as u32, w as f64)).collect();
        idx.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        if top_k > 0 {
            idx.truncate(top_k);
        }
        let sum: f64 = idx.iter().map(|e| e.1).sum();
        let mut cum = 0.0;
        let keep = idx.iter().position(|e| {
            cum += e.1;
            cum >= top_p as f64 * sum
        });
        if top_p < 1.0 {
            idx.truncate(keep.map_or(idx.len(), |i| i + 1));
        }
        idx.into_iter().map(|e| e.0).collect()
    }

    fn lcg_logits(n: usize, seed: u64, spread: f32) -> Vec<f32> {
        let mut x = seed;
        (0..n)
            .map(|_| {
                x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                spread * ((x >> 40) as f32 / (1u64 << 24) as f32 - 0.5)
            })
            .collect()
    }

    #[test]
    fn threshold_filter_equals_sorting_the_vocabulary() {
        let mut checked = 0;
        for (seed, spread) in [(1u64, 2.0f32), (2, 8.0), (3, 30.0), (4, 0.01)] {
            let logits = lcg_logits(3000, seed, spread);
            for (k, p) in [(0, 0.5f32), (0, 0.9), (0, 0.99), (1, 1.0), (7, 1.0), (50, 0.95), (2999, 0.3), (5000, 1.0), (40, 0.0)] {
                let s = Sampler::new(SamplingConfig { temperature: 0.7, top_k: k, top_p: p, seed: 0 });
                let got: Vec<u32> = s.distribution(&logits).iter().map(|e| e.0).collect();
                let want = reference(&logits, 0.7, k, p);
                // the nucleus edge may move by a token where f32 and f64 partial sums
                // straddle the cut; everything before it is the same sorted prefix
                let common = got.len().min(want.len());
                assert_eq!(got[..common], want[..common], "spread {spread} k {k} p {p}");
                assert!(got.len().abs_diff(want.len()) <= 1, "spread {spread} k {k} p {p}: {} vs {}", got.len(), want.len());
                checked += 1;
            }
        }
        assert_eq!(checked, 36);
    }

    #[test]
    fn masked_tokens_are_never_drawn_and_all_masked_does_not_panic() {
        let mut logits = lcg_logits(1000, 9, 4.0);
        for (i, l) in logits.iter_mut().enumerate() {
            if i % 7 != 0 {
                *l = f32::NEG_INFINITY;
            }
        }
        for (k, p) in [(0, 1.0f32), (0, 0.9), (500, 1.0), (3, 0.5)] {
            let mut s = Sampler::new(SamplingConfig { temperature: 1.5, top_k: k, top_p: p, seed: 5 });
            for _ in 0..500 {
                assert_eq!(s.sample(&logits) % 7, 0, "k {k} p {p}");
            }
        }
        let all = vec![f32::NEG_INFINITY; 10];
        let mut s = Sampler::new(SamplingConfig { temperature: 1.0, top_k: 0, top_p: 1.0, seed: 5 });
        assert!(s.sample(&all) < 10);
    }

    #[test]
    fn argmax_takes_the_last_of_equal_maxima_and_ignores_nan() {
        assert_eq!(argmax(&[1.0, 3.0, 2.0, 3.0, -1.0]), 3);
        assert_eq!(argmax(&[f32::NAN, 0.5, 0.25]), 1);
        let long: Vec<f32> = (0..1037).map(|i| if i == 1000 { 99.0 } else { (i % 13) as f32 }).collect();
        assert_eq!(argmax(&long), 1000);
    }

    #[test]
    fn draws_across_many_blocks_follow_the_softmax() {
        // 300 tokens: the vocabulary-order walk skips whole 64-token blocks by their sums
        let logits = lcg_logits(300, 11, 6.0);
        let z: f64 = logits.iter().map(|&l| (l as f64).exp()).sum();
        for (k, p) in [(0, 1.0f32), (0, 0.999_999)] {
            let mut s = Sampler::new(SamplingConfig { temperature: 1.0, top_k: k, top_p: p, seed: 8 });
            let n = 60_000;
            let mut counts = vec![0usize; 300];
            (0..n).for_each(|_| counts[s.sample(&logits) as usize] += 1);
            // total variation distance between the draws and the softmax
            let tv: f64 = counts.iter().zip(&logits).map(|(&c, &l)| (c as f64 / n as f64 - (l as f64).exp() / z).abs()).sum::<f64>() / 2.0;
            assert!(tv < 0.04, "k {k} p {p}: total variation {tv}");
        }
    }
}
