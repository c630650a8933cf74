//! The Grafana dashboard `deploy/grafana/jumping.json` only uses metrics the gateway exposes,
//! so renaming a metric without updating the dashboard (and this list) breaks the build.
//!
//! The list below is the contract of docs/OPERATIONS.md ("Metrics"): names as exposed, i.e.
//! counters with `_total`, histograms as `_bucket`, `_sum` and `_count`.

use std::collections::BTreeSet;

use serde_json::Value;

/// Gauges, both endpoints.
const GAUGES: &[&str] = &[
    "jumping_build_info",
    "jumping_sessions",
    "jumping_export_connected",
    "jumping_dataplane_connected",
    "jumping_policy_version",
    "jumping_allowed_clients",
    "jumping_worker_sessions",
    "jumping_dataplane_sessions",
    "jumping_dataplane_backend",
];

/// Counters, without `_total`.
const COUNTERS: &[&str] = &[
    // control process
    "jumping_handshakes",
    "jumping_cookies_sent",
    "jumping_control_drops",
    "jumping_reattaches",
    "jumping_reattach_rejects",
    "jumping_state_changes",
    "jumping_terminations",
    "jumping_path_switches",
    "jumping_security_events",
    "jumping_policy_limits",
    "jumping_key_rotations",
    "jumping_keys_expired",
    "jumping_rekeys_denied",
    "jumping_invalid_transitions",
    "jumping_export_sent",
    "jumping_export_dropped",
    "jumping_export_errors",
    // data plane
    "jumping_worker_rx_packets",
    "jumping_worker_rx_bytes",
    "jumping_worker_tx_packets",
    "jumping_worker_tx_bytes",
    "jumping_worker_delivered",
    "jumping_worker_inside_packets",
    "jumping_worker_handed_off",
    "jumping_worker_taken_over",
    "jumping_worker_key_cache_misses",
    "jumping_worker_events_lost",
    "jumping_worker_drops",
    "jumping_dataplane_drops",
    "jumping_xdp_packets",
];

/// Histograms, without suffix.
const HISTOGRAMS: &[&str] = &[
    "jumping_recovery_latency_seconds",
    "jumping_reattach_latency_seconds",
];

/// PromQL words that are not metric names.
const PROMQL: &[&str] = &[
    "sum",
    "min",
    "max",
    "avg",
    "count",
    "topk",
    "bottomk",
    "quantile",
    "stddev",
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "and",
    "or",
    "unless",
    "bool",
    "offset",
    "rate",
    "irate",
    "increase",
    "delta",
    "idelta",
    "deriv",
    "histogram_quantile",
    "clamp_min",
    "clamp_max",
    "abs",
    "absent",
    "label_values",
    "vector",
    "scalar",
    "time",
    "changes",
    "resets",
    "max_over_time",
    "min_over_time",
    "avg_over_time",
    "sum_over_time",
    "last_over_time",
];

/// Every metric name as exposed.
fn exposed() -> BTreeSet<String> {
    let mut s: BTreeSet<String> = GAUGES.iter().map(|g| (*g).to_owned()).collect();
    s.extend(COUNTERS.iter().map(|c| format!("{c}_total")));
    for h in HISTOGRAMS {
        for suffix in ["_bucket", "_sum", "_count"] {
            s.insert(format!("{h}{suffix}"));
        }
    }
    s
}

/// The identifiers of a PromQL expression that are not label names, label values, durations,
/// numbers or template variables: metric names and function/keyword names.
fn identifiers(expr: &str) -> Vec<String> {
    let b = expr.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    let ident_start = |c: u8| c.is_ascii_alphabetic() || c == b'_' || c == b':';
    let ident_cont = |c: u8| c.is_ascii_alphanumeric() || c == b'_' || c == b':';
    // Skips from an opening delimiter to its matching close, minding string literals.
    let skip_group = |mut i: usize, open: u8, close: u8| {
        let mut depth = 0;
        while i < b.len() {
            match b[i] {
                q @ (b'"' | b'\'' | b'`') => {
                    i += 1;
                    while i < b.len() && b[i] != q {
                        i += if b[i] == b'\\' { 2 } else { 1 };
                    }
                }
                c if c == open => depth += 1,
                c if c == close => {
                    depth -= 1;
                    if depth == 0 {
                        return i + 1;
                    }
                }
                _ => {}
            }
            i += 1;
        }
        i
    };
    while i < b.len() {
        let c = b[i];
        if c == b'{' {
            i = skip_group(i, b'{', b'}'); // label matchers
        } else if c == b'[' {
            i = skip_group(i, b'[', b']'); // range
        } else if c == b'"' || c == b'\'' || c == b'`' {
            let mut j = i + 1;
            while j < b.len() && b[j] != c {
                j += if b[j] == b'\\' { 2 } else { 1 };
            }
            i = j + 1;
        } else if c == b'$' {
            i += 1;
            while i < b.len() && ident_cont(b[i]) {
                i += 1;
            }
        } else if c.is_ascii_digit() || (c == b'.' && b.get(i + 1).is_some_and(u8::is_ascii_digit))
        {
            // A number, e.g. 0.99, 1e9, 8.
            i += 1;
            while i < b.len()
                && (b[i].is_ascii_alphanumeric()
                    || b[i] == b'.'
                    || ((b[i] == b'+' || b[i] == b'-') && matches!(b[i - 1], b'e' | b'E')))
            {
                i += 1;
            }
        } else if ident_start(c) {
            let start = i;
            while i < b.len() && ident_cont(b[i]) {
                i += 1;
            }
            let word = &expr[start..i];
            out.push(word.to_owned());
            if matches!(
                word,
                "by" | "without" | "on" | "ignoring" | "group_left" | "group_right"
            ) {
                // Skip the label list that follows.
                let mut j = i;
                while j < b.len() && b[j] == b' ' {
                    j += 1;
                }
                if b.get(j) == Some(&b'(') {
                    i = skip_group(j, b'(', b')');
                }
            }
        } else {
            i += 1;
        }
    }
    out
}

fn dashboard() -> Value {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../deploy/grafana/jumping.json"
    );
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{path}: {e}"));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{path} is not JSON: {e}"))
}

/// Every panel, including those nested in collapsed rows.
fn panels(d: &Value) -> Vec<&Value> {
    let mut out = Vec::new();
    let mut stack: Vec<&Value> = d["panels"].as_array().expect("panels").iter().collect();
    while let Some(p) = stack.pop() {
        if let Some(nested) = p["panels"].as_array() {
            stack.extend(nested);
        }
        out.push(p);
    }
    out
}

/// (where, expr) of every query: panel targets and template variables.
fn queries(d: &Value) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for p in panels(d) {
        for t in p["targets"].as_array().into_iter().flatten() {
            let expr = t["expr"].as_str().unwrap_or_default().to_owned();
            out.push((format!("panel {:?} {}", p["title"], t["refId"]), expr));
        }
    }
    for v in d["templating"]["list"].as_array().into_iter().flatten() {
        let q = match &v["query"] {
            Value::String(s) => s.clone(),
            Value::Object(o) => o
                .get("query")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned(),
            _ => String::new(),
        };
        // label_values(METRIC_SELECTOR, LABEL): the last argument is a label name.
        let q = match (q.strip_prefix("label_values("), q.rfind(',')) {
            (Some(_), Some(comma)) => format!("{})", &q[..comma]),
            _ => q,
        };
        if v["type"] == "query" {
            out.push((format!("variable {}", v["name"]), q));
        }
    }
    out
}

#[test]
fn tokenizer_finds_metric_names_only() {
    assert_eq!(
        identifiers(
            r#"histogram_quantile(0.99, sum by (le) (rate(jumping_x_bucket{instance=~"$control", a="b{c}"}[$__rate_interval]))) * 8 / 1e9"#
        ),
        [
            "histogram_quantile",
            "sum",
            "by",
            "rate",
            "jumping_x_bucket"
        ]
    );
    assert_eq!(
        identifiers("max by (backend) (jumping_dataplane_backend) == 1"),
        ["max", "by", "jumping_dataplane_backend"]
    );
}

#[test]
fn dashboard_uses_only_exposed_metrics() {
    let d = dashboard();
    let known = exposed();
    let words: BTreeSet<&str> = PROMQL.iter().copied().collect();
    let mut used = BTreeSet::new();
    let mut bad = Vec::new();
    let all = queries(&d);
    assert!(all.len() > 20, "too few queries: {}", all.len());
    for (at, expr) in &all {
        assert!(!expr.trim().is_empty(), "{at}: empty expr");
        for id in identifiers(expr) {
            if known.contains(&id) {
                used.insert(id);
            } else if !words.contains(id.as_str()) {
                bad.push(format!("{at}: {id:?} in {expr}"));
            }
        }
    }
    assert!(
        bad.is_empty(),
        "the dashboard uses names that are neither exposed metrics nor PromQL words \
         (renamed metric? update deploy/grafana/jumping.json and this list):\n{}",
        bad.join("\n")
    );
    // Every metric is shown somewhere (for a histogram, any of its series).
    let missing: Vec<&String> = known
        .iter()
        .filter(|m| {
            let base = HISTOGRAMS.iter().find(|h| m.starts_with(*h));
            match base {
                Some(h) => !used.iter().any(|u| u.starts_with(h)),
                None => !used.contains(*m),
            }
        })
        .collect();
    assert!(missing.is_empty(), "no panel shows {missing:?}");
}

#[test]
fn dashboard_is_importable() {
    let d = dashboard();
    let inputs = d["__inputs"].as_array().expect("__inputs");
    assert!(
        inputs
            .iter()
            .any(|i| i["name"] == "DS_PROMETHEUS" && i["pluginId"] == "prometheus"),
        "no DS_PROMETHEUS input"
    );
    assert!(d["schemaVersion"].as_u64().expect("schemaVersion") >= 36);
    assert!(d["uid"].as_str().is_some_and(|u| !u.is_empty()));
    assert!(d["title"].as_str().is_some_and(|t| !t.is_empty()));
    let mut ids = BTreeSet::new();
    for p in panels(&d) {
        let id = p["id"].as_u64().expect("panel id");
        assert!(ids.insert(id), "duplicate panel id {id}");
        for k in ["h", "w", "x", "y"] {
            assert!(p["gridPos"][k].is_u64(), "panel {id}: gridPos.{k}");
        }
        if p["type"] == "row" {
            continue;
        }
        assert!(p["title"].as_str().is_some_and(|t| !t.is_empty()));
        assert_eq!(
            p["datasource"]["uid"], "${DS_PROMETHEUS}",
            "panel {:?}",
            p["title"]
        );
        let targets = p["targets"].as_array().expect("targets");
        assert!(!targets.is_empty(), "panel {:?} has no query", p["title"]);
        for t in targets {
            assert_eq!(t["datasource"]["uid"], "${DS_PROMETHEUS}");
        }
    }
    // The export-drop panels alert in red above 0.
    let export_drop_red = panels(&d).iter().any(|p| {
        let exprs = p["targets"].to_string();
        exprs.contains("jumping_export_dropped_total")
            && p["fieldConfig"]["defaults"]["thresholds"]["steps"]
                .as_array()
                .is_some_and(|s| s.iter().any(|s| s["color"] == "red"))
    });
    assert!(export_drop_red, "export drops need a red threshold");
}

#[test]
fn operations_manual_explains_every_metric_and_code() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/OPERATIONS.md");
    let doc = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{path}: {e}"));
    let mut missing: Vec<String> = Vec::new();
    let mut need = |what: &str| {
        let documented = doc.contains(&format!("`{what}`"))
            || doc.contains(&format!("`{what}{{"))
            || doc.contains(&format!("| {what} |"));
        if !documented {
            missing.push(what.to_owned());
        }
    };
    for m in GAUGES.iter().chain(HISTOGRAMS) {
        need(m);
    }
    for c in COUNTERS {
        need(&format!("{c}_total"));
    }
    for r in jumping_protocol::Reason::ALL {
        need(r.as_str());
    }
    for r in jumping_protocol::RejectCode::ALL {
        need(r.as_str());
    }
    for k in [
        "REPLAY",
        "BAD_PROOF",
        "AUTH_FAILED",
        "FLOOD",
        "OWNERSHIP_ANOMALY",
    ] {
        need(k);
    }
    for d in jumping_protocol::gateway::DropReason::NAMES {
        need(d);
    }
    assert!(
        missing.is_empty(),
        "docs/OPERATIONS.md does not explain: {missing:?}"
    );
}
