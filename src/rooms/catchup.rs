//! Catching a joining member up (PROTOCOL.md §4): what a join reads from the
//! log before it goes live, and how a read becomes frames.
//!
//! The hand-off, in the room core: a catching-up member is not sent live
//! messages. It is owed `next ..`; a read brings `next ..= upto` (at most a
//! chunk), the core pushes it and moves `next` on, and once `next` passes
//! the room's committed sequence the member is live — all on the shard's one
//! thread, so no message can fall between the last read and the first live
//! one, or come twice. Reads wait for room in the outbox before they read,
//! so the client's pace sets the replay's (nothing is held in memory for it).

use std::sync::Arc;

use bytes::Bytes;

use super::member::{JoinId, Peer};
use crate::message::StoredMessage;
use crate::protocol::server::{self as msg, MessageData};
use crate::protocol::RoomName;
use crate::store::{ReadLimit, Store, StoreError};

#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Recent messages in the `history` frame of a plain `join`.
    pub history_on_join: u64,
    /// Most messages replayed for a `join` with `since`.
    pub replay_limit: u64,
}

/// What a join is sent before it goes live.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Plan {
    /// Nothing to read: live at once.
    Live,
    /// One `history` frame with `after+1 ..= upto` (may be empty).
    History { after: u64, upto: u64 },
    /// `message` frames for `after+1 ..= upto`.
    Replay { after: u64, upto: u64 },
}

/// Plans a join and whether it `recovered` the client's position, as far as
/// the room's position tells; a read that finds the start retained away
/// clears `recovered` later. `last` is the room's newest committed sequence.
pub fn plan(
    since: Option<u64>,
    client_epoch: Option<&str>,
    room_epoch: &str,
    last: u64,
    limits: Limits,
) -> (Plan, bool) {
    let Some(since) = since else {
        if limits.history_on_join == 0 {
            return (Plan::Live, true);
        }
        let after = last - limits.history_on_join.min(last);
        return (Plan::History { after, upto: last }, true);
    };
    let mut recovered = true;
    let mut after = since;
    // A position in a log this server no longer has: start over at 1.
    if since > last || client_epoch.is_some_and(|e| e != room_epoch) {
        recovered = false;
        after = 0;
    }
    if last - after > limits.replay_limit {
        recovered = false;
        after = last - limits.replay_limit;
    }
    if after == last {
        (Plan::Live, recovered)
    } else {
        (Plan::Replay { after, upto: last }, recovered)
    }
}

/// A read of the log for one catching-up member; the driver performs it off
/// the shard and hands the `Chunk` back with the same `join`.
pub struct ReadRequest {
    pub room: RoomName,
    pub epoch: Arc<str>,
    pub peer: Arc<Peer>,
    pub join: JoinId,
    /// A `history` frame instead of `message` frames.
    pub history: bool,
    pub after: u64,
    pub upto: u64,
    /// Most messages and (encoded) bytes in the chunk: a fraction of the
    /// outbox bounds, so the chunk fits once the outbox has drained to half.
    pub max_messages: usize,
    pub max_bytes: usize,
}

impl ReadRequest {
    /// The outbox level to wait for before reading.
    pub fn wait_for(&self) -> (usize, usize) {
        (
            self.peer.outbox.max_frames() / 2,
            self.peer.outbox.max_bytes() / 2,
        )
    }

    /// Performs the read against the log (blocking: the driver runs it off
    /// the shard) and makes the chunk.
    pub fn read(&self, store: &dyn Store) -> Result<Chunk, StoreError> {
        let limit = ReadLimit {
            messages: self.max_messages,
            bytes: self.max_bytes,
        };
        if !self.history {
            let messages = store.read(&self.room, self.after, self.upto, limit)?;
            return Ok(self.chunk(&messages, false));
        }
        // One message before the range tells whether older ones exist.
        let extra = usize::from(self.after > 0);
        let limit = ReadLimit {
            messages: limit.messages + extra,
            ..limit
        };
        let mut messages = store.read(&self.room, self.after - extra as u64, self.upto, limit)?;
        let more = messages.first().is_some_and(|m| m.sequence <= self.after);
        if more {
            messages.remove(0);
        }
        Ok(self.chunk(&messages, more))
    }

    /// Turns what the log returned into frames. `messages` are those of
    /// `after+1 ..= upto`, oldest first, as many as the log gave; `more` says
    /// (for history) that older messages exist.
    pub fn chunk(&self, messages: &[StoredMessage], more: bool) -> Chunk {
        let first = messages.first().map(|m| m.sequence);
        if self.history {
            let mut n = messages.len();
            loop {
                let frame = msg::history(
                    self.peer.format,
                    self.room.as_str(),
                    &self.epoch,
                    &messages[..n],
                    more,
                );
                if frame.len() <= self.max_bytes || n <= 1 {
                    let last = if n == messages.len() {
                        self.upto
                    } else {
                        messages[n - 1].sequence
                    };
                    return Chunk {
                        frames: vec![frame],
                        first,
                        last,
                    };
                }
                n /= 2;
            }
        }
        let mut frames = Vec::with_capacity(messages.len().min(self.max_messages));
        let mut bytes = 0;
        let mut last = self.upto;
        for m in messages {
            if frames.len() >= self.max_messages.max(1) {
                break;
            }
            let data = MessageData::of(self.room.as_str(), &self.epoch, m);
            let f = msg::message(self.peer.format, &data);
            // Always at least one, so a replay moves on whatever the bounds.
            if !frames.is_empty() && bytes + f.len() > self.max_bytes {
                break;
            }
            bytes += f.len();
            frames.push(f);
            last = m.sequence;
        }
        Chunk {
            frames,
            first,
            last,
        }
    }
}

/// What one read brought a catching-up member.
pub struct Chunk {
    pub frames: Vec<Bytes>,
    /// The first sequence the log had in the range (None: none).
    pub first: Option<u64>,
    /// The member is served through this sequence once the frames are in:
    /// the last one read, or `upto` when the log had nothing in the range.
    pub last: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: Limits = Limits {
        history_on_join: 50,
        replay_limit: 100,
    };

    fn replay(since: u64, epoch: Option<&str>, last: u64) -> (Plan, bool) {
        plan(Some(since), epoch, "e1", last, LIMITS)
    }

    #[test]
    fn plain_join_sends_recent_history() {
        assert_eq!(
            plan(None, None, "e1", 500, LIMITS),
            (
                Plan::History {
                    after: 450,
                    upto: 500
                },
                true
            )
        );
        assert_eq!(
            plan(None, None, "e1", 20, LIMITS).0,
            Plan::History { after: 0, upto: 20 }
        );
        assert_eq!(
            plan(None, None, "e1", 0, LIMITS).0,
            Plan::History { after: 0, upto: 0 }
        );
        let none = Limits {
            history_on_join: 0,
            ..LIMITS
        };
        assert_eq!(plan(None, None, "e1", 500, none), (Plan::Live, true));
    }

    #[test]
    fn since_within_reach_replays_exactly() {
        assert_eq!(
            replay(40, Some("e1"), 90),
            (
                Plan::Replay {
                    after: 40,
                    upto: 90
                },
                true
            )
        );
        assert_eq!(replay(90, None, 90), (Plan::Live, true));
    }

    #[test]
    fn a_foreign_log_restarts_at_one() {
        assert_eq!(
            replay(95, None, 90),
            (Plan::Replay { after: 0, upto: 90 }, false)
        );
        assert_eq!(
            replay(40, Some("old"), 90),
            (Plan::Replay { after: 0, upto: 90 }, false)
        );
        assert_eq!(replay(3, Some("old"), 0), (Plan::Live, false));
    }

    #[test]
    fn too_far_behind_gets_the_newest_replay_limit() {
        assert_eq!(
            replay(10, None, 500),
            (
                Plan::Replay {
                    after: 400,
                    upto: 500
                },
                false
            )
        );
    }
}
