//! The data plane as a process (`jumping-dataplane`), end to end in network namespaces, on
//! both backends: this test plays the control process over the control socket.
//!
//! Topology: a client namespace and a gateway namespace joined by a veth pair with two queues
//! each way. The data plane runs in the gateway namespace with two workers, its TUN device as
//! the inside interface; a UDP socket on the TUN's address plays the server behind the
//! gateway. A session is established by the protocol crate's client and gateway (in the
//! deterministic simulation) and installed into the data plane over the control socket with
//! the client's real address as its active path. Then:
//! - real encrypted packets from the client namespace reach the server as inner packets, and
//!   the server's replies come back sealed to the client's address and open to the same bytes;
//! - malformed, forged and replayed datagrams interleaved with valid ones are dropped and
//!   counted by reason (and reported as events), while the valid ones keep flowing;
//! - a packet from a new client address is reported as `NewPath` (NAT rebind);
//! - on AF_XDP, every packet is made to arrive on queue 1 (transmit-queue steering on the
//!   client side) although worker 0 owns the session: worker 1 hands each one over and only
//!   worker 0 opens them;
//! - the control connection is dropped and re-established (a control-process restart):
//!   forwarding never stops, and the new connection finds the session by listing;
//! - retiring the session stops its forwarding; SIGTERM stops the process cleanly, detaching
//!   XDP and removing the socket file.
//!
//! Needs root. Without root it prints `SKIPPED: needs root`; with
//! `JUMPING_REQUIRE_BPF_TESTS=1` (CI) it fails instead. Namespaces, the bpffs mount and the
//! process are removed on drop, also when the test fails.

mod support;
use support::{enter_netns, ip, skip_unless_root};

use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::process::{Child, Command as Proc, Stdio};
use std::time::{Duration, Instant as WallInstant};

use jumping_dataplane::control::{read_message, write_message};
use jumping_dataplane_api::{
    Backend, DropReason, Event, FromDataplane, Install, Stats, ToDataplane, WINDOW_WORDS,
};
use jumping_ebpf::test_run::BpffsMount;
use jumping_protocol::client::{ClientOutput, LocalPath};
use jumping_protocol::testing::Sim;
use jumping_protocol::wire::{DATA_HEADER_LEN, TAG_LEN};
use jumping_protocol::{Path, Policy, SessionId};

const TUNNEL_PORT: u16 = 51_820;
const CLIENT_PORT: u16 = 40_000;
const GW_ADDR: Ipv4Addr = Ipv4Addr::new(10, 78, 0, 1);
const CLIENT_ADDR: Ipv4Addr = Ipv4Addr::new(10, 78, 0, 2);
const GW_MAC: &str = "02:78:00:00:00:01";
const CLIENT_MAC: &str = "02:78:00:00:00:02";
const GW_DEV: &str = "jpgw0";
const CLIENT_DEV: &str = "jpcl0";
const TUN_DEV: &str = "jptun0";
const SERVER: (Ipv4Addr, u16) = (Ipv4Addr::new(10, 88, 0, 1), 9000);
const CLIENT_INNER: (Ipv4Addr, u16) = (Ipv4Addr::new(10, 88, 0, 2), 5555);
const PACKETS: u32 = 100;
const LIMIT: Duration = Duration::from_secs(10);

/// Namespaces, bpffs, temporary directory and the data-plane process; all removed on drop.
struct Topology {
    gw: String,
    client: String,
    dir: PathBuf,
    bpffs: Option<BpffsMount>,
    process: Option<Child>,
}

impl Topology {
    fn new(tag: &str) -> Self {
        let pid = std::process::id();
        let dir = std::env::temp_dir().join(format!("jumping-dp-{tag}-{pid}"));
        let me = Topology {
            gw: format!("jp-gw{tag}-{pid}"),
            client: format!("jp-cl{tag}-{pid}"),
            dir,
            bpffs: None,
            process: None,
        };
        std::fs::create_dir_all(&me.dir).expect("temporary directory");
        ip(&["netns", "add", &me.gw]);
        ip(&["netns", "add", &me.client]);
        ip(&[
            "link",
            "add",
            "name",
            GW_DEV,
            "address",
            GW_MAC,
            "numtxqueues",
            "2",
            "numrxqueues",
            "2",
            "netns",
            &me.gw,
            "type",
            "veth",
            "peer",
            "name",
            CLIENT_DEV,
            "address",
            CLIENT_MAC,
            "numtxqueues",
            "2",
            "numrxqueues",
            "2",
            "netns",
            &me.client,
        ]);
        for (ns, dev, addr) in [
            (&me.gw, GW_DEV, GW_ADDR),
            (&me.client, CLIENT_DEV, CLIENT_ADDR),
        ] {
            ip(&["-n", ns, "addr", "add", &format!("{addr}/24"), "dev", dev]);
            ip(&["-n", ns, "link", "set", "dev", dev, "up"]);
            ip(&["-n", ns, "link", "set", "dev", "lo", "up"]);
        }
        // Unicast IP in a broadcast frame is dropped by the client, so a gateway that sends to
        // ff:ff:ff:ff:ff:ff because it never learnt its next hop fails the test.
        let out = Proc::new("ip")
            .args(["netns", "exec", &me.client, "sysctl", "-qw"])
            .arg("net.ipv4.conf.all.drop_unicast_in_l2_multicast=1")
            .output()
            .expect("sysctl");
        assert!(
            out.status.success(),
            "sysctl: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        for (ns, addr, mac, dev) in [
            (&me.client, GW_ADDR, GW_MAC, CLIENT_DEV),
            (&me.gw, CLIENT_ADDR, CLIENT_MAC, GW_DEV),
        ] {
            ip(&[
                "-n",
                ns,
                "neigh",
                "replace",
                &addr.to_string(),
                "lladdr",
                mac,
                "dev",
                dev,
                "nud",
                "permanent",
            ]);
        }
        me
    }

    fn socket(&self) -> PathBuf {
        self.dir.join("dataplane.sock")
    }

    /// Start the data plane in the gateway namespace.
    fn start(&mut self, backend: &str) {
        // One bpffs for the topology's life, so a restart finds the pinned maps.
        let bpffs = match self.bpffs.take() {
            Some(b) => b,
            None => BpffsMount::new().expect("mount a bpffs"),
        };
        let config = format!(
            "backend = \"{backend}\"\ninterface = \"{GW_DEV}\"\nlisten = \"{GW_ADDR}:{TUNNEL_PORT}\"\n\
             cpus = [0, 1]\nsession_capacity = 1024\ncontrol_socket = \"{}\"\n\
             bpf_pin_dir = \"{}\"\n[inside]\ntun = \"{TUN_DEV}\"\n[af_xdp]\nframes = 1024\n\
             ring_size = 512\n",
            self.socket().display(),
            bpffs.path().join("jumping").display(),
        );
        self.bpffs = Some(bpffs);
        let config_path = self.dir.join("dataplane.toml");
        std::fs::write(&config_path, config).expect("write configuration");
        let log = std::fs::File::create(self.dir.join("dataplane.log")).expect("log file");
        let child = Proc::new("ip")
            .args(["netns", "exec", &self.gw])
            .arg(env!("CARGO_BIN_EXE_jumping-dataplane"))
            .arg("--config")
            .arg(&config_path)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start jumping-dataplane");
        self.process = Some(child);
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("dataplane.log")).unwrap_or_default()
    }

    /// Send SIGTERM and wait for a clean exit.
    fn stop(&mut self) -> std::process::ExitStatus {
        let mut child = self.process.take().expect("running");
        let pid = i32::try_from(child.id()).expect("pid");
        // SAFETY: plain kill(2) on our own child.
        unsafe { libc::kill(pid, libc::SIGTERM) };
        let deadline = WallInstant::now() + LIMIT;
        loop {
            if let Some(status) = child.try_wait().expect("wait") {
                return status;
            }
            assert!(
                WallInstant::now() < deadline,
                "no exit after SIGTERM:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        if let Some(mut c) = self.process.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        for ns in [&self.gw, &self.client] {
            let _ = Proc::new("ip").args(["netns", "del", ns]).output();
        }
        self.bpffs = None;
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A socket created in a namespace (it stays there whatever thread uses it).
fn udp_in(ns: &str, addr: SocketAddr) -> UdpSocket {
    let ns = ns.to_owned();
    std::thread::spawn(move || {
        enter_netns(&ns);
        let s = UdpSocket::bind(addr).expect("bind");
        s.set_read_timeout(Some(Duration::from_millis(200)))
            .expect("timeout");
        s
    })
    .join()
    .expect("socket thread")
}

/// The test's end of the control socket.
struct Control {
    stream: UnixStream,
    seq: u32,
    events: Vec<Event>,
}

impl Control {
    fn connect(path: &std::path::Path) -> Self {
        let deadline = WallInstant::now() + LIMIT;
        let stream = loop {
            if let Ok(s) = UnixStream::connect(path) {
                break s;
            }
            assert!(
                WallInstant::now() < deadline,
                "control socket never appeared"
            );
            std::thread::sleep(Duration::from_millis(50));
        };
        stream
            .set_read_timeout(Some(Duration::from_millis(200)))
            .expect("timeout");
        Control {
            stream,
            seq: 0,
            events: Vec::new(),
        }
    }

    fn next(&mut self) -> Option<(u32, FromDataplane)> {
        match read_message(&mut self.stream) {
            Ok(m) => {
                let (h, msg) = FromDataplane::decode(&m).expect("decodes");
                Some((h.seq, msg))
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                None
            }
            Err(e) => panic!("control socket: {e}"),
        }
    }

    /// Send a request and return its answers (several for a listing); events are kept.
    fn request(&mut self, req: &ToDataplane) -> Vec<FromDataplane> {
        self.seq += 1;
        let seq = self.seq;
        write_message(&mut self.stream, &req.encode(seq)).expect("send");
        let deadline = WallInstant::now() + LIMIT;
        let mut answers = Vec::new();
        loop {
            assert!(WallInstant::now() < deadline, "no answer to {req:?}");
            let Some((s, msg)) = self.next() else {
                continue;
            };
            match msg {
                FromDataplane::Event(e) => self.events.push(e),
                FromDataplane::ControlDatagram { .. } => {}
                m if s == seq => {
                    let more = matches!(m, FromDataplane::Sessions { more: true, .. });
                    answers.push(m);
                    if !more {
                        return answers;
                    }
                }
                m => panic!("answer to another request: {m:?}"),
            }
        }
    }

    fn one(&mut self, req: &ToDataplane) -> FromDataplane {
        let mut a = self.request(req);
        assert_eq!(a.len(), 1, "{a:?}");
        a.remove(0)
    }

    fn stats(&mut self) -> Stats {
        match self.one(&ToDataplane::Stats) {
            FromDataplane::Stats(s) => s,
            other => panic!("{other:?}"),
        }
    }

    /// The counters once `ready` holds for them (or the last ones after the time limit).
    fn stats_when(&mut self, ready: impl Fn(&Stats) -> bool) -> Stats {
        let deadline = WallInstant::now() + LIMIT;
        loop {
            let s = self.stats();
            if ready(&s) || WallInstant::now() > deadline {
                return s;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Collect events for up to `d`.
    fn drain_events(&mut self, d: Duration) {
        let deadline = WallInstant::now() + d;
        while WallInstant::now() < deadline {
            if let Some((_, FromDataplane::Event(e))) = self.next() {
                self.events.push(e);
            }
        }
    }
}

fn ipv4_checksum(header: &[u8]) -> u16 {
    let mut sum: u32 = header
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], c[1]])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

fn ipv4_udp(src: (Ipv4Addr, u16), dst: (Ipv4Addr, u16), data: &[u8]) -> Vec<u8> {
    let total = 28 + data.len();
    let mut p = vec![0x45, 0];
    p.extend_from_slice(&u16::try_from(total).expect("fits").to_be_bytes());
    p.extend_from_slice(&[0, 1, 0x40, 0, 64, 17, 0, 0]);
    p.extend_from_slice(&src.0.octets());
    p.extend_from_slice(&dst.0.octets());
    let c = ipv4_checksum(&p);
    p[10..12].copy_from_slice(&c.to_be_bytes());
    p.extend_from_slice(&src.1.to_be_bytes());
    p.extend_from_slice(&dst.1.to_be_bytes());
    p.extend_from_slice(&u16::try_from(8 + data.len()).expect("fits").to_be_bytes());
    p.extend_from_slice(&[0, 0]);
    p.extend_from_slice(data);
    p
}

fn payload(tag: &str, i: u32) -> Vec<u8> {
    format!("{tag} {i:05} through the data plane").into_bytes()
}

/// A sealed data datagram from the simulated client carrying an inner packet to the server.
fn sealed(sim: &mut Sim, data: &[u8]) -> Vec<u8> {
    let inner = ipv4_udp(CLIENT_INNER, SERVER, data);
    let mut buf = vec![0u8; DATA_HEADER_LEN + inner.len() + TAG_LEN];
    buf[DATA_HEADER_LEN..DATA_HEADER_LEN + inner.len()].copy_from_slice(&inner);
    let (_, len) = sim
        .client
        .encapsulate(sim.now, &mut buf, inner.len())
        .expect("established");
    buf.truncate(len);
    buf
}

/// The session's install message, with the client's real address as the active path.
fn install(sim: &Sim, sid: SessionId) -> ToDataplane {
    let h = sim.session(sid).handoff();
    let (window_top, window) = h.recv_window.to_parts();
    let _: [u64; WINDOW_WORDS] = window;
    ToDataplane::Install(Box::new(Install {
        id: sid,
        owner: jumping_dataplane::runtime::owner_of(sid),
        inner: CLIENT_INNER.0.into(),
        keys: h.keys.export(sim.now),
        send_counter: h.send_counter,
        window_top,
        window,
        active: Some(Path::udp(SocketAddr::from((CLIENT_ADDR, CLIENT_PORT)))),
    }))
}

/// Receive `n` datagrams on `sock` whose payloads are `payload(tag, 0..n)`, each once.
fn expect_payloads(
    sock: &UdpSocket,
    tag: &str,
    n: u32,
    mut open: impl FnMut(&mut [u8]) -> Vec<u8>,
) {
    let mut seen = vec![0u32; n as usize];
    let deadline = WallInstant::now() + LIMIT;
    let mut buf = [0u8; 2048];
    let mut got = 0;
    while got < n {
        assert!(
            WallInstant::now() < deadline,
            "{tag}: {got} of {n} arrived: {seen:?}"
        );
        let Ok((len, _)) = sock.recv_from(&mut buf) else {
            continue;
        };
        let data = open(&mut buf[..len]);
        let text = String::from_utf8_lossy(&data).into_owned();
        let Some(i) = text
            .strip_prefix(tag)
            .and_then(|r| r.trim().get(..5))
            .and_then(|d| d.parse::<usize>().ok())
        else {
            panic!("{tag}: unexpected datagram {text:?}");
        };
        assert_eq!(data, payload(tag, i as u32));
        seen[i] += 1;
        got += 1;
    }
    assert!(seen.iter().all(|&c| c == 1), "{tag}: {seen:?}");
}

fn total(stats: &Stats, f: impl Fn(&jumping_dataplane_api::WorkerStats) -> u64) -> u64 {
    stats.workers.iter().map(f).sum()
}

fn run(backend: &str, tag: &str) {
    let mut topo = Topology::new(tag);
    if backend == "af_xdp" {
        // Every client packet leaves on transmit queue 1, so it arrives on the gateway's
        // receive queue 1, served by worker 1, while worker 0 owns the session.
        let ns = &topo.client;
        let out = Proc::new("ip")
            .args(["netns", "exec", ns, "sh", "-c"])
            .arg(format!(
                "echo 0 > /sys/class/net/{CLIENT_DEV}/queues/tx-0/xps_cpus && \
                 echo 3 > /sys/class/net/{CLIENT_DEV}/queues/tx-1/xps_cpus"
            ))
            .output()
            .expect("sh");
        assert!(
            out.status.success(),
            "xps: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    topo.start(backend);
    let mut ctl = Control::connect(&topo.socket());
    let want = if backend == "af_xdp" {
        Backend::AfXdp
    } else {
        Backend::IoUring
    };
    match ctl.one(&ToDataplane::Hello) {
        FromDataplane::HelloAck {
            workers,
            backend,
            sessions,
        } => assert_eq!((workers, backend, sessions), (2, want, 0), "{}", topo.log()),
        other => panic!("{other:?}"),
    }
    ip(&[
        "-n",
        &topo.gw,
        "addr",
        "add",
        "10.88.0.1/24",
        "dev",
        TUN_DEV,
    ]);
    ip(&["-n", &topo.gw, "link", "set", "dev", TUN_DEV, "up"]);
    let server = udp_in(&topo.gw, SocketAddr::from(SERVER));
    let client = udp_in(&topo.client, SocketAddr::from((CLIENT_ADDR, CLIENT_PORT)));
    let gw = SocketAddr::from((GW_ADDR, TUNNEL_PORT));

    let mut sim = Sim::new(31, Policy::default());
    let sid = sim.connect();
    assert_eq!(jumping_dataplane::runtime::owner_of(sid), 0);
    assert_eq!(ctl.one(&install(&sim, sid)), FromDataplane::Done);
    assert_eq!(
        ctl.one(&install(&sim, sid)),
        FromDataplane::Refused(jumping_dataplane_api::Refusal::Exists)
    );

    // Client → gateway → server, with bad datagrams interleaved.
    let mut replay: Option<Vec<u8>> = None;
    let (mut forged, mut replays, mut malformed) = (0u64, 0u64, 0u64);
    for i in 0..PACKETS {
        let d = sealed(&mut sim, &payload("up", i));
        client.send_to(&d, gw).expect("send");
        if i % 10 == 3 {
            // A fresh counter (never sent valid) with a corrupted tag.
            let mut f = sealed(&mut sim, &payload("forged", i));
            let last = f.len() - 1;
            f[last] ^= 1;
            client.send_to(&f, gw).expect("send");
            forged += 1;
        }
        if i % 10 == 5 {
            if let Some(r) = &replay {
                client.send_to(r, gw).expect("send");
                replays += 1;
            }
            replay = Some(d.clone());
        }
        if i % 10 == 7 && backend == "io_uring" {
            // On AF_XDP the XDP program drops these before any worker (its own counters).
            client.send_to(&d[..30], gw).expect("send");
            malformed += 1;
        }
    }
    expect_payloads(&server, "up", PACKETS, |b| b.to_vec());

    // Server → gateway → client.
    for i in 0..PACKETS {
        server
            .send_to(&payload("down", i), SocketAddr::from(CLIENT_INNER))
            .expect("send");
    }
    expect_payloads(&client, "down", PACKETS, |b| {
        match sim.client.handle_datagram(sim.now, LocalPath(0), b) {
            ClientOutput::Deliver(p) => p[28..].to_vec(),
            other => panic!("client refused the gateway's packet: {other:?}"),
        }
    });

    // Counters are published by the workers within a millisecond or so of their work.
    let s = ctl.stats_when(|s| total(s, |w| w.sent) >= u64::from(PACKETS));
    assert_eq!(s.backend, want);
    assert_eq!(
        total(&s, |w| w.drops[DropReason::AuthFailed.index()]),
        forged,
        "{s:?}"
    );
    assert_eq!(
        total(&s, |w| w.drops[DropReason::Replay.index()]),
        replays,
        "{s:?}"
    );
    assert_eq!(
        total(&s, |w| w.drops[DropReason::Malformed.index()]),
        malformed,
        "{s:?}"
    );
    // Only the owner opened packets and sealed replies.
    assert_eq!(s.workers[0].delivered, u64::from(PACKETS), "{s:?}");
    assert_eq!(s.workers[0].sent, u64::from(PACKETS), "{s:?}");
    assert_eq!(s.workers[1].sent, 0, "{s:?}");
    assert!(
        total(&s, |w| w.inside_packets) >= u64::from(PACKETS),
        "{s:?}"
    );
    assert_eq!(s.workers[1].delivered, 0, "{s:?}");
    if backend == "af_xdp" {
        let arrived = u64::from(PACKETS) + forged + replays;
        assert_eq!(s.workers[1].handed_off, arrived, "{s:?}");
        assert_eq!(s.workers[0].taken_over, arrived, "{s:?}");
    }
    ctl.drain_events(Duration::from_millis(1500));
    let reported = |ctl: &Control, reason| {
        ctl.events
            .iter()
            .filter_map(|e| match e {
                Event::Drops {
                    id,
                    reason: r,
                    count,
                } if *id == sid && *r == reason => Some(u64::from(*count)),
                _ => None,
            })
            .sum::<u64>()
    };
    assert_eq!(
        reported(&ctl, DropReason::AuthFailed),
        forged,
        "{:?}",
        ctl.events
    );
    assert_eq!(
        reported(&ctl, DropReason::Replay),
        replays,
        "{:?}",
        ctl.events
    );

    // A packet from a new client address (NAT rebind) is delivered and reported.
    let moved = udp_in(
        &topo.client,
        SocketAddr::from((CLIENT_ADDR, CLIENT_PORT + 1)),
    );
    moved
        .send_to(&sealed(&mut sim, &payload("moved", 0)), gw)
        .expect("send");
    expect_payloads(&server, "moved", 1, |b| b.to_vec());
    ctl.drain_events(Duration::from_millis(300));
    let new_path = Path::udp(SocketAddr::from((CLIENT_ADDR, CLIENT_PORT + 1)));
    assert!(
        ctl.events.contains(&Event::NewPath {
            id: sid,
            path: new_path
        }),
        "{:?}",
        ctl.events
    );

    // The control process goes away: forwarding continues; a new one resynchronises.
    drop(ctl);
    for i in 0..10 {
        client
            .send_to(&sealed(&mut sim, &payload("alone", i)), gw)
            .expect("send");
    }
    expect_payloads(&server, "alone", 10, |b| b.to_vec());
    let mut ctl = Control::connect(&topo.socket());
    match ctl.one(&ToDataplane::Hello) {
        FromDataplane::HelloAck { sessions, .. } => assert_eq!(sessions, 1),
        other => panic!("{other:?}"),
    }
    let listed: Vec<_> = ctl
        .request(&ToDataplane::ListSessions)
        .into_iter()
        .flat_map(|m| match m {
            FromDataplane::Sessions { sessions, .. } => sessions,
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!((listed[0].id, listed[0].owner), (sid, 0));
    assert_eq!(listed[0].rx_packets, u64::from(PACKETS) + 11);
    assert_eq!(listed[0].tx_packets, u64::from(PACKETS));

    // Retired: no longer forwarded, counted as unknown.
    assert_eq!(
        ctl.one(&ToDataplane::Retire { id: sid }),
        FromDataplane::Done
    );
    assert_eq!(
        ctl.one(&ToDataplane::Retire { id: sid }),
        FromDataplane::Refused(jumping_dataplane_api::Refusal::UnknownSession)
    );
    std::thread::sleep(Duration::from_millis(50));
    let unknown = |s: &Stats| total(s, |w| w.drops[DropReason::UnknownSession.index()]);
    let before = unknown(&ctl.stats());
    client
        .send_to(&sealed(&mut sim, &payload("late", 0)), gw)
        .expect("send");
    let mut buf = [0u8; 2048];
    assert!(
        server.recv_from(&mut buf).is_err(),
        "a retired session was forwarded"
    );
    let after = unknown(&ctl.stats_when(|s| unknown(s) > before));
    assert_eq!(after, before + 1);

    // Clean stop: exit 0, XDP detached, socket file gone.
    drop(ctl);
    let status = topo.stop();
    assert!(status.success(), "exit {status:?}:\n{}", topo.log());
    let link = Proc::new("ip")
        .args(["-n", &topo.gw, "link", "show", "dev", GW_DEV])
        .output()
        .expect("ip link");
    let link = String::from_utf8_lossy(&link.stdout);
    assert!(!link.contains("xdp"), "XDP still attached: {link}");
    assert!(!topo.socket().exists(), "control socket file left behind");

    // A crash (SIGKILL: no clean-up at all) leaves nothing that blocks a restart: the XDP
    // link dies with the process, the stale socket file is replaced, pinned maps are reused.
    topo.start(backend);
    let mut ctl = Control::connect(&topo.socket());
    assert!(matches!(
        ctl.one(&ToDataplane::Hello),
        FromDataplane::HelloAck { .. }
    ));
    let mut crashed = topo.process.take().expect("running");
    crashed.kill().expect("SIGKILL");
    crashed.wait().expect("reaped");
    drop(ctl);
    assert!(
        topo.socket().exists(),
        "a crash leaves the socket file (the restart must cope)"
    );
    topo.start(backend);
    let mut ctl = Control::connect(&topo.socket());
    match ctl.one(&ToDataplane::Hello) {
        FromDataplane::HelloAck { sessions, .. } => assert_eq!(sessions, 0),
        other => panic!("{other:?}"),
    }
    ip(&[
        "-n",
        &topo.gw,
        "addr",
        "add",
        "10.88.0.1/24",
        "dev",
        TUN_DEV,
    ]);
    ip(&["-n", &topo.gw, "link", "set", "dev", TUN_DEV, "up"]);
    let mut sim = Sim::new(32, Policy::default());
    let sid = sim.connect();
    assert_eq!(ctl.one(&install(&sim, sid)), FromDataplane::Done);
    for i in 0..10 {
        client
            .send_to(&sealed(&mut sim, &payload("again", i)), gw)
            .expect("send");
    }
    expect_payloads(&server, "again", 10, |b| b.to_vec());
    drop(ctl);
    assert!(topo.stop().success(), "{}", topo.log());
}

#[test]
fn af_xdp_backend_forwards_both_ways_and_hands_foreign_queue_packets_to_the_owner() {
    if skip_unless_root() {
        return;
    }
    run("af_xdp", "x");
}

#[test]
fn io_uring_backend_forwards_both_ways() {
    if skip_unless_root() {
        return;
    }
    run("io_uring", "u");
}
