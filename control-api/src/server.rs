//! The server side of the control socket, embedded in the control process.
//!
//! [`Server::bind`] starts an acceptor thread and one thread per connection (at most
//! [`MAX_CONNECTIONS`]). A connection thread checks the peer's credentials, reads and validates
//! the request itself (bad input never reaches the control loop), serves `events` from the
//! server's own ring and follower queues, and hands every other request to the control loop
//! as a [`Call`]: it calls `wake`, the loop takes the call with [`Server::try_call`] and
//! answers with [`Call::reply`]; the connection waits at most [`REPLY_TIMEOUT`].
//!
//! [`Server::publish`] never blocks: each follower has a bounded queue ([`FOLLOWER_QUEUE`]);
//! when it is full the event is dropped for that follower and counted
//! ([`Server::events_dropped`]).

use std::collections::VecDeque;
use std::fmt;
use std::fs;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender, SyncSender, TrySendError};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::thread::{self, JoinHandle};
use std::time::Duration;

use nix::sys::socket::{getsockopt, recv, shutdown, sockopt::PeerCredentials, MsgFlags, Shutdown};

use crate::{
    decode_request, encode_response, parse_session_id, ApiError, ErrorCode, Payload, Request,
    EVENT_RING, MAX_REQUEST_LINE,
};

/// Most connections served at once; more are answered `unavailable` and closed.
pub const MAX_CONNECTIONS: usize = 64;
/// How long a connection waits for the control loop's answer before answering `internal`.
pub const REPLY_TIMEOUT: Duration = Duration::from_secs(5);
/// Capacity of each follower's event queue.
pub const FOLLOWER_QUEUE: usize = 1024;
/// How long a client may take to send its request line, and to take a one-line answer.
const IO_TIMEOUT: Duration = Duration::from_secs(5);
/// How often an idle follower checks whether its client went away.
const FOLLOW_POLL: Duration = Duration::from_millis(500);

/// The credentials of a connected peer (`SO_PEERCRED`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerCred {
    /// Effective user id.
    pub uid: u32,
    /// Effective group id.
    pub gid: u32,
    /// Process id (0 if the peer is in another pid namespace).
    pub pid: i32,
}

/// One request for the control loop. Dropping it without [`Call::reply`] answers `internal`.
#[derive(Debug)]
pub struct Call {
    /// The request, already validated ([`Request::validate`]). Never `events`.
    pub request: Request,
    /// Who sent it.
    pub peer: PeerCred,
    reply: SyncSender<Result<Payload, ApiError>>,
}

impl Call {
    /// Sends the answer to the waiting connection (ignored if it already gave up).
    pub fn reply(self, r: Result<Payload, ApiError>) {
        let _ = self.reply.try_send(r);
    }
}

#[derive(Debug)]
struct Filter {
    session: Option<u64>,
    event: Option<String>,
    reason: Option<String>,
}

impl Filter {
    fn matches(&self, ev: &EventRecord) -> bool {
        if self.session.is_some() && ev.session_id != self.session {
            return false;
        }
        let field_is = |got: Option<&str>, want: &Option<String>| match want {
            None => true,
            Some(w) => got == Some(w.as_str()),
        };
        field_is(Some(ev.event), &self.event) && field_is(ev.reason_code, &self.reason)
    }
}

/// One event as the control socket serves it: its JSON line (SPEC.md section 8, without the
/// newline) and the fields `events` filters on, taken from the same event.
#[derive(Debug, Clone)]
pub struct EventRecord {
    /// The JSON object, one line.
    pub line: Arc<str>,
    /// Its `session_id`.
    pub session_id: Option<u64>,
    /// Its `event` name.
    pub event: &'static str,
    /// Its `reason_code`, if it has one.
    pub reason_code: Option<&'static str>,
}

#[derive(Debug)]
struct Follower {
    filter: Filter,
    queue: SyncSender<Arc<EventRecord>>,
}

#[derive(Debug, Default)]
struct Events {
    ring: VecDeque<Arc<EventRecord>>,
    followers: Vec<Follower>,
}

struct Shared {
    path: PathBuf,
    group: Option<u32>,
    euid: u32,
    shutdown: AtomicBool,
    connections: AtomicUsize,
    calls: Mutex<Sender<Call>>,
    wake: Box<dyn Fn() + Send + Sync>,
    events: Mutex<Events>,
    events_dropped: AtomicU64,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The control socket: an acceptor thread, connection threads, the event ring and followers.
pub struct Server {
    shared: Arc<Shared>,
    calls: Mutex<Receiver<Call>>,
    acceptor: Option<JoinHandle<()>>,
    /// A handle on the listening socket, to shut it down (which wakes `accept`) on drop.
    listener: UnixListener,
    /// (device, inode) of the socket file we created, so Drop removes only our own.
    file_id: (u64, u64),
}

impl fmt::Debug for Server {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Server")
            .field("path", &self.shared.path)
            .field("group", &self.shared.group)
            .field(
                "connections",
                &self.shared.connections.load(Ordering::Relaxed),
            )
            .field("events_dropped", &self.events_dropped())
            .finish_non_exhaustive()
    }
}

impl Server {
    /// Binds `path` (removes a stale socket file; creates the parent directory 0755 if
    /// missing), mode 0660, group ownership set to `group` if `Some` (`chown(path, -1, gid)`).
    /// `wake` is called (from server threads) whenever a [`Call`] is ready.
    ///
    /// A socket file on which another process still accepts connections is not replaced
    /// (`AddrInUse`), and a path that exists but is not a socket is left alone
    /// (`AlreadyExists`).
    ///
    /// # Errors
    /// Creating the directory, binding, setting the mode or the group, starting the thread.
    pub fn bind(
        path: &Path,
        group: Option<u32>,
        wake: Box<dyn Fn() + Send + Sync>,
    ) -> io::Result<Server> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            if !dir.exists() {
                fs::DirBuilder::new()
                    .recursive(true)
                    .mode(0o755)
                    .create(dir)?;
            }
        }
        match fs::symlink_metadata(path) {
            Ok(meta) if meta.file_type().is_socket() => {
                if UnixStream::connect(path).is_ok() {
                    return Err(io::Error::new(
                        io::ErrorKind::AddrInUse,
                        format!(
                            "{}: another process is serving this control socket",
                            path.display()
                        ),
                    ));
                }
                fs::remove_file(path)?;
            }
            Ok(_) => {
                return Err(io::Error::new(
                    io::ErrorKind::AlreadyExists,
                    format!("{}: exists and is not a socket", path.display()),
                ))
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        let listener = UnixListener::bind(path)?;
        // Between bind and chmod the file has the umask's mode; peers are checked with
        // SO_PEERCRED at accept anyway, so the window admits no one.
        let setup = || -> io::Result<(u64, u64)> {
            fs::set_permissions(path, fs::Permissions::from_mode(0o660))?;
            if let Some(gid) = group {
                std::os::unix::fs::chown(path, None, Some(gid))?;
            }
            let meta = fs::symlink_metadata(path)?;
            Ok((meta.dev(), meta.ino()))
        };
        let file_id = match setup() {
            Ok(id) => id,
            Err(e) => {
                let _ = fs::remove_file(path);
                return Err(e);
            }
        };
        let (tx, rx) = mpsc::channel();
        let shared = Arc::new(Shared {
            path: path.to_path_buf(),
            group,
            euid: nix::unistd::geteuid().as_raw(),
            shutdown: AtomicBool::new(false),
            connections: AtomicUsize::new(0),
            calls: Mutex::new(tx),
            wake,
            events: Mutex::new(Events::default()),
            events_dropped: AtomicU64::new(0),
        });
        let listener_handle = match listener.try_clone() {
            Ok(l) => l,
            Err(e) => {
                let _ = fs::remove_file(path);
                return Err(e);
            }
        };
        let s = Arc::clone(&shared);
        let acceptor = thread::Builder::new()
            .name("control-accept".into())
            .spawn(move || accept_loop(&s, &listener));
        let acceptor = match acceptor {
            Ok(h) => h,
            Err(e) => {
                let _ = fs::remove_file(path);
                return Err(e);
            }
        };
        Ok(Server {
            shared,
            calls: Mutex::new(rx),
            acceptor: Some(acceptor),
            listener: listener_handle,
            file_id,
        })
    }

    /// The next request for the control loop, if one is waiting. Never blocks.
    pub fn try_call(&self) -> Option<Call> {
        lock(&self.calls).try_recv().ok()
    }

    /// Records `event` in the ring of recent events and queues it for every follower whose
    /// filter matches. Never blocks: a full follower queue drops the event for that follower
    /// (counted in [`Server::events_dropped`]).
    pub fn publish(&self, event: EventRecord) {
        let event = Arc::new(event);
        let mut ev = lock(&self.shared.events);
        if ev.ring.len() == EVENT_RING {
            ev.ring.pop_front();
        }
        ev.ring.push_back(Arc::clone(&event));
        let mut dropped = 0;
        ev.followers.retain(|f| {
            match f
                .filter
                .matches(&event)
                .then(|| f.queue.try_send(Arc::clone(&event)))
            {
                None | Some(Ok(())) => true,
                Some(Err(TrySendError::Full(_))) => {
                    dropped += 1;
                    true
                }
                Some(Err(TrySendError::Disconnected(_))) => false,
            }
        });
        drop(ev);
        if dropped > 0 {
            self.shared
                .events_dropped
                .fetch_add(dropped, Ordering::Relaxed);
        }
    }

    /// Events not delivered to a follower because its queue was full.
    pub fn events_dropped(&self) -> u64 {
        self.shared.events_dropped.load(Ordering::Relaxed)
    }

    /// The socket's path.
    pub fn path(&self) -> &Path {
        &self.shared.path
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.shared.shutdown.store(true, Ordering::SeqCst);
        // Wake the acceptor out of accept(): shutting a listening socket down makes a blocked
        // accept fail (Linux); connecting is the fallback. The acceptor sees the flag.
        if shutdown(self.listener.as_raw_fd(), Shutdown::Both).is_err() {
            let _ = UnixStream::connect(&self.shared.path);
        }
        if let Some(h) = self.acceptor.take() {
            let _ = h.join();
        }
        // Followers see their queue disconnected and end.
        lock(&self.shared.events).followers.clear();
        if let Ok(meta) = fs::symlink_metadata(&self.shared.path) {
            if (meta.dev(), meta.ino()) == self.file_id {
                let _ = fs::remove_file(&self.shared.path);
            }
        }
    }
}

fn accept_loop(shared: &Arc<Shared>, listener: &UnixListener) {
    loop {
        let stream = match listener.accept() {
            Ok((s, _)) => s,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => {
                if shared.shutdown.load(Ordering::SeqCst) {
                    return;
                }
                // EMFILE and the like: back off instead of spinning.
                thread::sleep(Duration::from_millis(50));
                continue;
            }
        };
        if shared.shutdown.load(Ordering::SeqCst) {
            return;
        }
        if shared.connections.fetch_add(1, Ordering::SeqCst) >= MAX_CONNECTIONS {
            shared.connections.fetch_sub(1, Ordering::SeqCst);
            refuse(
                stream,
                ApiError::new(
                    ErrorCode::Unavailable,
                    format!("too many control connections (limit {MAX_CONNECTIONS}); try again"),
                ),
            );
            continue;
        }
        let s = Arc::clone(shared);
        let spawned = thread::Builder::new()
            .name("control-conn".into())
            .spawn(move || {
                let _guard = ConnGuard(&s.connections);
                serve(&s, stream);
            });
        if spawned.is_err() {
            shared.connections.fetch_sub(1, Ordering::SeqCst);
        }
    }
}

struct ConnGuard<'a>(&'a AtomicUsize);

impl Drop for ConnGuard<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

fn refuse(mut stream: UnixStream, e: ApiError) {
    let _ = stream.set_write_timeout(Some(Duration::from_secs(1)));
    let _ = write_line(&mut stream, &encode_response(&Err(e)));
}

fn write_line(stream: &mut UnixStream, line: &str) -> io::Result<()> {
    let mut buf = Vec::with_capacity(line.len() + 1);
    buf.extend_from_slice(line.as_bytes());
    buf.push(b'\n');
    stream.write_all(&buf)
}

fn peer_cred(stream: &UnixStream) -> io::Result<PeerCred> {
    let c = getsockopt(&stream.as_fd(), PeerCredentials).map_err(io::Error::from)?;
    Ok(PeerCred {
        uid: c.uid(),
        gid: c.gid(),
        pid: c.pid(),
    })
}

/// The supplementary groups of `pid`, from `/proc/<pid>/status`.
fn supplementary_groups(pid: i32) -> Vec<u32> {
    if pid <= 0 {
        return Vec::new();
    }
    let Ok(status) = fs::read_to_string(format!("/proc/{pid}/status")) else {
        return Vec::new();
    };
    status
        .lines()
        .find_map(|l| l.strip_prefix("Groups:"))
        .map(|g| {
            g.split_whitespace()
                .filter_map(|n| n.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

fn permitted(shared: &Shared, peer: &PeerCred) -> bool {
    allowed(shared.euid, shared.group, peer, || {
        supplementary_groups(peer.pid)
    })
}

/// Root, our own uid, or (with a control group) a peer whose primary or supplementary group
/// it is.
fn allowed(
    euid: u32,
    group: Option<u32>,
    peer: &PeerCred,
    supplementary: impl FnOnce() -> Vec<u32>,
) -> bool {
    if peer.uid == 0 || peer.uid == euid {
        return true;
    }
    match group {
        Some(g) => peer.gid == g || supplementary().contains(&g),
        None => false,
    }
}

enum ReadLine {
    Line(Vec<u8>),
    TooLong,
    Empty,
}

fn read_request_line(stream: &UnixStream) -> io::Result<ReadLine> {
    let limit = u64::try_from(MAX_REQUEST_LINE).unwrap_or(u64::MAX) + 1;
    let mut reader = BufReader::new(stream.take(limit));
    let mut line = Vec::new();
    reader.read_until(b'\n', &mut line)?;
    if line.last() == Some(&b'\n') {
        line.pop();
        if line.last() == Some(&b'\r') {
            line.pop();
        }
    } else if line.len() > MAX_REQUEST_LINE {
        return Ok(ReadLine::TooLong);
    }
    if line.iter().all(u8::is_ascii_whitespace) {
        return Ok(ReadLine::Empty);
    }
    Ok(ReadLine::Line(line))
}

fn serve(shared: &Shared, mut stream: UnixStream) {
    let _ = stream.set_read_timeout(Some(IO_TIMEOUT));
    let _ = stream.set_write_timeout(Some(IO_TIMEOUT));
    let peer = match peer_cred(&stream) {
        Ok(p) => p,
        Err(e) => {
            refuse(
                stream,
                ApiError::new(ErrorCode::Internal, format!("SO_PEERCRED failed: {e}")),
            );
            return;
        }
    };
    if !permitted(shared, &peer) {
        let who = match shared.group {
            Some(g) => format!("root, uid {}, or members of group {g}", shared.euid),
            None => format!("root or uid {}", shared.euid),
        };
        refuse(
            stream,
            ApiError::new(
                ErrorCode::PermissionDenied,
                format!(
                    "uid {} may not use the control socket (allowed: {who})",
                    peer.uid
                ),
            ),
        );
        return;
    }
    let line = match read_request_line(&stream) {
        Ok(ReadLine::Line(l)) => l,
        Ok(ReadLine::Empty) | Err(_) => return,
        Ok(ReadLine::TooLong) => {
            refuse(
                stream,
                ApiError::new(
                    ErrorCode::BadRequest,
                    format!("request line longer than {MAX_REQUEST_LINE} bytes"),
                ),
            );
            return;
        }
    };
    let request = match decode_request(&line) {
        Ok(r) => r,
        Err(e) => return refuse(stream, e),
    };
    if let Err(e) = request.validate() {
        return refuse(stream, e.into());
    }
    if let Request::Events {
        follow,
        session,
        event,
        reason,
    } = request
    {
        let filter = Filter {
            session: session.as_deref().and_then(|s| parse_session_id(s).ok()),
            event,
            reason,
        };
        serve_events(shared, stream, filter, follow);
        return;
    }
    let (tx, rx) = mpsc::sync_channel(1);
    let call = Call {
        request,
        peer,
        reply: tx,
    };
    let answer = if lock(&shared.calls).send(call).is_err() {
        Err(ApiError::new(
            ErrorCode::Unavailable,
            "the control process is shutting down",
        ))
    } else {
        (shared.wake)();
        match rx.recv_timeout(REPLY_TIMEOUT) {
            Ok(r) => r,
            Err(RecvTimeoutError::Timeout) => Err(ApiError::new(
                ErrorCode::Internal,
                "control loop did not answer",
            )),
            Err(RecvTimeoutError::Disconnected) => Err(ApiError::new(
                ErrorCode::Internal,
                "control loop dropped the request without answering",
            )),
        }
    };
    let _ = write_line(&mut stream, &encode_response(&answer));
}

fn serve_events(shared: &Shared, mut stream: UnixStream, filter: Filter, follow: bool) {
    // Snapshot and (for followers) registration under one lock: no event is missed or
    // sent twice between the recent ones and the live ones.
    let (recent, queue) = {
        let mut ev = lock(&shared.events);
        let recent: Vec<Arc<EventRecord>> = ev
            .ring
            .iter()
            .filter(|e| filter.matches(e))
            .cloned()
            .collect();
        let queue = follow.then(|| {
            let (tx, rx) = mpsc::sync_channel(FOLLOWER_QUEUE);
            ev.followers.push(Follower { filter, queue: tx });
            rx
        });
        (recent, queue)
    };
    for e in &recent {
        if write_line(&mut stream, &e.line).is_err() {
            return; // dropping `queue` unregisters the follower at the next publish
        }
    }
    let Some(queue) = queue else {
        let _ = write_line(&mut stream, &encode_response(&Ok(Payload::EventsEnd)));
        return;
    };
    // A follower may pause reading (e.g. a pager); publish never waits for it anyway.
    let _ = stream.set_write_timeout(None);
    loop {
        match queue.recv_timeout(FOLLOW_POLL) {
            Ok(e) => {
                if write_line(&mut stream, &e.line).is_err() {
                    return;
                }
            }
            Err(RecvTimeoutError::Timeout) => {
                if peer_gone(&stream) || shared.shutdown.load(Ordering::Relaxed) {
                    return;
                }
            }
            Err(RecvTimeoutError::Disconnected) => return,
        }
    }
}

/// Whether the client closed its end (EOF or error); anything it sent is discarded.
fn peer_gone(stream: &UnixStream) -> bool {
    let mut buf = [0u8; 512];
    loop {
        match recv(stream.as_raw_fd(), &mut buf, MsgFlags::MSG_DONTWAIT) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(nix::errno::Errno::EAGAIN) => return false,
            Err(nix::errno::Errno::EINTR) => continue,
            Err(_) => return true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(uid: u32, gid: u32) -> PeerCred {
        PeerCred { uid, gid, pid: 1 }
    }

    #[test]
    fn who_may_connect() {
        let none = Vec::new;
        assert!(allowed(1000, None, &peer(0, 0), none));
        assert!(allowed(1000, None, &peer(1000, 5), none));
        assert!(!allowed(1000, None, &peer(1001, 5), || vec![5, 77]));
        assert!(!allowed(1000, Some(77), &peer(1001, 5), none));
        assert!(allowed(1000, Some(77), &peer(1001, 77), none));
        assert!(allowed(1000, Some(77), &peer(1001, 5), || vec![4, 77]));
        assert!(!allowed(1000, Some(77), &peer(1001, 5), || vec![4, 78]));
    }

    #[test]
    fn supplementary_groups_of_this_process() {
        let pid = i32::try_from(std::process::id()).unwrap();
        let mut ours: Vec<u32> = nix::unistd::getgroups()
            .unwrap()
            .into_iter()
            .map(nix::unistd::Gid::as_raw)
            .collect();
        ours.sort_unstable();
        ours.dedup();
        let mut read = supplementary_groups(pid);
        read.sort_unstable();
        read.dedup();
        assert_eq!(read, ours);
        assert!(supplementary_groups(0).is_empty());
    }
}
