#![no_main]
// The parser entry point shared with the CI replay test: crates/fuzz-harness.
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = ferrolm_fuzz_harness::run("word2vec", data).expect("target word2vec is built (safetensors and records need --features candle)");
});
