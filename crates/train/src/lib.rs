//! Training: the optimizer and its schedule, batches drawn from token streams, the
//! loop with periodic evaluation, checkpoints with exact resume, metrics and plots.
//!
//! Exact resume rests on one rule: everything random in step `s` (which windows form
//! the batch, dropout masks) is drawn from a stream seeded by `(seed, s)`, never from a
//! generator that carries state across steps. A checkpoint therefore only needs the
//! weights, the optimizer moments and the step number.

pub mod arch_task;
pub mod checkpoint;
pub mod config;
pub mod family;
pub mod data;
pub mod metrics;
pub mod objectives;
pub mod optim;
pub mod pairs;
pub mod plot;
pub mod plot_compare;
pub mod schedule;
pub mod task;
pub mod trainer;

pub use config::{RunConfig, TrainConfig};
pub use data::TokenSource;
pub use family::{build_causal_lm, family_trainer, load_causal_lm, Family, FamilyRunConfig};
pub use arch_task::{arch_trainer, load_arch_run, ArchData, ArchRunConfig, ArchTask, ObjectiveSection};
pub use task::{ArchModel, PairExample, TaskTokens};
pub use trainer::{evaluate, CausalLm, EvalResult, LmTask, TrainOutcome, TrainTask, Trainer};
