//! `MemoryStore`: the log in a map of deques. History is lost on exit and
//! every room gets a new epoch per process, so clients replaying against a
//! restarted server learn their `since` no longer applies.
//!
//! `MemoryStore::numbering()` makes a log that numbers messages itself and
//! dedups client ids (`Sequencing::Log`), the way a log shared by several
//! nodes must: the room core's other mode, kept honest by its tests. Like
//! the Redis log, it claims an epoch for an empty room when the room is
//! loaded (so every node announces the same one), creates a room missing
//! at append time (deleted, or never loaded) with a fresh epoch, and writes
//! the epoch it has back into the batch.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;

use parking_lot::RwLock;

use super::{
    read_cost, Batch, ReadLimit, Retention, RoomLog, RoomSummary, Sequencing, Store, StoreError,
    StoredMessage,
};
use crate::protocol::RoomName;

#[derive(Default)]
pub struct MemoryStore {
    rooms: RwLock<BTreeMap<RoomName, Log>>,
    /// (room, user) → highest sequence read; guarded by `rooms`' lock order
    /// (taken after it) so a batch is all or nothing for readers.
    markers: RwLock<BTreeMap<(RoomName, Arc<str>), u64>>,
    /// Numbers messages itself (`Sequencing::Log`).
    numbering: bool,
    /// A numbering log's epochs claimed by loading rooms it does not have.
    claims: parking_lot::Mutex<HashMap<RoomName, String>>,
}

struct Log {
    epoch: String,
    /// (user, client id) → sequence, for a numbering log's dedup.
    ids: HashMap<(Arc<str>, String), u64>,
    /// Retained messages; sequences are contiguous, `messages[0]` is the oldest.
    messages: VecDeque<StoredMessage>,
    /// Sequence of `messages[0]`, or the next sequence when empty.
    first: u64,
}

impl Log {
    fn last(&self) -> u64 {
        self.first + self.messages.len() as u64 - 1
    }
}

impl MemoryStore {
    pub fn new() -> MemoryStore {
        MemoryStore::default()
    }

    /// A log that numbers messages and dedups client ids itself.
    pub fn numbering() -> MemoryStore {
        MemoryStore {
            numbering: true,
            ..MemoryStore::default()
        }
    }
}

/// Every retained message with a client id, newest last, at most `window`.
fn recent_ids(log: &Log, window: usize) -> Vec<(Arc<str>, String, u64)> {
    let mut ids: Vec<_> = log
        .messages
        .iter()
        .rev()
        .filter_map(|m| {
            let id = m.client_msg_id.clone()?;
            Some((m.user.clone(), id, m.sequence))
        })
        .take(window)
        .collect();
    ids.reverse();
    ids
}

impl Store for MemoryStore {
    fn appends_in_memory(&self) -> bool {
        true
    }

    fn sequencing(&self) -> Sequencing {
        if self.numbering {
            Sequencing::Log
        } else {
            Sequencing::Local
        }
    }

    fn load_room(&self, room: &RoomName, dedup_window: usize) -> Result<RoomLog, StoreError> {
        let rooms = self.rooms.read();
        Ok(match rooms.get(room) {
            Some(log) => RoomLog {
                epoch: log.epoch.clone(),
                last: log.last(),
                recent_ids: recent_ids(log, dedup_window),
                exists: true,
                room_limit_reached: false,
                presence: Vec::new(),
                read_markers: Vec::new(),
            },
            None if self.numbering => RoomLog {
                epoch: self
                    .claims
                    .lock()
                    .entry(room.clone())
                    .or_insert_with(super::new_epoch)
                    .clone(),
                last: 0,
                recent_ids: Vec::new(),
                exists: false,
                room_limit_reached: false,
                presence: Vec::new(),
                read_markers: Vec::new(),
            },
            None => RoomLog {
                epoch: super::new_epoch(),
                last: 0,
                recent_ids: Vec::new(),
                exists: false,
                room_limit_reached: false,
                presence: Vec::new(),
                read_markers: Vec::new(),
            },
        })
    }

    fn epoch(&self, room: &RoomName) -> Result<Option<String>, StoreError> {
        if let Some(log) = self.rooms.read().get(room) {
            return Ok(Some(log.epoch.clone()));
        }
        // A numbering log names the epoch a load claimed, as a shared one
        // does (the room is not written yet, but its epoch is settled).
        Ok(self.claims.lock().get(room).cloned())
    }

    fn append(&self, batch: &mut Batch) -> Result<(), StoreError> {
        let mut rooms = self.rooms.write();
        // Check the whole batch first so that it is all-or-nothing.
        for new in &mut batch.new_rooms {
            if let Some(log) = rooms.get(&new.room) {
                if self.numbering {
                    // A shared log keeps the epoch it has and says so.
                    new.epoch.clone_from(&log.epoch);
                } else if log.epoch != new.epoch {
                    return Err(StoreError::EpochMismatch {
                        room: new.room.clone(),
                        stored: log.epoch.clone(),
                        given: new.epoch.clone(),
                    });
                }
            }
        }
        if self.numbering {
            // A room it does not have is created with its claimed epoch, or
            // (deleted since) a fresh one: never the one the batch names.
            let mut claims = self.claims.lock();
            for new in &mut batch.new_rooms {
                if !rooms.contains_key(&new.room) {
                    new.epoch = claims.remove(&new.room).unwrap_or_else(super::new_epoch);
                }
            }
        }
        let created = |room: &RoomName| batch.new_rooms.iter().any(|n| &n.room == room);
        let mut next: HashMap<&RoomName, u64> = HashMap::new();
        for a in &batch.appends {
            let expected = match next.get(&a.room) {
                Some(n) => *n,
                None => match rooms.get(&a.room) {
                    Some(log) => log.last() + 1,
                    None if created(&a.room) => 1,
                    None => return Err(StoreError::UnknownRoom(a.room.clone())),
                },
            };
            if !self.numbering && a.message.sequence != expected {
                return Err(StoreError::OutOfSequence {
                    room: a.room.clone(),
                    expected,
                    got: a.message.sequence,
                });
            }
            next.insert(&a.room, expected + 1);
        }
        for new in &batch.new_rooms {
            rooms.entry(new.room.clone()).or_insert_with(|| Log {
                epoch: new.epoch.clone(),
                ids: HashMap::new(),
                messages: VecDeque::new(),
                first: 1,
            });
        }
        for a in &mut batch.appends {
            let log = rooms.get_mut(&a.room).expect("checked above");
            if self.numbering {
                let key = a
                    .message
                    .client_msg_id
                    .clone()
                    .map(|id| (a.message.user.clone(), id));
                if let Some(seq) = key.as_ref().and_then(|k| log.ids.get(k)) {
                    a.message.sequence = *seq;
                    a.duplicate = true;
                    continue;
                }
                a.message.sequence = log.last() + 1;
                if let Some(k) = key {
                    log.ids.insert(k, a.message.sequence);
                }
            }
            log.messages.push_back(a.message.clone());
        }
        let mut markers = self.markers.write();
        for m in &batch.read_markers {
            let at = markers.entry((m.room.clone(), m.user.clone())).or_insert(0);
            *at = (*at).max(m.sequence);
        }
        for room in &batch.expired {
            rooms.remove(room);
            self.claims.lock().remove(room);
            markers.retain(|(r, _), _| r != room);
        }
        Ok(())
    }

    fn read_markers(&self, room: &RoomName) -> Result<Vec<(Arc<str>, u64)>, StoreError> {
        Ok(self
            .markers
            .read()
            .iter()
            .filter(|((r, _), _)| r == room)
            .map(|((_, user), seq)| (user.clone(), *seq))
            .collect())
    }

    fn room_count(&self) -> usize {
        self.rooms.read().len()
    }

    fn expired_rooms(&self, before_ms: u64, limit: usize) -> Result<Vec<RoomName>, StoreError> {
        Ok(self
            .rooms
            .read()
            .iter()
            .filter(|(_, log)| log.messages.back().is_some_and(|m| m.timestamp < before_ms))
            .map(|(room, _)| room.clone())
            .take(limit)
            .collect())
    }

    fn read(
        &self,
        room: &RoomName,
        after: u64,
        upto: u64,
        limit: ReadLimit,
    ) -> Result<Vec<StoredMessage>, StoreError> {
        let rooms = self.rooms.read();
        let Some(log) = rooms.get(room) else {
            return Ok(Vec::new());
        };
        let start = after.saturating_add(1).max(log.first);
        let end = upto.min(log.last());
        if start > end {
            return Ok(Vec::new());
        }
        let from = (start - log.first) as usize;
        let count = (end - start + 1) as usize;
        let mut out = Vec::new();
        let mut bytes = 0;
        for m in log.messages.range(from..from + count) {
            if limit.reached(out.len(), bytes) {
                break;
            }
            bytes += read_cost(m);
            out.push(m.clone());
        }
        Ok(out)
    }

    fn first_retained(&self, room: &RoomName) -> Result<u64, StoreError> {
        Ok(self.rooms.read().get(room).map_or(1, |l| l.first))
    }

    fn rooms(
        &self,
        after: Option<&RoomName>,
        limit: usize,
    ) -> Result<Vec<RoomSummary>, StoreError> {
        use std::ops::Bound;
        let from = after.map_or(Bound::Unbounded, Bound::Excluded);
        Ok(self
            .rooms
            .read()
            .range((from, Bound::Unbounded))
            .take(limit)
            .map(|(room, log)| RoomSummary {
                room: room.clone(),
                last: log.last(),
            })
            .collect())
    }

    fn apply_retention(&self, policy: &Retention, max_delete: usize) -> Result<usize, StoreError> {
        let mut rooms = self.rooms.write();
        let mut deleted = 0;
        for log in rooms.values_mut() {
            while deleted < max_delete {
                let Some(front) = log.messages.front() else {
                    break;
                };
                if !policy.expired(log.messages.len() as u64 - 1, front.timestamp) {
                    break;
                }
                if let Some(m) = log.messages.pop_front() {
                    if let Some(id) = m.client_msg_id {
                        log.ids.remove(&(m.user, id));
                    }
                }
                log.first += 1;
                deleted += 1;
            }
        }
        Ok(deleted)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(seq: u64) -> StoredMessage {
        StoredMessage {
            sequence: seq,
            timestamp: 0,
            user: "u".into(),
            content: format!("m{seq}"),
            client_msg_id: Some(format!("id{seq}")),
        }
    }

    fn batch(room: &RoomName, seqs: impl IntoIterator<Item = u64>) -> Batch {
        Batch {
            new_rooms: vec![super::super::NewRoom {
                room: room.clone(),
                epoch: "e".into(),
            }],
            appends: seqs
                .into_iter()
                .map(|i| super::super::Append::new(room.clone(), msg(i)))
                .collect(),
            expired: Vec::new(),
            read_markers: Vec::new(),
        }
    }

    #[test]
    fn appends_reads_and_retains() {
        let s = MemoryStore::new();
        let room = RoomName::parse("r").unwrap();
        let new = s.load_room(&room, 10).unwrap();
        assert_eq!((new.last, new.exists), (0, false));
        assert_eq!(s.epoch(&room).unwrap(), None, "loading never creates");
        s.append(&mut batch(&room, 1..=10)).unwrap();
        let got = s.read(&room, 3, 8, ReadLimit::messages(100)).unwrap();
        assert_eq!(
            got.iter().map(|m| m.sequence).collect::<Vec<_>>(),
            vec![4, 5, 6, 7, 8]
        );
        assert_eq!(
            s.read(&room, 0, 10, ReadLimit::messages(2)).unwrap().len(),
            2
        );
        let by_bytes = ReadLimit {
            messages: 100,
            bytes: 5,
        };
        assert_eq!(
            s.read(&room, 0, 10, by_bytes).unwrap().len(),
            2,
            "m1+u, m2+u"
        );
        let keep4 = Retention {
            keep: 4,
            older_than_ms: None,
        };
        assert_eq!(s.apply_retention(&keep4, 100).unwrap(), 6);
        assert_eq!(s.first_retained(&room).unwrap(), 7);
        assert_eq!(
            s.read(&room, 0, 10, ReadLimit::messages(100)).unwrap()[0].sequence,
            7
        );
        let log = s.load_room(&room, 2).unwrap();
        assert_eq!((log.last, log.exists, log.epoch.as_str()), (10, true, "e"));
        assert_eq!(
            log.recent_ids.iter().map(|r| r.2).collect::<Vec<_>>(),
            vec![9, 10]
        );
    }

    #[test]
    fn rejects_a_sequence_gap_and_an_unknown_room() {
        let s = MemoryStore::new();
        let room = RoomName::parse("r").unwrap();
        assert!(matches!(
            s.append(&mut batch(&room, [2])),
            Err(StoreError::OutOfSequence {
                expected: 1,
                got: 2,
                ..
            })
        ));
        let mut orphan = batch(&room, [1]);
        orphan.new_rooms.clear();
        assert!(matches!(
            s.append(&mut orphan),
            Err(StoreError::UnknownRoom(_))
        ));
        assert_eq!(s.epoch(&room).unwrap(), None, "all or nothing");
    }

    #[test]
    fn a_numbering_log_numbers_and_dedups() {
        let s = MemoryStore::numbering();
        let room = RoomName::parse("r").unwrap();
        let mut b = batch(&room, [7, 8, 9]);
        b.appends[2].message.client_msg_id = b.appends[0].message.client_msg_id.clone();
        s.append(&mut b).unwrap();
        let seqs: Vec<(u64, bool)> = b
            .appends
            .iter()
            .map(|a| (a.message.sequence, a.duplicate))
            .collect();
        assert_eq!(seqs, [(1, false), (2, false), (1, true)]);
    }

    #[test]
    fn read_markers_only_go_forward() {
        let s = MemoryStore::new();
        let room = RoomName::parse("r").unwrap();
        let marker = |sequence| super::super::ReadMarker {
            room: room.clone(),
            user: "ann".into(),
            sequence,
        };
        let mut b = batch(&room, 1..=3);
        b.read_markers = vec![marker(3), marker(2)];
        s.append(&mut b).unwrap();
        let mut back = Batch {
            read_markers: vec![marker(1)],
            ..Batch::default()
        };
        s.append(&mut back).unwrap();
        assert_eq!(s.read_markers(&room).unwrap(), vec![("ann".into(), 3)]);
    }
}
