//! Run the inside NIC's XDP program (`xdp/jumping_inside.c`) on crafted frames with
//! `BPF_PROG_TEST_RUN`.
//!
//! Needs root (loading BPF, mounting a private bpffs). Without root the test prints
//! `SKIPPED ... (not root)` on stderr and returns; with `JUMPING_REQUIRE_BPF_TESTS=1` it fails
//! instead. Under TEST_RUN no AF_XDP socket is bound, so a packet to a client address is
//! redirected into an empty `inside_xsks` slot and falls back to `XDP_PASS`; what tells it
//! apart from a plain pass is the helper's verdict being the fallback, so the table also runs
//! every frame with the route removed and checks the program did not touch the frame.

use std::io::Write as _;
use std::net::IpAddr;
use std::os::fd::AsFd as _;

use jumping_ebpf::test_run::{self, BpffsMount};
use jumping_ebpf::{map_names, InsideRoutes, XdpAction};

const CLIENT4: &str = "10.88.0.2";
const CLIENT6: &str = "fd00:88::2";

fn eth(ethertype: u16, payload: &[u8]) -> Vec<u8> {
    let mut f = vec![0x02, 0, 0, 0, 0, 0x01, 0x02, 0, 0, 0, 0, 0x02];
    f.extend_from_slice(&ethertype.to_be_bytes());
    f.extend_from_slice(payload);
    if f.len() < 60 {
        f.resize(60, 0);
    }
    f
}

fn ipv4_to(dst: [u8; 4]) -> Vec<u8> {
    let mut h = vec![0x45, 0, 0, 28, 0, 1, 0x40, 0, 64, 17, 0, 0, 10, 89, 0, 2];
    h.extend_from_slice(&dst);
    h.extend_from_slice(&[0x23, 0x28, 0x15, 0xb3, 0, 8, 0, 0]);
    h
}

fn ipv6_to(dst: [u8; 16]) -> Vec<u8> {
    let mut h = vec![0x60, 0, 0, 0, 0, 8, 17, 64];
    h.extend_from_slice(&[0xfd, 0, 0, 0x89, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2]);
    h.extend_from_slice(&dst);
    h.extend_from_slice(&[0x23, 0x28, 0x15, 0xb3, 0, 8, 0, 0]);
    h
}

fn skip_unless_root(test: &str) -> bool {
    if test_run::is_root() {
        return false;
    }
    assert!(
        std::env::var_os("JUMPING_REQUIRE_BPF_TESTS").is_none_or(|v| v != "1"),
        "{test}: JUMPING_REQUIRE_BPF_TESTS=1 but not running as root"
    );
    let _ = writeln!(
        std::io::stderr(),
        "SKIPPED {test}: BPF_PROG_TEST_RUN needs root (load BPF, mount bpffs); run as root"
    );
    true
}

#[test]
fn inside_program_steers_only_client_addresses() {
    if skip_unless_root("inside_program_steers_only_client_addresses") {
        return;
    }
    let mount = BpffsMount::new().expect("mount a private bpffs");
    let mut ebpf = jumping_ebpf::load_inside(mount.path()).expect("load the inside object");
    for name in [map_names::INSIDE_ROUTES, map_names::INSIDE_XSKS] {
        assert!(mount.path().join(name).exists(), "{name} not pinned");
    }
    let mut routes = InsideRoutes::take(&mut ebpf).expect("inside_routes");
    let c4: IpAddr = CLIENT4.parse().expect("addr");
    let c6: IpAddr = CLIENT6.parse().expect("addr");
    routes.add(c4).expect("route");
    routes.add(c6).expect("route");
    assert!(routes.contains(c4) && routes.contains(c6));
    let IpAddr::V6(c6a) = c6 else { unreachable!() };

    let v4_client = eth(0x0800, &ipv4_to([10, 88, 0, 2]));
    let v6_client = eth(0x86DD, &ipv6_to(c6a.octets()));
    let cases: Vec<(&str, Vec<u8>, XdpAction)> = vec![
        // Empty inside_xsks slot under TEST_RUN: the redirect's fallback.
        ("IPv4 to a client", v4_client.clone(), XdpAction::Pass),
        ("IPv6 to a client", v6_client.clone(), XdpAction::Pass),
        (
            "IPv4 to another address",
            eth(0x0800, &ipv4_to([10, 88, 0, 3])),
            XdpAction::Pass,
        ),
        (
            "IPv4 to the gateway",
            eth(0x0800, &ipv4_to([10, 89, 0, 1])),
            XdpAction::Pass,
        ),
        (
            "IPv6 to another address",
            eth(
                0x86DD,
                &ipv6_to([0xfd, 0, 0, 0x88, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 3]),
            ),
            XdpAction::Pass,
        ),
        (
            "ARP",
            eth(0x0806, &[0, 1, 8, 0, 6, 4, 0, 1]),
            XdpAction::Pass,
        ),
        // TEST_RUN refuses frames shorter than an Ethernet header: the shortest is a header
        // with no IP header behind it.
        (
            "IPv4 ethertype, no IP header",
            v4_client[..14].to_vec(),
            XdpAction::Pass,
        ),
        ("truncated IPv4", v4_client[..30].to_vec(), XdpAction::Pass),
        ("truncated IPv6", v6_client[..50].to_vec(), XdpAction::Pass),
        (
            "VLAN",
            eth(0x8100, &[0, 5, 8, 0, 0x45, 0, 0, 28]),
            XdpAction::Pass,
        ),
    ];
    let prog = jumping_ebpf::inside_program(&mut ebpf).expect("program");
    let fd = prog.fd().expect("loaded program fd");
    let mut failures = Vec::new();
    for (name, frame, want) in &cases {
        let out = test_run::run_xdp(fd.as_fd(), frame)
            .unwrap_or_else(|e| panic!("{name}: BPF_PROG_TEST_RUN: {e}"));
        if out.action() != Some(*want) {
            failures.push(format!("{name}: {:?}, want {want:?}", out.action()));
        }
        if out.data_out != *frame {
            failures.push(format!("{name}: the program modified the frame"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));

    routes.remove(c4).expect("unroute");
    routes.remove(c4).expect("removing an absent route is fine");
    assert!(!routes.contains(c4) && routes.contains(c6));
    assert_eq!(routes.clear().expect("clear"), 1);
    assert!(!routes.contains(c6));
    drop(routes);
    drop(ebpf);
    let dir = mount.path().to_owned();
    drop(mount);
    assert!(!dir.exists(), "{} left behind", dir.display());
}
