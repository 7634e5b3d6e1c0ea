//! The older families (NPLM, RNN, LSTM) through the shared Trainer: they learn, resume
//! exactly, load back for evaluation, and are selected by `model.family`.

use candle_core::Device;
use ferrolm_model::{Family, ModelSpec};
use ferrolm_train::{start_run, ArchData, RunConfig};
use ferrolm_train::trainer::StopReason;
use ferrolm_train::{checkpoint, metrics};

fn cfg(family: &str, steps: usize, extra: &[&str]) -> RunConfig {
    let mut sets: Vec<String> = vec![
        format!("model.family={family}"),
        "model.vocab_size=16".into(),
        "model.d_model=16".into(),
        "model.hidden=24".into(),
        "model.n_layers=2".into(),
        "model.n_heads=2".into(),
        "model.n_kv_heads=2".into(),
        "model.max_seq_len=16".into(),
        "model.dropout=0.1".into(),
        "model.context=3".into(),
        format!("train.max_steps={steps}"),
        "train.batch_size=4".into(),
        "train.lr=3e-3".into(),
        "train.min_lr=3e-4".into(),
        "train.warmup_steps=3".into(),
        "train.grad_accum=2".into(),
        "train.eval_interval=5".into(),
        "train.eval_batches=2".into(),
        "train.checkpoint_interval=4".into(),
        "train.keep_checkpoints=3".into(),
        "train.log_interval=1".into(),
    ];
    sets.extend(extra.iter().map(|s| s.to_string()));
    let v = ferrolm_common::load_config(None, &sets).unwrap();
    RunConfig::from_value(&v).unwrap()
}

fn stream(n: usize) -> Vec<u32> {
    (0..n).map(|i| ((i * i + 3 * i) % 13) as u32 + if i % 7 == 0 { 1 } else { 0 }).collect()
}

#[test]
fn family_keys_parse_and_round_trip_through_config_toml() {
    let c = cfg("lstm", 10, &["model.direct=true"]);
    assert_eq!(c.model.family(), Family::Lstm);
    assert!(matches!(&c.model, ModelSpec::Recurrent(r) if r.hidden == 24));
    let back = RunConfig::from_value(&c.to_toml().parse::<toml::Table>().map(toml::Value::Table).unwrap()).unwrap();
    assert_eq!(back, c);
    // Without `family` the config is the Transformer's: `[model]` is exactly its keys.
    let t = cfg("transformer", 10, &[]);
    let saved: toml::Table = t.to_toml().parse().unwrap();
    assert!(saved["model"].get("family").is_none() && saved["model"].get("n_heads").is_some());
    // Typos stay errors, for the family keys and the others.
    let bad = ferrolm_common::load_config(None, &["model.family=gru".into()]).unwrap();
    assert!(format!("{:#}", RunConfig::from_value(&bad).unwrap_err()).contains("gru"));
    let bad = ferrolm_common::load_config(None, &["model.family=lstm".into(), "model.hiden=3".into()]).unwrap();
    assert!(format!("{:#}", RunConfig::from_value(&bad).unwrap_err()).contains("hiden"));
}

#[test]
fn lstm_rnn_and_nplm_resume_exactly_like_the_uninterrupted_run() {
    let data = stream(3000);
    let val = stream(500);
    let bytes = vec![1u32; 16];
    for family in ["lstm", "rnn", "nplm"] {
        let c = cfg(family, 10, &[]);
        let dir = tempfile::tempdir().unwrap();
        let full_dir = dir.path().join("full");
        let mut full = start_run(&c, &full_dir, ArchData::Stream { train: &data, val: &val }, bytes.clone(), None, &Device::Cpu, false).unwrap();
        full.quiet = true;
        full.run().unwrap();
        let part_dir = dir.path().join("part");
        let mut first = start_run(&c, &part_dir, ArchData::Stream { train: &data, val: &val }, bytes.clone(), None, &Device::Cpu, false).unwrap();
        first.quiet = true;
        first.stop_at = Some(6);
        assert_eq!(first.run().unwrap().stop, StopReason::Interrupted);
        drop(first);
        let mut second = start_run(&c, &part_dir, ArchData::Stream { train: &data, val: &val }, bytes.clone(), None, &Device::Cpu, true).unwrap();
        assert_eq!(second.step(), 6);
        second.quiet = true;
        second.run().unwrap();
        let losses = |d: &std::path::Path| -> Vec<(usize, f64)> {
            metrics::read(&d.join("metrics.jsonl")).unwrap().into_iter().filter_map(|r| r.loss.map(|l| (r.step, l))).collect()
        };
        let (a, b) = (losses(&full_dir), losses(&part_dir));
        assert_eq!(a.len(), 10, "{family}");
        assert_eq!(a.len(), b.len(), "{family}");
        for ((s, la), (_, lb)) in a.iter().zip(&b) {
            assert!((la - lb).abs() < 1e-6, "{family} step {s}: {la} vs {lb}");
        }
        let wa = checkpoint::load_tensors(&checkpoint::latest(&full_dir).unwrap().join("model.safetensors")).unwrap();
        let wb = checkpoint::load_tensors(&checkpoint::latest(&part_dir).unwrap().join("model.safetensors")).unwrap();
        assert!(!wa.is_empty());
        for (k, ta) in &wa {
            let d = (ta - &wb[k]).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap();
            assert!(d < 1e-6, "{family} weight {k} differs by {d}");
        }
        // The run folder loads back and evaluates to the figure the trainer reported.
        let loaded = ferrolm_model::load_model(&full_dir, &Device::Cpu).unwrap();
        assert_eq!(loaded.spec, c.model);
        let ev = ferrolm_train::evaluate(&loaded.model, &val, &bytes, 16, 4, 8, &Device::Cpu).unwrap();
        assert!(ev.loss.is_finite() && ev.loss < (16f64).ln() + 0.5, "{family}: {}", ev.loss);
    }
}

#[test]
fn every_family_overfits_a_tiny_stream() {
    let data: Vec<u32> = (0..40).map(|i| (i * 7 % 16) as u32).collect();
    for family in ["nplm", "rnn", "lstm"] {
        let mut c = cfg(family, 400, &["model.dropout=0.0", "model.context=4"]);
        let t = &mut c.train;
        t.lr = 1e-2;
        t.min_lr = 1e-3;
        t.warmup_steps = 5;
        t.grad_accum = 1;
        t.weight_decay = 0.0;
        t.eval_interval = 0;
        t.checkpoint_interval = 0;
        let dir = tempfile::tempdir().unwrap();
        let mut tr = start_run(&c, dir.path(), ArchData::Stream { train: &data, val: &data }, vec![1; 16], None, &Device::Cpu, false).unwrap();
        tr.quiet = true;
        let out = tr.run().unwrap();
        let loss = out.val.unwrap().loss;
        // The stream is periodic (period 16, every token distinct within a period) so one
        // token of context determines the next: every family can reach ~0.
        assert!(loss < 0.05, "{family}: loss after overfitting {loss}");
        assert!(dir.path().join("loss.svg").exists());
    }
}
