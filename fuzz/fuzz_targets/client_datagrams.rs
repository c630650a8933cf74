//! The client (after it sent its initiation) on a sequence of datagrams split on `\xffJMP`,
//! alternating between two local paths.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    jumping_protocol::fuzzing::client_datagrams(data);
});
