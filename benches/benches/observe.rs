//! What observability costs the decision thread (issue "Observability": events, metrics and
//! export must never slow a decision): per event, counting it for the metrics, writing it as
//! JSON (once, shared by stdout and every sink), and handing the line to the SIEM export — with no sink, with a file sink, and with a
//! syslog TCP receiver that is gone (every push finds a full queue and is dropped). Also the
//! copy handed to the metrics endpoint once a second, and a scrape's rendering (on the
//! endpoint's thread, not the decision thread).
//!
//! Run: `cargo bench -p jumping-benches --bench observe` (or `cargo xtask bench observe`).

use std::hint::black_box;
use std::net::TcpListener;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use jumping_benches::{MEASUREMENT_TIME, SAMPLE_SIZE, WARM_UP_TIME};
use jumping_control::events;
use jumping_control::metrics::ControlMetrics;
use jumping_protocol::state::{Reason, State};
use jumping_protocol::wire::SessionId;
use jumping_protocol::{Event, Path};
use observe::export::{ExportConfig, Exporter, FileTarget, SyslogTarget, Transport};
use observe::metrics::{LatencyHistogram, MetricSet, RECOVERY_BUCKETS};

fn switched() -> Event {
    Event::PathSwitched {
        session_id: SessionId(0x0100_0000_0000_0001),
        from_path: Some(Path::udp("192.0.2.1:40000".parse().expect("addr"))),
        to_path: Path::udp("192.0.2.1:40001".parse().expect("addr")),
        recovery_ms: Some(812),
        reattach_ms: Some(3),
        version: 7,
    }
}

fn state_changed() -> Event {
    Event::StateChanged {
        session_id: SessionId(0x0100_0000_0000_0001),
        from: State::Attached,
        to: State::Volatile,
        reason: Reason::QualityThresholdExceeded,
        version: 8,
    }
}

fn per_event(c: &mut Criterion) {
    let mut g = c.benchmark_group("observe per event");
    g.measurement_time(MEASUREMENT_TIME)
        .warm_up_time(WARM_UP_TIME)
        .sample_size(SAMPLE_SIZE)
        .throughput(Throughput::Elements(1));
    let e = switched();
    let mut m = ControlMetrics::default();
    g.bench_function("count for metrics (PATH_SWITCHED, 2 histograms)", |b| {
        b.iter(|| m.observe(black_box(&e)));
    });
    let s = state_changed();
    g.bench_function("count for metrics (SESSION_STATE_CHANGED)", |b| {
        b.iter(|| m.observe(black_box(&s)));
    });
    g.bench_function("to JSON line", |b| {
        b.iter(|| black_box(events::record(black_box(&e), 0, 1)));
    });
    let v = events::record(&e, 0, 1).line;
    let none = Exporter::start(&ExportConfig::none()).expect("exporter");
    g.bench_function("export push, no sink", |b| {
        b.iter(|| none.push_line(black_box(&v)))
    });

    let dir = std::env::temp_dir().join(format!("jumping-bench-export-{}", std::process::id()));
    let mut cfg = ExportConfig::none();
    cfg.file = Some(FileTarget {
        path: dir.join("events.jsonl"),
        max_bytes: 64 << 20,
        keep: 1,
    });
    let file = Exporter::start(&cfg).expect("file exporter");
    g.bench_function("export push, file sink", |b| {
        b.iter(|| file.push_line(black_box(&v)))
    });
    drop(file);
    let _ = std::fs::remove_dir_all(&dir);

    // Nothing listens there: the sink retries with backoff and the queue stays full.
    let gone = TcpListener::bind("127.0.0.1:0").expect("port");
    let addr = gone.local_addr().expect("addr");
    drop(gone);
    let mut cfg = ExportConfig::none();
    cfg.queue = 64;
    cfg.syslog.push(SyslogTarget {
        addr,
        transport: Transport::Tcp,
    });
    let stalled = Exporter::start(&cfg).expect("tcp exporter");
    for _ in 0..100 {
        stalled.push_line(&v);
    }
    std::thread::sleep(Duration::from_millis(50));
    g.bench_function(
        "export push, syslog receiver gone (queue full: drop and count)",
        |b| {
            b.iter(|| stalled.push_line(black_box(&v)));
        },
    );
    g.finish();
}

fn per_second(c: &mut Criterion) {
    let mut g = c.benchmark_group("observe per scrape");
    g.measurement_time(MEASUREMENT_TIME)
        .warm_up_time(WARM_UP_TIME)
        .sample_size(SAMPLE_SIZE);
    let mut m = ControlMetrics::default();
    for i in 0..10_000u64 {
        m.observe(&Event::PathSwitched {
            session_id: SessionId(i),
            from_path: None,
            to_path: Path::udp("192.0.2.1:40001".parse().expect("addr")),
            recovery_ms: Some(i % 30_000),
            reattach_ms: Some(i % 50),
            version: 1,
        });
    }
    g.bench_function(
        "copy for the endpoint (decision thread, once a second)",
        |b| {
            b.iter(|| black_box(m.clone()));
        },
    );
    let mut h = LatencyHistogram::new(RECOVERY_BUCKETS);
    for i in 0..10_000u64 {
        h.record(Duration::from_millis(i % 30_000));
    }
    g.bench_function(
        "render 2 histograms and 60 counters (endpoint thread)",
        |b| {
            b.iter(|| {
                let mut s = MetricSet::new();
                s.histogram("a_seconds", "a", vec![], &h);
                s.histogram("b_seconds", "b", vec![], &h);
                for i in 0..60u64 {
                    s.counter("c", "c", vec![("reason", i.to_string())], i);
                }
                black_box(s.render())
            });
        },
    );
    g.finish();
}

criterion_group!(benches, per_event, per_second);
criterion_main!(benches);
