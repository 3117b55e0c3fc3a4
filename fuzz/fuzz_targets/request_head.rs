#![no_main]
//! cargo-fuzz target `request_head`; the logic is `turnout_fuzz::request_head`.

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| turnout_fuzz::request_head(data));
