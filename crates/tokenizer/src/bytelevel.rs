//! GPT-2's byte ↔ printable-character map, which byte-level BPE vocabularies are written
//! in: every byte becomes one visible Unicode character, so a token's string in
//! `tokenizer.json` has exactly one character per byte it stands for.

use std::sync::OnceLock;

/// byte → char, the GPT-2 table: printable Latin-1 bytes map to themselves, the others
/// to code points from 256 upward in byte order.
pub fn byte_to_char() -> &'static [char; 256] {
    static T: OnceLock<[char; 256]> = OnceLock::new();
    T.get_or_init(|| {
        let mut t = ['\0'; 256];
        let mut n = 0u32;
        for b in 0..=255u32 {
            let printable = (33..=126).contains(&b) || (161..=172).contains(&b) || (174..=255).contains(&b);
            t[b as usize] = if printable {
                char::from_u32(b).unwrap()
            } else {
                n += 1;
                char::from_u32(255 + n).unwrap()
            };
        }
        t
    })
}

/// char → byte, the inverse table.
pub fn char_to_byte(c: char) -> Option<u8> {
    static T: OnceLock<std::collections::HashMap<char, u8>> = OnceLock::new();
    T.get_or_init(|| byte_to_char().iter().enumerate().map(|(b, &c)| (c, b as u8)).collect()).get(&c).copied()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_is_a_bijection() {
        let t = byte_to_char();
        let set: std::collections::HashSet<char> = t.iter().copied().collect();
        assert_eq!(set.len(), 256);
        for b in 0..=255u8 {
            assert_eq!(char_to_byte(t[b as usize]), Some(b));
        }
        assert_eq!(t[b' ' as usize], 'Ġ');
        assert_eq!(t[b'\n' as usize], 'Ċ');
        assert_eq!(t[b'a' as usize], 'a');
    }
}
