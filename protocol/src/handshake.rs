//! The handshake: Noise `IK` over X25519, ChaCha20-Poly1305 and BLAKE2s (the `snow` crate),
//! framed with WireGuard-style mac1/mac2 (see [`crate::cookie`]).
//!
//! `IK` gives mutual authentication with long-term X25519 keys, forward secrecy from the
//! ephemeral keys, and hides the client's identity from passive observers (its static key
//! travels encrypted in message 1). Replay of message 1 is refused by a timestamp in its
//! encrypted payload that must grow per client key (WireGuard's TAI64N rule). The initiation
//! payload also says whether this is a new session or a rekey of an existing SessionId; the
//! response payload carries the SessionId and key epoch chosen by the gateway.
//!
//! The handshake objects consume themselves at each step, so a finished handshake cannot be
//! driven again. The RNG is injected: each handshake draws a 32-byte seed from the caller's
//! generator and gives snow a ChaCha20 stream from it.

use rand_chacha::rand_core::SeedableRng;
use rand_chacha::ChaCha20Rng;
use rand_core::{CryptoRng, RngCore};
use snow::params::NoiseParams;
use snow::resolvers::{CryptoResolver, DefaultResolver};
use snow::types::{Cipher, Dh, Hash, Random};
use zeroize::Zeroizing;

use crate::cookie::{mac1, mac1_key, mac2};
use crate::crypto::x25519::{Secret, SnowDh};
use crate::crypto::{kdf, CipherSuite, SecretKey};
use crate::wire::{
    self, HandshakeInit, HandshakeResponse, MessageType, SessionId, HANDSHAKE_INIT_LEN,
    HANDSHAKE_RESPONSE_LEN, INIT_PAYLOAD_LEN, MAC_LEN, RESP_PAYLOAD_LEN,
};

/// The Noise protocol name.
pub const NOISE_PARAMS: &str = "Noise_IK_25519_ChaChaPoly_BLAKE2s";
/// Prologue bound into the handshake hash.
pub const PROLOGUE: &[u8] = b"jumping/1";

/// A long-term X25519 identity key pair. The secret is zeroed on drop.
#[derive(Clone)]
pub struct StaticKeypair {
    secret: Secret,
}

impl core::fmt::Debug for StaticKeypair {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(
            f,
            "StaticKeypair(public={})",
            hex_lower(&self.secret.public())
        )
    }
}

/// Lower-case hex of bytes (for public keys and ids only, never secrets).
#[must_use]
pub fn hex_lower(b: &[u8]) -> String {
    use core::fmt::Write;
    b.iter()
        .fold(String::with_capacity(b.len() * 2), |mut s, x| {
            let _ = write!(s, "{x:02x}");
            s
        })
}

impl StaticKeypair {
    /// A fresh key pair from `rng`.
    pub fn generate<R: RngCore + CryptoRng>(rng: &mut R) -> Self {
        let mut bytes = Zeroizing::new([0u8; 32]);
        rng.fill_bytes(&mut *bytes);
        Self::from_secret_bytes(*bytes)
    }

    /// The key pair of a stored secret.
    #[must_use]
    pub fn from_secret_bytes(bytes: [u8; 32]) -> Self {
        StaticKeypair {
            secret: Secret::from_bytes(bytes),
        }
    }

    /// The public key.
    #[must_use]
    pub fn public(&self) -> [u8; 32] {
        self.secret.public()
    }

    /// The secret scalar bytes (for writing a key file; zeroed on drop).
    #[must_use]
    pub fn secret_bytes(&self) -> Zeroizing<[u8; 32]> {
        Zeroizing::new(*self.secret.bytes())
    }

    /// X25519 with a peer's public key, used for the reattach proof of possession. All zeros
    /// for a low-order `peer`; unreachable in a session, because the handshake's own `ss`
    /// refuses such a key and no session is ever made with it.
    #[must_use]
    pub fn diffie_hellman(&self, peer: &[u8; 32]) -> Zeroizing<[u8; 32]> {
        self.secret
            .agree(peer)
            .unwrap_or_else(|| Zeroizing::new([0u8; 32]))
    }
}

/// Why a handshake message was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum HandshakeError {
    /// Malformed message.
    #[error("malformed handshake message: {0}")]
    Wire(#[from] wire::WireError),
    /// mac1 does not verify: not for this gateway (scan or garbage).
    #[error("mac1 does not verify")]
    BadMac1,
    /// Noise decryption or authentication failed.
    #[error("handshake authentication failed")]
    Noise,
    /// The payload is malformed.
    #[error("malformed handshake payload")]
    BadPayload,
    /// The timestamp is not newer than the last one accepted for this client: a replay.
    #[error("handshake timestamp is not newer than the last accepted one (replay)")]
    Replay,
    /// The response is not for our handshake.
    #[error("response for another handshake")]
    WrongReceiver,
}

/// What the initiator asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    /// A new session.
    NewSession,
    /// New keys for an existing session.
    Rekey(SessionId),
}

/// Decrypted initiation payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InitPayload {
    /// Strictly increasing per client key (nanoseconds of the client's wall clock).
    pub timestamp: u64,
    /// New session or rekey.
    pub purpose: Purpose,
    /// The AEAD the client prefers.
    pub suite: CipherSuite,
}

impl InitPayload {
    fn encode(&self) -> [u8; INIT_PAYLOAD_LEN] {
        let mut p = [0u8; INIT_PAYLOAD_LEN];
        p[..8].copy_from_slice(&self.timestamp.to_be_bytes());
        if let Purpose::Rekey(sid) = self.purpose {
            p[8] = 1;
            p[9..17].copy_from_slice(&sid.to_bytes());
        }
        p[17] = self.suite.code();
        p
    }

    fn decode(p: &[u8]) -> Result<Self, HandshakeError> {
        if p.len() != INIT_PAYLOAD_LEN || p[18..].iter().any(|&b| b != 0) {
            return Err(HandshakeError::BadPayload);
        }
        let mut ts = [0u8; 8];
        ts.copy_from_slice(&p[..8]);
        let mut sid = [0u8; 8];
        sid.copy_from_slice(&p[9..17]);
        let purpose = match p[8] {
            0 if sid == [0; 8] => Purpose::NewSession,
            1 => Purpose::Rekey(SessionId(u64::from_be_bytes(sid))),
            _ => return Err(HandshakeError::BadPayload),
        };
        let suite = CipherSuite::from_code(p[17]).ok_or(HandshakeError::BadPayload)?;
        Ok(InitPayload {
            timestamp: u64::from_be_bytes(ts),
            purpose,
            suite,
        })
    }
}

/// Keys a completed handshake yields, per direction, before per-epoch derivation.
#[derive(Debug)]
pub struct HandshakeKeys {
    /// Client-to-gateway secret.
    pub c2g: SecretKey,
    /// Gateway-to-client secret.
    pub g2c: SecretKey,
    /// The Noise handshake hash: binds proofs to this session.
    pub transcript: [u8; 32],
    /// The agreed AEAD.
    pub suite: CipherSuite,
}

fn split_keys(hs: &mut snow::HandshakeState, suite: CipherSuite) -> HandshakeKeys {
    let (a, b) = hs.dangerously_get_raw_split();
    let (a, b) = (Zeroizing::new(a), Zeroizing::new(b));
    let mut transcript = [0u8; 32];
    transcript.copy_from_slice(hs.get_handshake_hash());
    HandshakeKeys {
        c2g: kdf(&a, b"jumping c2g", &transcript),
        g2c: kdf(&b, b"jumping g2c", &transcript),
        transcript,
        suite,
    }
}

struct SeededRandom(ChaCha20Rng);

impl Random for SeededRandom {
    fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), snow::Error> {
        self.0.fill_bytes(dest);
        Ok(())
    }
}

/// snow's default hash and cipher, X25519 on aws-lc-rs ([`crate::crypto::x25519`]), and
/// randomness from the injected generator.
struct InjectedResolver {
    seed: Zeroizing<[u8; 32]>,
}

impl CryptoResolver for InjectedResolver {
    fn resolve_rng(&self) -> Option<Box<dyn Random>> {
        Some(Box::new(SeededRandom(ChaCha20Rng::from_seed(*self.seed))))
    }
    fn resolve_dh(&self, choice: &snow::params::DHChoice) -> Option<Box<dyn Dh>> {
        match choice {
            snow::params::DHChoice::Curve25519 => Some(Box::<SnowDh>::default()),
            _ => None,
        }
    }
    fn resolve_hash(&self, choice: &snow::params::HashChoice) -> Option<Box<dyn Hash>> {
        DefaultResolver.resolve_hash(choice)
    }
    fn resolve_cipher(&self, choice: &snow::params::CipherChoice) -> Option<Box<dyn Cipher>> {
        DefaultResolver.resolve_cipher(choice)
    }
}

fn builder<'a, R: RngCore + CryptoRng>(rng: &mut R) -> snow::Builder<'a> {
    let mut seed = Zeroizing::new([0u8; 32]);
    rng.fill_bytes(&mut *seed);
    let params: NoiseParams = NOISE_PARAMS.parse().expect("valid Noise parameters");
    snow::Builder::with_resolver(params, Box::new(InjectedResolver { seed }))
}

/// The client side of a handshake in progress.
pub struct Initiator {
    hs: snow::HandshakeState,
    sender_id: u64,
    payload: InitPayload,
    mac1: [u8; MAC_LEN],
    message: [u8; HANDSHAKE_INIT_LEN],
    gateway_public: [u8; 32],
    client_public: [u8; 32],
}

impl core::fmt::Debug for Initiator {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Initiator")
            .field("sender_id", &self.sender_id)
            .field("payload", &self.payload)
            .finish_non_exhaustive()
    }
}

/// A completed handshake on the client.
#[derive(Debug)]
pub struct InitiatorDone {
    /// The session the gateway assigned (or confirmed, for a rekey).
    pub session_id: SessionId,
    /// The key epoch the gateway assigned.
    pub epoch: u32,
    /// The keys.
    pub keys: HandshakeKeys,
    /// What was asked.
    pub purpose: Purpose,
}

impl Initiator {
    /// Start a handshake: build message 1. `cookie` is a cookie received from the gateway in
    /// the last two minutes, if any, for mac2.
    ///
    /// # Errors
    /// [`HandshakeError::Noise`] if the keys are unusable.
    pub fn start<R: RngCore + CryptoRng>(
        rng: &mut R,
        client: &StaticKeypair,
        gateway_public: &[u8; 32],
        payload: InitPayload,
        cookie: Option<&[u8; 16]>,
    ) -> Result<Self, HandshakeError> {
        let secret = client.secret_bytes();
        let mut hs = builder(rng)
            .local_private_key(&*secret)
            .and_then(|b| b.remote_public_key(gateway_public))
            .and_then(|b| b.prologue(PROLOGUE))
            .and_then(snow::Builder::build_initiator)
            .map_err(|_| HandshakeError::Noise)?;
        let sender_id = rng.next_u64();
        let mut message = [0u8; HANDSHAKE_INIT_LEN];
        message[0] = wire::VERSION;
        message[1] = MessageType::HandshakeInit as u8;
        message[4..12].copy_from_slice(&sender_id.to_be_bytes());
        let n = hs
            .write_message(
                &payload.encode(),
                &mut message[12..HandshakeInit::MAC1_OFFSET],
            )
            .map_err(|_| HandshakeError::Noise)?;
        debug_assert_eq!(n, wire::INIT_NOISE_LEN);
        let m1 = mac1(
            &mac1_key(gateway_public),
            &message[..HandshakeInit::MAC1_OFFSET],
        );
        message[HandshakeInit::MAC1_OFFSET..HandshakeInit::MAC2_OFFSET].copy_from_slice(&m1);
        if let Some(c) = cookie {
            let m2 = mac2(c, &message[..HandshakeInit::MAC2_OFFSET]);
            message[HandshakeInit::MAC2_OFFSET..].copy_from_slice(&m2);
        }
        Ok(Initiator {
            hs,
            sender_id,
            payload,
            mac1: m1,
            message,
            gateway_public: *gateway_public,
            client_public: client.public(),
        })
    }

    /// Message 1, to send (and resend as is until answered).
    #[must_use]
    pub fn message(&self) -> &[u8; HANDSHAKE_INIT_LEN] {
        &self.message
    }

    /// The handshake id echoed by the gateway's response or cookie reply.
    #[must_use]
    pub fn sender_id(&self) -> u64 {
        self.sender_id
    }

    /// mac1 of message 1 (the associated data of a cookie reply).
    #[must_use]
    pub fn mac1(&self) -> &[u8; MAC_LEN] {
        &self.mac1
    }

    /// The gateway this handshake is with.
    #[must_use]
    pub fn gateway_public(&self) -> &[u8; 32] {
        &self.gateway_public
    }

    /// The payload sent.
    #[must_use]
    pub fn payload(&self) -> &InitPayload {
        &self.payload
    }

    /// Process message 2. Consumes the handshake on success; on failure it is returned so the
    /// client can keep waiting for the genuine response.
    ///
    /// # Errors
    /// The initiator back with the reason, if the response is not valid for this handshake.
    pub fn handle_response(
        mut self,
        bytes: &[u8],
    ) -> Result<InitiatorDone, (Box<Self>, HandshakeError)> {
        let resp = match HandshakeResponse::new_checked(bytes) {
            Ok(r) => r,
            Err(e) => return Err((Box::new(self), e.into())),
        };
        if resp.receiver_id() != self.sender_id {
            return Err((Box::new(self), HandshakeError::WrongReceiver));
        }
        if !crate::cookie::verify_mac1(
            &mac1_key(&self.client_public),
            resp.mac1_covered(),
            &resp.mac1(),
        ) {
            return Err((Box::new(self), HandshakeError::BadMac1));
        }
        // snow restores its state when a read fails, so a forged response (which passes mac1
        // only if the attacker knows our public key) leaves the handshake usable for the
        // genuine one.
        let mut payload = [0u8; RESP_PAYLOAD_LEN];
        let n = match self.hs.read_message(resp.noise(), &mut payload) {
            Ok(n) => n,
            Err(_) => return Err((Box::new(self), HandshakeError::Noise)),
        };
        if n != RESP_PAYLOAD_LEN || payload[12..].iter().any(|&b| b != 0) {
            return Err((Box::new(self), HandshakeError::BadPayload));
        }
        let mut sid = [0u8; 8];
        sid.copy_from_slice(&payload[..8]);
        let mut ep = [0u8; 4];
        ep.copy_from_slice(&payload[8..12]);
        let session_id = SessionId(u64::from_be_bytes(sid));
        if let Purpose::Rekey(expected) = self.payload.purpose {
            if expected != session_id {
                return Err((Box::new(self), HandshakeError::BadPayload));
            }
        }
        let keys = split_keys(&mut self.hs, self.payload.suite);
        Ok(InitiatorDone {
            session_id,
            epoch: u32::from_be_bytes(ep),
            keys,
            purpose: self.payload.purpose,
        })
    }
}

/// The gateway's handshake key material.
pub struct Responder {
    keypair: StaticKeypair,
    mac1_key: [u8; 32],
}

impl core::fmt::Debug for Responder {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Responder")
            .field("keypair", &self.keypair)
            .finish_non_exhaustive()
    }
}

/// Message 1 read and authenticated; the gateway decides, then answers with [`Accepted::respond`].
pub struct Accepted {
    hs: snow::HandshakeState,
    /// The client's static public key (its identity).
    pub client_public: [u8; 32],
    /// The decrypted payload.
    pub payload: InitPayload,
    /// The client's handshake id.
    pub sender_id: u64,
}

impl core::fmt::Debug for Accepted {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Accepted")
            .field("client", &hex_lower(&self.client_public))
            .field("payload", &self.payload)
            .finish_non_exhaustive()
    }
}

impl Responder {
    /// A responder for the gateway key pair.
    #[must_use]
    pub fn new(keypair: StaticKeypair) -> Self {
        let mac1_key = mac1_key(&keypair.public());
        Responder { keypair, mac1_key }
    }

    /// The gateway key pair.
    #[must_use]
    pub fn keypair(&self) -> &StaticKeypair {
        &self.keypair
    }

    /// Check mac1 only (cheap, before any other work).
    #[must_use]
    pub fn check_mac1(&self, init: &HandshakeInit<'_>) -> bool {
        crate::cookie::verify_mac1(&self.mac1_key, init.mac1_covered(), &init.mac1())
    }

    /// Read message 1 (one DH for `es`, one for `ss`). The caller then checks the client key
    /// against its allow-list and the timestamp against the last accepted one.
    ///
    /// # Errors
    /// [`HandshakeError`] if the message does not authenticate or its payload is malformed.
    pub fn read_init<R: RngCore + CryptoRng>(
        &self,
        rng: &mut R,
        init: &HandshakeInit<'_>,
    ) -> Result<Accepted, HandshakeError> {
        let secret = self.keypair.secret_bytes();
        let mut hs = builder(rng)
            .local_private_key(&*secret)
            .and_then(|b| b.prologue(PROLOGUE))
            .and_then(snow::Builder::build_responder)
            .map_err(|_| HandshakeError::Noise)?;
        let mut payload = [0u8; INIT_PAYLOAD_LEN];
        let n = hs
            .read_message(init.noise(), &mut payload)
            .map_err(|_| HandshakeError::Noise)?;
        let payload = InitPayload::decode(&payload[..n])?;
        let rs = hs.get_remote_static().ok_or(HandshakeError::Noise)?;
        let mut client_public = [0u8; 32];
        client_public.copy_from_slice(rs);
        Ok(Accepted {
            hs,
            client_public,
            payload,
            sender_id: init.sender_id(),
        })
    }
}

impl Accepted {
    /// Write message 2 carrying the SessionId and key epoch; returns the keys and the message.
    ///
    /// # Errors
    /// [`HandshakeError::Noise`] if snow refuses (cannot happen with valid state).
    pub fn respond(
        mut self,
        session_id: SessionId,
        epoch: u32,
    ) -> Result<(HandshakeKeys, [u8; HANDSHAKE_RESPONSE_LEN]), HandshakeError> {
        let mut payload = [0u8; RESP_PAYLOAD_LEN];
        payload[..8].copy_from_slice(&session_id.to_bytes());
        payload[8..12].copy_from_slice(&epoch.to_be_bytes());
        let mut message = [0u8; HANDSHAKE_RESPONSE_LEN];
        message[0] = wire::VERSION;
        message[1] = MessageType::HandshakeResponse as u8;
        message[4..12].copy_from_slice(&self.sender_id.to_be_bytes());
        let n = self
            .hs
            .write_message(&payload, &mut message[12..HandshakeResponse::MAC1_OFFSET])
            .map_err(|_| HandshakeError::Noise)?;
        debug_assert_eq!(n, wire::RESP_NOISE_LEN);
        let m1 = mac1(
            &mac1_key(&self.client_public),
            &message[..HandshakeResponse::MAC1_OFFSET],
        );
        message[HandshakeResponse::MAC1_OFFSET..HandshakeResponse::MAC2_OFFSET]
            .copy_from_slice(&m1);
        let keys = split_keys(&mut self.hs, self.payload.suite);
        Ok((keys, message))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handshake_agrees_on_keys() {
        let mut rng = ChaCha20Rng::seed_from_u64(7);
        let client = StaticKeypair::generate(&mut rng);
        let gw = StaticKeypair::generate(&mut rng);
        let payload = InitPayload {
            timestamp: 1,
            purpose: Purpose::NewSession,
            suite: CipherSuite::Aes256Gcm,
        };
        let init = Initiator::start(&mut rng, &client, &gw.public(), payload, None).expect("start");
        let responder = Responder::new(gw);
        let msg = HandshakeInit::new_checked(init.message()).expect("well-formed");
        assert!(responder.check_mac1(&msg));
        let acc = responder.read_init(&mut rng, &msg).expect("authenticates");
        assert_eq!(acc.client_public, client.public());
        assert_eq!(acc.payload, payload);
        let (gk, resp) = acc.respond(SessionId(77), 0).expect("respond");
        let done = init
            .handle_response(&resp)
            .map_err(|(_, e)| e)
            .expect("client completes");
        assert_eq!(done.session_id, SessionId(77));
        assert_eq!(done.keys.c2g.expose(), gk.c2g.expose());
        assert_eq!(done.keys.g2c.expose(), gk.g2c.expose());
        assert_ne!(gk.c2g.expose(), gk.g2c.expose());
        assert_eq!(done.keys.transcript, gk.transcript);
    }

    #[test]
    fn wrong_gateway_key_fails_mac1_and_noise() {
        let mut rng = ChaCha20Rng::seed_from_u64(8);
        let client = StaticKeypair::generate(&mut rng);
        let gw = StaticKeypair::generate(&mut rng);
        let other = StaticKeypair::generate(&mut rng);
        let payload = InitPayload {
            timestamp: 1,
            purpose: Purpose::NewSession,
            suite: CipherSuite::Aes256Gcm,
        };
        let init =
            Initiator::start(&mut rng, &client, &other.public(), payload, None).expect("start");
        let responder = Responder::new(gw);
        let msg = HandshakeInit::new_checked(init.message()).expect("well-formed");
        assert!(!responder.check_mac1(&msg));
        assert_eq!(
            responder.read_init(&mut rng, &msg).unwrap_err(),
            HandshakeError::Noise
        );
    }

    #[test]
    fn payload_codec_rejects_garbage() {
        let p = InitPayload {
            timestamp: 9,
            purpose: Purpose::Rekey(SessionId(5)),
            suite: CipherSuite::ChaCha20Poly1305,
        };
        assert_eq!(InitPayload::decode(&p.encode()), Ok(p));
        let mut bad = p.encode();
        bad[20] = 1;
        assert_eq!(InitPayload::decode(&bad), Err(HandshakeError::BadPayload));
        let mut bad = p.encode();
        bad[8] = 7;
        assert_eq!(InitPayload::decode(&bad), Err(HandshakeError::BadPayload));
    }
}
