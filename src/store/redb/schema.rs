//! The file's layout: tables, the format version, and how a message record
//! is encoded.
//!
//! - `parlor_meta`: `&str → u64` — file format version and the next room id.
//! - `parlor_rooms`: room name → `(room_id, epoch)`.
//! - `parlor_read_markers`: `room NUL user → sequence`, the highest read.
//! - `parlor_messages`: `(room_id, sequence) → record` (MessagePack map of
//!   timestamp, user, content and client id). Room names never appear in
//!   message keys, and the key order makes a range read one B-tree scan and
//!   a room's newest sequence one `next_back()`.

use std::sync::Arc;

use ::redb::TableDefinition;
use serde::{Deserialize, Serialize};

use crate::store::{StoreError, StoredMessage};

/// The store's file inside the data dir.
pub const FILE_NAME: &str = "parlor.redb";

pub const META: TableDefinition<&str, u64> = TableDefinition::new("parlor_meta");
pub const ROOMS: TableDefinition<&str, (u64, &str)> = TableDefinition::new("parlor_rooms");
pub const MESSAGES: TableDefinition<(u64, u64), &[u8]> = TableDefinition::new("parlor_messages");
/// `marker_key(room, user)` → the highest sequence the user has read. Made
/// by the first marker written (a file without one is still format 1).
pub const READ_MARKERS: TableDefinition<&str, u64> = TableDefinition::new("parlor_read_markers");

/// A read marker's key: room, NUL, user (a room name holds no NUL, so a
/// room's markers are one key range: `marker_range`).
pub fn marker_key(room: &str, user: &str) -> String {
    format!("{room}\0{user}")
}

/// The keys of every marker of `room`.
pub fn marker_range(room: &str) -> (String, String) {
    (format!("{room}\0"), format!("{room}\u{1}"))
}

pub const META_FORMAT: &str = "format";
pub const META_NEXT_ROOM: &str = "next_room_id";
/// Written and removed again by a write probe (never left in the file).
pub const META_PROBE: &str = "write_probe";
pub const FORMAT_VERSION: u64 = 1;

/// The first bytes of every redb file.
pub const REDB_MAGIC: [u8; 9] = [b'r', b'e', b'd', b'b', 0x1A, 0x0A, 0xA9, 0x0D, 0x0A];

/// A message as stored: short field names, MessagePack map (rmp-serde named),
/// so fields can be added later without breaking old records.
#[derive(Serialize)]
struct RecordRef<'a> {
    t: u64,
    u: &'a str,
    c: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    i: Option<&'a str>,
}

#[derive(Deserialize)]
struct Record {
    t: u64,
    u: String,
    c: String,
    #[serde(default)]
    i: Option<String>,
}

pub fn encode(m: &StoredMessage) -> Vec<u8> {
    let r = RecordRef {
        t: m.timestamp,
        u: &m.user,
        c: &m.content,
        i: m.client_msg_id.as_deref(),
    };
    rmp_serde::to_vec_named(&r).expect("a record of strings and an integer encodes")
}

pub fn decode(sequence: u64, bytes: &[u8]) -> Result<StoredMessage, StoreError> {
    let r: Record = rmp_serde::from_slice(bytes).map_err(|e| StoreError::Corrupt {
        sequence,
        why: e.to_string(),
    })?;
    Ok(StoredMessage {
        sequence,
        timestamp: r.t,
        user: Arc::from(r.u),
        content: r.c,
        client_msg_id: r.i,
    })
}
