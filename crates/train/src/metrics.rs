//! `metrics.jsonl`: one JSON object per line, flushed as written, so a live run can be
//! followed with `tail -f` and a crashed run keeps everything up to the crash.

use std::fs::{self, File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

/// One line of `metrics.jsonl`: a training step's numbers or an evaluation's; absent fields are omitted.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Record {
    pub step: usize,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub loss: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub lr: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub grad_norm: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub tokens_per_sec: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub val_loss: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub val_bpb: Option<f64>,
    pub elapsed_secs: f64,
    /// Task-specific figures (`val_accuracy`, `reward_margin`, `kl`, …).
    #[serde(flatten, default)]
    pub extra: std::collections::BTreeMap<String, f64>,
}

pub struct MetricsLog {
    path: PathBuf,
    file: File,
}

impl MetricsLog {
    /// Open for appending. When resuming from `resume_step`, records after that step (from
    /// the interrupted tail of the previous run) are dropped first, so the log reads as one run.
    pub fn open(path: &Path, resume_step: Option<usize>) -> Result<Self> {
        if let Some(step) = resume_step {
            if path.exists() {
                let kept: Vec<String> = read(path)?
                    .into_iter()
                    .filter(|r| r.step <= step)
                    .map(|r| serde_json::to_string(&r).expect("record serialises"))
                    .collect();
                let mut text = kept.join("\n");
                if !text.is_empty() {
                    text.push('\n');
                }
                ferrolm_common::write_atomic(path, text)?;
            }
        } else if path.exists() {
            fs::remove_file(path)?;
        }
        let file = OpenOptions::new().create(true).append(true).open(path).with_context(|| format!("opening {}", path.display()))?;
        Ok(Self { path: path.to_path_buf(), file })
    }

    pub fn write(&mut self, r: &Record) -> Result<()> {
        let mut line = serde_json::to_string(r)?;
        line.push('\n');
        self.file.write_all(line.as_bytes()).with_context(|| format!("writing {}", self.path.display()))?;
        self.file.flush()?;
        Ok(())
    }
}

/// Read every record; a torn last line (crash mid-write) is ignored, other bad lines are errors.
pub fn read(path: &Path) -> Result<Vec<Record>> {
    let f = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let lines: Vec<String> = BufReader::new(f).lines().collect::<std::io::Result<_>>()?;
    let n = lines.len();
    let mut out = Vec::new();
    for (i, line) in lines.into_iter().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        match serde_json::from_str(&line) {
            Ok(r) => out.push(r),
            Err(_) if i + 1 == n => break,
            Err(e) => anyhow::bail!("{}:{}: {e}", path.display(), i + 1),
        }
    }
    Ok(out)
}
