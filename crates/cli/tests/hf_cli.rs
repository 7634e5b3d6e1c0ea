//! `ferrolm score` and `ferrolm export --format hf` on the transformers-written fixtures of
//! ferrolm-model (no Python, no network).

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../model/tests/fixtures/hf").join(name)
}

fn ferrolm(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_ferrolm")).args(args).output().unwrap();
    assert!(out.status.success(), "ferrolm {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

fn score(model: &Path, text: &str) -> Value {
    serde_json::from_str(&ferrolm(&["score", "--model", model.to_str().unwrap(), "--text", text, "--json"])).unwrap()
}

/// `score` of a fixture folder's reference text gives transformers' ids and log-probs
/// (within 1e-4); returns the reference.
fn score_matches_reference(dir: &Path) -> Value {
    let r: Value = serde_json::from_str(&std::fs::read_to_string(dir.join("reference.json")).unwrap()).unwrap();
    let got = score(dir, r["text"].as_str().unwrap());
    assert_eq!(got["token_ids"], r["text_ids"]);
    let (a, b) = (got["logprobs"].as_array().unwrap(), r["text_logprobs"].as_array().unwrap());
    assert_eq!(a.len(), b.len());
    for (x, y) in a.iter().zip(b) {
        assert!((x.as_f64().unwrap() - y.as_f64().unwrap()).abs() < 1e-4, "{x} vs {y}");
    }
    r
}

#[test]
fn score_gives_transformers_ids_and_logprobs() {
    let dir = fixture("qwen2_tied");
    score_matches_reference(&dir);
}

#[test]
fn export_writes_a_folder_that_scores_the_same() {
    let out = tempfile::tempdir().unwrap();
    let dest = out.path().join("hf");
    let src = fixture("qwen2_tied");
    ferrolm(&["export", "--model", src.to_str().unwrap(), "--format", "hf", "--out", dest.to_str().unwrap()]);
    for f in ["config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "generation_config.json"] {
        assert!(dest.join(f).is_file(), "{f} missing");
    }
    let cfg: Value = serde_json::from_str(&std::fs::read_to_string(dest.join("config.json")).unwrap()).unwrap();
    assert_eq!(cfg["model_type"], "qwen2");
    let text = "the lazy dog";
    assert_eq!(score(&src, text), score(&dest, text));
    // bad input is an error, not a panic
    let e = Command::new(env!("CARGO_BIN_EXE_ferrolm")).args(["score", "--model", "/nonexistent", "--text", "x"]).output().unwrap();
    assert!(!e.status.success());
    assert!(String::from_utf8_lossy(&e.stderr).contains("nonexistent"));
}

/// A RoBERTa folder (byte-level BPE framed `<s> … </s>`, a `<mask>` token): `fill-mask`
/// gives what transformers' fill-mask pipeline gives for the same text (its top three ids
/// and scores, printed by `pipeline("fill-mask", model=...)("The quick <mask> fox.", top_k=3)`).
#[test]
fn a_roberta_folder_fills_masks_as_transformers_pipeline_does() {
    let dir = fixture("roberta_tiny");
    let out = ferrolm(&["fill-mask", "--model", dir.to_str().unwrap(), "--text", "The quick <mask> fox.", "--top-k", "3", "--json"]);
    let v: Value = serde_json::from_str(&out).unwrap();
    let want = [(287u64, 0.058449242264032364f64), (140, 0.032774925231933594), (117, 0.027647150680422783)];
    let got = v[0]["predictions"].as_array().unwrap();
    assert_eq!(got.len(), 3, "{v}");
    for (p, (id, prob)) in got.iter().zip(want) {
        assert_eq!(p["id"].as_u64(), Some(id), "{v}");
        assert!((p["probability"].as_f64().unwrap() - prob).abs() < 1e-5, "{p} vs {prob}");
    }
}

/// A Hugging Face BERT folder: `fill-mask` gives transformers' top tokens and
/// probabilities (with `[MASK]` or `<|mask|>` in the text), and `classify train` puts a head
/// on its pooled output, leaving a classifier folder that `classify predict` reads.
#[test]
fn a_bert_folder_fills_masks_and_carries_a_classifier() {
    let dir = fixture("bert_tiny");
    let d = dir.to_str().unwrap();
    let r: Value = serde_json::from_str(&std::fs::read_to_string(dir.join("reference.json")).unwrap()).unwrap();
    let text = r["texts"][1]["text"].as_str().unwrap();
    assert!(text.contains("[MASK]"));
    let out = ferrolm(&["fill-mask", "--model", d, "--text", text, "--top-k", "3", "--json"]);
    let v: Value = serde_json::from_str(&out).unwrap();
    let pos = r["texts"][1]["input_ids"].as_array().unwrap().iter().position(|x| x == 4).unwrap();
    assert_eq!((v.as_array().unwrap().len(), v[0]["position"].as_u64()), (1, Some(pos as u64)), "{v}");
    // transformers' logits at the mask: the same three tokens, the same probabilities
    let t = candle_core::safetensors::load(dir.join("reference.safetensors"), &candle_core::Device::Cpu).unwrap();
    let logits: Vec<Vec<f32>> = t["logits.1"].to_vec2().unwrap();
    let row = &logits[pos];
    let z: f64 = row.iter().map(|&x| (x as f64).exp()).sum();
    let mut order: Vec<usize> = (0..row.len()).collect();
    order.sort_by(|&a, &b| row[b].total_cmp(&row[a]));
    for (k, p) in v[0]["predictions"].as_array().unwrap().iter().enumerate() {
        assert_eq!(p["id"].as_u64(), Some(order[k] as u64), "{v}");
        let want = (row[order[k]] as f64).exp() / z;
        assert!((p["probability"].as_f64().unwrap() - want).abs() < 1e-4, "{p} vs {want}");
    }
    assert_eq!(ferrolm(&["fill-mask", "--model", d, "--text", &text.replace("[MASK]", "<|mask|>"), "--top-k", "3", "--json"]), out);

    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data.jsonl");
    let mut lines = String::new();
    for i in 0..24 {
        let (t, l) = if i % 2 == 0 { ("the quick brown fox jumps", "fox") } else { ("the lazy dog is fine today", "dog") };
        lines.push_str(&serde_json::json!({"text": format!("{t} {i}"), "label": l}).to_string());
        lines.push('\n');
    }
    std::fs::write(&data, lines).unwrap();
    let clf = tmp.path().join("clf");
    let rep: Value = serde_json::from_str(&ferrolm(&[
        "classify", "train", "--model", d, "--out", clf.to_str().unwrap(), "--data", data.to_str().unwrap(), "--quiet",
        "--set", "train.max_steps=30", "--set", "classify.pooling=\"auto\"", "--set", "classify.ngram_buckets=0", "--set", "classify.val_fraction=0.25",
    ]))
    .unwrap();
    assert!(rep["accuracy"].as_f64().is_some(), "{rep}");
    let saved = std::fs::read_to_string(clf.join("config.toml")).unwrap();
    assert!(saved.contains("post_norm = true") && saved.contains("exact_gelu = true"), "{saved}");
    let pred = ferrolm(&["classify", "predict", "--model", clf.to_str().unwrap(), "--data", data.to_str().unwrap()]);
    assert_eq!(pred.lines().count(), 24);
}

/// A Llama 2-family folder (SentencePiece BPE tokenizer): `score` gives the ids and
/// log-probs transformers gave (a leading `<s>`, byte tokens for characters outside the
/// vocabulary), and `generate` continues a prompt greedily with transformers' tokens.
#[test]
fn a_sentencepiece_llama_folder_scores_and_generates_as_transformers() {
    let dir = fixture("llama2_spm");
    score_matches_reference(&dir);
    // the table form shows each token's own text, `▁` as a space
    let table = ferrolm(&["score", "--model", dir.to_str().unwrap(), "--text", "Hello world"]);
    assert!(table.contains("\" world\""), "{table}");
}

fn gguf_meta(path: &Path) -> std::collections::HashMap<String, candle_core::quantized::gguf_file::Value> {
    let mut f = std::fs::File::open(path).unwrap();
    candle_core::quantized::gguf_file::Content::read(&mut f).unwrap().metadata
}

/// `export --format gguf` of a Llama 2-family folder writes llama.cpp's SentencePiece
/// vocabulary ("llama": pieces, SentencePiece's scores, token types, bos/eos/unk, add_bos,
/// add_space_prefix) and the folder's own Jinja chat template; the file scores as the
/// folder does, and so does the file without ferrolm's stored tokenizer.json (as llama.cpp's
/// converter writes files), its tokenizer rebuilt from the `tokenizer.ggml.*` keys; chat
/// prompts through the file's `tokenizer.chat_template` are the folder's.
#[test]
fn a_sentencepiece_model_exports_to_gguf_and_a_bare_gguf_carries_its_tokenizer() {
    use candle_core::quantized::gguf_file;
    let src = fixture("llama2_spm");
    let r: Value = serde_json::from_str(&std::fs::read_to_string(src.join("reference.json")).unwrap()).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("llama2.gguf");
    ferrolm(&["export", "--model", src.to_str().unwrap(), "--format", "gguf", "--quant", "f32", "--out", file.to_str().unwrap()]);
    let m = gguf_meta(&file);
    let text = |k: &str| m[k].to_string().unwrap().clone();
    assert_eq!(text("tokenizer.ggml.model"), "llama");
    let tokenizer: Value = serde_json::from_str(&std::fs::read_to_string(src.join("tokenizer.json")).unwrap()).unwrap();
    let tokens: Vec<String> = m["tokenizer.ggml.tokens"].to_vec().unwrap().iter().map(|t| t.to_string().unwrap().clone()).collect();
    for (piece, id) in tokenizer["model"]["vocab"].as_object().unwrap() {
        assert_eq!(&tokens[id.as_u64().unwrap() as usize], piece);
    }
    let scores: Vec<f64> = m["tokenizer.ggml.scores"].to_vec().unwrap().iter().map(|s| s.to_f32().unwrap() as f64).collect();
    let want: Vec<f64> = r["spm"]["scores"].as_array().unwrap().iter().map(|s| s.as_f64().unwrap()).collect();
    assert_eq!(scores, want);
    let types: Vec<i32> = m["tokenizer.ggml.token_type"].to_vec().unwrap().iter().map(|t| t.to_i32().unwrap()).collect();
    assert_eq!(&types[..4], &[2, 3, 3, 6]);
    assert_eq!(types.iter().filter(|&&t| t == 6).count(), 256);
    let id = |k: &str| m[k].to_u32().unwrap();
    assert_eq!((id("tokenizer.ggml.unknown_token_id"), id("tokenizer.ggml.bos_token_id"), id("tokenizer.ggml.eos_token_id")), (0, 1, 2));
    assert!(m["tokenizer.ggml.add_bos_token"].to_bool().unwrap() && m["tokenizer.ggml.add_space_prefix"].to_bool().unwrap());
    assert!(!m.contains_key("tokenizer.ggml.merges"));
    let cfg: Value = serde_json::from_str(&std::fs::read_to_string(src.join("tokenizer_config.json")).unwrap()).unwrap();
    assert_eq!(text("tokenizer.chat_template"), cfg["chat_template"].as_str().unwrap());

    let sentence = r["text"].as_str().unwrap();
    let want = score(&src, sentence);
    let close = |got: &Value| {
        assert_eq!(got["token_ids"], want["token_ids"]);
        for (x, y) in got["logprobs"].as_array().unwrap().iter().zip(want["logprobs"].as_array().unwrap()) {
            assert!((x.as_f64().unwrap() - y.as_f64().unwrap()).abs() < 1e-4, "{x} vs {y}");
        }
    };
    close(&score(&file, sentence));
    // the same file without ferrolm's tokenizer.json: what llama.cpp's converter writes
    let bare = tmp.path().join("bare.gguf");
    {
        let mut f = std::fs::File::open(&file).unwrap();
        let c = gguf_file::Content::read(&mut f).unwrap();
        let meta: Vec<(&str, &gguf_file::Value)> = c.metadata.iter().filter(|(k, _)| !k.starts_with("ferrolm.")).map(|(k, v)| (k.as_str(), v)).collect();
        let tensors: Vec<(String, candle_core::quantized::QTensor)> = c.tensor_infos.keys().map(|n| (n.clone(), c.tensor(&mut f, n, &candle_core::Device::Cpu).unwrap())).collect();
        let refs: Vec<(&str, &candle_core::quantized::QTensor)> = tensors.iter().map(|(n, t)| (n.as_str(), t)).collect();
        gguf_file::write(&mut std::fs::File::create(&bare).unwrap(), &meta, &refs).unwrap();
    }
    assert!(!gguf_meta(&bare).contains_key("ferrolm.tokenizer_json"));
    close(&score(&bare, sentence));
    // chat and serve read the file's chat template and end of sequence: the same prompts
    // (the reference conversations) and stops as the folder
    use ferrolm_finetune::prompt::{load_tokenizer, ChatFormat};
    let src_tok = load_tokenizer(&src).unwrap();
    let src_format = ChatFormat::load(&src, &src_tok).unwrap();
    for m in [&file, &bare] {
        let tok = load_tokenizer(m).unwrap();
        let format = ChatFormat::load(m, &tok).unwrap();
        assert!(format.marker().is_none());
        assert_eq!(format.stop_tokens(), &[2]);
        for c in r["spm"]["chat"].as_array().unwrap() {
            let msgs: Vec<ferrolm_tokenizer::Message> =
                c["messages"].as_array().unwrap().iter().map(|x| ferrolm_tokenizer::Message::new(serde_json::from_value(x["role"].clone()).unwrap(), x["content"].as_str().unwrap())).collect();
            let want = src_format.prompt(&src_tok, &msgs).unwrap();
            assert_eq!(want.iter().map(|&i| i as u64).collect::<Vec<_>>(), c["ids"].as_array().unwrap().iter().map(|x| x.as_u64().unwrap()).collect::<Vec<_>>());
            assert_eq!(format.prompt(&tok, &msgs).unwrap(), want, "{}", m.display());
        }
    }
    // greedy generation through the bare file continues the prompt as the folder does
    let gen = |m: &Path| ferrolm(&["generate", "--model", m.to_str().unwrap(), "--prompt", "Hello world", "--max-tokens", "8", "--temperature", "0"]);
    assert_eq!(gen(&bare), gen(&src));
}

/// `export --format hf` of a Llama 2-family folder writes the tokenizer_config.json fields
/// transformers builds a Llama tokenizer from (without them its AutoTokenizer put no `<s>`
/// before a text): `LlamaTokenizer`, `add_bos_token`, bos/eos/unk tokens, and the folder's
/// own Jinja chat template (no marker template renders Llama 2's); generation stops at
/// `</s>`. The export scores as the source and builds the same chat prompts.
#[test]
fn a_sentencepiece_model_exports_to_hf_with_the_llama_tokenizer_fields() {
    let src = fixture("llama2_spm");
    let tmp = tempfile::tempdir().unwrap();
    let dest = tmp.path().join("hf");
    ferrolm(&["export", "--model", src.to_str().unwrap(), "--format", "hf", "--out", dest.to_str().unwrap()]);
    let read = |p: PathBuf| -> Value { serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap() };
    let (got, want) = (read(dest.join("tokenizer_config.json")), read(src.join("tokenizer_config.json")));
    for k in ["tokenizer_class", "add_bos_token", "add_eos_token", "bos_token", "eos_token", "unk_token", "chat_template", "legacy"] {
        assert_eq!(got[k], want[k], "{k}: {got}");
    }
    assert_eq!((got["tokenizer_class"].as_str(), got["add_bos_token"].as_bool(), got["bos_token"].as_str()), (Some("LlamaTokenizer"), Some(true), Some("<s>")));
    assert_eq!(read(dest.join("generation_config.json"))["eos_token_id"], 2);
    assert_eq!(read(dest.join("config.json"))["eos_token_id"], 2);
    let text = "Hello, the quick fox! 日本 🦀";
    assert_eq!(score(&dest, text), score(&src, text));
    let tok = ferrolm_tokenizer::Tokenizer::from_file(&dest.join("tokenizer.json")).unwrap();
    let msgs = [ferrolm_tokenizer::Message::system("Be brief."), ferrolm_tokenizer::Message::user("Hi!")];
    let prompt = |dir: &Path| ferrolm_finetune::prompt::ChatFormat::load(dir, &tok).unwrap().prompt(&tok, &msgs).unwrap();
    assert_eq!(prompt(&dest), prompt(&src));
}

fn chat(model: &Path, args: &[&str], input: &str) -> std::process::Output {
    use std::io::Write;
    let mut child = Command::new(env!("CARGO_BIN_EXE_ferrolm"))
        .args(["chat", "--model", model.to_str().unwrap(), "--temperature", "0", "--max-tokens", "8"])
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(input.as_bytes()).unwrap();
    child.wait_with_output().unwrap()
}

/// `chat` with a Llama 2-family folder: prompts through its Jinja template, a second turn
/// that overflows the 64-position context drops the first exchange whole (the template
/// checks the role order); a template that refuses the conversation ends the chat with its
/// message.
#[test]
fn chat_with_a_llama2_folder_renders_its_jinja_template() {
    let src = fixture("llama2_spm");
    let out = chat(&src, &["--system", "Be brief."], "Hello there\nAnd the quick fox?\n/quit\n");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("2 turns, 0 ratings, 0 preferences recorded"), "{stdout}");
    assert!(!stdout.contains("</s>"), "{stdout}");
    // a template that has no place for a system message (as Gemma's and Mistral's raise)
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("llama2");
    std::fs::create_dir_all(&dir).unwrap();
    for f in ["config.json", "generation_config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"] {
        std::fs::copy(src.join(f), dir.join(f)).unwrap();
    }
    let mut cfg: Value = serde_json::from_str(&std::fs::read_to_string(src.join("tokenizer_config.json")).unwrap()).unwrap();
    let raising = format!("{{% if messages[0]['role'] == 'system' %}}{{{{ raise_exception('System role not supported') }}}}{{% endif %}}{}", cfg["chat_template"].as_str().unwrap());
    cfg["chat_template"] = raising.into();
    std::fs::write(dir.join("tokenizer_config.json"), cfg.to_string()).unwrap();
    let out = chat(&dir, &["--system", "Be brief."], "Hello there\n/quit\n");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("chat template refused the conversation") && stderr.contains("System role not supported"), "{stderr}");
    // without --system it answers
    assert!(chat(&dir, &[], "Hello there\n/quit\n").status.success());
}
