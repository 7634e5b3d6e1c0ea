//! `ferrolm bench train`: tokens/s of full training steps (forward, backward, AdamW) and
//! peak memory on fixed presets, for side-by-side comparison with bench/train_torch.py.

use std::time::Instant;

use anyhow::Result;
use clap::{Subcommand, ValueEnum};
use ferrolm_model::{BlockStyle, TransformerConfig};
use ferrolm_train::config::{RunConfig, Schedule, TrainConfig};
use ferrolm_train::{start_run, ArchData};

#[derive(clap::Args)]
pub struct Args {
    #[command(subcommand)]
    what: What,
}

#[derive(Subcommand)]
enum What {
    /// Training throughput on a preset model with random tokens.
    Train {
        #[arg(long, value_enum, default_value = "c1")]
        preset: Preset,
        /// Timed optimizer steps (after 3 warm-up steps).
        #[arg(long, default_value_t = 20)]
        steps: usize,
        /// Modern block instead of GPT-2 style (not comparable with the PyTorch peer).
        #[arg(long)]
        modern: bool,
        /// Print one JSON line instead of text.
        #[arg(long)]
        json: bool,
        /// Matrix-product precision: f32, or bf16 operands with f32 sums on AMX tiles.
        #[arg(long, default_value = "f32")]
        matmul: ferrolm_kernels::MatmulPrecision,
    },
    /// Training throughput of a recurrent LM (LSTM or Elman) with random tokens, for
    /// bench/history_torch.py (nn.LSTM / nn.RNN side by side).
    Recurrent(super::experiment::history::RecurrentBench),
}

#[derive(Clone, Copy, ValueEnum, Debug)]
enum Preset {
    /// 4 layers, 4 heads, width 128, context 64, batch 12, vocab 65
    C1,
    /// 6 layers, 6 heads, width 384, context 256, batch 8, vocab 65
    C2,
}

fn preset(p: Preset, modern: bool) -> RunConfig {
    let (layers, heads, width, ctx, batch) = match p {
        Preset::C1 => (4, 4, 128, 64, 12),
        Preset::C2 => (6, 6, 384, 256, 8),
    };
    RunConfig::transformer(
        TransformerConfig {
            vocab_size: 65,
            d_model: width,
            n_layers: layers,
            n_heads: heads,
            n_kv_heads: heads,
            max_seq_len: ctx,
            block: if modern { BlockStyle::Modern } else { BlockStyle::Gpt2 },
            tie_embeddings: true,
            dropout: 0.0,
            ..Default::default()
        },
        // The same optimisation as the PyTorch reference: AdamW(0.9, 0.99), wd 0.1 on
        // every matrix including embeddings, clip 1.0.
        TrainConfig {
            batch_size: batch,
            lr: 1e-3,
            min_lr: 1e-4,
            warmup_steps: 0,
            schedule: Schedule::Constant,
            beta1: 0.9,
            beta2: 0.99,
            weight_decay: 0.1,
            decay_embeddings: true,
            grad_clip: 1.0,
            max_steps: usize::MAX / 2,
            ..Default::default()
        },
        Default::default(),
    )
}

pub fn peak_rss_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("VmHWM:")).and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok()))
        .map(|kb| kb * 1024)
        .unwrap_or(0)
}

pub fn run(args: Args) -> Result<()> {
    let (p, steps, modern, json, matmul) = match args.what {
        What::Train { preset, steps, modern, json, matmul } => (preset, steps, modern, json, matmul),
        What::Recurrent(b) => return super::experiment::history::bench_recurrent(b),
    };
    let mut cfg = preset(p, modern);
    cfg.train.matmul_precision = matmul;
    let seq = cfg.model.max_seq_len();
    // Random tokens: speed does not depend on content.
    let data: Vec<u32> = (0..200_000u64).map(|i| (xxhash_rust::xxh3::xxh3_64(&i.to_le_bytes()) % 65) as u32).collect();
    let dir = tempfile::tempdir()?;
    let mut t = start_run(&cfg, dir.path(), ArchData::Stream { train: &data, val: &data }, vec![1; 65], None, &super::device(), false)?;
    for _ in 0..3 {
        t.train_step()?;
    }
    let mut ms = Vec::with_capacity(steps);
    let mut phases: [Vec<f64>; 3] = Default::default();
    let t0 = Instant::now();
    for _ in 0..steps {
        let s = Instant::now();
        t.train_step()?;
        ms.push(s.elapsed().as_secs_f64() * 1e3);
        for (v, x) in phases.iter_mut().zip(t.last_phase_ms) {
            v.push(x);
        }
    }
    let phase_median: Vec<f64> = phases
        .iter_mut()
        .map(|v| {
            v.sort_by(f64::total_cmp);
            v[v.len() / 2]
        })
        .collect();
    let total = t0.elapsed().as_secs_f64();
    ms.sort_by(f64::total_cmp);
    let median = ms[ms.len() / 2];
    let tokens_per_step = (cfg.train.batch_size * seq) as f64;
    let out = serde_json::json!({
        "preset": format!("{p:?}").to_lowercase(),
        "block": if modern { "modern" } else { "gpt2" },
        "steps": steps,
        "threads": candle_core::utils::get_num_threads(),
        "params": cfg.model.num_params(),
        "matmul": format!("{:?}", ferrolm_kernels::matmul_precision()).to_lowercase(),
        "tokens_per_sec": tokens_per_step * steps as f64 / total,
        "tokens_per_sec_median_step": tokens_per_step / (median / 1e3),
        "step_ms_median": median,
        "forward_ms_median": phase_median[0],
        "backward_ms_median": phase_median[1],
        "optimizer_ms_median": phase_median[2],
        "peak_rss_bytes": peak_rss_bytes(),
    });
    if json {
        println!("{out}");
    } else {
        println!(
            "{:?}: {} params, {:.0} tokens/s, median step {:.1} ms (forward+loss {:.1}, backward {:.1}, clip+AdamW {:.1}), peak RSS {:.1} MiB ({} threads)",
            p,
            out["params"],
            out["tokens_per_sec"].as_f64().unwrap_or(0.0),
            median,
            phase_median[0],
            phase_median[1],
            phase_median[2],
            peak_rss_bytes() as f64 / (1 << 20) as f64,
            out["threads"]
        );
    }
    Ok(())
}
