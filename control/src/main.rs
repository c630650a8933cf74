//! `jumping-control`: the Jumping control process.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use clap::Parser;
use jumping_control::config::{Config, DEFAULT_TOML};
use jumping_control::daemon::Daemon;
use observe::log::LogFormat;

/// The Jumping control process: handshakes, reattach, timers, policy and keys; programs the
/// data plane and answers `jumpctl`.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// Configuration file (TOML over the embedded defaults; see --print-default-config).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Check the configuration and exit.
    #[arg(long)]
    check_config: bool,
    /// Print the embedded default configuration and exit.
    #[arg(long)]
    print_default_config: bool,
    /// Log levels per module (over JUMPING_LOG, RUST_LOG and the `log` key), e.g.
    /// `info,jumping_control::daemon=debug`.
    #[arg(long)]
    log: Option<String>,
    /// Log format: auto (human on a terminal, JSON otherwise), human, json (over `log_format`).
    #[arg(long)]
    log_format: Option<LogFormat>,
}

fn main() -> ExitCode {
    let args = Args::parse();
    if args.print_default_config {
        print!("{DEFAULT_TOML}");
        return ExitCode::SUCCESS;
    }
    let cfg = match Config::load(args.config.as_deref()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("jumping-control: configuration refused: {e}");
            return ExitCode::from(2);
        }
    };
    let format = args.log_format.unwrap_or_else(|| cfg.log_format());
    if let Err(e) = observe::log::init(format, args.log.as_deref(), &cfg.log) {
        eprintln!("jumping-control: {e}");
        return ExitCode::from(2);
    }
    if args.check_config {
        println!("configuration ok");
        return ExitCode::SUCCESS;
    }
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        if let Err(e) = signal_hook::flag::register(sig, Arc::clone(&stop)) {
            eprintln!("jumping-control: cannot handle signal {sig}: {e}");
            return ExitCode::FAILURE;
        }
    }
    let mut d = match Daemon::start(cfg, args.config, stop) {
        Ok(d) => d,
        Err(e) => {
            eprintln!("jumping-control: {e:#}");
            return ExitCode::from(2);
        }
    };
    match d.run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("jumping-control: {e:#}");
            ExitCode::FAILURE
        }
    }
}
