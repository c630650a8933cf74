//! Path selection: which local path the session should use, as a pure, deterministic function of
//! what the shell measured (SPEC.md section 5: "switch hysteresis: candidate must be ≥ 10 %
//! better; never random").
//!
//! Inputs per path: whether it is usable (`up`), the round-trip times measured while it was the
//! active path, and whether a reattach on it failed recently. The protocol only measures RTT on
//! the active path (heartbeats), so a candidate's score is its last measurement while it was
//! active; an unmeasured candidate scores as the active path does (so it never wins on RTT).
//!
//! Rules, in order:
//! - (a) the active path is down, or the session is RECOVERING or VOLATILE: move to the best
//!   usable candidate (lowest score, ties by preference order), at most once per `min_gap`
//!   (`degraded_gap` in DEGRADED, where only a down path is a reason).
//! - (b) ATTACHED: move to a candidate whose measured RTT is at least `hysteresis_pct` % lower
//!   than the active path's mean RTT over the last `window`, but never within `dwell` of the
//!   previous switch.
//! - (c) the operator asked for a path: checked, but neither hysteresis nor dwell applies.
//!
//! Never while a reattach is pending (the protocol retries it by itself).

use std::collections::VecDeque;
use std::fmt;
use std::time::Duration;

use jumping_protocol::{Instant, State};

/// Tunables of the selection.
#[derive(Debug, Clone)]
pub struct SelectorConfig {
    /// A candidate must be at least this many percent better (lower RTT).
    pub hysteresis_pct: u32,
    /// The active path's score is its mean RTT over this window.
    pub window: Duration,
    /// No RTT-driven switch within this long of the previous switch.
    pub dwell: Duration,
    /// No recovery switch within this long of the previous switch (the gateway's cooldown).
    pub min_gap: Duration,
    /// Same, in DEGRADED.
    pub degraded_gap: Duration,
    /// A path whose reattach failed is not a candidate for this long.
    pub failure_backoff: Duration,
}

impl Default for SelectorConfig {
    fn default() -> Self {
        SelectorConfig {
            hysteresis_pct: 10,
            window: Duration::from_secs(3),
            dwell: Duration::from_secs(5),
            min_gap: Duration::from_secs(1),
            degraded_gap: Duration::from_secs(5),
            failure_backoff: Duration::from_secs(10),
        }
    }
}

/// Why a switch was decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SwitchReason {
    /// The active path cannot send.
    CurrentDown,
    /// The session is RECOVERING (the active path went silent).
    Recovering,
    /// The session is VOLATILE.
    Volatile,
    /// A candidate is enough better on RTT.
    BetterRtt,
    /// The operator asked.
    Operator,
}

impl SwitchReason {
    /// Name in events.
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            SwitchReason::CurrentDown => "current_path_down",
            SwitchReason::Recovering => "recovering",
            SwitchReason::Volatile => "volatile",
            SwitchReason::BetterRtt => "better_rtt",
            SwitchReason::Operator => "operator",
        }
    }
}

impl fmt::Display for SwitchReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A decision to move the session to another path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    /// Target path index.
    pub to: usize,
    /// Why.
    pub reason: SwitchReason,
    /// The active path's score when deciding.
    pub current_score: Option<Duration>,
    /// The target's score when deciding.
    pub candidate_score: Option<Duration>,
}

/// The measured state of the paths and the switch history.
#[derive(Debug)]
pub struct Selector {
    cfg: SelectorConfig,
    samples: Vec<VecDeque<(Instant, Duration)>>,
    last_rtt: Vec<Option<Duration>>,
    failed_at: Vec<Option<Instant>>,
    last_switch: Option<Instant>,
}

impl Selector {
    /// A selector for `n` paths.
    #[must_use]
    pub fn new(n: usize, cfg: SelectorConfig) -> Self {
        Selector {
            cfg,
            samples: vec![VecDeque::new(); n],
            last_rtt: vec![None; n],
            failed_at: vec![None; n],
            last_switch: None,
        }
    }

    /// An RTT measured on `path` while it was active.
    pub fn record_rtt(&mut self, path: usize, now: Instant, rtt: Duration) {
        let Some(s) = self.samples.get_mut(path) else {
            return;
        };
        s.push_back((now, rtt));
        while s.len() > 64 || s.front().is_some_and(|(t, _)| now - *t > self.cfg.window) {
            s.pop_front();
        }
        self.last_rtt[path] = Some(rtt);
    }

    /// The last RTT measured on `path`.
    #[must_use]
    pub fn last_rtt(&self, path: usize) -> Option<Duration> {
        self.last_rtt.get(path).copied().flatten()
    }

    /// A switch started now.
    pub fn switch_started(&mut self, now: Instant) {
        self.last_switch = Some(now);
    }

    /// A reattach on `path` failed (rejected, timed out, or could not be sent).
    pub fn attempt_failed(&mut self, path: usize, now: Instant) {
        if let Some(f) = self.failed_at.get_mut(path) {
            *f = Some(now);
        }
    }

    /// A reattach on `path` succeeded.
    pub fn attempt_succeeded(&mut self, path: usize) {
        if let Some(f) = self.failed_at.get_mut(path) {
            *f = None;
        }
    }

    /// The active path's score: mean RTT over the window, else its last measurement.
    #[must_use]
    pub fn current_score(&self, current: usize, now: Instant) -> Option<Duration> {
        self.window_mean(current, now).or(self.last_rtt(current))
    }

    fn window_mean(&self, path: usize, now: Instant) -> Option<Duration> {
        let s = self.samples.get(path)?;
        let (sum, n) = s
            .iter()
            .filter(|(t, _)| now - *t <= self.cfg.window)
            .fold((0u128, 0u128), |(sum, n), (_, d)| {
                (sum + d.as_nanos(), n + 1)
            });
        if n == 0 {
            return None;
        }
        Some(Duration::from_nanos(
            u64::try_from(sum / n).unwrap_or(u64::MAX),
        ))
    }

    fn backed_off(&self, path: usize, now: Instant) -> bool {
        self.failed_at
            .get(path)
            .copied()
            .flatten()
            .is_some_and(|t| now - t < self.cfg.failure_backoff)
    }

    fn since_switch(&self, now: Instant) -> Option<Duration> {
        self.last_switch.map(|t| now - t)
    }

    /// The best usable candidate other than `current`: lowest score, ties by index.
    fn best_candidate(
        &self,
        now: Instant,
        current: usize,
        up: &[bool],
    ) -> Option<(usize, Option<Duration>)> {
        let cur = self.current_score(current, now);
        (0..up.len())
            .filter(|&i| i != current && up[i] && !self.backed_off(i, now))
            .map(|i| (i, self.last_rtt(i)))
            // Unknown scores count as the active path's; if that is unknown too, as the worst.
            .min_by_key(|&(i, s)| (s.or(cur).unwrap_or(Duration::MAX), i))
    }

    /// What to do now. `current` is the active path, `up` the usability of every path,
    /// `pending` whether a reattach is still in progress.
    #[must_use]
    pub fn decide(
        &self,
        now: Instant,
        current: usize,
        state: State,
        up: &[bool],
        pending: bool,
    ) -> Option<Decision> {
        if pending || current >= up.len() {
            return None;
        }
        let current_down = !up[current];
        let since = self.since_switch(now);
        let gap_ok = |gap: Duration| since.is_none_or(|s| s >= gap);
        let recovery = match state {
            State::Birth | State::Terminated => return None,
            State::Degraded => {
                if !current_down || !gap_ok(self.cfg.degraded_gap) {
                    return None;
                }
                Some(SwitchReason::CurrentDown)
            }
            _ if current_down => Some(SwitchReason::CurrentDown),
            State::Recovering => Some(SwitchReason::Recovering),
            State::Volatile => Some(SwitchReason::Volatile),
            State::Attached => None,
        };
        let current_score = self.current_score(current, now);
        if let Some(reason) = recovery {
            if !gap_ok(self.cfg.min_gap) {
                return None;
            }
            let (to, candidate_score) = self.best_candidate(now, current, up)?;
            return Some(Decision {
                to,
                reason,
                current_score,
                candidate_score,
            });
        }
        // (b) hysteresis, only on measured scores, after the dwell time.
        if !gap_ok(self.cfg.dwell) {
            return None;
        }
        let cur = self.window_mean(current, now)?;
        let (to, cand) = self.best_candidate(now, current, up)?;
        let cand = cand?;
        let better = cand.as_nanos() * 100
            <= cur.as_nanos() * u128::from(100u32.saturating_sub(self.cfg.hysteresis_pct));
        better.then_some(Decision {
            to,
            reason: SwitchReason::BetterRtt,
            current_score: Some(cur),
            candidate_score: Some(cand),
        })
    }

    /// The operator asked to move to `target`.
    ///
    /// # Errors
    /// Why the request is refused.
    pub fn operator(
        &self,
        now: Instant,
        current: Option<usize>,
        state: State,
        target: usize,
        up: &[bool],
        pending: bool,
    ) -> Result<Decision, String> {
        if target >= up.len() {
            return Err(format!(
                "no path {target}: there are {} paths (0..{})",
                up.len(),
                up.len().saturating_sub(1)
            ));
        }
        let Some(current) = current else {
            return Err("no session yet".into());
        };
        if matches!(state, State::Birth | State::Terminated) {
            return Err(format!("no session to move (state {state})"));
        }
        if target == current {
            return Err(format!("path {target} is already the active path"));
        }
        if !up[target] {
            return Err(format!("path {target} is down"));
        }
        if pending {
            return Err("a switch is already in progress".into());
        }
        Ok(Decision {
            to: target,
            reason: SwitchReason::Operator,
            current_score: self.current_score(current, now),
            candidate_score: self.last_rtt(target),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(v: u64) -> Duration {
        Duration::from_millis(v)
    }
    fn at(v: u64) -> Instant {
        Instant::from_millis(v)
    }

    /// Path 1 measured at `cand` ms long ago (when it was active), then a switch to path 0,
    /// which measures `cur` ms; returns the selector and a time past the dwell.
    fn measured(cur: u64, cand: u64) -> (Selector, Instant) {
        let mut s = Selector::new(3, SelectorConfig::default());
        s.record_rtt(1, at(1_000), ms(cand));
        s.switch_started(at(2_000));
        for t in (3_000..=8_000).step_by(1_000) {
            s.record_rtt(0, at(t), ms(cur));
        }
        (s, at(8_000))
    }

    #[test]
    fn hysteresis_holds_at_nine_percent() {
        let (s, now) = measured(100, 91);
        assert_eq!(s.decide(now, 0, State::Attached, &[true; 3], false), None);
    }

    #[test]
    fn switches_at_ten_percent_or_more() {
        let (s, now) = measured(100, 90);
        let d = s
            .decide(now, 0, State::Attached, &[true; 3], false)
            .expect("switch");
        assert_eq!((d.to, d.reason), (1, SwitchReason::BetterRtt));
        assert_eq!(d.candidate_score, Some(ms(90)));
        assert_eq!(d.current_score, Some(ms(100)));
        let (s, now) = measured(100, 50);
        assert_eq!(
            s.decide(now, 0, State::Attached, &[true; 3], false)
                .map(|d| d.to),
            Some(1)
        );
    }

    #[test]
    fn score_is_the_window_mean() {
        let mut s = Selector::new(2, SelectorConfig::default());
        s.record_rtt(1, at(0), ms(90));
        s.switch_started(at(1_000));
        // An old spike outside the 3 s window does not count.
        s.record_rtt(0, at(2_000), ms(1_000));
        s.record_rtt(0, at(7_000), ms(95));
        s.record_rtt(0, at(8_000), ms(105));
        assert_eq!(s.current_score(0, at(8_000)), Some(ms(100)));
        assert_eq!(
            s.decide(at(8_000), 0, State::Attached, &[true; 2], false)
                .map(|d| d.to),
            Some(1)
        );
    }

    #[test]
    fn dwell_time_is_respected() {
        let mut s = Selector::new(2, SelectorConfig::default());
        s.record_rtt(1, at(0), ms(10));
        s.switch_started(at(1_000));
        s.record_rtt(0, at(2_000), ms(100));
        s.record_rtt(0, at(5_000), ms(100));
        // 4.9 s after the switch: no RTT switch, however much better.
        assert_eq!(
            s.decide(at(5_900), 0, State::Attached, &[true; 2], false),
            None
        );
        // 5 s after it: allowed.
        s.record_rtt(0, at(6_000), ms(100));
        assert!(s
            .decide(at(6_000), 0, State::Attached, &[true; 2], false)
            .is_some());
    }

    #[test]
    fn unmeasured_candidates_never_win_on_rtt() {
        let mut s = Selector::new(2, SelectorConfig::default());
        s.record_rtt(0, at(1_000), ms(500));
        assert_eq!(
            s.decide(at(2_000), 0, State::Attached, &[true; 2], false),
            None
        );
    }

    #[test]
    fn down_paths_are_never_chosen() {
        let (s, now) = measured(100, 10);
        assert_eq!(
            s.decide(now, 0, State::Attached, &[true, false, false], false),
            None
        );
        assert_eq!(
            s.decide(now, 0, State::Recovering, &[true, false, false], false),
            None
        );
        // Current down: path 1 is down too, so path 2 (unmeasured) is taken.
        let d = s
            .decide(now, 0, State::Attached, &[false, false, true], false)
            .expect("switch");
        assert_eq!((d.to, d.reason), (2, SwitchReason::CurrentDown));
        assert!(s
            .operator(
                now,
                Some(0),
                State::Attached,
                1,
                &[true, false, true],
                false
            )
            .is_err());
    }

    #[test]
    fn recovery_takes_the_best_and_ties_go_by_preference() {
        let mut s = Selector::new(4, SelectorConfig::default());
        // Nothing measured: ties, so the lowest index other than the current one.
        let d = s
            .decide(at(0), 2, State::Recovering, &[true; 4], false)
            .expect("switch");
        assert_eq!((d.to, d.reason), (0, SwitchReason::Recovering));
        // Equal measurements on 1 and 3: 1 wins; a better 3 wins.
        s.record_rtt(1, at(0), ms(40));
        s.record_rtt(3, at(0), ms(40));
        s.record_rtt(0, at(0), ms(80));
        let pick = |s: &Selector| {
            s.decide(at(100), 2, State::Volatile, &[true; 4], false)
                .map(|d| d.to)
        };
        assert_eq!(pick(&s), Some(1));
        s.record_rtt(3, at(0), ms(30));
        assert_eq!(pick(&s), Some(3));
        // Deterministic: the same inputs give the same answer.
        assert_eq!(pick(&s), pick(&s));
    }

    #[test]
    fn no_decision_while_pending_or_within_the_gap() {
        let mut s = Selector::new(2, SelectorConfig::default());
        assert_eq!(
            s.decide(at(0), 0, State::Recovering, &[true; 2], true),
            None
        );
        s.switch_started(at(0));
        assert_eq!(
            s.decide(at(500), 0, State::Recovering, &[true; 2], false),
            None
        );
        assert!(s
            .decide(at(1_000), 0, State::Recovering, &[true; 2], false)
            .is_some());
        // No session: nothing.
        assert_eq!(
            s.decide(at(9_000), 0, State::Birth, &[false, true], false),
            None
        );
    }

    #[test]
    fn failed_paths_back_off() {
        let mut s = Selector::new(3, SelectorConfig::default());
        s.attempt_failed(1, at(0));
        let pick = |s: &Selector, t| {
            s.decide(at(t), 0, State::Recovering, &[true; 3], false)
                .map(|d| d.to)
        };
        assert_eq!(pick(&s, 1_000), Some(2));
        assert_eq!(pick(&s, 10_000), Some(1));
        s.attempt_failed(1, at(0));
        s.attempt_succeeded(1);
        assert_eq!(pick(&s, 1_000), Some(1));
    }

    #[test]
    fn degraded_moves_only_off_a_down_path() {
        let (s, now) = measured(100, 10);
        assert_eq!(s.decide(now, 0, State::Degraded, &[true; 3], false), None);
        assert_eq!(
            s.decide(now, 0, State::Degraded, &[false, true, true], false)
                .map(|d| d.to),
            Some(1)
        );
    }

    #[test]
    fn operator_requests_are_checked() {
        let s = Selector::new(2, SelectorConfig::default());
        let up = [true; 2];
        assert!(s
            .operator(at(0), Some(0), State::Attached, 5, &up, false)
            .is_err());
        assert!(s
            .operator(at(0), Some(0), State::Attached, 0, &up, false)
            .is_err());
        assert!(s
            .operator(at(0), None, State::Birth, 1, &up, false)
            .is_err());
        assert!(s
            .operator(at(0), Some(0), State::Attached, 1, &up, true)
            .is_err());
        let d = s
            .operator(at(0), Some(0), State::Attached, 1, &up, false)
            .expect("allowed");
        assert_eq!((d.to, d.reason), (1, SwitchReason::Operator));
    }
}
