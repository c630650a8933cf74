//! Shared helpers for the Jumping criterion benchmarks.
//!
//! Every bench binary under `benches/` (one per area: `aead`, and later `replay`, `handshake`,
//! `reattach`) draws its inputs from here so that numbers from different binaries describe the
//! same packets: the same payload sizes, the same 20-byte header used as AAD, the same 32-byte
//! key and the project's data-packet nonce format (4 zero bytes followed by a 64-bit big-endian
//! packet counter).
//!
//! The helpers are deterministic: a benchmark run never depends on a random generator.
#![forbid(unsafe_code)]

pub mod pilot;
pub mod report;
pub mod scenario;
use std::time::Duration;

/// Payload sizes, in bytes, measured by the data-packet benches: a small control-sized packet,
/// a full packet on a 1500-byte MTU path after encapsulation overhead, and a jumbo/GSO-sized
/// buffer.
pub const PAYLOAD_SIZES: [usize; 3] = [64, 1400, 8192];

/// Length of the data-packet header that is authenticated as AAD.
pub const HEADER_LEN: usize = 20;

/// Length of an AEAD nonce (96 bits).
pub const NONCE_LEN: usize = 12;

/// Length of an AEAD tag (128 bits) for both AES-256-GCM and ChaCha20-Poly1305.
pub const TAG_LEN: usize = 16;

/// Length of an AEAD key (256 bits) for both AES-256-GCM and ChaCha20-Poly1305.
pub const KEY_LEN: usize = 32;

/// Measurement time per benchmark: modest, so a whole bench binary runs in a few minutes.
pub const MEASUREMENT_TIME: Duration = Duration::from_secs(2);

/// Warm-up time per benchmark.
pub const WARM_UP_TIME: Duration = Duration::from_millis(500);

/// Criterion sample count per benchmark.
pub const SAMPLE_SIZE: usize = 30;

/// A fixed benchmark key (never used outside benchmarks).
#[must_use]
pub fn key() -> [u8; KEY_LEN] {
    let mut key = [0u8; KEY_LEN];
    for (i, b) in key.iter_mut().enumerate() {
        *b = u8::try_from(i)
            .unwrap_or(u8::MAX)
            .wrapping_mul(7)
            .wrapping_add(1);
    }
    key
}

/// A fixed 20-byte data-packet header, authenticated as AAD.
#[must_use]
pub fn header() -> [u8; HEADER_LEN] {
    let mut header = [0u8; HEADER_LEN];
    for (i, b) in header.iter_mut().enumerate() {
        *b = u8::try_from(i).unwrap_or(u8::MAX) ^ 0xA5;
    }
    header
}

/// A deterministic, non-constant payload of `len` bytes.
#[must_use]
pub fn payload(len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| {
            // Truncation is intended: a repeating byte pattern.
            let low = (i % 251) as u8;
            low.wrapping_mul(31).wrapping_add(17)
        })
        .collect()
}

/// The project's data-packet nonce: 4 zero bytes || 64-bit big-endian packet counter.
#[must_use]
pub fn nonce(counter: u64) -> [u8; NONCE_LEN] {
    let mut nonce = [0u8; NONCE_LEN];
    nonce[4..].copy_from_slice(&counter.to_be_bytes());
    nonce
}

/// A monotonically increasing packet counter that yields one fresh nonce per call, as a sender
/// does for each data packet.
#[derive(Debug, Default, Clone)]
pub struct NonceCounter {
    next: u64,
}

impl NonceCounter {
    /// A counter whose first nonce uses packet number `start`.
    #[must_use]
    pub fn starting_at(start: u64) -> Self {
        Self { next: start }
    }

    /// The nonce for the next packet; advances the counter (wrapping, which a benchmark never
    /// reaches).
    pub fn next_nonce(&mut self) -> [u8; NONCE_LEN] {
        let n = nonce(self.next);
        self.next = self.next.wrapping_add(1);
        n
    }
}

/// The standard output of a command, trimmed (empty if it cannot run).
#[must_use]
pub fn sh(cmd: &str, args: &[&str]) -> String {
    std::process::Command::new(cmd)
        .args(args)
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

/// The directory of this benchmark run's reports: `target/bench/<run-id>/`, where the run id
/// is `JUMPING_BENCH_RUN_ID` (set by `cargo xtask bench` so every report of one run lands
/// together) or `<UTC date and time>-<git revision>`.
#[must_use]
pub fn run_dir() -> std::path::PathBuf {
    let root = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let id = std::env::var("JUMPING_BENCH_RUN_ID").unwrap_or_else(|_| {
        let rev = sh("git", &["rev-parse", "--short", "HEAD"]);
        let date = sh("date", &["-u", "+%Y-%m-%dT%H%M%SZ"]);
        format!("{date}-{}", if rev.is_empty() { "norev" } else { &rev })
    });
    root.join("target/bench").join(id)
}

/// A deterministic pseudo-random SessionId sequence (SplitMix64 from `seed`), never 0: the
/// spread the gateway's keyed permutation gives real SessionIds.
#[must_use]
pub fn session_ids(n: usize, seed: u64) -> Vec<jumping_protocol::SessionId> {
    let mut x = seed;
    (0..n)
        .map(|_| {
            x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = x;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            jumping_protocol::SessionId((z ^ (z >> 31)) | 1)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nonce_is_zero_prefix_then_big_endian_counter() {
        assert_eq!(
            nonce(0x0102_0304_0506_0708),
            [0, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8]
        );
    }

    #[test]
    fn counter_increments() {
        let mut c = NonceCounter::starting_at(u64::MAX - 1);
        assert_eq!(c.next_nonce()[4..], (u64::MAX - 1).to_be_bytes());
        assert_eq!(c.next_nonce()[4..], u64::MAX.to_be_bytes());
        assert_eq!(c.next_nonce()[4..], 0u64.to_be_bytes());
    }

    #[test]
    fn payload_has_requested_length_and_is_deterministic() {
        for len in PAYLOAD_SIZES {
            assert_eq!(payload(len).len(), len);
            assert_eq!(payload(len), payload(len));
        }
        assert_ne!(payload(64)[0], payload(64)[1]);
    }
}
