//! cargo fuzz target `headers`: see `sluice_fuzz::headers` for the properties checked.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| sluice_fuzz::headers(data));
