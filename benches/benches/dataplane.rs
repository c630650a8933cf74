//! Data-plane session table: lookup cost at 10k, 100k and 1M sessions (random SessionIds, so
//! at 1M most lookups miss the CPU caches, as on a busy gateway), and memory per session of
//! the index.
//!
//! Run: `cargo bench -p jumping-benches --bench dataplane`.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use jumping_benches::{MEASUREMENT_TIME, SAMPLE_SIZE, WARM_UP_TIME};
use jumping_dataplane::table::SessionTable;
use jumping_protocol::SessionId;

fn ids(n: usize) -> Vec<SessionId> {
    jumping_benches::session_ids(n, 0x1234_5678_9ABC_DEF0)
}

fn lookup(c: &mut Criterion) {
    let mut g = c.benchmark_group("session table");
    g.measurement_time(MEASUREMENT_TIME)
        .warm_up_time(WARM_UP_TIME)
        .sample_size(SAMPLE_SIZE);
    g.throughput(Throughput::Elements(1));
    for n in [10_000usize, 100_000, 1_000_000] {
        let keys = ids(n);
        let mut t = SessionTable::with_capacity(n);
        for (i, k) in keys.iter().enumerate() {
            t.insert(*k, i as u32).expect("fits");
        }
        eprintln!(
            "session table: {n} sessions, index+slab {} bytes = {:.1} B/session (value = u32)",
            t.memory_bytes(),
            t.memory_bytes() as f64 / n as f64
        );
        // Visit the keys in a scrambled order so consecutive lookups are unrelated.
        let order: Vec<SessionId> = ids(n)
            .iter()
            .map(|s| keys[(s.0 % n as u64) as usize])
            .collect();
        let mut i = 0usize;
        g.bench_with_input(BenchmarkId::new("lookup hit", n), &n, |b, _| {
            b.iter(|| {
                i = (i + 1) % order.len();
                black_box(t.get(black_box(order[i])))
            });
        });
        const BATCH: usize = 32;
        let mut k = 0usize;
        let mut slots = [None; BATCH];
        g.throughput(Throughput::Elements(BATCH as u64));
        g.bench_with_input(
            BenchmarkId::new("batch of 32 hits incl. slab read", n),
            &n,
            |b, _| {
                b.iter(|| {
                    k = (k + BATCH) % (order.len() - BATCH);
                    t.slots_of_batch(&order[k..k + BATCH], &mut slots);
                    let mut sum = 0u32;
                    for s in slots.iter().flatten() {
                        sum = sum.wrapping_add(*t.get_slot(*s).expect("present"));
                    }
                    black_box(sum)
                });
            },
        );
        g.throughput(Throughput::Elements(1));
        let misses = ids(2 * n)[n..].to_vec();
        let mut j = 0usize;
        g.bench_with_input(BenchmarkId::new("lookup miss", n), &n, |b, _| {
            b.iter(|| {
                j = (j + 1) % misses.len();
                black_box(t.get(black_box(misses[j])))
            });
        });
    }
    g.finish();
}

/// What a key-cache miss costs the worker: expanding one epoch's two AES-256-GCM keys from
/// their raw secrets (docs/ARCHITECTURE.md, compact session keys).
fn key_expansion(c: &mut Criterion) {
    use jumping_protocol::crypto::{AeadKey, CipherSuite, SecretKey};
    let mut g = c.benchmark_group("key cache");
    g.measurement_time(MEASUREMENT_TIME)
        .warm_up_time(WARM_UP_TIME)
        .sample_size(SAMPLE_SIZE);
    let (a, b) = (
        SecretKey::from_bytes([7; 32]),
        SecretKey::from_bytes([9; 32]),
    );
    g.bench_function("miss: expand an epoch's two AES-256-GCM keys", |bch| {
        bch.iter(|| {
            black_box((
                AeadKey::new(CipherSuite::Aes256Gcm, black_box(&a)),
                AeadKey::new(CipherSuite::Aes256Gcm, black_box(&b)),
            ))
        });
    });
    g.finish();
}

/// The cross-queue handoff (docs/ARCHITECTURE.md, "Cross-queue handoff"): what a foreign
/// packet costs — a copy into the ring slot to its owner and the owner's pop (another copy out
/// of the slot) — on one core, and as a pipeline between two cores (producer here, consumer
/// pinned to the other CPU; time per packet over a burst, including the cache-line transfers).
fn handoff(c: &mut Criterion) {
    use jumping_dataplane::runtime::{handoff_mesh, push_handoff, HandoffKind};
    use jumping_protocol::Path;
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    let mut g = c.benchmark_group("handoff");
    g.measurement_time(MEASUREMENT_TIME)
        .warm_up_time(WARM_UP_TIME)
        .sample_size(SAMPLE_SIZE);
    let from = Path::udp("192.0.2.1:4500".parse().expect("address"));
    for size in [64usize, 1400] {
        let datagram = vec![0xA5u8; size + 36];
        g.throughput(Throughput::Elements(1));
        // One core: push then pop.
        let mut mesh = handoff_mesh(2);
        let (mut rx0, _) = std::mem::take(&mut mesh[0]);
        let (_, mut tx1) = std::mem::take(&mut mesh[1]);
        let (mut to0, mut from1) = (tx1[0].take().expect("ring 1→0"), rx0.remove(0));
        g.bench_with_input(
            BenchmarkId::new("push + pop, one core", size),
            &size,
            |b, _| {
                b.iter(|| {
                    push_handoff(&mut to0, HandoffKind::Inbound(from), black_box(&datagram))
                        .expect("room");
                    let mut h = from1.pop().expect("queued");
                    black_box(h.bytes_mut()[0])
                });
            },
        );
        // Two cores: a consumer pinned to CPU 1 drains while this thread pushes.
        let popped = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let consumer = {
            let (popped, stop) = (Arc::clone(&popped), Arc::clone(&stop));
            std::thread::spawn(move || {
                if let Some(core) = core_affinity::get_core_ids().and_then(|c| c.get(1).copied()) {
                    core_affinity::set_for_current(core);
                }
                while !stop.load(Ordering::Relaxed) {
                    match from1.pop() {
                        Ok(mut h) => {
                            black_box(h.bytes_mut()[0]);
                            popped.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(_) => std::hint::spin_loop(),
                    }
                }
            })
        };
        g.bench_with_input(
            BenchmarkId::new("pipeline, two cores", size),
            &size,
            |b, _| {
                b.iter_custom(|iters| {
                    let target = popped.load(Ordering::Relaxed) + iters;
                    let t0 = Instant::now();
                    for _ in 0..iters {
                        while push_handoff(&mut to0, HandoffKind::Inbound(from), &datagram).is_err()
                        {
                            std::hint::spin_loop();
                        }
                    }
                    while popped.load(Ordering::Relaxed) < target {
                        std::hint::spin_loop();
                    }
                    t0.elapsed().max(Duration::from_nanos(1))
                });
            },
        );
        stop.store(true, Ordering::Relaxed);
        consumer.join().expect("consumer");
    }
    g.finish();
}

criterion_group!(benches, lookup, key_expansion, handoff);
criterion_main!(benches);
