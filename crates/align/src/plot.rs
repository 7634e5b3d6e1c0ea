//! The PPO picture: one small chart per logged figure (reward, KL, entropy, clip fraction,
//! value loss, KL coefficient) against the iteration, held-out reward and KL as dots.

use std::path::Path;

use anyhow::Result;
use ferrolm_train::metrics::Record;
use plotters::prelude::*;

const PANELS: [(&str, &str); 6] = [
    ("reward", "reward-model score"),
    ("kl", "KL to reference (nats)"),
    ("entropy", "entropy (nats/token)"),
    ("clipfrac", "clip fraction"),
    ("value_loss", "value loss"),
    ("kl_coef", "KL coefficient β"),
];

pub fn ppo_curves(records: &[Record], path: &Path) -> Result<()> {
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (1200, 720)).into_drawing_area();
        root.fill(&WHITE)?;
        let root = root.titled("RLHF with PPO", ("sans-serif", 22))?;
        let areas = root.split_evenly((2, 3));
        for ((key, label), area) in PANELS.iter().zip(areas.iter()) {
            let train: Vec<(f64, f64)> =
                records.iter().filter_map(|r| r.extra.get(*key).map(|v| (r.step as f64, *v))).filter(|p| p.1.is_finite()).collect();
            let val: Vec<(f64, f64)> = records
                .iter()
                .filter_map(|r| r.extra.get(&format!("val_{key}")).map(|v| (r.step as f64, *v)))
                .filter(|p| p.1.is_finite())
                .collect();
            let all = || train.iter().chain(val.iter());
            let xmax = all().map(|p| p.0).fold(1.0, f64::max);
            let mut ymin = all().map(|p| p.1).fold(f64::INFINITY, f64::min);
            let mut ymax = all().map(|p| p.1).fold(f64::NEG_INFINITY, f64::max);
            if !ymin.is_finite() || !ymax.is_finite() {
                (ymin, ymax) = (0.0, 1.0);
            }
            let pad = ((ymax - ymin) * 0.08).max(1e-3);
            let mut chart = ChartBuilder::on(area)
                .caption(*label, ("sans-serif", 16))
                .margin(10)
                .x_label_area_size(30)
                .y_label_area_size(55)
                .build_cartesian_2d(0f64..xmax, (ymin - pad)..(ymax + pad))?;
            chart.configure_mesh().x_desc("iteration").draw()?;
            chart.draw_series(LineSeries::new(train.iter().copied(), &BLUE))?;
            chart.draw_series(val.iter().map(|&p| Circle::new(p, 4, RED.filled())))?;
        }
        root.present()?;
    }
    ferrolm_common::write_atomic(path, svg)?;
    Ok(())
}
