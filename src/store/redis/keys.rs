//! Where a room lives in Redis. Every key of a room carries the room's name
//! as a hash tag (`{room}`), so all of them — and its live channel — fall in
//! one slot: a room's scripts run on one node of a Redis Cluster, and the
//! same build works against a single server. Room names cannot hold `{` or
//! `}` (`protocol::room`), so the tag is always exactly the name.
//!
//! | key | type | holds |
//! |---|---|---|
//! | `parlor:{room}:log` | stream | the messages; entry id `<sequence>-0`, fields `t` (ms) and `m` (the message as JSON) |
//! | `parlor:{room}:meta` | hash | `epoch`, `seq` (the newest sequence handed out) |
//! | `parlor:{room}:ids` | sorted set | `user \0 id` scored by sequence: the dedup window |
//! | `parlor:{room}:read` | hash | `user` → the highest sequence the user has read (only ever raised) |
//! | `parlor:{room}:presence` | hash | per node: `<node>` → version, `<node>\n<user>` → 1 |
//! | `parlor:{room}:live` | channel | each batch's new messages, each presence change |
//! | `parlor:rooms` | sorted set | every room with a message, scored by its last write (ms, approximate) |
//! | `parlor:nodes` | sorted set | every live node, scored by when it is dead (Redis clock, ms) |

use crate::protocol::RoomName;

/// Keys of all rooms with a message (not tagged: one slot of its own).
pub const ROOMS: &str = "parlor:rooms";
/// Live nodes and their deadlines.
pub const NODES: &str = "parlor:nodes";
/// Prefix and suffix of a live channel, to find the room in a channel name.
const CHANNEL_PREFIX: &str = "parlor:{";
const CHANNEL_SUFFIX: &str = "}:live";

/// The keys of one room.
pub struct RoomKeys {
    pub log: String,
    pub meta: String,
    pub ids: String,
    pub read: String,
    pub presence: String,
    pub channel: String,
}

impl RoomKeys {
    pub fn new(room: &RoomName) -> RoomKeys {
        let k = |suffix: &str| format!("parlor:{{{room}}}:{suffix}");
        RoomKeys {
            log: k("log"),
            meta: k("meta"),
            ids: k("ids"),
            read: k("read"),
            presence: k("presence"),
            channel: k("live"),
        }
    }
}

/// The live channel of a room.
pub fn channel(room: &RoomName) -> String {
    format!("{CHANNEL_PREFIX}{room}{CHANNEL_SUFFIX}")
}

/// The room whose live channel this is.
pub fn room_of_channel(channel: &str) -> Option<RoomName> {
    let name = channel
        .strip_prefix(CHANNEL_PREFIX)?
        .strip_suffix(CHANNEL_SUFFIX)?;
    RoomName::parse(name).ok()
}

/// The stream entry id of a sequence.
pub fn entry_id(sequence: u64) -> String {
    format!("{sequence}-0")
}

/// The sequence of a stream entry id (`<sequence>-0`).
pub fn sequence_of(id: &str) -> Option<u64> {
    id.split_once('-')?.0.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_key_of_a_room_shares_its_hash_tag() {
        let room = RoomName::parse("dm:ann.bob-1").unwrap();
        let k = RoomKeys::new(&room);
        for key in [&k.log, &k.meta, &k.ids, &k.read, &k.presence, &k.channel] {
            assert!(key.contains("{dm:ann.bob-1}"), "{key}");
        }
        assert_eq!(room_of_channel(&k.channel), Some(room));
        assert_eq!(room_of_channel("other"), None);
        assert_eq!(sequence_of(&entry_id(42)), Some(42));
    }
}
