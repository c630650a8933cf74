//! The control process's connection to the data plane (`jumping-dataplane-api` over the data
//! plane's Unix socket, u32 length-prefixed messages).
//!
//! A reader thread takes every message off the socket and queues it. Requests whose answer
//! the event loop needs (hello, listings, stats) are written and waited for; commands
//! (install, path, transmit, retire...) are *posted*: written without waiting, their answers
//! collected later in [`Dataplane::answers`]. The data plane handles messages in order, so
//! posting keeps their effects ordered; waiting for each one capped the control process at a
//! few hundred reattaches a second (three round trips to another process each).

use std::collections::VecDeque;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::time::Duration;

use jumping_dataplane_api::{
    zeroize_message, Backend, FromDataplane, Refusal, SessionSummary, Stats, ToDataplane,
    MAX_MESSAGE,
};

/// How long an answer may take.
pub const ANSWER_TIMEOUT: Duration = Duration::from_secs(5);

/// Why a request failed.
#[derive(Debug, thiserror::Error)]
pub enum DpError {
    /// The connection is gone.
    #[error("data plane connection lost: {0}")]
    Lost(String),
    /// The data plane refused.
    #[error("data plane refused: {0:?}")]
    Refused(Refusal),
    /// An answer of the wrong kind.
    #[error("unexpected answer {0}")]
    Unexpected(&'static str),
}

/// A connected data plane.
#[derive(Debug)]
pub struct Dataplane {
    stream: UnixStream,
    inbox: Receiver<Result<(u32, FromDataplane), String>>,
    /// Unsolicited messages (events, control datagrams) received while waiting for answers,
    /// and by [`Dataplane::poll`].
    pub unsolicited: VecDeque<FromDataplane>,
    /// Answers to posted commands ([`Dataplane::post`]), with their sequence numbers.
    pub answers: VecDeque<(u32, FromDataplane)>,
    posted: std::collections::HashSet<u32>,
    seq: u32,
    /// Workers running.
    pub workers: u8,
    /// Their backend.
    pub backend: Backend,
    /// Sessions held at connection time.
    pub sessions_at_hello: u32,
    lost: bool,
}

fn read_message(s: &mut UnixStream) -> std::io::Result<Vec<u8>> {
    let mut len = [0u8; 4];
    s.read_exact(&mut len)?;
    let len = u32::from_be_bytes(len) as usize;
    if len > MAX_MESSAGE {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "message too large",
        ));
    }
    let mut buf = vec![0u8; len];
    s.read_exact(&mut buf)?;
    Ok(buf)
}

impl Dataplane {
    /// Connect and say hello. `wake` is called by the reader thread whenever a message
    /// arrives.
    ///
    /// # Errors
    /// Connecting, or the hello failed.
    pub fn connect(path: &Path, wake: Box<dyn Fn() + Send>) -> Result<Dataplane, DpError> {
        let stream = UnixStream::connect(path).map_err(|e| DpError::Lost(e.to_string()))?;
        let mut reader = stream
            .try_clone()
            .map_err(|e| DpError::Lost(e.to_string()))?;
        let (tx, rx) = mpsc::channel();
        std::thread::Builder::new()
            .name("dataplane-rx".into())
            .spawn(move || loop {
                let msg = match read_message(&mut reader) {
                    Ok(m) => FromDataplane::decode(&m)
                        .map(|(h, m)| (h.seq, m))
                        .map_err(|e| format!("undecodable message: {e}")),
                    Err(e) => Err(e.to_string()),
                };
                let end = msg.is_err();
                if tx.send(msg).is_err() {
                    return;
                }
                wake();
                if end {
                    return;
                }
            })
            .map_err(|e| DpError::Lost(e.to_string()))?;
        let mut dp = Dataplane {
            stream,
            inbox: rx,
            unsolicited: VecDeque::new(),
            answers: VecDeque::new(),
            posted: std::collections::HashSet::new(),
            seq: 0,
            workers: 0,
            backend: Backend::AfXdp,
            sessions_at_hello: 0,
            lost: false,
        };
        match dp.request(&ToDataplane::Hello)? {
            FromDataplane::HelloAck {
                workers,
                backend,
                sessions,
            } => {
                dp.workers = workers;
                dp.backend = backend;
                dp.sessions_at_hello = sessions;
                Ok(dp)
            }
            _ => Err(DpError::Unexpected("to hello")),
        }
    }

    /// Whether the connection was lost.
    #[must_use]
    pub fn is_lost(&self) -> bool {
        self.lost
    }

    fn send(&mut self, msg: &ToDataplane) -> Result<u32, DpError> {
        self.seq = self.seq.wrapping_add(1).max(1);
        let bytes = msg.encode(self.seq);
        let len = u32::try_from(bytes.len()).map_err(|_| DpError::Unexpected("size"))?;
        let mut framed = Vec::with_capacity(4 + bytes.len());
        framed.extend_from_slice(&len.to_be_bytes());
        framed.extend_from_slice(&bytes);
        zeroize_message(bytes);
        let r = self.stream.write_all(&framed);
        zeroize_message(framed);
        if let Err(e) = r {
            self.lost = true;
            return Err(DpError::Lost(e.to_string()));
        }
        Ok(self.seq)
    }

    /// The next message that is neither an answer to a posted command (those go to
    /// [`Dataplane::answers`]) nor absent after `timeout`.
    fn next(&mut self, timeout: Duration) -> Result<Option<(u32, FromDataplane)>, DpError> {
        loop {
            match self.next_any(timeout)? {
                Some((s, m)) if s != 0 && self.posted.remove(&s) => {
                    self.answers.push_back((s, m));
                }
                other => return Ok(other),
            }
        }
    }

    fn next_any(&mut self, timeout: Duration) -> Result<Option<(u32, FromDataplane)>, DpError> {
        match self.inbox.recv_timeout(timeout) {
            Ok(Ok(m)) => Ok(Some(m)),
            Ok(Err(e)) => {
                self.lost = true;
                Err(DpError::Lost(e))
            }
            Err(RecvTimeoutError::Timeout) => Ok(None),
            Err(RecvTimeoutError::Disconnected) => {
                self.lost = true;
                Err(DpError::Lost("reader stopped".into()))
            }
        }
    }

    /// Send `msg` and wait for its (first) answer.
    ///
    /// # Errors
    /// Lost connection, timeout, or a refusal.
    pub fn request(&mut self, msg: &ToDataplane) -> Result<FromDataplane, DpError> {
        let seq = self.send(msg)?;
        loop {
            match self.next(ANSWER_TIMEOUT)? {
                None => {
                    self.lost = true;
                    return Err(DpError::Lost("no answer within 5 s".into()));
                }
                Some((0, m)) => self.unsolicited.push_back(m),
                Some((s, FromDataplane::Refused(r))) if s == seq => {
                    return Err(DpError::Refused(r))
                }
                Some((s, m)) if s == seq => return Ok(m),
                Some(_) => {}
            }
        }
    }

    /// Send a command without waiting for its answer, which arrives later in
    /// [`Dataplane::answers`] under the returned sequence number.
    ///
    /// # Errors
    /// The connection is lost.
    pub fn post(&mut self, msg: &ToDataplane) -> Result<u32, DpError> {
        let seq = self.send(msg)?;
        self.posted.insert(seq);
        Ok(seq)
    }

    /// Wait until every posted command is answered (the answers stay in
    /// [`Dataplane::answers`]): a move, for one, is answered once the new owner holds the
    /// session, after later requests may have been answered.
    ///
    /// # Errors
    /// Lost connection, or no answers within `timeout`.
    pub fn settle(&mut self, timeout: Duration) -> Result<(), DpError> {
        let deadline = std::time::Instant::now() + timeout;
        while !self.posted.is_empty() {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match self.next_any(left)? {
                Some((s, m)) if s != 0 && self.posted.remove(&s) => {
                    self.answers.push_back((s, m));
                }
                Some((0, m)) => self.unsolicited.push_back(m),
                Some(_) => {}
                None => {
                    self.lost = true;
                    return Err(DpError::Lost("posted commands unanswered".into()));
                }
            }
        }
        Ok(())
    }

    /// Send a command answered by `Done`.
    ///
    /// # Errors
    /// As [`Dataplane::request`].
    pub fn command(&mut self, msg: &ToDataplane) -> Result<(), DpError> {
        match self.request(msg)? {
            FromDataplane::Done => Ok(()),
            _ => Err(DpError::Unexpected("to a command")),
        }
    }

    /// Every session the data plane holds.
    ///
    /// # Errors
    /// As [`Dataplane::request`].
    pub fn list(&mut self) -> Result<Vec<SessionSummary>, DpError> {
        let seq = self.send(&ToDataplane::ListSessions)?;
        let mut all = Vec::new();
        loop {
            match self.next(ANSWER_TIMEOUT)? {
                None => {
                    self.lost = true;
                    return Err(DpError::Lost("no listing within 5 s".into()));
                }
                Some((0, m)) => self.unsolicited.push_back(m),
                Some((s, FromDataplane::Sessions { sessions, more })) if s == seq => {
                    all.extend(sessions);
                    if !more {
                        return Ok(all);
                    }
                }
                Some((s, FromDataplane::Refused(r))) if s == seq => {
                    return Err(DpError::Refused(r))
                }
                Some(_) => {}
            }
        }
    }

    /// Every worker's counters.
    ///
    /// # Errors
    /// As [`Dataplane::request`].
    pub fn stats(&mut self) -> Result<Stats, DpError> {
        match self.request(&ToDataplane::Stats)? {
            FromDataplane::Stats(s) => Ok(s),
            _ => Err(DpError::Unexpected("to stats")),
        }
    }

    /// Move whatever the reader thread has queued into [`Dataplane::unsolicited`].
    pub fn poll(&mut self) {
        while let Ok(Some((_, m))) = self.next(Duration::ZERO) {
            self.unsolicited.push_back(m);
        }
    }
}

impl Drop for Dataplane {
    fn drop(&mut self) {
        let _ = self.stream.shutdown(std::net::Shutdown::Both);
    }
}
