//! Counters, written as JSON by the relay.

use serde::{Deserialize, Serialize};

use crate::schedule::{Direction, DropReason, Verdict};

/// Counters of one direction.
///
/// `received = forwarded + dropped_loss + dropped_burst + dropped_send + queued`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
pub struct DirectionStats {
    /// Datagrams read from the socket.
    pub received: u64,
    /// Datagrams sent on (after their delay).
    pub forwarded: u64,
    /// Dropped by the random loss.
    pub dropped_loss: u64,
    /// Dropped inside a burst window.
    pub dropped_burst: u64,
    /// Released but not sent: the socket refused (full buffer, error) or the flow was gone.
    pub dropped_send: u64,
    /// Released while a packet that arrived earlier was still queued (they overtook it).
    pub reordered: u64,
    /// Packets waiting in the delay queue now.
    pub queued: u64,
    /// The largest number of packets ever waiting in the delay queue.
    pub max_queue: u64,
}

impl DirectionStats {
    /// Counts a verdict for a received packet (`received` and the drop counters).
    pub fn record(&mut self, verdict: &Verdict) {
        self.received += 1;
        match verdict {
            Verdict::Drop(DropReason::Loss) => self.dropped_loss += 1,
            Verdict::Drop(DropReason::Burst) => self.dropped_burst += 1,
            Verdict::Deliver { .. } => {}
        }
    }

    /// Records the delay queue's current length.
    pub fn set_queue(&mut self, len: usize) {
        let len = u64::try_from(len).unwrap_or(u64::MAX);
        self.queued = len;
        self.max_queue = self.max_queue.max(len);
    }
}

/// Everything the relay counts.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Client → gateway.
    pub upstream: DirectionStats,
    /// Gateway → client.
    pub downstream: DirectionStats,
    /// Client flows (distinct client address:port) ever created.
    pub flows: u64,
    /// Client flows existing now.
    pub flows_active: u64,
    /// Client flows removed after 120 s idle.
    pub flows_reaped: u64,
    /// Receive errors (e.g. ICMP port unreachable reported on an upstream socket).
    pub recv_errors: u64,
    /// Client packets dropped because no upstream socket could be created.
    pub flow_errors: u64,
    /// Milliseconds since the relay started.
    pub elapsed_ms: u64,
}

impl Stats {
    /// The counters of one direction.
    pub fn direction(&self, d: Direction) -> &DirectionStats {
        match d {
            Direction::Upstream => &self.upstream,
            Direction::Downstream => &self.downstream,
        }
    }

    /// The counters of one direction, mutably.
    pub fn direction_mut(&mut self, d: Direction) -> &mut DirectionStats {
        match d {
            Direction::Upstream => &mut self.upstream,
            Direction::Downstream => &mut self.downstream,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn record_and_json_shape() {
        let mut s = Stats::default();
        let up = s.direction_mut(Direction::Upstream);
        up.record(&Verdict::Drop(DropReason::Loss));
        up.record(&Verdict::Drop(DropReason::Burst));
        up.record(&Verdict::Deliver {
            after: Duration::ZERO,
        });
        up.set_queue(3);
        up.set_queue(1);
        assert_eq!(s.upstream.received, 3);
        assert_eq!(s.upstream.dropped_loss, 1);
        assert_eq!(s.upstream.dropped_burst, 1);
        assert_eq!((s.upstream.queued, s.upstream.max_queue), (1, 3));
        let v = serde_json::to_value(&s).expect("serialises");
        assert_eq!(v["upstream"]["received"], 3);
        assert_eq!(v["downstream"]["forwarded"], 0);
        assert!(v["flows"].is_u64());
        let back: Stats = serde_json::from_value(v).expect("round trip");
        assert_eq!(back, s);
    }
}
