//! Run the real XDP program on crafted frames with `BPF_PROG_TEST_RUN`.
//!
//! Needs root (loading BPF, mounting a private bpffs for the pinned maps). Without root each
//! test prints `SKIPPED ... (not root)` on stderr and returns; with
//! `JUMPING_REQUIRE_BPF_TESTS=1` it fails instead. CI runs as root, so there they run.
//!
//! Under TEST_RUN no AF_XDP socket is bound, so `bpf_redirect_map` into the empty `xsks` slot
//! returns its fallback, `XDP_PASS`. The program counts that as `RedirectFailedPass` and
//! records the chosen queue in the per-CPU `last_queue` slot; the table checks both, plus the
//! steering counter that says where the owner came from.

use std::io::Write as _;
use std::os::fd::AsFd as _;

use aya::maps::{PerCpuArray, PerCpuValues};
use aya::Ebpf;
use jumping_ebpf::test_run::{self, BpffsMount, TestRunOutput};
use jumping_ebpf::{
    map_names, msg_type, Counter, SessionOwner, XdpAction, DATA_MIN_LEN, HEARTBEAT_LEN,
};
use jumping_protocol::wire::{self, MessageType, SessionId};

const TUNNEL_PORT: u16 = 51_820;
const OTHER_PORT: u16 = 53;
/// Owner byte 1, no `session_owner` entry: steered by its bits to queue 1.
const SID_BITS: SessionId = SessionId::compose(1, 0, 0xABCD_EF01_2345);
/// Owner byte 7, but `session_owner` says queue 3 (the map wins).
const SID_MAPPED: SessionId = SessionId::compose(7, 0, 0x0000_1111_2222);
const MAPPED_QUEUE: u32 = 3;
/// Owner byte 255: the last `xsks` slot.
const SID_LAST: SessionId = SessionId::compose(255, 9, 0x42);

const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86DD;
const ETH_P_8021Q: u16 = 0x8100;
const IPPROTO_TCP: u8 = 6;
const IPPROTO_UDP: u8 = 17;
const IPV6_NEXTHDR_FRAGMENT: u8 = 44;
const IP_MF: u16 = 0x2000;

// ---- Frame builders ----------------------------------------------------------------------------

/// Ethernet frame, padded to the 60-byte minimum like a real NIC delivers it.
fn eth(ethertype: u16, payload: &[u8]) -> Vec<u8> {
    let mut f = vec![0x02, 0, 0, 0, 0, 0x01, 0x02, 0, 0, 0, 0, 0x02];
    f.extend_from_slice(&ethertype.to_be_bytes());
    f.extend_from_slice(payload);
    if f.len() < 60 {
        f.resize(60, 0);
    }
    f
}

fn ipv4_opts(proto: u8, frag_off: u16, options: &[u8], l4: &[u8]) -> Vec<u8> {
    assert_eq!(options.len() % 4, 0);
    let hlen = 20 + options.len();
    let ihl = u8::try_from(hlen / 4).expect("ihl");
    let tot = u16::try_from(hlen + l4.len()).expect("tot_len");
    let mut h = vec![0x40 | ihl, 0];
    h.extend_from_slice(&tot.to_be_bytes());
    h.extend_from_slice(&[0x12, 0x34]); // id
    h.extend_from_slice(&frag_off.to_be_bytes());
    h.extend_from_slice(&[64, proto, 0, 0]); // ttl, protocol, checksum (filled below)
    h.extend_from_slice(&[192, 0, 2, 1, 198, 51, 100, 7]);
    h.extend_from_slice(options);
    let mut sum: u32 = h
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], c[1]])))
        .sum();
    while sum > 0xFFFF {
        sum = (sum & 0xFFFF) + (sum >> 16);
    }
    let csum = !u16::try_from(sum).expect("folded");
    h[10..12].copy_from_slice(&csum.to_be_bytes());
    h.extend_from_slice(l4);
    h
}

fn ipv4(proto: u8, frag_off: u16, l4: &[u8]) -> Vec<u8> {
    ipv4_opts(proto, frag_off, &[], l4)
}

fn ipv6(next: u8, l4: &[u8]) -> Vec<u8> {
    let mut h = vec![0x60, 0, 0, 0];
    h.extend_from_slice(&u16::try_from(l4.len()).expect("payload_len").to_be_bytes());
    h.extend_from_slice(&[next, 64]);
    let mut src = [0u8; 16];
    src[..4].copy_from_slice(&[0x20, 0x01, 0x0d, 0xb8]);
    src[15] = 1;
    let mut dst = src;
    dst[15] = 2;
    h.extend_from_slice(&src);
    h.extend_from_slice(&dst);
    h.extend_from_slice(l4);
    h
}

/// UDP datagram with an honest length field (checksum 0: XDP does not check it).
fn udp(dport: u16, payload: &[u8]) -> Vec<u8> {
    udp_len(
        dport,
        payload,
        u16::try_from(8 + payload.len()).expect("udp len"),
    )
}

fn udp_len(dport: u16, payload: &[u8], len_field: u16) -> Vec<u8> {
    let mut u = Vec::new();
    u.extend_from_slice(&40_000u16.to_be_bytes());
    u.extend_from_slice(&dport.to_be_bytes());
    u.extend_from_slice(&len_field.to_be_bytes());
    u.extend_from_slice(&[0, 0]);
    u.extend_from_slice(payload);
    u
}

/// A transport message (data/heartbeat/terminate) of `len` bytes.
fn transport(ty: MessageType, sid: SessionId, len: usize) -> Vec<u8> {
    let mut m = vec![0u8; len.max(wire::DATA_HEADER_LEN)];
    wire::put_transport_header(&mut m, ty, 3, sid, 99);
    m.truncate(len);
    m
}

/// A message of `len` bytes whose first bytes are `head`.
fn raw_msg(head: &[u8], len: usize) -> Vec<u8> {
    let mut m = head.to_vec();
    m.resize(len, 0xEE);
    m
}

fn v4_tunnel(msg: &[u8]) -> Vec<u8> {
    eth(ETH_P_IP, &ipv4(IPPROTO_UDP, 0, &udp(TUNNEL_PORT, msg)))
}

fn v6_tunnel(msg: &[u8]) -> Vec<u8> {
    eth(ETH_P_IPV6, &ipv6(IPPROTO_UDP, &udp(TUNNEL_PORT, msg)))
}

// ---- Harness -----------------------------------------------------------------------------------

/// A loaded program with its maps pinned in a private bpffs. Field order matters: the object
/// is dropped (fds closed) before the mount goes away.
struct Loaded {
    ebpf: Ebpf,
    mount: BpffsMount,
}

fn skip_unless_root(test: &str) -> bool {
    if test_run::is_root() {
        return false;
    }
    assert!(
        std::env::var_os("JUMPING_REQUIRE_BPF_TESTS").is_none_or(|v| v != "1"),
        "{test}: JUMPING_REQUIRE_BPF_TESTS=1 but not running as root"
    );
    // Straight to stderr, past the test harness's capture, so the skip is visible.
    let _ = writeln!(
        std::io::stderr(),
        "SKIPPED {test}: BPF_PROG_TEST_RUN needs root (load BPF, mount bpffs); run as root"
    );
    true
}

fn load_in(mount: BpffsMount) -> Loaded {
    let ebpf = jumping_ebpf::load(mount.path()).expect("load XDP object (verifier log above?)");
    Loaded { ebpf, mount }
}

fn setup() -> Loaded {
    let mut l = load_in(BpffsMount::new().expect("mount a private bpffs"));
    jumping_ebpf::add_tunnel_port(&mut l.ebpf, TUNNEL_PORT).expect("tunnel port");
    jumping_ebpf::set_session_owner(&mut l.ebpf, SID_MAPPED, SessionOwner::new(MAPPED_QUEUE))
        .expect("session owner");
    l
}

fn run(ebpf: &mut Ebpf, frame: &[u8]) -> TestRunOutput {
    let prog = jumping_ebpf::xdp_program(ebpf).expect("program");
    let fd = prog.fd().expect("loaded program fd");
    test_run::run_xdp(fd.as_fd(), frame).expect("BPF_PROG_TEST_RUN")
}

const NO_QUEUE: u32 = u32::MAX;

fn reset_last_queue(ebpf: &mut Ebpf) {
    let map = ebpf.map_mut(map_names::LAST_QUEUE).expect("last_queue map");
    let mut slots: PerCpuArray<_, u32> = PerCpuArray::try_from(map).expect("per-cpu array");
    let ncpu = aya::util::nr_cpus().expect("nr_cpus");
    let values = PerCpuValues::try_from(vec![NO_QUEUE; ncpu]).expect("values");
    slots.set(0, values, 0).expect("reset last_queue");
}

/// The queue the program recorded since the last reset, if any (whichever CPU ran it).
fn recorded_queue(ebpf: &Ebpf) -> Option<u32> {
    let slots = jumping_ebpf::read_last_queue(ebpf).expect("last_queue");
    let set: Vec<u32> = slots.into_iter().filter(|q| *q != NO_QUEUE).collect();
    assert!(
        set.len() <= 1,
        "more than one CPU recorded a queue: {set:?}"
    );
    set.first().copied()
}

struct Case {
    name: &'static str,
    frame: Vec<u8>,
    action: XdpAction,
    outcome: Counter,
    /// For steered packets: where the owner came from and the queue chosen.
    steer: Option<(Counter, u32)>,
}

fn case(name: &'static str, frame: Vec<u8>, action: XdpAction, outcome: Counter) -> Case {
    Case {
        name,
        frame,
        action,
        outcome,
        steer: None,
    }
}

fn steered(name: &'static str, frame: Vec<u8>, via: Counter, queue: u32) -> Case {
    Case {
        name,
        frame,
        // No AF_XDP socket under TEST_RUN: the redirect falls back to XDP_PASS.
        action: XdpAction::Pass,
        outcome: Counter::RedirectFailedPass,
        steer: Some((via, queue)),
    }
}

fn cases() -> Vec<Case> {
    use Counter::*;
    use XdpAction::{Drop, Pass};
    let data = |sid, len| transport(MessageType::Data, sid, len);
    let hb = |sid, len| transport(MessageType::Heartbeat, sid, len);
    let hs_init = raw_msg(
        &[wire::VERSION, msg_type::HANDSHAKE_INIT, 0, 0],
        wire::HANDSHAKE_INIT_LEN,
    );
    let v4_data_100 = ipv4(IPPROTO_UDP, 0, &udp(TUNNEL_PORT, &data(SID_BITS, 100)));
    let mut vlan = vec![0x00, 0x05]; // TCI: VLAN 5
    vlan.extend_from_slice(&ETH_P_IP.to_be_bytes());
    vlan.extend_from_slice(&v4_data_100);
    let mut frag6 = vec![IPPROTO_UDP, 0, 0x00, 0x01, 0, 0, 0, 7]; // next UDP, offset 0, M=1
    frag6.extend_from_slice(&udp(TUNNEL_PORT, &data(SID_BITS, 100)));

    vec![
        // Steered: data and heartbeat, IPv4 and IPv6, owner from the map or the SessionId.
        steered(
            "valid data IPv4",
            v4_tunnel(&data(SID_BITS, 100)),
            SteerSidBits,
            1,
        ),
        steered(
            "valid data IPv6 (session_owner entry)",
            v6_tunnel(&data(SID_MAPPED, 100)),
            SteerSessionMap,
            MAPPED_QUEUE,
        ),
        steered(
            "valid data IPv6 (SessionId bits)",
            v6_tunnel(&data(SID_BITS, 1200)),
            SteerSidBits,
            1,
        ),
        steered(
            "data IPv4 (session_owner entry)",
            v4_tunnel(&data(SID_MAPPED, 64)),
            SteerSessionMap,
            MAPPED_QUEUE,
        ),
        steered(
            "data of exactly 36 bytes",
            v4_tunnel(&data(SID_BITS, DATA_MIN_LEN)),
            SteerSidBits,
            1,
        ),
        steered(
            "data, owner byte 255",
            v4_tunnel(&data(SID_LAST, 80)),
            SteerSidBits,
            255,
        ),
        steered(
            "data IPv4 with IP options",
            eth(
                ETH_P_IP,
                &ipv4_opts(
                    IPPROTO_UDP,
                    0,
                    &[1, 1, 1, 0],
                    &udp(TUNNEL_PORT, &data(SID_BITS, 50)),
                ),
            ),
            SteerSidBits,
            1,
        ),
        steered(
            "heartbeat IPv4",
            v4_tunnel(&hb(SID_BITS, HEARTBEAT_LEN)),
            SteerSidBits,
            1,
        ),
        steered(
            "heartbeat IPv6",
            v6_tunnel(&hb(SID_MAPPED, HEARTBEAT_LEN)),
            SteerSessionMap,
            MAPPED_QUEUE,
        ),
        // Control messages go to the kernel.
        case("handshake init", v4_tunnel(&hs_init), Pass, PassControl),
        case(
            "handshake init IPv6",
            v6_tunnel(&hs_init),
            Pass,
            PassControl,
        ),
        case(
            "terminate",
            v4_tunnel(&transport(MessageType::Terminate, SID_BITS, 44)),
            Pass,
            PassControl,
        ),
        case(
            "reattach request",
            v4_tunnel(&raw_msg(
                &[wire::VERSION, msg_type::REATTACH_REQUEST],
                wire::REATTACH_REQUEST_LEN,
            )),
            Pass,
            PassControl,
        ),
        // Malformed tunnel messages are dropped.
        case(
            "truncated tunnel header (3 bytes, padded frame)",
            v4_tunnel(&[wire::VERSION, msg_type::DATA, 0]),
            Drop,
            DropTruncated,
        ),
        case("empty UDP payload", v4_tunnel(&[]), Drop, DropTruncated),
        case(
            "UDP length beyond the frame",
            eth(
                ETH_P_IP,
                &ipv4(
                    IPPROTO_UDP,
                    0,
                    &udp_len(TUNNEL_PORT, &data(SID_BITS, 40), 8 + 400),
                ),
            ),
            Drop,
            DropTruncated,
        ),
        case(
            "UDP length below 8",
            eth(
                ETH_P_IP,
                &ipv4(
                    IPPROTO_UDP,
                    0,
                    &udp_len(TUNNEL_PORT, &data(SID_BITS, 40), 4),
                ),
            ),
            Drop,
            DropTruncated,
        ),
        case(
            "bad version",
            v4_tunnel(&raw_msg(&[2, msg_type::DATA], 100)),
            Drop,
            DropBadVersion,
        ),
        case(
            "bad version IPv6",
            v6_tunnel(&raw_msg(&[0, msg_type::DATA], 100)),
            Drop,
            DropBadVersion,
        ),
        case(
            "unknown type 12",
            v4_tunnel(&raw_msg(&[wire::VERSION, 12], 100)),
            Drop,
            DropUnknownType,
        ),
        case(
            "unknown type 0",
            v4_tunnel(&raw_msg(&[wire::VERSION, 0], 100)),
            Drop,
            DropUnknownType,
        ),
        case(
            "data shorter than 36",
            v4_tunnel(&data(SID_BITS, DATA_MIN_LEN - 1)),
            Drop,
            DropBadLength,
        ),
        case(
            "data of 20 bytes IPv6",
            v6_tunnel(&data(SID_BITS, 20)),
            Drop,
            DropBadLength,
        ),
        case(
            "heartbeat of 59 bytes",
            v4_tunnel(&hb(SID_BITS, HEARTBEAT_LEN - 1)),
            Drop,
            DropBadLength,
        ),
        case(
            "heartbeat of 61 bytes",
            v4_tunnel(&hb(SID_BITS, HEARTBEAT_LEN + 1)),
            Drop,
            DropBadLength,
        ),
        // Not tunnel traffic: untouched.
        case(
            "wrong UDP port",
            eth(
                ETH_P_IP,
                &ipv4(IPPROTO_UDP, 0, &udp(OTHER_PORT, &data(SID_BITS, 100))),
            ),
            Pass,
            PassNotTunnel,
        ),
        case(
            "wrong UDP port, garbage payload",
            eth(ETH_P_IPV6, &ipv6(IPPROTO_UDP, &udp(OTHER_PORT, &[9; 3]))),
            Pass,
            PassNotTunnel,
        ),
        case(
            "non-UDP (TCP) IPv4",
            eth(ETH_P_IP, &ipv4(IPPROTO_TCP, 0, &[0; 40])),
            Pass,
            PassNotTunnel,
        ),
        case(
            "non-UDP (TCP) IPv6",
            eth(ETH_P_IPV6, &ipv6(IPPROTO_TCP, &[0; 40])),
            Pass,
            PassNotTunnel,
        ),
        case("ARP", eth(0x0806, &[0; 28]), Pass, PassNotTunnel),
        case(
            "VLAN frame with tunnel data inside",
            eth(ETH_P_8021Q, &vlan),
            Pass,
            PassNotTunnel,
        ),
        case(
            "IPv4 header cut short",
            eth(
                ETH_P_IP,
                &ipv4(IPPROTO_UDP, 0, &udp(TUNNEL_PORT, &data(SID_BITS, 100))),
            )[..30]
                .to_vec(),
            Pass,
            PassNotTunnel,
        ),
        // IP fragments: passed for the kernel to reassemble.
        case(
            "IPv4 first fragment (MF) of tunnel data",
            eth(
                ETH_P_IP,
                &ipv4(IPPROTO_UDP, IP_MF, &udp(TUNNEL_PORT, &data(SID_BITS, 100))),
            ),
            Pass,
            PassFragment,
        ),
        case(
            "IPv4 non-first fragment",
            eth(ETH_P_IP, &ipv4(IPPROTO_UDP, 185, &[1; 64])),
            Pass,
            PassFragment,
        ),
        case(
            "IPv4 last fragment (offset, no MF)",
            eth(ETH_P_IP, &ipv4(IPPROTO_UDP, 1, &[wire::VERSION; 64])),
            Pass,
            PassFragment,
        ),
        case(
            "IPv6 fragment header",
            eth(ETH_P_IPV6, &ipv6(IPV6_NEXTHDR_FRAGMENT, &frag6)),
            Pass,
            PassFragment,
        ),
    ]
}

#[test]
fn xdp_verdicts_and_counters() {
    if skip_unless_root("xdp_verdicts_and_counters") {
        return;
    }
    let mut l = setup();
    let mut failures = Vec::new();
    for c in cases() {
        reset_last_queue(&mut l.ebpf);
        let before = jumping_ebpf::read_counters(&l.ebpf).expect("counters");
        let out = run(&mut l.ebpf, &c.frame);
        let after = jumping_ebpf::read_counters(&l.ebpf).expect("counters");

        let mut want = [0u64; Counter::COUNT];
        want[c.outcome.index() as usize] += 1;
        if let Some((via, _)) = c.steer {
            want[via.index() as usize] += 1;
        }
        let got: Vec<u64> = after
            .iter()
            .zip(before.iter())
            .map(|(a, b)| a - b)
            .collect();
        let queue = recorded_queue(&l.ebpf);

        let mut errs = Vec::new();
        if out.action() != Some(c.action) {
            errs.push(format!(
                "action {:?} (retval {}), want {:?}",
                out.action(),
                out.retval,
                c.action
            ));
        }
        if got != want {
            let show = |v: &[u64]| -> Vec<String> {
                Counter::ALL
                    .iter()
                    .zip(v)
                    .filter(|(_, n)| **n != 0)
                    .map(|(c, n)| format!("{}+{n}", c.as_str()))
                    .collect()
            };
            errs.push(format!("counters {:?}, want {:?}", show(&got), show(&want)));
        }
        if queue != c.steer.map(|(_, q)| q) {
            errs.push(format!(
                "last_queue {queue:?}, want {:?}",
                c.steer.map(|(_, q)| q)
            ));
        }
        if out.data_out != c.frame {
            errs.push("the program modified the frame".to_owned());
        }
        if !errs.is_empty() {
            failures.push(format!("{}: {}", c.name, errs.join("; ")));
        }
    }
    assert!(
        failures.is_empty(),
        "{} case(s) failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

/// Maps are pinned by name: a second load (a restarted gateway) reuses them, ports and owners
/// included; dropping the private bpffs leaves nothing behind.
#[test]
fn pinned_maps_survive_reload() {
    if skip_unless_root("pinned_maps_survive_reload") {
        return;
    }
    let frame = v4_tunnel(&transport(MessageType::Data, SID_MAPPED, 100));
    let Loaded { mut ebpf, mount } = setup();
    for name in [
        map_names::TUNNEL_PORTS,
        map_names::SESSION_OWNER,
        map_names::XSKS,
        map_names::COUNTERS,
        map_names::LAST_QUEUE,
    ] {
        assert!(mount.path().join(name).exists(), "{name} not pinned");
    }
    let out = run(&mut ebpf, &frame);
    assert_eq!(out.action(), Some(XdpAction::Pass));
    drop(ebpf);

    // "Restart": load again into the same pin directory, without re-adding port or owner.
    let Loaded { mut ebpf, mount } = load_in(mount);
    reset_last_queue(&mut ebpf);
    run(&mut ebpf, &frame);
    let counters = jumping_ebpf::read_counters(&ebpf).expect("counters");
    assert_eq!(
        counters[Counter::SteerSessionMap.index() as usize],
        2,
        "{counters:?}"
    );
    assert_eq!(
        counters[Counter::RedirectFailedPass.index() as usize],
        2,
        "{counters:?}"
    );
    assert_eq!(recorded_queue(&ebpf), Some(MAPPED_QUEUE));

    let dir = mount.path().to_owned();
    drop(ebpf);
    drop(mount);
    assert!(!dir.exists(), "{} left behind", dir.display());
}
