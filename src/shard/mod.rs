//! Room shards: `--shards` of them, each owning a disjoint set of rooms
//! (hash(room) % N) and driving their sans-IO core (`rooms::Rooms`).
//! Sessions and the HTTP API reach a shard through a bounded channel (a
//! flooding reader waits on it and TCP pushes back on the client); frames
//! go back into sessions' outboxes, replies over `oneshot`.
//!
//! Each shard runs `driver`: it feeds the core commands, the time and the
//! completions of its effects, and performs those effects off the shard —
//! room loads and catch-up reads on the blocking pool, commits on the one
//! log writer thread shared by all shards (`log_writer`), which merges what
//! every shard has waiting into one transaction (group commit). A store
//! that only changes memory has no sync to share: each shard commits its
//! batch itself (`Store::appends_in_memory`), and no log writer runs.
//!
//! A shard is a task on the server's runtime, whatever the store. A
//! session's command wakes it on the same worker (tokio's local queue) and
//! its fan-out wakes sessions the same way, where a thread of its own costs
//! two wake-ups of a sleeping thread per round trip. A commit completes on
//! the log writer's thread, so its wake comes from outside the runtime and
//! queues the shard behind the sessions its last fan-out woke: a commit's
//! acks and fan-out can start a little later than on a thread of its own.
//! That was once measured at +6 ms p50 in 1 room × 1 000 at 10 msg/s,
//! which is why durable stores had their shards on threads. With today's
//! writers, in 51 runs of that scenario on redb (27 with tasks, 24 with
//! threads, most in interleaved pairs), a task adds ≈ 0.3 ms to the p50
//! (3.0–3.3 against 2.7–3.0 ms) and nothing to the p99 (5.0–6.0 against
//! 5.3–6.1 ms in all but three runs: two of the task's, at 23 and 102 ms,
//! one of the thread's, at 7 ms with a 36 ms max). The thread's wake-ups
//! cost more: 11 % of the server's CPU in a storm of 19 000 joins (one
//! wake per join), 2.5 % per delivery in 100 rooms × 10, and 11 % of
//! durable-64's acks/s.
//!
//! Big rooms' fan-out spreads over the fan-out pool (`pool`), so every core
//! delivers a big room's traffic.
//!
//! While a shard's batch is with the log writer, and while it gathers the
//! next one after a commit (`gather`), the sessions queue messages for it
//! without waking it, until as many have queued as it waits for (`gate`):
//! it is not woken once per message.
//!
//! How many shards (`Config::shards`): one per three workers by default.
//! Many small rooms are the shards' heaviest load, and there a shard does
//! ≈ 1/5 of the server's work per message: one per three workers stays
//! below ≈ 60 % busy when every core is. More shards than that cost more
//! than they spread: each is woken by the sessions on its own and takes
//! smaller rounds per wake. On two cores, with the durable store, in
//! 100 rooms × 10, two shards were woken twice as often as one and took
//! 7–17 % more of the server's CPU (four interleaved pairs, measured when
//! such shards had threads of their own).

mod driver;
mod gate;
mod gather;
mod log_writer;
pub mod pool;

use std::hash::{BuildHasher, BuildHasherDefault, DefaultHasher};
use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use self::gate::Gate;
use crate::config::Config;
use crate::metrics::Metrics;
use crate::protocol::RoomName;
use crate::rooms::{Command, RoomStats};
use crate::store::Store;

/// Commands queued per shard. Each is small (a few pointers and, for a
/// message, its content ≤ max-content-bytes), so a full queue holds at most
/// `SHARD_QUEUE × (max content + ~200 B)`.
pub const SHARD_QUEUE: usize = 4096;

#[derive(Debug, thiserror::Error)]
#[error("shard is shut down")]
pub struct ShardGone;

/// What the shards share with the rest of the server.
#[derive(Clone)]
pub struct ShardEnv {
    pub config: Arc<Config>,
    pub store: Arc<dyn Store>,
    pub metrics: Arc<Metrics>,
    /// Threads that fan out large rooms; `None` with one worker.
    pub pool: Option<Arc<rayon::ThreadPool>>,
    /// Cluster mode: the live channels, presence and heartbeat shared with
    /// the other nodes through Redis.
    pub cluster: Option<Arc<crate::cluster::Cluster>>,
}

/// The shard (of `n`) that owns a room.
pub fn shard_of(room: &RoomName, n: usize) -> usize {
    let h = BuildHasherDefault::<DefaultHasher>::default().hash_one(room.as_str());
    (h % n.max(1) as u64) as usize
}

/// Handles to every shard.
pub struct Shards {
    senders: Vec<mpsc::Sender<Command>>,
    /// One per shard: see `gate`.
    gates: Vec<Arc<Gate>>,
    /// Cancelled to stop the shards whoever still holds a sender.
    stop: CancellationToken,
    /// What `stop` waits for: the shards, then the log writer.
    ended: parking_lot::Mutex<Option<Ended>>,
}

type Ended = (Vec<JoinHandle<()>>, Option<std::thread::JoinHandle<()>>);

impl Shards {
    /// Starts the shards as tasks on the current runtime (call it from
    /// within one), and the log writer's thread if the store commits.
    pub fn start(env: ShardEnv) -> std::io::Result<Shards> {
        let n = env.config.shards();
        let mut senders = Vec::with_capacity(n);
        let mut gates = Vec::with_capacity(n);
        let mut runners = Vec::with_capacity(n);
        let stop = CancellationToken::new();
        // A store whose appends only change memory has no sync to share:
        // each shard commits its batches itself, and no log writer runs.
        let (log, log_thread) = if env.store.appends_in_memory() {
            (None, None)
        } else {
            let (log, thread) =
                log_writer::LogWriter::start(env.store.clone(), env.metrics.clone())?;
            (Some(log), Some(thread))
        };
        for i in 0..n {
            let (tx, rx) = mpsc::channel(SHARD_QUEUE);
            let (env, log, stop) = (env.clone(), log.clone(), stop.clone());
            let gate = Arc::new(Gate::default());
            let shard = driver::run(i, env, log, rx, gate.clone(), stop);
            senders.push(tx);
            gates.push(gate);
            runners.push(tokio::spawn(shard));
        }
        // The log writer ends once the shards (its only senders) have.
        drop(log);
        Ok(Shards {
            senders,
            gates,
            stop,
            ended: parking_lot::Mutex::new(Some((runners, log_thread))),
        })
    }

    pub fn index_of(&self, room: &RoomName) -> usize {
        shard_of(room, self.senders.len())
    }

    pub async fn send(&self, room: &RoomName, cmd: Command) -> Result<(), ShardGone> {
        self.send_to(self.index_of(room), cmd).await
    }

    /// Queues `cmd` for shard `i`, waking it if it waits for this command
    /// (see `gate`): a message may wait while the shard gathers a batch,
    /// anything else is handled at once.
    async fn send_to(&self, i: usize, cmd: Command) -> Result<(), ShardGone> {
        let urgent = gate::is_urgent(&cmd);
        let tx = &self.senders[i];
        tx.send(cmd).await.map_err(|_| ShardGone)?;
        self.gates[i].queued(tx.max_capacity() - tx.capacity(), urgent);
        Ok(())
    }

    /// Every loaded room of every shard.
    /// Up to `limit` loaded rooms of each shard named after `after` (so
    /// the first `limit` of all of them in name order are among these).
    pub async fn stats(&self, after: Option<&RoomName>, limit: usize) -> Vec<RoomStats> {
        let mut all = Vec::new();
        for i in 0..self.senders.len() {
            let (reply, rx) = oneshot::channel();
            let cmd = Command::Stats {
                after: after.cloned(),
                limit,
                reply,
            };
            if self.send_to(i, cmd).await.is_ok() {
                all.extend(rx.await.unwrap_or_default());
            }
        }
        all
    }

    /// Commands waiting per shard.
    pub fn queue_depths(&self) -> Vec<usize> {
        self.senders
            .iter()
            .map(|tx| tx.max_capacity() - tx.capacity())
            .collect()
    }

    /// Stops the shards: each takes what is already queued, lands every
    /// batch it accepted, and ends; then the log writer ends. Whoever still
    /// holds a way to send gets `ShardGone`. Returns once all have ended.
    pub async fn stop(&self) {
        self.stop.cancel();
        let Some((runners, log_thread)) = self.ended.lock().take() else {
            return;
        };
        for runner in runners {
            if runner.await.is_err() {
                tracing::error!("a shard ended abnormally");
            }
        }
        if let Some(log_thread) = log_thread {
            let _ = tokio::task::spawn_blocking(move || log_thread.join()).await;
        }
    }
}
