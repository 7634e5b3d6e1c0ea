//! Every model kind on the shared loop: exact resume for the non-causal kinds, pair
//! data learns for the three generating kinds, evaluation figures per kind.

use candle_core::Device;
use ferrolm_model::{AnyModel, BlockStyle, ModelKind, ModelSpec, TransformerConfig};
use ferrolm_train::{start_run, ArchData, TaskModel};
use ferrolm_train::config::{RunConfig, Schedule, TrainConfig};
use ferrolm_train::trainer::StopReason;
use ferrolm_train::{checkpoint, metrics, PairExample, TaskTokens};

const VOCAB: usize = 48;

fn tokens() -> TaskTokens {
    TaskTokens { mask: 1, sentinels: (30..46).collect(), decoder_start: 0, first_ordinary: 5, sep: 2, pad: 3, eot: 0 }
}

fn cfg(kind: ModelKind, steps: usize, dropout: f32) -> RunConfig {
    RunConfig {
            model: ModelSpec::Transformer(TransformerConfig {
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
            }),
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
    }
}

fn model(c: &mut RunConfig) -> &mut TransformerConfig {
    c.model.transformer_mut().expect("a Transformer config")
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
            let mut t = start_run(&c, d, ArchData::Stream { train: &data, val: &val }, bytes.clone(), Some(tokens()), &Device::Cpu, resume).unwrap();
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
        let loaded = ferrolm_model::load_model(&full, &Device::Cpu).unwrap();
        assert_eq!(loaded.spec.kind(), kind);
        assert_eq!(matches!(loaded.model, AnyModel::Decoder(_)), kind == ModelKind::Prefix);
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
        c.train.lr = 1e-2;
        c.train.min_lr = 1e-3;
        c.train.grad_accum = 1;
        c.train.batch_size = 8;
        c.train.eval_interval = 0;
        c.train.checkpoint_interval = 0;
        c.train.weight_decay = 0.0;
        c.pairs = Some(Default::default());
        let mut t = start_run(&c, dir.path(), ArchData::Pairs { train: &train, val: &val }, vec![1; VOCAB], Some(tokens()), &Device::Cpu, false).unwrap();
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
    let err = start_run(&c, tempfile::tempdir().unwrap().path(), ArchData::Pairs { train: &train, val: &val }, vec![1; VOCAB], Some(tokens()), &Device::Cpu, false).err().unwrap();
    assert!(err.to_string().contains("plain text"), "{err}");
}

/// Documents (separated by end-of-text, id 0) each drawn from one of 8 disjoint groups
/// of 5 ordinary ids: a second segment from another document usually has other ids than
/// its first segment, so next-sentence prediction is learnable by comparing the two.
fn nsp_stream(docs: usize, seed: u64) -> Vec<u32> {
    let mut state = seed;
    let mut next = |n: u64| {
        state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (state >> 33) % n
    };
    let mut s = Vec::new();
    for _ in 0..docs {
        let group = next(8) as u32;
        let len = 20 + next(30) as usize;
        s.extend((0..len).map(|_| 6 + 5 * group + next(5) as u32));
        s.push(0);
    }
    s
}

fn nsp_cfg(steps: usize) -> RunConfig {
    let mut c = cfg(ModelKind::MaskedLm, steps, 0.0);
    c.train.grad_accum = 1;
    c.train.batch_size = 16;
    c.train.seq_len = 16;
    c.train.eval_interval = steps / 4;
    c.train.eval_batches = 8;
    c.train.checkpoint_interval = 0;
    c.train.lr = 3e-3;
    c.objective.nsp = true;
    model(&mut c).nsp_head = true;
    c
}

#[test]
fn nsp_batch_shapes_and_tiny_overfit() {
    use candle_core::DType;
    use candle_nn::{Optimizer, VarBuilder, VarMap};
    use rand::SeedableRng;
    use ferrolm_train::objectives::DocIndex;
    use ferrolm_train::task::{make_nsp_batch, ObjectiveConfig, TaskBatch};
    let data = nsp_stream(40, 1);
    let seq_len = 16;
    let index = DocIndex::new(&data, 0, seq_len - 3);
    let obj = ObjectiveConfig { nsp: true, ..Default::default() };
    let tok = tokens();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(9);
    let batch = make_nsp_batch(&data, &index, 8, seq_len, &obj, &tok, VOCAB as u32, &mut rng, &Device::Cpu).unwrap();
    let TaskBatch::MaskedLm { inputs, scored, targets, segments: Some(seg), nsp_labels: Some(labels) } = &batch else {
        panic!("not a sentence-pair batch")
    };
    assert_eq!(inputs.dims(), &[8, seq_len]);
    assert_eq!(seg.dims(), &[8, seq_len]);
    assert_eq!(labels.dims(), &[8]);
    let x: Vec<Vec<u32>> = inputs.to_vec2().unwrap();
    for row in &x {
        assert_eq!(row[0], tok.eot, "[CLS] (end-of-text) opens every pair");
        assert_eq!(row[seq_len - 1], tok.sep, "[SEP] (<|end|>) closes every pair");
        assert_eq!(row.iter().filter(|&&t| t == tok.sep).count(), 2, "{row:?}");
    }
    // masked positions are never [CLS]/[SEP], and their targets are ordinary tokens
    let sc: Vec<u32> = scored.to_vec1().unwrap();
    for (&p, &t) in sc.iter().zip(&targets.to_vec1::<u32>().unwrap()) {
        let (r, c) = (p as usize / seq_len, p as usize % seq_len);
        assert!(c != 0 && c != seq_len - 1 && x[r][c] != tok.sep, "a special position was masked");
        assert!(t >= tok.first_ordinary, "target {t} is special");
    }
    // tiny overfit: one fixed batch, loss = MLM + NSP falls and the NSP head fits the labels
    let model_cfg = nsp_cfg(1).model;
    let vm = VarMap::new();
    let m = AnyModel::build(&model_cfg, VarBuilder::from_varmap(&vm, DType::F32, &Device::Cpu)).unwrap();
    ferrolm_model::init::init_params(&vm, 2, 1).unwrap();
    let mut opt = candle_nn::AdamW::new_lr(vm.all_vars(), 3e-3).unwrap();
    let mut first = None;
    for _ in 0..80 {
        let loss = m.outputs(&batch, None).unwrap().loss().unwrap();
        first.get_or_insert(loss.to_scalar::<f32>().unwrap());
        opt.backward_step(&loss).unwrap();
    }
    let out = m.outputs(&batch, None).unwrap();
    let (nsp_logits, y) = out.nsp.as_ref().unwrap();
    let nsp_loss = ferrolm_kernels::cross_entropy(nsp_logits, y).unwrap().to_scalar::<f32>().unwrap();
    let last = out.loss().unwrap().to_scalar::<f32>().unwrap();
    assert!(last < 0.2 * first.unwrap(), "loss {first:?} → {last}");
    assert!(nsp_loss < 0.05, "the NSP head did not fit 8 labels: loss {nsp_loss}");
    let pred: Vec<u32> = nsp_logits.argmax(1).unwrap().to_vec1().unwrap();
    assert_eq!(pred, labels.to_vec1::<u32>().unwrap());
}

#[test]
fn nsp_objective_trains_on_the_shared_loop_and_reports_its_accuracy() {
    let (train, val) = (nsp_stream(300, 2), nsp_stream(60, 3));
    let dir = tempfile::tempdir().unwrap();
    let c = nsp_cfg(400);
    let mut t = start_run(&c, dir.path(), ArchData::Stream { train: &train, val: &val }, vec![1; VOCAB], Some(tokens()), &Device::Cpu, false).unwrap();
    t.quiet = true;
    let out = t.run().unwrap();
    let ev = out.val.unwrap();
    // 1/8 of random second segments share the first's group: the ceiling is ~94% (this
    // run: 51% at step 100, 70% at 200, 85% at 300, 91% at 400)
    assert!(ev.extra["nsp_accuracy"] > 0.8, "{:?}", ev.extra);
    assert!(ev.extra["nsp_loss"] < 0.5, "{:?}", ev.extra);
    assert!(ev.extra.contains_key("masked_accuracy"));
    // the saved config keeps the objective and the head; it reloads
    let saved = std::fs::read_to_string(dir.path().join("config.toml")).unwrap();
    assert!(saved.contains("nsp = true") && saved.contains("nsp_head = true"), "{saved}");
    let saved_cfg = RunConfig::from_value(&ferrolm_common::load_config(Some(&dir.path().join("config.toml")), &[]).unwrap()).unwrap();
    assert!(saved_cfg.objective.nsp);
    let model = ferrolm_model::load_model(dir.path(), &Device::Cpu).unwrap().model;
    assert!(matches!(model, AnyModel::MaskedLm(ref m) if m.has_nsp_head()));
    // the config key alone switches the head on; other kinds refuse the objective
    let v: toml::Value = toml::from_str("[model]\nkind = \"masked_lm\"\n[objective]\nnsp = true\n").unwrap();
    assert!(RunConfig::from_value(&v).unwrap().model.transformer().unwrap().nsp_head);
    let mut p = cfg(ModelKind::Prefix, 1, 0.0);
    p.objective.nsp = true;
    let err = start_run(&p, tempfile::tempdir().unwrap().path(), ArchData::Stream { train: &train, val: &val }, vec![1; VOCAB], Some(tokens()), &Device::Cpu, false).err().unwrap();
    assert!(err.to_string().contains("masked_lm"), "{err}");
    // too few long documents: a clear error naming the cause
    let short: Vec<u32> = (0..400).map(|i| if i % 6 == 5 { 0 } else { 7 }).collect();
    let err = start_run(&c, tempfile::tempdir().unwrap().path(), ArchData::Stream { train: &short, val: &val }, vec![1; VOCAB], Some(tokens()), &Device::Cpu, false).err().unwrap();
    assert!(err.to_string().contains("two training documents"), "{err}");
}

/// A masked LM must learn to read its neighbours: in a stream that counts up (each token
/// is the previous + 1, modulo 43 ordinary ids), every masked token follows from the
/// tokens beside it, while the unigram baseline is 1/43. Stuck near the baseline, the
/// encoder is not using its context. Like any BERT it first sits on a plateau near the
/// baseline (a PyTorch BERT of this size and recipe: 2.4% after 150 steps, 89% after
/// 1000; this one 28% after 150, 97% after 1000 with the modern block), hence the steps.
#[test]
fn masked_lm_learns_from_context_far_above_unigram() {
    let counting = |n: usize, from: usize| -> Vec<u32> { (0..n).map(|i| 5 + ((i + from) % 43) as u32).collect() };
    let (train, val) = (counting(4000, 0), counting(600, 7));
    for block in [BlockStyle::Modern, BlockStyle::Gpt2] {
        let mut c = cfg(ModelKind::MaskedLm, 500, 0.0);
        model(&mut c).block = block;
        model(&mut c).n_kv_heads = 4;
        c.train.grad_accum = 1;
        c.train.batch_size = 16;
        c.train.eval_interval = 500;
        c.train.eval_batches = 4;
        c.train.checkpoint_interval = 0;
        let dir = tempfile::tempdir().unwrap();
        let mut t = start_run(&c, dir.path(), ArchData::Stream { train: &train, val: &val }, vec![1; VOCAB], Some(tokens()), &Device::Cpu, false).unwrap();
        t.quiet = true;
        let ev = t.run().unwrap().val.unwrap();
        assert!(ev.extra["masked_accuracy"] > 0.5, "{block:?}: masked accuracy {:?} (unigram 1/43), loss {}", ev.extra, ev.loss);
    }
}
