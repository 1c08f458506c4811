//! Who is in a room: each member is one session's `Peer` (where its frames
//! go) and the state of its subscription: still catching up from the log,
//! or live.
//!
//! Invariant: a member is sent a room's live messages only while `Live`;
//! while catching up, what it is owed (`next ..`) comes from the log, so its
//! outbox is its only queue and nothing is held back twice.

use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::Mutex;

use super::account::Account;
use super::Millis;
use crate::outbox::Outbox;
use crate::protocol::Format;

/// What the rooms know of a session: who it is and where its frames go.
pub struct Peer {
    /// Process-unique id, the key of a member in a room.
    pub client_id: u64,
    pub user: Arc<str>,
    pub format: Format,
    pub outbox: Outbox,
    /// How many rooms it may still create (a message to a room the log
    /// does not have creates it, durably).
    pub new_rooms: Budget,
    /// What the user's sessions share (their status).
    pub account: Arc<Account>,
    /// Sent presence, typing and read events (an SSE stream without
    /// `presence=1` gets messages only).
    pub presence_events: bool,
}

/// A token bucket over the core's clock, shared by the shards a session
/// talks to (one short lock per use, which is rare).
pub struct Budget {
    /// (tokens per ms, burst); `None`: unlimited.
    rate: Option<(f64, f64)>,
    /// (tokens, when last refilled).
    state: Mutex<(f64, Millis)>,
}

impl Budget {
    pub fn per_minute(rate: f64, burst: f64) -> Budget {
        let burst = burst.max(1.0);
        Budget {
            rate: Some((rate.max(0.0) / 60_000.0, burst)),
            state: Mutex::new((burst, 0)),
        }
    }

    pub fn unlimited() -> Budget {
        Budget {
            rate: None,
            state: Mutex::new((0.0, 0)),
        }
    }

    /// Takes one token if there is one.
    pub fn take(&self, now: Millis) -> bool {
        let Some((per_ms, burst)) = self.rate else {
            return true;
        };
        let mut s = self.state.lock();
        let elapsed = now.saturating_sub(s.1) as f64;
        s.1 = s.1.max(now);
        s.0 = (s.0 + elapsed * per_ms).min(burst);
        if s.0 >= 1.0 {
            s.0 -= 1.0;
            true
        } else {
            false
        }
    }
}

impl Peer {
    pub fn new(client_id: u64, user: Arc<str>, format: Format, outbox: Outbox) -> Peer {
        Peer {
            client_id,
            user,
            format,
            outbox,
            new_rooms: Budget::unlimited(),
            account: Arc::default(),
            presence_events: true,
        }
    }

    /// The `clientId` shown on the wire.
    pub fn client_name(&self) -> String {
        format!("c{:x}", self.client_id)
    }
}

/// Names one `join` of one session, so that what a catch-up read brings
/// back is applied only to the join that asked for it (a leave and a new
/// join in between make it stale).
pub type JoinId = u64;

pub enum MemberState {
    Live,
    CatchingUp(CatchUp),
}

/// A member being caught up from the log before it goes live.
pub struct CatchUp {
    /// The first sequence it is still owed.
    pub next: u64,
    /// The `joined` frame, until the first read has told whether the
    /// client's position was recovered; `None` once sent.
    pub joined: Option<PendingJoined>,
    /// What the first read is for (the `history` frame of a plain join, or
    /// replayed `message` frames); later reads always replay.
    pub history: bool,
}

/// The `joined` frame of a catching-up member, sent with its first chunk.
pub struct PendingJoined {
    /// The room's newest sequence when the member joined.
    pub last: u64,
    /// As planned; a read that starts past `next` (retention) clears it.
    pub recovered: bool,
}

pub struct Member {
    pub peer: Arc<Peer>,
    pub join: JoinId,
    pub state: MemberState,
    /// Joined since the last presence flush: gets no diff about itself.
    pub fresh: bool,
}

impl Member {
    pub fn is_live(&self) -> bool {
        matches!(self.state, MemberState::Live)
    }

    /// Whether it has been sent `joined` (and so may be sent presence diffs).
    pub fn announced(&self) -> bool {
        match &self.state {
            MemberState::Live => true,
            MemberState::CatchingUp(c) => c.joined.is_none(),
        }
    }
}

/// A room's members, in a vector for fast fan-out, indexed by client id.
#[derive(Default)]
pub struct Members {
    list: Vec<Member>,
    /// client_id → index in `list`.
    index: HashMap<u64, usize>,
    /// Members per format, so frames are encoded only for formats in use.
    formats: [usize; Format::COUNT],
}

impl Members {
    pub fn len(&self) -> usize {
        self.list.len()
    }

    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    pub fn contains(&self, client_id: u64) -> bool {
        self.index.contains_key(&client_id)
    }

    pub fn get_mut(&mut self, client_id: u64) -> Option<&mut Member> {
        let i = *self.index.get(&client_id)?;
        Some(&mut self.list[i])
    }

    pub fn uses(&self, format: Format) -> bool {
        self.formats[format.index()] > 0
    }

    pub fn iter(&self) -> impl Iterator<Item = &Member> {
        self.list.iter()
    }

    pub fn as_mut_slice(&mut self) -> &mut [Member] {
        &mut self.list
    }

    pub fn add(&mut self, member: Member) {
        self.formats[member.peer.format.index()] += 1;
        self.index.insert(member.peer.client_id, self.list.len());
        self.list.push(member);
    }

    pub fn remove(&mut self, client_id: u64) -> Option<Member> {
        let i = self.index.remove(&client_id)?;
        let member = self.list.swap_remove(i);
        if let Some(moved) = self.list.get(i) {
            self.index.insert(moved.peer.client_id, i);
        }
        self.formats[member.peer.format.index()] -= 1;
        Some(member)
    }

    pub fn at(&self, position: usize) -> &Member {
        &self.list[position]
    }

    /// Client ids at these positions (positions of one fan-out pass).
    pub fn ids_at(&self, positions: &[usize]) -> Vec<u64> {
        positions
            .iter()
            .map(|&i| self.list[i].peer.client_id)
            .collect()
    }
}
