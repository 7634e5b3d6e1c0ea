//! Inference: token sampling, autoregressive generation with a KV cache for the causal
//! and prefix decoders and the encoder-decoder, mask filling for the masked LM, and code
//! completion at a cursor (`fim`: fill-in-the-middle prompts and editor stop rules).

pub mod arch;
pub mod fim;
pub mod generate;
pub mod sampling;

pub use arch::{fill_mask, generate_prefix, generate_seq2seq};
pub use generate::{generate, generate_any, generate_windowed, GenerateConfig};
pub use sampling::{Sampler, SamplingConfig};
