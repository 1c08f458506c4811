//! The room core when the log is shared by several nodes
//! (`Sequencing::Log`, cluster mode): messages numbered by the log reach a
//! room from this node's commits, from the room's live channel and from
//! fills, and go out through one ordered path (`ordered`); the live
//! channel's lifecycle, gap fills, joins whose `since` is ahead of this
//! node, other nodes' presence, and a log replaced under a loaded room.
//!
//! Why each step is safe:
//! - Subscribing comes after loading, so messages stored in between are
//!   missed by the channel: `subscribed` fills from the room's position to
//!   the log's newest. The same happens after every resubscription (a
//!   Redis reconnect), so nothing published while unsubscribed is lost.
//! - The live channel is at most once: a gap (a message numbered past the
//!   next one) waits `fill_grace_ms` for the late one, then is read from
//!   the log. Fills repeat until the room has what the log had.
//! - A join whose `since` is past this node's position (the client saw a
//!   message from another node that this one has not delivered yet) waits
//!   for a fill instead of being told its position is foreign.

use std::sync::Arc;

use super::interface::{Fill, PresenceChange};
use super::member::MemberState;
use super::presence::RemoteUpdate;
use super::{refuse, Command, Effect, Millis, Rooms, Slot};
use crate::error::close;
use crate::message::StoredMessage;
use crate::protocol::RoomName;
use crate::store::{StoreError, Tail};

/// Most messages one fill brings (then it reads on).
pub const FILL_CHUNK: usize = 1000;
/// How long a failed fill waits before it is tried again.
const FILL_RETRY_MS: u64 = 500;
/// Most joins waiting for a fill per room; more are refused.
const MAX_WAITING_JOINS: usize = 1024;

impl Rooms {
    /// The room's live channel is listening (first time or again): read
    /// what the log got meanwhile.
    pub fn subscribed(&mut self, name: &RoomName, now: Millis) {
        let Some(room) = self.room_mut(name) else {
            return;
        };
        if room.ordered.filling {
            room.ordered.refill = true;
        } else {
            self.start_fill(name, u64::MAX);
        }
        let _ = now;
    }

    /// Every loaded room fills to the log's newest: live messages of this
    /// shard were lost (the feed fell behind).
    pub fn resync(&mut self, now: Millis) {
        let names: Vec<RoomName> = self.loaded_names();
        for name in names {
            self.subscribed(&name, now);
        }
    }

    /// Messages that came on a room's live channel, numbered by the log
    /// whose epoch is `epoch`.
    pub fn live(
        &mut self,
        name: &RoomName,
        epoch: &str,
        messages: Vec<StoredMessage>,
        now: Millis,
    ) {
        let Some(room) = self.room_ref(name) else {
            return;
        };
        if *room.epoch != *epoch {
            return self.log_replaced(name, now);
        }
        self.deliver_numbered(name, messages, now);
    }

    /// What a fill read from the log.
    pub fn filled(&mut self, name: &RoomName, result: Result<Tail, Arc<StoreError>>, now: Millis) {
        let Some(room) = self.room_mut(name) else {
            return;
        };
        room.ordered.filling = false;
        let tail = match result {
            Ok(tail) => tail,
            Err(e) => {
                tracing::warn!(room = %name, cause = %e, "filling a gap from the log failed; retrying");
                room.ordered.retry = true;
                let waiting = std::mem::take(&mut room.waiting_joins);
                for cmd in waiting {
                    refuse(cmd, "the room's history is unavailable");
                }
                self.gaps.insert(name.clone(), now + FILL_RETRY_MS);
                return;
            }
        };
        if tail.epoch.as_deref() != Some(&*room.epoch) {
            return self.log_replaced(name, now);
        }
        let committed = room.seq.committed();
        room.ordered.saw(tail.last);
        let complete = tail.messages.len() < FILL_CHUNK;
        // What the log did not return below what it did is past retention.
        let first = tail.messages.first().map(|m| m.sequence);
        let skip_to = match first {
            Some(first) if first > committed + 1 => Some(first - 1),
            None if complete => Some(tail.last.min(room.ordered.gap_end(committed))),
            _ => None,
        };
        if let Some(to) = skip_to.filter(|&to| to > committed) {
            tracing::warn!(room = %name, from = committed + 1, to, "messages past retention skipped");
            room.seq.advance(to);
            room.release_waiters();
        }
        self.deliver_numbered(name, tail.messages, now);
        let Some(room) = self.room_mut(name) else {
            return;
        };
        let committed = room.seq.committed();
        let refill = std::mem::take(&mut room.ordered.refill);
        if refill || (!complete && room.ordered.behind(committed)) {
            self.start_fill(name, u64::MAX);
        }
        self.release_joins(name, now);
    }

    /// Another node's users in a room changed.
    pub fn remote_presence(&mut self, name: &RoomName, update: RemoteUpdate, now: Millis) {
        if let Some(room) = self.room_mut(name) {
            room.presence.apply_remote(update, now);
        }
    }

    /// Another node is dead: its users leave every room.
    pub fn node_gone(&mut self, node: &str) {
        for slot in self.rooms.values_mut() {
            if let Slot::Loaded(room) = slot {
                room.presence.node_gone(node);
            }
        }
    }

    /// Messages numbered by the log, from any source: delivered in order,
    /// once; a gap is scheduled for filling.
    pub(super) fn deliver_numbered(
        &mut self,
        name: &RoomName,
        messages: Vec<StoredMessage>,
        now: Millis,
    ) {
        let Some(room) = self.room_mut(name) else {
            return;
        };
        let run = room.ordered.offer(room.seq.committed(), messages);
        if let Some(last) = run.last() {
            room.seq.advance(last.sequence);
            room.last_active = now;
            room.persisted = true;
            for m in &run {
                if let Some(id) = &m.client_msg_id {
                    room.dedup.insert(&m.user, id, m.sequence);
                }
            }
            self.deliver(name, &run, now);
        }
        self.check_gap(name, now);
    }

    /// A room behind the log gets a fill scheduled (after the grace, for
    /// the live channel to catch up), unless one is under way.
    fn check_gap(&mut self, name: &RoomName, now: Millis) {
        let grace = self.limits.fill_grace_ms;
        let Some(room) = self.room_ref(name) else {
            self.gaps.remove(name);
            return;
        };
        let o = &room.ordered;
        if o.retry && !o.filling {
            self.gaps.entry(name.clone()).or_insert(now + FILL_RETRY_MS);
        } else if o.behind(room.seq.committed()) && !o.filling {
            self.gaps.entry(name.clone()).or_insert(now + grace);
        } else {
            self.gaps.remove(name);
        }
    }

    /// Fills the gaps whose grace has passed.
    pub(super) fn fill_due_gaps(&mut self, now: Millis) {
        let due: Vec<RoomName> = self
            .gaps
            .iter()
            .filter(|(_, at)| **at <= now)
            .map(|(name, _)| name.clone())
            .collect();
        for name in due {
            self.gaps.remove(&name);
            let upto = match self.room_ref(&name) {
                // A failed fill retried: to the newest.
                Some(room) if room.ordered.retry => u64::MAX,
                Some(room) if room.ordered.behind(room.seq.committed()) => {
                    room.ordered.gap_end(room.seq.committed())
                }
                Some(_) => u64::MAX,
                None => continue,
            };
            self.start_fill(&name, upto);
        }
    }

    fn start_fill(&mut self, name: &RoomName, upto: u64) {
        let Some(room) = self.room_mut(name) else {
            return;
        };
        if room.ordered.filling {
            return;
        }
        room.ordered.filling = true;
        // A fill to the newest does what a failed one left to do.
        room.ordered.retry &= upto != u64::MAX;
        let after = room.seq.committed();
        self.gaps.remove(name);
        self.tally.fills += 1;
        self.effects.push_back(Effect::Fill(Fill {
            room: name.clone(),
            after,
            upto,
        }));
    }

    /// A join whose `since` is past this node's position waits for a fill
    /// to the log's newest. Returns it back when it need not wait.
    pub(super) fn wait_for_since(&mut self, cmd: Command) -> Option<Command> {
        let Command::Join {
            room: name, since, ..
        } = &cmd
        else {
            return Some(cmd);
        };
        let name = name.clone();
        let room = self.room_mut(&name)?;
        let ahead = since.is_some_and(|s| s > room.seq.committed());
        if !ahead || room.members.contains(join_client(&cmd)) {
            return Some(cmd);
        }
        if room.waiting_joins.len() >= MAX_WAITING_JOINS {
            refuse(cmd, "the room is busy; try again");
            return None;
        }
        room.waiting_joins.push(cmd);
        if room.ordered.filling {
            room.ordered.refill = true;
        } else {
            self.start_fill(&name, u64::MAX);
        }
        None
    }

    /// Joins that waited for a fill go on once the room is at their
    /// `since` or has all the log had (then a `since` past it is foreign).
    fn release_joins(&mut self, name: &RoomName, now: Millis) {
        let Some(room) = self.room_mut(name) else {
            return;
        };
        let committed = room.seq.committed();
        let caught_up = !room.ordered.filling && !room.ordered.behind(committed);
        let (go, wait): (Vec<Command>, Vec<Command>) = std::mem::take(&mut room.waiting_joins)
            .into_iter()
            .partition(|cmd| match cmd {
                Command::Join { since, .. } => caught_up || since.is_none_or(|s| s <= committed),
                _ => true,
            });
        room.waiting_joins = wait;
        for cmd in go {
            self.apply_join(cmd, now);
        }
    }

    /// The room's log is not the one this node loaded (deleted and created
    /// again, or Redis lost it): its members are closed with 1012 so they
    /// rejoin (and learn the new epoch), and the room leaves memory.
    pub(super) fn log_replaced(&mut self, name: &RoomName, now: Millis) {
        let Some(Slot::Loaded(mut room)) = self.rooms.remove(name) else {
            return;
        };
        tracing::warn!(room = %name, "the room's log was replaced; its members are asked to rejoin");
        self.gaps.remove(name);
        for m in room.members.as_mut_slice() {
            if matches!(m.state, MemberState::Live | MemberState::CatchingUp(_)) {
                m.peer.outbox.cut(close::SERVICE_RESTART);
            }
        }
        for cmd in std::mem::take(&mut room.waiting_joins) {
            refuse(cmd, "the room's log changed; try again");
        }
        let leaves = room.presence.local_users();
        if !leaves.is_empty() {
            self.effects.push_back(Effect::Presence(PresenceChange {
                room: name.clone(),
                joins: Vec::new(),
                leaves,
            }));
        }
        self.effects.push_back(Effect::Unsubscribe(name.clone()));
        self.tally.unloaded += 1;
        let _ = now;
    }

    /// Every room tells the other nodes all of this node's users again (the
    /// others may have missed changes, or taken this node for dead).
    pub fn republish_presence(&mut self) {
        for slot in self.rooms.values_mut() {
            if let Slot::Loaded(room) = slot {
                let joins = room.presence.local_users();
                if !joins.is_empty() {
                    self.effects.push_back(Effect::Presence(PresenceChange {
                        room: room.name.clone(),
                        joins,
                        leaves: Vec::new(),
                    }));
                }
            }
        }
    }

    /// This node's users that changed in each room, for the other nodes.
    pub(super) fn local_presence_changes(&mut self) {
        for slot in self.rooms.values_mut() {
            if let Slot::Loaded(room) = slot {
                if room.presence.has_local_changes() {
                    let (joins, leaves) = room.presence.take_local();
                    self.effects.push_back(Effect::Presence(PresenceChange {
                        room: room.name.clone(),
                        joins,
                        leaves,
                    }));
                }
            }
        }
    }
}

fn join_client(cmd: &Command) -> u64 {
    match cmd {
        Command::Join { peer, .. } => peer.client_id,
        _ => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::outbox::{Outbox, OutboxReceiver};
    use crate::protocol::Format;
    use crate::rooms::fanout::Sequential;
    use crate::rooms::{Limits, Peer};
    use crate::store::{RoomLog, Sequencing};
    use tokio::sync::oneshot;

    fn limits() -> Limits {
        Limits {
            dedup_window: 10,
            history_on_join: 0,
            replay_limit: 100,
            presence_window_ms: 100,
            presence_diff_max_members: 1000,
            idle_unload_ms: 1000,
            sequencing: Sequencing::Log,
            fill_grace_ms: 50,
        }
    }

    fn msg(seq: u64) -> StoredMessage {
        StoredMessage {
            sequence: seq,
            timestamp: 0,
            user: "zed".into(),
            content: format!("m{seq}"),
            client_msg_id: None,
        }
    }

    fn peer(id: u64) -> (Arc<Peer>, OutboxReceiver) {
        let (outbox, rx) = Outbox::new(64, 1 << 20);
        (
            Arc::new(Peer::new(id, "ann".into(), Format::Json, outbox)),
            rx,
        )
    }

    /// The sequences of the message frames queued for a peer.
    fn seen(peer: &Peer, rx: &mut OutboxReceiver) -> Vec<u64> {
        peer.outbox
            .drain_frames(rx)
            .into_iter()
            .filter_map(|f| {
                let v: serde_json::Value = serde_json::from_slice(&f[2..]).ok()?;
                (v["type"] == "message").then(|| v["data"]["sequence"].as_u64().unwrap())
            })
            .collect()
    }

    /// A room loaded at `last`, subscribed, with its first fill answered.
    fn loaded(last: u64) -> (Rooms, RoomName) {
        let mut rooms = Rooms::new(limits(), Box::new(Sequential));
        let name = RoomName::parse("r").unwrap();
        let (p, _rx) = peer(99);
        // Its answer is dropped at once: a joiner gone before the room loads.
        drop(join(&mut rooms, &p, &name, None));
        let log = RoomLog {
            epoch: "e".into(),
            last,
            recent_ids: Vec::new(),
            exists: true,
            room_limit_reached: false,
            presence: Vec::new(),
            read_markers: Vec::new(),
        };
        rooms.loaded(name.clone(), Ok(log), 0);
        while rooms.poll_effect().is_some() {}
        (rooms, name)
    }

    fn tail(messages: Vec<StoredMessage>, last: u64) -> Result<Tail, Arc<StoreError>> {
        Ok(Tail {
            epoch: Some("e".into()),
            last,
            messages,
        })
    }

    /// `p` joins `name` (join id 1) at time 0; the join's answer.
    fn join(
        rooms: &mut Rooms,
        p: &Arc<Peer>,
        name: &RoomName,
        since: Option<u64>,
    ) -> oneshot::Receiver<Result<(), crate::error::ErrorCode>> {
        let (reply, answered) = oneshot::channel();
        rooms.handle(
            Command::Join {
                peer: p.clone(),
                room: name.clone(),
                since,
                epoch: None,
                join: 1,
                reply,
            },
            0,
        );
        answered
    }

    #[test]
    fn a_gap_waits_for_the_channel_then_is_filled_from_the_log() {
        let (mut rooms, name) = loaded(2);
        let (p, mut rx) = peer(1);
        let _r = join(&mut rooms, &p, &name, Some(2));
        // 3 is late on the channel: 4 and 5 are held.
        rooms.live(&name, "e", vec![msg(4), msg(5)], 10);
        assert!(seen(&p, &mut rx).is_empty());
        assert_eq!(rooms.poll_timeout(), Some(60), "the grace");
        rooms.live(&name, "e", vec![msg(3)], 20);
        assert_eq!(seen(&p, &mut rx), [3, 4, 5]);
        assert!(!rooms.behind_log());
        // 6 is lost: after the grace the log is read, up to the held 7.
        rooms.live(&name, "e", vec![msg(7)], 30);
        rooms.handle_timeout(80);
        let Some(Effect::Fill(fill)) = rooms.poll_effect() else {
            panic!("no fill");
        };
        assert_eq!((fill.after, fill.upto), (5, 6));
        rooms.filled(&name, tail(vec![msg(6)], 7), 90);
        assert_eq!(seen(&p, &mut rx), [6, 7]);
    }

    #[test]
    fn a_failed_fill_is_retried_whatever_is_delivered_meanwhile() {
        let (mut rooms, name) = loaded(2);
        let (p, mut rx) = peer(1);
        let _r = join(&mut rooms, &p, &name, Some(2));
        // The channel is (re)subscribed: a fill to the newest, which fails.
        rooms.subscribed(&name, 10);
        let Some(Effect::Fill(fill)) = rooms.poll_effect() else {
            panic!("no fill");
        };
        assert_eq!((fill.after, fill.upto), (2, u64::MAX));
        rooms.filled(&name, Err(Arc::new(StoreError::Stopped)), 20);
        // The next message comes in order (from this node's commit or the
        // channel): delivered, and the retry still stands — the log may
        // have more that the channel lost while unsubscribed.
        rooms.live(&name, "e", vec![msg(3)], 30);
        assert_eq!(seen(&p, &mut rx), [3]);
        assert!(rooms.behind_log(), "the retry was dropped");
        rooms.handle_timeout(20 + FILL_RETRY_MS);
        let Some(Effect::Fill(fill)) = rooms.poll_effect() else {
            panic!("no retried fill");
        };
        assert_eq!((fill.after, fill.upto), (3, u64::MAX));
        rooms.filled(&name, tail(vec![msg(4)], 4), 600);
        assert_eq!(seen(&p, &mut rx), [4]);
        assert!(!rooms.behind_log());
    }

    #[test]
    fn a_join_ahead_of_the_node_waits_for_a_fill() {
        let (mut rooms, name) = loaded(5);
        let (p, mut rx) = peer(1);
        let mut answered = join(&mut rooms, &p, &name, Some(7));
        assert!(answered.try_recv().is_err(), "it waits");
        let Some(Effect::Fill(fill)) = rooms.poll_effect() else {
            panic!("no fill");
        };
        assert_eq!((fill.after, fill.upto), (5, u64::MAX));
        rooms.filled(&name, tail(vec![msg(6), msg(7), msg(8)], 8), 10);
        assert!(answered.try_recv().unwrap().is_ok());
        // It replays from its `since` (a foreign log would start at 0).
        let Some(Effect::Read(read)) = rooms.poll_effect() else {
            panic!("no catch-up read");
        };
        assert_eq!((read.after, read.upto), (7, 8));
        assert!(seen(&p, &mut rx).is_empty(), "nothing before its replay");
    }

    #[test]
    fn another_epoch_on_the_channel_closes_the_rooms_sessions() {
        let (mut rooms, name) = loaded(2);
        let (p, _rx) = peer(1);
        let _r = join(&mut rooms, &p, &name, None);
        rooms.live(&name, "other", vec![msg(1)], 10);
        assert_eq!(p.outbox.cut_code(), close::SERVICE_RESTART);
        assert_eq!(rooms.loaded_rooms(), 0);
    }

    /// The frames of type `kind` queued for a peer.
    fn frames_of(peer: &Peer, rx: &mut OutboxReceiver, kind: &str) -> Vec<serde_json::Value> {
        peer.outbox
            .drain_frames(rx)
            .into_iter()
            .filter_map(|f| serde_json::from_slice::<serde_json::Value>(&f[2..]).ok())
            .filter(|v| v["type"] == kind)
            .collect()
    }

    #[test]
    fn relays_go_to_the_other_nodes_and_come_from_them() {
        use crate::rooms::{Relay, RoomRelay};
        let (mut rooms, name) = loaded(5);
        let (p, mut rx) = peer(1);
        let _r = join(&mut rooms, &p, &name, None);
        while rooms.poll_effect().is_some() {}
        let from_bob = |relay| RoomRelay {
            room: name.clone(),
            user: "bob".into(),
            relay,
        };
        // Another node's read marker moves this node's copy, once.
        rooms.remote_relay(from_bob(Relay::Read(4)), 10);
        rooms.remote_relay(from_bob(Relay::Read(3)), 11);
        let reads = frames_of(&p, &mut rx, "read");
        assert_eq!(reads.len(), 1);
        assert_eq!(reads[0]["data"]["sequence"], 4);
        rooms.remote_relay(from_bob(Relay::Typing), 12);
        let typing = frames_of(&p, &mut rx, "typing");
        assert_eq!(typing[0]["data"]["user"], "bob");
        // This node's user: relayed here and handed to the other nodes.
        rooms.handle(
            Command::Read {
                room: name.clone(),
                peer: p.clone(),
                sequence: 5,
            },
            20,
        );
        let mut relayed = Vec::new();
        while let Some(e) = rooms.poll_effect() {
            if let Effect::Relay(r) = e {
                relayed.push(r);
            }
        }
        assert_eq!(
            relayed,
            [RoomRelay {
                room: name.clone(),
                user: "ann".into(),
                relay: Relay::Read(5),
            }]
        );
    }
}
