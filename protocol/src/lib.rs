//! The Jumping protocol, sans I/O.
//!
//! This crate is the whole protocol of the Jumping VPN — wire format, handshake, data-packet
//! crypto, anti-replay, the session state machine, reattach validation, key rotation and
//! policy — and nothing else. It owns **no socket, no clock and no random generator**: callers
//! pass bytes, the current monotonic time ([`Instant`]) and an injected RNG, and receive actions
//! (datagrams to send, packets to deliver, events to record). The data plane, the control
//! process and the client are thin shells around the types here; the deterministic simulation in
//! `tests/simulation.rs` drives the same types with simulated time, loss and address changes.
//!
//! The behavioural contract is `SPEC.md`; the byte layouts and the cryptographic design, written
//! for review, are in `docs/PROTOCOL.md`.
//!
//! Map of the crate:
//! - [`wire`]: typed views of every message, checked constructors, typed parse errors.
//! - [`crypto`]: AEAD with counter nonces, keyed BLAKE2s KDF/MAC, constant-time comparison,
//!   the RNG health check.
//! - [`replay`]: the RFC 6479 sliding anti-replay window.
//! - [`handshake`] and [`cookie`]: Noise IK mutual authentication and WireGuard-style cookies.
//! - [`keys`]: per-session key epochs (previous / current / next) and their lifetimes.
//! - [`state`]: the session state machine of SPEC.md sections 2–3, as a pure function.
//! - [`policy`]: typed, validated policy with the SPEC.md section 5 defaults.
//! - [`gateway`] and [`client`]: the two protocol endpoints, with the uniform
//!   `handle_*` / `poll_*` driving API.
#![forbid(unsafe_code)]

pub mod client;
pub mod cookie;
pub mod crypto;
pub mod event;
pub mod fuzzing;
pub mod gateway;
pub mod handshake;
pub mod keyfmt;
pub mod keys;
pub mod path;
pub mod persist;
pub mod policy;
pub mod reattach;
pub mod replay;
pub mod session;
pub mod state;
mod table;
pub mod testing;
pub mod time;
pub mod wire;

pub use event::{Event, RejectCode, SecurityKind};
pub use path::{Path, Transport};
pub use policy::Policy;
pub use state::{Reason, State};
pub use time::Instant;
pub use wire::SessionId;
