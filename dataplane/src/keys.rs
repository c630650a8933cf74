//! Session keys as a worker holds them: compact in the session, expanded on demand.
//!
//! An expanded AEAD key (ring's AES-256-GCM key schedule and GHASH table) is 544 bytes, and a
//! session needs two per epoch; holding them in every session would cost kilobytes per
//! session (4.2 KiB with three epochs), far over the data plane's budget of 512 bytes per
//! session at a million sessions. So a session keeps only each epoch's two raw 32-byte
//! secrets ([`SessionKeys`]: the current epoch inline, the next and previous ones — present
//! only around a rekey — boxed), and the worker keeps a fixed-size, direct-mapped cache of
//! expanded keys ([`KeyCache`]) for the sessions that are sending. A miss costs one key
//! expansion (measured in docs/BENCHMARKS.md); an active session stays cached.
//!
//! Cache entries are keyed by the session's install tag (unique for every install in the
//! process, so a retired and re-installed session never meets its predecessor's keys) and the
//! epoch number. Raw secrets are [`SecretKey`]s: zeroed on drop, never printed.

use core::sync::atomic::{AtomicU64, Ordering};
use core::time::Duration;

use jumping_protocol::crypto::aead::{AeadKey, CipherSuite};
use jumping_protocol::crypto::SecretKey;
use jumping_protocol::keys::{
    EpochKeys, EpochMaterial, KeySet, KeySetMaterial, Slot, UnknownSuite,
};
use jumping_protocol::Instant;

/// One epoch's raw packet secrets.
#[derive(Debug)]
pub struct RawEpoch {
    epoch: u32,
    suite: CipherSuite,
    send: SecretKey,
    recv: SecretKey,
}

impl RawEpoch {
    /// The raw secrets of `k`.
    #[must_use]
    pub fn of(k: &EpochKeys) -> Self {
        let (send, recv, suite) = k.packet_secrets();
        RawEpoch {
            epoch: k.epoch,
            suite,
            send: send.clone(),
            recv: recv.clone(),
        }
    }

    /// The raw secrets of an epoch received over the data-plane interface (no key is
    /// expanded: that happens in the cache, on first use).
    ///
    /// # Errors
    /// [`UnknownSuite`] if the suite code is unknown.
    pub fn from_material(m: &EpochMaterial) -> Result<Self, UnknownSuite> {
        Ok(RawEpoch {
            epoch: m.epoch,
            suite: CipherSuite::from_code(m.suite).ok_or(UnknownSuite(m.suite))?,
            send: SecretKey::from_bytes(m.send),
            recv: SecretKey::from_bytes(m.recv),
        })
    }

    /// Full epoch number.
    #[must_use]
    pub fn epoch(&self) -> u32 {
        self.epoch
    }

    /// Its low 16 bits, as on the wire.
    #[must_use]
    pub fn wire_epoch(&self) -> u16 {
        (self.epoch & 0xFFFF) as u16
    }
}

/// A session's epochs in raw form: previous (with the end of its grace), current, next.
#[derive(Debug)]
pub struct SessionKeys {
    current: RawEpoch,
    next: Option<Box<RawEpoch>>,
    previous: Option<Box<(RawEpoch, Instant)>>,
    /// Unique per install in this process: the cache key (with the epoch).
    tag: u64,
}

static NEXT_TAG: AtomicU64 = AtomicU64::new(1);

impl SessionKeys {
    /// The raw form of every epoch in `set`.
    #[must_use]
    pub fn of(set: &KeySet) -> Self {
        SessionKeys {
            current: RawEpoch::of(set.current()),
            next: set.next().map(|k| Box::new(RawEpoch::of(k))),
            previous: set
                .previous()
                .map(|(k, until)| Box::new((RawEpoch::of(k), until))),
            tag: NEXT_TAG.fetch_add(1, Ordering::Relaxed),
        }
    }

    /// The raw form of every epoch installed over the data-plane interface, the previous
    /// epoch's grace placed on this process's clock at `now`.
    ///
    /// # Errors
    /// [`UnknownSuite`] if an epoch names an unknown suite.
    pub fn from_material(m: &KeySetMaterial, now: Instant) -> Result<Self, UnknownSuite> {
        Ok(SessionKeys {
            current: RawEpoch::from_material(&m.current)?,
            next: m
                .next
                .as_ref()
                .map(|k| RawEpoch::from_material(k).map(Box::new))
                .transpose()?,
            previous: match &m.previous {
                Some((k, left)) => Some(Box::new((
                    RawEpoch::from_material(k)?,
                    Instant::from_nanos(now.as_nanos().saturating_add(*left)),
                ))),
                None => None,
            },
            tag: NEXT_TAG.fetch_add(1, Ordering::Relaxed),
        })
    }

    /// The current epoch (sending).
    #[must_use]
    pub fn current(&self) -> &RawEpoch {
        &self.current
    }

    /// The epoch a packet carrying `wire_epoch` at `now` opens under, and its slot.
    #[must_use]
    pub fn for_receive(&self, now: Instant, wire_epoch: u16) -> Option<(Slot, &RawEpoch)> {
        if self.current.wire_epoch() == wire_epoch {
            return Some((Slot::Current, &self.current));
        }
        if let Some(n) = self
            .next
            .as_deref()
            .filter(|n| n.wire_epoch() == wire_epoch)
        {
            return Some((Slot::Next, n));
        }
        match self.previous.as_deref() {
            Some((p, until)) if p.wire_epoch() == wire_epoch && now < *until => {
                Some((Slot::Previous, p))
            }
            _ => None,
        }
    }

    /// Hold a rekey's epoch until the client uses it.
    pub fn install_next(&mut self, next: RawEpoch) {
        self.next = Some(Box::new(next));
    }

    /// The first packet under the next epoch authenticated: make it current, keep the old one
    /// for `grace`. Returns whether there was a next epoch.
    pub fn promote_next(&mut self, now: Instant, grace: Duration) -> bool {
        let Some(next) = self.next.take() else {
            return false;
        };
        let old = core::mem::replace(&mut self.current, *next);
        self.previous = Some(Box::new((old, now + grace)));
        true
    }

    /// The install tag (cache key).
    #[must_use]
    pub fn tag(&self) -> u64 {
        self.tag
    }
}

/// Expanded keys of one (session, epoch).
#[derive(Debug)]
pub struct Expanded {
    tag: u64,
    epoch: u32,
    /// Seals packets to the client.
    pub send: AeadKey,
    /// Opens packets from the client.
    pub recv: AeadKey,
}

/// A worker's cache of expanded keys: direct-mapped, fixed size, allocated at start.
#[derive(Debug)]
pub struct KeyCache {
    entries: Box<[Option<Expanded>]>,
    shift: u32,
    /// Lookups served from the cache.
    pub hits: u64,
    /// Lookups that expanded keys.
    pub misses: u64,
}

impl KeyCache {
    /// A cache of `entries` (rounded up to a power of two) expanded epochs.
    #[must_use]
    pub fn with_entries(entries: usize) -> Self {
        let n = entries.max(1).next_power_of_two();
        let mut v = Vec::with_capacity(n);
        v.resize_with(n, || None);
        KeyCache {
            entries: v.into_boxed_slice(),
            shift: 64 - n.trailing_zeros(),
            hits: 0,
            misses: 0,
        }
    }

    /// Bytes the cache occupies.
    #[must_use]
    pub fn memory_bytes(&self) -> usize {
        self.entries.len() * size_of::<Option<Expanded>>()
    }

    /// The expanded keys of `raw` for the session whose keys carry `tag`, expanding them into
    /// the cache on a miss (evicting whatever shared the entry).
    pub fn get(&mut self, tag: u64, raw: &RawEpoch) -> &Expanded {
        let h = (tag ^ u64::from(raw.epoch).rotate_left(32)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        let i = if self.shift >= 64 {
            0
        } else {
            (h >> self.shift) as usize
        };
        let hit = matches!(&self.entries[i], Some(e) if e.tag == tag && e.epoch == raw.epoch);
        if hit {
            self.hits += 1;
        } else {
            self.misses += 1;
            self.entries[i] = Some(Expanded {
                tag,
                epoch: raw.epoch,
                send: AeadKey::new(raw.suite, &raw.send),
                recv: AeadKey::new(raw.suite, &raw.recv),
            });
        }
        // Filled just above if it was not a hit.
        self.entries[i].as_ref().unwrap_or_else(|| unreachable!())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use jumping_protocol::handshake::HandshakeKeys;
    use jumping_protocol::keys::Role;

    fn epoch(seed: u8, n: u32) -> EpochKeys {
        let hk = HandshakeKeys {
            c2g: SecretKey::from_bytes([seed; 32]),
            g2c: SecretKey::from_bytes([seed ^ 0x55; 32]),
            transcript: [0; 32],
            suite: CipherSuite::Aes256Gcm,
        };
        EpochKeys::derive(&hk, n, Role::Gateway, Instant::ZERO)
    }

    #[test]
    fn cache_expands_once_per_session_and_epoch_and_never_mixes_installs() {
        let a = SessionKeys::of(&KeySet::new(epoch(1, 0)));
        let b = SessionKeys::of(&KeySet::new(epoch(2, 0)));
        assert_ne!(a.tag(), b.tag());
        let mut c = KeyCache::with_entries(1); // one entry: every switch is a miss
        let sealed_a = {
            let k = c.get(a.tag(), a.current());
            let mut buf = *b"0123456789abcdef";
            k.send.seal_in_place(1, b"", &mut buf)
        };
        c.get(a.tag(), a.current());
        assert_eq!((c.hits, c.misses), (1, 1));
        c.get(b.tag(), b.current());
        assert_eq!(c.misses, 2, "another session is another entry");
        let k = c.get(a.tag(), a.current());
        let mut buf = *b"0123456789abcdef";
        assert_eq!(
            k.send.seal_in_place(1, b"", &mut buf),
            sealed_a,
            "same keys re-expanded"
        );
        assert_eq!(c.misses, 3);
    }

    #[test]
    fn next_epoch_is_promoted_and_previous_kept_for_its_grace() {
        let mut k = SessionKeys::of(&KeySet::new(epoch(1, 0)));
        assert!(k.for_receive(Instant::ZERO, 1).is_none());
        k.install_next(RawEpoch::of(&epoch(1, 1)));
        assert_eq!(
            k.for_receive(Instant::ZERO, 1).map(|x| x.0),
            Some(Slot::Next)
        );
        let t = Instant::from_millis(5);
        assert!(k.promote_next(t, Duration::from_secs(1)));
        assert_eq!(k.current().epoch(), 1);
        assert_eq!(k.for_receive(t, 0).map(|x| x.0), Some(Slot::Previous));
        assert!(k.for_receive(t + Duration::from_secs(1), 0).is_none());
        assert!(!k.promote_next(t, Duration::from_secs(1)));
    }
}
