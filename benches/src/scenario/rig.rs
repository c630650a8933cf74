//! The rig of a scenario run: the real gateway (data plane and control process) in the
//! end-to-end topology of `jumping-e2e` (client → NAT box → gateway → server namespaces),
//! an echo server in the server namespace, load generators in the client namespace, floods
//! from an attacker namespace, and optionally the impairment relay in the NAT box.
//!
//! Everything is removed when the rig is dropped, also on error or panic (the `Net` guard).

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use jumping_e2e::{bin, in_ns, wait_for, Net, Proc, GATEWAY};
use jumping_impair::Impairment;
use serde_json::Value;

/// Inner addresses of the load generator's clients start after this (a /14: 262 143 clients).
pub const INNER_BASE: &str = "10.100.0.0";
/// The route covering them.
pub const INNER_NET: &str = "10.100.0.0/14";
/// The echo server behind the gateway.
pub const ECHO: &str = "10.10.0.2:9";
/// The client namespace's two paths (source addresses).
pub const PATHS: [&str; 2] = ["10.0.1.2", "10.0.2.2"];
/// The port the impairment relay listens on in the NAT box.
pub const IMPAIR_PORT: u16 = 50_999;

/// How to set the rig up.
#[derive(Debug, Clone)]
pub struct Options {
    /// Data plane backend: `af_xdp` or `io_uring`.
    pub backend: &'static str,
    /// Data plane workers.
    pub workers: u8,
    /// Client identities to make (the load generators use the first ones).
    pub identities: usize,
    /// `[policy]` lines, for the gateway and the clients.
    pub policy: String,
    /// Extra top-level lines of the control configuration.
    pub control: String,
    /// Impairment in the NAT box, if any.
    pub impair: Option<Impairment>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            backend: "af_xdp",
            workers: 1,
            identities: 100,
            policy: String::new(),
            control: "cookie_threshold = 1000000".into(),
            impair: None,
        }
    }
}

/// A process's memory and CPU time, from /proc.
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct Usage {
    /// Resident set, KiB.
    pub rss_kib: u64,
    /// User + system CPU time, seconds.
    pub cpu_s: f64,
}

/// The whole machine's CPU time by kind, from the first line of `/proc/stat` (USER_HZ ticks).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HostCpu {
    /// user, nice, system, irq and softirq (guest time is already in user).
    busy: u64,
    /// idle and iowait.
    idle: u64,
    /// Taken by the hypervisor for other guests while this machine wanted to run.
    steal: u64,
}

/// Shares of the machine's CPU time over an interval (they add up to 1).
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize)]
pub struct HostShare {
    /// Running anything (this rig, the load generator, the kernel, anything else).
    pub busy: f64,
    /// Idle.
    pub idle: f64,
    /// Stolen by the hypervisor: on a shared machine, the noise behind a slow run.
    pub steal: f64,
}

impl HostCpu {
    /// Now (all zero if `/proc/stat` cannot be read).
    #[must_use]
    pub fn now() -> HostCpu {
        Self::parse(&fs::read_to_string("/proc/stat").unwrap_or_default())
    }

    /// The `cpu ` line of a `/proc/stat` text.
    #[must_use]
    pub fn parse(text: &str) -> HostCpu {
        let Some(line) = text.lines().find(|l| l.starts_with("cpu ")) else {
            return HostCpu::default();
        };
        let f: Vec<u64> = line
            .split_whitespace()
            .skip(1)
            .map(|v| v.parse().unwrap_or(0))
            .collect();
        let at = |i: usize| f.get(i).copied().unwrap_or(0);
        HostCpu {
            busy: at(0) + at(1) + at(2) + at(5) + at(6),
            idle: at(3) + at(4),
            steal: at(7),
        }
    }

    /// The shares of the time from `earlier` to `self`.
    #[must_use]
    pub fn since(&self, earlier: &HostCpu) -> HostShare {
        let busy = self.busy.saturating_sub(earlier.busy) as f64;
        let idle = self.idle.saturating_sub(earlier.idle) as f64;
        let steal = self.steal.saturating_sub(earlier.steal) as f64;
        let all = busy + idle + steal;
        if all == 0.0 {
            return HostShare::default();
        }
        HostShare {
            busy: busy / all,
            idle: idle / all,
            steal: steal / all,
        }
    }
}

/// Read `/proc/<pid>/status` (VmRSS) and `/proc/<pid>/stat` (utime, stime; in USER_HZ ticks,
/// 100 per second on Linux).
#[must_use]
pub fn usage(pid: u32) -> Usage {
    let rss_kib = fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
        })
        .unwrap_or(0);
    let cpu_s = fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            // Fields after the command name (which may hold spaces) start after ") ".
            let rest = s.rsplit_once(") ")?.1;
            let f: Vec<&str> = rest.split_whitespace().collect();
            let ticks = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
            Some(ticks as f64 / 100.0)
        })
        .unwrap_or(0.0);
    Usage { rss_kib, cpu_s }
}

/// The rig.
#[derive(Debug)]
pub struct Rig {
    /// Namespaces and the gateway's processes.
    pub net: Net,
    /// The echo server.
    pub echo: Proc,
    /// The impairment relay.
    pub impair: Option<Proc>,
    gateway_public: String,
    /// The machine's CPU counters when the rig started (see [`Rig::host_cpu`]).
    host0: HostCpu,
}

fn path_str(p: &Path) -> String {
    p.display().to_string()
}

impl Rig {
    /// Build the topology, make identities, start the gateway and the echo server.
    ///
    /// # Errors
    /// Something did not start; what was built is removed.
    pub fn start(tag: &str, o: &Options) -> Result<Rig> {
        let mut net = Net::build(tag)?;
        net.session_capacity = (o.identities + 1024).next_power_of_two();
        let keys = net.dir.join("loadgen.keys");
        let clients = net.dir.join("clients");
        run(Command::new(bin("jumping-loadgen")).args([
            "keys",
            "--count",
            &o.identities.to_string(),
            "--inner-base",
            INNER_BASE,
            "--keys",
            &path_str(&keys),
            "--clients-file",
            &path_str(&clients),
        ]))?;
        fs::write(
            net.dir.join("policy.toml"),
            format!("[policy]\n{}\n", o.policy),
        )?;
        // Every event also goes to a SIEM file sink: the audit criteria compare it with stdout.
        let control = format!(
            "{}\n[export]\nfile = \"{}\"\nqueue = 1000000\n",
            o.control,
            path_str(&net.dir.join("siem.jsonl"))
        );
        net.configure_control_with(&control, &o.policy)?;
        net.start_dataplane_with(o.backend, o.workers)?;
        ip(&["-n", &net.gw, "route", "replace", INNER_NET, "dev", "jump0"])?;
        ip(&[
            "-n",
            &net.srv,
            "route",
            "replace",
            INNER_NET,
            "via",
            "10.10.0.1",
        ])?;
        net.start_control()?;
        let echo = Proc::spawn(
            "echo",
            &net.srv,
            &bin("jumping-loadgen"),
            &[
                "echo".into(),
                "--listen".into(),
                "0.0.0.0:9".into(),
                "--report".into(),
                path_str(&net.dir.join("echo.json")),
            ],
            net.dir.join("echo.log"),
            None,
        )?;
        let gateway_public = fs::read_to_string(net.dir.join("gateway.pub"))?
            .trim()
            .to_string();
        let mut rig = Rig {
            net,
            echo,
            impair: None,
            gateway_public,
            host0: HostCpu::now(),
        };
        if let Some(imp) = &o.impair {
            rig.start_impair(imp)?;
        }
        Ok(rig)
    }

    fn start_impair(&mut self, imp: &Impairment) -> Result<()> {
        let nat = self.net.nat.clone();
        let rules = self.net.dir.join("impair.nft");
        fs::write(
            &rules,
            jumping_impair::redirect_ruleset(IMPAIR_PORT, gateway_port()),
        )?;
        let cfg = self.net.dir.join("impair.json");
        fs::write(&cfg, serde_json::to_string(imp)?)?;
        let p = Proc::spawn(
            "impair",
            &nat,
            &bin("jumping-impair"),
            &[
                "--listen".into(),
                format!("0.0.0.0:{IMPAIR_PORT}"),
                "--upstream".into(),
                GATEWAY.into(),
                "--config".into(),
                path_str(&cfg),
                "--stats-file".into(),
                path_str(&self.net.dir.join("impair-stats.json")),
            ],
            self.net.dir.join("impair.log"),
            None,
        )?;
        if !wait_for(Duration::from_secs(10), || {
            p.lines.lock().is_ok_and(|l| !l.is_empty())
        }) {
            bail!(
                "the impairment relay did not start:\n{}",
                fs::read_to_string(self.net.dir.join("impair.log")).unwrap_or_default()
            );
        }
        in_ns(&nat, &["nft", "-f", &path_str(&rules)])?;
        self.impair = Some(p);
        Ok(())
    }

    /// A file of the run.
    #[must_use]
    pub fn file(&self, name: &str) -> PathBuf {
        self.net.dir.join(name)
    }

    /// Start a load generator `name` in the client namespace with `extra` arguments (its
    /// report goes to `<name>.json`, its progress to `<name>.status`). Sessions stay open at
    /// the end (`--no-terminate`), so the runner can compare them with the gateway's.
    ///
    /// # Errors
    /// It could not start.
    pub fn loadgen(&self, name: &'static str, extra: &[String]) -> Result<Proc> {
        let mut args: Vec<String> = vec![
            "clients".into(),
            "--gateway".into(),
            GATEWAY.into(),
            "--gateway-public".into(),
            self.gateway_public.clone(),
            "--keys".into(),
            path_str(&self.file("loadgen.keys")),
            "--policy".into(),
            path_str(&self.file("policy.toml")),
            "--echo".into(),
            ECHO.into(),
            "--report".into(),
            path_str(&self.file(&format!("{name}.json"))),
            "--status-file".into(),
            path_str(&self.file(&format!("{name}.status"))),
            "--no-terminate".into(),
        ];
        for p in PATHS {
            args.push("--path".into());
            args.push(p.into());
        }
        args.extend(extra.iter().cloned());
        let p = Proc::spawn(
            name,
            &self.net.cl,
            &bin("jumping-loadgen"),
            &args,
            self.file(&format!("{name}.log")),
            None,
        )?;
        Ok(p)
    }

    /// Start a flood from the attacker namespace (made on first use) with `extra` arguments;
    /// its report goes to `<name>.json`.
    ///
    /// # Errors
    /// It could not start.
    pub fn flood(&mut self, name: &'static str, extra: &[String]) -> Result<Proc> {
        self.net.add_attacker()?;
        let mut args: Vec<String> = vec![
            "flood".into(),
            "--gateway".into(),
            GATEWAY.into(),
            "--gateway-public".into(),
            self.gateway_public.clone(),
            "--bind".into(),
            "10.0.3.2".into(),
            "--report".into(),
            path_str(&self.file(&format!("{name}.json"))),
        ];
        args.extend(extra.iter().cloned());
        Proc::spawn(
            name,
            &self.net.atk,
            &bin("jumping-loadgen"),
            &args,
            self.file(&format!("{name}.log")),
            None,
        )
    }

    /// A load generator's latest progress line.
    #[must_use]
    pub fn status(&self, name: &str) -> Option<Value> {
        let text = fs::read_to_string(self.file(&format!("{name}.status"))).ok()?;
        serde_json::from_str(text.trim()).ok()
    }

    /// Wait until load generator `name` has `n` live sessions; false if `within` passes.
    #[must_use]
    pub fn wait_live(&self, name: &str, n: u64, within: Duration) -> bool {
        wait_for(within, || {
            self.status(name)
                .is_some_and(|s| s["live"].as_u64().unwrap_or(0) >= n)
        })
    }

    /// Wait for a process to end by itself and read its JSON report `<name>.json`.
    ///
    /// # Errors
    /// No report (the process's log is in the message).
    pub fn report(&self, p: &mut Proc, name: &str, within: Duration) -> Result<Value> {
        p.wait_exit(within);
        let f = self.file(&format!("{name}.json"));
        let text = fs::read_to_string(&f).with_context(|| {
            format!(
                "{name} wrote no report; its log:\n{}",
                fs::read_to_string(self.file(&format!("{name}.log"))).unwrap_or_default()
            )
        })?;
        Ok(serde_json::from_str(&text)?)
    }

    /// Memory and CPU of the control process and the data plane.
    #[must_use]
    pub fn gateway_usage(&self) -> BTreeMap<&'static str, Usage> {
        let mut m = BTreeMap::new();
        if let Some(p) = &self.net.control {
            m.insert("control", usage(p.pid()));
        }
        if let Some(p) = &self.net.dataplane {
            m.insert("dataplane", usage(p.pid()));
        }
        m
    }

    /// How the whole machine's CPU time was spent since the rig started: busy, idle, and
    /// stolen by the hypervisor (runs on a shared machine are comparable only at similar steal).
    #[must_use]
    pub fn host_cpu(&self) -> HostShare {
        HostCpu::now().since(&self.host0)
    }

    /// The gateway namespace's kernel UDP counters (`/proc/net/snmp`): datagrams taken by its
    /// sockets, and those dropped because a socket's receive buffer was full
    /// (`RcvbufErrors`: on AF_XDP that is the control process's socket, which takes every
    /// handshake and reattach). Empty if they cannot be read.
    #[must_use]
    pub fn kernel_udp(&self) -> BTreeMap<String, u64> {
        let text = in_ns(&self.net.gw, &["cat", "/proc/net/snmp"])
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default();
        parse_snmp_udp(&text)
    }

    /// Scrape a metrics endpoint in the gateway namespace (`9470` control, `9471` data plane).
    #[must_use]
    pub fn scrape(&self, port: u16) -> String {
        in_ns(
            &self.net.gw,
            &[
                "curl",
                "-s",
                "-m",
                "5",
                &format!("http://127.0.0.1:{port}/metrics"),
            ],
        )
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default()
    }

    /// The gateway's sessions (`jumpctl --json sessions`).
    ///
    /// # Errors
    /// jumpctl failed.
    pub fn gateway_sessions(&self) -> Result<Vec<Value>> {
        let v = self.net.jumpctl_json(&["sessions"])?;
        let list = if v.is_array() {
            v
        } else {
            v["sessions"].clone()
        };
        Ok(list.as_array().cloned().unwrap_or_default())
    }

    /// Flush the NAT box's connection tracking (every mapping gets a new source port).
    ///
    /// # Errors
    /// conntrack failed.
    pub fn nat_flush(&self) -> Result<()> {
        self.net.nat_rebind()
    }
}

impl Drop for Rig {
    /// With `JUMPING_BENCH_KEEP=DIR`, the run's files (configurations, logs, reports) are
    /// copied to `DIR/<namespace tag>/` before the topology is removed: for post-mortems.
    fn drop(&mut self) {
        if let Some(keep) = std::env::var_os("JUMPING_BENCH_KEEP") {
            let _ = self.echo.stop();
            if let Some(p) = &mut self.impair {
                let _ = p.stop();
            }
            let to = PathBuf::from(keep).join(&self.net.gw);
            let _ = fs::create_dir_all(&to);
            let _ = Command::new("cp")
                .arg("-r")
                .arg(&self.net.dir)
                .arg(&to)
                .status();
        }
    }
}

/// Sum of the samples of metric `name` whose labels contain every `label="value"` of `want`.
#[must_use]
pub fn metric(text: &str, name: &str, want: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (head, value) = l.rsplit_once(' ')?;
            let (n, labels) = match head.split_once('{') {
                Some((n, rest)) => (n, rest.trim_end_matches('}')),
                None => (head, ""),
            };
            if n != name {
                return None;
            }
            let ok = want
                .iter()
                .all(|(k, v)| labels.contains(&format!("{k}=\"{v}\"")));
            ok.then(|| value.parse::<f64>().ok()).flatten()
        })
        .sum()
}

fn gateway_port() -> u16 {
    GATEWAY
        .rsplit_once(':')
        .and_then(|(_, p)| p.parse().ok())
        .unwrap_or(51_820)
}

fn run(cmd: &mut Command) -> Result<()> {
    let out = cmd.output().with_context(|| format!("{cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

fn ip(args: &[&str]) -> Result<()> {
    run(Command::new("ip").args(args))
}

/// Seconds since `t`.
#[must_use]
pub fn since(t: Instant) -> f64 {
    t.elapsed().as_secs_f64()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metric_sums_matching_samples() {
        let text =
            "# HELP x y\njumping_worker_drops_total{worker=\"0\",cpu=\"0\",reason=\"replay\"} 3\n\
                    jumping_worker_drops_total{worker=\"1\",cpu=\"1\",reason=\"replay\"} 4\n\
                    jumping_worker_drops_total{worker=\"1\",cpu=\"1\",reason=\"auth\"} 9\n\
                    jumping_handshakes_total 12\n";
        assert_eq!(
            metric(text, "jumping_worker_drops_total", &[("reason", "replay")]),
            7.0
        );
        assert_eq!(metric(text, "jumping_handshakes_total", &[]), 12.0);
        assert_eq!(metric(text, "jumping_nothing", &[]), 0.0);
    }

    #[test]
    fn host_cpu_shares_from_proc_stat() {
        let a = HostCpu::parse("cpu  100 0 50 800 20 5 5 20 0 0\ncpu0 1 2 3\n");
        assert_eq!(
            a,
            HostCpu {
                busy: 160,
                idle: 820,
                steal: 20
            }
        );
        let b = HostCpu::parse("intr 1\ncpu  160 0 90 880 20 5 5 40 0 0\n");
        let s = b.since(&a);
        assert!((s.busy - 0.5).abs() < 1e-9, "{s:?}");
        assert!((s.idle - 0.4).abs() < 1e-9, "{s:?}");
        assert!((s.steal - 0.1).abs() < 1e-9, "{s:?}");
        assert_eq!(a.since(&a), HostShare::default());
        assert_eq!(HostCpu::parse("garbage"), HostCpu::default());
        assert!(HostCpu::now().busy > 0);
    }

    #[test]
    fn usage_of_this_process() {
        let u = usage(std::process::id());
        assert!(u.rss_kib > 0);
        assert!(u.cpu_s >= 0.0);
    }
}

/// The `Udp:` counters of a `/proc/net/snmp` text (a header line of names, then one of values),
/// the ones a load test looks at.
fn parse_snmp_udp(text: &str) -> BTreeMap<String, u64> {
    let mut lines = text.lines().filter(|l| l.starts_with("Udp:"));
    let (Some(names), Some(values)) = (lines.next(), lines.next()) else {
        return BTreeMap::new();
    };
    names
        .split_whitespace()
        .zip(values.split_whitespace())
        .skip(1)
        .filter(|(n, _)| matches!(*n, "InDatagrams" | "InErrors" | "RcvbufErrors" | "NoPorts"))
        .filter_map(|(n, v)| Some((n.to_string(), v.parse().ok()?)))
        .collect()
}

#[cfg(test)]
mod snmp_tests {
    use super::parse_snmp_udp;

    #[test]
    fn udp_counters_are_read_by_name_not_position() {
        let text = "Ip: Forwarding DefaultTTL\nIp: 1 64\n\
                    Udp: InDatagrams NoPorts InErrors OutDatagrams RcvbufErrors SndbufErrors\n\
                    Udp: 93686 3 61984 147579 61980 0\n\
                    UdpLite: InDatagrams NoPorts InErrors OutDatagrams RcvbufErrors SndbufErrors\n\
                    UdpLite: 0 0 0 0 0 0\n";
        let m = parse_snmp_udp(text);
        assert_eq!(m["InDatagrams"], 93686);
        assert_eq!(m["NoPorts"], 3);
        assert_eq!(m["InErrors"], 61984);
        assert_eq!(m["RcvbufErrors"], 61980);
        assert!(!m.contains_key("OutDatagrams"));
        assert!(parse_snmp_udp("garbage").is_empty());
    }
}
