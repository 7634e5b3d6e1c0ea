//! Interpolated modified Kneser-Ney estimation (Chen & Goodman 1998, as KenLM `lmplz`).
//!
//! * Raw counts c(g) are taken for all orders over `<s> w1 … wk </s>`.
//! * Adjusted counts a(g): for the highest order, and for n-grams starting with `<s>`
//!   (nothing can precede `<s>`), a(g) = c(g); otherwise a(g) = |{v : c(v g) > 0}|.
//! * Discounts per order n from the count-of-counts t_k of adjusted counts:
//!   Y = t1 / (t1 + 2 t2), D_k = k − (k+1) Y t_{k+1} / t_k for k = 1, 2, 3 (D3 serves 3+).
//! * u(w|h) = (a(hw) − D(a(hw))) / Σ_x a(hx);
//!   γ(h) = (D1 N1(h·) + D2 N2(h·) + D3 N3+(h·)) / Σ_x a(hx);
//!   p(w|h) = u(w|h) + γ(h) p(w|h'), bottoming out at the uniform 1/|V| where V is the
//!   vocabulary without `<s>` but with `<unk>`.
//! * The ARPA backoff of context h is γ(h) (1 for contexts never extended).

use crate::model::{Model, BOS, EOS, UNK};
use anyhow::{bail, Result};
use std::collections::HashMap;

#[derive(Clone, Debug)]
pub struct TrainOptions {
    /// Highest n-gram order (≥ 1).
    pub order: usize,
    /// When a count-of-count is zero the discounts are undefined; KenLM aborts unless
    /// `--discount_fallback` is given, then uses D = (0.5, 1, 1.5). We do the same.
    pub discount_fallback: bool,
}

impl Default for TrainOptions {
    fn default() -> Self {
        Self { order: 5, discount_fallback: true }
    }
}

/// Discounts of one order, as KenLM prints them.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Discounts {
    pub d: [f64; 3],
}

impl Discounts {
    pub fn get(&self, count: u64) -> f64 {
        match count {
            0 => 0.0,
            1 => self.d[0],
            2 => self.d[1],
            _ => self.d[2],
        }
    }
}

const FALLBACK: [f64; 3] = [0.5, 1.0, 1.5];

/// Compute the modified Kneser-Ney discounts from count-of-counts t[0..4] = t1..t4.
pub fn discounts_from(t: [u64; 4], order: usize, fallback: bool) -> Result<Discounts> {
    let t: Vec<f64> = t.iter().map(|&x| x as f64).collect();
    let valid = t.iter().all(|&x| x > 0.0);
    if valid {
        let y = t[0] / (t[0] + 2.0 * t[1]);
        let mut d = [0.0; 3];
        for k in 0..3 {
            let kk = (k + 1) as f64;
            d[k] = kk - (kk + 1.0) * y * t[k + 1] / t[k];
        }
        if d.iter().enumerate().all(|(k, &x)| x > 0.0 && x < (k + 1) as f64 + 1e-12) {
            return Ok(Discounts { d });
        }
    }
    if fallback {
        Ok(Discounts { d: FALLBACK })
    } else {
        bail!("order {order}: count-of-counts {t:?} give invalid Kneser-Ney discounts (corpus too small?); enable discount fallback")
    }
}

/// (Σ a, γ numerator) of a context from its integer statistics [Σ a, N1, N2, N3+]:
/// γ(h)·Σa = D1·N1 + D2·N2 + D3·N3+, always evaluated in this order.
pub(crate) fn context_weights(d: &Discounts, s: [u64; 4]) -> [f64; 2] {
    [s[0] as f64, d.d[0] * s[1] as f64 + d.d[1] * s[2] as f64 + d.d[2] * s[3] as f64]
}

/// Maps words to ids; ids 0,1,2 are `<unk>`, `<s>`, `</s>` as in KenLM.
#[derive(Default)]
pub struct WordVocab {
    pub words: Vec<String>,
    pub index: HashMap<String, u32>,
}

impl WordVocab {
    pub fn new() -> Self {
        let mut v = Self::default();
        for w in [UNK, BOS, EOS] {
            v.intern(w);
        }
        v
    }
    pub fn intern(&mut self, w: &str) -> u32 {
        if let Some(&i) = self.index.get(w) {
            return i;
        }
        let i = self.words.len() as u32;
        self.words.push(w.to_string());
        self.index.insert(w.to_string(), i);
        i
    }
}

/// Train on whitespace-tokenised lines (one sentence per line; empty lines are sentences
/// of zero words, as in KenLM which still counts `<s> </s>`).
pub fn train_text<'a, I: IntoIterator<Item = &'a str>>(lines: I, opts: &TrainOptions) -> Result<Model> {
    let mut vocab = WordVocab::new();
    let mut est = Estimator::new(opts.order)?;
    let mut buf = Vec::new();
    for line in lines {
        buf.clear();
        for w in line.split_whitespace() {
            if w == BOS || w == EOS || w == UNK {
                // KenLM rejects these inside text; we map them the same way lmplz does
                // for <unk> (kept as a word) and treat stray <s>/</s> as an error.
                if w != UNK {
                    bail!("the text contains the reserved token {w}");
                }
            }
            buf.push(vocab.intern(w));
        }
        est.add_sentence(&buf);
    }
    est.finish(vocab.words, opts)
}

/// Train on sentences of token ids. Ids are shifted by 3 internally so that `<unk>`,
/// `<s>`, `</s>` keep their reserved ids; the vocabulary strings are the decimal ids.
pub fn train_ids<'a, I: IntoIterator<Item = &'a [u32]>>(sentences: I, opts: &TrainOptions) -> Result<Model> {
    let mut est = Estimator::new(opts.order)?;
    let mut max_id = 0u32;
    let mut buf = Vec::new();
    for s in sentences {
        buf.clear();
        buf.extend(s.iter().map(|&t| {
            max_id = max_id.max(t + 1);
            t + 3
        }));
        est.add_sentence(&buf);
    }
    let mut words: Vec<String> = vec![UNK.into(), BOS.into(), EOS.into()];
    words.extend((0..max_id).map(|i| i.to_string()));
    est.finish(words, opts)
}

/// In-memory counter of raw n-gram counts for all orders.
pub struct Estimator {
    order: usize,
    /// raw[n-1]: n-gram → raw count.
    raw: Vec<HashMap<Vec<u32>, u64>>,
}

const BOS_ID: u32 = 1;
const EOS_ID: u32 = 2;

impl Estimator {
    pub fn new(order: usize) -> Result<Self> {
        if order == 0 {
            bail!("n-gram order must be at least 1");
        }
        Ok(Self { order, raw: vec![HashMap::new(); order] })
    }

    pub fn add_sentence(&mut self, words: &[u32]) {
        let mut s = Vec::with_capacity(words.len() + 2);
        s.push(BOS_ID);
        s.extend_from_slice(words);
        s.push(EOS_ID);
        // every n-gram ending at position i ≥ 1 (never one that is just `<s>`)
        for i in 1..s.len() {
            for n in 1..=self.order.min(i + 1) {
                let g = &s[i + 1 - n..=i];
                *self.raw[n - 1].entry(g.to_vec()).or_insert(0) += 1;
            }
        }
    }

    pub fn finish(self, words: Vec<String>, opts: &TrainOptions) -> Result<Model> {
        let order = self.order;
        // adjusted counts
        let mut adj: Vec<HashMap<Vec<u32>, u64>> = vec![HashMap::new(); order];
        adj[order - 1] = self.raw[order - 1].clone();
        for n in (1..order).rev() {
            let mut a: HashMap<Vec<u32>, u64> = HashMap::with_capacity(self.raw[n - 1].len());
            for (g, &c) in &self.raw[n - 1] {
                if g[0] == BOS_ID {
                    a.insert(g.clone(), c);
                }
            }
            for g in self.raw[n].keys() {
                if g[1] != BOS_ID {
                    *a.entry(g[1..].to_vec()).or_insert(0) += 1;
                }
            }
            adj[n - 1] = a;
        }
        // discounts per order from count-of-counts of adjusted counts
        let mut discounts = Vec::with_capacity(order);
        for (n, a) in adj.iter().enumerate() {
            let mut t = [0u64; 4];
            for (g, &c) in a {
                if n == 0 && g[0] == BOS_ID {
                    continue;
                }
                if (1..=4).contains(&c) {
                    t[c as usize - 1] += 1;
                }
            }
            discounts.push(discounts_from(t, n + 1, opts.discount_fallback)?);
        }
        // context statistics per context: Σ a, and how many continuations have a = 1, 2, 3+
        // (integers, so the result does not depend on the order they are summed in — the
        // streaming estimator must give bit-identical probabilities)
        let mut ctx: Vec<HashMap<Vec<u32>, [u64; 4]>> = vec![HashMap::new(); order];
        for (n, a) in adj.iter().enumerate() {
            let m = &mut ctx[n];
            for (g, &c) in a {
                if n == 0 && g[0] == BOS_ID {
                    continue;
                }
                let e = m.entry(g[..n].to_vec()).or_insert([0; 4]);
                e[0] += c;
                e[c.min(3) as usize] += 1;
            }
        }
        let ctx: Vec<HashMap<Vec<u32>, [f64; 2]>> = ctx
            .into_iter()
            .enumerate()
            .map(|(n, m)| m.into_iter().map(|(h, s)| (h, context_weights(&discounts[n], s))).collect())
            .collect();
        // vocabulary size for the uniform floor: every word except <s> (with <unk>)
        let vocab_size = (words.len() - 1) as f64;
        let mut probs: Vec<HashMap<Vec<u32>, (f64, f64)>> = Vec::with_capacity(order); // (p, gamma-as-backoff)
        for n in 0..order {
            let d = &discounts[n];
            let mut m: HashMap<Vec<u32>, (f64, f64)> = HashMap::with_capacity(adj[n].len() + 3);
            for (g, &c) in &adj[n] {
                if n == 0 && g[0] == BOS_ID {
                    continue;
                }
                let [den, gnum] = ctx[n][&g[..n]];
                let lower = if n == 0 { 1.0 / vocab_size } else { probs[n - 1][&g[1..]].0 };
                let p = (c as f64 - d.get(c)) / den + gnum / den * lower;
                m.insert(g.clone(), (p, 1.0));
            }
            if n == 0 {
                // unigrams that never occur (ids assigned but unseen, e.g. <unk>)
                let [den, gnum] = ctx[0][&Vec::new()];
                for id in 0..words.len() as u32 {
                    if id != BOS_ID {
                        m.entry(vec![id]).or_insert((gnum / den / vocab_size, 1.0));
                    }
                }
                // <s> is in the ARPA with probability 0 (written as -99), like KenLM
                m.insert(vec![BOS_ID], (0.0, 1.0));
            }
            probs.push(m);
        }
        // backoffs: γ(h) for every context h that is itself an n-gram of the model
        for n in 1..order {
            for (h, &[den, gnum]) in &ctx[n] {
                if let Some(e) = probs[n - 1].get_mut(h) {
                    e.1 = gnum / den;
                }
            }
        }
        Ok(Model::from_parts(words, probs, discounts))
    }
}
