//! `jumping-impair`: the impairing UDP relay. See the library documentation for the topology
//! and the nftables redirect it needs.
#![forbid(unsafe_code)]

use std::collections::HashMap;
use std::io::{self, Write};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Parser;
use jumping_impair::{DelayQueue, Direction, Impairment, Schedule, Stats, Verdict};
use mio::net::{UdpSocket, UnixStream};
use mio::{Events, Interest, Poll, Token};

/// Seeded, reproducible UDP impairment relay (loss, bursts, delay, jitter).
///
/// Impairment values come from --config FILE (JSON `Impairment`) if given; flags given
/// explicitly override the file's values. Runs until SIGTERM or SIGINT, then writes the final
/// statistics and exits 0.
#[derive(Parser, Debug)]
#[command(name = "jumping-impair", version)]
struct Args {
    /// Address the relay listens on, where the nftables redirect sends client traffic
    /// (e.g. 0.0.0.0:40000).
    #[arg(long, value_name = "IP:PORT")]
    listen: SocketAddr,
    /// The real gateway address (e.g. 10.250.2.2:51820).
    #[arg(long, value_name = "IP:PORT")]
    upstream: SocketAddr,
    /// A JSON file holding an Impairment ({"seed":1,"loss":0.05,"delay_ms":10,...}).
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Seed of the deterministic random streams [default: 0].
    #[arg(long)]
    seed: Option<u64>,
    /// Loss probability per packet and direction, within 0..=1 [default: 0].
    #[arg(long)]
    loss: Option<f64>,
    /// Fixed delay in milliseconds [default: 0].
    #[arg(long)]
    delay_ms: Option<u64>,
    /// Extra delay drawn uniformly from [0, jitter] milliseconds [default: 0].
    #[arg(long)]
    jitter_ms: Option<u64>,
    /// Period of loss bursts in milliseconds, 0 = none [default: 0].
    #[arg(long)]
    burst_every_ms: Option<u64>,
    /// Length of each loss burst in milliseconds [default: 0].
    #[arg(long)]
    burst_len_ms: Option<u64>,
    /// Where to write the statistics as JSON (every second and on exit, atomically).
    #[arg(long, value_name = "PATH")]
    stats_file: Option<PathBuf>,
}

/// Upstream flows idle this long are removed.
const FLOW_IDLE: Duration = Duration::from_secs(120);
/// How often statistics are written (and idle flows looked for).
const TICK: Duration = Duration::from_secs(1);
/// Datagrams read from one socket per wakeup before looking at the others (fairness).
const DRAIN_BUDGET: usize = 512;
/// Socket buffer sizes requested (SO_RCVBUFFORCE/SO_SNDBUFFORCE as root, else best effort).
const SOCKET_BUFFER: usize = 4 << 20;

const LISTEN: Token = Token(0);
const SIGNAL: Token = Token(1);
const FIRST_FLOW: usize = 2;

fn main() -> ExitCode {
    let args = Args::parse();
    let config = match impairment(&args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("jumping-impair: {e:#}");
            return ExitCode::from(2);
        }
    };
    match run(&args, config) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("jumping-impair: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// The configuration from --config and the flags, validated.
fn impairment(args: &Args) -> Result<Impairment> {
    let mut c = match &args.config {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("--config {}: cannot read", path.display()))?;
            serde_json::from_str::<Impairment>(&text).with_context(|| {
                format!(
                    "--config {}: not a valid impairment JSON object (keys: seed, loss, \
                     delay_ms, jitter_ms, burst_every_ms, burst_len_ms)",
                    path.display()
                )
            })?
        }
        None => Impairment::default(),
    };
    let overrides = [
        (&mut c.seed, args.seed),
        (&mut c.delay_ms, args.delay_ms),
        (&mut c.jitter_ms, args.jitter_ms),
        (&mut c.burst_every_ms, args.burst_every_ms),
        (&mut c.burst_len_ms, args.burst_len_ms),
    ];
    for (field, value) in overrides {
        if let Some(v) = value {
            *field = v;
        }
    }
    if let Some(loss) = args.loss {
        c.loss = loss;
    }
    c.validate().context("invalid impairment")?;
    if args.upstream.ip().is_unspecified() || args.upstream.port() == 0 {
        bail!(
            "--upstream {}: give the gateway's real address and port, e.g. 10.250.2.2:51820",
            args.upstream
        );
    }
    if args.listen.port() == 0 {
        bail!(
            "--listen {}: give the port the nftables redirect points to, e.g. 0.0.0.0:40000",
            args.listen
        );
    }
    Ok(c)
}

/// Asks for big socket buffers, so that bursts are absorbed rather than dropped by the kernel.
fn enlarge_buffers(sock: &std::net::UdpSocket) {
    use nix::sys::socket::{setsockopt, sockopt};
    if setsockopt(sock, sockopt::RcvBufForce, &SOCKET_BUFFER).is_err() {
        let _ = setsockopt(sock, sockopt::RcvBuf, &SOCKET_BUFFER);
    }
    if setsockopt(sock, sockopt::SndBufForce, &SOCKET_BUFFER).is_err() {
        let _ = setsockopt(sock, sockopt::SndBuf, &SOCKET_BUFFER);
    }
}

fn bind_udp(addr: SocketAddr) -> io::Result<UdpSocket> {
    let sock = std::net::UdpSocket::bind(addr)?;
    enlarge_buffers(&sock);
    sock.set_nonblocking(true)?;
    Ok(UdpSocket::from_std(sock))
}

/// Writes `stats` to `path` atomically (temporary file, then rename).
fn write_stats(path: &Path, stats: &Stats) -> Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let mut text = serde_json::to_vec(stats)?;
    text.push(b'\n');
    std::fs::write(&tmp, &text).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("renaming to {}", path.display()))?;
    Ok(())
}

struct Flow {
    sock: UdpSocket,
    client: SocketAddr,
    last_active: Instant,
}

struct Relay {
    poll: Poll,
    listen: UdpSocket,
    upstream: SocketAddr,
    flows: HashMap<Token, Flow>,
    by_client: HashMap<SocketAddr, Token>,
    next_token: usize,
    schedule_up: Schedule,
    schedule_down: Schedule,
    queue_up: DelayQueue<(Token, Box<[u8]>)>,
    queue_down: DelayQueue<(SocketAddr, Box<[u8]>)>,
    stats: Stats,
    start: Instant,
    buf: Vec<u8>,
    /// Sockets whose drain budget ran out: read them again without waiting.
    again: Vec<Token>,
}

impl Relay {
    fn elapsed(&self) -> Duration {
        self.start.elapsed()
    }

    /// Reads up to the budget from the listen socket; returns whether it was left readable.
    fn drain_listen(&mut self) -> bool {
        let mut errors = 0;
        for _ in 0..DRAIN_BUDGET {
            match self.listen.recv_from(&mut self.buf) {
                Ok((n, from)) => self.client_packet(from, n),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return false,
                Err(_) => {
                    self.stats.recv_errors += 1;
                    errors += 1;
                    if errors > 64 {
                        return true;
                    }
                }
            }
        }
        true
    }

    fn client_packet(&mut self, from: SocketAddr, len: usize) {
        let now = Instant::now();
        let elapsed = now.duration_since(self.start);
        let verdict = self.schedule_up.decide(elapsed);
        self.stats.upstream.record(&verdict);
        let token = match self.flow_for(from, now) {
            Some(t) => t,
            None => {
                // Counted as received by `record`; account for it as not sent.
                self.stats.flow_errors += 1;
                if matches!(verdict, Verdict::Deliver { .. }) {
                    self.stats.upstream.dropped_send += 1;
                }
                return;
            }
        };
        if let Verdict::Deliver { after } = verdict {
            let data: Box<[u8]> = self.buf[..len].into();
            self.queue_up.push(elapsed + after, (token, data));
            self.stats.upstream.set_queue(self.queue_up.len());
        }
    }

    fn flow_for(&mut self, client: SocketAddr, now: Instant) -> Option<Token> {
        if let Some(&t) = self.by_client.get(&client) {
            if let Some(f) = self.flows.get_mut(&t) {
                f.last_active = now;
            }
            return Some(t);
        }
        let any: SocketAddr = match self.upstream {
            SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
            SocketAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
        };
        let mut sock = bind_udp(any).ok()?;
        sock.connect(self.upstream).ok()?;
        let token = Token(self.next_token);
        self.poll
            .registry()
            .register(&mut sock, token, Interest::READABLE)
            .ok()?;
        self.next_token += 1;
        self.flows.insert(
            token,
            Flow {
                sock,
                client,
                last_active: now,
            },
        );
        self.by_client.insert(client, token);
        self.stats.flows += 1;
        self.stats.flows_active = self.flows.len() as u64;
        Some(token)
    }

    /// Reads up to the budget from one upstream socket; returns whether it was left readable.
    fn drain_flow(&mut self, token: Token) -> bool {
        let mut errors = 0;
        for _ in 0..DRAIN_BUDGET {
            let Some(flow) = self.flows.get_mut(&token) else {
                return false;
            };
            match flow.sock.recv(&mut self.buf) {
                Ok(n) => {
                    let now = Instant::now();
                    flow.last_active = now;
                    let client = flow.client;
                    let elapsed = now.duration_since(self.start);
                    let verdict = self.schedule_down.decide(elapsed);
                    self.stats.downstream.record(&verdict);
                    if let Verdict::Deliver { after } = verdict {
                        let data: Box<[u8]> = self.buf[..n].into();
                        self.queue_down.push(elapsed + after, (client, data));
                        self.stats.downstream.set_queue(self.queue_down.len());
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return false,
                Err(_) => {
                    // E.g. ECONNREFUSED after an ICMP port unreachable: reported once.
                    self.stats.recv_errors += 1;
                    errors += 1;
                    if errors > 64 {
                        return true;
                    }
                }
            }
        }
        true
    }

    /// Sends every packet whose time has come, in release order.
    fn release_due(&mut self) {
        let now = self.elapsed();
        while let Some(r) = self.queue_up.pop_due(now) {
            let (token, data) = r.item;
            let sent = self
                .flows
                .get(&token)
                .is_some_and(|f| f.sock.send(&data).is_ok_and(|n| n == data.len()));
            let s = &mut self.stats.upstream;
            if sent {
                s.forwarded += 1;
            } else {
                s.dropped_send += 1;
            }
            s.reordered += u64::from(r.overtook);
        }
        self.stats.upstream.set_queue(self.queue_up.len());
        while let Some(r) = self.queue_down.pop_due(now) {
            let (client, data) = r.item;
            let sent = self
                .listen
                .send_to(&data, client)
                .is_ok_and(|n| n == data.len());
            let s = &mut self.stats.downstream;
            if sent {
                s.forwarded += 1;
            } else {
                s.dropped_send += 1;
            }
            s.reordered += u64::from(r.overtook);
        }
        self.stats.downstream.set_queue(self.queue_down.len());
    }

    fn reap_idle(&mut self, now: Instant) {
        let idle: Vec<Token> = self
            .flows
            .iter()
            .filter(|(_, f)| now.duration_since(f.last_active) >= FLOW_IDLE)
            .map(|(t, _)| *t)
            .collect();
        for t in idle {
            if let Some(mut f) = self.flows.remove(&t) {
                let _ = self.poll.registry().deregister(&mut f.sock);
                self.by_client.remove(&f.client);
                self.stats.flows_reaped += 1;
            }
        }
        self.stats.flows_active = self.flows.len() as u64;
    }

    fn next_timeout(&self, next_tick: Instant) -> Duration {
        if !self.again.is_empty() {
            return Duration::ZERO;
        }
        let now = Instant::now();
        let elapsed = now.duration_since(self.start);
        let mut timeout = next_tick.saturating_duration_since(now);
        for release in [self.queue_up.next_release(), self.queue_down.next_release()]
            .into_iter()
            .flatten()
        {
            timeout = timeout.min(release.saturating_sub(elapsed));
        }
        timeout
    }

    fn snapshot(&mut self) -> &Stats {
        self.stats.elapsed_ms = u64::try_from(self.elapsed().as_millis()).unwrap_or(u64::MAX);
        &self.stats
    }
}

fn run(args: &Args, config: Impairment) -> Result<()> {
    let poll = Poll::new().context("creating the poller")?;
    let mut listen =
        bind_udp(args.listen).with_context(|| format!("--listen {}: cannot bind", args.listen))?;
    poll.registry()
        .register(&mut listen, LISTEN, Interest::READABLE)?;
    let (signal_rx, signal_tx) =
        std::os::unix::net::UnixStream::pair().context("creating the signal pipe")?;
    signal_rx.set_nonblocking(true)?;
    signal_tx.set_nonblocking(true)?;
    let mut signal_rx = UnixStream::from_std(signal_rx);
    poll.registry()
        .register(&mut signal_rx, SIGNAL, Interest::READABLE)?;
    for sig in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        signal_hook::low_level::pipe::register(sig, signal_tx.try_clone()?)
            .context("installing the signal handler")?;
    }
    if let Some(path) = &args.stats_file {
        write_stats(path, &Stats::default())
            .with_context(|| format!("--stats-file {}: cannot write", path.display()))?;
    }

    let mut relay = Relay {
        poll,
        listen,
        upstream: args.upstream,
        flows: HashMap::new(),
        by_client: HashMap::new(),
        next_token: FIRST_FLOW,
        schedule_up: Schedule::new(&config, Direction::Upstream),
        schedule_down: Schedule::new(&config, Direction::Downstream),
        queue_up: DelayQueue::new(),
        queue_down: DelayQueue::new(),
        stats: Stats::default(),
        start: Instant::now(),
        buf: vec![0u8; 65536],
        again: Vec::new(),
    };

    let started = serde_json::json!({
        "impair": "started",
        "listen": args.listen.to_string(),
        "upstream": args.upstream.to_string(),
        "config": config,
    });
    {
        let mut out = io::stdout().lock();
        writeln!(out, "{started}")?;
        out.flush()?;
    }

    let mut events = Events::with_capacity(1024);
    let mut next_tick = Instant::now() + TICK;
    let mut stop = false;
    while !stop {
        let timeout = relay.next_timeout(next_tick);
        match relay.poll.poll(&mut events, Some(timeout)) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e).context("polling"),
        }
        let mut ready: Vec<Token> = std::mem::take(&mut relay.again);
        for ev in events.iter() {
            match ev.token() {
                SIGNAL => stop = true,
                t => ready.push(t),
            }
        }
        ready.sort_unstable();
        ready.dedup();
        for t in ready {
            let left = if t == LISTEN {
                relay.drain_listen()
            } else {
                relay.drain_flow(t)
            };
            if left {
                relay.again.push(t);
            }
            relay.release_due();
        }
        relay.release_due();
        let now = Instant::now();
        if now >= next_tick {
            relay.reap_idle(now);
            if let Some(path) = &args.stats_file {
                // A failed periodic write is retried next second; the final one is reported.
                let _ = write_stats(path, relay.snapshot());
            }
            next_tick = now + TICK;
        }
    }

    let stats = relay.snapshot().clone();
    if let Some(path) = &args.stats_file {
        write_stats(path, &stats)?;
    }
    let stopped = serde_json::json!({ "impair": "stopped", "stats": stats });
    // Nobody may be reading any more (closed pipe): that is no reason to fail.
    let mut out = io::stdout().lock();
    let _ = writeln!(out, "{stopped}").and_then(|()| out.flush());
    Ok(())
}
