//! Preference alignment on ferrolm's decoder: a reward model trained with the Bradley-Terry
//! loss, DPO against a frozen reference, RLHF with PPO (value head, KL penalty, GAE, clipped
//! policy and value losses), and a comparison of two policies by reward-model score, win rate
//! and KL. See README.md in this crate.

pub mod compare;
pub mod dpo;
pub mod encode;
pub mod losses;
pub mod plot;
pub mod ppo;
pub mod records;
pub mod reward;
pub mod stage;

pub use encode::{EncodedPair, Formatter, Sequence};
/// The response log-probabilities every stage shares (SFT's label scoring too).
pub use ferrolm_finetune::logprob;
pub use records::{OnError, PreferencePair, PromptRecord};
pub use reward::StageOptions;
