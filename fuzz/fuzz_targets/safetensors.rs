#![no_main]
// Fuzzes the safetensors reader (seeds: fuzz/seeds/safetensors).

mod common;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    common::open_and_read("fuzz.safetensors", data);
});
