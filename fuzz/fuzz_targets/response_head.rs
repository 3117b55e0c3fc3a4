#![no_main]
//! cargo-fuzz target `response_head`; the logic is `turnout_fuzz::response_head`.

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| turnout_fuzz::response_head(data));
