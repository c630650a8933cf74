//! The data plane's configuration: TOML, every key optional over embedded defaults, unknown
//! keys refused, every value checked at start-up with a message that names the key and says
//! what to fix.

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::Deserialize;

/// The defaults, as a TOML document (also the reference for every key).
pub const DEFAULT_TOML: &str = r#"
# Which I/O the workers use: "auto" (AF_XDP, else io_uring, the reason logged), "af_xdp" or
# "io_uring".
backend = "auto"
# The outside interface (AF_XDP: the XDP program is attached here, one socket per queue).
interface = "eth0"
# The tunnel address: its port is the one the XDP program steers and the io_uring sockets
# bind. AF_XDP needs a concrete address (it is the source of every datagram sent).
listen = "0.0.0.0:51820"
# One worker per listed CPU, pinned; worker i serves receive queue i and owns the sessions
# whose SessionId top byte is i.
cpus = [0]
# Sessions each worker can hold (allocated at start).
session_capacity = 65536
# Expanded AEAD keys each worker caches (about 1.1 KiB each): sessions beyond this many
# sending at once on one worker pay a key expansion per packet.
key_cache_entries = 8192
# The control process connects here (mode 0600).
control_socket = "/run/jumping/dataplane.sock"
# Where the XDP program's maps are pinned (a bpffs).
bpf_pin_dir = "/sys/fs/bpf/jumping"
# The node id of the control process this data plane serves (its `node_id`): used only to
# write correlation ids (`n<node>-<SessionId>`) in log lines about a session.
node_id = 0
# Log levels per module, e.g. "info,jumping_dataplane::control=debug" (`--log`, JUMPING_LOG
# and RUST_LOG take precedence, in that order).
log = "info"
# "auto" (human on a terminal, JSON lines otherwise), "human" or "json".
log_format = "auto"
# Prometheus endpoint (GET /metrics): per-worker packets, bytes and drops by reason, and the
# XDP program's counters, summed on each scrape. "off" disables it. Loopback by default.
metrics_listen = "127.0.0.1:9471"

[inside]
# The inside interface: "tun" (a multi-queue TUN device, driven by io_uring) or "af_xdp" (an
# inside NIC: an XDP program steers packets to client addresses into one AF_XDP socket per
# queue; worker i serves inside queue i). The [af_xdp] sizes apply to both NICs.
kind = "tun"
# The TUN device carrying inner packets (kind = "tun"; one queue per worker). Addresses and
# routes are the operator's.
tun = "jump0"
# The inside NIC (kind = "af_xdp", required): it needs at least one receive queue per
# worker. Its addresses, and the inside network's route to the client addresses via one of
# them, are the operator's.
interface = ""
# The inside next hop's MAC (kind = "af_xdp"): destination of every frame sent inside;
# empty = learnt from received inside frames.
next_hop_mac = ""

[af_xdp]
# UMEM frames per socket, frame size, ring sizes, receive batch.
frames = 4096
frame_size = 2048
ring_size = 2048
batch = 64
# Copy mode (needed on veth and NICs without zero-copy).
copy = true
# XDP attach mode: "driver" (native) or "skb" (generic).
xdp_mode = "driver"
# The next hop's MAC for transmitted frames; empty = learnt from received frames.
next_hop_mac = ""
"#;

/// Which I/O the workers use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BackendChoice {
    /// AF_XDP if it can be set up, else io_uring.
    Auto,
    /// AF_XDP or nothing.
    AfXdp,
    /// io_uring over UDP sockets.
    IoUring,
}

/// XDP attach mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum XdpMode {
    /// Native (driver) mode.
    Driver,
    /// Generic (skb) mode.
    Skb,
}

/// Which inside interface the workers use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum InsideKind {
    /// A multi-queue TUN device, driven by io_uring.
    Tun,
    /// An inside NIC with AF_XDP sockets and its own XDP program.
    AfXdp,
}

/// The inside interface.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Inside {
    /// TUN or AF_XDP.
    pub kind: InsideKind,
    /// TUN device name (kind `tun`).
    pub tun: String,
    /// Inside NIC (kind `af_xdp`).
    pub interface: String,
    /// Inside next hop MAC, `aa:bb:cc:dd:ee:ff`, or empty (learnt).
    pub next_hop_mac: String,
}

/// AF_XDP sizes.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AfXdp {
    /// UMEM frames per socket.
    pub frames: u32,
    /// Frame size.
    pub frame_size: u32,
    /// Ring sizes.
    pub ring_size: u32,
    /// Receive batch.
    pub batch: usize,
    /// Copy mode.
    pub copy: bool,
    /// XDP attach mode.
    pub xdp_mode: XdpMode,
    /// Next hop MAC, `aa:bb:cc:dd:ee:ff`, or empty.
    pub next_hop_mac: String,
}

/// The whole configuration.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Backend.
    pub backend: BackendChoice,
    /// Outside interface.
    pub interface: String,
    /// Tunnel address.
    pub listen: SocketAddr,
    /// Worker CPUs.
    pub cpus: Vec<usize>,
    /// Sessions per worker.
    pub session_capacity: usize,
    /// Expanded-key cache entries per worker.
    pub key_cache_entries: usize,
    /// Control socket path.
    pub control_socket: PathBuf,
    /// bpffs pin directory.
    pub bpf_pin_dir: PathBuf,
    /// The control process's node id (log correlation ids).
    pub node_id: u8,
    /// Log levels per module.
    pub log: String,
    /// Log format: auto, human, json.
    pub log_format: String,
    /// Prometheus endpoint ("off" = none).
    pub metrics_listen: String,
    /// Inside interface.
    pub inside: Inside,
    /// AF_XDP sizes.
    pub af_xdp: AfXdp,
}

/// A configuration that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// Not valid TOML, an unknown key or a value of the wrong type.
    #[error("configuration: {0}")]
    Parse(String),
    /// A value out of range.
    #[error("configuration key `{key}`: {problem}")]
    Invalid {
        /// The key.
        key: &'static str,
        /// What is wrong and what to do.
        problem: String,
    },
}

fn invalid(key: &'static str, problem: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key,
        problem: problem.into(),
    }
}

fn merge(base: &mut toml::Table, over: toml::Table) {
    for (k, v) in over {
        match (base.get_mut(&k), v) {
            (Some(toml::Value::Table(b)), toml::Value::Table(o)) => merge(b, o),
            (_, v) => {
                base.insert(k, v);
            }
        }
    }
}

impl Config {
    /// The embedded defaults.
    ///
    /// # Panics
    /// Never: the defaults are checked by a test.
    #[must_use]
    pub fn defaults() -> Self {
        Self::from_toml("").expect("embedded defaults are valid")
    }

    /// The defaults overridden by `text`, checked.
    ///
    /// # Errors
    /// [`ConfigError`] naming the key.
    pub fn from_toml(text: &str) -> Result<Self, ConfigError> {
        let mut base: toml::Table =
            toml::from_str(DEFAULT_TOML).map_err(|e| ConfigError::Parse(e.to_string()))?;
        let over: toml::Table =
            toml::from_str(text).map_err(|e| ConfigError::Parse(e.to_string()))?;
        merge(&mut base, over);
        let c: Config = toml::Value::Table(base)
            .try_into()
            .map_err(|e: toml::de::Error| ConfigError::Parse(e.to_string()))?;
        c.check()?;
        Ok(c)
    }

    fn check(&self) -> Result<(), ConfigError> {
        if self.cpus.is_empty() || self.cpus.len() > 64 {
            return Err(invalid("cpus", "list between 1 and 64 CPUs"));
        }
        let mut sorted = self.cpus.clone();
        sorted.sort_unstable();
        sorted.dedup();
        if sorted.len() != self.cpus.len() {
            return Err(invalid("cpus", "a CPU is listed twice"));
        }
        if self.listen.port() == 0 {
            return Err(invalid("listen", "give a port (the tunnel port)"));
        }
        if !(1..=16_000_000).contains(&self.session_capacity) {
            return Err(invalid("session_capacity", "between 1 and 16000000"));
        }
        if !(64..=1 << 22).contains(&self.key_cache_entries) {
            return Err(invalid("key_cache_entries", "between 64 and 4194304"));
        }
        if self.interface.is_empty() || self.interface.len() >= 16 {
            return Err(invalid("interface", "an interface name of 1 to 15 bytes"));
        }
        if self.inside.tun.is_empty() || self.inside.tun.len() >= 16 {
            return Err(invalid("inside.tun", "a device name of 1 to 15 bytes"));
        }
        if self.inside.interface.len() >= 16 {
            return Err(invalid(
                "inside.interface",
                "an interface name of 1 to 15 bytes",
            ));
        }
        if !self.inside.next_hop_mac.is_empty() && parse_mac(&self.inside.next_hop_mac).is_none() {
            return Err(invalid(
                "inside.next_hop_mac",
                "six hex bytes like 02:00:00:00:00:01, or empty to learn it",
            ));
        }
        if self.inside.kind == InsideKind::AfXdp {
            if self.inside.interface.is_empty() {
                return Err(invalid(
                    "inside.interface",
                    "kind = \"af_xdp\" needs the inside NIC's name",
                ));
            }
            if self.backend != BackendChoice::IoUring && self.inside.interface == self.interface {
                return Err(invalid(
                    "inside.interface",
                    "the inside NIC must not be the outside `interface` (one XDP program per NIC)",
                ));
            }
        }
        observe::log::parse_levels(&self.log).map_err(|e| invalid("log", e))?;
        self.log_format
            .parse::<observe::log::LogFormat>()
            .map_err(|e| invalid("log_format", e))?;
        self.metrics_addr()?;
        let x = &self.af_xdp;
        if !x.frames.is_power_of_two() || x.frames < 64 {
            return Err(invalid("af_xdp.frames", "a power of two, at least 64"));
        }
        if x.frame_size != 2048 && x.frame_size != 4096 {
            return Err(invalid("af_xdp.frame_size", "2048 or 4096"));
        }
        if !x.ring_size.is_power_of_two() || x.ring_size > x.frames {
            return Err(invalid(
                "af_xdp.ring_size",
                "a power of two no larger than af_xdp.frames",
            ));
        }
        if x.batch == 0 || x.batch > 1024 {
            return Err(invalid("af_xdp.batch", "between 1 and 1024"));
        }
        if !x.next_hop_mac.is_empty() && parse_mac(&x.next_hop_mac).is_none() {
            return Err(invalid(
                "af_xdp.next_hop_mac",
                "six hex bytes like 02:00:00:00:00:01, or empty to learn it",
            ));
        }
        Ok(())
    }

    /// The Prometheus endpoint's address, if enabled.
    ///
    /// # Errors
    /// Not an address.
    pub fn metrics_addr(&self) -> Result<Option<SocketAddr>, ConfigError> {
        observe::metrics::parse_listen(&self.metrics_listen)
            .map_err(|e| invalid("metrics_listen", e))
    }

    /// The configured next-hop MAC, if any.
    #[must_use]
    pub fn next_hop_mac(&self) -> Option<[u8; 6]> {
        parse_mac(&self.af_xdp.next_hop_mac)
    }

    /// The configured inside next-hop MAC, if any.
    #[must_use]
    pub fn inside_next_hop_mac(&self) -> Option<[u8; 6]> {
        parse_mac(&self.inside.next_hop_mac)
    }
}

/// Parse `aa:bb:cc:dd:ee:ff`.
#[must_use]
pub fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let mut mac = [0u8; 6];
    let mut parts = s.trim().split(':');
    for b in &mut mac {
        let p = parts.next()?;
        if p.len() != 2 {
            return None;
        }
        *b = u8::from_str_radix(p, 16).ok()?;
    }
    parts.next().is_none().then_some(mac)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_overrides_apply() {
        let d = Config::defaults();
        assert_eq!(d.backend, BackendChoice::Auto);
        assert_eq!(d.cpus, vec![0]);
        let c = Config::from_toml("cpus = [0, 1]\n[af_xdp]\nbatch = 32\n").expect("valid");
        assert_eq!(
            (c.cpus.len(), c.af_xdp.batch, c.af_xdp.frames),
            (2, 32, 4096)
        );
    }

    #[test]
    fn bad_values_name_their_key() {
        for (text, key) in [
            ("cpus = []", "cpus"),
            ("cpus = [1, 1]", "cpus"),
            ("log = \"jumping=loud\"", "log"),
            ("log_format = \"xml\"", "log_format"),
            ("metrics_listen = \"localhost:9471\"", "metrics_listen"),
            ("listen = \"10.0.0.1:0\"", "listen"),
            ("[af_xdp]\nframes = 1000", "af_xdp.frames"),
            ("[af_xdp]\nnext_hop_mac = \"zz\"", "af_xdp.next_hop_mac"),
            ("[inside]\ntun = \"\"", "inside.tun"),
            ("[inside]\nkind = \"af_xdp\"", "inside.interface"),
            (
                "interface = \"eth0\"\n[inside]\nkind = \"af_xdp\"\ninterface = \"eth0\"",
                "inside.interface",
            ),
            (
                "[inside]\ninterface = \"a-name-far-too-long\"",
                "inside.interface",
            ),
            ("[inside]\nnext_hop_mac = \"02:00\"", "inside.next_hop_mac"),
        ] {
            let e = Config::from_toml(text).expect_err(text).to_string();
            assert!(e.contains(key), "{text}: {e}");
        }
        let e = Config::from_toml("colour = 1")
            .expect_err("unknown key")
            .to_string();
        assert!(e.contains("colour"), "{e}");
        let e = Config::from_toml("backend = \"dpdk\"")
            .expect_err("bad backend")
            .to_string();
        assert!(e.contains("dpdk") || e.contains("backend"), "{e}");
        let e = Config::from_toml("[inside]\nkind = \"netmap\"")
            .expect_err("bad inside kind")
            .to_string();
        assert!(e.contains("netmap") || e.contains("kind"), "{e}");
    }

    #[test]
    fn inside_defaults_to_tun_and_takes_af_xdp() {
        let d = Config::defaults();
        assert_eq!(d.inside.kind, InsideKind::Tun);
        assert_eq!(d.inside_next_hop_mac(), None);
        let c = Config::from_toml(
            "[inside]\nkind = \"af_xdp\"\ninterface = \"eth1\"\nnext_hop_mac = \"02:00:00:00:00:09\"",
        )
        .expect("valid");
        assert_eq!(c.inside.kind, InsideKind::AfXdp);
        assert_eq!(c.inside.interface, "eth1");
        assert_eq!(c.inside_next_hop_mac(), Some([2, 0, 0, 0, 0, 9]));
    }

    #[test]
    fn macs_parse() {
        assert_eq!(parse_mac("02:00:0a:FF:00:01"), Some([2, 0, 10, 255, 0, 1]));
        assert_eq!(parse_mac("02:00:0a:ff:00"), None);
        assert_eq!(parse_mac("02:00:0a:ff:00:01:02"), None);
    }
}
