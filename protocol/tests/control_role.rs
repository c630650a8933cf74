//! The gateway in the control-process role ([`DataPlaneMode::External`]): what it asks of the
//! data plane, what it learns from it, and persistence across a restart.

use std::time::Duration;

use jumping_protocol::client::{Client, ClientConfig, ClientOutput, LocalPath};
use jumping_protocol::gateway::{
    DataPlaneMode, DataPlaneUpdate, DropReason, Gateway, GatewayConfig, Output,
    CONTROL_COUNTER_BASE,
};
use jumping_protocol::handshake::StaticKeypair;
use jumping_protocol::keys::open_transport;
use jumping_protocol::persist::{NodeRecord, SessionRecord};
use jumping_protocol::replay::ReplayWindow;
use jumping_protocol::wire::{self, MessageType, DATA_HEADER_LEN, TAG_LEN};
use jumping_protocol::{Event, Instant, Path, Policy, Reason, RejectCode, SessionId, State};
use rand_chacha::rand_core::SeedableRng;
use rand_chacha::ChaCha20Rng;

const A: &str = "192.0.2.1:40000";
const B: &str = "192.0.2.1:40001";

struct Pair {
    now: Instant,
    gw: Gateway<ChaCha20Rng>,
    client: Client<ChaCha20Rng>,
    gw_key: [u8; 32],
    client_key: [u8; 32],
    /// Where each local path appears at the gateway.
    nat: Vec<Path>,
    /// Everything the client sent, with the path it arrived from.
    captured: Vec<(Path, Vec<u8>)>,
}

fn external_gateway(secret: [u8; 32], now: Instant, seed: u64) -> Gateway<ChaCha20Rng> {
    Gateway::new(
        GatewayConfig {
            cores: 2,
            data_plane: DataPlaneMode::External,
            ..GatewayConfig::default()
        },
        Policy::default(),
        StaticKeypair::from_secret_bytes(secret),
        ChaCha20Rng::seed_from_u64(seed),
        now,
    )
    .expect("gateway")
}

impl Pair {
    fn new() -> Self {
        let mut rng = ChaCha20Rng::seed_from_u64(7);
        let gw_kp = StaticKeypair::generate(&mut rng);
        let client_kp = StaticKeypair::generate(&mut rng);
        let gw_key = *gw_kp.secret_bytes();
        let client_key = *client_kp.secret_bytes();
        let now = Instant::from_millis(1000);
        let mut gw = external_gateway(gw_key, now, 1);
        gw.allow_client(client_kp.public());
        let client = Client::new(
            ClientConfig::new(client_kp, gw_kp.public()),
            ChaCha20Rng::seed_from_u64(2),
        );
        Pair {
            now,
            gw,
            client,
            gw_key,
            client_key,
            nat: vec![
                Path::udp(A.parse().expect("a")),
                Path::udp(B.parse().expect("b")),
            ],
            captured: Vec::new(),
        }
    }

    fn advance(&mut self, d: Duration) {
        self.now = self.now + d;
        self.gw.handle_timeout(self.now);
        self.client.handle_timeout(self.now);
        self.exchange();
    }

    /// Deliver control datagrams both ways until quiet (the data plane is not simulated:
    /// data and heartbeats are the workers').
    fn exchange(&mut self) {
        for _ in 0..20 {
            let mut moved = false;
            while let Some(t) = self.client.poll_transmit() {
                moved = true;
                let from = self.nat[t.via.0 as usize];
                self.captured.push((from, t.payload.clone()));
                let mut buf = t.payload;
                if wire::peek_type(&buf).is_ok_and(|ty| ty.is_data_plane()) {
                    continue;
                }
                let _ = self.gw.handle_datagram(self.now, from, &mut buf);
            }
            while let Some(t) = self.gw.poll_transmit() {
                moved = true;
                let Some(via) = self.nat.iter().position(|p| *p == t.dst) else {
                    continue;
                };
                let mut buf = t.payload;
                let _ = self
                    .client
                    .handle_datagram(self.now, LocalPath(via as u32), &mut buf);
            }
            if !moved {
                return;
            }
        }
    }

    fn updates(&mut self) -> Vec<DataPlaneUpdate> {
        std::iter::from_fn(|| self.gw.poll_data_plane()).collect()
    }

    fn connect(&mut self) -> SessionId {
        self.client
            .connect(self.now, LocalPath(0), 1_700_000_000_000_000_000);
        self.exchange();
        self.client.session_id().expect("established")
    }

    fn version(&self, sid: SessionId) -> u64 {
        self.gw.session(sid).expect("session").version()
    }
}

#[test]
fn handshake_installs_the_session_on_its_owner_with_a_fresh_counter() {
    let mut p = Pair::new();
    let sid = p.connect();
    let ups = p.updates();
    assert_eq!(ups.len(), 1, "{ups:?}");
    let DataPlaneUpdate::Install { handoff, owner, .. } = &ups[0] else {
        panic!("expected an install, got {ups:?}");
    };
    assert_eq!(handoff.id, sid);
    assert_eq!(*owner, sid.owner_core());
    assert_eq!(
        handoff.send_counter, 0,
        "the worker's counter space starts at 0"
    );
    assert_eq!(handoff.active, Some(p.nat[0]));
    // The worker can open the client's data with the handed-off keys.
    let mut buf = vec![0u8; DATA_HEADER_LEN + 4 + TAG_LEN];
    buf[DATA_HEADER_LEN..DATA_HEADER_LEN + 4].copy_from_slice(b"ping");
    let (_, len) = p.client.encapsulate(p.now, &mut buf, 4).expect("seal");
    let mut window = ReplayWindow::new();
    let msg = wire::TransportMsg::new_checked(&buf[..len]).expect("msg");
    let (epoch, counter) = (msg.epoch(), msg.counter());
    let (_, plain) = open_transport(
        &handoff.keys,
        &mut window,
        p.now,
        epoch,
        counter,
        &mut buf[..len],
    )
    .expect("worker opens");
    assert_eq!(plain, b"ping");
    // The same datagram sent to the control process is refused and changes nothing.
    let v = p.version(sid);
    let mut again = buf[..len].to_vec();
    assert!(matches!(
        p.gw.handle_datagram(p.now, p.nat[0], &mut again),
        Output::Dropped(DropReason::WrongDirection)
    ));
    assert_eq!(p.version(sid), v);
}

#[test]
fn a_new_path_reported_by_the_data_plane_is_validated_and_bound() {
    let mut p = Pair::new();
    let sid = p.connect();
    let _ = p.updates();
    // NAT rebind: the client's packets now appear from B.
    p.nat[0] = Path::udp(B.parse().expect("b"));
    p.nat[1] = Path::udp("192.0.2.9:1".parse().expect("x"));
    p.gw.observe_new_path(p.now, sid, p.nat[0]);
    p.exchange();
    let s = p.gw.session(sid).expect("session");
    assert_eq!(s.active, Some(p.nat[0]), "bound within one round trip");
    assert_eq!(s.version(), 2);
    let ups = p.updates();
    assert!(
        matches!(ups.as_slice(), [DataPlaneUpdate::SetPath { id, path: Some(path) }] if *id == sid && *path == p.nat[0]),
        "{ups:?}"
    );
}

#[test]
fn path_dead_runs_on_the_data_planes_idle_reports() {
    let mut p = Pair::new();
    let sid = p.connect();
    let _ = p.updates();
    let epoch = p.client.key_epoch().expect("epoch");
    for _ in 0..10 {
        p.advance(Duration::from_secs(1));
        p.gw.note_activity(p.now, sid, Duration::from_millis(200), epoch);
    }
    assert_eq!(p.gw.session(sid).expect("s").state(), State::Attached);
    for _ in 0..6 {
        p.advance(Duration::from_secs(1));
        p.gw.note_activity(p.now, sid, Duration::from_secs(60), epoch);
    }
    assert_eq!(p.gw.session(sid).expect("s").state(), State::Recovering);
    let ups = p.updates();
    assert!(
        ups.iter()
            .any(|u| matches!(u, DataPlaneUpdate::SetPath { id, path: None } if *id == sid)),
        "{ups:?}"
    );
}

#[test]
fn terminate_is_sealed_in_the_control_counter_space_and_retires() {
    let mut p = Pair::new();
    let sid = p.connect();
    let _ = p.updates();
    p.gw.terminate(p.now, sid).expect("terminate");
    let t = p.gw.poll_transmit().expect("terminate message");
    let msg = wire::TransportMsg::new_checked(&t.payload).expect("transport");
    assert_eq!(msg.message_type(), MessageType::Terminate);
    assert!(msg.counter() >= CONTROL_COUNTER_BASE);
    let mut buf = t.payload;
    assert!(matches!(
        p.client.handle_datagram(p.now, LocalPath(0), &mut buf),
        ClientOutput::Consumed
    ));
    assert_eq!(p.client.closed_reason(), Some(Reason::OperatorTerminated));
    assert!(p
        .updates()
        .iter()
        .any(|u| matches!(u, DataPlaneUpdate::Retire { id } if *id == sid)));
}

#[test]
fn a_restored_gateway_keeps_versions_proofs_and_replay_protection() {
    let mut p = Pair::new();
    let sid = p.connect();
    // A first switch to path 1, captured.
    p.advance(Duration::from_secs(2));
    p.client.reattach(p.now, LocalPath(1));
    p.exchange();
    assert_eq!(p.version(sid), 2);
    let reattach: Vec<(Path, Vec<u8>)> = p
        .captured
        .iter()
        .filter(|(_, b)| wire::peek_type(b) == Ok(MessageType::ReattachRequest))
        .cloned()
        .collect();
    assert!(!reattach.is_empty());
    let (dirty, node_dirty) = p.gw.take_dirty();
    assert!(dirty.contains(&sid) && node_dirty);

    // Persist, "restart", restore.
    let rec = SessionRecord::decode(&p.gw.export_session(p.now, sid).expect("rec").encode())
        .expect("decode");
    let node = NodeRecord::decode(&p.gw.export_node().encode()).expect("node");
    let mut gw = external_gateway(p.gw_key, p.now, 99);
    // As the control process does: the allow-list first, then the persisted node state.
    gw.allow_client(StaticKeypair::from_secret_bytes(p.client_key).public());
    gw.restore_node(&node);
    gw.restore_session(&rec).expect("restore");
    p.gw = gw;
    assert_eq!(p.version(sid), 2);

    // A captured reattach request replayed after the restart (from another address) is
    // recognised as a replay: the reattach replay window was persisted.
    let attacker = Path::udp("198.51.100.7:5555".parse().expect("attacker"));
    for (_, bytes) in &reattach {
        let mut b = bytes.clone();
        let _ = p.gw.handle_datagram(p.now, attacker, &mut b);
    }
    let events: Vec<Event> = std::iter::from_fn(|| p.gw.poll_event()).collect();
    assert!(
        events.iter().any(|e| matches!(
            e,
            Event::ReattachRejected {
                code: RejectCode::ReplayDetected,
                ..
            }
        )),
        "{events:?}"
    );
    assert!(p.gw.poll_transmit().is_some_and(|t| t.dst == attacker));
    assert!(
        p.gw.poll_transmit().is_none(),
        "no challenge to the attacker"
    );
    assert_eq!(p.version(sid), 2);
    // A replayed handshake initiation creates nothing (timestamps survived).
    let init = p
        .captured
        .iter()
        .find(|(_, b)| wire::peek_type(b) == Ok(MessageType::HandshakeInit))
        .cloned()
        .expect("init");
    let mut b = init.1;
    assert!(matches!(
        p.gw.handle_datagram(p.now, init.0, &mut b),
        Output::Dropped(DropReason::HandshakeReplay)
    ));
    assert_eq!(p.gw.sessions().count(), 1);

    // The real client still proves itself to the restored gateway: switch back to path 0.
    p.advance(Duration::from_secs(2));
    p.client.reattach(p.now, LocalPath(0));
    p.exchange();
    let s = p.gw.session(sid).expect("s");
    assert_eq!(s.active, Some(p.nat[0]));
    assert_eq!(s.version(), 3, "the version continues, no reuse");
    assert_eq!(s.switches_total(), 2);
}

#[test]
fn restored_timestamps_do_not_allow_a_client_and_revocations_persist() {
    let mut p = Pair::new();
    let _ = p.connect();
    let node = NodeRecord::decode(&p.gw.export_node().encode()).expect("node");
    // Restored without an allow-list entry: the client is not allowed.
    let mut gw = external_gateway(p.gw_key, p.now, 5);
    gw.restore_node(&node);
    p.gw = gw;
    let (ck, gk) = (p.client_key, p.gw_key);
    let same_client = move || {
        Client::new(
            ClientConfig::new(
                StaticKeypair::from_secret_bytes(ck),
                StaticKeypair::from_secret_bytes(gk).public(),
            ),
            ChaCha20Rng::seed_from_u64(3),
        )
    };
    let client = same_client();
    p.client = client;
    p.client
        .connect(p.now, LocalPath(0), 1_800_000_000_000_000_000);
    p.exchange();
    assert!(p.client.session_id().is_none(), "not in the allow-list");
    assert_eq!(p.gw.counters().drops[DropReason::UnknownClient.index()], 1);

    // Revoked, persisted, restored with the key back in the allow-list: still revoked.
    let public = StaticKeypair::from_secret_bytes(p.client_key).public();
    p.gw.allow_client(public);
    assert_eq!(p.gw.revoke_client(p.now, &public), 0);
    let node = NodeRecord::decode(&p.gw.export_node().encode()).expect("node");
    let mut gw = external_gateway(p.gw_key, p.now, 6);
    gw.allow_client(public);
    gw.restore_node(&node);
    p.gw = gw;
    p.client = same_client();
    p.client
        .connect(p.now, LocalPath(0), 1_900_000_000_000_000_000);
    p.exchange();
    assert!(
        p.client.session_id().is_none(),
        "revocation survives a restart"
    );
    // Removed from the allow-list by a reload is not a revocation (not persisted as one).
    let other = StaticKeypair::from_secret_bytes([5; 32]).public();
    p.gw.allow_client(other);
    p.gw.disallow_client(&other);
    assert!(p
        .gw
        .export_node()
        .clients
        .iter()
        .all(|c| c.0 != other || !c.2));
}

#[test]
fn draining_a_core_moves_its_sessions_and_keeps_new_ones_away() {
    let mut p = Pair::new();
    let first = p.connect();
    let _ = p.updates();
    let core = first.owner_core();
    let other = 1 - core;
    // Nowhere to go for a core that does not exist.
    assert!(p.gw.drain_core(2).is_err());
    let moves = p.gw.drain_core(core).expect("drain");
    assert_eq!(moves, vec![(first, other)]);
    assert_eq!(p.gw.session(first).expect("session").owner, other);
    let ups = p.updates();
    assert!(
        matches!(ups.as_slice(), [DataPlaneUpdate::Move { id, to }] if *id == first && *to == other),
        "{ups:?}"
    );
    // The move is persisted with the session, and the version does not change (a move is
    // not a state transition).
    let (dirty, _) = p.gw.take_dirty();
    assert!(dirty.contains(&first));
    assert_eq!(p.version(first), 1);
    assert_eq!(
        p.gw.export_session(p.now, first).expect("record").owner,
        other
    );
    // The other core cannot be drained as well: there would be nowhere to go.
    assert!(p.gw.drain_core(other).is_err());
    assert_eq!(p.gw.per_core()[usize::from(core)], 0);
    assert_eq!(p.gw.per_core()[usize::from(other)], 1);
    // A data plane that reports another owner is believed.
    p.gw.note_owner(first, core);
    assert_eq!(p.gw.session(first).expect("session").owner, core);
    assert!(p.gw.undrain_core(core).is_ok());
    assert!(p.gw.undrain_core(9).is_err());
}

#[test]
fn an_operator_rekey_request_reaches_the_data_plane_and_clears_on_rekey() {
    let mut p = Pair::new();
    let sid = p.connect();
    let _ = p.updates();
    assert!(p.gw.request_rekey(SessionId(12345)).is_err());
    p.gw.request_rekey(sid).expect("request");
    let ups = p.updates();
    assert!(
        matches!(ups.as_slice(), [DataPlaneUpdate::RequestRekey { id }] if *id == sid),
        "{ups:?}"
    );
}

/// A client that restarts (or never saw its handshake response) and handshakes again: the old
/// session is retired on the data plane before the new one is installed, since both carry the
/// identity's inner address.
#[test]
fn a_new_handshake_from_the_same_identity_retires_the_old_session_first() {
    let mut p = Pair::new();
    let old = p.connect();
    let _ = p.updates();
    let client_kp = StaticKeypair::from_secret_bytes(p.client_key);
    p.client = Client::new(
        ClientConfig::new(
            client_kp,
            StaticKeypair::from_secret_bytes(p.gw_key).public(),
        ),
        ChaCha20Rng::seed_from_u64(3),
    );
    p.advance(Duration::from_secs(1));
    // The restarted client's wall clock has moved on by that second.
    p.client
        .connect(p.now, LocalPath(0), 1_700_000_001_000_000_000);
    p.exchange();
    let new = p.client.session_id().expect("established");
    assert_ne!(new, old);
    let ups = p.updates();
    let retire = ups
        .iter()
        .position(|u| matches!(u, DataPlaneUpdate::Retire { id } if *id == old));
    let install = ups
        .iter()
        .position(|u| matches!(u, DataPlaneUpdate::Install { handoff, .. } if handoff.id == new));
    assert!(
        matches!((retire, install), (Some(r), Some(i)) if r < i),
        "retire the old session, then install the new one: {ups:?}"
    );
    assert_eq!(
        p.gw.session(old).map(|s| s.state()),
        Some(State::Terminated)
    );
    assert_eq!(p.gw.session(new).map(|s| s.state()), Some(State::Attached));
}

/// The node's changes since the last export name only the clients whose state changed, and
/// merged into a fresh gateway they protect as the whole record does: the accepted
/// initiation, replayed, is refused.
#[test]
fn node_changes_hold_only_what_changed_and_restore_like_the_whole_record() {
    let mut p = Pair::new();
    let _ = p.gw.export_node_changes();
    let _ = p.connect();
    let client_public = StaticKeypair::from_secret_bytes(p.client_key).public();
    let changes = p.gw.export_node_changes();
    assert_eq!(changes.clients.len(), 1);
    assert_eq!(changes.clients[0].0, client_public);
    assert!(changes.clients[0].1.is_some());
    assert!(changes.ids.is_some());
    assert!(
        p.gw.export_node_changes().clients.is_empty(),
        "nothing changed since"
    );
    let mut fresh = external_gateway(p.gw_key, p.now, 9);
    fresh.allow_client(client_public);
    fresh.restore_node(&changes);
    let (from, init) = p
        .captured
        .iter()
        .find(|(_, b)| wire::peek_type(b) == Ok(MessageType::HandshakeInit))
        .cloned()
        .expect("captured initiation");
    let mut again = init;
    assert!(matches!(
        fresh.handle_datagram(p.now, from, &mut again),
        Output::Dropped(DropReason::HandshakeReplay)
    ));
}
