//! One file per subcommand.
pub mod bench;
pub mod data;
pub mod eval;
pub mod experiment;
pub mod experiment_architectures;
pub mod fill_mask;
pub mod generate;
pub mod ngram;
pub mod quickstart;
pub mod tokenizer;
pub mod train;
pub mod word2vec;
