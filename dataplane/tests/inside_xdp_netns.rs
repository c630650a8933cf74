//! The data plane as a process with an AF_XDP inside NIC (`[inside] kind = "af_xdp"`), end to
//! end in three network namespaces: this test plays the control process over the control
//! socket, as `process_netns.rs` does.
//!
//! Topology: client ⇄ gateway ⇄ server. The client and the gateway are joined by a veth pair
//! (the outside, AF_XDP backend); the gateway and the server by a second veth pair (the
//! inside NIC: the gateway's end carries the inside XDP program and one AF_XDP socket per
//! worker). Both pairs have two queues each way and the data plane runs two workers. The
//! server routes the client subnet 10.88.0.0/24 via the gateway's inside address, with a
//! static neighbour entry; its transmit checksum offload is off so its UDP checksums are real
//! when its frames are redirected into AF_XDP. A session is established by the protocol
//! crate's client and gateway (in the deterministic simulation) and installed over the
//! control socket. Then:
//! - real sealed packets from the client namespace arrive at the server's UDP socket, sent
//!   inside as Ethernet frames to the next hop (configured, or in the second test learnt from
//!   received inside frames: there the server speaks first);
//! - the server's replies to the client's inner address are steered into the data plane by
//!   the inside XDP program (the install programmed `inside_routes`), sealed, and open at the
//!   client to the same bytes;
//! - after the session is retired its address leaves `inside_routes`: the server's packets to
//!   it go to the gateway's kernel, not the data plane;
//! - SIGTERM stops the process cleanly, both XDP programs detached.
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
    Backend, FromDataplane, Install, Stats, ToDataplane, WorkerStats, WINDOW_WORDS,
};
use jumping_ebpf::test_run::BpffsMount;
use jumping_protocol::client::{ClientOutput, LocalPath};
use jumping_protocol::testing::Sim;
use jumping_protocol::wire::{DATA_HEADER_LEN, TAG_LEN};
use jumping_protocol::{Path, Policy, SessionId};

const TUNNEL_PORT: u16 = 51_820;
const CLIENT_PORT: u16 = 40_000;
const GW_ADDR: Ipv4Addr = Ipv4Addr::new(10, 79, 0, 1);
const CLIENT_ADDR: Ipv4Addr = Ipv4Addr::new(10, 79, 0, 2);
const GW_MAC: &str = "02:79:00:00:00:01";
const CLIENT_MAC: &str = "02:79:00:00:00:02";
const GW_DEV: &str = "jxgw0";
const CLIENT_DEV: &str = "jxcl0";
const INSIDE_ADDR: Ipv4Addr = Ipv4Addr::new(10, 89, 0, 1);
const SERVER_ADDR: Ipv4Addr = Ipv4Addr::new(10, 89, 0, 2);
const INSIDE_MAC: &str = "02:89:00:00:00:01";
const SERVER_MAC: &str = "02:89:00:00:00:02";
const INSIDE_DEV: &str = "jxin0";
const SERVER_DEV: &str = "jxsv0";
const SERVER: (Ipv4Addr, u16) = (SERVER_ADDR, 9000);
const CLIENT_INNER: (Ipv4Addr, u16) = (Ipv4Addr::new(10, 88, 0, 2), 5555);
const PACKETS: u32 = 100;
const LIMIT: Duration = Duration::from_secs(10);

/// Namespaces, bpffs, temporary directory and the data-plane process; all removed on drop.
struct Topology {
    gw: String,
    client: String,
    server: String,
    dir: PathBuf,
    bpffs: Option<BpffsMount>,
    process: Option<Child>,
}

fn veth_pair(a: (&str, &str, &str), b: (&str, &str, &str)) {
    let (a_dev, a_mac, a_ns) = a;
    let (b_dev, b_mac, b_ns) = b;
    ip(&[
        "link",
        "add",
        "name",
        a_dev,
        "address",
        a_mac,
        "numtxqueues",
        "2",
        "numrxqueues",
        "2",
        "netns",
        a_ns,
        "type",
        "veth",
        "peer",
        "name",
        b_dev,
        "address",
        b_mac,
        "numtxqueues",
        "2",
        "numrxqueues",
        "2",
        "netns",
        b_ns,
    ]);
}

fn neigh(ns: &str, addr: Ipv4Addr, mac: &str, dev: &str) {
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

impl Topology {
    fn new(tag: &str) -> Self {
        let pid = std::process::id();
        let dir = std::env::temp_dir().join(format!("jumping-dp-inside{tag}-{pid}"));
        let me = Topology {
            gw: format!("jx-gw{tag}-{pid}"),
            client: format!("jx-cl{tag}-{pid}"),
            server: format!("jx-sv{tag}-{pid}"),
            dir,
            bpffs: None,
            process: None,
        };
        std::fs::create_dir_all(&me.dir).expect("temporary directory");
        for ns in [&me.gw, &me.client, &me.server] {
            ip(&["netns", "add", ns]);
        }
        veth_pair(
            (GW_DEV, GW_MAC, &me.gw),
            (CLIENT_DEV, CLIENT_MAC, &me.client),
        );
        veth_pair(
            (INSIDE_DEV, INSIDE_MAC, &me.gw),
            (SERVER_DEV, SERVER_MAC, &me.server),
        );
        for (ns, dev, addr) in [
            (&me.gw, GW_DEV, GW_ADDR),
            (&me.client, CLIENT_DEV, CLIENT_ADDR),
            (&me.gw, INSIDE_DEV, INSIDE_ADDR),
            (&me.server, SERVER_DEV, SERVER_ADDR),
        ] {
            ip(&["-n", ns, "addr", "add", &format!("{addr}/24"), "dev", dev]);
            ip(&["-n", ns, "link", "set", "dev", dev, "up"]);
            ip(&["-n", ns, "link", "set", "dev", "lo", "up"]);
        }
        neigh(&me.client, GW_ADDR, GW_MAC, CLIENT_DEV);
        neigh(&me.gw, CLIENT_ADDR, CLIENT_MAC, GW_DEV);
        neigh(&me.server, INSIDE_ADDR, INSIDE_MAC, SERVER_DEV);
        neigh(&me.gw, SERVER_ADDR, SERVER_MAC, INSIDE_DEV);
        ip(&[
            "-n",
            &me.server,
            "route",
            "add",
            "10.88.0.0/24",
            "via",
            &INSIDE_ADDR.to_string(),
            "dev",
            SERVER_DEV,
        ]);
        // Unicast IP in a broadcast frame is dropped by the server, so a gateway that sends to
        // ff:ff:ff:ff:ff:ff because it never learnt its inside next hop fails the test.
        let out = Proc::new("ip")
            .args(["netns", "exec", &me.server, "sysctl", "-qw"])
            .arg("net.ipv4.conf.all.drop_unicast_in_l2_multicast=1")
            .output()
            .expect("sysctl");
        assert!(
            out.status.success(),
            "sysctl: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        // The server's frames reach AF_XDP as they are: make its UDP checksums real.
        let out = Proc::new("ip")
            .args([
                "netns", "exec", &me.server, "ethtool", "-K", SERVER_DEV, "tx", "off",
            ])
            .output()
            .expect("ethtool");
        assert!(
            out.status.success(),
            "ethtool: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        me
    }

    fn socket(&self) -> PathBuf {
        self.dir.join("dataplane.sock")
    }

    /// Start the data plane in the gateway namespace: AF_XDP outside and inside.
    fn start(&mut self, next_hop_mac: &str) {
        let bpffs = match self.bpffs.take() {
            Some(b) => b,
            None => BpffsMount::new().expect("mount a bpffs"),
        };
        let config = format!(
            "backend = \"af_xdp\"\ninterface = \"{GW_DEV}\"\nlisten = \"{GW_ADDR}:{TUNNEL_PORT}\"\n\
             cpus = [0, 1]\nsession_capacity = 1024\ncontrol_socket = \"{}\"\n\
             bpf_pin_dir = \"{}\"\n[inside]\nkind = \"af_xdp\"\ninterface = \"{INSIDE_DEV}\"\n\
             next_hop_mac = \"{next_hop_mac}\"\n[af_xdp]\nframes = 1024\nring_size = 512\n",
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
        for ns in [&self.gw, &self.client, &self.server] {
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

/// The test's end of the control socket (events are ignored here).
struct Control {
    stream: UnixStream,
    seq: u32,
}

impl Control {
    fn connect(path: &std::path::Path, topo: &Topology) -> Self {
        let deadline = WallInstant::now() + LIMIT;
        let stream = loop {
            if let Ok(s) = UnixStream::connect(path) {
                break s;
            }
            assert!(
                WallInstant::now() < deadline,
                "control socket never appeared:\n{}",
                topo.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        };
        stream
            .set_read_timeout(Some(Duration::from_millis(200)))
            .expect("timeout");
        Control { stream, seq: 0 }
    }

    fn one(&mut self, req: &ToDataplane) -> FromDataplane {
        self.seq += 1;
        let seq = self.seq;
        write_message(&mut self.stream, &req.encode(seq)).expect("send");
        let deadline = WallInstant::now() + LIMIT;
        loop {
            assert!(WallInstant::now() < deadline, "no answer to {req:?}");
            let m = match read_message(&mut self.stream) {
                Ok(m) => m,
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    continue
                }
                Err(e) => panic!("control socket: {e}"),
            };
            let (h, msg) = FromDataplane::decode(&m).expect("decodes");
            match msg {
                FromDataplane::Event(_) | FromDataplane::ControlDatagram { .. } => {}
                m if h.seq == seq => return m,
                m => panic!("answer to another request: {m:?}"),
            }
        }
    }

    fn stats(&mut self) -> Stats {
        match self.one(&ToDataplane::Stats) {
            FromDataplane::Stats(s) => s,
            other => panic!("{other:?}"),
        }
    }

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

/// An IPv4/UDP packet (UDP checksum 0: none, allowed over IPv4).
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
    format!("{tag} {i:05} through the inside NIC").into_bytes()
}

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
    topo: &Topology,
    mut open: impl FnMut(&mut [u8]) -> Vec<u8>,
) {
    let mut seen = vec![0u32; n as usize];
    let deadline = WallInstant::now() + LIMIT;
    let mut buf = [0u8; 2048];
    let mut got = 0;
    while got < n {
        assert!(
            WallInstant::now() < deadline,
            "{tag}: {got} of {n} arrived: {seen:?}\n{}",
            topo.log()
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

fn total(stats: &Stats, f: impl Fn(&WorkerStats) -> u64) -> u64 {
    stats.workers.iter().map(f).sum()
}

fn xdp_attached(ns: &str, dev: &str) -> bool {
    let out = Proc::new("ip")
        .args(["-n", ns, "link", "show", "dev", dev])
        .output()
        .expect("ip link");
    String::from_utf8_lossy(&out.stdout).contains("xdp")
}

fn up(client: &UdpSocket, server: &UdpSocket, sim: &mut Sim, topo: &Topology) {
    let gw = SocketAddr::from((GW_ADDR, TUNNEL_PORT));
    for i in 0..PACKETS {
        client
            .send_to(&sealed(sim, &payload("up", i)), gw)
            .expect("send");
    }
    expect_payloads(server, "up", PACKETS, topo, |b| b.to_vec());
}

fn down(client: &UdpSocket, server: &UdpSocket, sim: &mut Sim, topo: &Topology) {
    for i in 0..PACKETS {
        server
            .send_to(&payload("down", i), SocketAddr::from(CLIENT_INNER))
            .expect("send");
    }
    expect_payloads(client, "down", PACKETS, topo, |b| {
        match sim.client.handle_datagram(sim.now, LocalPath(0), b) {
            ClientOutput::Deliver(p) => {
                // The inner packet is the server's, as its kernel built it.
                assert_eq!(&p[12..16], &SERVER_ADDR.octets());
                assert_eq!(&p[16..20], &CLIENT_INNER.0.octets());
                p[28..].to_vec()
            }
            other => panic!("client refused the gateway's packet: {other:?}"),
        }
    });
}

#[test]
fn af_xdp_inside_nic_forwards_both_ways() {
    if skip_unless_root() {
        return;
    }
    run("c", SERVER_MAC);
}

#[test]
fn af_xdp_inside_nic_learns_its_next_hop() {
    if skip_unless_root() {
        return;
    }
    run("l", "");
}

fn run(tag: &str, next_hop_mac: &str) {
    let mut topo = Topology::new(tag);
    topo.start(next_hop_mac);
    let mut ctl = Control::connect(&topo.socket(), &topo);
    match ctl.one(&ToDataplane::Hello) {
        FromDataplane::HelloAck {
            workers,
            backend,
            sessions,
        } => assert_eq!(
            (workers, backend, sessions),
            (2, Backend::AfXdp, 0),
            "{}",
            topo.log()
        ),
        other => panic!("{other:?}"),
    }
    assert!(
        topo.log().contains("inside interface chosen"),
        "{}",
        topo.log()
    );
    assert!(xdp_attached(&topo.gw, GW_DEV), "outside XDP not attached");
    assert!(
        xdp_attached(&topo.gw, INSIDE_DEV),
        "inside XDP not attached"
    );

    let server = udp_in(&topo.server, SocketAddr::from(SERVER));
    let client = udp_in(&topo.client, SocketAddr::from((CLIENT_ADDR, CLIENT_PORT)));

    let mut sim = Sim::new(41, Policy::default());
    let sid = sim.connect();
    assert_eq!(jumping_dataplane::runtime::owner_of(sid), 0);
    assert_eq!(ctl.one(&install(&sim, sid)), FromDataplane::Done);

    // Client → gateway (outside AF_XDP) → inside NIC (AF_XDP TX) → server, and server →
    // inside NIC (inside XDP → AF_XDP) → gateway → client. Learning the next hop, the server
    // speaks first.
    if next_hop_mac.is_empty() {
        down(&client, &server, &mut sim, &topo);
        up(&client, &server, &mut sim, &topo);
    } else {
        up(&client, &server, &mut sim, &topo);
        down(&client, &server, &mut sim, &topo);
    }

    let s = ctl.stats_when(|s| total(s, |w| w.sent) >= u64::from(PACKETS));
    assert_eq!(total(&s, |w| w.delivered), u64::from(PACKETS), "{s:?}");
    assert_eq!(s.workers[0].sent, u64::from(PACKETS), "{s:?}");
    assert_eq!(s.workers[1].sent, 0, "only the owner seals: {s:?}");
    assert_eq!(total(&s, |w| w.inside_packets), u64::from(PACKETS), "{s:?}");
    let no_route = |s: &Stats| {
        total(s, |w| {
            w.drops[jumping_dataplane_api::DropReason::NoRoute.index()]
        })
    };
    assert_eq!(no_route(&s), 0, "{s:?}");
    assert_eq!(
        total(&s, |w| w.drops
            [jumping_dataplane_api::DropReason::InsideFailed.index()]),
        0,
        "{s:?}"
    );

    // Retired: the address leaves inside_routes, so the server's packets to it go to the
    // gateway's kernel (which does not forward) instead of the data plane.
    assert_eq!(
        ctl.one(&ToDataplane::Retire { id: sid }),
        FromDataplane::Done
    );
    std::thread::sleep(Duration::from_millis(50));
    let before = ctl.stats();
    for i in 0..10 {
        server
            .send_to(&payload("late", i), SocketAddr::from(CLIENT_INNER))
            .expect("send");
    }
    std::thread::sleep(Duration::from_millis(300));
    let after = ctl.stats();
    assert_eq!(
        total(&after, |w| w.inside_packets),
        total(&before, |w| w.inside_packets),
        "packets to a retired client still reach the data plane: {after:?}"
    );
    let mut buf = [0u8; 2048];
    assert!(
        client.recv_from(&mut buf).is_err(),
        "a retired session was forwarded"
    );

    // Clean stop: exit 0, both programs detached.
    drop(ctl);
    let status = topo.stop();
    assert!(status.success(), "exit {status:?}:\n{}", topo.log());
    assert!(
        !xdp_attached(&topo.gw, GW_DEV),
        "outside XDP still attached"
    );
    assert!(
        !xdp_attached(&topo.gw, INSIDE_DEV),
        "inside XDP still attached"
    );
    assert!(!topo.socket().exists(), "control socket file left behind");
}
