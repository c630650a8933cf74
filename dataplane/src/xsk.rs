//! The AF_XDP receive path for one [`Worker`] (first slice: receive only, IPv4 only).
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
//! packets to `deliver`, and returns every frame to the fill ring.
//!
//! Limits of this slice:
//! - IPv4 only, no VLAN tags, no IP fragments (the XDP program passes fragments to the
//!   kernel anyway); anything else is counted in [`XskRxCounters::not_ipv4_udp`] and recycled.
//! - No transmit: heartbeat echoes ([`Rx::Reply`]) are not sent, only counted in
//!   [`XskRxCounters::replies_unsent`]; the TX ring and completion ring are created (libxdp
//!   requires them) but unused.
//! - Copy or zero-copy is the kernel's choice unless [`XskConfig::force_copy`] is set (veth
//!   supports only copy mode).

use std::io;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::num::NonZeroU32;
use std::os::fd::{AsRawFd, BorrowedFd, RawFd};

use jumping_protocol::{Instant, Path, SessionId};
use xsk_rs::config::{
    BindFlags, FrameSize, Interface, LibxdpFlags, QueueSize, SocketConfig, UmemConfig,
};
use xsk_rs::{CompQueue, FillQueue, FrameDesc, RxQueue, TxQueue, Umem};

use crate::worker::{Rx, Worker};

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
    /// Heartbeat echoes the worker produced that this receive-only slice did not send.
    pub replies_unsent: u64,
    /// Results carrying a `new_path` (path validation is the control process's job).
    pub new_path_events: u64,
}

/// One AF_XDP socket on one queue, with its UMEM, feeding one [`Worker`].
#[derive(Debug)]
pub struct XskRx {
    // Field order is drop order: queues (which hold the socket) before the UMEM.
    rx: RxQueue,
    fill: FillQueue,
    _tx: TxQueue,
    _comp: CompQueue,
    umem: Umem,
    /// Frames owned by userspace and not yet on the fill ring.
    free: Vec<FrameDesc>,
    /// Receive batch (descriptors overwritten by each consume).
    batch: Vec<FrameDesc>,
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
            _tx: tx,
            _comp: comp,
            umem,
            free: frames,
            batch: vec![FrameDesc::default(); batch_len],
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

    /// Frames currently on the fill ring or the RX ring (owned by the kernel).
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
        // SAFETY: `batch` descriptors are overwritten with frames of this socket's UMEM, which
        // the kernel has finished writing and hands to userspace.
        let n = unsafe { self.rx.consume(&mut self.batch) };
        let Self {
            umem,
            batch,
            counters,
            free,
            ..
        } = self;
        for desc in &mut batch[..n] {
            counters.frames += 1;
            // SAFETY: `desc` came off this socket's RX ring, so it names a frame of `umem`
            // that the kernel no longer writes (it is on neither the fill nor the RX ring) and
            // nothing else in userspace references it until it goes back on the fill ring.
            let mut data = unsafe { umem.data_mut(desc) };
            let frame = data.contents_mut();
            let Some((from, payload)) = parse_ipv4_udp(frame) else {
                counters.not_ipv4_udp += 1;
                continue;
            };
            counters.to_worker += 1;
            match worker.handle_rx(now, Path::udp(SocketAddr::V4(from)), payload) {
                Rx::Deliver {
                    id,
                    packet,
                    new_path,
                } => {
                    counters.new_path_events += u64::from(new_path.is_some());
                    counters.delivered += 1;
                    deliver(id, packet);
                }
                Rx::Reply { new_path, .. } => {
                    counters.new_path_events += u64::from(new_path.is_some());
                    counters.replies_unsent += 1;
                }
                Rx::Consumed { new_path } => {
                    counters.new_path_events += u64::from(new_path.is_some());
                }
                Rx::Dropped(_) => {}
            }
        }
        free.extend_from_slice(&batch[..n]);
        self.refill();
        n
    }
}

const ETH_HLEN: usize = 14;
const ETH_P_IP: u16 = 0x0800;
const IPPROTO_UDP: u8 = 17;
const UDP_HLEN: usize = 8;

/// Find the UDP payload of an Ethernet/IPv4/UDP frame and its sender. `None` for anything
/// else: other ethertypes (VLAN included), IPv4 options beyond the frame, fragments, lengths
/// that disagree with the frame. Checksums are not verified (the tunnel's AEAD authenticates
/// the payload; a corrupted header at worst misattributes the source, which the worker
/// treats as a path change to validate).
#[must_use]
pub fn parse_ipv4_udp(frame: &mut [u8]) -> Option<(SocketAddrV4, &mut [u8])> {
    let ethertype = u16::from_be_bytes(frame.get(12..ETH_HLEN)?.try_into().ok()?);
    if ethertype != ETH_P_IP {
        return None;
    }
    let ip = frame.get_mut(ETH_HLEN..)?;
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
    let udp = &mut ip[ihl..total];
    let src_port = u16::from_be_bytes([udp[0], udp[1]]);
    let udp_len = usize::from(u16::from_be_bytes([udp[4], udp[5]]));
    if udp_len < UDP_HLEN || udp_len > udp.len() {
        return None;
    }
    Some((
        SocketAddrV4::new(src_ip, src_port),
        &mut udp[UDP_HLEN..udp_len],
    ))
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
