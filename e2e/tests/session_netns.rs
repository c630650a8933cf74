//! End to end through the real processes (data plane on AF_XDP, control process, client) in
//! namespaces, as root: handshake and traffic both ways, a NAT rebind recovered without a new
//! handshake, a switch to the client's second path, a control-process restart with traffic
//! flowing and no session lost, and bad control-socket input refused. Skipped without root.

use std::time::Duration;

use jumping_e2e::{of, root_or_skip, Net, Traffic};
use serde_json::Value;

/// Versions of one session's SESSION_STATE_CHANGED events are 1, 2, 3... with no gap.
fn versions_without_gap(events: &[Value]) -> Vec<u64> {
    let v: Vec<u64> = of(events, "SESSION_STATE_CHANGED")
        .iter()
        .filter_map(|e| e["state_version"].as_u64())
        .collect();
    for (i, x) in v.iter().enumerate() {
        assert_eq!(*x, i as u64 + 1, "version gap in {v:?}");
    }
    v
}

#[test]
fn a_session_survives_nat_rebind_path_switch_and_control_restart() {
    if !root_or_skip() {
        return;
    }
    let mut net = Net::build("s").expect("topology");
    net.start_dataplane().expect("data plane");
    net.configure_control("").expect("configure");
    net.start_control().expect("control");
    net.start_client().expect("client");
    assert!(
        net.client_in_state("ATTACHED", Duration::from_secs(20)),
        "no session:\nclient: {}\ncontrol: {}",
        net.client.as_ref().map(|p| p.log()).unwrap_or_default(),
        net.control.as_ref().map(|p| p.log()).unwrap_or_default()
    );
    let status = net.client_status().expect("status");
    let sid = status["session_id"]
        .as_str()
        .expect("session id")
        .to_string();

    // Traffic both ways: echoes from the server behind the gateway.
    let traffic = Traffic::start(&net, Duration::from_millis(10)).expect("traffic");
    assert!(
        traffic.flowing(50, Duration::from_secs(10)),
        "no echoes through the tunnel: {:?}\ndata plane: {}",
        traffic.counts(),
        net.dataplane.as_ref().map(|p| p.log()).unwrap_or_default()
    );

    // NAT rebind: the mapping changes; the gateway validates the new address and binds it.
    let t_rebind = traffic.now_ms();
    net.nat_rebind().expect("conntrack flush");
    assert!(
        jumping_e2e::wait_for(Duration::from_secs(10), || {
            of(&net.control_events(), "PATH_SWITCHED").len() == 1
        }),
        "no PATH_SWITCHED after the NAT rebind: {:?}",
        net.control_events()
    );
    assert!(
        traffic.flowing(50, Duration::from_secs(10)),
        "traffic after the rebind"
    );
    let (gap, _) = traffic.longest_gap_after(t_rebind);
    eprintln!("NAT rebind: longest interruption {gap} ms");
    assert_eq!(
        of(&net.control_events(), "SESSION_CREATED").len(),
        1,
        "no new handshake"
    );
    assert!(!of(&net.client_events(), "challenge_answered").is_empty());

    // The first path fails: the client moves to its second path.
    net.path0_down().expect("path 0 down");
    assert!(
        jumping_e2e::wait_for(Duration::from_secs(15), || {
            of(&net.control_events(), "PATH_SWITCHED").len() == 2
        }),
        "no switch to path 1: {:?}\nclient: {:?}",
        net.control_events(),
        net.client_events()
    );
    assert!(
        traffic.flowing(50, Duration::from_secs(10)),
        "traffic on path 1"
    );
    assert_eq!(
        net.client_status().expect("status")["current_path"],
        1,
        "the client uses path 1"
    );

    // The control process restarts while traffic flows: no session lost, version kept.
    let before = net.control_events();
    let v_before = versions_without_gap(&before);
    net.control.take().expect("control").stop();
    assert!(
        traffic.flowing(30, Duration::from_secs(10)),
        "forwarding without control"
    );
    net.start_control().expect("control restart");
    let out = net
        .jumpctl(&["--json", "session", "show", &sid])
        .expect("jumpctl");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let shown: Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(shown["state"], "ATTACHED", "{shown}");
    assert_eq!(
        shown["version"].as_u64(),
        v_before.last().copied(),
        "{shown}"
    );
    assert!(
        traffic.flowing(50, Duration::from_secs(10)),
        "traffic after restart"
    );

    // Bad control-socket input is refused with a clear message and a non-zero exit.
    let bad = net.jumpctl(&["session", "show", "xyz"]).expect("jumpctl");
    assert_eq!(bad.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("16 hex"),
        "{bad:?}"
    );
    let missing = net
        .jumpctl(&["session", "kill", "0123456789abcdef"])
        .expect("jumpctl");
    assert_eq!(missing.status.code(), Some(1));

    // The session ends explicitly when the client stops: PEER_TERMINATED.
    let (sent, received) = traffic.stop();
    eprintln!("traffic: {sent} sent, {received} echoed");
    let _ = net.client.take().expect("client").stop();
    assert!(
        jumping_e2e::wait_for(Duration::from_secs(5), || {
            of(&net.control_events(), "SESSION_TERMINATED")
                .iter()
                .any(|e| e["reason_code"] == "PEER_TERMINATED")
        }),
        "{:?}",
        net.control_events()
    );
}
