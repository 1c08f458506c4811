//! The log seam (`Store`) over Redis: loads, appends (one script call per
//! room), range and tail reads of a room's stream, the room index, read
//! markers, retention and health. Blocking calls: each runs the async
//! call on the log's runtime (`RedisLog::block`).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use fred::prelude::*;

use super::keys::{self, RoomKeys};
use super::{codec, RedisLog};
use crate::protocol::{now_ms, RoomName};
use crate::store::{
    read_cost, Batch, Health, ReadLimit, Retention, RoomLog, RoomSummary, Sequencing, Store,
    StoreError, StoredMessage, Tail,
};

/// How long an epoch claimed by loading an empty room lasts without a
/// message (each load renews it).
const CLAIM_TTL_MS: u64 = 60 * 60 * 1000;
/// Rooms whose retention runs at once.
const RETENTION_PARALLEL: usize = 32;

fn range_start(after: u64) -> String {
    keys::entry_id(after.saturating_add(1))
}

fn range_end(upto: u64) -> String {
    if upto >= i64::MAX as u64 {
        "+".into()
    } else {
        keys::entry_id(upto)
    }
}

/// Cuts what a range read brought to `limit` (count, then bytes).
fn within(messages: Vec<StoredMessage>, limit: ReadLimit) -> Vec<StoredMessage> {
    let mut out = Vec::with_capacity(messages.len().min(limit.messages));
    let mut bytes = 0;
    for m in messages {
        if limit.reached(out.len(), bytes) {
            break;
        }
        bytes += read_cost(&m);
        out.push(m);
    }
    out
}

fn count(limit: ReadLimit) -> u64 {
    limit.messages.min(i64::MAX as usize) as u64
}

impl Store for RedisLog {
    fn sequencing(&self) -> Sequencing {
        Sequencing::Log
    }

    fn load_room(&self, room: &RoomName, _dedup_window: usize) -> Result<RoomLog, StoreError> {
        let k = RoomKeys::new(room);
        let args: Vec<Value> = vec![
            crate::store::new_epoch().into(),
            (CLAIM_TTL_MS as i64).into(),
        ];
        let reply: Vec<Value> = self.block(
            self.call(
                "load",
                self.scripts
                    .load
                    .call(&self.client, None, vec![k.meta, k.presence], args),
            ),
        )?;
        let bad = || StoreError::storage("load", std::io::Error::other("unexpected script reply"));
        let mut it = reply.into_iter();
        let epoch = it.next().and_then(|v| v.into_string()).ok_or_else(bad)?;
        let last = it.next().and_then(|v| v.as_u64()).ok_or_else(bad)?;
        let mut fields = Vec::new();
        while let (Some(f), Some(v)) = (it.next(), it.next()) {
            if let (Some(f), Some(v)) = (f.into_string(), v.into_string()) {
                fields.push((f, v));
            }
        }
        // Redis dedups client ids itself: the core needs none of them.
        Ok(RoomLog {
            epoch,
            last,
            recent_ids: Vec::new(),
            exists: last > 0,
            room_limit_reached: false,
            presence: self.remote_presence(fields),
            // Read by the driver through `read_markers`.
            read_markers: Vec::new(),
        })
    }

    fn epoch(&self, room: &RoomName) -> Result<Option<String>, StoreError> {
        let k = RoomKeys::new(room);
        self.block(self.call("epoch", self.client.hget(k.meta, "epoch")))
    }

    fn append(&self, batch: &mut Batch) -> Result<(), StoreError> {
        // One script call per room, all in flight at once (pipelined on the
        // connection, or spread over a Cluster's nodes).
        let mut rooms: Vec<(RoomName, Vec<usize>)> = Vec::new();
        for (i, a) in batch.appends.iter().enumerate() {
            match rooms.iter_mut().find(|(r, _)| *r == a.room) {
                Some((_, idx)) => idx.push(i),
                None => rooms.push((a.room.clone(), vec![i])),
            }
        }
        // A room the log does not have at this point was deleted (or its
        // claim lapsed): it starts afresh under a new epoch, never under the
        // one the batch names, and the core learns of it from the write-back.
        let epochs: Vec<String> = rooms.iter().map(|_| crate::store::new_epoch()).collect();
        // Read markers go alongside: each names a sequence already stored.
        let mut markers: BTreeMap<&RoomName, Vec<Value>> = BTreeMap::new();
        for m in &batch.read_markers {
            let args = markers.entry(&m.room).or_default();
            args.push(Value::from(&*m.user));
            args.push(Value::from(m.sequence.min(i64::MAX as u64) as i64));
        }
        let (results, marked) = self.block(async {
            let calls = rooms.iter().zip(&epochs).map(|((room, idx), epoch)| {
                let messages: Vec<&StoredMessage> =
                    idx.iter().map(|&i| &batch.appends[i].message).collect();
                async move { self.append_room(room, epoch, &messages).await }
            });
            let marks = markers.into_iter().map(|(room, args)| {
                let key = RoomKeys::new(room).read;
                self.call(
                    "read_markers",
                    self.scripts
                        .mark_read
                        .call::<i64>(&self.client, None, vec![key], args),
                )
            });
            let (results, marked) = futures_util::future::join(
                futures_util::future::join_all(calls),
                futures_util::future::join_all(marks),
            )
            .await;
            Ok((results, marked))
        })?;
        let mut first_error = marked.into_iter().find_map(Result::err);
        let mut index = Vec::new();
        for ((room, idx), result) in rooms.iter().zip(results) {
            match result {
                Ok((epoch, first, seqs)) => {
                    for (&i, (seq, dup)) in idx.iter().zip(seqs) {
                        batch.appends[i].message.sequence = seq;
                        batch.appends[i].duplicate = dup;
                    }
                    for n in batch.new_rooms.iter_mut().filter(|n| n.room == *room) {
                        n.epoch.clone_from(&epoch);
                    }
                    index.push((room.clone(), first));
                }
                Err(e) => {
                    for &i in idx {
                        batch.appends[i].message.sequence = 0;
                    }
                    first_error.get_or_insert(e);
                }
            }
        }
        self.index(index);
        if !batch.expired.is_empty() {
            self.drop_rooms(&batch.expired)?;
        }
        match first_error {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    fn read(
        &self,
        room: &RoomName,
        after: u64,
        upto: u64,
        limit: ReadLimit,
    ) -> Result<Vec<StoredMessage>, StoreError> {
        if upto <= after || limit.messages == 0 {
            return Ok(Vec::new());
        }
        let k = RoomKeys::new(room);
        let reply: Value = self.block(self.call(
            "read",
            self.client.xrange(
                k.log,
                range_start(after),
                range_end(upto),
                Some(count(limit)),
            ),
        ))?;
        Ok(within(codec::decode_entries(reply)?, limit))
    }

    fn read_tail(
        &self,
        room: &RoomName,
        after: u64,
        upto: u64,
        limit: ReadLimit,
    ) -> Result<Tail, StoreError> {
        let k = RoomKeys::new(room);
        let (meta, entries) = self.block(async {
            let meta = self.call(
                "fill",
                self.client
                    .hmget::<Vec<Option<String>>, _, _>(&k.meta, vec!["epoch", "seq"]),
            );
            let entries = self.call(
                "fill",
                self.client.xrange::<Value, _, _, _>(
                    &k.log,
                    range_start(after),
                    range_end(upto),
                    Some(count(limit)),
                ),
            );
            let (meta, entries) = futures_util::future::join(meta, entries).await;
            Ok((meta?, entries?))
        })?;
        let mut meta = meta.into_iter();
        let epoch = meta.next().flatten();
        let last: u64 = meta
            .next()
            .flatten()
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        let messages = within(codec::decode_entries(entries)?, limit);
        let last = last.max(messages.last().map_or(0, |m| m.sequence));
        Ok(Tail {
            epoch,
            last,
            messages,
        })
    }

    fn first_retained(&self, room: &RoomName) -> Result<u64, StoreError> {
        let k = RoomKeys::new(room);
        let first: Value =
            self.block(self.call("read", self.client.xrange(&k.log, "-", "+", Some(1))))?;
        if let Some(m) = codec::decode_entries(first)?.first() {
            return Ok(m.sequence);
        }
        let seq: Option<u64> = self.block(self.call("read", self.client.hget(&k.meta, "seq")))?;
        Ok(seq.unwrap_or(0) + 1)
    }

    fn rooms(
        &self,
        after: Option<&RoomName>,
        limit: usize,
    ) -> Result<Vec<RoomSummary>, StoreError> {
        // The index is scored by time, not name: a page is cut from the
        // sorted names.
        let names: Vec<String> = self.block(
            self.call(
                "rooms",
                self.client
                    .zrange(keys::ROOMS, 0, -1, None, false, None, false),
            ),
        )?;
        let mut rooms: Vec<RoomName> = names
            .iter()
            .filter_map(|n| RoomName::parse(n).ok())
            .filter(|r| after.is_none_or(|a| r > a))
            .collect();
        rooms.sort();
        rooms.truncate(limit);
        let lasts = self.block(async {
            let calls = rooms.iter().map(|room| {
                let meta = RoomKeys::new(room).meta;
                async move {
                    self.call("rooms", self.client.hget::<Option<u64>, _, _>(meta, "seq"))
                        .await
                }
            });
            futures_util::future::join_all(calls)
                .await
                .into_iter()
                .collect::<Result<Vec<_>, _>>()
        })?;
        Ok(rooms
            .into_iter()
            .zip(lasts)
            .filter_map(|(room, last)| Some(RoomSummary { room, last: last? }))
            .collect())
    }

    fn read_markers(&self, room: &RoomName) -> Result<Vec<(Arc<str>, u64)>, StoreError> {
        let k = RoomKeys::new(room);
        let all: HashMap<String, u64> =
            self.block(self.call("read_markers", self.client.hgetall(k.read)))?;
        let mut markers: Vec<(Arc<str>, u64)> =
            all.into_iter().map(|(u, s)| (Arc::from(u), s)).collect();
        markers.sort();
        Ok(markers)
    }

    fn room_count(&self) -> usize {
        self.block(self.call("rooms", self.client.zcard::<u64, _>(keys::ROOMS)))
            .map_or(0, |n| n as usize)
    }

    fn expired_rooms(&self, before_ms: u64, limit: usize) -> Result<Vec<RoomName>, StoreError> {
        let names: Vec<String> = self.block(self.call(
            "rooms",
            self.client.zrangebyscore(
                keys::ROOMS,
                "-inf",
                format!("({before_ms}"),
                false,
                Some((0, limit.min(i64::MAX as usize) as i64)),
            ),
        ))?;
        let mut rooms: Vec<RoomName> = names
            .iter()
            .filter_map(|n| RoomName::parse(n).ok())
            .collect();
        rooms.sort();
        Ok(rooms)
    }

    fn apply_retention(&self, policy: &Retention, max_delete: usize) -> Result<usize, StoreError> {
        // Count retention happens as messages are appended (XADD MAXLEN ~).
        let Some(cutoff) = policy.older_than_ms else {
            return Ok(0);
        };
        let names: Vec<String> = self.block(
            self.call(
                "rooms",
                self.client
                    .zrange(keys::ROOMS, 0, -1, None, false, None, false),
            ),
        )?;
        let mut deleted = 0;
        for chunk in names.chunks(RETENTION_PARALLEL) {
            if deleted >= max_delete {
                break;
            }
            let left = max_delete - deleted;
            let counts = self.block(async {
                let calls = chunk
                    .iter()
                    .filter_map(|n| RoomName::parse(n).ok())
                    .map(|room| {
                        let log = RoomKeys::new(&room).log;
                        let args: Vec<Value> = vec![(cutoff as i64).into(), (left as i64).into()];
                        async move {
                            self.call(
                                "retention",
                                self.scripts.trim_age.call::<i64>(
                                    &self.client,
                                    None,
                                    vec![log],
                                    args,
                                ),
                            )
                            .await
                        }
                    });
                Ok(futures_util::future::join_all(calls).await)
            })?;
            for n in counts {
                deleted += n? as usize;
            }
        }
        Ok(deleted)
    }

    fn describe(&self) -> String {
        self.describe.clone()
    }

    fn probe_writes(&self) -> Result<(), StoreError> {
        self.block(self.call("ping", self.client.ping::<()>(None)))
    }

    fn health(&self) -> Health {
        let up = self.client.is_connected();
        self.metrics.redis_up.set(i64::from(up));
        Health {
            damaged: None,
            writes_failing: (!up).then(|| format!("{} is unreachable", self.describe)),
        }
    }
}

impl RedisLog {
    /// Deletes rooms whose whole log is past age retention (`Batch::expired`).
    fn drop_rooms(&self, rooms: &[RoomName]) -> Result<(), StoreError> {
        let age = self.settings.retain_age.unwrap_or(Duration::ZERO);
        let cutoff = now_ms().saturating_sub(age.as_millis() as u64);
        for room in rooms {
            let k = RoomKeys::new(room);
            let args: Vec<Value> = vec![(cutoff as i64).into()];
            let dropped: i64 = self.block(self.call(
                "expire",
                self.scripts.drop.call(
                    &self.client,
                    None,
                    vec![k.log, k.meta, k.ids, k.read],
                    args,
                ),
            ))?;
            if dropped == 1 {
                self.indexed.lock().remove(room);
                self.block(self.call(
                    "expire",
                    self.client.zrem::<(), _, _>(keys::ROOMS, room.as_str()),
                ))?;
            }
        }
        Ok(())
    }
}
