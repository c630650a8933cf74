//! Session-table lookup latency as a distribution (p50, p90, p99, p99.9) and memory per
//! session, at 10k, 100k and 1M sessions on one worker — the goals are a lookup p99
//! of at most 100 ns at 1M sessions and at most 512 bytes per session, replay window included.
//!
//! Values are blobs of exactly `size_of::<DataSession>()` bytes, so the slab has the real
//! cache footprint; each timed lookup finds the session and reads a byte of its state (as the
//! packet path does), in a scrambled order over the whole table, so at 1M most lookups miss
//! the CPU caches. Each lookup is timed alone with the monotonic clock; the clock's own cost
//! (the median of empty measurements) is subtracted. Runs pinned to CPU 1 when there is one.
//!
//! Writes `table.{json,md}` into the run directory (see `jumping_benches::run_dir`).

use std::fmt::Write as _;
use std::hint::black_box;
use std::time::Instant;

use anyhow::Result;
use jumping_benches::{run_dir, session_ids};
use jumping_dataplane::keys::KeyCache;
use jumping_dataplane::table::SessionTable;
use jumping_dataplane::worker::{DataSession, DEFAULT_KEY_CACHE};
use jumping_protocol::SessionId;
use serde_json::json;

const SESSION_BYTES: usize = size_of::<DataSession>();
const SAMPLES: usize = 2_000_000;
const BATCH: usize = 64;

/// A stand-in with the size of a real session.
struct Blob([u8; SESSION_BYTES]);

fn percentile(sorted: &[u64], p: f64) -> u64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn main() -> Result<()> {
    if let Some(c) = core_affinity::get_core_ids().and_then(|c| c.get(1).copied()) {
        core_affinity::set_for_current(c);
    }
    // The clock's own cost.
    let mut empty: Vec<u64> = (0..200_000)
        .map(|_| {
            let t = Instant::now();
            black_box(());
            t.elapsed().as_nanos() as u64
        })
        .collect();
    empty.sort_unstable();
    let overhead = percentile(&empty, 0.5);

    let cache = KeyCache::with_entries(DEFAULT_KEY_CACHE).memory_bytes();
    let mut rows = Vec::new();
    for n in [10_000usize, 100_000, 1_000_000] {
        let keys = session_ids(n, 0x1234_5678);
        let mut t: SessionTable<Blob> = SessionTable::with_capacity(n);
        for (i, k) in keys.iter().enumerate() {
            let mut b = Blob([0; SESSION_BYTES]);
            b.0[0] = i as u8;
            let _ = t.insert(*k, b);
        }
        // Scrambled visiting order, independent of insertion order.
        let order: Vec<SessionId> = session_ids(SAMPLES, 0xABCD)
            .iter()
            .map(|s| keys[(s.0 % n as u64) as usize])
            .collect();
        let mut lat: Vec<u64> = Vec::with_capacity(SAMPLES);
        let mut sum = 0u8;
        for id in &order {
            let t0 = Instant::now();
            if let Some(b) = t.get(black_box(*id)) {
                sum = sum.wrapping_add(b.0[0]);
            }
            lat.push((t0.elapsed().as_nanos() as u64).saturating_sub(overhead));
        }
        black_box(sum);
        lat.sort_unstable();
        // As the worker does it: a receive batch of 64 is prefetched, then looked up one by
        // one; the cost per lookup is the batch's time over 64.
        let mut per: Vec<u64> = order
            .chunks_exact(BATCH)
            .map(|ids| {
                let t0 = Instant::now();
                t.prefetch(ids);
                for id in ids {
                    if let Some(b) = t.get(black_box(*id)) {
                        sum = sum.wrapping_add(b.0[0]);
                    }
                }
                (t0.elapsed().as_nanos() as u64).saturating_sub(overhead) / BATCH as u64
            })
            .collect();
        black_box(sum);
        per.sort_unstable();
        let table_bytes = SessionTable::<DataSession>::memory_for(n);
        let row = json!({
            "sessions": n,
            "lookup_ns_p50": percentile(&lat, 0.5),
            "lookup_ns_p90": percentile(&lat, 0.9),
            "lookup_ns_p99": percentile(&lat, 0.99),
            "lookup_ns_p999": percentile(&lat, 0.999),
            "batched_lookup_ns_p50": percentile(&per, 0.5),
            "batched_lookup_ns_p99": percentile(&per, 0.99),
            "table_bytes_per_session": table_bytes as f64 / n as f64,
            "key_cache_bytes_per_worker": cache,
            "bytes_per_session_incl_key_cache": (table_bytes + cache) as f64 / n as f64,
        });
        eprintln!("table-latency: {row}");
        rows.push(row);
    }
    let mut md = format!(
        "## Session table: lookup latency and memory per session\n\n\
         One worker's table; values of {SESSION_BYTES} B (`DataSession`: raw key secrets, \
         send counter, 32-word replay window, active path, counters); {SAMPLES} lookups in a \
         scrambled order, each timed alone, clock cost ({overhead} ns, median) subtracted. \
         Memory: index + slab + free list, and with the worker's expanded-key cache \
         ({DEFAULT_KEY_CACHE} entries, {cache} B) shared by the sessions.\n\n\
         Batched: receive batches of {BATCH} prefetched first (`SessionTable::prefetch`, as the \
         AF_XDP worker does), then looked up; per-lookup cost = batch time / {BATCH}, its p50 \
         and p99 over all batches.\n\n\
         | sessions | p50 | p90 | p99 | p99.9 | batched p50 | batched p99 | B/session (table) | \
         B/session (+ key cache) |\n|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n"
    );
    for r in &rows {
        let _ = writeln!(
            md,
            "| {} | {} ns | {} ns | {} ns | {} ns | {} ns | {} ns | {:.1} | {:.1} |",
            r["sessions"],
            r["lookup_ns_p50"],
            r["lookup_ns_p90"],
            r["lookup_ns_p99"],
            r["lookup_ns_p999"],
            r["batched_lookup_ns_p50"],
            r["batched_lookup_ns_p99"],
            r["table_bytes_per_session"].as_f64().unwrap_or(0.0),
            r["bytes_per_session_incl_key_cache"]
                .as_f64()
                .unwrap_or(0.0),
        );
    }
    let dir = run_dir();
    std::fs::create_dir_all(&dir)?;
    std::fs::write(
        dir.join("table.json"),
        serde_json::to_string_pretty(&json!({ "clock_overhead_ns": overhead, "rows": rows }))?,
    )?;
    std::fs::write(dir.join("table.md"), &md)?;
    println!("{md}");
    Ok(())
}
