//! `jumpctl top`: a live view of sessions and per-worker rates.
//!
//! It takes samples with the existing `sessions` and `stats` requests and turns the difference
//! between two samples into per-second rates. The rate computation is pure (this module does
//! no I/O) so its corner cases are unit-tested:
//!
//! - a counter that went backwards (the data plane or the control process restarted and its
//!   counters started again from 0) gives a rate of 0, never a huge number;
//! - a session that appeared between two samples counts from 0 if it is younger than the
//!   interval (all its packets arrived in it), otherwise it has no rate (`-`);
//! - a worker that appeared has no rate (no baseline); one that disappeared is listed as gone.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

use jumping_control_api::{SessionInfo, StatsInfo, WorkerInfo};
use serde_json::{json, Map, Value};

use crate::{duration_ms, table};

/// Shortest accepted `--interval`.
pub const MIN_INTERVAL: Duration = Duration::from_millis(100);
/// Longest accepted `--interval`.
pub const MAX_INTERVAL: Duration = Duration::from_secs(3600);

/// Parses `--interval`: a duration as the configuration writes them
/// ([`jumping_protocol::policy::parse_duration`]: `500ms`, `2s`, `1m`), between
/// [`MIN_INTERVAL`] and [`MAX_INTERVAL`].
///
/// # Errors
/// A message saying what is expected (clap prints it and exits 2).
pub fn parse_interval(text: &str) -> Result<Duration, String> {
    const EXPECTED: &str = "expected a whole number with a unit, ms, s or m (e.g. 500ms, 2s, 1m), \
                            from 100ms to 1h";
    let t = text.trim();
    if !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!(
            "{text:?} has no unit (did you mean {t}s?); {EXPECTED}"
        ));
    }
    let d = jumping_protocol::policy::parse_duration(t).map_err(|e| format!("{e}; {EXPECTED}"))?;
    if d < MIN_INTERVAL || d > MAX_INTERVAL {
        return Err(format!("{text:?} is out of range; {EXPECTED}"));
    }
    Ok(d)
}

/// One sample: what `sessions` and `stats` answered, taken together.
#[derive(Debug, Clone, Default)]
pub struct Sample {
    /// The `sessions` answer.
    pub sessions: Vec<SessionInfo>,
    /// The `stats` answer.
    pub stats: StatsInfo,
}

/// How much a counter grew, or `None` if it went backwards (its process restarted).
#[must_use]
pub fn delta(prev: u64, cur: u64) -> Option<u64> {
    cur.checked_sub(prev)
}

/// Per-second rate of a counter between two samples `secs` apart: 0 if it went backwards
/// (a restart reset it) or if `secs` is not positive.
#[must_use]
#[allow(clippy::cast_precision_loss)] // rates are for display; 2^53 packets is far away
pub fn per_sec(prev: u64, cur: u64, secs: f64) -> f64 {
    if secs <= 0.0 || !secs.is_finite() {
        return 0.0;
    }
    delta(prev, cur).map_or(0.0, |d| d as f64 / secs)
}

/// One line of the sessions table.
#[derive(Debug, Clone, PartialEq)]
pub struct SessionRow {
    /// The session as last sampled.
    pub info: SessionInfo,
    /// Packets received per second; `None` without a baseline.
    pub rx_pps: Option<f64>,
    /// Packets sent per second; `None` without a baseline.
    pub tx_pps: Option<f64>,
    /// The session was not in the previous sample.
    pub new: bool,
}

/// Rows for every session of `cur`, busiest first (rx + tx packets/s, then id).
#[must_use]
pub fn session_rows(prev: &[SessionInfo], cur: &[SessionInfo], secs: f64) -> Vec<SessionRow> {
    let before: BTreeMap<&str, &SessionInfo> = prev.iter().map(|s| (s.id.as_str(), s)).collect();
    let mut rows: Vec<SessionRow> = cur
        .iter()
        .map(|s| match before.get(s.id.as_str()) {
            Some(p) => SessionRow {
                info: s.clone(),
                rx_pps: Some(per_sec(p.rx_packets, s.rx_packets, secs)),
                tx_pps: Some(per_sec(p.tx_packets, s.tx_packets, secs)),
                new: false,
            },
            None => {
                // Created since the previous sample: its counters started at 0 inside the
                // interval. An older session we had not seen has no baseline.
                #[allow(clippy::cast_precision_loss)]
                let young = (s.age_ms as f64) <= secs * 1000.0 + 1000.0;
                SessionRow {
                    info: s.clone(),
                    rx_pps: young.then(|| per_sec(0, s.rx_packets, secs)),
                    tx_pps: young.then(|| per_sec(0, s.tx_packets, secs)),
                    new: true,
                }
            }
        })
        .collect();
    let load = |r: &SessionRow| r.rx_pps.unwrap_or(0.0) + r.tx_pps.unwrap_or(0.0);
    rows.sort_by(|a, b| {
        load(b)
            .total_cmp(&load(a))
            .then_with(|| a.info.id.cmp(&b.info.id))
    });
    rows
}

/// Rates of one worker.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct WorkerRates {
    /// Tunnel datagrams received per second.
    pub rx_pps: f64,
    /// Tunnel megabits received per second.
    pub rx_mbps: f64,
    /// Inner packets delivered inside per second.
    pub delivered_ps: f64,
    /// Datagrams sent toward clients per second.
    pub tx_pps: f64,
    /// Tunnel megabits sent per second.
    pub tx_mbps: f64,
    /// Drops per second, by reason (every reason of the current sample).
    pub drops_ps: BTreeMap<String, f64>,
}

/// One line of the workers table.
#[derive(Debug, Clone, PartialEq)]
pub struct WorkerRow {
    /// The worker's index (its position in `stats`; the OWNER column of sessions).
    pub index: usize,
    /// Its CPU.
    pub cpu: u32,
    /// Sessions it owns.
    pub sessions: u64,
    /// Its rates; `None` if it was not in the previous sample (no baseline).
    pub rates: Option<WorkerRates>,
}

/// A worker of the previous sample that the current one does not have.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GoneWorker {
    /// Its index.
    pub index: usize,
    /// Its CPU.
    pub cpu: u32,
}

/// Megabits per second from two byte counters.
#[must_use]
pub fn mbit_per_sec(prev: u64, cur: u64, secs: f64) -> f64 {
    per_sec(prev, cur, secs) * 8.0 / 1e6
}

/// Rates of the workers of `cur` against `prev`. A worker is the same if it has the same index
/// and CPU; otherwise it is new (no rates) and the old one is gone.
#[must_use]
pub fn worker_rows(
    prev: &[WorkerInfo],
    cur: &[WorkerInfo],
    secs: f64,
) -> (Vec<WorkerRow>, Vec<GoneWorker>) {
    let same = |i: usize, w: &WorkerInfo| prev.get(i).filter(|p| p.cpu == w.cpu);
    let rows = cur
        .iter()
        .enumerate()
        .map(|(i, w)| WorkerRow {
            index: i,
            cpu: w.cpu,
            sessions: w.sessions,
            rates: same(i, w).map(|p| WorkerRates {
                rx_pps: per_sec(p.rx_datagrams, w.rx_datagrams, secs),
                rx_mbps: mbit_per_sec(p.rx_bytes, w.rx_bytes, secs),
                delivered_ps: per_sec(p.delivered, w.delivered, secs),
                tx_pps: per_sec(p.sent, w.sent, secs),
                tx_mbps: mbit_per_sec(p.sent_bytes, w.sent_bytes, secs),
                drops_ps: w
                    .drops
                    .iter()
                    .map(|(reason, &n)| {
                        let before = p.drops.get(reason).copied().unwrap_or(0);
                        (reason.clone(), per_sec(before, n, secs))
                    })
                    .collect(),
            }),
        })
        .collect();
    let gone = prev
        .iter()
        .enumerate()
        .filter(|(i, p)| cur.get(*i).is_none_or(|w| w.cpu != p.cpu))
        .map(|(index, p)| GoneWorker { index, cpu: p.cpu })
        .collect();
    (rows, gone)
}

/// A control counter that changed between two samples.
#[derive(Debug, Clone, PartialEq)]
pub struct CounterChange {
    /// `handshakes`, `drops.replay`, `rejects.BAD_PROOF`, ...
    pub name: String,
    /// Previous value.
    pub prev: u64,
    /// Current value.
    pub cur: u64,
    /// Per second (0 if it went backwards).
    pub per_sec: f64,
    /// It went backwards: the control process (or data plane) restarted.
    pub reset: bool,
}

/// The control counters that changed, in a stable order.
#[must_use]
pub fn control_changes(prev: &StatsInfo, cur: &StatsInfo, secs: f64) -> Vec<CounterChange> {
    let flat = |s: &StatsInfo| {
        let c = &s.control;
        let mut m: BTreeMap<String, u64> = BTreeMap::new();
        m.insert("handshakes".into(), c.handshakes);
        m.insert("reattaches".into(), c.reattaches);
        m.insert("cookies_sent".into(), c.cookies_sent);
        m.insert("events_dropped".into(), c.events_dropped);
        m.insert("dataplane_events_lost".into(), s.dataplane_events_lost);
        for (k, v) in &c.drops {
            m.insert(format!("drops.{k}"), *v);
        }
        for (k, v) in &c.rejects {
            m.insert(format!("rejects.{k}"), *v);
        }
        m
    };
    let (before, now) = (flat(prev), flat(cur));
    // The server lists only non-zero drops and rejects: a missing key is 0.
    let names: std::collections::BTreeSet<&String> = before.keys().chain(now.keys()).collect();
    names
        .into_iter()
        .filter_map(|name| {
            let p = before.get(name).copied().unwrap_or(0);
            let c = now.get(name).copied().unwrap_or(0);
            (p != c).then(|| CounterChange {
                name: name.clone(),
                prev: p,
                cur: c,
                per_sec: per_sec(p, c, secs),
                reset: c < p,
            })
        })
        .collect()
}

/// Everything one frame shows.
#[derive(Debug, Clone, PartialEq)]
pub struct Frame {
    /// Seconds between the two samples.
    pub secs: f64,
    /// Sessions in the current sample.
    pub sessions_total: usize,
    /// Sessions by state.
    pub sessions_by_state: BTreeMap<String, u64>,
    /// Session rows, busiest first, at most `limit` of them.
    pub sessions: Vec<SessionRow>,
    /// Workers of the current sample.
    pub workers: Vec<WorkerRow>,
    /// Workers of the previous sample no longer there.
    pub workers_gone: Vec<GoneWorker>,
    /// Control counters that changed.
    pub control: Vec<CounterChange>,
}

/// The frame for two samples `secs` apart; `limit` bounds the session rows (0: all).
#[must_use]
pub fn frame(prev: &Sample, cur: &Sample, secs: f64, limit: usize) -> Frame {
    let mut sessions = session_rows(&prev.sessions, &cur.sessions, secs);
    if limit > 0 {
        sessions.truncate(limit);
    }
    let mut by_state = BTreeMap::new();
    for s in &cur.sessions {
        *by_state.entry(s.state.clone()).or_insert(0u64) += 1;
    }
    let (workers, workers_gone) = worker_rows(&prev.stats.workers, &cur.stats.workers, secs);
    Frame {
        secs,
        sessions_total: cur.sessions.len(),
        sessions_by_state: by_state,
        sessions,
        workers,
        workers_gone,
        control: control_changes(&prev.stats, &cur.stats, secs),
    }
}

/// A rate for the tables: `-` if unknown, one decimal below 1000, then k/M/G.
#[must_use]
pub fn fmt_rate(r: Option<f64>) -> String {
    match r {
        None => "-".into(),
        Some(r) if r < 1e3 => format!("{r:.1}"),
        Some(r) if r < 1e6 => format!("{:.1}k", r / 1e3),
        Some(r) if r < 1e9 => format!("{:.2}M", r / 1e6),
        Some(r) => format!("{:.2}G", r / 1e9),
    }
}

fn counts(map: &BTreeMap<String, u64>) -> String {
    map.iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// The frame as text: a header line, then the sessions, workers and control tables.
#[must_use]
pub fn render_text(f: &Frame) -> String {
    let mut out = format!(
        "jumpctl top  interval {:.2}s  sessions {}{}  workers {}\n",
        f.secs,
        f.sessions_total,
        if f.sessions_by_state.is_empty() {
            String::new()
        } else {
            format!(" ({})", counts(&f.sessions_by_state))
        },
        f.workers.len(),
    );

    out.push_str("\nSESSIONS");
    if f.sessions.len() < f.sessions_total {
        let _ = write!(
            out,
            " (busiest {} of {}; --limit N to change)",
            f.sessions.len(),
            f.sessions_total
        );
    }
    out.push('\n');
    let rows: Vec<Vec<String>> = f
        .sessions
        .iter()
        .map(|r| {
            let s = &r.info;
            vec![
                if r.new {
                    format!("{}*", s.id)
                } else {
                    s.id.clone()
                },
                s.state.clone(),
                s.version.to_string(),
                s.active_path.clone().unwrap_or_else(|| "-".into()),
                s.owner.to_string(),
                duration_ms(s.age_ms),
                s.switches.to_string(),
                s.rx_packets.to_string(),
                fmt_rate(r.rx_pps),
                s.tx_packets.to_string(),
                fmt_rate(r.tx_pps),
            ]
        })
        .collect();
    out.push_str(&table(
        &[
            "ID", "STATE", "VER", "PATH", "OWNER", "AGE", "SWITCHES", "RX_PKTS", "RX/S", "TX_PKTS",
            "TX/S",
        ],
        &rows,
    ));
    if f.sessions.iter().any(|r| r.new) {
        out.push_str("(* new since the previous sample)\n");
    }

    out.push_str("\nWORKERS\n");
    let rows: Vec<Vec<String>> = f
        .workers
        .iter()
        .map(|w| {
            let r = w.rates.as_ref();
            let drops = r.map_or_else(
                || "-".to_owned(),
                |r| {
                    let d: Vec<String> = r
                        .drops_ps
                        .iter()
                        .filter(|(_, v)| **v > 0.0)
                        .map(|(k, v)| format!("{k}={}", fmt_rate(Some(*v))))
                        .collect();
                    if d.is_empty() {
                        "0".into()
                    } else {
                        d.join(" ")
                    }
                },
            );
            vec![
                w.index.to_string(),
                w.cpu.to_string(),
                w.sessions.to_string(),
                fmt_rate(r.map(|r| r.rx_pps)),
                r.map_or_else(|| "-".into(), |r| format!("{:.2}", r.rx_mbps)),
                fmt_rate(r.map(|r| r.delivered_ps)),
                fmt_rate(r.map(|r| r.tx_pps)),
                r.map_or_else(|| "-".into(), |r| format!("{:.2}", r.tx_mbps)),
                drops,
            ]
        })
        .collect();
    out.push_str(&table(
        &[
            "WORKER",
            "CPU",
            "SESSIONS",
            "RX/S",
            "RX_MBIT/S",
            "DELIVERED/S",
            "TX/S",
            "TX_MBIT/S",
            "DROPS/S",
        ],
        &rows,
    ));
    if f.workers.is_empty() {
        out.push_str("(no workers: is the data plane connected? see `jumpctl status`)\n");
    }
    for g in &f.workers_gone {
        let _ = writeln!(
            out,
            "worker {} (cpu {}) is gone since the previous sample",
            g.index, g.cpu
        );
    }

    out.push_str("\nCONTROL (changed)\n");
    if f.control.is_empty() {
        out.push_str("no counter changed\n");
    } else {
        let rows: Vec<Vec<String>> = f
            .control
            .iter()
            .map(|c| {
                vec![
                    c.name.clone(),
                    c.cur.to_string(),
                    if c.reset {
                        "reset".into()
                    } else {
                        format!("+{}", c.cur - c.prev)
                    },
                    fmt_rate(Some(c.per_sec)),
                ]
            })
            .collect();
        out.push_str(&table(&["COUNTER", "VALUE", "DELTA", "/S"], &rows));
    }
    out
}

fn round2(x: f64) -> Value {
    json!((x * 100.0).round() / 100.0)
}

fn opt(x: Option<f64>) -> Value {
    x.map_or(Value::Null, round2)
}

/// The frame as one JSON object with the same numbers (rates rounded to 2 decimals; `null`
/// where the text shows `-`).
#[must_use]
pub fn to_json(f: &Frame) -> Value {
    let sessions: Vec<Value> = f
        .sessions
        .iter()
        .map(|r| {
            let s = &r.info;
            json!({
                "id": s.id,
                "state": s.state,
                "version": s.version,
                "active_path": s.active_path,
                "owner": s.owner,
                "age_ms": s.age_ms,
                "switches": s.switches,
                "rx_packets": s.rx_packets,
                "tx_packets": s.tx_packets,
                "rx_packets_per_s": opt(r.rx_pps),
                "tx_packets_per_s": opt(r.tx_pps),
                "new": r.new,
            })
        })
        .collect();
    let workers: Vec<Value> = f
        .workers
        .iter()
        .map(|w| {
            let r = w.rates.as_ref();
            json!({
                "worker": w.index,
                "cpu": w.cpu,
                "sessions": w.sessions,
                "rx_packets_per_s": opt(r.map(|r| r.rx_pps)),
                "rx_mbit_per_s": opt(r.map(|r| r.rx_mbps)),
                "delivered_per_s": opt(r.map(|r| r.delivered_ps)),
                "tx_packets_per_s": opt(r.map(|r| r.tx_pps)),
                "tx_mbit_per_s": opt(r.map(|r| r.tx_mbps)),
                "drops_per_s": r.map_or(Value::Null, |r| {
                    Value::Object(
                        r.drops_ps
                            .iter()
                            .map(|(k, v)| (k.clone(), round2(*v)))
                            .collect::<Map<String, Value>>(),
                    )
                }),
            })
        })
        .collect();
    let gone: Vec<Value> = f
        .workers_gone
        .iter()
        .map(|g| json!({"worker": g.index, "cpu": g.cpu}))
        .collect();
    let control: Vec<Value> = f
        .control
        .iter()
        .map(|c| {
            json!({
                "counter": c.name,
                "previous": c.prev,
                "current": c.cur,
                "per_s": round2(c.per_sec),
                "reset": c.reset,
            })
        })
        .collect();
    json!({
        "interval_s": (f.secs * 1e6).round() / 1e6,
        "sessions_total": f.sessions_total,
        "sessions_by_state": f.sessions_by_state,
        "sessions": sessions,
        "workers": workers,
        "workers_gone": gone,
        "control_changed": control,
    })
}

/// ANSI: home the cursor and clear the screen (redraw in place on a terminal).
pub const CLEAR: &str = "\x1b[H\x1b[2J";

#[cfg(test)]
mod tests {
    use super::*;

    fn session(id: &str, rx: u64, tx: u64, age_ms: u64) -> SessionInfo {
        SessionInfo {
            id: id.into(),
            state: "ATTACHED".into(),
            version: 1,
            active_path: Some("udp:10.0.0.2:40000".into()),
            owner: 0,
            age_ms,
            switches: 0,
            key_epoch: 0,
            client_key_id: "00".into(),
            inner: "10.99.0.2".into(),
            rx_packets: rx,
            rx_bytes: rx * 100,
            tx_packets: tx,
            tx_bytes: tx * 100,
            last_rx_ms: Some(0),
        }
    }

    fn worker(cpu: u32, rx: u64, rx_bytes: u64, replay: u64) -> WorkerInfo {
        WorkerInfo {
            cpu,
            rx_datagrams: rx,
            rx_bytes,
            delivered: rx,
            sent: rx / 2,
            sessions: 3,
            drops: [("replay".to_string(), replay), ("auth_failed".into(), 0)]
                .into_iter()
                .collect(),
            ..WorkerInfo::default()
        }
    }

    #[test]
    fn rate_is_the_difference_over_the_interval() {
        assert!((per_sec(100, 300, 2.0) - 100.0).abs() < 1e-9);
        assert!((per_sec(5, 5, 1.0)).abs() < 1e-9);
        assert!((mbit_per_sec(0, 125_000_000, 1.0) - 1000.0).abs() < 1e-9);
    }

    #[test]
    fn counter_that_went_backwards_gives_zero_not_a_huge_rate() {
        // The data plane restarted: its counters start again from 0.
        assert_eq!(per_sec(1_000_000, 10, 1.0), 0.0);
        assert_eq!(delta(1_000_000, 10), None);
        let (rows, gone) = worker_rows(
            &[worker(2, 1_000_000, 9_000_000, 50)],
            &[worker(2, 10, 1000, 0)],
            1.0,
        );
        assert!(gone.is_empty());
        let r = rows[0].rates.as_ref().expect("same worker");
        assert_eq!(r.rx_pps, 0.0);
        assert_eq!(r.rx_mbps, 0.0);
        assert_eq!(r.drops_ps["replay"], 0.0);
    }

    #[test]
    fn zero_or_bad_interval_gives_zero() {
        assert_eq!(per_sec(0, 100, 0.0), 0.0);
        assert_eq!(per_sec(0, 100, -1.0), 0.0);
        assert_eq!(per_sec(0, 100, f64::NAN), 0.0);
    }

    #[test]
    fn session_that_appeared_between_samples() {
        let prev = vec![session("00000000000000aa", 100, 100, 60_000)];
        let cur = vec![
            session("00000000000000aa", 110, 120, 61_000),
            // Created 400 ms ago: every packet of it is inside the interval.
            session("00000000000000bb", 50, 30, 400),
            // Older than the interval but not seen before: no baseline.
            session("00000000000000cc", 5000, 5000, 3_600_000),
        ];
        let rows = session_rows(&prev, &cur, 1.0);
        let by_id = |id: &str| {
            rows.iter()
                .find(|r| r.info.id == id)
                .expect("row for every current session")
        };
        let a = by_id("00000000000000aa");
        assert!(!a.new);
        assert_eq!(a.rx_pps, Some(10.0));
        assert_eq!(a.tx_pps, Some(20.0));
        let b = by_id("00000000000000bb");
        assert!(b.new);
        assert_eq!(b.rx_pps, Some(50.0));
        assert_eq!(b.tx_pps, Some(30.0));
        let c = by_id("00000000000000cc");
        assert!(c.new);
        assert_eq!(c.rx_pps, None);
        // Busiest first; unknown rates last.
        let order: Vec<&str> = rows.iter().map(|r| r.info.id.as_str()).collect();
        assert_eq!(
            order,
            ["00000000000000bb", "00000000000000aa", "00000000000000cc"]
        );
    }

    #[test]
    fn session_that_disappeared_is_not_listed() {
        let prev = vec![session("00000000000000aa", 1, 1, 1000)];
        assert!(session_rows(&prev, &[], 1.0).is_empty());
    }

    #[test]
    fn worker_missing_or_new() {
        let prev = vec![worker(0, 100, 1000, 0), worker(1, 100, 1000, 0)];
        // Worker 1 is gone; a worker at index 2 is new.
        let cur = vec![worker(0, 300, 126_000, 4), worker(5, 999, 999, 9)];
        let (rows, gone) = worker_rows(&prev, &cur, 2.0);
        assert_eq!(rows.len(), 2);
        let r0 = rows[0].rates.as_ref().expect("worker 0 has a baseline");
        assert_eq!(r0.rx_pps, 100.0);
        assert!((r0.rx_mbps - 0.5).abs() < 1e-9); // 125000 B in 2 s = 0.5 Mbit/s
        assert_eq!(r0.drops_ps["replay"], 2.0);
        assert_eq!(r0.drops_ps["auth_failed"], 0.0);
        // Index 1 now has another CPU: a different worker, no rates.
        assert_eq!(rows[1].rates, None);
        assert_eq!(gone, vec![GoneWorker { index: 1, cpu: 1 }]);

        // The data plane went away: every worker is gone, nothing to rate.
        let (rows, gone) = worker_rows(&prev, &[], 1.0);
        assert!(rows.is_empty());
        assert_eq!(gone.len(), 2);
    }

    #[test]
    fn control_changes_lists_only_what_changed() {
        let mut prev = StatsInfo::default();
        prev.control.handshakes = 10;
        prev.control.reattaches = 4;
        prev.control.rejects.insert("BAD_PROOF".into(), 1);
        let mut cur = prev.clone();
        cur.control.handshakes = 15;
        cur.control.drops.insert("replay".into(), 3); // absent before = 0
        let ch = control_changes(&prev, &cur, 1.0);
        let names: Vec<&str> = ch.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, ["drops.replay", "handshakes"]);
        assert_eq!(ch[1].per_sec, 5.0);
        assert!(!ch[1].reset);

        // The control process restarted: counters went backwards.
        let mut restarted = StatsInfo::default();
        restarted.control.handshakes = 1;
        let ch = control_changes(&cur, &restarted, 1.0);
        let hs = ch.iter().find(|c| c.name == "handshakes").expect("changed");
        assert!(hs.reset);
        assert_eq!(hs.per_sec, 0.0);
    }

    #[test]
    fn frame_text_and_json_agree() {
        let prev = Sample {
            sessions: vec![session("00000000000000aa", 100, 100, 60_000)],
            stats: StatsInfo {
                workers: vec![worker(0, 1000, 0, 0)],
                ..StatsInfo::default()
            },
        };
        let mut cur = prev.clone();
        cur.sessions[0].rx_packets = 300;
        cur.stats.workers[0] = worker(0, 3000, 250_000_000, 7);
        cur.stats.control.handshakes = 2;
        let f = frame(&prev, &cur, 2.0, 20);
        let text = render_text(&f);
        assert!(text.contains("sessions 1 (ATTACHED=1)"), "{text}");
        assert!(text.contains("100.0"), "{text}"); // session rx/s
        assert!(text.contains("1000.00"), "{text}"); // 250 MB in 2 s = 1000 Mbit/s
        assert!(text.contains("replay=3.5"), "{text}");
        assert!(text.contains("handshakes"), "{text}");
        let j = to_json(&f);
        assert_eq!(j["sessions"][0]["rx_packets_per_s"], 100.0);
        assert_eq!(j["workers"][0]["rx_packets_per_s"], 1000.0);
        assert_eq!(j["workers"][0]["rx_mbit_per_s"], 1000.0);
        assert_eq!(j["workers"][0]["drops_per_s"]["replay"], 3.5);
        assert_eq!(j["control_changed"][0]["counter"], "handshakes");
        assert_eq!(j["control_changed"][0]["per_s"], 1.0);
        assert_eq!(j["sessions_by_state"]["ATTACHED"], 1);
    }

    #[test]
    fn limit_keeps_the_busiest() {
        let prev = Sample::default();
        let cur = Sample {
            sessions: (0..30)
                .map(|i| session(&format!("{i:016x}"), i, 0, 10))
                .collect(),
            stats: StatsInfo::default(),
        };
        let f = frame(&prev, &cur, 1.0, 5);
        assert_eq!(f.sessions.len(), 5);
        assert_eq!(f.sessions_total, 30);
        assert_eq!(f.sessions[0].info.rx_packets, 29);
        assert!(render_text(&f).contains("busiest 5 of 30"));
        assert_eq!(frame(&prev, &cur, 1.0, 0).sessions.len(), 30);
    }

    #[test]
    fn intervals() {
        assert_eq!(parse_interval("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_interval("2s"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_interval("1m"), Ok(Duration::from_secs(60)));
        for bad in [
            "",
            "2",
            "fast",
            "-1s",
            "1.5s",
            "10ms",
            "2h",
            "5 parsecs",
            "99999999999999999999s",
        ] {
            let e = parse_interval(bad).expect_err(bad);
            assert!(e.contains("e.g. 500ms"), "{bad}: {e}");
        }
        assert!(parse_interval("2").unwrap_err().contains("did you mean 2s"));
    }

    #[test]
    fn rates_format() {
        assert_eq!(fmt_rate(None), "-");
        assert_eq!(fmt_rate(Some(0.0)), "0.0");
        assert_eq!(fmt_rate(Some(12_345.0)), "12.3k");
        assert_eq!(fmt_rate(Some(2_500_000.0)), "2.50M");
    }
}
