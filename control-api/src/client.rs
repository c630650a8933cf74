//! A blocking client of the control socket, used by `jumpctl` and tests.

use std::io::{self, BufRead, BufReader, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::thread;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::socket::{connect, socket, AddressFamily, SockFlag, SockType, UnixAddr};
use serde_json::Value;

use crate::{decode_response, encode_request, ApiError, Payload, Request, MAX_REQUEST_LINE};

/// Connect and I/O timeout of [`call`] (and of [`follow`] until the first line).
pub const TIMEOUT: Duration = Duration::from_secs(5);

/// The control socket could not be used (as opposed to an error answer from the server).
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Connecting failed: no socket, nobody listening, no permission, timeout.
    #[error("cannot connect to {}: {source}", path.display())]
    Connect {
        /// The socket path.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// Sending the request or reading the answer failed (including timeouts).
    #[error("control socket I/O: {0}")]
    Io(#[from] io::Error),
    /// The server's answer was not a response of this protocol version.
    #[error("control socket protocol: {0}")]
    Protocol(String),
}

fn connect_with_timeout(path: &Path, timeout: Duration) -> Result<UnixStream, ClientError> {
    let err = |source: io::Error| ClientError::Connect {
        path: path.to_path_buf(),
        source,
    };
    let addr = UnixAddr::new(path).map_err(|e| err(e.into()))?;
    let fd: OwnedFd = socket(
        AddressFamily::Unix,
        SockType::Stream,
        SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
        None,
    )
    .map_err(|e| err(e.into()))?;
    let deadline = Instant::now() + timeout;
    loop {
        match connect(fd.as_raw_fd(), &addr) {
            Ok(()) => break,
            Err(Errno::EINTR) => {}
            // A Unix socket connect only waits when the listener's backlog is full.
            Err(Errno::EAGAIN) | Err(Errno::EINPROGRESS) => {
                if Instant::now() >= deadline {
                    return Err(err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "the control process is not accepting connections (backlog full)",
                    )));
                }
                thread::sleep(Duration::from_millis(10));
            }
            Err(e) => return Err(err(e.into())),
        }
    }
    let stream = UnixStream::from(fd);
    stream.set_nonblocking(false).map_err(err)?;
    Ok(stream)
}

fn send(socket: &Path, req: &Request) -> Result<UnixStream, ClientError> {
    let mut stream = connect_with_timeout(socket, TIMEOUT)?;
    stream.set_read_timeout(Some(TIMEOUT))?;
    stream.set_write_timeout(Some(TIMEOUT))?;
    let mut line = encode_request(req);
    if line.len() > MAX_REQUEST_LINE {
        return Err(ClientError::Protocol(format!(
            "request longer than {MAX_REQUEST_LINE} bytes"
        )));
    }
    line.push('\n');
    stream.write_all(line.as_bytes())?;
    Ok(stream)
}

/// Sends `req` and returns the server's answer: `Ok(Ok(payload))`, `Ok(Err(api_error))`
/// for an error response, or `Err` if the socket could not be used. Every step has a
/// [`TIMEOUT`]. For `events` (which should not follow here) the events are discarded and
/// the final `events_end` is returned; use [`follow`] to see them.
///
/// # Errors
/// [`ClientError`] if connecting, writing or reading fails or the answer is malformed.
pub fn call(socket: &Path, req: &Request) -> Result<Result<Payload, ApiError>, ClientError> {
    exchange(socket, req, |_| true)
}

/// Sends `req` (normally `events`) and passes each streamed event to `on_line` until it
/// returns `false` (then the connection is closed and `Ok(Ok(()))` returned), the server ends
/// the stream (`events_end`), or the server answers an error (`Ok(Err(..))`). With
/// `follow: true` there is no read timeout: events may be rare.
///
/// # Errors
/// [`ClientError`] if connecting, writing or reading fails, a line is not JSON, or the server
/// closes the connection without ending the stream.
pub fn follow(
    socket: &Path,
    req: &Request,
    on_line: impl FnMut(Value) -> bool,
) -> Result<Result<(), ApiError>, ClientError> {
    Ok(exchange(socket, req, on_line)?.map(drop))
}

fn is_envelope(v: &Value) -> bool {
    v.get("v").is_some()
        && (v.get("ok").is_some() || v.get("error").is_some())
        && v.get("event").is_none()
}

fn exchange(
    socket: &Path,
    req: &Request,
    mut on_line: impl FnMut(Value) -> bool,
) -> Result<Result<Payload, ApiError>, ClientError> {
    let stream = send(socket, req)?;
    if matches!(req, Request::Events { follow: true, .. }) {
        stream.set_read_timeout(None)?;
    }
    let mut reader = BufReader::new(stream);
    let mut line = Vec::new();
    loop {
        line.clear();
        if reader.read_until(b'\n', &mut line)? == 0 {
            return Err(ClientError::Protocol(
                "the control process closed the connection without an answer".into(),
            ));
        }
        let value: Value = serde_json::from_slice(&line)
            .map_err(|e| ClientError::Protocol(format!("line is not JSON: {e}")))?;
        if is_envelope(&value) {
            return decode_response(&line).map_err(ClientError::Protocol);
        }
        if !on_line(value) {
            return Ok(Ok(Payload::EventsEnd));
        }
    }
}
