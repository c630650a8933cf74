//! The echo server behind the gateway: every UDP datagram is sent back to where it came from.
//! The load generator's probes travel client → tunnel → gateway → here → gateway → tunnel →
//! client, so an echo proves both directions of a session work.

use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{Context, Result};
use serde::Serialize;

/// What the echo server did.
#[derive(Debug, Default, Serialize)]
pub struct EchoStats {
    /// Datagrams received.
    pub received: u64,
    /// Datagrams sent back.
    pub echoed: u64,
    /// Send failures.
    pub send_errors: u64,
}

/// Echo on `listen` until `stop` is set.
///
/// # Errors
/// The socket could not be bound.
pub fn serve(listen: SocketAddr, stop: &AtomicBool) -> Result<EchoStats> {
    let sock = UdpSocket::bind(listen).with_context(|| format!("bind {listen}"))?;
    sock.set_read_timeout(Some(Duration::from_millis(200)))?;
    crate::stats::socket_buffers(&sock, 8 << 20);
    println!(
        "{}",
        serde_json::json!({ "echo": "listening", "addr": listen })
    );
    let mut stats = EchoStats::default();
    let mut buf = vec![0u8; 65_536];
    while !stop.load(Ordering::Relaxed) {
        match sock.recv_from(&mut buf) {
            Ok((n, from)) => {
                stats.received += 1;
                match sock.send_to(&buf[..n], from) {
                    Ok(_) => stats.echoed += 1,
                    Err(_) => stats.send_errors += 1,
                }
            }
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e).context("echo receive"),
        }
    }
    Ok(stats)
}
