//! The wire parser (`jumping_protocol::wire::parse` and every accessor of the view) on
//! arbitrary bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    jumping_protocol::fuzzing::parse(data);
});
