//! Reading fine-tuning records: instruction data (Alpaca, chat messages, prompt/completion),
//! preference pairs (prompt/chosen/rejected in three spellings) and labelled texts, from
//! JSONL, JSON arrays, CSV or Parquet files.
//!
//! Every malformed record is reported with its file and line (`data.jsonl:17: field
//! "output" is empty`). What happens next is the caller's [`OnBad`] choice: `Skip` keeps
//! going and counts it in the [`ReadReport`], `Fail` stops at the first one. Nothing is
//! dropped without being counted.
//!
//! A Parquet row is read as the JSON object of its columns (nested lists and structs
//! included), so every parser serves both formats; its "line" is the row number.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use ferrolm_tokenizer::{Message, Role};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// What to do with a malformed record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnBad {
    /// Report it (file:line, reason), count it, and continue.
    #[default]
    Skip,
    /// Stop with an error naming file and line.
    Fail,
}

impl std::str::FromStr for OnBad {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "skip" => Ok(Self::Skip),
            "fail" => Ok(Self::Fail),
            _ => Err(format!("expected `skip` or `fail`, got `{s}`")),
        }
    }
}

/// Where a record came from: file and 1-based line (or item index for JSON arrays).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Origin {
    pub file: PathBuf,
    /// 1-based line for JSONL and CSV (the line the record starts on), 1-based item for JSON arrays.
    pub line: usize,
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.file.display(), self.line)
    }
}

/// A parsed record and where it came from.
#[derive(Debug, Clone, PartialEq)]
pub struct Located<T> {
    pub origin: Origin,
    pub value: T,
}

/// Counts of one reading pass, written into run folders as `data_report.json`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ReadReport {
    pub files: Vec<String>,
    /// Records seen (non-blank lines / rows / items).
    pub records: usize,
    pub kept: usize,
    pub bad: usize,
    /// Bad records per reason (the reason without its file:line).
    pub reasons: BTreeMap<String, usize>,
    /// The first bad records in full (`file:line: reason`), at most [`MAX_LISTED`].
    pub examples: Vec<String>,
}

/// How many bad records a report lists one by one (all are counted).
pub const MAX_LISTED: usize = 20;

impl ReadReport {
    pub fn merge(&mut self, other: ReadReport) {
        self.files.extend(other.files);
        self.records += other.records;
        self.kept += other.kept;
        self.bad += other.bad;
        for (k, v) in other.reasons {
            *self.reasons.entry(k).or_default() += v;
        }
        for e in other.examples {
            if self.examples.len() < MAX_LISTED {
                self.examples.push(e);
            }
        }
    }

    /// Record a bad record under `policy`; an error for [`OnBad::Fail`].
    pub fn bad_record(&mut self, origin: &Origin, reason: &str, policy: OnBad) -> Result<()> {
        if policy == OnBad::Fail {
            bail!("{origin}: {reason} (use --on-bad-record skip to skip malformed records)");
        }
        tracing::warn!("{origin}: {reason} (skipped)");
        self.bad += 1;
        *self.reasons.entry(reason.to_string()).or_default() += 1;
        if self.examples.len() < MAX_LISTED {
            self.examples.push(format!("{origin}: {reason}"));
        }
        Ok(())
    }

    /// One line for the terminal.
    pub fn summary(&self) -> String {
        let mut s = format!("{} records read from {} file(s): {} kept, {} malformed", self.records, self.files.len(), self.kept, self.bad);
        if self.bad > 0 {
            let reasons: Vec<String> = self.reasons.iter().map(|(r, n)| format!("{n}× {r}")).collect();
            s.push_str(&format!(" ({})", reasons.join("; ")));
        }
        s
    }
}

/// Read raw records (JSON objects) from one file, by extension: `.jsonl`/`.ndjson` (one
/// object per line; blank lines ignored), `.json` (one array of objects), `.csv` (a header
/// row, then one record per row; every field a string). A line that is not valid JSON is
/// itself a bad record: it comes back as `Err(reason)` in file order with the others.
pub fn read_raw(path: &Path, report: &mut ReadReport) -> Result<Vec<(Origin, Result<Value, String>)>> {
    let name = path.file_name().map(|n| n.to_string_lossy().to_lowercase()).unwrap_or_default();
    if name.ends_with(".parquet") {
        return read_parquet(path, report);
    }
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    report.files.push(path.display().to_string());
    let origin = |line| Origin { file: path.to_path_buf(), line };
    let mut out = Vec::new();
    if name.ends_with(".csv") {
        let rows = parse_csv(&text).with_context(|| format!("in {}", path.display()))?;
        let mut rows = rows.into_iter();
        let Some((_, header)) = rows.next() else { return Ok(out) };
        for (line, fields) in rows {
            report.records += 1;
            if fields.len() != header.len() {
                out.push((origin(line), Err(format!("row has {} fields, the header has {}", fields.len(), header.len()))));
                continue;
            }
            let obj: Map<String, Value> = header.iter().cloned().zip(fields.into_iter().map(Value::String)).collect();
            out.push((origin(line), Ok(Value::Object(obj))));
        }
    } else if name.ends_with(".json") {
        let items: Vec<Value> = serde_json::from_str(&text)
            .with_context(|| format!("{}: expected a JSON array of records (use .jsonl for one record per line)", path.display()))?;
        for (i, v) in items.into_iter().enumerate() {
            report.records += 1;
            out.push((origin(i + 1), Ok(v)));
        }
    } else {
        for (i, line) in text.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            report.records += 1;
            out.push((origin(i + 1), serde_json::from_str::<Value>(line).map_err(|e| format!("not valid JSON ({e})"))));
        }
    }
    Ok(out)
}

/// `.parquet` (Hugging Face datasets' format): every row becomes a JSON object of its
/// columns (nested lists and structs too, e.g. chat `messages`), so the same parsers apply.
/// The origin's line is the 1-based row number; a row that cannot be decoded is a bad record.
fn read_parquet(path: &Path, report: &mut ReadReport) -> Result<Vec<(Origin, Result<Value, String>)>> {
    let file = std::fs::File::open(path).with_context(|| format!("cannot read {}", path.display()))?;
    // The parquet crate asserts on some malformed input instead of returning an error (found
    // by fuzzing, issue 18): a panic while decoding is a broken file, an error naming it.
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| read_parquet_rows(file, path, report))).unwrap_or_else(|p| {
        let msg = p.downcast_ref::<&str>().map(|s| s.to_string()).or_else(|| p.downcast_ref::<String>().cloned()).unwrap_or_default();
        bail!("{}: not a readable Parquet file (the decoder failed: {msg})", path.display())
    })
}

fn read_parquet_rows(file: std::fs::File, path: &Path, report: &mut ReadReport) -> Result<Vec<(Origin, Result<Value, String>)>> {
    use parquet::file::reader::{FileReader, SerializedFileReader};
    let reader = SerializedFileReader::new(file).with_context(|| format!("{}: not a readable Parquet file", path.display()))?;
    let rows = reader.metadata().file_metadata().num_rows().max(0) as usize;
    report.files.push(path.display().to_string());
    // `rows` is the footer's claim: no allocation from it, and rows it promises that the row
    // groups do not hold are one bad record, not one each (a corrupt count can be 2^63).
    let mut out = Vec::new();
    let mut iter = reader.into_iter();
    for row in 1..=rows {
        report.records += 1;
        let origin = Origin { file: path.to_path_buf(), line: row };
        match iter.next() {
            Some(Ok(r)) => out.push((origin, Ok(r.to_json_value()))),
            // The reader cannot skip a broken row group: the rest of the file is one bad record.
            Some(Err(e)) => {
                out.push((origin, Err(format!("broken Parquet row ({e}); rows {row}..={rows} not read"))));
                break;
            }
            // The footer promised more rows than the row groups hold.
            None => {
                out.push((origin, Err(format!("missing Parquet rows {row}..={rows} (the footer counts {rows} rows; truncated row group?)"))));
                break;
            }
        }
    }
    Ok(out)
}

/// Read every file and parse each record with `parse`; malformed records are reported
/// per `policy`. Returns the parsed records in file order and the counts.
pub fn read_records<T>(
    paths: &[PathBuf],
    policy: OnBad,
    parse: impl Fn(&Value) -> Result<T, String>,
) -> Result<(Vec<Located<T>>, ReadReport)> {
    if paths.is_empty() {
        bail!("no data files given");
    }
    let mut report = ReadReport::default();
    let mut out = Vec::new();
    for p in paths {
        for (origin, raw) in read_raw(p, &mut report)? {
            match raw.and_then(|v| parse(&v)) {
                Ok(value) => {
                    report.kept += 1;
                    out.push(Located { origin, value });
                }
                Err(reason) => report.bad_record(&origin, &reason, policy)?,
            }
        }
    }
    Ok((out, report))
}

/// RFC 4180 CSV: fields separated by commas, optionally quoted with `"` (a quote inside a
/// quoted field is doubled); quoted fields may span lines. Returns (starting line, fields)
/// per row; blank lines are skipped.
pub fn parse_csv(text: &str) -> Result<Vec<(usize, Vec<String>)>> {
    let mut rows = Vec::new();
    let mut fields = Vec::new();
    let mut field = String::new();
    let (mut line, mut row_start) = (1usize, 1usize);
    let mut in_quotes = false;
    let mut field_started = false;
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if in_quotes {
            match c {
                '"' if chars.peek() == Some(&'"') => {
                    chars.next();
                    field.push('"');
                }
                '"' => in_quotes = false,
                '\n' => {
                    line += 1;
                    field.push(c);
                }
                _ => field.push(c),
            }
            continue;
        }
        match c {
            '"' if !field_started => {
                in_quotes = true;
                field_started = true;
            }
            ',' => {
                fields.push(std::mem::take(&mut field));
                field_started = false;
            }
            '\r' if chars.peek() == Some(&'\n') => {}
            '\n' => {
                if field_started || !fields.is_empty() || !field.is_empty() {
                    fields.push(std::mem::take(&mut field));
                    rows.push((row_start, std::mem::take(&mut fields)));
                }
                field_started = false;
                line += 1;
                row_start = line;
            }
            _ => {
                field.push(c);
                field_started = true;
            }
        }
    }
    if in_quotes {
        bail!("line {row_start}: a quoted field is never closed");
    }
    if field_started || !fields.is_empty() || !field.is_empty() {
        fields.push(field);
        rows.push((row_start, fields));
    }
    Ok(rows)
}

// ------------------------------------------------------------------ field access

fn obj(v: &Value) -> Result<&Map<String, Value>, String> {
    v.as_object().ok_or_else(|| format!("expected a JSON object, got {}", type_name(v)))
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

/// A required string field.
pub fn str_field<'a>(o: &'a Map<String, Value>, key: &str) -> Result<&'a str, String> {
    match o.get(key) {
        None => Err(format!("missing field \"{key}\"")),
        Some(Value::String(s)) => Ok(s),
        Some(v) => Err(format!("field \"{key}\" must be a string, got {}", type_name(v))),
    }
}

/// A required string field that must not be empty (after trimming).
pub fn nonempty_field<'a>(o: &'a Map<String, Value>, key: &str) -> Result<&'a str, String> {
    let s = str_field(o, key)?;
    if s.trim().is_empty() {
        return Err(format!("field \"{key}\" is empty"));
    }
    Ok(s)
}

/// An optional string field (absent or null reads as "").
pub fn opt_str_field<'a>(o: &'a Map<String, Value>, key: &str) -> Result<&'a str, String> {
    match o.get(key) {
        None | Some(Value::Null) => Ok(""),
        Some(_) => str_field(o, key),
    }
}

fn parse_messages(v: &Value, key: &str) -> Result<Vec<Message>, String> {
    let arr = v.as_array().ok_or_else(|| format!("field \"{key}\" must be an array of {{role, content}}, got {}", type_name(v)))?;
    arr.iter()
        .enumerate()
        .map(|(i, m)| {
            let o = m.as_object().ok_or_else(|| format!("{key}[{i}] must be an object, got {}", type_name(m)))?;
            let role = match str_field(o, "role").map_err(|e| format!("{key}[{i}]: {e}"))? {
                "system" => Role::System,
                "user" | "human" => Role::User,
                "assistant" | "gpt" => Role::Assistant,
                other => return Err(format!("{key}[{i}]: unknown role \"{other}\" (expected system, user or assistant)")),
            };
            let content = str_field(o, "content").map_err(|e| format!("{key}[{i}]: {e}"))?;
            Ok(Message::new(role, content))
        })
        .collect()
}

// ------------------------------------------------------------------ instruction data

/// Which spelling an instruction record used.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum InstructionFormat {
    /// `{"instruction", "input"?, "output"}`
    Alpaca,
    /// `{"messages": [{"role", "content"}, …]}`
    Chat,
    /// `{"prompt", "completion"}`
    PromptCompletion,
}

/// One instruction-tuning example as a conversation: the assistant turns are what the
/// model learns to produce.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Conversation {
    pub messages: Vec<Message>,
    pub format: InstructionFormat,
}

impl Conversation {
    /// The conversation up to (not including) its last assistant turn, and that turn's text.
    pub fn split_last_answer(&self) -> (&[Message], &str) {
        let i = self.messages.iter().rposition(|m| m.role == Role::Assistant).expect("validated: has an assistant turn");
        (&self.messages[..i], &self.messages[i].content)
    }
}

/// The user turn of an Alpaca record: the instruction, then the input after a blank line.
pub fn alpaca_user_text(instruction: &str, input: &str) -> String {
    if input.trim().is_empty() {
        instruction.trim_end().to_string()
    } else {
        format!("{}\n\n{}", instruction.trim_end(), input.trim_end())
    }
}

/// Parse an instruction record in any of the three formats (chosen by which fields are
/// present). Rejects missing fields, wrong types, empty responses, unknown roles, chats
/// without an assistant turn or whose assistant turns are empty.
pub fn parse_instruction(v: &Value) -> Result<Conversation, String> {
    let o = obj(v)?;
    if let Some(m) = o.get("messages") {
        let messages = parse_messages(m, "messages")?;
        if !messages.iter().any(|m| m.role == Role::Assistant) {
            return Err("chat record has no assistant turn".into());
        }
        if let Some(i) = messages.iter().position(|m| m.role == Role::Assistant && m.content.trim().is_empty()) {
            return Err(format!("messages[{i}]: empty assistant response"));
        }
        if let Some(i) = messages.iter().position(|m| m.role == Role::System).filter(|&i| i > 0) {
            return Err(format!("messages[{i}]: a system message may only come first"));
        }
        return Ok(Conversation { messages, format: InstructionFormat::Chat });
    }
    if o.contains_key("instruction") {
        let instruction = nonempty_field(o, "instruction")?;
        let input = opt_str_field(o, "input")?;
        let output = nonempty_field(o, "output")?;
        let messages = vec![Message::user(alpaca_user_text(instruction, input)), Message::assistant(output)];
        return Ok(Conversation { messages, format: InstructionFormat::Alpaca });
    }
    if o.contains_key("prompt") || o.contains_key("completion") {
        let prompt = nonempty_field(o, "prompt")?;
        let completion = nonempty_field(o, "completion")?;
        return Ok(Conversation { messages: vec![Message::user(prompt), Message::assistant(completion)], format: InstructionFormat::PromptCompletion });
    }
    Err("not an instruction record: expected \"messages\", \"instruction\"/\"output\" or \"prompt\"/\"completion\"".into())
}

// ------------------------------------------------------------------ preference pairs

/// A preference pair: the conversation so far (ending with the user's turn), and two
/// assistant answers, the preferred one first.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PreferencePair {
    pub prompt: Vec<Message>,
    pub chosen: String,
    pub rejected: String,
}

/// Parse a preference record. Accepted spellings:
/// - `{"prompt": "text" | [messages], "history"?: [messages], "chosen", "rejected"}` (what
///   `ferrolm chat`'s `/compare` writes; `history` holds the turns before `prompt`);
/// - `{"instruction", "input"?, "chosen", "rejected"}` (the Alpaca-style preference set);
/// - `{"chosen", "rejected"}` where both are whole dialogues in the
///   `"\n\nHuman: …\n\nAssistant: …"` convention that differ only in the last assistant turn
///   (Anthropic HH).
pub fn parse_preference(v: &Value) -> Result<PreferencePair, String> {
    let o = obj(v)?;
    let chosen = nonempty_field(o, "chosen")?;
    let rejected = nonempty_field(o, "rejected")?;
    if let Some(p) = o.get("prompt") {
        let mut prompt = match o.get("history") {
            None | Some(Value::Null) => Vec::new(),
            Some(h) => parse_messages(h, "history")?,
        };
        match p {
            Value::String(s) if !s.trim().is_empty() => prompt.push(Message::user(s.as_str())),
            Value::String(_) => return Err("field \"prompt\" is empty".into()),
            Value::Array(_) => prompt.extend(parse_messages(p, "prompt")?),
            other => return Err(format!("field \"prompt\" must be a string or an array of messages, got {}", type_name(other))),
        }
        if prompt.last().map(|m| m.role) != Some(Role::User) {
            return Err("the prompt must end with a user turn".into());
        }
        return Ok(PreferencePair { prompt, chosen: chosen.into(), rejected: rejected.into() });
    }
    if o.contains_key("instruction") {
        let instruction = nonempty_field(o, "instruction")?;
        let input = opt_str_field(o, "input")?;
        return Ok(PreferencePair { prompt: vec![Message::user(alpaca_user_text(instruction, input))], chosen: chosen.into(), rejected: rejected.into() });
    }
    let c = parse_hh_dialogue(chosen).map_err(|e| format!("\"chosen\": {e}"))?;
    let r = parse_hh_dialogue(rejected).map_err(|e| format!("\"rejected\": {e}"))?;
    let (cp, ca) = c.split_at(c.len() - 1);
    let (rp, ra) = r.split_at(r.len() - 1);
    if cp != rp {
        return Err("\"chosen\" and \"rejected\" dialogues differ before their last assistant turn".into());
    }
    if ca[0].content.trim().is_empty() || ra[0].content.trim().is_empty() {
        return Err("empty final assistant turn".into());
    }
    Ok(PreferencePair { prompt: cp.to_vec(), chosen: ca[0].content.clone(), rejected: ra[0].content.clone() })
}

/// Split a `"\n\nHuman: …\n\nAssistant: …"` dialogue into messages; it must end with an
/// assistant turn preceded by a user turn.
pub fn parse_hh_dialogue(text: &str) -> Result<Vec<Message>, String> {
    let mut out: Vec<Message> = Vec::new();
    let mut rest = text;
    const H: &str = "\n\nHuman:";
    const A: &str = "\n\nAssistant:";
    if !rest.starts_with(H) {
        if let Some(stripped) = rest.strip_prefix("Human:") {
            rest = stripped;
            out.push(Message::user(""));
        } else {
            return Err("dialogue does not start with \"\\n\\nHuman:\"".into());
        }
    }
    while !rest.is_empty() {
        let (role, after) = if let Some(r) = rest.strip_prefix(H) {
            (Role::User, r)
        } else if let Some(r) = rest.strip_prefix(A) {
            (Role::Assistant, r)
        } else if let Some(last) = out.last_mut() {
            // text before the first marker of this iteration belongs to the previous turn
            let next = [rest.find(H), rest.find(A)].into_iter().flatten().min().unwrap_or(rest.len());
            last.content.push_str(&rest[..next]);
            rest = &rest[next..];
            continue;
        } else {
            unreachable!("the first turn is pushed above")
        };
        let next = [after.find(H), after.find(A)].into_iter().flatten().min().unwrap_or(after.len());
        out.push(Message::new(role, &after[..next]));
        rest = &after[next..];
    }
    for m in &mut out {
        m.content = m.content.trim().to_string();
    }
    if out.len() < 2 || out.last().map(|m| m.role) != Some(Role::Assistant) || out[out.len() - 2].role != Role::User {
        return Err("dialogue must end with a Human turn followed by an Assistant turn".into());
    }
    Ok(out)
}

/// A preference record as `ferrolm chat /compare` writes it (and [`parse_preference`] reads).
pub fn preference_json(history: &[Message], prompt: &str, chosen: &str, rejected: &str) -> Value {
    serde_json::json!({ "prompt": prompt, "history": history, "chosen": chosen, "rejected": rejected })
}

// ------------------------------------------------------------------ labelled texts

/// A text with its class label (as written in the data: strings, or numbers read as strings).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LabelledText {
    pub text: String,
    pub label: String,
}

/// Parse `{text_key: "…", label_key: "…" | 3 | true}`; the text must be non-empty.
pub fn parse_labelled(v: &Value, text_key: &str, label_key: &str) -> Result<LabelledText, String> {
    let o = obj(v)?;
    let text = nonempty_field(o, text_key)?;
    let label = match o.get(label_key) {
        None => return Err(format!("missing field \"{label_key}\"")),
        Some(Value::String(s)) if s.trim().is_empty() => return Err(format!("field \"{label_key}\" is empty")),
        Some(Value::String(s)) => s.trim().to_string(),
        Some(Value::Number(n)) => n.to_string(),
        Some(Value::Bool(b)) => b.to_string(),
        Some(v) => return Err(format!("field \"{label_key}\" must be a string or a number, got {}", type_name(v))),
    };
    Ok(LabelledText { text: text.to_string(), label })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let p = dir.join(name);
        std::fs::File::create(&p).unwrap().write_all(text.as_bytes()).unwrap();
        p
    }

    #[test]
    fn three_instruction_formats_become_conversations() {
        let a = parse_instruction(&serde_json::json!({"instruction": "Add.", "input": "2+2", "output": "4"})).unwrap();
        assert_eq!(a.format, InstructionFormat::Alpaca);
        assert_eq!(a.messages, vec![Message::user("Add.\n\n2+2"), Message::assistant("4")]);
        let a = parse_instruction(&serde_json::json!({"instruction": "Say hi.", "input": "", "output": "hi"})).unwrap();
        assert_eq!(a.messages[0], Message::user("Say hi."));
        let c = parse_instruction(&serde_json::json!({"messages": [
            {"role": "system", "content": "Be brief."}, {"role": "user", "content": "a"},
            {"role": "assistant", "content": "b"}, {"role": "user", "content": "c"}, {"role": "assistant", "content": "d"}]}))
        .unwrap();
        assert_eq!(c.messages.len(), 5);
        assert_eq!(c.split_last_answer(), (&c.messages[..4], "d"));
        let p = parse_instruction(&serde_json::json!({"prompt": "q", "completion": "r"})).unwrap();
        assert_eq!(p.format, InstructionFormat::PromptCompletion);
    }

    #[test]
    fn malformed_records_are_reported_with_file_and_line() {
        let dir = tempfile::tempdir().unwrap();
        let f = write(
            dir.path(),
            "d.jsonl",
            concat!(
                "{\"instruction\": \"ok\", \"output\": \"fine\"}\n",
                "\n",
                "{\"instruction\": \"no output\"}\n",
                "{\"instruction\": \"x\", \"output\": 3}\n",
                "{\"instruction\": \"x\", \"output\": \"  \"}\n",
                "not json\n",
                "{\"messages\": [{\"role\": \"bot\", \"content\": \"x\"}]}\n",
                "{\"prompt\": \"p\", \"completion\": \"c\"}\n",
            ),
        );
        let (recs, rep) = read_records(std::slice::from_ref(&f), OnBad::Skip, parse_instruction).unwrap();
        assert_eq!(recs.len(), 2);
        assert_eq!(recs[1].origin.line, 8);
        assert_eq!((rep.records, rep.kept, rep.bad), (7, 2, 5));
        let ex = rep.examples.join("\n");
        for want in [
            "d.jsonl:3: missing field \"output\"",
            "d.jsonl:4: field \"output\" must be a string, got a number",
            "d.jsonl:5: field \"output\" is empty",
            "d.jsonl:6: not valid JSON",
            "d.jsonl:7: messages[0]: unknown role \"bot\"",
        ] {
            assert!(ex.contains(want), "missing {want:?} in\n{ex}");
        }
        assert!(rep.summary().contains("2 kept, 5 malformed"), "{}", rep.summary());
        let err = read_records(&[f], OnBad::Fail, parse_instruction).unwrap_err().to_string();
        assert!(err.contains("d.jsonl:3: missing field \"output\""), "{err}");
    }

    #[test]
    fn csv_with_quotes_and_multiline_fields() {
        let rows = parse_csv("text,label\n\"a, \"\"quoted\"\" b\",pos\n\"two\nlines\",neg\r\nplain,pos\n").unwrap();
        assert_eq!(rows.len(), 4);
        assert_eq!(rows[1], (2, vec!["a, \"quoted\" b".to_string(), "pos".to_string()]));
        assert_eq!(rows[2], (3, vec!["two\nlines".to_string(), "neg".to_string()]));
        assert_eq!(rows[3].0, 5, "line numbers count the embedded newline");
        assert!(parse_csv("a\n\"open").is_err());
        let dir = tempfile::tempdir().unwrap();
        let f = write(dir.path(), "s.csv", "text,label\ngood film,1\nbad,\nx,y,z\n");
        let (recs, rep) = read_records(&[f], OnBad::Skip, |v| parse_labelled(v, "text", "label")).unwrap();
        assert_eq!(recs.len(), 1);
        assert_eq!(recs[0].value, LabelledText { text: "good film".into(), label: "1".into() });
        assert_eq!(rep.bad, 2);
        assert!(rep.examples[0].ends_with("s.csv:3: field \"label\" is empty"), "{:?}", rep.examples);
        assert!(rep.examples[1].contains("s.csv:4: row has 3 fields"), "{:?}", rep.examples);
    }

    #[test]
    fn preference_spellings() {
        let p = parse_preference(&serde_json::json!({"instruction": "Be nice.", "input": "", "chosen": "Sure!", "rejected": "No."})).unwrap();
        assert_eq!(p.prompt, vec![Message::user("Be nice.")]);
        let hh = serde_json::json!({
            "chosen": "\n\nHuman: hi\n\nAssistant: hello\n\nHuman: how?\n\nAssistant: fine, thanks",
            "rejected": "\n\nHuman: hi\n\nAssistant: hello\n\nHuman: how?\n\nAssistant: go away"});
        let p = parse_preference(&hh).unwrap();
        assert_eq!(p.prompt, vec![Message::user("hi"), Message::assistant("hello"), Message::user("how?")]);
        assert_eq!((p.chosen.as_str(), p.rejected.as_str()), ("fine, thanks", "go away"));
        let bad = serde_json::json!({"chosen": "\n\nHuman: a\n\nAssistant: b", "rejected": "\n\nHuman: z\n\nAssistant: c"});
        assert!(parse_preference(&bad).unwrap_err().contains("differ before"));
        // what chat /compare writes reads back
        let w = preference_json(&[Message::user("a"), Message::assistant("b")], "c", "good", "bad");
        let p = parse_preference(&w).unwrap();
        assert_eq!(p.prompt, vec![Message::user("a"), Message::assistant("b"), Message::user("c")]);
        assert_eq!(p.chosen, "good");
        assert!(parse_preference(&serde_json::json!({"prompt": "x", "chosen": "", "rejected": "r"})).unwrap_err().contains("\"chosen\" is empty"));
    }

    #[test]
    fn parquet_rows_are_records() {
        use parquet::data_type::{ByteArray, ByteArrayType};
        use parquet::file::properties::WriterProperties;
        use parquet::file::writer::SerializedFileWriter;
        use parquet::schema::parser::parse_message_type;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("instr.parquet");
        let schema = "message r { REQUIRED BYTE_ARRAY instruction (UTF8); OPTIONAL BYTE_ARRAY input (UTF8); OPTIONAL BYTE_ARRAY output (UTF8); }";
        let mut w = SerializedFileWriter::new(
            std::fs::File::create(&path).unwrap(),
            std::sync::Arc::new(parse_message_type(schema).unwrap()),
            std::sync::Arc::new(WriterProperties::builder().build()),
        )
        .unwrap();
        let mut rg = w.next_row_group().unwrap();
        // three rows; the third has no output (null), which parse_instruction must reject
        let cols: [(Vec<&str>, Vec<i16>); 3] = [
            (vec!["Add.", "Greet.", "Nothing."], vec![]),
            (vec!["2 + 2"], vec![1, 0, 0]),
            (vec!["4", "Hello!"], vec![1, 1, 0]),
        ];
        for (vals, defs) in cols.iter() {
            let mut col = rg.next_column().unwrap().unwrap();
            let v: Vec<ByteArray> = vals.iter().map(|x| ByteArray::from(*x)).collect();
            col.typed::<ByteArrayType>().write_batch(&v, (!defs.is_empty()).then_some(defs.as_slice()), None).unwrap();
            col.close().unwrap();
        }
        rg.close().unwrap();
        w.close().unwrap();
        let (recs, report) = read_records(std::slice::from_ref(&path), OnBad::Skip, parse_instruction).unwrap();
        assert_eq!(recs.len(), 2, "{}", report.summary());
        assert_eq!(report.records, 3);
        assert_eq!(report.bad, 1);
        assert!(report.examples[0].contains("instr.parquet:3"), "{:?}", report.examples);
        let e = read_records(&[path], OnBad::Fail, parse_instruction).unwrap_err().to_string();
        assert!(e.contains("instr.parquet:3"), "{e}");
        // not Parquet at all: a clear error naming the file
        let fake = dir.path().join("fake.parquet");
        std::fs::write(&fake, "hello").unwrap();
        let e = read_records(&[fake], OnBad::Skip, parse_instruction).unwrap_err().to_string();
        assert!(e.contains("fake.parquet") && e.contains("Parquet"), "{e}");
    }
}
