//! ferrolm-corpus: see ARCHITECTURE.md.
