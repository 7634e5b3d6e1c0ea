//! The human-feedback store of the web page: every judgement (a thumbs up/down on an
//! answer, or a pick between two answers shown side by side) is one row in SQLite, in WAL
//! mode with full synchronous commits, so an answer acknowledged to the page survives a
//! crash or power loss. [`export_preferences`] writes them as the preference JSONL that
//! `ferrolm reward train` and `ferrolm dpo` read (`ferrolm_finetune::records::parse_preference`).

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::Json;
use ferrolm_finetune::records::preference_json;
use ferrolm_tokenizer::{Message, Role};
use rusqlite::{params, Connection, OpenFlags};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::error::ApiError;
use crate::server::AppState;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS judgements (
    id        INTEGER PRIMARY KEY,
    created   REAL NOT NULL,               -- unix seconds
    kind      TEXT NOT NULL CHECK (kind IN ('compare', 'rating')),
    model     TEXT NOT NULL,
    history   TEXT NOT NULL,               -- JSON: the messages before the prompt
    prompt    TEXT NOT NULL,               -- the user turn that was answered
    answer_a  TEXT NOT NULL,               -- the answer rated, or the left answer
    answer_b  TEXT,                        -- compare: the right answer
    choice    TEXT NOT NULL CHECK (choice IN ('a', 'b', 'tie', 'up', 'down')),
    settings  TEXT NOT NULL                -- JSON: sampling settings and system prompt
);";

/// One judgement from the page.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Judgement {
    /// "compare" or "rating".
    pub kind: String,
    #[serde(default)]
    pub history: Vec<Message>,
    pub prompt: String,
    pub answer_a: String,
    #[serde(default)]
    pub answer_b: Option<String>,
    /// compare: "a", "b" or "tie"; rating: "up" or "down".
    pub choice: String,
    #[serde(default)]
    pub settings: Value,
}

impl Judgement {
    pub fn validate(&self) -> Result<(), String> {
        if self.prompt.trim().is_empty() {
            return Err("prompt is empty".into());
        }
        if self.answer_a.trim().is_empty() {
            return Err("answer_a is empty".into());
        }
        match self.kind.as_str() {
            "compare" => {
                if self.answer_b.as_deref().is_none_or(|b| b.trim().is_empty()) {
                    return Err("a comparison needs answer_b".into());
                }
                if !matches!(self.choice.as_str(), "a" | "b" | "tie") {
                    return Err(format!("a comparison's choice is a, b or tie, not {:?}", self.choice));
                }
            }
            "rating" => {
                if self.answer_b.is_some() {
                    return Err("a rating has one answer (answer_a)".into());
                }
                if !matches!(self.choice.as_str(), "up" | "down") {
                    return Err(format!("a rating's choice is up or down, not {:?}", self.choice));
                }
            }
            other => return Err(format!("kind is compare or rating, not {other:?}")),
        }
        if self.history.iter().any(|m| m.role == Role::Assistant && m.content.is_empty()) {
            return Err("history holds an empty assistant turn".into());
        }
        Ok(())
    }
}

/// The SQLite file, shared by the handlers (one connection; SQLite serialises writers).
#[derive(Clone)]
pub struct FeedbackStore {
    conn: Arc<Mutex<Option<Connection>>>,
    path: PathBuf,
}

fn open(path: &Path, create: bool) -> Result<Connection> {
    if create {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
    }
    let flags = if create { OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_CREATE } else { OpenFlags::SQLITE_OPEN_READ_ONLY };
    let conn = Connection::open_with_flags(path, flags).with_context(|| format!("cannot open the feedback database {}", path.display()))?;
    conn.busy_timeout(std::time::Duration::from_secs(5))?;
    Ok(conn)
}

impl FeedbackStore {
    pub fn open(path: &Path) -> Result<Self> {
        let conn = open(path, true)?;
        let mode: String = conn.query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0)).with_context(|| format!("{} is not an SQLite database", path.display()))?;
        anyhow::ensure!(mode.eq_ignore_ascii_case("wal"), "{}: SQLite refused WAL mode (got {mode})", path.display());
        conn.execute_batch("PRAGMA synchronous=FULL;").context("setting synchronous=FULL")?;
        conn.execute_batch(SCHEMA).with_context(|| format!("creating the judgements table in {}", path.display()))?;
        Ok(Self { conn: Arc::new(Mutex::new(Some(conn))), path: path.to_path_buf() })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Store one judgement; returns its row id once it is durable.
    pub fn record(&self, model: &str, j: &Judgement) -> Result<i64> {
        j.validate().map_err(anyhow::Error::msg)?;
        let guard = self.conn.lock().unwrap_or_else(|e| e.into_inner());
        let conn = guard.as_ref().context("the feedback store is closed (the server is shutting down)")?;
        let now = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0);
        conn.execute(
            "INSERT INTO judgements (created, kind, model, history, prompt, answer_a, answer_b, choice, settings) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
            params![now, j.kind, model, serde_json::to_string(&j.history)?, j.prompt, j.answer_a, j.answer_b, j.choice, j.settings.to_string()],
        )?;
        Ok(conn.last_insert_rowid())
    }

    /// Counts by kind and choice.
    pub fn counts(&self) -> Result<Value> {
        let guard = self.conn.lock().unwrap_or_else(|e| e.into_inner());
        let conn = guard.as_ref().context("the feedback store is closed")?;
        let mut st = conn.prepare("SELECT kind, choice, COUNT(*) FROM judgements GROUP BY kind, choice")?;
        let mut out = serde_json::Map::new();
        let rows = st.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?, r.get::<_, i64>(2)?)))?;
        for row in rows {
            let (k, c, n) = row?;
            out.insert(format!("{k}.{c}"), json!(n));
        }
        Ok(Value::Object(out))
    }

    /// Fold the WAL into the database file and close (graceful shutdown).
    pub fn close(&self) {
        if let Some(conn) = self.conn.lock().unwrap_or_else(|e| e.into_inner()).take() {
            let _ = conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE);");
            let _ = conn.close();
        }
    }
}

/// `POST /v1/feedback`: store a judgement from the page.
pub async fn record(State(st): State<Arc<AppState>>, body: Result<Bytes, BytesRejection>) -> Response {
    let j: Judgement = match crate::server::parse(body, st.max_body) {
        Ok(j) => j,
        Err(e) => return e.into_response(),
    };
    if let Err(e) = j.validate() {
        return ApiError::invalid("feedback", e).into_response();
    }
    let store = st.feedback.clone();
    let model = st.model_name.clone();
    match tokio::task::spawn_blocking(move || store.record(&model, &j)).await {
        Ok(Ok(id)) => Json(json!({ "id": id, "stored": true })).into_response(),
        Ok(Err(e)) => ApiError::unavailable(format!("{e:#}")).into_response(),
        Err(e) => ApiError::internal(e.to_string()).into_response(),
    }
}

/// `GET /v1/feedback`: how many judgements are stored.
pub async fn summary(State(st): State<Arc<AppState>>) -> Response {
    match st.feedback.counts() {
        Ok(c) => Json(json!({ "counts": c })).into_response(),
        Err(e) => ApiError::unavailable(format!("{e:#}")).into_response(),
    }
}

/// Ratings of one conversation: ((history JSON, prompt), thumbs-up answers, thumbs-down answers).
type RatedConversation = ((String, String), Vec<String>, Vec<String>);

/// What an export wrote.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct ExportReport {
    /// Preference pairs written.
    pub pairs: usize,
    /// Of them, pairs from a thumbs-up and a thumbs-down answer to the same conversation.
    pub from_ratings: usize,
    /// Comparisons judged a tie (no preference to learn).
    pub ties: usize,
    /// Ratings without an opposite rating of the same conversation to pair with.
    pub unpaired_ratings: usize,
}

/// Write every preference in the database at `db` to `out` (atomically) in the format
/// `ferrolm reward train` and `ferrolm dpo` read: `{"prompt", "history", "chosen",
/// "rejected"}` per line. A comparison gives its picked answer as chosen; for ratings, the
/// thumbs-up and thumbs-down answers of the same conversation (history and prompt) are
/// paired in the order they were given. `model`: only judgements of this model.
pub fn export_preferences(db: &Path, out: &Path, model: Option<&str>) -> Result<ExportReport> {
    anyhow::ensure!(db.is_file(), "{} does not exist", db.display());
    let conn = open(db, false)?;
    let mut st = conn
        .prepare("SELECT kind, history, prompt, answer_a, answer_b, choice FROM judgements WHERE (?1 IS NULL OR model = ?1) ORDER BY id")
        .with_context(|| format!("{} has no judgements table (is it a ferrolm feedback database?)", db.display()))?;
    let rows = st.query_map(params![model], |r| {
        Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?, r.get::<_, String>(2)?, r.get::<_, String>(3)?, r.get::<_, Option<String>>(4)?, r.get::<_, String>(5)?))
    })?;
    let mut rep = ExportReport::default();
    let mut lines = String::new();
    // (history json, prompt) → (up answers, down answers), in order of first appearance
    let mut rated: Vec<RatedConversation> = Vec::new();
    for (i, row) in rows.enumerate() {
        let (kind, history_json, prompt, a, b, choice) = row?;
        let history: Vec<Message> = serde_json::from_str(&history_json).with_context(|| format!("{}: judgement {} has a malformed history", db.display(), i + 1))?;
        match (kind.as_str(), choice.as_str()) {
            ("compare", "tie") => rep.ties += 1,
            ("compare", c) => {
                let b = b.with_context(|| format!("{}: comparison {} lacks answer_b", db.display(), i + 1))?;
                let (chosen, rejected) = if c == "a" { (a, b) } else { (b, a) };
                lines.push_str(&preference_json(&history, &prompt, &chosen, &rejected).to_string());
                lines.push('\n');
                rep.pairs += 1;
            }
            ("rating", c) => {
                let key = (history_json, prompt);
                let idx = match rated.iter().position(|(k, _, _)| *k == key) {
                    Some(i) => i,
                    None => {
                        rated.push((key, vec![], vec![]));
                        rated.len() - 1
                    }
                };
                if c == "up" { rated[idx].1.push(a) } else { rated[idx].2.push(a) }
            }
            _ => anyhow::bail!("{}: judgement {} has kind {kind:?} and choice {choice:?}", db.display(), i + 1),
        }
    }
    for ((history_json, prompt), ups, downs) in rated {
        let history: Vec<Message> = serde_json::from_str(&history_json)?;
        let paired = ups.len().min(downs.len());
        for (up, down) in ups.iter().zip(&downs) {
            lines.push_str(&preference_json(&history, &prompt, up, down).to_string());
            lines.push('\n');
        }
        rep.pairs += paired;
        rep.from_ratings += paired;
        rep.unpaired_ratings += ups.len() + downs.len() - 2 * paired;
    }
    ferrolm_common::atomic::write_atomic(out, lines.as_bytes()).with_context(|| format!("writing {}", out.display()))?;
    Ok(rep)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn compare(prompt: &str, a: &str, b: &str, choice: &str) -> Judgement {
        Judgement { kind: "compare".into(), history: vec![Message::system("Be brief.")], prompt: prompt.into(), answer_a: a.into(), answer_b: Some(b.into()), choice: choice.into(), settings: json!({"temperature": 0.7}) }
    }

    #[test]
    fn judgements_survive_reopening_and_export_as_preferences() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("fb").join("feedback.db");
        let store = FeedbackStore::open(&db).unwrap();
        store.record("m", &compare("Hi?", "Hello!", "Go away.", "a")).unwrap();
        store.record("m", &compare("Two plus two?", "Five.", "Four.", "b")).unwrap();
        store.record("m", &compare("Tie?", "x", "y", "tie")).unwrap();
        let rating = |ans: &str, c: &str| Judgement { kind: "rating".into(), history: vec![], prompt: "Q".into(), answer_a: ans.into(), answer_b: None, choice: c.into(), settings: Value::Null };
        store.record("m", &rating("good", "up")).unwrap();
        store.record("m", &rating("bad", "down")).unwrap();
        store.record("m", &rating("also good", "up")).unwrap();
        store.record("other", &compare("Hi?", "A", "B", "a")).unwrap();
        // invalid judgements are refused before they reach the table
        assert!(store.record("m", &compare("Hi?", "a", "b", "c")).is_err());
        assert!(store.record("m", &Judgement { answer_b: None, ..compare("Hi?", "a", "b", "a") }).is_err());
        drop(store); // not closed: the WAL alone must hold the rows
        let store = FeedbackStore::open(&db).unwrap();
        assert_eq!(store.counts().unwrap()["compare.a"], json!(2));
        store.close();
        let out = dir.path().join("prefs.jsonl");
        let rep = export_preferences(&db, &out, Some("m")).unwrap();
        assert_eq!(rep, ExportReport { pairs: 3, from_ratings: 1, ties: 1, unpaired_ratings: 1 });
        let lines: Vec<Value> = std::fs::read_to_string(&out).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        assert_eq!(lines.len(), 3);
        assert_eq!(lines[0]["chosen"], "Hello!");
        assert_eq!(lines[1]["chosen"], "Four.");
        assert_eq!(lines[1]["rejected"], "Five.");
        assert_eq!(lines[2]["chosen"], "good");
        assert_eq!(lines[2]["rejected"], "bad");
        // every line is a preference record of the shared reader
        for l in &lines {
            let p = ferrolm_finetune::records::parse_preference(l).unwrap();
            assert_eq!(p.prompt.last().unwrap().role, Role::User);
        }
        assert!(export_preferences(&dir.path().join("missing.db"), &out, None).is_err());
    }
}
