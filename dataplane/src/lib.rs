//! The Jumping data plane.
//!
//! Each worker core owns the sessions whose SessionId names it (sticky SessionId → core,
//! SPEC.md section 7) and is the only one to touch their per-packet state, so the hot path
//! needs no lock and no atomic read-modify-write: a worker's [`table::SessionTable`] is a
//! plain single-owner structure. The control process changes sessions by sending
//! [`commands::Command`]s over a wait-free single-producer single-consumer ring per worker;
//! the worker applies them between packet batches, so updates never pause it.
//!
//! This crate holds, so far, the session table, the command path, the worker's packet
//! processing without I/O ([`worker::Worker`]) and the io_uring UDP loop that feeds a worker
//! ([`uring::UringUdp`]), and the first slice of the AF_XDP path ([`xsk::XskRx`]: receive,
//! heartbeat echoes and `send_inner`, IPv4 only), and the inside interface as a TUN device
//! ([`tun::Tun`]). Only those three modules
//! are allowed `unsafe` (see docs/ARCHITECTURE.md).
#![deny(unsafe_code)]

pub mod commands;
pub mod config;
pub mod control;
pub mod runtime;
#[allow(unsafe_code)]
pub mod sys;
pub mod table;
#[allow(unsafe_code)]
pub mod tun;
#[allow(unsafe_code)]
pub mod uring;
pub mod worker;
#[allow(unsafe_code)]
pub mod xsk;
