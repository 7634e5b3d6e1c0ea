//! Model architectures on candle. One Transformer core (`transformer`), assembled from
//! small pieces that each read on one screen: `attention` (mask kinds, optional
//! cross-attention, KV cache), `mlp`, `norm`, `block`. Fused CPU kernels with their
//! backward passes live in `ops`.

pub mod attention;
pub mod block;
pub mod config;
pub mod init;
pub mod linear;
pub mod mlp;
pub mod norm;
pub mod ops;
pub mod transformer;

pub use attention::{AttnMask, KvCache};
pub use config::{BlockStyle, TransformerConfig};
pub use transformer::Transformer;
