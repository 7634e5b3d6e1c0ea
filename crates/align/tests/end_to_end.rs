//! A tiny end-to-end run of every alignment stage on generated data: a tiny decoder is
//! pretrained for a few steps (a run folder written by `Trainer::new`), then a reward model,
//! DPO and PPO start from it, and `compare` reads their outputs. The preference task is
//! trivially learnable ("good" answers beat "bad" ones), so the reward model and DPO must
//! actually learn it; PPO must log its figures, checkpoint, and resume exactly.

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};

use candle_core::Device;
use ferrolm_align::compare::{compare, CompareOptions};
use ferrolm_align::ppo::PpoTrainer;
use ferrolm_align::OnError;

/// The few-step base run the stages start from.
fn base_run(dir: &Path) {
    common::base_run(dir, |cfg| {
        cfg.train.max_steps = 3;
        cfg.train.batch_size = 2;
    });
}

/// The shared preferences plus one malformed record (counted and skipped).
fn prefs(dir: &Path) -> PathBuf {
    let (p, mut f) = common::prefs(dir);
    writeln!(f, r#"{{"instruction": "broken", "chosen": ""}}"#).unwrap();
    p
}

fn weights(dir: &Path) -> Vec<f32> {
    let ck = ferrolm_train::checkpoint::latest(dir).unwrap();
    let t = ferrolm_train::checkpoint::load_tensors(&ck.join("model.safetensors")).unwrap();
    let mut names: Vec<_> = t.keys().cloned().collect();
    names.sort();
    names.iter().flat_map(|n| t[n].flatten_all().unwrap().to_vec1::<f32>().unwrap()).collect()
}

#[test]
fn reward_dpo_rlhf_compare_end_to_end() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let base = root.join("base");
    base_run(&base);
    let data = prefs(root);
    let common = ["data.val_fraction=0.25", "data.max_response_tokens=20", "train.warmup_steps=2", "train.eval_interval=0"];

    // Reward model: learns the preference, pairwise accuracy on held-out prompts.
    let rm = root.join("rm");
    let mut sets = common.to_vec();
    sets.extend(["train.max_steps=40", "train.lr=3e-3", "train.min_lr=3e-4"]);
    let out = ferrolm_align::reward::train(&common::opts(&base, &data, &rm, &sets)).unwrap();
    let ev = out.val.unwrap();
    assert!(ev.extra["pairwise_accuracy"] >= 0.9, "{:?}", ev.extra);
    // --held-out scores exactly the pairs the training run held out
    let e = ferrolm_align::reward::eval(&rm, std::slice::from_ref(&data), OnError::Skip, true, &Device::Cpu).unwrap();
    assert_eq!(e.pairwise_accuracy, ev.extra["pairwise_accuracy"]);
    assert!(e.pairs > 5 && e.pairs < 40, "held-out pairs {}", e.pairs);
    // by default every pair of the file it is given (80 well-formed ones)
    let all = ferrolm_align::reward::eval(&rm, std::slice::from_ref(&data), OnError::Skip, false, &Device::Cpu).unwrap();
    assert_eq!(all.pairs, 80);
    // a malformed record fails under `fail`, naming its line (81)
    let err = ferrolm_align::reward::eval(&rm, std::slice::from_ref(&data), OnError::Fail, false, &Device::Cpu).unwrap_err().to_string();
    assert!(err.contains("prefs.jsonl:81"), "{err}");

    // DPO: held-out preference accuracy and a positive implicit reward margin.
    let dpo = root.join("dpo");
    let mut sets = common.to_vec();
    sets.extend(["train.max_steps=30", "train.lr=3e-3", "train.min_lr=3e-4", "dpo.beta=0.5"]);
    let out = ferrolm_align::dpo::train(&common::opts(&base, &data, &dpo, &sets)).unwrap();
    let ev = out.val.unwrap();
    assert!(ev.extra["preference_accuracy"] >= 0.9 && ev.extra["reward_margin"] > 0.0, "{:?}", ev.extra);
    assert!(ev.loss < std::f64::consts::LN_2, "DPO loss starts at ln 2 and must fall: {}", ev.loss);
    // the DPO folder is an ordinary run folder
    ferrolm_model::load_model(&dpo, &Device::Cpu).unwrap().model.decoder("the test").unwrap();
    // DPO with LoRA adapters: the base frozen, the preference still learned, PEFT files written
    let dpo_lora = root.join("dpo-lora");
    let mut sets = common.to_vec();
    sets.extend(["train.max_steps=30", "train.lr=1e-2", "train.min_lr=1e-3", "dpo.beta=0.5", "lora.rank=4", "lora.alpha=16"]);
    let out = ferrolm_align::dpo::train(&common::opts(&base, &data, &dpo_lora, &sets)).unwrap();
    let ev = out.val.unwrap();
    assert!(ev.extra["preference_accuracy"] >= 0.8 && ev.loss < std::f64::consts::LN_2, "LoRA DPO {:?} loss {}", ev.extra, ev.loss);
    assert!(dpo_lora.join("adapter/adapter_model.safetensors").is_file() && dpo_lora.join("lora.toml").is_file());
    let ck = ferrolm_train::checkpoint::load_tensors(&ferrolm_train::checkpoint::latest(&dpo_lora).unwrap().join("model.safetensors")).unwrap();
    let ck0 = ferrolm_train::checkpoint::load_tensors(&ferrolm_train::checkpoint::latest(&base).unwrap().join("model.safetensors")).unwrap();
    for (name, t) in &ck0 {
        assert_eq!((t - &ck[name]).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap(), 0.0, "{name} moved");
    }
    ferrolm_model::load_model(&dpo_lora, &Device::Cpu).unwrap().model.decoder("the test").unwrap();

    // PPO: three iterations, figures logged, picture drawn, policy loadable.
    let ppo_sets: Vec<&str> = vec![
        "data.val_fraction=0.25",
        "data.max_response_tokens=12",
        "data.max_eval=4",
        "train.max_steps=3",
        "train.lr=1e-3",
        "train.min_lr=1e-3",
        "train.checkpoint_interval=1",
        "ppo.rollout_batch=4",
        "ppo.minibatch=2",
        "ppo.ppo_epochs=2",
        "ppo.eval_interval=0",
    ];
    let full = root.join("ppo-full");
    let mut t = PpoTrainer::new(&common::opts(&base, &data, &full, &ppo_sets), Some(&rm)).unwrap();
    let outcome = t.run().unwrap();
    assert_eq!(outcome.iterations, 3);
    assert!(outcome.val.contains_key("reward") && outcome.val.contains_key("kl"));
    let recs = ferrolm_train::metrics::read(&full.join("metrics.jsonl")).unwrap();
    let steps: Vec<_> = recs.iter().filter(|r| r.extra.contains_key("reward")).collect();
    assert_eq!(steps.len(), 3);
    for r in &steps {
        for k in ["reward", "kl", "entropy", "clipfrac", "value_loss", "kl_coef", "policy_loss"] {
            assert!(r.extra[k].is_finite(), "{k} in {r:?}");
        }
        assert!(r.extra["entropy"] > 0.0);
    }
    // the policy moved (the first iteration's update is from the starting weights)
    assert_ne!(weights(&full), weights(&base));
    assert!(full.join("ppo.svg").is_file());
    ferrolm_model::load_model(&full, &Device::Cpu).unwrap().model.decoder("the test").unwrap();

    // Exact resume: stop after 2 iterations, resume, and land on the same weights.
    let split = root.join("ppo-split");
    let mut t = PpoTrainer::new(&common::opts(&base, &data, &split, &ppo_sets), Some(&rm)).unwrap();
    t.stop_at = Some(2);
    assert_eq!(t.run().unwrap().iterations, 2);
    let mut o = common::opts(&base, &data, &split, &[]);
    o.resume = true;
    let mut t = PpoTrainer::new(&o, None).unwrap();
    assert_eq!(t.run().unwrap().iterations, 3);
    assert_eq!(weights(&split), weights(&full), "resumed PPO differs from the uninterrupted run");

    // Compare the PPO policy with its start: the start is the reference, so its KL is 0.
    let c = compare(&CompareOptions {
        policy: full.clone(),
        baseline: base.clone(),
        reward: rm.clone(),
        reference: None,
        data: vec![data.clone()],
        on_error: OnError::Skip,
        held_out: true,
        val_fraction: 0.25,
        max_prompts: 6,
        max_response_tokens: 12,
        temperature: 1.0,
        seed: 1,
        examples: 2,
        device: Device::Cpu,
    })
    .unwrap();
    assert_eq!(c.prompts, 6);
    assert!((0.0..=1.0).contains(&c.win_rate));
    assert!(c.baseline_kl_to_reference.abs() < 1e-4, "{}", c.baseline_kl_to_reference);
    assert_eq!(c.examples.len(), 2);
}
