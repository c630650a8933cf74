use super::*;
use serde_json::json;

const ID: &str = "0123456789abcdef";

fn key() -> String {
    jumping_protocol::keyfmt::encode(&[7u8; 32])
}

fn all_requests() -> Vec<Request> {
    vec![
        Request::Status,
        Request::Sessions,
        Request::SessionShow { id: ID.into() },
        Request::SessionKill { id: ID.into() },
        Request::KeyRevoke { public_key: key() },
        Request::Rekey { id: None },
        Request::Rekey {
            id: Some(ID.into()),
        },
        Request::PolicyShow,
        Request::PolicyReload,
        Request::CoreDrain { core: 3 },
        Request::Stats,
        Request::Events {
            follow: false,
            session: None,
            event: None,
            reason: None,
        },
        Request::Events {
            follow: true,
            session: Some(ID.into()),
            event: Some("PATH_SWITCHED".into()),
            reason: Some("REATTACH_OK".into()),
        },
    ]
}

fn session() -> SessionInfo {
    SessionInfo {
        id: ID.into(),
        state: "ATTACHED".into(),
        version: 4,
        active_path: Some("udp:10.0.0.2:40000".into()),
        owner: 1,
        age_ms: 12_345,
        switches: 2,
        key_epoch: 1,
        client_key_id: "00112233aabbccdd".into(),
        inner: "10.99.0.2".into(),
        rx_packets: 10,
        rx_bytes: 1000,
        tx_packets: 11,
        tx_bytes: 1100,
        last_rx_ms: None,
    }
}

fn all_payloads() -> Vec<Payload> {
    let mut drops = BTreeMap::new();
    drops.insert("replay".to_string(), 3u64);
    vec![
        Payload::Status(Status {
            node_id: 1,
            software_version: "0.1.0".into(),
            uptime_ms: 5,
            policy_version: 2,
            listen: "udp:0.0.0.0:51820".into(),
            sessions_total: 1,
            sessions_by_state: [("ATTACHED".to_string(), 1u64)].into_iter().collect(),
            clients_allowed: 4,
            dataplane: DataplaneStatus {
                connected: true,
                backend: Some("af_xdp".into()),
                workers: 2,
                socket: "/run/jumping/dataplane.sock".into(),
            },
        }),
        Payload::Sessions {
            sessions: vec![session(), session()],
        },
        Payload::Sessions { sessions: vec![] },
        Payload::Session(session()),
        Payload::Killed(Killed {
            id: ID.into(),
            version: 9,
        }),
        Payload::Revoked(Revoked {
            client_key_id: "00112233aabbccdd".into(),
            sessions_terminated: 2,
        }),
        Payload::Rekeyed(Rekeyed { sessions: 7 }),
        Payload::Drained(Drained { core: 1, moved: 5 }),
        Payload::Policy(PolicyInfo {
            policy_version: 3,
            source: "/etc/jumping/policy.toml".into(),
            values: [("recovery_window".to_string(), "30s".to_string())]
                .into_iter()
                .collect(),
            clients_allowed: 4,
        }),
        Payload::PolicyReloaded(PolicyReloaded {
            policy_version: 4,
            clients_allowed: 5,
            changed: vec!["recovery_window".into()],
        }),
        Payload::Stats(StatsInfo {
            control: ControlCounters {
                handshakes: 1,
                reattaches: 2,
                cookies_sent: 3,
                drops: drops.clone(),
                rejects: BTreeMap::new(),
                events_dropped: 4,
                exports: vec![ExportInfo {
                    sink: "syslog_tcp".into(),
                    target: "192.0.2.9:6514".into(),
                    sent: 7,
                    dropped: 8,
                    errors: 1,
                    connected: false,
                }],
            },
            workers: vec![WorkerInfo {
                cpu: 2,
                rx_datagrams: 5,
                drops,
                ..WorkerInfo::default()
            }],
            dataplane_events_lost: 6,
        }),
        Payload::EventsEnd,
    ]
}

#[test]
fn every_request_round_trips() {
    for req in all_requests() {
        let line = encode_request(&req);
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["v"], json!(1), "{line}");
        assert_eq!(v["cmd"], json!(req.name()), "{line}");
        assert_eq!(decode_request(line.as_bytes()).unwrap(), req, "{line}");
        req.validate().unwrap();
    }
}

#[test]
fn request_wire_shape() {
    assert_eq!(
        encode_request(&Request::SessionShow { id: ID.into() }),
        format!(r#"{{"v":1,"cmd":"session_show","id":"{ID}"}}"#)
    );
    assert_eq!(
        encode_request(&Request::CoreDrain { core: 3 }),
        r#"{"v":1,"cmd":"core_drain","core":3}"#
    );
    // Optional fields may be omitted.
    assert_eq!(
        decode_request(br#"{"v":1,"cmd":"events"}"#).unwrap(),
        Request::Events {
            follow: false,
            session: None,
            event: None,
            reason: None
        }
    );
    assert_eq!(
        decode_request(br#"{"cmd":"rekey","v":1}"#).unwrap(),
        Request::Rekey { id: None }
    );
}

#[test]
fn every_payload_round_trips() {
    for p in all_payloads() {
        for r in [Ok(p.clone()), Err(ApiError::new(ErrorCode::NotFound, "x"))] {
            let line = encode_response(&r);
            assert_eq!(decode_response(line.as_bytes()).unwrap(), r, "{line}");
        }
        let line = encode_response(&Ok(p.clone()));
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["v"], json!(1));
        assert!(v["ok"]["kind"].is_string(), "{line}");
        assert!(v.get("error").is_none(), "{line}");
    }
}

#[test]
fn response_wire_shape() {
    assert_eq!(
        encode_response(&Ok(Payload::EventsEnd)),
        r#"{"v":1,"ok":{"kind":"events_end"}}"#
    );
    assert_eq!(
        encode_response(&Ok(Payload::Rekeyed(Rekeyed { sessions: 2 }))),
        r#"{"v":1,"ok":{"kind":"rekeyed","sessions":2}}"#
    );
    assert_eq!(
        encode_response(&Err(ApiError::new(ErrorCode::BadArgument, "m"))),
        r#"{"v":1,"error":{"code":"bad_argument","message":"m"}}"#
    );
    for (code, name) in [
        (ErrorCode::BadRequest, "bad_request"),
        (ErrorCode::BadArgument, "bad_argument"),
        (ErrorCode::Version, "version"),
        (ErrorCode::NotFound, "not_found"),
        (ErrorCode::PermissionDenied, "permission_denied"),
        (ErrorCode::Unavailable, "unavailable"),
        (ErrorCode::Internal, "internal"),
    ] {
        assert_eq!(serde_json::to_value(code).unwrap(), json!(name));
        assert_eq!(code.as_str(), name);
    }
}

#[test]
fn malformed_responses_are_rejected() {
    assert!(decode_response(b"{}").is_err());
    assert!(decode_response(br#"{"v":1}"#).is_err());
    assert!(decode_response(
        br#"{"v":1,"ok":{"kind":"events_end"},"error":{"code":"internal","message":""}}"#
    )
    .is_err());
    assert!(decode_response(br#"{"v":2,"ok":{"kind":"events_end"}}"#).is_err());
    assert!(decode_response(br#"{"v":1,"ok":{"kind":"nonsense"}}"#).is_err());
}

#[test]
fn version_mismatch() {
    for line in [
        r#"{"v":2,"cmd":"status"}"#,
        r#"{"v":0,"cmd":"status"}"#,
        r#"{"v":"1","cmd":"status"}"#,
        r#"{"v":2,"cmd":"a_command_of_version_2"}"#,
    ] {
        let e = decode_request(line.as_bytes()).unwrap_err();
        assert_eq!(e.code, ErrorCode::Version, "{line}");
        assert!(e.message.contains("version 1"), "{}", e.message);
    }
    assert_eq!(
        decode_request(br#"{"cmd":"status"}"#).unwrap_err().code,
        ErrorCode::BadRequest
    );
}

#[test]
fn bad_requests() {
    for line in [
        "",
        "garbage",
        "[1,2]",
        r#"{"v":1}"#,
        r#"{"v":1,"cmd":"frobnicate"}"#,
        r#"{"v":1,"cmd":"session_show"}"#,
        r#"{"v":1,"cmd":"session_show","id":5}"#,
        r#"{"v":1,"cmd":"core_drain","core":300}"#,
        r#"{"v":1,"cmd":"session_show","id":"0123456789abcdef","extra":1}"#,
    ] {
        assert_eq!(
            decode_request(line.as_bytes()).unwrap_err().code,
            ErrorCode::BadRequest,
            "{line}"
        );
    }
}

#[test]
fn session_ids() {
    assert_eq!(parse_session_id(ID).unwrap(), 0x0123_4567_89ab_cdef);
    assert_eq!(parse_session_id("FFFFFFFFFFFFFFFF").unwrap(), u64::MAX);
    assert_eq!(format_session_id(0xab), "00000000000000ab");
    for (bad, hint) in [
        ("", "0 hex digits"),
        ("0123456789abcde", "15 hex digits"),
        ("0123456789abcdef0", "17 hex digits"),
        ("0123456789abcdeg", "non-hex character 'g' at position 15"),
        ("0x23456789abcdef", "non-hex character 'x'"),
        ("+123456789abcdef", "non-hex character '+'"),
        (" 123456789abcdef", "non-hex"),
    ] {
        let e = parse_session_id(bad).unwrap_err();
        assert_eq!(e.arg, "session id");
        assert!(e.message.contains(hint), "{bad:?}: {}", e.message);
        assert!(e.message.contains("16"), "{}", e.message);
    }
}

#[test]
fn public_keys() {
    assert_eq!(parse_public_key(&key()).unwrap(), [7u8; 32]);
    for bad in ["", "not base64!", "AAAA", &key()[..40]] {
        let e = parse_public_key(bad).unwrap_err();
        assert_eq!(e.arg, "public key");
    }
    // Not echoed: it might be a private key.
    let secret = jumping_protocol::keyfmt::encode(&[9u8; 32]);
    let e = parse_public_key(&format!("{secret}x")).unwrap_err();
    assert!(!e.to_string().contains(&secret[..20]), "{e}");
}

#[test]
fn event_names_and_reasons() {
    for n in EVENT_NAMES {
        assert_eq!(parse_event_name(n).unwrap(), n);
    }
    let e = parse_event_name("SESSION_EXPLODED").unwrap_err();
    assert_eq!(e.arg, "event");
    assert!(e.message.contains("SESSION_TERMINATED"), "{}", e.message);
    let e = parse_event_name("path_switched").unwrap_err();
    assert!(
        e.message.contains("did you mean PATH_SWITCHED"),
        "{}",
        e.message
    );
    assert!(parse_reason_code("REATTACH_OK").is_ok());
    for bad in ["", "reattach_ok", "A B", &"A".repeat(65)] {
        assert_eq!(parse_reason_code(bad).unwrap_err().arg, "reason");
    }
}

#[test]
fn validate_checks_every_argument() {
    let bad = [
        Request::SessionShow { id: "12".into() },
        Request::SessionKill { id: "zz".into() },
        Request::Rekey {
            id: Some("1".into()),
        },
        Request::KeyRevoke {
            public_key: "x".into(),
        },
        Request::Events {
            follow: false,
            session: Some("1".into()),
            event: None,
            reason: None,
        },
        Request::Events {
            follow: false,
            session: None,
            event: Some("NOPE".into()),
            reason: None,
        },
        Request::Events {
            follow: true,
            session: None,
            event: None,
            reason: Some("lower".into()),
        },
    ];
    for r in bad {
        let e = r.validate().unwrap_err();
        let api: ApiError = e.into();
        assert_eq!(api.code, ErrorCode::BadArgument, "{r:?}");
    }
}
