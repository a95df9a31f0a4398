//! cargo fuzz target `upstream_response`: see `sluice_fuzz::upstream_response`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| sluice_fuzz::upstream_response(data));
