//! ferrolm-ngram: see ARCHITECTURE.md.
