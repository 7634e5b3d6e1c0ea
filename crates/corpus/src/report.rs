//! report.md with histogram pictures (SVG, written by hand: a bar chart needs no plotting crate).

use crate::pipeline::PipelineStats;
use crate::{io_err, Result};
use std::fmt::Write;
use std::path::Path;

fn human(b: u64) -> String {
    let b = b as f64;
    if b >= 1e9 {
        format!("{:.2} GB", b / 1e9)
    } else if b >= 1e6 {
        format!("{:.2} MB", b / 1e6)
    } else if b >= 1e3 {
        format!("{:.1} kB", b / 1e3)
    } else {
        format!("{b} B")
    }
}

fn slug(s: &str) -> String {
    let mut o: String = s.chars().map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_lowercase() } else { '-' }).collect();
    while o.contains("--") {
        o = o.replace("--", "-");
    }
    o.trim_matches('-').to_string()
}

/// A histogram as an SVG bar chart. Values spanning more than two orders of magnitude get
/// logarithmic bins (document lengths do).
pub fn histogram_svg(title: &str, values: &[f64], bins: usize) -> String {
    let (w, h, ml, mb, mt) = (640.0, 320.0, 60.0, 50.0, 30.0);
    let mut svg = format!(r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="11"><rect width="100%" height="100%" fill="white"/><text x="{}" y="18" text-anchor="middle" font-size="14">{}</text>"#, w / 2.0, xml(title));
    let finite: Vec<f64> = values.iter().copied().filter(|v| v.is_finite()).collect();
    if finite.is_empty() {
        svg.push_str(r#"<text x="320" y="160" text-anchor="middle">no data</text></svg>"#);
        return svg;
    }
    let (mut lo, mut hi) = finite.iter().fold((f64::MAX, f64::MIN), |(a, b), &v| (a.min(v), b.max(v)));
    let log = lo > 0.0 && hi / lo > 100.0;
    let tx = |v: f64| if log { v.log10() } else { v };
    if log {
        lo = lo.log10();
        hi = hi.log10();
    }
    if hi <= lo {
        hi = lo + 1.0;
    }
    let mut counts = vec![0u64; bins];
    for &v in &finite {
        let i = (((tx(v) - lo) / (hi - lo)) * bins as f64) as usize;
        counts[i.min(bins - 1)] += 1;
    }
    let maxc = *counts.iter().max().unwrap() as f64;
    let (pw, ph) = (w - ml - 20.0, h - mb - mt);
    let bw = pw / bins as f64;
    for (i, &c) in counts.iter().enumerate() {
        let bh = c as f64 / maxc * ph;
        let _ = write!(svg, r##"<rect x="{:.1}" y="{:.1}" width="{:.1}" height="{:.1}" fill="#4a7ab5"><title>{c}</title></rect>"##, ml + i as f64 * bw, mt + ph - bh, (bw - 1.0).max(0.5), bh);
    }
    let _ = write!(svg, r#"<line x1="{ml}" y1="{0}" x2="{1}" y2="{0}" stroke="black"/><line x1="{ml}" y1="{mt}" x2="{ml}" y2="{0}" stroke="black"/>"#, mt + ph, ml + pw);
    for t in 0..=4 {
        let f = t as f64 / 4.0;
        let v = lo + f * (hi - lo);
        let label = if log { format!("{:.3e}", 10f64.powf(v)) } else if (hi - lo) < 10.0 { format!("{v:.2}") } else { format!("{v:.0}") };
        let _ = write!(svg, r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">{label}</text>"#, ml + f * pw, mt + ph + 16.0);
        let _ = write!(svg, r#"<text x="{:.1}" y="{:.1}" text-anchor="end">{:.0}</text>"#, ml - 6.0, mt + ph - f * ph + 4.0, f * maxc);
    }
    let _ = write!(svg, r#"<text x="{}" y="{}" text-anchor="middle">{}{} values</text></svg>"#, ml + pw / 2.0, h - 10.0, if log { "log scale, " } else { "" }, finite.len());
    svg
}

fn xml(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

fn md(s: &str) -> String {
    s.replace('|', "\\|").replace('<', "&lt;")
}

/// The report; writes its pictures into `dir/plots/`.
pub fn render(s: &PipelineStats, dir: &Path) -> Result<String> {
    let mut r = String::new();
    let _ = writeln!(r, "# Corpus report\n");
    if let Some(sh) = &s.shard {
        let _ = writeln!(r, "Combined from {sh}.\n");
    }
    let _ = writeln!(r, "| | documents | bytes |\n|---|---:|---:|");
    let _ = writeln!(r, "| input | {} | {} |", s.input, human(s.bytes_in));
    let _ = writeln!(r, "| kept | {} | {} |", s.kept, human(s.bytes_kept));
    let _ = writeln!(r, "| removed | {} | |", s.removed);
    let _ = writeln!(r, "| rejected (malformed records) | {} | |", s.rejected);
    let _ = writeln!(r, "| written (incl. up-sampled repeats) | {} | |\n", s.written);
    let _ = writeln!(r, "Accounting: input = kept + removed: **{}**. Wall time {:.2} s ({:.2} MB/s in).\n", if s.balanced() { "balanced" } else { "NOT BALANCED" }, s.seconds, s.bytes_in as f64 / 1e6 / s.seconds.max(1e-9));
    if !s.sources.is_empty() {
        let _ = writeln!(r, "## Sources\n\n| source | input | kept | bytes in | bytes kept |\n|---|---:|---:|---:|---:|");
        for (k, v) in &s.sources {
            let _ = writeln!(r, "| {} | {} | {} | {} | {} |", md(k), v.input, v.kept, human(v.bytes_in), human(v.bytes_kept));
        }
        r.push('\n');
    }
    let _ = writeln!(r, "## Steps\n\n| step | applies to | docs in | docs out | bytes in | bytes out | removed | thread-s |\n|---|---|---:|---:|---:|---:|---:|---:|");
    for st in &s.steps {
        let removed: u64 = st.removed.values().sum();
        let scope = st.sources.as_ref().map(|v| v.join(", ")).unwrap_or_else(|| "all".into());
        let _ = writeln!(r, "| {} | {} | {} | {} | {} | {} | {} | {:.2} |", st.name, md(&scope), st.docs_in, st.docs_out, human(st.bytes_in), human(st.bytes_out), removed, st.seconds);
    }
    r.push('\n');
    for st in &s.steps {
        if st.removed.is_empty() && st.summary.is_null() {
            continue;
        }
        let _ = writeln!(r, "### {}\n", st.name);
        for (reason, n) in &st.removed {
            let _ = writeln!(r, "- **{}**: {}", md(reason), n);
            for ex in st.examples.get(reason).into_iter().flatten() {
                let _ = writeln!(r, "  - `{}`: {}", md(&ex.id), md(&ex.snippet));
            }
        }
        if !st.summary.is_null() {
            let _ = writeln!(r, "\n```json\n{}\n```", serde_json::to_string_pretty(&st.summary).unwrap());
        }
        r.push('\n');
    }
    if s.rejected > 0 {
        let _ = writeln!(r, "## Rejected records\n");
        for (k, n) in &s.rejected_by_reason {
            let _ = writeln!(r, "- {}: {}", k, n);
        }
        for e in s.rejected_examples.iter().take(10) {
            let _ = writeln!(r, "  - {}", md(&e.to_string()));
        }
        r.push('\n');
    }
    if !s.missing_crates.is_empty() {
        let _ = writeln!(r, "Crates named in the lockfile but absent from the registry: {}\n", s.missing_crates.join(", "));
    }
    if !s.histograms.is_empty() {
        let _ = writeln!(r, "## Histograms\n");
        let plots = dir.join("plots");
        for (name, vals) in &s.histograms {
            let file = format!("{}.svg", slug(name));
            let p = plots.join(&file);
            ferrolm_common::write_atomic(&p, histogram_svg(name, vals, 40)).map_err(io_err(&p))?;
            let _ = writeln!(r, "![{name}](plots/{file})\n");
        }
    }
    Ok(r)
}
