//! The shard worker loop: take a command, drain whatever else is queued,
//! commit the messages of that round in one store batch, then fan them out
//! and ack them. Presence diffs and idle-room unloading run on a timer.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot};

use super::commit::{Committed, Committer, Job};
use super::replies::{flush_presence, presence_frame, reply_error, reply_ok};
use super::room::{Bounds, FramesByFormat, Held, Member, Room};
use super::{join, CatchUp, JoinPlan, PublishReply, RoomStats, ShardCmd, ShardEnv};
use crate::error::ErrorCode;
use crate::protocol::server::{self as msg, MessageData};
use crate::protocol::{now_ms, Format, RoomName};
use crate::session::SessionHandle;
use crate::store::{Append, StoredMessage};

/// Most commands handled in one round before the batch is handed on.
const MAX_ROUND: usize = 1024;
/// Most messages waiting behind a commit before the shard stops taking
/// commands (bounds the memory of a batch).
const MAX_BATCH: usize = 8192;
/// Rooms without members are unloaded after this long.
const IDLE_UNLOAD: Duration = Duration::from_secs(60);

pub fn run(id: usize, env: ShardEnv, committer: Committer, rx: mpsc::Receiver<ShardCmd>) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("shard runtime");
    let mut worker = Worker::new(env, committer);
    rt.block_on(worker.run(rx));
    tracing::debug!(shard = id, "shard stopped");
}

/// A message whose sequence is handed out and whose commit is pending.
struct Pending {
    reply: PublishReply,
}

/// A retry of a message still in the pending batch: acked after its commit.
struct PendingRetry {
    reply: PublishReply,
    room: RoomName,
    id: String,
    sequence: u64,
}

/// The batch being committed: its replies wait for the outcome.
struct InFlight {
    pending: Vec<Pending>,
    retries: Vec<PendingRetry>,
}

struct Worker {
    env: ShardEnv,
    bounds: Bounds,
    rooms: HashMap<RoomName, Room>,
    committer: Committer,
    /// Where the log writer reports this shard's commits.
    done_tx: mpsc::UnboundedSender<Committed>,
    done_rx: Option<mpsc::UnboundedReceiver<Committed>>,
    /// At most one batch is being committed; the next one accumulates here
    /// meanwhile (appends and, index for index, where each reply goes).
    in_flight: Option<InFlight>,
    batch: Vec<Append>,
    pending: Vec<Pending>,
    retries: Vec<PendingRetry>,
}

impl Worker {
    fn new(env: ShardEnv, committer: Committer) -> Worker {
        let (done_tx, done_rx) = mpsc::unbounded_channel();
        let bounds = Bounds {
            frames: env.config.outbox_frames,
            bytes: env.config.outbox_bytes,
        };
        Worker {
            env,
            bounds,
            rooms: HashMap::new(),
            committer,
            done_tx,
            done_rx: Some(done_rx),
            in_flight: None,
            batch: Vec::new(),
            pending: Vec::new(),
            retries: Vec::new(),
        }
    }

    async fn run(&mut self, mut rx: mpsc::Receiver<ShardCmd>) {
        let mut done_rx = self.done_rx.take().expect("run once");
        let mut tick = tokio::time::interval(self.env.config.presence_window());
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                // A batch this big waits for the commit ahead of it: stop
                // taking commands (their senders wait; TCP pushes back).
                cmd = rx.recv(), if self.batch.len() < MAX_BATCH => {
                    let Some(cmd) = cmd else { break };
                    self.handle(cmd);
                    let mut n = 1;
                    while n < MAX_ROUND && self.batch.len() < MAX_BATCH {
                        match rx.try_recv() {
                            Ok(cmd) => self.handle(cmd),
                            Err(_) => break,
                        }
                        n += 1;
                    }
                    self.flush();
                }
                Some(done) = done_rx.recv() => {
                    self.committed(done);
                    self.flush();
                }
                _ = tick.tick() => self.on_tick(),
            }
        }
        // Every sender is gone: land what was accepted.
        self.flush();
        while self.in_flight.is_some() {
            let Some(done) = done_rx.recv().await else {
                break;
            };
            self.committed(done);
            self.flush();
        }
    }

    fn handle(&mut self, cmd: ShardCmd) {
        match cmd {
            ShardCmd::Join {
                room,
                session,
                since,
                epoch,
                reply,
            } => self.join(room, session, since, epoch, reply),
            ShardCmd::Leave {
                room,
                client_id,
                reply,
            } => self.leave(&room, client_id, reply),
            ShardCmd::Publish {
                room,
                user,
                content,
                client_msg_id,
                reply,
            } => self.publish(room, user, content, client_msg_id, reply),
            ShardCmd::Presence { room, session } => self.presence(&room, &session),
            ShardCmd::CaughtUp { room, client_id } => self.caught_up(&room, client_id),
            ShardCmd::Stats { reply } => {
                let _ = reply.send(self.stats());
            }
        }
    }

    /// The room, loaded from the store if needed (creating it if new).
    fn room(&mut self, name: &RoomName) -> Result<&mut Room, ErrorCode> {
        if !self.rooms.contains_key(name) {
            let window = self.env.config.dedup_window;
            let log = self.env.store.open_room(name, window).map_err(|e| {
                tracing::error!(room = %name, cause = %e, "opening room failed");
                self.env.metrics.store_errors.inc();
                ErrorCode::Internal
            })?;
            self.rooms
                .insert(name.clone(), Room::new(name.clone(), log, window));
            self.env.metrics.rooms.inc();
        }
        Ok(self.rooms.get_mut(name).expect("inserted above"))
    }

    fn join(
        &mut self,
        name: RoomName,
        session: Arc<SessionHandle>,
        since: Option<u64>,
        epoch: Option<String>,
        reply: oneshot::Sender<Result<JoinPlan, ErrorCode>>,
    ) {
        let cfg = self.env.config.clone();
        let store = self.env.store.clone();
        let room = match self.room(&name) {
            Ok(room) => room,
            Err(code) => {
                let _ = reply.send(Err(code));
                return;
            }
        };
        let last = room.committed;
        let format = session.format;
        let joined = |recovered: bool, epoch: &str| {
            let data = msg::Joined {
                room: name.as_str(),
                last,
                epoch,
                recovered,
            };
            msg::encode(format, "joined", None, Some(data))
        };
        if room.is_member(session.client_id) {
            session.outbox.push_or_cut(joined(true, &room.epoch));
            let plan = JoinPlan {
                epoch: room.epoch.clone(),
                catch_up: CatchUp::Nothing,
            };
            let _ = reply.send(Ok(plan));
            return;
        }
        let limits = join::Limits {
            history_on_join: cfg.history_on_join,
            replay_limit: cfg.replay_limit,
        };
        let first_retained = || store.first_retained(&name).unwrap_or(1);
        let (catch_up, recovered) = join::plan(
            since,
            epoch.as_deref(),
            &room.epoch,
            last,
            limits,
            first_retained,
        );
        session.outbox.push_or_cut(joined(recovered, &room.epoch));
        let now = now_ms();
        let held = (catch_up != CatchUp::Nothing).then(Held::default);
        room.add(
            Member {
                session: session.clone(),
                held,
                fresh: true,
            },
            now,
        );
        session.outbox.push_or_cut(presence_frame(room, format));
        let plan = JoinPlan {
            epoch: room.epoch.clone(),
            catch_up,
        };
        if reply.send(Ok(plan)).is_err() {
            room.remove(session.client_id);
        }
    }

    fn leave(&mut self, name: &RoomName, client_id: u64, reply: bool) {
        let Some(room) = self.rooms.get_mut(name) else {
            return;
        };
        let Some(member) = room.remove(client_id) else {
            return;
        };
        if reply {
            let data = msg::RoomOnly {
                room: name.as_str(),
            };
            let f = msg::encode(member.session.format, "left", None, Some(data));
            member.session.outbox.push_or_cut(f);
        }
    }

    fn publish(
        &mut self,
        name: RoomName,
        user: Arc<str>,
        content: String,
        client_msg_id: Option<String>,
        reply: PublishReply,
    ) {
        let room = match self.room(&name) {
            Ok(room) => room,
            Err(code) => return reply_error(reply, code, client_msg_id.as_deref(), &name),
        };
        if let PublishReply::Session(s) = &reply {
            // The session checks membership too; a member cut meanwhile is not.
            if !room.is_member(s.client_id) {
                return reply_error(reply, ErrorCode::NotJoined, client_msg_id.as_deref(), &name);
            }
        }
        let now = now_ms();
        room.presence.seen(&user, now);
        if let Some(id) = &client_msg_id {
            if let Some(sequence) = room.dedup.get(&user, id) {
                if sequence <= room.committed {
                    return reply_ok(reply, Some(id), &name, sequence);
                }
                let retry = PendingRetry {
                    reply,
                    room: name,
                    id: id.clone(),
                    sequence,
                };
                self.retries.push(retry);
                return;
            }
        }
        let sequence = room.next_sequence();
        if let Some(id) = &client_msg_id {
            room.dedup.insert(user.clone(), id.clone(), sequence);
        }
        self.batch.push(Append {
            room: name,
            message: StoredMessage {
                sequence,
                timestamp: now,
                user,
                content,
                client_msg_id,
            },
        });
        self.pending.push(Pending { reply });
    }

    fn presence(&mut self, name: &RoomName, session: &SessionHandle) {
        let f = match self.rooms.get(name) {
            Some(room) => presence_frame(room, session.format),
            None => {
                let data = msg::Presence {
                    room: name.as_str(),
                    count: 0,
                    users: Vec::new(),
                    truncated: false,
                };
                msg::encode(session.format, "presence", None, Some(data))
            }
        };
        session.outbox.push_or_cut(f);
    }

    fn caught_up(&mut self, name: &RoomName, client_id: u64) {
        let bounds = self.bounds;
        let Some(room) = self.rooms.get_mut(name) else {
            return;
        };
        let Some(member) = room.member_mut(client_id) else {
            return;
        };
        if !member.release(bounds) {
            room.remove(client_id);
        }
    }

    /// Hands the accumulated batch to the log writer unless one is already
    /// being committed. With nothing pending anywhere, every handed-out
    /// sequence is committed, so waiting retries are answered at once.
    fn flush(&mut self) {
        if self.in_flight.is_some() {
            return;
        }
        if self.batch.is_empty() {
            settle_retries(std::mem::take(&mut self.retries), true);
            return;
        }
        self.in_flight = Some(InFlight {
            pending: std::mem::take(&mut self.pending),
            retries: std::mem::take(&mut self.retries),
        });
        self.committer.send(Job {
            batch: std::mem::take(&mut self.batch),
            done: self.done_tx.clone(),
        });
    }

    /// The outcome of the batch in flight: broadcast and ack it — or, if the
    /// store failed, take back its sequences and those of the batch that
    /// accumulated behind it (they follow the failed ones), and tell every
    /// sender `internal`. Nothing uncommitted is ever shown.
    fn committed(&mut self, done: Committed) {
        let Some(InFlight { pending, retries }) = self.in_flight.take() else {
            tracing::error!("a commit came back with none in flight");
            return;
        };
        if done.result.is_ok() {
            self.broadcast(&done.batch);
            let mut acks = 0;
            for (append, p) in done.batch.iter().zip(pending) {
                let id = append.message.client_msg_id.as_deref();
                acks += u64::from(id.is_some());
                reply_ok(p.reply, id, &append.room, append.message.sequence);
            }
            self.env.metrics.acks.inc_by(acks);
            settle_retries(retries, true);
            return;
        }
        let behind = std::mem::take(&mut self.batch);
        let behind_pending = std::mem::take(&mut self.pending);
        let behind_retries = std::mem::take(&mut self.retries);
        let failed = done
            .batch
            .into_iter()
            .zip(pending)
            .chain(behind.into_iter().zip(behind_pending));
        for (append, p) in failed {
            if let Some(room) = self.rooms.get_mut(&append.room) {
                room.assigned = room.committed;
                if let Some(id) = &append.message.client_msg_id {
                    room.dedup
                        .remove(&append.message.user, id, append.message.sequence);
                }
            }
            let id = append.message.client_msg_id.as_deref();
            reply_error(p.reply, ErrorCode::Internal, id, &append.room);
        }
        settle_retries(retries, false);
        settle_retries(behind_retries, false);
    }

    /// Encodes each committed message once per format in use and hands the
    /// same bytes to every member, room by room, in sequence order.
    fn broadcast(&mut self, batch: &[Append]) {
        let mut by_room: Vec<(&RoomName, Vec<&StoredMessage>)> = Vec::new();
        for a in batch {
            match by_room.iter_mut().find(|(r, _)| *r == &a.room) {
                Some((_, list)) => list.push(&a.message),
                None => by_room.push((&a.room, vec![&a.message])),
            }
        }
        let pool = self.env.pool.as_deref();
        let (mut delivered, mut cut) = (0, 0);
        for (name, messages) in by_room {
            let Some(room) = self.rooms.get_mut(name) else {
                continue;
            };
            room.committed = messages.last().map_or(room.committed, |m| m.sequence);
            let mut frames: FramesByFormat = [Vec::new(), Vec::new()];
            for format in Format::ALL {
                if room.uses(format) {
                    frames[format.index()] = messages
                        .iter()
                        .map(|m| {
                            msg::message(format, &MessageData::of(name.as_str(), &room.epoch, m))
                        })
                        .collect();
                }
            }
            let (d, c) = room.fan_out(&frames, self.bounds, pool);
            delivered += d;
            cut += c;
        }
        self.env.metrics.deliveries.inc_by(delivered);
        let _ = cut;
    }

    fn on_tick(&mut self) {
        let max_members = self.env.config.presence_diff_max_members;
        let bounds = self.bounds;
        for room in self.rooms.values_mut() {
            if !room.presence.has_changes() {
                continue;
            }
            let (joins, leaves) = room.presence.take_changes();
            if room.connections() > max_members {
                continue;
            }
            flush_presence(room, &joins, &leaves, bounds);
        }
        let now = Instant::now();
        let before = self.rooms.len();
        self.rooms.retain(|_, r| {
            r.idle_since
                .is_none_or(|t| now.duration_since(t) <= IDLE_UNLOAD)
        });
        let unloaded = before - self.rooms.len();
        if unloaded > 0 {
            self.env.metrics.rooms.sub(unloaded as i64);
        }
    }

    fn stats(&self) -> Vec<RoomStats> {
        self.rooms
            .values()
            .map(|r| RoomStats {
                room: r.name.clone(),
                last: r.committed,
                members: r.presence.count(),
                connections: r.connections(),
            })
            .collect()
    }
}

fn settle_retries(retries: Vec<PendingRetry>, committed: bool) {
    for r in retries {
        if committed {
            reply_ok(r.reply, Some(&r.id), &r.room, r.sequence);
        } else {
            reply_error(r.reply, ErrorCode::Internal, Some(&r.id), &r.room);
        }
    }
}
