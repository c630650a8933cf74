//! The delay queue: packets wait here until their release time.

use std::cmp::Ordering;
use std::collections::{BinaryHeap, VecDeque};
use std::time::Duration;

struct Entry<T> {
    release: Duration,
    seq: u64,
    item: T,
}

impl<T> PartialEq for Entry<T> {
    fn eq(&self, other: &Self) -> bool {
        self.release == other.release && self.seq == other.seq
    }
}

impl<T> Eq for Entry<T> {}

impl<T> PartialOrd for Entry<T> {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl<T> Ord for Entry<T> {
    /// Reversed, so that the max-heap yields the earliest release, then the earliest arrival.
    fn cmp(&self, other: &Self) -> Ordering {
        (other.release, other.seq).cmp(&(self.release, self.seq))
    }
}

/// A packet leaving the queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Released<T> {
    /// When it was due (time since the relay's start).
    pub release: Duration,
    /// Its arrival number in this queue (0, 1, 2, …).
    pub seq: u64,
    /// Whether it overtook a packet that arrived earlier and is still queued (reordering).
    pub overtook: bool,
    /// The packet.
    pub item: T,
}

/// Items ordered by release time, ties broken by arrival order.
///
/// Times are [`Duration`]s since an arbitrary origin (the relay's start), so the queue is pure
/// and testable.
pub struct DelayQueue<T> {
    heap: BinaryHeap<Entry<T>>,
    next_seq: u64,
    /// `pending[i]` is whether arrival `base + i` is still queued.
    pending: VecDeque<bool>,
    base: u64,
}

impl<T> std::fmt::Debug for DelayQueue<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DelayQueue")
            .field("len", &self.heap.len())
            .field("next_seq", &self.next_seq)
            .field("next_release", &self.next_release())
            .finish()
    }
}

impl<T> Default for DelayQueue<T> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T> DelayQueue<T> {
    /// An empty queue.
    pub fn new() -> Self {
        Self {
            heap: BinaryHeap::new(),
            next_seq: 0,
            pending: VecDeque::new(),
            base: 0,
        }
    }

    /// Queues `item` for release at `release`; returns its arrival number.
    pub fn push(&mut self, release: Duration, item: T) -> u64 {
        let seq = self.next_seq;
        self.next_seq += 1;
        self.heap.push(Entry { release, seq, item });
        self.pending.push_back(true);
        seq
    }

    /// The earliest release time queued.
    pub fn next_release(&self) -> Option<Duration> {
        self.heap.peek().map(|e| e.release)
    }

    /// Number of queued items.
    pub fn len(&self) -> usize {
        self.heap.len()
    }

    /// Whether nothing is queued.
    pub fn is_empty(&self) -> bool {
        self.heap.is_empty()
    }

    /// The next item whose release time is at or before `now`.
    pub fn pop_due(&mut self, now: Duration) -> Option<Released<T>> {
        if self.next_release()? > now {
            return None;
        }
        self.pop()
    }

    /// The next item in release order, whatever the time.
    pub fn pop(&mut self) -> Option<Released<T>> {
        let Entry { release, seq, item } = self.heap.pop()?;
        // Some earlier arrival still queued ⇔ the oldest pending arrival is older than this one.
        let overtook = seq > self.base;
        let idx = usize::try_from(seq - self.base).unwrap_or(usize::MAX);
        if let Some(p) = self.pending.get_mut(idx) {
            *p = false;
        }
        while self.pending.front() == Some(&false) {
            self.pending.pop_front();
            self.base += 1;
        }
        Some(Released {
            release,
            seq,
            overtook,
            item,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Impairment;
    use crate::schedule::{Direction, Schedule, Verdict};
    use proptest::prelude::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn releases_in_time_then_arrival_order() {
        let mut q = DelayQueue::new();
        q.push(ms(30), 'a');
        q.push(ms(10), 'b');
        q.push(ms(10), 'c');
        q.push(ms(20), 'd');
        assert_eq!(q.next_release(), Some(ms(10)));
        assert!(q.pop_due(ms(9)).is_none());
        let r = q.pop_due(ms(10)).expect("due");
        assert_eq!((r.item, r.overtook), ('b', true));
        let r = q.pop_due(ms(10)).expect("due");
        assert_eq!((r.item, r.overtook), ('c', true));
        assert!(q.pop_due(ms(15)).is_none());
        let r = q.pop_due(ms(100)).expect("due");
        assert_eq!((r.item, r.overtook), ('d', true));
        let r = q.pop_due(ms(100)).expect("due");
        assert_eq!((r.item, r.overtook), ('a', false));
        assert!(q.is_empty());
        assert!(q.pop_due(ms(1000)).is_none());
    }

    fn reorders(jitter_ms: u64) -> u64 {
        let c = Impairment {
            seed: 5,
            delay_ms: 10,
            jitter_ms,
            ..Impairment::default()
        };
        let mut s = Schedule::new(&c, Direction::Upstream);
        let mut q = DelayQueue::new();
        let mut reordered = 0;
        for i in 0..10_000u64 {
            let now = Duration::from_micros(i * 100);
            if let Verdict::Deliver { after } = s.decide(now) {
                q.push(now + after, i);
            }
            while let Some(r) = q.pop_due(now) {
                reordered += u64::from(r.overtook);
            }
        }
        while let Some(r) = q.pop() {
            reordered += u64::from(r.overtook);
        }
        reordered
    }

    #[test]
    fn jitter_reorders_and_no_jitter_does_not() {
        assert_eq!(reorders(0), 0);
        assert!(reorders(5) > 1000, "{}", reorders(5));
    }

    proptest! {
        #[test]
        fn release_order_is_sorted(
            ops in prop::collection::vec((0u64..1000, any::<bool>()), 1..300)
        ) {
            let mut q = DelayQueue::new();
            let mut now = 0u64;
            let mut out: Vec<(Duration, u64)> = Vec::new();
            for (delay, advance) in ops {
                q.push(ms(now + delay), ());
                if advance {
                    now += 7;
                    while let Some(r) = q.pop_due(ms(now)) {
                        prop_assert!(r.release <= ms(now));
                        out.push((r.release, r.seq));
                    }
                }
            }
            while let Some(r) = q.pop() {
                out.push((r.release, r.seq));
            }
            prop_assert!(out.windows(2).all(|w| w[0] <= w[1]));
            prop_assert_eq!(out.len() as u64, q.next_seq);
        }

        #[test]
        fn overtook_matches_definition(delays in prop::collection::vec(0u64..50, 1..200)) {
            let mut q = DelayQueue::new();
            for (i, d) in delays.iter().enumerate() {
                q.push(ms(i as u64 + d), ());
            }
            let mut released = vec![false; delays.len()];
            while let Some(r) = q.pop() {
                let seq = usize::try_from(r.seq).expect("small");
                let expected = released[..seq].iter().any(|done| !done);
                prop_assert_eq!(r.overtook, expected);
                released[seq] = true;
            }
        }
    }
}
