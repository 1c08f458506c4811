//! Who is online in a room, and the changes not yet announced.
//!
//! A user is online while at least one of their connections is joined. Only
//! the first connection's join and the last one's leave are changes; changes
//! within one window are coalesced (a leave and a re-join cancel out).
//!
//! Users are kept ordered by name, so a snapshot is the first `MAX_LISTED`
//! entries — O(listed), not a sort of every member — and user names, which
//! clients choose, never meet a hash function here.

use std::collections::btree_map::Entry;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use crate::protocol::Status;

/// Most users listed in a `presence` frame (PROTOCOL.md §3).
pub const MAX_LISTED: usize = 1000;

struct Online {
    connections: u32,
    last_seen: u64,
    status: Status,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Change {
    Join,
    Leave,
}

#[derive(Default)]
pub struct Presence {
    users: BTreeMap<Arc<str>, Online>,
    /// Changes not yet announced, one per user at most.
    changes: BTreeMap<Arc<str>, Change>,
    /// Users whose status changed since the last announcement.
    statuses: BTreeSet<Arc<str>>,
    /// Bumped whenever a user comes online or goes offline.
    version: u64,
}

pub struct Snapshot<'a> {
    pub count: usize,
    /// (user, lastSeen ms, status), at most `MAX_LISTED`, by name.
    pub users: Vec<(&'a str, u64, &'a Status)>,
    pub truncated: bool,
}

/// One window's changes, each by name.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Changes {
    pub joins: Vec<Arc<str>>,
    pub leaves: Vec<Arc<str>>,
    /// Users still online whose status changed, and joiners whose status
    /// is not the default: (user, status now).
    pub statuses: Vec<(Arc<str>, Status)>,
}

impl Presence {
    /// A connection of `user` joined with the user's `status` (their most
    /// recent); returns whether the user came online.
    pub fn add(&mut self, user: &Arc<str>, now_ms: u64, status: &Status) -> bool {
        let online = self.users.entry(user.clone()).or_insert(Online {
            connections: 0,
            last_seen: now_ms,
            status: Status::default(),
        });
        online.connections += 1;
        online.last_seen = now_ms;
        let first = online.connections == 1;
        if first {
            online.status = status.clone();
            self.version += 1;
            self.change(user, Change::Join);
            if !status.is_default() {
                self.statuses.insert(user.clone());
            }
        }
        first
    }

    /// `user` set a status; returns whether it changed anything here.
    pub fn set_status(&mut self, user: &Arc<str>, status: &Status) -> bool {
        let Some(online) = self.users.get_mut(user) else {
            return false;
        };
        if online.status == *status {
            return false;
        }
        online.status = status.clone();
        self.version += 1;
        self.statuses.insert(user.clone());
        true
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
        self.version += 1;
        self.change(user, Change::Leave);
        self.statuses.remove(user);
        true
    }

    /// Records a change; the opposite change still unannounced cancels it.
    fn change(&mut self, user: &Arc<str>, change: Change) {
        match self.changes.entry(user.clone()) {
            Entry::Occupied(e) if *e.get() != change => {
                e.remove();
            }
            Entry::Occupied(_) => {}
            Entry::Vacant(e) => {
                e.insert(change);
            }
        }
    }

    /// Changes whenever the set of online users or a status does.
    pub fn version(&self) -> u64 {
        self.version
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
        !self.changes.is_empty() || !self.statuses.is_empty()
    }

    /// The changes since the last call.
    pub fn take_changes(&mut self) -> Changes {
        let mut out = Changes::default();
        for (user, change) in std::mem::take(&mut self.changes) {
            match change {
                Change::Join => out.joins.push(user),
                Change::Leave => out.leaves.push(user),
            }
        }
        for user in std::mem::take(&mut self.statuses) {
            if let Some(online) = self.users.get(&user) {
                out.statuses.push((user, online.status.clone()));
            }
        }
        out
    }

    /// The first `listed` (at most `MAX_LISTED`) users by name, and the count.
    pub fn snapshot(&self, listed: usize) -> Snapshot<'_> {
        let listed = listed.min(MAX_LISTED);
        let users: Vec<(&str, u64, &Status)> = self
            .users
            .iter()
            .take(listed)
            .map(|(u, o)| (&**u, o.last_seen, &o.status))
            .collect();
        Snapshot {
            count: self.users.len(),
            truncated: self.users.len() > users.len(),
            users,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_first_and_last_connections_are_changes() {
        let a: Arc<str> = "a".into();
        let on = Status::default();
        let mut p = Presence::default();
        assert!(p.add(&a, 1, &on));
        assert!(!p.add(&a, 2, &on));
        assert_eq!(p.take_changes().joins, vec![a.clone()]);
        assert!(!p.remove(&a));
        assert!(p.remove(&a));
        let c = p.take_changes();
        assert_eq!((c.joins, c.leaves), (vec![], vec![a.clone()]));
        assert_eq!(p.count(), 0);
    }

    #[test]
    fn leave_and_rejoin_in_one_window_cancel() {
        let a: Arc<str> = "a".into();
        let mut p = Presence::default();
        let on = Status::default();
        p.add(&a, 1, &on);
        p.take_changes();
        p.remove(&a);
        p.add(&a, 2, &on);
        assert!(!p.has_changes());
        let b: Arc<str> = "b".into();
        p.add(&b, 3, &on);
        p.remove(&b);
        assert!(!p.has_changes());
    }

    #[test]
    fn status_changes_are_coalesced_and_carried_by_joins() {
        use crate::protocol::Availability;
        let (a, b): (Arc<str>, Arc<str>) = ("a".into(), "b".into());
        let busy = Status {
            availability: Availability::Busy,
            text: None,
        };
        let away = Status {
            availability: Availability::Away,
            text: Some("lunch".into()),
        };
        let mut p = Presence::default();
        p.add(&a, 1, &Status::default());
        p.take_changes();
        assert!(p.set_status(&a, &busy));
        assert!(p.set_status(&a, &away));
        assert!(!p.set_status(&a, &away), "no change");
        assert!(!p.set_status(&b, &busy), "not online here");
        p.add(&b, 2, &busy);
        let c = p.take_changes();
        assert_eq!(c.joins, vec![b.clone()]);
        assert_eq!(
            c.statuses,
            vec![(a.clone(), away.clone()), (b.clone(), busy)]
        );
        assert_eq!(p.snapshot(10).users[0].2, &away);
    }

    #[test]
    fn snapshot_is_capped() {
        let mut p = Presence::default();
        for i in 0..(MAX_LISTED + 5) {
            p.add(&Arc::from(format!("u{i:05}")), 0, &Status::default());
        }
        let s = p.snapshot(usize::MAX);
        assert_eq!(
            (s.count, s.users.len(), s.truncated),
            (MAX_LISTED + 5, MAX_LISTED, true)
        );
        assert_eq!(s.users[0].0, "u00000", "by name");
        let s = p.snapshot(0);
        assert_eq!(
            (s.count, s.users.len(), s.truncated),
            (MAX_LISTED + 5, 0, true)
        );
    }
}
