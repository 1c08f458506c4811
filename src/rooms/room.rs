//! One loaded room: its sequencer, members, presence and dedup window, and
//! what happens to them on a join, a leave, a catch-up chunk and a presence
//! window. The commit path (publish, batch outcome) is in `commit`.

use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::oneshot;

use super::catchup::{self, Chunk, Plan, ReadRequest};
use super::dedup::Dedup;
use super::fanout::push_all;
use super::member::{CatchUp, JoinId, Member, MemberState, Members, Peer, PendingJoined};
use super::ordered::Ordered;
use super::presence::{Presence, RemoteUpdate, MAX_LISTED};
use super::sequencer::Sequencer;
use super::{Command, Limits, Millis};
use crate::protocol::server as msg;
use crate::protocol::{listing, Format, RoomName, Status};
use crate::store::{RoomLog, Sequencing};

/// Most messages one catch-up read brings.
const READ_CHUNK: usize = 1000;

/// A room with fewer users online encodes its snapshot afresh each time
/// (a few µs) instead of from entries kept per user (see
/// `Presence::listing`): small rooms, the most numerous, keep no entries,
/// which would cost each of their users ≈ 130 bytes.
const KEPT_ENTRIES_FROM: usize = 64;

/// Encoded presence snapshots, reused until the set of online users changes
/// or the window passes (so `lastSeen` is at most one window stale): a flood
/// of `presence` requests or joins costs one encoding per window.
#[derive(Default)]
struct SnapshotCache {
    version: u64,
    built: Millis,
    frames: [Option<Bytes>; Format::COUNT],
}

pub struct Room {
    pub name: RoomName,
    /// Names this incarnation of the room's log (PROTOCOL.md §4).
    pub epoch: Arc<str>,
    pub seq: Sequencer,
    pub members: Members,
    pub presence: Presence,
    pub dedup: Dedup,
    /// The log has the room; until then, the next batch with a message of
    /// the room creates it.
    pub persisted: bool,
    /// The log holds as many rooms as allowed: this one, new, may not be
    /// written to.
    pub room_limit_reached: bool,
    /// When anything last happened here; idle rooms are unloaded from this.
    pub last_active: Millis,
    snapshots: SnapshotCache,
    /// Above this many members: no presence diffs, and the snapshot after
    /// `joined` carries the count but no list (ask `presence` for it).
    listed_max_members: usize,
    /// How long a cached snapshot serves.
    snapshot_ttl: Millis,
    /// Log mode: messages numbered by the log, put in order (`ordered`).
    pub ordered: Ordered,
    /// Log mode: joins whose `since` is past this node's position, waiting
    /// for a fill (bounded by the caller).
    pub waiting_joins: Vec<Command>,
    /// Highest sequence each user has read (loaded with the room; this
    /// core owns them while it is loaded, the log keeps them).
    pub markers: BTreeMap<Arc<str>, u64>,
    /// When each online user's typing was last relayed (`ephemeral`).
    pub typing: BTreeMap<Arc<str>, Millis>,
    /// Long polls waiting for a sequence past theirs (`ephemeral`).
    pub waiters: Vec<(u64, oneshot::Sender<u64>)>,
}

impl Room {
    pub fn new(name: RoomName, log: RoomLog, limits: &Limits, now: Millis) -> Room {
        let markers = log.read_markers.into_iter().collect();
        let mut dedup = Dedup::new(limits.dedup_window);
        for (user, id, seq) in log.recent_ids {
            dedup.insert(&user, &id, seq);
        }
        let mut presence = match limits.sequencing {
            Sequencing::Local => Presence::default(),
            Sequencing::Log => Presence::shared(),
        };
        if !log.presence.is_empty() {
            presence.apply_remote(RemoteUpdate::Snapshot(log.presence), now);
            // Nobody has been told anything yet: no diffs for these.
            presence.take_changes();
        }
        let mut ordered = Ordered::default();
        ordered.saw(log.last);
        Room {
            name,
            epoch: log.epoch.into(),
            seq: Sequencer::resume(log.last),
            members: Members::default(),
            presence,
            dedup,
            persisted: log.exists,
            room_limit_reached: log.room_limit_reached,
            last_active: now,
            snapshots: SnapshotCache::default(),
            listed_max_members: limits.presence_diff_max_members,
            snapshot_ttl: limits.presence_window_ms,
            ordered,
            waiting_joins: Vec::new(),
            markers,
            typing: BTreeMap::new(),
            waiters: Vec::new(),
        }
    }

    /// Whether the room is small enough for presence diffs, typing and
    /// read events (above it, they would cost members² frames).
    pub fn chatty(&self) -> bool {
        self.members.len() <= self.listed_max_members
    }

    /// Whether the room can leave memory: nobody in it, nothing handed to
    /// the log and not settled, and quiet for `idle_ms`.
    pub fn unloadable(&self, now: Millis, idle_ms: u64) -> bool {
        self.members.is_empty()
            && self.waiters.is_empty()
            && self.seq.is_settled()
            && self.waiting_joins.is_empty()
            && !self.ordered.filling
            && now.saturating_sub(self.last_active) >= idle_ms
    }

    fn joined_frame(&self, peer: &Peer, last: u64, recovered: bool) -> Bytes {
        let data = msg::Joined {
            room: self.name.as_str(),
            last,
            epoch: &self.epoch,
            recovered,
            read: self.markers.get(&peer.user).copied().unwrap_or(0),
        };
        let format = peer.format;
        msg::encode(format, "joined", None, Some(data))
    }

    /// The room's presence snapshot, from the cache while it serves.
    pub fn presence_frame(&mut self, format: Format, now: Millis) -> Bytes {
        let cache = &mut self.snapshots;
        let fresh = now.saturating_sub(cache.built) < self.snapshot_ttl;
        if cache.version != self.presence.version() || !fresh {
            *cache = SnapshotCache {
                version: self.presence.version(),
                built: now,
                frames: Default::default(),
            };
        }
        let slot = &mut self.snapshots.frames[format.index()];
        slot.get_or_insert_with(|| {
            if format == Format::Sse || self.presence.count() < KEPT_ENTRIES_FROM {
                // Kept while it serves: copied out of the encoder's grown
                // buffer (up to twice its size) into one of its own length.
                let frame = presence_frame(&self.name, Some(&self.presence), format, MAX_LISTED);
                return Bytes::copy_from_slice(&frame);
            }
            // Sized to fit: put together from the users' kept entries.
            let l = self
                .presence
                .listing(MAX_LISTED, format, |user, last_seen, status| {
                    listing::entry(format, &presence_user(user, last_seen, status))
                });
            listing::frame(format, self.name.as_str(), l.count, &l.entries, l.truncated)
        })
        .clone()
    }

    /// The snapshot that follows `joined`: listed up to the size threshold.
    fn join_snapshot(&mut self, format: Format, now: Millis) -> Bytes {
        if self.presence.count() > self.listed_max_members {
            return presence_frame(&self.name, Some(&self.presence), format, 0);
        }
        self.presence_frame(format, now)
    }

    /// Adds a member (after `joined` and the snapshot when it goes live at
    /// once); returns the first read when it must catch up first.
    pub fn join(
        &mut self,
        peer: Arc<Peer>,
        join: JoinId,
        since: Option<u64>,
        epoch: Option<&str>,
        limits: catchup::Limits,
        now: Millis,
    ) -> Option<ReadRequest> {
        let last = self.seq.committed();
        let (plan, recovered) = catchup::plan(since, epoch, &self.epoch, last, limits);
        self.presence.add(&peer.user, now, &peer.account.status());
        self.last_active = now;
        let (state, read) = match plan {
            Plan::History { after, upto } if after == upto => {
                // An empty history needs no read.
                let history =
                    msg::history(peer.format, self.name.as_str(), &self.epoch, &[], false);
                self.announce(&peer, last, recovered, now);
                push_all(&peer, &[history]);
                (MemberState::Live, None)
            }
            Plan::Live => {
                self.announce(&peer, last, recovered, now);
                (MemberState::Live, None)
            }
            Plan::History { after, .. } | Plan::Replay { after, .. } => {
                let history = matches!(plan, Plan::History { .. });
                let catch_up = CatchUp {
                    next: after + 1,
                    joined: Some(PendingJoined { last, recovered }),
                    history,
                };
                let read = self.read(&peer, join, after, history);
                (MemberState::CatchingUp(catch_up), Some(read))
            }
        };
        self.members.add(Member {
            peer,
            join,
            state,
            fresh: true,
        });
        read
    }

    /// `joined`, then the presence snapshot (PROTOCOL.md §4).
    fn announce(&mut self, peer: &Peer, last: u64, recovered: bool, now: Millis) {
        let mut frames = vec![self.joined_frame(peer, last, recovered)];
        if peer.presence_events {
            frames.push(self.join_snapshot(peer.format, now));
        }
        push_all(peer, &frames);
    }

    /// The read for `after+1 ..= committed`.
    fn read(&self, peer: &Arc<Peer>, join: JoinId, after: u64, history: bool) -> ReadRequest {
        let upto = self.seq.committed();
        // A history frame is one frame: its size, not its count, is bounded.
        let max_messages = if history {
            (upto - after) as usize
        } else {
            READ_CHUNK.min(peer.outbox.max_frames() / 4).max(1)
        };
        ReadRequest {
            room: self.name.clone(),
            epoch: self.epoch.clone(),
            peer: peer.clone(),
            join,
            history,
            after,
            upto,
            max_messages,
            max_bytes: peer.outbox.max_bytes() / 4,
        }
    }

    /// A session's join again while joined: a no-op answered with `joined`
    /// (unless the first `joined` is still to come with its catch-up).
    pub fn rejoin(&mut self, client_id: u64) {
        let last = self.seq.committed();
        let Some(member) = self.members.get_mut(client_id) else {
            return;
        };
        if member.announced() {
            let peer = member.peer.clone();
            push_all(&peer, &[self.joined_frame(&peer, last, true)]);
        }
    }

    /// Removes a member; `left` is sent for an explicit leave.
    pub fn leave(&mut self, client_id: u64, explicit: bool, now: Millis) -> Option<Member> {
        let member = self.members.remove(client_id)?;
        if self.presence.remove(&member.peer.user) {
            self.typing.remove(&member.peer.user);
        }
        self.last_active = now;
        if explicit {
            let data = msg::RoomOnly {
                room: self.name.as_str(),
            };
            let f = msg::encode(member.peer.format, "left", None, Some(data));
            push_all(&member.peer, &[f]);
        }
        Some(member)
    }

    /// Applies a catch-up chunk to the join that asked for it. Returns the
    /// next read while the member is still behind, and whether the member
    /// must be removed (it could not take the chunk). A chunk for a join that
    /// is gone (left, cut, or joined again since) is dropped.
    pub fn chunk(&mut self, client_id: u64, join: JoinId, chunk: Chunk, now: Millis) -> Handoff {
        let committed = self.seq.committed();
        let (peer, next, history, pending) = {
            let Some(member) = self.members.get_mut(client_id) else {
                return Handoff::Stale;
            };
            if member.join != join {
                return Handoff::Stale;
            }
            let MemberState::CatchingUp(c) = &mut member.state else {
                return Handoff::Stale;
            };
            (member.peer.clone(), c.next, c.history, c.joined.take())
        };
        let mut frames = Vec::with_capacity(chunk.frames.len() + 2);
        if let Some(pending) = pending {
            // A replay whose start the log no longer has (retention) did
            // not recover the client's position.
            let complete = history || chunk.first.is_none_or(|f| f <= next);
            let recovered = pending.recovered && complete;
            frames.push(self.joined_frame(&peer, pending.last, recovered));
            if peer.presence_events {
                frames.push(self.join_snapshot(peer.format, now));
            }
        }
        let replayed = if history {
            0
        } else {
            chunk.frames.len() as u64
        };
        frames.extend(chunk.frames);
        if !push_all(&peer, &frames) {
            return Handoff::Remove;
        }
        let member = self.members.get_mut(client_id).expect("looked up above");
        let MemberState::CatchingUp(c) = &mut member.state else {
            unreachable!("checked above");
        };
        c.next = c.next.max(chunk.last + 1);
        c.history = false;
        if c.next > committed {
            member.state = MemberState::Live;
            return Handoff::Live { replayed };
        }
        let after = c.next - 1;
        Handoff::More {
            read: self.read(&peer, join, after, false),
            replayed,
        }
    }

    /// Sends one window's presence changes to the members that have been
    /// told they joined; a member that joined within the window is not told
    /// about its own user. Returns members that could not take the diff.
    pub fn flush_presence(&mut self, max_members: usize) -> Vec<u64> {
        if !self.presence.has_changes() {
            return Vec::new();
        }
        let changes = self.presence.take_changes();
        if self.members.len() > max_members {
            return Vec::new();
        }
        let name = self.name.clone();
        let encode =
            |format: Format, joins: &[&str], leaves: &[&str], changes: &[msg::StatusChange]| {
                let data = msg::PresenceDiff {
                    room: name.as_str(),
                    joins,
                    leaves,
                    changes,
                };
                msg::encode(format, "presence_diff", None, Some(data))
            };
        let joins: Vec<&str> = changes.joins.iter().map(|u| &**u).collect();
        let leaves: Vec<&str> = changes.leaves.iter().map(|u| &**u).collect();
        let statuses: Vec<msg::StatusChange> = changes
            .statuses
            .iter()
            .map(|(user, s)| msg::StatusChange {
                user,
                status: s.availability.as_str(),
                text: s.text.as_deref(),
            })
            .collect();
        let mut shared: [Option<Bytes>; Format::COUNT] = Default::default();
        let mut gone = Vec::new();
        for m in self.members.as_mut_slice() {
            if !m.announced() || !m.peer.presence_events {
                continue;
            }
            let fresh = std::mem::take(&mut m.fresh);
            let user = &*m.peer.user;
            let f = if fresh && joins.contains(&user) {
                // The joiner is not told about itself.
                let others: Vec<&str> = joins.iter().copied().filter(|u| *u != user).collect();
                let changes: Vec<msg::StatusChange> = statuses
                    .iter()
                    .filter(|c| c.user != user)
                    .copied()
                    .collect();
                if others.is_empty() && leaves.is_empty() && changes.is_empty() {
                    continue;
                }
                encode(m.peer.format, &others, &leaves, &changes)
            } else {
                shared[m.peer.format.index()]
                    .get_or_insert_with(|| encode(m.peer.format, &joins, &leaves, &statuses))
                    .clone()
            };
            if !push_all(&m.peer, &[f]) {
                gone.push(m.peer.client_id);
            }
        }
        gone
    }
}

/// What a catch-up chunk did to its member.
pub enum Handoff {
    /// For a join that is no longer current: dropped.
    Stale,
    /// The member could not take it (cut): remove it.
    Remove,
    /// Caught up: live from now on.
    Live { replayed: u64 },
    /// Still behind: read on.
    More { read: ReadRequest, replayed: u64 },
}

/// The `presence` frame of a room (`None`: a room nobody is in), listing at
/// most `listed` users.
pub fn presence_frame(
    room: &RoomName,
    presence: Option<&Presence>,
    format: Format,
    listed: usize,
) -> Bytes {
    let empty = Presence::default();
    let snap = presence.unwrap_or(&empty).snapshot(listed);
    let data = msg::Presence {
        room: room.as_str(),
        count: snap.count,
        users: snap
            .users
            .iter()
            .map(|(user, last_seen, status)| presence_user(user, *last_seen, status))
            .collect(),
        truncated: snap.truncated,
    };
    msg::encode(format, "presence", None, Some(data))
}

/// A user's entry in a `presence` frame.
fn presence_user<'a>(user: &'a str, last_seen: u64, status: &'a Status) -> msg::PresenceUser<'a> {
    msg::PresenceUser {
        user,
        status: status.availability.as_str(),
        text: status.text.as_deref(),
        last_seen,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::outbox::Outbox;
    use crate::store::Sequencing;

    fn limits() -> Limits {
        Limits {
            dedup_window: 10,
            history_on_join: 0,
            replay_limit: 100,
            presence_window_ms: 100,
            presence_diff_max_members: 1000,
            idle_unload_ms: 1000,
            sequencing: Sequencing::Local,
            fill_grace_ms: 50,
        }
    }

    fn peer(id: u64, user: &str) -> Arc<Peer> {
        let (outbox, rx) = Outbox::new(64, 1 << 20);
        std::mem::forget(rx);
        Arc::new(Peer::new(id, user.into(), Format::Json, outbox))
    }

    fn room() -> Room {
        let log = RoomLog {
            epoch: "e".into(),
            last: 0,
            recent_ids: Vec::new(),
            exists: true,
            room_limit_reached: false,
            presence: Vec::new(),
            read_markers: Vec::new(),
        };
        Room::new(RoomName::parse("r").unwrap(), log, &limits(), 0)
    }

    fn join(r: &mut Room, p: Arc<Peer>, now: Millis) {
        let l = catchup::Limits {
            history_on_join: 0,
            replay_limit: 100,
        };
        assert!(r.join(p, 1, None, None, l, now).is_none());
    }

    #[test]
    fn a_snapshot_is_encoded_once_per_window_and_per_change() {
        let mut r = room();
        join(&mut r, peer(1, "ann"), 0);
        let a = r.presence_frame(Format::Json, 10);
        let b = r.presence_frame(Format::Json, 20);
        assert_eq!(a.as_ptr(), b.as_ptr(), "served from the cache");
        let c = r.presence_frame(Format::Json, 150);
        assert_ne!(a.as_ptr(), c.as_ptr(), "rebuilt after the window");
        join(&mut r, peer(2, "bob"), 160);
        let d = r.presence_frame(Format::Json, 161);
        assert!(
            String::from_utf8_lossy(&d).contains("bob"),
            "a join shows at once"
        );
    }

    #[test]
    fn a_big_rooms_snapshot_from_kept_entries_is_the_encoders() {
        let mut r = room();
        let now = 1_700_000_000_000;
        for i in 0..(KEPT_ENTRIES_FROM + 6) {
            join(&mut r, peer(i as u64, &format!("u{i:03}")), now + i as u64);
        }
        let encoded =
            |r: &Room, format| presence_frame(&r.name, Some(&r.presence), format, MAX_LISTED);
        for format in [Format::Json, Format::Msgpack] {
            assert!(
                r.presence_frame(format, now) == encoded(&r, format),
                "{format:?}"
            );
        }
        // What a listed user shows changes: the next snapshot shows it.
        let u007: Arc<str> = "u007".into();
        r.presence.seen(&u007, now + 500);
        let away = Status {
            availability: crate::protocol::Availability::Away,
            text: Some("back at 3".into()),
        };
        r.presence.set_status(&"u010".into(), &away);
        join(&mut r, peer(999, "a-first"), now + 600);
        for format in [Format::Json, Format::Msgpack] {
            let frame = r.presence_frame(format, now + 600);
            assert!(frame == encoded(&r, format), "{format:?} after changes");
        }
        let text = String::from_utf8_lossy(&r.presence_frame(Format::Json, now + 600)).into_owned();
        assert!(
            text.contains("back at 3") && text.contains("a-first"),
            "{text}"
        );
    }
}
