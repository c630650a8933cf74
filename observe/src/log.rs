//! Logs: `tracing` with a human format on a terminal and one JSON object per line otherwise
//! (or when asked), and levels per module (`EnvFilter` directives such as
//! `info,jumping_control::daemon=debug`).

use std::io::IsTerminal;
use std::str::FromStr;
use std::sync::atomic::{AtomicU8, Ordering};

use tracing_subscriber::EnvFilter;

/// The environment variable holding per-module levels when no `--log` is given
/// (`RUST_LOG` is read after it).
pub const LOG_ENV: &str = "JUMPING_LOG";

static NODE_ID: AtomicU8 = AtomicU8::new(0);

/// Set the node id used by [`Correlation`] (once, at start-up).
pub fn set_node_id(node: u8) {
    NODE_ID.store(node, Ordering::Relaxed);
}

/// The correlation id of a session, `n<node>-<session id>`: the events' `correlation_id`
/// and the `correlation_id` field of every log line about the session.
#[derive(Debug, Clone, Copy)]
pub struct CorrelationId<T>(pub u8, pub T);

impl<T: std::fmt::Display> std::fmt::Display for CorrelationId<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "n{}-{}", self.0, self.1)
    }
}

/// [`CorrelationId`] with this process's node id (see [`set_node_id`]), for code that does not
/// hold the configuration: `tracing::warn!(session = %id, correlation_id = %Correlation(id),
/// "…")`.
#[derive(Debug, Clone, Copy)]
pub struct Correlation<T>(pub T);

impl<T: std::fmt::Display> std::fmt::Display for Correlation<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        CorrelationId(NODE_ID.load(Ordering::Relaxed), &self.0).fmt(f)
    }
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogFormat {
    /// Human on a terminal, JSON otherwise.
    #[default]
    Auto,
    /// Human-readable.
    Human,
    /// One JSON object per line.
    Json,
}

impl FromStr for LogFormat {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "auto" => Ok(LogFormat::Auto),
            "human" | "text" => Ok(LogFormat::Human),
            "json" => Ok(LogFormat::Json),
            other => Err(format!(
                "log format `{other}` is not one of auto, human, json"
            )),
        }
    }
}

impl LogFormat {
    /// The format actually used when writing to standard error.
    #[must_use]
    pub fn resolve(self) -> LogFormat {
        match self {
            LogFormat::Auto if std::io::stderr().is_terminal() => LogFormat::Human,
            LogFormat::Auto => LogFormat::Json,
            f => f,
        }
    }
}

/// The level directives: `cli` (`--log`) if given, else `JUMPING_LOG`, else `RUST_LOG`, else
/// `configured` (the configuration file's `log`).
///
/// # Errors
/// A directive that does not parse, with where it came from and what to write.
pub fn filter(cli: Option<&str>, configured: &str) -> Result<EnvFilter, String> {
    let (text, from) = match cli {
        Some(t) => (t.to_string(), "--log"),
        None => match std::env::var(LOG_ENV) {
            Ok(t) => (t, LOG_ENV),
            Err(_) => match std::env::var("RUST_LOG") {
                Ok(t) => (t, "RUST_LOG"),
                Err(_) => (configured.to_string(), "the configuration key `log`"),
            },
        },
    };
    parse_levels(&text).map_err(|e| format!("{e} (from {from})"))
}

/// Parse level directives such as `info,jumping_control::daemon=debug`.
///
/// # Errors
/// What does not parse, and an example of what does.
pub fn parse_levels(text: &str) -> Result<EnvFilter, String> {
    EnvFilter::builder().parse(text).map_err(|e| {
        format!(
            "log levels `{text}` do not parse: {e}; write e.g. \
             `info,jumping_control::daemon=debug`"
        )
    })
}

/// Install the process's subscriber, writing to standard error.
///
/// # Errors
/// Bad level directives (see [`filter`]).
pub fn init(format: LogFormat, cli: Option<&str>, configured: &str) -> Result<(), String> {
    let filter = filter(cli, configured)?;
    let builder = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(filter);
    let r = match format.resolve() {
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .try_init(),
        _ => builder.try_init(),
    };
    r.map_err(|e| format!("cannot install the log subscriber: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_parse_and_bad_ones_are_named() {
        assert_eq!("json".parse::<LogFormat>(), Ok(LogFormat::Json));
        assert_eq!("human".parse::<LogFormat>(), Ok(LogFormat::Human));
        assert_eq!("auto".parse::<LogFormat>(), Ok(LogFormat::Auto));
        let e = "xml".parse::<LogFormat>().unwrap_err();
        assert!(e.contains("xml") && e.contains("json"), "{e}");
        assert_eq!(LogFormat::Json.resolve(), LogFormat::Json);
    }

    #[test]
    fn correlation_ids_name_the_node() {
        set_node_id(7);
        assert_eq!(
            Correlation("0100000000000001").to_string(),
            "n7-0100000000000001"
        );
    }

    #[test]
    fn per_module_levels_parse_and_bad_levels_are_refused() {
        assert!(filter(Some("info,jumping_control::daemon=debug"), "info").is_ok());
        let e = filter(Some("jumping_control=loud"), "info").unwrap_err();
        assert!(e.contains("loud") && e.contains("--log"), "{e}");
    }
}
