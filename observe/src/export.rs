//! The SIEM export: every event line to a file with rotation and to syslog receivers (RFC 5424
//! over UDP, and over TCP with octet-counting framing, RFC 6587 section 3.4.1), as Splunk,
//! Elastic and Wazuh ingest it.
//!
//! [`Exporter::push`] runs on the decision path and never waits: each sink has its own bounded
//! queue and thread; a full queue drops the event and counts it ([`SinkStats::dropped`]). A
//! slow or stalled TCP receiver makes its writes time out; the connection is then dropped (a
//! half-written frame would break the framing) and re-established with backoff, while new
//! events wait in the queue or, once it is full, are dropped and counted. The file and UDP
//! sinks rest [`SINK_REST`] after each write, so that a burst is written in a few large
//! writes rather than woken for line by line.

use std::fs::OpenOptions;
use std::io::Write;
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use file_rotate::compression::Compression;
use file_rotate::suffix::AppendCount;
use file_rotate::{ContentLimit, FileRotate};
use serde_json::Value;

/// Private Enterprise Number used in the structured-data id. 32473 is the number RFC 5612
/// reserves for documentation; an operator with their own PEN can keep this, SIEMs match on
/// the SD-ID string.
pub const SD_ID: &str = "jumping@32473";

/// How long one TCP write may wait for a receiver before the connection is given up.
pub const TCP_WRITE_TIMEOUT: Duration = Duration::from_secs(2);

/// Longest wait between two reconnection attempts.
pub const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// Syslog transport.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// One message per datagram.
    Udp,
    /// Octet-counting framing: `LEN SP MSG`.
    Tcp,
}

/// One syslog receiver.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyslogTarget {
    /// Receiver.
    pub addr: SocketAddr,
    /// Transport.
    pub transport: Transport,
}

/// The file sink.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileTarget {
    /// The live file; rotated files are `path.1` (newest) … `path.N`.
    pub path: PathBuf,
    /// Rotate once the file has grown past this many bytes.
    pub max_bytes: u64,
    /// Rotated files kept.
    pub keep: usize,
}

/// What to export, and how.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportConfig {
    /// Events as JSON lines to a rotated file.
    pub file: Option<FileTarget>,
    /// Syslog receivers.
    pub syslog: Vec<SyslogTarget>,
    /// Queue length per sink (events).
    pub queue: usize,
    /// Syslog facility code (0–23; `local0` is 16).
    pub facility: u8,
    /// APP-NAME in syslog headers.
    pub app_name: String,
    /// HOSTNAME in syslog headers.
    pub hostname: String,
}

impl ExportConfig {
    /// No sink.
    #[must_use]
    pub fn none() -> Self {
        ExportConfig {
            file: None,
            syslog: Vec::new(),
            queue: 4096,
            facility: 16,
            app_name: "jumping".into(),
            hostname: local_hostname(),
        }
    }
}

/// The facility code of a name (`kern`, `user`, … `local7`).
#[must_use]
pub fn facility_code(name: &str) -> Option<u8> {
    const NAMES: [&str; 24] = [
        "kern",
        "user",
        "mail",
        "daemon",
        "auth",
        "syslog",
        "lpr",
        "news",
        "uucp",
        "cron",
        "authpriv",
        "ftp",
        "ntp",
        "security",
        "console",
        "solaris-cron",
        "local0",
        "local1",
        "local2",
        "local3",
        "local4",
        "local5",
        "local6",
        "local7",
    ];
    NAMES
        .iter()
        .position(|n| *n == name)
        .and_then(|i| u8::try_from(i).ok())
}

/// This host's name (`-`, the RFC 5424 NILVALUE, if unknown).
#[must_use]
pub fn local_hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .ok()
        .filter(|s| !s.is_empty() && s.is_ascii() && !s.contains(' '))
        .unwrap_or_else(|| "-".into())
}

/// Counters of one sink.
#[derive(Debug, Default)]
pub struct SinkStats {
    /// Events written or sent.
    pub sent: AtomicU64,
    /// Events dropped: queue full, or lost with a failed write or connection.
    pub dropped: AtomicU64,
    /// Write, send or connect failures.
    pub errors: AtomicU64,
    /// A TCP sink is connected (always true for the others once open).
    pub connected: AtomicBool,
}

/// A snapshot of one sink's counters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SinkSnapshot {
    /// `file`, `syslog_udp` or `syslog_tcp`.
    pub kind: &'static str,
    /// The file or receiver.
    pub target: String,
    /// See [`SinkStats`].
    pub sent: u64,
    /// See [`SinkStats`].
    pub dropped: u64,
    /// See [`SinkStats`].
    pub errors: u64,
    /// See [`SinkStats`].
    pub connected: bool,
}

struct Sink {
    kind: &'static str,
    target: String,
    tx: Option<SyncSender<Arc<str>>>,
    stats: Arc<SinkStats>,
    thread: Option<JoinHandle<()>>,
}

/// The running export: one queue and thread per sink.
pub struct Exporter {
    sinks: Vec<Sink>,
    stop: Arc<AtomicBool>,
}

impl std::fmt::Debug for Exporter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Exporter")
            .field("sinks", &self.snapshot())
            .finish_non_exhaustive()
    }
}

/// Why an export could not start.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    /// The export file cannot be opened for appending.
    #[error("export file {path}: {source}")]
    File {
        /// File.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
    /// A thread could not be started.
    #[error("cannot start the export thread: {0}")]
    Thread(std::io::Error),
}

impl Exporter {
    /// Start every configured sink. A file that cannot be opened is refused here (start-up),
    /// a syslog receiver that is down is not: it is retried, and its events counted as dropped.
    ///
    /// # Errors
    /// See [`ExportError`].
    pub fn start(cfg: &ExportConfig) -> Result<Exporter, ExportError> {
        let stop = Arc::new(AtomicBool::new(false));
        let mut sinks = Vec::new();
        let header = Arc::new(Header {
            facility: cfg.facility,
            app_name: cfg.app_name.clone(),
            hostname: cfg.hostname.clone(),
            procid: std::process::id().to_string(),
        });
        if let Some(f) = &cfg.file {
            let out = open_file(f)?;
            // A batch is at most an eighth of the rotation size: a file passes its limit by
            // little more than that.
            let batch = usize::try_from(f.max_bytes / 8)
                .unwrap_or(usize::MAX)
                .min(FILE_BATCH_BYTES);
            sinks.push(spawn_sink(
                "file",
                f.path.display().to_string(),
                cfg.queue,
                &stop,
                move |rx, stats, _stop| run_file(out, batch, &rx, &stats),
            )?);
        }
        for t in &cfg.syslog {
            let (addr, header) = (t.addr, Arc::clone(&header));
            let s = match t.transport {
                Transport::Udp => spawn_sink(
                    "syslog_udp",
                    addr.to_string(),
                    cfg.queue,
                    &stop,
                    move |rx, stats, _stop| run_udp(addr, &header, &rx, &stats),
                )?,
                Transport::Tcp => spawn_sink(
                    "syslog_tcp",
                    addr.to_string(),
                    cfg.queue,
                    &stop,
                    move |rx, stats, stop| run_tcp(addr, &header, &rx, &stats, &stop),
                )?,
            };
            sinks.push(s);
        }
        Ok(Exporter { sinks, stop })
    }

    /// Whether any sink is configured.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.sinks.is_empty()
    }

    /// Hand `event` to every sink (serialising it; see [`Exporter::push_line`]).
    pub fn push(&self, event: &Value) {
        if !self.sinks.is_empty() {
            self.push_line(&Arc::from(event.to_string()));
        }
    }

    /// Hand an event already written as its JSON line to every sink. Never blocks: a full
    /// queue drops the event for that sink and counts it. The line is shared, not copied.
    pub fn push_line(&self, line: &Arc<str>) {
        for s in &self.sinks {
            let Some(tx) = &s.tx else { continue };
            match tx.try_send(Arc::clone(line)) {
                Ok(()) => {}
                Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                    s.stats.dropped.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    }

    /// Every sink's counters.
    #[must_use]
    pub fn snapshot(&self) -> Vec<SinkSnapshot> {
        self.sinks
            .iter()
            .map(|s| SinkSnapshot {
                kind: s.kind,
                target: s.target.clone(),
                sent: s.stats.sent.load(Ordering::Relaxed),
                dropped: s.stats.dropped.load(Ordering::Relaxed),
                errors: s.stats.errors.load(Ordering::Relaxed),
                connected: s.stats.connected.load(Ordering::Relaxed),
            })
            .collect()
    }
}

impl Drop for Exporter {
    /// Write what is queued (a stalled receiver gets at most one write timeout), then stop.
    fn drop(&mut self) {
        for s in &mut self.sinks {
            s.tx = None;
        }
        self.stop.store(true, Ordering::Relaxed);
        for s in &mut self.sinks {
            if let Some(t) = s.thread.take() {
                let _ = t.join();
            }
        }
    }
}

fn spawn_sink(
    kind: &'static str,
    target: String,
    queue: usize,
    stop: &Arc<AtomicBool>,
    run: impl FnOnce(Receiver<Arc<str>>, Arc<SinkStats>, Arc<AtomicBool>) + Send + 'static,
) -> Result<Sink, ExportError> {
    let (tx, rx) = sync_channel(queue.max(1));
    let stats = Arc::new(SinkStats::default());
    let thread = {
        let (stats, stop) = (Arc::clone(&stats), Arc::clone(stop));
        std::thread::Builder::new()
            .name(format!("export-{kind}"))
            .spawn(move || run(rx, stats, stop))
            .map_err(ExportError::Thread)?
    };
    Ok(Sink {
        kind,
        target,
        tx: Some(tx),
        stats,
        thread: Some(thread),
    })
}

fn open_file(f: &FileTarget) -> Result<FileRotate<AppendCount>, ExportError> {
    let err = |source| ExportError::File {
        path: f.path.clone(),
        source,
    };
    if let Some(dir) = f.path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(err)?;
    }
    let mut opts = OpenOptions::new();
    opts.append(true).create(true).mode(0o640);
    // Open once here so that a bad path is refused at start-up (FileRotate panics instead).
    opts.open(&f.path).map_err(err)?;
    Ok(FileRotate::new(
        &f.path,
        AppendCount::new(f.keep.max(1)),
        ContentLimit::BytesSurpassed(usize::try_from(f.max_bytes).unwrap_or(usize::MAX).max(1)),
        Compression::None,
        Some(opts),
    ))
}

fn run_file(
    mut out: FileRotate<AppendCount>,
    batch_bytes: usize,
    rx: &Receiver<Arc<str>>,
    stats: &SinkStats,
) {
    stats.connected.store(true, Ordering::Relaxed);
    let mut buf = String::new();
    while let Ok(first) = rx.recv() {
        // The lines waiting now, in one write (a mass rebind queues thousands a second, and a
        // write and a wake-up per line was 6 % of the control process). The rotation is
        // decided between writes, so never inside a line; a file may pass its limit by one
        // batch (`batch_bytes` and a line).
        buf.clear();
        let mut lines = 0u64;
        for line in with_waiting(first, rx) {
            buf.push_str(&line);
            buf.push('\n');
            lines += 1;
            if buf.len() >= batch_bytes {
                break;
            }
        }
        let ok = out.write_all(buf.as_bytes()).and_then(|()| out.flush());
        count_many(stats, ok.is_ok(), lines);
        rest();
    }
}

/// How long a sink rests after writing what was waiting, before it takes more. A sink that
/// went back to waiting at once was woken for nearly every line its producer queued (each a
/// futex wake on the decision path and a context switch: 30 000 in 6 s of a mass rebind, on
/// a machine where the control process then waited for a core); resting lets the lines of a
/// burst gather into one write. An event that comes alone is still written at once.
pub const SINK_REST: Duration = Duration::from_millis(5);

fn rest() {
    std::thread::sleep(SINK_REST);
}

/// `first`, then the lines already waiting behind it (without waiting for more).
fn with_waiting(first: Arc<str>, rx: &Receiver<Arc<str>>) -> impl Iterator<Item = Arc<str>> + '_ {
    std::iter::once(first).chain(std::iter::from_fn(|| rx.try_recv().ok()))
}

/// Most bytes of event lines the file sink writes at once (less for a small rotation size).
const FILE_BATCH_BYTES: usize = 256 << 10;

fn count(stats: &SinkStats, ok: bool) {
    count_many(stats, ok, 1);
}

/// `lines` written (`ok`), or lost with one write error.
fn count_many(stats: &SinkStats, ok: bool, lines: u64) {
    if ok {
        stats.sent.fetch_add(lines, Ordering::Relaxed);
    } else {
        stats.errors.fetch_add(1, Ordering::Relaxed);
        stats.dropped.fetch_add(lines, Ordering::Relaxed);
    }
}

/// The fixed parts of a syslog header.
#[derive(Debug)]
struct Header {
    facility: u8,
    app_name: String,
    hostname: String,
    procid: String,
}

/// RFC 5424 severity of an event: security-relevant ones are warnings, rejections and
/// terminations notices, the rest informational.
fn severity(event: &str) -> u8 {
    match event {
        "SECURITY_EVENT" | "INVALID_STATE_TRANSITION" => 4,
        "REATTACH_REJECTED" | "SESSION_TERMINATED" | "POLICY_LIMIT" | "KEY_EXPIRED"
        | "REKEY_DENIED" => 5,
        _ => 6,
    }
}

/// Escape an SD-PARAM value (RFC 5424 section 6.3.3): `"`, `\` and `]`.
fn sd_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if matches!(c, '"' | '\\' | ']') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// A header field: printable US-ASCII without spaces, at most `max` characters, `-` if empty.
fn header_field(s: &str, max: usize) -> String {
    let t: String = s
        .chars()
        .filter(|c| c.is_ascii_graphic())
        .take(max)
        .collect();
    if t.is_empty() {
        "-".into()
    } else {
        t
    }
}

/// `line` (one event as JSON) as an RFC 5424 message: the event's fields that a SIEM indexes
/// on as structured data, and the whole event as the message.
fn rfc5424(h: &Header, line: &str) -> String {
    let v: Value = serde_json::from_str(line).unwrap_or(Value::Null);
    let s = |k: &str| v.get(k).and_then(Value::as_str).unwrap_or("");
    let event = s("event");
    let pri = u16::from(h.facility) * 8 + u16::from(severity(event));
    let ts = header_field(s("ts"), 32);
    let mut sd = format!("[{SD_ID}");
    for k in [
        "session_id",
        "correlation_id",
        "reason_code",
        "state_version",
        "node_id",
    ] {
        match v.get(k) {
            Some(Value::String(x)) => sd.push_str(&format!(" {k}=\"{}\"", sd_escape(x))),
            Some(Value::Number(n)) => sd.push_str(&format!(" {k}=\"{n}\"")),
            _ => {}
        }
    }
    sd.push(']');
    format!(
        "<{pri}>1 {ts} {} {} {} {} {sd} {line}",
        header_field(&h.hostname, 255),
        header_field(&h.app_name, 48),
        header_field(&h.procid, 128),
        header_field(event, 32),
    )
}

fn run_udp(addr: SocketAddr, h: &Header, rx: &Receiver<Arc<str>>, stats: &SinkStats) {
    let bind: SocketAddr = if addr.is_ipv4() {
        ([0, 0, 0, 0], 0).into()
    } else {
        (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let sock = UdpSocket::bind(bind).and_then(|s| s.connect(addr).map(|()| s));
    let sock = match sock {
        Ok(s) => {
            stats.connected.store(true, Ordering::Relaxed);
            s
        }
        Err(e) => {
            tracing::warn!(receiver = %addr, error = %e, "syslog UDP export unavailable");
            // Count what would have been sent.
            while rx.recv().is_ok() {
                count(stats, false);
            }
            return;
        }
    };
    while let Ok(first) = rx.recv() {
        for line in with_waiting(first, rx) {
            count(stats, sock.send(rfc5424(h, &line).as_bytes()).is_ok());
        }
        rest();
    }
}

/// At shutdown with no receiver: count what is still queued as dropped.
fn drop_queued(rx: &Receiver<Arc<str>>, stats: &SinkStats) {
    while rx.try_recv().is_ok() {
        stats.dropped.fetch_add(1, Ordering::Relaxed);
    }
}

fn connect_tcp(addr: SocketAddr) -> std::io::Result<TcpStream> {
    let s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    s.set_write_timeout(Some(TCP_WRITE_TIMEOUT))?;
    s.set_nodelay(true)?;
    Ok(s)
}

fn run_tcp(
    addr: SocketAddr,
    h: &Header,
    rx: &Receiver<Arc<str>>,
    stats: &SinkStats,
    stop: &AtomicBool,
) {
    let mut conn: Option<TcpStream> = None;
    let mut backoff = Duration::from_millis(250);
    let mut retry_at = Instant::now();
    loop {
        let line = match rx.recv_timeout(Duration::from_millis(200)) {
            Ok(l) => l,
            Err(RecvTimeoutError::Timeout) => continue,
            Err(RecvTimeoutError::Disconnected) => return,
        };
        // Hold the event until there is a connection; the queue absorbs what arrives meanwhile.
        while conn.is_none() {
            if stop.load(Ordering::Relaxed) {
                stats.dropped.fetch_add(1, Ordering::Relaxed);
                drop_queued(rx, stats);
                return;
            }
            let now = Instant::now();
            if now < retry_at {
                std::thread::sleep((retry_at - now).min(Duration::from_millis(100)));
                continue;
            }
            match connect_tcp(addr) {
                Ok(s) => {
                    stats.connected.store(true, Ordering::Relaxed);
                    backoff = Duration::from_millis(250);
                    conn = Some(s);
                }
                Err(_) => {
                    stats.errors.fetch_add(1, Ordering::Relaxed);
                    retry_at = Instant::now() + backoff;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
        }
        let msg = rfc5424(h, &line);
        let frame = format!("{} {msg}", msg.len());
        let ok = conn
            .as_mut()
            .is_some_and(|c| c.write_all(frame.as_bytes()).is_ok());
        count(stats, ok);
        if !ok {
            // A partial frame breaks octet counting: start a new connection.
            conn = None;
            stats.connected.store(false, Ordering::Relaxed);
            retry_at = Instant::now() + backoff;
            if stop.load(Ordering::Relaxed) {
                drop_queued(rx, stats);
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header() -> Header {
        Header {
            facility: 16,
            app_name: "jumping".into(),
            hostname: "gw1".into(),
            procid: "42".into(),
        }
    }

    #[test]
    fn rfc5424_message_parses_with_structured_data() {
        let line = r#"{"ts":"2026-11-24T03:58:19.123Z","event":"SECURITY_EVENT","session_id":"0100000000000001","correlation_id":"n0-0100000000000001","node_id":0,"state_version":null,"kind":"REPLAY","source":"10.0.0.1:4000","reason_code":"a\"]b"}"#;
        let m = rfc5424(&header(), line);
        assert!(
            m.starts_with(
                "<132>1 2026-11-24T03:58:19.123Z gw1 jumping 42 SECURITY_EVENT [jumping@32473 "
            ),
            "{m}"
        );
        assert!(m.contains(r#"reason_code="a\"\]b""#), "{m}");
        assert!(m.ends_with(line), "{m}");
        let p = syslog_loose::parse_message(&m, syslog_loose::Variant::RFC5424);
        assert_eq!(p.protocol, syslog_loose::Protocol::RFC5424(1));
        assert_eq!(p.hostname, Some("gw1"));
        assert_eq!(p.appname, Some("jumping"));
        assert_eq!(p.msgid, Some("SECURITY_EVENT"));
        assert_eq!(p.severity, Some(syslog_loose::SyslogSeverity::SEV_WARNING));
        assert_eq!(p.facility, Some(syslog_loose::SyslogFacility::LOG_LOCAL0));
        let sd = p.structured_data.first().expect("structured data");
        assert_eq!(sd.id, SD_ID);
        assert!(sd
            .params()
            .any(|(k, v)| *k == "correlation_id" && v == "n0-0100000000000001"));
        assert_eq!(p.msg, line);
    }

    #[test]
    fn facilities_by_name() {
        assert_eq!(facility_code("local0"), Some(16));
        assert_eq!(facility_code("authpriv"), Some(10));
        assert_eq!(facility_code("local9"), None);
    }
}
