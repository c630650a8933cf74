//! The few system calls the run loop makes that std does not wrap: waiting on several file
//! descriptors at once.

use std::io;
use std::os::fd::RawFd;

/// Wait until one of `fds` is readable or `timeout_ms` passes. Returns whether any is
/// readable. An interrupted wait (a signal) returns `Ok(false)`.
///
/// # Errors
/// `poll(2)` failed for another reason.
pub fn wait_readable(fds: &[RawFd], timeout_ms: i32) -> io::Result<bool> {
    let mut pfds = [libc::pollfd {
        fd: -1,
        events: 0,
        revents: 0,
    }; 4];
    let n = fds.len().min(pfds.len());
    for (p, &fd) in pfds.iter_mut().zip(&fds[..n]) {
        p.fd = fd;
        p.events = libc::POLLIN;
    }
    // SAFETY: `pfds` is a live array of `n` initialised `pollfd`s; poll writes only `revents`.
    let rc = unsafe { libc::poll(pfds.as_mut_ptr(), n as libc::nfds_t, timeout_ms) };
    if rc < 0 {
        let e = io::Error::last_os_error();
        return if e.kind() == io::ErrorKind::Interrupted {
            Ok(false)
        } else {
            Err(e)
        };
    }
    Ok(rc > 0)
}

/// `BPF_FS_MAGIC` from `linux/magic.h`.
pub const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

/// The file-system type (`statfs(2)` `f_type`) of `path`.
///
/// # Errors
/// `statfs(2)` failed (e.g. the path does not exist) or the path holds a NUL byte.
pub fn fs_type(path: &std::path::Path) -> io::Result<i64> {
    use std::os::unix::ffi::OsStrExt as _;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: all-zero bytes are a valid `statfs`.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is a NUL-terminated path and `st` a live, writable `statfs`.
    let rc = unsafe { libc::statfs(c.as_ptr(), &mut st) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(st.f_type)
}
