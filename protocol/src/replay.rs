//! Sliding anti-replay window (RFC 6479).
//!
//! A ring of `WORDS` 64-bit words holds one bit per counter value. Moving the window forward
//! clears whole words instead of shifting bits, so both the check and the update are O(1) in
//! the common case (at most `WORDS` word clears on a large jump). One word is kept as slack, so
//! the window accepts counters down to `top - (WORDS - 1) * 64 + 1`.
//!
//! Size: [`DEFAULT_WORDS`] = 32 words, 256 bytes, a window of 1984 packets. A session lives on
//! one path and one owner core, so reordering comes only from the network path; at 1 Mpps for
//! one session (about 11 Gbit/s of 1400-byte packets) 1984 packets is 2 ms of reordering, well
//! beyond what a single path reorders, while keeping the per-session state inside the data
//! plane's 512-byte budget. Counters are per direction and never reset inside a session (they
//! continue across key epochs), so one window per direction protects every key of the session.
//!
//! The window is updated only after the packet authenticated: call [`ReplayWindow::check`]
//! before decrypting (cheap reject of obvious replays) and [`ReplayWindow::accept`] after.

/// Words in the default window.
pub const DEFAULT_WORDS: usize = 32;

/// Why a counter is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ReplayError {
    /// Already received.
    #[error("counter already seen")]
    Duplicate,
    /// Older than the window.
    #[error("counter older than the replay window")]
    TooOld,
}

/// The window. `WORDS` must be a power of two of at least 2.
///
/// The highest accepted counter is held as `top + 1` (0: nothing accepted yet), so the window
/// carries no flag and no padding: it is part of every data-plane session (memory budget).
/// The counter `u64::MAX` is therefore never accepted; no sender reaches it (keys are
/// rotated long before).
#[derive(Clone, PartialEq, Eq)]
pub struct ReplayWindow<const WORDS: usize = DEFAULT_WORDS> {
    /// Highest counter accepted so far, plus one; 0 before the first.
    next: u64,
    bitmap: [u64; WORDS],
}

impl<const WORDS: usize> core::fmt::Debug for ReplayWindow<WORDS> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("ReplayWindow")
            .field("top", &self.top())
            .finish()
    }
}

impl<const WORDS: usize> Default for ReplayWindow<WORDS> {
    fn default() -> Self {
        Self::new()
    }
}

impl<const WORDS: usize> ReplayWindow<WORDS> {
    /// Counters this far below the top are still accepted once.
    pub const WINDOW: u64 = ((WORDS - 1) * 64) as u64;
    const ASSERT: () = assert!(WORDS >= 2 && WORDS.is_power_of_two());

    /// An empty window.
    #[must_use]
    pub const fn new() -> Self {
        let () = Self::ASSERT;
        ReplayWindow {
            next: 0,
            bitmap: [0; WORDS],
        }
    }

    /// Highest counter accepted, if any.
    #[must_use]
    pub fn top(&self) -> Option<u64> {
        self.next.checked_sub(1)
    }

    /// The window's state (highest counter accepted, bitmap), to move it to another process.
    #[must_use]
    pub fn to_parts(&self) -> (Option<u64>, [u64; WORDS]) {
        (self.top(), self.bitmap)
    }

    /// A window rebuilt from [`ReplayWindow::to_parts`]. A top of `u64::MAX` (never
    /// accepted) gives an empty window.
    #[must_use]
    pub fn from_parts(top: Option<u64>, bitmap: [u64; WORDS]) -> Self {
        match top.and_then(|t| t.checked_add(1)) {
            Some(next) => ReplayWindow { next, bitmap },
            None => Self::new(),
        }
    }

    fn slot(counter: u64) -> (usize, u64) {
        let word = ((counter / 64) as usize) & (WORDS - 1);
        (word, 1u64 << (counter % 64))
    }

    /// Would `counter` be accepted? Does not change the window.
    ///
    /// # Errors
    /// [`ReplayError`] if the counter is a duplicate or too old (or `u64::MAX`).
    pub fn check(&self, counter: u64) -> Result<(), ReplayError> {
        if counter == u64::MAX {
            return Err(ReplayError::TooOld);
        }
        let Some(top) = self.top() else {
            return Ok(());
        };
        if counter > top {
            return Ok(());
        }
        if top - counter >= Self::WINDOW {
            return Err(ReplayError::TooOld);
        }
        let (word, bit) = Self::slot(counter);
        if self.bitmap[word] & bit != 0 {
            Err(ReplayError::Duplicate)
        } else {
            Ok(())
        }
    }

    /// Check `counter` and, if it is new, record it. Call only for authenticated packets.
    ///
    /// # Errors
    /// [`ReplayError`] if the counter is a duplicate or too old; the window is unchanged.
    pub fn accept(&mut self, counter: u64) -> Result<(), ReplayError> {
        self.check(counter)?;
        match self.top() {
            None => {
                self.bitmap = [0; WORDS];
                self.next = counter + 1;
            }
            Some(top) if counter > top => {
                let steps = (counter / 64 - top / 64).min(WORDS as u64);
                for i in 1..=steps {
                    self.bitmap[((top / 64 + i) as usize) & (WORDS - 1)] = 0;
                }
                self.next = counter + 1;
            }
            Some(_) => {}
        }
        let (word, bit) = Self::slot(counter);
        self.bitmap[word] |= bit;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeSet;

    /// The reference model: a set of every counter ever accepted, and the same window rule.
    #[derive(Default)]
    struct Model {
        seen: BTreeSet<u64>,
        top: Option<u64>,
        window: u64,
    }

    impl Model {
        fn accept(&mut self, c: u64) -> Result<(), ReplayError> {
            if c == u64::MAX {
                return Err(ReplayError::TooOld);
            }
            if let Some(top) = self.top {
                if c <= top && top - c >= self.window {
                    return Err(ReplayError::TooOld);
                }
            }
            if !self.seen.insert(c) {
                return Err(ReplayError::Duplicate);
            }
            self.top = Some(self.top.map_or(c, |t| t.max(c)));
            Ok(())
        }
    }

    #[test]
    fn basic_sequence() {
        let mut w = ReplayWindow::<4>::new();
        assert_eq!(ReplayWindow::<4>::WINDOW, 192);
        assert_eq!(w.accept(0), Ok(()));
        assert_eq!(w.accept(0), Err(ReplayError::Duplicate));
        assert_eq!(w.accept(5), Ok(()));
        assert_eq!(w.accept(3), Ok(()));
        assert_eq!(w.accept(3), Err(ReplayError::Duplicate));
        assert_eq!(w.accept(1000), Ok(()));
        assert_eq!(w.accept(1000 - 192), Err(ReplayError::TooOld));
        assert_eq!(w.accept(1000 - 191), Ok(()));
        assert_eq!(w.accept(u64::MAX), Err(ReplayError::TooOld));
        assert_eq!(w.accept(u64::MAX - 1), Ok(()));
        assert_eq!(w.accept(u64::MAX - 1), Err(ReplayError::Duplicate));
        assert_eq!(w.accept(1000), Err(ReplayError::TooOld));
    }

    #[test]
    fn check_does_not_mutate() {
        let mut w = ReplayWindow::<4>::new();
        w.accept(10).expect("fresh");
        let before = w.clone();
        assert_eq!(w.check(11), Ok(()));
        assert_eq!(w.check(10), Err(ReplayError::Duplicate));
        assert!(w == before);
    }

    fn counters() -> impl Strategy<Value = Vec<u64>> {
        // Mostly near each other (reordering, duplicates), sometimes large jumps.
        prop::collection::vec(
            prop_oneof![
                8 => 0u64..600,
                1 => 0u64..100_000,
                1 => (u64::MAX - 300)..=u64::MAX,
            ],
            1..400,
        )
    }

    proptest! {
        #[test]
        fn matches_reference_model(seq in counters()) {
            let mut w = ReplayWindow::<4>::new();
            let mut m = Model { window: ReplayWindow::<4>::WINDOW, ..Model::default() };
            for c in seq {
                prop_assert_eq!(w.check(c), m.clone_check(c));
                prop_assert_eq!(w.accept(c), m.accept(c), "counter {}", c);
            }
        }

        #[test]
        fn never_accepts_twice(seq in counters()) {
            let mut w = ReplayWindow::<DEFAULT_WORDS>::new();
            let mut accepted = BTreeSet::new();
            for c in seq {
                if w.accept(c).is_ok() {
                    prop_assert!(accepted.insert(c), "counter {} accepted twice", c);
                }
            }
        }
    }

    impl Model {
        fn clone_check(&self, c: u64) -> Result<(), ReplayError> {
            if c == u64::MAX {
                return Err(ReplayError::TooOld);
            }
            if let Some(top) = self.top {
                if c <= top && top - c >= self.window {
                    return Err(ReplayError::TooOld);
                }
            }
            if self.seen.contains(&c) {
                Err(ReplayError::Duplicate)
            } else {
                Ok(())
            }
        }
    }
}
