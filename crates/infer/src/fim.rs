//! Code completion at a cursor, as an editor asks for it: the code before and after the
//! cursor become a fill-in-the-middle prompt (Bavarian et al. 2022), the model generates
//! the middle, and editor stop rules decide where the completion ends.
//!
//! Prompt layouts, matching how `train.fim_rate` trains (`ferrolm_train::fim`):
//!
//! - PSM: `<PRE> prefix <SUF> suffix <MID>` → middle
//! - SPM: `<PRE> <SUF> suffix <MID> prefix` → middle (the prefix continues directly)
//! - left to right: `prefix` → continuation (for a model trained without FIM).
//!
//! The model's context bounds the prompt: the end of the prefix and the start of the suffix
//! are kept (two thirds of the room to the prefix), and generation never runs past the
//! context, so the FIM sentinels are never dropped from the window.
//!
//! Stop rules ([`EditorStops`]), checked on the decoded text after every token:
//!
//! - end of text (`<EOT>`, which ends the middle of a FIM example; a FIM sentinel counts
//!   too) and `max_tokens`;
//! - **end of line** ([`Scope::Line`]): the completion ends at the end of its first
//!   non-blank line, unless brackets opened in it are still open (a call or a literal that
//!   spans lines), then at the end of the line that balances them;
//! - **end of block** ([`Scope::Block`]): at a blank line or at a line indented less than the
//!   cursor's line, once brackets are balanced;
//! - **balanced brackets**: a closing bracket that closes something opened before the
//!   cursor (the enclosing block or call) ends the completion before it; brackets inside
//!   string literals and comments do not count;
//! - **never repeat the suffix**: the completion stops where it starts writing the rest of
//!   the cursor's line or the suffix's next line, and a tail that is the start of the
//!   suffix is removed;
//! - blank lines before anything is written end the completion, and whitespace alone is
//!   returned as no completion.

use std::time::Instant;

use anyhow::{bail, Result};
use ferrolm_model::AnyModel;
use ferrolm_tokenizer::{special, Tokenizer};
use serde::{Deserialize, Serialize};

use crate::generate::{generate_any, GenerateConfig};
use crate::sampling::SamplingConfig;

/// How the prompt is laid out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PromptLayout {
    Psm,
    Spm,
    /// The prefix only, continued left to right (models trained without FIM).
    LeftToRight,
}

/// How much an editor wants.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Scope {
    /// The rest of the line (or the lines that balance its brackets).
    Line,
    /// The rest of the block.
    Block,
}

/// Why a completion ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StopReason {
    /// The model ended the middle (`<EOT>`).
    EndOfText,
    MaxTokens,
    /// The model's context is full.
    Context,
    EndOfLine,
    EndOfBlock,
    /// A bracket closing what was opened before the cursor.
    ClosingBracket,
    /// The completion began to repeat the code after the cursor.
    SuffixRepeat,
}

/// A completion request: the code around the cursor and the settings.
#[derive(Debug, Clone)]
pub struct CompletionRequest {
    pub prefix: String,
    pub suffix: String,
    pub layout: PromptLayout,
    pub scope: Scope,
    pub max_tokens: usize,
    pub sampling: SamplingConfig,
}

impl CompletionRequest {
    /// Greedy, one line, PSM, 64 tokens at most.
    pub fn new(prefix: impl Into<String>, suffix: impl Into<String>) -> Self {
        Self {
            prefix: prefix.into(),
            suffix: suffix.into(),
            layout: PromptLayout::Psm,
            scope: Scope::Line,
            max_tokens: 64,
            sampling: SamplingConfig { temperature: 0.0, top_k: 0, top_p: 1.0, seed: 0 },
        }
    }
}

/// What [`complete`] returns.
#[derive(Debug, Clone, Serialize)]
pub struct Completion {
    /// The text to insert at the cursor.
    pub text: String,
    pub stop: StopReason,
    /// Tokens generated (including any the stop rules cut away).
    pub tokens: usize,
    pub prompt_tokens: usize,
    /// Prompt encoding and the prompt's forward pass up to the first sampled token.
    pub time_to_first_token_ms: f64,
    pub total_ms: f64,
}

/// The FIM special ids of a tokenizer, or a clear error.
fn fim_ids(tok: &Tokenizer) -> Result<[u32; 3]> {
    let id = |s: &str| {
        tok.token_id(s).ok_or_else(|| {
            anyhow::anyhow!("the model's tokenizer has no {s} token, so it cannot fill in the middle: use the left-to-right layout")
        })
    };
    Ok([id(special::FIM_PREFIX)?, id(special::FIM_SUFFIX)?, id(special::FIM_MIDDLE)?])
}

/// The prompt ids for `layout`, fitted into `room` tokens: the end of the prefix and the
/// start of the suffix are kept, the prefix getting two thirds of the room (or what the
/// suffix leaves).
pub fn build_prompt(tok: &Tokenizer, prefix: &str, suffix: &str, layout: PromptLayout, room: usize) -> Result<Vec<u32>> {
    let p = tok.encode(prefix);
    if layout == PromptLayout::LeftToRight {
        return Ok(p[p.len().saturating_sub(room)..].to_vec());
    }
    let [pre, suf, mid] = fim_ids(tok)?;
    let s = tok.encode(suffix);
    let room = room.saturating_sub(3);
    let s_keep = s.len().min(room.saturating_sub(p.len().min(room * 2 / 3)));
    let p_keep = p.len().min(room - s_keep);
    let (p, s) = (&p[p.len() - p_keep..], &s[..s_keep]);
    Ok(match layout {
        PromptLayout::Psm => [&[pre], p, &[suf], s, &[mid]].concat(),
        PromptLayout::Spm => [&[pre, suf], s, &[mid], p].concat(),
        PromptLayout::LeftToRight => unreachable!("handled above"),
    })
}

/// Complete at the cursor between `req.prefix` and `req.suffix` with a causal model of
/// context `ctx` tokens (`ModelSpec::max_seq_len`; any family, but FIM layouts need a model
/// trained with `train.fim_rate` > 0 to be useful). The one entry point for the CLI, the
/// experiment and a server.
pub fn complete(model: &AnyModel, ctx: usize, tok: &Tokenizer, req: &CompletionRequest) -> Result<Completion> {
    let t0 = Instant::now();
    if req.max_tokens == 0 {
        bail!("max_tokens must be at least 1");
    }
    // the room the prompt may take: what the completion leaves, but at least half the context
    let room = ctx.saturating_sub(req.max_tokens).max(ctx / 2).max(1);
    let mut prompt = build_prompt(tok, &req.prefix, &req.suffix, req.layout, room)?;
    if prompt.is_empty() {
        // an empty file before the cursor, left to right: start as after a document end
        prompt.push(tok.try_eot_id().ok_or_else(|| anyhow::anyhow!("the tokenizer has no {} token", special::EOT))?);
    }
    let eot = tok.try_eot_id();
    // a FIM sentinel in the output means the model left the middle (a FIM-trained model
    // continuing left to right may start an example of its own): it ends the completion
    let sentinels: Vec<u32> = [special::FIM_PREFIX, special::FIM_SUFFIX, special::FIM_MIDDLE].iter().filter_map(|s| tok.token_id(s)).collect();
    let budget = req.max_tokens.min(ctx.saturating_sub(prompt.len()));
    if budget == 0 {
        bail!("the prompt fills the model's context of {ctx} tokens");
    }
    let cfg = GenerateConfig { max_tokens: budget, stop_tokens: eot.into_iter().collect(), sampling: req.sampling.clone() };
    let mut stops = EditorStops::new(&req.prefix, &req.suffix, req.scope);
    // the middle continues the prefix: the space before its first word stays
    let mut stream = tok.continuation_stream();
    let mut first: Option<f64> = None;
    let mut stopped: Option<StopReason> = None;
    let decoder_start = eot.unwrap_or(0);
    let out = generate_any(model, &prompt, decoder_start, &cfg, |id| {
        first.get_or_insert_with(|| t0.elapsed().as_secs_f64() * 1e3);
        if Some(id) == eot || sentinels.contains(&id) {
            stopped = Some(StopReason::EndOfText);
            return false;
        }
        if let Some(r) = stops.push(&stream.push(id)) {
            stopped = Some(r);
            return false;
        }
        true
    })?;
    let stop = match stopped {
        Some(r) => r,
        None => {
            if let Some(r) = stops.push(&stream.finish()) {
                r
            } else if budget < req.max_tokens {
                StopReason::Context
            } else {
                StopReason::MaxTokens
            }
        }
    };
    let total = t0.elapsed().as_secs_f64() * 1e3;
    Ok(Completion { text: stops.finish(), stop, tokens: out.len(), prompt_tokens: prompt.len(), time_to_first_token_ms: first.unwrap_or(total), total_ms: total })
}

/// The cursor at 1-based `line` and 1-based character `col` of `source` (`None`: the end of
/// the line), as the code before and after it.
pub fn split_at_cursor(source: &str, line: usize, col: Option<usize>) -> Result<(String, String)> {
    let lines: Vec<&str> = source.split('\n').collect();
    if line == 0 || line > lines.len() {
        bail!("line {line} is outside the file, which has {} line{}", lines.len(), if lines.len() == 1 { "" } else { "s" });
    }
    let start: usize = lines[..line - 1].iter().map(|l| l.len() + 1).sum();
    let text = lines[line - 1];
    let chars = text.chars().count();
    let col = col.unwrap_or(chars + 1);
    if col == 0 || col > chars + 1 {
        bail!("column {col} is outside line {line}, which has {chars} character{} (columns 1 to {})", if chars == 1 { "" } else { "s" }, chars + 1);
    }
    let off = start + text.char_indices().nth(col - 1).map_or(text.len(), |(i, _)| i);
    Ok((source[..off].to_string(), source[off..].to_string()))
}

/// Where a completion ends: fed the decoded text piece by piece (one token's worth at a
/// time), it says when to stop and what the completion is.
#[derive(Debug, Clone)]
pub struct EditorStops {
    scope: Scope,
    text: String,
    /// Where the completion is cut (bytes of `text`), once a rule fired.
    cut: Option<usize>,
    /// Indentation (columns) of the cursor's line.
    indent: usize,
    /// Whether the cursor's line has code before the cursor.
    line_has_code: bool,
    /// The rest of the cursor's line after the cursor, trimmed.
    rest_of_line: String,
    /// The suffix's first non-blank line after the cursor's line, trimmed.
    next_line: String,
    suffix: String,
}

impl EditorStops {
    pub fn new(prefix: &str, suffix: &str, scope: Scope) -> Self {
        let cur_line = prefix.rsplit('\n').next().unwrap_or("");
        let line_has_code = !cur_line.trim().is_empty();
        let mut lines = suffix.split('\n');
        // after code on the cursor's line, the suffix's first line is that line's rest;
        // at a line's start (or in its indentation) it is the next line
        let rest_of_line = if line_has_code { lines.next().unwrap_or("").trim().to_string() } else { String::new() };
        let next_line = lines.map(str::trim).find(|l| !l.is_empty()).unwrap_or("").to_string();
        Self {
            scope,
            text: String::new(),
            cut: None,
            indent: indent_of(cur_line),
            line_has_code,
            rest_of_line,
            next_line,
            suffix: suffix.to_string(),
        }
    }

    /// Add decoded text; `Some(reason)` once the completion is over (later pieces are ignored).
    pub fn push(&mut self, piece: &str) -> Option<StopReason> {
        if self.cut.is_some() {
            return None;
        }
        self.text.push_str(piece);
        let (cut, reason) = self.scan()?;
        self.cut = Some(cut);
        Some(reason)
    }

    /// The completion: the text up to where a rule cut it, without a tail that repeats
    /// the start of the suffix.
    pub fn finish(&self) -> String {
        let mut t = &self.text[..self.cut.unwrap_or(self.text.len())];
        if t.trim().is_empty() {
            // whitespace alone is nothing to insert
            return String::new();
        }
        // the longest tail that is the start of the suffix, if it has at least two
        // characters of code (one shared character is as likely a coincidence)
        let max = t.len().min(self.suffix.len());
        for k in (1..=max).rev() {
            if !self.suffix.is_char_boundary(k) || !t.is_char_boundary(t.len() - k) {
                continue;
            }
            let head = &self.suffix[..k];
            if t.ends_with(head) && head.chars().filter(|c| !c.is_whitespace()).count() >= 2 {
                t = &t[..t.len() - k];
                break;
            }
        }
        t.to_string()
    }

    /// The raw generated text so far.
    pub fn raw(&self) -> &str {
        &self.text
    }

    /// Every rule over the whole text (completions are short; rescanning keeps the rules
    /// independent of where token boundaries fall).
    fn scan(&self) -> Option<(usize, StopReason)> {
        let t = &self.text;
        let mut lex = Lexer::default();
        let mut depth: i64 = 0;
        let mut line_start = 0usize;
        let mut line_depth = 0i64;
        let mut content_lines = 0usize;
        let mut first_line = true;
        let mut chars = t.char_indices().peekable();
        while let Some((i, c)) = chars.next() {
            let next = chars.peek().map(|&(_, n)| n);
            match lex.step(c, next) {
                Some('(' | '[' | '{') => depth += 1,
                Some(')' | ']' | '}') => {
                    depth -= 1;
                    if depth < 0 {
                        // closes what was open before the cursor: end before it (and before
                        // the indentation of its line, if it starts the line)
                        let line = &t[line_start..i];
                        let cut = if line.trim().is_empty() && line_start > 0 { line_start - 1 } else { i };
                        return Some((trim_cut(t, cut), StopReason::ClosingBracket));
                    }
                }
                _ => {}
            }
            // the cursor line's rest: stop where the completion writes it
            if first_line && self.line_has_code && !self.rest_of_line.is_empty() && t[line_start..i + c.len_utf8()].ends_with(&self.rest_of_line) {
                let at = i + c.len_utf8() - self.rest_of_line.len();
                if !t[line_start..at].trim().is_empty() {
                    return Some((at, StopReason::SuffixRepeat));
                }
            }
            if c == '\n' {
                let line = &t[line_start..i];
                let has_code = !line.trim().is_empty();
                // a finished line at bracket depth 0 that is the suffix's next line
                if has_code && line_depth == 0 && !self.next_line.is_empty() && line.trim() == self.next_line && !(first_line && self.line_has_code) {
                    return Some((trim_cut(t, line_start.saturating_sub(1)), StopReason::SuffixRepeat));
                }
                if has_code {
                    content_lines += 1;
                } else if !first_line && content_lines == 0 {
                    // a second line end with nothing written: the model proposes blank
                    // lines, which an editor does not want inserted
                    let reason = if self.scope == Scope::Line { StopReason::EndOfLine } else { StopReason::EndOfBlock };
                    return Some((0, reason));
                }
                match self.scope {
                    // (a completion that starts with a line end after a complete line goes on
                    // to the next line: content_lines is still 0)
                    Scope::Line if content_lines > 0 && depth == 0 && !lex.in_block_comment() => {
                        return Some((i, StopReason::EndOfLine));
                    }
                    Scope::Block if !has_code && content_lines > 0 && depth == 0 && !first_line => {
                        return Some((trim_cut(t, line_start.saturating_sub(1)), StopReason::EndOfBlock));
                    }
                    _ => {}
                }
                first_line = false;
                line_start = i + 1;
                line_depth = depth;
                continue;
            }
            // a new line indented less than the cursor's: the block ended
            if self.scope == Scope::Block && !first_line && depth <= 0 && !c.is_whitespace() && i == first_non_ws(t, line_start) {
                let ind = indent_of(&t[line_start..]);
                if ind < self.indent && content_lines > 0 {
                    return Some((trim_cut(t, line_start.saturating_sub(1)), StopReason::EndOfBlock));
                }
            }
        }
        None
    }
}

/// Where a cut lands: never after trailing spaces of the kept part.
fn trim_cut(t: &str, cut: usize) -> usize {
    t[..cut].trim_end_matches([' ', '\t']).len()
}

fn first_non_ws(t: &str, from: usize) -> usize {
    t[from..].char_indices().find(|(_, c)| *c != ' ' && *c != '\t').map_or(t.len(), |(i, _)| from + i)
}

/// Columns of leading whitespace (a tab counts 4).
fn indent_of(line: &str) -> usize {
    line.chars().take_while(|c| *c == ' ' || *c == '\t').map(|c| if c == '\t' { 4 } else { 1 }).sum()
}

/// Just enough of a lexer for brackets: string and char literals and comments hide them
/// (Rust's and the C family's syntax; a quote that starts a lifetime is not a literal).
#[derive(Debug, Default, Clone, Copy)]
struct Lexer {
    state: LexState,
    escape: bool,
    /// Characters left inside a char literal (`'x'` → 1 after the quote).
    char_left: u8,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum LexState {
    #[default]
    Code,
    Str,
    Char,
    LineComment,
    BlockComment,
    /// The second character of a comment opener or closer is being consumed.
    Skip(&'static str),
}

impl Lexer {
    fn in_block_comment(&self) -> bool {
        self.state == LexState::BlockComment
    }

    /// Feed one character (and a look at the next); returns it if it is code.
    fn step(&mut self, c: char, next: Option<char>) -> Option<char> {
        match self.state {
            LexState::Skip(after) => {
                self.state = if after == "block" { LexState::BlockComment } else { LexState::Code };
                None
            }
            LexState::Code => match (c, next) {
                ('/', Some('/')) => {
                    self.state = LexState::LineComment;
                    None
                }
                ('/', Some('*')) => {
                    self.state = LexState::Skip("block");
                    None
                }
                ('"', _) => {
                    self.state = LexState::Str;
                    self.escape = false;
                    None
                }
                ('\'', Some(n)) => {
                    // 'x' or '\n' is a char literal; 'a (a lifetime) is not
                    if n == '\\' {
                        self.state = LexState::Char;
                        self.char_left = 3;
                    } else {
                        // decided on the character after next: treat as a literal of one
                        // character; a lifetime's name then ends it harmlessly at a non-quote
                        self.state = LexState::Char;
                        self.char_left = 1;
                    }
                    None
                }
                _ => Some(c),
            },
            LexState::Str => {
                if self.escape {
                    self.escape = false;
                } else if c == '\\' {
                    self.escape = true;
                } else if c == '"' {
                    self.state = LexState::Code;
                }
                None
            }
            LexState::Char => {
                if self.char_left == 0 {
                    // the closing quote, or a lifetime went on: either way back to code
                    self.state = LexState::Code;
                    return if c == '\'' { None } else { self.step(c, next) };
                }
                self.char_left -= 1;
                if c == '\\' {
                    self.char_left = 1;
                    return None;
                }
                if self.char_left == 0 && next != Some('\'') {
                    // a lifetime (`'a`, `'static`): not a literal
                    self.state = LexState::Code;
                }
                None
            }
            LexState::LineComment => {
                if c == '\n' {
                    self.state = LexState::Code;
                    return Some(c);
                }
                None
            }
            LexState::BlockComment => {
                if c == '*' && next == Some('/') {
                    self.state = LexState::Skip("code");
                }
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feed a constructed token stream; the completion and why it stopped.
    fn run(prefix: &str, suffix: &str, scope: Scope, pieces: &[&str]) -> (String, Option<StopReason>, usize) {
        let mut s = EditorStops::new(prefix, suffix, scope);
        for (n, p) in pieces.iter().enumerate() {
            if let Some(r) = s.push(p) {
                return (s.finish(), Some(r), n + 1);
            }
        }
        (s.finish(), None, pieces.len())
    }

    #[test]
    fn end_of_line_ends_a_line_completion_at_its_first_line_end() {
        let (t, r, n) = run("fn f() {\n    let x", "\n}\n", Scope::Line, &[" =", " 1", ";\n", "    let", " y"]);
        assert_eq!((t.as_str(), r, n), (" = 1;", Some(StopReason::EndOfLine), 3));
        // at the end of a complete line, the completion is the next line
        let (t, r, _) = run("fn f() {\n    let x = 1;", "\n}\n", Scope::Line, &["\n", "    let", " y = 2;", "\n", "    z"]);
        assert_eq!((t.as_str(), r), ("\n    let y = 2;", Some(StopReason::EndOfLine)));
    }

    #[test]
    fn open_brackets_carry_a_line_completion_to_the_line_that_balances_them() {
        let (t, r, _) = run("fn f() {\n    call", "\n}\n", Scope::Line, &["(a,\n", "        b,\n", "    );", "\n", "next();\n"]);
        assert_eq!((t.as_str(), r), ("(a,\n        b,\n    );", Some(StopReason::EndOfLine)));
        // brackets in strings, chars and comments do not count
        let (t, r, _) = run("    let s", "\n", Scope::Line, &[" = \"(\"", ".len() + '{'", ".len_utf8(); // (\n", "x"]);
        assert_eq!((t.as_str(), r), (" = \"(\".len() + '{'.len_utf8(); // (", Some(StopReason::EndOfLine)));
        // a lifetime is not a char literal
        let (t, r, _) = run("fn f<", "\n", Scope::Line, &["'a>(x: &'a str) {", "\n", "}"]);
        assert_eq!(r, None, "the opened brace keeps the line going: {t:?}");
    }

    #[test]
    fn a_bracket_closing_what_was_open_before_the_cursor_ends_the_completion_before_it() {
        let (t, r, _) = run("    foo(a, ", ")\n", Scope::Line, &["b", ")", ";\n"]);
        assert_eq!((t.as_str(), r), ("b", Some(StopReason::ClosingBracket)));
        let (t, r, _) = run("fn f() {\n    let x = 1;\n", "}\n", Scope::Block, &["    x + 1\n", "}", "\n"]);
        assert_eq!((t.as_str(), r), ("    x + 1", Some(StopReason::ClosingBracket)));
        // balanced inner brackets are fine
        let (t, r, _) = run("fn f() {\n", "}\n", Scope::Block, &["    if a {\n", "        b();\n", "    }\n", "}"]);
        assert_eq!((t.as_str(), r), ("    if a {\n        b();\n    }", Some(StopReason::ClosingBracket)));
    }

    #[test]
    fn end_of_block_at_a_blank_line_or_a_dedent() {
        let (t, r, _) = run("impl A {\n    fn f(&self) {\n        ", "\n    }\n}\n", Scope::Block, &["let a = 1;\n", "        let b = 2;\n", "\n", "    fn g"]);
        assert_eq!((t.as_str(), r), ("let a = 1;\n        let b = 2;", Some(StopReason::EndOfBlock)));
        let (t, r, _) = run("    if x {\n        ", "", Scope::Block, &["a();\n", "        b();\n", "    ", "c();\n"]);
        assert_eq!((t.as_str(), r), ("a();\n        b();", Some(StopReason::EndOfBlock)));
    }

    #[test]
    fn blank_lines_alone_are_no_completion() {
        for scope in [Scope::Line, Scope::Block] {
            let (t, r, n) = run("fn f() {\n    let x = 1;", "\n}\n", scope, &["\n", "\n", "\n", "    a();\n"]);
            assert_eq!((t.as_str(), n), ("", 2), "{scope:?}");
            assert!(r.is_some());
        }
        let mut s = EditorStops::new("x", "", Scope::Line);
        assert_eq!(s.push("   "), None);
        assert_eq!(s.finish(), "");
    }

    #[test]
    fn a_completion_never_repeats_the_suffix() {
        // the rest of the cursor's line
        let (t, r, _) = run("    let x = ", ";\n", Scope::Line, &["compute", "(1)", ";", "\n"]);
        assert_eq!((t.as_str(), r), ("compute(1)", Some(StopReason::SuffixRepeat)));
        // the suffix's next line
        let (t, r, _) = run("fn f() {\n", "    let z = 3;\n}\n", Scope::Block, &["    let y = 2;\n", "    let z = 3;\n", "}"]);
        assert_eq!((t.as_str(), r), ("    let y = 2;", Some(StopReason::SuffixRepeat)));
        // a tail that is the start of the suffix is trimmed when the stream ends
        let mut s = EditorStops::new("    v.push(", "x + 1);\n", Scope::Line);
        assert_eq!(s.push("y, x + 1"), None);
        assert_eq!(s.finish(), "y, ");
        // one shared character is not a repeat
        let mut s = EditorStops::new("    let n = a", "b;\n", Scope::Line);
        assert_eq!(s.push(" + b"), None);
        assert_eq!(s.finish(), " + b");
    }

    #[test]
    fn complete_fits_the_prompt_into_the_context_and_never_generates_past_it() {
        use ferrolm_model::{init_weights, ModelSpec, TransformerConfig};
        use ferrolm_tokenizer::BpeTrainConfig;
        let text = "fn add(a: u32, b: u32) -> u32 {\n    a + b\n}\n".repeat(30);
        let tok = Tokenizer::train_bpe(std::iter::once(text.clone()), &BpeTrainConfig { vocab_size: 300, min_frequency: 2, special_tokens: special::defaults() }).unwrap();
        let ctx = 32;
        let spec = ModelSpec::Transformer(TransformerConfig { vocab_size: tok.vocab_size(), d_model: 16, n_layers: 1, n_heads: 2, n_kv_heads: 2, max_seq_len: ctx, ..Default::default() });
        let (model, vm) = AnyModel::build_fresh(&spec, &candle_core::Device::Cpu).unwrap();
        init_weights(&spec, &vm, 3).unwrap();
        let [pre, suf, mid] = fim_ids(&tok).unwrap();
        for layout in [PromptLayout::Psm, PromptLayout::Spm, PromptLayout::LeftToRight] {
            // a prefix and suffix far longer than the context
            let mut req = CompletionRequest::new(text.clone(), text.clone());
            req.layout = layout;
            req.scope = Scope::Block;
            req.max_tokens = 10;
            let prompt = build_prompt(&tok, &req.prefix, &req.suffix, layout, ctx - 10).unwrap();
            assert!(prompt.len() <= ctx - 10, "{layout:?}: {}", prompt.len());
            match layout {
                PromptLayout::Psm => {
                    assert_eq!((prompt[0], *prompt.last().unwrap()), (pre, mid));
                    assert!(prompt.contains(&suf));
                    // the end of the prefix is kept: the tokens before <SUF> end the text
                    let p_end = prompt.iter().position(|&x| x == suf).unwrap();
                    assert!(text.ends_with(&tok.decode(&prompt[1..p_end])));
                }
                PromptLayout::Spm => {
                    assert_eq!(&prompt[..2], &[pre, suf]);
                    let m = prompt.iter().position(|&x| x == mid).unwrap();
                    assert!(text.starts_with(&tok.decode(&prompt[2..m])), "the start of the suffix is kept");
                }
                PromptLayout::LeftToRight => assert!(!prompt.contains(&pre) && text.ends_with(&tok.decode(&prompt))),
            }
            let c = complete(&model, ctx, &tok, &req).unwrap();
            assert!(c.tokens <= 10 && c.prompt_tokens + c.tokens <= ctx, "{layout:?}: {c:?}");
            assert!(c.time_to_first_token_ms <= c.total_ms);
        }
        // a request that leaves the model no room is an error, not a panic
        let mut req = CompletionRequest::new("fn", "");
        req.max_tokens = 0;
        assert!(complete(&model, ctx, &tok, &req).is_err());
    }

    #[test]
    fn the_cursor_is_found_by_line_and_column_and_outside_the_file_is_an_error() {
        let src = "fn main() {\n    let é = 1;\n}\n";
        assert_eq!(split_at_cursor(src, 2, Some(10)).unwrap(), ("fn main() {\n    let é".to_string(), " = 1;\n}\n".to_string()));
        assert_eq!(split_at_cursor(src, 2, None).unwrap().0, "fn main() {\n    let é = 1;");
        assert_eq!(split_at_cursor(src, 1, Some(1)).unwrap(), (String::new(), src.to_string()));
        assert_eq!(split_at_cursor(src, 4, None).unwrap(), (src.to_string(), String::new()));
        let e = split_at_cursor(src, 5, None).unwrap_err().to_string();
        assert!(e.contains("line 5 is outside the file, which has 4 lines"), "{e}");
        assert!(split_at_cursor(src, 0, None).is_err());
        let e = split_at_cursor(src, 2, Some(16)).unwrap_err().to_string();
        assert!(e.contains("column 16 is outside line 2"), "{e}");
        assert!(split_at_cursor(src, 2, Some(0)).is_err());
    }
}
