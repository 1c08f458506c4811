//! `MemoryStore`: the log in a map of deques. History is lost on exit and
//! every room gets a new epoch per process, so clients replaying against a
//! restarted server learn their `since` no longer applies.

use std::collections::{BTreeMap, VecDeque};

use parking_lot::RwLock;

use super::{Append, Retention, RoomLog, RoomSummary, Store, StoreError, StoredMessage};
use crate::protocol::RoomName;

#[derive(Default)]
pub struct MemoryStore {
    rooms: RwLock<BTreeMap<RoomName, Log>>,
}

struct Log {
    epoch: String,
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
}

impl Store for MemoryStore {
    fn open_room(&self, room: &RoomName, dedup_window: usize) -> Result<RoomLog, StoreError> {
        let mut rooms = self.rooms.write();
        let log = rooms.entry(room.clone()).or_insert_with(|| Log {
            epoch: super::new_epoch(),
            messages: VecDeque::new(),
            first: 1,
        });
        let mut recent_ids: Vec<_> = log
            .messages
            .iter()
            .rev()
            .filter_map(|m| {
                let id = m.client_msg_id.clone()?;
                Some((m.user.clone(), id, m.sequence))
            })
            .take(dedup_window)
            .collect();
        recent_ids.reverse();
        Ok(RoomLog {
            epoch: log.epoch.clone(),
            last: log.last(),
            recent_ids,
        })
    }

    fn epoch(&self, room: &RoomName) -> Result<Option<String>, StoreError> {
        Ok(self.rooms.read().get(room).map(|l| l.epoch.clone()))
    }

    fn append(&self, batch: &[Append]) -> Result<(), StoreError> {
        let mut rooms = self.rooms.write();
        // Check the whole batch first so that it is all-or-nothing.
        let mut next: std::collections::HashMap<&RoomName, u64> = Default::default();
        for a in batch {
            let expected = match next.get(&a.room) {
                Some(n) => *n,
                None => {
                    rooms
                        .get(&a.room)
                        .ok_or_else(|| {
                            StoreError::Corrupt(format!("append to unopened room {}", a.room))
                        })?
                        .last()
                        + 1
                }
            };
            if a.message.sequence != expected {
                return Err(StoreError::Corrupt(format!(
                    "room {} expected sequence {expected}, got {}",
                    a.room, a.message.sequence
                )));
            }
            next.insert(&a.room, expected + 1);
        }
        for a in batch {
            let log = rooms.get_mut(&a.room).expect("checked above");
            log.messages.push_back(a.message.clone());
        }
        Ok(())
    }

    fn read(
        &self,
        room: &RoomName,
        after: u64,
        upto: u64,
        limit: usize,
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
        let count = ((end - start + 1) as usize).min(limit);
        Ok(log.messages.range(from..from + count).cloned().collect())
    }

    fn first_retained(&self, room: &RoomName) -> Result<u64, StoreError> {
        Ok(self.rooms.read().get(room).map_or(1, |l| l.first))
    }

    fn rooms(&self) -> Result<Vec<RoomSummary>, StoreError> {
        Ok(self
            .rooms
            .read()
            .iter()
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
                log.messages.pop_front();
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

    #[test]
    fn appends_reads_and_retains() {
        let s = MemoryStore::new();
        let room = RoomName::parse("r").unwrap();
        assert_eq!(s.open_room(&room, 10).unwrap().last, 0);
        let batch: Vec<_> = (1..=10)
            .map(|i| Append {
                room: room.clone(),
                message: msg(i),
            })
            .collect();
        s.append(&batch).unwrap();
        let got = s.read(&room, 3, 8, 100).unwrap();
        assert_eq!(
            got.iter().map(|m| m.sequence).collect::<Vec<_>>(),
            vec![4, 5, 6, 7, 8]
        );
        assert_eq!(s.read(&room, 0, 10, 2).unwrap().len(), 2);
        let keep4 = Retention {
            keep: 4,
            older_than_ms: None,
        };
        assert_eq!(s.apply_retention(&keep4, 100).unwrap(), 6);
        assert_eq!(s.first_retained(&room).unwrap(), 7);
        assert_eq!(s.read(&room, 0, 10, 100).unwrap()[0].sequence, 7);
        let log = s.open_room(&room, 2).unwrap();
        assert_eq!(log.last, 10);
        assert_eq!(
            log.recent_ids.iter().map(|r| r.2).collect::<Vec<_>>(),
            vec![9, 10]
        );
    }

    #[test]
    fn rejects_a_sequence_gap() {
        let s = MemoryStore::new();
        let room = RoomName::parse("r").unwrap();
        s.open_room(&room, 10).unwrap();
        let gap = [Append {
            room: room.clone(),
            message: msg(2),
        }];
        assert!(s.append(&gap).is_err());
    }
}
