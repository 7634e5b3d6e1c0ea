//! LoRA in the reward model and PPO, on a tiny pretrained decoder and generated preferences:
//! the base stays bit-identical, only the adapters (and the heads) move, merged weights give
//! the unmerged rewards and logits, the PEFT files carry PEFT's key names, PPO resumes
//! exactly with adapters on, and the figures (held-out pairwise accuracy, PPO reward) are
//! printed for the record (`cargo test -p ferrolm-align --test lora_stages -- --nocapture`).

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use ferrolm_align::ppo::PpoTrainer;
use ferrolm_align::OnError;
use ferrolm_model::attention::MaskSpec;
use ferrolm_tokenizer::Message;

/// A base trained enough to write the fixture's words, so that PPO's samples differ in reward.
fn base_run(dir: &Path) {
    common::base_run(dir, |cfg| {
        cfg.train.max_steps = 150;
        cfg.train.lr = 3e-3;
        cfg.train.min_lr = 3e-4;
        cfg.train.batch_size = 4;
    });
}

fn prefs(dir: &Path) -> PathBuf {
    common::prefs(dir).0
}

fn tensors(dir: &Path, file: &str) -> HashMap<String, Tensor> {
    ferrolm_train::checkpoint::load_tensors(&ferrolm_train::checkpoint::latest(dir).unwrap().join(file)).unwrap()
}

fn values(t: &Tensor) -> Vec<f64> {
    t.flatten_all().unwrap().to_dtype(DType::F64).unwrap().to_vec1::<f64>().unwrap()
}

fn all_values(t: &HashMap<String, Tensor>) -> Vec<(String, Vec<f64>)> {
    let mut names: Vec<_> = t.keys().cloned().collect();
    names.sort();
    names.into_iter().map(|n| (n.clone(), values(&t[&n]))).collect()
}

/// Every weight of the base checkpoint is bit-identical in `run`'s checkpoint.
fn assert_base_unchanged(base: &Path, run: &Path) {
    let (b, r) = (tensors(base, "model.safetensors"), tensors(run, "model.safetensors"));
    for (name, t) in &b {
        assert_eq!(values(t), values(&r[name]), "base weight {name} moved under LoRA");
    }
}

/// A short PPO run that checkpoints every iteration (for exact-resume checks).
fn ppo_sets() -> Vec<&'static str> {
    vec![
        "data.val_fraction=0.25",
        "data.max_response_tokens=12",
        "data.max_eval=4",
        "train.max_steps=3",
        "train.lr=1e-2",
        "train.min_lr=1e-2",
        "train.checkpoint_interval=1",
        "ppo.rollout_batch=4",
        "ppo.minibatch=2",
        "ppo.ppo_epochs=2",
        "ppo.eval_interval=0",
    ]
}

fn peft_files(dir: &Path) -> (serde_json::Value, HashMap<String, Tensor>) {
    let cfg: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(dir.join("adapter_config.json")).unwrap()).unwrap();
    let t = candle_core::safetensors::load(dir.join("adapter_model.safetensors"), &Device::Cpu).unwrap();
    (cfg, t)
}

#[test]
fn lora_reward_model_and_ppo() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let base = root.join("base");
    base_run(&base);
    let data = prefs(root);
    let common = ["data.val_fraction=0.25", "data.max_response_tokens=20", "train.warmup_steps=2", "train.eval_interval=0"];
    let lora_sets = ["lora.rank=4", "lora.alpha=8", "lora.dropout=0.05"];

    // ---- reward model: LoRA on the body, the scalar head (weight only) trains fully
    let rm = root.join("rm-lora");
    let mut sets = common.to_vec();
    sets.extend(["train.max_steps=40", "train.lr=1e-2", "train.min_lr=1e-3"]);
    sets.extend(lora_sets);
    let out = ferrolm_align::reward::train(&common::opts(&base, &data, &rm, &sets)).unwrap();
    let ev = out.val.unwrap();
    let acc = ev.extra["pairwise_accuracy"];
    println!("LoRA reward model: held-out pairwise accuracy {acc:.3} over {} steps (Bradley-Terry loss {:.4})", out.steps, ev.loss);
    assert!(acc >= 0.9, "LoRA reward model accuracy {acc}: {:?}", ev.extra);
    assert_base_unchanged(&base, &rm);
    let ck = tensors(&rm, "model.safetensors");
    assert!(values(&ck["reward_head.weight"]).iter().any(|&v| v != 0.0), "the head trained");
    assert!(values(&ck["reward_head.bias"]).iter().all(|&v| v == 0.0), "the head's bias stays 0 (transformers' score has none)");
    let moved_b = ck.iter().filter(|(n, t)| n.contains(".lora_b.") && values(t).iter().any(|&v| v != 0.0)).count();
    assert!(moved_b > 0, "the adapters trained");
    // PEFT SEQ_CLS files: adapters under the HF module names, `score` as modules_to_save
    let (pc, pt) = peft_files(&rm.join("adapter"));
    assert_eq!(pc["task_type"], "SEQ_CLS");
    assert_eq!(pc["modules_to_save"], serde_json::json!(["score"]));
    assert_eq!((pc["r"].as_u64(), pc["lora_alpha"].as_f64(), pc["lora_dropout"].as_f64().map(|d| (d * 100.0).round())), (Some(4), Some(8.0), Some(5.0)));
    assert_eq!(pc["target_modules"], serde_json::json!(["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]));
    assert_eq!(values(&pt["base_model.model.score.weight"]), values(&ck["reward_head.weight"]));
    assert_eq!(pt["base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"].dims(), &[4, 32]);
    assert_eq!(values(&pt["base_model.model.model.layers.0.mlp.down_proj.lora_B.weight"]), values(&ck["decoder.blocks.0.mlp.proj.lora_b.down"]));
    assert_eq!(pt.len(), 2 * 7 + 1);
    assert!(pt.keys().all(|k| k == "base_model.model.score.weight" || (k.starts_with("base_model.model.model.layers.0.") && (k.ends_with(".lora_A.weight") || k.ends_with(".lora_B.weight")))), "{:?}", pt.keys());
    // merged weights give the unmerged rewards
    let merged = ferrolm_align::reward::load_with(&rm, &Device::Cpu, true).unwrap();
    let unmerged = ferrolm_align::reward::load_with(&rm, &Device::Cpu, false).unwrap();
    let prompt = vec![Message::user("say a word 3")];
    for resp in ["good good", "bad bad", "the good answer"] {
        let (a, b) = (merged.score(&prompt, resp).unwrap(), unmerged.score(&prompt, resp).unwrap());
        assert!((a - b).abs() < 1e-4, "merged {a} vs unmerged {b}");
    }
    assert!(merged.score(&prompt, "good good").unwrap() > merged.score(&prompt, "bad bad").unwrap());
    // `reward eval` reads the LoRA run (adapters folded in)
    let e = ferrolm_align::reward::eval(&rm, std::slice::from_ref(&data), OnError::Skip, true, &Device::Cpu).unwrap();
    assert_eq!(e.pairwise_accuracy, acc);

    // ---- PPO: LoRA policy, reference = the policy with adapters off, value head trains fully
    let mut ppo_sets = ppo_sets();
    ppo_sets.extend(["lora.rank=4", "lora.alpha=8"]);
    let full = root.join("ppo-lora-full");
    let mut t = PpoTrainer::new(&common::opts(&base, &data, &full, &ppo_sets), Some(&rm)).unwrap();
    assert_eq!(t.run().unwrap().iterations, 3);
    let recs = ferrolm_train::metrics::read(&full.join("metrics.jsonl")).unwrap();
    let steps: Vec<_> = recs.iter().filter(|r| r.extra.contains_key("reward")).collect();
    // the first rollouts come from the policy with B = 0, which is the reference: KL 0
    assert!(steps[0].extra["kl"].abs() < 1e-6, "first-iteration KL {}", steps[0].extra["kl"]);
    assert_base_unchanged(&base, &full);
    let ck = tensors(&full, "model.safetensors");
    assert!(ck.iter().any(|(n, t)| n.contains(".lora_b.") && values(t).iter().any(|&v| v != 0.0)), "the adapters trained");
    let opt = tensors(&full, "optimizer.safetensors");
    assert!(values(&opt["ppo/value_head.weight"]).iter().any(|&v| v != 0.0), "the value head trained");
    let (pc, pt) = peft_files(&full.join("adapter"));
    assert_eq!(pc["task_type"], "CAUSAL_LM");
    assert!(pt.keys().all(|k| k.starts_with("base_model.model.model.layers.0.") && (k.ends_with(".lora_A.weight") || k.ends_with(".lora_B.weight"))));
    // the run loads merged (generate, chat, compare): merged logits = unmerged logits
    let merged = ferrolm_model::load_model(&full, &Device::Cpu).unwrap().model.into_decoder("the test").unwrap();
    let spec = ferrolm_model::registry::read_spec(&full).unwrap();
    let vm = VarMap::new();
    let mut unmerged = ferrolm_model::Transformer::new(spec.require_transformer("t").unwrap(), VarBuilder::from_varmap(&vm, DType::F32, &Device::Cpu)).unwrap();
    let lcfg = ferrolm_model::lora::read_run_config(&full).unwrap().unwrap();
    ferrolm_model::lora::attach(&mut unmerged, &vm, &lcfg, 0).unwrap();
    ferrolm_model::registry::load_weights(&vm, &ferrolm_train::checkpoint::latest(&full).unwrap().join("model.safetensors")).unwrap();
    let ids = Tensor::new(&[3u32, 7, 1, 9, 5, 2, 4], &Device::Cpu).unwrap().unsqueeze(0).unwrap();
    let a = values(&merged.forward(&ids, &MaskSpec::causal(), None).unwrap());
    let b = values(&unmerged.forward(&ids, &MaskSpec::causal(), None).unwrap());
    let d = a.iter().zip(&b).map(|(x, y)| (x - y).abs()).fold(0f64, f64::max);
    assert!(d < 1e-4, "merged vs unmerged logits differ by {d}");
    // ... and the reference (adapters off) is the base run's model
    let base_model = ferrolm_model::load_model(&base, &Device::Cpu).unwrap().model.into_decoder("the test").unwrap();
    let c = values(&unmerged.without_lora().forward(&ids, &MaskSpec::causal(), None).unwrap());
    assert_eq!(c, values(&base_model.forward(&ids, &MaskSpec::causal(), None).unwrap()));

    // exact resume with LoRA on: stop after 2 iterations, resume, same weights and state
    let split = root.join("ppo-lora-split");
    let mut t = PpoTrainer::new(&common::opts(&base, &data, &split, &ppo_sets), Some(&rm)).unwrap();
    t.stop_at = Some(2);
    assert_eq!(t.run().unwrap().iterations, 2);
    let mut o = common::opts(&base, &data, &split, &[]);
    o.resume = true;
    let mut t = PpoTrainer::new(&o, None).unwrap();
    assert_eq!(t.run().unwrap().iterations, 3);
    assert_eq!(all_values(&tensors(&split, "model.safetensors")), all_values(&tensors(&full, "model.safetensors")), "resumed LoRA PPO differs");
    assert_eq!(all_values(&tensors(&split, "optimizer.safetensors")), all_values(&tensors(&full, "optimizer.safetensors")), "resumed LoRA PPO optimizer state differs");
    let split_recs = ferrolm_train::metrics::read(&split.join("metrics.jsonl")).unwrap();
    let reward_of = |r: &[ferrolm_train::metrics::Record]| r.iter().filter_map(|x| x.extra.get("reward").copied()).collect::<Vec<_>>();
    assert_eq!(reward_of(&split_recs), reward_of(&recs));

    // ---- quality: the PPO reward rises over more iterations with LoRA
    let quality = root.join("ppo-lora-quality");
    let mut qsets = ppo_sets.clone();
    qsets.retain(|s| !s.starts_with("train.max_steps") && !s.starts_with("ppo.rollout_batch") && !s.starts_with("train.checkpoint_interval"));
    qsets.retain(|s| !s.starts_with("train.lr") && !s.starts_with("train.min_lr") && !s.starts_with("ppo.ppo_epochs") && !s.starts_with("ppo.minibatch"));
    qsets.extend(["train.max_steps=40", "ppo.rollout_batch=16", "train.checkpoint_interval=0", "ppo.kl_coef=0.01", "train.lr=5e-3", "train.min_lr=5e-3", "ppo.ppo_epochs=4", "ppo.minibatch=4"]);
    let mut t = PpoTrainer::new(&common::opts(&base, &data, &quality, &qsets), Some(&rm)).unwrap();
    t.run().unwrap();
    let rewards = reward_of(&ferrolm_train::metrics::read(&quality.join("metrics.jsonl")).unwrap());
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
    let (first, last) = (mean(&rewards[..10]), mean(&rewards[rewards.len() - 10..]));
    println!("LoRA PPO: reward per iteration {:?}; mean of the first 10 {first:.3}, of the last 10 {last:.3}", rewards.iter().map(|r| (r * 1000.0).round() / 1000.0).collect::<Vec<_>>());
    assert!(last > first, "PPO reward did not rise with LoRA: {rewards:?}");
}

/// QLoRA (`lora.quant`) in DPO and PPO: the policy's base is held quantized and the
/// reference is that same quantized base (adapters off), so the first DPO loss is ln 2 and
/// the first PPO KL is 0; checkpoints hold no quantized weights; PPO resumes exactly (the
/// base's weights come from the start again); both runs load as they trained.
#[test]
fn qlora_dpo_and_ppo() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let base = root.join("base");
    base_run(&base);
    let data = prefs(root);
    let quant = ["lora.rank=4", "lora.alpha=8", "lora.quant=\"q8_0\""];

    let dpo = root.join("dpo-qlora");
    let mut sets = vec!["data.val_fraction=0.25", "data.max_response_tokens=20", "train.warmup_steps=2", "train.eval_interval=0", "train.max_steps=6", "train.lr=1e-2", "train.log_interval=1"];
    sets.extend(quant);
    ferrolm_align::dpo::train(&common::opts(&base, &data, &dpo, &sets)).unwrap();
    let recs = ferrolm_train::metrics::read(&dpo.join("metrics.jsonl")).unwrap();
    let first = recs.iter().find_map(|r| r.loss).unwrap();
    assert!((first - std::f64::consts::LN_2).abs() < 1e-5, "first DPO loss {first}: the reference is not the policy's quantized base");
    let ck = tensors(&dpo, "model.safetensors");
    assert!(!ck.contains_key("decoder.blocks.0.attn.qkv.weight") && ck.contains_key("decoder.blocks.0.attn.qkv.lora_b.q"));
    let m = ferrolm_model::load_model(&dpo, &Device::Cpu).unwrap().model.into_decoder("the test").unwrap();
    let ids = Tensor::new(&[3u32, 7, 1, 9, 5, 2, 4], &Device::Cpu).unwrap().unsqueeze(0).unwrap();
    assert!(values(&m.forward(&ids, &MaskSpec::causal(), None).unwrap()).iter().all(|v| v.is_finite()));

    // a QLoRA reward model: no body weights in its checkpoint; loads as trained (merge or not)
    let rm = root.join("rm-qlora");
    let mut rm_sets = vec!["data.val_fraction=0.25", "data.max_response_tokens=20", "train.max_steps=10", "train.eval_interval=0", "train.lr=1e-2"];
    rm_sets.extend(quant);
    ferrolm_align::reward::train(&common::opts(&base, &data, &rm, &rm_sets)).unwrap();
    let ck = tensors(&rm, "model.safetensors");
    assert!(!ck.contains_key("decoder.blocks.0.attn.qkv.weight") && ck.contains_key("reward_head.weight") && ck.contains_key("decoder.blocks.0.mlp.up.lora_a.up"));
    let (merged, kept) = (ferrolm_align::reward::load_with(&rm, &Device::Cpu, true).unwrap(), ferrolm_align::reward::load_with(&rm, &Device::Cpu, false).unwrap());
    let prompt = vec![Message::user("say a word 3")];
    let (a, b) = (merged.score(&prompt, "good good").unwrap(), kept.score(&prompt, "good good").unwrap());
    assert!(a == b && a != 0.0, "QLoRA reward scores {a} vs {b}");
    let e = ferrolm_align::reward::eval(&rm, std::slice::from_ref(&data), OnError::Skip, true, &Device::Cpu).unwrap();
    assert!(e.pairwise_accuracy.is_finite());
    let mut ppo_sets = ppo_sets();
    ppo_sets.extend(quant);
    let full = root.join("ppo-qlora-full");
    assert_eq!(PpoTrainer::new(&common::opts(&base, &data, &full, &ppo_sets), Some(&rm)).unwrap().run().unwrap().iterations, 3);
    let recs = ferrolm_train::metrics::read(&full.join("metrics.jsonl")).unwrap();
    let kl0 = recs.iter().find_map(|r| r.extra.get("kl").copied()).unwrap();
    assert!(kl0.abs() < 1e-6, "first-iteration KL {kl0}: the reference is not the policy's quantized base");
    assert!(!tensors(&full, "model.safetensors").contains_key("decoder.blocks.0.mlp.proj.weight"));
    let split = root.join("ppo-qlora-split");
    let mut t = PpoTrainer::new(&common::opts(&base, &data, &split, &ppo_sets), Some(&rm)).unwrap();
    t.stop_at = Some(2);
    assert_eq!(t.run().unwrap().iterations, 2);
    let mut o = common::opts(&base, &data, &split, &[]);
    o.resume = true;
    assert_eq!(PpoTrainer::new(&o, None).unwrap().run().unwrap().iterations, 3);
    assert_eq!(all_values(&tensors(&split, "model.safetensors")), all_values(&tensors(&full, "model.safetensors")), "resumed QLoRA PPO differs");
    assert_eq!(all_values(&tensors(&split, "optimizer.safetensors")), all_values(&tensors(&full, "optimizer.safetensors")), "resumed QLoRA PPO optimizer state differs");
    let a = values(&ferrolm_model::load_model(&full, &Device::Cpu).unwrap().model.into_decoder("t").unwrap().forward(&ids, &MaskSpec::causal(), None).unwrap());
    let b = values(&ferrolm_model::load_model(&split, &Device::Cpu).unwrap().model.into_decoder("t").unwrap().forward(&ids, &MaskSpec::causal(), None).unwrap());
    assert_eq!(a, b);
}

/// A Hugging Face folder as the start of the reward model and PPO (every stage's `--model`
/// takes one): its weights mapped onto the core, its tokenizer and Jinja chat template
/// carried into the run, so the run scores conversations as it trained on them.
#[test]
fn reward_model_and_ppo_start_from_a_hugging_face_folder() {
    let hf = Path::new(env!("CARGO_MANIFEST_DIR")).join("../model/tests/fixtures/hf/qwen2_tied");
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let data = prefs(root);
    let rm = root.join("rm");
    let out = ferrolm_align::reward::train(&common::opts(&hf, &data, &rm, &["data.val_fraction=0.25", "data.max_response_tokens=20", "train.max_steps=10", "train.eval_interval=0", "lora.rank=4"])).unwrap();
    assert!(out.val.unwrap().extra["pairwise_accuracy"].is_finite());
    assert!(rm.join("tokenizer_config.json").is_file(), "the start's chat template travels with the run");
    let prompt = vec![Message::user("say a word 3")];
    assert!(ferrolm_align::reward::load(&rm, &Device::Cpu).unwrap().score(&prompt, "good good").unwrap().is_finite());
    let ppo = root.join("ppo");
    let sets = ["data.val_fraction=0.25", "data.max_response_tokens=8", "data.max_eval=2", "train.max_steps=1", "ppo.rollout_batch=2", "ppo.minibatch=2", "ppo.ppo_epochs=1", "ppo.eval_interval=0"];
    assert_eq!(PpoTrainer::new(&common::opts(&hf, &data, &ppo, &sets), Some(&rm)).unwrap().run().unwrap().iterations, 1);
}
