//! `RedisLog`: the log of cluster mode, shared by every parlor node through
//! Redis (one server or a Redis Cluster). It numbers messages itself
//! (`Sequencing::Log`): one script call per room per batch checks client
//! ids, assigns the next sequences, appends to the room's stream and
//! publishes the new messages on the room's live channel, atomically — so
//! two nodes never hand out one number, and a retry on another node gets
//! the original's. Layout in `keys`, scripts in `script`, formats in
//! `codec`, the `Store` calls in `seam`.
//!
//! The `Store` calls block (they run on the log writer and the blocking
//! pool, like every store's); the I/O runs on a runtime of its own
//! (`parlor-redis`), which also carries the cluster's live feed and
//! heartbeat. Every call is bounded by `--cluster-timeout-ms`.
//!
//! What an append's failure means here: Redis may or may not have run a
//! room's script when its answer is lost, so on `Err` the appends of rooms
//! whose script answered carry their sequences and the others keep
//! sequence 0 ("not known to be stored"); a message that was stored after
//! all reaches every member through the live channel or a gap fill.

mod codec;
mod connect;
pub mod keys;
mod script;
mod seam;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::future::Future;
use std::sync::Arc;
use std::time::Instant;

use fred::prelude::*;
use parking_lot::{Mutex, RwLock};

pub use codec::{decode_live, encode_relay, Live};
pub use connect::Settings;
use keys::RoomKeys;
pub use script::Scripts;

use super::{RemoteNode, StoreError, StoredMessage};
use crate::metrics::Metrics;
use crate::protocol::{now_ms, RoomName};

/// A room's entry in the room index is refreshed at most this often.
const INDEX_EVERY_MS: u64 = 60_000;

pub struct RedisLog {
    client: Client,
    /// For calls that must fail at once while Redis is away.
    fast: Options,
    scripts: Scripts,
    /// The runtime that carries every Redis connection; `None` only while
    /// dropping.
    runtime: Option<tokio::runtime::Runtime>,
    handle: tokio::runtime::Handle,
    settings: Settings,
    /// SPUBLISH / SSUBSCRIBE (Redis 7+); PUBLISH / SUBSCRIBE otherwise.
    sharded: bool,
    describe: String,
    metrics: Arc<Metrics>,
    /// When each room's index entry was last written (bounded: cleared
    /// when it grows past 100 000 rooms).
    indexed: Mutex<HashMap<RoomName, u64>>,
    /// The nodes the heartbeat last saw alive (None: not known yet).
    live_nodes: RwLock<Option<HashSet<Arc<str>>>>,
}

impl RedisLog {
    /// Connects (bounded by the timeout); fails if Redis cannot be reached.
    pub async fn connect(
        settings: Settings,
        metrics: Arc<Metrics>,
    ) -> Result<Arc<RedisLog>, StoreError> {
        // Before the runtime: a runtime dropped on this (async) caller's
        // thread would panic instead of returning the error.
        let client =
            connect::build(&settings).map_err(|e| StoreError::storage("configure Redis", e))?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("parlor-redis")
            .enable_all()
            .build()
            .map_err(|e| StoreError::storage("start the Redis runtime", e))?;
        let handle = runtime.handle().clone();
        let describe = format!(
            "Redis at {}",
            settings
                .urls
                .iter()
                .map(|u| crate::config::redact_url(u))
                .collect::<Vec<_>>()
                .join(",")
        );
        let init = {
            let client = client.clone();
            let timeout = settings.timeout;
            handle.spawn(async move {
                let up = tokio::time::timeout(timeout, client.init()).await;
                match up {
                    Ok(Ok(_)) => Ok(connect::has_sharded_pubsub(&client).await),
                    Ok(Err(e)) => Err(StoreError::storage("connect to Redis", e)),
                    Err(_) => Err(StoreError::storage(
                        "connect to Redis",
                        std::io::Error::other("timed out"),
                    )),
                }
            })
        };
        let sharded = match init.await {
            Ok(Ok(sharded)) => sharded,
            failed => {
                // Dropping a runtime would block; this may run on one.
                runtime.shutdown_background();
                return Err(match failed {
                    Ok(Err(e)) => e,
                    Err(e) => StoreError::Panicked(e.to_string()),
                    Ok(Ok(_)) => unreachable!(),
                });
            }
        };
        let fast = connect::fail_fast(settings.timeout);
        {
            let reconnects = metrics.redis_reconnects.clone();
            let mut rx = client.reconnect_rx();
            handle.spawn(async move {
                while rx.recv().await.is_ok() {
                    reconnects.inc();
                }
            });
        }
        Ok(Arc::new(RedisLog {
            client,
            fast,
            scripts: Scripts::default(),
            runtime: Some(runtime),
            handle,
            settings,
            sharded,
            describe,
            metrics,
            indexed: Mutex::new(HashMap::new()),
            live_nodes: RwLock::new(None),
        }))
    }

    pub fn client(&self) -> &Client {
        &self.client
    }

    pub fn scripts(&self) -> &Scripts {
        &self.scripts
    }

    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// Whether live channels are sharded (SSUBSCRIBE).
    pub fn sharded(&self) -> bool {
        self.sharded
    }

    /// The runtime that carries the Redis connections.
    pub fn handle(&self) -> &tokio::runtime::Handle {
        &self.handle
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// The heartbeat's latest view of the live nodes.
    pub fn set_live_nodes(&self, nodes: HashSet<Arc<str>>) {
        *self.live_nodes.write() = Some(nodes);
    }

    /// A call to Redis from async code: timed, counted, bounded.
    pub async fn call<T>(
        &self,
        op: &'static str,
        fut: impl Future<Output = Result<T, Error>>,
    ) -> Result<T, StoreError> {
        let started = Instant::now();
        self.metrics.redis_calls.with_label_values(&[op]).inc();
        let result = match tokio::time::timeout(self.settings.timeout, fut).await {
            Ok(r) => r.map_err(|e| StoreError::storage(op, e)),
            Err(_) => Err(StoreError::storage(
                op,
                std::io::Error::other("Redis timed out"),
            )),
        };
        self.metrics
            .redis_seconds
            .with_label_values(&[op])
            .observe(started.elapsed().as_secs_f64());
        result
    }

    /// Runs async Redis work from a blocking caller (the log writer, the
    /// blocking pool), on the Redis runtime's drivers.
    fn block<T>(&self, fut: impl Future<Output = Result<T, StoreError>>) -> Result<T, StoreError> {
        self.handle.block_on(fut)
    }

    /// Other nodes' users in a room, from its presence hash
    /// (`<node>` → version, `<node>\n<user>` → 1); dead nodes are left out.
    pub fn remote_presence(&self, fields: Vec<(String, String)>) -> Vec<RemoteNode> {
        let live = self.live_nodes.read();
        let mut nodes: BTreeMap<String, RemoteNode> = BTreeMap::new();
        for (field, value) in fields {
            let (node, user) = match field.split_once('\n') {
                Some((node, user)) => (node.to_string(), Some(user)),
                None => (field.clone(), None),
            };
            if node == self.settings.node
                || live.as_ref().is_some_and(|l| !l.contains(node.as_str()))
            {
                continue;
            }
            let entry = nodes.entry(node.clone()).or_insert_with(|| RemoteNode {
                node: node.as_str().into(),
                version: 0,
                users: Vec::new(),
            });
            match user {
                Some(user) => entry.users.push(user.into()),
                None => entry.version = value.parse().unwrap_or(0),
            }
        }
        nodes.into_values().collect()
    }

    async fn append_room(
        &self,
        room: &RoomName,
        epoch: &str,
        messages: &[&StoredMessage],
    ) -> Result<(String, bool, Vec<(u64, bool)>), StoreError> {
        let k = RoomKeys::new(room);
        let mut args: Vec<Value> = Vec::with_capacity(4 + messages.len() * 3);
        args.push(epoch.into());
        args.push((self.settings.dedup_window as i64).into());
        args.push((self.settings.retain_messages.min(i64::MAX as u64) as i64).into());
        args.push(if self.sharded { "1" } else { "0" }.into());
        for m in messages {
            args.push(codec::dedup_key(m).into());
            args.push((m.timestamp as i64).into());
            args.push(codec::encode_message(m).into());
        }
        let keys = vec![k.log, k.meta, k.ids, k.channel];
        let reply: Vec<Value> = self
            .call(
                "append",
                self.scripts
                    .append
                    .call(&self.client, Some(&self.fast), keys, args),
            )
            .await?;
        let bad =
            || StoreError::storage("append", std::io::Error::other("unexpected script reply"));
        let mut it = reply.into_iter();
        let stored_epoch = it.next().and_then(|v| v.into_string()).ok_or_else(bad)?;
        let first = it.next().and_then(|v| v.as_i64()).ok_or_else(bad)? == 1;
        let mut out = Vec::with_capacity(messages.len());
        while let (Some(seq), Some(dup)) = (it.next(), it.next()) {
            let seq = seq.as_u64().ok_or_else(bad)?;
            out.push((seq, dup.as_i64() == Some(1)));
        }
        if out.len() != messages.len() {
            return Err(bad());
        }
        Ok((stored_epoch, first, out))
    }

    /// Keeps the room index (listing, counting, age expiry) roughly current
    /// without a write per batch; a failure only delays it.
    fn index(&self, rooms: Vec<(RoomName, bool)>) {
        let now = now_ms();
        let due: Vec<RoomName> = {
            let mut indexed = self.indexed.lock();
            if indexed.len() > 100_000 {
                indexed.clear();
            }
            rooms
                .into_iter()
                .filter(|(room, first)| {
                    let stale = indexed
                        .get(room)
                        .is_none_or(|at| now.saturating_sub(*at) >= INDEX_EVERY_MS);
                    if *first || stale {
                        indexed.insert(room.clone(), now);
                        true
                    } else {
                        false
                    }
                })
                .map(|(room, _)| room)
                .collect()
        };
        if due.is_empty() {
            return;
        }
        let client = self.client.clone();
        let metrics = self.metrics.clone();
        self.handle.spawn(async move {
            let members: Vec<(f64, String)> =
                due.iter().map(|r| (now as f64, r.to_string())).collect();
            metrics.redis_calls.with_label_values(&["index"]).inc();
            let r: Result<(), _> = client
                .zadd(keys::ROOMS, None, None, false, false, members)
                .await;
            if let Err(e) = r {
                tracing::warn!(cause = %e, "updating the room index in Redis failed");
            }
        });
    }
}

impl Drop for RedisLog {
    fn drop(&mut self) {
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}
