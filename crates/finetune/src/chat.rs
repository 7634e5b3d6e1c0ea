//! Interactive chat with the chat template, and the human-feedback path.
//!
//! The loop reads lines from any `BufRead` and writes to any `Write`, so the terminal
//! command and the tests drive the same code. Commands:
//! - plain text: a user turn; the answer streams token by token;
//! - `/reset`: forget the conversation (the system message stays);
//! - `/rate N [comment]`: rate the last answer 1–5 into the ratings JSONL;
//! - `/compare [text]`: sample two answers (to `text`, or again to the last user turn),
//!   ask which is better (`a`, `b`, or `skip`) and append `{prompt, history, chosen,
//!   rejected}` to the preference JSONL that reward-model training and DPO read
//!   ([`crate::records::parse_preference`]); the preferred answer joins the conversation;
//! - `/help`, `/quit`.
//!
//! Feedback files are append-only logs: each record is one `write` of one line followed by
//! a flush, so an interrupted session leaves whole records.

use std::io::{BufRead, Write};
use std::path::PathBuf;

use anyhow::{Context, Result};
use ferrolm_infer::{generate, GenerateConfig, SamplingConfig};
use ferrolm_model::Transformer;
use ferrolm_tokenizer::{DecodeStream, Message, Role, Tokenizer};
use serde::Serialize;

use crate::prompt::ChatFormat;

#[derive(Debug, Clone)]
pub struct ChatConfig {
    pub max_tokens: usize,
    pub sampling: SamplingConfig,
    /// System message at the start of every conversation ("" = none).
    pub system: String,
    /// Temperature for `/compare` samples when `sampling.temperature` is 0 (two greedy
    /// answers would be identical).
    pub compare_temperature: f32,
    pub preferences: PathBuf,
    pub ratings: PathBuf,
}

/// What a session did (returned for tests and printed at exit).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct ChatStats {
    pub turns: usize,
    pub ratings: usize,
    pub preferences: usize,
}

pub struct ChatSession<'a> {
    model: &'a Transformer,
    tok: &'a Tokenizer,
    format: &'a ChatFormat,
    cfg: ChatConfig,
    history: Vec<Message>,
    /// Advances with every sampled answer so repeated questions get fresh samples.
    seed: u64,
    pub stats: ChatStats,
}

fn append_line(path: &PathBuf, value: &serde_json::Value) -> Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    let mut f = std::fs::OpenOptions::new().create(true).append(true).open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut line = serde_json::to_string(value)?;
    line.push('\n');
    f.write_all(line.as_bytes())?;
    f.flush()?;
    Ok(())
}

impl<'a> ChatSession<'a> {
    pub fn new(model: &'a Transformer, tok: &'a Tokenizer, format: &'a ChatFormat, cfg: ChatConfig) -> Self {
        let seed = cfg.sampling.seed;
        let mut s = Self { model, tok, format, cfg, history: vec![], seed, stats: ChatStats::default() };
        s.reset();
        s
    }

    pub fn history(&self) -> &[Message] {
        &self.history
    }

    pub fn reset(&mut self) {
        self.history.clear();
        if !self.cfg.system.is_empty() {
            self.history.push(Message::system(self.cfg.system.as_str()));
        }
    }

    /// Prompt ids for `history`, dropping the oldest exchanges (a user turn and its answer;
    /// never the system message) until the prompt and the answer budget fit the context, so
    /// the kept turns still start with a user turn, as templates that check the role order
    /// (Llama 2's) require. A chat template that refuses the conversation is an error with its
    /// message.
    fn prompt_for(&self, history: &[Message]) -> Result<Vec<u32>> {
        let ctx = self.model.config().max_seq_len;
        let budget = ctx.saturating_sub(self.cfg.max_tokens.min(ctx / 2)).max(1);
        let sys = usize::from(history.first().is_some_and(|m| m.role == Role::System));
        let mut start = sys;
        loop {
            let msgs: Vec<Message> = history[..sys].iter().chain(&history[start..]).cloned().collect();
            let ids = self.format.prompt(self.tok, &msgs).context("the model's chat template refused the conversation")?;
            if ids.len() <= budget || start + 1 >= history.len() {
                // the last user turn alone may still be too long: keep its most recent tokens
                return Ok(ids[ids.len().saturating_sub(budget)..].to_vec());
            }
            start += 1;
            while start + 1 < history.len() && history[start].role != Role::User {
                start += 1;
            }
        }
    }

    /// Sample an answer to `history`, streaming its text to `out` when given.
    fn sample(&mut self, history: &[Message], temperature: f32, out: Option<&mut dyn Write>) -> Result<String> {
        let ids = self.prompt_for(history)?;
        let stops = self.format.stop_tokens().to_vec();
        let sampling = SamplingConfig { temperature, seed: self.seed, ..self.cfg.sampling.clone() };
        self.seed = self.seed.wrapping_add(1);
        let cfg = GenerateConfig { max_tokens: self.cfg.max_tokens, stop_tokens: stops.clone(), sampling };
        let mut stream = DecodeStream::new(self.tok);
        let mut sink = out;
        let new = generate(self.model, &ids, &cfg, |t| {
            if !stops.contains(&t) {
                let piece = stream.push(t);
                if let Some(w) = sink.as_mut() {
                    let _ = write!(w, "{piece}");
                    let _ = w.flush();
                }
            }
            true
        })?;
        if let Some(w) = sink.as_mut() {
            write!(w, "{}", stream.finish())?;
        }
        Ok(self.format.answer_text(self.tok, &new))
    }

    /// Run until `/quit` or end of input.
    pub fn run(&mut self, input: &mut dyn BufRead, out: &mut dyn Write) -> Result<ChatStats> {
        writeln!(out, "chat with the model: /reset, /rate N [comment], /compare [text], /help, /quit")?;
        let mut line = String::new();
        loop {
            write!(out, "> ")?;
            out.flush()?;
            line.clear();
            if input.read_line(&mut line)? == 0 {
                writeln!(out)?;
                break;
            }
            let text = line.trim();
            if text.is_empty() {
                continue;
            }
            let (cmd, arg) = match text.strip_prefix('/') {
                Some(rest) => {
                    let (c, a) = rest.split_once(char::is_whitespace).unwrap_or((rest, ""));
                    (Some(c), a.trim())
                }
                None => (None, text),
            };
            match cmd {
                None => {
                    self.history.push(Message::user(arg));
                    let h = self.history.clone();
                    let t = self.cfg.sampling.temperature;
                    let ans = self.sample(&h, t, Some(out))?;
                    writeln!(out)?;
                    self.history.push(Message::assistant(ans));
                    self.stats.turns += 1;
                }
                Some("quit") | Some("exit") => break,
                Some("reset") => {
                    self.reset();
                    writeln!(out, "(conversation cleared)")?;
                }
                Some("help") => writeln!(out, "/reset clears the conversation; /rate N [comment] rates the last answer (1-5); /compare [text] samples two answers and records the one you prefer; /quit")?,
                Some("rate") => self.rate(arg, out)?,
                Some("compare") => self.compare(arg, input, out)?,
                Some(other) => writeln!(out, "unknown command /{other} (try /help)")?,
            }
        }
        writeln!(out, "{} turns, {} ratings, {} preferences recorded", self.stats.turns, self.stats.ratings, self.stats.preferences)?;
        Ok(self.stats.clone())
    }

    fn last_exchange(&self) -> Option<(usize, &str, &str)> {
        let n = self.history.len();
        if n >= 2 && self.history[n - 1].role == Role::Assistant && self.history[n - 2].role == Role::User {
            Some((n - 2, &self.history[n - 2].content, &self.history[n - 1].content))
        } else {
            None
        }
    }

    fn rate(&mut self, arg: &str, out: &mut dyn Write) -> Result<()> {
        let (n, comment) = arg.split_once(char::is_whitespace).unwrap_or((arg, ""));
        let rating: u8 = match n.parse() {
            Ok(r) if (1..=5).contains(&r) => r,
            _ => {
                writeln!(out, "usage: /rate N [comment] with N from 1 (bad) to 5 (good)")?;
                return Ok(());
            }
        };
        let Some((i, prompt, response)) = self.last_exchange() else {
            writeln!(out, "nothing to rate yet: ask something first")?;
            return Ok(());
        };
        let rec = serde_json::json!({
            "prompt": prompt, "history": &self.history[..i], "response": response,
            "rating": rating, "comment": comment.trim(),
        });
        append_line(&self.cfg.ratings, &rec)?;
        self.stats.ratings += 1;
        writeln!(out, "(rating {rating} saved to {})", self.cfg.ratings.display())?;
        Ok(())
    }

    fn compare(&mut self, arg: &str, input: &mut dyn BufRead, out: &mut dyn Write) -> Result<()> {
        if arg.is_empty() {
            // compare again on the last question: drop its answer
            if self.last_exchange().is_none() {
                writeln!(out, "nothing to compare yet: /compare QUESTION, or ask something first")?;
                return Ok(());
            }
            self.history.pop();
        } else {
            self.history.push(Message::user(arg));
        }
        let h = self.history.clone();
        let t = if self.cfg.sampling.temperature > 0.0 { self.cfg.sampling.temperature } else { self.cfg.compare_temperature };
        let a = self.sample(&h, t, None)?;
        let b = self.sample(&h, t, None)?;
        writeln!(out, "[A] {a}\n[B] {b}")?;
        let choice = loop {
            write!(out, "which is better? (a/b/skip) ")?;
            out.flush()?;
            let mut l = String::new();
            if input.read_line(&mut l)? == 0 {
                break None;
            }
            match l.trim().to_lowercase().as_str() {
                "a" => break Some(true),
                "b" => break Some(false),
                "skip" | "s" | "" => break None,
                _ => writeln!(out, "answer a, b or skip")?,
            }
        };
        let prompt_msg = h.last().expect("a user turn was pushed").content.clone();
        let answer = match choice {
            Some(a_wins) => {
                let (chosen, rejected) = if a_wins { (&a, &b) } else { (&b, &a) };
                let rec = crate::records::preference_json(&h[..h.len() - 1], &prompt_msg, chosen, rejected);
                append_line(&self.cfg.preferences, &rec)?;
                self.stats.preferences += 1;
                writeln!(out, "(preference saved to {})", self.cfg.preferences.display())?;
                chosen.clone()
            }
            None => {
                writeln!(out, "(skipped; keeping answer A)")?;
                a
            }
        };
        self.history.push(Message::assistant(answer));
        self.stats.turns += 1;
        Ok(())
    }
}
