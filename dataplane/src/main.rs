//! `jumping-dataplane`: the gateway's packet path as its own process.
//!
//! Reads its configuration (embedded defaults, overridden by `--config FILE`), chooses the
//! backend (AF_XDP, else io_uring, the reason logged) and the inside interface (a TUN device,
//! or an inside NIC with its own XDP program and one AF_XDP socket per worker queue; logged),
//! starts one pinned worker per configured CPU and the control thread, and runs until SIGINT
//! or SIGTERM; then the workers stop, the AF_XDP sockets and UMEMs are freed, the XDP programs
//! are detached (they are attached through BPF links, which the kernel also removes if the
//! process dies) and the control socket file is removed.

use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use anyhow::{bail, Context as _, Result};
use clap::Parser;
use jumping_dataplane::commands;
use jumping_dataplane::config::{BackendChoice, Config, InsideKind, XdpMode};
use jumping_dataplane::control::{ControlServer, WorkerHandle};
use jumping_dataplane::metrics;
use jumping_dataplane::runtime::{
    handoff_mesh, Clock, Inside, Links, NextHop, SharedStats, WorkerIo, WorkerLoop,
};
use jumping_dataplane::tun::{Tun, TunRing};
use jumping_dataplane::uring::{bind_steered, UringUdp};
use jumping_dataplane::worker::Worker;
use jumping_dataplane::xsk::{EthTemplate, L2Template, XskConfig, XskRx};
use jumping_dataplane_api::Backend;
use observe::log::LogFormat;
use observe::metrics::MetricsServer;

#[derive(Parser, Debug)]
#[command(name = "jumping-dataplane", version, about = "Jumping data plane")]
struct Args {
    /// TOML configuration overriding the embedded defaults.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Check the configuration and exit.
    #[arg(long)]
    check_config: bool,
    /// Print the embedded default configuration and exit.
    #[arg(long)]
    print_default_config: bool,
    /// Log levels per module (over JUMPING_LOG, RUST_LOG and the `log` key).
    #[arg(long)]
    log: Option<String>,
    /// Log format: auto (human on a terminal, JSON otherwise), human, json.
    #[arg(long)]
    log_format: Option<LogFormat>,
}

/// What stays alive while AF_XDP is in use: dropping it detaches the program.
struct XdpAttachment {
    _ebpf: aya::Ebpf,
}

/// A worker's inside interface before its thread starts (a TUN queue's io_uring is set up on
/// the worker's thread).
enum PendingInside {
    Tun(Tun),
    Ready(Inside),
}

fn main() {
    if let Err(e) = run() {
        eprintln!("jumping-dataplane: {e:#}");
        std::process::exit(1);
    }
}

fn run() -> Result<()> {
    let args = Args::parse();
    if args.print_default_config {
        print!("{}", jumping_dataplane::config::DEFAULT_TOML);
        return Ok(());
    }
    let config = match &args.config {
        Some(p) => {
            let text = std::fs::read_to_string(p)
                .with_context(|| format!("reading the configuration {}", p.display()))?;
            Config::from_toml(&text).with_context(|| format!("in {}", p.display()))?
        }
        None => Config::defaults(),
    };
    let format = match args.log_format {
        Some(f) => f,
        None => config.log_format.parse().unwrap_or_default(),
    };
    observe::log::init(format, args.log.as_deref(), &config.log).map_err(anyhow::Error::msg)?;
    observe::log::set_node_id(config.node_id);
    if let Some(ids) = core_affinity::get_core_ids() {
        if let Some(cpu) = config
            .cpus
            .iter()
            .find(|c| !ids.iter().any(|i| i.id == **c))
        {
            bail!(
                "configuration key `cpus`: CPU {cpu} is not available to this process (it may run on {:?})",
                ids.iter().map(|i| i.id).collect::<Vec<_>>()
            );
        }
    }
    if args.check_config {
        println!("configuration ok");
        return Ok(());
    }
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(sig, Arc::clone(&stop))
            .context("installing signal handlers")?;
    }
    let n = config.cpus.len();
    let (insides, inside_attachment, inside_routes) = match config.inside.kind {
        InsideKind::Tun => {
            let tuns = Tun::create_queues(&config.inside.tun, n).with_context(|| {
                format!("creating the TUN device {} (inside.tun)", config.inside.tun)
            })?;
            tracing::info!(inside = "tun", device = %config.inside.tun, "inside interface chosen");
            (
                tuns.into_iter().map(PendingInside::Tun).collect::<Vec<_>>(),
                None,
                None,
            )
        }
        InsideKind::AfXdp => {
            let (insides, a, routes) = inside_xdp(&config).with_context(|| {
                format!(
                    "setting up AF_XDP on the inside NIC {} (inside.kind = \"af_xdp\")",
                    config.inside.interface
                )
            })?;
            tracing::info!(
                inside = "af_xdp",
                interface = %config.inside.interface,
                queues = n,
                "inside interface chosen"
            );
            (
                insides.into_iter().map(PendingInside::Ready).collect(),
                Some(a),
                Some(routes),
            )
        }
    };

    let (ios, attachment) = match config.backend {
        BackendChoice::IoUring => {
            tracing::info!(
                backend = "io_uring",
                reason = "configured",
                "backend chosen"
            );
            (uring_ios(&config)?, None)
        }
        BackendChoice::AfXdp => {
            let (ios, a) = xdp_ios(&config).context("setting up AF_XDP (backend = \"af_xdp\")")?;
            tracing::info!(backend = "af_xdp", reason = "configured", "backend chosen");
            (ios, Some(a))
        }
        BackendChoice::Auto => match xdp_ios(&config) {
            Ok((ios, a)) => {
                tracing::info!(backend = "af_xdp", reason = "available", "backend chosen");
                (ios, Some(a))
            }
            Err(e) => {
                tracing::warn!(
                    backend = "io_uring",
                    reason = %format!("{e:#}"),
                    "AF_XDP unavailable; using io_uring"
                );
                (uring_ios(&config)?, None)
            }
        },
    };
    let backend = match ios.first() {
        Some(WorkerIo::Xsk { .. }) => Backend::AfXdp,
        _ => Backend::IoUring,
    };
    let clock = Clock::start();
    let grace = jumping_protocol::policy::Policy::default().key_grace;
    let mut handles = Vec::with_capacity(n);
    let mut all_stats = Vec::with_capacity(n);
    let mut threads = Vec::with_capacity(n);
    let mesh = handoff_mesh(n);
    for (i, ((io, pending), (from_peers, to_peers))) in
        ios.into_iter().zip(insides).zip(mesh).enumerate()
    {
        let (cmd_tx, cmd_rx) = commands::channel(4096);
        let (to_worker, control_in) = rtrb::RingBuffer::new(4096);
        let (control_out, from_worker) = rtrb::RingBuffer::new(4096);
        let stats = Arc::new(SharedStats::default());
        all_stats.push(Arc::clone(&stats));
        handles.push(WorkerHandle {
            commands: cmd_tx,
            to_worker,
            from_worker,
            stats: Arc::clone(&stats),
        });
        let cpu = config.cpus[i];
        let capacity = config.session_capacity;
        let key_cache = config.key_cache_entries;
        let stop = Arc::clone(&stop);
        let links = Links {
            from_peers,
            to_peers,
            control_in,
            control_out,
        };
        let index = u8::try_from(i).context("too many workers")?;
        let t = std::thread::Builder::new()
            .name(format!("jd-worker-{i}"))
            .spawn(move || {
                if !core_affinity::set_for_current(core_affinity::CoreId { id: cpu }) {
                    tracing::warn!(worker = i, cpu, "could not pin the worker to its CPU");
                }
                let mut worker = Worker::new(index, capacity, cmd_rx, grace);
                worker.set_key_cache(key_cache);
                let inside = match pending {
                    PendingInside::Tun(tun) => match TunRing::new(tun) {
                        Ok(mut t) => {
                            t.set_batch_submit(true);
                            Inside::Tun(Box::new(t))
                        }
                        Err(e) => {
                            tracing::error!(worker = i, error = %e, "setting up the TUN queue's io_uring");
                            return Err(e);
                        }
                    },
                    PendingInside::Ready(inside) => inside,
                };
                let mut lp = WorkerLoop::new(index, worker, io, inside, links, stats, cpu as u32);
                tracing::info!(worker = i, cpu, "worker running");
                lp.run(clock, &stop)
            })
            .context("starting a worker thread")?;
        threads.push(t);
    }
    let mut server = ControlServer::bind(&config.control_socket, handles, backend, clock)
        .with_context(|| {
            format!(
                "listening on {} (control_socket)",
                config.control_socket.display()
            )
        })?;
    server.set_capacity(config.session_capacity);
    let _metrics = match config.metrics_addr()? {
        None => None,
        Some(addr) => {
            if !observe::metrics::is_local(&addr) {
                tracing::warn!(%addr, "metrics are served on an address other hosts can reach");
            }
            let sources = metrics::Sources {
                workers: all_stats,
                backend: backend.as_str(),
                xdp_pin_dir: attachment.as_ref().map(|_| config.bpf_pin_dir.clone()),
            };
            let render: observe::metrics::Render = Arc::new(move || metrics::render(&sources));
            let m =
                MetricsServer::start(addr, render).context("configuration key `metrics_listen`")?;
            tracing::info!(addr = %m.addr(), "metrics on http://{}/metrics", m.addr());
            Some(m)
        }
    };
    if let Some(routes) = inside_routes {
        server.set_inside_routes(routes);
    }
    tracing::info!(
        socket = %config.control_socket.display(),
        workers = n,
        backend = backend.as_str(),
        "data plane ready"
    );
    server.run(&stop);
    let mut failed = false;
    for (i, t) in threads.into_iter().enumerate() {
        match t.join() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                tracing::error!(worker = i, error = %e, "worker stopped on an I/O error");
                failed = true;
            }
            Err(_) => {
                tracing::error!(worker = i, "worker panicked");
                failed = true;
            }
        }
    }
    drop(attachment);
    drop(inside_attachment);
    tracing::info!("data plane stopped; XDP detached, sockets closed");
    if failed {
        bail!("a worker failed");
    }
    Ok(())
}

fn uring_ios(config: &Config) -> Result<Vec<WorkerIo>> {
    let sockets = bind_steered(config.listen, config.cpus.len())
        .with_context(|| format!("binding the tunnel sockets on {} (listen)", config.listen))?;
    sockets
        .into_iter()
        .map(|s| {
            let mut u = UringUdp::new(s).context("setting up io_uring")?;
            // Sends go to the kernel with the worker's next receive submission.
            u.set_batch_submit(true);
            Ok(WorkerIo::Uring(Box::new(u)))
        })
        .collect()
}

fn read_sys(interface: &str, what: &str) -> Result<String> {
    let p = format!("/sys/class/net/{interface}/{what}");
    Ok(std::fs::read_to_string(&p)
        .with_context(|| format!("reading {p} (is `interface` right?)"))?
        .trim()
        .to_owned())
}

fn xdp_ios(config: &Config) -> Result<(Vec<WorkerIo>, XdpAttachment)> {
    let iface = &config.interface;
    let mac = jumping_dataplane::config::parse_mac(&read_sys(iface, "address")?)
        .with_context(|| format!("interface {iface} has no Ethernet address"))?;
    check_queues(iface, config.cpus.len())?;
    let (src_ip, src_ip6) = match config.listen.ip() {
        IpAddr::V4(a) if !a.is_unspecified() => (a, None),
        IpAddr::V6(a) if !a.is_unspecified() => (std::net::Ipv4Addr::UNSPECIFIED, Some(a)),
        _ => bail!(
            "AF_XDP sends from `listen`, which is {}: set it to the gateway's outside address",
            config.listen
        ),
    };
    prepare_pin_dir(config)?;
    let mut ebpf = jumping_ebpf::load(&config.bpf_pin_dir).context("loading the XDP program")?;
    jumping_ebpf::add_tunnel_port(&mut ebpf, config.listen.port())
        .context("programming the tunnel port")?;
    let flags = match config.af_xdp.xdp_mode {
        XdpMode::Driver => aya::programs::XdpFlags::DRV_MODE,
        XdpMode::Skb => aya::programs::XdpFlags::SKB_MODE,
    };
    jumping_ebpf::xdp_program(&mut ebpf)
        .context("finding the XDP program")?
        .attach(iface, flags)
        .with_context(|| format!("attaching XDP to {iface}"))?;
    let xcfg = xsk_config(config);
    let next_hop = config.next_hop_mac();
    let shared_next_hop = if next_hop.is_some() {
        NextHop::configured()
    } else {
        NextHop::learnt()
    };
    let l2 = L2Template {
        src_mac: mac,
        dst_mac: next_hop.unwrap_or([0xFF; 6]),
        src_ip,
        src_ip6,
        src_port: config.listen.port(),
    };
    let mut ios = Vec::with_capacity(config.cpus.len());
    for q in 0..config.cpus.len() {
        let mut xsk = XskRx::bind(iface, q as u32, xcfg)
            .with_context(|| format!("binding an AF_XDP socket to {iface} queue {q}"))?;
        xsk.set_batch_tx_kicks(true);
        jumping_ebpf::set_xsk(&mut ebpf, q as u32, xsk.fd())
            .with_context(|| format!("registering the AF_XDP socket of queue {q}"))?;
        ios.push(WorkerIo::Xsk {
            xsk: Box::new(xsk),
            l2,
            next_hop: shared_next_hop.clone(),
        });
    }
    Ok((ios, XdpAttachment { _ebpf: ebpf }))
}

fn check_queues(iface: &str, workers: usize) -> Result<()> {
    let queues = std::fs::read_dir(format!("/sys/class/net/{iface}/queues"))
        .with_context(|| format!("reading the queues of {iface}"))?
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with("rx-"))
        .count();
    if queues < workers {
        bail!(
            "{iface} has {queues} receive queue(s) but `cpus` lists {workers} workers: list at most {queues} CPUs or add queues"
        );
    }
    Ok(())
}

fn prepare_pin_dir(config: &Config) -> Result<()> {
    let on_bpffs = config
        .bpf_pin_dir
        .ancestors()
        .find(|p| p.exists())
        .and_then(|p| jumping_dataplane::sys::fs_type(p).ok())
        == Some(jumping_dataplane::sys::BPF_FS_MAGIC);
    if !on_bpffs {
        bail!(
            "bpf_pin_dir {} is not on a bpffs: mount one (`mount -t bpf bpf /sys/fs/bpf`) or point bpf_pin_dir at one",
            config.bpf_pin_dir.display()
        );
    }
    std::fs::create_dir_all(&config.bpf_pin_dir).with_context(|| {
        format!(
            "creating {} (bpf_pin_dir; is bpffs mounted?)",
            config.bpf_pin_dir.display()
        )
    })?;
    Ok(())
}

fn xsk_config(config: &Config) -> XskConfig {
    XskConfig {
        frames: config.af_xdp.frames,
        frame_size: config.af_xdp.frame_size,
        ring_size: config.af_xdp.ring_size,
        batch: config.af_xdp.batch,
        force_copy: config.af_xdp.copy,
    }
}

/// Attach the inside XDP program to `inside.interface` and bind one AF_XDP socket per worker
/// on its queues; the program's routes map is returned for the control thread.
fn inside_xdp(config: &Config) -> Result<(Vec<Inside>, XdpAttachment, jumping_ebpf::InsideRoutes)> {
    let iface = &config.inside.interface;
    let mac = jumping_dataplane::config::parse_mac(&read_sys(iface, "address")?)
        .with_context(|| format!("interface {iface} has no Ethernet address"))?;
    check_queues(iface, config.cpus.len())?;
    prepare_pin_dir(config)?;
    let mut ebpf =
        jumping_ebpf::load_inside(&config.bpf_pin_dir).context("loading the inside XDP program")?;
    let mut routes =
        jumping_ebpf::InsideRoutes::take(&mut ebpf).context("opening the inside routes map")?;
    let stale = routes
        .clear()
        .context("clearing the inside routes of a previous run")?;
    if stale > 0 {
        tracing::info!(stale, "removed inside routes left by a previous run");
    }
    let flags = match config.af_xdp.xdp_mode {
        XdpMode::Driver => aya::programs::XdpFlags::DRV_MODE,
        XdpMode::Skb => aya::programs::XdpFlags::SKB_MODE,
    };
    jumping_ebpf::inside_program(&mut ebpf)
        .context("finding the inside XDP program")?
        .attach(iface, flags)
        .with_context(|| format!("attaching the inside XDP program to {iface}"))?;
    let xcfg = xsk_config(config);
    let next_hop = config.inside_next_hop_mac();
    let shared_next_hop = if next_hop.is_some() {
        NextHop::configured()
    } else {
        NextHop::learnt()
    };
    let l2 = EthTemplate {
        src_mac: mac,
        dst_mac: next_hop.unwrap_or([0xFF; 6]),
    };
    let mut insides = Vec::with_capacity(config.cpus.len());
    for q in 0..config.cpus.len() {
        let mut xsk = XskRx::bind(iface, q as u32, xcfg)
            .with_context(|| format!("binding an AF_XDP socket to {iface} queue {q}"))?;
        xsk.set_batch_tx_kicks(true);
        jumping_ebpf::set_inside_xsk(&mut ebpf, q as u32, xsk.fd())
            .with_context(|| format!("registering the inside AF_XDP socket of queue {q}"))?;
        insides.push(Inside::Xsk {
            xsk: Box::new(xsk),
            l2,
            next_hop: shared_next_hop.clone(),
        });
    }
    Ok((insides, XdpAttachment { _ebpf: ebpf }, routes))
}
