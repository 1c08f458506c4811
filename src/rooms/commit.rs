//! The commit path of the room core: publishing into the accumulating
//! batch, handing it to the log, and what the outcome does — broadcast and
//! ack, or take everything back.
//!
//! Pipelined group commit: at most one batch is with the log; the next one
//! accumulates meanwhile and goes as soon as the first comes back. A message
//! is broadcast and acked only after its batch is committed, so no client is
//! ever shown a message the log does not have.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use tokio::sync::oneshot;

use super::fanout::{self, FramesByFormat};
use super::member::{Budget, Peer};
use super::room::Room;
use super::{Effect, Millis, Rooms};
use crate::error::ErrorCode;
use crate::message::StoredMessage;
use crate::protocol::server::{self as msg, MessageData};
use crate::protocol::{Format, RoomName};
use crate::store::{Append, Batch, NewRoom, ReadMarker, Sequencing, StoreError};

/// Where the outcome of a publish goes.
pub enum Origin {
    /// An `ack` (when the message had an `id`) or an `error` into its outbox.
    Session(Arc<Peer>),
    /// The HTTP API waits for the sequence; the budget is the writer's
    /// room creations (per user; unlimited for the API key).
    Http(oneshot::Sender<Result<u64, ErrorCode>>, Arc<Budget>),
}

pub struct Publish {
    pub room: RoomName,
    pub user: Arc<str>,
    pub content: String,
    pub client_msg_id: Option<String>,
    pub origin: Origin,
}

/// A retry of a message whose first copy is not committed yet: answered
/// with the first copy's outcome.
struct Retry {
    origin: Origin,
    room: RoomName,
    id: String,
    sequence: u64,
}

/// The batches of one shard.
#[derive(Default)]
pub struct Commits {
    /// Accumulating: appends and, index for index, where each reply goes.
    appends: Vec<Append>,
    origins: Vec<Origin>,
    retries: Vec<Retry>,
    /// Rooms to delete with the next batch (their whole log is past
    /// retention); each waits in an `Expiry` slot meanwhile.
    expired: Vec<RoomName>,
    /// Read markers for the next batch, the highest per (room, user).
    markers: BTreeMap<(RoomName, Arc<str>), u64>,
    /// `markers` has one that came since the last batch (markers that came
    /// back from a failed batch alone start no new one, so a failing log
    /// is not retried in a loop; they go with the next).
    fresh_markers: bool,
    /// The batch with the log.
    in_flight: Option<InFlight>,
}

struct InFlight {
    origins: Vec<Origin>,
    retries: Vec<Retry>,
}

impl Commits {
    /// Messages waiting for the batch ahead of them.
    pub fn accumulated(&self) -> usize {
        self.appends.len()
    }

    pub fn in_flight(&self) -> bool {
        self.in_flight.is_some()
    }

    pub fn expire(&mut self, room: RoomName) {
        self.expired.push(room);
    }

    /// Something waits to be handed to the log.
    pub fn has_work(&self) -> bool {
        !self.appends.is_empty()
            || !self.expired.is_empty()
            || (self.fresh_markers && !self.markers.is_empty())
    }

    /// A read marker for the next batch.
    pub fn mark(&mut self, m: ReadMarker) {
        self.fresh_markers = true;
        let at = self.markers.entry((m.room, m.user)).or_insert(0);
        *at = (*at).max(m.sequence);
    }

    /// Markers waiting, if any, go with the next batch (at shutdown).
    pub fn flush_markers(&mut self) {
        self.fresh_markers = !self.markers.is_empty();
    }

    fn take_markers(&mut self) -> Vec<ReadMarker> {
        self.fresh_markers = false;
        std::mem::take(&mut self.markers)
            .into_iter()
            .map(|((room, user), sequence)| ReadMarker {
                room,
                user,
                sequence,
            })
            .collect()
    }

    /// Markers of a failed batch wait for the next one.
    fn restore_markers(&mut self, failed: Vec<ReadMarker>) {
        for m in failed {
            let at = self.markers.entry((m.room, m.user)).or_insert(0);
            *at = (*at).max(m.sequence);
        }
    }
}

impl Rooms {
    /// Sequences a message into the accumulating batch (or answers a retry).
    pub(super) fn publish_loaded(&mut self, p: Publish, now: Millis) {
        let sequencing = self.limits.sequencing;
        let room = self.room_mut(&p.room).expect("caller loaded the room");
        if let Origin::Session(peer) = &p.origin {
            // The session checks membership too; a member cut meanwhile is not.
            if !room.members.contains(peer.client_id) {
                let id = p.client_msg_id.as_deref();
                return reply_error(p.origin, ErrorCode::NotJoined, id, &p.room);
            }
        }
        if !room.persisted && room.seq.is_settled() {
            // This message creates the room in the log.
            let id = p.client_msg_id.as_deref();
            if room.room_limit_reached {
                return reply_error(p.origin, ErrorCode::RateLimited, id, &p.room);
            }
            let budget = match &p.origin {
                Origin::Session(peer) => &peer.new_rooms,
                Origin::Http(_, budget) => budget,
            };
            if !budget.take(now) {
                return reply_error(p.origin, ErrorCode::RateLimited, id, &p.room);
            }
        }
        room.last_active = now;
        room.presence.seen(&p.user, now);
        let mut absent = None;
        if let Some(id) = &p.client_msg_id {
            match room.dedup.check(&p.user, id) {
                Ok(sequence) if sequence <= room.seq.committed() => {
                    return reply_ok(p.origin, Some(id), &p.room, sequence);
                }
                Ok(sequence) => {
                    let retry = Retry {
                        origin: p.origin,
                        room: p.room,
                        id: id.clone(),
                        sequence,
                    };
                    self.commits.retries.push(retry);
                    return;
                }
                Err(new_id) => absent = Some(new_id),
            }
        }
        let sequence = match sequencing {
            Sequencing::Local => {
                let sequence = room.seq.assign();
                if let Some(new_id) = absent {
                    room.dedup.insert_absent(new_id, sequence);
                }
                sequence
            }
            Sequencing::Log => {
                room.seq.hand_over();
                0
            }
        };
        let message = StoredMessage {
            sequence,
            timestamp: now,
            user: p.user,
            content: p.content,
            client_msg_id: p.client_msg_id,
        };
        self.commits.appends.push(Append::new(p.room, message));
        self.commits.origins.push(p.origin);
    }

    /// Hands the accumulated batch to the log unless one is already there;
    /// returns whether it did. With nothing pending anywhere, every number
    /// handed out is committed, so waiting retries are answered at once.
    pub fn end_round(&mut self) -> bool {
        if self.commits.in_flight.is_some() {
            return false;
        }
        if !self.commits.has_work() {
            settle_retries(std::mem::take(&mut self.commits.retries), true);
            return false;
        }
        let appends = std::mem::take(&mut self.commits.appends);
        // A shared log is told every room's epoch, to say back the one it has.
        let every_room = self.limits.sequencing == Sequencing::Log;
        let mut new_rooms: Vec<NewRoom> = Vec::new();
        let mut seen: BTreeSet<&RoomName> = BTreeSet::new();
        let mut previous: Option<&RoomName> = None;
        for a in &appends {
            // A run of one room's appends (a busy room) is looked up once.
            if previous.replace(&a.room) == Some(&a.room) || !seen.insert(&a.room) {
                continue;
            }
            match self.room_ref(&a.room) {
                Some(room) if every_room || !room.persisted => new_rooms.push(NewRoom {
                    room: a.room.clone(),
                    epoch: room.epoch.to_string(),
                }),
                // A room that left memory since its messages were taken
                // (its log was replaced under it): a shared log numbers
                // them under the epoch it has, or starts one.
                None if every_room => new_rooms.push(NewRoom {
                    room: a.room.clone(),
                    epoch: String::new(),
                }),
                _ => {}
            }
        }
        self.commits.in_flight = Some(InFlight {
            origins: std::mem::take(&mut self.commits.origins),
            retries: std::mem::take(&mut self.commits.retries),
        });
        let expired = std::mem::take(&mut self.commits.expired);
        let read_markers = self.commits.take_markers();
        self.effects.push_back(Effect::Commit(Batch {
            new_rooms,
            appends,
            expired,
            read_markers,
        }));
        true
    }

    /// The outcome of the batch with the log (handed back with it).
    pub fn committed(
        &mut self,
        mut batch: Batch,
        result: Result<(), Arc<StoreError>>,
        now: Millis,
    ) {
        let Some(InFlight { origins, retries }) = self.commits.in_flight.take() else {
            tracing::error!("a commit came back with none in flight");
            return;
        };
        let expired = std::mem::take(&mut batch.expired);
        if result.is_err() {
            let markers = std::mem::take(&mut batch.read_markers);
            self.commits.restore_markers(markers);
        }
        if self.limits.sequencing == Sequencing::Log {
            if result.is_ok() {
                self.tally.expired += expired.len() as u64;
            }
            self.settle_numbered(batch, result, origins, retries, now);
        } else if let Err(e) = result {
            tracing::error!(cause = %e, messages = batch.appends.len(), "store append failed; not acked");
            self.fail(batch.appends, origins, retries);
        } else {
            self.tally.expired += expired.len() as u64;
            self.stored_batch(batch, origins, retries, now);
        }
        for room in &expired {
            self.expiry_done(room, now);
        }
    }

    /// Delivers a committed batch, then answers its senders.
    fn stored_batch(
        &mut self,
        batch: Batch,
        origins: Vec<Origin>,
        retries: Vec<Retry>,
        now: Millis,
    ) {
        // Deliver first, then answer the senders: a sender that has its ack
        // has been sent its own copy already.
        let mut by_room: ByRoom<RoomStored> = ByRoom::default();
        let mut replies = Vec::with_capacity(origins.len());
        for (a, origin) in batch.appends.into_iter().zip(origins) {
            let id = a.message.client_msg_id.clone();
            replies.push((origin, id, a.room.clone(), a.message.sequence));
            let group = by_room.group(&a.room);
            group.handed += 1;
            if !a.duplicate {
                group.messages.push(a.message);
            }
        }
        for (name, group) in by_room.groups {
            self.stored(&name, group.messages, group.handed, now);
        }
        for (origin, id, room, sequence) in replies {
            self.tally.acks += u64::from(id.is_some());
            reply_ok(origin, id.as_deref(), &room, sequence);
        }
        settle_retries(retries, true);
    }

    /// Moves a room past its stored messages and delivers them.
    fn stored(&mut self, name: &RoomName, messages: Vec<StoredMessage>, handed: u64, now: Millis) {
        let Some(room) = self.room_mut(name) else {
            return;
        };
        room.persisted = true;
        room.last_active = now;
        let upto = messages.last().map_or(0, |m| m.sequence);
        room.seq.stored(handed, upto);
        self.deliver(name, &messages, now);
    }

    /// Sends a room's next messages (in order, after everything it sent
    /// before) to its live members, and answers the long polls they release.
    pub(super) fn deliver(&mut self, name: &RoomName, messages: &[StoredMessage], now: Millis) {
        let Some((room, spread)) = self.room_and_spread(name) else {
            return;
        };
        room.release_waiters();
        let frames = encode(room, messages);
        let (delivered, gone) = fanout::broadcast(&mut room.members, &frames, spread);
        self.tally.deliveries += delivered;
        for id in gone {
            self.remove_member(name, id, now);
        }
    }

    /// The outcome of a batch a shared log numbered. On failure the log
    /// may have stored some rooms' messages (a room's script ran, its
    /// answer was lost — or another room's failed): those that came back
    /// numbered are stored and answered as such, those with sequence 0 are
    /// not known to be stored and get `internal`. Delivery goes through
    /// the ordered path, with what other nodes wrote.
    fn settle_numbered(
        &mut self,
        batch: Batch,
        result: Result<(), Arc<StoreError>>,
        origins: Vec<Origin>,
        retries: Vec<Retry>,
        now: Millis,
    ) {
        if let Err(e) = &result {
            let lost = batch
                .appends
                .iter()
                .filter(|a| a.message.sequence == 0)
                .count();
            tracing::error!(cause = %e, messages = lost, "store append failed; not acked");
        }
        let mut by_room: ByRoom<RoomStored> = ByRoom::default();
        let mut replies = Vec::with_capacity(origins.len());
        for (a, origin) in batch.appends.into_iter().zip(origins) {
            let group = by_room.group(&a.room);
            let id = a.message.client_msg_id.clone();
            let sequence = a.message.sequence;
            replies.push((origin, id, a.room.clone(), sequence));
            group.handed += 1;
            if sequence > 0 {
                group.stored = true;
                if !a.duplicate {
                    group.messages.push(a.message);
                }
            }
        }
        let mut replaced = Vec::new();
        for n in &batch.new_rooms {
            let stored_here = by_room.get(&n.room).is_some_and(|g| g.stored);
            if let Some(room) = self.room_ref(&n.room) {
                if stored_here && *room.epoch != *n.epoch {
                    replaced.push(n.room.clone());
                }
            }
        }
        for name in &replaced {
            self.log_replaced(name, now);
        }
        for (name, group) in by_room.groups {
            let Some(room) = self.room_mut(&name) else {
                continue;
            };
            room.seq.stored(group.handed, 0);
            if group.stored {
                room.persisted = true;
                room.last_active = now;
            }
            self.deliver_numbered(&name, group.messages, now);
        }
        for (origin, id, room, sequence) in replies {
            if sequence > 0 {
                self.tally.acks += u64::from(id.is_some());
                reply_ok(origin, id.as_deref(), &room, sequence);
            } else {
                reply_error(origin, ErrorCode::Internal, id.as_deref(), &room);
            }
        }
        settle_retries(retries, result.is_ok());
    }

    /// A failed commit: nothing in it was stored. With local sequencing the
    /// batch that accumulated behind it fails too (its numbers follow the
    /// failed ones), and every number is given back; every sender is told
    /// `internal`. Nothing uncommitted was ever shown.
    fn fail(&mut self, failed: Vec<Append>, origins: Vec<Origin>, retries: Vec<Retry>) {
        let mut all: Vec<(Append, Origin)> = failed.into_iter().zip(origins).collect();
        let mut retries = retries;
        if self.limits.sequencing == Sequencing::Local {
            let behind = std::mem::take(&mut self.commits.appends);
            let behind_origins = std::mem::take(&mut self.commits.origins);
            all.extend(behind.into_iter().zip(behind_origins));
            retries.extend(std::mem::take(&mut self.commits.retries));
        }
        let mut counts: HashMap<RoomName, u64> = HashMap::new();
        for (a, origin) in all {
            *counts.entry(a.room.clone()).or_default() += 1;
            if let Some(room) = self.room_mut(&a.room) {
                if let Some(id) = &a.message.client_msg_id {
                    room.dedup.remove(&a.message.user, id, a.message.sequence);
                }
            }
            let id = a.message.client_msg_id.as_deref();
            reply_error(origin, ErrorCode::Internal, id, &a.room);
        }
        for (name, n) in counts {
            if let Some(room) = self.room_mut(&name) {
                room.seq.failed(n);
            }
        }
        settle_retries(retries, false);
    }
}

/// Each message once per format in use, as complete frames.
fn encode(room: &Room, messages: &[StoredMessage]) -> FramesByFormat {
    let mut frames: FramesByFormat = Default::default();
    for format in Format::ALL {
        if room.members.uses(format) {
            frames[format.index()] = messages
                .iter()
                .map(|m| msg::message(format, &MessageData::of(room.name.as_str(), &room.epoch, m)))
                .collect();
        }
    }
    frames
}

fn settle_retries(retries: Vec<Retry>, committed: bool) {
    for r in retries {
        if committed {
            reply_ok(r.origin, Some(&r.id), &r.room, r.sequence);
        } else {
            reply_error(r.origin, ErrorCode::Internal, Some(&r.id), &r.room);
        }
    }
}

pub fn reply_ok(origin: Origin, id: Option<&str>, room: &RoomName, sequence: u64) {
    match origin {
        Origin::Session(peer) => {
            if let Some(id) = id {
                let data = msg::AckData {
                    room: room.as_str(),
                    sequence,
                };
                fanout::push_all(
                    &peer,
                    &[msg::encode(peer.format, "ack", Some(id), Some(data))],
                );
            }
        }
        Origin::Http(tx, _) => {
            let _ = tx.send(Ok(sequence));
        }
    }
}

pub fn reply_error(origin: Origin, code: ErrorCode, id: Option<&str>, room: &RoomName) {
    match origin {
        Origin::Session(peer) => {
            let message = match code {
                ErrorCode::NotJoined => format!("not joined to {room}"),
                ErrorCode::RateLimited => {
                    format!("{room} would be a new room, and no more may be created now")
                }
                _ => format!("message to {room} was not stored"),
            };
            fanout::push_all(&peer, &[msg::error(peer.format, code, &message, id)]);
        }
        Origin::Http(tx, _) => {
            let _ = tx.send(Err(code));
        }
    }
}

/// A committed batch's appends grouped by room, in the order each room
/// first comes. A batch carries up to thousands of appends over as many
/// rooms: a search of the groups per append made that quadratic. (Ordered,
/// like the core's own map of rooms: no hash function meets room names.)
struct ByRoom<T> {
    index: BTreeMap<RoomName, usize>,
    groups: Vec<(RoomName, T)>,
    /// The group of the previous append: a run of one room's appends (a
    /// busy room) is looked up once.
    last: usize,
}

impl<T> Default for ByRoom<T> {
    fn default() -> Self {
        ByRoom {
            index: BTreeMap::new(),
            groups: Vec::new(),
            last: 0,
        }
    }
}

impl<T: Default> ByRoom<T> {
    fn group(&mut self, room: &RoomName) -> &mut T {
        let same = self.groups.get(self.last).is_some_and(|(r, _)| r == room);
        if !same {
            self.last = match self.index.get(room) {
                Some(&i) => i,
                None => {
                    self.groups.push((room.clone(), T::default()));
                    self.index.insert(room.clone(), self.groups.len() - 1);
                    self.groups.len() - 1
                }
            };
        }
        &mut self.groups[self.last].1
    }

    fn get(&self, room: &RoomName) -> Option<&T> {
        self.index.get(room).map(|&i| &self.groups[i].1)
    }
}

/// One room's part of a committed batch.
#[derive(Default)]
struct RoomStored {
    /// Its messages to deliver (not those that were duplicates of stored ones).
    messages: Vec<StoredMessage>,
    /// How many appends it had in the batch.
    handed: u64,
    /// Whether any of them was stored (a numbering log may store part).
    stored: bool,
}
