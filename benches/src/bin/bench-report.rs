//! Collect the latest criterion results into one report: `target/bench/<run-id>/results.json`
//! (raw numbers with the environment: git revision, CPU, kernel, date) and `summary.md` (a table
//! per group, ready to paste into docs/BENCHMARKS.md). Run by `cargo xtask bench` after the
//! benches. The run id is `JUMPING_BENCH_RUN_ID` when set (xtask sets it for every report of a
//! run); the namespace throughput report `dataplane-netns.{json,md}` that `netns-throughput`
//! wrote into the same directory, if any, is included in both files.

use jumping_benches::sh;
use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde_json::{json, Value};

fn find_results(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            if p.file_name().is_some_and(|n| n == "new") && p.join("estimates.json").exists() {
                out.push(p);
            } else {
                find_results(&p, out);
            }
        }
    }
}

fn human_rate(per_sec: f64, unit: &str) -> String {
    if unit == "B" {
        format!("{:.2} GiB/s", per_sec / (1u64 << 30) as f64)
    } else if per_sec >= 1e6 {
        format!("{:.2} M/s", per_sec / 1e6)
    } else {
        format!("{:.1} k/s", per_sec / 1e3)
    }
}

fn main() -> Result<()> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let criterion = root.join("target/criterion");
    let mut dirs = Vec::new();
    find_results(&criterion, &mut dirs);
    dirs.sort();
    anyhow::ensure!(
        !dirs.is_empty(),
        "no criterion results under {}: run the benches first",
        criterion.display()
    );
    let mut rows = Vec::new();
    for d in &dirs {
        let est: Value = serde_json::from_str(&fs::read_to_string(d.join("estimates.json"))?)
            .with_context(|| format!("{}", d.display()))?;
        let bench: Value = serde_json::from_str(&fs::read_to_string(d.join("benchmark.json"))?)
            .with_context(|| format!("{}", d.display()))?;
        let mean_ns = est["mean"]["point_estimate"].as_f64().unwrap_or(f64::NAN);
        let (unit, amount) = match &bench["throughput"] {
            Value::Object(m) if m.contains_key("Bytes") => {
                ("B", m["Bytes"].as_f64().unwrap_or(0.0))
            }
            Value::Object(m) if m.contains_key("Elements") => {
                ("op", m["Elements"].as_f64().unwrap_or(0.0))
            }
            _ => ("", 0.0),
        };
        rows.push(json!({
            "group": bench["group_id"],
            "id": bench["full_id"],
            "mean_ns": mean_ns,
            "ci95_ns": [est["mean"]["confidence_interval"]["lower_bound"], est["mean"]["confidence_interval"]["upper_bound"]],
            "throughput_unit": unit,
            "throughput_per_iter": amount,
        }));
    }
    let rev = sh("git", &["rev-parse", "--short", "HEAD"]);
    let date = sh("date", &["-u", "+%Y-%m-%dT%H:%M:%SZ"]);
    let run_id = std::env::var("JUMPING_BENCH_RUN_ID").unwrap_or_else(|_| {
        format!(
            "{}-{}",
            date.replace(':', ""),
            if rev.is_empty() { "norev" } else { &rev }
        )
    });
    let cpu = fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_default();
    let env = json!({ "git_rev": rev, "date": date, "cpu": cpu, "nproc": sh("nproc", &[]), "kernel": sh("uname", &["-r"]) });
    let out_dir = root.join("target/bench").join(&run_id);
    fs::create_dir_all(&out_dir)?;
    let netns: Option<Value> = fs::read_to_string(out_dir.join("dataplane-netns.json"))
        .ok()
        .and_then(|s| serde_json::from_str(&s).ok());
    fs::write(
        out_dir.join("results.json"),
        serde_json::to_string_pretty(
            &json!({ "environment": env, "results": rows, "dataplane_netns": netns }),
        )?,
    )?;
    let mut md = format!(
        "# Benchmark run {run_id}\n\nCPU: {cpu}, {} cores, kernel {}, git {rev}\n",
        env["nproc"].as_str().unwrap_or("?"),
        env["kernel"].as_str().unwrap_or("?")
    );
    let mut group = String::new();
    for r in &rows {
        let g = r["group"].as_str().unwrap_or("");
        if g != group {
            group = g.to_string();
            let _ = write!(
                md,
                "\n## {group}\n\n| benchmark | mean | throughput |\n|---|---:|---:|\n"
            );
        }
        let mean = r["mean_ns"].as_f64().unwrap_or(f64::NAN);
        let per_iter = r["throughput_per_iter"].as_f64().unwrap_or(0.0);
        let unit = r["throughput_unit"].as_str().unwrap_or("");
        let rate = if per_iter > 0.0 {
            human_rate(per_iter / (mean / 1e9), unit)
        } else {
            String::new()
        };
        let id = r["id"]
            .as_str()
            .unwrap_or("")
            .trim_start_matches(&format!("{group}/"))
            .to_string();
        let mean_h = if mean >= 10_000.0 {
            format!("{:.1} µs", mean / 1e3)
        } else {
            format!("{mean:.1} ns")
        };
        let _ = writeln!(md, "| {id} | {mean_h} | {rate} |");
    }
    if let Ok(netns_md) = fs::read_to_string(out_dir.join("dataplane-netns.md")) {
        let _ = write!(md, "\n{netns_md}");
    }
    fs::write(out_dir.join("summary.md"), &md)?;
    println!("{md}");
    println!("report written to {}", out_dir.display());
    Ok(())
}
