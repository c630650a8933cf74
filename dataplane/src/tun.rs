//! The inside interface as a Linux TUN device.
//!
//! A [`Tun`] carries bare inner IP packets (`IFF_TUN | IFF_NO_PI`: no Ethernet header, no
//! packet-information prefix) between the kernel and the data plane: what a worker delivers
//! ([`crate::worker::Rx::Deliver`]) is written with [`Tun::write_packet`], and what the kernel
//! routes into the device is read with [`Tun::read_packet`] and sealed with
//! [`crate::worker::Worker::encapsulate`]. The file descriptor is non-blocking; the caller
//! polls it (or registers it with its event loop).
//!
//! The device is created in the network namespace of the calling thread. Bringing the link up
//! and giving it addresses and routes is left to the operator (`ip link`, `ip addr`): the
//! library does not configure the network.

use std::fs::{File, OpenOptions};
use std::io::{self, Read as _, Write as _};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::os::unix::fs::OpenOptionsExt as _;

/// An open TUN device (`IFF_TUN | IFF_NO_PI`, non-blocking). Closing it (drop) removes the
/// device unless it was made persistent elsewhere.
#[derive(Debug)]
pub struct Tun {
    file: File,
    name: String,
}

impl Tun {
    /// Opens `/dev/net/tun` and attaches it to the TUN device `name`, creating the device if
    /// it does not exist (needs `CAP_NET_ADMIN`). An empty `name` lets the kernel choose one
    /// (`tun%d`); [`Tun::name`] reports it.
    pub fn create(name: &str) -> io::Result<Tun> {
        Self::open(name, 0)
    }

    /// Opens `queues` queues of the multi-queue TUN device `name` (`IFF_MULTI_QUEUE`), one
    /// per worker: the kernel spreads the packets it routes into the device over the queues
    /// by flow hash, and a packet written to any queue enters the stack.
    pub fn create_queues(name: &str, queues: usize) -> io::Result<Vec<Tun>> {
        if name.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "a multi-queue TUN device needs a name",
            ));
        }
        (0..queues.max(1))
            .map(|_| Self::open(name, libc::IFF_MULTI_QUEUE))
            .collect()
    }

    fn open(name: &str, extra_flags: libc::c_int) -> io::Result<Tun> {
        if name.len() >= libc::IFNAMSIZ || name.bytes().any(|b| b == 0 || b == b'/') {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "invalid interface name",
            ));
        }
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open("/dev/net/tun")?;
        let mut ifr_name = [0 as libc::c_char; libc::IFNAMSIZ];
        for (d, s) in ifr_name.iter_mut().zip(name.bytes()) {
            *d = s as libc::c_char;
        }
        let mut ifr = libc::ifreq {
            ifr_name,
            ifr_ifru: libc::__c_anonymous_ifr_ifru {
                // The flags fit in the kernel's `short` (0x0001 | 0x1000 | 0x0100).
                ifru_flags: (libc::IFF_TUN | libc::IFF_NO_PI | extra_flags) as libc::c_short,
            },
        };
        // SAFETY: `file` is an open /dev/net/tun descriptor and `ifr` is a valid, initialised
        // `struct ifreq` that lives across the call; TUNSETIFF reads it and writes back only
        // within it (the chosen interface name).
        let rc = unsafe { libc::ioctl(file.as_raw_fd(), libc::TUNSETIFF, &mut ifr) };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        let len = ifr
            .ifr_name
            .iter()
            .position(|&c| c == 0)
            .unwrap_or(libc::IFNAMSIZ);
        let name = ifr.ifr_name[..len]
            .iter()
            .map(|&c| char::from(c as u8))
            .collect();
        Ok(Tun { file, name })
    }

    /// The interface name the kernel gave the device.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Hands one inner IP packet to the kernel, which routes it as if it had arrived on the
    /// device. A TUN write takes the whole packet or nothing; `WouldBlock` means the device's
    /// queue is full and the packet was not taken.
    pub fn write_packet(&self, pkt: &[u8]) -> io::Result<()> {
        let n = (&self.file).write(pkt)?;
        if n != pkt.len() {
            return Err(io::Error::new(
                io::ErrorKind::WriteZero,
                "short write to the TUN device",
            ));
        }
        Ok(())
    }

    /// Reads one IP packet the kernel routed into the device: `Ok(Some(len))` with the packet
    /// in `buf[..len]`, `Ok(None)` when none is waiting. A packet longer than `buf` is
    /// truncated by the kernel, so `buf` should hold the device MTU.
    pub fn read_packet(&self, buf: &mut [u8]) -> io::Result<Option<usize>> {
        loop {
            match (&self.file).read(buf) {
                Ok(n) => return Ok(Some(n)),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(None),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }
}

impl AsFd for Tun {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.file.as_fd()
    }
}

impl AsRawFd for Tun {
    fn as_raw_fd(&self) -> libc::c_int {
        self.file.as_raw_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::Tun;

    #[test]
    fn rejects_bad_names_before_opening_anything() {
        for name in ["a-name-far-too-long", "nul\0", "a/b"] {
            let e = Tun::create(name).expect_err(name);
            assert_eq!(e.kind(), std::io::ErrorKind::InvalidInput, "{name}");
        }
    }
}

/// Reads armed on a [`TunRing`] at all times.
pub const TUN_RX_SLOTS: usize = 32;
/// Writes a [`TunRing`] can have in flight.
pub const TUN_TX_SLOTS: usize = 128;
/// Size of each buffer (a full 1500-byte packet and more).
pub const TUN_BUF: usize = 2048;

/// What a [`TunRing`] saw.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TunCounters {
    /// Packets read from the device.
    pub read: u64,
    /// Packets written to the device.
    pub written: u64,
    /// Reads that completed with an error.
    pub read_errors: u64,
    /// Writes that completed with an error (or short).
    pub write_errors: u64,
}

/// A TUN queue driven by io_uring: [`TUN_RX_SLOTS`] reads always armed, writes queued from
/// [`TUN_TX_SLOTS`] buffers, and everything submitted together — one system call per batch,
/// not per packet, in both directions. The buffers live in one boxed slice that never moves;
/// `Drop` cancels and reaps every operation before freeing them.
pub struct TunRing {
    // First, so it is torn down before the buffers (after `Drop` has reaped everything).
    ring: io_uring::IoUring,
    tun: Tun,
    bufs: Box<[std::cell::UnsafeCell<[u8; TUN_BUF]>]>,
    in_flight: Box<[bool]>,
    in_flight_count: usize,
    rearm: Vec<u32>,
    tx_free: Vec<u32>,
    batch_submit: bool,
    counters: TunCounters,
}

// SAFETY: the buffers the kernel may access are owned by the `TunRing` and do not move when it
// moves; the ring and its operations move with them, and nothing else refers to them. Not
// `Sync`: one thread uses it at a time.
unsafe impl Send for TunRing {}

impl std::fmt::Debug for TunRing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TunRing")
            .field("tun", &self.tun.name)
            .field("in_flight", &self.in_flight_count)
            .field("counters", &self.counters)
            .finish_non_exhaustive()
    }
}

impl TunRing {
    /// Take over a TUN queue (switched to blocking mode: io_uring waits for it by polling)
    /// and arm every read.
    ///
    /// # Errors
    /// `fcntl`, ring set-up or the first submission failed.
    pub fn new(tun: Tun) -> io::Result<Self> {
        let fd = tun.file.as_raw_fd();
        // SAFETY: F_GETFL/F_SETFL on a descriptor we own; no pointers involved.
        let rc = unsafe {
            let flags = libc::fcntl(fd, libc::F_GETFL);
            if flags < 0 {
                flags
            } else {
                libc::fcntl(fd, libc::F_SETFL, flags & !libc::O_NONBLOCK)
            }
        };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        let slots = TUN_RX_SLOTS + TUN_TX_SLOTS;
        let ring = io_uring::IoUring::new((2 * slots) as u32)?;
        let mut me = TunRing {
            ring,
            tun,
            bufs: (0..slots)
                .map(|_| std::cell::UnsafeCell::new([0u8; TUN_BUF]))
                .collect(),
            in_flight: vec![false; slots].into_boxed_slice(),
            in_flight_count: 0,
            rearm: (0..TUN_RX_SLOTS as u32).collect(),
            tx_free: (TUN_RX_SLOTS as u32..slots as u32).collect(),
            batch_submit: false,
            counters: TunCounters::default(),
        };
        me.push_rearms()?;
        me.ring.submit()?;
        Ok(me)
    }

    /// The device name.
    #[must_use]
    pub fn name(&self) -> &str {
        self.tun.name()
    }

    /// Counters.
    #[must_use]
    pub fn counters(&self) -> &TunCounters {
        &self.counters
    }

    /// The io_uring descriptor: readable when completions wait (for `poll(2)`).
    #[must_use]
    pub fn ring_fd(&self) -> libc::c_int {
        self.ring.as_raw_fd()
    }

    /// Batch submissions: writes are only queued until the next [`TunRing::poll`] or
    /// [`TunRing::flush`].
    pub fn set_batch_submit(&mut self, on: bool) {
        self.batch_submit = on;
    }

    fn push_rearms(&mut self) -> io::Result<()> {
        let fd = io_uring::types::Fd(self.tun.file.as_raw_fd());
        while let Some(&idx) = self.rearm.last() {
            let i = idx as usize;
            let p = self.bufs[i].get();
            let entry = io_uring::opcode::Read::new(fd, p.cast::<u8>(), TUN_BUF as u32)
                .build()
                .user_data(u64::from(idx));
            // SAFETY: buffer `i` lives in `self.bufs`, a boxed slice never resized or moved and
            // freed only after `Drop` reaped every operation; it is not in flight (it was
            // never submitted, or its completion was reaped), and it is marked in flight below
            // and not touched until its completion is reaped.
            if unsafe { self.ring.submission().push(&entry) }.is_err() {
                break; // queue full: the rest goes with the next submission
            }
            self.rearm.pop();
            self.in_flight[i] = true;
            self.in_flight_count += 1;
        }
        Ok(())
    }

    /// Submit queued writes and re-arms, then hand every packet read since the last call to
    /// `handle` (in arrival order of completions) and free finished writes. Does not block.
    /// Returns the number of packets read.
    ///
    /// # Errors
    /// The submission failed.
    pub fn poll(&mut self, handle: &mut impl FnMut(&[u8])) -> io::Result<usize> {
        self.push_rearms()?;
        match self.ring.submit() {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => return Ok(0),
            Err(e) => return Err(e),
        }
        let mut n = 0;
        let TunRing {
            ring,
            bufs,
            in_flight,
            in_flight_count,
            rearm,
            tx_free,
            counters,
            ..
        } = self;
        for cqe in ring.completion() {
            let Some(i) = usize::try_from(cqe.user_data())
                .ok()
                .filter(|&i| i < bufs.len())
            else {
                continue;
            };
            in_flight[i] = false;
            *in_flight_count -= 1;
            let res = cqe.result();
            if i >= TUN_RX_SLOTS {
                tx_free.push(i as u32);
                if res < 0 {
                    counters.write_errors += 1;
                } else {
                    counters.written += 1;
                }
                continue;
            }
            rearm.push(i as u32);
            let Ok(len) = usize::try_from(res) else {
                counters.read_errors += 1;
                continue;
            };
            // SAFETY: the read into buffer `i` completed and was reaped: the kernel no longer
            // writes it, and it is not re-armed before this borrow ends.
            let buf = unsafe { &*bufs[i].get() };
            counters.read += 1;
            n += 1;
            handle(&buf[..len.min(TUN_BUF)]);
        }
        self.push_rearms()?;
        Ok(n)
    }

    /// Queue one inner packet for the device (copied into a write buffer). Submitted at once,
    /// or with the next [`TunRing::poll`] / [`TunRing::flush`] when batching.
    ///
    /// # Errors
    /// `WouldBlock` when every write buffer is in flight, `InvalidInput` for a packet larger
    /// than a buffer, or the submission failed.
    pub fn queue_write(&mut self, pkt: &[u8]) -> io::Result<()> {
        if pkt.len() > TUN_BUF {
            return Err(io::Error::from(io::ErrorKind::InvalidInput));
        }
        let Some(&idx) = self.tx_free.last() else {
            return Err(io::Error::new(
                io::ErrorKind::WouldBlock,
                "every TUN write buffer is in flight",
            ));
        };
        let i = idx as usize;
        let p = self.bufs[i].get();
        // SAFETY: buffer `i` is a write buffer on the free list: no operation on it is in
        // flight, so nothing else reads or writes it during this copy.
        unsafe { (&mut *p)[..pkt.len()].copy_from_slice(pkt) };
        let fd = io_uring::types::Fd(self.tun.file.as_raw_fd());
        let entry = io_uring::opcode::Write::new(fd, p.cast::<u8>(), pkt.len() as u32)
            .build()
            .user_data(u64::from(idx));
        // SAFETY: as in `push_rearms`: the buffer outlives the operation and is not touched
        // again until its completion is reaped.
        unsafe { crate::uring::push_or_submit(&mut self.ring, &entry) }?;
        self.tx_free.pop();
        self.in_flight[i] = true;
        self.in_flight_count += 1;
        if !self.batch_submit {
            self.ring.submit()?;
        }
        Ok(())
    }

    /// Submit every queued operation.
    ///
    /// # Errors
    /// The submission failed.
    pub fn flush(&mut self) -> io::Result<()> {
        self.ring.submit().map(|_| ())
    }

    fn cancel_all(&mut self) -> io::Result<()> {
        crate::uring::cancel_and_reap(
            &mut self.ring,
            &mut self.in_flight,
            &mut self.in_flight_count,
            |_| {},
        )
    }
}

impl Drop for TunRing {
    fn drop(&mut self) {
        // The kernel may still write into an armed read buffer: cancel and reap everything
        // first; if that cannot be confirmed, leak the buffers rather than free them.
        let _ = self.cancel_all();
        if self.in_flight_count > 0 {
            std::mem::forget(std::mem::take(&mut self.bufs));
        }
    }
}
