//! Floods of invalid messages at a chosen rate, from an attacker's namespace:
//!
//! - `reattach-random`: well-formed reattach requests for random SessionIds;
//! - `reattach-forged`: requests for real SessionIds (an on-path attacker sees them in clear)
//!   with a forged proof and MAC;
//! - `reattach-replay`: genuine requests captured from real sessions, sent again;
//! - `handshake`: handshake initiations from keys the gateway does not know (valid mac1, so
//!   the gateway must do the Diffie-Hellman work or ask for a cookie), or genuine captured ones
//!   replayed.
//!
//! A pool of datagrams is built first; the flood sends it round-robin, paced per millisecond,
//! in batches of up to [`BATCH`] per `sendmmsg(2)` from several source ports in turn, and
//! counts what the gateway sends back (amplification).

use std::io::{self, IoSlice};
use std::net::{Ipv4Addr, SocketAddr};
use std::os::fd::AsRawFd as _;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant as StdInstant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, ensure, Context, Result};
use jumping_protocol::client::{Client, ClientConfig, LocalPath};
use jumping_protocol::handshake::StaticKeypair;
use jumping_protocol::wire::{emit_reattach_request, ReattachRequestFields, SessionId};
use jumping_protocol::Instant;
use nix::sys::socket::{sendmmsg, ControlMessage, MsgFlags, MultiHeaders, SockaddrStorage};
use rand_chacha::ChaCha8Rng;
use rand_core::{OsRng, RngCore as _, SeedableRng as _};
use serde::Serialize;

use crate::stats::Cpu;

/// Datagrams per `sendmmsg(2)`: one system call carries a batch (on a veth the sender's call
/// also pays the receiving side's processing, so the syscall is what batching saves).
pub const BATCH: usize = 64;

/// What to flood with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Kind {
    /// Reattach requests for random SessionIds.
    ReattachRandom,
    /// Reattach requests for real SessionIds, forged proof and MAC.
    ReattachForged,
    /// Genuine reattach requests, replayed.
    ReattachReplay,
    /// Handshake initiations (unknown keys, or genuine ones replayed).
    Handshake,
}

/// What the flood did.
#[derive(Debug, Default, Serialize)]
pub struct FloodReport {
    /// Kind.
    pub kind: Option<Kind>,
    /// Asked-for rate, datagrams/s.
    pub target_rate: f64,
    /// Datagrams sent.
    pub sent: u64,
    /// Sent / elapsed.
    pub achieved_rate: f64,
    /// Bytes sent.
    pub tx_bytes: u64,
    /// Send failures (a full socket buffer counts here).
    pub send_errors: u64,
    /// Datagrams the gateway sent back.
    pub replies: u64,
    /// Their bytes.
    pub rx_bytes: u64,
    /// rx_bytes / tx_bytes.
    pub amplification: f64,
    /// Seconds.
    pub elapsed_s: f64,
    /// This process's CPU.
    pub cpu: Cpu,
    /// Distinct datagrams in the pool.
    pub pool: usize,
}

/// Random well-formed reattach requests for `sids` (random ones if empty).
#[must_use]
pub fn reattach_pool(sids: &[SessionId], n: usize, seed: u64) -> Vec<Vec<u8>> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    (0..n)
        .map(|i| {
            let session_id = if sids.is_empty() {
                SessionId(rng.next_u64())
            } else {
                sids[i % sids.len()]
            };
            let mut echo = [0u8; jumping_protocol::wire::TOKEN_LEN];
            rng.fill_bytes(&mut echo);
            let fields = ReattachRequestFields {
                epoch: (rng.next_u32() & 0xffff) as u16,
                session_id,
                counter: rng.next_u64() >> 1,
                client_time_ms: rng.next_u64() % 100_000,
                transport: 0,
                challenge_echo: echo,
            };
            let mut msg = emit_reattach_request(&fields).to_vec();
            // Proof and MAC (everything after the fields) are forged.
            rng.fill_bytes(&mut msg[52..]);
            msg
        })
        .collect()
}

/// Handshake initiations from `n` fresh keys the gateway does not know.
#[must_use]
pub fn handshake_pool(gateway_public: [u8; 32], n: usize) -> Vec<Vec<u8>> {
    let wall = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX));
    (0..n)
        .filter_map(|_| {
            let kp = StaticKeypair::generate(&mut OsRng);
            let mut c = Client::new(ClientConfig::new(kp, gateway_public), OsRng);
            c.connect(Instant::ZERO, LocalPath(0), wall);
            c.poll_transmit().map(|t| t.payload)
        })
        .collect()
}

/// Decode hex datagrams (as captured in a load-generator report).
///
/// # Errors
/// A string that is not hex.
pub fn from_hex(list: &[String]) -> Result<Vec<Vec<u8>>> {
    list.iter()
        .map(|h| {
            ensure!(h.len() % 2 == 0, "odd-length hex datagram");
            (0..h.len())
                .step_by(2)
                .map(|i| u8::from_str_radix(&h[i..i + 2], 16).context("bad hex datagram"))
                .collect()
        })
        .collect()
}

/// Where and how fast a flood goes.
#[derive(Debug, Clone, Copy)]
pub struct Aim {
    /// The gateway.
    pub gateway: SocketAddr,
    /// Local address to send from.
    pub bind: Ipv4Addr,
    /// Source ports to spread over.
    pub sockets: usize,
    /// Datagrams per second.
    pub rate: f64,
    /// How long.
    pub duration: Duration,
}

/// Send `pool` round-robin as `aim` says (or until `stop`).
///
/// # Errors
/// No pool, a bad rate, or sockets could not be made.
pub fn run(kind: Kind, pool: &[Vec<u8>], aim: Aim, stop: &AtomicBool) -> Result<FloodReport> {
    let Aim {
        gateway,
        bind,
        sockets,
        rate,
        duration,
    } = aim;
    if pool.is_empty() {
        bail!("nothing to send: the pool is empty");
    }
    ensure!(rate > 0.0 && rate <= 5e6, "--rate must be in (0, 5000000]");
    let socks: Vec<std::net::UdpSocket> = (0..sockets.max(1))
        .map(|_| {
            let s = std::net::UdpSocket::bind((bind, 0))?;
            s.set_nonblocking(true)?;
            let _ = nix::sys::socket::setsockopt(&s, nix::sys::socket::sockopt::SndBuf, &(8 << 20));
            Ok(s)
        })
        .collect::<io::Result<_>>()
        .with_context(|| format!("bind {bind}"))?;
    let cpu0 = Cpu::now();
    let start = StdInstant::now();
    let mut r = FloodReport {
        kind: Some(kind),
        target_rate: rate,
        pool: pool.len(),
        ..FloodReport::default()
    };
    let mut buf = [0u8; 2048];
    let to = SockaddrStorage::from(gateway);
    let addrs = [Some(to); BATCH];
    let mut headers = MultiHeaders::<SockaddrStorage>::preallocate(BATCH, None);
    let mut next = 0usize;
    let mut turn = 0usize;
    let mut credit = 0.0f64;
    let mut last = start;
    while start.elapsed() < duration && !stop.load(Ordering::Relaxed) {
        let now = StdInstant::now();
        credit = (credit + rate * (now - last).as_secs_f64()).min(rate / 100.0 + 64.0);
        last = now;
        while credit >= 1.0 {
            // Whole datagrams only: `credit` is at least 1 here.
            let k = (credit as usize).min(BATCH);
            let s = &socks[turn % socks.len()];
            turn += 1;
            let iovs: Vec<[IoSlice<'_>; 1]> = (0..k)
                .map(|i| [IoSlice::new(&pool[(next + i) % pool.len()])])
                .collect();
            let no_cmsgs: [ControlMessage<'_>; 0] = [];
            let sent = match sendmmsg(
                s.as_raw_fd(),
                &mut headers,
                &iovs,
                &addrs[..k],
                no_cmsgs,
                MsgFlags::MSG_DONTWAIT,
            ) {
                Ok(done) => done.map(|m| r.tx_bytes += m.bytes as u64).count(),
                Err(_) => 0,
            };
            // What the socket did not take (a full buffer) is skipped, as a lost send.
            r.sent += sent as u64;
            r.send_errors += (k - sent) as u64;
            next += k;
            credit -= k as f64;
        }
        for s in &socks {
            while let Ok((n, _)) = s.recv_from(&mut buf) {
                r.replies += 1;
                r.rx_bytes += n as u64;
            }
        }
        std::thread::sleep(Duration::from_micros(500));
    }
    let wall = start.elapsed();
    r.elapsed_s = wall.as_secs_f64();
    r.achieved_rate = r.sent as f64 / r.elapsed_s.max(1e-9);
    r.amplification = if r.tx_bytes > 0 {
        r.rx_bytes as f64 / r.tx_bytes as f64
    } else {
        0.0
    };
    r.cpu = Cpu::now().since(&cpu0, wall);
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::*;
    use jumping_protocol::wire::{self, Message};

    #[test]
    fn pools_parse_as_what_they_claim_to_be() {
        for m in reattach_pool(&[], 16, 1) {
            assert!(matches!(wire::parse(&m), Ok(Message::ReattachRequest(_))));
        }
        let sid = SessionId(0x0100_0000_0000_1234);
        for m in reattach_pool(&[sid], 4, 2) {
            let Ok(Message::ReattachRequest(r)) = wire::parse(&m) else {
                panic!("not a request");
            };
            assert_eq!(r.session_id(), sid);
        }
        for m in handshake_pool([9; 32], 3) {
            assert!(matches!(wire::parse(&m), Ok(Message::HandshakeInit(_))));
        }
        assert_eq!(reattach_pool(&[], 8, 5), reattach_pool(&[], 8, 5));
    }

    #[test]
    fn a_flood_sends_whole_pool_datagrams_from_every_socket() {
        let rx = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
        let _ = nix::sys::socket::setsockopt(&rx, nix::sys::socket::sockopt::RcvBuf, &(8 << 20));
        rx.set_read_timeout(Some(Duration::from_millis(300)))
            .expect("timeout");
        let gateway = rx.local_addr().expect("addr");
        let reader = std::thread::spawn(move || {
            let mut got = Vec::new();
            let mut buf = [0u8; 64];
            while let Ok((n, from)) = rx.recv_from(&mut buf) {
                got.push((buf[..n].to_vec(), from.port()));
            }
            got
        });
        let pool: Vec<Vec<u8>> = (0u8..7).map(|i| vec![i; 10 + usize::from(i)]).collect();
        let aim = Aim {
            gateway,
            bind: Ipv4Addr::LOCALHOST,
            sockets: 3,
            rate: 20_000.0,
            duration: Duration::from_millis(100),
        };
        let r = run(Kind::ReattachRandom, &pool, aim, &AtomicBool::new(false)).expect("run");
        let got = reader.join().expect("reader");
        assert!(r.sent > 0 && r.send_errors == 0, "{r:?}");
        assert_eq!(got.len() as u64, r.sent);
        let bytes: usize = got.iter().map(|(d, _)| d.len()).sum();
        assert_eq!(bytes as u64, r.tx_bytes);
        assert!(
            got.iter()
                .all(|(d, _)| pool.get(usize::from(d[0])) == Some(d)),
            "only pool datagrams, whole"
        );
        let mut ports: Vec<u16> = got.iter().map(|(_, p)| *p).collect();
        ports.sort_unstable();
        ports.dedup();
        assert_eq!(ports.len(), 3, "every source port is used");
    }

    #[test]
    fn hex_round_trip_and_refusal() {
        assert_eq!(
            from_hex(&["00ff10".into()]).expect("hex"),
            vec![vec![0, 255, 16]]
        );
        assert!(from_hex(&["0g".into()]).is_err());
        assert!(from_hex(&["abc".into()]).is_err());
    }
}
