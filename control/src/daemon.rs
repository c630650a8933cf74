//! The control process's event loop.
//!
//! One thread owns the gateway protocol object. Each turn: receive control datagrams (its own
//! UDP socket on AF_XDP, relayed by the data plane on io_uring), take the data plane's events
//! (a new path → validate at once), run timers, read the data plane's per-session activity
//! every `activity_poll`, answer `jumpctl`, then [`Daemon::flush`]: **persist** what changed,
//! **program the data plane**, and only then **send** the datagrams and publish the events —
//! so no client ever sees a version this process could forget in a crash, and no client is
//! told of a path the workers do not know yet.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::{ErrorKind, Write as _};
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context as _};
use jumping_control_api::server::Server;
use jumping_control_api::{
    ApiError, ControlCounters, DataplaneStatus, Drained, ErrorCode, ExportInfo, Killed, Payload,
    PolicyInfo, PolicyReloaded, Rekeyed, Request, Revoked, SessionInfo, StatsInfo, Status,
    WorkerInfo,
};
use jumping_dataplane_api::{
    Backend, DropReason as DpDrop, Event as DpEvent, FromDataplane, Install, Refusal,
    SessionSummary, ToDataplane,
};
use jumping_protocol::gateway::{
    client_key_id, DataPlaneMode, DataPlaneUpdate, DropReason, Gateway, GatewayConfig, Transmit,
};
use jumping_protocol::handshake::StaticKeypair;
use jumping_protocol::wire::{self, MessageType};
use jumping_protocol::{Instant, Path, Policy, SecurityKind, SessionId, State};
use mio::net::UdpSocket;
use mio::{Events, Interest, Poll, Token, Waker};
use observe::export::Exporter;
use observe::log::CorrelationId;
use observe::metrics::MetricsServer;
use rand_chacha::ChaCha20Rng;
use rand_core::{OsRng, SeedableRng};
use tracing::{info, warn};

use crate::metrics::{self, ControlMetrics, Published, ShellDrop, Snapshot};
use zeroize::Zeroizing;

use crate::allowlist::AllowList;
use crate::config::Config;
use crate::dataplane::{Dataplane, DpError, ANSWER_TIMEOUT};
use crate::events;
use crate::store::Store;

const UDP: Token = Token(0);
const WAKE: Token = Token(1);
/// How often the metrics endpoint gets a fresh copy of the counters.
const METRICS_PERIOD: Duration = Duration::from_secs(1);

/// This process's clock: `CLOCK_BOOTTIME` (counts suspend; persisted instants stay valid
/// across a restart of the process within one boot).
#[must_use]
pub fn now() -> Instant {
    let ts = nix::time::clock_gettime(nix::time::ClockId::CLOCK_BOOTTIME)
        .unwrap_or(nix::sys::time::TimeSpec::new(0, 0));
    let ns = u64::try_from(ts.tv_sec()).unwrap_or(0) * 1_000_000_000
        + u64::try_from(ts.tv_nsec()).unwrap_or(0);
    Instant::from_nanos(ns)
}

/// Read the gateway's private key, refusing a file others can read.
///
/// # Errors
/// Missing, readable by others, or not a key.
pub fn read_private_key(path: &std::path::Path) -> anyhow::Result<Zeroizing<[u8; 32]>> {
    let meta = std::fs::metadata(path).with_context(|| {
        format!(
            "configuration key `private_key_file`: cannot read {} (create it with \
             `jumpctl genkey > {}` and `chmod 600`)",
            path.display(),
            path.display()
        )
    })?;
    if meta.permissions().mode() & 0o077 != 0 {
        bail!(
            "configuration key `private_key_file`: {} is readable by group or others \
             (mode {:o}); run `chmod 600 {}`",
            path.display(),
            meta.permissions().mode() & 0o777,
            path.display()
        );
    }
    let text = Zeroizing::new(std::fs::read_to_string(path)?);
    jumping_protocol::keyfmt::decode(&text).with_context(|| {
        format!(
            "configuration key `private_key_file`: {} does not hold a key",
            path.display()
        )
    })
}

/// Datagrams taken off the control socket per loop turn ([`Daemon::receive_udp`]).
const DATAGRAMS_PER_TURN: usize = 256;

/// Socket buffers of the control socket. A failover or a NAT churn makes every client send
/// at once; the default buffer (~200 datagrams) dropped all but about 200 reattach requests
/// of each burst, and the rest waited for their retries. 4 MiB still dropped 62 000 of the
/// 156 000 requests of a NAT rebind of 10 000 sessions every second (the kernel's
/// `RcvbufErrors`; a datagram from veth takes about 2 KiB of buffer); 16 MiB (32 MiB granted)
/// dropped none, and the median recovery went from 1.7 s to 0.9 s. Handshakes could queue
/// behind it for longer than their clients wait: [`STALE_INITIATION`] bounds that.
const CONTROL_SOCKET_BUFFER: usize = 16 << 20;

/// A handshake initiation that waited in the control socket longer than this (with the
/// io_uring backend: since a data-plane worker took it off its ring) is dropped unread
/// (`stale_initiation`). The client sends a new initiation after 1 s without an answer
/// (more after backing off) and ignores an answer to one it has replaced, so answering an
/// initiation that queued longer mostly spends two X25519 on a response nobody takes, while
/// fresher ones wait behind it. When handshakes arrive faster than they are answered (100 000
/// clients connecting at 1500/s, a flood without cookies) the queue then stays at most this
/// long instead of growing until no answer is in time. Reattach messages are never shed: tried
/// with the client's retry interval as the bound, a queue delayed past it shed requests and
/// their retries alike, and fewer rebinds were repaired (docs/BENCHMARKS.md, session 11).
const STALE_INITIATION: Duration = Duration::from_secs(1);

/// A handshake initiation that arrived more than [`STALE_INITIATION`] before `now`.
fn is_stale_initiation(datagram: &[u8], arrived: Option<SystemTime>, now: SystemTime) -> bool {
    wire::peek_type(datagram) == Ok(MessageType::HandshakeInit)
        && arrived
            .and_then(|a| now.duration_since(a).ok())
            .is_some_and(|waited| waited > STALE_INITIATION)
}

/// `recvmsg(2)` with the kernel's receive timestamp (`SO_TIMESTAMPNS`, `CLOCK_REALTIME`):
/// length, source, and when the datagram arrived (`None` if the kernel gave no timestamp).
/// `cmsg` is the control-message buffer (`cmsg_space!(TimeSpec)`), reused across calls.
fn recv_stamped(
    s: &UdpSocket,
    buf: &mut [u8],
    cmsg: &mut [u8],
) -> std::io::Result<(usize, std::net::SocketAddr, Option<SystemTime>)> {
    use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags, SockaddrStorage};
    use std::net::{SocketAddr, SocketAddrV4, SocketAddrV6};
    use std::os::fd::AsRawFd;
    let mut iov = [std::io::IoSliceMut::new(buf)];
    let msg = recvmsg::<SockaddrStorage>(s.as_raw_fd(), &mut iov, Some(cmsg), MsgFlags::empty())?;
    let from = msg
        .address
        .as_ref()
        .and_then(|a| {
            a.as_sockaddr_in()
                .map(|v4| SocketAddr::from(SocketAddrV4::from(*v4)))
                .or_else(|| a.as_sockaddr_in6().map(|v6| SocketAddrV6::from(*v6).into()))
        })
        .ok_or_else(|| std::io::Error::other("datagram without an IP source address"))?;
    let arrived = msg.cmsgs().ok().and_then(|mut c| {
        c.find_map(|m| match m {
            ControlMessageOwned::ScmTimestampns(ts) => {
                let secs = u64::try_from(ts.tv_sec()).ok()?;
                let nanos = u32::try_from(ts.tv_nsec()).ok()?;
                SystemTime::UNIX_EPOCH.checked_add(Duration::new(secs, nanos))
            }
            _ => None,
        })
    });
    Ok((msg.bytes, from, arrived))
}

/// Datagrams per `sendmmsg(2)` on the control socket.
const SEND_BATCH: usize = 64;

/// Send `chunk` (at most [`SEND_BATCH`]) with `sendmmsg(2)`. A datagram the kernel refuses
/// (a full buffer, an unreachable destination) is skipped and the rest still sent; the error
/// is the number skipped and the first reason.
fn send_batch(udp: &UdpSocket, chunk: &[Transmit]) -> Result<(), (usize, nix::Error)> {
    use nix::sys::socket::{sendmmsg, ControlMessage, MsgFlags, MultiHeaders, SockaddrStorage};
    use std::io::IoSlice;
    use std::os::fd::AsRawFd as _;
    let addrs: Vec<Option<SockaddrStorage>> = chunk
        .iter()
        .map(|t| Some(SockaddrStorage::from(t.dst.addr)))
        .collect();
    let iovs: Vec<[IoSlice<'_>; 1]> = chunk.iter().map(|t| [IoSlice::new(&t.payload)]).collect();
    let mut headers = MultiHeaders::<SockaddrStorage>::preallocate(chunk.len(), None);
    let (mut at, mut failed, mut first) = (0, 0, None);
    while at < chunk.len() {
        let no_cmsgs: [ControlMessage<'_>; 0] = [];
        match sendmmsg(
            udp.as_raw_fd(),
            &mut headers,
            &iovs[at..],
            &addrs[at..],
            no_cmsgs,
            MsgFlags::MSG_DONTWAIT,
        ) {
            Ok(sent) => at += sent.count().max(1),
            Err(nix::Error::EINTR) => {}
            // The call fails only when its first datagram does: skip that one.
            Err(e) => {
                failed += 1;
                first.get_or_insert(e);
                at += 1;
            }
        }
    }
    first.map_or(Ok(()), |e| Err((failed, e)))
}

/// Ask for [`CONTROL_SOCKET_BUFFER`] both ways (`SO_RCVBUFFORCE` with CAP_NET_ADMIN, else up
/// to `net.core.rmem_max`); returns the receive buffer granted.
fn enlarge_buffers(s: &UdpSocket) -> usize {
    use nix::sys::socket::{getsockopt, setsockopt, sockopt};
    if setsockopt(s, sockopt::RcvBufForce, &CONTROL_SOCKET_BUFFER).is_err() {
        let _ = setsockopt(s, sockopt::RcvBuf, &CONTROL_SOCKET_BUFFER);
    }
    if setsockopt(s, sockopt::SndBufForce, &CONTROL_SOCKET_BUFFER).is_err() {
        let _ = setsockopt(s, sockopt::SndBuf, &CONTROL_SOCKET_BUFFER);
    }
    getsockopt(s, sockopt::RcvBuf).unwrap_or(0)
}

/// What a posted data-plane command was for.
#[derive(Debug, Clone, Copy)]
struct Posted {
    id: SessionId,
    install: bool,
    optional: bool,
}

#[derive(Debug, Default)]
struct Counters {
    /// By [`ShellDrop`] (its index in `ShellDrop::ALL`).
    shell_drops: [u64; ShellDrop::ALL.len()],
}

impl Counters {
    fn drop_(&mut self, why: ShellDrop) {
        self.shell_drops[why as usize] += 1;
    }
}

/// The running control process.
pub struct Daemon {
    cfg: Config,
    config_path: Option<PathBuf>,
    gw: Gateway<ChaCha20Rng>,
    poll: Poll,
    waker: Arc<Waker>,
    udp: Option<UdpSocket>,
    dp: Option<Dataplane>,
    dp_retry_at: Instant,
    ctl: Server,
    store: Store,
    allow: AllowList,
    policy_version: u64,
    started: Instant,
    summaries: HashMap<SessionId, SessionSummary>,
    /// Commands posted to the data plane and not answered yet, by sequence number.
    posted: HashMap<u32, Posted>,
    next_poll: Instant,
    counters: Counters,
    /// This turn's datagrams, sent together (reused: no allocation per turn).
    outbox: Vec<Transmit>,
    /// This turn's event lines for stdout, written with one `write(2)` (reused).
    journal: String,
    /// Counted from the events, copied to the endpoint about once a second.
    metrics: ControlMetrics,
    published: Published,
    next_publish: Instant,
    export: Arc<Exporter>,
    _metrics_server: Option<MetricsServer>,
    stop: Arc<AtomicBool>,
}

impl core::fmt::Debug for Daemon {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Daemon").finish_non_exhaustive()
    }
}

fn waker_fn(w: &Arc<Waker>) -> Box<dyn Fn() + Send + Sync> {
    let w = Arc::clone(w);
    Box::new(move || {
        let _ = w.wake();
    })
}

fn connect_dataplane(cfg: &Config, waker: &Arc<Waker>) -> Result<Dataplane, DpError> {
    Dataplane::connect(&cfg.dataplane_socket, waker_fn(waker))
}

fn api_err(code: ErrorCode, msg: impl Into<String>) -> ApiError {
    ApiError::new(code, msg)
}

fn sid_arg(text: &str) -> Result<SessionId, ApiError> {
    jumping_control_api::parse_session_id(text)
        .map(SessionId)
        .map_err(|e| api_err(ErrorCode::BadArgument, e.to_string()))
}

impl Daemon {
    /// Start: keys, allow-list, data plane, restored sessions, sockets.
    ///
    /// # Errors
    /// Anything that makes the configuration unusable, with what to fix.
    pub fn start(
        cfg: Config,
        config_path: Option<PathBuf>,
        stop: Arc<AtomicBool>,
    ) -> anyhow::Result<Daemon> {
        let secret = read_private_key(&cfg.private_key_file)?;
        let allow = AllowList::load(&cfg.clients_file).with_context(|| {
            "configuration key `clients_file` (one `<public key> <inner address>` per line)"
        })?;
        let export = Arc::new(
            Exporter::start(&cfg.export_config()?).context("configuration section `[export]`")?,
        );
        let published = Published::default();
        let metrics_server = match cfg.metrics_addr()? {
            None => None,
            Some(addr) => {
                if !observe::metrics::is_local(&addr) {
                    warn!(%addr, "metrics are served on an address other hosts can reach");
                }
                let (p, x) = (published.clone(), Arc::clone(&export));
                let render: observe::metrics::Render =
                    Arc::new(move || metrics::render(p.latest().as_ref(), &x));
                let server = MetricsServer::start(addr, render)
                    .context("configuration key `metrics_listen`")?;
                info!(addr = %server.addr(), "metrics on http://{}/metrics", server.addr());
                Some(server)
            }
        };
        let mut rng = OsRng;
        jumping_protocol::crypto::rng_health_check(&mut rng)
            .context("the OS random generator failed its health check")?;
        let poll = Poll::new()?;
        let waker = Arc::new(Waker::new(poll.registry(), WAKE)?);

        // The data plane first: its worker count decides the owners.
        let deadline = now() + cfg.dataplane_wait;
        let mut dp = loop {
            match connect_dataplane(&cfg, &waker) {
                Ok(dp) => break dp,
                Err(e) if now() < deadline && !stop.load(Ordering::Relaxed) => {
                    info!(
                        "waiting for the data plane at {}: {e}",
                        cfg.dataplane_socket.display()
                    );
                    std::thread::sleep(Duration::from_millis(200));
                }
                Err(e) => bail!(
                    "the data plane is not reachable at {} ({e}): start jumping-dataplane \
                     first, or set `dataplane_socket`",
                    cfg.dataplane_socket.display()
                ),
            }
        };
        info!(
            "data plane: {} workers on {}, {} sessions held",
            dp.workers,
            dp.backend.as_str(),
            dp.sessions_at_hello
        );
        let t0 = now();
        let mut gw = Gateway::new(
            GatewayConfig {
                node_id: cfg.node_id,
                cores: dp.workers.max(1),
                local_core: None,
                cookie_threshold: cfg.cookie_threshold,
                max_sessions: cfg.max_sessions,
                data_plane: DataPlaneMode::External,
                ..GatewayConfig::default()
            },
            cfg.policy.clone(),
            StaticKeypair::from_secret_bytes(*secret),
            // Tokens, cookie secrets and ephemeral keys from a ChaCha20 generator seeded from
            // the OS (checked above): a system call per challenge token was 1 % of the
            // control process in a mass rebind.
            ChaCha20Rng::from_rng(&mut rng)
                .map_err(|e| anyhow::anyhow!("seeding the random generator: {e}"))?,
            t0,
        )?;
        for k in allow.clients.keys() {
            gw.allow_client(*k);
        }
        let mut store = Store::open(&cfg.state_dir, &secret).with_context(|| {
            format!("configuration key `state_dir`: {}", cfg.state_dir.display())
        })?;
        let loaded = store.load();
        for d in &loaded.discarded {
            warn!("state: discarded {d}");
        }
        if let Some(node) = &loaded.node {
            gw.restore_node(node);
        }
        for rec in &loaded.sessions {
            if let Err(e) = gw.restore_session(rec) {
                warn!(session = %rec.id, correlation_id = %CorrelationId(cfg.node_id, rec.id), "state: not restored: {e}");
            }
        }
        // Resynchronise with the data plane.
        let held: HashSet<SessionId> = dp.list()?.into_iter().map(|s| s.id).collect();
        let restored: Vec<(SessionId, State)> = gw.sessions().map(|s| (s.id, s.state())).collect();
        for (id, state) in &restored {
            if *state != State::Terminated && !held.contains(id) {
                warn!(session = %id, correlation_id = %CorrelationId(cfg.node_id, *id), "the data plane no longer holds this session (its send \
                       counter is lost): terminating it");
                let _ = gw.terminate(t0, *id);
            }
        }
        let known: HashSet<SessionId> = restored.iter().map(|(id, _)| *id).collect();
        for id in held.difference(&known) {
            warn!(session = %id, correlation_id = %CorrelationId(cfg.node_id, *id), "the data plane holds a session this process has no record of: retiring it");
            let _ = dp.command(&ToDataplane::Retire { id: *id });
        }
        info!(
            "restored {} sessions ({} records discarded)",
            loaded.sessions.len(),
            loaded.discarded.len()
        );
        let udp = Self::bind_udp(&cfg, dp.backend, &poll)?;
        let group = if cfg.control_group.is_empty() {
            None
        } else {
            let g = nix::unistd::Group::from_name(&cfg.control_group)
                .ok()
                .flatten()
                .with_context(|| {
                    format!(
                        "configuration key `control_group`: no group `{}`",
                        cfg.control_group
                    )
                })?;
            Some(g.gid.as_raw())
        };
        let ctl =
            Server::bind(&cfg.control_socket, group, waker_fn(&waker)).with_context(|| {
                format!(
                    "configuration key `control_socket`: cannot listen on {}",
                    cfg.control_socket.display()
                )
            })?;
        let mut d = Daemon {
            next_poll: t0,
            cfg,
            config_path,
            gw,
            poll,
            waker,
            udp,
            dp: Some(dp),
            dp_retry_at: t0,
            ctl,
            store,
            allow,
            policy_version: 1,
            started: t0,
            summaries: HashMap::new(),
            outbox: Vec::new(),
            journal: String::new(),
            posted: HashMap::new(),
            counters: Counters::default(),
            metrics: ControlMetrics::default(),
            published,
            next_publish: t0,
            export,
            _metrics_server: metrics_server,
            stop,
        };
        d.flush(t0);
        Ok(d)
    }

    fn bind_udp(cfg: &Config, backend: Backend, poll: &Poll) -> anyhow::Result<Option<UdpSocket>> {
        if backend != Backend::AfXdp {
            info!(
                "control datagrams are relayed by the data plane ({})",
                backend.as_str()
            );
            return Ok(None);
        }
        let mut s = UdpSocket::bind(cfg.listen)
            .with_context(|| format!("configuration key `listen`: cannot bind {}", cfg.listen))?;
        let rcvbuf = enlarge_buffers(&s);
        // Arrival times, to shed handshake initiations that queued too long.
        if let Err(e) =
            nix::sys::socket::setsockopt(&s, nix::sys::socket::sockopt::ReceiveTimestampns, &true)
        {
            warn!("control socket: no receive timestamps ({e}); stale initiations are not shed");
        }
        poll.registry().register(&mut s, UDP, Interest::READABLE)?;
        info!(
            receive_buffer = rcvbuf,
            "control datagrams on {}", cfg.listen
        );
        Ok(Some(s))
    }

    /// Run until SIGINT/SIGTERM. Sessions are not ended on exit: they are persisted and the
    /// data plane keeps forwarding them; the next start takes them back.
    ///
    /// # Errors
    /// Polling failed.
    pub fn run(&mut self) -> anyhow::Result<()> {
        let mut events = Events::with_capacity(64);
        let mut buf = vec![0u8; 65536];
        let mut backlog = false;
        while !self.stop.load(Ordering::Relaxed) {
            let t = now();
            let mut next = self.next_poll.min(t + Duration::from_millis(500));
            if let Some(g) = self.gw.poll_timeout() {
                next = next.min(g);
            }
            // Datagrams left on the socket last turn: look at everything else, then go on
            // without sleeping (edge-triggered readiness will not announce them again).
            let timeout = if backlog {
                Duration::ZERO
            } else {
                next.saturating_duration_since(t)
            };
            if let Err(e) = self.poll.poll(&mut events, Some(timeout)) {
                if e.kind() != ErrorKind::Interrupted {
                    return Err(e.into());
                }
            }
            backlog = self.receive_udp(&mut buf);
            self.flush(now());
            self.service_dataplane();
            let t = now();
            // Activity first: after a busy turn the path-dead timers must judge the data
            // plane's fresh idle times, not ones older than `path_dead_after`.
            if t >= self.next_poll {
                self.poll_activity(t);
                self.next_poll = t + self.cfg.activity_poll;
            }
            // The gateway's deadline index: only sessions with a timer due are visited.
            if self.gw.poll_timeout().is_some_and(|d| d <= t) {
                self.gw.handle_timeout(t);
            }
            while let Some(call) = self.ctl.try_call() {
                let r = self.handle_call(&call.request);
                call.reply(r);
            }
            self.flush(now());
        }
        info!(
            "stopping; sessions stay with the data plane and in {}",
            self.cfg.state_dir.display()
        );
        Ok(())
    }

    /// Take up to [`DATAGRAMS_PER_TURN`] datagrams off the control socket; true if more may
    /// be waiting (the loop then comes back without sleeping). The cap keeps a flood from
    /// holding the loop: timers, the data plane and `jumpctl` get their turn in between.
    /// A handshake initiation that waited in the socket longer than [`STALE_INITIATION`]
    /// is shed before any Diffie-Hellman (see there).
    fn receive_udp(&mut self, buf: &mut [u8]) -> bool {
        // One control-message buffer and one clock reading per turn (a turn's datagrams are
        // taken within milliseconds; staleness is a matter of a second).
        let mut cmsg = nix::cmsg_space!(nix::sys::time::TimeSpec);
        let turn = SystemTime::now();
        for _ in 0..DATAGRAMS_PER_TURN {
            let Some(udp) = &self.udp else { return false };
            match recv_stamped(udp, buf, &mut cmsg) {
                Ok((n, from, arrived)) => {
                    if is_stale_initiation(&buf[..n], arrived, turn) {
                        self.counters.drop_(ShellDrop::StaleInitiation);
                        continue;
                    }
                    self.datagram(from, &mut buf[..n]);
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => return false,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => {
                    warn!("control socket receive: {e}");
                    return false;
                }
            }
        }
        true
    }

    fn datagram(&mut self, from: std::net::SocketAddr, datagram: &mut [u8]) {
        let t = now();
        if self.dp.is_none() && wire::peek_type(datagram) == Ok(MessageType::HandshakeInit) {
            // No session can carry data without the data plane: fail closed.
            self.counters.drop_(ShellDrop::NoDataplane);
            return;
        }
        // Persisted and answered by the caller's flush, once per batch of datagrams.
        let _ = self.gw.handle_datagram(t, Path::udp(from), datagram);
    }

    fn service_dataplane(&mut self) {
        if self.dp.as_ref().is_some_and(Dataplane::is_lost) {
            warn!("data plane connection lost; forwarding continues there, reconnecting");
            self.dp = None;
            // Their answers will not come; the resync after reconnecting settles the sessions.
            self.posted.clear();
            self.dp_retry_at = now() + Duration::from_millis(500);
        }
        if self.dp.is_none() && now() >= self.dp_retry_at {
            match connect_dataplane(&self.cfg, &self.waker) {
                Ok(dp) => {
                    info!(
                        "data plane reconnected ({} sessions held)",
                        dp.sessions_at_hello
                    );
                    self.dp = Some(dp);
                    self.resync();
                }
                Err(_) => self.dp_retry_at = now() + Duration::from_secs(1),
            }
        }
        let Some(dp) = &mut self.dp else { return };
        dp.poll();
        let msgs: Vec<FromDataplane> = dp.unsolicited.drain(..).collect();
        self.collect_answers(now());
        // One clock reading for the batch, as for the socket's turn.
        let wall = SystemTime::now();
        for m in msgs {
            let t = now();
            match m {
                FromDataplane::Event(DpEvent::NewPath { id, path }) => {
                    self.gw.observe_new_path(t, id, path);
                }
                // Replay and authentication drops are counted by the workers (the data
                // plane's metrics and `jumpctl stats`); each report (at most one a second per
                // session and reason) is a SECURITY_EVENT naming the last source.
                FromDataplane::Event(DpEvent::Drops {
                    id, reason, source, ..
                }) => {
                    let kind = if reason == DpDrop::Replay {
                        SecurityKind::Replay
                    } else {
                        SecurityKind::AuthFailed
                    };
                    self.gw.report_dataplane_drops(id, kind, source.addr);
                }
                FromDataplane::Event(DpEvent::Refused { id, what }) => {
                    warn!(session = %id, correlation_id = %CorrelationId(self.cfg.node_id, id), "the data plane refused {what:?}: terminating the session");
                    let _ = self.gw.dataplane_failed(t, id);
                }
                FromDataplane::ControlDatagram {
                    from,
                    received_unix_ns,
                    mut datagram,
                } => {
                    // The io_uring backend's relay: shed as the socket's datagrams are, by the
                    // time a worker took it off its ring.
                    let arrived = (received_unix_ns != 0)
                        .then(|| UNIX_EPOCH + Duration::from_nanos(received_unix_ns));
                    if is_stale_initiation(&datagram, arrived, wall) {
                        self.counters.drop_(ShellDrop::StaleInitiation);
                        continue;
                    }
                    self.datagram(from, &mut datagram);
                }
                _ => {}
            }
        }
        // One flush for the batch (the node record synced once).
        self.flush(now());
    }

    /// After a reconnection: the data plane may have restarted (and lost its sessions).
    fn resync(&mut self) {
        let t = now();
        let Some(dp) = &mut self.dp else { return };
        let Ok(list) = dp.list() else { return };
        let held: HashSet<SessionId> = list.iter().map(|s| s.id).collect();
        for s in &list {
            // A session moved between cores before a restart is where the data plane says.
            self.gw.note_owner(s.id, s.owner);
        }
        let ours: Vec<SessionId> = self
            .gw
            .sessions()
            .filter(|s| s.state() != State::Terminated)
            .map(|s| s.id)
            .collect();
        for id in ours.iter().filter(|id| !held.contains(id)) {
            warn!(session = %id, correlation_id = %CorrelationId(self.cfg.node_id, *id), "the data plane lost this session: terminating it");
            let _ = self.gw.dataplane_failed(t, *id);
        }
        let ours: HashSet<SessionId> = ours.into_iter().collect();
        for id in held.difference(&ours) {
            let _ = dp.command(&ToDataplane::Retire { id: *id });
        }
        self.flush(t);
    }

    fn poll_activity(&mut self, t: Instant) {
        let Some(dp) = &mut self.dp else { return };
        let Ok(list) = dp.list() else { return };
        self.summaries.clear();
        for s in list {
            self.gw.note_activity(
                t,
                s.id,
                Duration::from_millis(u64::from(s.idle_ms)),
                s.epoch,
            );
            self.summaries.insert(s.id, s);
        }
    }

    /// Persist, program the data plane, then send and publish (in that order).
    fn flush(&mut self, t: Instant) {
        let (dirty, node) = self.gw.take_dirty();
        let records: Vec<_> = dirty
            .iter()
            .filter_map(|id| self.gw.export_session(t, *id))
            .collect();
        let refs: Vec<_> = records.iter().collect();
        let node = node.then(|| self.gw.export_node_changes());
        if let Err(failed) = self.store.save_batch(&refs, node.as_ref()) {
            for f in failed {
                warn!("state: cannot persist {f}");
            }
        }
        if self.store.wants_node_snapshot() {
            if let Err(failed) = self.store.save_node(&self.gw.export_node()) {
                for f in failed {
                    warn!("state: cannot persist {f}");
                }
            }
        }
        let mut programmed = false;
        while let Some(u) = self.gw.poll_data_plane() {
            self.apply_update(t, u);
            programmed = true;
        }
        if programmed {
            // The batch is posted; one round trip for all of it: nothing is sent (a handshake
            // response, an ack) before the data plane holds what it announces.
            if let Some(dp) = &mut self.dp {
                if let Err(e) = dp.settle(ANSWER_TIMEOUT) {
                    warn!("data plane: {e}");
                }
            }
            self.collect_answers(t);
            // Sessions a refusal ended: retire them now.
            while let Some(u) = self.gw.poll_data_plane() {
                self.apply_update(t, u);
            }
        }
        let mut outbox = std::mem::take(&mut self.outbox);
        outbox.extend(std::iter::from_fn(|| self.gw.poll_transmit()));
        self.send_all(&mut outbox);
        self.outbox = outbox;
        // Posted commands the turn left unwritten (relayed datagrams, on the io_uring
        // backend; a batch that needed no settling): one write.
        if let Some(dp) = &mut self.dp {
            if let Err(e) = dp.send_posted() {
                warn!("data plane: {e}");
            }
        }
        let mut journal = std::mem::take(&mut self.journal);
        while let Some(e) = self.gw.poll_event() {
            self.metrics.observe(&e);
            let rec = events::record(&e, self.cfg.node_id, self.policy_version);
            journal.push_str(&rec.line);
            journal.push('\n');
            self.export.push_line(&rec.line);
            self.ctl.publish(rec);
        }
        if !journal.is_empty() {
            // One write for the turn's lines (stdout is line-buffered: `println!` per event
            // was a system call each, 6 % of control's time in a mass NAT rebind).
            let mut out = std::io::stdout().lock();
            if let Err(e) = out.write_all(journal.as_bytes()).and_then(|()| out.flush()) {
                warn!("stdout: cannot write the event journal: {e}");
            }
            journal.clear();
        }
        self.journal = journal;
        if t >= self.next_publish {
            self.publish_metrics();
            self.next_publish = t + METRICS_PERIOD;
        }
    }

    /// Hand the endpoint a copy of the counters (never waits for a scrape).
    fn publish_metrics(&mut self) {
        let mut sessions = [0u64; 6];
        for s in self.gw.sessions() {
            if let Some(i) = State::ALL.iter().position(|x| *x == s.state()) {
                sessions[i] += 1;
            }
        }
        self.published.offer(Snapshot {
            metrics: self.metrics.clone(),
            counters: self.gw.counters().clone(),
            sessions,
            shell_drops: self.counters.shell_drops,
            follower_drops: self.ctl.events_dropped(),
            dataplane_connected: self.dp.is_some(),
            policy_version: self.policy_version,
            allowed_clients: self.allow.clients.len() as u64,
        });
    }

    /// Send (and empty) `out`: over the control socket, [`SEND_BATCH`] datagrams per
    /// `sendmmsg(2)`, or relayed through the data plane when there is no socket.
    fn send_all(&mut self, out: &mut Vec<Transmit>) {
        if let Some(udp) = &self.udp {
            for chunk in out.chunks(SEND_BATCH) {
                if let Err((failed, e)) = send_batch(udp, chunk) {
                    warn!(
                        "control socket: {failed} of {} datagrams not sent: {e}",
                        chunk.len()
                    );
                }
            }
            out.clear();
        } else if let Some(dp) = &mut self.dp {
            for tx in out.drain(..) {
                // Posted: a refusal comes back as an answer nobody waits for (logged there).
                if let Err(e) = dp.post(&ToDataplane::Transmit {
                    to: tx.dst.addr,
                    datagram: tx.payload,
                }) {
                    warn!("relay through the data plane: {e}");
                }
            }
        } else {
            out.clear();
        }
    }

    fn apply_update(&mut self, t: Instant, u: DataPlaneUpdate) {
        let (id, msg) = match u {
            DataPlaneUpdate::Install {
                handoff,
                owner,
                client_public,
            } => {
                let Some(inner) = self.allow.clients.get(&client_public).copied() else {
                    warn!(session = %handoff.id, correlation_id = %CorrelationId(self.cfg.node_id, handoff.id), "client no longer allowed: terminating");
                    let _ = self.gw.terminate(t, handoff.id);
                    return;
                };
                let (window_top, window) = handoff.recv_window.to_parts();
                (
                    handoff.id,
                    ToDataplane::Install(Box::new(Install {
                        id: handoff.id,
                        owner,
                        inner,
                        keys: handoff.keys.export(t),
                        send_counter: handoff.send_counter,
                        window_top,
                        window,
                        active: handoff.active,
                    })),
                )
            }
            DataPlaneUpdate::NextKeys { id, keys } => (
                id,
                ToDataplane::NextKeys {
                    id,
                    keys: Box::new(keys.export(t)),
                },
            ),
            DataPlaneUpdate::SetPath { id, path } => (id, ToDataplane::SetPath { id, path }),
            DataPlaneUpdate::Move { id, to } => (id, ToDataplane::Move { id, to }),
            DataPlaneUpdate::RequestRekey { id } => (id, ToDataplane::RequestRekey { id }),
            DataPlaneUpdate::Retire { id } => {
                if let Err(e) = self.store.remove_session(id) {
                    warn!(session = %id, correlation_id = %CorrelationId(self.cfg.node_id, id), "state: cannot remove: {e}");
                }
                (id, ToDataplane::Retire { id })
            }
        };
        let posted = Posted {
            id,
            install: matches!(msg, ToDataplane::Install(_)),
            // A move or a rekey request the data plane could not do now leaves the session as
            // it was (the drain reads the owners back); anything else refused ends it.
            optional: matches!(
                msg,
                ToDataplane::Move { .. } | ToDataplane::RequestRekey { .. }
            ),
        };
        let r = match &mut self.dp {
            Some(dp) => dp.post(&msg),
            None => Err(DpError::Lost("not connected".into())),
        };
        match r {
            Ok(seq) => {
                self.posted.insert(seq, posted);
            }
            Err(e) => self.command_failed(t, posted, &e),
        }
    }

    /// Answers to posted commands: a refusal is handled as [`Daemon::command_failed`] says.
    fn collect_answers(&mut self, t: Instant) {
        let Some(dp) = &mut self.dp else { return };
        let answers: Vec<_> = dp.answers.drain(..).collect();
        for (seq, answer) in answers {
            let posted = self.posted.remove(&seq);
            match (answer, posted) {
                (FromDataplane::Refused(r), Some(p)) => {
                    self.command_failed(t, p, &DpError::Refused(r));
                }
                (FromDataplane::Refused(r), None) => {
                    warn!("data plane refused a transmission: {r:?}");
                }
                _ => {}
            }
        }
    }

    /// Correctness over liveness: a session the workers cannot carry as decided ends
    /// explicitly (DATAPLANE_FAILED).
    fn command_failed(&mut self, t: Instant, p: Posted, e: &DpError) {
        warn!(session = %p.id, correlation_id = %CorrelationId(self.cfg.node_id, p.id), "data plane: {e}");
        let harmless =
            p.optional && matches!(e, DpError::Refused(Refusal::Busy | Refusal::NoSuchWorker));
        if !harmless && (p.install || matches!(e, DpError::Refused(_))) {
            let _ = self.gw.dataplane_failed(t, p.id);
        }
    }

    fn session_info(&self, t: Instant, id: SessionId) -> Option<SessionInfo> {
        let s = self.gw.session(id)?;
        let sum = self.summaries.get(&id);
        Some(SessionInfo {
            id: id.to_string(),
            state: s.state().as_str().to_string(),
            version: s.version(),
            active_path: s.active.map(|p| p.to_string()),
            owner: s.owner,
            age_ms: jumping_protocol::time::millis(t.saturating_duration_since(s.created)),
            switches: s.switches_total(),
            key_epoch: s.key_epoch(),
            client_key_id: client_key_id(&s.client_public),
            inner: self
                .allow
                .clients
                .get(&s.client_public)
                .map_or_else(String::new, ToString::to_string),
            rx_packets: sum.map_or(0, |x| x.rx_packets),
            rx_bytes: sum.map_or(0, |x| x.rx_bytes),
            tx_packets: sum.map_or(0, |x| x.tx_packets),
            tx_bytes: sum.map_or(0, |x| x.tx_bytes),
            last_rx_ms: sum.map(|x| u64::from(x.idle_ms)),
        })
    }

    fn handle_call(&mut self, req: &Request) -> Result<Payload, ApiError> {
        let t = now();
        match req {
            Request::Status => {
                let mut by_state = BTreeMap::new();
                for s in self.gw.sessions() {
                    *by_state.entry(s.state().as_str().to_string()).or_default() += 1;
                }
                Ok(Payload::Status(Status {
                    node_id: self.cfg.node_id,
                    software_version: env!("CARGO_PKG_VERSION").to_string(),
                    uptime_ms: jumping_protocol::time::millis(
                        t.saturating_duration_since(self.started),
                    ),
                    policy_version: self.policy_version,
                    listen: self.cfg.listen.to_string(),
                    sessions_total: self.gw.sessions().count() as u64,
                    sessions_by_state: by_state,
                    clients_allowed: self.allow.clients.len() as u64,
                    dataplane: DataplaneStatus {
                        connected: self.dp.is_some(),
                        backend: self.dp.as_ref().map(|d| d.backend.as_str().to_string()),
                        workers: self.dp.as_ref().map_or(0, |d| d.workers),
                        socket: self.cfg.dataplane_socket.display().to_string(),
                    },
                }))
            }
            Request::Sessions => {
                let mut ids: Vec<SessionId> = self.gw.sessions().map(|s| s.id).collect();
                ids.sort_unstable();
                Ok(Payload::Sessions {
                    sessions: ids
                        .into_iter()
                        .filter_map(|id| self.session_info(t, id))
                        .collect(),
                })
            }
            Request::SessionShow { id } => {
                let id = sid_arg(id)?;
                self.session_info(t, id)
                    .map(Payload::Session)
                    .ok_or_else(|| api_err(ErrorCode::NotFound, format!("no session {id}")))
            }
            Request::SessionKill { id } => {
                let id = sid_arg(id)?;
                self.gw
                    .terminate(t, id)
                    .map_err(|_| api_err(ErrorCode::NotFound, format!("no live session {id}")))?;
                let version = self.gw.session(id).map_or(0, |s| s.version());
                Ok(Payload::Killed(Killed {
                    id: id.to_string(),
                    version,
                }))
            }
            Request::KeyRevoke { public_key } => {
                let key = jumping_control_api::parse_public_key(public_key)
                    .map_err(|e| api_err(ErrorCode::BadArgument, e.to_string()))?;
                let n = self.gw.revoke_client(t, &key);
                info!(client = %client_key_id(&key), sessions = n, "client key revoked");
                Ok(Payload::Revoked(Revoked {
                    client_key_id: client_key_id(&key),
                    sessions_terminated: n as u64,
                }))
            }
            Request::Rekey { id } => {
                let ids: Vec<SessionId> = match id {
                    Some(text) => vec![sid_arg(text)?],
                    None => self
                        .gw
                        .sessions()
                        .filter(|s| !matches!(s.state(), State::Terminated | State::Birth))
                        .map(|s| s.id)
                        .collect(),
                };
                let mut n = 0u64;
                for sid in ids {
                    match self.gw.request_rekey(sid) {
                        Ok(()) => n += 1,
                        Err(_) if id.is_some() => {
                            return Err(api_err(
                                ErrorCode::NotFound,
                                format!("no live session {sid}"),
                            ))
                        }
                        Err(_) => {}
                    }
                }
                info!(sessions = n, "rekey requested");
                Ok(Payload::Rekeyed(Rekeyed { sessions: n }))
            }
            Request::CoreDrain { core } => self.drain(t, *core),
            Request::PolicyShow => Ok(Payload::Policy(PolicyInfo {
                policy_version: self.policy_version,
                source: self
                    .config_path
                    .as_ref()
                    .map_or_else(|| "embedded defaults".into(), |p| p.display().to_string()),
                values: policy_values(self.gw.policy()),
                clients_allowed: self.allow.clients.len() as u64,
            })),
            Request::PolicyReload => self.reload(),
            Request::Stats => self.stats(),
            Request::Events { .. } => Err(api_err(
                ErrorCode::BadRequest,
                "events are served by the socket itself",
            )),
        }
    }

    /// Move every session off worker `core` (and give it no new ones until a restart).
    fn drain(&mut self, t: Instant, core: u8) -> Result<Payload, ApiError> {
        let workers =
            self.dp.as_ref().map(|d| d.workers).ok_or_else(|| {
                api_err(ErrorCode::Unavailable, "the data plane is not connected")
            })?;
        if core >= workers {
            return Err(api_err(
                ErrorCode::BadArgument,
                format!(
                    "no worker core {core}: the data plane runs {workers} (0..{})",
                    workers - 1
                ),
            ));
        }
        let moves = self.gw.drain_core(core).map_err(|e| {
            api_err(
                ErrorCode::BadArgument,
                format!("cannot drain core {core}: {e}"),
            )
        })?;
        // Persist, then move (each move is answered once the new owner holds the session).
        self.flush(t);
        if let Some(dp) = &mut self.dp {
            if let Err(e) = dp.settle(ANSWER_TIMEOUT) {
                warn!("data plane: {e}");
            }
        }
        self.collect_answers(t);
        // The data plane is the truth about owners: read them back.
        let mut moved = 0u64;
        if let Some(dp) = &mut self.dp {
            if let Ok(list) = dp.list() {
                for s in &list {
                    self.gw.note_owner(s.id, s.owner);
                }
                moved = moves
                    .iter()
                    .filter(|(id, to)| list.iter().any(|s| s.id == *id && s.owner == *to))
                    .count() as u64;
            }
        }
        info!(core, moved, planned = moves.len(), "core drained");
        Ok(Payload::Drained(Drained { core, moved }))
    }

    fn reload(&mut self) -> Result<Payload, ApiError> {
        let cfg = Config::load(self.config_path.as_deref()).map_err(|e| {
            api_err(
                ErrorCode::BadArgument,
                format!("policy refused, the old one stays: {e}"),
            )
        })?;
        let allow = AllowList::load(&self.cfg.clients_file).map_err(|e| {
            api_err(
                ErrorCode::BadArgument,
                format!("clients file refused, the old list stays: {e}"),
            )
        })?;
        let old = policy_values(self.gw.policy());
        let new = policy_values(&cfg.policy);
        let mut changed: Vec<String> = new
            .iter()
            .filter(|(k, v)| old.get(*k) != Some(*v))
            .map(|(k, _)| format!("policy.{k}"))
            .collect();
        self.gw
            .set_policy(cfg.policy)
            .map_err(|e| api_err(ErrorCode::BadArgument, e.to_string()))?;
        for (k, addr) in &allow.clients {
            if self.allow.clients.get(k) != Some(addr) {
                changed.push(format!("client {} allowed ({addr})", client_key_id(k)));
                self.gw.allow_client(*k);
            }
        }
        for k in self.allow.clients.keys() {
            if !allow.clients.contains_key(k) {
                changed.push(format!("client {} removed", client_key_id(k)));
                self.gw.disallow_client(k);
            }
        }
        self.allow = allow;
        if !changed.is_empty() {
            self.policy_version += 1;
            info!(
                policy_version = self.policy_version,
                ?changed,
                "policy reloaded"
            );
        }
        Ok(Payload::PolicyReloaded(PolicyReloaded {
            policy_version: self.policy_version,
            clients_allowed: self.allow.clients.len() as u64,
            changed,
        }))
    }

    fn stats(&mut self) -> Result<Payload, ApiError> {
        let c = self.gw.counters();
        let mut drops: BTreeMap<String, u64> = DropReason::NAMES
            .iter()
            .zip(c.drops.iter())
            .filter(|(_, n)| **n > 0)
            .map(|(k, n)| ((*k).to_string(), *n))
            .collect();
        for (d, n) in ShellDrop::ALL.iter().zip(self.counters.shell_drops) {
            if n > 0 {
                drops.insert(d.name().to_string(), n);
            }
        }
        let rejects = jumping_protocol::RejectCode::ALL
            .iter()
            .filter_map(|r| {
                let n = c.rejects[usize::from(r.code() - 1)];
                (n > 0).then(|| (r.as_str().to_string(), n))
            })
            .collect();
        let control = ControlCounters {
            handshakes: c.handshakes,
            reattaches: c.reattaches,
            cookies_sent: c.cookies_sent,
            drops,
            rejects,
            events_dropped: self.ctl.events_dropped(),
            exports: self
                .export
                .snapshot()
                .into_iter()
                .map(|x| ExportInfo {
                    sink: x.kind.into(),
                    target: x.target,
                    sent: x.sent,
                    dropped: x.dropped,
                    errors: x.errors,
                    connected: x.connected,
                })
                .collect(),
        };
        let (workers, lost) = match &mut self.dp {
            Some(dp) => {
                let s = dp
                    .stats()
                    .map_err(|e| api_err(ErrorCode::Unavailable, e.to_string()))?;
                let w = s
                    .workers
                    .iter()
                    .map(|w| WorkerInfo {
                        cpu: w.cpu,
                        rx_datagrams: w.rx_datagrams,
                        rx_bytes: w.rx_bytes,
                        delivered: w.delivered,
                        inside_packets: w.inside_packets,
                        sent: w.sent,
                        sent_bytes: w.sent_bytes,
                        handed_off: w.handed_off,
                        taken_over: w.taken_over,
                        sessions: w.sessions,
                        key_cache_misses: w.key_cache_misses,
                        events_lost: w.events_lost,
                        drops: DpDrop::ALL
                            .iter()
                            .map(|r| (r.name().to_string(), w.drops[r.index()]))
                            .collect(),
                    })
                    .collect();
                (w, s.events_lost)
            }
            None => (Vec::new(), 0),
        };
        Ok(Payload::Stats(StatsInfo {
            control,
            workers,
            dataplane_events_lost: lost,
        }))
    }
}

fn policy_values(p: &Policy) -> BTreeMap<String, String> {
    let d = |d: Duration| humantime::format_duration(d).to_string();
    let mut m = BTreeMap::new();
    for (k, v) in [
        ("session_max_lifetime", d(p.session_max_lifetime)),
        ("rekey_after", d(p.rekey_after)),
        ("rekey_after_packets", p.rekey_after_packets.to_string()),
        ("reject_after", d(p.reject_after)),
        ("key_grace", d(p.key_grace)),
        ("heartbeat_interval", d(p.heartbeat_interval)),
        ("path_dead_after", d(p.path_dead_after)),
        ("recovery_window", d(p.recovery_window)),
        ("volatile_loss", p.volatile_loss.to_string()),
        ("volatile_rtt", d(p.volatile_rtt)),
        ("volatile_heartbeat_age", d(p.volatile_heartbeat_age)),
        ("loss_window", d(p.loss_window)),
        ("stability_window", d(p.stability_window)),
        ("max_switches_per_min", p.max_switches_per_min.to_string()),
        ("switch_cooldown", d(p.switch_cooldown)),
        ("max_reattach_failures", p.max_reattach_failures.to_string()),
        ("degraded_max", d(p.degraded_max)),
        ("degraded_cooldown", d(p.degraded_cooldown)),
        ("reattach_max_age", d(p.reattach_max_age)),
        ("path_validation_timeout", d(p.path_validation_timeout)),
        ("switch_hysteresis", p.switch_hysteresis.to_string()),
        ("allowed_transports", format!("{:?}", p.allowed_transports)),
    ] {
        m.insert(k.to_string(), v);
    }
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_skips_a_refused_datagram_and_sends_the_rest() {
        let udp = UdpSocket::bind("127.0.0.1:0".parse().expect("addr")).expect("bind");
        let rx: Vec<std::net::UdpSocket> = (0..2)
            .map(|_| {
                let s = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
                s.set_read_timeout(Some(Duration::from_millis(500)))
                    .expect("timeout");
                s
            })
            .collect();
        let to = |i: usize| Path::udp(rx[i].local_addr().expect("addr"));
        // An IPv6 destination on an IPv4 socket: refused by the kernel, in the middle.
        let v6 = Path::udp("[2001:db8::1]:9".parse().expect("addr"));
        let chunk: Vec<Transmit> = [(to(0), 1u8), (v6, 2), (to(1), 3), (to(0), 4)]
            .into_iter()
            .map(|(dst, b)| Transmit {
                dst,
                payload: vec![b; 10],
            })
            .collect();
        let (failed, _) = send_batch(&udp, &chunk).expect_err("one refused");
        assert_eq!(failed, 1);
        let mut buf = [0u8; 64];
        let mut got = |i: usize| {
            let (n, _) = rx[i].recv_from(&mut buf).expect("a datagram");
            buf[..n].to_vec()
        };
        assert_eq!(got(0), vec![1; 10]);
        assert_eq!(got(0), vec![4; 10], "the one after the refused one is sent");
        assert_eq!(got(1), vec![3; 10]);
        assert!(send_batch(&udp, &chunk[..1]).is_ok());
    }

    #[test]
    fn received_datagrams_carry_their_source_and_arrival_time() {
        let rx = UdpSocket::bind("127.0.0.1:0".parse().expect("addr")).expect("bind");
        nix::sys::socket::setsockopt(&rx, nix::sys::socket::sockopt::ReceiveTimestampns, &true)
            .expect("timestamps");
        let tx = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
        tx.send_to(b"hello", rx.local_addr().expect("addr"))
            .expect("send");
        let before = SystemTime::now() - Duration::from_secs(5);
        let mut buf = [0u8; 64];
        let mut cmsg = nix::cmsg_space!(nix::sys::time::TimeSpec);
        let (n, from, arrived) = loop {
            match recv_stamped(&rx, &mut buf, &mut cmsg) {
                Err(e) if e.kind() == ErrorKind::WouldBlock => std::thread::yield_now(),
                r => break r.expect("a datagram"),
            }
        };
        assert_eq!(&buf[..n], b"hello");
        assert_eq!(from, tx.local_addr().expect("addr"));
        let arrived = arrived.expect("a kernel timestamp");
        assert!(arrived > before && arrived <= SystemTime::now());
    }

    #[test]
    fn only_initiations_that_waited_too_long_are_stale() {
        // A HandshakeInit's header: version 1, type 1 (the size is not looked at).
        let mut init = vec![0u8; 164];
        init[0] = 1;
        init[1] = MessageType::HandshakeInit as u8;
        let mut reattach = init.clone();
        reattach[1] = MessageType::ReattachRequest as u8;
        let now = SystemTime::now();
        let old = Some(now - STALE_INITIATION - Duration::from_millis(1));
        let fresh = Some(now - STALE_INITIATION + Duration::from_millis(100));
        assert!(is_stale_initiation(&init, old, now));
        assert!(!is_stale_initiation(&init, fresh, now));
        assert!(!is_stale_initiation(&init, None, now), "no timestamp: kept");
        assert!(
            !is_stale_initiation(&reattach, old, now),
            "reattaches are never shed"
        );
        // A clock stepped back: the wait cannot be told, the initiation is kept.
        assert!(!is_stale_initiation(
            &init,
            Some(now + Duration::from_secs(9)),
            now
        ));
    }
}
