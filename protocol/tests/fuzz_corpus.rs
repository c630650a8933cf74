//! Replays the committed cargo-fuzz corpora (`fuzz/corpus/<target>/`) through the same no-panic
//! entry points the fuzz targets call (`jumping_protocol::fuzzing`), on stable Rust, so CI
//! catches a regression on any input a fuzzer ever kept (including past crashes).
//!
//! A missing or empty corpus directory fails the test: a replay of nothing must not pass.

use std::fs;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};

use jumping_protocol::fuzzing;

fn corpus_dir(target: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz/corpus")
        .join(target)
}

/// Run `f` on every file of the corpus of `target`; return how many inputs were replayed.
fn replay(target: &str, f: fn(&[u8])) -> usize {
    let dir = corpus_dir(target);
    let entries = fs::read_dir(&dir).unwrap_or_else(|e| {
        panic!(
            "fuzz corpus {} for target `{target}` is missing ({e}); regenerate it with \
             `cargo +nightly run --manifest-path fuzz/Cargo.toml --example gen_corpus`",
            dir.display()
        )
    });
    let mut files: Vec<PathBuf> = entries
        .map(|e| {
            e.unwrap_or_else(|err| panic!("cannot list {}: {err}", dir.display()))
                .path()
        })
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    assert!(
        !files.is_empty(),
        "fuzz corpus {} for target `{target}` is empty",
        dir.display()
    );
    for path in &files {
        let data = fs::read(path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
        if catch_unwind(AssertUnwindSafe(|| f(&data))).is_err() {
            panic!(
                "fuzz target `{target}` panicked on corpus input {} ({} bytes); reproduce with \
                 `cargo +nightly fuzz run {target} --fuzz-dir fuzz {}`",
                path.display(),
                data.len(),
                path.display()
            );
        }
    }
    println!(
        "fuzz corpus: replayed {} inputs of {target} from {}",
        files.len(),
        dir.display()
    );
    files.len()
}

#[test]
fn wire_parse_corpus() {
    assert!(replay("wire_parse", fuzzing::parse) > 0);
}

#[test]
fn gateway_datagrams_corpus() {
    assert!(replay("gateway_datagrams", fuzzing::gateway_datagrams) > 0);
}

#[test]
fn client_datagrams_corpus() {
    assert!(replay("client_datagrams", fuzzing::client_datagrams) > 0);
}
