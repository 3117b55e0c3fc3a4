#![no_main]
//! cargo-fuzz target `goreplay`; the logic is `turnout_fuzz::goreplay`.

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| turnout_fuzz::goreplay(data));
