//! Throughput of candle's f32 matmul as gemm splits it over threads, as ferrolm splits it
//! (crates/kernels/src/sgemm.rs), and of the bf16 AMX product, on training-sized shapes.
//! `cargo run --release -p ferrolm-model --example amx_bench`
use candle_core::{Device, Tensor};
use ferrolm_kernels::{set_matmul_precision, MatmulPrecision};
use std::time::Instant;

fn main() -> candle_core::Result<()> {
    let shapes = [(2048, 1152, 384), (2048, 384, 1536), (384, 1536, 2048), (768, 384, 128), (768, 128, 512)];
    for &(m, n, k) in &shapes {
        for (ta, tb) in [(false, true), (false, false), (true, false)] {
            let a = if ta { Tensor::randn(0f32, 1.0, (k, m), &Device::Cpu)?.t()? } else { Tensor::randn(0f32, 1.0, (m, k), &Device::Cpu)? };
            let b = if tb { Tensor::randn(0f32, 1.0, (n, k), &Device::Cpu)?.t()? } else { Tensor::randn(0f32, 1.0, (k, n), &Device::Cpu)? };
            let mut line = format!("{m}x{n}x{k} a_t={ta} b_t={tb}:");
            for p in ["gemm-rayon", "F32", "Bf16"] {
                match p {
                    "F32" => drop(set_matmul_precision(MatmulPrecision::F32)),
                    "Bf16" => drop(set_matmul_precision(MatmulPrecision::Bf16)),
                    // candle's own call: gemm's Parallelism::Rayon split.
                    _ => candle_core::cpu_backend::set_f32_gemm_hook(None),
                }
                let _ = a.matmul(&b)?;
                let flops: f64 = std::env::var("FLOPS").ok().and_then(|s| s.parse().ok()).unwrap_or(2e10);
                let reps = (flops / (2.0 * (m * n * k) as f64)).clamp(3.0, 2000.0) as usize;
                let t0 = Instant::now();
                for _ in 0..reps {
                    let _ = a.matmul(&b)?;
                }
                let gf = 2.0 * (m * n * k) as f64 * reps as f64 / t0.elapsed().as_secs_f64() / 1e9;
                line += &format!(" {p} {gf:.0} GFLOP/s");
            }
            println!("{line}");
        }
    }
    Ok(())
}
