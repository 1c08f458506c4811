//! Presence across nodes, and node liveness.
//!
//! - `write`: this node's users per room, as the shards report their
//!   changes (once per presence window): each change goes to the room's
//!   presence hash under this node's next version and out on the room's
//!   live channel, in one script, in the order the shards made them;
//!   relayed events (typing, read markers, statuses) go out on the room's
//!   live channel in the same order. A relayed event that fails is lost
//!   (it is ephemeral; a read marker is stored with the shard's batch).
//! - `heartbeat`: every `--cluster-heartbeat-ms` this node renews its place
//!   in the set of live nodes (deadline: 3 heartbeats, on Redis's clock)
//!   and learns which nodes are alive. A node that drops out of the set
//!   (missed 3 heartbeats: killed, cut off) is dead; its users leave every
//!   room here, and the rooms' members get `presence_diff` leaves. A node
//!   that finds itself taken for dead (it was too slow) tells its users
//!   again.

use std::collections::HashSet;
use std::sync::Arc;

use fred::prelude::*;
use tokio::sync::mpsc;

use super::{Cluster, Event, Outgoing};
use crate::rooms::{PresenceChange, RoomRelay};
use crate::store::redis::encode_relay;
use crate::store::redis::keys;
use crate::store::RedisLog;
use crate::store::StoreError;

/// Missed heartbeats after which a node is dead.
pub const HEARTBEATS_TO_DEATH: u32 = 3;

pub async fn write(cluster: Arc<Cluster>, mut changes: mpsc::UnboundedReceiver<Outgoing>) {
    let log = cluster.log.clone();
    let mut version: u64 = 0;
    let mut batch = Vec::new();
    loop {
        let first = tokio::select! {
            _ = cluster.stop.cancelled() => return,
            c = changes.recv() => match c {
                Some(c) => c,
                None => return,
            },
        };
        batch.push(first);
        while let Ok(c) = changes.try_recv() {
            batch.push(c);
        }
        // In order on one connection, all in flight at once.
        let calls = batch.drain(..).map(|out| {
            let v = match out {
                Outgoing::Presence(_) => {
                    version += 1;
                    version
                }
                Outgoing::Relay(_) => 0,
            };
            let log = &log;
            let node = &cluster.node;
            async move {
                match out {
                    Outgoing::Presence(change) => publish(log, node, v, change).await,
                    Outgoing::Relay(r) => {
                        let _ = relay(log, node, r).await;
                        Ok(())
                    }
                }
            }
        });
        let calls: Vec<_> = calls.collect();
        let failed = futures_util::future::join_all(calls)
            .await
            .into_iter()
            .any(|r| r.is_err());
        if failed {
            // The others may have missed a change: once Redis answers
            // again, every shard tells all its users anew.
            tracing::warn!("a presence change did not reach Redis; it will be told again");
            wait_for_redis(&cluster).await;
            cluster.broadcast(|| Event::Republish);
        }
    }
}

async fn publish(
    log: &RedisLog,
    node: &str,
    version: u64,
    change: PresenceChange,
) -> Result<(), StoreError> {
    let k = keys::RoomKeys::new(&change.room);
    let mut args: Vec<Value> = vec![
        node.into(),
        (version as i64).into(),
        if log.sharded() { "1" } else { "0" }.into(),
    ];
    args.extend(change.joins.iter().map(|u| Value::from(format!("+{u}"))));
    args.extend(change.leaves.iter().map(|u| Value::from(format!("-{u}"))));
    log.call(
        "presence",
        log.scripts()
            .presence
            .call::<i64>(log.client(), None, vec![k.presence, k.channel], args),
    )
    .await
    .map(|_| ())
}

/// A relayed event, on the room's live channel.
async fn relay(log: &RedisLog, node: &str, r: RoomRelay) -> Result<(), StoreError> {
    let channel = keys::channel(&r.room);
    let payload = encode_relay(node, &r.user, &r.relay);
    if log.sharded() {
        log.call(
            "relay",
            log.client().spublish::<i64, _, _>(channel, payload),
        )
        .await
    } else {
        log.call("relay", log.client().publish::<i64, _, _>(channel, payload))
            .await
    }
    .map(|_| ())
}

async fn wait_for_redis(cluster: &Cluster) {
    let log = &cluster.log;
    while !cluster.stop.is_cancelled() {
        if log
            .call("ping", log.client().ping::<()>(None))
            .await
            .is_ok()
        {
            return;
        }
        tokio::time::sleep(cluster.heartbeat).await;
    }
}

pub async fn heartbeat(cluster: Arc<Cluster>) {
    let log = cluster.log.clone();
    let lifetime = cluster.heartbeat * HEARTBEATS_TO_DEATH;
    let mut tick = tokio::time::interval(cluster.heartbeat);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The live nodes at the last heartbeat that worked (None: none yet).
    let mut alive: Option<HashSet<Arc<str>>> = None;
    // The last heartbeat failed (Redis away): the others could not renew
    // theirs either, so nobody is taken for dead on the way back.
    let mut failed = false;
    loop {
        tokio::select! {
            _ = cluster.stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let args: Vec<Value> = vec![
            cluster.node.as_ref().into(),
            (lifetime.as_millis() as i64).into(),
            "0".into(),
        ];
        let reply: Result<(Vec<String>, Vec<String>, i64), _> = log
            .call(
                "heartbeat",
                log.scripts().heartbeat.call(
                    log.client(),
                    None,
                    vec![keys::NODES.to_string()],
                    args,
                ),
            )
            .await;
        let Ok((dead, live, added)) = reply else {
            failed = true;
            continue;
        };
        let now: HashSet<Arc<str>> = live.iter().map(|n| Arc::from(n.as_str())).collect();
        log.metrics().cluster_nodes.set(now.len() as i64);
        log.set_live_nodes(now.clone());
        let recovering = std::mem::take(&mut failed);
        match &alive {
            Some(before) if !recovering => {
                let gone: Vec<Arc<str>> = before
                    .difference(&now)
                    .filter(|n| **n != cluster.node)
                    .cloned()
                    .collect();
                for node in gone {
                    tracing::warn!(node = %node, "a parlor node stopped answering; its users leave");
                    cluster.broadcast(|| Event::NodeGone(node.clone()));
                }
            }
            _ => {}
        }
        if added == 1 && alive.is_some() {
            // This node's place had lapsed (it was too slow, or Redis was
            // away): the others may have dropped its users; tell them again.
            cluster.broadcast(|| Event::Republish);
        }
        if !dead.is_empty() {
            tracing::debug!(?dead, "removed dead nodes from the node set");
        }
        alive = Some(match alive {
            // Back from an outage: the nodes known before get one more
            // heartbeat to show up; those that do not are gone then.
            Some(before) if recovering => before.union(&now).cloned().collect(),
            _ => now,
        });
    }
}

/// Leaves the set of live nodes (a clean shutdown).
pub async fn leave(log: &RedisLog, node: &str) -> Result<(), StoreError> {
    let args: Vec<Value> = vec![node.into(), 0i64.into(), "1".into()];
    log.call(
        "heartbeat",
        log.scripts().heartbeat.call::<Value>(
            log.client(),
            None,
            vec![keys::NODES.to_string()],
            args,
        ),
    )
    .await
    .map(|_| ())
}
