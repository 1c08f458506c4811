//! The rooms of one shard as a sans-IO state machine: sequencing, members,
//! presence, dedup, join planning and the replay→live hand-off, idle
//! unloading. It takes inputs with the current time and returns effects; it
//! never blocks, reads a clock, spawns or touches a socket or a file, so a
//! seeded simulation can drive it through any interleaving
//! (`tests/simulation.rs`). The driver (`shard::driver`) does the I/O.
//!
//! Inputs: `handle` (a command from a session or the HTTP API), `end_round`
//! (the driver has drained its queue: hand the batch to the log), and the
//! completions of effects: `loaded`, `committed`, `read_done`; timers through
//! `poll_timeout` / `handle_timeout`.
//!
//! Effects (`poll_effect`): load a room's log, commit a batch (at most one in
//! flight), read for a catching-up member. Frames go straight into members'
//! outboxes (bounded memory queues that never wait; see `outbox`).
//!
//! With a log shared by several nodes (`Sequencing::Log`, cluster mode) the
//! log numbers messages, and `shared` adds the inputs and effects of the
//! live channel: `live`, `subscribed`, `filled`, `remote_presence`,
//! `node_gone`; `Subscribe`, `Unsubscribe`, `Fill`, `Presence`.
//!
//! One owner per fact: while a room is loaded, this core alone holds its
//! newest sequence, its epoch and its members; a room with anything handed
//! to the log and not settled is never unloaded; a room being loaded parks
//! its commands, so other rooms never wait for it.

mod account;
mod catchup;
mod commit;
mod dedup;
mod ephemeral;
pub mod fanout;
mod interface;
mod member;
mod ordered;
mod presence;
mod room;
mod room_set;
mod sequencer;
mod shared;

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;

pub use account::Account;
pub use catchup::{Chunk, ReadRequest};
pub use commit::{Origin, Publish};
pub use dedup::Dedup;
pub use ephemeral::TYPING_EVERY_MS;
pub use interface::{
    Command, Effect, Fill, Limits, Millis, PresenceChange, ReadDone, Relay, RoomRelay, RoomStats,
    Tally, FILL_GRACE_MS,
};
pub use member::{Budget, JoinId, Member, MemberState, Members, Peer};
pub use presence::{RemoteUpdate, MAX_LISTED};
pub use room_set::RoomSet;
pub use sequencer::Sequencer;
pub use shared::FILL_CHUNK;

use crate::error::{close, ErrorCode};
use crate::protocol::RoomName;
use crate::store::{RoomLog, Sequencing, StoreError};
use room::{presence_frame, Handoff, Room};

/// Most commands parked behind rooms being loaded, per shard; more are
/// refused (`internal`) until loads complete. Each is a command as queued
/// (≤ max content + ~200 B), so parking holds at most ≈ 4096 × 16 KiB.
const MAX_PARKED: usize = 4096;
/// Most messages accumulated behind the batch with the log before the
/// driver stops taking commands (bounds a batch's memory).
const MAX_BATCH: usize = 8192;

enum Slot {
    /// Its commands wait here, in order, until the log answers.
    Waiting(Wait, Vec<Command>),
    Loaded(Box<Room>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Wait {
    /// Its log is being read.
    Load,
    /// Its deletion (the whole log past retention) is being committed.
    Expiry,
}

pub struct Rooms {
    limits: Limits,
    /// Ordered, so the core is deterministic for its simulation (and room
    /// names, which clients choose, never meet a hash function here).
    rooms: BTreeMap<RoomName, Slot>,
    commits: commit::Commits,
    effects: VecDeque<Effect>,
    parked: usize,
    /// When the presence/idle timer fires next.
    next_tick: Millis,
    spread: Box<dyn fanout::Spread>,
    tally: Tally,
    /// The shard is stopping: nothing new is loaded.
    stopping: bool,
    /// Log mode: rooms behind the log, with when their gap is filled.
    gaps: BTreeMap<RoomName, Millis>,
}

impl Rooms {
    pub fn new(limits: Limits, spread: Box<dyn fanout::Spread>) -> Rooms {
        Rooms {
            limits,
            rooms: BTreeMap::new(),
            commits: commit::Commits::default(),
            effects: VecDeque::new(),
            parked: 0,
            next_tick: 0,
            spread,
            tally: Tally::default(),
            stopping: false,
            gaps: BTreeMap::new(),
        }
    }

    fn shared_log(&self) -> bool {
        self.limits.sequencing == Sequencing::Log
    }

    fn loaded_names(&self) -> Vec<RoomName> {
        self.rooms
            .iter()
            .filter(|(_, s)| matches!(s, Slot::Loaded(_)))
            .map(|(name, _)| name.clone())
            .collect()
    }

    fn room_ref(&self, name: &RoomName) -> Option<&Room> {
        match self.rooms.get(name) {
            Some(Slot::Loaded(room)) => Some(room),
            _ => None,
        }
    }

    fn room_mut(&mut self, name: &RoomName) -> Option<&mut Room> {
        match self.rooms.get_mut(name) {
            Some(Slot::Loaded(room)) => Some(room),
            _ => None,
        }
    }

    /// A loaded room and the fan-out strategy, borrowed together.
    fn room_and_spread(&mut self, name: &RoomName) -> Option<(&mut Room, &dyn fanout::Spread)> {
        match self.rooms.get_mut(name) {
            Some(Slot::Loaded(room)) => Some((room, &*self.spread)),
            _ => None,
        }
    }

    /// The driver should stop taking commands until a commit or a load
    /// comes back (their senders wait; TCP pushes back on clients).
    pub fn backpressured(&self) -> bool {
        self.commits.accumulated() >= MAX_BATCH || self.parked >= MAX_PARKED
    }

    /// A batch is with the log: the next one waits for it to come back.
    pub fn committing(&self) -> bool {
        self.commits.in_flight()
    }

    /// Messages waiting for the next batch to be handed to the log.
    pub fn accumulated(&self) -> usize {
        self.commits.accumulated()
    }

    /// Nothing handed to the log is unsettled and no room is loading.
    pub fn is_settled(&self) -> bool {
        !self.commits.in_flight() && self.commits.accumulated() == 0 && self.parked == 0
    }

    /// Log mode: some room knows the log has messages it has not
    /// delivered, and a fill is due (a timer, see `poll_timeout`).
    pub fn behind_log(&self) -> bool {
        !self.gaps.is_empty()
    }

    pub fn poll_effect(&mut self) -> Option<Effect> {
        self.effects.pop_front()
    }

    pub fn take_tally(&mut self) -> Tally {
        std::mem::take(&mut self.tally)
    }

    /// Rooms loaded now.
    pub fn loaded_rooms(&self) -> usize {
        self.rooms
            .values()
            .filter(|s| matches!(s, Slot::Loaded(_)))
            .count()
    }

    pub fn handle(&mut self, cmd: Command, now: Millis) {
        if self.rooms.is_empty() {
            // The first room in a while: the timers start from here.
            self.next_tick = now + self.limits.presence_window_ms;
        }
        let Some(name) = cmd.room().cloned() else {
            if let Command::Stats {
                after,
                limit,
                reply,
            } = cmd
            {
                let _ = reply.send(self.stats(after.as_ref(), limit));
            }
            return;
        };
        if let Command::Expire { room } = cmd {
            return self.expire(room, now);
        }
        match self.rooms.get_mut(&name) {
            Some(Slot::Loaded(_)) => self.apply(cmd, now),
            Some(Slot::Waiting(..)) if self.parked >= MAX_PARKED => {
                refuse(cmd, "the room is busy; try again")
            }
            Some(Slot::Waiting(_, parked)) => {
                parked.push(cmd);
                self.parked += 1;
            }
            None => match cmd {
                // Nothing to do for a room nobody is in.
                Command::Leave { .. }
                | Command::Typing { .. }
                | Command::Read { .. }
                | Command::Status { .. } => {}
                Command::Presence { room, peer } => {
                    let f = presence_frame(&room, None, peer.format, 0);
                    fanout::push_all(&peer, &[f]);
                }
                cmd if self.stopping => refuse(cmd, "the server is shutting down"),
                cmd if self.parked >= MAX_PARKED => {
                    refuse(cmd, "too many rooms loading; try again")
                }
                cmd => {
                    self.parked += 1;
                    let slot = Slot::Waiting(Wait::Load, vec![cmd]);
                    self.rooms.insert(name.clone(), slot);
                    self.effects.push_back(Effect::Load(name));
                }
            },
        }
    }

    /// Retention found the room's whole log past its age: delete it with the
    /// next batch, unless someone is in it or it has anything in flight.
    /// Its commands wait meanwhile; afterwards the name starts a new log.
    fn expire(&mut self, name: RoomName, now: Millis) {
        match self.rooms.get(&name) {
            None => {}
            Some(Slot::Loaded(r)) if r.unloadable(now, 0) => {
                self.tally.unloaded += 1;
                if self.shared_log() {
                    self.effects.push_back(Effect::Unsubscribe(name.clone()));
                }
            }
            Some(_) => return,
        }
        self.rooms
            .insert(name.clone(), Slot::Waiting(Wait::Expiry, Vec::new()));
        self.commits.expire(name);
    }

    /// The batch that deleted (or failed to delete) an expired room is back:
    /// what waited runs (a fresh load).
    pub(super) fn expiry_done(&mut self, name: &RoomName, now: Millis) {
        if !matches!(self.rooms.get(name), Some(Slot::Waiting(Wait::Expiry, _))) {
            return;
        }
        let Some(Slot::Waiting(_, parked)) = self.rooms.remove(name) else {
            return;
        };
        self.parked -= parked.len();
        for cmd in parked {
            self.handle(cmd, now);
        }
    }

    /// A room's log has been read: the room is loaded and what waited for
    /// it runs, in order. A failed load answers what waited with `internal`.
    pub fn loaded(
        &mut self,
        name: RoomName,
        result: Result<RoomLog, Arc<StoreError>>,
        now: Millis,
    ) {
        if !matches!(self.rooms.get(&name), Some(Slot::Waiting(Wait::Load, _))) {
            // Refused meanwhile (`stop`).
            return;
        }
        let Some(Slot::Waiting(_, parked)) = self.rooms.remove(&name) else {
            return;
        };
        self.parked -= parked.len();
        match result {
            Ok(log) => {
                let room = Room::new(name.clone(), log, &self.limits, now);
                self.rooms
                    .insert(name.clone(), Slot::Loaded(Box::new(room)));
                self.tally.loaded += 1;
                if self.shared_log() {
                    self.effects.push_back(Effect::Subscribe(name));
                }
                for cmd in parked {
                    self.apply(cmd, now);
                }
            }
            Err(e) => {
                tracing::error!(room = %name, cause = %e, "loading a room failed");
                for cmd in parked {
                    refuse(cmd, "the room's history is unavailable");
                }
            }
        }
    }

    /// A command for a loaded room.
    fn apply(&mut self, cmd: Command, now: Millis) {
        match cmd {
            Command::Join { .. } => {
                let cmd = if self.shared_log() {
                    match self.wait_for_since(cmd) {
                        Some(cmd) => cmd,
                        None => return,
                    }
                } else {
                    cmd
                };
                self.apply_join(cmd, now);
            }
            Command::Leave {
                room,
                client_id,
                explicit,
            } => {
                if let Some(r) = self.room_mut(&room) {
                    r.leave(client_id, explicit, now);
                }
            }
            Command::Publish(p) => self.publish_loaded(p, now),
            Command::Presence { room, peer } => {
                let r = self.room_mut(&room).expect("apply: loaded");
                fanout::push_all(&peer, &[r.presence_frame(peer.format, now)]);
            }
            Command::Typing { room, peer } => self.typing(&room, &peer, now),
            Command::Read {
                room,
                peer,
                sequence,
            } => self.mark_read(&room, &peer, sequence, now),
            Command::Status { room, user, status } => self.status(&room, &user, &status),
            Command::Wait { room, after, reply } => self.wait(&room, after, reply),
            Command::Stats { .. } | Command::Expire { .. } => {
                unreachable!("handled before a room is looked up")
            }
        }
    }

    /// A join of a loaded room.
    fn apply_join(&mut self, cmd: Command, now: Millis) {
        let limits = catchup::Limits {
            history_on_join: self.limits.history_on_join,
            replay_limit: self.limits.replay_limit,
        };
        let Command::Join {
            peer,
            room,
            since,
            epoch,
            join,
            reply,
        } = cmd
        else {
            return;
        };
        let Some(r) = self.room_mut(&room) else {
            // Its room left memory while it waited (a replaced log).
            let _ = reply.send(Err(ErrorCode::Internal));
            return;
        };
        if r.members.contains(peer.client_id) {
            r.rejoin(peer.client_id);
            let _ = reply.send(Ok(()));
            return;
        }
        let client_id = peer.client_id;
        let read = r.join(peer, join, since, epoch.as_deref(), limits, now);
        if reply.send(Ok(())).is_err() {
            // The session is gone already.
            self.remove_member(&room, client_id, now);
            return;
        }
        if let Some(read) = read {
            self.effects.push_back(Effect::Read(read));
        }
    }

    /// What a catch-up read brought.
    pub fn read_done(&mut self, done: ReadDone, now: Millis) {
        let Some(room) = self.room_mut(&done.room) else {
            return;
        };
        let handoff = match done.result {
            Ok(chunk) => room.chunk(done.client_id, done.join, chunk, now),
            Err(e) => {
                tracing::error!(room = %done.room, cause = %e, "catch-up read failed");
                let current = room
                    .members
                    .get_mut(done.client_id)
                    .filter(|m| m.join == done.join);
                if let Some(m) = current {
                    m.peer.outbox.cut(close::INTERNAL);
                    self.remove_member(&done.room, done.client_id, now);
                }
                return;
            }
        };
        match handoff {
            Handoff::Stale => self.tally.stale_reads += 1,
            Handoff::Remove => self.remove_member(&done.room, done.client_id, now),
            Handoff::Live { replayed } => self.tally.replayed += replayed,
            Handoff::More { read, replayed } => {
                self.tally.replayed += replayed;
                self.effects.push_back(Effect::Read(read));
            }
        }
    }

    /// Removes a member that can take no more frames (cut, or gone).
    fn remove_member(&mut self, name: &RoomName, client_id: u64, now: Millis) {
        if let Some(room) = self.room_mut(name) {
            if let Some(m) = room.leave(client_id, false, now) {
                if m.peer.outbox.cut_code() == close::SLOW_CONSUMER {
                    self.tally.slow_consumer_cuts += 1;
                }
            }
        }
    }

    /// When `handle_timeout` wants to run next (None: no room loaded).
    pub fn poll_timeout(&self) -> Option<Millis> {
        let gap = self.gaps.values().min().copied();
        (!self.rooms.is_empty()).then_some(self.next_tick.min(gap.unwrap_or(u64::MAX)))
    }

    /// Presence windows, idle unloading, and (log mode) gaps due a fill.
    pub fn handle_timeout(&mut self, now: Millis) {
        if !self.gaps.is_empty() {
            self.fill_due_gaps(now);
        }
        if now < self.next_tick {
            return;
        }
        self.next_tick = now + self.limits.presence_window_ms;
        let max = self.limits.presence_diff_max_members;
        let mut gone = Vec::new();
        for slot in self.rooms.values_mut() {
            if let Slot::Loaded(room) = slot {
                room.prune_waiters();
                for id in room.flush_presence(max) {
                    gone.push((room.name.clone(), id));
                }
            }
        }
        for (name, id) in gone {
            self.remove_member(&name, id, now);
        }
        if self.shared_log() {
            self.local_presence_changes();
        }
        let idle = self.limits.idle_unload_ms;
        let shared = self.shared_log();
        let mut unloaded = Vec::new();
        self.rooms.retain(|name, slot| match slot {
            Slot::Loaded(room) if room.unloadable(now, idle) => {
                unloaded.push(name.clone());
                false
            }
            Slot::Loaded(_) | Slot::Waiting(..) => true,
        });
        self.tally.unloaded += unloaded.len() as u64;
        if shared {
            for name in unloaded {
                self.gaps.remove(&name);
                self.effects.push_back(Effect::Unsubscribe(name));
            }
        }
    }

    pub fn stats(&self, after: Option<&RoomName>, limit: usize) -> Vec<RoomStats> {
        use std::ops::Bound;
        let from = after.map_or(Bound::Unbounded, Bound::Excluded);
        self.rooms
            .range((from, Bound::Unbounded))
            .map(|(_, slot)| slot)
            .filter_map(|s| match s {
                Slot::Loaded(r) => Some(RoomStats {
                    room: r.name.clone(),
                    last: r.seq.committed(),
                    members: r.presence.count(),
                    connections: r.members.len(),
                }),
                Slot::Waiting(..) => None,
            })
            .take(limit)
            .collect()
    }

    /// The shard is stopping: what waits for the log is refused, and no new
    /// room is loaded. Batches are left to land (`end_round` and `committed`
    /// as usual).
    pub fn stop(&mut self) {
        self.stopping = true;
        // Read markers that waited for a batch go with the last one.
        self.commits.flush_markers();
        for slot in self.rooms.values_mut() {
            if let Slot::Waiting(_, parked) = slot {
                self.parked -= parked.len();
                for cmd in parked.drain(..) {
                    refuse(cmd, "the server is shutting down");
                }
            }
        }
        self.rooms
            .retain(|_, slot| !matches!(slot, Slot::Waiting(Wait::Load, _)));
    }
}

/// Answers a command that cannot be carried out now with `internal`.
fn refuse(cmd: Command, why: &str) {
    match cmd {
        Command::Join { reply, .. } => {
            let _ = reply.send(Err(ErrorCode::Internal));
        }
        Command::Publish(p) => {
            let id = p.client_msg_id.as_deref();
            commit::reply_error(p.origin, ErrorCode::Internal, id, &p.room);
        }
        Command::Presence { peer, .. } => {
            let f = crate::protocol::server::error(peer.format, ErrorCode::Internal, why, None);
            fanout::push_all(&peer, &[f]);
        }
        Command::Leave { .. }
        | Command::Stats { .. }
        | Command::Expire { .. }
        | Command::Typing { .. }
        | Command::Read { .. }
        | Command::Status { .. } => {}
        // Dropped: the long poll answers with what it has.
        Command::Wait { .. } => {}
    }
}
