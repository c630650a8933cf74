//! X25519 library choice for the handshake (five X25519 operations per handshake on the
//! gateway, three plus two on the client): `x25519-dalek` (curve25519-dalek, what `snow`'s
//! default resolver uses) against aws-lc-rs, for the two operations a handshake does: a
//! variable-base Diffie-Hellman with a static or ephemeral secret, and generating an
//! ephemeral key pair (a fixed-base multiplication).
//!
//! Run: `cargo bench -j 1 -p jumping-benches --bench x25519`.

use std::hint::black_box;

use aws_lc_rs::agreement::{self, PrivateKey, UnparsedPublicKey, X25519};
use criterion::{criterion_group, criterion_main, Criterion};
use x25519_dalek::{PublicKey, StaticSecret};

fn dh(c: &mut Criterion) {
    let mut g = c.benchmark_group("x25519/dh");
    let ours = StaticSecret::from([7u8; 32]);
    let theirs = PublicKey::from(&StaticSecret::from([9u8; 32]));
    g.bench_function("x25519-dalek", |b| {
        b.iter(|| black_box(ours.diffie_hellman(black_box(&theirs)).to_bytes()));
    });
    let ours = PrivateKey::from_private_key(&X25519, &[7u8; 32]).expect("key");
    let peer = UnparsedPublicKey::new(&X25519, *theirs.as_bytes());
    g.bench_function("aws-lc-rs", |b| {
        b.iter(|| {
            black_box(
                agreement::agree(&ours, black_box(&peer), (), |k| {
                    let mut out = [0u8; 32];
                    out.copy_from_slice(k);
                    Ok(out)
                })
                .expect("agree"),
            )
        });
    });
    g.finish();
}

fn keygen(c: &mut Criterion) {
    let mut g = c.benchmark_group("x25519/keygen");
    let mut seed = [3u8; 32];
    g.bench_function("x25519-dalek", |b| {
        b.iter(|| {
            seed[0] = seed[0].wrapping_add(1);
            let s = StaticSecret::from(seed);
            black_box(PublicKey::from(&s).to_bytes())
        });
    });
    g.bench_function("aws-lc-rs", |b| {
        b.iter(|| {
            seed[0] = seed[0].wrapping_add(1);
            let k = PrivateKey::from_private_key(&X25519, &seed).expect("key");
            black_box(k.compute_public_key().expect("public").as_ref()[0])
        });
    });
    g.finish();
}

fn config() -> Criterion {
    Criterion::default()
        .warm_up_time(std::time::Duration::from_millis(500))
        .measurement_time(std::time::Duration::from_secs(3))
}

criterion_group! {
    name = x25519;
    config = config();
    targets = dh, keygen
}
criterion_main!(x25519);
