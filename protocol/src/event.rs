//! Events the protocol endpoints emit (SPEC.md section 8), and reject codes (section 4).
//!
//! The protocol produces the decision-bearing fields; the shell adds `ts`, `node_id`,
//! `correlation_id` and `policy_version` when it writes the event as a JSON line. Events never
//! carry payloads, keys or proofs.

use core::net::SocketAddr;

use crate::path::Path;
use crate::state::{Reason, State, Trigger};
use crate::wire::SessionId;

/// Why a reattach was refused, in check order (SPEC.md section 4).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RejectCode {
    /// No such session.
    UnknownSession,
    /// The state does not allow a reattach.
    InvalidState,
    /// The session is past its lifetime.
    SessionExpired,
    /// The key epoch is past `reject_after`, or unknown.
    KeyExpired,
    /// The request's MAC does not verify under the session key.
    AuthFailed,
    /// The request is older than `reattach_max_age`.
    StaleRequest,
    /// The request counter was already seen.
    ReplayDetected,
    /// The proof of possession of the client identity key does not verify.
    BadProof,
    /// The switch budget is spent.
    SwitchRateLimited,
    /// Too soon after the last switch (or inside the DEGRADED cooldown).
    CooldownActive,
    /// The transport is not allowed by policy.
    PolicyDenied,
    /// This node or core does not own the session.
    NotOwner,
    /// Two owners claimed the session.
    OwnershipConflict,
    /// The challenge was not answered correctly or in time.
    PathValidationFailed,
    /// The session changed between validation and bind; nothing was bound.
    AtomicityFailed,
}

impl RejectCode {
    /// All codes, in check order.
    pub const ALL: [RejectCode; 15] = [
        RejectCode::UnknownSession,
        RejectCode::InvalidState,
        RejectCode::SessionExpired,
        RejectCode::KeyExpired,
        RejectCode::AuthFailed,
        RejectCode::StaleRequest,
        RejectCode::ReplayDetected,
        RejectCode::BadProof,
        RejectCode::SwitchRateLimited,
        RejectCode::CooldownActive,
        RejectCode::PolicyDenied,
        RejectCode::NotOwner,
        RejectCode::OwnershipConflict,
        RejectCode::PathValidationFailed,
        RejectCode::AtomicityFailed,
    ];

    /// Name as in SPEC.md.
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            RejectCode::UnknownSession => "UNKNOWN_SESSION",
            RejectCode::InvalidState => "INVALID_STATE",
            RejectCode::SessionExpired => "SESSION_EXPIRED",
            RejectCode::KeyExpired => "KEY_EXPIRED",
            RejectCode::AuthFailed => "AUTH_FAILED",
            RejectCode::StaleRequest => "STALE_REQUEST",
            RejectCode::ReplayDetected => "REPLAY_DETECTED",
            RejectCode::BadProof => "BAD_PROOF",
            RejectCode::SwitchRateLimited => "SWITCH_RATE_LIMITED",
            RejectCode::CooldownActive => "COOLDOWN_ACTIVE",
            RejectCode::PolicyDenied => "POLICY_DENIED",
            RejectCode::NotOwner => "NOT_OWNER",
            RejectCode::OwnershipConflict => "OWNERSHIP_CONFLICT",
            RejectCode::PathValidationFailed => "PATH_VALIDATION_FAILED",
            RejectCode::AtomicityFailed => "ATOMICITY_FAILED",
        }
    }

    /// Wire code.
    #[must_use]
    pub fn code(self) -> u8 {
        let i = RejectCode::ALL.iter().position(|&c| c == self).unwrap_or(0);
        u8::try_from(i + 1).unwrap_or(0)
    }

    /// The code with wire value `code`.
    #[must_use]
    pub fn from_code(code: u8) -> Option<Self> {
        RejectCode::ALL
            .get(usize::from(code).checked_sub(1)?)
            .copied()
    }

    /// A valid-but-denied attempt: the request authenticated and proved possession, and policy
    /// or ownership refused it. These count toward `max_reattach_failures`.
    #[must_use]
    pub const fn is_valid_but_denied(self) -> bool {
        matches!(
            self,
            RejectCode::SwitchRateLimited
                | RejectCode::CooldownActive
                | RejectCode::PolicyDenied
                | RejectCode::NotOwner
                | RejectCode::PathValidationFailed
        )
    }
}

/// Kinds of security event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SecurityKind {
    /// A replayed message.
    Replay,
    /// A reattach whose proof of possession failed.
    BadProof,
    /// A message that failed authentication.
    AuthFailed,
    /// Handshake flood: cookies are being required.
    Flood,
    /// Two owners or two active paths seen.
    OwnershipAnomaly,
}

impl SecurityKind {
    /// Name as in SPEC.md.
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            SecurityKind::Replay => "REPLAY",
            SecurityKind::BadProof => "BAD_PROOF",
            SecurityKind::AuthFailed => "AUTH_FAILED",
            SecurityKind::Flood => "FLOOD",
            SecurityKind::OwnershipAnomaly => "OWNERSHIP_ANOMALY",
        }
    }
}

/// An event, as the protocol knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// SESSION_CREATED.
    SessionCreated {
        /// Session.
        session_id: SessionId,
        /// Short id of the client's public key (first 8 bytes of its BLAKE2s hash, hex).
        client_key_id: String,
        /// First active path.
        path: Path,
        /// Version (0 until the first transition is recorded).
        version: u64,
    },
    /// SESSION_STATE_CHANGED: exactly one per accepted transition, in version order.
    StateChanged {
        /// Session.
        session_id: SessionId,
        /// Before.
        from: State,
        /// After.
        to: State,
        /// Reason code.
        reason: Reason,
        /// Version after the transition.
        version: u64,
    },
    /// PATH_SWITCHED.
    PathSwitched {
        /// Session.
        session_id: SessionId,
        /// Previous active path, if any.
        from_path: Option<Path>,
        /// New active path.
        to_path: Path,
        /// Path lost → new path active, if the old path was lost (ms).
        recovery_ms: Option<u64>,
        /// Reattach request (or new path seen) → new path bound (ms): one validation.
        reattach_ms: Option<u64>,
        /// Version after the switch.
        version: u64,
    },
    /// REATTACH_REJECTED.
    ReattachRejected {
        /// Session (as claimed by the request).
        session_id: SessionId,
        /// Path the request came from.
        path: Path,
        /// Code.
        code: RejectCode,
        /// Session version (unchanged).
        version: u64,
    },
    /// SECURITY_EVENT.
    Security {
        /// Session the message claimed, if any.
        session_id: Option<SessionId>,
        /// Kind.
        kind: SecurityKind,
        /// Source address.
        source: SocketAddr,
    },
    /// POLICY_LIMIT.
    PolicyLimit {
        /// Session.
        session_id: SessionId,
        /// Policy key.
        limit: &'static str,
        /// Configured bound.
        threshold: u64,
        /// Observed value.
        observed: u64,
        /// Session version.
        version: u64,
    },
    /// KEY_ROTATED.
    KeyRotated {
        /// Session.
        session_id: SessionId,
        /// New current epoch.
        key_epoch: u32,
        /// Session version.
        version: u64,
    },
    /// KEY_EXPIRED.
    KeyExpired {
        /// Session.
        session_id: SessionId,
        /// Expired epoch.
        key_epoch: u32,
        /// Session version.
        version: u64,
    },
    /// REKEY_DENIED.
    RekeyDenied {
        /// Session.
        session_id: SessionId,
        /// Current epoch.
        key_epoch: u32,
        /// Session version.
        version: u64,
    },
    /// SESSION_TERMINATED.
    SessionTerminated {
        /// Session.
        session_id: SessionId,
        /// Reason code.
        reason: Reason,
        /// Age at termination.
        session_age_ms: u64,
        /// Accepted switches over the session's life.
        switches_total: u64,
        /// Final version.
        version: u64,
    },
    /// INVALID_STATE_TRANSITION: a trigger refused by the state machine (logged, no mutation).
    InvalidTransition {
        /// Session.
        session_id: SessionId,
        /// State.
        state: State,
        /// Refused trigger.
        trigger: Trigger,
        /// Version (unchanged).
        version: u64,
    },
}

impl Event {
    /// The SPEC.md event name.
    #[must_use]
    pub const fn name(&self) -> &'static str {
        match self {
            Event::SessionCreated { .. } => "SESSION_CREATED",
            Event::StateChanged { .. } => "SESSION_STATE_CHANGED",
            Event::PathSwitched { .. } => "PATH_SWITCHED",
            Event::ReattachRejected { .. } => "REATTACH_REJECTED",
            Event::Security { .. } => "SECURITY_EVENT",
            Event::PolicyLimit { .. } => "POLICY_LIMIT",
            Event::KeyRotated { .. } => "KEY_ROTATED",
            Event::KeyExpired { .. } => "KEY_EXPIRED",
            Event::RekeyDenied { .. } => "REKEY_DENIED",
            Event::SessionTerminated { .. } => "SESSION_TERMINATED",
            Event::InvalidTransition { .. } => "INVALID_STATE_TRANSITION",
        }
    }

    /// The session the event is about (a security event may concern none).
    #[must_use]
    pub const fn session_id(&self) -> Option<SessionId> {
        match self {
            Event::Security { session_id, .. } => *session_id,
            Event::SessionCreated { session_id, .. }
            | Event::StateChanged { session_id, .. }
            | Event::PathSwitched { session_id, .. }
            | Event::ReattachRejected { session_id, .. }
            | Event::PolicyLimit { session_id, .. }
            | Event::KeyRotated { session_id, .. }
            | Event::KeyExpired { session_id, .. }
            | Event::RekeyDenied { session_id, .. }
            | Event::SessionTerminated { session_id, .. }
            | Event::InvalidTransition { session_id, .. } => Some(*session_id),
        }
    }

    /// The session's state version after the event (none for a security event).
    #[must_use]
    pub const fn version(&self) -> Option<u64> {
        match self {
            Event::Security { .. } => None,
            Event::SessionCreated { version, .. }
            | Event::StateChanged { version, .. }
            | Event::PathSwitched { version, .. }
            | Event::ReattachRejected { version, .. }
            | Event::PolicyLimit { version, .. }
            | Event::KeyRotated { version, .. }
            | Event::KeyExpired { version, .. }
            | Event::RekeyDenied { version, .. }
            | Event::SessionTerminated { version, .. }
            | Event::InvalidTransition { version, .. } => Some(*version),
        }
    }
}
