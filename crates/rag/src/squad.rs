//! SQuAD-format JSON (`data[].paragraphs[].context` + `qas[]`, as in SQuAD 1.1 and 2.0):
//! paragraphs as documents to index, questions to evaluate retrieval and readers with.
//!
//! Each paragraph is one document with id [`paragraph_id`]`(title, index)`, so a retrieved
//! passage can be matched to the paragraph a question was written on without the path of the
//! file it came from.

use crate::RagError;
use ferrolm_corpus::{Document, ReadItem, Rejection};
use serde_json::Value;
use std::path::Path;

/// The document id of paragraph `index` (0-based) of article `title`.
pub fn paragraph_id(title: &str, index: usize) -> String {
    format!("squad:{title}/{index}")
}

/// Whether `bytes` look like a SQuAD file: a JSON object whose `data` is an array of articles
/// with `paragraphs`. Only the start is inspected, so this is cheap on large files.
pub fn looks_like_squad(path: &Path, bytes: &[u8]) -> bool {
    let is_json = path.extension().and_then(|e| e.to_str()).is_some_and(|e| e.eq_ignore_ascii_case("json"));
    if !is_json {
        return false;
    }
    let head = String::from_utf8_lossy(&bytes[..bytes.len().min(4096)]);
    let t = head.trim_start();
    t.starts_with('{') && head.contains("\"data\"") && (head.contains("\"paragraphs\"") || bytes.len() > 4096)
}

fn parse_json(path: &Path, bytes: &[u8]) -> Result<Vec<Value>, RagError> {
    let root: Value = serde_json::from_slice(bytes).map_err(|e| RagError::Invalid {
        path: path.into(),
        message: format!("not valid JSON ({e})"),
    })?;
    match root.get("data") {
        Some(Value::Array(a)) => Ok(a.clone()),
        _ => Err(RagError::Invalid { path: path.into(), message: "no top-level \"data\" array: not a SQuAD-format file".into() }),
    }
}

/// The paragraphs of a SQuAD file as documents (source "squad"; meta: title, paragraph,
/// path). A paragraph without a string `context`, or with an empty one, is a rejection naming
/// its position; an article without `title` uses its index.
pub fn squad_documents(path: &Path, bytes: &[u8]) -> Result<Vec<ReadItem>, RagError> {
    let articles = parse_json(path, bytes)?;
    let mut out = Vec::new();
    let reject = |at: String, reason: &str, detail: &str| {
        ReadItem::Rejected(Rejection {
            file: path.display().to_string(),
            line: None,
            reason: reason.into(),
            detail: format!("{at}: {detail}"),
            records: 1,
        })
    };
    for (a, article) in articles.iter().enumerate() {
        let title = article_title(article, a);
        let Some(paragraphs) = article.get("paragraphs").and_then(Value::as_array) else {
            out.push(reject(format!("data[{a}]"), "missing_field", "no \"paragraphs\" array"));
            continue;
        };
        for (p, para) in paragraphs.iter().enumerate() {
            let at = format!("data[{a}].paragraphs[{p}]");
            match para.get("context") {
                Some(Value::String(c)) if c.trim().is_empty() => out.push(reject(at, "empty_document", "empty context")),
                Some(Value::String(c)) => {
                    let mut d = Document::new(paragraph_id(&title, p), c.clone(), "squad");
                    d.meta.insert("title".into(), title.clone().into());
                    d.meta.insert("paragraph".into(), p.into());
                    d.meta.insert("path".into(), path.display().to_string().into());
                    out.push(ReadItem::Doc(d));
                }
                Some(_) => out.push(reject(at, "field_not_string", "\"context\" is not a string")),
                None => out.push(reject(at, "missing_field", "no \"context\"")),
            }
        }
    }
    Ok(out)
}

fn article_title(article: &Value, index: usize) -> String {
    article.get("title").and_then(Value::as_str).map(str::to_string).unwrap_or_else(|| format!("article{index}"))
}

/// One question of a SQuAD file.
#[derive(Debug, Clone, PartialEq)]
pub struct Question {
    pub id: String,
    pub question: String,
    /// Gold answer texts (empty for an unanswerable question).
    pub answers: Vec<String>,
    /// Each gold answer's `answer_start`: its offset in `context` in characters (Unicode
    /// code points, as Python counts them); `None` where the file gives none.
    pub answer_starts: Vec<Option<usize>>,
    /// The paragraph's text (what an extractive reader answers from).
    pub context: String,
    /// SQuAD 2.0's `is_impossible` (SQuAD 1.1 files lack it: false).
    pub is_impossible: bool,
    /// [`paragraph_id`] of the paragraph it was written on.
    pub paragraph: String,
}

/// A question that could not be read, with where it is.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct QaProblem {
    /// `data[a].paragraphs[p].qas[q]`.
    pub position: String,
    /// The question's `id` when it has one.
    pub id: Option<String>,
    pub reason: String,
}

impl std::fmt::Display for QaProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.id {
            Some(id) => write!(f, "{} (id {id}): {}", self.position, self.reason),
            None => write!(f, "{}: {}", self.position, self.reason),
        }
    }
}

/// The questions of a SQuAD file and the malformed ones. A file that is not JSON or has no
/// `data` array is an error naming the file; a malformed question (no string `question` or
/// `id`, `answers` not an array of objects with string `text`, `is_impossible` not a
/// boolean, an answerable question without answers) is a [`QaProblem`] and is left out.
pub fn load_questions(path: &Path) -> Result<(Vec<Question>, Vec<QaProblem>), RagError> {
    let bytes = std::fs::read(path).map_err(|error| RagError::Io { path: path.into(), error })?;
    let articles = parse_json(path, &bytes)?;
    let mut questions = Vec::new();
    let mut problems = Vec::new();
    for (a, article) in articles.iter().enumerate() {
        let title = article_title(article, a);
        let Some(paragraphs) = article.get("paragraphs").and_then(Value::as_array) else {
            problems.push(QaProblem { position: format!("data[{a}]"), id: None, reason: "no \"paragraphs\" array".into() });
            continue;
        };
        for (p, para) in paragraphs.iter().enumerate() {
            let Some(qas) = para.get("qas").and_then(Value::as_array) else {
                problems.push(QaProblem {
                    position: format!("data[{a}].paragraphs[{p}]"),
                    id: None,
                    reason: "no \"qas\" array".into(),
                });
                continue;
            };
            for (q, qa) in qas.iter().enumerate() {
                let position = format!("data[{a}].paragraphs[{p}].qas[{q}]");
                let context = para.get("context").and_then(Value::as_str).unwrap_or_default();
                match parse_question(qa, paragraph_id(&title, p), context) {
                    Ok(question) => questions.push(question),
                    Err(reason) => problems.push(QaProblem {
                        position,
                        id: qa.get("id").and_then(Value::as_str).map(str::to_string),
                        reason,
                    }),
                }
            }
        }
    }
    Ok((questions, problems))
}

fn parse_question(qa: &Value, paragraph: String, context: &str) -> Result<Question, String> {
    let id = qa.get("id").and_then(Value::as_str).ok_or("no string \"id\"")?.to_string();
    let question = qa.get("question").and_then(Value::as_str).ok_or("no string \"question\"")?.to_string();
    if question.trim().is_empty() {
        return Err("empty \"question\"".into());
    }
    let is_impossible = match qa.get("is_impossible") {
        None => false,
        Some(Value::Bool(b)) => *b,
        Some(_) => return Err("\"is_impossible\" is not a boolean".into()),
    };
    let answers: Vec<(String, Option<usize>)> = match qa.get("answers") {
        None if is_impossible => Vec::new(),
        None => return Err("no \"answers\"".into()),
        Some(Value::Array(a)) => a
            .iter()
            .map(|x| {
                let text = x.get("text").and_then(Value::as_str).ok_or("an answer without string \"text\"")?;
                let start = match x.get("answer_start") {
                    None => None,
                    Some(v) => Some(v.as_u64().ok_or("\"answer_start\" is not a non-negative integer")? as usize),
                };
                Ok::<_, &str>((text.to_string(), start))
            })
            .collect::<Result<Vec<_>, _>>()?,
        Some(_) => return Err("\"answers\" is not an array".into()),
    };
    if !is_impossible && answers.is_empty() {
        return Err("answerable (is_impossible false) but no answers".into());
    }
    let (answers, answer_starts) = answers.into_iter().unzip();
    Ok(Question { id, question, answers, answer_starts, is_impossible, paragraph, context: context.to_string() })
}
