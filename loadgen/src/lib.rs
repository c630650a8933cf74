//! The load generator of Jumping's load tests and benchmarks (`jumping-loadgen`).
//!
//! - [`clients`]: thousands of real protocol clients in one process, from a client namespace;
//! - [`flood`]: invalid reattaches and handshakes at a chosen rate, from an attacker namespace;
//! - [`echo`]: the echo server behind the gateway that answers the clients' probes;
//! - [`keys`]: the identities of a run (the load generator's secrets and the gateway's
//!   `clients_file`);
//! - [`inner`]: the probe packets carried through the tunnel;
//! - [`stats`]: summaries and CPU use.
//!
//! The scenario runner (`jumping-benches`, `cargo xtask bench scenarios`) starts these as
//! processes next to the real gateway and reads their JSON reports.
#![forbid(unsafe_code)]

pub mod clients;
pub mod echo;
pub mod flood;
pub mod inner;
pub mod keys;
pub mod stats;
