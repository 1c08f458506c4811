//! What the writer knows of each room's newest sequence, so that a commit
//! checks the sequences of a batch without reading each room's newest
//! from the file: a read of a room's last key is a B-tree descent, once
//! per room per commit: ≈ 5 % of the log writer's time (0.8 % of the
//! server's) in a burst into 100 rooms × 10 on the durable store.
//!
//! Kept as of the last commit, changed only inside a write transaction
//! under the writer's lock; the writer drops it whole when a write fails
//! or the file is reopened (it may then know more than the file), and
//! reads it again from the journal.

use std::collections::HashMap;

/// How many rooms' newest sequences in the messages table are kept at
/// most: ≈ 1.5 MB. Past it the cache starts again empty, and each room's
/// next commit reads its newest from the file once.
const SETTLED_MAX: usize = 65_536;

#[derive(Debug, Default)]
pub(super) struct Tails {
    /// Room id → its newest sequence in the journal, for every room with
    /// entries there (its next messages go after them, in the journal).
    journal: HashMap<u64, u64>,
    /// Room id → its newest sequence in the messages table, for rooms with
    /// none in the journal whose newest the writer has written or read
    /// since it last started afresh. A room not here is read from the file.
    settled: HashMap<u64, u64>,
}

impl Tails {
    /// As read from the journal at open or after a failed write: nothing
    /// known of the messages table yet.
    pub fn from_journal(journal: HashMap<u64, u64>) -> Tails {
        Tails {
            journal,
            settled: HashMap::new(),
        }
    }

    /// The room's newest sequence, if it has entries in the journal.
    pub fn in_journal(&self, room: u64) -> Option<u64> {
        self.journal.get(&room).copied()
    }

    /// The room's newest sequence in the messages table, if known (only
    /// for a room with nothing in the journal).
    pub fn settled(&self, room: u64) -> Option<u64> {
        self.settled.get(&room).copied()
    }

    pub fn journal_is_empty(&self) -> bool {
        self.journal.is_empty()
    }

    /// The room's newest is now `last`, in the journal.
    pub fn journaled(&mut self, room: u64, last: u64) {
        self.settled.remove(&room);
        self.journal.insert(room, last);
    }

    /// The room's newest is now `last`, in the messages table, and it has
    /// nothing in the journal.
    pub fn settle(&mut self, room: u64, last: u64) {
        debug_assert!(!self.journal.contains_key(&room));
        if self.settled.len() >= SETTLED_MAX && !self.settled.contains_key(&room) {
            self.settled.clear();
        }
        self.settled.insert(room, last);
    }

    /// The journal was moved into the messages table: its rooms' newest
    /// are there now.
    pub fn folded(&mut self) {
        let journal = std::mem::take(&mut self.journal);
        for (room, last) in journal {
            self.settle(room, last);
        }
    }

    /// The room was deleted whole.
    pub fn forget(&mut self, room: u64) {
        self.journal.remove(&room);
        self.settled.remove(&room);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_room_is_in_the_journal_or_settled_never_both() {
        let mut t = Tails::from_journal(HashMap::from([(1, 5)]));
        assert_eq!((t.in_journal(1), t.settled(1)), (Some(5), None));
        assert_eq!((t.in_journal(2), t.settled(2)), (None, None));
        t.settle(2, 9);
        assert_eq!((t.in_journal(2), t.settled(2)), (None, Some(9)));
        // A settled room's next few messages go to the journal.
        t.journaled(2, 10);
        assert_eq!((t.in_journal(2), t.settled(2)), (Some(10), None));
        t.folded();
        assert!(t.journal_is_empty());
        assert_eq!(t.settled(1), Some(5));
        assert_eq!(t.settled(2), Some(10));
        t.forget(2);
        assert_eq!((t.in_journal(2), t.settled(2)), (None, None));
    }

    #[test]
    fn the_settled_rooms_are_bounded() {
        let mut t = Tails::default();
        for room in 0..SETTLED_MAX as u64 {
            t.settle(room, room + 1);
        }
        // A known room is updated in place…
        t.settle(7, 100);
        assert_eq!(t.settled(7), Some(100));
        assert_eq!(t.settled.len(), SETTLED_MAX);
        // …one more starts the cache afresh, with it alone.
        t.settle(u64::MAX, 1);
        assert_eq!(t.settled.len(), 1);
        assert_eq!(t.settled(7), None);
        assert_eq!(t.settled(u64::MAX), Some(1));
    }
}
