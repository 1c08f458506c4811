//! The core's inputs and outputs: its limits, the commands it takes, the
//! effects it asks the driver to perform and what comes back from them, and
//! the counts it keeps for the metrics.

use std::sync::Arc;

use tokio::sync::oneshot;

use super::catchup::{Chunk, ReadRequest};
use super::commit::Publish;
use super::member::{JoinId, Peer};
use crate::error::ErrorCode;
use crate::protocol::{RoomName, Status};
use crate::store::{Batch, Sequencing, StoreError};

/// Milliseconds since the Unix epoch: the core's only notion of time.
pub type Millis = u64;

/// Log mode: how long a gap waits for the live channel by default.
pub const FILL_GRACE_MS: u64 = 50;

#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub dedup_window: usize,
    pub history_on_join: u64,
    pub replay_limit: u64,
    /// Presence changes are coalesced over this window (and the timers tick
    /// at it).
    pub presence_window_ms: u64,
    /// Rooms with more members send no presence diffs.
    pub presence_diff_max_members: usize,
    /// Rooms without members, quiet this long, leave memory.
    pub idle_unload_ms: u64,
    pub sequencing: Sequencing,
    /// Log mode: how long a gap in a room's sequence may wait for the live
    /// channel (whose messages may come a little late) before it is filled
    /// from the log.
    pub fill_grace_ms: u64,
}

impl Limits {
    pub fn from_config(cfg: &crate::config::Config, sequencing: Sequencing) -> Limits {
        Limits {
            dedup_window: cfg.dedup_window,
            history_on_join: cfg.history_on_join,
            replay_limit: cfg.replay_limit,
            presence_window_ms: cfg.presence_window().as_millis() as u64,
            presence_diff_max_members: cfg.presence_diff_max_members,
            idle_unload_ms: cfg.room_idle_ms,
            sequencing,
            fill_grace_ms: FILL_GRACE_MS,
        }
    }
}

/// A request to the rooms of a shard.
pub enum Command {
    Join {
        peer: Arc<Peer>,
        room: RoomName,
        since: Option<u64>,
        epoch: Option<String>,
        join: JoinId,
        /// Ok once the session is a member (its frames are in its outbox).
        reply: oneshot::Sender<Result<(), ErrorCode>>,
    },
    Leave {
        room: RoomName,
        client_id: u64,
        /// Send `left` (an explicit leave, not a disconnect).
        explicit: bool,
    },
    Publish(Publish),
    Presence {
        room: RoomName,
        peer: Arc<Peer>,
    },
    /// Up to `limit` loaded rooms named after `after`, in name order.
    Stats {
        after: Option<RoomName>,
        limit: usize,
        reply: oneshot::Sender<Vec<RoomStats>>,
    },
    /// Retention found the room's whole log past its age.
    Expire {
        room: RoomName,
    },
    /// The user of `peer` is typing (relayed, never stored).
    Typing {
        room: RoomName,
        peer: Arc<Peer>,
    },
    /// The user of `peer` has read up to `sequence`.
    Read {
        room: RoomName,
        peer: Arc<Peer>,
        sequence: u64,
    },
    /// `user`'s status changed (they are in `room`).
    Status {
        room: RoomName,
        user: Arc<str>,
        status: Status,
    },
    /// A long poll: answered with the room's newest sequence once it is
    /// past `after`. Dropping the receiver gives up.
    Wait {
        room: RoomName,
        after: u64,
        reply: oneshot::Sender<u64>,
    },
}

impl Command {
    pub(super) fn room(&self) -> Option<&RoomName> {
        match self {
            Command::Join { room, .. }
            | Command::Leave { room, .. }
            | Command::Presence { room, .. }
            | Command::Typing { room, .. }
            | Command::Read { room, .. }
            | Command::Status { room, .. }
            | Command::Wait { room, .. }
            | Command::Expire { room } => Some(room),
            Command::Publish(p) => Some(&p.room),
            Command::Stats { .. } => None,
        }
    }
}

/// I/O the driver performs for the core.
pub enum Effect {
    /// Read a room's log (`Store::load_room`); answer with `loaded`.
    Load(RoomName),
    /// Commit a batch; answer with `committed`, handing the batch back.
    Commit(Batch),
    /// Read for a catching-up member; answer with `read_done`.
    Read(ReadRequest),
    /// Log mode: listen to the room's live channel (its log is shared);
    /// answer with `subscribed` once listening.
    Subscribe(RoomName),
    /// Log mode: stop listening (the room left memory).
    Unsubscribe(RoomName),
    /// Log mode: read what the log has after `after` (up to `upto`) that
    /// this node has not delivered; answer with `filled`.
    Fill(Fill),
    /// Log mode: this node's own users in a room changed; tell the others.
    Presence(PresenceChange),
    /// Log mode: what a user of this node did that the other nodes relay
    /// to their members (never stored by this path; markers go in batches).
    Relay(RoomRelay),
}

/// A relayed event of a room (typing, read marker, status), between nodes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoomRelay {
    pub room: RoomName,
    pub user: Arc<str>,
    pub relay: Relay,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Relay {
    Typing,
    Read(u64),
    Status(Status),
}

/// A read of a shared log's tail for a room that fell behind it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fill {
    pub room: RoomName,
    pub after: u64,
    /// `u64::MAX`: up to the log's newest.
    pub upto: u64,
}

/// This node's users that came online or went offline in a room.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PresenceChange {
    pub room: RoomName,
    pub joins: Vec<Arc<str>>,
    pub leaves: Vec<Arc<str>>,
}

/// The outcome of a `Read` effect.
pub struct ReadDone {
    pub room: RoomName,
    pub client_id: u64,
    pub join: JoinId,
    pub result: Result<Chunk, Arc<StoreError>>,
}

#[derive(Debug, Clone)]
pub struct RoomStats {
    pub room: RoomName,
    pub last: u64,
    pub members: usize,
    pub connections: usize,
}

/// Counts for the metrics, taken by the driver after each round.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Tally {
    pub deliveries: u64,
    pub acks: u64,
    pub replayed: u64,
    pub slow_consumer_cuts: u64,
    /// Catch-up reads that came back for a join no longer current.
    pub stale_reads: u64,
    pub loaded: u64,
    pub unloaded: u64,
    /// Rooms deleted because their whole log was past retention.
    pub expired: u64,
    /// Log mode: fills of a room's gap from the log.
    pub fills: u64,
}
