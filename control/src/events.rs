//! Events as SPEC.md section 8 writes them: one JSON object per line, with `ts`, `event`,
//! `session_id`, `correlation_id`, `node_id`, `state_version`, `policy_version`, `reason_code`
//! where one applies, and the event's own fields. Never a payload, key or proof.

use std::sync::Arc;
use std::time::SystemTime;

use jumping_control_api::server::EventRecord;
use jumping_protocol::Event;
use observe::log::CorrelationId;
use serde::ser::{SerializeMap, Serializer};
use serde::Serialize;

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

/// `T` written as a JSON string through its `Display` (no intermediate `String`).
struct Shown<T>(T);

impl<T: std::fmt::Display> Serialize for Shown<T> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&self.0)
    }
}

/// `e` as its JSON line (without the newline) and the fields the control socket's followers
/// filter on. The line is written straight from the event: one allocation for the text and
/// one for the shared copy, where a `serde_json::Value` tree cost an allocation per field
/// (and its cloning and dropping a fifth of control's time in a mass NAT rebind).
#[must_use]
pub fn record(e: &Event, node_id: u8, policy_version: u64) -> EventRecord {
    let mut buf = Vec::with_capacity(384);
    let mut ser = serde_json::Serializer::new(&mut buf);
    let reason = write(&mut ser, e, node_id, policy_version)
        .expect("an event's fields are strings and numbers, which always serialize");
    let line = String::from_utf8(buf).expect("serde_json writes UTF-8");
    EventRecord {
        line: Arc::from(line),
        session_id: e.session_id().map(|s| s.0),
        event: e.name(),
        reason_code: reason,
    }
}

/// Writes the object; returns its `reason_code`, if it has one.
fn write<W: std::io::Write>(
    ser: &mut serde_json::Serializer<W>,
    e: &Event,
    node_id: u8,
    policy_version: u64,
) -> Result<Option<&'static str>, serde_json::Error> {
    let mut m = ser.serialize_map(None)?;
    m.serialize_entry(
        "ts",
        &Shown(humantime::format_rfc3339_millis(SystemTime::now())),
    )?;
    m.serialize_entry("event", e.name())?;
    let sid = e.session_id();
    m.serialize_entry("session_id", &sid.map(Shown))?;
    // Stable for the session's life (node and SessionId, so it survives a restart); log
    // lines write the same text with `correlation_id = %CorrelationId(node, id)`.
    m.serialize_entry(
        "correlation_id",
        &sid.map(|s| Shown(CorrelationId(node_id, s))),
    )?;
    m.serialize_entry("node_id", &node_id)?;
    m.serialize_entry("state_version", &e.version())?;
    m.serialize_entry("policy_version", &policy_version)?;
    let reason = match e {
        Event::SessionCreated {
            client_key_id,
            path,
            ..
        } => {
            m.serialize_entry("client_key_id", client_key_id)?;
            m.serialize_entry("path", &Shown(path))?;
            None
        }
        Event::StateChanged {
            from, to, reason, ..
        } => {
            m.serialize_entry("from_state", from.as_str())?;
            m.serialize_entry("to_state", to.as_str())?;
            Some(reason.as_str())
        }
        Event::PathSwitched {
            from_path,
            to_path,
            recovery_ms,
            reattach_ms,
            ..
        } => {
            m.serialize_entry("from_path", &from_path.as_ref().map(Shown))?;
            m.serialize_entry("to_path", &Shown(to_path))?;
            m.serialize_entry("recovery_ms", recovery_ms)?;
            m.serialize_entry("reattach_ms", reattach_ms)?;
            Some("REATTACH_OK")
        }
        Event::ReattachRejected { path, code, .. } => {
            m.serialize_entry("path", &Shown(path))?;
            m.serialize_entry("reject_code", code.as_str())?;
            Some(code.as_str())
        }
        Event::Security { kind, source, .. } => {
            m.serialize_entry("kind", kind.as_str())?;
            m.serialize_entry("source", &Shown(source))?;
            None
        }
        Event::PolicyLimit {
            limit,
            threshold,
            observed,
            ..
        } => {
            m.serialize_entry("limit", limit)?;
            m.serialize_entry("threshold", threshold)?;
            m.serialize_entry("observed", observed)?;
            None
        }
        Event::KeyRotated { key_epoch, .. }
        | Event::KeyExpired { key_epoch, .. }
        | Event::RekeyDenied { key_epoch, .. } => {
            m.serialize_entry("key_epoch", key_epoch)?;
            None
        }
        Event::SessionTerminated {
            reason,
            session_age_ms,
            switches_total,
            ..
        } => {
            m.serialize_entry("session_age_ms", session_age_ms)?;
            m.serialize_entry("switches_total", switches_total)?;
            Some(reason.as_str())
        }
        Event::InvalidTransition { state, trigger, .. } => {
            m.serialize_entry("state", state.as_str())?;
            m.serialize_entry("trigger", &upper_snake(&format!("{trigger:?}")))?;
            Some("INVALID_STATE_TRANSITION")
        }
    };
    if let Some(r) = reason {
        m.serialize_entry("reason_code", r)?;
    }
    SerializeMap::end(m)?;
    Ok(reason)
}

#[cfg(test)]
mod tests {
    use super::*;
    use jumping_protocol::SessionId;
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
        let rec = record(&e, 3, 7);
        assert!(!rec.line.contains('\n'));
        let v: serde_json::Value = serde_json::from_str(&rec.line).unwrap();
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
        assert_eq!(v["state_version"], 1);
        assert_eq!(v["policy_version"], 7);
        assert_eq!(v["from_state"], "BIRTH");
        // What followers filter on is what the line says.
        assert_eq!(rec.session_id, Some(0x0100_0000_0000_0001));
        assert_eq!(rec.event, "SESSION_STATE_CHANGED");
        assert_eq!(rec.reason_code, Some("HANDSHAKE_OK"));
    }

    /// Every kind of event is one JSON object with each key once, its `reason_code` (where it
    /// has one) the one followers filter on, and `null` ids and version for a security event
    /// about no session.
    #[test]
    fn every_event_is_one_object_with_unique_keys() {
        use jumping_protocol::state::Trigger;
        use jumping_protocol::{Path, RejectCode, SecurityKind};
        let sid = SessionId(0xab);
        let path = Path::udp("192.0.2.1:4000".parse().unwrap());
        let all = [
            Event::SessionCreated {
                session_id: sid,
                client_key_id: "k\"ey".into(),
                path,
                version: 1,
            },
            Event::PathSwitched {
                session_id: sid,
                from_path: None,
                to_path: path,
                recovery_ms: Some(3),
                reattach_ms: None,
                version: 2,
            },
            Event::ReattachRejected {
                session_id: sid,
                path,
                code: RejectCode::CooldownActive,
                version: 2,
            },
            Event::Security {
                session_id: None,
                kind: SecurityKind::Replay,
                source: "192.0.2.9:1".parse().unwrap(),
            },
            Event::PolicyLimit {
                session_id: sid,
                limit: "switch_rate",
                threshold: 8,
                observed: 9,
                version: 3,
            },
            Event::KeyRotated {
                session_id: sid,
                key_epoch: 2,
                version: 3,
            },
            Event::SessionTerminated {
                session_id: sid,
                reason: Reason::OperatorTerminated,
                session_age_ms: 5,
                switches_total: 1,
                version: 4,
            },
            Event::InvalidTransition {
                session_id: sid,
                state: State::Attached,
                trigger: Trigger::PathDead,
                version: 4,
            },
        ];
        for e in &all {
            let rec = record(e, 1, 1);
            let v: serde_json::Value = serde_json::from_str(&rec.line).unwrap();
            // Parsing keeps the last of a repeated key: count them in the text instead.
            let obj = v.as_object().unwrap();
            for k in obj.keys() {
                assert_eq!(
                    rec.line.matches(&format!("\"{k}\":")).count(),
                    1,
                    "{k} in {}",
                    rec.line
                );
            }
            assert_eq!(v["event"], e.name());
            assert_eq!(v["reason_code"].as_str(), rec.reason_code, "{}", rec.line);
            assert_eq!(v["session_id"].is_null(), e.session_id().is_none());
            assert_eq!(v["correlation_id"].is_null(), e.session_id().is_none());
        }
        let sec: serde_json::Value = serde_json::from_str(&record(&all[3], 1, 1).line).unwrap();
        assert!(sec["state_version"].is_null());
        assert_eq!(sec["source"], "192.0.2.9:1");
        let created: serde_json::Value = serde_json::from_str(&record(&all[0], 1, 1).line).unwrap();
        assert_eq!(created["client_key_id"], "k\"ey");
        assert_eq!(created["session_id"], "00000000000000ab");
    }
}
