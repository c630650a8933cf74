//! The control process's Prometheus metrics.
//!
//! The decision thread counts what it decides ([`ControlMetrics::observe`], from the same
//! events it publishes) and, about once a second, hands a copy to the endpoint's thread with
//! a `try_lock` that never waits ([`Published::offer`]): a scrape can never delay a decision.
//! Scrapes read the last copy, so they lag by at most that second.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use jumping_protocol::gateway::{Counters, DropReason};
use jumping_protocol::{Event, RejectCode, State};
use observe::export::Exporter;
use observe::metrics::{LatencyHistogram, MetricSet, REATTACH_BUCKETS, RECOVERY_BUCKETS};

const EXPORT_DROPPED_HELP: &str =
    "Events an export sink dropped (queue full, or lost with a failed write); never blocks a decision.";

/// What the decision thread counts from its own events.
#[derive(Debug, Clone)]
pub struct ControlMetrics {
    state_changes: BTreeMap<(&'static str, &'static str), u64>,
    terminations: BTreeMap<&'static str, u64>,
    security: BTreeMap<&'static str, u64>,
    policy_limits: BTreeMap<&'static str, u64>,
    switches: u64,
    key_rotations: u64,
    keys_expired: u64,
    rekeys_denied: u64,
    invalid_transitions: u64,
    recovery: LatencyHistogram,
    reattach: LatencyHistogram,
}

impl Default for ControlMetrics {
    fn default() -> Self {
        ControlMetrics {
            state_changes: BTreeMap::new(),
            terminations: BTreeMap::new(),
            security: BTreeMap::new(),
            policy_limits: BTreeMap::new(),
            switches: 0,
            key_rotations: 0,
            keys_expired: 0,
            rekeys_denied: 0,
            invalid_transitions: 0,
            recovery: LatencyHistogram::new(RECOVERY_BUCKETS),
            reattach: LatencyHistogram::new(REATTACH_BUCKETS),
        }
    }
}

impl ControlMetrics {
    /// Count one event.
    pub fn observe(&mut self, e: &Event) {
        match e {
            Event::StateChanged { to, reason, .. } => {
                *self
                    .state_changes
                    .entry((to.as_str(), reason.as_str()))
                    .or_default() += 1;
            }
            Event::SessionTerminated { reason, .. } => {
                *self.terminations.entry(reason.as_str()).or_default() += 1;
            }
            Event::PathSwitched {
                recovery_ms,
                reattach_ms,
                ..
            } => {
                self.switches += 1;
                if let Some(ms) = recovery_ms {
                    self.recovery.record(Duration::from_millis(*ms));
                }
                if let Some(ms) = reattach_ms {
                    self.reattach.record(Duration::from_millis(*ms));
                }
            }
            Event::Security { kind, .. } => {
                *self.security.entry(kind.as_str()).or_default() += 1;
            }
            Event::PolicyLimit { limit, .. } => {
                *self.policy_limits.entry(limit).or_default() += 1;
            }
            Event::KeyRotated { .. } => self.key_rotations += 1,
            Event::KeyExpired { .. } => self.keys_expired += 1,
            Event::RekeyDenied { .. } => self.rekeys_denied += 1,
            Event::InvalidTransition { .. } => self.invalid_transitions += 1,
            Event::SessionCreated { .. } | Event::ReattachRejected { .. } => {}
        }
    }
}

/// Control datagrams the daemon drops itself, before the gateway sees them (reported with
/// the gateway's drop reasons in `jumpctl stats` and `jumping_control_drops_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShellDrop {
    /// A handshake initiation while the data plane is not connected (fail closed).
    NoDataplane,
    /// A handshake initiation that waited too long in the control socket.
    StaleInitiation,
}

impl ShellDrop {
    /// Every reason, in declaration order (a reason's counter index is `reason as usize`).
    pub const ALL: [ShellDrop; 2] = [ShellDrop::NoDataplane, ShellDrop::StaleInitiation];

    /// The reason label.
    #[must_use]
    pub const fn name(self) -> &'static str {
        match self {
            ShellDrop::NoDataplane => "no_dataplane",
            ShellDrop::StaleInitiation => "stale_initiation",
        }
    }
}

/// One copy of everything the endpoint shows, taken on the decision thread.
#[derive(Debug, Clone)]
pub struct Snapshot {
    /// Event counts and histograms.
    pub metrics: ControlMetrics,
    /// The gateway's counters.
    pub counters: Counters,
    /// Sessions by state, in [`State::ALL`] order.
    pub sessions: [u64; 6],
    /// The daemon's own drops, by [`ShellDrop`].
    pub shell_drops: [u64; ShellDrop::ALL.len()],
    /// Events dropped for slow `jumpctl events --follow` readers.
    pub follower_drops: u64,
    /// The data plane is connected.
    pub dataplane_connected: bool,
    /// Policy version.
    pub policy_version: u64,
    /// Allowed client keys.
    pub allowed_clients: u64,
}

/// The last snapshot, shared with the endpoint's thread.
#[derive(Debug, Clone, Default)]
pub struct Published(Arc<Mutex<Option<Snapshot>>>);

impl Published {
    /// Store `s` unless a scrape is reading the previous one right now (then the next offer
    /// stores it): the decision thread never waits here.
    pub fn offer(&self, s: Snapshot) {
        if let Ok(mut slot) = self.0.try_lock() {
            *slot = Some(s);
        }
    }

    /// The last snapshot.
    #[must_use]
    pub fn latest(&self) -> Option<Snapshot> {
        self.0.lock().ok().and_then(|s| s.clone())
    }
}

/// The text a scrape returns.
#[must_use]
pub fn render(snapshot: Option<&Snapshot>, export: &Exporter) -> String {
    let mut m = MetricSet::new();
    m.gauge(
        "jumping_build_info",
        "Build of the process answering.",
        vec![
            ("component", "control".into()),
            ("version", env!("CARGO_PKG_VERSION").into()),
        ],
        1,
    );
    for s in export.snapshot() {
        let l = || vec![("sink", s.kind.to_string()), ("target", s.target.clone())];
        m.counter(
            "jumping_export_sent",
            "Events written to an export sink.",
            l(),
            s.sent,
        );
        m.counter(
            "jumping_export_dropped",
            EXPORT_DROPPED_HELP,
            l(),
            s.dropped,
        );
        m.counter(
            "jumping_export_errors",
            "Failed writes, sends or connections of an export sink.",
            l(),
            s.errors,
        );
        m.gauge(
            "jumping_export_connected",
            "The export sink is open (TCP: connected).",
            l(),
            i64::from(s.connected),
        );
    }
    let Some(s) = snapshot else {
        return m.render();
    };
    m.counter(
        "jumping_export_dropped",
        EXPORT_DROPPED_HELP,
        vec![
            ("sink", "jumpctl".into()),
            ("target", "events --follow".into()),
        ],
        s.follower_drops,
    );
    for (state, n) in State::ALL.iter().zip(s.sessions) {
        m.gauge(
            "jumping_sessions",
            "Sessions held, by state.",
            vec![("state", state.as_str().into())],
            i64::try_from(n).unwrap_or(i64::MAX),
        );
    }
    let c = &s.counters;
    m.counter(
        "jumping_handshakes",
        "Handshakes completed (sessions created).",
        vec![],
        c.handshakes,
    );
    m.counter(
        "jumping_cookies_sent",
        "Cookie replies sent (handshake load above cookie_threshold).",
        vec![],
        c.cookies_sent,
    );
    m.counter(
        "jumping_reattaches",
        "Reattaches accepted (path switches bound).",
        vec![],
        c.reattaches,
    );
    for r in RejectCode::ALL {
        m.counter(
            "jumping_reattach_rejects",
            "Reattach requests refused, by reject code.",
            vec![("reason", r.as_str().into())],
            c.rejects[usize::from(r.code() - 1)],
        );
    }
    for (name, n) in DropReason::NAMES.iter().zip(c.drops) {
        m.counter(
            "jumping_control_drops",
            "Control-path messages dropped, by reason.",
            vec![("reason", (*name).into())],
            n,
        );
    }
    for (d, n) in ShellDrop::ALL.iter().zip(s.shell_drops) {
        m.counter(
            "jumping_control_drops",
            "Control-path messages dropped, by reason.",
            vec![("reason", d.name().into())],
            n,
        );
    }
    let e = &s.metrics;
    for ((to, reason), n) in &e.state_changes {
        m.counter(
            "jumping_state_changes",
            "Accepted state transitions, by new state and reason code.",
            vec![("to_state", (*to).into()), ("reason", (*reason).into())],
            *n,
        );
    }
    for (reason, n) in &e.terminations {
        m.counter(
            "jumping_terminations",
            "Sessions ended, by reason code.",
            vec![("reason", (*reason).into())],
            *n,
        );
    }
    for (kind, n) in &e.security {
        m.counter(
            "jumping_security_events",
            "SECURITY_EVENTs, by kind.",
            vec![("kind", (*kind).into())],
            *n,
        );
    }
    for (limit, n) in &e.policy_limits {
        m.counter(
            "jumping_policy_limits",
            "POLICY_LIMIT events, by policy key.",
            vec![("limit", (*limit).into())],
            *n,
        );
    }
    for (name, help, v) in [
        ("jumping_path_switches", "Active-path switches.", e.switches),
        (
            "jumping_key_rotations",
            "Key rotations completed.",
            e.key_rotations,
        ),
        (
            "jumping_keys_expired",
            "Key epochs expired.",
            e.keys_expired,
        ),
        ("jumping_rekeys_denied", "Rekeys refused.", e.rekeys_denied),
        (
            "jumping_invalid_transitions",
            "Triggers the state machine refused (no state changed).",
            e.invalid_transitions,
        ),
    ] {
        m.counter(name, help, vec![], v);
    }
    m.histogram(
        "jumping_recovery_latency_seconds",
        "Path lost to new path active, per switch that followed a loss (ms resolution).",
        vec![],
        &e.recovery,
    );
    m.histogram(
        "jumping_reattach_latency_seconds",
        "Reattach request (or new path seen) to new path bound (ms resolution).",
        vec![],
        &e.reattach,
    );
    m.gauge(
        "jumping_dataplane_connected",
        "The control process is connected to the data plane.",
        vec![],
        i64::from(s.dataplane_connected),
    );
    m.gauge(
        "jumping_policy_version",
        "Version of the policy in force.",
        vec![],
        i64::try_from(s.policy_version).unwrap_or(i64::MAX),
    );
    m.gauge(
        "jumping_allowed_clients",
        "Client keys in the allow-list.",
        vec![],
        i64::try_from(s.allowed_clients).unwrap_or(i64::MAX),
    );
    m.render()
}

#[cfg(test)]
mod tests {
    use super::ShellDrop;

    #[test]
    fn shell_drop_reasons_index_their_counters_in_order() {
        for (i, d) in ShellDrop::ALL.iter().enumerate() {
            assert_eq!(*d as usize, i, "{}", d.name());
        }
    }
}
