//! Inference: token sampling and autoregressive generation with a KV cache.

pub mod generate;
pub mod sampling;

pub use generate::{generate, GenerateConfig};
pub use sampling::{Sampler, SamplingConfig};
