//! Persistence: a small synchronous `Store` trait and its implementations.
//!
//! Calls block (a redb commit syncs to disk), so they run only on shard
//! threads or in `spawn_blocking`, never on the async runtime's workers.
//! Invariants every implementation keeps:
//! - `append` is all-or-nothing for its batch; when it returns `Ok`, every
//!   message in it is durable to the configured degree and visible to reads.
//! - A room's sequences are stored as given (the shard's sequencer makes them
//!   gapless); reads return them in increasing order.
//! - A room's epoch is fixed for the life of its log.

pub mod memory;
pub mod redb;

use std::sync::Arc;

use crate::protocol::RoomName;

pub use self::redb::RedbStore;
pub use memory::MemoryStore;

/// One chat message as the log keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredMessage {
    pub sequence: u64,
    /// Milliseconds since the Unix epoch.
    pub timestamp: u64,
    pub user: Arc<str>,
    pub content: String,
    /// The client's `id`, kept so the dedup window survives restarts.
    pub client_msg_id: Option<String>,
}

/// A message to append, with its room.
#[derive(Debug, Clone)]
pub struct Append {
    pub room: RoomName,
    pub message: StoredMessage,
}

/// What the shard needs to take over a room's log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoomLog {
    pub epoch: String,
    /// Newest stored sequence (0: none yet).
    pub last: u64,
    /// The most recent messages that carried a client id, oldest first
    /// (at most the dedup window), to rebuild the dedup window.
    pub recent_ids: Vec<(Arc<str>, String, u64)>,
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

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("store I/O failed: {0}")]
    Io(String),
    #[error("store is corrupt: {0}")]
    Corrupt(String),
    #[error("injected fault: {0}")]
    Injected(String),
}

pub trait Store: Send + Sync + 'static {
    /// Opens a room's log, creating it (with a fresh epoch) if it is new.
    /// `dedup_window` bounds `RoomLog::recent_ids`.
    fn open_room(&self, room: &RoomName, dedup_window: usize) -> Result<RoomLog, StoreError>;

    /// The epoch of a room's log, if the room exists.
    fn epoch(&self, room: &RoomName) -> Result<Option<String>, StoreError>;

    /// Appends a batch in one transaction (group commit).
    fn append(&self, batch: &[Append]) -> Result<(), StoreError>;

    /// Up to `limit` messages with `sequence > after` and `≤ upto`, oldest first.
    fn read(
        &self,
        room: &RoomName,
        after: u64,
        upto: u64,
        limit: usize,
    ) -> Result<Vec<StoredMessage>, StoreError>;

    /// The oldest sequence still retained (`last + 1` when the log is empty).
    fn first_retained(&self, room: &RoomName) -> Result<u64, StoreError>;

    /// Every room with its newest sequence, in name order.
    fn rooms(&self) -> Result<Vec<RoomSummary>, StoreError>;

    /// Deletes the oldest messages of each room that the policy no longer
    /// retains, at most `max_delete` in one call; returns how many were
    /// deleted. A room's newest message is always kept (it carries the
    /// room's last sequence across restarts).
    fn apply_retention(&self, policy: &Retention, max_delete: usize) -> Result<usize, StoreError>;
}

/// Fresh random epoch: names one incarnation of a room's log.
pub fn new_epoch() -> String {
    format!("{:016x}", rand::random::<u64>())
}
