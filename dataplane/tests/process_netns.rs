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
use support::process::{
    address, expect_payloads, in_netns, install, neigh, payload, refuse_unicast_in_broadcast,
    total, udp_in, veth_pair, xdp_attached, Control, Dataplane,
};
use support::{ip, skip_unless_root};

use std::net::{Ipv4Addr, SocketAddr};
use std::process::Command as Proc;
use std::time::Duration;

use jumping_dataplane_api::{Backend, DropReason, Event, FromDataplane, Stats, ToDataplane};
use jumping_protocol::client::{ClientOutput, LocalPath};
use jumping_protocol::testing::Sim;
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

/// Two namespaces and the data plane in one of them; all removed on drop, also on failure.
struct Topology {
    gw: String,
    client: String,
    dp: Dataplane,
}

impl Topology {
    fn new(tag: &str) -> Self {
        let pid = std::process::id();
        let (gw, client) = (format!("jp-gw{tag}-{pid}"), format!("jp-cl{tag}-{pid}"));
        // The guard exists before the first command, so a failure half way still cleans up.
        let me = Topology {
            dp: Dataplane::new(&gw, &format!("process{tag}")),
            gw,
            client,
        };
        ip(&["netns", "add", &me.gw]);
        ip(&["netns", "add", &me.client]);
        veth_pair(
            (GW_DEV, GW_MAC, &me.gw),
            (CLIENT_DEV, CLIENT_MAC, &me.client),
        );
        address(&me.gw, GW_DEV, GW_ADDR);
        address(&me.client, CLIENT_DEV, CLIENT_ADDR);
        refuse_unicast_in_broadcast(&me.client);
        neigh(&me.client, GW_ADDR, GW_MAC, CLIENT_DEV);
        neigh(&me.gw, CLIENT_ADDR, CLIENT_MAC, GW_DEV);
        me
    }

    /// Start the data plane: two workers, `backend` outside, TUN inside.
    fn start(&mut self, backend: &str) {
        self.dp.start(&format!(
            "backend = \"{backend}\"\ninterface = \"{GW_DEV}\"\nlisten = \"{GW_ADDR}:{TUNNEL_PORT}\"\n\
             cpus = [0, 1]\nsession_capacity = 1024\n[inside]\ntun = \"{TUN_DEV}\"\n\
             [af_xdp]\nframes = 1024\nring_size = 512\n"
        ));
    }

    /// Every client packet leaves on transmit queue 1, so it arrives on the gateway's receive
    /// queue 1, served by worker 1, while worker 0 owns the session (AF_XDP).
    fn client_on_queue_1(&self) {
        let xps = format!(
            "echo 0 > /sys/class/net/{CLIENT_DEV}/queues/tx-0/xps_cpus && \
             echo 3 > /sys/class/net/{CLIENT_DEV}/queues/tx-1/xps_cpus"
        );
        in_netns(&self.client, &["sh", "-c", &xps]);
    }

    /// Give the data plane's TUN device the server's address.
    fn tun_up(&self) {
        ip(&[
            "-n",
            &self.gw,
            "addr",
            "add",
            "10.88.0.1/24",
            "dev",
            TUN_DEV,
        ]);
        ip(&["-n", &self.gw, "link", "set", "dev", TUN_DEV, "up"]);
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        self.dp.kill();
        for ns in [&self.gw, &self.client] {
            let _ = Proc::new("ip").args(["netns", "del", ns]).output();
        }
    }
}

/// The veth counters of both ends and the UDP counters of both namespaces (what a failure
/// message needs to tell the data plane's losses from the kernel's).
fn kernel_counters(topo: &Topology) -> String {
    let mut out = String::new();
    for (ns, dev) in [(&topo.gw, GW_DEV), (&topo.client, CLIENT_DEV)] {
        for args in [
            vec!["-n", ns.as_str(), "-s", "link", "show", "dev", dev],
            vec!["netns", "exec", ns.as_str(), "cat", "/proc/net/snmp"],
        ] {
            if let Ok(o) = Proc::new("ip").args(&args).output() {
                out.push_str(&String::from_utf8_lossy(&o.stdout));
            }
        }
    }
    if let Ok(s) = std::fs::read_to_string("/proc/net/softnet_stat") {
        out.push_str("softnet_stat:\n");
        out.push_str(&s);
    }
    out
}

/// Every session the data plane holds.
fn list(ctl: &mut Control) -> Vec<jumping_dataplane_api::SessionSummary> {
    ctl.request(&ToDataplane::ListSessions)
        .into_iter()
        .flat_map(|m| match m {
            FromDataplane::Sessions { sessions, .. } => sessions,
            other => panic!("{other:?}"),
        })
        .collect()
}

/// A sealed datagram from the client's inner address to the server.
fn sealed(sim: &mut Sim, data: &[u8]) -> Vec<u8> {
    support::process::sealed(sim, CLIENT_INNER, SERVER, data)
}

/// The session's install, its active path the client's real address.
fn install_session(sim: &Sim, sid: SessionId) -> ToDataplane {
    install(
        sim,
        sid,
        CLIENT_INNER.0.into(),
        SocketAddr::from((CLIENT_ADDR, CLIENT_PORT)),
    )
}

fn run(backend: &str, tag: &str) {
    let mut topo = Topology::new(tag);
    if backend == "af_xdp" {
        topo.client_on_queue_1();
    }
    topo.start(backend);
    let mut ctl = Control::connect(&topo.dp.socket());
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
        } => assert_eq!(
            (workers, backend, sessions),
            (2, want, 0),
            "{}",
            topo.dp.log()
        ),
        other => panic!("{other:?}"),
    }
    topo.tun_up();
    let server = udp_in(&topo.gw, SocketAddr::from(SERVER));
    let client = udp_in(&topo.client, SocketAddr::from((CLIENT_ADDR, CLIENT_PORT)));
    let gw = SocketAddr::from((GW_ADDR, TUNNEL_PORT));

    let mut sim = Sim::new(31, Policy::default());
    let sid = sim.connect();
    assert_eq!(jumping_dataplane::runtime::owner_of(sid), 0);
    assert_eq!(ctl.one(&install_session(&sim, sid)), FromDataplane::Done);
    assert_eq!(
        ctl.one(&install_session(&sim, sid)),
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
    expect_payloads(&server, "up", PACKETS, &|| topo.dp.log(), |b| b.to_vec());

    // Server → gateway → client.
    for i in 0..PACKETS {
        server
            .send_to(&payload("down", i), SocketAddr::from(CLIENT_INNER))
            .expect("send");
    }
    expect_payloads(&client, "down", PACKETS, &|| topo.dp.log(), |b| {
        match sim.client.handle_datagram(sim.now, LocalPath(0), b) {
            ClientOutput::Deliver(p) => p[28..].to_vec(),
            other => panic!("client refused the gateway's packet: {other:?}"),
        }
    });

    // Counters are published by the workers within a millisecond or so of their work.
    // Both directions done (each counter is published by its own worker, at its own pace).
    let s = ctl.stats_when(|s| {
        total(s, |w| w.sent) >= u64::from(PACKETS)
            && total(s, |w| w.delivered) >= u64::from(PACKETS)
    });
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
                    source,
                } if *id == sid && *r == reason => {
                    // Forged and replayed packets come from the client's address here.
                    assert_eq!(source.addr, SocketAddr::from((CLIENT_ADDR, CLIENT_PORT)));
                    Some(u64::from(*count))
                }
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
    expect_payloads(&server, "moved", 1, &|| topo.dp.log(), |b| b.to_vec());
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
    expect_payloads(&server, "alone", 10, &|| topo.dp.log(), |b| b.to_vec());
    let mut ctl = Control::connect(&topo.dp.socket());
    match ctl.one(&ToDataplane::Hello) {
        FromDataplane::HelloAck { sessions, .. } => assert_eq!(sessions, 1),
        other => panic!("{other:?}"),
    }
    let listed = list(&mut ctl);
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
    let status = topo.dp.stop();
    assert!(status.success(), "exit {status:?}:\n{}", topo.dp.log());
    assert!(
        !xdp_attached(&topo.gw, GW_DEV),
        "XDP still attached after SIGTERM"
    );
    assert!(
        !topo.dp.socket().exists(),
        "control socket file left behind"
    );

    // A crash (SIGKILL: no clean-up at all) leaves nothing that blocks a restart: the XDP
    // link dies with the process, the stale socket file is replaced, pinned maps are reused.
    topo.start(backend);
    let mut ctl = Control::connect(&topo.dp.socket());
    assert!(matches!(
        ctl.one(&ToDataplane::Hello),
        FromDataplane::HelloAck { .. }
    ));
    topo.dp.kill();
    drop(ctl);
    assert!(
        topo.dp.socket().exists(),
        "a crash leaves the socket file (the restart must cope)"
    );
    topo.start(backend);
    let mut ctl = Control::connect(&topo.dp.socket());
    match ctl.one(&ToDataplane::Hello) {
        FromDataplane::HelloAck { sessions, .. } => assert_eq!(sessions, 0),
        other => panic!("{other:?}"),
    }
    topo.tun_up();
    let mut sim = Sim::new(32, Policy::default());
    let sid = sim.connect();
    assert_eq!(ctl.one(&install_session(&sim, sid)), FromDataplane::Done);
    for i in 0..10 {
        client
            .send_to(&sealed(&mut sim, &payload("again", i)), gw)
            .expect("send");
    }
    expect_payloads(&server, "again", 10, &|| topo.dp.log(), |b| b.to_vec());
    drop(ctl);
    assert!(topo.dp.stop().success(), "{}", topo.dp.log());
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

/// The index in a `payload(tag, i)` datagram.
fn index_of(tag: &str, bytes: &[u8]) -> Option<u32> {
    let text = std::str::from_utf8(bytes).ok()?;
    text.strip_prefix(tag)?.trim_start().get(..5)?.parse().ok()
}

/// Receive until `n` payloads of `tag` arrived (or 10 s passed); their indices in arrival
/// order.
fn arrivals(
    sock: &std::net::UdpSocket,
    tag: &str,
    n: usize,
    mut open: impl FnMut(&mut [u8]) -> Option<Vec<u8>>,
) -> Vec<u32> {
    let mut got = Vec::new();
    let mut buf = [0u8; 2048];
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while got.len() < n && std::time::Instant::now() < deadline {
        if let Ok((len, _)) = sock.recv_from(&mut buf) {
            if let Some(i) = open(&mut buf[..len]).and_then(|p| index_of(tag, &p)) {
                got.push(i);
            }
        }
    }
    got
}

/// Give `sock` an 8 MiB receive buffer (root: `SO_RCVBUFFORCE`).
fn big_receive_buffer(sock: &std::net::UdpSocket) {
    use std::os::fd::AsRawFd as _;
    let size: libc::c_int = 8 << 20;
    // SAFETY: setsockopt(2) on an open socket with a pointer to a c_int and its size.
    let r = unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVBUFFORCE,
            std::ptr::addr_of!(size).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    assert_eq!(r, 0, "SO_RCVBUFFORCE: {}", std::io::Error::last_os_error());
}

/// Moves a session between the two workers while traffic flows both ways (core drain), and
/// asks its client to rekey through the heartbeat echo.
fn moves(backend: &str, tag: &str) {
    const N: u32 = 3000;
    let mut topo = Topology::new(tag);
    if backend == "af_xdp" {
        topo.client_on_queue_1();
    }
    topo.start(backend);
    let mut ctl = Control::connect(&topo.dp.socket());
    assert!(matches!(
        ctl.one(&ToDataplane::Hello),
        FromDataplane::HelloAck { workers: 2, .. }
    ));
    topo.tun_up();
    let server = udp_in(&topo.gw, SocketAddr::from(SERVER));
    let server_tx = udp_in(&topo.gw, SocketAddr::from((SERVER.0, SERVER.1 + 1)));
    let client = udp_in(&topo.client, SocketAddr::from((CLIENT_ADDR, CLIENT_PORT)));
    let gw = SocketAddr::from((GW_ADDR, TUNNEL_PORT));
    let mut sim = Sim::new(33, Policy::default());
    let sid = sim.connect();
    assert_eq!(jumping_dataplane::runtime::owner_of(sid), 0);
    assert_eq!(ctl.one(&install_session(&sim, sid)), FromDataplane::Done);
    use jumping_dataplane_api::Refusal;
    assert_eq!(
        ctl.one(&ToDataplane::Move { id: sid, to: 2 }),
        FromDataplane::Refused(Refusal::NoSuchWorker)
    );
    assert_eq!(
        ctl.one(&ToDataplane::Move {
            id: SessionId(0x0100_0000_0000_0001),
            to: 1
        }),
        FromDataplane::Refused(Refusal::UnknownSession)
    );

    // Both directions stream while the session moves 0 → 1 → 0 → 1.
    let up: Vec<Vec<u8>> = (0..N)
        .map(|i| sealed(&mut sim, &payload("up", i)))
        .collect();
    // Receivers read while the stream runs, with room for the whole stream should they be
    // descheduled (CI runs tests in parallel on two cores).
    for sock in [&server, &client] {
        big_receive_buffer(sock);
    }
    let up_rx = {
        let server = server.try_clone().expect("clone");
        std::thread::spawn(move || arrivals(&server, "up", N as usize, |b| Some(b.to_vec())))
    };
    let down_rx = {
        let client = client.try_clone().expect("clone");
        std::thread::spawn(move || {
            let mut raw = Vec::new();
            let mut buf = [0u8; 2048];
            let deadline = std::time::Instant::now() + Duration::from_secs(10);
            while raw.len() < N as usize && std::time::Instant::now() < deadline {
                if let Ok((len, _)) = client.recv_from(&mut buf) {
                    raw.push(buf[..len].to_vec());
                }
            }
            raw
        })
    };
    let sender = {
        let client = client.try_clone().expect("clone");
        let server_tx = server_tx.try_clone().expect("clone");
        std::thread::spawn(move || {
            for (i, d) in up.iter().enumerate() {
                client.send_to(d, gw).expect("send");
                let down = payload("down", u32::try_from(i).expect("small"));
                // From the server's address, so it routes into the tunnel like a reply.
                let _ = server_tx.send_to(&down, SocketAddr::from(CLIENT_INNER));
                std::thread::sleep(Duration::from_micros(100));
            }
        })
    };
    let mut owners = Vec::new();
    for to in [1u8, 0, 1] {
        std::thread::sleep(Duration::from_millis(60));
        assert_eq!(
            ctl.one(&ToDataplane::Move { id: sid, to }),
            FromDataplane::Done,
            "{}",
            topo.dp.log()
        );
        owners.push(to);
    }
    sender.join().expect("sender");
    let got_up = up_rx.join().expect("receiver");
    let got_down: Vec<u32> = down_rx
        .join()
        .expect("receiver")
        .iter_mut()
        .filter_map(
            |b| match sim.client.handle_datagram(sim.now, LocalPath(0), b) {
                ClientOutput::Deliver(p) => index_of("down", &p[28..]),
                _ => None,
            },
        )
        .collect();
    for (dir, got) in [("inbound", &got_up), ("outbound", &got_down)] {
        assert_eq!(
            got.len(),
            N as usize,
            "{dir} packets lost in the moves; data plane: {:?}\nkernel: {}",
            ctl.stats(),
            kernel_counters(&topo)
        );
        let out_of_order = got.windows(2).position(|w| w[1] != w[0] + 1);
        assert_eq!(
            out_of_order.map(|i| &got[i..(i + 4).min(got.len())]),
            None,
            "{dir} packets reordered by the moves"
        );
    }
    let s = ctl.stats_when(|s| total(s, |w| w.delivered) >= u64::from(N));
    assert!(
        s.workers[0].delivered > 0 && s.workers[1].delivered > 0,
        "both workers carried the session in turn: {s:?}"
    );
    let listed = list(&mut ctl);
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!((listed[0].id, listed[0].owner), (sid, 1));
    assert_eq!(listed[0].rx_packets, u64::from(N));
    assert_eq!(listed[0].tx_packets, u64::from(N));

    // A rekey request rides on the heartbeat echo: the client starts a rekey on seeing it.
    while sim.client.poll_transmit().is_some() {}
    let heartbeat_echo = |sim: &mut Sim| -> bool {
        sim.now = sim.now + Duration::from_secs(3);
        sim.client.handle_timeout(sim.now);
        let mut sent_heartbeat = false;
        while let Some(t) = sim.client.poll_transmit() {
            if t.payload[1] == 5 {
                client.send_to(&t.payload, gw).expect("send");
                sent_heartbeat = true;
            }
        }
        assert!(sent_heartbeat, "the client sends a heartbeat after 3 s");
        let mut buf = [0u8; 2048];
        let (len, _) = client.recv_from(&mut buf).expect("the echo");
        assert!(matches!(
            sim.client
                .handle_datagram(sim.now, LocalPath(0), &mut buf[..len]),
            ClientOutput::Consumed
        ));
        sim.client.handle_timeout(sim.now);
        let mut rekey = false;
        while let Some(t) = sim.client.poll_transmit() {
            rekey |= t.payload[1] == 1;
        }
        rekey
    };
    assert!(!heartbeat_echo(&mut sim), "no rekey without a request");
    assert_eq!(
        ctl.one(&ToDataplane::RequestRekey { id: sid }),
        FromDataplane::Done
    );
    // (The request may reach the worker just after the next heartbeat: the client rekeys at
    // the one after.)
    assert!(
        (0..3).any(|_| heartbeat_echo(&mut sim)),
        "the echo carried the rekey request"
    );

    // Retired after moving: nothing forwarded any more, by either worker.
    assert_eq!(
        ctl.one(&ToDataplane::Retire { id: sid }),
        FromDataplane::Done
    );
    std::thread::sleep(Duration::from_millis(50));
    client
        .send_to(&sealed(&mut sim, &payload("late", 0)), gw)
        .expect("send");
    let mut buf = [0u8; 2048];
    assert!(
        server.recv_from(&mut buf).is_err(),
        "a retired session was forwarded"
    );
    drop(ctl);
    assert!(topo.dp.stop().success(), "{}", topo.dp.log());
}

#[test]
fn af_xdp_moves_a_session_between_workers_without_loss_or_reordering() {
    if skip_unless_root() {
        return;
    }
    moves("af_xdp", "mx");
}

#[test]
fn io_uring_moves_a_session_between_workers_without_loss_or_reordering() {
    if skip_unless_root() {
        return;
    }
    moves("io_uring", "mu");
}
