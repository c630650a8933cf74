//! The session state machine of SPEC.md sections 2–3, as a pure function.
//!
//! [`transition`] is the whole table: given a state and a [`Trigger`] it returns the next state
//! and the reason code, or [`InvalidTransition`] for any pair the table does not list.
//! [`Machine`] adds the version rule: the version starts at 0 in BIRTH and grows by exactly one
//! per accepted transition; a rejected trigger changes nothing. [`resolve`] picks among
//! coinciding triggers by the SPEC.md tie-break order. Everything here is deterministic.

use core::fmt;

/// Session states.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum State {
    /// Handshake in progress; version 0.
    Birth,
    /// Healthy; one active path.
    Attached,
    /// Still delivering, but a quality signal crossed its threshold.
    Volatile,
    /// The active path was declared dead; waiting for a reattach.
    Recovering,
    /// Damping: no switch before the cooldown ends.
    Degraded,
    /// Absorbing.
    Terminated,
}

impl State {
    /// All states, in table order.
    pub const ALL: [State; 6] = [
        State::Birth,
        State::Attached,
        State::Volatile,
        State::Recovering,
        State::Degraded,
        State::Terminated,
    ];

    /// Name as in SPEC.md and in events.
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            State::Birth => "BIRTH",
            State::Attached => "ATTACHED",
            State::Volatile => "VOLATILE",
            State::Recovering => "RECOVERING",
            State::Degraded => "DEGRADED",
            State::Terminated => "TERMINATED",
        }
    }
}

impl fmt::Display for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What happened: the inputs of the state machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Trigger {
    /// Handshake completed.
    HandshakeCompleted,
    /// Handshake failed or timed out.
    HandshakeFailed,
    /// A quality signal crossed its threshold.
    QualityThresholdCrossed,
    /// All signals under threshold for the stability window.
    StabilityWindowMet,
    /// No authenticated packet on the active path for `path_dead_after`.
    PathDead,
    /// A reattach passed every check (after the cooldown, in DEGRADED).
    ReattachAccepted,
    /// The switch budget would be exceeded.
    SwitchBudgetExceeded,
    /// `max_reattach_failures` valid-but-denied attempts in RECOVERING.
    ReattachFailuresExceeded,
    /// DEGRADED cooldown over and the active path healthy.
    CooldownOverPathHealthy,
    /// RECOVERING lasted `recovery_window`.
    RecoveryWindowElapsed,
    /// DEGRADED lasted `degraded_max`.
    DegradedMaxElapsed,
    /// `session_max_lifetime` elapsed.
    SessionLifetimeElapsed,
    /// Keys past `reject_after` with no completed rekey.
    KeysExpired,
    /// Two owners or two active paths detected.
    OwnershipConflict,
    /// The client key was revoked.
    Revoked,
    /// An operator ended the session.
    OperatorTerminated,
    /// The client sent TERMINATE.
    PeerTerminated,
    /// The version cannot grow further without overflow.
    VersionExhausted,
    /// The same client identity completed a new session handshake (it restarted, or never
    /// received the response to the handshake that created this session).
    Superseded,
    /// The data plane refused the session (install or update) or lost it (restart).
    DataplaneFailed,
}

impl Trigger {
    /// All triggers.
    pub const ALL: [Trigger; 20] = [
        Trigger::HandshakeCompleted,
        Trigger::HandshakeFailed,
        Trigger::QualityThresholdCrossed,
        Trigger::StabilityWindowMet,
        Trigger::PathDead,
        Trigger::ReattachAccepted,
        Trigger::SwitchBudgetExceeded,
        Trigger::ReattachFailuresExceeded,
        Trigger::CooldownOverPathHealthy,
        Trigger::RecoveryWindowElapsed,
        Trigger::DegradedMaxElapsed,
        Trigger::SessionLifetimeElapsed,
        Trigger::KeysExpired,
        Trigger::OwnershipConflict,
        Trigger::Revoked,
        Trigger::OperatorTerminated,
        Trigger::PeerTerminated,
        Trigger::VersionExhausted,
        Trigger::Superseded,
        Trigger::DataplaneFailed,
    ];

    /// Tie-break rank when triggers coincide; lower wins. SPEC.md section 3 orders
    /// SESSION_TTL_EXPIRED > KEY_EXPIRED > OWNERSHIP_CONFLICT > REVOKED/OPERATOR_TERMINATED >
    /// TRANSPORT_DEAD > QUALITY_THRESHOLD_EXCEEDED > HEALTH_RECOVERED. Triggers it does not
    /// rank are placed by the rule "an ending outranks a change, a change outranks a recovery":
    /// the other terminations right after REVOKED, the other state changes after
    /// TRANSPORT_DEAD, recoveries last.
    #[must_use]
    pub const fn rank(self) -> u8 {
        match self {
            Trigger::SessionLifetimeElapsed => 0,
            Trigger::KeysExpired => 1,
            Trigger::OwnershipConflict => 2,
            Trigger::Revoked | Trigger::OperatorTerminated => 3,
            Trigger::PeerTerminated | Trigger::Superseded => 4,
            Trigger::VersionExhausted | Trigger::DataplaneFailed => 5,
            Trigger::RecoveryWindowElapsed
            | Trigger::DegradedMaxElapsed
            | Trigger::HandshakeFailed => 6,
            Trigger::PathDead => 7,
            Trigger::SwitchBudgetExceeded | Trigger::ReattachFailuresExceeded => 8,
            Trigger::QualityThresholdCrossed => 9,
            Trigger::HandshakeCompleted | Trigger::ReattachAccepted => 10,
            Trigger::StabilityWindowMet => 11,
            Trigger::CooldownOverPathHealthy => 12,
        }
    }
}

/// Reason codes of transitions (SPEC.md section 3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reason {
    /// BIRTH → ATTACHED.
    HandshakeOk,
    /// BIRTH → TERMINATED.
    HandshakeFailed,
    /// ATTACHED → VOLATILE.
    QualityThresholdExceeded,
    /// VOLATILE → ATTACHED.
    HealthRecovered,
    /// → RECOVERING.
    TransportDead,
    /// → ATTACHED by reattach.
    ReattachOk,
    /// → DEGRADED, budget spent.
    SwitchRateLimited,
    /// RECOVERING → DEGRADED.
    RecoveryAttemptsExceeded,
    /// DEGRADED → ATTACHED.
    ExitDegraded,
    /// RECOVERING → TERMINATED.
    RecoveryWindowExpired,
    /// DEGRADED → TERMINATED.
    VolatilityPersistent,
    /// → TERMINATED, lifetime.
    SessionTtlExpired,
    /// → TERMINATED, keys too old.
    KeyExpired,
    /// → TERMINATED, ownership.
    OwnershipConflict,
    /// → TERMINATED, client key revoked.
    Revoked,
    /// → TERMINATED, operator.
    OperatorTerminated,
    /// → TERMINATED, client said so.
    PeerTerminated,
    /// → TERMINATED, the version would overflow (SPEC.md section 1: "overflow risk terminates
    /// the session"; the code is this project's).
    VersionExhausted,
    /// → TERMINATED, the client's identity completed a new session handshake, which replaces
    /// this session (project code: one live session per client identity).
    Superseded,
    /// → TERMINATED, the data plane refused or lost the session (project code).
    DataplaneFailed,
}

impl Reason {
    /// All reasons.
    pub const ALL: [Reason; 20] = [
        Reason::HandshakeOk,
        Reason::HandshakeFailed,
        Reason::QualityThresholdExceeded,
        Reason::HealthRecovered,
        Reason::TransportDead,
        Reason::ReattachOk,
        Reason::SwitchRateLimited,
        Reason::RecoveryAttemptsExceeded,
        Reason::ExitDegraded,
        Reason::RecoveryWindowExpired,
        Reason::VolatilityPersistent,
        Reason::SessionTtlExpired,
        Reason::KeyExpired,
        Reason::OwnershipConflict,
        Reason::Revoked,
        Reason::OperatorTerminated,
        Reason::PeerTerminated,
        Reason::VersionExhausted,
        Reason::Superseded,
        Reason::DataplaneFailed,
    ];

    /// Name as in SPEC.md and in events.
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Reason::HandshakeOk => "HANDSHAKE_OK",
            Reason::HandshakeFailed => "HANDSHAKE_FAILED",
            Reason::QualityThresholdExceeded => "QUALITY_THRESHOLD_EXCEEDED",
            Reason::HealthRecovered => "HEALTH_RECOVERED",
            Reason::TransportDead => "TRANSPORT_DEAD",
            Reason::ReattachOk => "REATTACH_OK",
            Reason::SwitchRateLimited => "SWITCH_RATE_LIMITED",
            Reason::RecoveryAttemptsExceeded => "RECOVERY_ATTEMPTS_EXCEEDED",
            Reason::ExitDegraded => "EXIT_DEGRADED",
            Reason::RecoveryWindowExpired => "RECOVERY_WINDOW_EXPIRED",
            Reason::VolatilityPersistent => "VOLATILITY_PERSISTENT",
            Reason::SessionTtlExpired => "SESSION_TTL_EXPIRED",
            Reason::KeyExpired => "KEY_EXPIRED",
            Reason::OwnershipConflict => "OWNERSHIP_CONFLICT",
            Reason::Revoked => "REVOKED",
            Reason::OperatorTerminated => "OPERATOR_TERMINATED",
            Reason::PeerTerminated => "PEER_TERMINATED",
            Reason::VersionExhausted => "VERSION_EXHAUSTED",
            Reason::Superseded => "SUPERSEDED",
            Reason::DataplaneFailed => "DATAPLANE_FAILED",
        }
    }

    /// Wire code (in TERMINATE messages).
    #[must_use]
    pub fn code(self) -> u8 {
        let i = Reason::ALL.iter().position(|&r| r == self).unwrap_or(0);
        u8::try_from(i + 1).unwrap_or(0)
    }

    /// The reason with wire code `code`.
    #[must_use]
    pub fn from_code(code: u8) -> Option<Self> {
        Reason::ALL.get(usize::from(code).checked_sub(1)?).copied()
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The trigger is not legal in the state: rejected without mutation, logged as
/// INVALID_STATE_TRANSITION.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("INVALID_STATE_TRANSITION: {trigger:?} in {from}")]
pub struct InvalidTransition {
    /// The state.
    pub from: State,
    /// The refused trigger.
    pub trigger: Trigger,
}

/// The SPEC.md section 3 table.
///
/// # Errors
/// [`InvalidTransition`] for every pair the table does not list.
pub const fn transition(
    from: State,
    trigger: Trigger,
) -> Result<(State, Reason), InvalidTransition> {
    use State::*;
    use Trigger as T;
    let live = !matches!(from, Terminated);
    Ok(match (from, trigger) {
        (Birth, T::HandshakeCompleted) => (Attached, Reason::HandshakeOk),
        (Birth, T::HandshakeFailed) => (Terminated, Reason::HandshakeFailed),
        (Attached, T::QualityThresholdCrossed) => (Volatile, Reason::QualityThresholdExceeded),
        (Volatile, T::StabilityWindowMet) => (Attached, Reason::HealthRecovered),
        (Attached | Volatile, T::PathDead) => (Recovering, Reason::TransportDead),
        (Attached | Volatile | Recovering | Degraded, T::ReattachAccepted) => {
            (Attached, Reason::ReattachOk)
        }
        (Attached | Volatile | Recovering, T::SwitchBudgetExceeded) => {
            (Degraded, Reason::SwitchRateLimited)
        }
        (Recovering, T::ReattachFailuresExceeded) => (Degraded, Reason::RecoveryAttemptsExceeded),
        (Degraded, T::CooldownOverPathHealthy) => (Attached, Reason::ExitDegraded),
        (Recovering, T::RecoveryWindowElapsed) => (Terminated, Reason::RecoveryWindowExpired),
        (Degraded, T::DegradedMaxElapsed) => (Terminated, Reason::VolatilityPersistent),
        (_, T::SessionLifetimeElapsed) if live => (Terminated, Reason::SessionTtlExpired),
        (_, T::KeysExpired) if live => (Terminated, Reason::KeyExpired),
        (_, T::OwnershipConflict) if live => (Terminated, Reason::OwnershipConflict),
        (_, T::Revoked) if live => (Terminated, Reason::Revoked),
        (_, T::OperatorTerminated) if live => (Terminated, Reason::OperatorTerminated),
        (_, T::PeerTerminated) if live => (Terminated, Reason::PeerTerminated),
        (_, T::VersionExhausted) if live => (Terminated, Reason::VersionExhausted),
        (_, T::Superseded) if live => (Terminated, Reason::Superseded),
        (_, T::DataplaneFailed) if live => (Terminated, Reason::DataplaneFailed),
        _ => return Err(InvalidTransition { from, trigger }),
    })
}

/// Of several coinciding triggers, the one to apply: the best-ranked that is legal in `from`.
#[must_use]
pub fn resolve(from: State, triggers: &[Trigger]) -> Option<Trigger> {
    triggers
        .iter()
        .copied()
        .filter(|&t| transition(from, t).is_ok())
        .min_by_key(|t| t.rank())
}

/// An accepted transition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Transition {
    /// State before.
    pub from: State,
    /// State after.
    pub to: State,
    /// Reason code.
    pub reason: Reason,
    /// Version after (previous + 1).
    pub version: u64,
}

/// State plus version, with the version rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Machine {
    state: State,
    version: u64,
}

impl Default for Machine {
    fn default() -> Self {
        Self::new()
    }
}

impl Machine {
    /// BIRTH, version 0.
    #[must_use]
    pub const fn new() -> Self {
        Machine {
            state: State::Birth,
            version: 0,
        }
    }

    /// Restore a persisted machine (the data plane or store hands back state and version).
    #[must_use]
    pub const fn restore(state: State, version: u64) -> Self {
        Machine { state, version }
    }

    /// Current state.
    #[must_use]
    pub const fn state(&self) -> State {
        self.state
    }

    /// Current version.
    #[must_use]
    pub const fn version(&self) -> u64 {
        self.version
    }

    /// Apply a trigger. On success the version grows by exactly one. If it would reach
    /// `u64::MAX`, the session is terminated with VERSION_EXHAUSTED instead.
    ///
    /// # Errors
    /// [`InvalidTransition`]; nothing changes.
    pub fn apply(&mut self, trigger: Trigger) -> Result<Transition, InvalidTransition> {
        let (mut to, mut reason) = transition(self.state, trigger)?;
        if self.version >= u64::MAX - 1 && to != State::Terminated {
            (to, reason) = (State::Terminated, Reason::VersionExhausted);
        }
        let from = self.state;
        self.state = to;
        self.version += 1;
        Ok(Transition {
            from,
            to,
            reason,
            version: self.version,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// SPEC.md section 3, transcribed row by row as data: the reference model.
    fn spec_table() -> Vec<(State, Trigger, State, Reason)> {
        use State::*;
        use Trigger as T;
        let mut rows = vec![
            (Birth, T::HandshakeCompleted, Attached, Reason::HandshakeOk),
            (
                Birth,
                T::HandshakeFailed,
                Terminated,
                Reason::HandshakeFailed,
            ),
            (
                Attached,
                T::QualityThresholdCrossed,
                Volatile,
                Reason::QualityThresholdExceeded,
            ),
            (
                Volatile,
                T::StabilityWindowMet,
                Attached,
                Reason::HealthRecovered,
            ),
            (Attached, T::PathDead, Recovering, Reason::TransportDead),
            (Volatile, T::PathDead, Recovering, Reason::TransportDead),
            (Attached, T::ReattachAccepted, Attached, Reason::ReattachOk),
            (Volatile, T::ReattachAccepted, Attached, Reason::ReattachOk),
            (
                Recovering,
                T::ReattachAccepted,
                Attached,
                Reason::ReattachOk,
            ),
            (Degraded, T::ReattachAccepted, Attached, Reason::ReattachOk),
            (
                Attached,
                T::SwitchBudgetExceeded,
                Degraded,
                Reason::SwitchRateLimited,
            ),
            (
                Volatile,
                T::SwitchBudgetExceeded,
                Degraded,
                Reason::SwitchRateLimited,
            ),
            (
                Recovering,
                T::SwitchBudgetExceeded,
                Degraded,
                Reason::SwitchRateLimited,
            ),
            (
                Recovering,
                T::ReattachFailuresExceeded,
                Degraded,
                Reason::RecoveryAttemptsExceeded,
            ),
            (
                Degraded,
                T::CooldownOverPathHealthy,
                Attached,
                Reason::ExitDegraded,
            ),
            (
                Recovering,
                T::RecoveryWindowElapsed,
                Terminated,
                Reason::RecoveryWindowExpired,
            ),
            (
                Degraded,
                T::DegradedMaxElapsed,
                Terminated,
                Reason::VolatilityPersistent,
            ),
        ];
        for s in [Birth, Attached, Volatile, Recovering, Degraded] {
            rows.push((
                s,
                T::SessionLifetimeElapsed,
                Terminated,
                Reason::SessionTtlExpired,
            ));
            rows.push((s, T::KeysExpired, Terminated, Reason::KeyExpired));
            rows.push((
                s,
                T::OwnershipConflict,
                Terminated,
                Reason::OwnershipConflict,
            ));
            rows.push((s, T::Revoked, Terminated, Reason::Revoked));
            rows.push((
                s,
                T::OperatorTerminated,
                Terminated,
                Reason::OperatorTerminated,
            ));
            rows.push((s, T::PeerTerminated, Terminated, Reason::PeerTerminated));
            rows.push((s, T::VersionExhausted, Terminated, Reason::VersionExhausted));
            rows.push((s, T::Superseded, Terminated, Reason::Superseded));
            rows.push((s, T::DataplaneFailed, Terminated, Reason::DataplaneFailed));
        }
        rows
    }

    #[test]
    fn every_state_event_pair_matches_the_spec_table() {
        let table = spec_table();
        let mut legal = 0;
        for s in State::ALL {
            for t in Trigger::ALL {
                let expected = table
                    .iter()
                    .find(|r| r.0 == s && r.1 == t)
                    .map(|r| (r.2, r.3));
                match (transition(s, t), expected) {
                    (Ok(got), Some(want)) => {
                        assert_eq!(got, want, "{s:?} + {t:?}");
                        legal += 1;
                    }
                    (Err(e), None) => assert_eq!(
                        e,
                        InvalidTransition {
                            from: s,
                            trigger: t
                        }
                    ),
                    (got, want) => panic!("{s:?} + {t:?}: got {got:?}, spec says {want:?}"),
                }
            }
        }
        assert_eq!(legal, table.len());
        assert_eq!(State::ALL.len() * Trigger::ALL.len(), 120);
    }

    #[test]
    fn terminated_ignores_everything() {
        for t in Trigger::ALL {
            let mut m = Machine::restore(State::Terminated, 9);
            assert!(m.apply(t).is_err());
            assert_eq!(m, Machine::restore(State::Terminated, 9));
        }
    }

    #[test]
    fn tie_break_follows_spec_order() {
        use Trigger as T;
        let all = [
            T::StabilityWindowMet,
            T::QualityThresholdCrossed,
            T::PathDead,
            T::Revoked,
            T::OwnershipConflict,
            T::KeysExpired,
            T::SessionLifetimeElapsed,
        ];
        assert_eq!(
            resolve(State::Attached, &all),
            Some(T::SessionLifetimeElapsed)
        );
        assert_eq!(resolve(State::Attached, &all[..6]), Some(T::KeysExpired));
        assert_eq!(
            resolve(State::Attached, &all[..5]),
            Some(T::OwnershipConflict)
        );
        assert_eq!(resolve(State::Attached, &all[..4]), Some(T::Revoked));
        assert_eq!(resolve(State::Attached, &all[..3]), Some(T::PathDead));
        assert_eq!(
            resolve(State::Attached, &all[..2]),
            Some(T::QualityThresholdCrossed)
        );
        // StabilityWindowMet is illegal in ATTACHED, so nothing applies.
        assert_eq!(resolve(State::Attached, &all[..1]), None);
        assert_eq!(
            resolve(State::Volatile, &all[..2]),
            Some(T::StabilityWindowMet)
        );
        assert_eq!(resolve(State::Terminated, &all), None);
    }

    #[test]
    fn version_exhaustion_terminates() {
        let mut m = Machine::restore(State::Attached, u64::MAX - 2);
        let t = m.apply(Trigger::QualityThresholdCrossed).expect("legal");
        assert_eq!(t.to, State::Volatile);
        let t = m.apply(Trigger::StabilityWindowMet).expect("legal");
        assert_eq!(
            (t.to, t.reason),
            (State::Terminated, Reason::VersionExhausted)
        );
        assert_eq!(m.version(), u64::MAX);
    }

    #[test]
    fn reason_codes_roundtrip() {
        for r in Reason::ALL {
            assert_eq!(Reason::from_code(r.code()), Some(r));
        }
        assert_eq!(Reason::from_code(0), None);
        assert_eq!(Reason::from_code(200), None);
    }

    proptest! {
        /// Against the table model: accepted triggers move state as the table says and add one
        /// to the version; refused ones change nothing; identical inputs give identical runs.
        #[test]
        fn machine_follows_model(idx in prop::collection::vec(0..Trigger::ALL.len(), 0..200)) {
            let table = spec_table();
            let mut m = Machine::new();
            let mut replay = Machine::new();
            let (mut model_state, mut model_version) = (State::Birth, 0u64);
            for i in idx {
                let t = Trigger::ALL[i];
                let row = table.iter().find(|r| r.0 == model_state && r.1 == t);
                let got = m.apply(t);
                prop_assert_eq!(replay.apply(t), got);
                match (got, row) {
                    (Ok(tr), Some(r)) => {
                        prop_assert_eq!((tr.from, tr.to, tr.reason), (model_state, r.2, r.3));
                        model_state = r.2;
                        model_version += 1;
                        prop_assert_eq!(tr.version, model_version);
                    }
                    (Err(_), None) => {}
                    (got, row) => prop_assert!(false, "{:?} vs {:?}", got, row),
                }
                prop_assert_eq!((m.state(), m.version()), (model_state, model_version));
            }
        }
    }
}
