//! The io_uring receive/transmit loop for one [`Worker`] over a real UDP socket.
//!
//! [`UringUdp`] owns a bound [`UdpSocket`], an [`IoUring`] and a fixed pool of
//! [`RX_BUFFERS`] receive buffers of [`BUF_LEN`] bytes. Each buffer has its own `msghdr`,
//! `iovec` and `sockaddr_storage` in one heap slot that never moves, and every idle buffer is
//! kept armed with an `IORING_OP_RECVMSG` (user data = buffer index). [`UringUdp::run_once`]
//! submits and waits for at least one completion, drains the completion queue through
//! [`Worker::handle_rx`], then re-arms every consumed buffer with one submission.
//!
//! Transmissions ([`UringUdp::send_inner`], [`UringUdp::send_datagram`]) use a second pool of
//! [`TX_BUFFERS`] slots of the same shape with `IORING_OP_SENDMSG`; with
//! [`UringUdp::set_batch_submit`] they reach the kernel together with the next receive
//! submission, so a busy worker makes one system call per batch, not per packet. Heartbeat
//! echoes (rare: one per heartbeat) are still sent with a plain `send_to` from the receive
//! buffer. Nothing is logged per packet.

use std::cell::UnsafeCell;
use std::io;
use std::mem;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6, UdpSocket};
use std::os::fd::AsRawFd;
use std::ptr;

use io_uring::{opcode, types, IoUring};
use jumping_protocol::path::Transport;
use jumping_protocol::{Instant, Path, SessionId};

use crate::worker::{Rx, Worker};

/// Number of receive buffers, all kept in flight.
pub const RX_BUFFERS: usize = 64;

/// Size of each receive buffer and of the transmit buffer (room for a full 1500-byte inner
/// packet plus header and tag).
pub const BUF_LEN: usize = 2048;

/// Number of transmit buffers (slots `RX_BUFFERS..RX_BUFFERS + TX_BUFFERS`).
pub const TX_BUFFERS: usize = 128;

/// User data of the cancellation issued on drop (never a buffer index).
const CANCEL_TAG: u64 = u64::MAX;

/// One receive buffer with its message header. Lives in a boxed slice that is never resized,
/// so the self-referential pointers in `iov` and `hdr` stay valid for the slot's lifetime.
struct Slot {
    buf: [u8; BUF_LEN],
    iov: libc::iovec,
    name: libc::sockaddr_storage,
    hdr: libc::msghdr,
}

/// Counters of what the I/O loop itself saw (the worker counts everything else).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UringCounters {
    /// Receive completions with an error (negative result).
    pub recv_errors: u64,
    /// Datagrams longer than [`BUF_LEN`], dropped unread.
    pub truncated: u64,
    /// Datagrams whose source address family was not IPv4/IPv6.
    pub bad_source: u64,
    /// Heartbeat echoes sent.
    pub replies_sent: u64,
    /// Heartbeat echoes that failed to send (or whose destination is not UDP).
    pub reply_errors: u64,
    /// Transmissions (`SendMsg`) completed.
    pub sent: u64,
    /// Transmissions that completed with an error.
    pub send_errors: u64,
    /// Packets that came from an address other than the session's active path (to be
    /// reported to the control process; not yet forwarded in this slice).
    pub new_path_events: u64,
}

/// The io_uring UDP loop for one worker.
pub struct UringUdp {
    // Declared first so that, after `Drop::drop` has confirmed no operation is in flight, the
    // ring is torn down before the buffers are freed.
    ring: IoUring,
    socket: UdpSocket,
    slots: Box<[UnsafeCell<Slot>]>,
    in_flight: Box<[bool]>,
    in_flight_count: usize,
    /// Buffer indexes to re-arm at the next submission.
    rearm: Vec<u32>,
    /// Transmit slots not in flight.
    tx_free: Vec<u32>,
    /// See [`UringUdp::set_batch_submit`].
    batch_submit: bool,
    counters: UringCounters,
}

// SAFETY: the raw pointers inside `slots` (msghdr → iovec, name, buffer) point into the same
// boxed slots, which the `UringUdp` owns and which do not move when the struct moves; the
// ring, its in-flight operations and the slots all go to the new thread together, and no
// reference to them is kept elsewhere. `UringUdp` is not `Sync`: one thread uses it at a time.
unsafe impl Send for UringUdp {}

impl std::fmt::Debug for UringUdp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UringUdp")
            .field("socket", &self.socket)
            .field("buffers", &self.slots.len())
            .field("in_flight", &self.in_flight_count)
            .field("counters", &self.counters)
            .finish_non_exhaustive()
    }
}

fn sockaddr_storage_len() -> libc::socklen_t {
    // 128 bytes: always fits.
    size_of::<libc::sockaddr_storage>() as libc::socklen_t
}

impl UringUdp {
    /// Bind a UDP socket to `addr` and arm every receive buffer.
    ///
    /// # Errors
    /// Binding, ring setup or the first submission failed.
    pub fn bind(addr: SocketAddr) -> io::Result<Self> {
        Self::new(UdpSocket::bind(addr)?)
    }

    /// Take over a bound socket and arm every receive buffer.
    ///
    /// # Errors
    /// Ring setup or the first submission failed.
    pub fn new(socket: UdpSocket) -> io::Result<Self> {
        // Room for every receive plus the cancellation on drop; the completion queue is twice
        // the submission queue by default, so every in-flight receive has a completion slot.
        let ring = IoUring::new((2 * (RX_BUFFERS + TX_BUFFERS)) as u32)?;
        let slots: Box<[UnsafeCell<Slot>]> = (0..RX_BUFFERS + TX_BUFFERS)
            .map(|_| {
                UnsafeCell::new(Slot {
                    buf: [0; BUF_LEN],
                    iov: libc::iovec {
                        iov_base: ptr::null_mut(),
                        iov_len: 0,
                    },
                    // SAFETY: `sockaddr_storage` and `msghdr` are plain C structs for which
                    // all-zero bytes are a valid value (null pointers, zero lengths).
                    name: unsafe { mem::zeroed() },
                    // SAFETY: as above.
                    hdr: unsafe { mem::zeroed() },
                })
            })
            .collect();
        // Now that the slots are at their final heap address, point each header at its own
        // iovec, name and buffer. These pointers never change afterwards.
        for cell in slots.iter() {
            let p = cell.get();
            // SAFETY: `p` comes from a live `UnsafeCell` in `slots`, nothing else references
            // the slot, and no operation has been submitted yet.
            unsafe {
                (*p).iov.iov_base = ptr::addr_of_mut!((*p).buf).cast();
                (*p).iov.iov_len = BUF_LEN;
                (*p).hdr.msg_name = ptr::addr_of_mut!((*p).name).cast();
                (*p).hdr.msg_iov = ptr::addr_of_mut!((*p).iov);
                (*p).hdr.msg_iovlen = 1;
            }
        }
        let mut me = UringUdp {
            ring,
            socket,
            slots,
            in_flight: vec![false; RX_BUFFERS + TX_BUFFERS].into_boxed_slice(),
            in_flight_count: 0,
            rearm: (0..RX_BUFFERS as u32).collect(),
            tx_free: (RX_BUFFERS as u32..(RX_BUFFERS + TX_BUFFERS) as u32).collect(),
            batch_submit: false,
            counters: UringCounters::default(),
        };
        me.push_rearms()?;
        me.ring.submit()?;
        Ok(me)
    }

    /// The bound socket (for its local address, options).
    #[must_use]
    pub fn socket(&self) -> &UdpSocket {
        &self.socket
    }

    /// The loop's own counters.
    #[must_use]
    pub fn counters(&self) -> &UringCounters {
        &self.counters
    }

    /// Receive operations currently in flight.
    #[must_use]
    pub fn in_flight(&self) -> usize {
        self.in_flight_count
    }

    /// Push a `RecvMsg` for every buffer waiting in `rearm` (no system call).
    fn push_rearms(&mut self) -> io::Result<()> {
        let fd = types::Fd(self.socket.as_raw_fd());
        let mut sq = self.ring.submission();
        while let Some(&idx) = self.rearm.last() {
            let i = idx as usize;
            debug_assert!(!self.in_flight[i]);
            let p = self.slots[i].get();
            // SAFETY: slot `i` is not in flight (its completion was reaped, or it was never
            // submitted), so nothing else reads or writes it; we reset the lengths the kernel
            // overwrote on the previous receive.
            let hdr = unsafe {
                (*p).hdr.msg_namelen = sockaddr_storage_len();
                (*p).hdr.msg_flags = 0;
                ptr::addr_of_mut!((*p).hdr)
            };
            // MSG_TRUNC: the result is the real datagram length, so truncation is detectable.
            let entry = opcode::RecvMsg::new(fd, hdr)
                .flags(libc::MSG_TRUNC as u32)
                .build()
                .user_data(u64::from(idx));
            // SAFETY: the msghdr, its iovec, name and buffer all live in slot `i` of the boxed
            // slice `self.slots`, which is never resized or moved and is freed only after
            // `Drop` has cancelled and reaped every in-flight operation (or leaked, if that
            // could not be confirmed). We mark the slot in flight and touch it again only
            // after its completion is reaped.
            if unsafe { sq.push(&entry) }.is_err() {
                // Submission queue full: leave the rest for the next submission.
                break;
            }
            self.rearm.pop();
            self.in_flight[i] = true;
            self.in_flight_count += 1;
        }
        Ok(())
    }

    /// Wait for at least one receive, process every completed datagram through
    /// `worker.handle_rx`, hand delivered inner packets to `deliver`, send heartbeat echoes,
    /// and re-arm the consumed buffers in one submission. Returns how many datagrams were
    /// passed to the worker (including ones it dropped; not receive errors or truncated
    /// datagrams, which only [`UringUdp::counters`] records).
    ///
    /// # Errors
    /// The ring's submit/wait failed (other than by a signal, which returns `Ok(0)`).
    pub fn run_once(
        &mut self,
        worker: &mut Worker,
        now: Instant,
        deliver: &mut impl FnMut(SessionId, &[u8]),
    ) -> io::Result<usize> {
        let mut new_paths = 0;
        let n = self.poll(
            true,
            &mut |from, buf| match worker.handle_rx(now, from, buf) {
                Rx::Deliver {
                    id,
                    packet,
                    new_path,
                } => {
                    new_paths += u64::from(new_path.is_some());
                    deliver(id, packet);
                    None
                }
                Rx::Reply { dst, len, new_path } => {
                    new_paths += u64::from(new_path.is_some());
                    Some((dst, len))
                }
                Rx::Consumed { new_path } => {
                    new_paths += u64::from(new_path.is_some());
                    None
                }
                Rx::Dropped(_) => None,
            },
        )?;
        self.counters.new_path_events += new_paths;
        Ok(n)
    }

    /// Submit pending re-arms, optionally wait for at least one completion (`wait`), and pass
    /// every received datagram (source, payload in place) to `handle`; when it returns
    /// `Some((dst, len))` the first `len` bytes of the buffer are sent to `dst` (a heartbeat
    /// echo). Consumed buffers are re-armed in one submission. Returns the number of
    /// datagrams passed to `handle`.
    ///
    /// # Errors
    /// The ring's submit/wait failed (other than by a signal, which returns `Ok(0)`).
    pub fn poll(
        &mut self,
        wait: bool,
        handle: &mut impl FnMut(Path, &mut [u8]) -> Option<(Path, usize)>,
    ) -> io::Result<usize> {
        // Anything not re-armed last time (queue was full) goes in with this submission.
        self.push_rearms()?;
        let submitted = if wait {
            self.ring.submit_and_wait(1)
        } else {
            self.ring.submit()
        };
        match submitted {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => return Ok(0),
            Err(e) => return Err(e),
        }
        let mut processed = 0;
        let Self {
            ring,
            socket,
            slots,
            in_flight,
            in_flight_count,
            rearm,
            tx_free,
            counters,
            ..
        } = self;
        for cqe in ring.completion() {
            let idx = cqe.user_data();
            let Some(i) = usize::try_from(idx).ok().filter(|&i| i < slots.len()) else {
                continue; // not a buffer (e.g. a cancellation)
            };
            in_flight[i] = false;
            *in_flight_count -= 1;
            if i >= RX_BUFFERS {
                // A transmission finished: its slot is free again.
                tx_free.push(idx as u32);
                if cqe.result() < 0 {
                    counters.send_errors += 1;
                } else {
                    counters.sent += 1;
                }
                continue;
            }
            rearm.push(idx as u32);
            let Ok(len) = usize::try_from(cqe.result()) else {
                counters.recv_errors += 1;
                continue;
            };
            if len > BUF_LEN {
                counters.truncated += 1;
                continue;
            }
            let p = slots[i].get();
            // SAFETY: the completion for slot `i` has been reaped, so the kernel no longer
            // accesses it and it is not re-submitted until `push_rearms`, after these borrows
            // end. No other reference to the slot exists.
            let slot = unsafe { &mut *p };
            let (buf, from) = (&mut slot.buf[..len], sockaddr_of(&slot.name));
            let Some(from) = from else {
                counters.bad_source += 1;
                continue;
            };
            processed += 1;
            if let Some((dst, len)) = handle(Path::udp(from), &mut *buf) {
                let sent = dst.transport == Transport::Udp
                    && len <= buf.len()
                    && socket.send_to(&buf[..len], dst.addr).is_ok();
                if sent {
                    counters.replies_sent += 1;
                } else {
                    counters.reply_errors += 1;
                }
            }
        }
        self.push_rearms()?;
        self.ring.submit()?;
        Ok(processed)
    }

    /// The io_uring file descriptor: readable when completions are waiting (for `poll(2)`).
    #[must_use]
    pub fn ring_fd(&self) -> std::os::fd::RawFd {
        self.ring.as_raw_fd()
    }

    /// Cancel every in-flight receive and reap the completions, so that no buffer is in the
    /// kernel's hands afterwards ([`UringUdp::in_flight`] is then 0). Datagrams that
    /// completed in the meantime are discarded unprocessed. A later [`UringUdp::run_once`]
    /// re-arms every buffer. Called on drop.
    ///
    /// # Errors
    /// The cancellation could not be queued, or the ring's submit/wait failed; receives may
    /// then still be in flight.
    pub fn cancel_all(&mut self) -> io::Result<()> {
        let Self {
            ring,
            in_flight,
            in_flight_count,
            tx_free,
            rearm,
            ..
        } = self;
        cancel_and_reap(ring, in_flight, in_flight_count, |i| {
            if i >= RX_BUFFERS {
                tx_free.push(i as u32);
            } else {
                rearm.push(i as u32);
            }
        })
    }

    /// Encapsulate `inner` for session `id` and send it to the session's active path, from a
    /// transmit slot with an `IORING_OP_SENDMSG` (submitted at once, or with the next
    /// [`UringUdp::poll`] / [`UringUdp::flush`] when batching is on).
    ///
    /// # Errors
    /// The worker refused it ([`crate::worker::WorkerDrop`], counted by the worker; kind
    /// `InvalidInput`), the active path is not UDP (`Unsupported`), every transmit slot is in
    /// flight (`WouldBlock`), or the submission failed.
    pub fn send_inner(
        &mut self,
        worker: &mut Worker,
        id: SessionId,
        inner: &[u8],
    ) -> io::Result<()> {
        self.queue_send(|buf| {
            let header = jumping_protocol::wire::DATA_HEADER_LEN;
            if let Some(room) = buf.get_mut(header..header + inner.len()) {
                room.copy_from_slice(inner);
            }
            let (dst, len) = worker
                .encapsulate(id, buf, inner.len())
                .map_err(|d| io::Error::new(io::ErrorKind::InvalidInput, format!("{d:?}")))?;
            if dst.transport != Transport::Udp {
                return Err(io::Error::new(
                    io::ErrorKind::Unsupported,
                    "active path is not UDP",
                ));
            }
            Ok((dst.addr, len))
        })
    }

    /// Send one ready datagram (a control message, a sealed packet built elsewhere) from a
    /// transmit slot, like [`UringUdp::send_inner`].
    ///
    /// # Errors
    /// As [`UringUdp::send_inner`], or `InvalidInput` if it does not fit a buffer.
    pub fn send_datagram(&mut self, dst: SocketAddr, datagram: &[u8]) -> io::Result<()> {
        self.queue_send(|buf| {
            let room = buf
                .get_mut(..datagram.len())
                .ok_or_else(|| io::Error::from(io::ErrorKind::InvalidInput))?;
            room.copy_from_slice(datagram);
            Ok((dst, datagram.len()))
        })
    }

    /// Batch submissions: sends are only queued, and go to the kernel with the next
    /// [`UringUdp::poll`] or [`UringUdp::flush`] — one system call for a whole batch.
    pub fn set_batch_submit(&mut self, on: bool) {
        self.batch_submit = on;
    }

    /// Submit every queued operation.
    ///
    /// # Errors
    /// The submission failed.
    pub fn flush(&mut self) -> io::Result<()> {
        self.ring.submit().map(|_| ())
    }

    /// Fill a free transmit slot with `fill` (which returns the destination and length) and
    /// queue its `SendMsg`.
    fn queue_send(
        &mut self,
        fill: impl FnOnce(&mut [u8]) -> io::Result<(SocketAddr, usize)>,
    ) -> io::Result<()> {
        let Some(&idx) = self.tx_free.last() else {
            return Err(io::Error::new(
                io::ErrorKind::WouldBlock,
                "every transmit buffer is in flight",
            ));
        };
        let i = idx as usize;
        debug_assert!(i >= RX_BUFFERS && !self.in_flight[i]);
        let p = self.slots[i].get();
        // SAFETY: slot `i` is a transmit slot on the free list: no operation that uses it is
        // in flight (its completion was reaped, or it was never submitted), so nothing else
        // reads or writes it while this borrow lives.
        let slot = unsafe { &mut *p };
        let (dst, len) = fill(&mut slot.buf)?;
        let (name, namelen) = sockaddr_from(dst);
        slot.name = name;
        slot.hdr.msg_namelen = namelen;
        slot.hdr.msg_flags = 0;
        slot.iov.iov_len = len;
        let hdr = ptr::addr_of!(slot.hdr);
        let entry = opcode::SendMsg::new(types::Fd(self.socket.as_raw_fd()), hdr)
            .build()
            .user_data(u64::from(idx));
        // SAFETY: the msghdr, its iovec, name and buffer live in slot `i` of the boxed slice
        // `self.slots`, which is never resized or moved and is freed only after `Drop` has
        // cancelled and reaped every in-flight operation; the slot is marked in flight below
        // and not touched again until its completion is reaped.
        unsafe { push_or_submit(&mut self.ring, &entry) }?;
        self.tx_free.pop();
        self.in_flight[i] = true;
        self.in_flight_count += 1;
        if !self.batch_submit {
            self.ring.submit()?;
        }
        Ok(())
    }
}

/// Queue `entry`, submitting what is queued first if the submission queue is full. Shared by
/// the socket and TUN rings.
///
/// # Safety
/// As for `io_uring::SubmissionQueue::push`: every buffer and pointer `entry` refers to must
/// stay valid, and untouched by the caller, until the operation's completion is reaped.
pub(crate) unsafe fn push_or_submit(
    ring: &mut IoUring,
    entry: &io_uring::squeue::Entry,
) -> io::Result<()> {
    // SAFETY: forwarded from this function's contract.
    if unsafe { ring.submission().push(entry) }.is_ok() {
        return Ok(());
    }
    ring.submit()?;
    // SAFETY: as above.
    unsafe { ring.submission().push(entry) }.map_err(|_| io::Error::other("submission queue full"))
}

/// Cancel every operation in flight on `ring` and reap completions until none is: the buffers
/// those operations use may be freed or reused afterwards. `in_flight[i]` marks buffer `i`
/// (user data `i`) in flight; `reaped(i)` is called as each comes back. Shared by the
/// socket and TUN rings.
///
/// # Errors
/// The cancellation could not be queued, the ring's submit/wait failed, or operations were
/// still in flight after 1000 waits; buffers may then still be in the kernel's hands.
pub(crate) fn cancel_and_reap(
    ring: &mut IoUring,
    in_flight: &mut [bool],
    in_flight_count: &mut usize,
    mut reaped: impl FnMut(usize),
) -> io::Result<()> {
    if *in_flight_count == 0 {
        return Ok(());
    }
    let cancel = opcode::AsyncCancel2::new(types::CancelBuilder::any())
        .build()
        .user_data(CANCEL_TAG);
    // SAFETY: a cancellation carries no buffer or pointer.
    unsafe { ring.submission().push(&cancel) }
        .map_err(|_| io::Error::other("submission queue full"))?;
    for _ in 0..1000 {
        if *in_flight_count == 0 {
            return Ok(());
        }
        match ring.submit_and_wait(1) {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
        for cqe in ring.completion() {
            let Some(i) = usize::try_from(cqe.user_data())
                .ok()
                .filter(|&i| i < in_flight.len() && in_flight[i])
            else {
                continue;
            };
            in_flight[i] = false;
            *in_flight_count -= 1;
            reaped(i);
        }
    }
    if *in_flight_count == 0 {
        Ok(())
    } else {
        Err(io::Error::new(
            io::ErrorKind::TimedOut,
            "operations still in flight after cancellation",
        ))
    }
}

/// Bind `count` UDP sockets to `addr` in one `SO_REUSEPORT` group and attach a classic BPF
/// program that picks the group member by the byte at offset 4 of the UDP payload: the top
/// byte of the SessionId, which names the owner worker (SPEC.md section 7). Socket `i` of the
/// result is member `i`; a datagram whose byte is not a member index (control messages,
/// sessions of a moved owner) falls back to the kernel's flow hash and is handed to its owner
/// by the receiving worker.
///
/// # Errors
/// Creating, configuring or binding a socket failed.
pub fn bind_steered(addr: SocketAddr, count: usize) -> io::Result<Vec<UdpSocket>> {
    use std::os::fd::FromRawFd as _;
    let family = if addr.is_ipv4() {
        libc::AF_INET
    } else {
        libc::AF_INET6
    };
    let mut sockets = Vec::with_capacity(count);
    for i in 0..count {
        // SAFETY: plain socket(2) call; the result is checked and owned right away.
        let fd = unsafe { libc::socket(family, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` is a fresh socket that nothing else owns.
        let socket = unsafe { UdpSocket::from_raw_fd(fd) };
        let one: libc::c_int = 1;
        setsockopt(&socket, libc::SOL_SOCKET, libc::SO_REUSEPORT, &one)?;
        if i == 0 {
            // A generous receive buffer: bursts arrive faster than a wake-up.
            let size: libc::c_int = 8 << 20;
            let _ = setsockopt(&socket, libc::SOL_SOCKET, libc::SO_RCVBUF, &size);
        }
        let (storage, len) = sockaddr_from(addr);
        // SAFETY: `storage` holds a valid sockaddr of `len` bytes for the socket's family.
        let rc = unsafe { libc::bind(fd, ptr::from_ref(&storage).cast(), len) };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        if i == 0 {
            // ldb [4]; ret a
            let mut code = [
                libc::sock_filter {
                    code: (libc::BPF_LD | libc::BPF_B | libc::BPF_ABS) as u16,
                    jt: 0,
                    jf: 0,
                    k: 4,
                },
                libc::sock_filter {
                    code: (libc::BPF_RET | libc::BPF_A) as u16,
                    jt: 0,
                    jf: 0,
                    k: 0,
                },
            ];
            let prog = libc::sock_fprog {
                len: code.len() as u16,
                filter: code.as_mut_ptr(),
            };
            setsockopt(
                &socket,
                libc::SOL_SOCKET,
                libc::SO_ATTACH_REUSEPORT_CBPF,
                &prog,
            )?;
        }
        sockets.push(socket);
    }
    Ok(sockets)
}

fn setsockopt<T>(socket: &UdpSocket, level: i32, name: i32, value: &T) -> io::Result<()> {
    // SAFETY: `value` points to a live `T` of the size passed; the kernel copies it.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            level,
            name,
            ptr::from_ref(value).cast(),
            size_of::<T>() as libc::socklen_t,
        )
    };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

fn sockaddr_from(addr: SocketAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
    // SAFETY: all-zero bytes are a valid `sockaddr_storage`.
    let mut ss: libc::sockaddr_storage = unsafe { mem::zeroed() };
    match addr {
        SocketAddr::V4(a) => {
            // SAFETY: `sockaddr_storage` is larger and at least as aligned as `sockaddr_in`.
            let sin = unsafe { &mut *ptr::from_mut(&mut ss).cast::<libc::sockaddr_in>() };
            sin.sin_family = libc::AF_INET as libc::sa_family_t;
            sin.sin_port = a.port().to_be();
            sin.sin_addr.s_addr = u32::from(*a.ip()).to_be();
            (ss, size_of::<libc::sockaddr_in>() as libc::socklen_t)
        }
        SocketAddr::V6(a) => {
            // SAFETY: as above, for `sockaddr_in6`.
            let sin6 = unsafe { &mut *ptr::from_mut(&mut ss).cast::<libc::sockaddr_in6>() };
            sin6.sin6_family = libc::AF_INET6 as libc::sa_family_t;
            sin6.sin6_port = a.port().to_be();
            sin6.sin6_addr.s6_addr = a.ip().octets();
            sin6.sin6_scope_id = a.scope_id();
            (ss, size_of::<libc::sockaddr_in6>() as libc::socklen_t)
        }
    }
}

/// The source address the kernel wrote into a receive slot's name.
fn sockaddr_of(ss: &libc::sockaddr_storage) -> Option<SocketAddr> {
    match i32::from(ss.ss_family) {
        libc::AF_INET => {
            // SAFETY: the family says the storage holds a `sockaddr_in`; `sockaddr_storage`
            // is larger and at least as aligned, and we only read it.
            let sin = unsafe { &*ptr::from_ref(ss).cast::<libc::sockaddr_in>() };
            Some(SocketAddr::V4(SocketAddrV4::new(
                Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr)),
                u16::from_be(sin.sin_port),
            )))
        }
        libc::AF_INET6 => {
            // SAFETY: as above, for `sockaddr_in6`.
            let sin6 = unsafe { &*ptr::from_ref(ss).cast::<libc::sockaddr_in6>() };
            Some(SocketAddr::V6(SocketAddrV6::new(
                Ipv6Addr::from(sin6.sin6_addr.s6_addr),
                u16::from_be(sin6.sin6_port),
                sin6.sin6_flowinfo,
                sin6.sin6_scope_id,
            )))
        }
        _ => None,
    }
}

impl Drop for UringUdp {
    fn drop(&mut self) {
        // The kernel may still write into any in-flight buffer: cancel every operation and
        // reap the completions before the slots are freed. If that cannot be confirmed, leak
        // the slots rather than free memory the kernel may still write to.
        let _ = self.cancel_all();
        if self.in_flight_count > 0 {
            mem::forget(mem::take(&mut self.slots));
        }
    }
}
