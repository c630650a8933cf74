//! The event loop: one thread, `mio` over the TUN, one UDP socket per path, the status socket
//! and a signal pipe, driving the sans-I/O [`Client`].

use std::io::{self, Read as _, Write as _};
use std::net::SocketAddr;
use std::os::fd::AsRawFd as _;
use std::os::unix::fs::{DirBuilderExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context as _};
use jumping_protocol::client::{Client, ClientConfig, ClientEvent, ClientOutput, LocalPath};
use jumping_protocol::handshake::StaticKeypair;
use jumping_protocol::wire::{DATA_HEADER_LEN, TAG_LEN};
use jumping_protocol::{Instant, RejectCode, SessionId};
use mio::net::{UdpSocket, UnixListener, UnixStream};
use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token};
use rand_core::OsRng;
use serde_json::json;

use crate::cli::{Config, PathSpec};
use crate::events::{emit, ms};
use crate::paths::{Decision, Selector, SelectorConfig};
use crate::status::{self, Counters, PathStatus, Request, Status};
use crate::sys::{self, Tun};

const TUN: Token = Token(0);
const LISTENER: Token = Token(1);
const SIGNAL: Token = Token(2);
const PATH_BASE: usize = 16;
const CONN_BASE: usize = 1024;
const MAX_CONNS: usize = 16;
/// Largest inner packet read from the TUN.
const MAX_INNER: usize = 65_535;
/// Work done per readiness before other sources get a turn.
const BUDGET: usize = 256;
/// The protocol gives up a reattach after 8 tries 500 ms apart; ours ends a little later.
const SWITCH_TIMEOUT: Duration = Duration::from_millis(4_500);
/// Housekeeping period (path checks, status connection timeouts).
const TICK: Duration = Duration::from_secs(1);

/// Exit code when the session ended without being asked to (handshake failed, gateway ended it).
pub const EXIT_SESSION_ENDED: i32 = 2;

#[derive(Debug)]
struct PathState {
    spec: PathSpec,
    spec_str: String,
    socket: Option<UdpSocket>,
    local: Option<SocketAddr>,
    up: bool,
    error: Option<String>,
    /// Marked down at this time (a send error or a lost address/interface).
    down_since: Option<Instant>,
    ready: bool,
    tx_packets: u64,
    tx_bytes: u64,
    rx_packets: u64,
    rx_bytes: u64,
}

#[derive(Debug, Clone, Copy)]
struct Pending {
    to: usize,
    since: Instant,
}

#[derive(Debug)]
struct Conn {
    stream: UnixStream,
    buf: Vec<u8>,
    opened: Instant,
}

/// Removes what start-up created, whatever the exit path.
#[derive(Debug)]
struct Cleanup {
    status_socket: PathBuf,
    tun: String,
    routes: Vec<crate::cli::Cidr>,
    tun_configured: bool,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        if self.tun_configured {
            sys::remove_routes(&self.tun, &self.routes);
        }
        let _ = std::fs::remove_file(&self.status_socket);
    }
}

/// The running client.
#[derive(Debug)]
pub struct Runtime {
    gateway: SocketAddr,
    client: Client<OsRng>,
    poll: Poll,
    tun: Tun,
    tun_ready: bool,
    paths: Vec<PathState>,
    selector: Selector,
    pending: Option<Pending>,
    last_rtt_seen: Option<Duration>,
    listener: UnixListener,
    conns: Vec<Option<Conn>>,
    signal_rx: UnixStream,
    stop: bool,
    counters: Counters,
    started: Instant,
    last_tick: Instant,
    tx_buf: Vec<u8>,
    rx_buf: Vec<u8>,
    // Last: dropped after the TUN and sockets.
    _cleanup: Cleanup,
}

/// Bind the status socket: parent directory 0700, socket 0600; refuse if a client answers there.
fn bind_status_socket(path: &Path) -> anyhow::Result<UnixListener> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        if !dir.exists() {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .with_context(|| format!("--status-socket: cannot create {}", dir.display()))?;
        }
    }
    if path.exists() {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            bail!(
                "--status-socket {}: another jumping-client is running there (use another --tun or --status-socket)",
                path.display()
            );
        }
        std::fs::remove_file(path)
            .with_context(|| format!("--status-socket: cannot remove stale {}", path.display()))?;
    }
    let l = std::os::unix::net::UnixListener::bind(path)
        .with_context(|| format!("--status-socket: cannot bind {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .with_context(|| format!("--status-socket: cannot chmod {}", path.display()))?;
    l.set_nonblocking(true)?;
    Ok(UnixListener::from_std(l))
}

impl Runtime {
    /// Open everything and start the handshake.
    ///
    /// # Errors
    /// Anything that could not be set up, with the flag or the system call named.
    pub fn start(cfg: Config) -> anyhow::Result<Runtime> {
        let started = sys::now();
        let poll = Poll::new().context("epoll")?;
        let mut cleanup = Cleanup {
            status_socket: cfg.status_socket.clone(),
            tun: cfg.tun.clone(),
            routes: cfg.routes.clone(),
            tun_configured: false,
        };
        let mut listener = match bind_status_socket(&cfg.status_socket) {
            Ok(l) => l,
            Err(e) => {
                // Not ours to remove.
                cleanup.status_socket = PathBuf::new();
                return Err(e);
            }
        };
        poll.registry()
            .register(&mut listener, LISTENER, Interest::READABLE)?;

        let mut paths = Vec::new();
        for (i, spec) in cfg.paths.iter().enumerate() {
            let mut p = PathState {
                spec_str: spec.to_string(),
                spec: spec.clone(),
                socket: None,
                local: None,
                up: false,
                error: None,
                down_since: Some(started),
                ready: false,
                tx_packets: 0,
                tx_bytes: 0,
                rx_packets: 0,
                rx_bytes: 0,
            };
            match open_path(&poll, i, &p.spec, cfg.gateway) {
                Ok((s, local)) => {
                    p.socket = Some(s);
                    p.local = Some(local);
                    p.up = !matches!(&p.spec, PathSpec::Device(d) if !sys::interface_up(d));
                    p.down_since = (!p.up).then_some(started);
                    tracing::info!(path = i, spec = %p.spec_str, %local, up = p.up, "path bound");
                }
                Err(e) => {
                    tracing::warn!(path = i, spec = %p.spec_str, "cannot bind path: {e}");
                    p.error = Some(e.to_string());
                }
            }
            paths.push(p);
        }
        let Some(first) = paths.iter().position(|p| p.socket.is_some()) else {
            bail!("--path: no path could be bound (see the warnings above)");
        };

        let tun = Tun::open(&cfg.tun).with_context(|| format!("--tun {}", cfg.tun))?;
        cleanup.tun_configured = true;
        sys::configure_tun(&cfg.tun, cfg.address, cfg.mtu, &cfg.routes)
            .with_context(|| format!("configuring TUN {}", cfg.tun))?;
        poll.registry().register(
            &mut SourceFd(&tun.file.as_raw_fd()),
            TUN,
            Interest::READABLE,
        )?;
        tracing::info!(tun = %cfg.tun, address = %cfg.address, mtu = cfg.mtu, "TUN up");

        let (tx, rx) = std::os::unix::net::UnixStream::pair().context("signal pipe")?;
        rx.set_nonblocking(true)?;
        tx.set_nonblocking(true)?;
        signal_hook::low_level::pipe::register(signal_hook::consts::SIGINT, tx.try_clone()?)
            .context("SIGINT handler")?;
        signal_hook::low_level::pipe::register(signal_hook::consts::SIGTERM, tx)
            .context("SIGTERM handler")?;
        let mut signal_rx = UnixStream::from_std(rx);
        poll.registry()
            .register(&mut signal_rx, SIGNAL, Interest::READABLE)?;

        let keypair = StaticKeypair::from_secret_bytes(*cfg.secret);
        let mut client_cfg = ClientConfig::new(keypair, cfg.gateway_public);
        client_cfg.policy = cfg.policy.clone();
        let client = Client::new(client_cfg, OsRng);
        let n = paths.len();
        let mut rt = Runtime {
            gateway: cfg.gateway,
            client,
            poll,
            tun,
            tun_ready: false,
            paths,
            selector: Selector::new(n, SelectorConfig::default()),
            pending: None,
            last_rtt_seen: None,
            listener,
            conns: (0..MAX_CONNS).map(|_| None).collect(),
            signal_rx,
            stop: false,
            counters: Counters::default(),
            started,
            last_tick: started,
            tx_buf: vec![0; DATA_HEADER_LEN + MAX_INNER + TAG_LEN],
            rx_buf: vec![0; 65_536],
            _cleanup: cleanup,
        };
        let wall = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX));
        let now = sys::now();
        rt.client.connect(now, LocalPath(path_id(first)), wall);
        rt.emit_path(
            "connecting",
            first,
            json!({ "gateway": cfg.gateway.to_string() }),
        );
        rt.drain(now);
        Ok(rt)
    }

    fn sid(&self) -> Option<SessionId> {
        self.client.session_id()
    }

    fn emit_path(&self, event: &str, i: usize, extra: serde_json::Value) {
        let mut v = json!({ "path": i, "spec": self.paths.get(i).map(|p| p.spec_str.as_str()) });
        if let (Some(o), serde_json::Value::Object(e)) = (v.as_object_mut(), extra) {
            o.extend(e);
        }
        emit(event, self.sid(), v);
    }

    /// Run until a signal (exit 0) or the session ends (exit 2).
    ///
    /// # Errors
    /// A failure of the poller itself.
    pub fn run(mut self) -> anyhow::Result<i32> {
        let mut events = Events::with_capacity(256);
        loop {
            let now = sys::now();
            let mut timeout = TICK
                .saturating_sub(now - self.last_tick)
                .min(Duration::from_millis(250));
            if let Some(t) = self.client.poll_timeout() {
                timeout = timeout.min(t.saturating_duration_since(now));
            }
            if self.tun_ready || self.paths.iter().any(|p| p.ready) {
                timeout = Duration::ZERO;
            }
            if let Err(e) = self.poll.poll(&mut events, Some(timeout)) {
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e).context("epoll_wait");
            }
            for ev in &events {
                match ev.token() {
                    TUN => self.tun_ready = true,
                    LISTENER => self.accept(),
                    SIGNAL => self.on_signal(),
                    Token(t) if (PATH_BASE..PATH_BASE + self.paths.len()).contains(&t) => {
                        self.paths[t - PATH_BASE].ready = true;
                    }
                    Token(t) if (CONN_BASE..CONN_BASE + MAX_CONNS).contains(&t) => {
                        self.on_conn(t - CONN_BASE);
                    }
                    Token(_) => {}
                }
            }
            if self.stop {
                return Ok(self.shutdown());
            }
            let now = sys::now();
            for i in 0..self.paths.len() {
                if self.paths[i].ready {
                    self.receive(now, i);
                }
            }
            if self.tun_ready {
                self.read_tun(now);
            }
            let now = sys::now();
            if self.client.poll_timeout().is_some_and(|t| t <= now) {
                self.client.handle_timeout(now);
            }
            self.drain(now);
            if now - self.last_tick >= TICK {
                self.last_tick = now;
                self.housekeeping(now);
            }
            self.measure(now);
            self.decide(now);
            if let Some(reason) = self.client.closed_reason() {
                emit(
                    "terminated",
                    self.sid(),
                    json!({ "reason": reason.as_str(), "by": "session", "exit_code": EXIT_SESSION_ENDED }),
                );
                tracing::error!(reason = %reason, "session ended");
                return Ok(EXIT_SESSION_ENDED);
            }
        }
    }

    fn shutdown(mut self) -> i32 {
        tracing::info!(tun = %self.tun.name, "signal: terminating the session, removing the TUN");
        let now = sys::now();
        let established = self.client.session_id().is_some();
        self.client.terminate(now);
        self.drain(now);
        emit(
            "terminated",
            self.sid(),
            json!({ "reason": "PEER_TERMINATED", "by": "signal", "sent_terminate": established, "exit_code": 0 }),
        );
        0
    }

    fn on_signal(&mut self) {
        let mut b = [0u8; 64];
        while matches!(self.signal_rx.read(&mut b), Ok(n) if n > 0) {}
        self.stop = true;
    }

    /// Send everything the protocol queued and report its events.
    fn drain(&mut self, now: Instant) {
        loop {
            let mut progress = false;
            while let Some(t) = self.client.poll_transmit() {
                progress = true;
                self.send(now, path_index(t.via), &t.payload);
            }
            while let Some(ev) = self.client.poll_event() {
                progress = true;
                self.on_event(now, ev);
            }
            if !progress {
                break;
            }
        }
    }

    fn send(&mut self, now: Instant, i: usize, payload: &[u8]) {
        let Some(p) = self.paths.get_mut(i) else {
            self.counters.drop("no_such_path");
            return;
        };
        let Some(s) = &p.socket else {
            self.counters.drop("path_unbound");
            return;
        };
        match s.send_to(payload, self.gateway) {
            Ok(n) => {
                p.tx_packets += 1;
                p.tx_bytes += n as u64;
                self.counters.sent += 1;
                if !p.up && p.error.is_some() && p.socket.is_some() && !self.dev_down(i) {
                    self.mark_up(i);
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                self.counters.drop("send_would_block")
            }
            Err(e) if sys::is_path_down_error(&e) => {
                self.counters.drop("path_down");
                self.mark_down(now, i, &e.to_string(), false);
                if self.pending.is_some_and(|p| p.to == i) {
                    self.switch_failed(now, "send_failed");
                }
            }
            Err(e) => {
                self.counters.drop("send_error");
                tracing::warn!(path = i, "send: {e}");
            }
        }
    }

    fn dev_down(&self, i: usize) -> bool {
        matches!(&self.paths[i].spec, PathSpec::Device(d) if !sys::interface_up(d))
    }

    fn mark_down(&mut self, now: Instant, i: usize, error: &str, drop_socket: bool) {
        let p = &mut self.paths[i];
        p.error = Some(error.to_owned());
        if drop_socket {
            if let Some(mut s) = p.socket.take() {
                let _ = self.poll.registry().deregister(&mut s);
            }
            p.local = None;
            p.ready = false;
        }
        if p.up {
            p.up = false;
            p.down_since = Some(now);
            tracing::warn!(path = i, spec = %p.spec_str, "path down: {error}");
            self.emit_path("path_down", i, json!({ "error": error }));
        }
    }

    fn mark_up(&mut self, i: usize) {
        let p = &mut self.paths[i];
        if !p.up {
            p.up = true;
            p.error = None;
            p.down_since = None;
            tracing::info!(path = i, spec = %p.spec_str, "path up");
            let local = p.local.map(|a| a.to_string());
            self.emit_path("path_up", i, json!({ "local_addr": local }));
        }
    }

    fn on_event(&mut self, now: Instant, ev: ClientEvent) {
        match ev {
            ClientEvent::Established { .. } => {
                let via = self.client.current_path().map_or(0, path_index);
                tracing::info!(path = via, "session established");
                self.emit_path("established", via, json!({}));
            }
            ClientEvent::StateChanged { from, to, reason } => {
                tracing::info!(%from, %to, %reason, "state changed");
                emit(
                    "state_changed",
                    self.sid(),
                    json!({ "from": from.as_str(), "to": to.as_str(), "reason": reason.as_str() }),
                );
            }
            ClientEvent::Reattached { via, version } => {
                let i = path_index(via);
                tracing::info!(path = i, version, "reattached");
                if self.pending.is_some_and(|p| p.to == i) {
                    self.pending = None;
                }
                self.selector.attempt_succeeded(i);
                self.emit_path("reattached", i, json!({ "version": version }));
            }
            ClientEvent::ReattachRejected {
                code,
                authenticated,
            } => {
                let code_str = code.map(RejectCode::as_str);
                tracing::warn!(code = code_str, authenticated, "reattach rejected");
                let path = self.pending.map(|p| p.to);
                emit(
                    "reattach_rejected",
                    self.sid(),
                    json!({
                        "code": code_str,
                        "authenticated": authenticated,
                        "path": path,
                        "spec": path.map(|i| self.paths[i].spec_str.clone()),
                    }),
                );
                let retryable = matches!(
                    code,
                    Some(RejectCode::AtomicityFailed | RejectCode::PathValidationFailed)
                );
                if authenticated && !retryable && self.pending.is_some() {
                    self.switch_failed(now, code_str.unwrap_or("rejected"));
                }
            }
            ClientEvent::Rekeyed { epoch } => {
                tracing::info!(epoch, "rekeyed");
                emit("rekeyed", self.sid(), json!({ "epoch": epoch }));
            }
            ClientEvent::ChallengeAnswered { via } => {
                let i = path_index(via);
                tracing::info!(path = i, "gateway challenge answered (address change seen)");
                self.emit_path("challenge_answered", i, json!({}));
            }
        }
    }

    fn switch_failed(&mut self, now: Instant, why: &str) {
        if let Some(p) = self.pending.take() {
            self.selector.attempt_failed(p.to, now);
            tracing::warn!(path = p.to, "switch failed: {why}");
            self.emit_path("path_switch_failed", p.to, json!({ "error": why }));
        }
    }

    fn receive(&mut self, now: Instant, i: usize) {
        for _ in 0..BUDGET {
            let Some(s) = &self.paths[i].socket else {
                self.paths[i].ready = false;
                return;
            };
            let (n, from) = match s.recv_from(&mut self.rx_buf) {
                Ok(r) => r,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.paths[i].ready = false;
                    return;
                }
                Err(e) => {
                    // ICMP errors surface here (ECONNREFUSED etc.); the path may still work.
                    tracing::debug!(path = i, "recv: {e}");
                    self.counters.drop("recv_error");
                    continue;
                }
            };
            if from != self.gateway {
                self.counters.drop("not_from_gateway");
                continue;
            }
            let p = &mut self.paths[i];
            p.rx_packets += 1;
            p.rx_bytes += n as u64;
            self.counters.received += 1;
            let via = LocalPath(path_id(i));
            match self.client.handle_datagram(now, via, &mut self.rx_buf[..n]) {
                ClientOutput::Deliver(pkt) => match self.tun.file.write(pkt) {
                    Ok(_) => self.counters.tun_tx += 1,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        self.counters.drop("tun_full");
                    }
                    Err(e) => {
                        tracing::debug!("TUN write: {e}");
                        self.counters.drop("tun_write_error");
                    }
                },
                ClientOutput::Consumed => {}
                ClientOutput::Dropped(reason) => self.counters.drop(reason),
            }
            self.drain(now);
        }
    }

    fn read_tun(&mut self, now: Instant) {
        for _ in 0..BUDGET {
            let n = match self
                .tun
                .file
                .read(&mut self.tx_buf[DATA_HEADER_LEN..DATA_HEADER_LEN + MAX_INNER])
            {
                Ok(0) => continue,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.tun_ready = false;
                    return;
                }
                Err(e) => {
                    tracing::debug!("TUN read: {e}");
                    self.counters.drop("tun_read_error");
                    continue;
                }
            };
            self.counters.tun_rx += 1;
            match self.client.encapsulate(now, &mut self.tx_buf, n) {
                Ok((via, len)) => {
                    let i = path_index(via);
                    // The buffer is moved out for the send, which needs `&mut self`.
                    let buf = std::mem::take(&mut self.tx_buf);
                    self.send(now, i, &buf[..len]);
                    self.tx_buf = buf;
                }
                Err(reason) => self.counters.drop(reason),
            }
        }
    }

    /// Once a second: bind paths that have no socket, check addresses and interfaces, expire
    /// status connections and a switch that got no answer.
    fn housekeeping(&mut self, now: Instant) {
        for i in 0..self.paths.len() {
            self.check_path(now, i);
        }
        for c in &mut self.conns {
            if c.as_ref()
                .is_some_and(|c| now - c.opened > Duration::from_secs(5))
            {
                if let Some(mut c) = c.take() {
                    let _ = self.poll.registry().deregister(&mut c.stream);
                }
            }
        }
        if self
            .pending
            .is_some_and(|p| now - p.since >= SWITCH_TIMEOUT)
        {
            self.switch_failed(now, "timeout");
        }
    }

    fn check_path(&mut self, now: Instant, i: usize) {
        let spec = self.paths[i].spec.clone();
        if let PathSpec::Device(d) = &spec {
            if !sys::interface_up(d) {
                // The socket is kept: SO_BINDTODEVICE holds while the device exists; it is
                // rebound below if the device went away and came back.
                self.mark_down(now, i, &format!("interface {d} is down or gone"), false);
                return;
            }
        }
        if self.paths[i].socket.is_none() {
            match open_path(&self.poll, i, &spec, self.gateway) {
                Ok((s, local)) => {
                    let p = &mut self.paths[i];
                    p.socket = Some(s);
                    p.local = Some(local);
                    p.ready = true;
                    self.mark_up(i);
                }
                Err(e) => {
                    let p = &mut self.paths[i];
                    p.error = Some(e.to_string());
                }
            }
            return;
        }
        match &spec {
            PathSpec::Addr(a) => {
                // Is the address still ours? A probe bind on port 0 answers without touching
                // the path's own socket.
                match sys::bind_path(&PathSpec::Addr(SocketAddr::new(a.ip(), 0)), self.gateway) {
                    Err(e) if e.raw_os_error() == Some(libc::EADDRNOTAVAIL) => {
                        self.mark_down(now, i, &format!("address {} is gone", a.ip()), true);
                    }
                    _ => self.maybe_up(now, i),
                }
            }
            PathSpec::Device(d) => {
                let was_down = !self.paths[i].up;
                if was_down && self.paths[i].down_since.is_some_and(|t| now - t >= TICK) {
                    // The interface may have been recreated (a new ifindex): bind afresh.
                    self.mark_down(now, i, &format!("rebinding to {d}"), true);
                    self.check_path(now, i);
                }
            }
        }
    }

    /// A path marked down by a send error comes back once its address/interface checks pass
    /// and a second went by.
    fn maybe_up(&mut self, now: Instant, i: usize) {
        let p = &self.paths[i];
        if !p.up && p.down_since.is_none_or(|t| now - t >= TICK) {
            self.mark_up(i);
        }
    }

    /// Attribute a new RTT measurement to the active path.
    fn measure(&mut self, now: Instant) {
        let rtt = self.client.rtt();
        if rtt.is_some() && rtt != self.last_rtt_seen {
            self.last_rtt_seen = rtt;
            if let (Some(r), Some(cur), None) = (rtt, self.client.current_path(), self.pending) {
                self.selector.record_rtt(path_index(cur), now, r);
            }
        }
    }

    fn up_vector(&self) -> Vec<bool> {
        self.paths
            .iter()
            .map(|p| p.up && p.socket.is_some())
            .collect()
    }

    fn decide(&mut self, now: Instant) {
        if self.client.session_id().is_none() {
            return;
        }
        let Some(cur) = self.client.current_path().map(path_index) else {
            return;
        };
        let up = self.up_vector();
        if let Some(d) =
            self.selector
                .decide(now, cur, self.client.state(), &up, self.pending.is_some())
        {
            self.start_switch(now, cur, d);
        }
    }

    fn start_switch(&mut self, now: Instant, from: usize, d: Decision) {
        tracing::info!(from, to = d.to, reason = %d.reason, "switching path");
        self.emit_path(
            "path_switch_started",
            d.to,
            json!({
                "from_path": from,
                "from_spec": self.paths[from].spec_str,
                "reason": d.reason.as_str(),
                "state": self.client.state().as_str(),
                "current_rtt_ms": d.current_score.map(ms),
                "candidate_rtt_ms": d.candidate_score.map(ms),
            }),
        );
        self.selector.switch_started(now);
        self.pending = Some(Pending {
            to: d.to,
            since: now,
        });
        self.client.reattach(now, LocalPath(path_id(d.to)));
        self.drain(now);
    }

    fn accept(&mut self) {
        loop {
            match self.listener.accept() {
                Ok((mut stream, _)) => {
                    let Some(slot) = self.conns.iter().position(Option::is_none) else {
                        let _ = stream.write_all(
                            format!("{}\n", status::error_line("too many status connections"))
                                .as_bytes(),
                        );
                        continue;
                    };
                    if self
                        .poll
                        .registry()
                        .register(&mut stream, Token(CONN_BASE + slot), Interest::READABLE)
                        .is_ok()
                    {
                        self.conns[slot] = Some(Conn {
                            stream,
                            buf: Vec::new(),
                            opened: sys::now(),
                        });
                        // Data may already be there (edge-triggered).
                        self.on_conn(slot);
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) => {
                    tracing::warn!("status socket accept: {e}");
                    return;
                }
            }
        }
    }

    fn on_conn(&mut self, slot: usize) {
        let Some(c) = self.conns[slot].as_mut() else {
            return;
        };
        let mut b = [0u8; 512];
        let mut eof = false;
        loop {
            match c.stream.read(&mut b) {
                Ok(0) => {
                    eof = true;
                    break;
                }
                Ok(n) => {
                    c.buf.extend_from_slice(&b[..n]);
                    if c.buf.len() > status::MAX_REQUEST {
                        break;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(_) => {
                    eof = true;
                    break;
                }
            }
        }
        let line_end = c.buf.iter().position(|&x| x == b'\n');
        if line_end.is_none() && !eof && c.buf.len() <= status::MAX_REQUEST {
            return;
        }
        let Some(mut c) = self.conns[slot].take() else {
            return;
        };
        let _ = self.poll.registry().deregister(&mut c.stream);
        let line = &c.buf[..line_end.unwrap_or(c.buf.len())];
        let answer = match status::parse_request(line) {
            Ok(Request::Status) => serde_json::to_string(&self.status())
                .unwrap_or_else(|e| status::error_line(&e.to_string())),
            Ok(Request::Switch { path }) => self.operator_switch(path as usize),
            Err(e) => status::error_line(&e),
        };
        let mut out = answer.into_bytes();
        out.push(b'\n');
        if let Err(e) = c.stream.write_all(&out) {
            tracing::debug!("status answer: {e}");
        }
    }

    fn operator_switch(&mut self, target: usize) -> String {
        let now = sys::now();
        let cur = self.client.current_path().map(path_index);
        let up = self.up_vector();
        match self.selector.operator(
            now,
            cur.filter(|_| self.client.session_id().is_some()),
            self.client.state(),
            target,
            &up,
            self.pending.is_some(),
        ) {
            Ok(d) => {
                let from = cur.unwrap_or(0);
                self.start_switch(now, from, d);
                json!({ "ok": true, "switching_to": target, "from_path": from, "spec": self.paths[target].spec_str })
                    .to_string()
            }
            Err(e) => status::error_line(&format!("switch refused: {e}")),
        }
    }

    fn status(&self) -> Status {
        let now = sys::now();
        let cur = self.client.current_path().map(|p| p.0);
        Status {
            state: self.client.state().as_str().to_owned(),
            session_id: self.sid().map(|s| s.to_string()),
            gateway_version: self.client.gateway_version(),
            key_epoch: self.client.key_epoch(),
            rtt_ms: self.client.rtt().map(ms),
            current_path: cur,
            switching_to: self.pending.map(|p| p.to),
            paths: self
                .paths
                .iter()
                .enumerate()
                .map(|(i, p)| PathStatus {
                    index: i,
                    spec: p.spec_str.clone(),
                    local_addr: p.local.map(|a| a.to_string()),
                    up: p.up && p.socket.is_some(),
                    active: cur == Some(path_id(i)),
                    rtt_ms: self.selector.last_rtt(i).map(ms),
                    tx_packets: p.tx_packets,
                    tx_bytes: p.tx_bytes,
                    rx_packets: p.rx_packets,
                    rx_bytes: p.rx_bytes,
                    error: if p.up { None } else { p.error.clone() },
                })
                .collect(),
            counters: self.counters.clone(),
            uptime_ms: jumping_protocol::time::millis(now - self.started),
        }
    }
}

fn open_path(
    poll: &Poll,
    i: usize,
    spec: &PathSpec,
    gateway: SocketAddr,
) -> io::Result<(UdpSocket, SocketAddr)> {
    let s = sys::bind_path(spec, gateway)?;
    let local = s.local_addr()?;
    let mut s = UdpSocket::from_std(s);
    poll.registry()
        .register(&mut s, Token(PATH_BASE + i), Interest::READABLE)?;
    Ok((s, local))
}

fn path_index(p: LocalPath) -> usize {
    p.0 as usize
}

fn path_id(i: usize) -> u32 {
    // At most 64 paths (checked at start-up).
    u32::try_from(i).unwrap_or(u32::MAX)
}
