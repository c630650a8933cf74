//! The gateway (handshake responder, data, reattach, timers) on a sequence of datagrams split
//! on `\xffJMP`, alternating between two source addresses.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    jumping_protocol::fuzzing::gateway_datagrams(data);
});
