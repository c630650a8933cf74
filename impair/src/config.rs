//! The impairment configuration and its validation.

use std::fmt;

use serde::{Deserialize, Serialize};

/// The largest `delay_ms + jitter_ms` accepted: anything above 10 s is a configuration mistake.
pub const MAX_DELAY_MS: u64 = 10_000;

/// What to do to the packets, in each direction independently.
///
/// Every field defaults to zero (no impairment), so a JSON file need only name what it sets;
/// unknown keys are refused, so a typo does not silently mean "no impairment".
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Impairment {
    /// Seed of the deterministic random streams (one per direction).
    pub seed: u64,
    /// Probability, in `0..=1`, that a packet is dropped, drawn per packet and per direction.
    pub loss: f64,
    /// Fixed delay added to every delivered packet, in milliseconds.
    pub delay_ms: u64,
    /// Each delivered packet gets an extra delay drawn uniformly from `[0, jitter_ms]`
    /// milliseconds (nanosecond resolution); a non-zero jitter therefore reorders packets.
    pub jitter_ms: u64,
    /// Period of the loss bursts in milliseconds; 0 means no bursts.
    pub burst_every_ms: u64,
    /// Length of each loss burst in milliseconds; must be below `burst_every_ms`.
    /// Burst windows are `[k * every + every / 2, k * every + every / 2 + len)` measured from the
    /// relay's start, for k = 0, 1, 2, …; during a window every packet in both directions is
    /// dropped.
    pub burst_len_ms: u64,
}

/// A refused configuration value: names the key (and the matching command-line flag).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    field: &'static str,
    reason: String,
}

impl ConfigError {
    fn new(field: &'static str, reason: impl Into<String>) -> Self {
        Self {
            field,
            reason: reason.into(),
        }
    }

    /// The configuration key that is wrong, e.g. `"loss"`.
    pub fn field(&self) -> &'static str {
        self.field
    }

    /// The command-line flag that sets the key, e.g. `"--burst-len-ms"`.
    pub fn flag(&self) -> String {
        format!("--{}", self.field.replace('_', "-"))
    }

    /// What is wrong and how to fix it.
    pub fn reason(&self) -> &str {
        &self.reason
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({}): {}", self.field, self.flag(), self.reason)
    }
}

impl std::error::Error for ConfigError {}

impl Impairment {
    /// Checks every value; the error names the first wrong key.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if !self.loss.is_finite() || !(0.0..=1.0).contains(&self.loss) {
            return Err(ConfigError::new(
                "loss",
                format!(
                    "must be a probability within 0..=1 (e.g. 0.05 for 5 %), got {}",
                    self.loss
                ),
            ));
        }
        if self.delay_ms > MAX_DELAY_MS {
            return Err(ConfigError::new(
                "delay_ms",
                format!(
                    "must be at most {MAX_DELAY_MS} ms, got {} ms",
                    self.delay_ms
                ),
            ));
        }
        if self.jitter_ms > MAX_DELAY_MS - self.delay_ms {
            return Err(ConfigError::new(
                "jitter_ms",
                format!(
                    "delay_ms + jitter_ms must be at most {MAX_DELAY_MS} ms, got {} + {} ms",
                    self.delay_ms, self.jitter_ms
                ),
            ));
        }
        match (self.burst_every_ms, self.burst_len_ms) {
            (0, 0) => {}
            (0, len) => {
                return Err(ConfigError::new(
                    "burst_len_ms",
                    format!(
                        "is {len} ms but burst_every_ms is 0 (no bursts): set burst_every_ms too, \
                         or set burst_len_ms to 0"
                    ),
                ))
            }
            (every, 0) => {
                return Err(ConfigError::new(
                    "burst_len_ms",
                    format!(
                        "is 0 but burst_every_ms is {every}: a burst must last at least 1 ms \
                         (or set burst_every_ms to 0 for no bursts)"
                    ),
                ))
            }
            (every, len) if len >= every => {
                return Err(ConfigError::new(
                    "burst_len_ms",
                    format!(
                        "must be shorter than burst_every_ms ({every} ms), got {len} ms \
                         (a burst that long never ends)"
                    ),
                ))
            }
            _ => {}
        }
        Ok(())
    }

    /// Offset of the first burst window from the relay's start, in milliseconds:
    /// `burst_every_ms / 2`.
    pub fn burst_offset_ms(&self) -> u64 {
        self.burst_every_ms / 2
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok() -> Impairment {
        Impairment {
            seed: 1,
            loss: 0.1,
            delay_ms: 10,
            jitter_ms: 5,
            burst_every_ms: 1000,
            burst_len_ms: 100,
        }
    }

    fn refused(i: Impairment) -> ConfigError {
        i.validate().expect_err("must be refused")
    }

    #[test]
    fn valid_config_passes() {
        ok().validate().expect("valid");
        Impairment::default().validate().expect("default is valid");
        Impairment { loss: 1.0, ..ok() }
            .validate()
            .expect("loss 1 is valid");
    }

    #[test]
    fn bad_values_name_the_key() {
        for loss in [-0.1, 1.5, f64::NAN, f64::INFINITY] {
            let e = refused(Impairment { loss, ..ok() });
            assert_eq!(e.field(), "loss");
            assert!(e.to_string().contains("--loss"), "{e}");
        }
        let e = refused(Impairment {
            delay_ms: 10_001,
            ..ok()
        });
        assert_eq!(e.field(), "delay_ms");
        assert_eq!(e.flag(), "--delay-ms");
        let e = refused(Impairment {
            delay_ms: 9_000,
            jitter_ms: 2_000,
            ..ok()
        });
        assert_eq!(e.field(), "jitter_ms");
        let e = refused(Impairment {
            burst_len_ms: 1000,
            ..ok()
        });
        assert_eq!(e.field(), "burst_len_ms");
        assert!(e.to_string().contains("--burst-len-ms"), "{e}");
        let e = refused(Impairment {
            burst_every_ms: 0,
            ..ok()
        });
        assert_eq!(e.field(), "burst_len_ms");
        let e = refused(Impairment {
            burst_len_ms: 0,
            ..ok()
        });
        assert_eq!(e.field(), "burst_len_ms");
    }

    #[test]
    fn json_defaults_and_unknown_keys() {
        let i: Impairment = serde_json::from_str(r#"{"seed":7,"loss":0.2}"#).expect("parses");
        assert_eq!(i.seed, 7);
        assert_eq!(i.delay_ms, 0);
        assert!(serde_json::from_str::<Impairment>(r#"{"los":0.2}"#).is_err());
        let back: Impairment =
            serde_json::from_str(&serde_json::to_string(&ok()).expect("ser")).expect("de");
        assert_eq!(back, ok());
    }
}
