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
//! - `parlor_journal` (format 2): `commit order → (room_id, sequence,
//!   record)`, the newest messages of rooms. A synced commit writes a
//!   room's few messages here, at the end of one B-tree, so a commit of
//!   messages to many rooms rewrites one or two leaves instead of one per
//!   room (less than half the time of a synced commit to 48 rooms); every
//!   `FOLD_AT` messages a commit also moves the journal into
//!   `parlor_messages`, sorted, many messages to a leaf. A message is in
//!   exactly one of the two tables in any snapshot, and a room's journal
//!   entries come after its messages in the table: reads take the room's
//!   part of the journal after its part of the table.

use std::sync::Arc;

use ::redb::TableDefinition;
use serde::{Deserialize, Serialize};

use crate::store::{StoreError, StoredMessage};

/// The store's file inside the data dir.
pub const FILE_NAME: &str = "parlor.redb";

pub const META: TableDefinition<&str, u64> = TableDefinition::new("parlor_meta");
pub const ROOMS: TableDefinition<&str, (u64, &str)> = TableDefinition::new("parlor_rooms");
pub const MESSAGES: TableDefinition<(u64, u64), &[u8]> = TableDefinition::new("parlor_messages");
pub const JOURNAL: TableDefinition<u64, (u64, u64, &[u8])> = TableDefinition::new("parlor_journal");
/// A room with this many messages in a batch fills leaves of its own in
/// the messages table: they go there directly (unless the room has
/// entries in the journal), not through the journal and a second insert.
pub const DIRECT_AT: usize = 64;
/// A batch of this many messages goes to the messages table whole (the
/// journal folded first): at ≈ 5 messages per room, as in a burst into
/// many small rooms, the journal fills in a commit or two, and each fold
/// inserted every message a second time (a synced commit of 512 messages
/// over 100 rooms: see `append_spread/burst` in `benches/store.rs`).
pub const DIRECT_BATCH_AT: usize = 256;
/// A commit that leaves the journal this long also folds it. It bounds
/// what a read scans of the journal (one pass, keeping the room's entries)
/// and how many commits in a row skip `parlor_messages`.
pub const FOLD_AT: u64 = 512;
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
/// 2: the journal. A format 1 file (no journal) is upgraded at open; a
/// parlor that reads only format 1 refuses a format 2 file, whose newest
/// messages it would not see.
pub const FORMAT_VERSION: u64 = 2;
pub const FORMAT_V1: u64 = 1;

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
    // Room for the strings and at most 33 bytes around them (the map's
    // header, four one-letter keys, the timestamp, three string headers):
    // one allocation, never grown.
    let strings = m.user.len() + m.content.len() + m.client_msg_id.as_ref().map_or(0, String::len);
    let mut buf = Vec::with_capacity(strings + 40);
    rmp_serde::encode::write_named(&mut buf, &r)
        .expect("a record of strings and an integer encodes");
    buf
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
