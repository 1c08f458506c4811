//! Group commit's timing: when a shard hands its next batch to the log.

use std::time::{Duration, Instant};

/// When to hand the next batch to the log: not the instant the previous
/// commit comes back. Its acks go out then, and the publishers they
/// release answer within a round trip; a batch sent at once would carry
/// only those who were waiting already, so publishers would split into
/// alternate commits, each half as full. After a commit the driver waits
/// until as many messages wait as were outstanding (those accumulated and
/// those just acked), for at most `wait_after(commit time)`: twice the
/// commit, never over 3 ms, nothing when commits are quick.
///
/// Why that long: the acks of one commit go out one after another, so the
/// last released publisher answers about (publishers × CPU per message)
/// after the first — on a loaded machine as long as a commit that syncs,
/// or longer: 64 publishers' round trip takes ≈ 1.25 ms here with no store
/// at all, and a synced commit through the journal ≈ 0.9 ms. Waiting half
/// a commit left a fifth to a third of them to the next one, one and a
/// half commits about a sixth (51–53 of 64 per commit), twice the commit
/// about a tenth (57–58 of 64); the wait ends as soon as they are all
/// back, and a publisher that does not come back costs the others at most
/// that wait.
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
        self.until = wait_after(took).map(|wait| tokio::time::Instant::now() + wait);
    }

    /// Whether to keep accumulating rather than hand the batch on now.
    pub fn holds(&self, accumulated: usize) -> bool {
        accumulated > 0
            && accumulated < self.expect
            && self.until.is_some_and(|u| tokio::time::Instant::now() < u)
    }

    /// While it holds: how many more messages it waits for.
    pub fn missing(&self, accumulated: usize) -> Option<usize> {
        self.holds(accumulated).then(|| self.expect - accumulated)
    }
}

/// The longest to keep accumulating after a commit that took `took` (also
/// how long the log writer waits for the other active shards' batches).
pub fn wait_after(took: Duration) -> Option<Duration> {
    let wait = (took * 2).min(MAX_WAIT);
    (wait >= MIN_WAIT).then_some(wait)
}

/// A longer wait would add more latency than a sync saves.
const MAX_WAIT: Duration = Duration::from_millis(3);
/// Commits this quick (no sync) are not worth waiting for.
const MIN_WAIT: Duration = Duration::from_micros(50);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_wait_follows_the_commit_time_within_bounds() {
        let ms = Duration::from_millis;
        assert_eq!(wait_after(ms(1)), Some(ms(2)));
        assert_eq!(wait_after(ms(10)), Some(MAX_WAIT), "capped");
        assert_eq!(wait_after(Duration::from_micros(20)), None, "no sync");
        assert_eq!(wait_after(Duration::ZERO), None);
    }

    #[tokio::test(start_paused = true)]
    async fn holds_until_the_outstanding_are_back_or_the_wait_ends() {
        let mut g = Gather::default();
        g.sent();
        // A commit that took 1 ms came back with 4 messages outstanding.
        g.sent_at = Some(Instant::now() - Duration::from_millis(1));
        g.committed(4);
        assert!(!g.holds(0), "nothing to send: nothing held");
        assert!(g.holds(1));
        assert!(g.holds(3));
        assert_eq!(g.missing(1), Some(3));
        assert!(!g.holds(4), "all back: sent at once");
        assert_eq!(g.missing(4), None);
        tokio::time::advance(Duration::from_micros(1800)).await;
        assert!(g.holds(3), "within 2 × 1 ms");
        tokio::time::advance(Duration::from_micros(400)).await;
        assert!(!g.holds(3), "the wait is over");
        // Handing the batch on ends the wait.
        g.sent_at = Some(Instant::now() - Duration::from_millis(1));
        g.committed(4);
        assert!(g.holds(1));
        g.sent();
        assert!(!g.holds(1));
    }
}
