//! Start-up health check of the OS random generator.
//!
//! Runs the two continuous health tests of NIST SP 800-90B section 4.4 — the repetition count
//! test and the adaptive proportion test — on a sample of bytes, plus a check that two
//! consecutive draws differ. A broken or stuck generator (a VM restored from a snapshot with a
//! constant seed, a seccomp filter returning zeros) fails here and the process refuses to start.

use rand_core::{CryptoRng, RngCore};

/// The generator failed a health test.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RngHealthError {
    /// The generator returned an error.
    #[error("the OS random generator returned an error")]
    Failed,
    /// A value repeated too often in a row (SP 800-90B 4.4.1).
    #[error("random generator failed the repetition count test")]
    RepetitionCount,
    /// A value was too frequent in a window (SP 800-90B 4.4.2).
    #[error("random generator failed the adaptive proportion test")]
    AdaptiveProportion,
    /// Two consecutive 32-byte draws were equal.
    #[error("random generator returned the same block twice")]
    Stuck,
}

/// Draw a sample from `rng` and run the health tests on it.
///
/// # Errors
/// The first test that failed.
pub fn rng_health_check<R: RngCore + CryptoRng + ?Sized>(
    rng: &mut R,
) -> Result<(), RngHealthError> {
    let mut sample = [0u8; 4096];
    rng.try_fill_bytes(&mut sample)
        .map_err(|_| RngHealthError::Failed)?;
    // Cutoffs for 8-bit samples, assumed min-entropy H = 7 bits per byte, false-positive rate
    // alpha = 2^-40: RCT cutoff = 1 + ceil(40 / H) = 7 (SP 800-90B 4.4.1); APT window 512,
    // cutoff = 1 + CRITBINOM(512, 2^-H, 1 - alpha) = 26 (SP 800-90B 4.4.2).
    const RCT_CUTOFF: usize = 7;
    const APT_WINDOW: usize = 512;
    const APT_CUTOFF: usize = 26;
    let mut run = 1;
    for w in sample.windows(2) {
        if w[0] == w[1] {
            run += 1;
            if run >= RCT_CUTOFF {
                return Err(RngHealthError::RepetitionCount);
            }
        } else {
            run = 1;
        }
    }
    for window in sample.chunks_exact(APT_WINDOW) {
        let first = window[0];
        if window.iter().filter(|&&b| b == first).count() >= APT_CUTOFF {
            return Err(RngHealthError::AdaptiveProportion);
        }
    }
    let (mut a, mut b) = ([0u8; 32], [0u8; 32]);
    rng.try_fill_bytes(&mut a)
        .map_err(|_| RngHealthError::Failed)?;
    rng.try_fill_bytes(&mut b)
        .map_err(|_| RngHealthError::Failed)?;
    if a == b {
        return Err(RngHealthError::Stuck);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand_core::{Error, OsRng};

    struct Constant(u8);
    impl RngCore for Constant {
        fn next_u32(&mut self) -> u32 {
            u32::from(self.0)
        }
        fn next_u64(&mut self) -> u64 {
            u64::from(self.0)
        }
        fn fill_bytes(&mut self, dest: &mut [u8]) {
            dest.fill(self.0);
        }
        fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), Error> {
            dest.fill(self.0);
            Ok(())
        }
    }
    impl CryptoRng for Constant {}

    #[test]
    fn os_rng_passes() {
        rng_health_check(&mut OsRng).expect("OS RNG healthy");
    }

    #[test]
    fn stuck_rng_fails() {
        assert_eq!(
            rng_health_check(&mut Constant(0)),
            Err(RngHealthError::RepetitionCount)
        );
    }
}
