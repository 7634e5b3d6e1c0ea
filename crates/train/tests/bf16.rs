//! bf16 matrix products (`train.matmul_precision = "bf16"`) train like f32. Its own test
//! binary, so its own process: the precision is process-wide, and the other test binaries
//! rely on exact f32 products.

use candle_core::Device;
use ferrolm_kernels::amx::amx_available;
use ferrolm_kernels::{matmul_precision, MatmulPrecision};
use ferrolm_model::{BlockStyle, ModelSpec, TransformerConfig};
use ferrolm_train::config::{RunConfig, Schedule, TrainConfig};
use ferrolm_train::{start_run, ArchData};

fn cfg(precision: MatmulPrecision) -> RunConfig {
    RunConfig {
        // Wide enough that every product is above the size the AMX path takes.
        model: ModelSpec::Transformer(TransformerConfig {
            vocab_size: 32,
            d_model: 64,
            n_layers: 2,
            n_heads: 4,
            n_kv_heads: 4,
            max_seq_len: 32,
            block: BlockStyle::Gpt2,
            dropout: 0.0,
            ..Default::default()
        }),
        train: TrainConfig {
            max_steps: 60,
            batch_size: 8,
            lr: 3e-3,
            min_lr: 3e-4,
            warmup_steps: 5,
            schedule: Schedule::Cosine,
            eval_interval: 0,
            eval_batches: 4,
            checkpoint_interval: 0,
            log_interval: 10,
            matmul_precision: precision,
            ..Default::default()
        },
        ..Default::default()
    }
}

/// A learnable stream (period 145); the held-out part is its continuation.
fn stream(n: usize) -> Vec<u32> {
    (0..n).map(|i| ((i * i + 5 * i) % 29) as u32 + u32::from(i % 5 == 0)).collect()
}

fn run(precision: MatmulPrecision) -> (f64, MatmulPrecision) {
    let all = stream(23_000);
    let (data, val) = (all[..20_000].to_vec(), all[20_000..].to_vec());
    let dir = tempfile::tempdir().unwrap();
    let mut t = start_run(&cfg(precision), dir.path(), ArchData::Stream { train: &data, val: &val }, vec![1; 32], None, &Device::Cpu, false).unwrap();
    t.quiet = true;
    let in_effect = matmul_precision();
    let out = t.run().unwrap();
    (out.val.unwrap().loss, in_effect)
}

#[test]
fn bf16_products_train_to_the_f32_loss() {
    let (f32_loss, p) = run(MatmulPrecision::F32);
    assert_eq!(p, MatmulPrecision::F32);
    let (bf16_loss, p) = run(MatmulPrecision::Bf16);
    let start = (32f64).ln();
    assert!(f32_loss < 0.7 * start, "the f32 run did not learn: {f32_loss}");
    if amx_available() {
        assert_eq!(p, MatmulPrecision::Bf16, "AMX is available but the run did not use it");
        assert_ne!(bf16_loss, f32_loss, "bf16 products gave bit-identical results: the AMX path was not taken");
        let rel = (bf16_loss - f32_loss).abs() / f32_loss;
        assert!(rel < 0.05, "bf16 held-out loss {bf16_loss} vs f32 {f32_loss} ({:.1}% apart)", 100.0 * rel);
    } else {
        // Without AMX the setting falls back to f32, exactly.
        assert_eq!(p, MatmulPrecision::F32);
        assert_eq!(bf16_loss, f32_loss);
    }
}
