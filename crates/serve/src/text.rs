//! Turning generated token ids into text as it streams: bytes of a character split across
//! tokens wait for the rest of it, and text that may be the start of a stop string waits
//! until it is clear it is not (OpenAI's contract: a stop string never appears in the
//! output, not even in part of a streamed chunk).

/// The text state of one generated sequence.
#[derive(Debug, Default, Clone)]
pub struct TextState {
    bytes: Vec<u8>,
    /// Length of the text already handed out (bytes of `text()`'s valid prefix).
    sent: usize,
    stops: Vec<String>,
    /// Set when a stop string was found: the text ends where it began.
    stopped_at: Option<usize>,
    /// Leading spaces still to drop (see [`TextState::strip_leading_spaces`]); 0 once any
    /// other byte has come.
    strip: usize,
}

impl TextState {
    pub fn new(stops: Vec<String>) -> Self {
        Self { stops: stops.into_iter().filter(|s| !s.is_empty()).collect(), ..Default::default() }
    }

    /// Drop up to `n` spaces from the start of the text: a SentencePiece model's answer
    /// starts with the `▁` of its first word, which `Tokenizer::decode` of the answer (and
    /// transformers') strips.
    pub fn strip_leading_spaces(mut self, n: usize) -> Self {
        self.strip = n;
        self
    }

    /// The decoded text so far, up to the last complete character (an invalid byte
    /// sequence that can never complete becomes U+FFFD, as `Tokenizer::decode` does).
    fn complete_text(&self) -> String {
        let cut = incomplete_tail(&self.bytes);
        String::from_utf8_lossy(&self.bytes[..self.bytes.len() - cut]).into_owned()
    }

    /// Add the bytes of one token. Returns true when a stop string now appears (the text
    /// is cut before it and nothing more may be added).
    pub fn push(&mut self, token_bytes: &[u8]) -> bool {
        if self.stopped_at.is_some() {
            return true;
        }
        self.bytes.extend_from_slice(token_bytes);
        while self.strip > 0 && !self.bytes.is_empty() {
            if self.bytes[0] != b' ' {
                self.strip = 0;
                break;
            }
            self.bytes.remove(0);
            self.strip -= 1;
        }
        if self.stops.is_empty() {
            return false;
        }
        let text = self.complete_text();
        // Only text near the end can hold a new match: search from before the part
        // already sent by the longest stop string.
        let longest = self.stops.iter().map(|s| s.len()).max().unwrap_or(0);
        let mut from = self.sent.saturating_sub(longest);
        while !text.is_char_boundary(from) {
            from -= 1;
        }
        let found = self.stops.iter().filter_map(|s| text[from..].find(s.as_str()).map(|i| i + from)).min();
        if let Some(at) = found {
            self.stopped_at = Some(at);
            return true;
        }
        false
    }

    /// Text that is now safe to hand out: complete characters, and not a possible start
    /// of a stop string. `finished`: nothing more will come, so everything up to a stop
    /// string goes out.
    pub fn take_ready(&mut self, finished: bool) -> String {
        let mut text = if finished && self.stopped_at.is_none() {
            String::from_utf8_lossy(&self.bytes).into_owned()
        } else {
            self.complete_text()
        };
        if let Some(at) = self.stopped_at {
            text.truncate(at);
        } else if !finished {
            let hold = self.stops.iter().map(|s| partial_suffix(&text, s)).max().unwrap_or(0);
            text.truncate(text.len() - hold);
        }
        if text.len() <= self.sent {
            return String::new();
        }
        let out = text[self.sent..].to_string();
        self.sent = text.len();
        out
    }
}

/// Bytes at the end of `b` that start a UTF-8 character not yet complete.
fn incomplete_tail(b: &[u8]) -> usize {
    for back in 1..=3.min(b.len()) {
        let c = b[b.len() - back];
        if c & 0xC0 == 0x80 {
            continue; // a continuation byte: look further back for the lead byte
        }
        let need = if c >= 0xF0 { 4 } else if c >= 0xE0 { 3 } else if c >= 0xC0 { 2 } else { 1 };
        return if need > back { back } else { 0 };
    }
    0
}

/// Length of the longest proper prefix of `stop` that `text` ends with (at a character
/// boundary of `text`).
fn partial_suffix(text: &str, stop: &str) -> usize {
    let max = stop.len().saturating_sub(1).min(text.len());
    (1..=max).rev().find(|&k| text.is_char_boundary(text.len() - k) && stop.is_char_boundary(k) && text.ends_with(&stop[..k])).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(pieces: &[&[u8]], stops: &[&str]) -> (Vec<String>, bool) {
        let mut t = TextState::new(stops.iter().map(|s| s.to_string()).collect());
        let mut out = vec![];
        let mut stopped = false;
        for p in pieces {
            stopped = t.push(p);
            out.push(t.take_ready(stopped));
            if stopped {
                break;
            }
        }
        if !stopped {
            out.push(t.take_ready(true));
        }
        (out, stopped)
    }

    #[test]
    fn an_answer_drops_the_space_before_its_first_word_only() {
        let mut t = TextState::new(vec![]).strip_leading_spaces(1);
        assert!(!t.push(b" "));
        assert_eq!(t.take_ready(false), "");
        t.push(b" Hello");
        t.push(b" world");
        assert_eq!(t.take_ready(true), " Hello world");
        let mut t = TextState::new(vec![]).strip_leading_spaces(1);
        t.push(b"Hi");
        t.push(b" there");
        assert_eq!(t.take_ready(true), "Hi there");
    }

    #[test]
    fn split_characters_wait_for_their_last_byte() {
        let e = "é".as_bytes();
        let (out, _) = run(&[b"caf", &e[..1], &e[1..], b"!"], &[]);
        assert_eq!(out, vec!["caf", "", "é", "!", ""]);
    }

    #[test]
    fn stop_strings_are_cut_even_across_tokens() {
        let (out, stopped) = run(&[b"Hello ", b"wor", b"ld. EN", b"D and more"], &["END"]);
        assert!(stopped);
        assert_eq!(out.concat(), "Hello world. ");
        // "EN" was held back until it turned out to be the stop string
        assert_eq!(out[2], "ld. ");
        // a held-back prefix that does not complete the stop string is released
        let (out, stopped) = run(&[b"a E", b"Nx"], &["END"]);
        assert!(!stopped);
        assert_eq!(out, vec!["a ", "ENx", ""]);
        // the earliest of several stop strings wins
        let (out, _) = run(&[b"one two three"], &["three", "two"]);
        assert_eq!(out.concat(), "one ");
    }

    #[test]
    fn a_cut_character_at_the_end_becomes_a_replacement() {
        let e = "é".as_bytes();
        let (out, _) = run(&[b"x", &e[..1]], &[]);
        assert_eq!(out.concat(), "x\u{FFFD}");
    }
}
