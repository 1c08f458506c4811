//! What a room relays without storing it, and what waits on it: typing
//! indicators, read-marker events, status changes and long polls.
//!
//! Typing and read events are ephemeral (no sequence, never stored or
//! replayed), go only to members that have been told they joined, and are
//! not sent at all in rooms above the presence threshold, like presence
//! diffs. A user's typing is relayed at most once per `TYPING_EVERY_MS`;
//! what comes faster is dropped silently. A read marker only moves forward,
//! and is handed to the log with the next batch (`commit`).
//!
//! When other nodes share the room's log, each typing relay, marker move
//! and status change also goes to them (`Effect::Relay`, over the room's
//! live channel), and they relay it to their members the same way; a
//! status reaches their presence, announced with their next window.

use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::oneshot;

use super::fanout::push_all;
use super::interface::{Relay, RoomRelay};
use super::member::Peer;
use super::room::Room;
use super::{Effect, Millis, Rooms};
use crate::protocol::server as msg;
use crate::protocol::{Format, RoomName, Status};
use crate::store::ReadMarker;

/// At most one typing relay per user per room in this time.
pub const TYPING_EVERY_MS: Millis = 1000;

impl Room {
    /// Pushes an event to every announced member that takes presence
    /// events, but `except` (a client id); encoded once per format in use.
    /// Returns the members that could not take it.
    fn relay(
        &mut self,
        except: Option<u64>,
        skip_user: Option<&str>,
        event: &dyn Fn(Format) -> Bytes,
    ) -> Vec<u64> {
        let mut frames: [Option<Bytes>; Format::COUNT] = Default::default();
        let mut gone = Vec::new();
        for m in self.members.iter() {
            let p = &m.peer;
            if !m.announced()
                || !p.presence_events
                || Some(p.client_id) == except
                || skip_user == Some(&*p.user)
            {
                continue;
            }
            let f = frames[p.format.index()].get_or_insert_with(|| event(p.format));
            if !push_all(p, std::slice::from_ref(f)) {
                gone.push(p.client_id);
            }
        }
        gone
    }

    /// `peer`'s user is typing: relayed to the others unless too soon.
    /// Returns None if it was not relayed, else the members that are gone.
    pub fn typing(&mut self, peer: &Peer, now: Millis) -> Option<Vec<u64>> {
        if !self.members.contains(peer.client_id) || !self.chatty() {
            return None;
        }
        if let Some(last) = self.typing.get(&peer.user) {
            if now.saturating_sub(*last) < TYPING_EVERY_MS {
                return None;
            }
        }
        self.typing.insert(peer.user.clone(), now);
        Some(self.relay_typing(&peer.user.clone()))
    }

    fn relay_typing(&mut self, user: &Arc<str>) -> Vec<u64> {
        let name = self.name.clone();
        self.relay(None, Some(user), &|format| {
            let data = msg::UserEvent {
                room: name.as_str(),
                user,
                sequence: None,
            };
            msg::encode(format, "typing", None, Some(data))
        })
    }

    fn relay_read(&mut self, except: Option<u64>, user: &Arc<str>, sequence: u64) -> Vec<u64> {
        let name = self.name.clone();
        self.relay(except, None, &|format| {
            let data = msg::UserEvent {
                room: name.as_str(),
                user,
                sequence: Some(sequence),
            };
            msg::encode(format, "read", None, Some(data))
        })
    }

    /// A user of another node is typing here (that node let it through
    /// its own limit).
    pub fn remote_typing(&mut self, user: &Arc<str>) -> Vec<u64> {
        if !self.chatty() {
            return Vec::new();
        }
        self.relay_typing(user)
    }

    /// A user of another node has read up to `sequence`: this node's copy
    /// of the marker moves forward (the log has it from that node) and its
    /// members hear of it.
    pub fn remote_read(&mut self, user: &Arc<str>, sequence: u64) -> Vec<u64> {
        let marker = self.markers.entry(user.clone()).or_insert(0);
        if sequence <= *marker {
            return Vec::new();
        }
        *marker = sequence;
        if !self.chatty() {
            return Vec::new();
        }
        self.relay_read(None, user, sequence)
    }

    /// `peer`'s user has read up to `sequence` (at most the newest stored):
    /// the marker moves forward, the other connections hear of it. Returns
    /// the marker to store, if it moved, and the members that are gone.
    pub fn mark_read(&mut self, peer: &Peer, sequence: u64) -> (Option<ReadMarker>, Vec<u64>) {
        if !self.members.contains(peer.client_id) {
            return (None, Vec::new());
        }
        let sequence = sequence.min(self.seq.committed());
        let marker = self.markers.entry(peer.user.clone()).or_insert(0);
        if sequence <= *marker {
            return (None, Vec::new());
        }
        *marker = sequence;
        let stored = ReadMarker {
            room: self.name.clone(),
            user: peer.user.clone(),
            sequence,
        };
        if !self.chatty() {
            return (Some(stored), Vec::new());
        }
        let gone = self.relay_read(Some(peer.client_id), &peer.user.clone(), sequence);
        (Some(stored), gone)
    }

    /// Answers the long polls waiting for a sequence the room now has.
    pub fn release_waiters(&mut self) {
        let last = self.seq.committed();
        if self.waiters.iter().all(|(after, _)| *after >= last) {
            return;
        }
        let (ready, waiting): (Vec<_>, Vec<_>) = std::mem::take(&mut self.waiters)
            .into_iter()
            .partition(|(after, _)| *after < last);
        self.waiters = waiting;
        for (_, tx) in ready {
            let _ = tx.send(last);
        }
    }

    /// Forgets long polls that gave up (their request timed out or closed).
    pub fn prune_waiters(&mut self) {
        self.waiters.retain(|(_, tx)| !tx.is_closed());
    }
}

impl Rooms {
    pub(super) fn typing(&mut self, room: &RoomName, peer: &Arc<Peer>, now: Millis) {
        let Some(r) = self.room_mut(room) else { return };
        let Some(gone) = r.typing(peer, now) else {
            return;
        };
        self.tell_nodes(room, &peer.user, Relay::Typing);
        for id in gone {
            self.remove_member(room, id, now);
        }
    }

    pub(super) fn mark_read(
        &mut self,
        room: &RoomName,
        peer: &Arc<Peer>,
        sequence: u64,
        now: Millis,
    ) {
        let Some(r) = self.room_mut(room) else { return };
        let (marker, gone) = r.mark_read(peer, sequence);
        if let Some(m) = marker {
            self.tell_nodes(room, &peer.user, Relay::Read(m.sequence));
            self.commits.mark(m);
        }
        for id in gone {
            self.remove_member(room, id, now);
        }
    }

    pub(super) fn status(&mut self, room: &RoomName, user: &Arc<str>, status: &Status) {
        let changed = self
            .room_mut(room)
            .is_some_and(|r| r.presence.set_status(user, status));
        if changed {
            self.tell_nodes(room, user, Relay::Status(status.clone()));
        }
    }

    /// Log mode: the other nodes relay this to their members of the room.
    fn tell_nodes(&mut self, room: &RoomName, user: &Arc<str>, relay: Relay) {
        if self.shared_log() {
            self.effects.push_back(Effect::Relay(RoomRelay {
                room: room.clone(),
                user: user.clone(),
                relay,
            }));
        }
    }

    /// What a user of another node did in a room this node has loaded.
    pub fn remote_relay(&mut self, relay: RoomRelay, now: Millis) {
        let RoomRelay { room, user, relay } = relay;
        let Some(r) = self.room_mut(&room) else {
            return;
        };
        let gone = match relay {
            Relay::Typing => r.remote_typing(&user),
            Relay::Read(sequence) => r.remote_read(&user, sequence),
            // Announced with the next presence window, like a local one.
            Relay::Status(status) => {
                r.presence.set_status(&user, &status);
                Vec::new()
            }
        };
        for id in gone {
            self.remove_member(&room, id, now);
        }
    }

    /// A long poll for `room` after `after`: answered with the room's newest
    /// sequence as soon as it is past `after` (at once if it is already).
    pub(super) fn wait(&mut self, room: &RoomName, after: u64, reply: oneshot::Sender<u64>) {
        let Some(r) = self.room_mut(room) else { return };
        let last = r.seq.committed();
        if last > after {
            let _ = reply.send(last);
        } else {
            r.waiters.push((after, reply));
        }
    }
}
