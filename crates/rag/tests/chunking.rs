//! Passage boundaries, sizes, overlap and line ranges.

use ferrolm_rag::{split_passages, ChunkOptions, Span, TextKind};

fn texts<'a>(text: &'a str, spans: &[Span]) -> Vec<&'a str> {
    spans.iter().map(|s| &text[s.start..s.end]).collect()
}

/// Every passage within size, every non-blank line of the text inside some passage, and each
/// passage's line range equal to the lines its bytes cover.
fn check_invariants(text: &str, spans: &[Span], opts: &ChunkOptions) {
    for s in spans {
        let t = &text[s.start..s.end];
        assert!(t.chars().count() <= opts.passage_chars, "passage of {} chars > {}", t.chars().count(), opts.passage_chars);
        assert_eq!(t, t.trim(), "passages are trimmed");
        let first_line = text[..s.start].matches('\n').count() as u32 + 1;
        let last_line = first_line + t.matches('\n').count() as u32;
        assert_eq!((s.line_start, s.line_end), (first_line, last_line), "line range of {t:?}");
    }
    for (i, c) in text.char_indices() {
        if !c.is_whitespace() {
            assert!(spans.iter().any(|s| s.start <= i && i < s.end), "byte {i} ({c:?}) in no passage");
        }
    }
    for w in spans.windows(2) {
        assert!(w[0].start < w[1].start, "passages in text order");
    }
}

#[test]
fn paragraphs_are_packed_whole_until_the_passage_is_full() {
    let p1 = "First paragraph talks about Normans.\nIt has two lines.";
    let p2 = "Second paragraph is about Rollo.";
    let p3 = "Third paragraph mentions Normandy and the Franks in some detail here.";
    let text = format!("{p1}\n\n{p2}\n\n{p3}\n");
    let opts = ChunkOptions { passage_chars: 100, overlap: 0 };
    let spans = split_passages(&text, TextKind::Prose, &opts);
    check_invariants(&text, &spans, &opts);
    // p1 + p2 fit in 100 characters; p3 would not, so it starts the next passage whole.
    assert_eq!(texts(&text, &spans), [format!("{p1}\n\n{p2}").as_str(), p3]);
    assert_eq!((spans[0].line_start, spans[0].line_end), (1, 4));
    assert_eq!((spans[1].line_start, spans[1].line_end), (6, 6));
    // A cut between paragraphs carries no overlap: the next paragraph starts clean (p2 would
    // fit as overlap beside p3 in 110 characters).
    let with_overlap = ChunkOptions { passage_chars: 110, overlap: 40 };
    assert_eq!(split_passages(&text, TextKind::Prose, &with_overlap), spans);
}

#[test]
fn markdown_headings_start_passages_and_keep_their_first_paragraph() {
    let text = "# Title\n\nIntro text.\n\n## Install\n\nRun cargo.\n\n```sh\n# not a heading\n\ncargo build\n```\n\n## Usage\n\nCall it.\n";
    let opts = ChunkOptions { passage_chars: 200, overlap: 20 };
    let spans = split_passages(text, TextKind::Prose, &opts);
    check_invariants(text, &spans, &opts);
    // Everything would fit in one passage; the headings cut it into sections anyway, and the
    // `#` line inside the code fence is not a heading.
    assert_eq!(
        texts(text, &spans),
        [
            "# Title\n\nIntro text.",
            "## Install\n\nRun cargo.\n\n```sh\n# not a heading\n\ncargo build\n```",
            "## Usage\n\nCall it."
        ]
    );
    assert_eq!((spans[2].line_start, spans[2].line_end), (15, 17));
}

#[test]
fn rust_items_take_their_doc_comments_and_attributes() {
    let text = "use std::io;\n\n/// Adds.\n#[inline]\npub fn add(a: u8) -> u8 {\n    a\n}\n/// A point.\n#[derive(Debug)]\nstruct P {\n    x: f32,\n}\nimpl P {\n    fn norm(&self) -> f32 {\n        self.x.abs()\n    }\n}\n";
    // Small passages: each item is its own block and two never fit together.
    let opts = ChunkOptions { passage_chars: 60, overlap: 0 };
    let spans = split_passages(text, TextKind::Rust, &opts);
    check_invariants(text, &spans, &opts);
    let t = texts(text, &spans);
    assert_eq!(t[0], "use std::io;");
    assert_eq!(t[1], "/// Adds.\n#[inline]\npub fn add(a: u8) -> u8 {\n    a\n}");
    assert_eq!(t[2], "/// A point.\n#[derive(Debug)]\nstruct P {\n    x: f32,\n}");
    // `impl P {` alone is a block; its method (indented 4) is another item boundary.
    assert_eq!(t[3], "impl P {");
    assert!(t[4].starts_with("    fn norm(&self)") || t[4].starts_with("fn norm(&self)"), "{:?}", t[4]);
    assert_eq!(spans[1].line_start, 3);
    assert_eq!(spans[1].line_end, 7);
}

#[test]
fn long_paragraphs_are_cut_at_sentences_with_overlap() {
    // One line of 12 sentences of 40 characters: SQuAD contexts are single lines like this.
    let sentences: Vec<String> = (0..12).map(|i| format!("Sentence number {i:02} says something nice. ")).collect();
    let text = sentences.concat();
    let text = text.trim_end();
    assert!(sentences.iter().all(|s| s.len() == 40));
    let opts = ChunkOptions { passage_chars: 130, overlap: 45 };
    let spans = split_passages(text, TextKind::Prose, &opts);
    check_invariants(text, &spans, &opts);
    assert!(spans.len() >= 4, "{} passages", spans.len());
    for s in &spans {
        let t = &text[s.start..s.end];
        assert!(t.starts_with("Sentence number"), "cut inside a sentence: {t:?}");
        assert!(t.ends_with("nice."), "cut inside a sentence: {t:?}");
        assert_eq!((s.line_start, s.line_end), (1, 1));
    }
    // Each passage after the first repeats the last sentence of the one before (40 <= 45).
    for w in spans.windows(2) {
        let prev = &text[w[0].start..w[0].end];
        let next = &text[w[1].start..w[1].end];
        let last_sentence = &prev[prev.rfind("Sentence").unwrap()..];
        assert!(next.starts_with(last_sentence), "{next:?} does not start with {last_sentence:?}");
    }
    // With no overlap, passages tile the text without repeating.
    let no = ChunkOptions { passage_chars: 130, overlap: 0 };
    let spans = split_passages(text, TextKind::Prose, &no);
    check_invariants(text, &spans, &no);
    for w in spans.windows(2) {
        assert!(w[0].end <= w[1].start);
    }
}

#[test]
fn a_word_longer_than_a_passage_is_cut_on_character_boundaries() {
    let text = "é".repeat(50) + " tail";
    let opts = ChunkOptions { passage_chars: 20, overlap: 0 };
    let spans = split_passages(&text, TextKind::Prose, &opts);
    check_invariants(&text, &spans, &opts);
    assert_eq!(texts(&text, &spans)[0], "é".repeat(20));
}

#[test]
fn blank_text_makes_no_passage_and_bad_sizes_are_refused() {
    let opts = ChunkOptions::default();
    assert!(split_passages("  \n\n \t\n", TextKind::Prose, &opts).is_empty());
    assert!(split_passages("", TextKind::Code, &opts).is_empty());
    assert!(ChunkOptions { passage_chars: 100, overlap: 60 }.validate().is_err());
    assert!(ChunkOptions { passage_chars: 10, overlap: 0 }.validate().is_err());
    assert!(ChunkOptions::default().validate().is_ok());
}

#[test]
fn code_blocks_split_at_blank_lines_before_unindented_lines() {
    let text = "def a():\n    x = 1\n\n    return x\n\ndef b():\n    pass\n";
    let opts = ChunkOptions { passage_chars: 40, overlap: 0 };
    let spans = split_passages(text, TextKind::Code, &opts);
    check_invariants(text, &spans, &opts);
    // The blank line inside a() is followed by an indented line: no boundary there.
    assert_eq!(texts(text, &spans), ["def a():\n    x = 1\n\n    return x", "def b():\n    pass"]);
}
