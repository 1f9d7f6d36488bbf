//! Reconnection pacing shared by every network link: the TCP client and
//! the Redis and NATS connections wait this long between attempts to reach
//! a peer that went away.

use std::time::Duration;

/// Delays between reconnection attempts: the first, doubled after each
/// failure up to a cap.
///
/// ```
/// use std::time::Duration;
/// use eventforge_transports::Backoff;
///
/// let backoff = Backoff::new(Duration::from_millis(50), Duration::from_millis(150));
/// let delays: Vec<_> = backoff.delays().take(4).collect();
/// assert_eq!(delays, [50, 100, 150, 150].map(Duration::from_millis));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
}

impl Backoff {
    /// The first delay `initial` (at least 1 ms), doubled after each
    /// failure up to `max` (at least `initial`).
    pub fn new(initial: Duration, max: Duration) -> Self {
        let initial = initial.max(Duration::from_millis(1));
        Backoff {
            initial,
            max: max.max(initial),
        }
    }

    /// The first delay.
    pub fn initial(&self) -> Duration {
        self.initial
    }

    /// The largest delay.
    pub fn max(&self) -> Duration {
        self.max
    }

    /// The delay after `current`: doubled, capped.
    pub fn after(&self, current: Duration) -> Duration {
        current.saturating_mul(2).clamp(self.initial, self.max)
    }

    /// The delays of successive attempts, from the first.
    pub fn delays(&self) -> impl Iterator<Item = Duration> {
        let backoff = *self;
        std::iter::successors(Some(self.initial), move |&delay| Some(backoff.after(delay)))
    }
}

impl Default for Backoff {
    /// 50 ms doubling up to 2 s.
    fn default() -> Self {
        Backoff::new(Duration::from_millis(50), Duration::from_secs(2))
    }
}
