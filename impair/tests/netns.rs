//! End to end: the real `jumping-impair` binary in the middle namespace of a
//! client ─ middle ─ server topology, with the nftables redirect, a UDP echo in the server
//! namespace and a numbered-datagram sender in the client namespace. Needs root (skipped
//! otherwise); every namespace is removed, also when a test fails.
#![forbid(unsafe_code)]

use std::collections::BTreeSet;
use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, UdpSocket};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use jumping_impair::{redirect_ruleset, Direction, Impairment, Schedule, Stats, Verdict};

const BIN: &str = env!("CARGO_BIN_EXE_jumping-impair");
const GATEWAY: &str = "10.250.2.2:51820";
const LISTEN_PORT: u16 = 40000;
const PAYLOAD: usize = 64;

static COUNTER: AtomicUsize = AtomicUsize::new(0);

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(2).map(|e| e == "0"))
        })
        .unwrap_or(false)
}

fn sh(args: &[&str]) {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .unwrap_or_else(|e| panic!("running {args:?}: {e}"));
    assert!(
        out.status.success(),
        "{args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Three namespaces: client (10.250.1.2) ─ middle (10.250.1.1, 10.250.2.1) ─ server
/// (10.250.2.2). Dropping it deletes them.
struct Topo {
    client: String,
    middle: String,
    server: String,
    created: Vec<String>,
}

impl Topo {
    fn new(tag: &str) -> Topo {
        let id = format!(
            "{}-{tag}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::SeqCst)
        );
        let mut t = Topo {
            client: format!("jic-{id}"),
            middle: format!("jim-{id}"),
            server: format!("jis-{id}"),
            created: Vec::new(),
        };
        for ns in [t.client.clone(), t.middle.clone(), t.server.clone()] {
            sh(&["ip", "netns", "add", &ns]);
            t.created.push(ns);
        }
        let (c, m, s) = (t.client.as_str(), t.middle.as_str(), t.server.as_str());
        sh(&[
            "ip", "link", "add", "ca", "netns", c, "type", "veth", "peer", "name", "ma", "netns", m,
        ]);
        sh(&[
            "ip", "link", "add", "mb", "netns", m, "type", "veth", "peer", "name", "sb", "netns", s,
        ]);
        let x = |ns: &str, cmd: &[&str]| {
            let mut v = vec!["ip", "netns", "exec", ns];
            v.extend_from_slice(cmd);
            sh(&v);
        };
        for (ns, dev, addr) in [
            (c, "ca", "10.250.1.2/24"),
            (m, "ma", "10.250.1.1/24"),
            (m, "mb", "10.250.2.1/24"),
            (s, "sb", "10.250.2.2/24"),
        ] {
            x(ns, &["ip", "addr", "add", addr, "dev", dev]);
            x(ns, &["ip", "link", "set", "dev", dev, "up"]);
        }
        for ns in [c, m, s] {
            x(ns, &["ip", "link", "set", "dev", "lo", "up"]);
        }
        x(m, &["sysctl", "-qw", "net.ipv4.ip_forward=1"]);
        x(
            c,
            &["ip", "route", "add", "10.250.2.0/24", "via", "10.250.1.1"],
        );
        x(
            s,
            &["ip", "route", "add", "10.250.1.0/24", "via", "10.250.2.1"],
        );
        let mut nft = Command::new("ip")
            .args(["netns", "exec", m, "nft", "-f", "-"])
            .stdin(Stdio::piped())
            .spawn()
            .expect("spawn nft");
        nft.stdin
            .take()
            .expect("stdin")
            .write_all(redirect_ruleset(LISTEN_PORT, 51820).as_bytes())
            .expect("write ruleset");
        assert!(nft.wait().expect("nft").success(), "nft -f failed");
        t
    }
}

impl Drop for Topo {
    fn drop(&mut self) {
        for ns in &self.created {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

/// A UDP socket created inside namespace `ns` (it stays there whatever thread uses it).
fn udp_in_ns(ns: &str, bind: &str) -> UdpSocket {
    let path = format!("/run/netns/{ns}");
    let bind = bind.to_owned();
    std::thread::spawn(move || {
        let f = File::open(&path).expect("open netns");
        nix::sched::setns(&f, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
        let sock = UdpSocket::bind(&bind).expect("bind");
        use nix::sys::socket::{setsockopt, sockopt};
        setsockopt(&sock, sockopt::RcvBufForce, &(4usize << 20)).expect("SO_RCVBUFFORCE");
        setsockopt(&sock, sockopt::SndBufForce, &(4usize << 20)).expect("SO_SNDBUFFORCE");
        sock.set_read_timeout(Some(Duration::from_millis(50)))
            .expect("timeout");
        sock
    })
    .join()
    .expect("socket thread")
}

/// The relay process; killed on drop if still running.
struct Relay {
    child: Option<Child>,
    stats: PathBuf,
}

impl Relay {
    fn start(topo: &Topo, extra: &[&str]) -> Relay {
        let stats = std::env::temp_dir().join(format!(
            "jumping-impair-{}-{}.json",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::SeqCst)
        ));
        let listen = format!("0.0.0.0:{LISTEN_PORT}");
        let mut child = Command::new("ip")
            .args(["netns", "exec", &topo.middle, BIN])
            .args(["--listen", &listen, "--upstream", GATEWAY, "--stats-file"])
            .arg(&stats)
            .args(extra)
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn relay");
        let stdout = child.stdout.take().expect("stdout");
        let relay = Relay {
            child: Some(child),
            stats,
        };
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let _ = tx.send(line);
            }
        });
        let line = rx
            .recv_timeout(Duration::from_secs(30))
            .expect("relay printed no start line");
        let v: serde_json::Value = serde_json::from_str(&line).expect("start line is JSON");
        assert_eq!(v["impair"], "started", "{line}");
        assert_eq!(v["upstream"], GATEWAY, "{line}");
        relay
    }

    /// SIGTERM, expect exit 0, return the final statistics.
    fn stop(mut self) -> Stats {
        let mut child = self.child.take().expect("running");
        let pid = nix::unistd::Pid::from_raw(i32::try_from(child.id()).expect("pid"));
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).expect("kill");
        let deadline = Instant::now() + Duration::from_secs(30);
        let status = loop {
            if let Some(s) = child.try_wait().expect("wait") {
                break s;
            }
            assert!(Instant::now() < deadline, "relay ignores SIGTERM");
            std::thread::sleep(Duration::from_millis(20));
        };
        assert!(status.success(), "relay exited with {status}");
        let text = std::fs::read_to_string(&self.stats).expect("stats file");
        serde_json::from_str(&text).expect("stats JSON")
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = std::fs::remove_file(&self.stats);
    }
}

/// A UDP echo in the server namespace, recording which sequence numbers arrived.
struct Echo {
    stop: Arc<AtomicBool>,
    handle: JoinHandle<(Vec<u32>, u64)>,
}

impl Echo {
    fn start(topo: &Topo) -> Echo {
        let sock = udp_in_ns(&topo.server, "0.0.0.0:51820");
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let handle = std::thread::spawn(move || {
            let mut seen = Vec::new();
            let mut echoed = 0u64;
            let mut buf = [0u8; 2048];
            while !flag.load(Ordering::Relaxed) {
                if let Ok((n, from)) = sock.recv_from(&mut buf) {
                    if n >= 4 {
                        seen.push(u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]));
                    }
                    if sock.send_to(&buf[..n], from).is_ok() {
                        echoed += 1;
                    }
                }
            }
            (seen, echoed)
        });
        Echo { stop, handle }
    }

    /// (sequence numbers received in order, echoes sent)
    fn finish(self) -> (Vec<u32>, u64) {
        self.stop.store(true, Ordering::Relaxed);
        self.handle.join().expect("echo thread")
    }
}

struct Outcome {
    /// (sequence number, source) of every echo, in arrival order.
    echoes: Vec<(u32, SocketAddr)>,
    server_seen: Vec<u32>,
    server_echoed: u64,
    stats: Stats,
}

/// Runs the relay with `args`, sends `n` numbered datagrams (sleeping `pause` after every
/// `every` of them), waits until the echoes stop, stops everything.
fn exchange(topo: &Topo, args: &[&str], n: u32, every: u32, pause: Duration) -> Outcome {
    let relay = Relay::start(topo, args);
    let echo = Echo::start(topo);
    let client = udp_in_ns(&topo.client, "0.0.0.0:0");
    let rx = client.try_clone().expect("clone");
    let got = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let receiver = {
        let (got, stop) = (got.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut echoes = Vec::new();
            let mut buf = [0u8; 2048];
            while !stop.load(Ordering::Relaxed) {
                if let Ok((len, from)) = rx.recv_from(&mut buf) {
                    assert_eq!(len, PAYLOAD, "echo changed size");
                    echoes.push((u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]), from));
                    got.fetch_add(1, Ordering::Relaxed);
                }
            }
            echoes
        })
    };
    let gateway: SocketAddr = GATEWAY.parse().expect("addr");
    let mut payload = [0xa5u8; PAYLOAD];
    for seq in 0..n {
        payload[..4].copy_from_slice(&seq.to_be_bytes());
        client.send_to(&payload, gateway).expect("send");
        if seq % every == every - 1 {
            std::thread::sleep(pause);
        }
    }
    // Wait until nothing has come back for a while (delays here are at most tens of ms).
    let mut last = usize::MAX;
    let mut quiet_since = Instant::now();
    loop {
        std::thread::sleep(Duration::from_millis(100));
        let now = got.load(Ordering::Relaxed);
        if now != last {
            last = now;
            quiet_since = Instant::now();
        } else if quiet_since.elapsed() >= Duration::from_millis(500) {
            break;
        }
    }
    let stats = relay.stop();
    stop.store(true, Ordering::Relaxed);
    let echoes = receiver.join().expect("receiver");
    let (server_seen, server_echoed) = echo.finish();
    Outcome {
        echoes,
        server_seen,
        server_echoed,
        stats,
    }
}

fn check_consistent(o: &Outcome, sent: u64) {
    let s = &o.stats;
    for d in [&s.upstream, &s.downstream] {
        assert_eq!(d.queued, 0, "{s:?}");
        assert_eq!(
            d.received,
            d.forwarded + d.dropped_loss + d.dropped_burst + d.dropped_send,
            "{s:?}"
        );
    }
    assert_eq!(s.upstream.dropped_send, 0, "{s:?}");
    assert_eq!(s.downstream.dropped_send, 0, "{s:?}");
    assert!(s.upstream.received <= sent, "{s:?}");
    assert!(
        s.upstream.received * 100 >= sent * 99,
        "kernel dropped >1 %: {s:?}"
    );
    // What the test saw agrees with the relay's counters.
    assert_eq!(s.upstream.forwarded, o.server_seen.len() as u64, "{s:?}");
    assert_eq!(s.downstream.received, o.server_echoed, "{s:?}");
    assert_eq!(s.downstream.forwarded, o.echoes.len() as u64, "{s:?}");
    assert_eq!(s.flows, 1, "{s:?}");
    // The DNAT is undone: every echo comes from the gateway's address.
    let gateway: SocketAddr = GATEWAY.parse().expect("addr");
    assert!(o.echoes.iter().all(|(_, from)| *from == gateway));
}

#[test]
fn loss_and_jitter_through_the_relay() {
    if !is_root() {
        println!("skipped: needs root");
        return;
    }
    let topo = Topo::new("loss");
    let n = 20_000u32;
    let o = exchange(
        &topo,
        &[
            "--seed",
            "7",
            "--loss",
            "0.2",
            "--delay-ms",
            "2",
            "--jitter-ms",
            "10",
        ],
        n,
        40,
        Duration::from_millis(1),
    );
    check_consistent(&o, u64::from(n));
    let s = &o.stats;
    let ratio = o.echoes.len() as f64 / f64::from(n);
    assert!((ratio - 0.64).abs() <= 0.05, "echo ratio {ratio}: {s:?}");
    for d in [&s.upstream, &s.downstream] {
        let loss = d.dropped_loss as f64 / d.received as f64;
        assert!((loss - 0.2).abs() <= 0.02, "loss {loss}: {s:?}");
        assert_eq!(d.dropped_burst, 0);
        assert!(d.reordered > 0, "jitter must reorder: {s:?}");
    }
    // The client sees reordering too.
    let mut max = None;
    let mut late = 0;
    for (seq, _) in &o.echoes {
        if max.is_some_and(|m| *seq < m) {
            late += 1;
        }
        max = max.max(Some(*seq));
    }
    assert!(late > 0, "no reordering seen by the client");
}

#[test]
fn same_seed_same_drops() {
    if !is_root() {
        println!("skipped: needs root");
        return;
    }
    let topo = Topo::new("seed");
    let n = 3_000u32;
    let args = ["--seed", "42", "--loss", "0.3", "--delay-ms", "1"];
    let slow = Duration::from_micros(100);
    let a = exchange(&topo, &args, n, 1, slow);
    let b = exchange(&topo, &args, n, 1, slow);
    let config = Impairment {
        seed: 42,
        loss: 0.3,
        delay_ms: 1,
        ..Impairment::default()
    };
    for o in [&a, &b] {
        check_consistent(o, u64::from(n));
        let s = &o.stats;
        assert_eq!(s.upstream.received, u64::from(n), "slow sender lost: {s:?}");
        assert_eq!(s.upstream.reordered, 0, "zero jitter reorders: {s:?}");
        assert_eq!(s.downstream.reordered, 0, "zero jitter reorders: {s:?}");
        // Exactly the library's prediction: upstream drops by sequence number...
        let mut up = Schedule::new(&config, Direction::Upstream);
        let predicted: Vec<u32> = (0..n)
            .filter(|_| matches!(up.decide(Duration::ZERO), Verdict::Deliver { .. }))
            .collect();
        let mut seen = o.server_seen.clone();
        seen.sort_unstable();
        assert_eq!(seen, predicted);
        // ...and the number of downstream drops among the packets that came back.
        let mut down = Schedule::new(&config, Direction::Downstream);
        let dropped = (0..s.downstream.received)
            .filter(|_| matches!(down.decide(Duration::ZERO), Verdict::Drop(_)))
            .count() as u64;
        assert_eq!(s.downstream.dropped_loss, dropped, "{s:?}");
    }
    let set = |o: &Outcome| o.server_seen.iter().copied().collect::<BTreeSet<u32>>();
    assert_eq!(set(&a), set(&b));
    // Everything but max_queue (which depends on timing) is identical.
    let timeless = |o: &Outcome| jumping_impair::DirectionStats {
        max_queue: 0,
        ..o.stats.upstream.clone()
    };
    assert_eq!(timeless(&a), timeless(&b));
    assert_eq!(
        a.stats.downstream.dropped_loss,
        b.stats.downstream.dropped_loss
    );
}

#[test]
fn bursts_drop_both_directions() {
    if !is_root() {
        println!("skipped: needs root");
        return;
    }
    let topo = Topo::new("burst");
    let n = 4_000u32;
    // ~1 s of traffic; windows [50, 90) ms every 100 ms: about 40 % of the time. The 20 ms
    // delay makes echoes of packets that passed just before a window meet it downstream.
    let o = exchange(
        &topo,
        &[
            "--seed",
            "3",
            "--delay-ms",
            "20",
            "--burst-every-ms",
            "100",
            "--burst-len-ms",
            "40",
        ],
        n,
        4,
        Duration::from_millis(1),
    );
    check_consistent(&o, u64::from(n));
    let s = &o.stats;
    assert!(s.upstream.dropped_burst > 0, "{s:?}");
    assert!(s.downstream.dropped_burst > 0, "{s:?}");
    assert_eq!(s.upstream.dropped_loss + s.downstream.dropped_loss, 0);
}

#[test]
fn bad_arguments_are_refused_naming_the_flag() {
    let cases: [(&[&str], &str); 5] = [
        (&["--loss", "1.5"], "--loss"),
        (&["--loss", "abc"], "--loss"),
        (
            &["--burst-every-ms", "100", "--burst-len-ms", "100"],
            "--burst-len-ms",
        ),
        (&["--delay-ms", "60000"], "--delay-ms"),
        (&["--config", "/nonexistent/impair.json"], "--config"),
    ];
    for (extra, flag) in cases {
        let out = Command::new(BIN)
            .args([
                "--listen",
                "127.0.0.1:40000",
                "--upstream",
                "127.0.0.1:51820",
            ])
            .args(extra)
            .output()
            .expect("run");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{extra:?} accepted");
        assert!(err.contains(flag), "{extra:?}: {err}");
    }
    let out = Command::new(BIN)
        .args(["--listen", "127.0.0.1:40000"])
        .output()
        .expect("run");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--upstream"));
    let out = Command::new(BIN)
        .args(["--listen", "127.0.0.1:40000", "--upstream", "0.0.0.0:51820"])
        .output()
        .expect("run");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--upstream"));
}

#[test]
fn config_file_is_accepted() {
    // Loopback only, so no root needed: start with a config file, see it echoed, stop cleanly.
    let dir = std::env::temp_dir().join(format!("jumping-impair-cfg-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let path = dir.join("impair.json");
    std::fs::write(&path, r#"{"seed":5,"loss":0.5,"delay_ms":3}"#).expect("write");
    let bad = dir.join("bad.json");
    std::fs::write(&bad, r#"{"seed":5,"los":0.5}"#).expect("write");
    let stats = dir.join("stats.json");
    let out = Command::new(BIN)
        .args([
            "--listen",
            "127.0.0.1:40000",
            "--upstream",
            "127.0.0.1:51820",
            "--config",
        ])
        .arg(&bad)
        .output()
        .expect("run");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--config"));

    let port = UdpSocket::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .expect("free port")
        .port();
    let mut child = Command::new(BIN)
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .args(["--upstream", "127.0.0.1:9", "--delay-ms", "4", "--config"])
        .arg(&path)
        .arg("--stats-file")
        .arg(&stats)
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn");
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("start line");
    let v: serde_json::Value = serde_json::from_str(&line).expect("JSON");
    assert_eq!(v["impair"], "started");
    assert_eq!(v["config"]["seed"], 5);
    assert_eq!(v["config"]["loss"], 0.5);
    assert_eq!(v["config"]["delay_ms"], 4, "the flag overrides the file");
    let pid = nix::unistd::Pid::from_raw(i32::try_from(child.id()).expect("pid"));
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT).expect("kill");
    assert!(child.wait().expect("wait").success());
    let s: Stats =
        serde_json::from_str(&std::fs::read_to_string(&stats).expect("stats")).expect("JSON");
    assert_eq!(s.upstream.received, 0);
    let _ = std::fs::remove_dir_all(&dir);
}
