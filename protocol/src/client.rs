//! The client endpoint, sans I/O: handshake, data, heartbeats, rekey, reattach and terminate.
//!
//! The client does not know its addresses as the gateway sees them (NAT); it names its own
//! sockets or interfaces by [`LocalPath`] handles chosen by the shell. Every datagram in and
//! out carries the handle it arrived on or must leave by.
//!
//! Driving API: [`Client::connect`], [`Client::handle_datagram`], [`Client::encapsulate`],
//! [`Client::reattach`], [`Client::poll_transmit`], [`Client::poll_event`],
//! [`Client::poll_timeout`], [`Client::handle_timeout`].

use std::collections::VecDeque;

use core::time::Duration;

use rand_core::{CryptoRng, RngCore};
use zeroize::Zeroizing;

use crate::cookie::open_cookie;
use crate::crypto::{CipherSuite, SecretKey};
use crate::event::RejectCode;
use crate::handshake::{InitPayload, Initiator, Purpose, StaticKeypair};
use crate::keys::{open_transport, EpochKeys, KeySet, OpenFailure, Role};
use crate::path::Transport;
use crate::policy::Policy;
use crate::reattach::{control_mac, proof_key, proof_with, verify_control_mac};
use crate::replay::ReplayWindow;
use crate::state::{Reason, State};
use crate::time::{millis, Instant};
use crate::wire::{
    self, emit_reattach_common, emit_reattach_request, Message, MessageType, ReattachRequestFields,
    SessionId, DATA_HEADER_LEN, HEARTBEAT_PLAINTEXT_LEN, MAC_LEN, REATTACH_REQUEST_LEN,
    REATTACH_RESPONSE_LEN, TAG_LEN, TERMINATE_PLAINTEXT_LEN, TOKEN_LEN,
};

/// A local way out (socket, interface, source port), named by the shell.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LocalPath(pub u32);

/// Client configuration.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// Our identity.
    pub keypair: StaticKeypair,
    /// The gateway's identity.
    pub gateway_public: [u8; 32],
    /// Policy (the gateway's values; the client uses heartbeat, rekey, grace and path timers).
    pub policy: Policy,
    /// Resend the handshake initiation after this long without an answer; each further
    /// attempt waits twice as long as the one before (up to [`HANDSHAKE_BACKOFF_MAX`] times
    /// this), plus up to a quarter of random jitter.
    pub handshake_retry: Duration,
    /// Give up the handshake (HANDSHAKE_FAILED) after this many attempts.
    pub handshake_attempts: u32,
    /// Resend a reattach request after this long without an answer, or after the timeout of
    /// the reattach round trip the client has seen when that is longer (at most 4 × this; see
    /// [`ExchangeRtt`]). After
    /// [`REATTACH_FAST_ATTEMPTS`] attempts an optional switch (ATTACHED, VOLATILE) is given
    /// up; a recovery (RECOVERING, DEGRADED) keeps trying every 4 × this until it succeeds or
    /// the gateway's recovery window ends the session.
    pub reattach_retry: Duration,
    /// Transport of every local path (a later transport layer may vary it per path).
    pub transport: Transport,
    /// Preferred AEAD.
    pub suite: CipherSuite,
}

/// The longest wait between two handshake initiations, as a multiple of `handshake_retry`.
/// Backing off keeps a gateway that answers late (a thousand clients connecting at once, a
/// failover) from drowning in retries: at a fixed interval every retry supersedes the
/// initiation the gateway is about to answer, and the answers arrive after the client has
/// forgotten what they answer. Jitter keeps clients that started together from retrying
/// together.
pub const HANDSHAKE_BACKOFF_MAX: u32 = 8;

/// Reattach attempts sent `reattach_retry` apart before slowing down (or giving up an optional
/// switch).
pub const REATTACH_FAST_ATTEMPTS: u32 = 8;

impl ClientConfig {
    /// How long after attempt number `attempts` (1 for the first) of a handshake the next one
    /// is due, before jitter.
    #[must_use]
    pub fn handshake_retry_after(&self, attempts: u32) -> Duration {
        let factor = 1u32
            .checked_shl(attempts.saturating_sub(1))
            .unwrap_or(u32::MAX)
            .min(HANDSHAKE_BACKOFF_MAX);
        self.handshake_retry * factor
    }

    /// How long after attempt number `attempts` of a reattach the next one is due, given the
    /// client's estimate of a reattach exchange's round trip: `reattach_retry` while the
    /// gateway answers faster than that, otherwise the estimate's timeout (RFC 6298: smoothed
    /// round trip plus four variations), at most 4 × `reattach_retry`; after
    /// [`REATTACH_FAST_ATTEMPTS`] sends, 4 × `reattach_retry`.
    fn reattach_retry_after(&self, attempts: u32, rtt: Option<&ExchangeRtt>) -> Duration {
        let slow = self.reattach_retry * 4;
        if attempts < REATTACH_FAST_ATTEMPTS {
            rtt.map_or(self.reattach_retry, |r| {
                r.timeout().clamp(self.reattach_retry, slow)
            })
        } else {
            slow
        }
    }

    /// Defaults around a key pair and a gateway key.
    #[must_use]
    pub fn new(keypair: StaticKeypair, gateway_public: [u8; 32]) -> Self {
        ClientConfig {
            keypair,
            gateway_public,
            policy: Policy::default(),
            handshake_retry: Duration::from_secs(1),
            handshake_attempts: 5,
            reattach_retry: Duration::from_millis(500),
            transport: Transport::Udp,
            suite: CipherSuite::preferred_for_this_cpu(),
        }
    }
}

/// What the client reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientEvent {
    /// The handshake completed.
    Established {
        /// The SessionId the gateway chose.
        session_id: SessionId,
    },
    /// The client's view of the session state changed.
    StateChanged {
        /// Before.
        from: State,
        /// After.
        to: State,
        /// Why.
        reason: Reason,
    },
    /// The gateway bound a new path.
    Reattached {
        /// Path used.
        via: LocalPath,
        /// Gateway state version after the bind.
        version: u64,
    },
    /// The gateway refused a reattach. `authenticated` is false for hints the client must not
    /// act on (they could be forged).
    ReattachRejected {
        /// Code.
        code: Option<RejectCode>,
        /// MAC verified under the session key.
        authenticated: bool,
    },
    /// Keys rotated.
    Rekeyed {
        /// New epoch.
        epoch: u32,
    },
    /// The gateway asked to validate a path (NAT rebind detected).
    ChallengeAnswered {
        /// Path used.
        via: LocalPath,
    },
}

/// What became of a datagram at the client.
#[derive(Debug)]
pub enum ClientOutput<'b> {
    /// An inner packet, decrypted in place.
    Deliver(&'b mut [u8]),
    /// Handled.
    Consumed,
    /// Dropped (malformed, forged, replayed, or not for us); the reason for counters.
    Dropped(&'static str),
}

/// A datagram to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientTransmit {
    /// The local path to send it by.
    pub via: LocalPath,
    /// The datagram.
    pub payload: Vec<u8>,
}

#[derive(Debug)]
struct PendingReattach {
    /// Counter of the first request of this attempt (retries use new counters).
    first_counter: u64,
    counter: u64,
    via: LocalPath,
    echo: [u8; TOKEN_LEN],
    sent: Instant,
    attempts: u32,
    /// When the latest requests of the attempt were sent, by counter (at most
    /// [`SEND_TIMES_KEPT`]): an ack names the request it answers, so its round trip is known
    /// even when retries crossed it.
    send_times: VecDeque<(u64, Instant)>,
}

/// Send times a pending reattach keeps for round-trip samples.
const SEND_TIMES_KEPT: usize = 8;

/// The round trip of a reattach exchange, from a request to its ack, estimated as TCP does
/// (RFC 6298 §2: gains 1/8 and 1/4). It is not the data path's round trip the heartbeats
/// measure: requests are answered by the gateway's control process, and in a mass rebind or
/// failover they wait in its queue for as long as it takes to work through the others. A
/// client that resent every `reattach_retry` regardless would then double the queue it waits
/// in; one that waits for the exchange it has seen does not.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExchangeRtt {
    /// Smoothed round trip.
    pub srtt: Duration,
    /// Round-trip variation.
    pub rttvar: Duration,
}

impl ExchangeRtt {
    /// Fold in one sample (the first sets the estimate: variation half the sample).
    fn update(est: &mut Option<ExchangeRtt>, sample: Duration) {
        *est = Some(match *est {
            None => ExchangeRtt {
                srtt: sample,
                rttvar: sample / 2,
            },
            Some(r) => {
                let diff = r.srtt.abs_diff(sample);
                ExchangeRtt {
                    rttvar: r.rttvar * 3 / 4 + diff / 4,
                    srtt: r.srtt * 7 / 8 + sample / 8,
                }
            }
        });
    }

    /// When a request without an answer is given up as lost: srtt + 4 × rttvar.
    #[must_use]
    pub fn timeout(&self) -> Duration {
        self.srtt + self.rttvar * 4
    }
}

#[derive(Debug)]
struct Established {
    sid: SessionId,
    keys: KeySet,
    transcript: [u8; 32],
    /// The reattach proof key, derived at the first reattach request; in memory only.
    proof_key: Option<SecretKey>,
    send_counter: u64,
    recv_window: ReplayWindow,
    established_at: Instant,
    via: LocalPath,
    reattach_counter: u64,
    pending: Option<PendingReattach>,
    rekey: Option<(Box<Initiator>, Instant)>,
    /// Last heartbeat or control message sent (data does not count).
    last_tx: Instant,
    last_rx: Instant,
    next_probe: u64,
    probe_sent: Option<(u64, Instant)>,
    rtt: Option<Duration>,
    /// The reattach exchange's round trip, from acks (None before the first).
    exchange_rtt: Option<ExchangeRtt>,
    gateway_version: u64,
    /// The last unsolicited challenge token answered: a replayed challenge is not answered again.
    answered_token: [u8; TOKEN_LEN],
    /// The gateway asked for a rekey (a heartbeat flag): start one at the next timer run.
    rekey_requested: bool,
}

impl Established {
    /// When the pending reattach is due to be resent ([`ClientConfig::reattach_retry_after`]).
    fn reattach_retry_at(&self, cfg: &ClientConfig) -> Option<Instant> {
        self.pending
            .as_ref()
            .map(|pr| pr.sent + cfg.reattach_retry_after(pr.attempts, self.exchange_rtt.as_ref()))
    }
}

/// A gateway's rekey request is honoured only when the current epoch is at least this old: an
/// echo still carrying the flag right after the rekey it asked for is ignored.
pub const REKEY_REQUEST_MIN_AGE: Duration = Duration::from_secs(2);

#[derive(Debug)]
enum Phase {
    Idle,
    Handshaking {
        init: Box<Initiator>,
        via: LocalPath,
        /// When the next initiation is due (backoff and jitter included).
        retry_at: Instant,
        attempts: u32,
    },
    Established(Box<Established>),
    Closed(Reason),
}

/// The client protocol endpoint.
#[derive(Debug)]
pub struct Client<R> {
    cfg: ClientConfig,
    rng: R,
    phase: Phase,
    state: State,
    wall_offset_ns: u64,
    last_timestamp: u64,
    cookie: Option<(Zeroizing<[u8; 16]>, Instant)>,
    transmits: VecDeque<ClientTransmit>,
    events: VecDeque<ClientEvent>,
}

impl<R: RngCore + CryptoRng> Client<R> {
    /// A client that has not connected yet.
    pub fn new(cfg: ClientConfig, rng: R) -> Self {
        Client {
            cfg,
            rng,
            phase: Phase::Idle,
            state: State::Birth,
            wall_offset_ns: 0,
            last_timestamp: 0,
            cookie: None,
            transmits: VecDeque::new(),
            events: VecDeque::new(),
        }
    }

    /// The client's view of the session state (the gateway's is authoritative).
    #[must_use]
    pub fn state(&self) -> State {
        self.state
    }

    /// The session, once established.
    #[must_use]
    pub fn session_id(&self) -> Option<SessionId> {
        match &self.phase {
            Phase::Established(e) => Some(e.sid),
            _ => None,
        }
    }

    /// The id of the handshake in flight (the first one, or a rekey): the gateway's response
    /// or cookie reply carries it as its receiver id, so a shell that multiplexes many clients
    /// on one socket routes those replies by it.
    #[must_use]
    pub fn handshake_id(&self) -> Option<u64> {
        match &self.phase {
            Phase::Handshaking { init, .. } => Some(init.sender_id()),
            Phase::Established(e) => e.rekey.as_ref().map(|(init, _)| init.sender_id()),
            _ => None,
        }
    }

    /// The local path in use.
    #[must_use]
    pub fn current_path(&self) -> Option<LocalPath> {
        match &self.phase {
            Phase::Established(e) => Some(e.via),
            Phase::Handshaking { via, .. } => Some(*via),
            _ => None,
        }
    }

    /// Last measured round-trip time.
    #[must_use]
    pub fn rtt(&self) -> Option<Duration> {
        match &self.phase {
            Phase::Established(e) => e.rtt,
            _ => None,
        }
    }

    /// The estimated round trip of a reattach exchange (request to ack), once one was acked.
    #[must_use]
    pub fn exchange_rtt(&self) -> Option<ExchangeRtt> {
        match &self.phase {
            Phase::Established(e) => e.exchange_rtt,
            _ => None,
        }
    }

    /// The gateway's state version as last acknowledged.
    #[must_use]
    pub fn gateway_version(&self) -> Option<u64> {
        match &self.phase {
            Phase::Established(e) => Some(e.gateway_version),
            _ => None,
        }
    }

    /// The current key epoch.
    #[must_use]
    pub fn key_epoch(&self) -> Option<u32> {
        match &self.phase {
            Phase::Established(e) => Some(e.keys.current().epoch),
            _ => None,
        }
    }

    /// Why the session closed, if it did.
    #[must_use]
    pub fn closed_reason(&self) -> Option<Reason> {
        match &self.phase {
            Phase::Closed(r) => Some(*r),
            _ => None,
        }
    }

    /// Next datagram to send.
    #[must_use]
    pub fn poll_transmit(&mut self) -> Option<ClientTransmit> {
        self.transmits.pop_front()
    }

    /// Next event.
    #[must_use]
    pub fn poll_event(&mut self) -> Option<ClientEvent> {
        self.events.pop_front()
    }

    fn timestamp(&mut self, now: Instant) -> u64 {
        let t = self
            .wall_offset_ns
            .saturating_add(now.as_nanos())
            .max(self.last_timestamp + 1);
        self.last_timestamp = t;
        t
    }

    fn set_state(&mut self, to: State, reason: Reason) {
        if self.state != to || reason == Reason::ReattachOk {
            let from = self.state;
            self.state = to;
            self.events
                .push_back(ClientEvent::StateChanged { from, to, reason });
        }
    }

    /// Start the handshake on `via`. `wall_clock_ns` is the client's wall clock (nanoseconds
    /// since the Unix epoch); it only orders this client's handshakes for the gateway's replay
    /// check.
    pub fn connect(&mut self, now: Instant, via: LocalPath, wall_clock_ns: u64) {
        self.wall_offset_ns = wall_clock_ns.saturating_sub(now.as_nanos());
        self.send_init(now, via, Purpose::NewSession, 1);
    }

    fn send_init(&mut self, now: Instant, via: LocalPath, purpose: Purpose, attempts: u32) {
        let payload = InitPayload {
            timestamp: self.timestamp(now),
            purpose,
            suite: self.cfg.suite,
        };
        let cookie = self
            .cookie
            .as_ref()
            .filter(|(_, t)| now - *t < crate::cookie::COOKIE_SECRET_LIFETIME)
            .map(|(c, _)| **c);
        let Ok(init) = Initiator::start(
            &mut self.rng,
            &self.cfg.keypair,
            &self.cfg.gateway_public,
            payload,
            cookie.as_ref(),
        ) else {
            return;
        };
        self.transmits.push_back(ClientTransmit {
            via,
            payload: init.message().to_vec(),
        });
        match (purpose, &mut self.phase) {
            (Purpose::Rekey(_), Phase::Established(e)) => e.rekey = Some((Box::new(init), now)),
            _ => {
                let wait = self.cfg.handshake_retry_after(attempts);
                let jitter = Duration::from_nanos(
                    self.rng.next_u64() % (u64::try_from(wait.as_nanos() / 4).unwrap_or(1) + 1),
                );
                self.phase = Phase::Handshaking {
                    init: Box::new(init),
                    via,
                    retry_at: now + wait + jitter,
                    attempts,
                }
            }
        }
    }

    /// Process a datagram received on `via`.
    #[must_use]
    pub fn handle_datagram<'b>(
        &mut self,
        now: Instant,
        via: LocalPath,
        buf: &'b mut [u8],
    ) -> ClientOutput<'b> {
        let ty = match wire::parse(buf) {
            Err(e) => return ClientOutput::Dropped(e.as_str()),
            Ok(Message::HandshakeResponse(_)) => MessageType::HandshakeResponse,
            Ok(Message::CookieReply(_)) => MessageType::CookieReply,
            Ok(Message::Transport(_)) => MessageType::Data,
            Ok(Message::ReattachChallenge(_)) => MessageType::ReattachChallenge,
            Ok(Message::ReattachAck(_)) => MessageType::ReattachAck,
            Ok(Message::ReattachReject(_)) => MessageType::ReattachReject,
            Ok(_) => return ClientOutput::Dropped("wrong_direction"),
        };
        match ty {
            MessageType::HandshakeResponse => self.on_response(now, buf),
            MessageType::CookieReply => self.on_cookie(now, buf),
            MessageType::ReattachChallenge => self.on_challenge(now, via, buf),
            MessageType::ReattachAck => self.on_ack(now, buf),
            MessageType::ReattachReject => self.on_reject(now, buf),
            _ => self.on_transport(now, buf),
        }
    }

    fn on_cookie<'b>(&mut self, now: Instant, buf: &[u8]) -> ClientOutput<'b> {
        let Ok(reply) = wire::CookieReply::new_checked(buf) else {
            return ClientOutput::Dropped("malformed");
        };
        let init = match &self.phase {
            Phase::Handshaking { init, .. } => init,
            Phase::Established(e) => match &e.rekey {
                Some((init, _)) => init,
                None => return ClientOutput::Dropped("unexpected_cookie"),
            },
            _ => return ClientOutput::Dropped("unexpected_cookie"),
        };
        if reply.receiver_id() != init.sender_id() {
            return ClientOutput::Dropped("unexpected_cookie");
        }
        match open_cookie(
            &self.cfg.gateway_public,
            reply.nonce(),
            reply.sealed_cookie(),
            init.mac1(),
        ) {
            Ok(c) => {
                // The next (re)transmission carries mac2; WireGuard waits for the retry timer
                // rather than answering at once, so a cookie reply cannot be used to make the
                // client flood.
                self.cookie = Some((c, now));
                ClientOutput::Consumed
            }
            Err(()) => ClientOutput::Dropped("bad_cookie"),
        }
    }

    fn on_response<'b>(&mut self, now: Instant, buf: &[u8]) -> ClientOutput<'b> {
        match core::mem::replace(&mut self.phase, Phase::Idle) {
            Phase::Handshaking {
                init,
                via,
                retry_at,
                attempts,
            } => match init.handle_response(buf) {
                Ok(done) => {
                    let epoch = EpochKeys::derive(&done.keys, done.epoch, Role::Client, now);
                    self.phase = Phase::Established(Box::new(Established {
                        sid: done.session_id,
                        keys: KeySet::new(epoch),
                        transcript: done.keys.transcript,
                        proof_key: None,
                        send_counter: 0,
                        recv_window: ReplayWindow::new(),
                        established_at: now,
                        via,
                        reattach_counter: 1,
                        pending: None,
                        rekey: None,
                        last_tx: now,
                        last_rx: now,
                        next_probe: 1,
                        probe_sent: None,
                        rtt: None,
                        exchange_rtt: None,
                        gateway_version: 1,
                        answered_token: [0; TOKEN_LEN],
                        rekey_requested: false,
                    }));
                    self.events.push_back(ClientEvent::Established {
                        session_id: done.session_id,
                    });
                    self.set_state(State::Attached, Reason::HandshakeOk);
                    ClientOutput::Consumed
                }
                Err((init, _)) => {
                    self.phase = Phase::Handshaking {
                        init,
                        via,
                        retry_at,
                        attempts,
                    };
                    ClientOutput::Dropped("bad_handshake_response")
                }
            },
            Phase::Established(mut e) => {
                let Some((init, started)) = e.rekey.take() else {
                    self.phase = Phase::Established(e);
                    return ClientOutput::Dropped("unexpected_response");
                };
                let out = match init.handle_response(buf) {
                    Ok(done) if done.session_id == e.sid => {
                        let new = EpochKeys::derive(&done.keys, done.epoch, Role::Client, now);
                        e.keys.rotate_to(new, now, self.cfg.policy.key_grace);
                        self.events
                            .push_back(ClientEvent::Rekeyed { epoch: done.epoch });
                        ClientOutput::Consumed
                    }
                    Ok(_) => ClientOutput::Dropped("bad_handshake_response"),
                    Err((init, _)) => {
                        e.rekey = Some((init, started));
                        ClientOutput::Dropped("bad_handshake_response")
                    }
                };
                self.phase = Phase::Established(e);
                out
            }
            other => {
                self.phase = other;
                ClientOutput::Dropped("unexpected_response")
            }
        }
    }

    fn on_transport<'b>(&mut self, now: Instant, buf: &'b mut [u8]) -> ClientOutput<'b> {
        let Phase::Established(e) = &mut self.phase else {
            return ClientOutput::Dropped("no_session");
        };
        let Ok(msg) = wire::TransportMsg::new_checked(buf) else {
            return ClientOutput::Dropped("malformed");
        };
        let (sid, counter, epoch, ty) = (
            msg.session_id(),
            msg.counter(),
            msg.epoch(),
            msg.message_type(),
        );
        if sid != e.sid {
            return ClientOutput::Dropped("unknown_session");
        }
        let plain = match open_transport(&e.keys, &mut e.recv_window, now, epoch, counter, buf) {
            Ok((_, plain)) => plain,
            Err(OpenFailure::UnknownEpoch) => return ClientOutput::Dropped("unknown_epoch"),
            Err(OpenFailure::Replay) => return ClientOutput::Dropped("replay"),
            Err(OpenFailure::AuthFailed) => return ClientOutput::Dropped("auth_failed"),
        };
        e.last_rx = now;
        match ty {
            MessageType::Heartbeat => {
                let mut echo = [0u8; 8];
                echo.copy_from_slice(&plain[8..16]);
                let echo = u64::from_be_bytes(echo);
                if let Some((id, sent)) = e.probe_sent {
                    if id == echo {
                        e.rtt = Some(now - sent);
                        e.probe_sent = None;
                    }
                }
                let mut flags = [0u8; 8];
                flags.copy_from_slice(&plain[wire::HEARTBEAT_FLAGS_OFFSET..][..8]);
                if u64::from_be_bytes(flags) & wire::HEARTBEAT_FLAG_REKEY != 0
                    && e.rekey.is_none()
                    && now - e.keys.current().created >= REKEY_REQUEST_MIN_AGE
                {
                    e.rekey_requested = true;
                }
                if matches!(self.state, State::Recovering) {
                    self.set_state(State::Attached, Reason::ReattachOk);
                }
                ClientOutput::Consumed
            }
            MessageType::Terminate => {
                let reason = Reason::from_code(plain[0]).unwrap_or(Reason::PeerTerminated);
                self.phase = Phase::Closed(reason);
                self.set_state(State::Terminated, reason);
                ClientOutput::Consumed
            }
            _ => ClientOutput::Deliver(plain),
        }
    }

    fn on_challenge<'b>(&mut self, now: Instant, via: LocalPath, buf: &[u8]) -> ClientOutput<'b> {
        let Ok(ch) = wire::ReattachChallenge::new_checked(buf) else {
            return ClientOutput::Dropped("malformed");
        };
        let Phase::Established(e) = &mut self.phase else {
            return ClientOutput::Dropped("no_session");
        };
        if ch.session_id() != e.sid {
            return ClientOutput::Dropped("unknown_session");
        }
        let Some((_, keys)) = e.keys.for_receive(now, ch.epoch()) else {
            return ClientOutput::Dropped("unknown_epoch");
        };
        if !verify_control_mac(keys.ctrl_recv.expose(), ch.mac_covered(), &ch.mac()) {
            return ClientOutput::Dropped("auth_failed");
        }
        if ch.request_counter() == 0 {
            // Unsolicited: the gateway saw our packets from a new address (NAT rebind). Answer
            // with a full reattach request that echoes the token: one round trip. Only for the
            // path we use now: a challenge to a path we left (packets still in flight on it
            // after a switch) must not pull the session back.
            if via != e.via {
                return ClientOutput::Dropped("challenge_for_old_path");
            }
            // Our own request to another path is pending: the gateway may have bound it already
            // (its ack lost) and now sees our packets on this path as a new address. Answering
            // would replace that request by one back to this path; the retry settles it.
            if e.pending.as_ref().is_some_and(|p| p.via != via) {
                return ClientOutput::Dropped("challenge_while_switching");
            }
            let token = ch.token();
            if token == e.answered_token {
                return ClientOutput::Dropped("challenge_replayed");
            }
            e.answered_token = token;
            self.send_reattach(now, via, token);
            self.events
                .push_back(ClientEvent::ChallengeAnswered { via });
            return ClientOutput::Consumed;
        }
        if !e.pending.as_ref().is_some_and(|p| {
            p.via == via && (p.first_counter..=p.counter).contains(&ch.request_counter())
        }) {
            return ClientOutput::Dropped("unexpected_challenge");
        }
        let k = e.keys.current();
        let mut msg: [u8; REATTACH_RESPONSE_LEN] = emit_reattach_common(
            MessageType::ReattachResponse,
            k.wire_epoch(),
            e.sid,
            ch.request_counter(),
        );
        msg[20..36].copy_from_slice(&ch.token());
        let mac = control_mac(
            k.ctrl_send.expose(),
            &msg[..REATTACH_RESPONSE_LEN - MAC_LEN],
        );
        msg[REATTACH_RESPONSE_LEN - MAC_LEN..].copy_from_slice(&mac);
        self.transmits.push_back(ClientTransmit {
            via,
            payload: msg.to_vec(),
        });
        ClientOutput::Consumed
    }

    fn on_ack<'b>(&mut self, now: Instant, buf: &[u8]) -> ClientOutput<'b> {
        let Ok(ack) = wire::ReattachAck::new_checked(buf) else {
            return ClientOutput::Dropped("malformed");
        };
        let Phase::Established(e) = &mut self.phase else {
            return ClientOutput::Dropped("no_session");
        };
        let Some((_, keys)) = e.keys.for_receive(now, ack.epoch()) else {
            return ClientOutput::Dropped("unknown_epoch");
        };
        if ack.session_id() != e.sid
            || !verify_control_mac(keys.ctrl_recv.expose(), ack.mac_covered(), &ack.mac())
        {
            return ClientOutput::Dropped("auth_failed");
        }
        // An ack for any request of the current attempt counts: a retry may cross the ack of
        // the request before it.
        let acked = ack.request_counter();
        if !e
            .pending
            .as_ref()
            .is_some_and(|p| (p.first_counter..=p.counter).contains(&acked))
        {
            return ClientOutput::Dropped("unexpected_ack");
        }
        let Some(p) = e.pending.take() else {
            return ClientOutput::Dropped("unexpected_ack");
        };
        if let Some((_, sent)) = p.send_times.iter().find(|(c, _)| *c == acked) {
            ExchangeRtt::update(&mut e.exchange_rtt, now - *sent);
        }
        e.via = p.via;
        e.last_rx = now;
        e.gateway_version = ack.state_version();
        let version = ack.state_version();
        self.events.push_back(ClientEvent::Reattached {
            via: p.via,
            version,
        });
        self.set_state(State::Attached, Reason::ReattachOk);
        ClientOutput::Consumed
    }

    fn on_reject<'b>(&mut self, now: Instant, buf: &[u8]) -> ClientOutput<'b> {
        let Ok(rej) = wire::ReattachReject::new_checked(buf) else {
            return ClientOutput::Dropped("malformed");
        };
        let Phase::Established(e) = &mut self.phase else {
            return ClientOutput::Dropped("no_session");
        };
        if rej.session_id() != e.sid {
            return ClientOutput::Dropped("unknown_session");
        }
        let authenticated = e.keys.for_receive(now, rej.epoch()).is_some_and(|(_, k)| {
            verify_control_mac(k.ctrl_recv.expose(), rej.mac_covered(), &rej.mac())
        });
        let code = RejectCode::from_code(rej.code());
        // A retryable refusal (the session changed under the bind, or the challenge was lost)
        // keeps the attempt pending so the retry timer sends a fresh request; others end it.
        let retryable = matches!(
            code,
            Some(RejectCode::AtomicityFailed | RejectCode::PathValidationFailed)
        );
        if authenticated
            && !retryable
            && e.pending
                .as_ref()
                .is_some_and(|p| p.counter == rej.request_counter())
        {
            e.pending = None;
        }
        self.events.push_back(ClientEvent::ReattachRejected {
            code,
            authenticated,
        });
        if authenticated && code == Some(RejectCode::SwitchRateLimited) {
            self.set_state(State::Degraded, Reason::SwitchRateLimited);
        }
        ClientOutput::Consumed
    }

    fn send_reattach(&mut self, now: Instant, via: LocalPath, echo: [u8; TOKEN_LEN]) {
        let Phase::Established(e) = &mut self.phase else {
            return;
        };
        let counter = e.reattach_counter;
        e.reattach_counter += 1;
        let k = e.keys.current();
        let fields = ReattachRequestFields {
            epoch: k.wire_epoch(),
            session_id: e.sid,
            counter,
            client_time_ms: millis(now - e.established_at),
            transport: self.cfg.transport.code(),
            challenge_echo: echo,
        };
        let mut msg = emit_reattach_request(&fields);
        let key = e.proof_key.get_or_insert_with(|| {
            proof_key(&self.cfg.keypair, &self.cfg.gateway_public, &e.transcript)
        });
        let p = proof_with(key, &msg[..52]);
        msg[52..68].copy_from_slice(&p);
        let mac = control_mac(k.ctrl_send.expose(), &msg[..REATTACH_REQUEST_LEN - MAC_LEN]);
        msg[REATTACH_REQUEST_LEN - MAC_LEN..].copy_from_slice(&mac);
        let (attempts, first_counter, mut send_times) = match e.pending.take() {
            Some(p) if p.via == via => (p.attempts + 1, p.first_counter, p.send_times),
            _ => (1, counter, VecDeque::with_capacity(SEND_TIMES_KEPT)),
        };
        if send_times.len() == SEND_TIMES_KEPT {
            send_times.pop_front();
        }
        send_times.push_back((counter, now));
        e.pending = Some(PendingReattach {
            first_counter,
            counter,
            via,
            echo,
            sent: now,
            attempts,
            send_times,
        });
        e.last_tx = now;
        self.transmits.push_back(ClientTransmit {
            via,
            payload: msg.to_vec(),
        });
    }

    /// Ask the gateway to bind the path `via` (a switch, or recovery after the path died).
    pub fn reattach(&mut self, now: Instant, via: LocalPath) {
        self.send_reattach(now, via, [0; TOKEN_LEN]);
    }

    /// Seal an inner packet in place: `buf[DATA_HEADER_LEN..DATA_HEADER_LEN + inner_len]`
    /// holds it and [`TAG_LEN`] bytes must follow. Returns the path and datagram length.
    ///
    /// # Errors
    /// `"no_session"` before the handshake or after the end, `"too_large"` if `buf` is short.
    pub fn encapsulate(
        &mut self,
        _now: Instant,
        buf: &mut [u8],
        inner_len: usize,
    ) -> Result<(LocalPath, usize), &'static str> {
        let total = DATA_HEADER_LEN + inner_len + TAG_LEN;
        if buf.len() < total {
            return Err("too_large");
        }
        let Phase::Established(e) = &mut self.phase else {
            return Err("no_session");
        };
        seal(e, MessageType::Data, &mut buf[..total]);
        // Data does not move the heartbeat deadline (so `_now` is unused): a heartbeat is the
        // RTT probe and carries the gateway's flags back (a rekey request), so it goes every
        // interval, traffic or not.
        Ok((e.via, total))
    }

    fn send_sealed(&mut self, now: Instant, ty: MessageType, plaintext: &[u8]) {
        let Phase::Established(e) = &mut self.phase else {
            return;
        };
        let mut buf = vec![0u8; DATA_HEADER_LEN + plaintext.len() + TAG_LEN];
        buf[DATA_HEADER_LEN..DATA_HEADER_LEN + plaintext.len()].copy_from_slice(plaintext);
        seal(e, ty, &mut buf);
        e.last_tx = now;
        self.transmits.push_back(ClientTransmit {
            via: e.via,
            payload: buf,
        });
    }

    /// End the session: send TERMINATE and close.
    pub fn terminate(&mut self, now: Instant) {
        let mut p = [0u8; TERMINATE_PLAINTEXT_LEN];
        p[0] = Reason::PeerTerminated.code();
        self.send_sealed(now, MessageType::Terminate, &p);
        self.phase = Phase::Closed(Reason::PeerTerminated);
        self.set_state(State::Terminated, Reason::PeerTerminated);
    }

    /// When [`Client::handle_timeout`] should next be called.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Instant> {
        let p = &self.cfg.policy;
        match &self.phase {
            Phase::Handshaking { retry_at, .. } => Some(*retry_at),
            Phase::Established(e) => {
                let mut d = vec![e.last_tx + p.heartbeat_interval];
                if matches!(self.state, State::Attached | State::Volatile) {
                    d.push(e.last_rx + p.path_dead_after);
                }
                if e.rekey.is_none()
                    && (e.rekey_requested || e.keys.current().sent >= p.rekey_after_packets)
                {
                    // Due now (the packet count is only reached by sending, which moves no
                    // other deadline closer).
                    d.push(e.last_rx.min(e.last_tx));
                } else if e.rekey.is_none() {
                    d.push(e.keys.current().created + p.rekey_after);
                }
                d.extend(e.reattach_retry_at(&self.cfg));
                if let Some((_, t)) = &e.rekey {
                    d.push(*t + self.cfg.handshake_retry);
                }
                d.into_iter().min()
            }
            Phase::Idle | Phase::Closed(_) => None,
        }
    }

    /// Run timers: handshake retry and failure, heartbeats, rekey, reattach retries, path dead.
    pub fn handle_timeout(&mut self, now: Instant) {
        let p = self.cfg.policy.clone();
        match &mut self.phase {
            Phase::Handshaking {
                retry_at,
                via,
                attempts,
                ..
            } if now >= *retry_at => {
                let (via, attempts) = (*via, *attempts);
                if attempts >= self.cfg.handshake_attempts {
                    self.phase = Phase::Closed(Reason::HandshakeFailed);
                    self.set_state(State::Terminated, Reason::HandshakeFailed);
                } else {
                    self.send_init(now, via, Purpose::NewSession, attempts + 1);
                }
            }
            Phase::Established(e) => {
                e.keys.expire_previous(now);
                let sid = e.sid;
                let via = e.via;
                let rekey_due = e.rekey.as_ref().map_or_else(
                    || {
                        e.rekey_requested
                            || now - e.keys.current().created >= p.rekey_after
                            || e.keys.current().sent >= p.rekey_after_packets
                    },
                    |(_, t)| now - *t >= self.cfg.handshake_retry,
                );
                let retry = e
                    .reattach_retry_at(&self.cfg)
                    .filter(|at| now >= *at)
                    .and(e.pending.as_ref())
                    .map(|pr| (pr.via, pr.echo, pr.attempts));
                let dead = now - e.last_rx >= p.path_dead_after;
                let heartbeat = now - e.last_tx >= p.heartbeat_interval;
                if rekey_due {
                    e.rekey_requested = false;
                    self.send_init(now, via, Purpose::Rekey(sid), 1);
                }
                if let Some((rvia, echo, attempts)) = retry {
                    // A recovery never gives up on its own: a gateway busy with a mass
                    // failover answers late, and a client that stopped asking would sit in
                    // RECOVERING until the recovery window ended its session.
                    let recovering = matches!(self.state, State::Recovering | State::Degraded);
                    if attempts < REATTACH_FAST_ATTEMPTS || recovering {
                        self.send_reattach(now, rvia, echo);
                    } else if let Phase::Established(e) = &mut self.phase {
                        e.pending = None;
                    }
                }
                if dead && matches!(self.state, State::Attached | State::Volatile) {
                    self.set_state(State::Recovering, Reason::TransportDead);
                }
                if heartbeat || (dead && self.state == State::Recovering) {
                    let Phase::Established(e) = &mut self.phase else {
                        return;
                    };
                    let probe = e.next_probe;
                    e.next_probe += 1;
                    if e.probe_sent.is_none() {
                        e.probe_sent = Some((probe, now));
                    }
                    let mut hb = [0u8; HEARTBEAT_PLAINTEXT_LEN];
                    hb[..8].copy_from_slice(&probe.to_be_bytes());
                    let rtt_us = e.rtt.map_or(0, |r| {
                        u64::try_from(r.as_micros()).unwrap_or(u64::MAX).max(1)
                    });
                    hb[16..].copy_from_slice(&rtt_us.to_be_bytes());
                    self.send_sealed(now, MessageType::Heartbeat, &hb);
                }
            }
            _ => {}
        }
    }
}

fn seal(e: &mut Established, ty: MessageType, buf: &mut [u8]) {
    let counter = e.send_counter;
    e.send_counter += 1;
    e.keys.current_mut().seal_transport(e.sid, counter, ty, buf);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_exchange_estimate_follows_rfc_6298() {
        let ms = Duration::from_millis;
        let mut est = None;
        ExchangeRtt::update(&mut est, ms(800));
        assert_eq!(
            est,
            Some(ExchangeRtt {
                srtt: ms(800),
                rttvar: ms(400)
            })
        );
        assert_eq!(est.unwrap().timeout(), ms(2400));
        ExchangeRtt::update(&mut est, ms(400));
        // rttvar = 3/4 · 400 + 1/4 · |800 − 400| = 400; srtt = 7/8 · 800 + 1/8 · 400 = 750.
        assert_eq!(
            est,
            Some(ExchangeRtt {
                srtt: ms(750),
                rttvar: ms(400)
            })
        );
    }

    #[test]
    fn the_retry_wait_stays_between_reattach_retry_and_four_times_it() {
        let cfg = ClientConfig::new(StaticKeypair::from_secret_bytes([7; 32]), [9; 32]);
        let ms = Duration::from_millis;
        let fast = ExchangeRtt {
            srtt: ms(20),
            rttvar: ms(5),
        };
        let slow = ExchangeRtt {
            srtt: ms(1500),
            rttvar: ms(700),
        };
        let mid = ExchangeRtt {
            srtt: ms(600),
            rttvar: ms(100),
        };
        assert_eq!(cfg.reattach_retry_after(1, None), ms(500));
        assert_eq!(cfg.reattach_retry_after(1, Some(&fast)), ms(500));
        assert_eq!(cfg.reattach_retry_after(1, Some(&mid)), ms(1000));
        assert_eq!(cfg.reattach_retry_after(1, Some(&slow)), ms(2000));
        assert_eq!(
            cfg.reattach_retry_after(REATTACH_FAST_ATTEMPTS, Some(&fast)),
            ms(2000)
        );
    }
}
