//! A worker's session table: SessionId → session state, fixed capacity, open addressing.
//!
//! - **Index**: an array of 16-byte entries (SessionId, slot number), linear probing, sized at
//!   creation to a power of two at least twice the session capacity, so the load factor stays
//!   ≤ 0.5 and a lookup touches one or two cache lines. Deletion shifts the following entries
//!   back (no tombstones), so probe lengths do not degrade under churn.
//! - **Values**: a slab of slots with a free list; a slot number stays valid for the session's
//!   life, so other structures (timers, the per-queue rings) can refer to a session by slot.
//! - **Hash**: SessionIds are chosen by the gateway (a keyed permutation, see
//!   `jumping_protocol::gateway`), never by a peer, so a fast multiplicative hash cannot be
//!   steered into collisions.
//!
//! Nothing allocates after [`SessionTable::with_capacity`]: inserting into a full table is an
//! error, not a resize, so the packet path never stalls on a reallocation.

use jumping_protocol::SessionId;

/// The table is at capacity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("session table full ({0} sessions)")]
pub struct TableFull(pub usize);

#[derive(Debug, Clone, Copy, Default)]
struct Entry {
    /// 0 = empty (SessionId 0 is never allocated).
    id: u64,
    slot: u32,
}

/// The session table of one worker.
#[derive(Debug)]
pub struct SessionTable<T> {
    index: Box<[Entry]>,
    mask: usize,
    slots: Vec<Option<T>>,
    free: Vec<u32>,
    len: usize,
    capacity: usize,
}

fn hash(id: u64) -> u64 {
    // Fibonacci hashing: multiply by 2^64 / golden ratio and keep the high bits (Knuth, TAOCP
    // vol. 3, 6.4). The caller shifts, so all 64 bits of the product matter.
    id.wrapping_mul(0x9E37_79B9_7F4A_7C15)
}

impl<T> SessionTable<T> {
    /// A table for up to `capacity` sessions; allocates everything now.
    #[must_use]
    pub fn with_capacity(capacity: usize) -> Self {
        let buckets = (capacity.max(1) * 2).next_power_of_two();
        // Huge pages before the first write (see `sys::advise_huge_pages`).
        let mut index = Vec::with_capacity(buckets);
        crate::sys::advise_huge_pages(&index);
        index.resize(buckets, Entry::default());
        let mut slots = Vec::with_capacity(capacity);
        crate::sys::advise_huge_pages(&slots);
        slots.resize_with(capacity, || None);
        SessionTable {
            index: index.into_boxed_slice(),
            mask: buckets - 1,
            slots,
            free: (0..u32::try_from(capacity).expect("capacity fits u32"))
                .rev()
                .collect(),
            len: 0,
            capacity,
        }
    }

    /// Sessions held.
    #[must_use]
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the table holds no session.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Most sessions it can hold.
    #[must_use]
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Bytes a table of `capacity` sessions occupies (index, slab and free list), computed
    /// without allocating it: the same figure as [`SessionTable::memory_bytes`].
    #[must_use]
    pub fn memory_for(capacity: usize) -> usize {
        (capacity.max(1) * 2).next_power_of_two() * size_of::<Entry>()
            + capacity * size_of::<Option<T>>()
            + capacity * size_of::<u32>()
    }

    /// Bytes the table occupies (index, slab and free list), for the memory-per-session figure.
    #[must_use]
    pub fn memory_bytes(&self) -> usize {
        self.index.len() * size_of::<Entry>()
            + self.slots.capacity() * size_of::<Option<T>>()
            + self.free.capacity() * size_of::<u32>()
    }

    fn bucket(&self, id: u64) -> usize {
        let bits = self.mask.count_ones();
        if bits == 0 {
            0
        } else {
            (hash(id) >> (64 - bits)) as usize
        }
    }

    /// Position of `id` in the index, if present.
    fn find(&self, id: u64) -> Option<usize> {
        if id == 0 {
            return None;
        }
        let mut i = self.bucket(id);
        loop {
            let e = self.index[i];
            if e.id == id {
                return Some(i);
            }
            if e.id == 0 {
                return None;
            }
            i = (i + 1) & self.mask;
        }
    }

    /// The slot number of a session (stable for its life).
    #[must_use]
    pub fn slot_of(&self, id: SessionId) -> Option<u32> {
        self.find(id.0).map(|i| self.index[i].slot)
    }

    /// Start loading what looking up `ids` will touch, so the lookups that follow overlap
    /// their cache misses instead of paying them one after another: every home bucket is
    /// prefetched, then (as those lines arrive) the slot of every id found in its home bucket.
    /// The worker calls this on a receive batch before processing it.
    pub fn prefetch(&self, ids: &[SessionId]) {
        for id in ids {
            crate::sys::prefetch(&self.index[self.bucket(id.0)]);
        }
        for id in ids {
            let e = &self.index[self.bucket(id.0)];
            if e.id == id.0 && id.0 != 0 {
                if let Some(slot) = self.slots.get(e.slot as usize) {
                    crate::sys::prefetch(slot);
                }
            }
        }
    }

    /// Look up a whole receive batch: `slots[i]` becomes the slot number of `ids[i]`, or
    /// `None`. The first pass loads every home bucket before any probe loop runs, so the cache
    /// misses of a batch overlap instead of being paid one after another (at a million
    /// sessions nearly every lookup misses the caches).
    pub fn slots_of_batch(&self, ids: &[SessionId], slots: &mut [Option<u32>]) {
        const CHUNK: usize = 32;
        for (ids, slots) in ids.chunks(CHUNK).zip(slots.chunks_mut(CHUNK)) {
            let mut first = [Entry::default(); CHUNK];
            for (f, id) in first.iter_mut().zip(ids) {
                *f = self.index[self.bucket(id.0)];
            }
            for ((slot, id), f) in slots.iter_mut().zip(ids).zip(&first) {
                *slot = if id.0 == 0 {
                    None
                } else if f.id == id.0 {
                    Some(f.slot)
                } else if f.id == 0 {
                    None
                } else {
                    self.slot_of(*id)
                };
            }
        }
    }

    /// The state in slot `slot` (from [`SessionTable::slot_of`] or a batch lookup).
    #[must_use]
    pub fn get_slot(&self, slot: u32) -> Option<&T> {
        self.slots.get(slot as usize)?.as_ref()
    }

    /// The state in slot `slot`, mutable.
    #[must_use]
    pub fn get_slot_mut(&mut self, slot: u32) -> Option<&mut T> {
        self.slots.get_mut(slot as usize)?.as_mut()
    }

    /// A session's state.
    #[must_use]
    pub fn get(&self, id: SessionId) -> Option<&T> {
        let i = self.find(id.0)?;
        self.slots[self.index[i].slot as usize].as_ref()
    }

    /// A session's state, mutable (the owner worker only).
    #[must_use]
    pub fn get_mut(&mut self, id: SessionId) -> Option<&mut T> {
        let i = self.find(id.0)?;
        self.slots[self.index[i].slot as usize].as_mut()
    }

    /// Insert or replace a session. Returns the previous state if there was one.
    ///
    /// # Errors
    /// [`TableFull`] when a new session does not fit; SessionId 0 is refused the same way
    /// (it is reserved and never allocated).
    pub fn insert(&mut self, id: SessionId, value: T) -> Result<Option<T>, TableFull> {
        if id.0 == 0 {
            return Err(TableFull(self.capacity));
        }
        if let Some(i) = self.find(id.0) {
            return Ok(self.slots[self.index[i].slot as usize].replace(value));
        }
        let slot = self.free.pop().ok_or(TableFull(self.capacity))?;
        self.slots[slot as usize] = Some(value);
        let mut i = self.bucket(id.0);
        while self.index[i].id != 0 {
            i = (i + 1) & self.mask;
        }
        self.index[i] = Entry { id: id.0, slot };
        self.len += 1;
        Ok(None)
    }

    /// Remove a session and return its state.
    pub fn remove(&mut self, id: SessionId) -> Option<T> {
        let mut hole = self.find(id.0)?;
        let slot = self.index[hole].slot;
        let value = self.slots[slot as usize].take();
        self.free.push(slot);
        self.len -= 1;
        // Backward-shift deletion (Knuth's algorithm R): move later entries of the probe run
        // into the hole when their home bucket does not lie cyclically in (hole, j].
        let mut j = hole;
        loop {
            j = (j + 1) & self.mask;
            let e = self.index[j];
            if e.id == 0 {
                break;
            }
            let home = self.bucket(e.id);
            let between = if hole <= j {
                hole < home && home <= j
            } else {
                hole < home || home <= j
            };
            if !between {
                self.index[hole] = e;
                hole = j;
            }
        }
        self.index[hole] = Entry::default();
        value
    }

    /// Every session, in index order (for snapshots and counters; not for the packet path).
    pub fn iter(&self) -> impl Iterator<Item = (SessionId, &T)> {
        self.index.iter().filter(|e| e.id != 0).filter_map(|e| {
            self.slots[e.slot as usize]
                .as_ref()
                .map(|v| (SessionId(e.id), v))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::HashMap;

    #[derive(Debug, Clone)]
    enum Op {
        Insert(u64, u32),
        Remove(u64),
        Get(u64),
    }

    fn ops() -> impl Strategy<Value = Vec<Op>> {
        // A small id space so inserts, replacements and removals collide often.
        let id = prop_oneof![0u64..64, Just(0u64), any::<u64>()];
        prop::collection::vec(
            prop_oneof![
                4 => (id.clone(), any::<u32>()).prop_map(|(k, v)| Op::Insert(k, v)),
                2 => id.clone().prop_map(Op::Remove),
                3 => id.prop_map(Op::Get),
            ],
            0..500,
        )
    }

    proptest! {
        /// Against a HashMap model, with capacity limits: same answers for every operation.
        #[test]
        fn behaves_like_a_map(cap in 1usize..40, ops in ops()) {
            let mut t = SessionTable::with_capacity(cap);
            let mut m: HashMap<u64, u32> = HashMap::new();
            for op in ops {
                match op {
                    Op::Insert(k, v) => {
                        let got = t.insert(SessionId(k), v);
                        if k == 0 || (!m.contains_key(&k) && m.len() == cap) {
                            prop_assert_eq!(got, Err(TableFull(cap)));
                        } else {
                            prop_assert_eq!(got, Ok(m.insert(k, v)));
                        }
                    }
                    Op::Remove(k) => prop_assert_eq!(t.remove(SessionId(k)), m.remove(&k)),
                    Op::Get(k) => {
                        prop_assert_eq!(t.get(SessionId(k)), m.get(&k));
                        let mut slot = [None];
                        t.slots_of_batch(&[SessionId(k)], &mut slot);
                        prop_assert_eq!(slot[0].and_then(|s| t.get_slot(s)), m.get(&k));
                    }
                }
                prop_assert_eq!(t.len(), m.len());
            }
            let mut all: Vec<(u64, u32)> = t.iter().map(|(k, v)| (k.0, *v)).collect();
            all.sort_unstable();
            let mut want: Vec<(u64, u32)> = m.into_iter().collect();
            want.sort_unstable();
            prop_assert_eq!(all, want);
        }
    }

    #[test]
    fn churn_at_a_million_keeps_every_session_findable() {
        let n = 1_000_000;
        let mut t = SessionTable::with_capacity(n);
        let id = |i: u64| SessionId(hash(i + 1) | 1);
        for i in 0..n as u64 {
            t.insert(id(i), i).expect("fits");
        }
        assert_eq!(t.insert(SessionId(u64::MAX - 7), 0), Err(TableFull(n)));
        for i in (0..n as u64).step_by(3) {
            assert_eq!(t.remove(id(i)), Some(i));
        }
        for i in 0..n as u64 {
            assert_eq!(
                t.get(id(i)).copied(),
                if i % 3 == 0 { None } else { Some(i) }
            );
        }
        let batch: Vec<SessionId> = (0..1000).map(id).collect();
        let mut slots = vec![None; batch.len()];
        t.slots_of_batch(&batch, &mut slots);
        for (i, s) in slots.iter().enumerate() {
            let want = if i % 3 == 0 { None } else { Some(i as u64) };
            assert_eq!(s.and_then(|s| t.get_slot(s)).copied(), want);
        }
        let per_session = t.memory_bytes() / n;
        assert!(
            per_session <= 64,
            "index + slab of u64 values: {per_session} B per session"
        );
    }
}
