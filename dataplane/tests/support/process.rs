//! The `jumping-dataplane` process in a network namespace, and the test playing its control
//! process: start and stop it, talk to its control socket, build and check the traffic.

use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::process::{Child, Command as Proc, ExitStatus, Stdio};
use std::time::{Duration, Instant as WallInstant};

use jumping_dataplane::control::{read_message, write_message};
use jumping_dataplane_api::{Event, FromDataplane, Install, Stats, ToDataplane, WorkerStats};
use jumping_ebpf::test_run::BpffsMount;
use jumping_protocol::testing::Sim;
use jumping_protocol::wire::{DATA_HEADER_LEN, TAG_LEN};
use jumping_protocol::{Path, SessionId};

use super::{enter_netns, ip};

/// Bound on waiting for anything.
pub const LIMIT: Duration = Duration::from_secs(10);

/// The data-plane process, its temporary directory (configuration, log, control socket) and
/// its private bpffs; killed and removed on drop.
pub struct Dataplane {
    ns: String,
    dir: PathBuf,
    bpffs: Option<BpffsMount>,
    child: Option<Child>,
}

impl Dataplane {
    /// A data plane to run in namespace `ns` (not started).
    pub fn new(ns: &str, tag: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("jumping-dp-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temporary directory");
        Dataplane {
            ns: ns.to_owned(),
            dir,
            bpffs: None,
            child: None,
        }
    }

    /// Its control socket.
    pub fn socket(&self) -> PathBuf {
        self.dir.join("dataplane.sock")
    }

    /// Start it with `config` (TOML, without `control_socket` and `bpf_pin_dir`, which are
    /// added). The bpffs stays mounted across restarts, so a restart finds its pinned maps.
    pub fn start(&mut self, config: &str) {
        let bpffs = self
            .bpffs
            .take()
            .unwrap_or_else(|| BpffsMount::new().expect("mount a bpffs"));
        let text = format!(
            "control_socket = \"{}\"\nbpf_pin_dir = \"{}\"\n{config}",
            self.socket().display(),
            bpffs.path().join("jumping").display(),
        );
        self.bpffs = Some(bpffs);
        let path = self.dir.join("dataplane.toml");
        std::fs::write(&path, text).expect("write configuration");
        let log = std::fs::File::create(self.dir.join("dataplane.log")).expect("log file");
        let child = Proc::new("ip")
            .args(["netns", "exec", &self.ns])
            .arg(env!("CARGO_BIN_EXE_jumping-dataplane"))
            .arg("--config")
            .arg(&path)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start jumping-dataplane");
        self.child = Some(child);
    }

    /// What it logged.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("dataplane.log")).unwrap_or_default()
    }

    /// Send SIGTERM and wait for it to exit.
    pub fn stop(&mut self) -> ExitStatus {
        let mut child = self.child.take().expect("running");
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

    /// SIGKILL (a crash: no clean-up at all) and reap it.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Dataplane {
    fn drop(&mut self) {
        self.kill();
        self.bpffs = None;
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A veth pair with two queues each way, `(device, MAC, namespace)` on each end.
pub fn veth_pair(a: (&str, &str, &str), b: (&str, &str, &str)) {
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

/// Address `addr/24` on `dev` in `ns`, the link and loopback up.
pub fn address(ns: &str, dev: &str, addr: Ipv4Addr) {
    ip(&["-n", ns, "addr", "add", &format!("{addr}/24"), "dev", dev]);
    ip(&["-n", ns, "link", "set", "dev", dev, "up"]);
    ip(&["-n", ns, "link", "set", "dev", "lo", "up"]);
}

/// A permanent neighbour entry (no ARP round trip before a burst).
pub fn neigh(ns: &str, addr: Ipv4Addr, mac: &str, dev: &str) {
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

/// Run `cmd` inside `ns` (with the namespace's own /sys); panic with its errors if it fails.
pub fn in_netns(ns: &str, cmd: &[&str]) {
    let out = Proc::new("ip")
        .args(["netns", "exec", ns])
        .args(cmd)
        .output()
        .expect("ip netns exec");
    assert!(
        out.status.success(),
        "{cmd:?} in {ns}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Make `ns` drop unicast IP packets that arrive in a link-layer broadcast frame, so a
/// gateway that sends to ff:ff:ff:ff:ff:ff (it never learnt its next hop) fails the test.
pub fn refuse_unicast_in_broadcast(ns: &str) {
    in_netns(
        ns,
        &[
            "sysctl",
            "-qw",
            "net.ipv4.conf.all.drop_unicast_in_l2_multicast=1",
        ],
    );
}

/// Whether an XDP program is attached to `dev` in `ns`.
pub fn xdp_attached(ns: &str, dev: &str) -> bool {
    let out = Proc::new("ip")
        .args(["-n", ns, "link", "show", "dev", dev])
        .output()
        .expect("ip link");
    String::from_utf8_lossy(&out.stdout).contains("xdp")
}

/// A socket created in a namespace (it stays there whatever thread uses it).
pub fn udp_in(ns: &str, addr: SocketAddr) -> UdpSocket {
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
pub struct Control {
    stream: UnixStream,
    seq: u32,
    /// Events received so far.
    pub events: Vec<Event>,
}

impl Control {
    /// Connect, waiting for the data plane to listen.
    pub fn connect(path: &std::path::Path) -> Self {
        let deadline = WallInstant::now() + LIMIT;
        let stream = loop {
            if let Ok(s) = UnixStream::connect(path) {
                break s;
            }
            assert!(
                WallInstant::now() < deadline,
                "control socket {} never appeared",
                path.display()
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
    pub fn request(&mut self, req: &ToDataplane) -> Vec<FromDataplane> {
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

    /// A request with exactly one answer.
    pub fn one(&mut self, req: &ToDataplane) -> FromDataplane {
        let mut a = self.request(req);
        assert_eq!(a.len(), 1, "{a:?}");
        a.remove(0)
    }

    /// The counters now.
    pub fn stats(&mut self) -> Stats {
        match self.one(&ToDataplane::Stats) {
            FromDataplane::Stats(s) => s,
            other => panic!("{other:?}"),
        }
    }

    /// The counters once `ready` holds for them (or the last ones after the time limit):
    /// workers publish their counters within a millisecond or so of their work.
    pub fn stats_when(&mut self, ready: impl Fn(&Stats) -> bool) -> Stats {
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
    pub fn drain_events(&mut self, d: Duration) {
        let deadline = WallInstant::now() + d;
        while WallInstant::now() < deadline {
            if let Some((_, FromDataplane::Event(e))) = self.next() {
                self.events.push(e);
            }
        }
    }
}

/// The sum of one counter over the workers.
pub fn total(stats: &Stats, f: impl Fn(&WorkerStats) -> u64) -> u64 {
    stats.workers.iter().map(f).sum()
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

/// An IPv4/UDP packet with a valid header checksum and UDP checksum 0 (none, allowed).
pub fn ipv4_udp(src: (Ipv4Addr, u16), dst: (Ipv4Addr, u16), data: &[u8]) -> Vec<u8> {
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

/// The `i`th payload of a stream tagged `tag`.
pub fn payload(tag: &str, i: u32) -> Vec<u8> {
    format!("{tag} {i:05} through the data plane").into_bytes()
}

/// A sealed data datagram from the simulated client carrying an IPv4/UDP inner packet.
pub fn sealed(sim: &mut Sim, src: (Ipv4Addr, u16), dst: (Ipv4Addr, u16), data: &[u8]) -> Vec<u8> {
    let inner = ipv4_udp(src, dst, data);
    let mut buf = vec![0u8; DATA_HEADER_LEN + inner.len() + TAG_LEN];
    buf[DATA_HEADER_LEN..DATA_HEADER_LEN + inner.len()].copy_from_slice(&inner);
    let (_, len) = sim
        .client
        .encapsulate(sim.now, &mut buf, inner.len())
        .expect("established");
    buf.truncate(len);
    buf
}

/// The install message of a session the simulation established, with the client's virtual
/// address `inner` and real address `active` as its active path.
pub fn install(sim: &Sim, sid: SessionId, inner: IpAddr, active: SocketAddr) -> ToDataplane {
    let h = sim.session(sid).handoff();
    let (window_top, window) = h.recv_window.to_parts();
    ToDataplane::Install(Box::new(Install {
        id: sid,
        owner: jumping_dataplane::runtime::owner_of(sid),
        inner,
        keys: h.keys.export(sim.now),
        send_counter: h.send_counter,
        window_top,
        window,
        active: Some(Path::udp(active)),
    }))
}

/// Receive `n` datagrams on `sock` whose contents, once `open`ed, are
/// `payload(tag, 0..n)`, each exactly once; `log` says what the data plane logged, on failure.
pub fn expect_payloads(
    sock: &UdpSocket,
    tag: &str,
    n: u32,
    log: &dyn Fn() -> String,
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
            log()
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
