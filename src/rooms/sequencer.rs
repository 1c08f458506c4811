//! A room's sequencer: which sequences are committed, and how many messages
//! are handed to the log with their outcome still unknown.
//!
//! Invariants:
//! - `committed` only grows, and every sequence up to it is in the log.
//! - With local sequencing (the core numbers messages), the numbers handed
//!   out are exactly `committed+1 ..= committed+pending`: a commit moves
//!   `committed` up over them, a failed commit gives them all back
//!   (`pending` to 0), so no number is ever skipped or shown twice.
//! - While `pending > 0` the room must stay loaded: a reload would take
//!   `last` from the log, behind the numbers already handed out.

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Sequencer {
    committed: u64,
    pending: u64,
}

impl Sequencer {
    /// Takes over a log whose newest sequence is `last`.
    pub fn resume(last: u64) -> Sequencer {
        Sequencer {
            committed: last,
            pending: 0,
        }
    }

    /// The newest sequence stored and delivered.
    pub fn committed(&self) -> u64 {
        self.committed
    }

    /// Messages handed to the log whose outcome is not known yet.
    pub fn pending(&self) -> u64 {
        self.pending
    }

    /// Nothing is in flight: the log and this sequencer agree.
    pub fn is_settled(&self) -> bool {
        self.pending == 0
    }

    /// Numbers the next message (local sequencing).
    pub fn assign(&mut self) -> u64 {
        self.pending += 1;
        self.committed + self.pending
    }

    /// Counts a message handed to a log that numbers it itself.
    pub fn hand_over(&mut self) {
        self.pending += 1;
    }

    /// `count` handed-out messages were stored, the newest as `upto`.
    pub fn stored(&mut self, count: u64, upto: u64) {
        self.pending -= count.min(self.pending);
        self.committed = self.committed.max(upto);
    }

    /// Log mode: the room has delivered everything up to `to` (numbered by
    /// the log, whoever wrote it).
    pub fn advance(&mut self, to: u64) {
        self.committed = self.committed.max(to);
    }

    /// `count` handed-out messages were not stored. With local sequencing
    /// the caller fails every pending message of the room at once (later
    /// numbers follow the failed ones), so the numbers are all given back.
    pub fn failed(&mut self, count: u64) {
        self.pending -= count.min(self.pending);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn assigns_after_the_log_and_commits_in_order() {
        let mut s = Sequencer::resume(5);
        assert_eq!((s.assign(), s.assign()), (6, 7));
        assert!(!s.is_settled());
        s.stored(2, 7);
        assert_eq!((s.committed(), s.pending()), (7, 0));
        assert_eq!(s.assign(), 8);
    }

    #[test]
    fn a_failed_commit_gives_every_number_back() {
        let mut s = Sequencer::resume(5);
        s.assign();
        s.assign();
        s.failed(2);
        assert!(s.is_settled());
        assert_eq!(s.assign(), 6, "no gap after a failure");
    }
}
