//! Preference pairs and prompts for alignment, read with the shared record readers of
//! `ferrolm_finetune::records` (the formats, `file:line` errors and skip/fail policy are
//! defined there, once for SFT and alignment):
//!
//! - `{"instruction", "input"?, "chosen", "rejected"}` (Alpaca-style preference data);
//! - `{"prompt", "history"?, "chosen", "rejected"}` (the generic triple; `prompt` is a string
//!   or a list of `{"role", "content"}` messages);
//! - `{"chosen", "rejected"}` where both are whole "\n\nHuman: …\n\nAssistant: …" dialogues
//!   (Anthropic HH): the turns before the last assistant turn are the prompt, and must agree.
//!
//! Prompt files for RLHF accept any of these (only the prompt is used), and also plain
//! `{"prompt"}`, `{"instruction", "input"?}` or `{"prompt": "\n\nHuman: …\n\nAssistant:"}`.
//! This module adds the held-out split every alignment stage shares.

use std::path::PathBuf;

use anyhow::Result;
use ferrolm_finetune::records::{alpaca_user_text, parse_hh_dialogue, parse_preference, read_records};
pub use ferrolm_finetune::records::{OnBad as OnError, ReadReport};
use ferrolm_tokenizer::chat::{Message, Role};
use serde_json::Value;

/// One preference pair and the `file:line` it came from.
#[derive(Debug, Clone, PartialEq)]
pub struct PreferencePair {
    pub prompt: Vec<Message>,
    pub chosen: String,
    pub rejected: String,
    pub origin: String,
}

/// A conversation awaiting the assistant's reply (RLHF rollouts, comparisons).
#[derive(Debug, Clone, PartialEq)]
pub struct PromptRecord {
    pub prompt: Vec<Message>,
    pub origin: String,
}

/// Read preference pairs from every file in order.
pub fn read_preferences(paths: &[PathBuf], on_error: OnError) -> Result<(Vec<PreferencePair>, ReadReport)> {
    let (recs, report) = read_records(paths, on_error, parse_preference)?;
    let pairs = recs
        .into_iter()
        .map(|r| PreferencePair { prompt: r.value.prompt, chosen: r.value.chosen, rejected: r.value.rejected, origin: r.origin.to_string() })
        .collect();
    Ok((pairs, report))
}

/// Read prompts (from prompt files or from preference files) from every file in order.
pub fn read_prompts(paths: &[PathBuf], on_error: OnError) -> Result<(Vec<PromptRecord>, ReadReport)> {
    let (recs, report) = read_records(paths, on_error, parse_prompt)?;
    Ok((recs.into_iter().map(|r| PromptRecord { prompt: r.value, origin: r.origin.to_string() }).collect(), report))
}

/// The prompt of any preference record, or of a prompt-only record.
fn parse_prompt(v: &Value) -> Result<Vec<Message>, String> {
    let o = v.as_object().ok_or("not a JSON object")?;
    if o.contains_key("chosen") || o.contains_key("rejected") {
        return parse_preference(v).map(|p| p.prompt);
    }
    if let Some(instr) = o.get("instruction") {
        let instr = instr.as_str().ok_or("field \"instruction\" must be a string")?;
        if instr.trim().is_empty() {
            return Err("field \"instruction\" is empty".into());
        }
        let input = match o.get("input") {
            None | Some(Value::Null) => "",
            Some(Value::String(s)) => s.as_str(),
            Some(_) => return Err("field \"input\" must be a string".into()),
        };
        return Ok(vec![Message::user(alpaca_user_text(instr, input))]);
    }
    match o.get("prompt") {
        Some(Value::String(s)) if s.contains("\n\nHuman:") => {
            // An HH dialogue prefix ending in "\n\nAssistant:": parse it with a placeholder reply.
            let text = s.trim_end();
            let text = text.strip_suffix("Assistant:").map(|t| t.trim_end()).unwrap_or(text);
            let turns = parse_hh_dialogue(&format!("{text}\n\nAssistant: -"))?;
            Ok(turns[..turns.len() - 1].to_vec())
        }
        Some(Value::String(s)) if !s.trim().is_empty() => Ok(vec![Message::user(s.trim())]),
        Some(Value::String(_)) => Err("field \"prompt\" is empty".into()),
        Some(Value::Array(_)) => {
            // Reuse the preference parser for message lists (placeholder answers).
            let mut with = o.clone();
            with.insert("chosen".into(), Value::String("-".into()));
            with.insert("rejected".into(), Value::String("-".into()));
            parse_preference(&Value::Object(with)).map(|p| p.prompt)
        }
        Some(_) => Err("field \"prompt\" must be a string or a list of messages".into()),
        None => Err("expected a \"prompt\", an \"instruction\" (with optional \"input\"), or a preference record".into()),
    }
}

/// Whether a prompt belongs to the held-out split. The split is a fixed hash of the prompt
/// text, so the reward model, DPO, PPO and `compare` all hold out the same prompts, and a
/// prompt's two replies are never split across train and held-out.
pub fn is_held_out(prompt: &[Message], val_fraction: f64) -> bool {
    let mut key = String::new();
    for m in prompt {
        key.push_str(match m.role {
            Role::System => "s:",
            Role::User => "u:",
            Role::Assistant => "a:",
        });
        key.push_str(&m.content);
        key.push('\u{1}');
    }
    let h = xxhash_rust::xxh3::xxh3_64_with_seed(key.as_bytes(), 0x5eed_a119);
    ((h % 1_000_000) as f64) < val_fraction * 1_000_000.0
}

/// Split records into (train, held-out) by [`is_held_out`].
pub fn split<T: Clone>(items: &[T], prompt: impl Fn(&T) -> &[Message], val_fraction: f64) -> (Vec<T>, Vec<T>) {
    let (mut train, mut val) = (Vec::new(), Vec::new());
    for it in items {
        if is_held_out(prompt(it), val_fraction) {
            val.push(it.clone());
        } else {
            train.push(it.clone());
        }
    }
    (train, val)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn write(lines: &[&str]) -> tempfile::NamedTempFile {
        let mut f = tempfile::Builder::new().suffix(".jsonl").tempfile().unwrap();
        for l in lines {
            writeln!(f, "{l}").unwrap();
        }
        f
    }

    #[test]
    fn reads_all_three_formats() {
        let f = write(&[
            r#"{"instruction": "Add", "input": "1+1", "chosen": "2", "rejected": "3"}"#,
            r#"{"prompt": "Hi", "chosen": "Hello", "rejected": "Go away"}"#,
            r#"{"chosen": "\n\nHuman: a\n\nAssistant: b\n\nHuman: c\n\nAssistant: good", "rejected": "\n\nHuman: a\n\nAssistant: b\n\nHuman: c\n\nAssistant: bad"}"#,
            r#"{"prompt": [{"role": "system", "content": "S"}, {"role": "user", "content": "U"}], "chosen": "x", "rejected": "y"}"#,
        ]);
        let (pairs, rep) = read_preferences(&[f.path().to_path_buf()], OnError::Fail).unwrap();
        assert_eq!(rep.bad, 0);
        assert_eq!(pairs.len(), 4);
        assert_eq!(pairs[0].prompt, vec![Message::user("Add\n\n1+1")]);
        assert_eq!(pairs[1].prompt, vec![Message::user("Hi")]);
        assert_eq!(pairs[2].prompt, vec![Message::user("a"), Message::assistant("b"), Message::user("c")]);
        assert_eq!((pairs[2].chosen.as_str(), pairs[2].rejected.as_str()), ("good", "bad"));
        assert_eq!(pairs[3].prompt.len(), 2);
        assert!(pairs[3].origin.ends_with(":4"));
    }

    #[test]
    fn malformed_records_name_file_and_line_and_obey_the_flag() {
        let f = write(&[
            r#"{"instruction": "ok", "chosen": "a", "rejected": "b"}"#,
            r#"{"instruction": "no rejected", "chosen": "a"}"#,
            r#"not json"#,
            r#"{"instruction": "empty", "chosen": "  ", "rejected": "b"}"#,
            r#"{"instruction": 3, "chosen": "a", "rejected": "b"}"#,
            r#"{"chosen": "\n\nHuman: a\n\nAssistant: x", "rejected": "\n\nHuman: DIFFERENT\n\nAssistant: y"}"#,
            r#"{"instruction": "ok2", "chosen": "a", "rejected": "b"}"#,
        ]);
        let path = f.path().to_path_buf();
        let (pairs, rep) = read_preferences(std::slice::from_ref(&path), OnError::Skip).unwrap();
        assert_eq!(pairs.len(), 2);
        assert_eq!(rep.bad, 5);
        let name = path.display().to_string();
        for (k, line) in [2, 3, 4, 5, 6].iter().enumerate() {
            assert!(rep.examples[k].starts_with(&format!("{name}:{line}:")), "{:?}", rep.examples);
        }
        let err = read_preferences(&[path], OnError::Fail).unwrap_err().to_string();
        assert!(err.contains(&format!("{name}:2:")), "{err}");
    }

    #[test]
    fn prompts_come_from_any_format() {
        let f = write(&[
            r#"{"prompt": "P"}"#,
            r#"{"instruction": "I", "input": ""}"#,
            r#"{"chosen": "\n\nHuman: q\n\nAssistant: r", "rejected": "\n\nHuman: q\n\nAssistant: s"}"#,
            r#"{"prompt": "\n\nHuman: hh\n\nAssistant: yes\n\nHuman: more\n\nAssistant:"}"#,
            r#"{"text": "nothing usable"}"#,
        ]);
        let (ps, rep) = read_prompts(&[f.path().to_path_buf()], OnError::Skip).unwrap();
        assert_eq!(rep.bad, 1);
        let got: Vec<_> = ps.iter().map(|p| p.prompt.clone()).collect();
        assert_eq!(
            got,
            vec![
                vec![Message::user("P")],
                vec![Message::user("I")],
                vec![Message::user("q")],
                vec![Message::user("hh"), Message::assistant("yes"), Message::user("more")]
            ]
        );
    }

    #[test]
    fn held_out_split_is_a_function_of_the_prompt() {
        let prompts: Vec<Vec<Message>> = (0..2000).map(|i| vec![Message::user(format!("p{i}"))]).collect();
        let held = prompts.iter().filter(|p| is_held_out(p, 0.1)).count();
        assert!((150..250).contains(&held), "{held}");
        assert_eq!(prompts.iter().filter(|p| is_held_out(p, 0.0)).count(), 0);
        let (tr, va) = split(&prompts, |p| p, 0.1);
        assert_eq!((tr.len(), va.len()), (2000 - held, held));
    }
}
