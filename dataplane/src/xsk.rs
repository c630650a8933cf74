//! The AF_XDP receive and transmit path for one [`Worker`] (first slice: IPv4 only).
//!
//! [`XskRx::bind`] creates a UMEM and one AF_XDP socket on `(interface, queue)` with xsk-rs
//! (libxdp underneath), without letting libxdp load its own XDP program
//! (`XSK_LIBXDP_FLAGS_INHIBIT_PROG_LOAD`): the project's XDP program (crate `jumping-ebpf`)
//! must be attached to the interface, and the socket's fd ([`XskRx::fd`]) put into its `xsks`
//! map at the queue index (`jumping_ebpf::set_xsk`), before packets arrive here. Every UMEM
//! frame that fits starts on the fill ring.
//!
//! [`XskRx::poll_rx`] takes one batch of received frames off the RX ring, parses
//! Ethernet → IPv4 → UDP to find the UDP payload and the sender's address, runs
//! [`Worker::handle_rx`] on the payload **in place in the UMEM frame**, hands delivered inner
//! packets to `deliver`, and returns every frame to the fill ring — except heartbeat echoes
//! ([`Rx::Reply`]), which are turned into the reply **in the same frame** (MACs, addresses and
//! ports swapped, lengths and IPv4 header checksum rewritten, UDP checksum 0) and put on the
//! TX ring. Each call first reaps the completion ring, returning sent frames to the free list
//! and from there to the fill ring.
//!
//! [`XskRx::send_inner`] takes a free frame, writes Ethernet/IPv4/UDP headers from an
//! [`L2Template`] and the session's active path, seals the inner packet in place with
//! [`Worker::encapsulate`] and puts the frame on the TX ring.
//!
//! The UDP checksum of transmitted datagrams is 0 ("no checksum"), which RFC 768 allows for
//! IPv4 (not for IPv6); the payload is authenticated by the tunnel's AEAD anyway.
//!
//! After producing on the TX ring the socket is always kicked with `sendto` (xsk-rs
//! [`TxQueue::wakeup`]): the socket is not bound with `XDP_USE_NEED_WAKEUP`, and in copy mode
//! every transmit is driven by `sendto`, which sends a bounded batch per call, so the socket
//! is kicked again on each poll while frames are outstanding.
//!
//! Limits of this slice:
//! - IPv4 only, no VLAN tags, no IP fragments (the XDP program passes fragments to the
//!   kernel anyway); anything else is counted in [`XskRxCounters::not_ipv4_udp`] and recycled.
//! - No ARP/neighbour resolution: replies go back to the MAC they came from, and
//!   [`XskRx::send_inner`] uses the caller's [`L2Template`] (one next hop for all clients).
//! - A reply whose destination is not the datagram's source (the worker answers to the active
//!   path, which may differ during a path change) is not sent but counted in
//!   [`XskRxCounters::replies_unsent`], as is one that finds the TX ring full.
//! - Copy or zero-copy is the kernel's choice unless [`XskConfig::force_copy`] is set (veth
//!   supports only copy mode).

use std::io;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::num::NonZeroU32;
use std::os::fd::{AsRawFd, BorrowedFd, RawFd};

use jumping_protocol::path::Transport;
use jumping_protocol::wire::DATA_HEADER_LEN;
use jumping_protocol::{Instant, Path, SessionId};
use xsk_rs::config::{
    BindFlags, FrameSize, Interface, LibxdpFlags, QueueSize, SocketConfig, UmemConfig,
};
use xsk_rs::{CompQueue, FillQueue, FrameDesc, RxQueue, TxQueue, Umem};

use crate::worker::{Rx, Worker, WorkerDrop};

/// Sizes of the UMEM and rings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct XskConfig {
    /// Number of UMEM frames.
    pub frames: u32,
    /// Size of each frame (power of two, 2048 or 4096).
    pub frame_size: u32,
    /// Size of the fill, completion, RX and TX rings (power of two).
    pub ring_size: u32,
    /// Most frames taken off the RX ring per [`XskRx::poll_rx`].
    pub batch: usize,
    /// Bind with `XDP_COPY` (needed on veth, which has no zero-copy).
    pub force_copy: bool,
}

impl Default for XskConfig {
    fn default() -> Self {
        Self {
            frames: 4096,
            frame_size: 2048,
            ring_size: 2048,
            batch: 64,
            force_copy: false,
        }
    }
}

/// Why [`XskRx::bind`] failed.
#[derive(Debug, thiserror::Error)]
pub enum XskError {
    /// A size in [`XskConfig`] was rejected.
    #[error("invalid AF_XDP configuration: {0}")]
    Config(String),
    /// The interface name contains a NUL byte.
    #[error("invalid interface name")]
    Interface,
    /// Creating the UMEM failed.
    #[error("creating the UMEM: {0}")]
    Umem(String),
    /// Creating or binding the socket failed.
    #[error("creating the AF_XDP socket: {0}")]
    Socket(String),
    /// The socket came back without fill/completion rings (the UMEM was already bound to this
    /// interface and queue).
    #[error("the AF_XDP socket came back without its fill and completion rings")]
    NoFillRing,
}

/// What [`XskRx::poll_rx`] saw, cumulatively.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct XskRxCounters {
    /// Frames taken off the RX ring.
    pub frames: u64,
    /// Frames that were not a well-formed, unfragmented IPv4/UDP datagram.
    pub not_ipv4_udp: u64,
    /// Datagrams handed to the worker.
    pub to_worker: u64,
    /// Inner packets handed to `deliver`.
    pub delivered: u64,
    /// Heartbeat echoes the worker produced that were not sent (destination other than the
    /// datagram's source, or TX ring full).
    pub replies_unsent: u64,
    /// Heartbeat echoes put on the TX ring.
    pub replies_sent: u64,
    /// Frames put on the TX ring by [`XskRx::send_inner`].
    pub inner_sent: u64,
    /// Frames the kernel reported done on the completion ring.
    pub tx_completed: u64,
    /// Results carrying a `new_path` (path validation is the control process's job).
    pub new_path_events: u64,
}

/// One AF_XDP socket on one queue, with its UMEM, feeding one [`Worker`].
#[derive(Debug)]
pub struct XskRx {
    // Field order is drop order: queues (which hold the socket) before the UMEM.
    rx: RxQueue,
    fill: FillQueue,
    tx: TxQueue,
    comp: CompQueue,
    umem: Umem,
    /// Frames owned by userspace and not yet on the fill ring.
    free: Vec<FrameDesc>,
    /// Receive batch (descriptors overwritten by each consume).
    batch: Vec<FrameDesc>,
    /// Replies of the current receive batch, to go on the TX ring.
    replies: Vec<FrameDesc>,
    /// Completion batch (descriptors overwritten by each consume).
    completed: Vec<FrameDesc>,
    /// Frames on the TX ring or in flight, not yet back on the completion ring.
    tx_outstanding: usize,
    counters: XskRxCounters,
    total_frames: usize,
}

fn queue_size(n: u32) -> Result<QueueSize, XskError> {
    QueueSize::new(n).map_err(|e| XskError::Config(e.to_string()))
}

impl XskRx {
    /// Create the UMEM and an AF_XDP socket bound to `(if_name, queue)`, and put every frame
    /// the fill ring can hold on it.
    ///
    /// # Errors
    /// [`XskError`] if a size is invalid or libxdp/the kernel refuses the UMEM or the socket
    /// (needs root or `CAP_NET_RAW`+`CAP_BPF`).
    pub fn bind(if_name: &str, queue: u32, config: XskConfig) -> Result<Self, XskError> {
        let frame_count =
            NonZeroU32::new(config.frames).ok_or_else(|| XskError::Config("zero frames".into()))?;
        let umem_config = UmemConfig::builder()
            .frame_size(
                FrameSize::new(config.frame_size).map_err(|e| XskError::Config(e.to_string()))?,
            )
            .fill_queue_size(queue_size(config.ring_size)?)
            .comp_queue_size(queue_size(config.ring_size)?)
            .build()
            .map_err(|e| XskError::Config(e.to_string()))?;
        let mut bind_flags = BindFlags::empty();
        if config.force_copy {
            bind_flags |= BindFlags::XDP_COPY;
        }
        let socket_config = SocketConfig::builder()
            .rx_queue_size(queue_size(config.ring_size)?)
            .tx_queue_size(queue_size(config.ring_size)?)
            .libxdp_flags(LibxdpFlags::XSK_LIBXDP_FLAGS_INHIBIT_PROG_LOAD)
            .bind_flags(bind_flags)
            .build();
        let interface: Interface = if_name.parse().map_err(|_| XskError::Interface)?;

        let (umem, frames) = Umem::new(umem_config, frame_count, false)
            .map_err(|e| XskError::Umem(e.to_string()))?;
        // SAFETY: the UMEM was just created and is not shared with any other socket, so the
        // (interface, queue) pair is not already bound from it and the INHIBIT_PROG_LOAD
        // requirement for shared UMEMs does not apply (it is set anyway).
        let (tx, rx, rings) =
            unsafe { xsk_rs::Socket::new(socket_config, &umem, &interface, queue) }
                .map_err(|e| XskError::Socket(e.to_string()))?;
        let (fill, comp) = rings.ok_or(XskError::NoFillRing)?;

        let batch_len = config.batch.max(1);
        let total_frames = frames.len();
        let mut me = Self {
            rx,
            fill,
            tx,
            comp,
            umem,
            free: frames,
            batch: vec![FrameDesc::default(); batch_len],
            replies: Vec::with_capacity(batch_len),
            completed: vec![FrameDesc::default(); batch_len],
            tx_outstanding: 0,
            counters: XskRxCounters::default(),
            total_frames,
        };
        me.refill();
        Ok(me)
    }

    /// The AF_XDP socket's fd, to put into the XDP program's `xsks` map.
    #[must_use]
    pub fn fd(&self) -> BorrowedFd<'_> {
        let raw: RawFd = self.rx.fd().as_raw_fd();
        // SAFETY: `raw` is the socket's fd, owned by the socket that `self.rx` keeps alive;
        // the returned borrow cannot outlive `self`.
        unsafe { BorrowedFd::borrow_raw(raw) }
    }

    /// Cumulative counters.
    #[must_use]
    pub fn counters(&self) -> &XskRxCounters {
        &self.counters
    }

    /// Frames currently on the fill, RX, TX or completion ring (owned by the kernel).
    #[must_use]
    pub fn frames_in_kernel(&self) -> usize {
        self.total_frames - self.free.len()
    }

    /// Move as many free frames as fit onto the fill ring.
    fn refill(&mut self) {
        let room = usize::try_from(
            self.fill
                .nb_free(u32::try_from(self.free.len()).unwrap_or(u32::MAX)),
        )
        .unwrap_or(0)
        .min(self.free.len());
        if room == 0 {
            return;
        }
        let start = self.free.len() - room;
        // SAFETY: every descriptor in `free` came from `Umem::new` for `self.umem` or off this
        // socket's RX ring, and none is referenced elsewhere: userspace no longer touches
        // them once they are handed to the kernel here.
        let done = unsafe { self.fill.produce(&self.free[start..]) };
        if done == room {
            self.free.truncate(start);
        }
    }

    /// Wait up to `timeout_ms` for the RX ring to have frames.
    ///
    /// # Errors
    /// `poll(2)` failed.
    pub fn wait(&mut self, timeout_ms: i32) -> io::Result<bool> {
        self.rx.poll(timeout_ms)
    }

    /// Take up to one batch of received frames off the RX ring, pass each UDP payload to
    /// `worker.handle_rx` in place, hand delivered inner packets to `deliver`, and return the
    /// frames to the fill ring. Does not block. Returns the number of frames taken.
    pub fn poll_rx(
        &mut self,
        worker: &mut Worker,
        now: Instant,
        deliver: &mut impl FnMut(SessionId, &[u8]),
    ) -> usize {
        self.reap_completions();
        // SAFETY: `batch` descriptors are overwritten with frames of this socket's UMEM, which
        // the kernel has finished writing and hands to userspace.
        let n = unsafe { self.rx.consume(&mut self.batch) };
        let Self {
            umem,
            batch,
            counters,
            free,
            replies,
            ..
        } = self;
        replies.clear();
        for desc in &mut batch[..n] {
            counters.frames += 1;
            // SAFETY: `desc` came off this socket's RX ring, so it names a frame of `umem`
            // that the kernel no longer writes (it is on neither the fill nor the RX ring) and
            // nothing else in userspace references it until it goes back on the fill ring.
            let mut data = unsafe { umem.data_mut(desc) };
            let frame = data.contents_mut();
            let Some(at) = locate_ipv4_udp(frame) else {
                counters.not_ipv4_udp += 1;
                free.push(*desc);
                continue;
            };
            counters.to_worker += 1;
            let from = Path::udp(SocketAddr::V4(at.from));
            let mut reply_len = None;
            match worker.handle_rx(now, from, &mut frame[at.payload.clone()]) {
                Rx::Deliver {
                    id,
                    packet,
                    new_path,
                } => {
                    counters.new_path_events += u64::from(new_path.is_some());
                    counters.delivered += 1;
                    deliver(id, packet);
                }
                Rx::Reply { dst, len, new_path } => {
                    counters.new_path_events += u64::from(new_path.is_some());
                    if dst == from {
                        reply_len = Some(len);
                    } else {
                        counters.replies_unsent += 1;
                    }
                }
                Rx::Consumed { new_path } => {
                    counters.new_path_events += u64::from(new_path.is_some());
                }
                Rx::Dropped(_) => {}
            }
            match reply_len.and_then(|len| turn_into_reply(frame, &at, len)) {
                Some(frame_len) => {
                    data.cursor().set_pos(frame_len);
                    replies.push(*desc);
                }
                None => {
                    counters.replies_unsent += u64::from(reply_len.is_some());
                    free.push(*desc);
                }
            }
        }
        if !self.replies.is_empty() {
            // SAFETY: the reply frames came off this socket's RX ring (frames of `self.umem`),
            // were rewritten above and are referenced nowhere else until the completion ring
            // hands them back.
            let done = unsafe { self.tx.produce(&self.replies) };
            self.tx_outstanding += done;
            self.counters.replies_sent += done as u64;
            let unsent = &self.replies[done..];
            self.counters.replies_unsent += unsent.len() as u64;
            self.free.extend_from_slice(unsent);
        }
        self.kick();
        self.refill();
        n
    }

    /// Take a free frame, build an Ethernet/IPv4/UDP datagram to the session's active path
    /// from `l2`, seal `inner` into its UDP payload in place with [`Worker::encapsulate`], and
    /// put it on the TX ring. Returns the frame length put on the wire.
    ///
    /// # Errors
    /// [`XskTxError`]: no free frame, TX ring full, the worker refused (no session, no active
    /// path, too large for the frame: counted by the worker), or the active path is not
    /// IPv4/UDP. The frame goes back to the free list in every case.
    pub fn send_inner(
        &mut self,
        worker: &mut Worker,
        id: SessionId,
        inner: &[u8],
        l2: &L2Template,
    ) -> Result<usize, XskTxError> {
        self.reap_completions();
        if self.tx.nb_free(1) == 0 {
            self.kick();
            return Err(XskTxError::TxRingFull);
        }
        let Some(mut desc) = self.free.pop() else {
            return Err(XskTxError::NoFreeFrame);
        };
        let result = self.build_inner(&mut desc, worker, id, inner, l2);
        match result {
            Ok(len) => {
                // SAFETY: `desc` is a frame of `self.umem` taken off the free list (owned by
                // userspace, referenced nowhere else) and was just written.
                let done = unsafe { self.tx.produce_one(&desc) };
                if done == 0 {
                    self.free.push(desc);
                    return Err(XskTxError::TxRingFull);
                }
                self.tx_outstanding += 1;
                self.counters.inner_sent += 1;
                self.kick();
                Ok(len)
            }
            Err(e) => {
                self.free.push(desc);
                Err(e)
            }
        }
    }

    fn build_inner(
        &self,
        desc: &mut FrameDesc,
        worker: &mut Worker,
        id: SessionId,
        inner: &[u8],
        l2: &L2Template,
    ) -> Result<usize, XskTxError> {
        // SAFETY: `desc` is a free frame of `self.umem`, owned by userspace and referenced
        // nowhere else (the caller took it off the free list).
        let mut data = unsafe { self.umem.data_mut(desc) };
        let mut cursor = data.cursor();
        let room = cursor.buf_len();
        cursor.set_pos(room);
        let frame = data.contents_mut();
        let at = HEADERS_LEN + DATA_HEADER_LEN;
        if frame.len() < at + inner.len() {
            return Err(XskTxError::Worker(WorkerDrop::TooLarge));
        }
        frame[at..at + inner.len()].copy_from_slice(inner);
        let (dst, udp_payload) = worker
            .encapsulate(id, &mut frame[HEADERS_LEN..], inner.len())
            .map_err(XskTxError::Worker)?;
        let SocketAddr::V4(dst_addr) = dst.addr else {
            return Err(XskTxError::NotIpv4Udp);
        };
        if dst.transport != Transport::Udp {
            return Err(XskTxError::NotIpv4Udp);
        }
        let len = write_headers(frame, l2, dst_addr, udp_payload);
        data.cursor().set_pos(len);
        Ok(len)
    }

    /// Return every frame on the completion ring to the free list.
    fn reap_completions(&mut self) {
        loop {
            // SAFETY: the completion ring hands back frames of `self.umem` that this socket
            // put on its TX ring; the kernel is done with them.
            let n = unsafe { self.comp.consume(&mut self.completed) };
            if n == 0 {
                break;
            }
            self.free.extend_from_slice(&self.completed[..n]);
            self.tx_outstanding = self.tx_outstanding.saturating_sub(n);
            self.counters.tx_completed += n as u64;
        }
    }

    /// Kick the kernel to transmit while frames are outstanding. Errors that only mean "try
    /// again" are swallowed by xsk-rs; others leave the frames on the ring for the next kick.
    fn kick(&self) {
        if self.tx_outstanding > 0 {
            let _ = self.tx.wakeup();
        }
    }
}

/// Fixed link-layer and source fields of transmitted datagrams (one next hop).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct L2Template {
    /// Our MAC (Ethernet source).
    pub src_mac: [u8; 6],
    /// The next hop's MAC (Ethernet destination).
    pub dst_mac: [u8; 6],
    /// Our IPv4 address (IP source).
    pub src_ip: Ipv4Addr,
    /// Our tunnel port (UDP source).
    pub src_port: u16,
}

/// Why [`XskRx::send_inner`] did not transmit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum XskTxError {
    /// Every UMEM frame is on a ring.
    #[error("no free UMEM frame")]
    NoFreeFrame,
    /// The TX ring is full.
    #[error("the TX ring is full")]
    TxRingFull,
    /// The worker did not seal the packet (counted by the worker).
    #[error("the worker dropped the packet: {0:?}")]
    Worker(WorkerDrop),
    /// The session's active path is not UDP over IPv4.
    #[error("the active path is not UDP over IPv4")]
    NotIpv4Udp,
}

const ETH_HLEN: usize = 14;
const ETH_P_IP: u16 = 0x0800;
const IPPROTO_UDP: u8 = 17;
const UDP_HLEN: usize = 8;

const IPV4_HLEN: usize = 20;
/// Ethernet + IPv4 without options + UDP headers of transmitted frames.
const HEADERS_LEN: usize = ETH_HLEN + IPV4_HLEN + UDP_HLEN;

/// Where the parts of a received Ethernet/IPv4/UDP frame are.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Ipv4Udp {
    from: SocketAddrV4,
    /// IPv4 header length (options included).
    ihl: usize,
    /// UDP payload within the frame.
    payload: std::ops::Range<usize>,
}

/// Find the UDP payload of an Ethernet/IPv4/UDP frame and its sender. `None` for anything
/// else: other ethertypes (VLAN included), IPv4 options beyond the frame, fragments, lengths
/// that disagree with the frame. Checksums are not verified (the tunnel's AEAD authenticates
/// the payload; a corrupted header at worst misattributes the source, which the worker
/// treats as a path change to validate).
#[must_use]
pub fn parse_ipv4_udp(frame: &mut [u8]) -> Option<(SocketAddrV4, &mut [u8])> {
    let at = locate_ipv4_udp(frame)?;
    Some((at.from, &mut frame[at.payload]))
}

fn locate_ipv4_udp(frame: &[u8]) -> Option<Ipv4Udp> {
    let ethertype = u16::from_be_bytes(frame.get(12..ETH_HLEN)?.try_into().ok()?);
    if ethertype != ETH_P_IP {
        return None;
    }
    let ip = frame.get(ETH_HLEN..)?;
    let vihl = *ip.first()?;
    if vihl >> 4 != 4 {
        return None;
    }
    let ihl = usize::from(vihl & 0x0F) * 4;
    if ihl < 20 || ip.len() < ihl {
        return None;
    }
    let total = usize::from(u16::from_be_bytes([ip[2], ip[3]]));
    let frag = u16::from_be_bytes([ip[6], ip[7]]);
    if frag & 0x3FFF != 0 || ip[9] != IPPROTO_UDP || total < ihl + UDP_HLEN || total > ip.len() {
        return None;
    }
    let src_ip = Ipv4Addr::new(ip[12], ip[13], ip[14], ip[15]);
    let udp = &ip[ihl..total];
    let src_port = u16::from_be_bytes([udp[0], udp[1]]);
    let udp_len = usize::from(u16::from_be_bytes([udp[4], udp[5]]));
    if udp_len < UDP_HLEN || udp_len > udp.len() {
        return None;
    }
    let start = ETH_HLEN + ihl + UDP_HLEN;
    Some(Ipv4Udp {
        from: SocketAddrV4::new(src_ip, src_port),
        ihl,
        payload: start..start + udp_len - UDP_HLEN,
    })
}

/// Turn a received frame located by `at`, whose UDP payload now starts with `len` bytes of
/// reply, into that reply back to the sender: Ethernet MACs, IPv4 addresses and UDP ports
/// swapped, lengths set, IPv4 header checksum recomputed, UDP checksum 0 (allowed for IPv4).
/// Returns the new frame length, or `None` if the reply does not fit the frame.
fn turn_into_reply(frame: &mut [u8], at: &Ipv4Udp, len: usize) -> Option<usize> {
    let ip_total = at.ihl + UDP_HLEN + len;
    let frame_len = ETH_HLEN + ip_total;
    if frame_len > frame.len() || at.payload.start + len > frame.len() {
        return None;
    }
    let ip_total16 = u16::try_from(ip_total).ok()?;
    let udp_len16 = u16::try_from(UDP_HLEN + len).ok()?;
    let (eth, ip) = frame.split_at_mut(ETH_HLEN);
    let (dst_mac, src_mac) = eth.split_at_mut(6);
    dst_mac.swap_with_slice(&mut src_mac[..6]);
    ip[2..4].copy_from_slice(&ip_total16.to_be_bytes());
    ip[8] = 64; // TTL
    let (src_ip, dst_ip) = ip[12..20].split_at_mut(4);
    src_ip.swap_with_slice(dst_ip);
    set_ipv4_checksum(&mut ip[..at.ihl]);
    let udp = &mut ip[at.ihl..at.ihl + UDP_HLEN];
    let (sport, dport) = udp[..4].split_at_mut(2);
    sport.swap_with_slice(dport);
    udp[4..6].copy_from_slice(&udp_len16.to_be_bytes());
    udp[6..8].copy_from_slice(&[0, 0]);
    Some(frame_len)
}

/// Write Ethernet, IPv4 (no options, DF set) and UDP headers for a UDP payload of
/// `payload_len` bytes already at `frame[HEADERS_LEN..]`. Returns the frame length.
fn write_headers(
    frame: &mut [u8],
    l2: &L2Template,
    dst: SocketAddrV4,
    payload_len: usize,
) -> usize {
    let ip_total = IPV4_HLEN + UDP_HLEN + payload_len;
    // The worker's datagrams are far below 64 KiB; saturate rather than wrap if not.
    let ip_total16 = u16::try_from(ip_total).unwrap_or(u16::MAX);
    let udp_len16 = u16::try_from(UDP_HLEN + payload_len).unwrap_or(u16::MAX);
    frame[0..6].copy_from_slice(&l2.dst_mac);
    frame[6..12].copy_from_slice(&l2.src_mac);
    frame[12..14].copy_from_slice(&ETH_P_IP.to_be_bytes());
    let ip = &mut frame[ETH_HLEN..ETH_HLEN + IPV4_HLEN];
    ip[0] = 0x45;
    ip[1] = 0;
    ip[2..4].copy_from_slice(&ip_total16.to_be_bytes());
    ip[4..6].copy_from_slice(&[0, 0]); // identification (DF set, never fragmented)
    ip[6..8].copy_from_slice(&0x4000u16.to_be_bytes());
    ip[8] = 64;
    ip[9] = IPPROTO_UDP;
    ip[12..16].copy_from_slice(&l2.src_ip.octets());
    ip[16..20].copy_from_slice(&dst.ip().octets());
    set_ipv4_checksum(ip);
    let udp = &mut frame[ETH_HLEN + IPV4_HLEN..HEADERS_LEN];
    udp[0..2].copy_from_slice(&l2.src_port.to_be_bytes());
    udp[2..4].copy_from_slice(&dst.port().to_be_bytes());
    udp[4..6].copy_from_slice(&udp_len16.to_be_bytes());
    udp[6..8].copy_from_slice(&[0, 0]); // no UDP checksum (RFC 768, IPv4 only)
    ETH_HLEN + ip_total
}

/// Recompute the checksum of an IPv4 header (`header.len()` = IHL × 4).
fn set_ipv4_checksum(header: &mut [u8]) {
    header[10] = 0;
    header[11] = 0;
    let mut sum: u32 = header
        .chunks_exact(2)
        .map(|w| u32::from(u16::from_be_bytes([w[0], w[1]])))
        .sum();
    while sum > 0xFFFF {
        sum = (sum & 0xFFFF) + (sum >> 16);
    }
    #[allow(clippy::cast_possible_truncation)] // folded to 16 bits above
    let sum = !(sum as u16);
    header[10..12].copy_from_slice(&sum.to_be_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(ethertype: u16, frag: u16, proto: u8, payload: &[u8]) -> Vec<u8> {
        let mut f = vec![0u8; 12];
        f.extend_from_slice(&ethertype.to_be_bytes());
        let total = u16::try_from(20 + 8 + payload.len()).expect("len");
        f.extend_from_slice(&[0x45, 0]);
        f.extend_from_slice(&total.to_be_bytes());
        f.extend_from_slice(&[0, 0]);
        f.extend_from_slice(&frag.to_be_bytes());
        f.extend_from_slice(&[64, proto, 0, 0, 10, 77, 0, 2, 10, 77, 0, 1]);
        f.extend_from_slice(&4242u16.to_be_bytes());
        f.extend_from_slice(&51820u16.to_be_bytes());
        f.extend_from_slice(&(total - 20).to_be_bytes());
        f.extend_from_slice(&[0, 0]);
        f.extend_from_slice(payload);
        f.resize(f.len().max(60), 0); // Ethernet padding
        f
    }

    #[test]
    fn parses_ipv4_udp_and_ignores_padding() {
        let mut f = frame(ETH_P_IP, 0, IPPROTO_UDP, b"abc");
        let (from, payload) = parse_ipv4_udp(&mut f).expect("parsed");
        assert_eq!(from, "10.77.0.2:4242".parse().expect("addr"));
        assert_eq!(payload, b"abc");
    }

    fn checksum_ok(header: &[u8]) -> bool {
        let mut sum: u32 = header
            .chunks_exact(2)
            .map(|w| u32::from(u16::from_be_bytes([w[0], w[1]])))
            .sum();
        while sum > 0xFFFF {
            sum = (sum & 0xFFFF) + (sum >> 16);
        }
        sum == 0xFFFF
    }

    #[test]
    fn a_frame_turns_into_its_reply_in_place() {
        let mut f = frame(ETH_P_IP, 0, IPPROTO_UDP, b"abcdefgh");
        f[..12].copy_from_slice(&[1, 1, 1, 1, 1, 1, 2, 2, 2, 2, 2, 2]);
        let at = locate_ipv4_udp(&f).expect("parsed");
        f[at.payload.start..at.payload.start + 3].copy_from_slice(b"xyz");
        let len = turn_into_reply(&mut f, &at, 3).expect("fits");
        assert_eq!(len, 14 + 20 + 8 + 3);
        assert_eq!(&f[..12], &[2, 2, 2, 2, 2, 2, 1, 1, 1, 1, 1, 1]);
        assert!(checksum_ok(&f[14..34]));
        let (from, payload) = parse_ipv4_udp(&mut f[..len]).expect("reply parses");
        assert_eq!(from, "10.77.0.1:51820".parse().expect("addr"));
        assert_eq!(payload, b"xyz");
        assert_eq!(&f[26..34], &[10, 77, 0, 1, 10, 77, 0, 2]);
        assert_eq!(&f[36..38], &4242u16.to_be_bytes());
        assert_eq!(&f[40..42], &[0, 0]);
    }

    #[test]
    fn headers_are_written_from_the_template() {
        let mut f = vec![0u8; 100];
        f[HEADERS_LEN..HEADERS_LEN + 4].copy_from_slice(b"data");
        let l2 = L2Template {
            src_mac: [2, 0, 0, 0, 0, 1],
            dst_mac: [2, 0, 0, 0, 0, 2],
            src_ip: Ipv4Addr::new(10, 77, 0, 1),
            src_port: 51820,
        };
        let len = write_headers(&mut f, &l2, "10.77.0.2:4242".parse().expect("addr"), 4);
        assert_eq!(len, HEADERS_LEN + 4);
        assert!(checksum_ok(&f[14..34]));
        let (from, payload) = parse_ipv4_udp(&mut f[..len]).expect("parses");
        assert_eq!(from, "10.77.0.1:51820".parse().expect("addr"));
        assert_eq!(payload, b"data");
        assert_eq!(&f[..12], &[2, 0, 0, 0, 0, 2, 2, 0, 0, 0, 0, 1]);
    }

    #[test]
    fn rejects_other_frames() {
        for mut f in [
            frame(0x86DD, 0, IPPROTO_UDP, b"abc"),
            frame(ETH_P_IP, 0x2000, IPPROTO_UDP, b"abc"),
            frame(ETH_P_IP, 1, IPPROTO_UDP, b"abc"),
            frame(ETH_P_IP, 0, 6, b"abc"),
            frame(ETH_P_IP, 0, IPPROTO_UDP, b"abc")[..40].to_vec(),
            vec![0u8; 10],
        ] {
            assert!(parse_ipv4_udp(&mut f).is_none());
        }
    }
}
