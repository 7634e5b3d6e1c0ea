//! The training loop: micro-batches with gradient accumulation, AdamW with a schedule,
//! gradient clipping, periodic evaluation (loss and bits per byte), checkpoints, Ctrl-C
//! handling, and a stop with a clear message when the loss stops being finite.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Once;
use std::time::Instant;

use std::collections::{BTreeMap, HashMap};

use anyhow::{bail, Context, Result};
use candle_core::{Device, Tensor, Var, D};
use candle_nn::VarMap;
use ferrolm_model::CausalLm;
use ferrolm_tokenizer::Tokenizer;
use rand::SeedableRng;
use serde::{Deserialize, Serialize};

use crate::checkpoint::{self, TrainState};
use crate::config::TrainConfig;
use crate::distributed::Communicator;
use crate::data::{eval_offsets, make_batch, step_seed, train_offsets, Batch, TokenSource};
use crate::fim::{Fim, FimLevel, FimSettings, FimStats};
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

#[derive(Debug, Clone, Serialize, Deserialize, Default)]
pub struct EvalResult {
    /// Mean loss per scored target (nats for language models).
    pub loss: f64,
    /// Total cross-entropy in bits divided by the UTF-8 bytes the target tokens stand for
    /// (NaN where the task has no byte count, e.g. classification).
    pub bits_per_byte: f64,
    pub tokens: usize,
    pub bytes: u64,
    /// Task-specific figures (accuracy, pairwise accuracy, reward margin, …).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub extra: BTreeMap<String, f64>,
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

/// What the training loop needs from "a model + an objective + its data": the loop
/// itself (accumulation, clipping, AdamW, schedule, evaluation, checkpoints, exact
/// resume, metrics, Ctrl-C) is shared by pretraining, fine-tuning and alignment.
pub trait TrainTask {
    /// The loss of micro-batch `micro` of optimizer step `step`: a scalar f32 tensor
    /// (the mean over the micro-batch; the trainer divides by `grad_accum`), and how many
    /// tokens it trained on (for tokens/s). Every random choice (which examples, dropout,
    /// masking) must be drawn from `data::step_seed(seed, step, micro, purpose)`, never from
    /// state carried across steps, so that a resumed run is exactly the uninterrupted one.
    fn micro_batch_loss(&self, step: usize, micro: usize) -> Result<(Tensor, usize)>;
    /// Held-out evaluation; `loss` is the headline figure, task figures go in `extra`.
    fn evaluate(&self) -> Result<EvalResult>;
    /// Whether the parameter `name` (a VarMap key) is trained. Frozen parameters get no
    /// optimizer state and are never updated (but are saved with the checkpoint).
    fn trainable(&self, _name: &str) -> bool {
        true
    }

    /// Variables the task trains besides the model's (PPO's value head): the optimizer
    /// updates them; [`TrainTask::extra_state`] saves them.
    fn extra_vars(&self) -> Vec<(String, Var)> {
        Vec::new()
    }

    /// What else a resumed run needs (extra variables, PPO's KL coefficient), saved beside
    /// the optimizer state in `optimizer.safetensors` under names of the task's own.
    fn extra_state(&self) -> Result<HashMap<String, Tensor>> {
        Ok(HashMap::new())
    }

    /// Restore [`TrainTask::extra_state`] from a checkpoint's `optimizer.safetensors`.
    fn load_extra_state(&mut self, _saved: &HashMap<String, Tensor>) -> Result<()> {
        Ok(())
    }

    /// A step that is more than "`grad_accum` micro-batches, then one update" (PPO:
    /// sample rollouts, then several minibatch updates). `update(loss)` back-propagates
    /// `loss` and applies one clipped AdamW update at the step's learning rate, returning
    /// the gradient norm. `None` (the default) runs the standard step. Randomness follows
    /// the same rule as [`TrainTask::micro_batch_loss`].
    fn custom_step(&mut self, _step: usize, _update: &mut dyn FnMut(&Tensor) -> Result<f64>) -> Option<Result<StepReport>> {
        None
    }
}

/// What a [`TrainTask::custom_step`] did.
#[derive(Debug, Clone, Default)]
pub struct StepReport {
    /// Mean loss of the step's updates.
    pub loss: f64,
    /// Mean gradient norm of the step's updates.
    pub grad_norm: f64,
    /// Tokens trained on (for tokens/s).
    pub tokens: usize,
    /// Figures logged with the step (in `metrics.jsonl`'s record of it).
    pub figures: BTreeMap<String, f64>,
}

/// Held-out loss and bits per byte of a causal LM over fixed windows of `src`.
/// Tokens that stand for no text (special tokens such as end-of-text) count in the loss
/// but not in bits per byte, whose denominator is text bytes.
pub fn evaluate(
    model: &dyn CausalLm,
    src: &dyn TokenSource,
    token_bytes: &[u32],
    seq_len: usize,
    batch_size: usize,
    n_windows: usize,
    device: &Device,
) -> Result<EvalResult> {
    if src.len() < seq_len + 1 {
        bail!("held-out data has {} tokens, fewer than one window of {}", src.len(), seq_len + 1);
    }
    let offsets = eval_offsets(src, n_windows, seq_len);
    let mut acc = crate::bpb::BitsPerByte::default();
    for chunk in offsets.chunks(batch_size) {
        let batch = make_batch(src, chunk, seq_len, device)?;
        let logits = model.causal_logits(&batch.inputs, None)?;
        let logp = candle_nn::ops::log_softmax(&logits, D::Minus1)?;
        let nll: Vec<f32> = logp
            .gather(&batch.targets.unsqueeze(D::Minus1)?, D::Minus1)?
            .flatten_all()?
            .to_vec1()?;
        for (&l, &t) in nll.iter().zip(&batch.target_ids) {
            acc.add_target(-(l as f64), t, token_bytes);
        }
    }
    Ok(EvalResult { loss: acc.loss(), bits_per_byte: acc.bits_per_byte(), tokens: acc.tokens, bytes: acc.bytes, extra: BTreeMap::new() })
}

/// Pretraining a causal LM on a token stream: random windows of `seq_len + 1` tokens,
/// next-token cross-entropy at every position; optionally with fill-in-the-middle examples
/// ([`LmTask::with_fim`], `train.fim_rate`).
pub struct LmTask<'a, M: CausalLm> {
    pub model: M,
    train: &'a dyn TokenSource,
    val: &'a dyn TokenSource,
    token_bytes: Vec<u32>,
    seq_len: usize,
    batch_size: usize,
    eval_windows: usize,
    seed: u64,
    device: Device,
    fim: Option<LmFim<'a>>,
}

/// How an [`LmTask`] makes fill-in-the-middle examples.
enum LmFim<'a> {
    /// Document level: windows are drawn from the transformed stream instead of `train`.
    Document(Vec<u32>),
    /// Context level: each drawn window is transformed.
    Context(Fim<'a>),
}

/// One micro-batch of an [`LmTask`]: the windows, and where fill-in-the-middle padding
/// left positions that are not scored (`None`: every position is).
pub struct LmBatch {
    pub batch: Batch,
    /// Flat indices (row * seq_len + position) of the scored positions.
    pub scored: Option<Vec<u32>>,
}

impl<'a, M: CausalLm> LmTask<'a, M> {
    #[allow(clippy::too_many_arguments)]
    pub fn new(model: M, train: &'a dyn TokenSource, val: &'a dyn TokenSource, token_bytes: Vec<u32>, seq_len: usize, tc: &TrainConfig, device: &Device) -> Result<Self> {
        let need = seq_len + 2;
        if train.len() < need {
            bail!("training data has {} tokens; need at least {need} for one window of train.seq_len {seq_len}", train.len());
        }
        if val.len() < need {
            bail!("held-out data has {} tokens; need at least {need}", val.len());
        }
        Ok(Self { model, train, val, token_bytes, seq_len, batch_size: tc.batch_size, eval_windows: tc.eval_batches * tc.batch_size, seed: tc.seed, device: device.clone(), fim: None })
    }

    /// Train on fill-in-the-middle examples as `tc.fim_*` says (nothing changes when
    /// `fim_rate` is 0). `tok` is the tokenizer of the data: FIM splits documents at
    /// characters and re-tokenizes the pieces. Held-out evaluation stays plain
    /// left-to-right, so runs with and without FIM compare on the same figure.
    pub fn with_fim(mut self, tc: &TrainConfig, tok: &'a Tokenizer) -> Result<Self> {
        if tc.fim_rate == 0.0 {
            self.fim = None;
            return Ok(self);
        }
        let fim = Fim::new(FimSettings { rate: tc.fim_rate, spm_rate: tc.fim_spm_rate, level: tc.fim_level, line_rate: tc.fim_line_rate }, tok)?;
        if let Some(&bad) = [fim.tokens.prefix, fim.tokens.suffix, fim.tokens.middle].iter().find(|&&id| id as usize >= self.token_bytes.len()) {
            bail!("the tokenizer's fill-in-the-middle token id {bad} is outside the model's vocabulary of {}", self.token_bytes.len());
        }
        self.fim = Some(match tc.fim_level {
            FimLevel::Context => LmFim::Context(fim),
            FimLevel::Document => {
                let t0 = Instant::now();
                let (stream, stats) = fim.document_stream(self.train, self.seed);
                tracing::info!(
                    "fill-in-the-middle (document level): {} of {} documents transformed ({} PSM, {} SPM, {} skipped), {} → {} tokens, {:.1} s",
                    stats.psm + stats.spm, stats.documents, stats.psm, stats.spm, stats.skipped, self.train.len(), stream.len(), t0.elapsed().as_secs_f64()
                );
                if stream.len() < self.seq_len + 2 {
                    bail!("the fill-in-the-middle stream has {} tokens, fewer than one window", stream.len());
                }
                LmFim::Document(stream)
            }
        });
        Ok(self)
    }

    /// The windows of micro-batch `micro` of step `step` (offsets from the "batch" stream;
    /// context-level FIM draws from its own "fim" stream, so the windows are those of a
    /// run without FIM).
    pub fn batch(&self, step: usize, micro: usize) -> Result<LmBatch> {
        let src: &dyn TokenSource = match &self.fim {
            Some(LmFim::Document(stream)) => stream,
            _ => self.train,
        };
        let offsets = train_offsets(src, self.seed, step, micro, self.batch_size, self.seq_len);
        let Some(LmFim::Context(fim)) = &self.fim else {
            return Ok(LmBatch { batch: make_batch(src, &offsets, self.seq_len, &self.device)?, scored: None });
        };
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(step_seed(self.seed, step, micro, "fim"));
        let (t, w) = (self.seq_len, self.seq_len + 1);
        let mut windows = vec![0u32; offsets.len() * w];
        let mut scored = Vec::with_capacity(offsets.len() * t);
        let mut stats = FimStats::default();
        for (row, (&o, win)) in offsets.iter().zip(windows.chunks_mut(w)).enumerate() {
            src.read(o, win);
            let pad = fim.transform_context(win, &mut rng, &mut stats);
            // position i is scored unless its input or its target is padding
            scored.extend((0..t).filter(|&i| !pad[i] && !pad[i + 1]).map(|i| (row * t + i) as u32));
        }
        let all = scored.len() == offsets.len() * t;
        let batch = make_batch(&windows, &(0..offsets.len()).map(|r| r * w).collect::<Vec<_>>(), t, &self.device)?;
        Ok(LmBatch { batch, scored: (!all).then_some(scored) })
    }
}

impl<M: CausalLm> TrainTask for LmTask<'_, M> {
    fn micro_batch_loss(&self, step: usize, micro: usize) -> Result<(Tensor, usize)> {
        let LmBatch { batch, scored } = self.batch(step, micro)?;
        let dropout_seed = Some(step_seed(self.seed, step, micro, "dropout"));
        let logits = self.model.causal_logits(&batch.inputs, dropout_seed)?.flatten_to(1)?;
        let targets = batch.targets.flatten_all()?;
        let loss = match scored {
            None => ferrolm_kernels::cross_entropy(&logits, &targets)?,
            Some(rows) => {
                let n = rows.len();
                let rows = Tensor::from_vec(rows, n, &self.device)?;
                ferrolm_kernels::cross_entropy(&logits.index_select(&rows, 0)?, &targets.index_select(&rows, 0)?)?
            }
        };
        Ok((loss, self.batch_size * self.seq_len))
    }

    fn evaluate(&self) -> Result<EvalResult> {
        evaluate(&self.model, self.val, &self.token_bytes, self.seq_len, self.batch_size, self.eval_windows, &self.device)
    }
}

pub struct Trainer<'a> {
    /// The optimisation settings in force (a resumed run may change them).
    pub cfg: TrainConfig,
    pub varmap: VarMap,
    task: Box<dyn TrainTask + 'a>,
    opt: AdamW,
    run_dir: PathBuf,
    state: TrainState,
    /// Print plain progress lines instead of a bar (logs, CI).
    pub quiet: bool,
    /// Stop as if interrupted once this step is reached (tests of resume; embedders).
    pub stop_at: Option<usize>,
    /// Title of the loss-curve picture.
    pub title: String,
    /// Wall milliseconds of the last step's phases: forward and loss, backward (with the
    /// gradients' collection), clipping and optimizer update. For `bench train`.
    pub last_phase_ms: [f64; 3],
    /// The figures the task reported for the last step (custom steps), logged with it.
    last_figures: BTreeMap<String, f64>,
    /// Data parallelism: the other ranks of this job (see [`crate::distributed`]).
    comm: Option<Box<dyn Communicator + 'a>>,
}

impl<'a> Trainer<'a> {
    /// A fresh run of any task. The caller has built the task's model in `varmap`,
    /// initialised (or loaded) its weights, and written the run's `config.toml`.
    pub fn from_task(cfg: TrainConfig, run_dir: &Path, varmap: VarMap, task: Box<dyn TrainTask + 'a>) -> Result<Self> {
        cfg.validate().map_err(|e| anyhow::anyhow!("invalid [train]: {e}"))?;
        // Process-wide (candle's matmul has no per-call setting): the run's precision
        // holds for its evaluations and for whatever the process does next.
        if ferrolm_kernels::set_matmul_precision(cfg.matmul_precision) != cfg.matmul_precision {
            tracing::warn!("train.matmul_precision = \"bf16\" needs AMX tiles, which this CPU lacks: matrix products stay f32");
        }
        std::fs::create_dir_all(run_dir).with_context(|| format!("creating {}", run_dir.display()))?;
        let trainable: HashMap<String, Var> = {
            let vars = varmap.data().lock().expect("varmap lock");
            let mut t: HashMap<String, Var> = vars.iter().filter(|(name, _)| task.trainable(name)).map(|(k, v)| (k.clone(), v.clone())).collect();
            for (name, var) in task.extra_vars() {
                if t.insert(name.clone(), var).is_some() {
                    bail!("the task's extra variable {name} has the name of a model parameter");
                }
            }
            t
        };
        if trainable.is_empty() {
            bail!("the task trains no parameter: every parameter is frozen");
        }
        let opt = AdamW::new(&trainable, &cfg);
        let state = TrainState {
            format: checkpoint::FORMAT_VERSION,
            step: 0,
            adam_t: 0,
            seed: cfg.seed,
            tokens_seen: 0,
            elapsed_secs: 0.0,
            last_train_loss: None,
        };
        Ok(Self { cfg, varmap, task, opt, run_dir: run_dir.to_path_buf(), state, quiet: false, stop_at: None, title: "ferrolm training".into(), last_phase_ms: [0.0; 3], last_figures: BTreeMap::new(), comm: None })
    }

    /// Continue any task's run from its latest checkpoint: weights, optimizer moments and
    /// step. `cfg` may raise `max_steps` or change other optimisation settings.
    pub fn resume_task(cfg: TrainConfig, run_dir: &Path, varmap: VarMap, task: Box<dyn TrainTask + 'a>) -> Result<Self> {
        let ckpt = checkpoint::latest(run_dir)?;
        let state = checkpoint::read_state(&ckpt)?;
        let mut t = Self::from_task(cfg, run_dir, varmap, task)?;
        checkpoint::load_weights(&t.varmap, &ckpt.join("model.safetensors"))?;
        let opt_state = checkpoint::load_tensors(&ckpt.join("optimizer.safetensors"))?;
        t.opt.load_state(&opt_state, state.adam_t).with_context(|| format!("in {}", ckpt.display()))?;
        t.task.load_extra_state(&opt_state).with_context(|| format!("in {}", ckpt.display()))?;
        tracing::info!("resuming {} from step {}", run_dir.display(), state.step);
        t.state = state;
        Ok(t)
    }

    pub fn step(&self) -> usize {
        self.state.step
    }

    /// Trains data-parallel with the other ranks of `comm`: this rank computes micro-batches
    /// `rank, rank + world, …` of each step's `train.grad_accum` and the gradients are
    /// summed over the ranks before the update; only rank 0 writes checkpoints, metrics
    /// and plots, and evaluates.
    pub fn set_communicator(&mut self, comm: Box<dyn Communicator + 'a>) -> Result<()> {
        let world = comm.world_size();
        if !self.cfg.grad_accum.is_multiple_of(world) {
            bail!(
                "train.grad_accum = {} is the number of micro-batches per step over all ranks: it must be a multiple of WORLD_SIZE = {world}",
                self.cfg.grad_accum
            );
        }
        self.comm = Some(comm);
        Ok(())
    }

    /// Whether this process writes the run's files (the only rank, or rank 0).
    pub fn is_writer(&self) -> bool {
        self.comm.as_ref().is_none_or(|c| c.rank() == 0)
    }

    /// One optimizer step: `grad_accum` micro-batches, clip, AdamW (or the task's own
    /// step, see [`TrainTask::custom_step`]). Returns (loss, grad norm).
    pub fn train_step(&mut self) -> Result<(f64, f64)> {
        let step = self.state.step;
        if let Some(report) = self.task_step(step) {
            if self.comm.is_some() {
                bail!("this task has its own step (PPO) and cannot train data-parallel yet: run it with WORLD_SIZE=1");
            }
            let r = report?;
            self.state.step += 1;
            self.state.adam_t = self.opt.t;
            self.state.tokens_seen += r.tokens as u64;
            self.state.last_train_loss = Some(r.loss);
            self.last_figures = r.figures;
            return Ok((r.loss, r.grad_norm));
        }
        let tc = &self.cfg;
        let mut acc: Option<Vec<Vec<f32>>> = None;
        let mut loss_sum = 0f64;
        let mut tokens = 0usize;
        let mut phase = [0f64; 3];
        let (rank, world) = self.comm.as_ref().map_or((0, 1), |c| (c.rank(), c.world_size()));
        for micro in (rank..tc.grad_accum).step_by(world) {
            let t0 = std::time::Instant::now();
            let (loss, n) = self.task.micro_batch_loss(step, micro)?;
            tokens += n;
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
            let t1 = std::time::Instant::now();
            let grads = (loss / tc.grad_accum as f64)?.backward()?;
            let g = self.opt.collect_grads(&grads)?;
            phase[0] += (t1 - t0).as_secs_f64() * 1e3;
            phase[1] += t1.elapsed().as_secs_f64() * 1e3;
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
        if let Some(comm) = self.comm.as_mut() {
            // One buffer per step: every gradient, then this rank's loss sum and tokens.
            let mut flat: Vec<f32> = grads.iter().flatten().copied().collect();
            flat.extend([loss_sum as f32, tokens as f32]);
            comm.all_reduce_sum(&mut flat)?;
            let mut at = 0;
            for g in grads.iter_mut() {
                let n = g.len();
                g.copy_from_slice(&flat[at..at + n]);
                at += n;
            }
            loss_sum = flat[at] as f64;
            tokens = flat[at + 1] as usize;
        }
        let lr = lr_at(tc, step);
        let t2 = std::time::Instant::now();
        let norm = self.opt.step(&mut grads, lr, tc)?;
        phase[2] = t2.elapsed().as_secs_f64() * 1e3;
        self.last_phase_ms = phase;
        if !norm.is_finite() {
            bail!("gradient norm became {norm} at step {step}: stopping (lower train.lr or enable train.grad_clip)");
        }
        self.state.step += 1;
        self.state.adam_t = self.opt.t;
        self.state.tokens_seen += tokens as u64;
        let loss = loss_sum / tc.grad_accum as f64;
        self.state.last_train_loss = Some(loss);
        Ok((loss, norm))
    }

    /// The task's own step, if it has one, with an `update` that applies the trainer's
    /// optimizer at this step's learning rate.
    fn task_step(&mut self, step: usize) -> Option<Result<StepReport>> {
        let (tc, opt, run_dir) = (&self.cfg, &mut self.opt, &self.run_dir);
        let lr = lr_at(tc, step);
        let mut update = |loss: &Tensor| -> Result<f64> {
            let value = loss.to_scalar::<f32>()? as f64;
            if !value.is_finite() {
                bail!(
                    "training loss became {value} at step {step}: stopping. Lower train.lr (now {}); the last checkpoint in {} is from before the divergence",
                    tc.lr,
                    checkpoint::checkpoints_dir(run_dir).display()
                );
            }
            let grads = loss.backward()?;
            let mut g = opt.collect_grads(&grads)?;
            let norm = opt.step(&mut g, lr, tc)?;
            if !norm.is_finite() {
                bail!("gradient norm became {norm} at step {step}: stopping (lower train.lr or enable train.grad_clip)");
            }
            Ok(norm)
        };
        self.task.custom_step(step, &mut update)
    }

    pub fn evaluate(&self) -> Result<EvalResult> {
        self.task.evaluate()
    }

    pub fn save_checkpoint(&self) -> Result<PathBuf> {
        let mut state = self.opt.state_tensors()?;
        for (name, t) in self.task.extra_state()? {
            if state.insert(name.clone(), t).is_some() {
                bail!("the task's saved state {name} has the name of an optimizer moment");
            }
        }
        checkpoint::save(&self.run_dir, &self.varmap, state, &self.state, self.cfg.keep_checkpoints)
    }

    /// Train until `train.max_steps`, the time limit, or Ctrl-C; always ends with a
    /// checkpoint, an evaluation, `metrics.jsonl` and `loss.svg`.
    pub fn run(&mut self) -> Result<TrainOutcome> {
        install_interrupt_handler();
        let tc = self.cfg.clone();
        let resumed = (self.state.step > 0).then_some(self.state.step);
        let writer = self.is_writer();
        let mut log = if writer { Some(MetricsLog::open(&self.run_dir.join("metrics.jsonl"), resumed)?) } else { None };
        let start_step = self.state.step;
        let tokens0 = self.state.tokens_seen;
        let t0 = Instant::now();
        let elapsed0 = self.state.elapsed_secs;
        let bar = if writer { ferrolm_common::progress::bar(tc.max_steps as u64, "train") } else { ferrolm_common::progress::hidden() };
        bar.set_position(start_step as u64);
        let mut stop = StopReason::Completed;
        let mut last_val = None;
        let mut window_start = (Instant::now(), self.state.tokens_seen);
        let mut tps = 0f64;
        while self.state.step < tc.max_steps {
            let mut flags = [
                (INTERRUPTED.load(Ordering::SeqCst) || self.stop_at.is_some_and(|s| self.state.step >= s)) as u8 as f32,
                (tc.time_limit_secs > 0.0 && t0.elapsed().as_secs_f64() >= tc.time_limit_secs) as u8 as f32,
            ];
            // Ranks stop together (a rank that stopped alone would leave the others waiting).
            if let Some(comm) = self.comm.as_mut() {
                comm.all_reduce_sum(&mut flags)?;
            }
            if flags[0] > 0.0 {
                stop = StopReason::Interrupted;
                break;
            }
            if flags[1] > 0.0 {
                stop = StopReason::TimeLimit;
                break;
            }
            let lr = lr_at(&tc, self.state.step);
            let (loss, norm) = self.train_step()?;
            let step = self.state.step;
            self.state.elapsed_secs = elapsed0 + t0.elapsed().as_secs_f64();
            bar.set_position(step as u64);
            if step.is_multiple_of(tc.log_interval.max(1)) || step == tc.max_steps {
                let dt = window_start.0.elapsed().as_secs_f64();
                tps = (self.state.tokens_seen - window_start.1) as f64 / dt.max(1e-9);
                window_start = (Instant::now(), self.state.tokens_seen);
            }
            // Everything below writes the run's files or reports: rank 0's job.
            let Some(log) = log.as_mut() else { continue };
            if step.is_multiple_of(tc.log_interval.max(1)) || step == tc.max_steps {
                log.write(&Record {
                    step,
                    loss: Some(loss),
                    lr: Some(lr),
                    grad_norm: Some(norm),
                    tokens_per_sec: Some(tps),
                    elapsed_secs: self.state.elapsed_secs,
                    extra: self.last_figures.clone(),
                    ..Default::default()
                })?;
                // the task's own figures (PPO: reward, KL, …) after the loop's
                let figures: String = self.last_figures.iter().map(|(k, v)| format!(" {k} {v:.4}")).collect();
                bar.set_message(format!("loss {loss:.4} lr {lr:.2e} {tps:.0} tok/s{figures}"));
                // Without a terminal (logs, CI) print about fifty plain lines per run.
                let print_every = tc.log_interval.max(1) * (tc.max_steps / tc.log_interval.max(1) / 50).max(1);
                if (!ferrolm_common::progress::is_terminal() || self.quiet) && (step.is_multiple_of(print_every) || step == tc.max_steps) {
                    let eta = (tc.max_steps - step) as f64 * t0.elapsed().as_secs_f64() / (step - start_step) as f64;
                    eprintln!("step {step:>6}/{} loss {loss:.4} lr {lr:.2e} |g| {norm:.3} {tps:>7.0} tok/s ETA {eta:.0}s{figures}", tc.max_steps);
                }
            }
            if tc.eval_interval > 0 && step.is_multiple_of(tc.eval_interval) && step < tc.max_steps {
                let ev = self.evaluate()?;
                self.log_eval(log, &ev)?;
                bar.println(format!("step {step}: {}", describe_eval(&ev)));
                last_val = Some(ev);
            }
            if tc.checkpoint_interval > 0 && step.is_multiple_of(tc.checkpoint_interval) && step < tc.max_steps {
                self.save_checkpoint()?;
            }
        }
        bar.finish_and_clear();
        let ckpt = match log.as_mut() {
            Some(log) => {
                let ckpt = self.save_checkpoint()?;
                if stop != StopReason::Interrupted || last_val.is_none() {
                    let ev = self.evaluate()?;
                    self.log_eval(log, &ev)?;
                    last_val = Some(ev);
                }
                let records = crate::metrics::read(&self.run_dir.join("metrics.jsonl"))?;
                crate::plot::loss_curve(&records, &self.title, &self.run_dir.join("loss.svg"))?;
                ckpt
            }
            // Other ranks: rank 0 writes the checkpoint into the shared run folder.
            None => checkpoint::checkpoints_dir(&self.run_dir),
        };
        let elapsed = t0.elapsed().as_secs_f64();
        Ok(TrainOutcome {
            steps: self.state.step,
            stop,
            last_train_loss: self.state.last_train_loss,
            val: last_val,
            tokens_per_sec: (self.state.tokens_seen - tokens0) as f64 / elapsed.max(1e-9),
            elapsed_secs: self.state.elapsed_secs,
            checkpoint: ckpt,
        })
    }

    fn log_eval(&self, log: &mut MetricsLog, ev: &EvalResult) -> Result<()> {
        log.write(&Record {
            step: self.state.step,
            val_loss: ev.loss.is_finite().then_some(ev.loss),
            val_bpb: ev.bits_per_byte.is_finite().then_some(ev.bits_per_byte),
            elapsed_secs: self.state.elapsed_secs,
            extra: ev.extra.iter().map(|(k, v)| (format!("val_{k}"), *v)).collect(),
            ..Default::default()
        })
    }
}

/// One line for the log: loss, bits per byte where defined, then the task's figures.
pub fn describe_eval(ev: &EvalResult) -> String {
    let mut s = if ev.loss.is_finite() { format!("val loss {:.4}", ev.loss) } else { "held out:".to_string() };
    if ev.bits_per_byte.is_finite() {
        s.push_str(&format!(", {:.4} bits/byte", ev.bits_per_byte));
    }
    for (k, v) in &ev.extra {
        s.push_str(&format!(", {k} {v:.4}"));
    }
    s
}
