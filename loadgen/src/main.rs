//! `jumping-loadgen`: see the library documentation. Subcommands: `keys`, `clients`, `flood`,
//! `echo`. Each writes its report as JSON (to `--report`, else stdout) when it ends: at the end
//! of `--duration`, or on SIGTERM/SIGINT. `clients` takes SIGUSR1 as a *mark*: the moment the
//! scenario broke something, from which recovery is measured.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use jumping_loadgen::{clients, echo, flood, keys};
use jumping_protocol::policy::{parse_duration, parse_policy};
use jumping_protocol::wire::SessionId;
use jumping_protocol::{keyfmt, Policy};

#[derive(Parser)]
#[command(about = "Jumping load generator: many real clients, floods, and the echo server")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Make N client identities: the secrets for `clients --keys` and the gateway's
    /// `clients_file`.
    Keys {
        /// How many.
        #[arg(long)]
        count: usize,
        /// Inner addresses are base+1, base+2, ...
        #[arg(long, default_value = "10.100.0.0")]
        inner_base: Ipv4Addr,
        /// Secrets file to write (mode 0600).
        #[arg(long)]
        keys: PathBuf,
        /// The gateway's allow list to write.
        #[arg(long)]
        clients_file: PathBuf,
    },
    /// Run many clients.
    Clients(ClientsArgs),
    /// Flood the gateway with invalid messages.
    Flood(FloodArgs),
    /// Echo UDP datagrams back (run behind the gateway).
    Echo {
        /// Address to listen on.
        #[arg(long, default_value = "0.0.0.0:9")]
        listen: SocketAddr,
        /// Write the counts here on exit (else stdout).
        #[arg(long)]
        report: Option<PathBuf>,
    },
}

#[derive(clap::Args)]
struct ClientsArgs {
    /// The gateway's address.
    #[arg(long)]
    gateway: SocketAddr,
    /// The gateway's public key (base64).
    #[arg(long)]
    gateway_public: String,
    /// Identities (from `keys`).
    #[arg(long)]
    keys: PathBuf,
    /// Use only the first N identities (after `--skip`).
    #[arg(long)]
    sessions: Option<usize>,
    /// Skip the first K identities (another load generator of the run uses them).
    #[arg(long, default_value_t = 0)]
    skip: usize,
    /// Local source address of a path (repeat for more paths; the first is used first).
    #[arg(long = "path", required = true)]
    paths: Vec<Ipv4Addr>,
    /// UDP sockets per path.
    #[arg(long, default_value_t = 64)]
    sockets: usize,
    /// Handshakes started per second.
    #[arg(long, default_value_t = 1000.0)]
    connect_rate: f64,
    /// Inner packets per second in total (0: heartbeats only).
    #[arg(long, default_value_t = 0.0)]
    pps: f64,
    /// Inner packet length in bytes (IPv4 header included), 52 to 1400.
    #[arg(long, default_value_t = 64)]
    packet_len: usize,
    /// The echo server behind the gateway.
    #[arg(long, default_value = "10.10.0.2:9")]
    echo: SocketAddrV4,
    /// Run time, from the first handshake ("30s", "2m").
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    duration: Duration,
    /// The gateway's policy file (`[policy]` TOML), for the clients' timers.
    #[arg(long)]
    policy: Option<PathBuf>,
    /// This many sessions (the first) flap between paths as fast as they can.
    #[arg(long, default_value_t = 0)]
    flap: usize,
    /// Send every Nth probe twice (a replay the gateway must drop).
    #[arg(long, default_value_t = 0)]
    replay_every: u64,
    /// Data on a path left longer ago than this counts as two active bindings.
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    stale_grace: Duration,
    /// Progress (JSON) written here every second.
    #[arg(long)]
    status_file: Option<PathBuf>,
    /// Leave sessions open at the end instead of terminating them.
    #[arg(long)]
    no_terminate: bool,
    /// Handshake attempts before giving up.
    #[arg(long, default_value_t = 5)]
    handshake_attempts: u32,
    /// Keep this many genuine reattach requests and handshake initiations in the report.
    #[arg(long, default_value_t = 0)]
    capture: usize,
    /// Seed of sampling decisions.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Report file (else stdout).
    #[arg(long)]
    report: Option<PathBuf>,
}

#[derive(clap::Args)]
struct FloodArgs {
    /// What to send.
    #[arg(long, value_enum)]
    kind: flood::Kind,
    /// The gateway's address.
    #[arg(long)]
    gateway: SocketAddr,
    /// The gateway's public key (base64; for `handshake`).
    #[arg(long)]
    gateway_public: Option<String>,
    /// Datagrams per second.
    #[arg(long, default_value_t = 100_000.0)]
    rate: f64,
    /// Run time.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    duration: Duration,
    /// Local address to send from.
    #[arg(long, default_value = "0.0.0.0")]
    bind: Ipv4Addr,
    /// Source ports to spread over.
    #[arg(long, default_value_t = 16)]
    sockets: usize,
    /// Real SessionIds (hex, comma-separated) for `reattach-forged`.
    #[arg(long, value_delimiter = ',')]
    session_ids: Vec<String>,
    /// A `clients` report whose captured datagrams are replayed (`reattach-replay`, or
    /// `handshake` with genuine initiations).
    #[arg(long)]
    replay: Option<PathBuf>,
    /// Distinct datagrams to prepare.
    #[arg(long, default_value_t = 1024)]
    pool: usize,
    /// Seed of the random pools.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Report file (else stdout).
    #[arg(long)]
    report: Option<PathBuf>,
}

fn write_report(path: Option<&PathBuf>, value: &impl serde::Serialize) -> Result<()> {
    let text = serde_json::to_string_pretty(value)?;
    match path {
        Some(p) => {
            let tmp = p.with_extension("tmp");
            std::fs::write(&tmp, text + "\n")
                .with_context(|| format!("write {}", tmp.display()))?;
            std::fs::rename(&tmp, p)?;
        }
        None => println!("{text}"),
    }
    Ok(())
}

fn stop_flag() -> Result<Arc<AtomicBool>> {
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        signal_hook::flag::register(sig, Arc::clone(&stop))?;
    }
    Ok(stop)
}

fn gateway_key(text: &str) -> Result<[u8; 32]> {
    keyfmt::decode(text)
        .map(|k| *k)
        .map_err(|e| anyhow::anyhow!("--gateway-public: {e}"))
}

fn clients_cmd(a: ClientsArgs) -> Result<()> {
    let policy = match &a.policy {
        None => Policy::default(),
        Some(p) => {
            let text =
                std::fs::read_to_string(p).with_context(|| format!("--policy {}", p.display()))?;
            parse_policy(&text).map_err(|e| anyhow::anyhow!("--policy {}: {e}", p.display()))?
        }
    };
    let mut identities = keys::load(&a.keys)?;
    if a.skip >= identities.len() {
        bail!(
            "--skip {}: the key file has only {}",
            a.skip,
            identities.len()
        );
    }
    identities.drain(..a.skip);
    if let Some(n) = a.sessions {
        if n > identities.len() {
            bail!("--sessions {n}: the key file has only {}", identities.len());
        }
        identities.truncate(n);
    }
    if a.connect_rate <= 0.0 {
        bail!("--connect-rate must be positive");
    }
    let stop = stop_flag()?;
    let start = Instant::now();
    let marks = Arc::new(Mutex::new(Vec::new()));
    let mut signals = signal_hook::iterator::Signals::new([signal_hook::consts::SIGUSR1])?;
    let m = Arc::clone(&marks);
    std::thread::spawn(move || {
        for _ in signals.forever() {
            let t = u64::try_from(start.elapsed().as_nanos()).unwrap_or(u64::MAX);
            if let Ok(mut v) = m.lock() {
                v.push(t);
            }
        }
    });
    let cfg = clients::Config {
        gateway: a.gateway,
        gateway_public: gateway_key(&a.gateway_public)?,
        identities,
        paths: a.paths,
        sockets_per_path: a.sockets,
        connect_rate: a.connect_rate,
        pps: a.pps,
        packet_len: a.packet_len,
        echo: a.echo,
        duration: a.duration,
        policy,
        flap: a.flap,
        replay_every: a.replay_every,
        stale_grace: a.stale_grace,
        status_file: a.status_file,
        terminate_at_end: !a.no_terminate,
        handshake_attempts: a.handshake_attempts,
        capture: a.capture,
        seed: a.seed,
    };
    println!(
        "{}",
        serde_json::json!({"loadgen": "started", "sessions": cfg.identities.len()})
    );
    let report = clients::run(cfg, start, &stop, marks)?;
    write_report(a.report.as_ref(), &report)
}

fn flood_cmd(a: FloodArgs) -> Result<()> {
    let captured = |field: &str| -> Result<Vec<Vec<u8>>> {
        let Some(p) = &a.replay else {
            bail!("--kind {:?} needs --replay <clients report>", a.kind);
        };
        let v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(p)?)
            .with_context(|| format!("--replay {}: not a clients report", p.display()))?;
        let list: Vec<String> = serde_json::from_value(v["captured"][field].clone())
            .with_context(|| format!("--replay {}: no captured.{field}", p.display()))?;
        flood::from_hex(&list)
    };
    let pool = match a.kind {
        flood::Kind::ReattachRandom => flood::reattach_pool(&[], a.pool, a.seed),
        flood::Kind::ReattachForged => {
            let sids = a
                .session_ids
                .iter()
                .map(|s| u64::from_str_radix(s.trim(), 16).map(SessionId))
                .collect::<Result<Vec<_>, _>>()
                .context("--session-ids: hex SessionIds, comma-separated")?;
            if sids.is_empty() {
                bail!("--kind reattach-forged needs --session-ids");
            }
            flood::reattach_pool(&sids, a.pool, a.seed)
        }
        flood::Kind::ReattachReplay => captured("reattach_requests")?,
        flood::Kind::Handshake => match &a.replay {
            Some(_) => captured("handshake_inits")?,
            None => {
                let key = a
                    .gateway_public
                    .as_deref()
                    .context("--kind handshake needs --gateway-public (or --replay)")?;
                flood::handshake_pool(gateway_key(key)?, a.pool)
            }
        },
    };
    let stop = stop_flag()?;
    println!(
        "{}",
        serde_json::json!({"flood": "started", "pool": pool.len()})
    );
    let aim = flood::Aim {
        gateway: a.gateway,
        bind: a.bind,
        sockets: a.sockets,
        rate: a.rate,
        duration: a.duration,
    };
    let r = flood::run(a.kind, &pool, aim, &stop)?;
    write_report(a.report.as_ref(), &r)
}

fn main() -> Result<()> {
    match Cli::parse().cmd {
        Cmd::Keys {
            count,
            inner_base,
            keys: k,
            clients_file,
        } => {
            if count == 0 {
                bail!("--count must be at least 1");
            }
            keys::generate(count, inner_base, &k, &clients_file)
        }
        Cmd::Clients(a) => clients_cmd(a),
        Cmd::Flood(a) => flood_cmd(a),
        Cmd::Echo { listen, report } => {
            let stop = stop_flag()?;
            let s = echo::serve(listen, &stop)?;
            write_report(report.as_ref(), &s)
        }
    }
}
