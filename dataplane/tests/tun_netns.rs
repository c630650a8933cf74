//! The inside interface through a real TUN device: a worker decrypts a client's packets and
//! writes the inner IPv4/UDP packets to a TUN device in a fresh network namespace, where a
//! UDP socket receives them; the socket's replies come back out of the TUN device, the worker
//! seals them toward the active path, and the protocol's client opens them to the same bytes.
//!
//! Needs root (namespaces, TUN). Without root it prints `SKIPPED: needs root` and returns;
//! with `JUMPING_REQUIRE_BPF_TESTS=1` (set by CI) it fails instead.

mod support;
use support::{enter_netns, ip, setup, skip_unless_root};

use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::process::Command as Proc;
use std::time::{Duration, Instant as WallInstant};

use jumping_dataplane::tun::Tun;
use jumping_dataplane::worker::Rx;
use jumping_protocol::client::{ClientOutput, LocalPath};
use jumping_protocol::wire::{DATA_HEADER_LEN, TAG_LEN};

const PACKETS: u32 = 50;
const TUN_DEV: &str = "jtun0";
const INSIDE_ADDR: Ipv4Addr = Ipv4Addr::new(10, 99, 0, 1);
const INSIDE_PORT: u16 = 9000;
const REMOTE_ADDR: Ipv4Addr = Ipv4Addr::new(10, 99, 0, 2);
const REMOTE_PORT: u16 = 5555;
/// Bound on waiting for any one direction's packets.
const LIMIT: Duration = Duration::from_secs(5);
const IPV4_HEADER_LEN: usize = 20;
const UDP_HEADER_LEN: usize = 8;

/// A fresh network namespace, deleted on drop (also when the test panics), which destroys
/// the TUN device in it.
struct Netns {
    name: String,
}

impl Netns {
    fn new() -> Self {
        let me = Self {
            name: format!("jt-tun-{}", std::process::id()),
        };
        ip(&["netns", "add", &me.name]);
        me
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Proc::new("ip").args(["netns", "del", &self.name]).output();
    }
}

fn payload(i: u32) -> Vec<u8> {
    let mut p = i.to_be_bytes().to_vec();
    p.extend_from_slice(b" an inner packet through the TUN device");
    p
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

/// An IPv4/UDP packet with a valid header checksum and UDP checksum 0 (none, allowed for
/// IPv4).
fn ipv4_udp(src: (Ipv4Addr, u16), dst: (Ipv4Addr, u16), id: u16, data: &[u8]) -> Vec<u8> {
    let udp_len = UDP_HEADER_LEN + data.len();
    let total = IPV4_HEADER_LEN + udp_len;
    let mut p = Vec::with_capacity(total);
    p.extend_from_slice(&[0x45, 0]);
    p.extend_from_slice(&u16::try_from(total).expect("fits").to_be_bytes());
    p.extend_from_slice(&id.to_be_bytes());
    p.extend_from_slice(&[0x40, 0, 64, libc::IPPROTO_UDP as u8, 0, 0]);
    p.extend_from_slice(&src.0.octets());
    p.extend_from_slice(&dst.0.octets());
    let csum = ipv4_checksum(&p);
    p[10..12].copy_from_slice(&csum.to_be_bytes());
    p.extend_from_slice(&src.1.to_be_bytes());
    p.extend_from_slice(&dst.1.to_be_bytes());
    p.extend_from_slice(&u16::try_from(udp_len).expect("fits").to_be_bytes());
    p.extend_from_slice(&[0, 0]);
    p.extend_from_slice(data);
    p
}

/// The UDP datagram in `pkt` if it is an IPv4/UDP packet from `src` to `dst` (no options),
/// after checking the IPv4 header checksum and lengths.
fn parse_ipv4_udp(pkt: &[u8], src: (Ipv4Addr, u16), dst: (Ipv4Addr, u16)) -> Option<&[u8]> {
    if pkt.len() < IPV4_HEADER_LEN + UDP_HEADER_LEN || pkt[0] != 0x45 {
        return None;
    }
    if pkt[9] != libc::IPPROTO_UDP as u8
        || pkt[12..16] != src.0.octets()
        || pkt[16..20] != dst.0.octets()
    {
        return None;
    }
    assert_eq!(ipv4_checksum(&pkt[..IPV4_HEADER_LEN]), 0, "IPv4 checksum");
    assert_eq!(usize::from(u16::from_be_bytes([pkt[2], pkt[3]])), pkt.len());
    let udp = &pkt[IPV4_HEADER_LEN..];
    if u16::from_be_bytes([udp[0], udp[1]]) != src.1
        || u16::from_be_bytes([udp[2], udp[3]]) != dst.1
    {
        return None;
    }
    assert_eq!(usize::from(u16::from_be_bytes([udp[4], udp[5]])), udp.len());
    Some(&udp[UDP_HEADER_LEN..])
}

fn index_of(data: &[u8]) -> usize {
    assert_eq!(data.len(), payload(0).len(), "payload length");
    let i = u32::from_be_bytes(data[..4].try_into().expect("4 bytes"));
    assert_eq!(data, payload(i), "payload bytes");
    usize::try_from(i).expect("fits")
}

/// Runs in a thread that has entered the namespace, so the TUN device and the socket live
/// there.
fn run_inside(ns: &str) {
    enter_netns(ns);
    let tun = Tun::create(TUN_DEV).expect("create TUN device");
    assert_eq!(tun.name(), TUN_DEV);
    ip(&["-n", ns, "link", "set", "dev", "lo", "up"]);
    ip(&[
        "-n",
        ns,
        "addr",
        "add",
        &format!("{INSIDE_ADDR}/24"),
        "dev",
        TUN_DEV,
    ]);
    ip(&["-n", ns, "link", "set", "dev", TUN_DEV, "up"]);
    let sock = UdpSocket::bind(SocketAddr::from((INSIDE_ADDR, INSIDE_PORT))).expect("bind");
    sock.set_read_timeout(Some(LIMIT)).expect("timeout");

    let (mut sim, sid, mut worker, _tx, active) = setup();
    let inside = (INSIDE_ADDR, INSIDE_PORT);
    let remote = (REMOTE_ADDR, REMOTE_PORT);

    // Client → worker → TUN → socket.
    for i in 0..PACKETS {
        let inner = ipv4_udp(remote, inside, i as u16, &payload(i));
        let mut buf = vec![0u8; DATA_HEADER_LEN + inner.len() + TAG_LEN];
        buf[DATA_HEADER_LEN..DATA_HEADER_LEN + inner.len()].copy_from_slice(&inner);
        let (_, len) = sim
            .client
            .encapsulate(sim.now, &mut buf, inner.len())
            .expect("established");
        buf.truncate(len);
        match worker.handle_rx(sim.now, active, &mut buf) {
            Rx::Deliver { id, packet, .. } => {
                assert_eq!((id, &*packet), (sid, &inner[..]));
                tun.write_packet(packet).expect("write to TUN");
            }
            other => panic!("packet {i} not delivered: {other:?}"),
        }
    }
    let mut seen = vec![0u32; PACKETS as usize];
    let mut rbuf = [0u8; 2048];
    for _ in 0..PACKETS {
        let (n, from) = sock
            .recv_from(&mut rbuf)
            .expect("inner packet reached the socket within the time limit");
        assert_eq!(from, SocketAddr::from(remote));
        seen[index_of(&rbuf[..n])] += 1;
    }
    sock.set_read_timeout(Some(Duration::from_millis(200)))
        .expect("timeout");
    assert!(sock.recv_from(&mut rbuf).is_err(), "an extra datagram");
    assert!(seen.iter().all(|&c| c == 1), "inbound counts: {seen:?}");

    // Socket → TUN → worker → client.
    for i in 0..PACKETS {
        sock.send_to(&payload(i), SocketAddr::from(remote))
            .expect("send");
    }
    let mut seen = vec![0u32; PACKETS as usize];
    let mut other_packets = 0u32;
    let mut got = 0u32;
    let deadline = WallInstant::now() + LIMIT;
    let mut pkt = [0u8; 2048];
    while got < PACKETS {
        assert!(
            WallInstant::now() < deadline,
            "only {got} of {PACKETS} packets came out of the TUN device"
        );
        let Some(n) = tun.read_packet(&mut pkt).expect("read from TUN") else {
            std::thread::sleep(Duration::from_millis(1));
            continue;
        };
        let Some(data) = parse_ipv4_udp(&pkt[..n], inside, remote) else {
            // The kernel's own traffic on the link (IPv6 router solicitations, MLD).
            other_packets += 1;
            assert!(other_packets < 100, "too much unrelated traffic");
            continue;
        };
        seen[index_of(data)] += 1;
        got += 1;
        let mut buf = vec![0u8; DATA_HEADER_LEN + n + TAG_LEN];
        buf[DATA_HEADER_LEN..DATA_HEADER_LEN + n].copy_from_slice(&pkt[..n]);
        let (dst, len) = worker.encapsulate(sid, &mut buf, n).expect("sealed");
        assert_eq!(dst, active);
        buf.truncate(len);
        match sim.client.handle_datagram(sim.now, LocalPath(0), &mut buf) {
            ClientOutput::Deliver(p) => assert_eq!(&*p, &pkt[..n]),
            other => panic!("client did not accept the worker's packet: {other:?}"),
        }
    }
    std::thread::sleep(Duration::from_millis(200));
    for _ in 0..100 {
        let Some(n) = tun.read_packet(&mut pkt).expect("read from TUN") else {
            break;
        };
        assert!(
            parse_ipv4_udp(&pkt[..n], inside, remote).is_none(),
            "an extra outbound packet"
        );
    }
    assert!(seen.iter().all(|&c| c == 1), "outbound counts: {seen:?}");
    let c = worker.counters();
    assert_eq!(
        (c.delivered, c.sealed),
        (u64::from(PACKETS), u64::from(PACKETS))
    );
}

#[test]
fn inner_packets_cross_a_tun_device_both_ways() {
    if skip_unless_root() {
        return;
    }
    let ns = Netns::new();
    let name = ns.name.clone();
    let result = std::thread::spawn(move || run_inside(&name)).join();
    drop(ns);
    if let Err(e) = result {
        std::panic::resume_unwind(e);
    }
    let out = Proc::new("ip")
        .args(["netns", "list"])
        .output()
        .expect("ip netns list");
    let list = String::from_utf8_lossy(&out.stdout);
    assert!(
        !list.contains(&format!("jt-tun-{}", std::process::id())),
        "namespace left behind: {list}"
    );
}
