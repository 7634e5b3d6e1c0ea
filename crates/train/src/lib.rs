//! ferrolm-train: see ARCHITECTURE.md.
