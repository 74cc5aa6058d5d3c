//! A token bucket: `rate` tokens a second, holding at most `burst`. Pure logic; the caller passes
//! the clock so tests need no sleeping.

use std::time::{Duration, Instant};

#[derive(Debug, Clone)]
pub struct TokenBucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    pub fn new(rate: u32, burst: u32, now: Instant) -> Self {
        TokenBucket {
            rate: rate as f64,
            burst: burst.max(1) as f64,
            tokens: burst.max(1) as f64,
            last: now,
        }
    }

    fn refill(&mut self, now: Instant) {
        let dt = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + dt * self.rate).min(self.burst);
    }

    /// Take one token if there is one.
    pub fn try_take(&mut self, now: Instant) -> bool {
        self.take(now).is_ok()
    }

    /// Take one token, or say how long until the next one (`Duration::MAX` at rate 0).
    pub fn take(&mut self, now: Instant) -> Result<(), Duration> {
        self.refill(now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Ok(())
        } else if self.rate > 0.0 {
            Err(Duration::from_secs_f64((1.0 - self.tokens) / self.rate))
        } else {
            Err(Duration::MAX)
        }
    }

    /// How long until a token is there (zero when one is).
    pub fn wait(&mut self, now: Instant) -> Duration {
        self.refill(now);
        if self.tokens >= 1.0 {
            Duration::ZERO
        } else if self.rate > 0.0 {
            Duration::from_secs_f64((1.0 - self.tokens) / self.rate)
        } else {
            Duration::MAX
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allows_the_burst_then_the_rate() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(10, 3, t0);
        assert!(b.try_take(t0) && b.try_take(t0) && b.try_take(t0));
        assert!(!b.try_take(t0), "burst spent");
        assert!(
            b.try_take(t0 + Duration::from_millis(100)),
            "one token per 100 ms"
        );
        assert!(!b.try_take(t0 + Duration::from_millis(100)));
        assert!(b.try_take(t0 + Duration::from_secs(60)));
        let mut z = TokenBucket::new(0, 0, t0);
        assert!(z.try_take(t0));
        assert!(!z.try_take(t0 + Duration::from_secs(5)));
    }

    #[test]
    fn says_how_long_until_the_next_token() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(4, 2, t0);
        assert_eq!(b.wait(t0), Duration::ZERO);
        assert_eq!(b.take(t0), Ok(()));
        assert_eq!(b.take(t0), Ok(()));
        let near =
            |d: Duration, ms: u64| d.abs_diff(Duration::from_millis(ms)) < Duration::from_micros(1);
        assert!(near(b.take(t0).unwrap_err(), 250));
        assert!(near(b.wait(t0 + Duration::from_millis(50)), 200));
        assert_eq!(b.wait(t0 + Duration::from_millis(250)), Duration::ZERO);
        let mut z = TokenBucket::new(0, 1, t0);
        assert_eq!(z.take(t0), Ok(()));
        assert_eq!(z.take(t0), Err(Duration::MAX));
        assert_eq!(z.wait(t0), Duration::MAX);
    }
}
