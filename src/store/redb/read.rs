//! The read side: MVCC read transactions that never block the writer and
//! live for one call each (a long-lived one would pin pages). Each holds the
//! database handle for its call (`Snapshot`), so a reopen after an I/O
//! failure waits for it; a read that failed on a handle broken under it is
//! retried once (`reading`).
//!
//! A room's log is its runs in the messages table followed by its
//! entries in the journal (`schema`): each read takes both from one
//! snapshot.
//!
//! redb does not check page checksums when reading, so a damaged page can
//! also end a range scan early or skip entries without an error: a read
//! checks that the sequences it returns follow each other and that it did
//! not stop short of the room's newest, and reports a gap as `Corrupt`; a
//! pass over the journal must see as many entries as the journal holds.

use std::collections::HashMap;
use std::ops::Bound;
use std::sync::atomic::Ordering;

use ::redb::{
    Database, ReadOnlyTable, ReadTransaction, ReadableDatabase, ReadableTable,
    ReadableTableMetadata,
};
use parking_lot::RwLockReadGuard;

use super::schema::{
    decode, decode_run, decode_run_in, marker_range, run_len, JOURNAL, MESSAGES, READ_MARKERS,
    ROOMS,
};
use super::write::{closed, handle_broken};
use super::{Inner, Op};
use crate::protocol::RoomName;
use crate::store::{
    read_cost, ReadLimit, Retention, RoomLog, RoomSummary, StoreError, StoredMessage,
};

pub type RoomsTable = ReadOnlyTable<&'static str, (u64, &'static str)>;
pub type MessagesTable = ReadOnlyTable<(u64, u64), &'static [u8]>;
pub type JournalTable = ReadOnlyTable<u64, (u64, u64, &'static [u8])>;

/// A room's entries in the journal, as (sequence, record), oldest first.
type RoomJournal = Vec<(u64, Vec<u8>)>;

/// Front ranges of rooms to delete: (room id, from, to exclusive).
pub type RetentionPlan = Vec<(u64, u64, u64)>;

/// A read transaction and the handle it reads, held until it is dropped.
pub(super) struct Snapshot<'a> {
    pub txn: ReadTransaction,
    /// Dropped after `txn` (field order): a reopen waits for it.
    _db: RwLockReadGuard<'a, Option<Database>>,
}

impl Inner {
    pub(super) fn read_txn(&self) -> Result<Snapshot<'_>, StoreError> {
        let db = self.db.read();
        let txn = db
            .as_ref()
            .ok_or_else(closed)?
            .begin_read()
            .op("begin a read transaction")?;
        Ok(Snapshot { txn, _db: db })
    }

    /// Runs a read; if it failed because the handle broke under it (an I/O
    /// failure elsewhere), once more on the reopened handle. A read that
    /// finds the handle broken and no reopen under way makes one.
    pub(super) fn reading<T>(
        &self,
        read: impl Fn() -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let generation = self.generation.load(Ordering::Acquire);
        match read() {
            Err(e) if handle_broken(&e) => {
                self.reopen_for_reads(generation);
                read()
            }
            other => other,
        }
    }

    pub(super) fn tables(
        &self,
        txn: &ReadTransaction,
    ) -> Result<(RoomsTable, MessagesTable), StoreError> {
        let rooms = txn.open_table(ROOMS).op("open the rooms table")?;
        let messages = txn.open_table(MESSAGES).op("open the messages table")?;
        Ok((rooms, messages))
    }

    pub(super) fn journal(&self, txn: &ReadTransaction) -> Result<JournalTable, StoreError> {
        txn.open_table(JOURNAL).op("open the journal")
    }

    /// A room's entries in the journal: one pass over it, which holds
    /// about `FOLD_AT` entries at most (and copies only the room's).
    fn journal_of(&self, journal: &JournalTable, id: u64) -> Result<RoomJournal, StoreError> {
        let mut out = Vec::new();
        each_in_journal(journal, |room, sequence, record| {
            if room == id {
                out.push((sequence, record.to_vec()));
            }
        })?;
        Ok(out)
    }

    /// Every room's newest entry in the journal: room id → (sequence,
    /// record).
    fn journal_newest(
        &self,
        journal: &JournalTable,
    ) -> Result<HashMap<u64, (u64, Vec<u8>)>, StoreError> {
        let mut newest = HashMap::new();
        each_in_journal(journal, |room, sequence, record| {
            newest.insert(room, (sequence, record.to_vec()));
        })?;
        Ok(newest)
    }

    /// A room's newest sequence (0: none), the journal's part given.
    fn last_of(
        &self,
        messages: &MessagesTable,
        id: u64,
        journal: &RoomJournal,
    ) -> Result<u64, StoreError> {
        match journal.last() {
            Some((sequence, _)) => Ok(*sequence),
            None => self.last_in(messages, id),
        }
    }

    /// A room's (id, epoch) as stored, if it exists.
    pub(super) fn room_entry_in<T: ReadableTable<&'static str, (u64, &'static str)>>(
        &self,
        rooms: &T,
        room: &RoomName,
    ) -> Result<Option<(u64, String)>, StoreError> {
        Ok(rooms
            .get(room.as_str())
            .op("read the rooms table")?
            .map(|v| {
                let (id, epoch) = v.value();
                (id, epoch.to_string())
            }))
    }

    /// A room's id, from the cache or the rooms table.
    pub(super) fn room_id_in<T: ReadableTable<&'static str, (u64, &'static str)>>(
        &self,
        rooms: &T,
        room: &RoomName,
    ) -> Result<Option<u64>, StoreError> {
        if let Some(id) = self.room_ids.read().get(room) {
            return Ok(Some(*id));
        }
        let found = self.room_entry_in(rooms, room)?.map(|(id, _)| id);
        if let Some(id) = found {
            self.room_ids.write().insert(room.clone(), id);
        }
        Ok(found)
    }

    /// A room's newest sequence (0: none).
    pub(super) fn last_in<T: ReadableTable<(u64, u64), &'static [u8]>>(
        &self,
        messages: &T,
        id: u64,
    ) -> Result<u64, StoreError> {
        let mut range = messages
            .range((id, 0)..=(id, u64::MAX))
            .op("read messages")?;
        match range.next_back() {
            Some(entry) => {
                let (k, v) = entry.op("read messages")?;
                let first = k.value().1;
                Ok(first + run_len(first, v.value())? - 1)
            }
            None => Ok(0),
        }
    }

    /// Where a read of a room from `sequence` on starts in the messages
    /// table: the key of the run that holds it, if one does, else
    /// `sequence` itself.
    pub(super) fn run_start<T: ReadableTable<(u64, u64), &'static [u8]>>(
        &self,
        messages: &T,
        id: u64,
        sequence: u64,
    ) -> Result<u64, StoreError> {
        let mut range = messages
            .range((id, 0)..=(id, sequence))
            .op("read messages")?;
        let Some(entry) = range.next_back() else {
            return Ok(sequence);
        };
        let (k, v) = entry.op("read messages")?;
        let first = k.value().1;
        if first + run_len(first, v.value())? > sequence {
            Ok(first)
        } else {
            Ok(sequence)
        }
    }

    /// A room's oldest retained sequence (None: no messages).
    pub(super) fn first_in<T: ReadableTable<(u64, u64), &'static [u8]>>(
        &self,
        messages: &T,
        id: u64,
    ) -> Result<Option<u64>, StoreError> {
        let mut range = messages
            .range((id, 0)..=(id, u64::MAX))
            .op("read messages")?;
        match range.next() {
            Some(entry) => {
                let (k, _) = entry.op("read messages")?;
                Ok(Some(k.value().1))
            }
            None => Ok(None),
        }
    }

    pub(super) fn load_room(
        &self,
        room: &RoomName,
        dedup_window: usize,
    ) -> Result<RoomLog, StoreError> {
        let snap = self.read_txn()?;
        let (rooms, messages) = self.tables(&snap.txn)?;
        let Some((id, epoch)) = self.room_entry_in(&rooms, room)? else {
            return Ok(RoomLog {
                epoch: crate::store::new_epoch(),
                last: 0,
                recent_ids: Vec::new(),
                exists: false,
                room_limit_reached: false,
                presence: Vec::new(),
                read_markers: Vec::new(),
            });
        };
        self.room_ids.write().insert(room.clone(), id);
        let journal = self.journal_of(&self.journal(&snap.txn)?, id)?;
        let last = self.last_of(&messages, id, &journal)?;
        let mut recent_ids = Vec::new();
        if dedup_window > 0 && last > 0 {
            // Bounded: look at no more than twice the window of newest messages.
            let scan = dedup_window.saturating_mul(2);
            let range = messages.range((id, 0)..=(id, last)).op("read messages")?;
            let newest_first = journal
                .iter()
                .rev()
                .map(|(sequence, record)| decode(*sequence, record))
                .chain(range.rev().flat_map(|entry| {
                    let run = entry
                        .op("read messages")
                        .and_then(|(k, v)| decode_run(k.value().1, v.value()));
                    oldest_first(run).rev()
                }));
            for m in newest_first.take(scan) {
                let m = m?;
                if let Some(client_id) = m.client_msg_id {
                    recent_ids.push((m.user, client_id, m.sequence));
                    if recent_ids.len() >= dedup_window {
                        break;
                    }
                }
            }
            recent_ids.reverse();
        }
        Ok(RoomLog {
            epoch,
            last,
            recent_ids,
            exists: true,
            room_limit_reached: false,
            presence: Vec::new(),
            read_markers: Vec::new(),
        })
    }

    /// A room's read markers, by user name.
    pub(super) fn read_markers(
        &self,
        room: &RoomName,
    ) -> Result<Vec<(std::sync::Arc<str>, u64)>, StoreError> {
        let snap = self.read_txn()?;
        let markers = match snap.txn.open_table(READ_MARKERS) {
            Ok(t) => t,
            // No marker was ever written.
            Err(::redb::TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
            Err(e) => return Err(StoreError::storage("open the markers table", e)),
        };
        let (from, to) = marker_range(room.as_str());
        let mut out = Vec::new();
        for entry in markers
            .range(from.as_str()..to.as_str())
            .op("read read markers")?
        {
            let (k, v) = entry.op("read read markers")?;
            if let Some((_, user)) = k.value().split_once('\0') {
                out.push((std::sync::Arc::from(user), v.value()));
            }
        }
        Ok(out)
    }

    pub(super) fn epoch(&self, room: &RoomName) -> Result<Option<String>, StoreError> {
        let snap = self.read_txn()?;
        let (rooms, _) = self.tables(&snap.txn)?;
        Ok(self.room_entry_in(&rooms, room)?.map(|(_, epoch)| epoch))
    }

    pub(super) fn read(
        &self,
        room: &RoomName,
        after: u64,
        upto: u64,
        limit: ReadLimit,
    ) -> Result<Vec<StoredMessage>, StoreError> {
        if limit.messages == 0 || after >= upto {
            return Ok(Vec::new());
        }
        let snap = self.read_txn()?;
        let (rooms, messages) = self.tables(&snap.txn)?;
        let Some(id) = self.room_id_in(&rooms, room)? else {
            return Ok(Vec::new());
        };
        let journal = self.journal_of(&self.journal(&snap.txn)?, id)?;
        let start = self.run_start(&messages, id, after + 1)?;
        let range = messages
            .range((id, start)..=(id, upto))
            .op("read messages")?;
        let wanted = after + 1..=upto;
        // A room's messages follow each other from its oldest retained one
        // (retention deletes a prefix): from the first the range holds, no
        // more than `limit.messages` can be returned, so the scan stops at
        // the first run past that and no run is decoded past it.
        let mut reach_end = None;
        let in_table = range
            .map_while(|entry| {
                let (k, v) = match entry.op("read messages") {
                    Ok(kv) => kv,
                    Err(e) => return Some(Err(e)),
                };
                let first = k.value().1;
                let end = *reach_end.get_or_insert_with(|| {
                    let from = (after + 1).max(first);
                    upto.min(from.saturating_add(limit.messages as u64 - 1))
                });
                (first <= end).then(|| decode_run_in(first, v.value(), after + 1..=end))
            })
            .flat_map(oldest_first);
        let in_journal = journal
            .iter()
            .filter(|(sequence, _)| wanted.contains(sequence))
            .map(|(sequence, record)| decode(*sequence, record));
        let entries = in_table
            .filter(|m| m.as_ref().map_or(true, |m| wanted.contains(&m.sequence)))
            .chain(in_journal);
        let mut out: Vec<StoredMessage> = Vec::with_capacity(limit.messages.min(1024));
        let mut bytes = 0;
        for m in entries {
            if limit.reached(out.len(), bytes) {
                return Ok(out);
            }
            let m = m?;
            if let Some(prev) = out.last() {
                if m.sequence != prev.sequence + 1 {
                    return Err(missing(prev.sequence + 1));
                }
            }
            bytes += read_cost(&m);
            out.push(m);
        }
        // The scan ended (at `reach_end`, if the read is full): unless the
        // read is full, nothing may be left in the range.
        if limit.reached(out.len(), bytes) {
            return Ok(out);
        }
        if let Some(last) = out.last().map(|m| m.sequence) {
            if last < upto && self.last_of(&messages, id, &journal)?.min(upto) > last {
                return Err(missing(last + 1));
            }
        }
        Ok(out)
    }

    pub(super) fn first_retained(&self, room: &RoomName) -> Result<u64, StoreError> {
        let snap = self.read_txn()?;
        let (rooms, messages) = self.tables(&snap.txn)?;
        let Some(id) = self.room_id_in(&rooms, room)? else {
            return Ok(1);
        };
        if let Some(first) = self.first_in(&messages, id)? {
            return Ok(first);
        }
        let journal = self.journal_of(&self.journal(&snap.txn)?, id)?;
        match journal.first() {
            Some((first, _)) => Ok(*first),
            None => Ok(self.last_in(&messages, id)? + 1),
        }
    }

    pub(super) fn rooms(
        &self,
        after: Option<&RoomName>,
        limit: usize,
    ) -> Result<Vec<RoomSummary>, StoreError> {
        let snap = self.read_txn()?;
        let (rooms, messages) = self.tables(&snap.txn)?;
        let journal = self.journal_newest(&self.journal(&snap.txn)?)?;
        let mut out = Vec::new();
        let from = after.map_or(Bound::Unbounded, |r| Bound::Excluded(r.as_str()));
        let iter = rooms
            .range::<&str>((from, Bound::Unbounded))
            .op("read the rooms table")?;
        for entry in iter {
            if out.len() >= limit {
                break;
            }
            let (name, v) = entry.op("read the rooms table")?;
            let Ok(room) = RoomName::parse(name.value()) else {
                tracing::warn!(
                    room = name.value(),
                    "skipping a stored room with an invalid name"
                );
                continue;
            };
            let id = v.value().0;
            let last = match journal.get(&id) {
                Some((last, _)) => *last,
                None => self.last_in(&messages, id)?,
            };
            out.push(RoomSummary { room, last });
        }
        Ok(out)
    }

    pub(super) fn count_rooms(&self) -> Result<usize, StoreError> {
        let snap = self.read_txn()?;
        let (rooms, _) = self.tables(&snap.txn)?;
        Ok(rooms.len().op("count rooms")? as usize)
    }

    pub(super) fn expired_rooms(
        &self,
        before_ms: u64,
        limit: usize,
    ) -> Result<Vec<RoomName>, StoreError> {
        let snap = self.read_txn()?;
        let (rooms, messages) = self.tables(&snap.txn)?;
        let journal = self.journal_newest(&self.journal(&snap.txn)?)?;
        let mut out = Vec::new();
        for entry in rooms.iter().op("read the rooms table")? {
            if out.len() >= limit {
                break;
            }
            let (name, v) = entry.op("read the rooms table")?;
            let id = v.value().0;
            let m = match journal.get(&id) {
                Some((sequence, record)) => decode(*sequence, record)?,
                None => {
                    let mut newest = messages
                        .range((id, 0)..=(id, u64::MAX))
                        .op("read messages")?;
                    let Some(last) = newest.next_back() else {
                        continue;
                    };
                    let (k, v) = last.op("read messages")?;
                    let (first, bytes) = (k.value().1, v.value());
                    let newest = first + run_len(first, bytes)? - 1;
                    let run = decode_run_in(first, bytes, newest..=newest)?;
                    run.into_iter().next_back().expect("a run holds a message")
                }
            };
            if m.timestamp < before_ms {
                if let Ok(room) = RoomName::parse(name.value()) {
                    out.push(room);
                }
            }
        }
        Ok(out)
    }

    /// What retention would delete, planned under a read transaction (so it
    /// does not block appends). Appends only add at the end of a room, so
    /// the planned front ranges stay valid until they are deleted. Planned
    /// on the messages table alone, just after a fold: what reached the
    /// journal since only makes a room longer than the plan counts, so it
    /// deletes no more than the policy allows.
    pub(super) fn retention_plan(
        &self,
        policy: &Retention,
        max_delete: usize,
    ) -> Result<RetentionPlan, StoreError> {
        let mut plan = Vec::new();
        let mut budget = max_delete as u64;
        let snap = self.read_txn()?;
        let (rooms, messages) = self.tables(&snap.txn)?;
        let iter = rooms.iter().op("read the rooms table")?;
        for entry in iter {
            if budget == 0 {
                break;
            }
            let (_, v) = entry.op("read the rooms table")?;
            let id = v.value().0;
            let Some(first) = self.first_in(&messages, id)? else {
                continue;
            };
            let last = self.last_in(&messages, id)?;
            // Over the count: no need to look at the messages themselves.
            let by_count = (last - first + 1)
                .saturating_sub(policy.keep.max(1))
                .min(budget);
            let mut end = first + by_count;
            if policy.older_than_ms.is_some() && end - first < budget {
                let start = self.run_start(&messages, id, end)?;
                let runs = messages
                    .range((id, start)..=(id, last))
                    .op("read old messages")?;
                'scan: for item in runs {
                    let (k, v) = item.op("read old messages")?;
                    for m in decode_run_in(k.value().1, v.value(), end..=last)? {
                        if end - first >= budget || !policy.expired(last - m.sequence, m.timestamp)
                        {
                            break 'scan;
                        }
                        end = m.sequence + 1;
                    }
                }
            }
            if end > first {
                plan.push((id, first, end));
                budget -= end - first;
            }
        }
        Ok(plan)
    }
}

/// A run's messages, oldest first, or its error once.
fn oldest_first(
    run: Result<Vec<StoredMessage>, StoreError>,
) -> impl DoubleEndedIterator<Item = Result<StoredMessage, StoreError>> {
    let (messages, error) = match run {
        Ok(messages) => (messages, None),
        Err(e) => (Vec::new(), Some(Err(e))),
    };
    messages.into_iter().map(Ok).chain(error)
}

/// Visits every journal entry, (room id, sequence, record) in commit
/// order, and checks that the pass saw all of them (a damaged page can end
/// a scan early without an error).
fn each_in_journal(
    journal: &JournalTable,
    mut visit: impl FnMut(u64, u64, &[u8]),
) -> Result<(), StoreError> {
    let mut seen = 0;
    for entry in journal.iter().op("read the journal")? {
        let (_, v) = entry.op("read the journal")?;
        seen += 1;
        let (room, sequence, record) = v.value();
        visit(room, sequence, record);
    }
    let holds = journal.len().op("read the journal")?;
    if seen == holds {
        return Ok(());
    }
    let why = format!("a pass over the journal saw {seen} of its {holds} entries");
    Err(StoreError::storage(
        "read the journal",
        ::redb::StorageError::Corrupted(why),
    ))
}

/// A sequence a scan should have found (sequences have no gaps; retention
/// only deletes a room's oldest).
fn missing(sequence: u64) -> StoreError {
    StoreError::Corrupt {
        sequence,
        why: "missing from the log although later ones are there (a damaged page?)".into(),
    }
}
