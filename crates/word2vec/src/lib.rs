//! ferrolm-word2vec: see ARCHITECTURE.md.
