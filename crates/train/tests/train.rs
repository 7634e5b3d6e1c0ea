//! The loop's contracts: it learns, it resumes exactly, it fails clearly.

use candle_core::Device;
use ferrolm_model::{BlockStyle, ModelSpec, TransformerConfig};
use ferrolm_train::checkpoint;
use ferrolm_train::config::{RunConfig, Schedule, TrainConfig};
use ferrolm_train::metrics;
use ferrolm_train::trainer::StopReason;
use ferrolm_train::{start_run, ArchData};

fn tiny_cfg(style: BlockStyle, steps: usize) -> RunConfig {
    RunConfig {
        model: ModelSpec::Transformer(TransformerConfig {
            vocab_size: 16,
            d_model: 32,
            n_layers: 2,
            n_heads: 4,
            n_kv_heads: if style == BlockStyle::Modern { 2 } else { 4 },
            max_seq_len: 16,
            block: style,
            dropout: 0.1,
            ..Default::default()
        }),
        train: TrainConfig {
            max_steps: steps,
            batch_size: 4,
            lr: 3e-3,
            min_lr: 3e-4,
            warmup_steps: 3,
            schedule: Schedule::Cosine,
            grad_accum: 2,
            eval_interval: 5,
            eval_batches: 2,
            checkpoint_interval: 4,
            keep_checkpoints: 3,
            log_interval: 1,
            ..Default::default()
        },
        ..Default::default()
    }
}

/// A learnable stream: a repeating pattern with a little structure.
fn stream(n: usize) -> Vec<u32> {
    (0..n).map(|i| ((i * i + 3 * i) % 13) as u32 + if i % 7 == 0 { 1 } else { 0 }).collect()
}

#[test]
fn resumed_run_follows_the_uninterrupted_run_exactly() {
    let data = stream(4000);
    let val = stream(600);
    let bytes = vec![1u32; 16];
    for style in [BlockStyle::Gpt2, BlockStyle::Modern] {
        let dir = tempfile::tempdir().unwrap();
        let full_dir = dir.path().join("full");
        let mut full = start_run(&tiny_cfg(style, 12), &full_dir, ArchData::Stream { train: &data, val: &val }, bytes.clone(), None, &Device::Cpu, false).unwrap();
        full.quiet = true;
        full.run().unwrap();

        let part_dir = dir.path().join("part");
        // The same config, interrupted after 8 steps (as by Ctrl-C) ...
        let mut first = start_run(&tiny_cfg(style, 12), &part_dir, ArchData::Stream { train: &data, val: &val }, bytes.clone(), None, &Device::Cpu, false).unwrap();
        first.quiet = true;
        first.stop_at = Some(8);
        assert_eq!(first.run().unwrap().stop, StopReason::Interrupted);
        // ... then resumed to 12 with the full config.
        let mut second = start_run(&tiny_cfg(style, 12), &part_dir, ArchData::Stream { train: &data, val: &val }, bytes.clone(), None, &Device::Cpu, true).unwrap();
        assert_eq!(second.step(), 8);
        second.quiet = true;
        second.run().unwrap();

        let losses = |d: &std::path::Path| -> Vec<(usize, f64)> {
            metrics::read(&d.join("metrics.jsonl")).unwrap().into_iter().filter_map(|r| r.loss.map(|l| (r.step, l))).collect()
        };
        let a = losses(&full_dir);
        let b = losses(&part_dir);
        assert_eq!(a.len(), 12, "{style:?}");
        assert_eq!(a.iter().map(|x| x.0).collect::<Vec<_>>(), b.iter().map(|x| x.0).collect::<Vec<_>>());
        for ((s, la), (_, lb)) in a.iter().zip(&b) {
            assert!((la - lb).abs() < 1e-5, "{style:?} step {s}: {la} vs {lb}");
        }
        // Final weights agree too.
        let wa = checkpoint::load_tensors(&checkpoint::latest(&full_dir).unwrap().join("model.safetensors")).unwrap();
        let wb = checkpoint::load_tensors(&checkpoint::latest(&part_dir).unwrap().join("model.safetensors")).unwrap();
        for (k, ta) in &wa {
            let d = (ta - &wb[k]).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap();
            assert!(d < 1e-5, "{style:?} weight {k} differs by {d}");
        }
    }
}

#[test]
fn a_tiny_batch_is_overfit_to_near_zero_loss() {
    // 40 tokens of data, each window seen many times: the model must memorise it.
    let data: Vec<u32> = (0..40).map(|i| (i * 7 % 16) as u32).collect();
    let mut cfg = tiny_cfg(BlockStyle::Gpt2, 150);
    cfg.model.transformer_mut().unwrap().dropout = 0.0;
    cfg.train = TrainConfig { max_steps: 150, lr: 1e-2, min_lr: 1e-3, warmup_steps: 5, grad_accum: 1, weight_decay: 0.0, eval_interval: 0, checkpoint_interval: 0, ..cfg.train };
    let dir = tempfile::tempdir().unwrap();
    let mut t = start_run(&cfg, dir.path(), ArchData::Stream { train: &data, val: &data }, vec![1; 16], None, &Device::Cpu, false).unwrap();
    t.quiet = true;
    let out = t.run().unwrap();
    assert_eq!(out.stop, StopReason::Completed);
    let val = out.val.unwrap();
    assert!(val.loss < 0.05, "loss after overfitting: {}", val.loss);
    assert!(dir.path().join("loss.svg").exists());
    assert!(dir.path().join("config.toml").exists());
}

#[test]
fn corrupted_or_missing_checkpoint_is_a_clear_error() {
    let data = stream(2000);
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    let err = start_run(&tiny_cfg(BlockStyle::Gpt2, 4), &run, ArchData::Stream { train: &data, val: &data }, vec![1; 16], None, &Device::Cpu, true).err().unwrap();
    assert!(format!("{err:#}").contains("has no checkpoint"), "{err:#}");

    let mut t = start_run(&tiny_cfg(BlockStyle::Gpt2, 4), &run, ArchData::Stream { train: &data, val: &data }, vec![1; 16], None, &Device::Cpu, false).unwrap();
    t.quiet = true;
    t.run().unwrap();
    let ckpt = checkpoint::latest(&run).unwrap();
    let weights = ckpt.join("model.safetensors");
    let bytes = std::fs::read(&weights).unwrap();
    std::fs::write(&weights, &bytes[..bytes.len() / 2]).unwrap();
    let err = start_run(&tiny_cfg(BlockStyle::Gpt2, 8), &run, ArchData::Stream { train: &data, val: &data }, vec![1; 16], None, &Device::Cpu, true).err().unwrap();
    let msg = format!("{err:#}");
    assert!(msg.contains("model.safetensors") && msg.contains("corrupt"), "{msg}");

    std::fs::remove_file(ckpt.join("state.json")).unwrap();
    let err = start_run(&tiny_cfg(BlockStyle::Gpt2, 8), &run, ArchData::Stream { train: &data, val: &data }, vec![1; 16], None, &Device::Cpu, true).err().unwrap();
    assert!(format!("{err:#}").contains("incomplete"), "{err:#}");
}

#[test]
fn invalid_config_is_a_clear_error() {
    let bad = "[model]\nd_model = 30\nn_heads = 4\n";
    let v = ferrolm_common::config::load_config(None, &[]).unwrap();
    let _ = v;
    let v: toml::Value = bad.parse::<toml::Table>().map(toml::Value::Table).unwrap();
    let err = RunConfig::from_value(&v).unwrap_err().to_string();
    assert!(err.contains("divisible"), "{err}");
    let v: toml::Value = "[train]\nlearning_rate = 1\n".parse::<toml::Table>().map(toml::Value::Table).unwrap();
    let err = RunConfig::from_value(&v).unwrap_err().to_string();
    assert!(err.contains("learning_rate"), "{err}");
}

#[test]
fn divergence_stops_with_the_step_named() {
    let data = stream(2000);
    let mut cfg = tiny_cfg(BlockStyle::Gpt2, 50);
    cfg.train.lr = 1e30;
    cfg.train.min_lr = 0.0;
    cfg.train.grad_clip = 0.0;
    cfg.train.warmup_steps = 0;
    let dir = tempfile::tempdir().unwrap();
    let mut t = start_run(&cfg, dir.path(), ArchData::Stream { train: &data, val: &data }, vec![1; 16], None, &Device::Cpu, false).unwrap();
    t.quiet = true;
    let err = t.run().unwrap_err().to_string();
    assert!(err.contains("at step"), "{err}");
}
