//! Small per-connection and per-user collections of rooms, kept as sorted
//! vectors: a connection is in a few rooms, and a hash table for one room
//! costs ~120 B (four buckets and their control bytes) in every idle
//! connection, where a vector costs one element. Lookups are binary
//! searches, so a connection at the room limit stays cheap too.

use crate::protocol::RoomName;

/// A set of rooms (a session's joined rooms).
#[derive(Default)]
pub struct RoomSet(Vec<RoomName>);

impl RoomSet {
    pub fn contains(&self, room: &RoomName) -> bool {
        self.0.binary_search(room).is_ok()
    }

    /// Adds `room`; false if it was there.
    pub fn insert(&mut self, room: RoomName) -> bool {
        match self.0.binary_search(&room) {
            Ok(_) => false,
            Err(at) => {
                // One element at a time: most sessions are in one room.
                self.0.reserve_exact(1);
                self.0.insert(at, room);
                true
            }
        }
    }

    /// Removes `room`; false if it was not there.
    pub fn remove(&mut self, room: &RoomName) -> bool {
        match self.0.binary_search(room) {
            Ok(at) => {
                self.0.remove(at);
                true
            }
            Err(_) => false,
        }
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = &RoomName> {
        self.0.iter()
    }

    /// Empties the set, returning its rooms.
    pub fn take(&mut self) -> Vec<RoomName> {
        std::mem::take(&mut self.0)
    }
}

/// Rooms with a count each (how many of a user's sessions are in them).
#[derive(Default)]
pub struct RoomCounts(Vec<(RoomName, usize)>);

impl RoomCounts {
    fn find(&self, room: &RoomName) -> Result<usize, usize> {
        self.0.binary_search_by(|(r, _)| r.cmp(room))
    }

    /// Counts one more for `room`.
    pub fn add(&mut self, room: &RoomName) {
        match self.find(room) {
            Ok(at) => self.0[at].1 += 1,
            Err(at) => {
                self.0.reserve_exact(1);
                self.0.insert(at, (room.clone(), 1));
            }
        }
    }

    /// Counts one less for `room`, forgetting it at zero.
    pub fn sub(&mut self, room: &RoomName) {
        if let Ok(at) = self.find(room) {
            self.0[at].1 -= 1;
            if self.0[at].1 == 0 {
                self.0.remove(at);
            }
        }
    }

    pub fn rooms(&self) -> impl Iterator<Item = &RoomName> {
        self.0.iter().map(|(r, _)| r)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(name: &str) -> RoomName {
        RoomName::parse(name).unwrap()
    }

    #[test]
    fn a_set_keeps_each_room_once() {
        let mut s = RoomSet::default();
        assert!(s.insert(r("b")) && s.insert(r("a")) && !s.insert(r("b")));
        assert!(s.contains(&r("a")) && !s.contains(&r("c")));
        assert_eq!(s.len(), 2);
        assert!(s.remove(&r("a")) && !s.remove(&r("a")));
        assert_eq!(s.take(), vec![r("b")]);
        assert!(s.is_empty());
    }

    #[test]
    fn counts_forget_a_room_at_zero() {
        let mut c = RoomCounts::default();
        c.add(&r("x"));
        c.add(&r("x"));
        c.add(&r("a"));
        c.sub(&r("x"));
        assert_eq!(c.rooms().cloned().collect::<Vec<_>>(), vec![r("a"), r("x")]);
        c.sub(&r("x"));
        c.sub(&r("nope"));
        assert_eq!(c.rooms().cloned().collect::<Vec<_>>(), vec![r("a")]);
    }
}
