//! Deterministic simulation: a client and a gateway protocol object exchanging datagrams over a
//! simulated network with latency, jitter (reordering), loss and a NAT whose mappings can be
//! rebound. Time is simulated; every random choice comes from a seeded generator, so a failing
//! seed reproduces exactly.

use std::time::Duration;

use jumping_protocol::client::{ClientEvent, LocalPath};
use jumping_protocol::gateway::{DropReason, Output};
use jumping_protocol::testing::{no_duplicates, Dir, Sim};
use jumping_protocol::wire::{self, MessageType};
use jumping_protocol::{Event, Path, Policy, Reason, RejectCode, State};

const ATTACKER: &str = "198.51.100.66:9999";

#[test]
fn handshake_and_data_both_ways() {
    let mut sim = Sim::new(1, Policy::default());
    let sid = sim.connect();
    assert_eq!(sim.session(sid).state(), State::Attached);
    assert_eq!(sim.session(sid).version(), 1);
    assert_eq!(
        sim.state_changes(sid),
        vec![(State::Birth, State::Attached, Reason::HandshakeOk, 1)]
    );
    sim.traffic(sid, Duration::from_secs(2), Duration::from_millis(10));
    sim.run_for(Duration::from_millis(100));
    assert_eq!(sim.gw_delivered.len() as u64, sim.sent_c2g);
    assert_eq!(sim.client_delivered.len() as u64, sim.sent_g2c);
    assert!(sim.gw_delivered.iter().all(|p| p.starts_with(b"c2g-")));
    assert!(sim.client_delivered.iter().all(|p| p.starts_with(b"g2c-")));
    assert!(sim.client.rtt().is_none() || sim.client.rtt() >= Some(Duration::from_millis(40)));
}

#[test]
fn handshake_survives_loss_and_reordering() {
    for seed in 0..8 {
        let mut sim = Sim::new(100 + seed, Policy::default());
        sim.net.loss = 0.2;
        sim.net.jitter = Duration::from_millis(30);
        sim.client
            .connect(sim.now, LocalPath(0), 1_700_000_000_000_000_000);
        sim.run_for(Duration::from_secs(5));
        let sid = sim
            .client
            .session_id()
            .unwrap_or_else(|| panic!("seed {seed}: no session after 5 s at 20 % loss"));
        sim.traffic(sid, Duration::from_secs(2), Duration::from_millis(5));
        sim.run_for(Duration::from_millis(200));
        assert!(
            no_duplicates(&sim.gw_delivered),
            "seed {seed}: a packet was delivered twice"
        );
        assert!(
            no_duplicates(&sim.client_delivered),
            "seed {seed}: a packet was delivered twice"
        );
        assert!(sim.gw_delivered.len() as u64 <= sim.sent_c2g);
        assert!(!sim.gw_delivered.is_empty());
    }
}

#[test]
fn a_gateway_rekey_request_rotates_keys_at_the_next_heartbeat_without_loss() {
    let policy = Policy::default();
    let mut sim = Sim::new(3, policy.clone());
    let sid = sim.connect();
    sim.traffic(sid, Duration::from_secs(20), Duration::from_millis(20));
    sim.run_for(Duration::from_secs(3));
    assert_eq!(
        sim.session(sid).key_epoch(),
        0,
        "no rotation before the request"
    );
    sim.gw.request_rekey(sid).expect("request");
    // The request rides on the heartbeat echo; the client rekeys at once when it sees it.
    sim.run_for(policy.heartbeat_interval * 2 + Duration::from_millis(500));
    assert_eq!(sim.session(sid).key_epoch(), 1, "rotated once on request");
    // Once rotated, the request is cleared: no further rotation before rekey_after.
    sim.run_for(Duration::from_secs(10));
    assert_eq!(
        sim.session(sid).key_epoch(),
        1,
        "the request was honoured once"
    );
    sim.run_for(Duration::from_secs(8));
    assert_eq!(
        sim.gw_delivered.len() as u64,
        sim.sent_c2g,
        "nothing lost inward"
    );
    assert_eq!(
        sim.client_delivered.len() as u64,
        sim.sent_g2c,
        "nothing lost outward"
    );
    assert!(sim.gw.request_rekey(wire::SessionId(1)).is_err());
}

#[test]
fn rekey_under_traffic_loses_nothing() {
    let policy = Policy {
        rekey_after: Duration::from_secs(10),
        reject_after: Duration::from_secs(15),
        ..Policy::default()
    };
    let mut sim = Sim::new(2, policy);
    sim.net.jitter = Duration::from_millis(5);
    let sid = sim.connect();
    sim.traffic(sid, Duration::from_secs(45), Duration::from_millis(20));
    sim.run_for(Duration::from_millis(200));
    let epoch = sim.session(sid).key_epoch();
    assert!(
        epoch >= 3,
        "expected at least 3 rotations in 45 s, epoch is {epoch}"
    );
    assert_eq!(sim.client.key_epoch(), Some(epoch));
    assert_eq!(
        sim.gw_delivered.len() as u64,
        sim.sent_c2g,
        "client-to-gateway packets lost across rekeys"
    );
    assert_eq!(
        sim.client_delivered.len() as u64,
        sim.sent_g2c,
        "gateway-to-client packets lost across rekeys"
    );
    assert_eq!(sim.session(sid).state(), State::Attached);
    let rotated = sim
        .gw_events
        .iter()
        .filter(|e| matches!(e, Event::KeyRotated { .. }))
        .count();
    assert_eq!(rotated as u32, epoch);
    // Rekeying is not a transition (SPEC.md section 3).
    assert_eq!(sim.session(sid).version(), 1);
    sim.assert_version_log(sid);
}

#[test]
fn nat_rebind_repaired_by_reattach_within_one_round_trip() {
    let mut sim = Sim::new(3, Policy::default());
    let sid = sim.connect();
    sim.traffic(sid, Duration::from_secs(1), Duration::from_millis(10));
    let handshakes = sim.handshakes();
    let old = sim.session(sid).active.expect("active");
    let new_addr = sim.net.rebind(LocalPath(0));
    let rebind_at = sim.now;
    // The client keeps sending; its packets now arrive from the new mapping.
    sim.traffic(sid, Duration::from_millis(300), Duration::from_millis(10));
    let s = sim.session(sid);
    assert_eq!(
        s.active,
        Some(Path::udp(new_addr)),
        "gateway did not move to the rebound address"
    );
    assert_ne!(Some(old), s.active);
    assert_eq!(s.version(), 2);
    assert_eq!(sim.handshakes(), handshakes, "a new handshake was needed");
    assert_eq!(s.id, sid, "SessionId changed");
    let switched = sim
        .gw_events
        .iter()
        .find_map(|e| match e {
            Event::PathSwitched {
                to_path,
                recovery_ms,
                reattach_ms,
                ..
            } => Some((*to_path, *recovery_ms, *reattach_ms)),
            _ => None,
        })
        .expect("PATH_SWITCHED");
    assert_eq!(switched.0, Path::udp(new_addr));
    // The validation started when the new address was seen, which is also when the old
    // binding counted as lost: both latencies are the same round trip.
    assert_eq!(switched.2, switched.1, "reattach_ms");
    // The gateway saw the new address one one-way latency after the rebind; the bind needs one
    // round trip (challenge out, request with the echo back): 40 ms here.
    let recovery = switched.1.expect("recovery_ms");
    assert!(
        recovery <= 40 + 1,
        "recovery took {recovery} ms, more than one round trip"
    );
    assert_eq!(
        sim.state_changes(sid).last(),
        Some(&(State::Attached, State::Attached, Reason::ReattachOk, 2))
    );
    let _ = rebind_at;
    // Traffic keeps flowing both ways on the new path.
    let before = sim.client_delivered.len();
    sim.traffic(sid, Duration::from_millis(500), Duration::from_millis(10));
    sim.run_for(Duration::from_millis(100));
    assert!(sim.client_delivered.len() > before);
    assert!(no_duplicates(&sim.gw_delivered));
    sim.assert_version_log(sid);
}

#[test]
fn captured_reattach_replayed_from_another_address_changes_nothing() {
    let mut sim = Sim::new(4, Policy::default());
    let sid = sim.connect();
    sim.run_for(Duration::from_secs(2));
    sim.client.reattach(sim.now, LocalPath(1));
    sim.run_for(Duration::from_millis(200));
    assert_eq!(
        sim.session(sid).active,
        Some(Path::udp(sim.net.nat[&LocalPath(1)]))
    );
    let request = sim
        .net
        .captured
        .iter()
        .find(|(d, b)| {
            matches!(d, Dir::ToGateway { .. })
                && wire::peek_type(b) == Ok(MessageType::ReattachRequest)
        })
        .map(|(_, b)| b.clone())
        .expect("a captured reattach request");
    let (version, active) = (sim.session(sid).version(), sim.session(sid).active);
    let attacker = Path::udp(ATTACKER.parse().expect("addr"));
    let mut replay = request.clone();
    let out = sim.gw.handle_datagram(sim.now, attacker, &mut replay);
    assert!(
        matches!(out, Output::Dropped(DropReason::ReattachRejected)),
        "{out:?}"
    );
    let mut rejected = None;
    while let Some(e) = sim.gw.poll_event() {
        if let Event::ReattachRejected { code, .. } = e {
            rejected = Some(code);
        }
    }
    assert!(
        matches!(
            rejected,
            Some(RejectCode::ReplayDetected | RejectCode::StaleRequest)
        ),
        "{rejected:?}"
    );
    assert_eq!(sim.session(sid).version(), version);
    assert_eq!(sim.session(sid).active, active);
    assert!(sim.session(sid).active != Some(attacker));
    // A fresh-looking request whose MAC was made for another session key: AUTH_FAILED, also
    // no change.
    let mut forged = request;
    forged[30] ^= 0;
    forged[21] ^= 0x40; // client time changed: MAC no longer verifies
    let _ = sim.gw.handle_datagram(sim.now, attacker, &mut forged);
    assert_eq!(sim.session(sid).version(), version);
    assert_eq!(sim.session(sid).active, active);
}

#[test]
fn forged_and_replayed_data_packets_are_rejected_without_effect() {
    let mut sim = Sim::new(5, Policy::default());
    let sid = sim.connect();
    sim.traffic(sid, Duration::from_millis(200), Duration::from_millis(10));
    sim.run_for(Duration::from_millis(100));
    let data = sim
        .net
        .captured
        .iter()
        .rev()
        .find(|(d, b)| {
            matches!(d, Dir::ToGateway { .. }) && wire::peek_type(b) == Ok(MessageType::Data)
        })
        .map(|(_, b)| b.clone())
        .expect("captured data");
    let delivered = sim.gw_delivered.len();
    let before = (
        sim.session(sid).version(),
        sim.session(sid).active,
        sim.session(sid).last_rx_active,
    );
    let attacker = Path::udp(ATTACKER.parse().expect("addr"));
    let mut replay = data.clone();
    assert!(matches!(
        sim.gw.handle_datagram(sim.now, attacker, &mut replay),
        Output::Dropped(DropReason::Replay)
    ));
    let mut forged = data.clone();
    let last = forged.len() - 1;
    forged[last] ^= 1;
    forged[12..20].copy_from_slice(&(u64::MAX - 1).to_be_bytes()); // a fresh counter, but a bad tag
    assert!(matches!(
        sim.gw.handle_datagram(sim.now, attacker, &mut forged),
        Output::Dropped(DropReason::AuthFailed)
    ));
    let mut wrong_session = data;
    wrong_session[4] ^= 0xFF;
    assert!(matches!(
        sim.gw
            .handle_datagram(sim.now, attacker, &mut wrong_session),
        Output::Dropped(DropReason::UnknownSession)
    ));
    assert_eq!(sim.gw_delivered.len(), delivered);
    let after = (
        sim.session(sid).version(),
        sim.session(sid).active,
        sim.session(sid).last_rx_active,
    );
    assert_eq!(before, after);
    // No challenge was sent to the attacker: only authentic packets start path validation.
    assert!(sim.gw.poll_transmit().is_none());
}

#[test]
fn switch_budget_exhaustion_leads_to_degraded() {
    let mut sim = Sim::new(6, Policy::default());
    let sid = sim.connect();
    let max = sim.gw.policy().max_switches_per_min;
    for i in 0..max {
        sim.run_for(Duration::from_millis(1100));
        sim.client.reattach(sim.now, LocalPath(1 - (i % 2)));
        sim.run_for(Duration::from_millis(100));
    }
    assert_eq!(sim.session(sid).switches_total(), u64::from(max));
    assert_eq!(sim.session(sid).state(), State::Attached);
    // The last switch went to path 0 (max is even); one more switch, to path 1, exceeds it.
    sim.run_for(Duration::from_millis(1100));
    sim.client.reattach(sim.now, LocalPath(1));
    sim.run_for(Duration::from_millis(100));
    assert_eq!(sim.session(sid).state(), State::Degraded);
    assert_eq!(
        sim.session(sid).switches_total(),
        u64::from(max),
        "budget exceeded"
    );
    assert!(sim
        .state_changes(sid)
        .iter()
        .any(|c| c.1 == State::Degraded && c.2 == Reason::SwitchRateLimited));
    assert!(sim.client_events.iter().any(|e| matches!(
        e,
        ClientEvent::ReattachRejected {
            code: Some(RejectCode::SwitchRateLimited),
            authenticated: true
        }
    )));
    assert!(sim.gw_events.iter().any(|e| matches!(
        e,
        Event::PolicyLimit {
            limit: "max_switches_per_min",
            ..
        }
    )));
    // Still within budget: more flapping changes nothing.
    for _ in 0..5 {
        sim.run_for(Duration::from_millis(300));
        sim.client.reattach(sim.now, LocalPath(1));
    }
    sim.run_for(Duration::from_millis(100));
    assert_eq!(sim.session(sid).switches_total(), u64::from(max));
    // After the DEGRADED cooldown, with the active path healthy, the session returns.
    sim.run_for(Duration::from_secs(12));
    assert_eq!(sim.session(sid).state(), State::Attached);
    assert!(sim
        .state_changes(sid)
        .iter()
        .any(|c| c.2 == Reason::ExitDegraded));
    sim.assert_version_log(sid);
}

#[test]
fn recovering_ends_in_terminated_after_the_window() {
    let mut sim = Sim::new(7, Policy::default());
    let sid = sim.connect();
    sim.run_for(Duration::from_secs(1));
    sim.net.up = false;
    sim.run_for(Duration::from_millis(5100));
    assert_eq!(sim.session(sid).state(), State::Recovering);
    assert_eq!(
        sim.session(sid).active,
        None,
        "RECOVERING has no active path"
    );
    sim.run_for(Duration::from_secs(15));
    let s = sim.session(sid);
    assert_eq!(s.state(), State::Terminated);
    let changes = sim.state_changes(sid);
    assert_eq!(
        changes.iter().map(|c| (c.1, c.2)).collect::<Vec<_>>(),
        vec![
            (State::Attached, Reason::HandshakeOk),
            // Heartbeats stop first: VOLATILE at volatile_heartbeat_age, then dead.
            (State::Volatile, Reason::QualityThresholdExceeded),
            (State::Recovering, Reason::TransportDead),
            (State::Terminated, Reason::RecoveryWindowExpired)
        ]
    );
    assert!(sim.gw_events.iter().any(|e| matches!(
        e,
        Event::SessionTerminated {
            reason: Reason::RecoveryWindowExpired,
            ..
        }
    )));
    sim.assert_version_log(sid);
}

#[test]
fn recovering_is_repaired_by_reattach_on_another_path() {
    let mut sim = Sim::new(8, Policy::default());
    let sid = sim.connect();
    sim.run_for(Duration::from_secs(1));
    // Path 0's link dies; path 1 works.
    sim.net.down.push(LocalPath(0));
    sim.run_for(Duration::from_secs(6));
    assert_eq!(sim.session(sid).state(), State::Recovering);
    sim.client.reattach(sim.now, LocalPath(1));
    sim.run_for(Duration::from_millis(200));
    assert_eq!(sim.session(sid).state(), State::Attached);
    let recovery = sim.gw_events.iter().find_map(|e| match e {
        Event::PathSwitched { recovery_ms, .. } => *recovery_ms,
        _ => None,
    });
    assert!(recovery.is_some_and(|ms| ms > 5000), "{recovery:?}");
    sim.assert_version_log(sid);
}

#[test]
fn session_lifetime_expiry_terminates() {
    let policy = Policy {
        session_max_lifetime: Duration::from_secs(60),
        ..Policy::default()
    };
    let mut sim = Sim::new(9, policy);
    let sid = sim.connect();
    sim.run_for(Duration::from_secs(59));
    assert_eq!(sim.session(sid).state(), State::Attached);
    sim.run_for(Duration::from_secs(2));
    assert_eq!(sim.session(sid).state(), State::Terminated);
    assert_eq!(
        sim.state_changes(sid).last().map(|c| c.2),
        Some(Reason::SessionTtlExpired)
    );
    // The client was told, explicitly.
    assert_eq!(sim.client.closed_reason(), Some(Reason::SessionTtlExpired));
    assert_eq!(sim.client.state(), State::Terminated);
}

#[test]
fn revocation_and_operator_kill_end_sessions_explicitly() {
    let mut sim = Sim::new(10, Policy::default());
    let sid = sim.connect();
    let key = sim.client_key;
    assert_eq!(sim.gw.revoke_client(sim.now, &key), 1);
    sim.run_for(Duration::from_millis(100));
    assert_eq!(sim.session(sid).state(), State::Terminated);
    assert_eq!(sim.client.closed_reason(), Some(Reason::Revoked));
    // A revoked key cannot start a new session.
    let mut sim2 = Sim::new(11, Policy::default());
    let sid2 = sim2.connect();
    sim2.gw.terminate(sim2.now, sid2).expect("live session");
    sim2.run_for(Duration::from_millis(100));
    assert_eq!(
        sim2.client.closed_reason(),
        Some(Reason::OperatorTerminated)
    );
    assert!(sim2.gw.terminate(sim2.now, sid2).is_err());
}

#[test]
fn identical_inputs_give_identical_runs() {
    let run = |seed| {
        let mut sim = Sim::new(seed, Policy::default());
        sim.net.loss = 0.1;
        sim.net.jitter = Duration::from_millis(10);
        sim.client.connect(sim.now, LocalPath(0), 1);
        sim.run_for(Duration::from_secs(3));
        if let Some(sid) = sim.client.session_id() {
            sim.traffic(sid, Duration::from_secs(1), Duration::from_millis(7));
            sim.net.rebind(LocalPath(0));
            sim.traffic(sid, Duration::from_secs(1), Duration::from_millis(7));
        }
        (
            format!("{:?}", sim.gw_events),
            sim.gw_delivered.len(),
            sim.client_delivered.len(),
        )
    };
    assert_eq!(run(42), run(42));
}

#[test]
fn revalidating_the_active_path_is_not_a_switch() {
    let mut sim = Sim::new(12, Policy::default());
    let sid = sim.connect();
    sim.run_for(Duration::from_secs(2));
    for _ in 0..20 {
        sim.client.reattach(sim.now, LocalPath(0));
        sim.run_for(Duration::from_millis(100));
    }
    let s = sim.session(sid);
    assert_eq!(
        (s.state(), s.version(), s.switches_total()),
        (State::Attached, 1, 0)
    );
    assert!(sim
        .client_events
        .iter()
        .any(|e| matches!(e, ClientEvent::Reattached { version: 1, .. })));
}

#[test]
fn a_retry_crossing_the_ack_still_completes_the_switch() {
    let mut sim = Sim::new(14, Policy::default());
    sim.net.latency = Duration::from_millis(300); // RTT 600 ms > the 500 ms reattach retry
    let sid = sim.connect_within(Duration::from_secs(2));
    sim.client.reattach(sim.now, LocalPath(1));
    sim.run_for(Duration::from_secs(3));
    assert_eq!(
        sim.session(sid).active,
        Some(Path::udp(sim.net.nat[&LocalPath(1)]))
    );
    assert_eq!(
        sim.client.current_path(),
        Some(LocalPath(1)),
        "client did not follow the gateway"
    );
    assert_eq!(sim.session(sid).switches_total(), 1);
}

/// The gateway's handshake response is lost: the client retries with a fresh initiation. The
/// session the lost response named ends explicitly (SUPERSEDED) and the retry's session is the
/// one the client holds: one live session per identity, none orphaned, none killed under the
/// client.
#[test]
fn a_lost_handshake_response_supersedes_the_unseen_session() {
    let mut sim = Sim::new(31, Policy::default());
    sim.client
        .connect(sim.now, LocalPath(0), 1_700_000_000_000_000_000);
    // The initiation arrives at 20 ms; the response is in flight until 40 ms. Lose it.
    sim.run_for(Duration::from_millis(30));
    let lost: Vec<_> = sim.gw.sessions().map(|s| s.id).collect();
    assert_eq!(lost.len(), 1, "the first initiation created a session");
    let before = sim.net.in_flight.len();
    sim.net
        .in_flight
        .retain(|_, (d, _)| !matches!(d, Dir::ToClient { .. }));
    assert_eq!(sim.net.in_flight.len(), before - 1, "one response dropped");
    sim.run_for(Duration::from_secs(5));
    let sid = sim
        .client
        .session_id()
        .expect("the retry established a session");
    assert_ne!(sid, lost[0]);
    assert_eq!(
        sim.state_changes(lost[0]),
        vec![
            (State::Birth, State::Attached, Reason::HandshakeOk, 1),
            (State::Attached, State::Terminated, Reason::Superseded, 2),
        ]
    );
    let live: Vec<_> = sim
        .gw
        .sessions()
        .filter(|s| s.state() != State::Terminated)
        .map(|s| s.id)
        .collect();
    assert_eq!(live, vec![sid], "exactly one live session, the client's");
    sim.traffic(sid, Duration::from_secs(1), Duration::from_millis(10));
    sim.run_for(Duration::from_millis(100));
    assert_eq!(sim.gw_delivered.len() as u64, sim.sent_c2g);
    assert_eq!(sim.session(sid).state(), State::Attached);
}

/// A replayed initiation (the same bytes again) creates nothing and ends nothing.
#[test]
fn a_replayed_initiation_neither_creates_nor_supersedes() {
    let mut sim = Sim::new(32, Policy::default());
    let sid = sim.connect();
    let init = sim
        .net
        .captured
        .iter()
        .find(|(d, b)| is_initiation(d, b))
        .map(|(_, b)| b.clone())
        .expect("captured initiation");
    let from = sim.net.nat[&LocalPath(0)];
    let mut again = init;
    assert!(matches!(
        sim.gw.handle_datagram(sim.now, Path::udp(from), &mut again),
        Output::Dropped(DropReason::HandshakeReplay)
    ));
    assert_eq!(sim.gw.sessions().count(), 1);
    assert_eq!(sim.session(sid).state(), State::Attached);
}

/// The gateway binds the new path but its ack is lost; by the time the client's retry arrives
/// the session is VOLATILE and inside the switch cooldown. The retry asks for no switch (it
/// comes from the path now active), so it is acknowledged, not refused: a refusal would end
/// the client's attempt and leave it sending on the old path while the gateway sends on the
/// new one.
#[test]
fn a_retry_from_the_active_path_after_a_lost_ack_is_acknowledged_even_when_volatile() {
    let policy = Policy {
        switch_cooldown: Duration::from_secs(10),
        ..Policy::default()
    };
    let mut sim = Sim::new(33, policy);
    let sid = sim.connect();
    sim.run_for(Duration::from_secs(1));
    let new_path = switch_to_path_1_losing_the_ack(&mut sim, sid);
    // Silence long enough for VOLATILE (heartbeat age 2.5 s), not for TRANSPORT_DEAD (5 s).
    sim.net.up = false;
    sim.run_for(Duration::from_millis(2800));
    assert_eq!(sim.session(sid).state(), State::Volatile);
    sim.net.up = true;
    sim.run_for(Duration::from_secs(2));
    assert_eq!(
        sim.client.current_path(),
        Some(LocalPath(1)),
        "the client learned where it is bound"
    );
    let s = sim.session(sid);
    assert_eq!((s.active, s.switches_total()), (Some(new_path), 1));
    assert!(!sim
        .gw_events
        .iter()
        .any(|e| matches!(e, Event::ReattachRejected { .. })));
}

/// The gateway binds the new path and its ack is lost; the client, still sending on the old
/// path, is challenged there (an authenticated packet from a non-active address). It must
/// not answer: its own request to the new path is pending, and answering would replace it by a
/// request back to the old path, refused inside the cooldown, leaving the client on the old
/// path and the gateway on the new one. Its retry to the new path is acknowledged instead.
#[test]
fn a_challenge_on_the_old_path_while_a_switch_is_pending_is_not_answered() {
    let mut sim = Sim::new(34, Policy::default());
    let sid = sim.connect();
    sim.run_for(Duration::from_millis(500));
    let new_path = switch_to_path_1_losing_the_ack(&mut sim, sid);
    // Data keeps going out on the old path until the client learns of the bind.
    sim.traffic(sid, Duration::from_secs(3), Duration::from_millis(10));
    assert_eq!(sim.client.current_path(), Some(LocalPath(1)));
    let s = sim.session(sid);
    assert_eq!((s.active, s.switches_total()), (Some(new_path), 1));
    assert!(!sim
        .gw_events
        .iter()
        .any(|e| matches!(e, Event::ReattachRejected { .. })));
}

/// The client asks for path 1; the gateway validates and binds it; the ack is lost.
fn switch_to_path_1_losing_the_ack(sim: &mut Sim, sid: jumping_protocol::SessionId) -> Path {
    sim.client.reattach(sim.now, LocalPath(1));
    // Request (20 ms), challenge back (40), response (60): bound at 60 ms, ack due at 80.
    sim.run_for(Duration::from_millis(70));
    let new_path = Path::udp(sim.net.nat[&LocalPath(1)]);
    assert_eq!(sim.session(sid).active, Some(new_path), "bound");
    let before = sim.net.in_flight.len();
    sim.net.in_flight.retain(|_, (d, b)| {
        !(matches!(d, Dir::ToClient { .. })
            && wire::peek_type(b).ok() == Some(MessageType::ReattachAck))
    });
    assert_eq!(sim.net.in_flight.len(), before - 1, "the ack is lost");
    new_path
}

/// A recovery does not give up after the fast retries: the path it asks for stays dark for
/// longer than eight of them (a gateway busy with a mass failover looks the same), and the
/// client still reattaches once it answers, inside the recovery window.
#[test]
fn a_recovering_client_keeps_asking_until_the_gateway_answers() {
    let mut sim = Sim::new(35, Policy::default());
    let sid = sim.connect();
    sim.net.down = vec![LocalPath(0), LocalPath(1)];
    sim.run_for(Duration::from_secs(6));
    assert_eq!(sim.client.state(), State::Recovering);
    sim.client.reattach(sim.now, LocalPath(1));
    sim.run_for(Duration::from_secs(6)); // 12 sends' worth of 500 ms retries, all lost
    sim.net.down = vec![LocalPath(0)];
    sim.run_for(Duration::from_secs(3));
    assert_eq!(sim.client.state(), State::Attached);
    assert_eq!(sim.client.current_path(), Some(LocalPath(1)));
    assert_eq!(
        sim.session(sid).active,
        Some(Path::udp(sim.net.nat[&LocalPath(1)]))
    );
}

/// A gateway that does not answer: the client's initiations back off (1, 2, 4, 8, 8 × the
/// retry interval, each with up to a quarter of jitter) and the session ends HANDSHAKE_FAILED
/// after the configured attempts, not in a burst of fixed-interval retries.
#[test]
fn handshake_retries_back_off_with_jitter_then_fail_explicitly() {
    let mut sim = Sim::new(41, Policy::default());
    sim.net.up = false;
    sim.client
        .connect(sim.now, LocalPath(0), 1_700_000_000_000_000_000);
    let mut sends = Vec::new();
    let start = sim.now;
    for _ in 0..40_000 {
        sim.run_for(Duration::from_millis(1));
        let inits = sim
            .net
            .captured
            .iter()
            .filter(|(d, b)| is_initiation(d, b))
            .count();
        while sends.len() < inits {
            sends.push(sim.now - start);
        }
    }
    assert_eq!(sends.len(), 5, "one initiation per attempt: {sends:?}");
    let gaps: Vec<Duration> = sends.windows(2).map(|w| w[1] - w[0]).collect();
    for (gap, base) in gaps.iter().zip([1u64, 2, 4, 8]) {
        let base = Duration::from_secs(base);
        assert!(
            *gap >= base && *gap <= base + base / 4 + Duration::from_millis(2),
            "gap {gap:?} for a base of {base:?} (all: {gaps:?})"
        );
    }
    assert_eq!(sim.client.state(), State::Terminated);
    assert!(sim.client_events.iter().any(|e| matches!(
        e,
        ClientEvent::StateChanged {
            reason: Reason::HandshakeFailed,
            ..
        }
    )));
}

/// A captured datagram that is a handshake initiation on its way to the gateway.
fn is_initiation(d: &Dir, b: &[u8]) -> bool {
    matches!(d, Dir::ToGateway { .. })
        && wire::peek_type(b).ok() == Some(MessageType::HandshakeInit)
}

#[test]
fn a_rebind_refused_for_the_cooldown_completes_at_the_first_challenge_after_it() {
    // The client answers an unsolicited challenge once per token (a replayed challenge is not
    // answered), so the gateway's resend must carry a fresh token: otherwise an answer refused
    // with COOLDOWN_ACTIVE leaves the rebind unrepaired until path_validation_timeout.
    let policy = Policy::default();
    let mut sim = Sim::new(23, policy.clone());
    let sid = sim.connect();
    sim.traffic(sid, Duration::from_secs(2), Duration::from_millis(10));
    let first = sim.net.rebind(LocalPath(0));
    sim.traffic(sid, Duration::from_millis(200), Duration::from_millis(10));
    assert_eq!(sim.session(sid).active, Some(Path::udp(first)));
    // A second rebind inside the switch cooldown.
    let second = sim.net.rebind(LocalPath(0));
    let rebind_at = sim.now;
    while sim.session(sid).active != Some(Path::udp(second))
        && sim.now - rebind_at < Duration::from_secs(6)
    {
        sim.traffic(sid, Duration::from_millis(10), Duration::from_millis(10));
    }
    let refused = sim.client_events.iter().any(|e| {
        matches!(
            e,
            ClientEvent::ReattachRejected {
                code: Some(RejectCode::CooldownActive),
                ..
            }
        )
    });
    assert!(
        refused,
        "the answer inside the cooldown is refused: {:?}",
        sim.client_events
    );
    assert_eq!(sim.session(sid).active, Some(Path::udp(second)));
    let took = sim.now - rebind_at;
    assert!(
        took < policy.switch_cooldown + Duration::from_millis(600),
        "bound {took:?} after the rebind: the challenges resent after the cooldown went unanswered"
    );
    assert_eq!(sim.session(sid).version(), 3);
    sim.assert_version_log(sid);
}

#[test]
fn a_recovery_on_the_rebound_path_completes_when_its_round_trip_exceeds_the_challenge_resend() {
    // A client whose NAT mapping changed, recovering on that same socket (as after its path
    // was declared dead), sends a request there while its data keeps arriving from the new
    // address. The solicited challenge must stay the same while its response is on the way:
    // renewing its token for every data packet 250 ms apart left every response stale once
    // the round trip (here 400 ms; a queue in a mass rebind) exceeded that.
    let mut sim = Sim::new(29, Policy::default());
    let sid = sim.connect();
    sim.traffic(sid, Duration::from_secs(2), Duration::from_millis(10));
    sim.net.latency = Duration::from_millis(200);
    let new = sim.net.rebind(LocalPath(0));
    sim.client.reattach(sim.now, LocalPath(0));
    let start = sim.now;
    while sim.session(sid).active != Some(Path::udp(new))
        && sim.now - start < Duration::from_secs(5)
    {
        sim.traffic(sid, Duration::from_millis(10), Duration::from_millis(10));
    }
    let refused = sim
        .client_events
        .iter()
        .filter(|e| {
            matches!(
                e,
                ClientEvent::ReattachRejected {
                    code: Some(RejectCode::PathValidationFailed),
                    ..
                }
            )
        })
        .count();
    assert_eq!(
        sim.session(sid).active,
        Some(Path::udp(new)),
        "not bound 5 s after the request ({refused} PATH_VALIDATION_FAILED)"
    );
    assert_eq!(refused, 0, "a response to the challenge sent was refused");
    // Request, challenge, response: three one-way trips.
    assert!(
        sim.now - start < Duration::from_millis(700),
        "bound after {:?}",
        sim.now - start
    );
    sim.assert_version_log(sid);
}

fn reattach_requests_sent(sim: &Sim) -> usize {
    sim.net
        .captured
        .iter()
        .filter(|(d, b)| {
            matches!(d, Dir::ToGateway { .. })
                && wire::peek_type(b).ok() == Some(MessageType::ReattachRequest)
        })
        .count()
}

#[test]
fn a_client_that_has_seen_slow_reattach_answers_does_not_resend_before_they_can_arrive() {
    // A gateway answering late (here a 1.2 s request-to-ack exchange: 300 ms each way, four
    // trips; in a mass rebind, a queue in its control process) gets the first switch's
    // request three times from a client that resends every `reattach_retry` (500 ms). Once
    // the client has measured the exchange it waits for it, and the next switch costs one.
    let mut sim = Sim::new(30, Policy::default());
    sim.net.latency = Duration::from_millis(300);
    let sid = sim.connect_within(Duration::from_secs(2));
    assert_eq!(sim.client.exchange_rtt(), None);
    sim.client.reattach(sim.now, LocalPath(1));
    sim.run_for(Duration::from_secs(3));
    assert_eq!(sim.client.current_path(), Some(LocalPath(1)));
    let first = reattach_requests_sent(&sim);
    assert_eq!(
        first, 3,
        "requests at 0, 0.5 and 1 s before the ack at 1.2 s"
    );
    // The ack answers the first request (counter named in it), not the latest retry: the
    // sample is the 1.2 s exchange, not the 0.2 s since the last send.
    let rtt = sim.client.exchange_rtt().expect("an exchange was measured");
    assert!(
        rtt.srtt >= Duration::from_millis(1150) && rtt.srtt <= Duration::from_millis(1300),
        "srtt {:?}",
        rtt.srtt
    );
    sim.run_for(Duration::from_secs(2)); // past the switch cooldown
    sim.client.reattach(sim.now, LocalPath(0));
    sim.run_for(Duration::from_secs(3));
    assert_eq!(sim.client.current_path(), Some(LocalPath(0)));
    assert_eq!(
        sim.session(sid).active,
        Some(Path::udp(sim.net.nat[&LocalPath(0)]))
    );
    assert_eq!(
        reattach_requests_sent(&sim) - first,
        1,
        "the second switch was resent before its answer could arrive"
    );
    assert_eq!(sim.session(sid).switches_total(), 2);
    sim.assert_version_log(sid);
}

#[test]
fn a_lost_reattach_request_is_still_resent_after_reattach_retry_on_a_fast_path() {
    // The adaptive wait never goes below `reattach_retry`, and a fast exchange keeps it there:
    // a lost request on a 40 ms path is resent 500 ms later, as before.
    let mut sim = Sim::new(31, Policy::default());
    let sid = sim.connect();
    sim.client.reattach(sim.now, LocalPath(1));
    sim.run_for(Duration::from_secs(1));
    assert_eq!(sim.client.current_path(), Some(LocalPath(1)));
    let rtt = sim.client.exchange_rtt().expect("measured");
    assert!(rtt.timeout() < Duration::from_millis(500), "{rtt:?}");
    sim.run_for(Duration::from_secs(2));
    let before = reattach_requests_sent(&sim);
    sim.net.up = false;
    let start = sim.now;
    sim.client.reattach(sim.now, LocalPath(0));
    sim.run_for(Duration::from_millis(300));
    sim.net.up = true;
    sim.run_for(Duration::from_millis(900));
    assert_eq!(sim.client.current_path(), Some(LocalPath(0)));
    assert_eq!(
        reattach_requests_sent(&sim) - before,
        2,
        "one lost, one resent"
    );
    assert!(sim.now - start < Duration::from_secs(2));
    assert_eq!(sim.session(sid).switches_total(), 2);
}
