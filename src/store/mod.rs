//! The log: the seam between the room core and where history lives, a
//! small synchronous trait and its implementations.
//!
//! Calls block (a redb commit syncs to disk), so they run only on the log
//! writer thread or in `spawn_blocking`, never on a shard or elsewhere on the
//! async runtime's workers — except the appends of a store that only changes
//! memory (`Store::appends_in_memory`). Invariants every implementation keeps:
//! - `append` is all-or-nothing for its batch; when it returns `Ok`, every
//!   message in it is durable to the configured degree and visible to reads.
//! - A room's sequences are 1, 2, 3 … with no gap. A log with
//!   `Sequencing::Local` stores the numbers the room core gave and refuses a
//!   batch that would break that; a log with `Sequencing::Log` numbers the
//!   messages itself, atomically, and answers a retried client id with the
//!   original's number (a log shared by several nodes must).
//! - A room's epoch is fixed for the life of its log; `load_room` never
//!   writes, rooms are created by the batch that carries their first message.

pub mod guard;
pub mod memory;
pub mod redb;
pub mod redis;

use std::sync::Arc;

use crate::protocol::RoomName;

pub use self::redb::RedbStore;
pub use self::redis::RedisLog;
pub use crate::message::StoredMessage;
pub use guard::GuardedStore;
pub use memory::MemoryStore;

/// A message to append, with its room.
#[derive(Debug, Clone)]
pub struct Append {
    pub room: RoomName,
    pub message: StoredMessage,
    /// Set by a log that numbers messages when this one repeats a client id
    /// it already has: `message.sequence` is then the original's, and
    /// nothing was stored.
    pub duplicate: bool,
}

impl Append {
    pub fn new(room: RoomName, message: StoredMessage) -> Append {
        Append {
            room,
            message,
            duplicate: false,
        }
    }
}

/// A room the log does not have yet, created by the batch that carries it.
/// A log with `Sequencing::Log` gets one for every room in a batch: the
/// epoch the room core has for it; the log creates a missing room with it,
/// and writes back the epoch it actually has (another node may have
/// created the room, or the log may have been replaced), so the core can
/// tell.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewRoom {
    pub room: RoomName,
    pub epoch: String,
}

/// One group commit: rooms to create, then messages in order, then read
/// markers, then rooms whose whole log is past retention to delete (a later
/// use of the name starts a new log, with a new epoch, and no markers).
#[derive(Debug, Clone, Default)]
pub struct Batch {
    pub new_rooms: Vec<NewRoom>,
    pub appends: Vec<Append>,
    pub expired: Vec<RoomName>,
    /// Highest sequences users have read; a store keeps the larger of what
    /// it has and what comes (a marker never goes back).
    pub read_markers: Vec<ReadMarker>,
}

impl Batch {
    pub fn is_empty(&self) -> bool {
        self.new_rooms.is_empty()
            && self.appends.is_empty()
            && self.expired.is_empty()
            && self.read_markers.is_empty()
    }
}

/// How far a user has read a room.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadMarker {
    pub room: RoomName,
    pub user: Arc<str>,
    pub sequence: u64,
}

/// Who numbers a room's messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sequencing {
    /// The room core (one node owns the room): the log checks the numbers.
    Local,
    /// The log, atomically with the append (a log several nodes share).
    Log,
}

/// What the room core needs to take over a room's log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoomLog {
    /// The room's epoch; for a room the log does not have, a fresh one that
    /// the room's first batch will store.
    pub epoch: String,
    /// Newest stored sequence (0: none yet).
    pub last: u64,
    /// The most recent messages that carried a client id, oldest first
    /// (at most the dedup window), to rebuild the dedup window.
    pub recent_ids: Vec<(Arc<str>, String, u64)>,
    /// Whether the log has the room.
    pub exists: bool,
    /// The log holds as many rooms as the operator allows: a new room may be
    /// joined but not written to (set by the driver, not by stores).
    pub room_limit_reached: bool,
    /// Other nodes' users in the room, as a log shared by nodes has them
    /// (empty for a log of one node).
    pub presence: Vec<RemoteNode>,
    /// The room's read markers (user, sequence), filled in by the driver
    /// from `Store::read_markers`.
    pub read_markers: Vec<(Arc<str>, u64)>,
}

/// Another node's users in a room, under the version of its last change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteNode {
    pub node: Arc<str>,
    pub version: u64,
    pub users: Vec<Arc<str>>,
}

/// The end of a room's log, for a node catching up with what others wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tail {
    /// The log's epoch now (None: the log does not have the room).
    pub epoch: Option<String>,
    /// Its newest sequence now.
    pub last: u64,
    /// Messages after the `after` asked for, oldest first, within the limit.
    pub messages: Vec<StoredMessage>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoomSummary {
    pub room: RoomName,
    pub last: u64,
}

/// What history a store keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    /// Newest messages kept per room.
    pub keep: u64,
    /// Messages with a `timestamp` (ms) before this are deleted too.
    pub older_than_ms: Option<u64>,
}

impl Retention {
    /// Whether a message that is `from_newest` places from the end of its
    /// room (0: the newest) with `timestamp` is past retention.
    pub fn expired(&self, from_newest: u64, timestamp: u64) -> bool {
        from_newest > 0
            && (from_newest >= self.keep.max(1)
                || self.older_than_ms.is_some_and(|t| timestamp < t))
    }
}

/// What can go wrong in the log, typed so that callers (and tests) can tell
/// a failing disk from a refused batch from a bug.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The storage under the log failed (I/O, a full disk, a damaged file).
    #[error("{op}: {source}")]
    Storage {
        op: &'static str,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// A batch would break a room's sequence; refused, nothing written.
    #[error("room {room}: expected sequence {expected}, got {got}")]
    OutOfSequence {
        room: RoomName,
        expected: u64,
        got: u64,
    },
    /// A message for a room the log does not have and its batch does not create.
    #[error("room {0} is not in the log")]
    UnknownRoom(RoomName),
    /// A batch creates a room the log already has under another epoch.
    #[error("room {room} has epoch {stored} in the log, not {given}")]
    EpochMismatch {
        room: RoomName,
        stored: String,
        given: String,
    },
    /// A stored record cannot be read back.
    #[error("message {sequence} cannot be decoded: {why}")]
    Corrupt { sequence: u64, why: String },
    /// The log writer has stopped (shutdown, or it failed).
    #[error("the log writer has stopped")]
    Stopped,
    /// Store code panicked; the operation failed, the process carries on.
    #[error("the store panicked: {0}")]
    Panicked(String),
    /// An I/O failure lost commits that were acked but not yet synced
    /// (`batched`, `none`): the rooms in memory are ahead of the log, so the
    /// log refuses writes until parlor restarts and reloads them.
    #[error("{0}")]
    Unsynced(String),
}

/// What kind of trouble a `StoreError` is, for health and for recovery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// The file is damaged or store code is broken (a panic, a record or
    /// page that cannot be read back): it will not go away by itself.
    Damage,
    /// The storage failed (I/O, a full disk): may pass.
    Io,
    /// The batch itself was refused (sequence, epoch, unknown room).
    Refused,
    /// Not the store's doing (the log writer stopped).
    Stopped,
}

impl StoreError {
    pub fn storage(
        op: &'static str,
        source: impl Into<Box<dyn std::error::Error + Send + Sync>>,
    ) -> StoreError {
        StoreError::Storage {
            op,
            source: source.into(),
        }
    }

    /// What kind of trouble this is.
    pub fn fault(&self) -> Fault {
        match self {
            StoreError::Panicked(_) | StoreError::Corrupt { .. } | StoreError::Unsynced(_) => {
                Fault::Damage
            }
            StoreError::Storage { source, .. } => {
                let corrupted = matches!(
                    source.downcast_ref::<::redb::Error>(),
                    Some(::redb::Error::Corrupted(_))
                ) || matches!(
                    source.downcast_ref::<::redb::StorageError>(),
                    Some(::redb::StorageError::Corrupted(_))
                );
                if corrupted {
                    Fault::Damage
                } else {
                    Fault::Io
                }
            }
            StoreError::OutOfSequence { .. }
            | StoreError::UnknownRoom(_)
            | StoreError::EpochMismatch { .. } => Fault::Refused,
            StoreError::Stopped => Fault::Stopped,
        }
    }

    /// From a caught panic's payload.
    pub fn panicked(payload: &(dyn std::any::Any + Send)) -> StoreError {
        StoreError::Panicked(panic_message(payload))
    }
}

/// The message of a caught panic.
pub fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "no message".into())
}

pub trait Store: Send + Sync + 'static {
    /// Who numbers messages; `Local` unless the log does.
    fn sequencing(&self) -> Sequencing {
        Sequencing::Local
    }

    /// Reads what the core needs to take over a room; never writes (a new
    /// room comes back with `exists: false` and a fresh epoch). `dedup_window`
    /// bounds `RoomLog::recent_ids`.
    fn load_room(&self, room: &RoomName, dedup_window: usize) -> Result<RoomLog, StoreError>;

    /// The epoch of a room's log, if the log has the room.
    fn epoch(&self, room: &RoomName) -> Result<Option<String>, StoreError>;

    /// Appends a batch in one transaction (group commit). A `Log`-sequencing
    /// store writes the numbers (and `duplicate`) into the batch.
    fn append(&self, batch: &mut Batch) -> Result<(), StoreError>;

    /// Messages with `sequence > after` and `≤ upto`, oldest first: at most
    /// `limit.messages`, and no more once their content and user names reach
    /// `limit.bytes` (at least one, when there is one).
    fn read(
        &self,
        room: &RoomName,
        after: u64,
        upto: u64,
        limit: ReadLimit,
    ) -> Result<Vec<StoredMessage>, StoreError>;

    /// Messages after `after` up to `upto` (within `limit`), with the log's
    /// epoch and newest sequence: what a node that fell behind the log
    /// (others write to it too) reads to catch up.
    fn read_tail(
        &self,
        room: &RoomName,
        after: u64,
        upto: u64,
        limit: ReadLimit,
    ) -> Result<Tail, StoreError> {
        let epoch = self.epoch(room)?;
        let messages = self.read(room, after, upto, limit)?;
        let last = self.load_room(room, 0)?.last;
        Ok(Tail {
            epoch,
            last,
            messages,
        })
    }

    /// Every read marker of a room: (user, highest sequence read). A store
    /// that keeps none has none.
    fn read_markers(&self, _room: &RoomName) -> Result<Vec<(Arc<str>, u64)>, StoreError> {
        Ok(Vec::new())
    }

    /// The oldest sequence still retained (`last + 1` when the log is empty).
    fn first_retained(&self, room: &RoomName) -> Result<u64, StoreError>;

    /// Up to `limit` rooms named after `after` (from the first when
    /// `None`), with their newest sequence, in name order: one page of the
    /// room list, so that no caller reads every room at once.
    fn rooms(&self, after: Option<&RoomName>, limit: usize)
        -> Result<Vec<RoomSummary>, StoreError>;

    /// How many rooms the log has. Never blocks on the writer.
    fn room_count(&self) -> usize;

    /// Up to `limit` rooms whose newest message is older than `before_ms`
    /// (their whole log is past age retention), in name order.
    fn expired_rooms(&self, before_ms: u64, limit: usize) -> Result<Vec<RoomName>, StoreError>;

    /// Deletes the oldest messages of each room that the policy no longer
    /// retains, at most `max_delete` in one call; returns how many were
    /// deleted. A room's newest message is always kept (it carries the
    /// room's last sequence across restarts).
    fn apply_retention(&self, policy: &Retention, max_delete: usize) -> Result<usize, StoreError>;

    /// Whether `append` only changes memory: it never waits on a disk or a
    /// network, and there is no sync for a group commit to share. A shard
    /// then commits its batch itself, where a hand-off to the log writer
    /// thread would cost two thread wake-ups per round. The shard holds up
    /// its rooms for as long as `append` takes (the store's lock included),
    /// and, running as a task (`shard`), the runtime worker it runs on.
    fn appends_in_memory(&self) -> bool {
        false
    }

    /// Makes everything committed so far durable, whatever the durability
    /// mode (called once at shutdown).
    fn flush(&self) -> Result<(), StoreError> {
        Ok(())
    }

    /// Whether commits were made that a crash could still lose (the
    /// `batched` and `none` modes between syncs). Never blocks.
    fn unsynced(&self) -> bool {
        false
    }

    /// Where the log lives, for logs and `/healthz` (the file's path).
    fn describe(&self) -> String {
        "the memory store".into()
    }

    /// A small durable write that proves writes work (again), for a store
    /// whose writes failed and that gets no traffic. Leaves no data behind.
    fn probe_writes(&self) -> Result<(), StoreError> {
        Ok(())
    }

    /// What is known to be wrong with the store: a store reports what it
    /// found on its own (off any call); `GuardedStore` adds what calls
    /// found. Never blocks.
    fn health(&self) -> Health {
        Health::default()
    }
}

/// What `/healthz` reports of the store.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Health {
    /// Set by a panic in store code or a damaged record or page; stays
    /// until parlor restarts (nothing in parlor repairs a file).
    pub damaged: Option<String>,
    /// Set by a failed write (I/O, a full disk); cleared by the next write
    /// that works.
    pub writes_failing: Option<String>,
}

impl Health {
    pub fn is_ok(&self) -> bool {
        self.damaged.is_none() && self.writes_failing.is_none()
    }

    /// One line for people: every problem, `; `-separated.
    pub fn reason(&self) -> String {
        [&self.damaged, &self.writes_failing]
            .into_iter()
            .flatten()
            .cloned()
            .collect::<Vec<_>>()
            .join("; ")
    }
}

/// How much one `read` may bring.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReadLimit {
    pub messages: usize,
    /// Content and user bytes; the encoded frames are somewhat larger.
    pub bytes: usize,
}

impl ReadLimit {
    pub fn messages(messages: usize) -> ReadLimit {
        ReadLimit {
            messages,
            bytes: usize::MAX,
        }
    }

    /// Whether a read that has `count` messages of `bytes` so far is full.
    pub fn reached(&self, count: usize, bytes: usize) -> bool {
        count >= self.messages || (count > 0 && bytes >= self.bytes)
    }
}

/// The bytes a message counts for against `ReadLimit::bytes`.
pub fn read_cost(m: &StoredMessage) -> usize {
    m.content.len() + m.user.len()
}

/// Fresh random epoch: names one incarnation of a room's log.
pub fn new_epoch() -> String {
    format!("{:016x}", rand::random::<u64>())
}
