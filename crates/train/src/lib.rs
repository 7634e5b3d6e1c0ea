//! Training: the optimizer and its schedule, batches drawn from token streams, the
//! loop with periodic evaluation, checkpoints with exact resume, metrics and plots.
//!
//! Exact resume rests on one rule: everything random in step `s` (which windows form
//! the batch, dropout masks) is drawn from a stream seeded by `(seed, s)`, never from a
//! generator that carries state across steps. A checkpoint therefore only needs the
//! weights, the optimizer moments and the step number.

pub mod arch_task;
pub mod bpb;
pub mod checkpoint;
pub mod config;
pub mod data;
pub mod distributed;
pub mod fim;
pub mod metrics;
pub mod objectives;
pub mod optim;
pub mod pairs;
pub mod plot;
pub mod run;
pub mod schedule;
pub mod task;
pub mod trainer;

pub use arch_task::{ArchData, ArchTask};
pub use bpb::BitsPerByte;
pub use config::{ObjectiveSection, RunConfig, TrainConfig};
pub use data::TokenSource;
pub use run::{start_run, start_run_with_tokenizer};
pub use task::{PairExample, TaskModel, TaskTokens};
pub use trainer::{evaluate, EvalResult, LmTask, StepReport, TrainOutcome, TrainTask, Trainer};
