//! The GPT-2 byte-to-character map used by byte-level BPE.
//!
//! Byte-level BPE works on bytes, but tokenizer.json stores tokens as strings, so each byte is
//! represented by one printable character: bytes that are printable Latin-1 (`!`..`~`,
//! `¡`..`¬`, `®`..`ÿ`) map to themselves, the other 68 bytes map to U+0100.. in byte order.
//! This is the table GPT-2, tiktoken and Hugging Face all use, so vocabularies are portable.

use std::sync::LazyLock;

/// `BYTE_TO_CHAR[b]` is the character that stands for byte `b` in vocabulary strings.
pub static BYTE_TO_CHAR: LazyLock<[char; 256]> = LazyLock::new(|| {
    let printable = |b: u8| matches!(b, b'!'..=b'~' | 0xA1..=0xAC | 0xAE..=0xFF);
    let mut table = ['\0'; 256];
    let mut next_free = 256u32;
    for b in 0..=255u8 {
        table[b as usize] = if printable(b) {
            char::from(b)
        } else {
            let c = char::from_u32(next_free).expect("U+0100..U+0143 are valid chars");
            next_free += 1;
            c
        };
    }
    table
});

/// Inverse of [`BYTE_TO_CHAR`]: the byte a vocabulary character stands for, if any.
pub fn char_to_byte(c: char) -> Option<u8> {
    let cp = c as u32;
    if cp < 256 {
        let b = cp as u8;
        // Printable bytes stand for themselves; the others are remapped, so their own code
        // point is not in the alphabet.
        (BYTE_TO_CHAR[b as usize] == c).then_some(b)
    } else if cp < 256 + 68 {
        BYTE_TO_CHAR.iter().position(|&x| x == c).map(|b| b as u8)
    } else {
        None
    }
}

/// Raw bytes of a byte-level vocabulary string, or None if it contains a character outside the
/// 256-character alphabet (then it is not a byte-level token).
pub fn token_to_bytes(token: &str) -> Option<Vec<u8>> {
    token.chars().map(char_to_byte).collect()
}

/// The vocabulary string for raw bytes.
pub fn bytes_to_token(bytes: &[u8]) -> String {
    bytes.iter().map(|&b| BYTE_TO_CHAR[b as usize]).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_is_a_bijection_onto_256_chars() {
        let mut seen = std::collections::HashSet::new();
        for b in 0..=255u8 {
            let c = BYTE_TO_CHAR[b as usize];
            assert!(seen.insert(c));
            assert_eq!(char_to_byte(c), Some(b));
        }
        assert_eq!(BYTE_TO_CHAR[b' ' as usize], 'Ġ');
        assert_eq!(BYTE_TO_CHAR[b'\n' as usize], 'Ċ');
        assert_eq!(BYTE_TO_CHAR[b'a' as usize], 'a');
        assert_eq!(char_to_byte('\u{7f}'), None);
        assert_eq!(token_to_bytes("Ġthe"), Some(b" the".to_vec()));
    }
}
