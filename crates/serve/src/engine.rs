//! The scheduler: one thread owns the model and runs continuous batching.
//!
//! Requests (one [`SeqRequest`] per sequence: a request with `n` choices sends `n`) wait
//! in a bounded queue. Between decode steps the scheduler admits waiting sequences while
//! slots are free: each is prefilled alone (reusing the KV cache of the longest shared
//! prompt prefix it has seen recently), samples its first token, and joins the batch. Each
//! decode step then advances *every* active sequence in one forward pass
//! ([`Transformer::decode_step`]); each keeps its own KV cache, sampler, stop rules and
//! length, so one sequence never changes another's output. A constrained sequence
//! (`response_format`, a forced tool call) also keeps its grammar matcher: before each
//! sample the tokens the grammar does not allow get -inf logits (after `logit_bias` and the
//! penalties, before temperature/top-p, so the seeded sampler still decides among the
//! rest), the sampled token advances the matcher, and the answer ends ("stop") when the
//! grammar is complete. A sequence whose client has
//! gone (its event receiver was dropped) is removed before the next step, which frees its
//! slot at once.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::Relaxed};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::Result;
use candle_core::Tensor;
use ferrolm_infer::{Sampler, SamplingConfig};
use ferrolm_model::attention::MaskSpec;
use ferrolm_model::{KvCache, Transformer};
use ferrolm_tokenizer::Tokenizer;
use tokio::sync::mpsc::UnboundedSender;

use crate::grammar::Constraint;
use crate::metrics::Metrics;
use crate::text::TextState;

/// Why a sequence ended, as OpenAI spells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Finish {
    Stop,
    Length,
}

impl Finish {
    pub fn as_str(self) -> &'static str {
        match self {
            Finish::Stop => "stop",
            Finish::Length => "length",
        }
    }
}

/// One sampled token with its log-probability and the most likely alternatives (only
/// when the request asked for log-probabilities).
#[derive(Debug, Clone, PartialEq)]
pub struct TokenLogprob {
    pub id: u32,
    pub bytes: Vec<u8>,
    pub logprob: f32,
    pub top: Vec<(u32, Vec<u8>, f32)>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// New text (possibly empty while a character or a possible stop string is incomplete)
    /// and, when asked, the log-probabilities of the tokens behind it.
    Delta { text: String, logprobs: Vec<TokenLogprob> },
    /// The prompt's own log-probabilities (asked with `echo` and `logprobs`): one entry for
    /// each prompt token after the first, given the tokens before it. Sent before any
    /// `Delta` of the sequence.
    Prompt { logprobs: Vec<TokenLogprob> },
    Done { finish: Finish, prompt_tokens: usize, completion_tokens: usize, cached_tokens: usize },
    Error(String),
}

/// One sequence to generate. `index` tells the request's choices apart on the shared
/// `events` channel.
#[derive(Debug, Clone)]
pub struct SeqRequest {
    pub index: usize,
    pub prompt: Arc<Vec<u32>>,
    pub max_tokens: usize,
    pub sampling: SamplingConfig,
    /// Tokens that end the answer (not part of its text).
    pub stop_tokens: Vec<u32>,
    pub stop_strings: Vec<String>,
    /// Spaces dropped from the start of the answer's text: a chat answer is a text of its
    /// own, and a SentencePiece tokenizer's first `▁` is no part of it
    /// (`Tokenizer::strip_leading_spaces`); 0 for a continuation of a prompt.
    pub strip_leading_spaces: usize,
    /// Some(k): report each token's log-probability and the k most likely tokens.
    pub top_logprobs: Option<usize>,
    /// Also report the prompt's tokens' log-probabilities (with `top_logprobs`' k) in an
    /// [`Event::Prompt`]; the whole prompt is then computed, no cached prefix reused.
    /// With `max_tokens` 0 nothing is generated: the request only scores its prompt.
    pub prompt_logprobs: bool,
    pub frequency_penalty: f32,
    pub presence_penalty: f32,
    pub logit_bias: Vec<(u32, f32)>,
    /// The grammar the answer must follow (its end tokens are `stop_tokens`).
    pub constraint: Option<Constraint>,
    pub events: UnboundedSender<(usize, Event)>,
    pub arrived: Instant,
}

#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// Sequences decoded together (the batch's rows).
    pub max_concurrency: usize,
    /// Sequences that may wait for a slot; more get 429.
    pub max_queue: usize,
    /// Context limit (≤ the model's max_seq_len).
    pub ctx: usize,
    /// Recent prompts whose KV caches are kept for prefix reuse (0 = off).
    pub prefix_cache_entries: usize,
}

/// The queue was full.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueFull;

/// The handle the HTTP side holds.
pub struct Engine {
    tx: Mutex<Option<mpsc::Sender<SeqRequest>>>,
    queued: Arc<AtomicUsize>,
    max_queue: usize,
    stop: Arc<AtomicBool>,
    thread: Mutex<Option<JoinHandle<()>>>,
    running: Arc<AtomicBool>,
}

impl Engine {
    /// Start the scheduler thread, which takes the model.
    pub fn start(model: Transformer, tok: Arc<Tokenizer>, cfg: EngineConfig, metrics: Arc<Metrics>) -> Result<Self> {
        anyhow::ensure!(cfg.max_concurrency > 0, "--max-concurrency must be at least 1");
        anyhow::ensure!(cfg.ctx >= 2 && cfg.ctx <= model.config().max_seq_len, "--ctx must be between 2 and the model's max_seq_len {}", model.config().max_seq_len);
        let (tx, rx) = mpsc::channel();
        let stop = Arc::new(AtomicBool::new(false));
        let running = Arc::new(AtomicBool::new(true));
        let queued = metrics.queued.clone();
        let max_queue = cfg.max_queue;
        let mut sched = Scheduler { model, tok, cfg, metrics, rx, stop: stop.clone(), waiting: VecDeque::new(), active: Vec::new(), prefixes: VecDeque::new() };
        let run_flag = running.clone();
        // The scheduler runs on a worker of a pool of its own (as many threads as rayon's
        // global pool), so the kernels' parallel loops start on the thread that calls
        // them: called from a plain thread, each was handed to a pool thread and back —
        // about 22 context switches per batched step (perf stat, decode_bench), a wake-up
        // latency on every one of them. Its own pool, not the global one: that one stays
        // free for the embeddings model and anything else the server runs.
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(rayon::current_num_threads())
            .thread_name(|i| format!("ferrolm-decode-{i}"))
            .build()?;
        let thread = std::thread::Builder::new().name("ferrolm-scheduler".into()).spawn(move || {
            // waits while a pool worker runs the loop
            pool.install(|| sched.run());
            run_flag.store(false, Relaxed);
        })?;
        Ok(Self { tx: Mutex::new(Some(tx)), queued, max_queue, stop, thread: Mutex::new(Some(thread)), running })
    }

    /// Queue all sequences of one request, or none when they do not fit.
    pub fn submit(&self, seqs: Vec<SeqRequest>) -> Result<(), QueueFull> {
        let n = seqs.len();
        let mut cur = self.queued.load(Relaxed);
        loop {
            if cur + n > self.max_queue {
                return Err(QueueFull);
            }
            match self.queued.compare_exchange(cur, cur + n, Relaxed, Relaxed) {
                Ok(_) => break,
                Err(now) => cur = now,
            }
        }
        let guard = self.tx.lock().unwrap_or_else(|e| e.into_inner());
        let Some(tx) = guard.as_ref() else {
            self.queued.fetch_sub(n, Relaxed);
            return Err(QueueFull);
        };
        for s in seqs {
            if let Err(mpsc::SendError(s)) = tx.send(s) {
                self.queued.fetch_sub(1, Relaxed);
                let _ = s.events.send((s.index, Event::Error("the scheduler has stopped".into())));
            }
        }
        Ok(())
    }

    /// Whether the scheduler thread is alive (it holds the model).
    pub fn is_running(&self) -> bool {
        self.running.load(Relaxed)
    }

    /// Stop taking work, end what is queued and running with an error event (the HTTP
    /// side gave open streams their grace period first), and join the thread.
    pub fn shutdown(&self) {
        self.tx.lock().unwrap_or_else(|e| e.into_inner()).take();
        self.stop.store(true, Relaxed);
        if let Some(t) = self.thread.lock().unwrap_or_else(|e| e.into_inner()).take() {
            let _ = t.join();
        }
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        self.shutdown();
    }
}

struct Active {
    req: SeqRequest,
    cache: KvCache,
    sampler: Sampler,
    /// The last sampled token: the input of the next step.
    last: u32,
    generated: usize,
    counts: HashMap<u32, u32>,
    constraint: Option<Constraint>,
    text: TextState,
    cached_tokens: usize,
    last_emit: Instant,
    done: bool,
}

struct Scheduler {
    model: Transformer,
    tok: Arc<Tokenizer>,
    cfg: EngineConfig,
    metrics: Arc<Metrics>,
    rx: mpsc::Receiver<SeqRequest>,
    stop: Arc<AtomicBool>,
    waiting: VecDeque<SeqRequest>,
    active: Vec<Active>,
    /// Recent prompts and their caches, most recent first.
    prefixes: VecDeque<(Arc<Vec<u32>>, KvCache)>,
}

impl Scheduler {
    fn run(&mut self) {
        loop {
            if self.stop.load(Relaxed) {
                // Shutdown: the server already gave open streams their grace period.
                self.cut_all("the server is shutting down");
                break;
            }
            if self.active.is_empty() && self.waiting.is_empty() {
                match self.rx.recv_timeout(Duration::from_millis(50)) {
                    Ok(r) => self.waiting.push_back(r),
                    Err(RecvTimeoutError::Timeout) => continue,
                    Err(RecvTimeoutError::Disconnected) => break,
                }
            }
            while let Ok(r) = self.rx.try_recv() {
                self.waiting.push_back(r);
            }
            self.drop_cancelled();
            while self.active.len() < self.cfg.max_concurrency {
                let Some(r) = self.waiting.pop_front() else { break };
                self.metrics.queued.fetch_sub(1, Relaxed);
                if r.events.is_closed() {
                    self.metrics.cancelled.fetch_add(1, Relaxed);
                    continue;
                }
                let index = r.index;
                let events = r.events.clone();
                match self.prefill(r) {
                    Ok(Some(seq)) => self.active.push(seq),
                    Ok(None) => {}
                    Err(e) => {
                        let _ = events.send((index, Event::Error(format!("{e:#}"))));
                    }
                }
            }
            self.metrics.active.store(self.active.len(), Relaxed);
            if !self.active.is_empty() {
                self.step();
            }
            self.metrics.active.store(self.active.len(), Relaxed);
        }
        self.metrics.active.store(0, Relaxed);
    }

    /// End every queued and active sequence with an error event.
    fn cut_all(&mut self, why: &str) {
        while let Ok(r) = self.rx.try_recv() {
            self.waiting.push_back(r);
        }
        self.metrics.queued.fetch_sub(self.waiting.len(), Relaxed);
        for r in self.waiting.drain(..) {
            let _ = r.events.send((r.index, Event::Error(why.into())));
        }
        for s in self.active.drain(..) {
            let _ = s.req.events.send((s.req.index, Event::Error(why.into())));
        }
    }

    /// Remove sequences whose client has gone, waiting or active.
    fn drop_cancelled(&mut self) {
        let before = self.waiting.len();
        self.waiting.retain(|r| !r.events.is_closed());
        let gone_waiting = before - self.waiting.len();
        self.metrics.queued.fetch_sub(gone_waiting, Relaxed);
        let before = self.active.len();
        self.active.retain(|s| !s.req.events.is_closed());
        let gone = gone_waiting + before - self.active.len();
        self.metrics.cancelled.fetch_add(gone as u64, Relaxed);
    }

    /// The cache of the longest prefix of `prompt` seen recently, cut to leave at least
    /// one prompt token to compute (its logits give the first answer token).
    fn reuse_prefix(&self, prompt: &[u32]) -> (KvCache, usize) {
        let best = self
            .prefixes
            .iter()
            .map(|(p, c)| (p.iter().zip(prompt).take_while(|(a, b)| a == b).count().min(prompt.len() - 1), c))
            .max_by_key(|(n, _)| *n);
        match best {
            Some((n, c)) if n > 0 => {
                let mut cache = c.clone();
                match cache.truncate(n) {
                    Ok(()) => (cache, n),
                    Err(_) => (self.model.new_cache(), 0),
                }
            }
            _ => (self.model.new_cache(), 0),
        }
    }

    fn prefill(&mut self, mut req: SeqRequest) -> Result<Option<Active>> {
        let prompt = req.prompt.clone();
        anyhow::ensure!(!prompt.is_empty(), "the prompt is empty");
        anyhow::ensure!(prompt.len() < self.cfg.ctx, "the prompt ({} tokens) does not fit the context of {}", prompt.len(), self.cfg.ctx);
        let (mut cache, reused) = if req.prompt_logprobs { (self.model.new_cache(), 0) } else { self.reuse_prefix(&prompt) };
        let rest = &prompt[reused..];
        let dev = self.model.device().clone();
        let ids = Tensor::new(rest, &dev)?.unsqueeze(0)?;
        // Every position's logits only when the prompt is scored; otherwise the last one's.
        let logits = if req.prompt_logprobs {
            self.model.forward(&ids, &MaskSpec::causal(), Some(&mut cache))?
        } else {
            self.model.forward_last(&ids, &MaskSpec::causal(), Some(&mut cache))?
        };
        let t = logits.dim(1)?;
        let last: Vec<f32> = logits.narrow(1, t - 1, 1)?.flatten_all()?.to_vec1()?;
        if req.prompt_logprobs {
            // position i's logits score token i + 1
            let k = req.top_logprobs.unwrap_or(0);
            let rows = if t > 1 { logits.narrow(1, 0, t - 1)?.squeeze(0)?.to_vec2::<f32>()? } else { vec![] };
            let lps = rows.iter().zip(&prompt[1..]).map(|(row, &id)| token_logprob(&self.tok, row, id, k)).collect();
            let _ = req.events.send((req.index, Event::Prompt { logprobs: lps }));
        }
        self.metrics.prompt_tokens.fetch_add(prompt.len() as u64, Relaxed);
        self.metrics.prefix_reused_tokens.fetch_add(reused as u64, Relaxed);
        if self.cfg.prefix_cache_entries > 0 {
            self.prefixes.retain(|(p, _)| **p != *prompt);
            self.prefixes.push_front((prompt.clone(), cache.clone()));
            self.prefixes.truncate(self.cfg.prefix_cache_entries);
        }
        if req.max_tokens == 0 {
            // scoring only: the prompt's log-probabilities were the answer
            self.metrics.e2e.observe(req.arrived.elapsed());
            let _ = req.events.send((req.index, Event::Done { finish: Finish::Length, prompt_tokens: prompt.len(), completion_tokens: 0, cached_tokens: 0 }));
            return Ok(None);
        }
        let text = TextState::new(req.stop_strings.clone()).strip_leading_spaces(req.strip_leading_spaces);
        let constraint = req.constraint.take();
        let mut seq = Active {
            constraint,
            sampler: Sampler::new(req.sampling.clone()),
            req,
            cache,
            last: 0,
            generated: 0,
            counts: HashMap::new(),
            text,
            cached_tokens: reused,
            last_emit: Instant::now(),
            done: false,
        };
        self.consume(&mut seq, last);
        Ok((!seq.done).then_some(seq))
    }

    /// One batched forward pass over every active sequence, then each samples.
    fn step(&mut self) {
        let tokens: Vec<u32> = self.active.iter().map(|s| s.last).collect();
        let result = {
            let mut caches: Vec<&mut KvCache> = self.active.iter_mut().map(|s| &mut s.cache).collect();
            self.model.decode_step(&tokens, &mut caches).and_then(|l| l.to_vec2::<f32>())
        };
        self.metrics.decode_steps.fetch_add(1, Relaxed);
        self.metrics.decode_rows.fetch_add(tokens.len() as u64, Relaxed);
        match result {
            Ok(rows) => {
                let mut active = std::mem::take(&mut self.active);
                for (seq, row) in active.iter_mut().zip(rows) {
                    self.consume(seq, row);
                }
                active.retain(|s| !s.done);
                self.active = active;
            }
            Err(e) => {
                for s in self.active.drain(..) {
                    let _ = s.req.events.send((s.req.index, Event::Error(format!("decoding failed: {e}"))));
                }
            }
        }
    }

    /// Sample the next token of `seq` from `logits`, hand out its text, and finish the
    /// sequence when a stop token/string, its length or the context ends it.
    fn consume(&self, seq: &mut Active, mut logits: Vec<f32>) {
        let r = &seq.req;
        for &(t, b) in &r.logit_bias {
            if let Some(l) = logits.get_mut(t as usize) {
                *l += b;
            }
        }
        if r.frequency_penalty != 0.0 || r.presence_penalty != 0.0 {
            for (&t, &c) in &seq.counts {
                if let Some(l) = logits.get_mut(t as usize) {
                    *l -= r.frequency_penalty * c as f32 + r.presence_penalty;
                }
            }
        }
        if let Some(c) = seq.constraint.as_mut() {
            let t0 = Instant::now();
            let masked = c.mask(&mut logits);
            self.metrics.grammar_masks.fetch_add(1, Relaxed);
            self.metrics.grammar_mask_micros.fetch_add(t0.elapsed().as_micros() as u64, Relaxed);
            if let Err(e) = masked {
                let _ = r.events.send((r.index, Event::Error(e)));
                seq.done = true;
                return;
            }
        }
        let mut tok = seq.sampler.sample(&logits);
        if seq.constraint.is_some() && logits.get(tok as usize).is_none_or(|l| *l == f32::NEG_INFINITY) {
            // Only when rounding left the sampler's running sum short of its draw: take the
            // most likely allowed token rather than one the grammar forbids.
            tok = ferrolm_infer::sampling::argmax(&logits);
        }
        let lp = r.top_logprobs.map(|k| token_logprob(&self.tok, &logits, tok, k));
        let now = Instant::now();
        if seq.generated == 0 {
            self.metrics.ttft.observe(now - r.arrived);
        } else {
            self.metrics.itl.observe(now - seq.last_emit);
        }
        seq.last_emit = now;
        seq.generated += 1;
        self.metrics.completion_tokens.fetch_add(1, Relaxed);
        *seq.counts.entry(tok).or_insert(0) += 1;
        seq.last = tok;
        let mut finish = None;
        // a stop token ends the answer without text; a stop string ends it where it began
        let mut failed = None;
        // special tokens (role markers, padding, sentinels) are no answer text, as
        // transformers' and vLLM's skip_special_tokens default has it; they still count
        let bytes = if self.tok.is_special(tok) { &[][..] } else { self.tok.id_to_bytes(tok).unwrap_or("\u{FFFD}".as_bytes()) };
        if r.stop_tokens.contains(&tok) || seq.text.push(bytes) {
            finish = Some(Finish::Stop);
        } else if let Some(c) = seq.constraint.as_mut() {
            match c.consume(tok) {
                Ok(()) if c.is_complete() => finish = Some(Finish::Stop),
                Ok(()) => {}
                Err(e) => failed = Some(e),
            }
        }
        if let Some(e) = failed {
            let _ = r.events.send((r.index, Event::Error(e)));
            seq.done = true;
            return;
        }
        if finish.is_none() && (seq.generated >= r.max_tokens || seq.cache.len() + 1 > self.cfg.ctx) {
            finish = Some(Finish::Length);
        }
        let text = seq.text.take_ready(finish.is_some());
        let mut ok = true;
        if !text.is_empty() || lp.is_some() {
            ok = r.events.send((r.index, Event::Delta { text, logprobs: lp.into_iter().collect() })).is_ok();
        }
        if let Some(f) = finish {
            self.metrics.e2e.observe(now - r.arrived);
            let _ = r.events.send((
                r.index,
                Event::Done { finish: f, prompt_tokens: r.prompt.len(), completion_tokens: seq.generated, cached_tokens: seq.cached_tokens },
            ));
            seq.done = true;
        } else if !ok {
            self.metrics.cancelled.fetch_add(1, Relaxed);
            seq.done = true;
        }
    }
}

/// log softmax of `logits` at `tok`, and the `k` most likely tokens.
fn token_logprob(tok: &Tokenizer, logits: &[f32], id: u32, k: usize) -> TokenLogprob {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let lse = max + logits.iter().map(|l| (l - max).exp()).sum::<f32>().ln();
    let bytes = |t: u32| tok.id_to_bytes(t).map(|b| b.to_vec()).unwrap_or_default();
    // k = 0 (a prompt scored with `logprobs: 0`, once per position): no ranking at all
    let mut top: Vec<(u32, f32)> = if k == 0 { vec![] } else { logits.iter().enumerate().map(|(i, &l)| (i as u32, l - lse)).collect() };
    let k = k.min(top.len());
    if k > 0 {
        top.select_nth_unstable_by(k - 1, |a, b| b.1.total_cmp(&a.1));
    }
    top.truncate(k);
    // tokens a grammar forbids (-inf) are no alternatives
    top.retain(|e| e.1.is_finite());
    top.sort_by(|a, b| b.1.total_cmp(&a.1));
    TokenLogprob { id, bytes: bytes(id), logprob: logits[id as usize] - lse, top: top.into_iter().map(|(t, l)| (t, bytes(t), l)).collect() }
}
