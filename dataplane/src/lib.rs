//! The Jumping data plane.
//!
//! Each worker core owns the sessions whose SessionId names it (sticky SessionId → core,
//! SPEC.md section 7) and is the only one to touch their per-packet state, so the hot path
//! needs no lock and no atomic read-modify-write: a worker's [`table::SessionTable`] is a
//! plain single-owner structure. The control process changes sessions by sending
//! [`commands::Command`]s over a wait-free single-producer single-consumer ring per worker;
//! the worker applies them between packet batches, so updates never pause it.
//!
//! The process (`jumping-dataplane`, `src/main.rs`) reads its [`config::Config`], chooses
//! the backend (AF_XDP with the XDP program from `jumping-ebpf`, else io_uring), and runs one
//! [`runtime::WorkerLoop`] per configured CPU, pinned, plus the [`control::ControlServer`]
//! thread that speaks the `jumping-dataplane-api` interface with the control process. A
//! packet's way: [`xsk::XskRx`] or [`uring::UringUdp`] → [`runtime`] (owner check, handoff) →
//! [`worker::Worker::handle_rx`] (lookup in the [`table::SessionTable`], replay check, open in
//! place) → the inside interface ([`runtime::Inside`]: [`tun::TunRing`], the TUN queue through
//! io_uring, or an [`xsk::XskRx`] on the inside NIC, whose own XDP program steers packets to
//! client addresses into it); and back: the inside interface → route →
//! [`worker::Worker::encapsulate`] → the socket. Only the modules that talk to the kernel
//! (`tun`, `uring`, `xsk`, `sys`) are allowed `unsafe` (see docs/ARCHITECTURE.md).
#![deny(unsafe_code)]

pub mod commands;
pub mod config;
pub mod control;
pub mod keys;
pub mod metrics;
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
