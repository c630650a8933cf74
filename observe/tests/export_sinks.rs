//! The SIEM export against real receivers on loopback: a TCP syslog receiver that stops
//! reading (pushes never block, drops are counted, the sink reconnects), a UDP receiver, and
//! file rotation.

use std::io::{BufRead, BufReader, Read};
use std::net::{TcpListener, TcpStream, UdpSocket};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use jumping_observe::export::{ExportConfig, Exporter, FileTarget, SyslogTarget, Transport};
use serde_json::json;

fn event(i: u64) -> serde_json::Value {
    json!({"ts": "2026-11-24T03:58:19.123Z", "event": "SESSION_STATE_CHANGED",
           "session_id": "0100000000000001", "correlation_id": "n0-0100000000000001",
           "node_id": 0, "state_version": i, "policy_version": 1,
           "from_state": "ATTACHED", "to_state": "VOLATILE",
           "reason_code": "QUALITY_THRESHOLD_EXCEEDED", "padding": "x".repeat(200)})
}

/// Read one octet-counted frame.
fn read_frame(r: &mut BufReader<TcpStream>) -> String {
    let mut len = Vec::new();
    r.read_until(b' ', &mut len).expect("frame length");
    let n: usize = std::str::from_utf8(&len[..len.len() - 1])
        .expect("ascii length")
        .parse()
        .expect("decimal length");
    let mut msg = vec![0u8; n];
    r.read_exact(&mut msg).expect("frame body");
    String::from_utf8(msg).expect("utf-8 frame")
}

fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !cond() {
        assert!(Instant::now() < deadline, "gave up waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_receiver_that_stops_reading_never_blocks_the_producer() {
    let listener = TcpListener::bind("127.0.0.1:0").expect("listen");
    let mut cfg = ExportConfig::none();
    cfg.queue = 256;
    cfg.syslog.push(SyslogTarget {
        addr: listener.local_addr().expect("addr"),
        transport: Transport::Tcp,
    });
    let exporter = Exporter::start(&cfg).expect("start");

    // The receiver reads three frames, then stops reading but keeps the connection open.
    for i in 0..3 {
        exporter.push(&event(i));
    }
    let (stalled, _) = listener.accept().expect("accept");
    let mut r = BufReader::new(stalled.try_clone().expect("clone"));
    for i in 0..3 {
        let m = read_frame(&mut r);
        let p = syslog_loose::parse_message(&m, syslog_loose::Variant::RFC5424);
        assert_eq!(p.msgid, Some("SESSION_STATE_CHANGED"), "{m}");
        let v: serde_json::Value = serde_json::from_str(p.msg).expect("JSON message");
        assert_eq!(v["state_version"], i);
    }

    // 100 000 more events: the socket buffers and the queue fill up, the rest is dropped and
    // counted. Pushing happens on another thread so that a blocking push fails the test
    // instead of hanging it.
    let (done_tx, done_rx) = mpsc::channel();
    let pushed = 100_000u64;
    let handle = std::thread::spawn(move || {
        for i in 0..pushed {
            exporter.push(&event(3 + i));
        }
        done_tx.send(()).expect("report");
        exporter
    });
    done_rx
        .recv_timeout(Duration::from_secs(60))
        .expect("Exporter::push blocked on a receiver that stopped reading");
    let exporter = handle.join().expect("producer");
    let s = exporter.snapshot()[0].clone();
    assert_eq!(s.kind, "syslog_tcp");
    assert!(s.dropped > 0, "nothing was dropped: {s:?}");
    assert!(s.sent + s.dropped <= pushed + 3, "{s:?}");

    // The stalled write times out; the sink gives the connection up and dials again.
    wait_for("the stalled connection to be given up", || {
        exporter.snapshot()[0].errors > 0
    });
    drop(r);
    drop(stalled);
    let (fresh, _) = listener.accept().expect("reconnect");
    fresh
        .set_read_timeout(Some(Duration::from_secs(30)))
        .expect("timeout");
    let mut r = BufReader::new(fresh);
    exporter.push(
        &json!({"ts": "2026-11-24T04:00:00.000Z", "event": "SESSION_TERMINATED",
                          "session_id": "0100000000000001", "reason_code": "MARKER"}),
    );
    // Whatever was still queued comes first, each frame intact; then the marker.
    let mut frames = 0;
    loop {
        let m = read_frame(&mut r);
        let p = syslog_loose::parse_message(&m, syslog_loose::Variant::RFC5424);
        assert!(p.msgid.is_some(), "a broken frame after reconnecting: {m}");
        frames += 1;
        if p.msgid == Some("SESSION_TERMINATED") {
            assert!(m.contains("\"MARKER\""), "{m}");
            break;
        }
        assert!(frames <= 300, "the marker never came");
    }
    let s = exporter.snapshot()[0].clone();
    assert!(s.connected, "{s:?}");
    drop(exporter);
}

#[test]
fn udp_receiver_gets_one_rfc5424_message_per_datagram() {
    let rx = UdpSocket::bind("127.0.0.1:0").expect("bind");
    rx.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let mut cfg = ExportConfig::none();
    cfg.hostname = "gw-test".into();
    cfg.syslog.push(SyslogTarget {
        addr: rx.local_addr().expect("addr"),
        transport: Transport::Udp,
    });
    let exporter = Exporter::start(&cfg).expect("start");
    for i in 0..5 {
        exporter.push(&event(i));
    }
    let mut buf = [0u8; 65536];
    for i in 0..5 {
        let n = rx.recv(&mut buf).expect("datagram");
        let m = std::str::from_utf8(&buf[..n]).expect("utf-8");
        let p = syslog_loose::parse_message(m, syslog_loose::Variant::RFC5424);
        assert_eq!(p.hostname, Some("gw-test"));
        let v: serde_json::Value = serde_json::from_str(p.msg).expect("JSON message");
        assert_eq!(v["state_version"], i);
    }
    wait_for("the sends to be counted", || {
        exporter.snapshot()[0].sent == 5
    });
}

#[test]
fn file_export_rotates_and_keeps_whole_lines() {
    let dir = std::env::temp_dir().join(format!("jumping-export-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let path = dir.join("events.jsonl");
    let mut cfg = ExportConfig::none();
    cfg.file = Some(FileTarget {
        path: path.clone(),
        max_bytes: 2000,
        keep: 3,
    });
    let exporter = Exporter::start(&cfg).expect("start");
    for i in 0..100 {
        exporter.push(&event(i));
    }
    drop(exporter); // writes what is queued
    let mut versions = Vec::new();
    for f in [
        dir.join("events.jsonl.3"),
        dir.join("events.jsonl.2"),
        dir.join("events.jsonl.1"),
        path.clone(),
    ] {
        let text = std::fs::read_to_string(&f).unwrap_or_else(|e| panic!("{}: {e}", f.display()));
        assert!(
            text.len() < 2000 + 600,
            "{} is {} bytes",
            f.display(),
            text.len()
        );
        for line in text.lines() {
            let v: serde_json::Value = serde_json::from_str(line).expect("whole JSON lines");
            versions.push(v["state_version"].as_u64().expect("version"));
        }
    }
    assert!(
        !dir.join("events.jsonl.4").exists(),
        "kept more than 3 rotated files"
    );
    assert_eq!(versions.last(), Some(&99));
    assert!(
        versions.windows(2).all(|w| w[1] == w[0] + 1),
        "{versions:?}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn an_unwritable_export_file_is_refused_at_start() {
    let mut cfg = ExportConfig::none();
    cfg.file = Some(FileTarget {
        path: "/proc/jumping/events.jsonl".into(),
        max_bytes: 1000,
        keep: 1,
    });
    let e = Exporter::start(&cfg).expect_err("refused").to_string();
    assert!(e.contains("/proc/jumping/events.jsonl"), "{e}");
}

#[test]
fn drops_are_counted_when_the_queue_is_full() {
    // A receiver that never accepts: the sink cannot connect, so the queue fills.
    let listener = TcpListener::bind("127.0.0.1:0").expect("listen");
    let addr = listener.local_addr().expect("addr");
    drop(listener);
    let mut cfg = ExportConfig::none();
    cfg.queue = 8;
    cfg.syslog.push(SyslogTarget {
        addr,
        transport: Transport::Tcp,
    });
    let exporter = Exporter::start(&cfg).expect("start");
    for i in 0..1000 {
        exporter.push(&event(i));
    }
    let s = exporter.snapshot()[0].clone();
    // At most the queue plus the one event the sink holds are kept.
    assert!(s.dropped >= 1000 - 9, "{s:?}");
    assert_eq!(s.sent, 0);
}
