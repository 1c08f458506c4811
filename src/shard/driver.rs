//! The thin driver of one shard: feeds its room core (`rooms::Rooms`)
//! commands, the time and the completions of its effects, and performs those
//! effects without ever blocking the shard (a task on the server's runtime:
//! see `shard`):
//!
//! - a room load runs on the blocking pool and parks only that room;
//! - a catch-up read waits (as a task) for room in the member's outbox, then
//!   reads and encodes on the blocking pool;
//! - a batch goes to the log writer thread, or, for a store that only
//!   changes memory (`Store::appends_in_memory`), is committed right here;
//! - cluster mode: subscriptions and presence changes go to the cluster's
//!   tasks (`cluster`), fills read the shared log on the blocking pool,
//!   and the cluster's live events come in like completions.
//!
//! Panics in store code fail the operation (`StoreError::Panicked`) instead
//! of the shard: the server's store is a `GuardedStore`, which catches,
//! counts and reports them; `guarded` keeps the shard alive over any store.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::gate::{is_urgent, Gate};
use super::gather::Gather;
use super::log_writer::{commit, Committed, Job, LogWriter};
use super::pool::Pool;
use super::ShardEnv;
use crate::cluster::{Event, FeedRequest, Outgoing, ShardLink};
use crate::protocol::{now_ms, RoomName};
use crate::rooms::fanout::{Sequential, Spread};
use crate::rooms::{
    Command, Effect, Fill, Limits, ReadDone, ReadRequest, Rooms, Tally, FILL_CHUNK,
};
use crate::store::{ReadLimit, RoomLog, StoreError, Tail};

/// Most commands handled in one round before the batch is handed on.
const MAX_ROUND: usize = 1024;

/// Completions of effects, back on the shard.
enum Done {
    Loaded(RoomName, Result<RoomLog, Arc<StoreError>>),
    Committed(Committed),
    Read(ReadDone),
    Filled(RoomName, Result<Tail, Arc<StoreError>>),
}

/// Drives shard `id` until its senders are gone or `stop` is cancelled and
/// every accepted batch has landed. What it does between awaits is bounded
/// (a round of at most `MAX_ROUND` commands, a memory store's commit, a
/// fan-out), so it may run as a task among the sessions; the rest runs
/// elsewhere.
pub async fn run(
    id: usize,
    env: ShardEnv,
    log: Option<LogWriter>,
    rx: mpsc::Receiver<Command>,
    gate: Arc<Gate>,
    stop: CancellationToken,
) {
    let spread: Box<dyn Spread> = match &env.pool {
        Some(pool) => Box::new(Pool(pool.clone())),
        None => Box::new(Sequential),
    };
    let limits = Limits::from_config(&env.config, env.store.sequencing());
    let (cluster, live, control) = match env.cluster.as_ref().and_then(|c| c.link(id)) {
        Some(link) => {
            let ShardLink {
                live,
                control,
                overflow,
                feed,
                presence,
            } = link;
            let ends = ClusterEnds {
                overflow,
                feed,
                presence,
            };
            (Some(ends), Some(live), Some(control))
        }
        None => (None, None, None),
    };
    let mut driver = Driver {
        shard: id,
        rooms: Rooms::new(limits, spread),
        env,
        log,
        done: mpsc::unbounded_channel(),
        commit_done: mpsc::unbounded_channel(),
        cluster,
        live,
        control,
        gather: Gather::default(),
        gate,
    };
    driver.run(rx, stop).await;
    tracing::debug!(shard = id, "shard stopped");
}

struct Driver {
    shard: usize,
    rooms: Rooms,
    env: ShardEnv,
    /// Where batches are committed; `None`: here, by a store whose appends
    /// only change memory (`Store::appends_in_memory`).
    log: Option<LogWriter>,
    /// Completions of loads and reads.
    done: (mpsc::UnboundedSender<Done>, mpsc::UnboundedReceiver<Done>),
    /// Completions of commits (the log writer's channel type).
    commit_done: (
        mpsc::UnboundedSender<Committed>,
        mpsc::UnboundedReceiver<Committed>,
    ),
    gather: Gather,
    /// While a batch is with the log writer or the gather holds, senders of
    /// messages wake the shard only once what it waits for is queued.
    gate: Arc<Gate>,
    /// Cluster mode: where subscriptions and presence changes go.
    cluster: Option<ClusterEnds>,
    /// Cluster mode: live events (bounded), and control events.
    live: Option<mpsc::Receiver<Event>>,
    control: Option<mpsc::UnboundedReceiver<Event>>,
}

struct ClusterEnds {
    /// Set when a live event for this shard was dropped.
    overflow: Arc<std::sync::atomic::AtomicBool>,
    feed: mpsc::UnboundedSender<FeedRequest>,
    /// Presence changes and relayed events, for the other nodes.
    presence: mpsc::UnboundedSender<Outgoing>,
}

impl Driver {
    async fn run(&mut self, mut rx: mpsc::Receiver<Command>, stop: CancellationToken) {
        let mut stopping = false;
        loop {
            let timer = self.rooms.poll_timeout().map(deadline);
            let quiet = !stopping && self.quiet(&rx);
            let gate = self.gate.clone();
            tokio::select! {
                biased;
                _ = stop.cancelled(), if !stopping => {
                    // Take what is queued, refuse what waits for a load.
                    stopping = true;
                    rx.close();
                    self.rooms.stop();
                }
                Some(done) = self.commit_done.1.recv() => {
                    // Messages that queued behind the gate count as waiting.
                    if quiet {
                        self.take_queued(&mut rx, MAX_ROUND);
                    }
                    let waiting = self.rooms.accumulated() + done.batch.appends.len();
                    self.gather.committed(waiting);
                    self.apply(Done::Committed(done));
                }
                Some(done) = self.done.1.recv() => self.apply(done),
                Some(event) = recv(&mut self.control) => self.cluster_event(event),
                Some(event) = recv_bounded(&mut self.live) => {
                    self.cluster_event(event);
                    for _ in 1..MAX_ROUND {
                        match self.live.as_mut().map(|rx| rx.try_recv()) {
                            Some(Ok(event)) => self.cluster_event(event),
                            _ => break,
                        }
                    }
                }
                cmd = rx.recv(), if !quiet && !self.rooms.backpressured() => {
                    let Some(cmd) = cmd else { break };
                    self.handle(cmd, now_ms());
                    self.take_queued(&mut rx, MAX_ROUND - 1);
                }
                _ = gate.notified(), if quiet => self.take_queued(&mut rx, MAX_ROUND),
                _ = sleep_until(timer), if timer.is_some() => {
                    self.rooms.handle_timeout(now_ms());
                }
                _ = sleep_until(self.gather.until), if self.gather.until.is_some() => {
                    self.gather.until = None;
                    // What queued while the gate was down goes in this batch.
                    self.take_queued(&mut rx, MAX_ROUND);
                }
            }
            if !self.gather.holds(self.rooms.accumulated()) {
                self.end_round();
            } else {
                self.effects();
            }
        }
        // Every sender is gone or the shard is stopping: land what was accepted.
        self.rooms.stop();
        self.end_round();
        while !self.rooms.is_settled() {
            let Some(done) = self.commit_done.1.recv().await else {
                break;
            };
            self.apply(Done::Committed(done));
            self.end_round();
        }
    }

    /// Whether to wait for the gate rather than each command: while a batch
    /// is with the log (messages can only accumulate until it is back) or
    /// while the gather holds, until as many commands have queued as it
    /// waits for — at most a round's worth, which the queue has room for.
    fn quiet(&self, rx: &mpsc::Receiver<Command>) -> bool {
        let missing = match self.gather.missing(self.rooms.accumulated()) {
            Some(missing) => Some(missing.min(MAX_ROUND)),
            // (A store that only changes memory commits within the round.)
            None if self.log.is_some() && self.rooms.committing() => Some(MAX_ROUND),
            None => None,
        };
        match missing {
            Some(missing) if rx.len() < missing && !self.rooms.backpressured() => {
                self.gate.lower(missing, || rx.len())
            }
            _ => {
                self.gate.open();
                false
            }
        }
    }

    /// Handles up to `most` queued commands without waiting.
    fn take_queued(&mut self, rx: &mut mpsc::Receiver<Command>, most: usize) {
        let now = now_ms();
        for _ in 0..most {
            if self.rooms.backpressured() {
                break;
            }
            match rx.try_recv() {
                Ok(cmd) => self.handle(cmd, now),
                Err(_) => break,
            }
        }
    }

    /// Hands a command from the queue to the core, counting urgent ones
    /// for the gate.
    fn handle(&mut self, cmd: Command, now: u64) {
        if is_urgent(&cmd) {
            self.gate.took_urgent();
        }
        self.rooms.handle(cmd, now);
    }

    fn apply(&mut self, done: Done) {
        let now = now_ms();
        match done {
            Done::Loaded(room, result) => self.rooms.loaded(room, result, now),
            Done::Committed(c) => self.rooms.committed(c.batch, c.result, now),
            Done::Read(read) => self.rooms.read_done(read, now),
            Done::Filled(room, result) => self.rooms.filled(&room, result, now),
        }
    }

    fn cluster_event(&mut self, event: Event) {
        let now = now_ms();
        match event {
            Event::Live {
                room,
                epoch,
                messages,
            } => self.rooms.live(&room, &epoch, messages, now),
            Event::Presence { room, update } => self.rooms.remote_presence(&room, update, now),
            Event::Subscribed(room) => self.rooms.subscribed(&room, now),
            Event::NodeGone(node) => self.rooms.node_gone(&node),
            Event::Republish => self.rooms.republish_presence(),
            Event::Relay(relay) => self.rooms.remote_relay(relay, now),
            Event::Wake => {}
        }
        let overflowed = self
            .cluster
            .as_ref()
            .is_some_and(|c| c.overflow.swap(false, Ordering::AcqRel));
        if overflowed {
            tracing::warn!("live messages for this shard were dropped; catching up from the log");
            self.rooms.resync(now);
        }
    }

    /// Hands the batch on and performs the effects of this round.
    fn end_round(&mut self) {
        if self.rooms.end_round() {
            self.gather.sent();
        }
        self.effects();
    }

    /// Performs the effects the core asked for.
    fn effects(&mut self) {
        while let Some(effect) = self.rooms.poll_effect() {
            match effect {
                Effect::Load(room) => self.load(room),
                Effect::Commit(mut batch) => match &self.log {
                    Some(log) => {
                        let done = self.commit_done.0.clone();
                        log.send(Job::new(self.shard, batch, done));
                    }
                    None => {
                        // The outcome comes back like the log writer's, so the
                        // core sees it in the next turn of the loop either way.
                        let result = commit(&*self.env.store, &self.env.metrics, &mut batch);
                        let _ = self.commit_done.0.send(Committed { batch, result });
                    }
                },
                Effect::Read(read) => self.read(read),
                Effect::Fill(fill) => self.fill(fill),
                Effect::Subscribe(room) => match &self.cluster {
                    Some(c) => {
                        let _ = c.feed.send(FeedRequest::Subscribe(room));
                    }
                    // Without a live channel (a numbering log of one node)
                    // a room hears of nothing but its own commits.
                    None => self.rooms.subscribed(&room, now_ms()),
                },
                Effect::Unsubscribe(room) => {
                    if let Some(c) = &self.cluster {
                        let _ = c.feed.send(FeedRequest::Unsubscribe(room));
                    }
                }
                Effect::Presence(change) => {
                    if let Some(c) = &self.cluster {
                        let _ = c.presence.send(Outgoing::Presence(change));
                    }
                }
                Effect::Relay(relay) => {
                    if let Some(c) = &self.cluster {
                        let _ = c.presence.send(Outgoing::Relay(relay));
                    }
                }
            }
        }
        let tally = self.rooms.take_tally();
        self.record(tally);
    }

    fn load(&self, room: RoomName) {
        let store = self.env.store.clone();
        let window = self.env.config.dedup_window;
        let max_rooms = self.env.config.max_rooms;
        let done = self.done.0.clone();
        tokio::task::spawn_blocking(move || {
            let result = guarded(|| {
                let mut log = store.load_room(&room, window)?;
                log.room_limit_reached = !log.exists && store.room_count() >= max_rooms;
                if log.exists {
                    log.read_markers = store.read_markers(&room)?;
                }
                Ok(log)
            });
            let _ = done.send(Done::Loaded(room, result));
        });
    }

    fn read(&self, read: ReadRequest) {
        let store = self.env.store.clone();
        let done = self.done.0.clone();
        tokio::spawn(async move {
            // The client's pace sets the replay's: read only once the chunk fits.
            let (frames, bytes) = read.wait_for();
            read.peer.outbox.wait_below(frames, bytes).await;
            if read.peer.outbox.is_cut() {
                return;
            }
            let result = tokio::task::spawn_blocking(move || {
                let result = guarded(|| read.read(&*store));
                ReadDone {
                    room: read.room,
                    client_id: read.peer.client_id,
                    join: read.join,
                    result,
                }
            })
            .await;
            if let Ok(read) = result {
                let _ = done.send(Done::Read(read));
            }
        });
    }

    /// Reads a shared log's tail for a room behind it, off the shard.
    fn fill(&self, fill: Fill) {
        let store = self.env.store.clone();
        let done = self.done.0.clone();
        tokio::task::spawn_blocking(move || {
            let limit = ReadLimit::messages(FILL_CHUNK);
            let result = guarded(|| store.read_tail(&fill.room, fill.after, fill.upto, limit));
            let _ = done.send(Done::Filled(fill.room, result));
        });
    }

    fn record(&self, t: Tally) {
        let m = &self.env.metrics;
        m.deliveries.inc_by(t.deliveries);
        m.acks.inc_by(t.acks);
        m.replayed.inc_by(t.replayed);
        m.rooms.add(t.loaded as i64 - t.unloaded as i64);
        m.rooms_expired.inc_by(t.expired);
        m.gap_fills.inc_by(t.fills);
    }
}

async fn recv_bounded(rx: &mut Option<mpsc::Receiver<Event>>) -> Option<Event> {
    match rx {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

async fn recv(rx: &mut Option<mpsc::UnboundedReceiver<Event>>) -> Option<Event> {
    match rx {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

/// Runs store code so that a panic fails the call, not the thread.
fn guarded<T>(f: impl FnOnce() -> Result<T, StoreError>) -> Result<T, Arc<StoreError>> {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(r) => r.map_err(Arc::new),
        Err(panic) => Err(Arc::new(StoreError::panicked(&*panic))),
    }
}

/// The runtime instant of a wall-clock deadline in ms.
fn deadline(at_ms: u64) -> tokio::time::Instant {
    let wait = at_ms.saturating_sub(now_ms());
    tokio::time::Instant::now() + Duration::from_millis(wait)
}

async fn sleep_until(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
