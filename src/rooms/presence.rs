//! Who is online in a room, and the changes not yet announced.
//!
//! A user is online while at least one of their connections is joined. Only
//! the first connection's join and the last one's leave are changes; changes
//! within one window are coalesced (a leave and a re-join cancel out).

use std::collections::HashMap;
use std::sync::Arc;

/// Most users listed in a `presence` frame (PROTOCOL.md §3).
pub const MAX_LISTED: usize = 1000;

struct Online {
    connections: u32,
    last_seen: u64,
}

#[derive(Default)]
pub struct Presence {
    users: HashMap<Arc<str>, Online>,
    joins: Vec<Arc<str>>,
    leaves: Vec<Arc<str>>,
}

pub struct Snapshot<'a> {
    pub count: usize,
    /// (user, lastSeen ms), at most `MAX_LISTED`, by name.
    pub users: Vec<(&'a str, u64)>,
    pub truncated: bool,
}

impl Presence {
    /// A connection of `user` joined; returns whether the user came online.
    pub fn add(&mut self, user: &Arc<str>, now_ms: u64) -> bool {
        let online = self.users.entry(user.clone()).or_insert(Online {
            connections: 0,
            last_seen: now_ms,
        });
        online.connections += 1;
        online.last_seen = now_ms;
        let first = online.connections == 1;
        if first {
            match self.leaves.iter().position(|u| u == user) {
                Some(i) => {
                    self.leaves.swap_remove(i);
                }
                None => self.joins.push(user.clone()),
            }
        }
        first
    }

    /// A connection of `user` left; returns whether the user went offline.
    pub fn remove(&mut self, user: &Arc<str>) -> bool {
        let Some(online) = self.users.get_mut(user) else {
            return false;
        };
        online.connections -= 1;
        if online.connections > 0 {
            return false;
        }
        self.users.remove(user);
        match self.joins.iter().position(|u| u == user) {
            Some(i) => {
                self.joins.swap_remove(i);
            }
            None => self.leaves.push(user.clone()),
        }
        true
    }

    pub fn seen(&mut self, user: &Arc<str>, now_ms: u64) {
        if let Some(o) = self.users.get_mut(user) {
            o.last_seen = now_ms;
        }
    }

    pub fn count(&self) -> usize {
        self.users.len()
    }

    pub fn has_changes(&self) -> bool {
        !self.joins.is_empty() || !self.leaves.is_empty()
    }

    /// The changes since the last call: (joins, leaves).
    pub fn take_changes(&mut self) -> (Vec<Arc<str>>, Vec<Arc<str>>) {
        (
            std::mem::take(&mut self.joins),
            std::mem::take(&mut self.leaves),
        )
    }

    pub fn snapshot(&self) -> Snapshot<'_> {
        let mut users: Vec<(&str, u64)> = self
            .users
            .iter()
            .map(|(u, o)| (&**u, o.last_seen))
            .collect();
        users.sort_unstable();
        let truncated = users.len() > MAX_LISTED;
        users.truncate(MAX_LISTED);
        Snapshot {
            count: self.users.len(),
            users,
            truncated,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_first_and_last_connections_are_changes() {
        let a: Arc<str> = "a".into();
        let mut p = Presence::default();
        assert!(p.add(&a, 1));
        assert!(!p.add(&a, 2));
        assert_eq!(p.take_changes(), (vec![a.clone()], vec![]));
        assert!(!p.remove(&a));
        assert!(p.remove(&a));
        assert_eq!(p.take_changes(), (vec![], vec![a.clone()]));
        assert_eq!(p.count(), 0);
    }

    #[test]
    fn leave_and_rejoin_in_one_window_cancel() {
        let a: Arc<str> = "a".into();
        let mut p = Presence::default();
        p.add(&a, 1);
        p.take_changes();
        p.remove(&a);
        p.add(&a, 2);
        assert!(!p.has_changes());
        let b: Arc<str> = "b".into();
        p.add(&b, 3);
        p.remove(&b);
        assert!(!p.has_changes());
    }

    #[test]
    fn snapshot_is_capped() {
        let mut p = Presence::default();
        for i in 0..(MAX_LISTED + 5) {
            p.add(&Arc::from(format!("u{i:05}")), 0);
        }
        let s = p.snapshot();
        assert_eq!(
            (s.count, s.users.len(), s.truncated),
            (MAX_LISTED + 5, MAX_LISTED, true)
        );
    }
}
