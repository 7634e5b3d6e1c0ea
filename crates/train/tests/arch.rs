//! Every model kind on the shared loop: exact resume for the non-causal kinds, pair
//! data learns for the three generating kinds, evaluation figures per kind.

use candle_core::Device;
use ferrolm_model::{BlockStyle, ModelKind, TransformerConfig};
use ferrolm_train::arch_task::{arch_trainer, ArchData, ArchRunConfig};
use ferrolm_train::config::{RunConfig, Schedule, TrainConfig};
use ferrolm_train::trainer::StopReason;
use ferrolm_train::{checkpoint, metrics, PairExample, TaskTokens};

const VOCAB: usize = 48;

fn tokens() -> TaskTokens {
    TaskTokens { mask: 1, sentinels: (30..46).collect(), decoder_start: 0, first_ordinary: 5, sep: 2, pad: 3, eot: 0 }
}

fn cfg(kind: ModelKind, steps: usize, dropout: f32) -> ArchRunConfig {
    ArchRunConfig {
        run: RunConfig {
            model: TransformerConfig {
                kind,
                vocab_size: VOCAB,
                d_model: 32,
                n_layers: 2,
                n_heads: 4,
                n_kv_heads: 2,
                max_seq_len: 24,
                block: BlockStyle::Modern,
                dropout,
                ..Default::default()
            },
            train: TrainConfig {
                max_steps: steps,
                batch_size: 4,
                seq_len: 20,
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
                ..Default::default()
            },
            ..Default::default()
        },
        ..Default::default()
    }
}

fn stream(n: usize) -> Vec<u32> {
    (0..n).map(|i| 5 + ((i * i + 3 * i) % 23) as u32 + if i % 7 == 0 { 1 } else { 0 }).collect()
}

#[test]
fn non_causal_resume_equals_uninterrupted_run() {
    let (data, val) = (stream(3000), stream(500));
    let bytes = vec![1u32; VOCAB];
    for kind in [ModelKind::Prefix, ModelKind::EncoderDecoder, ModelKind::MaskedLm] {
        let dir = tempfile::tempdir().unwrap();
        let c = cfg(kind, 9, 0.1);
        let run = |d: &std::path::Path, resume: bool, stop: Option<usize>| {
            let mut t = arch_trainer(&c, d, ArchData::Stream { train: &data, val: &val }, tokens(), bytes.clone(), resume).unwrap();
            t.quiet = true;
            t.stop_at = stop;
            t.run().unwrap()
        };
        let full = dir.path().join("full");
        run(&full, false, None);
        let part = dir.path().join("part");
        assert_eq!(run(&part, false, Some(6)).stop, StopReason::Interrupted);
        let out = run(&part, true, None);
        assert_eq!(out.steps, 9);
        let losses = |d: &std::path::Path| -> Vec<(usize, f64)> {
            metrics::read(&d.join("metrics.jsonl")).unwrap().into_iter().filter_map(|r| r.loss.map(|l| (r.step, l))).collect()
        };
        let (a, b) = (losses(&full), losses(&part));
        assert_eq!(a.len(), 9, "{kind:?}");
        assert_eq!(a.len(), b.len());
        for ((s, la), (_, lb)) in a.iter().zip(&b) {
            assert!((la - lb).abs() < 1e-5, "{kind:?} step {s}: {la} vs {lb}");
        }
        let wa = checkpoint::load_tensors(&checkpoint::latest(&full).unwrap().join("model.safetensors")).unwrap();
        let wb = checkpoint::load_tensors(&checkpoint::latest(&part).unwrap().join("model.safetensors")).unwrap();
        for (k, ta) in &wa {
            let d = (ta - &wb[k]).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap();
            assert!(d < 1e-5, "{kind:?} weight {k} differs by {d}");
        }
        // the evaluation reports the kind's accuracy figure
        let val_rec: Vec<_> = metrics::read(&full.join("metrics.jsonl")).unwrap().into_iter().filter(|r| r.val_loss.is_some()).collect();
        let name = if kind == ModelKind::MaskedLm { "val_masked_accuracy" } else { "val_target_accuracy" };
        assert!(val_rec.last().unwrap().extra.contains_key(name), "{kind:?}: {:?}", val_rec.last().unwrap().extra);
        // the saved config names the kind and reloads as the right model
        let (saved, model, _) = ferrolm_train::load_arch_run(&full, &Device::Cpu).unwrap();
        assert_eq!(saved.run.model.kind, kind);
        assert_eq!(
            matches!(model, ferrolm_train::ArchModel::Decoder(_)),
            kind == ModelKind::Prefix
        );
    }
}

/// Pairs where the target is a deterministic function of the input (reversed, shifted):
/// learnable only by reading the input.
fn pairs(n: usize, seed: usize) -> Vec<PairExample> {
    (0..n)
        .map(|i| {
            let len = 2 + (i * 7 + seed) % 4;
            let input: Vec<u32> = (0..len).map(|j| 5 + ((i * 13 + j * 5 + seed) % 20) as u32).collect();
            let target = input.iter().rev().map(|t| t + 1).collect();
            PairExample { input, target }
        })
        .collect()
}

#[test]
fn pair_data_trains_every_generating_kind_with_loss_on_targets_only() {
    let (train, val) = (pairs(8, 0), pairs(8, 0));
    for kind in [ModelKind::Causal, ModelKind::Prefix, ModelKind::EncoderDecoder] {
        let dir = tempfile::tempdir().unwrap();
        let mut c = cfg(kind, 150, 0.0);
        c.run.train.lr = 1e-2;
        c.run.train.min_lr = 1e-3;
        c.run.train.grad_accum = 1;
        c.run.train.batch_size = 8;
        c.run.train.eval_interval = 0;
        c.run.train.checkpoint_interval = 0;
        c.run.train.weight_decay = 0.0;
        c.pairs = Some(Default::default());
        let mut t = arch_trainer(&c, dir.path(), ArchData::Pairs { train: &train, val: &val }, tokens(), vec![1; VOCAB], false).unwrap();
        t.quiet = true;
        let out = t.run().unwrap();
        let ev = out.val.unwrap();
        // scored: every target token plus the closing <eot>
        assert_eq!(ev.tokens, val.iter().map(|p| p.target.len() + 1).sum::<usize>(), "{kind:?}");
        assert!(ev.loss < 0.1, "{kind:?} did not learn the pairs: {}", ev.loss);
        assert!(ev.extra["target_accuracy"] > 0.9, "{kind:?}: {:?}", ev.extra);
        let saved = std::fs::read_to_string(dir.path().join("config.toml")).unwrap();
        assert!(saved.contains("[pairs]") && saved.contains("[objective]"), "{saved}");
    }
    // masked LM refuses pairs with a sentence
    let c = cfg(ModelKind::MaskedLm, 1, 0.0);
    let err = arch_trainer(&c, tempfile::tempdir().unwrap().path(), ArchData::Pairs { train: &train, val: &val }, tokens(), vec![1; VOCAB], false).err().unwrap();
    assert!(err.to_string().contains("plain text"), "{err}");
}
