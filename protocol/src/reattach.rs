//! Reattach ("the jump") building blocks shared by client and gateway: message MACs, the
//! asymmetric proof of possession, path-validation state and the switch budget.
//!
//! A reattach request carries two authenticators (docs/PROTOCOL.md, "Reattach"):
//!
//! - a **MAC** under the epoch's client-to-gateway control key — cheap, checked first, proves
//!   the sender holds the session keys;
//! - a **proof** keyed by `DH(client identity key, gateway identity key)` and bound to the
//!   handshake transcript — proves the sender also holds the client's long-term private key,
//!   so a leaked session key alone cannot move a session. It costs the gateway one X25519, so
//!   it is checked only after the MAC, freshness and replay checks passed.

use std::collections::VecDeque;

use core::time::Duration;

use crate::crypto::{ct_eq, kdf, mac16, SecretKey};
use crate::handshake::StaticKeypair;
use crate::path::Path;
use crate::time::Instant;
use crate::wire::{MAC_LEN, TOKEN_LEN};

/// MAC of a control message under a control key.
#[must_use]
pub fn control_mac(ctrl_key: &[u8; 32], covered: &[u8]) -> [u8; MAC_LEN] {
    mac16(ctrl_key, &[b"jumping ctrl", covered])
}

/// Verify a control-message MAC in constant time.
#[must_use]
pub fn verify_control_mac(ctrl_key: &[u8; 32], covered: &[u8], mac: &[u8; MAC_LEN]) -> bool {
    ct_eq(&control_mac(ctrl_key, covered), mac)
}

/// The proof of possession over `covered`, computed by whichever side holds one of the two
/// identity secrets: `ours` is our key pair, `theirs` the other side's public key.
#[must_use]
pub fn proof(
    ours: &StaticKeypair,
    theirs: &[u8; 32],
    transcript: &[u8; 32],
    covered: &[u8],
) -> [u8; MAC_LEN] {
    proof_with(&proof_key(ours, theirs, transcript), covered)
}

/// The key of a session's proofs: `DH(identity keys)` bound to the handshake transcript. It
/// never changes for a session, so each side derives it once (one X25519) and keeps it with the
/// session, in memory only: never persisted, never given to the data plane. Whoever can read it
/// there can read the identity key it comes from.
#[must_use]
pub fn proof_key(ours: &StaticKeypair, theirs: &[u8; 32], transcript: &[u8; 32]) -> SecretKey {
    proof_key_from(&identity_dh(ours, theirs), transcript)
}

/// `DH(identity keys)`: the same for every session of a pair of identities, so the gateway
/// keeps it per client identity (in memory only) and a session's [`proof_key`] then costs one
/// BLAKE2s instead of an X25519.
#[must_use]
pub fn identity_dh(ours: &StaticKeypair, theirs: &[u8; 32]) -> SecretKey {
    SecretKey::from_bytes(*ours.diffie_hellman(theirs))
}

/// A session's [`proof_key`] from its identities' [`identity_dh`].
#[must_use]
pub fn proof_key_from(identity_dh: &SecretKey, transcript: &[u8; 32]) -> SecretKey {
    kdf(identity_dh.expose(), b"jumping reattach proof", transcript)
}

/// The proof over `covered` under a session's [`proof_key`].
#[must_use]
pub fn proof_with(key: &SecretKey, covered: &[u8]) -> [u8; MAC_LEN] {
    mac16(key.expose(), &[covered])
}

/// A path under validation: the gateway sent `token` to `path` and waits for it to come back.
#[derive(Debug, Clone)]
pub struct PendingValidation {
    /// The candidate path.
    pub path: Path,
    /// Random token sent in the challenge.
    pub token: [u8; TOKEN_LEN],
    /// The token of the challenge sent before (an unsolicited challenge is resent with a fresh
    /// token, and an answer to the one before may still be on its way); zero if none.
    pub previous_token: [u8; TOKEN_LEN],
    /// The request it answers (0 for an unsolicited challenge after a NAT rebind).
    pub request_counter: u64,
    /// The key epoch (wire form) the client used; replies are MACed under it.
    pub epoch: u16,
    /// The session version when validation started; the bind requires it unchanged.
    pub version: u64,
    /// Give up after this.
    pub deadline: Instant,
    /// Bytes received from the candidate path (anti-amplification budget).
    pub bytes_in: usize,
    /// Bytes sent to the candidate path.
    pub bytes_out: usize,
    /// When the last challenge was sent.
    pub last_sent: Instant,
    /// When validation started: the request arrived, or the new path was seen (for
    /// `reattach_ms`).
    pub started: Instant,
}

/// The gateway sends an unvalidated address at most this many times the bytes it received from
/// it (SPEC.md section 4; RFC 9000 section 8 uses the same factor).
pub const AMPLIFICATION_FACTOR: usize = 3;

impl PendingValidation {
    /// Started by a client's request (counter ≠ 0), not by data from a new address after a
    /// NAT rebind: completed by a ReattachResponse returning its token, and resent only when
    /// the client retries its request.
    #[must_use]
    pub fn is_solicited(&self) -> bool {
        self.request_counter != 0
    }

    /// Does `echo` return one of the last two tokens sent? (Both compared in constant time.)
    #[must_use]
    pub fn echoed(&self, echo: &[u8; TOKEN_LEN]) -> bool {
        let zero = [0; TOKEN_LEN];
        (!ct_eq(echo, &zero)) & (ct_eq(echo, &self.token) | ct_eq(echo, &self.previous_token))
    }

    /// May `len` more bytes be sent to the candidate path?
    #[must_use]
    pub fn may_send(&self, len: usize) -> bool {
        self.bytes_out + len <= AMPLIFICATION_FACTOR * self.bytes_in
    }
}

/// The switch budget: at most `max` switches in any sliding 60 s window, and at least
/// `cooldown` between two switches.
#[derive(Debug, Clone, Default)]
pub struct SwitchBudget {
    recent: VecDeque<Instant>,
    total: u64,
}

/// The sliding window of the switch budget.
pub const SWITCH_WINDOW: Duration = Duration::from_secs(60);

impl SwitchBudget {
    fn trim(&mut self, now: Instant) {
        while self
            .recent
            .front()
            .is_some_and(|&t| now - t >= SWITCH_WINDOW)
        {
            self.recent.pop_front();
        }
    }

    /// Switches in the last 60 s.
    pub fn in_window(&mut self, now: Instant) -> usize {
        self.trim(now);
        self.recent.len()
    }

    /// Would one more switch at `now` exceed `max`?
    pub fn exhausted(&mut self, now: Instant, max: u32) -> bool {
        self.in_window(now) >= max as usize
    }

    /// Is `now` inside the cooldown after the last switch?
    #[must_use]
    pub fn cooling(&self, now: Instant, cooldown: Duration) -> bool {
        self.recent.back().is_some_and(|&t| now - t < cooldown)
    }

    /// Record a switch.
    pub fn record(&mut self, now: Instant) {
        self.trim(now);
        self.recent.push_back(now);
        self.total += 1;
    }

    /// Switches over the session's life.
    #[must_use]
    pub fn total(&self) -> u64 {
        self.total
    }

    /// The switches inside the window, oldest first (persistence).
    #[must_use]
    pub fn recent(&self) -> &VecDeque<Instant> {
        &self.recent
    }

    /// A budget restored from [`SwitchBudget::recent`] and [`SwitchBudget::total`].
    #[must_use]
    pub fn restore(recent: VecDeque<Instant>, total: u64) -> Self {
        SwitchBudget { recent, total }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand_chacha::rand_core::SeedableRng;
    use rand_chacha::ChaCha20Rng;

    #[test]
    fn proof_is_symmetric_between_the_two_identities() {
        let mut rng = ChaCha20Rng::seed_from_u64(3);
        let c = StaticKeypair::generate(&mut rng);
        let g = StaticKeypair::generate(&mut rng);
        let other = StaticKeypair::generate(&mut rng);
        let t = [4u8; 32];
        let p = proof(&c, &g.public(), &t, b"req");
        assert_eq!(p, proof(&g, &c.public(), &t, b"req"));
        assert_ne!(p, proof(&other, &g.public(), &t, b"req"));
        assert_ne!(p, proof(&c, &g.public(), &[5; 32], b"req"));
        let kept = proof_key(&g, &c.public(), &t);
        assert_eq!(proof_with(&kept, b"req"), p, "the kept key proves the same");
        assert_ne!(proof_with(&kept, b"other"), p);
    }

    #[test]
    fn budget_slides() {
        let mut b = SwitchBudget::default();
        let s = |x| Instant::from_millis(x);
        for i in 0..3 {
            b.record(s(i * 1000));
        }
        assert!(b.exhausted(s(3000), 3));
        assert!(!b.exhausted(s(60_000), 3));
        assert!(!b.cooling(s(60_500), Duration::from_secs(1)));
        b.record(s(61_000));
        assert!(b.cooling(s(61_500), Duration::from_secs(1)));
        assert_eq!(b.total(), 4);
    }
}
