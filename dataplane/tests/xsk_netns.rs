//! AF_XDP receive path end to end on a veth pair between two network namespaces the test
//! creates: the project's XDP program is attached in native (DRV) mode to the gateway-side
//! veth, an [`XskRx`] socket on its queue 0 is put into the program's `xsks` map, and the
//! protocol client's real encrypted datagrams, sent from a UDP socket in the client
//! namespace, must reach the worker through AF_XDP and be delivered exactly once each.
//!
//! Needs root (namespaces, BPF, bpffs). Without root it prints `SKIPPED: needs root` and
//! returns; with `JUMPING_REQUIRE_BPF_TESTS=1` (set by CI) it fails instead.

use std::fs::File;
use std::io::Write as _;
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsRawFd as _;
use std::process::Command as Proc;
use std::sync::mpsc;
use std::time::{Duration, Instant as WallInstant};

use aya::programs::XdpFlags;
use jumping_dataplane::commands::{channel, Command};
use jumping_dataplane::worker::{DataSession, SessionUpdate, Worker};
use jumping_dataplane::xsk::{XskConfig, XskRx};
use jumping_ebpf::test_run::BpffsMount;
use jumping_ebpf::{Counter, SessionOwner};
use jumping_protocol::testing::Sim;
use jumping_protocol::wire::{DATA_HEADER_LEN, TAG_LEN};
use jumping_protocol::{Path, Policy};

const PACKETS: u32 = 200;
const TUNNEL_PORT: u16 = 51_820;
const CLIENT_PORT: u16 = 40_000;
const GW_ADDR: &str = "10.77.0.1";
const CLIENT_ADDR: &str = "10.77.0.2";
const GW_MAC: &str = "02:77:00:00:00:01";
const CLIENT_MAC: &str = "02:77:00:00:00:02";
const GW_DEV: &str = "jxgw0";
const CLIENT_DEV: &str = "jxcl0";
/// Bound on waiting for the gateway to come up and for all packets to arrive.
const LIMIT: Duration = Duration::from_secs(20);

fn is_root() -> bool {
    jumping_ebpf::test_run::is_root()
}

fn skip_unless_root() -> bool {
    if is_root() {
        return false;
    }
    assert!(
        std::env::var_os("JUMPING_REQUIRE_BPF_TESTS").is_none_or(|v| v != "1"),
        "JUMPING_REQUIRE_BPF_TESTS=1 but not running as root"
    );
    let _ = writeln!(std::io::stderr(), "SKIPPED: needs root");
    true
}

fn ip(args: &[&str]) {
    let out = Proc::new("ip").args(args).output().expect("run ip");
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Two namespaces joined by a veth pair; deleting the namespaces (on drop, also when the test
/// panics) destroys the veth pair and with it the attached XDP program.
struct Netns {
    gw: String,
    client: String,
}

impl Netns {
    fn new() -> Self {
        let pid = std::process::id();
        let me = Self {
            gw: format!("jx-gw-{pid}"),
            client: format!("jx-cl-{pid}"),
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
}

impl Drop for Netns {
    fn drop(&mut self) {
        for ns in [&self.gw, &self.client] {
            let _ = Proc::new("ip").args(["netns", "del", ns]).output();
        }
    }
}

/// Move the calling thread into the named network namespace.
fn enter_netns(name: &str) {
    let f = File::open(format!("/var/run/netns/{name}")).expect("open netns");
    // SAFETY: `f` is an open namespace file for the duration of the call; setns changes only
    // the calling thread's network namespace.
    let rc = unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) };
    assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
}

fn inner_packet(i: u32) -> Vec<u8> {
    let mut p = i.to_be_bytes().to_vec();
    p.extend_from_slice(b" an inner packet through AF_XDP");
    p
}

fn client_datagram(sim: &mut Sim, inner: &[u8]) -> Vec<u8> {
    let mut buf = vec![0u8; DATA_HEADER_LEN + inner.len() + TAG_LEN];
    buf[DATA_HEADER_LEN..DATA_HEADER_LEN + inner.len()].copy_from_slice(inner);
    let (_, len) = sim
        .client
        .encapsulate(sim.now, &mut buf, inner.len())
        .expect("established");
    buf.truncate(len);
    buf
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
    let netns = Netns::new();

    // A session established by the protocol, handed to a worker whose active path is the
    // client socket in the client namespace.
    let mut sim = Sim::new(71, Policy::default());
    let sid = sim.connect();
    let handoff = sim.session(sid).handoff();
    let (mut tx, rx) = channel(16);
    let mut worker = Worker::new(sid.owner_core(), 1024, rx, Policy::default().key_grace);
    let client_addr: SocketAddr = format!("{CLIENT_ADDR}:{CLIENT_PORT}")
        .parse()
        .expect("addr");
    tx.send(Command::Install {
        id: sid,
        state: DataSession::from(handoff),
    })
    .expect("room");
    tx.send(Command::Update {
        id: sid,
        update: SessionUpdate::ActivePath(Some(Path::udp(client_addr))),
    })
    .expect("room");
    assert_eq!(worker.apply_commands(16).installed, 1);
    let datagrams: Vec<Vec<u8>> = (0..PACKETS)
        .map(|i| client_datagram(&mut sim, &inner_packet(i)))
        .collect();
    let now = sim.now;

    let (ready_tx, ready_rx) = mpsc::channel::<()>();
    let gw_ns = netns.gw.clone();
    let gateway = std::thread::spawn(move || {
        let _tx = tx; // keep the command channel open
        enter_netns(&gw_ns);
        // Drop order (reverse of declaration): socket, then program and maps, then bpffs.
        let mount = BpffsMount::new().expect("mount a private bpffs");
        let mut ebpf = jumping_ebpf::load(mount.path()).expect("load XDP object");
        jumping_ebpf::add_tunnel_port(&mut ebpf, TUNNEL_PORT).expect("tunnel port");
        jumping_ebpf::set_session_owner(&mut ebpf, sid, SessionOwner::new(0))
            .expect("session owner");
        let prog = jumping_ebpf::xdp_program(&mut ebpf).expect("program");
        let link = prog
            .attach(GW_DEV, XdpFlags::DRV_MODE)
            .expect("attach XDP in native mode");
        let mut xsk = XskRx::bind(
            GW_DEV,
            0,
            XskConfig {
                force_copy: true,
                ..XskConfig::default()
            },
        )
        .expect("bind AF_XDP socket");
        jumping_ebpf::set_xsk(&mut ebpf, 0, xsk.fd()).expect("xsks[0] = socket");
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
        let xdp = jumping_ebpf::read_counters(&ebpf).expect("counters");
        let result = GatewayResult {
            seen,
            xdp,
            xsk: xsk.counters().clone(),
            worker_delivered: worker.counters().delivered,
        };
        drop(xsk);
        jumping_ebpf::xdp_program(&mut ebpf)
            .expect("program")
            .detach(link)
            .expect("detach XDP");
        drop(ebpf);
        drop(mount);
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
