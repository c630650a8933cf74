//! Handshake DoS protection: mac1, mac2 and cookie replies, as WireGuard (whitepaper section
//! 5.4.4 and 5.4.7).
//!
//! - **mac1** proves the sender knows the responder's public key; checked before anything else,
//!   it lets the gateway drop scans and garbage for the cost of one BLAKE2s.
//! - Under load the gateway also requires **mac2**, keyed by a **cookie** that only a sender who
//!   receives at its source address can hold: `cookie = MAC(R, source address)` with a secret
//!   `R` that rotates every two minutes. A handshake without a valid mac2 gets a cookie reply
//!   instead of a Diffie–Hellman, so a spoofing flood costs the gateway only hashes.
//! - The cookie travels encrypted (XChaCha20-Poly1305 under a key derived from the responder's
//!   public key, with the message's mac1 as associated data), so only the real initiator of that
//!   message can use it.

use core::net::SocketAddr;
use core::time::Duration;

use chacha20poly1305::aead::{AeadInPlace, KeyInit};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use rand_core::{CryptoRng, RngCore};
use zeroize::Zeroizing;

use crate::crypto::{ct_eq, hash, mac16};
use crate::time::Instant;
use crate::wire::MAC_LEN;

const LABEL_MAC1: &[u8] = b"mac1----";
const LABEL_COOKIE: &[u8] = b"cookie--";
/// How long a cookie secret, and so a cookie, stays valid.
pub const COOKIE_SECRET_LIFETIME: Duration = Duration::from_secs(120);

/// The mac1 key for messages sent to the holder of `peer_public`.
#[must_use]
pub fn mac1_key(peer_public: &[u8; 32]) -> [u8; 32] {
    hash(&[LABEL_MAC1, peer_public])
}

fn cookie_key(peer_public: &[u8; 32]) -> Zeroizing<[u8; 32]> {
    Zeroizing::new(hash(&[LABEL_COOKIE, peer_public]))
}

/// mac1 over `covered` for a message to the holder of the key behind `mac1_key`.
#[must_use]
pub fn mac1(mac1_key: &[u8; 32], covered: &[u8]) -> [u8; MAC_LEN] {
    mac16(mac1_key, &[covered])
}

/// Does `mac` verify as mac1 over `covered`?
#[must_use]
pub fn verify_mac1(mac1_key: &[u8; 32], covered: &[u8], mac: &[u8; MAC_LEN]) -> bool {
    ct_eq(&mac1(mac1_key, covered), mac)
}

/// mac2 over `covered` under a cookie.
#[must_use]
pub fn mac2(cookie: &[u8; 16], covered: &[u8]) -> [u8; MAC_LEN] {
    let mut key = Zeroizing::new([0u8; 32]);
    key[..16].copy_from_slice(cookie);
    mac16(&key, &[b"mac2", covered])
}

fn addr_bytes(addr: &SocketAddr) -> ([u8; 18], usize) {
    let mut out = [0u8; 18];
    let n = match addr {
        SocketAddr::V4(a) => {
            out[..4].copy_from_slice(&a.ip().octets());
            out[4..6].copy_from_slice(&a.port().to_be_bytes());
            6
        }
        SocketAddr::V6(a) => {
            out[..16].copy_from_slice(&a.ip().octets());
            out[16..18].copy_from_slice(&a.port().to_be_bytes());
            18
        }
    };
    (out, n)
}

/// The gateway's side: the rotating secret, cookie minting and mac2 checking.
pub struct CookieChecker {
    secret: Zeroizing<[u8; 32]>,
    previous: Zeroizing<[u8; 32]>,
    rotated_at: Instant,
    seal_key: Zeroizing<[u8; 32]>,
}

impl core::fmt::Debug for CookieChecker {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("CookieChecker")
            .field("rotated_at", &self.rotated_at)
            .finish_non_exhaustive()
    }
}

impl CookieChecker {
    /// A checker for the gateway whose static public key is `gateway_public`.
    pub fn new<R: RngCore + CryptoRng>(
        rng: &mut R,
        now: Instant,
        gateway_public: &[u8; 32],
    ) -> Self {
        let mut secret = Zeroizing::new([0u8; 32]);
        rng.fill_bytes(&mut *secret);
        let mut previous = Zeroizing::new([0u8; 32]);
        rng.fill_bytes(&mut *previous);
        CookieChecker {
            secret,
            previous,
            rotated_at: now,
            seal_key: cookie_key(gateway_public),
        }
    }

    /// Replace the secret once it is [`COOKIE_SECRET_LIFETIME`] old (the old one stays usable
    /// for one more lifetime). Call before minting or checking cookies.
    pub fn rotate<R: RngCore + CryptoRng>(&mut self, rng: &mut R, now: Instant) {
        let age = now - self.rotated_at;
        if age >= COOKIE_SECRET_LIFETIME {
            if age >= 2 * COOKIE_SECRET_LIFETIME {
                // No rotation for a whole lifetime: the current secret is too old to become
                // the previous one.
                rng.fill_bytes(&mut *self.previous);
            } else {
                *self.previous = *self.secret;
            }
            rng.fill_bytes(&mut *self.secret);
            self.rotated_at = now;
        }
    }

    fn cookie_with(secret: &[u8; 32], from: &SocketAddr) -> [u8; 16] {
        let (a, n) = addr_bytes(from);
        mac16(secret, &[&a[..n]])
    }

    /// Does `mac2` prove that the sender holds a current cookie for `from`? A cookie is valid
    /// for at most two secret lifetimes (minted just before a rotation, used just before the
    /// next), even if [`CookieChecker::rotate`] has not been called.
    #[must_use]
    pub fn verify_mac2(
        &self,
        now: Instant,
        from: &SocketAddr,
        covered: &[u8],
        mac: &[u8; MAC_LEN],
    ) -> bool {
        if now - self.rotated_at >= COOKIE_SECRET_LIFETIME {
            return false;
        }
        [&self.secret, &self.previous]
            .iter()
            .any(|s| ct_eq(&mac2(&Self::cookie_with(s, from), covered), mac))
    }

    /// Mint a cookie for `from` and seal it for the initiator whose message carried `their_mac1`.
    /// Returns the nonce and the sealed cookie (cookie || tag).
    pub fn seal_cookie<R: RngCore + CryptoRng>(
        &mut self,
        rng: &mut R,
        now: Instant,
        from: &SocketAddr,
        their_mac1: &[u8; MAC_LEN],
    ) -> ([u8; 24], [u8; 32]) {
        self.rotate(rng, now);
        let cookie = Zeroizing::new(Self::cookie_with(&self.secret, from));
        let mut nonce = [0u8; 24];
        rng.fill_bytes(&mut nonce);
        let cipher = XChaCha20Poly1305::new((&*self.seal_key).into());
        let mut buf = [0u8; 16];
        buf.copy_from_slice(&*cookie);
        let tag = cipher
            .encrypt_in_place_detached(XNonce::from_slice(&nonce), their_mac1, &mut buf)
            .expect("16-byte plaintext");
        let mut sealed = [0u8; 32];
        sealed[..16].copy_from_slice(&buf);
        sealed[16..].copy_from_slice(&tag);
        (nonce, sealed)
    }
}

/// The client's side: open a cookie reply for a message it sent.
///
/// # Errors
/// `Err(())` if the reply does not authenticate (forged, or for another message).
#[expect(
    clippy::result_unit_err,
    reason = "the only failure is 'does not authenticate'"
)]
pub fn open_cookie(
    gateway_public: &[u8; 32],
    nonce: &[u8],
    sealed: &[u8],
    our_mac1: &[u8; MAC_LEN],
) -> Result<Zeroizing<[u8; 16]>, ()> {
    if nonce.len() != 24 || sealed.len() != 32 {
        return Err(());
    }
    let key = cookie_key(gateway_public);
    let cipher = XChaCha20Poly1305::new((&*key).into());
    let mut buf = Zeroizing::new([0u8; 16]);
    buf.copy_from_slice(&sealed[..16]);
    cipher
        .decrypt_in_place_detached(
            XNonce::from_slice(nonce),
            our_mac1,
            &mut *buf,
            chacha20poly1305::Tag::from_slice(&sealed[16..]),
        )
        .map_err(|_| ())?;
    Ok(buf)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand_chacha::rand_core::SeedableRng;
    use rand_chacha::ChaCha20Rng;

    #[test]
    fn cookie_roundtrip_binds_address_and_message() {
        let mut rng = ChaCha20Rng::seed_from_u64(1);
        let gw = [9u8; 32];
        let mut checker = CookieChecker::new(&mut rng, Instant::ZERO, &gw);
        let from: SocketAddr = "192.0.2.1:4000".parse().expect("addr");
        let other: SocketAddr = "192.0.2.1:4001".parse().expect("addr");
        let m1 = [5u8; 16];
        let (nonce, sealed) = checker.seal_cookie(&mut rng, Instant::ZERO, &from, &m1);
        let cookie = open_cookie(&gw, &nonce, &sealed, &m1).expect("opens");
        assert!(open_cookie(&gw, &nonce, &sealed, &[6u8; 16]).is_err());
        let covered = b"handshake bytes";
        let m2 = mac2(&cookie, covered);
        assert!(checker.verify_mac2(Instant::ZERO, &from, covered, &m2));
        assert!(!checker.verify_mac2(Instant::ZERO, &other, covered, &m2));
        assert!(!checker.verify_mac2(Instant::ZERO, &from, b"other bytes", &m2));
        // Without a rotation the cookie still expires.
        assert!(!checker.verify_mac2(Instant::ZERO + COOKIE_SECRET_LIFETIME, &from, covered, &m2));
        // One rotation later the cookie still works; two rotations later it does not.
        let t1 = Instant::ZERO + COOKIE_SECRET_LIFETIME;
        checker.rotate(&mut rng, t1);
        assert!(checker.verify_mac2(t1, &from, covered, &m2));
        let t2 = t1 + COOKIE_SECRET_LIFETIME;
        checker.rotate(&mut rng, t2);
        assert!(!checker.verify_mac2(t2, &from, covered, &m2));
    }

    #[test]
    fn mac1_binds_key() {
        let k = mac1_key(&[1; 32]);
        let m = mac1(&k, b"msg");
        assert!(verify_mac1(&k, b"msg", &m));
        assert!(!verify_mac1(&mac1_key(&[2; 32]), b"msg", &m));
    }
}
