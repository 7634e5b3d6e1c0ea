//! Fixtures the alignment tests share: a tiny pretrained decoder run folder, generated
//! preferences, and stage options.

use std::io::Write;
use std::path::{Path, PathBuf};

use candle_core::Device;
use ferrolm_align::{OnError, StageOptions};
use ferrolm_model::TransformerConfig;
use ferrolm_tokenizer::{special, Tokenizer};
use ferrolm_train::{start_run, ArchData, RunConfig};

/// Pretrains a tiny character-level decoder into `dir` (a run folder); `tune` sets the
/// training budget over the shared defaults.
pub fn base_run(dir: &Path, tune: impl FnOnce(&mut RunConfig)) {
    let text = "the good answer is good. the bad answer is bad. say a word please. ".repeat(40);
    let tok = Tokenizer::train_char(std::iter::once(text.as_str()), &special::defaults()).unwrap();
    let ids = tok.encode(&text);
    let model = TransformerConfig { vocab_size: tok.vocab_size(), d_model: 32, n_layers: 1, n_heads: 2, n_kv_heads: 2, max_seq_len: 64, ..Default::default() };
    let mut cfg = RunConfig::transformer(model, Default::default(), Default::default());
    cfg.train.warmup_steps = 1;
    cfg.train.eval_interval = 0;
    cfg.train.eval_batches = 1;
    cfg.train.checkpoint_interval = 0;
    cfg.train.seq_len = 32;
    tune(&mut cfg);
    std::fs::create_dir_all(dir).unwrap();
    tok.save(&dir.join("tokenizer.json")).unwrap();
    let (train, val) = (ids.clone(), ids[..200].to_vec());
    let mut t = start_run(&cfg, dir, ArchData::Stream { train: &train, val: &val }, tok.token_bytes(), None, &Device::Cpu, false).unwrap();
    t.quiet = true;
    t.run().unwrap();
}

/// 80 preference records ("good" answers chosen over "bad" ones) in `dir/prefs.jsonl`; the
/// file is left open for callers to append to.
pub fn prefs(dir: &Path) -> (PathBuf, std::fs::File) {
    let p = dir.join("prefs.jsonl");
    let mut f = std::fs::File::create(&p).unwrap();
    for i in 0..80 {
        let (c, r) = if i % 2 == 0 { ("good good", "bad bad") } else { ("the good answer", "the bad answer") };
        writeln!(f, r#"{{"instruction": "say a word {i}", "chosen": "{c}", "rejected": "{r}"}}"#).unwrap();
    }
    (p, f)
}

pub fn opts(model: &Path, data: &Path, out: &Path, sets: &[&str]) -> StageOptions {
    StageOptions {
        model: model.to_path_buf(),
        data: vec![data.to_path_buf()],
        out: out.to_path_buf(),
        config: None,
        overrides: sets.iter().map(|s| s.to_string()).collect(),
        on_error: Some(OnError::Skip),
        resume: false,
        quiet: true,
        device: Device::Cpu,
    }
}
