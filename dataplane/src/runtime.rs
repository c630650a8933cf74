//! The worker run loop: one thread per configured CPU, pinned, each turning its own receive
//! I/O ([`WorkerIo`]: an AF_XDP socket on its queue, or an io_uring UDP socket in a steered
//! `SO_REUSEPORT` group), its own inside queue ([`Inside`]: a TUN queue driven by io_uring, or
//! an AF_XDP socket on the inside NIC's queue of the same index), the rings from the other
//! workers and the rings from the control thread.
//!
//! One iteration, with no lock and no allocation on the packet path:
//! 1. apply queued session commands (installs, path and key updates, retirements) and route
//!    changes — between batches, so the control process never pauses a worker;
//! 2. receive a batch: each datagram is parsed, and if its session belongs to another worker
//!    (it arrived on a queue that is not its owner's) it is copied into the ring to that
//!    worker ("cross-queue handoff", docs/ARCHITECTURE.md); otherwise it is opened in place
//!    and the inner packet written to the inside queue (TUN: queued for io_uring; inside NIC:
//!    put behind an Ethernet header on the inside socket's TX ring), a heartbeat echoed;
//! 3. drain the rings from the other workers (their foreign packets, and inner packets they
//!    read for sessions owned here);
//! 4. take the inner packets read inside ([`TunRing`], which also submits the TUN writes
//!    queued in step 2; or the inside AF_XDP socket's frames, Ethernet header and padding
//!    stripped): destination address → session → sealed and sent here, or handed to the
//!    owner;
//! 5. publish the counters (relaxed stores into [`SharedStats`], readable at any time).
//!
//! When an iteration finds nothing to do a hundred times in a row, the worker sleeps in
//! `poll(2)` on its receive and inside descriptors for at most a millisecond (the bound on how
//! late a command is applied on an idle worker).

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use jumping_dataplane_api::{
    Backend, DropReason, Event, SessionSummary, WorkerStats, SESSIONS_PER_MESSAGE,
};
use jumping_protocol::wire::{self, DATA_HEADER_LEN, TAG_LEN};
use jumping_protocol::{Instant, Path, SessionId};
use rtrb::{Consumer, Producer};

use crate::tun::TunRing;
use crate::uring::UringUdp;
use crate::worker::{DataSession, Rx, Worker};
use crate::xsk::{EthTemplate, L2Template, RxItem, XskRx, ETH_HLEN, ETH_P_IP, ETH_P_IPV6};

/// Bytes a handoff slot holds (a full-size datagram or inner packet).
pub const HANDOFF_BUF: usize = 2048;
/// Slots in each worker-to-worker ring.
pub const HANDOFF_RING: usize = 512;
/// Counters are published at least this often while a worker runs (and before it sleeps).
const PUBLISH_EVERY: core::time::Duration = core::time::Duration::from_millis(1);
/// How often the same new path of a session is reported again while packets keep coming
/// from it (the control process may have missed or failed a validation).
const REPORT_EVERY: core::time::Duration = core::time::Duration::from_secs(1);
/// Empty iterations before a worker sleeps in `poll(2)`.
const IDLE_SPINS: u32 = 100;
/// Packets a worker may hold back while sessions it adopted settle (beyond: dropped and
/// counted as `handoff_full`). A marker's round trip takes microseconds; this covers a
/// descheduled old owner at high rates.
pub const PARK_MAX: usize = 4096;
/// Heartbeat echo size (the only reply a worker produces).
const REPLY_MAX: usize = 64;

/// A packet moving between workers.
pub struct Handoff {
    kind: HandoffKind,
    len: u16,
    data: [u8; HANDOFF_BUF],
}

impl std::fmt::Debug for Handoff {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Handoff")
            .field("kind", &self.kind)
            .field("len", &self.len)
            .finish_non_exhaustive()
    }
}

impl Default for Handoff {
    fn default() -> Self {
        Handoff {
            kind: HandoffKind::Outbound(SessionId(0)),
            len: 0,
            data: [0; HANDOFF_BUF],
        }
    }
}

/// What a [`Handoff`] carries.
#[derive(Debug)]
pub enum HandoffKind {
    /// A tunnel datagram received from `Path` on a queue that is not the owner's.
    Inbound(Path),
    /// An inner packet for session `SessionId`, read from another worker's TUN queue.
    Outbound(SessionId),
    /// A whole session moving to the receiving worker (a core drain). It travels in the same
    /// ring as the packets the old owner passes on afterwards, so it arrives before them:
    /// nothing is lost or reordered.
    Session {
        /// The session.
        id: SessionId,
        /// The worker it comes from (a failed adoption is reported with it).
        from: u8,
        /// Its state: keys, counters, replay window, path.
        state: Box<DataSession>,
    },
    /// The end of a move, in two legs: the new owner sends it to the old one behind the
    /// packets of the session it handed there before it adopted the session; the old owner
    /// sends it back (`echo`) behind everything it passed on. When the echo arrives, no
    /// earlier packet of the session is left in either ring: the new owner processes the
    /// packets it received itself meanwhile (held back, in order), then carries on.
    Marker {
        /// The session.
        id: SessionId,
        /// The sender.
        from: u8,
        /// The second leg.
        echo: bool,
    },
}

/// Put a copy of `bytes` into the handoff ring `ring` (filling the ring slot in place: no
/// 2 KiB value built on the stack and copied).
///
/// # Errors
/// [`DropReason::TooLarge`] or [`DropReason::HandoffFull`]; nothing is queued.
pub fn push_handoff(
    ring: &mut Producer<Handoff>,
    kind: HandoffKind,
    bytes: &[u8],
) -> Result<(), DropReason> {
    if bytes.len() > HANDOFF_BUF {
        return Err(DropReason::TooLarge);
    }
    let Ok(mut chunk) = ring.write_chunk(1) else {
        return Err(DropReason::HandoffFull);
    };
    let (first, _) = chunk.as_mut_slices();
    let slot = &mut first[0];
    slot.kind = kind;
    slot.len = bytes.len() as u16;
    slot.data[..bytes.len()].copy_from_slice(bytes);
    chunk.commit_all();
    Ok(())
}

/// A packet held back while its session settles on this worker.
#[derive(Debug)]
enum Parked {
    /// A tunnel datagram from a path.
    Inbound(Path, Vec<u8>),
    /// An inner packet read inside.
    Outbound(Vec<u8>),
}

/// Put a session into the handoff ring `ring` (its slot's bytes are left empty).
///
/// # Errors
/// The session back if the ring is full.
pub fn push_session(
    ring: &mut Producer<Handoff>,
    id: SessionId,
    from: u8,
    state: Box<DataSession>,
) -> Result<(), Box<DataSession>> {
    let Ok(mut chunk) = ring.write_chunk(1) else {
        return Err(state);
    };
    let (first, _) = chunk.as_mut_slices();
    first[0].kind = HandoffKind::Session { id, from, state };
    first[0].len = 0;
    chunk.commit_all();
    Ok(())
}

impl Handoff {
    /// What the packet is: taken out (a moving session is moved, not copied).
    pub fn take_kind(&mut self) -> HandoffKind {
        std::mem::replace(&mut self.kind, HandoffKind::Outbound(SessionId(0)))
    }

    /// The packet (a tunnel datagram or an inner packet).
    pub fn bytes_mut(&mut self) -> &mut [u8] {
        &mut self.data[..usize::from(self.len).min(HANDOFF_BUF)]
    }
}

/// Control thread → worker, besides session commands.
#[derive(Debug)]
pub enum ToWorker {
    /// Inner packets to `inner` belong to `id`.
    Route {
        /// Client virtual address.
        inner: IpAddr,
        /// Session.
        id: SessionId,
    },
    /// Forget the route to `inner`.
    Unroute {
        /// Client virtual address.
        inner: IpAddr,
    },
    /// Report every session held ([`FromWorker::Sessions`]).
    List,
    /// Send a control datagram from the tunnel socket (io_uring backend).
    Transmit {
        /// Destination.
        to: SocketAddr,
        /// UDP payload.
        datagram: Vec<u8>,
    },
    /// Hand session `id` to worker `to` (it is being moved), and pass on to `to` whatever
    /// arrives for it from now on.
    Export {
        /// Session.
        id: SessionId,
        /// New owner.
        to: u8,
    },
    /// Session `id` ended: forget where it was passed on to.
    Forget {
        /// Session.
        id: SessionId,
    },
}

/// Worker → control thread.
#[derive(Debug)]
pub enum FromWorker {
    /// Something for the control process.
    Event(Event),
    /// Part of a session listing; `last` on the final part.
    Sessions {
        /// Sessions.
        sessions: Vec<SessionSummary>,
        /// Whether this is the last part from this worker.
        last: bool,
    },
    /// A control message received on the tunnel socket (io_uring backend).
    ControlDatagram {
        /// Sender.
        from: SocketAddr,
        /// When it was taken off the ring (ns since the Unix epoch).
        received_unix_ns: u64,
        /// UDP payload.
        datagram: Vec<u8>,
    },
    /// A move finished: `held_by` holds session `id` now (the new owner after an adoption;
    /// the old owner if the export could not happen; `None` if the session is gone: it was
    /// not there to export, or the new owner could not adopt it).
    Moved {
        /// Session.
        id: SessionId,
        /// Which worker holds it.
        held_by: Option<u8>,
    },
}

const STAT_FIELDS: usize = 13 + DropReason::COUNT;

/// One worker's counters, written by the worker (relaxed stores of its own plain counters:
/// no read-modify-write, no contention) and read by the control thread at any time.
#[derive(Debug)]
pub struct SharedStats {
    v: [AtomicU64; STAT_FIELDS],
}

impl Default for SharedStats {
    fn default() -> Self {
        SharedStats {
            v: std::array::from_fn(|_| AtomicU64::new(0)),
        }
    }
}

fn stats_fields(s: &WorkerStats) -> [u64; STAT_FIELDS] {
    let mut v = [0u64; STAT_FIELDS];
    v[..13].copy_from_slice(&[
        u64::from(s.cpu),
        s.rx_datagrams,
        s.rx_bytes,
        s.delivered,
        s.inside_packets,
        s.sent,
        s.sent_bytes,
        s.handed_off,
        s.taken_over,
        s.epochs_promoted,
        s.sessions,
        s.key_cache_misses,
        s.events_lost,
    ]);
    v[13..].copy_from_slice(&s.drops);
    v
}

impl SharedStats {
    fn publish(&self, s: &WorkerStats) {
        for (slot, x) in self.v.iter().zip(stats_fields(s)) {
            slot.store(x, Ordering::Relaxed);
        }
    }

    /// The last published counters.
    #[must_use]
    pub fn read(&self) -> WorkerStats {
        let v: [u64; STAT_FIELDS] = std::array::from_fn(|i| self.v[i].load(Ordering::Relaxed));
        let mut drops = [0u64; DropReason::COUNT];
        drops.copy_from_slice(&v[13..]);
        WorkerStats {
            cpu: u32::try_from(v[0]).unwrap_or(u32::MAX),
            rx_datagrams: v[1],
            rx_bytes: v[2],
            delivered: v[3],
            inside_packets: v[4],
            sent: v[5],
            sent_bytes: v[6],
            handed_off: v[7],
            taken_over: v[8],
            epochs_promoted: v[9],
            sessions: v[10],
            key_cache_misses: v[11],
            events_lost: v[12],
            drops,
        }
    }
}

/// The next hop's MAC on one interface, shared by every worker on it: either configured
/// (fixed in each worker's template), or learnt from the source of the frames any worker
/// receives — a worker that transmits for its sessions may never receive a frame itself
/// (its clients' packets can all arrive on another queue).
#[derive(Debug, Clone)]
pub struct NextHop(Option<Arc<AtomicU64>>);

impl NextHop {
    /// Configured: the templates already hold it.
    #[must_use]
    pub fn configured() -> Self {
        NextHop(None)
    }

    /// Learnt; clone the result into every worker on the interface.
    #[must_use]
    pub fn learnt() -> Self {
        NextHop(Some(Arc::new(AtomicU64::new(0))))
    }

    /// Record `seen` (a source MAC this worker received) for every worker on the interface.
    /// Stored only when it changed: every transmit reads the cell, so it stays a shared,
    /// read-mostly cache line rather than one each receive pass writes.
    fn learn(&self, seen: Option<[u8; 6]>) {
        let (Some(cell), Some(mac)) = (&self.0, seen) else {
            return;
        };
        let mut b = [0u8; 8];
        b[2..].copy_from_slice(&mac);
        // Bit 63 marks "learnt" (a MAC is 48 bits).
        let v = u64::from_be_bytes(b) | 1 << 63;
        if cell.load(Ordering::Relaxed) != v {
            cell.store(v, Ordering::Relaxed);
        }
    }

    /// Put the interface's learnt MAC, if any, into `dst`: called before every transmit (the
    /// only reader of the template's MAC), so a worker sending a packet another worker handed
    /// it uses a MAC that worker learnt before the handoff (the ring's release/acquire orders
    /// the relaxed store before this load). The store follows a receive pass, so only packets
    /// handed over in the very pass that first learns the MAC can still miss it.
    fn refresh(&self, dst: &mut [u8; 6]) {
        let Some(cell) = &self.0 else { return };
        let v = cell.load(Ordering::Relaxed);
        if v != 0 {
            dst.copy_from_slice(&v.to_be_bytes()[2..]);
        }
    }
}

/// A worker's receive and transmit I/O.
#[derive(Debug)]
pub enum WorkerIo {
    /// AF_XDP socket on the worker's queue.
    Xsk {
        /// The socket.
        xsk: Box<XskRx>,
        /// Headers of transmitted frames.
        l2: L2Template,
        /// Where `l2.dst_mac` comes from: configured, or learnt by any worker.
        next_hop: NextHop,
    },
    /// io_uring over a UDP socket.
    Uring(Box<UringUdp>),
}

impl WorkerIo {
    fn backend(&self) -> Backend {
        match self {
            WorkerIo::Xsk { .. } => Backend::AfXdp,
            WorkerIo::Uring(_) => Backend::IoUring,
        }
    }

    fn fd(&self) -> std::os::fd::RawFd {
        use std::os::fd::AsRawFd as _;
        match self {
            WorkerIo::Xsk { xsk, .. } => xsk.fd().as_raw_fd(),
            WorkerIo::Uring(u) => u.ring_fd(),
        }
    }

    /// Send a ready datagram (a heartbeat echo of a handed-off packet, a control datagram).
    fn send_payload(&mut self, dst: Path, payload: &[u8]) -> bool {
        match self {
            WorkerIo::Xsk { xsk, l2, next_hop } => {
                next_hop.refresh(&mut l2.dst_mac);
                xsk.send_payload(dst.addr, payload, l2).is_ok()
            }
            WorkerIo::Uring(u) => u.send_datagram(dst.addr, payload).is_ok(),
        }
    }

    /// Seal `inner` for `id` and send it. `Err` only for failures the worker did not count.
    fn send_inner(&mut self, worker: &mut Worker, id: SessionId, inner: &[u8]) -> Result<(), ()> {
        match self {
            WorkerIo::Xsk { xsk, l2, next_hop } => {
                next_hop.refresh(&mut l2.dst_mac);
                match xsk.send_inner(worker, id, inner, l2) {
                    Ok(_) => Ok(()),
                    Err(crate::xsk::XskTxError::Worker(_)) => Err(()),
                    Err(_) => {
                        worker.count_drop(DropReason::TxFailed);
                        Err(())
                    }
                }
            }
            WorkerIo::Uring(u) => match u.send_inner(worker, id, inner) {
                Ok(()) => Ok(()),
                Err(e) if e.kind() == std::io::ErrorKind::InvalidInput => Err(()),
                Err(_) => {
                    worker.count_drop(DropReason::TxFailed);
                    Err(())
                }
            },
        }
    }
}

/// A worker's inside interface.
#[derive(Debug)]
pub enum Inside {
    /// The worker's queue of the TUN device, driven by io_uring.
    Tun(Box<TunRing>),
    /// An AF_XDP socket on the inside NIC's queue of the worker's index (the inside XDP
    /// program redirects packets to client addresses into it).
    Xsk {
        /// The socket.
        xsk: Box<XskRx>,
        /// Ethernet header of frames sent inside.
        l2: EthTemplate,
        /// Where `l2.dst_mac` comes from: configured, or learnt by any worker.
        next_hop: NextHop,
    },
}

impl Inside {
    fn fd(&self) -> std::os::fd::RawFd {
        use std::os::fd::AsRawFd as _;
        match self {
            Inside::Tun(t) => t.ring_fd(),
            Inside::Xsk { xsk, .. } => xsk.fd().as_raw_fd(),
        }
    }

    /// Queue a decrypted inner packet for the inside network.
    fn queue_write(&mut self, pkt: &[u8]) -> Result<(), ()> {
        match self {
            Inside::Tun(t) => t.queue_write(pkt).map_err(|_| ()),
            Inside::Xsk { xsk, l2, next_hop } => {
                next_hop.refresh(&mut l2.dst_mac);
                let ethertype = match pkt.first().map(|b| b >> 4) {
                    Some(4) => ETH_P_IP,
                    Some(6) => ETH_P_IPV6,
                    _ => return Err(()),
                };
                xsk.send_frame(l2, ethertype, pkt)
                    .map(|_| ())
                    .map_err(|_| ())
            }
        }
    }

    /// Hand every inner packet read inside to `handle`. TUN: also submits the queued writes.
    fn poll(&mut self, handle: &mut impl FnMut(&[u8])) -> std::io::Result<usize> {
        match self {
            Inside::Tun(t) => t.poll(handle),
            Inside::Xsk { xsk, next_hop, .. } => {
                let n = xsk.poll_frames(&mut |frame| {
                    if let Some(pkt) = ip_packet_of_frame(frame) {
                        handle(pkt);
                    }
                });
                next_hop.learn(xsk.learnt_next_hop());
                Ok(n)
            }
        }
    }

    /// Wake the kernel for what this iteration put on the inside TX ring (AF_XDP).
    fn flush(&mut self) {
        if let Inside::Xsk { xsk, .. } = self {
            xsk.flush_tx();
        }
    }
}

/// The IP packet in an Ethernet frame (IPv4 or IPv6 by its ethertype), without the Ethernet
/// padding: its length is the one its IP header states. `None` for anything else, or a
/// header that claims more than the frame holds.
fn ip_packet_of_frame(frame: &[u8]) -> Option<&[u8]> {
    let ethertype = u16::from_be_bytes(frame.get(12..ETH_HLEN)?.try_into().ok()?);
    let ip = frame.get(ETH_HLEN..)?;
    let len = match ethertype {
        ETH_P_IP if ip.first()? >> 4 == 4 => {
            usize::from(u16::from_be_bytes(ip.get(2..4)?.try_into().ok()?))
        }
        ETH_P_IPV6 if ip.first()? >> 4 == 6 => {
            40 + usize::from(u16::from_be_bytes(ip.get(4..6)?.try_into().ok()?))
        }
        _ => return None,
    };
    ip.get(..len)
}

/// Everything a worker thread owns.
#[derive(Debug)]
pub struct WorkerLoop {
    io: WorkerIo,
    inside: Inside,
    lane: Lane,
}

/// The rings connecting one worker to the others and to the control thread.
#[derive(Debug)]
pub struct Links {
    /// Rings from every worker (own index unused).
    pub from_peers: Vec<Consumer<Handoff>>,
    /// Rings to every worker (`None` for itself).
    pub to_peers: Vec<Option<Producer<Handoff>>>,
    /// From the control thread.
    pub control_in: Consumer<ToWorker>,
    /// To the control thread.
    pub control_out: Producer<FromWorker>,
}

/// One worker's ends of the handoff rings: from every other worker, and to every worker
/// (`None` at its own index).
pub type PeerRings = (Vec<Consumer<Handoff>>, Vec<Option<Producer<Handoff>>>);

/// Make the handoff rings of `n` workers: `result[i]` are worker `i`'s ends.
#[must_use]
pub fn handoff_mesh(n: usize) -> Vec<PeerRings> {
    let mut consumers: Vec<Vec<Option<Consumer<Handoff>>>> =
        (0..n).map(|_| (0..n).map(|_| None).collect()).collect();
    let mut producers: Vec<Vec<Option<Producer<Handoff>>>> =
        (0..n).map(|_| (0..n).map(|_| None).collect()).collect();
    for (from, row) in producers.iter_mut().enumerate() {
        for (to, slot) in row.iter_mut().enumerate() {
            if from != to {
                let (p, c) = rtrb::RingBuffer::new(HANDOFF_RING);
                *slot = Some(p);
                consumers[to][from] = Some(c);
            }
        }
    }
    consumers
        .into_iter()
        .zip(producers)
        .map(|(c, p)| (c.into_iter().flatten().collect(), p))
        .collect()
}

#[derive(Debug)]
struct Lane {
    index: u8,
    worker: Worker,
    routes: HashMap<IpAddr, SessionId>,
    links: Links,
    stats: Arc<SharedStats>,
    local: WorkerStats,
    backend: Backend,
    /// Paths reported in the last [`REPORT_EVERY`], so a rebind is reported once a second
    /// while it lasts, not per packet (pruned at every drop-report flush: bounded).
    reported: HashMap<SessionId, (Path, Instant)>,
    /// Replay/auth drops per session since the last report.
    pending_drops: HashMap<(SessionId, DropReason), (u32, Path)>,
    /// Heartbeat echoes to send after the receive batch (destination not the source).
    deferred: Vec<(Path, u8, [u8; REPLY_MAX])>,
    /// Sessions moved away from this worker, and where to: what still arrives for them here
    /// is passed on (consulted only for sessions this worker does not hold; empty until a
    /// core is drained, so the packet path pays nothing for it before).
    forwards: HashMap<SessionId, u8>,
    /// Sessions adopted whose marker has not come back, with the packets this worker
    /// received itself for them meanwhile (held back, so none overtakes an earlier one still
    /// on its way back through the old owner).
    settling: HashMap<SessionId, Vec<Parked>>,
    /// Packets held in `settling`, all sessions.
    parked: usize,
    /// Markers that found their ring full, retried every iteration.
    markers: Vec<(u8, SessionId, bool)>,
}

fn session_of(buf: &[u8]) -> Option<SessionId> {
    let b: [u8; 8] = buf.get(4..12)?.try_into().ok()?;
    Some(SessionId(u64::from_be_bytes(b))).filter(|id| id.0 != 0)
}

/// The worker that owns `id` by its SessionId (top byte), unless it was moved.
#[must_use]
pub fn owner_of(id: SessionId) -> u8 {
    (id.0 >> 56) as u8
}

fn inner_destination(pkt: &[u8]) -> Option<IpAddr> {
    match pkt.first()? >> 4 {
        4 => {
            let b: [u8; 4] = pkt.get(16..20)?.try_into().ok()?;
            Some(IpAddr::from(b))
        }
        6 => {
            let b: [u8; 16] = pkt.get(24..40)?.try_into().ok()?;
            Some(IpAddr::from(b))
        }
        _ => None,
    }
}

impl Lane {
    /// Queue `e` for the control thread. A full ring means the control thread is behind: the
    /// event is dropped (the packet path never waits) and counted in `events_lost`.
    fn event(&mut self, e: FromWorker) -> bool {
        let queued = self.links.control_out.push(e).is_ok();
        self.local.events_lost += u64::from(!queued);
        queued
    }

    fn note_path(&mut self, now: Instant, id: SessionId, new_path: Option<Path>) {
        let Some(path) = new_path else { return };
        let recent = self
            .reported
            .get(&id)
            .is_some_and(|(p, at)| *p == path && now.saturating_duration_since(*at) < REPORT_EVERY);
        if !recent && self.event(FromWorker::Event(Event::NewPath { id, path })) {
            self.reported.insert(id, (path, now));
        }
    }

    /// Where a session this worker does not hold is: where it was passed on to, else its
    /// SessionId's owner.
    fn owner_of(&self, id: SessionId) -> u8 {
        if self.forwards.is_empty() {
            return owner_of(id);
        }
        self.forwards
            .get(&id)
            .copied()
            .unwrap_or_else(|| owner_of(id))
    }

    /// Should a datagram or inner packet of `id` that reached this worker go to another one?
    fn elsewhere(&self, id: SessionId) -> Option<u8> {
        let owner = self.owner_of(id);
        (owner != self.index
            && usize::from(owner) < self.links.to_peers.len()
            && self.worker.session(id).is_none())
        .then_some(owner)
    }

    /// Hold back this worker's own packet of a settling session; `false` if `id` is not
    /// settling. A full park drops the packet (counted).
    fn park(&mut self, id: SessionId, p: impl FnOnce() -> Parked) -> bool {
        if self.settling.is_empty() {
            return false;
        }
        let Some(held) = self.settling.get_mut(&id) else {
            return false;
        };
        if self.parked >= PARK_MAX {
            self.worker.count_drop(DropReason::HandoffFull);
        } else {
            held.push(p());
            self.parked += 1;
        }
        true
    }

    fn send_marker(&mut self, to: u8, id: SessionId, echo: bool) {
        let kind = HandoffKind::Marker {
            id,
            from: self.index,
            echo,
        };
        let pushed = match self.links.to_peers.get_mut(usize::from(to)) {
            Some(Some(ring)) => push_handoff(ring, kind, &[]).is_ok(),
            // No such worker (cannot happen: moves are between workers).
            _ => true,
        };
        if !pushed {
            self.markers.push((to, id, echo));
        }
    }

    fn retry_markers(&mut self) {
        for (to, id, echo) in std::mem::take(&mut self.markers) {
            self.send_marker(to, id, echo);
        }
    }

    /// The session settled: the packets held back for it, in order. The move is reported.
    fn settled(&mut self, id: SessionId) -> Vec<Parked> {
        let Some(held) = self.settling.remove(&id) else {
            return Vec::new();
        };
        self.parked -= held.len();
        self.event(FromWorker::Moved {
            id,
            held_by: Some(self.index),
        });
        held
    }

    /// Move session `id` to worker `to` (control thread's request).
    fn export(&mut self, id: SessionId, to: u8) {
        // (A settling session is not moved on: the control thread waits for its report.)
        let Some(state) = self.worker.take(id) else {
            self.event(FromWorker::Moved { id, held_by: None });
            return;
        };
        let pushed = match self.links.to_peers.get_mut(usize::from(to)) {
            Some(Some(ring)) => push_session(ring, id, self.index, Box::new(state)),
            _ => Err(Box::new(state)),
        };
        match pushed {
            // The adopter reports the end of the move.
            Ok(()) => {
                self.forwards.insert(id, to);
            }
            Err(state) => {
                // The ring is full: keep it (reinsertion into the slot just freed).
                let held_by = self.worker.adopt(id, state).is_ok().then_some(self.index);
                self.event(FromWorker::Moved { id, held_by });
            }
        }
    }

    /// A datagram for a session held here, from another worker's ring or held back while
    /// its session settled: open and deliver it, send the heartbeat echo.
    fn inbound(
        &mut self,
        io: &mut WorkerIo,
        inside: &mut Inside,
        now: Instant,
        from: Path,
        buf: &mut [u8],
    ) {
        if let Some((dst, len)) = self.process(now, from, buf, inside) {
            if io.send_payload(dst, &buf[..len]) {
                self.local.sent += 1;
            } else {
                self.worker.count_drop(DropReason::TxFailed);
            }
        }
    }

    /// Seal and send an inner packet of a session held here (a failure is counted by the
    /// I/O).
    fn outbound(&mut self, io: &mut WorkerIo, id: SessionId, pkt: &[u8]) {
        if io.send_inner(&mut self.worker, id, pkt).is_ok() {
            self.local.sent += 1;
            self.local.sent_bytes += pkt.len() as u64;
        }
    }

    /// A session moved here from worker `from`.
    fn adopt(&mut self, id: SessionId, from: u8, state: Box<DataSession>) {
        self.forwards.remove(&id);
        if self.worker.adopt(id, state).is_ok() {
            // Reported once the marker is back.
            self.settling.insert(id, Vec::new());
            self.send_marker(from, id, false);
        } else {
            // The control thread checks room before a move; if the table filled up
            // meanwhile the session cannot be carried here and is reported gone (the
            // control process ends it explicitly).
            tracing::warn!(session = %id, correlation_id = %observe::log::Correlation(id), from, "no room to adopt a moved session");
            self.event(FromWorker::Moved { id, held_by: None });
        }
    }

    fn hand_off(&mut self, to: u8, kind: HandoffKind, bytes: &[u8]) {
        let Some(Some(ring)) = self.links.to_peers.get_mut(usize::from(to)) else {
            self.worker.count_drop(DropReason::UnknownSession);
            return;
        };
        match push_handoff(ring, kind, bytes) {
            Ok(()) => {}
            Err(reason) => {
                self.worker.count_drop(reason);
                return;
            }
        }
        self.local.handed_off += 1;
    }

    /// A datagram this worker processes (its own, or handed over): open, deliver, echo.
    fn process(
        &mut self,
        now: Instant,
        from: Path,
        buf: &mut [u8],
        inside: &mut Inside,
    ) -> Option<(Path, usize)> {
        let id = session_of(buf);
        match self.worker.handle_rx(now, from, buf) {
            Rx::Deliver {
                id,
                packet,
                new_path,
            } => {
                if inside.queue_write(packet).is_err() {
                    self.worker.count_drop(DropReason::InsideFailed);
                }
                self.note_path(now, id, new_path);
                None
            }
            Rx::Reply { dst, len, new_path } => {
                if let Some(id) = id {
                    self.note_path(now, id, new_path);
                }
                Some((dst, len))
            }
            Rx::Consumed { new_path } => {
                if let Some(id) = id {
                    self.note_path(now, id, new_path);
                }
                None
            }
            Rx::Dropped(reason) => {
                if matches!(reason, DropReason::Replay | DropReason::AuthFailed) {
                    if let Some(id) = id {
                        let e = self.pending_drops.entry((id, reason)).or_insert((0, from));
                        e.0 += 1;
                        e.1 = from;
                    }
                }
                None
            }
        }
    }

    /// A datagram off this worker's receive ring.
    fn on_datagram(
        &mut self,
        now: Instant,
        from: Path,
        buf: &mut [u8],
        inside: &mut Inside,
    ) -> Option<(Path, usize)> {
        self.local.rx_datagrams += 1;
        self.local.rx_bytes += buf.len() as u64;
        if let Ok(ty) = wire::peek_type(buf) {
            if !ty.is_data_plane() {
                if self.backend == Backend::IoUring {
                    self.event(FromWorker::ControlDatagram {
                        from: from.addr,
                        received_unix_ns: unix_ns_now(),
                        datagram: buf.to_vec(),
                    });
                } else {
                    self.worker.count_drop(DropReason::NotDataPlane);
                }
                return None;
            }
        }
        if let Some(id) = session_of(buf) {
            if self.park(id, || Parked::Inbound(from, buf.to_vec())) {
                return None;
            }
            if let Some(owner) = self.elsewhere(id) {
                self.hand_off(owner, HandoffKind::Inbound(from), buf);
                return None;
            }
        }
        self.process(now, from, buf, inside)
    }

    /// Report the drops counted since the last call and forget path reports older than
    /// [`REPORT_EVERY`]; called once a second.
    fn flush_drop_reports(&mut self, now: Instant) {
        self.reported
            .retain(|_, (_, at)| now.saturating_duration_since(*at) < REPORT_EVERY);
        if self.pending_drops.is_empty() {
            return;
        }
        // Taken out and put back, so the map keeps its capacity (no allocation per report).
        let mut pending = std::mem::take(&mut self.pending_drops);
        for ((id, reason), (count, source)) in pending.drain() {
            self.event(FromWorker::Event(Event::Drops {
                id,
                reason,
                count,
                source,
            }));
        }
        self.pending_drops = pending;
    }

    fn apply_control(&mut self, io: &mut WorkerIo, now: Instant) -> usize {
        let mut n = 0;
        if !self.markers.is_empty() {
            self.retry_markers();
        }
        while let Ok(msg) = self.links.control_in.pop() {
            n += 1;
            match msg {
                ToWorker::Route { inner, id } => {
                    self.routes.insert(inner, id);
                }
                ToWorker::Unroute { inner } => {
                    self.routes.remove(&inner);
                }
                ToWorker::List => self.list_sessions(now),
                ToWorker::Transmit { to, datagram } => {
                    if io.send_payload(Path::udp(to), &datagram) {
                        self.local.sent += 1;
                        self.local.sent_bytes += datagram.len() as u64;
                    } else {
                        self.worker.count_drop(DropReason::TxFailed);
                    }
                }
                ToWorker::Export { id, to } => self.export(id, to),
                ToWorker::Forget { id } => {
                    self.forwards.remove(&id);
                }
            }
        }
        n
    }

    fn list_sessions(&mut self, now: Instant) {
        let index = self.index;
        let all: Vec<SessionSummary> = self
            .worker
            .sessions()
            .map(|(id, s)| SessionSummary {
                id,
                owner: index,
                inner: s.inner().unwrap_or(IpAddr::from([0u8; 4])),
                active: s.active(),
                epoch: s.epoch(),
                send_counter: s.send_counter(),
                rx_packets: s.rx_packets,
                rx_bytes: s.rx_bytes,
                tx_packets: s.tx_packets,
                tx_bytes: s.tx_bytes,
                idle_ms: s.idle_ms(now),
            })
            .collect();
        let mut chunks = all.chunks(SESSIONS_PER_MESSAGE).peekable();
        if chunks.peek().is_none() {
            self.event(FromWorker::Sessions {
                sessions: Vec::new(),
                last: true,
            });
        }
        while let Some(c) = chunks.next() {
            let last = chunks.peek().is_none();
            self.event(FromWorker::Sessions {
                sessions: c.to_vec(),
                last,
            });
        }
    }

    fn publish(&mut self) {
        let c = self.worker.counters();
        self.local.delivered = c.delivered;
        self.local.drops = c.drops;
        self.local.epochs_promoted = c.epochs_promoted;
        self.local.sessions = self.worker.session_count() as u64;
        self.local.key_cache_misses = self.worker.key_cache().misses;
        self.stats.publish(&self.local);
    }
}

/// Monotonic clock of this process as a protocol [`Instant`].
#[derive(Debug, Clone, Copy)]
pub struct Clock(std::time::Instant);

impl Clock {
    /// A clock whose origin is now.
    #[must_use]
    pub fn start() -> Self {
        Clock(std::time::Instant::now())
    }

    /// Now.
    #[must_use]
    pub fn now(&self) -> Instant {
        Instant::from_nanos(u64::try_from(self.0.elapsed().as_nanos()).unwrap_or(u64::MAX))
    }
}

impl WorkerLoop {
    /// A worker loop: worker `index` of the data plane, with its I/O, inside queue and rings.
    #[must_use]
    pub fn new(
        index: u8,
        worker: Worker,
        io: WorkerIo,
        inside: Inside,
        links: Links,
        stats: Arc<SharedStats>,
        cpu: u32,
    ) -> Self {
        let backend = io.backend();
        WorkerLoop {
            io,
            inside,
            lane: Lane {
                index,
                worker,
                routes: HashMap::new(),
                links,
                stats,
                local: WorkerStats {
                    cpu,
                    ..WorkerStats::default()
                },
                backend,
                reported: HashMap::new(),
                pending_drops: HashMap::new(),
                deferred: Vec::with_capacity(64),
                forwards: HashMap::new(),
                settling: HashMap::new(),
                parked: 0,
                markers: Vec::new(),
            },
        }
    }

    /// Run until `stop` is set.
    ///
    /// # Errors
    /// The receive I/O failed in a way that cannot be retried.
    pub fn run(&mut self, clock: Clock, stop: &AtomicBool) -> std::io::Result<()> {
        let mut idle = 0u32;
        let mut last_flush = clock.now();
        let mut last_publish = last_flush;
        while !stop.load(Ordering::Relaxed) {
            let now = clock.now();
            let mut work = self.lane.worker.apply_commands(256).installed;
            work += self.lane.apply_control(&mut self.io, now);
            work += self.receive(now)?;
            work += self.drain_peers(now);
            work += self.read_inside()?;
            if let WorkerIo::Xsk { xsk, .. } = &mut self.io {
                // One transmit wake-up for everything this iteration queued.
                xsk.flush_tx();
            }
            self.inside.flush();
            if now.saturating_duration_since(last_publish) >= PUBLISH_EVERY {
                self.lane.publish();
                last_publish = now;
            }
            if now.saturating_duration_since(last_flush) >= core::time::Duration::from_secs(1) {
                self.lane.flush_drop_reports(now);
                last_flush = now;
            }
            if work == 0 {
                idle += 1;
                if idle >= IDLE_SPINS {
                    self.lane.publish();
                    let fds = [self.io.fd(), self.inside.fd()];
                    crate::sys::wait_readable(&fds, 1)?;
                    idle = 0;
                }
            } else {
                idle = 0;
            }
        }
        self.lane.flush_drop_reports(clock.now());
        self.lane.publish();
        Ok(())
    }

    fn receive(&mut self, now: Instant) -> std::io::Result<usize> {
        let Self { io, lane, inside } = self;
        let n = match io {
            WorkerIo::Xsk { xsk, next_hop, .. } => {
                let n = xsk.poll_batched(&mut |item| {
                    let (from, buf) = match item {
                        RxItem::Batch(ids) => {
                            lane.worker.prefetch(ids);
                            return None;
                        }
                        RxItem::Datagram(from, buf) => (from, buf),
                    };
                    match lane.on_datagram(now, from, buf, inside) {
                        Some((dst, len)) if dst == from => Some(len),
                        Some((dst, len)) if len <= REPLY_MAX => {
                            let mut copy = [0u8; REPLY_MAX];
                            copy[..len].copy_from_slice(&buf[..len]);
                            lane.deferred.push((dst, len as u8, copy));
                            None
                        }
                        _ => None,
                    }
                });
                next_hop.learn(xsk.learnt_next_hop());
                n
            }
            WorkerIo::Uring(u) => u.poll(false, &mut |from, buf| {
                lane.on_datagram(now, from, buf, inside)
            })?,
        };
        let deferred = std::mem::take(&mut lane.deferred);
        for (dst, len, bytes) in &deferred {
            let payload = &bytes[..usize::from(*len)];
            if io.send_payload(*dst, payload) {
                lane.local.sent += 1;
            } else {
                lane.worker.count_drop(DropReason::TxFailed);
            }
        }
        lane.deferred = deferred;
        lane.deferred.clear();
        Ok(n)
    }

    fn drain_peers(&mut self, now: Instant) -> usize {
        let Self { io, lane, inside } = self;
        let mut n = 0;
        for peer in 0..lane.links.from_peers.len() {
            for _ in 0..64 {
                // `pop` (not a one-slot read chunk): it caches the producer's index, so a
                // busy ring does not bounce that cache line between the cores per packet
                // (measured: 3x slower across cores with `read_chunk(1)`).
                let Ok(mut h) = lane.links.from_peers[peer].pop() else {
                    break;
                };
                n += 1;
                lane.local.taken_over += 1;
                let kind = h.take_kind();
                let scratch = h.bytes_mut();
                match kind {
                    HandoffKind::Session { id, from, state } => lane.adopt(id, from, state),
                    HandoffKind::Marker {
                        id,
                        from,
                        echo: false,
                    } => {
                        lane.send_marker(from, id, true);
                    }
                    HandoffKind::Marker { id, echo: true, .. } => {
                        for p in lane.settled(id) {
                            match p {
                                Parked::Inbound(from, mut buf) => {
                                    lane.inbound(io, inside, now, from, &mut buf);
                                }
                                Parked::Outbound(pkt) => lane.outbound(io, id, &pkt),
                            }
                        }
                    }
                    // Passed on again if the session moved on while this was in the ring.
                    HandoffKind::Inbound(from) => {
                        match session_of(scratch).and_then(|id| lane.elsewhere(id)) {
                            Some(to) => lane.hand_off(to, HandoffKind::Inbound(from), scratch),
                            None => lane.inbound(io, inside, now, from, scratch),
                        }
                    }
                    HandoffKind::Outbound(id) => match lane.elsewhere(id) {
                        Some(to) => lane.hand_off(to, HandoffKind::Outbound(id), scratch),
                        None => lane.outbound(io, id, scratch),
                    },
                }
            }
        }
        n
    }

    fn read_inside(&mut self) -> std::io::Result<usize> {
        let Self { io, lane, inside } = self;
        // The largest inner packet that still fits a datagram buffer once sealed.
        let room = HANDOFF_BUF - DATA_HEADER_LEN - TAG_LEN;
        // Also submits the writes queued by this iteration's receive pass.
        inside.poll(&mut |pkt| {
            lane.local.inside_packets += 1;
            let len = pkt.len();
            let Some(id) = inner_destination(pkt).and_then(|d| lane.routes.get(&d).copied()) else {
                lane.worker.count_drop(DropReason::NoRoute);
                return;
            };
            if len > room {
                lane.worker.count_drop(DropReason::TooLarge);
                return;
            }
            if lane.park(id, || Parked::Outbound(pkt.to_vec())) {
                return;
            }
            match lane.elsewhere(id) {
                Some(owner) => lane.hand_off(owner, HandoffKind::Outbound(id), pkt),
                // Here (or nowhere: sealing counts it as an unknown session).
                None => lane.outbound(io, id, pkt),
            }
        })
    }
}

/// `CLOCK_REALTIME` in nanoseconds since the Unix epoch (0 before it, or past 2554).
fn unix_ns_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .ok()
        .and_then(|d| u64::try_from(d.as_nanos()).ok())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_next_hop_learnt_by_one_worker_reaches_another_at_its_next_transmit() {
        let learner = NextHop::learnt();
        let sender = learner.clone();
        let (mut mine, mut theirs) = ([0xFF; 6], [0xFF; 6]);
        sender.refresh(&mut theirs);
        assert_eq!(theirs, [0xFF; 6], "nothing learnt yet: the template stays");
        learner.learn(Some([2, 0, 0, 0, 0, 7]));
        learner.refresh(&mut mine);
        assert_eq!(mine, [2, 0, 0, 0, 0, 7]);
        sender.refresh(&mut theirs);
        assert_eq!(theirs, [2, 0, 0, 0, 0, 7], "learnt by the other worker");
        let configured = NextHop::configured();
        let mut fixed = [2, 0, 0, 0, 0, 9];
        configured.learn(Some([2, 0, 0, 0, 0, 7]));
        configured.refresh(&mut fixed);
        assert_eq!(
            fixed,
            [2, 0, 0, 0, 0, 9],
            "a configured next hop is never replaced"
        );
    }

    fn frame(ethertype: u16, ip: &[u8], pad_to: usize) -> Vec<u8> {
        let mut f = vec![2, 0, 0, 0, 0, 1, 2, 0, 0, 0, 0, 2];
        f.extend_from_slice(&ethertype.to_be_bytes());
        f.extend_from_slice(ip);
        f.resize(f.len().max(pad_to), 0xEE);
        f
    }

    #[test]
    fn inside_frames_lose_their_ethernet_header_and_padding() {
        // IPv4, 28 bytes (total length 28), padded to the 60-byte Ethernet minimum.
        let mut v4 = vec![0x45, 0, 0, 28, 0, 1, 0x40, 0, 64, 17, 0, 0];
        v4.extend_from_slice(&[10, 89, 0, 2, 10, 88, 0, 2]);
        v4.extend_from_slice(&[0x23, 0x28, 0x15, 0xb3, 0, 8, 0, 0]);
        assert_eq!(ip_packet_of_frame(&frame(ETH_P_IP, &v4, 60)), Some(&v4[..]));
        // IPv6, payload length 8.
        let mut v6 = vec![0x60, 0, 0, 0, 0, 8, 17, 64];
        v6.extend_from_slice(&[0u8; 32]);
        v6.extend_from_slice(&[0x23, 0x28, 0x15, 0xb3, 0, 8, 0, 0]);
        assert_eq!(
            ip_packet_of_frame(&frame(ETH_P_IPV6, &v6, 60)),
            Some(&v6[..])
        );
        assert_eq!(inner_destination(&v4), Some(IpAddr::from([10, 88, 0, 2])));
        // Not IP, a version that disagrees with the ethertype, a length beyond the frame,
        // no IP header at all.
        assert_eq!(ip_packet_of_frame(&frame(0x0806, &v4, 60)), None);
        assert_eq!(ip_packet_of_frame(&frame(ETH_P_IPV6, &v4, 60)), None);
        let mut long = v4.clone();
        long[2..4].copy_from_slice(&100u16.to_be_bytes());
        assert_eq!(ip_packet_of_frame(&frame(ETH_P_IP, &long, 60)), None);
        assert_eq!(ip_packet_of_frame(&frame(ETH_P_IP, &[], 0)), None);
    }
}
