//! `ferrolm bench train|recurrent|generate|lora`: tokens/s of full training steps and peak memory on
//! fixed presets (`ferrolm_lab::bench`), for side-by-side comparison with
//! bench/train_torch.py and bench/history_torch.py.

use anyhow::Result;
use clap::{Subcommand, ValueEnum};
use ferrolm_lab::{bench_generate, bench_lora, bench_recurrent, bench_train, BenchOutcome, GenerateBenchOptions, LoraBenchOptions, Preset, RecurrentBenchOptions, TrainBenchOptions};

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
        preset: PresetArg,
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
    Recurrent(RecurrentArgs),
    /// Inference speed of any model (run folder, Hugging Face folder, .gguf): load time,
    /// prefill tokens/s and batch-1 greedy decode tokens/s on random prompt ids, for
    /// bench/hf_speed.py (transformers and llama.cpp side by side).
    Generate {
        #[arg(long)]
        model: std::path::PathBuf,
        #[arg(long, default_value_t = 128)]
        prompt_tokens: usize,
        #[arg(long, default_value_t = 64)]
        new_tokens: usize,
        /// Timed rounds after one warm-up round; medians are reported.
        #[arg(long, default_value_t = 3)]
        repeats: usize,
        #[arg(long)]
        json: bool,
        /// Quantize the weights first: q8_0, q4_k or f16 (see `generate --quant`).
        #[arg(long)]
        quant: Option<ferrolm_model::QuantKind>,
    },
    /// LoRA training tokens/s (every block linear adapted, base frozen, random tokens) on
    /// any decoder, for bench/lora_speed.py (transformers + PEFT side by side).
    Lora {
        #[arg(long)]
        model: std::path::PathBuf,
        #[arg(long, default_value_t = 16)]
        rank: usize,
        #[arg(long, default_value_t = 32.0)]
        alpha: f64,
        #[arg(long, default_value_t = 4)]
        batch: usize,
        #[arg(long, default_value_t = 256)]
        seq_len: usize,
        /// Timed optimizer steps (after 2 warm-up steps).
        #[arg(long, default_value_t = 5)]
        steps: usize,
        #[arg(long)]
        json: bool,
        /// Matrix-product precision: f32, or bf16 operands with f32 sums on AMX tiles
        /// (`train.matmul_precision`).
        #[arg(long, default_value = "f32")]
        matmul: ferrolm_kernels::MatmulPrecision,
        /// Hold the frozen base's block weights quantized (q8_0, q4_k or f16): QLoRA.
        #[arg(long)]
        quant: Option<ferrolm_model::QuantKind>,
        /// Adapter dropout (`lora.dropout`; PEFT's `lora_dropout`).
        #[arg(long, default_value_t = 0.0)]
        dropout: f32,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum PresetArg {
    /// 4 layers, 4 heads, width 128, context 64, batch 12, vocab 65
    C1,
    /// 6 layers, 6 heads, width 384, context 256, batch 8, vocab 65
    C2,
}

/// `ferrolm bench recurrent`: tokens/s of full training steps (forward, backward through
/// time, clip, AdamW) of an LSTM or Elman LM on random tokens.
#[derive(clap::Args, Debug)]
struct RecurrentArgs {
    #[arg(long, default_value = "lstm")]
    family: String,
    #[arg(long, default_value_t = 4096)]
    vocab: usize,
    #[arg(long, default_value_t = 128)]
    embed: usize,
    #[arg(long, default_value_t = 384)]
    hidden: usize,
    #[arg(long, default_value_t = 1)]
    layers: usize,
    #[arg(long, default_value_t = 32)]
    batch: usize,
    #[arg(long, default_value_t = 64)]
    seq_len: usize,
    /// Timed optimizer steps (after 2 warm-up steps).
    #[arg(long, default_value_t = 10)]
    steps: usize,
    #[arg(long)]
    json: bool,
}

pub fn run(args: Args) -> Result<()> {
    let device = super::device()?;
    let (outcome, json): (BenchOutcome, bool) = match args.what {
        What::Train { preset, steps, modern, json, matmul } => {
            let preset = match preset {
                PresetArg::C1 => Preset::C1,
                PresetArg::C2 => Preset::C2,
            };
            (bench_train(&TrainBenchOptions { preset, steps, modern, matmul }, &device)?, json)
        }
        What::Generate { model, prompt_tokens, new_tokens, repeats, json, quant } => {
            let model = super::model_dir(&model)?;
            // on a rayon worker, as `generate` runs (see main.rs)
            let o = GenerateBenchOptions { model, prompt_tokens, new_tokens, repeats, quant };
            (ferrolm_kernels::pool::on_worker(|| bench_generate(&o, &device))?, json)
        }
        What::Lora { model, rank, alpha, batch, seq_len, steps, json, matmul, quant, dropout } => {
            let model = super::model_dir(&model)?;
            (bench_lora(&LoraBenchOptions { model, rank, alpha, batch, seq_len, steps, matmul, quant, dropout }, &device)?, json)
        }
        What::Recurrent(b) => {
            let o = RecurrentBenchOptions { family: b.family, vocab: b.vocab, embed: b.embed, hidden: b.hidden, layers: b.layers, batch: b.batch, seq_len: b.seq_len, steps: b.steps };
            (bench_recurrent(&o, &device)?, b.json)
        }
    };
    if json {
        println!("{}", outcome.json);
    } else {
        println!("{}", outcome.text);
    }
    Ok(())
}
