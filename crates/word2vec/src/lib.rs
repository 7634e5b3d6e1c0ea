//! ferrolm-word2vec: skip-gram and CBOW with negative sampling, trained Hogwild-style
//! (Mikolov et al. 2013, following the original C implementation's procedure):
//! vocabulary with min-count → frequent-word subsampling (the original formula) →
//! random window shrink → negative sampling from a unigram^0.75 table → linear
//! learning-rate decay over all epochs → word2vec text/binary output (gensim-readable).

#![forbid(unsafe_code)]

pub mod io;
pub mod train;

pub use io::{analogy, read_vectors, write_vectors, AnalogyReport, Vectors};
pub use train::{train, Options, Trained};
