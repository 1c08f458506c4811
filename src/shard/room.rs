//! One room as its shard owns it: sequencer, members, presence, dedup window,
//! and the fan-out of committed messages to members' outboxes.
//!
//! Sequencer invariant: `committed ≤ assigned`; numbers in
//! `committed+1 ..= assigned` belong to the batch being committed. A failed
//! commit sets `assigned` back to `committed`, so no number is ever shown
//! twice or skipped; a successful one moves `committed` up to them.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use rayon::prelude::*;

use super::dedup::Dedup;
use super::presence::Presence;
use crate::error::close;
use crate::protocol::{Format, RoomName};
use crate::session::{PushError, SessionHandle};
use crate::store::RoomLog;

/// Rooms with at least this many members are fanned out on the pool, in
/// chunks of `FANOUT_CHUNK`, so every core delivers a big room's traffic.
pub const PARALLEL_FANOUT_MIN: usize = 1024;
const FANOUT_CHUNK: usize = 512;

/// Frames of one delivery, one list per format (`Format::index`).
pub type FramesByFormat = [Vec<Bytes>; 2];

pub struct Member {
    pub session: Arc<SessionHandle>,
    /// While the session replays from the store: live frames held back, in
    /// order, released when it has caught up.
    pub held: Option<Held>,
    /// Joined since the last presence flush: gets no diff about itself.
    pub fresh: bool,
}

#[derive(Default)]
pub struct Held {
    frames: Vec<Bytes>,
    bytes: usize,
}

/// The outbox bounds, applied to held frames too.
#[derive(Clone, Copy)]
pub struct Bounds {
    pub frames: usize,
    pub bytes: usize,
}

impl Member {
    /// Delivers frames to this member; false when it must be removed (its
    /// session was cut as a slow consumer, or is closing).
    pub fn deliver(&mut self, frames: &[Bytes], bounds: Bounds) -> bool {
        let outbox = &self.session.outbox;
        if let Some(held) = &mut self.held {
            for f in frames {
                held.bytes += f.len();
                held.frames.push(f.clone());
            }
            if held.frames.len() > bounds.frames || held.bytes > bounds.bytes {
                outbox.cut(close::SLOW_CONSUMER);
                return false;
            }
            return !outbox.is_cut();
        }
        for f in frames {
            match outbox.try_push(f.clone()) {
                Ok(()) => {}
                Err(PushError::Full) => {
                    outbox.cut(close::SLOW_CONSUMER);
                    return false;
                }
                Err(PushError::Closed) => return false,
            }
        }
        true
    }

    /// Ends the hold: what was held goes to the outbox, in order.
    pub fn release(&mut self, bounds: Bounds) -> bool {
        match self.held.take() {
            Some(held) => self.deliver(&held.frames, bounds),
            None => true,
        }
    }
}

pub struct Room {
    pub name: RoomName,
    pub epoch: String,
    /// Newest sequence stored and broadcast.
    pub committed: u64,
    /// Newest sequence handed out.
    pub assigned: u64,
    members: Vec<Member>,
    /// client_id → index in `members`.
    index: HashMap<u64, usize>,
    /// Members per format, so frames are encoded only for formats in use.
    formats: [usize; 2],
    pub presence: Presence,
    pub dedup: Dedup,
    /// When the last member left (rooms idle long enough are unloaded).
    pub idle_since: Option<Instant>,
}

impl Room {
    pub fn new(name: RoomName, log: RoomLog, dedup_window: usize) -> Room {
        let mut dedup = Dedup::new(dedup_window);
        for (user, id, seq) in log.recent_ids {
            dedup.insert(user, id, seq);
        }
        Room {
            name,
            epoch: log.epoch,
            committed: log.last,
            assigned: log.last,
            members: Vec::new(),
            index: HashMap::new(),
            formats: [0, 0],
            presence: Presence::default(),
            dedup,
            idle_since: Some(Instant::now()),
        }
    }

    pub fn next_sequence(&mut self) -> u64 {
        self.assigned += 1;
        self.assigned
    }

    pub fn is_member(&self, client_id: u64) -> bool {
        self.index.contains_key(&client_id)
    }

    pub fn member_mut(&mut self, client_id: u64) -> Option<&mut Member> {
        let i = *self.index.get(&client_id)?;
        Some(&mut self.members[i])
    }

    pub fn members_mut(&mut self) -> &mut [Member] {
        &mut self.members
    }

    pub fn connections(&self) -> usize {
        self.members.len()
    }

    pub fn uses(&self, format: Format) -> bool {
        self.formats[format.index()] > 0
    }

    /// Adds a member; returns whether its user came online.
    pub fn add(&mut self, member: Member, now_ms: u64) -> bool {
        let id = member.session.client_id;
        self.formats[member.session.format.index()] += 1;
        let came_online = self.presence.add(&member.session.user, now_ms);
        self.index.insert(id, self.members.len());
        self.members.push(member);
        self.idle_since = None;
        came_online
    }

    /// Removes a member; returns it if it was one.
    pub fn remove(&mut self, client_id: u64) -> Option<Member> {
        let i = self.index.remove(&client_id)?;
        let member = self.members.swap_remove(i);
        if let Some(moved) = self.members.get(i) {
            self.index.insert(moved.session.client_id, i);
        }
        self.formats[member.session.format.index()] -= 1;
        self.presence.remove(&member.session.user);
        if self.members.is_empty() {
            self.idle_since = Some(Instant::now());
        }
        Some(member)
    }

    /// Delivers the frames to every member (or, with `skip`, every member
    /// `skip` returns false for); members that cannot take them are removed.
    /// Returns (deliveries, members removed).
    pub fn fan_out(
        &mut self,
        frames: &FramesByFormat,
        bounds: Bounds,
        pool: Option<&rayon::ThreadPool>,
    ) -> (u64, usize) {
        let deliver = |m: &mut Member| m.deliver(&frames[m.session.format.index()], bounds);
        let gone: Vec<usize> = match pool {
            Some(pool) if self.members.len() >= PARALLEL_FANOUT_MIN => pool.install(|| {
                self.members
                    .par_chunks_mut(FANOUT_CHUNK)
                    .enumerate()
                    .map(|(c, chunk)| {
                        let mut gone = Vec::new();
                        for (i, m) in chunk.iter_mut().enumerate() {
                            if !deliver(m) {
                                gone.push(c * FANOUT_CHUNK + i);
                            }
                        }
                        gone
                    })
                    .reduce(Vec::new, |mut a, mut b| {
                        a.append(&mut b);
                        a
                    })
            }),
            _ => {
                let mut gone = Vec::new();
                for (i, m) in self.members.iter_mut().enumerate() {
                    if !deliver(m) {
                        gone.push(i);
                    }
                }
                gone
            }
        };
        let removed = self.remove_at(gone);
        let delivered = self
            .members
            .iter()
            .map(|m| frames[m.session.format.index()].len() as u64)
            .sum::<u64>();
        (delivered, removed)
    }

    fn remove_at(&mut self, mut positions: Vec<usize>) -> usize {
        positions.sort_unstable();
        let ids: Vec<u64> = positions
            .iter()
            .map(|&i| self.members[i].session.client_id)
            .collect();
        for id in &ids {
            self.remove(*id);
        }
        ids.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::session::Outbox;

    fn session(id: u64, user: &str, frames: usize) -> Arc<SessionHandle> {
        let (outbox, rx) = Outbox::new(frames, 1 << 20);
        std::mem::forget(rx);
        Arc::new(SessionHandle {
            client_id: id,
            user: user.into(),
            format: Format::Json,
            outbox,
            writer_done: Default::default(),
        })
    }

    fn room() -> Room {
        let log = RoomLog {
            epoch: "e".into(),
            last: 5,
            recent_ids: vec![("u".into(), "x".into(), 4)],
        };
        Room::new(RoomName::parse("r").unwrap(), log, 10)
    }

    const BOUNDS: Bounds = Bounds {
        frames: 4,
        bytes: 1 << 20,
    };

    #[test]
    fn resumes_sequence_and_dedup_from_the_log() {
        let mut r = room();
        assert_eq!(r.next_sequence(), 6);
        assert_eq!(r.dedup.get(&"u".into(), "x"), Some(4));
    }

    #[test]
    fn full_outbox_is_cut_and_removed_others_continue() {
        let mut r = room();
        let slow = session(1, "a", 2);
        let fast = session(2, "b", 100);
        for s in [&slow, &fast] {
            r.add(
                Member {
                    session: s.clone(),
                    held: None,
                    fresh: false,
                },
                0,
            );
        }
        let frames: FramesByFormat = [vec![Bytes::from_static(b"x"); 3], vec![]];
        let (_, removed) = r.fan_out(&frames, BOUNDS, None);
        assert_eq!(removed, 1);
        assert_eq!(slow.outbox.cut_code(), close::SLOW_CONSUMER);
        assert!(r.is_member(2) && !r.is_member(1));
        assert_eq!(fast.outbox.depth(), 3);
        assert_eq!(r.presence.count(), 1);
    }

    #[test]
    fn held_frames_are_released_in_order_and_bounded() {
        let mut r = room();
        let s = session(1, "a", 100);
        r.add(
            Member {
                session: s.clone(),
                held: Some(Held::default()),
                fresh: true,
            },
            0,
        );
        let frames: FramesByFormat = [
            vec![Bytes::from_static(b"1"), Bytes::from_static(b"2")],
            vec![],
        ];
        r.fan_out(&frames, BOUNDS, None);
        assert_eq!(s.outbox.depth(), 0);
        assert!(r.member_mut(1).unwrap().release(BOUNDS));
        assert_eq!(s.outbox.depth(), 2);
        r.member_mut(1).unwrap().held = Some(Held::default());
        let many: FramesByFormat = [vec![Bytes::from_static(b"x"); 5], vec![]];
        r.fan_out(&many, BOUNDS, None);
        assert!(!r.is_member(1));
        assert_eq!(s.outbox.cut_code(), close::SLOW_CONSUMER);
    }
}
