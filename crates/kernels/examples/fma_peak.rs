//! The f32 multiply-add peak of one core: 12 independent chains of 16-lane (AVX-512) or
//! 8-lane (AVX2) fused multiply-adds, nothing read from memory. The ceiling any f32 product
//! (ferrolm's, MKL's, oneDNN's) runs under on this core, against which prefill figures are
//! read (bench/README.md).
//!
//!     cargo run --release -p ferrolm-kernels --example fma_peak

use std::time::Instant;

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn chains_avx512(iters: usize) -> f32 {
    use std::arch::x86_64::*;
    let (a, b) = (_mm512_set1_ps(0.999_999), _mm512_set1_ps(1e-7));
    let mut acc = [_mm512_set1_ps(1.0); 12];
    for _ in 0..iters {
        for v in acc.iter_mut() {
            *v = _mm512_fmadd_ps(*v, a, b);
        }
    }
    acc.iter().map(|&v| _mm512_reduce_add_ps(v)).sum()
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn chains_avx2(iters: usize) -> f32 {
    use std::arch::x86_64::*;
    let (a, b) = (_mm256_set1_ps(0.999_999), _mm256_set1_ps(1e-7));
    let mut acc = [_mm256_set1_ps(1.0); 12];
    for _ in 0..iters {
        for v in acc.iter_mut() {
            *v = _mm256_fmadd_ps(*v, a, b);
        }
    }
    let mut out = [0f32; 8];
    let mut s = 0.0;
    for v in acc {
        // SAFETY: out holds 8 floats.
        unsafe { _mm256_storeu_ps(out.as_mut_ptr(), v) };
        s += out.iter().sum::<f32>();
    }
    s
}

fn main() {
    #[cfg(target_arch = "x86_64")]
    {
        let iters = 100_000_000;
        let run = |name: &str, lanes: usize, f: &dyn Fn(usize) -> f32| {
            let mut best = f64::MAX;
            for _ in 0..5 {
                let t = Instant::now();
                std::hint::black_box(f(std::hint::black_box(iters)));
                best = best.min(t.elapsed().as_secs_f64());
            }
            // 12 chains × lanes multiply-adds, 2 flops each
            println!("{name}: {:.1} GFLOP/s (best of 5)", (iters * 12 * lanes * 2) as f64 / best / 1e9);
        };
        if std::arch::is_x86_feature_detected!("avx512f") {
            // SAFETY: the CPU has AVX-512 F (checked above).
            run("AVX-512 FMA, 16 lanes", 16, &|n| unsafe { chains_avx512(n) });
        }
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
            // SAFETY: the CPU has AVX2 and FMA (checked above).
            run("AVX2 FMA, 8 lanes", 8, &|n| unsafe { chains_avx2(n) });
        }
    }
}
