//! What a user's sessions share: their status (the most recent set by any
//! of them wins) and the rooms any of them is in, so that a status change
//! reaches every room that shows the user. The sessions of one user hold
//! the same `Account` (see `session::Accounts`); the room core only reads
//! the status when a connection joins. It also counts the user's open
//! sessions, for `--max-conns-per-user`.

use std::sync::atomic::{AtomicUsize, Ordering};

use parking_lot::Mutex;

use super::room_set::RoomCounts;
use crate::protocol::{RoomName, Status};

#[derive(Default)]
pub struct Account {
    /// Short locks only: a join reads it, a `status` frame writes it.
    status: Mutex<Status>,
    /// Rooms the user's sessions are joined to, with how many of them.
    rooms: Mutex<RoomCounts>,
    /// Sessions of the user that hold a slot (`session::Accounts::admit`).
    sessions: AtomicUsize,
}

impl Account {
    pub fn status(&self) -> Status {
        self.status.lock().clone()
    }

    /// Sets the status; returns the rooms that must hear of it (none when
    /// nothing changed).
    pub fn set_status(&self, status: Status) -> Vec<RoomName> {
        {
            let mut s = self.status.lock();
            if *s == status {
                return Vec::new();
            }
            *s = status;
        }
        self.rooms.lock().rooms().cloned().collect()
    }

    /// One of the user's sessions joined `room`.
    pub fn joined(&self, room: &RoomName) {
        self.rooms.lock().add(room);
    }

    /// One of the user's sessions left `room`.
    pub fn left(&self, room: &RoomName) {
        self.rooms.lock().sub(room);
    }

    /// The user's sessions holding a slot.
    pub fn sessions(&self) -> usize {
        self.sessions.load(Ordering::Acquire)
    }

    /// Takes a slot unless `max` are taken. Callers serialize the check
    /// (`Accounts::admit` holds its map's lock), so two sessions never
    /// both take the last slot; a slot given back meanwhile only makes
    /// the check stricter for that instant.
    pub(crate) fn take_slot(&self, max: Option<usize>) -> bool {
        if max.is_some_and(|max| self.sessions() >= max) {
            return false;
        }
        self.sessions.fetch_add(1, Ordering::AcqRel);
        true
    }

    pub(crate) fn give_slot(&self) {
        self.sessions.fetch_sub(1, Ordering::AcqRel);
    }
}
