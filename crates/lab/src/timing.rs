//! Step timing, once: the calibration that sizes a run to a time budget (quickstart,
//! `experiment history`) and the benchmark presets time training steps the same way.

use std::time::Instant;

use anyhow::Result;
use candle_core::Device;
use ferrolm_train::{start_run, ArchData, RunConfig, Trainer};

/// Run `warmup` untimed steps, then `steps` timed ones, calling `each` after every timed
/// step (e.g. to read `last_phase_ms`). Returns the seconds of each timed step and the wall
/// seconds of all of them together.
pub fn time_steps(t: &mut Trainer, warmup: usize, steps: usize, mut each: impl FnMut(&Trainer)) -> Result<(Vec<f64>, f64)> {
    for _ in 0..warmup {
        t.train_step()?;
    }
    let mut secs = Vec::with_capacity(steps);
    let t0 = Instant::now();
    for _ in 0..steps {
        let s = Instant::now();
        t.train_step()?;
        secs.push(s.elapsed().as_secs_f64());
        each(t);
    }
    Ok((secs, t0.elapsed().as_secs_f64()))
}

/// The median of `v` (upper median for an even length); NaN when empty.
pub fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

/// Seconds per optimizer step of `cfg` on this machine and `data`: the median of 3 steps
/// after one warm-up, in a throw-away run folder.
pub fn seconds_per_step(cfg: &RunConfig, data: ArchData, token_bytes: &[u32], device: &Device) -> Result<f64> {
    let dir = tempfile::tempdir()?;
    let mut c = cfg.clone();
    c.train.max_steps = 8;
    // fill-in-the-middle rearranges the data (re-tokenizing a few documents per step, or
    // the stream once); the step's compute is the same, and timing needs no tokenizer
    c.train.fim_rate = 0.0;
    let mut t = start_run(&c, dir.path(), data, token_bytes.to_vec(), None, device, false)?;
    let (secs, _) = time_steps(&mut t, 1, 3, |_| {})?;
    Ok(median(&secs))
}

/// Peak resident memory of this process (VmHWM), in bytes; 0 where /proc is not there.
pub fn peak_rss_bytes() -> u64 {
    proc_status_bytes("VmHWM:")
}

/// The resident set now (VmRSS), in bytes; 0 where /proc is not there.
pub fn rss_bytes() -> u64 {
    proc_status_bytes("VmRSS:")
}

/// A size line of /proc/self/status (`key` value `kB`), in bytes; 0 where it is missing.
fn proc_status_bytes(key: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with(key)).and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok()))
        .map(|kb| kb * 1024)
        .unwrap_or(0)
}
