//! Training. Threads share the two weight matrices without locks (Hogwild, as the
//! original C code). Why this is acceptable: updates are small sparse additions to rows;
//! a lost or torn update only perturbs SGD noise (Recht et al. 2011), and every access
//! stays inside the allocation (indices are checked against the vocabulary). Rust's
//! memory model calls concurrent non-atomic writes a data race, so the shared matrices
//! are only reached through raw pointers in `Shared` and never as `&mut` slices spanning
//! the whole matrix; each access forms a short-lived row slice.

use anyhow::{bail, Context, Result};
use std::collections::HashMap;
use std::io::Read;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};

#[derive(Clone, Debug)]
pub struct Options {
    pub dim: usize,
    pub window: usize,
    pub negative: usize,
    pub min_count: u64,
    pub epochs: usize,
    pub threads: usize,
    pub cbow: bool,
    pub alpha: f32,
    pub sample: f64,
    pub seed: u64,
}

impl Default for Options {
    fn default() -> Self {
        Self { dim: 100, window: 5, negative: 5, min_count: 5, epochs: 5, threads: 2, cbow: false, alpha: 0.025, sample: 1e-3, seed: 1 }
    }
}

const EXP_TABLE: usize = 1000;
const MAX_EXP: f32 = 6.0;
const TABLE_SIZE: usize = 10_000_000;
const MAX_SENTENCE: usize = 1000;

struct Shared {
    ptr: *mut f32,
    dim: usize,
}
unsafe impl Sync for Shared {}
impl Shared {
    /// Row `i`. SAFETY: caller guarantees i < rows; concurrent writers are the accepted
    /// Hogwild race described at the top of this file.
    #[allow(clippy::mut_from_ref)]
    unsafe fn row(&self, i: usize) -> &mut [f32] {
        std::slice::from_raw_parts_mut(self.ptr.add(i * self.dim), self.dim)
    }
}

pub struct Trained {
    pub words: Vec<String>,
    pub counts: Vec<u64>,
    pub vectors: Vec<f32>,
    pub dim: usize,
    pub words_per_sec: f64,
    pub seconds: f64,
}

/// Train on whitespace-tokenised files; newlines end sentences (as in the C tool).
pub fn train(inputs: &[PathBuf], o: &Options) -> Result<Trained> {
    if o.dim == 0 || o.window == 0 || o.threads == 0 || o.epochs == 0 {
        bail!("dim, window, threads and epochs must be positive");
    }
    let mut text = String::new();
    for p in inputs {
        std::fs::File::open(p).with_context(|| format!("opening {}", p.display()))?
            .read_to_string(&mut text).with_context(|| format!("{}: not UTF-8", p.display()))?;
        text.push('\n');
    }
    let mut freq: HashMap<&str, u64> = HashMap::new();
    for w in text.split_whitespace() {
        *freq.entry(w).or_insert(0) += 1;
    }
    let mut vocab: Vec<(&str, u64)> = freq.into_iter().filter(|&(_, c)| c >= o.min_count).collect();
    vocab.sort_unstable_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
    if vocab.is_empty() {
        bail!("no word occurs at least min-count={} times", o.min_count);
    }
    let index: HashMap<&str, u32> = vocab.iter().enumerate().map(|(i, w)| (w.0, i as u32)).collect();
    // sentences of ids; out-of-vocabulary words are dropped as in the original
    let mut corpus: Vec<u32> = Vec::new();
    let mut bounds: Vec<usize> = vec![0];
    for line in text.lines() {
        for w in line.split_whitespace() {
            if let Some(&i) = index.get(w) {
                corpus.push(i);
                if corpus.len() - bounds.last().unwrap() >= MAX_SENTENCE {
                    bounds.push(corpus.len());
                }
            }
        }
        if corpus.len() > *bounds.last().unwrap() {
            bounds.push(corpus.len());
        }
    }
    drop(index);
    let words: Vec<String> = vocab.iter().map(|w| w.0.to_string()).collect();
    let counts: Vec<u64> = vocab.iter().map(|w| w.1).collect();
    drop(vocab);
    drop(text);
    let v = words.len();
    let train_words: u64 = corpus.len() as u64;

    // unigram^0.75 table
    let pow: Vec<f64> = counts.iter().map(|&c| (c as f64).powf(0.75)).collect();
    let total: f64 = pow.iter().sum();
    let mut table = vec![0u32; TABLE_SIZE];
    let (mut i, mut cum) = (0usize, pow[0] / total);
    for (a, t) in table.iter_mut().enumerate() {
        *t = i as u32;
        if a as f64 / TABLE_SIZE as f64 > cum && i + 1 < v {
            i += 1;
            cum += pow[i] / total;
        }
    }
    // subsampling keep-probabilities (the C formula)
    let thr = o.sample * train_words as f64;
    let keep: Vec<f32> = counts
        .iter()
        .map(|&c| if o.sample > 0.0 { (((c as f64 / thr).sqrt() + 1.0) * thr / c as f64) as f32 } else { 2.0 })
        .collect();
    let exp_table: Vec<f32> = (0..EXP_TABLE)
        .map(|i| {
            let e = ((i as f32 / EXP_TABLE as f32 * 2.0 - 1.0) * MAX_EXP).exp();
            e / (e + 1.0)
        })
        .collect();

    let d = o.dim;
    let mut syn0 = vec![0f32; v * d];
    let mut seed = o.seed;
    for x in syn0.iter_mut() {
        seed = seed.wrapping_mul(25214903917).wrapping_add(11);
        *x = (((seed & 0xFFFF) as f32 / 65536.0) - 0.5) / d as f32;
    }
    let mut syn1 = vec![0f32; v * d];
    let s0 = Shared { ptr: syn0.as_mut_ptr(), dim: d };
    let s1 = Shared { ptr: syn1.as_mut_ptr(), dim: d };
    let done = AtomicU64::new(0);
    let total_work = o.epochs as u64 * train_words + 1;
    let nsent = bounds.len() - 1;
    let start = std::time::Instant::now();
    let bar = ferrolm_common::progress::bar(total_work, "word2vec");
    std::thread::scope(|sc| {
        for t in 0..o.threads {
            let (s0, s1, done, corpus, bounds, table, keep, exp_table, bar) = (&s0, &s1, &done, &corpus, &bounds, &table, &keep, &exp_table, &bar);
            sc.spawn(move || {
                let mut rng: u64 = t as u64 + o.seed;
                let mut next = || {
                    rng = rng.wrapping_mul(25214903917).wrapping_add(11);
                    rng
                };
                let mut neu1 = vec![0f32; d];
                let mut neu1e = vec![0f32; d];
                let mut sen: Vec<u32> = Vec::with_capacity(MAX_SENTENCE);
                let (lo, hi) = (nsent * t / o.threads, nsent * (t + 1) / o.threads);
                let mut alpha = o.alpha;
                let mut local = 0u64;
                for _ in 0..o.epochs {
                    for s in lo..hi {
                        let raw = &corpus[bounds[s]..bounds[s + 1]];
                        local += raw.len() as u64;
                        if local > 10_000 {
                            let w = done.fetch_add(local, Ordering::Relaxed) + local;
                            bar.inc(local);
                            local = 0;
                            alpha = (o.alpha * (1.0 - w as f32 / total_work as f32)).max(o.alpha * 1e-4);
                        }
                        sen.clear();
                        for &w in raw {
                            if keep[w as usize] < 1.0 && keep[w as usize] < (next() & 0xFFFF) as f32 / 65536.0 {
                                continue;
                            }
                            sen.push(w);
                        }
                        for pos in 0..sen.len() {
                            let word = sen[pos] as usize;
                            let b = (next() % o.window as u64) as usize;
                            let from = pos.saturating_sub(o.window - b);
                            let to = (pos + o.window - b + 1).min(sen.len());
                            // SAFETY (all unsafe row() calls): ids < v by construction.
                            unsafe {
                                if o.cbow {
                                    neu1.iter_mut().for_each(|x| *x = 0.0);
                                    let mut cw = 0;
                                    for c in from..to {
                                        if c != pos {
                                            let r = s0.row(sen[c] as usize);
                                            for k in 0..d { neu1[k] += r[k]; }
                                            cw += 1;
                                        }
                                    }
                                    if cw == 0 { continue; }
                                    neu1.iter_mut().for_each(|x| *x /= cw as f32);
                                    neu1e.iter_mut().for_each(|x| *x = 0.0);
                                    negative(word, &neu1, &mut neu1e, s1, o.negative, table, exp_table, alpha, &mut next);
                                    for c in from..to {
                                        if c != pos {
                                            let r = s0.row(sen[c] as usize);
                                            for k in 0..d { r[k] += neu1e[k]; }
                                        }
                                    }
                                } else {
                                    for c in from..to {
                                        if c == pos { continue; }
                                        let l1 = s0.row(sen[c] as usize);
                                        neu1e.iter_mut().for_each(|x| *x = 0.0);
                                        negative(word, l1, &mut neu1e, s1, o.negative, table, exp_table, alpha, &mut next);
                                        for k in 0..d { l1[k] += neu1e[k]; }
                                    }
                                }
                            }
                        }
                    }
                }
                done.fetch_add(local, Ordering::Relaxed);
                bar.inc(local);
            });
        }
    });
    bar.finish_and_clear();
    let secs = start.elapsed().as_secs_f64();
    Ok(Trained { words, counts, vectors: syn0, dim: d, words_per_sec: (o.epochs as u64 * train_words) as f64 / secs, seconds: secs })
}

/// One positive and `neg` negative logistic updates of output rows against hidden `h`;
/// accumulates the input gradient in `grad`.
#[allow(clippy::too_many_arguments)]
#[inline]
unsafe fn negative(word: usize, h: &[f32], grad: &mut [f32], s1: &Shared, neg: usize, table: &[u32], exp_table: &[f32], alpha: f32, next: &mut impl FnMut() -> u64) {
    for j in 0..=neg {
        let (target, label) = if j == 0 {
            (word, 1.0f32)
        } else {
            let t = table[((next() >> 16) % TABLE_SIZE as u64) as usize] as usize;
            if t == word { continue; }
            (t, 0.0)
        };
        let r = s1.row(target);
        let f: f32 = h.iter().zip(r.iter()).map(|(a, b)| a * b).sum();
        let g = if f > MAX_EXP {
            (label - 1.0) * alpha
        } else if f < -MAX_EXP {
            label * alpha
        } else {
            // rounding can land exactly on EXP_TABLE for f just below MAX_EXP; clamp
            (label - exp_table[(((f + MAX_EXP) * (EXP_TABLE as f32 / MAX_EXP / 2.0)) as usize).min(EXP_TABLE - 1)]) * alpha
        };
        for k in 0..h.len() { grad[k] += g * r[k]; }
        for k in 0..h.len() { r[k] += g * h[k]; }
    }
}
