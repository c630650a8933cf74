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

/// Ask for transparent huge pages over the allocation of `v` (its whole capacity), before it
/// is first written: a million-session table spans hundreds of megabytes, and with 4 KiB
/// pages nearly every lookup also misses the TLB (doubly costly under virtualisation). Best
/// effort: errors (THP disabled, too small a range) are ignored.
pub fn advise_huge_pages<T>(v: &Vec<T>) {
    const PAGE: usize = 4096;
    let start = v.as_ptr() as usize;
    let end = start + v.capacity() * size_of::<T>();
    let aligned = start.next_multiple_of(PAGE);
    if end <= aligned + (2 << 20) {
        return; // smaller than one huge page: nothing to gain
    }
    // SAFETY: the range lies inside the vector's own allocation (start rounded up to a page,
    // end at the allocation's end); MADV_HUGEPAGE only changes how the kernel backs those
    // pages, never their contents or validity.
    unsafe {
        libc::madvise(
            aligned as *mut libc::c_void,
            end - aligned,
            libc::MADV_HUGEPAGE,
        );
    }
}

/// Hint the CPU to bring the cache line holding `r` into all cache levels. A hint only: it
/// never faults and changes nothing observable.
#[inline(always)]
pub fn prefetch<T>(r: &T) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: `prefetcht0` is part of SSE, which every x86_64 CPU has; it takes any address
    // (here a valid reference) and has no effect besides cache state.
    unsafe {
        core::arch::x86_64::_mm_prefetch::<{ core::arch::x86_64::_MM_HINT_T0 }>(
            core::ptr::from_ref(r).cast::<i8>(),
        );
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = r;
}
