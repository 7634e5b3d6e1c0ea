//! Learning-rate schedules: linear warmup, then cosine / linear decay to a floor, or constant.

use crate::config::{Schedule, TrainConfig};

pub fn lr_at(cfg: &TrainConfig, step: usize) -> f64 {
    if step < cfg.warmup_steps {
        return cfg.lr * (step + 1) as f64 / cfg.warmup_steps as f64;
    }
    let span = cfg.max_steps.saturating_sub(cfg.warmup_steps).max(1);
    let progress = ((step - cfg.warmup_steps) as f64 / span as f64).min(1.0);
    let decay = match cfg.schedule {
        Schedule::Cosine => 0.5 * (1.0 + (std::f64::consts::PI * progress).cos()),
        Schedule::Linear => 1.0 - progress,
        Schedule::Constant => return cfg.lr,
    };
    cfg.min_lr + (cfg.lr - cfg.min_lr) * decay
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warmup_then_decay_to_floor() {
        let cfg = TrainConfig { lr: 1.0, min_lr: 0.1, warmup_steps: 10, max_steps: 110, ..Default::default() };
        assert!((lr_at(&cfg, 0) - 0.1).abs() < 1e-12);
        assert!((lr_at(&cfg, 9) - 1.0).abs() < 1e-12);
        assert!((lr_at(&cfg, 10) - 1.0).abs() < 1e-12);
        assert!((lr_at(&cfg, 60) - 0.55).abs() < 1e-12, "cosine midpoint");
        assert!((lr_at(&cfg, 110) - 0.1).abs() < 1e-12);
        assert!((lr_at(&cfg, 500) - 0.1).abs() < 1e-12, "floor after the end");
        let lin = TrainConfig { schedule: Schedule::Linear, ..cfg.clone() };
        assert!((lr_at(&lin, 35) - (0.1 + 0.9 * 0.75)).abs() < 1e-12);
    }
}
