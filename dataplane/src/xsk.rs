//! The AF_XDP receive and transmit path for one [`Worker`] (UDP over IPv4 and IPv6).
//!
//! [`XskRx::bind`] creates a UMEM and one AF_XDP socket on `(interface, queue)` with xsk-rs
//! (libxdp underneath), without letting libxdp load its own XDP program
//! (`XSK_LIBXDP_FLAGS_INHIBIT_PROG_LOAD`): the project's XDP program (crate `jumping-ebpf`)
//! must be attached to the interface, and the socket's fd ([`XskRx::fd`]) put into its `xsks`
//! map at the queue index (`jumping_ebpf::set_xsk`), before packets arrive here. Every UMEM
//! frame that fits starts on the fill ring.
//!
//! [`XskRx::poll_rx`] takes one batch of received frames off the RX ring, parses
//! Ethernet → IPv4 or IPv6 → UDP to find the UDP payload and the sender's address, runs
//! [`Worker::handle_rx`] on the payload **in place in the UMEM frame**, hands delivered inner
//! packets to `deliver`, and returns every frame to the fill ring — except heartbeat echoes
//! ([`Rx::Reply`]), which are turned into the reply **in the same frame** (MACs, addresses and
//! ports swapped, lengths rewritten, the IPv4 header checksum or the IPv6 UDP checksum
//! recomputed) and put on the TX ring. Each call first reaps the completion ring, returning
//! sent frames to the free list and from there to the fill ring.
//!
//! [`XskRx::send_inner`] takes a free frame, writes Ethernet/IPv4/UDP or Ethernet/IPv6/UDP
//! headers (after the family of the session's active path) from an [`L2Template`], seals the
//! inner packet in place with [`Worker::encapsulate`] and puts the frame on the TX ring. The
//! worker reveals the active path only when it seals, so the inner packet is first placed
//! behind IPv4-sized headers and, for an IPv6 path, the sealed datagram is moved 20 bytes
//! further back in the frame before the headers are written.
//!
//! The same socket serves an inside NIC (`[inside] kind = "af_xdp"`), where frames carry bare
//! inner IP packets rather than tunnel datagrams: [`XskRx::poll_frames`] hands each received
//! frame whole to the caller and recycles it, and [`XskRx::send_frame`] writes an Ethernet
//! header from an [`EthTemplate`] and copies an inner packet behind it into a free frame.
//!
//! Over IPv4 the UDP checksum of transmitted datagrams is 0 ("no checksum", allowed by
//! RFC 768; the payload is authenticated by the tunnel's AEAD anyway). Over IPv6 the checksum
//! is mandatory (RFC 8200 section 8.1) and is computed over the pseudo-header and the whole
//! datagram, a result of 0 being sent as `0xFFFF`.
//!
//! After producing on the TX ring the socket is always kicked with `sendto` (xsk-rs
//! [`TxQueue::wakeup`]): the socket is not bound with `XDP_USE_NEED_WAKEUP`, and in copy mode
//! every transmit is driven by `sendto`, which sends a bounded batch per call, so the socket
//! is kicked again on each poll while frames are outstanding.
//!
//! Limits of this slice:
//! - No VLAN tags, no IP fragments (the XDP program passes fragments to the kernel anyway),
//!   no IPv6 extension headers (UDP must be the IPv6 header's next header); anything else is
//!   counted in [`XskRxCounters::not_ip_udp`] and recycled.
//! - No ARP/neighbour resolution: replies go back to the MAC they came from, and
//!   [`XskRx::send_inner`] uses the caller's [`L2Template`] (one next hop for all clients,
//!   both families).
//! - A reply whose destination is not the datagram's source (the worker answers to the active
//!   path, which may differ during a path change) is not sent but counted in
//!   [`XskRxCounters::replies_unsent`], as is one that finds the TX ring full.
//! - Copy or zero-copy is the kernel's choice unless [`XskConfig::force_copy`] is set (veth
//!   supports only copy mode).

use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
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

/// What [`XskRx::poll_batched`] hands its handler.
#[derive(Debug)]
pub enum RxItem<'a> {
    /// The SessionIds of the batch about to be handed over, before any of its datagrams.
    Batch(&'a [SessionId]),
    /// One datagram: its source and its UDP payload, in place in the UMEM frame.
    Datagram(Path, &'a mut [u8]),
}

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
    /// Frames that were not a well-formed, unfragmented IPv4/UDP or IPv6/UDP datagram (IPv6
    /// with extension headers, the Fragment header included, counts here).
    pub not_ip_udp: u64,
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
    /// SessionIds of the current receive batch (for prefetching).
    batch_ids: Box<[SessionId]>,
    /// Where each frame of the current batch has its UDP payload (located once per frame).
    located: Vec<Option<UdpFrame>>,
    learnt_next_hop: Option<[u8; 6]>,
    /// See [`XskRx::set_batch_tx_kicks`].
    batch_tx_kicks: bool,
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
        // The kernel tells us when the rings need a system call to make progress.
        let mut bind_flags = BindFlags::XDP_USE_NEED_WAKEUP;
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
            batch_ids: vec![SessionId(0); batch_len].into_boxed_slice(),
            located: Vec::with_capacity(batch_len),
            learnt_next_hop: None,
            batch_tx_kicks: false,
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
        let mut delivered = 0;
        let mut new_paths = 0;
        let mut unsent = 0;
        let n = self.poll_batched(&mut |item| {
            let (from, payload) = match item {
                RxItem::Batch(ids) => {
                    worker.prefetch(ids);
                    return None;
                }
                RxItem::Datagram(from, payload) => (from, payload),
            };
            match worker.handle_rx(now, from, payload) {
                Rx::Deliver {
                    id,
                    packet,
                    new_path,
                } => {
                    new_paths += u64::from(new_path.is_some());
                    delivered += 1;
                    deliver(id, packet);
                    None
                }
                Rx::Reply { dst, len, new_path } => {
                    new_paths += u64::from(new_path.is_some());
                    if dst == from {
                        Some(len)
                    } else {
                        unsent += 1;
                        None
                    }
                }
                Rx::Consumed { new_path } => {
                    new_paths += u64::from(new_path.is_some());
                    None
                }
                Rx::Dropped(_) => None,
            }
        });
        self.counters.delivered += delivered;
        self.counters.new_path_events += new_paths;
        self.counters.replies_unsent += unsent;
        n
    }

    /// Take up to one batch of received frames off the RX ring and pass each UDP payload, in
    /// place, with its source to `handle`. When `handle` returns `Some(len)`, the first `len`
    /// bytes of the payload are a reply to the source: the frame is turned around in place
    /// (addresses and ports swapped) and put on the TX ring. Every other frame returns to the
    /// fill ring. The source MAC of the last frame is kept as the learnt next hop
    /// ([`XskRx::learnt_next_hop`]). Does not block. Returns the number of frames taken.
    pub fn poll(&mut self, handle: &mut impl FnMut(Path, &mut [u8]) -> Option<usize>) -> usize {
        self.poll_batched(&mut |item| match item {
            RxItem::Batch(_) => None,
            RxItem::Datagram(from, payload) => handle(from, payload),
        })
    }

    /// [`XskRx::poll`] with a first pass: `handle` first gets [`RxItem::Batch`] with the
    /// SessionIds of the whole batch (bytes 4..12 of each UDP payload), before any datagram —
    /// time to prefetch the sessions so their cache misses overlap — then one
    /// [`RxItem::Datagram`] per frame (its answer as for [`XskRx::poll`]).
    pub fn poll_batched(&mut self, handle: &mut impl FnMut(RxItem<'_>) -> Option<usize>) -> usize {
        self.reap_completions();
        // SAFETY: `batch` descriptors are overwritten with frames of this socket's UMEM, which
        // the kernel has finished writing and hands to userspace.
        let n = unsafe { self.rx.consume(&mut self.batch) };
        // First pass: locate every frame's UDP payload once (kept for the main pass) and
        // collect the SessionIds for the handler to prefetch.
        let mut k = 0;
        self.located.clear();
        for desc in &self.batch[..n] {
            // SAFETY: `desc` came off this socket's RX ring: it names a frame of `self.umem`
            // that only userspace references now; this shared borrow ends before the main
            // pass below writes the frame.
            let data = unsafe { self.umem.data(desc) };
            let frame = data.contents();
            let at = locate_udp(frame);
            let id = at
                .as_ref()
                .and_then(|at| frame.get(at.payload.start + 4..at.payload.start + 12))
                .and_then(|b| b.try_into().ok())
                .map(u64::from_be_bytes);
            self.located.push(at);
            if let (Some(id), Some(slot)) = (id, self.batch_ids.get_mut(k)) {
                *slot = SessionId(id);
                k += 1;
            }
        }
        if k > 0 {
            handle(RxItem::Batch(&self.batch_ids[..k]));
        }
        let Self {
            umem,
            batch,
            counters,
            free,
            replies,
            learnt_next_hop,
            located,
            ..
        } = self;
        replies.clear();
        for (desc, at) in batch[..n].iter_mut().zip(located.drain(..)) {
            counters.frames += 1;
            // SAFETY: `desc` came off this socket's RX ring, so it names a frame of `umem`
            // that the kernel no longer writes (it is on neither the fill nor the RX ring) and
            // nothing else in userspace references it until it goes back on the fill ring.
            let mut data = unsafe { umem.data_mut(desc) };
            let frame = data.contents_mut();
            let Some(at) = at else {
                counters.not_ip_udp += 1;
                free.push(*desc);
                continue;
            };
            counters.to_worker += 1;
            let mut mac = [0u8; 6];
            mac.copy_from_slice(&frame[6..12]);
            *learnt_next_hop = Some(mac);
            let from = Path::udp(at.from);
            let reply_len = handle(RxItem::Datagram(from, &mut frame[at.payload.clone()]));
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
        if n == 0 && self.fill.needs_wakeup() {
            // Zero-copy drivers stop receiving when the fill ring ran dry until woken
            // (`XDP_USE_NEED_WAKEUP`); only when idle, so a busy loop makes no system call.
            let _ = self.fill.wakeup(self.rx.fd_mut(), 0);
        }
        n
    }

    /// Take up to one batch of received frames off the RX ring, hand each whole frame
    /// (Ethernet header included) to `handle`, and return every frame to the fill ring (the
    /// inside NIC's receive path: the frames are inner IP packets, not tunnel datagrams). The
    /// source MAC of the last frame is kept as the learnt next hop
    /// ([`XskRx::learnt_next_hop`]). Does not block. Returns the number of frames taken.
    pub fn poll_frames(&mut self, handle: &mut impl FnMut(&[u8])) -> usize {
        self.reap_completions();
        // SAFETY: `batch` descriptors are overwritten with frames of this socket's UMEM, which
        // the kernel has finished writing and hands to userspace.
        let n = unsafe { self.rx.consume(&mut self.batch) };
        for desc in &self.batch[..n] {
            self.counters.frames += 1;
            // SAFETY: `desc` came off this socket's RX ring: it names a frame of `self.umem`
            // that the kernel no longer writes and that only userspace references until it
            // goes back on the fill ring below; this shared borrow ends within the iteration.
            let data = unsafe { self.umem.data(desc) };
            let frame = data.contents();
            if let Some(mac) = frame.get(6..12).and_then(|m| <[u8; 6]>::try_from(m).ok()) {
                self.learnt_next_hop = Some(mac);
            }
            self.counters.to_worker += 1;
            handle(frame);
            self.free.push(*desc);
        }
        self.kick();
        self.refill();
        if n == 0 && self.fill.needs_wakeup() {
            // As in `poll_batched`: wake a zero-copy driver whose fill ring ran dry, only when
            // idle.
            let _ = self.fill.wakeup(self.rx.fd_mut(), 0);
        }
        n
    }

    /// Send `packet` (an inner IP packet) behind an Ethernet header from `eth` with
    /// `ethertype`, in a free frame put on the TX ring. Returns the frame length.
    ///
    /// # Errors
    /// [`XskTxError`]: no free frame, TX ring full, or the frame is too small for the packet
    /// ([`WorkerDrop::TooLarge`]).
    pub fn send_frame(
        &mut self,
        eth: &EthTemplate,
        ethertype: u16,
        packet: &[u8],
    ) -> Result<usize, XskTxError> {
        self.transmit(|frame| {
            let len = ETH_HLEN + packet.len();
            if frame.len() < len {
                return Err(XskTxError::Worker(WorkerDrop::TooLarge));
            }
            frame[0..6].copy_from_slice(&eth.dst_mac);
            frame[6..12].copy_from_slice(&eth.src_mac);
            frame[12..ETH_HLEN].copy_from_slice(&ethertype.to_be_bytes());
            frame[ETH_HLEN..len].copy_from_slice(packet);
            Ok(len)
        })
    }

    /// Take a free frame, let `build` write a frame into it (returning its length), and put
    /// it on the TX ring; the frame goes back to the free list if `build` fails or the ring is
    /// full. The one place frames are transmitted from (wake-ups batched or not, see
    /// [`XskRx::set_batch_tx_kicks`]).
    fn transmit(
        &mut self,
        build: impl FnOnce(&mut [u8]) -> Result<usize, XskTxError>,
    ) -> Result<usize, XskTxError> {
        self.reap_completions();
        if self.tx.nb_free(1) == 0 {
            self.kick();
            return Err(XskTxError::TxRingFull);
        }
        let Some(mut desc) = self.free.pop() else {
            return Err(XskTxError::NoFreeFrame);
        };
        let built = {
            // SAFETY: `desc` is a free frame of `self.umem`, owned by userspace and referenced
            // nowhere else (just taken off the free list).
            let mut data = unsafe { self.umem.data_mut(&mut desc) };
            let mut cursor = data.cursor();
            let room = cursor.buf_len();
            cursor.set_pos(room);
            let built = build(data.contents_mut());
            if let Ok(len) = built {
                data.cursor().set_pos(len);
            }
            built
        };
        let len = match built {
            Ok(len) => len,
            Err(e) => {
                self.free.push(desc);
                return Err(e);
            }
        };
        // SAFETY: `desc` is a frame of `self.umem` owned by userspace and just written.
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

    /// The source MAC of the last received tunnel frame: the next hop toward clients when
    /// none is configured.
    #[must_use]
    pub fn learnt_next_hop(&self) -> Option<[u8; 6]> {
        self.learnt_next_hop
    }

    /// Send a ready UDP payload (already sealed, e.g. a heartbeat echo produced by another
    /// worker's receive path) to `dst` in a free frame. Returns the frame length.
    ///
    /// # Errors
    /// [`XskTxError`]: no free frame, TX ring full, no IPv6 source for an IPv6 destination,
    /// or the payload does not fit a frame.
    pub fn send_payload(
        &mut self,
        dst: SocketAddr,
        payload: &[u8],
        l2: &L2Template,
    ) -> Result<usize, XskTxError> {
        self.transmit(|frame| {
            let at = headers_len(&dst);
            if frame.len() < at + payload.len() {
                return Err(XskTxError::Worker(WorkerDrop::TooLarge));
            }
            frame[at..at + payload.len()].copy_from_slice(payload);
            write_headers(frame, l2, dst, payload.len())
        })
    }

    /// Take a free frame, build an Ethernet/IPv4/UDP or Ethernet/IPv6/UDP datagram to the
    /// session's active path from `l2`, seal `inner` into its UDP payload in place with
    /// [`Worker::encapsulate`], and put it on the TX ring. Returns the frame length put on the
    /// wire.
    ///
    /// # Errors
    /// [`XskTxError`]: no free frame, TX ring full, the worker refused (no session, no active
    /// path, too large for the frame: counted by the worker), the active path is not UDP, it
    /// is IPv6 and `l2` has no IPv6 source, or the datagram fits the frame behind IPv4 but not
    /// behind IPv6 headers ([`WorkerDrop::TooLarge`], not counted by the worker). In the last
    /// three cases the packet was already sealed (its counter is used up). The frame goes
    /// back to the free list in every case.
    pub fn send_inner(
        &mut self,
        worker: &mut Worker,
        id: SessionId,
        inner: &[u8],
        l2: &L2Template,
    ) -> Result<usize, XskTxError> {
        self.transmit(|frame| {
            // The family is known only once the worker has sealed: seal behind IPv4 headers
            // and move the datagram back for IPv6 (see the module documentation).
            let at = IPV4_HEADERS_LEN + DATA_HEADER_LEN;
            if frame.len() < at + inner.len() {
                return Err(XskTxError::Worker(WorkerDrop::TooLarge));
            }
            frame[at..at + inner.len()].copy_from_slice(inner);
            let (dst, udp_payload) = worker
                .encapsulate(id, &mut frame[IPV4_HEADERS_LEN..], inner.len())
                .map_err(XskTxError::Worker)?;
            if dst.transport != Transport::Udp {
                return Err(XskTxError::NotUdp);
            }
            if let SocketAddr::V6(_) = dst.addr {
                if l2.src_ip6.is_none() {
                    return Err(XskTxError::NoIpv6Source);
                }
                if frame.len() < headers_len(&dst.addr) + udp_payload {
                    return Err(XskTxError::Worker(WorkerDrop::TooLarge));
                }
                frame.copy_within(
                    IPV4_HEADERS_LEN..IPV4_HEADERS_LEN + udp_payload,
                    IPV6_HEADERS_LEN,
                );
            }
            write_headers(frame, l2, dst.addr, udp_payload)
        })
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
        if self.tx_outstanding > 0 && !self.batch_tx_kicks && self.tx.needs_wakeup() {
            let _ = self.tx.wakeup();
        }
    }

    /// Batch transmit wake-ups: [`XskRx::send_inner`] and [`XskRx::send_payload`] then only
    /// put frames on the TX ring, and the caller calls [`XskRx::flush_tx`] once per batch (one
    /// system call for the batch, and none when the kernel does not need one).
    pub fn set_batch_tx_kicks(&mut self, on: bool) {
        self.batch_tx_kicks = on;
    }

    /// Wake the kernel to transmit what is on the TX ring, if it needs it.
    pub fn flush_tx(&mut self) {
        if self.tx_outstanding > 0 && self.tx.needs_wakeup() {
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
    /// Our IPv4 address (IP source towards IPv4 paths).
    pub src_ip: Ipv4Addr,
    /// Our IPv6 address (IP source towards IPv6 paths); `None`: IPv6 paths cannot be sent
    /// to ([`XskTxError::NoIpv6Source`]).
    pub src_ip6: Option<Ipv6Addr>,
    /// Our tunnel port (UDP source).
    pub src_port: u16,
}

/// The Ethernet header of frames sent on an inside NIC ([`XskRx::send_frame`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EthTemplate {
    /// The inside NIC's MAC (Ethernet source).
    pub src_mac: [u8; 6],
    /// The inside next hop's MAC (Ethernet destination).
    pub dst_mac: [u8; 6],
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
    /// The session's active path is not UDP (over IPv4 or IPv6).
    #[error("the active path is not UDP over IPv4 or IPv6")]
    NotUdp,
    /// The session's active path is IPv6 and [`L2Template::src_ip6`] is `None`.
    #[error("the active path is IPv6 and no IPv6 source address is configured")]
    NoIpv6Source,
}

/// Ethernet header length.
pub const ETH_HLEN: usize = 14;
/// Ethertype of IPv4.
pub const ETH_P_IP: u16 = 0x0800;
/// Ethertype of IPv6.
pub const ETH_P_IPV6: u16 = 0x86DD;
const IPPROTO_UDP: u8 = 17;
const UDP_HLEN: usize = 8;
/// Hop limit / TTL of transmitted datagrams and replies.
const HOP_LIMIT: u8 = 64;

const IPV4_HLEN: usize = 20;
/// Ethernet + IPv4 without options + UDP headers of transmitted frames.
const IPV4_HEADERS_LEN: usize = ETH_HLEN + IPV4_HLEN + UDP_HLEN;
const IPV6_HLEN: usize = 40;
/// Ethernet + IPv6 (no extension headers) + UDP headers of transmitted frames.
const IPV6_HEADERS_LEN: usize = ETH_HLEN + IPV6_HLEN + UDP_HLEN;

/// Length of the Ethernet, IP and UDP headers of a frame sent to `dst`.
const fn headers_len(dst: &SocketAddr) -> usize {
    match dst {
        SocketAddr::V4(_) => IPV4_HEADERS_LEN,
        SocketAddr::V6(_) => IPV6_HEADERS_LEN,
    }
}

/// Where the parts of a received Ethernet/IPv4/UDP or Ethernet/IPv6/UDP frame are.
#[derive(Debug, Clone, PartialEq, Eq)]
struct UdpFrame {
    /// The sender; its family is the frame's.
    from: SocketAddr,
    /// IP header length (IPv4 options included; 40 for IPv6).
    ip_hlen: usize,
    /// UDP payload within the frame.
    payload: std::ops::Range<usize>,
}

/// Find the UDP payload of an Ethernet/IPv4/UDP frame and its sender. `None` for anything
/// else (IPv6 included): other ethertypes (VLAN included), IPv4 options beyond the frame,
/// fragments, lengths that disagree with the frame. Checksums are not verified (the tunnel's
/// AEAD authenticates the payload; a corrupted header at worst misattributes the source,
/// which the worker treats as a path change to validate).
#[must_use]
pub fn parse_ipv4_udp(frame: &mut [u8]) -> Option<(SocketAddrV4, &mut [u8])> {
    let at = locate_ipv4_udp(frame)?;
    let SocketAddr::V4(from) = at.from else {
        return None;
    };
    Some((from, &mut frame[at.payload]))
}

/// Find the UDP payload of an Ethernet/IPv4/UDP or Ethernet/IPv6/UDP frame and its sender.
/// `None` for anything else: as [`parse_ipv4_udp`] for IPv4; for IPv6, a version other than
/// 6, any extension header (Fragment included: UDP must be the next header), a payload length
/// beyond the frame, a UDP length beyond the payload length. Checksums are not verified.
#[must_use]
pub fn parse_udp(frame: &mut [u8]) -> Option<(SocketAddr, &mut [u8])> {
    let at = locate_udp(frame)?;
    Some((at.from, &mut frame[at.payload]))
}

fn locate_udp(frame: &[u8]) -> Option<UdpFrame> {
    let ethertype = u16::from_be_bytes(frame.get(12..ETH_HLEN)?.try_into().ok()?);
    match ethertype {
        ETH_P_IP => locate_ipv4_udp(frame),
        ETH_P_IPV6 => locate_ipv6_udp(frame),
        _ => None,
    }
}

fn locate_ipv4_udp(frame: &[u8]) -> Option<UdpFrame> {
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
    Some(UdpFrame {
        from: SocketAddr::V4(SocketAddrV4::new(src_ip, src_port)),
        ip_hlen: ihl,
        payload: start..start + udp_len - UDP_HLEN,
    })
}

fn locate_ipv6_udp(frame: &[u8]) -> Option<UdpFrame> {
    let ethertype = u16::from_be_bytes(frame.get(12..ETH_HLEN)?.try_into().ok()?);
    if ethertype != ETH_P_IPV6 {
        return None;
    }
    let ip = frame.get(ETH_HLEN..)?;
    if ip.len() < IPV6_HLEN + UDP_HLEN || ip[0] >> 4 != 6 || ip[6] != IPPROTO_UDP {
        return None;
    }
    // Payload length 0 (a jumbogram, which needs a Hop-by-Hop header anyway) fails here too.
    let payload_len = usize::from(u16::from_be_bytes([ip[4], ip[5]]));
    if payload_len < UDP_HLEN || payload_len > ip.len() - IPV6_HLEN {
        return None;
    }
    let src_ip: [u8; 16] = ip[8..24].try_into().ok()?;
    let udp = &ip[IPV6_HLEN..IPV6_HLEN + payload_len];
    let src_port = u16::from_be_bytes([udp[0], udp[1]]);
    let udp_len = usize::from(u16::from_be_bytes([udp[4], udp[5]]));
    if udp_len < UDP_HLEN || udp_len > udp.len() {
        return None;
    }
    let start = ETH_HLEN + IPV6_HLEN + UDP_HLEN;
    Some(UdpFrame {
        from: SocketAddr::V6(SocketAddrV6::new(Ipv6Addr::from(src_ip), src_port, 0, 0)),
        ip_hlen: IPV6_HLEN,
        payload: start..start + udp_len - UDP_HLEN,
    })
}

/// Turn a received frame located by `at`, whose UDP payload now starts with `len` bytes of
/// reply, into that reply back to the sender: Ethernet MACs, IP addresses and UDP ports
/// swapped, lengths set, TTL / hop limit 64. IPv4: header checksum recomputed, UDP checksum 0
/// (allowed for IPv4). IPv6: flow label 0 (traffic class kept, as the IPv4 TOS is), UDP
/// checksum computed (mandatory for IPv6). Returns the new frame length, or `None` if the
/// reply does not fit the frame.
fn turn_into_reply(frame: &mut [u8], at: &UdpFrame, len: usize) -> Option<usize> {
    let ip_total = at.ip_hlen + UDP_HLEN + len;
    let frame_len = ETH_HLEN + ip_total;
    if frame_len > frame.len() || at.payload.start + len > frame.len() {
        return None;
    }
    let ip_total16 = u16::try_from(ip_total).ok()?;
    let udp_len16 = u16::try_from(UDP_HLEN + len).ok()?;
    let (eth, ip) = frame.split_at_mut(ETH_HLEN);
    let (dst_mac, src_mac) = eth.split_at_mut(6);
    dst_mac.swap_with_slice(&mut src_mac[..6]);
    if at.from.is_ipv4() {
        ip[2..4].copy_from_slice(&ip_total16.to_be_bytes());
        ip[8] = HOP_LIMIT; // TTL
        let (src_ip, dst_ip) = ip[12..20].split_at_mut(4);
        src_ip.swap_with_slice(dst_ip);
        set_ipv4_checksum(&mut ip[..at.ip_hlen]);
        let udp = &mut ip[at.ip_hlen..at.ip_hlen + UDP_HLEN];
        let (sport, dport) = udp[..4].split_at_mut(2);
        sport.swap_with_slice(dport);
        udp[4..6].copy_from_slice(&udp_len16.to_be_bytes());
        udp[6..8].copy_from_slice(&[0, 0]);
    } else {
        // Version and traffic class kept, flow label cleared.
        ip[1] &= 0xF0;
        ip[2..4].copy_from_slice(&[0, 0]);
        ip[4..6].copy_from_slice(&udp_len16.to_be_bytes()); // payload length
        ip[7] = HOP_LIMIT;
        let (src_ip, dst_ip) = ip[8..40].split_at_mut(16);
        src_ip.swap_with_slice(dst_ip);
        let (hdr, udp) = ip.split_at_mut(IPV6_HLEN);
        let udp = &mut udp[..UDP_HLEN + len];
        let (sport, dport) = udp[..4].split_at_mut(2);
        sport.swap_with_slice(dport);
        udp[4..6].copy_from_slice(&udp_len16.to_be_bytes());
        set_udp6_checksum(&hdr[8..24], &hdr[24..40], udp);
    }
    Some(frame_len)
}

/// Write Ethernet, IP and UDP headers for a UDP payload of `payload_len` bytes already at
/// `frame[headers_len(&dst)..]`: IPv4 (no options, DF set, UDP checksum 0) or IPv6 (no
/// extension headers, traffic class and flow label 0, UDP checksum computed) after `dst`'s
/// family. Returns the frame length.
///
/// # Errors
/// [`XskTxError::NoIpv6Source`] if `dst` is IPv6 and `l2` has no IPv6 source.
fn write_headers(
    frame: &mut [u8],
    l2: &L2Template,
    dst: SocketAddr,
    payload_len: usize,
) -> Result<usize, XskTxError> {
    match dst {
        SocketAddr::V4(dst) => Ok(write_ipv4_headers(frame, l2, dst, payload_len)),
        SocketAddr::V6(dst) => {
            let src = l2.src_ip6.ok_or(XskTxError::NoIpv6Source)?;
            Ok(write_ipv6_headers(frame, l2, src, dst, payload_len))
        }
    }
}

/// Write Ethernet, IPv4 (no options, DF set) and UDP headers for a UDP payload of
/// `payload_len` bytes already at `frame[IPV4_HEADERS_LEN..]`. Returns the frame length.
fn write_ipv4_headers(
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
    ip[8] = HOP_LIMIT;
    ip[9] = IPPROTO_UDP;
    ip[12..16].copy_from_slice(&l2.src_ip.octets());
    ip[16..20].copy_from_slice(&dst.ip().octets());
    set_ipv4_checksum(ip);
    let udp = &mut frame[ETH_HLEN + IPV4_HLEN..IPV4_HEADERS_LEN];
    udp[0..2].copy_from_slice(&l2.src_port.to_be_bytes());
    udp[2..4].copy_from_slice(&dst.port().to_be_bytes());
    udp[4..6].copy_from_slice(&udp_len16.to_be_bytes());
    udp[6..8].copy_from_slice(&[0, 0]); // no UDP checksum (RFC 768, IPv4 only)
    ETH_HLEN + ip_total
}

/// Write Ethernet, IPv6 (no extension headers, traffic class and flow label 0) and UDP
/// headers, UDP checksum included, for a UDP payload of `payload_len` bytes already at
/// `frame[IPV6_HEADERS_LEN..]`. Returns the frame length.
fn write_ipv6_headers(
    frame: &mut [u8],
    l2: &L2Template,
    src: Ipv6Addr,
    dst: SocketAddrV6,
    payload_len: usize,
) -> usize {
    let udp_len = UDP_HLEN + payload_len;
    // The worker's datagrams are far below 64 KiB; saturate rather than wrap if not.
    let udp_len16 = u16::try_from(udp_len).unwrap_or(u16::MAX);
    frame[0..6].copy_from_slice(&l2.dst_mac);
    frame[6..12].copy_from_slice(&l2.src_mac);
    frame[12..14].copy_from_slice(&ETH_P_IPV6.to_be_bytes());
    let (hdr, udp) = frame[ETH_HLEN..].split_at_mut(IPV6_HLEN);
    hdr[0..4].copy_from_slice(&[0x60, 0, 0, 0]); // version 6, traffic class 0, flow label 0
    hdr[4..6].copy_from_slice(&udp_len16.to_be_bytes()); // payload length
    hdr[6] = IPPROTO_UDP; // next header
    hdr[7] = HOP_LIMIT;
    hdr[8..24].copy_from_slice(&src.octets());
    hdr[24..40].copy_from_slice(&dst.ip().octets());
    let udp = &mut udp[..udp_len];
    udp[0..2].copy_from_slice(&l2.src_port.to_be_bytes());
    udp[2..4].copy_from_slice(&dst.port().to_be_bytes());
    udp[4..6].copy_from_slice(&udp_len16.to_be_bytes());
    set_udp6_checksum(&hdr[8..24], &hdr[24..40], udp);
    ETH_HLEN + IPV6_HLEN + udp_len
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

/// Sum of `bytes` as big-endian 16-bit words (a trailing odd byte padded with zero), added
/// to `sum`, not folded.
fn add_words(mut sum: u64, bytes: &[u8]) -> u64 {
    let mut words = bytes.chunks_exact(2);
    for w in &mut words {
        sum += u64::from(u16::from_be_bytes([w[0], w[1]]));
    }
    if let [last] = words.remainder() {
        sum += u64::from(*last) << 8;
    }
    sum
}

/// The UDP checksum over IPv6 (RFC 8200 section 8.1) of the datagram `udp` (header and
/// payload, its checksum field taken as 0) from `src` to `dst` (16 bytes each): the one's
/// complement of the one's complement sum of the pseudo-header (addresses, upper-layer
/// length, next header 17) and the datagram, with 0 sent as `0xFFFF`.
fn udp6_checksum(src: &[u8], dst: &[u8], udp: &[u8]) -> u16 {
    let mut sum = add_words(0, src);
    sum = add_words(sum, dst);
    sum += udp.len() as u64; // upper-layer length (32 bits, < 2^32 here)
    sum += u64::from(IPPROTO_UDP);
    sum = add_words(sum, &udp[..6]);
    sum = add_words(sum, &udp[8..]);
    while sum > 0xFFFF {
        sum = (sum & 0xFFFF) + (sum >> 16);
    }
    #[allow(clippy::cast_possible_truncation)] // folded to 16 bits above
    let checksum = !(sum as u16);
    if checksum == 0 {
        0xFFFF
    } else {
        checksum
    }
}

/// Compute and store the UDP checksum of `udp` (header and payload) sent over IPv6.
fn set_udp6_checksum(src: &[u8], dst: &[u8], udp: &mut [u8]) {
    let checksum = udp6_checksum(src, dst, udp);
    udp[6..8].copy_from_slice(&checksum.to_be_bytes());
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

    fn template(src_ip6: Option<Ipv6Addr>) -> L2Template {
        L2Template {
            src_mac: [2, 0, 0, 0, 0, 1],
            dst_mac: [2, 0, 0, 0, 0, 2],
            src_ip: Ipv4Addr::new(10, 77, 0, 1),
            src_ip6,
            src_port: 51820,
        }
    }

    #[test]
    fn headers_are_written_from_the_template() {
        let mut f = vec![0u8; 100];
        f[IPV4_HEADERS_LEN..IPV4_HEADERS_LEN + 4].copy_from_slice(b"data");
        let l2 = template(None);
        let len = write_headers(&mut f, &l2, "10.77.0.2:4242".parse().expect("addr"), 4)
            .expect("IPv4 needs no IPv6 source");
        assert_eq!(len, IPV4_HEADERS_LEN + 4);
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

    const CLIENT6: &str = "fd00:99::2";
    const GW6: &str = "fd00:99::1";

    /// An Ethernet/IPv6 frame from `[fd00:99::2]:4242` to `[fd00:99::1]:51820` whose IPv6
    /// header names `next` as next header and is followed by `ext` (extension headers), a UDP
    /// header and `payload`; the UDP checksum is left 0.
    fn frame6(next: u8, ext: &[u8], payload: &[u8]) -> Vec<u8> {
        let mut f = vec![1, 1, 1, 1, 1, 1, 2, 2, 2, 2, 2, 2];
        f.extend_from_slice(&0x86DDu16.to_be_bytes());
        let udp_len = u16::try_from(8 + payload.len()).expect("len");
        let payload_len = u16::try_from(ext.len()).expect("len") + udp_len;
        f.extend_from_slice(&[0x6A, 0xB1, 0x23, 0x45]); // traffic class 0xAB, a flow label
        f.extend_from_slice(&payload_len.to_be_bytes());
        f.extend_from_slice(&[next, 7]);
        f.extend_from_slice(&CLIENT6.parse::<Ipv6Addr>().expect("addr").octets());
        f.extend_from_slice(&GW6.parse::<Ipv6Addr>().expect("addr").octets());
        f.extend_from_slice(ext);
        f.extend_from_slice(&4242u16.to_be_bytes());
        f.extend_from_slice(&51820u16.to_be_bytes());
        f.extend_from_slice(&udp_len.to_be_bytes());
        f.extend_from_slice(&[0, 0]);
        f.extend_from_slice(payload);
        f
    }

    /// Independent check of an IPv6 UDP checksum: the one's complement sum of the
    /// pseudo-header and the datagram (checksum field included) is 0xFFFF, and the field is
    /// never 0.
    fn udp6_checksum_ok(ip6_header: &[u8], udp: &[u8]) -> bool {
        let mut pseudo = Vec::new();
        pseudo.extend_from_slice(&ip6_header[8..40]); // source and destination
        pseudo.extend_from_slice(&u32::try_from(udp.len()).expect("len").to_be_bytes());
        pseudo.extend_from_slice(&[0, 0, 0, 17]);
        let mut bytes = pseudo;
        bytes.extend_from_slice(udp);
        if bytes.len() % 2 == 1 {
            bytes.push(0);
        }
        let mut sum: u64 = 0;
        for pair in bytes.chunks(2) {
            sum += u64::from(pair[0]) * 256 + u64::from(pair[1]);
        }
        let folded = u16::try_from(sum % 0xFFFF).expect("below 0xFFFF");
        let folded = if folded == 0 && sum != 0 {
            0xFFFF
        } else {
            folded
        };
        folded == 0xFFFF && udp[6..8] != [0, 0]
    }

    #[test]
    fn parses_ipv6_udp() {
        let mut f = frame6(IPPROTO_UDP, &[], b"abc");
        let (from, payload) = parse_udp(&mut f).expect("parsed");
        assert_eq!(from, "[fd00:99::2]:4242".parse().expect("addr"));
        assert_eq!(payload, b"abc");
        assert!(parse_ipv4_udp(&mut f).is_none(), "not IPv4");
        // Ethernet padding (or any trailer beyond the payload length) is ignored.
        f.extend_from_slice(&[0xEE; 10]);
        let (_, payload) = parse_udp(&mut f).expect("parsed");
        assert_eq!(payload, b"abc");
        // A UDP length below the payload length: the UDP length wins, as over IPv4.
        let mut f = frame6(IPPROTO_UDP, &[], b"abcdef");
        f[54 + 4..54 + 6].copy_from_slice(&11u16.to_be_bytes());
        let (_, payload) = parse_udp(&mut f).expect("parsed");
        assert_eq!(payload, b"abc");
    }

    #[test]
    fn parse_udp_handles_ipv4_too() {
        let mut f = frame(ETH_P_IP, 0, IPPROTO_UDP, b"abc");
        let (from, payload) = parse_udp(&mut f).expect("parsed");
        assert_eq!(from, "10.77.0.2:4242".parse().expect("addr"));
        assert_eq!(payload, b"abc");
    }

    #[test]
    fn an_ipv6_frame_turns_into_its_reply_in_place() {
        for reply in [
            &b"xyz"[..],
            b"an even reply",
            b"a longer reply than the request",
        ] {
            let mut f = frame6(IPPROTO_UDP, &[], b"a heartbeat to be echoed");
            f.resize(f.len() + 16, 0xEE); // room beyond the request, as in a UMEM frame
            let at = locate_udp(&f).expect("parsed");
            f[at.payload.start..at.payload.start + reply.len()].copy_from_slice(reply);
            let len = turn_into_reply(&mut f, &at, reply.len()).expect("fits");
            assert_eq!(len, 14 + 40 + 8 + reply.len());
            let f = &mut f[..len];
            assert_eq!(&f[..12], &[2, 2, 2, 2, 2, 2, 1, 1, 1, 1, 1, 1]);
            assert_eq!(&f[12..14], &[0x86, 0xDD]);
            // Version and traffic class kept, flow label cleared.
            assert_eq!(&f[14..18], &[0x6A, 0xB0, 0, 0]);
            let payload_len = u16::try_from(8 + reply.len()).expect("len");
            assert_eq!(&f[18..20], &payload_len.to_be_bytes());
            assert_eq!(f[20], IPPROTO_UDP);
            assert_eq!(f[21], 64, "hop limit");
            assert_eq!(&f[22..38], &GW6.parse::<Ipv6Addr>().expect("addr").octets());
            assert_eq!(
                &f[38..54],
                &CLIENT6.parse::<Ipv6Addr>().expect("addr").octets()
            );
            assert_eq!(&f[54..56], &51820u16.to_be_bytes());
            assert_eq!(&f[56..58], &4242u16.to_be_bytes());
            assert_eq!(&f[58..60], &payload_len.to_be_bytes());
            assert!(
                udp6_checksum_ok(&f[14..54], &f[54..]),
                "{:02x?}",
                &f[54..62]
            );
            let (from, payload) = parse_udp(f).expect("reply parses");
            assert_eq!(from, "[fd00:99::1]:51820".parse().expect("addr"));
            assert_eq!(payload, reply);
        }
    }

    #[test]
    fn an_ipv6_reply_that_does_not_fit_is_refused() {
        let mut f = frame6(IPPROTO_UDP, &[], b"abc");
        let at = locate_udp(&f).expect("parsed");
        assert!(turn_into_reply(&mut f, &at, 4).is_none());
        assert!(turn_into_reply(&mut f, &at, 3).is_some());
    }

    #[test]
    fn ipv6_headers_are_written_from_the_template() {
        let data = b"sealed datagram";
        let mut f = vec![0u8; 128];
        f[IPV6_HEADERS_LEN..IPV6_HEADERS_LEN + data.len()].copy_from_slice(data);
        let src: Ipv6Addr = GW6.parse().expect("addr");
        let dst: SocketAddr = "[fd00:99::2]:4242".parse().expect("addr");
        assert_eq!(headers_len(&dst), 62);
        assert_eq!(
            write_headers(&mut f, &template(None), dst, data.len()),
            Err(XskTxError::NoIpv6Source)
        );
        let len = write_headers(&mut f, &template(Some(src)), dst, data.len()).expect("written");
        assert_eq!(len, IPV6_HEADERS_LEN + data.len());
        let f = &mut f[..len];
        assert_eq!(&f[..14], &[2, 0, 0, 0, 0, 2, 2, 0, 0, 0, 0, 1, 0x86, 0xDD]);
        assert_eq!(&f[14..18], &[0x60, 0, 0, 0]);
        assert_eq!(f[21], 64, "hop limit");
        assert!(udp6_checksum_ok(&f[14..54], &f[54..]));
        let (from, payload) = parse_udp(f).expect("parses");
        assert_eq!(from, "[fd00:99::1]:51820".parse().expect("addr"));
        assert_eq!(payload, data);
        assert_eq!(
            &f[38..54],
            &CLIENT6.parse::<Ipv6Addr>().expect("addr").octets()
        );
        assert_eq!(&f[56..58], &4242u16.to_be_bytes());
    }

    #[test]
    fn a_zero_ipv6_udp_checksum_is_sent_as_ffff() {
        let src = GW6.parse::<Ipv6Addr>().expect("addr").octets();
        let dst = CLIENT6.parse::<Ipv6Addr>().expect("addr").octets();
        let mut udp = vec![0xC3, 0x50, 0x10, 0x92, 0, 10, 0, 0, 0, 0];
        // A payload word equal to the checksum without it makes the sum 0xFFFF, whose
        // complement is 0.
        let without = udp6_checksum(&src, &dst, &udp);
        udp[8..10].copy_from_slice(&without.to_be_bytes());
        assert_eq!(udp6_checksum(&src, &dst, &udp), 0xFFFF);
        set_udp6_checksum(&src, &dst, &mut udp);
        let mut header = vec![0u8; 40];
        header[8..24].copy_from_slice(&src);
        header[24..40].copy_from_slice(&dst);
        assert!(udp6_checksum_ok(&header, &udp));
    }

    #[test]
    fn rejects_other_ipv6_frames() {
        let payload = b"a tunnel message";
        // Hop-by-Hop options (0) then UDP: an 8-byte extension header (next header 17, length
        // 0, PadN).
        let hop_by_hop = [IPPROTO_UDP, 0, 1, 4, 0, 0, 0, 0];
        // Fragment header (44) of a first fragment with more to follow, then UDP.
        let fragment = [IPPROTO_UDP, 0, 0, 1, 0, 0, 0, 42];
        let good = frame6(IPPROTO_UDP, &[], payload);
        let with = |at: usize, bytes: &[u8]| {
            let mut f = good.clone();
            f[at..at + bytes.len()].copy_from_slice(bytes);
            f
        };
        let mut cases = vec![
            ("hop-by-hop", frame6(0, &hop_by_hop, payload)),
            ("fragment", frame6(44, &fragment, payload)),
            ("routing", frame6(43, &hop_by_hop, payload)),
            ("destination options", frame6(60, &hop_by_hop, payload)),
            ("TCP", frame6(6, &[], payload)),
            ("version 4 in an IPv6 ethertype", with(14, &[0x45])),
            ("IPv6 in an IPv4 ethertype", with(12, &[0x08, 0x00])),
            ("VLAN", with(12, &[0x81, 0x00])),
            ("payload length beyond the frame", with(18, &[0, 25])),
            ("payload length below a UDP header", with(18, &[0, 7])),
            ("payload length 0 (jumbogram)", with(18, &[0, 0])),
            ("UDP length beyond the payload length", with(58, &[0, 25])),
            ("UDP length below its header", with(58, &[0, 7])),
        ];
        for cut in [0, 13, 14, 20, 53, 54, 61, good.len() - 1] {
            cases.push(("truncated", good[..cut].to_vec()));
        }
        for (what, mut f) in cases {
            assert!(parse_udp(&mut f).is_none(), "{what} (len {})", f.len());
            assert!(parse_ipv4_udp(&mut f).is_none(), "{what}");
        }
        let mut f = good;
        assert!(parse_udp(&mut f).is_some(), "the unmodified frame parses");
    }
}
