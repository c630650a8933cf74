//! The status socket: one JSON line in (`{"cmd":"status"}` or `{"cmd":"switch","path":N}`), one
//! JSON line out (the status object, a switch answer, or `{"error": "..."}`).

use std::collections::BTreeMap;
use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Longest request line accepted.
pub const MAX_REQUEST: usize = 1024;

/// A request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    /// The status object.
    Status,
    /// Switch to a path now.
    Switch {
        /// Path index.
        path: u32,
    },
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRequest {
    cmd: String,
    path: Option<u32>,
}

const EXPECTED: &str = r#"expected {"cmd":"status"} or {"cmd":"switch","path":N}"#;

/// Parse one request line.
///
/// # Errors
/// A message for the `error` answer.
pub fn parse_request(line: &[u8]) -> Result<Request, String> {
    if line.len() > MAX_REQUEST {
        return Err(format!(
            "request longer than {MAX_REQUEST} bytes; {EXPECTED}"
        ));
    }
    let raw: RawRequest =
        serde_json::from_slice(line).map_err(|e| format!("bad request ({e}); {EXPECTED}"))?;
    match (raw.cmd.as_str(), raw.path) {
        ("status", None) => Ok(Request::Status),
        ("status", Some(_)) => Err(format!("status takes no path; {EXPECTED}")),
        ("switch", Some(path)) => Ok(Request::Switch { path }),
        ("switch", None) => Err(format!("switch needs a path index; {EXPECTED}")),
        (other, _) => Err(format!(
            "unknown cmd `{}`; {EXPECTED}",
            other.escape_debug().take(32).collect::<String>()
        )),
    }
}

/// An error answer line.
#[must_use]
pub fn error_line(msg: &str) -> String {
    serde_json::json!({ "error": msg }).to_string()
}

/// One path in the status.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct PathStatus {
    /// Index (LocalPath).
    pub index: usize,
    /// The --path SPEC.
    pub spec: String,
    /// Bound local address, if the socket is bound.
    pub local_addr: Option<String>,
    /// Usable.
    pub up: bool,
    /// Whether it is the active path.
    pub active: bool,
    /// Last RTT measured while it was active.
    pub rtt_ms: Option<f64>,
    /// Datagrams sent.
    pub tx_packets: u64,
    /// Bytes sent.
    pub tx_bytes: u64,
    /// Datagrams received (from the gateway).
    pub rx_packets: u64,
    /// Bytes received.
    pub rx_bytes: u64,
    /// Last send or bind error, if it is down.
    pub error: Option<String>,
}

/// Counters.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Counters {
    /// Packets read from the TUN.
    pub tun_rx: u64,
    /// Packets written to the TUN.
    pub tun_tx: u64,
    /// Datagrams sent to the gateway.
    pub sent: u64,
    /// Datagrams received from the gateway.
    pub received: u64,
    /// Drops by reason.
    pub dropped: BTreeMap<String, u64>,
}

impl Counters {
    /// Count a drop.
    pub fn drop(&mut self, reason: &str) {
        if let Some(n) = self.dropped.get_mut(reason) {
            *n += 1;
        } else {
            self.dropped.insert(reason.to_owned(), 1);
        }
    }
}

/// The status object.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Status {
    /// Client view of the session state (SCREAMING_CASE).
    pub state: String,
    /// 16 hex digits.
    pub session_id: Option<String>,
    /// Gateway state version last acknowledged.
    pub gateway_version: Option<u64>,
    /// Key epoch.
    pub key_epoch: Option<u32>,
    /// Last RTT.
    pub rtt_ms: Option<f64>,
    /// Active path index.
    pub current_path: Option<u32>,
    /// A switch in progress (target index).
    pub switching_to: Option<usize>,
    /// Every path.
    pub paths: Vec<PathStatus>,
    /// Counters.
    pub counters: Counters,
    /// Since start.
    pub uptime_ms: u64,
}

/// Ask the client behind `socket` and return its answer line.
///
/// # Errors
/// A message saying no client runs, or what failed.
pub fn query(socket: &Path, request: &str) -> Result<String, String> {
    let mut s = UnixStream::connect(socket).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused => format!(
            "no jumping-client is running for this status socket ({}: {e}); start one, or pass --tun/--status-socket of the running client",
            socket.display()
        ),
        _ => format!("cannot connect to {}: {e}", socket.display()),
    })?;
    let timeout = Some(Duration::from_secs(5));
    s.set_read_timeout(timeout)
        .and_then(|()| s.set_write_timeout(timeout))
        .map_err(|e| format!("status socket: {e}"))?;
    s.write_all(format!("{request}\n").as_bytes())
        .map_err(|e| format!("cannot send the request to {}: {e}", socket.display()))?;
    let mut line = String::new();
    BufReader::new(s)
        .take(1 << 20)
        .read_line(&mut line)
        .map_err(|e| format!("no answer from {}: {e}", socket.display()))?;
    if line.trim().is_empty() {
        return Err(format!("empty answer from {}", socket.display()));
    }
    Ok(line.trim_end().to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests() {
        assert_eq!(parse_request(br#"{"cmd":"status"}"#), Ok(Request::Status));
        assert_eq!(
            parse_request(br#" {"cmd":"switch","path":2} "#),
            Ok(Request::Switch { path: 2 })
        );
        for bad in [
            &br#"{"cmd":"reboot"}"#[..],
            br#"{"cmd":"switch"}"#,
            br#"{"cmd":"switch","path":-1}"#,
            br#"{"cmd":"switch","path":"1"}"#,
            br#"{"cmd":"status","extra":1}"#,
            br#"{}"#,
            br#"{"cmd":"status","path":1}"#,
            b"status",
            b"",
        ] {
            let e = parse_request(bad).expect_err(&String::from_utf8_lossy(bad));
            assert!(e.contains("expected"), "{e}");
        }
        assert!(parse_request(&vec![b' '; MAX_REQUEST + 1]).is_err());
        let v: serde_json::Value = serde_json::from_str(&error_line("x \"y\"")).expect("json");
        assert_eq!(v["error"], "x \"y\"");
    }

    #[test]
    fn drops_are_counted_by_reason() {
        let mut c = Counters::default();
        c.drop("replay");
        c.drop("replay");
        c.drop("auth_failed");
        assert_eq!(c.dropped.get("replay"), Some(&2));
        let v = serde_json::to_value(&c).expect("json");
        assert_eq!(v["dropped"]["auth_failed"], 1);
    }
}
