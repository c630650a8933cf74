//! `cargo xtask`: the project's automation. Each subcommand dispatches to one function; every
//! external command runs through [`exec`], which says what failed and how to rerun it.
#![forbid(unsafe_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(about = "Jumping project automation")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Install the system packages and toolchain parts the project needs (idempotent).
    Setup,
    /// What CI runs: format check, clippy with -D warnings, every test (including the fuzz
    /// corpus replay).
    Ci,
    /// The demo: the real processes in network namespaces; a session surviving a NAT rebind
    /// and a path switch (root).
    Demo,
    /// Run benchmarks and load tests; every run writes its numbers to target/bench/<run-id>/.
    /// `aead`, `protocol`, `observe`, `dataplane`: criterion (`dataplane` also measures receive
    /// throughput in namespaces). `scenarios`: the seven load-test scenarios. `pilot --profile
    /// NAME`: grade against a pilot profile. `peers`: Jumping against userspace WireGuard and
    /// the untunnelled path. `all`: everything but `pilot`. `--quick`: a short run of the
    /// harness at small sizes, no criterion (CI: `scenarios` and `peers`, or just the one named).
    Bench {
        /// Which: aead, protocol, observe, dataplane, scenarios, pilot, peers, or all.
        #[arg(default_value = "all")]
        which: String,
        /// Small and short: keeps the harness working (CI); the numbers are not the issue's.
        #[arg(long)]
        quick: bool,
        /// Pilot profile for `pilot`: mobile, fintech, edge, or a .toml path.
        #[arg(long)]
        profile: Option<String>,
        /// Scenarios to run (comma-separated) for `scenarios`.
        #[arg(long)]
        only: Option<String>,
        /// Session counts for the `scale` scenario (comma-separated), instead of 10000,100000.
        #[arg(long)]
        sessions: Option<String>,
        /// NAT rebind intervals for `nat-churn`, seconds (comma-separated), instead of 60,10,1.
        #[arg(long)]
        churn_every: Option<String>,
        /// Sessions for `nat-churn`, instead of 10000: to find the rebind rate the machine
        /// sustains.
        #[arg(long)]
        churn_sessions: Option<String>,
        /// Seed of impairment and sampling.
        #[arg(long, default_value_t = 1)]
        seed: u64,
    },
    /// Run a cargo-fuzz target (needs the nightly toolchain and cargo-fuzz).
    Fuzz {
        /// Target name (see fuzz/Cargo.toml).
        target: String,
        /// How long to fuzz.
        #[arg(long, default_value_t = 60)]
        seconds: u64,
    },
}

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default()
}

/// Run `cmd` in the workspace root; fail with the command line if it fails.
fn exec(cmd: &mut Command) -> Result<()> {
    let line = format!("{cmd:?}");
    eprintln!("xtask: running {line}");
    let status = cmd
        .current_dir(root())
        .status()
        .with_context(|| format!("could not start {line}"))?;
    if !status.success() {
        bail!("{line} failed with {status}");
    }
    Ok(())
}

fn cargo() -> Command {
    Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
}

fn ci() -> Result<()> {
    exec(cargo().args(["fmt", "--all", "--", "--check"]))?;
    exec(cargo().args([
        "clippy",
        "--workspace",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ]))?;
    let (mut passed, mut failed) = (0, 0);
    for args in [
        &["test", "--workspace", "--doc"][..],
        &["test", "--workspace", "--all-targets"][..],
    ] {
        let (p, f) = run_tests(cargo().args(args))?;
        passed += p;
        failed += f;
    }
    // One closing line for the whole run, in the plain form CI readers understand.
    println!("tests: {passed} passed, {failed} failed");
    if failed > 0 {
        bail!("{failed} tests failed");
    }
    Ok(())
}

/// Run a `cargo test` command, echoing its output, and add up its `test result:` lines.
fn run_tests(cmd: &mut Command) -> Result<(u64, u64)> {
    use std::io::{BufRead, BufReader};
    let line = format!("{cmd:?}");
    eprintln!("xtask: running {line}");
    let mut child = cmd
        .current_dir(root())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .with_context(|| format!("could not start {line}"))?;
    let (mut passed, mut failed) = (0, 0);
    let stdout = child.stdout.take().context("no stdout")?;
    for l in BufReader::new(stdout).lines() {
        let l = l?;
        println!("{l}");
        if let Some(rest) = l.strip_prefix("test result: ") {
            let count = |word: &str| -> u64 {
                rest.split(';')
                    .find_map(|part| part.trim().strip_suffix(word))
                    .and_then(|n| n.trim().rsplit(' ').next().and_then(|n| n.parse().ok()))
                    .unwrap_or(0)
            };
            passed += count(" passed");
            failed += count(" failed");
        }
    }
    let status = child.wait()?;
    if !status.success() {
        bail!("{line} failed with {status}");
    }
    Ok((passed, failed))
}

/// Options of `cargo xtask bench`.
struct BenchOpts {
    quick: bool,
    profile: Option<String>,
    only: Option<String>,
    sessions: Option<String>,
    churn_every: Option<String>,
    churn_sessions: Option<String>,
    seed: u64,
}

fn bench(which: &str, o: &BenchOpts) -> Result<()> {
    let (criterion, load): (&[&str], &[&str]) = match (which, o.quick) {
        ("scenarios", true) => (&[], &["scenarios"]),
        ("peers", true) => (&[], &["peers"]),
        (_, true) => (&[], &["scenarios", "peers"]),
        ("aead" | "protocol" | "observe" | "dataplane", _) => (
            match which {
                "aead" => &["aead"],
                "protocol" => &["protocol"],
                "observe" => &["observe"],
                _ => &["dataplane"],
            },
            &[],
        ),
        ("scenarios", _) => (&[], &["scenarios"]),
        ("pilot", _) => (&[], &["pilot"]),
        ("peers", _) => (&[], &["peers"]),
        ("all", _) => (
            &["aead", "protocol", "observe", "dataplane"],
            &["scenarios", "peers"],
        ),
        (other, _) => bail!(
            "unknown benchmark set `{other}`: use aead, protocol, observe, dataplane, scenarios, \
             pilot, peers or all"
        ),
    };
    if load.contains(&"pilot") && o.profile.is_none() {
        bail!("`bench pilot` needs --profile NAME (mobile, fintech, edge, or a .toml path)");
    }
    // One run id for every report file of this run.
    let run_id = run_id();
    let mut netns_result = Ok(());
    for b in criterion {
        exec(cargo().args(["bench", "-p", "jumping-benches", "--bench", b]))?;
        if *b == "dataplane" {
            bench_bin("table-latency", &run_id)?;
            netns_result = netns_throughput(&run_id);
        }
    }
    if !criterion.is_empty() {
        // The criterion results are reported even if the namespace measurement failed.
        exec(
            cargo()
                .args([
                    "run",
                    "--quiet",
                    "-p",
                    "jumping-benches",
                    "--bin",
                    "bench-report",
                ])
                .env("JUMPING_BENCH_RUN_ID", &run_id),
        )?;
    }
    let mut load_result = Ok(());
    if !load.is_empty() {
        if !is_root() {
            println!("xtask: load tests skipped: they need root (namespaces, XDP)");
            return netns_result;
        }
        load_result = load_tests(load, o, &run_id);
    }
    netns_result.and(load_result)
}

/// The load tests: the scenarios (or a pilot) and the peers, with the binaries they drive
/// (release builds, or debug ones for `--quick`, which CI has already built).
fn load_tests(load: &[&str], o: &BenchOpts, run_id: &str) -> Result<()> {
    let profile = if o.quick { "debug" } else { "release" };
    let mut build = cargo();
    build.args(["build", "--bins"]);
    if !o.quick {
        build.arg("--release");
    }
    for p in [
        "jumping-dataplane",
        "jumping-control",
        "jumping-client",
        "jumpctl",
        "jumping-loadgen",
        "jumping-impair",
        "jumping-benches",
    ] {
        build.args(["-p", p]);
    }
    exec(&mut build)?;
    let bin_dir = root().join("target").join(profile);
    let mut result = Ok(());
    for l in load {
        let program = if *l == "peers" { "peers" } else { "scenarios" };
        let mut cmd = Command::new(bin_dir.join(program));
        cmd.env("JUMPING_BENCH_RUN_ID", run_id)
            .env("JUMPING_BIN_DIR", &bin_dir);
        if program == "scenarios" {
            cmd.args(["--seed", &o.seed.to_string()]);
        }
        if o.quick {
            cmd.arg("--quick");
        }
        if *l == "pilot" {
            cmd.args(["--profile", o.profile.as_deref().unwrap_or_default()]);
        }
        if let (Some(only), "scenarios") = (&o.only, *l) {
            cmd.args(["--only", only]);
        }
        if let (Some(every), "scenarios" | "pilot") = (&o.churn_every, *l) {
            cmd.args(["--churn-every", every]);
        }
        if let (Some(sessions), "scenarios" | "pilot") = (&o.sessions, *l) {
            cmd.args(["--sessions", sessions]);
        }
        if let (Some(n), "scenarios" | "pilot") = (&o.churn_sessions, *l) {
            cmd.args(["--churn-sessions", n]);
        }
        // Keep going: one failed set must not hide the others' reports. In a quick run the
        // peers comparison depends on third-party tunnels that may be missing or misbehave on
        // the machine: its failure is reported loudly but does not fail the run.
        if let Err(e) = exec(&mut cmd) {
            eprintln!("xtask: {e:#}");
            if o.quick && program == "peers" {
                eprintln!(
                    "xtask: WARNING: the quick peers comparison failed (not fatal in --quick)"
                );
            } else {
                result = Err(e);
            }
        }
    }
    result
}

/// Run one of the benches crate's measurement programs (release build) for run `run_id`.
fn bench_bin(name: &str, run_id: &str) -> Result<()> {
    exec(
        cargo()
            .args(["run", "--release", "-p", "jumping-benches", "--bin", name])
            .env("JUMPING_BENCH_RUN_ID", run_id),
    )
}

/// `<UTC date and time>-<git revision>`, the name of the run's directory under target/bench/.
fn run_id() -> String {
    let out = |cmd: &str, args: &[&str]| {
        Command::new(cmd)
            .args(args)
            .current_dir(root())
            .output()
            .ok()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .unwrap_or_default()
    };
    let rev = out("git", &["rev-parse", "--short", "HEAD"]);
    let date = out("date", &["-u", "+%Y-%m-%dT%H%M%SZ"]);
    format!("{date}-{}", if rev.is_empty() { "norev" } else { &rev })
}

/// Whether this process runs as root (effective uid 0, from /proc/self/status).
fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(2).map(|euid| euid == "0"))
        })
        .unwrap_or(false)
}

/// The data-plane receive throughput on a namespace topology (AF_XDP with and without
/// decryption, io_uring, AEAD alone), written next to the criterion report. Needs root.
fn netns_throughput(run_id: &str) -> Result<()> {
    if !is_root() {
        println!("xtask: dataplane namespace throughput skipped: needs root");
        return Ok(());
    }
    bench_bin("netns-throughput", run_id)
}

fn main() -> Result<()> {
    match Cli::parse().cmd {
        Cmd::Setup => exec(Command::new("bash").arg("scripts/setup.sh")),
        Cmd::Ci => ci(),
        Cmd::Demo => exec(cargo().args(["run", "-p", "jumping-e2e", "--bin", "jumping-demo"])),
        Cmd::Bench {
            which,
            quick,
            profile,
            only,
            sessions,
            churn_every,
            churn_sessions,
            seed,
        } => bench(
            &which,
            &BenchOpts {
                quick,
                profile,
                only,
                sessions,
                churn_every,
                churn_sessions,
                seed,
            },
        ),
        Cmd::Fuzz { target, seconds } => exec(
            cargo()
                .args([
                    "+nightly",
                    "fuzz",
                    "run",
                    &target,
                    "--fuzz-dir",
                    "fuzz",
                    "--",
                ])
                .arg(format!("-max_total_time={seconds}")),
        ),
    }
}
