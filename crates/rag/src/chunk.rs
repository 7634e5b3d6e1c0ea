//! Splitting a document into passages: contiguous slices of its text of at most
//! `passage_chars` characters that start at natural boundaries where they can.
//!
//! The text is first cut into *pieces* (a line, or a sentence-sized part of a line longer than
//! a passage), each marked with the boundary that precedes it: none (the middle of a block), a
//! block start (paragraph after a blank line, a Rust item with its doc comments and
//! attributes, a code fence) or a section start (a Markdown heading). Pieces are grouped into
//! blocks and blocks are packed greedily: a block that fits goes whole into the current passage;
//! one that does not starts a new passage; a block larger than a passage is cut at piece
//! boundaries. A heading always starts a new passage (a passage never runs across sections).
//! When a block is cut inside (it did not fit), the next passage starts with the last pieces
//! of the previous one that fit in `overlap` characters, so the text around the cut is seen
//! whole once; passages that end at a block or section boundary do not overlap.

use serde::{Deserialize, Serialize};

/// Passage sizes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkOptions {
    /// Largest passage, in characters (a single word longer than that is cut).
    pub passage_chars: usize,
    /// Characters of the previous passage repeated at the start of the next one when a block
    /// (paragraph, item) is cut inside for size (whole pieces only: lines or sentences).
    pub overlap: usize,
}

impl Default for ChunkOptions {
    fn default() -> Self {
        Self { passage_chars: 1000, overlap: 150 }
    }
}

impl ChunkOptions {
    pub fn validate(&self) -> Result<(), String> {
        if self.passage_chars < 20 {
            return Err(format!("passage size {} characters is too small (at least 20)", self.passage_chars));
        }
        if self.overlap >= self.passage_chars / 2 {
            return Err(format!(
                "overlap {} must be under half the passage size {} (else passages would mostly repeat)",
                self.overlap, self.passage_chars
            ));
        }
        Ok(())
    }
}

/// How boundaries are found in a document's text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TextKind {
    /// Paragraphs (blank lines), Markdown headings (sections) and code fences.
    Prose,
    /// Rust: top-level and `impl`-level items (`fn`, `impl`, `struct`, ...), with the doc
    /// comments and attributes above them, and blank lines before unindented lines.
    Rust,
    /// Other code: blank lines before unindented lines.
    Code,
}

/// One passage: bytes `start..end` of the document's text, lines `line_start..=line_end` (1-based).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Span {
    pub start: usize,
    pub end: usize,
    pub line_start: u32,
    pub line_end: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Boundary {
    None,
    Block,
    Section,
}

#[derive(Debug, Clone)]
struct Piece {
    start: usize,
    end: usize,
    chars: usize,
    line: u32,
    boundary: Boundary,
    /// Whitespace only (a blank line).
    blank: bool,
}

/// Split `text` into passages. Whitespace-only stretches produce no passage; every other
/// character of `text` lies in at least one passage.
pub fn split_passages(text: &str, kind: TextKind, opts: &ChunkOptions) -> Vec<Span> {
    let pieces = pieces(text, kind, opts.passage_chars);
    // Blocks: runs of pieces starting at a boundary.
    let mut blocks: Vec<&[Piece]> = Vec::new();
    let mut from = 0;
    for i in 1..=pieces.len() {
        if i == pieces.len() || pieces[i].boundary != Boundary::None {
            if from < i {
                blocks.push(&pieces[from..i]);
            }
            from = i;
        }
    }
    let mut out = Vec::new();
    let mut cur: Vec<Piece> = Vec::new();
    let mut cur_chars = 0usize;
    // Whether `cur` holds more than the overlap carried from the previous passage.
    let mut cur_new = false;
    // Whether `cur` is only a heading: the section's first block then goes with it even cut.
    let mut cur_heading = false;
    let flush = |cur: &mut Vec<Piece>, cur_chars: &mut usize, cur_new: &mut bool, out: &mut Vec<Span>, carry: bool| {
        if *cur_new {
            if let Some(span) = span_of(text, cur) {
                out.push(span);
            }
        }
        let kept = if carry { overlap_tail(cur, opts.overlap) } else { Vec::new() };
        *cur_chars = kept.iter().map(|p| p.chars).sum();
        *cur = kept;
        *cur_new = false;
    };
    for block in blocks {
        let block_chars: usize = block.iter().map(|p| p.chars).sum();
        let section = block[0].boundary == Boundary::Section;
        if section && cur_new {
            flush(&mut cur, &mut cur_chars, &mut cur_new, &mut out, false);
        } else if section {
            cur.clear();
            cur_chars = 0;
        }
        let heading_only = section && block.iter().filter(|p| !p.blank).count() == 1;
        if cur_chars + block_chars <= opts.passage_chars {
            cur.extend(block.iter().cloned());
            cur_chars += block_chars;
            cur_new = true;
            cur_heading = heading_only;
            continue;
        }
        if cur_new && !cur_heading {
            // The passage ends at a block boundary: the next starts clean, without overlap
            // (repeating the end of the previous paragraph or function adds only noise).
            flush(&mut cur, &mut cur_chars, &mut cur_new, &mut out, false);
        }
        // The block does not fit beside the carried overlap: cut it piece by piece.
        for p in block {
            if cur_chars + p.chars > opts.passage_chars && cur_new {
                flush(&mut cur, &mut cur_chars, &mut cur_new, &mut out, true);
            }
            while cur_chars + p.chars > opts.passage_chars && !cur.is_empty() {
                // Overlap too long to go with this piece: drop its oldest part.
                cur_chars -= cur.remove(0).chars;
            }
            cur.push(p.clone());
            cur_chars += p.chars;
            cur_new = true;
        }
        cur_heading = false;
    }
    if cur_new {
        if let Some(span) = span_of(text, &cur) {
            out.push(span);
        }
    }
    out
}

/// The last pieces of a passage whose characters add up to at most `overlap`.
fn overlap_tail(cur: &[Piece], overlap: usize) -> Vec<Piece> {
    let mut total = 0;
    let mut first = cur.len();
    while first > 0 && total + cur[first - 1].chars <= overlap {
        total += cur[first - 1].chars;
        first -= 1;
    }
    // Starting an overlap with bare whitespace only adds noise.
    while first < cur.len() && text_is_blank(&cur[first]) {
        first += 1;
    }
    cur[first..].to_vec()
}

fn text_is_blank(p: &Piece) -> bool {
    p.blank
}

/// The span covering `pieces` with leading/trailing whitespace trimmed; None when blank.
fn span_of(text: &str, pieces: &[Piece]) -> Option<Span> {
    let first = pieces.first()?;
    let last = pieces.last()?;
    let raw = &text[first.start..last.end];
    let lead = raw.len() - raw.trim_start().len();
    let trimmed = raw.trim();
    if trimmed.is_empty() {
        return None;
    }
    let start = first.start + lead;
    let end = start + trimmed.len();
    let line_start = first.line + text[first.start..start].matches('\n').count() as u32;
    let line_end = line_start + text[start..end].matches('\n').count() as u32;
    Some(Span { start, end, line_start, line_end })
}

/// Cut `text` into lines (each keeping its `\n`), lines longer than `max_chars` into parts, and
/// mark the boundary before each piece.
fn pieces(text: &str, kind: TextKind, max_chars: usize) -> Vec<Piece> {
    let lines: Vec<(usize, &str)> = {
        let mut v = Vec::new();
        let mut at = 0;
        for l in text.split_inclusive('\n') {
            v.push((at, l));
            at += l.len();
        }
        v
    };
    let marks = boundaries(&lines, kind);
    let mut out = Vec::with_capacity(lines.len());
    for (i, &(at, line)) in lines.iter().enumerate() {
        let line_no = i as u32 + 1;
        let blank = line.trim().is_empty();
        let n = line.chars().count();
        if n <= max_chars {
            out.push(Piece { start: at, end: at + line.len(), chars: n, line: line_no, boundary: marks[i], blank });
            continue;
        }
        let mut first = true;
        for (s, e) in cut_long(line, max_chars) {
            let chars = line[s..e].chars().count();
            let boundary = if first { marks[i] } else { Boundary::None };
            first = false;
            out.push(Piece { start: at + s, end: at + e, chars, line: line_no, boundary, blank: false });
        }
    }
    out
}

/// Byte ranges of `line` cut into sentences (after ". ", "? ", "! "), and a sentence longer
/// than `max_chars` characters cut after its last space within the limit, else at a
/// character boundary. Sentences are the unit of packing and of overlap in long paragraphs.
fn cut_long(line: &str, max_chars: usize) -> Vec<(usize, usize)> {
    let mut sentences = Vec::new();
    let bytes = line.as_bytes();
    let mut start = 0;
    for i in 1..bytes.len() {
        if bytes[i] == b' ' && matches!(bytes[i - 1], b'.' | b'?' | b'!') {
            sentences.push((start, i + 1));
            start = i + 1;
        }
    }
    if start < line.len() {
        sentences.push((start, line.len()));
    }
    let mut out = Vec::new();
    for (mut s, e) in sentences {
        while s < e {
            let rest = &line[s..e];
            let limit = rest.char_indices().nth(max_chars).map_or(rest.len(), |(b, _)| b);
            if limit == rest.len() {
                out.push((s, e));
                break;
            }
            let cut = rest[..limit].rfind(' ').filter(|&b| b > 0).map_or(limit, |b| b + 1);
            out.push((s, s + cut));
            s += cut;
        }
    }
    out
}

fn boundaries(lines: &[(usize, &str)], kind: TextKind) -> Vec<Boundary> {
    let mut marks = vec![Boundary::None; lines.len()];
    if lines.is_empty() {
        return marks;
    }
    match kind {
        TextKind::Prose => {
            let mut in_fence = false;
            let mut after_blank = true;
            for (i, (_, l)) in lines.iter().enumerate() {
                let t = l.trim_end();
                let fence = t.trim_start().starts_with("```") || t.trim_start().starts_with("~~~");
                if in_fence {
                    if fence {
                        in_fence = false;
                    }
                    after_blank = false;
                    continue;
                }
                if fence {
                    in_fence = true;
                    marks[i] = Boundary::Block;
                } else if is_heading(t) {
                    marks[i] = Boundary::Section;
                } else if t.trim().is_empty() {
                    after_blank = true;
                    continue;
                } else if after_blank {
                    marks[i] = Boundary::Block;
                }
                after_blank = false;
            }
        }
        TextKind::Rust | TextKind::Code => {
            let mut after_blank = true;
            for (i, (_, l)) in lines.iter().enumerate() {
                if l.trim().is_empty() {
                    after_blank = true;
                    continue;
                }
                let unindented = !l.starts_with([' ', '\t']);
                if after_blank && unindented {
                    marks[i] = Boundary::Block;
                }
                if kind == TextKind::Rust && is_rust_item(l) {
                    // The item starts at its doc comments and attributes.
                    let mut s = i;
                    while s > 0 && is_rust_preamble(lines[s - 1].1) {
                        s -= 1;
                    }
                    marks[s] = Boundary::Block;
                    for m in &mut marks[s + 1..=i] {
                        *m = Boundary::None;
                    }
                }
                after_blank = false;
            }
        }
    }
    marks
}

/// `# Title` .. `###### Title` (Markdown ATX headings).
fn is_heading(line: &str) -> bool {
    let t = line.trim_start();
    if line.len() - t.len() > 3 {
        return false; // indented four spaces: a code block
    }
    let hashes = t.bytes().take_while(|&b| b == b'#').count();
    (1..=6).contains(&hashes) && t[hashes..].chars().next().is_none_or(|c| c == ' ' || c == '\t')
}

/// A Rust item at the top level or one level in (methods of an `impl`, items of a `mod`).
fn is_rust_item(line: &str) -> bool {
    let indent = line.len() - line.trim_start_matches([' ', '\t']).len();
    if indent > 4 {
        return false;
    }
    let mut t = line.trim_start();
    if let Some(r) = t.strip_prefix("pub") {
        t = r.trim_start();
        if t.starts_with('(') {
            match t.find(')') {
                Some(p) => t = t[p + 1..].trim_start(),
                None => return false,
            }
        }
    }
    for q in ["default ", "async ", "const ", "unsafe ", "extern \"C\" ", "extern "] {
        if let Some(r) = t.strip_prefix(q) {
            // `const NAME` is itself an item; `const fn` is a qualifier.
            if q == "const " && !r.starts_with("fn ") && !r.starts_with("unsafe ") {
                return true;
            }
            t = r.trim_start();
        }
    }
    ["fn ", "impl", "struct ", "enum ", "trait ", "mod ", "type ", "static ", "union ", "macro_rules!"]
        .iter()
        .any(|k| t.starts_with(k) && (k != &"impl" || t[4..].starts_with([' ', '<'])))
}

fn is_rust_preamble(line: &str) -> bool {
    let t = line.trim_start();
    t.starts_with("///") || t.starts_with("#[") || t.starts_with("//!") || t.starts_with("/**")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heading_detection() {
        assert!(is_heading("# Title"));
        assert!(is_heading("### Usage"));
        assert!(is_heading("#"));
        assert!(!is_heading("#[derive(Debug)]"));
        assert!(!is_heading("####### seven"));
        assert!(!is_heading("    # indented code"));
    }

    #[test]
    fn rust_item_detection() {
        assert!(is_rust_item("fn main() {"));
        assert!(is_rust_item("pub(crate) async fn go() {"));
        assert!(is_rust_item("    pub fn method(&self) {"));
        assert!(is_rust_item("impl<T> Foo for T {"));
        assert!(is_rust_item("pub const fn f() {}"));
        assert!(is_rust_item("const N: usize = 3;"));
        assert!(!is_rust_item("        let fnord = 1;"));
        assert!(!is_rust_item("implement();"));
        assert!(!is_rust_item("        fn nested() {}"));
    }
}
