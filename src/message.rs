//! A chat message as parlor keeps it: what the log stores, the rooms
//! deliver and the wire shows (`protocol::server::MessageData` is its wire
//! view). Its own module so that the wire format, the rooms and the log
//! share it without depending on each other.

use std::sync::Arc;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredMessage {
    /// Its place in its room's log: 1, 2, 3 … with no gap.
    pub sequence: u64,
    /// Milliseconds since the Unix epoch, when the room took it.
    pub timestamp: u64,
    pub user: Arc<str>,
    pub content: String,
    /// The client's `id`, kept so the dedup window survives restarts.
    pub client_msg_id: Option<String>,
}
