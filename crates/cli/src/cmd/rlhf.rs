//! `ferrolm rlhf --model SFT_RUN --reward REWARD_RUN --data PROMPTS… --out DIR`: PPO with a
//! value head, KL penalty to the frozen start, GAE, clipped policy and value losses.
//! `ferrolm rlhf compare --policy A --baseline B --reward R --data PROMPTS…`: reward-model
//! score, win rate and KL to the reference of two policies on held-out prompts.

use std::path::PathBuf;

use anyhow::Result;
use ferrolm_align::compare::{compare, CompareOptions};

use super::align_args::{parse_on_error, StageArgs};

#[derive(clap::Args)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
pub struct Args {
    #[command(subcommand)]
    cmd: Option<Sub>,
    #[command(flatten)]
    stage: StageArgs,
    /// The reward-model run folder (`ferrolm reward train`); not needed with --resume.
    #[arg(long)]
    reward: Option<PathBuf>,
}

#[derive(clap::Subcommand)]
enum Sub {
    /// Compare a policy with a baseline (e.g. DPO/PPO vs SFT) on held-out prompts.
    Compare(CompareArgs),
}

#[derive(clap::Args)]
struct CompareArgs {
    #[arg(long)]
    policy: PathBuf,
    #[arg(long)]
    baseline: PathBuf,
    #[arg(long)]
    reward: PathBuf,
    /// Reference for the KL figures (default: the baseline).
    #[arg(long)]
    reference: Option<PathBuf>,
    #[arg(long, num_args = 1.., required = true)]
    data: Vec<PathBuf>,
    /// Use only the held-out split of the prompts (the shared prompt-hash split with
    /// --val-fraction, as the training stages hold out); by default every prompt.
    #[arg(long)]
    held_out: bool,
    /// Held-out fraction of the shared prompt-hash split (as in data.val_fraction), with --held-out.
    #[arg(long, default_value_t = 0.1)]
    val_fraction: f64,
    #[arg(long, default_value_t = 100)]
    max_prompts: usize,
    #[arg(long, default_value_t = 48)]
    max_response_tokens: usize,
    #[arg(long, default_value_t = 1.0)]
    temperature: f32,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Example answers to print.
    #[arg(long, default_value_t = 3)]
    examples: usize,
    #[arg(long, value_parser = ["skip", "fail"], default_value = "skip")]
    on_bad_record: String,
    /// Print JSON instead of a summary.
    #[arg(long)]
    json: bool,
}

pub fn run(a: Args) -> Result<()> {
    if let Some(Sub::Compare(c)) = a.cmd {
        let r = compare(&CompareOptions {
            policy: c.policy,
            baseline: c.baseline,
            reward: c.reward,
            reference: c.reference,
            data: c.data,
            on_error: parse_on_error(&c.on_bad_record)?,
            held_out: c.held_out,
            val_fraction: c.val_fraction,
            max_prompts: c.max_prompts,
            max_response_tokens: c.max_response_tokens,
            temperature: c.temperature,
            seed: c.seed,
            examples: c.examples,
            device: super::device()?,
        })?;
        if c.json {
            println!("{}", serde_json::to_string_pretty(&r)?);
        } else {
            println!(
                "{} prompts: policy reward {:+.4} vs baseline {:+.4}, win rate {:.3} ({} ties); KL to reference: policy {:.3}, baseline {:.3}; mean length {:.1} vs {:.1}",
                r.prompts, r.policy_reward, r.baseline_reward, r.win_rate, r.ties, r.policy_kl_to_reference, r.baseline_kl_to_reference, r.policy_response_len, r.baseline_response_len
            );
            for e in &r.examples {
                println!("\n> {}\npolicy   [{:+.3}]: {}\nbaseline [{:+.3}]: {}", e.prompt, e.policy_score, e.policy, e.baseline_score, e.baseline);
            }
        }
        return Ok(());
    }
    let out = ferrolm_align::ppo::train(&a.stage.options()?, a.reward.as_deref())?;
    println!("{}", serde_json::to_string_pretty(&out)?);
    Ok(())
}
