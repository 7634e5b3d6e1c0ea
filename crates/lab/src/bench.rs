//! The benchmark presets: tokens/s of full training steps (forward, backward, clipping,
//! AdamW) and peak memory, on random tokens, for side-by-side comparison with
//! bench/train_torch.py (`bench train`) and bench/history_torch.py (`bench recurrent`).

use anyhow::Result;
use candle_core::Device;
use ferrolm_kernels::MatmulPrecision;
use ferrolm_model::{BlockStyle, Family, TransformerConfig};
use ferrolm_train::config::{RunConfig, Schedule, TrainConfig};
use ferrolm_train::{start_run, ArchData};

use crate::timing::{median, peak_rss_bytes, time_steps};

/// What a benchmark prints: one JSON object (`--json`) or one line of text.
#[derive(Debug, Clone)]
pub struct BenchOutcome {
    pub json: serde_json::Value,
    pub text: String,
}

/// The Transformer presets of `bench train`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Preset {
    /// 4 layers, 4 heads, width 128, context 64, batch 12, vocab 65
    C1,
    /// 6 layers, 6 heads, width 384, context 256, batch 8, vocab 65
    C2,
}

impl Preset {
    pub fn name(self) -> &'static str {
        match self {
            Preset::C1 => "c1",
            Preset::C2 => "c2",
        }
    }

    /// The run config of the preset: the same optimisation as the PyTorch reference.
    pub fn run_config(self, modern: bool) -> RunConfig {
        let (layers, heads, width, ctx, batch) = match self {
            Preset::C1 => (4, 4, 128, 64, 12),
            Preset::C2 => (6, 6, 384, 256, 8),
        };
        RunConfig::transformer(
            TransformerConfig {
                vocab_size: 65,
                d_model: width,
                n_layers: layers,
                n_heads: heads,
                n_kv_heads: heads,
                max_seq_len: ctx,
                block: if modern { BlockStyle::Modern } else { BlockStyle::Gpt2 },
                tie_embeddings: true,
                dropout: 0.0,
                ..Default::default()
            },
            // AdamW(0.9, 0.99), wd 0.1 on every matrix including embeddings, clip 1.0.
            TrainConfig {
                batch_size: batch,
                lr: 1e-3,
                min_lr: 1e-4,
                warmup_steps: 0,
                schedule: Schedule::Constant,
                beta1: 0.9,
                beta2: 0.99,
                weight_decay: 0.1,
                decay_embeddings: true,
                grad_clip: 1.0,
                max_steps: usize::MAX / 2,
                ..Default::default()
            },
            Default::default(),
        )
    }
}

/// `bench train`'s options.
#[derive(Debug, Clone)]
pub struct TrainBenchOptions {
    pub preset: Preset,
    /// Timed optimizer steps (after 3 warm-up steps).
    pub steps: usize,
    /// Modern block instead of GPT-2 style (not comparable with the PyTorch peer).
    pub modern: bool,
    pub matmul: MatmulPrecision,
}

/// `n` random token ids below `vocab` (speed does not depend on content).
fn random_tokens(n: u64, vocab: usize) -> Vec<u32> {
    (0..n).map(|i| (xxhash_rust::xxh3::xxh3_64(&i.to_le_bytes()) % vocab as u64) as u32).collect()
}

/// Training throughput of a preset Transformer on random tokens.
pub fn bench_train(o: &TrainBenchOptions, device: &Device) -> Result<BenchOutcome> {
    let mut cfg = o.preset.run_config(o.modern);
    cfg.train.matmul_precision = o.matmul;
    let seq = cfg.model.max_seq_len();
    let data = random_tokens(200_000, 65);
    let dir = tempfile::tempdir()?;
    let mut t = start_run(&cfg, dir.path(), ArchData::Stream { train: &data, val: &data }, vec![1; 65], None, device, false)?;
    let mut phases: [Vec<f64>; 3] = Default::default();
    let (secs, total) = time_steps(&mut t, 3, o.steps, |t| {
        for (v, x) in phases.iter_mut().zip(t.last_phase_ms) {
            v.push(x);
        }
    })?;
    let phase_median: Vec<f64> = phases.iter().map(|v| median(v)).collect();
    let median_ms = median(&secs) * 1e3;
    let tokens_per_step = (cfg.train.batch_size * seq) as f64;
    let json = serde_json::json!({
        "preset": o.preset.name(),
        "block": if o.modern { "modern" } else { "gpt2" },
        "steps": o.steps,
        "threads": candle_core::utils::get_num_threads(),
        "params": cfg.model.num_params(),
        "matmul": format!("{:?}", ferrolm_kernels::matmul_precision()).to_lowercase(),
        "tokens_per_sec": tokens_per_step * o.steps as f64 / total,
        "tokens_per_sec_median_step": tokens_per_step / (median_ms / 1e3),
        "step_ms_median": median_ms,
        "forward_ms_median": phase_median[0],
        "backward_ms_median": phase_median[1],
        "optimizer_ms_median": phase_median[2],
        "peak_rss_bytes": peak_rss_bytes(),
    });
    let text = format!(
        "{:?}: {} params, {:.0} tokens/s, median step {:.1} ms (forward+loss {:.1}, backward {:.1}, clip+AdamW {:.1}), peak RSS {:.1} MiB ({} threads)",
        o.preset,
        json["params"],
        json["tokens_per_sec"].as_f64().unwrap_or(0.0),
        median_ms,
        phase_median[0],
        phase_median[1],
        phase_median[2],
        peak_rss_bytes() as f64 / (1 << 20) as f64,
        json["threads"]
    );
    Ok(BenchOutcome { json, text })
}

/// `bench recurrent`'s options: an LSTM or Elman LM.
#[derive(Debug, Clone)]
pub struct RecurrentBenchOptions {
    /// "lstm" or "rnn".
    pub family: String,
    pub vocab: usize,
    pub embed: usize,
    pub hidden: usize,
    pub layers: usize,
    pub batch: usize,
    pub seq_len: usize,
    /// Timed optimizer steps (after 2 warm-up steps).
    pub steps: usize,
}

/// Training throughput (forward, backward through time, clip, AdamW) of a recurrent LM on
/// random tokens, with the PyTorch peer's optimisation.
pub fn bench_recurrent(b: &RecurrentBenchOptions, device: &Device) -> Result<BenchOutcome> {
    let sets = vec![
        format!("model.family={}", b.family),
        format!("model.vocab_size={}", b.vocab),
        format!("model.d_model={}", b.embed),
        format!("model.hidden={}", b.hidden),
        format!("model.n_layers={}", b.layers),
        "model.n_heads=1".into(),
        "model.n_kv_heads=1".into(),
        format!("model.max_seq_len={}", b.seq_len),
        format!("train.batch_size={}", b.batch),
        format!("train.seq_len={}", b.seq_len),
        // The PyTorch peer's optimisation: AdamW(0.9, 0.99), lr 1e-3 constant, wd 0.1, clip 1.
        "train.lr=1e-3".into(),
        "train.min_lr=1e-3".into(),
        "train.warmup_steps=0".into(),
        "train.schedule=constant".into(),
        "train.beta2=0.99".into(),
        "train.weight_decay=0.1".into(),
        "train.max_steps=1000000".into(),
    ];
    let cfg = RunConfig::from_value(&ferrolm_common::load_config(None, &sets)?)?;
    anyhow::ensure!(matches!(cfg.model.family(), Family::Rnn | Family::Lstm), "--family must be lstm or rnn");
    let data = random_tokens(400_000, b.vocab);
    let dir = tempfile::tempdir()?;
    let mut t = start_run(&cfg, dir.path(), ArchData::Stream { train: &data, val: &data }, vec![1; b.vocab], None, device, false)?;
    let (secs, total) = time_steps(&mut t, 2, b.steps, |_| {})?;
    let median_ms = median(&secs) * 1e3;
    let tokens = (b.batch * b.seq_len) as f64;
    let json = serde_json::json!({
        "family": b.family, "params": cfg.model.num_params(), "steps": b.steps,
        "threads": candle_core::utils::get_num_threads(),
        "tokens_per_sec": tokens * b.steps as f64 / total,
        "step_ms_median": median_ms,
        "peak_rss_bytes": peak_rss_bytes(),
    });
    let text = format!("{}: {} params, {:.0} tokens/s, median step {:.1} ms", b.family, json["params"], json["tokens_per_sec"].as_f64().unwrap_or(0.0), median_ms);
    Ok(BenchOutcome { json, text })
}

/// `bench generate`'s options: any model `load_model` reads (run folder, Hugging Face
/// folder, `.gguf`), random prompt ids, greedy decoding.
#[derive(Debug, Clone)]
pub struct GenerateBenchOptions {
    pub model: std::path::PathBuf,
    pub prompt_tokens: usize,
    pub new_tokens: usize,
    pub repeats: usize,
    /// Quantize the weights after loading (timed as part of the load).
    pub quant: Option<ferrolm_model::QuantKind>,
}

/// Load time, prefill tokens/s (one forward over the prompt filling the KV cache) and
/// batch-1 decode tokens/s (one token per forward, greedy), medians over `repeats`, and
/// peak memory — for bench/hf_speed.py's side by side with transformers and llama.cpp.
pub fn bench_generate(o: &GenerateBenchOptions, device: &Device) -> Result<BenchOutcome> {
    use candle_core::Tensor;
    use ferrolm_model::attention::MaskSpec;
    anyhow::ensure!(o.prompt_tokens >= 1 && o.new_tokens >= 1 && o.repeats >= 1, "prompt, new tokens and repeats must be positive");
    let rss_before = peak_rss_bytes();
    let t0 = std::time::Instant::now();
    let mut loaded = ferrolm_model::load_model(&o.model, device)?;
    let quant = match o.quant {
        Some(kind) => Some(loaded.model.quantize(kind)?),
        None => None,
    };
    let load_s = t0.elapsed().as_secs_f64();
    let m = loaded.model.decoder("bench generate")?;
    let cfg = m.config().clone();
    anyhow::ensure!(o.prompt_tokens + o.new_tokens <= cfg.max_seq_len, "prompt + new tokens exceed the model's context {}", cfg.max_seq_len);
    let prompt: Vec<u32> = random_tokens(o.prompt_tokens as u64, cfg.vocab_size);
    let (mut prefill, mut decode) = (Vec::new(), Vec::new());
    // Round 0 warms caches and allocators and is not counted.
    for round in 0..=o.repeats {
        let mut cache = m.new_cache();
        let ids = Tensor::new(prompt.as_slice(), device)?.unsqueeze(0)?;
        let t = std::time::Instant::now();
        // the prompt pass `generate` makes: logits of the last position only
        let logits = m.forward_last(&ids, &MaskSpec::causal(), Some(&mut cache))?;
        let mut next: u32 = logits.flatten_all()?.argmax(0)?.to_scalar()?;
        let p = t.elapsed().as_secs_f64();
        let t = std::time::Instant::now();
        for _ in 0..o.new_tokens {
            // the step `generate` takes: one token against the cache, read in place
            let logits = m.decode_step(&[next], &mut [&mut cache])?;
            next = logits.flatten_all()?.argmax(0)?.to_scalar()?;
        }
        let d = t.elapsed().as_secs_f64();
        if round > 0 {
            prefill.push(o.prompt_tokens as f64 / p);
            decode.push(o.new_tokens as f64 / d);
        }
    }
    let json = serde_json::json!({
        "impl": "ferrolm",
        "model": o.model.display().to_string(),
        "params": loaded.spec.num_params(),
        "threads": candle_core::utils::get_num_threads(),
        "prompt_tokens": o.prompt_tokens,
        "new_tokens": o.new_tokens,
        "load_s": load_s,
        "prefill_tokens_per_sec": median(&prefill),
        "decode_tokens_per_sec": median(&decode),
        "peak_rss_bytes": peak_rss_bytes(),
        "rss_before_load_bytes": rss_before,
        "quant": o.quant.map(|k| k.to_string()),
        "quant_layers": quant.as_ref().map(|s| s.to_string()),
    });
    let text = format!(
        "{}{}: load {:.2} s, prefill {:.0} tokens/s ({} tokens), decode {:.1} tokens/s ({} tokens, batch 1), peak RSS {:.0} MiB",
        o.model.display(),
        quant.as_ref().map(|s| format!(" (--quant {}: {s})", o.quant.map(|k| k.to_string()).unwrap_or_default())).unwrap_or_default(),
        load_s,
        median(&prefill),
        o.prompt_tokens,
        median(&decode),
        o.new_tokens,
        peak_rss_bytes() as f64 / (1 << 20) as f64
    );
    Ok(BenchOutcome { json, text })
}

/// `bench lora`'s options: LoRA training steps on any decoder `load_model` reads.
#[derive(Debug, Clone)]
pub struct LoraBenchOptions {
    pub model: std::path::PathBuf,
    pub rank: usize,
    pub alpha: f64,
    pub batch: usize,
    pub seq_len: usize,
    pub steps: usize,
    /// `train.matmul_precision`.
    pub matmul: MatmulPrecision,
    /// `lora.quant`: the base's block weights held quantized (QLoRA).
    pub quant: Option<ferrolm_model::QuantKind>,
    /// `lora.dropout`: adapter dropout.
    pub dropout: f32,
}

/// Random-token language-model batches for a LoRA step: every position scored.
struct LoraBenchTask {
    model: ferrolm_model::Transformer,
    vocab: usize,
    batch: usize,
    seq_len: usize,
}

impl ferrolm_train::TrainTask for LoraBenchTask {
    fn micro_batch_loss(&self, step: usize, micro: usize) -> Result<(candle_core::Tensor, usize)> {
        use candle_core::Tensor;
        let n = self.batch * (self.seq_len + 1);
        let first = ((step * 31 + micro) * n) as u64;
        let ids: Vec<u32> = (first..first + n as u64).map(|i| (xxhash_rust::xxh3::xxh3_64(&i.to_le_bytes()) % self.vocab as u64) as u32).collect();
        let all = Tensor::from_vec(ids, (self.batch, self.seq_len + 1), self.model.device())?;
        let x = all.narrow(1, 0, self.seq_len)?;
        let y = all.narrow(1, 1, self.seq_len)?.flatten_all()?;
        let logits = self.model.forward(&x, &ferrolm_model::attention::MaskSpec::causal(), None)?;
        let loss = ferrolm_kernels::cross_entropy(&logits.flatten_to(1)?, &y)?;
        Ok((loss, self.batch * self.seq_len))
    }

    fn evaluate(&self) -> Result<ferrolm_train::EvalResult> {
        Ok(ferrolm_train::EvalResult { loss: f64::NAN, bits_per_byte: f64::NAN, tokens: 0, bytes: 0, extra: Default::default() })
    }

    fn trainable(&self, name: &str) -> bool {
        ferrolm_model::lora::is_adapter(name)
    }
}

/// Tokens/s of LoRA training steps (forward, backward, clipping, AdamW on the adapters) on
/// random tokens, every linear layer of the blocks adapted, the base frozen — for
/// bench/lora_speed.py (transformers + PEFT side by side).
pub fn bench_lora(o: &LoraBenchOptions, device: &Device) -> Result<BenchOutcome> {
    ferrolm_model::registry::ensure_trainable_source(&o.model)?;
    // with --quant the base is quantized as it is read (never whole in f32), as sft does
    let loaded = ferrolm_model::registry::load_base(&o.model, device, o.quant)?;
    let mut model = loaded.model.into_decoder("bench lora")?;
    let lcfg = ferrolm_model::lora::LoraConfig { rank: o.rank, alpha: o.alpha, dropout: o.dropout, targets: vec!["all".into()], quant: o.quant };
    let adapter_params = ferrolm_model::lora::prepare(&mut model, &loaded.varmap, &lcfg, 1)?;
    let vocab = model.config().vocab_size;
    let train = TrainConfig { max_steps: o.steps + 10, batch_size: o.batch, seq_len: o.seq_len, lr: 1e-4, min_lr: 1e-4, warmup_steps: 0, eval_interval: 0, checkpoint_interval: 0, log_interval: 1_000_000, matmul_precision: o.matmul, ..Default::default() };
    let dir = tempfile::tempdir()?;
    let task = LoraBenchTask { model, vocab, batch: o.batch, seq_len: o.seq_len };
    let mut t = ferrolm_train::Trainer::from_task(train, dir.path(), loaded.varmap, Box::new(task))?;
    t.quiet = true;
    let mut phases: [Vec<f64>; 3] = Default::default();
    let (secs, total) = time_steps(&mut t, 2, o.steps, |t| {
        for (v, x) in phases.iter_mut().zip(t.last_phase_ms) {
            v.push(x);
        }
    })?;
    let tokens_per_step = (o.batch * o.seq_len) as f64;
    let json = serde_json::json!({
        "impl": "ferrolm",
        "forward_ms_median": median(&phases[0]),
        "backward_ms_median": median(&phases[1]),
        "optimizer_ms_median": median(&phases[2]),
        "model": o.model.display().to_string(),
        "params": loaded.spec.num_params(),
        "adapter_params": adapter_params,
        "rank": o.rank,
        "batch": o.batch,
        "seq_len": o.seq_len,
        "steps": o.steps,
        "threads": candle_core::utils::get_num_threads(),
        "matmul": format!("{:?}", ferrolm_kernels::matmul_precision()).to_lowercase(),
        "tokens_per_sec": tokens_per_step * o.steps as f64 / total,
        "step_ms_median": median(&secs) * 1e3,
        "peak_rss_bytes": peak_rss_bytes(),
        "rss_bytes": crate::timing::rss_bytes(),
        "base_quant": o.quant.map(|q| q.to_string()),
    });
    let text = format!(
        "LoRA rank {} on {}{}: {adapter_params} adapter parameters, {:.0} tokens/s, median step {:.0} ms, peak RSS {:.0} MiB, RSS after the steps {:.0} MiB",
        o.rank,
        o.model.display(),
        o.quant.map(|q| format!(" (base held {q})")).unwrap_or_default(),
        json["tokens_per_sec"].as_f64().unwrap_or(0.0),
        median(&secs) * 1e3,
        peak_rss_bytes() as f64 / (1 << 20) as f64,
        crate::timing::rss_bytes() as f64 / (1 << 20) as f64
    );
    Ok(BenchOutcome { json, text })
}
