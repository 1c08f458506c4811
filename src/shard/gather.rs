//! Group commit's timing: when a shard hands its next batch to the log.

use std::time::{Duration, Instant};

/// When to hand the next batch to the log: not the instant the previous
/// commit comes back. Its acks go out then, and the publishers they
/// release answer within a round trip; a batch sent at once would carry
/// only those who were waiting already, so publishers would split into
/// alternate commits, each half as full. After a commit the driver waits
/// until as many messages wait as were outstanding (those accumulated and
/// those just acked), for at most half the time the commit took (and never
/// over 2 ms) — a small delay against a commit that costs a sync, and
/// nothing when commits are quick.
#[derive(Default)]
pub struct Gather {
    /// When the batch in flight was handed on.
    sent_at: Option<Instant>,
    /// Messages to wait for: those outstanding when the last commit came back.
    expect: usize,
    /// How long to keep accumulating at most (None: no wait under way).
    pub until: Option<tokio::time::Instant>,
}

impl Gather {
    pub fn sent(&mut self) {
        self.sent_at = Some(Instant::now());
        self.until = None;
    }

    /// A commit came back with `outstanding` messages accumulated or acked.
    pub fn committed(&mut self, outstanding: usize) {
        let took = self.sent_at.take().map_or(Duration::ZERO, |t| t.elapsed());
        self.expect = outstanding;
        let wait = (took / 2).min(Duration::from_millis(2));
        self.until =
            (wait >= Duration::from_micros(50)).then(|| tokio::time::Instant::now() + wait);
    }

    /// Whether to keep accumulating rather than hand the batch on now.
    pub fn holds(&self, accumulated: usize) -> bool {
        accumulated > 0
            && accumulated < self.expect
            && self.until.is_some_and(|u| tokio::time::Instant::now() < u)
    }
}
