//! The gateway endpoint: handshakes, sessions, data, reattach and timers, sans I/O.
//!
//! Driving API (quinn-proto style):
//! - [`Gateway::handle_datagram`] for every datagram received, with the path it came from;
//!   data for a session is decrypted in place and returned borrowed ([`Output::Deliver`]).
//! - [`Gateway::encapsulate`] to seal an inner packet for a session, in place.
//! - [`Gateway::poll_transmit`] after each call, until `None`: control messages to send.
//! - [`Gateway::poll_event`] likewise: events to record.
//! - [`Gateway::poll_timeout`] for when to call [`Gateway::handle_timeout`] next.
//!
//! A message that fails authentication, freshness or replay checks never changes a session
//! (SPEC.md section 3): every such path below returns before touching session state.

use std::collections::{HashMap, VecDeque};

use core::time::Duration;

use rand_core::{CryptoRng, RngCore};

use crate::cookie::CookieChecker;
use crate::crypto::{ct_eq, hash};
use crate::event::{Event, RejectCode, SecurityKind};
use crate::handshake::{hex_lower, HandshakeError, Purpose, Responder, StaticKeypair};
use crate::keys::{open_transport, EpochKeys, KeySet, OpenFailure, Role, Slot};
use crate::path::{Path, Transport};
use crate::persist::{NodeRecord, RecordError, SessionRecord};
use crate::policy::Policy;
use crate::reattach::{
    identity_dh, proof_key_from, proof_with, verify_control_mac, PendingValidation, SwitchBudget,
};
use crate::replay::{ReplayError, ReplayWindow};
use crate::session::{DataPlaneHandoff, GatewaySession, Quality};
use crate::state::{resolve, Machine, State, Transition, Trigger};
use crate::table::SessionTable;
use crate::time::{millis, Instant};
use crate::wire::{
    self, emit_reattach_common, HandshakeInit, Message, MessageType, ReattachRequest,
    ReattachResponse, SessionId, TransportMsg, DATA_HEADER_LEN, HEARTBEAT_PLAINTEXT_LEN,
    REATTACH_ACK_LEN, REATTACH_CHALLENGE_LEN, REATTACH_REJECT_LEN, TAG_LEN,
    TERMINATE_PLAINTEXT_LEN, TOKEN_LEN,
};

/// Why the gateway dropped a datagram. Small and `Copy`; [`DropReason::index`] is a stable
/// counter slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DropReason {
    /// Not a well-formed message.
    Malformed(wire::WireError),
    /// A message type the gateway never receives.
    WrongDirection,
    /// No such session.
    UnknownSession,
    /// The session is terminated.
    SessionTerminated,
    /// No key for the packet's epoch.
    UnknownEpoch,
    /// Counter already seen or too old.
    Replay,
    /// AEAD or MAC failed.
    AuthFailed,
    /// The session has no active path to send to.
    NoActivePath,
    /// Handshake mac1 wrong.
    HandshakeMac1,
    /// Handshake did not authenticate.
    HandshakeAuth,
    /// Handshake timestamp not newer than the last one.
    HandshakeReplay,
    /// Client key not allowed or revoked.
    UnknownClient,
    /// Under load and no valid mac2: answered with a cookie.
    CookieRequired,
    /// Rekey refused.
    RekeyDenied,
    /// Too many sessions.
    SessionLimit,
    /// Inner packet too large for the buffer.
    TooLarge,
    /// A reattach was refused (with an explicit reject where allowed).
    ReattachRejected,
}

impl DropReason {
    /// All reasons' names, by [`DropReason::index`].
    pub const NAMES: [&'static str; 17] = [
        "malformed",
        "wrong_direction",
        "unknown_session",
        "session_terminated",
        "unknown_epoch",
        "replay",
        "auth_failed",
        "no_active_path",
        "handshake_mac1",
        "handshake_auth",
        "handshake_replay",
        "unknown_client",
        "cookie_required",
        "rekey_denied",
        "session_limit",
        "too_large",
        "reattach_rejected",
    ];

    /// Stable counter index.
    #[must_use]
    pub const fn index(self) -> usize {
        match self {
            DropReason::Malformed(_) => 0,
            DropReason::WrongDirection => 1,
            DropReason::UnknownSession => 2,
            DropReason::SessionTerminated => 3,
            DropReason::UnknownEpoch => 4,
            DropReason::Replay => 5,
            DropReason::AuthFailed => 6,
            DropReason::NoActivePath => 7,
            DropReason::HandshakeMac1 => 8,
            DropReason::HandshakeAuth => 9,
            DropReason::HandshakeReplay => 10,
            DropReason::UnknownClient => 11,
            DropReason::CookieRequired => 12,
            DropReason::RekeyDenied => 13,
            DropReason::SessionLimit => 14,
            DropReason::TooLarge => 15,
            DropReason::ReattachRejected => 16,
        }
    }

    /// Stable name.
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        Self::NAMES[self.index()]
    }
}

/// What became of a datagram.
#[derive(Debug)]
pub enum Output<'b> {
    /// An authenticated inner packet for `session_id`, decrypted in place.
    Deliver {
        /// Session.
        session_id: SessionId,
        /// The inner IP packet, borrowed from the input buffer.
        packet: &'b mut [u8],
    },
    /// Handled; see [`Gateway::poll_transmit`] and [`Gateway::poll_event`].
    Consumed,
    /// Dropped and counted.
    Dropped(DropReason),
}

/// A control message to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transmit {
    /// Where to.
    pub dst: Path,
    /// The message.
    pub payload: Vec<u8>,
}

/// Why a gateway refused to start.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum StartError {
    /// The policy is invalid.
    #[error(transparent)]
    Policy(#[from] crate::policy::PolicyError),
    /// The random generator failed its health check.
    #[error("refusing to start: {0}")]
    Rng(#[from] crate::crypto::RngHealthError),
}

/// Node-level configuration (not policy).
#[derive(Debug, Clone)]
pub struct GatewayConfig {
    /// This node's id, encoded in SessionIds.
    pub node_id: u8,
    /// Worker cores that can own sessions (owners are 0..cores).
    pub cores: u8,
    /// The core this protocol object acts for when checking ownership; `None` for the control
    /// process, which acts for every core of the node.
    pub local_core: Option<u8>,
    /// Handshakes per second above which mac2 (a cookie) is required.
    pub cookie_threshold: u32,
    /// Most sessions held at once.
    pub max_sessions: usize,
    /// How long a terminated session is kept before eviction.
    pub terminated_linger: Duration,
    /// Where data packets are processed: here, or by separate data-plane workers.
    pub data_plane: DataPlaneMode,
}

/// Where a gateway's data packets are processed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DataPlaneMode {
    /// This object carries data too (simulation, tests, a single-process gateway).
    #[default]
    Inline,
    /// Separate workers own every session's data keys, send counter and receive window (the
    /// control process). This object then:
    /// - queues [`DataPlaneUpdate`]s ([`Gateway::poll_data_plane`]) for every change the
    ///   workers must apply;
    /// - refuses data and heartbeat messages (they are the workers'), and learns of traffic
    ///   through [`Gateway::note_activity`] and [`Gateway::observe_new_path`];
    /// - seals its own transport messages (TERMINATE) from counter
    ///   [`CONTROL_COUNTER_BASE`] up, a space the workers never reach, so no counter repeats
    ///   under one key.
    External,
}

/// First send counter of control-sealed transport messages in [`DataPlaneMode::External`]
/// (2^62: a worker rekeys after at most 2^60 packets).
pub const CONTROL_COUNTER_BASE: u64 = 1 << 62;

/// A change the data-plane workers must apply, in order ([`DataPlaneMode::External`]).
#[derive(Debug)]
pub enum DataPlaneUpdate {
    /// A new session: install it on its owner worker.
    Install {
        /// Keys, send counter (0), window and active path.
        handoff: Box<DataPlaneHandoff>,
        /// Owner core.
        owner: u8,
        /// The client identity (the shell maps it to the client's inner address).
        client_public: [u8; 32],
    },
    /// A rekey completed: the next epoch.
    NextKeys {
        /// Session.
        id: SessionId,
        /// The epoch's keys.
        keys: Box<EpochKeys>,
    },
    /// The active path changed (a reattach was bound, or the path died).
    SetPath {
        /// Session.
        id: SessionId,
        /// The new active path.
        path: Option<Path>,
    },
    /// The session ended: remove it.
    Retire {
        /// Session.
        id: SessionId,
    },
    /// Move the session to another owner core (a core is being drained).
    Move {
        /// Session.
        id: SessionId,
        /// The new owner core.
        to: u8,
    },
    /// Ask the client to rekey (carried by the workers' heartbeat echoes until the next epoch
    /// is installed).
    RequestRekey {
        /// Session.
        id: SessionId,
    },
}

/// Why a session could not be moved to another core.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum MoveRefused {
    /// No such live session.
    #[error("no such session")]
    UnknownSession,
    /// The core is not one of this node's worker cores.
    #[error("no such core")]
    NoSuchCore,
    /// Every other core is being drained too: there is nowhere to go.
    #[error("no core to move to (every other core is draining)")]
    NowhereToGo,
}

impl Default for GatewayConfig {
    fn default() -> Self {
        GatewayConfig {
            node_id: 0,
            cores: 1,
            local_core: None,
            cookie_threshold: 1000,
            max_sessions: 1_000_000,
            terminated_linger: Duration::from_secs(10),
            data_plane: DataPlaneMode::Inline,
        }
    }
}

#[derive(Debug, Default)]
struct ClientEntry {
    last_timestamp: Option<u64>,
    revoked: bool,
    /// In the allow-list. An entry can exist without it: a restored handshake timestamp, or
    /// a revocation.
    allowed: bool,
    /// The session this identity last created (it may have ended since): a new session
    /// handshake supersedes it, so one identity holds at most one live session.
    session: Option<SessionId>,
    /// `DH(gateway identity, this identity)` ([`crate::reattach::identity_dh`]), once
    /// computed: the proof key of each of its sessions is derived from it at the session's
    /// creation, so no X25519 waits on the recovery path (10 000 sessions rebound at once
    /// right after they connected spent a tenth of the control process's time there).
    identity_dh: Option<crate::crypto::SecretKey>,
}

/// Counters of the gateway protocol object.
#[derive(Debug, Clone, Default)]
pub struct Counters {
    /// Drops by [`DropReason::index`].
    pub drops: [u64; 17],
    /// Reattach rejects by code (index = wire code - 1).
    pub rejects: [u64; 15],
    /// Handshakes completed.
    pub handshakes: u64,
    /// Accepted reattaches.
    pub reattaches: u64,
    /// Cookie replies sent.
    pub cookies_sent: u64,
}

#[derive(Debug, Default)]
struct Outbox {
    transmits: VecDeque<Transmit>,
    events: VecDeque<Event>,
    /// Only filled in [`DataPlaneMode::External`].
    data_plane: VecDeque<DataPlaneUpdate>,
    external: bool,
    /// Sessions whose persistent state changed since [`Gateway::take_dirty`].
    dirty: Vec<SessionId>,
    /// The node's persistent state (client timestamps, revocations) changed.
    node_dirty: bool,
    /// Client keys whose node state (timestamp, revocation) changed since
    /// [`Gateway::export_node_changes`].
    node_clients: Vec<[u8; 32]>,
}

impl Outbox {
    fn data_plane(&mut self, u: DataPlaneUpdate) {
        if self.external {
            self.data_plane.push_back(u);
        }
    }

    fn dirty(&mut self, id: SessionId) {
        if self.dirty.last() != Some(&id) {
            self.dirty.push(id);
        }
    }
}

/// The gateway protocol endpoint.
pub struct Gateway<R> {
    config: GatewayConfig,
    policy: Policy,
    rng: R,
    responder: Responder,
    cookies: CookieChecker,
    clients: HashMap<[u8; 32], ClientEntry>,
    sessions: SessionTable,
    per_core: Vec<u64>,
    /// Cores being drained: no new session is given to them.
    draining: Vec<bool>,
    ids: SessionIdAllocator,
    hs_window: (Instant, u32),
    out: Outbox,
    counters: Counters,
}

impl<R> core::fmt::Debug for Gateway<R> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Gateway")
            .field("config", &self.config)
            .field("sessions", &self.sessions.len())
            .finish_non_exhaustive()
    }
}

/// Short public id of a client key: first 8 bytes of its BLAKE2s hash, hex.
#[must_use]
pub fn client_key_id(public: &[u8; 32]) -> String {
    hex_lower(&hash(&[b"jumping key id", public])[..8])
}

impl<R: RngCore + CryptoRng> Gateway<R> {
    /// A gateway with identity `keypair`, validated `policy` and an injected RNG, which is
    /// health-checked first (SP 800-90B continuous tests on a sample).
    ///
    /// # Errors
    /// The policy's first violated bound, or a failed RNG health test.
    pub fn new(
        config: GatewayConfig,
        policy: Policy,
        keypair: StaticKeypair,
        mut rng: R,
        now: Instant,
    ) -> Result<Self, StartError> {
        policy.validate()?;
        crate::crypto::rng_health_check(&mut rng)?;
        let cookies = CookieChecker::new(&mut rng, now, &keypair.public());
        let ids = SessionIdAllocator::new(&mut rng);
        let cores = usize::from(config.cores.max(1));
        let external = config.data_plane == DataPlaneMode::External;
        Ok(Gateway {
            config,
            policy,
            rng,
            responder: Responder::new(keypair),
            cookies,
            clients: HashMap::new(),
            sessions: SessionTable::default(),
            per_core: vec![0; cores],
            draining: vec![false; cores],
            ids,
            hs_window: (now, 0),
            out: Outbox {
                external,
                ..Outbox::default()
            },
            counters: Counters::default(),
        })
    }

    /// The policy in force.
    #[must_use]
    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    /// Replace the policy for new decisions. Refused whole if invalid.
    ///
    /// # Errors
    /// The first violated bound; the old policy stays.
    pub fn set_policy(&mut self, policy: Policy) -> Result<(), crate::policy::PolicyError> {
        policy.validate()?;
        self.policy = policy;
        self.sessions.touch_all();
        Ok(())
    }

    /// Allow a client identity key.
    pub fn allow_client(&mut self, public: [u8; 32]) {
        let e = self.clients.entry(public).or_default();
        e.revoked = false;
        e.allowed = true;
    }

    /// Counters.
    #[must_use]
    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    /// A session, for inspection.
    #[must_use]
    pub fn session(&self, id: SessionId) -> Option<&GatewaySession> {
        self.sessions.get(&id)
    }

    /// All sessions.
    pub fn sessions(&self) -> impl Iterator<Item = &GatewaySession> {
        self.sessions.values()
    }

    /// How many sessions are held (terminated ones until they are evicted included).
    #[must_use]
    pub fn session_count(&self) -> usize {
        self.sessions.len()
    }

    /// Next control message to send.
    #[must_use]
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.out.transmits.pop_front()
    }

    /// Next event to record.
    #[must_use]
    pub fn poll_event(&mut self) -> Option<Event> {
        self.out.events.pop_front()
    }

    /// Next change for the data-plane workers ([`DataPlaneMode::External`] only).
    #[must_use]
    pub fn poll_data_plane(&mut self) -> Option<DataPlaneUpdate> {
        self.out.data_plane.pop_front()
    }

    /// Sessions whose persistent state (state, version, keys, active path, reattach replay
    /// window, switch budget) changed since the last call, and whether the node's state
    /// (client handshake timestamps, revocations) did. A shell that persists sessions writes
    /// these before it sends the datagrams queued with the change.
    pub fn take_dirty(&mut self) -> (Vec<SessionId>, bool) {
        let mut ids = std::mem::take(&mut self.out.dirty);
        ids.sort_unstable();
        ids.dedup();
        (ids, std::mem::take(&mut self.out.node_dirty))
    }

    /// The data plane reports traffic of `sid` ([`DataPlaneMode::External`]): the last
    /// authenticated packet from the active path arrived `idle` ago, and its workers send
    /// and receive under key epoch `epoch`. Moves the path-dead clock forward (never back),
    /// and promotes the next key epoch once the workers have (KEY_ROTATED).
    pub fn note_activity(&mut self, now: Instant, sid: SessionId, idle: Duration, epoch: u32) {
        // Called for every session at every activity poll: fresh activity only moves the
        // path-dead and quality deadlines later, so the deadline index is left alone, except
        // where a deadline may come earlier (DEGRADED's cooldown needs a healthy path; a
        // promoted key starts the previous one's grace).
        let Some(s) = self.sessions.get_mut_deadline_not_earlier(&sid) else {
            return;
        };
        if s.state() == State::Terminated {
            return;
        }
        let mut earlier = s.state() == State::Degraded;
        if s.active.is_some() {
            let seen = Instant::from_nanos(
                now.as_nanos()
                    .saturating_sub(u64::try_from(idle.as_nanos()).unwrap_or(u64::MAX)),
            );
            if seen > s.last_rx_active {
                s.last_rx_active = seen;
            }
        }
        if s.keys.next().is_some_and(|k| k.epoch == epoch) {
            if let Some(e) = s.keys.promote_next(now, self.policy.key_grace) {
                self.out.events.push_back(Event::KeyRotated {
                    session_id: sid,
                    key_epoch: e,
                    version: s.version(),
                });
                self.out.dirty(sid);
                earlier = true;
            }
        }
        if earlier {
            self.sessions.touch(sid);
        }
    }

    /// The data plane saw an authenticated packet of `sid` from `from`, which is not its
    /// active path ([`DataPlaneMode::External`]; SPEC.md section 4, NAT rebinding): start
    /// validating `from` at once. The send budget toward `from` is the minimum datagram
    /// received times the amplification factor until the client answers.
    pub fn observe_new_path(&mut self, now: Instant, sid: SessionId, from: Path) {
        let Some(s) = self.sessions.get_mut(&sid) else {
            return;
        };
        if matches!(s.state(), State::Birth | State::Terminated) || s.active == Some(from) {
            return;
        }
        let seen = Seen {
            from,
            epoch: s.keys.current().wire_epoch(),
            bytes: DATA_HEADER_LEN + TAG_LEN,
        };
        start_unsolicited_validation(s, &mut self.out, &mut self.rng, now, seen, &self.policy);
    }

    /// `sid`'s persistent state at `now`.
    #[must_use]
    pub fn export_session(&self, now: Instant, sid: SessionId) -> Option<SessionRecord> {
        let s = self.sessions.get(&sid)?;
        Some(SessionRecord {
            at: now,
            id: s.id,
            state: s.state(),
            version: s.version(),
            client_public: s.client_public,
            transcript: zeroize::Zeroizing::new(s.transcript),
            keys: s.keys.export(now),
            send_counter: s.send_counter,
            reattach_window: s.reattach_window.to_parts(),
            recv_window: s.recv_window.to_parts(),
            active: s.active,
            owner: s.owner,
            created: s.created,
            entered_state: s.entered_state,
            last_rx_active: s.last_rx_active,
            lost_at: s.lost_at,
            recent_switches: s.budget.recent().clone(),
            switches_total: s.budget.total(),
            reattach_failures: s.reattach_failures,
        })
    }

    /// Take back a session from its record (control-process restart). Path validation in
    /// progress and quality measurements start afresh; everything else is as recorded.
    ///
    /// # Errors
    /// [`RecordError::Exists`] if the session is held already, or an unknown cipher suite.
    pub fn restore_session(&mut self, rec: &SessionRecord) -> Result<(), RecordError> {
        if self.sessions.contains_key(&rec.id) {
            return Err(RecordError::Exists);
        }
        let keys = KeySet::import(&rec.keys, rec.at).map_err(|_| RecordError::Invalid("suite"))?;
        let s = GatewaySession {
            id: rec.id,
            machine: Machine::restore(rec.state, rec.version),
            client_public: rec.client_public,
            transcript: *rec.transcript,
            proof_key: None,
            keys,
            send_counter: rec.send_counter,
            recv_window: ReplayWindow::from_parts(rec.recv_window.0, rec.recv_window.1),
            reattach_window: ReplayWindow::from_parts(rec.reattach_window.0, rec.reattach_window.1),
            active: rec.active,
            owner: rec.owner,
            created: rec.created,
            entered_state: rec.entered_state,
            last_rx_active: rec.last_rx_active,
            lost_at: rec.lost_at,
            pending: None,
            budget: SwitchBudget::restore(rec.recent_switches.clone(), rec.switches_total),
            reattach_failures: rec.reattach_failures,
            rekey_requested: false,
            quality: Quality {
                window_start: rec.at,
                ..Quality::default()
            },
            rx_packets: 0,
            rx_bytes: 0,
            tx_packets: 0,
            tx_bytes: 0,
        };
        let slot = usize::from(s.owner) % self.per_core.len();
        self.per_core[slot] += 1;
        if s.state() != State::Terminated {
            self.clients.entry(s.client_public).or_default().session = Some(rec.id);
        }
        self.sessions.insert(rec.id, s);
        Ok(())
    }

    /// The node's persistent state.
    #[must_use]
    pub fn export_node(&self) -> NodeRecord {
        let mut clients: Vec<_> = self
            .clients
            .iter()
            .map(|(k, e)| (*k, e.last_timestamp, e.revoked))
            .collect();
        clients.sort_unstable();
        NodeRecord {
            clients,
            ids: Some(self.ids.record()),
        }
    }

    /// The node's state changed since the last call (or since the start): the clients whose
    /// handshake timestamp or revocation changed, and the SessionId allocator. Merged into
    /// the whole state by [`Gateway::restore_node`] (later timestamps win, revocations
    /// stay), so a store can append these instead of rewriting [`Gateway::export_node`]
    /// (41 bytes per allowed identity: 4 MB at 100 000) every time a handshake is accepted.
    #[must_use]
    pub fn export_node_changes(&mut self) -> NodeRecord {
        let mut keys = std::mem::take(&mut self.out.node_clients);
        keys.sort_unstable();
        keys.dedup();
        NodeRecord {
            clients: keys
                .iter()
                .filter_map(|k| {
                    self.clients
                        .get(k)
                        .map(|e| (*k, e.last_timestamp, e.revoked))
                })
                .collect(),
            ids: Some(self.ids.record()),
        }
    }

    /// Take back the node's state: handshake timestamps and revocations. Keys revoked here
    /// stay revoked whatever the allow-list says.
    pub fn restore_node(&mut self, rec: &NodeRecord) {
        if let Some(ids) = &rec.ids {
            // The allocator continues where it stopped: no id is ever handed out twice.
            self.ids = SessionIdAllocator {
                key: ids.key.clone(),
                counter: ids.counter,
            };
        }
        for (k, ts, revoked) in &rec.clients {
            let e = self.clients.entry(*k).or_default();
            e.last_timestamp = e.last_timestamp.max(*ts);
            e.revoked |= *revoked;
        }
    }

    /// Forget `public` as an allowed client (allow-list reload); its sessions carry on until
    /// they end (revoke to end them). Its handshake timestamp is kept.
    pub fn disallow_client(&mut self, public: &[u8; 32]) {
        if let Some(e) = self.clients.get_mut(public) {
            e.allowed = false;
        }
    }

    fn drop_(&mut self, r: DropReason) -> Output<'static> {
        self.counters.drops[r.index()] += 1;
        Output::Dropped(r)
    }

    /// Process one received datagram from `from`.
    #[must_use]
    pub fn handle_datagram<'b>(
        &mut self,
        now: Instant,
        from: Path,
        buf: &'b mut [u8],
    ) -> Output<'b> {
        let ty = match wire::parse(buf) {
            Err(e) => return self.drop_(DropReason::Malformed(e)),
            Ok(m) => match m {
                Message::HandshakeInit(_) => MessageType::HandshakeInit,
                Message::Transport(_) => MessageType::Data,
                Message::ReattachRequest(_) => MessageType::ReattachRequest,
                Message::ReattachResponse(_) => MessageType::ReattachResponse,
                _ => return self.drop_(DropReason::WrongDirection),
            },
        };
        match ty {
            MessageType::HandshakeInit => self.handle_init(now, from, buf),
            MessageType::ReattachRequest => self.handle_reattach_request(now, from, buf),
            MessageType::ReattachResponse => self.handle_reattach_response(now, from, buf),
            _ => self.handle_transport(now, from, buf),
        }
    }

    fn under_load(&mut self, now: Instant) -> bool {
        if now - self.hs_window.0 >= Duration::from_secs(1) {
            self.hs_window = (now, 0);
        }
        self.hs_window.1 = self.hs_window.1.saturating_add(1);
        self.hs_window.1 > self.config.cookie_threshold
    }

    fn handle_init<'b>(&mut self, now: Instant, from: Path, buf: &'b mut [u8]) -> Output<'b> {
        let Ok(init) = HandshakeInit::new_checked(buf) else {
            return self.drop_(DropReason::WrongDirection);
        };
        if !self.responder.check_mac1(&init) {
            return self.drop_(DropReason::HandshakeMac1);
        }
        self.cookies.rotate(&mut self.rng, now);
        if self.under_load(now)
            && !self
                .cookies
                .verify_mac2(now, &from.addr, init.mac2_covered(), &init.mac2())
        {
            let (nonce, sealed) =
                self.cookies
                    .seal_cookie(&mut self.rng, now, &from.addr, &init.mac1());
            let reply = wire::emit_cookie_reply(init.sender_id(), &nonce, &sealed);
            self.out.transmits.push_back(Transmit {
                dst: from,
                payload: reply.to_vec(),
            });
            self.counters.cookies_sent += 1;
            if self.counters.cookies_sent == 1 || self.counters.cookies_sent % 1024 == 0 {
                self.out.events.push_back(Event::Security {
                    session_id: None,
                    kind: SecurityKind::Flood,
                    source: from.addr,
                });
            }
            return self.drop_(DropReason::CookieRequired);
        }
        let accepted = match self.responder.read_init(&mut self.rng, &init) {
            Ok(a) => a,
            Err(HandshakeError::BadPayload | HandshakeError::Noise | _) => {
                self.out.events.push_back(Event::Security {
                    session_id: None,
                    kind: SecurityKind::AuthFailed,
                    source: from.addr,
                });
                return self.drop_(DropReason::HandshakeAuth);
            }
        };
        let client = accepted.client_public;
        let Some(entry) = self
            .clients
            .get_mut(&client)
            .filter(|e| e.allowed && !e.revoked)
        else {
            return self.drop_(DropReason::UnknownClient);
        };
        // WireGuard's rule: the timestamp must grow per client key, so a captured initiation
        // replayed later creates nothing.
        if entry
            .last_timestamp
            .is_some_and(|t| accepted.payload.timestamp <= t)
        {
            self.out.events.push_back(Event::Security {
                session_id: None,
                kind: SecurityKind::Replay,
                source: from.addr,
            });
            return self.drop_(DropReason::HandshakeReplay);
        }
        entry.last_timestamp = Some(accepted.payload.timestamp);
        self.out.node_dirty = true;
        self.out.node_clients.push(client);
        match accepted.payload.purpose {
            Purpose::NewSession => {
                if self.sessions.len() >= self.config.max_sessions {
                    return self.drop_(DropReason::SessionLimit);
                }
                let owner = self.pick_owner();
                let sid = loop {
                    let sid = self.ids.next(owner, self.config.node_id);
                    if !self.sessions.contains_key(&sid) {
                        break sid;
                    }
                };
                let Ok((keys, response)) = accepted.respond(sid, 0) else {
                    return self.drop_(DropReason::HandshakeAuth);
                };
                // One live session per identity. A fresh, authenticated new-session handshake
                // means the client no longer holds its previous session: it restarted, or the
                // response that created it was lost and it retried. The old session ends
                // explicitly (SUPERSEDED) before the new one exists, so the data plane retires
                // it before it installs the new one (same inner address).
                if let Some(old) = self
                    .clients
                    .get_mut(&client)
                    .and_then(|e| e.session.replace(sid))
                    .and_then(|old| self.sessions.get_mut(&old))
                    .filter(|o| o.state() != State::Terminated && ct_eq(&o.client_public, &client))
                {
                    apply(old, &mut self.out, now, Trigger::Superseded, &self.policy);
                }
                let epoch = EpochKeys::derive(&keys, 0, Role::Gateway, now);
                let proof_key = Some(session_proof_key(
                    &mut self.clients,
                    self.responder.keypair(),
                    &client,
                    &keys.transcript,
                ));
                let mut s = GatewaySession {
                    id: sid,
                    machine: Machine::new(),
                    client_public: client,
                    transcript: keys.transcript,
                    proof_key,
                    keys: KeySet::new(epoch),
                    send_counter: if self.out.external {
                        CONTROL_COUNTER_BASE
                    } else {
                        0
                    },
                    recv_window: ReplayWindow::new(),
                    reattach_window: ReplayWindow::new(),
                    active: Some(from),
                    owner,
                    created: now,
                    entered_state: now,
                    last_rx_active: now,
                    lost_at: None,
                    pending: None,
                    budget: SwitchBudget::default(),
                    reattach_failures: 0,
                    rekey_requested: false,
                    quality: Quality {
                        window_start: now,
                        ..Quality::default()
                    },
                    rx_packets: 0,
                    rx_bytes: 0,
                    tx_packets: 0,
                    tx_bytes: 0,
                };
                self.out.events.push_back(Event::SessionCreated {
                    session_id: sid,
                    client_key_id: client_key_id(&client),
                    path: from,
                    version: 0,
                });
                apply(
                    &mut s,
                    &mut self.out,
                    now,
                    Trigger::HandshakeCompleted,
                    &self.policy,
                );
                let slot = usize::from(owner) % self.per_core.len();
                self.per_core[slot] += 1;
                if self.out.external {
                    let mut handoff = s.handoff();
                    handoff.send_counter = 0;
                    self.out.data_plane(DataPlaneUpdate::Install {
                        handoff: Box::new(handoff),
                        owner,
                        client_public: client,
                    });
                }
                self.sessions.insert(sid, s);
                self.counters.handshakes += 1;
                self.out.transmits.push_back(Transmit {
                    dst: from,
                    payload: response.to_vec(),
                });
                Output::Consumed
            }
            Purpose::Rekey(sid) => {
                let Some(s) = self.sessions.get_mut(&sid) else {
                    return self.drop_(DropReason::RekeyDenied);
                };
                if !ct_eq(&s.client_public, &client)
                    || matches!(s.state(), State::Terminated | State::Birth)
                {
                    self.out.events.push_back(Event::RekeyDenied {
                        session_id: sid,
                        key_epoch: s.key_epoch(),
                        version: s.version(),
                    });
                    return self.drop_(DropReason::RekeyDenied);
                }
                let next_epoch = s.key_epoch().wrapping_add(1);
                let Ok((keys, response)) = accepted.respond(sid, next_epoch) else {
                    return self.drop_(DropReason::HandshakeAuth);
                };
                let next = EpochKeys::derive(&keys, next_epoch, Role::Gateway, now);
                if self.out.external {
                    self.out.data_plane.push_back(DataPlaneUpdate::NextKeys {
                        id: sid,
                        keys: Box::new(next.duplicate()),
                    });
                }
                s.keys.install_next(next);
                s.rekey_requested = false;
                self.out.dirty(sid);
                self.counters.handshakes += 1;
                self.out.transmits.push_back(Transmit {
                    dst: from,
                    payload: response.to_vec(),
                });
                Output::Consumed
            }
        }
    }

    /// The least-loaded core that is not draining (any core if every one is).
    fn pick_owner(&self) -> u8 {
        self.least_loaded(None).unwrap_or_else(|| {
            let (i, _) = self
                .per_core
                .iter()
                .enumerate()
                .min_by_key(|(_, &n)| n)
                .unwrap_or((0, &0));
            u8::try_from(i).unwrap_or(0)
        })
    }

    /// The least-loaded core that is not draining and is not `except`.
    fn least_loaded(&self, except: Option<u8>) -> Option<u8> {
        self.per_core
            .iter()
            .enumerate()
            .filter(|(i, _)| !self.draining.get(*i).copied().unwrap_or(false))
            .filter_map(|(i, n)| Some((u8::try_from(i).ok()?, *n)))
            .filter(|(i, _)| Some(*i) != except)
            .min_by_key(|(_, n)| *n)
            .map(|(i, _)| i)
    }

    /// Move a live session to core `to` (sticky routing stays sticky: only an operator's drain
    /// moves a session). Queues [`DataPlaneUpdate::Move`]; the session record is rewritten.
    ///
    /// # Errors
    /// [`MoveRefused`]: unknown or ended session, or a core this node does not have.
    pub fn move_session(&mut self, sid: SessionId, to: u8) -> Result<(), MoveRefused> {
        if usize::from(to) >= self.per_core.len() {
            return Err(MoveRefused::NoSuchCore);
        }
        let s = self
            .sessions
            .get_mut(&sid)
            .filter(|s| s.state() != State::Terminated)
            .ok_or(MoveRefused::UnknownSession)?;
        if s.owner == to {
            return Ok(());
        }
        let from = usize::from(s.owner) % self.per_core.len();
        self.per_core[from] = self.per_core[from].saturating_sub(1);
        self.per_core[usize::from(to)] += 1;
        s.owner = to;
        self.out.data_plane(DataPlaneUpdate::Move { id: sid, to });
        self.out.dirty(sid);
        Ok(())
    }

    /// The data plane dropped packets of `sid` as replays or for failed authentication, the
    /// last from `source` (its reports come at most once a second per session and reason):
    /// a SECURITY_EVENT, as the same failures of control messages raise here.
    pub fn report_dataplane_drops(
        &mut self,
        sid: SessionId,
        kind: SecurityKind,
        source: core::net::SocketAddr,
    ) {
        self.out.events.push_back(Event::Security {
            session_id: Some(sid),
            kind,
            source,
        });
    }

    /// The data plane reports `sid` held by core `owner` (a resynchronisation, or a move that
    /// failed there): record it without programming anything.
    pub fn note_owner(&mut self, sid: SessionId, owner: u8) {
        let cores = self.per_core.len();
        let Some(s) = self.sessions.get_mut(&sid) else {
            return;
        };
        if s.owner == owner || usize::from(owner) >= cores {
            return;
        }
        self.per_core[usize::from(s.owner) % cores] =
            self.per_core[usize::from(s.owner) % cores].saturating_sub(1);
        self.per_core[usize::from(owner)] += 1;
        s.owner = owner;
        self.out.dirty(sid);
    }

    /// Drain core `core`: new sessions go elsewhere, and every live session it owns is moved
    /// to the least-loaded other core (one at a time, so the load stays balanced). Returns
    /// the moves made. The core stays drained until [`Gateway::undrain_core`].
    ///
    /// # Errors
    /// [`MoveRefused::NoSuchCore`], or [`MoveRefused::NowhereToGo`] (nothing is moved).
    pub fn drain_core(&mut self, core: u8) -> Result<Vec<(SessionId, u8)>, MoveRefused> {
        if usize::from(core) >= self.per_core.len() {
            return Err(MoveRefused::NoSuchCore);
        }
        if self.least_loaded(Some(core)).is_none() {
            return Err(MoveRefused::NowhereToGo);
        }
        self.draining[usize::from(core)] = true;
        let mut on: Vec<SessionId> = self
            .sessions
            .values()
            .filter(|s| s.owner == core && s.state() != State::Terminated)
            .map(|s| s.id)
            .collect();
        on.sort_unstable();
        let mut moves = Vec::with_capacity(on.len());
        for sid in on {
            let Some(to) = self.least_loaded(Some(core)) else {
                break;
            };
            if self.move_session(sid, to).is_ok() {
                moves.push((sid, to));
            }
        }
        Ok(moves)
    }

    /// Take core `core` back into service for new sessions.
    ///
    /// # Errors
    /// [`MoveRefused::NoSuchCore`].
    pub fn undrain_core(&mut self, core: u8) -> Result<(), MoveRefused> {
        let d = self
            .draining
            .get_mut(usize::from(core))
            .ok_or(MoveRefused::NoSuchCore)?;
        *d = false;
        Ok(())
    }

    /// Cores being drained (by index).
    #[must_use]
    pub fn draining(&self) -> &[bool] {
        &self.draining
    }

    /// Sessions owned by each core.
    #[must_use]
    pub fn per_core(&self) -> &[u64] {
        &self.per_core
    }

    /// Ask the client of `sid` to rekey now (an operator's `rekey`). The request rides on the
    /// gateway's heartbeat echoes until the rekey handshake completes; the client starts one
    /// at its next heartbeat.
    ///
    /// # Errors
    /// [`DropReason::UnknownSession`] for an unknown or ended session.
    pub fn request_rekey(&mut self, sid: SessionId) -> Result<(), DropReason> {
        let s = self
            .sessions
            .get_mut(&sid)
            .filter(|s| !matches!(s.state(), State::Terminated | State::Birth))
            .ok_or(DropReason::UnknownSession)?;
        s.rekey_requested = true;
        self.out
            .data_plane(DataPlaneUpdate::RequestRekey { id: sid });
        Ok(())
    }

    fn handle_transport<'b>(&mut self, now: Instant, from: Path, buf: &'b mut [u8]) -> Output<'b> {
        let Ok(msg) = TransportMsg::new_checked(buf) else {
            return self.drop_(DropReason::WrongDirection);
        };
        let (sid, counter, epoch, ty) = (
            msg.session_id(),
            msg.counter(),
            msg.epoch(),
            msg.message_type(),
        );
        if self.out.external && ty != MessageType::Terminate {
            // Data and heartbeats are the workers' (their replay windows, their counters).
            return self.drop_(DropReason::WrongDirection);
        }
        let Some(s) = self.sessions.get_mut(&sid) else {
            return self.drop_(DropReason::UnknownSession);
        };
        if s.state() == State::Terminated {
            return self.drop_(DropReason::SessionTerminated);
        }
        let (slot, plain) =
            match open_transport(&s.keys, &mut s.recv_window, now, epoch, counter, buf) {
                Ok(x) => x,
                Err(OpenFailure::UnknownEpoch) => return self.drop_(DropReason::UnknownEpoch),
                Err(f) => {
                    let (kind, reason) = if f == OpenFailure::Replay {
                        (SecurityKind::Replay, DropReason::Replay)
                    } else {
                        (SecurityKind::AuthFailed, DropReason::AuthFailed)
                    };
                    self.out.events.push_back(Event::Security {
                        session_id: Some(sid),
                        kind,
                        source: from.addr,
                    });
                    return self.drop_(reason);
                }
            };
        // Authentic and fresh from here on.
        if slot == Slot::Next {
            if let Some(e) = s.keys.promote_next(now, self.policy.key_grace) {
                self.out.events.push_back(Event::KeyRotated {
                    session_id: sid,
                    key_epoch: e,
                    version: s.version(),
                });
            }
        }
        s.quality.on_packet(counter);
        if s.active == Some(from) {
            s.last_rx_active = now;
        } else {
            // NAT rebind or a new path: deliver (it is authentic), keep replies on the active
            // path, and start validating the new address at once.
            let seen = Seen {
                from,
                epoch,
                bytes: buf_len(plain.len()),
            };
            start_unsolicited_validation(s, &mut self.out, &mut self.rng, now, seen, &self.policy);
        }
        match ty {
            MessageType::Heartbeat => {
                let mut probe = [0u8; 8];
                probe.copy_from_slice(&plain[..8]);
                // The client reports the RTT it measured (authenticated by the AEAD); it feeds
                // the VOLATILE decision. Zero means not measured yet.
                let mut rtt = [0u8; 8];
                rtt.copy_from_slice(&plain[16..24]);
                let rtt_us = u64::from_be_bytes(rtt);
                if rtt_us != 0 {
                    s.quality.last_rtt = Some(Duration::from_micros(rtt_us));
                }
                if probe != [0; 8] {
                    let mut hb = [0u8; HEARTBEAT_PLAINTEXT_LEN];
                    hb[8..16].copy_from_slice(&probe);
                    if s.rekey_requested {
                        hb[wire::HEARTBEAT_FLAGS_OFFSET..]
                            .copy_from_slice(&wire::HEARTBEAT_FLAG_REKEY.to_be_bytes());
                    }
                    send_sealed(s, &mut self.out, MessageType::Heartbeat, &hb);
                }
                Output::Consumed
            }
            MessageType::Terminate => {
                apply(s, &mut self.out, now, Trigger::PeerTerminated, &self.policy);
                Output::Consumed
            }
            _ => {
                s.rx_packets += 1;
                s.rx_bytes += plain.len() as u64;
                Output::Deliver {
                    session_id: sid,
                    packet: plain,
                }
            }
        }
    }

    /// Seal an inner packet for `sid` in place and return where to send it and the datagram
    /// length. `buf[DATA_HEADER_LEN..DATA_HEADER_LEN + inner_len]` holds the inner packet; the
    /// buffer must have [`TAG_LEN`] bytes of room after it.
    ///
    /// # Errors
    /// [`DropReason`] if the session is unknown, terminated, has no active path, or the buffer
    /// is too small.
    pub fn encapsulate(
        &mut self,
        sid: SessionId,
        buf: &mut [u8],
        inner_len: usize,
    ) -> Result<(Path, usize), DropReason> {
        let total = DATA_HEADER_LEN + inner_len + TAG_LEN;
        if buf.len() < total {
            self.counters.drops[DropReason::TooLarge.index()] += 1;
            return Err(DropReason::TooLarge);
        }
        let Some(s) = self.sessions.get_mut(&sid) else {
            self.counters.drops[DropReason::UnknownSession.index()] += 1;
            return Err(DropReason::UnknownSession);
        };
        let Some(dst) = s.active.filter(|_| s.state() != State::Terminated) else {
            self.counters.drops[DropReason::NoActivePath.index()] += 1;
            return Err(DropReason::NoActivePath);
        };
        seal_into(s, MessageType::Data, &mut buf[..total]);
        s.tx_packets += 1;
        s.tx_bytes += inner_len as u64;
        Ok((dst, total))
    }

    /// Send an explicit reject. `reply_epoch` is the key epoch of an authenticated request:
    /// the reject is then MACed under it; otherwise (the request did not authenticate) the MAC
    /// is zero and the client treats the reject as a hint only.
    fn reject(
        &mut self,
        now: Instant,
        from: Path,
        sid: SessionId,
        counter: u64,
        code: RejectCode,
        reply_epoch: Option<u16>,
    ) -> Output<'static> {
        self.counters.rejects[usize::from(code.code() - 1)] += 1;
        let mut msg: [u8; REATTACH_REJECT_LEN] =
            emit_reattach_common(MessageType::ReattachReject, 0, sid, counter);
        msg[20] = code.code();
        if let Some(s) = self.sessions.get_mut(&sid) {
            self.out.events.push_back(Event::ReattachRejected {
                session_id: sid,
                path: from,
                code,
                version: s.version(),
            });
            if let Some(epoch) = reply_epoch {
                s.seal_control(now, epoch, &mut msg);
                // Anti-amplification accounting applies to authenticated exchanges only: an
                // unauthenticated message must not change any session data.
                if let Some(p) = s.pending.as_mut().filter(|p| p.path == from) {
                    if !p.may_send(msg.len()) {
                        return self.drop_(DropReason::ReattachRejected);
                    }
                    p.bytes_out += msg.len();
                }
            }
        }
        // A reject is never larger than the request it answers, so it cannot amplify.
        self.out.transmits.push_back(Transmit {
            dst: from,
            payload: msg.to_vec(),
        });
        self.drop_(DropReason::ReattachRejected)
    }

    fn handle_reattach_request<'b>(
        &mut self,
        now: Instant,
        from: Path,
        buf: &'b mut [u8],
    ) -> Output<'b> {
        let Ok(req) = ReattachRequest::new_checked(buf) else {
            return self.drop_(DropReason::WrongDirection);
        };
        let (sid, counter, epoch) = (req.session_id(), req.request_counter(), req.epoch());
        // 1. Session exists.
        let Some(s) = self.sessions.get(&sid) else {
            return self.reject(now, from, sid, counter, RejectCode::UnknownSession, None);
        };
        // 2. State allows a reattach.
        if matches!(s.state(), State::Birth | State::Terminated) {
            return self.reject(now, from, sid, counter, RejectCode::InvalidState, None);
        }
        // 3. Session and key lifetimes.
        if now - s.created >= self.policy.session_max_lifetime {
            return self.reject(now, from, sid, counter, RejectCode::SessionExpired, None);
        }
        let Some((_, keys)) = s.keys.for_receive(now, req.epoch()) else {
            return self.reject(now, from, sid, counter, RejectCode::KeyExpired, None);
        };
        if now - keys.created >= self.policy.reject_after {
            return self.reject(now, from, sid, counter, RejectCode::KeyExpired, None);
        }
        // 4. Symmetric integrity under the session's control key.
        if !verify_control_mac(keys.ctrl_recv.expose(), req.mac_covered(), &req.mac())
            || !req.reserved_ok()
        {
            self.out.events.push_back(Event::Security {
                session_id: Some(sid),
                kind: SecurityKind::AuthFailed,
                source: from.addr,
            });
            return self.reject(now, from, sid, counter, RejectCode::AuthFailed, None);
        }
        // 5. Freshness (session-relative time, so no wall-clock sync is needed) and replay.
        let gateway_ms = millis(now - s.created);
        if gateway_ms.abs_diff(req.client_time_ms()) > millis(self.policy.reattach_max_age) {
            return self.reject(
                now,
                from,
                sid,
                counter,
                RejectCode::StaleRequest,
                Some(epoch),
            );
        }
        if let Err(e) = s.reattach_window.check(counter) {
            self.out.events.push_back(Event::Security {
                session_id: Some(sid),
                kind: SecurityKind::Replay,
                source: from.addr,
            });
            let _: ReplayError = e;
            return self.reject(
                now,
                from,
                sid,
                counter,
                RejectCode::ReplayDetected,
                Some(epoch),
            );
        }
        // 6. Asymmetric proof of possession of the client identity key (its key derived at
        // the session's creation from the identity's kept DH; no deadline moves).
        let Some(s) = self.sessions.get_mut_deadline_not_earlier(&sid) else {
            return self.drop_(DropReason::UnknownSession);
        };
        // (Unset only for a session restored from its record.)
        let key = s.proof_key.get_or_insert_with(|| {
            session_proof_key(
                &mut self.clients,
                self.responder.keypair(),
                &s.client_public,
                &s.transcript,
            )
        });
        let expected = proof_with(key, req.proof_covered());
        if !ct_eq(&expected, &req.proof()) {
            self.out.events.push_back(Event::Security {
                session_id: Some(sid),
                kind: SecurityKind::BadProof,
                source: from.addr,
            });
            return self.reject(now, from, sid, counter, RejectCode::BadProof, Some(epoch));
        }
        let echo = req.challenge_echo();
        // Policy applies to the transport the request really arrived on; a request that claims
        // another one is refused.
        let transport = (Transport::from_code(req.transport_code()) == Some(from.transport))
            .then_some(from.transport);
        let req_len = req.bytes().len();
        let Some(s) = self.sessions.get_mut(&sid) else {
            return self.drop_(DropReason::UnknownSession);
        };
        // The request is genuine: consume its counter.
        let _ = s.reattach_window.accept(counter);
        self.out.dirty(sid);
        // A request from the path that is already active asks for no switch: confirm it
        // without a transition, so it costs neither budget nor a version. In VOLATILE too: it
        // is typically the retry of a request whose bind happened and whose ack was lost, and
        // refusing it (inside the cooldown) would end the client's attempt with the client on
        // the old path and the gateway on the new one.
        let owner_ok = self.config.local_core.is_none_or(|c| c == s.owner);
        if s.active == Some(from)
            && matches!(s.state(), State::Attached | State::Volatile)
            && transport.is_some_and(|t| self.policy.allows(t))
            && owner_ok
        {
            s.last_rx_active = now;
            let version = s.version();
            return self.ack(now, sid, from, counter, epoch, version);
        }
        // 7.-8. Policy and ownership.
        if let Err(code) = self.policy_and_ownership(now, sid, transport) {
            return self.reject(now, from, sid, counter, code, Some(epoch));
        }
        let Some(s) = self.sessions.get_mut(&sid) else {
            return self.drop_(DropReason::UnknownSession);
        };
        // 9. Path validation: an echo of a challenge we sent to exactly this path proves the
        // client receives there; otherwise challenge it now.
        if let Some(p) = s
            .pending
            .as_mut()
            .filter(|p| p.path == from && now < p.deadline)
        {
            p.bytes_in += req_len;
            if p.echoed(&echo) {
                let version = p.version;
                return self.bind(now, sid, from, counter, epoch, version);
            }
            if p.is_solicited() {
                // A retry of a request whose challenge is still open: resend that challenge
                // rather than start over, or a path whose RTT exceeds the client's retry
                // interval could never complete.
                let mut p = p.clone();
                send_challenge(s, &mut self.out, now, &mut p);
                s.pending = Some(p);
                return Output::Consumed;
            }
        }
        let version = s.version();
        let mut token = [0u8; TOKEN_LEN];
        self.rng.fill_bytes(&mut token);
        let mut pending = PendingValidation {
            path: from,
            token,
            previous_token: [0; TOKEN_LEN],
            request_counter: counter,
            epoch,
            version,
            deadline: now + self.policy.path_validation_timeout,
            bytes_in: req_len,
            bytes_out: 0,
            last_sent: now,
            started: now,
        };
        send_challenge(s, &mut self.out, now, &mut pending);
        s.pending = Some(pending);
        Output::Consumed
    }

    /// Policy checks in SPEC.md section 4 order — switch budget, cooldown (after a switch, or
    /// inside DEGRADED), allowed transport — then ownership. May apply SWITCH_RATE_LIMITED.
    fn policy_and_ownership(
        &mut self,
        now: Instant,
        sid: SessionId,
        transport: Option<Transport>,
    ) -> Result<(), RejectCode> {
        let policy = &self.policy;
        let Some(s) = self.sessions.get_mut(&sid) else {
            return Err(RejectCode::UnknownSession);
        };
        let code = if s.budget.exhausted(now, policy.max_switches_per_min) {
            let observed = s.budget.in_window(now) as u64 + 1;
            self.out.events.push_back(Event::PolicyLimit {
                session_id: sid,
                limit: "max_switches_per_min",
                threshold: u64::from(policy.max_switches_per_min),
                observed,
                version: s.version(),
            });
            if matches!(
                s.state(),
                State::Attached | State::Volatile | State::Recovering
            ) {
                apply(s, &mut self.out, now, Trigger::SwitchBudgetExceeded, policy);
            }
            Some(RejectCode::SwitchRateLimited)
        } else if (s.state() == State::Degraded && now - s.entered_state < policy.degraded_cooldown)
            || s.budget.cooling(now, policy.switch_cooldown)
        {
            Some(RejectCode::CooldownActive)
        } else if !transport.is_some_and(|t| policy.allows(t)) {
            Some(RejectCode::PolicyDenied)
        } else if self.config.local_core.is_some_and(|c| c != s.owner) {
            Some(RejectCode::NotOwner)
        } else {
            None
        };
        match code {
            Some(code) => {
                self.note_denied(now, sid, code);
                Err(code)
            }
            None => Ok(()),
        }
    }

    /// Count a valid-but-denied attempt in RECOVERING; at `max_reattach_failures` the session
    /// goes to DEGRADED (RECOVERY_ATTEMPTS_EXCEEDED).
    fn note_denied(&mut self, now: Instant, sid: SessionId, code: RejectCode) {
        let Some(s) = self.sessions.get_mut(&sid) else {
            return;
        };
        if s.state() == State::Recovering && code.is_valid_but_denied() {
            s.reattach_failures += 1;
            if s.reattach_failures >= self.policy.max_reattach_failures {
                apply(
                    s,
                    &mut self.out,
                    now,
                    Trigger::ReattachFailuresExceeded,
                    &self.policy,
                );
            }
        }
    }

    fn handle_reattach_response<'b>(
        &mut self,
        now: Instant,
        from: Path,
        buf: &'b mut [u8],
    ) -> Output<'b> {
        let Ok(resp) = ReattachResponse::new_checked(buf) else {
            return self.drop_(DropReason::WrongDirection);
        };
        let sid = resp.session_id();
        let Some(s) = self.sessions.get_mut(&sid) else {
            return self.drop_(DropReason::UnknownSession);
        };
        let Some((_, keys)) = s.keys.for_receive(now, resp.epoch()) else {
            return self.drop_(DropReason::UnknownEpoch);
        };
        if !verify_control_mac(keys.ctrl_recv.expose(), resp.mac_covered(), &resp.mac()) {
            self.out.events.push_back(Event::Security {
                session_id: Some(sid),
                kind: SecurityKind::AuthFailed,
                source: from.addr,
            });
            return self.drop_(DropReason::AuthFailed);
        }
        // A response completes only a validation started by a full request (counter > 0):
        // the unsolicited validation after a NAT rebind (counter 0) is completed by a new
        // request carrying the proof of possession, never by a bare response.
        let Some(p) = s.pending.as_mut().filter(|p| p.is_solicited()) else {
            return self.drop_(DropReason::ReattachRejected);
        };
        let epoch = resp.epoch();
        let matches = p.path == from
            && p.request_counter == resp.request_counter()
            && ct_eq(&p.token, &resp.token());
        if !matches || now >= p.deadline {
            // Not counted toward max_reattach_failures: a response could be a replay. Expired
            // validations are counted by the timer instead.
            let counter = resp.request_counter();
            return self.reject(
                now,
                from,
                sid,
                counter,
                RejectCode::PathValidationFailed,
                Some(epoch),
            );
        }
        p.bytes_in += resp.bytes().len();
        let (counter, version) = (p.request_counter, p.version);
        // Policy may have changed while the challenge was out: check again at bind time.
        if let Err(code) = self.policy_and_ownership(now, sid, Some(from.transport)) {
            return self.reject(now, from, sid, counter, code, Some(epoch));
        }
        self.bind(now, sid, from, counter, epoch, version)
    }

    /// The atomic step: compare the version seen when validation started, switch the active
    /// path, apply REATTACH_OK (version + 1), record the switch. Nothing changes on failure.
    fn bind(
        &mut self,
        now: Instant,
        sid: SessionId,
        path: Path,
        counter: u64,
        epoch: u16,
        seen_version: u64,
    ) -> Output<'static> {
        let Some(s) = self.sessions.get_mut(&sid) else {
            return self.drop_(DropReason::UnknownSession);
        };
        if s.version() != seen_version || transition_check(s.state()).is_err() {
            s.pending = None;
            return self.reject(
                now,
                path,
                sid,
                counter,
                RejectCode::AtomicityFailed,
                Some(epoch),
            );
        }
        let from_path = s.active;
        let recovery_ms = s.lost_at.map(|t| millis(now - t));
        let reattach_ms = s.pending.as_ref().map(|p| millis(now - p.started));
        s.pending = None;
        s.active = Some(path);
        s.last_rx_active = now;
        s.lost_at = None;
        s.reattach_failures = 0;
        s.budget.record(now);
        self.out.data_plane(DataPlaneUpdate::SetPath {
            id: sid,
            path: Some(path),
        });
        let Some(tr) = apply(
            s,
            &mut self.out,
            now,
            Trigger::ReattachAccepted,
            &self.policy,
        ) else {
            return self.drop_(DropReason::ReattachRejected);
        };
        self.out.events.push_back(Event::PathSwitched {
            session_id: sid,
            from_path,
            to_path: path,
            recovery_ms,
            reattach_ms,
            version: tr.version,
        });
        self.counters.reattaches += 1;
        self.ack(now, sid, path, counter, epoch, tr.version)
    }

    /// Confirm a binding to `path` with the session's version, MACed under `epoch`.
    fn ack(
        &mut self,
        now: Instant,
        sid: SessionId,
        path: Path,
        counter: u64,
        epoch: u16,
        version: u64,
    ) -> Output<'static> {
        let Some(s) = self.sessions.get(&sid) else {
            return self.drop_(DropReason::UnknownSession);
        };
        let mut ack: [u8; REATTACH_ACK_LEN] =
            emit_reattach_common(MessageType::ReattachAck, 0, sid, counter);
        ack[20..28].copy_from_slice(&version.to_be_bytes());
        s.seal_control(now, epoch, &mut ack);
        self.out.transmits.push_back(Transmit {
            dst: path,
            payload: ack.to_vec(),
        });
        Output::Consumed
    }

    /// End a session by operator command (`OPERATOR_TERMINATED`).
    ///
    /// # Errors
    /// `UnknownSession` if there is no live session `sid`.
    pub fn terminate(&mut self, now: Instant, sid: SessionId) -> Result<(), DropReason> {
        self.end(now, sid, Trigger::OperatorTerminated)
    }

    /// End a session the data plane refused or lost (`DATAPLANE_FAILED`).
    ///
    /// # Errors
    /// `UnknownSession` if there is no live session `sid`.
    pub fn dataplane_failed(&mut self, now: Instant, sid: SessionId) -> Result<(), DropReason> {
        self.end(now, sid, Trigger::DataplaneFailed)
    }

    fn end(&mut self, now: Instant, sid: SessionId, trigger: Trigger) -> Result<(), DropReason> {
        let s = self
            .sessions
            .get_mut(&sid)
            .filter(|s| s.state() != State::Terminated)
            .ok_or(DropReason::UnknownSession)?;
        apply(s, &mut self.out, now, trigger, &self.policy);
        Ok(())
    }

    /// Revoke a client key: refuse its handshakes and end its sessions with REVOKED.
    pub fn revoke_client(&mut self, now: Instant, public: &[u8; 32]) -> usize {
        self.clients.entry(*public).or_default().revoked = true;
        self.out.node_dirty = true;
        self.out.node_clients.push(*public);
        let mut n = 0;
        for s in self.sessions.values_mut() {
            if ct_eq(&s.client_public, public) && s.state() != State::Terminated {
                apply(s, &mut self.out, now, Trigger::Revoked, &self.policy);
                n += 1;
            }
        }
        n
    }

    /// When [`Gateway::handle_timeout`] should next be called: the earliest deadline in the
    /// deadline index (brought up to date with the sessions changed since).
    #[must_use]
    pub fn poll_timeout(&mut self) -> Option<Instant> {
        let (policy, linger) = (&self.policy, self.config.terminated_linger);
        self.sessions
            .next_deadline(|s| timer_deadline(s, policy, linger, None))
    }

    /// Run every timer due at `now`: path dead, recovery window, DEGRADED bounds, quality,
    /// lifetimes, key expiry, key grace, path-validation deadlines, eviction. Visits only the
    /// sessions with a deadline due (the deadline index).
    pub fn handle_timeout(&mut self, now: Instant) {
        let policy = &self.policy;
        let linger = self.config.terminated_linger;
        let due = self
            .sessions
            .take_due(now, |s| timer_deadline(s, policy, linger, None));
        let mut evict = Vec::new();
        for id in due {
            let Some(s) = self.sessions.get_mut(&id) else {
                continue;
            };
            if s.state() == State::Terminated {
                if now - s.entered_state >= linger {
                    evict.push(s.id);
                }
                continue;
            }
            s.keys.expire_previous(now);
            if s.pending.as_ref().is_some_and(|p| now >= p.deadline) {
                s.pending = None;
                // A path validation that timed out is a valid-but-denied attempt.
                if s.state() == State::Recovering {
                    s.reattach_failures += 1;
                    if s.reattach_failures >= policy.max_reattach_failures {
                        apply(
                            s,
                            &mut self.out,
                            now,
                            Trigger::ReattachFailuresExceeded,
                            policy,
                        );
                    }
                }
            }
            let due = s.due_triggers(now, policy);
            if let Some(t) = resolve(s.state(), &due) {
                if t == Trigger::PathDead {
                    s.lost_at = Some(s.last_rx_active);
                }
                if t == Trigger::KeysExpired {
                    self.out.events.push_back(Event::KeyExpired {
                        session_id: s.id,
                        key_epoch: s.key_epoch(),
                        version: s.version(),
                    });
                }
                apply(s, &mut self.out, now, t, policy);
            }
        }
        for id in evict {
            if let Some(s) = self.sessions.remove(&id) {
                let c = usize::from(s.owner) % self.per_core.len();
                self.per_core[c] = self.per_core[c].saturating_sub(1);
            }
        }
        // The sessions just visited: only deadlines still ahead.
        self.sessions
            .reindex(|s| timer_deadline(s, policy, linger, Some(now)));
    }
}

impl<R> Gateway<R> {
    /// Check the deadline index against every session at `now` (see
    /// [`crate::testing::Sim`], which does it at every step).
    ///
    /// # Errors
    /// The first session indexed later than its next deadline.
    #[doc(hidden)]
    pub fn check_timer_index(&self, now: Instant) -> Result<(), String> {
        let (policy, linger) = (&self.policy, self.config.terminated_linger);
        self.sessions
            .check(now, |s| timer_deadline(s, policy, linger, Some(now)))
    }
}

/// When `s`'s timers next need to run (later than `after`, if given): its next deadline, or
/// its eviction once ended.
fn timer_deadline(
    s: &GatewaySession,
    policy: &Policy,
    linger: Duration,
    after: Option<Instant>,
) -> Option<Instant> {
    if s.state() == State::Terminated {
        Some(s.entered_state + linger)
    } else {
        s.next_deadline(policy, after)
    }
}

/// Allocates SessionIds that never repeat while the allocator lives, yet are unguessable: a
/// counter (from a random start) through a keyed 48-bit permutation (a 4-round Feistel network
/// with keyed BLAKE2s as round function). Distinct counters give distinct outputs, so the 48
/// random bits repeat only after 2^48 sessions; the core and node bits are added around them.
struct SessionIdAllocator {
    key: zeroize::Zeroizing<[u8; 32]>,
    counter: u64,
}

impl SessionIdAllocator {
    /// What [`NodeRecord`] keeps of it.
    fn record(&self) -> crate::persist::IdAllocatorRecord {
        crate::persist::IdAllocatorRecord {
            key: self.key.clone(),
            counter: self.counter,
        }
    }

    fn new<R: RngCore>(rng: &mut R) -> Self {
        let mut key = zeroize::Zeroizing::new([0u8; 32]);
        rng.fill_bytes(&mut *key);
        SessionIdAllocator {
            key,
            counter: rng.next_u64(),
        }
    }

    fn permute48(&self, x: u64) -> u64 {
        const HALF: u64 = 0xFF_FFFF;
        let (mut l, mut r) = ((x >> 24) & HALF, x & HALF);
        for round in 0u8..4 {
            let f = crate::crypto::mac16(&self.key, &[&[round], &r.to_be_bytes()]);
            let f = u64::from_be_bytes([0, 0, 0, 0, 0, f[0], f[1], f[2]]);
            (l, r) = (r, l ^ f);
        }
        (l << 24) | r
    }

    fn next(&mut self, core: u8, node: u8) -> SessionId {
        loop {
            self.counter = self.counter.wrapping_add(1) & 0xFFFF_FFFF_FFFF;
            let random48 = self.permute48(self.counter);
            // Zero is reserved (never a valid session on the wire).
            if random48 != 0 || core != 0 || node != 0 {
                return SessionId::compose(core, node, random48);
            }
        }
    }
}

fn transition_check(state: State) -> Result<(), ()> {
    crate::state::transition(state, Trigger::ReattachAccepted)
        .map(|_| ())
        .map_err(|_| ())
}

fn buf_len(plain: usize) -> usize {
    DATA_HEADER_LEN + plain + TAG_LEN
}

/// Apply a trigger to a session, emitting exactly one SESSION_STATE_CHANGED per accepted
/// transition (and SESSION_TERMINATED plus a TERMINATE message on the way out), or an
/// A session's reattach proof key, from its client identity's DH, which is computed the first
/// time and kept in the identity's entry ([`ClientEntry::identity_dh`]).
fn session_proof_key(
    clients: &mut HashMap<[u8; 32], ClientEntry>,
    ours: &StaticKeypair,
    client: &[u8; 32],
    transcript: &[u8; 32],
) -> crate::crypto::SecretKey {
    let dh = clients
        .entry(*client)
        .or_default()
        .identity_dh
        .get_or_insert_with(|| identity_dh(ours, client));
    proof_key_from(dh, transcript)
}

/// INVALID_STATE_TRANSITION event without mutation.
fn apply(
    s: &mut GatewaySession,
    out: &mut Outbox,
    now: Instant,
    trigger: Trigger,
    policy: &Policy,
) -> Option<Transition> {
    let _ = policy;
    match s.machine.apply(trigger) {
        Ok(tr) => {
            s.entered_state = now;
            out.dirty(s.id);
            match tr.to {
                State::Recovering => {
                    s.active = None;
                    out.data_plane(DataPlaneUpdate::SetPath {
                        id: s.id,
                        path: None,
                    });
                }
                State::Volatile | State::Attached => s.quality.healthy_since = None,
                _ => {}
            }
            out.events.push_back(Event::StateChanged {
                session_id: s.id,
                from: tr.from,
                to: tr.to,
                reason: tr.reason,
                version: tr.version,
            });
            if tr.to == State::Terminated {
                let mut p = [0u8; TERMINATE_PLAINTEXT_LEN];
                p[0] = tr.reason.code();
                send_sealed(s, out, MessageType::Terminate, &p);
                s.active = None;
                s.pending = None;
                out.data_plane(DataPlaneUpdate::Retire { id: s.id });
                out.events.push_back(Event::SessionTerminated {
                    session_id: s.id,
                    reason: tr.reason,
                    session_age_ms: millis(now - s.created),
                    switches_total: s.budget.total(),
                    version: tr.version,
                });
            }
            Some(tr)
        }
        Err(e) => {
            out.events.push_back(Event::InvalidTransition {
                session_id: s.id,
                state: e.from,
                trigger: e.trigger,
                version: s.version(),
            });
            None
        }
    }
}

/// Seal `buf` (header space, plaintext, tag space) under the current key with the next counter.
fn seal_into(s: &mut GatewaySession, ty: MessageType, buf: &mut [u8]) {
    let counter = s.send_counter;
    s.send_counter += 1;
    s.keys.current_mut().seal_transport(s.id, counter, ty, buf);
}

fn send_sealed(s: &mut GatewaySession, out: &mut Outbox, ty: MessageType, plaintext: &[u8]) {
    let Some(dst) = s.active else { return };
    let mut buf = vec![0u8; DATA_HEADER_LEN + plaintext.len() + TAG_LEN];
    buf[DATA_HEADER_LEN..DATA_HEADER_LEN + plaintext.len()].copy_from_slice(plaintext);
    seal_into(s, ty, &mut buf);
    out.transmits.push_back(Transmit { dst, payload: buf });
}

fn send_challenge(s: &GatewaySession, out: &mut Outbox, now: Instant, p: &mut PendingValidation) {
    if !p.may_send(REATTACH_CHALLENGE_LEN) {
        return;
    }
    let mut msg: [u8; REATTACH_CHALLENGE_LEN] =
        emit_reattach_common(MessageType::ReattachChallenge, 0, s.id, p.request_counter);
    msg[20..36].copy_from_slice(&p.token);
    s.seal_control(now, p.epoch, &mut msg);
    p.bytes_out += msg.len();
    p.last_sent = now;
    out.transmits.push_back(Transmit {
        dst: p.path,
        payload: msg.to_vec(),
    });
}

/// Minimum interval between two unsolicited challenges to the same path.
const CHALLENGE_RESEND: Duration = Duration::from_millis(250);

/// An authenticated packet seen from a path that is not the active one.
struct Seen {
    from: Path,
    epoch: u16,
    bytes: usize,
}

fn start_unsolicited_validation<R: RngCore>(
    s: &mut GatewaySession,
    out: &mut Outbox,
    rng: &mut R,
    now: Instant,
    seen: Seen,
    policy: &Policy,
) {
    let Seen {
        from,
        epoch,
        bytes: received,
    } = seen;
    if s.lost_at.is_none() && s.active.is_some() {
        s.lost_at = Some(now);
    }
    if let Some(p) = s
        .pending
        .as_mut()
        .filter(|p| p.path == from && now < p.deadline)
    {
        // Already validating this path: more received bytes widen the send budget. An
        // unsolicited challenge that may have been lost (or whose answer was lost or refused,
        // e.g. inside the switch cooldown) is resent, at most every CHALLENGE_RESEND, with a
        // fresh token: the client answers each token once (a replayed challenge is not
        // answered). A solicited one is left as it is: its response must return its token,
        // which a renewal would make stale whenever the round trip exceeds CHALLENGE_RESEND
        // (a queue in a mass rebind), and the client's retried request resends it.
        p.bytes_in += received;
        if !p.is_solicited() && now - p.last_sent >= CHALLENGE_RESEND {
            let mut p = p.clone();
            p.previous_token = p.token;
            rng.fill_bytes(&mut p.token);
            send_challenge(s, out, now, &mut p);
            s.pending = Some(p);
        }
        return;
    }
    let mut token = [0u8; TOKEN_LEN];
    rng.fill_bytes(&mut token);
    let mut p = PendingValidation {
        path: from,
        token,
        previous_token: [0; TOKEN_LEN],
        request_counter: 0,
        epoch,
        version: s.version(),
        deadline: now + policy.path_validation_timeout,
        bytes_in: received,
        bytes_out: 0,
        last_sent: now,
        started: now,
    };
    send_challenge(s, out, now, &mut p);
    s.pending = Some(p);
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand_chacha::rand_core::SeedableRng;
    use rand_chacha::ChaCha20Rng;
    use std::collections::HashSet;

    #[test]
    fn the_id_allocator_survives_a_restart_through_the_node_record() {
        let mut rng = ChaCha20Rng::seed_from_u64(5);
        let mut a = SessionIdAllocator::new(&mut rng);
        let before: Vec<SessionId> = (0..100).map(|_| a.next(0, 0)).collect();
        let rec = NodeRecord {
            clients: Vec::new(),
            ids: Some(crate::persist::IdAllocatorRecord {
                key: a.key.clone(),
                counter: a.counter,
            }),
        };
        let decoded = NodeRecord::decode(&rec.encode()).expect("decode");
        assert_eq!(decoded, rec);
        // Restored (with another random start), it continues the same sequence.
        let kp = StaticKeypair::generate(&mut rng);
        let mut gw = Gateway::new(
            GatewayConfig::default(),
            Policy::default(),
            kp,
            ChaCha20Rng::seed_from_u64(6),
            Instant::from_millis(1),
        )
        .expect("gateway");
        gw.restore_node(&decoded);
        let after: Vec<SessionId> = (0..100).map(|_| gw.ids.next(0, 0)).collect();
        let expect: Vec<SessionId> = (0..100).map(|_| a.next(0, 0)).collect();
        assert_eq!(after, expect);
        let all: HashSet<SessionId> = before.iter().chain(&after).copied().collect();
        assert_eq!(all.len(), 200, "an id was handed out twice");
        // And the gateway exports it again.
        assert_eq!(gw.export_node().ids.map(|i| i.counter), Some(a.counter));
    }

    #[test]
    fn session_ids_do_not_repeat_and_carry_owner() {
        let mut a = SessionIdAllocator::new(&mut ChaCha20Rng::seed_from_u64(1));
        let mut seen = HashSet::new();
        for i in 0..50_000u32 {
            let core = (i % 4) as u8;
            let id = a.next(core, 9);
            assert_eq!((id.owner_core(), id.owner_node()), (core, 9));
            assert!(
                seen.insert(id.0 & 0xFFFF_FFFF_FFFF),
                "48-bit part repeated after {i}"
            );
        }
    }

    #[test]
    fn permutation_is_a_bijection_on_a_sample() {
        let a = SessionIdAllocator::new(&mut ChaCha20Rng::seed_from_u64(2));
        let outs: HashSet<u64> = (0..20_000u64).map(|x| a.permute48(x)).collect();
        assert_eq!(outs.len(), 20_000);
        assert!(outs.iter().all(|&o| o < (1 << 48)));
    }

    #[test]
    fn a_bare_response_cannot_complete_an_unsolicited_validation() {
        use crate::reattach::control_mac;
        use crate::testing::Sim;
        use crate::wire::{MAC_LEN, REATTACH_RESPONSE_LEN};
        // Someone holding the session keys, but not the client identity key, sends a genuine
        // data packet from their own address, receives the unsolicited challenge and answers
        // it with a validly MACed response instead of a request carrying the proof: nothing
        // may be bound.
        let mut sim = Sim::new(13, Policy::default());
        let sid = sim.connect();
        sim.run_for(Duration::from_secs(1));
        let attacker = Path::udp("198.51.100.9:7000".parse().expect("addr"));
        sim.client_send("redirected");
        let (_, (_, mut data)) = sim.net.in_flight.pop_first().expect("in flight");
        assert!(matches!(
            sim.gw.handle_datagram(sim.now, attacker, &mut data),
            Output::Deliver { .. }
        ));
        let challenge = std::iter::from_fn(|| sim.gw.poll_transmit())
            .find(|t| {
                t.dst == attacker
                    && wire::peek_type(&t.payload) == Ok(MessageType::ReattachChallenge)
            })
            .expect("unsolicited challenge to the new address");
        let mut response = challenge.payload.clone();
        assert_eq!(response.len(), REATTACH_RESPONSE_LEN);
        response[1] = MessageType::ReattachResponse as u8;
        let c2g_ctrl = sim
            .gw
            .sessions
            .get(&sid)
            .expect("session")
            .keys
            .current()
            .ctrl_recv
            .clone();
        let mac = control_mac(
            c2g_ctrl.expose(),
            &response[..REATTACH_RESPONSE_LEN - MAC_LEN],
        );
        response[REATTACH_RESPONSE_LEN - MAC_LEN..].copy_from_slice(&mac);
        let out = sim.gw.handle_datagram(sim.now, attacker, &mut response);
        assert!(
            matches!(out, Output::Dropped(DropReason::ReattachRejected)),
            "{out:?}"
        );
        assert_ne!(sim.session(sid).active, Some(attacker));
        assert_eq!(sim.session(sid).version(), 1);
    }

    #[test]
    fn a_data_plane_drop_report_is_a_security_event_naming_its_source() {
        use crate::testing::Sim;
        let mut sim = Sim::new(23, Policy::default());
        let sid = sim.connect();
        while sim.gw.poll_event().is_some() {}
        let source: core::net::SocketAddr = "203.0.113.9:4444".parse().expect("addr");
        sim.gw
            .report_dataplane_drops(sid, SecurityKind::Replay, source);
        assert_eq!(
            sim.gw.poll_event(),
            Some(Event::Security {
                session_id: Some(sid),
                kind: SecurityKind::Replay,
                source,
            })
        );
        assert_eq!(sim.gw.poll_event(), None);
    }

    #[test]
    fn a_session_has_its_proof_key_from_creation_and_its_identity_keeps_the_dh() {
        use crate::testing::Sim;
        let mut sim = Sim::new(22, Policy::default());
        let sid = sim.connect();
        let s = sim.session(sid);
        let expected =
            crate::reattach::proof_key(sim.gw.responder.keypair(), &s.client_public, &s.transcript);
        let kept = s.proof_key.as_ref().expect("derived at creation");
        assert!(ct_eq(kept.expose(), expected.expose()));
        let dh = sim.gw.clients[&s.client_public]
            .identity_dh
            .as_ref()
            .expect("kept for the identity");
        assert!(ct_eq(
            dh.expose(),
            &*sim.gw.responder.keypair().diffie_hellman(&s.client_public)
        ));
    }

    #[test]
    fn a_kept_proof_key_still_refuses_a_proof_from_another_identity() {
        use crate::client::LocalPath;
        use crate::reattach::{control_mac, proof};
        use crate::testing::Sim;
        use crate::wire::{
            emit_reattach_request, ReattachRequestFields, MAC_LEN, REATTACH_REQUEST_LEN,
        };
        let mut sim = Sim::new(21, Policy::default());
        let sid = sim.connect();
        sim.run_for(Duration::from_secs(2));
        // A genuine jump: both sides derive and keep the proof key.
        sim.client.reattach(sim.now, LocalPath(1));
        sim.run_for(Duration::from_millis(300));
        let path1 = Path::udp(sim.net.nat[&LocalPath(1)]);
        assert_eq!(sim.session(sid).active, Some(path1));
        assert!(
            sim.session(sid).proof_key.is_some(),
            "kept after the first proof"
        );
        let version = sim.session(sid).version();
        // Someone holding the session keys but another identity key asks to move it.
        let attacker = Path::udp("198.51.100.9:7000".parse().expect("addr"));
        let (ctrl, epoch, created, transcript) = {
            let s = sim.session(sid);
            let k = s.keys.current();
            (k.ctrl_recv.clone(), k.wire_epoch(), s.created, s.transcript)
        };
        let mut req = emit_reattach_request(&ReattachRequestFields {
            epoch,
            session_id: sid,
            counter: 1000,
            client_time_ms: millis(sim.now - created),
            transport: Transport::Udp.code(),
            challenge_echo: [0; TOKEN_LEN],
        });
        let other = StaticKeypair::from_secret_bytes([0x5A; 32]);
        let gateway_public = sim.gw.responder.keypair().public();
        let forged = proof(&other, &gateway_public, &transcript, &req[..52]);
        req[52..68].copy_from_slice(&forged);
        let mac = control_mac(ctrl.expose(), &req[..REATTACH_REQUEST_LEN - MAC_LEN]);
        req[REATTACH_REQUEST_LEN - MAC_LEN..].copy_from_slice(&mac);
        while sim.gw.poll_event().is_some() {}
        let out = sim.gw.handle_datagram(sim.now, attacker, &mut req);
        assert!(
            matches!(out, Output::Dropped(DropReason::ReattachRejected)),
            "{out:?}"
        );
        assert!(
            std::iter::from_fn(|| sim.gw.poll_event()).any(|e| matches!(
                e,
                Event::Security {
                    kind: SecurityKind::BadProof,
                    ..
                }
            )),
            "a bad proof is a security event"
        );
        assert_eq!(sim.session(sid).active, Some(path1));
        assert_eq!(sim.session(sid).version(), version);
        // The genuine client still jumps back with its kept key (after the switch cooldown).
        sim.run_for(Duration::from_secs(20));
        sim.client.reattach(sim.now, LocalPath(0));
        sim.run_for(Duration::from_millis(300));
        assert_eq!(
            sim.session(sid).active,
            Some(Path::udp(sim.net.nat[&LocalPath(0)]))
        );
    }

    #[test]
    fn refuses_to_start_with_a_stuck_rng_or_bad_policy() {
        struct Stuck;
        impl RngCore for Stuck {
            fn next_u32(&mut self) -> u32 {
                0
            }
            fn next_u64(&mut self) -> u64 {
                0
            }
            fn fill_bytes(&mut self, dest: &mut [u8]) {
                dest.fill(0);
            }
            fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), rand_core::Error> {
                dest.fill(0);
                Ok(())
            }
        }
        impl CryptoRng for Stuck {}
        let key = StaticKeypair::from_secret_bytes([1; 32]);
        let e = Gateway::new(
            GatewayConfig::default(),
            Policy::default(),
            key.clone(),
            Stuck,
            Instant::ZERO,
        )
        .expect_err("stuck RNG accepted");
        assert!(matches!(e, StartError::Rng(_)), "{e}");
        let bad = Policy {
            recovery_window: Duration::ZERO,
            ..Policy::default()
        };
        let e = Gateway::new(
            GatewayConfig::default(),
            bad,
            key,
            ChaCha20Rng::seed_from_u64(1),
            Instant::ZERO,
        )
        .expect_err("invalid policy accepted");
        assert!(e.to_string().contains("recovery_window"), "{e}");
    }
}
