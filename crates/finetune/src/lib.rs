//! ferrolm-finetune: instruction tuning (SFT), interactive chat with human feedback, and
//! classification heads on pretrained models; plus the pieces alignment shares with them
//! (`records`: reading instruction/preference/labelled data with file:line errors;
//! `prompt`: conversations to token ids with the chat template; `logprob`: response
//! log-probabilities under the decoder, batched). See README.md in this crate.

pub mod baseline;
pub mod chat;
pub mod classify;
pub mod logprob;
pub mod metrics;
pub mod pack;
pub mod prompt;
pub mod records;
pub mod sft;
#[cfg(test)]
mod tests;

pub use logprob::{seq_batch, sequence_logprobs, SeqBatch, Sequence};
pub use records::{Located, OnBad, Origin, ReadReport};
