//! The text form of X25519 keys shared by the gateway, the client and `jumpctl`: standard
//! base64 of the 32 bytes (44 characters, as WireGuard's), one key per file or line.
//!
//! Decoding checks the length and the alphabet and says which was wrong; it never echoes the
//! input (it may be a private key).

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use zeroize::Zeroizing;

/// Why a key's text form did not decode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum KeyFormatError {
    /// Not valid base64.
    #[error("not base64 (expected 44 characters of standard base64, as `jumpctl genkey` prints)")]
    NotBase64,
    /// Base64, but not 32 bytes.
    #[error("decodes to {0} bytes, a key has 32")]
    Length(usize),
}

/// Base64 of a key.
#[must_use]
pub fn encode(key: &[u8; 32]) -> String {
    STANDARD.encode(key)
}

/// A key from its base64 form; surrounding whitespace is ignored.
///
/// # Errors
/// [`KeyFormatError`] if the text is not base64 of exactly 32 bytes.
pub fn decode(text: &str) -> Result<Zeroizing<[u8; 32]>, KeyFormatError> {
    let bytes = Zeroizing::new(
        STANDARD
            .decode(text.trim())
            .map_err(|_| KeyFormatError::NotBase64)?,
    );
    let mut key = Zeroizing::new([0u8; 32]);
    if bytes.len() != key.len() {
        return Err(KeyFormatError::Length(bytes.len()));
    }
    key.copy_from_slice(&bytes);
    Ok(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_errors() {
        let k = [7u8; 32];
        let s = encode(&k);
        assert_eq!(s.len(), 44);
        assert_eq!(*decode(&format!(" {s}\n")).unwrap(), k);
        assert_eq!(decode("not a key!"), Err(KeyFormatError::NotBase64));
        assert_eq!(
            decode(&STANDARD.encode([1u8; 16])),
            Err(KeyFormatError::Length(16))
        );
    }
}
