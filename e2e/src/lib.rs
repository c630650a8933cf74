//! The real Jumping processes in network namespaces: the topology of the demo and of the
//! end-to-end tests.
//!
//! ```text
//!  client ns                    NAT box ns                      gateway ns                server ns
//!  c0 10.0.1.2 ── path 0 ── n0 10.0.1.1   n2 192.0.2.1 ──── g0 192.0.2.2 (XDP, AF_XDP)
//!  c1 10.0.2.2 ── path 1 ── n1 10.0.2.1   (nftables           jumping-dataplane + jumping-control
//!  jc0 (TUN) 10.99.0.2                     masquerade random)  jump0 (TUN) ── g1 10.10.0.1 ── s0 10.10.0.2
//! ```
//!
//! The client reaches the server (10.10.0.2) through its tunnel; the NAT box rewrites its
//! source address and port (a random port per mapping, so a conntrack flush is a NAT rebind).
//! Every namespace, process and file is removed when [`Net`] drops, also on a failed test.
#![forbid(unsafe_code)]

use std::fs;
use std::io::{BufRead, BufReader, Read as _, Write as _};
use std::net::{SocketAddr, UdpSocket};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _, Result};
use jumping_protocol::handshake::StaticKeypair;
use jumping_protocol::keyfmt;
use serde_json::Value;

/// The gateway's tunnel address.
pub const GATEWAY: &str = "192.0.2.2:51820";
/// The server behind the gateway (UDP echo port 7).
pub const SERVER: &str = "10.10.0.2:7";
/// The client's inner address.
pub const CLIENT_INNER: &str = "10.99.0.2";

/// Is this process root (namespaces, XDP)?
#[must_use]
pub fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// Where the workspace's binaries are: `JUMPING_BIN_DIR`, else `target/debug`.
#[must_use]
pub fn bin(name: &str) -> PathBuf {
    if let Ok(d) = std::env::var("JUMPING_BIN_DIR") {
        return PathBuf::from(d).join(name);
    }
    let target = std::env::var("CARGO_TARGET_DIR").map_or_else(
        |_| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"),
        PathBuf::from,
    );
    target.join("debug").join(name)
}

/// Build the four binaries (debug) if needed.
///
/// # Errors
/// The build failed.
pub fn build_binaries() -> Result<()> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let st = Command::new(cargo)
        .current_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join(".."))
        .args([
            "build",
            "--bins",
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
    if !st.success() {
        bail!("building the binaries failed");
    }
    Ok(())
}

fn run(cmd: &mut Command) -> Result<Output> {
    let out = cmd.output().with_context(|| format!("{cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(out)
}

fn ip(args: &[&str]) -> Result<()> {
    run(Command::new("ip").args(args)).map(|_| ())
}

/// Run `cmd` inside namespace `ns`.
///
/// # Errors
/// It failed.
pub fn in_ns(ns: &str, cmd: &[&str]) -> Result<Output> {
    run(Command::new("ip").args(["netns", "exec", ns]).args(cmd))
}

/// A process of the run, its stdout lines collected (and echoed with a prefix if asked).
pub struct Proc {
    name: &'static str,
    child: Child,
    /// Lines written on stdout.
    pub lines: Arc<Mutex<Vec<String>>>,
    log: PathBuf,
}

impl core::fmt::Debug for Proc {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Proc")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl Proc {
    fn spawn(
        name: &'static str,
        ns: &str,
        program: &Path,
        args: &[String],
        log: PathBuf,
        echo: Option<fn(&'static str, &str)>,
    ) -> Result<Proc> {
        let err = fs::File::create(&log)?;
        let mut child = Command::new("ip")
            .args(["netns", "exec", ns])
            .arg(program)
            .args(args)
            .stdout(Stdio::piped())
            .stderr(err)
            .spawn()
            .with_context(|| format!("start {}", program.display()))?;
        let lines = Arc::new(Mutex::new(Vec::new()));
        let out = child.stdout.take().context("stdout")?;
        let l = Arc::clone(&lines);
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { return };
                if let Some(f) = echo {
                    f(name, &line);
                }
                if let Ok(mut v) = l.lock() {
                    v.push(line);
                }
            }
        });
        Ok(Proc {
            name,
            child,
            lines,
            log,
        })
    }

    /// Its stderr so far.
    #[must_use]
    pub fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Stdout lines that are JSON objects.
    #[must_use]
    pub fn events(&self) -> Vec<Value> {
        self.lines
            .lock()
            .map(|v| {
                v.iter()
                    .filter_map(|l| serde_json::from_str::<Value>(l).ok())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// SIGTERM, then wait (SIGKILL after 10 s).
    pub fn stop(&mut self) -> Option<std::process::ExitStatus> {
        // `ip netns exec` execs the program: the child's pid is the program's.
        if let Ok(pid) = i32::try_from(self.child.id()) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGTERM,
            );
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(st)) = self.child.try_wait() {
                return Some(st);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        self.child.wait().ok()
    }

    /// Whether it is still running.
    pub fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if self.running() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// The namespaces, files and processes of one run.
pub struct Net {
    /// Client, NAT box, gateway, server namespaces.
    pub cl: String,
    /// NAT box.
    pub nat: String,
    /// Gateway.
    pub gw: String,
    /// Server.
    pub srv: String,
    /// Files of the run.
    pub dir: PathBuf,
    /// The data plane.
    pub dataplane: Option<Proc>,
    /// The control process.
    pub control: Option<Proc>,
    /// The client.
    pub client: Option<Proc>,
    /// Echo printed lines of the processes (the demo).
    pub echo: Option<fn(&'static str, &str)>,
    /// The client's public key, base64.
    pub client_public: String,
    bpffs: bool,
}

impl core::fmt::Debug for Net {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Net")
            .field("gw", &self.gw)
            .finish_non_exhaustive()
    }
}

fn write_private(path: &Path, text: &str) -> Result<()> {
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(text.as_bytes())?;
    Ok(())
}

impl Net {
    /// Build the topology (`tag` keeps concurrent runs apart).
    ///
    /// # Errors
    /// A command failed; whatever was built is removed.
    pub fn build(tag: &str) -> Result<Net> {
        let id = format!("{tag}{}", std::process::id());
        let dir = std::env::temp_dir().join(format!("jumping-e2e-{id}"));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir)?;
        let mut rng = rand_core::OsRng;
        let gw_key = StaticKeypair::generate(&mut rng);
        let cl_key = StaticKeypair::generate(&mut rng);
        let client_public = keyfmt::encode(&cl_key.public());
        let mut net = Net {
            cl: format!("jcl{id}"),
            nat: format!("jnat{id}"),
            gw: format!("jgw{id}"),
            srv: format!("jsrv{id}"),
            dir,
            dataplane: None,
            control: None,
            client: None,
            echo: None,
            client_public,
            bpffs: false,
        };
        write_private(
            &net.dir.join("gateway.key"),
            &keyfmt::encode(&gw_key.secret_bytes()),
        )?;
        fs::write(
            net.dir.join("gateway.pub"),
            keyfmt::encode(&gw_key.public()),
        )?;
        write_private(
            &net.dir.join("client.key"),
            &keyfmt::encode(&cl_key.secret_bytes()),
        )?;
        fs::write(
            net.dir.join("clients"),
            format!("# demo client\n{} {CLIENT_INNER}\n", net.client_public),
        )?;
        net.wire()?;
        Ok(net)
    }

    fn wire(&mut self) -> Result<()> {
        let (cl, nat, gw, srv) = (
            self.cl.clone(),
            self.nat.clone(),
            self.gw.clone(),
            self.srv.clone(),
        );
        for ns in [&cl, &nat, &gw, &srv] {
            ip(&["netns", "add", ns])?;
            ip(&["-n", ns, "link", "set", "lo", "up"])?;
        }
        for (a, ans, b, bns) in [
            ("c0", &cl, "n0", &nat),
            ("c1", &cl, "n1", &nat),
            ("n2", &nat, "g0", &gw),
            ("g1", &gw, "s0", &srv),
        ] {
            ip(&[
                "link", "add", a, "netns", ans, "type", "veth", "peer", "name", b, "netns", bns,
            ])?;
        }
        for (ns, dev, addr) in [
            (&cl, "c0", "10.0.1.2/24"),
            (&cl, "c1", "10.0.2.2/24"),
            (&nat, "n0", "10.0.1.1/24"),
            (&nat, "n1", "10.0.2.1/24"),
            (&nat, "n2", "192.0.2.1/24"),
            (&gw, "g0", "192.0.2.2/24"),
            (&gw, "g1", "10.10.0.1/24"),
            (&srv, "s0", "10.10.0.2/24"),
        ] {
            ip(&["-n", ns, "addr", "add", addr, "dev", dev])?;
            ip(&["-n", ns, "link", "set", dev, "up"])?;
        }
        // The client: one routing table per path, chosen by the source address.
        for (table, src, via, dev) in [
            ("101", "10.0.1.2", "10.0.1.1", "c0"),
            ("102", "10.0.2.2", "10.0.2.1", "c1"),
        ] {
            ip(&["-n", &cl, "rule", "add", "from", src, "table", table])?;
            ip(&[
                "-n",
                &cl,
                "route",
                "add",
                "192.0.2.0/24",
                "via",
                via,
                "dev",
                dev,
                "table",
                table,
            ])?;
        }
        ip(&[
            "-n",
            &srv,
            "route",
            "add",
            "10.99.0.0/24",
            "via",
            "10.10.0.1",
        ])?;
        for ns in [&nat, &gw] {
            in_ns(ns, &["sysctl", "-qw", "net.ipv4.ip_forward=1"])?;
            in_ns(ns, &["sysctl", "-qw", "net.ipv4.conf.all.rp_filter=0"])?;
        }
        // The NAT box: masquerade with a random port per mapping.
        let rules = "table ip nat {\n chain post {\n  type nat hook postrouting priority 100;\n  \
                     oifname \"n2\" masquerade random\n }\n}\n";
        let path = self.dir.join("nat.nft");
        fs::write(&path, rules)?;
        in_ns(&nat, &["nft", "-f", &path.display().to_string()])?;
        Ok(())
    }

    fn path(&self, name: &str) -> String {
        self.dir.join(name).display().to_string()
    }

    /// Start the data plane on AF_XDP (one worker), inside a TUN, and route the client
    /// addresses into it.
    ///
    /// # Errors
    /// It did not come up.
    pub fn start_dataplane(&mut self) -> Result<()> {
        let bpf = self.dir.join("bpffs");
        if !self.bpffs {
            fs::create_dir_all(&bpf)?;
            run(Command::new("mount").args(["-t", "bpf", "bpf", &bpf.display().to_string()]))?;
            self.bpffs = true;
        }
        let cfg = format!(
            "backend = \"af_xdp\"\ninterface = \"g0\"\nlisten = \"{GATEWAY}\"\ncpus = [0]\n\
             session_capacity = 1024\ncontrol_socket = \"{}\"\nbpf_pin_dir = \"{}\"\n\
             [inside]\ntun = \"jump0\"\n[af_xdp]\nframes = 1024\nring_size = 512\n",
            self.path("dataplane.sock"),
            bpf.join("jumping").display()
        );
        fs::write(self.dir.join("dataplane.toml"), cfg)?;
        let p = Proc::spawn(
            "dataplane",
            &self.gw,
            &bin("jumping-dataplane"),
            &["--config".into(), self.path("dataplane.toml")],
            self.dir.join("dataplane.log"),
            None,
        )?;
        self.dataplane = Some(p);
        let sock = self.dir.join("dataplane.sock");
        if !wait_for(Duration::from_secs(20), || sock.exists()) {
            bail!(
                "the data plane did not start:\n{}",
                self.dataplane.as_ref().map(Proc::log).unwrap_or_default()
            );
        }
        ip(&["-n", &self.gw, "link", "set", "jump0", "up"])?;
        ip(&[
            "-n",
            &self.gw,
            "route",
            "replace",
            "10.99.0.0/24",
            "dev",
            "jump0",
        ])?;
        Ok(())
    }

    /// Write the control process's configuration with `policy` (TOML lines of `[policy]`).
    ///
    /// # Errors
    /// Writing failed.
    pub fn configure_control(&self, policy: &str) -> Result<()> {
        let cfg = format!(
            "listen = \"{GATEWAY}\"\nprivate_key_file = \"{}\"\nclients_file = \"{}\"\n\
             dataplane_socket = \"{}\"\ncontrol_socket = \"{}\"\nstate_dir = \"{}\"\n\
             [policy]\n{policy}\n",
            self.path("gateway.key"),
            self.path("clients"),
            self.path("dataplane.sock"),
            self.path("control.sock"),
            self.path("state"),
        );
        fs::write(self.dir.join("control.toml"), cfg)?;
        Ok(())
    }

    /// Start the control process (after [`Net::configure_control`]).
    ///
    /// # Errors
    /// It did not come up.
    pub fn start_control(&mut self) -> Result<()> {
        let sock = self.dir.join("control.sock");
        let _ = fs::remove_file(&sock);
        let p = Proc::spawn(
            "gateway",
            &self.gw,
            &bin("jumping-control"),
            &["--config".into(), self.path("control.toml")],
            self.dir.join("control.log"),
            self.echo,
        )?;
        self.control = Some(p);
        if !wait_for(Duration::from_secs(20), || sock.exists()) {
            bail!(
                "the control process did not start:\n{}",
                self.control.as_ref().map(Proc::log).unwrap_or_default()
            );
        }
        Ok(())
    }

    /// Start the client with both paths.
    ///
    /// # Errors
    /// It could not start.
    pub fn start_client(&mut self) -> Result<()> {
        let gw_pub = fs::read_to_string(self.dir.join("gateway.pub"))?;
        let args: Vec<String> = [
            "--gateway",
            GATEWAY,
            "--gateway-public",
            gw_pub.trim(),
            "--key",
            &self.path("client.key"),
            "--address",
            &format!("{CLIENT_INNER}/32"),
            "--route",
            "10.10.0.0/24",
            "--path",
            "10.0.1.2",
            "--path",
            "10.0.2.2",
            "--status-socket",
            &self.path("client.sock"),
        ]
        .iter()
        .map(ToString::to_string)
        .collect();
        let p = Proc::spawn(
            "client",
            &self.cl,
            &bin("jumping-client"),
            &args,
            self.dir.join("client.log"),
            self.echo,
        )?;
        self.client = Some(p);
        Ok(())
    }

    /// The client's status (its status socket).
    ///
    /// # Errors
    /// No client answered.
    pub fn client_status(&self) -> Result<Value> {
        let mut s = UnixStream::connect(self.dir.join("client.sock"))?;
        s.set_read_timeout(Some(Duration::from_secs(3)))?;
        s.write_all(b"{\"cmd\":\"status\"}\n")?;
        let mut out = String::new();
        s.read_to_string(&mut out)?;
        Ok(serde_json::from_str(out.trim())?)
    }

    /// Wait until the client reports `state`.
    #[must_use]
    pub fn client_in_state(&self, state: &str, within: Duration) -> bool {
        wait_for(within, || {
            self.client_status()
                .is_ok_and(|s| s.get("state").and_then(Value::as_str) == Some(state))
        })
    }

    /// Run `jumpctl --socket <control socket> args...` (in the gateway namespace).
    ///
    /// # Errors
    /// It could not run (a non-zero exit is in the output).
    pub fn jumpctl(&self, args: &[&str]) -> Result<Output> {
        Ok(Command::new(bin("jumpctl"))
            .arg("--socket")
            .arg(self.dir.join("control.sock"))
            .args(args)
            .output()?)
    }

    /// The control process's events so far (also across restarts: the previous runs' lines
    /// are kept in `past_events`).
    #[must_use]
    pub fn control_events(&self) -> Vec<Value> {
        self.control.as_ref().map(Proc::events).unwrap_or_default()
    }

    /// The client's events so far.
    #[must_use]
    pub fn client_events(&self) -> Vec<Value> {
        self.client.as_ref().map(Proc::events).unwrap_or_default()
    }

    /// Flush the NAT box's connection tracking: every mapping is forgotten, the client's next
    /// datagram gets a new (random) source port.
    ///
    /// # Errors
    /// conntrack failed.
    pub fn nat_rebind(&self) -> Result<()> {
        in_ns(&self.nat, &["conntrack", "-F"]).map(|_| ())
    }

    /// Take the client's first path down (its link fails).
    ///
    /// # Errors
    /// ip failed.
    pub fn path0_down(&self) -> Result<()> {
        ip(&["-n", &self.cl, "link", "set", "c0", "down"])
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        for p in [&mut self.client, &mut self.control, &mut self.dataplane] {
            if let Some(mut p) = p.take() {
                let _ = p.stop();
            }
        }
        for ns in [&self.cl, &self.nat, &self.gw, &self.srv] {
            let _ = Command::new("ip").args(["netns", "del", ns]).output();
        }
        if self.bpffs {
            let _ = Command::new("umount").arg(self.dir.join("bpffs")).output();
        }
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// Poll `f` every 50 ms until it holds or `within` passes.
pub fn wait_for(within: Duration, mut f: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + within;
    loop {
        if f() {
            return true;
        }
        if Instant::now() >= end {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn enter(ns: &str) -> Result<()> {
    let f = fs::File::open(format!("/run/netns/{ns}"))?;
    nix::sched::setns(f, nix::sched::CloneFlags::CLONE_NEWNET)?;
    Ok(())
}

/// Inner traffic through the tunnel: a UDP echo server behind the gateway and a client-side
/// sender (one sequence-numbered datagram every `interval`), counting what came back and when.
#[derive(Debug)]
pub struct Traffic {
    stop: Arc<AtomicBool>,
    /// Datagrams sent.
    pub sent: Arc<AtomicU64>,
    /// Echoes received (each sequence number once).
    pub received: Arc<AtomicU64>,
    /// Arrival times of echoes (since the start), in ms.
    pub arrivals: Arc<Mutex<Vec<u64>>>,
    started: Instant,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Traffic {
    /// Start both ends.
    ///
    /// # Errors
    /// A socket could not be opened.
    pub fn start(net: &Net, interval: Duration) -> Result<Traffic> {
        let stop = Arc::new(AtomicBool::new(false));
        let (srv, cl) = (net.srv.clone(), net.cl.clone());
        let ready = Arc::new(AtomicBool::new(false));
        let (s2, r2) = (Arc::clone(&stop), Arc::clone(&ready));
        let server = std::thread::spawn(move || {
            if enter(&srv).is_err() {
                return;
            }
            let Ok(sock) = UdpSocket::bind(SERVER) else {
                return;
            };
            let _ = sock.set_read_timeout(Some(Duration::from_millis(100)));
            r2.store(true, Ordering::Release);
            let mut buf = [0u8; 2048];
            while !s2.load(Ordering::Relaxed) {
                if let Ok((n, from)) = sock.recv_from(&mut buf) {
                    let _ = sock.send_to(&buf[..n], from);
                }
            }
        });
        if !wait_for(Duration::from_secs(5), || ready.load(Ordering::Acquire)) {
            bail!("the echo server did not start");
        }
        let sent = Arc::new(AtomicU64::new(0));
        let received = Arc::new(AtomicU64::new(0));
        let arrivals = Arc::new(Mutex::new(Vec::new()));
        let started = Instant::now();
        let (s3, sent3, recv3, arr3) = (
            Arc::clone(&stop),
            Arc::clone(&sent),
            Arc::clone(&received),
            Arc::clone(&arrivals),
        );
        let client = std::thread::spawn(move || {
            if enter(&cl).is_err() {
                return;
            }
            let Ok(sock) = UdpSocket::bind(format!("{CLIENT_INNER}:0")) else {
                return;
            };
            let _ = sock.set_read_timeout(Some(Duration::from_millis(1)));
            let dst: SocketAddr = SERVER.parse().expect("server address");
            let mut seen = std::collections::HashSet::new();
            let mut next = Instant::now();
            let mut seq = 0u64;
            let mut buf = [0u8; 64];
            while !s3.load(Ordering::Relaxed) {
                if Instant::now() >= next {
                    seq += 1;
                    if sock.send_to(&seq.to_be_bytes(), dst).is_ok() {
                        sent3.fetch_add(1, Ordering::Relaxed);
                    }
                    next += interval;
                }
                if let Ok((8, _)) = sock.recv_from(&mut buf) {
                    let s = u64::from_be_bytes(buf[..8].try_into().unwrap_or([0; 8]));
                    if seen.insert(s) {
                        recv3.fetch_add(1, Ordering::Relaxed);
                        if let Ok(mut a) = arr3.lock() {
                            a.push(u64::try_from(started.elapsed().as_millis()).unwrap_or(0));
                        }
                    }
                }
            }
        });
        Ok(Traffic {
            stop,
            sent,
            received,
            arrivals,
            started,
            threads: vec![server, client],
        })
    }

    /// (sent, received).
    #[must_use]
    pub fn counts(&self) -> (u64, u64) {
        (
            self.sent.load(Ordering::Relaxed),
            self.received.load(Ordering::Relaxed),
        )
    }

    /// Milliseconds since the start.
    #[must_use]
    pub fn now_ms(&self) -> u64 {
        u64::try_from(self.started.elapsed().as_millis()).unwrap_or(0)
    }

    /// The longest gap between two echoes that arrived after `from_ms` (the interruption seen
    /// by an application), and how many echoes arrived after it.
    #[must_use]
    pub fn longest_gap_after(&self, from_ms: u64) -> (u64, usize) {
        let a = self.arrivals.lock().map(|a| a.clone()).unwrap_or_default();
        let after: Vec<u64> = a.into_iter().filter(|t| *t + 1000 >= from_ms).collect();
        let gap = after.windows(2).map(|w| w[1] - w[0]).max().unwrap_or(0);
        (gap, after.len())
    }

    /// Wait until `n` more echoes than now have arrived.
    #[must_use]
    pub fn flowing(&self, n: u64, within: Duration) -> bool {
        let base = self.counts().1;
        wait_for(within, || self.counts().1 >= base + n)
    }

    /// Stop both ends.
    pub fn stop(mut self) -> (u64, u64) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
        self.counts()
    }
}

impl Drop for Traffic {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}
