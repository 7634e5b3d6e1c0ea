//! Progress bars with rate and ETA, shared so every long stage looks the same.
//! Bars are hidden when stderr is not a terminal (CI logs), where stages print
//! periodic plain lines instead.

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

pub fn bar(len: u64, prefix: &str) -> ProgressBar {
    let pb = ProgressBar::new(len);
    pb.set_style(
        ProgressStyle::with_template(
            "{prefix:>10} [{elapsed_precise}] {wide_bar} {pos}/{len} ({per_sec}, ETA {eta}) {msg}",
        )
        .expect("valid template"),
    );
    pb.set_prefix(prefix.to_string());
    if !is_terminal() {
        pb.set_draw_target(ProgressDrawTarget::hidden());
    }
    pb
}

/// A bar that draws nothing (a data-parallel rank other than 0).
pub fn hidden() -> ProgressBar {
    ProgressBar::hidden()
}

pub fn bytes_bar(len: u64, prefix: &str) -> ProgressBar {
    let pb = bar(len, prefix);
    pb.set_style(
        ProgressStyle::with_template(
            "{prefix:>10} [{elapsed_precise}] {wide_bar} {bytes}/{total_bytes} ({bytes_per_sec}, ETA {eta}) {msg}",
        )
        .expect("valid template"),
    );
    pb
}

pub fn is_terminal() -> bool {
    use std::io::IsTerminal;
    std::io::stderr().is_terminal()
}
