//! GPT-2 pre-tokenization without a backtracking regex engine.
//!
//! GPT-2 (and Hugging Face's ByteLevel pre-tokenizer, and tiktoken's `gpt2` encoding) split
//! text with
//! `'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+`.
//! Every character is in exactly one of four classes (letter, number, whitespace, other), so
//! the leftmost-first semantics of that pattern reduce to this scan, at each position:
//! 1. `'` followed by `s t m d` or `re ve ll` is a contraction piece;
//! 2. a space followed by a non-whitespace character joins the run of that character's class;
//! 3. a letter/number/other character starts a maximal run of its class;
//! 4. a whitespace run reaching the end of the text is one piece; one followed by a
//!    non-whitespace character gives up its last character (the `(?!\S)` lookahead), unless
//!    it is a single character.
//!
//! Character classes come from the `regex` crate's Unicode tables (`\p{L}`, `\p{N}`, `\s`),
//! the tables tiktoken's regex engine uses; a test checks every code point against
//! Oniguruma, which Hugging Face's tokenizers use.

use std::sync::LazyLock;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[repr(u8)]
pub(crate) enum Class {
    Other = 0,
    Letter = 1,
    Number = 2,
    Space = 3,
}

const MAX_CHAR: usize = 0x110000;

/// Class of every code point, one byte each (1.1 MB, built once from the regex crate's tables).
static CLASSES: LazyLock<Box<[Class]>> = LazyLock::new(|| {
    let mut table = vec![Class::Other; MAX_CHAR].into_boxed_slice();
    // One string holding every scalar value; matching a class's `+` run marks its members.
    let all: String = (0..MAX_CHAR as u32).filter_map(char::from_u32).collect();
    for (pattern, class) in [(r"\p{L}+", Class::Letter), (r"\p{N}+", Class::Number), (r"\s+", Class::Space)] {
        let re = regex::Regex::new(pattern).expect("valid class regex");
        for m in re.find_iter(&all) {
            for c in m.as_str().chars() {
                table[c as usize] = class;
            }
        }
    }
    table
});

/// Class of a code point.
#[inline(always)]
pub(crate) fn class_of(c: u32) -> Class {
    if c < 128 {
        ASCII_CLASSES[c as usize]
    } else {
        CLASSES[c as usize]
    }
}

static ASCII_CLASSES: [Class; 128] = {
    let mut t = [Class::Other; 128];
    let mut i = 0;
    while i < 128 {
        let b = i as u8;
        t[i] = if b.is_ascii_alphabetic() {
            Class::Letter
        } else if b.is_ascii_digit() {
            Class::Number
        } else if matches!(b, b'\t' | b'\n' | 0x0B | 0x0C | b'\r' | b' ') {
            Class::Space
        } else {
            Class::Other
        };
        i += 1;
    }
    t
};

/// Force the Unicode table to be built (so a benchmark does not time it).
pub(crate) fn warm_up() {
    LazyLock::force(&CLASSES);
}

/// Decode the UTF-8 character starting at `b[i]` (`b` is valid UTF-8): (code point, length).
#[inline(always)]
fn decode(b: &[u8], i: usize) -> (u32, usize) {
    let b0 = b[i] as u32;
    if b0 < 0x80 {
        (b0, 1)
    } else if b0 < 0xE0 {
        (((b0 & 0x1F) << 6) | (b[i + 1] as u32 & 0x3F), 2)
    } else if b0 < 0xF0 {
        (((b0 & 0x0F) << 12) | ((b[i + 1] as u32 & 0x3F) << 6) | (b[i + 2] as u32 & 0x3F), 3)
    } else {
        (
            ((b0 & 0x07) << 18)
                | ((b[i + 1] as u32 & 0x3F) << 12)
                | ((b[i + 2] as u32 & 0x3F) << 6)
                | (b[i + 3] as u32 & 0x3F),
            4,
        )
    }
}

/// End of the maximal run of `class` characters starting at byte `j`.
#[inline(always)]
fn run_end(b: &[u8], mut j: usize, class: Class) -> usize {
    let n = b.len();
    while j < n {
        let (c, l) = decode(b, j);
        if class_of(c) != class {
            break;
        }
        j += l;
    }
    j
}

/// Call `f` on each GPT-2 pre-token of `text`, in order; the pieces concatenate to `text`.
#[inline]
pub(crate) fn split_gpt2<'t>(text: &'t str, mut f: impl FnMut(&'t str)) {
    let b = text.as_bytes();
    let n = b.len();
    let mut i = 0;
    while i < n {
        let (c, l) = decode(b, i);
        if c == b'\'' as u32 && i + 1 < n {
            let next = |k: usize| if i + k < n { b[i + k] } else { 0 };
            let len = match b[i + 1] {
                b's' | b't' | b'm' | b'd' => 2,
                b'r' | b'v' if next(2) == b'e' => 3,
                b'l' if next(2) == b'l' => 3,
                _ => 0,
            };
            if len > 0 {
                f(&text[i..i + len]);
                i += len;
                continue;
            }
        }
        if c == b' ' as u32 && i + 1 < n {
            let (c2, l2) = decode(b, i + 1);
            let class2 = class_of(c2);
            if class2 != Class::Space {
                let end = run_end(b, i + 1 + l2, class2);
                f(&text[i..end]);
                i = end;
                continue;
            }
        }
        let class = class_of(c);
        let end = if class == Class::Space {
            // Whitespace run; remember where its last character starts.
            let mut j = i + l;
            let mut last = i;
            while j < n {
                let (c3, l3) = decode(b, j);
                if class_of(c3) != Class::Space {
                    break;
                }
                last = j;
                j += l3;
            }
            if j < n && last > i {
                last
            } else {
                j
            }
        } else {
            run_end(b, i + l, class)
        };
        f(&text[i..end]);
        i = end;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(s: &str) -> Vec<&str> {
        let mut v = Vec::new();
        split_gpt2(s, |p| v.push(p));
        v
    }

    #[test]
    fn splits_like_the_gpt2_regex() {
        assert_eq!(split("Hello world"), ["Hello", " world"]);
        assert_eq!(split("I'm can't we'll they're"), ["I", "'m", " can", "'t", " we", "'ll", " they", "'re"]);
        assert_eq!(split("a  b"), ["a", " ", " b"]);
        assert_eq!(split("a   \n\nb  "), ["a", "   \n", "\n", "b", "  "]);
        assert_eq!(split("x = 12+3;"), ["x", " =", " 12", "+", "3", ";"]);
        assert_eq!(split("'''s 'S"), ["'''", "s", " '", "S"]);
        assert_eq!(split("\n\tfoo"), ["\n", "\t", "foo"]);
        assert_eq!(split("héllo wörld ٣٤ 日本語"), ["héllo", " wörld", " ٣٤", " 日本語"]);
        assert_eq!(split(" "), [" "]);
        assert_eq!(split(""), Vec::<&str>::new());
    }
}

#[cfg(test)]
mod hf_agreement {
    use super::*;
    use tokenizers::{OffsetReferential, OffsetType, PreTokenizedString, PreTokenizer};

    /// The class table agrees with Oniguruma (the engine of Hugging Face's GPT-2 regex) on
    /// every Unicode scalar value.
    #[test]
    fn classes_match_oniguruma_on_every_code_point() {
        let all: String = (0..MAX_CHAR as u32).filter_map(char::from_u32).collect();
        let mut onig_class = vec![Class::Other; MAX_CHAR];
        for (pattern, class) in [(r"\p{L}+", Class::Letter), (r"\p{N}+", Class::Number), (r"\s+", Class::Space)] {
            let re = onig::Regex::new(pattern).unwrap();
            for (start, end) in re.find_iter(&all) {
                for c in all[start..end].chars() {
                    onig_class[c as usize] = class;
                }
            }
        }
        for c in all.chars() {
            assert_eq!(class_of(c as u32), onig_class[c as usize], "class of U+{:04X}", c as u32);
        }
    }

    /// Code points in contexts where their class decides the split give the same pieces as
    /// Hugging Face's ByteLevel pre-tokenizer (a sample: all of Latin-1, then every 61st).
    #[test]
    fn sampled_code_points_split_like_hf() {
        let hf = tokenizers::pre_tokenizers::byte_level::ByteLevel::new(false, false, true);
        let sample: Vec<char> =
            (0..MAX_CHAR as u32).filter(|&c| c < 0x100 || c % 61 == 0).filter_map(char::from_u32).collect();
        let mut text = String::new();
        for &c in &sample {
            text.extend([c, 'a', c, '1', c, ' ', c, '!', c, '\n', ' ', c, ' ', '\'', c, 's', c]);
        }
        let mut ours = Vec::new();
        let base = text.as_ptr() as usize;
        split_gpt2(&text, |p| ours.push((p.as_ptr() as usize - base, p.as_ptr() as usize - base + p.len())));
        let mut pre = PreTokenizedString::from(text.as_str());
        hf.pre_tokenize(&mut pre).unwrap();
        let theirs: Vec<(usize, usize)> = pre
            .get_splits(OffsetReferential::Original, OffsetType::Byte)
            .into_iter()
            .map(|(_, offsets, _)| offsets)
            .collect();
        if ours != theirs {
            let i = ours.iter().zip(&theirs).position(|(a, b)| a != b).unwrap_or(0);
            panic!("split differs near {:?}: ours {:?}, HF {:?}", &text[ours[i].0..ours[i].1], ours[i], theirs[i]);
        }
    }
}
