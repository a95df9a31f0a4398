//! cargo fuzz target `manifest`: see `sluice_fuzz::manifest` for the properties checked.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| sluice_fuzz::manifest(data));
