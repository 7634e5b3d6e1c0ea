//! SIMD dispatch and the lane-parallel loops that vectorise under it. Plain Rust (no candle).
//!
//! The default build targets baseline x86-64 (SSE2, 4 lanes) so that it runs anywhere.
//! [`vectorized`] runs a closure inside a function compiled for AVX-512 (or AVX2+FMA) when
//! the CPU has it; loops inlined into it are vectorised for 16 (or 8) lanes. That only
//! helps if the closure is inlined into the wrapper, so every closure passed to it is
//! `#[inline(always)]` (one that was not ran as 4-lane SSE: 20% of the attention's time).

/// Runs `f` compiled for AVX-512 (or AVX2+FMA) when the CPU has it. Measured: the attention
/// softmax was 9% of a c2 training step at 4 lanes.
#[inline(always)]
pub fn vectorized<R>(f: impl FnOnce() -> R) -> R {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f") {
            // SAFETY: the CPU has the features the wrapper is compiled for (AVX-512 F, BW,
            // VL and DQ come together on every AVX-512 CPU that has F with AVX2/FMA/BMI2).
            return unsafe { on_avx512(f) };
        }
        if fma_available() {
            // SAFETY: the CPU has AVX2 and FMA (checked); BMI2 comes with AVX2 on every x86-64 CPU.
            return unsafe { on_avx2(f) };
        }
    }
    f()
}

/// True when the CPU has AVX2 and FMA, so that [`vectorized`] runs its closure compiled
/// with fused multiply-add (`f32::mul_add` becomes one instruction, not a libm call).
#[inline(always)]
pub fn fma_available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// How far ahead of what it reads (bytes) a decoding product on AVX-512 asks for the next
/// weights in software (0: it leaves the stream to the hardware prefetcher). Decoding reads
/// every weight from memory once, row after row, and whether the hardware prefetcher keeps
/// up differs by CPU. Measured on 1 thread, `ferrolm bench generate` on f16 GGUF files of
/// SmolLM2-135M's and Qwen2.5-0.5B's shapes:
///
/// - AMD Zen 5 (family 0x1A): 8 KiB. Without prefetch a 576-wide f16 row (1152 bytes) took
///   about as long as an 896-wide one — the stream was lost at every row — and SmolLM2
///   decoded at 61–70 tokens/s, Qwen2.5 at 18–19; 8 KiB ahead 95–104 and 30–31 (16 KiB
///   90–95 and 28). In the products alone (`--example f16_pages`) 8 KiB streamed about
///   30 GB/s, 4 KiB 25, 2 KiB 22, none 16–21.
/// - AMD Zen 3/4 (family 0x19): none. There the hardware prefetcher alone streamed f16
///   rows faster than 4 KiB ahead (SmolLM2 58–70 → 77–87 tokens/s without; commit d3d7dc6).
/// - Others (Intel Xeons): 4 KiB, the distance the f16 and Q8_0 kernels had when they were
///   measured there.
pub fn decode_prefetch_bytes() -> usize {
    static BYTES: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *BYTES.get_or_init(|| match amd_family() {
        Some(0x19) => 0,
        Some(0x1A) => 8192,
        _ => 4096,
    })
}

/// The CPU's family on an AMD processor (base family plus extended family, as AMD's
/// manuals count it), None on others.
fn amd_family() -> Option<u32> {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::__cpuid;
        // (leaves 0 and 1 exist on every x86-64 processor)
        let (vendor, sig) = (__cpuid(0), __cpuid(1));
        let name: Vec<u8> = [vendor.ebx, vendor.edx, vendor.ecx].iter().flat_map(|r| r.to_le_bytes()).collect();
        if name != b"AuthenticAMD" {
            return None;
        }
        let base = (sig.eax >> 8) & 0xf;
        Some(if base == 0xf { base + ((sig.eax >> 20) & 0xff) } else { base })
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        None
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,bmi2")]
fn on_avx512<R>(f: impl FnOnce() -> R) -> R {
    f()
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,bmi2")]
fn on_avx2<R>(f: impl FnOnce() -> R) -> R {
    f()
}

/// Sum in 16 independent lanes: an in-order float sum is one long dependency chain that
/// no compiler may vectorise.
#[inline(always)]
pub fn lane_sum(v: &[f32]) -> f32 {
    let mut acc = [0f32; 16];
    let chunks = v.chunks_exact(16);
    let tail: f32 = chunks.remainder().iter().sum();
    for c in chunks {
        for i in 0..16 {
            acc[i] += c[i];
        }
    }
    acc.iter().sum::<f32>() + tail
}

/// Dot product in 16 independent lanes (see [`lane_sum`]).
#[inline(always)]
pub fn lane_dot(a: &[f32], b: &[f32]) -> f32 {
    let n = a.len().min(b.len());
    let (a, b) = (&a[..n], &b[..n]);
    let mut acc = [0f32; 16];
    let (ca, cb) = (a.chunks_exact(16), b.chunks_exact(16));
    let tail: f32 = ca.remainder().iter().zip(cb.remainder()).map(|(x, y)| x * y).sum();
    for (x, y) in ca.zip(cb) {
        for i in 0..16 {
            acc[i] += x[i] * y[i];
        }
    }
    acc.iter().sum::<f32>() + tail
}

/// Dot product with fused multiply-adds in two 8-lane AVX registers, for a caller inside
/// [`vectorized`] (where the intrinsics inline as single instructions); [`lane_dot`] on
/// CPUs without AVX2+FMA. word2vec's update kernel spends most of its time here: this
/// form measured 25% faster there than [`lane_dot`]'s 16 lanes with `f32::mul_add`.
#[inline(always)]
pub fn dot_fma(a: &[f32], b: &[f32]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if fma_available() {
        // SAFETY: the CPU has AVX2 and FMA (checked just above).
        return unsafe { dot_fma_x86(a, b) };
    }
    lane_dot(a, b)
}

/// # Safety
/// The CPU must have AVX2 and FMA.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn dot_fma_x86(a: &[f32], b: &[f32]) -> f32 {
    use std::arch::x86_64::*;
    let n = a.len().min(b.len());
    let (pa, pb) = (a.as_ptr(), b.as_ptr());
    // SAFETY: the caller guarantees AVX2 and FMA; every load reads the 8 floats at i..i + 8
    // with i + 8 ≤ n, inside both slices.
    unsafe {
        let mut acc0 = _mm256_setzero_ps();
        let mut acc1 = _mm256_setzero_ps();
        let mut i = 0;
        while i + 16 <= n {
            acc0 = _mm256_fmadd_ps(_mm256_loadu_ps(pa.add(i)), _mm256_loadu_ps(pb.add(i)), acc0);
            acc1 = _mm256_fmadd_ps(_mm256_loadu_ps(pa.add(i + 8)), _mm256_loadu_ps(pb.add(i + 8)), acc1);
            i += 16;
        }
        if i + 8 <= n {
            acc0 = _mm256_fmadd_ps(_mm256_loadu_ps(pa.add(i)), _mm256_loadu_ps(pb.add(i)), acc0);
            i += 8;
        }
        let v = _mm256_add_ps(acc0, acc1);
        let q = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
        let q = _mm_add_ps(q, _mm_movehl_ps(q, q));
        let q = _mm_add_ss(q, _mm_shuffle_ps(q, q, 1));
        let mut s = _mm_cvtss_f32(q);
        while i < n {
            s += a[i] * b[i];
            i += 1;
        }
        s
    }
}

/// Maximum in 16 independent lanes (NaN-free inputs; −∞ for an empty slice).
#[inline(always)]
pub fn lane_max(v: &[f32]) -> f32 {
    let mut acc = [f32::NEG_INFINITY; 16];
    let chunks = v.chunks_exact(16);
    let tail = chunks.remainder().iter().copied().fold(f32::NEG_INFINITY, f32::max);
    for c in chunks {
        for i in 0..16 {
            acc[i] = if c[i] > acc[i] { c[i] } else { acc[i] };
        }
    }
    acc.iter().copied().fold(tail, f32::max)
}

/// e^x without libm: a degree-6 polynomial on the reduced argument and the exponent put
/// in by bit manipulation. Branch-free, so loops over it vectorise; relative error below
/// 1e-6 on [−87, 88] (a test checks), inputs outside are clamped (e^−87 ≈ 1.6e−38).
#[inline(always)]
pub fn fast_exp(x: f32) -> f32 {
    const MAGIC: f32 = 12_582_912.0; // 1.5·2^23: adding it rounds to an integer
    let x = x.clamp(-87.0, 88.0);
    let t = x * std::f32::consts::LOG2_E + MAGIC;
    let n = t - MAGIC;
    let r = x - n * 0.693_145_75 - n * 1.428_606_8e-6;
    let p = 1.0 + r * (1.0 + r * (0.5 + r * (0.166_666_67 + r * (0.041_666_668 + r * (0.008_333_334 + r * 0.001_388_889)))));
    let bits = ((t.to_bits() as i32 - MAGIC.to_bits() as i32 + 127) << 23) as u32;
    p * f32::from_bits(bits)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fast_exp_is_accurate() {
        let mut worst = 0f32;
        for i in 0..200_000 {
            let x = -80.0 + 160.0 * i as f32 / 200_000.0;
            let (a, b) = (fast_exp(x), x.exp());
            worst = worst.max(((a - b) / b).abs());
        }
        assert!(worst < 1e-6, "worst relative error {worst}");
    }
}
