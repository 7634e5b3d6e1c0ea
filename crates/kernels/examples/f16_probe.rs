//! Times the f16 few-row product on a matrix in cache and one out of cache.
use ferrolm_kernels::f16::F16Matrix;
use std::time::Instant;

fn main() {
    probe_stream();
    for &(rows, cols, reps) in &[(576usize, 576usize, 2000usize), (1536, 576, 500), (49152, 576, 20)] {
        let w: Vec<f32> = (0..rows * cols).map(|i| ((i * 7919) % 1000) as f32 / 1000.0 - 0.5).collect();
        let q = F16Matrix::from_f32(&w, rows, cols).unwrap();
        let x: Vec<f32> = (0..cols).map(|i| (i % 13) as f32 / 13.0).collect();
        let _ = q.matmul_t(&x, 1);
        let t = Instant::now();
        for _ in 0..reps {
            std::hint::black_box(q.matmul_t(&x, 1));
        }
        let s = t.elapsed().as_secs_f64() / reps as f64;
        println!("{rows}x{cols}: {:.1} us, {:.2} Gweights/s, {:.1} GB/s", s * 1e6, (rows * cols) as f64 / s / 1e9, (rows * cols * 2) as f64 / s / 1e9);
    }
}

#[allow(dead_code)]
#[target_feature(enable = "avx512f")]
unsafe fn stream(bits: &[u16]) -> f32 {
    use std::arch::x86_64::*;
    let mut a = [_mm512_setzero_ps(); 4];
    let mut i = 0;
    while i + 64 <= bits.len() {
        for u in 0..4 {
            let v = unsafe { _mm512_cvtph_ps(_mm256_loadu_si256(bits.as_ptr().add(i + 16 * u) as *const __m256i)) };
            a[u] = _mm512_add_ps(a[u], v);
        }
        i += 64;
    }
    _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(a[0], a[1]), _mm512_add_ps(a[2], a[3])))
}

#[test]
fn t() {}

pub fn probe_stream() {
    let bits = vec![0x3c00u16; 49152 * 576];
    let t = Instant::now();
    let mut s = 0.0;
    for _ in 0..20 {
        s += unsafe { stream(std::hint::black_box(&bits)) };
    }
    let e = t.elapsed().as_secs_f64() / 20.0;
    println!("stream: {:.1} GB/s ({s})", (bits.len() * 2) as f64 / e / 1e9);
}
