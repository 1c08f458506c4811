//! Room shards: `--workers` threads, each owning a disjoint set of rooms
//! (hash(room) % N). A shard is the only owner of its rooms' state, so it
//! needs no locks; sessions and the HTTP API reach it through a bounded
//! channel (a flooding reader waits on it and TCP pushes back on the client),
//! and replies go back over `oneshot` or into the session's outbox.
//!
//! Each shard runs on its own OS thread with a single-threaded runtime for
//! its timers. Its messages are committed by one log writer thread shared by
//! all shards (`commit`): while a batch commits, the shard keeps taking and
//! sequencing messages into the next one (pipelined group commit).

mod commit;
mod dedup;
mod join;
mod presence;
mod replies;
pub mod room;
mod worker;

use std::hash::{BuildHasher, BuildHasherDefault, DefaultHasher};
use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};

use crate::config::Config;
use crate::error::ErrorCode;
use crate::metrics::Metrics;
use crate::protocol::RoomName;
use crate::session::SessionHandle;
use crate::store::Store;

pub use room::PARALLEL_FANOUT_MIN;

/// Commands queued per shard. Each is small (a few pointers and, for a
/// message, its content ≤ max-content-bytes), so a full queue holds at most
/// `SHARD_QUEUE × (max content + ~200 B)`.
pub const SHARD_QUEUE: usize = 4096;

pub enum ShardCmd {
    Join {
        room: RoomName,
        session: Arc<SessionHandle>,
        since: Option<u64>,
        epoch: Option<String>,
        reply: oneshot::Sender<Result<JoinPlan, ErrorCode>>,
    },
    Leave {
        room: RoomName,
        client_id: u64,
        /// Send `left` to the session (an explicit leave, not a disconnect).
        reply: bool,
    },
    Publish {
        room: RoomName,
        user: Arc<str>,
        content: String,
        client_msg_id: Option<String>,
        reply: PublishReply,
    },
    Presence {
        room: RoomName,
        session: Arc<SessionHandle>,
    },
    /// The session has replayed up to the plan's `upto`: release held frames.
    CaughtUp { room: RoomName, client_id: u64 },
    Stats {
        reply: oneshot::Sender<Vec<RoomStats>>,
    },
}

/// Where the outcome of a publish goes.
pub enum PublishReply {
    /// An `ack` (when the message had an `id`) or an `error` into the outbox.
    Session(Arc<SessionHandle>),
    /// The HTTP API waits for the sequence.
    Http(oneshot::Sender<Result<u64, ErrorCode>>),
}

/// What a joining session must read from the store before going live.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JoinPlan {
    pub epoch: String,
    pub catch_up: CatchUp,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CatchUp {
    /// Nothing to read: the member is live at once.
    Nothing,
    /// One `history` frame with sequences `after+1 ..= upto`.
    History { after: u64, upto: u64, more: bool },
    /// `message` frames for sequences `after+1 ..= upto`.
    Replay { after: u64, upto: u64 },
}

#[derive(Debug, Clone)]
pub struct RoomStats {
    pub room: RoomName,
    pub last: u64,
    pub members: usize,
    pub connections: usize,
}

#[derive(Debug, thiserror::Error)]
#[error("shard is shut down")]
pub struct ShardGone;

/// What the shard threads share with the rest of the server.
#[derive(Clone)]
pub struct ShardEnv {
    pub config: Arc<Config>,
    pub store: Arc<dyn Store>,
    pub metrics: Arc<Metrics>,
    /// Threads that fan out large rooms; `None` with one worker.
    pub pool: Option<Arc<rayon::ThreadPool>>,
}

/// Handles to every shard.
pub struct Shards {
    senders: Vec<mpsc::Sender<ShardCmd>>,
    threads: parking_lot::Mutex<Vec<std::thread::JoinHandle<()>>>,
}

impl Shards {
    pub fn start(env: ShardEnv) -> std::io::Result<Shards> {
        let n = env.config.workers();
        let mut senders = Vec::with_capacity(n);
        let mut threads = Vec::with_capacity(n);
        let (committer, log_writer) =
            commit::Committer::start(env.store.clone(), env.metrics.clone())?;
        for i in 0..n {
            let (tx, rx) = mpsc::channel(SHARD_QUEUE);
            let env = env.clone();
            let committer = committer.clone();
            let handle = std::thread::Builder::new()
                .name(format!("parlor-shard-{i}"))
                .spawn(move || worker::run(i, env, committer, rx))?;
            senders.push(tx);
            threads.push(handle);
        }
        // The log writer ends once the shards (its only senders) have.
        drop(committer);
        threads.push(log_writer);
        Ok(Shards {
            senders,
            threads: parking_lot::Mutex::new(threads),
        })
    }

    pub fn index_of(&self, room: &RoomName) -> usize {
        let h = BuildHasherDefault::<DefaultHasher>::default().hash_one(room.as_str());
        (h % self.senders.len() as u64) as usize
    }

    pub async fn send(&self, room: &RoomName, cmd: ShardCmd) -> Result<(), ShardGone> {
        self.senders[self.index_of(room)]
            .send(cmd)
            .await
            .map_err(|_| ShardGone)
    }

    /// Every loaded room of every shard.
    pub async fn stats(&self) -> Vec<RoomStats> {
        let mut all = Vec::new();
        for tx in &self.senders {
            let (reply, rx) = oneshot::channel();
            if tx.send(ShardCmd::Stats { reply }).await.is_ok() {
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

    /// Stops the shards after they have handled what is queued. Only once
    /// every other sender (sessions) is gone do the threads end.
    pub fn shutdown(self) {
        drop(self.senders);
        for t in self.threads.lock().drain(..) {
            let _ = t.join();
        }
    }
}
