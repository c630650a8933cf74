//! Many simulated clients in one process: each is a real [`Client`] from the protocol crate
//! (Noise handshake, AEAD data, heartbeats, rekeys, reattaches), multiplexed over a few UDP
//! sockets per local path. One thread runs everything: a timer heap holds each client's next
//! deadline, readable sockets are drained, and inner packets are paced at a total rate over the
//! established sessions.
//!
//! Replies are routed to their client by what the wire carries in clear: the SessionId of
//! transport and reattach messages, the handshake id of handshake responses and cookie replies.
//!
//! What the run reports ([`Report`]) is counted here, from what the clients saw:
//! - traffic: inner probes sent and echoed back, round-trip times;
//! - sessions: handshakes, handshake latency, state changes, how each ended;
//! - recovery: for every *mark* (SIGUSR1, sent by the scenario runner at the moment it breaks
//!   something), the time from the mark to each session's first echo of a probe sent after it;
//! - correctness: echoes seen twice (a replayed datagram the gateway accepted), datagrams from
//!   the gateway on a path the session left longer than `stale_grace` ago (two active
//!   bindings). Silent resets are found by the runner: it compares the report's session list
//!   (every session and how it ended) with the gateway's sessions and events.
//!
//! Path handling follows the real client's: a session that goes RECOVERING asks to be bound on
//! its other path; *flapping* sessions ask for the other path as soon as each answer arrives.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap};
use std::io;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant as StdInstant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use jumping_protocol::client::{Client, ClientConfig, ClientEvent, ClientOutput, LocalPath};
use jumping_protocol::wire::{self, Message, SessionId, DATA_HEADER_LEN, TAG_LEN};
use jumping_protocol::{Instant, Policy, RejectCode, State};
use mio::net::UdpSocket;
use mio::{Events, Interest, Poll, Token};
use rand_chacha::ChaCha8Rng;
use rand_core::{OsRng, RngCore as _, SeedableRng as _};
use serde::Serialize;
use serde_json::{json, Value};

use crate::inner::{self, Probe};
use crate::keys::Identity;
use crate::stats::{self, Summary};

/// What to run.
#[derive(Debug)]
pub struct Config {
    /// The gateway's public address.
    pub gateway: SocketAddr,
    /// The gateway's static public key.
    pub gateway_public: [u8; 32],
    /// One simulated client per identity.
    pub identities: Vec<Identity>,
    /// Local source address of each path (path i is `LocalPath(i)`).
    pub paths: Vec<Ipv4Addr>,
    /// UDP sockets per path; sessions are spread over them.
    pub sockets_per_path: usize,
    /// Handshakes started per second.
    pub connect_rate: f64,
    /// Inner packets per second, in total, over the established sessions.
    pub pps: f64,
    /// Length of each inner packet (IPv4 header included).
    pub packet_len: usize,
    /// The echo server behind the gateway.
    pub echo: SocketAddrV4,
    /// How long the run lasts, from the first handshake.
    pub duration: Duration,
    /// The gateway's policy (timers).
    pub policy: Policy,
    /// How many sessions (the first ones) flap between paths as fast as they can.
    pub flap: usize,
    /// Send every Nth data datagram a second time, unchanged (0: never).
    pub replay_every: u64,
    /// Data on a path left this long ago counts as a second active binding.
    pub stale_grace: Duration,
    /// Write a progress line (JSON) here every second.
    pub status_file: Option<PathBuf>,
    /// Terminate every session at the end (TERMINATE with PEER_TERMINATED).
    pub terminate_at_end: bool,
    /// Handshake attempts before HANDSHAKE_FAILED.
    pub handshake_attempts: u32,
    /// Keep copies of the first N reattach requests and handshake initiations sent (for the
    /// replay floods).
    pub capture: usize,
    /// Seed of the sampling decisions (which RTT samples are kept).
    pub seed: u64,
}

/// See [`Report::recovery_steps_ms`].
#[derive(Debug, Default, Serialize)]
pub struct RecoverySteps {
    /// Latest mark → first unsolicited challenge answered after it.
    pub challenge: Summary,
    /// Latest mark → first reattach ack after it.
    pub ack: Summary,
}

/// The whole report of a run, written as JSON.
#[derive(Debug, Serialize)]
pub struct Report {
    /// Seconds from start to end.
    pub elapsed_s: f64,
    /// This process's CPU use.
    pub cpu: stats::Cpu,
    /// Session counts.
    pub sessions: Sessions,
    /// Handshake latency (first initiation sent → established), ms.
    pub handshake_ms: Summary,
    /// Traffic counts.
    pub traffic: Traffic,
    /// Round-trip time of echoed probes (sampled), ms.
    pub rtt_ms: Summary,
    /// Reattach counts.
    pub reattach: Reattach,
    /// Client-side state changes, by the state entered.
    pub state_changes: BTreeMap<String, u64>,
    /// Marks (SIGUSR1), seconds since start.
    pub marks_s: Vec<f64>,
    /// Recovery after each mark: mark → first echo of a probe sent after it, ms; one sample
    /// per session and mark.
    pub recovery_ms: Summary,
    /// The recovery samples themselves (ms), for CDF plots.
    pub recovery_samples_ms: Vec<f64>,
    /// Sessions that had not recovered from the last mark by the end.
    pub unrecovered_last_mark: u64,
    /// Where a recovery's time goes: from the latest mark to the session's first answered
    /// unsolicited challenge after it (the gateway noticed the new address and asked), and
    /// to its first reattach ack after it (the gateway bound the path). Only the latest mark
    /// counts, so a rebind that overtakes an unfinished repair does not stretch these.
    pub recovery_steps_ms: RecoverySteps,
    /// Correctness counters; any non-zero value makes a run invalid.
    pub correctness: Correctness,
    /// Per-second counts.
    pub timeline: Vec<Second>,
    /// Every established session: its id (hex, as the gateway writes it) and how it ended
    /// (`null` if it was alive at the end, before `terminate_at_end`).
    pub session_list: Vec<(String, Option<String>)>,
    /// Captured genuine datagrams (hex) for the replay floods.
    pub captured: Captured,
}

/// Session counts.
#[derive(Debug, Default, Serialize)]
pub struct Sessions {
    /// Identities given.
    pub configured: u64,
    /// Handshakes started.
    pub started: u64,
    /// Handshakes completed.
    pub established: u64,
    /// Ended with HANDSHAKE_FAILED.
    pub handshake_failed: u64,
    /// Sessions ended, by reason (client's view), before the end of the run.
    pub ended: BTreeMap<String, u64>,
    /// State of every started session at the end, before `terminate_at_end`.
    pub at_end: BTreeMap<String, u64>,
    /// Largest number of simultaneously established, not ended, sessions.
    pub peak_live: u64,
}

/// Traffic counts.
#[derive(Debug, Default, Serialize)]
pub struct Traffic {
    /// Inner probes sealed and sent.
    pub probes_sent: u64,
    /// Echoes received (first copies).
    pub echoes: u64,
    /// Datagrams sent (all kinds).
    pub tx_datagrams: u64,
    /// Bytes sent (UDP payload).
    pub tx_bytes: u64,
    /// Datagrams received.
    pub rx_datagrams: u64,
    /// Bytes received.
    pub rx_bytes: u64,
    /// Send errors, by kind (a path that is down gives network-unreachable).
    pub tx_errors: BTreeMap<String, u64>,
    /// Data datagrams sent a second time on purpose.
    pub replays_sent: u64,
    /// Datagrams no session claimed.
    pub unclaimed: u64,
    /// Datagrams a client dropped, by its reason.
    pub dropped: BTreeMap<String, u64>,
    /// Probes that could not be sealed (session not established).
    pub not_sent: u64,
}

/// Reattach counts.
#[derive(Debug, Default, Serialize)]
pub struct Reattach {
    /// Requests made by this program (recovery and flapping).
    pub requested: u64,
    /// Bindings confirmed.
    pub ok: u64,
    /// Refusals, by code (`unauthenticated` for hints that were not MACed).
    pub rejected: BTreeMap<String, u64>,
    /// Gateway challenges answered (the gateway saw a new address: a NAT rebind).
    pub challenges: u64,
    /// Rekeys completed.
    pub rekeys: u64,
}

/// Correctness counters.
#[derive(Debug, Default, Serialize)]
pub struct Correctness {
    /// Echoes of one probe seen twice: a replayed datagram went through.
    pub replays_accepted: u64,
    /// Data from the gateway on a path the session had left more than `stale_grace` before,
    /// with no request for that path pending.
    pub dual_active: u64,
    /// The first `dual_active` incidents in detail, for a post-mortem.
    pub dual_active_detail: Vec<String>,
}

/// Counts of one second of the run.
#[derive(Debug, Default, Clone, Serialize)]
pub struct Second {
    /// Second since start.
    pub t: u64,
    /// Probes sent.
    pub probes: u64,
    /// Echoes received.
    pub echoes: u64,
    /// Handshakes completed.
    pub established: u64,
    /// Bindings confirmed.
    pub reattached: u64,
    /// Challenges answered.
    pub challenges: u64,
    /// Refusals.
    pub rejected: u64,
}

/// Genuine datagrams kept for the replay floods.
#[derive(Debug, Default, Serialize)]
pub struct Captured {
    /// Reattach requests, hex.
    pub reattach_requests: Vec<String>,
    /// Handshake initiations, hex.
    pub handshake_inits: Vec<String>,
}

/// Recent sequence numbers a session has seen, to find duplicates.
#[derive(Debug, Default)]
struct Dedup {
    top: u64,
    bits: [u64; 16],
    any: bool,
}

impl Dedup {
    const WIDTH: u64 = 1024;

    /// Whether `seq` was seen before (within the window; older ones are not judged).
    fn seen(&mut self, seq: u64) -> bool {
        if !self.any || seq > self.top {
            let shift = if self.any {
                seq - self.top
            } else {
                Self::WIDTH
            };
            if shift >= Self::WIDTH {
                self.bits = [0; 16];
            } else {
                for _ in 0..shift {
                    let b = self.top.wrapping_add(1) % Self::WIDTH;
                    self.bits[(b / 64) as usize] &= !(1 << (b % 64));
                    self.top += 1;
                }
            }
            self.top = seq;
            self.any = true;
        } else if self.top - seq >= Self::WIDTH {
            return false;
        }
        let b = seq % Self::WIDTH;
        let (w, m) = ((b / 64) as usize, 1u64 << (b % 64));
        let dup = self.bits[w] & m != 0;
        self.bits[w] |= m;
        dup
    }
}

struct Sess {
    client: Client<OsRng>,
    inner: Ipv4Addr,
    slot: usize,
    hs_id: Option<u64>,
    sid: Option<SessionId>,
    started: Option<Instant>,
    deadline: Option<Instant>,
    seq: u64,
    bound: u32,
    previous: Option<u32>,
    switched_at: Instant,
    pending_to: Option<u32>,
    flap_due: Option<Instant>,
    seen: Dedup,
    ended: Option<String>,
    marks_done: usize,
    /// Marks whose challenge / ack step has been recorded (see [`RecoverySteps`]).
    challenge_marks: usize,
    ack_marks: usize,
}

type Heap = BinaryHeap<Reverse<(Instant, u32)>>;

/// The running engine.
struct Engine {
    cfg: Config,
    start: StdInstant,
    sessions: Vec<Sess>,
    sockets: Vec<Vec<UdpSocket>>,
    by_sid: HashMap<u64, u32>,
    by_hs: HashMap<u64, u32>,
    heap: Heap,
    buf: Vec<u8>,
    /// The probe being sealed (kept between turns: no allocation per send).
    tx_buf: Vec<u8>,
    report: Report,
    rtt_samples: Vec<f64>,
    rtt_seen: u64,
    challenge_samples: Vec<f64>,
    ack_samples: Vec<f64>,
    hs_samples: Vec<f64>,
    rng: ChaCha8Rng,
    marks: Arc<Mutex<Vec<u64>>>,
    marks_ns: Vec<u64>,
    /// Where the next probe goes: an index into `probing`.
    cursor: usize,
    /// Sessions established and not known to have ended, in the order they were established:
    /// the probe round-robin walks this, not every configured session (with 10 000 configured
    /// and a few established, finding the next live one by scanning all of them made the load
    /// generator spend seconds per second scanning, and stop sending handshakes meanwhile).
    probing: Vec<u32>,
    live: u64,
}

/// Largest datagram received.
const RX_BUF: usize = 65_536;
/// RTT samples kept (reservoir sampling beyond).
const RTT_KEEP: usize = 200_000;
/// Most probes sent in one loop turn (so receiving is never starved).
const SEND_BURST: usize = 512;

fn path_of(via: LocalPath) -> usize {
    via.0 as usize
}

impl Engine {
    fn now(&self) -> Instant {
        Instant::from_nanos(u64::try_from(self.start.elapsed().as_nanos()).unwrap_or(u64::MAX))
    }

    fn second(&mut self, now: Instant) -> &mut Second {
        let t = now.as_nanos() / 1_000_000_000;
        while self.report.timeline.len() as u64 <= t {
            let n = self.report.timeline.len() as u64;
            self.report.timeline.push(Second {
                t: n,
                ..Second::default()
            });
        }
        let i = usize::try_from(t).unwrap_or(usize::MAX);
        &mut self.report.timeline[i]
    }

    fn send(&mut self, path: usize, slot: usize, payload: &[u8]) {
        let sock = &self.sockets[path][slot];
        match sock.send_to(payload, self.cfg.gateway) {
            Ok(n) => {
                self.report.traffic.tx_datagrams += 1;
                self.report.traffic.tx_bytes += n as u64;
            }
            Err(e) => {
                let kind = if e.kind() == io::ErrorKind::WouldBlock {
                    "would_block".to_string()
                } else {
                    e.raw_os_error().map_or_else(
                        || format!("{:?}", e.kind()),
                        |c| nix::errno::Errno::from_raw(c).desc().to_lowercase(),
                    )
                };
                *self.report.traffic.tx_errors.entry(kind).or_default() += 1;
            }
        }
    }

    /// Send what client `i` has queued, act on its events, and file its next deadline.
    fn service(&mut self, i: u32, now: Instant) {
        let idx = i as usize;
        while let Some(t) = self.sessions[idx].client.poll_transmit() {
            if self.report.captured.reattach_requests.len() < self.cfg.capture
                && t.payload.get(1) == Some(&(wire::MessageType::ReattachRequest as u8))
            {
                self.report.captured.reattach_requests.push(hex(&t.payload));
            }
            if self.report.captured.handshake_inits.len() < self.cfg.capture
                && t.payload.get(1) == Some(&(wire::MessageType::HandshakeInit as u8))
            {
                self.report.captured.handshake_inits.push(hex(&t.payload));
            }
            let slot = self.sessions[idx].slot;
            self.send(path_of(t.via), slot, &t.payload);
        }
        while let Some(ev) = self.sessions[idx].client.poll_event() {
            self.on_event(i, now, ev);
        }
        let s = &mut self.sessions[idx];
        if let Some(h) = s.client.handshake_id() {
            if s.hs_id != Some(h) {
                if let Some(old) = s.hs_id.replace(h) {
                    self.by_hs.remove(&old);
                }
                self.by_hs.insert(h, i);
            }
        }
        let next = s.client.poll_timeout();
        if next != s.deadline {
            s.deadline = next;
            if let Some(d) = next {
                self.heap.push(Reverse((d, i)));
            }
        }
    }

    fn on_event(&mut self, i: u32, now: Instant, ev: ClientEvent) {
        let idx = i as usize;
        let paths = self.cfg.paths.len() as u32;
        match ev {
            ClientEvent::Established { session_id } => {
                let s = &mut self.sessions[idx];
                s.sid = Some(session_id);
                s.bound = s.client.current_path().map_or(0, |p| p.0);
                s.switched_at = now;
                if idx < self.cfg.flap && paths > 1 {
                    s.flap_due = Some(now);
                }
                let took = s.started.map_or(0.0, |t| ms(now - t));
                self.by_sid.insert(session_id.0, i);
                self.probing.push(i);
                self.hs_samples.push(took);
                self.report.sessions.established += 1;
                self.live += 1;
                self.report.sessions.peak_live = self.report.sessions.peak_live.max(self.live);
                self.second(now).established += 1;
            }
            ClientEvent::StateChanged { to, reason, .. } => {
                *self
                    .report
                    .state_changes
                    .entry(to.as_str().to_string())
                    .or_default() += 1;
                let s = &mut self.sessions[idx];
                if to == State::Recovering && s.pending_to.is_none() {
                    let other = if paths > 1 {
                        (s.bound + 1) % paths
                    } else {
                        s.bound
                    };
                    s.pending_to = Some(other);
                    s.client.reattach(now, LocalPath(other));
                    self.report.reattach.requested += 1;
                }
                if to == State::Terminated {
                    let s = &mut self.sessions[idx];
                    s.ended = Some(reason.as_str().to_string());
                    if s.sid.is_some() {
                        self.live = self.live.saturating_sub(1);
                    } else {
                        self.report.sessions.handshake_failed += 1;
                    }
                    *self
                        .report
                        .sessions
                        .ended
                        .entry(reason.as_str().to_string())
                        .or_default() += 1;
                }
            }
            ClientEvent::Reattached { via, .. } => {
                let s = &mut self.sessions[idx];
                if via.0 != s.bound {
                    s.previous = Some(s.bound);
                    s.bound = via.0;
                    s.switched_at = now;
                }
                if s.pending_to == Some(via.0) {
                    s.pending_to = None;
                }
                if idx < self.cfg.flap {
                    s.flap_due = Some(now);
                }
                self.report.reattach.ok += 1;
                self.second(now).reattached += 1;
                let s = &mut self.sessions[idx];
                let (marks, samples) = (&self.marks_ns, &mut self.ack_samples);
                first_since_mark(marks, &mut s.ack_marks, samples, now);
            }
            ClientEvent::ReattachRejected {
                code,
                authenticated,
            } => {
                let key = match (authenticated, code) {
                    (true, Some(c)) => c.as_str().to_string(),
                    (true, None) => "unknown".to_string(),
                    (false, _) => "unauthenticated".to_string(),
                };
                *self.report.reattach.rejected.entry(key).or_default() += 1;
                let s = &mut self.sessions[idx];
                // The client keeps a retryable attempt pending (it retries on its timer).
                let retryable = matches!(
                    code,
                    Some(RejectCode::AtomicityFailed | RejectCode::PathValidationFailed)
                );
                if authenticated && !retryable {
                    s.pending_to = None;
                    if idx < self.cfg.flap {
                        // Ask again soon: as fast as the budget lets us, without spinning.
                        s.flap_due = Some(now + Duration::from_millis(20));
                    }
                }
                self.second(now).rejected += 1;
            }
            ClientEvent::Rekeyed { .. } => self.report.reattach.rekeys += 1,
            ClientEvent::ChallengeAnswered { .. } => {
                self.report.reattach.challenges += 1;
                self.second(now).challenges += 1;
                let s = &mut self.sessions[idx];
                let (marks, samples) = (&self.marks_ns, &mut self.challenge_samples);
                first_since_mark(marks, &mut s.challenge_marks, samples, now);
            }
        }
    }

    fn receive(&mut self, path: usize, slot: usize, now: Instant) {
        loop {
            let (n, _from) = match self.sockets[path][slot].recv_from(&mut self.buf) {
                Ok(r) => r,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(_) => return,
            };
            self.report.traffic.rx_datagrams += 1;
            self.report.traffic.rx_bytes += n as u64;
            let owner = match wire::parse(&self.buf[..n]) {
                Ok(Message::HandshakeResponse(r)) => self.by_hs.get(&r.receiver_id()).copied(),
                Ok(Message::CookieReply(c)) => self.by_hs.get(&c.receiver_id()).copied(),
                Ok(Message::Transport(t)) => self.by_sid.get(&t.session_id().0).copied(),
                Ok(Message::ReattachChallenge(c)) => self.by_sid.get(&c.session_id().0).copied(),
                Ok(Message::ReattachAck(a)) => self.by_sid.get(&a.session_id().0).copied(),
                Ok(Message::ReattachReject(r)) => self.by_sid.get(&r.session_id().0).copied(),
                _ => None,
            };
            let Some(i) = owner else {
                self.report.traffic.unclaimed += 1;
                continue;
            };
            let is_data = self.buf.get(1) == Some(&(wire::MessageType::Data as u8));
            let mut buf = std::mem::take(&mut self.buf);
            let idx = i as usize;
            let probe = match self.sessions[idx].client.handle_datagram(
                now,
                LocalPath(path as u32),
                &mut buf[..n],
            ) {
                ClientOutput::Deliver(p) => inner::read(p),
                ClientOutput::Consumed => None,
                ClientOutput::Dropped(why) => {
                    *self
                        .report
                        .traffic
                        .dropped
                        .entry(why.to_string())
                        .or_default() += 1;
                    None
                }
            };
            self.buf = buf;
            if is_data {
                self.check_path(idx, path as u32, now);
            }
            if let Some(p) = probe {
                self.on_echo(idx, p, now);
            }
            self.service(i, now);
        }
    }

    /// Data on a path the session left (and did not ask for again) long enough ago.
    fn check_path(&mut self, idx: usize, path: u32, now: Instant) {
        let s = &self.sessions[idx];
        if path != s.bound
            && s.previous == Some(path)
            && s.pending_to != Some(path)
            && now - s.switched_at > self.cfg.stale_grace
        {
            let c = &mut self.report.correctness;
            c.dual_active += 1;
            if c.dual_active_detail.len() < 32 {
                c.dual_active_detail.push(format!(
                    "session {} ({}): data on path {path}, bound {} since {:.0} ms, previous {:?}, \
                     pending {:?}, client path {:?}, state {}",
                    s.sid.map(|x| x.to_string()).unwrap_or_default(),
                    idx,
                    s.bound,
                    ms(now - s.switched_at),
                    s.previous,
                    s.pending_to,
                    s.client.current_path().map(|p| p.0),
                    s.client.state().as_str(),
                ));
            }
        }
    }

    fn on_echo(&mut self, idx: usize, p: Probe, now: Instant) {
        if p.session as usize != idx {
            self.report.traffic.unclaimed += 1;
            return;
        }
        if self.sessions[idx].seen.seen(p.seq) {
            self.report.correctness.replays_accepted += 1;
            return;
        }
        self.report.traffic.echoes += 1;
        self.second(now).echoes += 1;
        let rtt = ms(now - Instant::from_nanos(p.sent_ns));
        self.rtt_seen += 1;
        if self.rtt_samples.len() < RTT_KEEP {
            self.rtt_samples.push(rtt);
        } else {
            let j = self.rng.next_u64() % self.rtt_seen;
            if let Some(slot) = self
                .rtt_samples
                .get_mut(usize::try_from(j).unwrap_or(usize::MAX))
            {
                *slot = rtt;
            }
        }
        let s = &mut self.sessions[idx];
        while s.marks_done < self.marks_ns.len() && p.sent_ns >= self.marks_ns[s.marks_done] {
            let mark = self.marks_ns[s.marks_done];
            self.report
                .recovery_samples_ms
                .push(ms(now - Instant::from_nanos(mark)));
            s.marks_done += 1;
        }
    }

    fn send_probes(&mut self, count: usize, now: Instant) {
        let mut sent = 0;
        let len = self.cfg.packet_len;
        let mut buf = std::mem::take(&mut self.tx_buf);
        buf.resize(DATA_HEADER_LEN + len + TAG_LEN, 0);
        while sent < count && !self.probing.is_empty() {
            if self.cursor >= self.probing.len() {
                self.cursor = 0;
            }
            let i = self.probing[self.cursor] as usize;
            let s = &mut self.sessions[i];
            if s.sid.is_none() || s.ended.is_some() {
                // Ended: out of the rotation for good (the slot takes the last entry).
                self.probing.swap_remove(self.cursor);
                continue;
            }
            self.cursor += 1;
            let probe = Probe {
                session: u32::try_from(i).unwrap_or(u32::MAX),
                seq: s.seq,
                sent_ns: now.as_nanos(),
            };
            s.seq += 1;
            inner::write(
                &mut buf[DATA_HEADER_LEN..],
                len,
                s.inner,
                self.cfg.echo,
                probe,
            );
            match s.client.encapsulate(now, &mut buf, len) {
                Ok((via, total)) => {
                    let slot = s.slot;
                    self.send(path_of(via), slot, &buf[..total]);
                    self.report.traffic.probes_sent += 1;
                    self.second(now).probes += 1;
                    let every = self.cfg.replay_every;
                    if every > 0 && self.report.traffic.probes_sent % every == 0 {
                        self.send(path_of(via), slot, &buf[..total]);
                        self.report.traffic.replays_sent += 1;
                    }
                }
                Err(_) => self.report.traffic.not_sent += 1,
            }
            sent += 1;
        }
        self.tx_buf = buf;
    }

    fn flaps(&mut self, now: Instant) {
        let paths = self.cfg.paths.len() as u32;
        for i in 0..self.cfg.flap.min(self.sessions.len()) {
            let s = &mut self.sessions[i];
            let due = s.flap_due.is_some_and(|d| d <= now);
            if !due || s.ended.is_some() || s.pending_to.is_some() {
                continue;
            }
            s.flap_due = None;
            let other = (s.bound + 1) % paths;
            s.pending_to = Some(other);
            s.client.reattach(now, LocalPath(other));
            self.report.reattach.requested += 1;
            self.service(u32::try_from(i).unwrap_or(u32::MAX), now);
        }
    }

    fn status(&self, now: Instant) -> Value {
        let mut by_state: BTreeMap<&str, u64> = BTreeMap::new();
        for s in &self.sessions {
            if s.started.is_some() {
                *by_state.entry(s.client.state().as_str()).or_default() += 1;
            }
        }
        json!({
            "elapsed_s": now.as_nanos() as f64 / 1e9,
            "started": self.report.sessions.started,
            "established": self.report.sessions.established,
            "live": self.live,
            "by_state": by_state,
            "probes_sent": self.report.traffic.probes_sent,
            "echoes": self.report.traffic.echoes,
            "marks": self.marks_ns.len(),
        })
    }
}

/// A session's first step (challenge, ack) since the latest mark: `now − mark` into `samples`,
/// unless this session already recorded one for that mark (`recorded`: marks seen).
fn first_since_mark(marks_ns: &[u64], recorded: &mut usize, samples: &mut Vec<f64>, now: Instant) {
    if let Some(&mark) = marks_ns.last() {
        if *recorded < marks_ns.len() {
            *recorded = marks_ns.len();
            samples.push(ms(now - Instant::from_nanos(mark)));
        }
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn hex(b: &[u8]) -> String {
    use std::fmt::Write as _;
    b.iter()
        .fold(String::with_capacity(b.len() * 2), |mut s, x| {
            let _ = write!(s, "{x:02x}");
            s
        })
}

fn socket(addr: Ipv4Addr) -> Result<UdpSocket> {
    let std = std::net::UdpSocket::bind((addr, 0)).with_context(|| format!("bind {addr}"))?;
    std.set_nonblocking(true)?;
    stats::socket_buffers(&std, 4 << 20);
    Ok(UdpSocket::from_std(std))
}

/// Run the clients until `cfg.duration` has passed or `stop` is set; SIGUSR1 marks are read
/// from `marks` (nanoseconds since `start`).
///
/// # Errors
/// Sockets could not be made.
pub fn run(
    cfg: Config,
    start: StdInstant,
    stop: &AtomicBool,
    marks: Arc<Mutex<Vec<u64>>>,
) -> Result<Report> {
    anyhow::ensure!(!cfg.paths.is_empty(), "at least one --path");
    anyhow::ensure!(cfg.sockets_per_path > 0, "--sockets must be at least 1");
    anyhow::ensure!(
        cfg.packet_len >= inner::min_len() && cfg.packet_len <= 1400,
        "--packet-len must be {} to 1400",
        inner::min_len()
    );
    let mut poll = Poll::new()?;
    let mut sockets = Vec::new();
    for (p, addr) in cfg.paths.iter().enumerate() {
        let mut v = Vec::new();
        for s in 0..cfg.sockets_per_path {
            let mut sock = socket(*addr)?;
            poll.registry().register(
                &mut sock,
                Token(p * cfg.sockets_per_path + s),
                Interest::READABLE,
            )?;
            v.push(sock);
        }
        sockets.push(v);
    }
    let mut sessions = Vec::with_capacity(cfg.identities.len());
    for (i, id) in cfg.identities.iter().enumerate() {
        let mut cc = ClientConfig::new(
            jumping_protocol::handshake::StaticKeypair::from_secret_bytes(
                *id.keypair.secret_bytes(),
            ),
            cfg.gateway_public,
        );
        cc.policy = cfg.policy.clone();
        cc.handshake_attempts = cfg.handshake_attempts;
        sessions.push(Sess {
            client: Client::new(cc, OsRng),
            inner: id.inner,
            slot: i % cfg.sockets_per_path,
            hs_id: None,
            sid: None,
            started: None,
            deadline: None,
            seq: 0,
            bound: 0,
            previous: None,
            switched_at: Instant::ZERO,
            pending_to: None,
            flap_due: None,
            seen: Dedup::default(),
            ended: None,
            marks_done: 0,
            challenge_marks: 0,
            ack_marks: 0,
        });
    }
    let seed = cfg.seed;
    let mut e = Engine {
        report: Report {
            elapsed_s: 0.0,
            cpu: stats::Cpu::default(),
            sessions: Sessions {
                configured: sessions.len() as u64,
                ..Sessions::default()
            },
            handshake_ms: Summary::default(),
            traffic: Traffic::default(),
            rtt_ms: Summary::default(),
            reattach: Reattach::default(),
            state_changes: BTreeMap::new(),
            marks_s: Vec::new(),
            recovery_ms: Summary::default(),
            recovery_samples_ms: Vec::new(),
            unrecovered_last_mark: 0,
            recovery_steps_ms: RecoverySteps::default(),
            correctness: Correctness::default(),
            timeline: Vec::new(),
            session_list: Vec::new(),
            captured: Captured::default(),
        },
        cfg,
        start,
        sessions,
        sockets,
        by_sid: HashMap::new(),
        by_hs: HashMap::new(),
        heap: BinaryHeap::new(),
        buf: vec![0; RX_BUF],
        tx_buf: Vec::new(),
        rtt_samples: Vec::new(),
        rtt_seen: 0,
        challenge_samples: Vec::new(),
        ack_samples: Vec::new(),
        hs_samples: Vec::new(),
        rng: ChaCha8Rng::seed_from_u64(seed),
        marks,
        marks_ns: Vec::new(),
        cursor: 0,
        probing: Vec::new(),
        live: 0,
    };
    let cpu0 = stats::Cpu::now();
    let mut events = Events::with_capacity(256);
    let tick = Duration::from_millis(1);
    let mut next_connect = 0usize;
    let mut connect_credit = 0.0f64;
    let mut probe_credit = 0.0f64;
    let mut last = e.now();
    let mut next_status = Instant::ZERO;
    let end = Instant::ZERO + e.cfg.duration;
    let cpu_start = StdInstant::now();
    loop {
        let now = e.now();
        if now >= end || stop.load(Ordering::Relaxed) {
            break;
        }
        let dt = (now - last).as_secs_f64();
        last = now;
        // New marks.
        if let Ok(m) = e.marks.lock() {
            if m.len() > e.marks_ns.len() {
                e.marks_ns = m.clone();
            }
        }
        // Handshakes, paced.
        if next_connect < e.sessions.len() {
            connect_credit = (connect_credit + e.cfg.connect_rate * dt).min(1000.0);
            let wall = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX));
            while connect_credit >= 1.0 && next_connect < e.sessions.len() {
                connect_credit -= 1.0;
                let i = next_connect;
                next_connect += 1;
                e.sessions[i].started = Some(now);
                e.sessions[i].client.connect(now, LocalPath(0), wall);
                e.report.sessions.started += 1;
                e.service(u32::try_from(i).unwrap_or(u32::MAX), now);
            }
        }
        // Timers.
        while let Some(Reverse((t, i))) = e.heap.peek().copied() {
            if t > now {
                break;
            }
            e.heap.pop();
            let s = &mut e.sessions[i as usize];
            if s.deadline != Some(t) {
                continue;
            }
            s.deadline = None;
            s.client.handle_timeout(now);
            e.service(i, now);
        }
        e.flaps(now);
        // Probes, paced.
        if e.cfg.pps > 0.0 && e.live > 0 {
            probe_credit = (probe_credit + e.cfg.pps * dt).min(SEND_BURST as f64);
            let n = probe_credit as usize;
            if n > 0 {
                probe_credit -= n as f64;
                e.send_probes(n, now);
            }
        }
        if now >= next_status {
            next_status = now + Duration::from_secs(1);
            if let Some(f) = &e.cfg.status_file {
                let tmp = f.with_extension("tmp");
                if std::fs::write(&tmp, format!("{}\n", e.status(now))).is_ok() {
                    let _ = std::fs::rename(&tmp, f);
                }
            }
        }
        // Wait for packets until the next thing to do.
        let mut wait = e
            .heap
            .peek()
            .map_or(Duration::from_millis(50), |Reverse((t, _))| *t - now)
            .min(Duration::from_millis(50));
        if (e.cfg.pps > 0.0 && e.live > 0) || next_connect < e.sessions.len() {
            wait = wait.min(tick);
        }
        match poll.poll(&mut events, Some(wait)) {
            Ok(()) => {}
            // A mark (SIGUSR1) interrupts the wait.
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e.into()),
        }
        let now = e.now();
        for ev in &events {
            let t = ev.token().0;
            let (p, s) = (t / e.cfg.sockets_per_path, t % e.cfg.sockets_per_path);
            e.receive(p, s, now);
        }
    }
    let now = e.now();
    // The report describes the run before the final terminations.
    let mut list = Vec::new();
    for s in &e.sessions {
        if s.started.is_some() {
            *e.report
                .sessions
                .at_end
                .entry(s.client.state().as_str().to_string())
                .or_default() += 1;
        }
        if let Some(sid) = s.sid {
            list.push((sid.to_string(), s.ended.clone()));
        }
    }
    e.report.session_list = list;
    let n = e.marks_ns.len();
    if n > 0 {
        e.report.unrecovered_last_mark = e
            .sessions
            .iter()
            .filter(|s| s.sid.is_some() && s.ended.is_none() && s.marks_done < n)
            .count() as u64;
    }
    if e.cfg.terminate_at_end {
        for i in 0..e.sessions.len() {
            let s = &mut e.sessions[i];
            if s.sid.is_some() && s.ended.is_none() {
                s.client.terminate(now);
                e.service(u32::try_from(i).unwrap_or(u32::MAX), now);
            }
        }
    }
    let wall = cpu_start.elapsed();
    e.report.elapsed_s = now.as_nanos() as f64 / 1e9;
    e.report.cpu = stats::Cpu::now().since(&cpu0, wall);
    e.report.handshake_ms = Summary::of(&e.hs_samples);
    e.report.rtt_ms = Summary::of(&e.rtt_samples);
    e.report.recovery_ms = Summary::of(&e.report.recovery_samples_ms);
    e.report.recovery_steps_ms = RecoverySteps {
        challenge: Summary::of(&e.challenge_samples),
        ack: Summary::of(&e.ack_samples),
    };
    e.report.marks_s = e.marks_ns.iter().map(|m| *m as f64 / 1e9).collect();
    Ok(e.report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dedup_finds_repeats_within_the_window() {
        let mut d = Dedup::default();
        assert!(!d.seen(5));
        assert!(d.seen(5));
        assert!(!d.seen(3));
        assert!(!d.seen(1000));
        assert!(d.seen(3));
        // Far ahead: the window moves, old ones are forgotten (not judged).
        assert!(!d.seen(5000));
        assert!(!d.seen(3));
        assert!(d.seen(5000));
        assert!(!d.seen(4999));
        assert!(d.seen(4999));
    }

    #[test]
    fn dedup_matches_a_set_over_random_sequences() {
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        let mut d = Dedup::default();
        let mut set = std::collections::HashSet::new();
        let mut top = 0u64;
        for _ in 0..20_000 {
            let seq = top.saturating_sub(rng.next_u64() % 600) + rng.next_u64() % 8;
            top = top.max(seq);
            let expect = set.contains(&seq);
            if top - seq < Dedup::WIDTH - 8 {
                assert_eq!(d.seen(seq), expect, "seq {seq} top {top}");
            } else {
                d.seen(seq);
            }
            set.insert(seq);
        }
    }
}
