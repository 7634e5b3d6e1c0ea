//! Tool calling: the request's `tools` and `tool_choice` checked into a [`Tools`], the JSON
//! schema a forced call must follow (decoded under llguidance, see [`crate::grammar`]),
//! and [`ToolReader`], which turns an answer's text (streamed or whole, the same way) into
//! content or one tool call.
//!
//! A tool call is the JSON object `{"name": NAME, "arguments": {...}}`. With
//! `tool_choice` "required" or a named function the answer is constrained to that shape
//! and its arguments to the tool's `parameters` schema, so the call streams as it is
//! generated. With "auto" the answer is free; when all of it is such an object (optionally
//! inside `<tool_call>…</tool_call>`, as Qwen and Hermes templates have models write it,
//! and with `parameters` for `arguments`, as Llama 3.1 writes it) naming a known tool, it is
//! returned as a tool call, else as content. While an "auto" answer may still become a
//! call, its text is held back; once it cannot, it streams as content.

use serde_json::{json, Value};

use crate::engine::Finish;
use crate::error::ApiError;

/// One function the model may call.
#[derive(Debug, Clone, PartialEq)]
pub struct ToolDef {
    pub name: String,
    /// JSON schema of the arguments (an object schema).
    pub parameters: Value,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Choice {
    None,
    Auto,
    Required,
    Named(String),
}

/// A request's checked tools.
#[derive(Debug, Clone, PartialEq)]
pub struct Tools {
    pub defs: Vec<ToolDef>,
    pub choice: Choice,
    /// The request's `tools` as given, for the chat template (empty when none).
    pub raw: Vec<Value>,
}

fn valid_name(n: &str) -> bool {
    (1..=64).contains(&n.len()) && n.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

impl Tools {
    /// Check `tools` and `tool_choice` as OpenAI documents them; errors name the parameter.
    pub fn parse(tools: Option<&Value>, choice: Option<&Value>) -> Result<Self, ApiError> {
        let raw = match tools {
            None | Some(Value::Null) => vec![],
            Some(Value::Array(a)) => a.clone(),
            Some(_) => return Err(ApiError::invalid("tools", "tools must be an array of {\"type\": \"function\", \"function\": {...}}")),
        };
        let mut defs: Vec<ToolDef> = Vec::new();
        for (i, t) in raw.iter().enumerate() {
            if t.get("type").and_then(Value::as_str) != Some("function") {
                return Err(ApiError::invalid(&format!("tools[{i}].type"), "the only tool type supported is \"function\""));
            }
            let Some(f) = t.get("function").filter(|f| f.is_object()) else {
                return Err(ApiError::invalid(&format!("tools[{i}].function"), "a function tool needs a `function` object"));
            };
            let name = match f.get("name").and_then(Value::as_str) {
                Some(n) if valid_name(n) => n.to_string(),
                _ => return Err(ApiError::invalid(&format!("tools[{i}].function.name"), "a function name is 1 to 64 characters of a-z, A-Z, 0-9, _ and -")),
            };
            if defs.iter().any(|d| d.name == name) {
                return Err(ApiError::invalid(&format!("tools[{i}].function.name"), format!("the function name {name:?} is given twice")));
            }
            if let Some(d) = f.get("description").filter(|d| !d.is_string() && !d.is_null()) {
                return Err(ApiError::invalid(&format!("tools[{i}].function.description"), format!("description must be a string, got {d}")));
            }
            let parameters = match f.get("parameters") {
                None | Some(Value::Null) => json!({ "type": "object", "properties": {}, "additionalProperties": false }),
                Some(p) if p.is_object() && p.get("type").is_none_or(|t| t == "object") => p.clone(),
                Some(_) => return Err(ApiError::invalid(&format!("tools[{i}].function.parameters"), "parameters must be a JSON schema of an object ({\"type\": \"object\", ...})")),
            };
            defs.push(ToolDef { name, parameters });
        }
        let choice = match choice {
            None | Some(Value::Null) => {
                if defs.is_empty() {
                    Choice::None
                } else {
                    Choice::Auto
                }
            }
            Some(Value::String(s)) if s == "none" => Choice::None,
            Some(Value::String(s)) if s == "auto" => Choice::Auto,
            Some(Value::String(s)) if s == "required" => Choice::Required,
            Some(v) if v.get("type").and_then(Value::as_str) == Some("function") => match v.pointer("/function/name").and_then(Value::as_str) {
                Some(n) => Choice::Named(n.to_string()),
                None => return Err(ApiError::invalid("tool_choice", "a named tool_choice is {\"type\": \"function\", \"function\": {\"name\": ...}}")),
            },
            Some(v) => return Err(ApiError::invalid("tool_choice", format!("tool_choice must be \"none\", \"auto\", \"required\" or {{\"type\": \"function\", \"function\": {{\"name\": ...}}}}, got {v}"))),
        };
        match &choice {
            Choice::Required if defs.is_empty() => return Err(ApiError::invalid("tool_choice", "tool_choice \"required\" needs `tools`")),
            Choice::Named(n) if !defs.iter().any(|d| &d.name == n) => {
                return Err(ApiError::invalid("tool_choice", format!("tool_choice names the function {n:?}, which is not among `tools`")));
            }
            _ => {}
        }
        Ok(Self { defs, choice, raw })
    }

    /// Whether the answer must be a tool call.
    pub fn forced(&self) -> bool {
        matches!(self.choice, Choice::Required | Choice::Named(_))
    }

    /// Whether tools are offered (to the template) and calls looked for in answers.
    pub fn active(&self) -> bool {
        self.choice != Choice::None && !self.defs.is_empty()
    }

    /// The schema of a forced call: `{"name": <one of the tools>, "arguments": <its
    /// parameters>}`, name first; None unless the call is forced.
    pub fn call_schema(&self) -> Option<Value> {
        let one = |d: &ToolDef| {
            json!({ "type": "object", "properties": { "name": { "const": d.name }, "arguments": d.parameters },
                    "required": ["name", "arguments"], "additionalProperties": false })
        };
        match &self.choice {
            Choice::Named(n) => self.defs.iter().find(|d| &d.name == n).map(one),
            Choice::Required if self.defs.len() == 1 => Some(one(&self.defs[0])),
            Choice::Required => Some(json!({ "anyOf": self.defs.iter().map(one).collect::<Vec<_>>() })),
            _ => None,
        }
    }

    /// The tools as a system prompt, for chat templates that know nothing of tools
    /// (ferrolm's marker templates): what a Hermes-style template would say.
    pub fn system_text(&self) -> String {
        let mut s = String::from("You may call one of these functions. To call one, answer with only a JSON object {\"name\": <function name>, \"arguments\": <arguments object>} inside <tool_call></tool_call>.\n<tools>\n");
        for t in &self.raw {
            s.push_str(&t.to_string());
            s.push('\n');
        }
        s.push_str("</tools>");
        s
    }
}

/// A piece of an answer as the client sees it.
#[derive(Debug, Clone, PartialEq)]
pub enum Piece {
    Content(String),
    /// A tool call begins: its function's name.
    CallStart(String),
    /// More of the call's `arguments` string.
    Args(String),
}

/// Reads one answer's text into [`Piece`]s as it arrives.
#[derive(Debug, Clone)]
pub struct ToolReader {
    forced: bool,
    names: Vec<String>,
    /// The answer's text not yet handed out as content.
    buf: String,
    /// Forced: where the arguments begin in `buf`, once the name is complete.
    header: Option<usize>,
    /// Forced: the end of what has been handed out as arguments.
    sent: usize,
    /// The answer is content (auto: it cannot be a call): text streams through.
    content: bool,
    called: bool,
}

impl ToolReader {
    pub fn new(tools: &Tools) -> Self {
        Self { forced: tools.forced(), names: tools.defs.iter().map(|d| d.name.clone()).collect(), buf: String::new(), header: None, sent: 0, content: false, called: false }
    }

    /// Whether the answer became a tool call (known after [`ToolReader::finish`], or once
    /// a forced call's name is out).
    pub fn called(&self) -> bool {
        self.called
    }

    pub fn push(&mut self, text: &str) -> Vec<Piece> {
        let mut out = vec![];
        if self.content {
            if !text.is_empty() {
                out.push(Piece::Content(text.to_string()));
            }
            return out;
        }
        self.buf.push_str(text);
        if self.forced {
            if self.header.is_none() {
                if let Some((name, at)) = call_header(&self.buf) {
                    self.header = Some(at);
                    self.sent = at;
                    self.called = true;
                    out.push(Piece::CallStart(name));
                }
            }
            if self.header.is_some() {
                let end = held_back_end(&self.buf).max(self.sent);
                if end > self.sent {
                    out.push(Piece::Args(self.buf[self.sent..end].to_string()));
                    self.sent = end;
                }
            }
        } else if !could_be_call(&self.buf) {
            self.content = true;
            out.push(Piece::Content(std::mem::take(&mut self.buf)));
        }
        out
    }

    /// The rest of the answer once it ended with `finish`, and its finish reason.
    pub fn finish(&mut self, finish: Finish) -> (Vec<Piece>, &'static str) {
        let mut out = vec![];
        if self.content {
            return (out, finish.as_str());
        }
        if self.forced {
            if self.header.is_some() {
                // A complete call ends with the object's closing brace, which is not part of
                // the arguments; a cut one hands out all it has.
                let end = if finish == Finish::Stop { held_back_end(&self.buf).max(self.sent) } else { self.buf.len() };
                if end > self.sent {
                    out.push(Piece::Args(self.buf[self.sent..end].to_string()));
                    self.sent = end;
                }
                return (out, if finish == Finish::Stop { "tool_calls" } else { finish.as_str() });
            }
        } else if finish == Finish::Stop {
            if let Some((name, args)) = parse_call(&self.buf, &self.names) {
                self.called = true;
                return (vec![Piece::CallStart(name), Piece::Args(args)], "tool_calls");
            }
        }
        self.content = true;
        if !self.buf.is_empty() {
            out.push(Piece::Content(std::mem::take(&mut self.buf)));
        }
        (out, finish.as_str())
    }
}

fn skip_ws(b: &[u8], mut i: usize) -> usize {
    while i < b.len() && matches!(b[i], b' ' | b'\n' | b'\r' | b'\t') {
        i += 1;
    }
    i
}

/// A complete JSON string starting at `i`: its value and the index after it.
fn json_string(s: &str, i: usize) -> Option<(String, usize)> {
    let b = s.as_bytes();
    if b.get(i) != Some(&b'"') {
        return None;
    }
    let mut j = i + 1;
    while j < b.len() {
        match b[j] {
            b'\\' => j += 2,
            b'"' => return serde_json::from_str(&s[i..=j]).ok().map(|v| (v, j + 1)),
            _ => j += 1,
        }
    }
    None
}

/// `{"name": "NAME", "arguments": ` and the first byte of the arguments: the name and where
/// the arguments begin. None until all of it has arrived (so where the arguments begin does
/// not depend on how the text was split).
fn call_header(s: &str) -> Option<(String, usize)> {
    let b = s.as_bytes();
    let mut i = skip_ws(b, 0);
    let expect = |i: &mut usize, c: u8| -> Option<()> {
        *i = skip_ws(b, *i);
        (b.get(*i) == Some(&c)).then(|| *i += 1)
    };
    expect(&mut i, b'{')?;
    let (key, j) = json_string(s, skip_ws(b, i))?;
    (key == "name").then_some(())?;
    i = j;
    expect(&mut i, b':')?;
    let (name, j) = json_string(s, skip_ws(b, i))?;
    i = j;
    expect(&mut i, b',')?;
    let (key, j) = json_string(s, skip_ws(b, i))?;
    (key == "arguments").then_some(())?;
    i = j;
    expect(&mut i, b':')?;
    i = skip_ws(b, i);
    (i < b.len()).then_some((name, i))
}

/// The end of what may be handed out as arguments: everything but a trailing
/// `whitespace } whitespace`, which may be the call object's close.
fn held_back_end(s: &str) -> usize {
    let t = s.trim_end_matches([' ', '\n', '\r', '\t']);
    match t.strip_suffix('}') {
        Some(t) => t.trim_end_matches([' ', '\n', '\r', '\t']).len(),
        None => t.len(),
    }
}

/// Whether free text may still turn out to be a tool call.
fn could_be_call(s: &str) -> bool {
    let t = s.trim_start();
    t.is_empty() || t.starts_with('{') || t.starts_with("<tool_call>") || "<tool_call>".starts_with(t)
}

/// A whole answer that is one call of a known tool: its name and arguments (as compact
/// JSON).
pub fn parse_call(text: &str, names: &[String]) -> Option<(String, String)> {
    let mut t = text.trim();
    if let Some(inner) = t.strip_prefix("<tool_call>") {
        t = inner.trim_end().strip_suffix("</tool_call>").unwrap_or(inner).trim();
    }
    let v: Value = serde_json::from_str(t).ok()?;
    let o = v.as_object()?;
    let name = o.get("name")?.as_str()?;
    if !names.iter().any(|n| n == name) {
        return None;
    }
    let args = match (o.get("arguments"), o.get("parameters")) {
        (Some(a), None) | (None, Some(a)) => a,
        _ => return None,
    };
    if o.len() != 2 {
        return None;
    }
    let args = match args {
        Value::Object(_) => args.to_string(),
        Value::String(s) if serde_json::from_str::<Value>(s).is_ok_and(|v| v.is_object()) => s.clone(),
        _ => return None,
    };
    Some((name.to_string(), args))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tools(choice: Value) -> Tools {
        let t = json!([{ "type": "function", "function": { "name": "get_weather", "parameters": { "type": "object", "properties": { "city": { "type": "string" } }, "required": ["city"] } } },
                       { "type": "function", "function": { "name": "noop" } }]);
        Tools::parse(Some(&t), Some(&choice)).unwrap()
    }

    fn read(r: &mut ToolReader, pieces: &[&str], finish: Finish) -> (Vec<Piece>, &'static str) {
        let mut out = vec![];
        for p in pieces {
            out.extend(r.push(p));
        }
        let (rest, why) = r.finish(finish);
        out.extend(rest);
        (out, why)
    }

    fn args(p: &[Piece]) -> String {
        p.iter().filter_map(|p| if let Piece::Args(a) = p { Some(a.as_str()) } else { None }).collect()
    }

    #[test]
    fn a_forced_call_streams_the_same_arguments_however_it_is_split() {
        let text = "{ \"name\": \"get_weather\",\n \"arguments\": {\"city\": \"Paris\", \"x\": {}} }\n";
        let whole = read(&mut ToolReader::new(&tools(json!("required"))), &[text], Finish::Stop);
        assert_eq!(whole.1, "tool_calls");
        assert_eq!(whole.0[0], Piece::CallStart("get_weather".into()));
        assert_eq!(args(&whole.0), "{\"city\": \"Paris\", \"x\": {}}");
        for cut in 1..text.len() {
            for cut2 in [cut + 1, cut + 3, text.len()] {
                let cut2 = cut2.min(text.len());
                let mut r = ToolReader::new(&tools(json!("required")));
                let got = read(&mut r, &[&text[..cut], &text[cut..cut2], &text[cut2..]], Finish::Stop);
                assert_eq!(args(&got.0), args(&whole.0), "split at {cut}/{cut2}");
                assert_eq!(got.0.iter().filter(|p| matches!(p, Piece::CallStart(_))).count(), 1);
            }
        }
        // cut by the length limit: all that came is handed out
        let cut = read(&mut ToolReader::new(&tools(json!("required"))), &["{\"name\": \"noop\", \"arguments\": {\"a\": 1}"], Finish::Length);
        assert_eq!((args(&cut.0).as_str(), cut.1), ("{\"a\": 1}", "length"));
        // cut before the name was complete: content
        let early = read(&mut ToolReader::new(&tools(json!("required"))), &["{\"name\": \"get_w"], Finish::Length);
        assert_eq!(early, (vec![Piece::Content("{\"name\": \"get_w".into())], "length"));
    }

    #[test]
    fn auto_answers_become_calls_only_when_all_of_them_is_a_known_call() {
        let auto = tools(json!("auto"));
        let call = read(&mut ToolReader::new(&auto), &["<tool_call>\n{\"name\": \"get_weather\", ", "\"arguments\": {\"city\": \"Oslo\"}}\n</tool_call>"], Finish::Stop);
        assert_eq!(call, (vec![Piece::CallStart("get_weather".into()), Piece::Args("{\"city\":\"Oslo\"}".into())], "tool_calls"));
        let llama = read(&mut ToolReader::new(&auto), &["{\"name\": \"noop\", \"parameters\": {}}"], Finish::Stop);
        assert_eq!(llama.1, "tool_calls");
        // unknown tool, extra text, cut answers, plain text: content
        for (pieces, finish) in [
            (vec!["{\"name\": \"other\", \"arguments\": {}}"], Finish::Stop),
            (vec!["{\"name\": \"noop\", \"arguments\": {}} and more"], Finish::Stop),
            (vec!["{\"name\": \"noop\", \"arguments\": {}}"], Finish::Length),
            (vec!["Hello", " there"], Finish::Stop),
        ] {
            let (out, why) = read(&mut ToolReader::new(&auto), &pieces, finish);
            let text: String = out.iter().map(|p| if let Piece::Content(c) = p { c.as_str() } else { panic!("{p:?}") }).collect();
            assert_eq!(text, pieces.concat());
            assert_eq!(why, finish.as_str());
        }
        // plain text streams as soon as it cannot be a call
        let mut r = ToolReader::new(&auto);
        assert_eq!(r.push("  <tool"), vec![]);
        assert_eq!(r.push("box"), vec![Piece::Content("  <toolbox".into())]);
        assert_eq!(r.push("!"), vec![Piece::Content("!".into())]);
    }

    #[test]
    fn tool_definitions_and_choices_are_checked_by_name() {
        let err = |t: Value, c: Value| Tools::parse(Some(&t), Some(&c)).unwrap_err().param.unwrap();
        let f = |name: &str| json!({ "type": "function", "function": { "name": name } });
        assert_eq!(err(json!([{ "type": "code" }]), json!("auto")), "tools[0].type");
        assert_eq!(err(json!([f("ok"), f("bad name")]), json!("auto")), "tools[1].function.name");
        assert_eq!(err(json!([f("a"), f("a")]), json!("auto")), "tools[1].function.name");
        assert_eq!(err(json!([{ "type": "function", "function": { "name": "a", "parameters": { "type": "string" } } }]), json!("auto")), "tools[0].function.parameters");
        assert_eq!(err(json!([f("a")]), json!({ "type": "function", "function": { "name": "b" } })), "tool_choice");
        assert_eq!(err(json!([]), json!("required")), "tool_choice");
        assert_eq!(err(json!([f("a")]), json!("sometimes")), "tool_choice");
        assert_eq!(Tools::parse(None, None).unwrap().choice, Choice::None);
        assert_eq!(Tools::parse(Some(&json!([f("a")])), None).unwrap().choice, Choice::Auto);
        let named = tools(json!({ "type": "function", "function": { "name": "noop" } }));
        assert_eq!(named.call_schema().unwrap()["properties"]["name"]["const"], "noop");
        assert_eq!(tools(json!("required")).call_schema().unwrap()["anyOf"].as_array().unwrap().len(), 2);
        assert!(tools(json!("auto")).call_schema().is_none());
    }
}
