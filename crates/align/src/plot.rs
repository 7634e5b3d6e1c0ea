//! The PPO picture: one small chart per logged figure (reward, KL, entropy, clip fraction,
//! value loss, KL coefficient) against the iteration, held-out reward and KL as dots.

use std::path::Path;

use anyhow::Result;
use ferrolm_train::metrics::Record;

const PANELS: [(&str, &str); 6] = [
    ("reward", "reward-model score"),
    ("kl", "KL to reference (nats)"),
    ("entropy", "entropy (nats/token)"),
    ("clipfrac", "clip fraction"),
    ("value_loss", "value loss"),
    ("kl_coef", "KL coefficient β"),
];

pub fn ppo_curves(records: &[Record], path: &Path) -> Result<()> {
    ferrolm_train::plot::metric_panels(records, &PANELS, (2, 3), "iteration", "RLHF with PPO", path)
}
