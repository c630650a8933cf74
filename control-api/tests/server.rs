//! The control socket end to end: a Server on a temp path, a loop thread answering calls,
//! and clients speaking to it through `client::call` and raw socket writes.

#![allow(clippy::unwrap_used)] // test helpers outside #[test] functions

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use jumping_control_api::server::{EventRecord, Server};
use jumping_control_api::{
    client, parse_session_id, ApiError, DataplaneStatus, ErrorCode, Payload, Request, Status,
};
use serde_json::{json, Value};

fn temp_socket(name: &str) -> PathBuf {
    static N: AtomicU64 = AtomicU64::new(0);
    std::env::temp_dir()
        .join(format!(
            "jumping-capi-{}-{}-{name}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ))
        .join("control.sock")
}

fn status() -> Status {
    Status {
        node_id: 7,
        software_version: "test".into(),
        uptime_ms: 42,
        policy_version: 3,
        listen: "udp:127.0.0.1:51820".into(),
        sessions_total: 0,
        sessions_by_state: Default::default(),
        clients_allowed: 2,
        dataplane: DataplaneStatus {
            connected: false,
            backend: None,
            workers: 0,
            socket: "/nonexistent".into(),
        },
    }
}

/// A server plus a loop thread that answers calls and records every request it saw.
struct Harness {
    server: Arc<Server>,
    seen: mpsc::Receiver<Request>,
    stop: Arc<AtomicBool>,
    loop_thread: Option<thread::JoinHandle<()>>,
    path: PathBuf,
}

impl Harness {
    fn new(name: &str) -> Self {
        let path = temp_socket(name);
        let (wake_tx, wake_rx) = mpsc::channel::<()>();
        let wake_tx = std::sync::Mutex::new(wake_tx);
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
        let (seen_tx, seen) = mpsc::channel();
        let stop = Arc::new(AtomicBool::new(false));
        let (s, st) = (Arc::clone(&server), Arc::clone(&stop));
        let loop_thread = thread::spawn(move || {
            while !st.load(Ordering::Relaxed) {
                let _ = wake_rx.recv_timeout(Duration::from_millis(50));
                while let Some(call) = s.try_call() {
                    let _ = seen_tx.send(call.request.clone());
                    let answer = match &call.request {
                        Request::Status => Ok(Payload::Status(status())),
                        Request::SessionShow { id } => Err(ApiError::new(
                            ErrorCode::NotFound,
                            format!("no session {id}"),
                        )),
                        _ => Err(ApiError::new(ErrorCode::Unavailable, "not in this test")),
                    };
                    call.reply(answer);
                }
            }
        });
        Harness {
            server,
            seen,
            stop,
            loop_thread: Some(loop_thread),
            path,
        }
    }

    /// Requests the loop has seen so far.
    fn seen(&self) -> Vec<Request> {
        self.seen.try_iter().collect()
    }

    fn shutdown(mut self) -> (Server, PathBuf) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.loop_thread.take() {
            t.join().unwrap();
        }
        let server = Arc::try_unwrap(self.server).expect("loop thread ended");
        (server, self.path)
    }
}

fn raw(path: &Path, bytes: &[u8]) -> Value {
    let mut s = UnixStream::connect(path).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(bytes).unwrap();
    let mut line = String::new();
    BufReader::new(s).read_line(&mut line).unwrap();
    serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line:?}"))
}

fn error_code(v: &Value) -> &str {
    assert_eq!(v["v"], json!(1), "{v}");
    v["error"]["code"]
        .as_str()
        .unwrap_or_else(|| panic!("not an error: {v}"))
}

#[test]
fn requests_are_answered_and_bad_input_never_reaches_the_loop() {
    let h = Harness::new("answers");

    // Good request through the client.
    let r = client::call(&h.path, &Request::Status).unwrap();
    assert_eq!(r, Ok(Payload::Status(status())));
    let r = client::call(
        &h.path,
        &Request::SessionShow {
            id: "00000000000000ff".into(),
        },
    )
    .unwrap();
    assert_eq!(r.unwrap_err().code, ErrorCode::NotFound);
    assert_eq!(h.seen().len(), 2);

    // Same through a raw socket; the answer is one line with "ok".
    let v = raw(&h.path, b"{\"v\":1,\"cmd\":\"status\"}\n");
    assert_eq!(v["ok"]["kind"], json!("status"));
    assert_eq!(v["ok"]["node_id"], json!(7));
    assert_eq!(h.seen(), vec![Request::Status]);

    // Bad input: answered by the connection thread.
    assert_eq!(error_code(&raw(&h.path, b"garbage\n")), "bad_request");
    assert_eq!(
        error_code(&raw(&h.path, b"{\"v\":1,\"cmd\":\"frobnicate\"}\n")),
        "bad_request"
    );
    let v = raw(
        &h.path,
        b"{\"v\":1,\"cmd\":\"session_show\",\"id\":\"12345\"}\n",
    );
    assert_eq!(error_code(&v), "bad_argument");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("session id"),
        "{v}"
    );
    let v = raw(&h.path, b"{\"v\":2,\"cmd\":\"status\"}\n");
    assert_eq!(error_code(&v), "version");
    // Through the client too: bad argument is not sent to the loop.
    let r = client::call(&h.path, &Request::SessionKill { id: "xyz".into() }).unwrap();
    assert_eq!(r.unwrap_err().code, ErrorCode::BadArgument);

    // Over-long line: bad_request, then closed.
    let mut long = vec![b' '; 70 * 1024];
    long.push(b'\n');
    let mut s = UnixStream::connect(&h.path).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let _ = s.write_all(&long);
    let mut all = String::new();
    let _ = s.read_to_string(&mut all);
    let first = all.lines().next().unwrap();
    let v: Value = serde_json::from_str(first).unwrap();
    assert_eq!(error_code(&v), "bad_request");
    assert_eq!(all.lines().count(), 1);

    // Give the loop a chance to show anything it might have (wrongly) received.
    let r = client::call(&h.path, &Request::Status).unwrap();
    assert!(r.is_ok());
    assert_eq!(
        h.seen(),
        vec![Request::Status],
        "bad input reached the loop"
    );
    h.shutdown();
}

/// An event as control publishes it: its line, and the fields followers filter on.
fn ev(n: u64, session: &str, event: &'static str, reason: Option<&'static str>) -> EventRecord {
    let mut v = json!({
        "ts": "2025-01-01T00:00:00.000Z",
        "event": event,
        "session_id": session,
        "state_version": n,
    });
    if let Some(r) = reason {
        v["reason_code"] = json!(r);
    }
    EventRecord {
        line: v.to_string().into(),
        session_id: Some(parse_session_id(session).unwrap()),
        event,
        reason_code: reason,
    }
}

const S1: &str = "00000000000000a1";
const S2: &str = "00000000000000b2";

#[test]
fn events_recent_and_followed_with_filters() {
    let h = Harness::new("events");
    h.server.publish(ev(1, S1, "SESSION_CREATED", None));
    h.server
        .publish(ev(2, S2, "SESSION_STATE_CHANGED", Some("HANDSHAKE_OK")));
    h.server
        .publish(ev(3, S1, "SESSION_STATE_CHANGED", Some("HANDSHAKE_OK")));

    // Not following: recent matching ones, then events_end.
    let mut got = Vec::new();
    let end = client::follow(
        &h.path,
        &Request::Events {
            follow: false,
            session: Some(S1.into()),
            event: None,
            reason: None,
        },
        |v| {
            got.push(v);
            true
        },
    )
    .unwrap();
    assert_eq!(end, Ok(()));
    let versions: Vec<u64> = got
        .iter()
        .map(|v| v["state_version"].as_u64().unwrap())
        .collect();
    assert_eq!(versions, vec![1, 3]);

    // Following with event + reason filters, on a raw socket.
    let mut s = UnixStream::connect(&h.path).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(
        b"{\"v\":1,\"cmd\":\"events\",\"follow\":true,\"session\":\"00000000000000B2\",\"event\":\"SESSION_STATE_CHANGED\",\"reason\":\"REATTACH_OK\"}\n",
    )
    .unwrap();
    let mut reader = BufReader::new(s.try_clone().unwrap());
    // The recent ones match none (HANDSHAKE_OK); a marker published after we are
    // registered must arrive. Registration happens before the server reads further, so
    // publish until the first matching event shows up.
    let marker = ev(10, S2, "SESSION_STATE_CHANGED", Some("REATTACH_OK"));
    let (tx, rx) = mpsc::channel();
    let reader_thread = thread::spawn(move || {
        let mut line = String::new();
        while reader.read_line(&mut line).unwrap_or(0) > 0 {
            let v: Value = serde_json::from_str(&line).unwrap();
            if tx.send(v).is_err() {
                break;
            }
            line.clear();
        }
    });
    let first = loop {
        h.server
            .publish(ev(4, S1, "SESSION_STATE_CHANGED", Some("REATTACH_OK")));
        h.server.publish(ev(5, S2, "PATH_SWITCHED", None));
        h.server
            .publish(ev(6, S2, "SESSION_STATE_CHANGED", Some("TRANSPORT_DEAD")));
        h.server.publish(marker.clone());
        if let Ok(v) = rx.recv_timeout(Duration::from_millis(100)) {
            break v;
        }
    };
    assert_eq!(first, serde_json::from_str::<Value>(&marker.line).unwrap());
    h.server
        .publish(ev(11, S2, "SESSION_STATE_CHANGED", Some("REATTACH_OK")));
    // Everything received is the marker or event 11, nothing else.
    let mut after = Vec::new();
    loop {
        let v = rx.recv_timeout(Duration::from_secs(10)).unwrap();
        let n = v["state_version"].as_u64().unwrap();
        after.push(n);
        if n == 11 {
            break;
        }
    }
    assert!(after.iter().all(|n| *n == 10 || *n == 11), "{after:?}");
    s.shutdown(std::net::Shutdown::Both).unwrap();
    drop(s);
    reader_thread.join().unwrap();
    h.shutdown();
}

#[test]
fn a_follower_that_never_reads_does_not_block_publish() {
    let h = Harness::new("slow");
    let mut s = UnixStream::connect(&h.path).unwrap();
    s.write_all(b"{\"v\":1,\"cmd\":\"events\",\"follow\":true}\n")
        .unwrap();
    // Wait until the follower is registered: it receives a marker (read one line only).
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut reader = BufReader::new(s.try_clone().unwrap());
    let mut line = String::new();
    while line.is_empty() {
        h.server.publish(ev(0, S1, "SESSION_CREATED", None));
        let _ = reader.read_line(&mut line);
    }
    let big = "x".repeat(200);
    for n in 0..10_000u64 {
        let mut e = ev(n, S1, "POLICY_LIMIT", None);
        e.line = format!("{}, \"padding\": \"{big}\"}}", e.line.trim_end_matches('}')).into();
        h.server.publish(e);
    }
    assert!(h.server.events_dropped() > 0);
    drop(reader);
    drop(s);
    h.shutdown();
}

#[test]
fn socket_file_mode_and_removal() {
    let h = Harness::new("mode");
    let mode = std::fs::metadata(&h.path).unwrap().permissions().mode() & 0o7777;
    assert_eq!(mode, 0o660);
    let dir_mode = std::fs::metadata(h.path.parent().unwrap())
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(dir_mode & 0o755, 0o755);
    // A second server on the same live socket is refused.
    let err = Server::bind(&h.path, None, Box::new(|| {})).unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::AddrInUse);
    let (server, path) = h.shutdown();
    drop(server);
    assert!(!path.exists());
    // A stale socket file (nobody listening) is replaced.
    let l = std::os::unix::net::UnixListener::bind(&path).unwrap();
    drop(l);
    assert!(path.exists());
    let server = Server::bind(&path, None, Box::new(|| {})).unwrap();
    drop(server);
    assert!(!path.exists());
    // Drop returns even when someone removed the socket file behind our back.
    let server = Server::bind(&path, None, Box::new(|| {})).unwrap();
    std::fs::remove_file(&path).unwrap();
    drop(server);
    let _ = std::fs::remove_dir(path.parent().unwrap());
}

#[test]
fn connections_above_the_limit_are_answered_unavailable() {
    let h = Harness::new("limit");
    // 64 connections that send nothing (each holds a slot until its read timeout).
    let idle: Vec<UnixStream> = (0..jumping_control_api::server::MAX_CONNECTIONS)
        .map(|_| UnixStream::connect(&h.path).unwrap())
        .collect();
    let v = raw(&h.path, b"{\"v\":1,\"cmd\":\"status\"}\n");
    assert_eq!(error_code(&v), "unavailable");
    drop(idle);
    h.shutdown();
}
