use super::*;
use proptest::prelude::*;

fn epoch(e: u32) -> EpochMaterial {
    EpochMaterial {
        epoch: e,
        suite: 1,
        send: [1; 32],
        recv: [2; 32],
        ctrl_send: [3; 32],
        ctrl_recv: [4; 32],
        age_ns: 5,
        sent: 6,
    }
}

fn path(s: &str) -> Path {
    Path::udp(s.parse().expect("address"))
}

fn every_request() -> Vec<ToDataplane> {
    let mut window = [0u64; WINDOW_WORDS];
    window[3] = 0xF0;
    vec![
        ToDataplane::Hello,
        ToDataplane::Install(Box::new(Install {
            id: SessionId(0x0100_0000_0000_0007),
            owner: 1,
            inner: "10.99.0.2".parse().expect("ip"),
            keys: KeySetMaterial {
                previous: Some((epoch(1), 77)),
                current: epoch(2),
                next: Some(epoch(3)),
            },
            send_counter: 99,
            window_top: Some(250),
            window,
            active: Some(path("[fd00::2]:4500")),
        })),
        ToDataplane::SetPath {
            id: SessionId(5),
            path: Some(path("192.0.2.1:1")),
        },
        ToDataplane::SetPath {
            id: SessionId(5),
            path: None,
        },
        ToDataplane::NextKeys {
            id: SessionId(5),
            keys: Box::new(epoch(4)),
        },
        ToDataplane::Retire { id: SessionId(5) },
        ToDataplane::Move {
            id: SessionId(5),
            to: 3,
        },
        ToDataplane::RequestRekey { id: SessionId(5) },
        ToDataplane::ListSessions,
        ToDataplane::Stats,
        ToDataplane::Transmit {
            to: "192.0.2.9:51820".parse().expect("addr"),
            datagram: vec![2, 0, 0, 0, 9],
        },
    ]
}

fn every_answer() -> Vec<FromDataplane> {
    let summary = SessionSummary {
        id: SessionId(7),
        owner: 0,
        inner: "fd00:99::2".parse().expect("ip"),
        active: None,
        epoch: 3,
        send_counter: 4,
        rx_packets: 5,
        rx_bytes: 6,
        tx_packets: 7,
        tx_bytes: 8,
        idle_ms: 9,
    };
    let mut ws = WorkerStats {
        cpu: 1,
        rx_datagrams: 10,
        ..WorkerStats::default()
    };
    ws.drops[DropReason::Replay.index()] = 3;
    vec![
        FromDataplane::HelloAck {
            workers: 2,
            backend: Backend::AfXdp,
            sessions: 12,
        },
        FromDataplane::Done,
        FromDataplane::Refused(Refusal::InnerInUse),
        FromDataplane::Sessions {
            sessions: vec![summary.clone(), summary],
            more: true,
        },
        FromDataplane::Stats(Stats {
            backend: Backend::IoUring,
            workers: vec![ws, WorkerStats::default()],
            events_lost: 2,
        }),
        FromDataplane::Event(Event::NewPath {
            id: SessionId(1),
            path: path("198.51.100.4:40000"),
        }),
        FromDataplane::Event(Event::Drops {
            id: SessionId(1),
            reason: DropReason::AuthFailed,
            count: 9,
            source: path("203.0.113.9:4444"),
        }),
        FromDataplane::Event(Event::Refused {
            id: SessionId(1),
            what: RefusedCommand::Update,
        }),
        FromDataplane::ControlDatagram {
            from: "198.51.100.4:40000".parse().expect("addr"),
            received_unix_ns: 1_795_544_675_338_844_678,
            datagram: vec![1; 164],
        },
    ]
}

#[test]
fn requests_round_trip_and_every_truncation_is_refused() {
    for m in every_request() {
        let bytes = m.encode(42);
        let (h, back) = ToDataplane::decode(&bytes).expect("decodes");
        assert_eq!(
            h,
            Header {
                kind: m.kind(),
                seq: 42
            }
        );
        // Key material has no equality (it is secret): compare the encodings.
        assert_eq!(back.encode(42), bytes, "{m:?}");
        for cut in 0..bytes.len() {
            assert!(
                ToDataplane::decode(&bytes[..cut]).is_err(),
                "{m:?} cut at {cut}"
            );
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert_eq!(
            ToDataplane::decode(&longer).err(),
            Some(DecodeError::Trailing(1))
        );
    }
}

#[test]
fn answers_round_trip_and_every_truncation_is_refused() {
    for m in every_answer() {
        let bytes = m.encode(7);
        let (h, back) = FromDataplane::decode(&bytes).expect("decodes");
        assert_eq!((h.seq, back), (7, m.clone()));
        for cut in 0..bytes.len() {
            assert!(
                FromDataplane::decode(&bytes[..cut]).is_err(),
                "{m:?} cut at {cut}"
            );
        }
    }
}

#[test]
fn other_versions_and_foreign_messages_are_named() {
    let mut b = ToDataplane::Hello.encode(1);
    b[3] = 9;
    assert_eq!(ToDataplane::decode(&b).err(), Some(DecodeError::Version(9)));
    assert_eq!(
        ToDataplane::decode(b"XX\0\x01\x01\0\0\0\0\x01").err(),
        Some(DecodeError::BadMagic)
    );
    let mut k = ToDataplane::Hello.encode(1);
    k[4] = 0x7F;
    assert_eq!(ToDataplane::decode(&k).err(), Some(DecodeError::Kind(0x7F)));
    let mut zero = ToDataplane::Retire { id: SessionId(1) }.encode(1);
    let n = zero.len();
    zero[n - 1] = 0;
    assert_eq!(
        ToDataplane::decode(&zero).err(),
        Some(DecodeError::Invalid("session id 0"))
    );
    assert_eq!(
        ToDataplane::decode(&vec![0; MAX_MESSAGE + 1]).err(),
        Some(DecodeError::TooLarge)
    );
}

#[test]
fn key_bytes_never_appear_in_debug_output() {
    let text = format!("{:?}", every_request());
    assert!(!text.contains("[1, 1, 1"), "{text}");
}

proptest! {
    #[test]
    fn arbitrary_bytes_never_panic(body in proptest::collection::vec(any::<u8>(), 0..600), kind in any::<u8>()) {
        let mut msg = ToDataplane::Hello.encode(0);
        msg[4] = kind;
        msg.extend_from_slice(&body);
        let _ = ToDataplane::decode(&msg);
        let _ = FromDataplane::decode(&msg);
    }
}

#[test]
fn canonical_encodings_pass_the_fuzz_oracle_and_seed_the_corpus() {
    let mut all: Vec<Vec<u8>> = every_request().iter().map(|m| m.encode(3)).collect();
    all.extend(every_answer().iter().map(|m| m.encode(4)));
    for bytes in &all {
        fuzz_round_trip(bytes);
    }
    // `JUMPING_WRITE_CORPUS=1 cargo test -p jumping-dataplane-api` refreshes the seeds.
    if std::env::var_os("JUMPING_WRITE_CORPUS").is_some() {
        let dir =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus/dataplane_api");
        std::fs::create_dir_all(&dir).expect("corpus directory");
        for (i, bytes) in all.iter().enumerate() {
            std::fs::write(dir.join(format!("seed-{i:02}")), bytes).expect("write seed");
        }
    }
}
