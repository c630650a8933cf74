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
use support::process::{
    address, expect_payloads, in_netns, install, neigh, payload, refuse_unicast_in_broadcast,
    total, udp_in, veth_pair, xdp_attached, Control, Dataplane,
};
use support::{ip, skip_unless_root};

use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::process::Command as Proc;
use std::time::Duration;

use jumping_dataplane_api::{Backend, FromDataplane, Stats, ToDataplane};
use jumping_protocol::client::{ClientOutput, LocalPath};
use jumping_protocol::testing::Sim;
use jumping_protocol::{Policy, SessionId};

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

/// Three namespaces and the data plane in the middle one; all removed on drop, also on
/// failure.
struct Topology {
    gw: String,
    client: String,
    server: String,
    dp: Dataplane,
}

impl Topology {
    fn new(tag: &str) -> Self {
        let pid = std::process::id();
        let gw = format!("jx-gw{tag}-{pid}");
        // The guard exists before the first command, so a failure half way still cleans up.
        let me = Topology {
            dp: Dataplane::new(&gw, &format!("inside{tag}")),
            gw,
            client: format!("jx-cl{tag}-{pid}"),
            server: format!("jx-sv{tag}-{pid}"),
        };
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
        address(&me.gw, GW_DEV, GW_ADDR);
        address(&me.client, CLIENT_DEV, CLIENT_ADDR);
        address(&me.gw, INSIDE_DEV, INSIDE_ADDR);
        address(&me.server, SERVER_DEV, SERVER_ADDR);
        neigh(&me.client, GW_ADDR, GW_MAC, CLIENT_DEV);
        neigh(&me.gw, CLIENT_ADDR, CLIENT_MAC, GW_DEV);
        neigh(&me.server, INSIDE_ADDR, INSIDE_MAC, SERVER_DEV);
        neigh(&me.gw, SERVER_ADDR, SERVER_MAC, INSIDE_DEV);
        let via = INSIDE_ADDR.to_string();
        ip(&[
            "-n",
            &me.server,
            "route",
            "add",
            "10.88.0.0/24",
            "via",
            &via,
            "dev",
            SERVER_DEV,
        ]);
        refuse_unicast_in_broadcast(&me.server);
        // The server's frames reach AF_XDP as they are: make its UDP checksums real.
        in_netns(&me.server, &["ethtool", "-K", SERVER_DEV, "tx", "off"]);
        me
    }

    /// Start the data plane: AF_XDP outside and inside, two workers.
    fn start(&mut self, next_hop_mac: &str) {
        self.dp.start(&format!(
            "backend = \"af_xdp\"\ninterface = \"{GW_DEV}\"\nlisten = \"{GW_ADDR}:{TUNNEL_PORT}\"\n\
             cpus = [0, 1]\nsession_capacity = 1024\n[inside]\nkind = \"af_xdp\"\n\
             interface = \"{INSIDE_DEV}\"\nnext_hop_mac = \"{next_hop_mac}\"\n[af_xdp]\n\
             frames = 1024\nring_size = 512\n"
        ));
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        self.dp.kill();
        for ns in [&self.gw, &self.client, &self.server] {
            let _ = Proc::new("ip").args(["netns", "del", ns]).output();
        }
    }
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

fn up(client: &UdpSocket, server: &UdpSocket, sim: &mut Sim, topo: &Topology) {
    let gw = SocketAddr::from((GW_ADDR, TUNNEL_PORT));
    for i in 0..PACKETS {
        client
            .send_to(&sealed(sim, &payload("up", i)), gw)
            .expect("send");
    }
    expect_payloads(server, "up", PACKETS, &|| topo.dp.log(), |b| b.to_vec());
}

fn down(client: &UdpSocket, server: &UdpSocket, sim: &mut Sim, topo: &Topology) {
    for i in 0..PACKETS {
        server
            .send_to(&payload("down", i), SocketAddr::from(CLIENT_INNER))
            .expect("send");
    }
    expect_payloads(client, "down", PACKETS, &|| topo.dp.log(), |b| {
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
    let mut ctl = Control::connect(&topo.dp.socket());
    match ctl.one(&ToDataplane::Hello) {
        FromDataplane::HelloAck {
            workers,
            backend,
            sessions,
        } => assert_eq!(
            (workers, backend, sessions),
            (2, Backend::AfXdp, 0),
            "{}",
            topo.dp.log()
        ),
        other => panic!("{other:?}"),
    }
    assert!(
        topo.dp.log().contains("inside interface chosen"),
        "{}",
        topo.dp.log()
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
    assert_eq!(ctl.one(&install_session(&sim, sid)), FromDataplane::Done);

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

    // Both directions done (each counter is published by its own worker, at its own pace).
    let s = ctl.stats_when(|s| {
        total(s, |w| w.sent) >= u64::from(PACKETS)
            && total(s, |w| w.delivered) >= u64::from(PACKETS)
    });
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
    let status = topo.dp.stop();
    assert!(status.success(), "exit {status:?}:\n{}", topo.dp.log());
    assert!(
        !xdp_attached(&topo.gw, GW_DEV),
        "outside XDP still attached"
    );
    assert!(
        !xdp_attached(&topo.gw, INSIDE_DEV),
        "inside XDP still attached"
    );
    assert!(
        !topo.dp.socket().exists(),
        "control socket file left behind"
    );
}
