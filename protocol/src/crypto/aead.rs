//! Data-packet AEAD: AES-256-GCM (default) or ChaCha20-Poly1305, 96-bit nonce made of four zero
//! bytes and the 64-bit packet counter, sealed and opened in place.
//!
//! The implementation is chosen by measurement (docs/BENCHMARKS.md, "AEAD library choice"):
//! the backend is named once, here, and its API (`LessSafeKey`, `seal_in_place_separate_tag`,
//! `open_in_place`) is shared by ring and aws-lc-rs.

use ring::aead::{self as backend, Aad, LessSafeKey, Nonce, UnboundKey};

use super::SecretKey;
use crate::wire::TAG_LEN;

/// The AEAD algorithm of a session, agreed in the handshake.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CipherSuite {
    /// AES-256-GCM: the default, on CPUs with AES and carry-less multiply instructions.
    Aes256Gcm,
    /// ChaCha20-Poly1305: for CPUs without AES instructions.
    ChaCha20Poly1305,
}

impl CipherSuite {
    /// Wire code.
    #[must_use]
    pub const fn code(self) -> u8 {
        match self {
            CipherSuite::Aes256Gcm => 1,
            CipherSuite::ChaCha20Poly1305 => 2,
        }
    }

    /// The suite with wire code `code`.
    #[must_use]
    pub const fn from_code(code: u8) -> Option<Self> {
        match code {
            1 => Some(CipherSuite::Aes256Gcm),
            2 => Some(CipherSuite::ChaCha20Poly1305),
            _ => None,
        }
    }

    /// The suite a host should prefer: AES-256-GCM where the CPU accelerates it.
    #[must_use]
    pub fn preferred_for_this_cpu() -> Self {
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("aes")
                && std::arch::is_x86_feature_detected!("pclmulqdq")
            {
                return CipherSuite::Aes256Gcm;
            }
            CipherSuite::ChaCha20Poly1305
        }
        #[cfg(target_arch = "aarch64")]
        {
            if std::arch::is_aarch64_feature_detected!("aes") {
                return CipherSuite::Aes256Gcm;
            }
            CipherSuite::ChaCha20Poly1305
        }
        #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
        CipherSuite::ChaCha20Poly1305
    }

    fn algorithm(self) -> &'static backend::Algorithm {
        match self {
            CipherSuite::Aes256Gcm => &backend::AES_256_GCM,
            CipherSuite::ChaCha20Poly1305 => &backend::CHACHA20_POLY1305,
        }
    }

    /// Stable name.
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            CipherSuite::Aes256Gcm => "aes-256-gcm",
            CipherSuite::ChaCha20Poly1305 => "chacha20-poly1305",
        }
    }
}

/// Authentication failed: the packet is forged, corrupted or sealed under another key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("AEAD open failed")]
pub struct OpenError;

/// One direction's packet key: the backend's expanded key schedule. The raw key is not kept
/// (the caller's [`SecretKey`] is zeroed on drop); whether the backend zeroes its schedule on
/// drop is the backend's property, recorded in docs/PROTOCOL.md.
pub struct AeadKey {
    key: LessSafeKey,
    suite: CipherSuite,
}

impl core::fmt::Debug for AeadKey {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("AeadKey")
            .field("suite", &self.suite)
            .finish_non_exhaustive()
    }
}

fn nonce(counter: u64) -> Nonce {
    let mut n = [0u8; 12];
    n[4..].copy_from_slice(&counter.to_be_bytes());
    Nonce::assume_unique_for_key(n)
}

impl AeadKey {
    /// Expand `key` for `suite`.
    #[must_use]
    pub fn new(suite: CipherSuite, key: &SecretKey) -> Self {
        let unbound = UnboundKey::new(suite.algorithm(), key.expose())
            .expect("both suites take 256-bit keys");
        AeadKey {
            key: LessSafeKey::new(unbound),
            suite,
        }
    }

    /// The suite.
    #[must_use]
    pub fn suite(&self) -> CipherSuite {
        self.suite
    }

    /// Encrypt `in_out` in place and return the tag. The caller guarantees that `counter` is
    /// never used twice under this key (the session's send counter).
    #[must_use]
    pub fn seal_in_place(&self, counter: u64, aad: &[u8], in_out: &mut [u8]) -> [u8; TAG_LEN] {
        let tag = self
            .key
            .seal_in_place_separate_tag(nonce(counter), Aad::from(aad), in_out)
            .expect("plaintext below the AEAD length limit");
        let mut out = [0u8; TAG_LEN];
        out.copy_from_slice(tag.as_ref());
        out
    }

    /// Decrypt `ciphertext || tag` in place; returns the plaintext prefix.
    ///
    /// # Errors
    /// [`OpenError`] if the tag does not verify; `in_out` is then unspecified.
    pub fn open_in_place<'b>(
        &self,
        counter: u64,
        aad: &[u8],
        in_out: &'b mut [u8],
    ) -> Result<&'b mut [u8], OpenError> {
        self.key
            .open_in_place(nonce(counter), Aad::from(aad), in_out)
            .map_err(|_| OpenError)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip_and_tamper() {
        for suite in [CipherSuite::Aes256Gcm, CipherSuite::ChaCha20Poly1305] {
            let k = AeadKey::new(suite, &SecretKey([3; 32]));
            let mut buf = *b"inner packet....????????????????";
            let (pt, tag_space) = buf.split_at_mut(16);
            let tag = k.seal_in_place(9, b"hdr", pt);
            tag_space.copy_from_slice(&tag);
            let mut copy = buf;
            assert_eq!(
                k.open_in_place(9, b"hdr", &mut copy).expect("opens"),
                b"inner packet...."
            );
            let mut copy = buf;
            assert_eq!(k.open_in_place(10, b"hdr", &mut copy), Err(OpenError));
            let mut copy = buf;
            assert_eq!(k.open_in_place(9, b"hdx", &mut copy), Err(OpenError));
            let mut copy = buf;
            copy[0] ^= 1;
            assert_eq!(k.open_in_place(9, b"hdr", &mut copy), Err(OpenError));
        }
    }
}
