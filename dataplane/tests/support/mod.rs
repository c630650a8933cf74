//! Helpers shared by the data-plane integration tests: a session handed from the protocol's
//! gateway to a worker, client datagrams, and the root / network-namespace plumbing.
#![allow(dead_code, reason = "each test binary uses a subset of the helpers")]

pub mod process;

use std::fs::File;
use std::io::Write as _;
use std::os::fd::AsRawFd as _;
use std::process::Command as Proc;

use jumping_dataplane::commands::{channel, Command, CommandSender};
use jumping_dataplane::worker::{DataSession, SessionUpdate, Worker};
use jumping_protocol::testing::Sim;
use jumping_protocol::wire::{DATA_HEADER_LEN, TAG_LEN};
use jumping_protocol::{Path, Policy, SessionId};

/// The control process's end of a worker's command ring.
pub type Sender = CommandSender<DataSession, SessionUpdate>;

/// The protocol's gateway completes a handshake in the simulation (seeded by `seed`) and the
/// session is handed to a fresh worker, with its active path moved to `active` if given: the
/// simulation, the session, the worker and its command ring.
pub fn handed_off(seed: u64, active: Option<Path>) -> (Sim, SessionId, Worker, Sender) {
    let mut sim = Sim::new(seed, Policy::default());
    let sid = sim.connect();
    let handoff = sim.session(sid).handoff();
    let (mut tx, rx) = channel(16);
    let mut worker = Worker::new(sid.owner_core(), 1024, rx, Policy::default().key_grace);
    tx.send(Command::Install {
        id: sid,
        state: DataSession::from(handoff),
    })
    .expect("room");
    if let Some(path) = active {
        tx.send(Command::Update {
            id: sid,
            update: SessionUpdate::ActivePath(Some(path)),
        })
        .expect("room");
    }
    assert_eq!(worker.apply_commands(16).installed, 1);
    (sim, sid, worker, tx)
}

/// [`handed_off`] with seed 21 and the handshake's own path, which is returned too.
pub fn setup() -> (Sim, SessionId, Worker, Sender, Path) {
    let (sim, sid, worker, tx) = handed_off(21, None);
    let active = sim.session(sid).active.expect("active path");
    (sim, sid, worker, tx, active)
}

/// A data datagram from the simulated client carrying `inner`.
pub fn client_datagram(sim: &mut Sim, inner: &[u8]) -> Vec<u8> {
    let mut buf = vec![0u8; DATA_HEADER_LEN + inner.len() + TAG_LEN];
    buf[DATA_HEADER_LEN..DATA_HEADER_LEN + inner.len()].copy_from_slice(inner);
    let (_, len) = sim
        .client
        .encapsulate(sim.now, &mut buf, inner.len())
        .expect("established");
    buf.truncate(len);
    buf
}

/// True (after printing why) when the test must be skipped because it is not run as root;
/// with `JUMPING_REQUIRE_BPF_TESTS=1` (CI) not being root is a failure instead.
pub fn skip_unless_root() -> bool {
    if jumping_ebpf::test_run::is_root() {
        return false;
    }
    assert!(
        std::env::var_os("JUMPING_REQUIRE_BPF_TESTS").is_none_or(|v| v != "1"),
        "JUMPING_REQUIRE_BPF_TESTS=1 but not running as root"
    );
    let _ = writeln!(std::io::stderr(), "SKIPPED: needs root");
    true
}

/// Run `ip` with `args`; panic with its error output if it fails.
pub fn ip(args: &[&str]) {
    let out = Proc::new("ip").args(args).output().expect("run ip");
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Move the calling thread into the network namespace `name`.
pub fn enter_netns(name: &str) {
    let f = File::open(format!("/var/run/netns/{name}")).expect("open netns");
    // SAFETY: `f` is an open namespace file for the duration of the call; setns changes only
    // the calling thread's network namespace.
    let rc = unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) };
    assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
}
