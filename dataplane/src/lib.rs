//! The Jumping data plane.
//!
//! Each worker core owns the sessions whose SessionId names it (sticky SessionId → core,
//! SPEC.md section 7) and is the only one to touch their per-packet state, so the hot path
//! needs no lock and no atomic read-modify-write: a worker's [`table::SessionTable`] is a
//! plain single-owner structure. The control process changes sessions by sending
//! [`commands::Command`]s over a wait-free single-producer single-consumer ring per worker;
//! the worker applies them between packet batches, so updates never pause it.
//!
//! This crate holds, so far, the session table, the command path and the worker's packet
//! processing without I/O ([`worker::Worker`]); the AF_XDP and io_uring loops that feed it are
//! the next pieces (see docs/ARCHITECTURE.md).
#![forbid(unsafe_code)]

pub mod commands;
pub mod table;
pub mod worker;
