//! A session as the gateway holds it: state machine, keys, replay windows, the active path,
//! path validation, switch budget and quality signals.
//!
//! Only [`crate::gateway::Gateway`] drives this type; it is public so the control process can
//! read it (`jumpctl session show`) and persist it.

use core::time::Duration;

use crate::keys::KeySet;
use crate::path::Path;
use crate::policy::Policy;
use crate::reattach::control_mac;
use crate::reattach::{PendingValidation, SwitchBudget};
use crate::replay::ReplayWindow;
use crate::state::{Machine, State, Trigger};
use crate::time::Instant;
use crate::wire::SessionId;
use crate::wire::MAC_LEN;

/// Loss and liveness measured on the gateway from authenticated packets.
#[derive(Debug, Clone, Default)]
pub struct Quality {
    pub(crate) window_start: Instant,
    pub(crate) first_counter: Option<u64>,
    pub(crate) received: u64,
    /// Loss fraction measured over the last complete `loss_window`.
    pub last_loss: f64,
    /// RTT last reported by the client in a heartbeat.
    pub last_rtt: Option<Duration>,
    /// Since when every signal has been under its threshold.
    pub healthy_since: Option<Instant>,
}

impl Quality {
    /// Count an authenticated packet with `counter`.
    pub fn on_packet(&mut self, counter: u64) {
        if self.first_counter.is_none() {
            self.first_counter = Some(counter);
        }
        self.received += 1;
    }

    /// Close the loss window if it is over; `top` is the highest counter accepted.
    pub fn roll(&mut self, now: Instant, top: Option<u64>, window: Duration) {
        if now - self.window_start < window {
            return;
        }
        if let (Some(first), Some(top)) = (self.first_counter, top) {
            let expected = top.saturating_sub(first) + 1;
            #[expect(clippy::cast_precision_loss, reason = "a ratio of packet counts")]
            let loss = 1.0 - (self.received.min(expected) as f64 / expected as f64);
            self.last_loss = loss;
        } else {
            self.last_loss = 0.0;
        }
        self.window_start = now;
        self.first_counter = None;
        self.received = 0;
    }
}

/// What a data-plane worker needs to carry a session's packets: its keys, the send counter to
/// continue from, the receive replay window and the active path. Produced by
/// [`GatewaySession::handoff`]; from then on the worker owns the send counter (the gateway
/// object must not seal transport messages for the session, or a counter would repeat under
/// one key: see docs/ARCHITECTURE.md, "Open design constraints").
#[derive(Debug)]
pub struct DataPlaneHandoff {
    /// The session.
    pub id: SessionId,
    /// Every key epoch held (previous in grace, current, next).
    pub keys: KeySet,
    /// Next send counter.
    pub send_counter: u64,
    /// Receive replay window.
    pub recv_window: ReplayWindow,
    /// The active path, if any.
    pub active: Option<Path>,
}

/// The gateway's state of one session.
#[derive(Debug)]
pub struct GatewaySession {
    /// The SessionId; never changes.
    pub id: SessionId,
    pub(crate) machine: Machine,
    /// The client's identity key.
    pub client_public: [u8; 32],
    pub(crate) transcript: [u8; 32],
    /// The reattach proof key ([`crate::reattach::proof_key`]), derived at the first request
    /// that gets as far as the proof check; in memory only.
    pub(crate) proof_key: Option<crate::crypto::SecretKey>,
    pub(crate) keys: KeySet,
    pub(crate) send_counter: u64,
    pub(crate) recv_window: ReplayWindow,
    pub(crate) reattach_window: ReplayWindow<4>,
    /// The one active path, if any.
    pub active: Option<Path>,
    /// Owner core of the session inside this node.
    pub owner: u8,
    /// When the handshake completed.
    pub created: Instant,
    /// When the current state was entered.
    pub entered_state: Instant,
    /// Last authenticated packet on the active path.
    pub last_rx_active: Instant,
    /// When the active path was lost (for `recovery_ms`).
    pub lost_at: Option<Instant>,
    pub(crate) pending: Option<PendingValidation>,
    pub(crate) budget: SwitchBudget,
    pub(crate) reattach_failures: u32,
    /// An operator asked for a rekey; cleared when the rekey handshake completes.
    pub(crate) rekey_requested: bool,
    pub(crate) quality: Quality,
    /// Packets and bytes received and delivered.
    pub rx_packets: u64,
    /// Bytes of inner packets delivered.
    pub rx_bytes: u64,
    /// Packets sent.
    pub tx_packets: u64,
    /// Bytes of inner packets sent.
    pub tx_bytes: u64,
}

impl GatewaySession {
    /// Current state.
    #[must_use]
    pub fn state(&self) -> State {
        self.machine.state()
    }

    /// Current version.
    #[must_use]
    pub fn version(&self) -> u64 {
        self.machine.version()
    }

    /// Current key epoch.
    #[must_use]
    pub fn key_epoch(&self) -> u32 {
        self.keys.current().epoch
    }

    /// Write `epoch` into a control message and MAC it with our control key of that epoch —
    /// the epoch the client's request used, so a client that has already dropped a newer or
    /// older epoch can still verify the answer. Falls back to the current epoch.
    pub(crate) fn seal_control(&self, now: Instant, epoch: u16, msg: &mut [u8]) {
        let k = self
            .keys
            .for_receive(now, epoch)
            .map_or(self.keys.current(), |(_, k)| k);
        msg[2..4].copy_from_slice(&k.wire_epoch().to_be_bytes());
        let n = msg.len() - MAC_LEN;
        let mac = control_mac(k.ctrl_send.expose(), &msg[..n]);
        msg[n..].copy_from_slice(&mac);
    }

    /// The state a data-plane worker needs for this session (keys re-expanded, counters and
    /// window copied).
    #[must_use]
    pub fn handoff(&self) -> DataPlaneHandoff {
        DataPlaneHandoff {
            id: self.id,
            keys: self.keys.duplicate(),
            send_counter: self.send_counter,
            recv_window: self.recv_window.clone(),
            active: self.active,
        }
    }

    /// Accepted switches over the session's life.
    #[must_use]
    pub fn switches_total(&self) -> u64 {
        self.budget.total()
    }

    /// Is the active path healthy (an authenticated packet within `path_dead_after`)?
    #[must_use]
    pub fn active_healthy(&self, now: Instant, policy: &Policy) -> bool {
        self.active.is_some() && now - self.last_rx_active < policy.path_dead_after
    }

    /// Every timer-driven trigger that holds at `now`, for [`crate::state::resolve`].
    pub(crate) fn due_triggers(&mut self, now: Instant, policy: &Policy) -> Vec<Trigger> {
        let mut due = Vec::new();
        let state = self.state();
        if state == State::Terminated {
            return due;
        }
        if now - self.created >= policy.session_max_lifetime {
            due.push(Trigger::SessionLifetimeElapsed);
        }
        if now - self.keys.current().created >= policy.reject_after {
            due.push(Trigger::KeysExpired);
        }
        let in_state = now - self.entered_state;
        match state {
            State::Attached | State::Volatile => {
                if now - self.last_rx_active >= policy.path_dead_after {
                    due.push(Trigger::PathDead);
                }
                self.quality
                    .roll(now, self.recv_window.top(), policy.loss_window);
                let age = now - self.last_rx_active;
                let bad = self.quality.last_loss > policy.volatile_loss
                    || age >= policy.volatile_heartbeat_age
                    || self
                        .quality
                        .last_rtt
                        .is_some_and(|r| r > policy.volatile_rtt);
                if bad {
                    self.quality.healthy_since = None;
                    due.push(Trigger::QualityThresholdCrossed);
                } else {
                    let since = *self.quality.healthy_since.get_or_insert(now);
                    if now - since >= policy.stability_window {
                        due.push(Trigger::StabilityWindowMet);
                    }
                }
            }
            State::Recovering => {
                if in_state >= policy.recovery_window {
                    due.push(Trigger::RecoveryWindowElapsed);
                }
            }
            State::Degraded => {
                if in_state >= policy.degraded_max {
                    due.push(Trigger::DegradedMaxElapsed);
                }
                if in_state >= policy.degraded_cooldown && self.active_healthy(now, policy) {
                    due.push(Trigger::CooldownOverPathHealthy);
                }
            }
            State::Birth | State::Terminated => {}
        }
        due
    }

    /// The earliest instant at which a timer of this session may fire.
    /// With `after`, only deadlines later than it (the timers have just visited the session
    /// at `after` and acted on everything due: a signal already past that did not fire, such
    /// as a cooldown waiting for a healthy path, waits for a change to the session instead).
    #[must_use]
    pub fn next_deadline(&self, policy: &Policy, after: Option<Instant>) -> Option<Instant> {
        let state = self.state();
        if state == State::Terminated {
            return None;
        }
        let mut d = vec![
            self.created + policy.session_max_lifetime,
            self.keys.current().created + policy.reject_after,
        ];
        match state {
            // Only deadlines that a timer can still act on: a signal already acted on (heartbeat
            // age in VOLATILE, stability in ATTACHED) would otherwise stay due forever.
            State::Attached => {
                d.push(self.last_rx_active + policy.path_dead_after);
                d.push(self.last_rx_active + policy.volatile_heartbeat_age);
                d.push(self.quality.window_start + policy.loss_window);
            }
            State::Volatile => {
                d.push(self.last_rx_active + policy.path_dead_after);
                d.push(self.quality.window_start + policy.loss_window);
                if let Some(s) = self.quality.healthy_since {
                    d.push(s + policy.stability_window);
                }
            }
            State::Recovering => d.push(self.entered_state + policy.recovery_window),
            State::Degraded => {
                d.push(self.entered_state + policy.degraded_max);
                // The cooldown ends DEGRADED only with a healthy path: due when it ends, or
                // at the first traffic after it (a change to the session, which the deadline
                // index picks up).
                let cooldown = self.entered_state + policy.degraded_cooldown;
                if self.active.is_some() {
                    d.push(cooldown.max(self.last_rx_active));
                }
            }
            State::Birth | State::Terminated => {}
        }
        if let Some(p) = &self.pending {
            d.push(p.deadline);
        }
        if let Some(p) = self.keys.previous_deadline() {
            d.push(p);
        }
        d.into_iter().filter(|t| after.is_none_or(|a| *t > a)).min()
    }
}
