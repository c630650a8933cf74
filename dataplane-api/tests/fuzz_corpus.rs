//! Replays the committed cargo-fuzz corpus of the `dataplane_api` target
//! (`fuzz/corpus/dataplane_api/`) through the same oracle the fuzzer runs
//! ([`jumping_dataplane_api::fuzz_round_trip`]), on stable Rust, so CI catches a regression on
//! any input a fuzzer ever kept. An empty or missing corpus fails: a replay of nothing must
//! not pass.

use std::path::Path;

#[test]
fn dataplane_api_corpus_replays_clean() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus/dataplane_api");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("corpus {} missing: {e}", dir.display()))
        .map(|e| e.expect("list corpus").path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    assert!(!files.is_empty(), "corpus {} is empty", dir.display());
    for f in &files {
        let data = std::fs::read(f).expect("read corpus file");
        jumping_dataplane_api::fuzz_round_trip(&data);
    }
}
