//! The data plane's end of the control-process interface ([`jumping_dataplane_api`]).
//!
//! One thread, off the packet path: it listens on a Unix stream socket (mode 0600; each
//! message preceded by its length as a big-endian u32), serves one control connection at a
//! time (a new connection replaces the old one: the control process restarted), turns
//! requests into worker commands, and forwards what the workers report. Without a control
//! process the workers go on forwarding every installed session; events that find no
//! connection are counted as lost, and a returning control process resynchronises with
//! [`ToDataplane::Hello`] (the session count) and [`ToDataplane::ListSessions`].
//!
//! With an AF_XDP inside NIC the thread also owns the inside XDP program's `inside_routes` map
//! ([`ControlServer::set_inside_routes`]): an install adds the session's inner address to it
//! (before the workers learn the route, so the NIC steers that client's packets into the data
//! plane), a retirement removes it.

use std::collections::HashMap;
use std::io::{self, Read as _, Write as _};
use std::net::IpAddr;
use std::os::fd::AsRawFd as _;
use std::os::unix::fs::PermissionsExt as _;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path as FsPath, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use jumping_dataplane_api::{
    Backend, FromDataplane, Refusal, SessionSummary, Stats, ToDataplane, MAX_MESSAGE,
};
use jumping_protocol::SessionId;
use rtrb::{Consumer, Producer};

use crate::commands::{Command, CommandSender};
use crate::keys::RawEpoch;
use crate::runtime::{owner_of, Clock, FromWorker, SharedStats, ToWorker};
use crate::worker::{DataSession, SessionUpdate};

/// The control thread's ends of one worker's rings.
#[derive(Debug)]
pub struct WorkerHandle {
    /// Session commands.
    pub commands: CommandSender<DataSession, SessionUpdate>,
    /// Routes, listings, transmissions.
    pub to_worker: Producer<ToWorker>,
    /// Events and listings.
    pub from_worker: Consumer<FromWorker>,
    /// Counters.
    pub stats: Arc<SharedStats>,
}

/// Read one length-prefixed message from a blocking stream.
///
/// # Errors
/// I/O errors, or a length over [`MAX_MESSAGE`] (`InvalidData`).
pub fn read_message(s: &mut UnixStream) -> io::Result<Vec<u8>> {
    let mut len = [0u8; 4];
    s.read_exact(&mut len)?;
    let len = u32::from_be_bytes(len) as usize;
    if len > MAX_MESSAGE {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "message too large",
        ));
    }
    let mut buf = vec![0u8; len];
    s.read_exact(&mut buf)?;
    Ok(buf)
}

/// Write one length-prefixed message.
///
/// # Errors
/// I/O errors.
pub fn write_message(s: &mut UnixStream, msg: &[u8]) -> io::Result<()> {
    let mut framed = Vec::with_capacity(4 + msg.len());
    jumping_dataplane_api::frame_into(&mut framed, msg)
        .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    let r = s.write_all(&framed);
    jumping_dataplane_api::zeroize_message(framed);
    r
}

struct Conn {
    stream: UnixStream,
    inbuf: Vec<u8>,
    /// Messages framed this turn, written together by [`ControlServer::write_out`].
    out: Vec<u8>,
    /// Events among them (lost if the write fails).
    out_events: u64,
    hello: bool,
}

/// The control thread.
pub struct ControlServer {
    path: PathBuf,
    listener: UnixListener,
    conn: Option<Conn>,
    workers: Vec<WorkerHandle>,
    backend: Backend,
    clock: Clock,
    /// Client virtual address of every installed session, and the reverse.
    inner_of: HashMap<SessionId, IpAddr>,
    session_of: HashMap<IpAddr, SessionId>,
    /// A listing in progress: its sequence number and the workers yet to finish.
    listing: Option<(u32, usize)>,
    events_lost: u64,
    /// The inside XDP program's routes (AF_XDP inside NIC only).
    inside_routes: Option<jumping_ebpf::InsideRoutes>,
    /// Owners of the sessions that were ever moved (the others are owned by their
    /// SessionId's top byte); the workers they passed through keep forwarding entries, which
    /// are cleared when the session ends.
    moved: HashMap<SessionId, u8>,
    /// Sessions held by each worker (installs, moves and retirements as programmed here).
    per_worker: Vec<usize>,
    /// Each worker's session table size: a move to a full worker is refused.
    capacity: usize,
    /// Moves under way: answered when the new owner has the session; commands for the
    /// session meanwhile are held and then sent, in order, to whoever holds it.
    moving: HashMap<SessionId, Moving>,
}

#[derive(Debug)]
struct Moving {
    seq: u32,
    from: u8,
    to: u8,
    held: Vec<Command<DataSession, SessionUpdate>>,
}

impl std::fmt::Debug for ControlServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ControlServer")
            .field("path", &self.path)
            .field("connected", &self.conn.is_some())
            .field("sessions", &self.inner_of.len())
            .finish_non_exhaustive()
    }
}

impl ControlServer {
    /// Listen on `path` (a stale socket file left by a crash is replaced; its directory is
    /// created mode 0700 if missing).
    ///
    /// # Errors
    /// Creating the directory, binding or setting permissions failed.
    pub fn bind(
        path: &FsPath,
        workers: Vec<WorkerHandle>,
        backend: Backend,
        clock: Clock,
    ) -> io::Result<Self> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            if !dir.exists() {
                std::fs::create_dir_all(dir)?;
                std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
            }
        }
        match UnixStream::connect(path) {
            Ok(_) => {
                return Err(io::Error::new(
                    io::ErrorKind::AddrInUse,
                    format!("{} is in use by a running data plane", path.display()),
                ))
            }
            Err(_) => {
                let _ = std::fs::remove_file(path);
            }
        }
        let n = workers.len();
        let listener = UnixListener::bind(path)?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
        listener.set_nonblocking(true)?;
        Ok(ControlServer {
            path: path.to_owned(),
            listener,
            conn: None,
            workers,
            backend,
            clock,
            inner_of: HashMap::new(),
            session_of: HashMap::new(),
            listing: None,
            events_lost: 0,
            inside_routes: None,
            moved: HashMap::new(),
            per_worker: vec![0; n],
            capacity: usize::MAX,
            moving: HashMap::new(),
        })
    }

    /// Each worker's session table size (a move to a worker that is full is refused).
    pub fn set_capacity(&mut self, per_worker: usize) {
        self.capacity = per_worker;
    }

    /// Program `routes` (the inside XDP program's `inside_routes` map) with the inner address
    /// of every session installed from now on, and remove it when the session is retired.
    pub fn set_inside_routes(&mut self, routes: jumping_ebpf::InsideRoutes) {
        self.inside_routes = Some(routes);
    }

    /// Serve until `stop` is set; removes the socket file on return.
    pub fn run(mut self, stop: &AtomicBool) {
        while !stop.load(Ordering::Relaxed) {
            self.accept();
            self.read_requests();
            self.forward_from_workers();
            self.write_out();
            let mut fds = vec![self.listener.as_raw_fd()];
            if let Some(c) = &self.conn {
                fds.push(c.stream.as_raw_fd());
            }
            let _ = crate::sys::wait_readable(&fds, 2);
        }
        let _ = std::fs::remove_file(&self.path);
    }

    fn accept(&mut self) {
        while let Ok((stream, _)) = self.listener.accept() {
            if stream.set_nonblocking(true).is_err() {
                continue;
            }
            if let Some(old) = &self.conn {
                self.events_lost += old.out_events;
                tracing::info!("control process reconnected; the previous connection is closed");
            } else {
                tracing::info!("control process connected");
            }
            self.conn = Some(Conn {
                stream,
                inbuf: Vec::new(),
                out: Vec::new(),
                out_events: 0,
                hello: false,
            });
            self.listing = None;
        }
    }

    /// Queue `msg` for the control process; the turn's messages are written together at its
    /// end ([`ControlServer::write_out`]): a write (and four system calls around it) per
    /// message was a wake-up of the control process's reader per new path in a mass rebind.
    fn send(&mut self, msg: &FromDataplane, seq: u32) {
        let event = u64::from(matches!(msg, FromDataplane::Event(_)));
        let Some(c) = &mut self.conn else {
            self.events_lost += event;
            return;
        };
        if jumping_dataplane_api::frame_into(&mut c.out, &msg.encode(seq)).is_ok() {
            c.out_events += event;
        } else {
            self.events_lost += event;
        }
    }

    /// Write the messages queued this turn.
    fn write_out(&mut self) {
        let Some(c) = &mut self.conn else { return };
        if c.out.is_empty() {
            return;
        }
        // Short blocking write: the peer is a local process; if it stops reading for a
        // second it is treated as gone.
        let ok = c.stream.set_nonblocking(false).is_ok()
            && c.stream
                .set_write_timeout(Some(std::time::Duration::from_secs(1)))
                .is_ok()
            && c.stream.write_all(&c.out).is_ok()
            && c.stream.set_nonblocking(true).is_ok();
        c.out.clear();
        if ok {
            c.out_events = 0;
        } else {
            tracing::warn!("control connection lost while writing; waiting for a new one");
            self.events_lost += c.out_events;
            self.conn = None;
        }
    }

    fn read_requests(&mut self) {
        let mut buf = [0u8; 8192];
        loop {
            let Some(c) = &mut self.conn else { return };
            match c.stream.read(&mut buf) {
                Ok(0) => {
                    tracing::info!("control process disconnected; forwarding continues");
                    self.conn = None;
                    return;
                }
                Ok(n) => c.inbuf.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => {
                    self.conn = None;
                    return;
                }
            }
        }
        buf.fill(0);
        loop {
            let Some(c) = &mut self.conn else { return };
            if c.inbuf.len() < 4 {
                return;
            }
            let len = u32::from_be_bytes([c.inbuf[0], c.inbuf[1], c.inbuf[2], c.inbuf[3]]) as usize;
            if len > MAX_MESSAGE {
                tracing::warn!(len, "control message too large; closing the connection");
                self.conn = None;
                return;
            }
            if c.inbuf.len() < 4 + len {
                return;
            }
            let msg: Vec<u8> = c.inbuf.drain(..4 + len).skip(4).collect();
            self.handle(&msg);
            jumping_dataplane_api::zeroize_message(msg);
        }
    }

    fn handle(&mut self, msg: &[u8]) {
        let (header, req) = match ToDataplane::decode(msg) {
            Ok(x) => x,
            Err(e) => {
                tracing::warn!(error = %e, "undecodable control message; closing the connection");
                self.conn = None;
                return;
            }
        };
        let seq = header.seq;
        let hello = self.conn.as_ref().is_some_and(|c| c.hello);
        if !hello && !matches!(req, ToDataplane::Hello) {
            self.send(&FromDataplane::Refused(Refusal::NoHello), seq);
            return;
        }
        let answer = match req {
            ToDataplane::Hello => {
                if let Some(c) = &mut self.conn {
                    c.hello = true;
                }
                FromDataplane::HelloAck {
                    workers: self.workers.len() as u8,
                    backend: self.backend,
                    sessions: u32::try_from(self.inner_of.len()).unwrap_or(u32::MAX),
                }
            }
            ToDataplane::Install(i) => self.install(&i),
            ToDataplane::SetPath { id, path } => self.update(id, SessionUpdate::ActivePath(path)),
            ToDataplane::NextKeys { id, keys } => match RawEpoch::from_material(&keys) {
                Ok(k) => self.update(id, SessionUpdate::NextKeys(Box::new(k))),
                Err(_) => FromDataplane::Refused(Refusal::BadKeys),
            },
            ToDataplane::Retire { id } => self.retire(id),
            ToDataplane::Move { id, to } => match self.start_move(id, to, seq) {
                // Answered when the new owner holds it.
                None => return,
                Some(answer) => answer,
            },
            ToDataplane::RequestRekey { id } => self.update(id, SessionUpdate::RequestRekey),
            ToDataplane::ListSessions => {
                for w in &mut self.workers {
                    let _ = w.to_worker.push(ToWorker::List);
                }
                self.listing = Some((seq, self.workers.len()));
                return;
            }
            ToDataplane::Stats => FromDataplane::Stats(Stats {
                backend: self.backend,
                workers: self.workers.iter().map(|w| w.stats.read()).collect(),
                events_lost: self.events_lost,
            }),
            ToDataplane::Transmit { to, datagram } => {
                if self.backend != Backend::IoUring {
                    FromDataplane::Refused(Refusal::Unsupported)
                } else if self.workers[0]
                    .to_worker
                    .push(ToWorker::Transmit { to, datagram })
                    .is_err()
                {
                    FromDataplane::Refused(Refusal::Busy)
                } else {
                    FromDataplane::Done
                }
            }
        };
        self.send(&answer, seq);
    }

    fn install(&mut self, i: &jumping_dataplane_api::Install) -> FromDataplane {
        let owner = usize::from(i.owner);
        if owner >= self.workers.len() || i.owner != owner_of(i.id) {
            return FromDataplane::Refused(Refusal::NoSuchWorker);
        }
        if self.inner_of.contains_key(&i.id) {
            return FromDataplane::Refused(Refusal::Exists);
        }
        if self.session_of.contains_key(&i.inner) {
            return FromDataplane::Refused(Refusal::InnerInUse);
        }
        let Ok(state) = DataSession::from_install(i, self.clock.now()) else {
            return FromDataplane::Refused(Refusal::BadKeys);
        };
        if let Some(routes) = &mut self.inside_routes {
            if let Err(e) = routes.add(i.inner) {
                tracing::warn!(inner = %i.inner, error = %e, "programming the inside XDP route failed; install refused");
                return FromDataplane::Refused(Refusal::Busy);
            }
        }
        if self.workers[owner]
            .commands
            .send(Command::Install { id: i.id, state })
            .is_err()
        {
            self.remove_inside_route(i.inner);
            return FromDataplane::Refused(Refusal::Busy);
        }
        for w in &mut self.workers {
            // A full route ring means that worker is stalled; its inner packets for this
            // client are dropped as no_route until it drains. Rings are sized for bursts.
            let _ = w.to_worker.push(ToWorker::Route {
                inner: i.inner,
                id: i.id,
            });
        }
        self.inner_of.insert(i.id, i.inner);
        self.session_of.insert(i.inner, i.id);
        self.per_worker[owner] += 1;
        FromDataplane::Done
    }

    /// The worker holding `id` (or receiving it, while it moves).
    fn owner(&self, id: SessionId) -> usize {
        usize::from(self.moved.get(&id).copied().unwrap_or_else(|| owner_of(id)))
    }

    /// Send a session command to its owner, or hold it while the session moves.
    fn command(&mut self, id: SessionId, cmd: Command<DataSession, SessionUpdate>) -> bool {
        if let Some(m) = self.moving.get_mut(&id) {
            m.held.push(cmd);
            return true;
        }
        let owner = self.owner(id);
        self.workers[owner].commands.send(cmd).is_ok()
    }

    fn start_move(&mut self, id: SessionId, to: u8, seq: u32) -> Option<FromDataplane> {
        if !self.inner_of.contains_key(&id) {
            return Some(FromDataplane::Refused(Refusal::UnknownSession));
        }
        let dest = usize::from(to);
        if dest >= self.workers.len() {
            return Some(FromDataplane::Refused(Refusal::NoSuchWorker));
        }
        let from = self.owner(id);
        if from == dest {
            return Some(FromDataplane::Done);
        }
        if self.moving.contains_key(&id) || self.per_worker[dest] >= self.capacity {
            return Some(FromDataplane::Refused(Refusal::Busy));
        }
        if self.workers[from]
            .to_worker
            .push(ToWorker::Export { id, to })
            .is_err()
        {
            return Some(FromDataplane::Refused(Refusal::Busy));
        }
        self.moving.insert(
            id,
            Moving {
                seq,
                from: u8::try_from(from).unwrap_or(0),
                to,
                held: Vec::new(),
            },
        );
        // Counted at the destination now, so concurrent moves respect its room.
        self.per_worker[from] -= 1;
        self.per_worker[dest] += 1;
        None
    }

    /// A worker reported the end of a move.
    fn moved(&mut self, id: SessionId, held_by: Option<u8>) {
        let Some(m) = self.moving.remove(&id) else {
            return;
        };
        let (from, to) = (usize::from(m.from), usize::from(m.to));
        let answer = match held_by {
            Some(w) => {
                if w != m.to && self.inner_of.contains_key(&id) {
                    // Stayed where it was.
                    self.per_worker[to] = self.per_worker[to].saturating_sub(1);
                    self.per_worker[from] += 1;
                }
                self.moved.insert(id, w);
                for cmd in m.held {
                    // A full ring here is the worker stalling; the command is lost and the
                    // control process's next resync finds out.
                    let _ = self.workers[usize::from(w)].commands.send(cmd);
                }
                if !self.inner_of.contains_key(&id) {
                    // Retired while it moved (the retirement was among the held commands).
                    self.forget_moved(id);
                }
                if w == m.to {
                    FromDataplane::Done
                } else {
                    FromDataplane::Refused(Refusal::Busy)
                }
            }
            None => {
                // Gone: forget it entirely; the control process ends the session.
                tracing::warn!(session = %id, correlation_id = %observe::log::Correlation(id), "a moving session was lost; it must be ended");
                if self.inner_of.contains_key(&id) {
                    self.per_worker[to] = self.per_worker[to].saturating_sub(1);
                }
                if let Some(inner) = self.inner_of.remove(&id) {
                    self.session_of.remove(&inner);
                    for w in &mut self.workers {
                        let _ = w.to_worker.push(ToWorker::Unroute { inner });
                    }
                    self.remove_inside_route(inner);
                }
                self.forget_moved(id);
                FromDataplane::Refused(Refusal::UnknownSession)
            }
        };
        self.send(&answer, m.seq);
    }

    /// Tell every worker to forget where a moved session went.
    fn forget_moved(&mut self, id: SessionId) {
        if self.moved.remove(&id).is_some() {
            for w in &mut self.workers {
                let _ = w.to_worker.push(ToWorker::Forget { id });
            }
        }
    }

    fn update(&mut self, id: SessionId, update: SessionUpdate) -> FromDataplane {
        if !self.inner_of.contains_key(&id) {
            return FromDataplane::Refused(Refusal::UnknownSession);
        }
        if self.command(id, Command::Update { id, update }) {
            FromDataplane::Done
        } else {
            FromDataplane::Refused(Refusal::Busy)
        }
    }

    fn retire(&mut self, id: SessionId) -> FromDataplane {
        let Some(inner) = self.inner_of.get(&id).copied() else {
            return FromDataplane::Refused(Refusal::UnknownSession);
        };
        if !self.command(id, Command::Retire { id }) {
            return FromDataplane::Refused(Refusal::Busy);
        }
        let owner = self
            .moving
            .get(&id)
            .map_or_else(|| self.owner(id), |m| usize::from(m.to));
        self.per_worker[owner] = self.per_worker[owner].saturating_sub(1);
        if !self.moving.contains_key(&id) {
            self.forget_moved(id);
        }
        for w in &mut self.workers {
            let _ = w.to_worker.push(ToWorker::Unroute { inner });
        }
        self.remove_inside_route(inner);
        self.inner_of.remove(&id);
        self.session_of.remove(&inner);
        FromDataplane::Done
    }

    fn remove_inside_route(&mut self, inner: IpAddr) {
        if let Some(routes) = &mut self.inside_routes {
            if let Err(e) = routes.remove(inner) {
                tracing::warn!(%inner, error = %e, "removing the inside XDP route failed");
            }
        }
    }

    fn forward_from_workers(&mut self) {
        for i in 0..self.workers.len() {
            while let Ok(m) = self.workers[i].from_worker.pop() {
                match m {
                    FromWorker::Event(e) => self.send(&FromDataplane::Event(e), 0),
                    FromWorker::ControlDatagram {
                        from,
                        received_unix_ns,
                        datagram,
                    } => {
                        self.send(
                            &FromDataplane::ControlDatagram {
                                from,
                                received_unix_ns,
                                datagram,
                            },
                            0,
                        );
                    }
                    FromWorker::Sessions { sessions, last } => self.forward_listing(sessions, last),
                    FromWorker::Moved { id, held_by } => self.moved(id, held_by),
                }
            }
        }
    }

    fn forward_listing(&mut self, sessions: Vec<SessionSummary>, last: bool) {
        let Some((seq, left)) = self.listing else {
            return;
        };
        let left = if last { left - 1 } else { left };
        self.listing = (left > 0).then_some((seq, left));
        self.send(
            &FromDataplane::Sessions {
                sessions,
                more: left > 0,
            },
            seq,
        );
    }
}
