//! The control process's connection to the data plane (`jumping-dataplane-api` over the data
//! plane's Unix socket, u32 length-prefixed messages).
//!
//! A reader thread takes every message off the socket and queues it. Requests whose answer
//! the event loop needs (hello, listings, stats) are written and waited for; commands
//! (install, path, transmit, retire...) are *posted*: written without waiting, their answers
//! collected later in [`Dataplane::answers`]. The data plane handles messages in order, so
//! posting keeps their effects ordered; waiting for each one capped the control process at a
//! few hundred reattaches a second (three round trips to another process each). Posted
//! commands are also written together: they wait in a buffer until [`Dataplane::send_posted`],
//! a wait for an answer, or a request writes them, one write for the batch. The reader takes
//! messages through a buffer and wakes the event loop once for all that arrive before the loop
//! next looks ([`Dataplane::poll`]), not once per message.

use std::collections::VecDeque;
use std::io::{BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::Arc;
use std::time::Duration;

use jumping_dataplane_api::{
    frame_into, zeroize_message, Backend, FromDataplane, Refusal, SessionSummary, Stats,
    ToDataplane, MAX_MESSAGE,
};
use zeroize::Zeroize;

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
    /// Posted commands not written yet (framed; zeroed once written: installs carry keys).
    unwritten: Vec<u8>,
    /// Set by the reader when it wakes the event loop, cleared by [`Dataplane::poll`].
    woken: Arc<AtomicBool>,
    seq: u32,
    /// Workers running.
    pub workers: u8,
    /// Their backend.
    pub backend: Backend,
    /// Sessions held at connection time.
    pub sessions_at_hello: u32,
    lost: bool,
}

/// What the reader buffers from the socket at once.
const READ_BUFFER: usize = 64 << 10;

fn read_message(s: &mut impl Read) -> std::io::Result<Vec<u8>> {
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
        let mut reader = BufReader::with_capacity(
            READ_BUFFER,
            stream
                .try_clone()
                .map_err(|e| DpError::Lost(e.to_string()))?,
        );
        let (tx, rx) = mpsc::channel();
        let woken = Arc::new(AtomicBool::new(false));
        let reader_woken = Arc::clone(&woken);
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
                // Queued before the flag is read: a loop that cleared the flag after this
                // swap drains the message; one that cleared it before gets a wake-up.
                if !reader_woken.swap(true, Ordering::AcqRel) {
                    wake();
                }
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
            unwritten: Vec::new(),
            woken,
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

    /// Frame `msg` after the posted commands not written yet; returns its sequence number.
    fn queue(&mut self, msg: &ToDataplane) -> Result<u32, DpError> {
        if self.lost {
            return Err(DpError::Lost("connection lost".into()));
        }
        self.seq = self.seq.wrapping_add(1).max(1);
        let bytes = msg.encode(self.seq);
        if self.unwritten.capacity() - self.unwritten.len() < 4 + bytes.len() {
            // Growing would leave the old allocation's bytes behind unzeroed.
            let mut grown = Vec::with_capacity((self.unwritten.len() + 4 + bytes.len()) * 2);
            grown.extend_from_slice(&self.unwritten);
            std::mem::replace(&mut self.unwritten, grown).zeroize();
        }
        let framed = frame_into(&mut self.unwritten, &bytes);
        zeroize_message(bytes);
        framed.map_err(|_| DpError::Unexpected("size"))?;
        Ok(self.seq)
    }

    /// Write the posted commands not written yet, in one write.
    ///
    /// # Errors
    /// The connection is lost.
    pub fn send_posted(&mut self) -> Result<(), DpError> {
        if self.unwritten.is_empty() {
            return Ok(());
        }
        let r = self.stream.write_all(&self.unwritten);
        // Zeroed and emptied; the allocation is kept for the next turn.
        self.unwritten.zeroize();
        if let Err(e) = r {
            self.lost = true;
            return Err(DpError::Lost(e.to_string()));
        }
        Ok(())
    }

    /// Send `msg` now, after any posted commands not written yet.
    fn send(&mut self, msg: &ToDataplane) -> Result<u32, DpError> {
        let seq = self.queue(msg)?;
        self.send_posted()?;
        Ok(seq)
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

    /// Post a command: it is written with the next [`Dataplane::send_posted`], wait or
    /// request, and its answer arrives later in [`Dataplane::answers`] under the returned
    /// sequence number.
    ///
    /// # Errors
    /// The connection is lost.
    pub fn post(&mut self, msg: &ToDataplane) -> Result<u32, DpError> {
        let seq = self.queue(msg)?;
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
        self.send_posted()?;
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
        // Cleared before draining: a message queued after this gets a wake-up.
        // (An acquire: what the reader queued before its swap is seen by the drain.)
        let _ = self.woken.swap(false, Ordering::AcqRel);
        while let Ok(Some((_, m))) = self.next(Duration::ZERO) {
            self.unsolicited.push_back(m);
        }
    }
}

impl Drop for Dataplane {
    fn drop(&mut self) {
        self.unwritten.zeroize();
        let _ = self.stream.shutdown(std::net::Shutdown::Both);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use jumping_dataplane_api::Event;
    use jumping_protocol::{Path, SessionId};
    use std::os::unix::net::UnixListener;
    use std::sync::atomic::AtomicUsize;

    fn frame(msg: &FromDataplane, seq: u32) -> Vec<u8> {
        let mut f = Vec::new();
        frame_into(&mut f, &msg.encode(seq)).unwrap();
        f
    }

    /// A connected pair: our `Dataplane` and the data plane's end of the socket, after hello.
    fn connected(tag: &str, wakes: &Arc<AtomicUsize>) -> (Dataplane, UnixStream) {
        let dir = std::env::temp_dir().join(format!("jumping-dp-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("dp.sock");
        let listener = UnixListener::bind(&path).unwrap();
        let server = std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            let hello = read_message(&mut s).unwrap();
            let (h, m) = ToDataplane::decode(&hello).unwrap();
            assert!(matches!(m, ToDataplane::Hello));
            let ack = FromDataplane::HelloAck {
                workers: 1,
                backend: Backend::AfXdp,
                sessions: 0,
            };
            s.write_all(&frame(&ack, h.seq)).unwrap();
            s
        });
        let w = Arc::clone(wakes);
        let dp = Dataplane::connect(
            &path,
            Box::new(move || {
                w.fetch_add(1, Ordering::SeqCst);
            }),
        )
        .unwrap();
        let s = server.join().unwrap();
        let _ = std::fs::remove_dir_all(&dir);
        (dp, s)
    }

    fn new_path(i: u64) -> FromDataplane {
        FromDataplane::Event(Event::NewPath {
            id: SessionId(i),
            path: Path::udp(format!("192.0.2.1:{}", 1000 + i).parse().unwrap()),
        })
    }

    fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
        let start = std::time::Instant::now();
        while !f() {
            assert!(start.elapsed() < Duration::from_secs(5), "{what}");
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    #[test]
    fn the_loop_is_woken_once_for_the_messages_that_arrive_before_it_looks() {
        let wakes = Arc::new(AtomicUsize::new(0));
        let (mut dp, mut s) = connected("wake", &wakes);
        dp.poll(); // the loop looks: the next message wakes it
        let base = wakes.load(Ordering::SeqCst);
        let burst: Vec<u8> = (1..=100).flat_map(|i| frame(&new_path(i), 0)).collect();
        s.write_all(&burst).unwrap();
        wait_until("a wake-up", || wakes.load(Ordering::SeqCst) > base);
        std::thread::sleep(Duration::from_millis(50)); // the reader takes the rest
                                                       // Until the loop looks again, however many messages arrive: one wake-up.
        assert_eq!(wakes.load(Ordering::SeqCst), base + 1);
        let mut got = Vec::new();
        wait_until("100 messages", || {
            dp.poll();
            got.extend(dp.unsolicited.drain(..));
            got.len() == 100
        });
        assert!(matches!(
            got[99],
            FromDataplane::Event(Event::NewPath {
                id: SessionId(100),
                ..
            })
        ));
        // Once the loop has looked, the next message wakes it again.
        let before = wakes.load(Ordering::SeqCst);
        s.write_all(&frame(&new_path(101), 0)).unwrap();
        wait_until("a wake-up for the next message", || {
            wakes.load(Ordering::SeqCst) > before
        });
        dp.poll();
        assert_eq!(dp.unsolicited.len(), 1);
    }

    #[test]
    fn posted_commands_are_written_together_in_order_and_settled() {
        let wakes = Arc::new(AtomicUsize::new(0));
        let (mut dp, mut s) = connected("post", &wakes);
        let seqs: Vec<u32> = (1..=3)
            .map(|i| dp.post(&ToDataplane::Retire { id: SessionId(i) }).unwrap())
            .collect();
        // Nothing is written before the batch is sent.
        s.set_nonblocking(true).unwrap();
        let mut probe = [0u8; 1];
        assert!(matches!(
            s.read(&mut probe),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock
        ));
        s.set_nonblocking(false).unwrap();
        let answer = std::thread::spawn(move || {
            for (i, seq) in seqs.iter().enumerate() {
                let m = read_message(&mut s).unwrap();
                let (h, cmd) = ToDataplane::decode(&m).unwrap();
                assert_eq!(h.seq, *seq);
                assert!(matches!(cmd, ToDataplane::Retire { id } if id == SessionId(i as u64 + 1)));
            }
            for seq in seqs {
                s.write_all(&frame(&FromDataplane::Done, seq)).unwrap();
            }
            s
        });
        dp.settle(Duration::from_secs(5)).unwrap();
        assert_eq!(dp.answers.len(), 3);
        drop(answer.join().unwrap());
    }
}
