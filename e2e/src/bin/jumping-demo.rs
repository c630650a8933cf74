//! `cargo xtask demo`: a real session surviving the network, in namespaces.
//!
//! Builds the topology of `jumping_e2e` (client with two paths, a NAT box, the gateway's data
//! plane on AF_XDP and its control process, a server), starts a session on the embedded
//! default configuration, runs traffic through it, forces a NAT rebind (conntrack flush) and
//! then the failure of the client's first path, and prints what happened: states, versions,
//! reason codes, recovery time and packets lost. Everything is removed at the end.

use std::time::Duration;

use anyhow::{bail, Result};
use jumping_e2e::{build_binaries, in_ns, is_root, wait_for, Net, Traffic};
use serde_json::Value;

fn show(who: &'static str, line: &str) {
    let Ok(v) = serde_json::from_str::<Value>(line) else {
        return;
    };
    let s = |k: &str| v.get(k).and_then(Value::as_str).unwrap_or("").to_string();
    let n = |k: &str| v.get(k).and_then(Value::as_u64);
    let text = match s("event").as_str() {
        "SESSION_CREATED" => format!("session {} created from {}", s("session_id"), s("path")),
        "SESSION_STATE_CHANGED" => format!(
            "{} → {}  version {}  ({})",
            s("from_state"),
            s("to_state"),
            n("state_version").unwrap_or(0),
            s("reason_code")
        ),
        "PATH_SWITCHED" => format!(
            "path switched {} → {}  version {}  recovery {} ms",
            s("from_path"),
            s("to_path"),
            n("state_version").unwrap_or(0),
            n("recovery_ms").map_or("-".into(), |x| x.to_string())
        ),
        "SESSION_TERMINATED" => format!(
            "session ended ({}) after {} ms, {} switches",
            s("reason_code"),
            n("session_age_ms").unwrap_or(0),
            n("switches_total").unwrap_or(0)
        ),
        "established" => format!("handshake done on path {}", n("path").unwrap_or(0)),
        "path_up" => format!("path {} is usable again", n("path").unwrap_or(0)),
        "challenge_answered" => format!(
            "answered the gateway's path challenge on path {}",
            n("path").unwrap_or(0)
        ),
        "path_down" => format!("path {} is down: {}", n("path").unwrap_or(0), s("error")),
        "path_switch_started" => format!(
            "switching to path {} ({}), reason {}",
            n("path").unwrap_or(0),
            s("spec"),
            s("reason")
        ),
        "reattached" => format!(
            "reattached on path {}, gateway version {}",
            n("path").unwrap_or(0),
            n("version").unwrap_or(0)
        ),
        "" | "connecting" | "state_changed" => return,
        other => other.to_string(),
    };
    println!("  [{who:>7}] {text}");
}

fn step(t: &str) {
    println!("\n== {t}");
}

fn phase(traffic: &Traffic, since_ms: u64, before: (u64, u64)) {
    let (sent, recv) = traffic.counts();
    let (gap, _) = traffic.longest_gap_after(since_ms);
    println!(
        "  traffic: {} datagrams sent, {} echoed back in this phase; longest interruption {gap} ms",
        sent - before.0,
        recv - before.1
    );
}

fn main() -> Result<()> {
    if !is_root() {
        bail!("the demo builds network namespaces and loads XDP: run it as root (sudo -E cargo xtask demo)");
    }
    build_binaries()?;
    step("Building the topology: client (2 paths) → NAT box (masquerade) → gateway (AF_XDP) → server");
    let mut net = Net::build("demo")?;
    net.echo = Some(show);
    net.start_dataplane()?;
    println!("  data plane: AF_XDP on the gateway's outside NIC, TUN inside");
    net.configure_control("")?;
    net.start_control()?;
    println!(
        "  control process: embedded default policy (path dead after 5 s, recovery window 15 s)"
    );
    step("Client connects");
    net.start_client()?;
    if !net.client_in_state("ATTACHED", Duration::from_secs(20)) {
        bail!(
            "no session; client log:\n{}",
            net.client.as_ref().map(|p| p.log()).unwrap_or_default()
        );
    }
    step("Traffic: one UDP datagram every 10 ms to the server, echoed back through the tunnel");
    let traffic = Traffic::start(&net, Duration::from_millis(10))?;
    if !traffic.flowing(100, Duration::from_secs(10)) {
        bail!("no traffic through the tunnel");
    }
    std::thread::sleep(Duration::from_secs(1));
    phase(&traffic, 0, (0, 0));

    step("NAT rebind: the NAT box forgets every mapping (conntrack -F); the client's next datagram leaves from a new port");
    let (t0, c0) = (traffic.now_ms(), traffic.counts());
    net.nat_rebind()?;
    wait_for(Duration::from_secs(10), || {
        net.control_events()
            .iter()
            .filter(|e| e["event"] == "PATH_SWITCHED")
            .count()
            >= 1
    });
    std::thread::sleep(Duration::from_secs(2));
    phase(&traffic, t0, c0);

    step("The client's first path fails (link down); it reattaches on its second path");
    let (t1, c1) = (traffic.now_ms(), traffic.counts());
    net.path0_down()?;
    wait_for(Duration::from_secs(15), || {
        net.control_events()
            .iter()
            .filter(|e| e["event"] == "PATH_SWITCHED")
            .count()
            >= 2
    });
    std::thread::sleep(Duration::from_secs(2));
    phase(&traffic, t1, c1);

    step("What the operator sees: jumpctl sessions");
    let out = net.jumpctl(&["sessions"])?;
    print!("{}", String::from_utf8_lossy(&out.stdout));

    step("What Prometheus scrapes (control 127.0.0.1:9470, data plane :9471; a selection)");
    for (port, wanted) in [
        (
            9470,
            &[
                "jumping_handshakes_total",
                "jumping_path_switches_total",
                "jumping_sessions{state=\"ATTACHED\"}",
                "jumping_recovery_latency_seconds_count",
                "jumping_recovery_latency_seconds_sum",
                "jumping_reattach_latency_seconds_sum",
            ][..],
        ),
        (
            9471,
            &[
                "jumping_worker_rx_packets_total",
                "jumping_worker_tx_packets_total",
                "jumping_dataplane_drops_total{reason=\"replay\"}",
                "jumping_xdp_packets_total{counter=\"redirect_data\"}",
            ][..],
        ),
    ] {
        let url = format!("http://127.0.0.1:{port}/metrics");
        match in_ns(&net.gw, &["curl", "-sf", "--max-time", "5", &url]) {
            Ok(out) => {
                let text = String::from_utf8_lossy(&out.stdout).into_owned();
                for line in text.lines().filter(|l| {
                    wanted.iter().any(|w| {
                        l.starts_with(&format!("{w} ")) || l.starts_with(&format!("{w}{{"))
                    })
                }) {
                    println!("  {line}");
                }
            }
            Err(e) => println!("  (metrics at {url} not readable: {e:#})"),
        }
    }

    step("The client stops: it ends the session explicitly");
    let (sent, recv) = traffic.stop();
    if let Some(mut c) = net.client.take() {
        let _ = c.stop();
    }
    wait_for(Duration::from_secs(5), || {
        net.control_events()
            .iter()
            .any(|e| e["event"] == "SESSION_TERMINATED")
    });
    let ev = net.control_events();
    let created = ev
        .iter()
        .filter(|e| e["event"] == "SESSION_CREATED")
        .count();
    let versions: Vec<u64> = ev
        .iter()
        .filter(|e| e["event"] == "SESSION_STATE_CHANGED")
        .filter_map(|e| e["state_version"].as_u64())
        .collect();
    step("Summary");
    println!("  handshakes: {created} (the session survived both events without a new one)");
    println!("  state versions: {versions:?} (one per accepted transition, no gap)");
    println!(
        "  datagrams: {sent} sent, {recv} echoed, {} lost ({:.2} %)",
        sent - recv,
        (sent - recv) as f64 * 100.0 / sent.max(1) as f64
    );
    step("Cleaning up (namespaces, processes, files)");
    drop(net);
    println!("  done");
    Ok(())
}
