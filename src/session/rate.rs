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

/// A limit's parameters: passed to each check rather than kept in every
/// limiter, since they are the same for every connection (three limiters
/// in each idle session's memory).
#[derive(Clone, Copy, Debug)]
pub struct Limit {
    pub per_sec: f64,
    pub burst: f64,
}

impl Limit {
    pub fn new(per_sec: f64, burst: f64) -> Limit {
        Limit {
            per_sec: per_sec.max(0.0),
            burst: burst.max(1.0),
        }
    }
}

pub struct RateLimiter {
    tokens: f64,
    last: Instant,
    /// Times of recent refusals, at most `MAX_REFUSALS + 1` entries; made
    /// at the first refusal (most connections are never refused). Boxed
    /// so an idle limiter holds one pointer, not an empty deque's four
    /// words: every connection holds several limiters.
    #[allow(clippy::box_collection)]
    refusals: Option<Box<VecDeque<Instant>>>,
}

impl RateLimiter {
    /// A full bucket.
    pub fn new(limit: Limit, now: Instant) -> RateLimiter {
        RateLimiter {
            tokens: limit.burst,
            last: now,
            refusals: None,
        }
    }

    pub fn check(&mut self, limit: Limit, now: Instant) -> Verdict {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + elapsed * limit.per_sec).min(limit.burst);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            return Verdict::Allow;
        }
        let refusals = self.refusals.get_or_insert_with(Default::default);
        while refusals
            .front()
            .is_some_and(|t| now.saturating_duration_since(*t) > REFUSAL_WINDOW)
        {
            refusals.pop_front();
        }
        refusals.push_back(now);
        if refusals.len() > MAX_REFUSALS {
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
        let limit = Limit::new(50.0, 100.0);
        let mut r = RateLimiter::new(limit, t0);
        for _ in 0..100 {
            assert_eq!(r.check(limit, t0), Verdict::Allow);
        }
        assert_eq!(r.check(limit, t0), Verdict::Refuse);
        // 100 ms later, 5 more tokens.
        let t1 = t0 + Duration::from_millis(100);
        for _ in 0..5 {
            assert_eq!(r.check(limit, t1), Verdict::Allow);
        }
        assert_eq!(r.check(limit, t1), Verdict::Refuse);
    }

    #[test]
    fn too_many_refusals_close() {
        let t0 = Instant::now();
        let limit = Limit::new(0.0, 1.0);
        let mut r = RateLimiter::new(limit, t0);
        assert_eq!(r.check(limit, t0), Verdict::Allow);
        for _ in 0..MAX_REFUSALS {
            assert_eq!(r.check(limit, t0), Verdict::Refuse);
        }
        assert_eq!(r.check(limit, t0), Verdict::Close);
    }

    #[test]
    fn refusals_age_out() {
        let t0 = Instant::now();
        let limit = Limit::new(0.0, 1.0);
        let mut r = RateLimiter::new(limit, t0);
        r.check(limit, t0);
        for _ in 0..MAX_REFUSALS {
            r.check(limit, t0);
        }
        let later = t0 + REFUSAL_WINDOW + Duration::from_secs(1);
        assert_eq!(r.check(limit, later), Verdict::Refuse);
    }
}
