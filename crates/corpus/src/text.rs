//! Text helpers shared by the quality rules: word splitting, hashing, duplicate counting.

use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasherDefault, Hasher};

/// Hasher for keys that are already hashes (xxh3 outputs): no re-hashing.
#[derive(Default)]
pub struct IdHasher(u64);
impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ b as u64;
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}
pub type IdBuild = BuildHasherDefault<IdHasher>;
pub type HashSet64 = HashSet<u64, IdBuild>;
pub type HashMap64<V> = HashMap<u64, V, IdBuild>;

#[inline]
pub fn hash(s: &str) -> u64 {
    xxhash_rust::xxh3::xxh3_64(s.as_bytes())
}

/// Punctuation or symbol (anything neither alphanumeric nor whitespace).
#[inline]
pub fn is_symbol(c: char) -> bool {
    !c.is_alphanumeric() && !c.is_whitespace()
}

/// Words in the style of a Treebank tokenizer: whitespace tokens with leading and trailing
/// punctuation split off as one-character tokens ("dog." -> "dog", "."). Inner punctuation
/// ("don't", "e.g", "3.14") stays in the word.
pub fn words(text: &str) -> Vec<&str> {
    let mut out = Vec::with_capacity(text.len() / 5);
    for tok in text.split_whitespace() {
        let mut start = 0;
        let mut end = tok.len();
        let mut trailing = Vec::new();
        for (i, c) in tok.char_indices() {
            if is_symbol(c) && i == start && start < end {
                out.push(&tok[i..i + c.len_utf8()]);
                start = i + c.len_utf8();
            } else {
                break;
            }
        }
        while end > start {
            let c = tok[start..end].chars().next_back().unwrap();
            if is_symbol(c) {
                trailing.push(&tok[end - c.len_utf8()..end]);
                end -= c.len_utf8();
            } else {
                break;
            }
        }
        if end > start {
            out.push(&tok[start..end]);
        }
        out.extend(trailing.into_iter().rev());
    }
    out
}

/// (number of duplicate elements, characters in them): an element counts as a duplicate from its
/// second occurrence on, as in the Gopher paper's repetition measures.
pub fn find_duplicates<'a>(items: impl Iterator<Item = &'a str>) -> (usize, usize) {
    let mut seen = HashSet64::default();
    let (mut n, mut chars) = (0, 0);
    for it in items {
        if !seen.insert(hash(it)) {
            n += 1;
            chars += it.chars().count();
        }
    }
    (n, chars)
}

/// Char count without allocating (ASCII fast path).
#[inline]
pub fn char_len(s: &str) -> usize {
    if s.is_ascii() {
        s.len()
    } else {
        s.chars().count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_split_outer_punctuation_only() {
        assert_eq!(words("Hello, world. (don't) 3.14!"), vec!["Hello", ",", "world", ".", "(", "don't", ")", "3.14", "!"]);
        assert_eq!(words("..."), vec![".", ".", "."]);
    }

    #[test]
    fn duplicates_count_second_occurrences() {
        assert_eq!(find_duplicates(["a", "bb", "a", "bb", "bb"].into_iter()), (3, 5));
    }
}
