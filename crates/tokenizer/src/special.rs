//! Special tokens shared by every stage: document boundaries, padding, chat roles,
//! the masked-LM mask and T5-style sentinels.

pub const EOT: &str = "<|endoftext|>";
pub const PAD: &str = "<|pad|>";
pub const SYSTEM: &str = "<|system|>";
pub const USER: &str = "<|user|>";
pub const ASSISTANT: &str = "<|assistant|>";
pub const END: &str = "<|end|>";
pub const MASK: &str = "<|mask|>";
pub const UNK: &str = "<|unk|>";
pub const N_SENTINELS: usize = 16;

/// `<|extra_i|>`: span-corruption sentinels.
pub fn sentinel(i: usize) -> String {
    format!("<|extra_{i}|>")
}

/// The default special tokens, in id order (EOT is always id 0).
pub fn defaults() -> Vec<String> {
    let mut v: Vec<String> = [EOT, PAD, SYSTEM, USER, ASSISTANT, END, MASK].iter().map(|s| s.to_string()).collect();
    v.extend((0..N_SENTINELS).map(sentinel));
    v
}
