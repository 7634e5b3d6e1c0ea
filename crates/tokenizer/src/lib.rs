//! ferrolm-tokenizer: see ARCHITECTURE.md.
