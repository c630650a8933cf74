//! `jumpctl`: the operator's command line for the Jumping control process.
//!
//! It speaks the control-socket protocol of `jumping-control-api` (one JSON request line, one
//! JSON answer line; `events` streams). Arguments are validated here with the same functions
//! the server uses, before connecting.
//!
//! Exit codes: 0 success; 1 the server answered an error (`jumpctl: <code>: <message>` on
//! stderr) or a local failure (RNG); 2 usage error or invalid argument; 3 the control socket
//! could not be used (not there, nobody listening, no permission, no answer).

mod top;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::{self, IsTerminal, Read, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};
use jumping_control_api::client::{self, ClientError};
use jumping_control_api::{
    ApiError, ErrorCode, Payload, PolicyInfo, Request, SessionInfo, StatsInfo, Status,
    DEFAULT_SOCKET,
};
use jumping_protocol::handshake::StaticKeypair;
use jumping_protocol::keyfmt;
use jumping_protocol::{Reason, RejectCode};
use rand_core::OsRng;
use serde_json::Value;
use zeroize::Zeroizing;

/// Operate a Jumping gateway through its control socket.
#[derive(Debug, Parser)]
#[command(name = "jumpctl", version, about, propagate_version = true)]
struct Cli {
    /// The control socket of the Jumping control process.
    #[arg(long, global = true, value_name = "PATH", default_value = DEFAULT_SOCKET)]
    socket: PathBuf,
    /// Print the answer as JSON (the response's `ok` value) instead of tables.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Node summary: version, uptime, policy, sessions by state, data plane.
    Status,
    /// List every session.
    Sessions,
    /// Show or terminate one session.
    #[command(subcommand)]
    Session(SessionCommand),
    /// Revoke a client key.
    #[command(subcommand)]
    Key(KeyCommand),
    /// Ask one session (ID) or every session (--all) to rekey.
    Rekey {
        /// Session id, 16 hex digits.
        #[arg(required_unless_present = "all", conflicts_with = "all")]
        id: Option<String>,
        /// Rekey every session.
        #[arg(long)]
        all: bool,
    },
    /// Show or reload the policy.
    #[command(subcommand)]
    Policy(PolicyCommand),
    /// Worker core operations.
    #[command(subcommand)]
    Core(CoreCommand),
    /// Counters of the control process and of each worker.
    Stats,
    /// Print recent events (SPEC §8), optionally following new ones.
    Events {
        /// Keep printing new events until interrupted.
        #[arg(long)]
        follow: bool,
        /// Only events of this session (16 hex digits).
        #[arg(long, value_name = "ID")]
        session: Option<String>,
        /// Only events with this name, e.g. PATH_SWITCHED.
        #[arg(long, value_name = "NAME")]
        event: Option<String>,
        /// Only events with this reason code, e.g. TRANSPORT_DEAD.
        #[arg(long, value_name = "CODE")]
        reason: Option<String>,
    },
    /// Live view: sessions with packet rates, per-worker rates, control counters that changed.
    ///
    /// Samples `sessions` and `stats` every --interval and shows the difference as rates. On a
    /// terminal it redraws in place; otherwise it prints one frame after another.
    Top {
        /// Time between two samples: a whole number with ms, s or m (e.g. 500ms, 2s).
        #[arg(long, value_name = "DURATION", default_value = "1s", value_parser = top::parse_interval)]
        interval: Duration,
        /// Print one frame (two samples --interval apart) and exit. With --json: one JSON object.
        #[arg(long, conflicts_with = "iterations")]
        once: bool,
        /// Stop after N frames.
        #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
        iterations: Option<u64>,
        /// Show at most N sessions, the busiest first (0: all).
        #[arg(long, value_name = "N", default_value_t = 20)]
        limit: usize,
    },
    /// Print a new private key (base64) on stdout.
    Genkey,
    /// Read a private key (base64) on stdin and print its public key.
    Pubkey,
}

#[derive(Debug, Subcommand)]
enum SessionCommand {
    /// Show one session.
    Show {
        /// Session id, 16 hex digits.
        id: String,
    },
    /// Terminate one session (reason OPERATOR_TERMINATED).
    Kill {
        /// Session id, 16 hex digits.
        id: String,
    },
}

#[derive(Debug, Subcommand)]
enum KeyCommand {
    /// Revoke a client key and terminate its sessions.
    Revoke {
        /// The client's public key, base64 (as `jumpctl pubkey` prints it).
        pubkey: String,
    },
}

#[derive(Debug, Subcommand)]
enum PolicyCommand {
    /// Show the policy in force.
    Show,
    /// Re-read the policy and the allowed clients.
    Reload,
}

#[derive(Debug, Subcommand)]
enum CoreCommand {
    /// Move every session off worker core N.
    Drain {
        /// The worker core: its index, as `jumpctl sessions` shows in OWNER.
        core: u8,
    },
}

/// Why jumpctl stops with a non-zero status.
#[derive(Debug)]
enum Failure {
    /// Exit 1: the server answered an error (exit 2 when it says an argument is invalid).
    Api(ApiError),
    /// Exit 1: a local failure.
    Local(String),
    /// Exit 2: an argument is invalid.
    Argument(String),
    /// Exit 3: the control socket cannot be used.
    Unreachable(String),
}

impl Failure {
    fn exit(self) -> ExitCode {
        let (code, msg) = match self {
            Self::Api(e) => (
                if e.code == ErrorCode::BadArgument {
                    2
                } else {
                    1
                },
                format!("{}: {}", e.code, e.message),
            ),
            Self::Local(m) => (1, m),
            Self::Argument(m) => (2, m),
            Self::Unreachable(m) => (3, m),
        };
        eprintln!("jumpctl: {msg}");
        ExitCode::from(code)
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse(); // exits 2 on usage errors
    match run(&cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(f) => f.exit(),
    }
}

fn run(cli: &Cli) -> Result<(), Failure> {
    let request = match &cli.command {
        Command::Genkey => return genkey(),
        Command::Pubkey => return pubkey(),
        Command::Top {
            interval,
            once,
            iterations,
            limit,
        } => {
            let frames = if *once { Some(1) } else { *iterations };
            return run_top(cli, *interval, frames, *limit);
        }
        Command::Status => Request::Status,
        Command::Sessions => Request::Sessions,
        Command::Session(SessionCommand::Show { id }) => Request::SessionShow { id: id.clone() },
        Command::Session(SessionCommand::Kill { id }) => Request::SessionKill { id: id.clone() },
        Command::Key(KeyCommand::Revoke { pubkey }) => Request::KeyRevoke {
            public_key: pubkey.trim().to_owned(),
        },
        Command::Rekey { id, .. } => Request::Rekey { id: id.clone() },
        Command::Policy(PolicyCommand::Show) => Request::PolicyShow,
        Command::Policy(PolicyCommand::Reload) => Request::PolicyReload,
        Command::Core(CoreCommand::Drain { core }) => Request::CoreDrain { core: *core },
        Command::Stats => Request::Stats,
        Command::Events {
            follow,
            session,
            event,
            reason,
        } => Request::Events {
            follow: *follow,
            session: session.clone(),
            event: event.as_ref().map(|e| e.to_ascii_uppercase()),
            reason: reason.as_ref().map(|r| r.to_ascii_uppercase()),
        },
    };
    request
        .validate()
        .map_err(|e| Failure::Argument(format!("invalid argument: {e}")))?;
    if let Request::Events { reason, .. } = &request {
        if let Some(r) = reason {
            check_reason_code(r).map_err(Failure::Argument)?;
        }
        return events(cli, &request);
    }
    let payload = client::call(&cli.socket, &request)
        .map_err(|e| unreachable(&cli.socket, &e))?
        .map_err(Failure::Api)?;
    let text = if cli.json {
        let mut s = serde_json::to_string_pretty(&payload)
            .map_err(|e| Failure::Local(format!("cannot print JSON: {e}")))?;
        s.push('\n');
        s
    } else {
        render(&payload)
    };
    emit(&text)
}

/// Writes to stdout; a closed pipe (`| head`) is not an error.
fn emit(text: &str) -> Result<(), Failure> {
    let mut out = io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => Ok(()),
        Err(e) => Err(Failure::Local(format!("cannot write to stdout: {e}"))),
    }
}

fn unreachable(socket: &Path, e: &ClientError) -> Failure {
    let path = socket.display();
    Failure::Unreachable(match e {
        ClientError::Connect { source, .. } => match source.kind() {
            io::ErrorKind::NotFound => format!(
                "cannot reach the control socket {path}: it does not exist. Is the Jumping control \
                 process running? (use --socket PATH if it listens elsewhere)"
            ),
            io::ErrorKind::ConnectionRefused => format!(
                "cannot reach the control socket {path}: nobody is listening (stale socket file). \
                 The control process is not running."
            ),
            io::ErrorKind::PermissionDenied => format!(
                "cannot reach the control socket {path}: permission denied. Run as root or as a \
                 member of the socket's group (see `ls -l {path}`)."
            ),
            _ => format!("cannot reach the control socket {path}: {source}"),
        },
        ClientError::Io(source)
            if source.kind() == io::ErrorKind::WouldBlock
                || source.kind() == io::ErrorKind::TimedOut =>
        {
            format!("the control process at {path} did not answer in time")
        }
        other => format!("control socket {path}: {other}"),
    })
}

fn events(cli: &Cli, request: &Request) -> Result<(), Failure> {
    let mut out_err = None;
    let json = cli.json;
    let end = client::follow(&cli.socket, request, |event| {
        let line = if json {
            format!("{event}\n")
        } else {
            render_event(&event)
        };
        let mut out = io::stdout().lock();
        match out.write_all(line.as_bytes()).and_then(|()| out.flush()) {
            Ok(()) => true,
            Err(e) => {
                if e.kind() != io::ErrorKind::BrokenPipe {
                    out_err = Some(e);
                }
                false
            }
        }
    })
    .map_err(|e| unreachable(&cli.socket, &e))?;
    if let Some(e) = out_err {
        return Err(Failure::Local(format!("cannot write to stdout: {e}")));
    }
    end.map_err(Failure::Api)
}

/// Every `reason_code` an event can carry: the transition reasons (SPEC §3, also the
/// termination reasons), the reattach reject codes (SPEC §4) and INVALID_STATE_TRANSITION.
fn reason_codes() -> Vec<&'static str> {
    let mut v: Vec<&'static str> = Reason::ALL
        .iter()
        .map(|r| r.as_str())
        .chain(RejectCode::ALL.iter().map(|r| r.as_str()))
        .chain(["INVALID_STATE_TRANSITION"])
        .collect();
    v.sort_unstable();
    v.dedup();
    v
}

/// `events --reason CODE`: the server accepts any well-formed code (so a filter on a code
/// that can never match would wait forever); jumpctl refuses codes no event carries.
fn check_reason_code(code: &str) -> Result<(), String> {
    if reason_codes().contains(&code) {
        return Ok(());
    }
    let list = |codes: &mut dyn Iterator<Item = &'static str>| codes.collect::<Vec<_>>().join(", ");
    Err(format!(
        "invalid argument: reason: {code:?} is not a reason code. Valid: transition and \
         termination reasons: {}; reattach reject codes: {}; and INVALID_STATE_TRANSITION",
        list(&mut Reason::ALL.iter().map(|r| r.as_str())),
        list(&mut RejectCode::ALL.iter().map(|r| r.as_str())),
    ))
}

/// Asks for `sessions` then `stats`.
fn top_sample(socket: &Path) -> Result<top::Sample, Failure> {
    let ask = |request: &Request| {
        client::call(socket, request)
            .map_err(|e| unreachable(socket, &e))?
            .map_err(Failure::Api)
    };
    let sessions = match ask(&Request::Sessions)? {
        Payload::Sessions { sessions } => sessions,
        other => {
            return Err(Failure::Local(format!(
                "unexpected answer to sessions: {other:?}"
            )))
        }
    };
    let stats = match ask(&Request::Stats)? {
        Payload::Stats(s) => s,
        other => {
            return Err(Failure::Local(format!(
                "unexpected answer to stats: {other:?}"
            )))
        }
    };
    Ok(top::Sample { sessions, stats })
}

/// `jumpctl top`: sample, wait, sample, show the difference; `frames` frames (None: until
/// interrupted). A failed first sample ends it (exit code as for any command); a later failure
/// is shown and retried, the next good sample becoming the new baseline.
fn run_top(
    cli: &Cli,
    interval: Duration,
    frames: Option<u64>,
    limit: usize,
) -> Result<(), Failure> {
    let terminal = io::stdout().is_terminal();
    let redraw = terminal && !cli.json && frames != Some(1);
    let mut prev = Some((Instant::now(), top_sample(&cli.socket)?));
    let mut shown = 0u64;
    loop {
        std::thread::sleep(interval);
        let at = Instant::now();
        let mut text = String::new();
        if redraw {
            text.push_str(top::CLEAR);
        }
        match (top_sample(&cli.socket), prev.take()) {
            (Ok(cur), Some((t0, before))) => {
                let secs = at.duration_since(t0).as_secs_f64();
                let f = top::frame(&before, &cur, secs, limit);
                if cli.json {
                    let v = top::to_json(&f);
                    let j = if frames == Some(1) {
                        serde_json::to_string_pretty(&v)
                    } else {
                        serde_json::to_string(&v)
                    };
                    text.push_str(
                        &j.map_err(|e| Failure::Local(format!("cannot print JSON: {e}")))?,
                    );
                    text.push('\n');
                } else {
                    text.push_str(&top::render_text(&f));
                    if !redraw && frames != Some(1) {
                        text.push('\n');
                    }
                }
                prev = Some((at, cur));
            }
            (Ok(cur), None) => {
                // First good sample after a failure: the baseline for the next frame.
                let _ = writeln!(text, "jumpctl top: sampling again; rates at the next frame");
                prev = Some((at, cur));
            }
            (Err(e), _) if frames == Some(1) => return Err(e),
            (Err(e), _) => {
                let msg = match e {
                    Failure::Api(e) => format!("{}: {}", e.code, e.message),
                    Failure::Local(m) | Failure::Argument(m) | Failure::Unreachable(m) => m,
                };
                if cli.json {
                    let _ = writeln!(text, "{}", serde_json::json!({ "error": msg }));
                } else {
                    let _ = writeln!(text, "jumpctl top: sample failed: {msg}");
                }
            }
        }
        // A closed pipe (`| head`) ends the view quietly.
        let mut out = io::stdout().lock();
        match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::BrokenPipe => return Ok(()),
            Err(e) => return Err(Failure::Local(format!("cannot write to stdout: {e}"))),
        }
        shown += 1;
        if frames.is_some_and(|n| shown >= n) {
            return Ok(());
        }
    }
}

fn genkey() -> Result<(), Failure> {
    jumping_protocol::crypto::rng_health_check(&mut OsRng).map_err(|e| {
        Failure::Local(format!(
            "the operating system's random number generator failed its health check ({e}); no key written"
        ))
    })?;
    let keypair = StaticKeypair::generate(&mut OsRng);
    let mut text = Zeroizing::new(keyfmt::encode(&keypair.secret_bytes()));
    text.push('\n');
    emit(&text)
}

fn pubkey() -> Result<(), Failure> {
    let mut input = Zeroizing::new(String::new());
    io::stdin()
        .take(4096)
        .read_to_string(&mut input)
        .map_err(|e| Failure::Argument(format!("cannot read a private key from stdin: {e}")))?;
    let secret = keyfmt::decode(&input).map_err(|e| {
        Failure::Argument(format!(
            "stdin: private key {e} (pipe in the output of `jumpctl genkey`)"
        ))
    })?;
    let keypair = StaticKeypair::from_secret_bytes(*secret);
    emit(&format!("{}\n", keyfmt::encode(&keypair.public())))
}

// ---------------------------------------------------------------------------------------------
// Human output
// ---------------------------------------------------------------------------------------------

/// Left-aligned columns separated by two spaces; the last column is not padded.
fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let header: Vec<String> = headers.iter().map(|h| (*h).to_owned()).collect();
    for row in std::iter::once(&header).chain(rows) {
        let mut line = String::new();
        for (i, (cell, w)) in row.iter().zip(&widths).enumerate() {
            if i + 1 == row.len() {
                line.push_str(cell);
            } else {
                let _ = write!(line, "{cell:<w$}  ");
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// `key: value` lines with the values aligned.
fn key_values(pairs: &[(&str, String)]) -> String {
    let width = pairs.iter().map(|(k, _)| k.len() + 1).max().unwrap_or(0);
    let mut out = String::new();
    for (k, v) in pairs {
        let key = format!("{k}:");
        let _ = writeln!(out, "{key:<width$} {v}");
    }
    out
}

fn duration_ms(ms: u64) -> String {
    let s = ms / 1000;
    match s {
        0 => format!("{ms}ms"),
        1..=59 => format!("{s}s"),
        60..=3599 => format!("{}m{:02}s", s / 60, s % 60),
        3600..=86_399 => format!("{}h{:02}m", s / 3600, (s % 3600) / 60),
        _ => format!("{}d{:02}h", s / 86_400, (s % 86_400) / 3600),
    }
}

fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut unit = 0;
    let mut whole = n;
    while whole >= 1024 && unit + 1 < UNITS.len() {
        whole /= 1024;
        unit += 1;
    }
    if unit == 0 {
        format!("{n}B")
    } else {
        // One decimal, integer arithmetic: tenths of the unit.
        let div = 1u128 << (10 * unit);
        let tenths = u128::from(n) * 10 / div;
        format!("{}.{}{}", tenths / 10, tenths % 10, UNITS[unit])
    }
}

fn counts(map: &BTreeMap<String, u64>) -> String {
    if map.is_empty() {
        return "-".into();
    }
    map.iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(" ")
}

fn render(payload: &Payload) -> String {
    match payload {
        Payload::Status(s) => render_status(s),
        Payload::Sessions { sessions } => render_sessions(sessions),
        Payload::Session(s) => render_session(s),
        Payload::Killed(k) => format!(
            "session {} terminated (state version {})\n",
            k.id, k.version
        ),
        Payload::Revoked(r) => format!(
            "key {} revoked; {} session(s) terminated\n",
            r.client_key_id, r.sessions_terminated
        ),
        Payload::Rekeyed(r) => format!("rekey requested for {} session(s)\n", r.sessions),
        Payload::Drained(d) => format!("core {} drained; {} session(s) moved\n", d.core, d.moved),
        Payload::Policy(p) => render_policy(p),
        Payload::PolicyReloaded(p) => format!(
            "policy version {} in force; {} client(s) allowed; changed: {}\n",
            p.policy_version,
            p.clients_allowed,
            if p.changed.is_empty() {
                "nothing".to_owned()
            } else {
                p.changed.join(", ")
            }
        ),
        Payload::Stats(s) => render_stats(s),
        Payload::EventsEnd => String::new(),
    }
}

fn render_status(s: &Status) -> String {
    let dataplane = if s.dataplane.connected {
        format!(
            "connected ({}, {} workers)",
            s.dataplane.backend.as_deref().unwrap_or("unknown backend"),
            s.dataplane.workers
        )
    } else {
        "NOT CONNECTED".to_owned()
    };
    key_values(&[
        ("node", s.node_id.to_string()),
        ("version", s.software_version.clone()),
        ("uptime", duration_ms(s.uptime_ms)),
        ("policy version", s.policy_version.to_string()),
        ("listen", s.listen.clone()),
        ("sessions", s.sessions_total.to_string()),
        ("sessions by state", counts(&s.sessions_by_state)),
        ("clients allowed", s.clients_allowed.to_string()),
        ("data plane", dataplane),
        ("data plane socket", s.dataplane.socket.clone()),
    ])
}

fn render_sessions(sessions: &[SessionInfo]) -> String {
    let rows: Vec<Vec<String>> = sessions
        .iter()
        .map(|s| {
            vec![
                s.id.clone(),
                s.state.clone(),
                s.version.to_string(),
                s.active_path.clone().unwrap_or_else(|| "-".into()),
                s.owner.to_string(),
                duration_ms(s.age_ms),
                s.switches.to_string(),
                s.key_epoch.to_string(),
                bytes(s.rx_bytes),
                bytes(s.tx_bytes),
            ]
        })
        .collect();
    let mut out = table(
        &[
            "ID", "STATE", "VER", "PATH", "OWNER", "AGE", "SWITCHES", "EPOCH", "RX", "TX",
        ],
        &rows,
    );
    let _ = writeln!(out, "{} session(s)", sessions.len());
    out
}

fn render_session(s: &SessionInfo) -> String {
    key_values(&[
        ("id", s.id.clone()),
        ("state", s.state.clone()),
        ("state version", s.version.to_string()),
        (
            "active path",
            s.active_path.clone().unwrap_or_else(|| "-".into()),
        ),
        ("owner core", s.owner.to_string()),
        ("age", duration_ms(s.age_ms)),
        ("switches", s.switches.to_string()),
        ("key epoch", s.key_epoch.to_string()),
        ("client key id", s.client_key_id.clone()),
        ("inner address", s.inner.clone()),
        (
            "rx",
            format!("{} packets, {}", s.rx_packets, bytes(s.rx_bytes)),
        ),
        (
            "tx",
            format!("{} packets, {}", s.tx_packets, bytes(s.tx_bytes)),
        ),
        (
            "last rx",
            s.last_rx_ms
                .map_or_else(|| "never".into(), |ms| format!("{} ago", duration_ms(ms))),
        ),
    ])
}

fn render_policy(p: &PolicyInfo) -> String {
    let mut out = key_values(&[
        ("policy version", p.policy_version.to_string()),
        ("source", p.source.clone()),
        ("clients allowed", p.clients_allowed.to_string()),
    ]);
    out.push('\n');
    let rows: Vec<Vec<String>> = p
        .values
        .iter()
        .map(|(k, v)| vec![k.clone(), v.clone()])
        .collect();
    out.push_str(&table(&["NAME", "VALUE"], &rows));
    out
}

fn render_stats(s: &StatsInfo) -> String {
    let c = &s.control;
    let mut out = String::from("control\n");
    out.push_str(&key_values(&[
        ("  handshakes", c.handshakes.to_string()),
        ("  reattaches", c.reattaches.to_string()),
        ("  cookies sent", c.cookies_sent.to_string()),
        ("  drops", counts(&c.drops)),
        ("  rejects", counts(&c.rejects)),
        ("  events dropped", c.events_dropped.to_string()),
        (
            "  data plane events lost",
            s.dataplane_events_lost.to_string(),
        ),
    ]));
    for x in &c.exports {
        out.push_str(&key_values(&[(
            "  export",
            format!(
                "{} {}: {} sent, {} dropped, {} errors{}",
                x.sink,
                x.target,
                x.sent,
                x.dropped,
                x.errors,
                if x.connected { "" } else { ", not connected" }
            ),
        )]));
    }
    out.push_str("\nworkers\n");
    let rows: Vec<Vec<String>> = s
        .workers
        .iter()
        .map(|w| {
            vec![
                w.cpu.to_string(),
                w.sessions.to_string(),
                w.rx_datagrams.to_string(),
                bytes(w.rx_bytes),
                w.delivered.to_string(),
                w.inside_packets.to_string(),
                w.sent.to_string(),
                bytes(w.sent_bytes),
                w.handed_off.to_string(),
                w.taken_over.to_string(),
                w.key_cache_misses.to_string(),
                w.events_lost.to_string(),
                counts(&w.drops),
            ]
        })
        .collect();
    out.push_str(&table(
        &[
            "CPU",
            "SESSIONS",
            "RX",
            "RX_BYTES",
            "DELIVERED",
            "INSIDE",
            "SENT",
            "SENT_BYTES",
            "HANDED_OFF",
            "TAKEN_OVER",
            "KEY_MISSES",
            "EVENTS_LOST",
            "DROPS",
        ],
        &rows,
    ));
    out
}

/// `ts EVENT session=.. v=.. reason=.. key=value ...`, one line.
fn render_event(event: &Value) -> String {
    let field = |name: &str| match event.get(name) {
        Some(Value::String(s)) => s.clone(),
        Some(v) => v.to_string(),
        None => "-".into(),
    };
    let mut line = format!(
        "{} {} session={} v={}",
        field("ts"),
        field("event"),
        field("session_id"),
        field("state_version")
    );
    if event.get("reason_code").is_some() {
        let _ = write!(line, " reason={}", field("reason_code"));
    }
    if let Value::Object(map) = event {
        for (k, v) in map {
            if ["ts", "event", "session_id", "state_version", "reason_code"].contains(&k.as_str()) {
                continue;
            }
            match v {
                Value::String(s) => {
                    let _ = write!(line, " {k}={s}");
                }
                other => {
                    let _ = write!(line, " {k}={other}");
                }
            }
        }
    }
    line.push('\n');
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_aligns_columns() {
        let t = table(
            &["ID", "STATE", "X"],
            &[
                vec!["a".into(), "ATTACHED".into(), "1".into()],
                vec!["bbbb".into(), "B".into(), "22".into()],
            ],
        );
        assert_eq!(
            t,
            "ID    STATE     X\na     ATTACHED  1\nbbbb  B         22\n"
        );
    }

    #[test]
    fn reason_filter_is_checked_against_the_known_codes() {
        for ok in [
            "TRANSPORT_DEAD",
            "REATTACH_OK",
            "OPERATOR_TERMINATED",
            "BAD_PROOF",
            "PATH_VALIDATION_FAILED",
            "KEY_EXPIRED",
            "INVALID_STATE_TRANSITION",
        ] {
            assert_eq!(check_reason_code(ok), Ok(()), "{ok}");
        }
        let e = check_reason_code("TRANSPORT_DAED").expect_err("typo");
        assert!(e.contains("\"TRANSPORT_DAED\" is not a reason code"), "{e}");
        // The message lists what is valid.
        for listed in [
            "TRANSPORT_DEAD",
            "RECOVERY_WINDOW_EXPIRED",
            "UNKNOWN_SESSION",
            "ATOMICITY_FAILED",
        ] {
            assert!(e.contains(listed), "{listed} missing from: {e}");
        }
        // No duplicates (KEY_EXPIRED is both a reason and a reject code).
        let codes = reason_codes();
        assert_eq!(codes.iter().filter(|c| **c == "KEY_EXPIRED").count(), 1);
    }

    #[test]
    fn units() {
        assert_eq!(bytes(0), "0B");
        assert_eq!(bytes(1023), "1023B");
        assert_eq!(bytes(1536), "1.5KiB");
        assert_eq!(bytes(5 * 1024 * 1024), "5.0MiB");
        assert_eq!(duration_ms(999), "999ms");
        assert_eq!(duration_ms(61_000), "1m01s");
        assert_eq!(duration_ms(3_600_000 * 25), "1d01h");
    }
}
