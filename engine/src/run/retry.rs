//! Retry delays: constant or exponential backoff, capped, with full jitter.

use std::time::Duration;

use rand::Rng;

use crate::flow::RetrySpec;

/// Delay before attempt `next` (2 = first retry). With jitter the delay is
/// uniform in `[0, base]` ("full jitter"); a `Retry-After` from the system is
/// a floor.
pub fn delay(spec: &RetrySpec, next: u32, retry_after: Option<Duration>) -> Duration {
    let base = spec.base_delay(next);
    let d = if spec.jitter && !base.is_zero() {
        let ms = base.as_millis() as u64;
        Duration::from_millis(rand::rng().random_range(0..=ms))
    } else {
        base
    };
    retry_after.map_or(d, |r| d.max(r))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::flow::Backoff;

    fn spec(backoff: Backoff, jitter: bool) -> RetrySpec {
        RetrySpec {
            max_attempts: 5,
            backoff,
            initial: Duration::from_millis(100),
            max: Duration::from_millis(350),
            jitter,
        }
    }

    #[test]
    fn exponential_backoff_doubles_and_caps_at_max() {
        let s = spec(Backoff::Exponential, false);
        let got: Vec<u128> = (2..=5).map(|n| delay(&s, n, None).as_millis()).collect();
        assert_eq!(got, vec![100, 200, 350, 350]);
    }

    #[test]
    fn constant_backoff_repeats_initial() {
        let s = spec(Backoff::Constant, false);
        assert_eq!(delay(&s, 4, None), Duration::from_millis(100));
    }

    #[test]
    fn full_jitter_stays_within_the_base_delay() {
        let s = spec(Backoff::Exponential, true);
        for _ in 0..200 {
            assert!(delay(&s, 3, None) <= Duration::from_millis(200));
        }
    }

    #[test]
    fn retry_after_is_a_floor() {
        let s = spec(Backoff::Constant, true);
        assert!(delay(&s, 2, Some(Duration::from_secs(2))) >= Duration::from_secs(2));
    }
}
