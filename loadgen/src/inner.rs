//! The inner packets the load generator sends through the tunnel: IPv4/UDP datagrams from a
//! client's inner address to the echo server, whose payload names the session, a sequence
//! number and the send time, so that the echo coming back can be matched, deduplicated (a
//! duplicate is a replay the gateway accepted) and timed.

use std::net::{Ipv4Addr, SocketAddrV4};

/// IPv4 header length (no options).
pub const IPV4_LEN: usize = 20;
/// UDP header length.
pub const UDP_LEN: usize = 8;
/// Marks a load-generator payload.
pub const MAGIC: [u8; 4] = *b"JMPL";
/// Magic, session index, sequence number, send time.
pub const PROBE_LEN: usize = 4 + 4 + 8 + 8;
/// The UDP source port of every inner packet.
pub const INNER_PORT: u16 = 40_000;

/// What a probe payload carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Probe {
    /// Index of the session in the load generator.
    pub session: u32,
    /// Per-session sequence number, from 0.
    pub seq: u64,
    /// Send time, nanoseconds since the load generator started.
    pub sent_ns: u64,
}

/// The smallest inner packet (headers and probe).
#[must_use]
pub const fn min_len() -> usize {
    IPV4_LEN + UDP_LEN + PROBE_LEN
}

fn checksum(header: &[u8]) -> u16 {
    let mut sum: u32 = header
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    // The sum is folded to 16 bits above.
    !u16::try_from(sum).unwrap_or(0xffff)
}

/// Write an inner IPv4/UDP packet of `len` bytes (at least [`min_len`]) into `buf[..len]`:
/// from `src:INNER_PORT` to `dst`, the probe at the start of the UDP payload, zeros after it.
///
/// # Panics
/// If `buf` is shorter than `len` or `len` is below [`min_len`] or above 65535.
pub fn write(buf: &mut [u8], len: usize, src: Ipv4Addr, dst: SocketAddrV4, probe: Probe) {
    assert!(len >= min_len() && len <= 65_535 && buf.len() >= len);
    let b = &mut buf[..len];
    b.fill(0);
    let total = u16::try_from(len).unwrap_or(u16::MAX);
    b[0] = 0x45;
    b[2..4].copy_from_slice(&total.to_be_bytes());
    b[6] = 0x40; // don't fragment
    b[8] = 64;
    b[9] = 17;
    b[12..16].copy_from_slice(&src.octets());
    b[16..20].copy_from_slice(&dst.ip().octets());
    let c = checksum(&b[..IPV4_LEN]);
    b[10..12].copy_from_slice(&c.to_be_bytes());
    let u = &mut b[IPV4_LEN..];
    u[0..2].copy_from_slice(&INNER_PORT.to_be_bytes());
    u[2..4].copy_from_slice(&dst.port().to_be_bytes());
    u[4..6].copy_from_slice(&(total - IPV4_LEN as u16).to_be_bytes());
    // UDP checksum 0: none (allowed over IPv4).
    let p = &mut u[UDP_LEN..];
    p[..4].copy_from_slice(&MAGIC);
    p[4..8].copy_from_slice(&probe.session.to_be_bytes());
    p[8..16].copy_from_slice(&probe.seq.to_be_bytes());
    p[16..24].copy_from_slice(&probe.sent_ns.to_be_bytes());
}

/// The probe in an inner packet coming back from the echo server, or `None` if it is not one
/// of ours (not IPv4/UDP, too short, wrong magic).
#[must_use]
pub fn read(packet: &[u8]) -> Option<Probe> {
    if packet.len() < min_len() || packet[0] != 0x45 || packet[9] != 17 {
        return None;
    }
    let p = &packet[IPV4_LEN + UDP_LEN..];
    if p[..4] != MAGIC {
        return None;
    }
    let u32_at = |i: usize| u32::from_be_bytes([p[i], p[i + 1], p[i + 2], p[i + 3]]);
    let u64_at = |i: usize| {
        let mut a = [0u8; 8];
        a.copy_from_slice(&p[i..i + 8]);
        u64::from_be_bytes(a)
    };
    Some(Probe {
        session: u32_at(4),
        seq: u64_at(8),
        sent_ns: u64_at(16),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_valid_ip_checksum() {
        let mut buf = [0u8; 200];
        let probe = Probe {
            session: 7,
            seq: 1 << 40,
            sent_ns: 123_456_789,
        };
        let dst = SocketAddrV4::new(Ipv4Addr::new(10, 10, 0, 2), 9);
        write(&mut buf, 100, Ipv4Addr::new(10, 100, 0, 8), dst, probe);
        assert_eq!(read(&buf[..100]), Some(probe));
        // A correct header sums to zero.
        assert_eq!(checksum(&buf[..IPV4_LEN]), 0);
        assert_eq!(u16::from_be_bytes([buf[2], buf[3]]), 100);
        assert_eq!(u16::from_be_bytes([buf[24], buf[25]]), 80);
    }

    #[test]
    fn refuses_what_is_not_a_probe() {
        let mut buf = [0u8; 100];
        let dst = SocketAddrV4::new(Ipv4Addr::LOCALHOST, 9);
        let probe = Probe {
            session: 1,
            seq: 2,
            sent_ns: 3,
        };
        write(&mut buf, 60, Ipv4Addr::LOCALHOST, dst, probe);
        assert!(read(&buf[..59]).is_some());
        assert!(read(&buf[..40]).is_none());
        let mut tcp = buf;
        tcp[9] = 6;
        assert!(read(&tcp[..60]).is_none());
        let mut bad = buf;
        bad[IPV4_LEN + UDP_LEN] ^= 1;
        assert!(read(&bad[..60]).is_none());
    }
}
