//! Next-token sampling: temperature, top-k, nucleus (top-p), greedy at temperature 0,
//! from a seeded generator so a seed reproduces a completion.

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
}

impl Sampler {
    pub fn new(cfg: SamplingConfig) -> Self {
        let rng = rand_chacha::ChaCha8Rng::seed_from_u64(cfg.seed);
        Self { cfg, rng }
    }

    /// The filtered, renormalised distribution the sampler draws from, as (token, p)
    /// sorted by decreasing probability. Exposed for tests and for scoring.
    pub fn distribution(&self, logits: &[f32]) -> Vec<(u32, f32)> {
        let t = self.cfg.temperature.max(1e-6);
        let mut idx: Vec<(u32, f32)> = logits.iter().enumerate().map(|(i, &l)| (i as u32, l / t)).collect();
        // decreasing probability, ties by token id (the order a stable sort gives)
        let order = |a: &(u32, f32), b: &(u32, f32)| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0));
        if self.cfg.top_k > 0 && self.cfg.top_k < idx.len() {
            // only the k best are kept: select them, then sort just those
            idx.select_nth_unstable_by(self.cfg.top_k - 1, order);
            idx.truncate(self.cfg.top_k);
        }
        idx.sort_unstable_by(order);
        let max = idx[0].1;
        let mut sum = 0f32;
        for e in idx.iter_mut() {
            e.1 = (e.1 - max).exp();
            sum += e.1;
        }
        for e in idx.iter_mut() {
            e.1 /= sum;
        }
        if self.cfg.top_p < 1.0 {
            let mut cum = 0f32;
            let mut keep = idx.len();
            for (i, e) in idx.iter().enumerate() {
                cum += e.1;
                if cum >= self.cfg.top_p {
                    keep = i + 1;
                    break;
                }
            }
            idx.truncate(keep);
            let s: f32 = idx.iter().map(|e| e.1).sum();
            idx.iter_mut().for_each(|e| e.1 /= s);
        }
        idx
    }

    pub fn sample(&mut self, logits: &[f32]) -> u32 {
        if self.cfg.temperature <= 0.0 {
            return argmax(logits);
        }
        if self.cfg.top_k == 0 && self.cfg.top_p >= 1.0 {
            return self.sample_unfiltered(logits);
        }
        let dist = self.distribution(logits);
        let r: f32 = self.rng.random();
        let mut cum = 0f32;
        for &(tok, p) in &dist {
            cum += p;
            if r < cum {
                return tok;
            }
        }
        dist.last().expect("non-empty distribution").0
    }
}

impl Sampler {
    /// A draw from the whole softmax (no top-k, no top-p): the same distribution as
    /// [`Sampler::distribution`] gives, walked in vocabulary order, so nothing is sorted —
    /// sorting the vocabulary for every token was a third of a batched serving step's time
    /// (8192 tokens × 8 sequences). One uniform draw per token, as the filtered path.
    fn sample_unfiltered(&mut self, logits: &[f32]) -> u32 {
        let t = self.cfg.temperature.max(1e-6);
        let max = logits.iter().fold(f32::NEG_INFINITY, |m, &l| m.max(l / t));
        let sum: f32 = logits.iter().map(|&l| (l / t - max).exp()).sum();
        let r: f32 = self.rng.random();
        let target = r * sum;
        let mut cum = 0f32;
        let mut last = 0;
        for (i, &l) in logits.iter().enumerate() {
            let e = (l / t - max).exp();
            if e > 0.0 {
                cum += e;
                last = i;
                if target < cum {
                    return i as u32;
                }
            }
        }
        // rounding left the target at or past the last partial sum
        last as u32
    }
}

pub fn argmax(logits: &[f32]) -> u32 {
    logits.iter().enumerate().max_by(|a, b| a.1.total_cmp(b.1)).map(|(i, _)| i as u32).expect("non-empty logits")
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
}
