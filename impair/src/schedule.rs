//! The deterministic decision engine: one per direction.

use std::time::Duration;

use rand_chacha::ChaCha8Rng;
use rand_core::{RngCore, SeedableRng};
use serde::{Deserialize, Serialize};

use crate::config::Impairment;

/// A direction through the relay.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    /// Client → gateway.
    Upstream,
    /// Gateway → client.
    Downstream,
}

impl Direction {
    /// Both directions.
    pub const ALL: [Direction; 2] = [Direction::Upstream, Direction::Downstream];

    /// The ChaCha stream number of this direction (the streams are independent).
    fn stream(self) -> u64 {
        match self {
            Direction::Upstream => 1,
            Direction::Downstream => 2,
        }
    }
}

/// Why a packet was dropped.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DropReason {
    /// The per-packet random loss.
    Loss,
    /// The packet arrived inside a burst window.
    Burst,
}

/// What to do with one packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Verdict {
    /// Drop it.
    Drop(DropReason),
    /// Deliver it `after` its arrival.
    Deliver {
        /// Delay plus jitter.
        after: Duration,
    },
}

/// Decides the fate of each packet of one direction, deterministically.
///
/// The random stream is ChaCha8 keyed by the seed, on a stream number chosen by the direction.
/// Every call to [`Schedule::decide`] consumes exactly two 64-bit draws (one for loss, one for
/// jitter), whatever the verdict, so the n-th packet's loss and jitter draws depend only on
/// (seed, direction, n); whether it falls in a burst depends only on its arrival time.
#[derive(Debug, Clone)]
pub struct Schedule {
    rng: ChaCha8Rng,
    /// A packet is lost when a uniform 53-bit draw is below this.
    loss_threshold: u64,
    delay: Duration,
    jitter_ns: u64,
    /// (period, length, offset) in nanoseconds.
    burst: Option<(u128, u128, u128)>,
}

const LOSS_BITS: u32 = 53;

impl Schedule {
    /// A schedule for `direction`. The configuration should have been validated; out-of-range
    /// values are clamped (loss to 0..=1), a burst of length 0 never drops.
    pub fn new(config: &Impairment, direction: Direction) -> Self {
        let mut key = [0u8; 32];
        key[..8].copy_from_slice(&config.seed.to_le_bytes());
        key[8..24].copy_from_slice(b"jumping-impair/1");
        let mut rng = ChaCha8Rng::from_seed(key);
        rng.set_stream(direction.stream());
        let loss = if config.loss.is_nan() {
            0.0
        } else {
            config.loss.clamp(0.0, 1.0)
        };
        // Exact for 0 and 1: 0 never drops, 2^53 always does.
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        let loss_threshold = (loss * (1u64 << LOSS_BITS) as f64) as u64;
        let ms = 1_000_000u128;
        let burst = (config.burst_every_ms > 0 && config.burst_len_ms > 0).then(|| {
            (
                u128::from(config.burst_every_ms) * ms,
                u128::from(config.burst_len_ms) * ms,
                u128::from(config.burst_offset_ms()) * ms,
            )
        });
        Self {
            rng,
            loss_threshold,
            delay: Duration::from_millis(config.delay_ms),
            jitter_ns: config.jitter_ms.saturating_mul(1_000_000),
            burst,
        }
    }

    /// Whether `elapsed` (since the relay's start) falls inside a burst window.
    pub fn in_burst(&self, elapsed: Duration) -> bool {
        match self.burst {
            None => false,
            Some((every, len, offset)) => {
                let t = elapsed.as_nanos();
                t >= offset && (t - offset) % every < len
            }
        }
    }

    /// The verdict for the next packet, which arrived `elapsed` after the relay's start.
    pub fn decide(&mut self, elapsed: Duration) -> Verdict {
        let loss_draw = self.rng.next_u64() >> (64 - LOSS_BITS);
        let jitter_draw = self.rng.next_u64();
        if self.in_burst(elapsed) {
            return Verdict::Drop(DropReason::Burst);
        }
        if loss_draw < self.loss_threshold {
            return Verdict::Drop(DropReason::Loss);
        }
        let jitter = match self.jitter_ns {
            0 => 0,
            j => jitter_draw % (j + 1),
        };
        Verdict::Deliver {
            after: self.delay + Duration::from_nanos(jitter),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(seed: u64, loss: f64) -> Impairment {
        Impairment {
            seed,
            loss,
            delay_ms: 5,
            jitter_ms: 20,
            ..Impairment::default()
        }
    }

    fn verdicts(c: &Impairment, d: Direction, n: u64) -> Vec<Verdict> {
        let mut s = Schedule::new(c, d);
        (0..n)
            .map(|i| s.decide(Duration::from_micros(i * 10)))
            .collect()
    }

    #[test]
    fn same_seed_same_verdicts() {
        let c = cfg(42, 0.2);
        for d in Direction::ALL {
            assert_eq!(verdicts(&c, d, 10_000), verdicts(&c, d, 10_000));
        }
    }

    #[test]
    fn different_seed_or_direction_differs() {
        let a = verdicts(&cfg(42, 0.2), Direction::Upstream, 1000);
        let b = verdicts(&cfg(43, 0.2), Direction::Upstream, 1000);
        let c = verdicts(&cfg(42, 0.2), Direction::Downstream, 1000);
        assert_ne!(a, b);
        assert_ne!(a, c);
    }

    #[test]
    fn measured_loss_matches() {
        let n = 100_000u32;
        for loss in [0.05, 0.2, 0.4] {
            for d in Direction::ALL {
                let dropped = verdicts(&cfg(7, loss), d, u64::from(n))
                    .iter()
                    .filter(|v| matches!(v, Verdict::Drop(DropReason::Loss)))
                    .count();
                let measured = dropped as f64 / f64::from(n);
                assert!(
                    (measured - loss).abs() <= 0.01,
                    "loss {loss} {d:?}: measured {measured}"
                );
            }
        }
        assert!(verdicts(&cfg(7, 0.0), Direction::Upstream, 10_000)
            .iter()
            .all(|v| matches!(v, Verdict::Deliver { .. })));
        assert!(verdicts(&cfg(7, 1.0), Direction::Upstream, 10_000)
            .iter()
            .all(|v| *v == Verdict::Drop(DropReason::Loss)));
    }

    #[test]
    fn delay_plus_jitter_bounds() {
        let c = cfg(3, 0.0);
        let mut min = Duration::MAX;
        let mut max = Duration::ZERO;
        for v in verdicts(&c, Direction::Upstream, 10_000) {
            let Verdict::Deliver { after } = v else {
                panic!("no loss configured")
            };
            min = min.min(after);
            max = max.max(after);
        }
        assert!(min >= Duration::from_millis(5) && min < Duration::from_millis(6));
        assert!(max <= Duration::from_millis(25) && max > Duration::from_millis(24));
        let fixed = Impairment { jitter_ms: 0, ..c };
        assert!(verdicts(&fixed, Direction::Upstream, 1000)
            .iter()
            .all(|v| *v
                == Verdict::Deliver {
                    after: Duration::from_millis(5)
                }));
    }

    #[test]
    fn burst_windows_drop_exactly_inside() {
        let c = Impairment {
            seed: 9,
            burst_every_ms: 100,
            burst_len_ms: 20,
            ..Impairment::default()
        };
        let mut s = Schedule::new(&c, Direction::Downstream);
        // One packet every 100 µs for 1 s.
        for i in 0..10_000u64 {
            let t = Duration::from_micros(i * 100);
            let ms = t.as_millis();
            let inside = ms >= 50 && (ms - 50) % 100 < 20;
            let v = s.decide(t);
            assert_eq!(v == Verdict::Drop(DropReason::Burst), inside, "at {t:?}");
            if !inside {
                assert_eq!(
                    v,
                    Verdict::Deliver {
                        after: Duration::ZERO
                    }
                );
            }
        }
        // The edges: [50 ms, 70 ms) is a window.
        assert!(!s.in_burst(Duration::from_nanos(49_999_999)));
        assert!(s.in_burst(Duration::from_millis(50)));
        assert!(s.in_burst(Duration::from_nanos(69_999_999)));
        assert!(!s.in_burst(Duration::from_millis(70)));
        assert!(s.in_burst(Duration::from_millis(150)));
    }

    #[test]
    fn bursts_do_not_shift_the_loss_stream() {
        let base = cfg(11, 0.3);
        let bursty = Impairment {
            burst_every_ms: 10,
            burst_len_ms: 3,
            ..base.clone()
        };
        let mut a = Schedule::new(&base, Direction::Upstream);
        let mut b = Schedule::new(&bursty, Direction::Upstream);
        for i in 0..10_000u64 {
            let t = Duration::from_micros(i * 37);
            let (va, vb) = (a.decide(t), b.decide(t));
            if vb != Verdict::Drop(DropReason::Burst) {
                assert_eq!(va, vb);
            }
        }
    }
}
