//! The training loop: micro-batches with gradient accumulation, AdamW with a schedule,
//! gradient clipping, periodic evaluation (loss and bits per byte), checkpoints, Ctrl-C
//! handling, and a stop with a clear message when the loss stops being finite.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Once;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, D};
use candle_nn::{VarBuilder, VarMap};
use ferrolm_model::attention::MaskSpec;
use ferrolm_model::{init::init_params, Transformer};
use serde::{Deserialize, Serialize};

use crate::checkpoint::{self, TrainState};
use crate::config::RunConfig;
use crate::data::{eval_offsets, make_batch, step_seed, train_offsets, TokenSource};
use crate::metrics::{MetricsLog, Record};
use crate::optim::AdamW;
use crate::schedule::lr_at;

static INTERRUPTED: AtomicBool = AtomicBool::new(false);
static HANDLER: Once = Once::new();

/// Make Ctrl-C request a checkpoint and a clean stop instead of killing the process.
/// A second Ctrl-C while saving exits immediately (the checkpoint protocol keeps the
/// previous checkpoint valid in that case).
pub fn install_interrupt_handler() {
    HANDLER.call_once(|| {
        let _ = ctrlc::set_handler(|| {
            if INTERRUPTED.swap(true, Ordering::SeqCst) {
                eprintln!("\nsecond interrupt: exiting without saving");
                std::process::exit(130);
            }
            eprintln!("\ninterrupt: saving a checkpoint after this step (Ctrl-C again to abort)");
        });
    });
}

/// For tests and embedders: request the same stop as Ctrl-C.
pub fn request_stop() {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StopReason {
    Completed,
    Interrupted,
    TimeLimit,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EvalResult {
    /// Mean cross-entropy per target token, in nats.
    pub loss: f64,
    /// Total cross-entropy in bits divided by the UTF-8 bytes the target tokens stand for.
    pub bits_per_byte: f64,
    pub tokens: usize,
    pub bytes: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TrainOutcome {
    pub steps: usize,
    pub stop: StopReason,
    pub last_train_loss: Option<f64>,
    pub val: Option<EvalResult>,
    pub tokens_per_sec: f64,
    pub elapsed_secs: f64,
    pub checkpoint: PathBuf,
}

/// Build the model described by `cfg` with fresh variables (not initialised).
pub fn build_model(cfg: &RunConfig, device: &Device) -> Result<(Transformer, VarMap)> {
    let varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, device);
    let model = Transformer::new(&cfg.model, vb).context("building the model")?;
    Ok((model, varmap))
}

/// Load a trained run folder: its config and the weights of its latest checkpoint.
pub fn load_run(run_dir: &Path, device: &Device) -> Result<(RunConfig, Transformer, VarMap)> {
    let cfg_path = run_dir.join("config.toml");
    let value = ferrolm_common::load_config(Some(&cfg_path), &[])?;
    let cfg = RunConfig::from_value(&value).with_context(|| format!("in {}", cfg_path.display()))?;
    let ckpt = checkpoint::latest(run_dir)?;
    let (model, varmap) = build_model(&cfg, device)?;
    checkpoint::load_weights(&varmap, &ckpt.join("model.safetensors"))?;
    Ok((cfg, model, varmap))
}

/// Held-out loss and bits per byte over fixed windows of `src`.
/// Tokens that stand for no text (special tokens such as end-of-text) count in the loss
/// but not in bits per byte, whose denominator is text bytes.
pub fn evaluate(
    model: &Transformer,
    src: &dyn TokenSource,
    token_bytes: &[u32],
    seq_len: usize,
    batch_size: usize,
    n_windows: usize,
) -> Result<EvalResult> {
    if src.len() < seq_len + 1 {
        bail!("held-out data has {} tokens, fewer than one window of {}", src.len(), seq_len + 1);
    }
    let offsets = eval_offsets(src, n_windows, seq_len);
    let (mut nll_all, mut nll_text, mut tokens, mut bytes) = (0f64, 0f64, 0usize, 0u64);
    for chunk in offsets.chunks(batch_size) {
        let batch = make_batch(src, chunk, seq_len, model.device())?;
        let logits = model.forward(&batch.inputs, &MaskSpec::causal(), None)?;
        let logp = candle_nn::ops::log_softmax(&logits, D::Minus1)?;
        let nll: Vec<f32> = logp
            .gather(&batch.targets.unsqueeze(D::Minus1)?, D::Minus1)?
            .flatten_all()?
            .to_vec1()?;
        for (&l, &t) in nll.iter().zip(&batch.target_ids) {
            let l = -(l as f64);
            nll_all += l;
            let b = token_bytes.get(t as usize).copied().unwrap_or(0) as u64;
            if b > 0 {
                nll_text += l;
                bytes += b;
            }
        }
        tokens += nll.len();
    }
    Ok(EvalResult {
        loss: nll_all / tokens as f64,
        bits_per_byte: if bytes > 0 { nll_text / std::f64::consts::LN_2 / bytes as f64 } else { f64::NAN },
        tokens,
        bytes,
    })
}

pub struct Trainer<'a> {
    pub cfg: RunConfig,
    pub model: Transformer,
    pub varmap: VarMap,
    opt: AdamW,
    run_dir: PathBuf,
    train: &'a dyn TokenSource,
    val: &'a dyn TokenSource,
    token_bytes: Vec<u32>,
    state: TrainState,
    /// Print plain progress lines instead of a bar (logs, CI).
    pub quiet: bool,
    /// Stop as if interrupted once this step is reached (tests of resume; embedders).
    pub stop_at: Option<usize>,
}

impl<'a> Trainer<'a> {
    fn check_data(cfg: &RunConfig, train: &dyn TokenSource, val: &dyn TokenSource) -> Result<()> {
        let need = cfg.seq_len() + 2;
        if train.len() < need {
            bail!("training data has {} tokens; need at least {need} for one window of train.seq_len {}", train.len(), cfg.seq_len());
        }
        if val.len() < need {
            bail!("held-out data has {} tokens; need at least {need}", val.len());
        }
        Ok(())
    }

    /// A fresh run: initialise the weights from the seed and write `config.toml`.
    pub fn new(
        cfg: RunConfig,
        run_dir: &Path,
        train: &'a dyn TokenSource,
        val: &'a dyn TokenSource,
        token_bytes: Vec<u32>,
        device: &Device,
    ) -> Result<Self> {
        cfg.validate()?;
        Self::check_data(&cfg, train, val)?;
        std::fs::create_dir_all(run_dir).with_context(|| format!("creating {}", run_dir.display()))?;
        ferrolm_common::write_atomic(run_dir.join("config.toml"), cfg.to_toml())?;
        let (model, varmap) = build_model(&cfg, device)?;
        init_params(&varmap, cfg.model.n_layers, cfg.train.seed)?;
        let opt = AdamW::new(&varmap.data().lock().expect("varmap lock"), &cfg.train);
        let state = TrainState {
            format: checkpoint::FORMAT_VERSION,
            step: 0,
            adam_t: 0,
            seed: cfg.train.seed,
            tokens_seen: 0,
            elapsed_secs: 0.0,
            last_train_loss: None,
        };
        Ok(Self { cfg, model, varmap, opt, run_dir: run_dir.to_path_buf(), train, val, token_bytes, state, quiet: false, stop_at: None })
    }

    /// Continue a run from its latest checkpoint. `cfg` may raise `train.max_steps` (and
    /// change other optimisation settings), but the model must be the one saved.
    pub fn resume(
        cfg: RunConfig,
        run_dir: &Path,
        train: &'a dyn TokenSource,
        val: &'a dyn TokenSource,
        token_bytes: Vec<u32>,
        device: &Device,
    ) -> Result<Self> {
        let ckpt = checkpoint::latest(run_dir)?;
        let state = checkpoint::read_state(&ckpt)?;
        let saved = ferrolm_common::load_config(Some(&run_dir.join("config.toml")), &[])?;
        let saved = RunConfig::from_value(&saved)?;
        if saved.model != cfg.model {
            bail!("cannot resume {}: the [model] section differs from the saved config.toml", run_dir.display());
        }
        let mut t = Self::new(cfg, run_dir, train, val, token_bytes, device)?;
        checkpoint::load_weights(&t.varmap, &ckpt.join("model.safetensors"))?;
        let opt_state = checkpoint::load_tensors(&ckpt.join("optimizer.safetensors"))?;
        t.opt.load_state(&opt_state, state.adam_t).with_context(|| format!("in {}", ckpt.display()))?;
        tracing::info!("resuming {} from step {}", run_dir.display(), state.step);
        t.state = state;
        Ok(t)
    }

    pub fn step(&self) -> usize {
        self.state.step
    }

    /// One optimizer step: `grad_accum` micro-batches, clip, AdamW. Returns (loss, grad norm).
    pub fn train_step(&mut self) -> Result<(f64, f64)> {
        let tc = &self.cfg.train;
        let seq = self.cfg.seq_len();
        let step = self.state.step;
        let mut acc: Option<Vec<Vec<f32>>> = None;
        let mut loss_sum = 0f64;
        for micro in 0..tc.grad_accum {
            let offsets = train_offsets(self.train, tc.seed, step, micro, tc.batch_size, seq);
            let batch = make_batch(self.train, &offsets, seq, self.model.device())?;
            let dropout_seed = Some(step_seed(tc.seed, step, micro, "dropout"));
            let hidden = self.model.hidden(&batch.inputs, &MaskSpec::causal(), None, dropout_seed)?;
            let logits = self.model.logits(&hidden)?;
            let loss = ferrolm_model::ops::cross_entropy(&logits.flatten_to(1)?, &batch.targets.flatten_all()?)?;
            let value = loss.to_scalar::<f32>()? as f64;
            if !value.is_finite() {
                bail!(
                    "training loss became {value} at step {step}: stopping. Lower train.lr (now {}) or check the data; \
                     the last checkpoint in {} is from before the divergence",
                    tc.lr,
                    checkpoint::checkpoints_dir(&self.run_dir).display()
                );
            }
            loss_sum += value;
            let grads = (loss / tc.grad_accum as f64)?.backward()?;
            let g = self.opt.collect_grads(&grads)?;
            acc = Some(match acc {
                None => g,
                Some(mut a) => {
                    for (a, g) in a.iter_mut().zip(g) {
                        a.iter_mut().zip(g).for_each(|(a, g)| *a += g);
                    }
                    a
                }
            });
        }
        let mut grads = acc.expect("grad_accum >= 1");
        let lr = lr_at(tc, step);
        let norm = self.opt.step(&mut grads, lr, tc)?;
        if !norm.is_finite() {
            bail!("gradient norm became {norm} at step {step}: stopping (lower train.lr or enable train.grad_clip)");
        }
        self.state.step += 1;
        self.state.adam_t = self.opt.t;
        self.state.tokens_seen += (tc.batch_size * seq * tc.grad_accum) as u64;
        let loss = loss_sum / tc.grad_accum as f64;
        self.state.last_train_loss = Some(loss);
        Ok((loss, norm))
    }

    pub fn evaluate(&self) -> Result<EvalResult> {
        let tc = &self.cfg.train;
        evaluate(&self.model, self.val, &self.token_bytes, self.cfg.seq_len(), tc.batch_size, tc.eval_batches * tc.batch_size)
    }

    pub fn save_checkpoint(&self) -> Result<PathBuf> {
        checkpoint::save(&self.run_dir, &self.varmap, self.opt.state_tensors()?, &self.state, self.cfg.train.keep_checkpoints)
    }

    /// Train until `train.max_steps`, the time limit, or Ctrl-C; always ends with a
    /// checkpoint, an evaluation, `metrics.jsonl` and `loss.svg`.
    pub fn run(&mut self) -> Result<TrainOutcome> {
        install_interrupt_handler();
        let tc = self.cfg.train.clone();
        let resumed = (self.state.step > 0).then_some(self.state.step);
        let mut log = MetricsLog::open(&self.run_dir.join("metrics.jsonl"), resumed)?;
        let start_step = self.state.step;
        let t0 = Instant::now();
        let elapsed0 = self.state.elapsed_secs;
        let bar = ferrolm_common::progress::bar(tc.max_steps as u64, "train");
        bar.set_position(start_step as u64);
        let tokens_per_step = (tc.batch_size * self.cfg.seq_len() * tc.grad_accum) as f64;
        let mut stop = StopReason::Completed;
        let mut last_val = None;
        let mut window_start = (Instant::now(), self.state.step);
        while self.state.step < tc.max_steps {
            if INTERRUPTED.load(Ordering::SeqCst) || self.stop_at.is_some_and(|s| self.state.step >= s) {
                stop = StopReason::Interrupted;
                break;
            }
            if tc.time_limit_secs > 0.0 && t0.elapsed().as_secs_f64() >= tc.time_limit_secs {
                stop = StopReason::TimeLimit;
                break;
            }
            let lr = lr_at(&tc, self.state.step);
            let (loss, norm) = self.train_step()?;
            let step = self.state.step;
            self.state.elapsed_secs = elapsed0 + t0.elapsed().as_secs_f64();
            bar.set_position(step as u64);
            if step % tc.log_interval.max(1) == 0 || step == tc.max_steps {
                let dt = window_start.0.elapsed().as_secs_f64();
                let tps = (step - window_start.1) as f64 * tokens_per_step / dt.max(1e-9);
                window_start = (Instant::now(), step);
                log.write(&Record {
                    step,
                    loss: Some(loss),
                    lr: Some(lr),
                    grad_norm: Some(norm),
                    tokens_per_sec: Some(tps),
                    elapsed_secs: self.state.elapsed_secs,
                    ..Default::default()
                })?;
                bar.set_message(format!("loss {loss:.4} lr {lr:.2e} {tps:.0} tok/s"));
                // Without a terminal (logs, CI) print about fifty plain lines per run.
                let print_every = tc.log_interval.max(1) * (tc.max_steps / tc.log_interval.max(1) / 50).max(1);
                if (!ferrolm_common::progress::is_terminal() || self.quiet) && (step % print_every == 0 || step == tc.max_steps) {
                    let eta = (tc.max_steps - step) as f64 * t0.elapsed().as_secs_f64() / (step - start_step) as f64;
                    eprintln!("step {step:>6}/{} loss {loss:.4} lr {lr:.2e} |g| {norm:.3} {tps:>7.0} tok/s ETA {eta:.0}s", tc.max_steps);
                }
            }
            if tc.eval_interval > 0 && step % tc.eval_interval == 0 && step < tc.max_steps {
                let ev = self.evaluate()?;
                self.log_eval(&mut log, &ev)?;
                bar.println(format!("step {step}: val loss {:.4}, {:.4} bits/byte", ev.loss, ev.bits_per_byte));
                last_val = Some(ev);
            }
            if tc.checkpoint_interval > 0 && step % tc.checkpoint_interval == 0 && step < tc.max_steps {
                self.save_checkpoint()?;
            }
        }
        bar.finish_and_clear();
        let ckpt = self.save_checkpoint()?;
        if stop != StopReason::Interrupted || last_val.is_none() {
            let ev = self.evaluate()?;
            self.log_eval(&mut log, &ev)?;
            last_val = Some(ev);
        }
        let records = crate::metrics::read(&self.run_dir.join("metrics.jsonl"))?;
        crate::plot::loss_curve(&records, "ferrolm training", &self.run_dir.join("loss.svg"))?;
        let elapsed = t0.elapsed().as_secs_f64();
        let steps_done = self.state.step - start_step;
        Ok(TrainOutcome {
            steps: self.state.step,
            stop,
            last_train_loss: self.state.last_train_loss,
            val: last_val,
            tokens_per_sec: steps_done as f64 * tokens_per_step / elapsed.max(1e-9),
            elapsed_secs: self.state.elapsed_secs,
            checkpoint: ckpt,
        })
    }

    fn log_eval(&self, log: &mut MetricsLog, ev: &EvalResult) -> Result<()> {
        log.write(&Record {
            step: self.state.step,
            val_loss: Some(ev.loss),
            val_bpb: Some(ev.bits_per_byte),
            elapsed_secs: self.state.elapsed_secs,
            ..Default::default()
        })
    }
}
