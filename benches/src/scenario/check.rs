//! The correctness counters every run must keep at zero, and the pass/fail criteria of a
//! scenario.
//!
//! - **version gaps**: per session, the gateway's SESSION_STATE_CHANGED events must carry
//!   state versions 1, 2, 3… with no gap or repeat;
//! - **silent resets**: a session the client still holds (or that ended at the client) must
//!   either be in the gateway's session list or have a SESSION_TERMINATED event — the gateway
//!   never forgets a session without saying why;
//! - **replays accepted**: probes the load generator sent twice on purpose must come back once
//!   (its count of echoes seen twice);
//! - **dual-active bindings**: the gateway must not send data on a path the session left (the
//!   load generator's count, after a grace for packets in flight).

use std::collections::{HashMap, HashSet};

use serde::Serialize;
use serde_json::Value;

/// The four correctness counters.
#[derive(Debug, Default, Clone, Copy, Serialize, PartialEq, Eq)]
pub struct Correctness {
    /// Data on a path the session had left.
    pub dual_active_bindings: u64,
    /// Sessions gone from the gateway without SESSION_TERMINATED.
    pub silent_resets: u64,
    /// Gaps or repeats in a session's state versions.
    pub version_gaps: u64,
    /// Replayed datagrams that went through.
    pub replays_accepted: u64,
}

impl Correctness {
    /// All zero.
    #[must_use]
    pub fn clean(&self) -> bool {
        *self == Correctness::default()
    }

    /// Add another run's counters.
    pub fn add(&mut self, o: &Correctness) {
        self.dual_active_bindings += o.dual_active_bindings;
        self.silent_resets += o.silent_resets;
        self.version_gaps += o.version_gaps;
        self.replays_accepted += o.replays_accepted;
    }
}

/// Version gaps in the gateway's events.
#[must_use]
pub fn version_gaps(events: &[Value]) -> u64 {
    let mut latest: HashMap<&str, u64> = HashMap::new();
    let mut gaps = 0;
    for e in events {
        if e["event"] != "SESSION_STATE_CHANGED" {
            continue;
        }
        let (Some(sid), Some(v)) = (e["session_id"].as_str(), e["state_version"].as_u64()) else {
            gaps += 1;
            continue;
        };
        let cur = latest.entry(sid).or_insert(0);
        if v != *cur + 1 {
            gaps += 1;
        }
        *cur = v;
    }
    gaps
}

/// Silent resets: sessions of the load generators' reports (`session_list`: id and how it
/// ended at the client) that the gateway neither lists nor reported terminated.
#[must_use]
pub fn silent_resets(reports: &[&Value], gateway_sessions: &[Value], events: &[Value]) -> u64 {
    let listed: HashSet<&str> = gateway_sessions
        .iter()
        .filter_map(|s| s["id"].as_str())
        .collect();
    let terminated: HashSet<&str> = events
        .iter()
        .filter(|e| e["event"] == "SESSION_TERMINATED")
        .filter_map(|e| e["session_id"].as_str())
        .collect();
    let mut n = 0;
    for r in reports {
        for s in r["session_list"].as_array().into_iter().flatten() {
            let Some(id) = s[0].as_str() else { continue };
            if !listed.contains(id) && !terminated.contains(id) {
                n += 1;
            }
        }
    }
    n
}

/// The counters of a run from its load generator reports, the gateway's session list and its
/// events.
#[must_use]
pub fn correctness(
    reports: &[&Value],
    gateway_sessions: &[Value],
    events: &[Value],
) -> Correctness {
    let sum = |k: &str| -> u64 {
        reports
            .iter()
            .map(|r| r["correctness"][k].as_u64().unwrap_or(0))
            .sum()
    };
    Correctness {
        dual_active_bindings: sum("dual_active"),
        silent_resets: silent_resets(reports, gateway_sessions, events),
        version_gaps: version_gaps(events),
        replays_accepted: sum("replays_accepted"),
    }
}

/// One pass/fail criterion.
#[derive(Debug, Clone, Serialize)]
pub struct Criterion {
    /// What is checked.
    pub what: String,
    /// The requirement, in words ("≤ 2000 ms").
    pub required: String,
    /// What was measured.
    pub measured: String,
    /// Whether it held.
    pub ok: bool,
}

/// Criteria of a run, built up by [`Criteria::check`].
#[derive(Debug, Default, Clone, Serialize)]
pub struct Criteria(pub Vec<Criterion>);

impl Criteria {
    /// Record `what`: `measured` against `required`, holding if `ok`.
    pub fn check(&mut self, what: &str, required: &str, measured: impl ToString, ok: bool) {
        self.0.push(Criterion {
            what: what.into(),
            required: required.into(),
            measured: measured.to_string(),
            ok,
        });
    }

    /// Whether every criterion held.
    #[must_use]
    pub fn all_ok(&self) -> bool {
        self.0.iter().all(|c| c.ok)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn change(sid: &str, v: u64) -> Value {
        json!({"event": "SESSION_STATE_CHANGED", "session_id": sid, "state_version": v})
    }

    #[test]
    fn gaps_and_repeats_are_counted() {
        let ok = [
            change("a", 1),
            change("b", 1),
            change("a", 2),
            change("b", 2),
        ];
        assert_eq!(version_gaps(&ok), 0);
        let bad = [
            change("a", 1),
            change("a", 3),
            change("b", 1),
            change("b", 1),
        ];
        assert_eq!(version_gaps(&bad), 2);
        let other = [json!({"event": "PATH_SWITCHED", "session_id": "a", "state_version": 9})];
        assert_eq!(version_gaps(&other), 0);
    }

    #[test]
    fn a_session_gone_without_a_word_is_a_silent_reset() {
        let report = json!({"session_list": [["a", null], ["b", "PEER_TERMINATED"], ["c", null]],
                            "correctness": {"dual_active": 1, "replays_accepted": 0}});
        let listed = [json!({"id": "a"})];
        let events = [json!({"event": "SESSION_TERMINATED", "session_id": "b"})];
        assert_eq!(silent_resets(&[&report], &listed, &events), 1);
        let c = correctness(&[&report], &listed, &events);
        assert_eq!(c.dual_active_bindings, 1);
        assert_eq!(c.silent_resets, 1);
        assert!(!c.clean());
    }

    #[test]
    fn criteria_hold_only_together() {
        let mut c = Criteria::default();
        c.check("x", "= 0", 0, true);
        assert!(c.all_ok());
        c.check("y", "≤ 1", 2, false);
        assert!(!c.all_ok());
    }
}
