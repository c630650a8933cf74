//! Seed-corpus generator for the fuzz targets.
//!
//! Random bytes never pass mac1 or an AEAD tag, so the fuzzers need real messages to start
//! from. This example builds them with the protocol crate's public API and the fixed identities
//! of `jumping_protocol::fuzzing::identities()`:
//!
//! - `gateway_datagrams`: it mirrors the gateway inside `fuzzing::gateway_datagrams` exactly
//!   (same config, RNG seed, clock and path per datagram), and drives a real client against
//!   it, so every recorded datagram is valid *for the fuzzed gateway*: a whole session
//!   (handshake, data, heartbeat, reattach with path validation, NAT rebind, rekey, terminate)
//!   fits in one input, plus cookie, replay and forged variants.
//! - `client_datagrams`: likewise it mirrors the client inside `fuzzing::client_datagrams`
//!   (same RNG seed, same `connect`), answers its initiation with a real gateway and records
//!   what that gateway sends back.
//! - `wire_parse`: one message of every type, minimal well-formed layouts, truncated and
//!   corrupted variants.
//!
//! Run it from the workspace root:
//!
//! ```text
//! cargo +nightly run --manifest-path fuzz/Cargo.toml --example gen_corpus [-- <corpus dir>]
//! ```
//!
//! It writes `seed-*` files into `<corpus dir>/<target>/` (default `fuzz/corpus`), overwriting
//! files of the same name and leaving others alone. The output is deterministic for a given
//! CPU (the client prefers AES-GCM or ChaCha20-Poly1305 depending on the CPU).

use std::collections::BTreeMap;
use std::path::PathBuf;

use jumping_protocol::client::{Client, ClientConfig, ClientOutput, ClientTransmit, LocalPath};
use jumping_protocol::cookie::{mac1, mac1_key};
use jumping_protocol::crypto::CipherSuite;
use jumping_protocol::gateway::{Gateway, GatewayConfig, Output, Transmit};
use jumping_protocol::handshake::{InitPayload, Initiator, Purpose};
use jumping_protocol::wire::{
    self, emit_cookie_reply, emit_reattach_common, emit_reattach_request, put_transport_header,
    HandshakeInit, HandshakeResponse, MessageType, ReattachRequestFields, SessionId,
    DATA_HEADER_LEN, HANDSHAKE_INIT_LEN, HANDSHAKE_RESPONSE_LEN, HEARTBEAT_PLAINTEXT_LEN,
    REATTACH_ACK_LEN, REATTACH_CHALLENGE_LEN, REATTACH_REJECT_LEN, REATTACH_RESPONSE_LEN, TAG_LEN,
    TERMINATE_PLAINTEXT_LEN,
};
use jumping_protocol::{fuzzing, Instant, Path, Policy};
use rand_chacha::rand_core::SeedableRng;
use rand_chacha::ChaCha20Rng;

/// The datagram separator of `fuzzing::gateway_datagrams` and `fuzzing::client_datagrams`.
const SEP: &[u8] = b"\xffJMP";

/// Inputs per target, by file name.
type Corpus = BTreeMap<String, Vec<u8>>;

fn addr(parity: usize) -> Path {
    if parity.is_multiple_of(2) {
        Path::udp("192.0.2.1:1000".parse().expect("literal address"))
    } else {
        Path::udp("192.0.2.2:2000".parse().expect("literal address"))
    }
}

fn parity_of(p: Path) -> usize {
    usize::from(p != addr(0))
}

fn at(i: usize) -> Instant {
    Instant::from_millis(i as u64 * 100)
}

/// Join datagrams with [`SEP`], checking the fuzzing entry point will split them back the same.
fn join(chunks: &[Vec<u8>]) -> Vec<u8> {
    let mut out = Vec::new();
    for (i, c) in chunks.iter().enumerate() {
        assert!(
            !c.windows(SEP.len()).any(|w| w == SEP),
            "datagram {i} contains the separator; pick another seed"
        );
        if i > 0 {
            out.extend_from_slice(SEP);
        }
        out.extend_from_slice(c);
    }
    out
}

fn label(o: &Output<'_>) -> String {
    match o {
        Output::Deliver { packet, .. } => format!("deliver({})", packet.len()),
        Output::Consumed => "consumed".into(),
        Output::Dropped(r) => format!("dropped({})", r.as_str()),
    }
}

/// The gateway of `fuzzing::gateway_datagrams`, mirrored call for call, recording its input.
struct GatewayInput {
    g: Gateway<ChaCha20Rng>,
    chunks: Vec<Vec<u8>>,
    log: Vec<String>,
}

impl GatewayInput {
    fn new() -> Self {
        let g = fuzzing::gateway();
        GatewayInput {
            g,
            chunks: Vec::new(),
            log: Vec::new(),
        }
    }

    /// When the next datagram will be delivered.
    fn now(&self) -> Instant {
        at(self.chunks.len())
    }

    /// Deliver the next datagram (from the address its index selects); what the gateway sent.
    fn push(&mut self, bytes: &[u8]) -> Vec<Transmit> {
        let i = self.chunks.len();
        self.chunks.push(bytes.to_vec());
        let mut buf = bytes.to_vec();
        let now = at(i);
        let out = self.g.handle_datagram(now, addr(i), &mut buf);
        if !bytes.is_empty() {
            let ty = bytes
                .get(1)
                .and_then(|&t| MessageType::from_u8(t))
                .map_or("?", MessageType::as_str);
            self.log.push(format!("#{i} {ty}: {}", label(&out)));
        }
        let mut tx = Vec::new();
        while let Some(t) = self.g.poll_transmit() {
            tx.push(t);
        }
        while self.g.poll_event().is_some() {}
        // In the fuzzing function, what the timers send is drained (and dropped) at the next
        // datagram; collecting it here does not change the gateway's state.
        self.g.handle_timeout(now);
        while let Some(t) = self.g.poll_transmit() {
            tx.push(t);
        }
        while self.g.poll_event().is_some() {}
        tx
    }

    /// Deliver `bytes` from address `parity`, after empty datagrams if needed to get there.
    fn send(&mut self, parity: usize, bytes: &[u8]) -> Vec<Transmit> {
        if self.chunks.len() % 2 != parity % 2 {
            self.push(&[]);
        }
        self.push(bytes)
    }

    /// Let time pass: empty datagrams until `n` datagrams were delivered.
    fn pad_to(&mut self, n: usize) {
        while self.chunks.len() < n {
            self.push(&[]);
        }
    }

    fn pad(&mut self, n: usize) {
        self.pad_to(self.chunks.len() + n);
    }

    fn finish(self, name: &str, corpus: &mut Corpus) {
        println!(
            "gateway_datagrams/{name}: {} datagrams; {}",
            self.chunks.len(),
            self.log.join(", ")
        );
        corpus.insert(name.into(), join(&self.chunks));
    }
}

/// The client of `fuzzing::client_datagrams`, mirrored call for call, recording its input.
struct ClientInput {
    c: Client<ChaCha20Rng>,
    chunks: Vec<Vec<u8>>,
    log: Vec<String>,
}

impl ClientInput {
    /// The mirrored client and the initiation it sent from `connect`.
    fn new() -> (Self, Vec<u8>) {
        let mut c = fuzzing::client();
        let init = c
            .poll_transmit()
            .expect("connect sends an initiation")
            .payload;
        (
            ClientInput {
                c,
                chunks: Vec::new(),
                log: Vec::new(),
            },
            init,
        )
    }

    fn now(&self) -> Instant {
        at(self.chunks.len())
    }

    fn push(&mut self, bytes: &[u8]) -> Vec<ClientTransmit> {
        let i = self.chunks.len();
        self.chunks.push(bytes.to_vec());
        let mut buf = bytes.to_vec();
        let now = at(i);
        let out = self
            .c
            .handle_datagram(now, LocalPath((i % 2) as u32), &mut buf);
        if !bytes.is_empty() {
            let ty = bytes
                .get(1)
                .and_then(|&t| MessageType::from_u8(t))
                .map_or("?", MessageType::as_str);
            let out = match out {
                ClientOutput::Deliver(p) => format!("deliver({})", p.len()),
                ClientOutput::Consumed => "consumed".into(),
                ClientOutput::Dropped(r) => format!("dropped({r})"),
            };
            self.log.push(format!("#{i} {ty}: {out}"));
        }
        let mut tx = Vec::new();
        while let Some(t) = self.c.poll_transmit() {
            tx.push(t);
        }
        while self.c.poll_event().is_some() {}
        self.c.handle_timeout(now);
        while let Some(t) = self.c.poll_transmit() {
            tx.push(t);
        }
        while self.c.poll_event().is_some() {}
        tx
    }

    fn send(&mut self, parity: usize, bytes: &[u8]) -> Vec<ClientTransmit> {
        if self.chunks.len() % 2 != parity % 2 {
            self.push(&[]);
        }
        self.push(bytes)
    }

    /// Empty datagrams until `n` were delivered; everything the client sent meanwhile.
    fn pad_to(&mut self, n: usize) -> Vec<ClientTransmit> {
        let mut tx = Vec::new();
        while self.chunks.len() < n {
            tx.extend(self.push(&[]));
        }
        tx
    }

    fn finish(self, name: &str, corpus: &mut Corpus) {
        println!(
            "client_datagrams/{name}: {} datagrams; {}",
            self.chunks.len(),
            self.log.join(", ")
        );
        corpus.insert(name.into(), join(&self.chunks));
    }
}

/// A real client of the fuzzing gateway identity (the peer of [`GatewayInput`]).
fn peer_client(seed: u64, suite: CipherSuite) -> Client<ChaCha20Rng> {
    let (gw, client) = fuzzing::identities();
    let mut cfg = ClientConfig::new(client, gw.public());
    cfg.suite = suite;
    Client::new(cfg, ChaCha20Rng::seed_from_u64(seed))
}

/// A real gateway with the fuzzing identity (the peer of [`ClientInput`]).
fn peer_gateway(seed: u64, cookie_threshold: u32) -> Gateway<ChaCha20Rng> {
    let (gw, client) = fuzzing::identities();
    let mut g = Gateway::new(
        GatewayConfig {
            cookie_threshold,
            ..GatewayConfig::default()
        },
        Policy::default(),
        gw,
        ChaCha20Rng::seed_from_u64(seed),
        Instant::ZERO,
    )
    .expect("default policy is valid");
    g.allow_client(client.public());
    g
}

/// Everything a peer gateway has to send.
fn drain_gateway(g: &mut Gateway<ChaCha20Rng>) -> Vec<Transmit> {
    let mut v = Vec::new();
    while let Some(t) = g.poll_transmit() {
        v.push(t);
    }
    while g.poll_event().is_some() {}
    v
}

/// Everything a peer client has to send.
fn drain_client(c: &mut Client<ChaCha20Rng>) -> Vec<ClientTransmit> {
    let mut v = Vec::new();
    while let Some(t) = c.poll_transmit() {
        v.push(t);
    }
    while c.poll_event().is_some() {}
    v
}

fn only<T>(mut v: Vec<T>, what: &str) -> T {
    assert!(!v.is_empty(), "expected {what}, got nothing");
    v.remove(0)
}

fn of_type(v: &[Transmit], ty: MessageType) -> Option<Vec<u8>> {
    v.iter()
        .find(|t| t.payload.get(1) == Some(&(ty as u8)))
        .map(|t| t.payload.clone())
}

fn of_type_c(v: &[ClientTransmit], ty: MessageType) -> Option<ClientTransmit> {
    v.iter()
        .find(|t| t.payload.get(1) == Some(&(ty as u8)))
        .cloned()
}

/// Seal an inner packet with a peer client.
fn client_data(c: &mut Client<ChaCha20Rng>, now: Instant, inner: &[u8]) -> (LocalPath, Vec<u8>) {
    let mut buf = vec![0u8; DATA_HEADER_LEN + inner.len() + TAG_LEN];
    buf[DATA_HEADER_LEN..DATA_HEADER_LEN + inner.len()].copy_from_slice(inner);
    let (via, n) = c
        .encapsulate(now, &mut buf, inner.len())
        .expect("client is established");
    buf.truncate(n);
    (via, buf)
}

/// Seal an inner packet with a peer gateway.
fn gateway_data(g: &mut Gateway<ChaCha20Rng>, sid: SessionId, inner: &[u8]) -> (Path, Vec<u8>) {
    let mut buf = vec![0u8; DATA_HEADER_LEN + inner.len() + TAG_LEN];
    buf[DATA_HEADER_LEN..DATA_HEADER_LEN + inner.len()].copy_from_slice(inner);
    let (dst, n) = g
        .encapsulate(sid, &mut buf, inner.len())
        .expect("session is live");
    buf.truncate(n);
    (dst, buf)
}

/// An IPv4 header-ish inner packet.
fn inner_packet(len: usize) -> Vec<u8> {
    let mut p = vec![0u8; len];
    if len >= 20 {
        p[0] = 0x45;
        p[2..4].copy_from_slice(&(len as u16).to_be_bytes());
        p[8] = 64;
        p[9] = 17;
        p[12..16].copy_from_slice(&[10, 77, 0, 2]);
        p[16..20].copy_from_slice(&[10, 77, 0, 1]);
    }
    for (i, b) in p.iter_mut().enumerate().skip(20) {
        *b = i as u8;
    }
    p
}

/// Minimal well-formed layouts of every message type (authentication fails, the layout parses).
fn minimal_layouts(sid: SessionId) -> Vec<(&'static str, Vec<u8>)> {
    let mut v = Vec::new();
    let mut init = vec![0u8; HANDSHAKE_INIT_LEN];
    init[0] = wire::VERSION;
    init[1] = MessageType::HandshakeInit as u8;
    v.push(("min-handshake-init", init));
    let mut resp = vec![0u8; HANDSHAKE_RESPONSE_LEN];
    resp[0] = wire::VERSION;
    resp[1] = MessageType::HandshakeResponse as u8;
    v.push(("min-handshake-response", resp));
    v.push((
        "min-cookie-reply",
        emit_cookie_reply(7, &[1; 24], &[2; 32]).to_vec(),
    ));
    for (name, ty, plain) in [
        ("min-data", MessageType::Data, 0),
        ("min-data-payload", MessageType::Data, 20),
        (
            "min-heartbeat",
            MessageType::Heartbeat,
            HEARTBEAT_PLAINTEXT_LEN,
        ),
        (
            "min-terminate",
            MessageType::Terminate,
            TERMINATE_PLAINTEXT_LEN,
        ),
    ] {
        let mut m = vec![0u8; DATA_HEADER_LEN + plain + TAG_LEN];
        put_transport_header(&mut m, ty, 0, sid, 1);
        v.push((name, m));
    }
    let req = emit_reattach_request(&ReattachRequestFields {
        epoch: 0,
        session_id: sid,
        counter: 1,
        client_time_ms: 100,
        transport: 1,
        challenge_echo: [0; 16],
    });
    v.push(("min-reattach-request", req.to_vec()));
    let ch: [u8; REATTACH_CHALLENGE_LEN] =
        emit_reattach_common(MessageType::ReattachChallenge, 0, sid, 0);
    v.push(("min-reattach-challenge", ch.to_vec()));
    let rs: [u8; REATTACH_RESPONSE_LEN] =
        emit_reattach_common(MessageType::ReattachResponse, 0, sid, 1);
    v.push(("min-reattach-response", rs.to_vec()));
    let ack: [u8; REATTACH_ACK_LEN] = emit_reattach_common(MessageType::ReattachAck, 0, sid, 1);
    v.push(("min-reattach-ack", ack.to_vec()));
    let mut rej: [u8; REATTACH_REJECT_LEN] =
        emit_reattach_common(MessageType::ReattachReject, 0, sid, 1);
    rej[20] = 1;
    v.push(("min-reattach-reject", rej.to_vec()));
    v
}

/// An initiation for the fuzzing gateway whose Noise part is corrupted but whose mac1 is valid,
/// so it reaches the Noise decryption.
fn init_with_bad_noise(init: &[u8]) -> Vec<u8> {
    let (gw, _) = fuzzing::identities();
    let mut m = init.to_vec();
    m[40] ^= 0x01;
    let mac = mac1(&mac1_key(&gw.public()), &m[..HandshakeInit::MAC1_OFFSET]);
    m[HandshakeInit::MAC1_OFFSET..HandshakeInit::MAC2_OFFSET].copy_from_slice(&mac);
    m
}

/// A response for the fuzzing client whose Noise part is corrupted but whose mac1 is valid.
fn response_with_bad_noise(resp: &[u8]) -> Vec<u8> {
    let (_, client) = fuzzing::identities();
    let mut m = resp.to_vec();
    m[50] ^= 0x01;
    let mac = mac1(
        &mac1_key(&client.public()),
        &m[..HandshakeResponse::MAC1_OFFSET],
    );
    m[HandshakeResponse::MAC1_OFFSET..HandshakeResponse::MAC2_OFFSET].copy_from_slice(&mac);
    m
}

/// Seeds of `gateway_datagrams`; also feeds every distinct message into `wire`.
fn gateway_seeds(out: &mut Corpus, wire: &mut Corpus) {
    let suites = [
        ("aes", CipherSuite::Aes256Gcm),
        ("chacha", CipherSuite::ChaCha20Poly1305),
    ];

    // A valid initiation alone, built directly with `Initiator::start`.
    let (gw, client) = fuzzing::identities();
    let mut rng = ChaCha20Rng::seed_from_u64(9);
    let payload = InitPayload {
        timestamp: 1,
        purpose: Purpose::NewSession,
        suite: CipherSuite::ChaCha20Poly1305,
    };
    let init =
        Initiator::start(&mut rng, &client, &gw.public(), payload, None).expect("initiator starts");
    let init = init.message().to_vec();
    let mut gi = GatewayInput::new();
    let resp = only(gi.send(0, &init), "a handshake response");
    assert_eq!(
        gi.g.counters().handshakes,
        1,
        "the initiation must be accepted"
    );
    gi.finish("seed-init", out);
    wire.insert("seed-handshake-init".into(), init.clone());
    wire.insert("seed-handshake-response".into(), resp.payload.clone());

    // Initiation variants: truncated, bad mac1, bad Noise under a valid mac1, reserved epoch,
    // rekey of an unknown session.
    let mut gi = GatewayInput::new();
    gi.push(&init[..init.len() - 1]);
    let mut bad = init.clone();
    bad[HandshakeInit::MAC1_OFFSET] ^= 1;
    gi.push(&bad);
    gi.push(&init_with_bad_noise(&init));
    let mut reserved = init.clone();
    reserved[3] = 1;
    gi.push(&reserved);
    let rekey = InitPayload {
        timestamp: 5,
        purpose: Purpose::Rekey(SessionId(0x1234)),
        suite: CipherSuite::Aes256Gcm,
    };
    let rekey =
        Initiator::start(&mut rng, &client, &gw.public(), rekey, None).expect("initiator starts");
    gi.push(rekey.message());
    gi.push(&init);
    gi.finish("seed-init-variants", out);
    wire.insert(
        "seed-handshake-init-bad-noise".into(),
        init_with_bad_noise(&init),
    );

    for (sname, suite) in suites {
        // A whole session: handshake, data, heartbeat, reattach to the second address with a
        // challenge, NAT rebind back to the first answered by an echoing request, replayed
        // request, stale request, terminate.
        let mut gi = GatewayInput::new();
        let mut c = peer_client(3, suite);
        c.connect(gi.now(), LocalPath(0), 1_000);
        let init = only(drain_client(&mut c), "an initiation");
        let resp = of_type(&gi.send(0, &init.payload), MessageType::HandshakeResponse)
            .expect("a response");
        let _ = c.handle_datagram(gi.now(), LocalPath(0), &mut resp.clone());
        drain_client(&mut c);
        let (_, d) = client_data(&mut c, gi.now(), &inner_packet(60));
        gi.send(0, &d);
        wire.insert(format!("seed-data-{sname}"), d.clone());
        gi.pad(10);
        c.handle_timeout(gi.now());
        let hb = of_type_c(&drain_client(&mut c), MessageType::Heartbeat).expect("a heartbeat");
        let echo =
            of_type(&gi.send(0, &hb.payload), MessageType::Heartbeat).expect("a heartbeat echo");
        let _ = c.handle_datagram(gi.now(), LocalPath(0), &mut echo.clone());
        wire.insert(format!("seed-heartbeat-{sname}"), hb.payload.clone());
        // Reattach to address 1.
        c.reattach(gi.now(), LocalPath(1));
        let req = only(drain_client(&mut c), "a reattach request");
        wire.insert(
            format!("seed-reattach-request-{sname}"),
            req.payload.clone(),
        );
        let ch = of_type(&gi.send(1, &req.payload), MessageType::ReattachChallenge)
            .expect("a challenge");
        wire.insert(format!("seed-reattach-challenge-{sname}"), ch.clone());
        let _ = c.handle_datagram(gi.now(), LocalPath(1), &mut ch.clone());
        let rs = only(drain_client(&mut c), "a reattach response");
        wire.insert(
            format!("seed-reattach-response-{sname}"),
            rs.payload.clone(),
        );
        let ack = of_type(&gi.send(1, &rs.payload), MessageType::ReattachAck).expect("an ack");
        wire.insert(format!("seed-reattach-ack-{sname}"), ack.clone());
        let _ = c.handle_datagram(gi.now(), LocalPath(1), &mut ack.clone());
        drain_client(&mut c);
        let (via, d) = client_data(&mut c, gi.now(), &inner_packet(20));
        assert_eq!(via, LocalPath(1));
        gi.send(1, &d);
        // The replayed request.
        gi.send(1, &req.payload);
        // NAT rebind: the client's packets now arrive from address 0.
        gi.pad(12);
        let (_, d) = client_data(&mut c, gi.now(), &inner_packet(40));
        let ch = of_type(&gi.send(0, &d), MessageType::ReattachChallenge)
            .expect("an unsolicited challenge");
        // The client still sends on (and receives at) its local path 1; only the address the
        // gateway sees changed.
        let _ = c.handle_datagram(gi.now(), LocalPath(1), &mut ch.clone());
        let req2 = of_type_c(&drain_client(&mut c), MessageType::ReattachRequest)
            .expect("an echoing request");
        let ack = gi.send(0, &req2.payload);
        if let Some(ack) = of_type(&ack, MessageType::ReattachAck) {
            let _ = c.handle_datagram(gi.now(), LocalPath(1), &mut ack.clone());
        }
        drain_client(&mut c);
        // A request whose client time is far off (stale), then terminate.
        c.reattach(gi.now() + core::time::Duration::from_secs(30), LocalPath(1));
        let stale = only(drain_client(&mut c), "a reattach request");
        let rej =
            of_type(&gi.send(1, &stale.payload), MessageType::ReattachReject).expect("a reject");
        wire.insert(format!("seed-reattach-reject-{sname}"), rej);
        c.terminate(gi.now());
        let t = only(drain_client(&mut c), "a terminate");
        wire.insert(format!("seed-terminate-{sname}"), t.payload.clone());
        gi.send(t.via.0 as usize, &t.payload);
        // After the end: data for the terminated session.
        gi.send(0, &d);
        assert!(
            gi.g.counters().reattaches >= 1,
            "the session script must reattach"
        );
        gi.finish(&format!("seed-session-{sname}"), out);

        // Rekey: the client's key epoch ages past rekey_after; data under the new epoch.
        let mut gi = GatewayInput::new();
        let mut c = peer_client(4, suite);
        c.connect(gi.now(), LocalPath(0), 1_000);
        let init = only(drain_client(&mut c), "an initiation");
        let resp = of_type(&gi.send(0, &init.payload), MessageType::HandshakeResponse)
            .expect("a response");
        let _ = c.handle_datagram(gi.now(), LocalPath(0), &mut resp.clone());
        drain_client(&mut c);
        let (_, d) = client_data(&mut c, gi.now(), &inner_packet(28));
        gi.send(0, &d);
        let later = Instant::from_millis(121_000);
        c.handle_timeout(later);
        let tx = drain_client(&mut c);
        let rk = of_type_c(&tx, MessageType::HandshakeInit).expect("a rekey initiation");
        if let Some(hb) = of_type_c(&tx, MessageType::Heartbeat) {
            gi.send(0, &hb.payload);
        }
        let resp = of_type(&gi.send(0, &rk.payload), MessageType::HandshakeResponse)
            .expect("a rekey response");
        let _ = c.handle_datagram(later, LocalPath(0), &mut resp.clone());
        drain_client(&mut c);
        let (_, d2) = client_data(&mut c, later, &inner_packet(28));
        gi.send(0, &d2);
        // Both data packets again: replays under the previous and the current epoch.
        gi.send(0, &d);
        gi.send(0, &d2);
        assert_eq!(gi.g.counters().handshakes, 2, "rekey must complete");
        gi.finish(&format!("seed-rekey-{sname}"), out);
    }

    // Under load: the fifth initiation within a second gets a cookie reply; the client's retry
    // carries mac2 and passes while the gateway is still loaded.
    let mut gi = GatewayInput::new();
    let mut c = peer_client(5, CipherSuite::ChaCha20Poly1305);
    c.connect(gi.now(), LocalPath(0), 1_000);
    let init = only(drain_client(&mut c), "an initiation");
    let mut cookie = None;
    for _ in 0..5 {
        cookie = of_type(&gi.send(0, &init.payload), MessageType::CookieReply).or(cookie);
    }
    let cookie = cookie.expect("a cookie reply");
    wire.insert("seed-cookie-reply".into(), cookie.clone());
    let _ = c.handle_datagram(gi.now(), LocalPath(0), &mut cookie.clone());
    gi.pad_to(10);
    for _ in 0..4 {
        gi.send(0, &init.payload);
    }
    c.handle_timeout(gi.now());
    let retry =
        of_type_c(&drain_client(&mut c), MessageType::HandshakeInit).expect("a retried initiation");
    wire.insert("seed-handshake-init-mac2".into(), retry.payload.clone());
    let resp =
        of_type(&gi.send(0, &retry.payload), MessageType::HandshakeResponse).expect("a response");
    let _ = c.handle_datagram(gi.now(), LocalPath(0), &mut resp.clone());
    drain_client(&mut c);
    let (_, d) = client_data(&mut c, gi.now(), &inner_packet(20));
    gi.send(0, &d);
    assert_eq!(
        gi.g.counters().handshakes,
        2,
        "the mac2 retry must be accepted"
    );
    gi.finish("seed-cookie", out);

    // A valid session, then forged messages carrying its SessionId, each message type, and the
    // same truncated: they reach the session lookup, key, replay and MAC checks.
    let mut gi = GatewayInput::new();
    let mut c = peer_client(6, CipherSuite::Aes256Gcm);
    c.connect(gi.now(), LocalPath(0), 1_000);
    let init = only(drain_client(&mut c), "an initiation");
    let resp =
        of_type(&gi.send(0, &init.payload), MessageType::HandshakeResponse).expect("a response");
    let _ = c.handle_datagram(gi.now(), LocalPath(0), &mut resp.clone());
    let sid = c.session_id().expect("client established");
    let (_, d) = client_data(&mut c, gi.now(), &inner_packet(20));
    gi.send(0, &d);
    for (_, m) in minimal_layouts(sid) {
        gi.push(&m);
        gi.push(&m[..m.len() - 1]);
    }
    let mut far = d.clone();
    far[wire::COUNTER_OFFSET..DATA_HEADER_LEN].copy_from_slice(&u64::MAX.to_be_bytes());
    gi.push(&far);
    let mut epoch = d.clone();
    epoch[wire::EPOCH_OFFSET + 1] = 9;
    gi.push(&epoch);
    gi.push(&init.payload);
    gi.finish("seed-forged", out);

    // Truncations of a valid initiation followed by a session's data.
    for (name, cut) in [
        ("seed-init-half", HANDSHAKE_INIT_LEN / 2),
        ("seed-init-header", 4),
    ] {
        let mut gi = GatewayInput::new();
        gi.push(&init.payload[..cut]);
        gi.push(&init.payload);
        gi.finish(name, out);
    }
}

/// Seeds of `client_datagrams`; also feeds every distinct message into `wire`.
fn client_seeds(out: &mut Corpus, wire: &mut Corpus) {
    // The valid response to the fuzzed client's initiation.
    let (mut ci, init) = ClientInput::new();
    let mut h = peer_gateway(5, 1000);
    let _ = h.handle_datagram(Instant::ZERO, addr(0), &mut init.clone());
    let resp = of_type(&drain_gateway(&mut h), MessageType::HandshakeResponse).expect("a response");
    ci.send(0, &resp);
    assert!(
        ci.c.session_id().is_some(),
        "the response must establish the client"
    );
    ci.finish("seed-response", out);
    wire.insert("seed-handshake-response-client".into(), resp.clone());

    // A whole session: data, heartbeat echo, NAT rebind challenge and ack, authenticated
    // reject, path dead and recovery by heartbeat, terminate.
    let (mut ci, init) = ClientInput::new();
    let mut h = peer_gateway(6, 1000);
    let _ = h.handle_datagram(Instant::ZERO, addr(0), &mut init.clone());
    let resp = of_type(&drain_gateway(&mut h), MessageType::HandshakeResponse).expect("a response");
    ci.send(0, &resp);
    let sid = ci.c.session_id().expect("established");
    let (dst, d) = gateway_data(&mut h, sid, &inner_packet(60));
    ci.send(parity_of(dst), &d);
    let tx = ci.pad_to(12);
    let hb = of_type_c(&tx, MessageType::Heartbeat).expect("a heartbeat");
    let _ = h.handle_datagram(ci.now(), addr(hb.via.0 as usize), &mut hb.payload.clone());
    let echo = of_type(&drain_gateway(&mut h), MessageType::Heartbeat).expect("a heartbeat echo");
    ci.send(0, &echo);
    // NAT rebind: the client's next heartbeat, sent on its local path 0, arrives at the
    // gateway from address 1; from now on the gateway's address 1 is the client's path 0.
    let tx = ci.pad_to(ci.chunks.len() + 11);
    let hb = of_type_c(&tx, MessageType::Heartbeat).expect("a heartbeat");
    let _ = h.handle_datagram(ci.now(), addr(1), &mut hb.payload.clone());
    let ch = of_type(&drain_gateway(&mut h), MessageType::ReattachChallenge).expect("a challenge");
    let tx = ci.send(0, &ch);
    let req = of_type_c(&tx, MessageType::ReattachRequest).expect("an echoing request");
    let _ = h.handle_datagram(ci.now(), addr(1), &mut req.payload.clone());
    let reply = drain_gateway(&mut h);
    let ack = of_type(&reply, MessageType::ReattachAck).expect("an ack");
    ci.send(0, &ack);
    // The same request again: an authenticated ReplayDetected reject.
    let _ = h.handle_datagram(ci.now(), addr(1), &mut req.payload.clone());
    let rej = of_type(&drain_gateway(&mut h), MessageType::ReattachReject).expect("a reject");
    ci.send(0, &rej);
    wire.insert("seed-reattach-reject-auth".into(), rej);
    let (dst, d) = gateway_data(&mut h, sid, &inner_packet(33));
    assert_eq!(dst, addr(1), "the gateway must have bound address 1");
    ci.send(0, &d);
    // Silence past path_dead_after: the client recovers on the next heartbeat echo.
    let tx = ci.pad_to(ci.chunks.len() + 55);
    if let Some(hb) = tx
        .iter()
        .rev()
        .find(|t| t.payload.get(1) == Some(&(MessageType::Heartbeat as u8)))
    {
        let _ = h.handle_datagram(ci.now(), addr(1), &mut hb.payload.clone());
        if let Some(echo) = of_type(&drain_gateway(&mut h), MessageType::Heartbeat) {
            ci.send(0, &echo);
        }
    }
    h.terminate(ci.now(), sid).expect("live session");
    let t = of_type(&drain_gateway(&mut h), MessageType::Terminate).expect("a terminate");
    ci.send(0, &t);
    ci.send(0, &d);
    ci.finish("seed-session", out);

    // Cookie: the gateway is under load at once; the client retries with mac2 after a second.
    let (mut ci, init) = ClientInput::new();
    let mut h = peer_gateway(7, 0);
    let _ = h.handle_datagram(Instant::ZERO, addr(0), &mut init.clone());
    let cookie = of_type(&drain_gateway(&mut h), MessageType::CookieReply).expect("a cookie reply");
    ci.send(0, &cookie);
    let tx = ci.pad_to(11);
    let retry = of_type_c(&tx, MessageType::HandshakeInit).expect("a retried initiation");
    let _ = h.handle_datagram(
        ci.now(),
        addr(retry.via.0 as usize),
        &mut retry.payload.clone(),
    );
    let resp = of_type(&drain_gateway(&mut h), MessageType::HandshakeResponse)
        .expect("a response to the mac2 retry");
    ci.send(0, &resp);
    assert!(
        ci.c.session_id().is_some(),
        "the cookie script must establish the client"
    );
    ci.finish("seed-cookie", out);

    // Retry without an answer: the stale response (wrong receiver) then the right one.
    let (mut ci, init) = ClientInput::new();
    let mut h = peer_gateway(8, 1000);
    let _ = h.handle_datagram(Instant::ZERO, addr(0), &mut init.clone());
    let stale =
        of_type(&drain_gateway(&mut h), MessageType::HandshakeResponse).expect("a response");
    let tx = ci.pad_to(11);
    let retry = of_type_c(&tx, MessageType::HandshakeInit).expect("a retried initiation");
    let _ = h.handle_datagram(ci.now(), addr(0), &mut retry.payload.clone());
    let resp = of_type(&drain_gateway(&mut h), MessageType::HandshakeResponse).expect("a response");
    ci.send(0, &stale);
    ci.send(0, &resp);
    assert!(
        ci.c.session_id().is_some(),
        "the retry script must establish the client"
    );
    let (dst, d) = gateway_data(
        &mut h,
        ci.c.session_id().expect("established"),
        &inner_packet(20),
    );
    ci.send(parity_of(dst), &d);
    ci.finish("seed-retry", out);

    // Forged: corrupted responses first, then the valid one, then every message type carrying
    // the SessionId with bad MACs/tags, truncated variants and wrong-direction messages.
    let (mut ci, init) = ClientInput::new();
    let mut h = peer_gateway(9, 1000);
    let _ = h.handle_datagram(Instant::ZERO, addr(0), &mut init.clone());
    let resp = of_type(&drain_gateway(&mut h), MessageType::HandshakeResponse).expect("a response");
    ci.push(&resp[..resp.len() - 1]);
    let mut bad = resp.clone();
    bad[HandshakeResponse::MAC1_OFFSET] ^= 1;
    ci.push(&bad);
    let sender_id = u64::from_be_bytes(init[4..12].try_into().expect("8 bytes"));
    ci.push(&emit_cookie_reply(sender_id, &[3; 24], &[4; 32]));
    ci.push(&resp);
    let sid = ci.c.session_id().expect("established");
    let (dst, d) = gateway_data(&mut h, sid, &inner_packet(20));
    ci.send(parity_of(dst), &d);
    for (_, m) in minimal_layouts(sid) {
        ci.push(&m);
        ci.push(&m[..m.len() - 1]);
    }
    ci.push(&init);
    ci.push(&resp);
    ci.push(&response_with_bad_noise(&resp));
    ci.finish("seed-forged", out);
    wire.insert(
        "seed-handshake-response-bad-noise".into(),
        response_with_bad_noise(&resp),
    );

    // A response whose Noise part is corrupted under a valid mac1, as the first datagram.
    let (mut ci, init) = ClientInput::new();
    let mut h = peer_gateway(10, 1000);
    let _ = h.handle_datagram(Instant::ZERO, addr(0), &mut init.clone());
    let resp = of_type(&drain_gateway(&mut h), MessageType::HandshakeResponse).expect("a response");
    ci.push(&response_with_bad_noise(&resp));
    ci.push(&resp);
    ci.finish("seed-response-bad-noise", out);
}

/// Seeds of `wire_parse` beyond the real messages: minimal layouts, truncations, corruptions.
fn wire_seeds(wire: &mut Corpus) {
    let sid = SessionId::compose(0, 0, 0x0123_4567_89ab);
    for (name, m) in minimal_layouts(sid) {
        wire.insert(format!("seed-{name}-short"), m[..m.len() - 1].to_vec());
        let mut long = m.clone();
        long.push(0);
        wire.insert(format!("seed-{name}-long"), long);
        wire.insert(format!("seed-{name}"), m);
    }
    let real: Vec<(String, Vec<u8>)> = wire.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    for (name, m) in real.iter().filter(|(n, _)| !n.starts_with("seed-min")) {
        wire.insert(format!("{name}-truncated"), m[..m.len() / 2].to_vec());
    }
    wire.insert("seed-empty".into(), Vec::new());
    wire.insert(
        "seed-3-bytes".into(),
        vec![wire::VERSION, MessageType::Data as u8, 0],
    );
    wire.insert(
        "seed-header-only".into(),
        vec![wire::VERSION, MessageType::Data as u8, 0, 0],
    );
    wire.insert(
        "seed-bad-version".into(),
        vec![2, MessageType::Data as u8, 0, 0],
    );
    wire.insert("seed-unknown-type".into(), vec![wire::VERSION, 12, 0, 0]);
    wire.insert("seed-type-zero".into(), vec![wire::VERSION, 0, 0, 0]);
    let mut rq = emit_reattach_request(&ReattachRequestFields {
        epoch: 1,
        session_id: sid,
        counter: 2,
        client_time_ms: 3,
        transport: 2,
        challenge_echo: [5; 16],
    });
    rq[30] = 1;
    wire.insert("seed-reattach-request-reserved".into(), rq.to_vec());
    let mut hs = vec![0u8; HANDSHAKE_RESPONSE_LEN];
    hs[0] = wire::VERSION;
    hs[1] = MessageType::HandshakeResponse as u8;
    hs[2] = 1;
    wire.insert("seed-handshake-response-reserved".into(), hs);
}

/// Write the seeds of one target, skipping contents already written under another name.
fn write(dir: &std::path::Path, corpus: &Corpus) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let mut seen = std::collections::BTreeSet::new();
    for (name, bytes) in corpus {
        assert!(
            bytes.len() <= 4096,
            "{name} is {} bytes: keep seeds under 4 KiB",
            bytes.len()
        );
        if seen.insert(bytes.clone()) {
            std::fs::write(dir.join(name), bytes)?;
        }
    }
    println!("{}: {} seeds", dir.display(), seen.len());
    Ok(())
}

fn main() -> std::io::Result<()> {
    let root = std::env::args_os().nth(1).map_or_else(
        || PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("corpus"),
        PathBuf::from,
    );
    let (mut gateway, mut client, mut wire) = (Corpus::new(), Corpus::new(), Corpus::new());
    gateway_seeds(&mut gateway, &mut wire);
    client_seeds(&mut client, &mut wire);
    wire_seeds(&mut wire);
    for bytes in wire.values() {
        fuzzing::parse(bytes);
    }
    for bytes in gateway.values() {
        fuzzing::gateway_datagrams(bytes);
    }
    for bytes in client.values() {
        fuzzing::client_datagrams(bytes);
    }
    write(&root.join("wire_parse"), &wire)?;
    write(&root.join("gateway_datagrams"), &gateway)?;
    write(&root.join("client_datagrams"), &client)?;
    Ok(())
}
