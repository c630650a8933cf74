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
