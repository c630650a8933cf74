//! Session policy: SPEC.md section 5, typed, with its defaults and validation.
//!
//! A policy is checked whole before use; the first violated bound is reported with the key's
//! name, so `policy.toml: reject_after must be greater than rekey_after (120s)` tells the
//! operator what to fix. No value can disable authentication, replay protection, the version
//! rule or the single-owner rule: those are not policy.

use core::fmt;
use core::time::Duration;

use serde::{Deserialize, Deserializer};

use crate::path::Transport;

/// Policy values. Durations deserialize from strings such as `"250ms"`, `"5s"`, `"2m"`, `"24h"`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Policy {
    /// Absolute session lifetime from creation.
    #[serde(deserialize_with = "de_duration")]
    pub session_max_lifetime: Duration,
    /// Start a rekey after a key epoch is this old.
    #[serde(deserialize_with = "de_duration")]
    pub rekey_after: Duration,
    /// Start a rekey after this many packets under one epoch.
    pub rekey_after_packets: u64,
    /// Refuse to use a key epoch older than this; the session ends with KEY_EXPIRED.
    #[serde(deserialize_with = "de_duration")]
    pub reject_after: Duration,
    /// How long the previous key epoch stays valid for receiving after a rotation.
    #[serde(deserialize_with = "de_duration")]
    pub key_grace: Duration,
    /// The client sends a heartbeat when it has sent nothing for this long.
    #[serde(deserialize_with = "de_duration")]
    pub heartbeat_interval: Duration,
    /// No authenticated packet on the active path for this long: TRANSPORT_DEAD.
    #[serde(deserialize_with = "de_duration")]
    pub path_dead_after: Duration,
    /// RECOVERING longer than this: RECOVERY_WINDOW_EXPIRED.
    #[serde(deserialize_with = "de_duration")]
    pub recovery_window: Duration,
    /// Loss fraction over `loss_window` that makes a session VOLATILE.
    pub volatile_loss: f64,
    /// RTT that makes a session VOLATILE.
    #[serde(deserialize_with = "de_duration")]
    pub volatile_rtt: Duration,
    /// Heartbeat age that makes a session VOLATILE.
    #[serde(deserialize_with = "de_duration")]
    pub volatile_heartbeat_age: Duration,
    /// Window over which loss is measured.
    #[serde(deserialize_with = "de_duration")]
    pub loss_window: Duration,
    /// Time under all thresholds before VOLATILE returns to ATTACHED.
    #[serde(deserialize_with = "de_duration")]
    pub stability_window: Duration,
    /// Switches allowed in any sliding 60 s window.
    pub max_switches_per_min: u32,
    /// Minimum time between two switches.
    #[serde(deserialize_with = "de_duration")]
    pub switch_cooldown: Duration,
    /// Valid-but-denied reattach attempts in RECOVERING before DEGRADED.
    pub max_reattach_failures: u32,
    /// DEGRADED longer than this: VOLATILITY_PERSISTENT.
    #[serde(deserialize_with = "de_duration")]
    pub degraded_max: Duration,
    /// Minimum time in DEGRADED before a switch or EXIT_DEGRADED (project choice; SPEC.md
    /// names the cooldown but gives no value).
    #[serde(deserialize_with = "de_duration")]
    pub degraded_cooldown: Duration,
    /// Freshness bound of a reattach request.
    #[serde(deserialize_with = "de_duration")]
    pub reattach_max_age: Duration,
    /// Time a path challenge stays open.
    #[serde(deserialize_with = "de_duration")]
    pub path_validation_timeout: Duration,
    /// A candidate path must be at least this fraction better to be switched to (client side).
    pub switch_hysteresis: f64,
    /// Transports a session may reattach over.
    pub allowed_transports: Vec<TransportName>,
}

/// A transport name in configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TransportName {
    /// UDP.
    Udp,
    /// TCP.
    Tcp,
    /// QUIC.
    Quic,
}

impl From<TransportName> for Transport {
    fn from(t: TransportName) -> Self {
        match t {
            TransportName::Udp => Transport::Udp,
            TransportName::Tcp => Transport::Tcp,
            TransportName::Quic => Transport::Quic,
        }
    }
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            session_max_lifetime: Duration::from_secs(24 * 3600),
            rekey_after: Duration::from_secs(120),
            rekey_after_packets: 1 << 60,
            reject_after: Duration::from_secs(180),
            key_grace: Duration::from_secs(10),
            heartbeat_interval: Duration::from_secs(1),
            path_dead_after: Duration::from_secs(5),
            recovery_window: Duration::from_secs(15),
            volatile_loss: 0.20,
            volatile_rtt: Duration::from_millis(300),
            volatile_heartbeat_age: Duration::from_millis(2500),
            loss_window: Duration::from_secs(2),
            stability_window: Duration::from_secs(3),
            max_switches_per_min: 8,
            switch_cooldown: Duration::from_secs(1),
            max_reattach_failures: 5,
            degraded_max: Duration::from_secs(60),
            degraded_cooldown: Duration::from_secs(10),
            reattach_max_age: Duration::from_secs(5),
            path_validation_timeout: Duration::from_secs(3),
            switch_hysteresis: 0.10,
            allowed_transports: vec![TransportName::Udp, TransportName::Tcp, TransportName::Quic],
        }
    }
}

/// A policy value out of bounds. Names the key and the bound.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("policy key `{key}`: {message}")]
pub struct PolicyError {
    /// The offending key.
    pub key: &'static str,
    /// What is wrong and what is allowed.
    pub message: String,
}

fn bound<T: fmt::Debug + PartialOrd>(
    key: &'static str,
    v: T,
    lo: T,
    hi: T,
) -> Result<(), PolicyError> {
    if v < lo || v > hi {
        return Err(PolicyError {
            key,
            message: format!("{v:?} is outside the allowed range {lo:?} ..= {hi:?}"),
        });
    }
    Ok(())
}

fn greater(
    key: &'static str,
    v: Duration,
    other: &'static str,
    o: Duration,
) -> Result<(), PolicyError> {
    if v <= o {
        return Err(PolicyError {
            key,
            message: format!("{v:?} must be greater than {other} ({o:?})"),
        });
    }
    Ok(())
}

impl Policy {
    /// Check every bound. The first violation is returned.
    ///
    /// # Errors
    /// A [`PolicyError`] naming the key and the bound.
    pub fn validate(&self) -> Result<(), PolicyError> {
        let s = Duration::from_secs;
        let ms = Duration::from_millis;
        bound(
            "session_max_lifetime",
            self.session_max_lifetime,
            s(60),
            s(30 * 24 * 3600),
        )?;
        bound("rekey_after", self.rekey_after, s(10), s(24 * 3600))?;
        bound(
            "rekey_after_packets",
            self.rekey_after_packets,
            1 << 10,
            1 << 60,
        )?;
        greater(
            "reject_after",
            self.reject_after,
            "rekey_after",
            self.rekey_after,
        )?;
        bound("reject_after", self.reject_after, s(15), s(48 * 3600))?;
        bound("key_grace", self.key_grace, ms(100), s(60))?;
        bound("heartbeat_interval", self.heartbeat_interval, ms(50), s(60))?;
        bound("path_dead_after", self.path_dead_after, ms(200), s(600))?;
        greater(
            "path_dead_after",
            self.path_dead_after,
            "heartbeat_interval",
            self.heartbeat_interval,
        )?;
        bound("recovery_window", self.recovery_window, s(1), s(3600))?;
        if !(self.volatile_loss > 0.0 && self.volatile_loss <= 1.0) {
            return Err(PolicyError {
                key: "volatile_loss",
                message: format!("{} must be in (0, 1]", self.volatile_loss),
            });
        }
        bound("volatile_rtt", self.volatile_rtt, ms(1), s(60))?;
        bound(
            "volatile_heartbeat_age",
            self.volatile_heartbeat_age,
            ms(100),
            s(600),
        )?;
        greater(
            "volatile_heartbeat_age",
            self.volatile_heartbeat_age,
            "heartbeat_interval",
            self.heartbeat_interval,
        )?;
        bound("loss_window", self.loss_window, ms(100), s(600))?;
        bound("stability_window", self.stability_window, ms(100), s(600))?;
        bound("max_switches_per_min", self.max_switches_per_min, 1, 600)?;
        bound(
            "switch_cooldown",
            self.switch_cooldown,
            Duration::ZERO,
            s(60),
        )?;
        bound("max_reattach_failures", self.max_reattach_failures, 1, 1000)?;
        bound("degraded_max", self.degraded_max, s(1), s(3600))?;
        bound(
            "degraded_cooldown",
            self.degraded_cooldown,
            ms(100),
            s(3600),
        )?;
        if self.degraded_cooldown >= self.degraded_max {
            return Err(PolicyError {
                key: "degraded_cooldown",
                message: format!(
                    "{:?} must be less than degraded_max ({:?})",
                    self.degraded_cooldown, self.degraded_max
                ),
            });
        }
        bound("reattach_max_age", self.reattach_max_age, ms(100), s(60))?;
        bound(
            "path_validation_timeout",
            self.path_validation_timeout,
            ms(50),
            s(60),
        )?;
        if !(0.0..=1.0).contains(&self.switch_hysteresis) || self.switch_hysteresis.is_nan() {
            return Err(PolicyError {
                key: "switch_hysteresis",
                message: format!("{} must be in [0, 1]", self.switch_hysteresis),
            });
        }
        if self.allowed_transports.is_empty() {
            return Err(PolicyError {
                key: "allowed_transports",
                message: "must name at least one of udp, tcp, quic".into(),
            });
        }
        Ok(())
    }

    /// Whether a session may run over `t`.
    #[must_use]
    pub fn allows(&self, t: Transport) -> bool {
        self.allowed_transports
            .iter()
            .any(|&n| Transport::from(n) == t)
    }
}

/// Parse `"250ms"`, `"5s"`, `"2m"`, `"24h"` (a non-negative integer and a unit).
///
/// # Errors
/// A message saying what form is expected.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("`{s}` is not a duration like 250ms, 5s, 2m or 24h"))?;
    let d = match unit {
        "ms" => Duration::from_millis(n),
        "s" => Duration::from_secs(n),
        "m" => Duration::from_secs(n.saturating_mul(60)),
        "h" => Duration::from_secs(n.saturating_mul(3600)),
        _ => return Err(format!("`{s}` has unit `{unit}`; use ms, s, m or h")),
    };
    Ok(d)
}

fn de_duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let s = String::deserialize(d)?;
    parse_duration(&s).map_err(serde::de::Error::custom)
}

/// Parse a policy in the gateway's `[policy]` TOML format (the `[policy]` header optional) and
/// validate it whole, with the protocol crate's own deserializer (unknown keys refused,
/// durations as the gateway parses them) and [`Policy::validate`].
///
/// # Errors
/// A message naming the key or the line.
pub fn parse_policy(text: &str) -> Result<Policy, String> {
    let mut table: toml::Table = toml::from_str(text).map_err(|e| e.to_string())?;
    if let Some(inner) = table.remove("policy") {
        if !table.is_empty() {
            return Err("only a `[policy]` table is allowed here".into());
        }
        table = match inner {
            toml::Value::Table(t) => t,
            _ => return Err("`policy` must be a table".into()),
        };
    }
    let policy: Policy = toml::Value::Table(table)
        .try_into()
        .map_err(|e: toml::de::Error| e.to_string())?;
    policy.validate().map_err(|e| e.to_string())?;
    Ok(policy)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_match_spec() {
        let p = Policy::default();
        p.validate().expect("defaults valid");
        assert_eq!(p.path_dead_after, Duration::from_secs(5));
        assert_eq!(p.recovery_window, Duration::from_secs(15));
        assert_eq!(p.max_switches_per_min, 8);
        assert_eq!(p.reattach_max_age, Duration::from_secs(5));
    }

    #[test]
    fn errors_name_the_key_and_bound() {
        let p = Policy {
            reject_after: Duration::from_secs(60),
            ..Policy::default()
        };
        let e = p.validate().unwrap_err();
        assert_eq!(e.key, "reject_after");
        assert!(e.to_string().contains("rekey_after"), "{e}");
        let p = Policy {
            max_switches_per_min: 0,
            ..Policy::default()
        };
        let e = p.validate().unwrap_err();
        assert_eq!(e.key, "max_switches_per_min");
        assert!(e.to_string().contains("1 ..= 600"), "{e}");
        let p = Policy {
            volatile_loss: f64::NAN,
            ..Policy::default()
        };
        assert_eq!(p.validate().unwrap_err().key, "volatile_loss");
        let p = Policy {
            allowed_transports: vec![],
            ..Policy::default()
        };
        assert_eq!(p.validate().unwrap_err().key, "allowed_transports");
    }

    #[test]
    fn toml_overrides_and_refuses_unknown_keys() {
        let p: Policy = toml::from_str("path_dead_after = \"2s\"\nallowed_transports = [\"udp\"]")
            .expect("parses");
        assert_eq!(p.path_dead_after, Duration::from_secs(2));
        assert!(p.allows(Transport::Udp) && !p.allows(Transport::Tcp));
        assert_eq!(p.recovery_window, Duration::from_secs(15));
        let e = toml::from_str::<Policy>("path_dead = \"2s\"").unwrap_err();
        assert!(e.to_string().contains("path_dead"), "{e}");
        let e = toml::from_str::<Policy>("path_dead_after = \"2 weeks\"").unwrap_err();
        assert!(e.to_string().contains("unit"), "{e}");
    }

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("24h"), Ok(Duration::from_secs(86400)));
        assert!(parse_duration("5").is_err());
        assert!(parse_duration("-5s").is_err());
    }
}
