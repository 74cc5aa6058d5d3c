//! Bounded exponential backoff, and retrying an operation with it.

use crate::{Error, Result};
use std::future::Future;
use std::time::Duration;

/// Delays between tries: `initial`, doubling up to `max`, for at most `attempts` tries, each
/// delay shortened by a random part of up to `jitter` of it so that many clients that lost
/// their edge together do not come back together.
#[derive(Clone, Debug, PartialEq)]
pub struct Backoff {
    pub initial: Duration,
    pub max: Duration,
    /// Tries in all, the first one included; `None` keeps trying while the error is retryable.
    pub attempts: Option<u32>,
    /// 0.0 (exact delays) to 1.0 (anywhere between 0 and the delay).
    pub jitter: f64,
}

impl Default for Backoff {
    /// 250 ms, 500 ms, 1 s, … up to 10 s, ten tries (at most 46 s of waiting), half jitter.
    fn default() -> Self {
        Backoff {
            initial: Duration::from_millis(250),
            max: Duration::from_secs(10),
            attempts: Some(10),
            jitter: 0.5,
        }
    }
}

impl Backoff {
    /// The delay before retry `n` (0 for the first retry), before jitter.
    pub fn delay(&self, n: u32) -> Duration {
        let factor = 2u32.saturating_pow(n);
        self.initial.saturating_mul(factor).min(self.max)
    }

    /// `delay` less `jitter × r` of it, for `r` drawn from `[0, 1)`.
    pub fn jittered(&self, delay: Duration, r: f64) -> Duration {
        let cut = self.jitter.clamp(0.0, 1.0) * r.clamp(0.0, 1.0);
        delay.mul_f64(1.0 - cut)
    }

    /// Whether a try may follow `tried` tries.
    pub fn may_retry(&self, tried: u32) -> bool {
        self.attempts.is_none_or(|n| tried < n)
    }
}

/// Run `op` (given the number of the try, from 0) until it succeeds, fails with an error that
/// is not [retryable](Error::is_retryable), or `backoff` runs out of tries; then the last error.
pub async fn retry<T, F, Fut>(backoff: &Backoff, mut op: F) -> Result<T>
where
    F: FnMut(u32) -> Fut,
    Fut: Future<Output = Result<T>>,
{
    let mut tried = 0;
    loop {
        let err: Error = match op(tried).await {
            Ok(v) => return Ok(v),
            Err(e) => e,
        };
        tried += 1;
        if !err.is_retryable() || !backoff.may_retry(tried) {
            return Err(err);
        }
        let wait = backoff.jittered(backoff.delay(tried - 1), rand::random());
        tokio::time::sleep(wait).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::time::Instant;

    fn exact(attempts: Option<u32>) -> Backoff {
        Backoff {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(1),
            attempts,
            jitter: 0.0,
        }
    }

    #[test]
    fn doubles_up_to_the_cap() {
        let b = exact(None);
        let ms: Vec<u128> = (0..6).map(|n| b.delay(n).as_millis()).collect();
        assert_eq!(ms, [100, 200, 400, 800, 1000, 1000]);
        assert_eq!(b.delay(u32::MAX), Duration::from_secs(1));
    }

    #[test]
    fn jitter_only_shortens_within_its_fraction() {
        let b = Backoff {
            jitter: 0.5,
            ..exact(None)
        };
        let d = Duration::from_millis(800);
        assert_eq!(b.jittered(d, 0.0), d);
        assert_eq!(b.jittered(d, 1.0), Duration::from_millis(400));
        assert_eq!(b.jittered(d, 7.0), Duration::from_millis(400));
        assert_eq!(exact(None).jittered(d, 0.9), d);
    }

    #[tokio::test(start_paused = true)]
    async fn waits_the_backoff_between_tries_until_one_succeeds() {
        let start = Instant::now();
        let mut calls = Vec::new();
        let got = retry(&exact(Some(5)), |n| {
            calls.push((n, start.elapsed().as_millis()));
            async move {
                if n < 3 {
                    Err(Error::Timeout)
                } else {
                    Ok(n)
                }
            }
        })
        .await
        .unwrap();
        assert_eq!(got, 3);
        assert_eq!(calls, [(0, 0), (1, 100), (2, 300), (3, 700)]);
    }

    #[tokio::test(start_paused = true)]
    async fn gives_up_after_the_last_try() {
        let start = Instant::now();
        let mut calls = 0;
        let err = retry(&exact(Some(4)), |_| {
            calls += 1;
            async { Err::<(), _>(Error::Closed { code: None }) }
        })
        .await
        .unwrap_err();
        assert!(matches!(err, Error::Closed { .. }));
        assert_eq!(calls, 4);
        // waits after tries 1, 2 and 3, not after the last
        assert_eq!(start.elapsed(), Duration::from_millis(100 + 200 + 400));
    }

    #[tokio::test(start_paused = true)]
    async fn stops_at_once_on_an_error_retrying_cannot_fix() {
        let start = Instant::now();
        let mut calls = 0;
        let err = retry(&exact(None), |_| {
            calls += 1;
            async {
                Err::<(), _>(Error::Refused {
                    status: 401,
                    body: None,
                })
            }
        })
        .await
        .unwrap_err();
        assert!(matches!(err, Error::Refused { status: 401, .. }));
        assert_eq!(calls, 1);
        assert_eq!(start.elapsed(), Duration::ZERO);
    }

    #[tokio::test(start_paused = true)]
    async fn jittered_waits_stay_within_the_bounds() {
        let b = Backoff {
            jitter: 0.5,
            ..exact(Some(3))
        };
        let start = Instant::now();
        let _ = retry(&b, |_| async { Err::<(), _>(Error::Timeout) }).await;
        let waited = start.elapsed();
        assert!(waited >= Duration::from_millis(150), "{waited:?}");
        assert!(waited <= Duration::from_millis(300), "{waited:?}");
    }
}
