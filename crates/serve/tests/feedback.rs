//! The web page is served from the binary, its judgements reach the SQLite store over
//! HTTP, and the export is read by the preference reader of `reward train` and `dpo`.

mod common;

use common::{tiny_run, Server};
use ferrolm_serve::ServeConfig;
use serde_json::{json, Value};

#[test]
fn page_judgements_export_to_what_reward_training_reads() {
    let dir = tempfile::tempdir().unwrap();
    let run = tiny_run(dir.path(), 256);
    let db = dir.path().join("fb.db");
    let mut cfg = ServeConfig::new(run);
    cfg.model_name = Some("tiny".into());
    cfg.feedback_db = Some(db.clone());
    let s = Server::start(cfg);
    // the page and its assets, with no outside references
    let (st, html) = s.get("/", None);
    assert_eq!(st, 200);
    assert!(html.contains("/assets/app.js") && html.contains("/assets/app.css"));
    assert!(!html.contains("http://") && !html.contains("https://"), "the page must work offline");
    let (st, js) = s.get("/assets/app.js", None);
    assert_eq!(st, 200);
    assert!(js.contains("/v1/chat/completions") && js.contains("/v1/feedback"));
    assert_eq!(s.get("/assets/app.css", None).0, 200);
    // a comparison and a pair of ratings, as the page sends them
    let history = json!([{"role": "system", "content": "Be brief."}]);
    let (st, v) = s.post("/v1/feedback", &json!({"kind": "compare", "history": history, "prompt": "Hello?", "answer_a": "Hi there!", "answer_b": "Go away.", "choice": "a", "settings": {"temperature": 0.8}}));
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["stored"], true);
    for (ans, c) in [("Four.", "up"), ("Five.", "down")] {
        let (st, _) = s.post("/v1/feedback", &json!({"kind": "rating", "history": [], "prompt": "Two plus two?", "answer_a": ans, "choice": c}));
        assert_eq!(st, 200);
    }
    // bad judgements are refused with an error object
    let (st, v) = s.post("/v1/feedback", &json!({"kind": "compare", "prompt": "Hello?", "answer_a": "x", "choice": "a"}));
    assert_eq!(st, 400, "{v}");
    let (st, _) = s.post("/v1/feedback", &json!({"kind": "rating", "prompt": "Q", "answer_a": "x", "choice": "up", "extra": 1}));
    assert_eq!(st, 400);
    let (_, counts) = s.get("/v1/feedback", None);
    let counts: Value = serde_json::from_str(&counts).unwrap();
    assert_eq!(counts["counts"]["compare.a"], 1);
    drop(s); // graceful shutdown closes the store
    let out = dir.path().join("prefs.jsonl");
    let rep = ferrolm_serve::export_preferences(&db, &out, None).unwrap();
    assert_eq!(rep.pairs, 2);
    let (pairs, report) = ferrolm_align::records::read_preferences(std::slice::from_ref(&out), ferrolm_align::records::OnError::Fail).unwrap();
    assert_eq!(pairs.len(), 2, "{report:?}");
    assert_eq!(pairs[0].chosen, "Hi there!");
    assert_eq!(pairs[0].rejected, "Go away.");
    assert_eq!(pairs[0].prompt.len(), 2, "system turn + the prompt");
    assert_eq!(pairs[1].chosen, "Four.");
    assert_eq!(pairs[1].prompt.last().unwrap().content, "Two plus two?");
}

