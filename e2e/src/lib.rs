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
//! An optional attacker namespace ([`Net::add_attacker`]) hangs off the NAT box:
//! `a0 10.0.3.2 ── n3 10.0.3.1`, masqueraded like the client, so what it sends reaches the
//! gateway from 192.0.2.1 with another port.
//!
//! The client reaches the server (10.10.0.2) through its tunnel; the NAT box rewrites its
//! source address and port (a random port per mapping, so a conntrack flush is a NAT rebind).
//! Every namespace, process and file is removed when [`Net`] drops, also on a failed test.
#![forbid(unsafe_code)]

use std::fs;
use std::io::{BufRead, BufReader, Read as _, Write as _};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket};
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

/// Whether an end-to-end test can run: as root, after building the binaries once per test
/// binary (unless `JUMPING_BIN_DIR` names binaries built beforehand). Without root it says so
/// and returns false, or panics when `JUMPING_REQUIRE_BPF_TESTS` is set (CI), so a CI run
/// cannot skip them silently.
///
/// # Panics
/// Not root while `JUMPING_REQUIRE_BPF_TESTS` is set, or the build failed.
#[must_use]
pub fn root_or_skip() -> bool {
    if !is_root() {
        assert!(
            std::env::var_os("JUMPING_REQUIRE_BPF_TESTS").is_none(),
            "JUMPING_REQUIRE_BPF_TESTS is set but this test is not running as root"
        );
        eprintln!("skipped: needs root");
        return false;
    }
    static BUILD: std::sync::Once = std::sync::Once::new();
    if std::env::var_os("JUMPING_BIN_DIR").is_none() {
        BUILD.call_once(|| build_binaries().expect("build"));
    }
    true
}

/// The events named `name` among `events`.
#[must_use]
pub fn of<'a>(events: &'a [Value], name: &str) -> Vec<&'a Value> {
    events.iter().filter(|e| e["event"] == name).collect()
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
    cargo_build(&GATEWAY_PACKAGES)
}

/// The packages of the gateway's and client's binaries.
const GATEWAY_PACKAGES: [&str; 4] = [
    "jumping-dataplane",
    "jumping-control",
    "jumping-client",
    "jumpctl",
];

/// `cargo build --bins -p <each package>` in the workspace (debug).
fn cargo_build(packages: &[&str]) -> Result<()> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join(".."))
        .args(["build", "--bins"]);
    for p in packages {
        cmd.args(["-p", p]);
    }
    if !cmd.status()?.success() {
        bail!("building the binaries failed");
    }
    Ok(())
}

/// Build the binaries a run needs unless `JUMPING_BIN_DIR` names a directory that has them
/// (`cargo xtask bench` builds release binaries and sets it): the gateway's four, the load
/// generator and the impairment relay.
///
/// # Errors
/// The build failed.
pub fn build_binaries_if_missing() -> Result<()> {
    let load = ["jumping-loadgen", "jumping-impair"];
    let all: Vec<&str> = GATEWAY_PACKAGES.iter().chain(&load).copied().collect();
    // Package and binary names are the same for these six.
    if std::env::var_os("JUMPING_BIN_DIR").is_some() && all.iter().all(|n| bin(n).exists()) {
        return Ok(());
    }
    cargo_build(&all)
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
    /// Start `program args...` in namespace `ns`, stderr to `log`, stdout lines collected (and
    /// echoed through `echo` if given).
    ///
    /// # Errors
    /// It could not start.
    pub fn spawn(
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

    /// Its process id (the program's: `ip netns exec` execs it).
    #[must_use]
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Send it `signal` (it keeps running unless the signal ends it).
    ///
    /// # Errors
    /// The signal could not be sent.
    pub fn signal(&self, signal: nix::sys::signal::Signal) -> Result<()> {
        let pid = i32::try_from(self.child.id()).context("pid")?;
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), signal)?;
        Ok(())
    }

    /// Wait until it exits by itself, at most `within` (then SIGTERM, as [`Proc::stop`]).
    pub fn wait_exit(&mut self, within: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if let Ok(Some(st)) = self.child.try_wait() {
                return Some(st);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        self.stop()
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
    /// The attacker (only after [`Net::add_attacker`]).
    pub atk: String,
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
    atk_built: bool,
    /// Queues of the n2/g0 veth pair (one per data plane worker).
    gw_queues: u8,
    /// The data plane's `session_capacity` (default 1024; load tests raise it).
    pub session_capacity: usize,
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
            atk: format!("jatk{id}"),
            dir,
            dataplane: None,
            control: None,
            client: None,
            echo: None,
            client_public,
            bpffs: false,
            atk_built: false,
            gw_queues: 1,
            session_capacity: 1024,
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
            (&gw, "g1", "10.10.0.1/24"),
            (&srv, "s0", "10.10.0.2/24"),
        ] {
            ip(&["-n", ns, "addr", "add", addr, "dev", dev])?;
            ip(&["-n", ns, "link", "set", dev, "up"])?;
        }
        self.link_gateway(1)?;
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

    /// (Re)create the n2/g0 veth pair with `queues` receive and transmit queues on both ends.
    fn link_gateway(&mut self, queues: u8) -> Result<()> {
        let (nat, gw) = (self.nat.clone(), self.gw.clone());
        // Deleting g0 also deletes its peer; it does not exist on the first call.
        let _ = ip(&["-n", &gw, "link", "del", "g0"]);
        let q = queues.to_string();
        ip(&[
            "link",
            "add",
            "n2",
            "netns",
            &nat,
            "numtxqueues",
            &q,
            "numrxqueues",
            &q,
            "type",
            "veth",
            "peer",
            "name",
            "g0",
            "netns",
            &gw,
            "numtxqueues",
            &q,
            "numrxqueues",
            &q,
        ])?;
        for (ns, dev, addr) in [(&nat, "n2", "192.0.2.1/24"), (&gw, "g0", "192.0.2.2/24")] {
            ip(&["-n", ns, "addr", "add", addr, "dev", dev])?;
            ip(&["-n", ns, "link", "set", dev, "up"])?;
        }
        self.gw_queues = queues;
        Ok(())
    }

    /// Add the attacker namespace: `a0 10.0.3.2` linked to the NAT box's `n3 10.0.3.1`, its
    /// traffic masqueraded towards the gateway like the client's. Removed on drop.
    ///
    /// # Errors
    /// A command failed.
    pub fn add_attacker(&mut self) -> Result<()> {
        if self.atk_built {
            return Ok(());
        }
        let (atk, nat) = (self.atk.clone(), self.nat.clone());
        ip(&["netns", "add", &atk])?;
        self.atk_built = true;
        ip(&["-n", &atk, "link", "set", "lo", "up"])?;
        ip(&[
            "link", "add", "a0", "netns", &atk, "type", "veth", "peer", "name", "n3", "netns", &nat,
        ])?;
        for (ns, dev, addr) in [(&atk, "a0", "10.0.3.2/24"), (&nat, "n3", "10.0.3.1/24")] {
            ip(&["-n", ns, "addr", "add", addr, "dev", dev])?;
            ip(&["-n", ns, "link", "set", dev, "up"])?;
        }
        ip(&["-n", &atk, "route", "add", "default", "via", "10.0.3.1"])?;
        Ok(())
    }

    /// Send each of `payloads` as one UDP datagram from the attacker namespace to `to` (one
    /// socket, so one NAT mapping), `pause` apart, then collect for `listen` what comes back.
    /// Returns the attacker's local address and the datagrams received.
    ///
    /// # Errors
    /// No attacker namespace, or a socket error.
    pub fn attacker_send(
        &self,
        to: SocketAddr,
        payloads: &[Vec<u8>],
        pause: Duration,
        listen: Duration,
    ) -> Result<(SocketAddr, Vec<Vec<u8>>)> {
        if !self.atk_built {
            bail!("no attacker namespace: call Net::add_attacker first");
        }
        let atk = self.atk.clone();
        let payloads = payloads.to_vec();
        std::thread::spawn(move || -> Result<(SocketAddr, Vec<Vec<u8>>)> {
            enter(&atk)?;
            let s = UdpSocket::bind("10.0.3.2:0")?;
            for p in &payloads {
                s.send_to(p, to)?;
                std::thread::sleep(pause);
            }
            s.set_read_timeout(Some(Duration::from_millis(20)))?;
            let end = Instant::now() + listen;
            let mut got = Vec::new();
            let mut buf = [0u8; 2048];
            while Instant::now() < end {
                if let Ok((n, _)) = s.recv_from(&mut buf) {
                    got.push(buf[..n].to_vec());
                }
            }
            Ok((s.local_addr()?, got))
        })
        .join()
        .map_err(|_| anyhow::anyhow!("the attacker thread panicked"))?
    }

    /// Set a client link (`c0`, `c1`) up or down.
    ///
    /// # Errors
    /// ip failed.
    pub fn client_link(&self, dev: &str, up: bool) -> Result<()> {
        ip(&[
            "-n",
            &self.cl,
            "link",
            "set",
            dev,
            if up { "up" } else { "down" },
        ])
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
        self.start_dataplane_with("af_xdp", 1)
    }

    /// Start the data plane with `backend` (`"af_xdp"`, `"io_uring"` or `"auto"`) and
    /// `workers` workers on CPUs 0..workers. With more than one worker the n2/g0 veth pair is
    /// recreated with that many queues on both ends (one per worker).
    ///
    /// # Errors
    /// Bad arguments, or it did not come up.
    pub fn start_dataplane_with(&mut self, backend: &str, workers: u8) -> Result<()> {
        if !matches!(backend, "af_xdp" | "io_uring" | "auto") {
            bail!("backend `{backend}`: use af_xdp, io_uring or auto");
        }
        if workers == 0 {
            bail!("at least one worker");
        }
        if workers != self.gw_queues {
            self.link_gateway(workers)?;
        }
        let cpus = (0..workers)
            .map(|c| c.to_string())
            .collect::<Vec<_>>()
            .join(", ");
        let bpf = self.dir.join("bpffs");
        if !self.bpffs {
            fs::create_dir_all(&bpf)?;
            run(Command::new("mount").args(["-t", "bpf", "bpf", &bpf.display().to_string()]))?;
            self.bpffs = true;
        }
        let cfg = format!(
            "backend = \"{backend}\"\ninterface = \"g0\"\nlisten = \"{GATEWAY}\"\ncpus = [{cpus}]\n\
             session_capacity = {}\ncontrol_socket = \"{}\"\nbpf_pin_dir = \"{}\"\n\
             [inside]\ntun = \"jump0\"\n[af_xdp]\nframes = 1024\nring_size = 512\n",
            self.session_capacity,
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
        self.configure_control_with("", policy)
    }

    /// Write the control process's configuration with `top` (extra top-level TOML lines, e.g.
    /// `cookie_threshold = 100`) and `policy` (TOML lines of `[policy]`).
    ///
    /// # Errors
    /// Writing failed.
    pub fn configure_control_with(&self, top: &str, policy: &str) -> Result<()> {
        let cfg = format!(
            "listen = \"{GATEWAY}\"\nprivate_key_file = \"{}\"\nclients_file = \"{}\"\n\
             dataplane_socket = \"{}\"\ncontrol_socket = \"{}\"\nstate_dir = \"{}\"\n\
             {top}\n[policy]\n{policy}\n",
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
        self.start_client_with(&[])
    }

    /// Start the client with both paths and its own policy file made of `policy` (TOML lines
    /// of `[policy]`, as given to [`Net::configure_control`]).
    ///
    /// # Errors
    /// It could not start.
    pub fn start_client_with_policy(&mut self, policy: &str) -> Result<()> {
        let file = self.path("client-policy.toml");
        fs::write(&file, format!("[policy]\n{policy}\n"))?;
        self.start_client_with(&["--policy", &file])
    }

    /// Start the client with both paths and `extra` arguments.
    ///
    /// # Errors
    /// It could not start.
    pub fn start_client_with(&mut self, extra: &[&str]) -> Result<()> {
        let gw_pub = fs::read_to_string(self.dir.join("gateway.pub"))?;
        let mut args: Vec<String> = [
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
        args.extend(extra.iter().map(ToString::to_string));
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

    /// Ask the client to switch to path `path` now (its status socket); its answer.
    ///
    /// # Errors
    /// No client answered.
    pub fn client_switch(&self, path: u32) -> Result<Value> {
        let mut s = UnixStream::connect(self.dir.join("client.sock"))?;
        s.set_read_timeout(Some(Duration::from_secs(3)))?;
        s.write_all(format!("{{\"cmd\":\"switch\",\"path\":{path}}}\n").as_bytes())?;
        let mut out = String::new();
        s.read_to_string(&mut out)?;
        Ok(serde_json::from_str(out.trim())?)
    }

    /// `jumpctl --json args...`, parsed; an error if it failed.
    ///
    /// # Errors
    /// It failed or did not print JSON.
    pub fn jumpctl_json(&self, args: &[&str]) -> Result<Value> {
        let mut a = vec!["--json"];
        a.extend_from_slice(args);
        let out = self.jumpctl(&a)?;
        if !out.status.success() {
            bail!(
                "jumpctl {args:?}: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(serde_json::from_slice(&out.stdout)?)
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
        if self.atk_built {
            let _ = Command::new("ip")
                .args(["netns", "del", &self.atk])
                .output();
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
    pause: Arc<AtomicBool>,
    /// Datagrams the echo server received (replays and duplicates included).
    pub server_received: Arc<AtomicU64>,
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
        let server_received = Arc::new(AtomicU64::new(0));
        let (s2, r2, n2) = (
            Arc::clone(&stop),
            Arc::clone(&ready),
            Arc::clone(&server_received),
        );
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
                    n2.fetch_add(1, Ordering::Relaxed);
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
        let pause = Arc::new(AtomicBool::new(false));
        let p3 = Arc::clone(&pause);
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
                if p3.load(Ordering::Relaxed) {
                    next = Instant::now();
                } else if Instant::now() >= next {
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
            pause,
            server_received,
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

    /// Stop (`true`) or resume (`false`) sending; echoes are still received.
    pub fn pause(&self, paused: bool) {
        self.pause.store(paused, Ordering::Relaxed);
    }

    /// Datagrams the echo server received so far.
    #[must_use]
    pub fn server_count(&self) -> u64 {
        self.server_received.load(Ordering::Relaxed)
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

/// One captured UDP datagram.
#[derive(Debug, Clone)]
pub struct Captured {
    /// Source address as seen on the wire where it was captured.
    pub from: SocketAddrV4,
    /// The UDP payload.
    pub payload: Vec<u8>,
    /// Milliseconds since the capture started.
    pub at_ms: u64,
}

/// A packet capture (AF_PACKET, every interface of one namespace) of the UDP datagrams to one
/// address that the namespace transmits (outgoing frames only, so a forwarded datagram is seen
/// once, after NAT). `tcpdump` is not needed.
///
/// In the NAT box this sees what the gateway receives: on the gateway itself the XDP program
/// redirects tunnel datagrams to AF_XDP before any packet tap.
#[derive(Debug)]
pub struct Capture {
    stop: Arc<AtomicBool>,
    /// What was captured so far.
    pub packets: Arc<Mutex<Vec<Captured>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// `PACKET_OUTGOING` (linux/if_packet.h).
const PACKET_OUTGOING: u8 = 4;

fn parse_udp_to(frame: &[u8], hatype: u16, to: SocketAddrV4) -> Option<(SocketAddrV4, Vec<u8>)> {
    // Ethernet (ARPHRD_ETHER = 1) has a 14-byte header; anything else is not ours.
    if hatype != 1 || frame.len() < 14 + 20 + 8 || frame[12..14] != [0x08, 0x00] {
        return None;
    }
    let ip = &frame[14..];
    let ihl = usize::from(ip[0] & 0x0f) * 4;
    if ip[0] >> 4 != 4 || ihl < 20 || ip[9] != 17 || ip.len() < ihl + 8 {
        return None;
    }
    let total = usize::from(u16::from_be_bytes([ip[2], ip[3]])).min(ip.len());
    let src = Ipv4Addr::new(ip[12], ip[13], ip[14], ip[15]);
    let dst = Ipv4Addr::new(ip[16], ip[17], ip[18], ip[19]);
    let udp = &ip[ihl..total];
    let sport = u16::from_be_bytes([udp[0], udp[1]]);
    let dport = u16::from_be_bytes([udp[2], udp[3]]);
    if dst != *to.ip() || dport != to.port() || udp.len() < 8 {
        return None;
    }
    Some((SocketAddrV4::new(src, sport), udp[8..].to_vec()))
}

impl Capture {
    /// Start capturing in namespace `ns` what it sends to `to`.
    ///
    /// # Errors
    /// The namespace or the socket could not be opened.
    pub fn start(ns: &str, to: SocketAddrV4) -> Result<Capture> {
        use nix::sys::socket::{
            self as sock, AddressFamily, LinkAddr, SockFlag, SockProtocol, SockType,
        };
        let stop = Arc::new(AtomicBool::new(false));
        let packets = Arc::new(Mutex::new(Vec::new()));
        let (s2, p2, ns) = (Arc::clone(&stop), Arc::clone(&packets), ns.to_owned());
        let (tx, rx) = std::sync::mpsc::channel::<Result<()>>();
        let thread = std::thread::spawn(move || {
            let open = || -> Result<std::os::fd::OwnedFd> {
                enter(&ns)?;
                Ok(sock::socket(
                    AddressFamily::Packet,
                    SockType::Raw,
                    SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
                    SockProtocol::EthAll,
                )?)
            };
            let fd = match open() {
                Ok(fd) => {
                    let _ = tx.send(Ok(()));
                    fd
                }
                Err(e) => {
                    let _ = tx.send(Err(e));
                    return;
                }
            };
            let started = Instant::now();
            let mut buf = vec![0u8; 65_536];
            use std::os::fd::AsRawFd as _;
            while !s2.load(Ordering::Relaxed) {
                match sock::recvfrom::<LinkAddr>(fd.as_raw_fd(), &mut buf) {
                    Ok((n, Some(addr))) if addr.pkttype() == PACKET_OUTGOING => {
                        if let Some((from, payload)) =
                            parse_udp_to(&buf[..n.min(buf.len())], addr.hatype(), to)
                        {
                            let at_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(0);
                            if let Ok(mut v) = p2.lock() {
                                v.push(Captured {
                                    from,
                                    payload,
                                    at_ms,
                                });
                            }
                        }
                    }
                    Ok(_) => {}
                    Err(nix::errno::Errno::EAGAIN) => {
                        std::thread::sleep(Duration::from_millis(1));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(1)),
                }
            }
        });
        rx.recv_timeout(Duration::from_secs(5))
            .context("the capture thread did not start")??;
        Ok(Capture {
            stop,
            packets,
            thread: Some(thread),
        })
    }

    /// A copy of what was captured so far.
    #[must_use]
    pub fn packets(&self) -> Vec<Captured> {
        self.packets.lock().map(|v| v.clone()).unwrap_or_default()
    }

    /// Stop capturing; everything captured.
    pub fn stop(mut self) -> Vec<Captured> {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        self.packets()
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

impl Net {
    /// Send `payload` `count` times as UDP datagrams through the tunnel, from the client's inner
    /// address to the echo server behind the gateway ([`SERVER`], started by [`Traffic`]),
    /// `pause` apart, then wait up to `listen` for the echoes. Returns how many echoes equal to
    /// `payload` came back.
    ///
    /// # Errors
    /// The namespace or the socket could not be used.
    pub fn send_inner(
        &self,
        payload: &[u8],
        count: usize,
        pause: Duration,
        listen: Duration,
    ) -> Result<usize> {
        let cl = self.cl.clone();
        let payload = payload.to_vec();
        std::thread::spawn(move || -> Result<usize> {
            enter(&cl)?;
            let s = UdpSocket::bind(format!("{CLIENT_INNER}:0"))?;
            let dst: SocketAddr = SERVER.parse()?;
            s.set_read_timeout(Some(Duration::from_millis(20)))?;
            let mut buf = [0u8; 2048];
            let mut echo = || {
                s.recv_from(&mut buf)
                    .is_ok_and(|(n, _)| buf[..n] == payload[..])
            };
            let mut echoed = 0;
            for _ in 0..count {
                s.send_to(&payload, dst)?;
                let next = Instant::now() + pause;
                while Instant::now() < next {
                    echoed += usize::from(echo());
                }
            }
            let end = Instant::now() + listen;
            while echoed < count && Instant::now() < end {
                echoed += usize::from(echo());
            }
            Ok(echoed)
        })
        .join()
        .map_err(|_| anyhow::anyhow!("the sending thread panicked"))?
    }
}

impl Net {
    /// Everything a failing assertion should show: both sides' events and every process's log.
    #[must_use]
    pub fn diagnostics(&self) -> String {
        format!(
            "\n--- client events: {:?}\n--- control events: {:?}\n--- client log:\n{}\n--- control log:\n{}\n--- data plane log:\n{}",
            self.client_events(),
            self.control_events(),
            self.client.as_ref().map(Proc::log).unwrap_or_default(),
            self.control.as_ref().map(Proc::log).unwrap_or_default(),
            self.dataplane.as_ref().map(Proc::log).unwrap_or_default(),
        )
    }

    /// Ask the client to move to `path` and wait until the gateway has emitted `switches`
    /// PATH_SWITCHED events in all and the client reports `path` as current.
    ///
    /// # Panics
    /// The client refused the request, or the switch did not happen within 10 s.
    pub fn switch_and_wait(&self, path: u32, switches: usize) {
        let answer = self.client_switch(path).expect("switch");
        assert_eq!(answer["ok"], true, "{answer}");
        assert!(
            wait_for(Duration::from_secs(10), || {
                of(&self.control_events(), "PATH_SWITCHED").len() == switches
                    && self
                        .client_status()
                        .is_ok_and(|s| s["current_path"] == path)
            }),
            "no switch to path {path}:{}",
            self.diagnostics()
        );
    }
}
