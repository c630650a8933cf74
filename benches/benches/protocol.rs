//! Protocol-core costs: the replay window, the handshake on each side, reattach validation on
//! the gateway, and a data packet through the gateway (open and seal, including session lookup
//! and the replay check).
//!
//! Run: `cargo bench -p jumping-benches --bench protocol` (or `cargo xtask bench protocol`).

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BatchSize, BenchmarkId, Criterion, Throughput};
use jumping_benches::{MEASUREMENT_TIME, PAYLOAD_SIZES, SAMPLE_SIZE, WARM_UP_TIME};
use jumping_protocol::client::LocalPath;
use jumping_protocol::crypto::CipherSuite;
use jumping_protocol::gateway::Output;
use jumping_protocol::handshake::{InitPayload, Initiator, Purpose, Responder, StaticKeypair};
use jumping_protocol::replay::ReplayWindow;
use jumping_protocol::testing::Sim;
use jumping_protocol::wire::{HandshakeInit, SessionId, DATA_HEADER_LEN, TAG_LEN};
use jumping_protocol::{Path, Policy};
use rand_chacha::rand_core::SeedableRng;
use rand_chacha::ChaCha20Rng;

fn replay(c: &mut Criterion) {
    let mut g = c.benchmark_group("replay");
    g.measurement_time(MEASUREMENT_TIME)
        .warm_up_time(WARM_UP_TIME)
        .sample_size(SAMPLE_SIZE);
    g.throughput(Throughput::Elements(1));
    g.bench_function("in-order accept", |b| {
        let mut w = ReplayWindow::<32>::new();
        let mut n = 0u64;
        b.iter(|| {
            n += 1;
            black_box(w.accept(black_box(n)))
        });
    });
    g.bench_function("reordered accept (stride 7 within window)", |b| {
        let mut w = ReplayWindow::<32>::new();
        let mut n = 0u64;
        b.iter(|| {
            n += 1;
            // A permutation of each block of 64 counters: every counter once, out of order.
            let c = (n & !63) | ((n * 7) & 63);
            black_box(w.accept(black_box(c)))
        });
    });
    g.bench_function("duplicate reject", |b| {
        let mut w = ReplayWindow::<32>::new();
        for i in 0..1000 {
            let _ = w.accept(i);
        }
        b.iter(|| black_box(w.check(black_box(500))));
    });
    g.finish();
}

fn handshake(c: &mut Criterion) {
    let mut g = c.benchmark_group("handshake");
    g.measurement_time(MEASUREMENT_TIME)
        .warm_up_time(WARM_UP_TIME)
        .sample_size(SAMPLE_SIZE);
    g.throughput(Throughput::Elements(1));
    let mut rng = ChaCha20Rng::seed_from_u64(1);
    let client = StaticKeypair::generate(&mut rng);
    let gateway = StaticKeypair::generate(&mut rng);
    let gw_public = gateway.public();
    let responder = Responder::new(gateway);
    let mut ts = 0u64;
    let mut payload = move || {
        ts += 1;
        InitPayload {
            timestamp: ts,
            purpose: Purpose::NewSession,
            suite: CipherSuite::Aes256Gcm,
        }
    };
    g.bench_function("initiator: build message 1", |b| {
        b.iter(|| {
            black_box(
                Initiator::start(&mut rng, &client, &gw_public, payload(), None).expect("start"),
            )
        });
    });
    let mut rng2 = ChaCha20Rng::seed_from_u64(2);
    let mut rng2b = ChaCha20Rng::seed_from_u64(22);
    g.bench_function("responder: mac1 + read message 1 + write message 2", |b| {
        b.iter_batched(
            || Initiator::start(&mut rng2, &client, &gw_public, payload(), None).expect("start"),
            |init| {
                let msg = HandshakeInit::new_checked(init.message()).expect("well-formed");
                assert!(responder.check_mac1(&msg));
                let acc = responder
                    .read_init(&mut rng2b, &msg)
                    .expect("authenticates");
                black_box(acc.respond(SessionId(1), 0).expect("respond"))
            },
            BatchSize::SmallInput,
        );
    });
    let mut rng3 = ChaCha20Rng::seed_from_u64(3);
    g.bench_function("initiator: read message 2", |b| {
        b.iter_batched(
            || {
                let init = Initiator::start(&mut rng3, &client, &gw_public, payload(), None)
                    .expect("start");
                let msg = HandshakeInit::new_checked(init.message()).expect("well-formed");
                let acc = responder.read_init(&mut rng3, &msg).expect("authenticates");
                let (_, resp) = acc.respond(SessionId(1), 0).expect("respond");
                (init, resp)
            },
            |(init, resp)| {
                black_box(
                    init.handle_response(&resp)
                        .map_err(|(_, e)| e)
                        .expect("completes"),
                )
            },
            BatchSize::SmallInput,
        );
    });
    g.bench_function("responder: mac1 reject (scan)", |b| {
        let mut garbage = Initiator::start(&mut rng, &client, &gw_public, payload(), None)
            .expect("start")
            .message()
            .to_vec();
        garbage[100] ^= 1;
        b.iter(|| {
            let msg = HandshakeInit::new_checked(&garbage).expect("well-formed");
            black_box(responder.check_mac1(&msg))
        });
    });
    g.finish();
}

fn established() -> (Sim, SessionId) {
    let mut sim = Sim::new(7, Policy::default());
    let sid = sim.connect();
    (sim, sid)
}

fn reattach(c: &mut Criterion) {
    let mut g = c.benchmark_group("reattach");
    g.measurement_time(MEASUREMENT_TIME)
        .warm_up_time(WARM_UP_TIME)
        .sample_size(SAMPLE_SIZE);
    g.throughput(Throughput::Elements(1));
    let (mut sim, _) = established();
    let from = Path::udp("192.0.2.77:5000".parse().expect("addr"));
    g.bench_function(
        "gateway: validate request (MAC, freshness, replay, proof, policy) and challenge",
        |b| {
            b.iter_batched(
                || {
                    let now = sim.now;
                    sim.client.reattach(now, LocalPath(1));
                    sim.client.poll_transmit().expect("request").payload
                },
                |mut req| {
                    let now = sim.now;
                    let out = sim.gw.handle_datagram(now, from, &mut req);
                    assert!(matches!(out, Output::Consumed));
                    black_box(sim.gw.poll_transmit())
                },
                BatchSize::SmallInput,
            );
        },
    );
    g.bench_function("gateway: reject forged request (MAC check only)", |b| {
        let now = sim.now;
        sim.client.reattach(now, LocalPath(1));
        let mut forged = sim.client.poll_transmit().expect("request").payload;
        forged[40] ^= 1;
        let mut req = forged.clone();
        b.iter(|| {
            req.copy_from_slice(&forged);
            let out = sim.gw.handle_datagram(now, from, &mut req);
            while sim.gw.poll_transmit().is_some() {}
            while sim.gw.poll_event().is_some() {}
            black_box(out.is_dropped())
        });
    });
    g.finish();
}

trait IsDropped {
    fn is_dropped(&self) -> bool;
}
impl IsDropped for Output<'_> {
    fn is_dropped(&self) -> bool {
        matches!(self, Output::Dropped(_))
    }
}

fn data_path(c: &mut Criterion) {
    let mut g = c.benchmark_group("gateway data packet");
    g.measurement_time(MEASUREMENT_TIME)
        .warm_up_time(WARM_UP_TIME)
        .sample_size(SAMPLE_SIZE);
    let (mut sim, sid) = established();
    let active = sim.session(sid).active.expect("active path");
    for size in PAYLOAD_SIZES {
        g.throughput(Throughput::Bytes(size as u64));
        let mut buf = vec![0u8; DATA_HEADER_LEN + size + TAG_LEN];
        g.bench_with_input(
            BenchmarkId::new("encapsulate (lookup + seal)", size),
            &size,
            |b, &size| {
                b.iter(|| black_box(sim.gw.encapsulate(sid, &mut buf, size).expect("sealed")));
            },
        );
        let mut packets: Vec<Vec<u8>> = Vec::new();
        g.bench_with_input(
            BenchmarkId::new("receive (parse + lookup + replay + open)", size),
            &size,
            |b, &size| {
                b.iter_batched(
                    || {
                        if packets.is_empty() {
                            let now = sim.now;
                            for _ in 0..1024 {
                                let mut p = vec![0u8; DATA_HEADER_LEN + size + TAG_LEN];
                                let (_, len) =
                                    sim.client.encapsulate(now, &mut p, size).expect("sealed");
                                p.truncate(len);
                                packets.push(p);
                            }
                            packets.reverse();
                        }
                        packets.pop().expect("refilled")
                    },
                    |mut p| {
                        let now = sim.now;
                        match sim.gw.handle_datagram(now, active, &mut p) {
                            Output::Deliver { packet, .. } => black_box(packet.len()),
                            other => panic!("not delivered: {other:?}"),
                        }
                    },
                    BatchSize::SmallInput,
                );
            },
        );
    }
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default();
    targets = replay, handshake, reattach, data_path
}
criterion_main!(benches);
