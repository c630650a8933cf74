//! The Jumping control process: the authority over sessions.
//!
//! It runs the gateway protocol object in the control role
//! ([`jumping_protocol::gateway::DataPlaneMode::External`]): handshakes, reattach and path
//! validation, terminate, timers, policy, allow-list and revocation. It programs the data plane
//! over its socket ([`dataplane`]), persists what it needs to restart ([`store`]), and answers
//! `jumpctl` on the operator socket (`jumping-control-api`), and shows what it decides: events
//! ([`events`]) on stdout, to `jumpctl events` and to the SIEM export, and [`metrics`] on a
//! Prometheus endpoint. The event loop is [`daemon`].
#![forbid(unsafe_code)]

pub mod allowlist;
pub mod config;
pub mod daemon;
pub mod dataplane;
pub mod events;
pub mod metrics;
pub mod store;
