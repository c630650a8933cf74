//! End to end under adversity, through the real processes in namespaces, as root: a replay of
//! captured tunnel datagrams from a third namespace changes nothing; both paths dead ends the
//! session through RECOVERING; a spent switch budget makes it DEGRADED; key rotation under
//! traffic loses nothing; and the io_uring data plane backend carries a session through a NAT
//! rebind. Skipped without root (unless JUMPING_REQUIRE_BPF_TESTS is set: then it fails).

use std::net::SocketAddrV4;
use std::time::{Duration, Instant};

use jumping_e2e::{of, root_or_skip, wait_for, Capture, Net, Traffic, GATEWAY};
use serde_json::Value;

/// Wire type codes (protocol/src/wire.rs `MessageType`), at UDP payload offset 1.
const TYPE_DATA: u8 = 4;
const TYPE_REATTACH_REQUEST: u8 = 7;
const TYPE_REATTACH_CHALLENGE: u8 = 8;

fn transitions(events: &[Value]) -> Vec<(String, String, String, u64)> {
    of(events, "SESSION_STATE_CHANGED")
        .iter()
        .map(|e| {
            (
                e["from_state"].as_str().unwrap_or("?").to_owned(),
                e["to_state"].as_str().unwrap_or("?").to_owned(),
                e["reason_code"].as_str().unwrap_or("?").to_owned(),
                e["state_version"].as_u64().unwrap_or(u64::MAX),
            )
        })
        .collect()
}

/// Versions of the SESSION_STATE_CHANGED events are 1, 2, 3... with no gap.
fn assert_versions_without_gap(events: &[Value]) {
    let v: Vec<u64> = transitions(events).iter().map(|t| t.3).collect();
    for (i, x) in v.iter().enumerate() {
        assert_eq!(*x, i as u64 + 1, "version gap in {v:?}");
    }
}

/// Start the data plane (`backend`), the control process with `policy`, and the client (with
/// `client_policy` if given); wait for ATTACHED and return the session id.
fn session(net: &mut Net, backend: &str, policy: &str, client_policy: Option<&str>) -> String {
    net.start_dataplane_with(backend, 1).expect("data plane");
    net.configure_control(policy).expect("configure");
    net.start_control().expect("control");
    match client_policy {
        Some(p) => net.start_client_with_policy(p).expect("client"),
        None => net.start_client().expect("client"),
    }
    assert!(
        net.client_in_state("ATTACHED", Duration::from_secs(20)),
        "no session:{}",
        net.diagnostics()
    );
    net.client_status().expect("status")["session_id"]
        .as_str()
        .expect("session id")
        .to_owned()
}

fn show(net: &Net, sid: &str) -> Value {
    net.jumpctl_json(&["session", "show", sid])
        .expect("jumpctl session show")
}

fn drops(net: &Net) -> (u64, Value) {
    let stats = net.jumpctl_json(&["stats"]).expect("jumpctl stats");
    let replay = stats["workers"]
        .as_array()
        .map(|w| w.iter().filter_map(|w| w["drops"]["replay"].as_u64()).sum())
        .unwrap_or(0);
    (replay, stats)
}

/// Wait until the echoes stop arriving (in flight drained); (sent, received).
fn drained(t: &Traffic) -> (u64, u64) {
    let mut last = t.counts();
    loop {
        std::thread::sleep(Duration::from_millis(300));
        let now = t.counts();
        if now == last {
            return now;
        }
        last = now;
    }
}

/// A third namespace replays captured data packets and a captured reattach request: nothing is
/// delivered, the session keeps its path, version and state, no transition or switch event
/// appears, and the data plane counts the replays.
#[test]
fn replayed_datagrams_from_a_third_namespace_change_nothing() {
    if !root_or_skip() {
        return;
    }
    let started = Instant::now();
    let mut net = Net::build("r").expect("topology");
    net.add_attacker().expect("attacker namespace");
    let gw: SocketAddrV4 = GATEWAY.parse().expect("gateway address");
    // In the NAT box: on the gateway the XDP program takes tunnel datagrams before any tap.
    let capture = Capture::start(&net.nat, gw).expect("capture");
    let sid = session(&mut net, "af_xdp", "", None);
    let traffic = Traffic::start(&net, Duration::from_millis(10)).expect("traffic");
    assert!(
        traffic.flowing(50, Duration::from_secs(10)),
        "no echoes:{}",
        net.diagnostics()
    );
    // A reattach: the client moves to path 1.
    net.switch_and_wait(1, 1);
    assert!(
        traffic.flowing(30, Duration::from_secs(10)),
        "traffic on path 1"
    );
    traffic.pause(true);
    let (sent, received) = drained(&traffic);
    assert_eq!(sent, received, "loss before the replay");
    let captured = capture.stop();
    let data: Vec<Vec<u8>> = captured
        .iter()
        .filter(|c| c.payload.get(1) == Some(&TYPE_DATA))
        .map(|c| c.payload.clone())
        .collect();
    let reattach: Vec<Vec<u8>> = captured
        .iter()
        .filter(|c| c.payload.get(1) == Some(&TYPE_REATTACH_REQUEST))
        .map(|c| c.payload.clone())
        .collect();
    assert!(
        data.len() as u64 >= sent,
        "captured {} data packets, {sent} sent",
        data.len()
    );
    assert!(!reattach.is_empty(), "no reattach request captured");

    let before = show(&net, &sid);
    let events_before = net.control_events();
    let server_before = traffic.server_count();
    assert_eq!(server_before, sent, "the server got each datagram once");
    let (replay_before, _) = drops(&net);

    // The replay: the reattach request(s) first, then every data packet, from one attacker
    // socket (its own NAT mapping: 192.0.2.1 with another port).
    let mut all = reattach.clone();
    all.extend(data.iter().cloned());
    let (from, answers) = net
        .attacker_send(gw.into(), &all, Duration::from_micros(200), Duration::ZERO)
        .expect("replay");
    eprintln!(
        "replayed {} reattach request(s) and {} data packets from {from}",
        reattach.len(),
        data.len()
    );
    // The reattach request(s) again after the data, from yet another socket and mapping.
    let (_, more) = net
        .attacker_send(
            gw.into(),
            &reattach,
            Duration::ZERO,
            Duration::from_millis(1500),
        )
        .expect("replay");
    let answers: Vec<Vec<u8>> = answers.into_iter().chain(more).collect();
    // Nothing the attacker receives may be a path challenge: its address is never validated.
    assert!(
        !answers
            .iter()
            .any(|a| a.get(1) == Some(&TYPE_REATTACH_CHALLENGE)),
        "the gateway challenged the attacker's address: types {:?}",
        answers.iter().map(|a| a.get(1)).collect::<Vec<_>>()
    );
    eprintln!(
        "the attacker received {} datagram(s), types {:?}",
        answers.len(),
        answers.iter().map(|a| a.get(1)).collect::<Vec<_>>()
    );
    std::thread::sleep(Duration::from_millis(1500));

    let (replay_after, stats) = drops(&net);
    assert_eq!(
        traffic.server_count(),
        server_before,
        "replayed data reached the server:{}",
        net.diagnostics()
    );
    let after = show(&net, &sid);
    for key in ["state", "version", "active_path", "switches", "key_epoch"] {
        assert_eq!(
            after[key], before[key],
            "{key} changed: {before} -> {after}"
        );
    }
    let events_after = net.control_events();
    for name in [
        "PATH_SWITCHED",
        "SESSION_STATE_CHANGED",
        "SESSION_TERMINATED",
    ] {
        assert_eq!(
            of(&events_after, name).len(),
            of(&events_before, name).len(),
            "a replay produced {name}: {:?}",
            &events_after[events_before.len()..]
        );
    }
    assert!(
        replay_after >= replay_before + data.len() as u64,
        "the data plane counted {} replay drops for {} replayed data packets: {stats}",
        replay_after - replay_before,
        data.len()
    );
    let new_events = &events_after[events_before.len()..];
    eprintln!("events from the replay: {new_events:?}");
    // Each replayed reattach request is refused as a replay and logged as a security event.
    let replays = 2 * reattach.len();
    assert_eq!(
        of(new_events, "REATTACH_REJECTED")
            .iter()
            .filter(|e| e["reject_code"] == "REPLAY_DETECTED")
            .count(),
        replays,
        "{new_events:?}"
    );
    assert!(
        of(new_events, "SECURITY_EVENT")
            .iter()
            .filter(|e| e["kind"] == "REPLAY")
            .count()
            >= replays,
        "{new_events:?}"
    );
    eprintln!("control stats: {}", stats["control"]);
    // The session still works, on the same path.
    traffic.pause(false);
    assert!(
        traffic.flowing(30, Duration::from_secs(10)),
        "traffic after the replay"
    );
    assert_eq!(net.client_status().expect("status")["current_path"], 1);
    let (sent, received) = traffic.stop();
    eprintln!(
        "traffic: {sent} sent, {received} echoed; {:?}",
        started.elapsed()
    );
}

const SHORT_TIMERS: &str = "heartbeat_interval = \"250ms\"\npath_dead_after = \"1500ms\"\n\
                            recovery_window = \"3s\"";

/// Both client paths fail: the gateway declares the path dead (RECOVERING, TRANSPORT_DEAD),
/// then ends the session when the recovery window runs out (RECOVERY_WINDOW_EXPIRED).
#[test]
fn both_paths_dead_recovering_then_terminated() {
    if !root_or_skip() {
        return;
    }
    let started = Instant::now();
    let mut net = Net::build("d").expect("topology");
    let sid = session(&mut net, "af_xdp", SHORT_TIMERS, Some(SHORT_TIMERS));
    // Healthy with the short timers: heartbeats keep it ATTACHED.
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(
        transitions(&net.control_events()).len(),
        1,
        "only BIRTH -> ATTACHED while healthy:{}",
        net.diagnostics()
    );
    let down = Instant::now();
    net.client_link("c0", false).expect("c0 down");
    net.client_link("c1", false).expect("c1 down");
    let recovering = |net: &Net| {
        transitions(&net.control_events())
            .iter()
            .any(|t| t.1 == "RECOVERING")
    };
    assert!(
        wait_for(Duration::from_secs(6), || recovering(&net)),
        "no RECOVERING:{}",
        net.diagnostics()
    );
    let t_recovering = down.elapsed();
    assert!(
        wait_for(Duration::from_secs(8), || {
            transitions(&net.control_events())
                .iter()
                .any(|t| t.1 == "TERMINATED")
        }),
        "no TERMINATED:{}",
        net.diagnostics()
    );
    let t_terminated = down.elapsed();
    eprintln!("RECOVERING after {t_recovering:?}, TERMINATED after {t_terminated:?}");
    let events = net.control_events();
    assert_versions_without_gap(&events);
    let tr = transitions(&events);
    // The links go down one after the other: the client may move to c1 when it sees c0 go,
    // and the gateway may bind c1 before c1 goes too (a few ms). That jump is legal and not
    // what this test is about.
    let tail: Vec<(&str, &str, &str)> = tr
        .iter()
        .map(|t| (t.0.as_str(), t.1.as_str(), t.2.as_str()))
        .filter(|t| *t != ("ATTACHED", "ATTACHED", "REATTACH_OK"))
        .collect();
    assert_eq!(
        tail,
        vec![
            ("BIRTH", "ATTACHED", "HANDSHAKE_OK"),
            ("ATTACHED", "RECOVERING", "TRANSPORT_DEAD"),
            ("RECOVERING", "TERMINATED", "RECOVERY_WINDOW_EXPIRED"),
        ],
        "{events:?}"
    );
    // path_dead_after 1.5 s, recovery_window 3 s (some slack for detection ticks).
    assert!(
        t_recovering >= Duration::from_millis(1000) && t_recovering <= Duration::from_millis(4000),
        "RECOVERING after {t_recovering:?}"
    );
    let in_recovery = t_terminated.saturating_sub(t_recovering);
    assert!(
        in_recovery >= Duration::from_millis(2500) && in_recovery <= Duration::from_millis(5500),
        "RECOVERING lasted about {in_recovery:?}, recovery_window is 3 s"
    );
    let term = of(&events, "SESSION_TERMINATED");
    assert_eq!(term.len(), 1, "{events:?}");
    assert_eq!(
        term[0]["reason_code"], "RECOVERY_WINDOW_EXPIRED",
        "{events:?}"
    );
    let sessions = net.jumpctl_json(&["sessions"]).expect("jumpctl sessions");
    assert!(
        !sessions["sessions"]
            .as_array()
            .expect("sessions")
            .iter()
            .any(|s| s["id"] == sid.as_str()
                && (s["state"] != "TERMINATED" || !s["active_path"].is_null())),
        "still listed as live: {sessions}"
    );
    eprintln!("sessions after: {sessions}; {:?}", started.elapsed());
}

/// The switch budget is spent (max_switches_per_min = 2): the third switch is refused with
/// SWITCH_RATE_LIMITED, the session is DEGRADED and keeps its path; after degraded_cooldown
/// with a healthy path it returns to ATTACHED (EXIT_DEGRADED).
#[test]
fn switch_budget_spent_degrades_then_recovers() {
    if !root_or_skip() {
        return;
    }
    let started = Instant::now();
    let policy = "max_switches_per_min = 2\nswitch_cooldown = \"0s\"\n\
                  degraded_cooldown = \"2s\"\ndegraded_max = \"20s\"\n\
                  heartbeat_interval = \"250ms\"";
    let mut net = Net::build("b").expect("topology");
    let sid = session(&mut net, "af_xdp", policy, Some(policy));
    let traffic = Traffic::start(&net, Duration::from_millis(10)).expect("traffic");
    assert!(
        traffic.flowing(20, Duration::from_secs(10)),
        "no echoes:{}",
        net.diagnostics()
    );
    for (i, to) in [1u32, 0].into_iter().enumerate() {
        let answer = net.client_switch(to).expect("switch");
        assert_eq!(answer["ok"], true, "switch {i}: {answer}");
        assert!(
            wait_for(Duration::from_secs(10), || {
                of(&net.control_events(), "PATH_SWITCHED").len() == i + 1
                    && net
                        .client_status()
                        .is_ok_and(|s| s["current_path"] == to && s["switching_to"].is_null())
            }),
            "switch {i} to path {to} did not complete:{}",
            net.diagnostics()
        );
    }
    let before = show(&net, &sid);
    assert_eq!(before["switches"], 2, "{before}");
    // The third switch inside the minute: over budget.
    let answer = net.client_switch(1).expect("switch");
    assert_eq!(answer["ok"], true, "the client tries: {answer}");
    let degraded_at = Instant::now();
    assert!(
        wait_for(Duration::from_secs(5), || {
            transitions(&net.control_events())
                .iter()
                .any(|t| t.1 == "DEGRADED")
        }),
        "no DEGRADED:{}",
        net.diagnostics()
    );
    let shown = show(&net, &sid);
    assert_eq!(shown["state"], "DEGRADED", "{shown}");
    assert_eq!(
        shown["active_path"], before["active_path"],
        "the binding moved: {shown}"
    );
    assert_eq!(shown["switches"], 2, "{shown}");
    assert_eq!(of(&net.control_events(), "PATH_SWITCHED").len(), 2);
    // Traffic keeps flowing on the kept path while DEGRADED.
    assert!(
        traffic.flowing(30, Duration::from_secs(5)),
        "traffic while DEGRADED"
    );
    // degraded_cooldown (2 s) over and the path healthy: back to ATTACHED.
    assert!(
        wait_for(Duration::from_secs(10), || {
            transitions(&net.control_events())
                .last()
                .is_some_and(|t| t.1 == "ATTACHED" && t.0 == "DEGRADED")
        }),
        "DEGRADED did not end:{}",
        net.diagnostics()
    );
    let exited_after = degraded_at.elapsed();
    let events = net.control_events();
    assert_versions_without_gap(&events);
    let tr: Vec<(String, String, String)> = transitions(&events)
        .into_iter()
        .map(|t| (t.0, t.1, t.2))
        .collect();
    let s = |a: &str, b: &str, c: &str| (a.to_owned(), b.to_owned(), c.to_owned());
    assert_eq!(
        tr,
        vec![
            s("BIRTH", "ATTACHED", "HANDSHAKE_OK"),
            s("ATTACHED", "ATTACHED", "REATTACH_OK"),
            s("ATTACHED", "ATTACHED", "REATTACH_OK"),
            s("ATTACHED", "DEGRADED", "SWITCH_RATE_LIMITED"),
            s("DEGRADED", "ATTACHED", "EXIT_DEGRADED"),
        ],
        "{events:?}"
    );
    assert!(
        exited_after >= Duration::from_millis(1500),
        "left DEGRADED after {exited_after:?}, before degraded_cooldown (2 s)"
    );
    let rejected = of(&events, "REATTACH_REJECTED");
    assert!(
        rejected
            .iter()
            .any(|e| e["reject_code"] == "SWITCH_RATE_LIMITED"),
        "{events:?}"
    );
    assert_eq!(net.client_status().expect("status")["current_path"], 0);
    // Still inside the minute: the budget is still spent, the next switch is refused again.
    let n_rejected = rejected.len();
    let answer = net.client_switch(1).expect("switch");
    assert_eq!(answer["ok"], true, "the client tries: {answer}");
    assert!(
        wait_for(Duration::from_secs(5), || {
            of(&net.control_events(), "REATTACH_REJECTED").len() > n_rejected
        }),
        "the fourth switch was not refused:{}",
        net.diagnostics()
    );
    std::thread::sleep(Duration::from_millis(500));
    let shown = show(&net, &sid);
    assert_eq!(shown["switches"], 2, "{shown}");
    assert_eq!(shown["active_path"], before["active_path"], "{shown}");
    assert_eq!(of(&net.control_events(), "PATH_SWITCHED").len(), 2);
    let last = transitions(&net.control_events()).last().cloned();
    assert_eq!(
        last.map(|t| (t.0, t.1, t.2)),
        Some(s("ATTACHED", "DEGRADED", "SWITCH_RATE_LIMITED")),
        "{shown}"
    );
    assert_versions_without_gap(&net.control_events());
    let (sent, received) = traffic.stop();
    eprintln!(
        "left DEGRADED after {exited_after:?}; traffic {sent}/{received}; {:?}",
        started.elapsed()
    );
}

/// Keys rotate twice under steady traffic (rekey_after = 10 s, the policy's minimum, on both
/// sides) and not one datagram is lost.
#[test]
fn key_rotation_under_traffic_loses_nothing() {
    if !root_or_skip() {
        return;
    }
    let started = Instant::now();
    let policy = "rekey_after = \"10s\"\nreject_after = \"15s\"";
    let mut net = Net::build("k").expect("topology");
    let sid = session(&mut net, "af_xdp", policy, Some(policy));
    let traffic = Traffic::start(&net, Duration::from_millis(10)).expect("traffic");
    let rekeyed = |net: &Net| of(&net.client_events(), "rekeyed").len();
    assert!(
        wait_for(Duration::from_secs(25), || rekeyed(&net) >= 2),
        "{} rekeys in 25 s:{}",
        rekeyed(&net),
        net.diagnostics()
    );
    // A little traffic under the newest key, then drain.
    std::thread::sleep(Duration::from_millis(500));
    traffic.pause(true);
    let (sent, received) = drained(&traffic);
    let server = traffic.server_count();
    let shown = show(&net, &sid);
    let status = net.client_status().expect("status");
    eprintln!(
        "rekeys {:?}; gateway {shown}; client key_epoch {}; traffic {sent} sent, {server} at the server, {received} echoed; {:?}",
        of(&net.client_events(), "rekeyed"),
        status["key_epoch"],
        started.elapsed()
    );
    assert!(sent > 1500, "only {sent} datagrams sent");
    assert_eq!(server, sent, "lost on the way in:{}", net.diagnostics());
    assert_eq!(received, sent, "lost on the way back:{}", net.diagnostics());
    assert!(
        shown["key_epoch"].as_u64().unwrap_or(0) >= 2,
        "gateway key epoch: {shown}"
    );
    assert_eq!(status["key_epoch"], shown["key_epoch"], "{status}");
    assert_eq!(shown["state"], "ATTACHED");
    assert_eq!(
        of(&net.control_events(), "SESSION_CREATED").len(),
        1,
        "a rekey is not a new session"
    );
    assert_eq!(status["session_id"], sid.as_str());
    let _ = traffic.stop();
}

/// The io_uring backend, with the control process's handshake and reattach traffic relayed by
/// the data plane: handshake, traffic both ways, a NAT rebind recovered without a new handshake.
#[test]
fn io_uring_backend_handshake_traffic_and_nat_rebind() {
    if !root_or_skip() {
        return;
    }
    let started = Instant::now();
    let mut net = Net::build("u").expect("topology");
    let _sid = session(&mut net, "io_uring", "", None);
    let status = net.jumpctl_json(&["status"]).expect("jumpctl status");
    assert_eq!(status["dataplane"]["backend"], "io_uring", "{status}");
    let traffic = Traffic::start(&net, Duration::from_millis(10)).expect("traffic");
    assert!(
        traffic.flowing(50, Duration::from_secs(10)),
        "no echoes through the tunnel: {:?}{}",
        traffic.counts(),
        net.diagnostics()
    );
    let t_rebind = traffic.now_ms();
    net.nat_rebind().expect("conntrack flush");
    assert!(
        wait_for(Duration::from_secs(10), || {
            of(&net.control_events(), "PATH_SWITCHED").len() == 1
        }),
        "no PATH_SWITCHED after the NAT rebind:{}",
        net.diagnostics()
    );
    assert!(
        traffic.flowing(50, Duration::from_secs(10)),
        "traffic after the rebind:{}",
        net.diagnostics()
    );
    let (gap, _) = traffic.longest_gap_after(t_rebind);
    assert_eq!(
        of(&net.control_events(), "SESSION_CREATED").len(),
        1,
        "no new handshake"
    );
    assert!(!of(&net.client_events(), "challenge_answered").is_empty());
    let (sent, received) = traffic.stop();
    eprintln!(
        "io_uring: rebind gap {gap} ms; traffic {sent}/{received}; {:?}",
        started.elapsed()
    );
}

/// Keys rotate on the packet count (rekey_after_packets = 1024, the minimum; rekey_after far
/// away) under steady traffic, and nothing is lost. (It failed before the client's
/// `poll_timeout` gave the packet count a deadline: steady traffic kept moving the heartbeat
/// deadline, so the count was never looked at.)
#[test]
fn key_rotation_on_packet_count_under_traffic() {
    if !root_or_skip() {
        return;
    }
    let started = Instant::now();
    let policy = "rekey_after = \"60s\"\nreject_after = \"90s\"\nrekey_after_packets = 1024";
    let mut net = Net::build("p").expect("topology");
    let sid = session(&mut net, "af_xdp", policy, Some(policy));
    let traffic = Traffic::start(&net, Duration::from_millis(3)).expect("traffic");
    let rekeyed = |net: &Net| of(&net.client_events(), "rekeyed").len();
    let ok = wait_for(Duration::from_secs(12), || rekeyed(&net) >= 2);
    traffic.pause(true);
    let (sent, received) = drained(&traffic);
    let server = traffic.server_count();
    let shown = show(&net, &sid);
    eprintln!(
        "{} rekeys; gateway key_epoch {}; client tx {}; traffic {sent} sent, {server} at the server, {received} echoed; {:?}",
        rekeyed(&net),
        shown["key_epoch"],
        net.client_status().expect("status")["counters"]["sent"],
        started.elapsed()
    );
    assert!(
        ok,
        "{} rekeys after {sent} datagrams sent under rekey_after_packets = 1024",
        rekeyed(&net)
    );
    assert_eq!(server, sent, "lost on the way in");
    assert_eq!(received, sent, "lost on the way back");
    let _ = traffic.stop();
}

/// The owner core of the session, as `jumpctl session show` reports it.
fn owner(net: &Net, sid: &str) -> u64 {
    show(net, sid)["owner"].as_u64().expect("owner")
}

/// `jumpctl core drain` moves a session to the other worker under traffic with nothing lost;
/// `jumpctl rekey` makes the client rotate its keys at its next heartbeat, also losslessly;
/// bad arguments are refused.
#[test]
fn core_drain_and_operator_rekey_under_traffic() {
    if !root_or_skip() {
        return;
    }
    let started = Instant::now();
    let policy = "heartbeat_interval = \"500ms\"";
    let mut net = Net::build("c").expect("topology");
    net.start_dataplane_with("af_xdp", 2).expect("data plane");
    net.configure_control(policy).expect("configure");
    net.start_control().expect("control");
    net.start_client_with_policy(policy).expect("client");
    assert!(
        net.client_in_state("ATTACHED", Duration::from_secs(20)),
        "no session:{}",
        net.diagnostics()
    );
    let sid = net.client_status().expect("status")["session_id"]
        .as_str()
        .expect("session id")
        .to_owned();
    let traffic = Traffic::start(&net, Duration::from_millis(5)).expect("traffic");
    assert!(
        traffic.flowing(50, Duration::from_secs(10)),
        "no traffic:{}",
        net.diagnostics()
    );
    let first = owner(&net, &sid);
    let version = show(&net, &sid)["version"].clone();

    // Drain the session's core: it moves to the other one, traffic goes on.
    let drained_out = net
        .jumpctl_json(&["core", "drain", &first.to_string()])
        .expect("jumpctl core drain");
    assert_eq!(
        drained_out["moved"],
        1,
        "{drained_out}{}",
        net.diagnostics()
    );
    assert_eq!(owner(&net, &sid), 1 - first, "{}", net.diagnostics());
    // Drain the other core too: there is nowhere to go, so it is refused, nothing moves.
    let refused = net
        .jumpctl(&["core", "drain", &(1 - first).to_string()])
        .expect("jumpctl");
    assert_eq!(refused.status.code(), Some(2), "{refused:?}");
    assert_eq!(owner(&net, &sid), 1 - first);
    let bad = net.jumpctl(&["core", "drain", "7"]).expect("jumpctl");
    assert_eq!(bad.status.code(), Some(2), "{bad:?}");
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("no worker core 7"),
        "{bad:?}"
    );

    // An operator's rekey: the client rotates at its next heartbeat.
    let rekeyed = |net: &Net| of(&net.client_events(), "rekeyed").len();
    assert_eq!(rekeyed(&net), 0);
    let asked = net.jumpctl_json(&["rekey", &sid]).expect("jumpctl rekey");
    assert_eq!(asked["sessions"], 1, "{asked}");
    assert!(
        wait_for(Duration::from_secs(10), || rekeyed(&net) >= 1),
        "no rekey after jumpctl rekey:{}",
        net.diagnostics()
    );
    let unknown = net
        .jumpctl(&["rekey", "0123456789abcdef"])
        .expect("jumpctl");
    assert_eq!(unknown.status.code(), Some(1), "not found: {unknown:?}");

    std::thread::sleep(Duration::from_millis(500));
    traffic.pause(true);
    let (sent, received) = drained(&traffic);
    let server = traffic.server_count();
    let shown = show(&net, &sid);
    eprintln!(
        "drain: core {first} -> {}; rekey epoch {}; traffic {sent} sent, {server} at the server, {received} echoed; {:?}",
        1 - first,
        shown["key_epoch"],
        started.elapsed()
    );
    assert_eq!(server, sent, "lost on the way in:{}", net.diagnostics());
    assert_eq!(received, sent, "lost on the way back:{}", net.diagnostics());
    assert_eq!(shown["key_epoch"], 1, "{shown}");
    assert_eq!(
        shown["version"], version,
        "a move or a rekey is not a state change"
    );
    assert_eq!(of(&net.control_events(), "SESSION_CREATED").len(), 1);
    let _ = traffic.stop();
}
