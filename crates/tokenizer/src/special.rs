//! Names of the special tokens every ferrolm tokenizer registers.
//!
//! They are registered as Hugging Face "added special tokens": the encoder matches them
//! inside text before pre-tokenization (so `"<|endoftext|>"` in a string becomes one id),
//! and they stand for zero bytes of text when computing bits per byte.

/// Document boundary: the shard writer appends it after every document.
pub const EOT: &str = "<|endoftext|>";
/// Padding for batched inference/fine-tuning; never carries loss.
pub const PAD: &str = "<|pad|>";
/// Chat roles (see [`crate::chat`]).
pub const SYSTEM: &str = "<|system|>";
pub const USER: &str = "<|user|>";
pub const ASSISTANT: &str = "<|assistant|>";
/// Ends one chat turn.
pub const END: &str = "<|end|>";
/// Masked-LM corruption token.
pub const MASK: &str = "<|mask|>";
/// Unknown character, used only by character-level tokenizers (byte-level BPE never needs it).
pub const UNK: &str = "<|unk|>";
/// Fill-in-the-middle sentinels (Bavarian et al. 2022): a FIM training example is
/// `PREFIX prefix SUFFIX suffix MIDDLE middle` (PSM) or `PREFIX SUFFIX suffix MIDDLE prefix
/// middle` (SPM), and a completion prompt ends with `MIDDLE`. Special, so a cursor's code
/// that happens to contain their text can never produce them by accident of merging, and
/// each is always one id.
pub const FIM_PREFIX: &str = "<|fim_prefix|>";
pub const FIM_SUFFIX: &str = "<|fim_suffix|>";
pub const FIM_MIDDLE: &str = "<|fim_middle|>";
/// Number of T5-style span-corruption sentinels in [`defaults`].
pub const NUM_SENTINELS: usize = 16;

/// The i-th T5-style span-corruption sentinel, `<|extra_{i}|>`.
pub fn sentinel(i: usize) -> String {
    format!("<|extra_{i}|>")
}

/// EOT, PAD, the chat roles, END, MASK, 16 sentinels and the three fill-in-the-middle
/// tokens, in this order (EOT gets the lowest id; the FIM tokens came last, so the ids of
/// the others are those of tokenizers trained before them).
pub fn defaults() -> Vec<String> {
    let mut v: Vec<String> =
        [EOT, PAD, SYSTEM, USER, ASSISTANT, END, MASK].iter().map(|s| s.to_string()).collect();
    v.extend((0..NUM_SENTINELS).map(sentinel));
    v.extend([FIM_PREFIX, FIM_SUFFIX, FIM_MIDDLE].iter().map(|s| s.to_string()));
    v
}
