//! The io_uring loop carries a real session over real UDP sockets on 127.0.0.1: the protocol's
//! client sends encrypted datagrams from a plain socket, the worker's [`UringUdp`] receives,
//! opens and delivers them, and sends sealed packets and heartbeat echoes back.

mod support;
use support::{client_datagram, handed_off, Sender};

use std::net::UdpSocket;
use std::sync::mpsc;
use std::time::Duration;

use jumping_dataplane::uring::UringUdp;
use jumping_dataplane::worker::{Worker, WorkerDrop};
use jumping_protocol::client::{ClientOutput, LocalPath};
use jumping_protocol::testing::Sim;
use jumping_protocol::wire::{self, MessageType};
use jumping_protocol::{Path, SessionId};

/// Upper bound for a whole test; the body runs on its own thread so a lost datagram (which
/// would leave `run_once` waiting) fails the test instead of hanging it.
const TEST_LIMIT: Duration = Duration::from_secs(60);

fn within_limit(name: &str, body: impl FnOnce() + Send + 'static) {
    let (done_tx, done_rx) = mpsc::channel();
    let handle = std::thread::Builder::new()
        .name(name.into())
        .spawn(move || {
            body();
            let _ = done_tx.send(());
        })
        .expect("spawn");
    match done_rx.recv_timeout(TEST_LIMIT) {
        Ok(()) => handle.join().expect("test body"),
        Err(mpsc::RecvTimeoutError::Disconnected) => {
            // The body panicked: surface its message.
            if let Err(p) = handle.join() {
                std::panic::resume_unwind(p);
            }
        }
        Err(mpsc::RecvTimeoutError::Timeout) => panic!("{name} did not finish in {TEST_LIMIT:?}"),
    }
}

struct Setup {
    sim: Sim,
    sid: SessionId,
    worker: Worker,
    _tx: Sender,
    uring: UringUdp,
    client: UdpSocket,
}

/// A session handed to a worker whose active path is the client test socket, and the
/// worker's io_uring socket.
fn setup(seed: u64) -> Setup {
    let client = UdpSocket::bind("127.0.0.1:0").expect("client socket");
    client
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    let client_path = Path::udp(client.local_addr().expect("client addr"));
    let (sim, sid, worker, tx) = handed_off(seed, Some(client_path));
    let uring = UringUdp::bind("127.0.0.1:0".parse().expect("addr")).expect("io_uring socket");
    Setup {
        sim,
        sid,
        worker,
        _tx: tx,
        uring,
        client,
    }
}

fn inner_packet(i: u32) -> Vec<u8> {
    let mut p = i.to_be_bytes().to_vec();
    p.extend_from_slice(b" an inner packet of some length");
    p
}

#[test]
fn datagrams_are_delivered_once_replays_dropped_and_sends_reach_the_client() {
    within_limit("uring_roundtrip", || {
        const PACKETS: u32 = 500;
        // Sent in batches smaller than the receive pool so the socket buffer never overflows
        // while the loop is not running (the test drives both ends on one thread).
        const BATCH: u32 = 25;
        let Setup {
            mut sim,
            sid,
            mut worker,
            _tx,
            mut uring,
            client,
        } = setup(31);
        assert_eq!(
            uring.in_flight(),
            jumping_dataplane::uring::RX_BUFFERS,
            "every receive buffer armed"
        );
        let server = uring.socket().local_addr().expect("server addr");
        let mut seen = vec![0u32; PACKETS as usize];
        let mut first = None;
        let mut next = 0u32;
        while next < PACKETS {
            let end = (next + BATCH).min(PACKETS);
            for i in next..end {
                let d = client_datagram(&mut sim, &inner_packet(i));
                if i == 0 {
                    first = Some(d.clone());
                }
                client.send_to(&d, server).expect("send");
            }
            let want = u64::from(end);
            let mut rounds = 0;
            while worker.counters().delivered < want {
                rounds += 1;
                assert!(rounds <= 1000, "batch ending at {end} not received");
                uring
                    .run_once(&mut worker, sim.now, &mut |id, packet| {
                        assert_eq!(id, sid);
                        assert_eq!(&packet[4..], &inner_packet(0)[4..]);
                        let i = u32::from_be_bytes(packet[..4].try_into().expect("4 bytes"));
                        seen[i as usize] += 1;
                    })
                    .expect("run_once");
            }
            next = end;
        }
        assert!(seen.iter().all(|&n| n == 1), "each packet exactly once");
        assert_eq!(worker.counters().delivered, u64::from(PACKETS));
        assert_eq!(uring.in_flight(), jumping_dataplane::uring::RX_BUFFERS);

        // A replayed datagram is received and dropped by the worker.
        client
            .send_to(&first.expect("first datagram"), server)
            .expect("send replay");
        let n = uring
            .run_once(&mut worker, sim.now, &mut |_, _| {
                panic!("a replay must not be delivered")
            })
            .expect("run_once");
        assert_eq!(n, 1);
        let c = worker.counters();
        assert_eq!(c.drops[WorkerDrop::Replay.index()], 1);
        assert_eq!(c.delivered, u64::from(PACKETS));
        assert_eq!(c.rx_datagrams, u64::from(PACKETS) + 1);

        // Worker → client through the io_uring socket.
        let inner = b"from the inside, sealed by the worker";
        uring
            .send_inner(&mut worker, sid, inner)
            .expect("send_inner");
        let mut buf = [0u8; 2048];
        let (len, from) = client
            .recv_from(&mut buf)
            .expect("a datagram from the worker");
        assert_eq!(from, server);
        match sim
            .client
            .handle_datagram(sim.now, LocalPath(0), &mut buf[..len])
        {
            ClientOutput::Deliver(p) => assert_eq!(&*p, inner),
            other => panic!("client did not accept the worker's packet: {other:?}"),
        }
        assert_eq!(worker.counters().sealed, 1);
        assert_eq!(uring.counters().recv_errors, 0);
        assert_eq!(uring.counters().new_path_events, 0);
    });
}

#[test]
fn heartbeats_are_echoed_over_the_socket() {
    within_limit("uring_heartbeat", || {
        let Setup {
            mut sim,
            mut worker,
            _tx,
            mut uring,
            client,
            ..
        } = setup(32);
        let server = uring.socket().local_addr().expect("server addr");
        let later = sim.now + Duration::from_millis(1500);
        sim.client.handle_timeout(later);
        let hb = std::iter::from_fn(|| sim.client.poll_transmit())
            .find(|t| wire::peek_type(&t.payload) == Ok(MessageType::Heartbeat))
            .expect("a heartbeat after the interval");
        client.send_to(&hb.payload, server).expect("send");
        let n = uring
            .run_once(&mut worker, later, &mut |_, _| {
                panic!("a heartbeat is not delivered")
            })
            .expect("run_once");
        assert_eq!(n, 1);
        assert_eq!(uring.counters().replies_sent, 1);
        let mut buf = [0u8; 2048];
        let (len, from) = client.recv_from(&mut buf).expect("the echo");
        assert_eq!(from, server);
        let echo_at = later + Duration::from_millis(30);
        assert!(matches!(
            sim.client
                .handle_datagram(echo_at, LocalPath(0), &mut buf[..len]),
            ClientOutput::Consumed
        ));
        assert_eq!(sim.client.rtt(), Some(Duration::from_millis(30)));
    });
}

#[test]
fn oversized_and_foreign_datagrams_are_counted_not_delivered() {
    within_limit("uring_junk", || {
        let Setup {
            sim,
            mut worker,
            _tx,
            mut uring,
            client,
            ..
        } = setup(33);
        let server = uring.socket().local_addr().expect("server addr");
        client.send_to(&[0u8; 3000], server).expect("send");
        let stranger = UdpSocket::bind("127.0.0.1:0").expect("stranger");
        stranger.send_to(&[1, 2, 3], server).expect("send");
        let mut passed = 0;
        let mut rounds = 0;
        while uring.counters().truncated + passed < 2 {
            rounds += 1;
            assert!(rounds <= 100, "junk not received");
            passed += uring
                .run_once(&mut worker, sim.now, &mut |_, _| panic!("junk delivered"))
                .expect("run_once") as u64;
        }
        assert_eq!(uring.counters().truncated, 1);
        assert_eq!(passed, 1);
        assert_eq!(worker.counters().drops[WorkerDrop::Malformed.index()], 1);
        assert_eq!(worker.counters().delivered, 0);
        assert_eq!(uring.in_flight(), jumping_dataplane::uring::RX_BUFFERS);
    });
}

#[test]
fn cancel_all_takes_every_buffer_back_and_run_once_rearms_them() {
    within_limit("uring_cancel", || {
        let Setup {
            mut sim,
            mut worker,
            _tx,
            mut uring,
            client,
            sid,
        } = setup(34);
        uring.cancel_all().expect("cancel");
        assert_eq!(uring.in_flight(), 0);
        let server = uring.socket().local_addr().expect("server addr");
        let d = client_datagram(&mut sim, &inner_packet(7));
        client.send_to(&d, server).expect("send");
        let mut got = Vec::new();
        let mut rounds = 0;
        while got.is_empty() {
            rounds += 1;
            assert!(rounds <= 100, "not received after re-arm");
            uring
                .run_once(&mut worker, sim.now, &mut |id, p| {
                    assert_eq!(id, sid);
                    got = p.to_vec();
                })
                .expect("run_once");
        }
        assert_eq!(got, inner_packet(7));
        assert_eq!(uring.in_flight(), jumping_dataplane::uring::RX_BUFFERS);
        for _ in 0..8 {
            let u = UringUdp::bind("127.0.0.1:0".parse().expect("addr")).expect("io_uring socket");
            assert_eq!(u.in_flight(), jumping_dataplane::uring::RX_BUFFERS);
            drop(u); // cancels and reaps every receive before freeing the buffers
        }
    });
}
