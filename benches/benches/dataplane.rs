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

criterion_group!(benches, lookup, key_expansion);
criterion_main!(benches);
