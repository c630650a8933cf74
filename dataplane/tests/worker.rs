//! A worker carries a real session: the protocol's gateway completes the handshake, hands the
//! session to the worker, and the protocol's client exchanges real encrypted packets with the
//! worker alone.

mod support;
use support::{client_datagram, setup};

use std::time::Duration;

use jumping_dataplane::commands::Command;
use jumping_dataplane::worker::{DataSession, Rx, SessionUpdate, WorkerDrop};
use jumping_protocol::client::{ClientOutput, LocalPath};
use jumping_protocol::wire::{self, MessageType, DATA_HEADER_LEN, TAG_LEN};
use jumping_protocol::Path;

#[test]
fn worker_carries_a_handed_off_session_both_ways() {
    let (mut sim, sid, mut worker, _tx, active) = setup();
    // Client → worker.
    let mut d = client_datagram(&mut sim, b"inner packet one");
    match worker.handle_rx(sim.now, active, &mut d) {
        Rx::Deliver {
            id,
            packet,
            new_path,
        } => {
            assert_eq!(
                (id, &*packet, new_path),
                (sid, &b"inner packet one"[..], None)
            );
        }
        other => panic!("not delivered: {other:?}"),
    }
    // Worker → client.
    let inner = b"reply from the inside";
    let mut buf = vec![0u8; DATA_HEADER_LEN + inner.len() + TAG_LEN];
    buf[DATA_HEADER_LEN..DATA_HEADER_LEN + inner.len()].copy_from_slice(inner);
    let (dst, len) = worker
        .encapsulate(sid, &mut buf, inner.len())
        .expect("sealed");
    assert_eq!(dst, active);
    buf.truncate(len);
    match sim.client.handle_datagram(sim.now, LocalPath(0), &mut buf) {
        ClientOutput::Deliver(p) => assert_eq!(&*p, inner),
        other => panic!("client did not accept the worker's packet: {other:?}"),
    }
    let c = worker.counters();
    assert_eq!((c.delivered, c.sealed), (1, 1));
}

#[test]
fn replayed_forged_foreign_and_control_datagrams_are_dropped_by_reason() {
    let (mut sim, sid, mut worker, _tx, active) = setup();
    let d = client_datagram(&mut sim, b"once");
    let mut first = d.clone();
    assert!(matches!(
        worker.handle_rx(sim.now, active, &mut first),
        Rx::Deliver { .. }
    ));
    let mut replay = d.clone();
    assert!(matches!(
        worker.handle_rx(sim.now, active, &mut replay),
        Rx::Dropped(WorkerDrop::Replay)
    ));
    let genuine = client_datagram(&mut sim, b"forged");
    let mut forged = genuine.clone();
    let last = forged.len() - 1;
    forged[last] ^= 1;
    assert!(matches!(
        worker.handle_rx(sim.now, active, &mut forged),
        Rx::Dropped(WorkerDrop::AuthFailed)
    ));
    // The forged copy did not consume the counter: the genuine packet still goes through.
    let mut genuine = genuine;
    assert!(matches!(
        worker.handle_rx(sim.now, active, &mut genuine),
        Rx::Deliver { .. }
    ));
    let mut foreign = client_datagram(&mut sim, b"x");
    foreign[wire::SESSION_ID_OFFSET] ^= 0x55;
    assert!(matches!(
        worker.handle_rx(sim.now, active, &mut foreign),
        Rx::Dropped(WorkerDrop::UnknownSession)
    ));
    let mut short = vec![1u8, MessageType::Data as u8, 0, 0, 1];
    assert!(matches!(
        worker.handle_rx(sim.now, active, &mut short),
        Rx::Dropped(WorkerDrop::Malformed)
    ));
    let mut init = vec![0u8; wire::HANDSHAKE_INIT_LEN];
    init[0] = wire::VERSION;
    init[1] = MessageType::HandshakeInit as u8;
    assert!(matches!(
        worker.handle_rx(sim.now, active, &mut init),
        Rx::Dropped(WorkerDrop::NotDataPlane)
    ));
    let c = worker.counters();
    for (reason, n) in [
        (WorkerDrop::Replay, 1),
        (WorkerDrop::AuthFailed, 1),
        (WorkerDrop::UnknownSession, 1),
        (WorkerDrop::Malformed, 1),
        (WorkerDrop::NotDataPlane, 1),
    ] {
        assert_eq!(c.drops[reason.index()], n, "{}", reason.name());
    }
    assert_eq!(c.delivered, 2);
    let _ = sid;
}

#[test]
fn packet_from_a_new_address_is_delivered_and_reported() {
    let (mut sim, _sid, mut worker, _tx, active) = setup();
    let rebound = Path::udp("192.0.2.10:50000".parse().expect("addr"));
    let mut d = client_datagram(&mut sim, b"after rebind");
    match worker.handle_rx(sim.now, rebound, &mut d) {
        Rx::Deliver { new_path, .. } => assert_eq!(new_path, Some(rebound)),
        other => panic!("{other:?}"),
    }
    // Replies still go to the active path until the control process rebinds.
    let mut buf = vec![0u8; DATA_HEADER_LEN + 4 + TAG_LEN];
    let (dst, _) = worker.encapsulate(_sid, &mut buf, 4).expect("sealed");
    assert_eq!(dst, active);
}

#[test]
fn heartbeats_are_echoed_in_place_and_give_the_client_its_rtt() {
    let (mut sim, _sid, mut worker, _tx, active) = setup();
    let later = sim.now + Duration::from_millis(1500);
    sim.client.handle_timeout(later);
    let hb = std::iter::from_fn(|| sim.client.poll_transmit())
        .find(|t| wire::peek_type(&t.payload) == Ok(MessageType::Heartbeat))
        .expect("a heartbeat after the interval");
    let mut buf = hb.payload.clone();
    let len = match worker.handle_rx(later, active, &mut buf) {
        Rx::Reply { dst, len, new_path } => {
            assert_eq!((dst, new_path), (active, None));
            len
        }
        other => panic!("{other:?}"),
    };
    buf.truncate(len);
    let echo_at = later + Duration::from_millis(30);
    assert!(matches!(
        sim.client.handle_datagram(echo_at, LocalPath(0), &mut buf),
        ClientOutput::Consumed
    ));
    assert_eq!(sim.client.rtt(), Some(Duration::from_millis(30)));
}

#[test]
fn a_retired_session_is_gone_at_the_next_batch_boundary() {
    let (mut sim, sid, mut worker, mut tx, active) = setup();
    tx.send(Command::Retire { id: sid }).expect("room");
    let mut d = client_datagram(&mut sim, b"before apply");
    assert!(matches!(
        worker.handle_rx(sim.now, active, &mut d),
        Rx::Deliver { .. }
    ));
    assert_eq!(worker.apply_commands(16).retired, 1);
    let mut d = client_datagram(&mut sim, b"after apply");
    assert!(matches!(
        worker.handle_rx(sim.now, active, &mut d),
        Rx::Dropped(WorkerDrop::UnknownSession)
    ));
    let mut buf = vec![0u8; DATA_HEADER_LEN + 1 + TAG_LEN];
    assert_eq!(
        worker.encapsulate(sid, &mut buf, 1),
        Err(WorkerDrop::UnknownSession)
    );
}

#[test]
fn updates_move_the_active_path_and_a_reinstall_is_refused() {
    let (mut sim, sid, mut worker, mut tx, active) = setup();
    let moved = Path::udp("192.0.2.10:50001".parse().expect("addr"));
    tx.send(Command::Update {
        id: sid,
        update: SessionUpdate::ActivePath(Some(moved)),
    })
    .expect("room");
    // A wholesale reinstall would roll the send counter back: refused.
    let stale = sim.session(sid).handoff();
    tx.send(Command::Install {
        id: sid,
        state: DataSession::from(stale),
    })
    .expect("room");
    let a = worker.apply_commands(16);
    assert_eq!((a.updated, a.refused), (1, 1));
    let mut buf = vec![0u8; DATA_HEADER_LEN + 2 + TAG_LEN];
    let (dst, _) = worker.encapsulate(sid, &mut buf, 2).expect("sealed");
    assert_eq!(dst, moved);
    tx.send(Command::Update {
        id: sid,
        update: SessionUpdate::ActivePath(None),
    })
    .expect("room");
    worker.apply_commands(16);
    assert_eq!(
        worker.encapsulate(sid, &mut buf, 2),
        Err(WorkerDrop::NoActivePath)
    );
    let _ = (&mut sim, active);
}
