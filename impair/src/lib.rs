//! Seeded, reproducible network impairment for Jumping's tests (this kernel has no netem).
//!
//! `jumping-impair` is a UDP relay run in the middle ("NAT box") namespace of a test topology.
//! The client's traffic to the gateway (UDP port 51820) is redirected by an nftables rule to the
//! relay's listen port:
//!
//! ```text
//! table ip jumping_impair {
//!     chain prerouting {
//!         type nat hook prerouting priority dstnat; policy accept;
//!         udp dport 51820 redirect to :<listen port>
//!     }
//! }
//! ```
//!
//! ([`redirect_ruleset`] produces it; load it with `nft -f` inside the middle namespace, remove
//! it with [`redirect_delete_ruleset`] or `nft delete table ip jumping_impair`.) The relay
//! forwards each datagram to the real gateway from a per-client-flow upstream socket (one per
//! client address:port, like a NAT, bound to `0.0.0.0:0` and connected to the gateway) and sends
//! the gateway's answers back to the client from the listen socket. Because `redirect` is a DNAT,
//! conntrack rewrites the source of those replies back to the gateway's address and port, so the
//! client sees nothing unusual.
//!
//! Each direction is impaired independently ([`Impairment`]): random loss, delay plus uniform
//! jitter (which reorders), and periodic loss bursts in which every packet of both directions is
//! dropped. The decisions come from a [`Schedule`] per [`Direction`], driven by ChaCha8 keyed by
//! the seed on a stream chosen by the direction; delayed packets wait in a [`DelayQueue`].
//!
//! # Reproducibility
//!
//! The same seed and the same packet sequence give the same decisions: the n-th packet of a
//! direction gets the same loss and jitter draws in every run (the draws do not depend on time or
//! on the other direction), and whether it falls in a burst depends only on its arrival time
//! since the relay started. No OS randomness is used. The kernel's own scheduling can change the
//! sequence (which packet arrives n-th, kernel socket drops under overload, the exact arrival
//! times around burst edges and the resulting interleavings), so compare statistics and drop
//! patterns of a paced sender, not timings.
//!
//! The library is pure (no I/O) and unit-tested; the binary `jumping-impair` is the relay.
#![forbid(unsafe_code)]

mod config;
mod nft;
mod queue;
mod schedule;
mod stats;

pub use config::{ConfigError, Impairment, MAX_DELAY_MS};
pub use nft::{redirect_delete_ruleset, redirect_ruleset, TABLE};
pub use queue::{DelayQueue, Released};
pub use schedule::{Direction, DropReason, Schedule, Verdict};
pub use stats::{DirectionStats, Stats};
