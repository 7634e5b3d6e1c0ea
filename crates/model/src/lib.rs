//! Model architectures on candle: layers and model families only. One Transformer core
//! (`transformer`), assembled from small pieces that each read on one screen: `attention`
//! (mask kinds, optional cross-attention, KV cache), `mlp`, `norm`, `block`, `linear`,
//! `embed`. The fused CPU kernels they call (attention, linear, norms, softmax, GELU,
//! cross-entropy, matrix products) live in `ferrolm-kernels`, with all the unsafe code.
//! The older families of the history experiment live one per file: `nplm` (Bengio et al.
//! 2003), `rnn` (Elman RNN and LSTM).

#![forbid(unsafe_code)]

pub mod attention;
pub mod block;
pub mod config;
pub mod device;
pub mod embed;
pub mod encoder_decoder;
pub mod gguf;
pub mod masked_lm;
pub mod hf;
pub mod init;
pub mod linear;
pub mod lora;
pub mod mlp;
pub mod norm;
pub mod nplm;
pub mod quant;
pub mod rnn;
pub mod registry;
pub mod spec;
pub mod transformer;

pub use attention::{AttnMask, KvCache};
pub use config::{BlockStyle, ModelKind, RopeScaling, TransformerConfig};
pub use device::DeviceChoice;
pub use encoder_decoder::EncoderDecoder;
pub use masked_lm::MaskedLm;
pub use nplm::{Nplm, NplmConfig};
pub use quant::{QuantKind, QuantSummary, QuantWeights};
pub use rnn::{Cell, RecurrentConfig, RecurrentLm};
pub use registry::{init_weights, load_model, AnyModel, CausalLm, LoadedModel};
pub use spec::{Family, ModelSpec};
pub use transformer::Transformer;
