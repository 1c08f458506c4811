//! The write side: every write (a group-commit batch, retention, a sync, a
//! write probe) is one write transaction under one mutex (redb allows one
//! writer at a time anyway), committed with the durability the mode asks
//! for. An I/O failure is handled here, between transactions: the handle is
//! reopened at once and writes pause for a backoff (see the module doc).

use std::collections::hash_map::Entry;
use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use ::redb::{ReadableTable, ReadableTableMetadata, Table, WriteTransaction};

use super::read::RetentionPlan;
use super::schema::{
    decode_run, encode_into, marker_key, marker_range, run_len, Run, DIRECT_AT, DIRECT_BATCH_AT,
    FOLD_AT, JOURNAL, MESSAGES, META, META_NEXT_ROOM, META_PROBE, READ_MARKERS, ROOMS,
};
use super::tails::Tails;
use super::{open, Inner, Op, CACHE_BYTES};
use crate::config::Durability;
use crate::protocol::RoomName;
use crate::store::{Batch, StoreError};

/// First pause of writes after an I/O failure; doubles with each failure.
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// The pause is at least this many times what the reopen took, so that
/// reopening (a repair walk of the file) takes at most about a fifth of
/// the time while the disk stays full.
const REOPEN_FACTOR: u32 = 4;

pub struct SyncState {
    /// Start of the last `Immediate` commit.
    pub last_sync: Instant,
    /// A `None` commit happened since then.
    pub dirty: bool,
    /// The last write failed with an I/O error: writes fail fast until
    /// `retry_at`.
    pub failure: Option<Failure>,
}

impl SyncState {
    pub fn new() -> SyncState {
        SyncState {
            last_sync: Instant::now(),
            dirty: false,
            failure: None,
        }
    }
}

pub struct Failure {
    cause: String,
    failures: u32,
    retry_at: Instant,
}

/// The handle is gone: closed after an I/O failure, and reopening failed.
#[derive(Debug, thiserror::Error)]
#[error("the database is closed after an I/O failure and could not be reopened yet")]
pub struct Closed;

pub fn closed() -> StoreError {
    StoreError::storage("use the database", Closed)
}

fn redb_error(e: &StoreError) -> Option<&::redb::Error> {
    match e {
        StoreError::Storage { source, .. } => source.downcast_ref(),
        _ => None,
    }
}

/// The handle cannot be used any more (it must be reopened).
pub fn handle_broken(e: &StoreError) -> bool {
    let closed = matches!(e, StoreError::Storage { source, .. } if source.is::<Closed>());
    closed
        || matches!(
            redb_error(e),
            Some(::redb::Error::PreviousIo | ::redb::Error::DatabaseClosed)
        )
}

/// A failure of the storage under the file, which breaks redb's handle.
fn io_failure(e: &StoreError) -> bool {
    handle_broken(e)
        || matches!(
            redb_error(e),
            Some(::redb::Error::Io(_) | ::redb::Error::Backend(_))
        )
}

impl Inner {
    /// Runs `f` in one write transaction and commits it with the durability
    /// the mode asks for (`Immediate` if `durable`); `f`'s error aborts the
    /// transaction. Handles an I/O failure (see the module doc).
    fn write<T>(
        &self,
        durable: bool,
        f: impl FnOnce(&WriteTransaction) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let mut state = self.writer.lock();
        self.writable(&mut state)?;
        match self.transact(&mut state, durable, f) {
            Ok(out) => {
                state.failure = None;
                Ok(out)
            }
            Err(e) => {
                // Whatever the failed write knew of each room's newest
                // sequence is read again from the file by the next one.
                *self.tails.lock() = None;
                if io_failure(&e) {
                    Err(self.failed(&mut state, e))
                } else {
                    Err(e)
                }
            }
        }
    }

    fn transact<T>(
        &self,
        state: &mut SyncState,
        durable: bool,
        f: impl FnOnce(&WriteTransaction) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let db = self.db.read();
        let mut txn = db
            .as_ref()
            .ok_or_else(closed)?
            .begin_write()
            .op("begin a write transaction")?;
        let durable = durable
            || match self.durability {
                Durability::Immediate => true,
                Durability::None => false,
                Durability::Batched => state.last_sync.elapsed() >= self.sync_interval,
            };
        let level = if durable {
            ::redb::Durability::Immediate
        } else {
            ::redb::Durability::None
        };
        txn.set_durability(level).op("set durability")?;
        txn.set_quick_repair(self.quick_repair);
        let out = match f(&txn) {
            Ok(out) => out,
            Err(e) => {
                let _ = txn.abort();
                return Err(e);
            }
        };
        let started = Instant::now();
        txn.commit().op("commit")?;
        if durable {
            state.last_sync = started;
            state.dirty = false;
        } else {
            state.dirty = true;
        }
        self.unsynced.store(state.dirty, Ordering::Release);
        Ok(out)
    }

    /// Whether a write may go ahead: not while writes are refused or paused;
    /// a handle that could not be reopened is reopened first.
    fn writable(&self, state: &mut SyncState) -> Result<(), StoreError> {
        if let Some(lost) = self.lost.get() {
            return Err(StoreError::Unsynced(lost.clone()));
        }
        if let Some(failure) = &state.failure {
            let now = Instant::now();
            if now < failure.retry_at {
                let why = format!(
                    "{} (writes paused after {} failed; next attempt in {:.0?})",
                    failure.cause,
                    failure.failures,
                    failure.retry_at - now
                );
                return Err(StoreError::storage("write", why));
            }
        }
        if self.db.read().is_none() {
            if let Err(e) = self.reopen(state) {
                self.pause(state, &e, Duration::ZERO);
                return Err(e);
            }
        }
        Ok(())
    }

    /// After a write failed on I/O: reopen now (so that reads work again),
    /// pause writes, and tell whether acked commits were lost with it.
    fn failed(&self, state: &mut SyncState, e: StoreError) -> StoreError {
        // Commits since the last sync are rolled back by the reopen.
        let lost = std::mem::replace(&mut state.dirty, false);
        self.unsynced.store(false, Ordering::Release);
        let took = match self.reopen(state) {
            Ok(took) => took,
            Err(reopen) => {
                tracing::error!(file = %self.path.display(), cause = %reopen, "reopening the store failed; the next write tries again");
                Duration::ZERO
            }
        };
        self.pause(state, &e, took);
        if !lost {
            return e;
        }
        let why = format!(
            "an I/O failure ({e}) lost the commits made since the last sync;              writes are refused until parlor restarts"
        );
        tracing::error!(file = %self.path.display(), "{why}");
        let _ = self.lost.set(why.clone());
        StoreError::Unsynced(why)
    }

    fn pause(&self, state: &mut SyncState, e: &StoreError, reopen_took: Duration) {
        let failures = state.failure.as_ref().map_or(0, |f| f.failures) + 1;
        let backoff = FIRST_BACKOFF
            .saturating_mul(1 << (failures - 1).min(16))
            .min(MAX_BACKOFF)
            .max(reopen_took * REOPEN_FACTOR);
        state.failure = Some(Failure {
            cause: e.to_string(),
            failures,
            retry_at: Instant::now() + backoff,
        });
    }

    /// Closes the handle and opens the file again (redb recovers it as
    /// after a crash). Waits for the reads in progress; `state` is the
    /// writer's lock, held by the caller. Returns how long it took.
    fn reopen(&self, _state: &mut SyncState) -> Result<Duration, StoreError> {
        let started = Instant::now();
        let mut slot = self.db.write();
        if let Some(old) = slot.take() {
            // After an I/O failure redb writes nothing at close; the open
            // below recovers the file.
            if let Err(e) = old.close() {
                tracing::debug!(cause = %e, "closing the failed store handle");
            }
        }
        self.generation.fetch_add(1, Ordering::AcqRel);
        // Rooms created by lost commits may have left ids behind, and
        // messages in the journal.
        self.room_ids.write().clear();
        *self.tails.lock() = None;
        let db = open::open_database(&self.path, CACHE_BYTES)
            .map_err(|e| StoreError::storage("reopen the database", e))?;
        *slot = Some(db);
        let took = started.elapsed();
        tracing::warn!(file = %self.path.display(), ?took, "reopened the store after an I/O failure");
        Ok(took)
    }

    /// A read found the handle broken (`generation` is the one it read):
    /// reopen unless a writer is at it or did it meanwhile, or writes are
    /// paused (the write that paused them reopened already).
    pub(super) fn reopen_for_reads(&self, generation: u64) {
        let Some(mut state) = self.writer.try_lock() else {
            return;
        };
        let paused = state
            .failure
            .as_ref()
            .is_some_and(|f| Instant::now() < f.retry_at);
        if paused || self.generation.load(Ordering::Acquire) != generation {
            return;
        }
        if let Err(e) = self.reopen(&mut state) {
            self.pause(&mut state, &e, Duration::ZERO);
        }
    }

    /// An empty `Immediate` commit: persists every earlier `None` commit.
    pub(super) fn sync_now(&self) -> Result<(), StoreError> {
        if !self.writer.lock().dirty {
            return Ok(());
        }
        self.write(true, |_| Ok(()))
    }

    /// A durable commit that changes nothing: proves writes work.
    pub(super) fn probe(&self) -> Result<(), StoreError> {
        self.write(true, |txn| {
            let mut meta = txn.open_table(META).op("open the meta table")?;
            meta.insert(META_PROBE, crate::protocol::now_ms())
                .op("write the meta table")?;
            meta.remove(META_PROBE).op("write the meta table")?;
            Ok(())
        })
    }

    /// Batched mode: syncs once a `None` commit is `sync_interval` old and
    /// no append has synced meanwhile, so a quiet log is persisted too.
    pub(super) fn sync_loop(&self, stop: mpsc::Receiver<()>) {
        loop {
            let wait = {
                let state = self.writer.lock();
                if state.dirty {
                    (state.last_sync + self.sync_interval).saturating_duration_since(Instant::now())
                } else {
                    self.sync_interval
                }
            };
            match stop.recv_timeout(wait.max(Duration::from_millis(1))) {
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    let due = {
                        let state = self.writer.lock();
                        state.dirty && state.last_sync.elapsed() >= self.sync_interval
                    };
                    if due {
                        if let Err(e) = self.sync_now() {
                            tracing::error!(cause = %e, "store sync failed");
                        }
                    }
                }
                _ => break,
            }
        }
        if let Err(e) = self.sync_now() {
            tracing::error!(cause = %e, "final store sync failed");
        }
    }

    /// Creates the batch's new rooms, then appends its messages, checking
    /// that each room's sequence goes on without a gap; all or nothing.
    /// A room's messages go to the journal if it has entries there, or if
    /// every commit syncs and the batch has fewer than `DIRECT_AT` of
    /// them; else to the messages table. A batch of `DIRECT_BATCH_AT` or
    /// more goes to the messages table whole, after the journal is folded
    /// (in the same commit). Folds the journal when it has
    /// grown to `FOLD_AT`, or when rooms expire (their messages are then in
    /// one table).
    pub(super) fn append(&self, batch: &Batch) -> Result<(), StoreError> {
        if batch.is_empty() {
            return Ok(());
        }
        let mut created = Vec::new();
        let mut expired = 0;
        self.write(false, |txn| {
            let mut rooms = txn.open_table(ROOMS).op("open the rooms table")?;
            for new in &batch.new_rooms {
                if let Some((_, stored)) = self.room_entry_in(&rooms, &new.room)? {
                    if stored != new.epoch {
                        return Err(StoreError::EpochMismatch {
                            room: new.room.clone(),
                            stored,
                            given: new.epoch.clone(),
                        });
                    }
                    continue;
                }
                let mut meta = txn.open_table(META).op("open the meta table")?;
                let id = meta
                    .get(META_NEXT_ROOM)
                    .op("read the meta table")?
                    .map_or(1, |v| v.value());
                meta.insert(META_NEXT_ROOM, id + 1)
                    .op("write the meta table")?;
                rooms
                    .insert(new.room.as_str(), (id, new.epoch.as_str()))
                    .op("write the rooms table")?;
                created.push((new.room.clone(), id));
            }
            let mut messages = txn.open_table(MESSAGES).op("open the messages table")?;
            let mut journal = txn.open_table(JOURNAL).op("open the journal")?;
            // Brought up to this commit here, under the writer's lock: if
            // the commit fails, `write` forgets them before letting go.
            let mut tails = self.tails.lock();
            let known = match &mut *tails {
                Some(known) => known,
                unknown => unknown.insert(Tails::from_journal(journal_tails(&journal)?)),
            };
            // A batch this big fills leaves of the messages table by
            // itself: the journal would save it few pages and cost each
            // message a second insert at the fold. It goes there directly,
            // the journal folded first (in this commit), so that no room
            // has entries left in it to come after.
            let direct_only = batch.appends.len() >= DIRECT_BATCH_AT;
            if direct_only && !known.journal_is_empty() {
                drop(journal);
                fold(txn, &mut messages)?;
                known.folded();
                journal = txn.open_table(JOURNAL).op("open the journal")?;
            }
            let mut key = match journal.last().op("read the journal")? {
                Some((k, _)) => k.value() + 1,
                None => 0,
            };
            let per_room = (self.journal_by_default() && !direct_only).then(|| {
                let mut n: HashMap<&RoomName, usize> = HashMap::new();
                for a in &batch.appends {
                    *n.entry(&a.room).or_default() += 1;
                }
                n
            });
            // The rooms of this batch, found once each: one lookup per
            // message.
            let mut writing: HashMap<&RoomName, Writing> = HashMap::new();
            let mut record = Vec::new();
            for a in &batch.appends {
                let room = match writing.entry(&a.room) {
                    Entry::Occupied(e) => e.into_mut(),
                    Entry::Vacant(e) => {
                        let id = match created.iter().find(|(r, _)| *r == a.room) {
                            Some((_, id)) => *id,
                            None => self
                                .room_id_in(&rooms, &a.room)?
                                .ok_or_else(|| StoreError::UnknownRoom(a.room.clone()))?,
                        };
                        // A room with entries in the journal goes on there,
                        // after them (see `schema`).
                        let (last, journaled) = match known.in_journal(id) {
                            Some(last) => (last, true),
                            None => {
                                let few = per_room.as_ref().is_some_and(|n| n[&a.room] < DIRECT_AT);
                                let last = match known.settled(id) {
                                    Some(last) => last,
                                    None => self.last_in(&messages, id)?,
                                };
                                (last, few)
                            }
                        };
                        e.insert(Writing {
                            id,
                            next: last + 1,
                            journaled,
                            run: None,
                        })
                    }
                };
                let expected = room.next;
                if a.message.sequence != expected {
                    // Returning an error aborts the whole transaction.
                    return Err(StoreError::OutOfSequence {
                        room: a.room.clone(),
                        expected,
                        got: a.message.sequence,
                    });
                }
                room.next += 1;
                record.clear();
                encode_into(&a.message, &mut record);
                if room.journaled {
                    journal
                        .insert(key, (room.id, expected, record.as_slice()))
                        .op("append to the journal")?;
                    key += 1;
                    continue;
                }
                let run = room.run.get_or_insert_with(|| Run::new(expected));
                if !run.try_push(&record) {
                    insert_run(&mut messages, room.id, run)?;
                    *run = Run::new(expected);
                    run.try_push(&record);
                }
            }
            // The runs left, in key order.
            let mut rest: Vec<(u64, &mut Run)> = writing
                .values_mut()
                .filter_map(|w| Some((w.id, w.run.as_mut()?)))
                .collect();
            rest.sort_unstable_by_key(|(id, _)| *id);
            for (id, run) in rest {
                insert_run(&mut messages, id, run)?;
            }
            for w in writing.values() {
                if w.journaled {
                    known.journaled(w.id, w.next - 1);
                } else {
                    known.settle(w.id, w.next - 1);
                }
            }
            if journal.len().op("read the journal")? >= FOLD_AT || !batch.expired.is_empty() {
                drop(journal);
                fold(txn, &mut messages)?;
                known.folded();
            }
            if !batch.read_markers.is_empty() {
                let mut markers = txn.open_table(READ_MARKERS).op("open the markers table")?;
                for m in &batch.read_markers {
                    let key = marker_key(m.room.as_str(), &m.user);
                    let stored = markers
                        .get(key.as_str())
                        .op("read a read marker")?
                        .map_or(0, |v| v.value());
                    if m.sequence > stored {
                        markers
                            .insert(key.as_str(), m.sequence)
                            .op("write a read marker")?;
                    }
                }
            }
            for room in &batch.expired {
                if self.has_markers_table(txn)? {
                    let mut markers = txn.open_table(READ_MARKERS).op("open the markers table")?;
                    let (from, to) = marker_range(room.as_str());
                    markers
                        .retain_in(from.as_str()..to.as_str(), |_, _| false)
                        .op("delete an expired room's read markers")?;
                }
                let Some((id, _)) = self.room_entry_in(&rooms, room)? else {
                    continue;
                };
                known.forget(id);
                messages
                    .retain_in((id, 0)..=(id, u64::MAX), |_, _| false)
                    .op("delete an expired room's messages")?;
                rooms.remove(room.as_str()).op("delete an expired room")?;
                expired += 1;
            }
            Ok(())
        })?;
        // Only once committed: a failed batch must not leave ids behind.
        let mut ids = self.room_ids.write();
        for room in &batch.expired {
            ids.remove(room);
        }
        self.room_count.fetch_add(created.len(), Ordering::AcqRel);
        self.room_count.fetch_sub(expired, Ordering::AcqRel);
        for (room, id) in created {
            ids.insert(room, id);
        }
        Ok(())
    }

    /// Whether a room's messages go to the journal when it has none there
    /// and few in the batch: when every commit syncs. A commit that does
    /// not sync writes no pages yet, so the journal saves it little and
    /// costs it a second insert of each message at the fold.
    fn journal_by_default(&self) -> bool {
        self.durability == Durability::Immediate
    }

    /// Moves the journal into the messages table, in a commit of its own
    /// (before retention, which plans on the messages table).
    pub(super) fn fold(&self) -> Result<(), StoreError> {
        // Not even an empty commit for an empty journal: a commit is a
        // sync in `immediate`, and leaves the file to be repaired after a
        // crash (a retention pass at start must not).
        if self
            .tails
            .lock()
            .as_ref()
            .is_some_and(Tails::journal_is_empty)
        {
            return Ok(());
        }
        let empty = self.reading(|| {
            let snap = self.read_txn()?;
            self.journal(&snap.txn)?.is_empty().op("read the journal")
        })?;
        if empty {
            return Ok(());
        }
        self.write(false, |txn| {
            let mut messages = txn.open_table(MESSAGES).op("open the messages table")?;
            fold(txn, &mut messages)?;
            match &mut *self.tails.lock() {
                Some(known) => known.folded(),
                unknown => *unknown = Some(Tails::default()),
            }
            Ok(())
        })
    }

    /// Whether the markers table exists yet (opening it in a write
    /// transaction would create it).
    fn has_markers_table(&self, txn: &WriteTransaction) -> Result<bool, StoreError> {
        use ::redb::TableHandle;
        Ok(txn
            .list_tables()
            .op("list tables")?
            .any(|t| t.name() == READ_MARKERS.name()))
    }

    /// Deletes planned front ranges in one write transaction. A run that
    /// a range ends inside is cut: its messages past the range stay, as a
    /// run of their own.
    pub(super) fn delete(&self, plan: &RetentionPlan) -> Result<usize, StoreError> {
        if plan.is_empty() {
            return Ok(0);
        }
        self.write(false, |txn| {
            let mut messages = txn.open_table(MESSAGES).op("open the messages table")?;
            let mut deleted = 0usize;
            for &(id, from, to) in plan {
                let kept = self.runs_past(&messages, id, to)?;
                messages
                    .retain_in((id, from)..(id, to), |(_, first), run| {
                        deleted += run_len(first, run).unwrap_or(1) as usize;
                        false
                    })
                    .op("delete old messages")?;
                for mut run in kept {
                    deleted -= run.len();
                    insert_run(&mut messages, id, &mut run)?;
                }
            }
            Ok(deleted)
        })
    }

    /// The messages from `to` on of the run that holds `to - 1`, if it
    /// goes on past it, as runs (one: they are part of one).
    fn runs_past(
        &self,
        messages: &MessagesTable<'_>,
        id: u64,
        to: u64,
    ) -> Result<Vec<Run>, StoreError> {
        let start = self.run_start(messages, id, to.saturating_sub(1))?;
        let Some(v) = messages.get((id, start)).op("read old messages")? else {
            return Ok(Vec::new());
        };
        if start >= to || start + run_len(start, v.value())? <= to {
            return Ok(Vec::new());
        }
        let mut runs = vec![Run::new(to)];
        let mut record = Vec::new();
        for m in decode_run(start, v.value())? {
            if m.sequence < to {
                continue;
            }
            record.clear();
            encode_into(&m, &mut record);
            let run = runs.last_mut().expect("one at least");
            if !run.try_push(&record) {
                let mut next = Run::new(m.sequence);
                next.try_push(&record);
                runs.push(next);
            }
        }
        Ok(runs)
    }
}

type MessagesTable<'t> = Table<'t, (u64, u64), &'static [u8]>;

/// One room of a batch being written.
struct Writing {
    id: u64,
    /// The sequence its next message must have.
    next: u64,
    /// Its messages go to the journal; else to the messages table, in
    /// `run`.
    journaled: bool,
    /// The run its messages for the messages table are gathered in.
    run: Option<Run>,
}

/// Each room's newest sequence in the journal.
fn journal_tails(
    journal: &Table<'_, u64, (u64, u64, &'static [u8])>,
) -> Result<HashMap<u64, u64>, StoreError> {
    let mut tails = HashMap::new();
    for entry in journal.iter().op("read the journal")? {
        let (_, v) = entry.op("read the journal")?;
        let (id, sequence, _) = v.value();
        tails.insert(id, sequence);
    }
    Ok(tails)
}

/// Moves every journal entry to the messages table, in key order there,
/// and empties the journal: dropped whole and made again, which frees its
/// pages at once instead of deleting entry by entry.
fn fold(txn: &WriteTransaction, messages: &mut MessagesTable<'_>) -> Result<(), StoreError> {
    let journal = txn.open_table(JOURNAL).op("open the journal")?;
    let mut entries = Vec::with_capacity(journal.len().op("read the journal")? as usize);
    for entry in journal.iter().op("read the journal")? {
        let (_, v) = entry.op("read the journal")?;
        let (id, sequence, record) = v.value();
        entries.push(((id, sequence), record.to_vec()));
    }
    drop(journal);
    txn.delete_table(JOURNAL).op("empty the journal")?;
    txn.open_table(JOURNAL).op("make the journal")?;
    entries.sort_unstable_by_key(|(key, _)| *key);
    // A room's entries are consecutive: they go in runs.
    let mut run: Option<(u64, Run)> = None;
    for ((id, sequence), record) in &entries {
        let pushed = match &mut run {
            Some((room, r)) => room == id && r.next() == *sequence && r.try_push(record),
            None => false,
        };
        if pushed {
            continue;
        }
        if let Some((room, mut r)) = run.take() {
            insert_run(messages, room, &mut r)?;
        }
        let mut r = Run::new(*sequence);
        r.try_push(record);
        run = Some((*id, r));
    }
    if let Some((room, mut r)) = run {
        insert_run(messages, room, &mut r)?;
    }
    Ok(())
}

fn insert_run(messages: &mut MessagesTable<'_>, id: u64, run: &mut Run) -> Result<(), StoreError> {
    let (first, value) = run.entry();
    messages.insert((id, first), value).op("insert messages")?;
    Ok(())
}
