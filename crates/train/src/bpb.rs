//! The one bits-per-byte accounting: every held-out figure in bits per byte (the trainer's
//! evaluation, the architecture tasks', the n-gram and unigram baselines of the
//! experiments) adds its per-target losses here, so they share one definition.

/// Accumulates per-target negative log-likelihoods (nats). The loss is the mean over every
/// target; bits per byte is the cross-entropy in bits of the targets that stand for text,
/// divided by the UTF-8 bytes they stand for. Special tokens (end-of-text, …: zero bytes)
/// count in the loss but not in bits per byte.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct BitsPerByte {
    /// Sum of the negative log-likelihoods of every target, in nats.
    pub nll: f64,
    /// Sum over the targets that stand for text (bytes > 0), in nats.
    pub nll_text: f64,
    /// Targets added.
    pub tokens: usize,
    /// UTF-8 bytes of the text targets.
    pub bytes: u64,
}

impl BitsPerByte {
    /// One target whose negative log-likelihood is `nll` nats and which stands for
    /// `token_bytes` bytes of text.
    pub fn add(&mut self, nll: f64, token_bytes: u64) {
        self.nll += nll;
        if token_bytes > 0 {
            self.nll_text += nll;
            self.bytes += token_bytes;
        }
        self.tokens += 1;
    }

    /// [`add`](Self::add) for target id `target`, its byte count looked up in `token_bytes`
    /// (ids past its end stand for no text).
    pub fn add_target(&mut self, nll: f64, target: u32, token_bytes: &[u32]) {
        self.add(nll, token_bytes.get(target as usize).copied().unwrap_or(0) as u64);
    }

    /// Mean negative log-likelihood per target (nats); NaN before any target.
    pub fn loss(&self) -> f64 {
        self.nll / self.tokens as f64
    }

    /// Bits per byte of text; NaN when no target stood for text.
    pub fn bits_per_byte(&self) -> f64 {
        if self.bytes > 0 {
            self.nll_text / std::f64::consts::LN_2 / self.bytes as f64
        } else {
            f64::NAN
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn special_tokens_count_in_the_loss_not_in_the_bytes() {
        let mut b = BitsPerByte::default();
        assert!(b.bits_per_byte().is_nan());
        b.add_target(std::f64::consts::LN_2, 0, &[2, 0]);
        b.add_target(3.0, 1, &[2, 0]);
        b.add_target(1.0, 9, &[2, 0]);
        assert_eq!((b.tokens, b.bytes), (3, 2));
        assert!((b.loss() - (std::f64::consts::LN_2 + 4.0) / 3.0).abs() < 1e-12);
        assert!((b.bits_per_byte() - 0.5).abs() < 1e-12);
    }
}
