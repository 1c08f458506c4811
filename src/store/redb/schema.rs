//! The file's layout: tables, the format version, and how a message record
//! is encoded.
//!
//! - `parlor_meta`: `&str → u64` — file format version and the next room id.
//! - `parlor_rooms`: room name → `(room_id, epoch)`.
//! - `parlor_read_markers`: `room NUL user → sequence`, the highest read.
//! - `parlor_messages`: `(room_id, first sequence) → run` (format 3): a
//!   run is one record (MessagePack map of timestamp, user, content and
//!   client id) or, for consecutive messages of a room written in one
//!   commit, an array of up to `RUN_MESSAGES` records (`Run`). A room's
//!   runs follow each other without gap or overlap. Room names never
//!   appear in message keys, and the key order makes a range read one
//!   B-tree scan and a room's newest sequence one `next_back()` (its key
//!   plus the run's length, read from the array's header). A commit of
//!   many messages to each of many rooms inserts one run per room instead
//!   of one record per message: a B-tree insert costs about the same for
//!   either, and the leaves written are the same (in a burst into
//!   100 rooms × 10, ≈ 40 % less CPU in the log writer: BENCHMARKS.md).
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

use std::ops::RangeInclusive;
use std::sync::Arc;

use ::redb::TableDefinition;
use serde::de::IgnoredAny;
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
/// A run holds at most this many messages…
pub const RUN_MESSAGES: usize = 64;
/// …and grows no bigger than this (a record bigger on its own is a run of
/// one). Bounds what a read of one message decodes, and keeps a few runs
/// to a 4 KiB leaf.
pub const RUN_BYTES: usize = 2048;
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
/// 2: the journal; 3: runs in the messages table. A file of an earlier
/// format is upgraded at open (format 1 gets an empty journal; formats 1
/// and 2 hold only runs of one, which format 3 reads as they are). A
/// parlor that reads only an earlier format refuses the file after that:
/// it would not see the journal's messages, or would take a run for a
/// damaged record.
pub const FORMAT_VERSION: u64 = 3;
pub const FORMAT_V1: u64 = 1;
pub const FORMAT_V2: u64 = 2;

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

/// Appends a message's record to `buf` (a buffer reused from message to
/// message: no allocation once it has grown).
pub fn encode_into(m: &StoredMessage, buf: &mut Vec<u8>) {
    let r = RecordRef {
        t: m.timestamp,
        u: &m.user,
        c: &m.content,
        i: m.client_msg_id.as_deref(),
    };
    rmp_serde::encode::write_named(buf, &r).expect("a record of strings and an integer encodes");
}

pub fn decode(sequence: u64, bytes: &[u8]) -> Result<StoredMessage, StoreError> {
    let r: Record = rmp_serde::from_slice(bytes).map_err(|e| corrupt(sequence, e.to_string()))?;
    Ok(message(sequence, r))
}

fn message(sequence: u64, r: Record) -> StoredMessage {
    StoredMessage {
        sequence,
        timestamp: r.t,
        user: Arc::from(r.u),
        content: r.c,
        client_msg_id: r.i,
    }
}

fn corrupt(sequence: u64, why: String) -> StoreError {
    StoreError::Corrupt { sequence, why }
}

/// The first byte of a run of several records: a MessagePack array with a
/// 16-bit length (a record, a map, never starts with it).
const RUN_MARKER: u8 = 0xdc;
const RUN_HEADER: usize = 3;

/// How many messages the run stored under `first` holds, from its header
/// alone.
pub fn run_len(first: u64, bytes: &[u8]) -> Result<u64, StoreError> {
    match bytes {
        [RUN_MARKER, hi, lo, ..] => match u16::from_be_bytes([*hi, *lo]) {
            0 => Err(corrupt(first, "an empty run".into())),
            n => Ok(u64::from(n)),
        },
        [RUN_MARKER, ..] => Err(corrupt(first, "a run cut short".into())),
        _ => Ok(1),
    }
}

/// The messages of the run stored under `first`, oldest first.
pub fn decode_run(first: u64, bytes: &[u8]) -> Result<Vec<StoredMessage>, StoreError> {
    decode_run_in(first, bytes, first..=u64::MAX)
}

/// The messages of the run stored under `first` whose sequences are in
/// `wanted`, oldest first. The records before `wanted` are parsed but not
/// copied out, and the run is not read past `wanted`'s end: a read of a
/// few messages from inside a run of 64 pays for few. A run read to its
/// end is checked to end where its header says.
pub fn decode_run_in(
    first: u64,
    bytes: &[u8],
    wanted: RangeInclusive<u64>,
) -> Result<Vec<StoredMessage>, StoreError> {
    let n = run_len(first, bytes)?;
    if bytes.first() != Some(&RUN_MARKER) {
        if !wanted.contains(&first) {
            return Ok(Vec::new());
        }
        return Ok(vec![decode(first, bytes)?]);
    }
    let end = first + n;
    let stop = end.min(wanted.end().saturating_add(1));
    let from = (*wanted.start()).max(first);
    let mut out = Vec::with_capacity(stop.saturating_sub(from) as usize);
    let mut rest = &bytes[RUN_HEADER..];
    // One deserializer for the run: its scratch buffer is reused.
    let mut de = rmp_serde::Deserializer::new(&mut rest);
    for sequence in first..stop {
        let parsed = if sequence < from {
            IgnoredAny::deserialize(&mut de).map(|_| None)
        } else {
            Record::deserialize(&mut de).map(Some)
        };
        match parsed {
            Ok(Some(r)) => out.push(message(sequence, r)),
            Ok(None) => {}
            Err(e) => return Err(corrupt(sequence, e.to_string())),
        }
    }
    drop(de);
    if stop == end && !rest.is_empty() {
        let why = format!("{} bytes after the run's {n} records", rest.len());
        return Err(corrupt(first, why));
    }
    Ok(out)
}

/// Consecutive messages of one room, encoded as the run they are stored
/// as. Full at `RUN_MESSAGES`, or when the next record would take it past
/// `RUN_BYTES`.
pub struct Run {
    first: u64,
    count: usize,
    /// Room for the header, then the records.
    bytes: Vec<u8>,
}

impl Run {
    pub fn new(first: u64) -> Run {
        let mut bytes = Vec::with_capacity(RUN_BYTES / 2);
        bytes.extend_from_slice(&[RUN_MARKER, 0, 0]);
        Run {
            first,
            count: 0,
            bytes,
        }
    }

    /// How many messages it holds.
    pub fn len(&self) -> usize {
        self.count
    }

    /// The sequence the next message must have.
    pub fn next(&self) -> u64 {
        self.first + self.count as u64
    }

    /// Adds the next message's record (`encode`d), if the run has room for
    /// it; an empty run always has.
    pub fn try_push(&mut self, record: &[u8]) -> bool {
        let full = self.count >= RUN_MESSAGES
            || (self.count > 0 && self.bytes.len() + record.len() > RUN_BYTES + RUN_HEADER);
        if full {
            return false;
        }
        self.bytes.extend_from_slice(record);
        self.count += 1;
        true
    }

    /// The key and value to store: a run of one is its record alone.
    pub fn entry(&mut self) -> (u64, &[u8]) {
        debug_assert!(self.count > 0, "a run holds a message");
        if self.count == 1 {
            return (self.first, &self.bytes[RUN_HEADER..]);
        }
        let n = u16::try_from(self.count).expect("RUN_MESSAGES fits the header");
        self.bytes[1..RUN_HEADER].copy_from_slice(&n.to_be_bytes());
        (self.first, &self.bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encode(m: &StoredMessage) -> Vec<u8> {
        let mut buf = Vec::new();
        encode_into(m, &mut buf);
        buf
    }

    fn msg(sequence: u64, content: &str) -> StoredMessage {
        StoredMessage {
            sequence,
            timestamp: 1_700_000_000_000 + sequence,
            user: Arc::from("ann"),
            content: content.to_string(),
            client_msg_id: sequence.is_multiple_of(2).then(|| format!("id-{sequence}")),
        }
    }

    /// Fills runs from `first` as a commit does: a full run is stored and
    /// the next one started.
    fn runs(first: u64, contents: &[String]) -> Vec<(u64, Vec<u8>)> {
        let mut out = Vec::new();
        let mut run = Run::new(first);
        for (i, c) in contents.iter().enumerate() {
            let record = encode(&msg(first + i as u64, c));
            if !run.try_push(&record) {
                let (k, v) = run.entry();
                out.push((k, v.to_vec()));
                run = Run::new(first + i as u64);
                assert!(run.try_push(&record));
            }
        }
        let (k, v) = run.entry();
        out.push((k, v.to_vec()));
        out
    }

    #[test]
    fn a_run_of_one_is_the_record_itself() {
        let m = msg(7, "hello");
        let stored = runs(7, &["hello".to_string()]);
        assert_eq!(stored, vec![(7, encode(&m))]);
        assert_eq!(run_len(7, &stored[0].1).unwrap(), 1);
        assert_eq!(decode_run(7, &stored[0].1).unwrap(), vec![m]);
    }

    #[test]
    fn runs_hold_consecutive_messages_up_to_their_bounds() {
        // Small messages: full at RUN_MESSAGES.
        let small: Vec<String> = (0..150).map(|i| format!("m{i}")).collect();
        let stored = runs(11, &small);
        let lens: Vec<u64> = stored
            .iter()
            .map(|(k, v)| run_len(*k, v).unwrap())
            .collect();
        assert_eq!(lens, [64, 64, 22]);
        let keys: Vec<u64> = stored.iter().map(|(k, _)| *k).collect();
        assert_eq!(keys, [11, 75, 139]);
        let back: Vec<StoredMessage> = stored
            .iter()
            .flat_map(|(k, v)| decode_run(*k, v).unwrap())
            .collect();
        let want: Vec<StoredMessage> = (0..150).map(|i| msg(11 + i, &small[i as usize])).collect();
        assert_eq!(back, want);

        // Bigger ones: full at RUN_BYTES; one bigger than that alone.
        let sized = [300, 300, 300, 300, 300, 300, 300, 5000, 10, 10];
        let contents: Vec<String> = sized.iter().map(|n| "x".repeat(*n)).collect();
        let stored = runs(1, &contents);
        let lens: Vec<u64> = stored
            .iter()
            .map(|(k, v)| run_len(*k, v).unwrap())
            .collect();
        assert_eq!(lens, [6, 1, 1, 2]);
        for (_, v) in &stored[..1] {
            assert!(v.len() <= RUN_BYTES + RUN_HEADER, "{}", v.len());
        }
        let back: Vec<u64> = stored
            .iter()
            .flat_map(|(k, v)| decode_run(*k, v).unwrap())
            .map(|m| m.content.len() as u64)
            .collect();
        assert_eq!(back, sized.map(|n| n as u64));
    }

    #[test]
    fn part_of_a_run_is_what_the_whole_run_holds_there() {
        let contents: Vec<String> = (0..20).map(|i| "y".repeat(i * 7)).collect();
        let (k, v) = runs(101, &contents).remove(0);
        assert_eq!(run_len(k, &v).unwrap(), 20);
        let whole = decode_run(k, &v).unwrap();
        for from in 90..125 {
            for to in from..125 {
                let part = decode_run_in(k, &v, from..=to).unwrap();
                let want: Vec<StoredMessage> = whole
                    .iter()
                    .filter(|m| (from..=to).contains(&m.sequence))
                    .cloned()
                    .collect();
                assert_eq!(part, want, "{from}..={to}");
            }
        }
        // A run of one, inside the range or not.
        let one = encode(&msg(7, "one"));
        assert_eq!(decode_run_in(7, &one, 7..=7).unwrap(), vec![msg(7, "one")]);
        assert!(decode_run_in(7, &one, 8..=9).unwrap().is_empty());
        // Trailing bytes are found by a read to the run's end, and a
        // damaged record by any read that passes it, wanted or not.
        let trailing = [&v[..], &[0xc0][..]].concat();
        assert!(decode_run_in(k, &trailing, 101..=105).is_ok());
        assert!(decode_run_in(k, &trailing, 115..=120).is_err());
        let mut damaged = v.clone();
        damaged[RUN_HEADER] = 0xc1; // never used in MessagePack
        assert!(decode_run_in(k, &damaged, 110..=111).is_err());
    }

    #[test]
    fn a_damaged_run_is_corrupt_not_a_panic() {
        let contents: Vec<String> = (0..5).map(|i| format!("m{i}")).collect();
        let (k, v) = runs(1, &contents).remove(0);
        let mut damaged = Vec::new();
        // Cut short, an empty header, a header claiming more or fewer
        // records than there are, trailing bytes.
        damaged.push(v[..v.len() - 3].to_vec());
        damaged.push(v[..2].to_vec());
        damaged.push([&[RUN_MARKER, 0, 0][..], &v[3..]].concat());
        damaged.push([&[RUN_MARKER, 0, 9][..], &v[3..]].concat());
        damaged.push([&[RUN_MARKER, 0, 4][..], &v[3..]].concat());
        damaged.push([&v[..], &[0xc0][..]].concat());
        for d in damaged {
            let e = decode_run(k, &d).unwrap_err();
            assert!(matches!(e, StoreError::Corrupt { .. }), "{e:?}");
        }
    }
}
