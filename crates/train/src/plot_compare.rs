//! The architecture experiment's picture: held-out loss per evaluation for each model
//! (left) and one figure per model as bars (right), in the style of `plot::loss_curve`.

use std::path::Path;

use anyhow::Result;
use plotters::prelude::*;

const COLORS: [RGBColor; 4] = [BLUE, RED, RGBColor(0, 150, 0), RGBColor(160, 0, 160)];

/// `curves`: (name, [(step, held-out loss)]); `bars`: (name, value in [0, 1]).
pub fn compare_runs(curves: &[(String, Vec<(f64, f64)>)], bars: &[(String, f64)], bar_label: &str, title: &str, path: &Path) -> Result<()> {
    let pts = || curves.iter().flat_map(|c| c.1.iter());
    let xmax = pts().map(|p| p.0).fold(1.0, f64::max);
    let ymax = pts().map(|p| p.1).fold(0.1, f64::max) * 1.05;
    let ymin = pts().map(|p| p.1).fold(f64::INFINITY, f64::min).min(ymax) * 0.95;
    let ymin = if ymin.is_finite() { ymin.max(0.0) } else { 0.0 };
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (1100, 480)).into_drawing_area();
        root.fill(&WHITE)?;
        let root = root.titled(title, ("sans-serif", 22))?;
        let (left, right) = root.split_horizontally(640);
        let mut chart = ChartBuilder::on(&left)
            .margin(16)
            .x_label_area_size(40)
            .y_label_area_size(60)
            .build_cartesian_2d(0f64..xmax, ymin..ymax)?;
        chart.configure_mesh().x_desc("step").y_desc("held-out target loss (nats/token)").draw()?;
        for (i, (name, c)) in curves.iter().enumerate() {
            let color = COLORS[i % COLORS.len()];
            chart
                .draw_series(LineSeries::new(c.iter().copied(), color.stroke_width(2)))?
                .label(name.as_str())
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
            chart.draw_series(c.iter().map(|&p| Circle::new(p, 3, color.filled())))?;
        }
        chart.configure_series_labels().border_style(BLACK).background_style(WHITE.mix(0.8)).draw()?;

        let ytop = bars.iter().map(|b| b.1).fold(0.05, f64::max) * 1.15;
        let n = bars.len().max(1);
        let mut bc = ChartBuilder::on(&right)
            .margin(16)
            .x_label_area_size(40)
            .y_label_area_size(60)
            .build_cartesian_2d(0f64..n as f64, 0f64..ytop.min(1.0))?;
        bc.configure_mesh()
            .disable_x_mesh()
            .x_labels(0)
            .y_desc(bar_label)
            .draw()?;
        for (i, (name, v)) in bars.iter().enumerate() {
            let color = COLORS[i % COLORS.len()];
            let x0 = i as f64 + 0.15;
            bc.draw_series(std::iter::once(Rectangle::new([(x0, 0.0), (x0 + 0.7, *v)], color.filled())))?;
            bc.draw_series(std::iter::once(Text::new(format!("{name}: {v:.3}"), (x0, (*v + ytop * 0.03).min(ytop.min(1.0) * 0.97)), ("sans-serif", 14))))?;
        }
        root.present()?;
    }
    ferrolm_common::write_atomic(path, svg)?;
    Ok(())
}
