//! Checkpoints: `checkpoints/step-NNNNNNNN/` holding `model.safetensors`,
//! `optimizer.safetensors` and `state.json`, plus `checkpoints/latest` naming the newest.
//!
//! A checkpoint folder is written under a temporary name and renamed into place when
//! every file in it is complete and synced; `latest` is replaced atomically after that.
//! A crash at any point leaves either the previous checkpoint or the new one, never a
//! half-written folder that `latest` points to.

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use candle_core::Tensor;
use candle_nn::VarMap;
use serde::{Deserialize, Serialize};

pub const FORMAT_VERSION: u32 = 1;

/// What besides tensors a resumed run needs. Because every random draw in step s is
/// seeded by (seed, s), the step number is the whole data position.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct TrainState {
    pub format: u32,
    /// Optimizer steps completed.
    pub step: usize,
    /// Adam's update counter.
    pub adam_t: u64,
    pub seed: u64,
    pub tokens_seen: u64,
    pub elapsed_secs: f64,
    pub last_train_loss: Option<f64>,
}

// The reading side lives with the models (inference loads checkpoints without the
// training crate); training uses the same functions.
pub use ferrolm_model::registry::{checkpoints_dir, latest_checkpoint as latest, load_tensors, load_weights};

fn sync_dir(p: &Path) {
    if let Ok(f) = fs::File::open(p) {
        let _ = f.sync_all();
    }
}

fn save_tensors(map: &HashMap<String, Tensor>, path: &Path) -> Result<()> {
    candle_core::safetensors::save(map, path).with_context(|| format!("writing {}", path.display()))?;
    fs::File::open(path)?.sync_all()?;
    Ok(())
}

pub fn var_tensors(varmap: &VarMap) -> HashMap<String, Tensor> {
    let data = varmap.data().lock().expect("varmap lock");
    data.iter().map(|(k, v)| (k.clone(), v.as_tensor().clone())).collect()
}

/// Write a checkpoint and point `latest` at it; keep the newest `keep` checkpoints.
pub fn save(
    run_dir: &Path,
    varmap: &VarMap,
    optimizer: HashMap<String, Tensor>,
    state: &TrainState,
    keep: usize,
) -> Result<PathBuf> {
    let root = checkpoints_dir(run_dir);
    fs::create_dir_all(&root).with_context(|| format!("creating {}", root.display()))?;
    let name = format!("step-{:08}", state.step);
    let tmp = root.join(format!(".tmp-{name}-{}", std::process::id()));
    if tmp.exists() {
        fs::remove_dir_all(&tmp)?;
    }
    fs::create_dir_all(&tmp)?;
    save_tensors(&var_tensors(varmap), &tmp.join("model.safetensors"))?;
    save_tensors(&optimizer, &tmp.join("optimizer.safetensors"))?;
    ferrolm_common::write_atomic(tmp.join("state.json"), serde_json::to_vec_pretty(state)?)?;
    sync_dir(&tmp);
    let dest = root.join(&name);
    // A checkpoint of the same step may be there already (a resumed run that ends where it
    // started): swapped, never deleted first, so a crash cannot leave `latest` naming nothing.
    ferrolm_common::replace_dir(&tmp, &dest).with_context(|| format!("moving checkpoint into {}", dest.display()))?;
    sync_dir(&root);
    ferrolm_common::write_atomic(root.join("latest"), name.as_bytes())?;
    prune(&root, keep.max(1))?;
    Ok(dest)
}

fn prune(root: &Path, keep: usize) -> Result<()> {
    let mut steps: Vec<PathBuf> = fs::read_dir(root)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_dir() && p.file_name().is_some_and(|n| n.to_string_lossy().starts_with("step-")))
        .collect();
    steps.sort();
    // Folders a killed run was writing (`.tmp-step-N-PID`) were never taken for checkpoints.
    let ours = format!("-{}", std::process::id());
    for e in fs::read_dir(root)?.filter_map(|e| e.ok()) {
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with(".tmp-step-") && !name.ends_with(&ours) && e.path().is_dir() {
            let _ = fs::remove_dir_all(e.path());
        }
    }
    let n = steps.len();
    for old in steps.into_iter().take(n.saturating_sub(keep)) {
        fs::remove_dir_all(&old).with_context(|| format!("removing old checkpoint {}", old.display()))?;
    }
    Ok(())
}

pub fn read_state(ckpt: &Path) -> Result<TrainState> {
    let p = ckpt.join("state.json");
    let s: TrainState = serde_json::from_slice(&fs::read(&p).with_context(|| format!("reading {}", p.display()))?)
        .with_context(|| format!("{} is corrupt", p.display()))?;
    if s.format != FORMAT_VERSION {
        bail!("{} has checkpoint format {}, this ferrolm reads {FORMAT_VERSION}", p.display(), s.format);
    }
    Ok(s)
}
