//! Wire format: typed views over every message, with checked constructors.
//!
//! Every message starts with the same four bytes:
//!
//! ```text
//!  0        1        2                 4
//! +--------+--------+--------+--------+
//! |version |  type  |  key epoch (BE) |   (zero in handshake and cookie messages)
//! +--------+--------+--------+--------+
//! ```
//!
//! Every message that belongs to an established session (data, heartbeat, terminate and the
//! five reattach messages) carries its [`SessionId`] at the fixed offset [`SESSION_ID_OFFSET`],
//! so the XDP program can steer it with two loads. Layouts of each message are on its view type
//! and in `docs/PROTOCOL.md`.
//!
//! [`parse`] accepts any byte string and returns a view or a [`WireError`]; it never panics. The
//! views' accessors index only inside the length their constructor checked.

use core::fmt;

/// Protocol version carried in byte 0 of every message.
pub const VERSION: u8 = 1;
/// Offset of the message type.
pub const TYPE_OFFSET: usize = 1;
/// Offset of the 16-bit key epoch in session messages.
pub const EPOCH_OFFSET: usize = 2;
/// Offset of the SessionId in every session-scoped message.
pub const SESSION_ID_OFFSET: usize = 4;
/// Offset of the packet counter in data, heartbeat and terminate messages.
pub const COUNTER_OFFSET: usize = 12;
/// Length of the data header (version, type, epoch, SessionId, counter).
pub const DATA_HEADER_LEN: usize = 20;
/// Length of an AEAD tag.
pub const TAG_LEN: usize = 16;
/// Length of a MAC (keyed BLAKE2s-128).
pub const MAC_LEN: usize = 16;
/// Length of a path-validation token.
pub const TOKEN_LEN: usize = 16;
/// Length of the header common to reattach messages (version, type, epoch, SessionId).
pub const REATTACH_HEADER_LEN: usize = 12;

/// Noise IK first message: e (32) + encrypted s (32 + 16) + encrypted payload.
pub const INIT_PAYLOAD_LEN: usize = 24;
/// Length of the Noise part of the handshake initiation.
pub const INIT_NOISE_LEN: usize = 32 + 48 + INIT_PAYLOAD_LEN + TAG_LEN;
/// Noise IK second message payload: SessionId (8) + key epoch (4) + reserved (4).
pub const RESP_PAYLOAD_LEN: usize = 16;
/// Length of the Noise part of the handshake response: e (32) + encrypted payload.
pub const RESP_NOISE_LEN: usize = 32 + RESP_PAYLOAD_LEN + TAG_LEN;
/// Handshake initiation length.
pub const HANDSHAKE_INIT_LEN: usize = 4 + 8 + INIT_NOISE_LEN + 2 * MAC_LEN;
/// Handshake response length.
pub const HANDSHAKE_RESPONSE_LEN: usize = 4 + 8 + RESP_NOISE_LEN + 2 * MAC_LEN;
/// Cookie reply length: header, receiver id, 24-byte nonce, encrypted 16-byte cookie.
pub const COOKIE_REPLY_LEN: usize = 4 + 8 + 24 + 16 + TAG_LEN;
/// Reattach request length.
pub const REATTACH_REQUEST_LEN: usize =
    REATTACH_HEADER_LEN + 8 + 8 + 8 + TOKEN_LEN + MAC_LEN + MAC_LEN;
/// Reattach challenge length.
pub const REATTACH_CHALLENGE_LEN: usize = REATTACH_HEADER_LEN + 8 + TOKEN_LEN + MAC_LEN;
/// Reattach response length.
pub const REATTACH_RESPONSE_LEN: usize = REATTACH_CHALLENGE_LEN;
/// Reattach ack length.
pub const REATTACH_ACK_LEN: usize = REATTACH_HEADER_LEN + 8 + 8 + MAC_LEN;
/// Reattach reject length.
pub const REATTACH_REJECT_LEN: usize = REATTACH_HEADER_LEN + 8 + 8 + MAC_LEN;
/// Heartbeat plaintext: probe id (8) + echoed probe id (8) + a last field (8): from the client,
/// the RTT it measured in µs (zero if unknown); from the gateway, flags
/// ([`HEARTBEAT_FLAG_REKEY`]).
pub const HEARTBEAT_PLAINTEXT_LEN: usize = 24;
/// Offset of the gateway's flags in a heartbeat plaintext (big-endian u64).
pub const HEARTBEAT_FLAGS_OFFSET: usize = 16;
/// Gateway heartbeat flag: the gateway asks the client to rekey now (an operator's `rekey`).
/// Authenticated like the rest of the plaintext; the client honours it when its current key
/// epoch is older than `REKEY_REQUEST_MIN_AGE` (an echo in flight after the rekey is ignored).
pub const HEARTBEAT_FLAG_REKEY: u64 = 1;
/// Terminate plaintext: reason code (1) + padding (7).
pub const TERMINATE_PLAINTEXT_LEN: usize = 8;

/// The 64-bit session identifier.
///
/// Chosen by the gateway. The top 8 bits name the owner core and the next 8 the owner node
/// (QUIC-LB style, so the XDP program and a load balancer can route without a lookup); the
/// remaining 48 bits are a keyed permutation of a counter: unguessable, and never repeated by
/// one allocator.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SessionId(pub u64);

impl SessionId {
    /// Compose a SessionId from its owner core, owner node and 48 random bits.
    #[must_use]
    pub const fn compose(core: u8, node: u8, random48: u64) -> Self {
        SessionId(((core as u64) << 56) | ((node as u64) << 48) | (random48 & 0xFFFF_FFFF_FFFF))
    }

    /// The owner core encoded at creation.
    #[must_use]
    pub const fn owner_core(self) -> u8 {
        (self.0 >> 56) as u8
    }

    /// The owner node encoded at creation.
    #[must_use]
    pub const fn owner_node(self) -> u8 {
        (self.0 >> 48) as u8
    }

    /// Big-endian bytes as on the wire.
    #[must_use]
    pub const fn to_bytes(self) -> [u8; 8] {
        self.0.to_be_bytes()
    }
}

impl fmt::Debug for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SessionId({:016x})", self.0)
    }
}

impl fmt::Display for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

/// Message types (byte 1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum MessageType {
    /// Noise IK message 1, client to gateway.
    HandshakeInit = 1,
    /// Noise IK message 2, gateway to client.
    HandshakeResponse = 2,
    /// Cookie reply to a handshake sent under load.
    CookieReply = 3,
    /// An encrypted inner IP packet.
    Data = 4,
    /// An encrypted keepalive / RTT probe.
    Heartbeat = 5,
    /// An encrypted, reason-coded end of session.
    Terminate = 6,
    /// Client asks to bind a new path.
    ReattachRequest = 7,
    /// Gateway proves the client receives at a path.
    ReattachChallenge = 8,
    /// Client answers a challenge.
    ReattachResponse = 9,
    /// Gateway confirms the new binding.
    ReattachAck = 10,
    /// Gateway refuses a reattach, with a code.
    ReattachReject = 11,
}

impl MessageType {
    /// The type with wire code `code`, if any.
    #[must_use]
    pub const fn from_u8(code: u8) -> Option<Self> {
        Some(match code {
            1 => MessageType::HandshakeInit,
            2 => MessageType::HandshakeResponse,
            3 => MessageType::CookieReply,
            4 => MessageType::Data,
            5 => MessageType::Heartbeat,
            6 => MessageType::Terminate,
            7 => MessageType::ReattachRequest,
            8 => MessageType::ReattachChallenge,
            9 => MessageType::ReattachResponse,
            10 => MessageType::ReattachAck,
            11 => MessageType::ReattachReject,
            _ => return None,
        })
    }

    /// Whether the data plane handles this type itself (steered to the owner core by XDP).
    #[must_use]
    pub const fn is_data_plane(self) -> bool {
        matches!(self, MessageType::Data | MessageType::Heartbeat)
    }

    /// Stable lower-case name.
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            MessageType::HandshakeInit => "handshake_init",
            MessageType::HandshakeResponse => "handshake_response",
            MessageType::CookieReply => "cookie_reply",
            MessageType::Data => "data",
            MessageType::Heartbeat => "heartbeat",
            MessageType::Terminate => "terminate",
            MessageType::ReattachRequest => "reattach_request",
            MessageType::ReattachChallenge => "reattach_challenge",
            MessageType::ReattachResponse => "reattach_response",
            MessageType::ReattachAck => "reattach_ack",
            MessageType::ReattachReject => "reattach_reject",
        }
    }
}

/// Why a byte string is not a valid message. Small and `Copy`: it is counted per reason on the
/// packet path.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, thiserror::Error)]
pub enum WireError {
    /// Shorter than the four-byte common header.
    #[error("message shorter than the 4-byte header")]
    Truncated,
    /// Byte 0 is not [`VERSION`].
    #[error("unsupported protocol version {0}")]
    BadVersion(u8),
    /// Byte 1 names no message type.
    #[error("unknown message type {0}")]
    UnknownType(u8),
    /// Length does not match what the type requires.
    #[error("{ty:?} needs {need} bytes, got {got}")]
    BadLength {
        /// The message type.
        ty: MessageType,
        /// Required length (exact, or minimum for data).
        need: usize,
        /// Length received.
        got: usize,
    },
    /// A field that must be zero is not.
    #[error("reserved field is not zero in {0:?}")]
    NonZeroReserved(MessageType),
}

impl WireError {
    /// Stable name, used as a counter label.
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            WireError::Truncated => "truncated",
            WireError::BadVersion(_) => "bad_version",
            WireError::UnknownType(_) => "unknown_type",
            WireError::BadLength { .. } => "bad_length",
            WireError::NonZeroReserved(_) => "nonzero_reserved",
        }
    }
}

fn be16(b: &[u8], at: usize) -> u16 {
    let mut a = [0u8; 2];
    a.copy_from_slice(&b[at..at + 2]);
    u16::from_be_bytes(a)
}

fn be64(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_be_bytes(a)
}

fn arr16(b: &[u8], at: usize) -> [u8; 16] {
    let mut a = [0u8; 16];
    a.copy_from_slice(&b[at..at + 16]);
    a
}

/// Read the type of a message after checking version and length of the common header.
///
/// # Errors
/// [`WireError::Truncated`], [`WireError::BadVersion`] or [`WireError::UnknownType`].
pub fn peek_type(buf: &[u8]) -> Result<MessageType, WireError> {
    if buf.len() < 4 {
        return Err(WireError::Truncated);
    }
    if buf[0] != VERSION {
        return Err(WireError::BadVersion(buf[0]));
    }
    MessageType::from_u8(buf[TYPE_OFFSET]).ok_or(WireError::UnknownType(buf[TYPE_OFFSET]))
}

fn exact(buf: &[u8], ty: MessageType, need: usize) -> Result<(), WireError> {
    if buf.len() == need {
        Ok(())
    } else {
        Err(WireError::BadLength {
            ty,
            need,
            got: buf.len(),
        })
    }
}

fn zero_epoch(buf: &[u8], ty: MessageType) -> Result<(), WireError> {
    if buf[2] == 0 && buf[3] == 0 {
        Ok(())
    } else {
        Err(WireError::NonZeroReserved(ty))
    }
}

/// Write the common header into `out[..4]`.
fn put_header(out: &mut [u8], ty: MessageType, epoch: u16) {
    out[0] = VERSION;
    out[1] = ty as u8;
    out[2..4].copy_from_slice(&epoch.to_be_bytes());
}

/// A parsed message: a typed view borrowing the input.
#[derive(Debug, Clone, Copy)]
pub enum Message<'a> {
    /// See [`HandshakeInit`].
    HandshakeInit(HandshakeInit<'a>),
    /// See [`HandshakeResponse`].
    HandshakeResponse(HandshakeResponse<'a>),
    /// See [`CookieReply`].
    CookieReply(CookieReply<'a>),
    /// Data, heartbeat or terminate: see [`Transport`].
    Transport(TransportMsg<'a>),
    /// See [`ReattachRequest`].
    ReattachRequest(ReattachRequest<'a>),
    /// See [`ReattachChallenge`].
    ReattachChallenge(ReattachChallenge<'a>),
    /// See [`ReattachResponse`].
    ReattachResponse(ReattachResponse<'a>),
    /// See [`ReattachAck`].
    ReattachAck(ReattachAck<'a>),
    /// See [`ReattachReject`].
    ReattachReject(ReattachReject<'a>),
}

/// Parse any byte string into a typed view.
///
/// # Errors
/// A [`WireError`] naming what is wrong; never panics.
pub fn parse(buf: &[u8]) -> Result<Message<'_>, WireError> {
    Ok(match peek_type(buf)? {
        MessageType::HandshakeInit => Message::HandshakeInit(HandshakeInit::new_checked(buf)?),
        MessageType::HandshakeResponse => {
            Message::HandshakeResponse(HandshakeResponse::new_checked(buf)?)
        }
        MessageType::CookieReply => Message::CookieReply(CookieReply::new_checked(buf)?),
        MessageType::Data | MessageType::Heartbeat | MessageType::Terminate => {
            Message::Transport(TransportMsg::new_checked(buf)?)
        }
        MessageType::ReattachRequest => {
            Message::ReattachRequest(ReattachRequest::new_checked(buf)?)
        }
        MessageType::ReattachChallenge => {
            Message::ReattachChallenge(ReattachChallenge::new_checked(buf)?)
        }
        MessageType::ReattachResponse => {
            Message::ReattachResponse(ReattachResponse::new_checked(buf)?)
        }
        MessageType::ReattachAck => Message::ReattachAck(ReattachAck::new_checked(buf)?),
        MessageType::ReattachReject => Message::ReattachReject(ReattachReject::new_checked(buf)?),
    })
}

/// Handshake initiation (client → gateway), [`HANDSHAKE_INIT_LEN`] bytes.
///
/// ```text
/// 0 version | 1 type=1 | 2..4 zero | 4..12 sender handshake id | 12..132 Noise IK msg 1
/// | 132..148 mac1 | 148..164 mac2
/// ```
#[derive(Debug, Clone, Copy)]
pub struct HandshakeInit<'a>(&'a [u8]);

impl<'a> HandshakeInit<'a> {
    /// Offset of mac1; everything before it is covered by mac1.
    pub const MAC1_OFFSET: usize = 12 + INIT_NOISE_LEN;
    /// Offset of mac2; everything before it is covered by mac2.
    pub const MAC2_OFFSET: usize = Self::MAC1_OFFSET + MAC_LEN;

    /// Check length and reserved bytes.
    ///
    /// # Errors
    /// A [`WireError`] if `buf` is not a well-formed initiation.
    pub fn new_checked(buf: &'a [u8]) -> Result<Self, WireError> {
        let ty = MessageType::HandshakeInit;
        if peek_type(buf)? != ty {
            return Err(WireError::UnknownType(buf[TYPE_OFFSET]));
        }
        exact(buf, ty, HANDSHAKE_INIT_LEN)?;
        zero_epoch(buf, ty)?;
        Ok(Self(buf))
    }
    /// The client's handshake identifier, echoed in the response.
    #[must_use]
    pub fn sender_id(&self) -> u64 {
        be64(self.0, 4)
    }
    /// The Noise message.
    #[must_use]
    pub fn noise(&self) -> &'a [u8] {
        &self.0[12..Self::MAC1_OFFSET]
    }
    /// Bytes covered by mac1.
    #[must_use]
    pub fn mac1_covered(&self) -> &'a [u8] {
        &self.0[..Self::MAC1_OFFSET]
    }
    /// Bytes covered by mac2.
    #[must_use]
    pub fn mac2_covered(&self) -> &'a [u8] {
        &self.0[..Self::MAC2_OFFSET]
    }
    /// mac1.
    #[must_use]
    pub fn mac1(&self) -> [u8; MAC_LEN] {
        arr16(self.0, Self::MAC1_OFFSET)
    }
    /// mac2 (all zero when the client holds no cookie).
    #[must_use]
    pub fn mac2(&self) -> [u8; MAC_LEN] {
        arr16(self.0, Self::MAC2_OFFSET)
    }
    /// The whole message.
    #[must_use]
    pub fn bytes(&self) -> &'a [u8] {
        self.0
    }
}

/// Handshake response (gateway → client), [`HANDSHAKE_RESPONSE_LEN`] bytes.
///
/// ```text
/// 0 version | 1 type=2 | 2..4 zero | 4..12 receiver handshake id | 12..76 Noise IK msg 2
/// | 76..92 mac1 | 92..108 mac2
/// ```
#[derive(Debug, Clone, Copy)]
pub struct HandshakeResponse<'a>(&'a [u8]);

impl<'a> HandshakeResponse<'a> {
    /// Offset of mac1.
    pub const MAC1_OFFSET: usize = 12 + RESP_NOISE_LEN;
    /// Offset of mac2.
    pub const MAC2_OFFSET: usize = Self::MAC1_OFFSET + MAC_LEN;

    /// Check length and reserved bytes.
    ///
    /// # Errors
    /// A [`WireError`] if `buf` is not a well-formed response.
    pub fn new_checked(buf: &'a [u8]) -> Result<Self, WireError> {
        let ty = MessageType::HandshakeResponse;
        if peek_type(buf)? != ty {
            return Err(WireError::UnknownType(buf[TYPE_OFFSET]));
        }
        exact(buf, ty, HANDSHAKE_RESPONSE_LEN)?;
        zero_epoch(buf, ty)?;
        Ok(Self(buf))
    }
    /// The client's handshake identifier from the initiation.
    #[must_use]
    pub fn receiver_id(&self) -> u64 {
        be64(self.0, 4)
    }
    /// The Noise message.
    #[must_use]
    pub fn noise(&self) -> &'a [u8] {
        &self.0[12..Self::MAC1_OFFSET]
    }
    /// Bytes covered by mac1.
    #[must_use]
    pub fn mac1_covered(&self) -> &'a [u8] {
        &self.0[..Self::MAC1_OFFSET]
    }
    /// mac1.
    #[must_use]
    pub fn mac1(&self) -> [u8; MAC_LEN] {
        arr16(self.0, Self::MAC1_OFFSET)
    }
}

/// Cookie reply (gateway → client), [`COOKIE_REPLY_LEN`] bytes.
///
/// ```text
/// 0 version | 1 type=3 | 2..4 zero | 4..12 receiver handshake id | 12..36 XChaCha nonce
/// | 36..68 encrypted cookie (16) + tag (16)
/// ```
#[derive(Debug, Clone, Copy)]
pub struct CookieReply<'a>(&'a [u8]);

impl<'a> CookieReply<'a> {
    /// Check length and reserved bytes.
    ///
    /// # Errors
    /// A [`WireError`] if `buf` is not a well-formed cookie reply.
    pub fn new_checked(buf: &'a [u8]) -> Result<Self, WireError> {
        let ty = MessageType::CookieReply;
        if peek_type(buf)? != ty {
            return Err(WireError::UnknownType(buf[TYPE_OFFSET]));
        }
        exact(buf, ty, COOKIE_REPLY_LEN)?;
        zero_epoch(buf, ty)?;
        Ok(Self(buf))
    }
    /// The client's handshake identifier.
    #[must_use]
    pub fn receiver_id(&self) -> u64 {
        be64(self.0, 4)
    }
    /// The 24-byte nonce.
    #[must_use]
    pub fn nonce(&self) -> &'a [u8] {
        &self.0[12..36]
    }
    /// Encrypted cookie and tag.
    #[must_use]
    pub fn sealed_cookie(&self) -> &'a [u8] {
        &self.0[36..68]
    }
}

/// Emit a cookie reply.
#[must_use]
pub fn emit_cookie_reply(
    receiver_id: u64,
    nonce: &[u8; 24],
    sealed: &[u8; 32],
) -> [u8; COOKIE_REPLY_LEN] {
    let mut out = [0u8; COOKIE_REPLY_LEN];
    put_header(&mut out, MessageType::CookieReply, 0);
    out[4..12].copy_from_slice(&receiver_id.to_be_bytes());
    out[12..36].copy_from_slice(nonce);
    out[36..68].copy_from_slice(sealed);
    out
}

/// Data, heartbeat or terminate: the fixed 20-byte header followed by ciphertext and tag.
///
/// ```text
/// 0 version | 1 type (4 data, 5 heartbeat, 6 terminate) | 2..4 key epoch
/// | 4..12 SessionId | 12..20 counter | 20.. ciphertext | last 16 tag
/// ```
///
/// The header is the AEAD's associated data; the nonce is four zero bytes followed by the
/// counter, big-endian.
#[derive(Debug, Clone, Copy)]
pub struct TransportMsg<'a>(&'a [u8]);

impl<'a> TransportMsg<'a> {
    /// Check type and minimum length (header + tag; heartbeat and terminate exact).
    ///
    /// # Errors
    /// A [`WireError`] if `buf` is not a well-formed transport message.
    pub fn new_checked(buf: &'a [u8]) -> Result<Self, WireError> {
        let ty = peek_type(buf)?;
        let need = match ty {
            MessageType::Data => DATA_HEADER_LEN + TAG_LEN,
            MessageType::Heartbeat => DATA_HEADER_LEN + HEARTBEAT_PLAINTEXT_LEN + TAG_LEN,
            MessageType::Terminate => DATA_HEADER_LEN + TERMINATE_PLAINTEXT_LEN + TAG_LEN,
            _ => return Err(WireError::UnknownType(buf[TYPE_OFFSET])),
        };
        let ok = if ty == MessageType::Data {
            buf.len() >= need
        } else {
            buf.len() == need
        };
        if !ok {
            return Err(WireError::BadLength {
                ty,
                need,
                got: buf.len(),
            });
        }
        Ok(Self(buf))
    }
    /// Data, heartbeat or terminate.
    #[must_use]
    pub fn message_type(&self) -> MessageType {
        match self.0[TYPE_OFFSET] {
            5 => MessageType::Heartbeat,
            6 => MessageType::Terminate,
            _ => MessageType::Data,
        }
    }
    /// Low 16 bits of the key epoch the packet is sealed under.
    #[must_use]
    pub fn epoch(&self) -> u16 {
        be16(self.0, EPOCH_OFFSET)
    }
    /// The session.
    #[must_use]
    pub fn session_id(&self) -> SessionId {
        SessionId(be64(self.0, SESSION_ID_OFFSET))
    }
    /// The packet counter (the AEAD nonce).
    #[must_use]
    pub fn counter(&self) -> u64 {
        be64(self.0, COUNTER_OFFSET)
    }
    /// Length of the plaintext this message carries.
    #[must_use]
    pub fn plaintext_len(&self) -> usize {
        self.0.len() - DATA_HEADER_LEN - TAG_LEN
    }
}

/// Write a transport header into `out[..DATA_HEADER_LEN]`.
///
/// # Panics
/// If `out` is shorter than [`DATA_HEADER_LEN`]; callers size their buffers from the constant.
pub fn put_transport_header(
    out: &mut [u8],
    ty: MessageType,
    epoch: u16,
    sid: SessionId,
    counter: u64,
) {
    put_header(out, ty, epoch);
    out[SESSION_ID_OFFSET..COUNTER_OFFSET].copy_from_slice(&sid.to_bytes());
    out[COUNTER_OFFSET..DATA_HEADER_LEN].copy_from_slice(&counter.to_be_bytes());
}

macro_rules! reattach_view {
    ($(#[$doc:meta])* $name:ident, $ty:expr, $len:expr) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy)]
        pub struct $name<'a>(&'a [u8]);

        impl<'a> $name<'a> {
            /// Offset of the MAC; everything before it is covered.
            pub const MAC_OFFSET: usize = $len - MAC_LEN;

            /// Check type and exact length.
            ///
            /// # Errors
            /// A [`WireError`] if `buf` is not this message.
            pub fn new_checked(buf: &'a [u8]) -> Result<Self, WireError> {
                if peek_type(buf)? != $ty {
                    return Err(WireError::UnknownType(buf[TYPE_OFFSET]));
                }
                exact(buf, $ty, $len)?;
                Ok(Self(buf))
            }
            /// Low 16 bits of the key epoch whose control key made the MAC.
            #[must_use]
            pub fn epoch(&self) -> u16 {
                be16(self.0, EPOCH_OFFSET)
            }
            /// The session.
            #[must_use]
            pub fn session_id(&self) -> SessionId {
                SessionId(be64(self.0, SESSION_ID_OFFSET))
            }
            /// The request counter this message belongs to.
            #[must_use]
            pub fn request_counter(&self) -> u64 {
                be64(self.0, REATTACH_HEADER_LEN)
            }
            /// Bytes covered by the MAC.
            #[must_use]
            pub fn mac_covered(&self) -> &'a [u8] {
                &self.0[..Self::MAC_OFFSET]
            }
            /// The MAC.
            #[must_use]
            pub fn mac(&self) -> [u8; MAC_LEN] {
                arr16(self.0, Self::MAC_OFFSET)
            }
            /// The whole message.
            #[must_use]
            pub fn bytes(&self) -> &'a [u8] {
                self.0
            }
        }
    };
}

reattach_view!(
    /// Reattach request (client → gateway), [`REATTACH_REQUEST_LEN`] bytes.
    ///
    /// ```text
    /// 0..12 header (epoch, SessionId) | 12..20 request counter | 20..28 client time (ms since
    /// the session was established) | 28 transport | 29..36 zero | 36..52 challenge echo
    /// (zero if none) | 52..68 proof | 68..84 MAC
    /// ```
    ReattachRequest,
    MessageType::ReattachRequest,
    REATTACH_REQUEST_LEN
);

impl<'a> ReattachRequest<'a> {
    /// Milliseconds since the session was established, by the client's monotonic clock.
    #[must_use]
    pub fn client_time_ms(&self) -> u64 {
        be64(self.0, 20)
    }
    /// Wire code of the transport the client sends on.
    #[must_use]
    pub fn transport_code(&self) -> u8 {
        self.0[28]
    }
    /// Echo of a challenge token received at this path, or zero.
    #[must_use]
    pub fn challenge_echo(&self) -> [u8; TOKEN_LEN] {
        arr16(self.0, 36)
    }
    /// The asymmetric proof of possession of the client identity key.
    #[must_use]
    pub fn proof(&self) -> [u8; MAC_LEN] {
        arr16(self.0, 52)
    }
    /// Bytes covered by the proof.
    #[must_use]
    pub fn proof_covered(&self) -> &'a [u8] {
        &self.0[..52]
    }
    /// Whether the reserved bytes are zero.
    #[must_use]
    pub fn reserved_ok(&self) -> bool {
        self.0[29..36].iter().all(|&b| b == 0)
    }
}

reattach_view!(
    /// Reattach challenge (gateway → client at the path under validation),
    /// [`REATTACH_CHALLENGE_LEN`] bytes.
    ///
    /// ```text
    /// 0..12 header | 12..20 request counter (0: unsolicited, after a NAT rebind) | 20..36 token
    /// | 36..52 MAC
    /// ```
    ReattachChallenge,
    MessageType::ReattachChallenge,
    REATTACH_CHALLENGE_LEN
);

reattach_view!(
    /// Reattach response (client → gateway), [`REATTACH_RESPONSE_LEN`] bytes: the challenge's
    /// request counter and token, MACed by the client.
    ReattachResponse,
    MessageType::ReattachResponse,
    REATTACH_RESPONSE_LEN
);

macro_rules! token_accessor {
    ($name:ident) => {
        impl $name<'_> {
            /// The path-validation token.
            #[must_use]
            pub fn token(&self) -> [u8; TOKEN_LEN] {
                arr16(self.0, 20)
            }
        }
    };
}
token_accessor!(ReattachChallenge);
token_accessor!(ReattachResponse);

reattach_view!(
    /// Reattach ack (gateway → client), [`REATTACH_ACK_LEN`] bytes.
    ///
    /// ```text
    /// 0..12 header | 12..20 request counter | 20..28 new state version | 28..44 MAC
    /// ```
    ReattachAck,
    MessageType::ReattachAck,
    REATTACH_ACK_LEN
);

impl ReattachAck<'_> {
    /// The session's state version after the bind.
    #[must_use]
    pub fn state_version(&self) -> u64 {
        be64(self.0, 20)
    }
}

reattach_view!(
    /// Reattach reject (gateway → client), [`REATTACH_REJECT_LEN`] bytes.
    ///
    /// ```text
    /// 0..12 header | 12..20 request counter | 20 reject code | 21..28 zero | 28..44 MAC
    /// (all zero when the gateway could not authenticate the request: such a reject is a hint
    /// and never changes the client's session)
    /// ```
    ReattachReject,
    MessageType::ReattachReject,
    REATTACH_REJECT_LEN
);

impl ReattachReject<'_> {
    /// The reject code's wire value.
    #[must_use]
    pub fn code(&self) -> u8 {
        self.0[20]
    }
}

/// Fields of a reattach request before MAC and proof are appended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReattachRequestFields {
    /// Key epoch (low 16 bits) whose control key MACs the request.
    pub epoch: u16,
    /// The session.
    pub session_id: SessionId,
    /// Per-session request counter, anti-replayed by the gateway.
    pub counter: u64,
    /// Client time in ms since the session was established.
    pub client_time_ms: u64,
    /// Transport wire code.
    pub transport: u8,
    /// Echo of a challenge token, or zero.
    pub challenge_echo: [u8; TOKEN_LEN],
}

/// Write the fields of a reattach request; proof and MAC are filled by the caller.
#[must_use]
pub fn emit_reattach_request(f: &ReattachRequestFields) -> [u8; REATTACH_REQUEST_LEN] {
    let mut out = [0u8; REATTACH_REQUEST_LEN];
    put_header(&mut out, MessageType::ReattachRequest, f.epoch);
    out[4..12].copy_from_slice(&f.session_id.to_bytes());
    out[12..20].copy_from_slice(&f.counter.to_be_bytes());
    out[20..28].copy_from_slice(&f.client_time_ms.to_be_bytes());
    out[28] = f.transport;
    out[36..52].copy_from_slice(&f.challenge_echo);
    out
}

/// Write the header and request counter of a reattach message of fixed length `N`; the
/// type-specific body and the MAC are filled by the caller.
#[must_use]
pub fn emit_reattach_common<const N: usize>(
    ty: MessageType,
    epoch: u16,
    sid: SessionId,
    request_counter: u64,
) -> [u8; N] {
    let mut out = [0u8; N];
    put_header(&mut out, ty, epoch);
    out[4..12].copy_from_slice(&sid.to_bytes());
    out[12..20].copy_from_slice(&request_counter.to_be_bytes());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lengths_are_as_documented() {
        assert_eq!(HANDSHAKE_INIT_LEN, 164);
        assert_eq!(HANDSHAKE_RESPONSE_LEN, 108);
        assert_eq!(COOKIE_REPLY_LEN, 68);
        assert_eq!(REATTACH_REQUEST_LEN, 84);
        assert_eq!(REATTACH_CHALLENGE_LEN, 52);
        assert_eq!(REATTACH_ACK_LEN, 44);
        assert_eq!(REATTACH_REJECT_LEN, 44);
        // Anti-amplification: a challenge is at most 3x the smallest message that can trigger it.
        const { assert!(REATTACH_CHALLENGE_LEN <= 3 * (DATA_HEADER_LEN + TAG_LEN)) };
    }

    #[test]
    fn header_fields_roundtrip() {
        let mut buf = [0u8; DATA_HEADER_LEN + TAG_LEN + 3];
        let sid = SessionId::compose(3, 1, 0xABCD_EF01_2345);
        put_transport_header(&mut buf, MessageType::Data, 7, sid, 42);
        let Ok(Message::Transport(t)) = parse(&buf) else {
            panic!("data header did not parse")
        };
        assert_eq!(t.session_id(), sid);
        assert_eq!(t.session_id().owner_core(), 3);
        assert_eq!(t.session_id().owner_node(), 1);
        assert_eq!(t.counter(), 42);
        assert_eq!(t.epoch(), 7);
        assert_eq!(t.plaintext_len(), 3);
    }

    #[test]
    fn rejects_are_typed() {
        assert_eq!(parse(&[]).unwrap_err(), WireError::Truncated);
        assert_eq!(parse(&[2, 4, 0, 0]).unwrap_err(), WireError::BadVersion(2));
        assert_eq!(
            parse(&[1, 99, 0, 0]).unwrap_err(),
            WireError::UnknownType(99)
        );
        assert!(matches!(
            parse(&[1, 4, 0, 0, 1]),
            Err(WireError::BadLength { .. })
        ));
        let mut init = [0u8; HANDSHAKE_INIT_LEN];
        put_header(&mut init, MessageType::HandshakeInit, 1);
        assert_eq!(
            parse(&init).unwrap_err(),
            WireError::NonZeroReserved(MessageType::HandshakeInit)
        );
    }

    #[test]
    fn reattach_request_roundtrip() {
        let f = ReattachRequestFields {
            epoch: 2,
            session_id: SessionId(9),
            counter: 5,
            client_time_ms: 1234,
            transport: 1,
            challenge_echo: [7; 16],
        };
        let bytes = emit_reattach_request(&f);
        let Ok(Message::ReattachRequest(r)) = parse(&bytes) else {
            panic!("request did not parse")
        };
        assert_eq!(r.session_id(), SessionId(9));
        assert_eq!(r.request_counter(), 5);
        assert_eq!(r.client_time_ms(), 1234);
        assert_eq!(r.transport_code(), 1);
        assert_eq!(r.challenge_echo(), [7; 16]);
        assert!(r.reserved_ok());
        assert_eq!(r.epoch(), 2);
    }
}
