//! `peers`: Jumping side by side with an untunnelled route and userspace WireGuard, on the same
//! namespace topology and the same CPU pinning, all measured in one run. Needs root; without it,
//! it prints `skipped: needs root` and exits successfully.
//!
//! Systems, each in its own fresh [`jumping_e2e::Net`] (client ns, NAT box with `masquerade
//! random`, gateway ns, server ns; removed on drop, also on error):
//!
//! * `untunnelled`: plain routing client → NAT box → gateway → server (the ceiling);
//! * `jumping-af_xdp`, `jumping-io_uring`: the real `jumping-dataplane` (one worker) and
//!   `jumping-control` in the gateway ns, the real `jumping-client` with its TUN in the client ns
//!   (release binaries from `--bin-dir`, default `JUMPING_BIN_DIR`, else `target/release`,
//!   built first when that default is used);
//! * `wireguard-go`, `boringtun`, `gotatun`: one userspace WireGuard instance in the client ns and
//!   one in the gateway ns (listening on 192.0.2.2:51820), configured with `wg`; client address
//!   10.99.0.2/32, `persistent-keepalive 1` on the client, tunnel MTU 1380 (Jumping's default
//!   inner MTU, so every tunnel carries the same TCP segment size). The client's WireGuard
//!   socket is unbound, so the client ns gets a main-table route to 192.0.2.0/24 via path 0
//!   (Jumping's client binds its path sockets and uses the per-source tables 101/102).
//!
//! A peer whose binary is missing is reported "not available (run scripts/setup-peers.sh)".
//!
//! Pinning: every process of the gateway ns on CPU 1 (`taskset -a`), every process of the client
//! ns, the iperf3 client and server and the probe threads on CPU 0. The gateway's receiving veth
//! (`g0`) gets GRO and threaded NAPI with its kernel thread on CPU 1 (the NAT box's `n2` has TSO
//! off so veth uses that NAPI ring), so the gateway's receive work runs on CPU 1 and not on the
//! sender's core; the server's veth (`s0`) likewise gets threaded NAPI on CPU 0 (`g1` TSO off),
//! so the server's TCP receive is not billed to the gateway core. A failing step is recorded and
//! skipped.
//!
//! Per system (one run, so ratios are taken within the run):
//!
//! 1. TCP: `iperf3 -c 10.10.0.2 -t N -J` from the client ns (bound to 10.99.0.2 for tunnels) to
//!    `iperf3 -s -1 -J` in the server ns; `end.sum_received.bits_per_second`.
//! 2. UDP: `iperf3 -u -b 0 -l 64` and `-l <large>` (default 1352 = 1380 − 28, the largest that
//!    is not fragmented at the common inner MTU): received packets/s, Gbit/s and loss.
//! 3. Gateway CPU: busy time of CPU 1 from `/proc/stat` (user+nice+system+irq+softirq) over the
//!    middle of the TCP test, divided by wall time; CPU per Gbit/s = busy cores / TCP Gbit/s.
//! 4. NAT rebind recovery (tunnels only): a probe every 5 ms from 10.99.0.2 through the tunnel
//!    to a UDP echo at 10.10.0.2:7007, then `conntrack -F` in the NAT box (the masquerade picks a
//!    new random port); recovery = time from the flush's return to the first echo of a probe
//!    sent after it, and the probes lost around it; `--rebinds` times (median and max).
//!
//! Output: `peers.json`, `peers.md`, `peers-throughput.svg`, `peers-recovery.svg` in
//! `jumping_benches::run_dir()`; the table is printed. `--quick` (2 s runs, 1 rebind) keeps the
//! harness exercised in CI; nothing here asserts a timing. Exits non-zero only when a system that
//! was available failed to run.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::Read as _;
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsRawFd as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context as _, Result};
use clap::Parser;
use jumping_benches::{report, run_dir};
use jumping_e2e::{in_ns, Net};
use serde_json::{json, Value};

/// CPU of the gateway side.
const GW_CPU: usize = 1;
/// CPU of the client side (and the traffic generator).
const CL_CPU: usize = 0;
/// Inner MTU of every tunnel (Jumping's client default).
const TUNNEL_MTU: &str = "1380";
/// The UDP echo the rebind probes go to.
const ECHO: &str = "10.10.0.2:7007";
/// The client's inner (tunnel) address.
const INNER: &str = "10.99.0.2";
/// The server.
const SERVER_IP: &str = "10.10.0.2";
/// Interval between rebind probes.
const PROBE_EVERY: Duration = Duration::from_millis(5);
/// Give up waiting for recovery after this long.
const RECOVERY_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Parser, Debug)]
#[command(about = "Jumping side by side with untunnelled routing and userspace WireGuard")]
struct Args {
    /// Seconds per iperf3 test.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// CI mode: 2-second tests and one rebind.
    #[arg(long)]
    quick: bool,
    /// Only these systems (comma-separated names, e.g. `untunnelled,jumping-af_xdp`).
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// NAT rebinds per tunnel.
    #[arg(long, default_value_t = 5)]
    rebinds: usize,
    /// Where Jumping's binaries are (default: `JUMPING_BIN_DIR`, else target/release, built
    /// first).
    #[arg(long)]
    bin_dir: Option<PathBuf>,
    /// Do not build the release binaries first.
    #[arg(long)]
    no_build: bool,
    /// UDP payload of the large-packet test, bytes.
    #[arg(long, default_value_t = 1352)]
    large: usize,
}

/// The userspace WireGuard implementations.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Wg {
    WireguardGo,
    Boringtun,
    Gotatun,
}

impl Wg {
    fn binary(self) -> &'static str {
        match self {
            Wg::WireguardGo => "wireguard-go",
            Wg::Boringtun => "boringtun-cli",
            Wg::Gotatun => "gotatun",
        }
    }

    /// Arguments to run it in the foreground on interface `iface`.
    fn args(self, iface: &str) -> Vec<String> {
        let a: &[&str] = match self {
            Wg::WireguardGo => &["-f", iface],
            Wg::Boringtun => &[iface, "--foreground", "--disable-drop-privileges"],
            Wg::Gotatun => &[
                iface,
                "--foreground",
                "--disable-drop-privileges",
                "-v",
                "error",
            ],
        };
        a.iter().map(ToString::to_string).collect()
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum System {
    Untunnelled,
    Jumping(&'static str),
    WireGuard(Wg),
}

impl System {
    fn name(self) -> &'static str {
        match self {
            System::Untunnelled => "untunnelled",
            System::Jumping("af_xdp") => "jumping-af_xdp",
            System::Jumping(_) => "jumping-io_uring",
            System::WireGuard(Wg::WireguardGo) => "wireguard-go",
            System::WireGuard(Wg::Boringtun) => "boringtun",
            System::WireGuard(Wg::Gotatun) => "gotatun",
        }
    }

    fn tunnelled(self) -> bool {
        self != System::Untunnelled
    }
}

const SYSTEMS: [System; 6] = [
    System::Untunnelled,
    System::Jumping("af_xdp"),
    System::Jumping("io_uring"),
    System::WireGuard(Wg::WireguardGo),
    System::WireGuard(Wg::Boringtun),
    System::WireGuard(Wg::Gotatun),
];

/// A program on PATH or in cargo's bin directory.
fn find_program(name: &str) -> Option<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    if let Some(h) = std::env::var_os("CARGO_HOME") {
        dirs.push(PathBuf::from(h).join("bin"));
    }
    if let Some(h) = std::env::var_os("HOME") {
        dirs.push(PathBuf::from(h).join(".cargo/bin"));
    }
    dirs.push(PathBuf::from("/root/.cargo/bin"));
    dirs.into_iter().map(|d| d.join(name)).find(|p| p.is_file())
}

/// Run `cmd` and fail with its stderr if it fails.
fn run(cmd: &mut Command) -> Result<String> {
    let out = cmd.output().with_context(|| format!("{cmd:?}"))?;
    ensure!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A shell line inside namespace `ns`.
fn ns_sh(ns: &str, line: &str) -> Result<()> {
    in_ns(ns, &["sh", "-c", line]).map(|_| ())
}

/// Child processes of one system, killed (SIGTERM, then SIGKILL) on drop, before the `Net`,
/// and files to remove after them (WireGuard UAPI sockets that some implementations leave).
#[derive(Debug, Default)]
struct Procs(Vec<(String, Child)>, Vec<PathBuf>);

impl Procs {
    fn spawn(
        &mut self,
        name: &str,
        ns: &str,
        program: &Path,
        args: &[String],
        log: &Path,
    ) -> Result<u32> {
        let err = File::create(log)?;
        let child = Command::new("ip")
            .args(["netns", "exec", ns])
            .arg(program)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(err)
            .spawn()
            .with_context(|| format!("start {}", program.display()))?;
        let pid = child.id();
        self.0.push((name.to_owned(), child));
        Ok(pid)
    }

    /// Whether every process still runs; the name of one that exited otherwise.
    fn exited(&mut self) -> Option<String> {
        self.0
            .iter_mut()
            .find_map(|(n, c)| (!matches!(c.try_wait(), Ok(None))).then(|| n.clone()))
    }
}

impl Drop for Procs {
    fn drop(&mut self) {
        for (_, c) in &mut self.0 {
            if let Ok(pid) = i32::try_from(c.id()) {
                // SAFETY: kill(2) with a pid of our own child that has not been reaped yet.
                unsafe {
                    libc::kill(pid, libc::SIGTERM);
                }
            }
        }
        for (_, c) in &mut self.0 {
            let end = Instant::now() + Duration::from_secs(5);
            while matches!(c.try_wait(), Ok(None)) && Instant::now() < end {
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
        for f in &self.1 {
            let _ = fs::remove_file(f);
        }
    }
}

/// Pin every thread of every process in namespace `ns` to `cpu`.
fn pin_ns(ns: &str, cpu: usize) -> Result<Vec<u32>> {
    let out = run(Command::new("ip").args(["netns", "pids", ns]))?;
    let pids: Vec<u32> = out
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect();
    for p in &pids {
        run(Command::new("taskset").args(["-a", "-p", "-c", &cpu.to_string(), &p.to_string()]))?;
    }
    Ok(pids)
}

/// Pids of kernel threads named `napi/<dev>-*`.
fn napi_threads(dev: &str) -> Vec<u32> {
    let prefix = format!("napi/{dev}-");
    let Ok(rd) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    rd.flatten()
        .filter_map(|e| {
            let pid = e.file_name().to_str()?.parse::<u32>().ok()?;
            let comm = fs::read_to_string(e.path().join("comm")).ok()?;
            comm.trim_end().starts_with(&prefix).then_some(pid)
        })
        .collect()
}

/// GRO and threaded NAPI on `dev` in `ns` (its sender `peer` in `peer_ns` without TSO), the
/// new NAPI kernel thread pinned to `cpu`.
fn threaded_napi(ns: &str, dev: &str, peer_ns: &str, peer: &str, cpu: usize) -> Result<Vec<u32>> {
    ns_sh(peer_ns, &format!("ethtool -K {peer} tso off"))?;
    ns_sh(ns, &format!("ethtool -K {dev} gro on"))?;
    let before = napi_threads(dev);
    ns_sh(ns, &format!("echo 1 > /sys/class/net/{dev}/threaded"))?;
    let mut new = Vec::new();
    let end = Instant::now() + Duration::from_secs(2);
    while new.is_empty() && Instant::now() < end {
        new = napi_threads(dev)
            .into_iter()
            .filter(|p| !before.contains(p))
            .collect();
        std::thread::sleep(Duration::from_millis(20));
    }
    ensure!(!new.is_empty(), "no new napi/{dev}-* kernel thread");
    for p in &new {
        run(Command::new("taskset").args(["-p", "-c", &cpu.to_string(), &p.to_string()]))?;
    }
    Ok(new)
}

/// Busy and total jiffies of one CPU from /proc/stat.
fn cpu_jiffies(cpu: usize) -> Option<(u64, u64)> {
    let stat = fs::read_to_string("/proc/stat").ok()?;
    let line = stat
        .lines()
        .find(|l| l.split_whitespace().next() == Some(&format!("cpu{cpu}")))?;
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal
    let get = |i: usize| v.get(i).copied().unwrap_or(0);
    let busy = get(0) + get(1) + get(2) + get(5) + get(6);
    let total = busy + get(3) + get(4) + get(7);
    Some((busy, total))
}

/// CPU time (ns) that task `pid` and, if `threads`, all its threads have run, from schedstat.
fn task_ns(pid: u32, threads: bool) -> u64 {
    let one = |p: &Path| {
        fs::read_to_string(p)
            .ok()
            .and_then(|s| {
                s.split_whitespace()
                    .next()
                    .and_then(|n| n.parse::<u64>().ok())
            })
            .unwrap_or(0)
    };
    if !threads {
        return one(Path::new(&format!("/proc/{pid}/schedstat")));
    }
    fs::read_dir(format!("/proc/{pid}/task"))
        .map(|rd| rd.flatten().map(|t| one(&t.path().join("schedstat"))).sum())
        .unwrap_or(0)
}

/// The gateway's own tasks: its processes (every thread) and its NAPI kernel threads.
#[derive(Clone, Debug, Default)]
struct GwTasks {
    processes: Vec<u32>,
    napi: Vec<u32>,
}

impl GwTasks {
    fn ns(&self) -> u64 {
        self.processes
            .iter()
            .map(|p| task_ns(*p, true))
            .sum::<u64>()
            + self.napi.iter().map(|p| task_ns(*p, false)).sum::<u64>()
    }
}

/// CPU busy fractions over a window: whole CPUs from /proc/stat (everything on the machine
/// that ran there, other tenants included) and the gateway's own tasks (schedstat).
struct CpuWindow {
    start: Instant,
    s: Vec<(u64, u64)>,
    tasks: GwTasks,
    tasks_ns: u64,
}

impl CpuWindow {
    fn start(tasks: &GwTasks) -> CpuWindow {
        CpuWindow {
            start: Instant::now(),
            s: [CL_CPU, GW_CPU]
                .map(|c| cpu_jiffies(c).unwrap_or((0, 0)))
                .to_vec(),
            tasks: tasks.clone(),
            tasks_ns: tasks.ns(),
        }
    }

    /// Busy fraction of wall time of CL_CPU and GW_CPU, and the cores the gateway's tasks used.
    fn stop(self) -> Value {
        let tasks_ns = self.tasks.ns().saturating_sub(self.tasks_ns);
        let wall = self.start.elapsed().as_secs_f64();
        // USER_HZ is 100 on Linux.
        let hz = 100.0;
        let mut out = serde_json::Map::new();
        for (i, c) in [CL_CPU, GW_CPU].into_iter().enumerate() {
            let (b1, t1) = cpu_jiffies(c).unwrap_or((0, 0));
            let (b0, t0) = self.s.get(i).copied().unwrap_or((0, 0));
            out.insert(
                format!("cpu{c}"),
                json!({
                    "busy_fraction": (b1.saturating_sub(b0)) as f64 / hz / wall,
                    "accounted_fraction": (t1.saturating_sub(t0)) as f64 / hz / wall,
                }),
            );
        }
        out.insert("wall_s".into(), json!(wall));
        out.insert(
            "gateway_tasks_cores".into(),
            json!(tasks_ns as f64 / 1e9 / wall),
        );
        Value::Object(out)
    }
}

/// Run `cmd` with a deadline; its stdout.
fn output_within(cmd: &mut Command, within: Duration) -> Result<String> {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("{cmd:?}"))?;
    let mut so = child.stdout.take().context("stdout")?;
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = so.read_to_string(&mut s);
        s
    });
    let end = Instant::now() + within;
    let status = loop {
        if let Some(st) = child.try_wait()? {
            break st;
        }
        if Instant::now() >= end {
            let _ = child.kill();
            let _ = child.wait();
            bail!("{cmd:?} did not finish within {within:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let out = reader.join().unwrap_or_default();
    let mut err = String::new();
    if let Some(mut e) = child.stderr.take() {
        let _ = e.read_to_string(&mut err);
    }
    if !status.success() && out.trim().is_empty() {
        bail!("{cmd:?}: {status}: {}", err.trim());
    }
    Ok(out)
}

/// One iperf3 test: a one-off server in the server ns, the client in the client ns, both on
/// CL_CPU. Returns the client's JSON and the CPU window over its middle.
fn iperf(
    net: &Net,
    tasks: &GwTasks,
    tunnelled: bool,
    extra: &[&str],
    seconds: u64,
) -> Result<(Value, Value)> {
    let cpu = CL_CPU.to_string();
    let mut server = Command::new("ip")
        .args(["netns", "exec", &net.srv, "taskset", "-c", &cpu])
        .args(["iperf3", "-s", "-1", "-J", "-B", SERVER_IP])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("iperf3 server")?;
    std::thread::sleep(Duration::from_millis(400));
    let secs = seconds.to_string();
    let mut args: Vec<&str> = vec![
        "netns",
        "exec",
        &net.cl,
        "taskset",
        "-c",
        &cpu,
        "iperf3",
        "-c",
        SERVER_IP,
        "-t",
        &secs,
        "-J",
        "--connect-timeout",
        "5000",
    ];
    if tunnelled {
        args.extend(["-B", INNER]);
    }
    args.extend_from_slice(extra);
    let result = std::thread::scope(|s| {
        let client = s.spawn(|| {
            output_within(
                Command::new("ip").args(&args),
                Duration::from_secs(seconds + 30),
            )
        });
        // The middle of the test: skip the connection set-up and the end exchange.
        std::thread::sleep(Duration::from_millis(500));
        let w = CpuWindow::start(tasks);
        std::thread::sleep(Duration::from_secs_f64((seconds as f64 - 0.8).max(0.2)));
        let cpu = w.stop();
        let out = client
            .join()
            .map_err(|_| anyhow::anyhow!("iperf3 thread panicked"))??;
        Ok::<_, anyhow::Error>((out, cpu))
    });
    let end = Instant::now() + Duration::from_secs(3);
    while matches!(server.try_wait(), Ok(None)) && Instant::now() < end {
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = server.kill();
    let _ = server.wait();
    let (out, cpu) = result?;
    let v: Value = serde_json::from_str(&out).with_context(|| format!("iperf3 output: {out}"))?;
    if let Some(e) = v.get("error") {
        bail!("iperf3: {e}");
    }
    Ok((v, cpu))
}

/// TCP test: (summary, Gbit/s received, CPU window).
fn tcp(net: &Net, tasks: &GwTasks, tunnelled: bool, seconds: u64) -> Result<Value> {
    let (v, cpu) = iperf(net, tasks, tunnelled, &[], seconds)?;
    let end = &v["end"];
    let gbps = end["sum_received"]["bits_per_second"]
        .as_f64()
        .unwrap_or(0.0)
        / 1e9;
    let busy = cpu[format!("cpu{GW_CPU}")]["busy_fraction"]
        .as_f64()
        .unwrap_or(f64::NAN);
    let tasks_cores = cpu["gateway_tasks_cores"].as_f64().unwrap_or(f64::NAN);
    Ok(json!({
        "gbps": gbps,
        "gateway_cpu_busy": busy,
        "gateway_tasks_cores": tasks_cores,
        "gateway_tasks_cores_per_gbps": if gbps > 0.0 { tasks_cores / gbps } else { f64::NAN },
        "cpu_per_gbps": if gbps > 0.0 { busy / gbps } else { f64::NAN },
        "cpu": cpu,
        "sum_sent": end["sum_sent"],
        "sum_received": end["sum_received"],
        "retransmits": end["sum_sent"]["retransmits"],
        "cpu_utilization_percent": end["cpu_utilization_percent"],
    }))
}

/// The kernel's UDP counters (`/proc/net/snmp`, `Udp:` lines) in each namespace of `net`
/// (client, nat, gateway, server): where a flood's datagrams were dropped.
fn udp_counters(net: &Net) -> BTreeMap<String, BTreeMap<String, u64>> {
    let mut out = BTreeMap::new();
    for (name, ns) in [
        ("client", &net.cl),
        ("nat", &net.nat),
        ("gateway", &net.gw),
        ("server", &net.srv),
    ] {
        let Ok(o) = in_ns(ns, &["cat", "/proc/net/snmp"]) else {
            continue;
        };
        let text = String::from_utf8_lossy(&o.stdout).into_owned();
        let udp: Vec<&str> = text.lines().filter(|l| l.starts_with("Udp:")).collect();
        if let [names, values] = udp[..] {
            let m = names
                .split_whitespace()
                .zip(values.split_whitespace())
                .skip(1)
                .filter_map(|(k, v)| Some((k.to_owned(), v.parse::<u64>().ok()?)))
                .collect();
            out.insert(name.to_owned(), m);
        }
    }
    out
}

/// UDP flood of `len`-byte payloads: received packets/s, Gbit/s, loss.
fn udp(net: &Net, tasks: &GwTasks, tunnelled: bool, len: usize, seconds: u64) -> Result<Value> {
    let l = len.to_string();
    let before = udp_counters(net);
    let (v, cpu) = iperf(net, tasks, tunnelled, &["-u", "-b", "0", "-l", &l], seconds)?;
    let after = udp_counters(net);
    let mut kernel_udp = serde_json::Map::new();
    for (ns, a) in &after {
        let Some(b) = before.get(ns) else { continue };
        let d: serde_json::Map<String, Value> = a
            .iter()
            .map(|(k, v)| {
                (
                    k.clone(),
                    json!(v.saturating_sub(b.get(k).copied().unwrap_or(0))),
                )
            })
            .collect();
        kernel_udp.insert(ns.clone(), Value::Object(d));
    }
    let end = &v["end"];
    // iperf3 3.12: `sum_received` is the server's count (bytes = received payload bytes);
    // older versions only have `sum`, with `packets` sent and `lost_packets`.
    let sum = if end["sum_received"].is_object() {
        &end["sum_received"]
    } else {
        &end["sum"]
    };
    let packets = sum["packets"].as_f64().unwrap_or(0.0);
    let lost = sum["lost_packets"].as_f64().unwrap_or(0.0);
    let secs = sum["seconds"]
        .as_f64()
        .filter(|s| *s > 0.0)
        .unwrap_or(seconds as f64);
    let received = (packets - lost).max(0.0);
    // iperf3's own loss is relative to the highest sequence number the server saw, so a tail
    // that never arrived is not counted: take the loss against what the client sent.
    let sent = end["sum_sent"]["packets"].as_f64().unwrap_or(packets);
    let loss = if sent > 0.0 {
        100.0 * (1.0 - received / sent).max(0.0)
    } else {
        f64::NAN
    };
    // What reached the server's UDP layer (delivered or dropped for a full socket buffer): what
    // the gateway forwarded, whether or not the starved receiver read it.
    let reached = kernel_udp
        .get("server")
        .map(|c| {
            ["InDatagrams", "InErrors"]
                .iter()
                .filter_map(|k| c[*k].as_f64())
                .sum::<f64>()
        })
        .unwrap_or(f64::NAN);
    Ok(json!({
        "reached_server_pps": reached / secs,
        "payload": len,
        "sent_packets": sent,
        "received_packets": received,
        "received_pps": received / secs,
        "received_gbps": received * len as f64 * 8.0 / secs / 1e9,
        "loss_percent": loss,
        "iperf3_lost_percent": sum["lost_percent"],
        "cpu": cpu,
        "kernel_udp_counters_delta": kernel_udp,
        "sum": sum,
        "sum_sent": end["sum_sent"],
        "sum_received": end["sum_received"],
    }))
}

/// Move the calling thread into namespace `ns`.
fn enter_netns(ns: &str) -> Result<()> {
    let f = File::open(format!("/var/run/netns/{ns}")).context("open netns")?;
    // SAFETY: `f` is an open namespace file for the duration of the call; setns changes only
    // the calling thread's network namespace.
    let rc = unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) };
    ensure!(rc == 0, "setns: {}", std::io::Error::last_os_error());
    Ok(())
}

/// Probe records: send and echo times per sequence number.
#[derive(Default)]
struct Probes {
    sent: Vec<Instant>,
    echoed: Vec<Option<Instant>>,
}

/// A probe stream through the tunnel and its echo, in two threads.
struct ProbeStream {
    stop: Arc<AtomicBool>,
    probes: Arc<Mutex<Probes>>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl ProbeStream {
    fn start(net: &Net) -> Result<ProbeStream> {
        let stop = Arc::new(AtomicBool::new(false));
        let probes = Arc::new(Mutex::new(Probes::default()));
        let (tx, rx) = std::sync::mpsc::channel::<Result<()>>();
        let (srv, s2, tx2) = (net.srv.clone(), Arc::clone(&stop), tx.clone());
        let echo = std::thread::spawn(move || {
            let open = || -> Result<UdpSocket> {
                enter_netns(&srv)?;
                let _ = core_affinity::set_for_current(core_affinity::CoreId { id: CL_CPU });
                let s = UdpSocket::bind(ECHO)?;
                s.set_read_timeout(Some(Duration::from_millis(50)))?;
                Ok(s)
            };
            let sock = match open() {
                Ok(s) => {
                    let _ = tx2.send(Ok(()));
                    s
                }
                Err(e) => {
                    let _ = tx2.send(Err(e));
                    return;
                }
            };
            let mut buf = [0u8; 2048];
            while !s2.load(Ordering::Relaxed) {
                if let Ok((n, from)) = sock.recv_from(&mut buf) {
                    let _ = sock.send_to(&buf[..n], from);
                }
            }
        });
        rx.recv_timeout(Duration::from_secs(5))
            .context("echo thread")??;
        let (cl, s3, p3) = (net.cl.clone(), Arc::clone(&stop), Arc::clone(&probes));
        let prober = std::thread::spawn(move || {
            let open = || -> Result<UdpSocket> {
                enter_netns(&cl)?;
                let _ = core_affinity::set_for_current(core_affinity::CoreId { id: CL_CPU });
                let s = UdpSocket::bind(format!("{INNER}:0"))?;
                s.set_read_timeout(Some(Duration::from_millis(1)))?;
                Ok(s)
            };
            let sock = match open() {
                Ok(s) => {
                    let _ = tx.send(Ok(()));
                    s
                }
                Err(e) => {
                    let _ = tx.send(Err(e));
                    return;
                }
            };
            let Ok(dst) = ECHO.parse::<SocketAddr>() else {
                return;
            };
            let mut next = Instant::now();
            let mut buf = [0u8; 64];
            while !s3.load(Ordering::Relaxed) {
                if Instant::now() >= next {
                    let seq = p3.lock().map(|p| p.sent.len() as u64).unwrap_or(0);
                    let at = Instant::now();
                    if sock.send_to(&seq.to_be_bytes(), dst).is_ok() {
                        if let Ok(mut p) = p3.lock() {
                            p.sent.push(at);
                            p.echoed.push(None);
                        }
                    }
                    next += PROBE_EVERY;
                }
                if let Ok((8, _)) = sock.recv_from(&mut buf) {
                    let now = Instant::now();
                    let seq = u64::from_be_bytes(buf[..8].try_into().unwrap_or([0xff; 8]));
                    if let (Ok(mut p), Ok(i)) = (p3.lock(), usize::try_from(seq)) {
                        if let Some(e @ None) = p.echoed.get_mut(i) {
                            *e = Some(now);
                        }
                    }
                }
            }
        });
        rx.recv_timeout(Duration::from_secs(5))
            .context("probe thread")??;
        Ok(ProbeStream {
            stop,
            probes,
            threads: vec![echo, prober],
        })
    }

    /// The earliest echo arrival of a probe sent at or after `t`.
    fn first_echo_after(&self, t: Instant) -> Option<Instant> {
        let p = self.probes.lock().ok()?;
        p.sent
            .iter()
            .zip(&p.echoed)
            .filter(|(s, _)| **s >= t)
            .filter_map(|(_, e)| *e)
            .min()
    }

    /// Probes sent in [from, to) that have no echo.
    fn lost_between(&self, from: Instant, to: Instant) -> (usize, usize) {
        let Ok(p) = self.probes.lock() else {
            return (0, 0);
        };
        let window: Vec<_> = p
            .sent
            .iter()
            .zip(&p.echoed)
            .filter(|(s, _)| **s >= from && **s < to)
            .collect();
        let lost = window.iter().filter(|(_, e)| e.is_none()).count();
        (lost, window.len())
    }

    /// Whether an echo arrives within `within`.
    fn flowing(&self, within: Duration) -> bool {
        let t = Instant::now();
        while t.elapsed() < within {
            if self.first_echo_after(t).is_some() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        false
    }

    fn stop(mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

impl Drop for ProbeStream {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// `n` NAT rebinds under a probe stream: per rebind the recovery (ms, None if it did not
/// recover within RECOVERY_TIMEOUT) and the probes lost.
fn rebinds(net: &Net, n: usize) -> Result<Value> {
    let probes = ProbeStream::start(net)?;
    let mut samples = Vec::new();
    ensure!(
        probes.flowing(Duration::from_secs(10)),
        "no probe echoes through the tunnel before the rebinds"
    );
    for i in 0..n {
        std::thread::sleep(Duration::from_millis(700));
        ensure!(
            probes.flowing(Duration::from_secs(10)),
            "probes not flowing before rebind {i}"
        );
        let t0 = Instant::now();
        in_ns(&net.nat, &["conntrack", "-F"])?;
        let t1 = Instant::now();
        let mut echo = None;
        while echo.is_none() && t1.elapsed() < RECOVERY_TIMEOUT {
            std::thread::sleep(Duration::from_millis(5));
            echo = probes.first_echo_after(t1);
        }
        // Settle, then count: probes sent from shortly before the flush until 300 ms ago.
        std::thread::sleep(Duration::from_millis(600));
        let until = Instant::now() - Duration::from_millis(300);
        let (lost, in_window) = probes.lost_between(t0 - Duration::from_millis(100), until);
        let recovery_ms = echo.map(|e| e.duration_since(t1).as_secs_f64() * 1e3);
        samples.push(json!({
            "recovery_ms": recovery_ms,
            "flush_ms": t1.duration_since(t0).as_secs_f64() * 1e3,
            "probes_lost": lost,
            "probes_in_window": in_window,
        }));
    }
    probes.stop();
    Ok(Value::Array(samples))
}

/// `wg genkey` and `wg pubkey`: (private key file, public key).
fn wg_key(dir: &Path, name: &str) -> Result<(PathBuf, String)> {
    let private = run(Command::new("wg").arg("genkey"))?;
    let path = dir.join(format!("{name}.key"));
    fs::write(&path, private.trim())?;
    let mut child = Command::new("wg")
        .arg("pubkey")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()?;
    if let Some(mut stdin) = child.stdin.take() {
        use std::io::Write as _;
        stdin.write_all(private.trim().as_bytes())?;
    }
    let out = child.wait_with_output()?;
    ensure!(out.status.success(), "wg pubkey failed");
    Ok((path, String::from_utf8_lossy(&out.stdout).trim().to_owned()))
}

/// Two instances of `wg` implementation `kind` (client ns, gateway ns), configured with `wg`.
fn bring_up_wireguard(net: &Net, procs: &mut Procs, kind: Wg, program: &Path) -> Result<Value> {
    let id = std::process::id();
    let (ci, gi) = (format!("pc{id}"), format!("pg{id}"));
    let (ckey, cpub) = wg_key(&net.dir, "wg-client")?;
    let (gkey, gpub) = wg_key(&net.dir, "wg-gateway")?;
    for (ns, iface) in [(&net.cl, &ci), (&net.gw, &gi)] {
        let log = net.dir.join(format!("{iface}.log"));
        let sock = PathBuf::from(format!("/var/run/wireguard/{iface}.sock"));
        // A socket by this name can only be a leftover of this process's previous system.
        let _ = fs::remove_file(&sock);
        procs.1.push(sock.clone());
        procs.spawn(kind.binary(), ns, program, &kind.args(iface), &log)?;
        let end = Instant::now() + Duration::from_secs(10);
        while !sock.exists() && Instant::now() < end {
            std::thread::sleep(Duration::from_millis(20));
        }
        if !sock.exists() {
            bail!(
                "{} did not create {}: {}",
                kind.binary(),
                sock.display(),
                fs::read_to_string(&log).unwrap_or_default().trim()
            );
        }
    }
    let (ckey, gkey) = (ckey.display().to_string(), gkey.display().to_string());
    in_ns(
        &net.gw,
        &[
            "wg",
            "set",
            &gi,
            "listen-port",
            "51820",
            "private-key",
            &gkey,
            "peer",
            &cpub,
            "allowed-ips",
            "10.99.0.0/24",
        ],
    )?;
    in_ns(
        &net.cl,
        &[
            "wg",
            "set",
            &ci,
            "private-key",
            &ckey,
            "peer",
            &gpub,
            "endpoint",
            "192.0.2.2:51820",
            "allowed-ips",
            "10.10.0.0/24",
            "persistent-keepalive",
            "1",
        ],
    )?;
    let (cl, gw) = (net.cl.as_str(), net.gw.as_str());
    for args in [
        vec!["-n", cl, "addr", "add", "10.99.0.2/32", "dev", &ci],
        vec!["-n", cl, "link", "set", &ci, "mtu", TUNNEL_MTU, "up"],
        vec!["-n", cl, "route", "add", "10.10.0.0/24", "dev", &ci],
        // The WireGuard socket is not bound to a path address: route the gateway in the main
        // table via path 0 (the per-source tables 101/102 then agree with it).
        vec![
            "-n",
            cl,
            "route",
            "add",
            "192.0.2.0/24",
            "via",
            "10.0.1.1",
            "dev",
            "c0",
        ],
        vec!["-n", gw, "link", "set", &gi, "mtu", TUNNEL_MTU, "up"],
        vec!["-n", gw, "route", "replace", "10.99.0.0/24", "dev", &gi],
    ] {
        run(Command::new("ip").args(&args))?;
    }
    let version = run(Command::new(program).arg("--version")).unwrap_or_default();
    Ok(json!({ "client_iface": ci, "gateway_iface": gi, "version": version.trim() }))
}

/// Plain routing: client → NAT box → gateway → server.
fn bring_up_untunnelled(net: &Net) -> Result<Value> {
    for args in [
        vec![
            "-n",
            &net.cl,
            "route",
            "add",
            "10.10.0.0/24",
            "via",
            "10.0.1.1",
            "dev",
            "c0",
        ],
        vec![
            "-n",
            &net.nat,
            "route",
            "add",
            "10.10.0.0/24",
            "via",
            "192.0.2.2",
        ],
        vec![
            "-n",
            &net.srv,
            "route",
            "add",
            "192.0.2.0/24",
            "via",
            "10.10.0.1",
        ],
    ] {
        run(Command::new("ip").args(&args))?;
    }
    Ok(json!({}))
}

fn bring_up_jumping(net: &mut Net, backend: &str) -> Result<Value> {
    net.start_dataplane_with(backend, 1)?;
    net.configure_control("")?;
    net.start_control()?;
    net.start_client()?;
    if !net.client_in_state("ATTACHED", Duration::from_secs(20)) {
        bail!("the client did not attach:{}", net.diagnostics());
    }
    Ok(json!({ "backend": backend }))
}

/// Whether a system can run here, or why not.
fn availability(sys: System, bin_dir: &Path) -> std::result::Result<Option<PathBuf>, String> {
    for tool in ["iperf3", "taskset", "conntrack", "ethtool"] {
        if find_program(tool).is_none() {
            return Err(format!("{tool} missing (run scripts/setup-peers.sh)"));
        }
    }
    match sys {
        System::Untunnelled => Ok(None),
        System::Jumping(_) => {
            for b in ["jumping-dataplane", "jumping-control", "jumping-client"] {
                if !bin_dir.join(b).is_file() {
                    return Err(format!(
                        "{b} not in {} (cargo build --release -p jumping-dataplane \
                         -p jumping-control -p jumping-client -p jumpctl)",
                        bin_dir.display()
                    ));
                }
            }
            Ok(None)
        }
        System::WireGuard(kind) => {
            if find_program("wg").is_none() {
                return Err("wg missing (run scripts/setup-peers.sh)".into());
            }
            find_program(kind.binary())
                .map(Some)
                .ok_or_else(|| format!("{} missing (run scripts/setup-peers.sh)", kind.binary()))
        }
    }
}

/// Everything measured for one system in its own Net.
fn measure(sys: System, program: Option<&Path>, cfg: &Config) -> Result<Value> {
    let mut net = Net::build("pr")?;
    let mut procs = Procs::default();
    let setup = match sys {
        System::Untunnelled => bring_up_untunnelled(&net)?,
        System::Jumping(backend) => bring_up_jumping(&mut net, backend)?,
        System::WireGuard(kind) => {
            let program = program.context("no program")?;
            bring_up_wireguard(&net, &mut procs, kind, program)?
        }
    };
    let mut notes = Vec::new();
    let napi_gw = threaded_napi(&net.gw, "g0", &net.nat, "n2", GW_CPU)
        .map_err(|e| notes.push(format!("threaded NAPI on g0 skipped: {e:#}")))
        .ok();
    let napi_srv = threaded_napi(&net.srv, "s0", &net.gw, "g1", CL_CPU)
        .map_err(|e| notes.push(format!("threaded NAPI on s0 skipped: {e:#}")))
        .ok();
    let gw_pids = pin_ns(&net.gw, GW_CPU)?;
    let cl_pids = pin_ns(&net.cl, CL_CPU)?;
    let tasks = GwTasks {
        processes: gw_pids.clone(),
        napi: napi_gw.clone().unwrap_or_default(),
    };
    // The gateway's own CPU with no traffic (a polling data plane is not idle).
    let idle = {
        let w = CpuWindow::start(&tasks);
        std::thread::sleep(Duration::from_secs(1));
        w.stop()
    };
    let tunnelled = sys.tunnelled();
    if tunnelled {
        // A first exchange through the tunnel (WireGuard handshakes on demand), which also
        // checks that the tunnel carries traffic before anything is measured.
        let probes = ProbeStream::start(&net)?;
        let ok = probes.flowing(Duration::from_secs(15));
        probes.stop();
        ensure!(ok, "no echo through the tunnel");
    }
    let tcp = tcp(&net, &tasks, tunnelled, cfg.seconds).context("TCP")?;
    std::thread::sleep(Duration::from_secs(1));
    let udp64 = udp(&net, &tasks, tunnelled, 64, cfg.seconds).context("UDP 64")?;
    std::thread::sleep(Duration::from_secs(1));
    let udp_large = udp(&net, &tasks, tunnelled, cfg.large, cfg.seconds).context("UDP large")?;
    std::thread::sleep(Duration::from_secs(1));
    let rebind = if tunnelled && cfg.rebinds > 0 {
        Some(rebinds(&net, cfg.rebinds).context("rebinds")?)
    } else {
        None
    };
    if let Some(p) = procs.exited() {
        notes.push(format!("{p} exited during the run"));
    }
    drop(procs);
    drop(net);
    Ok(json!({
        "setup": setup,
        "napi_threads": { "g0": napi_gw, "s0": napi_srv },
        "pinned": { "gateway_pids": gw_pids, "client_pids": cl_pids },
        "idle_cpu": idle,
        "tcp": tcp,
        "udp64": udp64,
        "udp_large": udp_large,
        "rebinds": rebind,
        "notes": notes,
    }))
}

struct Config {
    seconds: u64,
    rebinds: usize,
    large: usize,
}

/// Median (nearest rank) and maximum.
fn median_max(v: &[f64]) -> Option<(f64, f64)> {
    Some((report::percentile(v, 50.0)?, report::percentile(v, 100.0)?))
}

fn fmt(x: Option<f64>, digits: usize) -> String {
    x.filter(|v| v.is_finite())
        .map_or_else(|| "–".into(), |v| format!("{v:.digits$}"))
}

fn ratio(a: Option<f64>, b: Option<f64>) -> String {
    match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => format!("{:.2}×", a / b),
        _ => "–".into(),
    }
}

fn build_release() -> Result<()> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let st = Command::new(cargo)
        .current_dir(root)
        .args([
            "build",
            "--release",
            "-p",
            "jumping-dataplane",
            "-p",
            "jumping-control",
            "-p",
            "jumping-client",
            "-p",
            "jumpctl",
        ])
        .status()?;
    ensure!(st.success(), "building the release binaries failed");
    Ok(())
}

fn main() -> Result<()> {
    let args = Args::parse();
    if !jumping_e2e::is_root() {
        println!("skipped: needs root");
        return Ok(());
    }
    let cfg = Config {
        seconds: if args.quick { 2 } else { args.seconds.max(2) },
        rebinds: if args.quick { 1 } else { args.rebinds },
        large: args.large,
    };
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let default_dir = std::env::var("CARGO_TARGET_DIR")
        .map_or_else(|_| root.join("target"), PathBuf::from)
        .join("release");
    let bin_dir = match (&args.bin_dir, std::env::var_os("JUMPING_BIN_DIR")) {
        (Some(d), _) => d.clone(),
        (None, Some(d)) => PathBuf::from(d),
        (None, None) => {
            let wants_jumping =
                args.only.is_empty() || args.only.iter().any(|o| o.starts_with("jumping"));
            if !args.no_build && wants_jumping {
                build_release()?;
            }
            default_dir
        }
    };
    let bin_dir = fs::canonicalize(&bin_dir).unwrap_or(bin_dir);
    // jumping_e2e::bin() reads it.
    std::env::set_var("JUMPING_BIN_DIR", &bin_dir);
    for o in &args.only {
        ensure!(
            SYSTEMS.iter().any(|s| s.name() == o),
            "unknown system `{o}`: use {}",
            SYSTEMS.map(System::name).join(", ")
        );
    }
    let dir = run_dir();
    fs::create_dir_all(&dir)?;

    let mut results: BTreeMap<&str, Value> = BTreeMap::new();
    let mut order = Vec::new();
    let mut failed = Vec::new();
    for sys in SYSTEMS {
        if !args.only.is_empty() && !args.only.iter().any(|o| o == sys.name()) {
            continue;
        }
        order.push(sys.name());
        let program = match availability(sys, &bin_dir) {
            Ok(p) => p,
            Err(reason) => {
                eprintln!("peers: {}: not available: {reason}", sys.name());
                results.insert(sys.name(), json!({ "available": false, "reason": reason }));
                continue;
            }
        };
        eprintln!("peers: measuring {}", sys.name());
        let v = match measure(sys, program.as_deref(), &cfg) {
            Ok(mut v) => {
                v["available"] = json!(true);
                v
            }
            Err(e) => {
                eprintln!("peers: {}: failed: {e:#}", sys.name());
                failed.push(sys.name());
                json!({ "available": true, "error": format!("{e:#}") })
            }
        };
        results.insert(sys.name(), v);
    }

    let tcp_of = |name: &str| results.get(name).and_then(|v| v["tcp"]["gbps"].as_f64());
    let base = tcp_of("untunnelled");
    let jump = tcp_of("jumping-af_xdp");
    let mut rows = Vec::new();
    let mut bars = Vec::new();
    let mut cdfs = Vec::new();
    for name in &order {
        let Some(v) = results.get(name) else { continue };
        if v["available"] == false {
            let mut row = vec![
                (*name).to_owned(),
                format!("not available: {}", v["reason"].as_str().unwrap_or("?")),
            ];
            row.extend(std::iter::repeat_n("–".to_owned(), 11));
            rows.push(row);
            continue;
        }
        if let Some(e) = v["error"].as_str() {
            let mut row = vec![(*name).to_owned(), format!("failed: {e}")];
            row.extend(std::iter::repeat_n("–".to_owned(), 11));
            rows.push(row);
            continue;
        }
        let gbps = tcp_of(name);
        if let Some(g) = gbps {
            bars.push(((*name).to_owned(), g));
        }
        let udp_cell = |u: &Value, pps: bool| {
            let loss = u["loss_percent"].as_f64();
            let main = if pps {
                fmt(u["received_pps"].as_f64().map(|x| x / 1e3), 0)
            } else {
                fmt(u["received_gbps"].as_f64(), 3)
            };
            format!("{main} ({}% loss)", fmt(loss, 1))
        };
        let busy = v["tcp"]["gateway_cpu_busy"].as_f64();
        let per = v["tcp"]["cpu_per_gbps"].as_f64();
        let tasks = v["tcp"]["gateway_tasks_cores"].as_f64();
        let tasks_per = v["tcp"]["gateway_tasks_cores_per_gbps"].as_f64();
        let (rec, lost) = match v["rebinds"].as_array() {
            Some(samples) => {
                let ms: Vec<f64> = samples
                    .iter()
                    .filter_map(|s| s["recovery_ms"].as_f64())
                    .collect();
                let timeouts = samples.len() - ms.len();
                let lost: Vec<f64> = samples
                    .iter()
                    .filter_map(|s| s["probes_lost"].as_f64())
                    .collect();
                cdfs.push(((*name).to_owned(), ms.clone()));
                let rec = median_max(&ms).map_or_else(
                    || "no recovery".to_owned(),
                    |(m, x)| format!("{m:.1} / {x:.1}"),
                );
                let rec = if timeouts > 0 {
                    format!("{rec} ({timeouts} timed out)")
                } else {
                    rec
                };
                let lost = median_max(&lost)
                    .map_or_else(|| "–".to_owned(), |(m, x)| format!("{m:.0} / {x:.0}"));
                (rec, lost)
            }
            None => ("–".to_owned(), "–".to_owned()),
        };
        rows.push(vec![
            (*name).to_owned(),
            fmt(gbps, 3),
            ratio(gbps, base),
            ratio(gbps, jump),
            udp_cell(&v["udp64"], true),
            udp_cell(&v["udp_large"], false),
            fmt(busy, 2),
            fmt(per, 2),
            fmt(tasks, 2),
            fmt(tasks_per, 2),
            rec,
            lost,
        ]);
    }
    let large_h = format!("UDP{} Gbit/s", cfg.large);
    let table = report::md_table(
        &[
            "system",
            "TCP Gbit/s",
            "×untunnelled",
            "×jumping-af_xdp",
            "UDP64 kpps",
            &large_h,
            "gateway CPU busy",
            "CPU per Gbit/s",
            "gateway tasks CPU",
            "tasks CPU per Gbit/s",
            "rebind recovery median / max ms",
            "probes lost median / max",
        ],
        &rows,
    );
    let json = json!({
        "environment": report::environment(),
        "config": {
            "seconds": cfg.seconds,
            "rebinds": cfg.rebinds,
            "udp_large_payload": cfg.large,
            "quick": args.quick,
            "bin_dir": bin_dir.display().to_string(),
            "gateway_cpu": GW_CPU,
            "client_cpu": CL_CPU,
            "tunnel_mtu": TUNNEL_MTU,
            "probe_interval_ms": PROBE_EVERY.as_millis(),
            "wireguard_persistent_keepalive_s": 1,
        },
        "systems": results,
    });
    report::write_json(&dir.join("peers.json"), &json)?;
    fs::write(dir.join("peers.md"), &table)?;
    if !bars.is_empty() {
        report::bars_svg(
            &dir.join("peers-throughput.svg"),
            "TCP throughput through the gateway (same run)",
            "Gbit/s",
            &bars,
        )?;
    }
    if !cdfs.is_empty() {
        report::cdf_svg(
            &dir.join("peers-recovery.svg"),
            "Recovery after a NAT rebind",
            "ms from conntrack flush to first echo",
            &cdfs,
        )?;
    }
    println!("{table}");
    println!("results: {}", dir.display());
    ensure!(failed.is_empty(), "failed: {}", failed.join(", "));
    Ok(())
}
