//! Loss curves as SVG (text in SVG needs no font rasteriser, so this works everywhere).

use std::path::Path;

use anyhow::Result;
use plotters::prelude::*;

use crate::metrics::Record;

/// Training loss per logged step and held-out loss per evaluation, one picture.
pub fn loss_curve(records: &[Record], title: &str, path: &Path) -> Result<()> {
    let train: Vec<(f64, f64)> = records.iter().filter_map(|r| r.loss.map(|l| (r.step as f64, l))).collect();
    let val: Vec<(f64, f64)> = records.iter().filter_map(|r| r.val_loss.map(|l| (r.step as f64, l))).collect();
    let all = || train.iter().chain(val.iter());
    let xmax = all().map(|p| p.0).fold(1.0, f64::max);
    let ymax = all().map(|p| p.1).fold(0.1, f64::max) * 1.05;
    let ymin = all().map(|p| p.1).fold(f64::INFINITY, f64::min).min(ymax) * 0.95;
    let ymin = if ymin.is_finite() { ymin.max(0.0) } else { 0.0 };
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (900, 540)).into_drawing_area();
        root.fill(&WHITE)?;
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 22))
            .margin(16)
            .x_label_area_size(40)
            .y_label_area_size(60)
            .build_cartesian_2d(0f64..xmax, ymin..ymax)?;
        chart.configure_mesh().x_desc("step").y_desc("loss (nats/token)").draw()?;
        chart
            .draw_series(LineSeries::new(train.iter().copied(), &BLUE))?
            .label("train")
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLUE));
        chart
            .draw_series(LineSeries::new(val.iter().copied(), RED.stroke_width(2)))?
            .label("validation")
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], RED));
        chart.draw_series(val.iter().map(|&p| Circle::new(p, 3, RED.filled())))?;
        chart.configure_series_labels().border_style(BLACK).background_style(WHITE.mix(0.8)).draw()?;
        root.present()?;
    }
    ferrolm_common::write_atomic(path, svg)?;
    Ok(())
}
