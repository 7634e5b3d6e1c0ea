//! The generated corpus the n-gram tests share.

use std::ops::Range;

/// Deterministic Zipf-ish sentences with some local structure: `sentences` lines of words
/// `w0..w{vocab}`, each line's length drawn from `lengths` (a range starting at 0 gives
/// empty sentences too).
pub fn corpus(sentences: usize, vocab: u64, seed: u64, lengths: Range<u64>) -> Vec<String> {
    let mut s = seed;
    let mut next = move || {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        s
    };
    (0..sentences)
        .map(|_| {
            let len = lengths.start + next() % (lengths.end - lengths.start);
            let mut prev = next() % vocab;
            (0..len)
                .map(|_| {
                    // half the time follow a fixed successor, else a skewed random word
                    let r = next();
                    prev = if r % 2 == 0 { (prev * 7 + 3) % vocab } else { (r >> 8) % (1 + (r >> 20) % vocab) };
                    format!("w{prev}")
                })
                .collect::<Vec<_>>()
                .join(" ")
        })
        .collect()
}
