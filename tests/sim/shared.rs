//! The world of a seed whose log is shared (`Sequencing::Log`): another
//! node writing into the same log, and the live channel between the log
//! and this node — messages arrive late and out of order, and a
//! disconnection loses what was in flight and whatever is published until
//! the channel listens again (as Redis pub/sub does: at most once, loss only
//! across a reconnection). Subscriptions take effect late; every room is
//! resubscribed after a reconnection.

use std::collections::BTreeSet;
use std::sync::Arc;

use parlor::message::StoredMessage;
use parlor::protocol::RoomName;
use parlor::rooms::RemoteUpdate;
use parlor::store::{Append, Batch, MemoryStore, NewRoom, Store};

use super::Rng;

/// Users of the other node (never ours).
const THEIRS: [&str; 2] = ["zed", "yan"];

#[derive(Default)]
pub struct Channel {
    /// Rooms the core asked to listen to.
    pub wanted: BTreeSet<RoomName>,
    /// Rooms listening now.
    pub listening: BTreeSet<RoomName>,
    /// Published and on the way: (arrives at, room, epoch, messages).
    pub in_flight: Vec<(u64, RoomName, String, Vec<StoredMessage>)>,
    /// Presence changes of the other node on the way.
    pub presence: Vec<(u64, RoomName, RemoteUpdate)>,
    /// Disconnected until this time (then every wanted room resubscribes).
    pub down_until: Option<u64>,
    pub disconnects: u64,
    /// The other node's version counter and its users per room.
    version: u64,
    theirs: std::collections::BTreeMap<RoomName, BTreeSet<Arc<str>>>,
}

impl Channel {
    /// The log published `messages` of `room` (a batch's new ones).
    pub fn publish(
        &mut self,
        rng: &mut Rng,
        now: u64,
        room: &RoomName,
        epoch: &str,
        messages: Vec<StoredMessage>,
    ) {
        if messages.is_empty() || !self.listening.contains(room) {
            return;
        }
        let at = now + rng.below(250);
        self.in_flight
            .push((at, room.clone(), epoch.to_string(), messages));
    }

    /// The connection breaks: what is on the way may be lost, nothing
    /// is heard until it is back.
    pub fn disconnect(&mut self, rng: &mut Rng, now: u64) {
        self.disconnects += 1;
        self.listening.clear();
        self.in_flight.retain(|_| rng.chance(50));
        self.presence.retain(|_| rng.chance(50));
        self.down_until = Some(now + 50 + rng.below(500));
    }

    /// The other node appends 1–3 messages to a room (and publishes them).
    pub fn other_node_publishes(
        &mut self,
        rng: &mut Rng,
        now: u64,
        log: &MemoryStore,
        room: &RoomName,
        next_content: &mut u64,
    ) -> (String, Vec<StoredMessage>) {
        let epoch = log.load_room(room, 0).unwrap().epoch;
        let mut batch = Batch {
            new_rooms: vec![NewRoom {
                room: room.clone(),
                epoch,
            }],
            ..Batch::default()
        };
        for _ in 0..1 + rng.below(3) {
            *next_content += 1;
            let user = THEIRS[rng.below(2) as usize];
            let id = rng.chance(50).then(|| format!("o{}", rng.below(30)));
            let m = StoredMessage {
                sequence: 0,
                timestamp: now,
                user: user.into(),
                content: format!("o{next_content}"),
                client_msg_id: id,
            };
            batch.appends.push(Append::new(room.clone(), m));
        }
        log.append(&mut batch)
            .expect("the shared log takes the other node's batch");
        let epoch = batch.new_rooms[0].epoch.clone();
        let fresh = batch
            .appends
            .into_iter()
            .filter(|a| !a.duplicate)
            .map(|a| a.message)
            .collect();
        (epoch, fresh)
    }

    /// The other node's user joins or leaves a room (it tells everyone).
    pub fn other_node_presence(&mut self, rng: &mut Rng, now: u64, room: &RoomName) {
        self.version += 1;
        let user: Arc<str> = THEIRS[rng.below(2) as usize].into();
        let users = self.theirs.entry(room.clone()).or_default();
        let (joins, leaves) = if users.insert(user.clone()) {
            (vec![user], vec![])
        } else {
            users.remove(&user);
            (vec![], vec![user])
        };
        if !self.listening.contains(room) {
            return;
        }
        let update = RemoteUpdate::Diff {
            node: "other".into(),
            version: self.version,
            joins,
            leaves,
        };
        self.presence
            .push((now + rng.below(250), room.clone(), update));
    }
}
