//! End-to-end tests on generated fixtures: a tiny untrained masked LM saved as a run folder
//! stands in for a pretrained body; the span reader must learn a synthetic task (the answer
//! is the word after a marker; contexts without the marker have no answer).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::Device;
use ferrolm_model::{AnyModel, ModelKind, TransformerConfig};
use ferrolm_qa::ask::{Mode, Retriever};
use ferrolm_qa::embed::{embed_index, Embedder, Pooling};
use ferrolm_qa::train::{run_qa_eval, run_qa_train, QaStageConfig};
use ferrolm_qa::LoadedReader;
use ferrolm_tokenizer::{special, BpeTrainConfig, Tokenizer};
use ferrolm_train::checkpoint::{self, TrainState};
use ferrolm_train::{RunConfig, TrainConfig};
use serde_json::json;

const WORDS: &[&str] = &["red", "blue", "green", "cat", "dog", "sky", "grass", "river", "stone", "bird", "tree", "moon", "sun", "rain", "wind", "fire"];
const MARKER: &str = "zz";

fn tokenizer() -> Tokenizer {
    let mut text = String::from("which word follows zz? ");
    for w in WORDS {
        text.push_str(&format!("{w} zz {w}. "));
    }
    Tokenizer::train_bpe(std::iter::once(text.repeat(20)), &BpeTrainConfig { vocab_size: 320, min_frequency: 2, special_tokens: special::defaults() }).unwrap()
}

/// An untrained masked LM saved as a run folder (config.toml, tokenizer.json, checkpoint).
fn base_run(dir: &Path, seed: u64) -> PathBuf {
    let tok = tokenizer();
    let m = TransformerConfig { kind: ModelKind::MaskedLm, vocab_size: tok.vocab_size(), d_model: 48, n_layers: 2, n_heads: 4, n_kv_heads: 4, max_seq_len: 48, ..Default::default() };
    let cfg = RunConfig::transformer(m, TrainConfig::default(), Default::default());
    let (_, vm) = AnyModel::build_fresh(&cfg.model, &Device::Cpu).unwrap();
    ferrolm_model::init_weights(&cfg.model, &vm, seed).unwrap();
    std::fs::create_dir_all(dir).unwrap();
    let state = TrainState { format: checkpoint::FORMAT_VERSION, step: 0, adam_t: 0, seed, tokens_seen: 0, elapsed_secs: 0.0, last_train_loss: None };
    checkpoint::save(dir, &vm, HashMap::new(), &state, 1).unwrap();
    ferrolm_common::write_atomic(dir.join("config.toml"), cfg.to_toml()).unwrap();
    tok.save(&dir.join("tokenizer.json")).unwrap();
    dir.to_path_buf()
}

/// A SQuAD-format file of `n` paragraphs: words at random; two thirds hold the marker, and
/// their question's answer is the word after it (given with its character offset).
fn squad_fixture(path: &Path, n: usize, seed: u64, words: std::ops::RangeInclusive<usize>) {
    let mut state = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
    let mut next = |m: usize| {
        state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        ((state >> 33) as usize) % m
    };
    let mut paragraphs = Vec::new();
    for i in 0..n {
        let words = words.start() + next(words.end() - words.start() + 1);
        let mut ctx: Vec<String> = (0..words).map(|_| WORDS[next(WORDS.len())].to_string()).collect();
        let answerable = i % 3 != 2;
        let mut qa = json!({"id": format!("q{seed}-{i}"), "question": "which word follows zz?", "is_impossible": !answerable, "answers": []});
        if answerable {
            let at = next(words - 1);
            ctx[at] = MARKER.into();
            let answer = ctx[at + 1].clone();
            let start: usize = ctx[..=at].iter().map(|w| w.len() + 1).sum();
            qa["answers"] = json!([{"text": answer, "answer_start": start}]);
        }
        let context = format!("{}.", ctx.join(" "));
        paragraphs.push(json!({"context": context, "qas": [qa]}));
    }
    let doc = json!({"version": "v2.0", "data": [{"title": format!("fixture{seed}"), "paragraphs": paragraphs}]});
    std::fs::write(path, serde_json::to_vec(&doc).unwrap()).unwrap();
}

fn stage(steps: usize) -> QaStageConfig {
    let mut c = QaStageConfig::default();
    c.train.max_steps = steps;
    c.train.batch_size = 16;
    c.train.lr = 3e-3;
    c.train.min_lr = 3e-4;
    c.train.warmup_steps = 10;
    c.train.weight_decay = 0.0;
    c.train.eval_interval = 0;
    c.train.log_interval = 1000;
    c.reader.doc_stride = 16;
    c
}

#[test]
fn span_head_learns_the_word_after_a_marker_with_no_answer_questions() {
    let dir = tempfile::tempdir().unwrap();
    let base = base_run(&dir.path().join("base"), 7);
    let (train, val, test) = (dir.path().join("train.json"), dir.path().join("val.json"), dir.path().join("test.json"));
    // Contexts of 6 to 40 words: the longer ones exceed a window (48 tokens, about 40 for
    // the context after the question), so answers must be found across sliding windows.
    squad_fixture(&train, 240, 1, 6..=40);
    squad_fixture(&val, 30, 2, 6..=12);
    squad_fixture(&test, 45, 3, 36..=40);
    let out = dir.path().join("reader");
    let rep = run_qa_train(&base, &out, std::slice::from_ref(&train), std::slice::from_ref(&val), stage(300), true, &Device::Cpu).unwrap();
    assert_eq!(rep.val_questions, 30);
    assert!(rep.val.has_ans.exact_match >= 90.0, "held-out HasAns EM {:?}", rep.val.has_ans);
    let r = run_qa_eval(&out, std::slice::from_ref(&test), None, &Device::Cpu).unwrap();
    assert_eq!((r.has_ans.n, r.no_ans.n), (30, 15));
    // Over training seeds 0..=11 and 1337 this ranged 70–100 (76.7 at the default seed): the
    // bar is well above chance (a wrong window or word scores 0) with room for that spread.
    assert!(r.has_ans.exact_match >= 65.0, "long contexts HasAns {:?}", r.has_ans);
    assert!(r.no_ans.exact_match >= 80.0, "long contexts NoAns {:?}", r.no_ans);
    assert!(r.all.f1 > r.always_no_answer.f1 + 40.0);

    // The loaded reader answers a new question over several passages and cites the right one.
    let reader = LoadedReader::load(&out, &Device::Cpu).unwrap();
    let a = reader.answer("which word follows zz?", &["red sky blue river.", "cat dog zz moon bird."]).unwrap();
    assert_eq!((reader.decide(&a).as_str(), a.context), ("moon", 1));
}

#[test]
fn bad_squad_input_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let base = base_run(&dir.path().join("base"), 7);
    let bad = dir.path().join("bad.json");
    std::fs::write(&bad, b"{\"data\": 3}").unwrap();
    let e = run_qa_train(&base, &dir.path().join("o"), std::slice::from_ref(&bad), &[], stage(1), true, &Device::Cpu).unwrap_err();
    assert!(format!("{e:#}").contains("bad.json"), "{e:#}");
    // a causal body is refused with a message naming what the reader needs
    let train = dir.path().join("t.json");
    squad_fixture(&train, 20, 1, 8..=8);
    let toml = std::fs::read_to_string(base.join("config.toml")).unwrap().replace("masked_lm", "causal");
    std::fs::write(base.join("config.toml"), toml).unwrap();
    let e = run_qa_train(&base, &dir.path().join("o2"), std::slice::from_ref(&train), &[], stage(1), true, &Device::Cpu).unwrap_err();
    assert!(format!("{e:#}").contains("masked LM"), "{e:#}");
}

#[test]
fn dense_index_from_an_encoder_and_refusal_of_another_model() {
    let dir = tempfile::tempdir().unwrap();
    let base = base_run(&dir.path().join("base"), 7);
    let other = base_run(&dir.path().join("other"), 8);
    let docs = dir.path().join("docs");
    std::fs::create_dir_all(&docs).unwrap();
    for (i, w) in WORDS.iter().enumerate() {
        std::fs::write(docs.join(format!("d{i}.txt")), format!("the {w} and the {w} with {} here.\n", WORDS[(i * 5 + 3) % WORDS.len()])).unwrap();
    }
    let ix = dir.path().join("ix");
    let sources = ferrolm_rag::Sources { paths: vec![docs.clone()], registry: None };
    ferrolm_rag::build_index(&ix, &sources, &Default::default()).unwrap();
    let e = Embedder::load(&base, Pooling::Mean, &Device::Cpu).unwrap();
    assert_eq!(embed_index(&ix, &e, 8).unwrap(), (WORDS.len(), WORDS.len()));
    // re-embedding only embeds passages without vectors
    assert_eq!(embed_index(&ix, &e, 8).unwrap(), (0, WORDS.len()));
    // a passage's own text finds it first by cosine
    let r = Retriever::open(&ix, Mode::Dense, None, 1.0, &Device::Cpu).unwrap();
    let p = r.index.passages().unwrap();
    for q in p.iter().take(4) {
        assert_eq!(r.retrieve(&q.text, 3).unwrap()[0].0, q.id);
    }
    let h = Retriever::open(&ix, Mode::Hybrid, None, 0.5, &Device::Cpu).unwrap();
    assert_eq!(h.retrieve(&p[2].text, 3).unwrap()[0].0, p[2].id);
    // other weights: refused, naming the embedding model
    let e2 = Embedder::load(&other, Pooling::Mean, &Device::Cpu).unwrap();
    let err = embed_index(&ix, &e2, 8).unwrap_err();
    assert!(format!("{err:#}").contains("embedding model"), "{err:#}");
    let err = Retriever::open(&ix, Mode::Dense, Some(&other), 1.0, &Device::Cpu).err().unwrap();
    assert!(format!("{err:#}").contains("embedding model"), "{err:#}");
    // an index without vectors asked for dense retrieval says how to add them
    let ix2 = dir.path().join("ix2");
    ferrolm_rag::build_index(&ix2, &sources, &Default::default()).unwrap();
    let err = Retriever::open(&ix2, Mode::Dense, None, 1.0, &Device::Cpu).err().unwrap();
    assert!(format!("{err:#}").contains("--embed"), "{err:#}");
}

/// A Hugging Face BERT-family folder (the transformers-written fixtures of ferrolm-model) as
/// the reader's body: windows framed with the encoder's own markers (BERT's `[CLS]`/`[SEP]`,
/// RoBERTa's `<s>`/`</s>`; RoBERTa's single token type for every position), the head trained
/// on the body, the reader folder loaded back and answering.
#[test]
fn a_bert_or_roberta_folder_is_a_reader_body() {
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("../model/tests/fixtures/hf");
    for (name, cls, sep) in [("bert_tiny", "[CLS]", "[SEP]"), ("roberta_tiny", "<s>", "</s>")] {
        let base = fixtures.join(name);
        let tok = Tokenizer::from_file(&base.join("tokenizer.json")).unwrap();
        let markers = ferrolm_qa::windows::markers(&tok).unwrap();
        assert_eq!(markers, (tok.token_id(cls).unwrap(), tok.token_id(sep).unwrap()), "{name}");
        let dir = tempfile::tempdir().unwrap();
        let (train, val) = (dir.path().join("train.json"), dir.path().join("val.json"));
        squad_fixture(&train, 60, 1, 6..=12);
        squad_fixture(&val, 12, 2, 6..=12);
        let out = dir.path().join("reader");
        let mut cfg = stage(40);
        cfg.reader.max_len = 48;
        let rep = run_qa_train(&base, &out, std::slice::from_ref(&train), std::slice::from_ref(&val), cfg, true, &Device::Cpu)
            .unwrap_or_else(|e| panic!("{name}: {e:#}"));
        assert_eq!(rep.val_questions, 12, "{name}");
        let reader = LoadedReader::load(&out, &Device::Cpu).unwrap();
        // the saved reader keeps the body's configuration (post-norm BERT blocks) and markers
        assert!(reader.reader.body.config().post_norm, "{name}");
        assert_eq!(ferrolm_qa::windows::markers(&reader.tok).unwrap(), markers, "{name}");
        let a = reader.answer("which word follows zz?", &["red sky blue river.", "cat dog zz moon bird."]).unwrap();
        assert!(a.context < 2, "{name}");
    }
}
