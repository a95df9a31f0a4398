//! cargo fuzz target `configmap`: see `sluice_fuzz::configmap` for the properties checked.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| sluice_fuzz::configmap(data));
