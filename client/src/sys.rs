//! Operating-system pieces: the clock, the TUN device, path sockets and `ip` commands.
//! The one `unsafe` block of the crate (the TUNSETIFF ioctl) is here.

use std::ffi::OsString;
use std::fs::{File, OpenOptions};
use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::{AsRawFd as _, OwnedFd};
use std::os::unix::fs::OpenOptionsExt as _;
use std::process::Command;

use anyhow::{bail, Context as _};
use jumping_protocol::Instant;
use nix::sys::socket::{self, sockopt, AddressFamily, SockFlag, SockType, SockaddrStorage};
use nix::time::{clock_gettime, ClockId};

use crate::cli::{Cidr, PathSpec};

/// Now on CLOCK_BOOTTIME (counts suspend, as PROTOCOL.md §8.3 asks of clients).
#[must_use]
pub fn now() -> Instant {
    // CLOCK_BOOTTIME exists on every Linux this client supports; a failure cannot happen with a
    // valid clock id, and the fallback keeps time monotonic enough to fail visibly rather than
    // panic.
    clock_gettime(ClockId::CLOCK_BOOTTIME).map_or(Instant::ZERO, |t| {
        let secs = u64::try_from(t.tv_sec()).unwrap_or(0);
        let nanos = u64::try_from(t.tv_nsec()).unwrap_or(0);
        Instant::from_nanos(secs.saturating_mul(1_000_000_000).saturating_add(nanos))
    })
}

/// `struct ifreq` with the flags member of its union, as TUNSETIFF reads it.
#[repr(C)]
struct IfReqFlags {
    name: [libc::c_char; libc::IFNAMSIZ],
    flags: libc::c_short,
    _pad: [u8; 22],
}

/// A TUN device (IFF_TUN | IFF_NO_PI), non-blocking. The device goes away when this drops.
#[derive(Debug)]
pub struct Tun {
    /// The character device; read and write move one IP packet each.
    pub file: File,
    /// Its name.
    pub name: String,
}

impl Tun {
    /// Create (or attach to) the TUN device `name`.
    ///
    /// # Errors
    /// When /dev/net/tun cannot be opened or the ioctl fails (no CAP_NET_ADMIN, name taken by a
    /// device of another kind).
    pub fn open(name: &str) -> anyhow::Result<Tun> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open("/dev/net/tun")
            .context("cannot open /dev/net/tun (is the tun module loaded?)")?;
        let mut req = IfReqFlags {
            name: [0; libc::IFNAMSIZ],
            flags: libc::c_short::try_from(libc::IFF_TUN | libc::IFF_NO_PI)
                .context("IFF flags out of range")?,
            _pad: [0; 22],
        };
        if name.len() >= libc::IFNAMSIZ {
            bail!("TUN name `{name}` is too long");
        }
        for (d, s) in req.name.iter_mut().zip(name.bytes()) {
            *d = libc::c_char::from_ne_bytes([s]);
        }
        // SAFETY: `file` is an open /dev/net/tun descriptor for the whole call; `req` is a
        // properly initialised, NUL-terminated `struct ifreq` layout (16-byte name, then the
        // 24-byte union whose first member TUNSETIFF reads as `short` flags), living on our stack
        // and exclusively borrowed for the duration of the call; the kernel writes back at most
        // `sizeof(struct ifreq)` = 40 bytes, which is the size of `IfReqFlags`.
        let rc = unsafe {
            libc::ioctl(
                file.as_raw_fd(),
                libc::TUNSETIFF,
                std::ptr::from_mut(&mut req).cast::<libc::c_void>(),
            )
        };
        if rc < 0 {
            let e = io::Error::last_os_error();
            bail!("cannot create TUN device `{name}` (TUNSETIFF: {e}; it needs CAP_NET_ADMIN)");
        }
        Ok(Tun {
            file,
            name: name.to_owned(),
        })
    }
}

/// Run `ip ARGS`, failing with its stderr.
///
/// # Errors
/// When `ip` cannot run or exits non-zero.
pub fn ip(args: &[&str]) -> anyhow::Result<()> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .context("cannot run `ip` (install iproute2)")?;
    if !out.status.success() {
        bail!(
            "`ip {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// Address, MTU and up on the TUN; then the routes.
///
/// # Errors
/// The first `ip` command that failed.
pub fn configure_tun(name: &str, address: Cidr, mtu: u32, routes: &[Cidr]) -> anyhow::Result<()> {
    let mtu = mtu.to_string();
    ip(&["link", "set", "dev", name, "mtu", &mtu])?;
    ip(&["addr", "replace", &address.to_string(), "dev", name])?;
    ip(&["link", "set", "dev", name, "up"])?;
    for r in routes {
        ip(&["route", "replace", &r.to_string(), "dev", name])?;
    }
    Ok(())
}

/// Remove the routes (best effort; the device's own removal takes them too).
pub fn remove_routes(name: &str, routes: &[Cidr]) {
    for r in routes {
        if let Err(e) = ip(&["route", "del", &r.to_string(), "dev", name]) {
            tracing::debug!("route removal: {e:#}");
        }
    }
}

/// A UDP socket for a path, non-blocking, of the gateway's address family.
///
/// # Errors
/// The bind error (EADDRNOTAVAIL when the address is gone, ENODEV when the interface is).
pub fn bind_path(spec: &PathSpec, gateway: SocketAddr) -> io::Result<UdpSocket> {
    let (family, local) = match spec {
        PathSpec::Addr(a) => (
            if a.is_ipv4() {
                AddressFamily::Inet
            } else {
                AddressFamily::Inet6
            },
            *a,
        ),
        PathSpec::Device(_) if gateway.is_ipv4() => {
            (AddressFamily::Inet, SocketAddr::from(([0u8; 4], 0)))
        }
        PathSpec::Device(_) => (AddressFamily::Inet6, SocketAddr::from(([0u16; 8], 0))),
    };
    let fd: OwnedFd = socket::socket(
        family,
        SockType::Datagram,
        SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
        None,
    )?;
    if let PathSpec::Device(dev) = spec {
        socket::setsockopt(&fd, sockopt::BindToDevice, &OsString::from(dev))?;
    }
    socket::bind(fd.as_raw_fd(), &SockaddrStorage::from(local))?;
    Ok(UdpSocket::from(fd))
}

/// Whether an interface is administratively and operationally usable (dev: paths).
#[must_use]
pub fn interface_up(name: &str) -> bool {
    match std::fs::read_to_string(format!("/sys/class/net/{name}/operstate")) {
        // "unknown" is what many virtual devices (tun, some veth) report while working.
        Ok(s) => !matches!(s.trim(), "down" | "lowerlayerdown" | "notpresent"),
        Err(_) => false,
    }
}

/// Send errors that mean the path cannot be used (not a transient queue-full).
#[must_use]
pub fn is_path_down_error(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(
            libc::ENETUNREACH
                | libc::EHOSTUNREACH
                | libc::EADDRNOTAVAIL
                | libc::ENODEV
                | libc::ENETDOWN
                | libc::ENXIO
                | libc::EPERM
        )
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_paths_bind() {
        let gw: SocketAddr = "127.0.0.1:9".parse().expect("addr");
        let s = bind_path(&PathSpec::Addr("127.0.0.1:0".parse().expect("addr")), gw).expect("bind");
        assert_ne!(s.local_addr().expect("local").port(), 0);
        // A documentation address is not ours: EADDRNOTAVAIL.
        let e = bind_path(&PathSpec::Addr("192.0.2.77:0".parse().expect("addr")), gw)
            .expect_err("bound a foreign address");
        assert_eq!(e.raw_os_error(), Some(libc::EADDRNOTAVAIL));
        assert!(now() > Instant::ZERO);
    }
}
