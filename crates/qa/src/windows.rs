//! From (question, context) to model inputs, as BERT's `run_squad.py` prepared SQuAD:
//! the context is split into words (whitespace-separated, punctuation apart), each word
//! into subword tokens; answers are located on word boundaries, so a predicted span always
//! maps back to an exact slice of the original text; a context longer than the model's
//! window is cut into overlapping windows (`doc_stride` tokens apart), and a token that
//! lies in several windows is scored only in the one where it has the most context.
//!
//! One window is `[CLS] question [SEP] context-part [SEP]`, with ferrolm's conventions for
//! the two markers (end-of-text as `[CLS]`, `<|end|>` as `[SEP]`, as the masked LM's
//! next-sentence pairs use them). Position 0 (`[CLS]`) is the null span: the target of an
//! unanswerable question, and of an answerable one whose answer is outside the window.

use anyhow::{bail, Context, Result};
use ferrolm_tokenizer::{special, Tokenizer};
use serde::{Deserialize, Serialize};

/// A word of a context: its character range (Unicode code points, as SQuAD's offsets) and
/// byte range, and whether whitespace precedes it.
#[derive(Debug, Clone, PartialEq)]
pub struct Word {
    pub char_start: usize,
    pub char_end: usize,
    pub byte_start: usize,
    pub byte_end: usize,
    pub after_space: bool,
}

/// Words of `text`: runs of alphanumeric characters, and every other non-space character
/// alone (BERT's basic tokenizer splits punctuation the same way).
pub fn split_words(text: &str) -> Vec<Word> {
    let mut words = Vec::new();
    let mut cur: Option<Word> = None;
    let mut space = true;
    for (ci, (bi, c)) in text.char_indices().enumerate() {
        if c.is_whitespace() {
            words.extend(cur.take());
            space = true;
            continue;
        }
        let alnum = c.is_alphanumeric();
        match &mut cur {
            Some(w) if alnum && text[w.byte_start..w.byte_end].chars().last().is_some_and(char::is_alphanumeric) => {
                w.char_end = ci + 1;
                w.byte_end = bi + c.len_utf8();
            }
            _ => {
                words.extend(cur.take());
                cur = Some(Word { char_start: ci, char_end: ci + 1, byte_start: bi, byte_end: bi + c.len_utf8(), after_space: space });
            }
        }
        space = false;
    }
    words.extend(cur);
    words
}

/// A context split into words and subword tokens.
#[derive(Debug, Clone)]
pub struct EncodedContext {
    pub words: Vec<Word>,
    pub ids: Vec<u32>,
    /// The word each token belongs to.
    pub token_word: Vec<usize>,
    /// The first token of each word.
    pub word_first_token: Vec<usize>,
}

/// Encode each word on its own, with a leading space where the text had one (the byte-level
/// BPE sees " word" as it does in running text).
pub fn encode_context(tok: &Tokenizer, text: &str) -> EncodedContext {
    let words = split_words(text);
    let mut ids = Vec::new();
    let mut token_word = Vec::new();
    let mut word_first_token = Vec::with_capacity(words.len());
    for (wi, w) in words.iter().enumerate() {
        word_first_token.push(ids.len());
        let piece = &text[w.byte_start..w.byte_end];
        let enc = if w.after_space && wi > 0 { tok.encode(&format!(" {piece}")) } else { tok.encode(piece) };
        // A word never encodes to nothing in a byte-level or character tokenizer; guard anyway
        // so every word owns at least one position.
        let enc = if enc.is_empty() { vec![unk_or_eot(tok)] } else { enc };
        token_word.extend(std::iter::repeat_n(wi, enc.len()));
        ids.extend(enc);
    }
    EncodedContext { words, ids, token_word, word_first_token }
}

fn unk_or_eot(tok: &Tokenizer) -> u32 {
    tok.token_id(special::UNK).unwrap_or_else(|| tok.eot_id())
}

/// The word range `[first, last]` of an answer given by its character offset and text;
/// `None` when the offset does not point at the text (a malformed record).
pub fn answer_words(ctx: &EncodedContext, context: &str, char_start: usize, answer: &str) -> Option<(usize, usize)> {
    let n = answer.chars().count();
    let got: String = context.chars().skip(char_start).take(n).collect();
    if n == 0 || got != answer {
        return None;
    }
    let char_end = char_start + n;
    let first = ctx.words.iter().position(|w| w.char_end > char_start)?;
    let last = ctx.words.iter().rposition(|w| w.char_start < char_end)?;
    (first <= last).then_some((first, last))
}

/// Sizes of the windows.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct WindowOptions {
    /// Tokens per window, markers included (≤ the model's max_seq_len).
    pub max_len: usize,
    /// Questions are cut to this many tokens.
    pub max_query_len: usize,
    /// Tokens between the starts of consecutive windows over one context.
    pub doc_stride: usize,
}

/// One model input.
#[derive(Debug, Clone, PartialEq)]
pub struct Window {
    /// Which example (question) it belongs to.
    pub example: usize,
    pub ids: Vec<u32>,
    /// Token types: 0 for `[CLS]`, question and first `[SEP]`; 1 after.
    pub types: Vec<u32>,
    /// Position of the first context token.
    pub ctx_pos: usize,
    /// Index (in the context's tokens) of the first context token of the window.
    pub ctx_token_start: usize,
    /// Context tokens in the window.
    pub ctx_len: usize,
    /// For each context token of the window: whether this window gives it the most context
    /// of all windows holding it.
    pub max_context: Vec<bool>,
    /// Target start and end positions (0, 0 = the null span).
    pub start: usize,
    pub end: usize,
}

/// The markers of a window: `[CLS]`, `[SEP]` — a Hugging Face encoder's own (BERT's
/// `[CLS]`/`[SEP]`, RoBERTa's `<s>`/`</s>`, from its tokenizer's frame of a text), else
/// ferrolm's conventions.
pub fn markers(tok: &Tokenizer) -> Result<(u32, u32)> {
    if tok.frames_encoder_texts() {
        let (before, after) = tok.special_frame()?;
        if let (Some(&cls), Some(&sep)) = (before.first(), after.first()) {
            return Ok((cls, sep));
        }
    }
    let cls = tok.try_eot_id().context("the tokenizer has no end-of-text token (used as [CLS])")?;
    let sep = tok.token_id(special::END).context("the tokenizer has no <|end|> token (used as [SEP])")?;
    Ok((cls, sep))
}

/// Windows of one (question, context). `answer` is the answer's context-token range
/// `[first, last]`, if the question has one.
pub fn make_windows(
    example: usize,
    question: &[u32],
    ctx: &EncodedContext,
    answer: Option<(usize, usize)>,
    markers: (u32, u32),
    o: &WindowOptions,
) -> Result<Vec<Window>> {
    let q = &question[..question.len().min(o.max_query_len)];
    if o.max_len < q.len() + 4 {
        bail!("a window of {} tokens leaves no room for context after a {}-token question", o.max_len, q.len());
    }
    let room = o.max_len - q.len() - 3;
    let stride = o.doc_stride.clamp(1, room);
    let n = ctx.ids.len();
    let mut spans = Vec::new();
    let mut s = 0;
    loop {
        let len = room.min(n - s);
        spans.push((s, len));
        if s + len >= n {
            break;
        }
        s += stride;
    }
    let (cls, sep) = markers;
    let mut out = Vec::with_capacity(spans.len());
    for (wi, &(s, len)) in spans.iter().enumerate() {
        let mut ids = Vec::with_capacity(q.len() + len + 3);
        ids.push(cls);
        ids.extend_from_slice(q);
        ids.push(sep);
        let ctx_pos = ids.len();
        ids.extend_from_slice(&ctx.ids[s..s + len]);
        ids.push(sep);
        let mut types = vec![0u32; ctx_pos];
        types.resize(ids.len(), 1);
        let max_context = (s..s + len).map(|t| best_window(&spans, t) == wi).collect();
        let (start, end) = match answer {
            Some((a, b)) if a >= s && b < s + len => (ctx_pos + a - s, ctx_pos + b - s),
            _ => (0, 0),
        };
        out.push(Window { example, ids, types, ctx_pos, ctx_token_start: s, ctx_len: len, max_context, start, end });
    }
    Ok(out)
}

/// The window in which token `t` has the most context: the largest min(left, right)
/// neighbourhood, plus a small share of the window's length (BERT's `_check_is_max_context`).
fn best_window(spans: &[(usize, usize)], t: usize) -> usize {
    let mut best = (f64::MIN, 0);
    for (i, &(s, len)) in spans.iter().enumerate() {
        if t < s || t >= s + len {
            continue;
        }
        let score = ((t - s).min(s + len - 1 - t)) as f64 + 0.01 * len as f64;
        if score > best.0 {
            best = (score, i);
        }
    }
    best.1
}

/// The context-token range `[first, last]` of an answer's words.
pub fn answer_tokens(ctx: &EncodedContext, words: (usize, usize)) -> (usize, usize) {
    let first = ctx.word_first_token[words.0];
    let last = if words.1 + 1 < ctx.words.len() { ctx.word_first_token[words.1 + 1] - 1 } else { ctx.ids.len() - 1 };
    (first, last)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_split_punctuation_and_keep_offsets() {
        let text = "Rollo's land, in 911 — Normandy.";
        let w = split_words(text);
        let s: Vec<&str> = w.iter().map(|w| &text[w.byte_start..w.byte_end]).collect();
        assert_eq!(s, ["Rollo", "'", "s", "land", ",", "in", "911", "—", "Normandy", "."]);
        assert!(w[0].after_space && !w[1].after_space && w[3].after_space && !w[4].after_space);
        // char offsets count code points: "—" is one character of three bytes
        assert_eq!((w[8].char_start, w[8].byte_start), (23, 25));
    }

    #[test]
    fn windows_cover_the_context_and_mark_max_context_once() {
        let ctx = EncodedContext {
            words: (0..20).map(|i| Word { char_start: i, char_end: i + 1, byte_start: i, byte_end: i + 1, after_space: true }).collect(),
            ids: (100..120).collect(),
            token_word: (0..20).collect(),
            word_first_token: (0..20).collect(),
        };
        let o = WindowOptions { max_len: 12, max_query_len: 4, doc_stride: 4 };
        // room = 12 - 2 - 3 = 7 context tokens per window
        let w = make_windows(0, &[1, 2], &ctx, Some((15, 16)), (0, 9), &o).unwrap();
        assert!(w.iter().all(|w| w.ids.len() <= 12 && w.ids[0] == 0 && w.ids[3] == 9 && *w.ids.last().unwrap() == 9));
        assert_eq!(w.iter().map(|w| w.ctx_token_start).collect::<Vec<_>>(), [0, 4, 8, 12, 16]);
        // every context token is "max context" in exactly one window
        for t in 0..20 {
            let n = w.iter().filter(|w| t >= w.ctx_token_start && t < w.ctx_token_start + w.ctx_len && w.max_context[t - w.ctx_token_start]).count();
            assert_eq!(n, 1, "token {t}");
        }
        // the answer (tokens 15-16) lies whole only in window 3 (tokens 12..19); elsewhere the null span
        assert_eq!((w[2].start, w[2].end), (0, 0));
        assert_eq!((w[4].start, w[4].end), (0, 0));
        assert_eq!(w[3].ids[w[3].start], 115);
        assert_eq!(w[3].ids[w[3].end], 116);
        assert_eq!(w[3].types[..4], [0, 0, 0, 0]);
        assert_eq!(w[3].types[4], 1);
    }
}
