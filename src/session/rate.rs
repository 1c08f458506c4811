//! Per-connection rate limit on `message` frames (PROTOCOL.md §6): a token
//! bucket, plus a count of refusals over a sliding window that, past its
//! bound, closes the connection with 4029. Takes `now`; no clock inside.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

pub const REFUSAL_WINDOW: Duration = Duration::from_secs(10);
pub const MAX_REFUSALS: usize = 100;

#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    Allow,
    Refuse,
    /// Too many refusals: close the connection.
    Close,
}

pub struct RateLimiter {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
    /// Times of recent refusals, at most `MAX_REFUSALS + 1` entries.
    refusals: VecDeque<Instant>,
}

impl RateLimiter {
    pub fn new(rate_per_sec: f64, burst: f64, now: Instant) -> RateLimiter {
        let burst = burst.max(1.0);
        RateLimiter {
            rate: rate_per_sec.max(0.0),
            burst,
            tokens: burst,
            last: now,
            refusals: VecDeque::new(),
        }
    }

    pub fn check(&mut self, now: Instant) -> Verdict {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            return Verdict::Allow;
        }
        while self
            .refusals
            .front()
            .is_some_and(|t| now.saturating_duration_since(*t) > REFUSAL_WINDOW)
        {
            self.refusals.pop_front();
        }
        self.refusals.push_back(now);
        if self.refusals.len() > MAX_REFUSALS {
            Verdict::Close
        } else {
            Verdict::Refuse
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn burst_then_rate() {
        let t0 = Instant::now();
        let mut r = RateLimiter::new(50.0, 100.0, t0);
        for _ in 0..100 {
            assert_eq!(r.check(t0), Verdict::Allow);
        }
        assert_eq!(r.check(t0), Verdict::Refuse);
        // 100 ms later, 5 more tokens.
        let t1 = t0 + Duration::from_millis(100);
        for _ in 0..5 {
            assert_eq!(r.check(t1), Verdict::Allow);
        }
        assert_eq!(r.check(t1), Verdict::Refuse);
    }

    #[test]
    fn too_many_refusals_close() {
        let t0 = Instant::now();
        let mut r = RateLimiter::new(0.0, 1.0, t0);
        assert_eq!(r.check(t0), Verdict::Allow);
        for _ in 0..MAX_REFUSALS {
            assert_eq!(r.check(t0), Verdict::Refuse);
        }
        assert_eq!(r.check(t0), Verdict::Close);
    }

    #[test]
    fn refusals_age_out() {
        let t0 = Instant::now();
        let mut r = RateLimiter::new(0.0, 1.0, t0);
        r.check(t0);
        for _ in 0..MAX_REFUSALS {
            r.check(t0);
        }
        let later = t0 + REFUSAL_WINDOW + Duration::from_secs(1);
        assert_eq!(r.check(later), Verdict::Refuse);
    }
}
