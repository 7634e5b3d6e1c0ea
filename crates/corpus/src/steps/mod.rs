//! Pipeline steps, one small type per job. See [`crate::step::Step`] for the shared signature.

pub mod c4;
pub mod classifier;
pub mod code;
pub mod decontam;
pub mod dedup;
pub mod fineweb;
pub mod gopher;
pub mod language;
pub mod minhash;
pub mod mix;
pub mod normalize;
pub mod perplexity;
pub mod privacy;

pub use c4::{C4Config, C4Filter};
pub use classifier::{ClassifierConfig, ClassifierStepConfig, QualityClassifierFilter, QualityModel, TrainReport};
pub use code::{CodeConfig, CodeFilter};
pub use decontam::{DecontamConfig, Decontaminator};
pub use dedup::{ExactDedup, LineDedup, LineDedupConfig};
pub use fineweb::{FineWebConfig, FineWebFilter};
pub use gopher::{GopherQuality, GopherQualityConfig, GopherRepetition, GopherRepetitionConfig};
pub use language::{LanguageConfig, LanguageFilter};
pub use minhash::{MinHashConfig, MinHashDedup, RemoveIds};
pub use mix::{MixConfig, Mixer};
pub use normalize::{NormalizeConfig, Normalizer};
pub use perplexity::{PerplexityConfig, PerplexityFilter};
pub use privacy::{PiiKind, PrivacyConfig, PrivacyScrubber};
