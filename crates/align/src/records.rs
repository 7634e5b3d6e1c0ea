//! Preference pairs and prompts from JSONL files, in the formats the public sets use:
//!
//! - `{"instruction", "input"?, "chosen", "rejected"}` (Alpaca-style preference data);
//! - `{"prompt", "chosen", "rejected"}` (the generic triple; `prompt` is a string or a list
//!   of `{"role", "content"}` messages);
//! - `{"chosen", "rejected"}` where both are whole "\n\nHuman: …\n\nAssistant: …" dialogues
//!   (Anthropic HH): the turns before the last assistant turn are the prompt, and must agree.
//!
//! Prompt files for RLHF accept any of these (only the prompt is used), and also plain
//! `{"prompt"}` or `{"instruction", "input"?}` records.
//!
//! A malformed record (bad JSON, a missing field, a wrong type, an empty response, dialogues
//! that disagree before their last turn) is reported as `file:line: reason`; with
//! [`OnError::Skip`] it is counted and skipped, with [`OnError::Fail`] reading stops there.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use ferrolm_tokenizer::chat::{Message, Role};
use serde::{Deserialize, Serialize};
use serde_json::Value;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum OnError {
    /// Count and report malformed records, keep reading.
    #[default]
    Skip,
    /// Stop at the first malformed record with its file and line.
    Fail,
}

impl std::str::FromStr for OnError {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "skip" => Ok(Self::Skip),
            "fail" => Ok(Self::Fail),
            _ => Err(format!("expected `skip` or `fail`, got {s:?}")),
        }
    }
}

/// One preference pair: a conversation that awaits the assistant's reply, and two replies.
#[derive(Debug, Clone, PartialEq)]
pub struct PreferencePair {
    pub prompt: Vec<Message>,
    pub chosen: String,
    pub rejected: String,
    /// `file:line` it came from.
    pub origin: String,
}

/// A conversation awaiting the assistant's reply (RLHF rollouts, comparisons).
#[derive(Debug, Clone, PartialEq)]
pub struct PromptRecord {
    pub prompt: Vec<Message>,
    pub origin: String,
}

/// What reading found: records kept, malformed records (count and the first messages).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ReadReport {
    pub records: usize,
    pub malformed: usize,
    /// The first few `file:line: reason` messages (all are counted in `malformed`).
    pub examples: Vec<String>,
}

const MAX_EXAMPLES: usize = 20;

impl ReadReport {
    fn bad(&mut self, msg: String, on_error: OnError) -> Result<()> {
        if on_error == OnError::Fail {
            bail!("{msg} (pass --on-error skip to skip malformed records)");
        }
        tracing::warn!("skipping malformed record: {msg}");
        self.malformed += 1;
        if self.examples.len() < MAX_EXAMPLES {
            self.examples.push(msg);
        }
        Ok(())
    }
}

/// Read preference pairs from every file in order.
pub fn read_preferences(paths: &[PathBuf], on_error: OnError) -> Result<(Vec<PreferencePair>, ReadReport)> {
    let mut out = Vec::new();
    let mut report = ReadReport::default();
    for_each_record(paths, on_error, &mut report, |obj, origin| {
        let pair = parse_pair(obj, origin)?;
        out.push(pair);
        Ok(())
    })?;
    report.records = out.len();
    Ok((out, report))
}

/// Read prompts (from prompt files or from preference files) from every file in order.
pub fn read_prompts(paths: &[PathBuf], on_error: OnError) -> Result<(Vec<PromptRecord>, ReadReport)> {
    let mut out = Vec::new();
    let mut report = ReadReport::default();
    for_each_record(paths, on_error, &mut report, |obj, origin| {
        let prompt = parse_prompt_only(obj)?;
        out.push(PromptRecord { prompt, origin: origin.to_string() });
        Ok(())
    })?;
    report.records = out.len();
    Ok((out, report))
}

fn for_each_record(
    paths: &[PathBuf],
    on_error: OnError,
    report: &mut ReadReport,
    mut f: impl FnMut(&serde_json::Map<String, Value>, &str) -> Result<(), String>,
) -> Result<()> {
    if paths.is_empty() {
        bail!("no data files given (--data FILE…)");
    }
    for path in paths {
        let file = std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
        for (i, line) in BufReader::new(file).lines().enumerate() {
            let origin = format!("{}:{}", path.display(), i + 1);
            let line = line.with_context(|| format!("{origin}: cannot read (not UTF-8?)"))?;
            if line.trim().is_empty() {
                continue;
            }
            let parsed: Result<(), String> = match serde_json::from_str::<Value>(&line) {
                Err(e) => Err(format!("not valid JSON ({e})")),
                Ok(Value::Object(obj)) => f(&obj, &origin),
                Ok(_) => Err("not a JSON object".into()),
            };
            if let Err(reason) = parsed {
                report.bad(format!("{origin}: {reason}"), on_error)?;
            }
        }
    }
    Ok(())
}

fn get_str<'a>(obj: &'a serde_json::Map<String, Value>, key: &str) -> Result<Option<&'a str>, String> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(other) => Err(format!("field `{key}` must be a string, got {}", type_name(other))),
    }
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn nonempty_response(obj: &serde_json::Map<String, Value>, key: &str) -> Result<String, String> {
    match get_str(obj, key)? {
        None => Err(format!("missing field `{key}`")),
        Some(s) if s.trim().is_empty() => Err(format!("field `{key}` is an empty response")),
        Some(s) => Ok(s.trim().to_string()),
    }
}

/// The user turn of an instruction record: the instruction, then the input if any.
pub fn instruction_prompt(instruction: &str, input: &str) -> String {
    if input.trim().is_empty() {
        instruction.trim().to_string()
    } else {
        format!("{}\n\n{}", instruction.trim(), input.trim())
    }
}

fn parse_pair(obj: &serde_json::Map<String, Value>, origin: &str) -> Result<PreferencePair, String> {
    let has = |k: &str| obj.get(k).is_some_and(|v| !v.is_null());
    let (prompt, chosen, rejected) = if has("instruction") || has("prompt") {
        let prompt = explicit_prompt(obj)?.expect("instruction or prompt present");
        (prompt, nonempty_response(obj, "chosen")?, nonempty_response(obj, "rejected")?)
    } else if has("chosen") || has("rejected") {
        // Whole dialogues: the prompt is every turn before the last assistant turn.
        let c = get_str(obj, "chosen")?.ok_or("missing field `chosen`")?;
        let r = get_str(obj, "rejected")?.ok_or("missing field `rejected`")?;
        let (cp, cr) = split_last_reply(&parse_dialogue(c).map_err(|e| format!("`chosen`: {e}"))?)
            .map_err(|e| format!("`chosen`: {e}"))?;
        let (rp, rr) = split_last_reply(&parse_dialogue(r).map_err(|e| format!("`rejected`: {e}"))?)
            .map_err(|e| format!("`rejected`: {e}"))?;
        if cp != rp {
            return Err("`chosen` and `rejected` dialogues differ before their last assistant turn".into());
        }
        (cp, cr, rr)
    } else {
        return Err("expected fields (instruction, chosen, rejected), (prompt, chosen, rejected) or (chosen, rejected) dialogues".into());
    };
    if chosen.trim().is_empty() {
        return Err("the chosen response is empty".into());
    }
    if rejected.trim().is_empty() {
        return Err("the rejected response is empty".into());
    }
    Ok(PreferencePair { prompt, chosen, rejected, origin: origin.to_string() })
}

/// The prompt of an `instruction`/`input` or `prompt` record; None when it has neither.
fn explicit_prompt(obj: &serde_json::Map<String, Value>) -> Result<Option<Vec<Message>>, String> {
    if let Some(instr) = get_str(obj, "instruction")? {
        let input = get_str(obj, "input")?.unwrap_or("");
        if instr.trim().is_empty() {
            return Err("field `instruction` is empty".into());
        }
        return Ok(Some(vec![Message::user(instruction_prompt(instr, input))]));
    }
    match obj.get("prompt") {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => {
            if s.trim().is_empty() {
                return Err("field `prompt` is empty".into());
            }
            if s.contains("Human:") && s.contains("\n\nHuman:") {
                // An HH-style dialogue prefix, possibly ending in "\n\nAssistant:".
                let turns = parse_dialogue(s)?;
                let turns: Vec<Message> =
                    turns.into_iter().filter(|m| !(m.role == Role::Assistant && m.content.is_empty())).collect();
                if turns.last().map(|m| m.role) != Some(Role::User) {
                    return Err("the `prompt` dialogue must end with a Human turn".into());
                }
                Ok(Some(turns))
            } else {
                Ok(Some(vec![Message::user(s.trim())]))
            }
        }
        Some(Value::Array(items)) => {
            let msgs = parse_messages(items)?;
            if msgs.last().map(|m| m.role) == Some(Role::Assistant) {
                return Err("the `prompt` messages must not end with an assistant turn".into());
            }
            Ok(Some(msgs))
        }
        Some(other) => Err(format!("field `prompt` must be a string or a list of messages, got {}", type_name(other))),
    }
}

fn parse_prompt_only(obj: &serde_json::Map<String, Value>) -> Result<Vec<Message>, String> {
    if let Some(p) = explicit_prompt(obj)? {
        return Ok(p);
    }
    if let Some(c) = get_str(obj, "chosen")? {
        let (prompt, _) = split_last_reply(&parse_dialogue(c).map_err(|e| format!("`chosen`: {e}"))?)
            .map_err(|e| format!("`chosen`: {e}"))?;
        return Ok(prompt);
    }
    Err("expected a `prompt`, an `instruction` (with optional `input`), or a `chosen` dialogue".into())
}

fn parse_messages(items: &[Value]) -> Result<Vec<Message>, String> {
    let mut out = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        let obj = item.as_object().ok_or_else(|| format!("message {i} is not an object"))?;
        let role = match get_str(obj, "role")? {
            Some("system") => Role::System,
            Some("user") | Some("human") => Role::User,
            Some("assistant") => Role::Assistant,
            Some(r) => return Err(format!("message {i} has unknown role {r:?}")),
            None => return Err(format!("message {i} lacks `role`")),
        };
        let content = get_str(obj, "content")?.ok_or_else(|| format!("message {i} lacks `content`"))?;
        out.push(Message::new(role, content.trim()));
    }
    if out.is_empty() {
        return Err("the message list is empty".into());
    }
    Ok(out)
}

/// Split an Anthropic-style "\n\nHuman: …\n\nAssistant: …" dialogue into turns.
/// Text before the first marker is an error unless it is whitespace.
pub fn parse_dialogue(text: &str) -> Result<Vec<Message>, String> {
    const H: &str = "\n\nHuman:";
    const A: &str = "\n\nAssistant:";
    // Normalise a dialogue that starts without the leading blank lines.
    let owned;
    let text = if text.starts_with("Human:") {
        owned = format!("\n\n{text}");
        &owned
    } else {
        text
    };
    let mut marks: Vec<(usize, Role, usize)> = Vec::new();
    for (pos, _) in text.match_indices(H) {
        marks.push((pos, Role::User, H.len()));
    }
    for (pos, _) in text.match_indices(A) {
        marks.push((pos, Role::Assistant, A.len()));
    }
    marks.sort_by_key(|m| m.0);
    let Some(first) = marks.first() else {
        return Err("not a Human:/Assistant: dialogue (no \"\\n\\nHuman:\" marker)".into());
    };
    if !text[..first.0].trim().is_empty() {
        return Err("text before the first Human:/Assistant: marker".into());
    }
    let mut turns = Vec::with_capacity(marks.len());
    for (i, &(pos, role, len)) in marks.iter().enumerate() {
        let end = marks.get(i + 1).map(|m| m.0).unwrap_or(text.len());
        turns.push(Message::new(role, text[pos + len..end].trim()));
    }
    Ok(turns)
}

/// (prompt turns, last assistant reply) of a dialogue that ends with the assistant.
fn split_last_reply(turns: &[Message]) -> Result<(Vec<Message>, String), String> {
    match turns.split_last() {
        Some((last, rest)) if last.role == Role::Assistant => {
            if last.content.trim().is_empty() {
                return Err("the last assistant turn is an empty response".into());
            }
            if rest.is_empty() {
                return Err("the dialogue has no turn before the assistant's reply".into());
            }
            Ok((rest.to_vec(), last.content.clone()))
        }
        _ => Err("the dialogue does not end with an Assistant turn".into()),
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

/// Helper for the CLI: the path list as given, checked to exist.
pub fn check_paths(paths: &[PathBuf]) -> Result<()> {
    for p in paths {
        if !Path::new(p).is_file() {
            bail!("data file {} does not exist", p.display());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn write(lines: &[&str]) -> tempfile::NamedTempFile {
        let mut f = tempfile::NamedTempFile::new().unwrap();
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
        assert_eq!(rep.malformed, 0);
        assert_eq!(pairs.len(), 4);
        assert_eq!(pairs[0].prompt, vec![Message::user("Add\n\n1+1")]);
        assert_eq!(pairs[1].prompt, vec![Message::user("Hi")]);
        assert_eq!(
            pairs[2].prompt,
            vec![Message::user("a"), Message::assistant("b"), Message::user("c")]
        );
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
        assert_eq!(rep.malformed, 5);
        let name = path.display().to_string();
        assert!(rep.examples[0].starts_with(&format!("{name}:2:")) && rep.examples[0].contains("rejected"), "{:?}", rep.examples);
        assert!(rep.examples[1].starts_with(&format!("{name}:3:")));
        assert!(rep.examples[2].contains(":4:") && rep.examples[2].contains("empty response"));
        assert!(rep.examples[3].contains(":5:") && rep.examples[3].contains("must be a string"));
        assert!(rep.examples[4].contains(":6:") && rep.examples[4].contains("differ"));
        let err = read_preferences(&[path], OnError::Fail).unwrap_err().to_string();
        assert!(err.contains(&format!("{name}:2:")), "{err}");
    }

    #[test]
    fn prompts_come_from_any_format() {
        let f = write(&[
            r#"{"prompt": "P"}"#,
            r#"{"instruction": "I", "input": ""}"#,
            r#"{"chosen": "\n\nHuman: q\n\nAssistant: r", "rejected": "\n\nHuman: q\n\nAssistant: s"}"#,
            r#"{"prompt": "\n\nHuman: hh\n\nAssistant:"}"#,
            r#"{"text": "nothing usable"}"#,
        ]);
        let (ps, rep) = read_prompts(&[f.path().to_path_buf()], OnError::Skip).unwrap();
        assert_eq!(rep.malformed, 1);
        let got: Vec<_> = ps.iter().map(|p| p.prompt.clone()).collect();
        assert_eq!(got, vec![vec![Message::user("P")], vec![Message::user("I")], vec![Message::user("q")], vec![Message::user("hh")]]);
    }

    #[test]
    fn held_out_split_is_a_function_of_the_prompt() {
        let prompts: Vec<Vec<Message>> = (0..2000).map(|i| vec![Message::user(format!("p{i}"))]).collect();
        let held = prompts.iter().filter(|p| is_held_out(p, 0.1)).count();
        assert!((150..250).contains(&held), "{held}");
        assert!(prompts.iter().all(|p| is_held_out(p, 0.1) == is_held_out(p, 0.1)));
        assert_eq!(prompts.iter().filter(|p| is_held_out(p, 0.0)).count(), 0);
    }
}
