#![no_main]
// The parser entry point shared with the CI replay test: crates/fuzz-harness.
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = ferrolm_fuzz_harness::run("ngram_binary", data).expect("target ngram_binary is built (safetensors and records need --features candle)");
});
