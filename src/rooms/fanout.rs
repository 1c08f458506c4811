//! Fan-out: handing a room's committed messages to every live member.
//!
//! Each message is encoded once per format in use (by the caller) into a
//! frame that carries its WebSocket header, so delivering it to a member is
//! a reference-count increment and one short push into its outbox. A member
//! whose outbox is full is cut as a slow consumer (close 4008) and removed;
//! the shard never waits for a client.
//!
//! The pass over the members is behind `Spread`, so the driver can split a
//! big room over a thread pool while the core (and its simulation) stays on
//! one thread.

use bytes::Bytes;

use super::member::{Member, Members, Peer};
use crate::error::close;
use crate::outbox::PushError;
use crate::protocol::Format;

/// Frames of one delivery, one list per format (`Format::index`).
pub type FramesByFormat = [Vec<Bytes>; Format::COUNT];

/// Runs `deliver` on every member, possibly in parallel, and returns the
/// positions of the members it returned false for.
pub trait Spread: Send {
    fn spread(
        &self,
        members: &mut [Member],
        deliver: &(dyn Fn(&mut Member) -> bool + Sync),
    ) -> Vec<usize>;
}

/// One member after the other, on the calling thread.
pub struct Sequential;

impl Spread for Sequential {
    fn spread(
        &self,
        members: &mut [Member],
        deliver: &(dyn Fn(&mut Member) -> bool + Sync),
    ) -> Vec<usize> {
        let mut gone = Vec::new();
        for (i, m) in members.iter_mut().enumerate() {
            if !deliver(m) {
                gone.push(i);
            }
        }
        gone
    }
}

/// Pushes frames to one peer, in order; false when it can take no more (it
/// was cut as a slow consumer now, or is closing).
pub fn push_all(peer: &Peer, frames: &[Bytes]) -> bool {
    for f in frames {
        match peer.outbox.try_push(f.clone()) {
            Ok(()) => {}
            Err(PushError::Full) => {
                peer.outbox.cut(close::SLOW_CONSUMER);
                return false;
            }
            Err(PushError::Closed) => return false,
        }
    }
    true
}

/// Delivers the frames to every live member (catching-up members read the
/// same messages from the log). Returns the deliveries made and the client
/// ids of members that must be removed.
pub fn broadcast(
    members: &mut Members,
    frames: &FramesByFormat,
    spread: &dyn Spread,
) -> (u64, Vec<u64>) {
    let deliver =
        |m: &mut Member| !m.is_live() || push_all(&m.peer, &frames[m.peer.format.index()]);
    let gone = spread.spread(members.as_mut_slice(), &deliver);
    let per_member = |m: &Member| frames[m.peer.format.index()].len() as u64;
    let offered: u64 = members.iter().filter(|m| m.is_live()).map(per_member).sum();
    let refused: u64 = gone.iter().map(|&i| per_member(members.at(i))).sum();
    (offered - refused, members.ids_at(&gone))
}
