//! Test doubles: a deterministic simulated network and a client–gateway pair driven over it.
//!
//! [`Sim`] runs a [`Client`] and a [`Gateway`] with simulated time, latency, jitter
//! (reordering), loss, per-path link failures and a NAT whose mappings can be rebound. Every
//! random choice comes from a seeded generator, so a run is reproducible from its seed. Used by
//! the simulation tests, the demo and the benchmarks (quinn-proto's `tests/util.rs::Pair`,
//! smoltcp's `netsim` are the models).
#![allow(missing_docs, clippy::missing_panics_doc, reason = "test double")]

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::time::Duration;

use rand_chacha::rand_core::{RngCore, SeedableRng};
use rand_chacha::ChaCha20Rng;

use crate::client::{Client, ClientConfig, ClientEvent, ClientOutput, LocalPath};
use crate::gateway::{DropReason, Gateway, GatewayConfig, Output};
use crate::handshake::StaticKeypair;
use crate::session::GatewaySession;
use crate::wire::{DATA_HEADER_LEN, TAG_LEN};
use crate::{Event, Instant, Path, Policy, Reason, SessionId, State};

/// Where a captured datagram was going.
#[derive(Debug, Clone)]
pub enum Dir {
    /// Client to gateway, from the client's public (post-NAT) address.
    ToGateway {
        /// Source address.
        from: SocketAddr,
    },
    /// Gateway to client, to a public address.
    ToClient {
        /// Destination address.
        to: SocketAddr,
    },
}

/// The simulated network.
pub struct Net {
    pub rng: ChaCha20Rng,
    pub latency: Duration,
    pub jitter: Duration,
    pub loss: f64,
    /// Client local path → its current public address after NAT.
    pub nat: HashMap<LocalPath, SocketAddr>,
    pub next_port: u16,
    pub in_flight: BTreeMap<(Instant, u64), (Dir, Vec<u8>)>,
    pub seq: u64,
    /// Every datagram the network carried (for capture-and-replay attacks).
    pub captured: Vec<(Dir, Vec<u8>)>,
    /// While false, nothing is delivered (path cut).
    pub up: bool,
    /// Local paths whose link is down: nothing leaves or arrives by them.
    pub down: Vec<LocalPath>,
}

impl core::fmt::Debug for Net {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Net")
            .field("in_flight", &self.in_flight.len())
            .finish_non_exhaustive()
    }
}

impl core::fmt::Debug for Sim {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Sim")
            .field("now", &self.now)
            .finish_non_exhaustive()
    }
}

impl Net {
    pub fn send(&mut self, now: Instant, dir: Dir, bytes: Vec<u8>) {
        self.captured.push((dir.clone(), bytes.clone()));
        if !self.up
            || (self.loss > 0.0
                && (f64::from(self.rng.next_u32()) / f64::from(u32::MAX)) < self.loss)
        {
            return;
        }
        let jitter_ns = if self.jitter.is_zero() {
            0
        } else {
            self.rng.next_u64() % self.jitter.as_nanos() as u64
        };
        let at = now + self.latency + Duration::from_nanos(jitter_ns);
        self.seq += 1;
        self.in_flight.insert((at, self.seq), (dir, bytes));
    }

    pub fn rebind(&mut self, via: LocalPath) -> SocketAddr {
        self.next_port += 1;
        let addr: SocketAddr = format!("192.0.2.10:{}", self.next_port)
            .parse()
            .expect("addr");
        self.nat.insert(via, addr);
        addr
    }
}

/// A client and a gateway over a [`Net`].
pub struct Sim {
    pub now: Instant,
    pub gw: Gateway<ChaCha20Rng>,
    pub client: Client<ChaCha20Rng>,
    pub client_key: [u8; 32],
    pub net: Net,
    pub gw_delivered: Vec<Vec<u8>>,
    pub client_delivered: Vec<Vec<u8>>,
    pub gw_events: Vec<Event>,
    /// When each of `gw_events` was emitted.
    pub gw_event_times: Vec<Instant>,
    pub client_events: Vec<ClientEvent>,
    pub gw_drops: Vec<DropReason>,
    pub sent_c2g: u64,
    pub sent_g2c: u64,
}

impl Sim {
    pub fn new(seed: u64, policy: Policy) -> Self {
        let mut rng = ChaCha20Rng::seed_from_u64(seed);
        let gw_key = StaticKeypair::generate(&mut rng);
        let client_key = StaticKeypair::generate(&mut rng);
        let gw_public = gw_key.public();
        let client_public = client_key.public();
        let mut gw = Gateway::new(
            GatewayConfig {
                cores: 2,
                ..GatewayConfig::default()
            },
            policy.clone(),
            gw_key,
            ChaCha20Rng::seed_from_u64(seed ^ 0xA),
            Instant::ZERO,
        )
        .expect("valid policy");
        gw.allow_client(client_public);
        let mut cfg = ClientConfig::new(client_key, gw_public);
        cfg.policy = policy;
        let client = Client::new(cfg, ChaCha20Rng::seed_from_u64(seed ^ 0xB));
        let mut net = Net {
            rng: ChaCha20Rng::seed_from_u64(seed ^ 0xC),
            latency: Duration::from_millis(20),
            jitter: Duration::ZERO,
            loss: 0.0,
            nat: HashMap::new(),
            next_port: 40000,
            in_flight: BTreeMap::new(),
            seq: 0,
            captured: Vec::new(),
            up: true,
            down: Vec::new(),
        };
        net.rebind(LocalPath(0));
        net.rebind(LocalPath(1));
        Sim {
            now: Instant::ZERO,
            gw,
            client,
            client_key: client_public,
            net,
            gw_delivered: Vec::new(),
            client_delivered: Vec::new(),
            gw_events: Vec::new(),
            gw_event_times: Vec::new(),
            client_events: Vec::new(),
            gw_drops: Vec::new(),
            sent_c2g: 0,
            sent_g2c: 0,
        }
    }

    fn flush(&mut self) {
        while let Some(t) = self.client.poll_transmit() {
            if self.net.down.contains(&t.via) {
                continue;
            }
            let from = self.net.nat[&t.via];
            self.net.send(self.now, Dir::ToGateway { from }, t.payload);
        }
        while let Some(t) = self.gw.poll_transmit() {
            self.net
                .send(self.now, Dir::ToClient { to: t.dst.addr }, t.payload);
        }
        while let Some(e) = self.gw.poll_event() {
            self.gw_events.push(e);
            self.gw_event_times.push(self.now);
        }
        while let Some(e) = self.client.poll_event() {
            self.client_events.push(e);
        }
    }

    fn deliver(&mut self, dir: Dir, mut bytes: Vec<u8>) {
        match dir {
            Dir::ToGateway { from } => {
                let out = self
                    .gw
                    .handle_datagram(self.now, Path::udp(from), &mut bytes);
                match out {
                    Output::Deliver { packet, .. } => self.gw_delivered.push(packet.to_vec()),
                    Output::Dropped(r) => self.gw_drops.push(r),
                    Output::Consumed => {}
                }
            }
            Dir::ToClient { to } => {
                // The NAT forwards only to a current mapping.
                let Some(via) = self
                    .net
                    .nat
                    .iter()
                    .find(|(_, a)| **a == to)
                    .map(|(v, _)| *v)
                else {
                    return;
                };
                if self.net.down.contains(&via) {
                    return;
                }
                if let ClientOutput::Deliver(p) =
                    self.client.handle_datagram(self.now, via, &mut bytes)
                {
                    self.client_delivered.push(p.to_vec());
                }
            }
        }
        self.flush();
    }

    /// Advance simulated time to `until`, processing deliveries and timers in order.
    pub fn run_until(&mut self, until: Instant) {
        let mut spins_at_same_instant = 0;
        loop {
            self.flush();
            let next_pkt = self.net.in_flight.keys().next().map(|k| k.0);
            let next = [next_pkt, self.client.poll_timeout(), self.gw.poll_timeout()]
                .into_iter()
                .flatten()
                .map(|t| t.max(self.now))
                .min();
            match next {
                Some(t) if t <= until => {
                    spins_at_same_instant = if t == self.now {
                        spins_at_same_instant + 1
                    } else {
                        0
                    };
                    assert!(
                        spins_at_same_instant < 10_000,
                        "a timer stays due at {t:?} and never fires: poll_timeout is stuck"
                    );
                    self.now = t;
                    if next_pkt == Some(t) {
                        let key = *self.net.in_flight.keys().next().expect("non-empty");
                        let (dir, bytes) = self.net.in_flight.remove(&key).expect("present");
                        self.deliver(dir, bytes);
                    }
                    self.client.handle_timeout(self.now);
                    self.gw.handle_timeout(self.now);
                    if let Err(e) = self.gw.check_timer_index(self.now) {
                        panic!("deadline index: {e}");
                    }
                }
                _ => {
                    self.now = until;
                    self.client.handle_timeout(self.now);
                    self.gw.handle_timeout(self.now);
                    self.flush();
                    return;
                }
            }
        }
    }

    pub fn run_for(&mut self, d: Duration) {
        let until = self.now + d;
        self.run_until(until);
    }

    pub fn connect(&mut self) -> SessionId {
        self.connect_within(Duration::from_millis(200))
    }

    /// Connect on path 0 and run for `d`; panics if the handshake did not complete.
    pub fn connect_within(&mut self, d: Duration) -> SessionId {
        self.client
            .connect(self.now, LocalPath(0), 1_700_000_000_000_000_000);
        self.run_for(d);
        let sid = self.client.session_id().expect("handshake completed");
        assert_eq!(self.client.state(), State::Attached);
        sid
    }

    pub fn session(&self, sid: SessionId) -> &GatewaySession {
        self.gw.session(sid).expect("session exists")
    }

    pub fn client_send(&mut self, tag: &str) {
        let inner = tag.as_bytes();
        let mut buf = vec![0u8; DATA_HEADER_LEN + inner.len() + TAG_LEN];
        buf[DATA_HEADER_LEN..DATA_HEADER_LEN + inner.len()].copy_from_slice(inner);
        let (via, len) = self
            .client
            .encapsulate(self.now, &mut buf, inner.len())
            .expect("established");
        buf.truncate(len);
        self.sent_c2g += 1;
        if self.net.down.contains(&via) {
            return;
        }
        let from = self.net.nat[&via];
        self.net.send(self.now, Dir::ToGateway { from }, buf);
    }

    pub fn gateway_send(&mut self, sid: SessionId, tag: &str) -> bool {
        let inner = tag.as_bytes();
        let mut buf = vec![0u8; DATA_HEADER_LEN + inner.len() + TAG_LEN];
        buf[DATA_HEADER_LEN..DATA_HEADER_LEN + inner.len()].copy_from_slice(inner);
        match self.gw.encapsulate(sid, &mut buf, inner.len()) {
            Ok((dst, len)) => {
                buf.truncate(len);
                self.net.send(self.now, Dir::ToClient { to: dst.addr }, buf);
                self.sent_g2c += 1;
                true
            }
            Err(_) => false,
        }
    }

    /// Traffic both ways every `every` for `d`.
    pub fn traffic(&mut self, sid: SessionId, d: Duration, every: Duration) {
        let end = self.now + d;
        let mut i = 0u64;
        while self.now < end {
            self.client_send(&format!("c2g-{}-{i}", self.now.as_nanos()));
            self.gateway_send(sid, &format!("g2c-{}-{i}", self.now.as_nanos()));
            i += 1;
            let next = self.now + every;
            self.run_until(next);
        }
    }

    pub fn state_changes(&self, sid: SessionId) -> Vec<(State, State, Reason, u64)> {
        self.gw_events
            .iter()
            .filter_map(|e| match e {
                Event::StateChanged {
                    session_id,
                    from,
                    to,
                    reason,
                    version,
                } if *session_id == sid => Some((*from, *to, *reason, *version)),
                _ => None,
            })
            .collect()
    }

    /// SPEC.md invariants 2 and 5 over the whole run: versions grow by exactly one per
    /// SESSION_STATE_CHANGED, in order, with no gap, and nothing follows TERMINATED.
    pub fn assert_version_log(&self, sid: SessionId) {
        let changes = self.state_changes(sid);
        for (i, c) in changes.iter().enumerate() {
            assert_eq!(c.3, i as u64 + 1, "version gap in {changes:?}");
            if i > 0 {
                assert_eq!(changes[i - 1].1, c.0, "state discontinuity in {changes:?}");
                assert_ne!(
                    changes[i - 1].1,
                    State::Terminated,
                    "transition after TERMINATED"
                );
            }
        }
    }

    pub fn handshakes(&self) -> u64 {
        self.gw.counters().handshakes
    }
}

/// Whether no inner packet appears twice in `v`.
#[must_use]
pub fn no_duplicates(v: &[Vec<u8>]) -> bool {
    let mut s = v.to_vec();
    s.sort();
    s.dedup();
    s.len() == v.len()
}
