//! ferrolm-infer: see ARCHITECTURE.md.
