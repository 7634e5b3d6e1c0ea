//! ferrolm-model: see ARCHITECTURE.md.
