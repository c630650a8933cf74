//! The control process's configuration: TOML over embedded defaults, every value checked at
//! start-up with a message naming the key and what to fix.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use jumping_protocol::Policy;
use observe::export::{facility_code, ExportConfig, FileTarget, SyslogTarget, Transport};
use observe::log::LogFormat;
use serde::Deserialize;

/// The defaults, also printed by `--print-default-config`.
pub const DEFAULT_TOML: &str = r#"
# This node's id (0-255), encoded in every SessionId it creates.
node_id = 0
# The tunnel address. With the data plane on AF_XDP, the XDP program passes handshake,
# reattach and terminate messages to the kernel and this process receives them on its own UDP
# socket bound here (the same port as the data plane's `listen`). With io_uring the data plane
# owns the port and relays them over its socket.
listen = "0.0.0.0:51820"
# The gateway's static private key (base64, `jumpctl genkey`), mode 0600.
private_key_file = "/etc/jumping/gateway.key"
# Allowed clients, one per line: `<public key base64> <inner address>`; '#' starts a comment.
# Re-read by `jumpctl policy reload`.
clients_file = "/etc/jumping/clients"
# The data plane's control socket.
dataplane_socket = "/run/jumping/dataplane.sock"
# The operator socket (`jumpctl`): root, or members of `control_group` if set.
control_socket = "/run/jumping/control.sock"
control_group = ""
# Sessions, keys and versions persisted here (sealed under a key derived from the gateway key),
# so a restart of this process loses no session.
state_dir = "/var/lib/jumping"
# Most sessions held at once.
max_sessions = 1000000
# Handshakes per second above which a cookie round trip is required.
cookie_threshold = 1000
# How often the data plane's per-session activity is read (path-dead and key timers).
activity_poll = "250ms"
# How long to wait for the data plane at start-up.
dataplane_wait = "30s"
# Log levels per module, e.g. "info,jumping_control::daemon=debug" (`--log`, JUMPING_LOG and
# RUST_LOG take precedence, in that order).
log = "info"
# "auto" (human on a terminal, JSON lines otherwise), "human" or "json".
log_format = "auto"
# Prometheus endpoint (GET /metrics), or "off". Loopback by default: an address reachable from
# other hosts must be chosen on purpose.
metrics_listen = "127.0.0.1:9470"

# SIEM export of every event (SPEC.md section 8), off the decision path: each sink has a bounded
# queue; when it is full, events are dropped and counted (jumping_export_dropped_total).
[export]
# JSON lines to this file ("" = none), rotated past file_max_bytes into FILE.1 … FILE.<file_keep>.
file = ""
file_max_bytes = 104857600
file_keep = 10
# Syslog receivers, RFC 5424: "udp://IP:PORT" (one message per datagram) or "tcp://IP:PORT"
# (octet-counting framing, RFC 6587).
syslog = []
syslog_facility = "local0"
syslog_app_name = "jumping"
# Events held per sink while a receiver is slow or away.
queue = 4096

# Session policy (SPEC.md section 5). Empty: the defaults. Durations as "5s", "250ms", "24h".
[policy]
"#;

/// The configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Node id.
    pub node_id: u8,
    /// Tunnel address.
    pub listen: SocketAddr,
    /// Gateway key file.
    pub private_key_file: PathBuf,
    /// Allow-list file.
    pub clients_file: PathBuf,
    /// Data-plane socket.
    pub dataplane_socket: PathBuf,
    /// Operator socket.
    pub control_socket: PathBuf,
    /// Group allowed on the operator socket ("" = root only).
    pub control_group: String,
    /// Persistence directory.
    pub state_dir: PathBuf,
    /// Session limit.
    pub max_sessions: usize,
    /// Cookie threshold.
    pub cookie_threshold: u32,
    /// Activity poll interval.
    #[serde(deserialize_with = "de_duration")]
    pub activity_poll: Duration,
    /// Start-up wait for the data plane.
    #[serde(deserialize_with = "de_duration")]
    pub dataplane_wait: Duration,
    /// Log levels per module.
    pub log: String,
    /// Log format: auto, human, json.
    pub log_format: String,
    /// Prometheus endpoint ("off" = none).
    pub metrics_listen: String,
    /// SIEM export.
    pub export: Export,
    /// Session policy.
    pub policy: Policy,
}

/// The `[export]` section as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Export {
    /// Export file ("" = none).
    pub file: PathBuf,
    /// Rotation size.
    pub file_max_bytes: u64,
    /// Rotated files kept.
    pub file_keep: usize,
    /// `udp://IP:PORT` or `tcp://IP:PORT`.
    pub syslog: Vec<String>,
    /// Facility name.
    pub syslog_facility: String,
    /// APP-NAME.
    pub syslog_app_name: String,
    /// Queue per sink.
    pub queue: usize,
}

fn de_duration<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let s = String::deserialize(d)?;
    jumping_protocol::policy::parse_duration(&s).map_err(serde::de::Error::custom)
}

/// A configuration that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// Reading the file failed.
    #[error("cannot read {path}: {err}")]
    Read {
        /// File.
        path: PathBuf,
        /// Error.
        err: std::io::Error,
    },
    /// Not valid TOML or a key is unknown or mistyped.
    #[error("{0}")]
    Parse(String),
    /// A value is out of range.
    #[error("configuration key `{key}`: {msg}")]
    Value {
        /// Key.
        key: &'static str,
        /// What to fix.
        msg: String,
    },
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
    /// Parse `text` over the defaults and check it.
    ///
    /// # Errors
    /// [`ConfigError`] naming the key.
    pub fn parse(text: &str) -> Result<Config, ConfigError> {
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

    /// Read and parse `path`, or the defaults alone.
    ///
    /// # Errors
    /// [`ConfigError`].
    pub fn load(path: Option<&Path>) -> Result<Config, ConfigError> {
        match path {
            None => Config::parse(""),
            Some(p) => {
                let text = std::fs::read_to_string(p).map_err(|err| ConfigError::Read {
                    path: p.to_path_buf(),
                    err,
                })?;
                Config::parse(&text)
            }
        }
    }

    fn check(&self) -> Result<(), ConfigError> {
        if self.listen.port() == 0 {
            return Err(ConfigError::Value {
                key: "listen",
                msg: "the port must not be 0 (clients need a fixed port; use the data plane's)"
                    .into(),
            });
        }
        if self.max_sessions == 0 {
            return Err(ConfigError::Value {
                key: "max_sessions",
                msg: "must be at least 1".into(),
            });
        }
        if self.activity_poll < Duration::from_millis(10)
            || self.activity_poll >= self.policy.path_dead_after
        {
            return Err(ConfigError::Value {
                key: "activity_poll",
                msg: format!(
                    "must be between 10ms and policy.path_dead_after ({:?})",
                    self.policy.path_dead_after
                ),
            });
        }
        for (key, p) in [
            ("private_key_file", &self.private_key_file),
            ("clients_file", &self.clients_file),
            ("dataplane_socket", &self.dataplane_socket),
            ("control_socket", &self.control_socket),
            ("state_dir", &self.state_dir),
        ] {
            if !p.is_absolute() {
                return Err(ConfigError::Value {
                    key,
                    msg: format!("`{}` must be an absolute path", p.display()),
                });
            }
        }
        self.check_observability()?;
        self.policy.validate().map_err(|e| ConfigError::Value {
            key: "policy",
            msg: e.to_string(),
        })
    }
}

fn value(key: &'static str, msg: impl Into<String>) -> ConfigError {
    ConfigError::Value {
        key,
        msg: msg.into(),
    }
}

impl Config {
    fn check_observability(&self) -> Result<(), ConfigError> {
        observe::log::parse_levels(&self.log).map_err(|e| value("log", e))?;
        self.log_format
            .parse::<LogFormat>()
            .map_err(|e| value("log_format", e))?;
        self.metrics_addr()?;
        self.export_config()?;
        Ok(())
    }

    /// The Prometheus endpoint's address, if enabled.
    ///
    /// # Errors
    /// Not an address.
    pub fn metrics_addr(&self) -> Result<Option<SocketAddr>, ConfigError> {
        observe::metrics::parse_listen(&self.metrics_listen).map_err(|e| value("metrics_listen", e))
    }

    /// The log format.
    #[must_use]
    pub fn log_format(&self) -> LogFormat {
        self.log_format.parse().unwrap_or_default()
    }

    /// The `[export]` section, checked.
    ///
    /// # Errors
    /// A value out of range, naming the key.
    pub fn export_config(&self) -> Result<ExportConfig, ConfigError> {
        let e = &self.export;
        let mut out = ExportConfig::none();
        if !e.file.as_os_str().is_empty() {
            if !e.file.is_absolute() {
                return Err(value(
                    "export.file",
                    format!("`{}` must be an absolute path", e.file.display()),
                ));
            }
            if e.file_max_bytes < 4096 {
                return Err(value("export.file_max_bytes", "must be at least 4096"));
            }
            if e.file_keep == 0 || e.file_keep > 1000 {
                return Err(value("export.file_keep", "must be between 1 and 1000"));
            }
            out.file = Some(FileTarget {
                path: e.file.clone(),
                max_bytes: e.file_max_bytes,
                keep: e.file_keep,
            });
        }
        for s in &e.syslog {
            let (transport, rest) = if let Some(r) = s.strip_prefix("udp://") {
                (Transport::Udp, r)
            } else if let Some(r) = s.strip_prefix("tcp://") {
                (Transport::Tcp, r)
            } else {
                return Err(value(
                    "export.syslog",
                    format!("`{s}`: write \"udp://IP:PORT\" or \"tcp://IP:PORT\""),
                ));
            };
            let addr: SocketAddr = rest.parse().map_err(|_| {
                value(
                    "export.syslog",
                    format!("`{s}`: `{rest}` is not an IP address and port"),
                )
            })?;
            if addr.port() == 0 {
                return Err(value("export.syslog", format!("`{s}`: port 0")));
            }
            out.syslog.push(SyslogTarget { addr, transport });
        }
        out.facility = facility_code(&e.syslog_facility).ok_or_else(|| {
            value(
                "export.syslog_facility",
                format!(
                    "`{}` is not a facility (kern, user, daemon, auth, authpriv, local0 … local7, …)",
                    e.syslog_facility
                ),
            )
        })?;
        let app = &e.syslog_app_name;
        if app.is_empty() || app.len() > 48 || !app.chars().all(|c| c.is_ascii_graphic()) {
            return Err(value(
                "export.syslog_app_name",
                "1 to 48 printable ASCII characters without spaces",
            ));
        }
        out.app_name.clone_from(app);
        if e.queue == 0 || e.queue > 1_000_000 {
            return Err(value("export.queue", "must be between 1 and 1000000"));
        }
        out.queue = e.queue;
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_parse_and_errors_name_the_key() {
        let c = Config::parse("").expect("defaults");
        assert_eq!(c.listen.port(), 51820);
        assert_eq!(c.policy, Policy::default());
        let e = Config::parse("listen = \"0.0.0.0:0\"").unwrap_err();
        assert!(e.to_string().contains("`listen`"), "{e}");
        let e = Config::parse("state_dir = \"relative\"").unwrap_err();
        assert!(e.to_string().contains("`state_dir`"), "{e}");
        let e = Config::parse("bogus = 1").unwrap_err();
        assert!(e.to_string().contains("bogus"), "{e}");
        let e = Config::parse("[policy]\nreject_after = \"60s\"").unwrap_err();
        assert!(e.to_string().contains("reject_after"), "{e}");
        let c = Config::parse("[policy]\npath_dead_after = \"2s\"\nrecovery_window = \"4s\"")
            .expect("policy override");
        assert_eq!(c.policy.path_dead_after, Duration::from_secs(2));
    }

    #[test]
    fn observability_keys_are_checked() {
        let c = Config::parse("").expect("defaults");
        assert_eq!(
            c.metrics_addr().expect("addr"),
            Some("127.0.0.1:9470".parse().expect("addr"))
        );
        let x = c.export_config().expect("export");
        assert!(x.file.is_none() && x.syslog.is_empty());
        let c = Config::parse(
            "metrics_listen = \"off\"\n[export]\nfile = \"/var/log/jumping/events.jsonl\"\n\
             syslog = [\"udp://192.0.2.9:514\", \"tcp://[2001:db8::1]:6514\"]\n\
             syslog_facility = \"authpriv\"",
        )
        .expect("export");
        assert_eq!(c.metrics_addr().expect("off"), None);
        let x = c.export_config().expect("export");
        assert_eq!(x.syslog.len(), 2);
        assert_eq!(x.syslog[1].transport, Transport::Tcp);
        assert_eq!(x.facility, 10);
        for (text, key) in [
            ("log = \"jumping=loud\"", "`log`"),
            ("log_format = \"xml\"", "`log_format`"),
            ("metrics_listen = \"localhost\"", "`metrics_listen`"),
            (
                "[export]\nsyslog = [\"syslog.example:514\"]",
                "`export.syslog`",
            ),
            (
                "[export]\nsyslog = [\"tcp://example.org:514\"]",
                "`export.syslog`",
            ),
            ("[export]\nfile = \"events.jsonl\"", "`export.file`"),
            (
                "[export]\nsyslog_facility = \"local9\"",
                "`export.syslog_facility`",
            ),
            ("[export]\nqueue = 0", "`export.queue`"),
            ("[export]\nbogus = 1", "bogus"),
        ] {
            let e = Config::parse(text).expect_err(text).to_string();
            assert!(e.contains(key), "{text}: {e}");
        }
    }
}
