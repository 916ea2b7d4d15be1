//! Exponential backoff with jitter, shared by every retry loop (broker reconnects, TSDB
//! writes): the n-th delay is uniform in `[base, min(cap, base·2^n)]`, so retries from many
//! clients spread out, and a stable connection resets it.

use std::time::Duration;

use rand::Rng;

#[derive(Debug, Clone)]
pub struct Backoff {
    base: Duration,
    cap: Duration,
    attempt: u32,
}

impl Backoff {
    pub fn new(base: Duration, cap: Duration) -> Self {
        Backoff {
            base,
            cap,
            attempt: 0,
        }
    }

    pub fn next_delay(&mut self) -> Duration {
        let ceiling = self
            .base
            .saturating_mul(1u32 << self.attempt.min(20))
            .min(self.cap);
        self.attempt = self.attempt.saturating_add(1);
        let lo = (self.base.min(ceiling)).as_millis() as u64;
        let hi = ceiling.as_millis() as u64;
        Duration::from_millis(rand::thread_rng().gen_range(lo..=hi.max(lo)))
    }

    pub fn reset(&mut self) {
        self.attempt = 0;
    }

    pub fn attempts(&self) -> u32 {
        self.attempt
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_with_jitter_within_bounds_and_resets() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
        let mut max_seen = Duration::ZERO;
        for i in 0..40u32 {
            let d = b.next_delay();
            let ceiling =
                Duration::from_millis(100 * (1u64 << i.min(20))).min(Duration::from_secs(5));
            assert!(
                d >= Duration::from_millis(100) && d <= ceiling,
                "{d:?} outside [100ms, {ceiling:?}]"
            );
            max_seen = max_seen.max(d);
        }
        assert!(
            max_seen > Duration::from_secs(1),
            "jitter never grew: {max_seen:?}"
        );
        assert_eq!(b.attempts(), 40);
        b.reset();
        assert_eq!(b.attempts(), 0);
        assert!(b.next_delay() <= Duration::from_millis(100));
    }
}
