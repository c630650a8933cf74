//! The control socket of the Jumping control process: the versioned request and response
//! types spoken by `jumpctl`, the argument validation both sides share, a blocking
//! [`client`], and the socket [`server`] component the control process embeds.
//!
//! # Wire protocol (version 1)
//!
//! - Transport: a Unix stream socket, by default [`DEFAULT_SOCKET`]
//!   (`/run/jumping/control.sock`), mode 0660, group-owned by the configured control group.
//!   A peer is admitted if its uid is 0, or equals the control process's effective uid, or the
//!   control group is its primary or a supplementary group (checked with `SO_PEERCRED`);
//!   others get `permission_denied` and the connection is closed.
//! - The client writes **one** request as one JSON object on one line (terminated by `\n`, at
//!   most [`MAX_REQUEST_LINE`] bytes; a longer line is answered `bad_request` and the
//!   connection is closed). The server answers **one** JSON line and closes, except for
//!   `events`, which streams lines (see below).
//! - Every request carries `"v": 1` ([`VERSION`]) and a `"cmd"` naming the command, with the
//!   command's arguments as sibling fields:
//!
//!   ```text
//!   {"v":1,"cmd":"status"}
//!   {"v":1,"cmd":"sessions"}
//!   {"v":1,"cmd":"session_show","id":"0123456789abcdef"}
//!   {"v":1,"cmd":"session_kill","id":"0123456789abcdef"}
//!   {"v":1,"cmd":"key_revoke","public_key":"<44 characters of base64>"}
//!   {"v":1,"cmd":"rekey","id":null}                       (null = every session)
//!   {"v":1,"cmd":"policy_show"}
//!   {"v":1,"cmd":"policy_reload"}
//!   {"v":1,"cmd":"core_drain","core":3}
//!   {"v":1,"cmd":"stats"}
//!   {"v":1,"cmd":"events","follow":true,"session":null,"event":"PATH_SWITCHED","reason":null}
//!   ```
//!
//! - A response is `{"v":1,"ok":<payload>}` or
//!   `{"v":1,"error":{"code":"<code>","message":"<text>"}}`. The payload is a [`Payload`],
//!   tagged by `"kind"` (`{"v":1,"ok":{"kind":"status","node_id":1,...}}`). Error codes are
//!   the [`ErrorCode`]s: `bad_request` (unparseable line, unknown command, missing field),
//!   `bad_argument` (a field that parses but is not valid, e.g. a session id that is not 16
//!   hex digits), `version` (a `v` other than 1), `not_found`, `permission_denied`,
//!   `unavailable` (e.g. the data plane is not connected, too many connections), `internal`.
//! - `events`: the server keeps the last [`EVENT_RING`] published events (SPEC §8). It first
//!   writes the recent events matching the filters (`session` ↔ `session_id`, `event` ↔
//!   `event`, `reason` ↔ `reason_code`), each as the raw event object on its own line (not
//!   wrapped in an envelope). Without `follow` it then writes
//!   `{"v":1,"ok":{"kind":"events_end"}}` and closes; with `follow` it keeps streaming new
//!   matching events until the client closes. A follower that does not keep up loses events
//!   (counted by the server); publishing never waits for a follower.
//!
//! A request is first checked for its version, then parsed ([`decode_request`]), then
//! validated ([`Request::validate`]); `jumpctl` runs the same validation before connecting.

pub mod client;
pub mod server;

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

/// The protocol version spoken by this crate; every request and response carries it as `v`.
pub const VERSION: u32 = 1;

/// Where the control process listens unless configured otherwise.
pub const DEFAULT_SOCKET: &str = "/run/jumping/control.sock";

/// The longest accepted request line, in bytes (without the newline).
pub const MAX_REQUEST_LINE: usize = 64 * 1024;

/// How many recently published events the server keeps for `events` requests.
pub const EVENT_RING: usize = 1024;

/// The event names of SPEC §8, the only values accepted by the `event` filter.
pub const EVENT_NAMES: [&str; 11] = [
    "SESSION_CREATED",
    "SESSION_STATE_CHANGED",
    "PATH_SWITCHED",
    "REATTACH_REJECTED",
    "SECURITY_EVENT",
    "POLICY_LIMIT",
    "KEY_ROTATED",
    "KEY_EXPIRED",
    "REKEY_DENIED",
    "SESSION_TERMINATED",
    "INVALID_STATE_TRANSITION",
];

// ---------------------------------------------------------------------------------------------
// Requests
// ---------------------------------------------------------------------------------------------

/// One command sent to the control process. Serialized with `"cmd"` as the tag; the `v` field
/// is added by [`encode_request`] and checked by [`decode_request`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "snake_case", deny_unknown_fields)]
pub enum Request {
    /// Node summary; answered with [`Payload::Status`].
    Status,
    /// Every session; answered with [`Payload::Sessions`].
    Sessions,
    /// One session; answered with [`Payload::Session`] or `not_found`.
    SessionShow {
        /// Session id, 16 hex digits.
        id: String,
    },
    /// Terminate one session (reason OPERATOR_TERMINATED); answered with [`Payload::Killed`].
    SessionKill {
        /// Session id, 16 hex digits.
        id: String,
    },
    /// Revoke a client key and terminate its sessions (reason REVOKED); answered with
    /// [`Payload::Revoked`].
    KeyRevoke {
        /// The client's static public key, base64 (as `jumpctl pubkey` prints it).
        public_key: String,
    },
    /// Ask for a rekey of one session or, with `None`, of every session; answered with
    /// [`Payload::Rekeyed`].
    Rekey {
        /// Session id (16 hex digits), or `None` for all sessions.
        #[serde(default)]
        id: Option<String>,
    },
    /// The policy in force; answered with [`Payload::Policy`].
    PolicyShow,
    /// Re-read the policy and the allowed clients; answered with [`Payload::PolicyReloaded`].
    PolicyReload,
    /// Move every session off one worker core; answered with [`Payload::Drained`].
    CoreDrain {
        /// The worker core to drain: its index, as `jumpctl sessions` shows in OWNER.
        core: u8,
    },
    /// Counters of the control process and of each worker; answered with [`Payload::Stats`].
    Stats,
    /// Recent events, optionally followed by new ones (see the crate docs).
    Events {
        /// Keep the stream open and send new events as they are published.
        #[serde(default)]
        follow: bool,
        /// Only events of this session (16 hex digits).
        #[serde(default)]
        session: Option<String>,
        /// Only events with this name (one of [`EVENT_NAMES`]).
        #[serde(default)]
        event: Option<String>,
        /// Only events with this `reason_code` (upper-case letters, digits, `_`).
        #[serde(default)]
        reason: Option<String>,
    },
}

impl Request {
    /// The `cmd` name of this request.
    #[must_use]
    pub fn name(&self) -> &'static str {
        match self {
            Self::Status => "status",
            Self::Sessions => "sessions",
            Self::SessionShow { .. } => "session_show",
            Self::SessionKill { .. } => "session_kill",
            Self::KeyRevoke { .. } => "key_revoke",
            Self::Rekey { .. } => "rekey",
            Self::PolicyShow => "policy_show",
            Self::PolicyReload => "policy_reload",
            Self::CoreDrain { .. } => "core_drain",
            Self::Stats => "stats",
            Self::Events { .. } => "events",
        }
    }

    /// Checks every argument (the server answers a failure with `bad_argument`).
    ///
    /// # Errors
    /// The first invalid argument, with a message saying what is expected.
    pub fn validate(&self) -> Result<(), ArgError> {
        match self {
            Self::SessionShow { id } | Self::SessionKill { id } => parse_session_id(id).map(drop),
            Self::Rekey { id: Some(id) } => parse_session_id(id).map(drop),
            Self::KeyRevoke { public_key } => parse_public_key(public_key).map(drop),
            Self::Events {
                session,
                event,
                reason,
                ..
            } => {
                if let Some(s) = session {
                    parse_session_id(s)?;
                }
                if let Some(e) = event {
                    parse_event_name(e)?;
                }
                if let Some(r) = reason {
                    parse_reason_code(r)?;
                }
                Ok(())
            }
            Self::Status
            | Self::Sessions
            | Self::Rekey { id: None }
            | Self::PolicyShow
            | Self::PolicyReload
            | Self::CoreDrain { .. }
            | Self::Stats => Ok(()),
        }
    }
}

#[derive(Serialize)]
struct RequestLine<'a> {
    v: u32,
    #[serde(flatten)]
    request: &'a Request,
}

/// The request's wire form: one JSON object with `v` and `cmd`, without the newline.
#[must_use]
pub fn encode_request(request: &Request) -> String {
    serde_json::to_string(&RequestLine {
        v: VERSION,
        request,
    })
    .unwrap_or_else(|e| unreachable!("a Request always serializes: {e}"))
}

/// Parses one request line (without or with its newline). Checks the version first, so a
/// client of another version gets `version` even for a command this version does not know.
/// Does not validate the arguments (see [`Request::validate`]).
///
/// # Errors
/// `bad_request` if the line is not a JSON object with a known `cmd` and its fields,
/// `version` if `v` is missing-but-present-wrong (any value other than [`VERSION`]).
pub fn decode_request(line: &[u8]) -> Result<Request, ApiError> {
    let mut value: serde_json::Value = serde_json::from_slice(line)
        .map_err(|e| ApiError::new(ErrorCode::BadRequest, format!("not JSON: {e}")))?;
    let obj = value.as_object_mut().ok_or_else(|| {
        ApiError::new(
            ErrorCode::BadRequest,
            "a request is a JSON object with \"v\" and \"cmd\"",
        )
    })?;
    match obj.remove("v") {
        None => {
            return Err(ApiError::new(
                ErrorCode::BadRequest,
                format!("missing \"v\" (this server speaks version {VERSION})"),
            ))
        }
        Some(v) if v.as_u64() == Some(u64::from(VERSION)) => {}
        Some(v) => {
            return Err(ApiError::new(
                ErrorCode::Version,
                format!(
                    "protocol version {v} is not supported; this server speaks version {VERSION}"
                ),
            ))
        }
    }
    serde_json::from_value(value)
        .map_err(|e| ApiError::new(ErrorCode::BadRequest, format!("bad request: {e}")))
}

// ---------------------------------------------------------------------------------------------
// Argument validation
// ---------------------------------------------------------------------------------------------

/// An argument that does not have the expected form.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{arg}: {message}")]
pub struct ArgError {
    /// The argument's name, e.g. `session id`.
    pub arg: &'static str,
    /// What is wrong and what is expected.
    pub message: String,
}

impl ArgError {
    fn new(arg: &'static str, message: impl Into<String>) -> Self {
        Self {
            arg,
            message: message.into(),
        }
    }
}

impl From<ArgError> for ApiError {
    fn from(e: ArgError) -> Self {
        ApiError::new(ErrorCode::BadArgument, e.to_string())
    }
}

/// A session id: exactly 16 hex digits (either case), as `jumpctl sessions` prints them.
///
/// # Errors
/// [`ArgError`] naming the length or the first non-hex character.
pub fn parse_session_id(text: &str) -> Result<u64, ArgError> {
    const ARG: &str = "session id";
    if let Some((i, c)) = text.char_indices().find(|(_, c)| !c.is_ascii_hexdigit()) {
        return Err(ArgError::new(
            ARG,
            format!(
                "{:?} has a non-hex character {c:?} at position {i}; expected exactly 16 hex digits (0-9, a-f), as `jumpctl sessions` shows",
                truncate(text)
            ),
        ));
    }
    if text.len() != 16 {
        return Err(ArgError::new(
            ARG,
            format!(
                "{:?} has {} hex digits; expected exactly 16, as `jumpctl sessions` shows",
                truncate(text),
                text.len()
            ),
        ));
    }
    u64::from_str_radix(text, 16)
        .map_err(|e| ArgError::new(ARG, format!("{:?}: {e}", truncate(text))))
}

/// The canonical text of a session id: 16 lower-case hex digits.
#[must_use]
pub fn format_session_id(id: u64) -> String {
    format!("{id:016x}")
}

/// A client's static public key in base64 (44 characters, as `jumpctl pubkey` prints it).
/// The input is never echoed (it might be a private key pasted by mistake).
///
/// # Errors
/// [`ArgError`] saying whether the text was not base64 or had the wrong length.
pub fn parse_public_key(text: &str) -> Result<[u8; 32], ArgError> {
    jumping_protocol::keyfmt::decode(text)
        .map(|k| *k)
        .map_err(|e| ArgError::new("public key", e.to_string()))
}

/// An event name of SPEC §8 (exact, upper case).
///
/// # Errors
/// [`ArgError`] listing the valid names.
pub fn parse_event_name(text: &str) -> Result<&'static str, ArgError> {
    EVENT_NAMES
        .iter()
        .copied()
        .find(|n| *n == text)
        .ok_or_else(|| {
            let hint = EVENT_NAMES
                .iter()
                .find(|n| n.eq_ignore_ascii_case(text))
                .map(|n| format!(" (did you mean {n}?)"))
                .unwrap_or_default();
            ArgError::new(
                "event",
                format!(
                    "{:?} is not an event name{hint}; expected one of {}",
                    truncate(text),
                    EVENT_NAMES.join(", ")
                ),
            )
        })
}

/// A reason code filter: 1 to 64 characters of `A-Z`, `0-9` and `_` (e.g. `REATTACH_OK`).
///
/// # Errors
/// [`ArgError`] if empty, too long or with other characters.
pub fn parse_reason_code(text: &str) -> Result<&str, ArgError> {
    let ok = !text.is_empty()
        && text.len() <= 64
        && text
            .bytes()
            .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_');
    if ok {
        Ok(text)
    } else {
        Err(ArgError::new(
            "reason",
            format!(
                "{:?} is not a reason code; expected 1-64 characters of A-Z, 0-9 and _ (e.g. REATTACH_OK, TRANSPORT_DEAD)",
                truncate(text)
            ),
        ))
    }
}

fn truncate(text: &str) -> &str {
    match text.char_indices().nth(40) {
        Some((i, _)) => &text[..i],
        None => text,
    }
}

// ---------------------------------------------------------------------------------------------
// Responses
// ---------------------------------------------------------------------------------------------

/// Why a request failed, as the `code` of an error response.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The line is not a request: not JSON, unknown command, missing field, too long.
    BadRequest,
    /// A field of a known command has an invalid value.
    BadArgument,
    /// The request's `v` is not this server's [`VERSION`].
    Version,
    /// The named session, key or core does not exist.
    NotFound,
    /// The peer may not use the control socket.
    PermissionDenied,
    /// The request cannot be served now (data plane not connected, too many connections).
    Unavailable,
    /// The control process failed (or did not answer in time).
    Internal,
}

impl ErrorCode {
    /// The wire name (`bad_request`, ...).
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::BadRequest => "bad_request",
            Self::BadArgument => "bad_argument",
            Self::Version => "version",
            Self::NotFound => "not_found",
            Self::PermissionDenied => "permission_denied",
            Self::Unavailable => "unavailable",
            Self::Internal => "internal",
        }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An error response: a code for programs and a message for people.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{code}: {message}")]
pub struct ApiError {
    /// The class of failure.
    pub code: ErrorCode,
    /// What went wrong, for the operator.
    pub message: String,
}

impl ApiError {
    /// An error with `code` and `message`.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }
}

/// The data plane as seen by the control process.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DataplaneStatus {
    /// Whether the data plane is connected to the control process.
    pub connected: bool,
    /// The packet I/O backend in use (e.g. `af_xdp`, `io_uring`), if connected.
    pub backend: Option<String>,
    /// Number of worker cores.
    pub workers: u8,
    /// The control ↔ data plane socket path.
    pub socket: String,
}

/// Answer to `status`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Status {
    /// This node's id in the cluster.
    pub node_id: u8,
    /// The control process's version.
    pub software_version: String,
    /// Milliseconds since the control process started.
    pub uptime_ms: u64,
    /// Version of the policy in force.
    pub policy_version: u64,
    /// The gateway's listening address(es), e.g. `udp:0.0.0.0:51820`.
    pub listen: String,
    /// Sessions not yet evicted.
    pub sessions_total: u64,
    /// Session counts by state name (`ATTACHED`, ...).
    pub sessions_by_state: BTreeMap<String, u64>,
    /// Number of client keys allowed to connect.
    pub clients_allowed: u64,
    /// The data plane.
    pub dataplane: DataplaneStatus,
}

/// One session, as listed by `sessions` and `session_show`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionInfo {
    /// Session id, 16 lower-case hex digits.
    pub id: String,
    /// State name, e.g. `ATTACHED`.
    pub state: String,
    /// `state_version`.
    pub version: u64,
    /// The active path, e.g. `udp:10.0.0.2:40000`, if any.
    pub active_path: Option<String>,
    /// The owning worker core.
    pub owner: u8,
    /// Milliseconds since the session was created.
    pub age_ms: u64,
    /// Accepted path switches so far.
    pub switches: u64,
    /// Current key epoch.
    pub key_epoch: u32,
    /// The client's key id (`client_key_id` of its static public key).
    pub client_key_id: String,
    /// The client's inner (tunnel) address.
    pub inner: String,
    /// Packets received from the client.
    pub rx_packets: u64,
    /// Bytes received from the client.
    pub rx_bytes: u64,
    /// Packets sent to the client.
    pub tx_packets: u64,
    /// Bytes sent to the client.
    pub tx_bytes: u64,
    /// Milliseconds since the last authenticated packet, if any.
    pub last_rx_ms: Option<u64>,
}

/// Answer to `session_kill`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Killed {
    /// The terminated session.
    pub id: String,
    /// Its `state_version` after termination.
    pub version: u64,
}

/// Answer to `key_revoke`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Revoked {
    /// The revoked key's id.
    pub client_key_id: String,
    /// Sessions of that key that were terminated.
    pub sessions_terminated: u64,
}

/// Answer to `rekey`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rekeyed {
    /// Sessions asked to rekey.
    pub sessions: u64,
}

/// Answer to `core_drain`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Drained {
    /// The drained core.
    pub core: u8,
    /// Sessions moved to other cores.
    pub moved: u64,
}

/// Answer to `policy_show`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyInfo {
    /// Version of the policy in force.
    pub policy_version: u64,
    /// Where it was read from (a file path).
    pub source: String,
    /// Every policy value, by name, in its configuration text form.
    pub values: BTreeMap<String, String>,
    /// Number of client keys allowed to connect.
    pub clients_allowed: u64,
}

/// Answer to `policy_reload`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyReloaded {
    /// Version of the policy now in force.
    pub policy_version: u64,
    /// Number of client keys now allowed.
    pub clients_allowed: u64,
    /// Names of the values that changed.
    pub changed: Vec<String>,
}

/// Counters of the control process.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ControlCounters {
    /// Completed handshakes.
    pub handshakes: u64,
    /// Accepted reattaches.
    pub reattaches: u64,
    /// Cookie replies sent (load shedding).
    pub cookies_sent: u64,
    /// Dropped messages by reason.
    pub drops: BTreeMap<String, u64>,
    /// Rejected requests by reject code.
    pub rejects: BTreeMap<String, u64>,
    /// Events not delivered to a control-socket follower (queue full).
    pub events_dropped: u64,
    /// The SIEM export's sinks (absent from older servers).
    #[serde(default)]
    pub exports: Vec<ExportInfo>,
}

/// Counters of one SIEM export sink.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExportInfo {
    /// `file`, `syslog_udp` or `syslog_tcp`.
    pub sink: String,
    /// The file or the receiver.
    pub target: String,
    /// Events written or sent.
    pub sent: u64,
    /// Events dropped (queue full, or lost with a failed write).
    pub dropped: u64,
    /// Failed writes, sends or connections.
    pub errors: u64,
    /// Open (TCP: connected).
    pub connected: bool,
}

/// Counters of one data-plane worker.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkerInfo {
    /// The worker's CPU.
    pub cpu: u32,
    /// Datagrams received.
    pub rx_datagrams: u64,
    /// Bytes received.
    pub rx_bytes: u64,
    /// Decrypted packets delivered inside.
    pub delivered: u64,
    /// Inside packets read for sending.
    pub inside_packets: u64,
    /// Datagrams sent.
    pub sent: u64,
    /// Bytes sent.
    pub sent_bytes: u64,
    /// Packets handed off to another worker.
    pub handed_off: u64,
    /// Packets taken over from another worker.
    pub taken_over: u64,
    /// Sessions owned.
    pub sessions: u64,
    /// Key lookups that missed the worker's cache.
    pub key_cache_misses: u64,
    /// Events the worker could not export (queue full).
    pub events_lost: u64,
    /// Drops by reason.
    pub drops: BTreeMap<String, u64>,
}

/// Answer to `stats`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatsInfo {
    /// The control process's counters.
    pub control: ControlCounters,
    /// One entry per worker.
    pub workers: Vec<WorkerInfo>,
    /// Events lost between the data plane and the control process.
    pub dataplane_events_lost: u64,
}

/// The `ok` value of a response, tagged by `"kind"` (snake_case of the variant).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Payload {
    /// Answer to `status`.
    Status(Status),
    /// Answer to `sessions`.
    Sessions {
        /// Every session.
        sessions: Vec<SessionInfo>,
    },
    /// Answer to `session_show`.
    Session(SessionInfo),
    /// Answer to `session_kill`.
    Killed(Killed),
    /// Answer to `key_revoke`.
    Revoked(Revoked),
    /// Answer to `rekey`.
    Rekeyed(Rekeyed),
    /// Answer to `core_drain`.
    Drained(Drained),
    /// Answer to `policy_show`.
    Policy(PolicyInfo),
    /// Answer to `policy_reload`.
    PolicyReloaded(PolicyReloaded),
    /// Answer to `stats`.
    Stats(StatsInfo),
    /// End of a non-following `events` stream.
    EventsEnd,
}

#[derive(Serialize, Deserialize)]
struct ResponseLine {
    v: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    ok: Option<Payload>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    error: Option<ApiError>,
}

/// The response's wire form, without the newline.
#[must_use]
pub fn encode_response(response: &Result<Payload, ApiError>) -> String {
    let line = match response {
        Ok(p) => ResponseLine {
            v: VERSION,
            ok: Some(p.clone()),
            error: None,
        },
        Err(e) => ResponseLine {
            v: VERSION,
            ok: None,
            error: Some(e.clone()),
        },
    };
    serde_json::to_string(&line).unwrap_or_else(|e| unreachable!("a response serializes: {e}"))
}

/// Parses one response line.
///
/// # Errors
/// A description if the line is not a version-1 response with exactly one of `ok`/`error`.
pub fn decode_response(line: &[u8]) -> Result<Result<Payload, ApiError>, String> {
    let r: ResponseLine =
        serde_json::from_slice(line).map_err(|e| format!("malformed response: {e}"))?;
    if r.v != VERSION {
        return Err(format!(
            "the server speaks protocol version {}, this client {VERSION}",
            r.v
        ));
    }
    match (r.ok, r.error) {
        (Some(p), None) => Ok(Ok(p)),
        (None, Some(e)) => Ok(Err(e)),
        _ => Err("malformed response: expected exactly one of \"ok\" and \"error\"".into()),
    }
}

#[cfg(test)]
mod tests;
