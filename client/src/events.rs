//! Events: one JSON object per line on stdout, each with `ts` (RFC 3339, ms, UTC), `event` and
//! `session_id` (16 hex digits, or null before the handshake completed).

use std::io::Write as _;
use std::time::{SystemTime, UNIX_EPOCH};

use jumping_protocol::SessionId;
use serde_json::{Map, Value};

/// RFC 3339 with milliseconds, UTC, of a time after the Unix epoch.
#[must_use]
pub fn rfc3339_ms(t: SystemTime) -> String {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs();
    let days = i64::try_from(secs / 86_400).unwrap_or(i64::MAX);
    let rem = secs % 86_400;
    let (y, m, day) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        d.subsec_millis()
    )
}

/// Days since 1970-01-01 to (year, month, day) in the proleptic Gregorian calendar
/// (H. Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = if m <= 2 { y + 1 } else { y };
    (
        y,
        u32::try_from(m).unwrap_or(1),
        u32::try_from(d).unwrap_or(1),
    )
}

/// Build an event line.
#[must_use]
pub fn line(event: &str, session_id: Option<SessionId>, fields: Value) -> String {
    let mut m = Map::new();
    m.insert("ts".into(), Value::String(rfc3339_ms(SystemTime::now())));
    m.insert("event".into(), Value::String(event.into()));
    m.insert(
        "session_id".into(),
        session_id.map_or(Value::Null, |s| Value::String(s.to_string())),
    );
    if let Value::Object(extra) = fields {
        for (k, v) in extra {
            m.insert(k, v);
        }
    }
    Value::Object(m).to_string()
}

/// Print an event line to stdout (a closed stdout is not an error worth stopping for).
pub fn emit(event: &str, session_id: Option<SessionId>, fields: Value) {
    let l = line(event, session_id, fields);
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{l}");
    let _ = out.flush();
}

/// Milliseconds with microsecond precision, for `rtt_ms` fields.
#[must_use]
pub fn ms(d: std::time::Duration) -> f64 {
    let us = u32::try_from(d.as_micros()).unwrap_or(u32::MAX);
    f64::from(us) / 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn timestamps() {
        assert_eq!(rfc3339_ms(UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
        let t = UNIX_EPOCH + Duration::from_millis(951_782_400_123); // 2000-02-29
        assert_eq!(rfc3339_ms(t), "2000-02-29T00:00:00.123Z");
        let t = UNIX_EPOCH + Duration::from_secs(1_735_689_599); // 2024-12-31T23:59:59
        assert_eq!(rfc3339_ms(t), "2024-12-31T23:59:59.000Z");
    }

    #[test]
    fn lines_carry_the_common_fields() {
        let l = line(
            "rekeyed",
            Some(SessionId(0xab)),
            serde_json::json!({"epoch": 2}),
        );
        let v: Value = serde_json::from_str(&l).expect("json");
        assert_eq!(v["event"], "rekeyed");
        assert_eq!(v["session_id"], "00000000000000ab");
        assert_eq!(v["epoch"], 2);
        assert!(v["ts"].as_str().is_some_and(|s| s.ends_with('Z')));
        assert_eq!(ms(Duration::from_micros(12_345)), 12.345);
    }
}
