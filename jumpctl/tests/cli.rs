//! The built `jumpctl` binary against a control-socket Server with a tiny answering loop.

#![allow(clippy::unwrap_used)] // test helpers outside #[test] functions

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::thread;
use std::time::Duration;

use jumping_control_api::server::Server;
use jumping_control_api::{
    ApiError, DataplaneStatus, ErrorCode, Payload, Request, SessionInfo, StatsInfo, Status,
    WorkerInfo,
};
use jumping_protocol::handshake::StaticKeypair;
use jumping_protocol::keyfmt;

fn temp_dir(name: &str) -> PathBuf {
    static N: AtomicU64 = AtomicU64::new(0);
    std::env::temp_dir().join(format!(
        "jumpctl-cli-{}-{}-{name}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ))
}

/// The n-th `sessions` answer: one session that receives 100 packets per answer.
fn sessions(n: u64) -> Vec<SessionInfo> {
    vec![SessionInfo {
        id: "0100000000000a3f".into(),
        state: "ATTACHED".into(),
        version: 1,
        active_path: Some("udp:10.0.0.2:40000".into()),
        owner: 0,
        age_ms: 60_000 + n,
        switches: 0,
        key_epoch: 0,
        client_key_id: "0011223344556677".into(),
        inner: "10.99.0.2".into(),
        rx_packets: 100 * n,
        rx_bytes: 100_000 * n,
        tx_packets: 50 * n,
        tx_bytes: 50_000 * n,
        last_rx_ms: Some(0),
    }]
}

/// The n-th `stats` answer: one worker whose counters grow with n.
fn stats(n: u64) -> StatsInfo {
    let mut s = StatsInfo::default();
    s.control.handshakes = n;
    s.workers.push(WorkerInfo {
        cpu: 2,
        rx_datagrams: 1000 * n,
        rx_bytes: 1_000_000 * n,
        delivered: 1000 * n,
        sent: 500 * n,
        sessions: 1,
        drops: [("replay".to_string(), 3 * n)].into_iter().collect(),
        ..WorkerInfo::default()
    });
    s
}

fn status() -> Status {
    Status {
        node_id: 7,
        software_version: "9.9.9-test".into(),
        uptime_ms: 61_000,
        policy_version: 3,
        listen: "udp:127.0.0.1:51820".into(),
        sessions_total: 2,
        sessions_by_state: [("ATTACHED".to_string(), 2u64)].into_iter().collect(),
        clients_allowed: 5,
        dataplane: DataplaneStatus {
            connected: true,
            backend: Some("io_uring".into()),
            workers: 2,
            socket: "/run/jumping/dataplane.sock".into(),
        },
    }
}

struct Gateway {
    _server: Arc<Server>,
    stop: Arc<AtomicBool>,
    calls: mpsc::Receiver<Request>,
    thread: Option<thread::JoinHandle<()>>,
    path: PathBuf,
}

impl Gateway {
    fn start(name: &str) -> Self {
        let path = temp_dir(name).join("control.sock");
        let (wake_tx, wake_rx) = mpsc::channel::<()>();
        let wake_tx = Mutex::new(wake_tx);
        let server = Arc::new(
            Server::bind(
                &path,
                None,
                Box::new(move || {
                    let _ = wake_tx.lock().unwrap().send(());
                }),
            )
            .unwrap(),
        );
        let stop = Arc::new(AtomicBool::new(false));
        let (calls_tx, calls) = mpsc::channel();
        let (s, st) = (Arc::clone(&server), Arc::clone(&stop));
        let thread = thread::spawn(move || {
            let (mut n_sessions, mut n_stats) = (0, 0);
            while !st.load(Ordering::Relaxed) {
                let _ = wake_rx.recv_timeout(Duration::from_millis(50));
                while let Some(call) = s.try_call() {
                    let _ = calls_tx.send(call.request.clone());
                    let answer = match call.request {
                        Request::Status => Ok(Payload::Status(status())),
                        Request::Sessions => {
                            n_sessions += 1;
                            Ok(Payload::Sessions {
                                sessions: sessions(n_sessions),
                            })
                        }
                        Request::Stats => {
                            n_stats += 1;
                            Ok(Payload::Stats(stats(n_stats)))
                        }
                        _ => Err(ApiError::new(ErrorCode::NotFound, "no such session")),
                    };
                    call.reply(answer);
                }
            }
        });
        Gateway {
            _server: server,
            stop,
            calls,
            thread: Some(thread),
            path,
        }
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let _ = std::fs::remove_dir(self.path.parent().unwrap());
    }
}

fn jumpctl(socket: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_jumpctl"))
        .arg("--socket")
        .arg(socket)
        .args(args)
        .output()
        .unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn status_table_and_json() {
    let gw = Gateway::start("status");
    let out = jumpctl(&gw.path, &["status"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    let lines: Vec<&str> = stdout.lines().collect();
    // key: value lines with aligned values.
    let find = |key: &str| {
        *lines
            .iter()
            .find(|l| l.starts_with(key))
            .unwrap_or_else(|| panic!("no {key} in {stdout}"))
    };
    assert!(find("node:").ends_with(" 7"), "{stdout}");
    assert!(find("version:").ends_with("9.9.9-test"), "{stdout}");
    assert!(find("uptime:").ends_with("1m01s"), "{stdout}");
    assert!(find("data plane:").contains("connected (io_uring, 2 workers)"));
    let value_col: Vec<usize> = lines
        .iter()
        .map(|l| {
            let colon = l.find(':').unwrap();
            colon + 1 + l[colon + 1..].len() - l[colon + 1..].trim_start().len()
        })
        .collect();
    assert!(
        value_col.windows(2).all(|w| w[0] == w[1]),
        "values not aligned:\n{stdout}"
    );

    let out = jumpctl(&gw.path, &["--json", "status"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v, serde_json::to_value(Payload::Status(status())).unwrap());
    assert_eq!(gw.calls.try_iter().count(), 2);
}

#[test]
fn server_errors_exit_1() {
    let gw = Gateway::start("notfound");
    let out = jumpctl(&gw.path, &["session", "show", "00000000000000ff"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("jumpctl: not_found: no such session"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn bad_arguments_exit_2_without_a_request() {
    let gw = Gateway::start("badarg");
    let out = jumpctl(&gw.path, &["session", "show", "12345"]);
    assert_eq!(out.status.code(), Some(2));
    let err = text(&out.stderr);
    assert!(err.contains("session id"), "{err}");
    assert!(err.contains("16"), "{err}");
    for args in [
        &["key", "revoke", "not-a-key"][..],
        &["events", "--event", "NO_SUCH_EVENT"],
        &["events", "--follow", "--session", "xyz"],
        &["events", "--follow", "--reason", "NO_SUCH_REASON"],
        &["top", "--interval", "0s"],
        &["top", "--interval", "2"],
        &["top", "--interval", "fast"],
        &["top", "--iterations", "0"],
        &["rekey"],
        &["rekey", "00000000000000ff", "--all"],
        &["core", "drain", "300"],
        &["frobnicate"],
    ] {
        let out = jumpctl(&gw.path, args);
        assert_eq!(
            out.status.code(),
            Some(2),
            "{args:?}: {}",
            text(&out.stderr)
        );
    }
    assert_eq!(
        gw.calls.try_iter().count(),
        0,
        "a bad argument reached the server"
    );
}

#[test]
fn events_filters_refused_with_what_is_valid() {
    let gw = Gateway::start("filters");
    let out = jumpctl(
        &gw.path,
        &["events", "--follow", "--reason", "TRANSPORT_DAED"],
    );
    assert_eq!(out.status.code(), Some(2));
    let err = text(&out.stderr);
    assert!(
        err.contains("TRANSPORT_DEAD") && err.contains("BAD_PROOF"),
        "{err}"
    );
    let out = jumpctl(&gw.path, &["events", "--follow", "--event", "PATH_SWICHED"]);
    assert_eq!(out.status.code(), Some(2));
    let err = text(&out.stderr);
    assert!(
        err.contains("PATH_SWITCHED") && err.contains("SESSION_CREATED"),
        "{err}"
    );
    let out = jumpctl(&gw.path, &["events", "--follow", "--session", "0100"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("16"), "{}", text(&out.stderr));
    assert_eq!(gw.calls.try_iter().count(), 0);
}

#[test]
fn top_interval_errors_are_clear() {
    let out = jumpctl(Path::new("/nonexistent"), &["top", "--interval", "2"]);
    assert_eq!(out.status.code(), Some(2));
    let err = text(&out.stderr);
    assert!(err.contains("did you mean 2s"), "{err}");
    assert!(err.contains("500ms"), "{err}");
}

#[test]
fn top_once_json_has_rates_from_two_samples() {
    let gw = Gateway::start("top-json");
    let out = jumpctl(
        &gw.path,
        &["--json", "top", "--once", "--interval", "200ms"],
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    // Two samples, 100 packets apart, about 0.2 s apart.
    let secs = v["interval_s"].as_f64().unwrap();
    assert!((0.19..2.0).contains(&secs), "{v}");
    let rx = v["sessions"][0]["rx_packets_per_s"].as_f64().unwrap();
    assert!((rx - 100.0 / secs).abs() < 1.0, "{v}");
    assert_eq!(v["sessions"][0]["id"], "0100000000000a3f");
    assert_eq!(v["sessions_by_state"]["ATTACHED"], 1);
    let w = &v["workers"][0];
    assert_eq!(w["cpu"], 2);
    assert!((w["rx_packets_per_s"].as_f64().unwrap() - 1000.0 / secs).abs() < 1.0);
    assert!((w["rx_mbit_per_s"].as_f64().unwrap() - 8.0 / secs).abs() < 0.1);
    assert!((w["drops_per_s"]["replay"].as_f64().unwrap() - 3.0 / secs).abs() < 0.1);
    assert_eq!(v["control_changed"][0]["counter"], "handshakes");
    let calls: Vec<Request> = gw.calls.try_iter().collect();
    assert_eq!(
        calls,
        [
            Request::Sessions,
            Request::Stats,
            Request::Sessions,
            Request::Stats
        ]
    );
}

#[test]
fn top_prints_text_frames() {
    let gw = Gateway::start("top-text");
    let out = jumpctl(
        &gw.path,
        &["top", "--iterations", "2", "--interval", "100ms"],
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    // Not a terminal: no ANSI escapes, one frame after another.
    assert!(!stdout.contains('\x1b'), "{stdout}");
    assert_eq!(
        stdout.matches("jumpctl top  interval").count(),
        2,
        "{stdout}"
    );
    for needle in [
        "SESSIONS",
        "0100000000000a3f",
        "WORKERS",
        "RX_MBIT/S",
        "replay=",
        "CONTROL (changed)",
        "handshakes",
    ] {
        assert!(stdout.contains(needle), "{needle} missing:\n{stdout}");
    }
}

#[test]
fn top_unreachable_exits_3() {
    let path = temp_dir("absent-top").join("control.sock");
    let out = jumpctl(&path, &["top", "--once"]);
    assert_eq!(out.status.code(), Some(3));
}

#[test]
fn unreachable_socket_exits_3() {
    let path = temp_dir("absent").join("control.sock");
    let out = jumpctl(&path, &["status"]);
    assert_eq!(out.status.code(), Some(3));
    let err = text(&out.stderr);
    assert!(err.contains(&path.display().to_string()), "{err}");
    assert!(err.contains("running"), "{err}");
}

#[test]
fn genkey_pubkey_round_trip() {
    let out = Command::new(env!("CARGO_BIN_EXE_jumpctl"))
        .arg("genkey")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let private = text(&out.stdout);
    let secret = keyfmt::decode(&private).unwrap();
    let expected = keyfmt::encode(&StaticKeypair::from_secret_bytes(*secret).public());

    let mut child = Command::new(env!("CARGO_BIN_EXE_jumpctl"))
        .arg("pubkey")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(private.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout).trim(), expected);

    // Two keys differ.
    let again = Command::new(env!("CARGO_BIN_EXE_jumpctl"))
        .arg("genkey")
        .output()
        .unwrap();
    assert_ne!(text(&again.stdout), private);

    // Garbage on stdin: exit 2.
    let mut child = Command::new(env!("CARGO_BIN_EXE_jumpctl"))
        .arg("pubkey")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(b"nope\n").unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(2));
}
