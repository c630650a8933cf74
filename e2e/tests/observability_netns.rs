//! Observability end to end: the events, the logs and what must never be in them.
//!
//! The schema test (no root needed) checks `docs/events.schema.json` against every event the
//! control process's writer (`jumping_control::events::record`) can produce, and that it
//! refuses drift: an extra or missing field, a bad id, a transition SPEC.md section 3 does not
//! list.
//!
//! The run (as root, in namespaces, like the other end-to-end tests) goes through the real
//! processes: handshake, traffic both ways with a marked payload, a NAT rebind, a client path
//! switch, a replay from an attacker namespace, an operator rekey and an operator kill. Then it
//! validates every event line the control process wrote (and every line `jumpctl --json
//! events` printed) against the published schema, checks each session's versions and
//! correlation ids, checks the control process's JSON logs carry the correlation id of the
//! session they are about, and greps everything every process wrote for the private keys and
//! the payload marker in the usual encodings.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::net::{SocketAddr, SocketAddrV4};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use base64::engine::general_purpose::{STANDARD, URL_SAFE};
use base64::Engine as _;
use jsonschema::Validator;
use jumping_control::events::record;
use jumping_e2e::{of, root_or_skip, wait_for, Capture, Net, Proc, Traffic, GATEWAY};
use jumping_protocol::state::{transition, Trigger};
use jumping_protocol::{keyfmt, Event, Path, Reason, RejectCode, SecurityKind, SessionId, State};
use serde_json::{json, Value};

/// Wire type codes (protocol/src/wire.rs `MessageType`), at UDP payload offset 1.
const TYPE_DATA: u8 = 4;
const TYPE_REATTACH_REQUEST: u8 = 7;

/// The marked inner payload: 32 printable bytes that nothing else in a run contains.
const MARKER: &[u8; 32] = b"jmpOBS-7f3Kq9ZxW2vT8rLm4pYc6nHdQ";

/// The control process's node id in the run.
const NODE: u64 = 7;

// ---------------------------------------------------------------------------------------------
// The schema
// ---------------------------------------------------------------------------------------------

fn schema_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../docs/events.schema.json")
}

/// The published schema, checked against the draft 2020-12 meta-schema, with formats checked.
fn validator() -> Validator {
    let path = schema_path();
    let text = fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let schema: Value = serde_json::from_str(&text).expect("the schema is JSON");
    assert_eq!(
        schema["$schema"], "https://json-schema.org/draft/2020-12/schema",
        "draft 2020-12"
    );
    if let Err(e) = jsonschema::meta::validate(&schema) {
        panic!("the schema is not a valid draft 2020-12 schema: {e}");
    }
    jsonschema::draft202012::options()
        .should_validate_formats(true)
        .build(&schema)
        .expect("the schema compiles")
}

/// Every error of `v` against the schema, one line each.
fn errors(validator: &Validator, v: &Value) -> Vec<String> {
    validator
        .iter_errors(v)
        .map(|e| format!("{}: {e}", e.instance_path()))
        .collect()
}

/// Every line of `lines` is a JSON object the schema accepts; the failures.
fn invalid_lines(validator: &Validator, source: &str, lines: &[String]) -> Vec<String> {
    let mut bad = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        match serde_json::from_str::<Value>(line) {
            Err(e) => bad.push(format!("{source} line {}: not JSON ({e}): {line}", i + 1)),
            Ok(v) => {
                let errs = errors(validator, &v);
                if !errs.is_empty() {
                    bad.push(format!(
                        "{source} line {}: {line}\n    {}",
                        i + 1,
                        errs.join("\n    ")
                    ));
                }
            }
        }
    }
    bad
}

/// Names the schema knows; the match has no wildcard, so a new variant does not compile until
/// it is added here (and to the schema).
fn name(e: &Event) -> &'static str {
    match e {
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

/// Every security kind; no wildcard, as above.
fn all_kinds() -> Vec<SecurityKind> {
    let all = [
        SecurityKind::Replay,
        SecurityKind::BadProof,
        SecurityKind::AuthFailed,
        SecurityKind::Flood,
        SecurityKind::OwnershipAnomaly,
    ];
    for k in all {
        match k {
            SecurityKind::Replay
            | SecurityKind::BadProof
            | SecurityKind::AuthFailed
            | SecurityKind::Flood
            | SecurityKind::OwnershipAnomaly => {}
        }
    }
    all.to_vec()
}

/// One of every shape of event the writer produces, with edge values.
fn sample_events() -> Vec<Event> {
    let sid = SessionId(0x0123_4567_89ab_cdef);
    let v4: SocketAddr = "192.0.2.1:40000".parse().expect("addr");
    let v6: SocketAddr = "[2001:db8::1]:65535".parse().expect("addr");
    let v6_scoped: SocketAddr = "[fe80::1%3]:1".parse().expect("addr");
    let mut out = Vec::new();
    for path in [Path::udp(v4), Path::udp(v6), Path::udp(v6_scoped)] {
        out.push(Event::SessionCreated {
            session_id: sid,
            client_key_id: "00ff00ff00ff00ff".into(),
            path,
            version: 0,
        });
        for from_path in [None, Some(Path::udp(v4))] {
            for (recovery_ms, reattach_ms) in [(None, None), (Some(0), Some(u64::MAX))] {
                out.push(Event::PathSwitched {
                    session_id: sid,
                    from_path,
                    to_path: path,
                    recovery_ms,
                    reattach_ms,
                    version: 7,
                });
            }
        }
        for code in RejectCode::ALL {
            out.push(Event::ReattachRejected {
                session_id: sid,
                path,
                code,
                version: 3,
            });
        }
    }
    for kind in all_kinds() {
        for session_id in [None, Some(sid), Some(SessionId(0))] {
            for source in [v4, v6] {
                out.push(Event::Security {
                    session_id,
                    kind,
                    source,
                });
            }
        }
    }
    out.push(Event::PolicyLimit {
        session_id: sid,
        limit: "max_switches_per_min",
        threshold: 8,
        observed: 9,
        version: 4,
    });
    for key_epoch in [0, 1, u32::MAX] {
        out.push(Event::KeyRotated {
            session_id: sid,
            key_epoch,
            version: 1,
        });
        out.push(Event::KeyExpired {
            session_id: sid,
            key_epoch,
            version: 1,
        });
        out.push(Event::RekeyDenied {
            session_id: sid,
            key_epoch,
            version: u64::MAX,
        });
    }
    // Every legal transition, with its SESSION_TERMINATED where it ends the session; every
    // refused trigger in every state.
    for from in State::ALL {
        for trigger in Trigger::ALL {
            match transition(from, trigger) {
                Ok((to, reason)) => {
                    out.push(Event::StateChanged {
                        session_id: sid,
                        from,
                        to,
                        reason,
                        version: 2,
                    });
                    if to == State::Terminated {
                        out.push(Event::SessionTerminated {
                            session_id: sid,
                            reason,
                            session_age_ms: 12_345,
                            switches_total: 0,
                            version: 2,
                        });
                    }
                }
                Err(_) => out.push(Event::InvalidTransition {
                    session_id: sid,
                    state: from,
                    trigger,
                    version: 2,
                }),
            }
        }
    }
    // The overflow rule: any live state can end with VERSION_EXHAUSTED.
    for from in State::ALL.into_iter().filter(|s| *s != State::Terminated) {
        out.push(Event::StateChanged {
            session_id: sid,
            from,
            to: State::Terminated,
            reason: Reason::VersionExhausted,
            version: u64::MAX - 1,
        });
    }
    out
}

/// `v` with `f` applied: a drifted copy.
fn with(v: &Value, f: impl FnOnce(&mut serde_json::Map<String, Value>)) -> Value {
    let mut v = v.clone();
    if let Value::Object(m) = &mut v {
        f(m);
    }
    v
}

/// The line `events::record` writes for `e`, parsed.
fn to_json(e: &Event, node: u8, policy: u64) -> Value {
    serde_json::from_str(&record(e, node, policy).line).expect("the writer writes JSON")
}

/// The schema accepts everything `events::record` writes, one event of every kind and shape,
/// and refuses drift. Runs without root.
#[test]
fn the_schema_accepts_every_event_the_writer_produces_and_refuses_drift() {
    let validator = validator();
    let samples = sample_events();
    let mut kinds = BTreeSet::new();
    let mut bad = Vec::new();
    for e in &samples {
        for (node, policy) in [(0u8, 1u64), (255, u64::MAX)] {
            let v = to_json(e, node, policy);
            assert_eq!(v["event"], name(e));
            kinds.insert(name(e));
            let errs = errors(&validator, &v);
            if !errs.is_empty() {
                bad.push(format!("{v}\n    {}", errs.join("\n    ")));
            }
        }
    }
    assert!(
        bad.is_empty(),
        "the schema refuses {} event(s) the writer produces:\n{}",
        bad.len(),
        bad.join("\n")
    );
    assert_eq!(kinds.len(), 11, "every event kind sampled: {kinds:?}");

    // Drift is caught: each of these must be refused.
    let legal: std::collections::HashSet<(State, State, Reason)> = State::ALL
        .into_iter()
        .flat_map(|from| {
            Trigger::ALL
                .into_iter()
                .filter_map(move |t| transition(from, t).ok().map(|(to, r)| (from, to, r)))
        })
        .chain(
            State::ALL
                .into_iter()
                .filter(|s| *s != State::Terminated)
                .map(|from| (from, State::Terminated, Reason::VersionExhausted)),
        )
        .collect();
    let sid = SessionId(0x0123_4567_89ab_cdef);
    let mut must_fail: Vec<(String, Value)> = Vec::new();
    // Transitions SPEC.md section 3 does not list.
    for from in State::ALL {
        for to in State::ALL {
            for reason in Reason::ALL {
                if !legal.contains(&(from, to, reason)) {
                    must_fail.push((
                        format!("illegal transition {from} -> {to} {reason}"),
                        to_json(
                            &Event::StateChanged {
                                session_id: sid,
                                from,
                                to,
                                reason,
                                version: 2,
                            },
                            1,
                            1,
                        ),
                    ));
                }
            }
        }
    }
    // A termination reason that does not end a session.
    must_fail.push((
        "SESSION_TERMINATED HANDSHAKE_OK".into(),
        to_json(
            &Event::SessionTerminated {
                session_id: sid,
                reason: Reason::HandshakeOk,
                session_age_ms: 1,
                switches_total: 0,
                version: 1,
            },
            1,
            1,
        ),
    ));
    let base = to_json(
        &Event::PathSwitched {
            session_id: sid,
            from_path: None,
            to_path: Path::udp("192.0.2.1:1".parse().expect("addr")),
            recovery_ms: None,
            reattach_ms: Some(3),
            version: 2,
        },
        1,
        1,
    );
    assert!(errors(&validator, &base).is_empty(), "{base}");
    let fields: Vec<String> = base.as_object().expect("object").keys().cloned().collect();
    for f in &fields {
        must_fail.push((format!("without {f}"), with(&base, |m| drop(m.remove(f)))));
    }
    let drifts: Vec<(&str, Value)> = vec![
        (
            "an extra field",
            with(&base, |m| drop(m.insert("payload".into(), json!("00")))),
        ),
        (
            "upper-case session id",
            with(&base, |m| {
                m.insert("session_id".into(), json!("0123456789ABCDEF"));
            }),
        ),
        (
            "short session id",
            with(&base, |m| {
                m.insert("session_id".into(), json!("0123"));
            }),
        ),
        (
            "null session id outside SECURITY_EVENT",
            with(&base, |m| {
                m.insert("session_id".into(), Value::Null);
                m.insert("correlation_id".into(), Value::Null);
            }),
        ),
        (
            "bad correlation id",
            with(&base, |m| {
                m.insert("correlation_id".into(), json!("0123456789abcdef"));
            }),
        ),
        (
            "ts without milliseconds",
            with(&base, |m| {
                m.insert("ts".into(), json!("2025-01-01T00:00:00Z"));
            }),
        ),
        (
            "ts not a date",
            with(&base, |m| {
                m.insert("ts".into(), json!("2025-13-01T00:00:00.000Z"));
            }),
        ),
        (
            "node 256",
            with(&base, |m| {
                m.insert("node_id".into(), json!(256));
            }),
        ),
        (
            "negative state_version",
            with(&base, |m| {
                m.insert("state_version".into(), json!(-1));
            }),
        ),
        (
            "null state_version outside SECURITY_EVENT",
            with(&base, |m| {
                m.insert("state_version".into(), Value::Null);
            }),
        ),
        (
            "policy_version 0",
            with(&base, |m| {
                m.insert("policy_version".into(), json!(0));
            }),
        ),
        (
            "reattach_ms a string",
            with(&base, |m| {
                m.insert("reattach_ms".into(), json!("3"));
            }),
        ),
        (
            "a path without transport",
            with(&base, |m| {
                m.insert("to_path".into(), json!("192.0.2.1:1"));
            }),
        ),
        (
            "an unknown event",
            with(&base, |m| {
                m.insert("event".into(), json!("PATH_JUMPED"));
            }),
        ),
    ];
    must_fail.extend(drifts.into_iter().map(|(w, v)| (w.to_owned(), v)));
    let security = to_json(
        &Event::Security {
            session_id: Some(sid),
            kind: SecurityKind::Replay,
            source: "192.0.2.1:1".parse().expect("addr"),
        },
        1,
        1,
    );
    must_fail.push((
        "SECURITY_EVENT: correlation id without session id".into(),
        with(&security, |m| {
            m.insert("session_id".into(), Value::Null);
        }),
    ));
    must_fail.push((
        "SECURITY_EVENT: session id without correlation id".into(),
        with(&security, |m| {
            m.insert("correlation_id".into(), Value::Null);
        }),
    ));
    must_fail.push((
        "SECURITY_EVENT: unknown kind".into(),
        with(&security, |m| {
            m.insert("kind".into(), json!("DOS"));
        }),
    ));
    let rejected = to_json(
        &Event::ReattachRejected {
            session_id: sid,
            path: Path::udp("192.0.2.1:1".parse().expect("addr")),
            code: RejectCode::ReplayDetected,
            version: 1,
        },
        1,
        1,
    );
    must_fail.push((
        "REATTACH_REJECTED: reason_code differs from reject_code".into(),
        with(&rejected, |m| {
            m.insert("reason_code".into(), json!("BAD_PROOF"));
        }),
    ));
    let accepted: Vec<&str> = must_fail
        .iter()
        .filter(|(_, v)| validator.is_valid(v))
        .map(|(w, _)| w.as_str())
        .collect();
    assert!(
        accepted.is_empty(),
        "the schema accepts drifted events: {accepted:?}"
    );
    eprintln!(
        "schema: {} events of the writer accepted, {} drifted ones refused",
        2 * samples.len(),
        must_fail.len()
    );
}

// ---------------------------------------------------------------------------------------------
// The grep for secrets
// ---------------------------------------------------------------------------------------------

/// One thing that must not appear, in one encoding.
#[derive(Debug, Clone)]
struct Needle {
    what: String,
    bytes: Vec<u8>,
}

/// Base64 (alphabet `engine`) of `secret` as it appears inside any longer base64 text: for
/// each of the three alignments, the characters that depend on `secret`'s bytes only.
fn base64_forms(engine: &base64::engine::GeneralPurpose, secret: &[u8]) -> Vec<String> {
    (0..3usize)
        .map(|k| {
            let mut buf = vec![0u8; k];
            buf.extend_from_slice(secret);
            let enc = engine.encode(&buf);
            let first = (8 * k).div_ceil(6);
            let last = (8 * (k + secret.len())) / 6;
            enc[first..last].to_owned()
        })
        .collect()
}

/// `secret` raw, in hex (lower, upper, with and without separators), in base64 (standard and
/// URL-safe, any alignment, with or without padding) and as Rust prints a byte array.
fn needles(label: &str, secret: &[u8]) -> Vec<Needle> {
    let mut out = vec![Needle {
        what: format!("{label} (raw)"),
        bytes: secret.to_vec(),
    }];
    let hex: String = secret.iter().map(|b| format!("{b:02x}")).collect();
    let spaced: Vec<String> = secret.iter().map(|b| format!("{b:02x}")).collect();
    for (form, text) in [
        ("hex", hex.clone()),
        ("HEX", hex.to_uppercase()),
        ("hex spaced", spaced.join(" ")),
        ("hex colons", spaced.join(":")),
        ("HEX colons", spaced.join(":").to_uppercase()),
        ("Rust debug", format!("{secret:?}")),
    ] {
        out.push(Needle {
            what: format!("{label} ({form})"),
            bytes: text.into_bytes(),
        });
    }
    for (alphabet, engine) in [("base64", &STANDARD), ("base64url", &URL_SAFE)] {
        for (k, text) in base64_forms(engine, secret).into_iter().enumerate() {
            out.push(Needle {
                what: format!("{label} ({alphabet}, offset {k})"),
                bytes: text.into_bytes(),
            });
        }
    }
    out
}

/// Which needles occur in which haystacks: (haystack, needle) pairs.
fn find(haystacks: &[(String, Vec<u8>)], needles: &[Needle]) -> Vec<(String, String)> {
    let mut hits = Vec::new();
    for (name, hay) in haystacks {
        for n in needles {
            if !n.bytes.is_empty() && hay.windows(n.bytes.len()).any(|w| w == n.bytes.as_slice()) {
                hits.push((name.clone(), n.what.clone()));
            }
        }
    }
    hits
}

/// The grep helper finds what it must: a self-check on text written here (so the real grep
/// below can fail).
fn grep_self_check(dir: &std::path::Path, client_public: &[u8], sid: &str) {
    let mut text = b"noise ".to_vec();
    // The public key inside longer URL-safe base64 at offset 1, the marker in upper-case hex
    // with colons, and the marker raw, in three files.
    let mut shifted = vec![0xa5u8];
    shifted.extend_from_slice(client_public);
    shifted.push(0x5a);
    text.extend_from_slice(URL_SAFE.encode(&shifted).as_bytes());
    let upper: Vec<String> = MARKER.iter().map(|b| format!("{b:02X}")).collect();
    let files = [
        ("selfcheck-key", text),
        (
            "selfcheck-hex",
            format!("x {} y", upper.join(":")).into_bytes(),
        ),
        (
            "selfcheck-raw",
            [b"\x00\xff".as_slice(), MARKER, b"\n"].concat(),
        ),
        (
            "selfcheck-clean",
            format!("{sid} nothing here").into_bytes(),
        ),
    ];
    let mut hay = Vec::new();
    for (name, bytes) in files {
        let p = dir.join(name);
        fs::write(&p, &bytes).expect("write");
        hay.push((name.to_owned(), fs::read(&p).expect("read")));
    }
    let mut n = needles("client public key", client_public);
    n.extend(needles("marker", MARKER));
    let hits = find(&hay, &n);
    for (file, what) in [
        ("selfcheck-key", "client public key (base64url, offset 1)"),
        ("selfcheck-hex", "marker (HEX colons)"),
        ("selfcheck-raw", "marker (raw)"),
    ] {
        assert!(
            hits.iter().any(|(f, w)| f == file && w == what),
            "the grep helper misses {what} in {file}: {hits:?}"
        );
    }
    assert!(
        !hits.iter().any(|(f, _)| f == "selfcheck-clean"),
        "false positive: {hits:?}"
    );
}

// ---------------------------------------------------------------------------------------------
// The run
// ---------------------------------------------------------------------------------------------

/// jumpctl, its whole output kept for the grep; its stdout.
fn jumpctl(net: &Net, captured: &mut Vec<(String, Vec<u8>)>, args: &[&str]) -> String {
    let out = net.jumpctl(args).expect("jumpctl runs");
    let name = format!("jumpctl {}", args.join(" "));
    assert!(
        out.status.success(),
        "{name}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    captured.push((format!("{name} (stdout)"), out.stdout.clone()));
    captured.push((format!("{name} (stderr)"), out.stderr));
    String::from_utf8(out.stdout).expect("jumpctl prints UTF-8")
}

/// What a stopped process wrote: its stdout lines and its stderr file.
fn finished(net: &Net, name: &str, p: &Proc, log: &str) -> Vec<(String, Vec<u8>)> {
    vec![
        (
            format!("{name} stdout"),
            stdout_lines(p).join("\n").into_bytes(),
        ),
        (
            format!("{name} stderr"),
            fs::read(net.dir.join(log)).unwrap_or_default(),
        ),
    ]
}

fn stdout_lines(p: &Proc) -> Vec<String> {
    p.lines.lock().map(|v| v.clone()).unwrap_or_default()
}

/// The checks of SPEC.md sections 8 and 9 on one process's events, in emission order: per
/// session, one correlation id (`n<node>-<session>`), SESSION_STATE_CHANGED versions 1, 2, 3...
/// with no gap or repeat, no other event ahead of the latest state change's version, and a
/// SESSION_TERMINATED that matches the last transition. The failures.
fn session_failures(events: &[Value]) -> Vec<String> {
    let mut bad = Vec::new();
    // session -> (correlation ids seen, latest state-change version, last transition)
    let mut latest: BTreeMap<String, u64> = BTreeMap::new();
    let mut last_change: BTreeMap<String, Value> = BTreeMap::new();
    let mut cids: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (i, e) in events.iter().enumerate() {
        let Some(sid) = e["session_id"].as_str() else {
            if !e["correlation_id"].is_null() {
                bad.push(format!(
                    "event {i}: a correlation id without a session: {e}"
                ));
            }
            continue;
        };
        let cid = e["correlation_id"].as_str().unwrap_or("<none>").to_owned();
        let node = e["node_id"].as_u64().unwrap_or(u64::MAX);
        if cid != format!("n{node}-{sid}") {
            bad.push(format!(
                "event {i}: correlation id {cid} is not n{node}-{sid}: {e}"
            ));
        }
        cids.entry(sid.to_owned()).or_default().insert(cid);
        let name = e["event"].as_str().unwrap_or("?");
        let current = latest.get(sid).copied().unwrap_or(0);
        let version = e["state_version"].as_u64();
        if name == "SESSION_STATE_CHANGED" {
            let v = version.unwrap_or(u64::MAX);
            if v != current + 1 {
                bad.push(format!(
                    "event {i}: session {sid}: SESSION_STATE_CHANGED version {v} after {current} \
                     (a gap or a repeat): {e}"
                ));
            }
            if let Some(prev) = last_change.get(sid) {
                if prev["to_state"] != e["from_state"] {
                    bad.push(format!(
                        "event {i}: session {sid}: from_state {} but the last transition went \
                         to {}: {e}",
                        e["from_state"], prev["to_state"]
                    ));
                }
                if prev["to_state"] == "TERMINATED" {
                    bad.push(format!(
                        "event {i}: session {sid}: a transition after TERMINATED: {e}"
                    ));
                }
            } else if e["from_state"] != "BIRTH" {
                bad.push(format!(
                    "event {i}: session {sid}: the first transition is not from BIRTH: {e}"
                ));
            }
            latest.insert(sid.to_owned(), v);
            last_change.insert(sid.to_owned(), e.clone());
        } else if let Some(v) = version {
            if v > current {
                bad.push(format!(
                    "event {i}: session {sid}: {name} has state_version {v}, ahead of the latest \
                     SESSION_STATE_CHANGED ({current}): {e}"
                ));
            }
            if name == "SESSION_TERMINATED" {
                let last = last_change.get(sid);
                let ok = last.is_some_and(|l| {
                    l["to_state"] == "TERMINATED"
                        && l["reason_code"] == e["reason_code"]
                        && l["state_version"] == e["state_version"]
                });
                if !ok {
                    bad.push(format!(
                        "event {i}: session {sid}: SESSION_TERMINATED does not match the last \
                         transition {last:?}: {e}"
                    ));
                }
            }
        }
    }
    for (sid, c) in cids {
        if c.len() != 1 {
            bad.push(format!("session {sid}: several correlation ids {c:?}"));
        }
    }
    bad
}

/// `session` and `correlation_id` values of one JSON log line: at the top level (flattened
/// event fields), in `fields`, in `span` and in each of `spans`.
fn log_ids(line: &Value) -> (Vec<String>, Vec<String>) {
    let mut scopes = vec![line, &line["fields"], &line["span"]];
    if let Some(spans) = line["spans"].as_array() {
        scopes.extend(spans.iter());
    }
    let mut sessions = Vec::new();
    let mut cids = Vec::new();
    for s in scopes {
        for (key, into) in [("session", &mut sessions), ("correlation_id", &mut cids)] {
            match &s[key] {
                Value::Null => {}
                Value::String(v) => into.push(v.clone()),
                other => into.push(other.to_string()),
            }
        }
    }
    (sessions, cids)
}

/// A full session through the real processes; everything it wrote is checked.
#[test]
fn every_event_matches_the_schema_and_nothing_secret_is_written() {
    if !root_or_skip() {
        return;
    }
    let started = Instant::now();
    let validator = validator();
    let mut net = Net::build("o").expect("topology");
    net.add_attacker().expect("attacker namespace");
    let gw: SocketAddrV4 = GATEWAY.parse().expect("gateway address");
    // In the NAT box: on the gateway the XDP program takes tunnel datagrams before any tap.
    let capture = Capture::start(&net.nat, gw).expect("capture");
    net.start_dataplane().expect("data plane");
    net.configure_control("").expect("configure");
    // Node 7, so a correlation id written with a default node would show; debug logs, so more
    // log lines about sessions (and more text for the grep).
    let cfg = net.dir.join("control.toml");
    let text = fs::read_to_string(&cfg).expect("control.toml");
    fs::write(&cfg, format!("node_id = {NODE}\nlog = \"debug\"\n{text}")).expect("control.toml");
    net.start_control().expect("control");
    net.start_client().expect("client");
    assert!(
        net.client_in_state("ATTACHED", Duration::from_secs(20)),
        "no session:{}",
        net.diagnostics()
    );
    let sid = net.client_status().expect("status")["session_id"]
        .as_str()
        .expect("session id")
        .to_owned();
    let mut jumpctl_out: Vec<(String, Vec<u8>)> = Vec::new();

    // Traffic both ways, and the marked payload.
    let traffic = Traffic::start(&net, Duration::from_millis(10)).expect("traffic");
    assert!(
        traffic.flowing(30, Duration::from_secs(10)),
        "no echoes:{}",
        net.diagnostics()
    );
    let echoed = net
        .send_inner(MARKER, 5, Duration::from_millis(20), Duration::from_secs(2))
        .expect("marker");
    assert!(echoed >= 4, "{echoed} of 5 marked datagrams came back");

    // NAT rebind: the gateway validates the new address, the client reattaches.
    net.nat_rebind().expect("conntrack flush");
    assert!(
        wait_for(Duration::from_secs(10), || {
            of(&net.control_events(), "PATH_SWITCHED").len() == 1
        }),
        "no PATH_SWITCHED after the NAT rebind:{}",
        net.diagnostics()
    );
    assert!(
        traffic.flowing(30, Duration::from_secs(10)),
        "traffic after the rebind"
    );
    // Past switch_cooldown (1 s), the client moves to its second path.
    std::thread::sleep(Duration::from_millis(1300));
    net.switch_and_wait(1, 2);
    assert!(
        traffic.flowing(30, Duration::from_secs(10)),
        "traffic on path 1"
    );
    let echoed = net
        .send_inner(MARKER, 5, Duration::from_millis(20), Duration::from_secs(2))
        .expect("marker");
    assert!(echoed >= 4, "{echoed} of 5 marked datagrams came back");

    // A replay from the attacker namespace: captured data packets (some carry the marker) and
    // reattach requests.
    let captured = capture.stop();
    let data: Vec<Vec<u8>> = captured
        .iter()
        .filter(|c| c.payload.get(1) == Some(&TYPE_DATA))
        .map(|c| c.payload.clone())
        .collect();
    let reattach: Vec<Vec<u8>> = captured
        .iter()
        .filter(|c| c.payload.get(1) == Some(&TYPE_REATTACH_REQUEST))
        .map(|c| c.payload.clone())
        .collect();
    let security_before = of(&net.control_events(), "SECURITY_EVENT").len();
    let mut replay = reattach.clone();
    replay.extend(data.iter().rev().take(100).cloned());
    let (from, _) = net
        .attacker_send(
            gw.into(),
            &replay,
            Duration::from_micros(200),
            Duration::ZERO,
        )
        .expect("replay");
    eprintln!(
        "replayed {} reattach request(s) and {} data packets from {from}",
        reattach.len(),
        replay.len() - reattach.len()
    );
    if !reattach.is_empty() {
        assert!(
            wait_for(Duration::from_secs(5), || {
                of(&net.control_events(), "SECURITY_EVENT").len() > security_before
            }),
            "no SECURITY_EVENT for a replayed reattach request:{}",
            net.diagnostics()
        );
    }

    // An operator rekey.
    let rotated_before = of(&net.control_events(), "KEY_ROTATED").len();
    let said = jumpctl(&net, &mut jumpctl_out, &["rekey", "--all"]);
    eprintln!("jumpctl rekey --all: {}", said.trim());
    assert!(
        wait_for(Duration::from_secs(10), || {
            of(&net.control_events(), "KEY_ROTATED").len() > rotated_before
        }),
        "no KEY_ROTATED after jumpctl rekey --all:{}",
        net.diagnostics()
    );
    assert!(
        traffic.flowing(30, Duration::from_secs(10)),
        "traffic after the rekey"
    );
    let echoed = net
        .send_inner(MARKER, 5, Duration::from_millis(20), Duration::from_secs(2))
        .expect("marker");
    assert!(echoed >= 4, "{echoed} of 5 marked datagrams came back");
    jumpctl(&net, &mut jumpctl_out, &["--json", "session", "show", &sid]);
    jumpctl(&net, &mut jumpctl_out, &["sessions"]);
    jumpctl(&net, &mut jumpctl_out, &["--json", "stats"]);

    // The operator ends the session.
    jumpctl(&net, &mut jumpctl_out, &["session", "kill", &sid]);
    assert!(
        wait_for(Duration::from_secs(5), || {
            of(&net.control_events(), "SESSION_TERMINATED")
                .iter()
                .any(|e| e["session_id"] == sid.as_str())
        }),
        "no SESSION_TERMINATED after jumpctl session kill:{}",
        net.diagnostics()
    );
    let (sent, received) = traffic.stop();
    eprintln!("traffic: {sent} sent, {received} echoed");
    // Everything each process wrote, collected as it stops (a restart truncates its log).
    let mut outputs: Vec<(String, Vec<u8>)> = Vec::new();
    let mut client = net.client.take().expect("client");
    client.stop();
    outputs.extend(finished(&net, "client", &client, "client.log"));
    let events_text = jumpctl(&net, &mut jumpctl_out, &["--json", "events"]);
    let events_session = jumpctl(
        &net,
        &mut jumpctl_out,
        &["--json", "events", "--session", &sid],
    );
    jumpctl(&net, &mut jumpctl_out, &["events"]);

    // A second session, then a control-process restart that has lost its state: the data
    // plane still holds the session, the control process retires it and logs that, about the
    // session (so the log check below has a line to check).
    net.start_client().expect("client again");
    assert!(
        net.client_in_state("ATTACHED", Duration::from_secs(20)),
        "no second session:{}",
        net.diagnostics()
    );
    let sid2 = net.client_status().expect("status")["session_id"]
        .as_str()
        .expect("session id")
        .to_owned();
    let mut control = net.control.take().expect("control");
    control.stop();
    let mut control_lines = stdout_lines(&control);
    let mut control_logs = vec![(
        "control".to_owned(),
        fs::read(net.dir.join("control.log")).expect("control.log"),
    )];
    outputs.extend(finished(&net, "control", &control, "control.log"));
    fs::remove_dir_all(net.dir.join("state")).expect("remove the state");
    net.start_control().expect("control restart");
    let retired = wait_for(Duration::from_secs(10), || {
        fs::read_to_string(net.dir.join("control.log")).is_ok_and(|l| l.contains(&sid2))
    });
    let mut client2 = net.client.take().expect("client");
    client2.stop();
    outputs.extend(finished(&net, "client (second)", &client2, "client.log"));
    let mut control2 = net.control.take().expect("control");
    control2.stop();
    let mut dataplane = net.dataplane.take().expect("data plane");
    dataplane.stop();
    // The stdout readers reach the end of their pipes.
    std::thread::sleep(Duration::from_millis(300));
    control_lines.extend(stdout_lines(&control2));
    control_logs.push((
        "control after restart".to_owned(),
        fs::read(net.dir.join("control.log")).expect("control.log"),
    ));
    outputs.extend(finished(
        &net,
        "control (restarted)",
        &control2,
        "control.log",
    ));
    outputs.extend(finished(&net, "data plane", &dataplane, "dataplane.log"));
    eprintln!(
        "run: {:?}; second session {sid2} named in the restarted control process's log: {retired}",
        started.elapsed()
    );

    let mut failures: Vec<String> = Vec::new();

    // 1. Every event line against the published schema.
    let jumpctl_lines: Vec<String> = events_text
        .lines()
        .chain(events_session.lines())
        .map(str::to_owned)
        .collect();
    failures.extend(invalid_lines(&validator, "control stdout", &control_lines));
    failures.extend(invalid_lines(
        &validator,
        "jumpctl --json events",
        &jumpctl_lines,
    ));
    let events: Vec<Value> = control_lines
        .iter()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    eprintln!(
        "{} event lines from the control process, {} from jumpctl; by kind: {:?}",
        control_lines.len(),
        jumpctl_lines.len(),
        events
            .iter()
            .fold(BTreeMap::<String, usize>::new(), |mut m, e| {
                *m.entry(e["event"].as_str().unwrap_or("?").to_owned())
                    .or_default() += 1;
                m
            })
    );
    // What jumpctl printed is what the control process wrote.
    for line in &jumpctl_lines {
        if let Ok(v) = serde_json::from_str::<Value>(line) {
            if !events.contains(&v) {
                failures.push(format!(
                    "jumpctl printed an event the control process did not write: {line}"
                ));
            }
        }
    }
    if jumpctl_lines.is_empty() {
        failures.push("jumpctl --json events printed nothing".into());
    }

    // 2. The scenario is in the events.
    let mine: Vec<Value> = events
        .iter()
        .filter(|e| e["session_id"] == sid.as_str())
        .cloned()
        .collect();
    let count = |n: &str| of(&mine, n).len();
    for (n, want) in [
        ("SESSION_CREATED", 1..=1),
        ("PATH_SWITCHED", 2..=2),
        ("KEY_ROTATED", 1..=usize::MAX),
        ("SESSION_TERMINATED", 1..=1),
    ] {
        if !want.contains(&count(n)) {
            failures.push(format!(
                "session {sid}: {} {n} event(s), expected {want:?}",
                count(n)
            ));
        }
    }
    let transitions: Vec<(String, String, String)> = of(&mine, "SESSION_STATE_CHANGED")
        .iter()
        .map(|e| {
            (
                e["from_state"].as_str().unwrap_or("?").to_owned(),
                e["to_state"].as_str().unwrap_or("?").to_owned(),
                e["reason_code"].as_str().unwrap_or("?").to_owned(),
            )
        })
        .collect();
    eprintln!("session {sid}: transitions {transitions:?}");
    if transitions.first().map(|t| t.2.as_str()) != Some("HANDSHAKE_OK")
        || transitions.last().map(|t| (t.1.as_str(), t.2.as_str()))
            != Some(("TERMINATED", "OPERATOR_TERMINATED"))
    {
        failures.push(format!(
            "session {sid}: transitions {transitions:?}, expected HANDSHAKE_OK first and \
             OPERATOR_TERMINATED last"
        ));
    }
    for e in of(&mine, "PATH_SWITCHED") {
        if e["reattach_ms"].as_u64().is_none() || e["from_path"] == e["to_path"] {
            failures.push(format!(
                "PATH_SWITCHED without a reattach time or without a change of path: {e}"
            ));
        }
    }
    if !reattach.is_empty()
        && !of(&events, "SECURITY_EVENT")
            .iter()
            .any(|e| e["kind"] == "REPLAY")
    {
        failures.push("no SECURITY_EVENT of kind REPLAY for the replay".into());
    }
    for e in &events {
        if e["node_id"] != events[0]["node_id"]
            || e["policy_version"] != events[0]["policy_version"]
        {
            failures.push(format!(
                "node_id or policy_version changed during the run: {e}"
            ));
        }
    }

    // 3. Versions and correlation ids, per session.
    failures.extend(session_failures(&events));

    // 4. Logs: each JSON log line about a session carries its correlation id. The control
    // process's with its node id; the data plane's with the node id of its own configuration
    // (the harness leaves it at the default), so only the form and the session are checked.
    if events.iter().any(|e| e["node_id"] != NODE) {
        failures.push(format!("an event without node_id {NODE}"));
    }
    let dataplane_log = fs::read(net.dir.join("dataplane.log")).expect("dataplane.log");
    let mut session_lines_total = 0;
    for (name, log, strict) in control_logs
        .iter()
        .map(|(n, l)| (n.as_str(), l, true))
        .chain([("data plane", &dataplane_log, false)])
    {
        let log = String::from_utf8_lossy(log);
        let (mut json_lines, mut session_lines) = (0, 0);
        for line in log.lines() {
            let Ok(v) = serde_json::from_str::<Value>(line) else {
                continue;
            };
            if !v.is_object() {
                continue;
            }
            json_lines += 1;
            let (sessions, cids) = log_ids(&v);
            if sessions.is_empty() {
                continue;
            }
            session_lines += 1;
            for s in &sessions {
                let ok = if strict {
                    cids.contains(&format!("n{NODE}-{s}"))
                } else {
                    cids.iter().any(|c| {
                        c.strip_prefix('n')
                            .and_then(|c| c.split_once('-'))
                            .is_some_and(|(n, id)| n.parse::<u8>().is_ok() && id == s)
                    })
                };
                if !ok {
                    failures.push(format!(
                        "{name} log line about session {s} without its correlation_id \
                         (has {cids:?}): {line}"
                    ));
                }
            }
        }
        eprintln!(
            "{name} log: {json_lines} JSON line(s), {session_lines} about a session (of {} lines)",
            log.lines().count()
        );
        if strict && json_lines == 0 {
            failures.push(format!(
                "the {name} process wrote no JSON log line on stderr (not a terminal: JSON \
                 expected)"
            ));
        }
        if strict {
            session_lines_total += session_lines;
        }
    }
    if session_lines_total == 0 {
        failures.push(
            "no control log line names a session: the correlation id check saw nothing".into(),
        );
    }

    // 5. No key material and no payload in anything any process wrote.
    let secret = |f: &str| {
        let text = fs::read_to_string(net.dir.join(f)).expect("key file");
        *keyfmt::decode(&text).expect("key")
    };
    let (gw_private, cl_private) = (secret("gateway.key"), secret("client.key"));
    let cl_public = *keyfmt::decode(&net.client_public).expect("public key");
    grep_self_check(&net.dir, &cl_public, &sid);
    let mut haystacks = outputs;
    haystacks.extend(jumpctl_out);
    let total: usize = haystacks.iter().map(|(_, h)| h.len()).sum();
    // The grep sees the real output: the session id is in it.
    let sid_hits = find(
        &haystacks,
        &[Needle {
            what: "session id".into(),
            bytes: sid.clone().into_bytes(),
        }],
    );
    assert!(
        sid_hits.iter().any(|(h, _)| h == "control stdout"),
        "the session id is not in the control process's output: the grep would see nothing"
    );
    let mut forbidden = needles("gateway private key", &gw_private);
    forbidden.extend(needles("client private key", &cl_private));
    forbidden.extend(needles("payload marker", MARKER));
    let leaks = find(&haystacks, &forbidden);
    eprintln!(
        "grep: {} needles over {} outputs ({total} bytes): {} hit(s)",
        forbidden.len(),
        haystacks.len(),
        leaks.len()
    );
    for (h, what) in leaks {
        failures.push(format!("{what} appears in {h}"));
    }

    assert!(
        failures.is_empty(),
        "{} failure(s):\n{}",
        failures.len(),
        failures.join("\n")
    );
    eprintln!("observability run: ok in {:?}", started.elapsed());
}
