//! Paths: the volatile transport bindings of a session (SPEC.md section 1).

use core::fmt;
use core::net::SocketAddr;

/// The transport a path runs over. UDP is the baseline; TCP and QUIC carry the same messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Transport {
    /// Datagrams over UDP.
    Udp,
    /// Length-prefixed frames over a TCP stream (fallback).
    Tcp,
    /// QUIC datagrams.
    Quic,
}

impl Transport {
    /// Wire code of the transport, as carried in a reattach request.
    #[must_use]
    pub const fn code(self) -> u8 {
        match self {
            Transport::Udp => 1,
            Transport::Tcp => 2,
            Transport::Quic => 3,
        }
    }

    /// The transport with wire code `code`, if any.
    #[must_use]
    pub const fn from_code(code: u8) -> Option<Self> {
        match code {
            1 => Some(Transport::Udp),
            2 => Some(Transport::Tcp),
            3 => Some(Transport::Quic),
            _ => None,
        }
    }

    /// Lower-case name as used in configuration and events.
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Transport::Udp => "udp",
            Transport::Tcp => "tcp",
            Transport::Quic => "quic",
        }
    }
}

/// One way of reaching a client: transport plus the client's address as the gateway sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Path {
    /// Transport kind.
    pub transport: Transport,
    /// The client's address and port as seen by the gateway (after any NAT).
    pub addr: SocketAddr,
}

impl Path {
    /// A UDP path to `addr`.
    #[must_use]
    pub const fn udp(addr: SocketAddr) -> Self {
        Path {
            transport: Transport::Udp,
            addr,
        }
    }
}

impl fmt::Display for Path {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}://{}", self.transport.as_str(), self.addr)
    }
}
