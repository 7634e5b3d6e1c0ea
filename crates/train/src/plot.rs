//! Every picture ferrolm draws, as SVG (text in SVG needs no font rasteriser, so this works
//! everywhere): the loss curve of a run, the comparison of several runs, panels of logged
//! figures (PPO), and labelled points on two axes (the history experiment). They share the
//! canvas, the axis ranges and the atomic write.

use std::path::Path;

use anyhow::Result;
use plotters::coord::Shift;
use plotters::prelude::*;

use crate::metrics::Record;

/// Series colours, in order.
pub const COLORS: [RGBColor; 6] = [BLUE, RED, RGBColor(0, 150, 0), RGBColor(160, 0, 160), BLACK, RGBColor(0, 150, 170)];

type Area<'a> = DrawingArea<SVGBackend<'a>, Shift>;

/// Draw on a white `size` canvas and write it atomically to `path`.
fn draw_svg(path: &Path, size: (u32, u32), draw: impl FnOnce(&Area) -> Result<()>) -> Result<()> {
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, size).into_drawing_area();
        root.fill(&WHITE)?;
        draw(&root)?;
        root.present()?;
    }
    ferrolm_common::write_atomic(path, svg)?;
    Ok(())
}

/// x from 0 to the largest x (at least 1); y from just below the smallest to just above the
/// largest value, never below 0 when `nonnegative`; a unit range when there is no point.
fn bounds<'a>(points: impl Iterator<Item = &'a (f64, f64)> + Clone, nonnegative: bool) -> (f64, f64, f64) {
    let finite = points.filter(|p| p.1.is_finite());
    let xmax = finite.clone().map(|p| p.0).fold(1.0, f64::max);
    let lo = finite.clone().map(|p| p.1).fold(f64::INFINITY, f64::min);
    let hi = finite.map(|p| p.1).fold(f64::NEG_INFINITY, f64::max);
    if !lo.is_finite() || !hi.is_finite() {
        return (xmax, 0.0, 1.0);
    }
    let pad = ((hi - lo) * 0.08).max(hi.abs() * 0.05).max(1e-3);
    let ymin = if nonnegative { (lo - pad).max(0.0) } else { lo - pad };
    (xmax, ymin, hi + pad)
}

/// Training loss per logged step and held-out loss per evaluation, one picture.
pub fn loss_curve(records: &[Record], title: &str, path: &Path) -> Result<()> {
    let train: Vec<(f64, f64)> = records.iter().filter_map(|r| r.loss.map(|l| (r.step as f64, l))).collect();
    let val: Vec<(f64, f64)> = records.iter().filter_map(|r| r.val_loss.map(|l| (r.step as f64, l))).collect();
    let (xmax, ymin, ymax) = bounds(train.iter().chain(val.iter()), true);
    draw_svg(path, (900, 540), |root| {
        let mut chart = ChartBuilder::on(root)
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
        Ok(())
    })
}

/// Several runs side by side: held-out loss per evaluation for each (left) and one figure
/// per run as bars (right). `curves`: (name, [(step, held-out loss)]); `bars`: (name,
/// value in [0, 1]).
pub fn compare_runs(curves: &[(String, Vec<(f64, f64)>)], bars: &[(String, f64)], bar_label: &str, title: &str, path: &Path) -> Result<()> {
    let (xmax, ymin, ymax) = bounds(curves.iter().flat_map(|c| c.1.iter()), true);
    draw_svg(path, (1100, 480), |root| {
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
        bc.configure_mesh().disable_x_mesh().x_labels(0).y_desc(bar_label).draw()?;
        for (i, (name, v)) in bars.iter().enumerate() {
            let color = COLORS[i % COLORS.len()];
            let x0 = i as f64 + 0.15;
            bc.draw_series(std::iter::once(Rectangle::new([(x0, 0.0), (x0 + 0.7, *v)], color.filled())))?;
            bc.draw_series(std::iter::once(Text::new(format!("{name}: {v:.3}"), (x0, (*v + ytop * 0.03).min(ytop.min(1.0) * 0.97)), ("sans-serif", 14))))?;
        }
        Ok(())
    })
}

/// Runs compared on a curve (left: e.g. held-out bits per byte per evaluation) and on
/// several figures at once (right: one group of bars per figure, one bar per series, values
/// in [0, 1]). `series`: (name, one value per group).
pub fn curves_and_grouped_bars(
    curves: &[(String, Vec<(f64, f64)>)],
    curve_label: &str,
    groups: &[String],
    series: &[(String, Vec<f64>)],
    bar_label: &str,
    title: &str,
    path: &Path,
) -> Result<()> {
    let (xmax, ymin, ymax) = bounds(curves.iter().flat_map(|c| c.1.iter()), true);
    draw_svg(path, (1200, 500), |root| {
        let root = root.titled(title, ("sans-serif", 22))?;
        let (left, right) = root.split_horizontally(520);
        let mut chart = ChartBuilder::on(&left).margin(16).x_label_area_size(40).y_label_area_size(60).build_cartesian_2d(0f64..xmax, ymin..ymax)?;
        chart.configure_mesh().x_desc("step").y_desc(curve_label).draw()?;
        for (i, (name, c)) in curves.iter().enumerate() {
            let color = COLORS[i % COLORS.len()];
            chart
                .draw_series(LineSeries::new(c.iter().copied(), color.stroke_width(2)))?
                .label(name.as_str())
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
            chart.draw_series(c.iter().map(|&p| Circle::new(p, 3, color.filled())))?;
        }
        chart.configure_series_labels().border_style(BLACK).background_style(WHITE.mix(0.8)).draw()?;

        let ytop = (series.iter().flat_map(|s| s.1.iter().copied()).filter(|v| v.is_finite()).fold(0.05, f64::max) * 1.2).min(1.0);
        let g = groups.len().max(1);
        let mut bc = ChartBuilder::on(&right).margin(16).x_label_area_size(40).y_label_area_size(60).build_cartesian_2d(0f64..g as f64, 0f64..ytop)?;
        bc.configure_mesh().disable_x_mesh().x_labels(0).y_desc(bar_label).draw()?;
        let w = 0.8 / series.len().max(1) as f64;
        for (si, (name, values)) in series.iter().enumerate() {
            let color = COLORS[si % COLORS.len()];
            bc.draw_series(values.iter().enumerate().filter(|(_, v)| v.is_finite()).map(|(gi, &v)| {
                let x0 = gi as f64 + 0.1 + si as f64 * w;
                Rectangle::new([(x0, 0.0), (x0 + w * 0.9, v)], color.filled())
            }))?
            .label(name.as_str())
            .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 12, y + 5)], color.filled()));
        }
        for (gi, name) in groups.iter().enumerate() {
            bc.draw_series(std::iter::once(Text::new(name.clone(), (gi as f64 + 0.1, ytop * 0.97), ("sans-serif", 13))))?;
        }
        bc.configure_series_labels().position(SeriesLabelPosition::UpperRight).border_style(BLACK).background_style(WHITE.mix(0.8)).draw()?;
        Ok(())
    })
}

/// One small chart per logged figure against the step: `panels` are (key in the records'
/// `extra`, axis label); the held-out value (`val_<key>`) is drawn as dots.
pub fn metric_panels(records: &[Record], panels: &[(&str, &str)], grid: (usize, usize), x_desc: &str, title: &str, path: &Path) -> Result<()> {
    draw_svg(path, (1200, 720), |root| {
        let root = root.titled(title, ("sans-serif", 22))?;
        let areas = root.split_evenly(grid);
        for ((key, label), area) in panels.iter().zip(areas.iter()) {
            let series = |k: &str| -> Vec<(f64, f64)> {
                records.iter().filter_map(|r| r.extra.get(k).map(|v| (r.step as f64, *v))).filter(|p| p.1.is_finite()).collect()
            };
            let (train, val) = (series(key), series(&format!("val_{key}")));
            let (xmax, ymin, ymax) = bounds(train.iter().chain(val.iter()), false);
            let mut chart = ChartBuilder::on(area)
                .caption(*label, ("sans-serif", 16))
                .margin(10)
                .x_label_area_size(30)
                .y_label_area_size(55)
                .build_cartesian_2d(0f64..xmax, ymin..ymax)?;
            chart.configure_mesh().x_desc(x_desc).draw()?;
            chart.draw_series(LineSeries::new(train.iter().copied(), &BLUE))?;
            chart.draw_series(val.iter().map(|&p| Circle::new(p, 4, RED.filled())))?;
        }
        Ok(())
    })
}

/// A labelled point drawn by [`labelled_points`]: its name, the x of each panel, and y.
pub struct Point {
    pub name: String,
    pub xs: [f64; 2],
    pub y: f64,
}

/// Two panels of the same labelled points: y against `xs[0]` (linear) and against `xs[1]`
/// (log scale), e.g. bits per byte against training time and against parameters.
pub fn labelled_points(points: &[Point], x_descs: [&str; 2], y_desc: &str, title: &str, path: &Path) -> Result<()> {
    let ys: Vec<(f64, f64)> = points.iter().map(|p| (0.0, p.y)).collect();
    let (_, ymin, ymax) = bounds(ys.iter(), true);
    let x0max = points.iter().map(|p| p.xs[0]).fold(1.0, f64::max) * 1.1;
    let x1min = points.iter().map(|p| p.xs[1]).fold(f64::INFINITY, f64::min).max(1.0) / 2.0;
    let x1max = points.iter().map(|p| p.xs[1]).fold(2.0, f64::max) * 2.0;
    draw_svg(path, (1200, 520), |root| {
        let root = root.titled(title, ("sans-serif", 22))?;
        let (left, right) = root.split_horizontally(600);
        let mut a = ChartBuilder::on(&left).margin(18).x_label_area_size(40).y_label_area_size(60).build_cartesian_2d(0f64..x0max, ymin..ymax)?;
        a.configure_mesh().x_desc(x_descs[0]).y_desc(y_desc).draw()?;
        let mut b = ChartBuilder::on(&right)
            .margin(18)
            .x_label_area_size(40)
            .y_label_area_size(60)
            .build_cartesian_2d((x1min..x1max).log_scale(), ymin..ymax)?;
        b.configure_mesh().x_desc(x_descs[1]).y_desc(y_desc).draw()?;
        for (i, p) in points.iter().enumerate() {
            let c = COLORS[i % COLORS.len()];
            let font = ("sans-serif", 14).into_font().color(&c);
            a.draw_series([Circle::new((p.xs[0], p.y), 6, c.filled())])?;
            a.draw_series([Text::new(p.name.clone(), (p.xs[0], p.y), font.clone())])?;
            b.draw_series([Circle::new((p.xs[1], p.y), 6, c.filled())])?;
            b.draw_series([Text::new(p.name.clone(), (p.xs[1], p.y), font)])?;
        }
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_picture_is_written_as_svg() {
        let dir = tempfile::tempdir().unwrap();
        let recs: Vec<Record> = (1..=5)
            .map(|s| Record { step: s, loss: Some(3.0 / s as f64), val_loss: (s % 2 == 0).then_some(2.0), extra: [("reward".to_string(), s as f64)].into(), ..Default::default() })
            .collect();
        loss_curve(&recs, "t", &dir.path().join("a.svg")).unwrap();
        compare_runs(&[("x".into(), vec![(1.0, 2.0), (2.0, 1.5)])], &[("x".into(), 0.4)], "em", "t", &dir.path().join("b.svg")).unwrap();
        metric_panels(&recs, &[("reward", "reward"), ("kl", "kl")], (1, 2), "iteration", "t", &dir.path().join("c.svg")).unwrap();
        labelled_points(&[Point { name: "lstm".into(), xs: [10.0, 5e4], y: 2.1 }], ["s", "params"], "bpb", "t", &dir.path().join("d.svg")).unwrap();
        let groups = vec!["em".to_string(), "sim".to_string()];
        curves_and_grouped_bars(&[("fim".into(), vec![(1.0, 2.0), (2.0, 1.8)])], "bpb", &groups, &[("fim".into(), vec![0.2, 0.5]), ("ngram".into(), vec![0.1, f64::NAN])], "share", "t", &dir.path().join("e.svg")).unwrap();
        for f in ["a", "b", "c", "d", "e"] {
            let s = std::fs::read_to_string(dir.path().join(format!("{f}.svg"))).unwrap();
            assert!(s.starts_with("<svg") && s.contains("</svg>"), "{f}.svg");
        }
        assert_eq!(bounds([(0.0, f64::NAN)].iter(), true), (1.0, 0.0, 1.0));
    }
}
