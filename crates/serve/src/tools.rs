//! Tool calling: the request's `tools` and `tool_choice` checked into a [`Tools`], the JSON
//! schema a forced call must follow (decoded under llguidance, see [`crate::grammar`]),
//! and [`ToolReader`], which turns an answer's text (streamed or whole, the same way) into
//! content or tool calls.
//!
//! A tool call is the JSON object `{"name": NAME, "arguments": {...}}`. With
//! `tool_choice` "required" or a named function the answer is constrained to that shape
//! and its arguments to the tool's `parameters` schema, so the calls stream as they are
//! generated; with `parallel_tool_calls` (OpenAI's default) the grammar allows several
//! calls, one per line. With "auto" the answer is free; when all of it is one or more such
//! objects (each optionally inside `<tool_call>…</tool_call>`, as Qwen and Hermes templates
//! have models write it, or one after another, or a JSON array of them, and with
//! `parameters` for `arguments`, as Llama 3.1 writes it) naming known tools, they are
//! returned as tool calls, else the answer is content. While an "auto" answer may still
//! become a call, its text is held back; once it cannot, it streams as content.

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
    /// `parallel_tool_calls`: an answer may hold several calls (OpenAI's default).
    pub parallel: bool,
}

fn valid_name(n: &str) -> bool {
    (1..=64).contains(&n.len()) && n.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

impl Tools {
    /// Check `tools` and `tool_choice` as OpenAI documents them; errors name the parameter.
    pub fn parse(tools: Option<&Value>, choice: Option<&Value>, parallel: Option<bool>) -> Result<Self, ApiError> {
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
        Ok(Self { defs, choice, raw, parallel: parallel.unwrap_or(true) })
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

    /// The grammar of a forced answer (None unless the call is forced): the call schema,
    /// or with `parallel_tool_calls` one or more such calls, one per line.
    pub fn call_grammar(&self) -> Option<CallGrammar> {
        let one = self.call_schema()?;
        if !self.parallel {
            return Some(CallGrammar::Schema(one));
        }
        let schema = crate::grammar::with_whitespace_limit(one);
        Some(CallGrammar::Lark(format!("start: call (\"\\n\" call)*\ncall: %json {schema}\n")))
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

/// What a forced answer must follow.
#[derive(Debug, Clone, PartialEq)]
pub enum CallGrammar {
    /// One call: its JSON schema.
    Schema(Value),
    /// Several calls: a Lark grammar over the call schema.
    Lark(String),
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
    parallel: bool,
    names: Vec<String>,
    /// The answer's text not yet handed out as content.
    buf: String,
    /// Forced: where the current call's object begins in `buf` (after earlier calls).
    start: usize,
    /// Forced: where the current call's arguments begin in `buf`, once its name is complete.
    header: Option<usize>,
    /// Forced: the end of what has been handed out as arguments.
    sent: usize,
    /// The answer is content (auto: it cannot be a call): text streams through.
    content: bool,
    /// Calls begun so far.
    calls: usize,
    /// Forced: the current call object's scan, from `start`.
    scan: ObjectScan,
}

impl ToolReader {
    pub fn new(tools: &Tools) -> Self {
        Self {
            forced: tools.forced(),
            parallel: tools.parallel,
            names: tools.defs.iter().map(|d| d.name.clone()).collect(),
            buf: String::new(),
            start: 0,
            header: None,
            sent: 0,
            content: false,
            calls: 0,
            scan: ObjectScan::at(0),
        }
    }

    /// Whether the answer became a tool call (known after [`ToolReader::finish`], or once
    /// a forced call's name is out).
    pub fn called(&self) -> bool {
        self.calls > 0
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
            self.read_forced(&mut out);
        } else if !could_be_call(&self.buf) {
            self.content = true;
            out.push(Piece::Content(std::mem::take(&mut self.buf)));
        }
        out
    }

    /// Forced calls: each call's name once its header is complete, then its arguments as
    /// they come — all but trailing whitespace, which may precede the call object's close;
    /// a call whose object closed hands out the rest of its arguments and the next begins.
    fn read_forced(&mut self, out: &mut Vec<Piece>) {
        loop {
            if self.header.is_none() {
                let Some((name, at)) = call_header(&self.buf[self.start..]) else { return };
                self.header = Some(self.start + at);
                self.sent = self.start + at;
                self.calls += 1;
                out.push(Piece::CallStart(name));
            }
            if let Some(end) = self.scan.end(&self.buf) {
                // `end` is just after the call object's `}`
                let args_end = self.buf[..end - 1].trim_end_matches([' ', '\n', '\r', '\t']).len().max(self.sent);
                if args_end > self.sent {
                    out.push(Piece::Args(self.buf[self.sent..args_end].to_string()));
                }
                self.sent = end;
                self.start = end;
                self.scan = ObjectScan::at(end);
                self.header = None;
                continue;
            }
            let end = self.buf.trim_end_matches([' ', '\n', '\r', '\t']).len().max(self.sent);
            if end > self.sent {
                out.push(Piece::Args(self.buf[self.sent..end].to_string()));
                self.sent = end;
            }
            return;
        }
    }

    /// The rest of the answer once it ended with `finish`, and its finish reason.
    pub fn finish(&mut self, finish: Finish) -> (Vec<Piece>, &'static str) {
        let mut out = vec![];
        if self.content {
            return (out, finish.as_str());
        }
        if self.forced {
            if self.header.is_some() {
                // a cut call hands out all it has
                if self.buf.len() > self.sent {
                    out.push(Piece::Args(self.buf[self.sent..].to_string()));
                    self.sent = self.buf.len();
                }
                return (out, if finish == Finish::Stop { "tool_calls" } else { finish.as_str() });
            }
            if self.calls > 0 {
                // after the last complete call: whitespace, or a next call cut before its
                // name was complete (kept as content, nothing is lost)
                let rest = self.buf[self.start..].trim();
                if !rest.is_empty() {
                    out.push(Piece::Content(rest.to_string()));
                }
                return (out, if finish == Finish::Stop { "tool_calls" } else { finish.as_str() });
            }
        } else if finish == Finish::Stop {
            if let Some(calls) = parse_calls(&self.buf, &self.names).filter(|c| self.parallel || c.len() == 1) {
                self.calls = calls.len();
                let pieces = calls.into_iter().flat_map(|(name, args)| [Piece::CallStart(name), Piece::Args(args)]).collect();
                return (pieces, "tool_calls");
            }
        }
        self.content = true;
        if !self.buf.is_empty() {
            out.push(Piece::Content(std::mem::take(&mut self.buf)));
        }
        (out, finish.as_str())
    }
}

/// Finds the end of the JSON object that begins, after whitespace, at a given offset of a
/// growing buffer, reading each byte once: a forced call's object is scanned as its
/// tokens arrive (rescanning it from its start on every token made a call's reading
/// quadratic in its length).
#[derive(Debug, Default, Clone)]
struct ObjectScan {
    /// Next byte to read.
    pos: usize,
    /// Inside the object (its `{` was read).
    opened: bool,
    depth: usize,
    in_string: bool,
    /// The previous byte was a backslash inside a string.
    escaped: bool,
}

impl ObjectScan {
    fn at(from: usize) -> Self {
        Self { pos: from, ..Self::default() }
    }

    /// The end (just after its `}`) of the object, None while it is incomplete (or when
    /// something other than `{` follows the whitespace: never a call object).
    fn end(&mut self, s: &str) -> Option<usize> {
        let b = s.as_bytes();
        if !self.opened {
            self.pos = skip_ws(b, self.pos);
            if b.get(self.pos) != Some(&b'{') {
                return None;
            }
            self.opened = true;
        }
        while self.pos < b.len() {
            let c = b[self.pos];
            self.pos += 1;
            if self.in_string {
                match (self.escaped, c) {
                    (true, _) => self.escaped = false,
                    (false, b'\\') => self.escaped = true,
                    (false, b'"') => self.in_string = false,
                    _ => {}
                }
                continue;
            }
            match c {
                b'"' => self.in_string = true,
                b'{' | b'[' => self.depth += 1,
                b'}' | b']' => {
                    // a stray closer: never a complete object
                    self.depth = self.depth.checked_sub(1)?;
                    if self.depth == 0 {
                        return Some(self.pos);
                    }
                }
                _ => {}
            }
        }
        None
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

/// Whether free text may still turn out to be a tool call.
fn could_be_call(s: &str) -> bool {
    let t = s.trim_start();
    let array_of_objects = t.strip_prefix('[').is_some_and(|r| r.trim_start().is_empty() || r.trim_start().starts_with('{'));
    t.is_empty() || t.starts_with('{') || array_of_objects || t.starts_with("<tool_call>") || "<tool_call>".starts_with(t)
}

/// A whole answer that is one or more calls of known tools: their names and arguments
/// (as compact JSON). The calls may each be inside `<tool_call>…</tool_call>`, follow one
/// another (whitespace, `;` or `,` between), or be the items of one JSON array.
pub fn parse_calls(text: &str, names: &[String]) -> Option<Vec<(String, String)>> {
    let t = text.trim();
    let mut calls = vec![];
    if t.starts_with("<tool_call>") {
        let mut rest = t;
        while !rest.is_empty() {
            let inner = rest.strip_prefix("<tool_call>")?;
            let (body, after) = match inner.find("</tool_call>") {
                Some(e) => (&inner[..e], &inner[e + "</tool_call>".len()..]),
                None => (inner, ""),
            };
            calls.push(one_call(&serde_json::from_str(body.trim()).ok()?, names)?);
            rest = after.trim_start();
        }
    } else if t.starts_with('[') {
        let v: Value = serde_json::from_str(t).ok()?;
        for item in v.as_array()? {
            calls.push(one_call(item, names)?);
        }
    } else {
        let mut rest = t;
        while !rest.is_empty() {
            let mut values = serde_json::Deserializer::from_str(rest).into_iter::<Value>();
            let v = values.next()?.ok()?;
            calls.push(one_call(&v, names)?);
            rest = rest[values.byte_offset()..].trim_start_matches(|c: char| c.is_whitespace() || c == ';' || c == ',');
        }
    }
    (!calls.is_empty()).then_some(calls)
}

/// One call object naming a known tool: its name and arguments (as compact JSON).
fn one_call(v: &Value, names: &[String]) -> Option<(String, String)> {
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
        Tools::parse(Some(&t), Some(&choice), None).unwrap()
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
        let err = |t: Value, c: Value| Tools::parse(Some(&t), Some(&c), None).unwrap_err().param.unwrap();
        let f = |name: &str| json!({ "type": "function", "function": { "name": name } });
        assert_eq!(err(json!([{ "type": "code" }]), json!("auto")), "tools[0].type");
        assert_eq!(err(json!([f("ok"), f("bad name")]), json!("auto")), "tools[1].function.name");
        assert_eq!(err(json!([f("a"), f("a")]), json!("auto")), "tools[1].function.name");
        assert_eq!(err(json!([{ "type": "function", "function": { "name": "a", "parameters": { "type": "string" } } }]), json!("auto")), "tools[0].function.parameters");
        assert_eq!(err(json!([f("a")]), json!({ "type": "function", "function": { "name": "b" } })), "tool_choice");
        assert_eq!(err(json!([]), json!("required")), "tool_choice");
        assert_eq!(err(json!([f("a")]), json!("sometimes")), "tool_choice");
        assert_eq!(Tools::parse(None, None, None).unwrap().choice, Choice::None);
        assert_eq!(Tools::parse(Some(&json!([f("a")])), None, None).unwrap().choice, Choice::Auto);
        let named = tools(json!({ "type": "function", "function": { "name": "noop" } }));
        assert_eq!(named.call_schema().unwrap()["properties"]["name"]["const"], "noop");
        assert_eq!(tools(json!("required")).call_schema().unwrap()["anyOf"].as_array().unwrap().len(), 2);
        assert!(tools(json!("auto")).call_schema().is_none());
    }

    fn calls(p: &[Piece]) -> Vec<(String, String)> {
        let mut out: Vec<(String, String)> = vec![];
        for p in p {
            match p {
                Piece::CallStart(n) => out.push((n.clone(), String::new())),
                Piece::Args(a) => out.last_mut().expect("arguments after a call start").1.push_str(a),
                Piece::Content(c) => panic!("content {c:?} in a call answer"),
            }
        }
        out
    }

    #[test]
    fn forced_parallel_calls_stream_the_same_calls_however_they_are_split() {
        let text = "{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Pa}r\\\"is\", \"x\": [{}]}}\n{\"name\": \"noop\",\"arguments\":{} }";
        let want = vec![("get_weather".to_string(), "{\"city\": \"Pa}r\\\"is\", \"x\": [{}]}".to_string()), ("noop".to_string(), "{}".to_string())];
        let whole = read(&mut ToolReader::new(&tools(json!("required"))), &[text], Finish::Stop);
        assert_eq!((calls(&whole.0), whole.1), (want.clone(), "tool_calls"));
        for cut in 1..text.len() {
            for cut2 in [cut + 1, cut + 5, text.len()] {
                let cut2 = cut2.min(text.len());
                let got = read(&mut ToolReader::new(&tools(json!("required"))), &[&text[..cut], &text[cut..cut2], &text[cut2..]], Finish::Stop);
                assert_eq!(calls(&got.0), want, "split at {cut}/{cut2}");
            }
        }
        // the first call's arguments are out before the second call begins
        let mut r = ToolReader::new(&tools(json!("required")));
        let first = r.push(&text[..text.find('\n').unwrap() + 1]);
        assert_eq!(calls(&first), want[..1]);
        // a second call cut before its name is complete is kept as content beside the first
        let mut r = ToolReader::new(&tools(json!("required")));
        let (out, why) = read(&mut r, &["{\"name\": \"noop\", \"arguments\": {}}\n{\"na"], Finish::Length);
        assert_eq!(why, "length");
        assert_eq!(out.last(), Some(&Piece::Content("{\"na".into())));
        assert!(r.called());
    }

    #[test]
    fn auto_answers_with_several_calls_in_every_common_layout() {
        let auto = tools(json!("auto"));
        let want = vec![("get_weather".to_string(), "{\"city\":\"Oslo\"}".to_string()), ("noop".to_string(), "{}".to_string())];
        for text in [
            "<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Oslo\"}}\n</tool_call>\n<tool_call>\n{\"name\": \"noop\", \"arguments\": {}}\n</tool_call>",
            "{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Oslo\"}}\n{\"name\": \"noop\", \"arguments\": {}}",
            "{\"name\": \"get_weather\", \"parameters\": {\"city\": \"Oslo\"}}; {\"name\": \"noop\", \"parameters\": {}}",
            "[{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Oslo\"}}, {\"name\": \"noop\", \"arguments\": {}}]",
        ] {
            let (out, why) = read(&mut ToolReader::new(&auto), &[text], Finish::Stop);
            assert_eq!((calls(&out), why), (want.clone(), "tool_calls"), "{text}");
        }
        // one unknown call among them, or trailing text: all of it is content
        for text in ["{\"name\": \"noop\", \"arguments\": {}}\n{\"name\": \"other\", \"arguments\": {}}", "{\"name\": \"noop\", \"arguments\": {}}\nDone."] {
            let (out, why) = read(&mut ToolReader::new(&auto), &[text], Finish::Stop);
            assert_eq!((out, why), (vec![Piece::Content(text.into())], "stop"));
        }
        // parallel_tool_calls false: one call is a call, two are content
        let t = json!([{ "type": "function", "function": { "name": "noop" } }]);
        let single = Tools::parse(Some(&t), Some(&json!("auto")), Some(false)).unwrap();
        let two = "{\"name\": \"noop\", \"arguments\": {}}\n{\"name\": \"noop\", \"arguments\": {}}";
        assert_eq!(read(&mut ToolReader::new(&single), &[two], Finish::Stop).1, "stop");
        assert_eq!(read(&mut ToolReader::new(&single), &["{\"name\": \"noop\", \"arguments\": {}}"], Finish::Stop).1, "tool_calls");
        // the forced grammar: several calls only with parallel_tool_calls
        let forced_single = Tools::parse(Some(&t), Some(&json!("required")), Some(false)).unwrap();
        assert!(matches!(forced_single.call_grammar(), Some(CallGrammar::Schema(_))));
        assert!(matches!(tools(json!("required")).call_grammar(), Some(CallGrammar::Lark(g)) if g.contains("%json")));
        assert_eq!(tools(json!("auto")).call_grammar(), None);
    }

    #[test]
    fn an_object_scanned_as_it_grows_ends_where_serde_json_says() {
        let objects = [
            r#"{"name": "f", "arguments": {"a": 1}}"#,
            r#"  {"name":"g","arguments":{"s":"}{][\"\\","n":[1,{"x":"]"}]}} tail"#,
            r#"{"name": "h", "arguments": {"path": "C:\\dir\\", "q": "say \"}\""}}"#,
            "{\"name\": \"\u{e9}t\u{e9}\", \"arguments\": {\"k\": \"\u{1f600}}\"}}\n",
        ];
        for text in objects {
            let start = text.len() - text.trim_start().len();
            let mut stream = serde_json::Deserializer::from_str(&text[start..]).into_iter::<Value>();
            stream.next().unwrap().unwrap();
            let want = start + stream.byte_offset();
            // one scan fed a character at a time, as tokens arrive
            let mut scan = ObjectScan::at(0);
            let mut got = None;
            for (i, c) in text.char_indices() {
                let prefix = &text[..i + c.len_utf8()];
                if let Some(end) = scan.end(prefix) {
                    got = Some((end, prefix.len()));
                    break;
                }
            }
            assert_eq!(got, Some((want, want)), "{text}");
            assert_eq!(ObjectScan::at(0).end(text), Some(want), "{text}");
        }
        assert_eq!(ObjectScan::at(0).end(r#"{"a": 1"#), None);
        assert_eq!(ObjectScan::at(0).end(r#"x{"a": 1}"#), None);
    }
}
