//! A worker's packet processing, without I/O: what happens to a tunnel datagram between the
//! receive ring and the inside interface, and to an inner packet on the way back.
//!
//! Receive: parse the fixed header → session lookup (this worker's table only: sticky owner)
//! → replay check → AEAD open in place → replay-window update → deliver the inner packet
//! (borrowed from the receive buffer) or, for a heartbeat, seal the echo in place and send it
//! back. Transmit: lookup → seal in place under the current epoch with the worker's send
//! counter → to the active path. No allocation, lock or system call per packet; the AF_XDP and
//! io_uring loops (next) only move buffers in and out.
//!
//! Control messages (handshake, reattach, terminate) never reach a worker: the XDP program
//! passes them to the kernel stack for the control process.

use jumping_protocol::keys::{open_transport_with, seal_transport_with, OpenFailure, Slot};
use jumping_protocol::replay::ReplayWindow;
use jumping_protocol::session::DataPlaneHandoff;
use jumping_protocol::wire::{
    self, MessageType, TransportMsg, DATA_HEADER_LEN, HEARTBEAT_PLAINTEXT_LEN, TAG_LEN,
};
use jumping_protocol::{Instant, Path, SessionId};

use std::net::IpAddr;

use jumping_dataplane_api::Install;
use jumping_protocol::keys::UnknownSuite;

use crate::commands::{Applied, CommandReceiver, Update};
use crate::keys::{KeyCache, RawEpoch, SessionKeys};
use crate::table::SessionTable;

/// A session as a worker holds it: only this worker reads or writes it. Compact (raw key
/// secrets, see [`crate::keys`]): about 450 bytes, replay window included.
#[derive(Debug)]
pub struct DataSession {
    keys: SessionKeys,
    send_counter: u64,
    recv_window: ReplayWindow,
    active: Option<Path>,
    /// The client's virtual address on the inside, when installed by the control process.
    inner: Option<IpAddr>,
    /// Packets delivered inward.
    pub rx_packets: u64,
    /// Inner bytes delivered inward.
    pub rx_bytes: u64,
    /// Packets sealed outward.
    pub tx_packets: u64,
    /// Inner bytes sealed outward.
    pub tx_bytes: u64,
    /// When the last authenticated packet arrived from the active path, in milliseconds of
    /// this process's clock modulo 2^32 (the control process runs the path-dead timer on it).
    last_rx_ms: u32,
    /// The control process asked for a rekey: heartbeat echoes carry the request until the
    /// next epoch is installed.
    rekey_requested: bool,
}

impl From<DataPlaneHandoff> for DataSession {
    fn from(h: DataPlaneHandoff) -> Self {
        DataSession {
            keys: SessionKeys::of(&h.keys),
            send_counter: h.send_counter,
            recv_window: h.recv_window,
            active: h.active,
            inner: None,
            rx_packets: 0,
            rx_bytes: 0,
            tx_packets: 0,
            tx_bytes: 0,
            last_rx_ms: 0,
            rekey_requested: false,
        }
    }
}

impl DataSession {
    /// A session as the control process installs it over the data-plane interface, its key
    /// times placed on this process's clock at `now`.
    ///
    /// # Errors
    /// [`UnknownSuite`] if the key material names an unknown cipher suite.
    pub fn from_install(i: &Install, now: Instant) -> Result<Self, UnknownSuite> {
        Ok(DataSession {
            keys: SessionKeys::from_material(&i.keys, now)?,
            send_counter: i.send_counter,
            recv_window: ReplayWindow::from_parts(i.window_top, i.window),
            active: i.active,
            inner: Some(i.inner),
            rx_packets: 0,
            rx_bytes: 0,
            tx_packets: 0,
            tx_bytes: 0,
            // Installed right after a handshake or a resynchronisation: count from now.
            last_rx_ms: millis32(now),
            rekey_requested: false,
        })
    }

    /// The active path.
    #[must_use]
    pub fn active(&self) -> Option<Path> {
        self.active
    }

    /// Milliseconds since the last authenticated packet from the active path (at most
    /// `u32::MAX`, about 49 days: a clock wrap can only make an idle session look idler).
    #[must_use]
    pub fn idle_ms(&self, now: Instant) -> u32 {
        millis32(now).wrapping_sub(self.last_rx_ms)
    }

    /// The client's virtual address, if installed with one.
    #[must_use]
    pub fn inner(&self) -> Option<IpAddr> {
        self.inner
    }

    /// The current key epoch.
    #[must_use]
    pub fn epoch(&self) -> u32 {
        self.keys.current().epoch()
    }

    /// The next send counter.
    #[must_use]
    pub fn send_counter(&self) -> u64 {
        self.send_counter
    }
}

/// What the control process may change in a session a worker holds.
#[derive(Debug)]
pub enum SessionUpdate {
    /// A reattach was accepted (or the path died): the new active path, if any.
    ActivePath(Option<Path>),
    /// A rekey completed at the control process: the worker opens packets under the new epoch
    /// and promotes it, as the protocol does, on the first one that authenticates.
    NextKeys(Box<RawEpoch>),
    /// Ask the client to rekey ([`wire::HEARTBEAT_FLAG_REKEY`] in heartbeat echoes) until
    /// the next epoch arrives.
    RequestRekey,
}

impl Update<DataSession> for SessionUpdate {
    fn apply(self, s: &mut DataSession) {
        match self {
            SessionUpdate::ActivePath(p) => s.active = p,
            SessionUpdate::NextKeys(k) => {
                s.keys.install_next(*k);
                s.rekey_requested = false;
            }
            SessionUpdate::RequestRekey => s.rekey_requested = true,
        }
    }
}

/// Why a worker dropped a packet; [`WorkerDrop::index`] is the counter slot. The same type
/// names drops on the control interface.
pub use jumping_dataplane_api::DropReason as WorkerDrop;

/// What became of a received datagram.
#[derive(Debug)]
pub enum Rx<'b> {
    /// An inner packet to deliver on the inside interface, decrypted in place.
    Deliver {
        /// Session.
        id: SessionId,
        /// The inner packet, borrowed from the receive buffer.
        packet: &'b mut [u8],
        /// Set when the packet came from an address that is not the active path: the control
        /// process must start path validation at once (NAT rebind, SPEC.md section 4).
        new_path: Option<Path>,
    },
    /// A heartbeat was answered: send `len` bytes of the buffer back to `dst`.
    Reply {
        /// Destination (the active path).
        dst: Path,
        /// Length of the sealed echo at the start of the buffer.
        len: usize,
        /// As for [`Rx::Deliver`].
        new_path: Option<Path>,
    },
    /// An authenticated heartbeat with nothing to send back (no probe, or no active path).
    Consumed {
        /// As for [`Rx::Deliver`].
        new_path: Option<Path>,
    },
    /// Dropped and counted.
    Dropped(WorkerDrop),
}

/// Per-worker counters, readable by the control process through snapshots.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WorkerCounters {
    /// Datagrams received.
    pub rx_datagrams: u64,
    /// Inner packets delivered.
    pub delivered: u64,
    /// Inner packets sealed.
    pub sealed: u64,
    /// Drops by [`WorkerDrop::index`].
    pub drops: [u64; WorkerDrop::COUNT],
    /// Key epochs promoted after the first packet under them.
    pub epochs_promoted: u64,
}

/// Expanded-key cache entries per worker unless configured otherwise (about 1.1 KiB each):
/// 8192 sessions sending at once per worker stay expanded, for 9.3 MB per worker.
pub const DEFAULT_KEY_CACHE: usize = 8192;

/// One worker: its sessions, its command ring, its counters.
#[derive(Debug)]
pub struct Worker {
    core: u8,
    table: SessionTable<DataSession>,
    commands: CommandReceiver<DataSession, SessionUpdate>,
    counters: WorkerCounters,
    key_grace: core::time::Duration,
    cache: KeyCache,
}

impl Worker {
    /// A worker for `core` with room for `capacity` sessions, fed by `commands`. `key_grace` is
    /// the policy's grace for the previous key epoch after a promotion.
    #[must_use]
    pub fn new(
        core: u8,
        capacity: usize,
        commands: CommandReceiver<DataSession, SessionUpdate>,
        key_grace: core::time::Duration,
    ) -> Self {
        Worker {
            core,
            table: SessionTable::with_capacity(capacity),
            commands,
            counters: WorkerCounters::default(),
            key_grace,
            cache: KeyCache::with_entries(capacity.clamp(64, DEFAULT_KEY_CACHE)),
        }
    }

    /// Replace the expanded-key cache with one of `entries` entries.
    pub fn set_key_cache(&mut self, entries: usize) {
        self.cache = KeyCache::with_entries(entries);
    }

    /// The expanded-key cache (hits, misses, size).
    #[must_use]
    pub fn key_cache(&self) -> &KeyCache {
        &self.cache
    }

    /// The core this worker runs on.
    #[must_use]
    pub fn core(&self) -> u8 {
        self.core
    }

    /// Counters.
    #[must_use]
    pub fn counters(&self) -> &WorkerCounters {
        &self.counters
    }

    /// A session, for inspection.
    #[must_use]
    pub fn session(&self, id: SessionId) -> Option<&DataSession> {
        self.table.get(id)
    }

    /// Apply queued control commands; call between batches.
    pub fn apply_commands(&mut self, max: usize) -> Applied {
        self.commands.apply(&mut self.table, max)
    }

    /// Take a session out of this worker's table, whole (counters, window, keys): it is
    /// moving to another worker, which [`Worker::adopt`]s it. Nothing is sealed or opened for
    /// it here afterwards, so its send counter continues there without a repeat.
    pub fn take(&mut self, id: SessionId) -> Option<DataSession> {
        self.table.remove(id)
    }

    /// Adopt a session taken from another worker of this process.
    ///
    /// # Errors
    /// The session back if the table is full or holds it already.
    pub fn adopt(&mut self, id: SessionId, s: Box<DataSession>) -> Result<(), Box<DataSession>> {
        if id.0 == 0 || self.table.get(id).is_some() || self.table.len() >= self.table.capacity() {
            return Err(s);
        }
        // Cannot fail: the id is valid and new, and a slot is free (checked above).
        let inserted = self.table.insert(id, *s);
        debug_assert!(matches!(inserted, Ok(None)));
        Ok(())
    }

    /// Every session this worker holds.
    pub fn sessions(&self) -> impl Iterator<Item = (SessionId, &DataSession)> {
        self.table.iter()
    }

    /// Sessions held.
    #[must_use]
    pub fn session_count(&self) -> usize {
        self.table.len()
    }

    /// Count a drop decided outside [`Worker::handle_rx`] / [`Worker::encapsulate`] (no
    /// route, handoff ring full, transmit or inside-interface failure).
    pub fn count_drop(&mut self, d: WorkerDrop) {
        self.counters.drops[d.index()] += 1;
    }

    fn drop_(&mut self, d: WorkerDrop) -> Rx<'static> {
        self.counters.drops[d.index()] += 1;
        Rx::Dropped(d)
    }

    /// Prefetch the sessions of a receive batch (their SessionIds, read from the datagrams
    /// before any is processed): see [`SessionTable::prefetch`].
    pub fn prefetch(&self, ids: &[SessionId]) {
        self.table.prefetch(ids);
    }

    /// Process one received tunnel datagram (the UDP payload) from `from`.
    pub fn handle_rx<'b>(&mut self, now: Instant, from: Path, buf: &'b mut [u8]) -> Rx<'b> {
        self.counters.rx_datagrams += 1;
        let Ok(msg) = TransportMsg::new_checked(buf) else {
            return self.drop_(match wire::peek_type(buf) {
                Ok(t) if !t.is_data_plane() => WorkerDrop::NotDataPlane,
                _ => WorkerDrop::Malformed,
            });
        };
        let ty = msg.message_type();
        if !ty.is_data_plane() {
            return self.drop_(WorkerDrop::NotDataPlane);
        }
        let (id, counter, epoch) = (msg.session_id(), msg.counter(), msg.epoch());
        let Some(slot) = self.table.slot_of(id) else {
            return self.drop_(WorkerDrop::UnknownSession);
        };
        let Some(s) = self.table.get_slot_mut(slot) else {
            return self.drop_(WorkerDrop::UnknownSession);
        };
        let Some((key_slot, raw)) = s.keys.for_receive(now, epoch) else {
            return self.drop_(WorkerDrop::UnknownEpoch);
        };
        let tag = s.keys.tag();
        let k = self.cache.get(tag, raw);
        let len = match open_transport_with(&k.recv, &mut s.recv_window, counter, buf) {
            Ok(plain) => plain.len(),
            Err(OpenFailure::UnknownEpoch) => return self.drop_(WorkerDrop::UnknownEpoch),
            Err(OpenFailure::Replay) => return self.drop_(WorkerDrop::Replay),
            Err(OpenFailure::AuthFailed) => return self.drop_(WorkerDrop::AuthFailed),
        };
        if key_slot == Slot::Next && s.keys.promote_next(now, self.key_grace) {
            self.counters.epochs_promoted += 1;
        }
        let new_path = (s.active != Some(from)).then_some(from);
        if new_path.is_none() {
            s.last_rx_ms = millis32(now);
        }
        if ty == MessageType::Heartbeat {
            // Echo the probe to the active path, sealed in place over the received datagram.
            let mut probe = [0u8; 8];
            probe.copy_from_slice(&buf[DATA_HEADER_LEN..DATA_HEADER_LEN + 8]);
            let Some(dst) = s.active.filter(|_| probe != [0; 8]) else {
                return Rx::Consumed { new_path };
            };
            let total = DATA_HEADER_LEN + HEARTBEAT_PLAINTEXT_LEN + TAG_LEN;
            let body = &mut buf[DATA_HEADER_LEN..DATA_HEADER_LEN + HEARTBEAT_PLAINTEXT_LEN];
            body.fill(0);
            body[8..16].copy_from_slice(&probe);
            if s.rekey_requested {
                body[wire::HEARTBEAT_FLAGS_OFFSET..]
                    .copy_from_slice(&wire::HEARTBEAT_FLAG_REKEY.to_be_bytes());
            }
            let counter = s.send_counter;
            s.send_counter += 1;
            let current = s.keys.current();
            let k = self.cache.get(tag, current);
            seal_transport_with(
                &k.send,
                current.wire_epoch(),
                id,
                counter,
                MessageType::Heartbeat,
                &mut buf[..total],
            );
            return Rx::Reply {
                dst,
                len: total,
                new_path,
            };
        }
        s.rx_packets += 1;
        s.rx_bytes += len as u64;
        self.counters.delivered += 1;
        Rx::Deliver {
            id,
            packet: &mut buf[DATA_HEADER_LEN..DATA_HEADER_LEN + len],
            new_path,
        }
    }

    /// Seal an inner packet for `id` in place: `buf[DATA_HEADER_LEN..][..inner_len]` holds it
    /// and [`TAG_LEN`] bytes must follow. Returns the destination and the datagram length.
    ///
    /// # Errors
    /// [`WorkerDrop`] (counted) if the session is not here, has no active path, or the buffer
    /// is short.
    pub fn encapsulate(
        &mut self,
        id: SessionId,
        buf: &mut [u8],
        inner_len: usize,
    ) -> Result<(Path, usize), WorkerDrop> {
        let total = DATA_HEADER_LEN + inner_len + TAG_LEN;
        if buf.len() < total {
            self.counters.drops[WorkerDrop::TooLarge.index()] += 1;
            return Err(WorkerDrop::TooLarge);
        }
        let Some(s) = self.table.get_mut(id) else {
            self.counters.drops[WorkerDrop::UnknownSession.index()] += 1;
            return Err(WorkerDrop::UnknownSession);
        };
        let Some(dst) = s.active else {
            self.counters.drops[WorkerDrop::NoActivePath.index()] += 1;
            return Err(WorkerDrop::NoActivePath);
        };
        let counter = s.send_counter;
        s.send_counter += 1;
        let current = s.keys.current();
        let k = self.cache.get(s.keys.tag(), current);
        seal_transport_with(
            &k.send,
            current.wire_epoch(),
            id,
            counter,
            MessageType::Data,
            &mut buf[..total],
        );
        s.tx_packets += 1;
        s.tx_bytes += inner_len as u64;
        self.counters.sealed += 1;
        Ok((dst, total))
    }
}

/// `now` in milliseconds modulo 2^32.
fn millis32(now: Instant) -> u32 {
    #[expect(clippy::cast_possible_truncation, reason = "modulo 2^32 by design")]
    let ms = (now.as_nanos() / 1_000_000) as u32;
    ms
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The data plane's memory budget: at most 512 bytes per session at a million sessions on
    /// a worker, replay window, table index and the worker's share of the default
    /// expanded-key cache included.
    #[test]
    fn a_session_fits_the_memory_budget() {
        let n = 1_000_000;
        let cache = KeyCache::with_entries(DEFAULT_KEY_CACHE).memory_bytes();
        let per_session = (SessionTable::<DataSession>::memory_for(n) + cache) / n;
        assert!(
            per_session <= 512,
            "{per_session} B per session (DataSession {} B, cache {cache} B)",
            size_of::<DataSession>()
        );
        let t = SessionTable::<DataSession>::with_capacity(1000);
        assert_eq!(
            t.memory_bytes(),
            SessionTable::<DataSession>::memory_for(1000)
        );
    }
}
