//! The interface between the Jumping control process and the data plane.
//!
//! The data plane is its own process (`jumping-dataplane`): it owns the per-core workers and
//! keeps forwarding established sessions while the control process restarts. The two talk
//! over one local Unix stream socket (the data plane listens, mode 0600, one control
//! connection at a time), each message preceded by its length ([`frame_into`]) and starting
//! with a [`Header`]: a magic,
//! the interface [`VERSION`], the message kind and a sequence number that the data plane
//! echoes in its answer. A peer speaking another version is refused at [`ToDataplane::Hello`].
//!
//! - Control → data plane ([`ToDataplane`]): install a session on its owner core, change its
//!   active path, hand it the next key epoch after a rekey, retire it, list the sessions it
//!   holds (resynchronisation after a control-process restart), read the counters, and send a
//!   control datagram from the tunnel port (io_uring backend).
//! - Data plane → control ([`FromDataplane`]): answers, and unsolicited [`Event`]s — an
//!   authenticated packet from an address that is not the session's active path (start path
//!   validation at once), replay and authentication drops by session — and control datagrams
//!   received on the tunnel port by the io_uring backend.
//!
//! This crate is sans I/O: [`ToDataplane::encode`] / [`ToDataplane::decode`] and the same for
//! [`FromDataplane`]. Decoding never panics and returns a typed [`DecodeError`]; it is fuzzed.
//! Session keys cross this socket (as [`EpochMaterial`], zeroed on drop): the socket is
//! root-only, and nothing here prints a key.
#![forbid(unsafe_code)]

use core::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use jumping_protocol::keys::{EpochMaterial, KeySetMaterial};
use jumping_protocol::path::Transport;
use jumping_protocol::{Path, SessionId};

/// Interface version; both sides must agree. 2: [`FromDataplane::ControlDatagram`] carries
/// its receive time; 3: [`Event::Drops`] carries its source.
pub const VERSION: u16 = 3;
/// Largest message either side sends or accepts.
pub const MAX_MESSAGE: usize = 64 * 1024;
/// Where the data plane listens unless configured otherwise.
pub const DEFAULT_SOCKET: &str = "/run/jumping/dataplane.sock";
/// Words of the receive replay window carried by [`Install`].
pub const WINDOW_WORDS: usize = 32;
/// Sessions per [`FromDataplane::Sessions`] message.
pub const SESSIONS_PER_MESSAGE: usize = 256;

const MAGIC: [u8; 2] = *b"JD";
/// Bytes of [`Header`] on the wire.
pub const HEADER_LEN: usize = 10;

/// The frame header of every message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// Message kind (its enum's wire code).
    pub kind: u8,
    /// Sequence number chosen by the control process; answers echo it, events carry 0.
    pub seq: u32,
}

/// Why a message did not decode.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// Shorter than its fields.
    #[error("message truncated")]
    Truncated,
    /// Longer than its fields.
    #[error("{0} trailing bytes")]
    Trailing(usize),
    /// Larger than [`MAX_MESSAGE`].
    #[error("message larger than {MAX_MESSAGE} bytes")]
    TooLarge,
    /// Not a data-plane interface message.
    #[error("bad magic")]
    BadMagic,
    /// The peer speaks another interface version.
    #[error("interface version {0}, this side speaks {VERSION}")]
    Version(u16),
    /// Unknown message kind.
    #[error("unknown message kind {0}")]
    Kind(u8),
    /// A field holds a value outside its range.
    #[error("invalid {0}")]
    Invalid(&'static str),
}

/// A session as the control process installs it on its owner worker.
#[derive(Debug, Clone)]
pub struct Install {
    /// The session.
    pub id: SessionId,
    /// Owner worker index (SPEC.md section 7: sticky SessionId → core).
    pub owner: u8,
    /// The client's virtual address on the inside: inner packets to it go to this session.
    pub inner: IpAddr,
    /// Every key epoch held.
    pub keys: KeySetMaterial,
    /// The next send counter (the worker owns it from now on).
    pub send_counter: u64,
    /// Receive replay window: highest counter accepted.
    pub window_top: Option<u64>,
    /// Receive replay window bitmap.
    pub window: [u64; WINDOW_WORDS],
    /// Active path, if any.
    pub active: Option<Path>,
}

/// Control process → data plane.
#[derive(Debug, Clone)]
pub enum ToDataplane {
    /// First message of a connection: the version check. Answered by
    /// [`FromDataplane::HelloAck`].
    Hello,
    /// Install a session on its owner. Refused if it is installed already (an install never
    /// replaces: the worker's send counter must not roll back).
    Install(Box<Install>),
    /// Set (or clear) a session's active path: a reattach was accepted, or the path died.
    SetPath {
        /// Session.
        id: SessionId,
        /// New active path.
        path: Option<Path>,
    },
    /// A rekey completed: the worker opens the new epoch and promotes it on the first packet
    /// under it.
    NextKeys {
        /// Session.
        id: SessionId,
        /// The epoch.
        keys: Box<EpochMaterial>,
    },
    /// Remove a session from the data plane.
    Retire {
        /// Session.
        id: SessionId,
    },
    /// Move a session to worker `to` (draining a core). The old owner hands the session's
    /// whole state to the new one through the ring it already hands packets over, so no
    /// packet is lost or reordered; answered with [`FromDataplane::Done`] once the new owner
    /// holds it (later commands for the session are held until then and applied in order).
    Move {
        /// Session.
        id: SessionId,
        /// New owner worker.
        to: u8,
    },
    /// Ask the client to rekey: the session's heartbeat echoes carry the request
    /// (`wire::HEARTBEAT_FLAG_REKEY`) until the next key epoch is installed.
    RequestRekey {
        /// Session.
        id: SessionId,
    },
    /// List every session the data plane holds (answered by one or more
    /// [`FromDataplane::Sessions`]).
    ListSessions,
    /// Read every worker's counters (answered by [`FromDataplane::Stats`]).
    Stats,
    /// Send a control datagram (handshake response, reattach challenge...) from the tunnel
    /// port to `to` (io_uring backend; with AF_XDP the control process has its own socket).
    Transmit {
        /// Destination.
        to: SocketAddr,
        /// The UDP payload.
        datagram: Vec<u8>,
    },
}

/// Which I/O the workers use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// XDP steering into AF_XDP sockets.
    AfXdp,
    /// io_uring over UDP sockets.
    IoUring,
}

impl Backend {
    /// Name as in configuration and logs.
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Backend::AfXdp => "af_xdp",
            Backend::IoUring => "io_uring",
        }
    }
}

/// Why a worker dropped a packet; [`DropReason::index`] is its counter slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DropReason {
    /// Not a well-formed transport message (or not Ethernet/IP/UDP on AF_XDP).
    Malformed,
    /// A message type the data plane does not handle.
    NotDataPlane,
    /// Not held by the data plane (unknown, retired, or never installed).
    UnknownSession,
    /// No key for the epoch.
    UnknownEpoch,
    /// Counter seen before or too old.
    Replay,
    /// The AEAD tag does not verify.
    AuthFailed,
    /// No active path to send to (the session is recovering).
    NoActivePath,
    /// The buffer cannot hold header, packet and tag.
    TooLarge,
    /// An inner packet for an address no session has.
    NoRoute,
    /// The ring to the owner worker was full.
    HandoffFull,
    /// No transmit buffer or ring slot.
    TxFailed,
    /// Writing to the inside interface failed.
    InsideFailed,
}

impl DropReason {
    /// Every reason, by index.
    pub const ALL: [DropReason; 12] = [
        DropReason::Malformed,
        DropReason::NotDataPlane,
        DropReason::UnknownSession,
        DropReason::UnknownEpoch,
        DropReason::Replay,
        DropReason::AuthFailed,
        DropReason::NoActivePath,
        DropReason::TooLarge,
        DropReason::NoRoute,
        DropReason::HandoffFull,
        DropReason::TxFailed,
        DropReason::InsideFailed,
    ];
    /// Number of reasons.
    pub const COUNT: usize = Self::ALL.len();

    /// Stable counter index (also the wire code).
    #[must_use]
    pub const fn index(self) -> usize {
        self as usize
    }

    /// Counter name.
    #[must_use]
    pub const fn name(self) -> &'static str {
        match self {
            DropReason::Malformed => "malformed",
            DropReason::NotDataPlane => "not_data_plane",
            DropReason::UnknownSession => "unknown_session",
            DropReason::UnknownEpoch => "unknown_epoch",
            DropReason::Replay => "replay",
            DropReason::AuthFailed => "auth_failed",
            DropReason::NoActivePath => "no_active_path",
            DropReason::TooLarge => "too_large",
            DropReason::NoRoute => "no_route",
            DropReason::HandoffFull => "handoff_full",
            DropReason::TxFailed => "tx_failed",
            DropReason::InsideFailed => "inside_failed",
        }
    }
}

/// One worker's counters.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WorkerStats {
    /// The CPU the worker is pinned to.
    pub cpu: u32,
    /// Tunnel datagrams received (including those handed to another worker).
    pub rx_datagrams: u64,
    /// Tunnel bytes received.
    pub rx_bytes: u64,
    /// Inner packets delivered to the inside interface.
    pub delivered: u64,
    /// Inner packets read from the inside interface.
    pub inside_packets: u64,
    /// Datagrams sealed and sent toward clients (data and heartbeat echoes).
    pub sent: u64,
    /// Bytes sent toward clients.
    pub sent_bytes: u64,
    /// Packets handed to their owner worker (arrived here, owned elsewhere).
    pub handed_off: u64,
    /// Packets received from other workers.
    pub taken_over: u64,
    /// Key epochs promoted.
    pub epochs_promoted: u64,
    /// Sessions held.
    pub sessions: u64,
    /// Packets that had to expand their session's keys (key cache misses).
    pub key_cache_misses: u64,
    /// Events this worker could not queue to the control thread (its ring was full).
    pub events_lost: u64,
    /// Drops by [`DropReason::index`].
    pub drops: [u64; DropReason::COUNT],
}

/// Counters of the whole data plane.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stats {
    /// The backend in use.
    pub backend: Backend,
    /// Per worker.
    pub workers: Vec<WorkerStats>,
    /// Events the control thread could not forward (no control process connected, or its
    /// socket stopped taking them); a worker's own losses are in its [`WorkerStats`].
    pub events_lost: u64,
}

/// One session as the data plane holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionSummary {
    /// The session.
    pub id: SessionId,
    /// Owner worker.
    pub owner: u8,
    /// Client virtual address.
    pub inner: IpAddr,
    /// Active path.
    pub active: Option<Path>,
    /// Current key epoch.
    pub epoch: u32,
    /// Next send counter.
    pub send_counter: u64,
    /// Packets delivered inward.
    pub rx_packets: u64,
    /// Inner bytes delivered inward.
    pub rx_bytes: u64,
    /// Packets sealed outward.
    pub tx_packets: u64,
    /// Inner bytes sealed outward.
    pub tx_bytes: u64,
    /// Milliseconds since the last authenticated packet from the active path (saturates at
    /// `u32::MAX`); the control process's path-dead and quality timers run on it.
    pub idle_ms: u32,
}

/// Something the control process must know or act on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// An authenticated packet of `id` came from `path`, which is not its active path (NAT
    /// rebind or client move): start path validation at once (SPEC.md section 4). Reported
    /// again at most once a second per session and address while packets keep coming from it.
    NewPath {
        /// Session.
        id: SessionId,
        /// Where the packet came from.
        path: Path,
    },
    /// Packets of `id` dropped for `reason` (replay or authentication) since the last report
    /// (at most one a second per session and reason).
    Drops {
        /// Session.
        id: SessionId,
        /// Why.
        reason: DropReason,
        /// How many.
        count: u32,
        /// Where the last of them came from (the control process raises a SECURITY_EVENT
        /// naming it).
        source: Path,
    },
    /// A command could not be applied by its worker (install into a full table, update of a
    /// session that is not there).
    Refused {
        /// Session.
        id: SessionId,
        /// What was refused.
        what: RefusedCommand,
    },
}

/// Which command [`Event::Refused`] reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefusedCommand {
    /// An install (table full or session present).
    Install,
    /// An update of a session not present.
    Update,
}

/// Why the data plane refused a request outright.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The first message was not [`ToDataplane::Hello`].
    NoHello,
    /// The owner names no worker.
    NoSuchWorker,
    /// The worker's command ring is full: retry.
    Busy,
    /// The session is not held.
    UnknownSession,
    /// The session is already installed.
    Exists,
    /// Another session has this inner address.
    InnerInUse,
    /// The key material is unusable.
    BadKeys,
    /// The request cannot be served on this backend.
    Unsupported,
    /// Sending failed.
    Io,
}

/// Data plane → control process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FromDataplane {
    /// Answer to [`ToDataplane::Hello`].
    HelloAck {
        /// Workers running.
        workers: u8,
        /// Their backend.
        backend: Backend,
        /// Sessions held now (non-zero after a control restart: resynchronise).
        sessions: u32,
    },
    /// The request was accepted (for commands: queued to its worker, applied at the worker's
    /// next batch boundary; a later failure is an [`Event::Refused`]).
    Done,
    /// The request was refused.
    Refused(Refusal),
    /// Part of the answer to [`ToDataplane::ListSessions`]; `more` is false on the last.
    Sessions {
        /// Sessions.
        sessions: Vec<SessionSummary>,
        /// Whether more messages follow.
        more: bool,
    },
    /// Answer to [`ToDataplane::Stats`].
    Stats(Stats),
    /// Unsolicited.
    Event(Event),
    /// A control message received on the tunnel port (io_uring backend).
    ControlDatagram {
        /// Sender.
        from: SocketAddr,
        /// When a worker took it off its receive ring: nanoseconds since the Unix epoch
        /// (`CLOCK_REALTIME`), 0 if unknown. The control process sheds handshake initiations
        /// that waited too long, as it does with its own socket's timestamps.
        received_unix_ns: u64,
        /// The UDP payload.
        datagram: Vec<u8>,
    },
}

// ---------------------------------------------------------------------------------------------
// Encoding: big-endian fixed-width fields, options as a 0/1 byte, sequences with a u16/u32 count.

struct W(Vec<u8>);

impl W {
    fn new(kind: u8, seq: u32) -> Self {
        let mut v = Vec::with_capacity(128);
        v.extend_from_slice(&MAGIC);
        v.extend_from_slice(&VERSION.to_be_bytes());
        v.push(kind);
        v.push(0);
        v.extend_from_slice(&seq.to_be_bytes());
        W(v)
    }
    fn u8(&mut self, x: u8) {
        self.0.push(x);
    }
    fn u16(&mut self, x: u16) {
        self.0.extend_from_slice(&x.to_be_bytes());
    }
    fn u32(&mut self, x: u32) {
        self.0.extend_from_slice(&x.to_be_bytes());
    }
    fn u64(&mut self, x: u64) {
        self.0.extend_from_slice(&x.to_be_bytes());
    }
    fn bytes(&mut self, b: &[u8]) {
        self.0.extend_from_slice(b);
    }
    fn ip(&mut self, ip: IpAddr) {
        match ip {
            IpAddr::V4(a) => {
                self.u8(4);
                self.bytes(&a.octets());
            }
            IpAddr::V6(a) => {
                self.u8(6);
                self.bytes(&a.octets());
            }
        }
    }
    fn addr(&mut self, a: SocketAddr) {
        self.ip(a.ip());
        self.u16(a.port());
    }
    fn path(&mut self, p: Option<Path>) {
        match p {
            None => self.u8(0),
            Some(p) => {
                self.u8(p.transport.code());
                self.addr(p.addr);
            }
        }
    }
    fn epoch(&mut self, m: &EpochMaterial) {
        self.u32(m.epoch);
        self.u8(m.suite);
        self.bytes(&m.send);
        self.bytes(&m.recv);
        self.bytes(&m.ctrl_send);
        self.bytes(&m.ctrl_recv);
        self.u64(m.age_ns);
        self.u64(m.sent);
    }
    fn opt_u64(&mut self, x: Option<u64>) {
        match x {
            None => self.u8(0),
            Some(x) => {
                self.u8(1);
                self.u64(x);
            }
        }
    }
    fn blob(&mut self, b: &[u8]) {
        self.u32(u32::try_from(b.len()).unwrap_or(u32::MAX));
        self.bytes(b);
    }
}

struct R<'a> {
    b: &'a [u8],
}

impl<'a> R<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        if self.b.len() < n {
            return Err(DecodeError::Truncated);
        }
        let (h, t) = self.b.split_at(n);
        self.b = t;
        Ok(h)
    }
    fn arr<const N: usize>(&mut self) -> Result<[u8; N], DecodeError> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N)?);
        Ok(a)
    }
    fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.arr::<1>()?[0])
    }
    fn u16(&mut self) -> Result<u16, DecodeError> {
        Ok(u16::from_be_bytes(self.arr()?))
    }
    fn u32(&mut self) -> Result<u32, DecodeError> {
        Ok(u32::from_be_bytes(self.arr()?))
    }
    fn u64(&mut self) -> Result<u64, DecodeError> {
        Ok(u64::from_be_bytes(self.arr()?))
    }
    fn bool(&mut self) -> Result<bool, DecodeError> {
        match self.u8()? {
            0 => Ok(false),
            1 => Ok(true),
            _ => Err(DecodeError::Invalid("flag")),
        }
    }
    fn sid(&mut self) -> Result<SessionId, DecodeError> {
        match self.u64()? {
            0 => Err(DecodeError::Invalid("session id 0")),
            x => Ok(SessionId(x)),
        }
    }
    fn ip(&mut self) -> Result<IpAddr, DecodeError> {
        match self.u8()? {
            4 => Ok(IpAddr::V4(Ipv4Addr::from(self.arr::<4>()?))),
            6 => Ok(IpAddr::V6(Ipv6Addr::from(self.arr::<16>()?))),
            _ => Err(DecodeError::Invalid("address family")),
        }
    }
    fn addr(&mut self) -> Result<SocketAddr, DecodeError> {
        let ip = self.ip()?;
        Ok(SocketAddr::new(ip, self.u16()?))
    }
    fn path(&mut self) -> Result<Option<Path>, DecodeError> {
        match self.u8()? {
            0 => Ok(None),
            code => {
                let transport =
                    Transport::from_code(code).ok_or(DecodeError::Invalid("transport"))?;
                Ok(Some(Path {
                    transport,
                    addr: self.addr()?,
                }))
            }
        }
    }
    fn epoch(&mut self) -> Result<EpochMaterial, DecodeError> {
        Ok(EpochMaterial {
            epoch: self.u32()?,
            suite: self.u8()?,
            send: self.arr()?,
            recv: self.arr()?,
            ctrl_send: self.arr()?,
            ctrl_recv: self.arr()?,
            age_ns: self.u64()?,
            sent: self.u64()?,
        })
    }
    fn opt_u64(&mut self) -> Result<Option<u64>, DecodeError> {
        Ok(if self.bool()? {
            Some(self.u64()?)
        } else {
            None
        })
    }
    fn blob(&mut self) -> Result<Vec<u8>, DecodeError> {
        let n = self.u32()? as usize;
        Ok(self.take(n)?.to_vec())
    }
    fn drop_reason(&mut self) -> Result<DropReason, DecodeError> {
        DropReason::ALL
            .get(usize::from(self.u8()?))
            .copied()
            .ok_or(DecodeError::Invalid("drop reason"))
    }
    fn end(self) -> Result<(), DecodeError> {
        if self.b.is_empty() {
            Ok(())
        } else {
            Err(DecodeError::Trailing(self.b.len()))
        }
    }
}

/// Check the frame header of `msg` and return it with the body.
///
/// # Errors
/// [`DecodeError`] for a short, oversized, foreign or other-version message.
pub fn split_header(msg: &[u8]) -> Result<(Header, &[u8]), DecodeError> {
    if msg.len() > MAX_MESSAGE {
        return Err(DecodeError::TooLarge);
    }
    let mut r = R { b: msg };
    if r.arr::<2>()? != MAGIC {
        return Err(DecodeError::BadMagic);
    }
    let version = r.u16()?;
    if version != VERSION {
        return Err(DecodeError::Version(version));
    }
    let kind = r.u8()?;
    if r.u8()? != 0 {
        return Err(DecodeError::Invalid("reserved byte"));
    }
    let seq = r.u32()?;
    Ok((Header { kind, seq }, r.b))
}

impl ToDataplane {
    /// Wire code of the message kind.
    #[must_use]
    pub fn kind(&self) -> u8 {
        match self {
            ToDataplane::Hello => 1,
            ToDataplane::Install(_) => 2,
            ToDataplane::SetPath { .. } => 3,
            ToDataplane::NextKeys { .. } => 4,
            ToDataplane::Retire { .. } => 5,
            ToDataplane::ListSessions => 6,
            ToDataplane::Stats => 7,
            ToDataplane::Transmit { .. } => 8,
            ToDataplane::Move { .. } => 9,
            ToDataplane::RequestRekey { .. } => 10,
        }
    }

    /// Encode with sequence number `seq`. The buffer holds key material for installs and
    /// rekeys: callers zero it after sending ([`zeroize_message`]).
    #[must_use]
    pub fn encode(&self, seq: u32) -> Vec<u8> {
        let mut w = W::new(self.kind(), seq);
        match self {
            ToDataplane::Hello | ToDataplane::ListSessions | ToDataplane::Stats => {}
            ToDataplane::Install(i) => {
                w.u64(i.id.0);
                w.u8(i.owner);
                w.ip(i.inner);
                match &i.keys.previous {
                    None => w.u8(0),
                    Some((k, left)) => {
                        w.u8(1);
                        w.epoch(k);
                        w.u64(*left);
                    }
                }
                w.epoch(&i.keys.current);
                match &i.keys.next {
                    None => w.u8(0),
                    Some(k) => {
                        w.u8(1);
                        w.epoch(k);
                    }
                }
                w.u64(i.send_counter);
                w.opt_u64(i.window_top);
                for x in i.window {
                    w.u64(x);
                }
                w.path(i.active);
            }
            ToDataplane::SetPath { id, path } => {
                w.u64(id.0);
                w.path(*path);
            }
            ToDataplane::NextKeys { id, keys } => {
                w.u64(id.0);
                w.epoch(keys);
            }
            ToDataplane::Retire { id } | ToDataplane::RequestRekey { id } => w.u64(id.0),
            ToDataplane::Move { id, to } => {
                w.u64(id.0);
                w.u8(*to);
            }
            ToDataplane::Transmit { to, datagram } => {
                w.addr(*to);
                w.blob(datagram);
            }
        }
        w.0
    }

    /// Decode one message.
    ///
    /// # Errors
    /// [`DecodeError`]; never panics.
    pub fn decode(msg: &[u8]) -> Result<(Header, Self), DecodeError> {
        let (h, body) = split_header(msg)?;
        let mut r = R { b: body };
        let m = match h.kind {
            1 => ToDataplane::Hello,
            2 => {
                let id = r.sid()?;
                let owner = r.u8()?;
                let inner = r.ip()?;
                let previous = if r.bool()? {
                    let k = r.epoch()?;
                    Some((k, r.u64()?))
                } else {
                    None
                };
                let current = r.epoch()?;
                let next = if r.bool()? { Some(r.epoch()?) } else { None };
                let send_counter = r.u64()?;
                let window_top = r.opt_u64()?;
                let mut window = [0u64; WINDOW_WORDS];
                for x in &mut window {
                    *x = r.u64()?;
                }
                let active = r.path()?;
                ToDataplane::Install(Box::new(Install {
                    id,
                    owner,
                    inner,
                    keys: KeySetMaterial {
                        previous,
                        current,
                        next,
                    },
                    send_counter,
                    window_top,
                    window,
                    active,
                }))
            }
            3 => ToDataplane::SetPath {
                id: r.sid()?,
                path: r.path()?,
            },
            4 => ToDataplane::NextKeys {
                id: r.sid()?,
                keys: Box::new(r.epoch()?),
            },
            5 => ToDataplane::Retire { id: r.sid()? },
            6 => ToDataplane::ListSessions,
            7 => ToDataplane::Stats,
            8 => ToDataplane::Transmit {
                to: r.addr()?,
                datagram: r.blob()?,
            },
            9 => ToDataplane::Move {
                id: r.sid()?,
                to: r.u8()?,
            },
            10 => ToDataplane::RequestRekey { id: r.sid()? },
            k => return Err(DecodeError::Kind(k)),
        };
        r.end()?;
        Ok((h, m))
    }
}

/// Append `msg` to `out` as the socket carries it: its length (`u32`, big-endian), then
/// its bytes. Either side frames the messages of a turn into one buffer and writes it once.
///
/// # Errors
/// `msg` is longer than a `u32` can say (nothing is appended).
pub fn frame_into(out: &mut Vec<u8>, msg: &[u8]) -> Result<(), core::num::TryFromIntError> {
    let len = u32::try_from(msg.len())?;
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(msg);
    Ok(())
}

/// Overwrite an encoded message (it may hold key material) before freeing it.
pub fn zeroize_message(mut msg: Vec<u8>) {
    // Volatile-free but not elided: the buffer is read back below through `black_box`.
    msg.iter_mut().for_each(|b| *b = 0);
    core::hint::black_box(&msg);
}

impl Refusal {
    const ALL: [Refusal; 9] = [
        Refusal::NoHello,
        Refusal::NoSuchWorker,
        Refusal::Busy,
        Refusal::UnknownSession,
        Refusal::Exists,
        Refusal::InnerInUse,
        Refusal::BadKeys,
        Refusal::Unsupported,
        Refusal::Io,
    ];
}

impl FromDataplane {
    /// Wire code of the message kind.
    #[must_use]
    pub fn kind(&self) -> u8 {
        match self {
            FromDataplane::HelloAck { .. } => 0x81,
            FromDataplane::Done => 0x82,
            FromDataplane::Refused(_) => 0x83,
            FromDataplane::Sessions { .. } => 0x84,
            FromDataplane::Stats(_) => 0x85,
            FromDataplane::Event(_) => 0x86,
            FromDataplane::ControlDatagram { .. } => 0x87,
        }
    }

    /// Encode with sequence number `seq` (the request's; 0 for events and datagrams).
    #[must_use]
    pub fn encode(&self, seq: u32) -> Vec<u8> {
        let mut w = W::new(self.kind(), seq);
        match self {
            FromDataplane::HelloAck {
                workers,
                backend,
                sessions,
            } => {
                w.u8(*workers);
                w.u8(backend_code(*backend));
                w.u32(*sessions);
            }
            FromDataplane::Done => {}
            FromDataplane::Refused(r) => w.u8(*r as u8),
            FromDataplane::Sessions { sessions, more } => {
                w.u16(u16::try_from(sessions.len()).unwrap_or(u16::MAX));
                for s in sessions.iter().take(usize::from(u16::MAX)) {
                    w.u64(s.id.0);
                    w.u8(s.owner);
                    w.ip(s.inner);
                    w.path(s.active);
                    w.u32(s.epoch);
                    for x in [
                        s.send_counter,
                        s.rx_packets,
                        s.rx_bytes,
                        s.tx_packets,
                        s.tx_bytes,
                    ] {
                        w.u64(x);
                    }
                    w.u32(s.idle_ms);
                }
                w.u8(u8::from(*more));
            }
            FromDataplane::Stats(s) => {
                w.u8(backend_code(s.backend));
                w.u64(s.events_lost);
                w.u16(u16::try_from(s.workers.len()).unwrap_or(u16::MAX));
                for ws in s.workers.iter().take(usize::from(u16::MAX)) {
                    w.u32(ws.cpu);
                    for x in [
                        ws.rx_datagrams,
                        ws.rx_bytes,
                        ws.delivered,
                        ws.inside_packets,
                        ws.sent,
                        ws.sent_bytes,
                        ws.handed_off,
                        ws.taken_over,
                        ws.epochs_promoted,
                        ws.sessions,
                        ws.key_cache_misses,
                        ws.events_lost,
                    ] {
                        w.u64(x);
                    }
                    for x in ws.drops {
                        w.u64(x);
                    }
                }
            }
            FromDataplane::Event(e) => match e {
                Event::NewPath { id, path } => {
                    w.u8(1);
                    w.u64(id.0);
                    w.path(Some(*path));
                }
                Event::Drops {
                    id,
                    reason,
                    count,
                    source,
                } => {
                    w.u8(2);
                    w.u64(id.0);
                    w.u8(reason.index() as u8);
                    w.u32(*count);
                    w.path(Some(*source));
                }
                Event::Refused { id, what } => {
                    w.u8(3);
                    w.u64(id.0);
                    w.u8(match what {
                        RefusedCommand::Install => 1,
                        RefusedCommand::Update => 2,
                    });
                }
            },
            FromDataplane::ControlDatagram {
                from,
                received_unix_ns,
                datagram,
            } => {
                w.addr(*from);
                w.u64(*received_unix_ns);
                w.blob(datagram);
            }
        }
        w.0
    }

    /// Decode one message.
    ///
    /// # Errors
    /// [`DecodeError`]; never panics.
    pub fn decode(msg: &[u8]) -> Result<(Header, Self), DecodeError> {
        let (h, body) = split_header(msg)?;
        let mut r = R { b: body };
        let m = match h.kind {
            0x81 => FromDataplane::HelloAck {
                workers: r.u8()?,
                backend: backend_from(r.u8()?)?,
                sessions: r.u32()?,
            },
            0x82 => FromDataplane::Done,
            0x83 => FromDataplane::Refused(
                Refusal::ALL
                    .get(usize::from(r.u8()?))
                    .copied()
                    .ok_or(DecodeError::Invalid("refusal"))?,
            ),
            0x84 => {
                let n = r.u16()?;
                let mut sessions = Vec::with_capacity(usize::from(n).min(SESSIONS_PER_MESSAGE));
                for _ in 0..n {
                    let id = r.sid()?;
                    let owner = r.u8()?;
                    let inner = r.ip()?;
                    let active = r.path()?;
                    let epoch = r.u32()?;
                    sessions.push(SessionSummary {
                        id,
                        owner,
                        inner,
                        active,
                        epoch,
                        send_counter: r.u64()?,
                        rx_packets: r.u64()?,
                        rx_bytes: r.u64()?,
                        tx_packets: r.u64()?,
                        tx_bytes: r.u64()?,
                        idle_ms: r.u32()?,
                    });
                }
                FromDataplane::Sessions {
                    sessions,
                    more: r.bool()?,
                }
            }
            0x85 => {
                let backend = backend_from(r.u8()?)?;
                let events_lost = r.u64()?;
                let n = r.u16()?;
                let mut workers = Vec::with_capacity(usize::from(n).min(256));
                for _ in 0..n {
                    let mut ws = WorkerStats {
                        cpu: r.u32()?,
                        rx_datagrams: r.u64()?,
                        rx_bytes: r.u64()?,
                        delivered: r.u64()?,
                        inside_packets: r.u64()?,
                        sent: r.u64()?,
                        sent_bytes: r.u64()?,
                        handed_off: r.u64()?,
                        taken_over: r.u64()?,
                        epochs_promoted: r.u64()?,
                        sessions: r.u64()?,
                        key_cache_misses: r.u64()?,
                        events_lost: r.u64()?,
                        drops: [0; DropReason::COUNT],
                    };
                    for d in &mut ws.drops {
                        *d = r.u64()?;
                    }
                    workers.push(ws);
                }
                FromDataplane::Stats(Stats {
                    backend,
                    workers,
                    events_lost,
                })
            }
            0x86 => FromDataplane::Event(match r.u8()? {
                1 => Event::NewPath {
                    id: r.sid()?,
                    path: r.path()?.ok_or(DecodeError::Invalid("path"))?,
                },
                2 => Event::Drops {
                    id: r.sid()?,
                    reason: r.drop_reason()?,
                    count: r.u32()?,
                    source: r.path()?.ok_or(DecodeError::Invalid("drop source"))?,
                },
                3 => Event::Refused {
                    id: r.sid()?,
                    what: match r.u8()? {
                        1 => RefusedCommand::Install,
                        2 => RefusedCommand::Update,
                        _ => return Err(DecodeError::Invalid("refused command")),
                    },
                },
                _ => return Err(DecodeError::Invalid("event")),
            }),
            0x87 => FromDataplane::ControlDatagram {
                from: r.addr()?,
                received_unix_ns: r.u64()?,
                datagram: r.blob()?,
            },
            k => return Err(DecodeError::Kind(k)),
        };
        r.end()?;
        Ok((h, m))
    }
}

fn backend_code(b: Backend) -> u8 {
    match b {
        Backend::AfXdp => 1,
        Backend::IoUring => 2,
    }
}

fn backend_from(code: u8) -> Result<Backend, DecodeError> {
    match code {
        1 => Ok(Backend::AfXdp),
        2 => Ok(Backend::IoUring),
        _ => Err(DecodeError::Invalid("backend")),
    }
}

/// The fuzzing oracle: decode `data` as either direction; whatever decodes must encode back
/// to exactly the same bytes (the encoding is canonical) and decode again. Panics on a
/// violation, which is what the fuzz target `dataplane_api` looks for.
pub fn fuzz_round_trip(data: &[u8]) {
    if let Ok((h, m)) = ToDataplane::decode(data) {
        assert_eq!(m.encode(h.seq), data, "request encoding not canonical");
    }
    if let Ok((h, m)) = FromDataplane::decode(data) {
        assert_eq!(m.encode(h.seq), data, "answer encoding not canonical");
        assert_eq!(FromDataplane::decode(&m.encode(h.seq)).map(|x| x.1), Ok(m));
    }
}

#[cfg(test)]
mod tests;
