//! `scenarios`: the load-test scenarios and pilot profiles (`cargo xtask bench scenarios`,
//! `cargo xtask bench pilot --profile NAME`, and `--quick` in CI). Needs root (namespaces, XDP);
//! without it, it prints `skipped: needs root` and exits successfully.
//!
//! Each run writes to `target/bench/<run-id>/` (run id from `JUMPING_BENCH_RUN_ID`):
//! `scenarios.json` (environment, git revision, knobs, seed, every outcome with its criteria,
//! correctness counters and measurements), `scenarios.md` (the summary), and the plots
//! `recovery-cdf.svg`, `memory.svg` and `switches.svg`; a pilot run also writes `pilot.json`
//! and `pilot.md` with its grade. The exit status is 0 whatever the verdicts (they are
//! measurements); it is 1 only if a scenario could not be run at all.

use std::fmt::Write as _;

use anyhow::{bail, Result};
use clap::Parser;
use jumping_benches::report::{self, Series};
use jumping_benches::scenario::{self, Knobs, Outcome, NAMES};
use jumping_benches::{pilot, run_dir};
use serde_json::json;

#[derive(Parser)]
#[command(about = "Jumping load-test scenarios and pilot profiles")]
struct Args {
    /// Small and short runs (CI): the harness works, the numbers are not the issue's.
    #[arg(long)]
    quick: bool,
    /// Scenarios to run (comma-separated; default all): failover, loss, nat-churn, scale,
    /// reattach-flood, switch-abuse, handshake-flood.
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// Seed of the impairment and of sampling.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Data plane backend: af_xdp or io_uring.
    #[arg(long, default_value = "af_xdp")]
    backend: String,
    /// Grade against a pilot profile (mobile, fintech, edge, or a .toml path): runs the
    /// scenarios the profile covers with its failure model.
    #[arg(long)]
    profile: Option<String>,
    /// Session counts for `scale` (comma-separated), instead of the 10000,100000.
    #[arg(long, value_delimiter = ',')]
    sessions: Vec<usize>,
    /// NAT rebind intervals for `nat-churn`, seconds (comma-separated), instead of the
    /// issue's 60,10,1 (or the profile's).
    #[arg(long, value_delimiter = ',')]
    churn_every: Vec<f64>,
    /// Sessions for `nat-churn`, instead of the 10000 (or the profile's): to find the
    /// rebind rate this machine sustains.
    #[arg(long)]
    churn_sessions: Option<usize>,
}

fn main() -> Result<()> {
    let a = Args::parse();
    if !jumping_e2e::is_root() {
        println!("scenarios: skipped: needs root (network namespaces, XDP)");
        return Ok(());
    }
    let backend: &'static str = match a.backend.as_str() {
        "af_xdp" => "af_xdp",
        "io_uring" => "io_uring",
        other => bail!("--backend {other}: use af_xdp or io_uring"),
    };
    let profile = a.profile.as_deref().map(pilot::load).transpose()?;
    let mut knobs = match &profile {
        Some(p) => p.knobs(a.quick, a.seed),
        None => Knobs::standard(a.quick, a.seed),
    };
    knobs.backend = backend;
    if !a.sessions.is_empty() {
        if a.sessions.contains(&0) {
            bail!("--sessions: each count must be at least 1");
        }
        knobs.scale_sessions.clone_from(&a.sessions);
    }
    if !a.churn_every.is_empty() {
        if a.churn_every.iter().any(|e| !(0.1..=3600.0).contains(e)) {
            bail!("--churn-every: each interval must be between 0.1 and 3600 seconds");
        }
        knobs.churn_every_s.clone_from(&a.churn_every);
    }
    if let Some(n) = a.churn_sessions {
        if n == 0 {
            bail!("--churn-sessions: must be at least 1");
        }
        knobs.churn_sessions = Some(n);
    }
    let names: Vec<String> = if !a.only.is_empty() {
        for n in &a.only {
            if !NAMES.contains(&n.as_str()) {
                bail!("--only {n}: unknown scenario; one of {}", NAMES.join(", "));
            }
        }
        a.only.clone()
    } else if profile.is_some() {
        pilot::PILOT_SCENARIOS
            .iter()
            .map(|s| (*s).to_string())
            .collect()
    } else {
        NAMES.iter().map(|s| (*s).to_string()).collect()
    };
    jumping_e2e::build_binaries_if_missing()?;
    let dir = run_dir();
    std::fs::create_dir_all(&dir)?;
    let mut outcomes: Vec<Outcome> = Vec::new();
    let mut errors = Vec::new();
    for n in &names {
        println!(
            "scenarios: running {n}{}",
            if a.quick { " (quick)" } else { "" }
        );
        match scenario::run(n, &knobs) {
            Ok(o) => {
                println!("scenarios: {n}: {:?} in {:.0} s", o.verdict, o.wall_s);
                for c in &o.criteria.0 {
                    println!(
                        "    [{}] {}: {} (required {})",
                        if c.ok { "ok" } else { "FAILED" },
                        c.what,
                        c.measured,
                        c.required
                    );
                }
                outcomes.push(o);
            }
            Err(e) => {
                println!("scenarios: {n}: could not run: {e:#}");
                errors.push(format!("{n}: {e:#}"));
            }
        }
    }
    let env = report::environment();
    report::write_json(
        &dir.join("scenarios.json"),
        &json!({"environment": env, "knobs": knobs, "outcomes": outcomes, "errors": errors}),
    )?;
    let mut md = summary(&outcomes, &knobs, &errors);
    plots(&dir, &outcomes)?;
    if let Some(p) = &profile {
        let (grade, lines) = pilot::grade(p, &outcomes);
        let rows: Vec<Vec<String>> = lines
            .iter()
            .map(|l| {
                vec![
                    l.requirement.clone(),
                    l.required.clone(),
                    l.measured.clone(),
                    format!("{:?}", l.grade).to_uppercase(),
                ]
            })
            .collect();
        let text = format!(
            "# Pilot `{}`: **{}**\n\n{}\n\n{}\n",
            p.name,
            format!("{grade:?}").to_uppercase(),
            p.description,
            report::md_table(&["requirement", "required", "measured", "grade"], &rows)
        );
        std::fs::write(dir.join("pilot.md"), &text)?;
        report::write_json(
            &dir.join("pilot.json"),
            &json!({"profile": p, "grade": grade, "lines": lines, "environment": env}),
        )?;
        println!("{text}");
        md.push_str(&text);
    }
    std::fs::write(dir.join("scenarios.md"), &md)?;
    println!("{md}");
    println!("scenarios: report in {}", dir.display());
    if !errors.is_empty() {
        bail!(
            "{} scenario(s) could not run: {}",
            errors.len(),
            errors.join("; ")
        );
    }
    Ok(())
}

fn summary(outcomes: &[Outcome], k: &Knobs, errors: &[String]) -> String {
    let mut md = String::new();
    let _ = writeln!(
        md,
        "# Scenarios{}\n\nseed {}, backend {}, policy `{}`\n",
        if k.quick { " (quick)" } else { "" },
        k.seed,
        k.backend,
        k.policy.replace('\n', "; ")
    );
    let rows: Vec<Vec<String>> = outcomes
        .iter()
        .map(|o| {
            let failed: Vec<&str> = o
                .criteria
                .0
                .iter()
                .filter(|c| !c.ok)
                .map(|c| c.what.as_str())
                .collect();
            vec![
                o.name.clone(),
                format!("{:?}", o.verdict).to_uppercase(),
                format!(
                    "{}/{}/{}/{}",
                    o.correctness.dual_active_bindings,
                    o.correctness.silent_resets,
                    o.correctness.version_gaps,
                    o.correctness.replays_accepted
                ),
                failed.join("; "),
                format!("{:.0}", o.wall_s),
            ]
        })
        .collect();
    md.push_str(&report::md_table(
        &[
            "scenario",
            "verdict",
            "dual-active/silent resets/version gaps/replays accepted",
            "failed criteria",
            "wall s",
        ],
        &rows,
    ));
    for o in outcomes {
        let _ = writeln!(md, "\n## {} — {:?}\n", o.name, o.verdict);
        let rows: Vec<Vec<String>> = o
            .criteria
            .0
            .iter()
            .map(|c| {
                vec![
                    c.what.clone(),
                    c.required.clone(),
                    c.measured.clone(),
                    if c.ok { "ok".into() } else { "FAILED".into() },
                ]
            })
            .collect();
        md.push_str(&report::md_table(
            &["criterion", "required", "measured", ""],
            &rows,
        ));
    }
    for e in errors {
        let _ = writeln!(md, "\n**could not run**: {e}");
    }
    md
}

fn plots(dir: &std::path::Path, outcomes: &[Outcome]) -> Result<()> {
    let recovery: Vec<(String, Vec<f64>)> = outcomes
        .iter()
        .flat_map(|o| {
            o.recovery_ms
                .iter()
                .map(move |(s, v)| (format!("{}: {s}", o.name), v.clone()))
        })
        .collect();
    report::cdf_svg(
        &dir.join("recovery-cdf.svg"),
        "Recovery after a failure or NAT rebind (mark → first echo)",
        "ms",
        &recovery,
    )?;
    let memory: Vec<Series> = outcomes
        .iter()
        .filter(|o| !o.memory.is_empty())
        .map(|o| Series {
            name: "gateway (control + data plane)".into(),
            points: o.memory.clone(),
        })
        .collect();
    report::lines_svg(
        &dir.join("memory.svg"),
        "Gateway memory per session",
        "sessions",
        "bytes per session",
        &memory,
    )?;
    let switches: Vec<Series> = outcomes
        .iter()
        .flat_map(|o| {
            o.switches.iter().map(move |(s, p)| Series {
                name: format!("{}: {s}", o.name),
                points: p.clone(),
            })
        })
        .collect();
    report::lines_svg(
        &dir.join("switches.svg"),
        "Path switches and rebinds confirmed per second",
        "s since the load generator started",
        "per second",
        &switches,
    )?;
    Ok(())
}
