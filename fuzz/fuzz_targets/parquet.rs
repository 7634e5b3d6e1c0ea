#![no_main]
// The parser entry point shared with the CI replay test: crates/fuzz-harness.
//
// init: libfuzzer-sys installs a panic hook that aborts even on a panic the code under test
// catches. ferrolm catches panics of the parquet crate (which asserts on some malformed
// pages) and turns them into errors, so the default hook is restored here; a panic that
// escapes still aborts (libfuzzer-sys wraps every input in catch_unwind + abort).
libfuzzer_sys::fuzz_target!(init: { let _ = std::panic::take_hook(); }, |data: &[u8]| {
    let _ = ferrolm_fuzz_harness::run("parquet", data).expect("target parquet is built (safetensors and records need --features candle)");
});
