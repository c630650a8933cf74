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
use jumping_control_api::{ApiError, DataplaneStatus, ErrorCode, Payload, Request, Status};
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
            while !st.load(Ordering::Relaxed) {
                let _ = wake_rx.recv_timeout(Duration::from_millis(50));
                while let Some(call) = s.try_call() {
                    let _ = calls_tx.send(call.request.clone());
                    let answer = match call.request {
                        Request::Status => Ok(Payload::Status(status())),
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
