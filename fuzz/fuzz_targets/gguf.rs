#![no_main]
// Fuzzes the GGUF reader and dequantisation (seeds: fuzz/seeds/gguf).

mod common;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    common::open_and_read("fuzz.gguf", data);
});
