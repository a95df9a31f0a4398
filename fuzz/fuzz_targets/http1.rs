//! cargo fuzz target `http1`: see `sluice_fuzz::http1` for the properties checked.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| sluice_fuzz::http1(data));
