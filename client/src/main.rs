//! `jumping-client`: the Jumping VPN client for Linux. A thin I/O shell (TUN, one UDP socket per
//! candidate path, a status socket) around the sans-I/O `jumping_protocol::client::Client`.

mod cli;
mod events;
mod paths;
mod runtime;
mod status;
mod sys;

use std::process::ExitCode;

use clap::Parser as _;
use jumping_protocol::crypto::rng_health_check;
use rand_core::OsRng;

use crate::cli::{status_socket_path, Args, Config};

/// Exit code of a bad command line (as clap's own).
const EXIT_USAGE: u8 = 2;

fn fail(code: u8, msg: &str) -> ExitCode {
    eprintln!("jumping-client: error: {msg}");
    ExitCode::from(code)
}

/// `--status` / `--switch N`: one request to the running client.
fn operator(args: &Args) -> ExitCode {
    let socket = match status_socket_path(args) {
        Ok(s) => s,
        Err(e) => return fail(EXIT_USAGE, &e.0),
    };
    let request = match args.switch {
        Some(n) => serde_json::json!({ "cmd": "switch", "path": n }).to_string(),
        None => serde_json::json!({ "cmd": "status" }).to_string(),
    };
    let answer = match status::query(&socket, &request) {
        Ok(a) => a,
        Err(e) => return fail(1, &e),
    };
    let Ok(v) = serde_json::from_str::<serde_json::Value>(&answer) else {
        return fail(1, "the client's answer is not JSON");
    };
    println!(
        "{}",
        serde_json::to_string_pretty(&v).unwrap_or_else(|_| answer.clone())
    );
    if let Some(e) = v.get("error") {
        eprintln!("jumping-client: refused: {}", e.as_str().unwrap_or("?"));
        return ExitCode::from(1);
    }
    ExitCode::SUCCESS
}

fn main() -> ExitCode {
    let args = Args::parse();
    if args.status || args.switch.is_some() {
        return operator(&args);
    }
    if let Err(e) = observe::log::init(args.log_format, args.log.as_deref(), "info") {
        return fail(EXIT_USAGE, &e);
    }
    let cfg = match Config::from_args(&args) {
        Ok(c) => c,
        Err(e) => return fail(EXIT_USAGE, &e.0),
    };
    if let Err(e) = rng_health_check(&mut OsRng) {
        return fail(1, &format!("refusing to start: {e}"));
    }
    let rt = match runtime::Runtime::start(cfg) {
        Ok(rt) => rt,
        Err(e) => return fail(1, &format!("{e:#}")),
    };
    match rt.run() {
        Ok(code) => ExitCode::from(u8::try_from(code).unwrap_or(1)),
        Err(e) => fail(1, &format!("{e:#}")),
    }
}
