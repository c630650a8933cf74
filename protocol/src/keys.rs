//! Per-session key epochs: previous, current and next, and their lifetimes.
//!
//! Each handshake (the first, and every rekey) yields one epoch: a packet key and a control key
//! per direction, all derived from the Noise split and the handshake transcript
//! (docs/PROTOCOL.md, "Key schedule"). Rotation never loses a packet:
//!
//! - the **gateway** installs a rekey's keys as *next*; it keeps sending under *current* and
//!   promotes *next* when the first packet sealed under it authenticates;
//! - the **client** switches to the new epoch for sending as soon as the response arrives;
//! - on promotion the old *current* becomes *previous* and still opens packets for
//!   `key_grace`, so packets in flight across the switch are delivered.
//!
//! Packet counters are per session and direction and continue across epochs, so a counter is
//! never reused under any key and one replay window serves all epochs.

use core::time::Duration;

use crate::crypto::{kdf, AeadKey, CipherSuite, SecretKey};
use crate::handshake::HandshakeKeys;
use crate::replay::ReplayWindow;
use crate::time::Instant;
use crate::wire::{put_transport_header, MessageType, SessionId, DATA_HEADER_LEN, TAG_LEN};

/// Which end of the session holds the keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// The client (handshake initiator).
    Client,
    /// The gateway (handshake responder).
    Gateway,
}

/// The keys of one epoch, oriented for one side.
#[derive(Debug)]
pub struct EpochKeys {
    /// Full epoch number (the wire carries its low 16 bits).
    pub epoch: u32,
    /// Seals packets we send.
    pub send: AeadKey,
    /// Opens packets we receive.
    pub recv: AeadKey,
    /// MACs control messages we send.
    pub ctrl_send: SecretKey,
    /// Verifies control messages we receive.
    pub ctrl_recv: SecretKey,
    /// When the epoch was created.
    pub created: Instant,
    /// Packets sealed under this epoch.
    pub sent: u64,
    /// The raw packet keys, kept (zeroed on drop) so the epoch can be handed to a data-plane
    /// worker ([`EpochKeys::duplicate`]).
    send_secret: SecretKey,
    recv_secret: SecretKey,
    suite: CipherSuite,
}

impl EpochKeys {
    /// Derive an epoch from a handshake's keys.
    #[must_use]
    pub fn derive(hk: &HandshakeKeys, epoch: u32, role: Role, now: Instant) -> Self {
        let suite: CipherSuite = hk.suite;
        let c2g_data = kdf(hk.c2g.expose(), b"jumping data", &[]);
        let g2c_data = kdf(hk.g2c.expose(), b"jumping data", &[]);
        let c2g_ctrl = kdf(hk.c2g.expose(), b"jumping control", &[]);
        let g2c_ctrl = kdf(hk.g2c.expose(), b"jumping control", &[]);
        let (send, recv, ctrl_send, ctrl_recv) = match role {
            Role::Client => (c2g_data, g2c_data, c2g_ctrl, g2c_ctrl),
            Role::Gateway => (g2c_data, c2g_data, g2c_ctrl, c2g_ctrl),
        };
        EpochKeys {
            epoch,
            send: AeadKey::new(suite, &send),
            recv: AeadKey::new(suite, &recv),
            ctrl_send,
            ctrl_recv,
            created: now,
            sent: 0,
            send_secret: send,
            recv_secret: recv,
            suite,
        }
    }

    /// An independent copy of this epoch (keys re-expanded from the raw secrets), for handing
    /// a session to a data-plane worker.
    #[must_use]
    pub fn duplicate(&self) -> Self {
        EpochKeys {
            epoch: self.epoch,
            send: AeadKey::new(self.suite, &self.send_secret),
            recv: AeadKey::new(self.suite, &self.recv_secret),
            ctrl_send: self.ctrl_send.clone(),
            ctrl_recv: self.ctrl_recv.clone(),
            created: self.created,
            sent: self.sent,
            send_secret: self.send_secret.clone(),
            recv_secret: self.recv_secret.clone(),
            suite: self.suite,
        }
    }

    /// Seal a transport message in place: `buf` is header space, plaintext, tag space. The
    /// caller supplies the session's next send counter, never reused.
    pub fn seal_transport(
        &mut self,
        sid: SessionId,
        counter: u64,
        ty: MessageType,
        buf: &mut [u8],
    ) {
        self.sent += 1;
        seal_transport_with(&self.send, self.wire_epoch(), sid, counter, ty, buf);
    }

    /// The raw packet secrets (send, receive) and the cipher suite, for holders that keep
    /// keys compact and expand them on demand (the data-plane workers).
    #[must_use]
    pub fn packet_secrets(&self) -> (&SecretKey, &SecretKey, CipherSuite) {
        (&self.send_secret, &self.recv_secret, self.suite)
    }

    /// The wire form of the epoch.
    #[must_use]
    pub fn wire_epoch(&self) -> u16 {
        (self.epoch & 0xFFFF) as u16
    }
}

/// One epoch's secrets and bookkeeping in transferable form, for moving a session to another
/// process (control process → data plane). Times are relative to the moment of export, so the
/// two processes need no common clock. Zeroed on drop; never printed.
#[derive(Clone, zeroize::Zeroize, zeroize::ZeroizeOnDrop)]
pub struct EpochMaterial {
    /// Full epoch number.
    pub epoch: u32,
    /// Cipher suite wire code ([`CipherSuite::code`]).
    pub suite: u8,
    /// Raw packet key for sending.
    pub send: [u8; 32],
    /// Raw packet key for receiving.
    pub recv: [u8; 32],
    /// Control-message MAC key for sending.
    pub ctrl_send: [u8; 32],
    /// Control-message MAC key for receiving.
    pub ctrl_recv: [u8; 32],
    /// Age of the epoch at export, in nanoseconds.
    pub age_ns: u64,
    /// Packets sealed under the epoch so far.
    pub sent: u64,
}

impl core::fmt::Debug for EpochMaterial {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("EpochMaterial")
            .field("epoch", &self.epoch)
            .field("suite", &self.suite)
            .finish_non_exhaustive()
    }
}

/// The suite code of an [`EpochMaterial`] is not a known cipher suite.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("unknown cipher suite code {0}")]
pub struct UnknownSuite(pub u8);

impl EpochKeys {
    /// This epoch in transferable form, ages counted back from `now`.
    #[must_use]
    pub fn export(&self, now: Instant) -> EpochMaterial {
        EpochMaterial {
            epoch: self.epoch,
            suite: self.suite.code(),
            send: *self.send_secret.expose(),
            recv: *self.recv_secret.expose(),
            ctrl_send: *self.ctrl_send.expose(),
            ctrl_recv: *self.ctrl_recv.expose(),
            age_ns: u64::try_from(now.saturating_duration_since(self.created).as_nanos())
                .unwrap_or(u64::MAX),
            sent: self.sent,
        }
    }

    /// Rebuild an epoch exported by [`EpochKeys::export`], its creation placed `age_ns` before
    /// `now` on this process's clock.
    ///
    /// # Errors
    /// [`UnknownSuite`] if the suite code is unknown.
    pub fn import(m: &EpochMaterial, now: Instant) -> Result<Self, UnknownSuite> {
        let suite = CipherSuite::from_code(m.suite).ok_or(UnknownSuite(m.suite))?;
        let send = SecretKey::from_bytes(m.send);
        let recv = SecretKey::from_bytes(m.recv);
        Ok(EpochKeys {
            epoch: m.epoch,
            send: AeadKey::new(suite, &send),
            recv: AeadKey::new(suite, &recv),
            ctrl_send: SecretKey::from_bytes(m.ctrl_send),
            ctrl_recv: SecretKey::from_bytes(m.ctrl_recv),
            created: Instant::from_nanos(now.as_nanos().saturating_sub(m.age_ns)),
            sent: m.sent,
            send_secret: send,
            recv_secret: recv,
            suite,
        })
    }
}

/// Every epoch of a [`KeySet`] in transferable form.
#[derive(Debug, Clone)]
pub struct KeySetMaterial {
    /// The previous epoch and the nanoseconds of grace it had left at export.
    pub previous: Option<(EpochMaterial, u64)>,
    /// The current epoch.
    pub current: EpochMaterial,
    /// The next epoch, waiting for promotion.
    pub next: Option<EpochMaterial>,
}

/// The epochs of a session.
#[derive(Debug)]
pub struct KeySet {
    previous: Option<(EpochKeys, Instant)>,
    current: EpochKeys,
    next: Option<EpochKeys>,
}

/// Which slot a received epoch matched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Slot {
    /// The previous epoch, in its grace period.
    Previous,
    /// The current epoch.
    Current,
    /// The next epoch (gateway, before promotion).
    Next,
}

impl KeySet {
    /// A set holding only `current`.
    #[must_use]
    pub fn new(current: EpochKeys) -> Self {
        KeySet {
            previous: None,
            current,
            next: None,
        }
    }

    /// An independent copy of every epoch held, with the previous epoch's grace deadline.
    #[must_use]
    pub fn duplicate(&self) -> Self {
        KeySet {
            previous: self
                .previous
                .as_ref()
                .map(|(k, until)| (k.duplicate(), *until)),
            current: self.current.duplicate(),
            next: self.next.as_ref().map(EpochKeys::duplicate),
        }
    }

    /// Every epoch in transferable form, times relative to `now`.
    #[must_use]
    pub fn export(&self, now: Instant) -> KeySetMaterial {
        KeySetMaterial {
            previous: self.previous.as_ref().map(|(k, until)| {
                let left = until.saturating_duration_since(now).as_nanos();
                (k.export(now), u64::try_from(left).unwrap_or(u64::MAX))
            }),
            current: self.current.export(now),
            next: self.next.as_ref().map(|k| k.export(now)),
        }
    }

    /// Rebuild a set exported by [`KeySet::export`] on this process's clock.
    ///
    /// # Errors
    /// [`UnknownSuite`] if an epoch names an unknown suite.
    pub fn import(m: &KeySetMaterial, now: Instant) -> Result<Self, UnknownSuite> {
        let previous = match &m.previous {
            Some((k, left)) => Some((
                EpochKeys::import(k, now)?,
                Instant::from_nanos(now.as_nanos().saturating_add(*left)),
            )),
            None => None,
        };
        Ok(KeySet {
            previous,
            current: EpochKeys::import(&m.current, now)?,
            next: m
                .next
                .as_ref()
                .map(|k| EpochKeys::import(k, now))
                .transpose()?,
        })
    }

    /// The current epoch (used for sending).
    #[must_use]
    pub fn current(&self) -> &EpochKeys {
        &self.current
    }

    /// The current epoch, mutable (to count packets sent).
    pub fn current_mut(&mut self) -> &mut EpochKeys {
        &mut self.current
    }

    /// The previous epoch and the end of its grace, if one is held.
    #[must_use]
    pub fn previous(&self) -> Option<(&EpochKeys, Instant)> {
        self.previous.as_ref().map(|(k, until)| (k, *until))
    }

    /// The next epoch, if a rekey is waiting for promotion.
    #[must_use]
    pub fn next(&self) -> Option<&EpochKeys> {
        self.next.as_ref()
    }

    /// The keys that may open a packet carrying `wire_epoch` at `now`.
    #[must_use]
    pub fn for_receive(&self, now: Instant, wire_epoch: u16) -> Option<(Slot, &EpochKeys)> {
        if self.current.wire_epoch() == wire_epoch {
            return Some((Slot::Current, &self.current));
        }
        if let Some(n) = self.next.as_ref().filter(|n| n.wire_epoch() == wire_epoch) {
            return Some((Slot::Next, n));
        }
        match &self.previous {
            Some((p, until)) if p.wire_epoch() == wire_epoch && now < *until => {
                Some((Slot::Previous, p))
            }
            _ => None,
        }
    }

    /// Gateway: hold a rekey's keys until the client uses them.
    pub fn install_next(&mut self, next: EpochKeys) {
        self.next = Some(next);
    }

    /// Gateway: the first packet under *next* authenticated; make it current. Returns the new
    /// current epoch.
    pub fn promote_next(&mut self, now: Instant, grace: Duration) -> Option<u32> {
        let next = self.next.take()?;
        let old = core::mem::replace(&mut self.current, next);
        self.previous = Some((old, now + grace));
        Some(self.current.epoch)
    }

    /// Client: a rekey completed; send under `new` from now on, keep opening the old epoch for
    /// `grace`.
    pub fn rotate_to(&mut self, new: EpochKeys, now: Instant, grace: Duration) {
        let old = core::mem::replace(&mut self.current, new);
        self.previous = Some((old, now + grace));
        self.next = None;
    }

    /// Drop the previous epoch once its grace is over (its keys are zeroed on drop).
    pub fn expire_previous(&mut self, now: Instant) {
        if matches!(&self.previous, Some((_, until)) if now >= *until) {
            self.previous = None;
        }
    }

    /// When the previous epoch's grace ends, if one is held.
    #[must_use]
    pub fn previous_deadline(&self) -> Option<Instant> {
        self.previous.as_ref().map(|(_, until)| *until)
    }
}

/// Seal a transport message in place with `key` (see [`EpochKeys::seal_transport`]): header
/// written, payload encrypted, tag appended; `buf` is header space, plaintext, tag space.
pub fn seal_transport_with(
    key: &AeadKey,
    wire_epoch: u16,
    sid: SessionId,
    counter: u64,
    ty: MessageType,
    buf: &mut [u8],
) {
    put_transport_header(buf, ty, wire_epoch, sid, counter);
    let tag_at = buf.len() - TAG_LEN;
    let (header, rest) = buf.split_at_mut(DATA_HEADER_LEN);
    let tag = key.seal_in_place(counter, header, &mut rest[..tag_at - DATA_HEADER_LEN]);
    buf[tag_at..].copy_from_slice(&tag);
}

/// Open a transport message in place with `key` (the receive key of the epoch it names):
/// replay check, AEAD open, and only then the replay-window update — the same order as
/// [`open_transport`], for holders that look the key up themselves.
///
/// # Errors
/// [`OpenFailure::Replay`] or [`OpenFailure::AuthFailed`]; the window changes only on success.
pub fn open_transport_with<'b>(
    key: &AeadKey,
    window: &mut ReplayWindow,
    counter: u64,
    buf: &'b mut [u8],
) -> Result<&'b mut [u8], OpenFailure> {
    window.check(counter).map_err(|_| OpenFailure::Replay)?;
    let (header, body) = buf.split_at_mut(DATA_HEADER_LEN);
    let plain = key
        .open_in_place(counter, header, body)
        .map_err(|_| OpenFailure::AuthFailed)?;
    window.accept(counter).map_err(|_| OpenFailure::Replay)?;
    Ok(plain)
}

/// Why a transport message did not open. Each is dropped and counted; none changes the session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpenFailure {
    /// No key for the epoch (unknown, or previous past its grace).
    UnknownEpoch,
    /// Counter already seen or older than the window.
    Replay,
    /// The AEAD tag does not verify.
    AuthFailed,
}

/// Open a transport message (`buf` = 20-byte header, ciphertext, tag) received with `epoch` and
/// `counter`: key lookup, replay check, AEAD open in place, and only then the replay-window
/// update. Returns the key slot used and the plaintext, borrowed from `buf`.
///
/// # Errors
/// [`OpenFailure`]; the window is updated only on success.
pub fn open_transport<'b>(
    keys: &KeySet,
    window: &mut ReplayWindow,
    now: Instant,
    epoch: u16,
    counter: u64,
    buf: &'b mut [u8],
) -> Result<(Slot, &'b mut [u8]), OpenFailure> {
    let (slot, k) = keys
        .for_receive(now, epoch)
        .ok_or(OpenFailure::UnknownEpoch)?;
    let plain = open_transport_with(&k.recv, window, counter, buf)?;
    Ok((slot, plain))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hk(seed: u8) -> HandshakeKeys {
        HandshakeKeys {
            c2g: SecretKey::from_bytes([seed; 32]),
            g2c: SecretKey::from_bytes([seed.wrapping_add(1); 32]),
            transcript: [0; 32],
            suite: CipherSuite::Aes256Gcm,
        }
    }

    #[test]
    fn export_import_keeps_keys_and_grace() {
        let t0 = Instant::from_millis(1_000);
        let mut set = KeySet::new(EpochKeys::derive(&hk(3), 0, Role::Gateway, t0));
        set.install_next(EpochKeys::derive(&hk(4), 1, Role::Gateway, t0));
        set.promote_next(t0, Duration::from_secs(10));
        let exported = set.export(t0 + Duration::from_secs(4));
        assert!(
            !format!("{exported:?}").contains("send:"),
            "no key bytes in Debug"
        );
        // Another process, another clock origin.
        let there = Instant::from_millis(50);
        let imported = KeySet::import(&exported, there).expect("known suite");
        assert_eq!(imported.current().epoch, 1);
        assert_eq!(
            imported.previous_deadline(),
            Some(there + Duration::from_secs(6))
        );
        assert!(imported.for_receive(there, 0).is_some());
        assert!(imported
            .for_receive(there + Duration::from_secs(6), 0)
            .is_none());
        let mut buf = [0u8; DATA_HEADER_LEN + 5 + TAG_LEN];
        buf[DATA_HEADER_LEN..DATA_HEADER_LEN + 5].copy_from_slice(b"hello");
        let mut client = EpochKeys::derive(&hk(4), 1, Role::Client, t0);
        client.seal_transport(SessionId(9), 7, MessageType::Data, &mut buf);
        let mut w = ReplayWindow::new();
        let (slot, plain) =
            open_transport(&imported, &mut w, there, 1, 7, &mut buf).expect("opens");
        assert_eq!((slot, &plain[..]), (Slot::Current, &b"hello"[..]));
        let mut bad = exported.current.clone();
        bad.suite = 9;
        assert_eq!(EpochKeys::import(&bad, there).err(), Some(UnknownSuite(9)));
    }

    #[test]
    fn sides_are_mirrored() {
        let c = EpochKeys::derive(&hk(1), 0, Role::Client, Instant::ZERO);
        let g = EpochKeys::derive(&hk(1), 0, Role::Gateway, Instant::ZERO);
        assert_eq!(c.ctrl_send.expose(), g.ctrl_recv.expose());
        assert_eq!(c.ctrl_recv.expose(), g.ctrl_send.expose());
        assert_ne!(c.ctrl_send.expose(), c.ctrl_recv.expose());
        let mut buf = *b"0123456789abcdef0123456789abcdef";
        let (pt, tag) = buf.split_at_mut(16);
        tag.copy_from_slice(&c.send.seal_in_place(1, b"h", pt));
        assert!(g.recv.open_in_place(1, b"h", &mut buf).is_ok());
    }

    #[test]
    fn gateway_rotation_keeps_previous_for_grace() {
        let t0 = Instant::ZERO;
        let mut ks = KeySet::new(EpochKeys::derive(&hk(1), 0, Role::Gateway, t0));
        ks.install_next(EpochKeys::derive(&hk(2), 1, Role::Gateway, t0));
        assert_eq!(ks.for_receive(t0, 1).map(|x| x.0), Some(Slot::Next));
        assert_eq!(ks.current().epoch, 0);
        let t1 = Instant::from_millis(1000);
        assert_eq!(ks.promote_next(t1, Duration::from_secs(10)), Some(1));
        assert_eq!(ks.for_receive(t1, 0).map(|x| x.0), Some(Slot::Previous));
        assert_eq!(
            ks.for_receive(Instant::from_millis(11_000), 0).map(|x| x.0),
            None
        );
        ks.expire_previous(Instant::from_millis(11_000));
        assert!(ks.previous_deadline().is_none());
        assert!(ks.for_receive(t1, 7).is_none());
    }
}
