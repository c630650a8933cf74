//! The data plane's XDP program and its shared layouts.
//!
//! `xdp/jumping_xdp.c` parses Ethernet → IPv4/IPv6 → UDP to a tunnel port → the tunnel header,
//! and redirects data and heartbeat messages into the AF_XDP socket of the worker that owns the
//! session (see the C file's header comment for every outcome). `build.rs` compiles it with
//! clang-19 and this crate embeds the object as [`XDP_OBJECT`].
//!
//! `xdp/jumping_inside.c` is the inside NIC's program (when the inside interface is AF_XDP):
//! Ethernet → IPv4/IPv6 → a destination address in `inside_routes` (the clients' virtual
//! addresses) → the AF_XDP socket of the receiving queue (`inside_xsks`); everything else to
//! the kernel. Embedded as [`INSIDE_OBJECT`], loaded with [`load_inside`], its routes kept by
//! [`InsideRoutes`].
//!
//! `xdp/jumping_maps.h` is the one definition of the layouts shared with the program: the map
//! value struct ([`SessionOwner`]), the counter enum ([`Counter`]) and the wire constants. The
//! Rust items here mirror it; the unit test `layout_matches_c_header` compares them against
//! values printed by a host program compiled from the header, and the wire constants are taken
//! from (and tested against) [`jumping_protocol::wire`].
//!
//! All `unsafe` code lives in [`test_run`] (raw `bpf(BPF_PROG_TEST_RUN)`, bpffs mounts).
#![deny(unsafe_code)]

use std::net::IpAddr;
use std::path::Path;

use aya::maps::{HashMap, MapData, PerCpuArray, XskMap};
use aya::programs::Xdp;
use aya::{Ebpf, EbpfLoader};
use jumping_protocol::wire::{self, MessageType};

#[allow(unsafe_code)]
pub mod test_run;

/// The compiled XDP object (ELF, BPF target), 32-byte aligned for the ELF parser.
pub static XDP_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/jumping_xdp.o"));

/// Name of the XDP program (its C function) in [`XDP_OBJECT`].
pub const PROGRAM_NAME: &str = "jumping_xdp";

/// The compiled inside-NIC XDP object (`xdp/jumping_inside.c`).
pub static INSIDE_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/jumping_inside.o"));

/// Name of the XDP program in [`INSIDE_OBJECT`].
pub const INSIDE_PROGRAM_NAME: &str = "jumping_inside";

/// Map names in [`XDP_OBJECT`]; every map is pinned by name (`LIBBPF_PIN_BY_NAME`) under the
/// pin directory given to [`load`], so a restarted gateway finds the same maps.
pub mod map_names {
    /// `HASH u16 port (host order) → u8`: UDP destination ports of the tunnel.
    pub const TUNNEL_PORTS: &str = "tunnel_ports";
    /// `HASH u64 SessionId (host order) → SessionOwner`: owner overrides.
    pub const SESSION_OWNER: &str = "session_owner";
    /// `XSKMAP u32 queue → AF_XDP socket`.
    pub const XSKS: &str = "xsks";
    /// `PERCPU_ARRAY u32 Counter → u64`.
    pub const COUNTERS: &str = "counters";
    /// `PERCPU_ARRAY [0] → u32`: queue chosen for the last steered packet on each CPU.
    pub const LAST_QUEUE: &str = "last_queue";
    /// Inside program: `HASH [u8; 16] address → u32`: client virtual addresses (IPv4 as
    /// `::ffff:a.b.c.d`).
    pub const INSIDE_ROUTES: &str = "inside_routes";
    /// Inside program: `XSKMAP u32 queue → AF_XDP socket` on the inside NIC.
    pub const INSIDE_XSKS: &str = "inside_xsks";
}

// ---- Wire constants (mirror of the header's JUMPING_* defines) ------------------------------

/// `JUMPING_VERSION`.
pub const VERSION: u8 = wire::VERSION;
/// `JUMPING_TYPE_OFFSET`.
pub const TYPE_OFFSET: usize = wire::TYPE_OFFSET;
/// `JUMPING_SESSION_ID_OFFSET`.
pub const SESSION_ID_OFFSET: usize = wire::SESSION_ID_OFFSET;
/// `JUMPING_COMMON_HEADER_LEN`: version, type, 16-bit epoch.
pub const COMMON_HEADER_LEN: usize = wire::EPOCH_OFFSET + 2;
/// `JUMPING_DATA_HEADER_LEN`.
pub const DATA_HEADER_LEN: usize = wire::DATA_HEADER_LEN;
/// `JUMPING_TAG_LEN`.
pub const TAG_LEN: usize = wire::TAG_LEN;
/// `JUMPING_DATA_MIN_LEN`: a data message with an empty plaintext.
pub const DATA_MIN_LEN: usize = wire::DATA_HEADER_LEN + wire::TAG_LEN;
/// `JUMPING_HEARTBEAT_LEN`: heartbeats have exactly this length.
pub const HEARTBEAT_LEN: usize =
    wire::DATA_HEADER_LEN + wire::HEARTBEAT_PLAINTEXT_LEN + wire::TAG_LEN;
/// `JUMPING_OWNER_CORE_SHIFT`: the owner core is `SessionId >> 56`.
pub const OWNER_CORE_SHIFT: u32 = 56;

/// Message type codes (`JUMPING_TYPE_*`).
pub mod msg_type {
    use jumping_protocol::wire::MessageType;

    /// `JUMPING_TYPE_HANDSHAKE_INIT`.
    pub const HANDSHAKE_INIT: u8 = MessageType::HandshakeInit as u8;
    /// `JUMPING_TYPE_HANDSHAKE_RESPONSE`.
    pub const HANDSHAKE_RESPONSE: u8 = MessageType::HandshakeResponse as u8;
    /// `JUMPING_TYPE_COOKIE_REPLY`.
    pub const COOKIE_REPLY: u8 = MessageType::CookieReply as u8;
    /// `JUMPING_TYPE_DATA`.
    pub const DATA: u8 = MessageType::Data as u8;
    /// `JUMPING_TYPE_HEARTBEAT`.
    pub const HEARTBEAT: u8 = MessageType::Heartbeat as u8;
    /// `JUMPING_TYPE_TERMINATE`.
    pub const TERMINATE: u8 = MessageType::Terminate as u8;
    /// `JUMPING_TYPE_REATTACH_REQUEST`.
    pub const REATTACH_REQUEST: u8 = MessageType::ReattachRequest as u8;
    /// `JUMPING_TYPE_REATTACH_CHALLENGE`.
    pub const REATTACH_CHALLENGE: u8 = MessageType::ReattachChallenge as u8;
    /// `JUMPING_TYPE_REATTACH_RESPONSE`.
    pub const REATTACH_RESPONSE: u8 = MessageType::ReattachResponse as u8;
    /// `JUMPING_TYPE_REATTACH_ACK`.
    pub const REATTACH_ACK: u8 = MessageType::ReattachAck as u8;
    /// `JUMPING_TYPE_REATTACH_REJECT`.
    pub const REATTACH_REJECT: u8 = MessageType::ReattachReject as u8;
    /// `JUMPING_TYPE_MIN`: lowest valid code.
    pub const MIN: u8 = HANDSHAKE_INIT;
    /// `JUMPING_TYPE_MAX`: highest valid code.
    pub const MAX: u8 = REATTACH_REJECT;
}

// ---- Map sizes -------------------------------------------------------------------------------

/// `JUMPING_MAX_TUNNEL_PORTS`.
pub const MAX_TUNNEL_PORTS: u32 = 16;
/// `JUMPING_MAX_SESSIONS`: capacity of `session_owner`.
pub const MAX_SESSIONS: u32 = 65_536;
/// `JUMPING_MAX_QUEUES`: slots in `xsks` (every value of the SessionId's owner byte).
pub const MAX_QUEUES: u32 = 256;
/// `JUMPING_MAX_INSIDE_ROUTES`: capacity of `inside_routes`.
pub const MAX_INSIDE_ROUTES: u32 = 65_536;

// ---- Map values ------------------------------------------------------------------------------

/// Value of `session_owner` (`struct jumping_session_owner`).
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SessionOwner {
    /// Index into `xsks`: the queue of the owner worker's AF_XDP socket.
    pub queue: u32,
    /// Reserved, zero.
    pub flags: u32,
}

impl SessionOwner {
    /// Size in bytes (`sizeof(struct jumping_session_owner)`).
    pub const SIZE: usize = size_of::<Self>();

    /// An owner entry for `queue`.
    #[must_use]
    pub const fn new(queue: u32) -> Self {
        Self { queue, flags: 0 }
    }

    /// The value as the kernel stores it (native endianness, C layout).
    #[must_use]
    pub fn to_ne_bytes(self) -> [u8; Self::SIZE] {
        let mut b = [0u8; Self::SIZE];
        b[..4].copy_from_slice(&self.queue.to_ne_bytes());
        b[4..].copy_from_slice(&self.flags.to_ne_bytes());
        b
    }

    /// Inverse of [`SessionOwner::to_ne_bytes`].
    #[must_use]
    pub fn from_ne_bytes(b: [u8; Self::SIZE]) -> Self {
        let [q0, q1, q2, q3, f0, f1, f2, f3] = b;
        Self {
            queue: u32::from_ne_bytes([q0, q1, q2, q3]),
            flags: u32::from_ne_bytes([f0, f1, f2, f3]),
        }
    }
}

// ---- Counters --------------------------------------------------------------------------------

/// Index into the per-CPU `counters` array (`enum jumping_xdp_counter`).
///
/// Every packet increments exactly one *outcome* counter; a steered packet also increments one
/// *steering* counter ([`Counter::SteerSessionMap`] or [`Counter::SteerSidBits`]).
#[repr(u32)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Counter {
    /// Not tunnel traffic → `XDP_PASS`.
    PassNotTunnel = 0,
    /// Valid control message → `XDP_PASS`.
    PassControl = 1,
    /// IP fragment of UDP → `XDP_PASS` (the kernel reassembles).
    PassFragment = 2,
    /// Data/heartbeat redirected into the owner's AF_XDP socket.
    RedirectData = 3,
    /// Data/heartbeat whose owner slot in `xsks` is empty → `XDP_PASS`.
    RedirectFailedPass = 4,
    /// Tunnel message shorter than its 4-byte header, or UDP length beyond the frame.
    DropTruncated = 5,
    /// Byte 0 is not [`VERSION`].
    DropBadVersion = 6,
    /// Byte 1 is not a message type.
    DropUnknownType = 7,
    /// Data shorter than [`DATA_MIN_LEN`] or heartbeat not [`HEARTBEAT_LEN`].
    DropBadLength = 8,
    /// Steering: owner from `session_owner`.
    SteerSessionMap = 9,
    /// Steering: owner from the SessionId's top byte.
    SteerSidBits = 10,
}

impl Counter {
    /// Number of counters (`JX_COUNTER_MAX`).
    pub const COUNT: usize = 11;

    /// Every counter, in index order.
    pub const ALL: [Counter; Self::COUNT] = [
        Counter::PassNotTunnel,
        Counter::PassControl,
        Counter::PassFragment,
        Counter::RedirectData,
        Counter::RedirectFailedPass,
        Counter::DropTruncated,
        Counter::DropBadVersion,
        Counter::DropUnknownType,
        Counter::DropBadLength,
        Counter::SteerSessionMap,
        Counter::SteerSidBits,
    ];

    /// Index into `counters`.
    #[must_use]
    pub const fn index(self) -> u32 {
        self as u32
    }

    /// Whether this is an outcome (one per packet) rather than a steering counter.
    #[must_use]
    pub const fn is_outcome(self) -> bool {
        !matches!(self, Counter::SteerSessionMap | Counter::SteerSidBits)
    }

    /// The enumerator's name in `jumping_maps.h`.
    #[must_use]
    pub const fn c_name(self) -> &'static str {
        match self {
            Counter::PassNotTunnel => "JX_PASS_NOT_TUNNEL",
            Counter::PassControl => "JX_PASS_CONTROL",
            Counter::PassFragment => "JX_PASS_FRAGMENT",
            Counter::RedirectData => "JX_REDIRECT_DATA",
            Counter::RedirectFailedPass => "JX_REDIRECT_FAILED_PASS",
            Counter::DropTruncated => "JX_DROP_TRUNCATED",
            Counter::DropBadVersion => "JX_DROP_BAD_VERSION",
            Counter::DropUnknownType => "JX_DROP_UNKNOWN_TYPE",
            Counter::DropBadLength => "JX_DROP_BAD_LENGTH",
            Counter::SteerSessionMap => "JX_STEER_SESSION_MAP",
            Counter::SteerSidBits => "JX_STEER_SID_BITS",
        }
    }

    /// Stable lower-case name, for metrics labels.
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Counter::PassNotTunnel => "pass_not_tunnel",
            Counter::PassControl => "pass_control",
            Counter::PassFragment => "pass_fragment",
            Counter::RedirectData => "redirect_data",
            Counter::RedirectFailedPass => "redirect_failed_pass",
            Counter::DropTruncated => "drop_truncated",
            Counter::DropBadVersion => "drop_bad_version",
            Counter::DropUnknownType => "drop_unknown_type",
            Counter::DropBadLength => "drop_bad_length",
            Counter::SteerSessionMap => "steer_session_map",
            Counter::SteerSidBits => "steer_sid_bits",
        }
    }
}

/// XDP verdicts (`enum xdp_action`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum XdpAction {
    /// `XDP_ABORTED`.
    Aborted,
    /// `XDP_DROP`.
    Drop,
    /// `XDP_PASS`.
    Pass,
    /// `XDP_TX`.
    Tx,
    /// `XDP_REDIRECT`.
    Redirect,
}

impl XdpAction {
    /// The action with kernel code `code`, if any.
    #[must_use]
    pub const fn from_u32(code: u32) -> Option<Self> {
        Some(match code {
            0 => XdpAction::Aborted,
            1 => XdpAction::Drop,
            2 => XdpAction::Pass,
            3 => XdpAction::Tx,
            4 => XdpAction::Redirect,
            _ => return None,
        })
    }
}

// ---- Loading ---------------------------------------------------------------------------------

/// Why [`load`] or a map helper failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Parsing the object or creating/opening its (pinned) maps failed.
    #[error("loading the XDP object: {0}")]
    Object(#[from] aya::EbpfError),
    /// The object has no program or map of that name.
    #[error("the XDP object has no {0}")]
    Missing(&'static str),
    /// The kernel refused the program (verifier log in the error).
    #[error("loading the XDP program: {0}")]
    Program(#[from] aya::programs::ProgramError),
    /// A map operation failed.
    #[error("map access: {0}")]
    Map(#[from] aya::maps::MapError),
}

/// Load [`XDP_OBJECT`] into the kernel, creating its maps or reusing the ones pinned under
/// `pin_dir` (which must be on a bpffs), and load (verify) the program without attaching it.
///
/// # Errors
/// [`Error`] if the object, its maps or the program cannot be loaded.
pub fn load(pin_dir: &Path) -> Result<Ebpf, Error> {
    let mut ebpf = EbpfLoader::new().map_pin_path(pin_dir).load(XDP_OBJECT)?;
    xdp_program(&mut ebpf)?.load()?;
    Ok(ebpf)
}

/// The XDP program of a loaded object.
///
/// # Errors
/// [`Error::Missing`] if the object has no such program, [`Error::Program`] if it is not XDP.
pub fn xdp_program(ebpf: &mut Ebpf) -> Result<&mut Xdp, Error> {
    let prog = ebpf
        .program_mut(PROGRAM_NAME)
        .ok_or(Error::Missing("program jumping_xdp"))?;
    Ok(prog.try_into()?)
}

/// Add `port` (host order) to `tunnel_ports`.
///
/// # Errors
/// [`Error`] if the map is missing or full.
pub fn add_tunnel_port(ebpf: &mut Ebpf, port: u16) -> Result<(), Error> {
    let map = ebpf
        .map_mut(map_names::TUNNEL_PORTS)
        .ok_or(Error::Missing("map tunnel_ports"))?;
    let mut ports: HashMap<_, u16, u8> = HashMap::try_from(map)?;
    ports.insert(port, 1, 0)?;
    Ok(())
}

/// Record that `session_id` is owned by the worker on `owner.queue`.
///
/// # Errors
/// [`Error`] if the map is missing or full.
pub fn set_session_owner(
    ebpf: &mut Ebpf,
    session_id: wire::SessionId,
    owner: SessionOwner,
) -> Result<(), Error> {
    let map = ebpf
        .map_mut(map_names::SESSION_OWNER)
        .ok_or(Error::Missing("map session_owner"))?;
    let mut owners: HashMap<_, u64, [u8; SessionOwner::SIZE]> = HashMap::try_from(map)?;
    owners.insert(session_id.0, owner.to_ne_bytes(), 0)?;
    Ok(())
}

/// Put the AF_XDP socket `socket_fd` into slot `queue` of `xsks`, so the program redirects the
/// data of sessions owned by `queue` into it. The map holds its own reference to the socket:
/// the slot keeps working until it is overwritten or the socket's last fd is closed.
///
/// # Errors
/// [`Error`] if the map is missing, `queue` is out of range or `socket_fd` is not an AF_XDP
/// socket.
pub fn set_xsk(
    ebpf: &mut Ebpf,
    queue: u32,
    socket_fd: impl std::os::fd::AsRawFd,
) -> Result<(), Error> {
    let map = ebpf
        .map_mut(map_names::XSKS)
        .ok_or(Error::Missing("map xsks"))?;
    let mut xsks = XskMap::try_from(map)?;
    xsks.set(queue, socket_fd, 0)?;
    Ok(())
}

/// Every counter summed over all CPUs, indexed by [`Counter::index`].
///
/// # Errors
/// [`Error`] if the map is missing or cannot be read.
pub fn read_counters(ebpf: &Ebpf) -> Result<[u64; Counter::COUNT], Error> {
    let map = ebpf
        .map(map_names::COUNTERS)
        .ok_or(Error::Missing("map counters"))?;
    let counters: PerCpuArray<_, u64> = PerCpuArray::try_from(map)?;
    let mut out = [0u64; Counter::COUNT];
    for (c, slot) in Counter::ALL.iter().zip(out.iter_mut()) {
        *slot = counters.get(&c.index(), 0)?.iter().sum();
    }
    Ok(out)
}

/// Every counter summed over all CPUs, read from the map pinned under `pin_dir` (for a
/// thread that does not hold the loaded object, such as the metrics endpoint's).
///
/// # Errors
/// [`Error`] if nothing is pinned there (no XDP program loaded) or the map cannot be read.
pub fn read_pinned_counters(pin_dir: &Path) -> Result<[u64; Counter::COUNT], Error> {
    let data = MapData::from_pin(pin_dir.join(map_names::COUNTERS))?;
    let counters: PerCpuArray<_, u64> = PerCpuArray::try_from(aya::maps::Map::PerCpuArray(data))?;
    let mut out = [0u64; Counter::COUNT];
    for (c, slot) in Counter::ALL.iter().zip(out.iter_mut()) {
        *slot = counters.get(&c.index(), 0)?.iter().sum();
    }
    Ok(out)
}

/// The `last_queue` slot of every CPU.
///
/// # Errors
/// [`Error`] if the map is missing or cannot be read.
pub fn read_last_queue(ebpf: &Ebpf) -> Result<Vec<u32>, Error> {
    let map = ebpf
        .map(map_names::LAST_QUEUE)
        .ok_or(Error::Missing("map last_queue"))?;
    let slots: PerCpuArray<_, u32> = PerCpuArray::try_from(map)?;
    Ok(slots.get(&0, 0)?.to_vec())
}

// ---- The inside program ----------------------------------------------------------------------

/// Load [`INSIDE_OBJECT`] (maps created or reused under `pin_dir`, which must be on a bpffs)
/// and load (verify) its program without attaching it.
///
/// # Errors
/// [`Error`] if the object, its maps or the program cannot be loaded.
pub fn load_inside(pin_dir: &Path) -> Result<Ebpf, Error> {
    let mut ebpf = EbpfLoader::new()
        .map_pin_path(pin_dir)
        .load(INSIDE_OBJECT)?;
    inside_program(&mut ebpf)?.load()?;
    Ok(ebpf)
}

/// The XDP program of a loaded inside object.
///
/// # Errors
/// [`Error::Missing`] if the object has no such program, [`Error::Program`] if it is not XDP.
pub fn inside_program(ebpf: &mut Ebpf) -> Result<&mut Xdp, Error> {
    let prog = ebpf
        .program_mut(INSIDE_PROGRAM_NAME)
        .ok_or(Error::Missing("program jumping_inside"))?;
    Ok(prog.try_into()?)
}

/// Put the AF_XDP socket `socket_fd` (bound to the inside NIC's queue `queue`) into slot
/// `queue` of `inside_xsks`.
///
/// # Errors
/// [`Error`] if the map is missing, `queue` is out of range or `socket_fd` is not an AF_XDP
/// socket.
pub fn set_inside_xsk(
    ebpf: &mut Ebpf,
    queue: u32,
    socket_fd: impl std::os::fd::AsRawFd,
) -> Result<(), Error> {
    let map = ebpf
        .map_mut(map_names::INSIDE_XSKS)
        .ok_or(Error::Missing("map inside_xsks"))?;
    let mut xsks = XskMap::try_from(map)?;
    xsks.set(queue, socket_fd, 0)?;
    Ok(())
}

/// The key of `inside_routes` for `addr`: IPv6 as is, IPv4 as `::ffff:a.b.c.d`.
#[must_use]
pub fn inside_route_key(addr: IpAddr) -> [u8; 16] {
    match addr {
        IpAddr::V4(a) => a.to_ipv6_mapped().octets(),
        IpAddr::V6(a) => a.octets(),
    }
}

/// The inside program's `inside_routes` map, taken out of its [`Ebpf`] so that another thread
/// (the data plane's control thread) can own it: the addresses whose packets the inside NIC
/// redirects into the data plane.
#[derive(Debug)]
pub struct InsideRoutes {
    map: HashMap<MapData, [u8; 16], u32>,
}

impl InsideRoutes {
    /// Take `inside_routes` out of a loaded inside object (the program keeps using it).
    ///
    /// # Errors
    /// [`Error`] if the map is missing (or already taken).
    pub fn take(ebpf: &mut Ebpf) -> Result<Self, Error> {
        let map = ebpf
            .take_map(map_names::INSIDE_ROUTES)
            .ok_or(Error::Missing("map inside_routes"))?;
        Ok(Self {
            map: HashMap::try_from(map)?,
        })
    }

    /// Steer packets to `addr` into the data plane.
    ///
    /// # Errors
    /// [`Error::Map`] if the map is full.
    pub fn add(&mut self, addr: IpAddr) -> Result<(), Error> {
        self.map.insert(inside_route_key(addr), 1, 0)?;
        Ok(())
    }

    /// Stop steering packets to `addr` (absent is not an error).
    ///
    /// # Errors
    /// [`Error::Map`] if the kernel refuses the deletion.
    pub fn remove(&mut self, addr: IpAddr) -> Result<(), Error> {
        match self.map.remove(&inside_route_key(addr)) {
            Ok(()) | Err(aya::maps::MapError::KeyNotFound) => Ok(()),
            Err(aya::maps::MapError::SyscallError(e))
                if e.io_error.raw_os_error() == Some(libc::ENOENT) =>
            {
                Ok(())
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Remove every route (a restarted data plane starts with no session, but the pinned map
    /// keeps the previous run's routes). Returns how many were removed.
    ///
    /// # Errors
    /// [`Error::Map`] if the kernel refuses a deletion.
    pub fn clear(&mut self) -> Result<usize, Error> {
        let keys: Vec<[u8; 16]> = self.map.keys().filter_map(Result::ok).collect();
        for k in &keys {
            match self.map.remove(k) {
                Ok(()) | Err(aya::maps::MapError::KeyNotFound) => {}
                Err(aya::maps::MapError::SyscallError(e))
                    if e.io_error.raw_os_error() == Some(libc::ENOENT) => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(keys.len())
    }

    /// Whether `addr` is steered.
    #[must_use]
    pub fn contains(&self, addr: IpAddr) -> bool {
        self.map.get(&inside_route_key(addr), 0).is_ok()
    }
}

/// Whether `ty` is steered by the XDP program (mirror of the program's type check).
#[must_use]
pub const fn is_steered(ty: MessageType) -> bool {
    matches!(ty as u8, msg_type::DATA | msg_type::HEARTBEAT)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    /// `NAME VALUE` lines printed by `xdp/layout_dump.c`, compiled from `jumping_maps.h`.
    fn c_layout() -> BTreeMap<String, u64> {
        include_str!(concat!(env!("OUT_DIR"), "/c_layout.txt"))
            .lines()
            .map(|l| {
                let (k, v) = l.split_once(' ').expect("NAME VALUE");
                (k.to_owned(), v.parse().expect("number"))
            })
            .collect()
    }

    fn usize_u64(v: usize) -> u64 {
        u64::try_from(v).expect("fits")
    }

    /// Everything the Rust side mirrors, by its name in the C dump.
    fn rust_layout() -> BTreeMap<String, u64> {
        let mut m: BTreeMap<String, u64> = [
            ("JUMPING_VERSION", u64::from(VERSION)),
            ("JUMPING_TYPE_OFFSET", usize_u64(TYPE_OFFSET)),
            ("JUMPING_SESSION_ID_OFFSET", usize_u64(SESSION_ID_OFFSET)),
            ("JUMPING_COMMON_HEADER_LEN", usize_u64(COMMON_HEADER_LEN)),
            ("JUMPING_DATA_HEADER_LEN", usize_u64(DATA_HEADER_LEN)),
            ("JUMPING_TAG_LEN", usize_u64(TAG_LEN)),
            ("JUMPING_DATA_MIN_LEN", usize_u64(DATA_MIN_LEN)),
            ("JUMPING_HEARTBEAT_LEN", usize_u64(HEARTBEAT_LEN)),
            ("JUMPING_OWNER_CORE_SHIFT", u64::from(OWNER_CORE_SHIFT)),
            (
                "JUMPING_TYPE_HANDSHAKE_INIT",
                u64::from(msg_type::HANDSHAKE_INIT),
            ),
            (
                "JUMPING_TYPE_HANDSHAKE_RESPONSE",
                u64::from(msg_type::HANDSHAKE_RESPONSE),
            ),
            (
                "JUMPING_TYPE_COOKIE_REPLY",
                u64::from(msg_type::COOKIE_REPLY),
            ),
            ("JUMPING_TYPE_DATA", u64::from(msg_type::DATA)),
            ("JUMPING_TYPE_HEARTBEAT", u64::from(msg_type::HEARTBEAT)),
            ("JUMPING_TYPE_TERMINATE", u64::from(msg_type::TERMINATE)),
            (
                "JUMPING_TYPE_REATTACH_REQUEST",
                u64::from(msg_type::REATTACH_REQUEST),
            ),
            (
                "JUMPING_TYPE_REATTACH_CHALLENGE",
                u64::from(msg_type::REATTACH_CHALLENGE),
            ),
            (
                "JUMPING_TYPE_REATTACH_RESPONSE",
                u64::from(msg_type::REATTACH_RESPONSE),
            ),
            (
                "JUMPING_TYPE_REATTACH_ACK",
                u64::from(msg_type::REATTACH_ACK),
            ),
            (
                "JUMPING_TYPE_REATTACH_REJECT",
                u64::from(msg_type::REATTACH_REJECT),
            ),
            ("JUMPING_TYPE_MIN", u64::from(msg_type::MIN)),
            ("JUMPING_TYPE_MAX", u64::from(msg_type::MAX)),
            ("JUMPING_MAX_TUNNEL_PORTS", u64::from(MAX_TUNNEL_PORTS)),
            ("JUMPING_MAX_SESSIONS", u64::from(MAX_SESSIONS)),
            ("JUMPING_MAX_QUEUES", u64::from(MAX_QUEUES)),
            ("JUMPING_MAX_INSIDE_ROUTES", u64::from(MAX_INSIDE_ROUTES)),
            ("SIZEOF_SESSION_OWNER", usize_u64(size_of::<SessionOwner>())),
            (
                "ALIGNOF_SESSION_OWNER",
                usize_u64(align_of::<SessionOwner>()),
            ),
            (
                "OFFSETOF_SESSION_OWNER_QUEUE",
                usize_u64(core::mem::offset_of!(SessionOwner, queue)),
            ),
            (
                "OFFSETOF_SESSION_OWNER_FLAGS",
                usize_u64(core::mem::offset_of!(SessionOwner, flags)),
            ),
            ("SIZEOF_COUNTER_ENUM_VALUE", usize_u64(size_of::<Counter>())),
            ("JX_COUNTER_MAX", usize_u64(Counter::COUNT)),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
        for c in Counter::ALL {
            m.insert(c.c_name().to_owned(), u64::from(c.index()));
        }
        m
    }

    #[test]
    fn layout_matches_c_header() {
        let c = c_layout();
        let rust = rust_layout();
        // Same names on both sides, and the same value for each.
        let c_only: Vec<_> = c.keys().filter(|k| !rust.contains_key(*k)).collect();
        let rust_only: Vec<_> = rust.keys().filter(|k| !c.contains_key(*k)).collect();
        assert!(
            c_only.is_empty(),
            "printed by layout_dump.c but not mirrored in Rust: {c_only:?}"
        );
        assert!(
            rust_only.is_empty(),
            "mirrored in Rust but not printed by layout_dump.c: {rust_only:?}"
        );
        for (k, v) in &c {
            assert_eq!(rust[k], *v, "{k}: C says {v}, Rust says {}", rust[k]);
        }
    }

    /// Every `#define JUMPING_*` and `JX_*` enumerator in the header is printed by the dump
    /// program (and so compared above): a new constant cannot skip the check.
    #[test]
    fn layout_dump_covers_every_header_name() {
        let header = include_str!("../xdp/jumping_maps.h");
        let c = c_layout();
        let mut names = Vec::new();
        for line in header.lines() {
            let t = line.trim_start();
            if let Some(rest) = t.strip_prefix("#define ") {
                let name = rest.split_whitespace().next().unwrap_or("");
                if name.starts_with("JUMPING_") && name != "JUMPING_MAPS_H" {
                    names.push(name.to_owned());
                }
            } else if t.starts_with("JX_") {
                let name: String = t
                    .chars()
                    .take_while(|ch| ch.is_ascii_alphanumeric() || *ch == '_')
                    .collect();
                names.push(name);
            }
        }
        assert!(names.len() > 30, "header parse found only {names:?}");
        let missing: Vec<_> = names.iter().filter(|n| !c.contains_key(*n)).collect();
        assert!(
            missing.is_empty(),
            "jumping_maps.h names not printed by layout_dump.c: {missing:?}"
        );
    }

    #[test]
    fn constants_match_protocol_wire() {
        assert_eq!(VERSION, wire::VERSION);
        assert_eq!(TYPE_OFFSET, wire::TYPE_OFFSET);
        assert_eq!(SESSION_ID_OFFSET, wire::SESSION_ID_OFFSET);
        assert_eq!(DATA_MIN_LEN, 36);
        assert_eq!(HEARTBEAT_LEN, 60);

        // The common header is exactly what `peek_type` needs.
        let mut hdr = [0u8; COMMON_HEADER_LEN];
        hdr[0] = VERSION;
        hdr[TYPE_OFFSET] = msg_type::DATA;
        assert_eq!(wire::peek_type(&hdr), Ok(MessageType::Data));
        assert_eq!(
            wire::peek_type(&hdr[..COMMON_HEADER_LEN - 1]),
            Err(wire::WireError::Truncated)
        );

        // Valid type codes are exactly MIN..=MAX, and the steered ones are the data plane's.
        for code in 0..=u8::MAX {
            let ty = MessageType::from_u8(code);
            assert_eq!(
                ty.is_some(),
                (msg_type::MIN..=msg_type::MAX).contains(&code),
                "code {code}"
            );
            if let Some(ty) = ty {
                assert_eq!(ty as u8, code);
                assert_eq!(is_steered(ty), ty.is_data_plane(), "{ty:?}");
            }
        }

        // Owner core bits.
        let sid = wire::SessionId::compose(0xA5, 0x17, 0x1234_5678_9ABC);
        assert_eq!(u64::from(sid.owner_core()), sid.0 >> OWNER_CORE_SHIFT);
        assert!(u32::from(sid.owner_core()) < MAX_QUEUES);
    }

    /// Minimum lengths agree with the protocol's own parser.
    #[test]
    fn lengths_match_protocol_parser() {
        let sid = wire::SessionId::compose(1, 0, 42);
        let mut buf = vec![0u8; HEARTBEAT_LEN + 1];
        for (ty, ok_len) in [
            (MessageType::Data, DATA_MIN_LEN),
            (MessageType::Heartbeat, HEARTBEAT_LEN),
        ] {
            wire::put_transport_header(&mut buf, ty, 0, sid, 7);
            assert!(
                wire::TransportMsg::new_checked(&buf[..ok_len]).is_ok(),
                "{ty:?} {ok_len}"
            );
            assert!(
                wire::TransportMsg::new_checked(&buf[..ok_len - 1]).is_err(),
                "{ty:?} short"
            );
        }
        wire::put_transport_header(&mut buf, MessageType::Heartbeat, 0, sid, 7);
        assert!(wire::TransportMsg::new_checked(&buf[..HEARTBEAT_LEN + 1]).is_err());
    }

    #[test]
    fn session_owner_bytes_round_trip() {
        let o = SessionOwner {
            queue: 0x0102_0304,
            flags: 9,
        };
        assert_eq!(SessionOwner::from_ne_bytes(o.to_ne_bytes()), o);
        assert_eq!(SessionOwner::SIZE, 8);
    }

    #[test]
    fn counter_table_is_consistent() {
        for (i, c) in Counter::ALL.iter().enumerate() {
            assert_eq!(usize::try_from(c.index()).expect("fits"), i);
        }
        assert_eq!(Counter::ALL.iter().filter(|c| !c.is_outcome()).count(), 2);
    }

    #[test]
    fn embedded_object_is_bpf_elf() {
        for object in [XDP_OBJECT, INSIDE_OBJECT] {
            assert_eq!(&object[..4], b"\x7fELF");
            // e_machine EM_BPF = 247 (little endian on x86_64 builds).
            assert_eq!(u16::from_le_bytes([object[18], object[19]]), 247);
        }
    }

    #[test]
    fn inside_route_keys_map_ipv4() {
        let k = inside_route_key("10.88.0.2".parse().expect("addr"));
        assert_eq!(k, [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 10, 88, 0, 2]);
        let v6: std::net::Ipv6Addr = "fd00::2".parse().expect("addr");
        assert_eq!(inside_route_key(v6.into()), v6.octets());
    }
}
