#![no_main]
//! cargo-fuzz target `compare`; the logic is `turnout_fuzz::compare_bodies`.

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| turnout_fuzz::compare_bodies(data));
