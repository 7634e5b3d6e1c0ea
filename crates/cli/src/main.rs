//! The `ferrolm` command. Thin by design: each subcommand parses its arguments and
//! calls library code: a stage crate, or `ferrolm-lab` for what spans stages (the
//! quickstart, the experiments, the benchmark presets).

use clap::{Parser, Subcommand};

mod cmd;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(name = "ferrolm", version, about = "Build a language model end to end: corpus, tokenizer, model, training, inference.")]
struct Cli {
    /// Where models run: cpu, cuda, cuda:N, or auto (the GPU when this build has CUDA and
    /// one answers). Also FERROLM_DEVICE.
    #[arg(long, global = true, env = "FERROLM_DEVICE", default_value = "cpu")]
    device: ferrolm_model::DeviceChoice,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Collect the embedded corpus, train a tokenizer and a small GPT, and write a report.
    Quickstart(cmd::quickstart::Args),
    /// Pretrain a model from a TOML config (with --set overrides); --resume continues a run.
    Train(cmd::train::Args),
    /// Generate text from a trained run, streaming tokens as they come.
    Generate(cmd::generate::Args),
    /// Held-out loss and bits per byte of a trained run on a text file or folder.
    Eval(cmd::eval::Args),
    /// Top-k predictions of a masked LM at every <|mask|> of a text.
    FillMask(cmd::fill_mask::Args),
    /// Reproducible experiments that write a report: `architectures` (causal / prefix /
    /// encoder-decoder / masked LM) and `history` (n-gram → NPLM → RNN/LSTM → Transformer).
    Experiment(cmd::experiment::Args),
    /// Measure training speed on fixed presets (for side-by-side benchmarks).
    Bench(cmd::bench::Args),
    /// Corpus pipeline: build a clean, de-duplicated, private-data-free corpus.
    Data(cmd::data::Args),
    /// Train, inspect or apply a tokenizer.
    Tokenizer(cmd::tokenizer::Args),
    /// Count-based n-gram language models (Kneser-Ney), ARPA files.
    Ngram(cmd::ngram::Args),
    /// word2vec embeddings: train, nearest neighbours, analogies.
    Word2vec(cmd::word2vec::Args),
    /// Instruction tuning (SFT) of a pretrained run on instruction or labelled data.
    Sft(cmd::sft::Args),
    /// Interactive chat with a run (chat template, streaming, /rate and /compare feedback).
    Chat(cmd::chat::Args),
    /// Classification heads: train, predict, eval; and the bag-of-words baseline.
    Classify(cmd::classify::Args),
    /// Reward model: train (Bradley-Terry on preference pairs), score, eval (pairwise accuracy).
    Reward(cmd::reward::Args),
    /// Direct preference optimisation against a frozen reference.
    Dpo(cmd::dpo::Args),
    /// RLHF with PPO (value head, KL penalty, GAE, clipping); `rlhf compare` scores two policies.
    Rlhf(cmd::rlhf::Args),
    /// Retrieval for question answering: index documents (BM25), search, evaluate on SQuAD.
    Rag(cmd::rag::Args),
    /// Log-probability of each token of a text under a model (run folder, HF folder or hf:ID).
    Score(cmd::score::Args),
    /// Export a run as a Hugging Face model folder (transformers loads it with the same logits).
    Export(cmd::export::Args),
    /// An OpenAI-compatible HTTP server with continuous batching and a web chat page.
    Serve(cmd::serve::Args),
    /// Human feedback collected by `serve`'s web page: export it as preference pairs.
    Feedback(cmd::feedback::Args),
    /// Code completion at a cursor in a file (fill-in-the-middle), with editor stop rules.
    Complete(cmd::complete::Args),
    /// Extractive question answering: train a span reader on SQuAD-format data, evaluate it.
    Qa(cmd::qa::Args),
}

fn main() {
    // mimalloc keeps freed memory mapped (training reallocates the same tensors every step).
    ferrolm_kernels::alloc::keep_freed_memory();
    // candle runs its elementwise ops on a pool of spinning worker threads (`candle-bp-*`)
    // next to the rayon pool that gemm and ferrolm's fused ops use. With as many threads as
    // cores the two pools fight for the cores: measured on 2 cores, training preset c1 ran
    // 1.4-1.7k tok/s with candle's pool and 5.7-6.0k without it on a loaded machine. So
    // candle's own pool gets one thread (the caller's; no workers) unless the user says
    // otherwise; matrix products and fused ops still use every rayon thread. Set before any
    // thread exists, which is what makes `set_var` sound here.
    if std::env::var_os("CANDLE_NUM_THREADS").is_none() {
        std::env::set_var("CANDLE_NUM_THREADS", "1");
    }
    // Exact f32 matrix products with ferrolm's batch split (training commands may switch
    // to bf16 from their config).
    ferrolm_kernels::set_matmul_precision(ferrolm_kernels::MatmulPrecision::F32);
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .with_target(false)
        .init();
    // rayon's workers get a main thread's stack size: inference commands run on one.
    ferrolm_kernels::pool::configure_global();
    let cli = Cli::parse();
    cmd::choose_device(cli.device);
    let result = match cli.command {
        Command::Quickstart(a) => cmd::quickstart::run(a),
        Command::Train(a) => cmd::train::run(a),
        Command::Generate(a) => on_pool_worker(|| cmd::generate::run(a)),
        Command::Eval(a) => on_pool_worker(|| cmd::eval::run(a)),
        Command::FillMask(a) => on_pool_worker(|| cmd::fill_mask::run(a)),
        Command::Experiment(a) => cmd::experiment::run(a),
        Command::Bench(a) => cmd::bench::run(a),
        Command::Data(a) => cmd::data::run(a),
        Command::Tokenizer(a) => cmd::tokenizer::run(a),
        Command::Ngram(a) => cmd::ngram::run(a),
        Command::Word2vec(a) => cmd::word2vec::run(a),
        Command::Sft(a) => cmd::sft::run(a),
        Command::Chat(a) => on_pool_worker(|| cmd::chat::run(a)),
        Command::Classify(a) => cmd::classify::run(a),
        Command::Reward(a) => cmd::reward::run(a),
        Command::Dpo(a) => cmd::dpo::run(a),
        Command::Score(a) => on_pool_worker(|| cmd::score::run(a)),
        Command::Export(a) => cmd::export::run(a),
        Command::Rlhf(a) => cmd::rlhf::run(a),
        Command::Rag(a) => on_pool_worker(|| cmd::rag::run(a)),
        Command::Serve(a) => cmd::serve::run(a),
        Command::Feedback(a) => cmd::feedback::run(a),
        Command::Complete(a) => on_pool_worker(|| cmd::complete::run(a)),
        Command::Qa(a) => cmd::qa::run(a),
    };
    if let Err(e) = result {
        // The reader of our output went away (`ferrolm ngram query … | head`): stop quietly
        // with success, as Unix filters do, instead of reporting an error.
        if is_broken_pipe(&e) {
            std::process::exit(0);
        }
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

/// Run an inference command on a worker thread of rayon's pool (the caller waits). Token-
/// by-token decoding makes hundreds of small parallel calls per token (each product, each
/// norm); made from the main thread, every one was handed to a pool thread and back, two
/// context switches each: perf showed a third of a 1-thread Q8_0 decode in the scheduler
/// and 44 instead of 95 tokens/s on SmolLM2-135M's shape. On a worker the calls start on
/// the thread that makes them (`ferrolm serve` runs its scheduler the same way).
fn on_pool_worker(f: impl FnOnce() -> anyhow::Result<()> + Send) -> anyhow::Result<()> {
    ferrolm_kernels::pool::on_worker(f)
}

/// True when any cause in the chain is an I/O error of kind BrokenPipe.
fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|c| c.downcast_ref::<std::io::Error>().is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe))
}
