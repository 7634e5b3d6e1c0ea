//! Training. Threads share the two weight matrices without locks (Hogwild, as the
//! original C code): they are `ferrolm_kernels::hogwild` matrices, whose row accessor
//! holds the (documented) race, so this crate has no unsafe code. The update kernel runs
//! inside `ferrolm_kernels::vectorized`, compiled for AVX-512 or AVX2+FMA when the CPU has
//! them (the release build targets baseline x86-64).

use anyhow::{bail, Context, Result};
use std::collections::HashMap;
use std::io::Read;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};

use ferrolm_kernels::hogwild::{HogwildMatrix, HogwildRows};

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
    /// The learning rate at the end of training: it falls linearly from `alpha` to this over
    /// all epochs (gensim's `min_alpha`, default 1e-4).
    pub min_alpha: f32,
    pub sample: f64,
    pub seed: u64,
}

impl Default for Options {
    fn default() -> Self {
        Self { dim: 100, window: 5, negative: 5, min_count: 5, epochs: 5, threads: 2, cbow: false, alpha: 0.025, min_alpha: 1e-4, sample: 1e-3, seed: 1 }
    }
}

const EXP_TABLE: usize = 1000;
const MAX_EXP: f32 = 6.0;
const MAX_SENTENCE: usize = 1000;
const CHUNK_WORDS: usize = 10_000;

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
    if !(o.min_alpha >= 0.0 && o.min_alpha <= o.alpha) {
        bail!("min-alpha must lie in 0..=alpha (got min-alpha {} with alpha {})", o.min_alpha, o.alpha);
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

    // negative sampling from unigram^0.75 by Walker's alias method: O(1) per draw from a
    // table of 8 bytes per word, which stays in cache (the C tool's 1e8-slot table — 40 MB
    // here with 1e7 — costs a cache miss per negative sample)
    let table = alias_table(&counts);
    let keep = keep_thresholds(&counts, o.sample, train_words);
    let exp_table: Vec<f32> = (0..EXP_TABLE)
        .map(|i| {
            let e = ((i as f32 / EXP_TABLE as f32 * 2.0 - 1.0) * MAX_EXP).exp();
            e / (e + 1.0)
        })
        .collect();

    let d = o.dim;
    let mut m0 = init_input(v, d, o.seed);
    let mut m1 = HogwildMatrix::zeros(v, d);
    let (s0, s1) = (m0.shared(), m1.shared());

    // Work is handed out in chunks of whole sentences, ~CHUNK_WORDS words each, in corpus
    // order, from one counter over all epochs (gensim's job queue, in effect): on a busy
    // machine a thread that gets less CPU takes fewer chunks instead of holding up the end of
    // the run, which a fixed slice per thread (the C tool's split) did. The learning rate of
    // a chunk comes from the words of all chunks handed out before it — the C tool's
    // word_count_actual, which it also refreshes every 10k words.
    let chunk_starts = chunk_starts(&bounds, CHUNK_WORDS);
    let nchunks = chunk_starts.len() - 1;
    let next_chunk = AtomicUsize::new(0);
    let total_work = o.epochs as u64 * train_words + 1;
    let start = std::time::Instant::now();
    let bar = ferrolm_common::progress::bar(total_work, "word2vec");
    let fast = simd_available();
    let ctx = Ctx { s0, s1, table: &table, exp_table: &exp_table, neg: o.negative, fast };
    std::thread::scope(|sc| {
        for t in 0..o.threads {
            let (ctx, next_chunk, corpus, bounds, chunk_starts, keep, bar) = (&ctx, &next_chunk, &corpus, &bounds, &chunk_starts, &keep, &bar);
            sc.spawn(move || {
                let mut rng: u64 = t as u64 + o.seed;
                let mut next = || {
                    rng = rng.wrapping_mul(25214903917).wrapping_add(11);
                    rng
                };
                let mut neu1 = vec![0f32; d];
                let mut neu1e = vec![0f32; d];
                let mut targets: Vec<u32> = Vec::with_capacity(o.negative + 1);
                let mut ahead: Vec<u32> = Vec::with_capacity(o.negative + 1);
                let mut sen: Vec<u32> = Vec::with_capacity(MAX_SENTENCE);
                loop {
                    let k = next_chunk.fetch_add(1, Ordering::Relaxed);
                    if k >= o.epochs * nchunks {
                        break;
                    }
                    let (epoch, c) = (k / nchunks, k % nchunks);
                    let (s_lo, s_hi) = (chunk_starts[c], chunk_starts[c + 1]);
                    let before = epoch as u64 * train_words + bounds[s_lo] as u64;
                    let alpha = learning_rate(o.alpha, o.min_alpha, before as f64 / total_work as f64);
                    for s in s_lo..s_hi {
                        sen.clear();
                        for &w in &corpus[bounds[s]..bounds[s + 1]] {
                            if keep[w as usize] < KEEP_ALWAYS && keep[w as usize] <= (next() >> 40) as u32 {
                                continue;
                            }
                            sen.push(w);
                        }
                        for pos in 0..sen.len() {
                            let word = sen[pos];
                            let b = (next() % o.window as u64) as usize;
                            let from = pos.saturating_sub(o.window - b);
                            let to = (pos + o.window - b + 1).min(sen.len());
                            if o.cbow {
                                // no context (a one-word sentence): no update and no
                                // negatives drawn, as in the C tool
                                if to - from < 2 {
                                    continue;
                                }
                                // the context words: sen[from..to] without the centre
                                let context = || sen[from..to].iter().enumerate().filter(move |&(i, _)| from + i != pos).map(|(_, &w)| w as usize);
                                for w in context() {
                                    ctx.s0.prefetch(w);
                                }
                                draw_targets(word, ctx, &mut targets, &mut next);
                                neu1.iter_mut().for_each(|x| *x = 0.0);
                                for w in context() {
                                    add_to(&mut neu1, ctx.s0.row(w));
                                }
                                let cw = (to - from - 1) as f32;
                                neu1.iter_mut().for_each(|x| *x /= cw);
                                neu1e.iter_mut().for_each(|x| *x = 0.0);
                                negative(&targets, &neu1, &mut neu1e, ctx, alpha);
                                for w in context() {
                                    add_to(ctx.s0.row(w), &neu1e);
                                }
                            } else {
                                // One update ahead: the next context's targets are drawn
                                // and its rows prefetched before this one is computed, so
                                // the loads overlap the arithmetic. The random stream is
                                // consumed in the same order (no other draw happens
                                // between the contexts of one word).
                                let mut c = if from == pos { pos + 1 } else { from };
                                if c < to {
                                    ctx.s0.prefetch(sen[c] as usize);
                                    draw_targets(word, ctx, &mut targets, &mut next);
                                }
                                while c < to {
                                    let mut n = c + 1;
                                    if n == pos {
                                        n += 1;
                                    }
                                    if n < to {
                                        ctx.s0.prefetch(sen[n] as usize);
                                        draw_targets(word, ctx, &mut ahead, &mut next);
                                    }
                                    let l1 = ctx.s0.row(sen[c] as usize);
                                    neu1e.iter_mut().for_each(|x| *x = 0.0);
                                    negative(&targets, l1, &mut neu1e, ctx, alpha);
                                    add_to(l1, &neu1e);
                                    std::mem::swap(&mut targets, &mut ahead);
                                    c = n;
                                }
                            }
                        }
                    }
                    bar.inc((bounds[s_hi] - bounds[s_lo]) as u64);
                }
            });
        }
    });
    bar.finish_and_clear();
    let secs = start.elapsed().as_secs_f64();
    let vectors = m0.compact();
    Ok(Trained { words, counts, vectors, dim: d, words_per_sec: (o.epochs as u64 * train_words) as f64 / secs, seconds: secs })
}

/// The learning rate after `progress` (0..1) of all epochs' words: linear from `alpha` to
/// `min_alpha`, as gensim does (the C tool's decay ends at 0 with a floor of alpha·1e-4, so
/// its last epoch trains with a smaller rate than gensim's at the same settings).
fn learning_rate(alpha: f32, min_alpha: f32, progress: f64) -> f32 {
    (alpha as f64 - (alpha - min_alpha) as f64 * progress).max(min_alpha as f64) as f32
}

/// Random bits per subsampling draw; a threshold of `KEEP_ALWAYS` keeps every occurrence.
const KEEP_BITS: u32 = 24;
const KEEP_ALWAYS: u32 = 1 << KEEP_BITS;

/// Frequent-word subsampling (Mikolov et al.; the C tool's and gensim's formula): an occurrence
/// of a word with count c is kept with probability (sqrt(c/t) + 1)·t/c, t = sample × (in-vocabulary
/// words), given here as a threshold on a uniform KEEP_BITS-bit draw (keep when draw < threshold).
/// The draw is the top 24 bits of the 64-bit LCG, as gensim draws from the upper bits of its
/// own: the low 16 bits, which the C tool uses, are an LCG of period 2^16 on their own (bit k
/// has period 2^(k+1)).
fn keep_thresholds(counts: &[u64], sample: f64, train_words: u64) -> Vec<u32> {
    let t = sample * train_words as f64;
    counts
        .iter()
        .map(|&c| {
            let p = if sample > 0.0 { ((c as f64 / t).sqrt() + 1.0) * t / c as f64 } else { 1.0 };
            if p >= 1.0 { KEEP_ALWAYS } else { (p * KEEP_ALWAYS as f64) as u32 }
        })
        .collect()
}

/// The input vectors' start: uniform in [-0.5/dim, 0.5/dim) (the C tool's range), each value
/// from the top 24 bits of the 64-bit LCG. The C tool takes the low 16 bits, whose sequence has
/// period 2^16: with 100 dims, row i+16384 then starts equal to row i and row i+655 is row i
/// shifted by 36 values, so words far apart in the frequency order start with related vectors.
fn init_input(rows: usize, dim: usize, seed: u64) -> HogwildMatrix {
    let mut m = HogwildMatrix::zeros(rows, dim);
    let mut s = seed;
    for i in 0..rows {
        for x in m.row_mut(i) {
            s = s.wrapping_mul(25214903917).wrapping_add(11);
            *x = ((s >> 40) as f32 / (1u64 << 24) as f32 - 0.5) / dim as f32;
        }
    }
    m
}

/// Sentence indices where chunks start, plus the end: consecutive sentences are grouped until
/// a chunk holds at least `min_words` words; every sentence lies in exactly one chunk.
/// `bounds` are the sentences' word offsets (first 0, last the corpus length).
fn chunk_starts(bounds: &[usize], min_words: usize) -> Vec<usize> {
    let nsent = bounds.len() - 1;
    let mut starts = vec![0];
    for s in 0..nsent {
        if bounds[s + 1] - bounds[*starts.last().unwrap()] >= min_words {
            starts.push(s + 1);
        }
    }
    if *starts.last().unwrap() != nsent {
        starts.push(nsent);
    }
    starts
}

/// What every thread reads while training: the two shared matrices and the lookup tables.
struct Ctx<'a> {
    s0: HogwildRows<'a>,
    s1: HogwildRows<'a>,
    table: &'a [(u32, u32)],
    exp_table: &'a [f32],
    neg: usize,
    fast: bool,
}

/// The targets of one update: the true word, then `neg` draws from the noise distribution
/// with draws equal to the true word skipped (as the C tool does). All drawn before any is
/// used, which consumes the random stream in the same order as drawing one at a time (no
/// other draw happens in between), so that their output rows can be prefetched together.
#[inline(always)]
fn draw_targets(word: u32, ctx: &Ctx, targets: &mut Vec<u32>, next: &mut impl FnMut() -> u64) {
    targets.clear();
    targets.push(word);
    ctx.s1.prefetch(word as usize);
    for _ in 0..ctx.neg {
        let t = sample_alias(ctx.table, next) as u32;
        if t != word {
            targets.push(t);
            ctx.s1.prefetch(t as usize);
        }
    }
}

/// Logistic updates of the output rows of `targets` (the first positive, the rest negative)
/// against hidden `h`; accumulates the input gradient in `grad`. Dispatches once per call to
/// a build of the kernel with fused multiply-adds (AVX-512 or AVX2+FMA, through
/// `ferrolm_kernels::vectorized`) when the CPU has them.
#[inline]
fn negative(targets: &[u32], h: &[f32], grad: &mut [f32], ctx: &Ctx, alpha: f32) {
    if ctx.fast {
        return ferrolm_kernels::vectorized(#[inline(always)] || negative_kernel::<true>(targets, h, grad, ctx, alpha));
    }
    negative_kernel::<false>(targets, h, grad, ctx, alpha)
}

/// True when [`negative`] may take the fused multiply-add path.
pub fn simd_available() -> bool {
    ferrolm_kernels::fma_available()
}

#[inline(always)]
fn negative_kernel<const FMA: bool>(targets: &[u32], h: &[f32], grad: &mut [f32], ctx: &Ctx, alpha: f32) {
    for (j, &target) in targets.iter().enumerate() {
        let label = if j == 0 { 1.0f32 } else { 0.0 };
        let r = ctx.s1.row(target as usize);
        let f = if FMA { ferrolm_kernels::dot_fma(h, r) } else { dot::<false>(h, r) };
        let g = if f > MAX_EXP {
            (label - 1.0) * alpha
        } else if f < -MAX_EXP {
            label * alpha
        } else {
            // rounding can land exactly on EXP_TABLE for f just below MAX_EXP; clamp
            (label - ctx.exp_table[(((f + MAX_EXP) * (EXP_TABLE as f32 / MAX_EXP / 2.0)) as usize).min(EXP_TABLE - 1)]) * alpha
        };
        update::<FMA>(g, h, r, grad);
    }
}

/// Vose's alias table for p(w) ∝ count^0.75: entry i = (threshold, alias); draw a uniform
/// bin i and a uniform u32 r, take i if r < threshold else alias.
pub(crate) fn alias_table(counts: &[u64]) -> Vec<(u32, u32)> {
    let v = counts.len();
    let pow: Vec<f64> = counts.iter().map(|&c| (c as f64).powf(0.75)).collect();
    let total: f64 = pow.iter().sum();
    let mut scaled: Vec<f64> = pow.iter().map(|p| p * v as f64 / total).collect();
    let mut table: Vec<(u32, u32)> = (0..v as u32).map(|i| (u32::MAX, i)).collect();
    let (mut small, mut large): (Vec<usize>, Vec<usize>) = (0..v).partition(|&i| scaled[i] < 1.0);
    while let (Some(&s), Some(&l)) = (small.last(), large.last()) {
        small.pop();
        table[s] = (((scaled[s] * 4294967296.0) as u64).min(u32::MAX as u64) as u32, l as u32);
        scaled[l] -= 1.0 - scaled[s];
        if scaled[l] < 1.0 {
            large.pop();
            small.push(l);
        }
    }
    // what remains has probability 1 up to rounding: keeps its own index
    table
}

#[inline(always)]
fn sample_alias(table: &[(u32, u32)], next: &mut impl FnMut() -> u64) -> usize {
    // the high halves of two LCG outputs (an LCG's low bits have short periods)
    let i = (((next() >> 32) * table.len() as u64) >> 32) as usize;
    let r = (next() >> 32) as u32;
    let (t, a) = table[i];
    if r < t { i } else { a as usize }
}

const LANES: usize = 16;

/// Dot product with LANES independent partial sums: a single running f32 sum is one long
/// dependency chain that LLVM may not reorder (no fast-math), so it would not vectorise.
#[inline(always)]
fn dot<const FMA: bool>(a: &[f32], b: &[f32]) -> f32 {
    let n = a.len().min(b.len());
    let (a, b) = (&a[..n], &b[..n]);
    let (ca, cb) = (a.chunks_exact(LANES), b.chunks_exact(LANES));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    let mut acc = [0f32; LANES];
    for (x, y) in ca.zip(cb) {
        let x: &[f32; LANES] = x.try_into().unwrap();
        let y: &[f32; LANES] = y.try_into().unwrap();
        for i in 0..LANES {
            acc[i] = if FMA { x[i].mul_add(y[i], acc[i]) } else { acc[i] + x[i] * y[i] };
        }
    }
    let mut w = LANES;
    while w > 1 {
        w /= 2;
        for i in 0..w {
            acc[i] += acc[i + w];
        }
    }
    let mut s = acc[0];
    for (x, y) in ra.iter().zip(rb) {
        s += x * y;
    }
    s
}

/// grad += g·r (with r before its update), then r += g·h, in one pass.
#[inline(always)]
fn update<const FMA: bool>(g: f32, h: &[f32], r: &mut [f32], grad: &mut [f32]) {
    for ((gr, rr), &hh) in grad.iter_mut().zip(r.iter_mut()).zip(h) {
        let old = *rr;
        if FMA {
            *gr = g.mul_add(old, *gr);
            *rr = g.mul_add(hh, old);
        } else {
            *gr += g * old;
            *rr = old + g * hh;
        }
    }
}

/// y += x
#[inline(always)]
fn add_to(y: &mut [f32], x: &[f32]) {
    for (a, &b) in y.iter_mut().zip(x) {
        *a += b;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alias_sampling_follows_unigram_to_the_three_quarters() {
        let counts = [1000u64, 300, 100, 10, 1, 1];
        let t = alias_table(&counts);
        let mut rng = 7u64;
        let mut next = || {
            rng = rng.wrapping_mul(25214903917).wrapping_add(11);
            rng
        };
        let n = 2_000_000;
        let mut hits = [0u64; 6];
        for _ in 0..n {
            hits[sample_alias(&t, &mut next)] += 1;
        }
        let pow: Vec<f64> = counts.iter().map(|&c| (c as f64).powf(0.75)).collect();
        let total: f64 = pow.iter().sum();
        for i in 0..6 {
            let want = pow[i] / total;
            let got = hits[i] as f64 / n as f64;
            assert!((got - want).abs() < 0.003 + 0.02 * want, "word {i}: {got} vs {want}");
        }
    }

    #[test]
    fn learning_rate_falls_linearly_from_alpha_to_min_alpha() {
        assert_eq!(learning_rate(0.05, 1e-4, 0.0), 0.05);
        assert!((learning_rate(0.05, 1e-4, 0.5) - 0.02505).abs() < 1e-7);
        assert!((learning_rate(0.05, 1e-4, 1.0) - 1e-4).abs() < 1e-8);
        // never below the floor, and never rising, even past the end
        assert!((learning_rate(0.05, 1e-4, 1.2) - 1e-4).abs() < 1e-8);
        let mut last = f32::INFINITY;
        for k in 0..=100 {
            let a = learning_rate(0.025, 1e-3, k as f64 / 100.0);
            assert!(a <= last && a >= 1e-3);
            last = a;
        }
    }

    #[test]
    fn input_init_is_uniform_in_half_over_dim_and_rows_do_not_repeat() {
        let (rows, dim) = (16_400, 100);
        let m = init_input(rows, dim, 1);
        let c = m.compact();
        let lim = 0.5 / dim as f32;
        assert!(c.iter().all(|&x| (-lim..lim).contains(&x)));
        let n = c.len() as f64;
        let mean = c.iter().map(|&x| x as f64).sum::<f64>() / n;
        let var = c.iter().map(|&x| (x as f64 - mean).powi(2)).sum::<f64>() / n;
        let want_var = (2.0 * lim as f64).powi(2) / 12.0;
        assert!(mean.abs() < 0.01 * lim as f64, "mean {mean}");
        assert!((var / want_var - 1.0).abs() < 0.01, "variance {var} vs {want_var}");
        // the low 16 bits of the LCG (the C tool's draw) repeat after 2^16 values, which made
        // row 16384 a copy of row 0 at 100 dims
        assert_ne!(&c[..dim], &c[16_384 * dim..16_385 * dim]);
        // and a different seed gives a different start
        assert_ne!(c[..dim], init_input(1, dim, 2).compact()[..]);
    }

    #[test]
    fn subsampling_keeps_each_word_at_the_formula_rate() {
        // 1000 in-vocabulary words, sample 0.01 → t = 10: counts ≤ t·φ² ≈ 26.2 are always kept
        let counts = [600u64, 200, 100, 60, 30, 14];
        let keep = keep_thresholds(&counts, 0.01, 1000);
        assert_eq!(keep[5], KEEP_ALWAYS);
        assert_eq!(keep_thresholds(&counts, 0.0, 1000), vec![KEEP_ALWAYS; 6]);
        let mut rng = 3u64;
        for (i, &c) in counts.iter().enumerate().take(5) {
            let p = ((c as f64 / 10.0).sqrt() + 1.0) * 10.0 / c as f64;
            assert!(p < 1.0);
            let n = 200_000;
            let mut kept = 0;
            for _ in 0..n {
                rng = rng.wrapping_mul(25214903917).wrapping_add(11);
                // the training loop's test: dropped when threshold <= draw
                if !(keep[i] < KEEP_ALWAYS && keep[i] <= (rng >> 40) as u32) {
                    kept += 1;
                }
            }
            let got = kept as f64 / n as f64;
            assert!((got - p).abs() < 0.005, "count {c}: kept {got}, formula {p}");
        }
    }

    #[test]
    fn chunks_cover_every_sentence_once_in_order() {
        // sentence lengths 3, 7, 1, 12, 2, 2, 9 words
        let bounds = [0, 3, 10, 11, 23, 25, 27, 36];
        let c = chunk_starts(&bounds, 10);
        assert_eq!(c, vec![0, 2, 4, 7]);
        for w in c.windows(2) {
            assert!(w[0] < w[1]);
        }
        assert_eq!(chunk_starts(&[0, 5], 10), vec![0, 1]);
        assert_eq!(chunk_starts(&[0, 5, 20], 5), vec![0, 1, 2]);
    }

    #[test]
    fn simd_kernels_agree_with_plain_loops() {
        let a: Vec<f32> = (0..103).map(|i| (i as f32 * 0.37).sin()).collect();
        let b: Vec<f32> = (0..103).map(|i| (i as f32 * 0.11).cos()).collect();
        let want: f64 = a.iter().zip(&b).map(|(x, y)| *x as f64 * *y as f64).sum();
        assert!((dot::<false>(&a, &b) as f64 - want).abs() < 1e-4);
        assert!((dot::<true>(&a, &b) as f64 - want).abs() < 1e-4);
        if simd_available() {
            // the dot product as the training kernel runs it: inlined into code compiled with FMA
            let fma_dot = |a: &[f32], b: &[f32]| ferrolm_kernels::vectorized(#[inline(always)] || ferrolm_kernels::dot_fma(a, b));
            for len in [0, 7, 8, 16, 23, 103] {
                let w: f64 = a[..len].iter().zip(&b[..len]).map(|(x, y)| *x as f64 * *y as f64).sum();
                assert!((fma_dot(&a[..len], &b[..len]) as f64 - w).abs() < 1e-4, "len {len}");
            }
        }
        let (mut r, mut g) = (b.clone(), vec![0.5f32; 103]);
        update::<false>(0.1, &a, &mut r, &mut g);
        for k in 0..103 {
            assert!((g[k] - (0.5 + 0.1 * b[k])).abs() < 1e-6);
            assert!((r[k] - (b[k] + 0.1 * a[k])).abs() < 1e-6);
        }
    }
}
