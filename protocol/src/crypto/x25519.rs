//! X25519 on aws-lc-rs, for the handshake (through a `snow` resolver) and the reattach proof.
//!
//! Chosen by measurement (`cargo bench -p jumping-benches --bench x25519`, docs/BENCHMARKS.md):
//! on the reference machine aws-lc-rs computes a Diffie-Hellman in about 32 µs and a key pair
//! in about 9 µs, against 71 µs and 19 µs for curve25519-dalek (what `snow` uses by default).
//! A gateway handshake does five of them, so this is most of what a handshake costs.
//!
//! A shared secret that is all zeros (the peer sent a low-order point) is refused, as
//! WireGuard does: aws-lc-rs reports it as an error, and the handshake or proof fails.

use aws_lc_rs::agreement::{self, PrivateKey, UnparsedPublicKey, X25519};
use snow::types::{Dh, Random};
use zeroize::Zeroizing;

/// An X25519 secret with its public key. The raw secret is zeroed on drop (aws-lc clears its
/// own copy when the key is freed).
pub struct Secret {
    bytes: Zeroizing<[u8; 32]>,
    key: PrivateKey,
    public: [u8; 32],
}

impl core::fmt::Debug for Secret {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("x25519::Secret(..)")
    }
}

impl Secret {
    /// The key of 32 secret bytes (clamped by X25519 itself, RFC 7748).
    #[must_use]
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        let bytes = Zeroizing::new(bytes);
        let key = PrivateKey::from_private_key(&X25519, &*bytes)
            .expect("any 32 bytes are an X25519 private key");
        let mut public = [0u8; 32];
        public.copy_from_slice(
            key.compute_public_key()
                .expect("an X25519 private key has a public key")
                .as_ref(),
        );
        Secret { bytes, key, public }
    }

    /// The public key.
    #[must_use]
    pub fn public(&self) -> [u8; 32] {
        self.public
    }

    /// The raw secret (for a key file, or for `snow`).
    #[must_use]
    pub fn bytes(&self) -> &[u8; 32] {
        &self.bytes
    }

    /// X25519 with `peer`; `None` if the result is all zeros (a low-order `peer`).
    #[must_use]
    pub fn agree(&self, peer: &[u8]) -> Option<Zeroizing<[u8; 32]>> {
        agreement::agree(&self.key, UnparsedPublicKey::new(&X25519, peer), (), |k| {
            let mut out = Zeroizing::new([0u8; 32]);
            out.copy_from_slice(k);
            Ok(out)
        })
        .ok()
    }
}

impl Clone for Secret {
    fn clone(&self) -> Self {
        Secret::from_bytes(*self.bytes)
    }
}

/// `snow`'s `25519` DH on [`Secret`].
#[derive(Default)]
pub(crate) struct SnowDh {
    secret: Option<Secret>,
}

impl Dh for SnowDh {
    fn name(&self) -> &'static str {
        "25519"
    }

    fn pub_len(&self) -> usize {
        32
    }

    fn priv_len(&self) -> usize {
        32
    }

    fn set(&mut self, privkey: &[u8]) {
        let mut bytes = Zeroizing::new([0u8; 32]);
        let n = privkey.len().min(32);
        bytes[..n].copy_from_slice(&privkey[..n]);
        self.secret = Some(Secret::from_bytes(*bytes));
    }

    fn generate(&mut self, rng: &mut dyn Random) -> Result<(), snow::Error> {
        let mut bytes = Zeroizing::new([0u8; 32]);
        rng.try_fill_bytes(&mut *bytes)?;
        self.secret = Some(Secret::from_bytes(*bytes));
        Ok(())
    }

    fn pubkey(&self) -> &[u8] {
        self.secret.as_ref().map_or(&[0u8; 32], |s| &s.public)
    }

    fn privkey(&self) -> &[u8] {
        self.secret.as_ref().map_or(&[0u8; 32], |s| &s.bytes[..])
    }

    fn dh(&self, pubkey: &[u8], out: &mut [u8]) -> Result<(), snow::Error> {
        let secret = self.secret.as_ref().ok_or(snow::Error::Dh)?;
        let shared = secret.agree(pubkey.get(..32).ok_or(snow::Error::Dh)?);
        let shared = shared.ok_or(snow::Error::Dh)?;
        let n = out.len().min(32);
        out[..n].copy_from_slice(&shared[..n]);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand_chacha::rand_core::{RngCore, SeedableRng};

    /// RFC 7748 section 6.1's Diffie-Hellman test vector.
    #[test]
    fn rfc7748_vector() {
        let hex = |s: &str| -> [u8; 32] {
            let mut out = [0u8; 32];
            for (i, o) in out.iter_mut().enumerate() {
                *o = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).expect("hex");
            }
            out
        };
        let alice = Secret::from_bytes(hex(
            "77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a",
        ));
        let bob = Secret::from_bytes(hex(
            "5dab087e624a8a4b79e17f8b83800ee66f3bb1292618b6fd1c2f8b27ff88e0eb",
        ));
        assert_eq!(
            alice.public(),
            hex("8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a")
        );
        assert_eq!(
            bob.public(),
            hex("de9edb7d7b7dc1b4d35b61c2ece435373f8343c85b78674dadfc7e146f882b4f")
        );
        let shared = hex("4a5d9d5ba4ce2de1728e3bf480350f25e07e21c947d19e3376f09b3c1e161742");
        assert_eq!(*alice.agree(&bob.public()).expect("agree"), shared);
        assert_eq!(*bob.agree(&alice.public()).expect("agree"), shared);
    }

    /// The same results as curve25519-dalek (what the handshake used before) on random keys.
    #[test]
    fn agrees_with_x25519_dalek() {
        let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(7);
        for _ in 0..64 {
            let (mut a, mut b) = ([0u8; 32], [0u8; 32]);
            rng.fill_bytes(&mut a);
            rng.fill_bytes(&mut b);
            let (sa, sb) = (Secret::from_bytes(a), Secret::from_bytes(b));
            let da = x25519_dalek::StaticSecret::from(a);
            let db = x25519_dalek::PublicKey::from(&x25519_dalek::StaticSecret::from(b));
            assert_eq!(sa.public(), x25519_dalek::PublicKey::from(&da).to_bytes());
            assert_eq!(
                *sa.agree(&sb.public()).expect("agree"),
                da.diffie_hellman(&db).to_bytes()
            );
        }
    }

    /// A low-order public key (all zeros gives an all-zero secret) is refused.
    #[test]
    fn low_order_point_refused() {
        let s = Secret::from_bytes([5u8; 32]);
        assert!(s.agree(&[0u8; 32]).is_none());
        let mut dh = SnowDh::default();
        dh.set(&[5u8; 32]);
        let mut out = [0u8; 32];
        assert!(dh.dh(&[0u8; 32], &mut out).is_err());
    }
}
