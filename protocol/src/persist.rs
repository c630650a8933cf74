//! Persistent form of the gateway's authority, so a control process can restart without
//! losing a session (issue "control process": sessions, keys, versions, owners survive).
//!
//! A [`SessionRecord`] holds what the control role needs to keep deciding for a session:
//! state and version, the client identity and handshake transcript (reattach proofs), every
//! key epoch, the control-sealing counter, the reattach replay window, the active path and
//! owner, and the timers' instants. Instants are absolute on the gateway's clock: the shell
//! must restore on the same clock (the control process uses `CLOCK_BOOTTIME` and discards
//! records from another boot). A [`NodeRecord`] holds the handshake timestamps per client key
//! (a captured initiation stays useless after a restart) and revocations.
//!
//! The encoding is versioned, big-endian, and decoding never panics. Records contain secrets:
//! the buffers are zeroed on drop, and the shell must store them sealed (the control process
//! seals them under a key derived from the gateway's static key).

use std::collections::VecDeque;

use zeroize::Zeroizing;

use crate::keys::{EpochMaterial, KeySetMaterial};
use crate::path::{Path, Transport};
use crate::state::State;
use crate::time::Instant;
use crate::wire::SessionId;

/// Format version of the records.
pub const RECORD_VERSION: u8 = 1;

/// Why a record did not decode or restore.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    /// Shorter than its fields.
    #[error("record truncated")]
    Truncated,
    /// Longer than its fields.
    #[error("record has trailing bytes")]
    Trailing,
    /// Another format version.
    #[error("record format {0}, this build reads {RECORD_VERSION}")]
    Version(u8),
    /// A field out of range.
    #[error("invalid record field {0}")]
    Invalid(&'static str),
    /// The session already exists.
    #[error("session already present")]
    Exists,
}

/// One session's persistent state.
#[derive(Debug)]
pub struct SessionRecord {
    /// When the record was taken (gateway clock); key ages are relative to it.
    pub at: Instant,
    /// The session.
    pub id: SessionId,
    /// State.
    pub state: State,
    /// State version.
    pub version: u64,
    /// Client identity key.
    pub client_public: [u8; 32],
    /// Handshake transcript hash (reattach proofs).
    pub transcript: Zeroizing<[u8; 32]>,
    /// Every key epoch.
    pub keys: KeySetMaterial,
    /// Next counter for control-sealed transport messages.
    pub send_counter: u64,
    /// Reattach replay window.
    pub reattach_window: (Option<u64>, [u64; 4]),
    /// Control-side receive window (TERMINATE messages).
    pub recv_window: (Option<u64>, [u64; 32]),
    /// Active path.
    pub active: Option<Path>,
    /// Owner core.
    pub owner: u8,
    /// Creation.
    pub created: Instant,
    /// Entry into the current state.
    pub entered_state: Instant,
    /// Last authenticated packet on the active path.
    pub last_rx_active: Instant,
    /// When the active path was lost.
    pub lost_at: Option<Instant>,
    /// Switches inside the budget window.
    pub recent_switches: VecDeque<Instant>,
    /// Switches over the session's life.
    pub switches_total: u64,
    /// Valid-but-denied reattach attempts in RECOVERING.
    pub reattach_failures: u32,
}

/// The node's persistent state.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct NodeRecord {
    /// Per client key: last handshake timestamp accepted, and whether the key is revoked.
    pub clients: Vec<([u8; 32], Option<u64>, bool)>,
    /// The SessionId allocator (so an id is never reused across restarts); `None` in records
    /// written before it was kept.
    pub ids: Option<IdAllocatorRecord>,
}

/// The SessionId allocator's permutation key and counter.
#[derive(Clone, PartialEq, Eq)]
pub struct IdAllocatorRecord {
    /// Permutation key (secret: it makes ids unguessable).
    pub key: Zeroizing<[u8; 32]>,
    /// The last counter used.
    pub counter: u64,
}

impl core::fmt::Debug for IdAllocatorRecord {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("IdAllocatorRecord")
            .field("counter", &self.counter)
            .finish_non_exhaustive()
    }
}

/// Format of node records: 2 adds the SessionId allocator (format 1 is still read).
pub const NODE_RECORD_VERSION: u8 = 2;

struct W(Zeroizing<Vec<u8>>);

impl W {
    fn u8(&mut self, v: u8) {
        self.0.push(v);
    }
    fn u32(&mut self, v: u32) {
        self.0.extend_from_slice(&v.to_be_bytes());
    }
    fn u64(&mut self, v: u64) {
        self.0.extend_from_slice(&v.to_be_bytes());
    }
    fn bytes(&mut self, v: &[u8]) {
        self.0.extend_from_slice(v);
    }
    fn opt_u64(&mut self, v: Option<u64>) {
        self.u8(u8::from(v.is_some()));
        self.u64(v.unwrap_or(0));
    }
    fn instant(&mut self, v: Instant) {
        self.u64(v.as_nanos());
    }
    fn epoch(&mut self, e: &EpochMaterial) {
        self.u32(e.epoch);
        self.u8(e.suite);
        for k in [&e.send, &e.recv, &e.ctrl_send, &e.ctrl_recv] {
            self.bytes(k);
        }
        self.u64(e.age_ns);
        self.u64(e.sent);
    }
    fn path(&mut self, p: Option<Path>) {
        let Some(p) = p else {
            self.u8(0);
            return;
        };
        self.u8(p.transport.code());
        match p.addr {
            core::net::SocketAddr::V4(a) => {
                self.u8(4);
                self.bytes(&a.ip().octets());
            }
            core::net::SocketAddr::V6(a) => {
                self.u8(6);
                self.bytes(&a.ip().octets());
            }
        }
        self.bytes(&p.addr.port().to_be_bytes());
    }
}

struct R<'a>(&'a [u8]);

impl R<'_> {
    fn take(&mut self, n: usize) -> Result<&[u8], RecordError> {
        if self.0.len() < n {
            return Err(RecordError::Truncated);
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Ok(a)
    }
    fn arr<const N: usize>(&mut self) -> Result<[u8; N], RecordError> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N)?);
        Ok(a)
    }
    fn u8(&mut self) -> Result<u8, RecordError> {
        Ok(self.take(1)?[0])
    }
    fn u32(&mut self) -> Result<u32, RecordError> {
        Ok(u32::from_be_bytes(self.arr()?))
    }
    fn u64(&mut self) -> Result<u64, RecordError> {
        Ok(u64::from_be_bytes(self.arr()?))
    }
    fn flag(&mut self, what: &'static str) -> Result<bool, RecordError> {
        match self.u8()? {
            0 => Ok(false),
            1 => Ok(true),
            _ => Err(RecordError::Invalid(what)),
        }
    }
    fn opt_u64(&mut self, what: &'static str) -> Result<Option<u64>, RecordError> {
        let some = self.flag(what)?;
        let v = self.u64()?;
        Ok(some.then_some(v))
    }
    fn instant(&mut self) -> Result<Instant, RecordError> {
        Ok(Instant::from_nanos(self.u64()?))
    }
    fn epoch(&mut self) -> Result<EpochMaterial, RecordError> {
        Ok(EpochMaterial {
            epoch: self.u32()?,
            suite: self.u8()?,
            send: self.arr()?,
            recv: self.arr()?,
            ctrl_send: self.arr()?,
            ctrl_recv: self.arr()?,
            age_ns: self.u64()?,
            sent: self.u64()?,
        })
    }
    fn path(&mut self) -> Result<Option<Path>, RecordError> {
        let t = self.u8()?;
        if t == 0 {
            return Ok(None);
        }
        let transport = Transport::from_code(t).ok_or(RecordError::Invalid("transport"))?;
        let ip: core::net::IpAddr = match self.u8()? {
            4 => core::net::Ipv4Addr::from(self.arr::<4>()?).into(),
            6 => core::net::Ipv6Addr::from(self.arr::<16>()?).into(),
            _ => return Err(RecordError::Invalid("address family")),
        };
        let port = u16::from_be_bytes(self.arr()?);
        Ok(Some(Path {
            transport,
            addr: core::net::SocketAddr::new(ip, port),
        }))
    }
    fn words<const N: usize>(&mut self) -> Result<[u64; N], RecordError> {
        let mut a = [0u64; N];
        for w in &mut a {
            *w = self.u64()?;
        }
        Ok(a)
    }
    fn end(&self) -> Result<(), RecordError> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(RecordError::Trailing)
        }
    }
}

fn state_code(state: State) -> u8 {
    let i = State::ALL.iter().position(|&x| x == state).unwrap_or(0);
    u8::try_from(i).unwrap_or(0)
}

fn header(r: &mut R<'_>) -> Result<(), RecordError> {
    match r.u8()? {
        RECORD_VERSION => Ok(()),
        v => Err(RecordError::Version(v)),
    }
}

impl SessionRecord {
    /// The record's bytes (zeroed on drop).
    #[must_use]
    pub fn encode(&self) -> Zeroizing<Vec<u8>> {
        let mut w = W(Zeroizing::new(Vec::with_capacity(1024)));
        w.u8(RECORD_VERSION);
        w.instant(self.at);
        w.u64(self.id.0);
        w.u8(state_code(self.state));
        w.u64(self.version);
        w.bytes(&self.client_public);
        w.bytes(&*self.transcript);
        match &self.keys.previous {
            Some((e, left)) => {
                w.u8(1);
                w.epoch(e);
                w.u64(*left);
            }
            None => w.u8(0),
        }
        w.epoch(&self.keys.current);
        match &self.keys.next {
            Some(e) => {
                w.u8(1);
                w.epoch(e);
            }
            None => w.u8(0),
        }
        w.u64(self.send_counter);
        w.opt_u64(self.reattach_window.0);
        self.reattach_window.1.iter().for_each(|x| w.u64(*x));
        w.opt_u64(self.recv_window.0);
        self.recv_window.1.iter().for_each(|x| w.u64(*x));
        w.path(self.active);
        w.u8(self.owner);
        w.instant(self.created);
        w.instant(self.entered_state);
        w.instant(self.last_rx_active);
        w.opt_u64(self.lost_at.map(Instant::as_nanos));
        w.u32(u32::try_from(self.recent_switches.len()).unwrap_or(u32::MAX));
        self.recent_switches.iter().for_each(|t| w.instant(*t));
        w.u64(self.switches_total);
        w.u32(self.reattach_failures);
        w.0
    }

    /// A record from its bytes.
    ///
    /// # Errors
    /// [`RecordError`] for a truncated, trailing, out-of-range or other-version record.
    pub fn decode(b: &[u8]) -> Result<Self, RecordError> {
        let mut r = R(b);
        header(&mut r)?;
        let at = r.instant()?;
        let id = SessionId(r.u64()?);
        let state = *State::ALL
            .get(usize::from(r.u8()?))
            .ok_or(RecordError::Invalid("state"))?;
        let version = r.u64()?;
        let client_public = r.arr()?;
        let transcript = Zeroizing::new(r.arr()?);
        let previous = if r.flag("previous")? {
            Some((r.epoch()?, r.u64()?))
        } else {
            None
        };
        let current = r.epoch()?;
        let next = if r.flag("next")? {
            Some(r.epoch()?)
        } else {
            None
        };
        let send_counter = r.u64()?;
        let reattach_window = (r.opt_u64("reattach window")?, r.words()?);
        let recv_window = (r.opt_u64("receive window")?, r.words()?);
        let active = r.path()?;
        let owner = r.u8()?;
        let created = r.instant()?;
        let entered_state = r.instant()?;
        let last_rx_active = r.instant()?;
        let lost_at = r.opt_u64("lost at")?.map(Instant::from_nanos);
        let n = r.u32()?;
        if n > 1024 {
            return Err(RecordError::Invalid("switch count"));
        }
        let mut recent_switches = VecDeque::new();
        for _ in 0..n {
            recent_switches.push_back(r.instant()?);
        }
        let switches_total = r.u64()?;
        let reattach_failures = r.u32()?;
        r.end()?;
        Ok(SessionRecord {
            at,
            id,
            state,
            version,
            client_public,
            transcript,
            keys: KeySetMaterial {
                previous,
                current,
                next,
            },
            send_counter,
            reattach_window,
            recv_window,
            active,
            owner,
            created,
            entered_state,
            last_rx_active,
            lost_at,
            recent_switches,
            switches_total,
            reattach_failures,
        })
    }
}

impl NodeRecord {
    /// The record's bytes.
    #[must_use]
    pub fn encode(&self) -> Vec<u8> {
        let mut w = W(Zeroizing::new(Vec::new()));
        w.u8(NODE_RECORD_VERSION);
        w.u32(u32::try_from(self.clients.len()).unwrap_or(u32::MAX));
        for (k, ts, revoked) in &self.clients {
            w.bytes(k);
            w.opt_u64(*ts);
            w.u8(u8::from(*revoked));
        }
        match &self.ids {
            None => w.u8(0),
            Some(ids) => {
                w.u8(1);
                w.bytes(&*ids.key);
                w.u64(ids.counter);
            }
        }
        w.0.to_vec()
    }

    /// A record from its bytes.
    ///
    /// # Errors
    /// [`RecordError`] as for sessions.
    pub fn decode(b: &[u8]) -> Result<Self, RecordError> {
        let mut r = R(b);
        let version = r.u8()?;
        if version != RECORD_VERSION && version != NODE_RECORD_VERSION {
            return Err(RecordError::Version(version));
        }
        let n = r.u32()?;
        let mut clients = Vec::new();
        for _ in 0..n {
            let k = r.arr()?;
            let ts = r.opt_u64("timestamp")?;
            let revoked = r.flag("revoked")?;
            clients.push((k, ts, revoked));
        }
        let ids = if version == NODE_RECORD_VERSION && r.flag("ids")? {
            let key = Zeroizing::new(r.arr()?);
            Some(IdAllocatorRecord {
                key,
                counter: r.u64()?,
            })
        } else {
            None
        };
        r.end()?;
        Ok(NodeRecord { clients, ids })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::Sim;
    use proptest::prelude::*;

    fn a_record() -> Vec<u8> {
        let mut sim = Sim::new(11, crate::Policy::default());
        let sid = sim.connect();
        sim.gw
            .export_session(sim.now, sid)
            .expect("session")
            .encode()
            .to_vec()
    }

    #[test]
    fn node_records_round_trip_refuse_truncation_and_read_format_1() {
        let mut sim = Sim::new(12, crate::Policy::default());
        let _ = sim.connect();
        let rec = sim.gw.export_node();
        assert!(rec.ids.is_some() && !rec.clients.is_empty());
        let bytes = rec.encode();
        assert_eq!(NodeRecord::decode(&bytes).expect("decode"), rec);
        for n in 0..bytes.len() {
            assert!(NodeRecord::decode(&bytes[..n]).is_err(), "truncated at {n}");
        }
        // Format 1 (no allocator) is still read.
        let old = NodeRecord {
            ids: None,
            ..rec.clone()
        };
        let mut v1 = old.encode();
        v1.pop();
        v1[0] = RECORD_VERSION;
        assert_eq!(NodeRecord::decode(&v1).expect("format 1"), old);
        let key = rec
            .ids
            .as_ref()
            .map(|i| format!("{:?}", &*i.key))
            .expect("ids");
        assert!(
            !format!("{rec:?}").contains(&key),
            "the allocator key is not printed"
        );
    }

    #[test]
    fn round_trip_and_every_truncation_is_an_error() {
        let bytes = a_record();
        let rec = SessionRecord::decode(&bytes).expect("decode");
        assert_eq!(*rec.encode(), bytes, "canonical");
        for n in 0..bytes.len() {
            assert!(
                SessionRecord::decode(&bytes[..n]).is_err(),
                "truncated at {n}"
            );
        }
        let mut long = bytes.clone();
        long.push(0);
        assert_eq!(
            SessionRecord::decode(&long).err(),
            Some(RecordError::Trailing)
        );
        let mut other = bytes;
        other[0] = 9;
        assert_eq!(
            SessionRecord::decode(&other).err(),
            Some(RecordError::Version(9))
        );
    }

    proptest! {
        #[test]
        fn decoding_never_panics(data in prop::collection::vec(any::<u8>(), 0..1200), flip in any::<usize>()) {
            let _ = SessionRecord::decode(&data);
            let _ = NodeRecord::decode(&data);
            // Mutations of a valid record: decode or fail cleanly.
            let mut rec = a_record();
            let i = flip % rec.len();
            rec[i] ^= 0xA5;
            let _ = SessionRecord::decode(&rec);
        }
    }
}
