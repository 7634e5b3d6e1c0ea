//! Fill-in-the-middle training data (Bavarian et al. 2022, "Efficient Training of Language
//! Models to Fill in the Middle").
//!
//! With probability `fim_rate` a document is cut at two character positions drawn uniformly
//! into prefix, middle and suffix, the pieces are tokenized separately, and the document is
//! rearranged so that a left-to-right model learns to produce the middle from both sides:
//!
//! - PSM: `<PRE> prefix <SUF> suffix <MID> middle` then the document's `<EOT>`;
//! - SPM (the paper's appendix variant, used for its joint PSM+SPM training):
//!   `<PRE> <SUF> suffix <MID> prefix middle` then `<EOT>`, so prefix and middle are
//!   contiguous and the suffix, which changes least while a user types, comes first.
//!
//! A transformed document is SPM with probability `fim_spm_rate`, else PSM.
//!
//! Two levels, as in the paper:
//!
//! - **document** (`fim_level = "document"`): the transformation is applied to every
//!   document before the documents are packed into the token stream; training windows are
//!   then drawn from the transformed stream. A FIM example can be cut by a window edge.
//!   Each document's draws come from `(seed, document index)`, so the stream is a function
//!   of the seed and a resumed run sees exactly the same data.
//! - **context** (`fim_level = "context"`, the paper's recommendation): the transformation is
//!   applied after the window (the model's context) is drawn, to each piece of a document
//!   between end-of-text tokens inside it: the piece's tokens are decoded to text, split at
//!   characters, and the pieces re-tokenized. The result must keep the window's length:
//!   it is almost always longer (three sentinels, and pieces tokenized apart), so the
//!   suffix's last tokens are trimmed (a piece whose suffix is too short to absorb the
//!   excess is left as it was); when shorter (rare: a piece whose tokens re-merge), padding
//!   fills the front of the piece and is never scored (as input or as target), so every FIM
//!   example still teaches the model to end its middle with `<EOT>` when the document ends
//!   inside the window. Draws come from `(seed, step, micro-step, "fim")`.
//!
//! A piece whose bytes are not valid UTF-8 (a character cut by the window edge) is left as
//! it was: it cannot be split at characters.

use anyhow::{Context, Result};
use rand::{Rng, SeedableRng};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use ferrolm_tokenizer::{special, Tokenizer};

use crate::data::{step_seed, TokenSource};

/// Where the transformation is applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FimLevel {
    /// To whole documents before they are packed into the stream.
    Document,
    /// To the document pieces inside each drawn training window (the paper's recommendation).
    #[default]
    Context,
}

/// The order of the three pieces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FimMode {
    /// `<PRE> prefix <SUF> suffix <MID> middle`
    Psm,
    /// `<PRE> <SUF> suffix <MID> prefix middle`
    Spm,
}

/// The token ids FIM needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FimTokens {
    pub prefix: u32,
    pub suffix: u32,
    pub middle: u32,
    pub eot: u32,
    /// Fills a context-level example that re-tokenized shorter; never scored.
    pub pad: u32,
}

impl FimTokens {
    pub fn from_tokenizer(tok: &Tokenizer) -> Result<Self> {
        let id = |name: &str| {
            tok.token_id(name).with_context(|| {
                format!(
                    "the tokenizer has no {name} token, which fill-in-the-middle needs: train the tokenizer with \
                     the default special tokens (ferrolm_tokenizer::special::defaults), or set train.fim_rate = 0"
                )
            })
        };
        Ok(Self { prefix: id(special::FIM_PREFIX)?, suffix: id(special::FIM_SUFFIX)?, middle: id(special::FIM_MIDDLE)?, eot: id(special::EOT)?, pad: id(special::PAD)? })
    }
}

/// `train.fim_*`: how often and how documents are transformed.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FimSettings {
    /// Share of documents (document level) or document pieces (context level) transformed.
    pub rate: f64,
    /// Share of the transformed ones laid out SPM (the rest PSM).
    pub spm_rate: f64,
    pub level: FimLevel,
    /// Share of the transformed ones cut at line starts ([`split_document_at_lines`]).
    pub line_rate: f64,
}

/// A document cut into three pieces at two character positions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FimSplit<'t> {
    pub prefix: &'t str,
    pub middle: &'t str,
    pub suffix: &'t str,
}

/// Cut `text` at two positions drawn independently and uniformly from its `n + 1` character
/// boundaries (n characters), then sorted: the paper's character-level random span. Any of
/// the pieces may be empty.
pub fn split_document<'t>(text: &'t str, rng: &mut impl Rng) -> FimSplit<'t> {
    let n = text.chars().count();
    let (mut a, mut b) = (rng.random_range(0..=n), rng.random_range(0..=n));
    if a > b {
        std::mem::swap(&mut a, &mut b);
    }
    let byte = |c: usize| text.char_indices().nth(c).map_or(text.len(), |(i, _)| i);
    let (a, b) = (byte(a), byte(b));
    FimSplit { prefix: &text[..a], middle: &text[a..b], suffix: &text[b..] }
}

/// Cut `text` at two of its line starts (0, every position after a `\n`, and the end),
/// drawn independently and uniformly and sorted: a middle of whole lines, as an editor's
/// cursor at the start of a line asks for. Text of one line (no `\n` inside) is cut at
/// characters instead ([`split_document`]). Two draws either way.
pub fn split_document_at_lines<'t>(text: &'t str, rng: &mut impl Rng) -> FimSplit<'t> {
    let mut starts: Vec<usize> = std::iter::once(0).chain(text.match_indices('\n').map(|(i, _)| i + 1)).collect();
    if starts.last() != Some(&text.len()) {
        starts.push(text.len());
    }
    if starts.len() < 3 {
        return split_document(text, rng);
    }
    let (mut a, mut b) = (starts[rng.random_range(0..starts.len())], starts[rng.random_range(0..starts.len())]);
    if a > b {
        std::mem::swap(&mut a, &mut b);
    }
    FimSplit { prefix: &text[..a], middle: &text[a..b], suffix: &text[b..] }
}

/// The token layout of one FIM example (without the closing `<EOT>`, which is the
/// document's own).
pub fn layout(mode: FimMode, prefix: &[u32], middle: &[u32], suffix: &[u32], t: &FimTokens) -> Vec<u32> {
    let mut v = Vec::with_capacity(prefix.len() + middle.len() + suffix.len() + 3);
    match mode {
        FimMode::Psm => {
            v.push(t.prefix);
            v.extend_from_slice(prefix);
            v.push(t.suffix);
            v.extend_from_slice(suffix);
            v.push(t.middle);
            v.extend_from_slice(middle);
        }
        FimMode::Spm => {
            v.push(t.prefix);
            v.push(t.suffix);
            v.extend_from_slice(suffix);
            v.push(t.middle);
            v.extend_from_slice(prefix);
            v.extend_from_slice(middle);
        }
    }
    v
}

/// Counts of what the transformation did (logged once for document level).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct FimStats {
    /// Documents (document level) or document pieces (context level) seen.
    pub documents: usize,
    pub psm: usize,
    pub spm: usize,
    /// Drawn for FIM but left unchanged: bytes not valid UTF-8 (a character cut at a
    /// window edge), or a context-level example too long to trim into its place.
    pub skipped: usize,
}

/// The FIM transformation with its tokenizer.
#[derive(Clone)]
pub struct Fim<'a> {
    pub settings: FimSettings,
    pub tokens: FimTokens,
    tok: &'a Tokenizer,
}

/// The drawn decision for one document: FIM or not, and if so the split and the mode.
struct Draw {
    fim: bool,
    spm: bool,
    /// Cut at line starts.
    lines: bool,
}

impl<'a> Fim<'a> {
    pub fn new(settings: FimSettings, tok: &'a Tokenizer) -> Result<Self> {
        anyhow::ensure!((0.0..=1.0).contains(&settings.rate), "train.fim_rate must be in [0, 1], got {}", settings.rate);
        anyhow::ensure!((0.0..=1.0).contains(&settings.spm_rate), "train.fim_spm_rate must be in [0, 1], got {}", settings.spm_rate);
        anyhow::ensure!((0.0..=1.0).contains(&settings.line_rate), "train.fim_line_rate must be in [0, 1], got {}", settings.line_rate);
        Ok(Self { settings, tokens: FimTokens::from_tokenizer(tok)?, tok })
    }

    /// Always the same number of draws per document, whatever the outcome, so one
    /// document's decision never shifts another's.
    fn draw(&self, rng: &mut impl Rng) -> Draw {
        let u: f64 = rng.random();
        let v: f64 = rng.random();
        // a third draw only when line cuts are configured, so that runs without them draw
        // exactly as before
        let lines = self.settings.line_rate > 0.0 && rng.random::<f64>() < self.settings.line_rate;
        Draw { fim: u < self.settings.rate, spm: v < self.settings.spm_rate, lines }
    }

    fn text_of(&self, ids: &[u32]) -> Option<String> {
        let mut bytes = Vec::new();
        for &id in ids {
            bytes.extend_from_slice(self.tok.id_to_bytes(id)?);
        }
        String::from_utf8(bytes).ok()
    }

    /// The pieces of `text`, tokenized separately: (prefix, middle, suffix) ids and the mode.
    fn pieces(&self, text: &str, d: &Draw, rng: &mut impl Rng) -> (Vec<u32>, Vec<u32>, Vec<u32>, FimMode) {
        let s = if d.lines { split_document_at_lines(text, rng) } else { split_document(text, rng) };
        let mode = if d.spm { FimMode::Spm } else { FimMode::Psm };
        (self.tok.encode(s.prefix), self.tok.encode(s.middle), self.tok.encode(s.suffix), mode)
    }

    /// Document level: one document's ids (without its `<EOT>`) → the ids that replace them.
    /// `None` when the draw leaves it as it is (or its bytes are not UTF-8).
    pub fn transform_document(&self, doc: &[u32], rng: &mut impl Rng, stats: &mut FimStats) -> Option<Vec<u32>> {
        stats.documents += 1;
        let d = self.draw(rng);
        if !d.fim || doc.is_empty() {
            return None;
        }
        let Some(text) = self.text_of(doc) else {
            stats.skipped += 1;
            return None;
        };
        let (p, m, s, mode) = self.pieces(&text, &d, rng);
        match mode {
            FimMode::Psm => stats.psm += 1,
            FimMode::Spm => stats.spm += 1,
        }
        Some(layout(mode, &p, &m, &s, &self.tokens))
    }

    /// Document level over a whole token stream: documents are the runs between `<EOT>`s
    /// (a final run without one counts too); document `i` draws from
    /// `(seed, i, "fim-document")`. Returns the transformed stream.
    pub fn document_stream(&self, src: &dyn TokenSource, seed: u64) -> (Vec<u32>, FimStats) {
        let mut all = vec![0u32; src.len()];
        src.read(0, &mut all);
        let eot = self.tokens.eot;
        let mut docs = Vec::new();
        let mut start = 0;
        for (i, &t) in all.iter().enumerate() {
            if t == eot {
                docs.push(start..i);
                start = i + 1;
            }
        }
        if start < all.len() {
            docs.push(start..all.len());
        }
        let parts: Vec<(Option<Vec<u32>>, FimStats)> = docs
            .par_iter()
            .enumerate()
            .map(|(i, r)| {
                let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(step_seed(seed, i, 0, "fim-document"));
                let mut st = FimStats::default();
                (self.transform_document(&all[r.clone()], &mut rng, &mut st), st)
            })
            .collect();
        let mut out = Vec::with_capacity(all.len() + all.len() / 8);
        let mut stats = FimStats::default();
        for (r, (ids, st)) in docs.iter().zip(parts) {
            match ids {
                Some(ids) => out.extend_from_slice(&ids),
                None => out.extend_from_slice(&all[r.clone()]),
            }
            // every run but an unterminated last one ended with an <EOT>
            if r.end < all.len() {
                out.push(eot);
            }
            stats.documents += st.documents;
            stats.psm += st.psm;
            stats.spm += st.spm;
            stats.skipped += st.skipped;
        }
        (out, stats)
    }

    /// Context level, in place: every document piece of `window` (the runs between `<EOT>`s)
    /// becomes a FIM example with probability `rate`, at the same length. Returns, per
    /// position, whether it is padding (never scored as input or target).
    pub fn transform_context(&self, window: &mut [u32], rng: &mut impl Rng, stats: &mut FimStats) -> Vec<bool> {
        let mut pad = vec![false; window.len()];
        let eot = self.tokens.eot;
        let mut start = 0;
        while start < window.len() {
            let end = window[start..].iter().position(|&t| t == eot).map_or(window.len(), |p| start + p);
            if end > start {
                self.transform_piece(&mut window[start..end], &mut pad[start..end], rng, stats);
            }
            start = end + 1;
        }
        pad
    }

    fn transform_piece(&self, piece: &mut [u32], pad: &mut [bool], rng: &mut impl Rng, stats: &mut FimStats) {
        stats.documents += 1;
        let d = self.draw(rng);
        if !d.fim {
            return;
        }
        let Some(text) = self.text_of(piece) else {
            stats.skipped += 1;
            return;
        };
        let (p, m, mut s, mode) = self.pieces(&text, &d, rng);
        let len = p.len() + m.len() + s.len() + 3;
        if len > piece.len() {
            let excess = len - piece.len();
            if excess > s.len() {
                stats.skipped += 1;
                return;
            }
            s.truncate(s.len() - excess);
        }
        let ids = layout(mode, &p, &m, &s, &self.tokens);
        let fill = piece.len() - ids.len();
        piece[..fill].fill(self.tokens.pad);
        pad[..fill].fill(true);
        piece[fill..].copy_from_slice(&ids);
        match mode {
            FimMode::Psm => stats.psm += 1,
            FimMode::Spm => stats.spm += 1,
        }
    }
}

/// A FIM example's mode and its (prefix, middle, suffix) ids.
pub type FimIds = (FimMode, Vec<u32>, Vec<u32>, Vec<u32>);

/// The pieces of a FIM example back as (prefix, middle, suffix) ids: the inverse of
/// [`layout`] (for tests and for reading an example). SPM does not mark where the prefix
/// ends, so its prefix and middle come back together as the middle; a PSM example with an
/// empty prefix is token for token an SPM one and reads as SPM.
pub fn unlayout(ids: &[u32], t: &FimTokens) -> Option<FimIds> {
    let pos = |id: u32| ids.iter().position(|&x| x == id);
    let (pre, suf, mid) = (pos(t.prefix)?, pos(t.suffix)?, pos(t.middle)?);
    if pre != 0 {
        return None;
    }
    if suf == 1 {
        // SPM: prefix and middle are contiguous after <MID>; their boundary is not marked
        let suffix = ids[2..mid].to_vec();
        return Some((FimMode::Spm, Vec::new(), ids[mid + 1..].to_vec(), suffix));
    }
    (suf < mid).then(|| (FimMode::Psm, ids[1..suf].to_vec(), ids[mid + 1..].to_vec(), ids[suf + 1..mid].to_vec()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferrolm_tokenizer::BpeTrainConfig;
    use rand_chacha::ChaCha8Rng;

    fn tokenizer() -> Tokenizer {
        let text = "fn main() {\n    let x = vec![1, 2, 3];\n    println!(\"{x:?}\");\n}\n// héllo wörld 日本語\n".repeat(20);
        Tokenizer::train_bpe(std::iter::once(text), &BpeTrainConfig { vocab_size: 330, min_frequency: 2, special_tokens: special::defaults() }).unwrap()
    }

    #[test]
    fn the_three_pieces_reassemble_the_document_and_split_points_are_uniform_over_characters() {
        let text = "aé日b\ncd";
        let n = text.chars().count();
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let mut starts = vec![0usize; n + 1];
        for _ in 0..20_000 {
            let s = split_document(text, &mut rng);
            assert_eq!(format!("{}{}{}", s.prefix, s.middle, s.suffix), text);
            starts[s.prefix.chars().count()] += 1;
        }
        // the smaller of two uniform draws over n+1 points: P(min = k) = (2(n-k)+1)/(n+1)^2
        for (k, &c) in starts.iter().enumerate() {
            let p = (2 * (n - k) + 1) as f64 / ((n + 1) * (n + 1)) as f64;
            let expect = p * 20_000.0;
            assert!((c as f64 - expect).abs() < 5.0 * expect.sqrt() + 5.0, "k={k}: {c} vs {expect:.0}");
        }
        let empty = split_document("", &mut rng);
        assert_eq!((empty.prefix, empty.middle, empty.suffix), ("", "", ""));
    }

    #[test]
    fn line_cuts_fall_at_line_starts_and_cover_every_start() {
        let text = "fn a() {\n    let x = 1;\n    x\n}\n// é\n";
        let starts = [0, 9, 24, 30, 32, 38];
        let mut rng = ChaCha8Rng::seed_from_u64(5);
        let mut seen = std::collections::BTreeSet::new();
        for _ in 0..2_000 {
            let s = split_document_at_lines(text, &mut rng);
            assert_eq!(format!("{}{}{}", s.prefix, s.middle, s.suffix), text);
            let (a, b) = (s.prefix.len(), s.prefix.len() + s.middle.len());
            assert!(starts.contains(&a) && starts.contains(&b), "cuts at {a} and {b}");
            seen.insert(a);
            seen.insert(b);
        }
        assert_eq!(seen.into_iter().collect::<Vec<_>>(), starts.to_vec(), "every line start is drawn");
        // one line: character cuts, still two draws
        let (mut r1, mut r2) = (ChaCha8Rng::seed_from_u64(9), ChaCha8Rng::seed_from_u64(9));
        assert_eq!(split_document_at_lines("no newline here", &mut r1), split_document("no newline here", &mut r2));
        assert_eq!(r1.random::<u64>(), r2.random::<u64>());
    }

    #[test]
    fn line_rate_one_gives_middles_of_whole_lines_and_zero_draws_as_before() {
        let tok = tokenizer();
        let t = FimTokens::from_tokenizer(&tok).unwrap();
        let doc = "fn f() {\n    let x = vec![1, 2];\n    x.len()\n}\n";
        let ids = tok.encode(doc);
        let lines = Fim::new(FimSettings { rate: 1.0, spm_rate: 0.0, level: FimLevel::Document, line_rate: 1.0 }, &tok).unwrap();
        let mut rng = ChaCha8Rng::seed_from_u64(2);
        let mut stats = FimStats::default();
        for _ in 0..50 {
            let out = lines.transform_document(&ids, &mut rng, &mut stats).unwrap();
            let (mode, p, m, sfx) = unlayout(&out, &t).unwrap();
            let (p, m, sfx) = (tok.decode(&p), tok.decode(&m), tok.decode(&sfx));
            if mode == FimMode::Psm {
                assert_eq!(format!("{p}{m}{sfx}"), doc);
                assert!(p.is_empty() || p.ends_with('\n'), "the middle starts a line: {p:?}");
                assert!(m.is_empty() || m.ends_with('\n'), "and ends one: {m:?}");
            }
        }
        // line_rate 0 takes no third draw: the same examples as a build without the option
        let chars = Fim::new(FimSettings { rate: 1.0, spm_rate: 0.5, level: FimLevel::Document, line_rate: 0.0 }, &tok).unwrap();
        let (mut r1, mut r2) = (ChaCha8Rng::seed_from_u64(4), ChaCha8Rng::seed_from_u64(4));
        let out = chars.transform_document(&ids, &mut r1, &mut stats).unwrap();
        let (u, v): (f64, f64) = (r2.random(), r2.random());
        assert!(u < 1.0);
        let s = split_document(doc, &mut r2);
        let mode = if v < 0.5 { FimMode::Spm } else { FimMode::Psm };
        assert_eq!(out, layout(mode, &tok.encode(s.prefix), &tok.encode(s.middle), &tok.encode(s.suffix), &t));
        assert!(Fim::new(FimSettings { rate: 1.0, spm_rate: 0.5, level: FimLevel::Document, line_rate: 1.5 }, &tok).is_err());
    }

    #[test]
    fn psm_and_spm_layouts_are_the_papers() {
        let t = FimTokens { prefix: 100, suffix: 101, middle: 102, eot: 0, pad: 1 };
        let (p, m, s) = ([10, 11], [20], [30, 31, 32]);
        assert_eq!(layout(FimMode::Psm, &p, &m, &s, &t), vec![100, 10, 11, 101, 30, 31, 32, 102, 20]);
        assert_eq!(layout(FimMode::Spm, &p, &m, &s, &t), vec![100, 101, 30, 31, 32, 102, 10, 11, 20]);
        let (mode, pp, mm, ss) = unlayout(&layout(FimMode::Psm, &p, &m, &s, &t), &t).unwrap();
        assert_eq!((mode, pp, mm, ss), (FimMode::Psm, p.to_vec(), m.to_vec(), s.to_vec()));
        let (mode, _, pm, ss) = unlayout(&layout(FimMode::Spm, &p, &m, &s, &t), &t).unwrap();
        assert_eq!((mode, pm, ss), (FimMode::Spm, vec![10, 11, 20], s.to_vec()));
    }

    #[test]
    fn document_level_transforms_the_drawn_share_and_the_text_survives() {
        let tok = tokenizer();
        let t = FimTokens::from_tokenizer(&tok).unwrap();
        let docs: Vec<String> = (0..400).map(|i| format!("fn f{i}() {{\n    let x = {i};\n}}\n// héllo {i}")).collect();
        let mut stream = Vec::new();
        for d in &docs {
            stream.extend(tok.encode(d));
            stream.push(t.eot);
        }
        let fim = Fim::new(FimSettings { rate: 0.5, spm_rate: 0.5, level: FimLevel::Document, line_rate: 0.0 }, &tok).unwrap();
        let (out, stats) = fim.document_stream(&stream, 7);
        assert_eq!(stats.documents, 400);
        assert_eq!(stats.skipped, 0);
        let fimmed = stats.psm + stats.spm;
        assert!((150..250).contains(&fimmed), "{stats:?}");
        assert!(stats.psm > 50 && stats.spm > 50, "{stats:?}");
        // the same seed gives the same stream; another seed another one
        assert_eq!(fim.document_stream(&stream, 7).0, out);
        assert_ne!(fim.document_stream(&stream, 8).0, out);
        // every document comes back: plain ones unchanged, FIM ones with their pieces
        let out_docs: Vec<&[u32]> = out.split(|&x| x == t.eot).collect();
        assert_eq!(out_docs.len(), 401, "400 documents and the empty run after the last EOT");
        let (mut psm, mut spm) = (0, 0);
        for (d, ids) in docs.iter().zip(&out_docs) {
            match unlayout(ids, &t) {
                None => assert_eq!(tok.decode(ids), *d),
                Some((FimMode::Psm, p, m, s)) => {
                    psm += 1;
                    assert_eq!(format!("{}{}{}", tok.decode(&p), tok.decode(&m), tok.decode(&s)), *d);
                }
                Some((FimMode::Spm, _, pm, s)) => {
                    spm += 1;
                    assert_eq!(format!("{}{}", tok.decode(&pm), tok.decode(&s)), *d);
                }
            }
            // each sentinel at most once
            for id in [t.prefix, t.suffix, t.middle] {
                assert!(ids.iter().filter(|&&x| x == id).count() <= 1);
            }
        }
        // a PSM example with an empty prefix is, token for token, an SPM one
        assert_eq!(psm + spm, stats.psm + stats.spm);
        assert!(spm >= stats.spm && spm - stats.spm < 20, "{spm} {stats:?}");
        // rate 0 leaves the stream as it was
        let none = Fim::new(FimSettings { rate: 0.0, spm_rate: 0.5, level: FimLevel::Document, line_rate: 0.0 }, &tok).unwrap();
        assert_eq!(none.document_stream(&stream, 7).0, stream);
    }

    #[test]
    fn context_level_keeps_the_window_length_and_pads_only_the_front() {
        let tok = tokenizer();
        let t = FimTokens::from_tokenizer(&tok).unwrap();
        let mut stream = Vec::new();
        for i in 0..50 {
            stream.extend(tok.encode(&format!("fn f{i}() {{\n    let x = vec![{i}];\n}}\n")));
            stream.push(t.eot);
        }
        let fim = Fim::new(FimSettings { rate: 1.0, spm_rate: 0.5, level: FimLevel::Context, line_rate: 0.0 }, &tok).unwrap();
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        let mut stats = FimStats::default();
        for start in [0usize, 5, 17, 40] {
            let orig = stream[start..start + 65].to_vec();
            let mut w = orig.clone();
            let pad = fim.transform_context(&mut w, &mut rng, &mut stats);
            assert_eq!(w.len(), orig.len());
            assert_eq!(pad.len(), w.len());
            // EOTs stay where they were; pieces between them are FIM examples of the same length
            let eots = |v: &[u32]| v.iter().enumerate().filter(|(_, &x)| x == t.eot).map(|(i, _)| i).collect::<Vec<_>>();
            assert_eq!(eots(&w), eots(&orig));
            let mut s = 0;
            for e in eots(&w).into_iter().chain([w.len()]) {
                if e > s {
                    let piece = &w[s..e];
                    let pads = pad[s..e].iter().take_while(|&&p| p).count();
                    assert!(pad[s + pads..e].iter().all(|&p| !p), "padding only at the front");
                    assert!(piece[..pads].iter().all(|&x| x == t.pad));
                    let body = &piece[pads..];
                    let original = tok.decode(&orig[s..e]);
                    match unlayout(body, &t) {
                        Some((FimMode::Psm, p, m, sfx)) => {
                            let (p, m, sfx) = (tok.decode(&p), tok.decode(&m), tok.decode(&sfx));
                            assert!(original.starts_with(&format!("{p}{m}")), "{original:?}");
                            assert!(original[p.len() + m.len()..].starts_with(&sfx), "the suffix is at most trimmed at its end");
                        }
                        Some((FimMode::Spm, _, pm, sfx)) => {
                            let (pm, sfx) = (tok.decode(&pm), tok.decode(&sfx));
                            assert!(original.starts_with(&pm) && original[pm.len()..].starts_with(&sfx));
                        }
                        None => assert_eq!(body, &orig[s..e], "an untransformed piece is unchanged"),
                    }
                }
                s = e + 1;
            }
        }
        assert!(stats.psm + stats.spm > 0, "{stats:?}");
    }

    #[test]
    fn a_piece_that_re_tokenizes_shorter_is_padded_at_the_front_and_the_padding_is_marked() {
        let tok = tokenizer();
        let t = FimTokens::from_tokenizer(&tok).unwrap();
        // the text spelled one character per token: re-tokenizing merges it into far fewer
        let text = "fn main() {\n    let x = vec![1, 2, 3];\n}\n";
        let mut w: Vec<u32> = text.chars().flat_map(|c| tok.encode(&c.to_string())).collect();
        w.push(t.eot);
        let n = w.len();
        let fim = Fim::new(FimSettings { rate: 1.0, spm_rate: 0.0, level: FimLevel::Context, line_rate: 0.0 }, &tok).unwrap();
        let mut stats = FimStats::default();
        let pad = fim.transform_context(&mut w, &mut ChaCha8Rng::seed_from_u64(5), &mut stats);
        assert_eq!((w.len(), stats.psm), (n, 1));
        let fill = pad.iter().take_while(|&&p| p).count();
        assert!(fill > 10, "padding fills what re-tokenizing saved: {fill}");
        assert!(w[..fill].iter().all(|&x| x == t.pad) && pad[fill..].iter().all(|&p| !p));
        assert_eq!(w[n - 1], t.eot);
        let (mode, p, m, s) = unlayout(&w[fill..n - 1], &t).unwrap();
        assert_eq!(mode, FimMode::Psm);
        assert_eq!(format!("{}{}{}", tok.decode(&p), tok.decode(&m), tok.decode(&s)), text);
    }
}
