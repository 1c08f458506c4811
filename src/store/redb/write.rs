//! The write side: every write (a group-commit batch, retention) is one
//! write transaction under one mutex (redb allows one writer at a time
//! anyway), committed with the durability the mode asks for.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use ::redb::{ReadableTable, WriteTransaction};

use super::read::RetentionPlan;
use super::schema::{encode, MESSAGES, META, META_NEXT_ROOM, ROOMS};
use super::{Inner, Op};
use crate::config::Durability;
use crate::protocol::RoomName;
use crate::store::{Batch, StoreError};

pub struct SyncState {
    /// Start of the last `Immediate` commit.
    pub last_sync: Instant,
    /// A `None` commit happened since then.
    pub dirty: bool,
}

impl Inner {
    /// Runs `f` in one write transaction and commits it with the durability
    /// the mode asks for; `f`'s error aborts the transaction.
    fn write<T>(
        &self,
        f: impl FnOnce(&WriteTransaction) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let mut state = self.writer.lock();
        let mut txn = self.db.begin_write().op("begin a write transaction")?;
        let durable = match self.durability {
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

    /// An empty `Immediate` commit: persists every earlier `None` commit.
    pub(super) fn sync_now(&self) -> Result<(), StoreError> {
        let mut state = self.writer.lock();
        if !state.dirty {
            return Ok(());
        }
        let started = Instant::now();
        let txn = self.db.begin_write().op("begin a write transaction")?;
        txn.commit().op("sync commit")?;
        state.last_sync = started;
        state.dirty = false;
        self.unsynced.store(false, Ordering::Release);
        Ok(())
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
    pub(super) fn append(&self, batch: &Batch) -> Result<(), StoreError> {
        if batch.is_empty() {
            return Ok(());
        }
        let mut created = Vec::new();
        let mut expired = 0;
        self.write(|txn| {
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
            // Room → (id, next expected sequence), for the rooms of this batch.
            let mut next: HashMap<&RoomName, (u64, u64)> = HashMap::new();
            for a in &batch.appends {
                let (id, expected) = match next.get(&a.room) {
                    Some(v) => *v,
                    None => {
                        let id = match created.iter().find(|(r, _)| *r == a.room) {
                            Some((_, id)) => *id,
                            None => self
                                .room_id_in(&rooms, &a.room)?
                                .ok_or_else(|| StoreError::UnknownRoom(a.room.clone()))?,
                        };
                        (id, self.last_in(&messages, id)? + 1)
                    }
                };
                if a.message.sequence != expected {
                    // Returning an error aborts the whole transaction.
                    return Err(StoreError::OutOfSequence {
                        room: a.room.clone(),
                        expected,
                        got: a.message.sequence,
                    });
                }
                messages
                    .insert((id, expected), encode(&a.message).as_slice())
                    .op("insert a message")?;
                next.insert(&a.room, (id, expected + 1));
            }
            for room in &batch.expired {
                let Some((id, _)) = self.room_entry_in(&rooms, room)? else {
                    continue;
                };
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

    /// Deletes planned front ranges in one write transaction.
    pub(super) fn delete(&self, plan: &RetentionPlan) -> Result<usize, StoreError> {
        if plan.is_empty() {
            return Ok(0);
        }
        self.write(|txn| {
            let mut messages = txn.open_table(MESSAGES).op("open the messages table")?;
            let mut deleted = 0usize;
            for &(id, from, to) in plan {
                messages
                    .retain_in((id, from)..(id, to), |_, _| {
                        deleted += 1;
                        false
                    })
                    .op("delete old messages")?;
            }
            Ok(deleted)
        })
    }
}
