//! Entry points shared by the cargo-fuzz targets (`fuzz/`) and the corpus-replay test
//! (`tests/fuzz_corpus.rs`), so CI replays the committed corpora on stable Rust.
//!
//! Each function takes arbitrary bytes and must not panic.

use rand_chacha::rand_core::SeedableRng;
use rand_chacha::ChaCha20Rng;

use crate::client::{Client, ClientConfig, LocalPath};
use crate::gateway::{Gateway, GatewayConfig};
use crate::handshake::StaticKeypair;
use crate::path::Path;
use crate::policy::Policy;
use crate::time::Instant;
use crate::wire;

/// Fixed identities for fuzzing: (gateway, client).
#[must_use]
pub fn identities() -> (StaticKeypair, StaticKeypair) {
    (
        StaticKeypair::from_secret_bytes([0x11; 32]),
        StaticKeypair::from_secret_bytes([0x22; 32]),
    )
}

/// The gateway every [`gateway_datagrams`] input runs against (seeded RNG, cookies required
/// above 4 handshakes/s, the fuzzing client allowed). The corpus generator builds its seeds
/// against the same object.
#[must_use]
pub fn gateway() -> Gateway<ChaCha20Rng> {
    let (gw, client) = identities();
    let config = GatewayConfig {
        cookie_threshold: 4,
        ..GatewayConfig::default()
    };
    let mut g = Gateway::new(
        config,
        Policy::default(),
        gw,
        ChaCha20Rng::seed_from_u64(1),
        Instant::ZERO,
    )
    .expect("default policy and a seeded ChaCha20 generator are valid");
    g.allow_client(client.public());
    g
}

/// The client every [`client_datagrams`] input runs against, after it sent its initiation on
/// local path 0 at time zero.
#[must_use]
pub fn client() -> Client<ChaCha20Rng> {
    let (gw, client) = identities();
    let mut c = Client::new(
        ClientConfig::new(client, gw.public()),
        ChaCha20Rng::seed_from_u64(2),
    );
    c.connect(Instant::ZERO, LocalPath(0), 1);
    c
}

/// The wire parser on arbitrary bytes.
pub fn parse(data: &[u8]) {
    if let Ok(m) = wire::parse(data) {
        // Touch every accessor of the view: none may panic after the checked constructor.
        let _ = format!("{m:?}");
        if let wire::Message::Transport(t) = m {
            let _ = (
                t.session_id(),
                t.counter(),
                t.epoch(),
                t.plaintext_len(),
                t.message_type(),
            );
        }
        if let wire::Message::ReattachRequest(r) = m {
            let _ = (
                r.client_time_ms(),
                r.proof(),
                r.challenge_echo(),
                r.reserved_ok(),
                r.mac(),
            );
        }
    }
}

/// The gateway (handshake responder, data, reattach) on a sequence of datagrams. The input is
/// split on the byte sequence `\xffJMP` into datagrams, each delivered from one of two addresses.
pub fn gateway_datagrams(data: &[u8]) {
    let mut g = gateway();
    let a = Path::udp("192.0.2.1:1000".parse().expect("literal address"));
    let b = Path::udp("192.0.2.2:2000".parse().expect("literal address"));
    for (i, chunk) in split(data).enumerate() {
        let mut buf = chunk.to_vec();
        let now = Instant::from_millis(i as u64 * 100);
        let _ = g.handle_datagram(now, if i % 2 == 0 { a } else { b }, &mut buf);
        while g.poll_transmit().is_some() {}
        while g.poll_event().is_some() {}
        g.handle_timeout(now);
    }
}

/// The client on a sequence of datagrams (after it sent its initiation).
pub fn client_datagrams(data: &[u8]) {
    let mut c = client();
    for (i, chunk) in split(data).enumerate() {
        let mut buf = chunk.to_vec();
        let now = Instant::from_millis(i as u64 * 100);
        let _ = c.handle_datagram(now, LocalPath((i % 2) as u32), &mut buf);
        while c.poll_transmit().is_some() {}
        while c.poll_event().is_some() {}
        c.handle_timeout(now);
    }
}

fn split(data: &[u8]) -> impl Iterator<Item = &[u8]> {
    const SEP: &[u8] = b"\xffJMP";
    let mut rest = data;
    core::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        match rest.windows(SEP.len()).position(|w| w == SEP) {
            Some(i) => {
                let (head, tail) = rest.split_at(i);
                rest = &tail[SEP.len()..];
                Some(head)
            }
            None => Some(core::mem::take(&mut rest)),
        }
    })
}
