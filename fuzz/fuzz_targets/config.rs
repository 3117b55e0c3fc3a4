#![no_main]
//! cargo-fuzz target `config`; the logic is `turnout_fuzz::config`.

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| turnout_fuzz::config(data));
