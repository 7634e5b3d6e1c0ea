//! `--quant q8_0|q4_k` end to end through the binary: a small Llama-style Hugging Face
//! folder (rows of 256, so Q4_K applies) written with ferrolm-model, then `generate`,
//! `eval` and `bench generate` with quantized weights; training commands have no `--quant`.

use std::path::Path;
use std::process::{Command, Output};

use candle_core::Device;
use ferrolm_model::{init_weights, AnyModel, BlockStyle, ModelSpec, TransformerConfig};

fn run(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ferrolm")).args(args).output().unwrap()
}

fn ok(args: &[&str]) -> (String, String) {
    let out = run(args);
    let (o, e) = (String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned());
    assert!(out.status.success(), "ferrolm {args:?} failed: {e}");
    (o, e)
}

/// A random Llama-style model with the qwen2_tied fixture's 300-token tokenizer.
fn write_model(dir: &Path) {
    let cfg = TransformerConfig { vocab_size: 300, d_model: 256, n_layers: 2, n_heads: 4, n_kv_heads: 2, d_ff: 512, max_seq_len: 64, block: BlockStyle::Modern, ..Default::default() };
    let spec = ModelSpec::Transformer(cfg.clone());
    let (_, varmap) = AnyModel::build_fresh(&spec, &Device::Cpu).unwrap();
    init_weights(&spec, &varmap, 3).unwrap();
    ferrolm_model::hf::export::write_checkpoint(&cfg, &varmap, dir, None, Some(0)).unwrap();
    ferrolm_model::hf::export::write_generation_config(dir, &[0]).unwrap();
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("../model/tests/fixtures/hf/qwen2_tied");
    for f in ["tokenizer.json", "tokenizer_config.json"] {
        std::fs::copy(fixture.join(f), dir.join(f)).unwrap();
    }
}

#[test]
fn quant_runs_generate_eval_and_bench_and_training_has_no_quant() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tmp.path().join("m");
    write_model(&model);
    let m = model.to_str().unwrap();

    let gen = |quant: Option<&str>| {
        let mut args = vec!["generate", "--model", m, "--prompt", "the lazy dog", "--max-tokens", "6", "--temperature", "0"];
        if let Some(q) = quant {
            args.extend(["--quant", q]);
        }
        ok(&args)
    };
    let (text, err) = gen(Some("q4_k"));
    assert!(text.starts_with("the lazy dog"), "{text}");
    // 2 blocks × (qkv, proj, gate, up, down) + the LM head, all rows of 256 or 512
    assert!(err.contains("--quant q4_k: linear layers: quantized 11 Q4_K"), "{err}");
    let (_, err) = gen(Some("q8_0"));
    assert!(err.contains("quantized 11 Q8_0"), "{err}");
    let (text, err) = gen(Some("f16"));
    assert!(text.starts_with("the lazy dog"), "{text}");
    assert!(err.contains("--quant f16: linear layers: quantized 11 F16"), "{err}");

    let data = tmp.path().join("text.txt");
    std::fs::write(&data, "the quick brown fox jumps over the lazy dog. ".repeat(40)).unwrap();
    let eval_of = |model: &str, quant: Option<&str>| -> f64 {
        let mut args = vec!["eval", "--model", model, "--data", data.to_str().unwrap(), "--json"];
        if let Some(q) = quant {
            args.extend(["--quant", q]);
        }
        let (out, _) = ok(&args);
        let v: serde_json::Value = serde_json::from_str(out.lines().last().unwrap()).unwrap();
        v["loss"].as_f64().unwrap()
    };
    let eval = |quant: Option<&str>| eval_of(m, quant);
    let (f, q8, q4) = (eval(None), eval(Some("q8_0")), eval(Some("q4_k")));
    assert!(q8 != f && (q8 - f).abs() < 0.01 * f, "q8_0 loss {q8} vs f32 {f}");
    assert!(q4 != f && (q4 - f).abs() < 0.05 * f, "q4_k loss {q4} vs f32 {f}");
    // eval reads a GGUF file too (its config and tokenizer from the file): the f32 file
    // scores as the folder does, the q8_0 file as its rounding allows
    for (quant, tol) in [("f32", 1e-5), ("q8_0", 0.01)] {
        let file = tmp.path().join(format!("m-{quant}.gguf"));
        ok(&["export", "--model", m, "--format", "gguf", "--quant", quant, "--out", file.to_str().unwrap()]);
        let g = eval_of(file.to_str().unwrap(), None);
        assert!((g - f).abs() <= tol * f, "{quant} GGUF loss {g} vs the folder's {f}");
    }

    let (out, _) = ok(&["bench", "generate", "--model", m, "--prompt-tokens", "8", "--new-tokens", "4", "--repeats", "1", "--json", "--quant", "q4_k"]);
    let v: serde_json::Value = serde_json::from_str(out.lines().last().unwrap()).unwrap();
    assert_eq!(v["quant"], "q4_k");
    assert!(v["decode_tokens_per_sec"].as_f64().unwrap() > 0.0);

    let bad = run(&["generate", "--model", m, "--prompt", "x", "--quant", "q3_k"]);
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("expected q8_0, q4_k or f16"));
    // training commands do not take --quant
    let sft = run(&["sft", "--model", m, "--quant", "q4_k", "--out", tmp.path().join("sft").to_str().unwrap()]);
    assert!(!sft.status.success());
    assert!(String::from_utf8_lossy(&sft.stderr).contains("--quant"), "{}", String::from_utf8_lossy(&sft.stderr));
}
