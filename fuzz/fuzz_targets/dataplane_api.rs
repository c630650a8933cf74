//! The control ↔ data-plane interface decoder (`jumping_dataplane_api`) on arbitrary bytes:
//! never panics, and whatever decodes re-encodes to the same bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    jumping_dataplane_api::fuzz_round_trip(data);
});
