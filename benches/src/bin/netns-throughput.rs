//! `netns-throughput`: data-plane receive throughput on a network-namespace topology, the
//! measured (not asserted) part of `cargo xtask bench dataplane`. Needs root; without it, it
//! prints `skipped: needs root` and exits successfully.
//!
//! Topology (created here, removed on drop, also on error or panic): two namespaces,
//! *generator* and *gateway*, joined by a veth pair with one queue, static addresses and a
//! permanent neighbour entry (no ARP during a burst). The gateway veth runs **threaded NAPI**
//! with its kernel thread pinned to [`RX_CPU`], so XDP, the AF_XDP copy and the kernel UDP stack
//! run on the receiving core rather than on the sender's. GRO is switched on at the gateway veth
//! (and TSO off at the generator veth) so that the veth uses its NAPI ring also without an XDP
//! program (the io_uring case); with UDP to a local socket nothing is aggregated.
//!
//! For each inner packet size in [`SIZES`], each receiver is measured in its own pass with a
//! fresh protocol session (the `Sim` handshake) and a freshly sealed pool of unique datagrams:
//!
//! * `afxdp_raw`   (c) the project's XDP program in native mode + `XskRx::poll` with a handler
//!   that does nothing: the I/O ceiling;
//! * `afxdp_decrypt` (a) the same with `XskRx::poll_rx` into a `Worker` holding the session
//!   (lookup, replay check, AEAD open); delivered inner packets are counted, **not written to a
//!   TUN device**;
//! * `uring`       (b) no XDP; `UringUdp` on a socket made like the data plane's
//!   (`bind_steered`) feeding the same kind of `Worker`, also counting only;
//! * `aead_open`   (d) no I/O: `Worker::handle_rx` over the pool, in place, on [`RX_CPU`]: the
//!   crypto ceiling (lookup + replay window + AEAD open).
//!
//! The generator (pinned to [`GEN_CPU`]) sends the pool as fast as it can with `sendmmsg`
//! ([`BATCH`] messages per call) from a connected UDP socket and records its own rate. By
//! default each message is a UDP GSO send of up to 64 datagrams, segmented by the generator's
//! own veth (so every receiver still gets one packet per datagram): plain `sendmmsg` of single
//! datagrams was measured here to be about as slow as the receivers, which would hide their
//! ceiling. A receiver's rate
//! is packets received / (time of the last receive − time of the first). `cpu1_busy` is the
//! CPU time of the receiver thread plus the NAPI kernel thread, divided by wall time, between
//! the first packet and the moment the receiver saw the generator finish: near 1.0 means the
//! receiving core was saturated (the generator was not the bottleneck).
//!
//! Results go to `target/bench/<run-id>/dataplane-netns.{json,md}` (run id from
//! `JUMPING_BENCH_RUN_ID`, as set by `cargo xtask bench`, else date + git revision) and the table
//! is printed. Options: `--packets-64 N`, `--packets-1400 N` (pool sizes), `--no-gso` (one
//! datagram per `sendmmsg` message instead of UDP GSO messages).

use std::fmt::Write as _;
use std::fs::{self, File};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket};
use std::os::fd::AsRawFd as _;
use std::process::Command as Proc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, ensure, Context, Result};
use aya::programs::XdpFlags;
use jumping_benches::{run_dir, sh};
use jumping_dataplane::commands::{channel, Command, CommandSender};
use jumping_dataplane::uring::{bind_steered, UringUdp};
use jumping_dataplane::worker::{DataSession, Rx, SessionUpdate, Worker};
use jumping_dataplane::xsk::{XskConfig, XskRx};
use jumping_ebpf::test_run::BpffsMount;
use jumping_ebpf::SessionOwner;
use jumping_protocol::testing::Sim;
use jumping_protocol::wire::{DATA_HEADER_LEN, TAG_LEN};
use jumping_protocol::{Path, Policy, SessionId};
use serde_json::{json, Value};

/// Inner packet sizes measured.
const SIZES: [usize; 2] = [64, 1400];
/// Default pool sizes (unique datagrams sealed before timing) per inner size.
const DEFAULT_PACKETS: [usize; 2] = [1_000_000, 400_000];
/// The generator's core and the receiving (worker) core.
const GEN_CPU: usize = 0;
const RX_CPU: usize = 1;
/// The generator socket's send buffer.
const GEN_SNDBUF: libc::c_int = 32 << 20;
/// Messages per `sendmmsg` call.
const BATCH: usize = 64;
/// `UDP_SEGMENT` (linux/udp.h; not in the libc crate): UDP GSO segment size.
const UDP_SEGMENT: libc::c_int = 103;
/// Most datagrams in one UDP GSO message (the kernel allows 128, and 64 KiB in total).
const GSO_MAX_SEGMENTS: usize = 64;
/// Passes over the pool for the AEAD-only ceiling (each with a fresh replay window).
const AEAD_PASSES: usize = 5;
/// After the generator finished, a receiver stops when nothing arrived for this long.
const IDLE_END: Duration = Duration::from_millis(300);
/// Bound on one receive pass (setup excluded).
const CASE_LIMIT: Duration = Duration::from_secs(60);
/// Bound on a receiver's setup (XDP load, socket bind).
const SETUP_LIMIT: Duration = Duration::from_secs(20);

const GW_DEV: &str = "jbgw0";
const GEN_DEV: &str = "jbgen0";
const GW_MAC: &str = "02:78:00:00:00:01";
const GEN_MAC: &str = "02:78:00:00:00:02";
const GW_ADDR: Ipv4Addr = Ipv4Addr::new(10, 78, 0, 1);
const GEN_ADDR: Ipv4Addr = Ipv4Addr::new(10, 78, 0, 2);
const TUNNEL_PORT: u16 = 51_820;
const GEN_PORT: u16 = 40_000;

// ---------------------------------------------------------------------------------------------
// Topology

/// Run `ip` with `args`.
fn ip(args: &[&str]) -> Result<()> {
    run("ip", args)
}

/// Run a command; fail with its error output.
fn run(cmd: &str, args: &[&str]) -> Result<()> {
    let out = Proc::new(cmd)
        .args(args)
        .output()
        .with_context(|| format!("starting {cmd}"))?;
    ensure!(
        out.status.success(),
        "{cmd} {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(())
}

/// Two namespaces joined by a veth pair. Deleting the namespaces (on drop, also on error or
/// panic) destroys the veth pair and with it any XDP program attached to it.
struct Topology {
    gw: String,
    gen: String,
}

impl Topology {
    fn new() -> Result<Self> {
        let pid = std::process::id();
        // Built before the first command, so a failure half way still cleans up.
        let me = Self {
            gw: format!("jb-gw-{pid}"),
            gen: format!("jb-gen-{pid}"),
        };
        ip(&["netns", "add", &me.gw])?;
        ip(&["netns", "add", &me.gen])?;
        ip(&[
            "link",
            "add",
            "name",
            GW_DEV,
            "address",
            GW_MAC,
            "numtxqueues",
            "1",
            "numrxqueues",
            "1",
            "netns",
            &me.gw,
            "type",
            "veth",
            "peer",
            "name",
            GEN_DEV,
            "address",
            GEN_MAC,
            "numtxqueues",
            "1",
            "numrxqueues",
            "1",
            "netns",
            &me.gen,
        ])?;
        for (ns, dev, addr) in [(&me.gw, GW_DEV, GW_ADDR), (&me.gen, GEN_DEV, GEN_ADDR)] {
            ip(&["-n", ns, "addr", "add", &format!("{addr}/24"), "dev", dev])?;
            ip(&["-n", ns, "link", "set", "dev", dev, "up"])?;
            ip(&["-n", ns, "link", "set", "dev", "lo", "up"])?;
        }
        // No ARP round trip before a burst (the kernel queues only a few packets meanwhile).
        ip(&[
            "-n",
            &me.gen,
            "neigh",
            "replace",
            &GW_ADDR.to_string(),
            "lladdr",
            GW_MAC,
            "dev",
            GEN_DEV,
            "nud",
            "permanent",
        ])?;
        // veth hands a packet to the peer's NAPI ring (instead of the sending CPU's backlog)
        // only when the peer has NAPI (XDP attached or GRO on) and the sender has no TSO;
        // attaching XDP clears the sender's TSO by itself, the io_uring case needs both here.
        // The generator's UDP GSO sends are segmented at its own veth (tx-udp-segmentation
        // off), on the generator's core: every receiver gets one packet per datagram.
        me.exec(
            &me.gen,
            &format!("ethtool -K {GEN_DEV} tso off tx-udp-segmentation off"),
        )?;
        me.exec(&me.gw, &format!("ethtool -K {GW_DEV} gro on"))?;
        // Threaded NAPI: the gateway veth's receive work runs in a kernel thread we can pin.
        // `ip netns exec` mounts the namespace's own sysfs, where the device is visible.
        me.exec(
            &me.gw,
            &format!("echo 1 > /sys/class/net/{GW_DEV}/threaded"),
        )?;
        Ok(me)
    }

    /// Run a shell command line inside namespace `ns`.
    fn exec(&self, ns: &str, line: &str) -> Result<()> {
        run("ip", &["netns", "exec", ns, "sh", "-c", line])
    }

    /// The generator veth's TX-dropped counter (a veth counts a packet its peer's ring had no
    /// room for as a TX drop of the sender).
    fn gen_tx_dropped(&self) -> Option<u64> {
        let out = Proc::new("ip")
            .args(["netns", "exec", &self.gen, "cat"])
            .arg(format!("/sys/class/net/{GEN_DEV}/statistics/tx_dropped"))
            .output()
            .ok()?;
        String::from_utf8_lossy(&out.stdout).trim().parse().ok()
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        for ns in [&self.gw, &self.gen] {
            let _ = Proc::new("ip").args(["netns", "del", ns]).output();
        }
    }
}

/// Move the calling thread into network namespace `name`.
fn enter_netns(name: &str) -> Result<()> {
    let f = File::open(format!("/var/run/netns/{name}")).context("open netns")?;
    // SAFETY: `f` is an open namespace file for the duration of the call; setns changes only
    // the calling thread's network namespace.
    let rc = unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) };
    ensure!(rc == 0, "setns: {}", std::io::Error::last_os_error());
    Ok(())
}

/// Pin the calling thread to `cpu`.
fn pin(cpu: usize) -> Result<()> {
    ensure!(
        core_affinity::set_for_current(core_affinity::CoreId { id: cpu }),
        "could not pin a thread to CPU {cpu}"
    );
    Ok(())
}

/// Find the gateway veth's NAPI kernel threads (`napi/<dev>-<id>`) and pin them to [`RX_CPU`].
fn pin_napi_threads() -> Result<Vec<u32>> {
    let prefix = format!("napi/{GW_DEV}-");
    let mut pids = Vec::new();
    for e in fs::read_dir("/proc")?.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        let comm = fs::read_to_string(e.path().join("comm")).unwrap_or_default();
        if comm.trim_end().starts_with(&prefix) {
            run("taskset", &["-pc", &RX_CPU.to_string(), &pid.to_string()])?;
            pids.push(pid);
        }
    }
    ensure!(
        !pids.is_empty(),
        "no NAPI kernel thread `{prefix}*`: threaded NAPI is not in effect on {GW_DEV}"
    );
    Ok(pids)
}

/// CPU time (ns) a task has spent running, from `/proc/<path>/schedstat`.
fn cpu_ns(path: &str) -> u64 {
    fs::read_to_string(format!("/proc/{path}/schedstat"))
        .ok()
        .and_then(|s| s.split_whitespace().next().and_then(|n| n.parse().ok()))
        .unwrap_or(0)
}

// ---------------------------------------------------------------------------------------------
// Sessions and datagram pools

/// `count` datagrams of the same length, back to back, each sealing a different inner packet
/// of `inner` bytes under a unique counter.
struct Pool {
    data: Vec<u8>,
    stride: usize,
}

/// A fresh protocol session (handshake in the simulation, seeded by `seed`) and a pool of its
/// client's datagrams, sealed before any timing.
fn sealed_pool(seed: u64, inner: usize, count: usize) -> Result<(Sim, SessionId, Pool)> {
    let mut sim = Sim::new(seed, Policy::default());
    let sid = sim.connect();
    let stride = DATA_HEADER_LEN + inner + TAG_LEN;
    let mut data = vec![0u8; stride * count];
    for (i, d) in data.chunks_exact_mut(stride).enumerate() {
        // Any bytes will do for the inner packet; make each one different.
        for (j, b) in d[DATA_HEADER_LEN..DATA_HEADER_LEN + inner]
            .iter_mut()
            .enumerate()
        {
            *b = (i.wrapping_add(j) % 251) as u8;
        }
        let (_, len) = sim
            .client
            .encapsulate(sim.now, d, inner)
            .map_err(|e| anyhow!("sealing: {e}"))?;
        ensure!(len == stride, "sealed length {len}, expected {stride}");
    }
    Ok((sim, sid, Pool { data, stride }))
}

type Sender = CommandSender<DataSession, SessionUpdate>;

/// A worker holding the session (as the control process hands it over), with its active path
/// on the generator's socket so no packet counts as a path change.
fn worker_for(sim: &Sim, sid: SessionId) -> Result<(Worker, Sender)> {
    let (mut tx, rx) = channel(16);
    let mut worker = Worker::new(sid.owner_core(), 1024, rx, Policy::default().key_grace);
    let state = DataSession::from(sim.session(sid).handoff());
    tx.send(Command::Install { id: sid, state })
        .map_err(|_| anyhow!("command ring full"))?;
    let active = Path::udp(SocketAddr::V4(SocketAddrV4::new(GEN_ADDR, GEN_PORT)));
    tx.send(Command::Update {
        id: sid,
        update: SessionUpdate::ActivePath(Some(active)),
    })
    .map_err(|_| anyhow!("command ring full"))?;
    ensure!(
        worker.apply_commands(16).installed == 1,
        "session not installed"
    );
    Ok((worker, tx))
}

// ---------------------------------------------------------------------------------------------
// Generator

/// What the generator publishes to the receiver: when it has finished, and how many it sent.
#[derive(Default)]
struct Shared {
    done: AtomicBool,
    sent: AtomicU64,
}

struct GenReport {
    sent: u64,
    seconds: f64,
    /// `sendmmsg` calls that failed with ENOBUFS/EAGAIN/EINTR and were retried.
    retries: u64,
    /// CPU time of the generator thread over its sending time (below 1: it waited).
    busy: f64,
}

/// Set an integer socket option.
fn set_int_opt(
    sock: &UdpSocket,
    level: libc::c_int,
    name: libc::c_int,
    v: libc::c_int,
) -> Result<()> {
    // SAFETY: `v` is a valid c_int that outlives the call, and its size is passed.
    let rc = unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            level,
            name,
            std::ptr::from_ref(&v).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    ensure!(
        rc == 0,
        "setsockopt({level}, {name}): {}",
        std::io::Error::last_os_error()
    );
    Ok(())
}

/// Datagrams per `sendmmsg` message: 1, or with UDP GSO as many as fit in one 64 KiB message
/// (the generator veth segments them in software, so receivers still get one packet each).
fn per_message(gso: bool, stride: usize) -> usize {
    if gso {
        (65_000 / stride).clamp(1, GSO_MAX_SEGMENTS)
    } else {
        1
    }
}

/// Send the whole pool from the generator namespace, pinned to [`GEN_CPU`], with `sendmmsg`
/// ([`BATCH`] messages per call; with `gso` each message carries several datagrams as one UDP
/// GSO send). With `wake`, send a few 1-byte datagrams after finishing, so a receiver blocked
/// in `run_once` notices the end.
fn generator(ns: &str, pool: &Pool, shared: &Shared, gso: bool, wake: bool) -> Result<GenReport> {
    enter_netns(ns)?;
    pin(GEN_CPU)?;
    let sock = UdpSocket::bind((GEN_ADDR, GEN_PORT)).context("generator socket")?;
    sock.connect((GW_ADDR, TUNNEL_PORT))?;
    // A send buffer large enough that the generator is never held back by datagrams still in
    // flight to a slow receiver: it sends at its own pace and the veth ring drops what the
    // receiver cannot take (reported as loss), so its rate shows what it could offer.
    set_int_opt(&sock, libc::SOL_SOCKET, libc::SO_SNDBUFFORCE, GEN_SNDBUF)?;
    let per_msg = per_message(gso, pool.stride);
    if per_msg > 1 {
        // Every datagram in the pool has the same length: the GSO segment size.
        let seg = libc::c_int::try_from(pool.stride)?;
        set_int_opt(&sock, libc::SOL_UDP, UDP_SEGMENT, seg)?;
    }
    // One iovec and one header per message, built before timing. The pointers stay valid:
    // `pool.data`, `iov` and `msgs` are neither moved nor resized until the sends are done.
    let mut iov: Vec<libc::iovec> = pool
        .data
        .chunks(pool.stride * per_msg)
        .map(|d| libc::iovec {
            iov_base: d.as_ptr().cast_mut().cast(),
            iov_len: d.len(),
        })
        .collect();
    let mut msgs: Vec<libc::mmsghdr> = iov
        .iter_mut()
        .map(|v| libc::mmsghdr {
            msg_hdr: libc::msghdr {
                msg_name: std::ptr::null_mut(),
                msg_namelen: 0,
                msg_iov: std::ptr::from_mut(v),
                msg_iovlen: 1,
                msg_control: std::ptr::null_mut(),
                msg_controllen: 0,
                msg_flags: 0,
            },
            msg_len: 0,
        })
        .collect();
    let fd = sock.as_raw_fd();
    let (mut next, mut retries) = (0usize, 0u64);
    let (start, cpu_start) = (Instant::now(), cpu_ns("thread-self"));
    while next < msgs.len() {
        let batch = &mut msgs[next..];
        let n = batch.len().min(BATCH) as libc::c_uint;
        // SAFETY: `batch` holds at least `n` initialised headers, each pointing at one iovec
        // in `iov` that points at datagrams inside `pool.data`; all outlive the call and the
        // kernel only reads the data (it writes `msg_len`, which we own).
        let rc = unsafe { libc::sendmmsg(fd, batch.as_mut_ptr(), n, 0) };
        if rc < 0 {
            let e = std::io::Error::last_os_error();
            match e.raw_os_error() {
                Some(libc::ENOBUFS | libc::EAGAIN | libc::EINTR) => {
                    retries += 1;
                    continue;
                }
                _ => return Err(e).context("sendmmsg"),
            }
        }
        next += usize::try_from(rc).unwrap_or(0);
    }
    let seconds = start.elapsed().as_secs_f64();
    let busy = cpu_ns("thread-self").saturating_sub(cpu_start) as f64 / 1e9 / seconds.max(1e-9);
    let sent = (next * per_msg).min(pool.data.len() / pool.stride) as u64;
    shared.sent.store(sent, Ordering::Release);
    shared.done.store(true, Ordering::Release);
    if wake {
        for _ in 0..3 {
            std::thread::sleep(Duration::from_millis(20));
            let _ = sock.send(&[0u8]);
        }
    }
    Ok(GenReport {
        sent,
        seconds,
        retries,
        busy,
    })
}

// ---------------------------------------------------------------------------------------------
// Receivers

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Case {
    /// (c) XDP → AF_XDP, no work.
    AfXdpRaw,
    /// (a) XDP → AF_XDP → worker (decrypt).
    AfXdpDecrypt,
    /// (b) kernel UDP → io_uring → worker (decrypt).
    Uring,
    /// (d) worker decrypt without I/O.
    AeadOpen,
}

impl Case {
    fn key(self) -> &'static str {
        match self {
            Case::AfXdpRaw => "afxdp_raw",
            Case::AfXdpDecrypt => "afxdp_decrypt",
            Case::Uring => "uring",
            Case::AeadOpen => "aead_open",
        }
    }

    fn label(self) -> &'static str {
        match self {
            Case::AfXdpRaw => "(c) XDP→AF_XDP receive, no work (I/O ceiling)",
            Case::AfXdpDecrypt => "(a) AF_XDP + decrypt",
            Case::Uring => "(b) io_uring + decrypt",
            Case::AeadOpen => "(d) AEAD open alone, no I/O (crypto ceiling)",
        }
    }
}

/// Counts and times what a receiver got, and the receiving core's busy share.
struct Meter {
    napi: Vec<u32>,
    count: u64,
    bytes: u64,
    first: Option<Instant>,
    last: Option<Instant>,
    cpu_at_first: u64,
    thread_at_first: u64,
    busy: Option<f64>,
    /// The receiver thread's own share of `busy` (the rest is the NAPI thread).
    thread_busy: Option<f64>,
    done_seen: Option<Instant>,
    deadline: Instant,
}

impl Meter {
    fn new(napi: Vec<u32>) -> Self {
        Self {
            napi,
            count: 0,
            bytes: 0,
            first: None,
            last: None,
            cpu_at_first: 0,
            thread_at_first: 0,
            busy: None,
            thread_busy: None,
            done_seen: None,
            deadline: Instant::now() + CASE_LIMIT,
        }
    }

    /// CPU time of this (receiver) thread plus the NAPI threads: the work on the receive core.
    fn rx_core_ns(&self) -> u64 {
        cpu_ns("thread-self")
            + self
                .napi
                .iter()
                .map(|p| cpu_ns(&p.to_string()))
                .sum::<u64>()
    }

    /// `n` packets (`bytes` in total) received just now.
    fn add(&mut self, n: u64, bytes: u64) {
        if n == 0 {
            return;
        }
        let now = Instant::now();
        if self.first.is_none() {
            self.first = Some(now);
            self.cpu_at_first = self.rx_core_ns();
            self.thread_at_first = cpu_ns("thread-self");
        }
        self.last = Some(now);
        self.count += n;
        self.bytes += bytes;
    }

    /// Called when the receive ring is empty: is the pass over?
    fn finished(&mut self, shared: &Shared) -> bool {
        let now = Instant::now();
        if now > self.deadline {
            return true;
        }
        if !shared.done.load(Ordering::Acquire) {
            return false;
        }
        let done_seen = match self.done_seen {
            Some(t) => t,
            None => {
                // First look after the generator's end: the receive core's busy share so far.
                if let Some(first) = self.first {
                    let cpu = self.rx_core_ns().saturating_sub(self.cpu_at_first);
                    let wall = now.duration_since(first).as_nanos().max(1);
                    self.busy = Some(cpu as f64 / wall as f64);
                    let own = cpu_ns("thread-self").saturating_sub(self.thread_at_first);
                    self.thread_busy = Some(own as f64 / wall as f64);
                }
                self.done_seen = Some(now);
                now
            }
        };
        let quiet_since = self.last.map_or(done_seen, |l| l.max(done_seen));
        self.count >= shared.sent.load(Ordering::Acquire)
            || now.duration_since(quiet_since) > IDLE_END
    }

    fn seconds(&self) -> f64 {
        match (self.first, self.last) {
            (Some(f), Some(l)) => l.duration_since(f).as_secs_f64(),
            _ => 0.0,
        }
    }
}

/// The receiver's side of the start protocol: it says `ready` once bound, then waits for `go`
/// (carrying the NAPI threads' pids, pinned by then).
struct Start {
    ready: mpsc::Sender<()>,
    go: mpsc::Receiver<Vec<u32>>,
}

struct RxReport {
    meter: Meter,
    detail: Value,
}

/// The AF_XDP receivers (c) and (a), in the gateway namespace, pinned to [`RX_CPU`].
fn xsk_receiver(
    ns: &str,
    case: Case,
    sid: SessionId,
    mut worker: Worker,
    now: jumping_protocol::Instant,
    shared: &Shared,
    start: &Start,
) -> Result<RxReport> {
    enter_netns(ns)?;
    pin(RX_CPU)?;
    // Drop order (reverse of declaration): socket, then program and maps, then bpffs.
    let mount = BpffsMount::new().context("mount a private bpffs")?;
    let mut ebpf = jumping_ebpf::load(mount.path()).context("load the XDP object")?;
    jumping_ebpf::add_tunnel_port(&mut ebpf, TUNNEL_PORT)?;
    jumping_ebpf::set_session_owner(&mut ebpf, sid, SessionOwner::new(0))?;
    let link = jumping_ebpf::xdp_program(&mut ebpf)?
        .attach(GW_DEV, XdpFlags::DRV_MODE)
        .context("attach XDP in native mode")?;
    let mut xsk = XskRx::bind(
        GW_DEV,
        0,
        XskConfig {
            force_copy: true,
            ..XskConfig::default()
        },
    )
    .context("bind the AF_XDP socket")?;
    jumping_ebpf::set_xsk(&mut ebpf, 0, xsk.fd())?;
    start.ready.send(()).context("main gone")?;
    let mut m = Meter::new(start.go.recv().context("main gone")?);

    loop {
        let frames = match case {
            Case::AfXdpRaw => {
                let n = xsk.poll(&mut |_, _| None);
                m.add(n as u64, 0);
                n
            }
            _ => {
                let (mut n, mut bytes) = (0u64, 0u64);
                let frames = xsk.poll_rx(&mut worker, now, &mut |_, packet| {
                    n += 1;
                    bytes += packet.len() as u64;
                });
                m.add(n, bytes);
                frames
            }
        };
        if frames == 0 {
            if m.finished(shared) {
                break;
            }
            // Sleep in poll(2) so the NAPI thread sharing this core can run.
            xsk.wait(5)?;
        }
    }

    let xdp = jumping_ebpf::read_counters(&ebpf)?;
    let xdp: serde_json::Map<String, Value> = jumping_ebpf::Counter::ALL
        .iter()
        .map(|c| (format!("{c:?}"), json!(xdp[c.index() as usize])))
        .filter(|(_, v)| v.as_u64() != Some(0))
        .collect();
    let detail = json!({
        "xsk": format!("{:?}", xsk.counters()),
        "xdp_counters": xdp,
        "worker": format!("{:?}", worker.counters()),
    });
    drop(xsk);
    jumping_ebpf::xdp_program(&mut ebpf)?.detach(link)?;
    drop(ebpf);
    drop(mount);
    Ok(RxReport { meter: m, detail })
}

/// The io_uring receiver (b), in the gateway namespace, pinned to [`RX_CPU`].
fn uring_receiver(
    ns: &str,
    mut worker: Worker,
    now: jumping_protocol::Instant,
    shared: &Shared,
    start: &Start,
) -> Result<RxReport> {
    enter_netns(ns)?;
    pin(RX_CPU)?;
    // The socket the data plane itself uses (SO_REUSEPORT group of one, 8 MiB receive buffer).
    let socket = bind_steered(SocketAddr::V4(SocketAddrV4::new(GW_ADDR, TUNNEL_PORT)), 1)?
        .pop()
        .context("no socket")?;
    let mut uring = UringUdp::new(socket).context("io_uring")?;
    start.ready.send(()).context("main gone")?;
    let mut m = Meter::new(start.go.recv().context("main gone")?);

    loop {
        let (mut n, mut bytes) = (0u64, 0u64);
        if shared.done.load(Ordering::Acquire) {
            // The generator is done: drain without blocking, so the end is noticed.
            uring.poll(false, &mut |from, buf| {
                if let Rx::Deliver { packet, .. } = worker.handle_rx(now, from, buf) {
                    n += 1;
                    bytes += packet.len() as u64;
                }
                None
            })?;
        } else {
            // Blocks until at least one datagram (the generator's last wake-up included).
            uring.run_once(&mut worker, now, &mut |_, packet| {
                n += 1;
                bytes += packet.len() as u64;
            })?;
        }
        m.add(n, bytes);
        if n == 0 && m.finished(shared) {
            break;
        }
        if n == 0 && shared.done.load(Ordering::Acquire) {
            std::thread::sleep(Duration::from_millis(1));
        }
    }
    let detail = json!({
        "uring": format!("{:?}", uring.counters()),
        "worker": format!("{:?}", worker.counters()),
    });
    Ok(RxReport { meter: m, detail })
}

// ---------------------------------------------------------------------------------------------
// One measurement

/// One row of the results.
struct Row {
    case: Case,
    inner: usize,
    pps: f64,
    seconds: f64,
    received: u64,
    sent: Option<u64>,
    gen_pps: Option<f64>,
    cpu1_busy: Option<f64>,
    detail: Value,
}

impl Row {
    fn gbps(&self) -> f64 {
        self.pps * (self.inner * 8) as f64 / 1e9
    }

    fn json(&self) -> Value {
        json!({
            "case": self.case.key(),
            "label": self.case.label(),
            "inner_bytes": self.inner,
            "packets_per_s": self.pps,
            "inner_gbit_per_s": self.gbps(),
            "seconds": self.seconds,
            "received": self.received,
            "sent": self.sent,
            "received_over_sent": self.sent.map(|s| self.received as f64 / s.max(1) as f64),
            "generator_packets_per_s": self.gen_pps,
            "rx_core_busy": self.cpu1_busy,
            "detail": self.detail,
        })
    }
}

/// Join a thread, turning a panic into an error.
fn join<T>(h: JoinHandle<Result<T>>, what: &str) -> Result<T> {
    h.join()
        .map_err(|p| anyhow!("{what} panicked: {p:?}"))?
        .with_context(|| what.to_string())
}

/// One I/O pass: a receiver of `case` gets ready, the NAPI thread is pinned, the generator
/// sends the pool.
fn io_case(
    topo: &Topology,
    case: Case,
    inner: usize,
    count: usize,
    seed: u64,
    gso: bool,
) -> Result<Row> {
    let (sim, sid, pool) = sealed_pool(seed, inner, count)?;
    let (worker, tx) = worker_for(&sim, sid)?;
    let now = sim.now;
    let shared = Arc::new(Shared::default());
    let (ready_tx, ready_rx) = mpsc::channel();
    let (go_tx, go_rx) = mpsc::channel();
    let receiver = {
        let (ns, shared) = (topo.gw.clone(), Arc::clone(&shared));
        let start = Start {
            ready: ready_tx,
            go: go_rx,
        };
        std::thread::spawn(move || {
            let _tx = tx; // keep the command ring open
            match case {
                Case::Uring => uring_receiver(&ns, worker, now, &shared, &start),
                _ => xsk_receiver(&ns, case, sid, worker, now, &shared, &start),
            }
        })
    };
    if ready_rx.recv_timeout(SETUP_LIMIT).is_err() {
        // The receiver failed (its error is returned here) or hung.
        join(receiver, "receiver")?;
        bail!("receiver finished without getting ready");
    }
    let napi = pin_napi_threads()?;
    let drops_before = topo.gen_tx_dropped();
    go_tx.send(napi).context("receiver gone")?;

    let gen = {
        let (ns, shared) = (topo.gen.clone(), Arc::clone(&shared));
        std::thread::spawn(move || generator(&ns, &pool, &shared, gso, case == Case::Uring))
    };
    let gen = join(gen, "generator");
    if gen.is_err() {
        // Let the receiver end on its own (deadline) rather than leave it waiting.
        shared.done.store(true, Ordering::Release);
    }
    let rx = join(receiver, "receiver")?;
    let gen = gen?;
    let veth_drops = match (drops_before, topo.gen_tx_dropped()) {
        (Some(a), Some(b)) => Some(b.saturating_sub(a)),
        _ => None,
    };
    let m = &rx.meter;
    let seconds = m.seconds();
    let mut detail = rx.detail;
    detail["generator_seconds"] = json!(gen.seconds);
    detail["generator_retries"] = json!(gen.retries);
    detail["generator_thread_busy"] = json!(gen.busy);
    detail["rx_thread_busy"] = json!(m.thread_busy);
    detail["veth_tx_dropped"] = json!(veth_drops);
    detail["inner_bytes_delivered"] = json!(m.bytes);
    Ok(Row {
        case,
        inner,
        pps: if seconds > 0.0 {
            m.count as f64 / seconds
        } else {
            0.0
        },
        seconds,
        received: m.count,
        sent: Some(gen.sent),
        gen_pps: Some(gen.sent as f64 / gen.seconds.max(1e-9)),
        cpu1_busy: m.busy,
        detail,
    })
}

/// (d) The crypto ceiling: the worker's receive processing over the pool, in place, without
/// I/O, pinned to [`RX_CPU`]; [`AEAD_PASSES`] passes, each on a fresh copy of the pool and a
/// fresh worker (so the replay window accepts every counter again). Copies are made untimed.
fn aead_case(inner: usize, count: usize, seed: u64) -> Result<Row> {
    let (sim, sid, pool) = sealed_pool(seed, inner, count)?;
    let workers = (0..AEAD_PASSES)
        .map(|_| worker_for(&sim, sid))
        .collect::<Result<Vec<_>>>()?;
    let now = sim.now;
    let from = Path::udp(SocketAddr::V4(SocketAddrV4::new(GEN_ADDR, GEN_PORT)));
    let h = std::thread::spawn(move || -> Result<(u64, f64)> {
        pin(RX_CPU)?;
        let (mut delivered, mut seconds) = (0u64, 0.0f64);
        for (mut worker, _tx) in workers {
            let mut data = pool.data.clone();
            let start = Instant::now();
            for d in data.chunks_exact_mut(pool.stride) {
                if let Rx::Deliver { .. } = worker.handle_rx(now, from, d) {
                    delivered += 1;
                }
            }
            seconds += start.elapsed().as_secs_f64();
        }
        Ok((delivered, seconds))
    });
    let (delivered, seconds) = join(h, "AEAD pass")?;
    ensure!(
        delivered == (count * AEAD_PASSES) as u64,
        "only {delivered} of {} opened",
        count * AEAD_PASSES
    );
    Ok(Row {
        case: Case::AeadOpen,
        inner,
        pps: delivered as f64 / seconds.max(1e-9),
        seconds,
        received: delivered,
        sent: None,
        gen_pps: None,
        cpu1_busy: None,
        detail: json!({ "passes": AEAD_PASSES, "packets_per_pass": count }),
    })
}

// ---------------------------------------------------------------------------------------------
// Report

fn find<'a>(rows: &[&'a Row], case: Case, inner: usize) -> Option<&'a Row> {
    rows.iter()
        .copied()
        .find(|r| r.case == case && r.inner == inner)
}

fn median(mut v: Vec<f64>) -> Option<f64> {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied()
}

/// Each (case, size)'s median run by packets/s, in first-seen order.
fn median_rows(rows: Vec<(usize, Row)>) -> Vec<Row> {
    let mut groups: Vec<Vec<Row>> = Vec::new();
    for (_, r) in rows {
        match groups
            .iter_mut()
            .find(|g| g[0].case == r.case && g[0].inner == r.inner)
        {
            Some(g) => g.push(r),
            None => groups.push(vec![r]),
        }
    }
    groups
        .into_iter()
        .map(|mut g| {
            g.sort_by(|a, b| a.pps.total_cmp(&b.pps));
            let mid = g.len() / 2;
            g.swap_remove(mid)
        })
        .collect()
}

/// (case, size) → (min, max) packets/s over the runs.
fn spreads(rows: &[(usize, Row)]) -> Vec<(Case, usize, f64, f64, usize)> {
    let mut out: Vec<(Case, usize, f64, f64, usize)> = Vec::new();
    for (_, r) in rows {
        match out
            .iter_mut()
            .find(|(c, i, ..)| *c == r.case && *i == r.inner)
        {
            Some(e) => {
                e.2 = e.2.min(r.pps);
                e.3 = e.3.max(r.pps);
                e.4 += 1;
            }
            None => out.push((r.case, r.inner, r.pps, r.pps, 1)),
        }
    }
    out
}

fn ratio(rows: &[&Row], num: Case, den: Case, inner: usize) -> Option<f64> {
    let (n, d) = (find(rows, num, inner)?, find(rows, den, inner)?);
    (d.pps > 0.0).then(|| n.pps / d.pps)
}

fn markdown(
    rows: &[Row],
    spread: &[(Case, usize, f64, f64, usize)],
    ratios: &[(String, Option<f64>)],
    env: &str,
) -> String {
    let mut md = format!(
        "## Data-plane receive throughput (namespaces, veth, one worker core)\n\n{env}\n\n\
         | inner | case | packets/s (median) | range over runs | inner Gbit/s | generator \
         packets/s | received/sent | rx core busy |\n|---:|---|---:|---:|---:|---:|---:|---:|\n"
    );
    for r in rows {
        let opt = |v: Option<String>| v.unwrap_or_else(|| "–".into());
        let range = spread
            .iter()
            .find(|(c, i, ..)| *c == r.case && *i == r.inner)
            .map_or_else(String::new, |(_, _, lo, hi, n)| {
                format!("{:.3}–{:.3} M ({n} runs)", lo / 1e6, hi / 1e6)
            });
        let _ = writeln!(
            md,
            "| {} B | {} | {:.3} M | {range} | {:.3} | {} | {} | {} |",
            r.inner,
            r.case.label(),
            r.pps / 1e6,
            r.gbps(),
            opt(r.gen_pps.map(|p| format!("{:.3} M", p / 1e6))),
            opt(r.sent.map(|s| format!(
                "{}/{} ({:.1} %)",
                r.received,
                s,
                100.0 * r.received as f64 / s.max(1) as f64
            ))),
            opt(r.cpu1_busy.map(|b| format!("{:.0} %", b * 100.0))),
        );
    }
    md.push_str("\nRatios (within each round, median over rounds):\n\n");
    for (name, v) in ratios {
        let _ = writeln!(
            md,
            "- {name}: {}",
            v.map_or_else(|| "–".into(), |v| format!("{:.1} %", v * 100.0))
        );
    }
    md.push_str(
        "\nReceiver rate = packets received / (last receive − first receive). Delivered inner \
         packets are counted, not written to a TUN device. `rx core busy` = CPU time of the \
         receiver thread + the veth NAPI thread (both on the receive core) over wall time while \
         the generator was sending; near 100 % means the receive core, not the generator, was \
         the limit. AEAD open: `Worker::handle_rx` (lookup, replay window, open in place) over \
         the pool, no I/O.\n",
    );
    md
}

fn arg(name: &str, default: usize) -> Result<usize> {
    let args: Vec<String> = std::env::args().collect();
    match args.iter().position(|a| a == name) {
        Some(i) => args
            .get(i + 1)
            .and_then(|v| v.parse().ok())
            .with_context(|| format!("{name} needs a number")),
        None => Ok(default),
    }
}

fn main() -> Result<()> {
    if !jumping_ebpf::test_run::is_root() {
        println!("netns-throughput: skipped: needs root (namespaces, XDP, AF_XDP)");
        return Ok(());
    }
    let counts = [
        arg("--packets-64", DEFAULT_PACKETS[0])?,
        arg("--packets-1400", DEFAULT_PACKETS[1])?,
    ];
    let gso = !std::env::args().any(|a| a == "--no-gso");
    // Each case runs `repeat` times, interleaved (a, b, c, d, a, b, ...) so slow drifts of the
    // shared machine hit every case alike; the tables show the median run and the spread.
    let repeat = arg("--repeat", 3)?.max(1);
    let cpus = std::thread::available_parallelism().map_or(1, usize::from);
    ensure!(
        cpus >= 2,
        "needs two CPUs (generator on {GEN_CPU}, receiver on {RX_CPU})"
    );

    let topo = Topology::new().context("creating the namespace topology")?;
    let mut rows = Vec::new();
    let mut seed = 1000;
    for (inner, count) in SIZES.into_iter().zip(counts) {
        for round in 0..repeat {
            for case in [
                Case::AfXdpRaw,
                Case::AfXdpDecrypt,
                Case::Uring,
                Case::AeadOpen,
            ] {
                seed += 1;
                eprintln!(
                    "netns-throughput: {inner} B, {}, {count} datagrams, run {} of {repeat}",
                    case.label(),
                    round + 1
                );
                let row = match case {
                    Case::AeadOpen => aead_case(inner, count, seed),
                    _ => io_case(&topo, case, inner, count, seed, gso),
                }
                .with_context(|| format!("{inner} B, {}", case.label()))?;
                eprintln!(
                    "netns-throughput:   {:.3} Mpps, {:.3} Gbit/s",
                    row.pps / 1e6,
                    row.gbps()
                );
                rows.push((round, row));
            }
        }
    }
    drop(topo);

    // Ratios are taken within each round (the two cases ran back to back), then the median
    // over rounds; the rows shown are each case's median run.
    let mut ratios = Vec::new();
    for inner in SIZES {
        for (name, num, den) in [
            (
                "(a) AF_XDP + decrypt / (c) raw AF_XDP receive",
                Case::AfXdpDecrypt,
                Case::AfXdpRaw,
            ),
            (
                "(b) io_uring + decrypt / (c) raw AF_XDP receive",
                Case::Uring,
                Case::AfXdpRaw,
            ),
            (
                "(a) AF_XDP + decrypt / (d) AEAD open alone",
                Case::AfXdpDecrypt,
                Case::AeadOpen,
            ),
        ] {
            let per_round: Vec<f64> = (0..repeat)
                .filter_map(|r| {
                    let round: Vec<&Row> = rows
                        .iter()
                        .filter(|(k, _)| *k == r)
                        .map(|(_, row)| row)
                        .collect();
                    ratio(&round, num, den, inner)
                })
                .collect();
            ratios.push((format!("{inner} B: {name}"), median(per_round)));
        }
    }
    let spread = spreads(&rows);
    let rows = median_rows(rows);
    let env = format!(
        "Kernel {}, {} CPUs ({}), git {}; generator on CPU {GEN_CPU}, receiver and NAPI thread \
         on CPU {RX_CPU}; AF_XDP in copy mode, XDP in native mode; generator: sendmmsg, {BATCH} \
         messages per call, {}.",
        sh("uname", &["-r"]),
        cpus,
        fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(|s| {
                s.lines()
                    .find(|l| l.starts_with("model name"))
                    .and_then(|l| l.split(':').nth(1))
                    .map(|m| m.trim().to_string())
            })
            .unwrap_or_default(),
        sh("git", &["rev-parse", "--short", "HEAD"]),
        if gso {
            format!(
                "UDP GSO ({} / {} datagrams per message at {} / {} B, segmented by the \
                 generator's veth)",
                per_message(true, DATA_HEADER_LEN + SIZES[0] + TAG_LEN),
                per_message(true, DATA_HEADER_LEN + SIZES[1] + TAG_LEN),
                SIZES[0],
                SIZES[1]
            )
        } else {
            "one datagram per message".to_string()
        },
    );
    let md = markdown(&rows, &spread, &ratios, &env);
    let out = json!({
        "environment": env,
        "generator_cpu": GEN_CPU,
        "receiver_cpu": RX_CPU,
        "repeat": repeat,
        "results": rows.iter().map(Row::json).collect::<Vec<_>>(),
        "ratios": ratios.iter().map(|(k, v)| json!({ "name": k, "value": v })).collect::<Vec<_>>(),
    });
    let dir = run_dir();
    fs::create_dir_all(&dir)?;
    fs::write(
        dir.join("dataplane-netns.json"),
        serde_json::to_string_pretty(&out)?,
    )?;
    fs::write(dir.join("dataplane-netns.md"), &md)?;
    println!("{md}");
    println!(
        "netns-throughput: written to {}",
        dir.join("dataplane-netns.{json,md}").display()
    );
    Ok(())
}
