//! cargo fuzz target `router`: see `sluice_fuzz::router` for the properties checked.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| sluice_fuzz::router(data));
