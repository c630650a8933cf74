//! Summaries of samples and this process's CPU use.

use std::time::Duration;

use serde::Serialize;

/// Ask for `bytes` of receive and send buffer on a socket (best effort: the kernel caps it at
/// `net.core.[rw]mem_max` unless the process may override that).
pub fn socket_buffers(sock: &impl std::os::fd::AsFd, bytes: usize) {
    use nix::sys::socket::{setsockopt, sockopt};
    let _ = setsockopt(sock, sockopt::RcvBuf, &bytes);
    let _ = setsockopt(sock, sockopt::SndBuf, &bytes);
}

/// Count, mean and percentiles of a sample set (nearest rank).
#[derive(Debug, Default, Clone, Serialize, PartialEq)]
pub struct Summary {
    /// Samples.
    pub count: u64,
    /// Mean.
    pub mean: f64,
    /// Median.
    pub p50: f64,
    /// 90th percentile.
    pub p90: f64,
    /// 99th percentile.
    pub p99: f64,
    /// Largest.
    pub max: f64,
}

impl Summary {
    /// Summarise `samples` (NaN and infinite values are ignored).
    #[must_use]
    pub fn of(samples: &[f64]) -> Summary {
        let mut v: Vec<f64> = samples.iter().copied().filter(|x| x.is_finite()).collect();
        if v.is_empty() {
            return Summary::default();
        }
        v.sort_by(f64::total_cmp);
        let rank = |p: f64| {
            let k = ((p / 100.0) * v.len() as f64).ceil() as usize;
            v[k.clamp(1, v.len()) - 1]
        };
        Summary {
            count: v.len() as u64,
            mean: v.iter().sum::<f64>() / v.len() as f64,
            p50: rank(50.0),
            p90: rank(90.0),
            p99: rank(99.0),
            max: v[v.len() - 1],
        }
    }
}

/// CPU time used by this process.
#[derive(Debug, Default, Clone, Serialize)]
pub struct Cpu {
    /// User time, seconds.
    pub user_s: f64,
    /// System time, seconds.
    pub sys_s: f64,
    /// (user + system) / wall time: 1.0 is one core busy.
    pub cores: f64,
    /// Peak resident memory, KiB.
    pub max_rss_kib: u64,
}

impl Cpu {
    /// Totals since the process started.
    #[must_use]
    pub fn now() -> Cpu {
        use nix::sys::resource::{getrusage, UsageWho};
        match getrusage(UsageWho::RUSAGE_SELF) {
            Ok(u) => {
                let tv = |t: nix::sys::time::TimeVal| t.tv_sec() as f64 + t.tv_usec() as f64 / 1e6;
                Cpu {
                    user_s: tv(u.user_time()),
                    sys_s: tv(u.system_time()),
                    cores: 0.0,
                    max_rss_kib: u64::try_from(u.max_rss()).unwrap_or(0),
                }
            }
            Err(_) => Cpu::default(),
        }
    }

    /// The use between `before` and `self`, over `wall`.
    #[must_use]
    pub fn since(&self, before: &Cpu, wall: Duration) -> Cpu {
        let user_s = self.user_s - before.user_s;
        let sys_s = self.sys_s - before.sys_s;
        let w = wall.as_secs_f64();
        Cpu {
            user_s,
            sys_s,
            cores: if w > 0.0 { (user_s + sys_s) / w } else { 0.0 },
            max_rss_kib: self.max_rss_kib,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank() {
        let s = Summary::of(&[4.0, 1.0, 3.0, 2.0, f64::NAN]);
        assert_eq!(s.count, 4);
        assert_eq!(s.p50, 2.0);
        assert_eq!(s.p99, 4.0);
        assert_eq!(s.max, 4.0);
        assert_eq!(s.mean, 2.5);
        assert_eq!(Summary::of(&[]), Summary::default());
    }

    #[test]
    fn cpu_moves_forward() {
        let a = Cpu::now();
        let mut x = 0u64;
        for i in 0..2_000_000u64 {
            x = x.wrapping_mul(31).wrapping_add(i);
        }
        std::hint::black_box(x);
        let b = Cpu::now().since(&a, Duration::from_millis(1));
        assert!(b.user_s + b.sys_s >= 0.0);
        assert!(b.max_rss_kib > 0);
    }
}
