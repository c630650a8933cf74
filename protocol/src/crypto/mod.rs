//! Cryptographic building blocks: AEAD with counter nonces, keyed-BLAKE2s KDF and MAC,
//! constant-time comparison, secret key storage and the start-up RNG health check.
//!
//! Every secret lives in a type that zeroes it on drop ([`SecretKey`], [`zeroize::Zeroizing`]);
//! every comparison of secret-derived bytes goes through [`ct_eq`].

pub mod aead;
mod rng;
pub mod x25519;

pub use aead::{AeadKey, CipherSuite, OpenError};
pub use rng::{rng_health_check, RngHealthError};

use blake2::digest::consts::{U16, U32};
use blake2::digest::{KeyInit, Mac};
use blake2::Blake2sMac;
use subtle::ConstantTimeEq;
use zeroize::{Zeroize, ZeroizeOnDrop};

/// A 256-bit secret. Zeroed on drop; never printed.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct SecretKey(pub(crate) [u8; 32]);

impl SecretKey {
    /// Wrap raw key bytes (the caller's copy should be zeroed by the caller).
    #[must_use]
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        SecretKey(bytes)
    }

    /// The raw bytes, for handing to a cipher.
    #[must_use]
    pub fn expose(&self) -> &[u8; 32] {
        &self.0
    }
}

impl core::fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("SecretKey(..)")
    }
}

/// Constant-time equality of two byte strings (length is not secret).
#[must_use]
pub fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && bool::from(a.ct_eq(b))
}

/// Key derivation: keyed BLAKE2s-256 of `label` (and `context`) under `key`.
///
/// BLAKE2s in keyed mode is a PRF (RFC 7693 section 2.9 note, BLAKE2 paper section 2.9), so a
/// distinct `label` per use gives independent keys. Labels are fixed ASCII strings listed in
/// docs/PROTOCOL.md.
#[must_use]
pub fn kdf(key: &[u8; 32], label: &[u8], context: &[u8]) -> SecretKey {
    let mut m =
        <Blake2sMac<U32> as KeyInit>::new_from_slice(key).expect("BLAKE2s accepts 32-byte keys");
    m.update(label);
    m.update(&[0]);
    m.update(context);
    SecretKey(m.finalize().into_bytes().into())
}

/// A 128-bit MAC: keyed BLAKE2s-128 over `parts` concatenated (WireGuard's MAC construction).
#[must_use]
pub fn mac16(key: &[u8; 32], parts: &[&[u8]]) -> [u8; 16] {
    let mut m =
        <Blake2sMac<U16> as KeyInit>::new_from_slice(key).expect("BLAKE2s accepts 32-byte keys");
    for p in parts {
        m.update(p);
    }
    m.finalize().into_bytes().into()
}

/// Unkeyed BLAKE2s-256 of `parts` concatenated.
#[must_use]
pub fn hash(parts: &[&[u8]]) -> [u8; 32] {
    use blake2::{Blake2s256, Digest};
    let mut h = Blake2s256::new();
    for p in parts {
        h.update(p);
    }
    h.finalize().into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kdf_separates_labels_and_contexts() {
        let k = [1u8; 32];
        assert_ne!(kdf(&k, b"a", b"").0, kdf(&k, b"b", b"").0);
        assert_ne!(kdf(&k, b"a", b"x").0, kdf(&k, b"a", b"y").0);
        assert_eq!(kdf(&k, b"a", b"x").0, kdf(&k, b"a", b"x").0);
    }

    #[test]
    fn mac_depends_on_key_and_data() {
        let a = mac16(&[1; 32], &[b"hello"]);
        assert_ne!(a, mac16(&[2; 32], &[b"hello"]));
        assert_ne!(a, mac16(&[1; 32], &[b"hellp"]));
        assert_eq!(a, mac16(&[1; 32], &[b"hel", b"lo"]));
    }

    #[test]
    fn ct_eq_works() {
        assert!(ct_eq(b"abc", b"abc"));
        assert!(!ct_eq(b"abc", b"abd"));
        assert!(!ct_eq(b"abc", b"ab"));
    }

    #[test]
    fn secret_debug_hides_bytes() {
        assert_eq!(format!("{:?}", SecretKey([7; 32])), "SecretKey(..)");
    }
}
