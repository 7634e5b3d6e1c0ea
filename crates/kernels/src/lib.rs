//! ferrolm's CPU kernels: everything under the models that touches raw memory, and the
//! only crate of the workspace with `unsafe` code. Each `unsafe` block states why it is
//! sound (`// SAFETY:`), with `unsafe_op_in_unsafe_fn` and
//! `clippy::undocumented_unsafe_blocks` denied.
//!
//! Plain Rust, always built (word2vec uses these without candle):
//! - `simd`: [`vectorized`] (run a closure compiled for AVX-512 or AVX2+FMA when the CPU
//!   has it) and the loops that vectorise under it ([`lane_sum`], [`lane_dot`],
//!   [`lane_max`], [`fast_exp`], [`dot_fma`]);
//! - `ptr`: [`SendPtr`], the one pointer type that crosses threads, and [`Strided`], the
//!   one strided-matrix type the products take;
//! - [`hogwild`]: a padded weight matrix that threads update without locks;
//! - [`alloc`]: the mimalloc option the `ferrolm` binary sets;
//! - [`pool`]: decoding loops run on a rayon worker, so the kernels' parallel calls start
//!   where they are made;
//! - [`mmap`] (feature `mmap`): read-only maps of files that are replaced, never rewritten;
//! - [`fs`] (feature `fs`): the atomic swap of two paths under `replace_dir`.
//!
//! With the default `candle` feature: the fused candle ops with their backward passes, and
//! the matrix products under them and under candle's matmul. Why fused: candle-nn's fused
//! softmax and norm kernels are inference-only (`apply_op*_no_bwd`), and the composed
//! versions allocate a fresh tensor for every elementwise step. These ops do one pass over
//! each row forward and one backward, and register their gradient with candle's autograd
//! through the `bwd` hooks, so training uses them transparently. Each is tested against
//! the composed candle reference, forward and backward: softmax and scaled causal softmax,
//! LayerNorm/RMSNorm, GELU, SwiGLU's gate ([`swiglu`]), RoPE on a fused q/k/v projection
//! ([`rope_qkv`]), cross-entropy with an ignore index, bias add, seeded dropout, the linear
//! layer's product ([`linear`]), a frozen linear layer with LoRA adapters
//! ([`lora_linear`]), and training self-attention ([`fused_self_attention`]). Inference only: [`decode_attention`], one query per row
//! over each row's own KV cache, read in place (batched decoding in `ferrolm serve`). The products: the one precision dispatch ([`matmul`]:
//! [`MatmulPrecision`], [`set_matmul_precision`]), exact f32 ([`sgemm`]) and bf16 on AMX
//! tiles ([`amx`]); quantized weights for decoding: GGUF's Q8_0 ([`q8`]: inputs rounded
//! to 8 bits, integer dot products on AVX-512 VNNI, AVX-VNNI or AVX2, chosen at run time;
//! prompts as 8-bit tiles on AVX-512 VNNI, giving decoding's floats bit for bit)
//! and its Q4_K / Q6_K super-blocks ([`q4k`], a few-row x·Wᵀ on AVX2+FMA),
//! and half-precision weights ([`f16`]: AVX-512 or AVX2+F16C, batch-invariant).

pub mod alloc;
#[cfg(feature = "fs")]
pub mod fs;
pub mod held;
pub mod hogwild;
#[cfg(feature = "mmap")]
pub mod mmap;
#[cfg(feature = "candle")]
pub mod pool;
mod ptr;
#[cfg(feature = "candle")]
pub mod f16;
#[cfg(feature = "candle")]
pub mod q4k;
#[cfg(feature = "candle")]
pub mod q8;
mod simd;

pub use ptr::{SendPtr, Strided};
pub use simd::{dot_fma, fast_exp, fma_available, lane_dot, lane_max, lane_sum, vectorized};

#[cfg(feature = "candle")]
pub mod amx;
#[cfg(feature = "candle")]
mod bias;
#[cfg(feature = "candle")]
mod cpu;
#[cfg(feature = "candle")]
mod cross_entropy;
#[cfg(feature = "candle")]
mod decode_attention;
#[cfg(feature = "candle")]
mod dropout;
#[cfg(feature = "candle")]
mod fused_attention;
#[cfg(feature = "candle")]
mod gelu;
#[cfg(feature = "candle")]
mod linear;
#[cfg(feature = "candle")]
mod lora;
#[cfg(feature = "candle")]
pub mod matmul;
#[cfg(feature = "candle")]
pub mod prompt_linear;
#[cfg(feature = "candle")]
mod norm;
#[cfg(feature = "candle")]
mod rope;
#[cfg(feature = "candle")]
pub mod sgemm;
#[cfg(feature = "candle")]
mod softmax;
#[cfg(feature = "candle")]
mod swiglu;
#[cfg(all(test, feature = "candle"))]
mod testutil;

#[cfg(feature = "candle")]
pub use {
    bias::add_bias,
    cpu::contiguous_f32,
    cross_entropy::{cross_entropy, IGNORE_INDEX},
    decode_attention::{decode_attention, DecodeHeads, RowKv},
    dropout::{dropout, dropout_hashed, keep_bits},
    fused_attention::fused_self_attention,
    gelu::gelu,
    linear::linear,
    lora::{lora_linear, lora_linear_on, FrozenLinear, LoraBlocks},
    matmul::{matmul_precision, set_matmul_precision, MatmulPrecision},
    norm::{layer_norm, rms_norm},
    rope::{rope_qkv, RopeTables},
    softmax::{scaled_softmax, softmax_last_dim, softmax_row},
    swiglu::swiglu,
};
