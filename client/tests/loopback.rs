//! End to end on loopback: the built client (a real TUN, two paths 127.0.0.1 and 127.0.0.2)
//! against an in-process inline gateway (`jumping_protocol::gateway::Gateway` on a UDP socket).
//! Handshake, data both ways through the TUN, `--status`, an operator `--switch` to path 1,
//! and SIGTERM ending the session explicitly. Needs root and /dev/net/tun; skipped otherwise.
//! No timing assertions: every wait is a generous deadline for something that must happen.

use std::io::{BufRead as _, BufReader};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket};
use std::os::unix::fs::PermissionsExt as _;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use jumping_protocol::gateway::{Gateway, GatewayConfig, Output};
use jumping_protocol::handshake::StaticKeypair;
use jumping_protocol::wire::{DATA_HEADER_LEN, TAG_LEN};
use jumping_protocol::{keyfmt, Instant, Path, Policy, SessionId};
use rand_core::OsRng;

const WAIT: Duration = Duration::from_secs(20);

/// An inner packet for the gateway to send to a session.
type ToClient = (SessionId, Vec<u8>);

enum GwOut {
    Delivered(SessionId, Vec<u8>),
    Event(String),
    From(SocketAddr),
}

/// The gateway thread: receives, answers, runs timers; sends inner packets it is handed.
fn gateway(
    keypair: StaticKeypair,
    client_public: [u8; 32],
    deaf_to: Arc<Mutex<Option<IpAddr>>>,
) -> (SocketAddr, Sender<ToClient>, Receiver<GwOut>) {
    let sock = UdpSocket::bind("127.0.0.1:0").expect("bind gateway");
    sock.set_read_timeout(Some(Duration::from_millis(20)))
        .expect("timeout");
    let addr = sock.local_addr().expect("addr");
    let (to_gw, cmds) = channel::<ToClient>();
    let (out, from_gw) = channel();
    thread::spawn(move || {
        let origin = std::time::Instant::now();
        let now =
            || Instant::from_nanos(u64::try_from(origin.elapsed().as_nanos()).unwrap_or(u64::MAX));
        let mut gw = Gateway::new(
            GatewayConfig::default(),
            Policy::default(),
            keypair,
            OsRng,
            now(),
        )
        .expect("gateway");
        gw.allow_client(client_public);
        let mut buf = vec![0u8; 65_536];
        loop {
            if let Ok((n, from)) = sock.recv_from(&mut buf) {
                if *deaf_to.lock().expect("lock") == Some(from.ip()) {
                    continue;
                }
                let _ = out.send(GwOut::From(from));
                if let Output::Deliver { session_id, packet } =
                    gw.handle_datagram(now(), Path::udp(from), &mut buf[..n])
                {
                    let _ = out.send(GwOut::Delivered(session_id, packet.to_vec()));
                }
            }
            while let Ok((sid, pkt)) = cmds.try_recv() {
                let mut b = vec![0u8; DATA_HEADER_LEN + pkt.len() + TAG_LEN];
                b[DATA_HEADER_LEN..DATA_HEADER_LEN + pkt.len()].copy_from_slice(&pkt);
                if let Ok((dst, len)) = gw.encapsulate(sid, &mut b, pkt.len()) {
                    let _ = sock.send_to(&b[..len], dst.addr);
                }
            }
            if gw.poll_timeout().is_some_and(|t| t <= now()) {
                gw.handle_timeout(now());
            }
            while let Some(t) = gw.poll_transmit() {
                let _ = sock.send_to(&t.payload, t.dst.addr);
            }
            while let Some(e) = gw.poll_event() {
                if out.send(GwOut::Event(e.name().to_owned())).is_err() {
                    return;
                }
            }
        }
    });
    (addr, to_gw, from_gw)
}

/// An IPv4/UDP packet (UDP checksum 0, header checksum computed).
fn ipv4_udp(src: Ipv4Addr, dst: Ipv4Addr, dport: u16, payload: &[u8]) -> Vec<u8> {
    let total = 20 + 8 + payload.len();
    let mut p = vec![0u8; total];
    p[0] = 0x45;
    p[2..4].copy_from_slice(&u16::try_from(total).expect("len").to_be_bytes());
    p[8] = 64;
    p[9] = 17;
    p[12..16].copy_from_slice(&src.octets());
    p[16..20].copy_from_slice(&dst.octets());
    let mut sum: u32 = p[..20]
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], c[1]])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    p[10..12].copy_from_slice(&(!u16::try_from(sum).expect("folded")).to_be_bytes());
    p[20..22].copy_from_slice(&40000u16.to_be_bytes());
    p[22..24].copy_from_slice(&dport.to_be_bytes());
    p[24..26].copy_from_slice(&u16::try_from(8 + payload.len()).expect("len").to_be_bytes());
    p[28..].copy_from_slice(payload);
    p
}

fn wait_event(lines: &Receiver<serde_json::Value>, name: &str) -> serde_json::Value {
    let deadline = std::time::Instant::now() + WAIT;
    while std::time::Instant::now() < deadline {
        if let Ok(v) = lines.recv_timeout(Duration::from_millis(100)) {
            if v["event"] == name {
                return v;
            }
        }
    }
    panic!("no `{name}` event from the client");
}

struct Kill(Child);
impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn loopback_session_data_switch_and_terminate() {
    // Root: the real uid in /proc/self/status is 0.
    let root = std::fs::read_to_string("/proc/self/status")
        .is_ok_and(|s| s.lines().any(|l| l.starts_with("Uid:\t0\t")));
    if !root || !std::path::Path::new("/dev/net/tun").exists() {
        eprintln!("skipped: needs root and /dev/net/tun");
        return;
    }
    let gw_key = StaticKeypair::generate(&mut OsRng);
    let client_key = StaticKeypair::generate(&mut OsRng);
    let deaf_to = Arc::new(Mutex::new(None));
    let (gw_addr, to_gw, from_gw) =
        gateway(gw_key.clone(), client_key.public(), Arc::clone(&deaf_to));

    let n = std::process::id() % 200 + 20;
    let tun = format!("jct{}", std::process::id() % 100_000);
    let dir = std::env::temp_dir().join(format!("jumping-client-loop-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let key = dir.join("client.key");
    std::fs::write(&key, keyfmt::encode(&client_key.secret_bytes())).expect("key");
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    let sock = dir.join("status.sock");
    let inner = Ipv4Addr::new(10, 251, u8::try_from(n).expect("n"), 2);
    let far = Ipv4Addr::new(10, 251, u8::try_from(n).expect("n"), 9);

    let child = Command::new(env!("CARGO_BIN_EXE_jumping-client"))
        .args(["--gateway", &gw_addr.to_string()])
        .args(["--gateway-public", &keyfmt::encode(&gw_key.public())])
        .arg("--key")
        .arg(&key)
        .args(["--address", &format!("{inner}/32")])
        .args(["--route", &format!("10.251.{n}.0/24")])
        .args(["--tun", &tun])
        .args(["--path", "127.0.0.1", "--path", "127.0.0.2"])
        .arg("--status-socket")
        .arg(&sock)
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn client");
    let mut child = Kill(child);
    let stdout = child.0.stdout.take().expect("stdout");
    let (line_tx, lines) = channel();
    thread::spawn(move || {
        for l in BufReader::new(stdout).lines().map_while(Result::ok) {
            let v: serde_json::Value = serde_json::from_str(&l).expect("every line is JSON");
            assert!(v["ts"].is_string() && v["event"].is_string(), "{l}");
            if line_tx.send(v).is_err() {
                return;
            }
        }
    });

    let est = wait_event(&lines, "established");
    assert_eq!(est["path"], 0);
    let sid_text = est["session_id"].as_str().expect("session id").to_owned();
    assert_eq!(sid_text.len(), 16);

    // --status through the binary.
    let out = Command::new(env!("CARGO_BIN_EXE_jumping-client"))
        .arg("--status")
        .arg("--status-socket")
        .arg(&sock)
        .output()
        .expect("status");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let st: serde_json::Value = serde_json::from_slice(&out.stdout).expect("status JSON");
    assert_eq!(st["state"], "ATTACHED");
    assert_eq!(st["session_id"], sid_text.as_str());
    assert_eq!(st["current_path"], 0);
    assert_eq!(st["paths"].as_array().map(Vec::len), Some(2));

    // Client → gateway: a UDP datagram routed into the TUN arrives decrypted at the gateway.
    let app = UdpSocket::bind((inner, 0)).expect("bind inner");
    let inner_port = app.local_addr().expect("addr").port();
    let deadline = std::time::Instant::now() + WAIT;
    let sid = loop {
        assert!(
            std::time::Instant::now() < deadline,
            "no data at the gateway"
        );
        let _ = app.send_to(b"hello-jumping", (far, 9999));
        match from_gw.recv_timeout(Duration::from_millis(200)) {
            Ok(GwOut::Delivered(sid, pkt)) if pkt.ends_with(b"hello-jumping") => {
                assert_eq!(&pkt[12..16], &inner.octets());
                break sid;
            }
            _ => {}
        }
    };
    assert_eq!(sid.to_string(), sid_text);

    // Gateway → client: an inner packet comes out of the TUN to a local socket.
    app.set_read_timeout(Some(Duration::from_millis(200)))
        .expect("timeout");
    let mut b = [0u8; 64];
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        assert!(
            std::time::Instant::now() < deadline,
            "no data from the gateway"
        );
        to_gw
            .send((sid, ipv4_udp(far, inner, inner_port, b"from-gateway")))
            .expect("gateway alive");
        if let Ok((k, _)) = app.recv_from(&mut b) {
            assert_eq!(&b[..k], b"from-gateway");
            break;
        }
    }

    // Operator switch to path 1: the gateway binds 127.0.0.2.
    let out = Command::new(env!("CARGO_BIN_EXE_jumping-client"))
        .args(["--switch", "1", "--status-socket"])
        .arg(&sock)
        .output()
        .expect("switch");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let started = wait_event(&lines, "path_switch_started");
    assert_eq!(started["reason"], "operator");
    let re = wait_event(&lines, "reattached");
    assert_eq!(re["path"], 1);
    assert_eq!(re["spec"], "127.0.0.2");
    let mut saw_new_source = false;
    while let Ok(m) = from_gw.try_recv() {
        if let GwOut::From(a) = m {
            saw_new_source |= a.ip() == IpAddr::from([127, 0, 0, 2]);
        }
    }
    assert!(saw_new_source, "the gateway never heard from 127.0.0.2");
    // Refused: already there.
    let out = Command::new(env!("CARGO_BIN_EXE_jumping-client"))
        .args(["--switch", "1", "--status-socket"])
        .arg(&sock)
        .output()
        .expect("switch");
    assert!(!out.status.success());

    // Path 1 goes silent (the gateway stops hearing 127.0.0.2): the client's path-dead timer
    // moves it to RECOVERING, and it reattaches on path 0 by itself.
    *deaf_to.lock().expect("lock") = Some(IpAddr::from([127, 0, 0, 2]));
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let v = wait_event(&lines, "state_changed");
        if v["to"] == "RECOVERING" {
            assert_eq!(v["reason"], "TRANSPORT_DEAD");
            break;
        }
        assert!(std::time::Instant::now() < deadline, "never RECOVERING");
    }
    let started = wait_event(&lines, "path_switch_started");
    assert_eq!(started["reason"], "recovering");
    assert_eq!(started["path"], 0);
    let re = wait_event(&lines, "reattached");
    assert_eq!(re["path"], 0);
    *deaf_to.lock().expect("lock") = None;

    // SIGTERM: explicit termination, exit 0, socket removed.
    let pid = child.0.id().to_string();
    assert!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .expect("kill")
        .success());
    let t = wait_event(&lines, "terminated");
    assert_eq!(t["by"], "signal");
    assert_eq!(t["sent_terminate"], true);
    let status = child.0.wait().expect("wait");
    assert_eq!(status.code(), Some(0));
    assert!(!sock.exists(), "status socket left behind");
    let deadline = std::time::Instant::now() + WAIT;
    let mut names = Vec::new();
    while !names.iter().any(|n| n == "SESSION_TERMINATED") {
        assert!(
            std::time::Instant::now() < deadline,
            "gateway events: {names:?}"
        );
        if let Ok(GwOut::Event(e)) = from_gw.recv_timeout(Duration::from_millis(100)) {
            names.push(e);
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}
