//! Compare an aligned policy with its starting policy on held-out prompts: both answer each
//! prompt (same sampling settings and seed), the reward model scores both answers, and we
//! report the mean scores, the policy's win rate (ties count one half) and each policy's KL
//! to the reference, estimated from its own samples as the mean over prompts of
//! Σ_t [log π(y_t | …) − log π_ref(y_t | …)] (the sequence-level KL(π ‖ π_ref)).

use std::path::{Path, PathBuf};

use anyhow::Result;
use candle_core::Device;
use ferrolm_model::Transformer;
use ferrolm_train::data::step_seed;
use serde::Serialize;

use crate::encode::{Formatter, Sequence};
use crate::logprob::seq_batch;
use crate::ppo::{logprobs_at, sample_response};
use crate::records::{read_prompts, split, OnError};

pub struct CompareOptions {
    pub policy: PathBuf,
    pub baseline: PathBuf,
    pub reward: PathBuf,
    /// The reference for the KL figures; the baseline when None.
    pub reference: Option<PathBuf>,
    pub data: Vec<PathBuf>,
    pub on_error: OnError,
    /// Only the held-out split of the prompts (else every prompt).
    pub held_out: bool,
    pub val_fraction: f64,
    /// At most this many prompts (0 = all).
    pub max_prompts: usize,
    /// Where the models live.
    pub device: Device,
    pub max_response_tokens: usize,
    pub temperature: f32,
    pub seed: u64,
    /// How many example answers to include in the result.
    pub examples: usize,
}

#[derive(Debug, Clone, Serialize)]
pub struct Example {
    pub prompt: String,
    pub policy: String,
    pub policy_score: f32,
    pub baseline: String,
    pub baseline_score: f32,
}

#[derive(Debug, Clone, Serialize)]
pub struct CompareResult {
    pub prompts: usize,
    pub policy_reward: f64,
    pub baseline_reward: f64,
    /// Fraction of prompts where the policy's answer scored higher (ties count one half).
    pub win_rate: f64,
    pub ties: usize,
    pub policy_kl_to_reference: f64,
    pub baseline_kl_to_reference: f64,
    pub policy_response_len: f64,
    pub baseline_response_len: f64,
    pub examples: Vec<Example>,
}

struct Side {
    seqs: Vec<Sequence>,
    scores: Vec<f32>,
    kl: Vec<f64>,
}

fn answer(model: &Transformer, reference: &Transformer, rm: &crate::reward::LoadedReward, fmt: &Formatter, prompts: &[Vec<u32>], o: &CompareOptions) -> Result<Side> {
    let mut seqs = Vec::with_capacity(prompts.len());
    for (k, p) in prompts.iter().enumerate() {
        seqs.push(sample_response(model, p, fmt, o.temperature, step_seed(o.seed, 0, k, "compare"))?);
    }
    let (mut scores, mut kl) = (Vec::new(), Vec::new());
    let refs: Vec<&Sequence> = seqs.iter().collect();
    let t = o.temperature as f64;
    for chunk in refs.chunks(16) {
        let b = seq_batch(chunk, fmt.pad_id, model.device())?;
        let pl = logprobs_at(model, &b, t)?;
        let rl = logprobs_at(reference, &b, t)?;
        kl.extend(pl.iter().zip(&rl).map(|(a, b)| a.iter().zip(b).map(|(x, y)| (x - y) as f64).sum::<f64>()));
        scores.extend(rm.model.score_sequences(chunk, fmt.pad_id, chunk.len())?);
    }
    Ok(Side { seqs, scores, kl })
}

pub fn compare(o: &CompareOptions) -> Result<CompareResult> {
    anyhow::ensure!(o.temperature > 0.0, "--temperature must be positive (the KL estimate needs samples)");
    let dev = &o.device;
    let (model_cfg, policy, _) = crate::stage::load_decoder(&o.policy, dev)?;
    let (_, baseline, _) = crate::stage::load_decoder(&o.baseline, dev)?;
    let ref_dir: &Path = o.reference.as_deref().unwrap_or(&o.baseline);
    let (_, reference, _) = crate::stage::load_decoder(ref_dir, dev)?;
    for d in [o.baseline.as_path(), ref_dir, o.reward.as_path()] {
        let a = std::fs::read(o.policy.join("tokenizer.json"))?;
        let b = std::fs::read(d.join("tokenizer.json"))?;
        anyhow::ensure!(a == b, "{} and {} use different tokenizers", o.policy.display(), d.display());
    }
    let rm = crate::reward::load(&o.reward, dev)?;
    let fmt = Formatter::from_run(&o.policy, model_cfg.max_seq_len, o.max_response_tokens)?;
    let (prompts, report) = read_prompts(&o.data, o.on_error)?;
    if report.bad > 0 {
        eprintln!("{} malformed records skipped", report.bad);
    }
    let mut prompts = if o.held_out { split(&prompts, |p| &p.prompt, o.val_fraction).1 } else { prompts };
    if o.max_prompts > 0 {
        prompts.truncate(o.max_prompts);
    }
    anyhow::ensure!(!prompts.is_empty(), "no prompts to compare on (the held-out split is empty; pass --all?)");
    let ids: Vec<Vec<u32>> = prompts.iter().map(|p| fmt.generation_prompt(&p.prompt)).collect();
    let a = answer(&policy, &reference, &rm, &fmt, &ids, o)?;
    let b = answer(&baseline, &reference, &rm, &fmt, &ids, o)?;
    let n = ids.len() as f64;
    let mut wins = 0f64;
    let mut ties = 0;
    for (x, y) in a.scores.iter().zip(&b.scores) {
        if x > y {
            wins += 1.0;
        } else if x == y {
            wins += 0.5;
            ties += 1;
        }
    }
    let mean = |v: &[f32]| v.iter().map(|&x| x as f64).sum::<f64>() / n;
    let examples = (0..ids.len().min(o.examples))
        .map(|i| Example {
            prompt: prompts[i].prompt.iter().map(|m| m.content.as_str()).collect::<Vec<_>>().join("\n"),
            policy: fmt.decode_response(a.seqs[i].response()),
            policy_score: a.scores[i],
            baseline: fmt.decode_response(b.seqs[i].response()),
            baseline_score: b.scores[i],
        })
        .collect();
    Ok(CompareResult {
        prompts: ids.len(),
        policy_reward: mean(&a.scores),
        baseline_reward: mean(&b.scores),
        win_rate: wins / n,
        ties,
        policy_kl_to_reference: a.kl.iter().sum::<f64>() / n,
        baseline_kl_to_reference: b.kl.iter().sum::<f64>() / n,
        policy_response_len: a.seqs.iter().map(|s| s.response_len() as f64).sum::<f64>() / n,
        baseline_response_len: b.seqs.iter().map(|s| s.response_len() as f64).sum::<f64>() / n,
        examples,
    })
}
