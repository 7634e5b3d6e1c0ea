//! ferrolm-lab: orchestration that spans the stages — the quickstart, the experiments,
//! code completion from a run folder and the benchmark presets — as library functions. Each takes an options struct (what the
//! command line holds) and returns its result; the `ferrolm` CLI only parses arguments and
//! calls them.
//!
//! The pieces they share exist once, here or in the stage crate they belong to:
//! - corpus gathering (Cargo registry sources named in Cargo.lock and/or `--data`,
//!   optional sampling, cleaning): [`corpus::gather_corpus`];
//! - the document split: [`ferrolm_corpus::split_by_key`] (by id, by crate, by text);
//! - tokenizer training on a stride sample and token shards: [`prep`];
//! - step-time calibration and step timing: [`timing::seconds_per_step`], [`timing::time_steps`];
//! - bits per byte: [`ferrolm_train::BitsPerByte`] (also the unigram baseline, [`prep::unigram_bits_per_byte`]);
//! - the experiment config convention (`--config FILE [--quick] [--set k=v]`, a `[quick]`
//!   table of overrides): [`config::load_layered`].

pub mod architectures;
pub mod bench;
pub mod completion;
pub mod config;
pub mod corpus;
pub mod history;
pub mod prep;
pub mod quickstart;
pub mod timing;

pub use architectures::{run_architectures, ArchitecturesOptions};
pub use completion::{complete_file, run_completion_experiment, CompleteFileOptions, CompletionExperimentOptions, CompletionSummary, FileCompletion};
pub use bench::{bench_generate, bench_lora, bench_recurrent, bench_train, BenchOutcome, GenerateBenchOptions, LoraBenchOptions, Preset, RecurrentBenchOptions, TrainBenchOptions};
pub use history::{run_history, HistoryOptions, HistoryOutcome};
pub use quickstart::{run_quickstart, QuickstartOptions, QuickstartSummary};
