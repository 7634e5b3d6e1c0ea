//! Training objectives beyond next-token prediction: how one example (a window of plain
//! text, or an input/target pair) becomes model inputs, targets and a loss mask.
//!
//! Every function takes the random generator from the caller, which seeds it from
//! `(seed, step, micro-step, purpose)` like every other draw: a resumed run corrupts
//! and masks exactly as the uninterrupted run would have.
//!
//! - prefix LM: a split point (random for plain text); loss on the targets only.
//! - span corruption (T5, Raffel et al. 2020 §3.1.4): noise density and mean span length
//!   decide how many tokens and spans are dropped; each dropped span becomes one sentinel
//!   `<|extra_i|>` in the input, and the target lists sentinel + span for each, closed by
//!   the next sentinel.
//! - masked LM (BERT, Devlin et al. 2019): a rate of eligible positions is chosen; each
//!   is replaced by `<|mask|>` 80%, a random token 10%, kept 10%; loss at chosen positions.
//! - next-sentence prediction: half the pairs keep the true next segment, half take a
//!   random one.

use rand::seq::SliceRandom;
use rand::Rng;

/// How plain text is cut into a prefix and a target for the prefix LM.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PrefixSplit {
    /// Fewest tokens in the prefix and in the target.
    pub min_prefix: usize,
    pub min_target: usize,
    /// `Some(f)`: a fixed fraction of the window is prefix; `None`: uniform random split.
    pub fixed_fraction: Option<f64>,
}

impl Default for PrefixSplit {
    fn default() -> Self {
        Self { min_prefix: 1, min_target: 1, fixed_fraction: None }
    }
}

/// The prefix length for a window of `len` tokens: in `[min_prefix, len - min_target]`.
pub fn prefix_split_point(len: usize, split: &PrefixSplit, rng: &mut impl Rng) -> Result<usize, String> {
    if len < split.min_prefix + split.min_target {
        return Err(format!(
            "a window of {len} tokens cannot hold a prefix of ≥{} and a target of ≥{}",
            split.min_prefix, split.min_target
        ));
    }
    let (lo, hi) = (split.min_prefix, len - split.min_target);
    Ok(match split.fixed_fraction {
        Some(f) => ((len as f64 * f).round() as usize).clamp(lo, hi),
        None => rng.random_range(lo..=hi),
    })
}

/// Loss weights for a prefix-LM row of `len` next-token targets whose first `prefix`
/// input positions are the prefix: target t predicts token t+1, so it is scored when
/// token t+1 lies outside the prefix, i.e. t ≥ prefix − 1.
pub fn prefix_loss_mask(len: usize, prefix: usize) -> Vec<f32> {
    (0..len).map(|t| if t + 1 >= prefix { 1.0 } else { 0.0 }).collect()
}

/// Span-corruption parameters (T5 defaults: 15% of tokens, spans of mean length 3).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SpanCorruption {
    pub noise_density: f64,
    pub mean_span_length: f64,
}

impl Default for SpanCorruption {
    fn default() -> Self {
        Self { noise_density: 0.15, mean_span_length: 3.0 }
    }
}

/// Split `n` items into `k` non-empty runs at random; lengths in order, summing to `n`.
fn random_segmentation(n: usize, k: usize, rng: &mut impl Rng) -> Vec<usize> {
    debug_assert!(k >= 1 && k <= n);
    let mut cuts: Vec<usize> = (1..n).collect();
    cuts.shuffle(rng);
    let mut cuts: Vec<usize> = cuts.into_iter().take(k - 1).collect();
    cuts.sort_unstable();
    let mut prev = 0;
    let mut out = Vec::with_capacity(k);
    for c in cuts.into_iter().chain(std::iter::once(n)) {
        out.push(c - prev);
        prev = c;
    }
    out
}

/// T5's noise mask for `len` tokens: round(len·density) noise tokens (at least 1, at most
/// len − 1) in round(noise/mean_span) spans, interleaved with as many non-noise runs,
/// starting with non-noise. Returns one bool per token (true = dropped).
pub fn span_noise_mask(len: usize, p: &SpanCorruption, rng: &mut impl Rng) -> Vec<bool> {
    if len < 2 {
        return vec![false; len];
    }
    let n_noise = ((len as f64 * p.noise_density).round() as usize).clamp(1, len - 1);
    let n_spans = ((n_noise as f64 / p.mean_span_length).round() as usize).clamp(1, n_noise.min(len - n_noise));
    let noise = random_segmentation(n_noise, n_spans, rng);
    let keep = random_segmentation(len - n_noise, n_spans, rng);
    let mut mask = Vec::with_capacity(len);
    for (k, n) in keep.iter().zip(&noise) {
        mask.extend(std::iter::repeat_n(false, *k));
        mask.extend(std::iter::repeat_n(true, *n));
    }
    mask
}

/// Apply a noise mask: each maximal dropped span is replaced in the input by the next
/// sentinel; the target is, per span, its sentinel followed by the dropped tokens, and
/// ends with the sentinel after the last span. Errors when there are more spans than
/// sentinels.
pub fn apply_span_corruption(tokens: &[u32], mask: &[bool], sentinels: &[u32]) -> Result<(Vec<u32>, Vec<u32>), String> {
    assert_eq!(tokens.len(), mask.len());
    let (mut input, mut target) = (Vec::new(), Vec::new());
    let mut span = 0usize;
    let sentinel = |i: usize| {
        sentinels.get(i).copied().ok_or_else(|| format!("span corruption needs sentinel {i}, the tokenizer has {}", sentinels.len()))
    };
    for (i, (&t, &noisy)) in tokens.iter().zip(mask).enumerate() {
        if noisy {
            if i == 0 || !mask[i - 1] {
                let s = sentinel(span)?;
                input.push(s);
                target.push(s);
                span += 1;
            }
            target.push(t);
        } else {
            input.push(t);
        }
    }
    target.push(sentinel(span)?);
    Ok((input, target))
}

/// Masked-LM parameters: BERT's 15% with 80% `<|mask|>`, 10% random, 10% unchanged.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MlmMasking {
    pub rate: f64,
    pub mask_fraction: f64,
    pub random_fraction: f64,
}

impl Default for MlmMasking {
    fn default() -> Self {
        Self { rate: 0.15, mask_fraction: 0.8, random_fraction: 0.1 }
    }
}

/// One masked-LM example: the corrupted input, and the (position, original token) pairs
/// the loss is computed on.
#[derive(Debug, Clone, PartialEq)]
pub struct MlmExample {
    pub input: Vec<u32>,
    pub labels: Vec<(usize, u32)>,
}

/// Choose round(rate · eligible) positions (at least one) among those where `eligible`
/// holds (special tokens and padding are not), and corrupt them 80/10/10. Random
/// replacements are drawn from `random_range` (the ordinary, non-special ids).
pub fn mlm_mask(
    tokens: &[u32],
    eligible: impl Fn(u32) -> bool,
    p: &MlmMasking,
    mask_id: u32,
    random_range: std::ops::Range<u32>,
    rng: &mut impl Rng,
) -> MlmExample {
    let mut cand: Vec<usize> = (0..tokens.len()).filter(|&i| eligible(tokens[i])).collect();
    let n = if cand.is_empty() { 0 } else { ((cand.len() as f64 * p.rate).round() as usize).clamp(1, cand.len()) };
    cand.shuffle(rng);
    let mut chosen: Vec<usize> = cand.into_iter().take(n).collect();
    chosen.sort_unstable();
    let mut input = tokens.to_vec();
    let mut labels = Vec::with_capacity(n);
    for i in chosen {
        labels.push((i, tokens[i]));
        let u: f64 = rng.random();
        if u < p.mask_fraction {
            input[i] = mask_id;
        } else if u < p.mask_fraction + p.random_fraction {
            input[i] = rng.random_range(random_range.clone());
        }
    }
    MlmExample { input, labels }
}

/// A next-sentence-prediction pair: with probability ½ the true continuation (label 0,
/// "is next"), otherwise `random_b` (label 1). Returns the chosen second segment and label.
pub fn nsp_choose<'a>(true_b: &'a [u32], random_b: &'a [u32], rng: &mut impl Rng) -> (&'a [u32], u32) {
    if rng.random_bool(0.5) {
        (true_b, 0)
    } else {
        (random_b, 1)
    }
}

/// The documents of a token stream (maximal runs of tokens between end-of-text
/// markers) that are long enough to hold a whole sentence pair at any start position
/// counted here; sampling a position is uniform over all such start positions, so long
/// documents are drawn as often as their length says, like windows of plain text.
#[derive(Debug, Clone)]
pub struct DocIndex {
    /// (first token, one past the last token) of each document of at least `need` tokens.
    docs: Vec<(usize, usize)>,
    /// Cumulative start positions: doc i owns starts `cum[i]..cum[i+1]`.
    cum: Vec<usize>,
    need: usize,
    /// Documents in the stream, and those shorter than `need` (never drawn).
    pub total_docs: usize,
    pub short_docs: usize,
}

impl DocIndex {
    /// Scan `src` for `eot` and index the documents of at least `need` tokens.
    pub fn new(src: &dyn crate::data::TokenSource, eot: u32, need: usize) -> Self {
        let (mut docs, mut cum) = (Vec::new(), vec![0usize]);
        let (mut total_docs, mut short_docs) = (0, 0);
        let mut doc_start = 0usize;
        let mut buf = vec![0u32; 1 << 16];
        let mut close = |start: usize, end: usize| {
            if end > start {
                total_docs += 1;
                if end - start >= need {
                    docs.push((start, end));
                    cum.push(cum.last().copied().unwrap_or(0) + end - start - need + 1);
                } else {
                    short_docs += 1;
                }
            }
        };
        let mut pos = 0usize;
        while pos < src.len() {
            let n = buf.len().min(src.len() - pos);
            src.read(pos, &mut buf[..n]);
            for (i, &t) in buf[..n].iter().enumerate() {
                if t == eot {
                    close(doc_start, pos + i);
                    doc_start = pos + i + 1;
                }
            }
            pos += n;
        }
        close(doc_start, src.len());
        Self { docs, cum, need, total_docs, short_docs }
    }

    /// Documents that can be drawn.
    pub fn len(&self) -> usize {
        self.docs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.docs.is_empty()
    }

    /// A uniformly drawn start position `p` (with `p + need` inside its document) and the
    /// index of its document.
    pub fn sample(&self, rng: &mut impl Rng) -> (usize, usize) {
        let total = *self.cum.last().expect("cum starts with 0");
        assert!(total > 0, "DocIndex::sample on an index without documents");
        let k = rng.random_range(0..total);
        let doc = self.cum.partition_point(|&c| c <= k) - 1;
        (doc, self.docs[doc].0 + (k - self.cum[doc]))
    }

    /// The token span of document `doc`.
    pub fn span(&self, doc: usize) -> (usize, usize) {
        self.docs[doc]
    }

    pub fn need(&self) -> usize {
        self.need
    }
}

/// One next-sentence-prediction example of exactly `seq_len` tokens:
/// `[CLS] A [SEP] B [SEP]`, segment 0 up to and including the first `[SEP]`, 1 after.
#[derive(Debug, Clone, PartialEq)]
pub struct NspExample {
    pub tokens: Vec<u32>,
    pub segments: Vec<u32>,
    /// 0: B is the text that follows A in its document; 1: B comes from another document.
    pub label: u32,
    /// Where A and B were read in the stream (for tests and debugging).
    pub a_start: usize,
    pub b_start: usize,
    pub a_len: usize,
}

/// Draw an NSP example from `src` indexed by `index` (built with `need = seq_len − 3`):
/// a start position, a split of the `seq_len − 3` content tokens into A (1 or more) and
/// B (1 or more); B is A's true continuation or, with probability ½, as many tokens from a
/// position in a different document.
pub fn nsp_example(
    src: &dyn crate::data::TokenSource,
    index: &DocIndex,
    seq_len: usize,
    cls: u32,
    sep: u32,
    rng: &mut impl Rng,
) -> Result<NspExample, String> {
    let n = seq_len.checked_sub(3).filter(|&n| n >= 2).ok_or_else(|| format!("a sentence pair needs train.seq_len ≥ 5, got {seq_len}"))?;
    if index.need != n {
        return Err(format!("the document index was built for {} content tokens, the pair has {n}", index.need));
    }
    if index.len() < 2 {
        return Err(format!("next-sentence prediction needs at least two documents of ≥ {n} tokens, the data has {}", index.len()));
    }
    let a_len = rng.random_range(1..n);
    let b_len = n - a_len;
    let (doc, a_start) = index.sample(rng);
    // the random second segment is drawn for every example, so the stream of draws does
    // not depend on the coin
    let (mut other, mut q) = index.sample(rng);
    while other == doc {
        (other, q) = index.sample(rng);
    }
    let mut content = vec![0u32; n];
    src.read(a_start, &mut content);
    let mut random_b = vec![0u32; b_len];
    src.read(q, &mut random_b);
    let (b, label) = nsp_choose(&content[a_len..], &random_b, rng);
    let b_start = if label == 0 { a_start + a_len } else { q };
    let mut tokens = Vec::with_capacity(seq_len);
    tokens.push(cls);
    tokens.extend_from_slice(&content[..a_len]);
    tokens.push(sep);
    tokens.extend_from_slice(b);
    tokens.push(sep);
    let mut segments = vec![0u32; a_len + 2];
    segments.resize(seq_len, 1);
    Ok(NspExample { tokens, segments, label, a_start, b_start, a_len })
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    fn rng(s: u64) -> rand_chacha::ChaCha8Rng {
        rand_chacha::ChaCha8Rng::seed_from_u64(s)
    }

    #[test]
    fn span_corruption_hand_checked() {
        // tokens 10..=19, spans {2,3} and {7}; sentinels 100, 101, 102
        let tokens: Vec<u32> = (10..20).collect();
        let mut mask = vec![false; 10];
        mask[2] = true;
        mask[3] = true;
        mask[7] = true;
        let (inp, tgt) = apply_span_corruption(&tokens, &mask, &[100, 101, 102]).unwrap();
        assert_eq!(inp, vec![10, 11, 100, 14, 15, 16, 101, 18, 19]);
        assert_eq!(tgt, vec![100, 12, 13, 101, 17, 102]);
        // too few sentinels is an error, not a silent truncation
        let err = apply_span_corruption(&tokens, &mask, &[100, 101]).unwrap_err();
        assert!(err.contains("sentinel 2"), "{err}");
    }

    #[test]
    fn span_noise_mask_has_t5_density_and_span_count() {
        let p = SpanCorruption::default();
        for seed in 0..50 {
            let m = span_noise_mask(100, &p, &mut rng(seed));
            assert_eq!(m.len(), 100);
            assert_eq!(m.iter().filter(|&&b| b).count(), 15, "round(100·0.15) noise tokens");
            let spans = (0..100).filter(|&i| m[i] && (i == 0 || !m[i - 1])).count();
            assert_eq!(spans, 5, "round(15/3) spans");
            assert!(!m[0], "T5 masks start with a non-noise run");
        }
        // different seeds give different masks
        assert_ne!(span_noise_mask(100, &p, &mut rng(1)), span_noise_mask(100, &p, &mut rng(2)));
        // tiny inputs still get exactly one noise token and one kept token
        let m = span_noise_mask(2, &p, &mut rng(0));
        assert_eq!(m, vec![false, true]);
    }

    #[test]
    fn mlm_masking_hand_checked_and_80_10_10() {
        // only ids ≥ 5 are eligible (0..5 are special); 20 eligible tokens → 3 chosen
        let tokens: Vec<u32> = (0..5).chain(5..25).collect();
        let p = MlmMasking::default();
        let ex = mlm_mask(&tokens, |t| t >= 5, &p, 4, 5..30, &mut rng(3));
        assert_eq!(ex.labels.len(), 3);
        for &(i, orig) in &ex.labels {
            assert!(i >= 5, "special token chosen");
            assert_eq!(orig, tokens[i]);
        }
        for (i, &t) in tokens.iter().enumerate() {
            if !ex.labels.iter().any(|&(j, _)| j == i) {
                assert_eq!(ex.input[i], t, "unchosen position {i} changed");
            }
        }
        // proportions over many draws
        let (mut masked, mut random, mut kept, mut total) = (0, 0, 0, 0);
        for seed in 0..2000 {
            let ex = mlm_mask(&tokens, |t| t >= 5, &p, 4, 100..1000, &mut rng(seed));
            for &(i, orig) in &ex.labels {
                total += 1;
                match ex.input[i] {
                    4 => masked += 1,
                    x if x == orig => kept += 1,
                    x => {
                        assert!((100..1000).contains(&x));
                        random += 1
                    }
                }
            }
        }
        let f = |n: i32| n as f64 / total as f64;
        assert!((f(masked) - 0.8).abs() < 0.02 && (f(random) - 0.1).abs() < 0.02 && (f(kept) - 0.1).abs() < 0.02, "{masked} {random} {kept}");
    }

    #[test]
    fn prefix_split_and_loss_mask() {
        let s = PrefixSplit { min_prefix: 2, min_target: 3, fixed_fraction: None };
        for seed in 0..100 {
            let p = prefix_split_point(10, &s, &mut rng(seed)).unwrap();
            assert!((2..=7).contains(&p));
        }
        let fixed = PrefixSplit { fixed_fraction: Some(0.5), ..s };
        assert_eq!(prefix_split_point(10, &fixed, &mut rng(0)).unwrap(), 5);
        assert!(prefix_split_point(4, &s, &mut rng(0)).is_err());
        // prefix of 3 input tokens: targets 0 and 1 predict prefix tokens 1 and 2 → unscored
        assert_eq!(prefix_loss_mask(6, 3), vec![0.0, 0.0, 1.0, 1.0, 1.0, 1.0]);
    }

    #[test]
    fn nsp_is_balanced() {
        let (a, b) = ([1u32], [2u32]);
        let ones: u32 = (0..1000).map(|s| nsp_choose(&a, &b, &mut rng(s)).1).sum();
        assert!((400..600).contains(&ones), "{ones}");
    }

    /// Documents of lengths 30, 3, 25, 40 separated by end-of-text (id 0); document d
    /// holds ids 100·(d+1) + position, so a token tells its document and place.
    fn doc_stream() -> (Vec<u32>, Vec<(usize, usize)>) {
        let (mut s, mut spans) = (Vec::new(), Vec::new());
        for (d, len) in [30usize, 3, 25, 40].into_iter().enumerate() {
            let start = s.len();
            s.extend((0..len).map(|i| (100 * (d + 1) + i) as u32));
            spans.push((start, s.len()));
            s.push(0);
        }
        (s, spans)
    }

    #[test]
    fn doc_index_counts_documents_and_draws_only_whole_windows() {
        let (s, spans) = doc_stream();
        let ix = DocIndex::new(&s, 0, 13);
        assert_eq!((ix.total_docs, ix.short_docs, ix.len()), (4, 1, 3));
        assert_eq!([ix.span(0), ix.span(1), ix.span(2)], [spans[0], spans[2], spans[3]]);
        let mut seen = std::collections::HashSet::new();
        for seed in 0..3000 {
            let (d, p) = ix.sample(&mut rng(seed));
            let (a, b) = ix.span(d);
            assert!(p >= a && p + 13 <= b, "start {p} of doc {d} leaves no room");
            seen.insert(p);
        }
        // every start position is drawn: (30−13+1) + (25−13+1) + (40−13+1)
        assert_eq!(seen.len(), 18 + 13 + 28);
    }

    #[test]
    fn nsp_pairs_are_consecutive_or_from_another_document_half_each() {
        let (s, _) = doc_stream();
        let seq_len = 16;
        let ix = DocIndex::new(&s, 0, seq_len - 3);
        let (cls, sep) = (7u32, 8u32);
        let doc_of = |t: u32| t / 100;
        let mut random = 0;
        for seed in 0..2000 {
            let ex = nsp_example(&s, &ix, seq_len, cls, sep, &mut rng(seed)).unwrap();
            let (la, n) = (ex.a_len, seq_len - 3);
            assert!(la >= 1 && la < n);
            assert_eq!(ex.tokens.len(), seq_len);
            assert_eq!(ex.tokens[0], cls);
            assert_eq!(ex.tokens[la + 1], sep);
            assert_eq!(ex.tokens[seq_len - 1], sep);
            assert_eq!(ex.segments, [vec![0; la + 2], vec![1; seq_len - la - 2]].concat());
            let (a, b) = (&ex.tokens[1..la + 1], &ex.tokens[la + 2..seq_len - 1]);
            assert_eq!(a, &s[ex.a_start..ex.a_start + la], "A is read where it says");
            assert_eq!(b, &s[ex.b_start..ex.b_start + b.len()], "B is read where it says");
            assert!(a.iter().chain(b).all(|&t| t != 0), "a segment crosses a document boundary");
            if ex.label == 0 {
                // the true next text: B starts right after A, in the same document
                assert_eq!(ex.b_start, ex.a_start + la);
                assert_eq!(doc_of(b[0]), doc_of(a[0]));
                assert_eq!(b[0], a[la - 1] + 1);
            } else {
                assert_ne!(doc_of(b[0]), doc_of(a[0]), "a random B from A's own document");
                random += 1;
            }
        }
        assert!((900..1100).contains(&random), "{random} random pairs of 2000");
        // one drawable document is not enough for a random second segment
        let one: Vec<u32> = (100..140).collect();
        let err = nsp_example(&one, &DocIndex::new(&one, 0, 13), 16, cls, sep, &mut rng(0)).unwrap_err();
        assert!(err.contains("two documents"), "{err}");
    }
}
