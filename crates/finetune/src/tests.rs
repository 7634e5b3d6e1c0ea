//! End-to-end tests on generated fixtures: a tiny tokenizer and an untrained tiny model
//! saved as a run folder stand in for a pretrained base.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor, Var};
use candle_nn::{VarBuilder, VarMap};
use ferrolm_model::attention::MaskSpec;
use ferrolm_kernels::IGNORE_INDEX;
use ferrolm_model::{AnyModel, ModelKind, Transformer, TransformerConfig};
use ferrolm_tokenizer::{special, BpeTrainConfig, ChatTemplate, Message, Tokenizer};
use ferrolm_train::checkpoint::{self, TrainState};
use ferrolm_train::{RunConfig, TrainConfig};

use crate::classify::{self, Classifier, ClassifyStageConfig, TrainBody};
use crate::pack::{make_batch, pack_rows, single_rows, Example};
use crate::prompt;
use crate::records::{self, OnBad};
use crate::sft::{self, SftRun, SftSources, SftStageConfig};

const WORDS: &[&str] = &["red", "blue", "green", "cat", "dog", "good", "bad", "film", "movie", "sky", "grass", "colour"];

fn fixture_tokenizer() -> Tokenizer {
    let mut text = String::from("What colour is the sky? The sky is blue. What colour is grass? Grass is green. ");
    text.push_str("Is this review positive or negative? a good film. a bad movie. positive negative. ");
    for w in WORDS {
        text.push_str(&format!("{w} {w}s the {w}. "));
    }
    Tokenizer::train_bpe(std::iter::once(text.repeat(10)), &BpeTrainConfig { vocab_size: 360, min_frequency: 2, special_tokens: special::defaults() }).unwrap()
}

fn model_cfg(tok: &Tokenizer, kind: ModelKind) -> TransformerConfig {
    TransformerConfig { kind, vocab_size: tok.vocab_size(), d_model: 32, n_layers: 2, n_heads: 4, n_kv_heads: 2, max_seq_len: 64, ..Default::default() }
}

/// An untrained model saved as a run folder (config.toml, tokenizer.json, checkpoint).
fn base_run(dir: &Path, kind: ModelKind) -> PathBuf {
    base_run_cfg(dir, model_cfg(&fixture_tokenizer(), kind))
}

fn tiny_model(tok: &Tokenizer) -> (Transformer, VarMap) {
    let vm = VarMap::new();
    let m = Transformer::new(&model_cfg(tok, ModelKind::Causal), VarBuilder::from_varmap(&vm, DType::F32, &Device::Cpu)).unwrap();
    ferrolm_model::init::init_params(&vm, 2, 11).unwrap();
    (m, vm)
}

fn convo(q: &str, a: &str) -> Vec<Message> {
    vec![Message::user(q), Message::assistant(a)]
}

fn example(tok: &Tokenizer, q: &str, a: &str) -> Example {
    let (ids, loss) = prompt::encode_for_training(tok, &ChatTemplate::default(), &convo(q, a), 0);
    Example { ids, loss }
}

fn write_file(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::File::create(&p).unwrap().write_all(text.as_bytes()).unwrap();
    p
}

#[test]
fn prompt_tokens_get_zero_gradient() {
    let tok = fixture_tokenizer();
    let exs = vec![example(&tok, "What colour is the sky?", "The sky is blue."), example(&tok, "What colour is grass?", "Grass is green.")];
    for (rows, segmented) in [(pack_rows(&exs, 64), true), (single_rows(&exs), false)] {
        let refs: Vec<_> = rows.iter().collect();
        let b = make_batch(&refs, segmented, prompt::pad_id(&tok), &Device::Cpu).unwrap();
        let (nb, t) = b.inputs.dims2().unwrap();
        let v = tok.vocab_size();
        // Stand-in for the model's logits at every position; the SFT loss path selects the
        // scored rows and applies the fused cross-entropy, exactly as SftTask does.
        let all = Var::from_tensor(&Tensor::randn(0f32, 1.0, (nb * t, v), &Device::Cpu).unwrap()).unwrap();
        let loss = ferrolm_kernels::cross_entropy(&all.as_tensor().index_select(&b.scored, 0).unwrap(), &b.targets).unwrap();
        let g: Vec<Vec<f32>> = loss.backward().unwrap().get(&all).unwrap().to_vec2().unwrap();
        let targets: Vec<u32> = refs.iter().flat_map(|r| {
            let mut v = r.targets.clone();
            v.resize(t, IGNORE_INDEX);
            v
        }).collect();
        let (mut zero, mut live) = (0, 0);
        for (pos, row) in g.iter().enumerate() {
            let norm: f32 = row.iter().map(|x| x.abs()).sum();
            if targets[pos] == IGNORE_INDEX {
                assert_eq!(norm, 0.0, "prompt/padding position {pos} got gradient");
                zero += 1;
            } else {
                assert!(norm > 0.0, "answer position {pos} got no gradient");
                live += 1;
            }
        }
        assert!(zero > live && live > 0, "{zero} prompt positions, {live} answer positions");
        // and the answer targets are exactly the answer's tokens + end markers
        let answer: Vec<u32> = b.targets.to_vec1().unwrap();
        let want: Vec<u32> = exs.iter().flat_map(|e| e.ids.iter().zip(&e.loss).skip(1).filter(|(_, &l)| l).map(|(&i, _)| i)).collect();
        let (mut a, mut w) = (answer.clone(), want.clone());
        a.sort();
        w.sort();
        assert_eq!(a, w);
        let decoded = tok.decode(&exs[0].ids.iter().zip(&exs[0].loss).filter(|(_, &l)| l).map(|(&i, _)| i).collect::<Vec<_>>());
        assert_eq!(decoded, "The sky is blue.<|end|>");
    }
}

#[test]
fn sft_loss_is_the_mean_answer_token_nll() {
    let tok = fixture_tokenizer();
    let (m, _) = tiny_model(&tok);
    let exs = vec![example(&tok, "What colour is the sky?", "The sky is blue."), example(&tok, "a good film?", "positive")];
    let rows = pack_rows(&exs, 64);
    let refs: Vec<_> = rows.iter().collect();
    let b = make_batch(&refs, true, prompt::pad_id(&tok), &Device::Cpu).unwrap();
    let logits = sft::scored_logits(&m, &b.inputs, &b.mask, &b.scored, None).unwrap();
    let loss = ferrolm_kernels::cross_entropy(&logits, &b.targets).unwrap().to_scalar::<f32>().unwrap();
    // one example at a time, full-sequence scores, answer positions only
    let (mut sum, mut n) = (0f32, 0);
    for e in &exs {
        let s = ferrolm_infer::generate::score(&m, &e.ids).unwrap();
        for (lp, &on) in s.iter().zip(&e.loss[1..]) {
            if on {
                sum -= lp;
                n += 1;
            }
        }
    }
    assert!((loss - sum / n as f32).abs() < 1e-4, "{loss} vs {}", sum / n as f32);
}

#[test]
fn packed_examples_do_not_see_each_other() {
    let tok = fixture_tokenizer();
    let (m, _) = tiny_model(&tok);
    let a = example(&tok, "What colour is the sky?", "The sky is blue.");
    let b1 = example(&tok, "a good film?", "positive");
    let b2 = example(&tok, "a bad movie?", "negative");
    let logits_of = |exs: &[&Example], segmented: bool| -> Vec<Vec<f32>> {
        let mut row = crate::pack::Row { inputs: vec![], targets: vec![], segments: vec![] };
        for (s, e) in exs.iter().enumerate() {
            row.inputs.extend_from_slice(&e.ids[..e.width()]);
            row.targets.extend_from_slice(&e.ids[1..]);
            row.segments.extend(std::iter::repeat_n(s as u32, e.width()));
        }
        let b = make_batch(&[&row], segmented, 1, &Device::Cpu).unwrap();
        let x = b.inputs.clone();
        m.forward(&x, &b.mask, None).unwrap().squeeze(0).unwrap().to_vec2().unwrap()
    };
    let w = a.width();
    let close = |x: &[Vec<f32>], y: &[Vec<f32>], tol: f32| x.iter().zip(y).all(|(p, q)| p.iter().zip(q).all(|(u, v)| (u - v).abs() <= tol));
    // A first, then B: A's outputs are bit-identical whatever B holds.
    let ab1 = logits_of(&[&a, &b1], true);
    let ab2 = logits_of(&[&a, &b2], true);
    assert!(close(&ab1[..w], &ab2[..w], 0.0));
    // B first, then A: A's outputs equal A alone (RoPE: only relative positions matter).
    let alone = logits_of(&[&a], true);
    let b1a = logits_of(&[&b1, &a], true);
    let b2a = logits_of(&[&b2, &a], true);
    let wb = b1.width();
    assert!(close(&b1a[wb..], &alone, 1e-4));
    assert!(close(&b2a[b2.width()..], &alone, 1e-4));
    // Without segments the second example does see the first: the test can fail.
    let leaky = logits_of(&[&b1, &a], false);
    assert!(!close(&leaky[wb..], &alone, 1e-3));
    let _ = MaskSpec::causal();
}

fn instruction_fixture(dir: &Path) -> PathBuf {
    let mut lines = Vec::new();
    for i in 0..48 {
        let w = WORDS[i % WORDS.len()];
        lines.push(serde_json::json!({"instruction": format!("Repeat the word {w}."), "input": "", "output": format!("{w} {w}")}).to_string());
        if i % 3 == 0 {
            lines.push(serde_json::json!({"messages": [{"role": "user", "content": format!("Say {w}")}, {"role": "assistant", "content": w},
                {"role": "user", "content": "again"}, {"role": "assistant", "content": format!("{w}s")}]}).to_string());
        }
    }
    lines.insert(5, "{\"instruction\": \"broken\", \"output\": \"\"}".into());
    write_file(dir, "instr.jsonl", &(lines.join("\n") + "\n"))
}

fn labelled_fixture(dir: &Path, name: &str, n: usize, seed: usize) -> PathBuf {
    let mut lines = Vec::new();
    for i in 0..n {
        let pos = (i * 7 + seed).is_multiple_of(2);
        // The filler words vary and are independent of the label in both splits (an earlier
        // fixture had one filler per split: a shift that a fine-tuned body could latch onto).
        let filler = WORDS[(i * 3 + i / 5 + seed) % 5];
        let text = format!("the {filler} {} {}", WORDS[(i / 2 + seed) % 4], if pos { "good film" } else { "bad movie" });
        lines.push(serde_json::json!({"text": text, "label": if pos { "positive" } else { "negative" }}).to_string());
    }
    write_file(dir, name, &(lines.join("\n") + "\n"))
}

fn sft_cfg(steps: usize) -> SftStageConfig {
    let mut c = SftStageConfig::default();
    c.train.max_steps = steps;
    c.train.batch_size = 4;
    c.train.lr = 5e-3;
    c.train.min_lr = 5e-4;
    c.train.warmup_steps = 2;
    c.train.eval_interval = 0;
    c.train.log_interval = 5;
    c.sft.val_fraction = 0.2;
    c.sft.samples = 2;
    c.sft.sample_max_tokens = 8;
    c
}

#[test]
fn tiny_sft_run_end_to_end() {
    let dir = tempfile::tempdir().unwrap();
    let base = base_run(&dir.path().join("base"), ModelKind::Causal);
    let data = instruction_fixture(dir.path());
    let out = dir.path().join("sft");
    let rep = sft::run_sft(SftRun { base: &base, out: &out, sources: SftSources { data: vec![data.clone()], ..Default::default() }, cfg: sft_cfg(30), quiet: true, device: &Device::Cpu }).unwrap();
    assert_eq!(rep.data.bad, 1);
    assert!(rep.data.examples[0].contains("instr.jsonl:6: field \"output\" is empty"), "{:?}", rep.data.examples);
    assert!(rep.tokens.rows < rep.tokens.train_examples, "packing put several examples in a row");
    assert!(rep.val_loss_after < 0.7 * rep.val_loss_before, "held-out loss {} -> {}", rep.val_loss_before, rep.val_loss_after);
    for f in ["config.toml", "sft.toml", "tokenizer.json", "chat_template.json", "metrics.jsonl", "loss.svg", "samples.md", "samples.jsonl", "data_report.json", "sft_report.json"] {
        assert!(out.join(f).is_file(), "missing {f}");
    }
    // the folder is a normal run folder: generation tools load it
    let (_, m, _) = sft::load_decoder(&out, &Device::Cpu).unwrap();
    let tok = prompt::load_tokenizer(&out).unwrap();
    let tpl = prompt::load_template(&out).unwrap();
    sft::answer(&m, &tok, &tpl, &[Message::user("Repeat the word dog.")], 6, Default::default()).unwrap();
    // --on-bad-record fail stops at the malformed line
    let mut strict = sft_cfg(2);
    strict.sft.on_bad_record = OnBad::Fail;
    let err = sft::run_sft(SftRun { base: &base, out: &dir.path().join("strict"), sources: SftSources { data: vec![data], ..Default::default() }, cfg: strict, quiet: true, device: &Device::Cpu }).unwrap_err();
    assert!(format!("{err:#}").contains("instr.jsonl:6"), "{err:#}");
}

#[test]
fn sft_from_labelled_data_reports_label_accuracy() {
    let dir = tempfile::tempdir().unwrap();
    let base = base_run(&dir.path().join("base"), ModelKind::Causal);
    let train = labelled_fixture(dir.path(), "train.jsonl", 60, 0);
    let val = labelled_fixture(dir.path(), "val.jsonl", 20, 1);
    let mut cfg = sft_cfg(40);
    cfg.sft.labels = vec!["positive".into(), "negative".into()];
    cfg.sft.template = "Is this review {labels}?\n{text}".into();
    cfg.sft.packing = false;
    let out = dir.path().join("sft");
    let rep = sft::run_sft(SftRun { base: &base, out: &out, sources: SftSources { labelled: vec![train], val_labelled: vec![val], ..Default::default() }, cfg, quiet: true, device: &Device::Cpu }).unwrap();
    let after = rep.label_accuracy_after.unwrap();
    assert!(rep.label_accuracy_before.is_some());
    assert!(after >= 0.9, "label accuracy after tuning {after}");
    let metrics = std::fs::read_to_string(out.join("metrics.jsonl")).unwrap();
    assert!(metrics.contains("val_label_accuracy"));
}

#[test]
fn chat_loop_records_ratings_and_preferences() {
    let dir = tempfile::tempdir().unwrap();
    let tok = fixture_tokenizer();
    let (m, _) = tiny_model(&tok);
    let tpl = ChatTemplate::default();
    let cfg = crate::chat::ChatConfig {
        max_tokens: 6,
        sampling: ferrolm_infer::SamplingConfig { temperature: 0.0, ..Default::default() },
        system: "Be brief.".into(),
        compare_temperature: 1.0,
        preferences: dir.path().join("fb/preferences.jsonl"),
        ratings: dir.path().join("fb/ratings.jsonl"),
    };
    let script = "/rate 3\nWhat colour is the sky?\n/compare\nmaybe\nb\n/rate 4 nice one\n/rate 9\n/compare is grass green?\nskip\n/reset\n/bogus\n/quit\nnever read\n";
    let mut input = std::io::Cursor::new(script.as_bytes());
    let mut out = Vec::new();
    let format = crate::prompt::ChatFormat::from_marker(tpl, &tok);
    let mut s = crate::chat::ChatSession::new(&m, &tok, &format, cfg.clone());
    let stats = s.run(&mut input, &mut out).unwrap();
    let out = String::from_utf8(out).unwrap();
    assert_eq!(stats, crate::chat::ChatStats { turns: 3, ratings: 1, preferences: 1 }, "{out}");
    for want in ["nothing to rate yet", "[A] ", "[B] ", "answer a, b or skip", "usage: /rate", "(conversation cleared)", "unknown command /bogus"] {
        assert!(out.contains(want), "missing {want:?} in\n{out}");
    }
    assert_eq!(s.history(), &[Message::system("Be brief.")], "reset keeps the system message");
    let (prefs, rep) = records::read_records(std::slice::from_ref(&cfg.preferences), OnBad::Fail, records::parse_preference).unwrap();
    assert_eq!(rep.kept, 1);
    let p = &prefs[0].value;
    assert_eq!(p.prompt.last().unwrap(), &Message::user("What colour is the sky?"));
    assert_eq!(p.prompt[0], Message::system("Be brief."));
    let ratings = std::fs::read_to_string(&cfg.ratings).unwrap();
    let r: serde_json::Value = serde_json::from_str(ratings.trim()).unwrap();
    assert_eq!(r["rating"], 4);
    assert_eq!(r["comment"], "nice one");
    assert_eq!(r["response"].as_str().unwrap(), p.chosen, "the preferred answer joined the conversation and was rated");
}

fn classify_cfg(body: &str, steps: usize) -> ClassifyStageConfig {
    let mut c = ClassifyStageConfig::default();
    c.train.max_steps = steps;
    c.train.batch_size = 8;
    c.train.lr = 1e-2;
    c.train.min_lr = 1e-3;
    c.train.warmup_steps = 2;
    c.train.eval_interval = 0;
    c.classify.train_body = body.into();
    c
}

#[test]
fn tiny_classify_runs_decoder_and_masked_lm() {
    let dir = tempfile::tempdir().unwrap();
    let train = labelled_fixture(dir.path(), "train.jsonl", 80, 0);
    let val = labelled_fixture(dir.path(), "val.jsonl", 30, 1);
    let dec = base_run(&dir.path().join("dec"), ModelKind::Causal);
    let mlm = base_run(&dir.path().join("mlm"), ModelKind::MaskedLm);
    for (base, body, pooling, buckets) in [(&dec, "frozen", "auto", 0), (&dec, "full", "mean", 0), (&mlm, "top:1", "auto", 0), (&mlm, "frozen", "mean", 512)] {
        let out = dir.path().join(format!("clf-{}-{}-{pooling}-{buckets}", base.file_name().unwrap().to_string_lossy(), body.replace(':', "")));
        let mut cfg = classify_cfg(body, 40);
        cfg.classify.pooling = pooling.into();
        cfg.classify.ngram_buckets = buckets;
        let rep = classify::run_classify_train(base, &out, std::slice::from_ref(&train), std::slice::from_ref(&val), cfg, true, &Device::Cpu).unwrap();
        // the bag-of-words baseline is fitted on the same split and reported beside
        assert_eq!(rep.bow_baseline.as_ref().map(|b| b.n), Some(30));
        assert!(out.join("bow_baseline.json").is_file());
        assert_eq!(rep.val_examples, 30);
        assert!(rep.after.accuracy >= 0.9, "{body} on {}: accuracy {} (before {})", base.display(), rep.after.accuracy, rep.before.accuracy);
        assert!(out.join("confusion.svg").is_file() && out.join("eval.json").is_file());
        let (clf, tok, info) = Classifier::load(&out, &Device::Cpu).unwrap();
        let probs = classify::predict_texts(&clf, &tok, info.max_len, &["a dog good film".to_string()]).unwrap();
        assert!((probs[0].iter().sum::<f32>() - 1.0).abs() < 1e-5);
    }
    // the baseline on the same split
    let cc = classify::ClassifyConfig::default();
    let (tr, va, _) = classify::train_val(std::slice::from_ref(&train), &[], &cc).unwrap();
    let labels = classify::label_set(&cc, &tr);
    let m = crate::baseline::BowModel::train(&tr, &labels, &Default::default()).unwrap();
    assert_eq!(m.evaluate(&va).unwrap().accuracy, 1.0);
}

#[test]
fn trainable_parameters_per_body_mode() {
    let dir = tempfile::tempdir().unwrap();
    let dec = base_run(&dir.path().join("dec"), ModelKind::Causal);
    let (_, clf, vm) = Classifier::from_pretrained(&dec, vec!["a".into(), "b".into()], &classify::ClassifyConfig { ngram_buckets: 64, ..Default::default() }, 1, &Device::Cpu).unwrap();
    let names: Vec<String> = vm.data().lock().unwrap().keys().cloned().collect();
    let count = |mode| names.iter().filter(|n| clf.trainable(n, mode)).count();
    let head = count(TrainBody::Frozen);
    assert_eq!(head, 3, "frozen trains only cls_head.weight and .bias and cls_wide.weight");
    let top = count(TrainBody::Top(1));
    let full = count(TrainBody::Full);
    assert!(head < top && top < full, "{head} < {top} < {full}");
    assert!(names.iter().filter(|n| clf.trainable(n, TrainBody::Top(1))).all(|n| n.starts_with("cls_") || n.contains("blocks.1.") || n.contains("ln_f")));
    assert!("top:0".parse::<TrainBody>().is_err() && "half".parse::<TrainBody>().is_err());
}

#[test]
fn ngram_ids_are_distinct_hashed_unigrams_and_bigrams() {
    let g = classify::ngram_ids(&[0, 5, 6, 5, 6], 1, 1 << 20);
    // unigrams {5, 6}, bigrams {(5,6), (6,5)}: four distinct features (collisions are
    // vanishingly unlikely in 2^20 buckets)
    assert_eq!(g.len(), 4);
    assert!(g.windows(2).all(|w| w[0] < w[1]));
    assert_eq!(classify::ngram_ids(&[0, 5, 6], 1, 0), Vec::<u32>::new());
    assert!(classify::ngram_ids(&[0, 5, 6, 7], 1, 8).iter().all(|&b| b < 8));
    assert!("mean".parse::<classify::Pooling>().is_ok() && "max".parse::<classify::Pooling>().is_err());
}

#[test]
fn classifier_features_do_not_depend_on_padding() {
    // A text's features must be the same alone and right-padded beside a longer text, for
    // every body and pooling: training batches and evaluation batches pad differently.
    let dir = tempfile::tempdir().unwrap();
    let tok = fixture_tokenizer();
    let short = classify::encode_text(&tok, "a good film", 64);
    let long = classify::encode_text(&tok, "the dog saw a very bad movie and a good film too", 64);
    assert!(long.len() > short.len() + 3);
    for kind in [ModelKind::Causal, ModelKind::MaskedLm] {
        let base = base_run(&dir.path().join(format!("{kind:?}")), kind);
        for pooling in ["auto", "first", "last", "mean"] {
            let cc = classify::ClassifyConfig { pooling: pooling.into(), ..Default::default() };
            let (_, clf, _) = Classifier::from_pretrained(&base, vec!["a".into(), "b".into()], &cc, 3, &Device::Cpu).unwrap();
            let pad = 0;
            let alone = Tensor::from_vec(short.clone(), (1, short.len()), &Device::Cpu).unwrap();
            let f1 = clf.features(&alone, &[short.len()], None).unwrap().squeeze(0).unwrap();
            let mut padded = short.clone();
            padded.resize(long.len(), pad);
            let both = Tensor::from_vec([padded, long.clone()].concat(), (2, long.len()), &Device::Cpu).unwrap();
            let f2 = clf.features(&both, &[short.len(), long.len()], None).unwrap().get(0).unwrap();
            let diff = (f1 - f2).unwrap().abs().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap();
            assert!(diff < 1e-4, "{kind:?}/{pooling}: padding changed the features by {diff}");
        }
    }
}


/// An untrained causal base for the LoRA tests. A random base at GPT-2's init scale has
/// logits of ±0.1 that frozen embeddings keep there whatever the blocks do; larger
/// embeddings give the adapters room to matter, as a pretrained base does.
fn lora_base_run(dir: &Path) -> PathBuf {
    let base = base_run(dir, ModelKind::Causal);
    let (_, _, vm) = sft::load_decoder(&base, &Device::Cpu).unwrap();
    let wte = vm.data().lock().unwrap()["wte.weight"].clone();
    wte.set(&(wte.as_tensor() * 8.0).unwrap()).unwrap();
    let state = TrainState { format: checkpoint::FORMAT_VERSION, step: 0, adam_t: 0, seed: 7, tokens_seen: 0, elapsed_secs: 0.0, last_train_loss: None };
    checkpoint::save(&base, &vm, HashMap::new(), &state, 1).unwrap();
    base
}

#[test]
fn lora_sft_trains_only_adapters_and_the_run_loads_merged() {
    let dir = tempfile::tempdir().unwrap();
    let base = lora_base_run(&dir.path().join("base"));
    let data = instruction_fixture(dir.path());
    let out = dir.path().join("lora");
    let mut cfg = sft_cfg(30);
    cfg.lora = ferrolm_model::lora::LoraConfig { rank: 4, alpha: 32.0, dropout: 0.05, targets: vec!["all".into()], quant: None };
    cfg.train.lr = 2e-2;
    let rep = sft::run_sft(SftRun { base: &base, out: &out, sources: SftSources { data: vec![data], ..Default::default() }, cfg, quiet: true, device: &Device::Cpu }).unwrap();
    assert!(rep.val_loss_after < 0.8 * rep.val_loss_before, "held-out loss {} -> {}", rep.val_loss_before, rep.val_loss_after);
    // The checkpoint holds the base bit for bit, plus the adapters.
    let base_w = ferrolm_model::registry::load_tensors(&ferrolm_model::registry::latest_checkpoint(&base).unwrap().join("model.safetensors")).unwrap();
    let run_w = ferrolm_model::registry::load_tensors(&ferrolm_model::registry::latest_checkpoint(&out).unwrap().join("model.safetensors")).unwrap();
    let targets = if TransformerConfig::default().block == ferrolm_model::BlockStyle::Modern { 7 } else { 6 };
    assert_eq!(run_w.len(), base_w.len() + 2 * targets * 2, "one A and one B per target and layer");
    for (name, t) in &base_w {
        let d = (t - &run_w[name]).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap();
        assert_eq!(d, 0.0, "base weight {name} changed");
    }
    assert!(run_w.keys().any(|k| k.contains(".lora_b.")) && out.join("lora.toml").is_file());
    for f in ["adapter/adapter_model.safetensors", "adapter/adapter_config.json"] {
        assert!(out.join(f).is_file(), "missing {f}");
    }
    // Loading the run folds the adapters in: no adapter variables, and the logits of the
    // base with the trained adapters attached.
    let (_, merged, vm) = sft::load_decoder(&out, &Device::Cpu).unwrap();
    assert!(vm.data().lock().unwrap().keys().all(|k| !ferrolm_model::lora::is_adapter(k)));
    let (_, mut adapted, avm) = sft::load_decoder(&base, &Device::Cpu).unwrap();
    let ids = Tensor::new(&[1u32, 5, 9, 14, 3], &Device::Cpu).unwrap().unsqueeze(0).unwrap();
    let l = |m: &ferrolm_model::Transformer| m.forward(&ids, &MaskSpec::causal(), None).unwrap();
    let max = |t: Tensor| t.abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap();
    let plain = l(&adapted);
    let lcfg = ferrolm_model::lora::read_run_config(&out).unwrap().unwrap();
    ferrolm_model::lora::attach(&mut adapted, &avm, &lcfg, 0).unwrap();
    ferrolm_model::registry::load_weights(&avm, &ferrolm_model::registry::latest_checkpoint(&out).unwrap().join("model.safetensors")).unwrap();
    assert!(max((l(&merged) - l(&adapted)).unwrap()) < 1e-4, "merged = base + adapters");
    assert!(max((l(&merged) - plain).unwrap()) > 1e-3, "the adapters changed the model");
}

/// QLoRA (`lora.quant`): the adapters train on the base's block weights held quantized;
/// the checkpoint holds the adapters and what stayed f32, not the quantized weights; the
/// run loads as it trained (its base quantized again, adapters kept: the logits of an f32
/// model with the quantized values plus the adapters), and folded into the f32 base for
/// export. A base that no longer fits the run is a clear error.
#[test]
fn qlora_sft_trains_adapters_on_a_quantized_base_and_loads_as_it_trained() {
    let dir = tempfile::tempdir().unwrap();
    let base = lora_base_run(&dir.path().join("base"));
    let data = instruction_fixture(dir.path());
    let out = dir.path().join("qlora");
    let mut cfg = sft_cfg(30);
    cfg.lora = ferrolm_model::lora::LoraConfig { rank: 4, alpha: 32.0, dropout: 0.05, targets: vec!["all".into()], quant: Some(ferrolm_model::QuantKind::Q8_0) };
    cfg.train.lr = 2e-2;
    let rep = sft::run_sft(SftRun { base: &base, out: &out, sources: SftSources { data: vec![data], ..Default::default() }, cfg, quiet: true, device: &Device::Cpu }).unwrap();
    assert!(rep.val_loss_after < 0.8 * rep.val_loss_before, "held-out loss {} -> {}", rep.val_loss_before, rep.val_loss_after);
    let run_w = ferrolm_model::registry::load_tensors(&ferrolm_model::registry::latest_checkpoint(&out).unwrap().join("model.safetensors")).unwrap();
    assert!(!run_w.contains_key("decoder.blocks.0.attn.qkv.weight") && !run_w.contains_key("decoder.blocks.1.mlp.proj.weight"), "no quantized weights in the checkpoint");
    assert!(run_w.contains_key("wte.weight") && run_w.contains_key("decoder.blocks.1.mlp.proj.lora_b.down"));
    let lora_toml = std::fs::read_to_string(out.join("lora.toml")).unwrap();
    assert!(lora_toml.contains("quant = \"q8_0\"") && lora_toml.contains(&std::fs::canonicalize(&base).unwrap().display().to_string()), "{lora_toml}");

    // loaded as trained: the f32 model with the quantized values and the adapters
    let ids = Tensor::new(&[1u32, 5, 9, 14, 3], &Device::Cpu).unwrap().unsqueeze(0).unwrap();
    let l = |m: &ferrolm_model::Transformer| m.forward(&ids, &MaskSpec::causal(), None).unwrap();
    let max = |t: Tensor| t.abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap();
    let (_, trained, _) = sft::load_decoder(&out, &Device::Cpu).unwrap();
    let (_, mut reference, rvm) = sft::load_decoder(&base, &Device::Cpu).unwrap();
    let plain = l(&reference);
    {
        let data = rvm.data().lock().unwrap();
        for (name, v) in data.iter() {
            if name.starts_with("decoder.blocks.") && name.ends_with(".weight") && v.rank() == 2 {
                let (r, k) = v.dims2().unwrap();
                let vals = v.as_tensor().flatten_all().unwrap().to_vec1::<f32>().unwrap();
                let w = ferrolm_model::QuantWeights::quantize(ferrolm_model::QuantKind::Q8_0, &vals, r, k).unwrap();
                v.set(&Tensor::from_vec(w.dequantize(), (r, k), &Device::Cpu).unwrap()).unwrap();
            }
        }
    }
    let mut plain_cfg = ferrolm_model::lora::read_run_config(&out).unwrap().unwrap();
    plain_cfg.quant = None;
    ferrolm_model::lora::attach(&mut reference, &rvm, &plain_cfg, 0).unwrap();
    // (the QLoRA checkpoint lacks the block weights: set what it has)
    ferrolm_model::registry::load_some_weights(&rvm, &ferrolm_model::registry::latest_checkpoint(&out).unwrap().join("model.safetensors")).unwrap();
    let d = max((l(&trained) - l(&reference)).unwrap());
    assert!(d < 2e-2 * max(l(&reference)).max(1.0), "loaded QLoRA run vs f32 with the quantized values: {d}");
    assert!(max((l(&trained) - plain).unwrap()) > 1e-2, "the adapters changed the model");

    // folded into the f32 base (export)
    let merged = ferrolm_model::registry::load_model_with(&out, &Device::Cpu, true).unwrap();
    assert!(merged.varmap.data().lock().unwrap().keys().all(|k| !ferrolm_model::lora::is_adapter(k)));
    assert!(merged.varmap.data().lock().unwrap().contains_key("decoder.blocks.0.attn.qkv.weight"));
    let merged = merged.model.into_decoder("test").unwrap();
    let dm = max((l(&merged) - l(&trained)).unwrap());
    assert!(dm < 5e-2 * max(l(&trained)).max(1.0), "merged into f32 vs as trained: {dm}");

    // a base that no longer fits
    let other = base_run_cfg(&dir.path().join("other"), TransformerConfig { d_model: 64, ..model_cfg(&fixture_tokenizer(), ModelKind::Causal) });
    let text = std::fs::read_to_string(out.join("lora.toml")).unwrap().replace(&std::fs::canonicalize(&base).unwrap().display().to_string(), &std::fs::canonicalize(&other).unwrap().display().to_string());
    std::fs::write(out.join("lora.toml"), text).unwrap();
    let err = format!("{:#}", ferrolm_model::load_model(&out, &Device::Cpu).err().expect("a base of another shape is refused"));
    assert!(err.contains("is not the model this run trained"), "{err}");
}

/// A base run from an explicit config (e.g. a BERT-shaped masked LM: GELU MLP, post-norm,
/// pooler).
fn base_run_cfg(dir: &Path, model: TransformerConfig) -> PathBuf {
    let tok = fixture_tokenizer();
    let cfg = RunConfig::transformer(model, TrainConfig::default(), Default::default());
    let (_, vm) = AnyModel::build_fresh(&cfg.model, &Device::Cpu).unwrap();
    ferrolm_model::init_weights(&cfg.model, &vm, 7).unwrap();
    std::fs::create_dir_all(dir).unwrap();
    let state = TrainState { format: checkpoint::FORMAT_VERSION, step: 0, adam_t: 0, seed: 7, tokens_seen: 0, elapsed_secs: 0.0, last_train_loss: None };
    checkpoint::save(dir, &vm, HashMap::new(), &state, 1).unwrap();
    ferrolm_common::write_atomic(dir.join("config.toml"), cfg.to_toml()).unwrap();
    tok.save(&dir.join("tokenizer.json")).unwrap();
    dir.to_path_buf()
}

/// Labelled texts whose label words come first and whose last tokens are label-free filler:
/// a head on the untrained body's last-token features starts near chance, and the body
/// (here its adapters) has to carry the label to where the head reads it.
fn label_first_fixture(dir: &Path, name: &str, n: usize, seed: usize) -> PathBuf {
    let mut lines = Vec::new();
    for i in 0..n {
        let pos = (i * 7 + seed).is_multiple_of(2);
        let text = format!("{} the {} {}", if pos { "good film" } else { "bad movie" }, WORDS[(i * 3 + i / 5 + seed) % 5], WORDS[(i / 2 + seed) % 4]);
        lines.push(serde_json::json!({"text": text, "label": if pos { "positive" } else { "negative" }}).to_string());
    }
    write_file(dir, name, &(lines.join("\n") + "\n"))
}

fn run_tensors(dir: &Path) -> HashMap<String, Tensor> {
    ferrolm_model::registry::load_tensors(&ferrolm_model::registry::latest_checkpoint(dir).unwrap().join("model.safetensors")).unwrap()
}

fn flat(t: &Tensor) -> Vec<f32> {
    t.flatten_all().unwrap().to_vec1::<f32>().unwrap()
}

/// LoRA classification on a decoder (PEFT SEQ_CLS `score`, no bias) and on a BERT-shaped
/// masked LM (`classifier` with its bias, adapters under BERT's module names): accuracy rises
/// from chance, the body stays bit-identical, merged = unmerged, PEFT key names.
#[test]
fn lora_classify_on_decoder_and_bert_body() {
    let dir = tempfile::tempdir().unwrap();
    let train = label_first_fixture(dir.path(), "train.jsonl", 80, 0);
    let val = label_first_fixture(dir.path(), "val.jsonl", 30, 1);
    let tok = fixture_tokenizer();
    let dec = base_run(&dir.path().join("dec"), ModelKind::Causal);
    let bert_cfg = TransformerConfig { block: ferrolm_model::BlockStyle::Gpt2, post_norm: true, pooler: true, n_kv_heads: 4, ..model_cfg(&tok, ModelKind::MaskedLm) };
    let bert = base_run_cfg(&dir.path().join("bert"), bert_cfg);
    let lcfg = ferrolm_model::lora::LoraConfig { rank: 4, alpha: 8.0, dropout: 0.05, targets: vec!["all".into()], quant: None };
    for (base, head, prefix) in [(&dec, "score", "base_model.model.model.layers."), (&bert, "classifier", "base_model.model.bert.encoder.layer.")] {
        let out = dir.path().join(format!("lora-{head}"));
        let mut cfg = classify_cfg("full", 60);
        cfg.lora = lcfg.clone();
        let rep = classify::run_classify_train(base, &out, std::slice::from_ref(&train), std::slice::from_ref(&val), cfg, true, &Device::Cpu).unwrap();
        println!("LoRA classify ({head} head): held-out accuracy {:.3} before training, {:.3} after (30 texts, 2 balanced labels)", rep.before.accuracy, rep.after.accuracy);
        assert!(rep.after.accuracy >= 0.9 && rep.after.accuracy > rep.before.accuracy, "{head}: {} -> {}", rep.before.accuracy, rep.after.accuracy);
        // the body's weights are the base's, bit for bit
        let (b, r) = (run_tensors(base), run_tensors(&out));
        for (name, t) in &b {
            assert_eq!(flat(t), flat(&r[name]), "{head}: base weight {name} moved");
        }
        assert!(r.iter().any(|(n, t)| n.contains(".lora_b.") && flat(t).iter().any(|&v| v != 0.0)));
        if head == "score" {
            assert!(flat(&r["cls_head.bias"]).iter().all(|&v| v == 0.0), "a decoder's score has no bias: ours stays 0");
        }
        // PEFT SEQ_CLS files
        let a = out.join("adapter");
        let pc: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(a.join("adapter_config.json")).unwrap()).unwrap();
        assert_eq!((pc["task_type"].as_str(), pc["modules_to_save"].clone()), (Some("SEQ_CLS"), serde_json::json!([head])));
        let pt = candle_core::safetensors::load(a.join("adapter_model.safetensors"), &Device::Cpu).unwrap();
        assert_eq!(flat(&pt[&format!("base_model.model.{head}.weight")]), flat(&r["cls_head.weight"]));
        assert_eq!(pt.contains_key(&format!("base_model.model.{head}.bias")), head == "classifier");
        let n_heads = if head == "classifier" { 2 } else { 1 };
        let targets = if head == "classifier" { 6 } else { 7 };
        assert_eq!(pt.len(), 2 * targets * 2 + n_heads, "{:?}", pt.keys());
        assert!(pt.keys().all(|k| k.starts_with(&format!("base_model.model.{head}.")) || (k.starts_with(prefix) && (k.ends_with(".lora_A.weight") || k.ends_with(".lora_B.weight")))), "{:?}", pt.keys());
        if head == "classifier" {
            assert!(pt.contains_key("base_model.model.bert.encoder.layer.1.attention.self.query.lora_A.weight"));
            assert_eq!(pc["target_modules"], serde_json::json!(["query", "key", "value", "output.dense", "intermediate.dense"]));
        }
        // merged weights give the unmerged probabilities
        let texts = ["a dog good film".to_string(), "the sky bad movie".to_string()];
        let (m, tok, info) = Classifier::load_with(&out, &Device::Cpu, true).unwrap();
        let (u, _, _) = Classifier::load_with(&out, &Device::Cpu, false).unwrap();
        let (pm, pu) = (classify::predict_texts(&m, &tok, info.max_len, &texts).unwrap(), classify::predict_texts(&u, &tok, info.max_len, &texts).unwrap());
        for (x, y) in pm.iter().flatten().zip(pu.iter().flatten()) {
            assert!((x - y).abs() < 1e-5, "{head}: merged {pm:?} vs unmerged {pu:?}");
        }
    }
    // unsupported combinations are config errors naming the key
    let err = |f: &dyn Fn(&mut ClassifyStageConfig), base: &Path| {
        let mut cfg = classify_cfg("full", 1);
        cfg.lora = lcfg.clone();
        f(&mut cfg);
        classify::run_classify_train(base, &dir.path().join("bad"), std::slice::from_ref(&train), std::slice::from_ref(&val), cfg, true, &Device::Cpu).unwrap_err().to_string()
    };
    assert!(err(&|c| c.classify.train_body = "frozen".into(), &dec).contains("classify.train_body"));
    assert!(err(&|c| c.classify.ngram_buckets = 64, &dec).contains("classify.ngram_buckets"));
    assert!(err(&|c| c.classify.pooling = "mean".into(), &dec).contains("classify.pooling"));
    assert!(err(&|c| c.classify.pooling = "first".into(), &bert).contains("classify.pooling"));
    // a masked LM with SwiGLU blocks has a gate BERT lacks: PEFT cannot name it
    let swiglu = base_run(&dir.path().join("mlm"), ModelKind::MaskedLm);
    let e = err(&|_| {}, &swiglu);
    assert!(e.contains("gate"), "{e}");
}

/// LoRA classification on a RoBERTa folder: the PEFT SEQ_CLS files take
/// RobertaForSequenceClassification's names — adapters under `roberta.encoder.layer.N`, the
/// head as `classifier.dense` (ferrolm's pooler, trained as PEFT trains that module) and
/// `classifier.out_proj` — and the run predicts with adapters merged as without.
#[test]
fn lora_classify_on_roberta_uses_roberta_names() {
    let dir = tempfile::tempdir().unwrap();
    let train = label_first_fixture(dir.path(), "train.jsonl", 80, 0);
    let val = label_first_fixture(dir.path(), "val.jsonl", 30, 1);
    let base = Path::new(env!("CARGO_MANIFEST_DIR")).join("../model/tests/fixtures/hf/roberta_tiny");
    let out = dir.path().join("lora-roberta");
    let mut cfg = classify_cfg("full", 60);
    cfg.lora = ferrolm_model::lora::LoraConfig { rank: 4, alpha: 8.0, dropout: 0.0, targets: vec!["all".into()], quant: None };
    let rep = classify::run_classify_train(&base, &out, std::slice::from_ref(&train), std::slice::from_ref(&val), cfg, true, &Device::Cpu).unwrap();
    println!("LoRA classify (RoBERTa): held-out accuracy {:.3} before training, {:.3} after", rep.before.accuracy, rep.after.accuracy);
    assert!(rep.after.accuracy >= 0.9 && rep.after.accuracy > rep.before.accuracy, "{} -> {}", rep.before.accuracy, rep.after.accuracy);
    let r = run_tensors(&out);
    let a = out.join("adapter");
    let pc: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(a.join("adapter_config.json")).unwrap()).unwrap();
    assert_eq!((pc["task_type"].as_str(), pc["modules_to_save"].clone()), (Some("SEQ_CLS"), serde_json::json!(["classifier"])));
    assert_eq!(pc["target_modules"], serde_json::json!(["query", "key", "value", "output.dense", "intermediate.dense"]));
    let pt = candle_core::safetensors::load(a.join("adapter_model.safetensors"), &Device::Cpu).unwrap();
    for (peft, ours) in [("dense.weight", "pooler.weight"), ("dense.bias", "pooler.bias"), ("out_proj.weight", "cls_head.weight"), ("out_proj.bias", "cls_head.bias")] {
        assert_eq!(flat(&pt[&format!("base_model.model.classifier.{peft}")]), flat(&r[ours]), "{peft}");
    }
    // the pooler trained (PEFT trains the whole classifier module); the blocks did not
    let hf = ferrolm_model::registry::load_tensors(&base.join("model.safetensors")).unwrap();
    assert_ne!(flat(&hf["roberta.pooler.dense.weight"]), flat(&r["pooler.weight"]), "the pooler (classifier.dense) did not train");
    assert_eq!(flat(&hf["roberta.encoder.layer.1.attention.self.query.weight"]), flat(&r["encoder.blocks.1.attn.qkv.weight"].narrow(0, 0, 32).unwrap()));
    assert_eq!(pt.len(), 2 * 6 * 2 + 4, "{:?}", pt.keys());
    assert!(pt.keys().all(|k| k.starts_with("base_model.model.classifier.") || (k.starts_with("base_model.model.roberta.encoder.layer.") && k.contains(".lora_"))), "{:?}", pt.keys());
    let texts = ["a dog good film".to_string(), "the sky bad movie".to_string()];
    let (m, tok, info) = Classifier::load_with(&out, &Device::Cpu, true).unwrap();
    let (u, _, _) = Classifier::load_with(&out, &Device::Cpu, false).unwrap();
    let (pm, pu) = (classify::predict_texts(&m, &tok, info.max_len, &texts).unwrap(), classify::predict_texts(&u, &tok, info.max_len, &texts).unwrap());
    for (x, y) in pm.iter().flatten().zip(pu.iter().flatten()) {
        assert!((x - y).abs() < 1e-5, "merged {pm:?} vs unmerged {pu:?}");
    }
}
