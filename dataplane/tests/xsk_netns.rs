//! AF_XDP receive path end to end on a veth pair between two network namespaces the test
//! creates: the project's XDP program is attached in native (DRV) mode to the gateway-side
//! veth, an [`XskRx`] socket on its queue 0 is put into the program's `xsks` map, and the
//! protocol client's real encrypted datagrams, sent from a UDP socket in the client
//! namespace, must reach the worker through AF_XDP and be delivered exactly once each.
//! A second test sends the other way: heartbeat echoes rewritten in the received frame and
//! inner packets sealed into free frames with `XskRx::send_inner` go out on the TX ring and
//! must reach the client socket, where the protocol client accepts each exactly once; a
//! heartbeat from a port other than the active path is answered but not sent.
//! A third test does both over IPv6: data datagrams delivered, heartbeats echoed (with the
//! UDP checksum IPv6 requires, which the client's kernel verifies) and inner packets sent with
//! `send_inner` to an IPv6 active path.
//!
//! Needs root (namespaces, BPF, bpffs). Without root it prints `SKIPPED: needs root` and
//! returns; with `JUMPING_REQUIRE_BPF_TESTS=1` (set by CI) it fails instead.

mod support;
use support::{client_datagram, enter_netns, handed_off, ip, skip_unless_root};

use std::net::{SocketAddr, UdpSocket};
use std::process::Command as Proc;
use std::sync::{mpsc, Mutex, PoisonError};
use std::time::{Duration, Instant as WallInstant};

use aya::programs::XdpFlags;
use jumping_dataplane::xsk::{L2Template, XskConfig, XskRx, XskTxError};
use jumping_ebpf::test_run::BpffsMount;
use jumping_ebpf::{Counter, SessionOwner};
use jumping_protocol::client::{ClientOutput, LocalPath};
use jumping_protocol::testing::Sim;
use jumping_protocol::wire::{self, MessageType};
use jumping_protocol::Path;

const PACKETS: u32 = 200;
const TUNNEL_PORT: u16 = 51_820;
const CLIENT_PORT: u16 = 40_000;
const GW_ADDR: &str = "10.77.0.1";
const CLIENT_ADDR: &str = "10.77.0.2";
const GW_ADDR6: &str = "fd00:99::1";
const CLIENT_ADDR6: &str = "fd00:99::2";
const GW_MAC: &str = "02:77:00:00:00:01";
const CLIENT_MAC: &str = "02:77:00:00:00:02";
const GW_DEV: &str = "jxgw0";
const CLIENT_DEV: &str = "jxcl0";
/// Bound on waiting for the gateway to come up and for all packets to arrive.
const LIMIT: Duration = Duration::from_secs(20);
/// Heartbeats the client sends (one per heartbeat interval) and inner packets sent back.
const HEARTBEATS: u32 = 3;
const INNER_BACK: u32 = 50;

/// The tests share namespace-independent names (veth creation, bpffs): run them one at a time.
static SERIAL: Mutex<()> = Mutex::new(());

/// Two namespaces joined by a veth pair; deleting the namespaces (on drop, also when the test
/// panics) destroys the veth pair and with it the attached XDP program.
struct Netns {
    gw: String,
    client: String,
}

impl Netns {
    fn new(tag: &str) -> Self {
        let pid = std::process::id();
        let me = Self {
            gw: format!("jx-gw{tag}-{pid}"),
            client: format!("jx-cl{tag}-{pid}"),
        };
        // Created before the first command so a failure half way still cleans up.
        ip(&["netns", "add", &me.gw]);
        ip(&["netns", "add", &me.client]);
        ip(&[
            "link", "add", "name", GW_DEV, "address", GW_MAC, "netns", &me.gw, "type", "veth",
            "peer", "name", CLIENT_DEV, "address", CLIENT_MAC, "netns", &me.client,
        ]);
        for (ns, dev, addr) in [
            (&me.gw, GW_DEV, GW_ADDR),
            (&me.client, CLIENT_DEV, CLIENT_ADDR),
        ] {
            ip(&["-n", ns, "addr", "add", &format!("{addr}/24"), "dev", dev]);
            ip(&["-n", ns, "link", "set", "dev", dev, "up"]);
            ip(&["-n", ns, "link", "set", "dev", "lo", "up"]);
        }
        // No ARP round trip before the burst: the kernel queues only a few packets while a
        // neighbour resolves, and the burst would overflow that queue.
        ip(&[
            "-n",
            &me.client,
            "neigh",
            "replace",
            GW_ADDR,
            "lladdr",
            GW_MAC,
            "dev",
            CLIENT_DEV,
            "nud",
            "permanent",
        ]);
        me
    }

    /// Add the IPv6 addresses (without duplicate address detection, so they are usable at
    /// once) and, as for IPv4, a permanent neighbour entry for the gateway in the client
    /// namespace.
    fn add_ipv6(&self) {
        for (ns, dev, addr) in [
            (&self.gw, GW_DEV, GW_ADDR6),
            (&self.client, CLIENT_DEV, CLIENT_ADDR6),
        ] {
            ip(&[
                "-n",
                ns,
                "-6",
                "addr",
                "add",
                &format!("{addr}/64"),
                "dev",
                dev,
                "nodad",
            ]);
        }
        ip(&[
            "-n",
            &self.client,
            "-6",
            "neigh",
            "replace",
            GW_ADDR6,
            "lladdr",
            GW_MAC,
            "dev",
            CLIENT_DEV,
            "nud",
            "permanent",
        ]);
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        for ns in [&self.gw, &self.client] {
            let _ = Proc::new("ip").args(["netns", "del", ns]).output();
        }
    }
}

/// In the gateway namespace (the calling thread has entered it): the XDP program attached to
/// the gateway veth in native mode, its maps in a private bpffs, and an AF_XDP socket on
/// queue 0 registered in its `xsks` map.
struct Attached {
    ebpf: aya::Ebpf,
    link: aya::programs::xdp::XdpLinkId,
    _mount: BpffsMount,
}

impl Attached {
    fn new(sid: jumping_protocol::SessionId) -> (XskRx, Self) {
        let mount = BpffsMount::new().expect("mount a private bpffs");
        let mut ebpf = jumping_ebpf::load(mount.path()).expect("load XDP object");
        jumping_ebpf::add_tunnel_port(&mut ebpf, TUNNEL_PORT).expect("tunnel port");
        jumping_ebpf::set_session_owner(&mut ebpf, sid, SessionOwner::new(0))
            .expect("session owner");
        let link = jumping_ebpf::xdp_program(&mut ebpf)
            .expect("program")
            .attach(GW_DEV, XdpFlags::DRV_MODE)
            .expect("attach XDP in native mode");
        let xsk = XskRx::bind(
            GW_DEV,
            0,
            XskConfig {
                force_copy: true,
                ..XskConfig::default()
            },
        )
        .expect("bind AF_XDP socket");
        jumping_ebpf::set_xsk(&mut ebpf, 0, xsk.fd()).expect("xsks[0] = socket");
        (
            xsk,
            Attached {
                ebpf,
                link,
                _mount: mount,
            },
        )
    }

    /// Close the socket, then detach the program; the maps and the bpffs go last.
    fn detach(mut self, xsk: XskRx) {
        drop(xsk);
        jumping_ebpf::xdp_program(&mut self.ebpf)
            .expect("program")
            .detach(self.link)
            .expect("detach XDP");
    }
}

/// Send `INNER_BACK` inner packets with `send_inner` (receiving meanwhile, so the rings keep
/// moving), then wait until the kernel has completed `HEARTBEATS + INNER_BACK` transmissions.
/// `check` sees every frame length put on the wire.
fn send_inner_packets(
    xsk: &mut XskRx,
    worker: &mut jumping_dataplane::worker::Worker,
    sid: jumping_protocol::SessionId,
    l2: &L2Template,
    now: jumping_protocol::Instant,
    deliver: &mut impl FnMut(jumping_protocol::SessionId, &[u8]),
    check: impl Fn(u32, usize),
) {
    let deadline = WallInstant::now() + LIMIT;
    let mut sent = 0;
    while sent < INNER_BACK && WallInstant::now() < deadline {
        match xsk.send_inner(worker, sid, &inner_packet(sent), l2) {
            Ok(len) => {
                check(sent, len);
                sent += 1;
            }
            Err(XskTxError::TxRingFull | XskTxError::NoFreeFrame) => {
                xsk.poll_rx(worker, now, deliver);
                std::thread::sleep(Duration::from_millis(1));
            }
            Err(e) => panic!("send_inner: {e}"),
        }
    }
    let want = u64::from(HEARTBEATS + INNER_BACK);
    while xsk.counters().tx_completed < want && WallInstant::now() < deadline {
        xsk.poll_rx(worker, now, deliver);
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// The client sends a heartbeat per interval and opens each echo; with `stray`, one more
/// heartbeat goes first from that socket (not the active path), whose echo must not come.
/// Returns the echoes the client accepted.
fn heartbeats(sim: &mut Sim, sock: &UdpSocket, gw: SocketAddr, stray: Option<&UdpSocket>) -> u32 {
    let mut buf = [0u8; 2048];
    let mut echoes = 0;
    for k in 0..HEARTBEATS + u32::from(stray.is_some()) {
        let at = sim.now + Duration::from_millis(1500) * (k + 1);
        sim.client.handle_timeout(at);
        let hb = std::iter::from_fn(|| sim.client.poll_transmit())
            .find(|t| wire::peek_type(&t.payload) == Ok(MessageType::Heartbeat))
            .expect("a heartbeat after the interval");
        if let (0, Some(stray)) = (k, stray) {
            stray
                .send_to(&hb.payload, gw)
                .expect("send stray heartbeat");
            continue;
        }
        sock.send_to(&hb.payload, gw).expect("send heartbeat");
        let (len, from) = sock.recv_from(&mut buf).expect("the echo");
        assert_eq!(from, gw);
        match sim.client.handle_datagram(
            at + Duration::from_millis(10),
            LocalPath(0),
            &mut buf[..len],
        ) {
            ClientOutput::Consumed => echoes += 1,
            other => panic!("client did not accept echo {k}: {other:?}"),
        }
    }
    echoes
}

/// The client receives the `INNER_BACK` inner packets the gateway sends, opens each (they
/// must be `inner_packet(i)`), and counts how often each index arrived, duplicates included.
fn receive_inner_packets(sim: &mut Sim, sock: &UdpSocket, gw: SocketAddr) -> Vec<u32> {
    let mut buf = [0u8; 2048];
    let mut seen = vec![0u32; INNER_BACK as usize];
    let mut got = 0;
    let deadline = WallInstant::now() + LIMIT;
    while got < INNER_BACK && WallInstant::now() < deadline {
        let Ok((len, from)) = sock.recv_from(&mut buf) else {
            break;
        };
        assert_eq!(from, gw);
        match sim
            .client
            .handle_datagram(sim.now, LocalPath(0), &mut buf[..len])
        {
            ClientOutput::Deliver(p) => {
                let i = u32::from_be_bytes(p[..4].try_into().expect("4 bytes"));
                assert_eq!(&*p, &inner_packet(i)[..]);
                seen[i as usize] += 1;
                got += 1;
            }
            other => panic!("client did not accept an inner packet: {other:?}"),
        }
    }
    // Duplicates, if any, would follow shortly.
    sock.set_read_timeout(Some(Duration::from_millis(200)))
        .expect("timeout");
    while let Ok((len, _)) = sock.recv_from(&mut buf) {
        if let ClientOutput::Deliver(p) =
            sim.client
                .handle_datagram(sim.now, LocalPath(0), &mut buf[..len])
        {
            let i = u32::from_be_bytes(p[..4].try_into().expect("4 bytes"));
            seen[i as usize] += 1;
        }
    }
    seen
}

fn inner_packet(i: u32) -> Vec<u8> {
    let mut p = i.to_be_bytes().to_vec();
    p.extend_from_slice(b" an inner packet through AF_XDP");
    p
}

struct GatewayResult {
    seen: Vec<u32>,
    xdp: [u64; Counter::COUNT],
    xsk: jumping_dataplane::xsk::XskRxCounters,
    worker_delivered: u64,
}

#[test]
fn encrypted_datagrams_reach_the_worker_through_af_xdp() {
    if skip_unless_root() {
        return;
    }
    let _serial = SERIAL.lock().unwrap_or_else(PoisonError::into_inner);
    let netns = Netns::new("r");

    // A session established by the protocol, handed to a worker whose active path is the
    // client socket in the client namespace.
    let client_addr: SocketAddr = format!("{CLIENT_ADDR}:{CLIENT_PORT}")
        .parse()
        .expect("addr");
    let (mut sim, sid, mut worker, tx) = handed_off(71, Some(Path::udp(client_addr)));
    let datagrams: Vec<Vec<u8>> = (0..PACKETS)
        .map(|i| client_datagram(&mut sim, &inner_packet(i)))
        .collect();
    let now = sim.now;

    let (ready_tx, ready_rx) = mpsc::channel::<()>();
    let gw_ns = netns.gw.clone();
    let gateway = std::thread::spawn(move || {
        let _tx = tx; // keep the command channel open
        enter_netns(&gw_ns);
        let (mut xsk, xdp) = Attached::new(sid);
        assert_eq!(xsk.frames_in_kernel(), 2048, "fill ring full");
        ready_tx.send(()).expect("main waits");

        let mut seen = vec![0u32; PACKETS as usize];
        let deadline = WallInstant::now() + LIMIT;
        while worker.counters().delivered < u64::from(PACKETS) && WallInstant::now() < deadline {
            xsk.wait(100).expect("poll");
            xsk.poll_rx(&mut worker, now, &mut |id, packet| {
                assert_eq!(id, sid);
                assert_eq!(&packet[4..], &inner_packet(0)[4..]);
                let i = u32::from_be_bytes(packet[..4].try_into().expect("4 bytes"));
                seen[i as usize] += 1;
            });
        }
        // Let stragglers (duplicates, if any) arrive before counting.
        std::thread::sleep(Duration::from_millis(200));
        xsk.poll_rx(&mut worker, now, &mut |_, packet| {
            let i = u32::from_be_bytes(packet[..4].try_into().expect("4 bytes"));
            seen[i as usize] += 1;
        });
        let xdp_counters = jumping_ebpf::read_counters(&xdp.ebpf).expect("counters");
        let result = GatewayResult {
            seen,
            xdp: xdp_counters,
            xsk: xsk.counters().clone(),
            worker_delivered: worker.counters().delivered,
        };
        xdp.detach(xsk);
        result
    });

    if ready_rx.recv_timeout(LIMIT).is_err() {
        // The gateway thread failed (its panic is re-raised here) or hung.
        match gateway.join() {
            Err(p) => std::panic::resume_unwind(p),
            Ok(_) => panic!("gateway finished without signalling readiness"),
        }
    }

    let client_ns = netns.client.clone();
    let client = std::thread::spawn(move || {
        enter_netns(&client_ns);
        let sock = UdpSocket::bind(client_addr).expect("client socket");
        let gw: SocketAddr = format!("{GW_ADDR}:{TUNNEL_PORT}").parse().expect("addr");
        for d in &datagrams {
            sock.send_to(d, gw).expect("send");
        }
    });
    client.join().expect("client thread");
    let r = match gateway.join() {
        Ok(r) => r,
        Err(p) => std::panic::resume_unwind(p),
    };
    drop(netns);

    let missing: Vec<usize> = (0..r.seen.len()).filter(|&i| r.seen[i] == 0).collect();
    let dup: Vec<usize> = (0..r.seen.len()).filter(|&i| r.seen[i] > 1).collect();
    assert!(
        missing.is_empty() && dup.is_empty(),
        "missing {missing:?}, duplicated {dup:?}; xsk {:?}; xdp {:?}",
        r.xsk,
        r.xdp
    );
    assert_eq!(r.worker_delivered, u64::from(PACKETS));
    assert_eq!(r.xsk.delivered, u64::from(PACKETS));
    assert_eq!(r.xsk.to_worker, u64::from(PACKETS), "{:?}", r.xsk);
    assert_eq!(r.xsk.new_path_events, 0, "{:?}", r.xsk);
    let c = |k: Counter| r.xdp[k.index() as usize];
    assert_eq!(c(Counter::RedirectData), u64::from(PACKETS), "{:?}", r.xdp);
    assert_eq!(
        c(Counter::SteerSessionMap),
        u64::from(PACKETS),
        "{:?}",
        r.xdp
    );
    assert_eq!(c(Counter::RedirectFailedPass), 0, "{:?}", r.xdp);
}

fn mac(s: &str) -> [u8; 6] {
    let v: Vec<u8> = s
        .split(':')
        .map(|b| u8::from_str_radix(b, 16).expect("hex"))
        .collect();
    v.try_into().expect("6 bytes")
}

struct TxResult {
    xsk: jumping_dataplane::xsk::XskRxCounters,
    frames_in_kernel: usize,
    sealed: u64,
}

#[derive(Debug)]
struct ClientResult {
    echoes: u32,
    seen: Vec<u32>,
}

#[test]
fn echoes_and_inner_packets_leave_through_af_xdp() {
    if skip_unless_root() {
        return;
    }
    let _serial = SERIAL.lock().unwrap_or_else(PoisonError::into_inner);
    let netns = Netns::new("t");

    let client_addr: SocketAddr = format!("{CLIENT_ADDR}:{CLIENT_PORT}")
        .parse()
        .expect("addr");
    let (mut sim, sid, mut worker, tx) = handed_off(72, Some(Path::udp(client_addr)));
    // The worker's clock: after every heartbeat the client will send.
    let gw_now = sim.now + Duration::from_secs(10);
    let l2 = L2Template {
        src_mac: mac(GW_MAC),
        dst_mac: mac(CLIENT_MAC),
        src_ip: GW_ADDR.parse().expect("addr"),
        src_ip6: None,
        src_port: TUNNEL_PORT,
    };

    let (ready_tx, ready_rx) = mpsc::channel::<()>();
    let (echoed_tx, echoed_rx) = mpsc::channel::<()>();
    let gw_ns = netns.gw.clone();
    let gateway = std::thread::spawn(move || {
        let _tx = tx;
        enter_netns(&gw_ns);
        let (mut xsk, xdp) = Attached::new(sid);
        ready_tx.send(()).expect("main waits");

        let deadline = WallInstant::now() + LIMIT;
        let mut no_delivery =
            |_: jumping_protocol::SessionId, _: &[u8]| panic!("nothing is delivered in this test");
        // Echo heartbeats until the client says it has them all.
        while echoed_rx.try_recv().is_err() && WallInstant::now() < deadline {
            xsk.wait(20).expect("poll");
            xsk.poll_rx(&mut worker, gw_now, &mut no_delivery);
        }
        send_inner_packets(
            &mut xsk,
            &mut worker,
            sid,
            &l2,
            gw_now,
            &mut no_delivery,
            |_, _| {},
        );
        let result = TxResult {
            xsk: xsk.counters().clone(),
            frames_in_kernel: xsk.frames_in_kernel(),
            sealed: worker.counters().sealed,
        };
        xdp.detach(xsk);
        result
    });

    if ready_rx.recv_timeout(LIMIT).is_err() {
        match gateway.join() {
            Err(p) => std::panic::resume_unwind(p),
            Ok(_) => panic!("gateway finished without signalling readiness"),
        }
    }

    let client_ns = netns.client.clone();
    let client = std::thread::spawn(move || {
        enter_netns(&client_ns);
        let sock = UdpSocket::bind(client_addr).expect("client socket");
        sock.set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        let gw: SocketAddr = format!("{GW_ADDR}:{TUNNEL_PORT}").parse().expect("addr");
        // The first heartbeat comes from another port than the active path: the worker
        // answers to the active path, which is not that datagram's source, so no echo is sent.
        let stray = UdpSocket::bind(SocketAddr::new(client_addr.ip(), CLIENT_PORT + 1))
            .expect("stray socket");
        let echoes = heartbeats(&mut sim, &sock, gw, Some(&stray));
        echoed_tx.send(()).expect("gateway waits");
        let seen = receive_inner_packets(&mut sim, &sock, gw);
        ClientResult { echoes, seen }
    });
    let c = client.join();
    let r = match gateway.join() {
        Ok(r) => r,
        Err(p) => std::panic::resume_unwind(p),
    };
    let c = match c {
        Ok(c) => c,
        Err(p) => std::panic::resume_unwind(p),
    };
    drop(netns);

    assert_eq!(c.echoes, HEARTBEATS, "{:?}", r.xsk);
    let missing: Vec<usize> = (0..c.seen.len()).filter(|&i| c.seen[i] == 0).collect();
    let dup: Vec<usize> = (0..c.seen.len()).filter(|&i| c.seen[i] > 1).collect();
    assert!(
        missing.is_empty() && dup.is_empty(),
        "missing {missing:?}, duplicated {dup:?}; xsk {:?}",
        r.xsk
    );
    assert_eq!(r.xsk.replies_sent, u64::from(HEARTBEATS), "{:?}", r.xsk);
    assert_eq!(r.xsk.replies_unsent, 1, "the stray heartbeat: {:?}", r.xsk);
    assert_eq!(r.xsk.new_path_events, 1, "the stray heartbeat: {:?}", r.xsk);
    assert_eq!(r.xsk.inner_sent, u64::from(INNER_BACK), "{:?}", r.xsk);
    assert_eq!(r.sealed, u64::from(INNER_BACK));
    assert_eq!(
        r.xsk.tx_completed,
        u64::from(HEARTBEATS + INNER_BACK),
        "{:?}",
        r.xsk
    );
    assert_eq!(r.frames_in_kernel, 2048, "every sent frame came back");
}

struct Gateway6Result {
    seen: Vec<u32>,
    xdp: [u64; Counter::COUNT],
    xsk: jumping_dataplane::xsk::XskRxCounters,
    frames_in_kernel: usize,
    worker_delivered: u64,
    sealed: u64,
}

#[test]
fn data_echoes_and_inner_packets_over_ipv6_through_af_xdp() {
    if skip_unless_root() {
        return;
    }
    let _serial = SERIAL.lock().unwrap_or_else(PoisonError::into_inner);
    let netns = Netns::new("6");
    netns.add_ipv6();

    let client_addr: SocketAddr = format!("[{CLIENT_ADDR6}]:{CLIENT_PORT}")
        .parse()
        .expect("addr");
    let gw: SocketAddr = format!("[{GW_ADDR6}]:{TUNNEL_PORT}").parse().expect("addr");
    let (mut sim, sid, mut worker, tx) = handed_off(73, Some(Path::udp(client_addr)));
    let datagrams: Vec<Vec<u8>> = (0..PACKETS)
        .map(|i| client_datagram(&mut sim, &inner_packet(i)))
        .collect();
    // The worker's clock: after every heartbeat the client will send.
    let gw_now = sim.now + Duration::from_secs(10);
    let l2 = L2Template {
        src_mac: mac(GW_MAC),
        dst_mac: mac(CLIENT_MAC),
        src_ip: GW_ADDR.parse().expect("addr"),
        src_ip6: Some(GW_ADDR6.parse().expect("addr")),
        src_port: TUNNEL_PORT,
    };

    let (ready_tx, ready_rx) = mpsc::channel::<()>();
    let (echoed_tx, echoed_rx) = mpsc::channel::<()>();
    let gw_ns = netns.gw.clone();
    let gateway = std::thread::spawn(move || {
        let _tx = tx;
        enter_netns(&gw_ns);
        let (mut xsk, xdp) = Attached::new(sid);
        ready_tx.send(()).expect("main waits");

        let mut seen = vec![0u32; PACKETS as usize];
        let mut deliver = |id, packet: &[u8]| {
            assert_eq!(id, sid);
            assert_eq!(&packet[4..], &inner_packet(0)[4..]);
            let i = u32::from_be_bytes(packet[..4].try_into().expect("4 bytes"));
            seen[i as usize] += 1;
        };
        let deadline = WallInstant::now() + LIMIT;
        // Deliver the data and echo heartbeats until the client says it has every echo.
        while echoed_rx.try_recv().is_err() && WallInstant::now() < deadline {
            xsk.wait(20).expect("poll");
            xsk.poll_rx(&mut worker, gw_now, &mut deliver);
        }
        let check = |i: u32, len: usize| {
            let datagram = wire::DATA_HEADER_LEN + inner_packet(i).len() + wire::TAG_LEN;
            assert_eq!(len, 14 + 40 + 8 + datagram, "Ethernet/IPv6/UDP");
        };
        send_inner_packets(&mut xsk, &mut worker, sid, &l2, gw_now, &mut deliver, check);
        let xdp_counters = jumping_ebpf::read_counters(&xdp.ebpf).expect("counters");
        let result = Gateway6Result {
            seen,
            xdp: xdp_counters,
            xsk: xsk.counters().clone(),
            frames_in_kernel: xsk.frames_in_kernel(),
            worker_delivered: worker.counters().delivered,
            sealed: worker.counters().sealed,
        };
        xdp.detach(xsk);
        result
    });

    if ready_rx.recv_timeout(LIMIT).is_err() {
        match gateway.join() {
            Err(p) => std::panic::resume_unwind(p),
            Ok(_) => panic!("gateway finished without signalling readiness"),
        }
    }

    let client_ns = netns.client.clone();
    let client = std::thread::spawn(move || {
        enter_netns(&client_ns);
        let sock = UdpSocket::bind(client_addr).expect("client socket");
        sock.set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        for d in &datagrams {
            sock.send_to(d, gw).expect("send");
        }
        let echoes = heartbeats(&mut sim, &sock, gw, None);
        echoed_tx.send(()).expect("gateway waits");
        let seen = receive_inner_packets(&mut sim, &sock, gw);
        ClientResult { echoes, seen }
    });
    let c = client.join();
    let r = match gateway.join() {
        Ok(r) => r,
        Err(p) => std::panic::resume_unwind(p),
    };
    let c = match c {
        Ok(c) => c,
        Err(p) => std::panic::resume_unwind(p),
    };
    drop(netns);

    // Client to gateway: every data datagram delivered once.
    let missing: Vec<usize> = (0..r.seen.len()).filter(|&i| r.seen[i] == 0).collect();
    let dup: Vec<usize> = (0..r.seen.len()).filter(|&i| r.seen[i] > 1).collect();
    assert!(
        missing.is_empty() && dup.is_empty(),
        "data: missing {missing:?}, duplicated {dup:?}; xsk {:?}; xdp {:?}",
        r.xsk,
        r.xdp
    );
    assert_eq!(r.worker_delivered, u64::from(PACKETS));
    assert_eq!(r.xsk.delivered, u64::from(PACKETS));
    assert_eq!(
        r.xsk.to_worker,
        u64::from(PACKETS + HEARTBEATS),
        "{:?}",
        r.xsk
    );
    assert_eq!(r.xsk.not_ip_udp, 0, "{:?}", r.xsk);
    assert_eq!(r.xsk.new_path_events, 0, "{:?}", r.xsk);
    let x = |k: Counter| r.xdp[k.index() as usize];
    assert_eq!(
        x(Counter::RedirectData),
        u64::from(PACKETS + HEARTBEATS),
        "{:?}",
        r.xdp
    );
    assert_eq!(x(Counter::RedirectFailedPass), 0, "{:?}", r.xdp);

    // Gateway to client: every echo and inner packet accepted once.
    assert_eq!(c.echoes, HEARTBEATS, "{:?}", r.xsk);
    let missing: Vec<usize> = (0..c.seen.len()).filter(|&i| c.seen[i] == 0).collect();
    let dup: Vec<usize> = (0..c.seen.len()).filter(|&i| c.seen[i] > 1).collect();
    assert!(
        missing.is_empty() && dup.is_empty(),
        "inner: missing {missing:?}, duplicated {dup:?}; xsk {:?}",
        r.xsk
    );
    assert_eq!(r.xsk.replies_sent, u64::from(HEARTBEATS), "{:?}", r.xsk);
    assert_eq!(r.xsk.replies_unsent, 0, "{:?}", r.xsk);
    assert_eq!(r.xsk.inner_sent, u64::from(INNER_BACK), "{:?}", r.xsk);
    assert_eq!(r.sealed, u64::from(INNER_BACK));
    assert_eq!(
        r.xsk.tx_completed,
        u64::from(HEARTBEATS + INNER_BACK),
        "{:?}",
        r.xsk
    );
    assert_eq!(r.frames_in_kernel, 2048, "every sent frame came back");
}
