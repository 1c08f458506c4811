//! Who is online in a room, and the changes not yet announced.
//!
//! A user is online while at least one of their connections is joined. Only
//! the first connection's join and the last one's leave are changes; changes
//! within one window are coalesced (a leave and a re-join cancel out).
//!
//! Users are kept ordered by name, so a snapshot is the first `MAX_LISTED`
//! entries — O(listed), not a sort of every member — and user names, which
//! clients choose, never meet a hash function here.
//!
//! In cluster mode a user is online while any node has a connection of
//! theirs in the room: this node's own connections are counted here, other
//! nodes' users come as each node's set, under that node's version (a
//! change older than what is known is dropped). The changes of this node's
//! own users (first / last local connection) are kept apart too, to tell
//! the other nodes.

use std::collections::btree_map::Entry;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use crate::protocol::{Format, Status};
use crate::store::RemoteNode;

/// Most users listed in a `presence` frame (PROTOCOL.md §3).
pub const MAX_LISTED: usize = 1000;

struct Online {
    /// This node's connections of the user in the room.
    connections: u32,
    /// Other nodes that list the user.
    nodes: u32,
    last_seen: u64,
    status: Status,
    /// The user's entry in a listing, as last encoded for each format:
    /// dropped whenever `last_seen` or `status` changes. Only users a
    /// snapshot listed have one (among the first `MAX_LISTED` by name at
    /// the time); one pushed past them by later joiners keeps it until it
    /// changes or leaves: in a room far above `MAX_LISTED` whose users
    /// arrive in random name order, ≈ MAX_LISTED × ln(users / MAX_LISTED)
    /// of them, ≈ 130 bytes each.
    entries: Option<Box<Entries>>,
}

/// Encoded entries of one user, by `Format::index`.
type Entries = [Option<Box<[u8]>>; Format::COUNT];

impl Online {
    fn new(now_ms: u64) -> Online {
        Online {
            connections: 0,
            nodes: 0,
            last_seen: now_ms,
            status: Status::default(),
            entries: None,
        }
    }

    fn set_last_seen(&mut self, now_ms: u64) {
        if self.last_seen != now_ms {
            self.last_seen = now_ms;
            self.entries = None;
        }
    }

    fn set_status(&mut self, status: &Status) {
        self.status = status.clone();
        self.entries = None;
    }
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
    /// Cluster mode: changes of this node's own users not yet told to the
    /// other nodes (None: one node, nobody to tell).
    local: Option<BTreeMap<Arc<str>, Change>>,
    /// Cluster mode: other nodes' users, by node.
    remote: BTreeMap<Arc<str>, Remote>,
}

#[derive(Default)]
struct Remote {
    version: u64,
    users: BTreeSet<Arc<str>>,
}

/// What another node said about its users in a room.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RemoteUpdate {
    /// Its users changed.
    Diff {
        node: Arc<str>,
        version: u64,
        joins: Vec<Arc<str>>,
        leaves: Vec<Arc<str>>,
    },
    /// Every node's users as the log has them (a load, a resubscription).
    Snapshot(Vec<RemoteNode>),
}

pub struct Snapshot<'a> {
    pub count: usize,
    /// (user, lastSeen ms, status), at most `MAX_LISTED`, by name.
    pub users: Vec<(&'a str, u64, &'a Status)>,
    pub truncated: bool,
}

/// The first users by name as encoded entries (see `Presence::listing`).
pub struct Listing<'a> {
    pub count: usize,
    pub entries: Vec<&'a [u8]>,
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
    /// Presence of a room other nodes share: this node's own changes are
    /// kept to be told to them.
    pub fn shared() -> Presence {
        Presence {
            local: Some(BTreeMap::new()),
            ..Presence::default()
        }
    }

    /// A connection of `user` joined with the user's `status` (their most
    /// recent); returns whether the user came online.
    pub fn add(&mut self, user: &Arc<str>, now_ms: u64, status: &Status) -> bool {
        let online = self
            .users
            .entry(user.clone())
            .or_insert(Online::new(now_ms));
        online.connections += 1;
        online.set_last_seen(now_ms);
        if online.connections > 1 {
            return false;
        }
        // Online through another node already: this node's first
        // connection brings the user's status as this node knows it.
        let came = online.nodes == 0;
        let restatus = online.status != *status;
        if came || restatus {
            online.set_status(status);
        }
        if let Some(local) = &mut self.local {
            record(local, user, Change::Join);
        }
        if came {
            self.version += 1;
            record(&mut self.changes, user, Change::Join);
            if !status.is_default() {
                self.statuses.insert(user.clone());
            }
        } else if restatus {
            self.version += 1;
            self.statuses.insert(user.clone());
        }
        came
    }

    /// `user` set a status; returns whether it changed anything here.
    pub fn set_status(&mut self, user: &Arc<str>, status: &Status) -> bool {
        let Some(online) = self.users.get_mut(user) else {
            return false;
        };
        if online.status == *status {
            return false;
        }
        online.set_status(status);
        self.version += 1;
        self.statuses.insert(user.clone());
        true
    }

    /// A connection of `user` left; returns whether the user went offline.
    pub fn remove(&mut self, user: &Arc<str>) -> bool {
        let Some(online) = self.users.get_mut(user) else {
            return false;
        };
        if online.connections == 0 {
            return false;
        }
        online.connections -= 1;
        if online.connections > 0 {
            return false;
        }
        if let Some(local) = &mut self.local {
            record(local, user, Change::Leave);
        }
        self.drop_if_gone(user)
    }

    /// Removes a user nobody has any more; returns whether it went offline.
    fn drop_if_gone(&mut self, user: &Arc<str>) -> bool {
        match self.users.get(user) {
            Some(o) if o.connections == 0 && o.nodes == 0 => {
                self.users.remove(user);
                self.version += 1;
                record(&mut self.changes, user, Change::Leave);
                self.statuses.remove(user);
                true
            }
            _ => false,
        }
    }

    fn remote_add(&mut self, user: &Arc<str>, now_ms: u64) {
        let online = self
            .users
            .entry(user.clone())
            .or_insert(Online::new(now_ms));
        online.nodes += 1;
        if online.nodes == 1 && online.connections == 0 {
            online.set_last_seen(now_ms);
            self.version += 1;
            record(&mut self.changes, user, Change::Join);
        }
    }

    fn remote_remove(&mut self, user: &Arc<str>) {
        if let Some(online) = self.users.get_mut(user) {
            online.nodes = online.nodes.saturating_sub(1);
            self.drop_if_gone(user);
        }
    }

    /// Applies what another node said; changes older than what is known of
    /// that node are dropped. A snapshot never removes a node it does not
    /// list (a node's death comes through `node_gone`).
    pub fn apply_remote(&mut self, update: RemoteUpdate, now_ms: u64) {
        match update {
            RemoteUpdate::Diff {
                node,
                version,
                joins,
                leaves,
            } => {
                let known = self.remote.entry(node.clone()).or_default();
                if version <= known.version {
                    return;
                }
                known.version = version;
                for user in leaves {
                    let known = self.remote.get_mut(&node).expect("just inserted");
                    if known.users.remove(&user) {
                        self.remote_remove(&user);
                    }
                }
                for user in joins {
                    let known = self.remote.get_mut(&node).expect("just inserted");
                    if known.users.insert(user.clone()) {
                        self.remote_add(&user, now_ms);
                    }
                }
            }
            RemoteUpdate::Snapshot(nodes) => {
                for n in nodes {
                    let known = self.remote.entry(n.node.clone()).or_default();
                    if n.version <= known.version && n.version != 0 {
                        continue;
                    }
                    known.version = n.version;
                    let users: BTreeSet<Arc<str>> = n.users.into_iter().collect();
                    let old = std::mem::replace(&mut known.users, users.clone());
                    for user in old.difference(&users) {
                        self.remote_remove(user);
                    }
                    for user in users.difference(&old) {
                        self.remote_add(user, now_ms);
                    }
                }
            }
        }
    }

    /// Another node is dead: its users are gone.
    pub fn node_gone(&mut self, node: &str) {
        if let Some(known) = self.remote.remove(node) {
            for user in known.users {
                self.remote_remove(&user);
            }
        }
    }

    /// This node's own changes since the last call: (joins, leaves).
    pub fn take_local(&mut self) -> (Vec<Arc<str>>, Vec<Arc<str>>) {
        let (mut joins, mut leaves) = (Vec::new(), Vec::new());
        if let Some(local) = &mut self.local {
            for (user, change) in std::mem::take(local) {
                match change {
                    Change::Join => joins.push(user),
                    Change::Leave => leaves.push(user),
                }
            }
        }
        (joins, leaves)
    }

    /// Users with a connection on this node.
    pub fn local_users(&self) -> Vec<Arc<str>> {
        self.users
            .iter()
            .filter(|(_, o)| o.connections > 0)
            .map(|(u, _)| u.clone())
            .collect()
    }

    /// Changes whenever the set of online users or a status does.
    pub fn version(&self) -> u64 {
        self.version
    }

    pub fn seen(&mut self, user: &Arc<str>, now_ms: u64) {
        if let Some(o) = self.users.get_mut(user) {
            o.set_last_seen(now_ms);
        }
    }

    pub fn count(&self) -> usize {
        self.users.len()
    }

    pub fn has_changes(&self) -> bool {
        !self.changes.is_empty() || !self.statuses.is_empty()
    }

    /// Whether this node's own users changed since they were last told.
    pub fn has_local_changes(&self) -> bool {
        self.local.as_ref().is_some_and(|l| !l.is_empty())
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

    /// A listing of the first `listed` (at most `MAX_LISTED`) users by name,
    /// as entries encoded for `format` by `encode` (user, lastSeen,
    /// status): each user's entry is encoded once and kept until their
    /// `lastSeen` or status changes.
    pub fn listing<F>(&mut self, listed: usize, format: Format, encode: F) -> Listing<'_>
    where
        F: Fn(&str, u64, &Status) -> Box<[u8]>,
    {
        let listed = listed.min(MAX_LISTED);
        let count = self.users.len();
        let slot = format.index();
        let entries: Vec<&[u8]> = self
            .users
            .iter_mut()
            .take(listed)
            .map(|(user, o)| {
                let kept = o.entries.get_or_insert_with(Default::default);
                let entry = kept[slot].get_or_insert_with(|| encode(user, o.last_seen, &o.status));
                &entry[..]
            })
            .collect();
        Listing {
            count,
            truncated: count > entries.len(),
            entries,
        }
    }
}

/// Records a change; the opposite change still unannounced cancels it.
fn record(changes: &mut BTreeMap<Arc<str>, Change>, user: &Arc<str>, change: Change) {
    match changes.entry(user.clone()) {
        Entry::Occupied(e) if *e.get() != change => {
            e.remove();
        }
        Entry::Occupied(_) => {}
        Entry::Vacant(e) => {
            e.insert(change);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::Availability;

    fn diff(node: &str, version: u64, joins: &[&str], leaves: &[&str]) -> RemoteUpdate {
        RemoteUpdate::Diff {
            node: node.into(),
            version,
            joins: joins.iter().map(|u| Arc::from(*u)).collect(),
            leaves: leaves.iter().map(|u| Arc::from(*u)).collect(),
        }
    }

    #[test]
    fn a_user_is_online_while_any_node_has_them() {
        let ann: Arc<str> = "ann".into();
        let mut p = Presence::shared();
        p.apply_remote(diff("n2", 1, &["ann", "bob"], &[]), 0);
        assert_eq!(p.count(), 2);
        assert_eq!(p.take_changes().joins.len(), 2);
        // ann also connects here: no change for members, one for the nodes.
        assert!(!p.add(&ann, 1, &Status::default()));
        assert_eq!(p.take_local(), (vec![ann.clone()], vec![]));
        assert!(!p.has_changes());
        // n2 loses ann: still online here.
        p.apply_remote(diff("n2", 2, &[], &["ann"]), 2);
        assert!(!p.has_changes());
        // A stale change from n2 is dropped.
        p.apply_remote(diff("n2", 1, &["carl"], &[]), 3);
        assert_eq!(p.count(), 2);
        // n2 dies: bob leaves; ann stays (connected here).
        p.node_gone("n2");
        let c = p.take_changes();
        assert_eq!((c.joins, c.leaves), (vec![], vec!["bob".into()]));
        assert!(p.remove(&ann));
        assert_eq!(p.count(), 0);
        assert_eq!(p.take_local(), (vec![], vec![ann]));
    }

    #[test]
    fn a_snapshot_keeps_newer_changes() {
        let mut p = Presence::shared();
        p.apply_remote(diff("n2", 5, &["ann"], &[]), 0);
        let older = RemoteNode {
            node: "n2".into(),
            version: 4,
            users: vec![],
        };
        let other = RemoteNode {
            node: "n3".into(),
            version: 1,
            users: vec!["cat".into()],
        };
        p.apply_remote(RemoteUpdate::Snapshot(vec![older, other]), 1);
        assert_eq!(p.count(), 2, "ann (newer than the snapshot) and cat");
    }

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
    fn a_listing_encodes_each_entry_once_until_it_changes() {
        use std::cell::Cell;
        let encoded = Cell::new(0);
        let encode = |user: &str, seen: u64, status: &Status| {
            encoded.set(encoded.get() + 1);
            let text = status.text.as_deref().unwrap_or("");
            let entry = format!("{user}@{seen}:{}:{text}", status.availability.as_str());
            entry.into_bytes().into_boxed_slice()
        };
        let listed = |p: &mut Presence, format| -> Vec<String> {
            let l = p.listing(usize::MAX, format, encode);
            let entries = l.entries.iter();
            entries
                .map(|e| String::from_utf8(e.to_vec()).unwrap())
                .collect()
        };
        let (ann, bob): (Arc<str>, Arc<str>) = ("ann".into(), "bob".into());
        let mut p = Presence::default();
        p.add(&bob, 1, &Status::default());
        p.add(&ann, 2, &Status::default());
        assert_eq!(
            listed(&mut p, Format::Json),
            ["ann@2:online:", "bob@1:online:"]
        );
        assert_eq!(
            listed(&mut p, Format::Json),
            ["ann@2:online:", "bob@1:online:"]
        );
        assert_eq!(encoded.get(), 2, "kept for the second listing");
        listed(&mut p, Format::Msgpack);
        assert_eq!(encoded.get(), 4, "each format has its own");

        // What an entry shows changes: that entry alone is encoded again.
        p.seen(&bob, 7);
        let away = Status {
            availability: Availability::Away,
            text: Some("lunch".into()),
        };
        p.set_status(&ann, &away);
        encoded.set(0);
        let now = listed(&mut p, Format::Json);
        assert_eq!(now, ["ann@2:away:lunch", "bob@7:online:"]);
        assert_eq!(encoded.get(), 2);
        // A second connection of a user online refreshes its lastSeen.
        p.add(&ann, 9, &away);
        p.seen(&bob, 7);
        encoded.set(0);
        let now = listed(&mut p, Format::Json);
        assert_eq!(now, ["ann@9:away:lunch", "bob@7:online:"]);
        assert_eq!(encoded.get(), 1, "bob's lastSeen is what it was");
        // Online again after leaving: a fresh entry.
        p.remove(&bob);
        p.add(&bob, 12, &Status::default());
        assert_eq!(listed(&mut p, Format::Json)[1], "bob@12:online:");
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
