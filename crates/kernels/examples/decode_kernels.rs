//! Time of the kernels one batched decoding step calls (the few-row `linear` products and
//! `decode_attention`) at the serving benchmark's shapes (bench/decode_step.toml: d_model
//! 256, 4 query / 2 key-value heads of 64, MLP 683, vocabulary 8192), for 1 and 8 rows.
//!
//! ```text
//! RAYON_NUM_THREADS=1 cargo run --release -p ferrolm-kernels --example decode_kernels -- [REPEATS]
//! ```
//! Prints, per kernel and row count, the median and the fastest of REPEATS (default 200)
//! timed calls and the multiply-add rate of the median in GFLOP/s.

use candle_core::{Device, Tensor};
use ferrolm_kernels::{decode_attention, linear, DecodeHeads, RowKv};
mod common;

use common::{time, values};

fn main() -> candle_core::Result<()> {
    let repeats: usize = std::env::args().nth(1).map(|s| s.parse().expect("REPEATS is a number")).unwrap_or(200);
    println!("| kernel | rows | median µs | fastest µs | GFLOP/s |\n|---|---|---|---|---|");
    let shapes = [("qkv 512×256", 512, 256), ("o 256×256", 256, 256), ("gate+up 1366×256", 1366, 256), ("down 256×683", 256, 683), ("head 8192×256", 8192, 256)];
    let mut total = [0f64; 2];
    for (name, n, k) in shapes {
        let w = Tensor::from_vec(values(n * k, 1), (n, k), &Device::Cpu)?;
        for (ri, rows) in [1usize, 8].into_iter().enumerate() {
            let x = Tensor::from_vec(values(rows * k, 2), (rows, k), &Device::Cpu)?;
            let (med, fast) = time(repeats, || {
                std::hint::black_box(linear(&x, &w, None).expect("linear"));
            });
            let layers = if name.starts_with("head") { 1.0 } else { 4.0 };
            total[ri] += med * layers;
            println!("| linear {name} | {rows} | {med:.1} | {fast:.1} | {:.1} |", 2.0 * (rows * n * k) as f64 / med / 1e3);
        }
    }
    let h = DecodeHeads { n_heads: 4, n_kv_heads: 2, head_dim: 64, scale: 0.125 };
    for (ri, rows) in [1usize, 8].into_iter().enumerate() {
        for len in [50usize, 200] {
            let caches: Vec<(Vec<f32>, Vec<f32>)> = (0..rows).map(|r| (values(len * 128, 3 + r as u64), values(len * 128, 99 + r as u64))).collect();
            let kv: Vec<RowKv> = caches.iter().map(|(k, v)| RowKv { k, v }).collect();
            let q = values(rows * 256, 7);
            let (med, fast) = time(repeats, || {
                std::hint::black_box(decode_attention(&q, &kv, h).expect("attention"));
            });
            if len == 200 {
                total[ri] += med * 4.0;
            }
            println!("| decode_attention len {len} | {rows} | {med:.1} | {fast:.1} | {:.1} |", 2.0 * 2.0 * (rows * 4 * 64 * len) as f64 / med / 1e3);
        }
    }
    println!("\nproducts + attention (len 200) of one step, 4 layers: 1 row {:.0} µs, 8 rows {:.0} µs", total[0], total[1]);
    Ok(())
}
