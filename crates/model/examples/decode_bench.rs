//! Time of one batched decoding step (`Transformer::decode_step`, what `ferrolm serve`
//! runs each step) at several batch sizes, with every row's KV cache prefilled to its own
//! length, for the fused decode attention and the earlier per-row loop side by side.
//!
//! ```text
//! cargo run --release -p ferrolm-model --example decode_bench -- \
//!     (--model RUN_DIR | --config FILE.toml) [--batches 1,8,32] [--lens 100-300]
//!     [--steps 32] [--repeats 3] [--paths fused,rows] [--seed 1]
//! ```
//! `--model` loads a run folder (or a Hugging Face folder, or a `.gguf` file); `--config`
//! builds the `[model]` of a TOML file with seeded random weights (the cost of a step does
//! not depend on the weights). Cache lengths are drawn uniformly from `--lens` and cut to
//! leave room for the timed steps within `max_seq_len`. Prints one line per repeat, path
//! and batch size, then the medians: step time, tokens/s (batch / step time) and the
//! batch-b / batch-1 throughput ratio.

use anyhow::{bail, Context, Result};
use candle_core::{Device, Tensor};
use ferrolm_model::attention::{set_row_loop_decoding, MaskSpec};
use ferrolm_model::{AnyModel, KvCache, ModelSpec, Transformer};
use rand::{Rng, SeedableRng};
use std::path::PathBuf;
use std::time::Instant;

// As the `ferrolm` binary: mimalloc, keeping freed memory mapped.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

struct Args {
    model: Option<PathBuf>,
    config: Option<PathBuf>,
    batches: Vec<usize>,
    lens: (usize, usize),
    steps: usize,
    repeats: usize,
    paths: Vec<String>,
    seed: u64,
    /// Run from the main thread rather than a rayon worker (how the server ran until now).
    outside_pool: bool,
}

fn parse() -> Result<Args> {
    let mut a = Args { model: None, config: None, batches: vec![1, 8, 32], lens: (100, 300), steps: 32, repeats: 3, paths: vec!["fused".into(), "rows".into()], seed: 1, outside_pool: false };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut val = || it.next().with_context(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--model" => a.model = Some(val()?.into()),
            "--config" => a.config = Some(val()?.into()),
            "--batches" => a.batches = val()?.split(',').map(|s| s.trim().parse()).collect::<Result<_, _>>()?,
            "--lens" => {
                let v = val()?;
                let (lo, hi) = v.split_once('-').with_context(|| format!("--lens {v}: expected MIN-MAX"))?;
                a.lens = (lo.parse()?, hi.parse()?);
            }
            "--steps" => a.steps = val()?.parse()?,
            "--repeats" => a.repeats = val()?.parse()?,
            "--paths" => a.paths = val()?.split(',').map(|s| s.trim().to_string()).collect(),
            "--seed" => a.seed = val()?.parse()?,
            "--outside-pool" => a.outside_pool = true,
            _ => bail!("unknown flag {flag} (see the example's header)"),
        }
    }
    if a.paths.iter().any(|p| p != "fused" && p != "rows") {
        bail!("--paths takes fused and/or rows");
    }
    Ok(a)
}

fn load(a: &Args) -> Result<Transformer> {
    let model = match (&a.model, &a.config) {
        (Some(dir), None) => ferrolm_model::load_model(dir, &Device::Cpu)?.model,
        (None, Some(file)) => {
            let text = std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
            let table: toml::Table = text.parse().with_context(|| format!("invalid TOML in {}", file.display()))?;
            let spec = ModelSpec::from_value(table.get("model").context("the config has no [model]")?).map_err(anyhow::Error::msg)?;
            let (model, varmap) = AnyModel::build_fresh(&spec, &Device::Cpu)?;
            ferrolm_model::init_weights(&spec, &varmap, a.seed)?;
            model
        }
        _ => bail!("give one of --model RUN_DIR or --config FILE"),
    };
    match model {
        AnyModel::Decoder(m) => Ok(m),
        _ => bail!("batched decoding needs a causal decoder"),
    }
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn main() -> Result<()> {
    // As the `ferrolm` binary: candle's own pool one thread, products on rayon, exact f32.
    if std::env::var_os("CANDLE_NUM_THREADS").is_none() {
        std::env::set_var("CANDLE_NUM_THREADS", "1");
    }
    ferrolm_kernels::alloc::keep_freed_memory();
    ferrolm_kernels::set_matmul_precision(ferrolm_kernels::MatmulPrecision::F32);
    let a = parse()?;
    if a.outside_pool {
        return run(a);
    }
    // as `ferrolm serve`'s scheduler: the steps run on a worker of a rayon pool, so the
    // kernels' parallel loops start there instead of being handed across threads
    rayon::ThreadPoolBuilder::new().build()?.install(|| run(a))
}

fn run(a: Args) -> Result<()> {
    let m = load(&a)?;
    let cfg = m.config().clone();
    let max_len = a.lens.1.min(cfg.max_seq_len.saturating_sub(a.steps + 1));
    let min_len = a.lens.0.min(max_len);
    if max_len == 0 {
        bail!("max_seq_len {} leaves no room for {} steps", cfg.max_seq_len, a.steps);
    }
    println!(
        "model: d_model {}, {} layers, {}/{} heads × {}, vocab {}, max_seq_len {}; cache lengths {min_len}–{max_len}, {} timed steps, {} threads",
        cfg.d_model,
        cfg.n_layers,
        cfg.n_heads,
        cfg.n_kv_heads,
        cfg.head_dim(),
        cfg.vocab_size,
        cfg.max_seq_len,
        a.steps,
        rayon::current_num_threads()
    );
    let vocab = cfg.vocab_size as u32;
    // (path, batch) → step seconds of each repeat
    let mut times: Vec<((String, usize), Vec<f64>)> = Vec::new();
    for rep in 0..a.repeats {
        for path in &a.paths {
            set_row_loop_decoding(path == "rows");
            for &b in &a.batches {
                // the same prompts for both paths and every repeat
                let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(a.seed ^ (b as u64) << 32);
                let mut caches: Vec<KvCache> = Vec::with_capacity(b);
                for _ in 0..b {
                    let len = rng.random_range(min_len..=max_len);
                    let ids: Vec<u32> = (0..len).map(|_| rng.random_range(0..vocab)).collect();
                    let mut c = m.new_cache();
                    m.forward(&Tensor::new(ids.as_slice(), &Device::Cpu)?.unsqueeze(0)?, &MaskSpec::causal(), Some(&mut c))?;
                    caches.push(c);
                }
                let mut tokens: Vec<u32> = (0..b).map(|_| rng.random_range(0..vocab)).collect();
                let mut refs: Vec<&mut KvCache> = caches.iter_mut().collect();
                // one untimed step (first-touch allocations)
                m.decode_step(&tokens, &mut refs)?;
                let t0 = Instant::now();
                for _ in 0..a.steps {
                    let logits = m.decode_step(&tokens, &mut refs)?;
                    tokens = logits.argmax(candle_core::D::Minus1)?.to_vec1::<u32>()?;
                }
                let step = t0.elapsed().as_secs_f64() / a.steps as f64;
                println!("repeat {rep} {path:>5} batch {b:>3}: {:7.3} ms/step, {:8.1} tok/s", step * 1e3, b as f64 / step);
                match times.iter_mut().find(|(k, _)| k.0 == *path && k.1 == b) {
                    Some((_, v)) => v.push(step),
                    None => times.push(((path.clone(), b), vec![step])),
                }
            }
        }
    }
    println!("\nmedians of {} repeats:", a.repeats);
    println!("| path | batch | ms/step | tok/s | tok/s ÷ batch-1 tok/s |");
    println!("|---|---|---|---|---|");
    for path in &a.paths {
        let one = times.iter_mut().find(|(k, _)| k.0 == *path && k.1 == 1).map(|(_, v)| median(v));
        for (k, v) in times.iter_mut().filter(|(k, _)| k.0 == *path) {
            let step = median(v);
            let tps = k.1 as f64 / step;
            let ratio = one.map(|s1| format!("{:.2}×", tps * s1)).unwrap_or_else(|| "–".into());
            println!("| {path} | {} | {:.3} | {:.1} | {ratio} |", k.1, step * 1e3, tps);
        }
    }
    Ok(())
}
