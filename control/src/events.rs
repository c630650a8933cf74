//! Events as SPEC.md section 8 writes them: one JSON object per line, with `ts`, `event`,
//! `session_id`, `correlation_id`, `node_id`, `state_version`, `policy_version`, `reason_code`
//! where one applies, and the event's own fields. Never a payload, key or proof.

use std::time::SystemTime;

use jumping_protocol::{Event, SessionId};
use observe::log::CorrelationId;
use serde_json::{json, Map, Value};

/// The correlation id of a session: stable for its life (derived from the node and the
/// SessionId, so it survives a control-process restart). Log lines write the same text with
/// `correlation_id = %CorrelationId(node, id)`.
#[must_use]
pub fn correlation_id(node_id: u8, id: SessionId) -> String {
    CorrelationId(node_id, id).to_string()
}

/// `PathDead` → `PATH_DEAD`: triggers written like every other code in the events.
fn upper_snake(name: &str) -> String {
    let mut out = String::with_capacity(name.len() + 4);
    for (i, c) in name.chars().enumerate() {
        if c.is_ascii_uppercase() && i > 0 {
            out.push('_');
        }
        out.push(c.to_ascii_uppercase());
    }
    out
}

/// The current wall-clock time, RFC 3339 with milliseconds.
#[must_use]
pub fn timestamp() -> String {
    humantime::format_rfc3339_millis(SystemTime::now()).to_string()
}

/// `e` as its JSON line object.
#[must_use]
pub fn to_json(e: &Event, node_id: u8, policy_version: u64) -> Value {
    let mut m = Map::new();
    m.insert("ts".into(), json!(timestamp()));
    m.insert("event".into(), json!(e.name()));
    let (sid, version, fields): (Option<SessionId>, Option<u64>, Value) = match e {
        Event::SessionCreated {
            session_id,
            client_key_id,
            path,
            version,
        } => (
            Some(*session_id),
            Some(*version),
            json!({"client_key_id": client_key_id, "path": path.to_string()}),
        ),
        Event::StateChanged {
            session_id,
            from,
            to,
            reason,
            version,
        } => (
            Some(*session_id),
            Some(*version),
            json!({"from_state": from.as_str(), "to_state": to.as_str(),
                   "reason_code": reason.as_str()}),
        ),
        Event::PathSwitched {
            session_id,
            from_path,
            to_path,
            recovery_ms,
            reattach_ms,
            version,
        } => (
            Some(*session_id),
            Some(*version),
            json!({"from_path": from_path.map(|p| p.to_string()),
                   "to_path": to_path.to_string(), "recovery_ms": recovery_ms,
                   "reattach_ms": reattach_ms, "reason_code": "REATTACH_OK"}),
        ),
        Event::ReattachRejected {
            session_id,
            path,
            code,
            version,
        } => (
            Some(*session_id),
            Some(*version),
            json!({"path": path.to_string(), "reject_code": code.as_str(),
                   "reason_code": code.as_str()}),
        ),
        Event::Security {
            session_id,
            kind,
            source,
        } => (
            *session_id,
            None,
            json!({"kind": kind.as_str(), "source": source.to_string()}),
        ),
        Event::PolicyLimit {
            session_id,
            limit,
            threshold,
            observed,
            version,
        } => (
            Some(*session_id),
            Some(*version),
            json!({"limit": limit, "threshold": threshold, "observed": observed}),
        ),
        Event::KeyRotated {
            session_id,
            key_epoch,
            version,
        }
        | Event::KeyExpired {
            session_id,
            key_epoch,
            version,
        }
        | Event::RekeyDenied {
            session_id,
            key_epoch,
            version,
        } => (
            Some(*session_id),
            Some(*version),
            json!({ "key_epoch": key_epoch }),
        ),
        Event::SessionTerminated {
            session_id,
            reason,
            session_age_ms,
            switches_total,
            version,
        } => (
            Some(*session_id),
            Some(*version),
            json!({"reason_code": reason.as_str(), "session_age_ms": session_age_ms,
                   "switches_total": switches_total}),
        ),
        Event::InvalidTransition {
            session_id,
            state,
            trigger,
            version,
        } => (
            Some(*session_id),
            Some(*version),
            json!({"state": state.as_str(), "trigger": upper_snake(&format!("{trigger:?}")),
                   "reason_code": "INVALID_STATE_TRANSITION"}),
        ),
    };
    m.insert("session_id".into(), json!(sid.map(|s| s.to_string())));
    m.insert(
        "correlation_id".into(),
        json!(sid.map(|s| correlation_id(node_id, s))),
    );
    m.insert("node_id".into(), json!(node_id));
    m.insert("state_version".into(), json!(version));
    m.insert("policy_version".into(), json!(policy_version));
    if let Value::Object(f) = fields {
        m.extend(f);
    }
    Value::Object(m)
}

#[cfg(test)]
mod tests {
    use super::*;
    use jumping_protocol::{Reason, State};

    #[test]
    fn state_change_has_the_spec_fields() {
        let e = Event::StateChanged {
            session_id: SessionId(0x0100_0000_0000_0001),
            from: State::Birth,
            to: State::Attached,
            reason: Reason::HandshakeOk,
            version: 1,
        };
        let v = to_json(&e, 3, 7);
        for k in [
            "ts",
            "event",
            "session_id",
            "correlation_id",
            "node_id",
            "state_version",
            "policy_version",
            "reason_code",
            "from_state",
            "to_state",
        ] {
            assert!(v.get(k).is_some(), "missing {k}: {v}");
        }
        assert_eq!(v["event"], "SESSION_STATE_CHANGED");
        assert_eq!(v["session_id"], "0100000000000001");
        assert_eq!(v["reason_code"], "HANDSHAKE_OK");
        assert_eq!(v["to_state"], "ATTACHED");
        assert_eq!(
            upper_snake("CooldownOverPathHealthy"),
            "COOLDOWN_OVER_PATH_HEALTHY"
        );
        assert_eq!(v["correlation_id"], "n3-0100000000000001");
    }
}
