//! Run the XDP program on crafted frames with `bpf(BPF_PROG_TEST_RUN)`, and the bits of
//! system plumbing such tests need (root check, a private bpffs mount for pinned maps).
//!
//! aya 0.13 does not expose `BPF_PROG_TEST_RUN`, so this module calls the syscall itself. It
//! is the only module of the crate allowed `unsafe` code; every block says why it is sound.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};

use crate::XdpAction;

/// `BPF_PROG_TEST_RUN` from `enum bpf_cmd` (`include/uapi/linux/bpf.h`).
const BPF_PROG_TEST_RUN: libc::c_long = 10;

/// The `test` member of `union bpf_attr` (uapi layout; fields after `batch_size` omitted: the
/// kernel accepts a shorter attr and zero-fills the rest).
#[repr(C)]
#[derive(Debug, Default)]
struct BpfAttrTest {
    prog_fd: u32,
    retval: u32,
    data_size_in: u32,
    data_size_out: u32,
    data_in: u64,
    data_out: u64,
    repeat: u32,
    duration: u32,
    ctx_in: u64,
    ctx_out: u64,
    ctx_size_in: u32,
    ctx_size_out: u32,
    flags: u32,
    cpu: u32,
    batch_size: u32,
    _pad: u32,
}

/// Result of one test run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TestRunOutput {
    /// The program's return value (an `XdpAction` code).
    pub retval: u32,
    /// The frame after the program ran (it may rewrite packets; ours does not).
    pub data_out: Vec<u8>,
    /// Run time reported by the kernel, in nanoseconds.
    pub duration_ns: u32,
}

impl TestRunOutput {
    /// The verdict, if `retval` is a valid XDP action.
    #[must_use]
    pub const fn action(&self) -> Option<XdpAction> {
        XdpAction::from_u32(self.retval)
    }
}

/// Run the loaded XDP program `prog` once on `frame` (an Ethernet frame).
///
/// # Errors
/// The `bpf()` syscall's error (e.g. `EPERM` without `CAP_BPF`/`CAP_SYS_ADMIN`, `EINVAL` for a
/// frame shorter than an Ethernet header or larger than a page).
pub fn run_xdp(prog: BorrowedFd<'_>, frame: &[u8]) -> io::Result<TestRunOutput> {
    let fd = u32::try_from(prog.as_raw_fd())
        .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    let len =
        u32::try_from(frame.len()).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // Room for the frame plus any growth (bpf_xdp_adjust_tail); the kernel truncates to this.
    let mut out = vec![0u8; frame.len() + 256];
    let mut attr = BpfAttrTest {
        prog_fd: fd,
        data_size_in: len,
        data_size_out: u32::try_from(out.len())
            .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?,
        data_in: frame.as_ptr() as u64,
        data_out: out.as_mut_ptr() as u64,
        repeat: 1,
        ..BpfAttrTest::default()
    };
    // SAFETY: `attr` is a valid, initialised `bpf_attr.test` prefix that lives across the
    // call, and we pass its exact size. The kernel reads `data_size_in` bytes from `data_in`
    // (`frame`, borrowed for the call) and writes at most `data_size_out` bytes to `data_out`
    // (`out`, exclusively borrowed and that long). `prog` is an open fd borrowed for the call.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_PROG_TEST_RUN,
            core::ptr::addr_of_mut!(attr),
            size_of::<BpfAttrTest>(),
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    let n = usize::try_from(attr.data_size_out)
        .unwrap_or(usize::MAX)
        .min(out.len());
    out.truncate(n);
    Ok(TestRunOutput {
        retval: attr.retval,
        data_out: out,
        duration_ns: attr.duration,
    })
}

/// Whether the process runs with effective uid 0 (needed to load BPF programs and mount).
#[must_use]
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// A private bpffs instance mounted on a fresh temporary directory, for pinned maps in tests.
/// Dropping it unmounts (which releases every pin in it) and removes the directory, so tests
/// leave nothing behind under `/sys/fs/bpf` or elsewhere.
#[derive(Debug)]
pub struct BpffsMount {
    path: PathBuf,
}

impl BpffsMount {
    /// Mount a new bpffs under the system temporary directory.
    ///
    /// # Errors
    /// Creating the directory or `mount(2)` failed (root is needed).
    pub fn new() -> io::Result<Self> {
        static SEQ: AtomicU32 = AtomicU32::new(0);
        let path = std::env::temp_dir().join(format!(
            "jumping-bpffs-{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir(&path)?;
        let c_path = cstring(&path)?;
        let fstype = c"bpf";
        // SAFETY: all three strings are NUL-terminated and outlive the call; data is null,
        // which bpffs accepts (no mount options).
        let rc = unsafe {
            libc::mount(
                fstype.as_ptr(),
                c_path.as_ptr(),
                fstype.as_ptr(),
                0,
                core::ptr::null(),
            )
        };
        if rc != 0 {
            let err = io::Error::last_os_error();
            let _ = std::fs::remove_dir(&path);
            return Err(err);
        }
        Ok(Self { path })
    }

    /// The mount point.
    #[must_use]
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for BpffsMount {
    fn drop(&mut self) {
        if let Ok(c_path) = cstring(&self.path) {
            // SAFETY: `c_path` is NUL-terminated and outlives the call. MNT_DETACH lets the
            // unmount succeed even if a pinned object is still open elsewhere in the process.
            let _ = unsafe { libc::umount2(c_path.as_ptr(), libc::MNT_DETACH) };
        }
        let _ = std::fs::remove_dir(&self.path);
    }
}

fn cstring(path: &Path) -> io::Result<CString> {
    CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attr_layout_matches_uapi() {
        // union bpf_attr.test: batch_size is at offset 72 (uapi/linux/bpf.h).
        assert_eq!(core::mem::offset_of!(BpfAttrTest, data_in), 16);
        assert_eq!(core::mem::offset_of!(BpfAttrTest, repeat), 32);
        assert_eq!(core::mem::offset_of!(BpfAttrTest, ctx_in), 40);
        assert_eq!(core::mem::offset_of!(BpfAttrTest, flags), 64);
        assert_eq!(core::mem::offset_of!(BpfAttrTest, batch_size), 72);
        assert_eq!(size_of::<BpfAttrTest>(), 80);
    }
}
