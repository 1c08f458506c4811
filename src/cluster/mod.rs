//! Cluster mode: what connects this node's shards to the other parlor
//! nodes through Redis, besides the log itself (`store::redis`):
//!
//! - `feed`: one pub/sub connection per node, listening to the live
//!   channels of the rooms this node has loaded (sharded pub/sub where the
//!   server has it), routing what comes to the shard that owns the room;
//!   after every reconnection it subscribes again and tells the shards, so
//!   they fill from the log what the channel missed.
//! - `presence`: this node's users per room, written to Redis and
//!   published as they change, and the events its users' typing, read
//!   markers and statuses relay to the other nodes; a heartbeat that keeps this node in the set
//!   of live nodes and notices the nodes that died (their users leave).
//!
//! The shards reach these through unbounded request channels (one entry
//! per room load, unload or presence window: bounded by the rooms loaded);
//! live traffic comes back through a bounded queue per shard — when it is
//! full the shard is told to catch up from the log instead (`overflow`).

mod feed;
mod presence;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::message::StoredMessage;
use crate::protocol::RoomName;
use crate::rooms::{PresenceChange, RemoteUpdate, RoomRelay};
use crate::shard::shard_of;
use crate::store::RedisLog;

/// Live events queued per shard before the shard is told to catch up from
/// the log instead. Each is one batch of a room (≤ a batch's messages) or a
/// presence change.
const LIVE_QUEUE: usize = 4096;

/// What the cluster tells a shard.
pub enum Event {
    /// New messages of a room, from its live channel.
    Live {
        room: RoomName,
        epoch: String,
        messages: Vec<StoredMessage>,
    },
    /// Another node's users in a room changed, or their snapshot.
    Presence {
        room: RoomName,
        update: RemoteUpdate,
    },
    /// The room's live channel listens (again): fill what it missed.
    Subscribed(RoomName),
    /// A node died: its users leave every room.
    NodeGone(Arc<str>),
    /// This node was taken for dead and is back, or its presence writes
    /// failed: tell the others its users again.
    Republish,
    /// A user of another node did something its room relays.
    Relay(RoomRelay),
    /// Nothing: wakes the shard to look at its `overflow` flag.
    Wake,
}

/// What a shard tells the other nodes, in the order it happened.
pub enum Outgoing {
    Presence(PresenceChange),
    Relay(RoomRelay),
}

/// What a shard asks of the feed.
pub enum FeedRequest {
    Subscribe(RoomName),
    Unsubscribe(RoomName),
}

/// A shard's ends of the cluster's channels.
pub struct ShardLink {
    /// Live messages and presence diffs (bounded; see `overflow`).
    pub live: mpsc::Receiver<Event>,
    /// Subscriptions, snapshots, deaths (unbounded: one per room event).
    pub control: mpsc::UnboundedReceiver<Event>,
    /// Set when a live event for this shard was dropped: the shard must
    /// catch every room up from the log.
    pub overflow: Arc<AtomicBool>,
    pub feed: mpsc::UnboundedSender<FeedRequest>,
    pub presence: mpsc::UnboundedSender<Outgoing>,
}

struct ShardEnds {
    live: mpsc::Sender<Event>,
    control: mpsc::UnboundedSender<Event>,
    overflow: Arc<AtomicBool>,
}

/// The cluster of one node.
pub struct Cluster {
    /// This node's id in the cluster (random per process).
    pub node: Arc<str>,
    log: Arc<RedisLog>,
    heartbeat: std::time::Duration,
    shards: Vec<ShardEnds>,
    /// Taken by each shard at its start.
    links: Mutex<Vec<Option<ShardLink>>>,
    /// Taken when the tasks start.
    feed_rx: Mutex<Option<mpsc::UnboundedReceiver<FeedRequest>>>,
    presence_rx: Mutex<Option<mpsc::UnboundedReceiver<Outgoing>>>,
    stop: CancellationToken,
}

/// A fresh node id.
pub fn new_node_id() -> String {
    format!("{:012x}", rand::random::<u64>() >> 16)
}

impl Cluster {
    pub fn new(log: Arc<RedisLog>, shards: usize, heartbeat: std::time::Duration) -> Arc<Cluster> {
        let node: Arc<str> = log.settings().node.as_str().into();
        let (feed_tx, feed_rx) = mpsc::unbounded_channel();
        let (presence_tx, presence_rx) = mpsc::unbounded_channel();
        let mut ends = Vec::with_capacity(shards);
        let mut links = Vec::with_capacity(shards);
        for _ in 0..shards {
            let (live_tx, live_rx) = mpsc::channel(LIVE_QUEUE);
            let (control_tx, control_rx) = mpsc::unbounded_channel();
            let overflow = Arc::new(AtomicBool::new(false));
            ends.push(ShardEnds {
                live: live_tx,
                control: control_tx,
                overflow: overflow.clone(),
            });
            links.push(Some(ShardLink {
                live: live_rx,
                control: control_rx,
                overflow,
                feed: feed_tx.clone(),
                presence: presence_tx.clone(),
            }));
        }
        Arc::new(Cluster {
            node,
            log,
            heartbeat,
            shards: ends,
            links: Mutex::new(links),
            feed_rx: Mutex::new(Some(feed_rx)),
            presence_rx: Mutex::new(Some(presence_rx)),
            stop: CancellationToken::new(),
        })
    }

    /// Shard `i`'s ends of the channels (once).
    pub fn link(&self, i: usize) -> Option<ShardLink> {
        self.links.lock().get_mut(i).and_then(Option::take)
    }

    /// Starts the feed, the presence writer and the heartbeat on the Redis
    /// runtime.
    pub fn start(self: &Arc<Self>) {
        let handle = self.log.handle().clone();
        if let Some(rx) = self.feed_rx.lock().take() {
            handle.spawn(feed::run(self.clone(), rx));
        }
        if let Some(rx) = self.presence_rx.lock().take() {
            handle.spawn(presence::write(self.clone(), rx));
        }
        handle.spawn(presence::heartbeat(self.clone()));
    }

    /// Stops the tasks and leaves the set of live nodes, so the others see
    /// this node's users leave at once. Blocks briefly: call it off the
    /// async runtime.
    pub fn stop(&self) {
        self.stop.cancel();
        let log = self.log.clone();
        let node = self.node.clone();
        let _ = self
            .log
            .handle()
            .block_on(async move { presence::leave(&log, &node).await });
    }

    fn shard_of(&self, room: &RoomName) -> usize {
        shard_of(room, self.shards.len())
    }

    /// Queues a live event for the room's shard; a full queue makes the
    /// shard catch up from the log instead.
    fn send_live(&self, room: &RoomName, event: Event) {
        let ends = &self.shards[self.shard_of(room)];
        if ends.live.try_send(event).is_err() {
            ends.overflow.store(true, Ordering::Release);
            // Wake the shard so it sees the flag.
            let _ = ends.control.send(Event::Wake);
        }
    }

    fn send_control(&self, room: &RoomName, event: Event) {
        let _ = self.shards[self.shard_of(room)].control.send(event);
    }

    fn broadcast(&self, event: impl Fn() -> Event) {
        for ends in &self.shards {
            let _ = ends.control.send(event());
        }
    }
}
