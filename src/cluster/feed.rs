//! The live feed: one pub/sub connection of this node, listening to the
//! live channels of the rooms its shards have loaded, and routing what
//! comes to the shard that owns each room.
//!
//! Pub/sub is at most once. The feed's part in "never a silent gap":
//! a room is reported `Subscribed` only once Redis confirmed the
//! subscription (everything published later reaches us), and again after
//! every reconnection, when every room is subscribed anew; the shard then
//! fills from the log whatever came before. If the feed itself falls
//! behind (its queue from the client overflows), every room is reported
//! again the same way. A room's presence snapshot is read right after each
//! (re)subscription, for the same reason.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use fred::prelude::*;
use parking_lot::Mutex;
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::mpsc;

use super::{Cluster, Event, FeedRequest};
use crate::protocol::{now_ms, RoomName};
use crate::rooms::{RemoteUpdate, RoomRelay};
use crate::store::redis::{decode_live, keys, Live};

/// How long a failed subscription waits before it is tried again.
const RETRY: Duration = Duration::from_millis(250);

pub async fn run(cluster: Arc<Cluster>, mut requests: mpsc::UnboundedReceiver<FeedRequest>) {
    let log = cluster.log.clone();
    let client = log.client().clone_new();
    let mut messages = client.message_rx();
    let mut reconnects = client.reconnect_rx();
    // The first connection (Redis answered the log a moment ago; if it is
    // away now, keep trying). Rooms asked for meanwhile wait in `wanted`.
    loop {
        let init = tokio::select! {
            _ = cluster.stop.cancelled() => return,
            init = client.init() => init,
        };
        match init {
            Ok(_) => break,
            Err(e) => {
                tracing::warn!(cause = %e, "the live feed cannot reach Redis yet");
                tokio::time::sleep(RETRY).await;
            }
        }
    }
    let wanted: Arc<Mutex<BTreeSet<RoomName>>> = Arc::default();
    let (sync_tx, sync_rx) = mpsc::unbounded_channel();
    tokio::spawn(sync(
        cluster.clone(),
        client.clone(),
        wanted.clone(),
        sync_rx,
    ));
    loop {
        tokio::select! {
            _ = cluster.stop.cancelled() => break,
            req = requests.recv() => match req {
                Some(FeedRequest::Subscribe(room)) => {
                    wanted.lock().insert(room.clone());
                    let _ = sync_tx.send(room);
                }
                Some(FeedRequest::Unsubscribe(room)) => {
                    wanted.lock().remove(&room);
                    let _ = sync_tx.send(room);
                }
                None => break,
            },
            m = messages.recv() => match m {
                Ok(m) => route(&cluster, m),
                Err(RecvError::Lagged(n)) => {
                    tracing::warn!(lost = n, "the live feed fell behind; catching every room up from the log");
                    for room in wanted.lock().iter() {
                        let _ = sync_tx.send(room.clone());
                    }
                }
                Err(RecvError::Closed) => break,
            },
            r = reconnects.recv() => {
                if r.is_ok() {
                    tracing::info!("the live feed reconnected to Redis; subscribing again");
                    for room in wanted.lock().iter() {
                        let _ = sync_tx.send(room.clone());
                    }
                }
            }
        }
    }
    let _ = client.quit().await;
}

/// Brings rooms' subscriptions in line with `wanted`, one round at a time:
/// a room is in a round at most once, so its subscribe and unsubscribe
/// calls happen in the order they were asked for, and the last one wins.
/// A subscription that fails is tried again in a later round.
async fn sync(
    cluster: Arc<Cluster>,
    client: Client,
    wanted: Arc<Mutex<BTreeSet<RoomName>>>,
    mut rooms: mpsc::UnboundedReceiver<RoomName>,
) {
    let mut retry: BTreeSet<RoomName> = BTreeSet::new();
    loop {
        let mut round: BTreeSet<RoomName> = std::mem::take(&mut retry);
        if round.is_empty() {
            tokio::select! {
                _ = cluster.stop.cancelled() => return,
                room = rooms.recv() => match room {
                    Some(room) => {
                        round.insert(room);
                    }
                    None => return,
                },
            }
        } else {
            tokio::time::sleep(RETRY).await;
        }
        while let Ok(room) = rooms.try_recv() {
            round.insert(room);
        }
        let calls = round.into_iter().map(|room| {
            let want = wanted.lock().contains(&room);
            let cluster = &cluster;
            let client = &client;
            async move {
                let ok = if want {
                    subscribe(cluster, client, &room).await
                } else {
                    unsubscribe(cluster, client, &room).await;
                    true
                };
                (room, ok)
            }
        });
        for (room, ok) in futures_util::future::join_all(calls).await {
            if !ok && wanted.lock().contains(&room) {
                retry.insert(room);
            }
        }
    }
}

/// Subscribes to a room's live channel; once Redis confirmed it, reads the
/// room's presence and tells its shard.
async fn subscribe(cluster: &Cluster, client: &Client, room: &RoomName) -> bool {
    let log = &cluster.log;
    let channel = keys::channel(room);
    let done = if log.sharded() {
        log.call("subscribe", client.ssubscribe(channel.as_str()))
            .await
    } else {
        log.call("subscribe", client.subscribe(channel.as_str()))
            .await
    };
    if done.is_err() {
        return false;
    }
    let presence = keys::RoomKeys::new(room).presence;
    let fields: Result<Vec<(String, String)>, _> = log
        .call(
            "presence",
            log.client().hgetall::<Vec<(String, String)>, _>(presence),
        )
        .await;
    if let Ok(fields) = fields {
        let update = RemoteUpdate::Snapshot(log.remote_presence(fields));
        cluster.send_control(
            room,
            Event::Presence {
                room: room.clone(),
                update,
            },
        );
    }
    cluster.send_control(room, Event::Subscribed(room.clone()));
    true
}

async fn unsubscribe(cluster: &Cluster, client: &Client, room: &RoomName) {
    let log = &cluster.log;
    let channel = keys::channel(room);
    let _ = if log.sharded() {
        log.call("unsubscribe", client.sunsubscribe(channel.as_str()))
            .await
    } else {
        log.call("unsubscribe", client.unsubscribe(channel.as_str()))
            .await
    };
}

/// One message from a live channel, to the shard that owns its room.
fn route(cluster: &Cluster, m: fred::types::Message) {
    let Some(room) = keys::room_of_channel(&m.channel) else {
        return;
    };
    let Some(payload) = m.value.as_bytes() else {
        return;
    };
    match decode_live(payload) {
        Ok(Live::Messages { epoch, messages }) => {
            let metrics = cluster.log.metrics();
            metrics.live_messages.inc_by(messages.len() as u64);
            if let Some(first) = messages.first() {
                let lag = now_ms().saturating_sub(first.timestamp);
                metrics.live_lag_seconds.observe(lag as f64 / 1000.0);
            }
            cluster.send_live(
                &room,
                Event::Live {
                    room: room.clone(),
                    epoch,
                    messages,
                },
            );
        }
        Ok(Live::Presence { node, .. }) if node == cluster.node => {}
        Ok(Live::Presence {
            node,
            version,
            joins,
            leaves,
        }) => {
            let update = RemoteUpdate::Diff {
                node,
                version,
                joins,
                leaves,
            };
            cluster.send_live(
                &room,
                Event::Presence {
                    room: room.clone(),
                    update,
                },
            );
        }
        Ok(Live::Relay { node, .. }) if node == cluster.node => {}
        Ok(Live::Relay { user, relay, .. }) => {
            cluster.send_live(
                &room,
                Event::Relay(RoomRelay {
                    room: room.clone(),
                    user,
                    relay,
                }),
            );
        }
        Err(e) => tracing::warn!(room = %room, cause = %e, "an unreadable live message"),
    }
}
