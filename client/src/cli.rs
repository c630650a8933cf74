//! Command line and its validation. Parsing has no side effects: every value is checked before
//! anything is opened or bound, and each error names the flag and says what to fix.

use std::fmt;
use std::fs;
use std::io::Read as _;
use std::net::{IpAddr, SocketAddr};
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};

use clap::{ArgGroup, Parser};
use jumping_protocol::policy::parse_policy;
use jumping_protocol::{keyfmt, Policy};
use zeroize::Zeroizing;

/// The Jumping VPN client: a TUN device whose packets travel to a gateway over one of several
/// candidate local paths, switched without ending the session.
///
/// Events (one JSON object per line) go to stdout, logs to stderr (RUST_LOG sets the level).
/// Exit codes: 0 after SIGINT/SIGTERM (the session is terminated explicitly), 1 on a system
/// error, 2 on a bad command line or when the session ends (handshake failed, gateway ended it).
#[derive(Debug, Parser)]
#[command(name = "jumping-client", version)]
#[command(group(ArgGroup::new("gateway_key").args(["gateway_public", "gateway_public_file"])))]
pub struct Args {
    /// Log levels per module (over JUMPING_LOG and RUST_LOG), e.g. `info,jumping_client=debug`.
    #[arg(long, value_name = "LEVELS")]
    pub log: Option<String>,

    /// Log format: auto (human on a terminal, JSON lines otherwise), human or json.
    #[arg(long, value_name = "FORMAT", default_value = "auto")]
    pub log_format: observe::log::LogFormat,

    /// The gateway's tunnel UDP address, IP:PORT (IPv6 as [ADDR]:PORT). Required to run.
    #[arg(long, value_name = "IP:PORT")]
    pub gateway: Option<String>,

    /// The gateway's public key, base64 (as `jumpctl pubkey` prints from its private key).
    #[arg(long, value_name = "BASE64")]
    pub gateway_public: Option<String>,

    /// File holding the gateway's public key in base64.
    #[arg(long, value_name = "PATH")]
    pub gateway_public_file: Option<PathBuf>,

    /// File holding this client's private key in base64 (`jumpctl genkey` output). Must not be
    /// readable or writable by group or other (chmod 600).
    #[arg(long, value_name = "PATH")]
    pub key: Option<PathBuf>,

    /// The client's inner (virtual) address, IP/PREFIX (e.g. 10.99.0.2/32), set on the TUN.
    #[arg(long, value_name = "IP/PREFIX")]
    pub address: Option<String>,

    /// A route through the tunnel, CIDR (e.g. 10.99.0.0/16 or 0.0.0.0/0); repeatable.
    #[arg(long = "route", value_name = "CIDR")]
    pub routes: Vec<String>,

    /// Name of the TUN device (at most 15 characters: letters, digits, '-', '_', '.').
    #[arg(long, value_name = "NAME", default_value = "jc0")]
    pub tun: String,

    /// MTU of the TUN device (inner packets), 576..=65000 (at least 1280 with an IPv6 address).
    #[arg(long, value_name = "N", default_value_t = 1380)]
    pub mtu: u32,

    /// A candidate local path, in order of preference; repeatable, at least one. SPEC is `IP`
    /// (a UDP socket bound to that local address, any port), `IP:PORT`, or `dev:IFNAME` (bound
    /// to that interface with SO_BINDTODEVICE). The Nth --path is path N-1 (0 is first).
    #[arg(long = "path", value_name = "SPEC")]
    pub paths: Vec<String>,

    /// The status socket (a Unix socket, mode 0600, answering one JSON line per connection).
    /// Default: /run/jumping/client-<TUN>.sock.
    #[arg(long, value_name = "PATH")]
    pub status_socket: Option<PathBuf>,

    /// Do not run a client: print the running client's status as JSON and exit (1 if none runs).
    #[arg(long, conflicts_with = "switch")]
    pub status: bool,

    /// Do not run a client: ask the running one to switch to path N now; non-zero exit if it
    /// refuses.
    #[arg(long, value_name = "N")]
    pub switch: Option<u32>,

    /// The session policy this client runs its own timers by (heartbeat, path dead, rekey, key
    /// grace): a TOML file in the gateway's `[policy]` format (`key = value` lines, durations
    /// as "250ms", "5s", "2m", "24h"; the `[policy]` header is optional). Keys not given keep
    /// their defaults; use the gateway's values. Default: the built-in policy.
    #[arg(long, value_name = "FILE")]
    pub policy: Option<PathBuf>,
}

/// A bad command line: the message names the flag and what to fix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError(pub String);

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ConfigError {}

fn err<T>(msg: impl Into<String>) -> Result<T, ConfigError> {
    Err(ConfigError(msg.into()))
}

/// A candidate local path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PathSpec {
    /// Bind to this local address (port 0 = any).
    Addr(SocketAddr),
    /// Bind to this interface.
    Device(String),
}

impl fmt::Display for PathSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PathSpec::Addr(a) if a.port() == 0 => write!(f, "{}", a.ip()),
            PathSpec::Addr(a) => write!(f, "{a}"),
            PathSpec::Device(d) => write!(f, "dev:{d}"),
        }
    }
}

/// Parse a `--path` SPEC.
///
/// # Errors
/// A message saying what is wrong.
pub fn parse_path_spec(s: &str) -> Result<PathSpec, String> {
    if let Some(dev) = s.strip_prefix("dev:") {
        check_ifname(dev).map_err(|e| format!("`{s}`: interface name {e}"))?;
        return Ok(PathSpec::Device(dev.to_owned()));
    }
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Ok(PathSpec::Addr(SocketAddr::new(ip, 0)));
    }
    if let Ok(a) = s.parse::<SocketAddr>() {
        return Ok(PathSpec::Addr(a));
    }
    Err(format!(
        "`{s}` is not IP, IP:PORT or dev:IFNAME (e.g. 192.0.2.10, 192.0.2.10:4000, [2001:db8::1]:4000, dev:wlan0)"
    ))
}

/// Linux interface names: 1..=15 bytes, no '/', whitespace or ':'.
fn check_ifname(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > 15 {
        return Err(format!("must be 1 to 15 characters, not {}", name.len()));
    }
    if !name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    {
        return Err("may hold only letters, digits, '-', '_' and '.'".into());
    }
    Ok(())
}

/// An address with a prefix length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    /// Address.
    pub ip: IpAddr,
    /// Prefix length.
    pub prefix: u8,
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.ip, self.prefix)
    }
}

/// Parse `IP/PREFIX`.
///
/// # Errors
/// A message saying what is wrong.
pub fn parse_cidr(s: &str) -> Result<Cidr, String> {
    let (ip, prefix) = s
        .split_once('/')
        .ok_or_else(|| format!("`{s}` has no /PREFIX (write e.g. 10.99.0.2/32)"))?;
    let ip: IpAddr = ip
        .parse()
        .map_err(|_| format!("`{ip}` in `{s}` is not an IP address"))?;
    let max = if ip.is_ipv4() { 32 } else { 128 };
    let prefix: u8 = prefix
        .parse()
        .ok()
        .filter(|p| *p <= max)
        .ok_or_else(|| format!("prefix `{prefix}` in `{s}` is not a number 0..={max}"))?;
    Ok(Cidr { ip, prefix })
}

/// Reject a key file that group or other may read or write.
///
/// # Errors
/// A message naming the mode and the fix.
pub fn check_key_permissions(path: &Path, mode: u32) -> Result<(), String> {
    if mode & 0o077 != 0 {
        return Err(format!(
            "{} is accessible by group or other (mode {:04o}); a private key must be mode 0600: run `chmod 600 {}`",
            path.display(),
            mode & 0o7777,
            path.display()
        ));
    }
    Ok(())
}

/// Read the private key file: permissions first, then the base64 text. Never echoes content.
///
/// # Errors
/// A message naming the file and the fix.
pub fn read_private_key(path: &Path) -> Result<Zeroizing<[u8; 32]>, String> {
    let f = fs::File::open(path).map_err(|e| format!("cannot open {}: {e}", path.display()))?;
    let meta = f
        .metadata()
        .map_err(|e| format!("cannot stat {}: {e}", path.display()))?;
    if !meta.is_file() {
        return Err(format!("{} is not a regular file", path.display()));
    }
    check_key_permissions(path, meta.permissions().mode())?;
    let mut text = Zeroizing::new(String::new());
    f.take(4096)
        .read_to_string(&mut text)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    keyfmt::decode(&text).map_err(|e| format!("{}: {e}", path.display()))
}

/// A validated configuration to run the client.
#[derive(Debug)]
pub struct Config {
    /// Gateway tunnel address.
    pub gateway: SocketAddr,
    /// Gateway public key.
    pub gateway_public: [u8; 32],
    /// Our private key.
    pub secret: Zeroizing<[u8; 32]>,
    /// Inner address.
    pub address: Cidr,
    /// Routes via the TUN.
    pub routes: Vec<Cidr>,
    /// TUN name.
    pub tun: String,
    /// TUN MTU.
    pub mtu: u32,
    /// Candidate paths.
    pub paths: Vec<PathSpec>,
    /// Status socket.
    pub status_socket: PathBuf,
    /// Session policy (timers).
    pub policy: Policy,
}

/// The status socket: the flag, or the default for the TUN name.
///
/// # Errors
/// A bad `--tun`.
pub fn status_socket_path(args: &Args) -> Result<PathBuf, ConfigError> {
    check_ifname(&args.tun).or_else(|e| err(format!("--tun `{}`: {e}", args.tun)))?;
    Ok(args
        .status_socket
        .clone()
        .unwrap_or_else(|| PathBuf::from(format!("/run/jumping/client-{}.sock", args.tun))))
}

impl Config {
    /// Validate every flag needed to run a client.
    ///
    /// # Errors
    /// The first bad flag.
    pub fn from_args(args: &Args) -> Result<Config, ConfigError> {
        let status_socket = status_socket_path(args)?;
        let gateway = match &args.gateway {
            None => return err("--gateway IP:PORT is required (the gateway's tunnel UDP address)"),
            Some(g) => g.parse::<SocketAddr>().or_else(|_| {
                err(format!(
                    "--gateway `{g}` is not IP:PORT (e.g. 192.0.2.1:51820 or [2001:db8::1]:51820)"
                ))
            })?,
        };
        if gateway.port() == 0 || gateway.ip().is_unspecified() || gateway.ip().is_multicast() {
            return err(format!(
                "--gateway `{gateway}` needs a unicast address and a non-zero port"
            ));
        }
        let gateway_public = match (&args.gateway_public, &args.gateway_public_file) {
            (Some(text), None) => keyfmt::decode(text)
                .map(|k| *k)
                .or_else(|e| err(format!("--gateway-public: {e}")))?,
            (None, Some(path)) => {
                let text = fs::read_to_string(path).or_else(|e| {
                    err(format!(
                        "--gateway-public-file: cannot read {}: {e}",
                        path.display()
                    ))
                })?;
                keyfmt::decode(&text)
                    .map(|k| *k)
                    .or_else(|e| err(format!("--gateway-public-file {}: {e}", path.display())))?
            }
            _ => {
                return err(
                    "one of --gateway-public BASE64 or --gateway-public-file PATH is required",
                )
            }
        };
        let Some(key) = &args.key else {
            return err(
                "--key PATH is required (the client's private key file, from `jumpctl genkey`)",
            );
        };
        let secret = read_private_key(key).or_else(|e| err(format!("--key: {e}")))?;
        let Some(address) = &args.address else {
            return err(
                "--address IP/PREFIX is required (the client's inner address, e.g. 10.99.0.2/32)",
            );
        };
        let address = parse_cidr(address).or_else(|e| err(format!("--address: {e}")))?;
        if address.ip.is_unspecified() || address.ip.is_multicast() {
            return err(format!("--address: {address} must be a unicast address"));
        }
        let routes = args
            .routes
            .iter()
            .map(|r| parse_cidr(r).or_else(|e| err(format!("--route: {e}"))))
            .collect::<Result<Vec<_>, _>>()?;
        if let Some(r) = routes
            .iter()
            .find(|r| r.ip.is_ipv4() != address.ip.is_ipv4())
        {
            return err(format!(
                "--route {r}: its family differs from --address {address}; routes must match the inner address family"
            ));
        }
        let min_mtu = if address.ip.is_ipv6() { 1280 } else { 576 };
        if !(min_mtu..=65000).contains(&args.mtu) {
            return err(format!(
                "--mtu {} is out of range: use {min_mtu}..=65000",
                args.mtu
            ));
        }
        if args.paths.is_empty() {
            return err("at least one --path SPEC is required (IP, IP:PORT or dev:IFNAME)");
        }
        if args.paths.len() > 64 {
            return err("--path: at most 64 paths");
        }
        let mut paths = Vec::new();
        for (i, s) in args.paths.iter().enumerate() {
            let p = parse_path_spec(s).or_else(|e| err(format!("--path #{i}: {e}")))?;
            if let PathSpec::Addr(a) = &p {
                if a.is_ipv4() != gateway.is_ipv4() {
                    return err(format!(
                        "--path #{i} `{s}`: address family differs from --gateway {gateway}"
                    ));
                }
            }
            if paths.contains(&p) {
                return err(format!("--path #{i} `{s}` is given twice"));
            }
            paths.push(p);
        }
        let policy = match &args.policy {
            None => Policy::default(),
            Some(path) => read_policy(path).or_else(|e| err(format!("--policy: {e}")))?,
        };
        Ok(Config {
            gateway,
            gateway_public,
            secret,
            address,
            routes,
            tun: args.tun.clone(),
            mtu: args.mtu,
            paths,
            status_socket,
            policy,
        })
    }
}

/// Read and validate a policy file (see `--policy`).
///
/// # Errors
/// A message naming the file, the line or key, and what is wrong.
pub fn read_policy(path: &Path) -> Result<Policy, String> {
    let text =
        fs::read_to_string(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    parse_policy(&text).map_err(|e| format!("{}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write as _;

    #[test]
    fn path_specs() {
        assert_eq!(
            parse_path_spec("192.0.2.10"),
            Ok(PathSpec::Addr("192.0.2.10:0".parse().expect("addr")))
        );
        assert_eq!(
            parse_path_spec("192.0.2.10:4000"),
            Ok(PathSpec::Addr("192.0.2.10:4000".parse().expect("addr")))
        );
        assert_eq!(
            parse_path_spec("[2001:db8::1]:4000"),
            Ok(PathSpec::Addr("[2001:db8::1]:4000".parse().expect("addr")))
        );
        assert_eq!(
            parse_path_spec("2001:db8::1"),
            Ok(PathSpec::Addr("[2001:db8::1]:0".parse().expect("addr")))
        );
        assert_eq!(
            parse_path_spec("dev:veth-a.1"),
            Ok(PathSpec::Device("veth-a.1".into()))
        );
        for bad in [
            "",
            "dev:",
            "dev:this-name-is-too-long",
            "dev:a/b",
            "dev:a b",
            "192.0.2.300",
            "192.0.2.1:99999",
            "eth0",
            "192.0.2.1/24",
        ] {
            assert!(parse_path_spec(bad).is_err(), "{bad:?} accepted");
        }
        assert_eq!(
            parse_path_spec("dev:eth0").expect("ok").to_string(),
            "dev:eth0"
        );
        assert_eq!(
            parse_path_spec("10.0.0.1").expect("ok").to_string(),
            "10.0.0.1"
        );
        assert_eq!(
            parse_path_spec("10.0.0.1:5").expect("ok").to_string(),
            "10.0.0.1:5"
        );
    }

    #[test]
    fn cidrs() {
        assert_eq!(
            parse_cidr("10.99.0.2/32"),
            Ok(Cidr {
                ip: "10.99.0.2".parse().expect("ip"),
                prefix: 32
            })
        );
        assert!(parse_cidr("::/0").is_ok());
        assert!(parse_cidr("10.99.0.2").is_err());
        assert!(parse_cidr("10.99.0.2/33").is_err());
        assert!(parse_cidr("2001:db8::/129").is_err());
        assert!(parse_cidr("x/8").is_err());
    }

    fn temp_key(mode: u32) -> PathBuf {
        use std::sync::atomic::{AtomicU32, Ordering};
        static N: AtomicU32 = AtomicU32::new(0);
        let p = std::env::temp_dir().join(format!(
            "jumping-client-test-{}-{}.key",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let mut f = fs::File::create(&p).expect("create");
        writeln!(f, "{}", keyfmt::encode(&[9u8; 32])).expect("write");
        fs::set_permissions(&p, fs::Permissions::from_mode(mode)).expect("chmod");
        p
    }

    #[test]
    fn key_file_permissions() {
        assert!(check_key_permissions(Path::new("k"), 0o100600).is_ok());
        assert!(check_key_permissions(Path::new("k"), 0o100400).is_ok());
        for bad in [0o100644, 0o100640, 0o100604, 0o100660, 0o100601] {
            let e = check_key_permissions(Path::new("k"), bad).expect_err("accepted");
            assert!(e.contains("chmod 600"), "{e}");
        }
        let good = temp_key(0o600);
        assert_eq!(*read_private_key(&good).expect("read"), [9u8; 32]);
        let bad = temp_key(0o644);
        let e = read_private_key(&bad).expect_err("group-readable key accepted");
        assert!(e.contains("0644"), "{e}");
        // The key itself never appears in a message.
        assert!(!e.contains(&keyfmt::encode(&[9u8; 32])));
        let _ = fs::remove_file(good);
        let _ = fs::remove_file(bad);
    }

    fn base_args(key: &Path) -> Vec<String> {
        [
            "jumping-client",
            "--gateway",
            "192.0.2.1:51820",
            "--gateway-public",
            &keyfmt::encode(&[1u8; 32]),
            "--key",
            &key.display().to_string(),
            "--address",
            "10.99.0.2/32",
            "--path",
            "dev:eth0",
        ]
        .iter()
        .map(|s| (*s).to_owned())
        .collect()
    }

    #[test]
    fn config_validation_names_the_flag() {
        let key = temp_key(0o600);
        let ok = Args::parse_from(base_args(&key));
        let c = Config::from_args(&ok).expect("valid");
        assert_eq!(
            c.status_socket,
            PathBuf::from("/run/jumping/client-jc0.sock")
        );
        assert_eq!(c.mtu, 1380);
        for (flag, value, needle) in [
            ("--address", "10.99.0.2", "--address"),
            ("--gateway", "nowhere", "--gateway"),
            ("--gateway-public", "short", "--gateway-public"),
            ("--path", "wlan0", "--path"),
            ("--path", "[2001:db8::1]:1", "--path"),
            ("--route", "10.0.0.0/40", "--route"),
            ("--route", "2001:db8::/32", "--route"),
            ("--mtu", "100", "--mtu"),
            ("--tun", "a/b", "--tun"),
        ] {
            let mut a = base_args(&key);
            if let Some(i) = a.iter().position(|x| x == flag) {
                a[i + 1] = value.into();
            } else {
                a.push(flag.into());
                a.push(value.into());
            }
            let e = Config::from_args(&Args::parse_from(a)).expect_err(flag);
            assert!(e.0.contains(needle), "{flag}: {e}");
        }
        let _ = fs::remove_file(key);
    }

    #[test]
    fn policy_file_in_the_gateway_format() {
        let p = parse_policy(
            "# timers\n[policy]\nrekey_after = \"10s\" # short\nheartbeat_interval = \"200ms\"\n\
             path_dead_after = \"2s\"\nmax_switches_per_min = 2\nvolatile_loss = 0.5\n\
             allowed_transports = [\"udp\", \"tcp\"]\n",
        )
        .expect("valid");
        assert_eq!(p.rekey_after, std::time::Duration::from_secs(10));
        assert_eq!(p.heartbeat_interval, std::time::Duration::from_millis(200));
        assert_eq!(p.max_switches_per_min, 2);
        assert!((p.volatile_loss - 0.5).abs() < f64::EPSILON);
        assert_eq!(p.allowed_transports.len(), 2);
        assert_eq!(
            p.key_grace,
            Policy::default().key_grace,
            "unset keys keep defaults"
        );
        assert_eq!(parse_policy("").expect("empty"), Policy::default());
        for (bad, needle) in [
            ("rekey_after = \"1s\"", "rekey_after"),
            ("rekey = \"20s\"", "rekey"),
            ("rekey_after = 20", "rekey_after"),
            ("rekey_after = \"20 s\"", "20 s"),
            ("[other]\nrekey_after = \"20s\"", "other"),
            ("rekey_after", "line 1"),
            (
                "max_switches_per_min = 2\nmax_switches_per_min = 3",
                "duplicate",
            ),
            (
                "path_dead_after = \"1s\"\nheartbeat_interval = \"2s\"",
                "heartbeat_interval",
            ),
        ] {
            let e = parse_policy(bad).expect_err(bad);
            assert!(e.contains(needle), "{bad}: {e}");
        }
    }

    #[test]
    fn policy_flag_is_validated() {
        let key = temp_key(0o600);
        let file = key.with_extension("policy");
        fs::write(&file, "rekey_after = \"10s\"\n").expect("write");
        let mut a = base_args(&key);
        a.extend(["--policy".into(), file.display().to_string()]);
        let c = Config::from_args(&Args::parse_from(a.clone())).expect("valid");
        assert_eq!(c.policy.rekey_after, std::time::Duration::from_secs(10));
        fs::write(&file, "rekey_after = \"5s\"\n").expect("write");
        let e = Config::from_args(&Args::parse_from(a)).expect_err("too short");
        assert!(
            e.0.contains("--policy") && e.0.contains("rekey_after"),
            "{e}"
        );
        let _ = fs::remove_file(file);
        let _ = fs::remove_file(key);
    }
}
