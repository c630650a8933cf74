//! The data plane's Prometheus metrics: each worker publishes its counters with relaxed stores
//! ([`SharedStats`]); a scrape reads them on the endpoint's thread, labels them per worker and
//! sums them per reason, and adds the XDP program's per-CPU counters summed over CPUs. Nothing
//! here runs on a worker.

use std::path::PathBuf;
use std::sync::Arc;

use jumping_dataplane_api::{DropReason, WorkerStats};
use jumping_ebpf::Counter;
use observe::metrics::{Labels, MetricSet};

use crate::runtime::SharedStats;

/// What a scrape reads.
#[derive(Debug, Clone)]
pub struct Sources {
    /// Each worker's published counters, by worker index.
    pub workers: Vec<Arc<SharedStats>>,
    /// `af_xdp` or `io_uring`.
    pub backend: &'static str,
    /// Where the XDP program's maps are pinned (AF_XDP backend only).
    pub xdp_pin_dir: Option<PathBuf>,
}

/// The text a scrape returns.
#[must_use]
pub fn render(src: &Sources) -> String {
    let stats: Vec<WorkerStats> = src.workers.iter().map(|w| w.read()).collect();
    let xdp = src
        .xdp_pin_dir
        .as_deref()
        .and_then(|d| jumping_ebpf::read_pinned_counters(d).ok());
    encode(&stats, src.backend, xdp.as_ref())
}

fn encode(stats: &[WorkerStats], backend: &str, xdp: Option<&[u64; Counter::COUNT]>) -> String {
    let mut m = MetricSet::new();
    m.gauge(
        "jumping_build_info",
        "Build of the process answering.",
        vec![
            ("component", "dataplane".into()),
            ("version", env!("CARGO_PKG_VERSION").into()),
        ],
        1,
    );
    m.gauge(
        "jumping_dataplane_backend",
        "The I/O backend the workers use.",
        vec![("backend", backend.into())],
        1,
    );
    let mut sessions = 0u64;
    for (i, w) in stats.iter().enumerate() {
        let l = || -> Labels { vec![("worker", i.to_string()), ("cpu", w.cpu.to_string())] };
        for (name, help, v) in [
            (
                "jumping_worker_rx_packets",
                "Datagrams received from the outside (tunnel side).",
                w.rx_datagrams,
            ),
            (
                "jumping_worker_rx_bytes",
                "Bytes received from the outside.",
                w.rx_bytes,
            ),
            (
                "jumping_worker_delivered",
                "Packets opened and delivered to the inside interface.",
                w.delivered,
            ),
            (
                "jumping_worker_inside_packets",
                "Packets read from the inside interface.",
                w.inside_packets,
            ),
            (
                "jumping_worker_tx_packets",
                "Datagrams sent to clients.",
                w.sent,
            ),
            (
                "jumping_worker_tx_bytes",
                "Bytes sent to clients.",
                w.sent_bytes,
            ),
            (
                "jumping_worker_handed_off",
                "Datagrams handed to the owning worker (arrived on another queue).",
                w.handed_off,
            ),
            (
                "jumping_worker_taken_over",
                "Datagrams taken over from other workers.",
                w.taken_over,
            ),
            (
                "jumping_worker_key_cache_misses",
                "Expanded-key cache misses (a key expansion each).",
                w.key_cache_misses,
            ),
            (
                "jumping_worker_events_lost",
                "Events a worker dropped because its ring to the control thread was full.",
                w.events_lost,
            ),
        ] {
            m.counter(name, help, l(), v);
        }
        m.gauge(
            "jumping_worker_sessions",
            "Sessions a worker owns.",
            l(),
            i64::try_from(w.sessions).unwrap_or(i64::MAX),
        );
        sessions += w.sessions;
        for r in DropReason::ALL {
            let mut labels = l();
            labels.push(("reason", r.name().into()));
            m.counter(
                "jumping_worker_drops",
                "Packets a worker dropped, by reason.",
                labels,
                w.drops[r.index()],
            );
        }
    }
    for r in DropReason::ALL {
        m.counter(
            "jumping_dataplane_drops",
            "Packets dropped by all workers, by reason (replay and auth_failed are the replay and authentication drops).",
            vec![("reason", r.name().into())],
            stats.iter().map(|w| w.drops[r.index()]).sum(),
        );
    }
    m.gauge(
        "jumping_dataplane_sessions",
        "Sessions held by all workers.",
        vec![],
        i64::try_from(sessions).unwrap_or(i64::MAX),
    );
    if let Some(x) = xdp {
        for c in Counter::ALL {
            m.counter(
                "jumping_xdp_packets",
                "Packets seen by the XDP program, by outcome (and steering), summed over CPUs.",
                vec![("counter", c.as_str().into())],
                x[c.index() as usize],
            );
        }
    }
    m.render()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn worker(cpu: u32, rx: u64, replay: u64) -> WorkerStats {
        let mut drops = [0u64; DropReason::COUNT];
        drops[DropReason::Replay.index()] = replay;
        WorkerStats {
            cpu,
            rx_datagrams: rx,
            rx_bytes: rx * 100,
            delivered: 0,
            inside_packets: 0,
            sent: 0,
            sent_bytes: 0,
            handed_off: 0,
            taken_over: 0,
            epochs_promoted: 0,
            sessions: 2,
            key_cache_misses: 0,
            events_lost: 0,
            drops,
        }
    }

    #[test]
    fn per_worker_counters_are_labelled_and_drops_summed() {
        let mut xdp = [0u64; Counter::COUNT];
        xdp[Counter::RedirectData.index() as usize] = 9;
        let text = encode(&[worker(2, 10, 1), worker(3, 20, 4)], "af_xdp", Some(&xdp));
        for line in [
            "jumping_worker_rx_packets_total{worker=\"0\",cpu=\"2\"} 10",
            "jumping_worker_rx_packets_total{worker=\"1\",cpu=\"3\"} 20",
            "jumping_worker_drops_total{worker=\"1\",cpu=\"3\",reason=\"replay\"} 4",
            "jumping_dataplane_drops_total{reason=\"replay\"} 5",
            "jumping_dataplane_drops_total{reason=\"auth_failed\"} 0",
            "jumping_dataplane_sessions 4",
            "jumping_xdp_packets_total{counter=\"redirect_data\"} 9",
            "jumping_dataplane_backend{backend=\"af_xdp\"} 1",
        ] {
            assert!(text.lines().any(|l| l == line), "no `{line}` in\n{text}");
        }
        let text = encode(&[worker(0, 1, 0)], "io_uring", None);
        assert!(!text.contains("jumping_xdp_packets"), "{text}");
    }
}
