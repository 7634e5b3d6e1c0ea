//! Fill-in-the-middle training through the one loop: rate 0 changes nothing, FIM runs
//! resume exactly at both levels, and a run without the tokenizer is refused clearly.

use candle_core::{DType, Device};
use candle_nn::{VarBuilder, VarMap};
use ferrolm_model::{AnyModel, ModelSpec, TransformerConfig};
use ferrolm_tokenizer::{special, BpeTrainConfig, Tokenizer};
use ferrolm_train::checkpoint;
use ferrolm_train::config::{RunConfig, Schedule, TrainConfig};
use ferrolm_train::data::{make_batch, train_offsets};
use ferrolm_train::fim::{unlayout, FimLevel, FimTokens};
use ferrolm_train::trainer::{LmTask, StopReason};
use ferrolm_train::{metrics, start_run, start_run_with_tokenizer, ArchData};

fn tokenizer() -> Tokenizer {
    let text = (0..40).map(|i| format!("fn f{i}(x: u32) -> u32 {{\n    x + {i}\n}}\n")).collect::<String>();
    Tokenizer::train_bpe(std::iter::once(text), &BpeTrainConfig { vocab_size: 320, min_frequency: 2, special_tokens: special::defaults() }).unwrap()
}

/// Documents of code, each followed by end-of-text.
fn stream(tok: &Tokenizer, n: usize, salt: usize) -> Vec<u32> {
    let mut v = Vec::new();
    for i in 0..n {
        let k = i * 7 + salt;
        v.extend(tok.encode(&format!("fn f{k}(x: u32) -> u32 {{\n    let y = x * {};\n    y + {k}\n}}\n", k % 5)));
        v.push(tok.eot_id());
    }
    v
}

fn cfg(vocab: usize, steps: usize, rate: f64, level: FimLevel) -> RunConfig {
    RunConfig {
        model: ModelSpec::Transformer(TransformerConfig { vocab_size: vocab, d_model: 32, n_layers: 2, n_heads: 4, n_kv_heads: 2, max_seq_len: 32, dropout: 0.1, ..Default::default() }),
        train: TrainConfig {
            max_steps: steps,
            batch_size: 4,
            lr: 3e-3,
            min_lr: 3e-4,
            warmup_steps: 2,
            schedule: Schedule::Cosine,
            grad_accum: 2,
            eval_interval: 4,
            eval_batches: 2,
            checkpoint_interval: 3,
            keep_checkpoints: 3,
            log_interval: 1,
            fim_rate: rate,
            fim_spm_rate: 0.5,
            fim_level: level,
            ..Default::default()
        },
        ..Default::default()
    }
}

fn padded_bytes(tok: &Tokenizer, vocab: usize) -> Vec<u32> {
    let mut b = tok.token_bytes();
    b.resize(vocab, 0);
    b
}

fn model(vocab: usize) -> AnyModel {
    let vm = VarMap::new();
    let spec = cfg(vocab, 1, 0.0, FimLevel::Context).model;
    AnyModel::build(&spec, VarBuilder::from_varmap(&vm, DType::F32, &Device::Cpu)).unwrap()
}

#[test]
fn rate_zero_leaves_every_batch_bit_identical_to_plain_next_token_prediction() {
    let tok = tokenizer();
    let vocab = tok.vocab_size().div_ceil(8) * 8;
    let (train, val) = (stream(&tok, 200, 0), stream(&tok, 30, 1));
    for level in [FimLevel::Context, FimLevel::Document] {
        let c = cfg(vocab, 1, 0.0, level);
        let task = LmTask::new(model(vocab), &train, &val, padded_bytes(&tok, vocab), 32, &c.train, &Device::Cpu).unwrap().with_fim(&c.train, &tok).unwrap();
        for (step, micro) in [(0, 0), (3, 1), (17, 0)] {
            let got = task.batch(step, micro).unwrap();
            assert!(got.scored.is_none());
            let offsets = train_offsets(&train, c.train.seed, step, micro, 4, 32);
            let want = make_batch(&train, &offsets, 32, &Device::Cpu).unwrap();
            assert_eq!(got.batch.inputs.to_vec2::<u32>().unwrap(), want.inputs.to_vec2::<u32>().unwrap());
            assert_eq!(got.batch.target_ids, want.target_ids);
        }
    }
}

#[test]
fn context_level_transforms_inside_the_same_windows_and_never_scores_padding() {
    let tok = tokenizer();
    let t = FimTokens::from_tokenizer(&tok).unwrap();
    let vocab = tok.vocab_size().div_ceil(8) * 8;
    let (train, val) = (stream(&tok, 200, 0), stream(&tok, 30, 1));
    let c = cfg(vocab, 1, 1.0, FimLevel::Context);
    let task = LmTask::new(model(vocab), &train, &val, padded_bytes(&tok, vocab), 32, &c.train, &Device::Cpu).unwrap().with_fim(&c.train, &tok).unwrap();
    let (mut fimmed, mut padded) = (0, 0);
    for step in 0..20 {
        let b = task.batch(step, 0).unwrap();
        let offsets = train_offsets(&train, c.train.seed, step, 0, 4, 32);
        let x: Vec<Vec<u32>> = b.batch.inputs.to_vec2().unwrap();
        let y: Vec<Vec<u32>> = b.batch.targets.to_vec2().unwrap();
        for (row, (&o, xr)) in offsets.iter().zip(&x).enumerate() {
            // end-of-text stays where the plain window has it: the same windows, rearranged
            let plain = &train[o..o + 33];
            let eots = |v: &[u32]| v.iter().enumerate().filter(|(_, &x)| x == t.eot).map(|(i, _)| i).collect::<Vec<_>>();
            let window: Vec<u32> = xr.iter().copied().chain([y[row][31]]).collect();
            assert_eq!(eots(&window), eots(plain));
            assert_eq!(&xr[1..], &y[row][..31], "targets are the inputs shifted by one");
            if window.contains(&t.middle) {
                fimmed += 1;
            }
            // a scored position never has padding as its input or target
            for i in 0..32 {
                let is_scored = b.scored.as_ref().is_none_or(|s| s.contains(&((row * 32 + i) as u32)));
                if window[i] == t.pad || window[i + 1] == t.pad {
                    assert!(!is_scored, "step {step} row {row} position {i}");
                    padded += 1;
                } else {
                    assert!(is_scored);
                }
            }
        }
    }
    assert!(fimmed > 40, "rate 1 transforms most windows: {fimmed} of 80");
    // pieces re-tokenize to at least their length plus the three sentinels, so padding is
    // rare here (the unit tests build windows that need it); what there is is never scored
    let _ = padded;
}

#[test]
fn document_level_windows_come_from_the_transformed_stream() {
    let tok = tokenizer();
    let t = FimTokens::from_tokenizer(&tok).unwrap();
    let vocab = tok.vocab_size().div_ceil(8) * 8;
    let (train, val) = (stream(&tok, 200, 0), stream(&tok, 30, 1));
    let c = cfg(vocab, 1, 0.5, FimLevel::Document);
    let task = LmTask::new(model(vocab), &train, &val, padded_bytes(&tok, vocab), 32, &c.train, &Device::Cpu).unwrap().with_fim(&c.train, &tok).unwrap();
    let docs: Vec<String> = train.split(|&x| x == t.eot).take(200).map(|d| tok.decode(d)).collect();
    let mut complete = 0;
    for step in 0..10 {
        let b = task.batch(step, 0).unwrap();
        assert!(b.scored.is_none(), "document level never pads");
        for row in b.batch.inputs.to_vec2::<u32>().unwrap() {
            for piece in row.split(|&x| x == t.eot) {
                // a FIM example that starts inside the window (its middle may be cut at the end)
                if piece.first() == Some(&t.prefix) && piece.contains(&t.middle) {
                    let (_, p, m, s) = unlayout(piece, &t).unwrap();
                    let (head, tail) = (format!("{}{}", tok.decode(&p), tok.decode(&m)), tok.decode(&s));
                    assert!(docs.iter().any(|d| d.starts_with(&head) && d.ends_with(&tail)), "{head:?} … {tail:?}");
                    complete += 1;
                }
            }
        }
    }
    assert!(complete > 0, "whole FIM examples appear in the windows");
}

#[test]
fn fim_runs_resume_exactly_at_both_levels() {
    let tok = tokenizer();
    let vocab = tok.vocab_size().div_ceil(8) * 8;
    let (train, val) = (stream(&tok, 200, 0), stream(&tok, 30, 1));
    let bytes = padded_bytes(&tok, vocab);
    for level in [FimLevel::Context, FimLevel::Document] {
        let dir = tempfile::tempdir().unwrap();
        let run = |d: &std::path::Path, stop: Option<usize>, resume: bool| {
            let c = cfg(vocab, 8, 0.5, level);
            let mut t = start_run_with_tokenizer(&c, d, ArchData::Stream { train: &train, val: &val }, bytes.clone(), None, Some(&tok), &Device::Cpu, resume).unwrap();
            t.quiet = true;
            t.stop_at = stop;
            t.run().unwrap()
        };
        let (full, part) = (dir.path().join("full"), dir.path().join("part"));
        run(&full, None, false);
        assert_eq!(run(&part, Some(5), false).stop, StopReason::Interrupted);
        run(&part, None, true);
        let losses = |d: &std::path::Path| -> Vec<(usize, f64)> {
            metrics::read(&d.join("metrics.jsonl")).unwrap().into_iter().filter_map(|r| r.loss.map(|l| (r.step, l))).collect()
        };
        let (a, b) = (losses(&full), losses(&part));
        assert_eq!(a.len(), 8);
        assert_eq!(a.iter().map(|x| x.0).collect::<Vec<_>>(), b.iter().map(|x| x.0).collect::<Vec<_>>());
        for ((s, la), (_, lb)) in a.iter().zip(&b) {
            assert!(la == lb, "{level:?} step {s}: {la} vs {lb}");
        }
        let wa = checkpoint::load_tensors(&checkpoint::latest(&full).unwrap().join("model.safetensors")).unwrap();
        let wb = checkpoint::load_tensors(&checkpoint::latest(&part).unwrap().join("model.safetensors")).unwrap();
        for (k, ta) in &wa {
            let d = (ta - &wb[k]).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap();
            assert!(d == 0.0, "{level:?} weight {k} differs by {d}");
        }
        // and FIM changed the data: the losses differ from a run without it
        let plain = dir.path().join("plain");
        let c = cfg(vocab, 8, 0.0, level);
        let mut t = start_run(&c, &plain, ArchData::Stream { train: &train, val: &val }, bytes.clone(), None, &Device::Cpu, false).unwrap();
        t.quiet = true;
        t.run().unwrap();
        assert_ne!(losses(&plain), a, "{level:?}");
    }
}

#[test]
fn fim_without_tokenizer_or_fim_tokens_is_a_clear_error() {
    let tok = tokenizer();
    let vocab = tok.vocab_size().div_ceil(8) * 8;
    let (train, val) = (stream(&tok, 100, 0), stream(&tok, 30, 1));
    let dir = tempfile::tempdir().unwrap();
    let c = cfg(vocab, 2, 0.5, FimLevel::Context);
    let err = start_run(&c, dir.path(), ArchData::Stream { train: &train, val: &val }, padded_bytes(&tok, vocab), None, &Device::Cpu, false).err().unwrap();
    assert!(format!("{err:#}").contains("needs the data's tokenizer"), "{err:#}");
    // a tokenizer trained without the FIM tokens
    let old = Tokenizer::train_bpe(std::iter::once("fn f() {}\n".repeat(30)), &BpeTrainConfig { vocab_size: 300, min_frequency: 2, special_tokens: vec![special::EOT.into(), special::PAD.into()] }).unwrap();
    let err = start_run_with_tokenizer(&c, dir.path(), ArchData::Stream { train: &train, val: &val }, padded_bytes(&tok, vocab), None, Some(&old), &Device::Cpu, false).err().unwrap();
    assert!(format!("{err:#}").contains("<|fim_prefix|>"), "{err:#}");
    // out of range
    let mut bad = cfg(vocab, 2, 1.5, FimLevel::Context);
    assert!(bad.validate().is_err());
    bad.train.fim_rate = 0.5;
    bad.train.fim_spm_rate = -0.1;
    assert!(bad.validate().is_err());
}
