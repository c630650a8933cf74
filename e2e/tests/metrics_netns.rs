//! The gateway's metrics endpoints and SIEM export through the real processes in namespaces,
//! as root: after a session, traffic and a NAT rebind, both Prometheus endpoints (control and
//! data plane, scraped from inside the gateway's namespace) count what happened — handshakes,
//! sessions by state, the switch and its recovery and reattach latencies, per-worker packets,
//! XDP outcomes — and the export file holds the events the control process printed, in order,
//! while a syslog receiver that is gone makes the export drop and count events and changes
//! nothing else: the session and its traffic carry on.
//!
//! Every sink gets a queue of one event here (`queue = 1`), so the file sink may drop too: what
//! it wrote must be stdout in order, and what it wrote plus what it counted as dropped must be
//! every event. Skipped without root.

use std::collections::BTreeMap;
use std::time::Duration;

use jumping_e2e::{in_ns, root_or_skip, wait_for, Net, Traffic};
use serde_json::Value;

/// `name{labels} value` lines of an exposition, keyed by everything before the value.
fn samples(text: &str) -> BTreeMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| {
            let (k, v) = l.rsplit_once(' ')?;
            Some((k.to_string(), v.parse().ok()?))
        })
        .collect()
}

fn scrape(net: &Net, port: u16) -> BTreeMap<String, f64> {
    let url = format!("http://127.0.0.1:{port}/metrics");
    let out = in_ns(&net.gw, &["curl", "-sf", "--max-time", "5", &url]).expect("curl");
    assert!(out.status.success(), "scraping {url} failed: {out:?}");
    samples(&String::from_utf8_lossy(&out.stdout))
}

fn get(m: &BTreeMap<String, f64>, key: &str) -> f64 {
    *m.get(key)
        .unwrap_or_else(|| panic!("no sample `{key}` in {:#?}", m.keys().collect::<Vec<_>>()))
}

#[test]
fn metrics_count_what_happened_and_a_gone_siem_receiver_changes_nothing() {
    if !root_or_skip() {
        return;
    }
    let mut net = Net::build("m").expect("topology");
    net.start_dataplane().expect("data plane");
    net.configure_control("").expect("configure");
    // Export to a file and to a TCP syslog receiver that is not there (nothing listens on
    // port 9; the sink keeps retrying), with the smallest queue so that drops happen.
    let export_file = net.dir.join("events.jsonl");
    let toml = net.dir.join("control.toml");
    let cfg = std::fs::read_to_string(&toml).expect("control.toml");
    std::fs::write(
        &toml,
        format!(
            "metrics_listen = \"127.0.0.1:9470\"\nlog_format = \"json\"\n{cfg}\n[export]\n\
             file = \"{}\"\nsyslog = [\"tcp://127.0.0.1:9\"]\nqueue = 1\n",
            export_file.display()
        ),
    )
    .expect("write control.toml");
    net.start_control().expect("control");
    net.start_client().expect("client");
    assert!(
        net.client_in_state("ATTACHED", Duration::from_secs(20)),
        "no session:\ncontrol: {}",
        net.control.as_ref().map(|p| p.log()).unwrap_or_default()
    );
    let traffic = Traffic::start(&net, Duration::from_millis(10)).expect("traffic");
    assert!(traffic.flowing(50, Duration::from_secs(10)), "no traffic");
    net.nat_rebind().expect("conntrack flush");
    assert!(
        wait_for(Duration::from_secs(10), || net
            .control_events()
            .iter()
            .any(|e| e["event"] == "PATH_SWITCHED")),
        "no PATH_SWITCHED after the NAT rebind"
    );
    assert!(
        traffic.flowing(50, Duration::from_secs(10)),
        "traffic after the rebind"
    );

    // The control endpoint publishes a copy about once a second.
    let mut c = BTreeMap::new();
    assert!(
        wait_for(Duration::from_secs(10), || {
            c = scrape(&net, 9470);
            c.get("jumping_path_switches_total").copied().unwrap_or(0.0) >= 1.0
        }),
        "the control endpoint never counted the switch: {c:#?}"
    );
    assert_eq!(get(&c, "jumping_handshakes_total"), 1.0);
    assert_eq!(get(&c, "jumping_sessions{state=\"ATTACHED\"}"), 1.0);
    assert_eq!(get(&c, "jumping_reattaches_total"), 1.0);
    assert_eq!(
        get(
            &c,
            "jumping_state_changes_total{to_state=\"ATTACHED\",reason=\"REATTACH_OK\"}"
        ),
        1.0
    );
    assert_eq!(get(&c, "jumping_recovery_latency_seconds_count"), 1.0);
    assert_eq!(get(&c, "jumping_reattach_latency_seconds_count"), 1.0);
    assert_eq!(
        get(&c, "jumping_reattach_latency_seconds_bucket{le=\"+Inf\"}"),
        1.0
    );
    assert_eq!(get(&c, "jumping_dataplane_connected"), 1.0);

    // The data plane's endpoint: per-worker counters and the XDP program's.
    let d = scrape(&net, 9471);
    assert!(
        get(
            &d,
            "jumping_worker_rx_packets_total{worker=\"0\",cpu=\"0\"}"
        ) > 50.0
    );
    assert!(get(&d, "jumping_worker_delivered_total{worker=\"0\",cpu=\"0\"}") > 50.0);
    assert!(get(&d, "jumping_xdp_packets_total{counter=\"redirect_data\"}") > 50.0);
    assert_eq!(get(&d, "jumping_dataplane_sessions"), 1.0);
    assert_eq!(
        get(&d, "jumping_dataplane_backend{backend=\"af_xdp\"}"),
        1.0
    );

    // The export: the file holds exactly what the control process printed; the gone syslog
    // receiver's events were dropped and counted, and nothing else noticed.
    // The file sink writes on its own thread, through the same one-event queue: what it wrote
    // is stdout in order, and with what it counted as dropped, accounts for every event.
    let printed: Vec<Value> = net.control_events();
    let file_key = |what: &str| {
        format!(
            "jumping_export_{what}_total{{sink=\"file\",target=\"{}\"}}",
            export_file.display()
        )
    };
    let mut c = BTreeMap::new();
    assert!(
        wait_for(Duration::from_secs(10), || {
            c = scrape(&net, 9470);
            c.get(&file_key("sent")).copied().unwrap_or(0.0)
                + c.get(&file_key("dropped")).copied().unwrap_or(0.0)
                >= printed.len() as f64
        }),
        "the file sink did not account for {} events: {c:#?}",
        printed.len()
    );
    let exported: Vec<Value> = std::fs::read_to_string(&export_file)
        .expect("export file")
        .lines()
        .map(|l| serde_json::from_str(l).expect("JSON line"))
        .collect();
    let mut rest = printed.iter();
    for e in &exported {
        assert!(
            rest.any(|p| p == e),
            "the export file is not stdout in order:\nfile: {exported:?}\nstdout: {printed:?}"
        );
    }
    assert!(!exported.is_empty(), "nothing exported to the file");
    assert_eq!(get(&c, &file_key("sent")), exported.len() as f64);
    assert_eq!(
        get(&c, &file_key("sent")) + get(&c, &file_key("dropped")),
        printed.len() as f64
    );
    let gone = "jumping_export_dropped_total{sink=\"syslog_tcp\",target=\"127.0.0.1:9\"}";
    // The sink holds one event while it retries, the queue one more: the rest is dropped.
    assert!(
        get(&c, gone) >= printed.len() as f64 - 2.0 && get(&c, gone) > 0.0,
        "{gone} = {} for {} events",
        get(&c, gone),
        printed.len()
    );
    assert_eq!(
        get(
            &c,
            "jumping_export_connected{sink=\"syslog_tcp\",target=\"127.0.0.1:9\"}"
        ),
        0.0
    );
    // `jumpctl stats` shows the same export counters.
    let stats = net.jumpctl_json(&["stats"]).expect("jumpctl stats");
    let exports = stats["control"]["exports"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let tcp = exports
        .iter()
        .find(|x| x["sink"] == "syslog_tcp")
        .unwrap_or_else(|| panic!("no syslog_tcp sink in jumpctl stats: {stats}"));
    assert!(tcp["dropped"].as_u64().unwrap_or(0) > 0, "{tcp}");
    assert_eq!(tcp["connected"], false, "{tcp}");
    let (sent, received) = traffic.stop();
    assert!(
        received > 0 && sent >= received,
        "traffic {sent}/{received}"
    );
    assert!(net.client_in_state("ATTACHED", Duration::from_secs(1)));

    // Logs were JSON lines (log_format = "json"), and the ones about a session carry its
    // correlation id.
    let log = net.control.as_ref().map(|p| p.log()).unwrap_or_default();
    let lines: Vec<Value> = log
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    assert!(!lines.is_empty(), "no JSON log lines:\n{log}");
    assert!(lines.iter().all(|l| l.get("level").is_some()), "{log}");
}
